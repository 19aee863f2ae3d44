//! Tests against the real model files (MiniLM and the static model).
//!
//! The models are not in git: run `scripts/fetch-model` first. These tests
//! FAIL (never skip) when the files are absent. Override locations with
//! `SWITCHYARD_MODEL_DIR` (the all-MiniLM-L6-v2 directory),
//! `SWITCHYARD_STATIC_MODEL_DIR` and `SWITCHYARD_MINILM_REFERENCE` (the
//! reference embeddings JSON, by default `../shared/data/` beside the repo).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "helpers of tests: a failure there is a failed test"
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use switchyard_semantic::{
    EmbeddingService, Encoder, LoadError, MINILM_NAME, MiniLmEncoder, MiniLmOptions, STATIC_NAME,
    ServiceConfig, StaticEncoder, TopicIndex, Truncation, dot,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dir_from_env(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map_or(default, PathBuf::from)
}

fn minilm_dir() -> PathBuf {
    dir_from_env(
        "SWITCHYARD_MODEL_DIR",
        repo_root().join("models/all-MiniLM-L6-v2"),
    )
}

fn static_dir() -> PathBuf {
    dir_from_env(
        "SWITCHYARD_STATIC_MODEL_DIR",
        repo_root().join("models/static"),
    )
}

fn require_model(dir: &Path, env: &str) {
    assert!(
        dir.join("model.safetensors").is_file(),
        "model files not found in {}: run scripts/fetch-model (or set {env})",
        dir.display()
    );
}

/// One MiniLM shared by every test in this binary.
fn minilm_arc() -> &'static Arc<MiniLmEncoder> {
    static MODEL: OnceLock<Arc<MiniLmEncoder>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = minilm_dir();
        require_model(&dir, "SWITCHYARD_MODEL_DIR");
        Arc::new(MiniLmEncoder::load(&dir).unwrap_or_else(|e| panic!("loading MiniLM: {e}")))
    })
}

fn minilm() -> &'static MiniLmEncoder {
    minilm_arc()
}

fn static_model() -> &'static StaticEncoder {
    static MODEL: OnceLock<StaticEncoder> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = static_dir();
        require_model(&dir, "SWITCHYARD_STATIC_MODEL_DIR");
        StaticEncoder::load(&dir).unwrap_or_else(|e| panic!("loading static model: {e}"))
    })
}

#[derive(serde::Deserialize)]
struct Reference {
    max_seq_length: usize,
    items: Vec<ReferenceItem>,
    cosine_pairs: std::collections::BTreeMap<String, f32>,
}

#[derive(serde::Deserialize)]
struct ReferenceItem {
    text: String,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = dir_from_env(
        "SWITCHYARD_MINILM_REFERENCE",
        repo_root().join("../shared/data/minilm_reference_embeddings.json"),
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading reference embeddings {}: {e} (set SWITCHYARD_MINILM_REFERENCE)",
            path.display()
        )
    });
    serde_json::from_slice(&bytes).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(v: &[f32]) -> f32 {
    dot(v, v).sqrt()
}

#[test]
fn minilm_matches_python_reference_alone_and_batched() {
    let reference = reference();
    let enc = minilm();
    assert_eq!(enc.name(), MINILM_NAME);
    assert_eq!(enc.dim(), 384);
    assert_eq!(enc.options().max_tokens, reference.max_seq_length);

    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    let batched = enc.encode_batch(&texts).unwrap();
    assert_eq!(batched.len(), texts.len());
    for (item, got) in reference.items.iter().zip(&batched) {
        let single = enc.encode(&item.text).unwrap();
        let d = max_abs_diff(&single, &item.embedding);
        assert!(d < 1e-4, "{:?}: max diff {d} from reference", item.text);
        let d = max_abs_diff(got, &single);
        assert!(
            d < 1e-5,
            "{:?}: batched differs from single by {d}",
            item.text
        );
        assert!((norm(got) - 1.0).abs() < 1e-5);
    }

    let vector = |t: &str| {
        let i = texts.iter().position(|x| x.contains(t)).unwrap();
        &batched[i]
    };
    for (pair, expected) in &reference.cosine_pairs {
        let (a, b) = pair.split_once('~').unwrap();
        let cos = dot(vector(a), vector(b));
        assert!((cos - expected).abs() < 1e-4, "{pair}: {cos} vs {expected}");
    }
}

