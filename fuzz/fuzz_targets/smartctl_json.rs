//! cargo-fuzz target `smartctl_json`: runs each input through
//! [`hostpulse_fuzz::smartctl_json`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::smartctl_json(data));
