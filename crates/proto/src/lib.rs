//! Generated gRPC code for Switchyard's config distribution (`proto/switchyard/config/v1`).
//!
//! Generated code only: conversions to and from the domain live in `switchyard-model`.
#![forbid(unsafe_code)]

pub mod config {
    // Generated code: not ours to lint.
    #![allow(clippy::all, clippy::pedantic, clippy::allow_attributes, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("switchyard.config.v1");
    }
}

pub use config::v1;
