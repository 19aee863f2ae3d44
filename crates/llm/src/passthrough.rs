//! The fast path: when a client speaks the upstream's own API, its body is forwarded with
//! only `model` rewritten, byte-for-byte otherwise (unknown fields, key order and number
//! formatting survive), and usage is read from the answer without re-encoding it. Streams
//! are relayed event by event through a [`StreamInspector`].

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::InboundFormat;
use crate::canonical::Usage;
use crate::dialect::{anthropic, gemini, openai_chat, openai_responses};
use crate::error::{ApiError, ErrorKind, LlmError};
use crate::sse::{EventSplitter, MAX_EVENT_BYTES, event_data};

pub use gemini::usage_from_response as usage_from_gemini_response;
pub use openai_chat::usage_from_chunk as usage_from_openai_chunk;
pub use openai_chat::usage_from_response as usage_from_openai_response;
pub use openai_responses::usage_from_event as usage_from_responses_event;
pub use openai_responses::usage_from_response as usage_from_responses_response;

fn scanned(body: &[u8]) -> Result<crate::envelope::Scanned, LlmError> {
    crate::envelope::scan(body)
        .map_err(|e| LlmError::invalid("", format!("body is not a json object: {e}")))
}

/// Replaces the top-level `model` (adding it when absent), keeping every other byte of the
/// values and the order of the keys.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Bytes, LlmError> {
    scanned(body)?.write(body, Some(model), false)
}

/// For a streaming Chat Completions body (`"stream": true`), sets
/// `stream_options.include_usage` so the last chunk carries usage; other bodies are
/// returned unchanged. Returns whether the client had asked for usage itself, so the
/// gateway knows whether to drop the extra chunk (see [`is_usage_only_chunk`]).
pub fn request_stream_usage(body: &[u8]) -> Result<(Bytes, bool), LlmError> {
    let scanned = scanned(body)?;
    if scanned.raw(body, "stream").map(str::trim) != Some("true") {
        return Ok((Bytes::copy_from_slice(body), false));
    }
    let asked = match scanned.raw(body, "stream_options") {
        None => false,
        Some(raw) => {
            let options: Value = serde_json::from_str(raw)
                .map_err(|e| LlmError::invalid("stream_options", format!("not valid json: {e}")))?;
            options.get("include_usage") == Some(&Value::Bool(true))
        }
    };
    Ok((scanned.write(body, None, true)?, asked))
}

/// Whether a chunk's data is the usage-only chunk (`"choices": []` with usage) that
/// [`request_stream_usage`] added, so the gateway can hold it back from clients that did not
/// ask for it.
pub fn is_usage_only_chunk(data: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct C {
        #[serde(default)]
        choices: Option<Vec<Value>>,
        #[serde(default)]
        usage: Option<Value>,
    }
    matches!(
        serde_json::from_str::<C>(data),
        Ok(C { choices: Some(c), usage: Some(u) }) if c.is_empty() && !u.is_null()
    )
}

/// Inspects a passthrough stream event by event on its way to the client, each event's
/// bytes untouched: checks each event's JSON (a garbled event ends the stream with an error
/// event in the client's format), reads usage, holds back the usage chunk the gateway asked
/// for from a client that did not, and closes a stream that stops before its end with an
/// error event. Made by [`crate::InboundFormat::stream_inspector`].
#[derive(Debug)]
pub struct StreamInspector {
    /// Bedrock `InvokeModelWithResponseStream` frames, unwrapped into SSE events first.
    frames: Option<crate::eventstream::FrameDecoder>,
    splitter: EventSplitter,
    state: Inspection,
}