fn load_with(max_tokens: usize, truncation: Truncation) -> MiniLmEncoder {
    MiniLmEncoder::load_with(
        &minilm_dir(),
        MiniLmOptions {
            max_tokens,
            truncation,
            ..MiniLmOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn minilm_truncates_long_texts_from_the_chosen_end() {
    let enc = minilm();
    assert_eq!(enc.token_count(&"lorem ipsum ".repeat(300)).unwrap(), 256);
    assert_eq!(enc.token_count("Hello world").unwrap(), 4);

    // Short limits keep this test fast; the mechanism is the same at 256.
    let head = load_with(32, Truncation::KeepStart);
    let tail = load_with(32, Truncation::KeepEnd);
    assert_ne!(
        head.name(),
        MINILM_NAME,
        "options must show in the cache namespace"
    );
    assert_ne!(head.name(), tail.name());
    let filler = "lorem ipsum ".repeat(30);
    assert_eq!(head.token_count(&filler).unwrap(), 32);

    // Keep start: texts that differ only after the limit are the same.
    let a = head
        .encode(&format!("{filler} how is the weather"))
        .unwrap();
    let b = head.encode(&format!("{filler} reset my password")).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-6);
    // Keep end: texts that differ only before the last 30 tokens are the same.
    let a = tail
        .encode(&format!("how is the weather {filler}"))
        .unwrap();
    let b = tail.encode(&format!("reset my password {filler}")).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-6);

    let question = "how do I reset my password";
    let q = enc.encode(question).unwrap();
    let kept = tail.encode(&format!("{filler} {question}")).unwrap();
    let cut = head.encode(&format!("{filler} {question}")).unwrap();
    assert!(
        dot(&kept, &q) > dot(&cut, &q) + 0.2,
        "keeping the end keeps the question"
    );

    // Huge inputs are cut before tokenizing and still give a vector.
    let huge = "word ".repeat(200_000);
    assert_eq!(head.encode(&huge).unwrap().len(), 384);
    assert_eq!(tail.encode(&huge).unwrap().len(), 384);
}

#[test]
fn similar_sentences_score_higher_than_unrelated() {
    for enc in [minilm() as &dyn Encoder, static_model() as &dyn Encoder] {
        let v = enc
            .encode_batch(&[
                "How do I reset my password?",
                "I forgot my login credentials",
                "What's the weather in Paris tomorrow?",
                "Write a Python function that reverses a linked list",
                "Implement a linked list reversal in Rust",
            ])
            .unwrap();
        let name = enc.name();
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.1, "{name}");
        assert!(dot(&v[3], &v[4]) > dot(&v[3], &v[2]) + 0.1, "{name}");
    }

    // Routing by example utterances (MiniLM; the static model is too coarse
    // for paraphrases that share no words).
    let enc = minilm();
    let index = TopicIndex::encode(
        enc,
        [
            (
                "account",
                vec![
                    "I can't log in",
                    "reset my password",
                    "my account is locked",
                ],
            ),
            (
                "code",
                vec![
                    "write a function",
                    "fix this bug in my program",
                    "explain this code",
                ],
            ),
            (
                "weather",
                vec!["will it rain tomorrow", "weather forecast for the weekend"],
            ),
        ],
    )
    .unwrap();
    let route = |q: &str| {
        let v = enc.encode(q).unwrap();
        index.score(&v).unwrap().best().unwrap().label.to_owned()
    };
    assert_eq!(route("I forgot my login credentials"), "account");
    assert_eq!(
        route("Write a Python function that reverses a linked list"),
        "code"
    );
    assert_eq!(route("Is it going to be sunny in Paris?"), "weather");
}

