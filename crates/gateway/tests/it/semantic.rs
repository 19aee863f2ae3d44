//! Semantic routing, the prompt guards and the dry run over real HTTP, with the real MiniLM
//! encoder (loaded once per test binary; `scripts/fetch-model` puts it in `<repo>/models`),
//! and a remote embeddings service (mock).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use switchyard_gateway::{Encoder, EncoderKind, Gateway, load_encoder};
use switchyard_model::{
    PromptGuard, Proxy, RegexGuard, RegexPattern, RoutingStrategy, SemanticService, Topic,
    TopicSource,
};
use switchyard_testkit::snapshots::{
    openai_route, proxy, snapshot, snapshot_with_services, with_target,
};
use switchyard_testkit::{FakeControlPlane, MOCK_API_KEY, MockEmbeddings, MockOpenAi};

use crate::common::*;

fn shared_encoder() -> Arc<dyn Encoder> {
    static ENCODER: OnceLock<Arc<dyn Encoder>> = OnceLock::new();
    Arc::clone(ENCODER.get_or_init(|| {
        let dir = std::env::var_os("SWITCHYARD_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
            });
        load_encoder(&dir, EncoderKind::MiniLm).unwrap_or_else(|e| {
            panic!("{e}: run scripts/fetch-model (or set SWITCHYARD_MODEL_DIR)")
        })
    }))
}

fn topic(name: &str, utterances: &[&str]) -> TopicSource {
    Topic {
        name: name.into(),
        utterances: utterances.iter().map(|u| (*u).to_owned()).collect(),
    }
    .into()
}

fn semantic_proxy(billing_url: &str, code_url: &str) -> Proxy {
    let mut billing = with_target(
        openai_route("billing", billing_url, MOCK_API_KEY),
        "m-billing",
    );
    billing.topics = vec![topic(
        "payments",
        &[
            "How do I pay my invoice?",
            "I was charged twice on my credit card",
            "Can I get a refund for my subscription?",
        ],
    )];
    let mut code = with_target(openai_route("code", code_url, MOCK_API_KEY), "m-code");
    code.topics = vec![topic(
        "programming",
        &[
            "Write a Python function that sorts a list",
            "Why does my Rust code not compile?",
            "How do I reverse a linked list?",
        ],
    )];
    let general = with_target(
        openai_route("general", billing_url, MOCK_API_KEY),
        "m-general",
    );
    let mut p = proxy(
        "s",
        "/s",
        vec![billing, code, general],
        Some(("general", None)),
    );
    p.spec.routing.strategy = RoutingStrategy::Semantic;
    p.spec.routing.threshold = Some(0.3);
    p.spec.prompt_guard = Some(PromptGuard {
        threshold: 0.6,
        deny_topics: vec![topic("weapons", &["How do I build a bomb?"])],
        scope: switchyard_model::GuardScope::LastUser,
    });
    p.spec.regex_guard = Some(RegexGuard {
        patterns: vec![RegexPattern {
            name: "ssn".into(),
            pattern: r"\b\d{3}-\d{2}-\d{4}\b".into(),
        }],
        scope: switchyard_model::GuardScope::All,
    });
    p
}

async fn node_with_encoder(proxies: Vec<Proxy>) -> (FakeControlPlane, Gateway, tempfile::TempDir) {
    let cp = FakeControlPlane::start().await.unwrap();
    cp.push(snapshot(GW, 1, proxies)).await;
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(&cp.url(), cache.path());
    cfg.encoder = Some(shared_encoder());
    let gw = Gateway::start_with(cfg, tuning()).await.unwrap();
    let ack = cp.wait_for_ack(1, WAIT).await.expect("no ack");
    assert!(ack.applied, "{ack:?}");
    (cp, gw, cache)
}

fn ask(prompt: &str) -> Value {
    // The model is ignored by semantic routing.
    json!({"model": "code/ignored", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": prompt}
    ]})
}

