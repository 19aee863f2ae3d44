//! OpenAI Responses (`POST /responses`), stateless use: `previous_response_id`,
//! `conversation` and item references need OpenAI's stored state, so only a passthrough
//! route to OpenAI can serve them.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    TextOr, bad_body, check_translatable, image_from_url, image_url, json_bytes, json_string,
    new_id, now_unix, parse_body, parse_object, request_bytes, unknown_keys,
};
use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Image, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Untranslatable, Usage,
};
use crate::error::{ApiError, ErrorKind, LlmError, StreamError};
use crate::sse::{SseEvent, SseParser, event_frame};
use crate::stream::{FrameHandler, FramedDecoder, StreamEncoder};

// ---------------------------------------------------------------------------------------
// Wire structs.

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireRequest {
    #[serde(default)]
    model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<TextOr<WireItem>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<WireText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning: Option<WireReasoning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
}

const KNOWN_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "temperature",
    "top_p",
    "max_output_tokens",
    "reasoning",
    "stream",
    "store",
    "metadata",
    "user",
    "top_logprobs",
];

/// Fields that do not change the answer and are dropped when translating.
const IGNORED_FIELDS: &[&str] = &[
    "include",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "stream_options",
];

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireItem {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<TextOr<WirePart>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arguments: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<TextOr<WirePart>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WirePart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireText {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<WireFormat>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireReasoning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    effort: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default = "response_object")]
    object: String,
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: Option<WireResponseError>,
    #[serde(default)]
    incomplete_details: Option<WireIncomplete>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    output: Vec<WireOutputItem>,
    #[serde(default)]
    parallel_tool_calls: bool,
    #[serde(default)]
    tool_choice: Value,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn response_object() -> String {
    "response".to_owned()
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireResponseError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireIncomplete {
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireOutputItem {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<Vec<WireOutputPart>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arguments: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireOutputPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<Vec<Value>>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: WireInputDetails,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    output_tokens_details: WireOutputDetails,
    #[serde(default)]
    total_tokens: u64,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireInputDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireOutputDetails {
    #[serde(default)]
    reasoning_tokens: u64,
}

// ---------------------------------------------------------------------------------------
// Requests.

/// Parses a client's Responses body into the canonical request.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, LlmError> {
    let value = parse_object(body)?;
    let mut untranslatable: Vec<Untranslatable> = unknown_keys(&value, KNOWN_FIELDS)
        .into_iter()
        .filter(|k| !IGNORED_FIELDS.contains(&k.as_str()))
        .map(|k| Untranslatable::new(k, "field has no equivalent outside openai responses"))
        .collect();
    let wire: WireRequest = parse_body(value)?;

    let mut messages: Vec<Message> = Vec::new();
    if let Some(instructions) = wire.instructions.filter(|s| !s.is_empty()) {
        messages.push(Message::text_message(Role::System, instructions));
    }
    match wire.input {
        None => return Err(LlmError::invalid("input", "missing input")),
        Some(TextOr::Text(text)) => messages.push(Message::text_message(Role::User, text)),
        Some(TextOr::List(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                item_to_messages(i, item, &mut messages, &mut untranslatable)?;
            }
        }
    }

    let mut tools = Vec::new();
    for (i, t) in wire.tools.into_iter().enumerate() {
        if t.kind != "function" {
            untranslatable.push(Untranslatable::new(
                format!("tools[{i}]"),
                format!("built-in tool `{}`", t.kind),
            ));
            continue;
        }
        let Some(name) = t.name else {
            return Err(LlmError::invalid(
                format!("tools[{i}].name"),
                "missing name",
            ));
        };
        tools.push(Tool {
            name,
            description: t.description,
            parameters: t.parameters,
            strict: t.strict,
        });
    }
    let tool_choice = match wire.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(LlmError::invalid(
                    "tool_choice",
                    format!("unknown tool_choice `{other}`"),
                ));
            }
        }),
        Some(Value::Object(o)) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
            match (kind, o.get("name").and_then(Value::as_str)) {
                ("function", Some(name)) => Some(ToolChoice::Function(name.to_owned())),
                ("function", None) => {
                    return Err(LlmError::invalid("tool_choice.name", "missing name"));
                }
                (other, _) => {
                    untranslatable.push(Untranslatable::new(
                        "tool_choice",
                        format!("tool_choice type `{other}`"),
                    ));
                    None
                }
            }
        }
        Some(_) => {
            return Err(LlmError::invalid(
                "tool_choice",
                "expected a string or an object",
            ));
        }
    };
    let response_format = match wire.text.and_then(|t| t.format) {
        None => None,
        Some(f) => Some(match f.kind.as_str() {
            "text" => ResponseFormat::Text,
            "json_object" => ResponseFormat::JsonObject,
            "json_schema" => ResponseFormat::JsonSchema {
                name: f.name.unwrap_or_default(),
                description: f.description,
                schema: f
                    .schema
                    .ok_or_else(|| LlmError::invalid("text.format.schema", "missing schema"))?,
                strict: f.strict,
            },
            other => {
                return Err(LlmError::invalid(
                    "text.format.type",
                    format!("unknown format `{other}`"),
                ));
            }
        }),
    };

    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        response_format,
        temperature: wire.temperature,
        top_p: wire.top_p,
        max_tokens: wire.max_output_tokens,
        logprobs: wire.top_logprobs.is_some_and(|n| n > 0),
        reasoning_effort: wire.reasoning.and_then(|r| r.effort),
        stream: wire.stream.unwrap_or(false),
        // Responses streams always end with usage in `response.completed`.
        stream_include_usage: true,
        user: wire.user,
        metadata: wire.metadata.unwrap_or_default(),
        untranslatable,
        ..ChatRequest::default()
    })
}

