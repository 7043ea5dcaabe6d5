//! cargo-fuzz target `agent_message`: runs each input through
//! [`hostpulse_fuzz::agent_message`], the function the stable corpus replay runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostpulse_fuzz::agent_message(data));
