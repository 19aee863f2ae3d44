//! OpenAI Chat Completions (`POST /chat/completions`), also spoken by Azure OpenAI, NVIDIA
//! NIM and OpenAI-compatible servers.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    TextOr, bad_body, check_translatable, image_from_url, image_url, json_bytes, json_string,
    new_id, now_unix, parse_body, parse_object, request_bytes, status_error, unknown_keys,
};
use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Image, Message, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Untranslatable, Usage,
};
use crate::error::{ApiError, ErrorKind, LlmError, StreamError};
use crate::sse::{SseEvent, SseParser, data_frame, done_frame};
use crate::stream::{FrameHandler, FramedDecoder, StreamEncoder};

// ---------------------------------------------------------------------------------------
// Wire structs (both directions).

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireRequest {
    #[serde(default)]
    model: String,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<WireTool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    /// Not OpenAI's, but sent by clients that target several providers (LiteLLM, the Vercel
    /// AI SDK): Gemini's `topK`, Anthropic's `top_k`.
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<TextOr<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<WireStreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<String, String>>,
}

/// Top-level request fields this module understands.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "stream",
    "stream_options",
    "user",
    "metadata",
];

/// Fields that do not change the answer and are dropped when translating.
const IGNORED_FIELDS: &[&str] = &[
    "store",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
];

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireStreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    include_usage: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<TextOr<WirePart>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WirePart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_url: Option<WireImageUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireImageUrl {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireToolCall {
    #[serde(default)]
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function: Option<WireFunctionDef>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireFunctionDef {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireResponseFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    json_schema: Option<WireJsonSchema>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireJsonSchema {
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default = "completion_object")]
    object: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    message: WireMessage,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<WireCompletionDetails>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WirePromptDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct WireCompletionDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireChunk {
    #[serde(default)]
    id: String,
    #[serde(default = "chunk_object")]
    object: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: WireDelta,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<WireDeltaToolCall>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireDeltaToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function: Option<WireDeltaFunction>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireDeltaFunction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
struct WireErrorBody {
    error: WireError,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct WireError {
    #[serde(default)]
    message: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    code: Option<Value>,
}

// ---------------------------------------------------------------------------------------
// Requests.

/// Parses a client's Chat Completions body into the canonical request.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, LlmError> {
    let value = parse_object(body)?;
    let mut untranslatable: Vec<Untranslatable> = unknown_keys(&value, KNOWN_FIELDS)
        .into_iter()
        .filter(|k| !IGNORED_FIELDS.contains(&k.as_str()))
        .map(|k| Untranslatable::new(k, "field has no equivalent outside OpenAI chat completions"))
        .collect();
    let wire: WireRequest = parse_body(value)?;

    let mut messages = Vec::with_capacity(wire.messages.len());
    for (i, m) in wire.messages.into_iter().enumerate() {
        messages.push(message_from_wire(i, m, &mut untranslatable)?);
    }

    let mut tools = Vec::new();
    for (i, t) in wire.tools.unwrap_or_default().into_iter().enumerate() {
        match (t.kind.as_str(), t.function) {
            ("function", Some(f)) => tools.push(Tool {
                name: f.name,
                description: f.description,
                parameters: f.parameters,
                strict: f.strict,
            }),
            ("function", None) => {
                return Err(LlmError::invalid(
                    format!("tools[{i}].function"),
                    "missing function definition",
                ));
            }
            (kind, _) => untranslatable.push(Untranslatable::new(
                format!("tools[{i}]"),
                format!("tool type `{kind}`"),
            )),
        }
    }

    let tool_choice = match wire.tool_choice {
        None => None,
        Some(v) => tool_choice_from_wire(&v, &mut untranslatable)?,
    };
    let response_format = wire.response_format.map(format_from_wire).transpose()?;
    let stop = match wire.stop {
        None => Vec::new(),
        Some(TextOr::Text(s)) => vec![s],
        Some(TextOr::List(v)) => v,
    };
    if wire.top_logprobs.is_some_and(|n| n > 0) && wire.logprobs != Some(true) {
        return Err(LlmError::invalid(
            "top_logprobs",
            "requires `logprobs` to be true",
        ));
    }

    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        response_format,
        temperature: wire.temperature,
        top_p: wire.top_p,
        top_k: wire.top_k,
        max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
        stop,
        seed: wire.seed,
        presence_penalty: wire.presence_penalty,
        frequency_penalty: wire.frequency_penalty,
        n: wire.n,
        logprobs: wire.logprobs.unwrap_or(false),
        reasoning_effort: wire.reasoning_effort,
        stream: wire.stream.unwrap_or(false),
        stream_include_usage: wire
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        user: wire.user,
        metadata: wire.metadata.unwrap_or_default(),
        untranslatable,
    })
}

fn message_from_wire(
    i: usize,
    m: WireMessage,
    untranslatable: &mut Vec<Untranslatable>,
) -> Result<Message, LlmError> {
    let role = match m.role.as_str() {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        "function" => {
            untranslatable.push(Untranslatable::new(
                format!("messages[{i}]"),
                "legacy `function` role (use `tool`)",
            ));
            return Ok(Message {
                role: Role::Tool,
                content: Vec::new(),
                name: m.name,
            });
        }
        other => {
            return Err(LlmError::invalid(
                format!("messages[{i}].role"),
                format!("unknown role `{other}`"),
            ));
        }
    };
    let mut content = Vec::new();
    match m.content {
        None => {}
        Some(TextOr::Text(t)) => content.push(ContentPart::Text(t)),
        Some(TextOr::List(parts)) => {
            for (j, p) in parts.into_iter().enumerate() {
                let field = || format!("messages[{i}].content[{j}]");
                match p.kind.as_str() {
                    "text" | "input_text" => match p.text {
                        Some(t) => content.push(ContentPart::Text(t)),
                        None => return Err(LlmError::invalid(field() + ".text", "missing text")),
                    },
                    "refusal" => {
                        if let Some(r) = p.refusal {
                            content.push(ContentPart::Text(r));
                        }
                    }
                    "image_url" => match p.image_url {
                        Some(u) if role == Role::User => {
                            content.push(ContentPart::Image(image_from_url(u.url, u.detail)))
                        }
                        Some(_) => {
                            return Err(LlmError::invalid(
                                field(),
                                "images are only allowed in user messages",
                            ));
                        }
                        None => {
                            return Err(LlmError::invalid(
                                field() + ".image_url",
                                "missing image_url",
                            ));
                        }
                    },
                    other => untranslatable.push(Untranslatable::new(
                        field(),
                        format!("content type `{other}`"),
                    )),
                }
            }
        }
    }
    if let Some(r) = m.refusal
        && role == Role::Assistant
        && content.is_empty()
    {
        content.push(ContentPart::Text(r));
    }
    for (j, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
        if role != Role::Assistant {
            return Err(LlmError::invalid(
                format!("messages[{i}].tool_calls"),
                "only assistant messages have tool calls",
            ));
        }
        if call.kind != "function" {
            untranslatable.push(Untranslatable::new(
                format!("messages[{i}].tool_calls[{j}]"),
                format!("tool call type `{}`", call.kind),
            ));
            continue;
        }
        content.push(ContentPart::ToolCall(ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        }));
    }
    if role == Role::Tool {
        let Some(call_id) = m.tool_call_id else {
            return Err(LlmError::invalid(
                format!("messages[{i}].tool_call_id"),
                "tool messages need a tool_call_id",
            ));
        };
        let mut text = String::new();
        for part in content {
            match part {
                ContentPart::Text(t) => text.push_str(&t),
                _ => {
                    return Err(LlmError::invalid(
                        format!("messages[{i}].content"),
                        "tool messages hold text only",
                    ));
                }
            }
        }
        content = vec![ContentPart::ToolResult(ToolResult {
            call_id,
            content: text,
            is_error: false,
        })];
    } else if role.is_system() && content.iter().any(|p| !matches!(p, ContentPart::Text(_))) {
        return Err(LlmError::invalid(
            format!("messages[{i}].content"),
            "system and developer messages hold text only",
        ));
    }
    Ok(Message {
        role,
        content,
        name: m.name,
    })
}

