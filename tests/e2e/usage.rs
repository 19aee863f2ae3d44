//! Usage records end to end: a real control plane (PostgreSQL and SQLite), two gateway
//! nodes, the mock OpenAI provider, real HTTP and gRPC.
//!
//! Each request's prompt has its own length, so the usage the mock reported identifies it
//! (input tokens = words + 3): the stored rows must be exactly the mock's reports, request by
//! request, streaming and not, with the consumer, node, route and cost of each — also when the
//! control plane stops in the middle of the run and comes back, and when a node restarts
//! while the control plane is away (its spool replayed by the new process). Nothing lost,
//! nothing counted twice; `GET /usage` agrees with the rows.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;
use switchyard_control_plane::store::{Store as CpStore, StoredUsage};
use switchyard_e2e::{Plane, Store, eventually, fast_sync, node_config};
use switchyard_gateway::{Gateway, UsageShipping};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};

/// Input tokens the mock reports for a prompt of `words` words.
fn input_tokens(words: usize) -> u64 {
    words as u64 + 3
}

fn shipping() -> UsageShipping {
    UsageShipping {
        interval: Duration::from_millis(100),
        send_timeout: Duration::from_secs(2),
        batch: 7,
        retry_cap: Duration::from_millis(500),
        ..UsageShipping::default()
    }
}

async fn node(plane: &Plane, token: &str, dir: &Path) -> Gateway {
    let mut config = node_config(&plane.grpc_url(), "prod-eu", token, dir);
    config.usage = shipping();
    Gateway::start_with(config, fast_sync()).await.unwrap()
}

struct Client {
    http: reqwest::Client,
    keys: Vec<(String, String)>,
    sent: u64,
}

/// What the client knows of each request it made: consumer and node, by input tokens.
type Sent = BTreeMap<u64, (String, SocketAddr, bool)>;

