//! Config distribution over real gRPC: a raw tonic client plays the gateway node.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_control_plane::crypto::Keyring;
use switchyard_control_plane::{ControlPlane, ControlPlaneConfig};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_distribution_client::ConfigDistributionClient;
use switchyard_testkit::pg::PgDatabase;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const ADMIN: &str = "admin";

fn config(url: &str, key: &str) -> ControlPlaneConfig {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    ControlPlaneConfig {
        admin_listen: any,
        grpc_listen: any,
        admin_token: Some(ADMIN.into()),
        resync_interval: Duration::from_millis(500),
        ..ControlPlaneConfig::new(url, key)
    }
}

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(cp: &ControlPlane) -> Self {
        Self {
            base: format!("http://{}/api/v1", cp.admin_addr()),
            http: reqwest::Client::new(),
        }
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }
    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn proxy(name: &str) -> Value {
    json!({"name": name, "gateway": "gw", "base_path": format!("/{name}"),
           "routes": [{"provider": "openai", "url": "http://127.0.0.1:9/v1",
                       "auth": {"type": "static", "api_key": "sk-plain"}}]})
}

struct Node {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: tonic::Streaming<pb::ControlMessage>,
}

async fn connect(
    grpc: SocketAddr,
    gateway: &str,
    token: &str,
    node_id: &str,
) -> Result<Node, tonic::Status> {
    let mut client = ConfigDistributionClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            gateway: gateway.into(),
            node_id: node_id.into(),
            registration_token: token.into(),
            current_version: 0,
            address: "127.0.0.1:8000".into(),
            software_version: "test".into(),
            has_encoder: None,
        })),
    })
    .await
    .unwrap();
    let resp = client.subscribe(ReceiverStream::new(rx)).await?;
    Ok(Node {
        tx,
        rx: resp.into_inner(),
    })
}

