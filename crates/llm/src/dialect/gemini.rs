//! Google Gemini `generateContent` / `streamGenerateContent?alt=sse` (v1beta).
//!
//! Tool calls: Gemini matches a `functionResponse` to its `functionCall` by function name
//! (ids are optional), and Gemini 3 models require the call's `thoughtSignature` to be sent
//! back. Canonical tool-call ids made here carry the signature (`call_<hex>~ts~<signature>`),
//! so a client that echoes the id back (as OpenAI clients do) returns the signature too; when
//! none is known a Gemini 3 request gets Google's documented placeholder signature.
//!
//! Mapping notes: system and developer messages become `systemInstruction`; tool results
//! become `functionResponse` parts (the function name looked up from the earlier call; text
//! that is not a JSON object is sent as `{"output": text}`); tools use
//! `parametersJsonSchema` and structured output `responseJsonSchema`, so plain JSON Schema
//! passes unchanged; `reasoning_effort` becomes `thinkingLevel` (Gemini 3) or
//! `thinkingBudget`; image URLs become `fileData`. Gemini cannot be told to call one function
//! at a time, so `parallel_tool_calls: false` is honoured on the way back (the client gets the
//! first call only: [`crate::stream::FirstToolCallOnly`]); `user` and `metadata` are not sent.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    arguments_value, bad_body, check_translatable, json_bytes, json_string, new_id, now_unix,
    parse_body, parse_object, request_bytes, status_error, thinking_budget, unknown_keys,
};
use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Image, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Untranslatable, Usage,
};
use crate::error::{ApiError, ErrorKind, LlmError, StreamError};
use crate::sse::{SseEvent, SseParser, data_frame};
use crate::stream::{FrameHandler, FramedDecoder, StreamEncoder};

const PROVIDER: &str = "gemini";
const SIGNATURE_MARK: &str = "~ts~";
/// Google's documented placeholder for function calls whose real signature is unknown.
const PLACEHOLDER_SIGNATURE: &str = "skip_thought_signature_validator";

// ---------------------------------------------------------------------------------------
// Wire structs.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    #[serde(default)]
    contents: Vec<WireContent>,
    #[serde(
        default,
        alias = "system_instruction",
        skip_serializing_if = "Option::is_none"
    )]
    system_instruction: Option<WireContent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool>,
    #[serde(
        default,
        alias = "tool_config",
        skip_serializing_if = "Option::is_none"
    )]
    tool_config: Option<WireToolConfig>,
    #[serde(
        default,
        alias = "generation_config",
        skip_serializing_if = "Option::is_none"
    )]
    generation_config: Option<WireGenerationConfig>,
}

const KNOWN_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "model",
];

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(
        default,
        alias = "inline_data",
        skip_serializing_if = "Option::is_none"
    )]
    inline_data: Option<WireBlob>,
    #[serde(default, alias = "file_data", skip_serializing_if = "Option::is_none")]
    file_data: Option<WireFileData>,
    #[serde(
        default,
        alias = "function_call",
        skip_serializing_if = "Option::is_none"
    )]
    function_call: Option<WireFunctionCall>,
    #[serde(
        default,
        alias = "function_response",
        skip_serializing_if = "Option::is_none"
    )]
    function_response: Option<WireFunctionResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(
        default,
        alias = "thought_signature",
        skip_serializing_if = "Option::is_none"
    )]
    thought_signature: Option<String>,
    #[serde(
        default,
        alias = "executable_code",
        skip_serializing_if = "Option::is_none"
    )]
    executable_code: Option<Value>,
    #[serde(
        default,
        alias = "code_execution_result",
        skip_serializing_if = "Option::is_none"
    )]
    code_execution_result: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireBlob {
    #[serde(alias = "mime_type")]
    mime_type: String,
    data: String,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFileData {
    #[serde(default, alias = "mime_type", skip_serializing_if = "Option::is_none")]
    mime_type: Option<String>,
    #[serde(alias = "file_uri")]
    file_uri: String,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireFunctionCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireFunctionResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    #[serde(default)]
    response: Value,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool {
    #[serde(
        default,
        alias = "function_declarations",
        skip_serializing_if = "Option::is_none"
    )]
    function_declarations: Option<Vec<WireFunctionDeclaration>>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFunctionDeclaration {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(
        default,
        alias = "parameters_json_schema",
        skip_serializing_if = "Option::is_none"
    )]
    parameters_json_schema: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireToolConfig {
    #[serde(
        default,
        alias = "function_calling_config",
        skip_serializing_if = "Option::is_none"
    )]
    function_calling_config: Option<WireFunctionCallingConfig>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFunctionCallingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(
        default,
        alias = "allowed_function_names",
        skip_serializing_if = "Option::is_none"
    )]
    allowed_function_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireGenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(default, alias = "top_p", skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(default, alias = "top_k", skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(
        default,
        alias = "max_output_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    max_output_tokens: Option<u64>,
    #[serde(
        default,
        alias = "stop_sequences",
        skip_serializing_if = "Option::is_none"
    )]
    stop_sequences: Option<Vec<String>>,
    #[serde(
        default,
        alias = "candidate_count",
        skip_serializing_if = "Option::is_none"
    )]
    candidate_count: Option<u32>,
    #[serde(
        default,
        alias = "response_mime_type",
        skip_serializing_if = "Option::is_none"
    )]
    response_mime_type: Option<String>,
    #[serde(
        default,
        alias = "response_schema",
        skip_serializing_if = "Option::is_none"
    )]
    response_schema: Option<Value>,
    #[serde(
        default,
        alias = "response_json_schema",
        skip_serializing_if = "Option::is_none"
    )]
    response_json_schema: Option<Value>,
    #[serde(
        default,
        alias = "presence_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    presence_penalty: Option<f64>,
    #[serde(
        default,
        alias = "frequency_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(
        default,
        alias = "response_logprobs",
        skip_serializing_if = "Option::is_none"
    )]
    response_logprobs: Option<bool>,
    #[serde(
        default,
        alias = "thinking_config",
        skip_serializing_if = "Option::is_none"
    )]
    thinking_config: Option<WireThinkingConfig>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireThinkingConfig {
    #[serde(
        default,
        alias = "thinking_budget",
        skip_serializing_if = "Option::is_none"
    )]
    thinking_budget: Option<i64>,
    #[serde(
        default,
        alias = "thinking_level",
        skip_serializing_if = "Option::is_none"
    )]
    thinking_level: Option<String>,
    #[serde(
        default,
        alias = "include_thoughts",
        skip_serializing_if = "Option::is_none"
    )]
    include_thoughts: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<WireUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<WireContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(default)]
    index: u32,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_reason: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cached_content_token_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thoughts_token_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_use_prompt_token_count: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
