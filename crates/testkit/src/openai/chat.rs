//! Chat Completions (`/v1/chat/completions`, and Azure's deployments): what the real API
//! checks in `messages`, tools and `response_format`, and its JSON and SSE answers.

use super::*;
use crate::script::{self, Conversation, Last, Reply, argument_pieces, decide, text_pieces, words};

pub(super) const CHAT_FIELDS: &[&str] = &[
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

pub(super) fn check_response_format(body: &Map<String, Value>) -> Result<(), ApiError> {
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
pub(super) fn content_text(content: &Value, param: &str, images: bool) -> Result<String, ApiError> {
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
pub(super) fn check_messages(
    body: &Map<String, Value>,
    tools: Vec<String>,
) -> Result<Conversation, ApiError> {
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
    let mut directive = None;
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
                if role == "user" {
                    last = Last::User;
                    directive = script::directive(&text);
                }
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
        directive,
    })
}

pub(super) fn chat_completions(
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
