//! Semantic routing and the prompt guards (semantic deny topics, regex patterns).
//!
//! * [`SemanticEngine`] is node-wide: the in-process sentence encoder (loaded once at start
//!   from `--model-dir`), its batching [`EmbeddingService`] for request prompts, and
//!   long-lived caches of utterance vectors so unchanged utterances are not re-encoded when a
//!   new snapshot is compiled.
//! * [`ProxySemantic`] is compiled per proxy with the routing table: one [`TopicIndex`] over
//!   the routes' topics, one over the deny topics, the compiled regex patterns, and the
//!   embedder to use (in-process or a remote `/embeddings` service).
//! * [`ProxySemantic::evaluate`] is the request path's single entry point: regex guard, then
//!   one embedding of the prompt shared by the semantic guard and routing.
//!
//! Compilation runs on a blocking thread (the caller wraps it in `spawn_blocking`); a proxy
//! that needs embeddings on a node without an encoder fails compilation, so the snapshot is
//! NACKed whole.

pub(crate) mod dry_run;
pub(crate) mod prompt;
pub(crate) mod remote;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use switchyard_model::{
    GuardScope, LibraryTopic, ProxySpec, RoutingScoring, RoutingStrategy, SemanticService,
    TopicSource,
};
use switchyard_semantic::{
    Calibration, EmbeddingCache, EmbeddingService, Encoder, MiniLmEncoder, MiniLmOptions, Scoring,
    ServiceConfig, StaticEncoder, TopicIndex, TopicVectors, Truncation,
};

use crate::error::ProxyError;
use crate::routing::{self, Choice, Decision, FallbackReason};
use crate::table::CompiledProxy;
use remote::{RemoteCaches, RemoteEmbedder};
use switchyard_llm::InboundFormat;

/// `texts` joined in order into at most `max` groups (each group's texts separated by
/// newlines), so a long conversation costs a bounded number of embeddings.
fn group(texts: Vec<String>, max: usize) -> Vec<String> {
    if texts.len() <= max {
        return texts;
    }
    let per = texts.len().div_ceil(max);
    texts.chunks(per).map(|c| c.join("\n")).collect()
}

/// Which in-process encoder a node loads from its model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderKind {
    /// all-MiniLM-L6-v2 (384 dims; accurate, a few ms per prompt).
    #[default]
    MiniLm,
    /// A model2vec static model (64 dims; µs per prompt, less accurate).
    Static,
}

/// Why the model directory could not be used (a startup error).
#[derive(Debug, thiserror::Error)]
#[error("cannot load the sentence encoder from {}: {reason}", path.display())]
pub struct ModelLoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// Loads an encoder from `dir`. Long prompts keep their **end** (see the README: the last
/// tokens of a chat prompt are usually the question, and a guard must see text appended at
/// the end of a long benign prompt).
pub fn load_encoder(dir: &Path, kind: EncoderKind) -> Result<Arc<dyn Encoder>, ModelLoadError> {
    let err = |e: switchyard_semantic::LoadError| ModelLoadError {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    Ok(match kind {
        EncoderKind::MiniLm => {
            let options = MiniLmOptions {
                truncation: Truncation::KeepEnd,
                threads: encoder_parallelism(),
                ..MiniLmOptions::default()
            };
            Arc::new(MiniLmEncoder::load_with(dir, options).map_err(err)?)
        }
        EncoderKind::Static => Arc::new(StaticEncoder::load(dir).map_err(err)?),
    })
}

/// Embedding workers, and threads per MiniLM forward pass: the available cores, at most 2.
/// Two workers keep both cores of a small node encoding under load (each batch in its own
/// pool); two threads per pass halve a lone request's latency. Measured on 2 vCPUs
/// (`examples/semantic_decision`): 260–275 decisions/s at 16 concurrent, 12 ms p50 alone, vs
/// 200–245/s with one worker and 245–310/s but 13–16 ms alone with one thread per pass. More
/// is left to request handling.
fn encoder_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// The node-wide semantic machinery.
pub(crate) struct SemanticEngine {
    local: Option<Local>,
    remote_caches: RemoteCaches,
    client: reqwest::Client,
    runtime: Option<tokio::runtime::Handle>,
}

struct Local {
    encoder: Arc<dyn Encoder>,
    service: Arc<EmbeddingService>,
    cache: Mutex<EmbeddingCache>,
    /// Library topics' vector blocks by name, with a fingerprint of their utterances: a
    /// topic named by many proxies is encoded once and its block shared by their indexes.
    library: Mutex<HashMap<String, (u64, Arc<TopicVectors>)>>,
}

/// A fingerprint of a library topic's utterances (to tell a changed topic from an unchanged
/// one across snapshots).
fn fingerprint(utterances: &[String]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    utterances.hash(&mut h);
    h.finish()
}

/// A topic of a proxy with the utterances it stands for.
struct Resolved<'a> {
    label: &'a str,
    utterances: &'a [String],
    /// Set for a library topic (its blocks are shared between proxies).
    library: bool,
}

