//! Switchyard's gateway node: the data plane.
//!
//! A node is fed by the control plane over one gRPC stream ([`sync`]), compiles each snapshot
//! into a routing table ([`table`]) that it swaps in atomically, and serves LLM traffic over
//! HTTP (`http`), routing each request by model (`routing`) to a route's upstream
//! (`providers`), translating through `switchyard_llm` when the client's format is not the
//! upstream's, and recording its usage (`usage`). The data plane never waits for the control plane: it serves the last good
//! table (from memory, or from the cache directory after a restart).
//!
//! ```text
//! control plane ──gRPC──▶ sync ──compile──▶ table (ArcSwap) ◀──load once── http ──▶ providers ──▶ upstream
//! ```
#![forbid(unsafe_code)]

mod cache;
mod error;
mod governance;
mod http;
pub mod limits;
mod node;
mod offload;
mod providers;
mod redis_link;
mod routing;
mod semantic;
pub mod sync;
pub mod table;
mod telemetry;
mod traces;
mod usage;

pub use cache::CacheConfig;
pub use error::GatewayError;
pub use governance::{FailureMode, LimitsConfig};
pub use limits::NodeLimits;
pub use node::{ControlPlaneTls, Gateway, GatewayConfig, SyncTuning};
pub use semantic::{EncoderKind, ModelLoadError, load_encoder};
pub use switchyard_semantic::Encoder;
pub use switchyard_tls::ServerTls;
pub use sync::{SnapshotSource, SyncState};
pub use usage::ship::UsageShipping;