fn parts_to_content(
    field: &str,
    parts: TextOr<WirePart>,
    role: Role,
    untranslatable: &mut Vec<Untranslatable>,
) -> Result<Vec<ContentPart>, LlmError> {
    let mut content = Vec::new();
    match parts {
        TextOr::Text(t) => content.push(ContentPart::Text(t)),
        TextOr::List(parts) => {
            for (j, p) in parts.into_iter().enumerate() {
                match p.kind.as_str() {
                    "input_text" | "output_text" | "text" => match p.text {
                        Some(t) => content.push(ContentPart::Text(t)),
                        None => {
                            return Err(LlmError::invalid(
                                format!("{field}[{j}].text"),
                                "missing text",
                            ));
                        }
                    },
                    "refusal" => {
                        if let Some(r) = p.refusal {
                            content.push(ContentPart::Text(r));
                        }
                    }
                    "input_image" if role == Role::User => match p.image_url {
                        Some(url) => {
                            content.push(ContentPart::Image(image_from_url(url, p.detail)))
                        }
                        None => untranslatable.push(Untranslatable::new(
                            format!("{field}[{j}]"),
                            "image by file_id (stored file)",
                        )),
                    },
                    other => untranslatable.push(Untranslatable::new(
                        format!("{field}[{j}]"),
                        format!("content type `{other}`"),
                    )),
                }
            }
        }
    }
    Ok(content)
}

fn item_to_messages(
    i: usize,
    item: WireItem,
    messages: &mut Vec<Message>,
    untranslatable: &mut Vec<Untranslatable>,
) -> Result<(), LlmError> {
    let kind = item.kind.clone().unwrap_or_else(|| "message".to_owned());
    match kind.as_str() {
        "message" => {
            let role = match item.role.as_deref() {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                Some("developer") => Role::Developer,
                Some(other) => {
                    return Err(LlmError::invalid(
                        format!("input[{i}].role"),
                        format!("unknown role `{other}`"),
                    ));
                }
                None => {
                    return Err(LlmError::invalid(
                        format!("input[{i}].role"),
                        "missing role",
                    ));
                }
            };
            let Some(content) = item.content else {
                return Err(LlmError::invalid(
                    format!("input[{i}].content"),
                    "missing content",
                ));
            };
            let content = parts_to_content(
                &format!("input[{i}].content"),
                content,
                role,
                untranslatable,
            )?;
            messages.push(Message {
                role,
                content,
                name: None,
            });
        }
        "function_call" => {
            let (Some(call_id), Some(name)) = (item.call_id, item.name) else {
                return Err(LlmError::invalid(
                    format!("input[{i}]"),
                    "function_call items need call_id and name",
                ));
            };
            let call = ContentPart::ToolCall(ToolCall {
                id: call_id,
                name,
                arguments: item.arguments.unwrap_or_default(),
            });
            // Consecutive calls (and a preceding assistant message) form one assistant turn.
            match messages.last_mut() {
                Some(last) if last.role == Role::Assistant => last.content.push(call),
                _ => messages.push(Message {
                    role: Role::Assistant,
                    content: vec![call],
                    name: None,
                }),
            }
        }
        "function_call_output" => {
            let Some(call_id) = item.call_id else {
                return Err(LlmError::invalid(
                    format!("input[{i}].call_id"),
                    "missing call_id",
                ));
            };
            let output = match item.output {
                None => String::new(),
                Some(TextOr::Text(t)) => t,
                Some(list) => {
                    let parts = parts_to_content(
                        &format!("input[{i}].output"),
                        list,
                        Role::Tool,
                        untranslatable,
                    )?;
                    parts
                        .into_iter()
                        .filter_map(|p| match p {
                            ContentPart::Text(t) => Some(t),
                            _ => None,
                        })
                        .collect()
                }
            };
            messages.push(Message {
                role: Role::Tool,
                content: vec![ContentPart::ToolResult(ToolResult {
                    call_id,
                    content: output,
                    is_error: false,
                })],
                name: None,
            });
        }
        // Reasoning items replay opaque model state; other models cannot use it.
        "reasoning" => {}
        other => untranslatable.push(Untranslatable::new(
            format!("input[{i}]"),
            format!("item type `{other}`"),
        )),
    }
    Ok(())
}

