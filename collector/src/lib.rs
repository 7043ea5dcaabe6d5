//! hostpulse collector library. `main.rs` only wires these modules.

pub mod config;
pub mod model;
pub mod store;
pub mod telemetry;
