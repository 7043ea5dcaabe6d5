//! The hostpulse wire protocol (`hostpulse.v1`): messages and the gRPC
//! `Ingest` service that agents stream samples over to a collector.
//!
//! The types are generated at build time from `proto/hostpulse/v1/ingest.proto`
//! (see `build.rs`); this crate knows nothing of sampling or storage.
//! Hand-written helpers sit in [`ext`] beside the generated code, and the
//! compact batch encoding both ends share in [`columns`].

#![allow(missing_docs)]

/// Generated code for package `hostpulse.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("hostpulse.v1");
}

pub mod columns;
pub mod ext;

pub use v1::*;
