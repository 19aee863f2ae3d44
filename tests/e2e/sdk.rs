//! The official Python SDKs against a real gateway (tests/python), driven from here so the
//! gateway, control plane and mock upstreams are the real ones: one test per SDK file.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, chat, eventually, pytest, start_node};
use switchyard_testkit::{
    ANTHROPIC_API_KEY, AZURE_API_KEY, BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY,
    GEMINI_API_KEY, MOCK_API_KEY, MockAnthropic, MockAzure, MockBedrock, MockGemini, MockOpenAi,
    THINKING_TEXT, TOOL_ARGUMENTS, reply_text,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk() {
    let store = Store::sqlite();
    let claude = MockAnthropic::start().await.unwrap();
    let openai = MockOpenAi::start().await.unwrap();
    let bedrock = MockBedrock::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    create_proxy(
        &plane,
        json!({
            "name": "agents", "gateway": "prod-eu", "base_path": "/agents", "format": "anthropic",
            "routes": [
                {"name": "anthropic", "provider": "anthropic", "url": claude.base_url(),
                 "auth": {"type": "static", "api_key": ANTHROPIC_API_KEY}, "target_model": "claude-sonnet-4-5"},
                {"name": "openai", "provider": "openai", "url": openai.base_url(),
                 "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"},
                {"name": "claude", "provider": "bedrock", "url": bedrock.endpoint(), "region": BEDROCK_REGION,
                 "auth": {"type": "static", "access_key_id": BEDROCK_ACCESS_KEY, "secret_access_key": BEDROCK_SECRET_KEY},
                 "target_model": "anthropic/us.anthropic.claude-sonnet-4-5-20250929-v1:0"}
            ]
        }),
    )
    .await;
    let http = reqwest::Client::new();
    let probe = format!("http://{}/agents/v1/messages", node.local_addr());
    eventually(Duration::from_secs(5), "served", || async {
        http.post(&probe)
            .json(&json!({"model": "anthropic/x", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let routes = json!([
        {"id": "anthropic", "model": "anthropic/anything", "served": "claude-sonnet-4-5",
         "reply": reply_text("claude-sonnet-4-5"), "native": true},
        {"id": "openai", "model": "openai/anything", "served": "gpt-4.1",
         "reply": reply_text("gpt-4.1"), "native": false},
        {"id": "claude", "model": "claude/anything",
         "served": "anthropic/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
         "reply": reply_text("us.anthropic.claude-sonnet-4-5-20250929-v1:0"), "native": true},
    ]);
    pytest(
        "test_anthropic_sdk.py",
        &[
            (
                "SWITCHYARD_ANTHROPIC_BASE_URL",
                format!("http://{}/agents", node.local_addr()),
            ),
            ("SWITCHYARD_ANTHROPIC_ROUTES", routes.to_string()),
            ("SWITCHYARD_TOOL_ARGUMENTS", TOOL_ARGUMENTS.to_owned()),
            ("SWITCHYARD_THINKING_TEXT", THINKING_TEXT.to_owned()),
        ],
    )
    .await;
    // Every provider was really called, each through its own API.
    for (name, count) in [
        ("anthropic", claude.request_count()),
        ("openai", openai.request_count()),
        ("bedrock", bedrock.request_count()),
    ] {
        assert!(count >= 5, "{name}: {count} requests");
    }
    assert!(
        bedrock
            .requests()
            .iter()
            .all(|r| r.path.contains("/invoke"))
    );
    // The client's cache_control mark reached the native upstreams as it was sent.
    let marked = |r: &switchyard_testkit::RecordedRequest| {
        r.json()["system"][0]["cache_control"] == json!({"type": "ephemeral"})
    };
    assert!(claude.requests().iter().any(marked));
    assert!(bedrock.requests().iter().any(marked));
    node.shutdown().await;
    plane.stop().await;
}

/// Claude Code's binary: `SWITCHYARD_CLAUDE_CODE` (scripts/test installs the pinned
/// `@anthropic-ai/claude-code` from npm and sets it).
fn claude_code() -> String {
    let path = std::env::var("SWITCHYARD_CLAUDE_CODE").unwrap_or_default();
    assert!(
        !path.is_empty() && std::path::Path::new(&path).exists(),
        "no Claude Code: run scripts/test (it installs @anthropic-ai/claude-code from npm) or set SWITCHYARD_CLAUDE_CODE"
    );
    path
}

/// Claude Code, the real CLI, run non-interactively (`-p`) against a `format: anthropic`
/// proxy whose only route is an OpenAI mock: it completes a one-tool task through the
/// gateway (the model's call to its own Read tool travels OpenAI → Anthropic, the file's
/// content comes back Anthropic → OpenAI, and the answer quoting it is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_cli() {
    let claude = claude_code();
    let store = Store::sqlite();
    let openai = MockOpenAi::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    // Claude Code also asks its small model for side tasks: the fallback serves those too.
    create_proxy(
        &plane,
        json!({
            "name": "code", "gateway": "prod-eu", "base_path": "/code", "format": "anthropic",
            "routing": {"strategy": "model", "fallback": {"route": "openai", "target_model": "gpt-4.1"}},
            "routes": [
                {"name": "openai", "provider": "openai", "url": openai.base_url(),
                 "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}
            ]
        }),
    )
    .await;
    let http = reqwest::Client::new();
    let probe = format!("http://{}/code/v1/messages", node.local_addr());
    eventually(Duration::from_secs(5), "served", || async {
        http.post(&probe)
            .json(&json!({"model": "openai/x", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let requests_before = openai.request_count();

    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let file = work.path().join("notes.txt");
    std::fs::write(&file, "The launch code word is heliotrope-42.\n").unwrap();
    let prompt = format!(
        "What is the launch code word in notes.txt?\nmock-tool: Read {}",
        json!({"file_path": file.display().to_string()})
    );
    let run = tokio::process::Command::new(&claude)
        .args([
            "-p",
            &prompt,
            "--model",
            "openai/gpt-4.1",
            "--allowedTools",
            "Read",
        ])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env(
            "ANTHROPIC_BASE_URL",
            format!("http://{}/code", node.local_addr()),
        )
        .env("ANTHROPIC_API_KEY", "sk-ant-unused-by-the-gateway")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("claude -p did not finish in 3 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "claude -p failed: {stdout}\n{stderr}");
    eprintln!("claude -p printed: {stdout}");
    // The answer quotes what the Read tool returned: the file really was read.
    assert!(
        stdout.contains("The tool answered:") && stdout.contains("heliotrope-42"),
        "{stdout}\n{stderr}"
    );
    // Through the gateway, translated: the OpenAI mock saw the call and then its result.
    let seen = openai.requests();
    let seen = &seen[requests_before..];
    let called = seen.iter().any(|r| {
        r.json()["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["role"] == "tool" && m["content"].to_string().contains("heliotrope-42"))
        })
    });
    assert!(
        called,
        "no request carried the tool result: {} requests",
        seen.len()
    );
    assert!(seen.iter().all(|r| r.path == "/v1/chat/completions"));
    node.shutdown().await;
    plane.stop().await;
}