fn resolve<'a>(
    topic: &'a TopicSource,
    library: &'a [LibraryTopic],
) -> Result<Resolved<'a>, String> {
    match topic {
        TopicSource::Inline(t) => Ok(Resolved {
            label: &t.name,
            utterances: &t.utterances,
            library: false,
        }),
        TopicSource::Library { name } => {
            let t = library
                .iter()
                .find(|t| t.name == *name)
                .ok_or_else(|| format!("library topic '{name}' is not in the snapshot"))?;
            Ok(Resolved {
                label: &t.name,
                utterances: &t.utterances,
                library: true,
            })
        }
    }
}

impl std::fmt::Debug for SemanticEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticEngine")
            .field(
                "encoder",
                &self.local.as_ref().map(|l| l.encoder.name().to_owned()),
            )
            .finish()
    }
}

impl SemanticEngine {
    /// No in-process encoder: proxies needing embeddings are refused unless they name a
    /// remote semantic service.
    pub(crate) fn without_encoder(client: reqwest::Client) -> SemanticEngine {
        SemanticEngine {
            local: None,
            remote_caches: Mutex::default(),
            client,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    pub(crate) fn with_encoder(
        encoder: Arc<dyn Encoder>,
        client: reqwest::Client,
    ) -> std::io::Result<SemanticEngine> {
        let config = ServiceConfig {
            workers: encoder_parallelism(),
            ..ServiceConfig::default()
        };
        let service = EmbeddingService::new(Arc::clone(&encoder), config)?;
        Ok(SemanticEngine {
            local: Some(Local {
                cache: Mutex::new(EmbeddingCache::for_encoder(encoder.as_ref())),
                library: Mutex::default(),
                encoder,
                service: Arc::new(service),
            }),
            ..SemanticEngine::without_encoder(client)
        })
    }

    /// Whether this node has an in-process sentence encoder.
    pub(crate) fn has_encoder(&self) -> bool {
        self.local.is_some()
    }

    /// Stops the embedding worker (node shutdown).
    pub(crate) fn shutdown(&self) {
        if let Some(l) = &self.local {
            l.service.shutdown();
        }
    }

    /// Compiles a proxy's semantic parts, with `service` the semantic service the proxy
    /// names and `library` the snapshot's library topics. Blocking (encodes utterances): call
    /// it off the reactor. `None` when the proxy uses neither semantic routing nor a guard.
    pub(crate) fn compile_proxy(
        &self,
        spec: &ProxySpec,
        service: Option<&SemanticService>,
        library: &[LibraryTopic],
    ) -> Result<Option<Arc<ProxySemantic>>, String> {
        let regex = match &spec.regex_guard {
            None => None,
            Some(g) => Some(RegexGuard::compile(g)?),
        };
        let needs = spec.needs_embeddings();
        if !needs && regex.is_none() {
            return Ok(None);
        }
        let mut route_topics: Vec<Resolved<'_>> = Vec::new();
        let mut topic_route: Vec<usize> = Vec::new();
        if spec.routing.strategy == RoutingStrategy::Semantic {
            for (i, route) in spec.routes.iter().enumerate() {
                if route.target_model.is_none() {
                    return Err(format!(
                        "route '{}' has no target model (required by semantic routing)",
                        route.name
                    ));
                }
                for topic in &route.topics {
                    route_topics.push(resolve(topic, library)?);
                    topic_route.push(i);
                }
            }
            if route_topics.is_empty() {
                return Err("semantic routing needs at least one topic".to_owned());
            }
        }
        let deny_topics: Vec<Resolved<'_>> = spec
            .prompt_guard
            .iter()
            .flat_map(|g| &g.deny_topics)
            .map(|t| resolve(t, library))
            .collect::<Result<_, _>>()?;

        let (embedder, routes_index, guard_index) = if !needs {
            (None, None, None)
        } else if let Some(service) = service {
            let remote = Arc::new(RemoteEmbedder::new(
                self.client.clone(),
                service,
                &self.remote_caches,
            )?);
            let runtime = self
                .runtime
                .as_ref()
                .ok_or("no async runtime to call the semantic service from")?;
            let build = |topics: &[Resolved<'_>]| -> Result<Option<TopicIndex>, String> {
                if topics.is_empty() {
                    return Ok(None);
                }
                let texts: Vec<&str> = topics
                    .iter()
                    .flat_map(|t| t.utterances.iter().map(String::as_str))
                    .collect();
                let vectors = runtime.block_on(remote.embed_utterances(&texts))?;
                let dim = vectors.first().map(Vec::len).unwrap_or_default();
                let mut builder = TopicIndex::builder(dim);
                let mut at = 0;
                for topic in topics {
                    let n = topic.utterances.len();
                    builder
                        .add_topic(topic.label, &vectors[at..at + n])
                        .map_err(|e| e.to_string())?;
                    at += n;
                }
                Ok(Some(builder.build()))
            };
            let r = build(&route_topics)?;
            let g = build(&deny_topics)?;
            (Some(Embedder::Remote(remote)), r, g)
        } else {
            let local = self.local.as_ref().ok_or(
                "semantic routing, the semantic prompt guard and the semantic cache need a sentence encoder, and this node has none (start it with --model-dir, or give the proxy a semantic_service)",
            )?;
            let r = local.build(&route_topics)?;
            let g = local.build(&deny_topics)?;
            (Some(Embedder::Local(Arc::clone(&local.service))), r, g)
        };

        let routes = match routes_index {
            None => None,
            Some(index) => {
                let index = index.with_groups(&topic_route);
                let index = match spec.routing.effective_scoring() {
                    RoutingScoring::Nearest => index.with_scoring(Scoring::Nearest),
                    // The semantic crate's routing default (README, "Scoring and
                    // calibration"): the mean of the nearest utterances, less half the best
                    // other route's.
                    RoutingScoring::Contrast => index
                        .with_scoring(Scoring::ROUTING_DEFAULT)
                        .with_contrast(Scoring::ROUTING_CONTRAST),
                };
                let (threshold, calibration) = match spec.routing.threshold {
                    Some(t) => (t as f32, None),
                    None => {
                        let c = index.calibrate();
                        (c.threshold, Some(c))
                    }
                };
                Some(RouteIndex {
                    index,
                    topic_route,
                    threshold,
                    calibration,
                    scoring: spec.routing.effective_scoring(),
                })
            }
        };
        Ok(Some(Arc::new(ProxySemantic {
            embedder,
            routes,
            guard: match (guard_index, &spec.prompt_guard) {
                (Some(index), Some(g)) => Some(GuardIndex {
                    index,
                    threshold: g.threshold as f32,
                    scope: g.scope,
                }),
                _ => None,
            },
            regex,
        })))
    }

    /// Drops cached utterance vectors, and library topic blocks, no longer used by any proxy
    /// of `specs` (with `library` the snapshot's library topics).
    pub(crate) fn retain<'a>(
        &self,
        specs: impl Iterator<Item = &'a ProxySpec>,
        library: &[LibraryTopic],
    ) {
        let Some(local) = &self.local else { return };
        let mut keep: Vec<&str> = Vec::new();
        let mut keep_library: HashMap<&str, u64> = HashMap::new();
        for spec in specs.filter(|s| s.semantic_service.is_none()) {
            let topics = spec
                .routes
                .iter()
                .flat_map(|r| &r.topics)
                .chain(spec.prompt_guard.iter().flat_map(|g| &g.deny_topics));
            for topic in topics {
                let Ok(resolved) = resolve(topic, library) else {
                    continue;
                };
                if resolved.library {
                    keep_library
                        .entry(resolved.label)
                        .or_insert_with(|| fingerprint(resolved.utterances));
                }
                keep.extend(resolved.utterances.iter().map(String::as_str));
            }
        }
        if let Ok(mut cache) = local.cache.lock() {
            cache.retain_texts(keep);
        }
        if let Ok(mut blocks) = local.library.lock() {
            blocks.retain(|name, (fp, _)| keep_library.get(name.as_str()) == Some(fp));
        }
    }

    /// The vector blocks of the library topics this node holds (name, utterances, bytes).
    #[cfg(test)]
    pub(crate) fn library_blocks(&self) -> Vec<(String, Arc<TopicVectors>)> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let blocks = local.library.lock().map(|b| b.clone()).unwrap_or_default();
        let mut out: Vec<_> = blocks.into_iter().map(|(n, (_, b))| (n, b)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Local {
    /// An index of `topics`, encoding only utterances this node has not encoded before, and
    /// sharing library topics' blocks with every other proxy naming them.
    fn build(&self, topics: &[Resolved<'_>]) -> Result<Option<TopicIndex>, String> {
        if topics.is_empty() {
            return Ok(None);
        }
        let encode_error =
            |e: switchyard_semantic::IndexError| format!("cannot encode the topics: {e}");
        let mut cache = self.cache.lock().map_err(|_| "embedding cache poisoned")?;
        let mut library = self.library.lock().map_err(|_| "library cache poisoned")?;
        // Everything missing in one go (batched), then blocks from the cache.
        let stale = |t: &Resolved<'_>| {
            !t.library
                || library
                    .get(t.label)
                    .is_none_or(|(fp, _)| *fp != fingerprint(t.utterances))
        };
        cache
            .encode_missing(
                self.encoder.as_ref(),
                topics
                    .iter()
                    .filter(|t| stale(t))
                    .flat_map(|t| t.utterances.iter().map(String::as_str)),
            )
            .map_err(encode_error)?;
        let mut builder = TopicIndex::builder(self.encoder.dim());
        for topic in topics {
            let block = if topic.library {
                let fp = fingerprint(topic.utterances);
                match library.get(topic.label) {
                    Some((have, block)) if *have == fp => Arc::clone(block),
                    _ => {
                        let block = Arc::new(
                            TopicVectors::encode_cached(
                                self.encoder.as_ref(),
                                topic.utterances,
                                &mut cache,
                            )
                            .map_err(encode_error)?,
                        );
                        library.insert(topic.label.to_owned(), (fp, Arc::clone(&block)));
                        block
                    }
                }
            } else {
                Arc::new(
                    TopicVectors::encode_cached(
                        self.encoder.as_ref(),
                        topic.utterances,
                        &mut cache,
                    )
                    .map_err(encode_error)?,
                )
            };
            builder
                .add_shared_topic(topic.label, block)
                .map_err(|e| format!("cannot index the topics: {e}"))?;
        }
        Ok(Some(builder.build()))
    }
}

#[derive(Debug)]
enum Embedder {
    Local(Arc<EmbeddingService>),
    Remote(Arc<RemoteEmbedder>),
}

impl Embedder {
    fn name(&self) -> String {
        match self {
            Embedder::Local(s) => s.encoder().name().to_owned(),
            Embedder::Remote(r) => r.name(),
        }
    }

    async fn embed(&self, text: &str) -> Result<Arc<[f32]>, String> {
        match self {
            Embedder::Local(s) => s.embed(text).await.map_err(|e| e.to_string()),
            Embedder::Remote(r) => {
                let mut v = r.embed_batch(&[text]).await?;
                v.pop()
                    .map(Arc::from)
                    .ok_or_else(|| "no embedding".to_owned())
            }
        }
    }
}

#[derive(Debug)]
struct RouteIndex {
    index: TopicIndex,
    /// Topic index → route index.
    topic_route: Vec<usize>,
    threshold: f32,
    /// How the threshold was calibrated, when the proxy sets none.
    calibration: Option<Calibration>,
    scoring: RoutingScoring,
}

#[derive(Debug)]
struct GuardIndex {
    index: TopicIndex,
    threshold: f32,
    scope: GuardScope,
}

#[derive(Debug)]
struct RegexGuard {
    set: regex::RegexSet,
    names: Vec<String>,
    scope: GuardScope,
}

/// How many texts a semantic guard of scope `all` embeds at most; a longer conversation's
/// texts are grouped (joined in order) into this many.
const MAX_GUARD_EMBEDDINGS: usize = 32;

/// A request's text as the guards and routing read it, taken off the body by
/// [`ProxySemantic::screen`] (CPU work: the caller runs it on the CPU pool for large bodies).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Screened {
    /// The last user message, as sent (semantic routing embeds it).
    pub prompt: Option<String>,
    /// The normalised texts the semantic guard scores (per its scope).
    guard_texts: Vec<String>,
    /// Regex patterns that matched (the request is blocked when any did).
    matched_patterns: Vec<String>,
}

impl Screened {
    /// A single prompt (the dry run's), as every guard scope reads it.
    pub(crate) fn prompt(semantic: &ProxySemantic, prompt: Option<&str>) -> Screened {
        let prompt = prompt.map(str::to_owned);
        let texts: Vec<String> = prompt.iter().cloned().collect();
        semantic.screen_texts(prompt, &texts, &texts)
    }
}

impl RegexGuard {
    fn compile(guard: &switchyard_model::RegexGuard) -> Result<RegexGuard, String> {
        let set = regex::RegexSetBuilder::new(guard.patterns.iter().map(|p| p.pattern.as_str()))
            .size_limit(switchyard_model::REGEX_SIZE_LIMIT * guard.patterns.len().max(1))
            .dfa_size_limit(switchyard_model::REGEX_SIZE_LIMIT * guard.patterns.len().max(1))
            .build()
            .map_err(|e| format!("regex guard: {e}"))?;
        Ok(RegexGuard {
            set,
            names: guard.patterns.iter().map(|p| p.name.clone()).collect(),
            scope: guard.scope,
        })
    }
}

/// A proxy's compiled semantic routing and guards.
#[derive(Debug)]
pub(crate) struct ProxySemantic {
    embedder: Option<Embedder>,
    routes: Option<RouteIndex>,
    guard: Option<GuardIndex>,
    regex: Option<RegexGuard>,
}

/// One topic's score.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scored {
    pub topic: String,
    /// For routing topics: the route index.
    pub route: Option<usize>,
    pub score: f32,
}

/// What semantic routing chose.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pick {
    /// The proxy does not route semantically.
    NotSemantic,
    /// The best topic reached the threshold.
    Route {
        route: usize,
        topic: String,
        score: f32,
    },
    /// The best topic scored below the threshold.
    BelowThreshold { best: Option<Scored> },
    /// The request has no user text.
    NoPrompt,
}

