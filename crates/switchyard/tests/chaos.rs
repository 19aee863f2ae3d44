//! Chaos, bounded in time, on loopback: two `switchyard control-plane` processes on one
//! PostgreSQL database, two in-process gateway nodes reaching them through the testkit's
//! `FaultProxy` (which also spreads connections over the replicas like a Service), and
//! steady client load through both nodes while the test kills replicas (SIGKILL),
//! black-holes a node's link, hangs the replica a node streams from (SIGSTOP) while a change
//! is made through the other and resumes it (SIGCONT), cuts a
//! link, and stops its private PostgreSQL server and starts it again.
//!
//! Every run checks: zero failed client requests; every node on the newest version within
//! 1 s of the link healing (or of the surviving path being there); no acknowledged admin
//! write lost; every request's usage record stored exactly once. `SWITCHYARD_CHAOS_SECS` sets how long each fault lasts (default 3; bench/chaos
//! runs 30).

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[expect(dead_code, reason = "each test binary uses part of it")]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ControlPlaneProcess, call};
use switchyard_gateway::{Gateway, GatewayConfig, SyncTuning};
use switchyard_testkit::FaultProxy;
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};
use switchyard_testkit::pg::{PgDatabase, PgServer};

fn fault_secs() -> u64 {
    std::env::var("SWITCHYARD_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn proxy(upstream: &str, model: &str) -> Value {
    json!({
        "name": "support", "gateway": "chaos", "format": "openai", "base_path": "/support",
        "routing": {"strategy": "model"},
        "routes": [{"name": "openai", "provider": "openai", "url": upstream,
                    "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": model}]
    })
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// Requests one after another through `node` until stopped, counting answers.
async fn steady_load(load: Arc<Load>, node: std::net::SocketAddr) {
    let http = reqwest::Client::new();
    while !load.stop.load(Ordering::Relaxed) {
        let resp = http
            .post(format!("http://{node}/support/chat/completions"))
            .json(&json!({"model": "openai/x", "messages": [{"role": "user", "content": "Hello"}]}))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => load.ok.fetch_add(1, Ordering::Relaxed),
            Ok(r) => {
                eprintln!("client request failed: {}", r.status());
                load.failed.fetch_add(1, Ordering::Relaxed)
            }
            Err(e) => {
                eprintln!("client request failed: {e}");
                load.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Fleet {
    db: PgDatabase,
    a: Option<ControlPlaneProcess>,
    b: Option<ControlPlaneProcess>,
    addrs: [(String, String); 2],
    http: reqwest::Client,
    upstream: String,
    proxy_id: String,
    writes: u64,
}

impl Fleet {
    fn admin(&self) -> &ControlPlaneProcess {
        self.a.as_ref().or(self.b.as_ref()).unwrap()
    }

    /// A proxy change through `via`; the gateway's version it produced (acknowledged).
    async fn change(&mut self, via: usize) -> u64 {
        self.writes += 1;
        let cp = [&self.a, &self.b][via].as_ref().unwrap();
        let model = format!("gpt-4.1-w{}", self.writes);
        call(
            &self.http,
            cp,
            reqwest::Method::PUT,
            &format!("/proxies/{}", self.proxy_id),
            Some(proxy(&self.upstream, &model)),
        )
        .await;
        let g = call(
            &self.http,
            cp,
            reqwest::Method::GET,
            "/gateways/chaos",
            None,
        )
        .await;
        g["config_version"].as_u64().unwrap()
    }

    fn restart(&mut self, which: usize) {
        let (admin, grpc) = &self.addrs[which];
        let started = ControlPlaneProcess::start_at(self.db.url(), admin, grpc);
        if which == 0 {
            self.a = Some(started)
        } else {
            self.b = Some(started)
        }
    }
}

/// Waits until every node serves `version`; the time it took.
async fn all_on(nodes: &[Gateway], version: u64, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if nodes.iter().all(|n| n.applied_version() >= Some(version)) {
            return started.elapsed();
        }
        let versions: Vec<_> = nodes.iter().map(Gateway::applied_version).collect();
        assert!(
            started.elapsed() < within,
            "{what}: nodes at {versions:?}, want {version} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_survives_kills_black_holes_and_hangs() {
    let secs = fault_secs();
    let mock = MockOpenAi::start().await.unwrap();
    // A private server: this test stops and starts it.
    let pg = PgServer::start();
    let db = PgDatabase::create_on(&pg.url()).await;
    let a = ControlPlaneProcess::start(db.url());
    let b = ControlPlaneProcess::start_at(db.url(), "127.0.0.1:0", "127.0.0.1:0");
    let addrs = [
        (a.admin.to_string(), a.grpc.to_string()),
        (b.admin.to_string(), b.grpc.to_string()),
    ];
    let http = reqwest::Client::new();
    let gateway = call(
        &http,
        &a,
        reqwest::Method::POST,
        "/gateways",
        Some(json!({"name": "chaos"})),
    )
    .await;
    let token = gateway["registration_token"].as_str().unwrap().to_owned();
    let created = call(
        &http,
        &a,
        reqwest::Method::POST,
        "/proxies",
        Some(proxy(&mock.base_url(), "gpt-4.1-w0")),
    )
    .await;
    let mut fleet = Fleet {
        proxy_id: created["id"].as_str().unwrap().to_owned(),
        db,
        a: Some(a),
        b: Some(b),
        addrs,
        http,
        upstream: mock.base_url(),
        writes: 0,
    };

    // Node 0 prefers replica A, node 1 replica B; each fails over to the other.
    let grpc = [
        fleet.a.as_ref().unwrap().grpc,
        fleet.b.as_ref().unwrap().grpc,
    ];
    let links = [
        FaultProxy::start(vec![grpc[0], grpc[1]]).await.unwrap(),
        FaultProxy::start(vec![grpc[1], grpc[0]]).await.unwrap(),
    ];
    let caches = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let tuning = SyncTuning {
        heartbeat_interval: Duration::from_millis(500),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(300),
    };
    let mut nodes = Vec::new();
    for (i, link) in links.iter().enumerate() {
        let mut config = GatewayConfig::new(link.url(), "chaos", &token, caches[i].path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.node_id = Some(format!("chaos-{i}"));
        config.upstream_header_timeout = Duration::from_secs(5);
        config.drain_timeout = Duration::from_secs(2);
        nodes.push(Gateway::start_with(config, tuning.clone()).await.unwrap());
    }
    all_on(&nodes, 1, Duration::from_secs(10), "first snapshot").await;
    let load = Arc::new(Load::default());
    let load_tasks: Vec<_> = nodes
        .iter()
        .map(|n| tokio::spawn(steady_load(load.clone(), n.local_addr())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut report = Vec::new();

    // 1. Kill replica A: its nodes fail over to B and get B's next change.
    fleet.a.take().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let v = fleet.change(1).await;
    report.push((
        "kill A, change via B",
        all_on(&nodes, v, Duration::from_secs(1), "after killing A").await,
    ));
    fleet.restart(0);
    // 2. Then kill B: every node ends up on A.
    fleet.b.take().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let v = fleet.change(0).await;
    report.push((
        "kill B, change via A",
        all_on(&nodes, v, Duration::from_secs(1), "after killing B").await,
    ));
    fleet.restart(1);
    let v = fleet.change(1).await;
    report.push((
        "both restarted, change via B",
        all_on(&nodes, v, Duration::from_secs(1), "after restarts").await,
    ));

    // 3. Black-hole node 0's link while a change is made, then heal it.
    links[0].black_hole();
    let v = fleet.change(0).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    links[0].heal();
    report.push((
        "black hole healed",
        all_on(
            &nodes,
            v,
            Duration::from_secs(1),
            "after healing the black hole",
        )
        .await,
    ));

    // 4. Hang replica A (SIGSTOP) with node 0 streaming from it, make a change through B
    //    while A hangs, then let A go on (SIGCONT): node 0 serves throughout, and is on the
    //    newest version within 1 s of A resuming.
    let sessions = nodes[0].sync_state().borrow().sessions;
    links[0].cut(); // node 0 reconnects to its first choice, A
    let reconnected = Instant::now();
    while nodes[0].sync_state().borrow().sessions == sessions
        || !nodes[0].sync_state().borrow().connected
    {
        assert!(
            reconnected.elapsed() < Duration::from_secs(5),
            "node 0 did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fleet.a.as_ref().unwrap().signal("STOP");
    let v = fleet.change(1).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let behind = nodes[0].applied_version() < Some(v);
    fleet.a.as_ref().unwrap().signal("CONT");
    report.push((
        if behind {
            "hung replica resumed (node 0 was behind)"
        } else {
            "hung replica resumed"
        },
        all_on(&nodes, v, Duration::from_secs(1), "after SIGCONT").await,
    ));

    // 5. Cut every connection of node 1's link at once.
    links[1].cut();
    let v = fleet.change(1).await;
    report.push((
        "link cut",
        all_on(&nodes, v, Duration::from_secs(1), "after a cut").await,
    ));

    // 6. Stop PostgreSQL (as a crash) and start it again: nodes serve throughout; a write
    //    during the outage is refused (never acknowledged); the first write after reaches
    //    every node within a second.
    pg.stop();
    let refused = fleet
        .http
        .put(format!(
            "http://{}/api/v1/proxies/{}",
            fleet.admin().admin,
            fleet.proxy_id
        ))
        .bearer_auth(support::TOKEN)
        .json(&proxy(&fleet.upstream, "never-stored"))
        .send()
        .await
        .unwrap();
    assert!(
        refused.status().is_server_error(),
        "a write without a database: {}",
        refused.status()
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    pg.start_again();
    let v = fleet.change(0).await;
    report.push((
        "PostgreSQL restarted",
        all_on(
            &nodes,
            v,
            Duration::from_secs(1),
            "after PostgreSQL came back",
        )
        .await,
    ));

    load.stop.store(true, Ordering::Relaxed);
    for t in load_tasks {
        t.await.unwrap();
    }
    // No acknowledged write lost: the proxy holds the last one, at its version.
    let stored = call(
        &fleet.http,
        fleet.admin(),
        reqwest::Method::GET,
        &format!("/proxies/{}", fleet.proxy_id),
        None,
    )
    .await;
    assert_eq!(
        stored["version"].as_u64(),
        Some(fleet.writes + 1),
        "{stored}"
    );
    assert_eq!(
        stored["routes"][0]["target_model"],
        format!("gpt-4.1-w{}", fleet.writes)
    );
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    println!(
        "chaos ({secs} s faults): {ok} client requests, {failed} failed; every node on the newest version after: {report:?}"
    );
    assert_eq!(failed, 0, "client requests failed during the chaos");
    assert!(ok > 100, "the load ran ({ok} requests)");
    // Usage: every request of the run stored exactly once, through replicas killed and hung
    // mid-batch and the database stopped (records spooled on the nodes meanwhile).
    let started = Instant::now();
    let day = chrono::Duration::days(1);
    let now = chrono::Utc::now();
    let usage_path = format!(
        "/usage?from={}&to={}&gateway=chaos",
        (now - day).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + day).format("%Y-%m-%dT%H:%M:%SZ")
    );
    loop {
        let rows = call(
            &fleet.http,
            fleet.admin(),
            reqwest::Method::GET,
            &usage_path,
            None,
        )
        .await;
        let stored = rows[0]["requests"].as_u64().unwrap();
        assert!(
            stored <= ok + failed,
            "usage counted twice: {stored} stored for {} requests",
            ok + failed
        );
        if stored == ok + failed {
            println!(
                "usage: all {stored} records stored {:?} after the load stopped",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "usage records lost: {stored} stored for {} requests",
            ok + failed
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}
