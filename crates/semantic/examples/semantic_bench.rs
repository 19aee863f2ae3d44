//! Accuracy and speed benchmark for semantic routing (not part of `cargo test`).
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release -p switchyard-semantic --example semantic_bench -- [OPTIONS]
//!
//!   --mode accuracy|speed|batch|all  default all (batch: MiniLM cost per
//!                                  batch size, not included in all)
//!   --encoder minilm|static|both   default both
//!   --models DIR                   default <repo>/models
//!   --data DIR                     default <repo>/../shared/data/banking77
//!   --limit N                      utterances per topic, default run (default 10)
//!   --raised-limit N               utterances per topic, raised run (default 1000)
//!   --requests N                   decisions per throughput run (default 2000)
//!   --sequential N                 decisions per sequential run (default 200)
//!   --concurrency N                concurrent requests (default 16)
//!   --threads N                    MiniLM forward-pass threads (default 1)
//!   --workers N                    EmbeddingService worker threads (default 1)
//! ```
//!
//! Accuracy: six topics made of BANKING77 intents (see [`TOPICS`]); the other
//! intents are held out as out-of-scope prompts. Routing accuracy is measured
//! on the in-scope test split (best topic, no threshold); fallback rates at
//! several thresholds on in-scope and out-of-scope test prompts.
//!
//! Speed: one decision = embed the prompt + score the topic index. Single
//! decisions run sequentially through `EmbeddingService` (cache off); the
//! throughput run sends `--concurrency` requests at a time through it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_semantic::{
    EmbeddingService, Encoder, MiniLmEncoder, MiniLmOptions, ServiceConfig, StaticEncoder,
    TopicIndex,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Six coherent groups of BANKING77 intents. Every other intent (44 of 77)
/// is out of scope.
const TOPICS: &[(&str, &[&str])] = &[
    (
        "card_delivery",
        &[
            "card_arrival",
            "card_delivery_estimate",
            "order_physical_card",
            "get_physical_card",
            "getting_spare_card",
        ],
    ),
    (
        "top_up",
        &[
            "top_up_failed",
            "top_up_reverted",
            "pending_top_up",
            "top_up_limits",
            "automatic_top_up",
            "topping_up_by_card",
            "verify_top_up",
            "top_up_by_bank_transfer_charge",
            "top_up_by_card_charge",
            "top_up_by_cash_or_cheque",
        ],
    ),
    (
        "identity",
        &[
            "verify_my_identity",
            "unable_to_verify_identity",
            "why_verify_identity",
            "verify_source_of_funds",
        ],
    ),
    (
        "security",
        &[
            "lost_or_stolen_card",
            "lost_or_stolen_phone",
            "compromised_card",
            "pin_blocked",
            "change_pin",
            "passcode_forgotten",
        ],
    ),
    (
        "currency_exchange",
        &[
            "exchange_rate",
            "exchange_via_app",
            "exchange_charge",
            "fiat_currency_support",
            "card_payment_wrong_exchange_rate",
            "wrong_exchange_rate_for_cash_withdrawal",
        ],
    ),
    (
        "cash_withdrawal",
        &[
            "atm_support",
            "cash_withdrawal_charge",
            "cash_withdrawal_not_recognised",
            "declined_cash_withdrawal",
            "pending_cash_withdrawal",
            "wrong_amount_of_cash_received",
            "card_swallowed",
        ],
    ),
];

