//! hostpulse collector library. `main.rs` only wires these modules.

pub mod admin;
pub mod alert;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod detect;
pub mod import;
pub mod ingest;
pub mod model;
pub mod query;
pub mod remote_write;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;
