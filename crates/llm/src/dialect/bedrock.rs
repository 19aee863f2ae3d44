//! AWS Bedrock Converse (`POST /model/{modelId}/converse`) and ConverseStream
//! (`/converse-stream`, AWS event-stream frames).
//!
//! Mapping notes: system and developer messages become the top-level `system` blocks (in
//! order, wherever they stood); tool results become `toolResult` blocks in a user message and
//! consecutive messages of one role are merged, since Converse wants alternating roles; images
//! must be inline (png, jpeg, gif, webp); `json_schema` output uses `outputConfig.textFormat`.
//! `top_k` goes to Anthropic Claude models as `additionalModelRequestFields.top_k` (their
//! native parameter); other models have no portable one.
//! Refused with [`LlmError::Unsupported`]: `seed`, `top_k` for non-Claude models, non-zero penalties,
//! `reasoning_effort` (other than `none`), `json_object` mode together with tools, image URLs,
//! `tool_choice: none` with tool calls in the history. `json_object` mode alone is a forced
//! tool ([`JSON_TOOL`]) whose input comes back as the answer's text, streamed or not. `user` is not sent. Converse cannot be told to call one
//! tool at a time, so `parallel_tool_calls: false` is honoured on the way back (the client gets
//! the first call only: [`crate::stream::FirstToolCallOnly`]).
//!
//! Besides what the provider adapter needs (render requests, parse responses, errors and
//! streams), the reverse directions are here too so mock servers can validate requests
//! ([`parse_request`]) and answer like Bedrock ([`render_response`], [`ConverseStreamEncoder`],
//! [`crate::eventstream::encode_exception`]).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    arguments_value, bad_body, body_snippet, check_translatable, json_bytes, json_string, new_id,
    now_unix, parse_body, parse_object, request_bytes,
};
use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Image, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Untranslatable, Usage,
};
use crate::error::{ApiError, ErrorKind, LlmError, StreamError};
use crate::eventstream::{FrameDecoder, encode_event, encode_exception};
use crate::stream::{FrameHandler, FramedDecoder, StreamEncoder};

const PROVIDER: &str = "bedrock";

