//! Gateway integration tests: a real gateway node over real HTTP, fed by a fake control plane
//! over real gRPC, in front of validating mock upstreams. Everything stays on 127.0.0.1.

mod common;
mod routing;
mod streaming;
mod sync;
