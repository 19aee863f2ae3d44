//! Stage 4 for bodies that stream: what happens to each upstream chunk on its way to the
//! client. One [`BodyFilter`] per answer:
//!
//! - [`BodyFilter::Tee`]: a passthrough JSON answer, relayed untouched, a copy kept to read
//!   its usage at the end.
//! - [`BodyFilter::Sse`]: a passthrough stream, relayed event by event: each event's JSON is
//!   checked (a garbled event ends the stream with an error event in the client's format),
//!   usage is read, the usage chunk the gateway asked for is held back from a client that did
//!   not, and a stream that stops before its end is closed with an error event.
//! - [`BodyFilter::Translate`]: the per-request stream translator, upstream decoder →
//!   canonical events → the client format's encoder.
//!
//! In every case a broken upstream (a cut connection, bytes that cannot be decoded) ends the
//! client's stream with a clear error event; never a hang, never a panic.

use bytes::Bytes;
use switchyard_llm::{
    ApiError, ErrorKind, InboundFormat, StreamDecoder, StreamEncoder, StreamEvent, StreamInspector,
    Usage,
};

/// The most of a passthrough JSON answer kept to read its usage.
const TEE_LIMIT: usize = 8 * 1024 * 1024;

/// What happens to an answer's body between the upstream and the client.
pub(crate) enum BodyFilter {
    Tee(Tee),
    Sse(Box<StreamInspector>),
    Translate(Box<Translator>),
    /// A cached answer replayed: the bytes are already the client's, complete and checked.
    Replay,
}

impl BodyFilter {
    pub(crate) fn tee(format: InboundFormat) -> BodyFilter {
        BodyFilter::Tee(Tee {
            format,
            buf: Vec::new(),
            overflow: false,
        })
    }

    /// A passthrough stream, through the client format's inspector
    /// ([`InboundFormat::stream_inspector`]).
    pub(crate) fn sse(inspector: StreamInspector) -> BodyFilter {
        BodyFilter::Sse(Box::new(inspector))
    }

    pub(crate) fn translate(
        decoder: Box<dyn StreamDecoder>,
        encoder: Box<dyn StreamEncoder>,
    ) -> BodyFilter {
        BodyFilter::Translate(Box::new(Translator {
            decoder,
            encoder,
            usage: None,
            done: false,
            failed: false,
        }))
    }

    /// Whether the bytes sent differ from the upstream's (its `Content-Length` must go).
    pub(crate) fn rewrites(&self) -> bool {
        matches!(
            self,
            BodyFilter::Sse(_) | BodyFilter::Translate(_) | BodyFilter::Replay
        )
    }

    /// The bytes to send for one upstream chunk (possibly empty).
    pub(crate) fn push(&mut self, chunk: Bytes) -> Bytes {
        match self {
            BodyFilter::Tee(t) => {
                if !t.overflow {
                    if t.buf.len() + chunk.len() > TEE_LIMIT {
                        t.overflow = true;
                        t.buf = Vec::new();
                    } else {
                        t.buf.extend_from_slice(&chunk);
                    }
                }
                chunk
            }
            BodyFilter::Sse(s) => s.push(&chunk),
            BodyFilter::Translate(t) => t.push(&chunk),
            BodyFilter::Replay => chunk,
        }
    }

    /// The closing bytes when the upstream body ended.
    pub(crate) fn end(&mut self) -> Bytes {
        match self {
            BodyFilter::Tee(_) | BodyFilter::Replay => Bytes::new(),
            BodyFilter::Sse(s) => s.end(),
            BodyFilter::Translate(t) => t.end(),
        }
    }

    /// The closing bytes when the upstream body broke off; `None` when the body is not a
    /// stream of events (the client's connection is then cut, so the answer cannot look
    /// complete).
    pub(crate) fn broken(&mut self, detail: &str) -> Option<Bytes> {
        let err = ApiError::new(
            ErrorKind::Upstream,
            format!("the upstream connection broke off mid-stream: {detail}"),
        )
        .code("upstream_stream_error");
        match self {
            BodyFilter::Tee(_) | BodyFilter::Replay => None,
            BodyFilter::Sse(s) => Some(s.fail(&err)),
            BodyFilter::Translate(t) => Some(t.fail(err)),
        }
    }

    /// Whether the filter ended the answer (a terminal error event was sent): the upstream
    /// is not read any further.
    pub(crate) fn is_done(&self) -> bool {
        match self {
            BodyFilter::Tee(_) | BodyFilter::Replay => false,
            BodyFilter::Sse(s) => s.is_failed(),
            BodyFilter::Translate(t) => t.done,
        }
    }

    /// Whether the upstream's stream turned out unusable (garbled, cut, or an error event).
    pub(crate) fn stream_failed(&self) -> bool {
        match self {
            BodyFilter::Tee(_) | BodyFilter::Replay => false,
            BodyFilter::Sse(s) => s.stream_failed(),
            BodyFilter::Translate(t) => t.failed,
        }
    }

