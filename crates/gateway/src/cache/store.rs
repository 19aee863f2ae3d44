//! Where entries live: a bounded in-memory LRU per node, in front of Redis (shared by every
//! node of the gateway) when the node has `--redis-url`.
//!
//! - A lookup asks memory first, then Redis (one `GET`, bounded by `--redis-timeout`); an
//!   entry found in Redis is kept in memory for the rest of its life.
//! - A store goes to memory at once and to Redis in a task of its own (`SET … PX ttl`): the
//!   request never waits for it.
//! - Redis failing (an error, or no answer in time) is a miss, never an error: the node stops
//!   asking it and probes it every half second, like the counters.
//! - Entries larger than `--cache-max-entry-bytes` (serialized) are not stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tracing::{debug, info, warn};

use super::entry::{ENTRY_VERSION, Entry, unix_ms};
use super::semantic::{Quantized, SemanticIndex};
use crate::redis_link::{self, Health};

/// The most records the shared semantic index stream keeps (older ones are trimmed; they
/// describe entries expired or about to be).
const INDEX_STREAM_MAX: u64 = 1_000_000;
/// Records a node reads per round trip when catching up.
const INDEX_READ_BATCH: usize = 1000;
/// How long one read of the index stream waits for new records.
const INDEX_BLOCK: Duration = Duration::from_secs(1);

/// How a node caches answers (flags of `switchyard gateway`).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The most bytes of entries (serialized) this node keeps in memory.
    pub memory_bytes: usize,
    /// The largest entry stored (serialized bytes).
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
        }
    }
}

/// One entry in memory.
struct Slot {
    entry: Arc<Entry>,
    bytes: usize,
    expires: Instant,
    tick: u64,
    proxy: Arc<str>,
}

/// A byte-bounded LRU with per-entry expiry.
#[derive(Default)]
struct Lru {
    map: HashMap<String, Slot>,
    order: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

impl Lru {
    fn get(&mut self, key: &str, now: Instant) -> Option<Arc<Entry>> {
        let slot = self.map.get_mut(key)?;
        if slot.expires <= now {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        self.order.remove(&slot.tick);
        slot.tick = self.tick;
        self.order.insert(self.tick, key.to_owned());
        Some(Arc::clone(&slot.entry))
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.map.remove(key)?;
        self.order.remove(&slot.tick);
        self.bytes -= slot.bytes;
        Some(slot)
    }

    /// Inserts; returns the proxies of the entries evicted to make room.
    fn insert(&mut self, key: String, slot: Slot, cap: usize) -> Vec<Arc<str>> {
        self.remove(&key);
        let mut evicted = Vec::new();
        if slot.bytes > cap {
            // Larger than the whole memory (`--cache-memory 0`: Redis only): not kept.
            return evicted;
        }
        while self.bytes + slot.bytes > cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(old) = self.map.remove(&oldest) {
                self.bytes -= old.bytes;
                evicted.push(old.proxy);
            }
        }
        self.tick += 1;
        let slot = Slot {
            tick: self.tick,
            ..slot
        };
        self.order.insert(self.tick, key.clone());
        self.bytes += slot.bytes;
        self.map.insert(key, slot);
        evicted
    }
}

/// The node's cache: memory, Redis, and whether Redis answers.
pub(crate) struct CacheStore {
    config: CacheConfig,
    client: Option<redis::Client>,
    prefix: String,
    timeout: Duration,
    memory: Mutex<Lru>,
    /// The semantic cache's vectors (every proxy's), fed by this node and by Redis.
    pub(crate) index: SemanticIndex,
    /// The Redis stream every node appends its semantic entries to.
    index_stream: String,
    /// Whether Redis answered the last time it was asked.
    health: Health,
    epoch: Instant,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("redis", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// Where an entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Memory,
    Redis,
}

impl CacheStore {
    /// The node's cache, sharing entries through `redis_url` when given (the counters'
    /// Redis, prefix and timeout).
    pub(crate) fn new(
        config: CacheConfig,
        redis_url: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<CacheStore>, String> {
        if config.max_entry_bytes == 0 {
            return Err("--cache-max-entry-bytes must be more than 0".to_owned());
        }
        let client = match redis_url {
            None => None,
            Some(url) => Some(redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?),
        };
        Ok(Arc::new(CacheStore {
            config,
            client,
            prefix: format!("{prefix}:cache"),
            index_stream: format!("{prefix}:cache:index"),
            timeout,
            memory: Mutex::new(Lru::default()),
            index: SemanticIndex::default(),
            health: Health::default(),
            epoch: Instant::now(),
        }))
    }

    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.config.max_entry_bytes
    }