const THRESHOLDS: &[f32] = &[0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

struct Args {
    mode: String,
    encoder: String,
    models: PathBuf,
    data: PathBuf,
    limit: usize,
    raised_limit: usize,
    requests: usize,
    sequential: usize,
    concurrency: usize,
    threads: usize,
    workers: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        mode: "all".into(),
        encoder: "both".into(),
        models: root.join("models"),
        data: root.join("../shared/data/banking77"),
        limit: 10,
        raised_limit: 1000,
        requests: 2000,
        sequential: 200,
        concurrency: 16,
        threads: MiniLmOptions::default().threads,
        workers: ServiceConfig::default().workers,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => args.mode = value()?,
            "--encoder" => args.encoder = value()?,
            "--models" => args.models = value()?.into(),
            "--data" => args.data = value()?.into(),
            "--limit" => args.limit = value()?.parse()?,
            "--raised-limit" => args.raised_limit = value()?.parse()?,
            "--requests" => args.requests = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--sequential" => args.sequential = value()?.parse()?,
            "--threads" => args.threads = value()?.parse()?,
            "--workers" => args.workers = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// Minimal CSV reader for `text,category` files (quoted fields, `""` escapes).
fn read_csv(path: &Path) -> Result<Vec<(String, String)>, BoxError> {
    let data = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = data.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            ('\n', false) => {
                fields.push(std::mem::take(&mut field));
                if let [text, category] = &fields[..] {
                    rows.push((text.trim().to_owned(), category.trim().to_owned()));
                }
                fields.clear();
            }
            ('\r', false) => {}
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        if let [text, category] = &fields[..] {
            rows.push((text.trim().to_owned(), category.trim().to_owned()));
        }
    }
    if rows
        .first()
        .is_some_and(|(t, c)| t == "text" && c == "category")
    {
        rows.remove(0);
    }
    Ok(rows)
}

fn topic_of() -> HashMap<&'static str, &'static str> {
    TOPICS
        .iter()
        .flat_map(|(topic, intents)| intents.iter().map(move |i| (*i, *topic)))
        .collect()
}

/// Up to `limit` training utterances per topic, taken round-robin over the
/// topic's intents (in file order) so every intent is represented.
fn training_set(train: &[(String, String)], limit: usize) -> Vec<(String, Vec<String>)> {
    TOPICS
        .iter()
        .map(|(topic, intents)| {
            let per_intent: Vec<Vec<&String>> = intents
                .iter()
                .map(|i| {
                    train
                        .iter()
                        .filter(|(_, c)| c == i)
                        .map(|(t, _)| t)
                        .collect()
                })
                .collect();
            let mut picked = Vec::new();
            let mut round = 0;
            while picked.len() < limit && per_intent.iter().any(|v| round < v.len()) {
                for v in &per_intent {
                    if picked.len() < limit
                        && let Some(t) = v.get(round)
                    {
                        picked.push((*t).clone());
                    }
                }
                round += 1;
            }
            ((*topic).to_owned(), picked)
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn load_encoder(name: &str, models: &Path, threads: usize) -> Result<Arc<dyn Encoder>, BoxError> {
    let start = Instant::now();
    let enc: Arc<dyn Encoder> = match name {
        "minilm" => Arc::new(MiniLmEncoder::load_with(
            &models.join("all-MiniLM-L6-v2"),
            MiniLmOptions {
                threads,
                ..MiniLmOptions::default()
            },
        )?),
        "static" => Arc::new(StaticEncoder::load(&models.join("static"))?),
        other => return Err(format!("unknown encoder {other}").into()),
    };
    println!(
        "\n## {} (dim {}), loaded in {} ms",
        enc.name(),
        enc.dim(),
        ms(start.elapsed())
    );
    Ok(enc)
}

fn accuracy(
    enc: &Arc<dyn Encoder>,
    train: &[(String, String)],
    test: &[(String, String)],
    limits: &[usize],
) -> Result<(), BoxError> {
    let topics = topic_of();
    let in_scope: Vec<(&str, &str)> = test
        .iter()
        .filter_map(|(t, c)| topics.get(c.as_str()).map(|topic| (t.as_str(), *topic)))
        .collect();
    let out_scope: Vec<&str> = test
        .iter()
        .filter(|(_, c)| !topics.contains_key(c.as_str()))
        .map(|(t, _)| t.as_str())
        .collect();
    println!(
        "\ntest split: {} in-scope prompts, {} out-of-scope prompts",
        in_scope.len(),
        out_scope.len()
    );

    // Encode the test prompts once (batched; same vectors as one by one).
    let start = Instant::now();
    let texts: Vec<&str> = in_scope
        .iter()
        .map(|(t, _)| *t)
        .chain(out_scope.iter().copied())
        .collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        vectors.extend(enc.encode_batch(chunk)?);
    }
    let per_text = start.elapsed() / texts.len() as u32;
    println!(
        "encoded test split in batches of 64: {} ms per prompt",
        ms(per_text)
    );
    let (in_vecs, out_vecs) = vectors.split_at(in_scope.len());

    for &limit in limits {
        let set = training_set(train, limit);
        let n_utt: usize = set.iter().map(|(_, u)| u.len()).sum();
        let start = Instant::now();
        let index = TopicIndex::encode(
            enc.as_ref(),
            set.iter().map(|(l, u)| (l.clone(), u.clone())),
        )?;
        let build = start.elapsed();

        let mut correct = 0;
        let mut in_best = Vec::with_capacity(in_vecs.len());
        let mut score_time = Duration::ZERO;
        for (v, (_, topic)) in in_vecs.iter().zip(&in_scope) {
            let t0 = Instant::now();
            let best = index.score(v)?.best().ok_or("empty index")?;
            score_time += t0.elapsed();
            if best.label == *topic {
                correct += 1;
            }
            in_best.push((best.label == *topic, best.score));
        }
        let out_best: Vec<f32> = out_vecs
            .iter()
            .map(|v| {
                index
                    .score(v)
                    .map(|s| s.best().map_or(f32::NEG_INFINITY, |b| b.score))
            })
            .collect::<Result<_, _>>()?;

        println!(
            "\n### {limit} utterances per topic ({n_utt} in index, built in {} ms; scoring {} µs per query)\n",
            ms(build),
            format_args!(
                "{:.1}",
                score_time.as_secs_f64() * 1e6 / in_vecs.len() as f64
            )
        );
        println!(
            "in-scope routing accuracy (best topic, no threshold): **{:.1}%** ({correct}/{})\n",
            100.0 * correct as f64 / in_vecs.len() as f64,
            in_vecs.len()
        );
        println!(
            "| threshold | in-scope routed correctly | in-scope routed wrongly | in-scope fallback | out-of-scope fallback (want high) |"
        );
        println!("|---|---|---|---|---|");
        for &th in THRESHOLDS {
            let n = in_best.len() as f64;
            let right = in_best.iter().filter(|(ok, s)| *ok && *s >= th).count() as f64;
            let wrong = in_best.iter().filter(|(ok, s)| !*ok && *s >= th).count() as f64;
            let oos_fb = out_best.iter().filter(|s| **s < th).count() as f64;
            println!(
                "| {th:.1} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
                100.0 * right / n,
                100.0 * wrong / n,
                100.0 * (n - right - wrong) / n,
                100.0 * oos_fb / out_best.len() as f64
            );
        }
    }
    Ok(())
}

/// A prompt of about `tokens` tokens made of consecutive test prompts.
fn prompt_of_length(
    enc: &MiniLmEncoder,
    pool: &[&str],
    start: usize,
    tokens: usize,
) -> Result<String, BoxError> {
    let mut text = String::new();
    let mut i = start;
    loop {
        let next = pool[i % pool.len()];
        let candidate = if text.is_empty() {
            next.to_owned()
        } else {
            format!("{text} {next}")
        };
        if enc.token_count(&candidate)? > tokens && !text.is_empty() {
            break;
        }
        text = candidate;
        i += 1;
        if enc.token_count(&text)? >= tokens {
            break;
        }
    }
    Ok(text)
}

async fn speed(
    enc: Arc<dyn Encoder>,
    minilm_tokenizer: Option<&MiniLmEncoder>,
    train: &[(String, String)],
    test: &[(String, String)],
    args: &Args,
) -> Result<(), BoxError> {
    let set = training_set(train, args.limit);
    let index = Arc::new(TopicIndex::encode(enc.as_ref(), set)?);
    let no_cache = ServiceConfig {
        cache_capacity: 0,
        workers: args.workers,
        ..ServiceConfig::default()
    };
    let pool: Vec<&str> = test.iter().map(|(t, _)| t.as_str()).collect();

    // Prompt sets: real test prompts, and prompts built up to N tokens.
    let mut sets: Vec<(String, Vec<String>)> = vec![(
        "BANKING77 test prompts".into(),
        pool.iter()
            .step_by(7)
            .take(300)
            .map(|s| (*s).to_owned())
            .collect(),
    )];
    if let Some(tok) = minilm_tokenizer {
        let lens: Vec<usize> = sets[0]
            .1
            .iter()
            .map(|t| tok.token_count(t))
            .collect::<Result<_, _>>()?;
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        sets[0].0 = format!(
            "BANKING77 test prompts (mean {mean:.0} tokens, max {})",
            lens.iter().max().unwrap_or(&0)
        );
        for tokens in [32, 64, 128] {
            let prompts = (0..400)
                .map(|i| prompt_of_length(tok, &pool, i * 7, tokens))
                .collect::<Result<Vec<_>, _>>()?;
            sets.push((format!("~{tokens}-token prompts"), prompts));
        }
    }

    println!(
        "\nMiniLM threads per forward pass: {}, service workers: {}",
        args.threads, args.workers
    );
    println!(
        "\n### speed (one decision = embed through EmbeddingService + score {} topics)\n",
        index.topic_count()
    );
    println!(
        "| prompts | sequential p50 ms | sequential p99 ms | {} concurrent: decisions/s | concurrent p50 ms | concurrent p99 ms | mean batch | CPU ms per decision |",
        args.concurrency
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, prompts) in &sets {
        let svc = Arc::new(EmbeddingService::new(Arc::clone(&enc), no_cache)?);
        // warm-up
        for p in prompts.iter().take(5) {
            svc.embed(p).await?;
        }
        let mut seq = Vec::with_capacity(prompts.len());
        for p in prompts
            .iter()
            .step_by(prompts.len().div_ceil(args.sequential).max(1))
        {
            let t0 = Instant::now();
            let v = svc.embed(p).await?;
            let best = index.best(&v)?;
            seq.push(t0.elapsed());
            std::hint::black_box(best);
        }
        seq.sort();

        let svc = Arc::new(EmbeddingService::new(Arc::clone(&enc), no_cache)?);
        let prompts = Arc::new(prompts.clone());
        let concurrency = args.concurrency;
        let per_task = args.requests.div_ceil(concurrency);
        let start = Instant::now();
        let cpu_start = cpu_time();
        let mut tasks = Vec::new();
        for task in 0..args.concurrency {
            let (svc, index, prompts) =
                (Arc::clone(&svc), Arc::clone(&index), Arc::clone(&prompts));
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    // Round-robin over the pool: the requests in flight at
                    // any moment are distinct texts (no in-batch dedup).
                    let p = &prompts[(i * concurrency + task) % prompts.len()];
                    let t0 = Instant::now();
                    let v = svc.embed(p).await?;
                    std::hint::black_box(index.best(&v)?);
                    lat.push(t0.elapsed());
                }
                Ok::<_, BoxError>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let wall = start.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_start);
        lat.sort();
        let stats = svc.stats();
        println!(
            "| {label} | {} | {} | {:.0} | {} | {} | {:.1} | {:.2} |",
            ms(percentile(&seq, 0.5)),
            ms(percentile(&seq, 0.99)),
            lat.len() as f64 / wall.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            stats.encoded_texts as f64 / stats.batches.max(1) as f64,
            cpu.as_secs_f64() * 1000.0 / lat.len() as f64
        );
    }
    Ok(())
}

/// MiniLM `encode_batch` cost by prompt length and batch size, without the
/// service: what batching buys per text.
fn batch_cost(enc: &MiniLmEncoder, test: &[(String, String)]) -> Result<(), BoxError> {
    let pool: Vec<&str> = test.iter().map(|(t, _)| t.as_str()).collect();
    println!(
        "\n### MiniLM encode_batch cost (threads per pass: {})\n",
        enc.options().threads
    );
    println!("| prompt tokens | batch | ms per batch | ms per text | CPU ms per text |");
    println!("|---|---|---|---|---|");
    for tokens in [16, 32, 64, 128] {
        for batch in [1, 4, 16, 32] {
            let prompts = (0..batch)
                .map(|i| prompt_of_length(enc, &pool, 100 + i * 11, tokens))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            enc.encode_batch(&refs)?;
            let rounds = (64 / batch).max(3);
            let (t0, c0) = (Instant::now(), cpu_time());
            for _ in 0..rounds {
                std::hint::black_box(enc.encode_batch(&refs)?);
            }
            let wall = t0.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
            let cpu = cpu_time().saturating_sub(c0).as_secs_f64() * 1000.0 / rounds as f64;
            println!(
                "| ~{tokens} | {batch} | {wall:.1} | {:.2} | {:.2} |",
                wall / batch as f64,
                cpu / batch as f64
            );
        }
    }
    Ok(())
}

/// CPU time used by this process so far (all threads, user + system), from
/// `/proc/self/stat` (clock ticks of 10 ms). Unlike wall-clock figures it is
/// not inflated by other processes waiting for the same cores.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 of the whole line.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// `/proc/loadavg`'s first three fields: other processes on the machine
/// skew the figures, so every report shows how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let train = read_csv(&args.data.join("banking77_train.csv"))?;
    let test = read_csv(&args.data.join("banking77_test.csv"))?;
    println!("load average at start: {}", load_average());
    println!(
        "semantic_bench: {} train / {} test utterances, {} topics, cores: {}",
        train.len(),
        test.len(),
        TOPICS.len(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let encoders: &[&str] = match args.encoder.as_str() {
        "both" => &["minilm", "static"],
        "minilm" => &["minilm"],
        "static" => &["static"],
        other => return Err(format!("unknown --encoder {other}").into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The MiniLM tokenizer measures prompt lengths for the speed prompt sets.
    let tokenizer = if args.mode != "accuracy" {
        Some(MiniLmEncoder::load_with(
            &args.models.join("all-MiniLM-L6-v2"),
            MiniLmOptions {
                threads: args.threads,
                ..MiniLmOptions::default()
            },
        )?)
    } else {
        None
    };
    if args.mode == "batch" {
        if let Some(enc) = &tokenizer {
            batch_cost(enc, &test)?;
        }
        println!("\nload average after: {}", load_average());
        return Ok(());
    }
    for name in encoders {
        let enc = load_encoder(name, &args.models, args.threads)?;
        if args.mode == "accuracy" || args.mode == "all" {
            accuracy(&enc, &train, &test, &[args.limit, args.raised_limit])?;
        }
        if args.mode == "speed" || args.mode == "all" {
            runtime.block_on(speed(
                Arc::clone(&enc),
                tokenizer.as_ref(),
                &train,
                &test,
                &args,
            ))?;
        }
    }
    Ok(())
}
