//! Governance on the node: who may call a proxy (consumer keys), how much (rate limits and
//! budgets, counted in [`counters`]), and what each request cost (the price table).
//!
//! A snapshot compiles into one [`Governance`] (key hashes, consumers, prices) shared by the
//! routing table, and each proxy into a [`ProxyGovernance`] (client auth, its limits and
//! budget). A request then goes through:
//!
//! 1. [`Governance::authenticate`] (proxies with `client_auth.required`): the key from the
//!    inbound format's natural places → its consumer, or 401/403;
//! 2. [`admit`]: every limit and budget that applies (the proxy's and the consumer's) becomes
//!    a counter; one atomic admission (one Redis round trip) admits or refuses (429);
//! 3. when the request ends ([`Gate::settle`]), its cost is computed from its usage and the
//!    price table, and its tokens and cost are charged to the consumption counters.

mod counters;
mod price;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::Utc;
use subtle::ConstantTimeEq;
use switchyard_llm::Usage;
use switchyard_model::snapshot::Snapshot;
use switchyard_model::{
    Budget, ConsumerProxies, LimitAmount, LimitKey, NodeConsumer, RateLimit, SelectorSource,
    governance::{is_key_shaped, key_hash},
};
use tracing::{Span, warn};
use uuid::Uuid;

use counters::{Counter, CounterKind, Unavailable, Verdict};
pub(crate) use counters::{CounterHandle, Counters};
pub use counters::{FailureMode, LimitsConfig};
pub(crate) use price::PriceTable;

use crate::error::ProxyError;
use crate::providers::credential::query_param;

/// One USD in the unit budgets are counted in (integers in Redis).
const NANO_USD: f64 = 1e9;

/// The governance half of a snapshot: consumers by key hash, and the price table.
#[derive(Debug, Default)]
pub(crate) struct Governance {
    /// Keys by the first 8 bytes of their hash; the whole hash is compared in constant time.
    keys: HashMap<u64, Vec<KeyEntry>>,
    consumers: Vec<Arc<CompiledConsumer>>,
    pub prices: PriceTable,
}

#[derive(Debug)]
struct KeyEntry {
    hash: [u8; 32],
    expires_at: Option<chrono::DateTime<Utc>>,
    consumer: usize,
}

/// A consumer, ready to check.
#[derive(Debug)]
pub(crate) struct CompiledConsumer {
    pub name: Arc<str>,
    proxies: ConsumerProxies,
    rate_limits: Vec<RateLimit>,
    budget: Option<Budget>,
}

/// A proxy's own governance.
#[derive(Debug, Default)]
pub(crate) struct ProxyGovernance {
    pub client_auth: bool,
    rate_limits: Vec<RateLimit>,
    budget: Option<Budget>,
}

impl ProxyGovernance {
    pub(crate) fn compile(spec: &switchyard_model::ProxySpec) -> ProxyGovernance {
        ProxyGovernance {
            client_auth: spec.client_auth.required,
            rate_limits: spec.rate_limits.clone(),
            budget: spec.budget,
        }
    }

    /// Whether any limit or budget could apply to a request of this proxy (its own, or a
    /// consumer's when callers are authenticated).
    pub(crate) fn limits_anything(&self) -> bool {
        self.client_auth || !self.rate_limits.is_empty() || self.budget.is_some()
    }
}

impl Governance {
    pub(crate) fn compile(snapshot: &Snapshot) -> Governance {
        let mut keys: HashMap<u64, Vec<KeyEntry>> = HashMap::new();
        let mut consumers = Vec::with_capacity(snapshot.consumers.len());
        for (index, c) in snapshot.consumers.iter().enumerate() {
            consumers.push(Arc::new(compile_consumer(c)));
            for key in &c.keys {
                keys.entry(bucket(&key.hash)).or_default().push(KeyEntry {
                    hash: key.hash,
                    expires_at: key.expires_at,
                    consumer: index,
                });
            }
        }
        Governance {
            keys,
            consumers,
            prices: PriceTable::new(&snapshot.prices),
        }
    }

