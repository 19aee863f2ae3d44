//! Sentence embeddings and topic scoring for Switchyard's semantic routing and
//! semantic prompt guard. Pure computation: no network, no files besides the
//! model directory given to a loader.
//!
//! # Pieces
//! * [`Encoder`]: text → L2-normalised vectors. Two implementations:
//!   [`MiniLmEncoder`] (all-MiniLM-L6-v2 on candle, 384 dims, accurate, ~ms
//!   per text) and [`StaticEncoder`] (model2vec static embeddings, 64 dims,
//!   ~µs per text, less accurate).
//! * [`TopicIndex`]: topics described by example utterances; scores a query
//!   vector against every topic (max cosine over the topic's utterances).
//!   [`EmbeddingCache`] keeps utterance vectors across rebuilds.
//! * [`EmbeddingService`]: async front to an encoder for the request path:
//!   runs it off the tokio reactor, batches concurrent requests into one
//!   forward pass, caches prompt embeddings, bounds its queue.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{path::Path, sync::Arc};
//! use switchyard_semantic::{EmbeddingService, MiniLmEncoder, ServiceConfig, TopicIndex};
//!
//! let encoder = Arc::new(MiniLmEncoder::load(Path::new("models/all-MiniLM-L6-v2"))?);
//! let index = TopicIndex::encode(
//!     encoder.as_ref(),
//!     [
//!         ("billing", vec!["I was charged twice", "refund my payment"]),
//!         ("code", vec!["write a python function", "fix this compiler error"]),
//!     ],
//! )?;
//! let service = EmbeddingService::new(encoder, ServiceConfig::default())?;
//! let query = service.embed("why did you bill me two times?").await?;
//! match index.score(&query)?.best_above(0.5) {
//!     Some(topic) => println!("route to {} ({:.2})", topic.label, topic.score),
//!     None => println!("out of scope: default route"),
//! }
//! # Ok(()) }
//! ```
//!
//! Model files come from `scripts/fetch-model` (PyPI wheels; see the crate README).
#![forbid(unsafe_code)]

mod bert;
mod calibrate;
mod encoder;
mod error;
mod files;
mod index;
mod lru;
mod minilm;
mod scoring;
mod service;
mod simd;
mod static_model;

pub use calibrate::{Calibration, CalibrationMethod, CalibrationSample};
pub use encoder::{Encoder, dot, l2_normalize};
pub use error::{EmbedError, EncodeError, IndexError, LoadError};
pub use index::{
    EmbeddingCache, TopicIndex, TopicIndexBuilder, TopicScore, TopicScores, TopicVectors,
};
pub use minilm::{MINILM_NAME, MiniLmEncoder, MiniLmOptions, Truncation};
pub use scoring::Scoring;
pub use service::{EmbeddingService, ServiceConfig, ServiceStats};
pub use static_model::{STATIC_NAME, StaticEncoder};

#[cfg(test)]
pub(crate) mod testing;