    /// The usage the upstream reported, as far as it was seen.
    pub(crate) fn usage(&self) -> Option<Usage> {
        match self {
            BodyFilter::Tee(t) if t.overflow => None,
            BodyFilter::Tee(t) => t.format.usage_from_body(&t.buf),
            // A hit spends no upstream tokens.
            BodyFilter::Replay => None,
            BodyFilter::Sse(s) => s.usage(),
            BodyFilter::Translate(t) => t.usage,
        }
    }
}

pub(crate) struct Tee {
    format: InboundFormat,
    buf: Vec<u8>,
    overflow: bool,
}

/// The per-request stream translator.
pub(crate) struct Translator {
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    usage: Option<Usage>,
    /// A terminal event was sent: nothing more is read or sent.
    done: bool,
    /// The upstream's stream was unusable or reported an error.
    failed: bool,
}

impl Translator {
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        match self.decoder.push(chunk) {
            Ok(events) => self.emit(events, Vec::new()),
            Err(e) => self.fail(e.into()),
        }
    }

    fn emit(&mut self, events: Vec<StreamEvent>, mut out: Vec<u8>) -> Bytes {
        for event in &events {
            match event {
                StreamEvent::Usage(u) => self.usage = Some(*u),
                StreamEvent::Error(_) => {
                    self.done = true;
                    self.failed = true;
                }
                _ => {}
            }
            out.extend_from_slice(&self.encoder.push(event));
            if self.done {
                break;
            }
        }
        Bytes::from(out)
    }

    fn end(&mut self) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        match self.decoder.finish() {
            Ok(events) => {
                let out = self.emit(events, Vec::new());
                if self.done {
                    return out;
                }
                self.done = true;
                let mut out = out.to_vec();
                out.extend_from_slice(&self.encoder.finish());
                Bytes::from(out)
            }
            Err(e) => self.fail(e.into()),
        }
    }

    fn fail(&mut self, err: ApiError) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        self.done = true;
        self.failed = true;
        self.encoder.push(&StreamEvent::Error(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use switchyard_llm::{ChatRequest, Provider, Target};

    fn formats() -> [InboundFormat; 3] {
        [
            InboundFormat::OpenAiChat,
            InboundFormat::OpenAiResponses,
            InboundFormat::Gemini,
        ]
    }

    /// Every filter a request can get: passthrough SSE per format, and the translator for
    /// every upstream decoder × client encoder.
    fn every_filter() -> Vec<BodyFilter> {
        let mut filters = Vec::new();
        for format in formats() {
            filters.push(BodyFilter::sse(format.stream_inspector(true)));
            filters.push(BodyFilter::tee(format));
            for provider in Provider::ALL {
                let target = Target::new(provider, "http://x", "m");
                let req = ChatRequest {
                    model: "m".into(),
                    stream_include_usage: true,
                    ..ChatRequest::default()
                };
                filters.push(BodyFilter::translate(
                    target.stream_decoder(),
                    format.stream_encoder(&req),
                ));
            }
        }
        filters
    }

    proptest! {
        /// Whatever an upstream sends, however it is cut, a filter never panics, ends, and
        /// sends nothing more once it ended the answer.
        #[test]
        fn filters_end_cleanly_on_anything(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            broken in any::<bool>(),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            for mut filter in every_filter() {
                let mut last = 0;
                for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
                    filter.push(Bytes::copy_from_slice(&body[last..cut]));
                    last = cut;
                    if filter.is_done() {
                        let more = filter.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        prop_assert!(more.is_empty());
                        break;
                    }
                }
                if broken {
                    filter.broken("reset");
                } else {
                    filter.end();
                }
                // Ended: a second end (or a late break) adds nothing.
                let again = filter.end();
                prop_assert!(again.is_empty());
            }
        }
    }

    fn run(filter: &mut BodyFilter, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&filter.push(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&filter.end());
        String::from_utf8(out).unwrap()
    }

    const CHAT: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn passthrough_streams_hold_the_usage_chunk_only_when_asked() {
        for split in [1, 7, 50, CHAT.len()] {
            let chunks: Vec<&[u8]> = CHAT.as_bytes().chunks(split).collect();
            let mut f = BodyFilter::sse(InboundFormat::OpenAiChat.stream_inspector(true));
            let out = run(&mut f, &chunks);
            assert!(!out.contains("prompt_tokens"), "{out}");
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(f.usage().unwrap().total_tokens(), 4);
            assert!(!f.stream_failed());

            let mut f = BodyFilter::sse(InboundFormat::OpenAiChat.stream_inspector(false));
            assert_eq!(run(&mut f, &chunks), CHAT);
        }
    }

    #[test]
    fn garbled_and_cut_passthrough_streams_end_with_an_error_event() {
        let garbled = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\": [{\n\ndata: [DONE]\n\n";
        let mut f = BodyFilter::sse(InboundFormat::OpenAiChat.stream_inspector(false));
        let out = run(&mut f, &[garbled.as_bytes()]);
        assert!(out.contains("\"content\":\"Hi\""), "{out}");
        assert!(out.contains("malformed stream"), "{out}");
        assert!(!out.contains("[DONE]"), "{out}");
        assert!(f.is_done() && f.stream_failed());

        // Cut before the end.
        let mut f = BodyFilter::sse(InboundFormat::OpenAiChat.stream_inspector(false));
        let first_event = CHAT.find("\n\n").unwrap() + 2;
        let out = run(&mut f, &[&CHAT.as_bytes()[..first_event]]);
        assert!(
            out.contains("ended before the answer was complete"),
            "{out}"
        );
        // Cut inside an event: what is left is not JSON.
        let mut f = BodyFilter::sse(InboundFormat::OpenAiChat.stream_inspector(false));
        let out = run(&mut f, &[&CHAT.as_bytes()[..first_event + 30]]);
        assert!(out.contains("malformed stream"), "{out}");

        // Broken connection: an error event in the Responses shape, numbered in sequence.
        let mut f = BodyFilter::sse(InboundFormat::OpenAiResponses.stream_inspector(false));
        let first = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{}}\n\n";
        let mut out = String::from_utf8(f.push(Bytes::from(first)).to_vec()).unwrap();
        out.push_str(std::str::from_utf8(&f.broken("reset by peer").unwrap()).unwrap());
        assert!(out.contains("event: error"), "{out}");
        assert!(out.contains("\"sequence_number\":1"), "{out}");
        assert!(out.contains("reset by peer"), "{out}");

        // The upstream's own error event is relayed as it is and ends the answer.
        let mut f = BodyFilter::sse(InboundFormat::Gemini.stream_inspector(false));
        let err =
            "data: {\"error\":{\"code\":500,\"message\":\"boom\",\"status\":\"INTERNAL\"}}\n\n";
        assert_eq!(run(&mut f, &[err.as_bytes()]), err);
        assert!(f.stream_failed());

        // JSON bodies cannot carry an error event: the connection is cut instead.
        assert!(
            BodyFilter::tee(InboundFormat::OpenAiChat)
                .broken("x")
                .is_none()
        );
    }

    #[test]
    fn gemini_and_responses_usage() {
        let gem = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2,\"totalTokenCount\":7}}\n\n";
        let mut f = BodyFilter::sse(InboundFormat::Gemini.stream_inspector(false));
        assert_eq!(run(&mut f, &[gem.as_bytes()]), gem);
        assert_eq!(f.usage().unwrap().total_tokens(), 7);

        let mut f = BodyFilter::tee(InboundFormat::OpenAiResponses);
        let body = br#"{"id":"r","object":"response","output":[],"usage":{"input_tokens":2,"output_tokens":3,"total_tokens":5}}"#;
        f.push(Bytes::from_static(&body[..10]));
        f.push(Bytes::from_static(&body[10..]));
        assert_eq!(f.usage().unwrap().output_tokens, 3);
    }

    #[test]
    fn translated_streams_end_cleanly_whatever_the_upstream_does() {
        let target = Target::new(Provider::Gemini, "http://g", "gemini-2.5-flash");
        let req = ChatRequest {
            model: "gemini-2.5-flash".into(),
            ..ChatRequest::default()
        };
        let make = || {
            BodyFilter::translate(
                target.stream_decoder(),
                InboundFormat::OpenAiChat.stream_encoder(&req),
            )
        };
        let gem = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2,\"totalTokenCount\":7}}\n\n";
        let mut f = make();
        let out = run(&mut f, &[gem.as_bytes()]);
        assert!(out.contains("\"content\":\"Hi\""), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert_eq!(f.usage().unwrap().total_tokens(), 7);

        let mut f = make();
        let out = run(&mut f, &[b"data: {\"candidates\": [\n\n"]);
        assert!(out.contains("\"error\""), "{out}");
        assert!(!out.contains("[DONE]"));
        assert!(f.stream_failed());

        let mut f = make();
        let out = run(&mut f, &[&gem.as_bytes()[..40]]);
        assert!(out.contains("\"error\""), "{out}");

        let mut f = make();
        f.push(Bytes::from(gem.replace("\"finishReason\":\"STOP\",", "")));
        let out = String::from_utf8(f.broken("reset").unwrap().to_vec()).unwrap();
        assert!(out.contains("broke off mid-stream: reset"), "{out}");
        assert!(f.is_done());
        assert_eq!(f.end(), Bytes::new());

        // An error event inside a 200 stream.
        let mut f = make();
        let err = "data: {\"error\":{\"code\":429,\"message\":\"quota\",\"status\":\"RESOURCE_EXHAUSTED\"}}\n\n";
        let out = run(&mut f, &[err.as_bytes()]);
        assert!(out.contains("quota"), "{out}");
        assert!(out.contains("rate_limit_error"), "{out}");
        assert!(f.stream_failed());
    }
}
