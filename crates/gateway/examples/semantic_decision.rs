//! Gateway-level semantic decision benchmark: a real node (fake control plane, real HTTP)
//! serving a semantic proxy with a prompt guard (6 route topics × 10 utterances, 1 deny
//! topic), asked through the dry-run endpoint `POST /bank/_switchyard/route`: each call is
//! one full decision (HTTP, body parse, one embedding shared by the guard and routing,
//! scoring). Prompts are BANKING77 test sentences (short, well under 128 tokens), each sent
//! once per phase, so the prompt cache never answers; a last phase (MiniLM only) sends long
//! prompts of about 128 tokens (consecutive test sentences joined), one at a time.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release -p switchyard-gateway --example semantic_decision -- \
//!     [--encoder minilm|static] [--models DIR] [--data DIR] [--sequential 200] \
//!     [--requests 2000] [--concurrency 16] [--long 50] [--long-tokens 128]
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_gateway::{EncoderKind, Gateway, GatewayConfig};
use switchyard_model::{Auth, PromptGuard, Provider, RoutingStrategy, Topic};
use switchyard_testkit::FakeControlPlane;
use switchyard_testkit::snapshots::{proxy, route, snapshot};

struct Args {
    encoder: EncoderKind,
    models: PathBuf,
    data: PathBuf,
    sequential: usize,
    requests: usize,
    concurrency: usize,
    long: usize,
    long_tokens: usize,
}