#[derive(Debug)]
struct Inspection {
    format: InboundFormat,
    hold_usage_chunk: bool,
    usage: Option<Usage>,
    /// The next Responses `sequence_number`, for an error event of our own.
    next_sequence: u64,
    /// The upstream said its answer is complete (or ended it with an error event).
    complete: bool,
    /// The upstream sent an error event of its own (relayed as is).
    upstream_error: bool,
    /// We ended the stream with an error event.
    failed: bool,
    /// An Anthropic stream's usage, split across `message_start` and `message_delta`.
    anthropic_usage: anthropic::StreamUsage,
}

/// The fields of a stream event that tell whether it is well-formed, final, or carries
/// usage; everything else is skipped (but still checked to be valid JSON).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    choices: Option<Vec<ChoiceProbe>>,
    #[serde(default)]
    usage: Option<IgnoredAny>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(default)]
    candidates: Option<Vec<CandidateProbe>>,
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CandidateProbe {
    #[serde(default, rename = "finishReason")]
    finish_reason: Option<IgnoredAny>,
}

enum Verdict {
    Send,
    Hold,
    Garbled(String),
}

fn garbled(why: &str) -> ApiError {
    ApiError::invalid_response(format!("the upstream sent a malformed stream: {why}"))
        .code("upstream_stream_error")
}

impl StreamInspector {
    pub(crate) fn new(format: InboundFormat, hold_usage_chunk: bool) -> StreamInspector {
        StreamInspector {
            frames: None,
            splitter: EventSplitter::default(),
            state: Inspection {
                format,
                hold_usage_chunk,
                usage: None,
                next_sequence: 0,
                complete: false,
                upstream_error: false,
                failed: false,
                anthropic_usage: anthropic::StreamUsage::default(),
            },
        }
    }

    /// The same inspector reading an AWS event stream whose `chunk` messages carry the
    /// events (Bedrock `InvokeModelWithResponseStream`); the client gets them as SSE.
    pub(crate) fn reading_event_stream(mut self) -> StreamInspector {
        self.frames = Some(crate::eventstream::FrameDecoder::new());
        self
    }

    /// The SSE bytes an event-stream chunk stands for (the chunk itself for SSE upstreams);
    /// `Err` with the bytes ending the stream when the frames are broken or an exception.
    fn unwrap_frames(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Bytes> {
        let Some(frames) = self.frames.as_mut() else {
            return Ok(chunk.to_vec());
        };
        let messages = match frames.push(chunk) {
            Ok(m) => m,
            Err(e) => return Err(self.state.fail(&garbled(&e.to_string()))),
        };
        let mut out = Vec::with_capacity(chunk.len());
        for message in &messages {
            match anthropic::bedrock_chunk_event(message) {
                Ok(Some(event)) => out.extend_from_slice(&event),
                Ok(None) => {}
                Err(err) => {
                    // Relay what came before the exception, then end with it.
                    let mut ended = self.relay_sse(&out);
                    let mut bytes = ended.to_vec();
                    if !self.state.failed {
                        self.state.upstream_error = true;
                        bytes.extend_from_slice(&self.state.fail(&err));
                    }
                    ended = Bytes::from(bytes);
                    return Err(ended);
                }
            }
        }
        Ok(out)
    }

    fn relay_sse(&mut self, chunk: &[u8]) -> Bytes {
        self.splitter.push(chunk);
        let mut out = Vec::with_capacity(chunk.len());
        while let Some(event) = self.splitter.next_event() {
            if !self.state.relay(event, &mut out) {
                return Bytes::from(out);
            }
        }
        if self.splitter.pending() > MAX_EVENT_BYTES {
            out.extend_from_slice(&self.state.fail(&garbled("an event larger than the limit")));
        }
        Bytes::from(out)
    }

    /// The bytes to send for one upstream chunk (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.state.failed {
            return Bytes::new();
        }
        match self.unwrap_frames(chunk) {
            Ok(sse) => self.relay_sse(&sse),
            Err(ended) => ended,
        }
    }

    /// The closing bytes when the upstream body ended: the last event if it lacked its
    /// blank line, and an error event if the answer was not complete.
    pub fn end(&mut self) -> Bytes {
        if self.state.failed {
            return Bytes::new();
        }
        let mut out = Vec::new();
        if let Some(frames) = self.frames.as_mut()
            && let Err(e) = frames.finish()
        {
            return self.state.fail(&garbled(&e.to_string()));
        }
        if let Some(rest) = self.splitter.take_rest()
            && !self.state.relay(&rest, &mut out)
        {
            return Bytes::from(out);
        }
        if !self.state.complete {
            let err = ApiError::new(
                ErrorKind::InvalidResponse,
                "the upstream stream ended before the answer was complete",
            )
            .code("upstream_stream_error");
            out.extend_from_slice(&self.state.fail(&err));
        }
        Bytes::from(out)
    }

    /// Ends the stream with `err` as an error event in the client's format (nothing once
    /// ended).
    pub fn fail(&mut self, err: &ApiError) -> Bytes {
        self.state.fail(err)
    }

    /// Whether the inspector ended the stream with an error event of its own.
    pub fn is_failed(&self) -> bool {
        self.state.failed
    }

    /// Whether the upstream's stream turned out unusable (garbled, cut, or an error event).
    pub fn stream_failed(&self) -> bool {
        self.state.failed || self.state.upstream_error
    }

    /// The usage the upstream reported, as far as it was seen.
    pub fn usage(&self) -> Option<Usage> {
        self.state.usage
    }
}

