//! What the node's users of Redis (the rate-limit counters, the response cache) share: whether
//! Redis answered last, a probe at most every [`PROBE_INTERVAL`] while it does not, and one
//! connection per I/O thread, made lazily on that thread (so its driver task runs there and no
//! request wakes another thread). Each user keeps its own log lines and metrics.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// How often a failed Redis is tried again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Whether Redis answers, as one user of it last saw.
#[derive(Debug)]
pub(crate) struct Health {
    up: AtomicBool,
    /// When Redis was last probed (ms since `epoch`).
    last_probe_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            last_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Health {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks Redis down; true when it was up (the caller says so, once).
    pub(crate) fn set_down(&self) -> bool {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            self.last_probe_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        was_up
    }

    /// Marks Redis up; true when it was down.
    pub(crate) fn set_up(&self) -> bool {
        !self.up.swap(true, Ordering::AcqRel)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether it is time to probe a failed Redis (at most one probe per interval).
    pub(crate) fn probe_due(&self) -> bool {
        let now = self.now_ms();
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= PROBE_INTERVAL.as_millis() as u64
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// This I/O thread's connection in `cell`, made on first use with `timeout` per answer.
pub(crate) fn thread_connection(
    client: &redis::Client,
    cell: &OnceLock<ConnectionManager>,
    timeout: Duration,
    retries: usize,
) -> Result<ConnectionManager, redis::RedisError> {
    if let Some(conn) = cell.get() {
        return Ok(conn.clone());
    }
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
        .set_number_of_retries(retries)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok(cell.get_or_init(|| conn).clone())
}

/// Pings a failed Redis in a task of its own; `on_answer` runs when it answers.
pub(crate) fn probe(
    mut conn: ConnectionManager,
    timeout: Duration,
    user: &'static str,
    on_answer: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => on_answer(),
            Ok(Err(e)) => tracing::debug!(error = %e, user, "redis probe failed"),
            Err(_) => tracing::debug!(user, "redis probe timed out"),
        }
    });
}
