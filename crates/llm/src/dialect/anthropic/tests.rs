use super::*;
use crate::dialect::openai_chat;
use crate::stream::{StreamDecoder, decode_all, encode_all};
use proptest::prelude::*;

fn invalid_field(err: LlmError) -> String {
    match err {
        LlmError::InvalidRequest { field, .. } => field,
        LlmError::Unsupported { field, .. } => field,
        other => panic!("unexpected {other:?}"),
    }
}

/// A Claude Code-like request: system blocks, a tool loop with thinking, images, metadata.
fn client_body() -> Value {
    json!({
        "model": "claude/claude-sonnet-4-5",
        "max_tokens": 2048,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in English."}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "sig=="},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ],
        "tools": [{"name": "weather", "description": "Weather by city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                   "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "metadata": {"user_id": "user-7"},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 1,
        "stream": true,
        "context_management": {"edits": []}
    })
}

#[test]
fn parses_a_client_request_field_by_field() {
    let req = parse_request(client_body().to_string().as_bytes()).unwrap();
    assert_eq!(req.model, "claude/claude-sonnet-4-5");
    assert_eq!(req.max_tokens, Some(2048));
    assert!(req.stream);
    assert_eq!(req.user.as_deref(), Some("user-7"));
    assert_eq!(req.stop, ["\n\nHuman:"]);
    assert_eq!(req.temperature, Some(1.0));
    assert_eq!(req.reasoning_effort.as_deref(), Some("medium"));
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.tool_choice, Some(ToolChoice::Auto));
    assert!(req.untranslatable.is_empty(), "{:?}", req.untranslatable);
    assert_eq!(req.tools.len(), 1);
    assert_eq!(req.tools[0].parameters.as_ref().unwrap()["type"], "object");

    let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::User
        ]
    );
    assert_eq!(req.messages[0].text(), "You are terse.\nAnswer in English.");
    assert_eq!(
        req.messages[1].content[1],
        ContentPart::Image(Image::Base64 {
            media_type: "image/png".into(),
            data: "iVBORw0KGgo=".into()
        })
    );
    assert!(matches!(
        &req.messages[1].content[2],
        ContentPart::Image(Image::Url { url, .. }) if url == "https://example.com/a.jpg"
    ));
    // The thinking block has no canonical form; text and the call stay in order.
    assert_eq!(req.messages[2].content.len(), 2);
    assert_eq!(
        req.messages[2].content[1],
        ContentPart::ToolCall(ToolCall {
            id: "toolu_01".into(),
            name: "weather".into(),
            arguments: r#"{"city":"Paris"}"#.into()
        })
    );
    assert_eq!(
        req.messages[3].content[0],
        ContentPart::ToolResult(ToolResult {
            call_id: "toolu_01".into(),
            content: "18C".into(),
            is_error: false
        })
    );
    assert_eq!(req.last_user_text().as_deref(), Some("And tomorrow?"));
}

#[test]
fn bad_requests_name_the_field() {
    let cases = [
        (json!({"messages": []}), "max_tokens"),
        (
            json!({"max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "system", "content": [
                {"type": "image", "source": {"type": "url", "url": "https://x"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "data": "x"}}]}]}),
            "messages[0].content[0].source.media_type",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "assistant", "content": [
                {"type": "tool_result", "tool_use_id": "t"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"max_tokens": 5, "messages": [], "tool_choice": {"type": "tool"}}),
            "tool_choice.name",
        ),
        (
            json!({"max_tokens": 5, "messages": [], "thinking": {"type": "enabled"}}),
            "thinking.budget_tokens",
        ),
        (
            json!({"max_tokens": 5, "messages": [], "tools": [{"name": "f"}]}),
            "tools[0].input_schema",
        ),
        (json!({"max_tokens": "5", "messages": []}), "max_tokens"),
    ];
    for (body, field) in cases {
        let err = parse_request(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(invalid_field(err), field, "{body}");
    }
    assert!(parse_request(b"[1]").is_err());
}

#[test]
fn what_only_a_native_route_serves_is_recorded() {
    let body = json!({
        "max_tokens": 5,
        "mcp_servers": [],
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}}
        ]}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]
    });
    let req = parse_request(body.to_string().as_bytes()).unwrap();
    let fields: Vec<&str> = req
        .untranslatable
        .iter()
        .map(|u| u.field.as_str())
        .collect();
    assert_eq!(
        fields,
        ["mcp_servers", "messages[0].content[0]", "tools[0]"]
    );
    assert_eq!(req.messages[0].text(), "plain words");
    // Translation refuses it, naming the first part.
    let err =
        openai_chat::render_request(&req, openai_chat::ChatFlavor::OpenAi, "openai").unwrap_err();
    assert_eq!(invalid_field(err), "mcp_servers");
}

