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

/// `parallel_tool_calls: false` for upstreams that cannot be told (Gemini, Bedrock Converse):
/// the client's encoder sees the answer's first tool call only.
pub struct FirstToolCallOnly(pub Box<dyn StreamEncoder>);

impl StreamEncoder for FirstToolCallOnly {
    fn push(&mut self, event: &StreamEvent) -> Bytes {
        match event {
            StreamEvent::ToolCallStart { index, .. } | StreamEvent::ToolCallDelta { index, .. }
                if *index > 0 =>
            {
                Bytes::new()
            }
            _ => self.0.push(event),
        }
    }

    fn finish(&mut self) -> Bytes {
        self.0.finish()
    }
}

/// How an upstream stream is framed: server-sent events or AWS event-stream messages.
pub trait Framing: Send + Default {
    /// One frame (an SSE event, an event-stream message).
    type Frame;
    /// Feeds bytes as they arrive; returns the frames they completed.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Self::Frame>, StreamError>;
    /// Ends the stream; returns a last frame the framing allows to end without its
    /// terminator, and fails on a cut frame.
    fn finish(&mut self) -> Result<Vec<Self::Frame>, StreamError>;
}

/// What one upstream API makes of its frames: the per-API half of a stream decoder.
pub trait FrameHandler<F>: Send + Default {
    /// Turns one frame into canonical events.
    fn on_frame(&mut self, frame: F, out: &mut Vec<StreamEvent>) -> Result<(), StreamError>;
    /// Whether the stream already ended (an error event): later frames are not read.
    fn halted(&self) -> bool {
        false
    }
    /// The upstream body ended: the last events, or [`StreamError::Truncated`] when the API
    /// had not said it was done.
    fn on_end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), StreamError>;
}

/// The one stream-decoder driver: a [`Framing`] feeding a [`FrameHandler`]. Every upstream
/// API's decoder is this with its own handler.
#[derive(Debug, Default)]
pub struct FramedDecoder<F, H> {
    framing: F,
    handler: H,
}

impl<F: Framing, H: FrameHandler<F::Frame>> FramedDecoder<F, H> {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        FramedDecoder {
            framing: F::default(),
            handler: H::default(),
        }
    }

    fn feed(
        &mut self,
        frames: Vec<F::Frame>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        for frame in frames {
            if self.handler.halted() {
                break;
            }
            self.handler.on_frame(frame, out)?;
        }
        Ok(())
    }
}

impl<F: Framing, H: FrameHandler<F::Frame>> StreamDecoder for FramedDecoder<F, H> {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
        let mut out = Vec::new();
        let frames = self.framing.push(chunk)?;
        self.feed(frames, &mut out)?;
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<StreamEvent>, StreamError> {
        let mut out = Vec::new();
        let frames = self.framing.finish()?;
        self.feed(frames, &mut out)?;
        self.handler.on_end(&mut out)?;
        Ok(out)
    }
}

impl Framing for crate::sse::SseParser {
    type Frame = crate::sse::SseEvent;

    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Self::Frame>, StreamError> {
        crate::sse::SseParser::push(self, chunk)
    }

    fn finish(&mut self) -> Result<Vec<Self::Frame>, StreamError> {
        crate::sse::SseParser::finish(self)
    }
}

impl Framing for crate::eventstream::FrameDecoder {
    type Frame = crate::eventstream::Message;

    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Self::Frame>, StreamError> {
        Ok(crate::eventstream::FrameDecoder::push(self, chunk)?)
    }

    fn finish(&mut self) -> Result<Vec<Self::Frame>, StreamError> {
        crate::eventstream::FrameDecoder::finish(self)?;
        Ok(Vec::new())
    }
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
