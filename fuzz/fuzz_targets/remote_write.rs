//! cargo-fuzz target `remote_write`: runs each input through
//! [`hostpulse_fuzz::remote_write`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::remote_write(data));
