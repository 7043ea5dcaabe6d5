//! hostpulse agent: samples the hardware health of one server and streams it
//! to a collector.
//!
//! Sources (`sources/`) read sysfs/procfs under a [`HostPaths`] and record
//! samples in an [`Emitter`]; the [`sampler`] runs them once per cycle; the
//! [`client`] sends cycles as numbered batches over the `hostpulse.v1`
//! stream and keeps them until acknowledged; [`exposition`] prints a cycle
//! in Prometheus text format for `hostpulse-agent sample`, and
//! [`series_text`] prints the same text for `serve`'s `/metrics` from series
//! rendered once when they first appear.

pub mod client;
pub mod config;
pub mod emit;
pub mod exposition;
pub mod inventory;
pub mod paths;
pub mod sampler;
pub mod series_text;
pub mod serve;
pub mod signal;
pub mod source;
pub mod sources;
pub mod spool;
pub mod tls;

pub use emit::{Emitter, KernelEvent, MetricType, Sample};
pub use paths::HostPaths;
pub use sampler::{Cycle, Sampler};
pub use source::{Source, SourceError};
