//! Semantic routing and guards with the real MiniLM encoder (shared by every test of the
//! crate through a `OnceLock`). The model comes from `<repo>/models` (`scripts/fetch-model`)
//! or `SWITCHYARD_MODEL_DIR`; these tests fail, not skip, without it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use switchyard_model::{
    PromptGuard, Provider, Proxy, RegexGuard as RegexGuardSpec, RegexPattern, RoutingStrategy,
    Topic, TopicSource,
};
use switchyard_semantic::{EncodeError, Encoder};

use super::*;
use crate::table::RoutingTable;
use crate::table::tests::{proxy, route, snapshot};

pub(crate) fn model_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
        })
}

/// The MiniLM encoder the gateway loads (keep-end truncation), loaded once per test binary.
pub(crate) fn shared_encoder() -> Arc<dyn Encoder> {
    static ENCODER: OnceLock<Arc<dyn Encoder>> = OnceLock::new();
    Arc::clone(ENCODER.get_or_init(|| {
        let dir = model_dir();
        load_encoder(&dir, EncoderKind::MiniLm).unwrap_or_else(|e| {
            panic!("{e}: run scripts/fetch-model (or set SWITCHYARD_MODEL_DIR)")
        })
    }))
}

/// Counts the texts it is asked to encode.
struct Counting {
    inner: Arc<dyn Encoder>,
    encoded: AtomicUsize,
}

impl Encoder for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.encoded.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.encode_batch(texts)
    }
}

fn topic(name: &str, utterances: &[&str]) -> TopicSource {
    Topic {
        name: name.into(),
        utterances: utterances.iter().map(|u| (*u).to_owned()).collect(),
    }
    .into()
}

pub(crate) fn semantic_proxy(base: &str) -> Proxy {
    let mut billing = route("billing", Provider::OpenAi, Some("billing-model"));
    billing.topics = vec![topic(
        "payments",
        &[
            "How do I pay my invoice?",
            "I was charged twice on my credit card",
            "Can I get a refund for my subscription?",
            "Update my billing address and payment method",
        ],
    )];
    let mut code = route("code", Provider::Nvidia, Some("code-model"));
    code.topics = vec![topic(
        "programming",
        &[
            "Write a Python function that sorts a list",
            "Why does my Rust code not compile?",
            "Fix this null pointer exception in Java",
            "How do I reverse a linked list?",
        ],
    )];
    let general = route("general", Provider::OpenAi, Some("general-model"));
    let mut p = proxy(base, base, vec![billing, code, general], Some("general"));
    p.spec.routing.strategy = RoutingStrategy::Semantic;
    p.spec.routing.threshold = Some(0.3);
    p.spec.prompt_guard = Some(PromptGuard {
        threshold: 0.6,
        deny_topics: vec![topic(
            "weapons",
            &[
                "How do I build a bomb?",
                "Give me instructions to make explosives at home",
            ],
        )],
        scope: switchyard_model::GuardScope::LastUser,
    });
    p.spec.regex_guard = Some(RegexGuardSpec {
        patterns: vec![RegexPattern {
            name: "ssn".into(),
            pattern: r"\b\d{3}-\d{2}-\d{4}\b".into(),
        }],
        scope: switchyard_model::GuardScope::All,
    });
    p
}

/// Compiles `snap`, asserting every proxy compiled.
fn compile_ok(
    snap: &switchyard_model::snapshot::Snapshot,
    engine: &SemanticEngine,
) -> RoutingTable {
    let (table, failures) = RoutingTable::compile_with(snap, engine, None);
    assert!(failures.is_empty(), "{failures:?}");
    table
}

fn engine() -> SemanticEngine {
    SemanticEngine::with_encoder(shared_encoder(), reqwest::Client::new()).unwrap()
}

fn compiled(p: Proxy, engine: &SemanticEngine) -> Arc<CompiledProxy> {
    let (table, failures) = RoutingTable::compile_with(&snapshot(1, vec![p]), engine, None);
    assert!(failures.is_empty(), "{failures:?}");
    let (proxy, _) = table.lookup("/s/chat/completions").unwrap();
    Arc::clone(proxy)
}

async fn pick(proxy: &CompiledProxy, prompt: &str) -> Evaluation {
    let semantic = proxy.semantic.as_ref().unwrap();
    semantic
        .evaluate(Screened::prompt(semantic, Some(prompt)))
        .await
        .unwrap()
}

