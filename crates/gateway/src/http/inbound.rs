//! Stage 1 of a request: what the client asked for.
//!
//! The path after the base path names the operation (per the proxy's format); the body is
//! read once and only what routing needs is taken from it (the model, whether to stream).
//! The canonical form ([`ChatRequest`]) is parsed on first use only: the passthrough path
//! never needs it, the translated path (and, later, semantic routing and the prompt guard)
//! asks for it through [`InboundRequest::canonical`].

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, Method, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use switchyard_llm::{
    ApiError, ChatRequest, Envelope, EnvelopeError, InboundFormat, LlmError, Operation,
};
use switchyard_model::Format;

use super::budget::{Budget, Held};
use super::shape::ShapeLimits;
use crate::error::ProxyError;
use crate::offload::Offload;

/// The largest request body the gateway accepts.
pub(crate) const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// What a path (after the base path) asks the proxy to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `GET /models` (OpenAI format).
    Models,
    /// A completion in one of the proxy format's inbound formats.
    Complete(Operation),
}

impl Endpoint {
    /// The endpoint a path names for a proxy of `format`; `None` for a path it does not serve.
    /// Each inbound format of the proxy's API surface knows its own paths
    /// ([`InboundFormat::match_path`]); OpenAI-format proxies also list models.
    pub(crate) fn parse(format: Format, rest: &str) -> Option<Endpoint> {
        let surface = format.id();
        if surface == "openai" && rest.strip_prefix("/v1").unwrap_or(rest) == "/models" {
            return Some(Endpoint::Models);
        }
        InboundFormat::ALL
            .into_iter()
            .filter(|f| f.surface() == surface)
            .find_map(|f| f.match_path(rest))
            .map(Endpoint::Complete)
    }

    /// A completion endpoint whose path names neither model nor stream.
    #[cfg(test)]
    pub(crate) fn complete(format: InboundFormat) -> Endpoint {
        Endpoint::Complete(Operation {
            format,
            model: None,
            stream: None,
        })
    }

    pub(crate) fn method(&self) -> (Method, &'static str) {
        match self {
            Endpoint::Models => (Method::GET, "GET"),
            Endpoint::Complete(_) => (Method::POST, "POST"),
        }
    }

    /// The client's format (the format its errors are rendered in).
    pub(crate) fn format(&self) -> InboundFormat {
        match self {
            Endpoint::Models => InboundFormat::OpenAiChat,
            Endpoint::Complete(op) => op.format,
        }
    }
}

/// A completion request as received: its bytes, scanned once into what routing needs, and
/// its canonical form on demand.
#[derive(Debug)]
pub(crate) struct InboundRequest {
    pub format: InboundFormat,
    /// The client's body, untouched (the passthrough body is written from it).
    pub body: Bytes,
    /// The model the client named (`<route>/<model>`), in the body or the path, if any.
    pub model: Option<String>,
    pub stream: bool,
    /// The body's top-level entries located, and where its prompt lies.
    envelope: Envelope,
    canonical: OnceLock<Result<ChatRequest, ApiError>>,
    /// The body's bytes charged to the node's in-flight budget, given back on drop.
    _held: Held,
}

/// How a request body is read: its idle timeout, the node's byte budget, the shape limits,
/// and the CPU pool for large bodies.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub body_timeout: std::time::Duration,
    pub budget: Budget,
    pub shape: ShapeLimits,
    pub offload: Offload,
}

impl InboundRequest {
    /// Reads the body of a completion request for `op`, checks its shape against the node's
    /// limits and takes what routing needs (on the CPU pool when the body is large).
    pub(crate) async fn read(
        op: &Operation,
        body: Body,
        headers: &HeaderMap,
        reading: &Reading,
    ) -> Result<InboundRequest, ProxyError> {
        let (bytes, held) = read_body(body, headers, reading).await?;
        let op = op.clone();
        let shape = reading.shape;
        reading
            .offload
            .run(bytes.len(), move || {
                super::shape::check(&bytes, &shape)?;
                Self::from_bytes(&op, bytes).map(|mut r| {
                    r._held = held;
                    r
                })
            })
            .await
    }

