//! Accepting and serving connections, with graceful, bounded drain.
//!
//! The traffic listener is served **thread per core**: one acceptor hands each new
//! connection to the least busy of N I/O threads, and each I/O thread runs its own
//! single-threaded tokio runtime with its own upstream client. A request is then parsed,
//! routed, proxied upstream and answered on one thread, with no cross-thread wake-up and
//! no work stealing in the way (measured in ARCHITECTURE.md, "Performance notes": the
//! wake-ups of a work-stealing runtime cost this hop more than any other single thing).
//! Everything the threads share is read-mostly: the routing table (`ArcSwap`), the semantic
//! engine and the metrics recorder.
//!
//! The metrics listener is served by [`serve`] on the caller's runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::GatewayError;

/// Where a server's connections come from.
enum Source {
    Listener(TcpListener),
    /// Handed over by the acceptor; `open` counts this thread's live connections.
    Handoff {
        rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        open: Arc<AtomicUsize>,
    },
}

impl Source {
    /// The next connection, or `None` once the acceptor is gone.
    async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        match self {
            Source::Listener(listener) => loop {
                match listener.accept().await {
                    Ok(accepted) => return Some(accepted),
                    Err(e) => accept_error(e).await,
                }
            },
            Source::Handoff { rx, open } => loop {
                let (stream, peer) = rx.recv().await?;
                match TcpStream::from_std(stream) {
                    Ok(stream) => return Some((stream, peer)),
                    Err(e) => {
                        open.fetch_sub(1, Ordering::Relaxed);
                        warn!(%peer, error = %e, "cannot register a connection with this I/O thread");
                    }
                }
            },
        }
    }

    /// Held by a connection's task while it lives.
    fn guard(&self) -> Option<OpenGuard> {
        match self {
            Source::Listener(_) => None,
            Source::Handoff { open, .. } => Some(OpenGuard(Arc::clone(open))),
        }
    }
}

/// Decrements its thread's open-connection count when the connection ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a connection may take: the drain on shutdown, and the time a client has to send
/// a request's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub drain: Duration,
    /// hyper's HTTP/1 header read timeout. It runs from the moment the connection waits
    /// for a request head, so it also closes a keep-alive connection left idle this long.
    pub header: Duration,
}

/// Serves `listener` on the current runtime until `shutdown`, then lets open connections
/// (in-flight requests and streams) finish for at most `drain`, then closes what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    timing: Timing,
    what: &'static str,
) {
    serve_from(
        Source::Listener(listener),
        router,
        shutdown,
        timing,
        what,
        None,
    )
    .await;
}

async fn serve_from(
    mut source: Source,
    router: Router,
    shutdown: CancellationToken,
    timing: Timing,
    what: &'static str,
    tls: Option<TlsAcceptor>,
) {
    let drain = timing.drain;
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client gets `header` to send a request's headers (from connect, or from the end of
    // the previous response): slow or idle clients do not hold sockets for ever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timing.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timing.header))
        .keep_alive_timeout(timing.header);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = source.next() => {
                let Some((stream, peer)) = next else { break };
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                let guard = source.guard();
                let (builder, router, watcher) = (builder.clone(), router.clone(), graceful.watcher());
                match &tls {
                    // The handshake runs in the connection's own task on this thread, so a
                    // slow client holds up no one.
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            match switchyard_tls::handshake(&acceptor, stream).await {
                                Ok(stream) => serve_connection(builder, stream, router, watcher, peer).await,
                                Err(e) => debug!(%peer, error = %e, "TLS handshake failed"),
                            }
                            drop(guard);
                        });
                    }
                    None => {
                        connections.spawn(async move {
                            serve_connection(builder, stream, router, watcher, peer).await;
                            drop(guard);
                        });
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(source);
    let open = connections.len();
    info!(server = what, open_connections = open, "draining");
    tokio::select! {
        _ = graceful.shutdown() => debug!(server = what, "drained"),
        _ = tokio::time::sleep(drain) => {
            warn!(server = what, remaining = connections.len(), "drain timeout: closing the remaining connections");
        }
    }
    connections.shutdown().await;
}

/// Serves one connection (plain or TLS) until it ends or, on shutdown, drains.
async fn serve_connection<I>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    router: Router,
    watcher: Watcher,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
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
) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { what, addr, source })
}

/// The traffic listener's I/O threads, started and waiting for connections.
pub(crate) struct IoThreads {
    threads: Vec<IoThread>,
    /// Open connections allowed over all threads.
    max_connections: usize,
}

struct IoThread {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<()>,
}

