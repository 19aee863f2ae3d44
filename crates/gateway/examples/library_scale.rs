//! The prompt topic library at scale, on one node: a snapshot with 6 library topics × 2,000
//! utterances (BANKING77 sentences), used by 12 semantic proxies (each routing over all six,
//! threshold calibrated), applied on a fresh node; then the decision time at that size.
//!
//! Reports: the time from pushing the snapshot to the node's ACK (encoding 12,000 utterances
//! included), the node's resident memory before and after, and per decision the scoring time
//! of a 12,000-utterance index in-process (the same `TopicIndex` code the node runs) beside a
//! full dry-run decision over HTTP (HTTP, embedding the prompt, guard, scoring).
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release -p switchyard-gateway --example library_scale -- \
//!     [--models DIR] [--data DIR] [--proxies 12] [--per-topic 2000] [--decisions 300]
//! ```
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_gateway::{EncoderKind, Gateway, GatewayConfig, load_encoder};
use switchyard_model::{Auth, PromptGuard, Provider, RoutingStrategy, Topic, TopicSource};
use switchyard_proto::v1 as pb;
use switchyard_semantic::{Scoring, TopicIndex, TopicVectors};
use switchyard_testkit::FakeControlPlane;
use switchyard_testkit::snapshots::{proxy, route, snapshot};

const TOPICS: usize = 6;

struct Args {
    models: PathBuf,
    data: PathBuf,
    proxies: usize,
    per_topic: usize,
    decisions: usize,
}

fn parse_args() -> Result<Args, String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut a = Args {
        models: repo.join("models"),
        data: repo.join("../shared/data/banking77"),
        proxies: 12,
        per_topic: 2000,
        decisions: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("bad number {v}"));
        match flag.as_str() {
            "--models" => a.models = v.into(),
            "--data" => a.data = v.into(),
            "--proxies" => a.proxies = num(&v)?.max(1),
            "--per-topic" => a.per_topic = num(&v)?.max(1),
            "--decisions" => a.decisions = num(&v)?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// The first column of a BANKING77 CSV (quoted fields, `""` escapes), header skipped.
fn read_texts(path: &std::path::Path) -> Result<Vec<String>, String> {
    let data = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let (mut field, mut fields, mut quoted) = (String::new(), 0usize, false);
    let mut chars = data.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (_, '"') => quoted = !quoted,
            (true, c) => field.push(c),
            (false, ',') => {
                if fields == 0 {
                    rows.push(std::mem::take(&mut field).trim().to_owned());
                }
                field.clear();
                fields += 1;
            }
            (false, '\n') => {
                field.clear();
                fields = 0;
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    rows.remove(0);
    Ok(rows)
}

/// Resident and peak resident memory of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("library_scale: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("library_scale: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("library_scale: {e}");
            ExitCode::from(1)
        }
    }
}

/// A semantic proxy routing over `TOPICS` routes, route `i` referring to library topic `i`
/// (with `library`) or holding 10 of its utterances inline.
fn bank_proxy(name: &str, topics: &[Vec<String>], library: bool) -> switchyard_model::Proxy {
    let mut routes = Vec::new();
    for (i, utterances) in topics.iter().enumerate() {
        let mut r = route(
            &format!("r{i}"),
            Provider::OpenAiCompatible,
            "http://127.0.0.1:9/v1",
            Auth::None,
        );
        r.target_model = Some(format!("model-{i}"));
        r.topics = vec![if library {
            TopicSource::Library {
                name: format!("topic-{i}"),
            }
        } else {
            Topic {
                name: format!("topic-{i}"),
                utterances: utterances.iter().take(10).cloned().collect(),
            }
            .into()
        }];
        routes.push(r);
    }
    let mut p = proxy(name, &format!("/{name}"), routes, Some(("r0", None)));
    p.spec.routing.strategy = RoutingStrategy::Semantic;
    p.spec.routing.threshold = None;
    p.spec.prompt_guard = Some(PromptGuard {
        threshold: 0.7,
        deny_topics: vec![
            Topic {
                name: "weapons".into(),
                utterances: vec!["How do I build a bomb?".into()],
            }
            .into(),
        ],
        scope: switchyard_model::GuardScope::LastUser,
    });
    p
}

