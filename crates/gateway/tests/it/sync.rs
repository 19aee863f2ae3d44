//! Config sync with a fake control plane over real gRPC: apply, swap, NACK, outage, cache.

use std::time::Duration;

use switchyard_gateway::SnapshotSource;
use switchyard_testkit::snapshots::{openai_route, proxy, snapshot, with_target};
use switchyard_testkit::{FakeControlPlane, MOCK_API_KEY, MockOpenAi, NodeEvent, reply_text};

use crate::common::*;

fn one_proxy(mock: &MockOpenAi, target: &str) -> Vec<switchyard_model::Proxy> {
    vec![proxy(
        "p",
        "/p",
        vec![with_target(
            openai_route("main", &mock.base_url(), MOCK_API_KEY),
            target,
        )],
        None,
    )]
}

async fn wait_version(gw: &switchyard_gateway::Gateway, version: u64) {
    let mut state = gw.sync_state();
    tokio::time::timeout(WAIT, state.wait_for(|s| s.applied_version == Some(version)))
        .await
        .expect("version never applied")
        .unwrap();
}

#[tokio::test]
async fn health_and_readiness_before_and_after_the_first_snapshot() {
    let a = MockOpenAi::start().await.unwrap();
    let cp = FakeControlPlane::start().await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let gw = start_node_in(&cp.url(), cache.path()).await;

    let hello = match cp
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Hello(_)))
        .await
    {
        Some(NodeEvent::Hello(h)) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(hello.gateway, GW);
    assert_eq!(hello.registration_token, TOKEN);
    assert_eq!(hello.current_version, 0);
    assert_eq!(hello.address, gw.local_addr().to_string());
    assert!(!hello.software_version.is_empty());
    let node_id = std::fs::read_to_string(cache.path().join("node-id")).unwrap();
    assert_eq!(hello.node_id, node_id.trim());

    assert_eq!(get(&gw, "/healthz").await.status(), 200);
    assert_eq!(get(&gw, "/readyz").await.status(), 503);
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main/m"))).await;
    assert_stamped(&resp, "none", "none");
    let (status, err) = error_of(resp).await;
    assert_eq!((status, err["code"].as_str()), (503, Some("not_ready")));
    assert_eq!(gw.applied_version(), None);

    cp.push(snapshot(GW, 1, one_proxy(&a, "m1"))).await;
    let ack = cp.wait_for_ack(1, WAIT).await.unwrap();
    assert!(ack.applied && ack.error.is_empty(), "{ack:?}");
    assert_eq!(gw.applied_version(), Some(1));
    assert_eq!(
        gw.sync_state().borrow().source,
        Some(SnapshotSource::ControlPlane)
    );
    assert_eq!(get(&gw, "/readyz").await.status(), 200);
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_eq!(resp.status(), 200);

    // Heartbeats carry the served version.
    assert!(
        cp.wait_for(
            WAIT,
            |e| matches!(e, NodeEvent::Heartbeat(h) if h.current_version == 1)
        )
        .await
        .is_some()
    );
    // The same version again is only ACKed.
    cp.push(snapshot(GW, 1, one_proxy(&a, "m1"))).await;
    assert!(
        cp.wait_for_count(
            2,
            WAIT,
            |e| matches!(e, NodeEvent::Ack(a) if a.version == 1 && a.applied)
        )
        .await
    );

    let metrics = crate::common::metrics_handle().render();
    assert!(
        metrics.contains("switchyard_gateway_control_plane_connected"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_gateway_snapshot_applies_total{result=\"applied\"}"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_new_version_is_swapped_in_while_in_flight_requests_finish_on_the_old_one() {
    let old = MockOpenAi::start().await.unwrap();
    let new = MockOpenAi::start().await.unwrap();
    let (cp, gw, _cache) = serving(one_proxy(&old, "v1-model")).await;

    old.set_behavior(switchyard_testkit::Behavior::DelayHeaders(
        Duration::from_millis(800),
    ));
    let in_flight = {
        let url = url(&gw, "/p/chat/completions");
        tokio::spawn(async move {
            client()
                .post(url)
                .json(&chat(Some("main/x")))
                .send()
                .await
                .unwrap()
        })
    };
    assert!(old.wait_until(WAIT, |m| m.request_count() == 1).await);

    cp.push(snapshot(GW, 2, one_proxy(&new, "v2-model"))).await;
    let ack = cp.wait_for_ack(2, WAIT).await.unwrap();
    assert!(ack.applied, "{ack:?}");
    assert_eq!(gw.applied_version(), Some(2));

    let resp = post(&gw, "/p/chat/completions", &chat(Some("main/x"))).await;
    assert_stamped(&resp, "main", "v2-model");
    assert_eq!(reply_of(resp).await, reply_text("v2-model"));

    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "main", "v1-model");
    assert_eq!(reply_of(resp).await, reply_text("v1-model"));
    assert_eq!(old.request_count(), 1);
    assert_eq!(new.request_count(), 1);
}

#[tokio::test]
async fn an_open_stream_survives_a_swap_on_its_old_version() {
    let old = MockOpenAi::start().await.unwrap();
    let new = MockOpenAi::start().await.unwrap();
    let (cp, gw, _cache) = serving(one_proxy(&old, "v1-model")).await;
    old.set_behavior(switchyard_testkit::Behavior::GatedStream);
    let body = serde_json::json!({
        "model": "main", "stream": true, "messages": [{"role": "user", "content": "Hi"}],
    });
    let mut resp = post(&gw, "/p/chat/completions", &body).await;
    assert_stamped(&resp, "main", "v1-model");
    let mut text = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();

    cp.push(snapshot(GW, 2, one_proxy(&new, "v2-model"))).await;
    assert!(cp.wait_for_ack(2, WAIT).await.unwrap().applied);
    old.release_streams();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains("\"model\":\"v1-model\""), "{text}");
    assert_eq!(old.streams_completed(), 1);
    assert_eq!(new.request_count(), 0);
}

#[tokio::test]
async fn a_bad_snapshot_is_nacked_and_the_old_table_kept() {
    let a = MockOpenAi::start().await.unwrap();
    let (cp, gw, _cache) = serving(one_proxy(&a, "m1")).await;

    // An enum value this node does not know: the snapshot does not convert, NACKed whole.
    let mut wire = snapshot(GW, 3, one_proxy(&a, "m4"));
    wire.proxies[0].routes[0].provider = 99;
    cp.push(wire).await;
    let nack = cp.wait_for_ack(3, WAIT).await.unwrap();
    assert!(!nack.applied);
    assert!(nack.error.contains("unknown provider"), "{}", nack.error);

    assert_eq!(gw.applied_version(), Some(1));
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_stamped(&resp, "main", "m1");
    assert!(gw.sync_state().borrow().last_error.is_some());

    // Proxies that do not compile (two on one base path; an invalid URL) are reported one
    // by one; the snapshot applies with the rest.
    let mut proxies = one_proxy(&a, "m2");
    proxies.extend(one_proxy(&a, "m3"));
    let mut wire = snapshot(GW, 4, proxies);
    let mut broken = snapshot(GW, 4, one_proxy(&a, "m5")).proxies.remove(0);
    broken.base_path = "/q".into();
    broken.routes[0].url = "not a url".into();
    wire.proxies.push(broken);
    cp.push(wire).await;
    let ack = cp.wait_for_ack(4, WAIT).await.unwrap();
    assert!(ack.applied, "{ack:?}");
    assert_eq!(ack.proxy_failures.len(), 2, "{ack:?}");
    assert!(
        ack.proxy_failures[0].error.contains("base path '/p'"),
        "{ack:?}"
    );
    assert_eq!(gw.applied_version(), Some(4));
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_stamped(&resp, "main", "m2");

    // A good one after that applies.
    cp.push(snapshot(GW, 5, one_proxy(&a, "m6"))).await;
    assert!(cp.wait_for_ack(5, WAIT).await.unwrap().applied);
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_stamped(&resp, "main", "m6");
}

#[tokio::test]
async fn traffic_keeps_flowing_without_the_control_plane_and_the_node_resyncs() {
    let a = MockOpenAi::start().await.unwrap();
    let (cp, gw, _cache) = serving(one_proxy(&a, "m1")).await;
    let mut state = gw.sync_state();
    tokio::time::timeout(WAIT, state.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap();

    let addr = cp.stop().await;
    tokio::time::timeout(WAIT, state.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(get(&gw, "/readyz").await.status(), 200);
    // Let a few reconnects fail.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cp = FakeControlPlane::start_on(addr).await.unwrap();
    cp.push(snapshot(GW, 2, one_proxy(&a, "m2"))).await;
    let hello = match cp
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Hello(_)))
        .await
    {
        Some(NodeEvent::Hello(h)) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(hello.current_version, 1);
    assert!(cp.wait_for_ack(2, WAIT).await.unwrap().applied);
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_stamped(&resp, "main", "m2");
}

#[tokio::test]
async fn a_restarted_node_serves_from_its_cache_while_the_control_plane_is_down() {
    let a = MockOpenAi::start().await.unwrap();
    let (cp, gw, cache) = serving(one_proxy(&a, "m1")).await;
    let node_id = cp.hellos()[0].node_id.clone();
    gw.shutdown().await;
    let addr = cp.stop().await;

    let snapshot_file = cache.path().join("snapshot.pb");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&snapshot_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let gw = start_node_in(&format!("http://{addr}"), cache.path()).await;
    // Ready at once, before any control plane answered.
    assert_eq!(gw.applied_version(), Some(1));
    assert_eq!(gw.sync_state().borrow().source, Some(SnapshotSource::Cache));
    assert_eq!(get(&gw, "/readyz").await.status(), 200);
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "main", "m1");

    // When the control plane is back, the node introduces itself with its cached version
    // and the same id.
    let cp = FakeControlPlane::start_on(addr).await.unwrap();
    let hello = match cp
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Hello(_)))
        .await
    {
        Some(NodeEvent::Hello(h)) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(hello.current_version, 1);
    assert_eq!(hello.node_id, node_id);
    gw.shutdown().await;

    // A corrupt cache is ignored: the node starts, not ready.
    std::fs::write(&snapshot_file, b"\x0a\xff\xff\xff garbage").unwrap();
    let gw = start_node_in(
        &format!("http://127.0.0.1:{}", closed_port().await),
        cache.path(),
    )
    .await;
    assert_eq!(gw.applied_version(), None);
    assert_eq!(get(&gw, "/readyz").await.status(), 503);
    assert_eq!(get(&gw, "/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_refused_token_or_unknown_gateway_keeps_the_node_serving_and_retrying() {
    let a = MockOpenAi::start().await.unwrap();
    let (cp, gw, cache) = serving(one_proxy(&a, "m1")).await;
    gw.shutdown().await;
    let addr = cp.stop().await;

    let cp = FakeControlPlane::start_on(addr).await.unwrap();
    cp.require_token("another-token");
    cp.push(snapshot(GW, 2, one_proxy(&a, "m2"))).await;
    let gw = start_node_in(&cp.url(), cache.path()).await;
    assert!(
        cp.wait_for_count(3, WAIT, |e| matches!(e, NodeEvent::Hello(_)))
            .await,
        "the node does not retry"
    );
    assert!(cp.acks().is_empty());
    assert_eq!(gw.applied_version(), Some(1));
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main"))).await;
    assert_stamped(&resp, "main", "m1");
    let error = gw.sync_state().borrow().last_error.clone().unwrap();
    assert!(
        error.contains("Unauthenticated") || error.contains("registration"),
        "{error}"
    );
    gw.shutdown().await;
    let addr = cp.stop().await;

    let cp = FakeControlPlane::start_on(addr).await.unwrap();
    cp.only_gateway("some-other-gateway");
    let gw = start_node_in(&cp.url(), cache.path()).await;
    assert!(
        cp.wait_for_count(2, WAIT, |e| matches!(e, NodeEvent::Hello(_)))
            .await
    );
    let mut state = gw.sync_state();
    let state = tokio::time::timeout(WAIT, state.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(state.last_error.unwrap().contains("does not exist"));
    assert_eq!(get(&gw, "/readyz").await.status(), 200);
}

#[tokio::test]
async fn a_separate_metrics_listener_serves_metrics() {
    let a = MockOpenAi::start().await.unwrap();
    let cp = FakeControlPlane::start().await.unwrap();
    cp.push(snapshot(GW, 7, one_proxy(&a, "m1"))).await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = config(&cp.url(), cache.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = switchyard_gateway::Gateway::start_with(config, tuning())
        .await
        .unwrap();
    wait_version(&gw, 7).await;
    let addr = gw.metrics_addr().unwrap();
    assert_ne!(addr, gw.local_addr());
    let resp = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("switchyard_gateway_snapshot_version"),
        "{text}"
    );

    // The traffic port never serves metrics: clients must not read the node's internals.
    let resp = get(&gw, "/metrics").await;
    assert_eq!(resp.status(), 404);
    assert!(!resp.text().await.unwrap().contains("switchyard_"));

    // Without a recorder handle, the metrics listener says metrics are disabled.
    let mut config = crate::common::config(&cp.url(), cache.path());
    config.metrics = None;
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let bare = switchyard_gateway::Gateway::start_with(config, tuning())
        .await
        .unwrap();
    let resp = client()
        .get(format!("http://{}/metrics", bare.metrics_addr().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("disabled"));
}
