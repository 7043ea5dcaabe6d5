//! End-to-end tests: real agent and collector code on ephemeral loopback
//! ports and temp dirs. One test binary, one module per area.

#![allow(clippy::unwrap_used)]

mod alerting;
mod chaos;
mod deploy;
mod durability;
mod identity;
mod pipeline;
mod promql_diff;
mod remote_write;
mod spool;
mod support;
mod wire;
