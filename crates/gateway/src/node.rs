//! A running gateway node: its listeners, its sync task, and their lifecycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::GatewayError;
use crate::http::{self, AppState};
use crate::limits::NodeLimits;
use crate::semantic::{EncoderKind, SemanticEngine, load_encoder};
use crate::sync::cache::Cache;
use crate::sync::{self, Applier, SyncSettings, SyncState};
use crate::table::SharedTable;
use switchyard_semantic::Encoder;

/// How to run one gateway node.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The control plane's gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub control_plane: String,
    /// The gateway (group of nodes) this node serves.
    pub gateway: String,
    pub registration_token: String,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// Where the last good snapshot and the node id are kept.
    pub cache_dir: PathBuf,
    /// Defaults to an id persisted in `cache_dir/node-id`, created once.
    pub node_id: Option<String>,
    pub upstream_connect_timeout: Duration,
    /// Time allowed until the upstream's response headers.
    pub upstream_header_timeout: Duration,
    /// How long shutdown waits for in-flight requests and streams.
    pub drain_timeout: Duration,
    /// Threads serving traffic, each with its own single-threaded runtime and upstream
    /// connection pool; `None`: one per core.
    pub io_threads: Option<usize>,
    /// The installed Prometheus recorder's handle; `None` answers `/metrics` with 404.
    pub metrics: Option<PrometheusHandle>,
    /// The sentence encoder's directory (semantic routing and the semantic prompt guard).
    /// Without one (and without `encoder`), snapshots holding such proxies are NACKed
    /// unless they name a remote `semantic_service`.
    pub model_dir: Option<PathBuf>,
    /// Which encoder `model_dir` holds.
    pub encoder_kind: EncoderKind,
    /// An already loaded encoder, used instead of loading `model_dir` (tests and embedders
    /// share one).
    pub encoder: Option<Arc<dyn Encoder>>,
    /// TLS towards an `https://` control plane.
    pub control_plane_tls: ControlPlaneTls,
    /// Serve the traffic listener over TLS (HTTP/2 and HTTP/1.1 by ALPN); the certificate
    /// is re-read when its files change.
    pub listen_tls: Option<switchyard_tls::ServerTls>,
    /// Timeouts, connection cap, request limits, CPU pool, egress policy.
    pub limits: NodeLimits,
    /// Where rate-limit and budget counters live (Redis, or this node).
    pub counters: crate::governance::LimitsConfig,
    /// The response cache's bounds (its Redis is the counters').
    pub cache: crate::cache::CacheConfig,
    /// Make the request path's OpenTelemetry spans (children, GenAI attributes, trace
    /// context upstream). Set when the process exports traces (`--otlp-endpoint`): it
    /// installs the exporter, the `tracing` layer and the W3C propagator.
    pub traces: bool,
    /// Usage records to the control plane: the queue, batches, spool bound.
    pub usage: crate::usage::ship::UsageShipping,
}

