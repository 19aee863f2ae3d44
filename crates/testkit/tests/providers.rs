//! The Azure, Gemini and Bedrock mocks (and MockOpenAi's tools) behave like the real
//! services: these tests pin what they accept and refuse, and that what they send decodes
//! with the gateway's own translation library.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};
use switchyard_llm::sigv4::{AwsCredentials, sign_request};
use switchyard_llm::{
    ChatRequest, Credentials, Message, Provider, Role, StreamEvent, Target, Tool,
};
use switchyard_testkit::bedrock::{BedrockConfig, verify_sigv4};
use switchyard_testkit::{
    AZURE_API_KEY, BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY, Behavior, CACHED_TOKENS,
    GEMINI_API_KEY, MOCK_API_KEY, MockAzure, MockBedrock, MockGemini, MockOpenAi, TOOL_ARGUMENTS,
    reply_text, tool_reply_text,
};

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Bytes) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

// ---------------------------------------------------------------------------------------
// OpenAI tools.

#[tokio::test]
async fn openai_tool_call_round_trip_in_chat_and_responses() {
    let mock = MockOpenAi::start().await.unwrap();
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools});
    let (status, _, out) = send(
        http()
            .post(format!("{}/chat/completions", mock.base_url()))
            .bearer_auth(MOCK_API_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(status, 200);
    let v = json_of(&out);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], TOOL_ARGUMENTS);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"],
        CACHED_TOKENS
    );

    // The result goes back; a tool message answering no call is refused.
    let mut follow = body.clone();
    follow["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}
    ]);
    let (status, _, out) = send(
        http()
            .post(format!("{}/chat/completions", mock.base_url()))
            .bearer_auth(MOCK_API_KEY)
            .json(&follow),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        json_of(&out)["choices"][0]["message"]["content"],
        tool_reply_text("18C and sunny")
    );
    follow["messages"][2]["tool_call_id"] = json!("call_other");
    let (status, _, _) = send(
        http()
            .post(format!("{}/chat/completions", mock.base_url()))
            .bearer_auth(MOCK_API_KEY)
            .json(&follow),
    )
    .await;
    assert_eq!(status, 400);

    // Responses: a function_call item, then its output.
    let body = json!({"model": "gpt-4o", "input": "Weather in Paris?",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]});
    let (status, _, out) = send(
        http()
            .post(format!("{}/responses", mock.base_url()))
            .bearer_auth(MOCK_API_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(status, 200);
    let v = json_of(&out);
    let item = &v["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["arguments"], TOOL_ARGUMENTS);
    let follow = json!({"model": "gpt-4o", "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": item["call_id"], "name": "get_weather", "arguments": TOOL_ARGUMENTS},
        {"type": "function_call_output", "call_id": item["call_id"], "output": "18C"}
    ], "tools": body["tools"], "stream": true});
    let (status, _, out) = send(
        http()
            .post(format!("{}/responses", mock.base_url()))
            .bearer_auth(MOCK_API_KEY)
            .json(&follow),
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(text.contains("event: response.output_item.added"), "{text}");
    assert!(text.contains("The tool answered: 18C"), "{text}");
    assert!(text.trim_end().ends_with('}'));
}

// ---------------------------------------------------------------------------------------
// Azure.

#[tokio::test]
async fn azure_checks_key_version_and_deployment() {
    let mock = MockAzure::start().await.unwrap();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let url = |path: &str| format!("{}{path}", mock.endpoint());
    let post = |path: &str, key: Option<&str>, body: &Value| {
        let mut r = http().post(url(path)).json(body);
        if let Some(k) = key {
            r = r.header("api-key", k);
        }
        send(r)
    };
    let deployment = "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21";
    let (status, _, out) = post(deployment, None, &body).await;
    assert_eq!(status, 401);
    assert_eq!(json_of(&out)["error"]["code"], "401");
    let (status, _, _) = post(deployment, Some("wrong"), &body).await;
    assert_eq!(status, 401);
    // A Bearer key is not Azure's api key.
    let (status, _, _) = send(
        http()
            .post(url(deployment))
            .bearer_auth(AZURE_API_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(status, 401);

    let (status, _, out) = post(deployment, Some(AZURE_API_KEY), &body).await;
    assert_eq!(status, 200);
    let v = json_of(&out);
    assert_eq!(v["model"], "gpt-4o-2024-08-06");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        reply_text("gpt-4o-2024-08-06")
    );
    assert!(v["prompt_filter_results"].is_array());

    let (status, _, out) = post(
        "/openai/deployments/gpt-4o-prod/chat/completions",
        Some(AZURE_API_KEY),
        &body,
    )
    .await;
    assert_eq!(
        (status, json_of(&out)["error"]["code"].as_str()),
        (404, Some("404"))
    );
    let (status, _, _) = post(
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=1999-01-01",
        Some(AZURE_API_KEY),
        &body,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, out) = post(
        "/openai/deployments/nope/chat/completions?api-version=2024-10-21",
        Some(AZURE_API_KEY),
        &body,
    )
    .await;
    assert_eq!(
        (status, json_of(&out)["error"]["code"].as_str()),
        (404, Some("DeploymentNotFound"))
    );

    // v1: the deployment is the body's model.
    let (status, _, out) = post("/openai/v1/chat/completions", Some(AZURE_API_KEY), &body).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&out));
    let mut v1 = body.clone();
    v1["model"] = json!("gpt-4.1-mini");
    v1["stream"] = json!(true);
    let (status, _, out) = post("/openai/v1/chat/completions", Some(AZURE_API_KEY), &v1).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(out.to_vec()).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("prompt_filter_results") && first.contains("\"choices\":[]"),
        "{first}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Responses on a dated version needs 2025-03-01-preview or later.
    let resp = json!({"model": "gpt-4o-prod", "input": "Hi"});
    let (status, _, _) = post(
        "/openai/responses?api-version=2024-10-21",
        Some(AZURE_API_KEY),
        &resp,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, out) = post(
        "/openai/responses?api-version=2025-04-01-preview",
        Some(AZURE_API_KEY),
        &resp,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&out)["model"], "gpt-4o-2024-08-06");
}

