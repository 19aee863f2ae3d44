//! `MockOpenAi` and `MockAzure`: local stand-ins for OpenAI's Chat Completions, Responses
//! and Models APIs, and for Azure OpenAI (deployments and v1 surfaces).
//!
//! They check what they receive the way the real APIs do (Bearer key or `api-key`,
//! `api-version`, deployments, required and typed parameters, messages and tools, unknown
//! parameters refused, in the API's error shape), answer deterministically (the reply names
//! the model; tools offered → one function call; a tool result → a reply quoting it), stream
//! realistic SSE (Azure's content-filter chunks included), record every request, and can be
//! told to misbehave ([`Behavior`]).

use std::collections::BTreeMap;
use std::ops::Deref;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, header};
use serde_json::{Map, Value, json};

pub use crate::script::reply_text;
use crate::script::{self, Conversation, Last, Reply, argument_pieces, decide, text_pieces, words};
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

/// The key a default Azure mock expects in `api-key`.
pub const AZURE_API_KEY: &str = "azure-mock-key";

/// What an Azure mock is started with.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub api_key: String,
    /// Deployment name → the model it runs (what answers report as `model`).
    pub deployments: BTreeMap<String, String>,
    /// The dated `api-version`s the deployments surface accepts.
    pub api_versions: Vec<String>,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            api_key: AZURE_API_KEY.to_owned(),
            deployments: [
                ("gpt-4o-prod", "gpt-4o-2024-08-06"),
                ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
            ]
            .into_iter()
            .map(|(d, m)| (d.to_owned(), m.to_owned()))
            .collect(),
            api_versions: [
                "2024-06-01",
                "2024-10-21",
                "2025-03-01-preview",
                "2025-04-01-preview",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// A running Azure OpenAI mock (resource endpoint `http://127.0.0.1:PORT`); stopped when
/// dropped. Serves `/openai/deployments/{deployment}/chat/completions?api-version=…`,
/// `/openai/responses?api-version=…` and the v1 surface `/openai/v1/chat/completions`,
/// `/openai/v1/responses`.
pub struct MockAzure {
    server: MockServer,
}

impl Deref for MockAzure {
    type Target = MockServer;
    fn deref(&self) -> &MockServer {
        &self.server
    }
}

impl MockAzure {
    pub async fn start() -> std::io::Result<MockAzure> {
        Self::start_with(AzureConfig::default()).await
    }

    pub async fn start_with(config: AzureConfig) -> std::io::Result<MockAzure> {
        Ok(MockAzure {
            server: MockServer::start(AzureHandler { config }).await?,
        })
    }

    /// The resource endpoint to configure a route with (`url`).
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }
}

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

struct AzureHandler {
    config: AzureConfig,
}

