//! The collector's real command line, built inside the test package so the
//! end-to-end tests can run it as a child process (and kill -9 it).

fn main() -> std::process::ExitCode {
    hostpulse_collector::cli::main()
}
