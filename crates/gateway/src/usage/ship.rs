//! Usage shipping: every finished request's record travels to the control plane, off the
//! request path.
//!
//! The request path hands a [`UsageEvent`] (a few reference-counted names and integers) to a
//! bounded in-memory queue with `try_send` ([`UsageSink::push`]): no lock, no wait, no
//! wake-up of another thread (the shipper polls the queue on a timer rather than waiting on
//! it). Past the queue's bound a record is dropped and counted.
//!
//! The shipper (one task on the node's main runtime) drains the queue every interval into
//! batches (ids made here: UUID v7), sends each with the unary `UsageReporting.Report` call
//! and waits for the control plane's answer, which comes after its commit. A batch that is
//! not acknowledged (control plane unreachable, or its store away) goes to the spool under
//! the cache dir ([`super::spool`]), and so does everything after it until a probe gets
//! through (with backoff); so do the batches a round has no time left for (a round sends for
//! one interval at most, so a control plane slower than the traffic never leaves the queue
//! undrained). Spooled batches are replayed oldest first, a few per tick, when a round has
//! time left, also after a restart. A batch sent twice (its answer lost) is stored once: records are
//! stored by id. A batch refused as malformed is dropped and counted (sending it again
//! cannot help). On shutdown the queue is drained and sent once, or spooled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_llm::Usage;
use switchyard_model::usage::truncate_label;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::usage_reporting_client::UsageReportingClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::spool::Spool;
use crate::telemetry::Label;

/// How usage records are buffered and shipped (`--usage-*` flags).
#[derive(Debug, Clone)]
pub struct UsageShipping {
    /// Ship records at all (`--usage-shipping off` turns the whole pipeline off).
    pub enabled: bool,
    /// Records the in-memory queue holds (`--usage-buffer`).
    pub buffer: usize,
    /// Records per batch (`--usage-batch`).
    pub batch: usize,
    /// How often the queue is drained and shipped (`--usage-flush-interval`).
    pub interval: Duration,
    /// The spool's bound in bytes (`--usage-spool-max`).
    pub spool_max_bytes: u64,
    /// How long one batch may take to be acknowledged.
    pub send_timeout: Duration,
    /// Spooled batches replayed per tick at most.
    pub replay_per_tick: usize,
    /// The longest wait between two probes of an unreachable control plane (the node's
    /// config stream reconnecting also ends the wait).
    pub retry_cap: Duration,
}

impl Default for UsageShipping {
    fn default() -> Self {
        UsageShipping {
            enabled: true,
            buffer: 100_000,
            batch: 1000,
            interval: Duration::from_secs(1),
            spool_max_bytes: 256 * 1024 * 1024,
            send_timeout: Duration::from_secs(10),
            replay_per_tick: 20,
            retry_cap: Duration::from_secs(30),
        }
    }
}

/// One finished request, as the request path hands it over.
#[derive(Debug)]
pub(crate) struct UsageEvent {
    pub at: SystemTime,
    pub proxy_id: Uuid,
    pub proxy: Label,
    pub route: Label,
    pub model: Option<Arc<str>>,
    pub consumer: Option<Arc<str>>,
    pub provider: &'static str,
    pub status: u16,
    pub usage: Option<Usage>,
    pub cost_nano_usd: u64,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub fell_back: bool,
    pub stream: bool,
    pub estimated: bool,
}

