//! cargo-fuzz target `openmetrics`: runs each input through
//! [`hostpulse_fuzz::openmetrics`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::openmetrics(data));
