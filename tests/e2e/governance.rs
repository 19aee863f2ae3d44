//! Governance end to end: a real control plane, two gateway nodes sharing one Redis (a
//! private `redis-server` per test), the mock providers, over real HTTP and gRPC.
//!
//! Consumers and keys (401/403 in each format's shape, the key never upstream, revocation on
//! every node within a second), request limits exact across nodes, token limits within one
//! in-flight request per node, windows that reset, budgets from the price table, Redis lost
//! and back in both failure modes, and the official SDKs with a consumer key.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, eventually, fast_sync, node_config, pytest};
use switchyard_gateway::{FailureMode, Gateway, LimitsConfig};
use switchyard_testkit::gemini::{GEMINI_API_KEY, MockGemini};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};
use switchyard_testkit::redis::{RedisServer, unique_prefix};

struct Fleet {
    plane: Plane,
    nodes: Vec<Gateway>,
    _dirs: Vec<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Nodes sharing `redis` (limits with the default share, unless `share` says otherwise).
async fn fleet(store: &Store, redis: &RedisServer, modes: &[FailureMode]) -> Fleet {
    fleet_sharing(store, redis, modes, LimitsConfig::default().local_share).await
}

async fn fleet_sharing(
    store: &Store,
    redis: &RedisServer,
    modes: &[FailureMode],
    share: f64,
) -> Fleet {
    let plane = Plane::start(store).await;
    let token = plane.create_gateway("prod-eu").await;
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for mode in modes {
        let dir = tempfile::tempdir().unwrap();
        let mut config = node_config(&plane.grpc_url(), "prod-eu", &token, dir.path());
        config.counters = LimitsConfig {
            redis_url: Some(redis.url()),
            key_prefix: prefix.clone(),
            timeout: Duration::from_millis(250),
            on_failure: *mode,
            local_share: share,
            ..LimitsConfig::default()
        };
        nodes.push(Gateway::start_with(config, fast_sync()).await.unwrap());
        dirs.push(dir);
    }
    Fleet {
        plane,
        nodes,
        _dirs: dirs,
        http: reqwest::Client::new(),
    }
}

impl Fleet {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(Gateway::local_addr).collect()
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let (status, created) = self.plane.admin().post(path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    /// A new key of `consumer` (the secret, its id).
    async fn key(&self, consumer: &str) -> (String, String) {
        let (status, key) = self
            .plane
            .admin()
            .post(&format!("/consumers/{consumer}/keys"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (
            key["key"].as_str().unwrap().to_owned(),
            key["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
        let mut plane = self.plane;
        plane.stop().await;
    }
}

/// A chat completion with a consumer key: `(status, headers, body)`.
async fn call(
    http: &reqwest::Client,
    node: SocketAddr,
    key: Option<&str>,
    stream: bool,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = http
        .post(format!("http://{node}/support/v1/chat/completions"))
        .json(&json!({"model": "openai/x", "stream": stream,
                      "messages": [{"role": "user", "content": "Hello there"}]}));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = if stream && status == StatusCode::OK {
        let text = resp.text().await.unwrap();
        assert!(text.contains("[DONE]"), "{text}");
        Value::String(text)
    } else {
        resp.json().await.unwrap_or(Value::Null)
    };
    (status, headers, body)
}

fn proxy(upstream: &str, extra: Value) -> Value {
    let mut p = json!({
        "name": "support", "gateway": "prod-eu", "base_path": "/support",
        "client_auth": {"required": true},
        "routes": [{"name": "openai", "provider": "openai", "url": upstream,
                    "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// A Gemini-format proxy needing consumer keys, at `/gem`, route `g`.
fn gemini_proxy(upstream: &str) -> Value {
    json!({"name": "gem", "gateway": "prod-eu", "base_path": "/gem", "format": "gemini",
           "client_auth": {"required": true},
           "routes": [{"name": "g", "provider": "gemini", "url": upstream,
                       "auth": {"type": "static", "api_key": GEMINI_API_KEY}}]})
}

/// Waits until every node serves the consumer's key.
async fn until_served(f: &Fleet, key: &str) {
    for node in f.addrs() {
        eventually(Duration::from_secs(5), "the key to be served", || async {
            call(&f.http, node, Some(key), false).await.0 == StatusCode::OK
        })
        .await;
    }
}

async fn keys_errors_and_revocation(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let gemini = MockGemini::start().await.unwrap();
    let f = fleet(&store, &redis, &[FailureMode::Open, FailureMode::Open]).await;
    let p = f
        .create("/proxies", proxy(&mock.base_url(), json!({})))
        .await;
    let pid = p["id"].as_str().unwrap();
    let g = f.create("/proxies", gemini_proxy(&gemini.base_url())).await;
    let gid = g["id"].as_str().unwrap();
    f.create(
        "/consumers",
        json!({"name": "billing-app", "proxies": [pid, gid]}),
    )
    .await;
    f.create("/consumers", json!({"name": "elsewhere", "proxies": [gid]}))
        .await;
    // The other consumer's key first: a snapshot that serves `key` then carries both.
    let (other, _) = f.key("elsewhere").await;
    let (key, key_id) = f.key("billing-app").await;
    until_served(&f, &key).await;
    let node = f.addrs()[0];

    // The consumer key never reaches the upstream: the route's own key does.
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {MOCK_API_KEY}").as_str())
    );
    assert!(!format!("{:?}", seen.headers).contains(&key));

    // 401 / 403 in the OpenAI shape.
    for (k, status, code) in [
        (None, 401, "missing_api_key"),
        (
            Some("sy_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            401,
            "invalid_api_key",
        ),
        (Some("not-even-a-key"), 401, "invalid_api_key"),
        (Some(other.as_str()), 403, "consumer_not_allowed"),
    ] {
        let (s, _, body) = call(&f.http, node, k, false).await;
        assert_eq!(s.as_u16(), status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    // Gemini: the key in ?key= or x-goog-api-key; errors in the Gemini shape; the key is not
    // sent upstream (the mock sees the route's key).
    let gem = |k: Option<&str>, header: bool| {
        let mut url = format!("http://{node}/gem/v1beta/models/g/gemini-2.5-flash:generateContent");
        if let (Some(k), false) = (k, header) {
            url.push_str(&format!("?key={k}"));
        }
        let mut req = f
            .http
            .post(url)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}));
        if let (Some(k), true) = (k, header) {
            req = req.header("x-goog-api-key", k);
        }
        req.send()
    };
    for header in [false, true] {
        let resp = gem(Some(&key), header).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = gemini.last_request().unwrap();
        assert!(!format!("{:?} {:?}", seen.headers, seen.query).contains(&key));
        assert_eq!(seen.header("x-goog-api-key"), Some(GEMINI_API_KEY));
    }
    let resp = gem(None, false).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED", "{body}");
    assert_eq!(body["error"]["code"], 401, "{body}");

    // Revoked: refused on both nodes within a second.
    let (status, _) = f
        .plane
        .admin()
        .delete(&format!("/consumers/billing-app/keys/{key_id}"))
        .await;
    assert!(status.is_success(), "{status}");
    let revoked_at = Instant::now();
    for node in f.addrs() {
        eventually(
            Duration::from_secs(1),
            "the revoked key to be refused",
            || async { call(&f.http, node, Some(&key), false).await.0 == StatusCode::UNAUTHORIZED },
        )
        .await;
    }
    eprintln!(
        "revocation reached both nodes in {:?}",
        revoked_at.elapsed()
    );
    f.shutdown().await;
}

/// A request limit of N admits exactly N of 4N concurrent requests spread over both nodes,
/// streamed or not; the window then resets.
async fn request_limits_are_exact_across_nodes(store: Store) {
    const N: usize = 10;
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, &[FailureMode::Closed, FailureMode::Closed]).await;
    let p = f
        .create(
            "/proxies",
            proxy(
                &mock.base_url(),
                json!({"rate_limits": [{"name": "rpm", "requests": N, "window": "1h", "key": "proxy"}]}),
            ),
        )
        .await;
    let pid = p["id"].as_str().unwrap();
    // The consumer's own limit applies too (far from reached here).
    f.create(
        "/consumers",
        json!({"name": "app", "proxies": [pid],
               "rate_limits": [{"name": "per-app", "requests": 1000, "window": "1h"}]}),
    )
    .await;
    let (key, _) = f.key("app").await;
    // The first request of the window (one admitted), through a node that has the key.
    for node in f.addrs() {
        eventually(Duration::from_secs(5), "the key to be served", || async {
            call(&f.http, node, Some(&key), false).await.0 != StatusCode::UNAUTHORIZED
        })
        .await;
    }
    let used = mock.request_count();
    assert!((1..=2).contains(&used), "{used}");
    let addrs = f.addrs();
    let results = futures::future::join_all((0..4 * N).map(|i| {
        let node = addrs[i % 2];
        let (http, key) = (f.http.clone(), key.clone());
        async move { call(&http, node, Some(&key), i % 3 == 0).await }
    }))
    .await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let limited: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + used, N, "exactly N admitted in the window");
    assert_eq!(ok + limited.len(), 4 * N);
    assert_eq!(
        mock.request_count(),
        N,
        "refused requests never reach the upstream"
    );
    let (_, headers, body) = limited[0];
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("'rpm'"));
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "{retry}");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    // Admitted answers carry the tightest limit's headers.
    let ok_headers = &results.iter().find(|r| r.0 == StatusCode::OK).unwrap().1;
    assert_eq!(
        ok_headers["x-ratelimit-limit-requests"],
        N.to_string().as_str()
    );

    // Windows reset: switch the proxy's limit to 2 per 2 s, fill it, wait it out.
    let mut body = proxy(
        &mock.base_url(),
        json!({"rate_limits": [{"name": "burst", "requests": 2, "window": "2s", "key": "proxy"}]}),
    );
    body["version"] = p["version"].clone();
    let (status, _) = f.plane.admin().put(&format!("/proxies/{pid}"), body).await;
    assert_eq!(status, StatusCode::OK);
    let node = addrs[0];
    eventually(Duration::from_secs(5), "the new limit to apply", || async {
        call(&f.http, node, Some(&key), false)
            .await
            .1
            .get("x-ratelimit-limit-requests")
            .is_some_and(|v| v == "2")
    })
    .await;
    eventually(Duration::from_secs(3), "the 2 s window to fill", || async {
        call(&f.http, node, Some(&key), false).await.0 == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(&f.http, addrs[1], Some(&key), false).await.0,
        StatusCode::OK
    );
    f.shutdown().await;
}

/// The mock's tokens per request (input + output), from one call's usage.
fn tokens_of(body: &Value) -> u64 {
    body["usage"]["total_tokens"].as_u64().unwrap()
}

/// A token limit admits while below it: never more than the limit plus one in-flight request
/// per node; streamed requests are charged at their end. A budget stops the consumer after
/// the spend the mock's usage implies.
async fn token_limits_and_budgets(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, &[FailureMode::Open, FailureMode::Open]).await;
    // $1 per token, so a request costs its token count in USD.
    let (status, price) = f
        .plane
        .admin()
        .put(
            "/prices/gpt-4.1",
            json!({"input_per_mtok": 1e6, "output_per_mtok": 1e6, "cached_input_per_mtok": 1e6}),
        )
        .await;
    assert!(status.is_success(), "{price}");
    let probe = f
        .create("/proxies", proxy(&mock.base_url(), json!({})))
        .await;
    let pid = probe["id"].as_str().unwrap().to_owned();
    f.create("/consumers", json!({"name": "probe", "proxies": [pid]}))
        .await;
    let (probe_key, _) = f.key("probe").await;
    until_served(&f, &probe_key).await;
    let (_, _, body) = call(&f.http, f.addrs()[0], Some(&probe_key), false).await;
    let t = tokens_of(&body) as usize;

    // Token limit: 5 requests' worth, less one token.
    let limit = 5 * t - 1;
    f.create(
        "/consumers",
        json!({"name": "tok", "proxies": [pid],
               "rate_limits": [{"name": "tpm", "tokens": limit, "window": "1h"}]}),
    )
    .await;
    let (key, _) = f.key("tok").await;
    until_served(&f, &key).await; // one admitted and charged per node
    let addrs = f.addrs();
    let mut admitted = 2;
    // Rounds of one concurrent request per node (one streamed), until both are refused.
    loop {
        let round = futures::future::join_all(addrs.iter().enumerate().map(|(i, node)| {
            let (http, key) = (f.http.clone(), key.clone());
            async move { call(&http, *node, Some(&key), i == 1).await.0 }
        }))
        .await;
        let ok = round.iter().filter(|s| **s == StatusCode::OK).count();
        admitted += ok;
        if ok == 0 {
            assert!(round.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
            break;
        }
        assert!(admitted <= 20, "the token limit never stopped the consumer");
        // Charges land after each answer: let them.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (5..=5 + addrs.len()).contains(&admitted),
        "{admitted} requests admitted for a limit of 5 requests' tokens (± one in flight per node)"
    );
    let (_, headers, body) = call(&f.http, addrs[0], Some(&key), false).await;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "0");

    // Budget: 3 requests' cost, less half a dollar; sequential requests → exactly 3.
    f.create(
        "/consumers",
        json!({"name": "spender", "proxies": [pid],
               "budget": {"usd": 3.0 * t as f64 - 0.5, "period": "day"}}),
    )
    .await;
    let (key, _) = f.key("spender").await;
    until_served(&f, &key).await;
    let mut spent = 2;
    let mut refused = None;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _, body) = call(&f.http, addrs[i % 2], Some(&key), i % 2 == 1).await;
        if status == StatusCode::OK {
            spent += 1;
        } else {
            refused = Some((status, body));
            break;
        }
    }
    assert_eq!(spent, 3, "the budget admits while spend is below it");
    let (status, body) = refused.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    f.shutdown().await;
}

/// Redis stopped mid-run: `open` keeps serving on local counters, `closed` answers 503; both
/// go back to the shared counters when it returns.
async fn redis_lost_and_back(store: Store) {
    let mut redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    // Share 0: every admission counts in Redis at once, so the nodes' headers show one count.
    let f = fleet_sharing(
        &store,
        &redis,
        &[FailureMode::Open, FailureMode::Closed],
        0.0,
    )
    .await;
    let p = f
        .create(
            "/proxies",
            proxy(
                &mock.base_url(),
                json!({"rate_limits": [{"name": "rph", "requests": 1000, "window": "1h"}]}),
            ),
        )
        .await;
    let pid = p["id"].as_str().unwrap();
    f.create("/consumers", json!({"name": "app", "proxies": [pid]}))
        .await;
    let (key, _) = f.key("app").await;
    until_served(&f, &key).await;
    let [open, closed] = [f.addrs()[0], f.addrs()[1]];
    let ready = |node: SocketAddr| {
        let http = f.http.clone();
        async move {
            http.get(format!("http://{node}/readyz"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert!(ready(open).await.contains("limits: redis"));

    redis.stop();
    for _ in 0..5 {
        assert_eq!(
            call(&f.http, open, Some(&key), false).await.0,
            StatusCode::OK
        );
        let (status, headers, body) = call(&f.http, closed, Some(&key), false).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "limits_unavailable");
        assert!(headers.contains_key("retry-after"));
    }
    assert!(
        ready(open).await.contains("local counters"),
        "{}",
        ready(open).await
    );
    assert!(ready(closed).await.contains("unavailable"));

    redis.restart();
    for node in [open, closed] {
        eventually(
            Duration::from_secs(10),
            "the node to use redis again",
            || async {
                let _ = call(&f.http, node, Some(&key), false).await;
                ready(node).await.contains("limits: redis")
            },
        )
        .await;
    }
    // Shared again: both nodes count on one counter.
    let (_, a, _) = call(&f.http, open, Some(&key), false).await;
    let (_, b, _) = call(&f.http, closed, Some(&key), false).await;
    let remaining = |h: &reqwest::header::HeaderMap| -> u64 {
        h["x-ratelimit-remaining-requests"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(remaining(&a), remaining(&b) + 1);
    f.shutdown().await;
}

/// The official SDKs with a consumer key (tests/python/test_consumer_keys.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_with_a_consumer_key() {
    let store = Store::sqlite();
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let gemini = MockGemini::start().await.unwrap();
    let f = fleet(&store, &redis, &[FailureMode::Open]).await;
    let p = f
        .create("/proxies", proxy(&mock.base_url(), json!({})))
        .await;
    let g = f.create("/proxies", gemini_proxy(&gemini.base_url())).await;
    f.create("/consumers", json!({"name": "app", "proxies": ["*"]}))
        .await;
    f.create(
        "/consumers",
        json!({"name": "tight", "proxies": [p["id"], g["id"]],
               "rate_limits": [{"name": "one", "requests": 1, "window": "1h"}]}),
    )
    .await;
    let (key, _) = f.key("app").await;
    let (limited, _) = f.key("tight").await;
    until_served(&f, &key).await;
    let node = f.addrs()[0];
    pytest(
        "test_consumer_keys.py",
        &[
            ("SWITCHYARD_BASE_URL", format!("http://{node}/support/v1")),
            ("SWITCHYARD_GEMINI_BASE_URL", format!("http://{node}/gem")),
            ("SWITCHYARD_CONSUMER_KEY", key),
            ("SWITCHYARD_LIMITED_KEY", limited),
        ],
    )
    .await;
    f.shutdown().await;
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Store::sqlite()).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Store::postgres().await).await })*
        }
    };
}

on_both_stores!(
    keys_errors_and_revocation,
    request_limits_are_exact_across_nodes,
    token_limits_and_budgets,
    redis_lost_and_back,
);