fn label(l: &Label) -> &str {
    match l {
        Label::Static(s) => s,
        Label::Shared(s) => s,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl UsageEvent {
    /// The wire record, with its id made now.
    fn into_record(self) -> pb::UsageRecord {
        let at_ms = self
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let random: [u8; 10] = rand::random();
        let id = uuid::Builder::from_unix_timestamp_millis(at_ms, &random).into_uuid();
        let usage = self.usage.unwrap_or_default();
        let none = crate::telemetry::NONE;
        let route = label(&self.route);
        pb::UsageRecord {
            id: id.as_bytes().to_vec(),
            at_unix_ms: i64::try_from(at_ms).unwrap_or(i64::MAX),
            proxy_id: self.proxy_id.to_string(),
            proxy: truncate_label(label(&self.proxy)).to_owned(),
            route: if route == none {
                String::new()
            } else {
                truncate_label(route).to_owned()
            },
            model: self
                .model
                .as_deref()
                .filter(|m| *m != none)
                .map(|m| truncate_label(m).to_owned())
                .unwrap_or_default(),
            consumer: self
                .consumer
                .as_deref()
                .map(|c| truncate_label(c).to_owned())
                .unwrap_or_default(),
            status: u32::from(self.status),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_input_tokens: usage.cached_input_tokens.unwrap_or(0),
            reasoning_tokens: usage.reasoning_tokens.unwrap_or(0),
            cost_nano_usd: self.cost_nano_usd,
            latency_us: micros(self.latency),
            ttft_us: self.ttft.map(micros),
            fell_back: self.fell_back,
            stream: self.stream,
            estimated: self.estimated,
            provider: if self.provider == none {
                String::new()
            } else {
                self.provider.to_owned()
            },
        }
    }
}

/// The request path's end of the queue.
#[derive(Debug, Clone)]
pub(crate) struct UsageSink {
    tx: mpsc::Sender<UsageEvent>,
    dropped: Arc<AtomicU64>,
}

impl UsageSink {
    /// Queues a record without waiting; a full queue drops it (counted, logged now and then).
    pub(crate) fn push(&self, event: UsageEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            metrics::counter!("switchyard_gateway_usage_dropped_total", "reason" => "buffer_full")
                .increment(1);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() || n.is_multiple_of(10_000) {
                warn!(
                    dropped_total = n,
                    "usage queue full: usage records dropped (the shipper cannot keep up; see --usage-buffer)"
                );
            }
        }
    }
}

/// Who the node is to the control plane.
#[derive(Clone)]
pub(crate) struct Identity {
    pub gateway: String,
    pub node_id: String,
    pub registration_token: String,
}

/// The shipper's task and the token that stops it (after the traffic drained).
pub(crate) struct Shipper {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// Opens the spool and starts the shipper; returns the request path's sink.
pub(crate) fn start(
    settings: UsageShipping,
    endpoint: &Endpoint,
    identity: Identity,
    cache_dir: &std::path::Path,
    sync: tokio::sync::watch::Receiver<crate::sync::SyncState>,
) -> std::io::Result<(UsageSink, Shipper)> {
    let spool = Spool::open(cache_dir, settings.spool_max_bytes)?;
    if !spool.is_empty() {
        info!(
            records = spool.records(),
            bytes = spool.bytes(),
            "usage records spooled by an earlier run: replaying them"
        );
    }
    gauges(&spool);
    let (tx, rx) = mpsc::channel(settings.buffer.max(1));
    let client = UsageReportingClient::new(endpoint.connect_lazy());
    let stop = CancellationToken::new();
    let shipper = Runner {
        settings,
        identity,
        client,
        spool: Arc::new(Mutex::new(spool)),
        rx,
        down_until: None,
        failures: 0,
        sync,
        sessions_at_failure: 0,
    };
    let task = tokio::spawn(shipper.run(stop.clone()));
    Ok((
        UsageSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        Shipper { stop, task },
    ))
}

fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}

fn gauges(spool: &Spool) {
    metrics::gauge!("switchyard_gateway_usage_spool_bytes").set(spool.bytes() as f64);
    metrics::gauge!("switchyard_gateway_usage_spool_records").set(spool.records() as f64);
}

fn dropped(reason: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("switchyard_gateway_usage_dropped_total", "reason" => reason)
            .increment(n);
    }
}

/// What became of one send.
enum Sent {
    Acked,
    /// Refused for good (malformed): do not send again.
    Refused(tonic::Status),
    /// Not acknowledged: keep it and retry later.
    Failed(String),
}

struct Runner {
    settings: UsageShipping,
    identity: Identity,
    client: UsageReportingClient<Channel>,
    spool: Arc<Mutex<Spool>>,
    rx: mpsc::Receiver<UsageEvent>,
    /// While the control plane is away: when to probe it next.
    down_until: Option<tokio::time::Instant>,
    failures: u32,
    /// The node's config stream: when it reconnects, the control plane is back.
    sync: tokio::sync::watch::Receiver<crate::sync::SyncState>,
    sessions_at_failure: u64,
}