impl IoThreads {
    /// Starts `count` threads (at least one). `router` is called once per thread, on the
    /// calling thread, so each gets its own state (its own upstream connection pool).
    /// Each thread stops taking connections on `shutdown` and drains its own for at most
    /// `drain`.
    pub(crate) fn start(
        count: usize,
        mut router: impl FnMut() -> Result<Router, GatewayError>,
        shutdown: &CancellationToken,
        timing: Timing,
        max_connections: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<IoThreads, GatewayError> {
        let acceptor = tls.map(TlsAcceptor::from);
        let mut threads = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| GatewayError::Runtime(e.to_string()))?;
            let router = router()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let source = Source::Handoff {
                rx,
                open: Arc::clone(&open),
            };
            let shutdown = shutdown.clone();
            let acceptor = acceptor.clone();
            let handle = std::thread::Builder::new()
                .name(format!("switchyard-io-{index}"))
                .spawn(move || {
                    runtime.block_on(serve_from(
                        source, router, shutdown, timing, "traffic", acceptor,
                    ));
                })
                .map_err(|e| GatewayError::Runtime(e.to_string()))?;
            threads.push(IoThread { tx, open, handle });
        }
        Ok(IoThreads {
            threads,
            max_connections,
        })
    }

    /// Accepts on `listener` until `shutdown`, handing each connection to the thread with
    /// the fewest open connections; then waits for every thread to finish draining.
    pub(crate) async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let mut threads = self.threads;
        let mut refused = Refusals::default();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            };
            let open: usize = threads.iter().map(|t| t.open.load(Ordering::Relaxed)).sum();
            if open >= self.max_connections {
                // At the cap: closed at once (the client sees a reset or EOF and may retry
                // elsewhere) rather than queued holding a file descriptor.
                drop(stream);
                refused.note(peer, self.max_connections);
                continue;
            }
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(%peer, error = %e, "cannot hand a connection over");
                    continue;
                }
            };
            threads = hand_over(threads, stream, peer);
            if threads.is_empty() {
                warn!("every I/O thread is gone: the traffic listener stops");
                break;
            }
        }
        drop(listener);
        for IoThread { tx, handle, .. } in threads {
            drop(tx);
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => warn!("an I/O thread panicked"),
                Err(e) => warn!(error = %e, "cannot join an I/O thread"),
            }
        }
        info!(server = "traffic", "drained");
    }
}

/// Counts connections closed at the cap; logs at most one line a second about them.
#[derive(Default)]
struct Refusals {
    last_log: Option<std::time::Instant>,
    since_log: u64,
}

impl Refusals {
    fn note(&mut self, peer: SocketAddr, cap: usize) {
        metrics::counter!("switchyard_connections_refused_total", "reason" => "max_connections")
            .increment(1);
        self.since_log += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            warn!(%peer, max_connections = cap, refused = self.since_log, "connection cap reached: closing new connections");
            self.last_log = Some(std::time::Instant::now());
            self.since_log = 0;
        }
    }
}

/// Gives `stream` to the thread with the fewest open connections. A thread that can no
/// longer take connections (it died) is dropped from the list and the next one is tried.
fn hand_over(
    mut threads: Vec<IoThread>,
    mut stream: std::net::TcpStream,
    peer: SocketAddr,
) -> Vec<IoThread> {
    while let Some((index, thread)) = threads
        .iter()
        .enumerate()
        .min_by_key(|(_, t)| t.open.load(Ordering::Relaxed))
    {
        thread.open.fetch_add(1, Ordering::Relaxed);
        match thread.tx.send((stream, peer)) {
            Ok(()) => break,
            Err(mpsc::error::SendError((returned, _))) => {
                warn!(thread = index, "an I/O thread is gone");
                stream = returned;
                threads.swap_remove(index);
            }
        }
    }
    threads
}

/// The default number of I/O threads: one per core the process may use.
pub(crate) fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Inbox = mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>;

    fn thread(open: usize) -> (IoThread, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = std::thread::spawn(|| {});
        let open = Arc::new(AtomicUsize::new(open));
        (IoThread { tx, open, handle }, rx)
    }

    fn connection() -> (std::net::TcpStream, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = std::net::TcpStream::connect(addr).unwrap();
        (stream, addr)
    }

    #[test]
    fn a_connection_goes_to_the_least_busy_thread() {
        let (busy, mut busy_rx) = thread(3);
        let (idle, mut idle_rx) = thread(1);
        let (stream, peer) = connection();
        let threads = hand_over(vec![busy, idle], stream, peer);
        assert_eq!(threads.len(), 2);
        assert!(idle_rx.try_recv().is_ok());
        assert!(busy_rx.try_recv().is_err());
        assert_eq!(threads[1].open.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_dead_thread_is_skipped_and_dropped() {
        let (dead, dead_rx) = thread(0);
        drop(dead_rx);
        let (alive, mut alive_rx) = thread(5);
        let (stream, peer) = connection();
        let threads = hand_over(vec![dead, alive], stream, peer);
        assert_eq!(threads.len(), 1);
        assert!(alive_rx.try_recv().is_ok());
        assert_eq!(threads[0].open.load(Ordering::Relaxed), 6);

        // With none left, the connection is dropped and the list is empty.
        let (stream, peer) = connection();
        drop(alive_rx);
        assert!(hand_over(threads, stream, peer).is_empty());
    }
}