    pub(crate) fn from_bytes(op: &Operation, body: Bytes) -> Result<InboundRequest, ProxyError> {
        let envelope = op.format.envelope(&body).map_err(|e| match e {
            EnvelopeError::ModelNotString => ProxyError::MissingModel(e.to_string()),
            EnvelopeError::NotObject | EnvelopeError::Json(_) => {
                ProxyError::InvalidJson(e.to_string())
            }
        })?;
        Ok(InboundRequest {
            format: op.format,
            model: op.model.clone().or_else(|| envelope.model.clone()),
            stream: op.stream.unwrap_or(envelope.stream),
            body,
            envelope,
            canonical: OnceLock::new(),
            _held: Held::default(),
        })
    }

    /// The prompt semantic routing and the prompt guard look at (the last user message).
    pub(crate) fn prompt(&self) -> Option<String> {
        self.format.prompt_text(&self.envelope, &self.body)
    }

    /// Whether this passthrough request asks the upstream for a usage chunk its client did
    /// not ask for (held back from the client).
    pub(crate) fn asks_stream_usage(&self) -> bool {
        self.format.asks_stream_usage(&self.envelope)
    }

    /// The body to send to `target` on the passthrough path, written once: `model`
    /// replaced, and the usage chunk asked for when [`Self::asks_stream_usage`] (see
    /// [`InboundFormat::passthrough_body`]).
    pub(crate) fn passthrough_body(
        &self,
        target: &switchyard_llm::Target,
        headers: &HeaderMap,
    ) -> Result<Bytes, LlmError> {
        self.format.passthrough_body(
            &self.envelope,
            &self.body,
            target,
            headers,
            self.asks_stream_usage(),
        )
    }

    /// The canonical request, parsed on first use (a malformed body is the client's 400,
    /// naming the field).
    pub(crate) fn canonical(&self) -> Result<&ChatRequest, ProxyError> {
        self.canonical
            .get_or_init(|| {
                let mut req = self
                    .format
                    .parse_request(&self.body)
                    .map_err(|e| e.to_api_error())?;
                if !self.format.model_in_body() {
                    req.model = self.model.clone().unwrap_or_default();
                    req.stream = self.stream;
                }
                Ok(req)
            })
            .as_ref()
            .map_err(|e| ProxyError::Untranslatable(e.clone()))
    }
}

/// Reads the whole request body, refusing more than [`BODY_LIMIT`] bytes with 413, a pause
/// longer than the body timeout with 408, and a body the node's byte budget cannot hold
/// with 503. The bytes stay charged to the budget while the returned [`Held`] lives.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    reading: &Reading,
) -> Result<(Bytes, Held), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|len| len > BODY_LIMIT as u64) {
        return Err(refuse_too_large(body).await);
    }
    let mut held = Held::default();
    // A declared length is charged up front: a body the node cannot hold is refused before
    // it is read.
    if let Some(len) = declared
        && !reading.budget.take(&mut held, len as usize)
    {
        return Err(refuse(body, ProxyError::Overloaded).await);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0_usize;
    loop {
        let frame = match tokio::time::timeout(reading.body_timeout, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(frame)) => frame,
        };
        let frame = frame.map_err(|e| ProxyError::BodyRead(e.to_string()))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        total += chunk.len();
        if total > BODY_LIMIT {
            return Err(refuse_too_large(body).await);
        }
        if declared.is_none_or(|len| total as u64 > len)
            && !reading.budget.take(&mut held, chunk.len())
        {
            return Err(refuse(body, ProxyError::Overloaded).await);
        }
        chunks.push(chunk);
    }
    // One chunk (the usual case) is kept as it is; more are joined.
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    };
    Ok((bytes, held))
}