    /// The Redis key of an entry.
    pub(crate) fn redis_key(&self, proxy: uuid::Uuid, key: &str) -> String {
        format!("{}:{}:{key}", self.prefix, proxy.simple())
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(
        &self,
        key: String,
        entry: Arc<Entry>,
        bytes: usize,
        ttl: Duration,
        proxy: &Arc<str>,
    ) {
        let slot = Slot {
            entry,
            bytes,
            expires: Instant::now() + ttl,
            tick: 0,
            proxy: Arc::clone(proxy),
        };
        let (evicted, total) = {
            let mut memory = self.memory();
            let evicted = memory.insert(key, slot, self.config.memory_bytes);
            (evicted, memory.bytes)
        };
        for proxy in evicted {
            metrics::counter!(super::EVICTIONS, "proxy" => metrics::SharedString::from(proxy))
                .increment(1);
        }
        metrics::gauge!(super::MEMORY_BYTES).set(total as f64);
    }

    fn mark_down(&self, why: &str) {
        metrics::counter!(super::REDIS_ERRORS).increment(1);
        if self.health.set_down() {
            warn!(
                error = why,
                "redis does not answer: the response cache is per node until it does"
            );
        }
    }

    fn mark_up(&self) {
        if self.health.set_up() {
            info!("redis answers again: the response cache is shared again");
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Feeds this node's semantic index from the shared stream (what every node stored),
    /// from its start, then as it grows, until `shutdown`. A task of its own, on a connection
    /// of its own (its reads block); a failing Redis is retried every second.
    pub(crate) fn feed_index(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut last = "0".to_owned();
            loop {
                let fed = store.feed_from(&client, &mut last);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    e = fed => debug!(error = %e, "semantic index feed: redis failed; retrying"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    async fn feed_from(&self, client: &redis::Client, last: &mut String) -> redis::RedisError {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(INDEX_BLOCK * 3));
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => return e,
        };
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(INDEX_READ_BATCH)
                .arg("BLOCK")
                .arg(INDEX_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.index_stream)
                .arg(&*last);
            let reply: redis::Value = match cmd.query_async(&mut conn).await {
                Ok(v) => v,
                Err(e) => return e,
            };
            let now = unix_ms();
            for (id, record) in stream_records(reply) {
                if let Some(r) = record {
                    let at = self.now_ms();
                    let left = r.expires_ms.saturating_sub(now);
                    self.index
                        .insert(r.proxy, &r.rest, Arc::from(r.key), &r.vector, at + left, at);
                }
                *last = id;
            }
        }
    }
}

/// One I/O thread's access to the cache: the node's store and this thread's own Redis
/// connection (made lazily on the thread, so its driver task runs there).
#[derive(Clone, Debug)]
pub(crate) struct CacheHandle {
    shared: Arc<CacheStore>,
    conn: Arc<OnceLock<ConnectionManager>>,
}

impl CacheHandle {
    pub(crate) fn new(shared: Arc<CacheStore>) -> CacheHandle {
        CacheHandle {
            shared,
            conn: Arc::new(OnceLock::new()),
        }
    }

    /// A handle with a connection of its own (one per I/O thread).
    pub(crate) fn for_thread(&self) -> CacheHandle {
        CacheHandle::new(Arc::clone(&self.shared))
    }

    pub(crate) fn store(&self) -> &CacheStore {
        &self.shared
    }

    /// Starts feeding the node's semantic index from Redis (see [`CacheStore::feed_index`]).
    pub(crate) fn feed_index(&self, shutdown: tokio_util::sync::CancellationToken) {
        self.shared.feed_index(shutdown);
    }

    fn connection(&self) -> Option<ConnectionManager> {
        let client = self.shared.client.as_ref()?;
        match redis_link::thread_connection(client, &self.conn, self.shared.timeout, 1) {
            Ok(conn) => Some(conn),
            Err(e) => {
                self.shared.mark_down(&e.to_string());
                None
            }
        }
    }

    /// The connection to ask now, if Redis is up; while it is down, a probe every
    /// [`redis_link::PROBE_INTERVAL`] (in a task of its own).
    fn use_redis(&self) -> Option<ConnectionManager> {
        let conn = self.connection()?;
        if self.shared.health.is_up() {
            return Some(conn);
        }
        if self.shared.health.probe_due() {
            let shared = Arc::clone(&self.shared);
            redis_link::probe(conn, shared.timeout * 4, "cache", move || shared.mark_up());
        }
        None
    }

    /// The entry under `key` (memory, then Redis), if any.
    pub(crate) async fn get(
        &self,
        proxy: uuid::Uuid,
        proxy_name: &Arc<str>,
        key: &str,
    ) -> Option<(Arc<Entry>, Found)> {
        let rkey = self.shared.redis_key(proxy, key);
        if let Some(e) = self.shared.memory().get(&rkey, Instant::now()) {
            return Some((e, Found::Memory));
        }
        let mut conn = self.use_redis()?;
        // The value and its time left, in one round trip.
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&rkey).cmd("PTTL").arg(&rkey);
        let asked = pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn);
        let (bytes, pttl) = match tokio::time::timeout(self.shared.timeout, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.shared.mark_down(&e.to_string());
                return None;
            }
            Err(_) => {
                self.shared.mark_down(&format!(
                    "no answer within {} ms",
                    self.shared.timeout.as_millis()
                ));
                return None;
            }
        };
        let bytes = bytes?;
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                debug!(error = %e, "unreadable cache entry: a miss");
                return None;
            }
        };
        if entry.v != ENTRY_VERSION {
            return None;
        }
        let entry = Arc::new(entry);
        if pttl > 0 {
            let ttl = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
            self.shared
                .remember(rkey, Arc::clone(&entry), bytes.len(), ttl, proxy_name);
        }
        Some((entry, Found::Redis))
    }

