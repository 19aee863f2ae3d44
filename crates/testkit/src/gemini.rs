//! `MockGemini`: a local stand-in for the Gemini API (`generativelanguage.googleapis.com`):
//! `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (SSE with
//! `?alt=sse`, a JSON array without), also under `/v1/`.
//!
//! It checks what it receives the way the real API does: the key (`x-goog-api-key` or
//! `?key=`), the model, the `GenerateContentRequest` fields (unknown names refused; proto
//! JSON accepts both `camelCase` and `snake_case`), roles, parts (exactly one data field),
//! function declarations and responses, generation config types and ranges; errors come as
//! `{"error": {"code", "message", "status"}}`. Answers follow [`crate::script`]; streams are
//! SSE events ending in `\r\n\r\n` like Google's, with `usageMetadata` on every chunk.

use std::ops::Deref;

use axum::response::Response;
use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value, json};

use crate::script::{self, Conversation, Last, Reply, decide, text_pieces, words};
use crate::server::{
    Behavior, Exchange, Handler, MockServer, ReportedUsage, json_response, type_name,
};

/// The key a default mock expects.
pub const GEMINI_API_KEY: &str = "AIza-mock-key";

/// What a Gemini mock is started with.
#[derive(Debug, Clone)]
pub struct GeminiConfig {
    pub api_key: String,
    /// The models it serves (`gemini-2.5-flash`, …).
    pub models: Vec<String>,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        GeminiConfig {
            api_key: GEMINI_API_KEY.to_owned(),
            models: [
                "gemini-2.5-flash",
                "gemini-2.5-pro",
                "gemini-2.5-flash-lite",
                "gemini-3-pro-preview",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// A running Gemini mock (API host `http://127.0.0.1:PORT`); stopped when dropped.
pub struct MockGemini {
    server: MockServer,
}

impl Deref for MockGemini {
    type Target = MockServer;
    fn deref(&self) -> &MockServer {
        &self.server
    }
}

impl MockGemini {
    pub async fn start() -> std::io::Result<MockGemini> {
        Self::start_with(GeminiConfig::default()).await
    }

    pub async fn start_with(config: GeminiConfig) -> std::io::Result<MockGemini> {
        Ok(MockGemini {
            server: MockServer::start(GeminiHandler { config }).await?,
        })
    }

    /// The host to configure a route with (`url`): the gateway appends `/v1beta/models/…`.
    pub fn base_url(&self) -> String {
        self.server.origin()
    }
}

struct GeminiHandler {
    config: GeminiConfig,
}

/// A `google.rpc.Status` error.
#[derive(Debug)]
struct Status {
    code: u16,
    status: &'static str,
    message: String,
}

impl Status {
    fn invalid(message: impl Into<String>) -> Status {
        Status {
            code: 400,
            status: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    fn response(&self) -> Response {
        json_response(
            self.code,
            &json!({"error": {"code": self.code, "message": self.message, "status": self.status}}),
        )
    }
}

impl Handler for GeminiHandler {
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
                &json!({"error": {"code": status, "message": message, "status": code}}),
            );
        }
        let key = req.header("x-goog-api-key").or(req.query_param("key"));
        match key {
            None => {
                return Status {
                    code: 403,
                    status: "PERMISSION_DENIED",
                    message: "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.".into(),
                }
                .response();
            }
            Some(k) if k != self.config.api_key => {
                return json_response(
                    400,
                    &json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                        "status": "INVALID_ARGUMENT",
                        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                     "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]}}),
                );
            }
            Some(_) => {}
        }
        let path = req.path.as_str();
        let rest = path
            .strip_prefix("/v1beta/models/")
            .or_else(|| path.strip_prefix("/v1/models/"));
        let Some((model, method)) = rest.and_then(|r| r.rsplit_once(':')) else {
            return Status {
                code: 404,
                status: "NOT_FOUND",
                message: format!("The requested URL {path} was not found on this server."),
            }
            .response();
        };
        let stream = match method {
            "generateContent" => false,
            "streamGenerateContent" => true,
            _ => {
                return Status {
                    code: 404,
                    status: "NOT_FOUND",
                    message: format!("The requested URL {path} was not found on this server."),
                }
                .response();
            }
        };
        if req.method != Method::POST {
            return Status {
                code: 405,
                status: "UNIMPLEMENTED",
                message: "Method not allowed".into(),
            }
            .response();
        }
        if !self.config.models.iter().any(|m| m == model) {
            return Status {
                code: 404,
                status: "NOT_FOUND",
                message: format!(
                    "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
                ),
            }
            .response();
        }
        let conv = match check_request(&req.body) {
            Ok(c) => c,
            Err(e) => return e.response(),
        };
        let reply = decide(model, &conv);
        let usage = script::usage(&conv, &reply);
        ex.report(usage);
        let sse = req.query_param("alt") == Some("sse");
        answer(ex, model, &reply, &usage, stream, sse)
    }
}

const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "labels",
];

const GENERATION_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "mediaResolution",
];

