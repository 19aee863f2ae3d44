//! Test helpers for Switchyard: mock providers that validate what they receive (OpenAI,
//! Azure OpenAI, Gemini, Bedrock, Anthropic), a fake control plane, and snapshot builders. Dev-only;
//! nothing here reaches past 127.0.0.1.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod bedrock;
pub mod control_plane;
pub mod embeddings;
pub mod fault_proxy;
pub mod gemini;
pub mod node_sim;
pub mod openai;
pub mod otlp;
pub mod pg;
pub mod redis;
pub mod script;
pub mod server;
pub mod snapshots;

pub use anthropic::{ANTHROPIC_API_KEY, AnthropicConfig, MockAnthropic, THINKING_TEXT};
pub use bedrock::{BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY, MockBedrock};
pub use control_plane::{FakeControlPlane, NodeEvent};
pub use embeddings::MockEmbeddings;
pub use fault_proxy::{Fault, FaultProxy};
pub use gemini::{GEMINI_API_KEY, MockGemini};
pub use node_sim::{NodeSimulator, SimConfig};
pub use openai::{AZURE_API_KEY, MOCK_API_KEY, MockAzure, MockConfig, MockOpenAi};
pub use otlp::{AttrValue, OtlpReceiver, ReceivedSpan};
pub use script::{CACHED_TOKENS, TOOL_ARGUMENTS, reply_text, tool_reply_text};
pub use server::{Behavior, MockServer, RecordedRequest, ReportedUsage};