fn tool_choice_from_wire(
    v: &Value,
    untranslatable: &mut Vec<Untranslatable>,
) -> Result<Option<ToolChoice>, LlmError> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(LlmError::invalid(
                "tool_choice",
                format!("unknown tool_choice `{other}`"),
            )),
        },
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
            if kind == "function" {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| LlmError::invalid("tool_choice.function.name", "missing"))?;
                Ok(Some(ToolChoice::Function(name.to_owned())))
            } else {
                untranslatable.push(Untranslatable::new(
                    "tool_choice",
                    format!("tool_choice type `{kind}`"),
                ));
                Ok(None)
            }
        }
        Value::Null => Ok(None),
        _ => Err(LlmError::invalid(
            "tool_choice",
            "expected a string or an object",
        )),
    }
}

fn format_from_wire(f: WireResponseFormat) -> Result<ResponseFormat, LlmError> {
    match f.kind.as_str() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let s = f.json_schema.ok_or_else(|| {
                LlmError::invalid("response_format.json_schema", "missing json_schema")
            })?;
            Ok(ResponseFormat::JsonSchema {
                name: s.name,
                description: s.description,
                schema: s
                    .schema
                    .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
                strict: s.strict,
            })
        }
        other => Err(LlmError::invalid(
            "response_format.type",
            format!("unknown response format `{other}`"),
        )),
    }
}