    /// The consumer calling `proxy`: 401 without a key or with one that is not live, 403 for
    /// a consumer not allowed on the proxy.
    pub(crate) fn authenticate(
        &self,
        proxy: Uuid,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Arc<CompiledConsumer>, ProxyError> {
        let Some(key) = presented_key(headers, query) else {
            return Err(ProxyError::MissingConsumerKey);
        };
        if !is_key_shaped(&key) {
            return Err(ProxyError::InvalidConsumerKey);
        }
        let hash = key_hash(&key);
        let now = Utc::now();
        let found = self
            .keys
            .get(&bucket(&hash))
            .and_then(|entries| entries.iter().find(|e| bool::from(e.hash.ct_eq(&hash))));
        let Some(entry) = found else {
            return Err(ProxyError::InvalidConsumerKey);
        };
        if entry.expires_at.is_some_and(|t| t <= now) {
            return Err(ProxyError::InvalidConsumerKey);
        }
        let consumer = &self.consumers[entry.consumer];
        if !consumer.proxies.allows(proxy) {
            return Err(ProxyError::ConsumerNotAllowed);
        }
        Ok(Arc::clone(consumer))
    }
}

fn compile_consumer(c: &NodeConsumer) -> CompiledConsumer {
    CompiledConsumer {
        name: Arc::from(c.name.as_str()),
        proxies: c.proxies.clone(),
        rate_limits: c.rate_limits.clone(),
        budget: c.budget,
    }
}

fn bucket(hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}

/// The consumer key in the inbound format's natural places: `Authorization: Bearer`
/// (OpenAI SDKs), `x-api-key` (Anthropic SDKs), `x-goog-api-key` or `?key=` (Gemini).
fn presented_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        // Another scheme than Bearer is a key in the wrong form (refused as invalid).
        let v = text(v);
        return Some(match v.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                token.trim().to_owned()
            }
            _ => v,
        });
    }
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(name) {
            return Some(text(v));
        }
    }
    query_param(query?, "key")
}

/// Which owner a limit belongs to (its counters' key prefix, and the refusal's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Proxy,
    Consumer,
}

/// What one counter of an admitted request stands for.
#[derive(Debug, Clone)]
struct Slot {
    counter: Counter,
    what: SlotKind,
}

#[derive(Debug, Clone)]
enum SlotKind {
    Limit {
        name: Arc<str>,
        amount: LimitAmount,
    },
    Budget {
        owner: Owner,
        name: Arc<str>,
        usd: f64,
    },
}

/// An admitted request's governance: who called, the counters to charge when its usage is
/// known, and the `x-ratelimit-*` headers of its answer.
#[derive(Debug)]
pub(crate) struct Gate {
    pub consumer: Option<Arc<CompiledConsumer>>,
    slots: Vec<Slot>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    counters: Option<CounterHandle>,
}

/// Everything `admit` needs to know about a request.
pub(crate) struct Request<'a> {
    pub proxy_id: Uuid,
    pub proxy_name: &'a Arc<str>,
    pub proxy: &'a ProxyGovernance,
    pub consumer: Option<Arc<CompiledConsumer>>,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

/// Admits a request against every limit and budget that applies (the proxy's, then the
/// consumer's), in one atomic step. Refusals are 429 (`rate_limit_exceeded` naming the
/// limit, or `budget_exceeded`) with `Retry-After`; with Redis away in the `closed` mode,
/// 503.
pub(crate) async fn admit(
    counters: &CounterHandle,
    req: Request<'_>,
) -> Result<Gate, (ProxyError, Vec<(HeaderName, HeaderValue)>)> {
    let slots = plan(counters.shared().prefix(), &req, Utc::now());
    let mut gate = Gate {
        consumer: req.consumer,
        slots,
        headers: Vec::new(),
        counters: None,
    };
    if gate.slots.is_empty() {
        return Ok(gate);
    }
    let list: Vec<&Counter> = gate.slots.iter().map(|s| &s.counter).collect();
    match counters.admit(&list).await {
        Ok(Verdict::Admitted(states)) => {
            gate.headers = ratelimit_headers(&gate.slots, &states);
            gate.counters = Some(counters.clone());
            Ok(gate)
        }
        Ok(Verdict::Refused { index, ttl_ms }) => {
            let slot = &gate.slots[index];
            let retry_after = retry_after_secs(ttl_ms, slot.counter.window_ms);
            let err = match &slot.what {
                SlotKind::Limit { name, .. } => {
                    metrics::counter!("switchyard_gateway_rate_limited_total",
                        "proxy" => req.proxy_name.to_string(), "limit" => name.to_string())
                    .increment(1);
                    ProxyError::RateLimited {
                        limit: name.to_string(),
                        retry_after,
                    }
                }
                SlotKind::Budget { owner, name, .. } => {
                    let scope = match owner {
                        Owner::Proxy => "proxy",
                        Owner::Consumer => "consumer",
                    };
                    metrics::counter!("switchyard_gateway_budget_exceeded_total",
                        "proxy" => req.proxy_name.to_string(), "budget" => scope)
                    .increment(1);
                    ProxyError::BudgetExceeded {
                        owner: format!("{scope} '{name}'"),
                        retry_after,
                    }
                }
            };
            // The refused limit's own headers (remaining 0), when it is a rate limit.
            let mut headers = Vec::new();
            if let SlotKind::Limit { amount, .. } = &slot.what {
                push_headers(&mut headers, *amount, 0, retry_after);
            }
            Err((err, headers))
        }
        Err(Unavailable) => Err((ProxyError::LimitsUnavailable, Vec::new())),
    }
}