/// Renders the canonical request as a stateless Responses body for OpenAI.
pub fn render_request(req: &ChatRequest, provider: &'static str) -> Result<Bytes, LlmError> {
    check_translatable(req, provider)?;
    let refuse = |field: &str, why: &str| Err(LlmError::unsupported(provider, field, why));
    if !req.stop.is_empty() {
        return refuse("stop", "the responses api has no stop sequences");
    }
    if req.seed.is_some() {
        return refuse("seed", "the responses api has no seed");
    }
    if req.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse(
            "presence_penalty",
            "the responses api has no presence penalty",
        );
    }
    if req.frequency_penalty.is_some_and(|p| p != 0.0) {
        return refuse(
            "frequency_penalty",
            "the responses api has no frequency penalty",
        );
    }
    if req.top_k.is_some() {
        return refuse("top_k", "no top-k sampling");
    }
    let mut input = Vec::new();
    for m in &req.messages {
        let role = match m.role {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => {
                for part in &m.content {
                    if let ContentPart::ToolResult(r) = part {
                        input.push(WireItem {
                            kind: Some("function_call_output".into()),
                            call_id: Some(r.call_id.clone()),
                            output: Some(TextOr::Text(r.content.clone())),
                            ..WireItem::default()
                        });
                    }
                }
                continue;
            }
        };
        let text_kind = if m.role == Role::Assistant {
            "output_text"
        } else {
            "input_text"
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for part in &m.content {
            match part {
                ContentPart::Text(t) => parts.push(WirePart {
                    kind: text_kind.into(),
                    text: Some(t.clone()),
                    ..WirePart::default()
                }),
                ContentPart::Image(img) => parts.push(WirePart {
                    kind: "input_image".into(),
                    image_url: Some(image_url(img)),
                    detail: Some(match img {
                        Image::Url {
                            detail: Some(d), ..
                        } => d.clone(),
                        _ => "auto".to_owned(),
                    }),
                    ..WirePart::default()
                }),
                ContentPart::ToolCall(c) => calls.push(WireItem {
                    kind: Some("function_call".into()),
                    call_id: Some(c.id.clone()),
                    name: Some(c.name.clone()),
                    arguments: Some(c.arguments.clone()),
                    ..WireItem::default()
                }),
                ContentPart::ToolResult(_) => {}
            }
        }
        if !parts.is_empty() {
            input.push(WireItem {
                kind: Some("message".into()),
                role: Some(role.into()),
                content: Some(TextOr::List(parts)),
                ..WireItem::default()
            });
        }
        input.extend(calls);
    }
    let tools = req
        .tools
        .iter()
        .map(|t| WireTool {
            kind: "function".into(),
            name: Some(t.name.clone()),
            description: t.description.clone(),
            parameters: Some(
                t.parameters
                    .clone()
                    .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
            ),
            // Responses defaults to strict; chat-style tools are not strict unless asked.
            strict: Some(t.strict.unwrap_or(false)),
        })
        .collect();
    let tool_choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(Value::from("auto")),
        Some(ToolChoice::None) => Some(Value::from("none")),
        Some(ToolChoice::Required) => Some(Value::from("required")),
        Some(ToolChoice::Function(name)) => Some(function_choice(name)),
        Some(ToolChoice::AnyOf(names)) if names.len() == 1 => Some(function_choice(&names[0])),
        Some(ToolChoice::AnyOf(_)) => {
            return refuse("tool_choice", "a choice among several named functions");
        }
    };
    let text = req.response_format.as_ref().map(|f| WireText {
        format: Some(match f {
            ResponseFormat::Text => WireFormat {
                kind: "text".into(),
                ..WireFormat::default()
            },
            ResponseFormat::JsonObject => WireFormat {
                kind: "json_object".into(),
                ..WireFormat::default()
            },
            ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            } => WireFormat {
                kind: "json_schema".into(),
                name: Some(if name.is_empty() {
                    "response".into()
                } else {
                    name.clone()
                }),
                description: description.clone(),
                schema: Some(schema.clone()),
                strict: *strict,
            },
        }),
    });
    request_bytes(&WireRequest {
        model: req.model.clone(),
        input: Some(TextOr::List(input)),
        instructions: None,
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        text,
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_tokens,
        reasoning: req.reasoning_effort.as_ref().map(|e| WireReasoning {
            effort: Some(e.clone()),
        }),
        stream: req.stream.then_some(true),
        store: Some(false),
        metadata: (!req.metadata.is_empty()).then(|| req.metadata.clone()),
        user: req.user.clone(),
        top_logprobs: None,
    })
}

fn function_choice(name: &str) -> Value {
    let mut choice = serde_json::Map::new();
    choice.insert("type".into(), Value::from("function"));
    choice.insert("name".into(), Value::from(name));
    Value::Object(choice)
}

// ---------------------------------------------------------------------------------------
// Responses.

fn usage_from_wire(u: &WireUsage) -> Usage {
    Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: Some(u.input_tokens_details.cached_tokens),
        cache_write_input_tokens: None,
        reasoning_tokens: Some(u.output_tokens_details.reasoning_tokens),
    }
}

fn usage_to_wire(u: &Usage) -> WireUsage {
    WireUsage {
        input_tokens: u.input_tokens,
        input_tokens_details: WireInputDetails {
            cached_tokens: u.cached_input_tokens.unwrap_or(0),
        },
        output_tokens: u.output_tokens,
        output_tokens_details: WireOutputDetails {
            reasoning_tokens: u.reasoning_tokens.unwrap_or(0),
        },
        total_tokens: u.total_tokens(),
    }
}

