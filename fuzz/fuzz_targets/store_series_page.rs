//! cargo-fuzz target `store_series_page`: runs each input through
//! [`hostpulse_fuzz::store_series_page`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::store_series_page(data));