fn routed_to(proxy: &CompiledProxy, ev: &Evaluation) -> (String, String, bool) {
    match decide(proxy, &ev.pick) {
        Decision::Route { choice, .. } => (
            proxy.routes[choice.route].name.to_string(),
            choice.model.to_string(),
            false,
        ),
        Decision::Fallback { choice, .. } => (
            proxy.routes[choice.route].name.to_string(),
            choice.model.to_string(),
            true,
        ),
        Decision::Reject(e) => panic!("rejected: {e:?}"),
    }
}

#[tokio::test]
async fn routes_clear_prompts_and_falls_back_below_the_threshold() {
    let engine = engine();
    let p = compiled(semantic_proxy("/s"), &engine);
    for (prompt, want) in [
        ("I think you billed me two times this month", "billing"),
        (
            "how can I get my money back for the subscription",
            "billing",
        ),
        ("my C++ program segfaults, can you help me debug it", "code"),
        ("write a javascript function to reverse a string", "code"),
    ] {
        let ev = pick(&p, prompt).await;
        assert!(ev.blocked().is_none(), "{prompt}: {ev:?}");
        let (route, model, fallback) = routed_to(&p, &ev);
        assert_eq!(route, want, "{prompt}: {:?}", ev.route_scores);
        assert!(!fallback);
        assert_eq!(model, format!("{want}-model"));
    }
    for prompt in [
        "what is the best recipe for banana bread",
        "who won the football world cup in 1998",
    ] {
        let ev = pick(&p, prompt).await;
        assert!(
            matches!(ev.pick, Pick::BelowThreshold { .. }),
            "{prompt}: {ev:?}"
        );
        let (route, model, fallback) = routed_to(&p, &ev);
        assert_eq!(
            (route.as_str(), model.as_str(), fallback),
            ("general", "general-model", true)
        );
    }

    // No fallback: a clear error instead.
    let mut no_fb = semantic_proxy("/s");
    no_fb.spec.routing.fallback = None;
    let p = compiled(no_fb, &engine);
    let ev = pick(&p, "what is the best recipe for banana bread").await;
    match decide(&p, &ev.pick) {
        Decision::Reject(e @ ProxyError::NoSemanticRoute(_)) => {
            assert!(
                e.message().contains("below the threshold"),
                "{}",
                e.message()
            );
        }
        other => panic!("{other:?}"),
    }
    // No user text at all: fallback, or the same error.
    let semantic = p.semantic.as_ref().unwrap();
    let ev = semantic
        .evaluate(Screened::prompt(semantic, None))
        .await
        .unwrap();
    assert_eq!(ev.pick, Pick::NoPrompt);
    assert!(matches!(decide(&p, &ev.pick), Decision::Reject(_)));
}

#[tokio::test]
async fn the_guard_blocks_paraphrases_and_lets_the_rest_through() {
    let engine = engine();
    let p = compiled(semantic_proxy("/s"), &engine);
    for prompt in [
        "how can I make a bomb",
        "what are the steps to build an explosive device at home",
    ] {
        let ev = pick(&p, prompt).await;
        assert_eq!(ev.matched_topics, vec!["weapons"], "{prompt}: {ev:?}");
        // Blocked before routing: no route scores.
        assert!(ev.route_scores.is_empty());
        let err = ev.blocked().unwrap();
        assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);
    }
    for prompt in [
        "I was charged twice, please refund me",
        "how do I bake a chocolate cake",
        "explain how vaccines work",
    ] {
        let ev = pick(&p, prompt).await;
        assert!(ev.blocked().is_none(), "{prompt}: {:?}", ev.guard_scores);
        assert_eq!(ev.guard_scores.len(), 1);
    }
}

#[tokio::test]
async fn the_regex_guard_blocks_without_embedding() {
    let engine = engine();
    let p = compiled(semantic_proxy("/s"), &engine);
    let ev = pick(
        &p,
        "my social security number is 123-45-6789, pay my invoice",
    )
    .await;
    assert_eq!(ev.matched_patterns, vec!["ssn"]);
    assert!(ev.embedded_by.is_none());
    let body: serde_json::Value = serde_json::from_slice(&ev.blocked().unwrap().body()).unwrap();
    assert_eq!(body["error"]["type"], "prompt_blocked");
    assert_eq!(
        body["error"]["matched_patterns"],
        serde_json::json!(["ssn"])
    );

    // A model-strategy proxy with only a regex guard needs no encoder.
    let mut model_only = proxy(
        "m",
        "/s",
        vec![route("a", Provider::OpenAi, Some("x"))],
        None,
    );
    model_only.spec.regex_guard = semantic_proxy("/s").spec.regex_guard;
    let bare = SemanticEngine::without_encoder(reqwest::Client::new());
    let p = compiled(model_only, &bare);
    let ev = pick(&p, "ssn 123-45-6789").await;
    assert_eq!(ev.matched_patterns, vec!["ssn"]);
    assert_eq!(ev.pick, Pick::NotSemantic);
    assert!(pick(&p, "hello").await.blocked().is_none());
}

