//! Building responses: relaying an upstream answer (status, headers, body chunk by chunk),
//! rendering a [`ProxyError`], stamping the `x-switchyard-*` and `x-request-id` headers, and
//! recording the request's metrics and access log when its body is done (streams included).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use tracing::{Span, info, warn};

use crate::error::ProxyError;
use crate::providers::openai::APPLICATION_JSON;
use crate::telemetry::{self, Label};

pub(crate) static ROUTE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-route");
pub(crate) static MODEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-model");
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
pub(crate) static NONE_VALUE: HeaderValue = HeaderValue::from_static("none");

/// Per-request bookkeeping: identity, timing, and the labels chosen so far.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub span: Span,
    pub proxy: Label,
    pub route: Label,
}

impl Ctx {
    /// A response for an error of the gateway's own, stamped with what served it so far.
    pub(crate) fn reject(
        &self,
        err: &ProxyError,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let status = err.status();
        let mut response = Response::new(Body::from(err.body()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
        if let ProxyError::MethodNotAllowed { allow } = err {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        self.stamp(headers, route, model);
        if status.is_server_error() {
            warn!(parent: &self.span, code = err.code(), error = %err.message(), "request failed");
        }
        drop(self.finish(status, Outcome::Rejected));
        response
    }

    /// A response for an error before any route was chosen.
    pub(crate) fn reject_unrouted(&self, err: &ProxyError) -> Response {
        self.reject(err, &NONE_VALUE, &NONE_VALUE)
    }

    /// Relays an upstream answer. The body is streamed as it arrives, never buffered; the
    /// request is accounted for when the body ends or the client goes away.
    pub(crate) fn relay(
        &self,
        upstream: reqwest::Response,
        route: &HeaderValue,
        model: &HeaderValue,
    ) -> Response {
        let status = upstream.status();
        let mut headers = HeaderMap::with_capacity(upstream.headers().len() + 4);
        for (name, value) in upstream.headers() {
            if is_hop_by_hop(name) || name == header::SET_COOKIE {
                continue;
            }
            if name == REQUEST_ID {
                headers.append(UPSTREAM_REQUEST_ID.clone(), value.clone());
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        self.stamp(&mut headers, route, model);
        let remaining = upstream.content_length();
        let body = Relay {
            remaining,
            inner: Box::pin(upstream.bytes_stream()),
            finish: self.finish(status, Outcome::Completed),
            done: remaining == Some(0),
        };
        let mut response = Response::new(Body::from_stream(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// A locally built JSON answer (e.g. the model list).
    pub(crate) fn respond_json(&self, body: Bytes, route: &HeaderValue) -> Response {
        let mut response = Response::new(Body::from(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
        self.stamp(headers, route, &NONE_VALUE);
        drop(self.finish(StatusCode::OK, Outcome::Completed));
        response
    }

    fn stamp(&self, headers: &mut HeaderMap, route: &HeaderValue, model: &HeaderValue) {
        headers.insert(ROUTE_HEADER.clone(), route.clone());
        headers.insert(MODEL_HEADER.clone(), model.clone());
        headers.insert(REQUEST_ID.clone(), self.request_id.clone());
    }

    fn finish(&self, status: StatusCode, outcome: Outcome) -> Finish {
        Finish {
            start: self.start,
            proxy: self.proxy.clone(),
            route: self.route.clone(),
            status: status.as_u16(),
            span: self.span.clone(),
            outcome,
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Rejected,
    UpstreamBroke,
    ClientGone,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamBroke => "upstream_stream_error",
            Outcome::ClientGone => "client_disconnected",
        }
    }
}

/// Records the request's metrics and access log line when dropped.
struct Finish {
    start: Instant,
    proxy: Label,
    route: Label,
    status: u16,
    span: Span,
    outcome: Outcome,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        telemetry::request_finished(&self.proxy, &self.route, self.status, elapsed);
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.record("status", self.status);
        self.span.record("latency_ms", latency_ms);
        info!(
            parent: &self.span,
            status = self.status,
            latency_ms,
            outcome = self.outcome.as_str(),
            "request finished"
        );
    }
}

/// The upstream body, chunk by chunk, with the request's accounting attached.
struct Relay {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    /// Bytes still expected when the upstream declared a length: hyper stops polling once
    /// it wrote that many, so the end is seen here rather than as the stream's `None`.
    remaining: Option<u64>,
    finish: Finish,
    done: bool,
}

impl Stream for Relay {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(remaining) = &mut this.remaining {
                    *remaining = remaining.saturating_sub(chunk.len() as u64);
                    if *remaining == 0 {
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.finish.outcome = Outcome::UpstreamBroke;
                telemetry::upstream_error(&this.finish.proxy, &this.finish.route, "stream");
                warn!(parent: &this.finish.span, error = %e, "the upstream body broke off");
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            other => other,
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

    fn relay(chunks: Vec<&'static [u8]>, remaining: Option<u64>) -> Relay {
        let items: Vec<reqwest::Result<Bytes>> = chunks
            .into_iter()
            .map(|c| Ok(Bytes::from_static(c)))
            .collect();
        Relay {
            inner: Box::pin(futures::stream::iter(items)),
            remaining,
            finish: Finish {
                start: Instant::now(),
                proxy: Label::Static("p"),
                route: Label::Static("r"),
                status: 200,
                span: Span::none(),
                outcome: Outcome::Completed,
            },
            done: remaining == Some(0),
        }
    }

    #[tokio::test]
    async fn a_relay_knows_when_the_body_is_complete() {
        use futures::StreamExt;
        // Hyper stops polling once the declared length is written: that is the end.
        let mut r = relay(vec![b"hel", b"lo"], Some(5));
        assert_eq!(r.next().await.unwrap().unwrap(), "hel");
        assert!(!r.done);
        assert_eq!(r.next().await.unwrap().unwrap(), "lo");
        assert!(r.done);
        // Without a length, the stream's end is.
        let mut r = relay(vec![b"data: x\n\n"], None);
        r.next().await;
        assert!(!r.done);
        assert!(r.next().await.is_none());
        assert!(r.done);
        // Dropped early: the client went away.
        let mut r = relay(vec![b"a", b"b"], Some(2));
        r.next().await;
        assert!(!r.done);
        assert!(relay(vec![], Some(0)).done);
    }

    #[test]
    fn hop_by_hop_headers_are_not_relayed() {
        assert!(is_hop_by_hop(&header::TRANSFER_ENCODING));
        assert!(is_hop_by_hop(&HeaderName::from_static("keep-alive")));
        assert!(!is_hop_by_hop(&header::CONTENT_TYPE));
    }
}
