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
//! ## Shares: most requests never wait for Redis
//!
//! Asking Redis for every admission and every charge costs two round trips per request. So a
//! node holds a *share* of each shared counter it uses (`--limits-local-share`, default 0.5;
//! 0 asks Redis for every request):
//!
//! - **Request limits**: when a node goes to Redis for an admission, the script grants it a
//!   lease of up to `remaining × share ÷ nodes` admissions (at least 1, at most
//!   [`MAX_LEASE`]), counted in Redis at once; the node admits locally while its lease lasts.
//!   Admissions granted never pass the limit, so a request limit is never exceeded, across
//!   the fleet. A lease idle for [`LEASE_IDLE`] is given back, so a quiet node does not hold
//!   what a busy one could use.
//! - **Token limits and budgets**: a node admits locally while its view of the counter (the
//!   value Redis last told it plus its own charges since) is below the limit and its charges
//!   since then stay within its allowance, `remaining × share ÷ nodes`. Charges are sent in
//!   one script per `--limits-sync-interval` (10 ms), which also refreshes the views; a charge
//!   that takes a node past its allowance is sent at once, so near a limit every admission
//!   and charge goes to Redis, as with share 0.
//! - `nodes` is the number of nodes that spoke to Redis in the last 10 s (a sorted set of
//!   node ids beside the counters).
//!
//! On Redis each operation is one Lua script, one round trip, over a multiplexed connection
//! per I/O thread (made on that thread, so no request wakes another thread), bounded by
//! `--redis-timeout`. A failure switches the node to its local counters (`open`) or to 503s
//! (`closed`); a probe every half second brings it back when Redis answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::redis_link::{self, Health};
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
    /// The part of a shared counter's remaining room the nodes may use without asking Redis,
    /// split between them (0 to 1; 0: every admission and charge goes to Redis).
    pub local_share: f64,
    /// How often a node sends the charges it holds and refreshes its view of the counters.
    pub sync_interval: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            redis_url: None,
            key_prefix: "switchyard".to_owned(),
            timeout: Duration::from_millis(50),
            on_failure: FailureMode::Open,
            local_share: 0.5,
            sync_interval: Duration::from_millis(10),
        }
    }
}

/// The most admissions one lease grants.
pub(crate) const MAX_LEASE: i64 = 256;

/// A lease unused this long goes back to the shared counter.
pub(crate) const LEASE_IDLE: Duration = Duration::from_millis(100);

/// A node's view of a consumption counter older than this is not used to admit.
const VIEW_FRESH: Duration = Duration::from_millis(250);

/// A share not used this long is forgotten (the next request asks Redis again).
const SHARE_FORGET: Duration = Duration::from_secs(60);

/// The most counters one sync script carries.
const SYNC_BATCH: usize = 256;

/// A node not heard of in this long no longer counts as one of the fleet's nodes.
const NODE_TTL_MS: i64 = 10_000;

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

/// The admission, with the charges the node holds for these counters sent first.
///
/// KEYS: the counters, then the node registry when ARGV[1] is a node id (else `''`).
/// ARGV: node id, now (ms), share (per million), the most one lease grants; then for each
/// counter its kind (`r` or `c`), limit, window (ms) and amount: for `c`, the charge to add
/// first; for `r`, 1 to be checked and granted a lease, 0 when a lease of the node covers it.
/// Returns `{1, nodes, value1, ttl1, grant1, …}` when admitted, `{0, index, ttl, nodes}` when
/// refused (charges are added either way).
const ADMIT: &str = r"
local node = ARGV[1]
local n = #KEYS
local nodes = 1
if node ~= '' then
  n = n - 1
  local now = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[n + 1], now, node)
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now - tonumber(ARGV[5 + 4 * n]))
  redis.call('PEXPIRE', KEYS[n + 1], 60000)
  nodes = redis.call('ZCARD', KEYS[n + 1])
end
local share = tonumber(ARGV[3]) / 1000000
local most = tonumber(ARGV[4])
local values, ttls = {}, {}
for i = 1, n do
  local a = 4 + 4 * (i - 1)
  local window = tonumber(ARGV[a + 3])
  local amount = tonumber(ARGV[a + 4])
  if ARGV[a + 1] == 'c' and amount > 0 then
    redis.call('INCRBY', KEYS[i], amount)
    if redis.call('PTTL', KEYS[i]) < 0 then
      redis.call('PEXPIRE', KEYS[i], window)
    end
  end