fn openai_request(extra: Value) -> ChatRequest {
    let mut body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "user": "u-1",
        "stop": ["END"]
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    openai_chat::parse_request(body.to_string().as_bytes()).unwrap()
}

fn rendered(req: &ChatRequest) -> Value {
    serde_json::from_slice(&render_request(req, "claude-sonnet-4-5").unwrap()).unwrap()
}

#[test]
fn renders_an_openai_request_for_anthropic() {
    let body = rendered(&openai_request(
        json!({"max_tokens": 100, "tool_choice": "required"}),
    ));
    assert_eq!(
        body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": "be brief",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "call_2", "name": "f", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
                    {"type": "text", "text": "thanks"}
                ]}
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"}
        })
    );
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_or_a_400_naming_it() {
    // A fresh question (no tool loop to continue): thinking on, max_tokens above the budget.
    let mut req = openai_request(json!({"reasoning_effort": "high"}));
    req.messages.truncate(2);
    let body = rendered(&req);
    assert_eq!(
        body["thinking"],
        json!({"type": "enabled", "budget_tokens": 24576})
    );
    assert_eq!(body["max_tokens"], 24576 + DEFAULT_MAX_TOKENS);

    req.max_tokens = Some(1000);
    let err = render_request(&req, "m").unwrap_err();
    assert_eq!(invalid_field(err.clone()), "reasoning_effort");
    assert!(err.to_string().contains("max_tokens"), "{err}");

    req.max_tokens = None;
    req.reasoning_effort = Some("extreme".into());
    assert_eq!(
        invalid_field(render_request(&req, "m").unwrap_err()),
        "reasoning_effort"
    );
    req.reasoning_effort = Some("none".into());
    assert!(rendered(&req).get("thinking").is_none());

    // Continuing a tool loop whose assistant turn has no thinking block: sent without.
    let mut req = openai_request(json!({"reasoning_effort": "low"}));
    req.messages.pop();
    assert!(rendered(&req).get("thinking").is_none());

    // Claude Code's shape: adaptive thinking, an effort, a system message mid-conversation.
    let body = json!({"max_tokens": 32000, "thinking": {"type": "adaptive"},
                      "output_config": {"effort": "high"}, "messages": [
                          {"role": "user", "content": "hi"},
                          {"role": "system", "content": "agents: claude, Explore"}]});
    let req = parse_request(body.to_string().as_bytes()).unwrap();
    assert_eq!(req.reasoning_effort.as_deref(), Some("high"));
    assert_eq!(req.messages[1].role, Role::System);
    assert!(req.untranslatable.is_empty());
    let body = json!({"max_tokens": 5, "thinking": {"type": "adaptive"}, "messages": []});
    let req = parse_request(body.to_string().as_bytes()).unwrap();
    assert_eq!(req.reasoning_effort, None);

    // Claude's own thinking request maps back to an effort.
    for (budget, effort) in [(1024, "low"), (8192, "medium"), (16000, "high")] {
        let body = json!({"max_tokens": 20000, "messages": [],
                          "thinking": {"type": "enabled", "budget_tokens": budget}});
        let req = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.reasoning_effort.as_deref(), Some(effort));
    }
}

#[test]
fn parameters_anthropic_cannot_honour_are_refused() {
    for (extra, field) in [
        (json!({"seed": 3}), "seed"),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"n": 2}), "n"),
    ] {
        let err = render_request(&openai_request(extra.clone()), "m").unwrap_err();
        assert_eq!(invalid_field(err), field, "{extra}");
    }
}

