//! The conformance suite: the same checks over every provider adapter, through a real gateway
//! over HTTP, for each inbound format the provider can be reached with (OpenAI Chat
//! Completions and Responses for every provider, Gemini for Gemini, Anthropic Messages for
//! every provider).
//!
//! Each provider is a validating mock (`switchyard-testkit`): a request the real provider
//! would refuse fails the test. Checks: a simple chat, streaming (chunk by chunk), a tool
//! call round trip (streamed and not: the streamed arguments arrive complete and in order),
//! usage (what the client sees and what the gateway counts), an upstream error (in the client's
//! error shape, with the upstream's status), bad credentials, a client that disconnects
//! mid-stream (the upstream stream is cancelled), and garbled upstream streams (a cut
//! connection, an undecodable event, an error event inside the 200 stream), which must end
//! the client's stream with an error event in its format, never hang.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_model::{Auth, Format, Provider, Proxy, Route, Secret};
use switchyard_testkit::snapshots::{proxy, route, with_target};
use switchyard_testkit::{
    ANTHROPIC_API_KEY, AZURE_API_KEY, BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY,
    Behavior, GEMINI_API_KEY, MOCK_API_KEY, MockAnthropic, MockAzure, MockBedrock, MockConfig,
    MockGemini, MockOpenAi, MockServer, ReportedUsage, TOOL_ARGUMENTS, reply_text, tool_reply_text,
};

use crate::common::*;

/// A provider variant under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    /// Azure with a dated `api-version` (the deployments surface).
    Azure,
    /// Azure's v1 surface (no `api-version`).
    AzureV1,
    Gemini,
    Bedrock,
    Nvidia,
    Compatible,
    Anthropic,
}

/// The client's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Chat,
    Responses,
    Gemini,
    Anthropic,
}

enum Mock {
    OpenAi(MockOpenAi),
    Azure(MockAzure),
    Gemini(MockGemini),
    Bedrock(MockBedrock),
    Anthropic(MockAnthropic),
}

impl Mock {
    fn server(&self) -> &MockServer {
        match self {
            Mock::OpenAi(m) => m,
            Mock::Azure(m) => m,
            Mock::Gemini(m) => m,
            Mock::Bedrock(m) => m,
            Mock::Anthropic(m) => m,
        }
    }
}

const COMPAT_KEY: &str = "compat-key";