impl Node {
    async fn next_snapshot(&mut self) -> pb::Snapshot {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("no snapshot within 5s")
            .expect("stream ended")
            .expect("stream error");
        match msg.kind {
            Some(pb::control_message::Kind::Snapshot(s)) => s,
            None => panic!("empty control message"),
        }
    }
    async fn ack(&self, version: u64, applied: bool, error: &str) {
        self.tx
            .send(pb::NodeMessage {
                kind: Some(pb::node_message::Kind::Ack(pb::Ack {
                    version,
                    applied,
                    error: error.into(),
                    proxy_failures: vec![],
                })),
            })
            .await
            .unwrap();
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn snapshots_acks_and_node_status(url: &str) {
    let cp = ControlPlane::start(config(url, &Keyring::generate_key()))
        .await
        .unwrap();
    let admin = Admin::new(&cp);
    let token = admin.post("/gateways", json!({"name": "gw"})).await["registration_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let err = connect(cp.grpc_addr(), "gw", "wrong", "n1")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let wrong_token = err.message().to_owned();
    // An unknown gateway is answered exactly like a wrong token: names cannot be probed.
    let err = connect(cp.grpc_addr(), "nope", &token, "n1")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), wrong_token);

    let mut node = connect(cp.grpc_addr(), "gw", &token, "n1").await.unwrap();
    let first = node.next_snapshot().await;
    assert_eq!((first.version, first.proxies.len()), (0, 0));
    node.ack(0, true, "").await;

    admin.post("/proxies", proxy("a")).await;
    let second = node.next_snapshot().await;
    assert_eq!(second.version, 1);
    assert_eq!(second.proxies[0].name, "a");
    let Some(pb::auth::Kind::StaticKey(k)) = second.proxies[0].routes[0]
        .auth
        .clone()
        .and_then(|a| a.kind)
    else {
        panic!("static key expected")
    };
    assert_eq!(k.api_key, "sk-plain", "nodes receive the decrypted key");
    node.ack(1, true, "").await;
    eventually("applied_version 1", async || {
        let g = admin.get("/gateways/gw").await;
        g["nodes"][0]["applied_version"] == 1 && g["nodes"][0]["connected"] == true
    })
    .await;

    admin.post("/proxies", proxy("b")).await;
    let third = node.next_snapshot().await;
    assert_eq!((third.version, third.proxies.len()), (2, 2));
    node.ack(2, false, "cannot compile").await;
    eventually("the NACK to be recorded", async || {
        let g = admin.get("/gateways/gw").await;
        g["nodes"][0]["applied_version"] == 1
            && g["nodes"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot compile"))
    })
    .await;

    drop(node);
    eventually("the node to show as disconnected", async || {
        admin.get("/gateways/gw").await["nodes"][0]["connected"] == false
    })
    .await;
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots_acks_and_node_status() {
    let dir = tempfile::tempdir().unwrap();
    snapshots_acks_and_node_status(&format!("sqlite://{}/cp.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshots_acks_and_node_status() {
    let db = PgDatabase::create().await;
    snapshots_acks_and_node_status(db.url()).await;
}

/// Two control-plane replicas on one PostgreSQL: a change made through either reaches the
/// nodes connected to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_changes_through_postgres() {
    let db = PgDatabase::create().await;
    let key = Keyring::generate_key();
    let mut cfg = config(db.url(), &key);
    cfg.resync_interval = Duration::from_secs(3600); // only LISTEN/NOTIFY can deliver in time
    let a = ControlPlane::start(cfg.clone()).await.unwrap();
    let b = ControlPlane::start(cfg).await.unwrap();
    let admin_a = Admin::new(&a);
    let admin_b = Admin::new(&b);
    let token = admin_a.post("/gateways", json!({"name": "gw"})).await["registration_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut on_b = connect(b.grpc_addr(), "gw", &token, "node-b")
        .await
        .unwrap();
    let mut on_a = connect(a.grpc_addr(), "gw", &token, "node-a")
        .await
        .unwrap();
    assert_eq!(on_b.next_snapshot().await.version, 0);
    assert_eq!(on_a.next_snapshot().await.version, 0);

    let started = std::time::Instant::now();
    admin_a.post("/proxies", proxy("via-a")).await;
    assert_eq!(on_b.next_snapshot().await.version, 1);
    assert_eq!(on_a.next_snapshot().await.version, 1);
    admin_b.post("/proxies", proxy("via-b")).await;
    assert_eq!(on_a.next_snapshot().await.version, 2);
    assert_eq!(on_b.next_snapshot().await.version, 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "changes took {:?}",
        started.elapsed()
    );

    // Both replicas show both nodes.
    on_a.ack(2, true, "").await;
    on_b.ack(2, true, "").await;
    eventually("both nodes at version 2 on replica b", async || {
        let nodes = admin_b.get("/gateways/gw").await["nodes"].clone();
        nodes
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["applied_version"] == 2))
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Secrets stored under an old key are re-encrypted under the new one at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reencrypts_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cp.db", dir.path().display());
    let old = Keyring::generate_key();
    let new = Keyring::generate_key();
    let cp = ControlPlane::start(config(&url, &old)).await.unwrap();
    let admin = Admin::new(&cp);
    let token = admin.post("/gateways", json!({"name": "gw"})).await["registration_token"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.post("/proxies", proxy("a")).await;
    admin
        .post(
            "/semantic-services",
            json!({"name": "emb", "url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "sk-emb-plain"}),
        )
        .await;
    cp.shutdown().await;

    // Without the old key the secrets cannot be read: refuse to start.
    assert!(ControlPlane::start(config(&url, &new)).await.is_err());

    let mut cfg = config(&url, &new);
    cfg.previous_encryption_keys = vec![old];
    let cp = ControlPlane::start(cfg).await.unwrap();
    // A proxy naming the service, created under the new key, before the old one goes.
    let mut naming = proxy("b");
    naming["semantic_service"] = json!("emb");
    Admin::new(&cp).post("/proxies", naming).await;
    cp.shutdown().await;
    // Now the new key alone suffices, and nodes still get the plaintext keys.
    let cp = ControlPlane::start(config(&url, &new)).await.unwrap();
    let mut node = connect(cp.grpc_addr(), "gw", &token, "n").await.unwrap();
    let snap = node.next_snapshot().await;
    let Some(pb::auth::Kind::StaticKey(k)) =
        snap.proxies[0].routes[0].auth.clone().and_then(|a| a.kind)
    else {
        panic!("static key expected")
    };
    assert_eq!(k.api_key, "sk-plain");
    assert_eq!(snap.proxies[1].semantic_service_name, "emb");
    assert_eq!(snap.semantic_services.len(), 1);
    assert_eq!(
        snap.semantic_services[0].api_key.as_deref(),
        Some("sk-emb-plain")
    );
    cp.shutdown().await;
}

/// A semantic service update reaches, through any replica, the nodes of every gateway with
/// a proxy naming it, and only those; each snapshot carries the services it names, decrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semantic_service_update_reaches_every_gateway_naming_it() {
    let db = PgDatabase::create().await;
    let key = Keyring::generate_key();
    let mut cfg = config(db.url(), &key);
    cfg.resync_interval = Duration::from_secs(3600); // only LISTEN/NOTIFY can deliver in time
    let a = ControlPlane::start(cfg.clone()).await.unwrap();
    let b = ControlPlane::start(cfg).await.unwrap();
    let admin_a = Admin::new(&a);
    let mut tokens = Vec::new();
    for g in ["gw", "gw2", "gw3"] {
        tokens.push(
            admin_a.post("/gateways", json!({"name": g})).await["registration_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for (name, url) in [("emb", "http://first/v1"), ("other", "http://other/v1")] {
        admin_a
            .post(
                "/semantic-services",
                json!({"name": name, "url": url, "model": "m", "api_key": format!("sk-{name}")}),
            )
            .await;
    }
    for (gateway, service) in [("gw", "emb"), ("gw2", "emb"), ("gw3", "other")] {
        let mut p = proxy("p");
        p["gateway"] = json!(gateway);
        p["semantic_service"] = json!(service);
        admin_a.post("/proxies", p).await;
    }
    let mut on_b = connect(b.grpc_addr(), "gw", &tokens[0], "n1")
        .await
        .unwrap();
    let mut on_a = connect(a.grpc_addr(), "gw2", &tokens[1], "n2")
        .await
        .unwrap();
    let mut unrelated = connect(b.grpc_addr(), "gw3", &tokens[2], "n3")
        .await
        .unwrap();
    let first = on_b.next_snapshot().await;
    assert_eq!(first.version, 1);
    assert_eq!(first.proxies[0].semantic_service_name, "emb");
    assert_eq!(
        first.semantic_services,
        vec![pb::SemanticService {
            name: "emb".into(),
            url: "http://first/v1".into(),
            model: "m".into(),
            api_key: Some("sk-emb".into()),
        }],
        "only the services the proxies name, decrypted"
    );
    assert_eq!(on_a.next_snapshot().await.version, 1);
    assert_eq!(unrelated.next_snapshot().await.version, 1);

    let updated = Admin::new(&b);
    let resp = updated
        .http
        .put(format!("{}/semantic-services/emb", updated.base))
        .bearer_auth(ADMIN)
        .json(&json!({"url": "http://second/v1", "model": "m2", "api_key": "sk-new"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    for node in [&mut on_b, &mut on_a] {
        let snap = node.next_snapshot().await;
        assert_eq!(snap.version, 2);
        assert_eq!(
            (
                snap.semantic_services[0].url.as_str(),
                snap.semantic_services[0].model.as_str(),
                snap.semantic_services[0].api_key.as_deref()
            ),
            ("http://second/v1", "m2", Some("sk-new"))
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(700), unrelated.rx.next())
            .await
            .is_err(),
        "a gateway not naming the service gets no new snapshot"
    );
    assert_eq!(admin_a.get("/gateways/gw3").await["config_version"], 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// A library topic's update reaches, within a second, the nodes of every gateway whose
/// proxies refer to it (and only those); each snapshot carries the topic once, however many
/// of its proxies name it. Run on both stores (PostgreSQL through two replicas).
async fn a_topic_update_reaches_every_gateway_using_it(url: &str, replicas: usize) {
    let key = Keyring::generate_key();
    let mut cfg = config(url, &key);
    cfg.resync_interval = Duration::from_secs(3600); // only the change notification may deliver
    let a = ControlPlane::start(cfg.clone()).await.unwrap();
    let b = if replicas > 1 {
        Some(ControlPlane::start(cfg).await.unwrap())
    } else {
        None
    };
    let writer = b.as_ref().unwrap_or(&a);
    let admin = Admin::new(&a);
    let mut tokens = Vec::new();
    for g in ["gw", "gw2"] {
        tokens.push(
            admin.post("/gateways", json!({"name": g})).await["registration_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    admin
        .post(
            "/topics",
            json!({"name": "billing", "utterances": ["pay my invoice"]}),
        )
        .await;
    admin
        .post(
            "/topics",
            json!({"name": "other", "utterances": ["something else"]}),
        )
        .await;
    for (gateway, name, topic) in [
        ("gw", "p", "billing"),
        ("gw", "q", "billing"),
        ("gw2", "r", "other"),
    ] {
        let mut p = proxy(name);
        p["gateway"] = json!(gateway);
        p["routes"][0]["topics"] = json!([{"ref": topic}]);
        p["prompt_guard"] = json!({"threshold": 0.8, "deny_topics": [{"ref": topic}]});
        admin.post("/proxies", p).await;
    }
    let mut node = connect(a.grpc_addr(), "gw", &tokens[0], "n1")
        .await
        .unwrap();
    let mut unrelated = connect(a.grpc_addr(), "gw2", &tokens[1], "n2")
        .await
        .unwrap();
    let first = node.next_snapshot().await;
    assert_eq!(first.version, 2);
    assert_eq!(
        first.topics,
        vec![pb::LibraryTopic {
            name: "billing".into(),
            description: String::new(),
            utterances: vec!["pay my invoice".into()],
        }],
        "the topic once for two proxies naming it twice each"
    );
    assert_eq!(first.proxies[0].routes[0].topics[0].library_ref, "billing");
    assert_eq!(unrelated.next_snapshot().await.topics[0].name, "other");

    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .put(format!(
            "http://{}/api/v1/topics/billing/utterances",
            writer.admin_addr()
        ))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body("pay my invoice\nrefund my order\n")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let snap = node.next_snapshot().await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(snap.version, 3);
    assert_eq!(
        snap.topics[0].utterances,
        ["pay my invoice", "refund my order"]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(700), unrelated.rx.next())
            .await
            .is_err(),
        "a gateway not using the topic gets no new snapshot"
    );
    a.shutdown().await;
    if let Some(b) = b {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_topic_update_reaches_every_gateway_using_it() {
    let dir = tempfile::tempdir().unwrap();
    a_topic_update_reaches_every_gateway_using_it(
        &format!("sqlite://{}/cp.db", dir.path().display()),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_topic_update_reaches_every_gateway_using_it() {
    let db = PgDatabase::create().await;
    a_topic_update_reaches_every_gateway_using_it(db.url(), 2).await;
}