/// Everything decided about one prompt: guards and (when semantic) the route.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evaluation {
    pub matched_patterns: Vec<String>,
    pub matched_topics: Vec<String>,
    /// Deny topics, best first (empty when the guard did not run).
    pub guard_scores: Vec<Scored>,
    pub guard_threshold: Option<f32>,
    /// Routing topics, best first (empty when not semantic or blocked first).
    pub route_scores: Vec<Scored>,
    pub route_threshold: Option<f32>,
    /// How the routing threshold was calibrated (`None`: the proxy sets it).
    pub route_calibration: Option<Calibration>,
    /// The scoring rule of the routing topics.
    pub route_scoring: Option<RoutingScoring>,
    pub pick: Pick,
    /// The encoder or service that embedded the prompt, if one did.
    pub embedded_by: Option<String>,
}

impl Evaluation {
    /// The 403 to answer, if a guard matched.
    pub(crate) fn blocked(&self) -> Option<ProxyError> {
        (!self.matched_patterns.is_empty() || !self.matched_topics.is_empty()).then(|| {
            ProxyError::PromptBlocked {
                topics: self.matched_topics.clone(),
                patterns: self.matched_patterns.clone(),
            }
        })
    }

    /// The `x-switchyard-scores` debug header: `guard=t:0.123,…; routes=t:0.456,…` (top 5
    /// of each, best first).
    pub(crate) fn scores_header(&self) -> Option<HeaderValue> {
        let list = |s: &[Scored]| {
            s.iter()
                .take(5)
                .map(|x| format!("{}:{:.3}", x.topic, x.score))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut parts = Vec::new();
        if self.guard_threshold.is_some() {
            parts.push(format!("guard={}", list(&self.guard_scores)));
        }
        if self.route_threshold.is_some() {
            parts.push(format!("routes={}", list(&self.route_scores)));
        }
        if !self.matched_patterns.is_empty() {
            parts.push(format!("patterns={}", self.matched_patterns.join(",")));
        }
        let text: String = parts
            .join("; ")
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        HeaderValue::from_str(&text).ok()
    }
}

impl ProxySemantic {
    /// Whether a guard reads every text of the request (scope `all`).
    fn reads_all(&self) -> bool {
        self.regex
            .as_ref()
            .is_some_and(|r| r.scope == GuardScope::All)
            || self
                .guard
                .as_ref()
                .is_some_and(|g| g.scope == GuardScope::All)
    }

