//! The snapshot a gateway's nodes serve, and (feature `proto`) its conversions to and from
//! the gRPC messages.
//!
//! Domain → proto cannot fail; proto → domain fails with a typed [`InvalidSnapshot`] on
//! anything the node could not serve (unknown enum values, missing messages), which the node
//! reports back as a NACK while it keeps its previous snapshot.

#[cfg(feature = "proto")]
mod proto;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{LibraryTopic, NodeConsumer, Price, Proxy, SemanticService};

#[cfg(feature = "proto")]
pub use proto::{provider_from_pb, provider_to_pb};

/// Everything one gateway serves, at one version.
///
/// `semantic_services` are the services the proxies name (`ProxySpec::semantic_service`),
/// each once; a snapshot converted from the wire is checked to resolve every such name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub gateway: String,
    pub version: u64,
    pub proxies: Vec<Proxy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub semantic_services: Vec<SemanticService>,
    /// The library topics the proxies refer to, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<LibraryTopic>,
    /// The consumers allowed on at least one of the proxies, with their live keys' hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<NodeConsumer>,
    /// The price table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<Price>,
    pub created_at: DateTime<Utc>,
}

impl Snapshot {
    /// The semantic service named `name`, if the snapshot carries it.
    pub fn semantic_service(&self, name: &str) -> Option<&SemanticService> {
        self.semantic_services.iter().find(|s| s.name == name)
    }

    /// The library topic named `name`, if the snapshot carries it.
    pub fn topic(&self, name: &str) -> Option<&LibraryTopic> {
        self.topics.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot: {0}")]
pub struct InvalidSnapshot(pub String);
