//! cargo-fuzz target `kmsg`: runs each input through
//! [`hostpulse_fuzz::kmsg`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::kmsg(data));