const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
];

/// `snake_case` → `camelCase` (proto JSON accepts both).
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// An object's fields under their camelCase names, refusing unknown ones.
fn fields(value: &Value, known: &[&str], path: &str) -> Result<Map<String, Value>, Status> {
    let Some(obj) = value.as_object() else {
        return Err(Status::invalid(format!(
            "Invalid value at '{path}' ({}), expected an object",
            type_name(value)
        )));
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let name = camel(k);
        if !known.contains(&name.as_str()) {
            return Err(Status::invalid(format!(
                "Invalid JSON payload received. Unknown name \"{k}\" at '{path}': Cannot find field."
            )));
        }
        out.insert(name, v.clone());
    }
    Ok(out)
}

fn check_request(body: &[u8]) -> Result<Conversation, Status> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Status::invalid(format!(
            "Invalid JSON payload received. Unexpected token. ({e})"
        ))
    })?;
    let req = fields(&value, REQUEST_FIELDS, "")?;
    let mut total = 0;
    if let Some(system) = req.get("systemInstruction") {
        let system = fields(system, &["parts", "role"], "system_instruction")?;
        for part in system
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                total += words(t);
            }
        }
    }
    let tools = check_tools(&req)?;
    let no_tools = match req.get("toolConfig") {
        None => false,
        Some(tc) => {
            let tc = fields(
                tc,
                &["functionCallingConfig", "retrievalConfig"],
                "tool_config",
            )?;
            let mode = tc
                .get("functionCallingConfig")
                .map(|f| {
                    fields(
                        f,
                        &["mode", "allowedFunctionNames"],
                        "tool_config.function_calling_config",
                    )
                })
                .transpose()?
                .and_then(|f| f.get("mode").and_then(Value::as_str).map(str::to_owned));
            match mode.as_deref() {
                None | Some("AUTO" | "ANY" | "VALIDATED" | "MODE_UNSPECIFIED") => false,
                Some("NONE") => true,
                Some(other) => {
                    return Err(Status::invalid(format!(
                        "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{other}\""
                    )));
                }
            }
        }
    };
    if let Some(config) = req.get("generationConfig") {
        check_generation_config(config)?;
    }
    let contents = match req.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        Some(Value::Array(_)) | None => {
            return Err(Status::invalid(
                "* GenerateContentRequest.contents: contents is not specified\n",
            ));
        }
        Some(other) => {
            return Err(Status::invalid(format!(
                "Invalid value at 'contents' ({}), expected a list",
                type_name(other)
            )));
        }
    };
    let mut last = Last::Other;
    let mut called: Vec<String> = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let content = fields(content, &["parts", "role"], &format!("contents[{i}]"))?;
        let role = match content.get("role") {
            None => "user",
            Some(Value::String(r)) if r == "user" || r == "model" => r.as_str(),
            Some(Value::String(r)) if r.is_empty() => "user",
            Some(_) => return Err(Status::invalid("Please use a valid role: user, model.")),
        };
        let parts = match content.get("parts") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            _ => {
                return Err(Status::invalid(format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
                )));
            }
        };
        let mut result = None;
        for (j, part) in parts.iter().enumerate() {
            let path = format!("contents[{i}].parts[{j}]");
            let part = fields(
                part,
                &[
                    "text",
                    "inlineData",
                    "functionCall",
                    "functionResponse",
                    "fileData",
                    "executableCode",
                    "codeExecutionResult",
                    "thought",
                    "thoughtSignature",
                    "videoMetadata",
                    "mediaResolution",
                ],
                &path,
            )?;
            let data: Vec<&str> = PART_DATA
                .iter()
                .copied()
                .filter(|k| part.contains_key(*k))
                .collect();
            if data.len() != 1 {
                return Err(Status::invalid(format!(
                    "* GenerateContentRequest.{path}.data: required oneof field 'data' must have one initialized field\n"
                )));
            }
            match data[0] {
                "text" => match part.get("text") {
                    Some(Value::String(t)) => total += words(t),
                    _ => {
                        return Err(Status::invalid(format!(
                            "Invalid value at '{path}.text', expected a string"
                        )));
                    }
                },
                "inlineData" => {
                    let blob = fields(
                        &part["inlineData"],
                        &["mimeType", "data"],
                        &format!("{path}.inline_data"),
                    )?;
                    let mime = blob
                        .get("mimeType")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let data = blob.get("data").and_then(Value::as_str).unwrap_or_default();
                    if mime.is_empty() || data.is_empty() {
                        return Err(Status::invalid(format!(
                            "* GenerateContentRequest.{path}.inline_data: mime_type and data must be set\n"
                        )));
                    }
                    if data
                        .bytes()
                        .any(|b| !(b.is_ascii_alphanumeric() || b"+/=-_".contains(&b)))
                    {
                        return Err(Status::invalid(format!(
                            "Invalid value at '{path}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                        )));
                    }
                }
                "fileData" => {
                    let file = fields(
                        &part["fileData"],
                        &["mimeType", "fileUri"],
                        &format!("{path}.file_data"),
                    )?;
                    if file.get("fileUri").and_then(Value::as_str).is_none() {
                        return Err(Status::invalid(format!(
                            "* GenerateContentRequest.{path}.file_data.file_uri: file_uri must be set\n"
                        )));
                    }
                }
                "functionCall" => {
                    if role != "model" {
                        return Err(Status::invalid(
                            "Please ensure that function call turn comes immediately after a user turn or after a function response turn.",
                        ));
                    }
                    let call = fields(
                        &part["functionCall"],
                        &["name", "args", "id"],
                        &format!("{path}.function_call"),
                    )?;
                    let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() {
                        return Err(Status::invalid(format!(
                            "* GenerateContentRequest.{path}.function_call.name: name must not be empty\n"
                        )));
                    }
                    if let Some(args) = call.get("args")
                        && !args.is_object()
                    {
                        return Err(Status::invalid(format!(
                            "Invalid value at '{path}.function_call.args' (type.googleapis.com/google.protobuf.Struct), expected an object"
                        )));
                    }
                    called.push(name.to_owned());
                }
                "functionResponse" => {
                    let resp = fields(
                        &part["functionResponse"],
                        &[
                            "name",
                            "response",
                            "id",
                            "willContinue",
                            "scheduling",
                            "parts",
                        ],
                        &format!("{path}.function_response"),
                    )?;
                    let name = resp.get("name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() {
                        return Err(Status::invalid(format!(
                            "* GenerateContentRequest.{path}.function_response.name: name must not be empty\n"
                        )));
                    }
                    if !called.iter().any(|c| c == name) {
                        return Err(Status::invalid(
                            "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
                        ));
                    }
                    let Some(Value::Object(response)) = resp.get("response") else {
                        return Err(Status::invalid(format!(
                            "Invalid value at '{path}.function_response.response' (type.googleapis.com/google.protobuf.Struct), expected an object"
                        )));
                    };
                    let text = ["output", "result", "content"]
                        .iter()
                        .find_map(|k| response.get(*k).and_then(Value::as_str))
                        .map(str::to_owned)
                        .unwrap_or_else(|| Value::Object(response.clone()).to_string());
                    total += words(&text);
                    result = Some(text);
                }
                _ => {}
            }
        }
        last = match (role, result) {
            (_, Some(r)) => Last::ToolResult(r),
            ("user", None) => Last::User,
            _ => Last::Other,
        };
    }
    Ok(Conversation {
        last,
        tools,
        no_tools,
        words: total,
        directive: None,
    })
}

fn check_tools(req: &Map<String, Value>) -> Result<Vec<String>, Status> {
    let Some(tools) = req.get("tools") else {
        return Ok(Vec::new());
    };
    let Some(tools) = tools.as_array() else {
        return Err(Status::invalid("Invalid value at 'tools', expected a list"));
    };
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let tool = fields(
            tool,
            &[
                "functionDeclarations",
                "googleSearch",
                "googleSearchRetrieval",
                "codeExecution",
                "urlContext",
                "computerUse",
                "fileSearch",
                "googleMaps",
            ],
            &format!("tools[{i}]"),
        )?;
        for (j, decl) in tool
            .get("functionDeclarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = format!("tools[{i}].function_declarations[{j}]");
            let decl = fields(
                decl,
                &[
                    "name",
                    "description",
                    "parameters",
                    "parametersJsonSchema",
                    "response",
                    "responseJsonSchema",
                    "behavior",
                ],
                &path,
            )?;
            let name = decl.get("name").and_then(Value::as_str).unwrap_or_default();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(Status::invalid(format!(
                    "* GenerateContentRequest.{path}.name: Invalid function name. Must start with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a maximum length of 64.\n"
                )));
            }
            if decl.contains_key("parameters") && decl.contains_key("parametersJsonSchema") {
                return Err(Status::invalid(format!(
                    "* GenerateContentRequest.{path}: parameters and parameters_json_schema are mutually exclusive\n"
                )));
            }
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn check_generation_config(config: &Value) -> Result<(), Status> {
    let config = fields(config, GENERATION_FIELDS, "generation_config")?;
    let number = |k: &str, min: f64, max: f64| -> Result<(), Status> {
        match config.get(k) {
            None => Ok(()),
            Some(v) => match v.as_f64() {
                Some(x) if (min..=max).contains(&x) => Ok(()),
                Some(_) => Err(Status::invalid(format!(
                    "* GenerateContentRequest.generation_config.{k}: {k} must be in the range [{min}, {max}]\n"
                ))),
                None => Err(Status::invalid(format!(
                    "Invalid value at 'generation_config.{k}' (TYPE_FLOAT), {v}"
                ))),
            },
        }
    };
    number("temperature", 0.0, 2.0)?;
    number("topP", 0.0, 1.0)?;
    for k in ["maxOutputTokens", "topK", "candidateCount", "seed"] {
        if let Some(v) = config.get(k)
            && v.as_i64().is_none()
        {
            return Err(Status::invalid(format!(
                "Invalid value at 'generation_config.{k}' (TYPE_INT32), {v}"
            )));
        }
    }
    if let Some(stop) = config.get("stopSequences") {
        match stop.as_array() {
            Some(s) if s.len() <= 5 && s.iter().all(Value::is_string) => {}
            _ => {
                return Err(Status::invalid(
                    "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences are allowed\n",
                ));
            }
        }
    }
    if let Some(mime) = config.get("responseMimeType") {
        match mime.as_str() {
            Some("text/plain" | "application/json" | "text/x.enum") => {}
            _ => {
                return Err(Status::invalid(format!(
                    "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, and `text/x.enum`, got {mime}\n"
                )));
            }
        }
    }
    Ok(())
}

fn usage_json(u: &ReportedUsage, output: u64) -> Value {
    json!({
        "promptTokenCount": u.input,
        "candidatesTokenCount": output,
        "totalTokenCount": u.input + output,
        "cachedContentTokenCount": u.cached,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.input}],
    })
}