impl Kind {
    fn route_name(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Azure => "azure",
            Kind::AzureV1 => "azure-v1",
            Kind::Gemini => "gemini",
            Kind::Bedrock => "claude",
            Kind::Nvidia => "nim",
            Kind::Compatible => "local",
            Kind::Anthropic => "anthropic",
        }
    }

    /// The route's target model (what `x-switchyard-model` says).
    fn target_model(self) -> &'static str {
        match self {
            Kind::OpenAi => "gpt-4.1",
            Kind::Azure => "gpt-4o-prod",
            Kind::AzureV1 => "gpt-4.1-mini",
            Kind::Gemini => "gemini-2.5-flash",
            Kind::Bedrock => "anthropic/anthropic.claude-3-haiku-20240307-v1:0",
            Kind::Nvidia => "meta/llama-3.1-8b-instruct",
            Kind::Compatible => "qwen2.5",
            Kind::Anthropic => "claude-sonnet-4-5",
        }
    }

    /// The model the mock answers as (named in its replies).
    fn answering_model(self) -> &'static str {
        match self {
            Kind::Azure => "gpt-4o-2024-08-06",
            Kind::AzureV1 => "gpt-4.1-mini-2025-04-14",
            Kind::Bedrock => "anthropic.claude-3-haiku-20240307-v1:0",
            other => other.target_model(),
        }
    }

    async fn start(self) -> Mock {
        match self {
            Kind::OpenAi | Kind::Nvidia => Mock::OpenAi(MockOpenAi::start().await.unwrap()),
            Kind::Compatible => Mock::OpenAi(
                MockOpenAi::start_with(MockConfig {
                    api_key: Some(COMPAT_KEY.into()),
                    ..MockConfig::default()
                })
                .await
                .unwrap(),
            ),
            Kind::Azure | Kind::AzureV1 => Mock::Azure(MockAzure::start().await.unwrap()),
            Kind::Gemini => Mock::Gemini(MockGemini::start().await.unwrap()),
            Kind::Bedrock => Mock::Bedrock(MockBedrock::start().await.unwrap()),
            Kind::Anthropic => Mock::Anthropic(MockAnthropic::start().await.unwrap()),
        }
    }

    fn route(self, mock: &Mock, good_key: bool) -> Route {
        let key = |k: &str| Auth::Static {
            api_key: Secret::new(if good_key { k } else { "wrong-key" }),
        };
        let mut r = match (self, mock) {
            (Kind::OpenAi, Mock::OpenAi(m)) => route(
                self.route_name(),
                Provider::OpenAi,
                &m.base_url(),
                key(MOCK_API_KEY),
            ),
            (Kind::Nvidia, Mock::OpenAi(m)) => route(
                self.route_name(),
                Provider::Nvidia,
                &m.base_url(),
                key(MOCK_API_KEY),
            ),
            (Kind::Compatible, Mock::OpenAi(m)) => route(
                self.route_name(),
                Provider::OpenAiCompatible,
                &m.base_url(),
                key(COMPAT_KEY),
            ),
            (Kind::Azure | Kind::AzureV1, Mock::Azure(m)) => {
                let mut r = route(
                    self.route_name(),
                    Provider::Azure,
                    &m.endpoint(),
                    key(AZURE_API_KEY),
                );
                if self == Kind::Azure {
                    r.api_version = Some("2024-10-21".into());
                }
                r
            }
            (Kind::Gemini, Mock::Gemini(m)) => route(
                self.route_name(),
                Provider::Gemini,
                &m.base_url(),
                key(GEMINI_API_KEY),
            ),
            (Kind::Bedrock, Mock::Bedrock(m)) => {
                let mut r = route(
                    self.route_name(),
                    Provider::Bedrock,
                    &m.endpoint(),
                    Auth::StaticAws {
                        access_key_id: Secret::new(BEDROCK_ACCESS_KEY),
                        secret_access_key: Secret::new(if good_key {
                            BEDROCK_SECRET_KEY
                        } else {
                            "wrong-secret"
                        }),
                        session_token: None,
                    },
                );
                r.region = Some(BEDROCK_REGION.into());
                r
            }
            (Kind::Anthropic, Mock::Anthropic(m)) => route(
                self.route_name(),
                Provider::Anthropic,
                &m.base_url(),
                key(ANTHROPIC_API_KEY),
            ),
            _ => unreachable!("mock of another kind"),
        };
        r = with_target(r, self.target_model());
        r
    }

    /// A rejection in the provider's own error shape.
    fn reject(self, status: u16) -> Behavior {
        let code = match (self, status) {
            (Kind::Gemini, 400) => "INVALID_ARGUMENT",
            (Kind::Gemini, _) => "RESOURCE_EXHAUSTED",
            (Kind::Bedrock, 400) => "ValidationException",
            (Kind::Bedrock, _) => "ThrottlingException",
            (Kind::Anthropic, 400) => "invalid_request_error",
            (Kind::Anthropic, _) => "rate_limit_error",
            (_, 400) => "invalid_value",
            _ => "rate_limit_exceeded",
        };
        Behavior::Reject {
            status,
            code: code.into(),
            message: format!("conformance: refused with {status}"),
        }
    }

    /// What the provider answers a bad key with.
    fn bad_key_status(self) -> u16 {
        match self {
            Kind::Gemini => 400,
            Kind::Bedrock => 403,
            _ => 401,
        }
    }
}

/// A gateway serving one proxy with one route to a fresh mock.
struct Setup {
    mock: Mock,
    kind: Kind,
    inbound: Inbound,
    proxy: String,
    _cp: switchyard_testkit::FakeControlPlane,
    gw: switchyard_gateway::Gateway,
    _cache: tempfile::TempDir,
}

fn proxy_for(
    name: &str,
    inbound: Inbound,
    routes: Vec<Route>,
    fallback: Option<(&str, Option<&str>)>,
) -> Proxy {
    let mut p = proxy(name, "/c", routes, fallback);
    match inbound {
        Inbound::Gemini => p.spec.format = Format::Gemini,
        Inbound::Anthropic => p.spec.format = Format::Anthropic,
        Inbound::Chat | Inbound::Responses => {}
    }
    p
}

impl Setup {
    async fn new(kind: Kind, inbound: Inbound, test: &str) -> Setup {
        Self::with_key(kind, inbound, test, true).await
    }

    async fn with_key(kind: Kind, inbound: Inbound, test: &str, good_key: bool) -> Setup {
        let mock = kind.start().await;
        let name = format!("{}-{inbound:?}-{test}", kind.route_name()).to_lowercase();
        let (cp, gw, cache) = serving(vec![proxy_for(
            &name,
            inbound,
            vec![kind.route(&mock, good_key)],
            None,
        )])
        .await;
        Setup {
            mock,
            kind,
            inbound,
            proxy: name,
            _cp: cp,
            gw,
            _cache: cache,
        }
    }

    fn server(&self) -> &MockServer {
        self.mock.server()
    }

    /// The model as the client names it.
    fn model(&self) -> String {
        match self.kind {
            Kind::Gemini => format!("gemini/{}", self.kind.target_model()),
            k => format!("{}/any", k.route_name()),
        }
    }

    fn path(&self, stream: bool) -> String {
        match self.inbound {
            Inbound::Chat => "/c/v1/chat/completions".into(),
            Inbound::Responses => "/c/v1/responses".into(),
            Inbound::Gemini if stream => format!(
                "/c/v1beta/models/{}:streamGenerateContent?alt=sse",
                self.model()
            ),
            Inbound::Gemini => format!("/c/v1beta/models/{}:generateContent", self.model()),
            Inbound::Anthropic => "/c/v1/messages".into(),
        }
    }