#[test]
fn responses_round_trip_with_cache_usage() {
    let wire = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5,
                  "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000}
    });
    let resp = parse_response(wire.to_string().as_bytes()).unwrap();
    assert_eq!(resp.text.as_deref(), Some("Hello"));
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(resp.tool_calls[0].arguments, r#"{"x":1}"#);
    let usage = resp.usage.unwrap();
    assert_eq!(usage.input_tokens, 1110);
    assert_eq!(usage.cached_input_tokens, Some(1000));
    assert_eq!(usage.cache_write_input_tokens, Some(100));
    assert_eq!(
        usage_from_response(wire.to_string().as_bytes()),
        Some(usage)
    );

    let back: Value = serde_json::from_slice(&render_response(&resp)).unwrap();
    assert_eq!(back["id"], "msg_01");
    assert_eq!(back["type"], "message");
    assert_eq!(back["stop_reason"], "tool_use");
    assert_eq!(back["content"][1]["input"], json!({"x": 1}));
    assert_eq!(back["usage"], wire["usage"]);

    // An OpenAI answer rendered for an Anthropic client.
    let openai = ChatResponse {
        id: "chatcmpl-1".into(),
        model: "gpt-4.1".into(),
        text: Some("hi".into()),
        finish_reason: FinishReason::Length,
        usage: Some(Usage {
            input_tokens: 50,
            output_tokens: 7,
            cached_input_tokens: Some(20),
            ..Usage::default()
        }),
        ..ChatResponse::default()
    };
    let out: Value = serde_json::from_slice(&render_response(&openai)).unwrap();
    assert!(out["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(out["stop_reason"], "max_tokens");
    assert_eq!(
        out["usage"],
        json!({"input_tokens": 30, "output_tokens": 7,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20})
    );
    assert_eq!(out["content"], json!([{"type": "text", "text": "hi"}]));
}

#[test]
fn errors_parse_and_render() {
    let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_1"}"#;
    let err = parse_error(StatusCode::TOO_MANY_REQUESTS, body);
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert_eq!(err.message, "slow down");
    let out: Value = serde_json::from_slice(&render_error(&err)).unwrap();
    assert_eq!(
        out,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    );
    // The gateway's own codes travel beside Anthropic's type.
    let own = ApiError::new(ErrorKind::NotFound, "no route `x`").code("route_not_found");
    let out: Value = serde_json::from_slice(&render_error(&own)).unwrap();
    assert_eq!(out["error"]["type"], "not_found_error");
    assert_eq!(out["error"]["code"], "route_not_found");
    // Not Anthropic's shape: the status decides.
    let err = parse_error(StatusCode::SERVICE_UNAVAILABLE, b"<html>busy</html>");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    let overloaded = ApiError::with_status(
        StatusCode::from_u16(529).unwrap(),
        ErrorKind::Unavailable,
        "Overloaded",
    );
    let out: Value = serde_json::from_slice(&render_error(&overloaded)).unwrap();
    assert_eq!(out["error"]["type"], "overloaded_error");
}

/// A stream as the API sends it: thinking with its signature, text, a tool call in pieces,
/// usage split across `message_start` and `message_delta`.
fn api_stream() -> String {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
               "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
               "usage": {"input_tokens": 12, "output_tokens": 1,
                         "cache_creation_input_tokens": 3, "cache_read_input_tokens": 40}}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me see."}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " now."}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
        json!({"type": "message_stop"}),
    ];
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

fn expected_events() -> Vec<StreamEvent> {
    vec![
        StreamEvent::Start {
            id: Some("msg_1".into()),
            model: Some("claude-sonnet-4-5".into()),
        },
        StreamEvent::TextDelta("Checking".into()),
        StreamEvent::TextDelta(" now.".into()),
        StreamEvent::ToolCallStart {
            index: 0,
            id: "toolu_1".into(),
            name: "weather".into(),
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
        StreamEvent::Usage(Usage {
            input_tokens: 55,
            output_tokens: 42,
            cached_input_tokens: Some(40),
            cache_write_input_tokens: Some(3),
            reasoning_tokens: None,
        }),
    ]
}

#[test]
fn decodes_an_api_stream_combining_its_usage() {
    let stream = api_stream();
    let events = decode_all(&mut AnthropicStreamDecoder::new(), stream.as_bytes()).unwrap();
    assert_eq!(events, expected_events());
    // Byte by byte, the same.
    let mut decoder = AnthropicStreamDecoder::new();
    let mut events = Vec::new();
    for b in stream.as_bytes() {
        events.extend(decoder.push(std::slice::from_ref(b)).unwrap());
    }
    events.extend(decoder.finish().unwrap());
    assert_eq!(events, expected_events());
}

#[test]
fn cut_and_failed_streams() {
    let stream = api_stream();
    let cut = &stream[..stream.find("event: message_delta").unwrap()];
    let mut decoder = AnthropicStreamDecoder::new();
    decoder.push(cut.as_bytes()).unwrap();
    assert_eq!(decoder.finish().unwrap_err(), StreamError::Truncated);

    let failed = format!(
        "{}event: error\ndata: {}\n\n",
        &stream[..stream.find("event: content_block_start").unwrap()],
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let events = decode_all(&mut AnthropicStreamDecoder::new(), failed.as_bytes()).unwrap();
    let Some(StreamEvent::Error(err)) = events.last() else {
        panic!("{events:?}");
    };
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(err.status.as_u16(), 529);

    let garbled = "event: message_start\ndata: {not json\n\n";
    assert!(matches!(
        decode_all(&mut AnthropicStreamDecoder::new(), garbled.as_bytes()),
        Err(StreamError::Payload(_))
    ));
}

/// The events of an encoded stream, as (event name, data).
fn sse_events(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[test]
fn encoder_speaks_the_event_sequence_and_decodes_back() {
    let mut events = expected_events();
    // A text run after the call opens a new block.
    events.insert(6, StreamEvent::TextDelta("done".into()));
    let bytes = encode_all(&mut AnthropicStreamEncoder::new("claude/x"), &events);
    let seen = sse_events(&bytes);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for (name, data) in &seen {
        assert_eq!(data["type"], name.as_str());
    }
    assert_eq!(seen[0].1["message"]["model"], "claude/x");
    assert_eq!(seen[0].1["message"]["id"], "msg_1");
    let indexes: Vec<u64> = seen
        .iter()
        .filter_map(|(_, d)| d.get("index").and_then(Value::as_u64))
        .collect();
    assert_eq!(indexes, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]);
    assert_eq!(seen[6].1["content_block"]["id"], "toolu_1");
    assert_eq!(
        seen[13].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 12, "output_tokens": 42,
                         "cache_creation_input_tokens": 3, "cache_read_input_tokens": 40}})
    );

    let mut decoded = decode_all(&mut AnthropicStreamDecoder::new(), &bytes).unwrap();
    assert_eq!(
        decoded.remove(0),
        StreamEvent::Start {
            id: Some("msg_1".into()),
            model: Some("claude/x".into())
        }
    );
    assert_eq!(decoded, events[1..].to_vec());
}