struct WireErrorBody {
    error: WireError,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

// ---------------------------------------------------------------------------------------
// Tool-call ids carrying thought signatures.

fn call_id_with_signature(signature: Option<&str>) -> String {
    let id = new_id("call_");
    match signature {
        Some(sig) if !sig.is_empty() => format!("{id}{SIGNATURE_MARK}{sig}"),
        _ => id,
    }
}

fn signature_from_call_id(id: &str) -> Option<&str> {
    id.split_once(SIGNATURE_MARK).map(|(_, sig)| sig)
}

// ---------------------------------------------------------------------------------------
// Requests.

/// Parses a client's `generateContent` body. The model and the stream flag come from the URL
/// path: the caller sets `model` and `stream` on the result.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, LlmError> {
    let value = parse_object(body)?;
    let mut untranslatable: Vec<Untranslatable> = unknown_keys(&value, KNOWN_FIELDS)
        .into_iter()
        .map(|k| Untranslatable::new(k, "field has no equivalent outside gemini"))
        .collect();
    let wire: WireRequest = parse_body(value)?;

    let mut messages = Vec::new();
    if let Some(system) = wire.system_instruction {
        let text: String = system.parts.into_iter().filter_map(|p| p.text).collect();
        if !text.is_empty() {
            messages.push(Message::text_message(Role::System, text));
        }
    }
    // Gemini matches responses to calls by name: remember unanswered calls per name.
    let mut pending: HashMap<String, VecDeque<String>> = HashMap::new();
    for (i, content) in wire.contents.into_iter().enumerate() {
        let role = match content.role.as_deref() {
            None | Some("user") => Role::User,
            Some("model") => Role::Assistant,
            Some("function" | "tool") => Role::User,
            Some(other) => {
                return Err(LlmError::invalid(
                    format!("contents[{i}].role"),
                    format!("unknown role `{other}`"),
                ));
            }
        };
        let mut parts = Vec::new();
        let mut results = Vec::new();
        for (j, part) in content.parts.into_iter().enumerate() {
            let field = || format!("contents[{i}].parts[{j}]");
            if part.thought == Some(true) {
                continue;
            }
            if let Some(text) = part.text {
                parts.push(ContentPart::Text(text));
            } else if let Some(blob) = part.inline_data {
                parts.push(ContentPart::Image(Image::Base64 {
                    media_type: blob.mime_type,
                    data: blob.data,
                }));
            } else if let Some(file) = part.file_data {
                parts.push(ContentPart::Image(Image::Url {
                    url: file.file_uri,
                    detail: None,
                }));
            } else if let Some(call) = part.function_call {
                let id = call
                    .id
                    .unwrap_or_else(|| call_id_with_signature(part.thought_signature.as_deref()));
                pending
                    .entry(call.name.clone())
                    .or_default()
                    .push_back(id.clone());
                parts.push(ContentPart::ToolCall(ToolCall {
                    id,
                    name: call.name,
                    arguments: call
                        .args
                        .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
                        .to_string(),
                }));
            } else if let Some(resp) = part.function_response {
                let call_id = match resp.id {
                    Some(id) => id,
                    None => pending
                        .get_mut(&resp.name)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or_else(|| new_id("call_")),
                };
                results.push(ContentPart::ToolResult(ToolResult {
                    call_id,
                    content: response_text(&resp.response),
                    is_error: resp.response.get("error").is_some()
                        && resp.response.get("output").is_none(),
                }));
            } else if part.executable_code.is_some() || part.code_execution_result.is_some() {
                untranslatable.push(Untranslatable::new(field(), "code execution part"));
            } else {
                return Err(LlmError::invalid(field(), "empty part"));
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
    for (i, tool) in wire.tools.into_iter().enumerate() {
        for decl in tool.function_declarations.unwrap_or_default() {
            tools.push(Tool {
                name: decl.name,
                description: decl.description,
                parameters: decl.parameters_json_schema.or(decl.parameters),
                strict: None,
            });
        }
        for key in tool.other.keys() {
            untranslatable.push(Untranslatable::new(
                format!("tools[{i}].{key}"),
                "built-in tool",
            ));
        }
    }
    let tool_choice = match wire.tool_config.and_then(|c| c.function_calling_config) {
        None => None,
        Some(c) => {
            let allowed = c.allowed_function_names.unwrap_or_default();
            match c.mode.as_deref() {
                None | Some("AUTO" | "MODE_UNSPECIFIED") => Some(ToolChoice::Auto),
                Some("NONE") => Some(ToolChoice::None),
                Some("ANY" | "VALIDATED") => Some(match allowed.len() {
                    0 => ToolChoice::Required,
                    1 => ToolChoice::Function(allowed[0].clone()),
                    _ => ToolChoice::AnyOf(allowed),
                }),
                Some(other) => {
                    return Err(LlmError::invalid(
                        "toolConfig.functionCallingConfig.mode",
                        format!("unknown mode `{other}`"),
                    ));
                }
            }
        }
    };

    let config = wire.generation_config.unwrap_or_default();
    let response_format = match config.response_mime_type.as_deref() {
        Some("application/json") => match config.response_json_schema.or(config.response_schema) {
            Some(schema) => Some(ResponseFormat::JsonSchema {
                name: "response".into(),
                description: None,
                schema,
                strict: None,
            }),
            None => Some(ResponseFormat::JsonObject),
        },
        Some("text/plain") | None => None,
        Some(other) => {
            untranslatable.push(Untranslatable::new(
                "generationConfig.responseMimeType",
                format!("`{other}` output"),
            ));
            None
        }
    };
    let reasoning_effort = config.thinking_config.and_then(|t| {
        if let Some(level) = t.thinking_level {
            return Some(level.to_ascii_lowercase());
        }
        t.thinking_budget.map(|b| match b {
            0 => "none".to_owned(),
            b if b < 0 => "medium".to_owned(),
            1..=1024 => "low".to_owned(),
            1025..=8192 => "medium".to_owned(),
            _ => "high".to_owned(),
        })
    });

    Ok(ChatRequest {
        model: String::new(),
        messages,
        tools,
        tool_choice,
        response_format,
        temperature: config.temperature,
        top_p: config.top_p,
        top_k: config.top_k,
        max_tokens: config.max_output_tokens,
        stop: config.stop_sequences.unwrap_or_default(),
        seed: config.seed,
        presence_penalty: config.presence_penalty,
        frequency_penalty: config.frequency_penalty,
        n: config.candidate_count,
        logprobs: config.response_logprobs.unwrap_or(false),
        reasoning_effort,
        untranslatable,
        ..ChatRequest::default()
    })
}

/// A function response object as text: its `output` when that is a string, else its JSON.
fn response_text(response: &Value) -> String {
    match response.get("output").or_else(|| response.get("error")) {
        Some(Value::String(s)) if response.as_object().is_some_and(|o| o.len() == 1) => s.clone(),
        _ => response.to_string(),
    }
}

/// Tool-result text as a function response object.
fn response_value(content: &str, is_error: bool) -> Value {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(content) {
        return Value::Object(map);
    }
    let mut map = serde_json::Map::new();
    map.insert(
        if is_error { "error" } else { "output" }.into(),
        Value::from(content),
    );
    Value::Object(map)
}

fn guess_mime(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let path = lower.split(['?', '#']).next().unwrap_or("");
    let ext = path.rsplit('.').next()?;
    Some(
        match ext {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            "gif" => "image/gif",
            "webp" => "image/webp",
            "heic" => "image/heic",
            "pdf" => "application/pdf",
            _ => return None,
        }
        .to_owned(),
    )
}

/// Renders the canonical request as a `generateContent` body for `model` (which decides
/// the thinking parameter and the placeholder thought signature for Gemini 3).
pub fn render_request(req: &ChatRequest, model: &str) -> Result<Bytes, LlmError> {
    check_translatable(req, PROVIDER)?;
    let gemini3 = model.contains("gemini-3");
    let mut system_parts = Vec::new();
    let mut contents: Vec<WireContent> = Vec::new();
    let mut names_by_call: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        if m.role.is_system() {
            let text = m.text();
            if !text.is_empty() {
                system_parts.push(WirePart {
                    text: Some(text),
                    ..WirePart::default()
                });
            }
            continue;
        }
        let role = if m.role == Role::Assistant {
            "model"
        } else {
            "user"
        };
        let mut parts = Vec::new();
        let mut first_call = true;
        for (j, part) in m.content.iter().enumerate() {
            match part {
                // Gemini rejects empty text parts.
                ContentPart::Text(t) if t.is_empty() => {}
                ContentPart::Text(t) => parts.push(WirePart {
                    text: Some(t.clone()),
                    ..WirePart::default()
                }),
                ContentPart::Image(Image::Base64 { media_type, data }) => parts.push(WirePart {
                    inline_data: Some(WireBlob {
                        mime_type: media_type.clone(),
                        data: data.clone(),
                    }),
                    ..WirePart::default()
                }),
                ContentPart::Image(Image::Url { url, .. }) => parts.push(WirePart {
                    file_data: Some(WireFileData {
                        mime_type: guess_mime(url),
                        file_uri: url.clone(),
                    }),
                    ..WirePart::default()
                }),
                ContentPart::ToolCall(c) => {
                    names_by_call.insert(c.id.as_str(), c.name.as_str());
                    let signature = match signature_from_call_id(&c.id) {
                        Some(sig) => Some(sig.to_owned()),
                        None if gemini3 && first_call => Some(PLACEHOLDER_SIGNATURE.to_owned()),
                        None => None,
                    };
                    first_call = false;
                    parts.push(WirePart {
                        function_call: Some(WireFunctionCall {
                            id: None,
                            name: c.name.clone(),
                            args: Some(arguments_value(&c.arguments, || {
                                format!("messages[{i}].tool_calls[{j}].function.arguments")
                            })?),
                        }),
                        thought_signature: signature,
                        ..WirePart::default()
                    });
                }
                ContentPart::ToolResult(r) => {
                    let Some(name) = names_by_call.get(r.call_id.as_str()) else {
                        return Err(LlmError::invalid(
                            format!("messages[{i}].tool_call_id"),
                            format!(
                                "no earlier assistant tool call has id `{}` (gemini needs the function name)",
                                r.call_id
                            ),
                        ));
                    };
                    parts.push(WirePart {
                        function_response: Some(WireFunctionResponse {
                            id: None,
                            name: (*name).to_owned(),
                            response: response_value(&r.content, r.is_error),
                        }),
                        ..WirePart::default()
                    });
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => contents.push(WireContent {
                role: Some(role.into()),
                parts,
            }),
        }
    }

    let tools = if req.tools.is_empty() {
        Vec::new()
    } else {
        vec![WireTool {
            function_declarations: Some(
                req.tools
                    .iter()
                    .map(|t| WireFunctionDeclaration {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters: None,
                        parameters_json_schema: t.parameters.clone(),
                    })
                    .collect(),
            ),
            other: BTreeMap::new(),
        }]
    };
    let tool_config = req.tool_choice.as_ref().map(|choice| {
        let (mode, allowed) = match choice {
            ToolChoice::Auto => ("AUTO", None),
            ToolChoice::None => ("NONE", None),
            ToolChoice::Required => ("ANY", None),
            ToolChoice::Function(name) => ("ANY", Some(vec![name.clone()])),
            ToolChoice::AnyOf(names) => ("ANY", Some(names.clone())),
        };
        WireToolConfig {
            function_calling_config: Some(WireFunctionCallingConfig {
                mode: Some(mode.into()),
                allowed_function_names: allowed,
            }),
        }
    });
    let (mime, schema) = match &req.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json".to_owned()), None),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            (Some("application/json".to_owned()), Some(schema.clone()))
        }
    };
    let thinking = match req.reasoning_effort.as_deref() {
        None => None,
        Some(effort) if gemini3 => Some(WireThinkingConfig {
            thinking_level: Some(if effort == "none" { "minimal" } else { effort }.to_owned()),
            ..WireThinkingConfig::default()
        }),
        Some(effort) => match thinking_budget(effort) {
            Some(budget) => Some(WireThinkingConfig {
                thinking_budget: Some(budget),
                ..WireThinkingConfig::default()
            }),
            None => {
                return Err(LlmError::unsupported(
                    PROVIDER,
                    "reasoning_effort",
                    format!("unknown effort `{effort}`"),
                ));
            }
        },
    };
    let config = WireGenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        max_output_tokens: req.max_tokens,
        stop_sequences: (!req.stop.is_empty()).then(|| req.stop.clone()),
        candidate_count: None,
        response_mime_type: mime,
        response_schema: None,
        response_json_schema: schema,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
        response_logprobs: None,
        thinking_config: thinking,
    };
    let has_config = serde_json::to_value(&config)
        .map(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        .unwrap_or(true);
    request_bytes(&WireRequest {
        contents,
        system_instruction: (!system_parts.is_empty()).then_some(WireContent {
            role: None,
            parts: system_parts,
        }),
        tools,
        tool_config,
        generation_config: has_config.then_some(config),
    })
}

// ---------------------------------------------------------------------------------------
// Responses.

fn finish_from_wire(reason: &str, has_tool_calls: bool) -> FinishReason {
    match reason {
        "STOP" | "FINISH_REASON_UNSPECIFIED" | "" if has_tool_calls => FinishReason::ToolCalls,
        "STOP" | "FINISH_REASON_UNSPECIFIED" | "" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_owned()),
    }
}

fn finish_to_wire(reason: &FinishReason) -> String {
    match reason {
        FinishReason::Stop | FinishReason::ToolCalls => "STOP".into(),
        FinishReason::Length => "MAX_TOKENS".into(),
        FinishReason::ContentFilter => "SAFETY".into(),
        FinishReason::Other(o) => o.clone(),
    }
}

fn usage_from_wire(u: &WireUsage) -> Usage {
    let thoughts = u.thoughts_token_count.unwrap_or(0);
    Usage {
        input_tokens: u
            .prompt_token_count
            .saturating_add(u.tool_use_prompt_token_count.unwrap_or(0)),
        output_tokens: u.candidates_token_count.saturating_add(thoughts),
        cached_input_tokens: u.cached_content_token_count,
        cache_write_input_tokens: None,
        reasoning_tokens: u.thoughts_token_count,
    }
}

fn usage_to_wire(u: &Usage) -> WireUsage {
    let thoughts = u.reasoning_tokens.unwrap_or(0);
    WireUsage {
        prompt_token_count: u.input_tokens,
        candidates_token_count: u.output_tokens.saturating_sub(thoughts),
        total_token_count: u.total_tokens(),
        cached_content_token_count: u.cached_input_tokens,
        thoughts_token_count: u.reasoning_tokens,
        tool_use_prompt_token_count: None,
    }
}

/// What one response (or stream chunk) says.
struct Parsed {
    text: Option<String>,
    calls: Vec<ToolCall>,
    finish: Option<String>,
    blocked: bool,
}

fn read_candidates(wire: &WireResponse) -> Parsed {
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    let candidate = wire.candidates.iter().find(|c| c.index == 0);
    if let Some(content) = candidate.and_then(|c| c.content.as_ref()) {
        for part in &content.parts {
            if part.thought == Some(true) {
                continue;
            }
            if let Some(t) = &part.text {
                text.get_or_insert_with(String::new).push_str(t);
            }
            if let Some(call) = &part.function_call {
                calls.push(ToolCall {
                    id: call.id.clone().unwrap_or_else(|| {
                        call_id_with_signature(part.thought_signature.as_deref())
                    }),
                    name: call.name.clone(),
                    arguments: call
                        .args
                        .clone()
                        .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
                        .to_string(),
                });
            }
        }
    }
    Parsed {
        text,
        calls,
        finish: candidate.and_then(|c| c.finish_reason.clone()),
        blocked: wire
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some()),
    }
}