    async fn send(&self, turn: &Turn, stream: bool) -> reqwest::Response {
        let body = self.body(turn, stream);
        let resp = client()
            .post(url(&self.gw, &self.path(stream)))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            assert_stamped(&resp, self.kind.route_name(), self.kind.target_model());
        }
        resp
    }

    async fn ask(&self, turn: &Turn) -> Answer {
        let resp = self.send(turn, false).await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        self.parse(&body)
    }

    async fn ask_streamed(&self, turn: &Turn, include_usage: bool) -> Streamed {
        let body = {
            let mut b = self.body(turn, true);
            if include_usage && self.inbound == Inbound::Chat {
                b["stream_options"] = json!({"include_usage": true});
            }
            b
        };
        let mut resp = client()
            .post(url(&self.gw, &self.path(true)))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut chunks = 0;
        let mut text = String::new();
        let read = async {
            while let Some(chunk) = resp.chunk().await.unwrap() {
                chunks += 1;
                text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the client's stream hangs");
        let mut s = self.parse_stream(&text);
        s.chunks = chunks;
        s
    }

    fn body(&self, turn: &Turn, stream: bool) -> Value {
        let question = "What is the weather in Paris?";
        match self.inbound {
            Inbound::Chat => {
                let mut messages = vec![
                    json!({"role": "system", "content": "You are terse."}),
                    json!({"role": "user", "content": question}),
                ];
                if let Turn::Result(call, result) = turn {
                    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]}));
                    messages
                        .push(json!({"role": "tool", "tool_call_id": call.id, "content": result}));
                }
                let mut b = json!({"model": self.model(), "messages": messages, "max_tokens": 200});
                if stream {
                    b["stream"] = json!(true);
                }
                if !matches!(turn, Turn::Ask) {
                    b["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
                        "description": "Current weather in a city",
                        "parameters": weather_schema()}}]);
                }
                b
            }
            Inbound::Responses => {
                let mut input = vec![json!({"role": "user", "content": question})];
                if let Turn::Result(call, result) = turn {
                    input.push(json!({"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments}));
                    input.push(json!({"type": "function_call_output", "call_id": call.id, "output": result}));
                }
                let mut b = json!({"model": self.model(), "instructions": "You are terse.",
                    "input": input, "max_output_tokens": 200});
                if stream {
                    b["stream"] = json!(true);
                }
                if !matches!(turn, Turn::Ask) {
                    b["tools"] = json!([{"type": "function", "name": "get_weather",
                        "description": "Current weather in a city", "parameters": weather_schema()}]);
                }
                b
            }
            Inbound::Anthropic => {
                let mut messages = vec![json!({"role": "user", "content": question})];
                if let Turn::Result(call, result) = turn {
                    let input: Value = serde_json::from_str(&call.arguments).unwrap();
                    messages.push(json!({"role": "assistant", "content": [
                        {"type": "tool_use", "id": call.id, "name": call.name, "input": input}]}));
                    messages.push(json!({"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": result}]}));
                }
                let mut b = json!({"model": self.model(), "system": "You are terse.",
                    "messages": messages, "max_tokens": 200});
                if stream {
                    b["stream"] = json!(true);
                }
                if !matches!(turn, Turn::Ask) {
                    b["tools"] = json!([{"name": "get_weather",
                        "description": "Current weather in a city", "input_schema": weather_schema()}]);
                }
                b
            }
            Inbound::Gemini => {
                let mut contents = vec![json!({"role": "user", "parts": [{"text": question}]})];
                if let Turn::Result(call, result) = turn {
                    let args: Value = serde_json::from_str(&call.arguments).unwrap();
                    contents.push(json!({"role": "model", "parts": [{"functionCall": {"name": call.name, "args": args}}]}));
                    contents.push(json!({"role": "user", "parts": [{"functionResponse": {"name": call.name, "response": {"output": result}}}]}));
                }
                let mut b = json!({"systemInstruction": {"parts": [{"text": "You are terse."}]},
                    "contents": contents, "generationConfig": {"maxOutputTokens": 200}});
                if !matches!(turn, Turn::Ask) {
                    b["tools"] = json!([{"functionDeclarations": [{"name": "get_weather",
                        "description": "Current weather in a city", "parameters": weather_schema()}]}]);
                }
                b
            }
        }
    }

    fn parse(&self, body: &Value) -> Answer {
        match self.inbound {
            Inbound::Chat => {
                assert_eq!(body["object"], "chat.completion", "{body}");
                let choice = &body["choices"][0];
                let call = choice["message"]["tool_calls"][0]
                    .as_object()
                    .map(|c| Call {
                        id: c["id"].as_str().unwrap().into(),
                        name: c["function"]["name"].as_str().unwrap().into(),
                        arguments: c["function"]["arguments"].as_str().unwrap().into(),
                    });
                Answer {
                    text: choice["message"]["content"].as_str().map(str::to_owned),
                    call,
                    finish: choice["finish_reason"].as_str().unwrap_or_default().into(),
                    usage: chat_usage(&body["usage"]),
                }
            }
            Inbound::Responses => {
                assert_eq!(body["object"], "response", "{body}");
                let mut a = Answer::default();
                for item in body["output"].as_array().unwrap() {
                    match item["type"].as_str() {
                        Some("message") => {
                            a.text = Some(item["content"][0]["text"].as_str().unwrap().into())
                        }
                        Some("function_call") => {
                            a.call = Some(Call {
                                id: item["call_id"].as_str().unwrap().into(),
                                name: item["name"].as_str().unwrap().into(),
                                arguments: item["arguments"].as_str().unwrap().into(),
                            })
                        }
                        _ => {}
                    }
                }
                a.finish = body["status"].as_str().unwrap_or_default().into();
                a.usage = responses_usage(&body["usage"]);
                a
            }
            Inbound::Anthropic => {
                assert_eq!(body["type"], "message", "{body}");
                assert_eq!(body["role"], "assistant", "{body}");
                assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
                let mut a = Answer::default();
                for block in body["content"].as_array().unwrap() {
                    match block["type"].as_str() {
                        Some("text") => a
                            .text
                            .get_or_insert_with(String::new)
                            .push_str(block["text"].as_str().unwrap()),
                        Some("tool_use") => {
                            a.call = Some(Call {
                                id: block["id"].as_str().unwrap().into(),
                                name: block["name"].as_str().unwrap().into(),
                                arguments: block["input"].to_string(),
                            })
                        }
                        _ => {}
                    }
                }
                a.finish = body["stop_reason"].as_str().unwrap_or_default().into();
                a.usage = anthropic_usage(&body["usage"]);
                a
            }
            Inbound::Gemini => {
                let candidate = &body["candidates"][0];
                let mut a = Answer::default();
                for part in candidate["content"]["parts"].as_array().unwrap() {
                    if let Some(t) = part["text"].as_str() {
                        a.text.get_or_insert_with(String::new).push_str(t);
                    }
                    if let Some(c) = part.get("functionCall") {
                        a.call = Some(Call {
                            id: c["id"].as_str().unwrap_or_default().into(),
                            name: c["name"].as_str().unwrap().into(),
                            arguments: c["args"].to_string(),
                        });
                    }
                }
                a.finish = candidate["finishReason"]
                    .as_str()
                    .unwrap_or_default()
                    .into();
                a.usage = gemini_usage(&body["usageMetadata"]);
                a
            }
        }
    }

    fn parse_stream(&self, text: &str) -> Streamed {
        let mut s = Streamed::default();
        let mut calls: BTreeMap<u64, Call> = BTreeMap::new();
        let normalized = text.replace("\r\n", "\n");
        for event in normalized.split("\n\n").filter(|e| !e.trim().is_empty()) {
            s.events += 1;
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if data == "[DONE]" {
                s.done = true;
                continue;
            }
            let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| {
                panic!("an event the client cannot read ({e}): {data}\nin {text}")
            });
            if v.get("error").is_some() || name.as_deref() == Some("error") {
                s.error = Some(v);
                continue;
            }
            match self.inbound {
                Inbound::Chat => {
                    if let Some(u) = chat_usage(&v["usage"]) {
                        s.usage = Some(u);
                    }
                    let Some(choice) = v["choices"].get(0) else {
                        continue;
                    };
                    if let Some(t) = choice["delta"]["content"].as_str() {
                        s.text.push_str(t);
                    }
                    for tc in choice["delta"]["tool_calls"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let call = calls.entry(tc["index"].as_u64().unwrap()).or_default();
                        if let Some(id) = tc["id"].as_str() {
                            call.id = id.into();
                        }
                        if let Some(n) = tc["function"]["name"].as_str() {
                            call.name = n.into();
                        }
                        if let Some(a) = tc["function"]["arguments"].as_str() {
                            call.arguments.push_str(a);
                            s.argument_pieces += 1;
                        }
                    }
                    if let Some(f) = choice["finish_reason"].as_str() {
                        s.finish = f.into();
                    }
                }
                Inbound::Responses => {
                    let kind = v["type"].as_str().unwrap_or_default().to_owned();
                    assert_eq!(name.as_deref(), Some(kind.as_str()), "{data}");
                    let seq = v["sequence_number"].as_u64().expect("sequence_number");
                    assert!(
                        s.last_sequence.is_none_or(|last| seq == last + 1),
                        "sequence {seq} after {:?}",
                        s.last_sequence
                    );
                    s.last_sequence = Some(seq);
                    s.kinds.push(kind.clone());
                    match kind.as_str() {
                        "response.output_text.delta" => {
                            s.text.push_str(v["delta"].as_str().unwrap())
                        }
                        "response.output_item.added" if v["item"]["type"] == "function_call" => {
                            let call = calls
                                .entry(v["output_index"].as_u64().unwrap())
                                .or_default();
                            call.id = v["item"]["call_id"].as_str().unwrap().into();
                            call.name = v["item"]["name"].as_str().unwrap().into();
                        }
                        "response.function_call_arguments.delta" => {
                            let call = calls
                                .entry(v["output_index"].as_u64().unwrap())
                                .or_default();
                            call.arguments.push_str(v["delta"].as_str().unwrap());
                            s.argument_pieces += 1;
                        }
                        "response.completed" | "response.incomplete" => {
                            s.done = true;
                            s.finish = v["response"]["status"].as_str().unwrap_or_default().into();
                            s.usage = responses_usage(&v["response"]["usage"]);
                        }
                        "response.failed" => s.error = Some(v.clone()),
                        _ => {}
                    }
                }
                Inbound::Anthropic => {
                    let kind = v["type"].as_str().unwrap_or_default().to_owned();
                    assert_eq!(name.as_deref(), Some(kind.as_str()), "{data}");
                    s.kinds.push(kind.clone());
                    match kind.as_str() {
                        "message_start" => {
                            assert_eq!(v["message"]["type"], "message", "{data}");
                            s.anthropic_usage = v["message"]["usage"].clone();
                        }
                        "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                            let call = calls.entry(v["index"].as_u64().unwrap()).or_default();
                            call.id = v["content_block"]["id"].as_str().unwrap().into();
                            call.name = v["content_block"]["name"].as_str().unwrap().into();
                        }
                        "content_block_delta" => {
                            let delta = &v["delta"];
                            match delta["type"].as_str() {
                                Some("text_delta") => {
                                    s.text.push_str(delta["text"].as_str().unwrap())
                                }
                                Some("input_json_delta") => {
                                    let piece = delta["partial_json"].as_str().unwrap();
                                    let call =
                                        calls.entry(v["index"].as_u64().unwrap()).or_default();
                                    call.arguments.push_str(piece);
                                    if !piece.is_empty() {
                                        s.argument_pieces += 1;
                                    }
                                }
                                _ => {}
                            }
                        }
                        "message_delta" => {
                            s.finish = v["delta"]["stop_reason"]
                                .as_str()
                                .unwrap_or_default()
                                .into();
                            // Later usage fields replace the start's (cumulative counts).
                            if let (Some(total), Some(more)) =
                                (s.anthropic_usage.as_object_mut(), v["usage"].as_object())
                            {
                                for (k, n) in more {
                                    if !n.is_null() {
                                        total.insert(k.clone(), n.clone());
                                    }
                                }
                            }
                            s.usage = anthropic_usage(&s.anthropic_usage);
                        }
                        "message_stop" => s.done = true,
                        _ => {}
                    }
                }
                Inbound::Gemini => {
                    let candidate = &v["candidates"][0];
                    for part in candidate["content"]["parts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        if let Some(t) = part["text"].as_str() {
                            s.text.push_str(t);
                        }
                        if let Some(c) = part.get("functionCall") {
                            let n = calls.len() as u64;
                            calls.insert(
                                n,
                                Call {
                                    id: c["id"].as_str().unwrap_or_default().into(),
                                    name: c["name"].as_str().unwrap().into(),
                                    arguments: c["args"].to_string(),
                                },
                            );
                            s.argument_pieces += 1;
                        }
                    }
                    if let Some(f) = candidate["finishReason"].as_str() {
                        s.finish = f.into();
                        s.done = true;
                    }
                    if let Some(u) = gemini_usage(&v["usageMetadata"]) {
                        s.usage = Some(u);
                    }
                }
            }
        }
        s.calls = calls.into_values().collect();
        s
    }

    /// The error of a non-2xx answer, checked to be in the client's error shape.
    async fn error_of(&self, resp: reqwest::Response) -> (u16, String) {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        let err = &body["error"];
        match self.inbound {
            Inbound::Chat | Inbound::Responses => {
                assert!(err["type"].is_string(), "not an OpenAI error: {body}");
                assert!(err.get("code").is_some(), "not an OpenAI error: {body}");
            }
            Inbound::Gemini => {
                assert_eq!(err["code"], status, "not a Gemini error: {body}");
                assert!(err["status"].is_string(), "not a Gemini error: {body}");
            }
            Inbound::Anthropic => {
                assert_eq!(body["type"], "error", "not an Anthropic error: {body}");
                assert!(err["type"].is_string(), "not an Anthropic error: {body}");
            }
        }
        (status, err["message"].as_str().unwrap().to_owned())
    }

    /// Whether a stream's error event is in the client's format.
    fn assert_stream_error(&self, s: &Streamed) {
        let err = s
            .error
            .as_ref()
            .expect("no error event at the end of the stream");
        match self.inbound {
            Inbound::Chat => {
                assert!(err["error"]["message"].is_string(), "{err}");
                assert!(err["error"]["type"].is_string(), "{err}");
            }
            Inbound::Responses => {
                let kind = err["type"].as_str().unwrap();
                assert!(kind == "error" || kind == "response.failed", "{err}");
            }
            Inbound::Gemini => {
                assert!(err["error"]["status"].is_string(), "{err}");
                assert!(err["error"]["code"].is_number(), "{err}");
            }
            Inbound::Anthropic => {
                assert_eq!(err["type"], "error", "{err}");
                assert!(err["error"]["type"].is_string(), "{err}");
                assert!(err["error"]["message"].is_string(), "{err}");
            }
        }
        assert!(!s.done, "a broken stream must not look complete");
    }

    async fn metrics(&self) -> String {
        crate::common::metrics_handle().render()
    }
}