/// Azure's own error shape: `{"error": {"code", "message"}}`.
fn azure_error(status: u16, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

impl Handler for AzureHandler {
    fn handle(&self, ex: &Exchange<'_>) -> Response {
        let req = ex.req;
        if let Behavior::Reject {
            status,
            code,
            message,
        } = ex.behavior
        {
            return json_response(
                *status,
                &json!({"error": {"code": code, "message": message, "type": kind_for(*status), "param": null}}),
            );
        }
        if req.header("api-key") != Some(self.config.api_key.as_str()) {
            return azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            );
        }
        if req.method != Method::POST {
            return azure_error(405, "405", "Method not allowed");
        }
        let version = req.query_param("api-version");
        // Refusals of an `api-version` on the dated surface.
        let dated = |v: Option<&str>| match v {
            None => Err(Box::new(azure_error(404, "404", "Resource not found"))),
            Some(v) if self.config.api_versions.iter().any(|k| k == v) => Ok(v.to_owned()),
            Some(_) => Err(Box::new(azure_error(
                400,
                "BadRequest",
                "API version not supported",
            ))),
        };
        let path = req.path.as_str();
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let Some(deployment) = rest.strip_suffix("/chat/completions") else {
                return azure_error(404, "404", "Resource not found");
            };
            if let Err(e) = dated(version) {
                return *e;
            }
            let Some(model) = self.config.deployments.get(deployment) else {
                return azure_error(
                    404,
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
                );
            };
            return match parse_common(req, CHAT_FIELDS, false) {
                Ok((body, _, stream)) => chat_completions(ex, &body, model, stream, Flavor::Azure),
                Err(e) => e.into_response(),
            };
        }
        let (v1, responses_api) = match path {
            "/openai/v1/chat/completions" => (true, false),
            "/openai/v1/responses" => (true, true),
            "/openai/responses" => (false, true),
            _ => return azure_error(404, "404", "Resource not found"),
        };
        if v1 {
            if let Some(v) = version
                && !matches!(v, "preview" | "latest")
            {
                return azure_error(400, "BadRequest", "API version not supported");
            }
        } else {
            match dated(version) {
                Err(e) => return *e,
                Ok(v) if v.as_str() < "2025-03-01" => {
                    return azure_error(400, "BadRequest", "API version not supported");
                }
                Ok(_) => {}
            }
        }
        let fields = if responses_api {
            RESPONSES_FIELDS
        } else {
            CHAT_FIELDS
        };
        let (body, deployment, stream) = match parse_common(req, fields, true) {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
        let Some(model) = self.config.deployments.get(&deployment) else {
            return azure_error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
            );
        };
        if responses_api {
            responses(ex, &body, model, stream)
        } else {
            chat_completions(ex, &body, model, stream, Flavor::Azure)
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

fn check_response_format(body: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(format) = body.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") => {
            let schema = format.get("json_schema");
            if schema
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(missing("response_format.json_schema.name"));
            }
            Ok(())
        }
        _ => Err(invalid(
            "Invalid value for 'response_format.type': expected one of 'text', 'json_object', 'json_schema'.",
            Some("response_format.type"),
            Some("invalid_value"),
        )),
    }
}

/// Text of a message `content` (a string or an array of parts), checking the parts.
fn content_text(content: &Value, param: &str, images: bool) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => {
                            if !text.is_empty() {
                                text.push(' ');
                            }
                            text.push_str(t);
                        }
                        _ => return Err(missing(&format!("{p}.text"))),
                    },
                    Some("image_url") if images => {
                        let url = part
                            .get("image_url")
                            .and_then(|i| i.get("url"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| missing(&format!("{p}.image_url.url")))?;
                        let ok = url.starts_with("https://")
                            || url.starts_with("http://")
                            || url.starts_with("data:image/");
                        if !ok {
                            return Err(invalid(
                                "Invalid image URL: expected a valid URL or a base64 data URL.",
                                Some(&format!("{p}.image_url.url")),
                                Some("invalid_image_url"),
                            ));
                        }
                    }
                    Some("input_audio" | "file") if images => {}
                    Some(other) => {
                        return Err(invalid(
                            &format!(
                                "Invalid value: '{other}'. Supported values are: 'text'{}.",
                                if images {
                                    ", 'image_url', 'input_audio', 'file'"
                                } else {
                                    ""
                                }
                            ),
                            Some(&format!("{p}.type")),
                            Some("invalid_value"),
                        ));
                    }
                    None => return Err(missing(&format!("{p}.type"))),
                }
            }
            Ok(text)
        }
        other => Err(bad_type(param, "a string or an array", other)),
    }
}

