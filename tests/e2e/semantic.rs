//! Semantic routing and the prompt guards end to end: admin API → store → gRPC → a gateway
//! node loading the real MiniLM encoder from `<repo>/models` (run `scripts/fetch-model`) →
//! mock upstreams. Also the remote semantic service's key handling and the new limits.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, eventually, fast_sync};
use switchyard_gateway::{Gateway, GatewayConfig};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}: run scripts/fetch-model",
        dir.display()
    );
    dir
}

fn semantic_proxy(a: &str, b: &str) -> Value {
    let route = |name: &str, url: &str, target: &str, topic: Value| {
        json!({"name": name, "provider": "openai", "url": url,
               "auth": {"type": "static", "api_key": MOCK_API_KEY},
               "target_model": target, "topics": topic})
    };
    json!({
        "name": "assistant", "gateway": "prod-eu", "base_path": "/assist",
        "routing": {"strategy": "semantic", "threshold": 0.3,
                    "fallback": {"route": "general"}},
        "routes": [
            route("billing", a, "m-billing", json!([{"name": "payments", "utterances": [
                "How do I pay my invoice?", "I was charged twice on my credit card",
                "Can I get a refund for my subscription?"]}])),
            route("code", b, "m-code", json!([{"name": "programming", "utterances": [
                "Write a Python function that sorts a list", "Why does my Rust code not compile?",
                "How do I reverse a linked list?"]}])),
            route("general", a, "m-general", json!([]))
        ],
        "prompt_guard": {"threshold": 0.6, "deny_topics": [
            {"name": "weapons", "utterances": ["How do I build a bomb?"]}]},
        "regex_guard": {"patterns": [{"name": "ssn", "pattern": "\\b\\d{3}-\\d{2}-\\d{4}\\b"}]}
    })
}

async fn ask(http: &reqwest::Client, gw: &Gateway, prompt: &str) -> (StatusCode, String, Value) {
    let resp = http
        .post(format!(
            "http://{}/assist/v1/chat/completions",
            gw.local_addr()
        ))
        .json(&json!({"model": "ignored", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    let route = resp.headers()["x-switchyard-route"]
        .to_str()
        .unwrap()
        .to_owned();
    (resp.status(), route, resp.json().await.unwrap())
}

#[tokio::test]
async fn semantic_proxy_through_the_control_plane() {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let store = Store::sqlite();
    let plane = Plane::start(&store).await;
    let admin = plane.admin();
    let token = plane.create_gateway("prod-eu").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::new(plane.grpc_url(), "prod-eu", &token, dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.model_dir = Some(model_dir());
    let gw = Gateway::start_with(config, fast_sync()).await.unwrap();
    let http = reqwest::Client::new();

    let (status, created) = admin
        .post("/proxies", semantic_proxy(&a.base_url(), &b.base_url()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    eventually(
        Duration::from_secs(20),
        "the semantic proxy to be served",
        || async { ask(&http, &gw, "hello").await.0 == StatusCode::OK },
    )
    .await;

    let (status, route, body) = ask(&http, &gw, "you charged my card twice, refund it").await;
    assert_eq!(
        (status, route.as_str()),
        (StatusCode::OK, "billing"),
        "{body}"
    );
    let (_, route, _) = ask(&http, &gw, "my javascript function throws a TypeError").await;
    assert_eq!(route, "code");
    let (_, route, _) = ask(&http, &gw, "suggest a name for my new puppy").await;
    assert_eq!(route, "general");
    let (status, _, body) = ask(&http, &gw, "tell me how to build a bomb").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["type"], "prompt_blocked");
    assert_eq!(body["error"]["matched_topics"], json!(["weapons"]));
    let (status, _, body) = ask(&http, &gw, "ssn 078-05-1120").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["matched_patterns"], json!(["ssn"]));
    gw.shutdown().await;
}

#[tokio::test]
async fn semantic_service_keys_are_secrets_and_new_limits_hold() {
    let store = Store::sqlite();
    let plane = Plane::start(&store).await;
    let admin = plane.admin();
    plane.create_gateway("prod-eu").await;
    let mut p = semantic_proxy("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1");
    p["semantic_service"] =
        json!({"url": "http://127.0.0.1:9/v1", "model": "emb", "api_key": "sk-embed-secret"});
    let (status, created) = admin.post("/proxies", p.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["semantic_service"]["api_key"], "***");
    let id = created["id"].as_str().unwrap();
    let (_, read) = admin.get(&format!("/proxies/{id}")).await;
    assert_eq!(read["semantic_service"]["api_key"], "***");
    assert!(!read.to_string().contains("sk-embed-secret"));

    let mut too_many = p.clone();
    too_many["name"] = json!("other");
    too_many["base_path"] = json!("/other");
    too_many["regex_guard"]["patterns"] = json!(
        (0..21)
            .map(|i| json!({"name": format!("p{i}"), "pattern": format!("x{i}")}))
            .collect::<Vec<_>>()
    );
    let (status, err) = admin.post("/proxies", too_many).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "regex_guard.patterns[20]");

    let mut bad = p;
    bad["name"] = json!("bad");
    bad["base_path"] = json!("/bad");
    bad["regex_guard"]["patterns"][0]["pattern"] = json!("(unclosed");
    let (status, err) = admin.post("/proxies", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "regex_guard.patterns[0].pattern");
}