// ---------------------------------------------------------------------------------------
// Gemini.

#[tokio::test]
async fn gemini_checks_key_model_and_body() {
    let mock = MockGemini::start().await.unwrap();
    let url = |path: &str| format!("{}{path}", mock.base_url());
    let ok = json!({"contents": [{"role": "user", "parts": [{"text": "Hi there"}]}]});
    let post = |path: &str, key: Option<&str>, body: &Value| {
        let mut r = http().post(url(path)).json(body);
        if let Some(k) = key {
            r = r.header("x-goog-api-key", k);
        }
        send(r)
    };
    let generate = "/v1beta/models/gemini-2.5-flash:generateContent";
    let (status, _, out) = post(generate, None, &ok).await;
    assert_eq!(
        (status, json_of(&out)["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let (status, _, out) = post(generate, Some("AIza-wrong"), &ok).await;
    assert_eq!(status, 400);
    assert!(
        json_of(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key not valid")
    );
    // The key may also come as `?key=`.
    let (status, _, _) = send(
        http()
            .post(url(&format!("{generate}?key={GEMINI_API_KEY}")))
            .json(&ok),
    )
    .await;
    assert_eq!(status, 200);

    let (status, _, out) = post(
        "/v1beta/models/gemini-9:generateContent",
        Some(GEMINI_API_KEY),
        &ok,
    )
    .await;
    assert_eq!(
        (status, json_of(&out)["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );

    let bad = [
        (json!({}), "contents is not specified"),
        (
            json!({"contents": [{"role": "user", "parts": []}]}),
            "must not be empty",
        ),
        (
            json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}),
            "valid role",
        ),
        (
            json!({"contents": [{"parts": [{"text": "x", "inlineData": {"mimeType": "image/png", "data": "AA=="}}]}]}),
            "oneof",
        ),
        (
            json!({"contents": [{"parts": [{"text": "x"}]}], "foo": 1}),
            "Unknown name \"foo\"",
        ),
        (
            json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": 3}}),
            "temperature",
        ),
        (
            json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 3}}),
            "Unknown name",
        ),
        (
            json!({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
            "function response",
        ),
    ];
    for (body, expected) in bad {
        let (status, _, out) = post(generate, Some(GEMINI_API_KEY), &body).await;
        let v = json_of(&out);
        assert_eq!(status, 400, "{body} → {v}");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(expected),
            "{body} → {v}"
        );
    }

    let (status, _, out) = post(generate, Some(GEMINI_API_KEY), &ok).await;
    assert_eq!(status, 200);
    let v = json_of(&out);
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        reply_text("gemini-2.5-flash")
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], CACHED_TOKENS);

    // Tools: a function call, then its response.
    let tools = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT"}}]}]);
    let (_, _, out) = post(
        generate,
        Some(GEMINI_API_KEY),
        &json!({"contents": ok["contents"], "tools": tools}),
    )
    .await;
    let call = json_of(&out)["candidates"][0]["content"]["parts"][0]["functionCall"].clone();
    assert_eq!(
        call["args"],
        serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
    );
    let follow = json!({"tools": tools, "contents": [
        ok["contents"][0],
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}}]}
    ]});
    let (status, _, out) = post(generate, Some(GEMINI_API_KEY), &follow).await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&out)["candidates"][0]["content"]["parts"][0]["text"],
        tool_reply_text("18C")
    );

    // Streams: SSE with `\r\n\r\n`, decodable by the gateway's decoder.
    let (status, headers, out) = post(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        Some(GEMINI_API_KEY),
        &ok,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(out.windows(4).any(|w| w == b"\r\n\r\n"));
    let target = Target::new(Provider::Gemini, mock.base_url(), "gemini-2.5-flash");
    let events =
        switchyard_llm::stream::decode_all(target.stream_decoder().as_mut(), &out).unwrap();
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, reply_text("gemini-2.5-flash"));
    // Without alt=sse: a JSON array.
    let (_, _, out) = post(
        "/v1/models/gemini-2.5-flash:streamGenerateContent",
        Some(GEMINI_API_KEY),
        &ok,
    )
    .await;
    assert!(json_of(&out).as_array().unwrap().len() > 1);

    mock.set_behavior(Behavior::StreamError);
    let (_, _, out) = post(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        Some(GEMINI_API_KEY),
        &ok,
    )
    .await;
    let events =
        switchyard_llm::stream::decode_all(target.stream_decoder().as_mut(), &out).unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::Error(e)) if e.status == 503),
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Bedrock.

