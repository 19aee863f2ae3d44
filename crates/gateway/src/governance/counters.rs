//! The counters behind rate limits and budgets: in Redis, shared by every node of a gateway,
//! or in this node's memory (no `--redis-url`, or Redis unreachable in the `open` failure
//! mode). Both run the same two operations with the same semantics:
//!
//! - **admit** a request against a list of counters, atomically: refused if any counter is
//!   already at its limit; otherwise each request counter is incremented and each
//!   consumption counter (tokens, spend) has its window started if it was not. A fixed window
//!   starts at a key's first request (its expiry is set then).
//! - **charge** consumption (tokens, nano-USD) to counters when a request's usage is known.
//!
//! On Redis each operation is one Lua script, one round trip, over a multiplexed connection
//! per I/O thread (made on that thread, so no request wakes another thread), bounded by
//! `--redis-timeout`. A failure switches the node to its local counters (`open`) or to 503s
//! (`closed`); a probe every half second brings it back when Redis answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tracing::{info, warn};

/// What a node does with limited requests while Redis does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Count on the node's own counters (limits then hold per node), and go back to Redis
    /// when it answers.
    Open,
    /// Refuse limited requests with 503 until Redis answers.
    Closed,
}

impl std::str::FromStr for FailureMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            other => Err(format!("'{other}': expected 'open' or 'closed'")),
        }
    }
}

/// Where a node keeps its rate-limit and budget counters (flags of `switchyard gateway`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `redis://host:port[/db]` (or `rediss://`); `None`: counters per node.
    pub redis_url: Option<String>,
    /// Prefix of every key this node writes (gateways or tests sharing a Redis keep apart).
    pub key_prefix: String,
    /// The longest a request waits for Redis before the failure mode applies.
    pub timeout: Duration,
    pub on_failure: FailureMode,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            redis_url: None,
            key_prefix: "switchyard".to_owned(),
            timeout: Duration::from_millis(50),
            on_failure: FailureMode::Open,
        }
    }
}

/// How often a node whose Redis failed tries it again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CounterKind {
    /// Admitted requests: incremented at admission.
    Requests,
    /// Tokens or nano-USD: charged when a request's usage is known.
    Consumption,
}

/// One counter a request is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counter {
    pub key: String,
    pub kind: CounterKind,
    pub limit: i64,
    /// The window's length from the key's first request (a budget: until its period ends).
    pub window_ms: i64,
}

/// A counter's value and the time left in its window, after an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CounterState {
    pub value: i64,
    pub ttl_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every counter was below its limit; their states after the admission, in order.
    Admitted(Vec<CounterState>),
    /// Counter `index` is at its limit; its window ends in `ttl_ms`.
    Refused { index: usize, ttl_ms: i64 },
}

/// Redis did not answer and the failure mode is `closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unavailable;

/// KEYS: the counters; ARGV: for each, its kind (`r` or `c`), limit and window (ms).
/// Returns `{1, 0, value1, ttl1, …}` when admitted, `{0, index, ttl}` when refused.
const ADMIT: &str = r"
local n = #KEYS
local values, ttls = {}, {}
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 1])
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local t = redis.call('PTTL', KEYS[i])
  if v >= limit then
    return {0, i, t}
  end
  values[i], ttls[i] = v, t
