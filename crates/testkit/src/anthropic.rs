//! `MockAnthropic`: a local stand-in for Anthropic's Messages API (`POST /v1/messages`), and
//! the Messages checks and answers `MockBedrock` reuses for `InvokeModel`.
//!
//! A request is checked like the API does: `x-api-key` and `anthropic-version` headers
//! required, required fields (`model`, `max_tokens`, `messages`), unknown fields refused,
//! content blocks by type and role, every `tool_use` answered by a `tool_result` in the next
//! user turn (and no result without its call), `tool_choice` naming a real tool, and, with
//! thinking on, its budget rules and the rule that an assistant turn continuing a tool loop
//! starts with its thinking block, whose signature must be the one this mock produced
//! (so a gateway that drops or alters thinking blocks fails). Errors use Anthropic's shape
//! `{"type": "error", "error": {"type", "message"}}`. With thinking on, answers start with a
//! signed thinking block (streamed as `thinking_delta` and `signature_delta`); usage reports
//! cache reads, and a cache write when the request carries a `cache_control` mark.

use std::ops::Deref;

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use http::{Method, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::script::{self, Conversation, Last, Reply, argument_pieces, decide, text_pieces, words};
use crate::server::{Behavior, Exchange, Handler, MockServer, ReportedUsage, type_name};

/// The key a default mock accepts (`x-api-key`).
pub const ANTHROPIC_API_KEY: &str = "sk-ant-mock-key-0123456789";

/// The thinking every answer starts with when the request turns thinking on.
pub const THINKING_TEXT: &str = "The user asked something; I will answer with care.";

/// The signature this mock gives a thinking block's text (checked when it comes back).
pub fn thinking_signature(thinking: &str) -> String {
    let digest = Sha256::digest(format!("mock-signature:{thinking}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// What an Anthropic mock is started with.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    pub api_key: String,
    /// The models it serves.
    pub models: Vec<String>,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            api_key: ANTHROPIC_API_KEY.to_owned(),
            models: [
                "claude-sonnet-4-5",
                "claude-sonnet-4-5-20250929",
                "claude-haiku-4-5",
                "claude-opus-4-1",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// A running Anthropic mock (API host `http://127.0.0.1:PORT`); stopped when dropped.
pub struct MockAnthropic {
    server: MockServer,
}

impl Deref for MockAnthropic {
    type Target = MockServer;
    fn deref(&self) -> &MockServer {
        &self.server
    }
}

impl MockAnthropic {
    pub async fn start() -> std::io::Result<MockAnthropic> {
        Self::start_with(AnthropicConfig::default()).await
    }

    pub async fn start_with(config: AnthropicConfig) -> std::io::Result<MockAnthropic> {
        Ok(MockAnthropic {
            server: MockServer::start(AnthropicHandler { config }).await?,
        })
    }

    /// The host to configure a route with (`url`): the gateway appends `/v1/messages`.
    pub fn base_url(&self) -> String {
        self.server.origin()
    }
}

struct AnthropicHandler {
    config: AnthropicConfig,
}

/// An error in Anthropic's shape.
pub(crate) fn error(status: u16, kind: &str, message: &str) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("request-id", &request_id)
        .body(Body::from(
            json!({"type": "error", "error": {"type": kind, "message": message},
                   "request_id": request_id})
            .to_string(),
        ))
        .unwrap_or_default()
}

fn invalid(message: impl AsRef<str>) -> Response {
    error(400, "invalid_request_error", message.as_ref())
}

impl Handler for AnthropicHandler {
    fn handle(&self, ex: &Exchange<'_>) -> Response {
        let req = ex.req;
        if let Behavior::Reject {
            status,
            code,
            message,
        } = ex.behavior
        {
            return error(*status, code, message);
        }
        let count = req.path == "/v1/messages/count_tokens";
        if req.path != "/v1/messages" && !count {
            return error(404, "not_found_error", "Not Found");
        }
        if req.method != Method::POST {
            return error(405, "invalid_request_error", "Method Not Allowed");
        }
        match req.header("x-api-key") {
            None => return error(401, "authentication_error", "x-api-key header is required"),
            Some(k) if k != self.config.api_key => {
                return error(401, "authentication_error", "invalid x-api-key");
            }
            Some(_) => {}
        }
        match req.header("anthropic-version") {
            None => return invalid("anthropic-version: header is required"),
            Some(v) if is_api_version(v) => {}
            Some(other) => return invalid(format!("anthropic-version: invalid version {other}")),
        }
        let dialect = if count {
            Dialect::CountTokens
        } else {
            Dialect::Api
        };
        let checked = match check_messages(&req.body, dialect) {
            Ok(c) => c,
            Err(message) => return invalid(message),
        };
        let model = checked.model.clone().unwrap_or_default();
        if !self.config.models.contains(&model) {
            return error(404, "not_found_error", &format!("model: {model}"));
        }
        if count {
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"input_tokens": input_tokens(&checked.conv)}).to_string(),
                ))
                .unwrap_or_default();
        }
        let reply = decide(&model, &checked.conv);
        let usage = checked.usage(&reply);
        ex.report(usage);
        if checked.stream {
            let mut events: Vec<Bytes> = message_events(&model, &checked, &reply, &usage)
                .iter()
                .map(|e| {
                    Bytes::from(format!(
                        "event: {}\ndata: {e}\n\n",
                        e["type"].as_str().unwrap_or("message")
                    ))
                })
                .collect();
            match ex.behavior {
                Behavior::GarbledStream => {
                    events.insert(
                        3,
                        Bytes::from_static(
                            b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hel\n\n",
                        ),
                    );
                }
                Behavior::StreamError => {
                    events.truncate(2);
                    events.push(Bytes::from(format!(
                        "event: error\ndata: {}\n\n",
                        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                    )));
                }
                _ => {}
            }
            return ex.stream("text/event-stream; charset=utf-8", events);
        }
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                "request-id",
                format!("req_{}", uuid::Uuid::new_v4().simple()),
            )
            .body(Body::from(
                message_json(&model, &checked, &reply, &usage).to_string(),
            ))
            .unwrap_or_default()
    }
}