fn weather_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
           "required": ["city"]})
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

enum Turn {
    Ask,
    AskWithTools,
    Result(Call, String),
}

#[derive(Debug, Default)]
struct Answer {
    text: Option<String>,
    call: Option<Call>,
    finish: String,
    usage: Option<ReportedUsage>,
}

#[derive(Debug, Default)]
struct Streamed {
    text: String,
    calls: Vec<Call>,
    argument_pieces: usize,
    finish: String,
    usage: Option<ReportedUsage>,
    error: Option<Value>,
    done: bool,
    events: usize,
    chunks: usize,
    kinds: Vec<String>,
    last_sequence: Option<u64>,
    anthropic_usage: Value,
}

fn chat_usage(u: &Value) -> Option<ReportedUsage> {
    Some(ReportedUsage {
        input: u["prompt_tokens"].as_u64()?,
        output: u["completion_tokens"].as_u64()?,
        cached: u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    })
}

fn responses_usage(u: &Value) -> Option<ReportedUsage> {
    Some(ReportedUsage {
        input: u["input_tokens"].as_u64()?,
        output: u["output_tokens"].as_u64()?,
        cached: u["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    })
}

fn gemini_usage(u: &Value) -> Option<ReportedUsage> {
    Some(ReportedUsage {
        input: u["promptTokenCount"].as_u64()?,
        output: u["candidatesTokenCount"].as_u64()?,
        cached: u["cachedContentTokenCount"].as_u64().unwrap_or(0),
    })
}

/// Anthropic's usage in OpenAI's terms: input includes cache reads and writes.
fn anthropic_usage(u: &Value) -> Option<ReportedUsage> {
    let reads = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let writes = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    Some(ReportedUsage {
        input: u["input_tokens"].as_u64()? + reads + writes,
        output: u["output_tokens"].as_u64()?,
        cached: reads,
    })
}

fn finish_for_tools(inbound: Inbound) -> &'static str {
    match inbound {
        Inbound::Chat => "tool_calls",
        Inbound::Responses => "completed",
        Inbound::Gemini => "STOP",
        Inbound::Anthropic => "tool_use",
    }
}

fn finish_for_text(inbound: Inbound) -> &'static str {
    match inbound {
        Inbound::Chat => "stop",
        Inbound::Responses => "completed",
        Inbound::Gemini => "STOP",
        Inbound::Anthropic => "end_turn",
    }
}

fn same_json(a: &str, b: &str) -> bool {
    serde_json::from_str::<Value>(a).ok() == serde_json::from_str::<Value>(b).ok()
}

// ---------------------------------------------------------------------------------------
// The checks.

pub async fn simple_chat(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "simple").await;
    let a = s.ask(&Turn::Ask).await;
    assert_eq!(
        a.text.as_deref(),
        Some(reply_text(kind.answering_model()).as_str())
    );
    assert_eq!(a.finish, finish_for_text(inbound));
    assert!(a.call.is_none());
    assert_eq!(s.server().request_count(), 1);
}