/// Which dialect of Chat Completions an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFlavor {
    /// OpenAI and Azure OpenAI: `max_completion_tokens`, `developer` role.
    OpenAi,
    /// NVIDIA NIM and other compatible servers: `max_tokens`, `developer` sent as `system`.
    Compatible,
}

/// Renders the canonical request as a Chat Completions body for an upstream.
/// With `stream`, asks for a final usage chunk so usage can always be accounted.
pub fn render_request(
    req: &ChatRequest,
    flavor: ChatFlavor,
    provider: &'static str,
) -> Result<Bytes, LlmError> {
    check_translatable(req, provider)?;
    if req.top_k.is_some() {
        return Err(LlmError::unsupported(
            provider,
            "top_k",
            "no top-k sampling",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        message_to_wire(i, m, flavor, &mut messages)?;
    }
    let tools = if req.tools.is_empty() {
        None
    } else {
        Some(
            req.tools
                .iter()
                .map(|t| WireTool {
                    kind: "function".into(),
                    function: Some(WireFunctionDef {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters: t.parameters.clone(),
                        strict: t.strict,
                    }),
                })
                .collect(),
        )
    };
    let tool_choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(Value::from("auto")),
        Some(ToolChoice::None) => Some(Value::from("none")),
        Some(ToolChoice::Required) => Some(Value::from("required")),
        Some(ToolChoice::Function(name)) => Some(function_choice(name)),
        Some(ToolChoice::AnyOf(names)) if names.len() == 1 => Some(function_choice(&names[0])),
        Some(ToolChoice::AnyOf(_)) => {
            return Err(LlmError::unsupported(
                provider,
                "tool_choice",
                "a choice among several named functions",
            ));
        }
    };
    let response_format = req.response_format.as_ref().map(|f| match f {
        ResponseFormat::Text => WireResponseFormat {
            kind: "text".into(),
            json_schema: None,
        },
        ResponseFormat::JsonObject => WireResponseFormat {
            kind: "json_object".into(),
            json_schema: None,
        },
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => WireResponseFormat {
            kind: "json_schema".into(),
            json_schema: Some(WireJsonSchema {
                name: name.clone(),
                description: description.clone(),
                schema: Some(schema.clone()),
                strict: *strict,
            }),
        },
    });
    let (max_tokens, max_completion_tokens) = match flavor {
        ChatFlavor::OpenAi => (None, req.max_tokens),
        ChatFlavor::Compatible => (req.max_tokens, None),
    };
    let wire = WireRequest {
        model: req.model.clone(),
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        response_format,
        temperature: req.temperature,
        top_p: req.top_p,
        // Refused above: no OpenAI-family upstream takes it.
        top_k: None,
        max_tokens,
        max_completion_tokens,
        stop: if req.stop.is_empty() {
            None
        } else {
            Some(TextOr::List(req.stop.clone()))
        },
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        n: None,
        logprobs: None,
        top_logprobs: None,
        reasoning_effort: req.reasoning_effort.clone(),
        stream: req.stream.then_some(true),
        stream_options: req.stream.then_some(WireStreamOptions {
            include_usage: Some(true),
        }),
        user: req.user.clone(),
        metadata: None,
    };
    request_bytes(&wire)
}

fn function_choice(name: &str) -> Value {
    let mut function = serde_json::Map::new();
    function.insert("name".into(), Value::from(name));
    let mut choice = serde_json::Map::new();
    choice.insert("type".into(), Value::from("function"));
    choice.insert("function".into(), Value::Object(function));
    Value::Object(choice)
}

fn message_to_wire(
    i: usize,
    m: &Message,
    flavor: ChatFlavor,
    out: &mut Vec<WireMessage>,
) -> Result<(), LlmError> {
    let role = match (m.role, flavor) {
        (Role::System, _) | (Role::Developer, ChatFlavor::Compatible) => "system",
        (Role::Developer, ChatFlavor::OpenAi) => "developer",
        (Role::User, _) => "user",
        (Role::Assistant, _) => "assistant",
        (Role::Tool, _) => {
            for part in &m.content {
                if let ContentPart::ToolResult(r) = part {
                    out.push(WireMessage {
                        role: "tool".into(),
                        content: Some(TextOr::Text(r.content.clone())),
                        tool_call_id: Some(r.call_id.clone()),
                        ..WireMessage::default()
                    });
                }
            }
            return Ok(());
        }
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for part in &m.content {
        match part {
            ContentPart::Text(t) => parts.push(WirePart {
                kind: "text".into(),
                text: Some(t.clone()),
                ..WirePart::default()
            }),
            ContentPart::Image(img) => {
                let detail = match img {
                    Image::Url { detail, .. } => detail.clone(),
                    Image::Base64 { .. } => None,
                };
                parts.push(WirePart {
                    kind: "image_url".into(),
                    image_url: Some(WireImageUrl {
                        url: image_url(img),
                        detail,
                    }),
                    ..WirePart::default()
                });
            }
            ContentPart::ToolCall(c) => tool_calls.push(WireToolCall {
                id: c.id.clone(),
                kind: "function".into(),
                function: WireFunctionCall {
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                },
            }),
            ContentPart::ToolResult(_) => {
                return Err(LlmError::invalid(
                    format!("messages[{i}]"),
                    "tool results belong in tool messages",
                ));
            }
        }
    }
    let all_text = parts.iter().all(|p| p.kind == "text");
    let content = if parts.is_empty() {
        if m.role == Role::Assistant && !tool_calls.is_empty() {
            None
        } else {
            Some(TextOr::Text(String::new()))
        }
    } else if all_text {
        Some(TextOr::Text(m.text()))
    } else {
        Some(TextOr::List(parts))
    };
    out.push(WireMessage {
        role: role.into(),
        content,
        name: m.name.clone(),
        tool_calls: if tool_calls.is_empty() {
            None
        } else {
            Some(tool_calls)
        },
        ..WireMessage::default()
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Responses.

fn finish_from_wire(reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ if has_tool_calls => FinishReason::ToolCalls,
        Some("stop") | None => FinishReason::Stop,
        Some(other) => FinishReason::Other(other.to_owned()),
    }
}

fn usage_from_wire(u: &WireUsage) -> Usage {
    Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        cached_input_tokens: u
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens),
        cache_write_input_tokens: None,
        reasoning_tokens: u
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens),
    }
}

fn usage_to_wire(u: &Usage) -> WireUsage {
    WireUsage {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        total_tokens: u.total_tokens(),
        prompt_tokens_details: u.cached_input_tokens.map(|n| WirePromptDetails {
            cached_tokens: Some(n),
        }),
        completion_tokens_details: u.reasoning_tokens.map(|n| WireCompletionDetails {
            reasoning_tokens: Some(n),
        }),
    }
}

/// Parses an upstream's 200 Chat Completions body.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, ApiError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| bad_body("chat completions", e))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::invalid_response("chat completion without choices"))?;
    let mut text: Option<String> = match choice.message.content {
        None => None,
        Some(TextOr::Text(t)) => Some(t),
        Some(TextOr::List(parts)) => Some(parts.into_iter().filter_map(|p| p.text).collect()),
    };
    if text.as_deref().is_none_or(str::is_empty)
        && let Some(r) = choice.message.refusal
    {
        text = Some(r);
    }
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| ToolCall {
            id: c.id,
            name: c.function.name,
            arguments: c.function.arguments,
        })
        .collect();
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: wire.created,
        text,
        finish_reason: finish_from_wire(choice.finish_reason.as_deref(), !tool_calls.is_empty()),
        tool_calls,
        usage: wire.usage.as_ref().map(usage_from_wire),
    })
}

