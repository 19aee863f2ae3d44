//! Switchyard's translation core: canonical chat types, the inbound formats clients speak,
//! and one adapter per upstream provider. Pure and network-free: the gateway does the I/O.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod canonical;
pub mod error;
pub mod eventstream;
pub mod sigv4;
pub mod sse;

pub use canonical::*;
pub use error::{ApiError, ErrorKind, LlmError, StreamError};
pub mod dialect;
pub mod stream;
