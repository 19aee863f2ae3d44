//! Switchyard's control plane: the store of LLM Proxy definitions, the admin REST API, and the
//! gRPC stream that feeds gateway nodes with versioned snapshots.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod store;
