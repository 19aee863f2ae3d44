//! A fleet on one control plane: the node simulator holds many node streams (one HTTP/2
//! connection each) to a real `switchyard control-plane` process on PostgreSQL, and
//! measures how long a proxy change takes to be acknowledged by every node, the control
//! plane's memory per connected node, and that the snapshot is encoded once per version.
//!
//! The test command runs it with 100 nodes; `bench/fleet` runs 1,000
//! (`SWITCHYARD_FLEET_NODES=1000`).

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[expect(dead_code, reason = "each test binary uses part of it")]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ControlPlaneProcess, call, metric};
use switchyard_testkit::pg::PgDatabase;
use switchyard_testkit::{NodeSimulator, SimConfig};

fn proxy(model: &str) -> Value {
    json!({
        "name": "support", "gateway": "fleet", "format": "openai", "base_path": "/support",
        "routing": {"strategy": "model"},
        "routes": [{"name": "openai", "provider": "openai", "url": "https://api.openai.com/v1",
                    "auth": {"type": "static", "api_key": "sk-fleet"}, "target_model": model}]
    })
}

fn nodes() -> usize {
    std::env::var("SWITCHYARD_FLEET_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_node_within_a_second() {
    let n = nodes();
    let db = PgDatabase::create().await;
    let cp = ControlPlaneProcess::start(db.url());
    let http = reqwest::Client::new();
    let gateway = call(
        &http,
        &cp,
        reqwest::Method::POST,
        "/gateways",
        Some(json!({"name": "fleet"})),
    )
    .await;
    let token = gateway["registration_token"].as_str().unwrap().to_owned();
    let created = call(
        &http,
        &cp,
        reqwest::Method::POST,
        "/proxies",
        Some(proxy("gpt-4.1")),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = cp.rss();

    let started = Instant::now();
    let sim = NodeSimulator::start(
        SimConfig::new(format!("http://{}", cp.grpc), "fleet", &token, n),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let connect_time = started.elapsed();
    assert_eq!(sim.connected(), n);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = cp.rss();
    let per_node = rss_after.saturating_sub(rss_before) / n as u64;

    let mut fanouts = Vec::new();
    let mut recorded = Vec::new();
    for round in 0..5 {
        let encodings_before = metric(
            &http,
            &cp,
            "switchyard_control_plane_snapshot_encodings_total",
        )
        .await;
        let sent = Instant::now();
        let updated = call(
            &http,
            &cp,
            reqwest::Method::PUT,
            &format!("/proxies/{id}"),
            Some(proxy(&format!("gpt-4.1-r{round}"))),
        )
        .await;
        let version = gateway_version(&http, &cp).await;
        assert!(updated["version"].as_u64().is_some());
        let fanout = sim
            .wait_all_acked(version, Duration::from_secs(30))
            .await
            .unwrap();
        fanouts.push(sent.elapsed().max(fanout));
        // Every ACK recorded by the control plane (what the admin API shows).
        loop {
            let g = call(&http, &cp, reqwest::Method::GET, "/gateways/fleet", None).await;
            let nodes = g["nodes"].as_array().unwrap();
            let done = nodes
                .iter()
                .filter(|n| n["applied_version"].as_u64() == Some(version))
                .count();
            if done == n {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(60),
                "{done}/{n} recorded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recorded.push(sent.elapsed());
        let encodings = metric(
            &http,
            &cp,
            "switchyard_control_plane_snapshot_encodings_total",
        )
        .await
            - encodings_before;
        assert_eq!(
            encodings, 1.0,
            "the snapshot of version {version} was encoded {encodings} times for {n} nodes"
        );
    }
    let worst = fanouts.iter().max().unwrap();
    let best = fanouts.iter().min().unwrap();
    println!(
        "fleet: {n} nodes connected in {connect_time:?}; change → all ACKed: best {best:?}, worst {worst:?} \
         (all rounds {fanouts:?}); → all recorded by the control plane: {recorded:?}; \
         control-plane RSS {} MiB → {} MiB, {:.1} KiB per connected node",
        rss_before / (1024 * 1024),
        rss_after / (1024 * 1024),
        per_node as f64 / 1024.0
    );
    assert!(
        *worst < Duration::from_secs(1),
        "fan-out to {n} nodes took {worst:?}"
    );
    sim.stop().await;
}

async fn gateway_version(http: &reqwest::Client, cp: &ControlPlaneProcess) -> u64 {
    let g = call(http, cp, reqwest::Method::GET, "/gateways/fleet", None).await;
    g["config_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no config_version in {g}"))
}