end
for i = 1, n do
  local a = 4 + 4 * (i - 1)
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local t = redis.call('PTTL', KEYS[i])
  local checked = ARGV[a + 1] == 'c' or ARGV[a + 4] == '1'
  if checked and v >= tonumber(ARGV[a + 2]) then
    return {0, i, t, nodes}
  end
  values[i], ttls[i] = v, t
end
local out = {1, nodes}
for i = 1, n do
  local a = 4 + 4 * (i - 1)
  local window = tonumber(ARGV[a + 3])
  local grant = 0
  if ARGV[a + 1] == 'r' and ARGV[a + 4] == '1' then
    local room = tonumber(ARGV[a + 2]) - values[i]
    grant = math.floor(room * share / nodes)
    if grant > most then grant = most end
    if grant > room then grant = room end
    if grant < 1 then grant = 1 end
    values[i] = redis.call('INCRBY', KEYS[i], grant)
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
  out[#out + 1] = grant
end
return out
";

/// Charges, leases given back and views refreshed, for many counters at once.
///
/// KEYS: the counters, then the node registry when ARGV[1] is a node id (else `''`).
/// ARGV: node id, now (ms), the registry's memory (ms); then for each counter the amount
/// (> 0: a charge, starting the window of a new key; < 0: a lease given back, only to a key
/// that still exists; 0: just read) and its window (ms).
/// Returns `{nodes, value1, ttl1, …}`.
const SYNC: &str = r"
local node = ARGV[1]
local n = #KEYS
local nodes = 1
if node ~= '' then
  n = n - 1
  local now = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[n + 1], now, node)
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now - tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[n + 1], 60000)
  nodes = redis.call('ZCARD', KEYS[n + 1])