fn finish_from_wire(wire: &WireResponse, has_tool_calls: bool) -> FinishReason {
    match wire.incomplete_details.as_ref().map(|d| d.reason.as_str()) {
        Some("max_output_tokens") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some(other) if wire.status == "incomplete" => FinishReason::Other(other.to_owned()),
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn chat_from_wire(wire: &WireResponse) -> ChatResponse {
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for item in &wire.output {
        match item.kind.as_str() {
            "message" => {
                for part in item.content.iter().flatten() {
                    if let Some(t) = part.text.as_ref().or(part.refusal.as_ref()) {
                        text.get_or_insert_with(String::new).push_str(t);
                    }
                }
            }
            "function_call" => tool_calls.push(ToolCall {
                id: item.call_id.clone().unwrap_or_else(|| item.id.clone()),
                name: item.name.clone().unwrap_or_default(),
                arguments: item.arguments.clone().unwrap_or_default(),
            }),
            _ => {}
        }
    }
    ChatResponse {
        id: wire.id.clone(),
        model: wire.model.clone(),
        created: wire.created_at,
        finish_reason: finish_from_wire(wire, !tool_calls.is_empty()),
        text,
        tool_calls,
        usage: wire.usage.as_ref().map(usage_from_wire),
    }
}

/// Parses an upstream's 200 Responses body.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ApiError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| bad_body("responses", e))?;
    if wire.status == "failed" {
        let err = wire.error.unwrap_or_default();
        let mut api = ApiError::new(ErrorKind::Upstream, err.message);
        api.code = err.code;
        return Err(api);
    }
    Ok(chat_from_wire(&wire))
}

fn message_item(id: &str, text: &str, status: &str) -> WireOutputItem {
    WireOutputItem {
        kind: "message".into(),
        id: id.to_owned(),
        status: Some(status.into()),
        role: Some("assistant".into()),
        content: Some(vec![WireOutputPart {
            kind: "output_text".into(),
            text: Some(text.to_owned()),
            refusal: None,
            annotations: Some(Vec::new()),
        }]),
        ..WireOutputItem::default()
    }
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> WireOutputItem {
    WireOutputItem {
        kind: "function_call".into(),
        id: id.to_owned(),
        status: Some(status.into()),
        call_id: Some(call.id.clone()),
        name: Some(call.name.clone()),
        arguments: Some(call.arguments.clone()),
        ..WireOutputItem::default()
    }
}

fn response_shell(id: &str, model: &str, created_at: u64) -> WireResponse {
    WireResponse {
        id: id.to_owned(),
        object: response_object(),
        created_at,
        status: "in_progress".into(),
        error: None,
        incomplete_details: None,
        model: model.to_owned(),
        output: Vec::new(),
        parallel_tool_calls: true,
        tool_choice: Value::from("auto"),
        tools: Vec::new(),
        usage: None,
        metadata: BTreeMap::new(),
    }
}

fn set_outcome(wire: &mut WireResponse, reason: &FinishReason) {
    let incomplete = match reason {
        FinishReason::Length => Some("max_output_tokens"),
        FinishReason::ContentFilter => Some("content_filter"),
        _ => None,
    };
    match incomplete {
        Some(reason) => {
            wire.status = "incomplete".into();
            wire.incomplete_details = Some(WireIncomplete {
                reason: reason.into(),
            });
        }
        None => wire.status = "completed".into(),
    }
}

/// Renders a canonical response as a Responses object.
pub fn render_response(resp: &ChatResponse) -> Bytes {
    let id = if resp.id.starts_with("resp_") {
        resp.id.clone()
    } else {
        new_id("resp_")
    };
    let created = if resp.created == 0 {
        now_unix()
    } else {
        resp.created
    };
    let mut wire = response_shell(&id, &resp.model, created);
    if let Some(text) = &resp.text {
        wire.output
            .push(message_item(&new_id("msg_"), text, "completed"));
    }
    for call in &resp.tool_calls {
        wire.output
            .push(call_item(&new_id("fc_"), call, "completed"));
    }
    set_outcome(&mut wire, &resp.finish_reason);
    wire.usage = resp.usage.as_ref().map(usage_to_wire);
    json_bytes(&wire)
}

// ---------------------------------------------------------------------------------------
// Streams.

#[derive(Debug, Default, Deserialize)]
struct WireEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    response: Option<WireResponse>,
    #[serde(default)]
    item: Option<WireOutputItem>,
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
}

/// Decodes an upstream Responses SSE stream.
pub type ResponsesStreamDecoder = FramedDecoder<SseParser, ResponsesEvents>;

/// What a Responses stream's events mean (see [`ResponsesStreamDecoder`]).
#[derive(Debug, Default)]
pub struct ResponsesEvents {
    started: bool,
    finished: bool,
    failed: bool,
    /// function_call item id → canonical tool index.
    tools: HashMap<String, u32>,
}

impl ResponsesEvents {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" || self.failed {
            return Ok(());
        }
        let event: WireEvent = serde_json::from_str(data)
            .map_err(|e| StreamError::Payload(format!("responses event: {e}")))?;
        match event.kind.as_str() {
            "response.created" if !self.started => {
                self.started = true;
                let r = event.response.unwrap_or_default();
                out.push(StreamEvent::Start {
                    id: Some(r.id).filter(|s| !s.is_empty()),
                    model: Some(r.model).filter(|s| !s.is_empty()),
                });
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    out.push(StreamEvent::TextDelta(delta));
                }
            }
            "response.output_item.added" => {
                if let Some(item) = event.item
                    && item.kind == "function_call"
                {
                    let index = self.tools.len() as u32;
                    self.tools.insert(item.id.clone(), index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: item.call_id.unwrap_or_else(|| item.id.clone()),
                        name: item.name.unwrap_or_default(),
                    });
                    if let Some(args) = item.arguments.filter(|a| !a.is_empty()) {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: args,
                        });
                    }
                }
            }
            "response.function_call_arguments.delta" => {
                let item_id = event.item_id.unwrap_or_default();
                let Some(&index) = self.tools.get(&item_id) else {
                    return Err(StreamError::Payload(format!(
                        "arguments for unknown item `{item_id}`"
                    )));
                };
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: delta,
                    });
                }
            }
            "response.completed" | "response.incomplete" => {
                let r = event.response.unwrap_or_default();
                self.finished = true;
                out.push(StreamEvent::Finish(finish_from_wire(
                    &r,
                    !self.tools.is_empty(),
                )));
                if let Some(usage) = &r.usage {
                    out.push(StreamEvent::Usage(usage_from_wire(usage)));
                }
            }
            "response.failed" => {
                let err = event.response.and_then(|r| r.error).unwrap_or_default();
                let mut api = ApiError::new(ErrorKind::Upstream, err.message);
                api.code = err.code;
                out.push(StreamEvent::Error(api));
                self.failed = true;
            }
            "error" => {
                let mut api = ApiError::new(
                    ErrorKind::Upstream,
                    event.message.unwrap_or_else(|| "upstream error".into()),
                );
                api.code = event.code;
                api.param = event.param;
                out.push(StreamEvent::Error(api));
                self.failed = true;
            }
            _ => {}
        }
        Ok(())
    }
}

