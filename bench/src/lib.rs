//! Shared helpers of the benchmark programs in `src/bin/`: each program
//! measures hostpulse next to a named peer in the same run and prints both
//! figures. See BENCHMARKS.md for the commands and results.