/// How much of an over-limit body is still read (and dropped) before the 413 goes out, and
/// for how long at most.
const LINGER_BYTES: usize = 64 * 1024 * 1024;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The 413 for a body over the limit, after reading on (and dropping) what the client is
/// still sending, within [`LINGER_BYTES`] and [`LINGER_TIME`]. Answering while the client is
/// still writing would make the connection close with unread data: the client's write fails
/// (or its socket is reset) and it never sees the 413. A well-behaved client that sent a
/// moderately large body gets the answer; one that keeps sending past the bound is cut off.
async fn refuse_too_large(body: Body) -> ProxyError {
    refuse(body, ProxyError::PayloadTooLarge { limit: BODY_LIMIT }).await
}

/// `err`, after reading on (and dropping) what the client is still sending, as for a 413.
async fn refuse(mut body: Body, err: ProxyError) -> ProxyError {
    let drain = async {
        let mut read = 0_usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn reading() -> Reading {
        let limits = crate::limits::NodeLimits::default();
        Reading {
            body_timeout: std::time::Duration::from_secs(5),
            budget: Budget::new(limits.max_inflight_request_bytes),
            shape: ShapeLimits::from(&limits),
            offload: Offload::new(limits.offload_threshold, 1),
        }
    }

    fn chat() -> Endpoint {
        Endpoint::complete(InboundFormat::OpenAiChat)
    }

    fn responses() -> Endpoint {
        Endpoint::complete(InboundFormat::OpenAiResponses)
    }

    fn gemini(model: &str, stream: bool) -> Operation {
        Operation {
            format: InboundFormat::Gemini,
            model: Some(model.into()),
            stream: Some(stream),
        }
    }

    fn op(e: &Endpoint) -> &Operation {
        match e {
            Endpoint::Complete(op) => op,
            Endpoint::Models => unreachable!("a completion endpoint"),
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_or_without_a_length() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("33554433"));
        let err = read_body(Body::empty(), &headers, &reading())
            .await
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 413);

        // Chunked: counted as it arrives.
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let chunks = (0..33).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_body(body, &HeaderMap::new(), &reading())
            .await
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 413);

        let ok = read_body(Body::from("{}"), &HeaderMap::new(), &reading())
            .await
            .unwrap()
            .0;
        assert_eq!(ok, "{}");

        // Several chunks are joined in order.
        let chunks = ["{\"a\"", ":", "1}"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c)));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let ok = read_body(body, &HeaderMap::new(), &reading())
            .await
            .unwrap()
            .0;
        assert_eq!(ok, "{\"a\":1}");
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_the_budget_is_enforced() {
        use futures::StreamExt;
        // A client that sends a first chunk and then nothing: 408 after the body timeout.
        let mut r = reading();
        r.body_timeout = std::time::Duration::from_millis(100);
        let first = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))]);
        let body = Body::from_stream(first.chain(futures::stream::pending()));
        let started = std::time::Instant::now();
        let err = read_body(body, &HeaderMap::new(), &r).await.unwrap_err();
        assert_eq!(err.status().as_u16(), 408);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        // A budget of 10 bytes: a declared 11 is refused (503) before reading; what is held
        // comes back when the request is done.
        r.budget = Budget::new(10);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        let err = read_body(Body::from("x".repeat(11)), &headers, &r)
            .await
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 503);
        let (_, held) = read_body(Body::from("x".repeat(8)), &HeaderMap::new(), &r)
            .await
            .unwrap();
        assert_eq!(r.budget.available(), 2);
        let err = read_body(Body::from("x".repeat(3)), &HeaderMap::new(), &r)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "overloaded");
        drop(held);
        assert_eq!(r.budget.available(), 10);
    }

    #[tokio::test]
    async fn an_over_limit_body_is_read_to_its_end_before_the_413() {
        // The client is still sending when the limit is crossed: the rest is read (and
        // dropped), so the connection does not close under a writing client.
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&read);
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let chunks = (0..40).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(chunk.clone())
        });
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_body(body, &HeaderMap::new(), &reading())
            .await
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 413);
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 40);

        // A declared length over the limit: refused without waiting for the whole body,
        // but what was sent is read.
        let counter = std::sync::Arc::clone(&read);
        read.store(0, std::sync::atomic::Ordering::Relaxed);
        let chunks = (0..3).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from_static(b"xx"))
        });
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("33554433"));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_body(body, &headers, &reading()).await.unwrap_err();
        assert_eq!(err.status().as_u16(), 413);
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn openai_endpoints_with_and_without_v1() {
        let p = |s| Endpoint::parse(Format::Openai, s);
        assert_eq!(p("/chat/completions"), Some(chat()));
        assert_eq!(p("/v1/chat/completions"), Some(chat()));
        assert_eq!(p("/responses"), Some(responses()));
        assert_eq!(p("/v1/models"), Some(Endpoint::Models));
        for bad in [
            "",
            "/",
            "/v1",
            "/v1/",
            "/v1x/models",
            "/chat",
            "/models/x",
            "/v1/v1/models",
            "/models/gemini-2.5-flash:generateContent",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn gemini_endpoints() {
        let p = |s| Endpoint::parse(Format::Gemini, s);
        let g = |model: &str, stream| Some(Endpoint::Complete(gemini(model, stream)));
        assert_eq!(
            p("/models/gemini/gemini-2.5-flash:generateContent"),
            g("gemini/gemini-2.5-flash", false)
        );
        assert_eq!(
            p("/v1beta/models/gemini%2Fgemini-2.5-flash:streamGenerateContent"),
            g("gemini/gemini-2.5-flash", true)
        );
        assert_eq!(p("/v1/models/g:generateContent"), g("g", false));
        assert_eq!(p("/v1beta/models/models/g:generateContent"), g("g", false));
        for bad in [
            "/chat/completions",
            "/models/g",
            "/models/:generateContent",
            "/models/g:countTokens",
            "/v2/models/g:generateContent",
            "/models/g%zz:generateContent",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        let stream = gemini("g", true);
        assert!(stream.query_error(None).is_some());
        assert!(stream.query_error(Some("key=x")).is_some());
        assert!(stream.query_error(Some("key=x&alt=sse")).is_none());
    }

    #[test]
    fn envelopes() {
        let r = InboundRequest::from_bytes(
            op(&chat()),
            Bytes::from_static(
                br#"{"model":"a/b","stream":true,"stream_options":{"include_usage":true},"x":[1,{"y":2}]}"#,
            ),
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("a/b"));
        // The client asked for the usage chunk itself: none is asked for on its behalf.
        assert!(r.stream && !r.asks_stream_usage());
        let r =
            InboundRequest::from_bytes(op(&responses()), Bytes::from_static(b" {\"stream\":1}"))
                .unwrap();
        assert_eq!(r.model, None);
        assert!(!r.stream);
        for bad in [&b"[1]"[..], b"\"x\"", b"{", b""] {
            let err =
                InboundRequest::from_bytes(op(&chat()), Bytes::copy_from_slice(bad)).unwrap_err();
            assert_eq!(err.code(), "invalid_json");
        }
        let err = InboundRequest::from_bytes(op(&chat()), Bytes::from_static(b"{\"model\":3}"))
            .unwrap_err();
        assert_eq!(err.code(), "model_required");

        let gem = gemini("g/m", true);
        let r = InboundRequest::from_bytes(
            &gem,
            Bytes::from_static(br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#),
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("g/m"));
        let canonical = r.canonical().unwrap();
        assert_eq!(canonical.model, "g/m");
        assert!(canonical.stream);
        assert_eq!(canonical.last_user_text().as_deref(), Some("hi"));

        let bad = InboundRequest::from_bytes(
            op(&chat()),
            Bytes::from_static(br#"{"model":"a/b","messages":"nope"}"#),
        )
        .unwrap();
        let err = bad.canonical().unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
    }
}
