//! The HTTP data plane: the reserved endpoints (`/healthz`, `/readyz`, `/metrics`), the
//! proxy handler that serves every other path from the routing table, and the accept loop
//! with graceful, bounded drain.

mod filter;
mod inbound;
mod proxy;
pub(crate) mod relay;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::table::SharedTable;

/// Everything a request handler reads. Nothing here is locked: the table is an `ArcSwap`.
pub(crate) struct AppState {
    pub table: SharedTable,
    pub client: reqwest::Client,
    pub header_timeout: Duration,
    pub draining: AtomicBool,
    pub metrics: Option<PrometheusHandle>,
    /// The node's sentence encoder and caches (semantic routing, prompt guard).
    pub engine: Arc<crate::semantic::SemanticEngine>,
}

/// The main listener's router: reserved paths, then every proxy.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
        Some(table) => format!("ready: snapshot version {}\n", table.version).into_response(),
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

/// Accepts connections until `shutdown`, then lets open connections (in-flight requests and
/// streams) finish for at most `drain`, then closes what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
    what: &'static str,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer enables hyper's HTTP/1 header read timeout (slow clients holding sockets).
    builder.http1().timer(TokioTimer::new());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    let service = TowerToHyperService::new(router.clone());
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let watched = graceful.watch(conn);
                    connections.spawn(async move {
                        if let Err(e) = watched.await {
                            debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => accept_error(e).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let open = connections.len();
    info!(server = what, open_connections = open, "draining");
    tokio::select! {
        _ = graceful.shutdown() => info!(server = what, "drained"),
        _ = tokio::time::sleep(drain) => {
            warn!(server = what, remaining = connections.len(), "drain timeout: closing the remaining connections");
        }
    }
    connections.shutdown().await;
}

async fn accept_error(e: std::io::Error) {
    // Out of file descriptors and the like: wait a little instead of spinning.
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Binds a listener, naming what it is for on failure.
pub(crate) async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, crate::GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::GatewayError::Bind { what, addr, source })
}
