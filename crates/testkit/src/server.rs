//! The machinery every mock provider shares: a local HTTP server that records each request,
//! counts streams, and misbehaves on demand ([`Behavior`]); each provider mock supplies only
//! the answers ([`Handler`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;

/// How a mock answers the next requests (until changed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Validate and answer like the real API.
    #[default]
    Normal,
    /// Answer every request with this status and raw body (as JSON).
    Fail { status: u16, body: String },
    /// Refuse every request with this status, in the provider's own error shape (OpenAI
    /// `{"error": {…}}`, Gemini's `google.rpc.Status`, Bedrock's `x-amzn-ErrorType` header
    /// with `{"message"}`); `code` is the provider's code (`rate_limit_exceeded`,
    /// `RESOURCE_EXHAUSTED`, `ThrottlingException`…).
    Reject {
        status: u16,
        code: String,
        message: String,
    },
    /// Wait this long before answering (normally) — for header timeouts and in-flight tests.
    DelayHeaders(Duration),
    /// Close the connection without answering.
    DropConnection,
    /// Streams send two events, then the connection breaks mid-body.
    TruncatedStream,
    /// Streams carry an event the client cannot decode (bad JSON; a bad CRC for Bedrock).
    GarbledStream,
    /// Streams start, then report an error inside the 200 stream (the provider's error event).
    StreamError,
    /// Streams send one event every `interval`.
    SlowStream { interval: Duration },
    /// Streams send their first event, then wait for [`MockServer::release_streams`].
    GatedStream,
}

/// One request a mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `model` the request asked for (in the body).
    pub fn model(&self) -> Option<String> {
        self.json()
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The value of a query parameter (not decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Usage as a mock reported it, in OpenAI's terms (input includes cached input), whatever
/// the provider's own wire form (Bedrock reports cached input apart; Gemini reports it inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportedUsage {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
}

/// The answers of one provider.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one recorded request. `Fail`, `DelayHeaders` and `DropConnection` are applied
    /// before this is called; stream behaviours through [`Exchange::stream`].
    fn handle(&self, exchange: &Exchange<'_>) -> Response;
}

/// One request being answered.
pub(crate) struct Exchange<'a> {
    pub req: &'a RecordedRequest,
    pub behavior: &'a Behavior,
    shared: &'a Arc<Shared>,
}

impl Exchange<'_> {
    /// Records the usage this answer reports.
    pub(crate) fn report(&self, usage: ReportedUsage) {
        lock(&self.shared.reported).push(usage);
    }

    /// Streams `events` (already framed) as `content_type`, paced and broken as the
    /// behaviour says, counting streams that complete and streams whose reader went away.
    pub(crate) fn stream(&self, content_type: &'static str, events: Vec<Bytes>) -> Response {
        stream(self.shared, content_type, events, self.behavior.clone())
    }
}

pub(crate) struct Shared {
    handler: Box<dyn Handler>,
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    reported: Mutex<Vec<ReportedUsage>>,
    changed: Notify,
    streams_started: AtomicUsize,
    streams_completed: AtomicUsize,
    streams_cancelled: AtomicUsize,
    requests_aborted: AtomicUsize,
    gate: watch::Sender<bool>,
}

