//! [`EmbeddingService`]: an async front to a blocking [`Encoder`] that batches
//! concurrent requests and caches prompt embeddings.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::oneshot;

use crate::encoder::Encoder;
use crate::error::{EmbedError, EncodeError};
use crate::lru::Lru;

/// Settings of an [`EmbeddingService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Most texts encoded in one [`Encoder::encode_batch`] call. Default 32.
    pub max_batch: usize,
    /// Requests waiting for the worker before [`EmbedError::QueueFull`] is
    /// returned. Default 256 (at ~4 ms per text in a batch, about one second of work).
    pub queue_capacity: usize,
    /// Prompt embeddings kept in the LRU cache; 0 disables it. Default 4096
    /// (a MiniLM entry is ~1.5 KiB of floats plus its text).
    pub cache_capacity: usize,
    /// Texts longer than this many bytes are encoded but not cached, so the
    /// cache's memory stays bounded by `cache_capacity × this`. Default 4096.
    pub max_cached_text_bytes: usize,
    /// Worker threads, each running whole batches through the shared
    /// encoder. Default 1: on a 2-vCPU machine one batched forward pass at a
    /// time gives the best throughput; more only pays with several physical
    /// cores (and a 1-thread [`crate::MiniLmEncoder`]).
    pub workers: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            queue_capacity: 256,
            cache_capacity: 4096,
            max_cached_text_bytes: 4096,
            workers: 1,
        }
    }
}

/// Counters of an [`EmbeddingService`], since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceStats {
    /// Requests answered from the cache.
    pub cache_hits: u64,
    /// Requests sent to the encoder.
    pub cache_misses: u64,
    /// Requests refused with [`EmbedError::QueueFull`].
    pub rejected: u64,
    /// Forward passes run ([`Encoder::encode_batch`] calls).
    pub batches: u64,
    /// Distinct texts encoded over all batches (identical texts queued
    /// together are encoded once).
    pub encoded_texts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    /// Jobs accepted into the queue (tests wait on it).
    enqueued: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    encoded_texts: AtomicU64,
}

type Vector = Arc<[f32]>;
type Reply = oneshot::Sender<Result<Vector, EncodeError>>;

struct Job {
    text: String,
    cacheable: bool,
    reply: Reply,
}

struct Shared {
    cache: Mutex<Lru<Vector>>,
    counters: Counters,
}

/// Async, batching, caching front to an [`Encoder`].
///
/// * **Off the reactor.** Encoding runs on dedicated OS threads
///   (`switchyard-embed-N`, [`ServiceConfig::workers`], default one), never on
///   a tokio worker.
/// * **Batching.** Requests wait in a bounded queue. The worker takes the
///   first, then drains whatever else is already queued (up to
///   [`ServiceConfig::max_batch`]) and encodes them in one call: under load,
///   requests arriving during a forward pass share the next one; when idle, a
///   request is encoded immediately. There is no timer and no artificial wait.
/// * **Cache.** An LRU of prompt embeddings keyed by exact text is consulted
///   before queueing. Texts over [`ServiceConfig::max_cached_text_bytes`] are
///   not cached.
/// * **Back-pressure.** A full queue returns [`EmbedError::QueueFull`] at once
///   instead of making the caller wait; semantic routing should then fall
///   back to its default route rather than add latency.
///
/// # Long prompts
/// The service passes text through unchanged; the encoder truncates.
/// [`crate::MiniLmEncoder`] keeps 256 tokens (about 190 English words), by
/// default from the start ([`crate::Truncation::KeepStart`], the
/// sentence-transformers behaviour that the parity reference follows); load
/// it with [`crate::Truncation::KeepEnd`] to keep the tail instead, which
/// suits chat prompts whose latest text matters most and a prompt guard that
/// must see text appended at the end. Inputs are also cut to 32 characters per
/// token before tokenization, so a megabyte-sized prompt costs no more to
/// encode than a 256-token one. Callers should pass the text that carries the
/// intent (e.g. the last user message), not a whole serialised conversation.
///
/// Dropping the service (or calling [`EmbeddingService::shutdown`]) stops the
/// worker once the queued requests are answered.
pub struct EmbeddingService {
    encoder: Arc<dyn Encoder>,
    sender: RwLock<Option<SyncSender<Job>>>,
    shared: Arc<Shared>,
    config: ServiceConfig,
}

