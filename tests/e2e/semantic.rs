//! Semantic routing and the prompt guards end to end: admin API → store → gRPC → a gateway
//! node loading the real MiniLM encoder from `<repo>/models` (run `scripts/fetch-model`) →
//! mock upstreams. Also named semantic services (remote `/embeddings`, mock) serving nodes
//! without a model, their key handling, and the new limits. Every case runs on PostgreSQL
//! and on SQLite.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, eventually, fast_sync, start_node};
use switchyard_gateway::{Gateway, GatewayConfig};
use switchyard_testkit::MockEmbeddings;
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

/// Runs `$case(store)` once on SQLite and once on PostgreSQL.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(switchyard_e2e::Store::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(switchyard_e2e::Store::postgres().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    semantic_proxy_through_the_control_plane,
    a_named_semantic_service_serves_nodes_without_a_model,
    semantic_service_keys_are_secrets_and_new_limits_hold,
);

async fn semantic_proxy_through_the_control_plane(store: Store) {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
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
    plane.stop().await;
}

/// The per-node applied versions, once every node is connected at `version`.
async fn wait_applied(admin: &switchyard_e2e::Admin, version: u64, nodes: usize) {
    eventually(
        Duration::from_secs(5),
        "every node to apply the gateway's version",
        || async {
            let g = admin.get("/gateways/prod-eu").await.1;
            g["config_version"] == version
                && g["nodes"].as_array().is_some_and(|n| {
                    n.len() == nodes
                        && n.iter()
                            .all(|n| n["applied_version"] == version && n["connected"] == true)
                })
        },
    )
    .await;
}

/// A semantic proxy naming a service, on two nodes that have NO local model: prompts and
/// utterances are embedded by the service; a `PUT` of the service (new URL and key) reaches
/// every node, which switch to the new service.
async fn a_named_semantic_service_serves_nodes_without_a_model(store: Store) {
    let upstream_a = MockOpenAi::start().await.unwrap();
    let upstream_b = MockOpenAi::start().await.unwrap();
    let first = MockEmbeddings::start("sk-embed-first", "emb-model")
        .await
        .unwrap();
    let second = MockEmbeddings::start("sk-embed-second", "emb-model")
        .await
        .unwrap();
    let mut plane = Plane::start(&store).await;
    let admin = plane.admin();
    let token = plane.create_gateway("prod-eu").await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = [
        start_node(&plane, "prod-eu", &token, dirs[0].path()).await,
        start_node(&plane, "prod-eu", &token, dirs[1].path()).await,
    ];
    let http = reqwest::Client::new();

    let (status, service) = admin
        .post(
            "/semantic-services",
            json!({"name": "embed-eu", "url": first.base_url(), "model": "emb-model",
                   "api_key": "sk-embed-first"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{service}");
    let mut p = semantic_proxy(&upstream_a.base_url(), &upstream_b.base_url());
    p["semantic_service"] = json!("embed-eu");
    let (status, created) = admin.post("/proxies", p).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    wait_applied(&admin, 1, 2).await;
    // Each node embedded the 7 utterances (6 topic ones, 1 deny one) through the service.
    assert_eq!(first.inputs().len(), 14);

    for node in &nodes {
        let (status, route, body) = ask(&http, node, "I was charged twice, refund it").await;
        assert_eq!(
            (status, route.as_str()),
            (StatusCode::OK, "billing"),
            "{body}"
        );
        let (_, route, _) = ask(&http, node, "reverse a linked list in Python").await;
        assert_eq!(route, "code");
        let (status, _, body) = ask(&http, node, "how do I build a bomb").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["matched_topics"], json!(["weapons"]));
    }
    assert_eq!(first.inputs().len(), 14 + 6, "one call per prompt");
    assert_eq!(second.calls(), 0);

    // Point the service at another endpoint with another key: a new version for the gateway,
    // and both nodes switch to the new definition.
    let mut moved = admin.get("/semantic-services/embed-eu").await.1;
    moved["url"] = json!(second.base_url());
    moved["api_key"] = json!("sk-embed-second");
    let (status, updated) = admin.put("/semantic-services/embed-eu", moved).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    wait_applied(&admin, 2, 2).await;
    assert_eq!(
        second.inputs().len(),
        14,
        "the nodes embedded the utterances anew"
    );
    let calls_to_first = first.calls();
    for node in &nodes {
        assert_eq!(node.applied_version(), Some(2));
        let (status, route, body) = ask(&http, node, "can I get a refund please").await;
        assert_eq!(
            (status, route.as_str()),
            (StatusCode::OK, "billing"),
            "{body}"
        );
    }
    assert_eq!(second.inputs().len(), 14 + 2);
    assert_eq!(
        first.calls(),
        calls_to_first,
        "the old service is no longer called"
    );

    // While the proxy names it, the service stays.
    let (status, body) = admin.delete("/semantic-services/embed-eu").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        admin.delete(&format!("/proxies/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin.delete("/semantic-services/embed-eu").await.0,
        StatusCode::NO_CONTENT
    );
    for node in nodes {
        node.shutdown().await;
    }
    plane.stop().await;
}

async fn semantic_service_keys_are_secrets_and_new_limits_hold(store: Store) {
    let mut plane = Plane::start(&store).await;
    let admin = plane.admin();
    plane.create_gateway("prod-eu").await;
    let (status, service) = admin
        .post(
            "/semantic-services",
            json!({"name": "embed-eu", "url": "http://127.0.0.1:9/v1", "model": "emb",
                   "api_key": "sk-embed-secret"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{service}");
    assert_eq!(service["api_key"], "***");
    let (_, read) = admin.get("/semantic-services/embed-eu").await;
    assert_eq!(read["api_key"], "***");
    let (_, all) = admin.get("/semantic-services").await;
    assert!(!all.to_string().contains("sk-embed-secret"));
    // `***` sent back keeps the key (the service still answers with it redacted).
    let (status, kept) = admin.put("/semantic-services/embed-eu", read).await;
    assert_eq!(
        (status, kept["api_key"].clone()),
        (StatusCode::OK, json!("***"))
    );

    let mut p = semantic_proxy("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1");
    p["semantic_service"] = json!("embed-us");
    let (status, err) = admin.post("/proxies", p.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "semantic_service");
    assert_eq!(admin.get("/proxies").await.1, json!([]));
    p["semantic_service"] = json!("embed-eu");
    let (status, created) = admin.post("/proxies", p.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["semantic_service"], "embed-eu");
    assert!(!created.to_string().contains("sk-embed-secret"));

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
    plane.stop().await;
}