    /// Indexes a stored answer for the semantic cache: here at once, and on every node
    /// through the shared stream (appended in a task of its own).
    pub(crate) fn index_semantic(
        &self,
        proxy: uuid::Uuid,
        rest: &str,
        key: &str,
        vector: &Quantized,
        ttl: Duration,
    ) {
        let shared = &self.shared;
        let now = shared.now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        shared.index.insert(
            proxy,
            rest,
            Arc::from(key),
            vector,
            now.saturating_add(ttl_ms),
            now,
        );
        if let Some(mut conn) = self.use_redis() {
            let shared = Arc::clone(&self.shared);
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&shared.index_stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(INDEX_STREAM_MAX)
                .arg("*")
                .arg("p")
                .arg(proxy.simple().to_string())
                .arg("r")
                .arg(rest)
                .arg("k")
                .arg(key)
                .arg("x")
                .arg(unix_ms().saturating_add(ttl_ms))
                .arg("v")
                .arg(vector.to_bytes());
            tokio::spawn(async move {
                let add = cmd.query_async::<redis::Value>(&mut conn);
                match tokio::time::timeout(shared.timeout * 4, add).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => shared.mark_down(&e.to_string()),
                    Err(_) => shared.mark_down("no answer to a semantic index write"),
                }
            });
        }
    }

    /// The nearest indexed answer of `proxy`'s group `rest`: its exact key and similarity.
    pub(crate) fn nearest(
        &self,
        proxy: uuid::Uuid,
        rest: &str,
        vector: &Quantized,
    ) -> Option<(Arc<str>, f32)> {
        let now = self.shared.now_ms();
        self.shared.index.nearest(proxy, rest, vector, now)
    }

    /// Stores `entry` under `key` for `ttl`: in memory now, in Redis in a task of its own.
    /// Returns its serialized size, or `None` when it is larger than the bound (not stored).
    pub(crate) fn put(
        &self,
        proxy: uuid::Uuid,
        proxy_name: &Arc<str>,
        key: &str,
        entry: Entry,
        ttl: Duration,
    ) -> Option<usize> {
        let bytes = serde_json::to_vec(&entry).ok()?;
        if bytes.len() > self.shared.config.max_entry_bytes {
            return None;
        }
        let size = bytes.len();
        let rkey = self.shared.redis_key(proxy, key);
        self.shared
            .remember(rkey.clone(), Arc::new(entry), size, ttl, proxy_name);
        if let Some(mut conn) = self.use_redis() {
            let shared = Arc::clone(&self.shared);
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            tokio::spawn(async move {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&rkey).arg(bytes).arg("PX").arg(ms);
                let set = cmd.query_async::<()>(&mut conn);
                match tokio::time::timeout(shared.timeout * 4, set).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => shared.mark_down(&e.to_string()),
                    Err(_) => shared.mark_down("no answer to a cache write"),
                }
            });
        }
        Some(size)
    }
}