    /// Takes the texts the guards read off a request body (`prompt`: its last user message,
    /// in `format`), normalises them, and runs the regex guard. Refuses (400) a request whose
    /// guarded text is longer than `max_scan` bytes: a guard scans all of it or nothing
    /// passes. CPU work on the whole body: the caller runs it on the CPU pool when large.
    pub(crate) fn screen(
        &self,
        format: InboundFormat,
        prompt: Option<String>,
        body: &[u8],
        max_scan: usize,
    ) -> Result<Screened, ProxyError> {
        let too_long = |got: usize| ProxyError::LimitExceeded {
            param: "messages",
            message: format!(
                "the prompt guard scans at most {max_scan} bytes of text per request (this one has {got}); send less text"
            ),
        };
        let prompt = prompt.filter(|p| !p.trim().is_empty());
        let last: Vec<String> = prompt.iter().cloned().collect();
        let guarded = self.regex.is_some() || self.guard.is_some();
        if guarded
            && let Some(p) = &prompt
            && p.len() > max_scan
        {
            return Err(too_long(p.len()));
        }
        let all = if self.reads_all() {
            let json: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
            prompt::all_texts(format, &json, max_scan).map_err(too_long)?
        } else {
            Vec::new()
        };
        Ok(self.screen_texts(prompt, &last, &all))
    }

