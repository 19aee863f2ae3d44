//! The mocks behave like the real services: these tests pin what they accept and refuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_distribution_client::ConfigDistributionClient;
use switchyard_testkit::snapshots::{openai_route, proxy, snapshot};
use switchyard_testkit::{
    Behavior, FakeControlPlane, MOCK_API_KEY, MockOpenAi, NodeEvent, reply_text,
};

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn chat(mock: &MockOpenAi, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn ok_body() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
}

#[tokio::test]
async fn chat_completions_validate_like_the_real_api() {
    let mock = MockOpenAi::start().await.unwrap();

    let (status, body) = chat(&mock, None, ok_body()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = chat(&mock, Some("sk-wrong"), ok_body()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );

    let bad = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": 3, "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": []}), "empty array"),
        (json!({"model": "m", "messages": ["hi"]}), "messages[0]"),
        (
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
            "robot",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user"}]}),
            "messages[0]",
        ),
        (
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0]",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "foo": 1}),
            "foo",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}),
            "'n'",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, mention) in bad {
        let (status, err) = chat(&mock, Some(MOCK_API_KEY), body.clone()).await;
        assert_eq!(status, 400, "{body}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(mention), "{body}: {message}");
        assert!(err["error"].get("param").is_some() && err["error"].get("code").is_some());
    }

    let (status, body) = chat(&mock, Some(MOCK_API_KEY), ok_body()).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        reply_text("gpt-4o")
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 16);
    let last = mock.last_request().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.model().as_deref(), Some("gpt-4o"));
    assert_eq!(last.header("authorization"), Some("Bearer sk-mock-key"));
}

#[tokio::test]
async fn streams_are_realistic_sse() {
    let mock = MockOpenAi::start().await.unwrap();
    let mut body = ok_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = http()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(MOCK_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, reply_text("gpt-4o"));
    assert_eq!(mock.streams_completed(), 1);
}

#[tokio::test]
async fn responses_and_models() {
    let mock = MockOpenAi::start().await.unwrap();
    let resp = http()
        .post(format!("{}/responses", mock.base_url()))
        .bearer_auth(MOCK_API_KEY)
        .json(&json!({"model": "gpt-4.1", "input": "Hello"}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        reply_text("gpt-4.1")
    );

    let resp = http()
        .post(format!("{}/responses", mock.base_url()))
        .bearer_auth(MOCK_API_KEY)
        .json(&json!({"model": "gpt-4.1", "input": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let body: Value = http()
        .get(format!("{}/models", mock.base_url()))
        .bearer_auth(MOCK_API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "gpt-4o-mini");

    let resp = http()
        .get(format!("{}/nope", mock.base_url()))
        .bearer_auth(MOCK_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn injected_failures() {
    let mock = MockOpenAi::start().await.unwrap();
    mock.set_behavior(Behavior::Fail {
        status: 503,
        body: r#"{"error":{"message":"overloaded"}}"#.into(),
    });
    let (status, body) = chat(&mock, Some(MOCK_API_KEY), ok_body()).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["message"], "overloaded");

    mock.set_behavior(Behavior::DropConnection);
    let err = http()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&ok_body())
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status(), "{err}");

    mock.set_behavior(Behavior::DelayHeaders(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let (status, _) = chat(&mock, Some(MOCK_API_KEY), ok_body()).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_fake_control_plane_speaks_the_protocol() {
    let cp = FakeControlPlane::start().await.unwrap();
    cp.require_token("good");
    cp.push(snapshot(
        "gw",
        3,
        vec![proxy(
            "p",
            "/p",
            vec![openai_route("a", "http://127.0.0.1:9/v1", "k")],
            None,
        )],
    ))
    .await;

    let hello = |token: &str| pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            gateway: "gw".into(),
            node_id: "n1".into(),
            registration_token: token.into(),
            current_version: 0,
            address: "127.0.0.1:1".into(),
            software_version: "test".into(),
            has_encoder: None,
        })),
    };
    let mut client = ConfigDistributionClient::connect(cp.url()).await.unwrap();
    let refused = client
        .subscribe(tokio_stream::iter(vec![hello("bad")]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("good")).await.unwrap();
    let mut inbound = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    let Some(pb::control_message::Kind::Snapshot(s)) = first.kind else {
        panic!("{first:?}")
    };
    assert_eq!(s.version, 3);
    tx.send(pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Ack(pb::Ack {
            version: 3,
            applied: true,
            error: String::new(),
            proxy_failures: vec![],
        })),
    })
    .await
    .unwrap();
    assert!(
        cp.wait_for_ack(3, Duration::from_secs(5))
            .await
            .unwrap()
            .applied
    );
    assert_eq!(cp.connected(), 1);

    cp.push(snapshot("gw", 4, vec![])).await;
    let next = inbound.message().await.unwrap().unwrap();
    assert!(matches!(next.kind, Some(pb::control_message::Kind::Snapshot(s)) if s.version == 4));

    let addr = cp.stop().await;
    let end = inbound.message().await;
    assert!(
        matches!(end, Err(ref s) if s.code() == tonic::Code::Unavailable),
        "{end:?}"
    );
    // The port can be taken again.
    let cp = FakeControlPlane::start_on(addr).await.unwrap();
    assert_eq!(cp.addr(), addr);
    assert!(cp.events().iter().all(|e| !matches!(e, NodeEvent::Ack(_))));
}
