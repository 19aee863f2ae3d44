//! Switchyard's translation core: canonical chat types, the formats clients speak, and one
//! adapter per upstream provider. Pure and network-free: the gateway does all I/O.
//!
//! # The hub
//!
//! ```text
//!  client body ─► InboundFormat::parse_request ─► ChatRequest ─► Target::build_request ─► http::Request
//!  upstream    ─► Target::parse_response ─► ChatResponse ─► InboundFormat::render_response ─► client
//!  upstream    ─► Target::stream_decoder ─► StreamEvent* ─► InboundFormat::stream_encoder ─► SSE
//!  any error   ─► ApiError ─► InboundFormat::render_error ─► (status, body)
//! ```
//!
//! Each wire API lives in one module of [`dialect`] (OpenAI Chat Completions, OpenAI
//! Responses, Gemini, Bedrock Converse) and translates both ways; [`provider`] adds URLs,
//! authentication (SigV4 for Bedrock) and the per-provider quirks.
//!
//! # The fast path
//!
//! When the client speaks the upstream's API ([`InboundFormat::passthrough_to`]), the body is
//! scanned once ([`InboundFormat::envelope`]: the model, the stream flag and where the
//! prompt lies, no tree built), written once with the model replaced
//! ([`InboundFormat::passthrough_body`]) and sent with [`Target::passthrough_request`];
//! streams are relayed event by event through [`InboundFormat::stream_inspector`], which
//! reads usage. Requests using features the canonical form cannot carry (built-in tools,
//! audio, `n > 1`, stored conversations…) are recorded in
//! [`ChatRequest::untranslatable`] and refused on the translated path only.
//!
//! # Example
//!
//! ```
//! use switchyard_llm::{Credentials, InboundFormat, Provider, Target};
//!
//! let body = br#"{"model": "claude/anthropic.claude-3-haiku-20240307-v1:0",
//!                 "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}"#;
//! let req = InboundFormat::OpenAiChat.parse_request(body)?;
//! let target = Target::new(
//!     Provider::Bedrock,
//!     "https://bedrock-runtime.us-east-1.amazonaws.com",
//!     "anthropic/anthropic.claude-3-haiku-20240307-v1:0",
//! )
//! .with_region("us-east-1")
//! .with_credentials(Credentials::Aws(switchyard_llm::sigv4::AwsCredentials {
//!     access_key_id: "AKIDEXAMPLE".into(),
//!     secret_access_key: "secret".into(),
//!     session_token: None,
//! }));
//! let upstream = target.build_request(&req)?;
//! assert_eq!(
//!     upstream.uri().path(),
//!     "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
//! );
//! assert!(upstream.headers().contains_key("authorization"));
//! # Ok::<(), switchyard_llm::LlmError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod canonical;
pub mod dialect;
pub mod envelope;
pub mod error;
pub mod eventstream;
mod inbound;
pub mod passthrough;
pub mod provider;
pub mod sigv4;
pub mod sse;
pub mod stream;

pub use canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Image, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Untranslatable, Usage,
};
pub use envelope::{Envelope, EnvelopeError};
pub use error::{ApiError, ErrorKind, LlmError, StreamError};
pub use inbound::{ErrorShape, InboundFormat, Operation};
pub use passthrough::StreamInspector;
pub use provider::{Credentials, Provider, ProviderAdapter, Target, UpstreamApi};
pub use stream::{StreamDecoder, StreamEncoder};