/// Renders a canonical response as a Chat Completions body.
pub fn render_response(resp: &ChatResponse) -> Bytes {
    let tool_calls: Vec<WireToolCall> = resp
        .tool_calls
        .iter()
        .map(|c| WireToolCall {
            id: c.id.clone(),
            kind: "function".into(),
            function: WireFunctionCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        })
        .collect();
    let wire = WireResponse {
        id: if resp.id.is_empty() {
            new_id("chatcmpl-")
        } else {
            resp.id.clone()
        },
        object: completion_object(),
        created: if resp.created == 0 {
            now_unix()
        } else {
            resp.created
        },
        model: resp.model.clone(),
        choices: vec![WireChoice {
            index: 0,
            message: WireMessage {
                role: "assistant".into(),
                content: resp.text.clone().map(TextOr::Text),
                tool_calls: if tool_calls.is_empty() {
                    None
                } else {
                    Some(tool_calls)
                },
                ..WireMessage::default()
            },
            logprobs: None,
            finish_reason: Some(resp.finish_reason.as_openai().to_owned()),
        }],
        usage: resp.usage.as_ref().map(usage_to_wire),
    };
    json_bytes(&wire)
}

// ---------------------------------------------------------------------------------------
// Errors.

fn error_from_wire(status: StatusCode, e: WireError) -> ApiError {
    let code = match &e.code {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let kind = match (code.as_deref(), e.kind.as_deref()) {
        (Some("context_length_exceeded"), _) => ErrorKind::ContextLengthExceeded,
        (Some("rate_limit_exceeded" | "insufficient_quota"), _)
        | (_, Some("insufficient_quota" | "rate_limit_error" | "tokens" | "requests")) => {
            ErrorKind::RateLimited
        }
        _ => ErrorKind::from_status(status),
    };
    ApiError {
        status,
        kind,
        message: if e.message.is_empty() {
            format!("upstream error {status}")
        } else {
            e.message
        },
        code,
        param: e.param,
    }
}

/// Parses an OpenAI-style error body (`{"error": {"message", "type", "param", "code"}}`).
pub fn parse_error(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<WireErrorBody>(body) {
        Ok(b) => error_from_wire(status, b.error),
        Err(_) => status_error(status, body),
    }
}

/// Renders an error as `{"error": {"message", "type", "param", "code"}}`.
pub fn render_error(err: &ApiError) -> Bytes {
    json_bytes(&WireErrorBody {
        error: WireError {
            message: err.message.clone(),
            kind: Some(err.kind.openai_type().to_owned()),
            param: err.param.clone(),
            code: Some(err.code.clone().map(Value::from).unwrap_or(Value::Null)),
        },
    })
}

// ---------------------------------------------------------------------------------------
// Streams.

/// Decodes an upstream Chat Completions SSE stream.
pub type ChatStreamDecoder = FramedDecoder<SseParser, ChatEvents>;

/// What a Chat Completions stream's events mean (see [`ChatStreamDecoder`]).
#[derive(Debug, Default)]
pub struct ChatEvents {
    started: bool,
    finished: bool,
    done: bool,
    tools_started: BTreeSet<u32>,
}

impl ChatEvents {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Payload(format!("chat chunk is not json: {e}")))?;
        if let Some(err) = value.get("error") {
            let wire: WireError = serde_json::from_value(err.clone()).unwrap_or_default();
            out.push(StreamEvent::Error(error_from_wire(
                StatusCode::INTERNAL_SERVER_ERROR,
                wire,
            )));
            self.done = true;
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_value(value)
            .map_err(|e| StreamError::Payload(format!("unexpected chat chunk: {e}")))?;
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: (!chunk.id.is_empty()).then(|| chunk.id.clone()),
                model: (!chunk.model.is_empty()).then(|| chunk.model.clone()),
            });
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::TextDelta(text));
            }
            if let Some(text) = choice.delta.refusal.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::TextDelta(text));
            }
            for (pos, call) in choice
                .delta
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let index = call.index.unwrap_or(pos as u32);
                let function = call.function.unwrap_or_default();
                if !self.tools_started.contains(&index) {
                    self.tools_started.insert(index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: call.id.unwrap_or_else(|| new_id("call_")),
                        name: function.name.clone().unwrap_or_default(),
                    });
                }
                if let Some(args) = function.arguments.filter(|a| !a.is_empty()) {
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: args,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason
                && !self.finished
            {
                self.finished = true;
                out.push(StreamEvent::Finish(finish_from_wire(
                    Some(&reason),
                    !self.tools_started.is_empty(),
                )));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::Usage(usage_from_wire(&usage)));
        }
        Ok(())
    }
}