end
local out = {1, 0}
for i = 1, n do
  local window = tonumber(ARGV[3 * i])
  if ARGV[3 * i - 2] == 'r' then
    values[i] = redis.call('INCR', KEYS[i])
    if ttls[i] < 0 then
      redis.call('PEXPIRE', KEYS[i], window)
      ttls[i] = window
    end
  elseif ttls[i] < 0 then
    redis.call('SET', KEYS[i], values[i], 'PX', window)
    ttls[i] = window
  end
  out[#out + 1] = values[i]
  out[#out + 1] = ttls[i]
end
return out
";

/// KEYS: the counters; ARGV: for each, the amount and the window (ms) for a key that is new.
/// Returns the new values.
const CHARGE: &str = r"
local out = {}
for i = 1, #KEYS do
  local v = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  end
  out[i] = v
end
return out
";

/// The node's counters: the configuration, the local store, and whether Redis answers.
pub(crate) struct Counters {
    config: LimitsConfig,
    client: Option<redis::Client>,
    admit: redis::Script,
    charge: redis::Script,
    local: Mutex<Local>,
    /// Redis answered the last time it was asked.
    redis_up: AtomicBool,
    /// When Redis was last probed (ms since `epoch`).
    last_probe_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("redis", &self.client.is_some())
            .field("redis_up", &self.redis_up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// Fails on a Redis URL that does not parse (nothing is connected yet).
    pub(crate) fn new(config: LimitsConfig) -> Result<Arc<Counters>, String> {
        let client = match &config.redis_url {
            None => None,
            Some(url) => Some(
                redis::Client::open(url.as_str())
                    .map_err(|e| format!("--redis-url '{}': {e}", redact(url)))?,
            ),
        };
        let counters = Arc::new(Counters {
            client,
            config,
            admit: redis::Script::new(ADMIT),
            charge: redis::Script::new(CHARGE),
            local: Mutex::new(Local::default()),
            redis_up: AtomicBool::new(true),
            last_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        counters.publish_state();
        Ok(counters)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.config.key_prefix
    }

    /// What `/readyz` says about the counters.
    pub(crate) fn describe(&self) -> &'static str {
        match (&self.client, self.redis_up.load(Ordering::Relaxed)) {
            (None, _) => {
                "limits: local counters (no --redis-url: rate limits and budgets hold per node)"
            }
            (Some(_), true) => "limits: redis",
            (Some(_), false) => match self.config.on_failure {
                FailureMode::Open => {
                    "limits: local counters (redis unreachable; failure mode open)"
                }
                FailureMode::Closed => {
                    "limits: unavailable (redis unreachable; failure mode closed: limited requests get 503)"
                }
            },
        }
    }

    fn publish_state(&self) {
        let redis = self.client.is_some() && self.redis_up.load(Ordering::Relaxed);
        metrics::gauge!("switchyard_gateway_limits_backend", "state" => "redis").set(if redis {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("switchyard_gateway_limits_backend", "state" => "local").set(if redis {
            0.0
        } else {
            1.0
        });
    }

    fn mark_down(&self, why: &str) {
        metrics::counter!("switchyard_gateway_limits_redis_errors_total").increment(1);
        if self.redis_up.swap(false, Ordering::AcqRel) {
            self.last_probe_ms.store(self.now_ms(), Ordering::Relaxed);
            match self.config.on_failure {
                FailureMode::Open => warn!(
                    error = why,
                    "redis does not answer: rate limits and budgets fall back to this node's own counters"
                ),
                FailureMode::Closed => warn!(
                    error = why,
                    "redis does not answer: limited requests are refused (503) until it does"
                ),
            }
            self.publish_state();
        }
    }

    fn mark_up(&self) {
        if !self.redis_up.swap(true, Ordering::AcqRel) {
            info!("redis answers again: rate limits and budgets are shared again");
            self.publish_state();
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether it is time to probe a failed Redis (at most one probe per interval).
    fn probe_due(&self) -> bool {
        let now = self.now_ms();
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= PROBE_INTERVAL.as_millis() as u64
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// One I/O thread's access to the counters: the node's shared state and this thread's own
/// Redis connection (made lazily on the thread, so its driver task runs there).
#[derive(Clone)]
pub(crate) struct CounterHandle {
    shared: Arc<Counters>,
    conn: Arc<OnceLock<ConnectionManager>>,
}

impl std::fmt::Debug for CounterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterHandle")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl CounterHandle {
    pub(crate) fn new(shared: Arc<Counters>) -> CounterHandle {
        CounterHandle {
            shared,
            conn: Arc::new(OnceLock::new()),
        }
    }

    /// A handle with a connection of its own (one per I/O thread).
    pub(crate) fn for_thread(&self) -> CounterHandle {
        CounterHandle::new(Arc::clone(&self.shared))
    }

    pub(crate) fn shared(&self) -> &Counters {
        &self.shared
    }

    fn connection(&self) -> Option<ConnectionManager> {
        let client = self.shared.client.as_ref()?;
        if let Some(conn) = self.conn.get() {
            return Some(conn.clone());
        }
        let timeout = self.shared.config.timeout;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        match ConnectionManager::new_lazy_with_config(client.clone(), config) {
            Ok(conn) => Some(self.conn.get_or_init(|| conn).clone()),
            Err(e) => {
                self.shared.mark_down(&e.to_string());
                None
            }
        }
    }

    /// Whether Redis is to be asked now. When it failed, a probe is started every
    /// [`PROBE_INTERVAL`] (on this thread); until one succeeds, the failure mode applies.
    fn use_redis(&self) -> Option<ConnectionManager> {
        let conn = self.connection()?;
        if self.shared.redis_up.load(Ordering::Acquire) {
            return Some(conn);
        }
        if self.shared.probe_due() {
            let shared = Arc::clone(&self.shared);
            let mut probe = conn;
            tokio::spawn(async move {
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut probe);
                match tokio::time::timeout(shared.config.timeout * 4, ping).await {
                    Ok(Ok(_)) => shared.mark_up(),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "redis probe failed");
                    }
                    Err(_) => tracing::debug!("redis probe timed out"),
                }
            });
        }
        None
    }

    /// Admits a request against `counters` (see the module docs).
    pub(crate) async fn admit(&self, counters: &[&Counter]) -> Result<Verdict, Unavailable> {
        if counters.is_empty() {
            return Ok(Verdict::Admitted(Vec::new()));
        }
        if self.shared.client.is_some() {
            match self.use_redis() {
                Some(mut conn) => {
                    let mut call = self.shared.admit.prepare_invoke();
                    for c in counters {
                        call.key(&c.key);
                        call.arg(match c.kind {
                            CounterKind::Requests => "r",
                            CounterKind::Consumption => "c",
                        })
                        .arg(c.limit)
                        .arg(c.window_ms.max(1));
                    }
                    let answer = tokio::time::timeout(
                        self.shared.config.timeout,
                        call.invoke_async::<Vec<i64>>(&mut conn),
                    )
                    .await;
                    match answer {
                        Ok(Ok(out)) => match parse_admit(&out, counters.len()) {
                            Some(v) => return Ok(v),
                            None => self
                                .shared
                                .mark_down("unexpected answer to the admit script"),
                        },
                        Ok(Err(e)) => self.shared.mark_down(&e.to_string()),
                        Err(_) => self.shared.mark_down(&format!(
                            "no answer within {} ms",
                            self.shared.config.timeout.as_millis()
                        )),
                    }
                }
                None if self.shared.redis_up.load(Ordering::Acquire) => {}
                None => {}
            }
            if self.shared.config.on_failure == FailureMode::Closed {
                return Err(Unavailable);
            }
        }
        Ok(self.local().admit(counters, Instant::now()))
    }

    /// Adds `amount`s to counters; returns their new values (`None` where unknown).
    pub(crate) async fn charge(&self, charges: &[(Counter, i64)]) -> Vec<Option<i64>> {
        let charges: Vec<&(Counter, i64)> = charges.iter().filter(|(_, n)| *n > 0).collect();
        if charges.is_empty() {
            return Vec::new();
        }
        if self.shared.client.is_some() {
            if let Some(mut conn) = self.use_redis() {
                let mut call = self.shared.charge.prepare_invoke();
                for (c, amount) in &charges {
                    call.key(&c.key).arg(*amount).arg(c.window_ms.max(1));
                }
                // Not on any request's path (the answer is sent): a longer wait is fine.
                let answer = tokio::time::timeout(
                    self.shared.config.timeout * 4,
                    call.invoke_async::<Vec<i64>>(&mut conn),
                )
                .await;
                match answer {
                    Ok(Ok(out)) if out.len() == charges.len() => {
                        return out.into_iter().map(Some).collect();
                    }
                    Ok(Ok(_)) => self
                        .shared
                        .mark_down("unexpected answer to the charge script"),
                    Ok(Err(e)) => self.shared.mark_down(&e.to_string()),
                    Err(_) => self.shared.mark_down("no answer to a charge"),
                }
            }
            if self.shared.config.on_failure == FailureMode::Closed {
                // Nothing is admitted while Redis is away; this charge is lost with it.
                metrics::counter!("switchyard_gateway_limits_charges_lost_total").increment(1);
                return vec![None; charges.len()];
            }
        }
        let now = Instant::now();
        let mut local = self.local();
        charges
            .iter()
            .map(|(c, amount)| Some(local.charge(c, *amount, now)))
            .collect()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.shared
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn parse_admit(out: &[i64], n: usize) -> Option<Verdict> {
    match out {
        [0, index, ttl] => {
            let index = usize::try_from(*index).ok()?.checked_sub(1)?;
            (index < n).then_some(Verdict::Refused {
                index,
                ttl_ms: *ttl,
            })
        }
        [1, 0, rest @ ..] if rest.len() == 2 * n => Some(Verdict::Admitted(
            rest.chunks_exact(2)
                .map(|p| CounterState {
                    value: p[0],
                    ttl_ms: p[1],
                })
                .collect(),
        )),
        _ => None,
    }
}

/// Hides a Redis URL's password.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((head, tail)) => match head.rsplit_once(':') {
            Some((user, _)) if user.contains("//") => format!("{user}:***@{tail}"),
            _ => format!("***@{tail}"),
        },
        None => url.to_owned(),
    }
}

/// This node's own counters, with the semantics of the Redis scripts.
#[derive(Default)]
struct Local {
    entries: HashMap<String, (i64, Instant)>,
    writes: u64,
}

impl Local {
    fn live(&mut self, key: &str, now: Instant) -> Option<(i64, Instant)> {
        match self.entries.get(key) {
            Some(&(v, until)) if until > now => Some((v, until)),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn admit(&mut self, counters: &[&Counter], now: Instant) -> Verdict {
        let mut states = Vec::with_capacity(counters.len());
        for (index, c) in counters.iter().enumerate() {
            let entry = self.live(&c.key, now);
            let value = entry.map_or(0, |e| e.0);
            if value >= c.limit {
                let ttl_ms = entry.map_or(-2, |(_, until)| ms(until - now));
                return Verdict::Refused { index, ttl_ms };
            }
            states.push(entry);
        }
        let mut out = Vec::with_capacity(counters.len());
        for (c, entry) in counters.iter().zip(states) {
            let (mut value, until) =
                entry.unwrap_or((0, now + Duration::from_millis(c.window_ms.max(1) as u64)));
            if c.kind == CounterKind::Requests {
                value += 1;
            }
            self.entries.insert(c.key.clone(), (value, until));
            out.push(CounterState {
                value,
                ttl_ms: ms(until - now),
            });
        }
        self.sweep(now);
        Verdict::Admitted(out)
    }

    fn charge(&mut self, c: &Counter, amount: i64, now: Instant) -> i64 {
        let (value, until) = self
            .live(&c.key, now)
            .unwrap_or((0, now + Duration::from_millis(c.window_ms.max(1) as u64)));
        let value = value.saturating_add(amount);
        self.entries.insert(c.key.clone(), (value, until));
        self.sweep(now);
        value
    }

    /// Drops expired entries now and then (every 4096 writes), so the map holds live
    /// windows only.
    fn sweep(&mut self, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(4096) {
            self.entries.retain(|_, (_, until)| *until > now);
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(key: &str, kind: CounterKind, limit: i64) -> Counter {
        Counter {
            key: key.into(),
            kind,
            limit,
            window_ms: 60_000,
        }
    }

    #[test]
    fn local_counters_admit_below_the_limit_and_charge_consumption() {
        let mut local = Local::default();
        let now = Instant::now();
        let reqs = counter("r", CounterKind::Requests, 2);
        let toks = counter("t", CounterKind::Consumption, 100);
        let both = [&reqs, &toks];
        let Verdict::Admitted(s) = local.admit(&both, now) else {
            panic!("refused")
        };
        assert_eq!((s[0].value, s[1].value), (1, 0));
        assert_eq!(s[0].ttl_ms, 60_000);
        // Tokens are added when known; while below the limit, requests are admitted.
        assert_eq!(local.charge(&toks, 99, now), 99);
        assert!(matches!(local.admit(&both, now), Verdict::Admitted(_)));
        // The request limit is reached: refused, naming it, with the window's time left.
        let later = now + Duration::from_secs(10);
        assert_eq!(
            local.admit(&both, later),
            Verdict::Refused {
                index: 0,
                ttl_ms: 50_000
            }
        );
        // A refusal counts nothing: the token counter is unchanged.
        assert_eq!(local.charge(&toks, 1, later), 100);
        assert!(matches!(
            local.admit(&[&toks], later),
            Verdict::Refused { index: 0, .. }
        ));
        // The window ends: counting starts again.
        let next = now + Duration::from_secs(61);
        let Verdict::Admitted(s) = local.admit(&both, next) else {
            panic!("refused after the window")
        };
        assert_eq!((s[0].value, s[1].value), (1, 0));
    }

    #[test]
    fn admit_answers_parse_strictly() {
        assert_eq!(
            parse_admit(&[1, 0, 5, 100, 0, 200], 2),
            Some(Verdict::Admitted(vec![
                CounterState {
                    value: 5,
                    ttl_ms: 100
                },
                CounterState {
                    value: 0,
                    ttl_ms: 200
                }
            ]))
        );
        assert_eq!(
            parse_admit(&[0, 2, 900], 2),
            Some(Verdict::Refused {
                index: 1,
                ttl_ms: 900
            })
        );
        assert_eq!(parse_admit(&[0, 3, 900], 2), None);
        assert_eq!(parse_admit(&[0, 0, 900], 2), None);
        assert_eq!(parse_admit(&[1, 0, 5], 2), None);
        assert_eq!(parse_admit(&[], 0), None);
    }

    #[test]
    fn redis_urls_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn failure_modes_parse() {
        assert_eq!("open".parse::<FailureMode>(), Ok(FailureMode::Open));
        assert_eq!("closed".parse::<FailureMode>(), Ok(FailureMode::Closed));
        assert!("maybe".parse::<FailureMode>().is_err());
    }
}