/// Parses a 200 `generateContent` body.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ApiError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| bad_body("generateContent", e))?;
    let parsed = read_candidates(&wire);
    let finish_reason = if parsed.blocked && wire.candidates.is_empty() {
        FinishReason::ContentFilter
    } else {
        finish_from_wire(
            parsed.finish.as_deref().unwrap_or(""),
            !parsed.calls.is_empty(),
        )
    };
    Ok(ChatResponse {
        id: wire
            .response_id
            .clone()
            .unwrap_or_else(|| new_id("chatcmpl-")),
        model: wire.model_version.clone().unwrap_or_default(),
        created: now_unix(),
        text: parsed.text,
        tool_calls: parsed.calls,
        finish_reason,
        usage: wire.usage_metadata.as_ref().map(usage_from_wire),
    })
}

fn call_part(call: &ToolCall) -> WirePart {
    WirePart {
        function_call: Some(WireFunctionCall {
            id: None,
            name: call.name.clone(),
            args: Some(
                serde_json::from_str(&call.arguments)
                    .unwrap_or_else(|_| Value::Object(serde_json::Map::new())),
            ),
        }),
        thought_signature: signature_from_call_id(&call.id).map(str::to_owned),
        ..WirePart::default()
    }
}

/// Renders a canonical response as a `generateContent` body.
pub fn render_response(resp: &ChatResponse) -> Bytes {
    let mut parts = Vec::new();
    if let Some(text) = &resp.text {
        parts.push(WirePart {
            text: Some(text.clone()),
            ..WirePart::default()
        });
    }
    parts.extend(resp.tool_calls.iter().map(call_part));
    json_bytes(&WireResponse {
        candidates: vec![WireCandidate {
            content: Some(WireContent {
                role: Some("model".into()),
                parts,
            }),
            finish_reason: Some(finish_to_wire(&resp.finish_reason)),
            index: 0,
        }],
        prompt_feedback: None,
        usage_metadata: resp.usage.as_ref().map(usage_to_wire),
        model_version: (!resp.model.is_empty()).then(|| resp.model.clone()),
        response_id: (!resp.id.is_empty()).then(|| resp.id.clone()),
    })
}

