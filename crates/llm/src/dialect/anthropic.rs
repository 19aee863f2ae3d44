//! Anthropic Messages (`POST /v1/messages`), both directions, and the same body on Bedrock
//! (`InvokeModel` / `InvokeModelWithResponseStream`).
//!
//! Mapping notes:
//! - `system` (a string or text blocks) becomes one system message, and so does a `system`
//!   message inside `messages` (Claude Code sends them mid-conversation); a `tool_result` block
//!   becomes a [`Role::Tool`] message placed before the rest of its user turn (Anthropic puts
//!   results first); `tool_use` blocks are tool calls with their `input` as JSON text.
//! - `thinking` and `redacted_thinking` blocks have no canonical form: they survive on the
//!   paths that keep Anthropic's body (an `anthropic` route, Bedrock `InvokeModel`) and are
//!   left out of translations. `output_config.effort` is the reasoning effort; without it,
//!   `thinking: {"type": "enabled", "budget_tokens": N}` becomes one (≤ 2,048 low, ≤ 8,192
//!   medium, above high), and adaptive thinking leaves the choice to the upstream's model
//!   (no effort sent). The other way a reasoning
//!   effort becomes a budget ([`effort_budget`]), and a request that continues a tool loop
//!   whose assistant turn carries no thinking block is sent without thinking (Anthropic
//!   refuses such a turn while thinking is on).
//! - Usage: Anthropic's `input_tokens` excludes cache reads and writes; the canonical count
//!   includes both (`cached_input_tokens` = reads, `cache_write_input_tokens` = writes).
//! - `cache_control` marks, `context_management` and `service_tier` are hints without a
//!   canonical form and are not sent on translated paths; `metadata.user_id` is the
//!   canonical `user`. Documents with a text source become text; PDFs, server tools, MCP
//!   servers and containers can only be served by a route that keeps Anthropic's body.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    TextOr, arguments_value, bad_body, check_translatable, json_bytes, json_string, new_id,
    parse_body, parse_object, request_bytes, status_error, unknown_keys,
};
use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Image, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Untranslatable, Usage,
};
use crate::error::{ApiError, ErrorKind, LlmError, StreamError};
use crate::sse::{SseEvent, SseParser, event_frame};
use crate::stream::{FrameHandler, FramedDecoder, StreamEncoder};

const PROVIDER: &str = "anthropic";

/// The `anthropic-version` sent when the client named none (the API's only stable version).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The `anthropic_version` of a Messages body on Bedrock.
pub const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// `max_tokens` of a translated request whose client set none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---------------------------------------------------------------------------------------
// Wire structs.

const KNOWN_FIELDS: &[&str] = &[
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
    "output_config",
    // Hints without a canonical form, not sent on translated paths.
    "service_tier",
    "context_management",
];

#[derive(Debug, Deserialize)]
struct WireRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<TextOr<Value>>,
    #[serde(default)]
    metadata: Option<WireMetadata>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
    #[serde(default)]
    thinking: Option<WireThinking>,
    #[serde(default)]
    output_config: Option<WireOutputConfig>,
}

