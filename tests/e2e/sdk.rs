//! The official Python SDKs against a real gateway (tests/python), driven from here so the
//! gateway, control plane and mock upstreams are the real ones: one test per SDK file.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, chat, eventually, pytest, start_node};
use switchyard_testkit::{
    AZURE_API_KEY, BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY, GEMINI_API_KEY,
    MOCK_API_KEY, MockAzure, MockBedrock, MockGemini, MockOpenAi, TOOL_ARGUMENTS, reply_text,
};

async fn create_proxy(plane: &Plane, body: Value) {
    let (status, created) = plane.admin().post("/proxies", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk() {
    let store = Store::sqlite();
    let openai = MockOpenAi::start().await.unwrap();
    let azure = MockAzure::start().await.unwrap();
    let gemini = MockGemini::start().await.unwrap();
    let bedrock = MockBedrock::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    create_proxy(
        &plane,
        json!({
            "name": "support", "gateway": "prod-eu", "base_path": "/support",
            "routes": [
                {"name": "openai", "provider": "openai", "url": openai.base_url(),
                 "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"},
                {"name": "azure", "provider": "azure", "url": azure.endpoint(), "api_version": "2024-10-21",
                 "auth": {"type": "static", "api_key": AZURE_API_KEY}, "target_model": "gpt-4o-prod"},
                {"name": "gemini", "provider": "gemini", "url": gemini.base_url(),
                 "auth": {"type": "static", "api_key": GEMINI_API_KEY}, "target_model": "gemini-2.5-flash"},
                {"name": "claude", "provider": "bedrock", "url": bedrock.endpoint(), "region": BEDROCK_REGION,
                 "auth": {"type": "static", "access_key_id": BEDROCK_ACCESS_KEY, "secret_access_key": BEDROCK_SECRET_KEY},
                 "target_model": "anthropic/anthropic.claude-3-haiku-20240307-v1:0"}
            ]
        }),
    )
    .await;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(5), "served", || async {
        chat(&http, node.local_addr(), "/support", "openai/x")
            .await
            .0
            == StatusCode::OK
    })
    .await;

    let routes = json!([
        {"id": "openai", "model": "openai/anything", "served": "gpt-4.1",
         "reply": reply_text("gpt-4.1"), "translated": false},
        {"id": "azure", "model": "azure/anything", "served": "gpt-4o-prod",
         "reply": reply_text("gpt-4o-2024-08-06"), "translated": false},
        {"id": "gemini", "model": "gemini/anything", "served": "gemini-2.5-flash",
         "reply": reply_text("gemini-2.5-flash"), "translated": true},
        {"id": "claude", "model": "claude/anything", "served": "anthropic/anthropic.claude-3-haiku-20240307-v1:0",
         "reply": reply_text("anthropic.claude-3-haiku-20240307-v1:0"), "translated": true},
    ]);
    pytest(
        "test_openai_sdk.py",
        &[
            (
                "SWITCHYARD_BASE_URL",
                format!("http://{}/support/v1", node.local_addr()),
            ),
            ("SWITCHYARD_ROUTES", routes.to_string()),
            ("SWITCHYARD_TOOL_ARGUMENTS", TOOL_ARGUMENTS.to_owned()),
        ],
    )
    .await;
    // Every provider was really called (nothing answered from the gateway itself).
    for (name, count) in [
        ("openai", openai.request_count()),
        ("azure", azure.request_count()),
        ("gemini", gemini.request_count()),
        ("bedrock", bedrock.request_count()),
    ] {
        assert!(count >= 9, "{name}: {count} requests");
    }
    node.shutdown().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_genai_python_sdk() {
    let store = Store::sqlite();
    let gemini = MockGemini::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    create_proxy(
        &plane,
        json!({
            "name": "gem", "gateway": "prod-eu", "base_path": "/gem", "format": "gemini",
            "routes": [
                {"name": "gemini", "provider": "gemini", "url": gemini.base_url(),
                 "auth": {"type": "dynamic", "expression": "#[attributes.headers['x-goog-api-key']]"}}
            ]
        }),
    )
    .await;
    let http = reqwest::Client::new();
    let probe = format!(
        "http://{}/gem/v1beta/models/gemini/gemini-2.5-flash:generateContent",
        node.local_addr()
    );
    eventually(Duration::from_secs(5), "served", || async {
        http.post(&probe)
            .header("x-goog-api-key", GEMINI_API_KEY)
            .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    pytest(
        "test_google_genai_sdk.py",
        &[
            (
                "SWITCHYARD_GEMINI_BASE_URL",
                format!("http://{}/gem", node.local_addr()),
            ),
            ("SWITCHYARD_GEMINI_API_KEY", GEMINI_API_KEY.to_owned()),
            (
                "SWITCHYARD_GEMINI_MODEL",
                "gemini/gemini-2.5-flash".to_owned(),
            ),
            ("SWITCHYARD_GEMINI_REPLY", reply_text("gemini-2.5-flash")),
            ("SWITCHYARD_TOOL_ARGUMENTS", TOOL_ARGUMENTS.to_owned()),
        ],
    )
    .await;
    // The SDK's own path, as the gateway forwarded it.
    let seen = gemini.requests();
    assert!(seen.iter().any(
        |r| r.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            && r.query.as_deref() == Some("alt=sse")
    ));
    node.shutdown().await;
    plane.stop().await;
}
