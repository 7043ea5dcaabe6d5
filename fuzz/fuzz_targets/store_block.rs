//! cargo-fuzz target `store_block`: runs each input through
//! [`hostpulse_fuzz::store_block`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::store_block(data));