/// `output_config`: how much effort the model spends (`low`, `medium`, `high`).
#[derive(Debug, Deserialize)]
struct WireOutputConfig {
    #[serde(default)]
    effort: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: TextOr<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireThinking {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

/// A Messages response.
#[derive(Debug, Deserialize, Serialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(rename = "type", default = "message_type")]
    kind: String,
    #[serde(default = "assistant_role")]
    role: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

fn message_type() -> String {
    "message".to_owned()
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

/// Anthropic's usage: `input_tokens` excludes the cache reads and writes.
#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
struct WireErrorBody {
    #[serde(rename = "type", default = "error_type")]
    kind: String,
    error: WireError,
}

fn error_type() -> String {
    "error".to_owned()
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
    /// The gateway's own machine-readable code (an addition; Anthropic's SDKs ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Requests.

fn str_field<'a>(block: &'a Value, key: &str) -> Option<&'a str> {
    block.get(key).and_then(Value::as_str)
}

/// An image block's `source` as a canonical image.
fn image_source(source: &Value, field: &str) -> Result<Image, LlmError> {
    match str_field(source, "type") {
        Some("base64") => {
            let media_type = str_field(source, "media_type").ok_or_else(|| {
                LlmError::invalid(format!("{field}.source.media_type"), "field required")
            })?;
            let data = str_field(source, "data").ok_or_else(|| {
                LlmError::invalid(format!("{field}.source.data"), "field required")
            })?;
            Ok(Image::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            })
        }
        Some("url") => {
            let url = str_field(source, "url").ok_or_else(|| {
                LlmError::invalid(format!("{field}.source.url"), "field required")
            })?;
            Ok(Image::Url {
                url: url.to_owned(),
                detail: None,
            })
        }
        Some(other) => Err(LlmError::invalid(
            format!("{field}.source.type"),
            format!("unknown image source `{other}`"),
        )),
        None => Err(LlmError::invalid(
            format!("{field}.source.type"),
            "field required",
        )),
    }
}

/// The text of a `tool_result`'s content (a string, or text blocks joined by newlines).
fn tool_result_text(
    content: Option<&Value>,
    field: &str,
    untranslatable: &mut Vec<Untranslatable>,
) -> Result<String, LlmError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (k, block) in blocks.iter().enumerate() {
                match str_field(block, "type") {
                    Some("text") => texts.push(str_field(block, "text").unwrap_or_default()),
                    Some(other) => untranslatable.push(Untranslatable::new(
                        format!("{field}.content[{k}]"),
                        format!("`{other}` block in a tool result"),
                    )),
                    None => {
                        return Err(LlmError::invalid(
                            format!("{field}.content[{k}].type"),
                            "field required",
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(LlmError::invalid(
            format!("{field}.content"),
            "must be a string or an array of blocks",
        )),
    }
}

/// The reasoning effort an Anthropic thinking budget stands for.
fn budget_effort(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

/// The thinking budget a canonical reasoning effort becomes (`None`: no thinking). Anthropic's
/// smallest budget is 1,024 tokens.
pub fn effort_budget(effort: &str) -> Result<Option<u64>, LlmError> {
    Ok(Some(match effort {
        "none" => return Ok(None),
        "minimal" => 1024,
        "low" => 2048,
        "medium" => 8192,
        "high" => 24576,
        "xhigh" => 32000,
        other => {
            return Err(LlmError::unsupported(
                PROVIDER,
                "reasoning_effort",
                format!(
                    "`{other}` has no thinking budget (none, minimal, low, medium, high, xhigh)"
                ),
            ));
        }
    }))
}

/// Parses a client's Messages body.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, LlmError> {
    let value = parse_object(body)?;
    let mut untranslatable: Vec<Untranslatable> = unknown_keys(&value, KNOWN_FIELDS)
        .into_iter()
        .map(|k| Untranslatable::new(k, "field has no equivalent outside anthropic"))
        .collect();
    let wire: WireRequest = parse_body(value)?;
    let Some(max_tokens) = wire.max_tokens else {
        return Err(LlmError::invalid("max_tokens", "field required"));
    };

    let mut messages = Vec::new();
    match wire.system {
        None => {}
        Some(TextOr::Text(text)) if text.is_empty() => {}
        Some(TextOr::Text(text)) => messages.push(Message::text_message(Role::System, text)),
        Some(TextOr::List(blocks)) => {
            let mut texts = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                match str_field(block, "type") {
                    Some("text") => texts.push(str_field(block, "text").unwrap_or_default()),
                    _ => {
                        return Err(LlmError::invalid(
                            format!("system[{i}].type"),
                            "system blocks must be text blocks",
                        ));
                    }
                }
            }
            let text = texts.join("\n");
            if !text.is_empty() {
                messages.push(Message::text_message(Role::System, text));
            }
        }
    }

    for (i, message) in wire.messages.into_iter().enumerate() {
        let role = match message.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(LlmError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{other}` (expected user, assistant or system)"),
                ));
            }
        };
        let blocks = match message.content {
            TextOr::Text(text) => {
                messages.push(Message::text_message(role, text));
                continue;
            }
            TextOr::List(blocks) => blocks,
        };
        let mut parts = Vec::new();
        let mut results = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let field = format!("messages[{i}].content[{j}]");
            let kind = str_field(block, "type")
                .ok_or_else(|| LlmError::invalid(format!("{field}.type"), "field required"))?;
            match (kind, role) {
                (_, Role::System) if kind != "text" => {
                    return Err(LlmError::invalid(
                        format!("{field}.type"),
                        "system messages hold text blocks only",
                    ));
                }
                ("text", _) => {
                    let text = str_field(block, "text").ok_or_else(|| {
                        LlmError::invalid(format!("{field}.text"), "field required")
                    })?;
                    parts.push(ContentPart::Text(text.to_owned()));
                }
                ("image", Role::User) => {
                    let source = block.get("source").ok_or_else(|| {
                        LlmError::invalid(format!("{field}.source"), "field required")
                    })?;
                    parts.push(ContentPart::Image(image_source(source, &field)?));
                }
                ("document", Role::User) => {
                    let source = block.get("source").unwrap_or(&Value::Null);
                    match (str_field(source, "type"), str_field(source, "data")) {
                        (Some("text"), Some(data)) => {
                            parts.push(ContentPart::Text(data.to_owned()));
                        }
                        _ => untranslatable.push(Untranslatable::new(
                            field,
                            "document block (only an anthropic or bedrock route takes it)",
                        )),
                    }
                }
                ("tool_result", Role::User) => {
                    let call_id = str_field(block, "tool_use_id").ok_or_else(|| {
                        LlmError::invalid(format!("{field}.tool_use_id"), "field required")
                    })?;
                    let content =
                        tool_result_text(block.get("content"), &field, &mut untranslatable)?;
                    results.push(ContentPart::ToolResult(ToolResult {
                        call_id: call_id.to_owned(),
                        content,
                        is_error: block.get("is_error").and_then(Value::as_bool) == Some(true),
                    }));
                }
                ("tool_use", Role::Assistant) => {
                    let id = str_field(block, "id").ok_or_else(|| {
                        LlmError::invalid(format!("{field}.id"), "field required")
                    })?;
                    let name = str_field(block, "name").ok_or_else(|| {
                        LlmError::invalid(format!("{field}.name"), "field required")
                    })?;
                    let input = block
                        .get("input")
                        .cloned()
                        .unwrap_or_else(|| Value::Object(Map::new()));
                    parts.push(ContentPart::ToolCall(ToolCall {
                        id: id.to_owned(),
                        name: name.to_owned(),
                        arguments: input.to_string(),
                    }));
                }
                // Thinking is model-specific (signed): it has no canonical form.
                ("thinking" | "redacted_thinking", Role::Assistant) => {}
                ("image" | "document" | "tool_result", Role::Assistant)
                | ("tool_use" | "thinking" | "redacted_thinking", Role::User) => {
                    return Err(LlmError::invalid(
                        format!("{field}.type"),
                        format!("a `{kind}` block cannot be in a `{}` message", message.role),
                    ));
                }
                (other, _) => untranslatable.push(Untranslatable::new(
                    field,
                    format!("`{other}` block (only an anthropic or bedrock route takes it)"),
                )),
            }
        }
        if !results.is_empty() {
            messages.push(Message {
                role: Role::Tool,
                content: results,
                name: None,
            });
        }
        if !parts.is_empty() {
            messages.push(Message {
                role,
                content: parts,
                name: None,
            });
        }
    }

    let mut tools = Vec::new();
    for (i, tool) in wire.tools.unwrap_or_default().into_iter().enumerate() {
        let field = format!("tools[{i}]");
        let kind = str_field(&tool, "type");
        if !matches!(kind, None | Some("custom")) {
            untranslatable.push(Untranslatable::new(
                field,
                format!("server tool `{}`", kind.unwrap_or_default()),
            ));
            continue;
        }
        let name = str_field(&tool, "name")
            .ok_or_else(|| LlmError::invalid(format!("{field}.name"), "field required"))?;
        let schema = tool
            .get("input_schema")
            .cloned()
            .ok_or_else(|| LlmError::invalid(format!("{field}.input_schema"), "field required"))?;
        tools.push(Tool {
            name: name.to_owned(),
            description: str_field(&tool, "description").map(str::to_owned),
            parameters: Some(schema),
            strict: tool.get("strict").and_then(Value::as_bool),
        });
    }

    let mut parallel_tool_calls = None;
    let tool_choice = match wire.tool_choice {
        None => None,
        Some(choice) => {
            if choice.disable_parallel_tool_use == Some(true) {
                parallel_tool_calls = Some(false);
            }
            Some(match choice.kind.as_str() {
                "auto" => ToolChoice::Auto,
                "any" => ToolChoice::Required,
                "none" => ToolChoice::None,
                "tool" => ToolChoice::Function(choice.name.ok_or_else(|| {
                    LlmError::invalid("tool_choice.name", "field required for type `tool`")
                })?),
                other => {
                    return Err(LlmError::invalid(
                        "tool_choice.type",
                        format!("unknown tool choice `{other}` (auto, any, tool, none)"),
                    ));
                }
            })
        }
    };

    let thinking_effort = match wire.thinking {
        None => None,
        Some(t) => match t.kind.as_str() {
            "enabled" => {
                let budget = t
                    .budget_tokens
                    .ok_or_else(|| LlmError::invalid("thinking.budget_tokens", "field required"))?;
                Some(budget_effort(budget).to_owned())
            }
            "disabled" | "adaptive" => None,
            other => {
                return Err(LlmError::invalid(
                    "thinking.type",
                    format!("unknown thinking type `{other}` (enabled, adaptive, disabled)"),
                ));
            }
        },
    };
    let mut reasoning_effort = thinking_effort;
    if let Some(config) = wire.output_config {
        if let Some(effort) = config.effort {
            reasoning_effort = Some(effort);
        }
        for key in config.other.keys() {
            untranslatable.push(Untranslatable::new(
                format!("output_config.{key}"),
                "output setting without an equivalent outside anthropic",
            ));
        }
    }

    Ok(ChatRequest {
        model: wire.model.unwrap_or_default(),
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        temperature: wire.temperature,
        top_p: wire.top_p,
        top_k: wire.top_k,
        max_tokens: Some(max_tokens),
        stop: wire.stop_sequences.unwrap_or_default(),
        reasoning_effort,
        stream: wire.stream.unwrap_or(false),
        user: wire.metadata.and_then(|m| m.user_id),
        untranslatable,
        ..ChatRequest::default()
    })
}

fn image_block(image: &Image) -> Value {
    match image {
        Image::Base64 { media_type, data } => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }),
        Image::Url { url, .. } => json!({
            "type": "image",
            "source": {"type": "url", "url": url},
        }),
    }
}

/// Whether the conversation ends inside a tool loop whose last assistant turn carries no
/// thinking block (always so for a translated request: thinking has no canonical form).
fn continues_tool_loop(req: &ChatRequest) -> bool {
    let last = req.messages.iter().rev().find(|m| !m.role.is_system());
    matches!(last, Some(m) if m.role == Role::Tool)
}

/// Renders a canonical request as a Messages body for `model`.
pub fn render_request(req: &ChatRequest, model: &str) -> Result<Bytes, LlmError> {
    check_translatable(req, PROVIDER)?;
    if req.seed.is_some() {
        return Err(LlmError::unsupported(
            PROVIDER,
            "seed",
            "anthropic has no sampling seed",
        ));
    }
    if req.presence_penalty.is_some() {
        return Err(LlmError::unsupported(
            PROVIDER,
            "presence_penalty",
            "anthropic has no presence penalty",
        ));
    }
    if req.frequency_penalty.is_some() {
        return Err(LlmError::unsupported(
            PROVIDER,
            "frequency_penalty",
            "anthropic has no frequency penalty",
        ));
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(_) => {
            return Err(LlmError::unsupported(
                PROVIDER,
                "response_format",
                "anthropic has no json output mode; describe the format in the prompt or use a tool",
            ));
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), Value::from(model));

    let budget = match req.reasoning_effort.as_deref() {
        Some(effort) if !continues_tool_loop(req) => effort_budget(effort)?,
        Some(effort) => {
            // Validate the value even when thinking is left out for this turn.
            effort_budget(effort)?;
            None
        }
        None => None,
    };
    let max_tokens = match (req.max_tokens, budget) {
        (Some(max), Some(budget)) if max <= budget => {
            return Err(LlmError::unsupported(
                PROVIDER,
                "reasoning_effort",
                format!(
                    "a thinking budget of {budget} tokens needs a max_tokens above it (got {max})"
                ),
            ));
        }
        (Some(max), _) => max,
        (None, Some(budget)) => budget + DEFAULT_MAX_TOKENS,
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    body.insert("max_tokens".into(), Value::from(max_tokens));
    if let Some(system) = req.system_text() {
        body.insert("system".into(), Value::from(system));
    }

    // Anthropic alternates user and assistant turns; tool results open a user turn.
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in req.messages.iter().enumerate() {
        let role = match message.role {
            Role::System | Role::Developer => continue,
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        let mut blocks = Vec::new();
        for (j, part) in message.content.iter().enumerate() {
            match part {
                ContentPart::Text(text) => {
                    if !text.is_empty() {
                        blocks.push(json!({"type": "text", "text": text}));
                    }
                }
                ContentPart::Image(image) => blocks.push(image_block(image)),
                ContentPart::ToolCall(call) => {
                    let input = arguments_value(&call.arguments, || {
                        format!("messages[{i}].tool_calls[{j}].function.arguments")
                    })?;
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": input,
                    }));
                }
                ContentPart::ToolResult(result) => {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": result.call_id,
                        "content": result.content,
                    });
                    if result.is_error {
                        block["is_error"] = Value::Bool(true);
                    }
                    blocks.push(block);
                }
            }
        }
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));

    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({
                    "name": t.name,
                    "input_schema": t.parameters.clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &t.description {
                    tool["description"] = Value::from(d.as_str());
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let disable_parallel = (req.parallel_tool_calls == Some(false)).then_some(true);
    let choice = match &req.tool_choice {
        None if disable_parallel.is_some() && !req.tools.is_empty() => Some(WireToolChoice {
            kind: "auto".into(),
            name: None,
            disable_parallel_tool_use: disable_parallel,
        }),
        None => None,
        Some(ToolChoice::Auto) => Some(WireToolChoice {
            kind: "auto".into(),
            name: None,
            disable_parallel_tool_use: disable_parallel,
        }),
        Some(ToolChoice::None) => Some(WireToolChoice {
            kind: "none".into(),
            name: None,
            disable_parallel_tool_use: None,
        }),
        Some(ToolChoice::Required) => Some(WireToolChoice {
            kind: "any".into(),
            name: None,
            disable_parallel_tool_use: disable_parallel,
        }),
        Some(ToolChoice::Function(name)) => Some(WireToolChoice {
            kind: "tool".into(),
            name: Some(name.clone()),
            disable_parallel_tool_use: disable_parallel,
        }),
        Some(ToolChoice::AnyOf(names)) => {
            return Err(LlmError::unsupported(
                PROVIDER,
                "tool_choice",
                format!(
                    "anthropic cannot restrict calls to a subset of tools ({})",
                    names.join(", ")
                ),
            ));
        }
    };
    if let Some(choice) = choice {
        body.insert(
            "tool_choice".into(),
            serde_json::to_value(choice).map_err(|e| LlmError::Internal(e.to_string()))?,
        );
    }
    if let Some(budget) = budget {
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), Value::from(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), Value::from(p));
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), Value::from(k));
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), Value::from(req.stop.clone()));
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    request_bytes(&Value::Object(body))
}

// ---------------------------------------------------------------------------------------
// Responses.

fn finish_from_wire(reason: Option<&str>) -> FinishReason {
    match reason {
        None | Some("end_turn" | "stop_sequence") => FinishReason::Stop,
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        Some(other) => FinishReason::Other(other.to_owned()),
    }
}

fn finish_to_wire(reason: &FinishReason) -> &str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
        FinishReason::Other(other) => match other.as_str() {
            "pause_turn" | "stop_sequence" | "model_context_window_exceeded" => other,
            _ => "end_turn",
        },
    }
}

fn usage_from_wire(u: &WireUsage) -> Usage {
    let reads = u.cache_read_input_tokens.unwrap_or(0);
    let writes = u.cache_creation_input_tokens.unwrap_or(0);
    Usage {
        input_tokens: u
            .input_tokens
            .unwrap_or(0)
            .saturating_add(reads)
            .saturating_add(writes),
        output_tokens: u.output_tokens.unwrap_or(0),
        cached_input_tokens: u.cache_read_input_tokens,
        cache_write_input_tokens: u.cache_creation_input_tokens,
        reasoning_tokens: None,
    }
}

fn usage_to_wire(u: &Usage) -> WireUsage {
    let reads = u.cached_input_tokens.unwrap_or(0);
    let writes = u.cache_write_input_tokens.unwrap_or(0);
    WireUsage {
        input_tokens: Some(u.input_tokens.saturating_sub(reads).saturating_sub(writes)),
        output_tokens: Some(u.output_tokens),
        cache_creation_input_tokens: Some(writes),
        cache_read_input_tokens: Some(reads),
    }
}

/// Parses a Messages response.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ApiError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| bad_body(PROVIDER, e))?;
    if wire.kind == "error" {
        return Err(parse_error(StatusCode::BAD_GATEWAY, body));
    }
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &wire.content {
        match str_field(block, "type") {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(str_field(block, "text").unwrap_or_default()),
            Some("tool_use") => tool_calls.push(ToolCall {
                id: str_field(block, "id").unwrap_or_default().to_owned(),
                name: str_field(block, "name").unwrap_or_default().to_owned(),
                arguments: block
                    .get("input")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new()))
                    .to_string(),
            }),
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: super::now_unix(),
        text,
        tool_calls,
        finish_reason: finish_from_wire(wire.stop_reason.as_deref()),
        usage: wire.usage.as_ref().map(usage_from_wire),
    })
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        new_id("msg_")
    }
}

/// Renders a canonical answer as a Messages response.
pub fn render_response(resp: &ChatResponse) -> Bytes {
    let mut content = Vec::new();
    if let Some(text) = resp.text.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &resp.tool_calls {
        let input = serde_json::from_str::<Value>(&call.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new()));
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    json_bytes(&WireResponse {
        id: message_id(&resp.id),
        kind: message_type(),
        role: assistant_role(),
        model: resp.model.clone(),
        content,
        stop_reason: Some(finish_to_wire(&resp.finish_reason).to_owned()),
        stop_sequence: None,
        usage: Some(usage_to_wire(&resp.usage.unwrap_or_default())),
    })
}

fn error_from_wire(status: StatusCode, e: WireError) -> ApiError {
    let kind = ErrorKind::from_anthropic_type(&e.kind).unwrap_or(ErrorKind::from_status(status));
    let mut err = ApiError::with_status(status, kind, e.message);
    if !e.kind.is_empty() {
        err = err.code(e.kind);
    }
    err
}

/// Parses an error body (`{"type": "error", "error": {"type", "message"}}`).
pub fn parse_error(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<WireErrorBody>(body) {
        Ok(b) => error_from_wire(status, b.error),
        Err(_) => status_error(status, body),
    }
}

/// Renders an error as `{"type": "error", "error": {"type", "message"}}` (with the gateway's
/// `code`, when it has one, beside them).
pub fn render_error(err: &ApiError) -> Bytes {
    let code = err
        .code
        .clone()
        .filter(|c| ErrorKind::from_anthropic_type(c).is_none());
    json_bytes(&WireErrorBody {
        kind: error_type(),
        error: WireError {
            kind: err.kind.anthropic_type().to_owned(),
            message: err.message.clone(),
            code,
        },
    })
}

/// The error an upstream's error event carries.
fn error_event(data: &Value) -> ApiError {
    let wire: WireError = data
        .get("error")
        .cloned()
        .and_then(|e| serde_json::from_value(e).ok())
        .unwrap_or_default();
    let kind = ErrorKind::from_anthropic_type(&wire.kind).unwrap_or(ErrorKind::Upstream);
    let status = match kind {
        // Anthropic's own status for an overloaded API.
        ErrorKind::Unavailable => StatusCode::from_u16(529).unwrap_or(StatusCode::BAD_GATEWAY),
        other => other.default_status(),
    };
    error_from_wire(status, wire)
}

// ---------------------------------------------------------------------------------------
// Streams.

/// Usage of a stream, as far as it went: `message_start` carries the input side, and each
/// `message_delta` the cumulative output (and, on newer API versions, the input side again).
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamUsage {
    wire: Option<WireUsage>,
}

impl StreamUsage {
    fn merge(&mut self, u: WireUsage) {
        let wire = self.wire.get_or_insert_with(WireUsage::default);
        if u.input_tokens.is_some() {
            wire.input_tokens = u.input_tokens;
        }
        if u.output_tokens.is_some() {
            wire.output_tokens = u.output_tokens;
        }
        if u.cache_creation_input_tokens.is_some() {
            wire.cache_creation_input_tokens = u.cache_creation_input_tokens;
        }
        if u.cache_read_input_tokens.is_some() {
            wire.cache_read_input_tokens = u.cache_read_input_tokens;
        }
    }

    /// Reads the usage of one stream event's parsed data (`message_start`, `message_delta`).
    fn read(&mut self, event: &Value) {
        let usage = match str_field(event, "type") {
            Some("message_start") => event.get("message").and_then(|m| m.get("usage")),
            Some("message_delta") => event.get("usage"),
            _ => None,
        };
        if let Some(u) = usage.and_then(|u| serde_json::from_value::<WireUsage>(u.clone()).ok()) {
            self.merge(u);
        }
    }

    /// Reads the usage of one event's data, without keeping anything else.
    pub fn read_data(&mut self, data: &str) {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            message: Option<MessageProbe>,
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        #[derive(Deserialize)]
        struct MessageProbe {
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        let Ok(probe) = serde_json::from_str::<Probe>(data) else {
            return;
        };
        let usage = match probe.kind.as_str() {
            "message_start" => probe.message.and_then(|m| m.usage),
            "message_delta" => probe.usage,
            _ => None,
        };
        if let Some(u) = usage {
            self.merge(u);
        }
    }

    /// The combined usage, once any was seen.
    pub fn usage(&self) -> Option<Usage> {
        self.wire.as_ref().map(usage_from_wire)
    }
}

/// Decodes a Messages SSE stream.
pub type AnthropicStreamDecoder = FramedDecoder<SseParser, AnthropicEvents>;

/// What a Messages stream's events mean (see [`AnthropicStreamDecoder`]).
#[derive(Debug, Default)]
pub struct AnthropicEvents {
    started: bool,
    finished: bool,
    stopped: bool,
    failed: bool,
    /// Content block index → tool-call index.
    tool_blocks: BTreeMap<u64, u32>,
    tools: u32,
    usage: StreamUsage,
}

impl AnthropicEvents {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let data = data.trim();
        if data.is_empty() || self.failed || self.stopped {
            return Ok(());
        }
        let event: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Payload(format!("anthropic event is not json: {e}")))?;
        let kind = str_field(&event, "type").unwrap_or_default();
        self.usage.read(&event);
        match kind {
            "message_start" if !self.started => {
                self.started = true;
                let message = event.get("message");
                out.push(StreamEvent::Start {
                    id: message.and_then(|m| str_field(m, "id")).map(str::to_owned),
                    model: message
                        .and_then(|m| str_field(m, "model"))
                        .map(str::to_owned),
                });
            }
            "content_block_start" => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = event.get("content_block").unwrap_or(&Value::Null);
                match str_field(block, "type") {
                    Some("text") => {
                        if let Some(text) = str_field(block, "text").filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::TextDelta(text.to_owned()));
                        }
                    }
                    Some("tool_use") => {
                        let tool = self.tools;
                        self.tools += 1;
                        self.tool_blocks.insert(index, tool);
                        out.push(StreamEvent::ToolCallStart {
                            index: tool,
                            id: str_field(block, "id").unwrap_or_default().to_owned(),
                            name: str_field(block, "name").unwrap_or_default().to_owned(),
                        });
                        // A start may carry whole input (never `{}` that deltas then fill).
                        if let Some(input) = block
                            .get("input")
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                        {
                            out.push(StreamEvent::ToolCallDelta {
                                index: tool,
                                arguments: input.to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = event.get("delta").unwrap_or(&Value::Null);
                match str_field(delta, "type") {
                    Some("text_delta") => {
                        if let Some(text) = str_field(delta, "text").filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::TextDelta(text.to_owned()));
                        }
                    }
                    Some("input_json_delta") => {
                        if let (Some(tool), Some(json)) = (
                            self.tool_blocks.get(&index),
                            str_field(delta, "partial_json").filter(|j| !j.is_empty()),
                        ) {
                            out.push(StreamEvent::ToolCallDelta {
                                index: *tool,
                                arguments: json.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = event.get("delta").and_then(|d| str_field(d, "stop_reason"))
                    && !self.finished
                {
                    self.finished = true;
                    out.push(StreamEvent::Finish(finish_from_wire(Some(reason))));
                }
            }
            "message_stop" => {
                self.stopped = true;
                if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish(FinishReason::Stop));
                }
                if let Some(usage) = self.usage.usage() {
                    out.push(StreamEvent::Usage(usage));
                }
            }
            "error" => {
                self.failed = true;
                out.push(StreamEvent::Error(error_event(&event)));
            }
            // ping, content_block_stop and events of later API versions.
            _ => {}
        }
        Ok(())
    }
}

impl FrameHandler<SseEvent> for AnthropicEvents {
    fn on_frame(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.on_data(&event.data, out)
    }

    fn halted(&self) -> bool {
        self.failed || self.stopped
    }

    fn on_end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if self.failed || self.stopped {
            return Ok(());
        }
        Err(StreamError::Truncated)
    }
}

/// The open content block of an encoded stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Tool(u32),
}

/// Encodes canonical events as a Messages stream: `message_start` and a `ping`, one content
/// block per text run or tool call (`content_block_start`/`_delta`/`_stop`), then
/// `message_delta` (stop reason and the whole usage) and `message_stop`.
#[derive(Debug)]
pub struct AnthropicStreamEncoder {
    model: String,
    id: String,
    started: bool,
    done: bool,
    open: Open,
    next_block: u64,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

fn sse(event: &Value) -> Bytes {
    event_frame(
        str_field(event, "type").unwrap_or("message"),
        &json_string(event),
    )
}

impl AnthropicStreamEncoder {
    /// An encoder reporting `model`.
    pub fn new(model: impl Into<String>) -> AnthropicStreamEncoder {
        AnthropicStreamEncoder {
            model: model.into(),
            id: new_id("msg_"),
            started: false,
            done: false,
            open: Open::None,
            next_block: 0,
            finish: None,
            usage: None,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        out.extend_from_slice(&sse(&json!({
            "type": "message_start",
            "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            },
        })));
        out.extend_from_slice(&sse(&json!({"type": "ping"})));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            out.extend_from_slice(&sse(
                &json!({"type": "content_block_stop", "index": self.next_block - 1}),
            ));
            self.open = Open::None;
        }
    }

    fn open(&mut self, open: Open, block: Value, out: &mut Vec<u8>) {
        self.close(out);
        out.extend_from_slice(&sse(&json!({
            "type": "content_block_start", "index": self.next_block, "content_block": block,
        })));
        self.next_block += 1;
        self.open = open;
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        out.extend_from_slice(&sse(&json!({
            "type": "content_block_delta", "index": self.next_block - 1, "delta": delta,
        })));
    }
}

impl StreamEncoder for AnthropicStreamEncoder {
    fn push(&mut self, event: &StreamEvent) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        let mut out = Vec::new();
        match event {
            StreamEvent::Start { id, model } => {
                if self.model.is_empty()
                    && let Some(m) = model
                {
                    self.model = m.clone();
                }
                if let Some(id) = id.as_deref().filter(|i| i.starts_with("msg_")) {
                    self.id = id.to_owned();
                }
                self.start(&mut out);
            }
            StreamEvent::TextDelta(text) => {
                self.start(&mut out);
                if self.open != Open::Text {
                    self.open(Open::Text, json!({"type": "text", "text": ""}), &mut out);
                }
                self.delta(json!({"type": "text_delta", "text": text}), &mut out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(&mut out);
                self.open(
                    Open::Tool(*index),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    &mut out,
                );
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                // Upstreams stream one call after the other; a delta for a call whose block
                // is closed cannot be placed and is reported.
                if self.open == Open::Tool(*index) {
                    self.delta(
                        json!({"type": "input_json_delta", "partial_json": arguments}),
                        &mut out,
                    );
                } else {
                    tracing::warn!(index, "tool-call arguments for a closed block dropped");
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error(err) => {
                self.done = true;
                out.extend_from_slice(&stream_error_frame(err));
            }
        }
        Bytes::from(out)
    }

    fn finish(&mut self) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        self.done = true;
        let mut out = Vec::new();
        self.start(&mut out);
        self.close(&mut out);
        let reason = finish_to_wire(self.finish.as_ref().unwrap_or(&FinishReason::Stop));
        let usage = usage_to_wire(&self.usage.unwrap_or_default());
        out.extend_from_slice(&sse(&json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": null},
            "usage": usage,
        })));
        out.extend_from_slice(&sse(&json!({"type": "message_stop"})));
        Bytes::from(out)
    }
}

/// An `error` event, as Anthropic ends a stream that failed.
pub fn stream_error_frame(err: &ApiError) -> Bytes {
    event_frame("error", &String::from_utf8_lossy(&render_error(err)))
}

// ---------------------------------------------------------------------------------------
// Passthrough helpers.

/// The prompt of a Messages request: the text of the last user message that has any (a user
/// turn holding only tool results is the tool's answer, not the user's), text blocks joined
/// with newlines.
pub fn last_user_text(messages: &Value) -> Option<String> {
    messages
        .as_array()?
        .iter()
        .rev()
        .filter(|m| super::role(m) == Some("user"))
        .find_map(|m| super::prompt_content_text(m.get("content")?))
}

/// Reads usage from a Messages body (for the passthrough path).
pub fn usage_from_response(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct U {
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<U>(body)
        .ok()?
        .usage
        .as_ref()
        .map(usage_from_wire)
}

// ---------------------------------------------------------------------------------------
// Bedrock InvokeModel.

/// A client's Messages body as Bedrock's `InvokeModel` takes it: `model` and `stream` left
/// out (the URL says both), `metadata` left out (Bedrock refuses it), `anthropic_version`
/// set, and the client's `anthropic-beta` flags as `anthropic_beta`; everything else
/// (`cache_control`, thinking blocks and their signatures…) byte for byte.
pub fn bedrock_invoke_body(
    scanned: &crate::envelope::Scanned,
    body: &[u8],
    beta: Option<&str>,
) -> Result<Bytes, LlmError> {
    let mut add = vec![(
        "anthropic_version",
        Value::from(BEDROCK_ANTHROPIC_VERSION).to_string(),
    )];
    if let Some(beta) = beta {
        let flags: Vec<&str> = beta
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        if !flags.is_empty() && scanned.raw(body, "anthropic_beta").is_none() {
            add.push(("anthropic_beta", Value::from(flags).to_string()));
        }
    }
    scanned.write_edited(
        body,
        &["model", "stream", "metadata", "anthropic_version"],
        &add,
    )
}

/// One `InvokeModelWithResponseStream` message as the Messages SSE event it carries: a
/// `chunk` holds `{"bytes": "<base64 of the event's JSON>"}`; an exception is an error.
/// `Ok(None)` for messages that carry no event.
pub fn bedrock_chunk_event(
    message: &crate::eventstream::Message,
) -> Result<Option<Bytes>, ApiError> {
    use base64::Engine;
    match message.header_str(":message-type").unwrap_or("event") {
        "exception" => {
            let kind = message
                .header_str(":exception-type")
                .unwrap_or("internalServerException");
            return Err(super::bedrock::exception_error(kind, &message.payload));
        }
        "error" => {
            let code = message.header_str(":error-code").unwrap_or("error");
            let text = message.header_str(":error-message").unwrap_or(code);
            return Err(ApiError::new(ErrorKind::Upstream, text).code(code));
        }
        _ => {}
    }
    if message.header_str(":event-type") != Some("chunk") {
        return Ok(None);
    }
    let payload: Value = serde_json::from_slice(&message.payload)
        .map_err(|e| bad_body("bedrock invoke stream", e))?;
    let Some(encoded) = str_field(&payload, "bytes") else {
        return Err(bad_body("bedrock invoke stream", "a chunk without bytes"));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad_body("bedrock invoke stream", e))?;
    let event: Value =
        serde_json::from_slice(&decoded).map_err(|e| bad_body("bedrock invoke stream", e))?;
    let mut event = event;
    // Bedrock adds its own metrics to the last event; the client's API has no such field.
    if let Some(map) = event.as_object_mut() {
        map.remove("amazon-bedrock-invocationMetrics");
    }
    Ok(Some(sse(&event)))
}

#[cfg(test)]
mod tests;