impl Inspection {
    /// Inspects one event and appends it to `out` if it is to be sent; false once failed.
    fn relay(&mut self, event: &[u8], out: &mut Vec<u8>) -> bool {
        match self.inspect(event) {
            Verdict::Send => out.extend_from_slice(event),
            Verdict::Hold => {}
            Verdict::Garbled(why) => {
                out.extend_from_slice(&self.fail(&garbled(&why)));
                return false;
            }
        }
        true
    }

    fn inspect(&mut self, event: &[u8]) -> Verdict {
        if std::str::from_utf8(event).is_err() {
            return Verdict::Garbled("an event that is not UTF-8".to_owned());
        }
        let Some((data, name)) = event_data(event) else {
            return Verdict::Send;
        };
        let data = data.trim();
        if data.is_empty() {
            return Verdict::Send;
        }
        let name = name.map(str::trim);
        if data == "[DONE]" {
            self.complete = true;
            return Verdict::Send;
        }
        let probe: Probe = match serde_json::from_str(data) {
            Ok(p) => p,
            Err(e) => return Verdict::Garbled(format!("an event that is not valid JSON ({e})")),
        };
        if probe.error.is_some() || name == Some("error") {
            // The upstream's own error event, already in the client's format.
            self.complete = true;
            self.upstream_error = true;
            return Verdict::Send;
        }
        match self.format {
            InboundFormat::OpenAiChat => {
                let choices = probe.choices.as_deref().unwrap_or_default();
                if choices.iter().any(|c| c.finish_reason.is_some()) {
                    self.complete = true;
                }
                if probe.usage.is_some() {
                    if let Some(u) = openai_chat::usage_from_chunk(data) {
                        self.usage = Some(u);
                    }
                    if self.hold_usage_chunk && is_usage_only_chunk(data) {
                        return Verdict::Hold;
                    }
                }
            }
            InboundFormat::OpenAiResponses => {
                if let Some(seq) = probe.sequence_number {
                    self.next_sequence = seq.saturating_add(1);
                }
                let kind = probe.kind.as_deref().or(name).unwrap_or_default();
                if matches!(
                    kind,
                    "response.completed" | "response.incomplete" | "response.failed"
                ) {
                    self.complete = true;
                    if let Some(u) = openai_responses::usage_from_event(data) {
                        self.usage = Some(u);
                    }
                }
            }
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                match probe.kind.as_deref().or(name).unwrap_or_default() {
                    "message_start" | "message_delta" => {
                        self.anthropic_usage.read_data(data);
                        self.usage = self.anthropic_usage.usage();
                    }
                    "message_stop" => self.complete = true,
                    _ => {}
                }
            }
            InboundFormat::Gemini => {
                let candidates = probe.candidates.as_deref().unwrap_or_default();
                if candidates.iter().any(|c| c.finish_reason.is_some()) {
                    self.complete = true;
                }
                if probe.usage_metadata.is_some()
                    && let Some(u) = gemini::usage_from_response(data.as_bytes())
                {
                    self.usage = Some(u);
                }
            }
        }
        Verdict::Send
    }

    fn fail(&mut self, err: &ApiError) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        self.failed = true;
        self.format.stream_error_frame(err, self.next_sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rewrites_only_the_model() {
        let body = br#"{ "z": 1.50, "model" : "openai/gpt-4.1", "messages": [ {"role":"user","content":"h\u00e9"} ], "a": {"b": [1e3, null]} }"#;
        let out = rewrite_model(body, "gpt-4.1").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"z":1.50,"model":"gpt-4.1","messages":[ {"role":"user","content":"h\u00e9"} ],"a":{"b": [1e3, null]}}"#
        );
        let out = rewrite_model(br#"{"messages":[]}"#, "m\"x").unwrap();
        assert_eq!(out.as_ref(), br#"{"model":"m\"x","messages":[]}"#);
        assert!(rewrite_model(b"[1]", "m").is_err());
        assert!(rewrite_model(b"{\"model\":", "m").is_err());
    }

    #[test]
    fn stream_usage_is_requested() {
        let (out, asked) = request_stream_usage(br#"{"model":"m","stream":true}"#).unwrap();
        assert_eq!(
            out.as_ref(),
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert!(!asked);
        let (out, asked) = request_stream_usage(
            br#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#,
        )
        .unwrap();
        assert!(asked);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["x"], 1);
        let (out, _) = request_stream_usage(br#"{"stream":false}"#).unwrap();
        assert_eq!(out.as_ref(), br#"{"stream":false}"#);

        assert!(is_usage_only_chunk(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        ));
        assert!(!is_usage_only_chunk(
            r#"{"choices":[{"index":0}],"usage":null}"#
        ));
        assert_eq!(
            usage_from_openai_chunk(
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
            )
            .map(|u| u.total_tokens()),
            Some(3)
        );
    }

    #[test]
    fn stream_error_frames() {
        use crate::{ApiError, ErrorKind, InboundFormat};
        let err = ApiError::invalid_response("the upstream stream broke off");
        let chat = InboundFormat::OpenAiChat.stream_error_frame(&err, 0);
        let chat = std::str::from_utf8(&chat).unwrap();
        let data: Value =
            serde_json::from_str(chat.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(data["error"]["message"], "the upstream stream broke off");
        assert_eq!(data["error"]["type"], "server_error");
        let gem = InboundFormat::Gemini.stream_error_frame(&err, 0);
        let gem = std::str::from_utf8(&gem).unwrap();
        let data: Value = serde_json::from_str(gem.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(data["error"]["status"], "INTERNAL");
        assert_eq!(data["error"]["code"], 502);
        let resp = InboundFormat::OpenAiResponses
            .stream_error_frame(&ApiError::new(ErrorKind::Unavailable, "busy"), 7);
        let resp = std::str::from_utf8(&resp).unwrap();
        assert!(resp.starts_with("event: error\ndata: "), "{resp}");
        let data: Value =
            serde_json::from_str(resp.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["type"], "error");
        assert_eq!(data["sequence_number"], 7);
        assert_eq!(data["code"], "unavailable");
    }

    fn anthropic_stream() -> String {
        [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"c","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":1,"cache_creation_input_tokens":2,"cache_read_input_tokens":30}}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":9}}"#,
            r#"{"type":"message_stop"}"#,
        ]
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            format!("event: {}\ndata: {d}\n\n", v["type"].as_str().unwrap())
        })
        .collect()
    }

    #[test]
    fn anthropic_streams_are_relayed_untouched_with_their_usage_combined() {
        let stream = anthropic_stream();
        let mut inspector = InboundFormat::Anthropic.stream_inspector(false);
        let mut out = inspector.push(stream.as_bytes()).to_vec();
        out.extend_from_slice(&inspector.end());
        assert_eq!(std::str::from_utf8(&out).unwrap(), stream);
        let usage = inspector.usage().unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens
            ),
            (39, 9, Some(30))
        );
        assert!(!inspector.stream_failed());

        // Cut before message_stop: ends with Anthropic's error event.
        let cut = &stream[..stream.find("event: message_stop").unwrap()];
        let mut inspector = InboundFormat::Anthropic.stream_inspector(false);
        inspector.push(cut.as_bytes());
        let end = inspector.end();
        let end = std::str::from_utf8(&end).unwrap();
        assert!(end.starts_with("event: error\ndata: "), "{end}");
        assert!(end.contains(r#""type":"error""#), "{end}");
        assert!(inspector.is_failed());
    }

    #[test]
    fn bedrock_invoke_streams_become_server_sent_events() {
        use base64::Engine;
        let stream = anthropic_stream();
        let target = crate::Target::new(crate::Provider::Bedrock, "u", "anthropic.claude-x");
        let mut frames = Vec::new();
        let mut first = 0;
        for event in stream.split("\n\n").filter(|e| !e.is_empty()) {
            if event.contains("content_block_start") {
                first = frames.len();
            }
            let data = event
                .lines()
                .nth(1)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap();
            let payload = serde_json::json!({
                "bytes": base64::engine::general_purpose::STANDARD.encode(data)
            });
            frames.extend_from_slice(
                &crate::eventstream::encode_event("chunk", payload.to_string().as_bytes()).unwrap(),
            );
        }
        let mut inspector = InboundFormat::Anthropic.stream_inspector_for(&target, false);
        let mut out = Vec::new();
        for piece in frames.chunks(7) {
            out.extend_from_slice(&inspector.push(piece));
        }
        out.extend_from_slice(&inspector.end());
        assert_eq!(std::str::from_utf8(&out).unwrap(), stream);
        assert_eq!(inspector.usage().map(|u| u.output_tokens), Some(9));

        // An exception mid-stream ends it with an Anthropic error event.
        let mut inspector = InboundFormat::Anthropic.stream_inspector_for(&target, false);
        let mut out = inspector.push(&frames[..first]).to_vec();
        out.extend_from_slice(&inspector.push(
            &crate::eventstream::encode_exception("throttlingException", "slow down").unwrap(),
        ));
        out.extend_from_slice(&inspector.end());
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        assert!(text.contains("event: error"), "{text}");
        assert!(text.contains("rate_limit_error"), "{text}");
        assert!(inspector.stream_failed());

        // Broken frames: an error event too.
        let mut inspector = InboundFormat::Anthropic.stream_inspector_for(&target, false);
        let out = inspector.push(&[0u8; 16]);
        assert!(std::str::from_utf8(&out).unwrap().contains("event: error"));
    }

    proptest! {
        #[test]
        fn rewrite_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = rewrite_model(&body, "m");
            let _ = request_stream_usage(&body);
        }

        #[test]
        fn rewrite_keeps_every_other_field(
            keys in proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..8)
        ) {
            let mut original = serde_json::Map::new();
            for (k, v) in &keys {
                original.insert(k.clone(), Value::from(*v));
            }
            let body = Value::Object(original.clone()).to_string();
            let out: Value = serde_json::from_slice(&rewrite_model(body.as_bytes(), "x").unwrap()).unwrap();
            let mut expected = original;
            expected.insert("model".into(), Value::from("x"));
            prop_assert_eq!(out, Value::Object(expected));
        }
    }
}