/// Checks `messages` like the real API and reduces the conversation to what the reply
/// depends on.
fn check_messages(body: &Map<String, Value>, tools: Vec<String>) -> Result<Conversation, ApiError> {
    let messages = match body.get("messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(m)) => m,
        Some(other) => return Err(bad_type("messages", "an array of objects", other)),
    };
    if messages.is_empty() {
        return Err(invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    let mut total = 0;
    let mut last = Last::Other;
    let mut pending_calls: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(m) = message.as_object() else {
            return Err(bad_type(&param, "an object", message));
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| missing(&format!("{param}.role")))?;
        let content = m.get("content").filter(|c| !c.is_null());
        let content_param = format!("{param}.content");
        let invalid_message = || {
            invalid(
                &format!("Invalid '{param}': missing or invalid fields for a '{role}' message."),
                Some(&param),
                Some("invalid_value"),
            )
        };
        match role {
            "system" | "developer" | "user" => {
                let content = content.ok_or_else(invalid_message)?;
                let text = content_text(content, &content_param, role == "user")?;
                total += words(&text);
                last = if role == "user" { Last::User } else { last };
            }
            "assistant" => {
                if let Some(c) = content {
                    total += words(&content_text(c, &content_param, false)?);
                }
                let calls = match m.get("tool_calls").filter(|c| !c.is_null()) {
                    None => &Vec::new(),
                    Some(Value::Array(calls)) => calls,
                    Some(other) => {
                        return Err(bad_type(&format!("{param}.tool_calls"), "an array", other));
                    }
                };
                if content.is_none() && calls.is_empty() && m.get("function_call").is_none() {
                    return Err(invalid_message());
                }
                pending_calls.clear();
                for (k, call) in calls.iter().enumerate() {
                    let p = format!("{param}.tool_calls[{k}]");
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| missing(&format!("{p}.id")))?;
                    if call.get("type").and_then(Value::as_str) != Some("function") {
                        return Err(missing(&format!("{p}.type")));
                    }
                    let f = call
                        .get("function")
                        .ok_or_else(|| missing(&format!("{p}.function")))?;
                    if f.get("name").and_then(Value::as_str).is_none() {
                        return Err(missing(&format!("{p}.function.name")));
                    }
                    match f.get("arguments") {
                        Some(Value::String(_)) => {}
                        Some(other) => {
                            return Err(bad_type(
                                &format!("{p}.function.arguments"),
                                "a string",
                                other,
                            ));
                        }
                        None => return Err(missing(&format!("{p}.function.arguments"))),
                    }
                    pending_calls.push(id.to_owned());
                }
                last = Last::Other;
            }
            "tool" => {
                let content = content.ok_or_else(invalid_message)?;
                let text = content_text(content, &content_param, false)?;
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(&format!("{param}.tool_call_id")))?;
                if !pending_calls.iter().any(|c| c == id) {
                    return Err(invalid(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                        Some(&format!("{param}.role")),
                        None,
                    ));
                }
                total += words(&text);
                last = Last::ToolResult(text);
            }
            "function" => {
                if m.get("name").and_then(Value::as_str).is_none() {
                    return Err(invalid_message());
                }
            }
            other => {
                return Err(invalid(
                    &format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                    ),
                    Some(&format!("{param}.role")),
                    Some("invalid_value"),
                ));
            }
        }
    }
    Ok(Conversation {
        last,
        tools,
        no_tools: false,
        words: total,
    })
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