end
local out = {nodes}
for i = 1, n do
  local amount = tonumber(ARGV[2 + 2 * i])
  local v
  if amount > 0 then
    v = redis.call('INCRBY', KEYS[i], amount)
    if redis.call('PTTL', KEYS[i]) < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[3 + 2 * i])
    end
  elseif amount < 0 and redis.call('PTTL', KEYS[i]) > 0 then
    v = redis.call('INCRBY', KEYS[i], amount)
  else
    v = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  out[#out + 1] = v
  out[#out + 1] = redis.call('PTTL', KEYS[i])
end
return out
";

/// This node's share of one shared counter (see the module docs).
#[derive(Debug)]
struct Share {
    kind: CounterKind,
    limit: i64,
    window_ms: i64,
    /// The end of the counter's window, as Redis last said.
    until: Instant,
    /// When `value` was read.
    synced: Instant,
    /// The counter's value in Redis when last read (leases granted included).
    value: i64,
    /// Requests: admissions granted to this node and not used yet.
    lease: i64,
    /// Consumption: what this node may charge after `synced` and still admit locally.
    allowance: i64,
    /// Consumption charged here and not sent yet.
    pending: i64,
    /// Consumption sent and not acknowledged yet.
    sending: i64,
    /// The last admission or charge that used this share.
    used: Instant,
    /// Requests: one of this node's requests is asking Redis for a lease (the others wait
    /// for it rather than ask too).
    refilling: bool,
    /// Requests: when Redis last refused this counter, and the time then left in its window.
    refused: Option<(Instant, i64)>,
}

impl Share {
    fn new(c: &Counter, now: Instant) -> Share {
        Share {
            kind: c.kind,
            limit: c.limit,
            window_ms: c.window_ms,
            until: now + window(c.window_ms),
            synced: now.checked_sub(VIEW_FRESH * 2).unwrap_or(now),
            value: 0,
            lease: 0,
            allowance: 0,
            pending: 0,
            sending: 0,
            used: now,
            refilling: false,
            refused: None,
        }
    }

    /// The counter's value as this node sees it.
    fn estimate(&self) -> i64 {
        self.value
            .saturating_add(self.sending)
            .saturating_add(self.pending)
    }

    /// Whether this share admits one more request without asking Redis.
    fn admits(&self, c: &Counter, now: Instant) -> bool {
        if self.until <= now || self.limit != c.limit {
            return false;
        }
        match c.kind {
            CounterKind::Requests => self.lease >= 1,
            CounterKind::Consumption => {
                now.duration_since(self.synced) <= VIEW_FRESH
                    && self.estimate() < self.limit
                    && self.sending + self.pending < self.allowance
            }
        }
    }

    /// What `x-ratelimit-*` shows: requests used across the fleet (leases other nodes hold
    /// count as used), or consumption as this node sees it.
    fn state(&self, now: Instant) -> CounterState {
        CounterState {
            value: match self.kind {
                CounterKind::Requests => self.value - self.lease,
                CounterKind::Consumption => self.estimate(),
            },
            ttl_ms: ms(self.until.saturating_duration_since(now)),
        }
    }

    /// Takes in what Redis said of the counter.
    fn synced(&mut self, value: i64, ttl_ms: i64, nodes: i64, share: f64, now: Instant) {
        let until = if ttl_ms > 0 {
            now + Duration::from_millis(ttl_ms as u64)
        } else {
            now + window(self.window_ms)
        };
        self.value = value;
        self.until = until;
        self.synced = now;
        if self.kind == CounterKind::Consumption {
            let room = (self.limit - value).max(0) as f64;
            self.allowance = (room * share / nodes.max(1) as f64).floor() as i64;
        }
    }
}

/// The node's counters: the configuration, the local store, and whether Redis answers.
pub(crate) struct Counters {
    config: LimitsConfig,
    client: Option<redis::Client>,
    admit: redis::Script,
    sync: redis::Script,
    local: Mutex<Local>,
    /// This node's shares of shared counters, by key.
    shares: Mutex<HashMap<String, Share>>,
    /// The node's id in the registry of nodes (`''` with shares off).
    node_id: String,
    registry: String,
    /// Nodes seen in the registry at the last script.
    nodes: AtomicU64,
    syncing: AtomicBool,
    /// Woken when a lease request ends.
    refilled: tokio::sync::Notify,
    /// Whether Redis answered the last time it was asked.
    health: Health,
    /// Scripts run on Redis (admissions and syncs).
    scripts: AtomicU64,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("redis", &self.client.is_some())
            .field("redis_up", &self.health.is_up())
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// Fails on a Redis URL that does not parse, or a share outside 0..=1 (nothing is
    /// connected yet).
    pub(crate) fn new(config: LimitsConfig) -> Result<Arc<Counters>, String> {
        if !(0.0..=1.0).contains(&config.local_share) {
            return Err(format!(
                "--limits-local-share {}: expected a fraction from 0 to 1",
                config.local_share
            ));
        }
        if config.sync_interval.is_zero() {
            return Err("--limits-sync-interval must be more than 0".to_owned());
        }
        let client = match &config.redis_url {
            None => None,
            Some(url) => Some(
                redis::Client::open(url.as_str())
                    .map_err(|e| format!("--redis-url '{}': {e}", redact(url)))?,
            ),
        };
        let node_id = if config.local_share > 0.0 {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            String::new()
        };
        let counters = Arc::new(Counters {
            client,
            admit: redis::Script::new(ADMIT),
            sync: redis::Script::new(SYNC),
            local: Mutex::new(Local::default()),
            shares: Mutex::new(HashMap::new()),
            registry: format!("{}:nodes", config.key_prefix),
            node_id,
            config,
            nodes: AtomicU64::new(1),
            syncing: AtomicBool::new(false),
            refilled: tokio::sync::Notify::new(),
            health: Health::default(),
            scripts: AtomicU64::new(0),
        });
        counters.publish_state();
        Ok(counters)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.config.key_prefix
    }

    /// Scripts run on Redis so far.
    #[cfg(test)]
    pub(crate) fn scripts_run(&self) -> u64 {
        self.scripts.load(Ordering::Relaxed)
    }

    /// What `/readyz` says about the counters.
    pub(crate) fn describe(&self) -> &'static str {
        match (&self.client, self.health.is_up()) {
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
        let redis = self.client.is_some() && self.health.is_up();
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
        if self.health.set_down() {
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
        if self.health.set_up() {
            info!("redis answers again: rate limits and budgets are shared again");
            self.publish_state();
        }
    }

    fn shares(&self) -> std::sync::MutexGuard<'_, HashMap<String, Share>> {
        self.shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sharing(&self) -> bool {
        self.config.local_share > 0.0
    }

    fn nodes(&self) -> i64 {
        i64::try_from(self.nodes.load(Ordering::Relaxed)).unwrap_or(1)
    }

    fn set_nodes(&self, nodes: i64) {
        self.nodes
            .store(u64::try_from(nodes.max(1)).unwrap_or(1), Ordering::Relaxed);
    }

    /// The registry key and the node's id, as the scripts take them.
    fn node_args(&self) -> (Option<&str>, &str) {
        if self.node_id.is_empty() {
            (None, "")
        } else {
            (Some(&self.registry), &self.node_id)
        }
    }

    fn wall_ms() -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }

    /// What the node's shares say of an admission (see [`FromShares`]). `waiting_since`:
    /// when this request started waiting for another's lease request.
    fn ask_shares(&self, counters: &[&Counter], waiting_since: Option<Instant>) -> FromShares {
        let now = Instant::now();
        let mut shares = self.shares();
        let mut wait = false;
        let mut short = false;
        for (index, c) in counters.iter().enumerate() {
            let Some(share) = shares.get(&c.key) else {
                short = true;
                continue;
            };
            if share.admits(c, now) {
                continue;
            }
            short = true;
            if c.kind == CounterKind::Requests {
                if let (Some((at, ttl_ms)), Some(since)) = (share.refused, waiting_since)
                    && at >= since
                {
                    // The lease request this one waited for was refused: so is this.
                    let ttl_ms = ttl_ms - ms(now.duration_since(at));
                    return FromShares::Refused(Verdict::Refused { index, ttl_ms });
                }
                wait |= share.refilling;
            }
        }
        if !short {
            let mut states = Vec::with_capacity(counters.len());
            for c in counters {
                if let Some(share) = shares.get_mut(&c.key) {
                    if c.kind == CounterKind::Requests {
                        share.lease -= 1;
                    }
                    share.used = now;
                    states.push(share.state(now));
                }
            }
            return FromShares::Admitted(Verdict::Admitted(states));
        }
        if wait {
            return FromShares::Wait;
        }
        // This request asks Redis; the node's other requests for these counters wait for it.
        let mut refills = Vec::new();
        for c in counters {
            if c.kind != CounterKind::Requests {
                continue;
            }
            let share = shares
                .entry(c.key.clone())
                .or_insert_with(|| Share::new(c, now));
            if !share.admits(c, now) {
                share.refilling = true;
                refills.push(c.key.clone());
            }
        }
        FromShares::Ask(refills)
    }

    /// Ends lease requests: their waiters look at the shares again.
    fn refills_done(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        {
            let mut shares = self.shares();
            for key in keys {
                if let Some(share) = shares.get_mut(key) {
                    share.refilling = false;
                }
            }
        }
        self.refilled.notify_waiters();
    }
}

/// What a node's shares say of an admission.
enum FromShares {
    /// Admitted from the shares alone.
    Admitted(Verdict),
    /// Refused: the lease request this one waited for was refused.
    Refused(Verdict),
    /// Another request of this node is asking Redis for a lease this one needs.
    Wait,
    /// Ask Redis; the keys are the lease requests this request makes (to end them after).
    Ask(Vec<String>),
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

/// What an admission sent to Redis for one counter (to settle the share with the answer).
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// A consumption counter, with the charges sent first.
    Charge(i64),
    /// A request counter to check and lease for.
    Check,
    /// A request counter covered by a lease of this node (one admission taken from it).
    Leased,
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
        let timeout = self.shared.config.timeout;
        match redis_link::thread_connection(client, &self.conn, timeout, 2) {
            Ok(conn) => Some(conn),
            Err(e) => {
                self.shared.mark_down(&e.to_string());
                None
            }
        }
    }

    /// Whether Redis is to be asked now. When it failed, a probe is started every
    /// [`redis_link::PROBE_INTERVAL`]; until one succeeds, the failure mode applies.
    fn use_redis(&self) -> Option<ConnectionManager> {
        let conn = self.connection()?;
        if self.shared.health.is_up() {
            return Some(conn);
        }
        if self.shared.health.probe_due() {
            let shared = Arc::clone(&self.shared);
            redis_link::probe(conn, shared.config.timeout * 4, "limits", move || {
                shared.mark_up()
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
            let mut refills = Vec::new();
            if self.shared.sharing() && self.shared.health.is_up() {
                let mut waiting_since = None;
                loop {
                    let refilled = self.shared.refilled.notified();
                    tokio::pin!(refilled);
                    refilled.as_mut().enable();
                    match self.shared.ask_shares(counters, waiting_since) {
                        FromShares::Admitted(v) | FromShares::Refused(v) => return Ok(v),
                        FromShares::Ask(keys) => {
                            refills = keys;
                            break;
                        }
                        FromShares::Wait => {
                            let since = *waiting_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > self.shared.config.timeout {
                                break;
                            }
                            let _ =
                                tokio::time::timeout(self.shared.config.timeout, refilled).await;
                        }
                    }
                }
            }
            let verdict = match self.use_redis() {
                Some(conn) => self.admit_on_redis(conn, counters).await,
                None => None,
            };
            self.shared.refills_done(&refills);
            if let Some(verdict) = verdict {
                return Ok(verdict);
            }
            if self.shared.config.on_failure == FailureMode::Closed {
                return Err(Unavailable);
            }
        }
        Ok(self.local().admit(counters, Instant::now()))
    }

    /// One admission script; `None` when Redis failed (marked down).
    async fn admit_on_redis(
        &self,
        mut conn: ConnectionManager,
        counters: &[&Counter],
    ) -> Option<Verdict> {
        let shared = &self.shared;
        // Take what the node's shares hold for these counters: charges to send first, and
        // admissions its leases cover.
        let sent: Vec<Sent> = {
            let mut shares = shared.shares();
            let now = Instant::now();
            counters
                .iter()
                .map(|c| {
                    let share = shared.sharing().then(|| {
                        shares
                            .entry(c.key.clone())
                            .or_insert_with(|| Share::new(c, now))
                    });
                    match (c.kind, share) {
                        (CounterKind::Consumption, Some(s)) => {
                            let amount = std::mem::take(&mut s.pending);
                            s.sending += amount;
                            Sent::Charge(amount)
                        }
                        (CounterKind::Consumption, None) => Sent::Charge(0),
                        (CounterKind::Requests, Some(s))
                            if s.lease >= 1 && s.until > now && s.limit == c.limit =>
                        {
                            s.lease -= 1;
                            Sent::Leased
                        }
                        (CounterKind::Requests, _) => Sent::Check,
                    }
                })
                .collect()
        };
        let (registry, node) = shared.node_args();
        let mut call = shared.admit.prepare_invoke();
        for c in counters {
            call.key(&c.key);
        }
        if let Some(registry) = registry {
            call.key(registry);
        }
        call.arg(node)
            .arg(Counters::wall_ms())
            .arg((shared.config.local_share * 1e6).round() as i64)
            .arg(MAX_LEASE);
        for (c, s) in counters.iter().zip(&sent) {
            let (kind, amount) = match s {
                Sent::Charge(n) => ("c", *n),
                Sent::Check => ("r", 1),
                Sent::Leased => ("r", 0),
            };
            call.arg(kind)
                .arg(c.limit)
                .arg(c.window_ms.max(1))
                .arg(amount);
        }
        if registry.is_some() {
            call.arg(NODE_TTL_MS);
        }
        let verdict = self
            .run_script(call, &mut conn, shared.config.timeout, "admit")
            .await
            .and_then(|out| {
                let parsed = parse_admit(&out, counters.len());
                if parsed.is_none() {
                    shared.mark_down("unexpected answer to the admit script");
                }
                parsed
            });
        if shared.sharing() {
            self.settle_admission(counters, &sent, verdict.as_ref());
        }
        self.start_syncing();
        verdict.map(|(v, _)| v)
    }

    /// Brings the node's shares up to date with an admission's answer (or its failure).
    fn settle_admission(
        &self,
        counters: &[&Counter],
        sent: &[Sent],
        answer: Option<&(Verdict, Answered)>,
    ) {
        let shared = &self.shared;
        let now = Instant::now();
        let mut shares = shared.shares();
        if let Some((_, answered)) = answer {
            shared.set_nodes(answered.nodes);
        }
        let nodes = shared.nodes();
        for (i, (c, s)) in counters.iter().zip(sent).enumerate() {
            let Some(share) = shares.get_mut(&c.key) else {
                continue;
            };
            if share.limit != c.limit {
                // A changed limit: a lease granted under the old one is not used (it stays
                // counted in Redis: the error is on the side of fewer admissions).
                share.lease = 0;
                share.limit = c.limit;
            }
            share.window_ms = c.window_ms;
            match (answer, s) {
                (None, Sent::Charge(n)) => {
                    // Not sent: held for the next sync (or the local counters, below).
                    share.sending -= n;
                    share.pending += n;
                }
                (None | Some((Verdict::Refused { .. }, _)), Sent::Leased) => share.lease += 1,
                (Some((Verdict::Refused { index, ttl_ms }, _)), Sent::Check) => {
                    if *index == i {
                        share.refused = Some((now, *ttl_ms));
                    }
                }
                (Some((_, answered)), s) => {
                    if let Sent::Charge(n) = s {
                        share.sending -= n;
                        if answered.counters.is_empty() {
                            // Refused: the charges went in all the same.
                            share.value += n;
                        }
                    }
                    if let Some(&(value, ttl, grant)) = answered.counters.get(i) {
                        share.synced(value, ttl, nodes, shared.config.local_share, now);
                        share.lease += (grant - 1).max(0);
                        share.refused = None;
                    }
                    share.used = now;
                }
                (None, Sent::Check) => {}
            }
        }
    }

    /// Charges consumption to counters. `Some(values)` (the counters' values as this node
    /// now sees them, `None` where unknown) when that is done: counted locally, or held within
    /// the node's share for the next sync. `None` when the charges are to be sent now, with
    /// [`CounterHandle::charge_now`] (shares off, or past the node's allowance).
    pub(crate) fn charge(&self, charges: &[(Counter, i64)]) -> Option<Vec<Option<i64>>> {
        let shared = &self.shared;
        if shared.client.is_some() {
            if shared.health.is_up() {
                if !shared.sharing() {
                    return None;
                }
                let now = Instant::now();
                let mut send_now = false;
                let values = {
                    let mut shares = shared.shares();
                    charges
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(c, amount)| {
                            if !shares.contains_key(&c.key) {
                                shares.insert(c.key.clone(), Share::new(c, now));
                            }
                            let share = shares.get_mut(&c.key)?;
                            share.pending = share.pending.saturating_add(*amount);
                            share.used = now;
                            send_now |= share.sending + share.pending >= share.allowance;
                            Some(share.estimate())
                        })
                        .collect()
                };
                if send_now {
                    return None;
                }
                self.start_syncing();
                return Some(values);
            }
            if shared.config.on_failure == FailureMode::Closed {
                // Nothing is admitted while Redis is away; this charge is lost with it.
                metrics::counter!("switchyard_gateway_limits_charges_lost_total").increment(1);
                return Some(vec![None; charges.len()]);
            }
        }
        let now = Instant::now();
        let mut local = self.local();
        Some(
            charges
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, amount)| Some(local.charge(c, *amount, now)))
                .collect(),
        )
    }

    /// Sends charges [`CounterHandle::charge`] did not settle; returns the counters' values
    /// after them (`None` where unknown).
    pub(crate) async fn charge_now(&self, charges: &[(Counter, i64)]) -> Vec<Option<i64>> {
        let charges: Vec<(Counter, i64)> =
            charges.iter().filter(|(_, n)| *n > 0).cloned().collect();
        if self.shared.sharing() {
            // `charge` added them to the shares: send those shares' holdings.
            self.sync(Some(charges.iter().map(|(c, _)| c.key.clone()).collect()))
                .await;
            let shares = self.shared.shares();
            return charges
                .iter()
                .map(|(c, _)| shares.get(&c.key).map(Share::estimate))
                .collect();
        }
        let batch: Vec<(String, i64, i64)> = charges
            .iter()
            .map(|(c, n)| (c.key.clone(), *n, c.window_ms))
            .collect();
        let answer = match self.use_redis() {
            Some(conn) => self.sync_on_redis(conn, &batch).await,
            None => None,
        };
        match answer {
            Some(values) => values.into_iter().map(|(v, _)| Some(v)).collect(),
            None => {
                self.charges_not_sent(&charges);
                vec![None; charges.len()]
            }
        }
    }

    /// Starts the node's sync task (once), with shares on.
    fn start_syncing(&self) {
        if !self.shared.sharing() || self.shared.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.syncing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Counters> = Arc::downgrade(&self.shared);
        let conn = Arc::clone(&self.conn);
        let interval = self.shared.config.sync_interval;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let handle = CounterHandle {
                    shared,
                    conn: Arc::clone(&conn),
                };
                if handle.shared.health.is_up() {
                    handle.sync(None).await;
                } else {
                    handle.fall_back_pending();
                }
            }
        });
    }

    /// Sends held charges, gives back idle leases and refreshes the views of counters in
    /// use: of `keys`, or of every share.
    async fn sync(&self, keys: Option<Vec<String>>) {
        let shared = &self.shared;
        let now = Instant::now();
        // (key, amount, window)
        let mut work: Vec<(String, i64, i64)> = Vec::new();
        {
            let mut shares = shared.shares();
            if keys.is_none() {
                shares.retain(|_, s| {
                    s.until > now
                        && (now.duration_since(s.used) < SHARE_FORGET || s.pending + s.sending > 0)
                });
            }
            let mut visit = |key: &String, s: &mut Share| {
                let amount = match s.kind {
                    CounterKind::Consumption => {
                        let amount = std::mem::take(&mut s.pending);
                        let refresh = now.duration_since(s.synced) >= shared.config.sync_interval
                            && now.duration_since(s.used) < VIEW_FRESH * 4;
                        if amount == 0 && !refresh {
                            return;
                        }
                        s.sending += amount;
                        amount
                    }
                    CounterKind::Requests => {
                        // Give back a lease nobody used for a while, while its window lasts.
                        if s.lease == 0
                            || now.duration_since(s.used) < LEASE_IDLE
                            || s.until <= now + LEASE_IDLE
                        {
                            return;
                        }
                        -std::mem::take(&mut s.lease)
                    }
                };
                work.push((key.clone(), amount, s.window_ms));
            };
            match &keys {
                Some(keys) => {
                    for key in keys {
                        if let Some(s) = shares.get_mut(key) {
                            visit(key, s);
                        }
                    }
                }
                None => {
                    for (key, s) in shares.iter_mut() {
                        visit(key, s);
                    }
                }
            }
        }
        for batch in work.chunks(SYNC_BATCH) {
            let answer = match self.use_redis() {
                Some(conn) => self.sync_on_redis(conn, batch).await,
                None => None,
            };
            self.settle_sync(batch, answer);
        }
    }

    async fn sync_on_redis(
        &self,
        mut conn: ConnectionManager,
        batch: &[(String, i64, i64)],
    ) -> Option<Vec<(i64, i64)>> {
        let shared = &self.shared;
        let (registry, node) = shared.node_args();
        let mut call = shared.sync.prepare_invoke();
        for (key, _, _) in batch {
            call.key(key);
        }
        if let Some(registry) = registry {
            call.key(registry);
        }
        call.arg(node).arg(Counters::wall_ms()).arg(NODE_TTL_MS);
        for (_, amount, window_ms) in batch {
            call.arg(*amount).arg((*window_ms).max(1));
        }
        // Not on any request's path (the answer is sent): a longer wait is fine.
        let out = self
            .run_script(call, &mut conn, shared.config.timeout * 4, "sync")
            .await?;
        if out.len() != 1 + 2 * batch.len() {
            shared.mark_down("unexpected answer to the sync script");
            return None;
        }
        shared.set_nodes(out[0]);
        Some(out[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    /// Runs one script on Redis within `timeout`; a failure marks Redis down (`None`).
    async fn run_script(
        &self,
        call: redis::ScriptInvocation<'_>,
        conn: &mut ConnectionManager,
        timeout: Duration,
        what: &str,
    ) -> Option<Vec<i64>> {
        let shared = &self.shared;
        shared.scripts.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, call.invoke_async::<Vec<i64>>(conn)).await {
            Ok(Ok(out)) => Some(out),
            Ok(Err(e)) => {
                shared.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                shared.mark_down(&format!(
                    "no answer to the {what} script within {} ms",
                    timeout.as_millis()
                ));
                None
            }
        }
    }

    fn settle_sync(&self, batch: &[(String, i64, i64)], answer: Option<Vec<(i64, i64)>>) {
        let shared = &self.shared;
        let now = Instant::now();
        let nodes = shared.nodes();
        let mut failed = Vec::new();
        {
            let mut shares = shared.shares();
            for (i, (key, amount, _)) in batch.iter().enumerate() {
                let Some(share) = shares.get_mut(key) else {
                    continue;
                };
                match share.kind {
                    CounterKind::Consumption => share.sending -= amount,
                    // A lease not given back stays this node's.
                    CounterKind::Requests if answer.is_none() => share.lease -= amount,
                    CounterKind::Requests => {}
                }
                match answer.as_ref().and_then(|a| a.get(i)) {
                    Some(&(value, ttl)) => {
                        share.synced(value, ttl, nodes, shared.config.local_share, now);
                    }
                    None if *amount > 0 => failed.push((
                        Counter {
                            key: key.clone(),
                            kind: share.kind,
                            limit: share.limit,
                            window_ms: share.window_ms,
                        },
                        *amount,
                    )),
                    None => {}
                }
            }
        }
        if !failed.is_empty() {
            self.charges_not_sent(&failed);
        }
    }

    /// Charges Redis did not take: the local counters count them in the `open` mode; in the
    /// `closed` mode they are lost with Redis (nothing is admitted meanwhile).
    fn charges_not_sent(&self, charges: &[(Counter, i64)]) {
        if self.shared.config.on_failure == FailureMode::Closed {
            metrics::counter!("switchyard_gateway_limits_charges_lost_total")
                .increment(charges.len() as u64);
            return;
        }
        let now = Instant::now();
        let mut local = self.local();
        for (c, amount) in charges {
            local.charge(c, *amount, now);
        }
    }

    /// With Redis away, the charges the shares hold go where `charges_not_sent` says.
    fn fall_back_pending(&self) {
        let mut held = Vec::new();
        {
            let mut shares = self.shared.shares();
            for (key, s) in shares.iter_mut() {
                if s.pending > 0 {
                    held.push((
                        Counter {
                            key: key.clone(),
                            kind: s.kind,
                            limit: s.limit,
                            window_ms: s.window_ms,
                        },
                        std::mem::take(&mut s.pending),
                    ));
                }
            }
        }
        if !held.is_empty() {
            self.charges_not_sent(&held);
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.shared
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What an admission script said besides its verdict: the fleet's size and, for each
/// counter, its value, time left (ms) and the lease granted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answered {
    nodes: i64,
    counters: Vec<(i64, i64, i64)>,
}

fn parse_admit(out: &[i64], n: usize) -> Option<(Verdict, Answered)> {
    match out {
        [0, index, ttl, nodes] => {
            let index = usize::try_from(*index).ok()?.checked_sub(1)?;
            (index < n).then_some((
                Verdict::Refused {
                    index,
                    ttl_ms: *ttl,
                },
                Answered {
                    nodes: *nodes,
                    counters: Vec::new(),
                },
            ))
        }
        [1, nodes, rest @ ..] if rest.len() == 3 * n => {
            let counters: Vec<(i64, i64, i64)> =
                rest.chunks_exact(3).map(|p| (p[0], p[1], p[2])).collect();
            let states = counters
                .iter()
                .map(|&(value, ttl_ms, grant)| CounterState {
                    // A lease counts in Redis at once; this admission is its first.
                    value: value - (grant - 1).max(0),
                    ttl_ms,
                })
                .collect();
            Some((
                Verdict::Admitted(states),
                Answered {
                    nodes: *nodes,
                    counters,
                },
            ))
        }
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

fn window(window_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(window_ms.max(1)).unwrap_or(u64::MAX))
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
        // A lease of 4 counts 4 in Redis at once; this admission is its first: value 5 - 3.
        let (verdict, answered) = parse_admit(&[1, 3, 8, 100, 4, 0, 200, 0], 2).unwrap();
        assert_eq!(
            verdict,
            Verdict::Admitted(vec![
                CounterState {
                    value: 5,
                    ttl_ms: 100
                },
                CounterState {
                    value: 0,
                    ttl_ms: 200
                }
            ])
        );
        assert_eq!(answered.nodes, 3);
        assert_eq!(answered.counters, vec![(8, 100, 4), (0, 200, 0)]);
        assert_eq!(
            parse_admit(&[0, 2, 900, 1], 2).map(|a| a.0),
            Some(Verdict::Refused {
                index: 1,
                ttl_ms: 900
            })
        );
        assert_eq!(parse_admit(&[0, 3, 900, 1], 2), None);
        assert_eq!(parse_admit(&[0, 0, 900, 1], 2), None);
        assert_eq!(parse_admit(&[1, 1, 5, 100], 2), None);
        assert_eq!(parse_admit(&[1, 1, 5, 100, 0, 5, 100], 2), None);
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