impl Runner {
    async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.round().await;
        }
        // Shutdown: the traffic has drained, so the queue holds every record left.
        self.rx.close();
        let batches = self.drain();
        let mut rest = batches.into_iter();
        if self.down_until.is_none() {
            for batch in rest.by_ref() {
                match self.send(batch.clone()).await {
                    Sent::Acked => {}
                    Sent::Refused(status) => self.refused(batch.len(), &status),
                    Sent::Failed(_) => {
                        self.spool_batch(batch).await;
                        break;
                    }
                }
            }
        }
        for batch in rest {
            self.spool_batch(batch).await;
        }
        let left = lock(&self.spool).records();
        if left > 0 {
            info!(
                records = left,
                "usage records kept in the spool for the next run"
            );
        }
    }

    /// The queue's records, in batches.
    fn drain(&mut self) -> Vec<Vec<pb::UsageRecord>> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            batch.push(event.into_record());
            if batch.len() >= self.settings.batch {
                batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }

    async fn round(&mut self) {
        let batches = self.drain();
        let now = tokio::time::Instant::now();
        // A round sends for at most one interval: past it, what is left goes to the spool, so
        // a control plane slower than the traffic never leaves the queue undrained (and full).
        let deadline = now + self.settings.interval.max(Duration::from_secs(1));
        let reconnected = self.sync.borrow().sessions > self.sessions_at_failure;
        let up = reconnected || self.down_until.is_none_or(|t| now >= t);
        let mut rest = batches.into_iter();
        if up {
            // The newest records first (they are only in memory), then the spool (which is
            // also the probe when there is nothing new).
            let mut reached = true;
            for batch in rest.by_ref() {
                match self.send(batch.clone()).await {
                    Sent::Acked => self.recovered(),
                    Sent::Refused(status) => self.refused(batch.len(), &status),
                    Sent::Failed(reason) => {
                        self.failed(&reason);
                        self.spool_batch(batch).await;
                        reached = false;
                        break;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            for batch in rest {
                self.spool_batch(batch).await;
            }
            if reached && tokio::time::Instant::now() < deadline {
                self.replay(deadline).await;
            }
        } else {
            for batch in rest {
                self.spool_batch(batch).await;
            }
        }
    }

    /// Sends up to `replay_per_tick` spooled batches, oldest first, until `deadline`.
    async fn replay(&mut self, deadline: tokio::time::Instant) {
        for _ in 0..self.settings.replay_per_tick {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            let oldest = lock(&self.spool).oldest();
            let Some(oldest) = oldest else {
                return;
            };
            let (segment, records) = match oldest {
                Ok(found) => found,
                Err(lost) => {
                    dropped("spool_unreadable", lost);
                    continue;
                }
            };
            let count = records.len();
            match self.send(records).await {
                Sent::Acked => {
                    self.recovered();
                    let removed = lock(&self.spool).remove(&segment);
                    if let Err(e) = removed {
                        error!(error = %e, "cannot delete an acknowledged usage spool file");
                        return;
                    }
                    debug!(records = count, "spooled usage records acknowledged");
                }
                Sent::Refused(status) => {
                    self.refused(count, &status);
                    let _ = lock(&self.spool).remove(&segment);
                }
                Sent::Failed(reason) => {
                    self.failed(&reason);
                    return;
                }
            }
            gauges(&lock(&self.spool));
        }
    }

    async fn send(&mut self, records: Vec<pb::UsageRecord>) -> Sent {
        let count = records.len() as u64;
        let batch = pb::UsageBatch {
            gateway: self.identity.gateway.clone(),
            node_id: self.identity.node_id.clone(),
            registration_token: self.identity.registration_token.clone(),
            records,
        };
        match tokio::time::timeout(self.settings.send_timeout, self.client.report(batch)).await {
            Ok(Ok(_)) => {
                metrics::counter!("switchyard_gateway_usage_shipped_total").increment(count);
                Sent::Acked
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
                ) =>
            {
                Sent::Refused(status)
            }
            Ok(Err(status)) => Sent::Failed(format!("{}: {}", status.code(), status.message())),
            Err(_) => Sent::Failed(format!(
                "no answer within {} ms",
                self.settings.send_timeout.as_millis()
            )),
        }
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            info!(
                spooled = lock(&self.spool).records(),
                "usage records reach the control plane again"
            );
        }
        self.failures = 0;
        self.down_until = None;
    }

    fn failed(&mut self, reason: &str) {
        self.failures = self.failures.saturating_add(1);
        self.sessions_at_failure = self.sync.borrow().sessions;
        // 0.5 s, 1 s, 2 s … at most `retry_cap` between probes.
        let delay = Duration::from_millis(500)
            .saturating_mul(1 << self.failures.saturating_sub(1).min(6))
            .min(self.settings.retry_cap);
        self.down_until = Some(tokio::time::Instant::now() + delay);
        if self.failures == 1 {
            warn!(
                reason,
                "cannot ship usage records; keeping them in the spool until the control plane answers"
            );
        } else {
            debug!(
                reason,
                attempt = self.failures,
                "usage shipping still failing"
            );
        }
    }

    fn refused(&self, count: usize, status: &tonic::Status) {
        dropped("rejected", count as u64);
        error!(records = count, code = %status.code(), reason = status.message(),
            "the control plane refused a usage batch as malformed: dropped");
    }

    /// Writes a batch to the spool (on a blocking thread), counting what its bound drops.
    async fn spool_batch(&mut self, batch: Vec<pb::UsageRecord>) {
        let count = batch.len() as u64;
        let spool = Arc::clone(&self.spool);
        let written = tokio::task::spawn_blocking(move || lock(&spool).append(batch))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(appended) => {
                metrics::counter!("switchyard_gateway_usage_spooled_total").increment(count);
                if appended.dropped > 0 {
                    dropped("spool_full", appended.dropped);
                    warn!(
                        dropped = appended.dropped,
                        bound_bytes = self.settings.spool_max_bytes,
                        "usage spool full: the oldest usage records were dropped (see --usage-spool-max)"
                    );
                }
            }
            Err(e) => {
                dropped("spool_error", count);
                error!(records = count, error = %e, "cannot write the usage spool: records dropped");
            }
        }
        gauges(&lock(&self.spool));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashSet;
    use switchyard_proto::v1::usage_reporting_server::{UsageReporting, UsageReportingServer};

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Ack,
        /// Acknowledges, 400 ms later.
        Slow,
        Unavailable,
        Refuse,
    }

    /// A control plane that answers as told and remembers the ids it acknowledged.
    #[derive(Clone)]
    struct Fake {
        mode: Arc<Mutex<Mode>>,
        acked: Arc<Mutex<Vec<Vec<u8>>>>,
        calls: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl UsageReporting for Fake {
        async fn report(
            &self,
            request: tonic::Request<pb::UsageBatch>,
        ) -> Result<tonic::Response<pb::UsageAck>, tonic::Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let batch = request.into_inner();
            assert_eq!(
                (
                    batch.gateway.as_str(),
                    batch.node_id.as_str(),
                    batch.registration_token.as_str()
                ),
                ("prod-eu", "node-1", "syreg_x")
            );
            let mode = *self.mode.lock().unwrap();
            if mode == Mode::Slow {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            match mode {
                Mode::Unavailable => Err(tonic::Status::unavailable("store away")),
                Mode::Refuse => Err(tonic::Status::invalid_argument(
                    "records[0].id: must be 16 bytes",
                )),
                Mode::Ack | Mode::Slow => {
                    let mut acked = self.acked.lock().unwrap();
                    acked.extend(batch.records.into_iter().map(|r| r.id));
                    Ok(tonic::Response::new(pb::UsageAck::default()))
                }
            }
        }
    }

    fn event(n: u64) -> UsageEvent {
        UsageEvent {
            at: SystemTime::now(),
            proxy_id: Uuid::from_u128(7),
            proxy: Label::Static("support"),
            route: Label::Static("openai"),
            model: Some(Arc::from("gpt-4.1")),
            consumer: None,
            provider: "openai",
            status: 200,
            usage: Some(Usage {
                input_tokens: n,
                output_tokens: 1,
                ..Usage::default()
            }),
            cost_nano_usd: 5,
            latency: Duration::from_millis(3),
            ttft: None,
            fell_back: false,
            stream: false,
            estimated: false,
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spools_while_refused_by_an_unavailable_plane_replays_once_and_drops_malformed() {
        let fake = Fake {
            mode: Arc::new(Mutex::new(Mode::Unavailable)),
            acked: Arc::default(),
            calls: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UsageReportingServer::new(fake.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let identity = Identity {
            gateway: "prod-eu".into(),
            node_id: "node-1".into(),
            registration_token: "syreg_x".into(),
        };
        let settings = UsageShipping {
            interval: Duration::from_millis(20),
            batch: 4,
            retry_cap: Duration::from_millis(50),
            ..UsageShipping::default()
        };
        let (_state, sync) = tokio::sync::watch::channel(crate::sync::SyncState::default());
        let (sink, shipper) = start(
            settings.clone(),
            &endpoint,
            identity.clone(),
            dir.path(),
            sync.clone(),
        )
        .unwrap();
        let spool_dir = dir.path().join(super::super::spool::SPOOL_DIR);
        let spooled = || std::fs::read_dir(&spool_dir).unwrap().count();

        // The control plane cannot store: every batch goes to the spool.
        for n in 1..=10 {
            sink.push(event(n));
        }
        until("the spool", || spooled() >= 3).await;
        assert!(fake.acked.lock().unwrap().is_empty());
        // It can again: the spool is replayed and emptied, each record sent once.
        *fake.mode.lock().unwrap() = Mode::Ack;
        until("the replay", || {
            spooled() == 0 && fake.acked.lock().unwrap().len() == 10
        })
        .await;
        let ids: HashSet<Vec<u8>> = fake.acked.lock().unwrap().iter().cloned().collect();
        assert_eq!(ids.len(), 10, "ten distinct ids");
        assert!(
            ids.iter()
                .all(|id| Uuid::from_slice(id).unwrap().get_version_num() == 7)
        );

        // A malformed batch is dropped, not retried.
        *fake.mode.lock().unwrap() = Mode::Refuse;
        let before = fake.calls.load(Ordering::SeqCst);
        sink.push(event(11));
        until("the refusal", || fake.calls.load(Ordering::SeqCst) > before).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), before + 1);
        assert_eq!(spooled(), 0);

        // A control plane slower than the traffic: a round sends for a second at most, the
        // rest goes to the spool (the queue keeps being drained), replayed once it keeps up.
        *fake.mode.lock().unwrap() = Mode::Slow;
        for n in 100..140 {
            sink.push(event(n));
        }
        until("the slow round to spool", || spooled() > 0).await;
        *fake.mode.lock().unwrap() = Mode::Ack;
        until("everything sent", || {
            spooled() == 0 && fake.acked.lock().unwrap().len() == 50
        })
        .await;
        let ids: HashSet<Vec<u8>> = fake.acked.lock().unwrap().iter().cloned().collect();
        assert_eq!(ids.len(), 50, "each record once");

        // Shutdown while the control plane is away: what is queued is spooled, and the next
        // process on the same cache dir sends it.
        *fake.mode.lock().unwrap() = Mode::Unavailable;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in 12..=14 {
            sink.push(event(n));
        }
        shipper.stop.cancel();
        shipper.task.await.unwrap();
        assert!(spooled() >= 1, "queued records spooled at shutdown");
        *fake.mode.lock().unwrap() = Mode::Ack;
        let (_sink, again) = start(settings, &endpoint, identity, dir.path(), sync).unwrap();
        until("the next run's replay", || {
            fake.acked.lock().unwrap().len() == 53
        })
        .await;
        until("an empty spool", || spooled() == 0).await;
        again.stop.cancel();
        again.task.await.unwrap();
        server.abort();
    }
}
