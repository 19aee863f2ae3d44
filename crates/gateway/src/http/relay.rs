//! Building responses: relaying an upstream answer (status, headers, body chunk by chunk
//! through its [`BodyFilter`]), answering with a body of our own, rendering a [`ProxyError`]
//! in the client's format, stamping the `x-switchyard-*` and `x-request-id` headers, and
//! handing the request's [`UsageRecord`] to [`usage::record`] when its body is done (streams
//! included).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http_body_util::BodyDataStream;
use switchyard_llm::{InboundFormat, Usage};
use tracing::{Span, warn};

use super::client::{UpstreamResponse, content_length};
use super::filter::BodyFilter;
use crate::error::{ProxyError, error_chain};
use crate::telemetry::{self, Label, NONE};
use crate::usage::{self, UsageRecord};

pub(crate) static ROUTE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-route");
pub(crate) static MODEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-model");
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
pub(crate) static NONE_VALUE: HeaderValue = HeaderValue::from_static("none");
pub(crate) static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(crate) static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// Per-request bookkeeping: identity, timing, the client's format, and what served it so far.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub span: Span,
    pub proxy: Label,
    pub route: Label,
    /// The client's format: errors are rendered in it.
    pub format: InboundFormat,
    pub served: Served,
    /// The chosen route's metric handles.
    pub route_metrics: Option<Arc<telemetry::RouteMetrics>>,
    /// Longest pause allowed in an upstream's body once its headers arrived.
    pub upstream_idle: std::time::Duration,
    /// The CPU pool translating large answers.
    pub offload: crate::offload::Offload,
    /// The snapshot's governance (prices, consumers), once the table is loaded.
    pub governance: Option<Arc<crate::governance::Governance>>,
    /// The request's consumer and counters, once admitted; its `x-ratelimit-*` headers go on
    /// every answer.
    pub gate: Option<Arc<crate::governance::Gate>>,
    /// The request body's size (to estimate the usage of a stream cut short).
    pub request_bytes: usize,
    /// Whether the request's OpenTelemetry spans are made ([`crate::traces`]).
    pub traces: bool,
    /// What the response cache did (`x-switchyard-cache`), when the proxy has one.
    pub cache: Option<crate::cache::Outcome>,
    /// A semantic hit's similarity (`x-switchyard-cache-similarity`).
    pub cache_similarity: Option<f32>,
    /// The proxy's id, once found (its records are shipped to the control plane).
    pub proxy_id: Option<uuid::Uuid>,
    /// The fallback route was chosen or tried.
    pub fell_back: bool,
    /// The usage queue towards the control plane, when shipping is on.
    pub usage_sink: Option<crate::usage::ship::UsageSink>,
}

/// How the chosen route serves the request (for the usage record).
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub provider: &'static str,
    pub model: Arc<str>,
    pub stream: bool,
    pub translated: bool,
}

impl Default for Served {
    fn default() -> Self {
        Served {
            provider: NONE,
            model: Arc::from(NONE),
            stream: false,
            translated: false,
        }
    }
}

/// How a request ended (the `outcome` of its log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    /// The gateway answered with an error of its own.
    Rejected,
    /// The upstream answered with an error (relayed or translated).
    UpstreamError,
    /// The upstream's stream broke, was garbled, or carried an error event.
    UpstreamBroke,
    ClientGone,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamBroke => "upstream_stream_error",
            Outcome::ClientGone => "client_disconnected",
        }
    }
}

impl Ctx {
    /// A response for an error of the gateway's own (or an upstream error in the client's
    /// shape), stamped with what served it so far.
    pub(crate) fn reject(
        &self,
        err: &ProxyError,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let outcome = match err {
            ProxyError::Api(_) => Outcome::UpstreamError,
            _ => Outcome::Rejected,
        };
        self.reject_as(err, route, model, outcome)
    }