fn retry_after_secs(ttl_ms: i64, window_ms: i64) -> u64 {
    let ms = if ttl_ms > 0 { ttl_ms } else { window_ms.max(1) };
    u64::try_from(ms).unwrap_or(0).div_ceil(1000).max(1)
}

/// The counters a request is checked against.
fn plan(prefix: &str, req: &Request<'_>, now: chrono::DateTime<Utc>) -> Vec<Slot> {
    let mut slots = Vec::new();
    let consumer_name = req.consumer.as_ref().map(|c| &*c.name).unwrap_or("");
    let proxy_scope = format!("{prefix}:p:{}", req.proxy_id);
    for limit in &req.proxy.rate_limits {
        slots.push(limit_slot(&proxy_scope, limit, req, consumer_name));
    }
    if let Some(budget) = &req.proxy.budget {
        slots.push(budget_slot(
            &proxy_scope,
            Owner::Proxy,
            req.proxy_name,
            budget,
            now,
        ));
    }
    if let Some(consumer) = &req.consumer {
        let scope = format!("{prefix}:c:{}", key_part(&consumer.name));
        for limit in &consumer.rate_limits {
            slots.push(limit_slot(&scope, limit, req, consumer_name));
        }
        if let Some(budget) = &consumer.budget {
            slots.push(budget_slot(
                &scope,
                Owner::Consumer,
                &consumer.name,
                budget,
                now,
            ));
        }
    }
    slots
}

