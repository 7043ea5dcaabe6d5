//! cargo-fuzz target `store_wal`: runs each input through
//! [`hostpulse_fuzz::store_wal`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::store_wal(data));