    pub(crate) fn reject_as(
        &self,
        err: &ProxyError,
        route: &HeaderValue,
        model: &HeaderValue,
        outcome: Outcome,
    ) -> Response {
        let status = err.status();
        let mut response = Response::new(Body::from(err.body_for(self.format)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
        if let ProxyError::MethodNotAllowed { allow } = err {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(secs) = err.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        self.stamp(headers, route, model);
        if status.is_server_error() && outcome == Outcome::Rejected {
            warn!(parent: &self.span, code = err.code(), error = %err.detail(), "request failed");
        }
        let mut finish = self.finish(status, outcome);
        finish.first_byte = Some(Instant::now());
        drop(finish);
        response
    }

    /// A response for an error before any route was chosen.
    pub(crate) fn reject_unrouted(&self, err: &ProxyError) -> Response {
        self.reject(err, &NONE_VALUE, &NONE_VALUE)
    }

    /// Relays an upstream answer through `filter`. The body is streamed as it arrives, never
    /// buffered; the request is accounted for when the body ends or the client goes away.
    pub(crate) fn relay(
        &self,
        upstream: UpstreamResponse,
        filter: BodyFilter,
        recorder: Option<Box<crate::cache::Recorder>>,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let status = upstream.status();
        let rewrites = filter.rewrites();
        let mut headers = super::headers::relayed(upstream.headers(), !rewrites);
        self.stamp(&mut headers, route, model);
        // The length hyper decoded the upstream body with (never the upstream's header): the
        // client's framing is the server's to choose from the body actually sent.
        let remaining = if rewrites {
            None
        } else {
            content_length(&upstream)
        };
        if let Some(len) = remaining {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let outcome = if status.is_success() {
            Outcome::Completed
        } else {
            Outcome::UpstreamError
        };
        self.stream_response(
            status,
            headers,
            idle_bounded(upstream, self.upstream_idle),
            filter,
            recorder.filter(|_| status.is_success()),
            remaining,
            outcome,
        )
    }

    /// An upstream's error answer, read whole, relayed as it is.
    pub(crate) fn relay_error(
        &self,
        status: StatusCode,
        upstream_headers: &HeaderMap,
        body: Bytes,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let mut headers = super::headers::relayed(upstream_headers, true);
        self.stamp(&mut headers, route, model);
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let mut finish = self.finish(status, Outcome::UpstreamError);
        finish.first_byte = Some(Instant::now());
        drop(finish);
        response
    }

    /// A translated stream: the upstream's body through `filter`, as `text/event-stream`.
    pub(crate) fn relay_translated(
        &self,
        upstream: UpstreamResponse,
        filter: BodyFilter,
        recorder: Option<Box<crate::cache::Recorder>>,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let mut headers = translated_headers(upstream.headers());
        headers.insert(header::CONTENT_TYPE, EVENT_STREAM.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        self.stamp(&mut headers, route, model);
        self.stream_response(
            StatusCode::OK,
            headers,
            idle_bounded(upstream, self.upstream_idle),
            filter,
            recorder,
            None,
            Outcome::Completed,
        )
    }

    /// A cached answer replayed as the client format's stream, one body chunk per event.
    pub(crate) fn replay(
        &self,
        chunks: Vec<Bytes>,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        use futures::StreamExt;
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, EVENT_STREAM.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        self.stamp(&mut headers, route, model);
        let inner = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
        self.stream_response(
            StatusCode::OK,
            headers,
            inner,
            BodyFilter::Replay,
            None,
            None,
            Outcome::Completed,
        )
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one private constructor of every relayed body"
    )]
    fn stream_response(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        inner: BoxStream<'static, Chunk>,
        filter: BodyFilter,
        recorder: Option<Box<crate::cache::Recorder>>,
        remaining: Option<u64>,
        outcome: Outcome,
    ) -> Response {
        let body = Relay {
            remaining,
            inner,
            filter,
            recorder,
            finish: self.finish(status, outcome),
            done: remaining == Some(0),
            ended: false,
        };
        let mut response = Response::new(Body::from_stream(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// A JSON answer of our own: the model list, or a translated completion (with the
    /// upstream's headers worth keeping, and its usage).
    pub(crate) fn respond_json(
        &self,
        body: Bytes,
        upstream_headers: Option<&HeaderMap>,
        usage: Option<Usage>,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let mut headers = upstream_headers.map(translated_headers).unwrap_or_default();
        headers.insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
        self.stamp(&mut headers, route, model);
        let mut response = Response::new(Body::from(body));
        *response.headers_mut() = headers;
        let mut finish = self.finish(StatusCode::OK, Outcome::Completed);
        finish.record.usage = usage;
        finish.first_byte = Some(Instant::now());
        drop(finish);
        response
    }

    fn stamp(&self, headers: &mut HeaderMap, route: &HeaderValue, model: &HeaderValue) {
        headers.insert(ROUTE_HEADER.clone(), route.clone());
        headers.insert(MODEL_HEADER.clone(), model.clone());
        headers.insert(REQUEST_ID.clone(), self.request_id.clone());
        if let Some(cache) = self.cache {
            headers.insert(
                crate::cache::CACHE_HEADER.clone(),
                HeaderValue::from_static(cache.header()),
            );
            if let Some(similarity) = self.cache_similarity
                && let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}"))
            {
                headers.insert(crate::cache::SIMILARITY_HEADER.clone(), v);
            }
        }
        if let Some(gate) = &self.gate
            && !gate.headers.is_empty()
        {
            // The proxy's own limits speak for it: an upstream's x-ratelimit-* headers (of
            // the gateway's shared upstream key) would mix two meanings.
            let upstream: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().starts_with("x-ratelimit-"))
                .cloned()
                .collect();
            for name in upstream {
                headers.remove(name);
            }
            for (name, value) in &gate.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
    }

    fn finish(&self, status: StatusCode, outcome: Outcome) -> Finish {
        Finish {
            start: self.start,
            span: self.span.clone(),
            first_byte: None,
            outcome,
            record: UsageRecord {
                proxy: self.proxy.clone(),
                route: self.route.clone(),
                provider: self.served.provider,
                model: Arc::clone(&self.served.model),
                format: self.format,
                stream: self.served.stream,
                translated: self.served.translated,
                status: status.as_u16(),
                outcome: outcome.as_str(),
                latency: std::time::Duration::ZERO,
                time_to_first_byte: None,
                usage: None,
                route_metrics: self.route_metrics.clone(),
                governance: self.governance.clone(),
                gate: self.gate.clone(),
                request_bytes: self.request_bytes,
                events_sent: 0,
                traces: self.traces,
                cache: self.cache,
                proxy_id: self.proxy_id,
                fell_back: self.fell_back,
                sink: self.usage_sink.clone(),
            },
        }
    }
}

/// The headers of a translated answer taken from the upstream's: its request id (as
/// `x-upstream-request-id`; Bedrock's is `x-amzn-requestid`).
fn translated_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(6);
    let id = upstream
        .get(&REQUEST_ID)
        .or_else(|| upstream.get("x-amzn-requestid"));
    if let Some(id) = id {
        headers.insert(UPSTREAM_REQUEST_ID.clone(), id.clone());
    }
    headers
}

/// Records the request (metrics, token counts, the log line) when dropped.
struct Finish {
    start: Instant,
    span: Span,
    first_byte: Option<Instant>,
    outcome: Outcome,
    record: UsageRecord,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.record.latency = self.start.elapsed();
        self.record.time_to_first_byte = self.first_byte.map(|t| t - self.start);
        self.record.outcome = self.outcome.as_str();
        usage::record(&self.record, &self.span);
    }
}

/// A piece of an upstream body as it is read.
type Chunk = Result<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream's body, chunk by chunk, failing once it pauses longer than `idle` (a stalled
/// upstream must not hold the client, the connection and the request's memory for ever).
pub(crate) fn idle_bounded(
    upstream: UpstreamResponse,
    idle: std::time::Duration,
) -> BoxStream<'static, Chunk> {
    use futures::StreamExt;
    let body = BodyDataStream::new(upstream.into_body());
    futures::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(e))) => Some((Err(Box::new(e) as BoxError), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!(
                    "the upstream sent nothing for {} ms (upstream idle timeout)",
                    idle.as_millis()
                )
                .into()),
                None,
            )),
        }
    })
    .boxed()
}

