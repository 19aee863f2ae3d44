//! `MockOpenAi` and `MockAzure`: local stand-ins for OpenAI's Chat Completions, Responses
//! and Models APIs, and for Azure OpenAI (deployments and v1 surfaces).
//!
//! They check what they receive the way the real APIs do (Bearer key or `api-key`,
//! `api-version`, deployments, required and typed parameters, messages and tools, unknown
//! parameters refused, in the API's error shape), answer deterministically (the reply names
//! the model; tools offered → one function call; a tool result → a reply quoting it), stream
//! realistic SSE (Azure's content-filter chunks included), record every request, and can be
//! told to misbehave ([`Behavior`]).

use std::ops::Deref;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, header};
use serde_json::{Map, Value, json};

pub use crate::script::reply_text;
use crate::server::{
    Behavior, Exchange, Handler, MockServer, RecordedRequest, ReportedUsage, json_response,
    type_name,
};

/// The key a default mock expects.
pub const MOCK_API_KEY: &str = "sk-mock-key";

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

/// A running OpenAI mock; stopped when dropped. Serves `/v1/chat/completions`,
/// `/v1/responses` and `/v1/models`.
pub struct MockOpenAi {
    server: MockServer,
}

impl Deref for MockOpenAi {
    type Target = MockServer;
    fn deref(&self) -> &MockServer {
        &self.server
    }
}

impl MockOpenAi {
    /// Starts a mock expecting [`MOCK_API_KEY`] on 127.0.0.1 (a free port).
    pub async fn start() -> std::io::Result<MockOpenAi> {
        Self::start_with(MockConfig::default()).await
    }

    pub async fn start_with(config: MockConfig) -> std::io::Result<MockOpenAi> {
        Ok(MockOpenAi {
            server: MockServer::start(OpenAiHandler { config }).await?,
        })
    }

    /// The API base to configure a route with: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.origin())
    }
}

mod azure;
mod chat;
mod responses;

pub use azure::{AZURE_API_KEY, AzureConfig, MockAzure};
use chat::{CHAT_FIELDS, chat_completions};
use responses::{RESPONSES_FIELDS, responses};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
struct ApiError {
    status: u16,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        json_response(self.status, &body)
    }
}

fn error(
    status: u16,
    message: &str,
    kind: &'static str,
    param: Option<&str>,
    code: Option<&str>,
) -> ApiError {
    ApiError {
        status,
        message: message.to_owned(),
        kind,
        param: param.map(str::to_owned),
        code: code.map(str::to_owned),
    }
}

fn invalid(message: &str, param: Option<&str>, code: Option<&'static str>) -> ApiError {
    error(400, message, "invalid_request_error", param, code)
}

fn not_found(req: &RecordedRequest) -> Response {
    error(
        404,
        &format!("Invalid URL ({} {})", req.method, req.path),
        "invalid_request_error",
        None,
        None,
    )
    .into_response()
}

/// The OpenAI error type for a status.
fn kind_for(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Which API family a request is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Azure,
}

struct OpenAiHandler {
    config: MockConfig,
}

impl Handler for OpenAiHandler {
    fn handle(&self, ex: &Exchange<'_>) -> Response {
        if let Behavior::Reject {
            status,
            code,
            message,
        } = ex.behavior
        {
            return error(*status, message, kind_for(*status), None, Some(code)).into_response();
        }
        if let Err(e) = check_bearer(&self.config, ex.req) {
            return e.into_response();
        }
        let req = ex.req;
        match (req.method.clone(), req.path.as_str()) {
            (Method::POST, "/v1/chat/completions") => match parse_common(req, CHAT_FIELDS, true) {
                Ok((body, model, stream)) => {
                    chat_completions(ex, &body, &model, stream, Flavor::OpenAi)
                }
                Err(e) => e.into_response(),
            },
            (Method::POST, "/v1/responses") => match parse_common(req, RESPONSES_FIELDS, true) {
                Ok((body, model, stream)) => responses(ex, &body, &model, stream),
                Err(e) => e.into_response(),
            },
            (Method::GET, "/v1/models") => models(&self.config),
            (_, "/v1/chat/completions" | "/v1/responses" | "/v1/models") => error(
                405,
                &format!("Invalid method for URL ({} {})", req.method, req.path),
                "invalid_request_error",
                None,
                None,
            )
            .into_response(),
            _ => not_found(req),
        }
    }
}

fn check_bearer(config: &MockConfig, req: &RecordedRequest) -> Result<(), ApiError> {
    let Some(expected) = &config.api_key else {
        return Ok(());
    };
    let given = req
        .header("authorization")
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

/// Parses the body as a JSON object whose fields are all known; checks `model` (when
/// `model_required`) and the stream options every endpoint shares.
fn parse_common(
    recorded: &RecordedRequest,
    known: &[&str],
    model_required: bool,
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
        None if !model_required => String::new(),
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

fn missing(param: &str) -> ApiError {
    invalid(
        &format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

fn bad_type(param: &str, expected: &str, got: &Value) -> ApiError {
    invalid(
        &format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        Some(param),
        Some("invalid_type"),
    )
}

/// Checks `tools` (function tools: `{"type": "function", "function": {"name", …}}` for chat,
/// flat `{"type": "function", "name", …}` for Responses) and returns their names.
fn check_tools(body: &Map<String, Value>, flat: bool) -> Result<Vec<String>, ApiError> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(t)) => t,
        Some(other) => return Err(bad_type("tools", "an array", other)),
    };
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let kind = tool.get("type").and_then(Value::as_str);
        if kind != Some("function") {
            if flat && kind.is_some() {
                // Built-in Responses tools (web_search, file_search…) are fine and unnamed.
                continue;
            }
            return Err(missing(&format!("{param}.type")));
        }
        let function = if flat {
            tool
        } else {
            tool.get("function")
                .filter(|f| f.is_object())
                .ok_or_else(|| missing(&format!("{param}.function")))?
        };
        let name_param = if flat {
            format!("{param}.name")
        } else {
            format!("{param}.function.name")
        };
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| missing(&name_param))?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(invalid(
                &format!(
                    "Invalid '{name_param}': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
                ),
                Some(&name_param),
                Some("invalid_value"),
            ));
        }
        if let Some(p) = function.get("parameters").filter(|p| !p.is_null())
            && !p.is_object()
        {
            return Err(bad_type(&format!("{param}.parameters"), "an object", p));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Checks `tool_choice`; returns whether it forbids tool calls.
fn check_tool_choice(body: &Map<String, Value>, tools: &[String]) -> Result<bool, ApiError> {
    match body.get("tool_choice") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(true),
            "auto" | "required" => Ok(false),
            other => Err(invalid(
                &format!(
                    "Invalid value: '{other}'. Supported values are: 'none', 'auto', and 'required'."
                ),
                Some("tool_choice"),
                Some("invalid_value"),
            )),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str);
            match name {
                Some(n) if tools.iter().any(|t| t == n) => Ok(false),
                _ => Err(invalid(
                    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified and must name one of them.",
                    Some("tool_choice"),
                    Some("invalid_value"),
                )),
            }
        }
        Some(other) => Err(bad_type("tool_choice", "a string or an object", other)),
    }
}

fn usage_json(u: &ReportedUsage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn models(config: &MockConfig) -> Response {
    let data: Vec<Value> = config
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