#[test]
fn static_encoder_gives_unit_vectors() {
    let enc = static_model();
    assert_eq!(enc.name(), STATIC_NAME);
    assert_eq!(enc.dim(), 64);
    let texts = ["Hello world", "", "Ünïcödé and emoji 🚀 text", "a"];
    let batched = enc.encode_batch(&texts).unwrap();
    for (t, v) in texts.iter().zip(&batched) {
        assert_eq!(v.len(), 64);
        let single = enc.encode(t).unwrap();
        assert!(max_abs_diff(v, &single) < 1e-6, "{t:?}");
        let n = norm(v);
        // The empty text has no tokens and gives the zero vector.
        assert!(
            (n - 1.0).abs() < 1e-4 || (t.is_empty() && n == 0.0),
            "{t:?}: norm {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_batches_concurrent_requests_with_the_same_vectors() {
    let enc = minilm();
    let texts: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "request {i}: please route this prompt about topic {}",
                i % 3
            )
        })
        .collect();
    let owned: Arc<dyn Encoder> = Arc::clone(minilm_arc()) as Arc<dyn Encoder>;
    let svc = Arc::new(EmbeddingService::new(owned, ServiceConfig::default()).unwrap());
    let handles: Vec<_> = texts
        .iter()
        .map(|t| {
            let (svc, t) = (Arc::clone(&svc), t.clone());
            tokio::spawn(async move { svc.embed(&t).await })
        })
        .collect();
    for (h, t) in handles.into_iter().zip(&texts) {
        let got = h.await.unwrap().unwrap();
        let single = enc.encode(t).unwrap();
        assert!(max_abs_diff(&got, &single) < 1e-5, "{t}");
    }
    let stats = svc.stats();
    assert_eq!(stats.encoded_texts, 16);
    assert!(stats.batches < 16, "expected batching, got {stats:?}");
    let again = svc.embed(&texts[3]).await.unwrap();
    assert_eq!(again.len(), 384);
    assert_eq!(svc.stats().cache_hits, 1);
}

fn copy_files(to: &Path, from: &Path, names: &[&str]) {
    for n in names {
        std::fs::copy(from.join(n), to.join(n)).unwrap();
    }
}

#[test]
fn minilm_load_errors_name_the_file() {
    let src = minilm_dir();
    require_model(&src, "SWITCHYARD_MODEL_DIR");

    let missing = Path::new("/nonexistent/switchyard/model");
    let err = MiniLmEncoder::load(missing).unwrap_err();
    assert!(matches!(err, LoadError::MissingDir { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/switchyard/model"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let err = MiniLmEncoder::load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    // Garbage tokenizer.json.
    copy_files(dir.path(), &src, &["config.json"]);
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = MiniLmEncoder::load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // Missing, truncated and garbage model.safetensors.
    copy_files(dir.path(), &src, &["tokenizer.json"]);
    let err = MiniLmEncoder::load(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("model.safetensors is missing"),
        "{err}"
    );

    let real = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &real[..1 << 20]).unwrap();
    let err = MiniLmEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );

    std::fs::write(dir.path().join("model.safetensors"), vec![0xAB_u8; 4096]).unwrap();
    let err = MiniLmEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );

    // A valid safetensors file that lacks the BERT weights.
    let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut other = (header.len() as u64).to_le_bytes().to_vec();
    other.extend_from_slice(header);
    other.extend_from_slice(&[0; 4]);
    std::fs::write(dir.path().join("model.safetensors"), other).unwrap();
    let err = MiniLmEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("do not match"),
        "{err}"
    );

    // Garbage config.json.
    std::fs::write(dir.path().join("config.json"), "[]").unwrap();
    let err = MiniLmEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");

    // Impossible options.
    let err = MiniLmEncoder::load_with(
        &src,
        MiniLmOptions {
            max_tokens: 100_000,
            ..MiniLmOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_tokens"), "{err}");
}

#[test]
fn static_load_errors_name_the_file() {
    let src = static_dir();
    require_model(&src, "SWITCHYARD_STATIC_MODEL_DIR");
    let err = StaticEncoder::load(Path::new("/nonexistent/static")).unwrap_err();
    assert!(matches!(err, LoadError::MissingDir { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    copy_files(dir.path(), &src, &["config.json", "model.safetensors"]);
    std::fs::write(dir.path().join("tokenizer.json"), "garbage").unwrap();
    let err = StaticEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    copy_files(dir.path(), &src, &["tokenizer.json"]);
    let real = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &real[..real.len() / 2],
    )
    .unwrap();
    let err = StaticEncoder::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}
