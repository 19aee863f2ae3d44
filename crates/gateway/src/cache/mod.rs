//! The response cache (a proxy's `cache`): answers reused for requests that would get the
//! same answer, in whatever format the client speaks, streamed or not.
//!
//! - [`key`]: what makes two requests the same (a SHA-256 over the canonical request, the
//!   route and model that serve it, and the scope value);
//! - [`entry`]: the one stored form (canonical events) and its rendering in each format;
//! - [`store`]: the node's bounded memory LRU in front of Redis, shared by the fleet.
//!
//! On the request path ([`crate::http`]): after admission, guards and routing, a cacheable
//! request is looked up (unless `Cache-Control: no-cache` or `no-store`); a hit is answered
//! from the entry; a miss goes upstream with a [`Recorder`] attached to its answer, which
//! stores the answer only when it completed successfully (a whole JSON body, or a stream that
//! ended with its finish, no error event, no cut).

pub(crate) mod entry;
pub(crate) mod key;
pub(crate) mod semantic;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use switchyard_llm::{StreamDecoder, StreamEvent, Target};
use switchyard_model::{CacheScope, ResponseCache};

pub use store::CacheConfig;
pub(crate) use store::{CacheHandle, CacheStore};

use entry::Entry;

/// Lookups by `result` (`hit`, `semantic_hit`, `miss`) per proxy.
pub(crate) const LOOKUPS: &str = "switchyard_gateway_cache_lookups_total";
/// Entries stored per proxy.
pub(crate) const STORES: &str = "switchyard_gateway_cache_stores_total";
/// Bytes of entries stored per proxy.
pub(crate) const STORED_BYTES: &str = "switchyard_gateway_cache_stored_bytes_total";
/// Entries dropped from a node's memory to make room, per proxy.
pub(crate) const EVICTIONS: &str = "switchyard_gateway_cache_evictions_total";
/// Bytes of entries in this node's memory.
pub(crate) const MEMORY_BYTES: &str = "switchyard_gateway_cache_memory_bytes";
/// Upstream tokens hits did not spend, per proxy and `type` (`input`, `output`).
pub(crate) const TOKENS_SAVED: &str = "switchyard_gateway_cache_tokens_saved_total";
/// Answers not stored, per proxy and `reason` (`too_large`, `uncacheable`).
pub(crate) const NOT_STORED: &str = "switchyard_gateway_cache_not_stored_total";
/// Redis failures seen by the cache.
pub(crate) const REDIS_ERRORS: &str = "switchyard_gateway_cache_redis_errors_total";

/// The `x-switchyard-cache` response header.
pub(crate) static CACHE_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-switchyard-cache");
/// The `x-switchyard-cache-similarity` response header (semantic hits).
pub(crate) static SIMILARITY_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-switchyard-cache-similarity");

/// A proxy's cache, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ProxyCache {
    pub exact_ttl: Option<Duration>,
    /// The semantic cache's threshold and TTL.
    pub semantic: Option<(f32, Duration)>,
    pub scope: CacheScope,
}

impl ProxyCache {
    pub(crate) fn compile(spec: &ResponseCache, client_auth: bool) -> ProxyCache {
        ProxyCache {
            exact_ttl: spec
                .exact
                .as_ref()
                .map(|e| Duration::from_secs(e.ttl.seconds)),
            semantic: spec
                .semantic
                .as_ref()
                .map(|s| (s.threshold as f32, Duration::from_secs(s.ttl.seconds))),
            scope: spec.effective_scope(client_auth),
        }
    }
}

/// What a request's `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    /// Look up, and store a miss.
    Use,
    /// `no-cache`: no lookup; the answer is still stored.
    Refresh,
    /// `no-store`: neither lookup nor store.
    Bypass,
}

pub(crate) fn directive(headers: &HeaderMap) -> Directive {
    let mut out = Directive::Use;
    for value in headers.get_all(axum::http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("no-store") {
                return Directive::Bypass;
            }
            if token.eq_ignore_ascii_case("no-cache") {
                out = Directive::Refresh;
            }
        }
    }
    out
}

/// What the cache did for a request (its `x-switchyard-cache` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    SemanticHit,
    Miss,
}

impl Outcome {
    pub(crate) fn header(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::SemanticHit => "semantic-hit",
            Outcome::Miss => "miss",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::SemanticHit => "semantic_hit",
            Outcome::Miss => "miss",
        }
    }

    pub(crate) fn is_hit(self) -> bool {
        self != Outcome::Miss
    }
}

/// Counts a lookup's result; a hit also counts the tokens it saved.
pub(crate) fn count_lookup(
    proxy: &Arc<str>,
    outcome: Outcome,
    saved: Option<switchyard_llm::Usage>,
) {
    let p = metrics::SharedString::from(Arc::clone(proxy));
    metrics::counter!(LOOKUPS, "proxy" => p.clone(), "result" => outcome.label()).increment(1);
    if let Some(u) = saved {
        metrics::counter!(TOKENS_SAVED, "proxy" => p.clone(), "type" => "input")
            .increment(u.input_tokens);
        metrics::counter!(TOKENS_SAVED, "proxy" => p, "type" => "output")
            .increment(u.output_tokens);
    }
}