/// A dated API version (`2023-06-01`; SDKs send newer dates as they appear).
fn is_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && v >= "2023-01-01"
}

/// Which surface a Messages body came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Anthropic's API: `model` and `stream` in the body.
    Api,
    /// Bedrock `InvokeModel`: `anthropic_version` in the body; model and stream in the URL.
    Bedrock,
    /// `POST /v1/messages/count_tokens`: a Messages body without `max_tokens`.
    CountTokens,
}

/// The input tokens a request counts as (what a completion of it reports as input).
pub(crate) fn input_tokens(conv: &Conversation) -> u64 {
    conv.words + 3
}

/// A Messages request, checked.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub conv: Conversation,
    pub model: Option<String>,
    pub stream: bool,
    pub thinking: bool,
    /// A `cache_control` mark was seen (the answer reports a cache write).
    pub cache_marked: bool,
}

impl Checked {
    /// The usage reported, in OpenAI's terms (input includes cache reads and writes).
    pub(crate) fn usage(&self, reply: &Reply) -> ReportedUsage {
        script::usage(&self.conv, reply)
    }

    fn cache_write(&self) -> u64 {
        u64::from(self.cache_marked)
    }

    fn wire_usage(&self, u: &ReportedUsage, output: u64) -> Value {
        json!({
            "input_tokens": u.input - u.cached - self.cache_write(),
            "cache_creation_input_tokens": self.cache_write(),
            "cache_read_input_tokens": u.cached,
            "output_tokens": output,
        })
    }
}

const API_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
];

const COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "context_management",
    "output_config",
];

const BEDROCK_FIELDS: &[&str] = &[
    "anthropic_version",
    "anthropic_beta",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
];

fn check_cache_control(block: &Map<String, Value>, path: &str) -> Result<bool, String> {
    match block.get("cache_control") {
        None | Some(Value::Null) => Ok(false),
        Some(c) if c.get("type").and_then(Value::as_str) == Some("ephemeral") => Ok(true),
        Some(_) => Err(format!(
            "{path}.cache_control.type: Input should be 'ephemeral'"
        )),
    }
}

