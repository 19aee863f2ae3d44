//! Test helpers for Switchyard: mock providers that validate what they receive, a fake
//! control plane, and snapshot builders. Dev-only; nothing here reaches past 127.0.0.1.
#![forbid(unsafe_code)]

pub mod control_plane;
pub mod embeddings;
pub mod openai;
pub mod pg;
pub mod snapshots;

pub use control_plane::{FakeControlPlane, NodeEvent};
pub use embeddings::MockEmbeddings;
pub use openai::{Behavior, MOCK_API_KEY, MockConfig, MockOpenAi, RecordedRequest, reply_text};