impl Client {
    /// One chat completion of `sent + 1` words (streaming every other one), with the key of
    /// consumer `sent % 2`.
    async fn call(&mut self, node: SocketAddr, log: &mut Sent) {
        let words = self.sent as usize + 1;
        let stream = self.sent % 2 == 1;
        let (consumer, key) = &self.keys[(self.sent % 2) as usize];
        let prompt = vec!["word"; words].join(" ");
        let resp = self
            .http
            .post(format!("http://{node}/support/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "openai/x", "stream": stream,
                          "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.text().await.unwrap();
        if stream {
            assert!(text.contains("[DONE]"), "{text}");
        }
        log.insert(input_tokens(words), (consumer.clone(), node, stream));
        self.sent += 1;
    }
}

async fn setup(store: &Store, mock: &MockOpenAi) -> (Plane, String, Client) {
    let plane = Plane::start(store).await;
    let token = plane.create_gateway("prod-eu").await;
    let admin = plane.admin();
    let (s, p) = admin
        .post(
            "/proxies",
            json!({"name": "support", "gateway": "prod-eu", "base_path": "/support",
                   "client_auth": {"required": true},
                   "routes": [{"name": "openai", "provider": "openai", "url": mock.base_url(),
                               "auth": {"type": "static", "api_key": MOCK_API_KEY},
                               "target_model": "gpt-4.1"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();
    // A price of our own, so the expected cost is computed here from the table.
    let (s, body) = admin
        .put(
            "/prices/gpt-4.1",
            json!({"input_per_mtok": 2.0, "output_per_mtok": 8.0, "cached_input_per_mtok": 0.5}),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let mut keys = Vec::new();
    for name in ["billing-app", "search-app"] {
        let (s, c) = admin
            .post("/consumers", json!({"name": name, "proxies": [pid]}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
        let (s, k) = admin
            .post(&format!("/consumers/{name}/keys"), json!({}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        keys.push((name.to_owned(), k["key"].as_str().unwrap().to_owned()));
    }
    let client = Client {
        http: reqwest::Client::new(),
        keys,
        sent: 0,
    };
    (plane, token, client)
}

/// Waits until `node` serves the proxy with both keys.
async fn until_serving(client: &Client, node: SocketAddr) {
    for (_, key) in &client.keys {
        eventually(
            Duration::from_secs(10),
            "the node to serve the keys",
            || async {
                client
                    .http
                    .get(format!("http://{node}/support/v1/models"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            },
        )
        .await;
    }
}

/// The rows of chat completions stored so far (the `GET /models` probes aside).
async fn stored(store: &CpStore) -> Vec<StoredUsage> {
    let now = Utc::now();
    store
        .usage_records(
            now - chrono::Duration::hours(1),
            now + chrono::Duration::hours(1),
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.input_tokens > 0)
        .collect()
}

/// The rows equal the mock's reports and the client's log, request by request; and
/// `GET /usage` by consumer equals their sums, cost included.
async fn check(
    plane: &Plane,
    store: &CpStore,
    mock: &MockOpenAi,
    log: &Sent,
    nodes: &BTreeMap<SocketAddr, String>,
) {
    let n = log.len();
    eventually(
        Duration::from_secs(20),
        "every usage record to be stored",
        || async {
            let got = stored(store).await;
            if got.len() < n {
                let have: std::collections::BTreeSet<u64> =
                    got.iter().map(|r| r.entry.input_tokens).collect();
                let missing: Vec<_> = log.iter().filter(|(k, _)| !have.contains(k)).collect();
                eprintln!("stored {} of {n}; missing {missing:?}", got.len());
            }
            got.len() >= n
        },
    )
    .await;
    // A moment more: nothing else may arrive (no record counted twice).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = stored(store).await;
    let reported = mock.reported_usages();
    assert_eq!(reported.len(), n, "the mock answered every request once");
    assert_eq!(rows.len(), n, "one row per request");
    let mut by_input: BTreeMap<u64, &StoredUsage> = BTreeMap::new();
    for row in &rows {
        assert!(
            by_input.insert(row.entry.input_tokens, row).is_none(),
            "two rows for one request: {row:?}"
        );
    }
    let mut expected_cost: BTreeMap<String, f64> = BTreeMap::new();
    for usage in &reported {
        let row = by_input[&usage.input];
        let (consumer, node, stream) = &log[&usage.input];
        let e = &row.entry;
        assert_eq!(
            (e.output_tokens, e.cached_input_tokens, e.status, e.stream),
            (usage.output, usage.cached, 200, *stream),
            "{row:?}"
        );
        assert_eq!(
            (&e.consumer, &e.route, &e.model, &e.proxy),
            (
                consumer,
                &"openai".to_owned(),
                &"gpt-4.1".to_owned(),
                &"support".to_owned()
            )
        );
        assert_eq!(row.gateway, "prod-eu");
        assert_eq!(
            &row.node, &nodes[node],
            "stored under the node that served it"
        );
        assert!(!e.fell_back && !e.estimated);
        if *stream {
            assert!(e.ttft_us.is_some(), "{row:?}");
        }
        let cost = ((usage.input - usage.cached) as f64 * 2.0
            + usage.cached as f64 * 0.5
            + usage.output as f64 * 8.0)
            / 1e6;
        assert!(
            (e.cost_nano_usd as f64 / 1e9 - cost).abs() < 1e-9,
            "{row:?}: {cost}"
        );
        *expected_cost.entry(consumer.clone()).or_default() += cost;
    }
    // The report, by consumer, over a range with minute edges (raw rows and rollups).
    let now = Utc::now();
    let from = (now - chrono::Duration::minutes(90)).to_rfc3339();
    let to = (now + chrono::Duration::minutes(30)).to_rfc3339();
    let (s, report) = plane
        .admin()
        .call(
            reqwest::Method::GET,
            &format!(
                "/usage?from={}&to={}&group_by=consumer&model=gpt-4.1",
                urlencode(&from),
                urlencode(&to)
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{report}");
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 2, "{report:?}");
    for row in report {
        let consumer = row["consumer"].as_str().unwrap();
        let mine: Vec<&u64> = log
            .iter()
            .filter(|(_, v)| v.0 == consumer)
            .map(|(k, _)| k)
            .collect();
        let of = |f: &dyn Fn(&switchyard_testkit::ReportedUsage) -> u64| -> u64 {
            reported
                .iter()
                .filter(|u| mine.contains(&&u.input))
                .map(f)
                .sum()
        };
        assert_eq!(row["requests"], json!(mine.len()), "{row}");
        assert_eq!(row["errors"], json!(0));
        assert_eq!(row["input_tokens"], json!(of(&|u| u.input)), "{row}");
        assert_eq!(row["output_tokens"], json!(of(&|u| u.output)), "{row}");
        assert_eq!(
            row["cached_input_tokens"],
            json!(of(&|u| u.cached)),
            "{row}"
        );
        let cost = row["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - expected_cost[consumer]).abs() < 1e-8,
            "{row}: {}",
            expected_cost[consumer]
        );
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn node_ids(nodes: &[&Gateway], dirs: &[&Path]) -> BTreeMap<SocketAddr, String> {
    nodes
        .iter()
        .zip(dirs)
        .map(|(n, d)| {
            (
                n.local_addr(),
                std::fs::read_to_string(d.join("node-id"))
                    .unwrap()
                    .trim()
                    .to_owned(),
            )
        })
        .collect()
}

async fn steady_and_outage(store: Store) {
    let mock = MockOpenAi::start().await.unwrap();
    let (mut plane, token, mut client) = setup(&store, &mock).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = node(&plane, &token, d1.path()).await;
    let n2 = node(&plane, &token, d2.path()).await;
    let (a1, a2) = (n1.local_addr(), n2.local_addr());
    until_serving(&client, a1).await;
    until_serving(&client, a2).await;
    let cp = CpStore::connect(&plane.url).await.unwrap();
    let mut log = Sent::new();
    for i in 0..20 {
        client
            .call(if i % 2 == 0 { a1 } else { a2 }, &mut log)
            .await;
    }
    // The control plane goes away in the middle of the run; traffic goes on.
    plane.stop().await;
    for i in 0..20 {
        client
            .call(if i % 3 == 0 { a1 } else { a2 }, &mut log)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    plane.restart().await;
    for i in 0..10 {
        client
            .call(if i % 2 == 0 { a2 } else { a1 }, &mut log)
            .await;
    }
    let ids = node_ids(&[&n1, &n2], &[d1.path(), d2.path()]).await;
    check(&plane, &cp, &mock, &log, &ids).await;
    n1.shutdown().await;
    n2.shutdown().await;
    cp.close().await;
    plane.stop().await;
}

async fn node_restarted_while_the_control_plane_is_away(store: Store) {
    let mock = MockOpenAi::start().await.unwrap();
    let (mut plane, token, mut client) = setup(&store, &mock).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = node(&plane, &token, d1.path()).await;
    let n2 = node(&plane, &token, d2.path()).await;
    let (a1, a2) = (n1.local_addr(), n2.local_addr());
    until_serving(&client, a1).await;
    until_serving(&client, a2).await;
    let cp = CpStore::connect(&plane.url).await.unwrap();
    let mut log = Sent::new();
    for i in 0..10 {
        client
            .call(if i % 2 == 0 { a1 } else { a2 }, &mut log)
            .await;
    }
    plane.stop().await;
    for i in 0..16 {
        client
            .call(if i % 2 == 0 { a1 } else { a2 }, &mut log)
            .await;
    }
    // Node 1 stops while the control plane is away: its records go to its spool…
    n1.shutdown().await;
    let spool = d1.path().join("usage-spool");
    assert!(
        std::fs::read_dir(&spool).unwrap().count() > 0,
        "the stopped node spooled its records"
    );
    // …and a new process on the same cache dir (and port) serves from its cached snapshot.
    let n1 = node(&plane, &token, d1.path()).await;
    let a1_again = n1.local_addr();
    for _ in 0..6 {
        client.call(a1_again, &mut log).await;
    }
    plane.restart().await;
    for i in 0..6 {
        client
            .call(if i % 2 == 0 { a1_again } else { a2 }, &mut log)
            .await;
    }
    let mut ids = node_ids(&[&n1, &n2], &[d1.path(), d2.path()]).await;
    // The first process of node 1 had another port and the same node id.
    ids.insert(a1, ids[&a1_again].clone());
    check(&plane, &cp, &mock, &log, &ids).await;
    eventually(
        Duration::from_secs(10),
        "the spool to be emptied",
        || async { std::fs::read_dir(&spool).unwrap().count() == 0 },
    )
    .await;
    n1.shutdown().await;
    n2.shutdown().await;
    cp.close().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_steady_and_outage() {
    steady_and_outage(Store::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_steady_and_outage() {
    steady_and_outage(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_node_restarted_while_the_control_plane_is_away() {
    node_restarted_while_the_control_plane_is_away(Store::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_node_restarted_while_the_control_plane_is_away() {
    node_restarted_while_the_control_plane_is_away(Store::sqlite()).await;
}

/// Bad input from a node: a wrong token, a malformed record (refused naming it, nothing
/// stored), a batch over the record limit and one over the size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_and_oversized_batches_are_refused() {
    use switchyard_proto::v1 as pb;
    use switchyard_proto::v1::usage_reporting_client::UsageReportingClient;
    let store = Store::postgres().await;
    let plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let mut client = UsageReportingClient::connect(plane.grpc_url())
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let good = |i: u8| pb::UsageRecord {
        id: [i; 16].to_vec(),
        at_unix_ms: Utc::now().timestamp_millis(),
        proxy_id: "0195f3a2-0000-7000-8000-000000000001".into(),
        proxy: "support".into(),
        status: 200,
        input_tokens: 5,
        ..Default::default()
    };
    let batch = |records: Vec<pb::UsageRecord>, token: &str| pb::UsageBatch {
        gateway: "prod-eu".into(),
        node_id: "node-1".into(),
        registration_token: token.into(),
        records,
    };
    let e = client
        .report(batch(vec![good(1)], "syreg_wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut bad = good(3);
    bad.status = 9999;
    let e = client
        .report(batch(vec![good(2), bad], &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("records[1].status"), "{}", e.message());
    let e = client
        .report(batch(
            (0..5001).map(|i| good((i % 250) as u8 + 1)).collect(),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at most 5000"), "{}", e.message());
    let mut huge = good(4);
    huge.model = "m".repeat(9 * 1024 * 1024);
    let e = client.report(batch(vec![huge], &token)).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{e:?}"
    );
    // Nothing of the refused batches was stored; a good one is, once, even sent twice.
    let ack = client
        .report(batch(vec![good(7), good(8)], &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (2, 0));
    let ack = client
        .report(batch(vec![good(7), good(8)], &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (0, 2));
    let cp = CpStore::connect(&plane.url).await.unwrap();
    let now = Utc::now();
    let rows = cp
        .usage_records(
            now - chrono::Duration::hours(1),
            now + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.node == "node-1" && r.gateway == "prod-eu")
    );
    cp.close().await;
    let mut plane = plane;
    plane.stop().await;
}
