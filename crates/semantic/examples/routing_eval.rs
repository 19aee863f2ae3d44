//! Routing accuracy of the scoring rules and thresholds (not part of `cargo test`).
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release -p switchyard-semantic --example routing_eval -- [OPTIONS]
//!
//!   --encoder minilm|static|DIR   default minilm (DIR: a BERT model directory)
//!   --models DIR                  default <repo>/models
//!   --data DIR                    default <repo>/../shared/data
//!   --sets banking77[,clinc150]   default: every set found under --data
//!   --limits 10,1000              utterances per topic (default 10,1000)
//!   --variants                    also compare scoring variants (k, step)
//! ```
//!
//! A set is six topics, each a group of the data set's intents; prompts of every other
//! intent are out of scope. Training utterances (the topics' utterances) come from the
//! train split, round-robin over a topic's intents; prompts from the test split. Nothing
//! about the test prompts is used to build or calibrate an index.
//!
//! For each set and size it reports, per rule and threshold: in-scope accuracy (routed to
//! the right topic at or above the threshold), out-of-scope fallback (below it), and
//! overall accuracy (both successes over all prompts). "Best fixed" is the oracle: the
//! threshold (0.01 steps) with the best overall accuracy on the test prompts themselves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use switchyard_semantic::{
    Calibration, Encoder, MiniLmEncoder, Scoring, StaticEncoder, TopicIndex, TopicVectors,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A labelled intent set: six topics of intents, train and test rows `(text, intent)`.
struct DataSet {
    name: &'static str,
    topics: Vec<(String, Vec<String>)>,
    train: Vec<(String, String)>,
    test: Vec<(String, String)>,
}

const BANKING77_TOPICS: &[(&str, &[&str])] = &[
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

struct Args {
    encoder: String,
    models: PathBuf,
    data: PathBuf,
    sets: Option<Vec<String>>,
    limits: Vec<usize>,
    variants: bool,
}

fn parse_args() -> Result<Args, BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        encoder: "minilm".into(),
        models: root.join("models"),
        data: root.join("../shared/data"),
        sets: None,
        limits: vec![10, 1000],
        variants: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--encoder" => args.encoder = value()?,
            "--models" => args.models = value()?.into(),
            "--data" => args.data = value()?.into(),
            "--sets" => args.sets = Some(value()?.split(',').map(str::to_owned).collect()),
            "--limits" => {
                args.limits = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--variants" => args.variants = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// Minimal CSV reader for `text,label` files (quoted fields, `""` escapes, header skipped).
fn read_csv(path: &Path) -> Result<Vec<(String, String)>, BoxError> {
    let data = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = data.chars().peekable();
    let flush = |fields: &mut Vec<String>, rows: &mut Vec<(String, String)>| {
        if let [text, label] = &fields[..] {
            rows.push((text.trim().to_owned(), label.trim().to_owned()));
        }
        fields.clear();
    };
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
                flush(&mut fields, &mut rows);
            }
            ('\r', false) => {}
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        flush(&mut fields, &mut rows);
    }
    rows.remove(0);
    Ok(rows)
}

fn banking77(data: &Path) -> Result<DataSet, BoxError> {
    let dir = data.join("banking77");
    Ok(DataSet {
        name: "BANKING77",
        topics: BANKING77_TOPICS
            .iter()
            .map(|(t, i)| (t.to_string(), i.iter().map(|s| s.to_string()).collect()))
            .collect(),
        train: read_csv(&dir.join("banking77_train.csv"))?,
        test: read_csv(&dir.join("banking77_test.csv"))?,
    })
}