/// One record of the semantic index stream.
#[derive(Debug)]
struct IndexRecord {
    proxy: uuid::Uuid,
    rest: String,
    key: String,
    /// Unix milliseconds.
    expires_ms: u64,
    vector: Quantized,
}

/// The records of an `XREAD` reply on one stream, with their ids (a record that does not
/// parse is `None`, its id still read past).
fn stream_records(reply: redis::Value) -> Vec<(String, Option<IndexRecord>)> {
    use redis::Value;
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(pair) = entry else { continue };
            let [id, Value::Array(fields)] = pair.as_slice() else {
                continue;
            };
            let Some(id) = text(id) else { continue };
            let mut r = (None, None, None, None, None);
            for kv in fields.chunks_exact(2) {
                match (text(&kv[0]).as_deref(), &kv[1]) {
                    (Some("p"), v) => r.0 = text(v).and_then(|s| uuid::Uuid::parse_str(&s).ok()),
                    (Some("r"), v) => r.1 = text(v),
                    (Some("k"), v) => r.2 = text(v),
                    (Some("x"), v) => r.3 = text(v).and_then(|s| s.parse().ok()),
                    (Some("v"), Value::BulkString(b)) => r.4 = Quantized::from_bytes(b),
                    _ => {}
                }
            }
            let record = match r {
                (Some(proxy), Some(rest), Some(key), Some(expires_ms), Some(vector)) => {
                    Some(IndexRecord {
                        proxy,
                        rest,
                        key,
                        expires_ms,
                        vector,
                    })
                }
                _ => None,
            };
            out.push((id, record));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(text: &str) -> Arc<Entry> {
        Arc::new(Entry {
            v: ENTRY_VERSION,
            model: "m".into(),
            at: 0,
            events: vec![super::super::entry::Ev::Text { d: text.into() }],
        })
    }

    #[test]
    fn the_lru_is_bounded_by_bytes_and_expires_entries() {
        let mut lru = Lru::default();
        let now = Instant::now();
        let p: Arc<str> = Arc::from("p");
        let slot = |bytes, ttl_ms| Slot {
            entry: entry("x"),
            bytes,
            expires: now + Duration::from_millis(ttl_ms),
            tick: 0,
            proxy: Arc::clone(&p),
        };
        assert!(lru.insert("a".into(), slot(40, 10_000), 100).is_empty());
        assert!(lru.insert("b".into(), slot(40, 10_000), 100).is_empty());
        // "a" used: "b" is the oldest.
        assert!(lru.get("a", now).is_some());
        let evicted = lru.insert("c".into(), slot(40, 10_000), 100);
        assert_eq!(evicted.len(), 1);
        assert!(lru.get("b", now).is_none());
        assert!(lru.get("a", now).is_some() && lru.get("c", now).is_some());
        assert_eq!(lru.bytes, 80);
        // Replacing keeps the count right.
        lru.insert("c".into(), slot(10, 10_000), 100);
        assert_eq!(lru.bytes, 50);
        // Larger than the memory: not kept.
        assert!(lru.insert("big".into(), slot(101, 10_000), 100).is_empty());
        assert!(lru.get("big", now).is_none());
        // Expired: gone.
        lru.insert("d".into(), slot(10, 0), 100);
        assert!(lru.get("d", now + Duration::from_millis(1)).is_none());
        assert_eq!(lru.bytes, 50);
    }
}
