//! Switchyard's control plane: the store of LLM Proxy definitions, the admin REST API, and the
//! gRPC stream that feeds gateway nodes with versioned snapshots.
//!
//! [`ControlPlane::start`] opens the store (applying migrations), re-encrypts secrets under
//! the current key, binds both listeners and returns; [`ControlPlane::shutdown`] stops it.
#![forbid(unsafe_code)]

pub mod api;
pub mod crypto;
pub mod distribute;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard_model::{Limits, Secret};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::crypto::Keyring;
use crate::distribute::hub::{self, Hub};
use crate::distribute::{Distributor, Snapshots, hash_token};
use crate::store::{Backend, Store, StoreError};

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub database_url: String,
    pub admin_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// Bearer token of the admin API; `None` disables auth (`--insecure-no-auth`).
    pub admin_token: Option<String>,
    /// Base64 of 32 bytes: encrypts static provider secrets at rest.
    pub encryption_key: String,
    /// Earlier keys, still accepted for decryption (rotation).
    pub previous_encryption_keys: Vec<String>,
    pub limits: Limits,
    /// A node not heard from for this long is shown as disconnected.
    pub node_stale_after: Duration,
    /// How often versions are polled as a safety net behind change notifications.
    pub resync_interval: Duration,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Serve gRPC and the admin API over TLS (`--tls-cert`/`--tls-key`, re-read when they
    /// change); with `client_ca`, nodes must present a client certificate (mTLS, gRPC
    /// only: the admin API authenticates with its bearer token).
    pub tls: Option<switchyard_tls::ServerTls>,
    /// When a client address is refused after failed admin authentications.
    pub auth_throttle: api::ThrottleConfig,
    /// Raw usage rows are deleted once older than this (`--usage-retention`; the hourly
    /// and daily rollups are kept); `None` keeps them for ever.
    pub usage_retention: Option<Duration>,
}

/// How long raw usage rows are kept by default: 30 days.
pub const DEFAULT_USAGE_RETENTION: Duration = Duration::from_secs(30 * 86_400);

impl ControlPlaneConfig {
    pub fn new(database_url: impl Into<String>, encryption_key: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_token: None,
            encryption_key: encryption_key.into(),
            previous_encryption_keys: Vec::new(),
            limits: Limits::default(),
            node_stale_after: Duration::from_secs(30),
            resync_interval: Duration::from_secs(5),
            metrics: None,
            tls: None,
            auth_throttle: api::ThrottleConfig::default(),
            usage_retention: Some(DEFAULT_USAGE_RETENTION),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("encryption key: {0}")]
    Key(#[from] crypto::CryptoError),
    #[error("{0}")]
    Tls(#[from] switchyard_tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running control plane.
pub struct ControlPlane {
    admin_addr: SocketAddr,
    grpc_addr: SocketAddr,
    store: Arc<Store>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    pub async fn start(config: ControlPlaneConfig) -> Result<Self, StartError> {
        let keyring = Arc::new(Keyring::new(
            &config.encryption_key,
            &config.previous_encryption_keys,
        )?);
        // Certificates first: a bad file is refused before anything else starts.
        let tls = match &config.tls {
            Some(tls) => Some(TlsServers::new(tls)?),
            None => None,
        };
        let store = Arc::new(Store::connect(&config.database_url).await?);
        reencrypt(&store, &keyring).await?;

        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.admin_listen,
                source,
            })?;
        let grpc = TcpListener::bind(config.grpc_listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.grpc_listen,
                source,
            })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Listen {
            addr: config.admin_listen,
            source,
        })?;
        let grpc_addr = grpc.local_addr().map_err(|source| StartError::Listen {
            addr: config.grpc_listen,
            source,
        })?;