fn limit_slot(scope: &str, limit: &RateLimit, req: &Request<'_>, consumer: &str) -> Slot {
    let value = match &limit.key {
        LimitKey::Proxy => req.proxy_id.to_string(),
        LimitKey::Consumer => consumer.to_owned(),
        LimitKey::Selector(selector) => match &selector.source {
            SelectorSource::Header(h) => req
                .headers
                .get(h)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
            SelectorSource::Query(q) => req
                .query
                .and_then(|query| query_param(query, q))
                .unwrap_or_default(),
        },
    };
    let (kind, amount) = match limit.amount {
        LimitAmount::Requests(n) => (CounterKind::Requests, n),
        LimitAmount::Tokens(n) => (CounterKind::Consumption, n),
    };
    Slot {
        counter: Counter {
            key: format!(
                "{scope}:l:{}:{}:{}",
                key_part(&limit.name),
                limit.window.seconds,
                key_part(&value)
            ),
            kind,
            limit: i64::try_from(amount).unwrap_or(i64::MAX),
            window_ms: i64::try_from(limit.window.seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
        },
        what: SlotKind::Limit {
            name: Arc::from(limit.name.as_str()),
            amount: limit.amount,
        },
    }
}

fn budget_slot(
    scope: &str,
    owner: Owner,
    name: &str,
    budget: &Budget,
    now: chrono::DateTime<Utc>,
) -> Slot {
    let (label, end) = budget.period.containing(now);
    let window_ms = (end - now).num_milliseconds().max(1);
    Slot {
        counter: Counter {
            key: format!("{scope}:b:{label}"),
            kind: CounterKind::Consumption,
            limit: usd_to_nanos(budget.usd),
            window_ms,
        },
        what: SlotKind::Budget {
            owner,
            name: Arc::from(name),
            usd: budget.usd,
        },
    }
}

fn usd_to_nanos(usd: f64) -> i64 {
    let n = (usd * NANO_USD).round();
    if n >= i64::MAX as f64 {
        i64::MAX
    } else {
        n.max(0.0) as i64
    }
}

/// A value as a key part: itself when short and plain, else a hash of it (selector values
/// come from clients: never trusted to be short, printable or free of `:`).
fn key_part(value: &str) -> String {
    let plain = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        return value.to_owned();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(34);
    out.push_str("h.");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

static LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
static REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
static RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
static LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
static REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
static RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The `x-ratelimit-*` headers of the tightest limit of each kind (the least remaining).
fn ratelimit_headers(
    slots: &[Slot],
    states: &[counters::CounterState],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut tightest: [Option<(LimitAmount, i64, i64)>; 2] = [None, None];
    for (slot, state) in slots.iter().zip(states) {
        let SlotKind::Limit { amount, .. } = &slot.what else {
            continue;
        };
        let remaining = (slot.counter.limit - state.value).max(0);
        let i = usize::from(matches!(amount, LimitAmount::Tokens(_)));
        if tightest[i].is_none_or(|(_, r, _)| remaining < r) {
            tightest[i] = Some((*amount, remaining, state.ttl_ms));
        }
    }
    let mut out = Vec::with_capacity(6);
    for (amount, remaining, ttl) in tightest.into_iter().flatten() {
        push_headers(
            &mut out,
            amount,
            u64::try_from(remaining).unwrap_or(0),
            u64::try_from(ttl).unwrap_or(0).div_ceil(1000),
        );
    }
    out
}

fn push_headers(
    out: &mut Vec<(HeaderName, HeaderValue)>,
    amount: LimitAmount,
    remaining: u64,
    reset_secs: u64,
) {
    let (l, r, s) = match amount {
        LimitAmount::Requests(_) => (&LIMIT_REQUESTS, &REMAINING_REQUESTS, &RESET_REQUESTS),
        LimitAmount::Tokens(_) => (&LIMIT_TOKENS, &REMAINING_TOKENS, &RESET_TOKENS),
    };
    out.push((l.clone(), HeaderValue::from(amount.value())));
    out.push((r.clone(), HeaderValue::from(remaining)));
    out.push((s.clone(), HeaderValue::from(reset_secs)));
}

impl Gate {
    /// A refused request's gate: nothing to charge, the refused limit's headers.
    pub(crate) fn refused(headers: Vec<(HeaderName, HeaderValue)>) -> Gate {
        Gate {
            consumer: None,
            slots: Vec::new(),
            headers,
            counters: None,
        }
    }

    /// A request of a proxy with nothing to count (cost is still computed).
    pub(crate) fn consumer_only(consumer: Option<Arc<CompiledConsumer>>) -> Gate {
        Gate {
            consumer,
            slots: Vec::new(),
            headers: Vec::new(),
            counters: None,
        }
    }

    /// Charges a finished request's tokens and cost to its consumption counters (in the
    /// background: the answer is already sent), and warns once a budget passes 80%.
    pub(crate) fn settle(&self, usage: Option<&Usage>, cost_usd: f64, span: &Span) {
        let Some(counters) = &self.counters else {
            return;
        };
        let tokens = usage.map_or(0, |u| u.input_tokens.saturating_add(u.output_tokens));
        let nanos = usd_to_nanos(cost_usd);
        let mut charges = Vec::new();
        let mut budgets = Vec::new();
        for slot in &self.slots {
            let amount = match &slot.what {
                SlotKind::Limit {
                    amount: LimitAmount::Tokens(_),
                    ..
                } => i64::try_from(tokens).unwrap_or(i64::MAX),
                SlotKind::Budget { .. } => nanos,
                SlotKind::Limit { .. } => continue,
            };
            if amount <= 0 {
                continue;
            }
            if let SlotKind::Budget { owner, name, usd } = &slot.what {
                budgets.push((charges.len(), *owner, Arc::clone(name), *usd));
            }
            charges.push((slot.counter.clone(), amount));
        }
        if charges.is_empty() {
            return;
        }
        if let Some(values) = counters.charge(&charges) {
            warn_budgets(&budgets, &charges, &values, span);
            return;
        }
        let counters = counters.clone();
        let span = span.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let values = counters.charge_now(&charges).await;
            warn_budgets(&budgets, &charges, &values, &span);
        });
    }
}

/// Sets the budgets' used ratio and warns once a budget passes 80% (when the node sees the
/// charge that crosses it).
fn warn_budgets(
    budgets: &[(usize, Owner, Arc<str>, f64)],
    charges: &[(Counter, i64)],
    values: &[Option<i64>],
    span: &Span,
) {
    for (index, owner, name, usd) in budgets {
        let (Some(Some(after)), Some((_, amount))) = (values.get(*index), charges.get(*index))
        else {
            continue;
        };
        let limit = usd_to_nanos(*usd);
        let mark = limit / 5 * 4;
        let before = after - amount;
        let scope = match owner {
            Owner::Proxy => "proxy",
            Owner::Consumer => "consumer",
        };
        metrics::gauge!("switchyard_gateway_budget_used_ratio",
            "scope" => scope, "name" => name.to_string())
        .set(if limit > 0 {
            *after as f64 / limit as f64
        } else {
            1.0
        });
        if before < mark && *after >= mark {
            warn!(parent: span, scope, name = &**name, budget_usd = usd,
                spent_usd = *after as f64 / NANO_USD,
                "a budget is 80% spent");
            metrics::counter!("switchyard_gateway_budget_warnings_total",
                "scope" => scope, "name" => name.to_string())
            .increment(1);
        }
    }
}

#[cfg(test)]
mod tests;