fn parse_args() -> Result<Args, String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut a = Args {
        encoder: EncoderKind::MiniLm,
        models: repo.join("models"),
        data: repo.join("../shared/data/banking77"),
        sequential: 200,
        requests: 2000,
        concurrency: 16,
        long: 50,
        long_tokens: 128,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("bad number {v}"));
        match flag.as_str() {
            "--encoder" => {
                a.encoder = match v.as_str() {
                    "minilm" => EncoderKind::MiniLm,
                    "static" => EncoderKind::Static,
                    _ => return Err(format!("unknown encoder {v}")),
                }
            }
            "--models" => a.models = v.into(),
            "--data" => a.data = v.into(),
            "--sequential" => a.sequential = num(&v)?,
            "--requests" => a.requests = num(&v)?,
            "--concurrency" => a.concurrency = num(&v)?.max(1),
            "--long" => a.long = num(&v)?,
            "--long-tokens" => a.long_tokens = num(&v)?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// `(text, category)` rows of a BANKING77 CSV (quoted fields may hold commas, newlines and
/// `""` escapes).
fn read_csv(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut rows, mut fields, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, raw.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                if let [text, cat] = std::mem::take(&mut fields).as_slice() {
                    rows.push((text.trim().to_owned(), cat.trim().to_owned()));
                }
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    fields.push(field);
    if let [text, cat] = fields.as_slice()
        && !cat.is_empty()
    {
        rows.push((text.trim().to_owned(), cat.trim().to_owned()));
    }
    if rows.first().is_some_and(|(t, _)| t == "text") {
        rows.remove(0);
    }
    Ok(rows)
}

const TOPICS: [(&str, &[&str]); 6] = [
    (
        "card_delivery",
        &[
            "card_arrival",
            "card_delivery_estimate",
            "order_physical_card",
        ],
    ),
    (
        "top_up",
        &["top_up_failed", "pending_top_up", "top_up_limits"],
    ),
    (
        "identity",
        &[
            "verify_my_identity",
            "unable_to_verify_identity",
            "why_verify_identity",
        ],
    ),
    (
        "security",
        &["lost_or_stolen_card", "compromised_card", "pin_blocked"],
    ),
    (
        "currency_exchange",
        &["exchange_rate", "exchange_via_app", "exchange_charge"],
    ),
    (
        "cash_withdrawal",
        &[
            "atm_support",
            "cash_withdrawal_charge",
            "declined_cash_withdrawal",
        ],
    ),
];

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
            eprintln!("semantic_decision: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("semantic_decision: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("semantic_decision: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let train = read_csv(&args.data.join("banking77_train.csv"))?;
    let test = read_csv(&args.data.join("banking77_test.csv"))?;
    let mut routes = Vec::new();
    for (topic, intents) in TOPICS {
        let utterances: Vec<String> = train
            .iter()
            .filter(|(_, c)| intents.contains(&c.as_str()))
            .map(|(t, _)| t.clone())
            .take(10)
            .collect();
        let mut r = route(
            topic,
            Provider::OpenAiCompatible,
            "http://127.0.0.1:9/v1",
            Auth::None,
        );
        r.target_model = Some(format!("{topic}-model"));
        r.topics = vec![
            Topic {
                name: topic.to_owned(),
                utterances,
            }
            .into(),
        ];
        routes.push(r);
    }
    let mut p = proxy("bank", "/bank", routes, Some(("top_up", None)));
    p.spec.routing.strategy = RoutingStrategy::Semantic;
    p.spec.routing.threshold = Some(0.5);
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
    let cp = FakeControlPlane::start().await.map_err(|e| e.to_string())?;
    cp.push(snapshot("bench", 1, vec![p])).await;
    let cache = std::env::temp_dir().join(format!("switchyard-semdec-{}", std::process::id()));
    let mut config = GatewayConfig::new(cp.url(), "bench", "token", &cache);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.encoder_kind = args.encoder;
    config.model_dir = Some(args.models.join(match args.encoder {
        EncoderKind::MiniLm => "all-MiniLM-L6-v2",
        EncoderKind::Static => "static",
    }));
    let gw = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let ack = cp
        .wait_for_ack(1, Duration::from_secs(60))
        .await
        .ok_or("no ack")?;
    if !ack.applied {
        return Err(format!("snapshot refused: {}", ack.error));
    }
    let url = format!("http://{}/bank/_switchyard/route", gw.local_addr());
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let prompts: Arc<Vec<String>> = Arc::new(test.into_iter().map(|(t, _)| t).collect());
    let decide = |client: reqwest::Client, url: String, prompt: String| async move {
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
    };
    // Warm-up (connections, allocator), on prompts not measured later.
    for p in prompts.iter().rev().take(20) {
        decide(client.clone(), url.clone(), p.clone()).await?;
    }
    // Sequential: one decision at a time.
    let mut lat = Vec::with_capacity(args.sequential);
    for p in prompts.iter().take(args.sequential) {
        let t = Instant::now();
        decide(client.clone(), url.clone(), p.clone()).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "encoder {:?}: sequential {} decisions: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        args.encoder,
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );
    // Concurrent: `concurrency` clients over distinct prompts.
    let offset = args.sequential;
    let total = args.requests.min(prompts.len().saturating_sub(offset + 20));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, prompts, next) = (
            client.clone(),
            url.clone(),
            Arc::clone(&prompts),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(lat);
                }
                let t = Instant::now();
                decide(client.clone(), url.clone(), prompts[offset + i].clone()).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    println!(
        "encoder {:?}: {} decisions at concurrency {}: {:.0} decisions/s, p50 {:.2} ms, p99 {:.2} ms",
        args.encoder,
        all.len(),
        args.concurrency,
        all.len() as f64 / secs,
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    if args.encoder == EncoderKind::MiniLm && args.long > 0 {
        // Long prompts: the words of consecutive test sentences, up to `long_tokens` tokens
        // (counted by the model's own tokenizer, [CLS] and [SEP] included).
        let tokenizer =
            switchyard_semantic::MiniLmEncoder::load(&args.models.join("all-MiniLM-L6-v2"))
                .map_err(|e| e.to_string())?;
        let mut long = Vec::with_capacity(args.long);
        let mut words = prompts[offset + total..]
            .iter()
            .chain(prompts.iter())
            .flat_map(|p| p.split_whitespace())
            .cycle();
        for _ in 0..args.long {
            // Word by word up to the count, so each prompt is within a token or two of it.
            let mut text = String::new();
            for word in words.by_ref() {
                let candidate = if text.is_empty() {
                    word.to_owned()
                } else {
                    format!("{text} {word}")
                };
                let count = tokenizer
                    .token_count(&candidate)
                    .map_err(|e| e.to_string())?;
                if count > args.long_tokens {
                    break;
                }
                text = candidate;
            }
            long.push(text);
        }
        let tokens: usize = long
            .iter()
            .map(|t| tokenizer.token_count(t).unwrap_or(0))
            .sum::<usize>()
            / long.len();
        let mut lat = Vec::with_capacity(long.len());
        for p in long {
            let t = Instant::now();
            decide(client.clone(), url.clone(), p).await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "encoder {:?}: sequential {} decisions on ~{tokens}-token prompts: p50 {:.2} ms, p90 {:.2} ms",
            args.encoder,
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.9)
        );
    }
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}
