//! `hostpulse-collector`: the command line. Only wiring: parse flags, merge
//! the config file, start the collector, wait for a signal.

use std::process::ExitCode;

fn main() -> ExitCode {
    hostpulse_collector::cli::main()
}