impl FrameHandler<SseEvent> for ChatEvents {
    fn on_frame(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.on_data(&event.data, out)
    }

    fn on_end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        if !self.done && !self.finished {
            return Err(StreamError::Truncated);
        }
        Ok(())
    }
}

/// Encodes canonical events as a Chat Completions SSE stream ending with `data: [DONE]`.
#[derive(Debug)]
pub struct ChatStreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    finished: bool,
    failed: bool,
    usage: Option<Usage>,
}

impl ChatStreamEncoder {
    /// An encoder reporting `model`; a final usage chunk is sent when `include_usage`.
    pub fn new(model: impl Into<String>, include_usage: bool) -> ChatStreamEncoder {
        ChatStreamEncoder {
            id: new_id("chatcmpl-"),
            model: model.into(),
            created: now_unix(),
            include_usage,
            started: false,
            finished: false,
            failed: false,
            usage: None,
        }
    }

    fn chunk(&self, delta: WireDelta, finish_reason: Option<String>) -> Bytes {
        data_frame(&json_string(&WireChunk {
            id: self.id.clone(),
            object: chunk_object(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![WireChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        }))
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            out.extend_from_slice(&self.chunk(
                WireDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..WireDelta::default()
                },
                None,
            ));
        }
    }
}

impl StreamEncoder for ChatStreamEncoder {
    fn push(&mut self, event: &StreamEvent) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        let mut out = Vec::new();
        match event {
            StreamEvent::Start { id, model } => {
                if !self.started {
                    if let Some(id) = id.as_ref().filter(|i| i.starts_with("chatcmpl")) {
                        self.id = id.clone();
                    }
                    if self.model.is_empty()
                        && let Some(model) = model
                    {
                        self.model = model.clone();
                    }
                }
                self.start(&mut out);
            }
            StreamEvent::TextDelta(text) => {
                self.start(&mut out);
                out.extend_from_slice(&self.chunk(
                    WireDelta {
                        content: Some(text.clone()),
                        ..WireDelta::default()
                    },
                    None,
                ));
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(&mut out);
                out.extend_from_slice(&self.chunk(
                    WireDelta {
                        tool_calls: Some(vec![WireDeltaToolCall {
                            index: Some(*index),
                            id: Some(id.clone()),
                            kind: Some("function".into()),
                            function: Some(WireDeltaFunction {
                                name: Some(name.clone()),
                                arguments: Some(String::new()),
                            }),
                        }]),
                        ..WireDelta::default()
                    },
                    None,
                ));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.start(&mut out);
                out.extend_from_slice(&self.chunk(
                    WireDelta {
                        tool_calls: Some(vec![WireDeltaToolCall {
                            index: Some(*index),
                            function: Some(WireDeltaFunction {
                                name: None,
                                arguments: Some(arguments.clone()),
                            }),
                            ..WireDeltaToolCall::default()
                        }]),
                        ..WireDelta::default()
                    },
                    None,
                ));
            }
            StreamEvent::Finish(reason) => {
                self.start(&mut out);
                if !self.finished {
                    self.finished = true;
                    out.extend_from_slice(
                        &self.chunk(WireDelta::default(), Some(reason.as_openai().to_owned())),
                    );
                }
            }
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error(err) => {
                self.failed = true;
                out.extend_from_slice(&data_frame(&String::from_utf8_lossy(&render_error(err))));
            }
        }
        Bytes::from(out)
    }

    fn finish(&mut self) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        let mut out = Vec::new();
        if self.include_usage
            && let Some(usage) = &self.usage
        {
            out.extend_from_slice(&data_frame(&json_string(&WireChunk {
                id: self.id.clone(),
                object: chunk_object(),
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(usage_to_wire(usage)),
            })));
        }
        out.extend_from_slice(&done_frame());
        self.failed = true;
        Bytes::from(out)
    }
}

