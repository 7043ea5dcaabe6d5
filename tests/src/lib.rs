//! Support for hostpulse's end-to-end tests (`tests/e2e.rs`): nothing here
//! is part of the product. The test package also builds `e2e-collector`, the
//! collector's own command line, so tests can run it as a child process.