impl std::fmt::Debug for EmbeddingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingService")
            .field("encoder", &self.encoder.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EmbeddingService {
    /// Starts the worker threads. `max_batch`, `queue_capacity` and
    /// `workers` are raised to at least 1.
    ///
    /// # Errors
    /// The OS refused to start a thread (threads already started stop when
    /// the error is returned).
    pub fn new(encoder: Arc<dyn Encoder>, config: ServiceConfig) -> std::io::Result<Self> {
        let config = ServiceConfig {
            max_batch: config.max_batch.max(1),
            queue_capacity: config.queue_capacity.max(1),
            workers: config.workers.max(1),
            ..config
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            cache: Mutex::new(Lru::new(config.cache_capacity)),
            counters: Counters::default(),
        });
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..config.workers {
            let worker = Worker {
                encoder: Arc::clone(&encoder),
                shared: Arc::clone(&shared),
                receiver: Arc::clone(&receiver),
                max_batch: config.max_batch,
            };
            std::thread::Builder::new()
                .name(format!("switchyard-embed-{n}"))
                .spawn(move || worker.run())?;
        }
        Ok(Self {
            encoder,
            sender: RwLock::new(Some(sender)),
            shared,
            config,
        })
    }

    /// The encoder behind the service.
    #[must_use]
    pub fn encoder(&self) -> &Arc<dyn Encoder> {
        &self.encoder
    }

    /// The effective configuration.
    #[must_use]
    pub fn config(&self) -> ServiceConfig {
        self.config
    }

    /// Embeds `text`: from the cache, or batched with concurrent requests on
    /// the worker thread. The vector is L2-normalised, [`Encoder::dim`] long.
    ///
    /// Cancel-safe: dropping the future abandons the request (the worker
    /// skips it if it has not started the batch yet).
    ///
    /// # Errors
    /// [`EmbedError::QueueFull`], [`EmbedError::ShutDown`], or the encoder's
    /// error for the batch holding this text.
    pub async fn embed(&self, text: &str) -> Result<Arc<[f32]>, EmbedError> {
        let counters = &self.shared.counters;
        let cacheable =
            self.config.cache_capacity > 0 && text.len() <= self.config.max_cached_text_bytes;
        if cacheable {
            let hit = self
                .shared
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(text);
            if let Some(v) = hit {
                counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
        }
        counters.cache_misses.fetch_add(1, Ordering::Relaxed);

        let (reply, response) = oneshot::channel();
        let job = Job {
            text: text.to_owned(),
            cacheable,
            reply,
        };
        {
            let sender = self.sender.read().unwrap_or_else(PoisonError::into_inner);
            let Some(sender) = sender.as_ref() else {
                return Err(EmbedError::ShutDown);
            };
            match sender.try_send(job) {
                Ok(()) => {
                    counters.enqueued.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(EmbedError::QueueFull {
                        capacity: self.config.queue_capacity,
                    });
                }
                Err(TrySendError::Disconnected(_)) => return Err(EmbedError::ShutDown),
            }
        }
        match response.await {
            Ok(result) => result.map_err(EmbedError::from),
            Err(_) => Err(EmbedError::ShutDown),
        }
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> ServiceStats {
        let c = &self.shared.counters;
        ServiceStats {
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_misses: c.cache_misses.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            encoded_texts: c.encoded_texts.load(Ordering::Relaxed),
        }
    }

    /// Number of cached prompt embeddings.
    #[must_use]
    pub fn cached_len(&self) -> usize {
        self.shared
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops accepting requests: new calls get [`EmbedError::ShutDown`];
    /// requests already queued are still answered, then the worker exits.
    pub fn shutdown(&self) {
        self.sender
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

struct Worker {
    encoder: Arc<dyn Encoder>,
    shared: Arc<Shared>,
    /// Shared by all workers; the one holding the lock waits for the next
    /// batch, the others are encoding or waiting for the lock.
    receiver: Arc<Mutex<Receiver<Job>>>,
    max_batch: usize,
}

impl Worker {
    fn run(self) {
        tracing::debug!(encoder = self.encoder.name(), "embedding worker started");
        let mut jobs = Vec::with_capacity(self.max_batch);
        while self.next_batch(&mut jobs) {
            self.process(&mut jobs);
        }
        tracing::debug!(encoder = self.encoder.name(), "embedding worker stopped");
    }

    /// Blocks for one job, then takes whatever else is already queued (up to
    /// `max_batch`). False when every sender is gone and the queue is empty.
    fn next_batch(&self, jobs: &mut Vec<Job>) -> bool {
        let receiver = self.receiver.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(first) = receiver.recv() else {
            return false;
        };
        jobs.push(first);
        while jobs.len() < self.max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        true
    }

    fn process(&self, jobs: &mut Vec<Job>) {
        // Callers that gave up need no work.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            return;
        }
        // Identical texts queued together are encoded once.
        let mut texts: Vec<&str> = Vec::with_capacity(jobs.len());
        let mut slot = Vec::with_capacity(jobs.len());
        for job in jobs.iter() {
            let i = texts
                .iter()
                .position(|t| *t == job.text)
                .unwrap_or_else(|| {
                    texts.push(&job.text);
                    texts.len() - 1
                });
            slot.push(i);
        }
        let counters = &self.shared.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .encoded_texts
            .fetch_add(texts.len() as u64, Ordering::Relaxed);

        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.encoder.encode_batch(&texts)))
                .unwrap_or_else(|_| Err(EncodeError::Inference("encoder panicked".to_owned())))
                .and_then(|vectors| {
                    if vectors.len() == texts.len() {
                        Ok(vectors)
                    } else {
                        Err(EncodeError::Inference(format!(
                            "encoder returned {} vectors for {} texts",
                            vectors.len(),
                            texts.len()
                        )))
                    }
                });
        match result {
            Ok(vectors) => {
                let vectors: Vec<Vector> = vectors.into_iter().map(Arc::from).collect();
                {
                    let mut cache = self
                        .shared
                        .cache
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (job, &i) in jobs.iter().zip(&slot) {
                        if job.cacheable {
                            cache.insert(&job.text, Arc::clone(&vectors[i]));
                        }
                    }
                }
                for (job, i) in jobs.drain(..).zip(slot) {
                    // A closed receiver means the caller went away: nothing to do.
                    let _ = job.reply.send(Ok(Arc::clone(&vectors[i])));
                }
            }
            Err(e) => {
                tracing::warn!(encoder = self.encoder.name(), error = %e, batch = texts.len(), "embedding batch failed");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::testing::FakeEncoder;

    fn service(encoder: Arc<FakeEncoder>, config: ServiceConfig) -> EmbeddingService {
        EmbeddingService::new(encoder, config).unwrap()
    }

    /// Waits until `n` jobs have entered the queue.
    async fn wait_for_enqueued(svc: &EmbeddingService, n: u64) {
        for _ in 0..5000 {
            if svc.shared.counters.enqueued.load(Ordering::Relaxed) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("requests never reached the queue");
    }

    #[tokio::test]
    async fn embeds_like_the_encoder_and_caches() {
        let enc = Arc::new(FakeEncoder::new(16));
        let svc = service(Arc::clone(&enc), ServiceConfig::default());
        let v = svc.embed("hello world").await.unwrap();
        assert_eq!(&v[..], enc.vector("hello world").as_slice());
        let again = svc.embed("hello world").await.unwrap();
        assert!(Arc::ptr_eq(&v, &again), "second call must be a cache hit");
        let stats = svc.stats();
        assert_eq!(
            (stats.cache_hits, stats.cache_misses, stats.batches),
            (1, 1, 1)
        );
        assert_eq!(enc.batch_sizes(), vec![1]);
        assert_eq!(svc.cached_len(), 1);
    }

    #[tokio::test]
    async fn long_texts_and_disabled_cache_are_not_cached() {
        let enc = Arc::new(FakeEncoder::new(16));
        let config = ServiceConfig {
            max_cached_text_bytes: 8,
            ..ServiceConfig::default()
        };
        let svc = service(Arc::clone(&enc), config);
        svc.embed("a long text over eight bytes").await.unwrap();
        svc.embed("a long text over eight bytes").await.unwrap();
        svc.embed("short").await.unwrap();
        assert_eq!(svc.stats().cache_misses, 3);
        assert_eq!(svc.cached_len(), 1);

        let no_cache = service(
            Arc::clone(&enc),
            ServiceConfig {
                cache_capacity: 0,
                ..ServiceConfig::default()
            },
        );
        no_cache.embed("short").await.unwrap();
        no_cache.embed("short").await.unwrap();
        assert_eq!(no_cache.stats().cache_hits, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_batch() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let enc = Arc::new(FakeEncoder::gated(16, entered_tx, release_rx));
        let svc = Arc::new(service(Arc::clone(&enc), ServiceConfig::default()));

        // The first request occupies the worker...
        let first = tokio::spawn({
            let svc = Arc::clone(&svc);
            async move { svc.embed("first request").await }
        });
        tokio::task::spawn_blocking(move || entered.recv().map(|()| entered))
            .await
            .unwrap()
            .unwrap();
        // ...while 15 more (one duplicated) queue up behind it.
        let texts: Vec<String> = (0..14)
            .map(|i| format!("request number {i}"))
            .chain(["request number 0".to_owned()])
            .collect();
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let (svc, t) = (Arc::clone(&svc), t.clone());
                tokio::spawn(async move { svc.embed(&t).await })
            })
            .collect();
        wait_for_enqueued(&svc, 16).await;
        release.send(()).unwrap();
        release.send(()).unwrap();

        first.await.unwrap().unwrap();
        for (h, t) in handles.into_iter().zip(&texts) {
            let v = h.await.unwrap().unwrap();
            assert_eq!(&v[..], enc.vector(t).as_slice(), "{t}");
        }
        // One pass for the first, one for all queued; the duplicate encoded once.
        assert_eq!(enc.batch_sizes(), vec![1, 14]);
        let stats = svc.stats();
        assert_eq!((stats.batches, stats.encoded_texts), (2, 15));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_capped_at_max_batch() {
        let (hold_tx, hold_rx) = mpsc::channel();
        let (release2, release2_rx) = mpsc::channel();
        let gated = Arc::new(FakeEncoder::gated(16, hold_tx, release2_rx));
        let config = ServiceConfig {
            max_batch: 4,
            ..ServiceConfig::default()
        };
        // Hold the worker on a first request, queue 9, then let everything run.
        let svc = Arc::new(service(Arc::clone(&gated), config));
        let blocker = tokio::spawn({
            let svc = Arc::clone(&svc);
            async move { svc.embed("blocker").await }
        });
        tokio::task::spawn_blocking(move || hold_rx.recv().map(|()| hold_rx))
            .await
            .unwrap()
            .unwrap();
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let svc = Arc::clone(&svc);
                tokio::spawn(async move { svc.embed(&format!("text {i}")).await })
            })
            .collect();
        wait_for_enqueued(&svc, 10).await;
        for _ in 0..4 {
            release2.send(()).unwrap();
        }
        blocker.await.unwrap().unwrap();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(gated.batch_sizes(), vec![1, 4, 4, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_is_refused_at_once() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let enc = Arc::new(FakeEncoder::gated(16, entered_tx, release_rx));
        let config = ServiceConfig {
            max_batch: 1,
            queue_capacity: 2,
            ..ServiceConfig::default()
        };
        let svc = Arc::new(service(Arc::clone(&enc), config));
        let busy = tokio::spawn({
            let svc = Arc::clone(&svc);
            async move { svc.embed("busy").await }
        });
        tokio::task::spawn_blocking(move || entered.recv().map(|()| entered))
            .await
            .unwrap()
            .unwrap();
        let queued: Vec<_> = ["q1", "q2"]
            .into_iter()
            .map(|t| {
                let svc = Arc::clone(&svc);
                tokio::spawn(async move { svc.embed(t).await })
            })
            .collect();
        wait_for_enqueued(&svc, 3).await;
        let err = svc.embed("one too many").await.unwrap_err();
        assert_eq!(err, EmbedError::QueueFull { capacity: 2 });
        assert_eq!(
            err.to_string(),
            "embedding queue is full (2 requests waiting)"
        );
        assert_eq!(svc.stats().rejected, 1);
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        busy.await.unwrap().unwrap();
        for q in queued {
            q.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn encoder_errors_and_panics_reach_the_callers_and_the_worker_survives() {
        let enc = Arc::new(FakeEncoder::new(16));
        let svc = service(Arc::clone(&enc), ServiceConfig::default());
        let err = svc.embed("FAIL").await.unwrap_err();
        assert_eq!(
            err,
            EmbedError::Encode(EncodeError::Inference("fake failure".into()))
        );
        assert_eq!(err.to_string(), "model inference failed: fake failure");
        let err = svc.embed("PANIC").await.unwrap_err();
        assert_eq!(
            err,
            EmbedError::Encode(EncodeError::Inference("encoder panicked".into()))
        );
        assert_eq!(svc.cached_len(), 0, "failures are not cached");
        svc.embed("still works").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_workers_answer_everything() {
        let enc = Arc::new(FakeEncoder::new(16));
        let config = ServiceConfig {
            workers: 3,
            max_batch: 2,
            ..ServiceConfig::default()
        };
        let svc = Arc::new(service(Arc::clone(&enc), config));
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let svc = Arc::clone(&svc);
                tokio::spawn(async move { (i, svc.embed(&format!("text {i}")).await) })
            })
            .collect();
        for h in handles {
            let (i, v) = h.await.unwrap();
            assert_eq!(&v.unwrap()[..], enc.vector(&format!("text {i}")).as_slice());
        }
        assert_eq!(svc.stats().encoded_texts, 40);
        assert!(enc.batch_sizes().iter().all(|&n| n <= 2));
    }

    #[tokio::test]
    async fn shutdown_refuses_new_requests() {
        let enc = Arc::new(FakeEncoder::new(16));
        let svc = service(enc, ServiceConfig::default());
        svc.embed("before").await.unwrap();
        svc.shutdown();
        let err = svc.embed("after").await.unwrap_err();
        assert_eq!(err, EmbedError::ShutDown);
        assert_eq!(err.to_string(), "embedding service is shut down");
        // Cached texts are still served.
        svc.embed("before").await.unwrap();
    }
}
