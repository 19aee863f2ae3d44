//! `MockOpenAi`: a local stand-in for OpenAI's Chat Completions, Responses and Models APIs.
//!
//! It checks what it receives the way the real API does (Bearer key, required and typed
//! parameters, unknown parameters refused, in OpenAI's error shape), answers deterministically
//! (the reply names the model it was asked for), streams realistic SSE, records every request,
//! and can be told to misbehave: fail with a status, stall before its headers, drop the
//! connection, break or garble a stream, or stream slowly so a test can watch a client's
//! disconnect cancel the upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;

/// The key a default mock expects.
pub const MOCK_API_KEY: &str = "sk-mock-key";

/// How the mock answers the next requests (until changed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Validate and answer like the real API.
    #[default]
    Normal,
    /// Answer every request with this status and body (as JSON).
    Fail { status: u16, body: String },
    /// Wait this long before answering (normally) — for header timeouts and in-flight tests.
    DelayHeaders(Duration),
    /// Close the connection without answering.
    DropConnection,
    /// Streams send two chunks, then the connection breaks mid-body.
    TruncatedStream,
    /// Streams carry a chunk that is not JSON before `[DONE]`.
    GarbledStream,
    /// Streams send one event every `interval`.
    SlowStream { interval: Duration },
    /// Streams send their first event, then wait for [`MockOpenAi::release_streams`].
    GatedStream,
}

/// One request the mock received.
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

    /// The `model` the request asked for.
    pub fn model(&self) -> Option<String> {
        self.json()
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// What a mock is started with.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The Bearer key every request must carry; `None` accepts any request.
    pub api_key: Option<String>,
    /// What `GET /v1/models` lists.
    pub models: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: Some(MOCK_API_KEY.to_owned()),
            models: vec!["gpt-4o-mini".to_owned(), "gpt-4.1".to_owned()],
        }
    }
}

struct Shared {
    config: MockConfig,
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    changed: Notify,
    streams_started: AtomicUsize,
    streams_completed: AtomicUsize,
    streams_cancelled: AtomicUsize,
    requests_aborted: AtomicUsize,
    gate: watch::Sender<bool>,
}

/// A running mock; stopped when dropped.
pub struct MockOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The assistant's deterministic reply to a request for `model`.
pub fn reply_text(model: &str) -> String {
    format!("Hello! This is a mock reply from {model}.")
}

impl MockOpenAi {
    /// Starts a mock expecting [`MOCK_API_KEY`] on 127.0.0.1 (a free port).
    pub async fn start() -> std::io::Result<MockOpenAi> {
        Self::start_with(MockConfig::default()).await
    }

    pub async fn start_with(config: MockConfig) -> std::io::Result<MockOpenAi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (gate, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            behavior: Mutex::new(Behavior::Normal),
            requests: Mutex::new(Vec::new()),
            changed: Notify::new(),
            streams_started: AtomicUsize::new(0),
            streams_completed: AtomicUsize::new(0),
            streams_cancelled: AtomicUsize::new(0),
            requests_aborted: AtomicUsize::new(0),
            gate,
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        Ok(MockOpenAi {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base to configure a route with: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
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
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&MockOpenAi) -> bool) -> bool {
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
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                400,
                "could not read the body",
                "invalid_request_error",
                None,
                None,
            )
            .into_response();
        }
    };
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

    if let Err(e) = check_auth(&shared.config, &recorded.headers) {
        return e.into_response();
    }
    match (recorded.method.clone(), recorded.path.as_str()) {
        (Method::POST, "/v1/chat/completions") => chat_completions(&shared, &recorded, behavior),
        (Method::POST, "/v1/responses") => responses(&shared, &recorded, behavior),
        (Method::GET, "/v1/models") => models(&shared),
        (_, "/v1/chat/completions" | "/v1/responses" | "/v1/models") => error(
            405,
            &format!(
                "Invalid method for URL ({} {})",
                recorded.method, recorded.path
            ),
            "invalid_request_error",
            None,
            None,
        )
        .into_response(),
        _ => error(
            404,
            &format!("Invalid URL ({} {})", recorded.method, recorded.path),
            "invalid_request_error",
            None,
            None,
        )
        .into_response(),
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
struct ApiError {
    status: u16,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn error(
    status: u16,
    message: &str,
    kind: &'static str,
    param: Option<&str>,
    code: Option<&'static str>,
) -> ApiError {
    ApiError {
        status,
        message: message.to_owned(),
        kind,
        param: param.map(str::to_owned),
        code,
    }
}

fn invalid(message: &str, param: Option<&str>, code: Option<&'static str>) -> ApiError {
    error(400, message, "invalid_request_error", param, code)
}

fn check_auth(config: &MockConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            None,
        )),
        Some(key) if key == expected => Ok(()),
        Some(key) => {
            let tail: String = key
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(error(
                401,
                &format!("Incorrect API key provided: sk-****{tail}."),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ))
        }
    }
}