pub async fn streaming(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "stream").await;
    let out = s.ask_streamed(&Turn::Ask, false).await;
    assert_eq!(out.text, reply_text(kind.answering_model()));
    assert_eq!(out.finish, finish_for_text(inbound));
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.done || inbound == Inbound::Gemini);
    assert!(out.events > 3, "{out:?}");
    match inbound {
        // The gateway asked the upstream for usage; a client that did not gets none.
        Inbound::Chat => {
            assert!(out.done);
            assert!(out.usage.is_none(), "usage the client did not ask for");
        }
        Inbound::Responses => {
            assert_eq!(
                out.kinds.first().map(String::as_str),
                Some("response.created")
            );
            assert_eq!(
                out.kinds.last().map(String::as_str),
                Some("response.completed")
            );
            for kind in [
                "response.output_item.added",
                "response.output_text.done",
                "response.output_item.done",
            ] {
                assert!(
                    out.kinds.iter().any(|k| k == kind),
                    "{kind} missing: {:?}",
                    out.kinds
                );
            }
        }
        Inbound::Anthropic => {
            assert!(out.done);
            let kinds: Vec<&str> = out.kinds.iter().map(String::as_str).collect();
            assert_eq!(kinds.first(), Some(&"message_start"), "{kinds:?}");
            assert_eq!(kinds.last(), Some(&"message_stop"), "{kinds:?}");
            assert_eq!(kinds[kinds.len() - 2], "message_delta", "{kinds:?}");
            assert!(kinds.contains(&"content_block_stop"), "{kinds:?}");
            assert!(
                out.usage.is_some(),
                "an anthropic stream always carries usage"
            );
        }
        Inbound::Gemini => {}
    }
}