impl FrameHandler<SseEvent> for ResponsesEvents {
    fn on_frame(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.on_data(&event.data, out)
    }

    fn on_end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if !self.finished && !self.failed {
            return Err(StreamError::Truncated);
        }
        Ok(())
    }
}

#[derive(Debug)]
enum OpenItem {
    Message { id: String, text: String },
    Call { id: String, call: ToolCall },
}

/// Encodes canonical events as the Responses event sequence: `response.created`,
/// `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
/// `response.output_text.delta`…, function-call argument events, the matching `.done`
/// events, and `response.completed` (or `response.incomplete` / `response.failed`), each
/// with an increasing `sequence_number`.
#[derive(Debug)]
pub struct ResponsesStreamEncoder {
    response: WireResponse,
    sequence: u64,
    started: bool,
    done: bool,
    /// Output items in output order; `None` once closed into `response.output`.
    items: Vec<Option<OpenItem>>,
    open_message: Option<usize>,
    calls: HashMap<u32, usize>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ResponsesStreamEncoder {
    /// An encoder reporting `model`.
    pub fn new(model: impl Into<String>) -> ResponsesStreamEncoder {
        let model = model.into();
        ResponsesStreamEncoder {
            response: response_shell(&new_id("resp_"), &model, now_unix()),
            sequence: 0,
            started: false,
            done: false,
            items: Vec::new(),
            open_message: None,
            calls: HashMap::new(),
            finish: None,
            usage: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut fields: serde_json::Map<String, Value>) {
        fields.insert("type".into(), Value::from(kind));
        fields.insert("sequence_number".into(), Value::from(self.sequence));
        self.sequence += 1;
        out.extend_from_slice(&event_frame(kind, &Value::Object(fields).to_string()));
    }

    fn response_value(&self) -> Value {
        serde_json::from_str(&json_string(&self.response)).unwrap_or(Value::Null)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.response_value();
        self.emit(out, "response.created", fields([("response", r.clone())]));
        self.emit(out, "response.in_progress", fields([("response", r)]));
    }

    fn item_value(item: &WireOutputItem) -> Value {
        serde_json::from_str(&json_string(item)).unwrap_or(Value::Null)
    }

    fn open_message(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(index) = self.open_message {
            return index;
        }
        let index = self.items.len();
        let id = new_id("msg_");
        let mut item = message_item(&id, "", "in_progress");
        item.content = Some(Vec::new());
        self.emit(
            out,
            "response.output_item.added",
            fields([
                ("output_index", Value::from(index)),
                ("item", Self::item_value(&item)),
            ]),
        );
        self.emit(
            out,
            "response.content_part.added",
            fields([
                ("item_id", Value::from(id.as_str())),
                ("output_index", Value::from(index)),
                ("content_index", Value::from(0)),
                ("part", text_part("")),
            ]),
        );
        self.items.push(Some(OpenItem::Message {
            id,
            text: String::new(),
        }));
        self.open_message = Some(index);
        index
    }

    fn close_item(&mut self, out: &mut Vec<u8>, index: usize) {
        let Some(item) = self.items.get_mut(index).and_then(Option::take) else {
            return;
        };
        match item {
            OpenItem::Message { id, text } => {
                self.open_message = None;
                self.emit(
                    out,
                    "response.output_text.done",
                    fields([
                        ("item_id", Value::from(id.as_str())),
                        ("output_index", Value::from(index)),
                        ("content_index", Value::from(0)),
                        ("text", Value::from(text.as_str())),
                        ("logprobs", Value::Array(Vec::new())),
                    ]),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    fields([
                        ("item_id", Value::from(id.as_str())),
                        ("output_index", Value::from(index)),
                        ("content_index", Value::from(0)),
                        ("part", text_part(&text)),
                    ]),
                );
                let done = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    fields([
                        ("output_index", Value::from(index)),
                        ("item", Self::item_value(&done)),
                    ]),
                );
                self.response.output.push(done);
            }
            OpenItem::Call { id, call } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    fields([
                        ("item_id", Value::from(id.as_str())),
                        ("output_index", Value::from(index)),
                        ("name", Value::from(call.name.as_str())),
                        ("arguments", Value::from(call.arguments.as_str())),
                    ]),
                );
                let done = call_item(&id, &call, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    fields([
                        ("output_index", Value::from(index)),
                        ("item", Self::item_value(&done)),
                    ]),
                );
                self.response.output.push(done);
            }
        }
    }
}