const CHAT_FIELDS: &[&str] = &[
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "moderation",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

const RESPONSES_FIELDS: &[&str] = &[
    "background",
    "conversation",
    "include",
    "input",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "model",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses the body as a JSON object whose fields are all known; checks `model` and the
/// stream options every endpoint shares.
fn parse_common(
    recorded: &RecordedRequest,
    known: &[&str],
) -> Result<(Map<String, Value>, String, bool), ApiError> {
    let content_type = recorded.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(invalid(
            "Invalid Content-Type header, expected application/json.",
            None,
            None,
        ));
    }
    let body: Map<String, Value> = serde_json::from_slice(&recorded.body).map_err(|_| {
        invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            None,
            None,
        )
    })?;
    if let Some(unknown) = body.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(
            &format!("Unrecognized request argument supplied: {unknown}"),
            None,
            None,
        ));
    }
    let model = match body.get("model") {
        None => {
            return Err(invalid("you must provide a model parameter", None, None));
        }
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(other) => {
            return Err(invalid(
                &format!(
                    "Invalid type for 'model': expected a non-empty string, but got {} instead.",
                    type_name(other)
                ),
                Some("model"),
                Some("invalid_type"),
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                &format!(
                    "Invalid type for 'stream': expected a boolean, but got {} instead.",
                    type_name(other)
                ),
                Some("stream"),
                Some("invalid_type"),
            ));
        }
    };
    if body.get("stream_options").is_some_and(|v| !v.is_null()) && !stream {
        return Err(invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            Some("invalid_value"),
        ));
    }
    check_number(&body, "temperature", 0.0, 2.0)?;
    check_number(&body, "top_p", 0.0, 1.0)?;
    for int in [
        "n",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
    ] {
        if let Some(v) = body.get(int).filter(|v| !v.is_null())
            && v.as_u64().is_none_or(|n| n < 1)
        {
            return Err(invalid(
                &format!("Invalid '{int}': expected an integer of at least 1."),
                Some(int),
                Some("invalid_value"),
            ));
        }
    }
    Ok((body, model, stream))
}

fn check_number(body: &Map<String, Value>, key: &str, min: f64, max: f64) -> Result<(), ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(()),
            _ => Err(invalid(
                &format!("Invalid '{key}': expected a number between {min} and {max}."),
                Some(key),
                Some("invalid_value"),
            )),
        },
    }
}

fn check_messages(body: &Map<String, Value>) -> Result<String, ApiError> {
    let messages = match body.get("messages") {
        None => {
            return Err(invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            ));
        }
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(invalid(
                &format!(
                    "Invalid type for 'messages': expected an array of objects, but got {} instead.",
                    type_name(other)
                ),
                Some("messages"),
                Some("invalid_type"),
            ));
        }
    };
    if messages.is_empty() {
        return Err(invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    let mut last_user = String::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(m) = message.as_object() else {
            return Err(invalid(
                &format!(
                    "Invalid type for '{param}': expected an object, but got {} instead.",
                    type_name(message)
                ),
                Some(&param),
                Some("invalid_type"),
            ));
        };
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                &format!("Missing required parameter: '{param}.role'."),
                Some(&format!("{param}.role")),
                Some("missing_required_parameter"),
            )
        })?;
        let content = m.get("content").filter(|c| !c.is_null());
        let content_ok = |c: Option<&Value>| matches!(c, Some(Value::String(_) | Value::Array(_)));
        let ok = match role {
            "system" | "developer" | "user" => content_ok(content),
            "assistant" => {
                content.is_none()
                    || content_ok(content)
                    || m.get("tool_calls").is_some()
                    || m.get("function_call").is_some()
            }
            "tool" => content_ok(content) && m.get("tool_call_id").is_some_and(Value::is_string),
            "function" => m.get("name").is_some_and(Value::is_string),
            other => {
                return Err(invalid(
                    &format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                    ),
                    Some(&format!("{param}.role")),
                    Some("invalid_value"),
                ));
            }
        };
        if !ok {
            return Err(invalid(
                &format!("Invalid '{param}': missing or invalid fields for a '{role}' message."),
                Some(&param),
                Some("invalid_value"),
            ));
        }
        if role == "user"
            && let Some(Value::String(text)) = content
        {
            last_user.clone_from(text);
        }
    }
    Ok(last_user)
}