// ---------------------------------------------------------------------------------------
// Errors.

fn error_from_wire(status: StatusCode, e: WireError) -> ApiError {
    let mut kind =
        ErrorKind::from_google_status(&e.status).unwrap_or_else(|| ErrorKind::from_status(status));
    if kind == ErrorKind::InvalidRequest
        && e.message.contains("exceeds the maximum number of tokens")
    {
        kind = ErrorKind::ContextLengthExceeded;
    }
    ApiError {
        status,
        kind,
        message: e.message,
        code: (!e.status.is_empty()).then_some(e.status),
        param: None,
    }
}

/// Parses a Gemini error body (`{"error": {"code", "message", "status"}}`).
pub fn parse_error(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<WireErrorBody>(body) {
        Ok(b) => error_from_wire(status, b.error),
        Err(_) => status_error(status, body),
    }
}

/// Renders an error as `{"error": {"code", "message", "status"}}`.
pub fn render_error(err: &ApiError) -> Bytes {
    json_bytes(&WireErrorBody {
        error: WireError {
            code: err.status.as_u16(),
            message: err.message.clone(),
            status: err.kind.google_status().to_owned(),
        },
    })
}

// ---------------------------------------------------------------------------------------
// Streams.

/// Decodes a `streamGenerateContent?alt=sse` stream.
pub type GeminiStreamDecoder = FramedDecoder<SseParser, GeminiEvents>;

