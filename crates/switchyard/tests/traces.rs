//! OpenTelemetry traces end to end: `switchyard dev --otlp-endpoint` exporting to the
//! testkit's in-process OTLP receiver. The request span carries the GenAI attributes and has
//! its guard, routing and upstream children; a client's `traceparent` is continued and goes
//! upstream with the upstream span's id; admin requests and snapshot builds have spans. A
//! node whose collector is down (or never answers) serves as usual.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[expect(dead_code, reason = "each test binary uses part of it")]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::DevProcess;
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};
use switchyard_testkit::{OtlpReceiver, ReceivedSpan};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn proxy(upstream: &str) -> Value {
    json!({
        "name": "support", "gateway": "dev", "base_path": "/support",
        "regex_guard": {"patterns": [{"name": "ssn", "pattern": "\\b\\d{3}-\\d{2}-\\d{4}\\b"}]},
        "routes": [{"name": "openai", "provider": "openai", "url": upstream,
                    "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]
    })
}

/// Sends a chat request until the dev node serves the proxy (it gets the snapshot in a
/// moment); returns the status of the first answer that is not "no such proxy yet".
async fn chat(
    http: &reqwest::Client,
    dev: &DevProcess,
    traceparent: Option<&str>,
    content: &str,
) -> u16 {
    let started = Instant::now();
    loop {
        let mut req = http
            .post(format!("{}/support/v1/chat/completions", dev.gateway))
            .json(
                &json!({"model": "openai/x", "messages": [{"role": "user", "content": content}]}),
            );
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        if status != 404 && status != 503 {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dev gateway never served the proxy: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} span expected in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_admin_calls_and_snapshot_builds_are_traced() {
    let collector = OtlpReceiver::start().await.unwrap();
    let mock = MockOpenAi::start().await.unwrap();
    let endpoint = collector.endpoint();
    let dev = DevProcess::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-export-interval",
        "100ms",
    ]);
    let http = reqwest::Client::new();
    dev.call(&http, "/proxies", proxy(&mock.base_url())).await;

    // Once the node serves the proxy, one request continuing the client's trace.
    assert_eq!(chat(&http, &dev, None, "Hello").await, 200);
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let status = chat(&http, &dev, Some(&traceparent), "Hello").await;
    assert_eq!(status, 200);
    let upstream = mock.last_request().unwrap();
    let sent = upstream
        .header("traceparent")
        .expect("the upstream request carries a traceparent")
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], CLIENT_TRACE,
        "the client's trace goes on upstream"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the upstream's parent is the gateway's span"
    );
    let usage = mock.last_reported_usage().unwrap();

    let spans = collector
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().filter(|s| s.trace_id == CLIENT_TRACE).count() >= 4
                && spans
                    .iter()
                    .any(|s| s.name == "snapshot build" && s.int("proxies") == Some(1))
        })
        .await;
    let trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .cloned()
        .collect();
    let request = one(&trace, "request", |s| s.parent_span_id == CLIENT_SPAN);
    assert_eq!(request.name, "chat openai/x");
    assert_eq!(request.kind, ReceivedSpan::SERVER);
    assert_eq!(request.service, "switchyard-dev");
    assert_eq!(request.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(request.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(request.str("gen_ai.system"), Some("openai"));
    assert_eq!(request.str("gen_ai.request.model"), Some("openai/x"));
    assert_eq!(request.str("gen_ai.response.model"), Some("gpt-4.1"));
    assert_eq!(
        request.int("gen_ai.usage.input_tokens"),
        Some(i64::try_from(usage.input).unwrap())
    );
    assert_eq!(
        request.int("gen_ai.usage.output_tokens"),
        Some(i64::try_from(usage.output).unwrap())
    );
    assert!(usage.input > 0 && usage.output > 0, "{usage:?}");
    assert_eq!(request.str("proxy"), Some("support"));
    assert_eq!(request.str("route"), Some("openai"));
    assert_eq!(request.int("http.response.status_code"), Some(200));
    assert_eq!(request.status_code, 0, "a 200 is no error");
    // (`--log warn` here: the spans are exported all the same; the `request finished` log
    // line, at `info`, is not made, so it is no span event.)
    assert!(request.events.is_empty(), "{:?}", request.events);

    let child = |name: &str| one(&trace, name, |s| s.name == name);
    for name in ["guard", "routing", "upstream"] {
        let span = child(name);
        assert_eq!(
            span.parent_span_id, request.span_id,
            "{name} is a child of the request span"
        );
    }
    assert_eq!(
        child("guard").attr("switchyard.guard.blocked"),
        Some(&switchyard_testkit::AttrValue::Bool(false))
    );
    assert_eq!(child("routing").str("switchyard.decision"), Some("route"));
    assert_eq!(child("routing").str("switchyard.route"), Some("openai"));
    let up = child("upstream");
    assert_eq!(up.kind, ReceivedSpan::CLIENT);
    assert_eq!(
        up.span_id, parts[2],
        "the upstream's traceparent names the upstream span"
    );
    assert_eq!(up.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(up.str("gen_ai.request.model"), Some("gpt-4.1"));
    assert_eq!(up.int("http.response.status_code"), Some(200));

    // The control plane's side: the admin calls (server spans) and the snapshot builds.
    let admin = spans
        .iter()
        .find(|s| s.name == "POST /api/v1/proxies")
        .unwrap_or_else(|| panic!("no admin span in {spans:#?}"));
    assert_eq!(admin.kind, ReceivedSpan::SERVER);
    assert_eq!(admin.str("http.route"), Some("/api/v1/proxies"));
    assert_eq!(
        admin.int("http.response.status_code"),
        Some(201),
        "{admin:?}"
    );
    // The build after the proxy was created (dev's first one has none).
    let build = spans
        .iter()
        .find(|s| s.name == "snapshot build" && s.int("proxies") == Some(1))
        .unwrap_or_else(|| panic!("no snapshot build with the proxy in {spans:#?}"));
    assert_eq!(build.str("gateway"), Some("dev"));
    assert!(build.int("version").is_some_and(|v| v >= 1), "{build:?}");
    assert!(build.int("bytes").is_some_and(|b| b > 0), "{build:?}");

    // Without a traceparent a request starts its own trace; a blocked prompt shows in its
    // guard span.
    let status = chat(&http, &dev, None, "my ssn is 123-45-6789").await;
    assert_eq!(status, 403);
    let spans = collector
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| {
                s.name == "guard"
                    && s.attr("switchyard.guard.blocked")
                        == Some(&switchyard_testkit::AttrValue::Bool(true))
            })
        })
        .await;
    let guard = spans
        .iter()
        .find(|s| {
            s.name == "guard"
                && s.attr("switchyard.guard.blocked")
                    == Some(&switchyard_testkit::AttrValue::Bool(true))
        })
        .unwrap_or_else(|| panic!("no blocking guard span in {spans:#?}"));
    assert_ne!(guard.trace_id, CLIENT_TRACE);
    let blocked = one(&spans, "blocked request", |s| {
        s.span_id == guard.parent_span_id
    });
    assert!(blocked.parent_span_id.is_empty(), "a new trace's root");
    assert_eq!(blocked.int("http.response.status_code"), Some(403));
    assert!(
        !spans
            .iter()
            .any(|s| s.trace_id == guard.trace_id && s.name == "upstream"),
        "a blocked prompt never goes upstream"
    );
}