fn usage(prompt: &str, reply: &str) -> (u64, u64) {
    let count = |s: &str| s.split_whitespace().count().max(1) as u64;
    (count(prompt) + 3, count(reply))
}

fn chat_completions(
    shared: &Arc<Shared>,
    recorded: &RecordedRequest,
    behavior: Behavior,
) -> Response {
    let (body, model, stream) = match parse_common(recorded, CHAT_FIELDS) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let prompt = match check_messages(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let reply = reply_text(&model);
    let (prompt_tokens, completion_tokens) = usage(&prompt, &reply);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("chatcmpl-mock{}", uuid::Uuid::new_v4().simple());
    let created = 1_700_000_000u64;
    if !stream {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    for word in &words {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage,
        });
        events.push(format!("data: {c}\n\n"));
    }
    if behavior == Behavior::GarbledStream {
        events.insert(
            2,
            "data: {\"id\": \"chatcmpl-broken\", \"choices\": [{\n\n".to_owned(),
        );
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse(shared, events, behavior)
}

fn responses(shared: &Arc<Shared>, recorded: &RecordedRequest, behavior: Behavior) -> Response {
    let (body, model, stream) = match parse_common(recorded, RESPONSES_FIELDS) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let prompt = match body.get("input") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.get("content").and_then(Value::as_str))
            .next_back()
            .unwrap_or_default()
            .to_owned(),
        Some(other) => {
            return invalid(
                &format!(
                    "Invalid type for 'input': expected a string or an array, but got {} instead.",
                    type_name(other)
                ),
                Some("input"),
                Some("invalid_type"),
            )
            .into_response();
        }
    };
    let reply = reply_text(&model);
    let (input_tokens, output_tokens) = usage(&prompt, &reply);
    let id = format!("resp_mock{}", uuid::Uuid::new_v4().simple());
    let message_id = format!("msg_mock{}", uuid::Uuid::new_v4().simple());
    let response = |status: &str, text: Option<&str>| {
        let output = match text {
            Some(t) => json!([{
                "type": "message",
                "id": message_id,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": t, "annotations": []}],
            }]),
            None => json!([]),
        };
        json!({
            "id": id,
            "object": "response",
            "created_at": 1_700_000_000u64,
            "status": status,
            "model": model,
            "output": output,
            "usage": if text.is_some() {
                json!({"input_tokens": input_tokens, "output_tokens": output_tokens,
                       "total_tokens": input_tokens + output_tokens})
            } else {
                Value::Null
            },
        })
    };
    if !stream {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            response("completed", Some(&reply)).to_string(),
        )
            .into_response();
    }
    let mut seq = 0u64;
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {name}\ndata: {data}\n\n")
    };
    let mut events = vec![event(
        "response.created",
        json!({"response": response("in_progress", None)}),
    )];
    for word in reply.split_inclusive(' ') {
        events.push(event(
            "response.output_text.delta",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0, "delta": word}),
        ));
    }
    events.push(event(
        "response.output_text.done",
        json!({"item_id": message_id, "output_index": 0, "content_index": 0, "text": reply}),
    ));
    events.push(event(
        "response.completed",
        json!({"response": response("completed", Some(&reply))}),
    ));
    if behavior == Behavior::GarbledStream {
        events.insert(
            2,
            "event: response.output_text.delta\ndata: {oops\n\n".to_owned(),
        );
    }
    sse(shared, events, behavior)
}

fn models(shared: &Shared) -> Response {
    let data: Vec<Value> = shared
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_686_935_002u64, "owned_by": "openai"}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"object": "list", "data": data}).to_string(),
    )
        .into_response()
}

/// Streams `events` as `text/event-stream`, paced and broken as `behavior` says, counting
/// streams that complete and streams whose reader went away.
fn sse(shared: &Arc<Shared>, events: Vec<String>, behavior: Behavior) -> Response {
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
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                return shared.stream_cancelled();
            }
        }
        shared.stream_completed();
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
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
