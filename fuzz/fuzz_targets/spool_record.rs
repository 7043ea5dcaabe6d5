//! cargo-fuzz target `spool_record`: runs each input through
//! [`hostpulse_fuzz::spool_record`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::spool_record(data));