#[test]
fn encoder_errors_and_empty_answers() {
    let mut enc = AnthropicStreamEncoder::new("m");
    let mut out = enc
        .push(&StreamEvent::Start {
            id: None,
            model: None,
        })
        .to_vec();
    out.extend_from_slice(&enc.push(&StreamEvent::Error(ApiError::new(
        ErrorKind::Unavailable,
        "busy",
    ))));
    out.extend_from_slice(&enc.finish());
    let seen = sse_events(&out);
    assert_eq!(seen.last().unwrap().0, "error");
    assert_eq!(
        seen.last().unwrap().1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    );
    // Nothing but a finish: a complete, empty message.
    let bytes = encode_all(
        &mut AnthropicStreamEncoder::new("m"),
        &[StreamEvent::Finish(FinishReason::Stop)],
    );
    let names: Vec<String> = sse_events(&bytes).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["message_start", "ping", "message_delta", "message_stop"]
    );
}

#[test]
fn the_prompt_is_the_last_user_text() {
    let messages = json!([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]}
    ]);
    assert_eq!(last_user_text(&messages).as_deref(), Some("first"));
    let messages = json!([{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image", "source": {}}, {"type": "text", "text": "b"}]}]);
    assert_eq!(last_user_text(&messages).as_deref(), Some("a\nb"));
    assert_eq!(last_user_text(&json!([])), None);
}

#[test]
fn bedrock_stream_chunks_and_exceptions() {
    use crate::eventstream::Message as Frame;
    use base64::Engine;
    let event =
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5}});
    let payload = json!({
        "bytes": base64::engine::general_purpose::STANDARD.encode(event.to_string()),
        "p": "abcdef"
    });
    let chunk = Frame::with_string_headers(
        &[
            (":message-type", "event"),
            (":event-type", "chunk"),
            (":content-type", "application/json"),
        ],
        payload.to_string(),
    );
    let sse = bedrock_chunk_event(&chunk).unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&sse).unwrap(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
    let exception = Frame::with_string_headers(
        &[
            (":message-type", "exception"),
            (":exception-type", "throttlingException"),
        ],
        r#"{"message":"Too many requests"}"#,
    );
    let err = bedrock_chunk_event(&exception).unwrap_err();
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert_eq!(err.message, "Too many requests");
    let bad = Frame::with_string_headers(&[(":event-type", "chunk")], r#"{"bytes":"@@"}"#);
    assert!(bedrock_chunk_event(&bad).is_err());
}

proptest! {
    #[test]
    fn garbage_requests_and_streams_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_request(&body);
        let _ = parse_response(&body);
        let mut decoder = AnthropicStreamDecoder::new();
        let _ = decoder.push(&body);
        let _ = decoder.finish();
    }
}
