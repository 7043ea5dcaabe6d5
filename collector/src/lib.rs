//! hostpulse collector library. `main.rs` only wires these modules.

pub mod alert;
pub mod cli;
pub mod config;
pub mod detect;
pub mod ingest;
pub mod model;
pub mod query;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod web;
