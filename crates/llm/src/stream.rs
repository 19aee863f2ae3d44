//! The two stateful stream translators: a decoder per upstream API (bytes → canonical
//! [`StreamEvent`]s) and an encoder per inbound format (canonical events → SSE bytes).
//!
//! The gateway creates one of each per request:
//!
//! ```text
//! upstream bytes ─► StreamDecoder::push ─► [StreamEvent] ─► StreamEncoder::push ─► client bytes
//! upstream EOF   ─► StreamDecoder::finish ─► [StreamEvent] ─► StreamEncoder::push, ::finish
//! ```
//!
//! A decoder error (`Err(StreamError)`) means the upstream bytes are unusable: the gateway
//! should push `StreamEvent::Error(err.into())` to the encoder and stop.

use bytes::Bytes;

use crate::canonical::StreamEvent;
use crate::error::StreamError;

/// Decodes one upstream stream into canonical events. Never panics on garbage.
pub trait StreamDecoder: Send {
    /// Feeds bytes as they arrive (any chunking); returns the events they completed.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, StreamError>;

    /// Ends the stream; fails with [`StreamError::Truncated`] when the upstream stopped
    /// before saying it was done.
    fn finish(&mut self) -> Result<Vec<StreamEvent>, StreamError>;
}

/// Encodes canonical events as one inbound format's SSE stream.
pub trait StreamEncoder: Send {
    /// The bytes to send for `event` (possibly empty, possibly several SSE events).
    fn push(&mut self, event: &StreamEvent) -> Bytes;

    /// The closing bytes (`[DONE]`, `response.completed`, the last Gemini chunk…).
    fn finish(&mut self) -> Bytes;
}

/// Runs a whole upstream body through a decoder (for tests and mocks).
pub fn decode_all(
    decoder: &mut dyn StreamDecoder,
    body: &[u8],
) -> Result<Vec<StreamEvent>, StreamError> {
    let mut events = decoder.push(body)?;
    events.extend(decoder.finish()?);
    Ok(events)
}

/// Runs events through an encoder and returns the whole stream (for tests and mocks).
pub fn encode_all(encoder: &mut dyn StreamEncoder, events: &[StreamEvent]) -> Bytes {
    let mut out = Vec::new();
    for event in events {
        out.extend_from_slice(&encoder.push(event));
    }
    out.extend_from_slice(&encoder.finish());
    Bytes::from(out)
}