/// Where a miss's answer goes once complete: the key, its life, the node's store.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub handle: CacheHandle,
    pub proxy: uuid::Uuid,
    pub proxy_name: Arc<str>,
    pub key: key::Key,
    /// How long the entry lives (the longer of the exact and semantic TTLs).
    pub ttl: Duration,
    /// Where the semantic index is to find it.
    pub semantic: Option<SemanticPlan>,
}

/// A miss's place in the semantic index: its group, its prompt's vector, its TTL.
#[derive(Debug, Clone)]
pub(crate) struct SemanticPlan {
    pub rest: key::Key,
    pub vector: semantic::Quantized,
    pub ttl: Duration,
}

impl Plan {
    /// Stores a complete answer (a no-op past the entry size bound, counted).
    pub(crate) fn store(&self, mut entry: Entry) {
        let p = metrics::SharedString::from(Arc::clone(&self.proxy_name));
        entry.at = entry::unix_ms();
        match self
            .handle
            .put(self.proxy, &self.proxy_name, &self.key, entry, self.ttl)
        {
            Some(bytes) => {
                if let Some(s) = &self.semantic {
                    self.handle
                        .index_semantic(self.proxy, &s.rest, &self.key, &s.vector, s.ttl);
                }
                metrics::counter!(STORES, "proxy" => p.clone()).increment(1);
                metrics::counter!(STORED_BYTES, "proxy" => p).increment(bytes as u64);
            }
            None => {
                metrics::counter!(NOT_STORED, "proxy" => p, "reason" => "too_large").increment(1);
            }
        }
    }
}

/// Watches a miss's upstream answer on its way to the client and stores it if it completes.
pub(crate) struct Recorder {
    plan: Plan,
    kind: Kind,
    seen: usize,
    failed: bool,
}

enum Kind {
    /// A stream, decoded with the upstream API's decoder as it passes.
    Stream {
        decoder: Box<dyn StreamDecoder>,
        events: Vec<StreamEvent>,
    },
    /// A JSON answer, kept whole to parse at the end.
    Json {
        target: Box<Target>,
        headers: HeaderMap,
        buf: Vec<u8>,
    },
    /// Given up on (too large, or undecodable): what was kept is dropped.
    Dropped,
}

impl Recorder {
    pub(crate) fn stream(plan: Plan, target: &Target) -> Box<Recorder> {
        Box::new(Recorder {
            plan,
            kind: Kind::Stream {
                decoder: target.stream_decoder(),
                events: Vec::new(),
            },
            seen: 0,
            failed: false,
        })
    }

    pub(crate) fn json(plan: Plan, target: &Target, headers: &HeaderMap) -> Box<Recorder> {
        Box::new(Recorder {
            plan,
            kind: Kind::Json {
                target: Box::new(target.clone()),
                headers: headers.clone(),
                buf: Vec::new(),
            },
            seen: 0,
            failed: false,
        })
    }

    /// The most upstream bytes watched: an answer this large would not fit an entry.
    fn raw_limit(&self) -> usize {
        self.plan.handle.store().max_entry_bytes().saturating_mul(4)
    }

    /// One upstream chunk, as received.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        self.seen += chunk.len();
        if self.seen > self.raw_limit() {
            self.fail();
            return;
        }
        match &mut self.kind {
            Kind::Stream { decoder, events } => match decoder.push(chunk) {
                Ok(more) => events.extend(more),
                Err(_) => self.fail(),
            },
            Kind::Json { buf, .. } => buf.extend_from_slice(chunk),
            Kind::Dropped => {}
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.kind = Kind::Dropped;
    }

    /// The upstream body ended cleanly: store the answer if it is a complete one.
    pub(crate) fn complete(self) {
        if self.failed {
            let p = metrics::SharedString::from(Arc::clone(&self.plan.proxy_name));
            metrics::counter!(NOT_STORED, "proxy" => p, "reason" => "too_large").increment(1);
            return;
        }
        let entry = match self.kind {
            Kind::Stream {
                mut decoder,
                mut events,
            } => match decoder.finish() {
                Ok(more) => {
                    events.extend(more);
                    Entry::from_events(&events)
                }
                Err(_) => None,
            },
            Kind::Json {
                target,
                headers,
                buf,
            } => target
                .parse_response(axum::http::StatusCode::OK, &headers, &buf)
                .ok()
                .map(|r| Entry::from_response(&r)),
            Kind::Dropped => None,
        };
        match entry {
            Some(entry) => self.plan.store(entry),
            None => {
                let p = metrics::SharedString::from(Arc::clone(&self.plan.proxy_name));
                metrics::counter!(NOT_STORED, "proxy" => p, "reason" => "incomplete").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        assert_eq!(directive(&h), Directive::Use);
        h.insert(
            "cache-control",
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert_eq!(directive(&h), Directive::Refresh);
        h.append("cache-control", HeaderValue::from_static("no-store"));
        assert_eq!(directive(&h), Directive::Bypass);
    }
}