/// What a Gemini stream's chunks mean (see [`GeminiStreamDecoder`]).
#[derive(Debug, Default)]
pub struct GeminiEvents {
    started: bool,
    finished: bool,
    failed: bool,
    tools: u32,
    usage: Option<Usage>,
}

impl GeminiEvents {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let data = data.trim();
        if data.is_empty() || self.failed {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Payload(format!("gemini chunk is not json: {e}")))?;
        if let Some(err) = value.get("error") {
            let wire: WireError = serde_json::from_value(err.clone()).unwrap_or_default();
            let status =
                StatusCode::from_u16(wire.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            out.push(StreamEvent::Error(error_from_wire(status, wire)));
            self.failed = true;
            return Ok(());
        }
        let wire: WireResponse = serde_json::from_value(value)
            .map_err(|e| StreamError::Payload(format!("unexpected gemini chunk: {e}")))?;
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: wire.response_id.clone(),
                model: wire.model_version.clone(),
            });
        }
        let parsed = read_candidates(&wire);
        if let Some(text) = parsed.text.filter(|t| !t.is_empty()) {
            out.push(StreamEvent::TextDelta(text));
        }
        for call in parsed.calls {
            let index = self.tools;
            self.tools += 1;
            out.push(StreamEvent::ToolCallStart {
                index,
                id: call.id,
                name: call.name,
            });
            out.push(StreamEvent::ToolCallDelta {
                index,
                arguments: call.arguments,
            });
        }
        if let Some(usage) = &wire.usage_metadata {
            self.usage = Some(usage_from_wire(usage));
        }
        let finish = if parsed.blocked && wire.candidates.is_empty() {
            Some(FinishReason::ContentFilter)
        } else {
            parsed.finish.map(|f| finish_from_wire(&f, self.tools > 0))
        };
        if let Some(reason) = finish
            && !self.finished
        {
            self.finished = true;
            out.push(StreamEvent::Finish(reason));
        }
        Ok(())
    }
}

impl FrameHandler<SseEvent> for GeminiEvents {
    fn on_frame(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.on_data(&event.data, out)
    }

    fn on_end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if self.failed {
            return Ok(());
        }
        if !self.finished {
            return Err(StreamError::Truncated);
        }
        if let Some(usage) = self.usage.take() {
            out.push(StreamEvent::Usage(usage));
        }
        Ok(())
    }
}