/// How a node verifies an `https://` control plane and proves itself to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlPlaneTls {
    /// The CA the control plane's certificate must chain to (`--control-plane-ca`);
    /// without it, the system's roots.
    pub ca: Option<PathBuf>,
    /// The node's own certificate and key (`--tls-cert`/`--tls-key`), presented when the
    /// control plane asks (mTLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl GatewayConfig {
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8000);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

    /// A configuration with every optional setting at its default.
    pub fn new(
        control_plane: impl Into<String>,
        gateway: impl Into<String>,
        registration_token: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
    ) -> GatewayConfig {
        GatewayConfig {
            control_plane: control_plane.into(),
            gateway: gateway.into(),
            registration_token: registration_token.into(),
            listen: Self::DEFAULT_LISTEN,
            metrics_listen: None,
            cache_dir: cache_dir.into(),
            node_id: None,
            upstream_connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            upstream_header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            io_threads: None,
            metrics: None,
            model_dir: None,
            encoder_kind: EncoderKind::default(),
            encoder: None,
            control_plane_tls: ControlPlaneTls::default(),
            listen_tls: None,
            limits: NodeLimits::default(),
            counters: crate::governance::LimitsConfig::default(),
            cache: crate::cache::CacheConfig::default(),
            traces: false,
            usage: crate::usage::ship::UsageShipping::default(),
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("control_plane", &self.control_plane)
            .field("gateway", &self.gateway)
            .field("registration_token", &"***")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("cache_dir", &self.cache_dir)
            .field("node_id", &self.node_id)
            .field("upstream_connect_timeout", &self.upstream_connect_timeout)
            .field("upstream_header_timeout", &self.upstream_header_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("io_threads", &self.io_threads)
            .field("metrics", &self.metrics.is_some())
            .field("model_dir", &self.model_dir)
            .field("encoder_kind", &self.encoder_kind)
            .field(
                "encoder",
                &self.encoder.as_ref().map(|e| e.name().to_owned()),
            )
            .field("control_plane_tls", &self.control_plane_tls)
            .field("listen_tls", &self.listen_tls)
            .field("limits", &self.limits)
            .field("counters_redis", &self.counters.redis_url.is_some())
            .field("traces", &self.traces)
            .field("usage", &self.usage)
            .finish()
    }
}

/// The client for upstream calls. Each traffic I/O thread builds its own, so that its
/// pooled connections are driven by the thread that uses them.
fn upstream_client(config: &GatewayConfig) -> Result<http::UpstreamClient, GatewayError> {
    let egress = http::egress::Policy::new(&config.limits.upstream_deny_cidrs);
    http::UpstreamClient::new(config.upstream_connect_timeout, egress)
        .map_err(GatewayError::HttpClient)
}

/// The pacing of the control-plane stream. The defaults are the production ones; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct SyncTuning {
    pub heartbeat_interval: Duration,
    /// First reconnect delay ceiling, doubled on each failure (full jitter).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for SyncTuning {
    fn default() -> Self {
        SyncTuning {
            heartbeat_interval: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// A running gateway node.
pub struct Gateway {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    state: Arc<AppState>,
    sync_state: watch::Receiver<SyncState>,
    shutdown: CancellationToken,
    main: JoinHandle<()>,
    metrics: Option<JoinHandle<()>>,
    sync: JoinHandle<()>,
    usage: Option<crate::usage::ship::Shipper>,
}

impl Gateway {
    /// Binds the listeners, serves the cached snapshot if there is one, and starts syncing
    /// with the control plane in the background.
    pub async fn start(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        Self::start_with(config, SyncTuning::default()).await
    }

    pub async fn start_with(
        config: GatewayConfig,
        tuning: SyncTuning,
    ) -> Result<Gateway, GatewayError> {
        let endpoint = sync::endpoint(
            &config.control_plane,
            config.upstream_connect_timeout,
            &config.control_plane_tls,
        )?;
        let listen_tls = match &config.listen_tls {
            Some(tls) => Some(tls.server_config(switchyard_tls::alpn_h2_http11())?),
            None => None,
        };
        let cache_error = |source| GatewayError::CacheDir {
            path: config.cache_dir.clone(),
            source,
        };
        let cache = Cache::open(&config.cache_dir).map_err(cache_error)?;
        let node_id = match &config.node_id {
            Some(id) => id.clone(),
            None => cache.node_id().map_err(cache_error)?,
        };
        // The semantic engine's client (remote embedding services), shared by every thread.
        let embeddings_client = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GatewayError::HttpClient(e.to_string()))?;

        let encoder = match (&config.encoder, &config.model_dir) {
            (Some(encoder), _) => Some(Arc::clone(encoder)),
            (None, Some(dir)) => {
                let (dir, kind) = (dir.clone(), config.encoder_kind);
                let loaded = tokio::task::spawn_blocking(move || load_encoder(&dir, kind))
                    .await
                    .map_err(|e| GatewayError::EmbeddingWorker(std::io::Error::other(e)))??;
                info!(
                    encoder = loaded.name(),
                    dim = loaded.dim(),
                    "sentence encoder loaded"
                );
                Some(loaded)
            }
            (None, None) => None,
        };
        let engine = Arc::new(match encoder {
            Some(e) => SemanticEngine::with_encoder(e, embeddings_client)
                .map_err(GatewayError::EmbeddingWorker)?,
            None => SemanticEngine::without_encoder(embeddings_client),
        });

        let (state_tx, sync_state) = watch::channel(SyncState::default());
        let (usage_sink, shipper) = if config.usage.enabled {
            let identity = crate::usage::ship::Identity {
                gateway: config.gateway.clone(),
                node_id: node_id.clone(),
                registration_token: config.registration_token.clone(),
            };
            let (sink, shipper) = crate::usage::ship::start(
                config.usage.clone(),
                &endpoint,
                identity,
                &config.cache_dir,
                sync_state.clone(),
            )
            .map_err(cache_error)?;
            (Some(sink), Some(shipper))
        } else {
            info!("usage shipping is off: usage records stay on this node (metrics and logs)");
            (None, None)
        };

        let table: SharedTable = Arc::new(ArcSwapOption::empty());
        let applier = Applier::new(
            config.gateway.clone(),
            Arc::clone(&table),
            cache,
            state_tx,
            Arc::clone(&engine),
        );
        applier.boot_from_cache().await;

        let state = Arc::new(AppState {
            table,
            client: upstream_client(&config)?,
            header_timeout: config.upstream_header_timeout,
            draining: Arc::new(AtomicBool::new(false)),
            metrics: config.metrics.clone(),
            engine,
            limits: Arc::new(config.limits.clone()),
            reading: http::Reading {
                body_timeout: config.limits.client_body_timeout,
                budget: http::budget::Budget::new(config.limits.max_inflight_request_bytes),
                shape: http::shape::ShapeLimits::from(&config.limits),
                offload: crate::offload::Offload::new(
                    config.limits.offload_threshold,
                    config.limits.offload_threads,
                ),
            },
            counters: crate::governance::CounterHandle::new(
                crate::governance::Counters::new(config.counters.clone())
                    .map_err(GatewayError::Limits)?,
            ),
            cache: crate::cache::CacheHandle::new(
                crate::cache::CacheStore::new(
                    config.cache.clone(),
                    config.counters.redis_url.as_deref(),
                    &config.counters.key_prefix,
                    config.counters.timeout,
                )
                .map_err(GatewayError::Limits)?,
            ),
            traces: config.traces,
            usage: usage_sink,
        });
        info!("{}", state.counters.shared().describe());
        let listener = http::bind(config.listen, "traffic").await?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            what: "traffic",
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(http::bind(addr, "metrics").await?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|source| GatewayError::Bind {
                what: "metrics",
                addr: config.metrics_listen.unwrap_or(config.listen),
                source,
            })?),
            None => None,
        };

        let shutdown = CancellationToken::new();
        // Every node's semantic cache entries, from Redis into this node's index.
        state.cache.feed_index(shutdown.clone());
        let timing = http::Timing {
            drain: config.drain_timeout,
            header: config.limits.client_header_timeout,
        };
        let io_threads = http::IoThreads::start(
            config.io_threads.unwrap_or_else(http::default_io_threads),
            || {
                let mut own = AppState::clone(&state);
                own.client = upstream_client(&config)?;
                own.counters = state.counters.for_thread();
                own.cache = state.cache.for_thread();
                Ok(http::router(Arc::new(own)))
            },
            &shutdown,
            timing,
            config.limits.max_connections,
            listen_tls.as_ref().map(|(config, _)| Arc::clone(config)),
        )?;
        if let Some((_, cert)) = &listen_tls {
            // Ends with the node (on shutdown).
            drop(cert.watch(shutdown.clone()));
        }
        let main = tokio::spawn(io_threads.serve(listener, shutdown.clone()));
        let metrics = metrics_listener.map(|l| {
            tokio::spawn(http::serve(
                l,
                http::metrics_router(Arc::clone(&state)),
                shutdown.clone(),
                timing,
                "metrics",
            ))
        });
        let settings = SyncSettings {
            endpoint,
            gateway: config.gateway.clone(),
            node_id: node_id.clone(),
            registration_token: config.registration_token.clone(),
            address: local_addr.to_string(),
            heartbeat: tuning.heartbeat_interval,
            backoff_base: tuning.backoff_base,
            backoff_cap: tuning.backoff_cap,
        };
        let sync = tokio::spawn(sync::run(settings, applier, shutdown.clone()));

        if let Some(addr) = metrics_addr {
            info!(%addr, "metrics listening");
        }
        info!(
            addr = %local_addr,
            tls = listen_tls.is_some(),
            gateway = %config.gateway,
            node_id = %node_id,
            control_plane = %config.control_plane,
            "listening"
        );
        Ok(Gateway {
            local_addr,
            metrics_addr,
            state,
            sync_state,
            shutdown,
            main,
            metrics,
            sync,
            usage: shipper,
        })
    }

    /// The address traffic is served on (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The snapshot version being served, if any.
    pub fn applied_version(&self) -> Option<u64> {
        self.state.table.load().as_ref().map(|t| t.version)
    }

    /// The sync state, for readiness checks and tests.
    pub fn sync_state(&self) -> watch::Receiver<SyncState> {
        self.sync_state.clone()
    }

    /// Stops accepting, turns readiness to 503, lets in-flight requests and streams finish
    /// (at most `drain_timeout`), and stops syncing.
    pub async fn shutdown(self) {
        info!("shutting down: draining in-flight requests");
        self.state.draining.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        if let Err(e) = self.main.await {
            warn!(error = %e, "traffic server task failed");
        }
        if let Some(metrics) = self.metrics
            && let Err(e) = metrics.await
        {
            warn!(error = %e, "metrics server task failed");
        }
        if let Err(e) = self.sync.await {
            warn!(error = %e, "sync task failed");
        }
        // After the traffic drained: every record is queued; ship or spool them.
        if let Some(usage) = self.usage {
            usage.stop.cancel();
            if let Err(e) = usage.task.await {
                warn!(error = %e, "usage shipper task failed");
            }
        }
        self.state.engine.shutdown();
        info!("stopped");
    }

    /// Runs until the node stops by itself, which only a fatal error does.
    pub async fn wait(self) -> Result<(), GatewayError> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully (see
    /// [`Gateway::shutdown`]); or until the node stops by itself on a fatal error, which is
    /// returned. This is what the binary runs with its SIGTERM/ctrl-c future.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        let metrics = async {
            match self.metrics.as_mut() {
                Some(m) => m.await,
                None => std::future::pending().await,
            }
        };
        let (what, result) = tokio::select! {
            () = signal => {
                self.shutdown().await;
                return Ok(());
            }
            r = &mut self.main => ("traffic", r),
            r = metrics => ("metrics", r),
            r = &mut self.sync => ("sync", r),
        };
        self.state.draining.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        let reason = match result {
            Ok(()) => "stopped unexpectedly".to_owned(),
            Err(e) => e.to_string(),
        };
        Err(GatewayError::Server { what, reason })
    }
}
