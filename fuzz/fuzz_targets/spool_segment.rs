//! cargo-fuzz target `spool_segment`: runs each input through
//! [`hostpulse_fuzz::spool_segment`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::spool_segment(data));
