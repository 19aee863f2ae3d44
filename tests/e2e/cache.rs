//! The response cache end to end: a real control plane, two gateway nodes sharing one Redis
//! (a private `redis-server` per test), the mock providers, over real HTTP and gRPC.
//!
//! An answer stored through one node is a hit on the other, streamed and not, in both
//! directions, with tool calls, across the chat and Responses formats; streams replayed in
//! chunks; `Cache-Control`; TTL expiry; errors and cut streams never stored; consumers never
//! see each other's answers; request limits count hits; Redis down → served, not an error.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_e2e::{Plane, Store, eventually, fast_sync, node_config};
use switchyard_gateway::{Gateway, LimitsConfig};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};
use switchyard_testkit::redis::{RedisServer, unique_prefix};
use switchyard_testkit::script::{TOOL_ARGUMENTS, reply_text};
use switchyard_testkit::server::Behavior;

struct Fleet {
    plane: Plane,
    nodes: Vec<Gateway>,
    _dirs: Vec<tempfile::TempDir>,
    http: reqwest::Client,
}

/// One Prometheus recorder per test process (nextest runs each test in its own).
fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
        .clone()
}

fn model_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SWITCHYARD_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}: run scripts/fetch-model",
        dir.display()
    );
    dir
}

async fn fleet(store: &Store, redis: &RedisServer, nodes: usize) -> Fleet {
    fleet_with(store, redis, nodes, false).await
}

async fn fleet_with(store: &Store, redis: &RedisServer, nodes: usize, encoder: bool) -> Fleet {
    metrics();
    let plane = Plane::start(store).await;
    let token = plane.create_gateway("prod-eu").await;
    let prefix = unique_prefix();
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..nodes {
        let dir = tempfile::tempdir().unwrap();
        let mut config = node_config(&plane.grpc_url(), "prod-eu", &token, dir.path());
        config.counters = LimitsConfig {
            redis_url: Some(redis.url()),
            key_prefix: prefix.clone(),
            timeout: Duration::from_millis(250),
            ..LimitsConfig::default()
        };
        if encoder {
            config.model_dir = Some(model_dir());
        }
        out.push(Gateway::start_with(config, fast_sync()).await.unwrap());
        dirs.push(dir);
    }
    Fleet {
        plane,
        nodes: out,
        _dirs: dirs,
        http: reqwest::Client::new(),
    }
}