pub async fn tool_round_trip(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "tools").await;
    let a = s.ask(&Turn::AskWithTools).await;
    let call = a.call.expect("a tool call");
    assert_eq!(call.name, "get_weather");
    assert!(
        same_json(&call.arguments, TOOL_ARGUMENTS),
        "{}",
        call.arguments
    );
    assert_eq!(a.finish, finish_for_tools(inbound));
    let a = s.ask(&Turn::Result(call, "18C and sunny".into())).await;
    assert_eq!(
        a.text.as_deref(),
        Some(tool_reply_text("18C and sunny").as_str())
    );
    assert!(a.call.is_none());
}

pub async fn tool_round_trip_streamed(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "tools-stream").await;
    let out = s.ask_streamed(&Turn::AskWithTools, false).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.calls.len(), 1, "{out:?}");
    let call = out.calls[0].clone();
    assert_eq!(call.name, "get_weather");
    assert!(!call.id.is_empty() || inbound == Inbound::Gemini);
    // The pieces, concatenated in the order they came, are the arguments, whole.
    if inbound == Inbound::Gemini {
        assert!(
            same_json(&call.arguments, TOOL_ARGUMENTS),
            "{}",
            call.arguments
        );
    } else {
        assert_eq!(call.arguments, TOOL_ARGUMENTS);
        assert!(out.argument_pieces >= 1);
    }
    assert_eq!(out.finish, finish_for_tools(inbound));
    let out = s
        .ask_streamed(&Turn::Result(call, "18C and sunny".into()), false)
        .await;
    assert_eq!(out.text, tool_reply_text("18C and sunny"));
}

