//! TLS for Switchyard's listeners and the node-to-control-plane link, with rustls.
//!
//! - PEM files are read with one-line errors naming the flag, the file and the reason
//!   ([`TlsError`]); a key that does not belong to its certificate is refused at start.
//! - A server's certificate and key are re-read when the files change ([`ReloadingCert`]):
//!   new handshakes get the new certificate, established connections (connected nodes, open
//!   streams) are left alone.
//! - [`TlsListener`] accepts TCP connections and runs their handshakes concurrently (a slow
//!   or silent client never holds up the others); it feeds both axum (`axum::serve`) and
//!   tonic (`serve_with_incoming`).
//! - [`certs`] makes a local CA and certificates for trying it (`switchyard certs`, tests).
#![forbid(unsafe_code)]

pub mod certs;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often certificate files are checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// ALPN for an HTTP server speaking both HTTP/2 and HTTP/1.1.
pub fn alpn_h2_http11() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// A TLS problem, as one line: the flag, the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
}

impl TlsError {
    fn file(flag: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        TlsError::File {
            flag,
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The crypto provider every Switchyard TLS config uses (aws-lc-rs, as reqwest's).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A file's bytes, or an error naming the flag and the file.
pub fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::file(flag, path, format!("cannot read: {e}")))
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            flag,
            path,
            "no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key in it (expected PEM \"-----BEGIN PRIVATE KEY-----\")".to_owned()
            }
            other => format!("not a PEM private key: {other}"),
        };
        TlsError::file(flag, path, reason)
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(
    (cert_flag, cert): (&'static str, &Path),
    (key_flag, key): (&'static str, &Path),
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert_flag, cert)?;
    let private = read_key(key_flag, key)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::file(
            key_flag,
            key,
            format!("does not match the certificate in {}", cert.display()),
        ),
        other => TlsError::file(key_flag, key, format!("unusable key: {other}")),
    })
}

/// The CA certificates of a PEM file, as trust roots.
pub fn read_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(flag, path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::file(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A server's TLS settings: its certificate and key (re-read when they change) and,
/// for mutual TLS, the CA that client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require a client certificate signed by this CA (mTLS); clients without one are
    /// refused during the handshake.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    /// Flag names used in error messages (`--tls-cert` / `--tls-key` / `--client-ca`).
    pub flags: [&'static str; 3],
}

impl ServerTls {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ServerTls {
        ServerTls {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            flags: ["--tls-cert", "--tls-key", "--client-ca"],
        }
    }

    pub fn with_client_ca(mut self, ca: impl Into<PathBuf>) -> ServerTls {
        self.client_ca = Some(ca.into());
        self
    }

    /// Loads the files (every problem is a [`TlsError`] naming the file) and builds the
    /// server config with `alpn`; the returned [`ReloadingCert`] is what
    /// [`ReloadingCert::watch`] keeps current.
    pub fn server_config(
        &self,
        alpn: Vec<Vec<u8>>,
    ) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), TlsError> {
        let cert = Arc::new(ReloadingCert::load(self)?);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(format!("TLS: {e}")))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = Arc::new(read_roots(self.flags[2], ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::file(self.flags[2], ca, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = alpn;
        Ok((Arc::new(config), cert))
    }
}

/// When a file last changed, as far as `stat` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(Option<SystemTime>, u64);

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => Stamp(m.modified().ok(), m.len()),
        Err(_) => Stamp(None, 0),
    }
}

/// A server certificate that is re-read when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: ServerTls,
    current: ArcSwap<CertifiedKey>,
    seen: std::sync::Mutex<(Stamp, Stamp)>,
}

impl ReloadingCert {
    fn load(files: &ServerTls) -> Result<ReloadingCert, TlsError> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let key = certified_key((files.flags[0], &files.cert), (files.flags[1], &files.key))?;
        Ok(ReloadingCert {
            files: files.clone(),
            current: ArcSwap::from_pointee(key),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// The certificate chain served now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Re-reads the files if they changed since the last look: `Ok(true)` when a new
    /// certificate is now served. A change that does not load (a half-written pair, a
    /// mismatched key) keeps the previous certificate and is reported once.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let key = certified_key(
            (self.files.flags[0], &self.files.cert),
            (self.files.flags[1], &self.files.key),
        )?;
        self.current.store(Arc::new(key));
        Ok(true)
    }

    /// Checks the files every `reload_interval` until `cancel`.
    pub fn watch(self: &Arc<Self>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let cert = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cert.files.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match cert.reload_if_changed() {
                    Ok(true) => {
                        info!(cert = %cert.files.cert.display(), "TLS certificate re-read: new connections get it")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(error = %e, "TLS certificate changed but cannot be loaded: still serving the previous one")
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Completes the server side of a handshake within [`HANDSHAKE_TIMEOUT`].
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// TLS connections from a TCP listener, handshakes done concurrently in tasks of the
/// current runtime. Dropping it stops accepting.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    stop: CancellationToken,
}

impl TlsListener {
    /// Starts accepting on `listener`; `what` names the server in logs.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        what: &'static str,
    ) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(256);
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(config);
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(server = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match handshake(&acceptor, stream).await {
                        Ok(tls) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Err(e) => debug!(server = what, %peer, error = %e, "TLS handshake failed"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local_addr,
            stop,
        })
    }

    /// The connections as a stream (for tonic's `serve_with_incoming`).
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + 'static {
        futures::stream::unfold(self, |mut me| async move {
            let (stream, _) = me.rx.recv().await?;
            Some((Ok(stream), me))
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests;