        let cancel = CancellationToken::new();
        let hub = Arc::new(Hub::default());
        let mut tasks = Vec::new();
        if let Some(tls) = &tls {
            tasks.push(tls.grpc_cert.watch(cancel.clone()));
            tasks.push(tls.admin_cert.watch(cancel.clone()));
        }
        if store.backend() == Backend::Postgres {
            tasks.push(tokio::spawn(hub::listen_postgres(
                store.clone(),
                hub.clone(),
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(hub::poll_versions(
            store.clone(),
            hub.clone(),
            config.resync_interval,
            cancel.clone(),
        )));

        let state = Arc::new(api::AppState {
            store: store.clone(),
            keyring: keyring.clone(),
            hub: hub.clone(),
            limits: config.limits,
            admin_token: config.admin_token.clone(),
            auth_throttle: api::AuthThrottle::new(config.auth_throttle),
            node_stale_after: config.node_stale_after,
            metrics: config.metrics.clone(),
        });
        // The client's address reaches the handlers (the failed-authentication throttle).
        let app = api::router(state).into_make_service_with_connect_info::<api::auth::ClientAddr>();
        let admin_cancel = cancel.clone();
        let admin_tls = tls.as_ref().map(|t| t.admin.clone());
        tasks.push(tokio::spawn(async move {
            let served = match admin_tls {
                Some(config) => match switchyard_tls::TlsListener::new(admin, config, "admin") {
                    Ok(listener) => {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(admin_cancel.cancelled_owned())
                            .await
                    }
                    Err(e) => Err(e),
                },
                None => {
                    axum::serve(admin, app)
                        .with_graceful_shutdown(admin_cancel.cancelled_owned())
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "admin server failed");
            }
        }));

        let retention = config
            .usage_retention
            .and_then(|r| chrono::Duration::from_std(r).ok());
        if let Some(retention) = retention {
            tasks.push(tokio::spawn(usage_retention(
                store.clone(),
                retention,
                cancel.clone(),
            )));
        }
        let usage = distribute::usage::UsageIngest::new(store.clone(), retention);
        let snapshots = Arc::new(Snapshots::new(store.clone(), keyring));
        let distributor = Distributor::new(store.clone(), hub, snapshots, cancel.clone());
        let grpc_cancel = cancel.clone();
        let grpc_tls = tls.as_ref().map(|t| t.grpc.clone());
        tasks.push(tokio::spawn(async move {
            let router = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .add_service(
                    switchyard_proto::encoded::config_distribution_server::ConfigDistributionServer::new(
                        distributor,
                    ),
                )
                .add_service(usage.server());
            let served = match grpc_tls {
                // Handshakes (and mTLS client verification) complete before tonic sees the
                // connection: a node without a valid certificate never reaches its hello.
                Some(config) => match switchyard_tls::TlsListener::new(grpc, config, "grpc") {
                    Ok(listener) => {
                        router
                            .serve_with_incoming_shutdown(
                                listener.into_stream(),
                                grpc_cancel.cancelled_owned(),
                            )
                            .await
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "grpc server failed");
                        return;
                    }
                },
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
                    router
                        .serve_with_incoming_shutdown(incoming, grpc_cancel.cancelled_owned())
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "grpc server failed");
            }
        }));

        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %admin_addr, scheme, "admin API listening");
        tracing::info!(
            address = %grpc_addr,
            scheme,
            client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "config distribution (gRPC) listening"
        );
        Ok(Self {
            admin_addr,
            grpc_addr,
            store,
            cancel,
            tasks,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Creates `name` if it does not exist and gives it a fresh registration token (used by
    /// `switchyard dev` to wire its own gateway node).
    pub async fn bootstrap_gateway(&self, name: &str) -> Result<String, StoreError> {
        let token = api::new_registration_token();
        let audit = store::Audit::system("dev");
        if self.store.get_gateway(name).await?.is_some() {
            self.store
                .set_gateway_token(&audit, name, &hash_token(&token))
                .await?;
        } else {
            self.store
                .create_gateway(&audit, name, &hash_token(&token))
                .await?;
        }
        Ok(token)
    }

    /// Stops both servers, ends every node stream, and closes the store.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.store.close().await;
    }
}

/// The TLS configs of both listeners. They share the certificate files; each has its own
/// resolver (the admin API asks for no client certificate), both re-read on change.
struct TlsServers {
    grpc: Arc<rustls::ServerConfig>,
    grpc_cert: Arc<switchyard_tls::ReloadingCert>,
    admin: Arc<rustls::ServerConfig>,
    admin_cert: Arc<switchyard_tls::ReloadingCert>,
}

impl TlsServers {
    fn new(tls: &switchyard_tls::ServerTls) -> Result<TlsServers, switchyard_tls::TlsError> {
        let (grpc, grpc_cert) = tls.server_config(vec![b"h2".to_vec()])?;
        let admin_only = switchyard_tls::ServerTls {
            client_ca: None,
            ..tls.clone()
        };
        let (admin, admin_cert) = admin_only.server_config(switchyard_tls::alpn_h2_http11())?;
        Ok(TlsServers {
            grpc,
            grpc_cert,
            admin,
            admin_cert,
        })
    }
}

/// `map` (a value's `try_map_secrets_at`) with every secret of `owner` moved to the current
/// form and key: `None` when nothing was stale, or when a secret cannot be decrypted (the
/// first such error is kept in `failure`).
fn rotated<T>(
    keyring: &Keyring,
    owner: &str,
    failure: &mut Option<crypto::CryptoError>,
    map: impl FnOnce(
        &mut dyn FnMut(&str, Secret) -> Result<Secret, crypto::CryptoError>,
    ) -> Result<T, crypto::CryptoError>,
) -> Option<T> {
    let mut stale = false;
    let rewritten = map(&mut |field: &str, s: Secret| {
        Ok(match keyring.rotate(&s, owner, field)? {
            Some(fresh) => {
                stale = true;
                fresh
            }
            None => s,
        })
    });
    match rewritten {
        Ok(value) => stale.then_some(value),
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    }
}

/// Deletes raw usage rows older than the retention, at start and every hour. Replicas may
/// all run it: deleting rows already gone is harmless.
async fn usage_retention(
    store: Arc<Store>,
    retention: chrono::Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = chrono::Utc::now() - retention;
        match store.delete_usage_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(deleted = n, before = %cutoff.to_rfc3339(), "raw usage rows past --usage-retention deleted")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete raw usage rows past the retention; retrying in an hour")
            }
        }
    }
}

/// Re-encrypts every static secret that is not under the current key (completes a rotation).
async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<(), StartError> {
    let mut failure: Option<crypto::CryptoError> = None;
    let changed = store
        .rewrite_specs(|spec| {
            let owner = spec.secret_owner();
            Ok(rotated(keyring, &owner, &mut failure, |f| {
                spec.try_map_secrets_at(f)
            }))
        })
        .await?;
    if let Some(e) = failure {
        return Err(StartError::Key(e));
    }
    let services = store
        .rewrite_semantic_services(|service| {
            let owner = service.secret_owner();
            Ok(rotated(keyring, &owner, &mut failure, |f| {
                service.try_map_secrets_at(f)
            }))
        })
        .await?;
    if let Some(e) = failure {
        return Err(StartError::Key(e));
    }
    if changed > 0 || services > 0 {
        tracing::info!(
            proxies = changed,
            semantic_services = services,
            "re-encrypted stored secrets under the current key"
        );
    }
    Ok(())
}
