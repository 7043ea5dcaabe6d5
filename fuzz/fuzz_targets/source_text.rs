//! cargo-fuzz target `source_text`: runs each input through
//! [`hostpulse_fuzz::source_text`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::source_text(data));