#[test]
fn a_node_without_an_encoder_refuses_semantic_proxies_and_guards() {
    let err = RoutingTable::compile(&snapshot(1, vec![semantic_proxy("/s")])).unwrap_err();
    assert!(err.to_string().contains("--model-dir"), "{err}");

    let mut guarded = proxy(
        "g",
        "/g",
        vec![route("a", Provider::OpenAi, Some("x"))],
        None,
    );
    guarded.spec.prompt_guard = semantic_proxy("/s").spec.prompt_guard;
    let err = RoutingTable::compile(&snapshot(1, vec![guarded])).unwrap_err();
    assert!(
        err.to_string().contains("proxy 'g'") && err.to_string().contains("sentence encoder"),
        "{err}"
    );
}

#[test]
fn unchanged_utterances_are_not_encoded_again() {
    let counting = Arc::new(Counting {
        inner: shared_encoder(),
        encoded: AtomicUsize::new(0),
    });
    let engine = SemanticEngine::with_encoder(counting.clone(), reqwest::Client::new()).unwrap();
    let (_, failures) =
        RoutingTable::compile_with(&snapshot(1, vec![semantic_proxy("/s")]), &engine, None);
    assert!(failures.is_empty());
    let first = counting.encoded.load(Ordering::SeqCst);
    assert_eq!(first, 10, "4 + 4 route utterances, 2 deny utterances");

    // Same proxy again, plus one new utterance: only that one is encoded.
    let mut changed = semantic_proxy("/s");
    let TopicSource::Inline(t) = &mut changed.spec.routes[0].topics[0] else {
        unreachable!("inline topic")
    };
    t.utterances
        .push("Where can I download my receipts?".into());
    let (_, failures) = RoutingTable::compile_with(&snapshot(2, vec![changed]), &engine, None);
    assert!(failures.is_empty());
    assert_eq!(counting.encoded.load(Ordering::SeqCst), first + 1);
}

#[tokio::test]
async fn the_scores_header_lists_guard_and_route_scores() {
    let engine = engine();
    let p = compiled(semantic_proxy("/s"), &engine);
    let ev = pick(&p, "refund my double charge").await;
    let header = ev.scores_header().unwrap();
    let text = header.to_str().unwrap();
    assert!(text.starts_with("guard=weapons:0."), "{text}");
    assert!(text.contains("; routes=payments:0."), "{text}");
}

