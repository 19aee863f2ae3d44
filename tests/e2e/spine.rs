//! The spine, end to end: admin API → store → gRPC snapshots → two gateway nodes → a mock
//! OpenAI upstream, on PostgreSQL and on SQLite.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, chat, eventually, start_node};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};

fn proxy(upstream: &str, target_model: &str) -> Value {
    json!({
        "name": "support", "gateway": "prod-eu", "format": "openai", "base_path": "/support",
        "routing": {"strategy": "model", "fallback": {"route": "openai", "target_model": "gpt-4o-mini"}},
        "routes": [{"name": "openai", "provider": "openai", "url": upstream,
                    "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": target_model}]
    })
}

async fn create_update_delete(store: Store) {
    let mock = MockOpenAi::start().await.unwrap();
    let plane = Plane::start(&store).await;
    let admin = plane.admin();
    let token = plane.create_gateway("prod-eu").await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = [
        start_node(&plane, "prod-eu", &token, dirs[0].path()).await,
        start_node(&plane, "prod-eu", &token, dirs[1].path()).await,
    ];
    let http = reqwest::Client::new();

    // create → served by every node
    let (status, created) = admin
        .post("/proxies", proxy(&mock.base_url(), "gpt-4.1"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    for node in &nodes {
        eventually(
            Duration::from_secs(5),
            "the new proxy to be served",
            || async {
                chat(&http, node.local_addr(), "/support", "openai/whatever")
                    .await
                    .0
                    == StatusCode::OK
            },
        )
        .await;
        let (status, route, model, body) =
            chat(&http, node.local_addr(), "/support", "openai/whatever").await;
        assert_eq!(
            (status, route.as_str(), model.as_str()),
            (StatusCode::OK, "openai", "gpt-4.1")
        );
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            switchyard_testkit::openai::reply_text("gpt-4.1")
        );
    }
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {MOCK_API_KEY}").as_str())
    );

    // update → every node serves the new version within a second, applied_version matches
    let mut edited = created.clone();
    edited["routes"][0]["target_model"] = json!("gpt-5");
    let (status, updated) = admin.put(&format!("/proxies/{id}"), edited).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let mut slowest = Duration::ZERO;
    for node in &nodes {
        let took = eventually(
            Duration::from_secs(1),
            "the update on every node within a second",
            || async {
                chat(&http, node.local_addr(), "/support", "openai/x")
                    .await
                    .2
                    == "gpt-5"
            },
        )
        .await;
        slowest = slowest.max(took);
    }
    let version = admin.get("/gateways/prod-eu").await.1["config_version"]
        .as_u64()
        .unwrap();
    assert_eq!(version, 2);
    eventually(
        Duration::from_secs(3),
        "per-node applied_version to match",
        || async {
            let nodes = admin.get("/gateways/prod-eu").await.1["nodes"].clone();
            nodes.as_array().is_some_and(|n| {
                n.len() == 2
                    && n.iter()
                        .all(|n| n["applied_version"] == version && n["connected"] == true)
            })
        },
    )
    .await;
    for node in &nodes {
        assert_eq!(node.applied_version(), Some(version));
    }
    eprintln!("update reached both nodes in {slowest:?}");

    // delete → the base path 404s on every node
    assert_eq!(
        admin.delete(&format!("/proxies/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    for node in &nodes {
        eventually(
            Duration::from_secs(1),
            "the base path to stop serving",
            || async {
                chat(&http, node.local_addr(), "/support", "openai/x")
                    .await
                    .0
                    == StatusCode::NOT_FOUND
            },
        )
        .await;
    }
    for node in nodes {
        node.shutdown().await;
    }
    let mut plane = plane;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_on_sqlite() {
    create_update_delete(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_on_postgres() {
    create_update_delete(Store::postgres().await).await;
}

/// Control plane killed → traffic keeps flowing; a node restarted while it is down serves
/// from its cache; when the control plane returns, nodes reconnect and catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_the_control_plane_going_away() {
    let store = Store::postgres().await;
    let mock = MockOpenAi::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let admin = plane.admin();
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let other_cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    let other = start_node(&plane, "prod-eu", &token, other_cache.path()).await;
    let http = reqwest::Client::new();
    let (_, created) = admin
        .post("/proxies", proxy(&mock.base_url(), "gpt-4.1"))
        .await;
    for n in [&node, &other] {
        eventually(Duration::from_secs(5), "served", || async {
            chat(&http, n.local_addr(), "/support", "openai/x").await.0 == StatusCode::OK
        })
        .await;
    }

    plane.stop().await;
    for _ in 0..20 {
        assert_eq!(
            chat(&http, node.local_addr(), "/support", "openai/x")
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            chat(&http, other.local_addr(), "/support", "openai/x")
                .await
                .0,
            StatusCode::OK
        );
    }
    let ready = http
        .get(format!("http://{}/readyz", node.local_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "a node with a snapshot stays ready"
    );

    // Restart one node while the control plane is down: it boots from its cache.
    let addr = node.local_addr();
    node.shutdown().await;
    let node =
        switchyard_e2e::start_node_at(&plane.grpc_url(), "prod-eu", &token, cache.path(), addr)
            .await;
    let (status, _, model, _) = chat(&http, node.local_addr(), "/support", "openai/x").await;
    assert_eq!(
        (status, model.as_str()),
        (StatusCode::OK, "gpt-4.1"),
        "served from the cache"
    );

    // The control plane returns with a change made meanwhile: both nodes catch up.
    plane.restart().await;
    let mut edited = created.clone();
    edited["routes"][0]["target_model"] = json!("gpt-5");
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        admin.put(&format!("/proxies/{id}"), edited).await.0,
        StatusCode::OK
    );
    for n in [&node, &other] {
        eventually(
            Duration::from_secs(5),
            "nodes to reconnect and catch up",
            || async { chat(&http, n.local_addr(), "/support", "openai/x").await.2 == "gpt-5" },
        )
        .await;
    }
    node.shutdown().await;
    other.shutdown().await;
    plane.stop().await;
}

/// A node with a wrong registration token is refused: it never becomes ready and serves
/// nothing, and the control plane does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_registration_token_is_refused() {
    let store = Store::sqlite();
    let mut plane = Plane::start(&store).await;
    plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", "syreg_wrong", cache.path()).await;
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ready = http
        .get(format!("http://{}/readyz", node.local_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(node.applied_version(), None);
    assert_eq!(
        plane.admin().get("/gateways/prod-eu").await.1["nodes"],
        json!([])
    );
    node.shutdown().await;
    plane.stop().await;
}

/// A streamed answer passes through the whole stack chunk by chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_through_the_stack() {
    let store = Store::sqlite();
    let mock = MockOpenAi::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    plane
        .admin()
        .post("/proxies", proxy(&mock.base_url(), "gpt-4.1"))
        .await;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(5), "served", || async {
        chat(&http, node.local_addr(), "/support", "openai/x")
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let resp = http
        .post(format!("http://{}/support/v1/chat/completions", node.local_addr()))
        .json(&json!({"model": "openai/x", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(resp.headers()["x-switchyard-model"], "gpt-4.1");
    let text = resp.text().await.unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() >= 2, "{text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, switchyard_testkit::openai::reply_text("gpt-4.1"));
    node.shutdown().await;
    plane.stop().await;
}