/// A running mock; stopped when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockServer {
    /// Starts a mock answering with `handler` on 127.0.0.1 (a free port).
    pub(crate) async fn start(handler: impl Handler) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (gate, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            behavior: Mutex::new(Behavior::Normal),
            requests: Mutex::new(Vec::new()),
            reported: Mutex::new(Vec::new()),
            changed: Notify::new(),
            streams_started: AtomicUsize::new(0),
            streams_completed: AtomicUsize::new(0),
            streams_cancelled: AtomicUsize::new(0),
            requests_aborted: AtomicUsize::new(0),
            gate,
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        Ok(MockServer {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no path).
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *lock(&self.shared.behavior) = behavior;
        self.shared.gate.send_replace(false);
    }

    /// Lets gated streams ([`Behavior::GatedStream`]) send the rest of their events.
    pub fn release_streams(&self) {
        self.shared.gate.send_replace(true);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// The usage every answer so far reported, in order.
    pub fn reported_usages(&self) -> Vec<ReportedUsage> {
        lock(&self.shared.reported).clone()
    }

    /// The usage the last successful answer reported.
    pub fn last_reported_usage(&self) -> Option<ReportedUsage> {
        lock(&self.shared.reported).last().copied()
    }

    pub fn streams_started(&self) -> usize {
        self.shared.streams_started.load(Ordering::SeqCst)
    }

    pub fn streams_completed(&self) -> usize {
        self.shared.streams_completed.load(Ordering::SeqCst)
    }

    /// Streams whose reader went away before the stream ended.
    pub fn streams_cancelled(&self) -> usize {
        self.shared.streams_cancelled.load(Ordering::SeqCst)
    }

    /// Requests whose client went away before the mock answered (their handler was dropped).
    pub fn requests_aborted(&self) -> usize {
        self.shared.requests_aborted.load(Ordering::SeqCst)
    }

    /// Waits until `cond` holds on this mock, or `timeout` passes; returns whether it holds.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&MockServer) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(self);
            }
        }
    }
}

#[derive(Clone)]
struct ConnKill(CancellationToken);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let kill = CancellationToken::new();
        let conn_kill = ConnKill(kill.clone());
        let service = router
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(conn_kill.clone());
                req
            });
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::select! {
                _ = conn => {}
                _ = kill.cancelled() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Counts a request as aborted if its handler is dropped before it answered.
struct AbortWatch {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for AbortWatch {
    fn drop(&mut self) {
        if self.armed {
            self.shared.requests_aborted.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let mut watch = AbortWatch {
        shared: Arc::clone(&shared),
        armed: true,
    };
    let response = answer(shared, req).await;
    watch.armed = false;
    response
}

async fn answer(shared: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    };
    lock(&shared.requests).push(recorded.clone());
    shared.changed.notify_waiters();

    let behavior = lock(&shared.behavior).clone();
    match &behavior {
        Behavior::Fail { status, body } => {
            return Response::builder()
                .status(*status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.clone()))
                .unwrap_or_default();
        }
        Behavior::DropConnection => {
            if let Some(kill) = parts.extensions.get::<ConnKill>() {
                kill.0.cancel();
            }
            return std::future::pending().await;
        }
        Behavior::DelayHeaders(delay) => tokio::time::sleep(*delay).await,
        _ => {}
    }
    let exchange = Exchange {
        req: &recorded,
        behavior: &behavior,
        shared: &shared,
    };
    shared.handler.handle(&exchange)
}

fn stream(
    shared: &Arc<Shared>,
    content_type: &'static str,
    events: Vec<Bytes>,
    behavior: Behavior,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    shared.streams_started.fetch_add(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
    let mut gate = shared.gate.subscribe();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                let wait = async {
                    match &behavior {
                        Behavior::SlowStream { interval } => tokio::time::sleep(*interval).await,
                        Behavior::GatedStream if i == 1 => {
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        _ => {}
                    }
                };
                tokio::select! {
                    _ = wait => {}
                    _ = tx.closed() => return shared.stream_cancelled(),
                }
            }
            if behavior == Behavior::TruncatedStream && i == 2 {
                let _ = tx
                    .send(Err(std::io::Error::other("mock: stream truncated")))
                    .await;
                return shared.stream_completed();
            }
            if tx.send(Ok(event)).await.is_err() {
                return shared.stream_cancelled();
            }
        }
        shared.stream_completed();
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_default()
}

impl Shared {
    fn stream_completed(&self) {
        self.streams_completed.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn stream_cancelled(&self) {
        self.streams_cancelled.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// A JSON answer.
pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// The JSON type name of a value, as the providers' messages say it.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