/// Encodes canonical events as `streamGenerateContent?alt=sse` chunks. Function calls are
/// sent whole (as Gemini does), in the final chunk with the finish reason and usage.
#[derive(Debug)]
pub struct GeminiStreamEncoder {
    model: String,
    response_id: String,
    calls: BTreeMap<u32, ToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl GeminiStreamEncoder {
    /// An encoder reporting `model` as `modelVersion`.
    pub fn new(model: impl Into<String>) -> GeminiStreamEncoder {
        GeminiStreamEncoder {
            model: model.into(),
            response_id: uuid::Uuid::new_v4().simple().to_string(),
            calls: BTreeMap::new(),
            finish: None,
            usage: None,
            done: false,
        }
    }

    fn chunk(
        &self,
        parts: Vec<WirePart>,
        finish: Option<String>,
        usage: Option<WireUsage>,
    ) -> Bytes {
        data_frame(&json_string(&WireResponse {
            candidates: vec![WireCandidate {
                content: Some(WireContent {
                    role: Some("model".into()),
                    parts,
                }),
                finish_reason: finish,
                index: 0,
            }],
            prompt_feedback: None,
            usage_metadata: usage,
            model_version: (!self.model.is_empty()).then(|| self.model.clone()),
            response_id: Some(self.response_id.clone()),
        }))
    }
}

impl StreamEncoder for GeminiStreamEncoder {
    fn push(&mut self, event: &StreamEvent) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        match event {
            StreamEvent::Start { model, .. } => {
                if self.model.is_empty()
                    && let Some(m) = model
                {
                    self.model = m.clone();
                }
                Bytes::new()
            }
            StreamEvent::TextDelta(text) => self.chunk(
                vec![WirePart {
                    text: Some(text.clone()),
                    ..WirePart::default()
                }],
                None,
                None,
            ),
            StreamEvent::ToolCallStart { index, id, name } => {
                self.calls.insert(
                    *index,
                    ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                );
                Bytes::new()
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(call) = self.calls.get_mut(index) {
                    call.arguments.push_str(arguments);
                }
                Bytes::new()
            }
            StreamEvent::Finish(reason) => {
                self.finish = Some(reason.clone());
                Bytes::new()
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(*usage);
                Bytes::new()
            }
            StreamEvent::Error(err) => {
                self.done = true;
                data_frame(&String::from_utf8_lossy(&render_error(err)))
            }
        }
    }

    fn finish(&mut self) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        self.done = true;
        let mut parts: Vec<WirePart> = self.calls.values().map(call_part).collect();
        if parts.is_empty() {
            parts.push(WirePart {
                text: Some(String::new()),
                ..WirePart::default()
            });
        }
        let finish = finish_to_wire(self.finish.as_ref().unwrap_or(&FinishReason::Stop));
        self.chunk(parts, Some(finish), self.usage.as_ref().map(usage_to_wire))
    }
}

// ---------------------------------------------------------------------------------------
// Passthrough helpers.

/// The prompt of a Gemini request: the text parts of the last user (or role-less) entry of
/// `contents`, joined with newlines.
pub fn last_user_text(contents: &Value) -> Option<String> {
    contents
        .as_array()?
        .iter()
        .rev()
        .find(|c| matches!(super::role(c), None | Some("user")))
        .and_then(|c| {
            super::join_texts(
                c.get("parts")?
                    .as_array()?
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str)),
            )
        })
}