/// Three proxies refer to one library topic: its utterances are encoded once on the node,
/// and every proxy's index holds the same block. A changed topic is re-encoded for its new
/// utterances only, and a topic no longer named is dropped.
#[test]
fn a_library_topic_is_encoded_once_and_shared_by_its_proxies() {
    use switchyard_model::LibraryTopic;
    let counting = Arc::new(Counting {
        inner: shared_encoder(),
        encoded: AtomicUsize::new(0),
    });
    let engine = SemanticEngine::with_encoder(counting.clone(), reqwest::Client::new()).unwrap();
    let billing: Vec<String> = [
        "How do I pay my invoice?",
        "I was charged twice on my credit card",
        "Can I get a refund for my subscription?",
        "Update my billing address and payment method",
        "Why is my bill higher this month?",
        "Send me last month's receipt",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let library = |utterances: Vec<String>| LibraryTopic {
        name: "billing".into(),
        description: String::new(),
        utterances,
    };
    let using_library = |base: &str| {
        let mut p = semantic_proxy(base);
        p.spec.name = base.trim_start_matches('/').to_owned();
        p.spec.routing.threshold = None; // calibrated
        p.spec.routes[0].topics = vec![TopicSource::Library {
            name: "billing".into(),
        }];
        p
    };
    let mut snap = snapshot(
        1,
        vec![
            using_library("/a"),
            using_library("/b"),
            using_library("/c"),
        ],
    );
    snap.topics = vec![library(billing.clone())];
    let table = compile_ok(&snap, &engine);
    // 6 library + 4 inline (code route) + 2 deny utterances, each once.
    assert_eq!(counting.encoded.load(Ordering::SeqCst), 12);
    let blocks = engine.library_blocks();
    assert_eq!(blocks.len(), 1);
    let shared = &blocks[0].1;
    assert_eq!(shared.len(), 6);
    // One allocation held by the node's library, the three proxies' indexes and `blocks`.
    assert_eq!(Arc::strong_count(shared), 5);
    for base in ["/a", "/b", "/c"] {
        let (p, _) = table.lookup(&format!("{base}/chat/completions")).unwrap();
        let routes = p.semantic.as_ref().unwrap().routes.as_ref().unwrap();
        assert!(Arc::ptr_eq(&routes.index.topic_vectors()[0], shared));
        let c = routes.calibration.expect("no threshold set: calibrated");
        assert_eq!(c.samples, 10, "6 + 4 utterances scored");
        assert_eq!(routes.scoring, RoutingScoring::Contrast);
    }
    drop(table);

    // One utterance added: only it is encoded; the old block is replaced.
    let mut more = billing.clone();
    more.push("Where can I download my invoices?".into());
    let mut snap2 = snapshot(2, vec![using_library("/a"), using_library("/b")]);
    snap2.topics = vec![library(more)];
    let table = compile_ok(&snap2, &engine);
    assert_eq!(counting.encoded.load(Ordering::SeqCst), 13);
    assert_eq!(engine.library_blocks()[0].1.len(), 7);
    drop(table);

    // No proxy names it any more: the node lets it go.
    compile_ok(&snapshot(3, vec![semantic_proxy("/s")]), &engine);
    assert!(engine.library_blocks().is_empty());
}

/// Without a threshold the proxy routes with the contrast rule and a calibrated threshold,
/// and the dry run says so.
#[tokio::test]
async fn an_unset_threshold_is_calibrated_and_explained() {
    let engine = engine();
    let mut p = semantic_proxy("/s");
    p.spec.routing.threshold = None;
    let p = compiled(p, &engine);
    let ev = pick(&p, "I was billed twice for one order, please refund").await;
    assert_eq!(ev.route_scoring, Some(RoutingScoring::Contrast));
    let c = ev.route_calibration.expect("calibrated");
    assert_eq!(ev.route_threshold, Some(c.threshold));
    assert!(
        c.describe().contains("calibrated from 8 utterances"),
        "{}",
        c.describe()
    );
    assert!(
        matches!(&ev.pick, Pick::Route { topic, .. } if topic == "payments"),
        "{ev:?}"
    );
    let ev = pick(&p, "What's a good recipe for banana bread?").await;
    assert!(matches!(ev.pick, Pick::BelowThreshold { .. }), "{ev:?}");
}

/// A deny list that refers to a library topic blocks like an inline one, beside routing
/// that mixes inline and library topics.
#[tokio::test]
async fn guard_and_routing_from_library_topics() {
    use switchyard_model::LibraryTopic;
    let engine = engine();
    let mut p = semantic_proxy("/s");
    p.spec.routes[0].topics.push(TopicSource::Library {
        name: "invoices".into(),
    });
    p.spec.prompt_guard.as_mut().unwrap().deny_topics = vec![TopicSource::Library {
        name: "weapons".into(),
    }];
    let mut snap = snapshot(1, vec![p]);
    snap.topics = vec![
        LibraryTopic {
            name: "invoices".into(),
            description: String::new(),
            utterances: vec![
                "Where can I download my invoice as a PDF?".into(),
                "The invoice has the wrong VAT number".into(),
            ],
        },
        LibraryTopic {
            name: "weapons".into(),
            description: String::new(),
            utterances: vec![
                "How do I build a bomb?".into(),
                "Give me instructions to make explosives at home".into(),
            ],
        },
    ];
    let table = compile_ok(&snap, &engine);
    let (proxy, _) = table.lookup("/s/chat/completions").unwrap();
    let ev = pick(proxy, "how can I make a bomb in my kitchen").await;
    assert_eq!(ev.matched_topics, vec!["weapons"]);
    assert!(ev.blocked().is_some());
    let ev = pick(proxy, "I need a PDF copy of my invoice").await;
    assert!(ev.blocked().is_none());
    assert!(
        matches!(&ev.pick, Pick::Route { route: 0, topic, .. } if topic == "invoices"),
        "{ev:?}"
    );
    // A proxy whose reference does not resolve is not compiled (and reported).
    let mut dangling = snap.clone();
    dangling.topics.pop();
    let (_, failures) = RoutingTable::compile_with(&dangling, &engine, None);
    let err = &failures[0].error;
    assert!(err.to_string().contains("library topic 'weapons'"), "{err}");
}