fn chat_completions(
    ex: &Exchange<'_>,
    body: &Map<String, Value>,
    model: &str,
    stream: bool,
    flavor: Flavor,
) -> Response {
    let checked = check_tools(body, false).and_then(|tools| {
        let no_tools = check_tool_choice(body, &tools)?;
        check_response_format(body)?;
        let mut conv = check_messages(body, tools)?;
        conv.no_tools = no_tools;
        Ok(conv)
    });
    let conv = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let reply = decide(model, &conv);
    let usage = script::usage(&conv, &reply);
    ex.report(usage);
    let id = new_id("chatcmpl-mock");
    let call_id = new_id("call_");
    let created = 1_700_000_000u64;
    let filters = json!({
        "hate": {"filtered": false, "severity": "safe"},
        "self_harm": {"filtered": false, "severity": "safe"},
        "sexual": {"filtered": false, "severity": "safe"},
        "violence": {"filtered": false, "severity": "safe"},
    });
    if !stream {
        let (message, finish) = match &reply {
            Reply::Text(text) => (
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []}),
                "stop",
            ),
            Reply::Call { name, arguments } => (
                json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                       "tool_calls": [{"id": call_id, "type": "function",
                                       "function": {"name": name, "arguments": arguments}}]}),
                "tool_calls",
            ),
        };
        let mut choice =
            json!({"index": 0, "message": message, "logprobs": null, "finish_reason": finish});
        let mut answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage_json(&usage),
        });
        if flavor == Flavor::Azure {
            choice["content_filter_results"] = filters.clone();
            answer["prompt_filter_results"] =
                json!([{"prompt_index": 0, "content_filter_results": filters}]);
        } else {
            answer["service_tier"] = json!("default");
        }
        answer["choices"] = json!([choice]);
        return json_response(200, &answer);
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |delta: Value, finish: Value| {
        let mut choice =
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish});
        if flavor == Flavor::Azure {
            choice["content_filter_results"] = if finish.is_null() {
                filters.clone()
            } else {
                json!({})
            };
        }
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [choice],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events = Vec::new();
    if flavor == Flavor::Azure {
        // Azure opens with the prompt's filter results, in a chunk without choices.
        let c = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}]});
        events.push(Bytes::from(format!("data: {c}\n\n")));
    }
    match &reply {
        Reply::Text(text) => {
            events.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ));
            for word in text_pieces(text) {
                events.push(chunk(json!({"content": word}), Value::Null));
            }
            events.push(chunk(json!({}), json!("stop")));
        }
        Reply::Call { name, arguments } => {
            events.push(chunk(
                json!({"role": "assistant", "content": null, "refusal": null,
                       "tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in argument_pieces(arguments) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
            events.push(chunk(json!({}), json!("tool_calls")));
        }
    }
    if include_usage {
        let c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage_json(&usage),
        });
        events.push(Bytes::from(format!("data: {c}\n\n")));
    }
    match ex.behavior {
        Behavior::GarbledStream => events.insert(
            2,
            Bytes::from_static(b"data: {\"id\": \"chatcmpl-broken\", \"choices\": [{\n\n"),
        ),
        Behavior::StreamError => {
            events.truncate(2);
            events.push(Bytes::from(format!(
                "data: {}\n\n",
                json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                                  "type": "server_error", "param": null, "code": null}})
            )));
            return ex.stream("text/event-stream; charset=utf-8", events);
        }
        _ => {}
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    ex.stream("text/event-stream; charset=utf-8", events)
}

/// Checks a Responses `input` and reduces the conversation.
fn check_input(body: &Map<String, Value>, tools: Vec<String>) -> Result<Conversation, ApiError> {
    let mut conv = Conversation {
        last: Last::User,
        tools,
        no_tools: false,
        words: 0,
    };
    if let Some(instructions) = body.get("instructions").filter(|v| !v.is_null()) {
        match instructions {
            Value::String(s) => conv.words += words(s),
            other => return Err(bad_type("instructions", "a string", other)),
        }
    }
    let items = match body.get("input") {
        None | Some(Value::Null) => return Ok(conv),
        Some(Value::String(s)) => {
            conv.words += words(s);
            return Ok(conv);
        }
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad_type("input", "a string or an array", other)),
    };
    let mut calls: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item
                    .get("role")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(&format!("{param}.role")))?;
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(invalid(
                        &format!(
                            "Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."
                        ),
                        Some(&format!("{param}.role")),
                        Some("invalid_value"),
                    ));
                }
                let content = item
                    .get("content")
                    .ok_or_else(|| missing(&format!("{param}.content")))?;
                let text = match content {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match part.get("type").and_then(Value::as_str) {
                                Some("input_text" | "output_text") => {
                                    let t = part.get("text").and_then(Value::as_str).ok_or_else(
                                        || missing(&format!("{param}.content[{j}].text")),
                                    )?;
                                    text.push_str(t);
                                }
                                Some("input_image" | "input_file" | "refusal") => {}
                                _ => return Err(missing(&format!("{param}.content[{j}].type"))),
                            }
                        }
                        text
                    }
                    other => {
                        return Err(bad_type(
                            &format!("{param}.content"),
                            "a string or an array",
                            other,
                        ));
                    }
                };
                conv.words += words(&text);
                conv.last = if role == "user" {
                    Last::User
                } else {
                    Last::Other
                };
            }
            "function_call" => {
                for field in ["call_id", "name", "arguments"] {
                    if item.get(field).and_then(Value::as_str).is_none() {
                        return Err(missing(&format!("{param}.{field}")));
                    }
                }
                calls.extend(
                    item.get("call_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                );
                conv.last = Last::Other;
            }
            "function_call_output" => {
                let id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(&format!("{param}.call_id")))?;
                if !calls.iter().any(|c| c == id) {
                    return Err(invalid(
                        &format!("No tool call found for function call output with call_id {id}."),
                        Some("input"),
                        None,
                    ));
                }
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) if !other.is_null() => other.to_string(),
                    _ => return Err(missing(&format!("{param}.output"))),
                };
                conv.words += words(&output);
                conv.last = Last::ToolResult(output);
            }
            "reasoning" | "item_reference" => {}
            other => {
                return Err(invalid(
                    &format!("Invalid value: '{other}'."),
                    Some(&format!("{param}.type")),
                    Some("invalid_value"),
                ));
            }
        }
    }
    Ok(conv)
}

