//! The Responses API (`/v1/responses`): what the real API checks in `input` and tools, and
//! its JSON and SSE (typed events) answers.

use super::*;
use crate::script::{self, Conversation, Last, Reply, argument_pieces, decide, text_pieces, words};

pub(super) const RESPONSES_FIELDS: &[&str] = &[
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

/// Checks a Responses `input` and reduces the conversation.
pub(super) fn check_input(
    body: &Map<String, Value>,
    tools: Vec<String>,
) -> Result<Conversation, ApiError> {
    let mut conv = Conversation {
        last: Last::User,
        tools,
        no_tools: false,
        words: 0,
        directive: None,
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

pub(super) fn responses(
    ex: &Exchange<'_>,
    body: &Map<String, Value>,
    model: &str,
    stream: bool,
) -> Response {
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