fn check_image(block: &Map<String, Value>, path: &str) -> Result<(), String> {
    let source = block
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{path}.source: Field required"))?;
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            if !matches!(
                media,
                Some("image/jpeg" | "image/png" | "image/gif" | "image/webp")
            ) {
                return Err(format!(
                    "{path}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                ));
            }
            let data = source
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if data.is_empty()
                || base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .is_err()
            {
                return Err(format!(
                    "{path}.source.base64.data: The image data is not valid base64"
                ));
            }
            Ok(())
        }
        Some("url") => match source.get("url").and_then(Value::as_str) {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(()),
            _ => Err(format!("{path}.source.url.url: Field required")),
        },
        _ => Err(format!(
            "{path}.source: Input tag found using 'type' does not match any of the expected tags: 'base64', 'url', 'file'"
        )),
    }
}

fn text_of_result(content: Option<&Value>, path: &str) -> Result<String, String> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (k, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        texts.push(b.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    Some("image") => {}
                    _ => {
                        return Err(format!(
                            "{path}.content.{k}: Input tag found using 'type' does not match any of the expected tags: 'text', 'image'"
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(other) => Err(format!(
            "{path}.content: Input should be a valid list or string, got {}",
            type_name(other)
        )),
    }
}

/// Checks a Messages body as the API (or Bedrock) does.
pub(crate) fn check_messages(body: &[u8], dialect: Dialect) -> Result<Checked, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("There was an issue with your request body: {e}"))?;
    let Some(req) = value.as_object() else {
        return Err("Input should be a valid dictionary".into());
    };
    let known = match dialect {
        Dialect::Api => API_FIELDS,
        Dialect::Bedrock => BEDROCK_FIELDS,
        Dialect::CountTokens => COUNT_FIELDS,
    };
    for k in req.keys() {
        if !known.contains(&k.as_str()) {
            return Err(match dialect {
                Dialect::Api | Dialect::CountTokens => {
                    format!("{k}: Extra inputs are not permitted")
                }
                Dialect::Bedrock => format!(
                    "Malformed input request: #: extraneous key [{k}] is not permitted, please reformat your input and try again."
                ),
            });
        }
    }
    let model = match dialect {
        Dialect::Api | Dialect::CountTokens => Some(
            req.get("model")
                .and_then(Value::as_str)
                .ok_or("model: Field required")?
                .to_owned(),
        ),
        Dialect::Bedrock => {
            if req.get("anthropic_version").and_then(Value::as_str) != Some("bedrock-2023-05-31") {
                return Err("Malformed input request: #: required key [anthropic_version] not found or invalid, please reformat your input and try again.".into());
            }
            if let Some(beta) = req.get("anthropic_beta")
                && !beta
                    .as_array()
                    .is_some_and(|b| b.iter().all(Value::is_string))
            {
                return Err(
                    "Malformed input request: #/anthropic_beta: expected type: JSONArray".into(),
                );
            }
            None
        }
    };
    let max_tokens = match req.get("max_tokens") {
        None if dialect == Dialect::CountTokens => u64::MAX,
        None => return Err("max_tokens: Field required".into()),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or("max_tokens: Input should be a valid integer greater than or equal to 1")?,
    };
    if let Some(t) = req.get("temperature") {
        match t.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => {}
            _ => return Err("temperature: Input should be less than or equal to 1".into()),
        }
    }
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("stream: Input should be a valid boolean".into()),
    };
    let mut cache_marked = false;
    let mut total = 0;
    match req.get("system") {
        None => {}
        Some(Value::String(s)) => total += words(s),
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                let b = b
                    .as_object()
                    .ok_or(format!("system.{i}: Input should be a valid dictionary"))?;
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(format!("system.{i}.type: Input should be 'text'"));
                }
                total += words(b.get("text").and_then(Value::as_str).unwrap_or_default());
                cache_marked |= check_cache_control(b, &format!("system.{i}"))?;
            }
        }
        Some(other) => {
            return Err(format!(
                "system: Input should be a valid string or list, got {}",
                type_name(other)
            ));
        }
    }

    let thinking = match req.get("thinking") {
        None => false,
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                let budget = t
                    .get("budget_tokens")
                    .and_then(Value::as_u64)
                    .ok_or("thinking.enabled.budget_tokens: Field required")?;
                if budget < 1024 {
                    return Err("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into());
                }
                if budget >= max_tokens {
                    return Err("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size".into());
                }
                if req.get("temperature").and_then(Value::as_f64).is_some_and(|t| t != 1.0) {
                    return Err("`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility".into());
                }
                if req.get("top_k").is_some() {
                    return Err("`top_k` must be unset when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility".into());
                }
                true
            }
            Some("disabled") => false,
            _ => return Err("thinking: Input tag found using 'type' does not match any of the expected tags: 'enabled', 'disabled'".into()),
        },
    };

    let mut tools = Vec::new();
    if let Some(list) = req.get("tools") {
        let list = list
            .as_array()
            .ok_or("tools: Input should be a valid list")?;
        for (i, tool) in list.iter().enumerate() {
            let tool = tool
                .as_object()
                .ok_or(format!("tools.{i}: Input should be a valid dictionary"))?;
            cache_marked |= check_cache_control(tool, &format!("tools.{i}"))?;
            if let Some(kind) = tool.get("type").and_then(Value::as_str)
                && kind != "custom"
            {
                continue; // a server tool
            }
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            let valid = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(format!(
                    "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                ));
            }
            match tool.get("input_schema") {
                Some(s) if s.get("type").and_then(Value::as_str) == Some("object") => {}
                Some(_) => {
                    return Err(format!(
                        "tools.{i}.custom.input_schema.type: Input should be 'object'"
                    ));
                }
                None => return Err(format!("tools.{i}.custom.input_schema: Field required")),
            }
            tools.push(name.to_owned());
        }
    }
    let no_tools = match req.get("tool_choice") {
        None => false,
        Some(c) => match c.get("type").and_then(Value::as_str) {
            Some("auto" | "any") => false,
            Some("none") => true,
            Some("tool") => {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                if !tools.iter().any(|t| t == name) {
                    return Err(format!("Tool '{name}' not found in provided tools"));
                }
                false
            }
            _ => return Err("tool_choice: Input tag found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'".into()),
        },
    };
    if req.get("tool_choice").is_some() && tools.is_empty() && !no_tools {
        return Err("tool_choice may only be specified while providing tools.".into());
    }

    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err("messages: at least one message is required".into()),
        _ => return Err("messages: Field required".into()),
    };
    let mut last = Last::Other;
    let mut directive = None;
    let mut pending_calls: Vec<String> = Vec::new();
    let mut last_assistant_starts_with_thinking = true;
    let mut last_assistant_index = 0;
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages.{i}");
        let message = message
            .as_object()
            .ok_or(format!("{path}: Input should be a valid dictionary"))?;
        let role = match message.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(format!(
                    "{path}.role: Input should be 'user' or 'assistant'"
                ));
            }
        };
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        let blocks: Vec<Value> = match message.get("content") {
            Some(Value::String(s)) => {
                if s.is_empty() && !(role == "assistant" && i + 1 == messages.len()) {
                    return Err(format!("{path}: text content blocks must be non-empty"));
                }
                vec![json!({"type": "text", "text": s})]
            }
            Some(Value::Array(b)) if !b.is_empty() => b.clone(),
            Some(Value::Array(_)) => {
                return Err(format!(
                    "{path}: all messages must have non-empty content except for the optional final assistant message"
                ));
            }
            _ => return Err(format!("{path}.content: Field required")),
        };
        let mut answered: Vec<String> = Vec::new();
        let mut result_text = None;
        let mut calls = Vec::new();
        let mut has_text = false;
        let mut texts = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let bpath = format!("{path}.content.{j}");
            let block = block
                .as_object()
                .ok_or(format!("{bpath}: Input should be a valid dictionary"))?;
            cache_marked |= check_cache_control(block, &bpath)?;
            let kind = block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match (kind, role) {
                ("text", _) => match block.get("text").and_then(Value::as_str) {
                    Some(t) if !t.is_empty() => {
                        total += words(t);
                        has_text = true;
                        texts.push(t);
                    }
                    _ => return Err(format!("{bpath}: text content blocks must be non-empty")),
                },
                ("image", "user") => check_image(block, &bpath)?,
                ("document", "user") => {
                    if !block.get("source").is_some_and(Value::is_object) {
                        return Err(format!("{bpath}.source: Field required"));
                    }
                }
                ("tool_result", "user") => {
                    let id = block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .ok_or(format!("{bpath}.tool_use_id: Field required"))?;
                    if !pending_calls.iter().any(|c| c == id) {
                        return Err(format!(
                            "{bpath}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                        ));
                    }
                    let text = text_of_result(block.get("content"), &bpath)?;
                    total += words(&text);
                    answered.push(id.to_owned());
                    result_text = Some(text);
                }
                ("tool_use", "assistant") => {
                    let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = block
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if id.is_empty() || name.is_empty() {
                        return Err(format!(
                            "{bpath}: `tool_use` blocks need an `id` and a `name`"
                        ));
                    }
                    if !block.get("input").is_some_and(Value::is_object) {
                        return Err(format!("{bpath}.input: Input should be a valid dictionary"));
                    }
                    calls.push(id.to_owned());
                }
                ("thinking", "assistant") => {
                    let text = block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .ok_or(format!("{bpath}.thinking: Field required"))?;
                    let signature = block
                        .get("signature")
                        .and_then(Value::as_str)
                        .ok_or(format!("{bpath}.signature: Field required"))?;
                    if signature != thinking_signature(text) {
                        return Err(format!("{bpath}: Invalid `signature` in `thinking` block"));
                    }
                }
                ("redacted_thinking", "assistant") => {
                    if !block.get("data").is_some_and(Value::is_string) {
                        return Err(format!("{bpath}.data: Field required"));
                    }
                }
                _ => {
                    return Err(format!(
                        "{bpath}: Input tag '{kind}' found using 'type' does not match any of the expected tags for a `{role}` message"
                    ));
                }
            }
        }
        if role == "user" {
            let missing: Vec<&String> = pending_calls
                .iter()
                .filter(|c| !answered.contains(c))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            pending_calls.clear();
            directive = script::directive(&texts.join("\n"));
            last = match result_text {
                Some(r) if !has_text => Last::ToolResult(r),
                _ => Last::User,
            };
        } else {
            if !pending_calls.is_empty() {
                return Err(format!(
                    "messages.{i}: `tool_use` blocks must be answered by the next user message"
                ));
            }
            let first = blocks
                .first()
                .and_then(|b| b.get("type"))
                .and_then(Value::as_str);
            last_assistant_starts_with_thinking =
                matches!(first, Some("thinking" | "redacted_thinking"));
            last_assistant_index = i;
            pending_calls = calls;
            last = Last::Other;
        }
    }
    if !pending_calls.is_empty() {
        return Err("the last assistant message's `tool_use` blocks have no `tool_result`".into());
    }
    if thinking && matches!(last, Last::ToolResult(_)) && !last_assistant_starts_with_thinking {
        return Err(format!(
            "messages.{last_assistant_index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        ));
    }
    Ok(Checked {
        conv: Conversation {
            last,
            tools,
            no_tools,
            words: total,
            directive,
        },
        model,
        stream,
        thinking,
        cache_marked,
    })
}

fn tool_use_id() -> String {
    format!(
        "toolu_01{}",
        &uuid::Uuid::new_v4().simple().to_string()[..22]
    )
}

fn message_id() -> String {
    format!("msg_01{}", &uuid::Uuid::new_v4().simple().to_string()[..22])
}

/// A whole Messages answer.
pub(crate) fn message_json(
    model: &str,
    checked: &Checked,
    reply: &Reply,
    usage: &ReportedUsage,
) -> Value {
    let mut content = Vec::new();
    if checked.thinking {
        content.push(json!({"type": "thinking", "thinking": THINKING_TEXT,
                            "signature": thinking_signature(THINKING_TEXT)}));
    }
    let stop = match reply {
        Reply::Text(t) => {
            content.push(json!({"type": "text", "text": t}));
            "end_turn"
        }
        Reply::Call { name, arguments } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            content.push(
                json!({"type": "tool_use", "id": tool_use_id(), "name": name, "input": input}),
            );
            "tool_use"
        }
    };
    json!({
        "id": message_id(), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": checked.wire_usage(usage, usage.output),
    })
}

