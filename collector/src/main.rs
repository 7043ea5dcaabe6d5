//! `hostpulse-collector`: the command line. Only wiring: parse flags, merge
//! the config file, start the collector, wait for a signal.
//!
//! The binary uses mimalloc rather than glibc malloc: queries allocate and
//! free tens of megabytes each, and glibc trims that memory back to the
//! kernel after every query, so the next one spends a third of its time
//! faulting pages in again (measured with `perf` on the query benchmark).
//! It is built without transparent-huge-page advice (`no_thp`): with it,
//! each fresh 2 MiB region was zeroed whole on first touch, and during gRPC
//! ingest the kernel's page clearing was 7–16 % of the collector's CPU.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hostpulse_collector::cli::main()
}