pub async fn usage(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "usage").await;
    let a = s.ask(&Turn::Ask).await;
    let reported = s.server().last_reported_usage().unwrap();
    assert_eq!(a.usage, Some(reported), "non-streamed usage");
    let out = s.ask_streamed(&Turn::Ask, true).await;
    let reported_stream = s.server().last_reported_usage().unwrap();
    assert_eq!(out.usage, Some(reported_stream), "streamed usage");
    // The gateway counted both, in one place.
    let route = kind.route_name();
    let metrics = s.metrics().await;
    let expect = |kind: &str, n: u64| {
        format!(
            "switchyard_gateway_tokens_total{{proxy=\"{}\",route=\"{route}\",type=\"{kind}\"}} {n}",
            s.proxy
        )
    };
    for line in [
        expect("input", reported.input + reported_stream.input),
        expect("output", reported.output + reported_stream.output),
        expect("cached_input", reported.cached + reported_stream.cached),
    ] {
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    let ttft = format!(
        "switchyard_gateway_time_to_first_token_seconds_count{{proxy=\"{}\",route=\"{route}\"}} 1",
        s.proxy
    );
    assert!(metrics.contains(&ttft), "{ttft} missing from\n{metrics}");
}

pub async fn upstream_error(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "error").await;
    for status in [400, 429] {
        s.server().set_behavior(kind.reject(status));
        let (got, message) = s.error_of(s.send(&Turn::Ask, false).await).await;
        assert_eq!(got, status);
        assert!(message.contains("conformance: refused"), "{message}");
        // Before the first byte of a stream, too.
        let (got, _) = s.error_of(s.send(&Turn::Ask, true).await).await;
        assert_eq!(got, status);
    }
}

pub async fn bad_credentials(kind: Kind, inbound: Inbound) {
    let s = Setup::with_key(kind, inbound, "badkey", false).await;
    let (status, message) = s.error_of(s.send(&Turn::Ask, false).await).await;
    assert_eq!(status, kind.bad_key_status(), "{message}");
    assert!(!message.contains("wrong-"), "a key in an error: {message}");
    assert_eq!(s.server().request_count(), 1);
}

pub async fn client_disconnect(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "disconnect").await;
    s.server().set_behavior(Behavior::SlowStream {
        interval: Duration::from_millis(150),
    });
    let mut resp = s.send(&Turn::Ask, true).await;
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some());
    drop(resp);
    assert!(
        s.server()
            .wait_until(WAIT, |m| m.streams_cancelled() == 1)
            .await,
        "the upstream stream outlived its client"
    );
    assert_eq!(s.server().streams_completed(), 0);
}

