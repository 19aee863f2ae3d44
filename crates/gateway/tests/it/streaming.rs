//! Streaming passthrough, client cancellation and graceful shutdown.

use std::time::Duration;

use serde_json::json;
use switchyard_testkit::snapshots::{openai_route, proxy};
use switchyard_testkit::{Behavior, MOCK_API_KEY, MockOpenAi, reply_text};

use crate::common::*;

fn stream_body(model: &str) -> serde_json::Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

async fn read_to_end(resp: &mut reqwest::Response) -> Result<String, reqwest::Error> {
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await? {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    Ok(text)
}

/// The concatenated `delta.content` of a chat completion SSE stream.
fn sse_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn streams_are_relayed_chunk_by_chunk() {
    let a = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![openai_route("openai", &a.base_url(), MOCK_API_KEY)],
        None,
    )])
    .await;
    a.set_behavior(Behavior::GatedStream);
    let mut resp = post(&gw, "/p/v1/chat/completions", &stream_body("openai/gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "openai", "gpt-4o");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The first event arrives while the upstream holds back the rest: nothing is buffered.
    let first = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .expect("the first chunk never came: the gateway buffers the stream")
        .unwrap()
        .unwrap();
    let first = std::str::from_utf8(&first).unwrap();
    assert!(first.contains("chat.completion.chunk"), "{first}");
    assert!(first.contains("\"role\":\"assistant\""), "{first}");
    assert_eq!(a.streams_completed(), 0);
    a.release_streams();
    let rest = read_to_end(&mut resp).await.unwrap();
    let all = format!("{first}{rest}");
    assert!(all.ends_with("data: [DONE]\n\n"), "{all}");
    assert!(all.contains("\"finish_reason\":\"stop\""), "{all}");
    assert!(
        all.contains("\"total_tokens\""),
        "usage chunk missing: {all}"
    );
    assert_eq!(sse_text(&all), reply_text("gpt-4o"));

    // The Responses API streams its named events through untouched.
    a.set_behavior(Behavior::Normal);
    let mut resp = post(
        &gw,
        "/p/responses",
        &json!({"model": "openai/gpt-4o", "input": "Hi", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let all = read_to_end(&mut resp).await.unwrap();
    assert!(all.starts_with("event: response.created\n"), "{all}");
    assert!(all.contains("event: response.output_text.delta\n"), "{all}");
    assert!(all.contains("event: response.completed\n"), "{all}");
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_request() {
    let a = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![openai_route("openai", &a.base_url(), MOCK_API_KEY)],
        None,
    )])
    .await;
    a.set_behavior(Behavior::SlowStream {
        interval: Duration::from_millis(200),
    });
    let mut resp = post(&gw, "/p/chat/completions", &stream_body("openai/gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(resp);
    assert!(
        a.wait_until(WAIT, |m| m.streams_cancelled() == 1).await,
        "the upstream stream was not cancelled (completed: {})",
        a.streams_completed()
    );
    assert_eq!(a.streams_completed(), 0);

    // A client that gives up before the upstream's headers cancels the upstream request
    // too (well before the gateway's own header timeout would).
    a.set_behavior(Behavior::DelayHeaders(HEADER_TIMEOUT * 3));
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(url(&gw, "/p/chat/completions"))
        .json(&stream_body("openai/gpt-4o"))
        .send()
        .await;
    assert!(result.is_err());
    assert!(
        a.wait_until(HEADER_TIMEOUT / 2, |m| m.requests_aborted() == 1)
            .await,
        "the upstream request outlived its client"
    );
}

#[tokio::test]
async fn a_broken_upstream_stream_breaks_the_client_stream() {
    let a = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![openai_route("openai", &a.base_url(), MOCK_API_KEY)],
        None,
    )])
    .await;
    // A connection that breaks mid-stream ends the client's stream with an error event in
    // the OpenAI shape (what the SDKs raise on), never a hang and never a `[DONE]`.
    a.set_behavior(Behavior::TruncatedStream);
    let mut resp = post(&gw, "/p/chat/completions", &stream_body("openai/m")).await;
    assert_eq!(resp.status(), 200);
    let all = tokio::time::timeout(WAIT, read_to_end(&mut resp))
        .await
        .expect("the client stream hangs")
        .unwrap();
    assert!(!all.contains("[DONE]"), "{all}");
    let last = all.trim_end().lines().last().unwrap();
    let event: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["code"], "upstream_stream_error", "{all}");
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke off"),
        "{all}"
    );
    assert_eq!(a.request_count(), 1);

    // A garbled event ends it the same way; what came before it was relayed.
    a.set_behavior(Behavior::GarbledStream);
    let mut resp = post(&gw, "/p/chat/completions", &stream_body("openai/m")).await;
    let all = read_to_end(&mut resp).await.unwrap();
    assert!(all.contains("\"role\":\"assistant\""), "{all}");
    assert!(!all.contains("chatcmpl-broken"), "{all}");
    assert!(!all.contains("[DONE]"), "{all}");
    assert!(all.contains("malformed stream"), "{all}");
}

#[tokio::test]
async fn graceful_shutdown_lets_an_open_stream_finish() {
    let a = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![openai_route("openai", &a.base_url(), MOCK_API_KEY)],
        None,
    )])
    .await;
    a.set_behavior(Behavior::SlowStream {
        interval: Duration::from_millis(100),
    });
    let addr = gw.local_addr();
    let mut resp = post(&gw, "/p/chat/completions", &stream_body("openai/gpt-4o")).await;
    let first = resp.chunk().await.unwrap().unwrap();
    let shutdown = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // No new connections while draining.
    let refused = client().get(format!("http://{addr}/healthz")).send().await;
    assert!(refused.is_err(), "accepted a connection while draining");
    let rest = read_to_end(&mut resp).await.unwrap();
    let all = format!("{}{rest}", std::str::from_utf8(&first).unwrap());
    assert!(all.ends_with("data: [DONE]\n\n"), "{all}");
    assert_eq!(sse_text(&all), reply_text("gpt-4o"));
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!(a.streams_completed(), 1);
}

#[tokio::test]
async fn drain_is_bounded_by_the_drain_timeout() {
    let a = MockOpenAi::start().await.unwrap();
    let cp = switchyard_testkit::FakeControlPlane::start().await.unwrap();
    cp.push(switchyard_testkit::snapshots::snapshot(
        GW,
        1,
        vec![proxy(
            "p",
            "/p",
            vec![openai_route("openai", &a.base_url(), MOCK_API_KEY)],
            None,
        )],
    ))
    .await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = config(&cp.url(), cache.path());
    config.drain_timeout = Duration::from_millis(300);
    let gw = switchyard_gateway::Gateway::start_with(config, tuning())
        .await
        .unwrap();
    assert!(cp.wait_for_ack(1, WAIT).await.unwrap().applied);
    a.set_behavior(Behavior::GatedStream);
    let mut resp = post(&gw, "/p/chat/completions", &stream_body("openai/m")).await;
    let _ = resp.chunk().await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .expect("shutdown waited past the drain timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(read_to_end(&mut resp).await.is_err());
}