// ---------------------------------------------------------------------------------------
// Passthrough helpers.

/// The prompt of a Chat Completions request: the text of the last user message in
/// `messages` (text parts joined with newlines; images and other parts skipped).
pub fn last_user_text(messages: &Value) -> Option<String> {
    messages
        .as_array()?
        .iter()
        .rev()
        .find(|m| super::role(m) == Some("user"))
        .and_then(|m| super::prompt_content_text(m.get("content")?))
}

/// Reads usage from a Chat Completions response body without re-encoding it.
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

/// Reads usage from one chunk's `data:` text (the last chunk when
/// `stream_options.include_usage` is set).
pub fn usage_from_chunk(data: &str) -> Option<Usage> {
    usage_from_response(data.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::StreamDecoder;
    use crate::stream::{decode_all, encode_all};
    use proptest::prelude::*;

    const FULL_REQUEST: &str = r#"{
        "model": "openai/gpt-4.1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "use tools"}]},
            {"role": "user", "content": [
                {"type": "text", "text": "what is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"},
            {"role": "user", "content": "thanks", "name": "ann"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather by city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
        "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 256, "stop": "END", "seed": 7,
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "reasoning_effort": "low",
        "stream": true, "stream_options": {"include_usage": true},
        "user": "u-1", "metadata": {"team": "support"}, "store": false
    }"#;

    #[test]
    fn parses_a_full_request() {
        let req = parse_request(FULL_REQUEST.as_bytes()).unwrap();
        assert_eq!(req.model, "openai/gpt-4.1");
        assert_eq!(req.messages.len(), 6);
        assert_eq!(req.messages[1].role, Role::Developer);
        assert_eq!(
            req.messages[2].content[1],
            ContentPart::Image(Image::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            })
        );
        assert_eq!(
            req.messages[3].tool_calls().next().unwrap().arguments,
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            req.messages[4].content,
            vec![ContentPart::ToolResult(ToolResult {
                call_id: "call_1".into(),
                content: "{\"temp\":21}".into(),
                is_error: false
            })]
        );
        assert_eq!(req.messages[5].name.as_deref(), Some("ann"));
        assert_eq!(req.tools[0].strict, Some(true));
        assert_eq!(
            req.tool_choice,
            Some(ToolChoice::Function("get_weather".into()))
        );
        assert!(matches!(
            req.response_format,
            Some(ResponseFormat::JsonSchema { ref name, .. }) if name == "answer"
        ));
        assert_eq!(req.max_tokens, Some(256));
        assert_eq!(req.stop, vec!["END".to_string()]);
        assert!(req.stream && req.stream_include_usage);
        assert_eq!(req.metadata["team"], "support");
        assert!(req.untranslatable.is_empty(), "{:?}", req.untranslatable);
        assert_eq!(req.last_user_text().as_deref(), Some("thanks"));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (
                r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                "messages[0].content",
            ),
            (r#"{"messages": "hi"}"#, "messages"),
            (r#"{"messages": [], "temperature": "hot"}"#, "temperature"),
            (
                r#"{"messages": [{"role": "tool", "content": "x"}]}"#,
                "messages[0].tool_call_id",
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "messages[0].content[0].image_url",
            ),
            (r#"{"messages": [], "tool_choice": "maybe"}"#, "tool_choice"),
            (r#"{"model": "x"}"#, ""),
            (r#"[1, 2]"#, ""),
            (r#"{"messages": [{"role": "user", "content": "x"}"#, ""),
        ];
        for (body, field) in cases {
            match parse_request(body.as_bytes()) {
                Err(LlmError::InvalidRequest { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_features_are_recorded_not_dropped() {
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}],
            "tools": [{"type": "custom", "custom": {"name": "x"}}],
            "modalities": ["text", "audio"], "service_tier": "auto"}"#;
        let req = parse_request(body.as_bytes()).unwrap();
        assert_eq!(req.untranslatable.len(), 3, "{:?}", req.untranslatable);
        assert!(
            req.untranslatable
                .iter()
                .any(|u| u.to_string().starts_with("modalities"))
        );
        let err = render_request(&req, ChatFlavor::OpenAi, "openai").unwrap_err();
        assert!(matches!(err, LlmError::Unsupported { .. }));
    }

    #[test]
    fn neutral_values_pass_and_changing_values_are_refused() {
        // What real clients send at its default: changes nothing, so it is translatable.
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": {}, "modalities": ["text"], "prediction": null, "audio": null,
            "web_search_options": null}"#;
        let req = parse_request(body.as_bytes()).unwrap();
        assert!(req.untranslatable.is_empty(), "{:?}", req.untranslatable);
        let gemini: Value =
            serde_json::from_slice(&super::super::gemini::render_request(&req, "g").unwrap())
                .unwrap();
        assert!(gemini.get("logit_bias").is_none() && gemini.get("modalities").is_none());
        // A value that would change the answer is still refused.
        for (field, value) in [
            ("logit_bias", r#"{"50256": -100}"#),
            ("modalities", r#"["text", "audio"]"#),
            ("modalities", r#"["audio"]"#),
            ("prediction", r#"{"type": "content", "content": "x"}"#),
        ] {
            let body = format!(
                r#"{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "{field}": {value}}}"#
            );
            let req = parse_request(body.as_bytes()).unwrap();
            assert_eq!(req.untranslatable.len(), 1, "{body}");
            assert!(
                req.untranslatable[0].to_string().starts_with(field),
                "{body}"
            );
        }
    }

    #[test]
    fn top_k_is_read_for_providers_that_have_it() {
        let body =
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 40}"#;
        let req = parse_request(body.as_bytes()).unwrap();
        assert_eq!(req.top_k, Some(40));
        let gemini: Value =
            serde_json::from_slice(&super::super::gemini::render_request(&req, "g").unwrap())
                .unwrap();
        assert_eq!(gemini["generationConfig"]["topK"], 40);
        // OpenAI-family upstreams have none: refused when translating there.
        assert!(matches!(
            render_request(&req, ChatFlavor::OpenAi, "openai"),
            Err(LlmError::Unsupported { field, .. }) if field == "top_k"
        ));
    }

    #[test]
    fn renders_for_openai_and_compatible_upstreams() {
        let req = parse_request(FULL_REQUEST.as_bytes()).unwrap();
        let body = render_request(&req, ChatFlavor::OpenAi, "openai").unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["max_completion_tokens"], 256);
        assert!(v.get("max_tokens").is_none());
        assert_eq!(v["messages"][1]["role"], "developer");
        assert_eq!(v["messages"][3]["content"], Value::Null);
        assert_eq!(
            v["messages"][3]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(v["messages"][4]["tool_call_id"], "call_1");
        assert_eq!(
            v["messages"][2]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBORw0KGgo="
        );
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stop"], serde_json::json!(["END"]));
        assert_eq!(v["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(v["response_format"]["json_schema"]["strict"], true);

        let body = render_request(&req, ChatFlavor::Compatible, "nvidia").unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["max_tokens"], 256);
        assert_eq!(v["messages"][1]["role"], "system");

        // Rendering and parsing again gives the same canonical request.
        let again =
            parse_request(&render_request(&req, ChatFlavor::OpenAi, "openai").unwrap()).unwrap();
        assert_eq!(again.messages, req.messages);
        assert_eq!(again.tools, req.tools);
    }

    #[test]
    fn response_round_trip() {
        let body = br#"{
          "id": "chatcmpl-123", "object": "chat.completion", "created": 1741569952,
          "model": "gpt-4.1-2025-04-14",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
             "tool_calls": [{"id": "call_abc", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
             "refusal": null, "annotations": []},
             "logprobs": null, "finish_reason": "tool_calls"}],
          "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
             "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 4}},
          "service_tier": "default"}"#;
        let resp = parse_response(body).unwrap();
        assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
        assert_eq!(resp.tool_calls[0].id, "call_abc");
        let usage = resp.usage.unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens,
                usage.reasoning_tokens
            ),
            (19, 10, Some(3), Some(4))
        );
        let again = parse_response(&render_response(&resp)).unwrap();
        assert_eq!(again, resp);
        assert_eq!(usage_from_response(body), Some(usage));
        assert!(parse_response(b"{\"choices\": []}").is_err());
        assert!(parse_response(b"<html>").is_err());
    }

    #[test]
    fn errors_parse_and_render() {
        let body = br#"{"error": {"message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}"#;
        let err = parse_error(StatusCode::BAD_REQUEST, body);
        assert_eq!(err.kind, ErrorKind::ContextLengthExceeded);
        assert_eq!(err.param.as_deref(), Some("messages"));
        let rendered: Value = serde_json::from_slice(&render_error(&err)).unwrap();
        assert_eq!(rendered["error"]["type"], "invalid_request_error");
        assert_eq!(rendered["error"]["code"], "context_length_exceeded");

        let err = parse_error(StatusCode::TOO_MANY_REQUESTS, b"upstream overloaded");
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.message, "upstream overloaded");
    }

    const TOOL_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9,\"total_tokens\":29}}\n\n",
        "data: [DONE]\n\n"
    );

    fn tool_stream_events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: Some("chatcmpl-1".into()),
                model: Some("gpt-4.1".into()),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_a".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"ci".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "ty\":\"Paris\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_b".into(),
                name: "get_time".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 20,
                output_tokens: 9,
                ..Usage::default()
            }),
        ]
    }

    #[test]
    fn decodes_streamed_tool_calls_in_order() {
        let events = decode_all(&mut ChatStreamDecoder::new(), TOOL_STREAM.as_bytes()).unwrap();
        assert_eq!(events, tool_stream_events());
    }

    #[test]
    fn truncated_stream_and_error_event() {
        let finish_at = TOOL_STREAM.find("\"finish_reason\":\"tool_calls").unwrap();
        let event_start = TOOL_STREAM[..finish_at].rfind("data:").unwrap();
        assert_eq!(
            decode_all(
                &mut ChatStreamDecoder::new(),
                &TOOL_STREAM.as_bytes()[..event_start]
            ),
            Err(StreamError::Truncated)
        );
        assert!(
            decode_all(
                &mut ChatStreamDecoder::new(),
                &TOOL_STREAM.as_bytes()[..finish_at]
            )
            .is_err()
        );
        let events = decode_all(
            &mut ChatStreamDecoder::new(),
            b"data: {\"error\": {\"message\": \"overloaded\", \"type\": \"server_error\"}}\n\n",
        )
        .unwrap();
        assert!(matches!(&events[0], StreamEvent::Error(e) if e.message == "overloaded"));
        assert!(decode_all(&mut ChatStreamDecoder::new(), b"data: {not json\n\n").is_err());
    }

    #[test]
    fn encoder_output_decodes_to_the_same_events() {
        let mut enc = ChatStreamEncoder::new("gpt-4.1", true);
        let bytes = encode_all(&mut enc, &tool_stream_events());
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"role\":\"assistant\""));
        let events = decode_all(&mut ChatStreamDecoder::new(), &bytes).unwrap();
        assert_eq!(&events[1..], &tool_stream_events()[1..]);

        // Without include_usage there is no usage chunk.
        let mut enc = ChatStreamEncoder::new("gpt-4.1", false);
        let bytes = encode_all(&mut enc, &tool_stream_events());
        assert!(!String::from_utf8_lossy(&bytes).contains("\"usage\""));
    }

    #[test]
    fn encoder_renders_errors_in_stream() {
        let mut enc = ChatStreamEncoder::new("m", false);
        let bytes = encode_all(
            &mut enc,
            &[
                StreamEvent::TextDelta("hi".into()),
                StreamEvent::Error(ApiError::new(ErrorKind::Unavailable, "gone")),
            ],
        );
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("\"error\":{\"message\":\"gone\",\"type\":\"server_error\""));
        assert!(!text.contains("[DONE]"));
    }

    proptest! {
        #[test]
        fn request_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&body);
        }

        #[test]
        fn request_parser_survives_mutated_json(cut in 0usize..1500, byte in any::<u8>()) {
            let mut body = FULL_REQUEST.as_bytes().to_vec();
            let i = cut % body.len();
            body[i] = byte;
            let _ = parse_request(&body);
            let _ = parse_request(&body[..i]);
        }

        #[test]
        fn stream_decoder_is_split_invariant(cuts in proptest::collection::vec(0usize..3000, 0..10)) {
            let input = TOOL_STREAM.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut d = ChatStreamDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                got.extend(d.push(&input[start..cut]).unwrap());
                start = cut;
            }
            got.extend(d.push(&input[start..]).unwrap());
            got.extend(d.finish().unwrap());
            prop_assert_eq!(got, tool_stream_events());
        }

        #[test]
        fn stream_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = ChatStreamDecoder::new();
            let _ = d.push(&body);
            let _ = d.finish();
        }
    }
}