fn responses(ex: &Exchange<'_>, body: &Map<String, Value>, model: &str, stream: bool) -> Response {
    let checked = check_tools(body, true).and_then(|tools| {
        let no_tools = check_tool_choice(body, &tools)?;
        let mut conv = check_input(body, tools)?;
        conv.no_tools = no_tools;
        Ok(conv)
    });
    let conv = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let reply = decide(model, &conv);
    let usage = script::usage(&conv, &reply);
    ex.report(usage);
    let id = new_id("resp_mock");
    let item_id = match reply {
        Reply::Text(_) => new_id("msg_mock"),
        Reply::Call { .. } => new_id("fc_mock"),
    };
    let call_id = new_id("call_");
    let usage_value = json!({
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input + usage.output,
    });
    let item = |status: &str, done: bool| match &reply {
        Reply::Text(text) => json!({
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": if done {
                json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
            } else {
                json!([])
            },
        }),
        Reply::Call { name, arguments } => json!({
            "type": "function_call",
            "id": item_id,
            "call_id": call_id,
            "name": name,
            "arguments": if done { arguments.as_str() } else { "" },
            "status": status,
        }),
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": 1_700_000_000u64,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "tool_choice": body.get("tool_choice").cloned().unwrap_or(json!("auto")),
            "tools": body.get("tools").cloned().unwrap_or(json!([])),
            "usage": usage,
        })
    };
    if !stream {
        return json_response(
            200,
            &response("completed", json!([item("completed", true)]), usage_value),
        );
    }
    let mut seq = 0u64;
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    };
    let mut events = vec![
        event(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.in_progress",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item": item("in_progress", false)}),
        ),
    ];
    match &reply {
        Reply::Text(text) => {
            let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []});
            events.push(event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
            ));
            for word in text_pieces(text) {
                events.push(event(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": word, "logprobs": []}),
                ));
            }
            events.push(event(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ));
            events.push(event(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(text)}),
            ));
        }
        Reply::Call { name, arguments } => {
            for piece in argument_pieces(arguments) {
                events.push(event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": piece}),
                ));
            }
            events.push(event(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "name": name, "arguments": arguments}),
            ));
        }
    }
    events.push(event(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", true)}),
    ));
    match ex.behavior {
        Behavior::GarbledStream => {
            events.insert(
                3,
                Bytes::from_static(b"event: response.output_text.delta\ndata: {oops\n\n"),
            );
        }
        Behavior::StreamError => {
            events.truncate(3);
            events.push(event(
                "error",
                json!({"code": "server_error", "message": "The server had an error while processing your request.", "param": null}),
            ));
            return ex.stream("text/event-stream; charset=utf-8", events);
        }
        _ => {}
    }
    events.push(event(
        "response.completed",
        json!({"response": response("completed", json!([item("completed", true)]), usage_value)}),
    ));
    ex.stream("text/event-stream; charset=utf-8", events)
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