/// The upstream body, chunk by chunk through its filter, with the request's accounting
/// attached.
struct Relay {
    inner: BoxStream<'static, Chunk>,
    filter: BodyFilter,
    /// Stores the answer in the response cache if it completes (a cacheable miss).
    recorder: Option<Box<crate::cache::Recorder>>,
    /// Bytes still expected when the upstream declared a length (and the body is relayed
    /// untouched): hyper stops polling once it wrote that many, so the end is seen here
    /// rather than as the stream's `None`.
    remaining: Option<u64>,
    finish: Finish,
    /// The upstream body is over (ended, broke, or no longer read).
    done: bool,
    /// Nothing more will be sent.
    ended: bool,
}

impl Relay {
    fn send(&mut self, out: Bytes) -> Poll<Option<Chunk>> {
        if out.is_empty() {
            return Poll::Ready(None);
        }
        if self.finish.first_byte.is_none() {
            self.finish.first_byte = Some(Instant::now());
        }
        self.finish.record.events_sent += 1;
        Poll::Ready(Some(Ok(out)))
    }
}

impl Stream for Relay {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(recorder) = &mut this.recorder {
                        recorder.push(&chunk);
                    }
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                        if *remaining == 0 {
                            this.done = true;
                        }
                    }
                    let out = this.filter.push(chunk);
                    if this.done
                        && !this.filter.is_done()
                        && let Some(recorder) = this.recorder.take()
                    {
                        // The declared length is all there: the answer is complete.
                        recorder.complete();
                    }
                    if this.filter.is_done() {
                        this.recorder = None;
                        // The filter ended the answer (an error event): stop reading.
                        this.done = true;
                        this.ended = true;
                        this.finish.outcome = Outcome::UpstreamBroke;
                        telemetry::upstream_error(
                            &this.finish.record.proxy,
                            &this.finish.record.route,
                            "stream",
                        );
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return this.send(out);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.recorder = None;
                    this.finish.outcome = Outcome::UpstreamBroke;
                    telemetry::upstream_error(
                        &this.finish.record.proxy,
                        &this.finish.record.route,
                        "stream",
                    );
                    let detail = error_chain(&*e);
                    warn!(parent: &this.finish.span, error = %detail, "the upstream body broke off");
                    match this.filter.broken(&detail) {
                        Some(out) => {
                            this.ended = true;
                            return this.send(out);
                        }
                        None => return Poll::Ready(Some(Err(e))),
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.ended = true;
                    let out = this.filter.end();
                    let recorder = this.recorder.take();
                    if let Some(recorder) = recorder
                        && !this.filter.stream_failed()
                    {
                        recorder.complete();
                    }
                    if this.filter.stream_failed() {
                        this.finish.outcome = Outcome::UpstreamBroke;
                        telemetry::upstream_error(
                            &this.finish.record.proxy,
                            &this.finish.record.route,
                            "stream",
                        );
                    }
                    return this.send(out);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.done {
            // Dropping `inner` here also drops the upstream connection: the upstream sees
            // the client's cancellation.
            self.finish.outcome = Outcome::ClientGone;
        }
        self.finish.record.usage = self.filter.usage();
    }
}

