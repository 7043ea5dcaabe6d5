//! cargo-fuzz target `promql`: runs each input through
//! [`hostpulse_fuzz::promql`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::promql(data));