pub async fn garbled_streams_end_cleanly(kind: Kind, inbound: Inbound) {
    let s = Setup::new(kind, inbound, "garbled").await;
    for behavior in [
        Behavior::TruncatedStream,
        Behavior::GarbledStream,
        Behavior::StreamError,
    ] {
        s.server().set_behavior(behavior.clone());
        let out = s.ask_streamed(&Turn::Ask, false).await;
        s.assert_stream_error(&out);
        let text = &out.text;
        assert!(
            reply_text(kind.answering_model()).starts_with(text.as_str()),
            "{behavior:?}: {text:?}"
        );
    }
    // The gateway still serves.
    s.server().set_behavior(Behavior::Normal);
    assert_eq!(
        s.ask(&Turn::Ask).await.text.unwrap(),
        reply_text(kind.answering_model())
    );
}

macro_rules! conformance {
    ($($name:ident => $kind:expr, $inbound:expr;)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn simple_chat() { super::simple_chat($kind, $inbound).await }
            #[tokio::test]
            async fn streaming() { super::streaming($kind, $inbound).await }
            #[tokio::test]
            async fn tool_round_trip() { super::tool_round_trip($kind, $inbound).await }
            #[tokio::test]
            async fn tool_round_trip_streamed() { super::tool_round_trip_streamed($kind, $inbound).await }
            #[tokio::test]
            async fn usage() { super::usage($kind, $inbound).await }
            #[tokio::test]
            async fn upstream_error() { super::upstream_error($kind, $inbound).await }
            #[tokio::test]
            async fn bad_credentials() { super::bad_credentials($kind, $inbound).await }
            #[tokio::test]
            async fn client_disconnect() { super::client_disconnect($kind, $inbound).await }
            #[tokio::test]
            async fn garbled_streams_end_cleanly() { super::garbled_streams_end_cleanly($kind, $inbound).await }
        }
    )*};
}

conformance! {
    openai_chat => Kind::OpenAi, Inbound::Chat;
    openai_responses => Kind::OpenAi, Inbound::Responses;
    azure_chat => Kind::Azure, Inbound::Chat;
    azure_responses => Kind::Azure, Inbound::Responses;
    azure_v1_chat => Kind::AzureV1, Inbound::Chat;
    azure_v1_responses => Kind::AzureV1, Inbound::Responses;
    gemini_chat => Kind::Gemini, Inbound::Chat;
    gemini_responses => Kind::Gemini, Inbound::Responses;
    gemini_gemini => Kind::Gemini, Inbound::Gemini;
    bedrock_chat => Kind::Bedrock, Inbound::Chat;
    bedrock_responses => Kind::Bedrock, Inbound::Responses;
    nvidia_chat => Kind::Nvidia, Inbound::Chat;
    nvidia_responses => Kind::Nvidia, Inbound::Responses;
    compatible_chat => Kind::Compatible, Inbound::Chat;
    compatible_responses => Kind::Compatible, Inbound::Responses;
    anthropic_chat => Kind::Anthropic, Inbound::Chat;
    anthropic_responses => Kind::Anthropic, Inbound::Responses;
    anthropic_anthropic => Kind::Anthropic, Inbound::Anthropic;
    openai_anthropic => Kind::OpenAi, Inbound::Anthropic;
    azure_anthropic => Kind::Azure, Inbound::Anthropic;
    azure_v1_anthropic => Kind::AzureV1, Inbound::Anthropic;
    gemini_anthropic => Kind::Gemini, Inbound::Anthropic;
    bedrock_anthropic => Kind::Bedrock, Inbound::Anthropic;
    nvidia_anthropic => Kind::Nvidia, Inbound::Anthropic;
    compatible_anthropic => Kind::Compatible, Inbound::Anthropic;
}

/// `POST {base}/v1/messages/count_tokens`: on an `anthropic` route, the client's body (model
/// rewritten) to Anthropic's `count_tokens`, answering the count a completion of the same
/// request reports as input; on a route of another provider, a 400 naming the model, nothing
/// sent.
#[tokio::test]
async fn anthropic_count_tokens() {
    let s = Setup::new(Kind::Anthropic, Inbound::Anthropic, "count").await;
    let body = json!({"model": s.model(), "system": "You are terse.",
                      "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    let resp = client()
        .post(url(&s.gw, "/c/v1/messages/count_tokens"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "anthropic", "claude-sonnet-4-5");
    let counted: Value = resp.json().await.unwrap();
    let seen = s.server().last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert_eq!(seen.model().as_deref(), Some("claude-sonnet-4-5"));
    let answered = s.ask(&Turn::Ask).await;
    assert_eq!(
        counted["input_tokens"].as_u64(),
        answered.usage.map(|u| u.input),
        "{counted}"
    );

    let t = Setup::new(Kind::OpenAi, Inbound::Anthropic, "count").await;
    let resp = client()
        .post(url(&t.gw, "/c/v1/messages/count_tokens"))
        .json(&json!({"model": t.model(), "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let (status, message) = t.error_of(resp).await;
    assert_eq!(status, 400);
    assert!(message.contains("count_tokens"), "{message}");
    assert_eq!(t.server().request_count(), 0);
}