fn fields<const N: usize>(pairs: [(&str, Value); N]) -> serde_json::Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn text_part(text: &str) -> Value {
    let part = WireOutputPart {
        kind: "output_text".into(),
        text: Some(text.to_owned()),
        refusal: None,
        annotations: Some(Vec::new()),
    };
    serde_json::from_str(&json_string(&part)).unwrap_or(Value::Null)
}

impl StreamEncoder for ResponsesStreamEncoder {
    fn push(&mut self, event: &StreamEvent) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        let mut out = Vec::new();
        match event {
            StreamEvent::Start { model, .. } => {
                if !self.started
                    && self.response.model.is_empty()
                    && let Some(m) = model
                {
                    self.response.model = m.clone();
                }
                self.start(&mut out);
            }
            StreamEvent::TextDelta(delta) => {
                self.start(&mut out);
                let index = self.open_message(&mut out);
                let id = match self.items.get_mut(index) {
                    Some(Some(OpenItem::Message { id, text })) => {
                        text.push_str(delta);
                        id.clone()
                    }
                    _ => return Bytes::from(out),
                };
                self.emit(
                    &mut out,
                    "response.output_text.delta",
                    fields([
                        ("item_id", Value::from(id)),
                        ("output_index", Value::from(index)),
                        ("content_index", Value::from(0)),
                        ("delta", Value::from(delta.as_str())),
                        ("logprobs", Value::Array(Vec::new())),
                    ]),
                );
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(&mut out);
                if let Some(open) = self.open_message {
                    self.close_item(&mut out, open);
                }
                let output_index = self.items.len();
                let item_id = new_id("fc_");
                let call = ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                };
                let added = call_item(&item_id, &call, "in_progress");
                self.emit(
                    &mut out,
                    "response.output_item.added",
                    fields([
                        ("output_index", Value::from(output_index)),
                        ("item", Self::item_value(&added)),
                    ]),
                );
                self.items.push(Some(OpenItem::Call { id: item_id, call }));
                self.calls.insert(*index, output_index);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let Some(&output_index) = self.calls.get(index) else {
                    return Bytes::new();
                };
                let item_id = match self.items.get_mut(output_index) {
                    Some(Some(OpenItem::Call { id, call })) => {
                        call.arguments.push_str(arguments);
                        id.clone()
                    }
                    _ => return Bytes::new(),
                };
                self.emit(
                    &mut out,
                    "response.function_call_arguments.delta",
                    fields([
                        ("item_id", Value::from(item_id)),
                        ("output_index", Value::from(output_index)),
                        ("delta", Value::from(arguments.as_str())),
                    ]),
                );
            }
            StreamEvent::Finish(reason) => self.finish = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error(err) => {
                self.start(&mut out);
                self.done = true;
                self.response.status = "failed".into();
                self.response.error = Some(WireResponseError {
                    code: Some(
                        err.code
                            .clone()
                            .unwrap_or_else(|| err.kind.label().to_owned()),
                    ),
                    message: err.message.clone(),
                });
                let r = self.response_value();
                self.emit(&mut out, "response.failed", fields([("response", r)]));
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
        for index in 0..self.items.len() {
            self.close_item(&mut out, index);
        }
        let reason = self.finish.clone().unwrap_or(FinishReason::Stop);
        set_outcome(&mut self.response, &reason);
        self.response.usage = self.usage.as_ref().map(usage_to_wire);
        let kind = if self.response.status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let r = self.response_value();
        self.emit(&mut out, kind, fields([("response", r)]));
        Bytes::from(out)
    }
}

// ---------------------------------------------------------------------------------------
// Passthrough helpers.

/// The prompt of a Responses request: `input` itself when it is a string, else the text of
/// its last user message item.
pub fn last_user_text(input: &Value) -> Option<String> {
    match input {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|item| {
                super::role(item) == Some("user")
                    && item
                        .get("type")
                        .and_then(Value::as_str)
                        .is_none_or(|t| t == "message")
            })
            .and_then(|item| super::prompt_content_text(item.get("content")?)),
        _ => None,
    }
}

/// Reads usage from a Responses object body without re-encoding it.
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

/// Reads usage from one stream event's data (`response.completed` / `response.incomplete`).
pub fn usage_from_event(data: &str) -> Option<Usage> {
    let event: WireEvent = serde_json::from_str(data).ok()?;
    event.response?.usage.as_ref().map(usage_from_wire)
}

