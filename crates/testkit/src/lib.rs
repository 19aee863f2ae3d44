#![forbid(unsafe_code)]
//! Test support shared by the crates' tests, the end-to-end suite and the benchmarks.

pub mod pg;