/// The events of a streamed Messages answer (usage split across `message_start` and
/// `message_delta`, as the API does).
pub(crate) fn message_events(
    model: &str,
    checked: &Checked,
    reply: &Reply,
    usage: &ReportedUsage,
) -> Vec<Value> {
    let mut events = vec![
        json!({"type": "message_start", "message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": checked.wire_usage(usage, 1)}}),
        json!({"type": "ping"}),
    ];
    let mut index = 0;
    if checked.thinking {
        events.push(json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "thinking", "thinking": "", "signature": ""}}));
        for piece in text_pieces(THINKING_TEXT) {
            events.push(json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "thinking_delta", "thinking": piece}}));
        }
        events.push(json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "signature_delta", "signature": thinking_signature(THINKING_TEXT)}}));
        events.push(json!({"type": "content_block_stop", "index": 0}));
        index = 1;
    }
    let stop = match reply {
        Reply::Text(text) => {
            events.push(json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}}));
            for piece in text_pieces(text) {
                events.push(json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": piece}}));
            }
            "end_turn"
        }
        Reply::Call { name, arguments } => {
            events.push(json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "tool_use", "id": tool_use_id(), "name": name, "input": {}}}));
            events.push(json!({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": ""}}));
            for piece in argument_pieces(arguments) {
                events.push(json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": piece}}));
            }
            "tool_use"
        }
    };
    events.push(json!({"type": "content_block_stop", "index": index}));
    events.push(json!({"type": "message_delta",
                       "delta": {"stop_reason": stop, "stop_sequence": null},
                       "usage": {"output_tokens": usage.output}}));
    events.push(json!({"type": "message_stop"}));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value) -> Result<Checked, String> {
        check_messages(body.to_string().as_bytes(), Dialect::Api)
    }

    #[test]
    fn tool_loops_and_thinking_are_checked() {
        let call = json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}});
        let thought = json!({"type": "thinking", "thinking": THINKING_TEXT,
                             "signature": thinking_signature(THINKING_TEXT)});
        let body = |assistant: Vec<Value>, thinking: bool| {
            let mut b = json!({"model": "m", "max_tokens": 2000, "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": assistant},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}
            ], "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
            if thinking {
                b["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
            }
            b
        };
        let ok = check(body(vec![thought.clone(), call.clone()], true)).unwrap();
        assert_eq!(ok.conv.last, Last::ToolResult("18C".into()));
        assert!(check(body(vec![call.clone()], false)).is_ok());
        let err = check(body(vec![call.clone()], true)).unwrap_err();
        assert!(err.contains("must start with a thinking block"), "{err}");
        let mut forged = thought.clone();
        forged["signature"] = json!("forged");
        let err = check(body(vec![forged, call.clone()], true)).unwrap_err();
        assert!(err.contains("Invalid `signature`"), "{err}");
        // A result without its call, and a call without its result.
        let err = check(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]}))
        .unwrap_err();
        assert!(err.contains("unexpected `tool_use_id`"), "{err}");
        let err = check(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": [call]},
            {"role": "user", "content": "never mind"}]}))
        .unwrap_err();
        assert!(err.contains("without `tool_result`"), "{err}");
    }

    #[test]
    fn api_versions() {
        assert!(is_api_version("2023-06-01") && is_api_version("2026-10-21"));
        assert!(!is_api_version("2022-12-31") && !is_api_version("latest"));
    }

    #[test]
    fn fields_and_dialects() {
        assert_eq!(
            check(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
                .unwrap_err(),
            "max_tokens: Field required"
        );
        assert!(
            check(json!({"model": "m", "max_tokens": 5, "seed": 1,
                             "messages": [{"role": "user", "content": "x"}]}))
            .unwrap_err()
            .contains("seed: Extra inputs")
        );
        let bedrock = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                             "messages": [{"role": "user", "content": [
                                 {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]});
        let checked = check_messages(bedrock.to_string().as_bytes(), Dialect::Bedrock).unwrap();
        assert!(checked.cache_marked && checked.model.is_none());
        let mut with_model = bedrock.clone();
        with_model["model"] = json!("m");
        assert!(
            check_messages(with_model.to_string().as_bytes(), Dialect::Bedrock)
                .unwrap_err()
                .contains("extraneous key [model]")
        );
        let reply = Reply::Text("hi there".into());
        let usage = checked.usage(&reply);
        let answer = message_json("m", &checked, &reply, &usage);
        let u = &answer["usage"];
        assert_eq!(
            u["input_tokens"].as_u64().unwrap()
                + u["cache_read_input_tokens"].as_u64().unwrap()
                + u["cache_creation_input_tokens"].as_u64().unwrap(),
            usage.input
        );
    }
}