async fn run(args: Args) -> Result<(), String> {
    let mut texts = read_texts(&args.data.join("banking77_train.csv"))?;
    texts.extend(read_texts(&args.data.join("banking77_test.csv"))?);
    let mut seen = HashSet::new();
    texts.retain(|t| seen.insert(t.clone()));
    let prompts: Vec<String> = texts.split_off(TOPICS * args.per_topic.min(texts.len() / TOPICS));
    let topics: Vec<Vec<String>> = texts
        .chunks(args.per_topic)
        .take(TOPICS)
        .map(<[String]>::to_vec)
        .collect();
    let per_topic = topics[0].len();
    println!(
        "{} library topics x {per_topic} utterances, {} proxies using all of them; {} other prompts for decisions",
        topics.len(),
        args.proxies,
        prompts.len()
    );

    // A fresh node on a small snapshot (one inline proxy), then the library snapshot.
    let cp = FakeControlPlane::start().await.map_err(|e| e.to_string())?;
    cp.push(snapshot(
        "bench",
        1,
        vec![bank_proxy("inline", &topics, false)],
    ))
    .await;
    let cache = std::env::temp_dir().join(format!("switchyard-libscale-{}", std::process::id()));
    let mut config = GatewayConfig::new(cp.url(), "bench", "token", &cache);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.encoder_kind = EncoderKind::MiniLm;
    config.model_dir = Some(args.models.join("all-MiniLM-L6-v2"));
    let gw = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let ack = cp
        .wait_for_ack(1, Duration::from_secs(120))
        .await
        .ok_or("no ack for version 1")?;
    if !ack.applied {
        return Err(format!("snapshot 1 refused: {}", ack.error));
    }
    let (rss_before, _) = memory();

    let mut proxies = vec![bank_proxy("inline", &topics, false)];
    for i in 0..args.proxies {
        proxies.push(bank_proxy(&format!("lib{i}"), &topics, true));
    }
    let mut wire = snapshot("bench", 2, proxies);
    wire.topics = topics
        .iter()
        .enumerate()
        .map(|(i, u)| pb::LibraryTopic {
            name: format!("topic-{i}"),
            description: String::new(),
            utterances: u.clone(),
        })
        .collect();
    let started = Instant::now();
    cp.push(wire).await;
    let ack = cp
        .wait_for_ack(2, Duration::from_secs(900))
        .await
        .ok_or("no ack for version 2")?;
    let applied_in = started.elapsed();
    if !ack.applied {
        return Err(format!("snapshot 2 refused: {}", ack.error));
    }
    let (rss_after, peak) = memory();
    let vectors_mib = (TOPICS * per_topic * 384 * 4) as f64 / (1024.0 * 1024.0);
    println!(
        "applied on the node in {:.1} s; resident memory {rss_before:.0} MiB before, {rss_after:.0} MiB after (+{:.0} MiB; peak {peak:.0} MiB); the vectors themselves are {vectors_mib:.1} MiB, held once for {} proxies",
        applied_in.as_secs_f64(),
        rss_after - rss_before,
        args.proxies
    );

    // Decisions over HTTP: the library proxy and the inline 6 x 10 proxy, same prompts.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let decide = |path: &'static str, prompt: String| {
        let client = client.clone();
        let url = format!("http://{}{path}", gw.local_addr());
        async move {
            let resp = client
                .post(&url)
                .json(&serde_json::json!({ "prompt": prompt }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            resp.bytes().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
    };
    for p in prompts.iter().rev().take(10) {
        decide("/lib0/_switchyard/route", p.clone()).await?;
        decide("/inline/_switchyard/route", p.clone()).await?;
    }
    let n = args.decisions.min(prompts.len() / 2);
    let mut lib = Vec::with_capacity(n);
    let mut inline = Vec::with_capacity(n);
    for i in 0..n {
        // Distinct prompts for each (the prompt cache would otherwise answer the second).
        let t = Instant::now();
        decide("/lib0/_switchyard/route", prompts[2 * i].clone()).await?;
        lib.push(t.elapsed());
        let t = Instant::now();
        decide("/inline/_switchyard/route", prompts[2 * i + 1].clone()).await?;
        inline.push(t.elapsed());
    }
    lib.sort();
    inline.sort();
    println!(
        "dry-run decision over HTTP (embedding included), {n} each: 12,000-utterance proxy p50 {:.2} ms p99 {:.2} ms; 60-utterance proxy p50 {:.2} ms p99 {:.2} ms",
        percentile(&lib, 0.5),
        percentile(&lib, 0.99),
        percentile(&inline, 0.5),
        percentile(&inline, 0.99)
    );

    // Scoring alone, in-process, on the same index shape the node builds.
    let encoder = load_encoder(&args.models.join("all-MiniLM-L6-v2"), EncoderKind::MiniLm)
        .map_err(|e| e.to_string())?;
    let mut builder = TopicIndex::builder(encoder.dim());
    for (i, u) in topics.iter().enumerate() {
        let refs: Vec<&str> = u.iter().map(String::as_str).collect();
        let mut vectors = Vec::with_capacity(refs.len());
        for chunk in refs.chunks(64) {
            vectors.extend(encoder.encode_batch(chunk).map_err(|e| e.to_string())?);
        }
        let block = TopicVectors::new(encoder.dim(), &vectors).map_err(|e| e.to_string())?;
        builder
            .add_shared_topic(format!("topic-{i}"), Arc::new(block))
            .map_err(|e| e.to_string())?;
    }
    let groups: Vec<usize> = (0..TOPICS).collect();
    let index = builder
        .build()
        .with_groups(&groups)
        .with_scoring(Scoring::ROUTING_DEFAULT)
        .with_contrast(Scoring::ROUTING_CONTRAST);
    let t = Instant::now();
    let calibration = index.calibrate();
    println!(
        "calibration at this size: {} in {:.0} ms",
        calibration.describe(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    let queries: Vec<Vec<f32>> = prompts
        .iter()
        .take(n)
        .map(|p| encoder.encode(p))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut scoring = Vec::with_capacity(queries.len() * 3);
    for _ in 0..3 {
        for q in &queries {
            let t = Instant::now();
            let scores = index.score(q).map_err(|e| e.to_string())?;
            std::hint::black_box(scores.best());
            scoring.push(t.elapsed());
        }
    }
    scoring.sort();
    println!(
        "scoring a prompt against {} utterances in-process: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        index.utterance_count(),
        percentile(&scoring, 0.5),
        percentile(&scoring, 0.99),
        percentile(&scoring, 1.0)
    );
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}