/// Errors use the same shape as Chat Completions.
pub use super::openai_chat::{parse_error, render_error};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::{bedrock, gemini};
    use crate::sse::SseParser;
    use crate::stream::StreamDecoder;
    use crate::stream::{decode_all, encode_all};
    use proptest::prelude::*;
    use serde_json::json;

    const REQUEST: &str = r#"{
        "model": "claude/anthropic.claude-3-haiku",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "weather?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"}
            ]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "w",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": false}],
        "tool_choice": "auto",
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        "max_output_tokens": 200, "temperature": 0.1, "reasoning": {"effort": "low"},
        "stream": true, "store": true, "include": ["reasoning.encrypted_content"], "metadata": {"k": "v"}
    }"#;

    #[test]
    fn parses_a_responses_request() {
        let req = parse_request(REQUEST.as_bytes()).unwrap();
        assert_eq!(req.system_text().as_deref(), Some("be brief"));
        assert_eq!(req.messages.len(), 5);
        assert_eq!(req.messages[2].role, Role::Assistant);
        assert_eq!(req.messages[2].text(), "checking");
        assert_eq!(req.messages[2].tool_calls().count(), 1);
        assert!(
            matches!(&req.messages[3].content[0], ContentPart::ToolResult(r) if r.content == "sunny")
        );
        assert_eq!(req.max_tokens, Some(200));
        assert_eq!(req.reasoning_effort.as_deref(), Some("low"));
        assert!(
            req.stream && req.untranslatable.is_empty(),
            "{:?}",
            req.untranslatable
        );

        let stateful = parse_request(
            br#"{"model": "m", "input": "hi", "previous_response_id": "resp_1",
            "tools": [{"type": "web_search"}]}"#,
        )
        .unwrap();
        assert_eq!(stateful.untranslatable.len(), 2);
        assert!(bedrock::render_request(&stateful, "amazon.nova-pro-v1:0").is_err());

        for (bad, field) in [
            (r#"{"model": "m"}"#, "input"),
            (
                r#"{"input": [{"role": "robot", "content": "x"}]}"#,
                "input[0].role",
            ),
            (
                r#"{"input": [{"type": "function_call", "name": "f"}]}"#,
                "input[0]",
            ),
            (r#"{"input": 5}"#, "input"),
        ] {
            match parse_request(bad.as_bytes()) {
                Err(LlmError::InvalidRequest { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn responses_request_translates_to_converse_and_gemini() {
        let mut req = parse_request(REQUEST.as_bytes()).unwrap();
        assert!(
            bedrock::render_request(&req, "amazon.nova-pro-v1:0").is_err(),
            "reasoning effort is refused"
        );
        req.reasoning_effort = None;
        let v: Value =
            serde_json::from_slice(&bedrock::render_request(&req, "amazon.nova-pro-v1:0").unwrap())
                .unwrap();
        assert_eq!(
            v["messages"][1]["content"][1]["toolUse"]["toolUseId"],
            "call_1"
        );
        assert_eq!(
            v["messages"][2]["content"][0]["toolResult"]["content"][0]["text"],
            "sunny"
        );
        let v: Value =
            serde_json::from_slice(&gemini::render_request(&req, "gemini-2.5-pro").unwrap())
                .unwrap();
        assert_eq!(
            v["contents"][2]["parts"][0]["functionResponse"]["name"],
            "get_weather"
        );
    }

    #[test]
    fn renders_for_an_openai_upstream() {
        let req = parse_request(REQUEST.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&render_request(&req, "openai").unwrap()).unwrap();
        assert_eq!(v["store"], false);
        assert_eq!(v["input"][0]["role"], "system");
        assert_eq!(v["input"][1]["content"][1]["type"], "input_image");
        assert_eq!(v["input"][2]["content"][0]["type"], "output_text");
        assert_eq!(v["input"][3]["type"], "function_call");
        assert_eq!(
            v["input"][4],
            json!({"type": "function_call_output", "call_id": "call_1", "output": "sunny"})
        );
        assert_eq!(v["tools"][0]["strict"], false);
        assert_eq!(v["text"]["format"]["name"], "w");
        assert_eq!(v["reasoning"]["effort"], "low");
        let again = parse_request(&render_request(&req, "openai").unwrap()).unwrap();
        assert_eq!(again.messages, req.messages);

        let mut with_stop = req.clone();
        with_stop.stop = vec!["x".into()];
        assert!(matches!(
            render_request(&with_stop, "openai"),
            Err(LlmError::Unsupported { field, .. }) if field == "stop"
        ));
    }

    const RESPONSE: &str = r#"{
      "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
      "object": "response", "created_at": 1741476777, "status": "completed", "error": null,
      "incomplete_details": null, "model": "gpt-4o-2024-08-06",
      "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "log", "arguments": "{}", "status": "completed"}
      ],
      "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
      "usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 10},
                "output_tokens": 52, "output_tokens_details": {"reasoning_tokens": 7}, "total_tokens": 380}
    }"#;

    #[test]
    fn response_round_trip_and_cross_format() {
        let resp = parse_response(RESPONSE.as_bytes()).unwrap();
        assert_eq!(resp.text.as_deref(), Some("It is sunny."));
        assert_eq!(resp.tool_calls[0].id, "call_9");
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.usage.unwrap().cached_input_tokens, Some(10));
        let again = parse_response(&render_response(&resp)).unwrap();
        assert_eq!(again, resp);
        assert_eq!(usage_from_response(RESPONSE.as_bytes()), resp.usage);

        // A Bedrock answer rendered as a Responses object.
        let converse = br#"{"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}},
            "stopReason": "max_tokens", "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}"#;
        let mut resp = bedrock::parse_response(converse).unwrap();
        resp.model = "anthropic.claude-3-haiku".into();
        let v: Value = serde_json::from_slice(&render_response(&resp)).unwrap();
        assert_eq!(v["object"], "response");
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(
            v["output"][0]["content"][0],
            json!({"type": "output_text", "text": "Hi", "annotations": []})
        );
        assert_eq!(v["usage"]["total_tokens"], 7);

        let failed = br#"{"id": "resp_1", "status": "failed", "error": {"code": "server_error", "message": "boom"}, "output": []}"#;
        assert_eq!(parse_response(failed).unwrap_err().message, "boom");
    }

    fn events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: None,
                model: Some("m".into()),
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 5,
                output_tokens: 6,
                cached_input_tokens: Some(0),
                cache_write_input_tokens: None,
                reasoning_tokens: Some(0),
            }),
        ]
    }

    #[test]
    fn encoder_emits_the_documented_sequence() {
        let bytes = encode_all(&mut ResponsesStreamEncoder::new("m"), &events());
        let mut parser = SseParser::new();
        let mut sse = parser.push(&bytes).unwrap();
        sse.extend(parser.finish().unwrap());
        let kinds: Vec<&str> = sse.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(
            kinds,
            vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in sse.iter().enumerate() {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["sequence_number"], i as u64);
            assert_eq!(v["type"], e.event.as_deref().unwrap());
        }
        let done: Value = serde_json::from_str(&sse[6].data).unwrap();
        assert_eq!(done["text"], "Hello");
        let args: Value = serde_json::from_str(&sse[12].data).unwrap();
        assert_eq!(args["arguments"], "{\"a\":1}");
        assert_eq!(args["output_index"], 1);
        let completed: Value = serde_json::from_str(&sse[14].data).unwrap();
        assert_eq!(completed["response"]["status"], "completed");
        assert_eq!(completed["response"]["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(completed["response"]["usage"]["total_tokens"], 11);
        assert_eq!(usage_from_event(&sse[14].data).unwrap().output_tokens, 6);

        // And our decoder reads it back.
        let decoded = decode_all(&mut ResponsesStreamDecoder::new(), &bytes).unwrap();
        assert_eq!(&decoded[1..], &events()[1..]);
    }

    #[test]
    fn errors_and_truncation_in_streams() {
        let bytes = encode_all(
            &mut ResponsesStreamEncoder::new("m"),
            &[
                StreamEvent::TextDelta("x".into()),
                StreamEvent::Error(ApiError::new(ErrorKind::RateLimited, "slow down")),
            ],
        );
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("event: response.failed"));
        assert!(!text.contains("response.completed"));
        let decoded = decode_all(&mut ResponsesStreamDecoder::new(), &bytes).unwrap();
        assert!(matches!(decoded.last(), Some(StreamEvent::Error(e)) if e.message == "slow down"));

        let full = encode_all(&mut ResponsesStreamEncoder::new("m"), &events());
        let cut = String::from_utf8(full.to_vec()).unwrap();
        let cut = &cut[..cut.find("event: response.completed").unwrap()];
        assert_eq!(
            decode_all(&mut ResponsesStreamDecoder::new(), cut.as_bytes()),
            Err(StreamError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn request_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&body);
        }

        #[test]
        fn request_parser_survives_mutations(i in 0usize..2000, byte in any::<u8>()) {
            let mut body = REQUEST.as_bytes().to_vec();
            let i = i % body.len();
            body[i] = byte;
            let _ = parse_request(&body);
            let _ = parse_request(&body[..i]);
        }

        #[test]
        fn stream_decoder_is_split_invariant(cuts in proptest::collection::vec(0usize..6000, 0..10)) {
            let input = encode_all(&mut ResponsesStreamEncoder::new("m"), &events());
            let whole = decode_all(&mut ResponsesStreamDecoder::new(), &input).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut d = ResponsesStreamDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                got.extend(d.push(&input[start..cut]).unwrap());
                start = cut;
            }
            got.extend(d.push(&input[start..]).unwrap());
            got.extend(d.finish().unwrap());
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn stream_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = ResponsesStreamDecoder::new();
            let _ = d.push(&body);
            let _ = d.finish();
        }
    }

    #[test]
    fn neutral_values_pass_and_changing_values_are_refused() {
        let body = br#"{"model": "m", "input": "hi", "background": false,
            "previous_response_id": null, "conversation": null, "prompt": null}"#;
        let req = parse_request(body).unwrap();
        assert!(req.untranslatable.is_empty(), "{:?}", req.untranslatable);
        assert!(bedrock::render_request(&req, "amazon.nova-pro-v1:0").is_ok());
        for (field, value) in [
            ("background", "true"),
            ("previous_response_id", r#""resp_1""#),
            ("conversation", r#""conv_1""#),
            ("prompt", r#"{"id": "pmpt_1"}"#),
        ] {
            let body = format!(r#"{{"model": "m", "input": "hi", "{field}": {value}}}"#);
            let req = parse_request(body.as_bytes()).unwrap();
            assert_eq!(req.untranslatable.len(), 1, "{body}");
            assert!(
                req.untranslatable[0].to_string().starts_with(field),
                "{body}"
            );
        }
    }
}