/// Up to `limit` training utterances per topic, round-robin over its intents (file order).
fn training_set(set: &DataSet, limit: usize) -> Vec<(String, Vec<String>)> {
    set.topics
        .iter()
        .map(|(topic, intents)| {
            let per_intent: Vec<Vec<&String>> = intents
                .iter()
                .map(|i| {
                    set.train
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
            (topic.clone(), picked)
        })
        .collect()
}

fn load_encoder(name: &str, models: &Path) -> Result<Arc<dyn Encoder>, BoxError> {
    Ok(match name {
        "minilm" => Arc::new(MiniLmEncoder::load(&models.join("all-MiniLM-L6-v2"))?),
        "static" => Arc::new(StaticEncoder::load(&models.join("static"))?),
        dir => Arc::new(MiniLmEncoder::load(Path::new(dir))?),
    })
}

fn encode_all(enc: &dyn Encoder, texts: &[&str]) -> Result<HashMap<String, Vec<f32>>, BoxError> {
    let mut out = HashMap::with_capacity(texts.len());
    let mut todo: Vec<&str> = texts.to_vec();
    todo.sort_unstable();
    todo.dedup();
    for chunk in todo.chunks(64) {
        for (t, v) in chunk.iter().zip(enc.encode_batch(chunk)?) {
            out.insert((*t).to_owned(), v);
        }
    }
    Ok(out)
}

/// One prompt's outcome under a rule: the best topic and its score.
struct Outcome {
    right: bool,
    score: f32,
}

struct Results {
    in_scope: Vec<Outcome>,
    out_scope: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Row {
    threshold: f32,
    in_scope: f64,
    fallback: f64,
    overall: f64,
}

impl Results {
    fn at(&self, threshold: f32) -> Row {
        let right = self
            .in_scope
            .iter()
            .filter(|o| o.right && o.score >= threshold)
            .count();
        let fb = self.out_scope.iter().filter(|s| **s < threshold).count();
        let n_in = self.in_scope.len().max(1) as f64;
        let n_out = self.out_scope.len().max(1) as f64;
        Row {
            threshold,
            in_scope: 100.0 * right as f64 / n_in,
            fallback: 100.0 * fb as f64 / n_out,
            overall: 100.0 * (right + fb) as f64 / (n_in + n_out),
        }
    }

    fn best(&self) -> Row {
        (0..=100)
            .map(|i| self.at(i as f32 / 100.0))
            .fold(None::<Row>, |best, r| match best {
                Some(b) if b.overall >= r.overall => Some(b),
                _ => Some(r),
            })
            .unwrap_or(self.at(0.5))
    }
}

fn evaluate(
    index: &TopicIndex,
    vectors: &HashMap<String, Vec<f32>>,
    in_scope: &[(&str, usize)],
    out_scope: &[&str],
) -> Result<Results, BoxError> {
    let mut r = Results {
        in_scope: Vec::with_capacity(in_scope.len()),
        out_scope: Vec::with_capacity(out_scope.len()),
    };
    for (text, topic) in in_scope {
        let best = index.best(&vectors[*text])?.ok_or("empty index")?;
        r.in_scope.push(Outcome {
            right: best.topic == *topic,
            score: best.score,
        });
    }
    for text in out_scope {
        let best = index.best(&vectors[*text])?.ok_or("empty index")?;
        r.out_scope.push(best.score);
    }
    Ok(r)
}

fn print_row(label: &str, row: Row) {
    println!(
        "| {label} | {:.2} | {:.1}% | {:.1}% | {:.1}% |",
        row.threshold, row.in_scope, row.fallback, row.overall
    );
}

fn run_set(enc: &dyn Encoder, set: &DataSet, args: &Args) -> Result<(), BoxError> {
    let topic_of: HashMap<&str, usize> = set
        .topics
        .iter()
        .enumerate()
        .flat_map(|(t, (_, intents))| intents.iter().map(move |i| (i.as_str(), t)))
        .collect();
    let in_scope: Vec<(&str, usize)> = set
        .test
        .iter()
        .filter_map(|(text, intent)| topic_of.get(intent.as_str()).map(|t| (text.as_str(), *t)))
        .collect();
    let out_scope: Vec<&str> = set
        .test
        .iter()
        .filter(|(_, intent)| !topic_of.contains_key(intent.as_str()))
        .map(|(t, _)| t.as_str())
        .collect();
    let max_limit = args.limits.iter().copied().max().unwrap_or(10);
    let largest = training_set(set, max_limit);
    let mut texts: Vec<&str> = in_scope.iter().map(|(t, _)| *t).collect();
    texts.extend(out_scope.iter().copied());
    texts.extend(
        largest
            .iter()
            .flat_map(|(_, u)| u.iter().map(String::as_str)),
    );
    let start = Instant::now();
    let vectors = encode_all(enc, &texts)?;
    println!(
        "\n## {} ({}): {} in-scope and {} out-of-scope test prompts; {} texts encoded in {:.1} s\n",
        set.name,
        enc.name(),
        in_scope.len(),
        out_scope.len(),
        vectors.len(),
        start.elapsed().as_secs_f64()
    );

    for &limit in &args.limits {
        let training = training_set(set, limit);
        let mut builder = TopicIndex::builder(enc.dim());
        for (label, utterances) in &training {
            let rows: Vec<&Vec<f32>> = utterances.iter().map(|u| &vectors[u]).collect();
            builder
                .add_shared_topic(label.clone(), Arc::new(TopicVectors::new(enc.dim(), rows)?))?;
        }
        let nearest = builder.build();
        let n_utt = nearest.utterance_count();
        let groups: Vec<usize> = (0..nearest.topic_count()).collect();
        let nearest = nearest.with_groups(&groups);
        let new_rule = nearest
            .clone()
            .with_scoring(Scoring::ROUTING_DEFAULT)
            .with_contrast(Scoring::ROUTING_CONTRAST);

        let t0 = Instant::now();
        let calibrated = new_rule.calibrate();
        let calibration_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let old_calibrated = nearest.calibrate();

        let old = evaluate(&nearest, &vectors, &in_scope, &out_scope)?;
        let new = evaluate(&new_rule, &vectors, &in_scope, &out_scope)?;
        let old_best = old.best();
        let new_best = new.best();
        let default_row = new.at(calibrated.threshold);

        println!(
            "### {} — {limit} utterances per topic ({n_utt} in the index; calibration: {}, {:.1} ms)\n",
            set.name,
            calibrated.describe(),
            calibration_ms
        );
        println!(
            "| rule and threshold | threshold | in-scope accuracy | out-of-scope fallback | overall accuracy |"
        );
        println!("|---|---|---|---|---|");
        print_row(
            "old rule (nearest utterance), best fixed threshold",
            old_best,
        );
        print_row("old rule, 0.5 (the old default)", old.at(0.5));
        print_row(
            "**new default**: new rule, calibrated (no threshold set)",
            default_row,
        );
        print_row("new rule, its best fixed threshold", new_best);
        print_row("new rule, 0.5", new.at(0.5));
        print_row(
            "old rule, calibrated threshold",
            old.at(old_calibrated.threshold),
        );
        println!(
            "\nnew default vs old best: {:+.1} points; new rule's best vs old best: {:+.1} points; new default vs old 0.5: {:+.1} points\n",
            default_row.overall - old_best.overall,
            new_best.overall - old_best.overall,
            default_row.overall - old.at(0.5).overall
        );

        if args.variants {
            println!(
                "| scoring | best fixed: threshold | overall | calibrated: threshold | overall |"
            );
            println!("|---|---|---|---|---|");
            let mut rules = vec![Scoring::Nearest];
            for k in [2, 3, 5, 10] {
                for step in [0.0, 0.02, 0.05, 0.1, 1.0] {
                    rules.push(Scoring::NearestMean { k, step });
                }
            }
            for k in [3, 5, 10, 20, 40] {
                rules.push(Scoring::Neighbours { k });
            }
            let mut combos: Vec<(Scoring, f32)> = rules.into_iter().map(|r| (r, 0.0)).collect();
            for contrast in [0.25, 0.5, 0.75, 1.0] {
                combos.push((Scoring::Nearest, contrast));
                combos.push((Scoring::ROUTING_DEFAULT, contrast));
                combos.push((Scoring::NearestMean { k: 5, step: 0.02 }, contrast));
            }
            for (rule, contrast) in combos {
                if rule == (Scoring::NearestMean { k: 2, step: 0.0 }) {
                    continue;
                }
                let index = nearest.clone().with_scoring(rule).with_contrast(contrast);
                let r = evaluate(&index, &vectors, &in_scope, &out_scope)?;
                let c: Calibration = index.calibrate();
                let best = r.best();
                let cal = r.at(c.threshold);
                println!(
                    "| {}{} | {:.2} | {:.1}% | {:.3} | {:.1}% |",
                    rule.describe(),
                    if contrast > 0.0 {
                        format!(", less {contrast} x the best other topic")
                    } else {
                        String::new()
                    },
                    best.threshold,
                    best.overall,
                    c.threshold,
                    cal.overall
                );
            }
            println!();
        }
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let enc = load_encoder(&args.encoder, &args.models)?;
    let mut sets = Vec::new();
    let wanted = |name: &str| {
        args.sets
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x.eq_ignore_ascii_case(name)))
    };
    if wanted("banking77") {
        sets.push(banking77(&args.data)?);
    }
    if sets.is_empty() {
        return Err("no data set selected".into());
    }
    for set in &sets {
        run_set(enc.as_ref(), set, &args)?;
    }
    Ok(())
}