fn answer(
    ex: &Exchange<'_>,
    model: &str,
    reply: &Reply,
    usage: &ReportedUsage,
    stream: bool,
    sse: bool,
) -> Response {
    let response_id = uuid::Uuid::new_v4().simple().to_string();
    let chunk = |parts: Value, finish: Option<&str>, output: u64| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage_json(usage, output),
            "modelVersion": model,
            "responseId": response_id,
        })
    };
    let call_part = |name: &str, arguments: &str| {
        let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        json!([{"functionCall": {"name": name, "args": args}}])
    };
    if !stream {
        let parts = match reply {
            Reply::Text(t) => json!([{"text": t}]),
            Reply::Call { name, arguments } => call_part(name, arguments),
        };
        return json_response(200, &chunk(parts, Some("STOP"), usage.output));
    }
    let mut chunks = Vec::new();
    match reply {
        Reply::Text(text) => {
            let pieces = text_pieces(text);
            let n = pieces.len();
            for (i, piece) in pieces.into_iter().enumerate() {
                let last = i + 1 == n;
                chunks.push(chunk(
                    json!([{"text": piece}]),
                    last.then_some("STOP"),
                    if last {
                        usage.output
                    } else {
                        (i as u64 + 1).min(usage.output)
                    },
                ));
            }
        }
        Reply::Call { name, arguments } => {
            chunks.push(chunk(
                call_part(name, arguments),
                Some("STOP"),
                usage.output,
            ));
        }
    }
    if !sse {
        // Without `alt=sse`: one JSON array, streamed element by element.
        let mut events = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let sep = if i == 0 { "[" } else { ",\r\n" };
            events.push(Bytes::from(format!("{sep}{c}")));
        }
        events.push(Bytes::from_static(b"]"));
        return ex.stream("application/json; charset=UTF-8", events);
    }
    let mut events: Vec<Bytes> = chunks
        .iter()
        .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
        .collect();
    match ex.behavior {
        Behavior::GarbledStream => {
            events.insert(
                1,
                Bytes::from_static(
                    b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\r\n\r\n",
                ),
            );
        }
        Behavior::StreamError => {
            events.truncate(1);
            events.push(Bytes::from(format!(
                "data: {}\r\n\r\n",
                json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})
            )));
        }
        _ => {}
    }
    ex.stream("text/event-stream", events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_and_camel_case_are_both_accepted() {
        assert_eq!(camel("system_instruction"), "systemInstruction");
        assert_eq!(camel("contents"), "contents");
        let conv = check_request(
            br#"{"contents":[{"role":"user","parts":[{"text":"hi there"}]}],
                 "system_instruction":{"parts":[{"text":"be brief"}]},
                 "generation_config":{"max_output_tokens":10,"temperature":0.5}}"#,
        )
        .unwrap();
        assert_eq!(conv.words, 4);
        assert_eq!(conv.last, Last::User);
    }
}