    /// [`ProxySemantic::screen`] on texts already taken: `last` (the last user message, if
    /// any) and `all` (every text; empty when no guard reads them).
    fn screen_texts(&self, prompt: Option<String>, last: &[String], all: &[String]) -> Screened {
        let pick = |scope: GuardScope| match scope {
            GuardScope::LastUser => last,
            GuardScope::All => all,
        };
        let mut matched_patterns = Vec::new();
        if let Some(regex) = &self.regex {
            let mut hit = vec![false; regex.names.len()];
            for text in pick(regex.scope) {
                for i in regex.set.matches(&prompt::normalize(text)).into_iter() {
                    hit[i] = true;
                }
            }
            matched_patterns = regex
                .names
                .iter()
                .zip(hit)
                .filter(|(_, h)| *h)
                .map(|(n, _)| n.clone())
                .collect();
        }
        let guard_texts = match &self.guard {
            Some(g) => group(
                pick(g.scope).iter().map(|t| prompt::normalize(t)).collect(),
                MAX_GUARD_EMBEDDINGS,
            ),
            None => Vec::new(),
        };
        Screened {
            prompt,
            guard_texts,
            matched_patterns,
        }
    }

    /// Embeds `text` with the proxy's encoder or semantic service (the semantic cache's
    /// prompt); `None` when the proxy embeds nothing.
    pub(crate) async fn embed(&self, text: &str) -> Option<Result<Arc<[f32]>, String>> {
        let embedder = self.embedder.as_ref()?;
        Some(embedder.embed(text).await)
    }

