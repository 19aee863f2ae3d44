//! The HTTP data plane: the reserved endpoints (`/healthz`, `/readyz`), the proxy handler
//! that serves every other path from the routing table, and (in `server`) the
//! thread-per-core accept loop with graceful, bounded drain. `/metrics` is served only on
//! the separate metrics listener (`--metrics-listen`), never to traffic clients.

pub(crate) mod budget;
mod client;
pub(crate) mod egress;
mod filter;
mod headers;
mod inbound;
mod proxy;
pub(crate) mod relay;
mod server;
pub(crate) mod shape;
mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(crate) use client::UpstreamClient;
pub(crate) use inbound::Reading;
pub(crate) use server::{IoThreads, Timing, bind, default_io_threads, serve};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::table::SharedTable;

/// Everything a request handler reads. Nothing here is locked: the table is an `ArcSwap`.
/// Each traffic I/O thread has its own copy with its own upstream `client` (whose pooled
/// connections live on that thread's runtime); the rest is shared.
#[derive(Clone)]
pub(crate) struct AppState {
    pub table: SharedTable,
    pub client: client::UpstreamClient,
    pub header_timeout: Duration,
    pub draining: Arc<AtomicBool>,
    pub metrics: Option<PrometheusHandle>,
    /// The node's sentence encoder and caches (semantic routing, prompt guard).
    pub engine: Arc<crate::semantic::SemanticEngine>,
    /// The node's protective limits.
    pub limits: Arc<crate::limits::NodeLimits>,
    /// How request bodies are read (timeout, byte budget, shape, CPU pool).
    pub reading: Reading,
    /// The rate-limit and budget counters (this I/O thread's Redis connection).
    pub counters: crate::governance::CounterHandle,
    /// The response cache (this I/O thread's Redis connection).
    pub cache: crate::cache::CacheHandle,
    /// Make the request path's OpenTelemetry spans ([`crate::traces`]).
    pub traces: bool,
    /// The usage queue towards the control plane (`None`: shipping is off).
    pub usage: Option<crate::usage::ship::UsageSink>,
}

/// The main listener's router: reserved paths, then every proxy.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(proxy::handle)
        .with_state(state)
}

/// The optional metrics listener's router.
pub(crate) fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match state.table.load().as_ref() {
        Some(table) => format!(
            "ready: snapshot version {}\n{}\n",
            table.version,
            state.counters.shared().describe()
        )
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot yet: waiting for the control plane\n",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled on this node\n").into_response(),
    }
}