/// A traceparent reaches the upstream even without an exporter (the client's own context,
/// unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_clients_traceparent_is_forwarded() {
    let mock = MockOpenAi::start().await.unwrap();
    let dev = DevProcess::start(&[]);
    let http = reqwest::Client::new();
    dev.call(&http, "/proxies", proxy(&mock.base_url())).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(chat(&http, &dev, Some(&traceparent), "Hello").await, 200);
    let upstream = mock.last_request().unwrap();
    assert_eq!(upstream.header("traceparent"), Some(traceparent.as_str()));
    assert_eq!(chat(&http, &dev, None, "Hello").await, 200);
    assert_eq!(mock.last_request().unwrap().header("traceparent"), None);
}

/// A collector that refuses connections, and one that accepts them and never answers: the
/// node serves every request, and its export queue stays bounded (spans past it dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_collector_is_down_serves_normally() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = hung.accept().await {
            conns.push(conn);
        }
    });
    let mock = MockOpenAi::start().await.unwrap();
    let http = reqwest::Client::new();
    for collector in [refused, hung_addr] {
        let endpoint = format!("http://{collector}");
        let dev = DevProcess::start(&[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-export-interval",
            "50ms",
            "--otlp-timeout",
            "1s",
            "--otlp-queue-size",
            "16",
        ]);
        dev.call(&http, "/proxies", proxy(&mock.base_url())).await;
        let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
        assert_eq!(chat(&http, &dev, Some(&traceparent), "Hello").await, 200);
        let before = mock.request_count();
        let requests = 200;
        let answers = futures::future::join_all((0..requests).map(|_| {
            let http = http.clone();
            let url = format!("{}/support/v1/chat/completions", dev.gateway);
            async move {
                http.post(url)
                    .json(&json!({"model": "openai/x", "messages": [{"role": "user", "content": "Hi"}]}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        }))
        .await;
        let ok = answers.iter().filter(|a| matches!(a, Ok(200))).count();
        assert_eq!(ok, requests, "collector {collector}: {answers:?}");
        assert_eq!(mock.request_count() - before, requests);
        // Still alive and serving after the exporter has failed many times.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(chat(&http, &dev, None, "Hello").await, 200);
        let mut dev = dev;
        assert!(dev.child.try_wait().unwrap().is_none(), "the node exited");
    }
    held.abort();
}