#[tokio::test]
async fn semantic_routing_guards_and_dry_run_over_http() {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) =
        node_with_encoder(vec![semantic_proxy(&a.base_url(), &b.base_url())]).await;

    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("you billed me two times, I want a refund"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "billing", "m-billing");
    assert_eq!(
        a.last_request().unwrap().model().as_deref(),
        Some("m-billing")
    );

    // The Responses API, and the scores debug header.
    let resp = crate::common::client()
        .post(url(&gw, "/s/v1/responses"))
        .header("x-switchyard-debug", "scores")
        .json(
            &json!({"model": "x", "input": "write a Python function that reverses a linked list"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "code", "m-code");
    let scores = resp.headers()["x-switchyard-scores"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(scores.contains("routes=programming:"), "{scores}");
    assert_eq!(b.request_count(), 1);

    // Out of scope: the fallback route.
    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("what is a good banana bread recipe"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "general", "m-general");

    // The semantic guard: 403 with the matched topics, nothing sent upstream.
    let before = a.request_count() + b.request_count();
    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("how can I make a bomb at home"),
    )
    .await;
    assert_stamped(&resp, "none", "none");
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 403);
    assert_eq!(err["type"], "prompt_blocked");
    assert_eq!(err["matched_topics"], json!(["weapons"]));
    // The regex guard.
    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("my ssn is 123-45-6789, update my invoice"),
    )
    .await;
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 403);
    assert_eq!(err["type"], "prompt_blocked");
    assert_eq!(err["matched_patterns"], json!(["ssn"]));
    assert_eq!(a.request_count() + b.request_count(), before);

    // The dry run: where would it go, and why.
    let resp = post(
        &gw,
        "/s/_switchyard/route",
        &json!({"prompt": "please refund my double charge"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["blocked"], false, "{report}");
    assert_eq!(report["routing"]["route"], "billing", "{report}");
    assert_eq!(report["routing"]["model"], "m-billing");
    assert_eq!(report["routing"]["scores"][0]["topic"], "payments");
    assert_eq!(report["routing"]["scores"][0]["route"], "billing");
    assert!(report["guard"]["scores"][0]["score"].as_f64().unwrap() < 0.6);
    assert!(report["reason"].as_str().unwrap().contains("payments"));
    let report: Value = post(
        &gw,
        "/s/_switchyard/route",
        &json!({"prompt": "how to build a bomb"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(report["blocked"], true, "{report}");
    assert_eq!(report["matched_topics"], json!(["weapons"]));
    let resp = post(&gw, "/s/_switchyard/route", &json!({"text": "x"})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(a.request_count() + b.request_count(), before);
}

#[tokio::test]
async fn the_guard_applies_to_model_routed_proxies() {
    let a = MockOpenAi::start().await.unwrap();
    let mut p = proxy(
        "m",
        "/m",
        vec![openai_route("main", &a.base_url(), MOCK_API_KEY)],
        None,
    );
    p.spec.prompt_guard = Some(PromptGuard {
        threshold: 0.6,
        deny_topics: vec![topic("weapons", &["How do I build a bomb?"])],
        scope: switchyard_model::GuardScope::LastUser,
    });
    let (_cp, gw, _cache) = node_with_encoder(vec![p]).await;
    let mut body = ask("give me steps to build a bomb");
    body["model"] = json!("main/gpt-4o");
    let (status, err) = error_of(post(&gw, "/m/chat/completions", &body).await).await;
    assert_eq!(
        (status, err["type"].as_str()),
        (403, Some("prompt_blocked"))
    );
    body = ask("what is the capital of France");
    body["model"] = json!("main/gpt-4o");
    let resp = post(&gw, "/m/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "main", "gpt-4o");
}

#[tokio::test]
async fn a_node_without_a_model_reports_semantic_proxies_and_applies_the_rest() {
    let a = MockOpenAi::start().await.unwrap();
    let model_routed = proxy(
        "p",
        "/p",
        vec![openai_route("main", &a.base_url(), MOCK_API_KEY)],
        None,
    );
    let (cp, gw, _cache) = serving(vec![model_routed.clone()]).await;

    cp.push(snapshot(
        GW,
        2,
        vec![model_routed, semantic_proxy(&a.base_url(), &a.base_url())],
    ))
    .await;
    let ack = cp.wait_for_ack(2, WAIT).await.expect("no answer");
    assert!(ack.applied, "{ack:?}");
    assert_eq!(ack.proxy_failures.len(), 1, "{ack:?}");
    let failure = &ack.proxy_failures[0];
    assert!(
        failure.proxy_name == "s" && failure.error.contains("--model-dir"),
        "{failure:?}"
    );
    assert_eq!(failure.served_version, 0, "no earlier version to keep");
    assert_eq!(gw.applied_version(), Some(2));
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main/gpt-4o"))).await;
    assert_eq!(resp.status(), 200);
    let resp = post(&gw, "/s/chat/completions", &chat(None)).await;
    assert_eq!(resp.status(), 404);
}

fn embedding_service(name: &str, mock: &MockEmbeddings, key: &str) -> SemanticService {
    SemanticService {
        name: name.into(),
        url: mock.base_url(),
        model: "emb-model".into(),
        api_key: Some(switchyard_model::Secret::new(key)),
    }
}

/// A node started on a fake control plane that pushes `first` as version 1.
async fn serving_snapshot(
    first: switchyard_proto::v1::Snapshot,
) -> (FakeControlPlane, Gateway, tempfile::TempDir) {
    let cp = FakeControlPlane::start().await.unwrap();
    cp.push(first).await;
    let cache = tempfile::tempdir().unwrap();
    let gw = start_node_in(&cp.url(), cache.path()).await;
    let ack = cp.wait_for_ack(1, WAIT).await.expect("no ack");
    assert!(ack.applied, "{ack:?}");
    (cp, gw, cache)
}

#[tokio::test]
async fn a_remote_semantic_service_replaces_the_encoder() {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let emb = MockEmbeddings::start("sk-emb", "emb-model").await.unwrap();
    let mut p = semantic_proxy(&a.base_url(), &b.base_url());
    p.spec.semantic_service = Some("embed-eu".into());
    // The mock embeds bags of words: thresholds fit its scale.
    p.spec.routing.threshold = Some(0.3);
    let service = embedding_service("embed-eu", &emb, "sk-emb");
    // A node WITHOUT a model serves it through the remote service.
    let (cp, gw, _cache) = serving_snapshot(snapshot_with_services(
        GW,
        1,
        vec![p.clone()],
        vec![service.clone()],
    ))
    .await;
    let utterances = emb.inputs().len();
    assert_eq!(utterances, 7, "3 + 3 route utterances, 1 deny utterance");

    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("I need a refund for my subscription"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "billing", "m-billing");
    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("reverse a linked list in Python"),
    )
    .await;
    assert_stamped(&resp, "code", "m-code");
    let (status, err) =
        error_of(post(&gw, "/s/chat/completions", &ask("how do I build a bomb")).await).await;
    assert_eq!(
        (status, err["type"].as_str()),
        (403, Some("prompt_blocked"))
    );
    assert_eq!(emb.inputs().len(), utterances + 3);

    // A new snapshot with one new utterance: only that one is sent.
    let TopicSource::Inline(t) = &mut p.spec.routes[0].topics[0] else {
        unreachable!("inline topic")
    };
    t.utterances.push("Send me my receipts".into());
    cp.push(snapshot_with_services(
        GW,
        2,
        vec![p.clone()],
        vec![service],
    ))
    .await;
    assert!(cp.wait_for_ack(2, WAIT).await.unwrap().applied);
    let inputs = emb.inputs();
    assert_eq!(inputs.len(), utterances + 4);
    assert_eq!(
        inputs.last().map(String::as_str),
        Some("Send me my receipts")
    );

    // The same proxy, its service now defined elsewhere with another key: the new
    // definition serves (utterances and prompts go to the new service only).
    let moved = MockEmbeddings::start("sk-emb-2", "emb-model")
        .await
        .unwrap();
    cp.push(snapshot_with_services(
        GW,
        3,
        vec![p],
        vec![embedding_service("embed-eu", &moved, "sk-emb-2")],
    ))
    .await;
    assert!(cp.wait_for_ack(3, WAIT).await.unwrap().applied);
    assert_eq!(
        moved.inputs().len(),
        8,
        "every utterance, from the new service"
    );
    let before = emb.inputs().len();
    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("I was charged twice, refund it"),
    )
    .await;
    assert_stamped(&resp, "billing", "m-billing");
    assert_eq!(moved.inputs().len(), 9);
    assert_eq!(
        emb.inputs().len(),
        before,
        "the old service is no longer called"
    );
}

#[tokio::test]
async fn a_proxy_naming_a_service_the_snapshot_lacks_is_nacked() {
    let a = MockOpenAi::start().await.unwrap();
    let emb = MockEmbeddings::start("sk-emb", "emb-model").await.unwrap();
    let mut p = semantic_proxy(&a.base_url(), &a.base_url());
    p.spec.semantic_service = Some("embed-eu".into());
    let (cp, gw, _cache) = serving_snapshot(snapshot_with_services(
        GW,
        1,
        vec![p.clone()],
        vec![embedding_service("embed-eu", &emb, "sk-emb")],
    ))
    .await;

    p.spec.semantic_service = Some("embed-us".into());
    cp.push(snapshot_with_services(
        GW,
        2,
        vec![p],
        vec![embedding_service("embed-eu", &emb, "sk-emb")],
    ))
    .await;
    let nack = cp.wait_for_ack(2, WAIT).await.expect("no answer");
    assert!(!nack.applied);
    assert!(
        nack.error.contains("proxy 's'") && nack.error.contains("'embed-us'"),
        "{}",
        nack.error
    );
    assert_eq!(gw.applied_version(), Some(1));
    let resp = post(
        &gw,
        "/s/chat/completions",
        &ask("I need a refund for my subscription"),
    )
    .await;
    assert_stamped(&resp, "billing", "m-billing");
}

/// An Anthropic-format client: routed and guarded on its last user message's text (a user
/// turn holding only tool results is the tool's answer, so the question before it counts),
/// refusals in Anthropic's error shape.
#[tokio::test]
async fn anthropic_clients_are_routed_and_guarded_on_their_last_user_text() {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let mut p = semantic_proxy(&a.base_url(), &b.base_url());
    p.spec.format = switchyard_model::Format::Anthropic;
    let (_cp, gw, _cache) = node_with_encoder(vec![p]).await;
    let ask = |messages: Value| {
        json!({"model": "ignored", "max_tokens": 100,
               "system": [{"type": "text", "text": "You are helpful."}], "messages": messages})
    };

    let resp = post(
        &gw,
        "/s/v1/messages",
        &ask(json!([{"role": "user", "content": [
            {"type": "text", "text": "you billed me two times, I want a refund"}]}])),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "billing", "m-billing");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");

    let tool_loop = ask(json!([
        {"role": "user", "content": "Why does my Rust code not compile?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "cargo_check", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "error[E0382]: borrow of moved value"}]}
    ]));
    let mut with_tool = tool_loop.clone();
    with_tool["tools"] = json!([{"name": "cargo_check", "input_schema": {"type": "object"}}]);
    let resp = post(&gw, "/s/v1/messages", &with_tool).await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "code", "m-code");

    let before = a.request_count() + b.request_count();
    let resp = post(
        &gw,
        "/s/v1/messages",
        &ask(json!([{"role": "user", "content": "how can I make a bomb at home"}])),
    )
    .await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert_eq!(body["error"]["code"], "prompt_blocked", "{body}");
    // The regex guard (scope all) reads the system blocks too.
    let mut leaky = ask(json!([{"role": "user", "content": "update my invoice"}]));
    leaky["system"][0]["text"] = json!("The customer's ssn is 123-45-6789.");
    let resp = post(&gw, "/s/v1/messages", &leaky).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(a.request_count() + b.request_count(), before);
}