impl Fleet {
    fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i].local_addr()
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let (status, created) = self.plane.admin().post(path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    async fn key(&self, consumer: &str) -> String {
        let (status, key) = self
            .plane
            .admin()
            .post(&format!("/consumers/{consumer}/keys"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        key["key"].as_str().unwrap().to_owned()
    }

    async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
        let mut plane = self.plane;
        plane.stop().await;
    }
}

fn proxy(upstream: &str, cache: Value, extra: Value) -> Value {
    let mut p = json!({
        "name": "support", "gateway": "prod-eu", "base_path": "/support",
        "cache": cache,
        "routes": [{"name": "openai", "provider": "openai", "url": upstream,
                    "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// One answer: status, headers, and the body (JSON, or the SSE text of a stream).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    sse: String,
}

impl Answer {
    fn cache(&self) -> &str {
        self.headers
            .get("x-switchyard-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `data:` payloads of a stream, parsed (`[DONE]` left out).
    fn events(&self) -> Vec<Value> {
        self.sse
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    /// A chat stream's text deltas, in order.
    fn chat_deltas(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
}

async fn send(
    http: &reqwest::Client,
    url: String,
    body: &Value,
    stream: bool,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http.post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    if stream && status == StatusCode::OK {
        let sse = resp.text().await.unwrap();
        Answer {
            status,
            headers,
            json: Value::Null,
            sse,
        }
    } else {
        Answer {
            status,
            headers,
            json: resp.json().await.unwrap_or(Value::Null),
            sse: String::new(),
        }
    }
}

fn chat_body(prompt: &str, stream: bool, tools: bool) -> Value {
    let mut body = json!({"model": "openai/gpt-4.1", "stream": stream,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": prompt}]});
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    }
    body
}

async fn chat(f: &Fleet, node: usize, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let stream = body["stream"].as_bool().unwrap_or(false);
    send(
        &f.http,
        format!("http://{}/support/v1/chat/completions", f.node(node)),
        body,
        stream,
        headers,
    )
    .await
}

/// How many entries Redis holds (`KEYS *:cache:*`, the semantic index stream left out).
fn redis_entries(redis: &RedisServer) -> usize {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    conn.write_all(b"*2\r\n$4\r\nKEYS\r\n$9\r\n*:cache:*\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // An array reply: `*N`, then N bulk strings; read until all N arrived.
    loop {
        let n = conn.read(&mut buf).unwrap();
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some(head) = text.lines().next() else {
            continue;
        };
        let count: usize = head.trim_start_matches('*').parse().unwrap_or(0);
        let keys: Vec<&str> = text
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with('$'))
            .collect();
        if keys.len() >= count && text.ends_with("\r\n") {
            return keys.iter().filter(|k| !k.ends_with(":cache:index")).count();
        }
    }
}

/// Waits until Redis holds `n` entries (a store to Redis is not awaited by its request).
async fn until_stored(redis: &RedisServer, n: usize) {
    eventually(Duration::from_secs(5), "the entries in Redis", || async {
        redis_entries(redis) >= n
    })
    .await;
}

async fn until_served(f: &Fleet, path: &str, headers: &[(&str, &str)]) {
    for node in 0..f.nodes.len() {
        eventually(Duration::from_secs(5), "the proxy to be served", || async {
            let body = json!({"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "warm-up"}]});
            let a = send(
                &f.http,
                format!("http://{}{path}/v1/chat/completions", f.node(node)),
                &body,
                false,
                headers,
            )
            .await;
            a.status == StatusCode::OK
        })
        .await;
    }
}

async fn exact_hits_across_nodes_formats_and_streams(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, 2).await;
    f.create(
        "/proxies",
        proxy(
            &mock.base_url(),
            json!({"exact": {"ttl": "10m"}}),
            json!({}),
        ),
    )
    .await;
    until_served(&f, "/support", &[]).await;

    // A JSON answer with a tool call, stored through node 0 …
    let body = chat_body("What is the weather in Paris?", false, true);
    let before = mock.request_count();
    let stored = redis_entries(&redis);
    let miss = chat(&f, 0, &body, &[]).await;
    assert_eq!(miss.status, StatusCode::OK, "{}", miss.json);
    assert_eq!(miss.cache(), "miss");
    let call = &miss.json["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], TOOL_ARGUMENTS);
    assert_eq!(mock.request_count(), before + 1);

    // … is a hit on node 1 (through Redis), the same answer with a fresh id …
    until_stored(&redis, stored + 1).await;
    let hit = chat(&f, 1, &body, &[]).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(
        hit.json["choices"][0]["message"]["tool_calls"],
        miss.json["choices"][0]["message"]["tool_calls"]
    );
    assert_eq!(hit.json["choices"][0]["finish_reason"], "tool_calls");
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(
            hit.json["usage"][field], miss.json["usage"][field],
            "{field}"
        );
    }
    assert_eq!(
        hit.json["usage"]["prompt_tokens_details"]["cached_tokens"],
        miss.json["usage"]["prompt_tokens_details"]["cached_tokens"]
    );
    assert_ne!(hit.json["id"], miss.json["id"]);
    assert_eq!(hit.headers["x-switchyard-route"], "openai");
    assert_eq!(hit.headers["x-switchyard-model"], "gpt-4.1");

    // … and for a streaming client: a stream of chunks carrying the call and the usage.
    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    streamed["stream_options"] = json!({"include_usage": true});
    let hit = chat(&f, 0, &streamed, &[]).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.cache(), "hit");
    assert!(hit.sse.ends_with("data: [DONE]\n\n"), "{}", hit.sse);
    let events = hit.events();
    assert!(events.len() >= 3, "{}", hit.sse);
    let args: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, TOOL_ARGUMENTS);
    assert!(
        events
            .iter()
            .any(|e| e["usage"]["total_tokens"].as_u64().is_some())
    );

    // A Responses client asking the same: a hit, as a Responses object.
    let responses = json!({"model": "openai/gpt-4.1", "instructions": "Be brief.",
        "input": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "name": "get_weather", "description": "The weather in a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]});
    let hit = send(
        &f.http,
        format!("http://{}/support/v1/responses", f.node(1)),
        &responses,
        false,
        &[],
    )
    .await;
    assert_eq!(hit.status, StatusCode::OK, "{}", hit.json);
    assert_eq!(hit.cache(), "hit", "{}", hit.json);
    let call = hit.json["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .unwrap();
    assert_eq!(call["arguments"], TOOL_ARGUMENTS);
    assert_eq!(
        mock.request_count(),
        before + 1,
        "every hit was served without the upstream"
    );

    // The other direction: a stream stored through node 1 …
    let streamed = chat_body("Tell me a story.", true, false);
    let miss = chat(&f, 1, &streamed, &[]).await;
    assert_eq!(miss.cache(), "miss");
    let original = miss.chat_deltas();
    assert!(
        original.len() > 1,
        "the mock streams in pieces: {}",
        miss.sse
    );
    // … replayed in the same chunks to a streaming client on node 0 …
    until_stored(&redis, stored + 2).await;
    let hit = chat(&f, 0, &streamed, &[]).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(
        hit.chat_deltas(),
        original,
        "replayed chunk by chunk, as it came"
    );
    // … and whole to a JSON client.
    let mut json_body = streamed.clone();
    json_body["stream"] = false.into();
    let hit = chat(&f, 0, &json_body, &[]).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(
        hit.json["choices"][0]["message"]["content"],
        original.concat()
    );
    assert_eq!(original.concat(), reply_text("gpt-4.1"));

    // Anything that can change the answer is another key: the system prompt, a parameter.
    let mut other = json_body.clone();
    other["messages"][0]["content"] = "Be long.".into();
    assert_eq!(chat(&f, 0, &other, &[]).await.cache(), "miss");
    let mut other = json_body.clone();
    other["temperature"] = 0.3.into();
    assert_eq!(chat(&f, 0, &other, &[]).await.cache(), "miss");

    // Cache-Control: no-cache skips the lookup (and stores); no-store bypasses both.
    let count = mock.request_count();
    let a = chat(&f, 0, &json_body, &[("cache-control", "no-cache")]).await;
    assert_eq!((a.status, a.cache()), (StatusCode::OK, "miss"));
    assert_eq!(mock.request_count(), count + 1);
    let fresh = chat_body("Never stored", false, false);
    let a = chat(&f, 0, &fresh, &[("cache-control", "no-store")]).await;
    assert_eq!((a.status, a.cache()), (StatusCode::OK, "miss"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        chat(&f, 0, &fresh, &[]).await.cache(),
        "miss",
        "no-store stored nothing"
    );

    // Metrics: hits, misses, stores, tokens saved.
    let metrics = metrics().render();
    for line in [
        "switchyard_gateway_cache_lookups_total{proxy=\"support\",result=\"hit\"}",
        "switchyard_gateway_cache_lookups_total{proxy=\"support\",result=\"miss\"}",
        "switchyard_gateway_cache_stores_total{proxy=\"support\"}",
        "switchyard_gateway_cache_tokens_saved_total{proxy=\"support\",type=\"output\"}",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    f.shutdown().await;
}

async fn failures_are_never_stored_and_ttl_expires(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, 1).await;
    f.create(
        "/proxies",
        proxy(&mock.base_url(), json!({"exact": {"ttl": "2s"}}), json!({})),
    )
    .await;
    until_served(&f, "/support", &[]).await;

    // An upstream error, a cut stream, an error event inside a stream: never stored.
    let body = chat_body("fragile", false, false);
    mock.set_behavior(Behavior::Reject {
        status: 400,
        code: "bad".into(),
        message: "no".into(),
    });
    assert_eq!(
        chat(&f, 0, &body, &[]).await.status,
        StatusCode::BAD_REQUEST
    );
    let streamed = chat_body("fragile", true, false);
    for behavior in [
        Behavior::TruncatedStream,
        Behavior::StreamError,
        Behavior::GarbledStream,
    ] {
        mock.set_behavior(behavior.clone());
        let a = chat(&f, 0, &streamed, &[]).await;
        assert_eq!(a.cache(), "miss", "{behavior:?}");
        assert!(!a.sse.contains("[DONE]"), "{behavior:?}: {}", a.sse);
    }
    mock.set_behavior(Behavior::Normal);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let count = mock.request_count();
    let a = chat(&f, 0, &body, &[]).await;
    assert_eq!((a.status, a.cache()), (StatusCode::OK, "miss"));
    assert_eq!(mock.request_count(), count + 1);

    // Stored now; gone after its TTL (from memory and from Redis).
    assert_eq!(chat(&f, 0, &body, &[]).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(chat(&f, 0, &body, &[]).await.cache(), "miss");
    f.shutdown().await;
}

async fn consumers_never_share_and_limits_count_hits(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, 2).await;
    let p = f
        .create(
            "/proxies",
            proxy(
                &mock.base_url(),
                json!({"exact": {"ttl": "10m"}}),
                json!({"client_auth": {"required": true}}),
            ),
        )
        .await;
    let pid = p["id"].as_str().unwrap();
    f.create(
        "/consumers",
        json!({"name": "team-a", "proxies": [pid],
               "rate_limits": [{"name": "r", "requests": 4, "window": "1m"}]}),
    )
    .await;
    f.create("/consumers", json!({"name": "team-b", "proxies": [pid]}))
        .await;
    let a = f.key("team-a").await;
    let b = f.key("team-b").await;
    let auth_a = format!("Bearer {a}");
    let auth_b = format!("Bearer {b}");
    until_served(&f, "/support", &[("authorization", &auth_b)]).await;

    let body = chat_body("What is my account balance?", false, false);
    let stored = redis_entries(&redis);
    let first = chat(&f, 0, &body, &[("authorization", &auth_a)]).await;
    assert_eq!((first.status, first.cache()), (StatusCode::OK, "miss"));
    until_stored(&redis, stored + 1).await;
    // team-b, on either node, does not see team-a's answer; team-a does, on the other node.
    let b_first = chat(&f, 1, &body, &[("authorization", &auth_b)]).await;
    assert_eq!((b_first.status, b_first.cache()), (StatusCode::OK, "miss"));
    assert_eq!(
        chat(&f, 1, &body, &[("authorization", &auth_a)])
            .await
            .cache(),
        "hit"
    );
    // team-b's own answer is stored now: each sees only its own.
    until_stored(&redis, stored + 2).await;
    assert_eq!(
        chat(&f, 0, &body, &[("authorization", &auth_b)])
            .await
            .cache(),
        "hit"
    );
    // team-a's request limit (4 a minute) counts hits: 3 used so far at most.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            chat(&f, 0, &body, &[("authorization", &auth_a)])
                .await
                .status,
        );
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "hits count against request limits: {statuses:?}"
    );
    f.shutdown().await;
}

async fn redis_down_skips_the_cache(store: Store) {
    let mut redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, 2).await;
    f.create(
        "/proxies",
        proxy(
            &mock.base_url(),
            json!({"exact": {"ttl": "10m"}}),
            json!({}),
        ),
    )
    .await;
    until_served(&f, "/support", &[]).await;
    redis.stop();

    // Served, not an error: node 0 keeps its own entries; node 1 cannot see them.
    let body = chat_body("Is Redis there?", false, false);
    let a = chat(&f, 0, &body, &[]).await;
    assert_eq!((a.status, a.cache()), (StatusCode::OK, "miss"));
    let a = chat(&f, 0, &body, &[]).await;
    assert_eq!(
        (a.status, a.cache()),
        (StatusCode::OK, "hit"),
        "the node's memory"
    );
    let a = chat(&f, 1, &body, &[]).await;
    assert_eq!((a.status, a.cache()), (StatusCode::OK, "miss"));
    let streamed = chat_body("Is Redis there?", true, false);
    let a = chat(&f, 1, &streamed, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.sse.ends_with("data: [DONE]\n\n"));

    // Back: shared again (each try a new prompt, stored through node 0, a hit on node 1).
    redis.restart();
    let mut attempt = 0;
    eventually(
        Duration::from_secs(10),
        "a shared hit after redis came back",
        || {
            attempt += 1;
            let body = chat_body(&format!("Redis is back ({attempt})"), false, false);
            let f = &f;
            let redis = &redis;
            async move {
                let before = redis_entries(redis);
                assert_eq!(chat(f, 0, &body, &[]).await.cache(), "miss");
                tokio::time::sleep(Duration::from_millis(100)).await;
                redis_entries(redis) > before && chat(f, 1, &body, &[]).await.cache() == "hit"
            }
        },
    )
    .await;
    f.shutdown().await;
}

/// A question alone (no system prompt), as the dry run asks it.
fn question(prompt: &str, stream: bool) -> Value {
    json!({"model": "openai/gpt-4.1", "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

/// The dry run's semantic cache report for `prompt` on `node`.
async fn dry_run(f: &Fleet, node: usize, prompt: &str) -> Value {
    let a = send(
        &f.http,
        format!("http://{}/support/_switchyard/route", f.node(node)),
        &json!({"prompt": prompt, "model": "openai/gpt-4.1"}),
        false,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    a.json["cache"]["semantic"].clone()
}

async fn semantic_hits_across_nodes(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet_with(&store, &redis, 2, true).await;
    let threshold = 0.8;
    f.create(
        "/proxies",
        proxy(
            &mock.base_url(),
            json!({"semantic": {"threshold": threshold, "ttl": "10m"}}),
            json!({}),
        ),
    )
    .await;
    until_served(&f, "/support", &[]).await;

    // Nothing stored yet: the dry run says so.
    let asked = "How do I reset my password?";
    let report = dry_run(&f, 1, asked).await;
    assert_eq!(report["hit"], false, "{report}");

    // Stored through node 0 …
    let miss = chat(&f, 0, &question(asked, false), &[]).await;
    assert_eq!((miss.status, miss.cache()), (StatusCode::OK, "miss"));
    let count = mock.request_count();

    // … a paraphrase on node 1 (its index fed from Redis) is a semantic hit, with its
    // similarity; the dry run reports the same similarity.
    let paraphrase = "How can I reset my password?";
    eventually(
        Duration::from_secs(5),
        "the entry in node 1's index",
        || async { dry_run(&f, 1, paraphrase).await["hit"] == true },
    )
    .await;
    let report = dry_run(&f, 1, paraphrase).await;
    let hit = chat(&f, 1, &question(paraphrase, false), &[]).await;
    assert_eq!(hit.cache(), "semantic-hit", "{}", hit.json);
    let similarity: f64 = hit.headers["x-switchyard-cache-similarity"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(similarity >= threshold && similarity < 1.0, "{similarity}");
    eprintln!("{paraphrase:?} after {asked:?}: similarity {similarity}");
    assert!(
        (report["similarity"].as_f64().unwrap() - similarity).abs() < 1e-3,
        "{report}"
    );
    assert_eq!(
        hit.json["choices"][0]["message"]["content"],
        miss.json["choices"][0]["message"]["content"]
    );
    // Streamed too.
    let hit = chat(&f, 0, &question(paraphrase, true), &[]).await;
    assert_eq!(hit.cache(), "semantic-hit");
    assert!(hit.sse.ends_with("data: [DONE]\n\n"), "{}", hit.sse);
    assert_eq!(hit.chat_deltas().concat(), reply_text("gpt-4.1"));
    assert_eq!(
        mock.request_count(),
        count,
        "hits never reached the upstream"
    );

    // Below the threshold, another question, or anything else different: a miss. Each
    // outcome agrees with the dry run's similarity.
    for prompt in [
        "I forgot my password and cannot log in, what should I do?",
        "What is the capital of France?",
        "Reset password",
    ] {
        let report = dry_run(&f, 0, prompt).await;
        eprintln!("{prompt:?}: {report}");
        let expected = if report["similarity"]
            .as_f64()
            .is_some_and(|s| s >= threshold)
        {
            "semantic-hit"
        } else {
            "miss"
        };
        let a = chat(&f, 0, &question(prompt, false), &[]).await;
        assert_eq!(a.cache(), expected, "{prompt}: {report}");
    }
    assert_eq!(
        dry_run(&f, 0, "What is the capital of France?").await["hit"],
        true,
        "stored by the miss above"
    );
    // A different system prompt is never compared, however similar the question.
    let other = chat(&f, 0, &chat_body(paraphrase, false, false), &[]).await;
    assert_eq!(other.cache(), "miss");
    let metrics = metrics().render();
    assert!(
        metrics.contains(
            "switchyard_gateway_cache_lookups_total{proxy=\"support\",result=\"semantic_hit\"}"
        ),
        "{metrics}"
    );
    f.shutdown().await;
}

/// An Anthropic Messages client on an OpenAI route (translated both ways): a streamed answer
/// with a tool call is stored, then served whole as a Messages JSON answer with the same
/// tool call, and streamed again as Messages events.
async fn anthropic_clients_and_tool_call_streams(store: Store) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await.unwrap();
    let f = fleet(&store, &redis, 2).await;
    let mut p = proxy(
        &mock.base_url(),
        json!({"exact": {"ttl": "10m"}}),
        json!({}),
    );
    p["name"] = "claude".into();
    p["base_path"] = "/claude".into();
    p["format"] = "anthropic".into();
    f.create("/proxies", p).await;
    let body = |stream: bool| {
        json!({"model": "openai/gpt-4.1", "max_tokens": 64, "stream": stream,
               "system": "Be brief.",
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [{"name": "get_weather", "description": "The weather in a city",
                          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]})
    };
    let url = |node: usize| format!("http://{}/claude/v1/messages", f.node(node));
    let headers = [("anthropic-version", "2023-06-01")];
    eventually(Duration::from_secs(5), "the proxy to be served", || async {
        let probe = json!({"model": "openai/gpt-4.1", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "warm-up"}]});
        let mut ok = true;
        for node in 0..2 {
            ok &= send(&f.http, url(node), &probe, false, &headers)
                .await
                .status
                == StatusCode::OK;
        }
        ok
    })
    .await;

    let stored = redis_entries(&redis);
    let count = mock.request_count();
    let miss = send(&f.http, url(0), &body(true), true, &headers).await;
    assert_eq!(
        (miss.status, miss.cache()),
        (StatusCode::OK, "miss"),
        "{}",
        miss.sse
    );
    assert!(miss.sse.contains("tool_use"), "{}", miss.sse);
    assert!(miss.sse.contains("event: message_stop"), "{}", miss.sse);
    until_stored(&redis, stored + 1).await;

    let hit = send(&f.http, url(1), &body(false), false, &headers).await;
    assert_eq!(
        (hit.status, hit.cache()),
        (StatusCode::OK, "hit"),
        "{}",
        hit.json
    );
    let call = hit.json["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "tool_use")
        .unwrap();
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        call["input"],
        serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap()
    );
    assert_eq!(hit.json["stop_reason"], "tool_use");

    let again = send(&f.http, url(0), &body(true), true, &headers).await;
    assert_eq!(again.cache(), "hit");
    let events = again.sse.matches("event: ").count();
    assert!(
        events >= 5,
        "a stream of events, not one lump: {}",
        again.sse
    );
    assert!(again.sse.contains("input_json_delta"), "{}", again.sse);
    assert!(again.sse.contains("event: message_stop"), "{}", again.sse);
    assert_eq!(
        mock.request_count(),
        count + 1,
        "one upstream call for three answers"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_tool_streams() {
    anthropic_clients_and_tool_call_streams(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_hits() {
    semantic_hits_across_nodes(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_hits() {
    exact_hits_across_nodes_formats_and_streams(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_ttl() {
    failures_are_never_stored_and_ttl_expires(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_scope() {
    consumers_never_share_and_limits_count_hits(Store::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down() {
    redis_down_skips_the_cache(Store::sqlite()).await;
}