    /// Runs the guards and semantic routing on a screened request. The regex guard already
    /// ran (no embedding is needed when it blocked); the semantic guard scores the texts of
    /// its scope, routing embeds the last user message.
    pub(crate) async fn evaluate(&self, screened: Screened) -> Result<Evaluation, ProxyError> {
        let mut ev = Evaluation {
            matched_patterns: screened.matched_patterns,
            matched_topics: Vec::new(),
            guard_scores: Vec::new(),
            guard_threshold: self.guard.as_ref().map(|g| g.threshold),
            route_scores: Vec::new(),
            route_threshold: self.routes.as_ref().map(|r| r.threshold),
            route_calibration: self.routes.as_ref().and_then(|r| r.calibration),
            route_scoring: self.routes.as_ref().map(|r| r.scoring),
            pick: if self.routes.is_some() {
                Pick::NoPrompt
            } else {
                Pick::NotSemantic
            },
            embedded_by: None,
        };
        if !ev.matched_patterns.is_empty() {
            return Ok(ev);
        }
        let Some(embedder) = &self.embedder else {
            return Ok(ev);
        };
        let internal = |e: switchyard_semantic::IndexError| {
            ProxyError::SemanticUnavailable(format!("scoring failed: {e}"))
        };
        // The last embedding made, reused by routing when it embeds the same text (the usual
        // case: a guard of scope `last_user` on a prompt normalisation does not change).
        let mut last: Option<(&str, Arc<[f32]>)> = None;
        if let Some(guard) = &self.guard {
            // The best score of each deny topic over the guarded texts.
            let mut best: Vec<Scored> = Vec::new();
            for text in &screened.guard_texts {
                let query = embedder
                    .embed(text)
                    .await
                    .map_err(ProxyError::SemanticUnavailable)?;
                ev.embedded_by = Some(embedder.name());
                let scores = guard.index.score(&query).map_err(internal)?;
                last = Some((text.as_str(), query));
                for s in scores.ranked() {
                    match best.iter_mut().find(|b| b.topic == s.label) {
                        Some(b) => b.score = b.score.max(s.score),
                        None => best.push(Scored {
                            topic: s.label.to_owned(),
                            route: None,
                            score: s.score,
                        }),
                    }
                }
            }
            best.sort_by(|a, b| b.score.total_cmp(&a.score));
            ev.guard_scores = best;
            ev.matched_topics = ev
                .guard_scores
                .iter()
                .filter(|s| s.score >= guard.threshold)
                .map(|s| s.topic.clone())
                .collect();
            if !ev.matched_topics.is_empty() {
                return Ok(ev);
            }
        }
        let Some(prompt) = screened.prompt.as_deref() else {
            return Ok(ev);
        };
        if self.routes.is_none() {
            return Ok(ev);
        }
        let query = match last {
            Some((text, query)) if text == prompt => query,
            _ => embedder
                .embed(prompt)
                .await
                .map_err(ProxyError::SemanticUnavailable)?,
        };
        ev.embedded_by = Some(embedder.name());
        if let Some(routes) = &self.routes {
            let scores = routes.index.score(&query).map_err(internal)?;
            ev.route_scores = scores
                .ranked()
                .iter()
                .map(|s| Scored {
                    topic: s.label.to_owned(),
                    route: routes.topic_route.get(s.topic).copied(),
                    score: s.score,
                })
                .collect();
            ev.pick = match ev.route_scores.first() {
                Some(best) if best.score >= routes.threshold => match best.route {
                    Some(route) => Pick::Route {
                        route,
                        topic: best.topic.clone(),
                        score: best.score,
                    },
                    None => Pick::BelowThreshold { best: None },
                },
                best => Pick::BelowThreshold {
                    best: best.cloned(),
                },
            };
        }
        Ok(ev)
    }
}

/// The routing decision for a semantic proxy: the picked route with its target model (the
/// fallback tried if it fails), or the fallback route, or an error.
pub(crate) fn decide(proxy: &CompiledProxy, pick: &Pick) -> Decision {
    let (reason, why) = match pick {
        Pick::Route { route, .. } => {
            let Some(model) = proxy
                .routes
                .get(*route)
                .and_then(|r| r.target_model.clone())
            else {
                return Decision::Reject(ProxyError::NoSemanticRoute(
                    "the chosen route has no target model".to_owned(),
                ));
            };
            let fallback = routing::fallback_choice(proxy, None)
                .filter(|fb| !(fb.route == *route && fb.model == model));
            return Decision::Route {
                choice: Choice {
                    route: *route,
                    model,
                },
                fallback,
            };
        }
        Pick::BelowThreshold { best } => (
            FallbackReason::BelowThreshold,
            match best {
                Some(b) => format!(
                    "no route matched the prompt: the best topic '{}' scored {:.3}, below the threshold, and this proxy has no fallback route",
                    b.topic, b.score
                ),
                None => {
                    "no route matched the prompt and this proxy has no fallback route".to_owned()
                }
            },
        ),
        Pick::NoPrompt | Pick::NotSemantic => (
            FallbackReason::NoPrompt,
            "semantic routing needs a user message, and this proxy has no fallback route"
                .to_owned(),
        ),
    };
    match routing::fallback_choice(proxy, None) {
        Some(choice) => Decision::Fallback { choice, reason },
        None => Decision::Reject(ProxyError::NoSemanticRoute(why)),
    }
}

#[cfg(test)]
mod tests;