// ---------------------------------------------------------------------------------------
// Wire structs.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    messages: Vec<WireMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    system: Vec<WireSystemBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inference_config: Option<WireInferenceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_config: Option<WireToolConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output_config: Option<WireOutputConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    additional_model_request_fields: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireSystemBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireInferenceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireToolConfig {
    tools: Vec<WireTool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_spec: Option<WireToolSpec>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireToolSpec {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: WireInputSchema,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireInputSchema {
    json: Value,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireToolChoice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool: Option<WireToolName>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireToolName {
    name: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOutputConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_format: Option<WireTextFormat>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireTextFormat {
    #[serde(rename = "type")]
    kind: String,
    structure: WireStructure,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireStructure {
    json_schema: WireJsonSchema,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireJsonSchema {
    /// The JSON Schema as a JSON string.
    schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireMessage {
    role: String,
    content: Vec<WireBlock>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<WireImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_use: Option<WireToolUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_result: Option<WireToolResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_point: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    document: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireImage {
    format: String,
    source: WireImageSource,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireImageSource {
    /// Base64 of the image bytes (blobs are base64 in Bedrock's JSON protocol).
    bytes: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireToolResult {
    tool_use_id: String,
    content: Vec<WireToolResultContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireToolResultContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    json: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    output: WireOutput,
    #[serde(default)]
    stop_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<WireMessage>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_write_input_tokens: Option<u64>,
}

// Stream event payloads.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireBlockStart {
    content_block_index: u32,
    start: WireStart,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireStart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_use: Option<WireStartToolUse>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireStartToolUse {
    tool_use_id: String,
    name: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireBlockDelta {
    content_block_index: u32,
    delta: WireDelta,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_use: Option<WireDeltaToolUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireDeltaToolUse {
    #[serde(default)]
    input: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireBlockStop {
    content_block_index: u32,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireMessageStop {
    stop_reason: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireErrorBody {
    #[serde(default, alias = "Message")]
    message: String,
}

// ---------------------------------------------------------------------------------------
// Requests.

fn image_format(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => return None,
    })
}

/// The tool JSON mode is emulated with (its input is the answer; see [`render_request`]).
pub const JSON_TOOL: &str = "switchyard_json_answer";

/// Renders the canonical request as a Converse body for `model_id` (which goes in the URL
/// path; model-specific fields depend on it).
pub fn render_request(req: &ChatRequest, model_id: &str) -> Result<Bytes, LlmError> {
    check_translatable(req, PROVIDER)?;
    let refuse = |field: &str, why: &str| Err(LlmError::unsupported(PROVIDER, field, why));
    let claude = model_id.contains("anthropic.");
    let mut additional = serde_json::Map::new();
    if let Some(k) = req.top_k {
        if !claude {
            return refuse(
                "top_k",
                "converse has no portable top-k parameter (it is passed to Anthropic Claude models only)",
            );
        }
        additional.insert("top_k".into(), Value::from(k));
    }
    if req.seed.is_some() {
        return refuse("seed", "converse has no seed parameter");
    }
    if req.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse("presence_penalty", "converse has no presence penalty");
    }
    if req.frequency_penalty.is_some_and(|p| p != 0.0) {
        return refuse("frequency_penalty", "converse has no frequency penalty");
    }
    if req.reasoning_effort.as_deref().is_some_and(|e| e != "none") {
        return refuse(
            "reasoning_effort",
            "extended thinking is model-specific on bedrock; send the request without it",
        );
    }

    let mut system = Vec::new();
    let mut messages: Vec<WireMessage> = Vec::new();
    let mut has_tool_blocks = false;
    for (i, m) in req.messages.iter().enumerate() {
        if m.role.is_system() {
            let text = m.text();
            if !text.is_empty() {
                system.push(WireSystemBlock { text: Some(text) });
            }
            continue;
        }
        let role = if m.role == Role::Assistant {
            "assistant"
        } else {
            "user"
        };
        let mut blocks = Vec::new();
        for (j, part) in m.content.iter().enumerate() {
            let field = || format!("messages[{i}].content[{j}]");
            match part {
                ContentPart::Text(t) => {
                    // Converse rejects blank text blocks.
                    if !t.trim().is_empty() {
                        blocks.push(WireBlock {
                            text: Some(t.clone()),
                            ..WireBlock::default()
                        });
                    }
                }
                ContentPart::Image(Image::Base64 { media_type, data }) => {
                    let Some(format) = image_format(media_type) else {
                        return Err(LlmError::unsupported(
                            PROVIDER,
                            field(),
                            format!("image type `{media_type}` (png, jpeg, gif and webp only)"),
                        ));
                    };
                    blocks.push(WireBlock {
                        image: Some(WireImage {
                            format: format.into(),
                            source: WireImageSource {
                                bytes: data.clone(),
                            },
                        }),
                        ..WireBlock::default()
                    });
                }
                ContentPart::Image(Image::Url { .. }) => {
                    return Err(LlmError::unsupported(
                        PROVIDER,
                        field(),
                        "images must be inline (base64 data urls); bedrock cannot fetch urls",
                    ));
                }
                ContentPart::ToolCall(c) => {
                    has_tool_blocks = true;
                    blocks.push(WireBlock {
                        tool_use: Some(WireToolUse {
                            tool_use_id: c.id.clone(),
                            name: c.name.clone(),
                            input: arguments_value(&c.arguments, || {
                                format!("messages[{i}].tool_calls[{j}].function.arguments")
                            })?,
                        }),
                        ..WireBlock::default()
                    });
                }
                ContentPart::ToolResult(r) => {
                    has_tool_blocks = true;
                    blocks.push(WireBlock {
                        tool_result: Some(WireToolResult {
                            tool_use_id: r.call_id.clone(),
                            content: vec![WireToolResultContent {
                                text: Some(r.content.clone()),
                                json: None,
                            }],
                            status: r.is_error.then(|| "error".to_owned()),
                        }),
                        ..WireBlock::default()
                    });
                }
            }
        }
        if blocks.is_empty() {
            continue;
        }
        // Converse wants alternating roles: merge consecutive messages of one role (several
        // tool results become one user message).
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(WireMessage {
                role: role.into(),
                content: blocks,
            }),
        }
    }

    if let Some(i) = req.tools.iter().position(|t| t.name == JSON_TOOL) {
        return refuse(
            &format!("tools[{i}].function.name"),
            "this name is reserved by the gateway (json mode on bedrock)",
        );
    }
    let json_mode = req.response_format == Some(ResponseFormat::JsonObject);
    if json_mode && !req.tools.is_empty() {
        return refuse(
            "response_format",
            "json_object mode together with tools: on bedrock json mode is a forced tool of the \
             gateway's, which would keep the model from calling yours (use json_schema)",
        );
    }
    let tool_config = if json_mode {
        // JSON mode, as Anthropic's own SDK guidance and peers do it: one tool whose input is
        // the answer, forced; the answer's tool input comes back as the message text.
        Some(WireToolConfig {
            tools: vec![WireTool {
                tool_spec: Some(WireToolSpec {
                    name: JSON_TOOL.into(),
                    description: Some(
                        "Answer with a JSON object: the tool's input is the answer.".into(),
                    ),
                    input_schema: WireInputSchema {
                        json: serde_json::json!({"type": "object", "additionalProperties": true}),
                    },
                    strict: None,
                }),
            }],
            tool_choice: Some(WireToolChoice {
                tool: Some(WireToolName {
                    name: JSON_TOOL.into(),
                }),
                ..WireToolChoice::default()
            }),
        })
    } else if req.tools.is_empty() {
        None
    } else {
        let tool_choice = match &req.tool_choice {
            None | Some(ToolChoice::Auto) => None,
            Some(ToolChoice::Required) => Some(WireToolChoice {
                any: Some(Value::Object(serde_json::Map::new())),
                ..WireToolChoice::default()
            }),
            Some(ToolChoice::Function(name)) => Some(WireToolChoice {
                tool: Some(WireToolName { name: name.clone() }),
                ..WireToolChoice::default()
            }),
            Some(ToolChoice::AnyOf(names)) if names.len() == 1 => Some(WireToolChoice {
                tool: Some(WireToolName {
                    name: names[0].clone(),
                }),
                ..WireToolChoice::default()
            }),
            Some(ToolChoice::AnyOf(_)) => {
                return refuse("tool_choice", "a choice among several named functions");
            }
            Some(ToolChoice::None) => None,
        };
        if req.tool_choice == Some(ToolChoice::None) && !has_tool_blocks {
            // "none" with no tool history: not offering the tools is exactly "none".
            None
        } else if req.tool_choice == Some(ToolChoice::None) {
            return refuse(
                "tool_choice",
                "`none` while the conversation holds tool calls (converse needs the tools then)",
            );
        } else {
            Some(WireToolConfig {
                tools: req
                    .tools
                    .iter()
                    .map(|t| WireTool {
                        tool_spec: Some(WireToolSpec {
                            name: t.name.clone(),
                            description: t.description.clone(),
                            input_schema: WireInputSchema {
                                json: t.parameters.clone().unwrap_or_else(empty_object_schema),
                            },
                            strict: t.strict.filter(|s| *s),
                        }),
                    })
                    .collect(),
                tool_choice,
            })
        }
    };

    let output_config = match &req.response_format {
        None | Some(ResponseFormat::Text) | Some(ResponseFormat::JsonObject) => None,
        Some(ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            ..
        }) => Some(WireOutputConfig {
            text_format: Some(WireTextFormat {
                kind: "json_schema".into(),
                structure: WireStructure {
                    json_schema: WireJsonSchema {
                        schema: schema.to_string(),
                        name: (!name.is_empty()).then(|| name.clone()),
                        description: description.clone(),
                    },
                },
            }),
        }),
    };

    let inference = WireInferenceConfig {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: req.stop.clone(),
    };
    let has_inference = inference.max_tokens.is_some()
        || inference.temperature.is_some()
        || inference.top_p.is_some()
        || !inference.stop_sequences.is_empty();

    request_bytes(&WireRequest {
        messages,
        system,
        inference_config: has_inference.then_some(inference),
        tool_config,
        output_config,
        additional_model_request_fields: (!additional.is_empty())
            .then(|| Value::Object(additional)),
        request_metadata: (!req.metadata.is_empty()).then(|| req.metadata.clone()),
    })
}

fn empty_object_schema() -> Value {
    let mut schema = serde_json::Map::new();
    schema.insert("type".into(), Value::from("object"));
    schema.insert("properties".into(), Value::Object(serde_json::Map::new()));
    Value::Object(schema)
}

/// Parses a Converse request body (for mock servers that validate what they receive).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, LlmError> {
    let value = parse_object(body)?;
    let wire: WireRequest = parse_body(value)?;
    let mut untranslatable = Vec::new();
    let mut messages = Vec::new();
    for block in wire.system {
        if let Some(text) = block.text {
            messages.push(Message::text_message(Role::System, text));
        }
    }
    for (i, m) in wire.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(LlmError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{other}`"),
                ));
            }
        };
        let mut content = Vec::new();
        let mut results = Vec::new();
        for (j, block) in m.content.into_iter().enumerate() {
            if let Some(t) = block.text {
                content.push(ContentPart::Text(t));
            } else if let Some(img) = block.image {
                content.push(ContentPart::Image(Image::Base64 {
                    media_type: format!("image/{}", img.format),
                    data: img.source.bytes,
                }));
            } else if let Some(u) = block.tool_use {
                content.push(ContentPart::ToolCall(ToolCall {
                    id: u.tool_use_id,
                    name: u.name,
                    arguments: u.input.to_string(),
                }));
            } else if let Some(r) = block.tool_result {
                let text = r
                    .content
                    .into_iter()
                    .map(|c| match (c.text, c.json) {
                        (Some(t), _) => t,
                        (None, Some(j)) => j.to_string(),
                        (None, None) => String::new(),
                    })
                    .collect::<Vec<_>>()
                    .join("");
                results.push(ContentPart::ToolResult(ToolResult {
                    call_id: r.tool_use_id,
                    content: text,
                    is_error: r.status.as_deref() == Some("error"),
                }));
            } else if block.cache_point.is_some() || block.reasoning_content.is_some() {
                // Cache points and reasoning replays do not change the answer's content.
            } else {
                untranslatable.push(Untranslatable::new(
                    format!("messages[{i}].content[{j}]"),
                    "content block",
                ));
            }
        }
        if !results.is_empty() {
            messages.push(Message {
                role: Role::Tool,
                content: results,
                name: None,
            });
        }
        if !content.is_empty() {
            messages.push(Message {
                role,
                content,
                name: None,
            });
        }
    }
    let mut tools = Vec::new();
    let mut tool_choice = None;
    if let Some(config) = wire.tool_config {
        for (i, t) in config.tools.into_iter().enumerate() {
            match t.tool_spec {
                Some(spec) => tools.push(Tool {
                    name: spec.name,
                    description: spec.description,
                    parameters: Some(spec.input_schema.json),
                    strict: spec.strict,
                }),
                None => untranslatable.push(Untranslatable::new(
                    format!("toolConfig.tools[{i}]"),
                    "tool kind",
                )),
            }
        }
        tool_choice = config.tool_choice.map(|c| {
            if let Some(t) = c.tool {
                ToolChoice::Function(t.name)
            } else if c.any.is_some() {
                ToolChoice::Required
            } else {
                ToolChoice::Auto
            }
        });
    }
    let response_format = match wire.output_config.and_then(|o| o.text_format) {
        None => None,
        Some(f) => {
            let schema: Value =
                serde_json::from_str(&f.structure.json_schema.schema).map_err(|e| {
                    LlmError::invalid(
                        "outputConfig.textFormat.structure.jsonSchema.schema",
                        format!("not a json schema string: {e}"),
                    )
                })?;
            Some(ResponseFormat::JsonSchema {
                name: f.structure.json_schema.name.unwrap_or_default(),
                description: f.structure.json_schema.description,
                schema,
                strict: Some(true),
            })
        }
    };
    // Claude's `top_k` is the one model-specific field with a canonical meaning.
    let mut top_k = None;
    if let Some(fields) = wire.additional_model_request_fields {
        let mut other = false;
        match fields {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v.as_u64().and_then(|n| u32::try_from(n).ok())) {
                        ("top_k", Some(n)) => top_k = Some(n),
                        _ => other = true,
                    }
                }
            }
            _ => other = true,
        }
        if other {
            untranslatable.push(Untranslatable::new(
                "additionalModelRequestFields",
                "model-specific fields",
            ));
        }
    }
    let inference = wire.inference_config.unwrap_or_default();
    Ok(ChatRequest {
        messages,
        tools,
        tool_choice,
        response_format,
        temperature: inference.temperature,
        top_p: inference.top_p,
        top_k,
        max_tokens: inference.max_tokens,
        stop: inference.stop_sequences,
        metadata: wire.request_metadata.unwrap_or_default(),
        untranslatable,
        ..ChatRequest::default()
    })
}

// ---------------------------------------------------------------------------------------
// Responses.

fn finish_from_wire(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" | "" => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn finish_to_wire(reason: &FinishReason) -> String {
    match reason {
        FinishReason::Stop => "end_turn".into(),
        FinishReason::ToolCalls => "tool_use".into(),
        FinishReason::Length => "max_tokens".into(),
        FinishReason::ContentFilter => "content_filtered".into(),
        FinishReason::Other(o) => o.clone(),
    }
}

fn usage_from_wire(u: &WireUsage) -> Usage {
    let cache_read = u.cache_read_input_tokens.unwrap_or(0);
    let cache_write = u.cache_write_input_tokens.unwrap_or(0);
    Usage {
        // Converse counts cache reads and writes apart from `inputTokens`.
        input_tokens: u
            .input_tokens
            .saturating_add(cache_read)
            .saturating_add(cache_write),
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cache_read_input_tokens,
        cache_write_input_tokens: u.cache_write_input_tokens,
        reasoning_tokens: None,
    }
}

fn usage_to_wire(u: &Usage) -> WireUsage {
    let cache_read = u.cached_input_tokens.unwrap_or(0);
    let cache_write = u.cache_write_input_tokens.unwrap_or(0);
    let input = u
        .input_tokens
        .saturating_sub(cache_read)
        .saturating_sub(cache_write);
    WireUsage {
        input_tokens: input,
        output_tokens: u.output_tokens,
        total_tokens: u.total_tokens(),
        cache_read_input_tokens: u.cached_input_tokens,
        cache_write_input_tokens: u.cache_write_input_tokens,
    }
}

/// Parses a 200 Converse body. Bedrock returns no id or model: a fresh id is generated and
/// the model is left to the caller.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ApiError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| bad_body("converse", e))?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    let mut json_answer = false;
    for block in wire.output.message.map(|m| m.content).unwrap_or_default() {
        if let Some(t) = block.text {
            text.get_or_insert_with(String::new).push_str(&t);
        } else if let Some(u) = block.tool_use {
            if u.name == JSON_TOOL {
                // JSON mode: the forced tool's input is the answer.
                json_answer = true;
                text.get_or_insert_with(String::new)
                    .push_str(&u.input.to_string());
                continue;
            }
            tool_calls.push(ToolCall {
                id: u.tool_use_id,
                name: u.name,
                arguments: u.input.to_string(),
            });
        }
    }
    let mut finish_reason = finish_from_wire(&wire.stop_reason);
    if json_answer && tool_calls.is_empty() && finish_reason == FinishReason::ToolCalls {
        finish_reason = FinishReason::Stop;
    }
    Ok(ChatResponse {
        id: new_id("chatcmpl-"),
        model: String::new(),
        created: now_unix(),
        text,
        tool_calls,
        finish_reason,
        usage: wire.usage.as_ref().map(usage_from_wire),
    })
}

/// Renders a canonical response as a Converse body (for mock servers).
pub fn render_response(resp: &ChatResponse) -> Bytes {
    let mut content = Vec::new();
    if let Some(text) = &resp.text {
        content.push(WireBlock {
            text: Some(text.clone()),
            ..WireBlock::default()
        });
    }
    for call in &resp.tool_calls {
        content.push(WireBlock {
            tool_use: Some(WireToolUse {
                tool_use_id: call.id.clone(),
                name: call.name.clone(),
                input: serde_json::from_str(&call.arguments)
                    .unwrap_or_else(|_| Value::String(call.arguments.clone())),
            }),
            ..WireBlock::default()
        });
    }
    json_bytes(&WireResponse {
        output: WireOutput {
            message: Some(WireMessage {
                role: "assistant".into(),
                content,
            }),
        },
        stop_reason: finish_to_wire(&resp.finish_reason),
        usage: resp.usage.as_ref().map(usage_to_wire),
        metrics: None,
    })
}

// ---------------------------------------------------------------------------------------
// Errors.

/// The kind for a Bedrock exception name (`ThrottlingException`, `throttlingException`, …).
fn kind_for_exception(name: &str) -> Option<ErrorKind> {
    let lower = name.to_ascii_lowercase();
    Some(match lower.as_str() {
        "validationexception" => ErrorKind::InvalidRequest,
        "accessdeniedexception" => ErrorKind::PermissionDenied,
        "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "missingauthenticationtokenexception"
        | "expiredtokenexception" => ErrorKind::Authentication,
        "resourcenotfoundexception" => ErrorKind::NotFound,
        "throttlingexception" | "servicequotaexceededexception" | "modelnotreadyexception" => {
            ErrorKind::RateLimited
        }
        "modeltimeoutexception" => ErrorKind::Timeout,
        "serviceunavailableexception" => ErrorKind::Unavailable,
        "internalserverexception" | "modelerrorexception" | "modelstreamerrorexception" => {
            ErrorKind::Upstream
        }
        _ => return None,
    })
}

fn status_for_exception(name: &str, kind: ErrorKind) -> StatusCode {
    match name.to_ascii_lowercase().as_str() {
        "modelerrorexception" | "modelstreamerrorexception" => StatusCode::FAILED_DEPENDENCY,
        "modeltimeoutexception" => StatusCode::REQUEST_TIMEOUT,
        "internalserverexception" => StatusCode::INTERNAL_SERVER_ERROR,
        "servicequotaexceededexception" => StatusCode::BAD_REQUEST,
        _ => kind.default_status(),
    }
}

/// Parses a Bedrock error: the exception name from `x-amzn-ErrorType` (before any `:`) and
/// the message from the `{"message": …}` body.
pub fn parse_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let exception = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty());
    let message = match serde_json::from_slice::<WireErrorBody>(body) {
        Ok(b) if !b.message.is_empty() => b.message,
        _ => body_snippet(body),
    };
    let mut kind = exception
        .as_deref()
        .and_then(kind_for_exception)
        .unwrap_or_else(|| ErrorKind::from_status(status));
    if kind == ErrorKind::InvalidRequest && is_context_overflow(&message) {
        kind = ErrorKind::ContextLengthExceeded;
    }
    ApiError {
        status,
        kind,
        message,
        code: exception,
        param: None,
    }
}

fn is_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("too long") || m.contains("context length") || m.contains("too many input tokens")
}

pub(crate) fn exception_error(exception: &str, payload: &[u8]) -> ApiError {
    let message = match serde_json::from_slice::<WireErrorBody>(payload) {
        Ok(b) if !b.message.is_empty() => b.message,
        _ => body_snippet(payload),
    };
    let kind = kind_for_exception(exception).unwrap_or(ErrorKind::Upstream);
    ApiError {
        status: status_for_exception(exception, kind),
        kind,
        message,
        code: Some(exception.to_owned()),
        param: None,
    }
}

// ---------------------------------------------------------------------------------------
// Streams.

/// Decodes a ConverseStream body (event-stream frames, both CRCs verified).
pub type ConverseStreamDecoder = FramedDecoder<FrameDecoder, ConverseEvents>;

/// What a ConverseStream's messages mean (see [`ConverseStreamDecoder`]).
#[derive(Debug, Default)]
pub struct ConverseEvents {
    started: bool,
    stopped: bool,
    failed: bool,
    /// contentBlockIndex → canonical tool-call index.
    tools: HashMap<u32, u32>,
    /// contentBlockIndexes of JSON mode's tool (its input streams as the answer's text).
    json_blocks: Vec<u32>,
}

impl ConverseEvents {
    fn payload<'a, T: Deserialize<'a>>(event: &str, payload: &'a [u8]) -> Result<T, StreamError> {
        serde_json::from_slice(payload)
            .map_err(|e| StreamError::Payload(format!("converse `{event}` event: {e}")))
    }

    fn start(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: None,
                model: None,
            });
        }
    }

    fn on_message(
        &mut self,
        message: crate::eventstream::Message,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        match message.header_str(":message-type").unwrap_or("event") {
            "exception" => {
                let exception = message
                    .header_str(":exception-type")
                    .unwrap_or("internalServerException")
                    .to_owned();
                out.push(StreamEvent::Error(exception_error(
                    &exception,
                    &message.payload,
                )));
                self.failed = true;
                return Ok(());
            }
            "error" => {
                let code = message.header_str(":error-code").unwrap_or("error");
                let text = message.header_str(":error-message").unwrap_or(code);
                out.push(StreamEvent::Error(
                    ApiError::new(ErrorKind::Upstream, text).code(code),
                ));
                self.failed = true;
                return Ok(());
            }
            _ => {}
        }
        let event = message.header_str(":event-type").unwrap_or("").to_owned();
        let payload = &message.payload[..];
        match event.as_str() {
            "messageStart" => self.start(out),
            "contentBlockStart" => {
                self.start(out);
                let start: WireBlockStart = Self::payload(&event, payload)?;
                if let Some(tool) = start.start.tool_use {
                    if tool.name == JSON_TOOL {
                        self.json_blocks.push(start.content_block_index);
                        return Ok(());
                    }
                    let index = self.tools.len() as u32;
                    self.tools.insert(start.content_block_index, index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: tool.tool_use_id,
                        name: tool.name,
                    });
                }
            }
            "contentBlockDelta" => {
                self.start(out);
                let delta: WireBlockDelta = Self::payload(&event, payload)?;
                if let Some(text) = delta.delta.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(text));
                }
                if let Some(tool) = delta.delta.tool_use {
                    if self.json_blocks.contains(&delta.content_block_index) {
                        if !tool.input.is_empty() {
                            out.push(StreamEvent::TextDelta(tool.input));
                        }
                        return Ok(());
                    }
                    let Some(&index) = self.tools.get(&delta.content_block_index) else {
                        return Err(StreamError::Payload(format!(
                            "tool input for block {} that never started",
                            delta.content_block_index
                        )));
                    };
                    if !tool.input.is_empty() {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: tool.input,
                        });
                    }
                }
            }
            "contentBlockStop" => {
                let _: WireBlockStop = Self::payload(&event, payload)?;
            }
            "messageStop" => {
                self.start(out);
                let stop: WireMessageStop = Self::payload(&event, payload)?;
                self.stopped = true;
                let mut finish = finish_from_wire(&stop.stop_reason);
                if !self.json_blocks.is_empty()
                    && self.tools.is_empty()
                    && finish == FinishReason::ToolCalls
                {
                    finish = FinishReason::Stop;
                }
                out.push(StreamEvent::Finish(finish));
            }
            "metadata" => {
                let meta: WireMetadata = Self::payload(&event, payload)?;
                if let Some(usage) = meta.usage {
                    out.push(StreamEvent::Usage(usage_from_wire(&usage)));
                }
            }
            // Unknown events (new features) are skipped.
            _ => {}
        }
        Ok(())
    }
}

impl FrameHandler<crate::eventstream::Message> for ConverseEvents {
    fn on_frame(
        &mut self,
        message: crate::eventstream::Message,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        self.on_message(message, out)
    }

    fn halted(&self) -> bool {
        self.failed
    }

    fn on_end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if !self.stopped && !self.failed {
            return Err(StreamError::Truncated);
        }
        Ok(())
    }
}

/// Encodes canonical events as ConverseStream frames (for mock servers).
#[derive(Debug, Default)]
pub struct ConverseStreamEncoder {
    started: bool,
    done: bool,
    next_block: u32,
    open_text_block: Option<u32>,
    /// canonical tool index → content block index, for open tool blocks.
    open_tools: BTreeMap<u32, u32>,
    stop: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ConverseStreamEncoder {
    /// An encoder at the start of a stream.
    pub fn new() -> ConverseStreamEncoder {
        ConverseStreamEncoder::default()
    }

    fn frame<T: Serialize>(out: &mut Vec<u8>, event: &str, payload: &T) {
        match encode_event(event, json_string(payload).as_bytes()) {
            Ok(frame) => out.extend_from_slice(&frame),
            Err(e) => tracing::error!(error = %e, "cannot encode converse event"),
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let mut role = serde_json::Map::new();
            role.insert("role".into(), Value::from("assistant"));
            Self::frame(out, "messageStart", &Value::Object(role));
        }
    }

    fn close_blocks(&mut self, out: &mut Vec<u8>) {
        let mut blocks: Vec<u32> = self.open_text_block.take().into_iter().collect();
        blocks.extend(std::mem::take(&mut self.open_tools).into_values());
        blocks.sort_unstable();
        for block in blocks {
            Self::frame(
                out,
                "contentBlockStop",
                &WireBlockStop {
                    content_block_index: block,
                },
            );
        }
    }
}

impl StreamEncoder for ConverseStreamEncoder {
    fn push(&mut self, event: &StreamEvent) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        let mut out = Vec::new();
        match event {
            StreamEvent::Start { .. } => self.start(&mut out),
            StreamEvent::TextDelta(text) => {
                self.start(&mut out);
                let block = match self.open_text_block {
                    Some(b) => b,
                    None => {
                        let b = self.next_block;
                        self.next_block += 1;
                        self.open_text_block = Some(b);
                        b
                    }
                };
                Self::frame(
                    &mut out,
                    "contentBlockDelta",
                    &WireBlockDelta {
                        content_block_index: block,
                        delta: WireDelta {
                            text: Some(text.clone()),
                            ..WireDelta::default()
                        },
                    },
                );
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(&mut out);
                if let Some(b) = self.open_text_block.take() {
                    Self::frame(
                        &mut out,
                        "contentBlockStop",
                        &WireBlockStop {
                            content_block_index: b,
                        },
                    );
                }
                let block = self.next_block;
                self.next_block += 1;
                self.open_tools.insert(*index, block);
                Self::frame(
                    &mut out,
                    "contentBlockStart",
                    &WireBlockStart {
                        content_block_index: block,
                        start: WireStart {
                            tool_use: Some(WireStartToolUse {
                                tool_use_id: id.clone(),
                                name: name.clone(),
                            }),
                        },
                    },
                );
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(&block) = self.open_tools.get(index) {
                    Self::frame(
                        &mut out,
                        "contentBlockDelta",
                        &WireBlockDelta {
                            content_block_index: block,
                            delta: WireDelta {
                                tool_use: Some(WireDeltaToolUse {
                                    input: arguments.clone(),
                                }),
                                ..WireDelta::default()
                            },
                        },
                    );
                }
            }
            StreamEvent::Finish(reason) => self.stop = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error(err) => {
                self.done = true;
                let exception = match err.kind {
                    ErrorKind::RateLimited => "throttlingException",
                    ErrorKind::InvalidRequest | ErrorKind::ContextLengthExceeded => {
                        "validationException"
                    }
                    ErrorKind::Unavailable => "serviceUnavailableException",
                    _ => "internalServerException",
                };
                match encode_exception(exception, &err.message) {
                    Ok(frame) => out.extend_from_slice(&frame),
                    Err(e) => tracing::error!(error = %e, "cannot encode converse exception"),
                }
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
        self.close_blocks(&mut out);
        Self::frame(
            &mut out,
            "messageStop",
            &WireMessageStop {
                stop_reason: finish_to_wire(self.stop.as_ref().unwrap_or(&FinishReason::Stop)),
            },
        );
        if let Some(usage) = &self.usage {
            let mut metrics = serde_json::Map::new();
            metrics.insert("latencyMs".into(), Value::from(0));
            Self::frame(
                &mut out,
                "metadata",
                &WireMetadata {
                    usage: Some(usage_to_wire(usage)),
                    metrics: Some(Value::Object(metrics)),
                },
            );
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::openai_chat;
    use crate::eventstream::encode_frame;
    use crate::stream::StreamDecoder;
    use crate::stream::{decode_all, encode_all};
    use proptest::prelude::*;
    use serde_json::json;

    fn openai_request() -> ChatRequest {
        let body = json!({
            "model": "claude/anthropic.claude-3-haiku-20240307-v1:0",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "weather and time in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                ]},
                {"role": "assistant", "content": "checking", "tool_calls": [
                    {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "tooluse_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "21C"},
                {"role": "tool", "tool_call_id": "tooluse_2", "content": "noon"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": "required",
            "max_tokens": 300, "temperature": 0.5, "top_p": 0.8, "stop": ["\n\nHuman:"],
            "metadata": {"tenant": "acme"},
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
        });
        openai_chat::parse_request(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn openai_request_to_converse_field_by_field() {
        let body = render_request(&openai_request(), NOVA).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["system"], json!([{"text": "be brief"}]));
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(
            v["messages"][0]["content"][0]["text"],
            "weather and time in Paris?"
        );
        assert_eq!(
            v["messages"][0]["content"][1]["image"],
            json!({"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}})
        );
        assert_eq!(v["messages"][1]["role"], "assistant");
        assert_eq!(v["messages"][1]["content"][0]["text"], "checking");
        assert_eq!(
            v["messages"][1]["content"][1]["toolUse"],
            json!({"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        assert_eq!(
            v["messages"][1]["content"][2]["toolUse"]["input"],
            json!({})
        );
        // Both tool results merged into one user message.
        assert_eq!(v["messages"][2]["role"], "user");
        assert_eq!(
            v["messages"][2]["content"][0]["toolResult"],
            json!({"toolUseId": "tooluse_1", "content": [{"text": "21C"}]})
        );
        assert_eq!(
            v["messages"][2]["content"][1]["toolResult"]["toolUseId"],
            "tooluse_2"
        );
        assert_eq!(
            v["inferenceConfig"],
            json!({"maxTokens": 300, "temperature": 0.5, "topP": 0.8, "stopSequences": ["\n\nHuman:"]})
        );
        assert_eq!(
            v["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(
            v["toolConfig"]["tools"][1]["toolSpec"]["inputSchema"]["json"],
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(v["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(v["requestMetadata"], json!({"tenant": "acme"}));
        assert_eq!(v["outputConfig"]["textFormat"]["type"], "json_schema");
        let schema = v["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"]
            .as_str()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(schema).unwrap(),
            json!({"type": "object"})
        );

        // And the mock-side parser reads it back.
        let back = parse_request(&body).unwrap();
        assert_eq!(back.system_text().as_deref(), Some("be brief"));
        assert_eq!(back.tools.len(), 2);
        assert_eq!(back.tool_choice, Some(ToolChoice::Required));
        assert_eq!(back.max_tokens, Some(300));
    }

    /// A model without model-specific fields of ours.
    const NOVA: &str = "amazon.nova-pro-v1:0";

    #[test]
    fn top_k_goes_to_claude_models_only() {
        let mut req = openai_request();
        req.top_k = Some(40);
        for claude in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ] {
            let body = render_request(&req, claude).unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["additionalModelRequestFields"], json!({"top_k": 40}));
            // Read back as the canonical top_k, not as an untranslatable field.
            let back = parse_request(&body).unwrap();
            assert_eq!(back.top_k, Some(40));
            assert!(back.untranslatable.is_empty(), "{:?}", back.untranslatable);
        }
        let v: Value =
            serde_json::from_slice(&render_request(&openai_request(), NOVA).unwrap()).unwrap();
        assert!(v.get("additionalModelRequestFields").is_none());
        // Other model-specific fields stay untranslatable.
        let other = br#"{"messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "additionalModelRequestFields": {"top_k": 5, "reasoning_config": {"type": "enabled"}}}"#;
        assert_eq!(parse_request(other).unwrap().untranslatable.len(), 1);
    }

    #[test]
    fn refuses_what_converse_cannot_honour() {
        type Mutation = Box<dyn Fn(&mut ChatRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("seed", Box::new(|r| r.seed = Some(1))),
            ("top_k", Box::new(|r| r.top_k = Some(5))),
            (
                "presence_penalty",
                Box::new(|r| r.presence_penalty = Some(0.5)),
            ),
            (
                "reasoning_effort",
                Box::new(|r| r.reasoning_effort = Some("high".into())),
            ),
            ("n", Box::new(|r| r.n = Some(3))),
            (
                "tool_choice",
                Box::new(|r| r.tool_choice = Some(ToolChoice::None)),
            ),
            (
                "messages[1].content[1]",
                Box::new(|r| {
                    r.messages[1].content[1] = ContentPart::Image(Image::Url {
                        url: "https://x/y.png".into(),
                        detail: None,
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut req = openai_request();
            mutate(&mut req);
            match render_request(&req, NOVA) {
                Err(LlmError::Unsupported {
                    field: f, provider, ..
                }) => {
                    assert_eq!((f.as_str(), provider), (field, "bedrock"))
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        // `none` without tool history simply leaves the tools out.
        let mut req = openai_request();
        req.messages.truncate(2);
        req.tool_choice = Some(ToolChoice::None);
        let v: Value = serde_json::from_slice(&render_request(&req, NOVA).unwrap()).unwrap();
        assert!(v.get("toolConfig").is_none());
    }

    const RESPONSE: &str = r#"{
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Let me check."},
            {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 375, "outputTokens": 36, "totalTokens": 511,
                  "cacheReadInputTokens": 100, "cacheWriteInputTokens": 0},
        "metrics": {"latencyMs": 1529}
    }"#;

    #[test]
    fn converse_response_to_openai_chat() {
        let resp = parse_response(RESPONSE.as_bytes()).unwrap();
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.text.as_deref(), Some("Let me check."));
        assert_eq!(resp.tool_calls[0].arguments, r#"{"sign":"WZPZ"}"#);
        let usage = resp.usage.unwrap();
        assert_eq!(usage.input_tokens, 475);
        assert_eq!(usage.cached_input_tokens, Some(100));

        let chat: Value = serde_json::from_slice(&openai_chat::render_response(&resp)).unwrap();
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chat["choices"][0]["message"]["content"], "Let me check.");
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["id"],
            "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
        );
        assert_eq!(chat["usage"]["prompt_tokens"], 475);
        assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(chat["usage"]["total_tokens"], 511);

        // The mock-side renderer produces a body that parses to the same answer.
        let again = parse_response(&render_response(&resp)).unwrap();
        assert_eq!(
            (again.text, again.tool_calls, again.usage),
            (resp.text, resp.tool_calls, resp.usage)
        );
        assert!(parse_response(b"{\"output\": 5}").is_err());
    }

    #[test]
    fn errors_from_header_and_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        let err = parse_error(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.code.as_deref(), Some("ThrottlingException"));
        assert!(err.message.starts_with("Too many requests"));

        headers.insert("x-amzn-errortype", "ValidationException".parse().unwrap());
        let err = parse_error(
            StatusCode::BAD_REQUEST,
            &headers,
            br#"{"Message":"Input is too long for requested model."}"#,
        );
        assert_eq!(err.kind, ErrorKind::ContextLengthExceeded);

        let err = parse_error(StatusCode::FORBIDDEN, &HeaderMap::new(), b"");
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
    }

    fn stream_frames() -> Vec<u8> {
        let events: Vec<(&str, Value)> = vec![
            ("messageStart", json!({"role": "assistant", "p": "abcd"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Let me "}, "p": "ab"}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "check."}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_A", "name": "top_song"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"sign\": "}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"WZPZ\"}"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 1})),
            ("messageStop", json!({"stopReason": "tool_use"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}, "metrics": {"latencyMs": 90}}),
            ),
        ];
        let mut out = Vec::new();
        for (name, payload) in events {
            out.extend_from_slice(&encode_event(name, payload.to_string().as_bytes()).unwrap());
        }
        out
    }

    fn expected_events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::TextDelta("Let me ".into()),
            StreamEvent::TextDelta("check.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "tooluse_A".into(),
                name: "top_song".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"sign\": ".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "\"WZPZ\"}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            }),
        ]
    }

    #[test]
    fn decodes_converse_stream() {
        let events = decode_all(&mut ConverseStreamDecoder::new(), &stream_frames()).unwrap();
        assert_eq!(events, expected_events());
    }

    #[test]
    fn stream_exceptions_and_truncation() {
        let mut bytes = Vec::new();
        bytes
            .extend_from_slice(&encode_event("messageStart", b"{\"role\":\"assistant\"}").unwrap());
        bytes.extend_from_slice(&encode_exception("throttlingException", "slow down").unwrap());
        let events = decode_all(&mut ConverseStreamDecoder::new(), &bytes).unwrap();
        match &events[1] {
            StreamEvent::Error(e) => {
                assert_eq!(e.kind, ErrorKind::RateLimited);
                assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
                assert_eq!(e.message, "slow down");
            }
            other => panic!("{other:?}"),
        }
        let frames = stream_frames();
        // A clean frame boundary but no messageStop.
        let prefix = encode_event("messageStart", b"{\"role\":\"assistant\"}").unwrap();
        assert_eq!(
            decode_all(&mut ConverseStreamDecoder::new(), &prefix),
            Err(StreamError::Truncated)
        );
        // Cut mid-frame.
        assert!(
            decode_all(
                &mut ConverseStreamDecoder::new(),
                &frames[..frames.len() - 3]
            )
            .is_err()
        );
        // Bad CRC.
        let mut bad = frames.clone();
        bad[20] ^= 0xff;
        assert!(matches!(
            ConverseStreamDecoder::new().push(&bad),
            Err(StreamError::Frame(_))
        ));
        // A frame with a valid CRC but a garbage payload.
        let garbage = encode_frame(&crate::eventstream::Message::with_string_headers(
            &[
                (":event-type", "contentBlockDelta"),
                (":message-type", "event"),
            ],
            Bytes::from_static(b"not json"),
        ))
        .unwrap();
        assert!(matches!(
            ConverseStreamDecoder::new().push(&garbage),
            Err(StreamError::Payload(_))
        ));
    }

    #[test]
    fn encoder_output_decodes_to_the_same_events() {
        let bytes = encode_all(&mut ConverseStreamEncoder::new(), &expected_events());
        let events = decode_all(&mut ConverseStreamDecoder::new(), &bytes).unwrap();
        assert_eq!(events, expected_events());
    }

    proptest! {
        #[test]
        fn stream_decoder_is_split_invariant(cuts in proptest::collection::vec(0usize..2000, 0..10)) {
            let input = stream_frames();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut d = ConverseStreamDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                got.extend(d.push(&input[start..cut]).unwrap());
                start = cut;
            }
            got.extend(d.push(&input[start..]).unwrap());
            got.extend(d.finish().unwrap());
            prop_assert_eq!(got, expected_events());
        }

        #[test]
        fn stream_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut d = ConverseStreamDecoder::new();
            let _ = d.push(&body);
            let _ = d.finish();
        }

        #[test]
        fn request_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&body);
        }
    }

    /// JSON mode: a forced tool of the gateway's, whose input comes back as the message text
    /// (streamed as text deltas), with a `stop` finish.
    #[test]
    fn json_mode_is_a_forced_tool_whose_input_is_the_answer() {
        let mut req = openai_request();
        req.tools.clear();
        req.tool_choice = None;
        req.messages.truncate(2);
        req.response_format = Some(ResponseFormat::JsonObject);
        let v: Value = serde_json::from_slice(&render_request(&req, NOVA).unwrap()).unwrap();
        assert_eq!(v["toolConfig"]["tools"][0]["toolSpec"]["name"], JSON_TOOL);
        assert_eq!(
            v["toolConfig"]["toolChoice"],
            json!({"tool": {"name": JSON_TOOL}})
        );
        assert!(v.get("outputConfig").is_none());

        // Non-streamed answer.
        let answer = json!({"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": JSON_TOOL, "input": {"city": "Paris", "n": 2}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}});
        let resp = parse_response(answer.to_string().as_bytes()).unwrap();
        assert!(resp.tool_calls.is_empty());
        assert_eq!(resp.finish_reason, FinishReason::Stop);
        let text: Value = serde_json::from_str(resp.text.as_deref().unwrap()).unwrap();
        assert_eq!(text, json!({"city": "Paris", "n": 2}));

        // Streamed: the tool's input arrives as text deltas.
        let events = vec![
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "t1".into(),
                name: JSON_TOOL.into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"city\": ".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "\"Paris\"}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
        ];
        let bytes = encode_all(&mut ConverseStreamEncoder::new(), &events);
        let back = decode_all(&mut ConverseStreamDecoder::new(), &bytes).unwrap();
        let text: String = back
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "{\"city\": \"Paris\"}");
        assert!(
            !back
                .iter()
                .any(|e| matches!(e, StreamEvent::ToolCallStart { .. }))
        );
        assert!(
            back.contains(&StreamEvent::Finish(FinishReason::Stop)),
            "{back:?}"
        );

        // With the client's own tools: refused (the forced tool would keep them from use).
        let mut with_tools = openai_request();
        with_tools.response_format = Some(ResponseFormat::JsonObject);
        assert!(matches!(
            render_request(&with_tools, NOVA),
            Err(LlmError::Unsupported { field, .. }) if field == "response_format"
        ));
        // Nor may a client's tool take the gateway's name.
        let mut named = openai_request();
        named.tools[0].name = JSON_TOOL.into();
        assert!(matches!(
            render_request(&named, NOVA),
            Err(LlmError::Unsupported { field, .. }) if field == "tools[0].function.name"
        ));
    }
}