fn bedrock_target(mock: &MockBedrock, secret: &str) -> Target {
    Target::new(
        Provider::Bedrock,
        mock.endpoint(),
        "anthropic/anthropic.claude-3-haiku-20240307-v1:0",
    )
    .with_region(BEDROCK_REGION)
    .with_credentials(Credentials::Aws(AwsCredentials {
        access_key_id: BEDROCK_ACCESS_KEY.into(),
        secret_access_key: secret.into(),
        session_token: None,
    }))
}

fn chat_request(stream: bool, tools: bool) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text_message(Role::User, "Weather in Paris?")],
        max_tokens: Some(64),
        stream,
        tools: if tools {
            vec![Tool {
                name: "get_weather".into(),
                description: None,
                parameters: Some(json!({"type": "object"})),
                strict: None,
            }]
        } else {
            vec![]
        },
        ..ChatRequest::default()
    }
}

async fn send_http(req: http::Request<Bytes>) -> (u16, HeaderMap, Bytes) {
    let req = reqwest::Request::try_from(req).unwrap();
    let resp = http().execute(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap())
}

#[tokio::test]
async fn bedrock_verifies_sigv4_and_speaks_converse() {
    let mock = MockBedrock::start().await.unwrap();
    let target = bedrock_target(&mock, BEDROCK_SECRET_KEY);
    let (status, headers, out) =
        send_http(target.build_request(&chat_request(false, false)).unwrap()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v = json_of(&out);
    assert_eq!(
        v["output"]["message"]["content"][0]["text"],
        reply_text("anthropic.claude-3-haiku-20240307-v1:0")
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(v["usage"]["cacheReadInputTokens"], CACHED_TOKENS);
    assert!(headers.contains_key("x-amzn-requestid"));
    let parsed = target
        .parse_response(http::StatusCode::OK, &headers, &out)
        .unwrap();
    let usage = parsed.usage.unwrap();
    assert_eq!(usage.cached_input_tokens, Some(CACHED_TOKENS));
    assert_eq!(
        Some(usage.input_tokens),
        mock.last_reported_usage().map(|u| u.input)
    );

    // A wrong secret: the recomputed signature differs.
    let (status, headers, out) = send_http(
        bedrock_target(&mock, "wrong-secret")
            .build_request(&chat_request(false, false))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        headers["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("InvalidSignatureException")
    );
    assert!(
        json_of(&out)["message"]
            .as_str()
            .unwrap()
            .contains("signature we calculated")
    );

    // The body changed after signing.
    let mut tampered = target.build_request(&chat_request(false, false)).unwrap();
    *tampered.body_mut() =
        Bytes::from_static(br#"{"messages":[{"role":"user","content":[{"text":"bye"}]}]}"#);
    assert_eq!(send_http(tampered).await.0, 403);

    // Unsigned, or signed for another region.
    let mut unsigned = target.build_request(&chat_request(false, false)).unwrap();
    unsigned.headers_mut().remove("authorization");
    let (status, headers, _) = send_http(unsigned).await;
    assert_eq!(status, 403);
    assert!(
        headers["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("MissingAuthenticationToken")
    );
    let (status, _, out) = send_http(
        bedrock_target(&mock, BEDROCK_SECRET_KEY)
            .with_region("eu-west-3")
            .build_request(&chat_request(false, false))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        json_of(&out)["message"]
            .as_str()
            .unwrap()
            .contains("region")
    );

    // Unknown model; a model id given in its bare form works.
    let mut other = target.clone();
    other.model = "anthropic.claude-9".into();
    let (status, headers, _) =
        send_http(other.build_request(&chat_request(false, false)).unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        headers["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ValidationException")
    );
    other.model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0".into();
    assert_eq!(
        send_http(other.build_request(&chat_request(false, false)).unwrap())
            .await
            .0,
        200
    );

    // A stream: event-stream frames the gateway's decoder reads, tool call included.
    let (status, headers, out) =
        send_http(target.build_request(&chat_request(true, true)).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let events =
        switchyard_llm::stream::decode_all(target.stream_decoder().as_mut(), &out).unwrap();
    let arguments: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(arguments, TOOL_ARGUMENTS);
    assert!(events.contains(&StreamEvent::Finish(
        switchyard_llm::FinishReason::ToolCalls
    )));

    // Garbled (bad CRC) and exception frames.
    mock.set_behavior(Behavior::GarbledStream);
    let (_, _, out) = send_http(target.build_request(&chat_request(true, false)).unwrap()).await;
    assert!(switchyard_llm::stream::decode_all(target.stream_decoder().as_mut(), &out).is_err());
    mock.set_behavior(Behavior::StreamError);
    let (_, _, out) = send_http(target.build_request(&chat_request(true, false)).unwrap()).await;
    let events =
        switchyard_llm::stream::decode_all(target.stream_decoder().as_mut(), &out).unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::Error(e)) if e.status == 429),
        "{events:?}"
    );
    mock.set_behavior(Behavior::Reject {
        status: 429,
        code: "ThrottlingException".into(),
        message: "Too many requests".into(),
    });
    let (status, headers, out) =
        send_http(target.build_request(&chat_request(false, false)).unwrap()).await;
    assert_eq!(status, 429);
    let err = target.parse_error(http::StatusCode::TOO_MANY_REQUESTS, &headers, &out);
    assert_eq!(err.code.as_deref(), Some("ThrottlingException"));
}

#[tokio::test]
async fn bedrock_checks_converse_bodies() {
    let mock = MockBedrock::start().await.unwrap();
    let creds = AwsCredentials {
        access_key_id: BEDROCK_ACCESS_KEY.into(),
        secret_access_key: BEDROCK_SECRET_KEY.into(),
        session_token: None,
    };
    let post = |body: Value| {
        let mut req = http::Request::post(format!(
            "{}/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            mock.endpoint()
        ))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
        sign_request(
            &mut req,
            &creds,
            BEDROCK_REGION,
            "bedrock",
            SystemTime::now(),
        )
        .unwrap();
        send_http(req)
    };
    let user = |t: &str| json!({"role": "user", "content": [{"text": t}]});
    let bad = [
        (json!({"messages": []}), "start with a user message"),
        (
            json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}),
            "start with a user message",
        ),
        (json!({"messages": [user("a"), user("b")]}), "alternate"),
        (json!({"messages": [user("")]}), "blank"),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "x", "image": {}}]}]}),
            "exactly one",
        ),
        (
            json!({"messages": [user("x")], "foo": 1}),
            "extraneous key [foo]",
        ),
        (
            json!({"messages": [user("x")], "inferenceConfig": {"temperature": 1.5}}),
            "temperature",
        ),
        (
            json!({"messages": [user("x")], "inferenceConfig": {"maxTokens": 0}}),
            "maxTokens",
        ),
        (
            json!({"messages": [user("x"),
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "r"}]}}]}]}),
            "toolConfig field must be defined",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": "AA=="}}}]}]}),
            "png, jpeg",
        ),
    ];
    for (body, expected) in bad {
        let (status, headers, out) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            headers["x-amzn-errortype"]
                .to_str()
                .unwrap()
                .starts_with("ValidationException")
        );
        let message = json_of(&out)["message"].as_str().unwrap().to_owned();
        assert!(message.contains(expected), "{body} → {message}");
    }
    let tool_config = json!({"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]});
    let (status, _, out) = post(json!({"toolConfig": tool_config, "messages": [user("x"),
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": 18}}]}}]}]}))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&out)["output"]["message"]["content"][0]["text"],
        tool_reply_text(r#"{"temp":18}"#)
    );
}

#[test]
fn the_signature_check_agrees_with_botocore_vectors() {
    let vectors: Vec<Value> =
        serde_json::from_str(include_str!("../../llm/tests/fixtures/sigv4_vectors.json")).unwrap();
    assert!(vectors.len() >= 3);
    let signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
    for v in vectors {
        let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k}")).to_owned();
        let v_label = field("label");
        let v_region = field("region");
        let v_access = field("access_key");
        let v_secret = field("secret_key");
        let v_token = v["session_token"].as_str().map(str::to_owned);
        let v_host = field("host");
        let v_auth = field("authorization");
        let v_method = field("method");
        let v_path = field("path_on_wire");
        let v_body = field("body");
        let config = BedrockConfig {
            region: v_region,
            keys: vec![switchyard_testkit::bedrock::AwsKey {
                access_key_id: v_access,
                secret_access_key: v_secret,
                session_token: v_token.clone(),
            }],
            models: vec![],
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("host", v_host.parse().unwrap());
        headers.insert("x-amz-date", "20240101T000000Z".parse().unwrap());
        if let Some(t) = &v_token {
            headers.insert("x-amz-security-token", t.parse().unwrap());
        }
        headers.insert("authorization", v_auth.parse().unwrap());
        let method: Method = v_method.parse().unwrap();
        verify_sigv4(
            &config,
            &method,
            &v_path,
            None,
            &headers,
            v_body.as_bytes(),
            signed_at,
        )
        .unwrap_or_else(|e| panic!("{v_label}: {e:?}"));
        // Any change breaks it: another body, another path, a stale clock.
        assert!(verify_sigv4(&config, &method, &v_path, None, &headers, b"{}", signed_at).is_err());
        assert!(
            verify_sigv4(
                &config,
                &method,
                "/model/x/converse",
                None,
                &headers,
                v_body.as_bytes(),
                signed_at
            )
            .is_err()
        );
        let later = signed_at + Duration::from_secs(16 * 60);
        let err = verify_sigv4(
            &config,
            &method,
            &v_path,
            None,
            &headers,
            v_body.as_bytes(),
            later,
        )
        .unwrap_err();
        assert!(err.message.contains("expired"), "{err:?}");
    }
}