/// Reads usage from a `generateContent` body or one stream chunk's data, without
/// re-encoding it (for the passthrough path; in a stream, the last chunk's usage is final).
pub fn usage_from_response(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct U {
        usage_metadata: Option<WireUsage>,
    }
    serde_json::from_slice::<U>(body)
        .ok()?
        .usage_metadata
        .as_ref()
        .map(usage_from_wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::openai_chat;
    use crate::stream::StreamDecoder;
    use crate::stream::{decode_all, encode_all};
    use proptest::prelude::*;
    use serde_json::json;

    fn openai_request() -> ChatRequest {
        let body = json!({
            "model": "gemini/gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg?x=1"}}
                ]},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
                {"role": "assistant", "content": "21 degrees."},
                {"role": "user", "content": "and tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0.3, "top_p": 0.9, "max_tokens": 100, "stop": ["END"], "seed": 3,
            "presence_penalty": 0.5, "frequency_penalty": 0.25, "reasoning_effort": "low",
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
        });
        openai_chat::parse_request(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn openai_request_to_gemini_field_by_field() {
        let mut req = openai_request();
        req.messages[2]
            .content
            .insert(0, ContentPart::Text(String::new()));
        let body = render_request(&req, "gemini-2.5-flash").unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["systemInstruction"],
            json!({"parts": [{"text": "be brief"}]})
        );
        let contents = v["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 5);
        assert_eq!(contents[0]["role"], "user");
        assert_eq!(contents[0]["parts"][0]["text"], "weather in Paris?");
        assert_eq!(
            contents[0]["parts"][1]["inlineData"],
            json!({"mimeType": "image/png", "data": "iVBORw0KGgo="})
        );
        assert_eq!(
            contents[0]["parts"][2]["fileData"],
            json!({"mimeType": "image/jpeg", "fileUri": "https://example.com/a.jpg?x=1"})
        );
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"][0]["functionCall"],
            json!({"name": "get_weather", "args": {"city": "Paris"}})
        );
        assert!(contents[1]["parts"][0].get("thoughtSignature").is_none());
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"],
            json!({"name": "get_weather", "response": {"temp": 21}})
        );
        assert_eq!(contents[3]["parts"][0]["text"], "21 degrees.");
        assert_eq!(
            v["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["additionalProperties"],
            false
        );
        assert_eq!(
            v["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        let g = &v["generationConfig"];
        assert_eq!(g["temperature"], 0.3);
        assert_eq!(g["topP"], 0.9);
        assert_eq!(g["maxOutputTokens"], 100);
        assert_eq!(g["stopSequences"], json!(["END"]));
        assert_eq!(g["seed"], 3);
        assert_eq!(g["presencePenalty"], 0.5);
        assert_eq!(g["frequencyPenalty"], 0.25);
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(g["responseJsonSchema"], json!({"type": "object"}));
        assert_eq!(g["thinkingConfig"], json!({"thinkingBudget": 1024}));

        // Gemini 3: thinking level and a placeholder signature on the first call.
        let v: Value = serde_json::from_slice(
            &render_request(&openai_request(), "gemini-3-pro-preview").unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["generationConfig"]["thinkingConfig"],
            json!({"thinkingLevel": "low"})
        );
        assert_eq!(
            v["contents"][1]["parts"][0]["thoughtSignature"],
            PLACEHOLDER_SIGNATURE
        );
    }

    #[test]
    fn unknown_tool_result_id_is_an_error() {
        let mut req = openai_request();
        req.messages.remove(2);
        assert!(matches!(
            render_request(&req, "gemini-2.5-flash"),
            Err(LlmError::InvalidRequest { .. })
        ));
    }

    const RESPONSE: &str = r#"{
      "candidates": [{
        "content": {"parts": [
            {"text": "Checking. "},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}
          ], "role": "model"},
        "finishReason": "STOP", "index": 0
      }],
      "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 20, "totalTokenCount": 190,
        "cachedContentTokenCount": 100, "thoughtsTokenCount": 50,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]},
      "modelVersion": "gemini-2.5-flash",
      "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"
    }"#;

    #[test]
    fn gemini_response_to_openai_and_back() {
        let resp = parse_response(RESPONSE.as_bytes()).unwrap();
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.text.as_deref(), Some("Checking. "));
        assert_eq!(resp.model, "gemini-2.5-flash");
        assert_eq!(resp.id, "mAitaLmkHPPlz7IPvtfUqQ4");
        let call = &resp.tool_calls[0];
        assert_eq!(call.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(signature_from_call_id(&call.id), Some("c2lnbmF0dXJl"));
        let usage = resp.usage.unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens,
                usage.reasoning_tokens
            ),
            (120, 70, Some(100), Some(50))
        );
        let chat: Value = serde_json::from_slice(&openai_chat::render_response(&resp)).unwrap();
        assert_eq!(chat["usage"]["completion_tokens"], 70);
        assert_eq!(
            chat["usage"]["completion_tokens_details"]["reasoning_tokens"],
            50
        );
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");

        // The signature survives a round trip through an OpenAI client.
        let mut req = openai_request();
        req.messages[2].content = vec![ContentPart::ToolCall(call.clone())];
        if let ContentPart::ToolResult(r) = &mut req.messages[3].content[0] {
            r.call_id = call.id.clone();
        }
        let v: Value =
            serde_json::from_slice(&render_request(&req, "gemini-3-pro-preview").unwrap()).unwrap();
        assert_eq!(
            v["contents"][1]["parts"][0]["thoughtSignature"],
            "c2lnbmF0dXJl"
        );

        let rendered: Value = serde_json::from_slice(&render_response(&resp)).unwrap();
        assert_eq!(rendered["candidates"][0]["parts"], Value::Null);
        assert_eq!(
            rendered["candidates"][0]["content"]["parts"][1]["thoughtSignature"],
            "c2lnbmF0dXJl"
        );
        assert_eq!(rendered["usageMetadata"]["candidatesTokenCount"], 20);
        assert_eq!(rendered["usageMetadata"]["thoughtsTokenCount"], 50);
        assert_eq!(usage_from_response(RESPONSE.as_bytes()), Some(usage));
    }

    #[test]
    fn blocked_prompt_is_a_content_filter_finish() {
        let resp = parse_response(br#"{"promptFeedback": {"blockReason": "SAFETY"}}"#).unwrap();
        assert_eq!(resp.finish_reason, FinishReason::ContentFilter);
        assert_eq!(resp.text, None);
    }

    #[test]
    fn parses_a_gemini_client_request() {
        let body = json!({
            "systemInstruction": {"parts": [{"text": "You are a cat."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "weather?"}, {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT"}}]}, {"googleSearch": {}}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "b"]}},
            "generationConfig": {"temperature": 1.0, "topK": 40, "maxOutputTokens": 800,
                "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 0}},
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
        });
        let req = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.system_text().as_deref(), Some("You are a cat."));
        assert_eq!(req.messages.len(), 4);
        let call_id = req.messages[2].tool_calls().next().unwrap().id.clone();
        assert_eq!(
            req.messages[3].content[0],
            ContentPart::ToolResult(ToolResult {
                call_id,
                content: "sunny".into(),
                is_error: false
            })
        );
        assert_eq!(
            req.tool_choice,
            Some(ToolChoice::AnyOf(vec!["a".into(), "b".into()]))
        );
        assert_eq!(req.top_k, Some(40));
        assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
        assert_eq!(req.reasoning_effort.as_deref(), Some("none"));
        assert_eq!(req.untranslatable.len(), 2, "{:?}", req.untranslatable);
        assert_eq!(req.last_user_text().as_deref(), Some("weather?"));

        for (bad, field) in [
            (
                r#"{"contents": [{"role": "robot", "parts": []}]}"#,
                "contents[0].role",
            ),
            (r#"{"contents": [{"parts": [{}]}]}"#, "contents[0].parts[0]"),
            (
                r#"{"contents": [{"parts": [{"text": 5}]}]}"#,
                "contents[0].parts[0].text",
            ),
            (
                r#"{"generationConfig": {"temperature": "warm"}}"#,
                "generationConfig.temperature",
            ),
        ] {
            match parse_request(bad.as_bytes()) {
                Err(LlmError::InvalidRequest { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_parse_and_render() {
        let body = br#"{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}"#;
        let err = parse_error(StatusCode::TOO_MANY_REQUESTS, body);
        assert_eq!(err.kind, ErrorKind::RateLimited);
        let v: Value = serde_json::from_slice(&render_error(&err)).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}})
        );
    }

    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" weather\"}],\"role\": \"model\"},\"index\": 0}],\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 12,\"totalTokenCount\": 21},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n"
    );

    fn strip_ids(events: Vec<StreamEvent>) -> Vec<StreamEvent> {
        events
            .into_iter()
            .map(|e| match e {
                StreamEvent::ToolCallStart { index, name, .. } => StreamEvent::ToolCallStart {
                    index,
                    id: String::new(),
                    name,
                },
                StreamEvent::Start { .. } => StreamEvent::Start {
                    id: None,
                    model: None,
                },
                other => other,
            })
            .collect()
    }

    fn expected() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::TextDelta("The".into()),
            StreamEvent::TextDelta(" weather".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: String::new(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"city\":\"Paris\"}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 9,
                output_tokens: 12,
                ..Usage::default()
            }),
        ]
    }

    #[test]
    fn decodes_a_gemini_stream() {
        let events = decode_all(&mut GeminiStreamDecoder::new(), STREAM.as_bytes()).unwrap();
        assert!(
            matches!(&events[0], StreamEvent::Start { id: Some(id), model: Some(m) } if id == "r1" && m == "gemini-2.5-flash")
        );
        assert_eq!(strip_ids(events), expected());
        let cut = STREAM
            .find("data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall")
            .unwrap();
        assert_eq!(
            decode_all(&mut GeminiStreamDecoder::new(), &STREAM.as_bytes()[..cut]),
            Err(StreamError::Truncated)
        );
        let events = decode_all(
            &mut GeminiStreamDecoder::new(),
            b"data: {\"error\": {\"code\": 503, \"message\": \"overloaded\", \"status\": \"UNAVAILABLE\"}}\n\n",
        )
        .unwrap();
        assert!(
            matches!(&events[0], StreamEvent::Error(e) if e.kind == ErrorKind::Unavailable && e.status == 503)
        );
    }

    #[test]
    fn encoder_output_decodes_to_the_same_events() {
        let bytes = encode_all(
            &mut GeminiStreamEncoder::new("gemini-2.5-flash"),
            &expected(),
        );
        let events = decode_all(&mut GeminiStreamDecoder::new(), &bytes).unwrap();
        assert_eq!(strip_ids(events), expected());
        // Streamed OpenAI-style argument deltas arrive complete in one functionCall.
        let events = vec![
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
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
        ];
        let text =
            String::from_utf8(encode_all(&mut GeminiStreamEncoder::new("m"), &events).to_vec())
                .unwrap();
        assert!(
            text.contains("\"functionCall\":{\"name\":\"f\",\"args\":{\"a\":1}}"),
            "{text}"
        );
        assert!(text.contains("\"finishReason\":\"STOP\""));
    }

    proptest! {
        #[test]
        fn request_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&body);
        }

        #[test]
        fn stream_decoder_is_split_invariant(cuts in proptest::collection::vec(0usize..1200, 0..10)) {
            let input = STREAM.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut d = GeminiStreamDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                got.extend(d.push(&input[start..cut]).unwrap());
                start = cut;
            }
            got.extend(d.push(&input[start..]).unwrap());
            got.extend(d.finish().unwrap());
            prop_assert_eq!(strip_ids(got), expected());
        }

        #[test]
        fn stream_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = GeminiStreamDecoder::new();
            let _ = d.push(&body);
            let _ = d.finish();
        }
    }

    /// `parallel_tool_calls: false` is not refused: Gemini is asked as usual (or for exactly
    /// the named function), and the client gets the answer's first call only.
    #[test]
    fn parallel_tool_calls_false_is_honoured_on_the_way_back() {
        use crate::InboundFormat;
        let mut req = crate::dialect::openai_chat::parse_request(
            br#"{"model": "m", "messages": [{"role": "user", "content": "weather in Paris and Rome"}],
                "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
                "parallel_tool_calls": false}"#,
        )
        .unwrap();
        assert!(render_request(&req, "gemini-2.5-flash").is_ok());
        req.tool_choice = Some(ToolChoice::Function("weather".into()));
        let v: Value =
            serde_json::from_slice(&render_request(&req, "gemini-2.5-flash").unwrap()).unwrap();
        assert_eq!(
            v["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["weather"]})
        );

        // Two calls in one answer: the client sees the first.
        let two = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
            "finishReason": "STOP", "index": 0}]});
        let mut chat = parse_response(two.to_string().as_bytes()).unwrap();
        assert_eq!(chat.tool_calls.len(), 2);
        chat.keep_first_tool_call();
        let out: Value =
            serde_json::from_slice(&InboundFormat::OpenAiChat.render_response(&chat)).unwrap();
        let calls = out["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .contains("Paris")
        );

        // Streamed: the same, whatever the client's format.
        let stream = format!("data: {}\r\n\r\n", two);
        let events = decode_all(&mut GeminiStreamDecoder::new(), stream.as_bytes()).unwrap();
        for format in [
            InboundFormat::OpenAiChat,
            InboundFormat::OpenAiResponses,
            InboundFormat::Anthropic,
        ] {
            let mut one = format.stream_encoder(&req);
            let text =
                String::from_utf8(crate::stream::encode_all(&mut *one, &events).to_vec()).unwrap();
            assert!(
                text.contains("Paris") && !text.contains("Rome"),
                "{format:?}: {text}"
            );
            req.parallel_tool_calls = None;
            let mut both = format.stream_encoder(&req);
            let text =
                String::from_utf8(crate::stream::encode_all(&mut *both, &events).to_vec()).unwrap();
            assert!(
                text.contains("Paris") && text.contains("Rome"),
                "{format:?}: {text}"
            );
            req.parallel_tool_calls = Some(false);
        }
    }
}