/// The request id: the client's `x-request-id` when it is a sane token, else a new UUID.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    // A v4 UUID from the thread-local CSPRNG: `Uuid::new_v4` asks the OS for entropy on
    // every call, a syscall per request.
    let id = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A header value for a model name (anything a client may send, so never fails).
pub(crate) fn model_header(model: &str) -> HeaderValue {
    HeaderValue::from_bytes(model.as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = request_id(&h);
        assert_eq!(made.len(), 36);
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }

    #[test]
    fn model_headers_never_fail() {
        assert_eq!(model_header("gpt-4o"), "gpt-4o");
        assert_eq!(model_header("a\nb"), "invalid");
        assert_eq!(model_header("modèle").as_bytes(), "modèle".as_bytes());
    }

    fn ctx() -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: HeaderValue::from_static("r"),
            span: Span::none(),
            proxy: Label::Static("p"),
            route: Label::Static("r"),
            format: InboundFormat::OpenAiChat,
            served: Served::default(),
            route_metrics: None,
            upstream_idle: std::time::Duration::from_secs(60),
            offload: crate::offload::Offload::new(usize::MAX, 1),
            governance: None,
            gate: None,
            request_bytes: 0,
            traces: false,
            cache: None,
            cache_similarity: None,
            proxy_id: None,
            fell_back: false,
            usage_sink: None,
        }
    }

    fn relay(chunks: Vec<&'static [u8]>, remaining: Option<u64>, filter: BodyFilter) -> Relay {
        let items: Vec<Chunk> = chunks
            .into_iter()
            .map(|c| Ok(Bytes::from_static(c)))
            .collect();
        Relay {
            inner: Box::pin(futures::stream::iter(items)),
            filter,
            remaining,
            recorder: None,
            finish: ctx().finish(StatusCode::OK, Outcome::Completed),
            done: remaining == Some(0),
            ended: false,
        }
    }

    #[test]
    fn a_limited_proxys_own_ratelimit_headers_replace_the_upstreams() {
        let mut upstream = HeaderMap::new();
        upstream.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("5000"),
        );
        upstream.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("1"),
        );
        upstream.insert("content-type", HeaderValue::from_static("application/json"));
        let mut unlimited = upstream.clone();
        ctx().stamp(&mut unlimited, &NONE_VALUE, &NONE_VALUE);
        assert_eq!(unlimited["x-ratelimit-limit-requests"], "5000");
        let mut limited = upstream;
        let gate = crate::governance::Gate::refused(vec![(
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderValue::from_static("10"),
        )]);
        Ctx {
            gate: Some(Arc::new(gate)),
            ..ctx()
        }
        .stamp(&mut limited, &NONE_VALUE, &NONE_VALUE);
        assert_eq!(limited["x-ratelimit-limit-requests"], "10");
        assert!(!limited.contains_key("x-ratelimit-remaining-tokens"));
        assert_eq!(limited["content-type"], "application/json");
    }

    #[tokio::test]
    async fn a_relay_knows_when_the_body_is_complete() {
        // Hyper stops polling once the declared length is written: that is the end.
        let mut r = relay(
            vec![b"hel", b"lo"],
            Some(5),
            BodyFilter::tee(InboundFormat::OpenAiChat),
        );
        assert_eq!(r.next().await.unwrap().unwrap(), "hel");
        assert!(!r.done);
        assert!(r.finish.first_byte.is_some());
        assert_eq!(r.next().await.unwrap().unwrap(), "lo");
        assert!(r.done);
        // Without a length, the stream's end is.
        let mut r = relay(
            vec![b"data: x\n\n"],
            None,
            BodyFilter::tee(InboundFormat::OpenAiChat),
        );
        r.next().await;
        assert!(!r.done);
        assert!(r.next().await.is_none());
        assert!(r.done);
        // Dropped early: the client went away.
        let mut r = relay(
            vec![b"a", b"b"],
            Some(2),
            BodyFilter::tee(InboundFormat::OpenAiChat),
        );
        r.next().await;
        assert!(!r.done);
        assert!(relay(vec![], Some(0), BodyFilter::tee(InboundFormat::OpenAiChat)).done);
    }

    #[tokio::test]
    async fn a_relay_ends_a_garbled_stream_with_the_filters_error_event() {
        let mut r = relay(
            vec![
                b"data: {\"choices\":[]}\n\n",
                b"data: {oops\n\n",
                b"data: [DONE]\n\n",
            ],
            None,
            BodyFilter::sse(InboundFormat::OpenAiChat.stream_inspector(false)),
        );
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            "data: {\"choices\":[]}\n\n"
        );
        let err = r.next().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&err).unwrap().contains("\"error\""));
        assert!(r.next().await.is_none());
        assert!(r.done && r.ended);
        assert_eq!(r.finish.outcome, Outcome::UpstreamBroke);
    }
}
