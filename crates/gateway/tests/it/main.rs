//! Gateway integration tests: a real gateway node over real HTTP, fed by a fake control plane
//! over real gRPC, in front of validating mock upstreams. Everything stays on 127.0.0.1.
// Test helpers outside #[test] functions: a panic there is a failed test with a location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod conformance;
mod providers;
mod routing;
mod semantic;
mod streaming;
mod sync;
