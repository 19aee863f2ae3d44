//! Config sync: the control plane's gRPC stream turned into routing-table swaps.
//!
//! One long-lived `Subscribe` stream: `Hello` first, then an `Ack` (or NACK) for every
//! snapshot and a `Heartbeat` now and then. Each new snapshot is converted to the domain,
//! compiled into a complete [`RoutingTable`], published with one `ArcSwap::store`, written to
//! the cache directory, and only then ACKed. Anything that fails is NACKed with the reason and
//! the previous table stays. When the stream ends the node reconnects with exponential
//! backoff and full jitter; the data plane never waits for any of this.

mod backoff;
pub(crate) mod cache;

use std::sync::Arc;
use std::time::Duration;

use switchyard_model::snapshot::Snapshot;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_distribution_client::ConfigDistributionClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, error, info, warn};

use crate::GatewayError;
use crate::error::error_chain;
use crate::node::ControlPlaneTls;
use crate::semantic::SemanticEngine;
use crate::table::{ProxyFailure, RoutingTable, SharedTable};
use crate::telemetry;
use backoff::Backoff;
use cache::Cache;

/// What a node knows of its sync with the control plane (see [`crate::Gateway::sync_state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The stream to the control plane is open.
    pub connected: bool,
    /// The snapshot version being served, if any.
    pub applied_version: Option<u64>,
    /// Where the served snapshot came from.
    pub source: Option<SnapshotSource>,
    /// The last sync problem (connection failure, refused token, rejected snapshot).
    pub last_error: Option<String>,
    /// Streams opened to the control plane since start (a reconnect adds one).
    pub sessions: u64,
    /// The proxies of the served snapshot this node could not compile.
    pub proxy_failures: Vec<crate::table::ProxyFailure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSource {
    Cache,
    ControlPlane,
}

/// Validates, compiles, publishes and caches snapshots.
pub(crate) struct Applier {
    gateway: String,
    table: SharedTable,
    cache: Cache,
    state: watch::Sender<SyncState>,
    engine: Arc<SemanticEngine>,
}

impl Applier {
    pub(crate) fn new(
        gateway: String,
        table: SharedTable,
        cache: Cache,
        state: watch::Sender<SyncState>,
        engine: Arc<SemanticEngine>,
    ) -> Applier {
        Applier {
            gateway,
            table,
            cache,
            state,
            engine,
        }
    }

    pub(crate) fn served_version(&self) -> Option<u64> {
        self.table.load().as_ref().map(|t| t.version)
    }

    /// Converts and compiles a snapshot on a blocking thread (topic utterances are encoded
    /// there, off the reactor). A snapshot that does not convert fails whole; a proxy that
    /// does not compile is a [`ProxyFailure`] (its last good version, from the served table,
    /// keeps serving).
    async fn compile(
        &self,
        snapshot: pb::Snapshot,
    ) -> Result<(RoutingTable, Vec<ProxyFailure>), String> {
        if snapshot.gateway != self.gateway {
            return Err(format!(
                "the snapshot is for gateway '{}', this node serves '{}'",
                snapshot.gateway, self.gateway
            ));
        }
        let engine = Arc::clone(&self.engine);
        let previous = self.table.load_full();
        tokio::task::spawn_blocking(move || {
            let domain = Snapshot::try_from(snapshot).map_err(|e| e.to_string())?;
            Ok(RoutingTable::compile_with(
                &domain,
                &engine,
                previous.as_deref(),
            ))
        })
        .await
        .map_err(|e| format!("snapshot compilation failed: {e}"))?
    }

    fn publish(&self, table: RoutingTable, failures: Vec<ProxyFailure>, source: SnapshotSource) {
        let version = table.version;
        for f in &failures {
            warn!(
                version,
                proxy = %f.proxy_name,
                proxy_id = %f.proxy_id,
                proxy_version = f.version,
                served_version = ?f.served_version,
                error = %f.error.reason(),
                "cannot apply this proxy; the others of the snapshot apply"
            );
        }
        telemetry::proxy_failures(failures.len());
        self.table.store(Some(Arc::new(table)));
        telemetry::snapshot_applied(version);
        self.state.send_modify(|s| {
            s.applied_version = Some(version);
            s.source = Some(source);
            s.proxy_failures = failures;
        });
    }

    /// Serves the cached snapshot, if there is a usable one. A corrupt cache is logged and
    /// ignored.
    pub(crate) async fn boot_from_cache(&self) -> bool {
        let path = self.cache.snapshot_path();
        let cached = match self.cache.load_snapshot() {
            Ok(Some(s)) => s,
            Ok(None) => return false,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "ignoring the cached snapshot");
                return false;
            }
        };
        match self.compile(cached).await {
            Ok((table, failures)) => {
                let version = table.version;
                self.publish(table, failures, SnapshotSource::Cache);
                telemetry::snapshot_apply("cache");
                info!(version, path = %path.display(), "serving the cached snapshot");
                true
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "ignoring the cached snapshot");
                false
            }
        }
    }

    /// Applies one snapshot from the control plane and returns the ACK or NACK to send.
    pub(crate) async fn apply(&self, snapshot: pb::Snapshot) -> pb::Ack {
        let version = snapshot.version;
        if self.served_version() == Some(version) {
            debug!(version, "snapshot already served");
            telemetry::snapshot_apply("unchanged");
            return ack(version, None, &self.state.borrow().proxy_failures);
        }
        let (table, failures) = match self.compile(snapshot.clone()).await {
            Ok(t) => t,
            Err(e) => {
                warn!(version, error = %e, "rejected snapshot; keeping the served one");
                telemetry::snapshot_apply("rejected");
                self.state.send_modify(|s| s.last_error = Some(e.clone()));
                return ack(version, Some(e), &[]);
            }
        };
        let proxies = table.proxies().count();
        let failed = failures.len();
        let reply = ack(version, None, &failures);
        self.publish(table, failures, SnapshotSource::ControlPlane);
        telemetry::snapshot_apply(if failed == 0 {
            "applied"
        } else {
            "applied_partly"
        });
        info!(
            version,
            proxies,
            failed_proxies = failed,
            "applied snapshot"
        );
        let cache = self.cache.clone();
        let stored = tokio::task::spawn_blocking(move || cache.store_snapshot(&snapshot)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(version, error = %e, "cannot write the snapshot cache"),
            Err(e) => warn!(version, error = %e, "cannot write the snapshot cache"),
        }
        reply
    }
}

fn ack(version: u64, error: Option<String>, failures: &[ProxyFailure]) -> pb::Ack {
    pb::Ack {
        version,
        applied: error.is_none(),
        error: error.unwrap_or_default(),
        proxy_failures: failures
            .iter()
            .map(|f| pb::ProxyFailure {
                proxy_id: f.proxy_id.to_string(),
                proxy_name: f.proxy_name.clone(),
                version: f.version,
                error: f.error.reason(),
                served_version: f.served_version.unwrap_or(0),
            })
            .collect(),
    }
}

/// How this node introduces itself, and how it paces the stream. (No `Debug`: it holds the
/// registration token.)
#[derive(Clone)]
pub(crate) struct SyncSettings {
    pub endpoint: Endpoint,
    pub gateway: String,
    pub node_id: String,
    pub registration_token: String,
    pub address: String,
    pub heartbeat: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

/// Parses the control plane URL into a gRPC endpoint: `http://`, or `https://` verified
/// against `tls.ca` (else the system roots), presenting `tls.identity` when given. Every
/// certificate file is read and checked here, so a problem stops the node at start with
/// one line naming the file.
pub(crate) fn endpoint(
    url: &str,
    connect_timeout: Duration,
    tls: &ControlPlaneTls,
) -> Result<Endpoint, GatewayError> {
    let invalid = |reason: &str| GatewayError::ControlPlaneUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let secure = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(invalid("expected http://host:port or https://host:port"));
    };
    if !secure && (tls.ca.is_some() || tls.identity.is_some()) {
        return Err(invalid(
            "--control-plane-ca, --tls-cert and --tls-key need an https:// control plane URL",
        ));
    }
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| invalid(&e.to_string()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if secure {
        let mut config = ClientTlsConfig::new().timeout(switchyard_tls::HANDSHAKE_TIMEOUT);
        config = match &tls.ca {
            Some(ca) => {
                switchyard_tls::read_roots("--control-plane-ca", ca)?;
                let pem = switchyard_tls::read("--control-plane-ca", ca)?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            switchyard_tls::certified_key(("--tls-cert", cert), ("--tls-key", key))?;
            config = config.identity(Identity::from_pem(
                switchyard_tls::read("--tls-cert", cert)?,
                switchyard_tls::read("--tls-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| invalid(&format!("TLS: {e}")))?;
    }
    Ok(endpoint)
}

/// How long a control plane that accepted the connection may take to answer `Hello`.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest snapshot message a node accepts.
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// Runs the sync loop until `shutdown`.
pub(crate) async fn run(settings: SyncSettings, applier: Applier, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(settings.backoff_base, settings.backoff_cap);
    telemetry::control_plane_connected(false);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = session(&settings, &applier, &mut backoff, &shutdown) => outcome,
        };
        telemetry::control_plane_connected(false);
        applier.state.send_modify(|s| s.connected = false);
        let problem = match outcome {
            Ok(()) => return,
            Err(problem) => problem,
        };
        match &problem {
            SessionError::Refused(status) if status.code() == Code::Unauthenticated => error!(
                gateway = %settings.gateway,
                reason = status.message(),
                "the control plane refused this node's registration token; serving the last snapshot and retrying"
            ),
            SessionError::Refused(status) if status.code() == Code::NotFound => error!(
                gateway = %settings.gateway,
                reason = status.message(),
                "the control plane does not know this gateway; serving the last snapshot and retrying"
            ),
            other => {
                warn!(error = %other, "control plane stream lost; serving the last snapshot and retrying")
            }
        }
        applier
            .state
            .send_modify(|s| s.last_error = Some(problem.to_string()));
        let delay = backoff.next_delay();
        debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting to the control plane"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to the control plane: {0}")]
    Connect(String),
    #[error("the control plane ended the stream: {}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the control plane closed the stream")]
    Ended,
}

/// One stream, from connect to its end. `Ok` only on shutdown.
async fn session(
    settings: &SyncSettings,
    applier: &Applier,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = settings
        .endpoint
        .connect()
        .await
        .map_err(|e| SessionError::Connect(error_chain(&e)))?;
    // Snapshots of many proxies with many utterances can exceed tonic's 4 MiB default.
    let mut client =
        ConfigDistributionClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
    let (tx, rx) = mpsc::channel::<pb::NodeMessage>(8);
    let hello = pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            gateway: settings.gateway.clone(),
            node_id: settings.node_id.clone(),
            registration_token: settings.registration_token.clone(),
            current_version: applier.served_version().unwrap_or(0),
            address: settings.address.clone(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            has_encoder: Some(applier.engine.has_encoder()),
        })),
    };
    tx.send(hello).await.map_err(|_| SessionError::Ended)?;
    let mut inbound =
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.subscribe(ReceiverStream::new(rx)))
            .await
            .map_err(|_| SessionError::Connect("no answer to Hello in time".to_owned()))?
            .map_err(SessionError::Refused)?
            .into_inner();
    telemetry::control_plane_connected(true);
    applier.state.send_modify(|s| {
        s.connected = true;
        s.sessions += 1;
    });
    info!(control_plane = %settings.endpoint.uri(), "connected to the control plane");

    let start = tokio::time::Instant::now() + settings.heartbeat;
    let mut heartbeat = tokio::time::interval_at(start, settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                let beat = pb::NodeMessage {
                    kind: Some(pb::node_message::Kind::Heartbeat(pb::Heartbeat {
                        current_version: applier.served_version().unwrap_or(0),
                    })),
                };
                tx.send(beat).await.map_err(|_| SessionError::Ended)?;
            }
            message = inbound.message() => match message {
                Ok(Some(pb::ControlMessage { kind: Some(pb::control_message::Kind::Snapshot(snapshot)) })) => {
                    backoff.reset();
                    let ack = applier.apply(snapshot).await;
                    applier.state.send_modify(|s| if ack.applied { s.last_error = None });
                    let message = pb::NodeMessage { kind: Some(pb::node_message::Kind::Ack(ack)) };
                    tx.send(message).await.map_err(|_| SessionError::Ended)?;
                }
                // A message kind from a newer control plane: nothing to do with it.
                Ok(Some(_)) => debug!("ignoring an unknown control message"),
                Ok(None) => return Err(SessionError::Ended),
                Err(status) => return Err(SessionError::Refused(status)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{proxy, route, snapshot};
    use arc_swap::ArcSwapOption;
    use switchyard_model::Provider;

    fn applier(dir: &std::path::Path) -> (Applier, watch::Receiver<SyncState>) {
        let (tx, rx) = watch::channel(SyncState::default());
        let table: SharedTable = Arc::new(ArcSwapOption::empty());
        (
            Applier::new(
                "gw".into(),
                table,
                Cache::open(dir).unwrap(),
                tx,
                Arc::new(SemanticEngine::without_encoder(reqwest::Client::new())),
            ),
            rx,
        )
    }

    fn good(version: u64) -> pb::Snapshot {
        pb::Snapshot::from(&snapshot(
            version,
            vec![proxy(
                "p",
                "/p",
                vec![route("a", Provider::OpenAi, None)],
                None,
            )],
        ))
    }

    #[tokio::test]
    async fn applies_caches_acks_and_nacks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, state) = applier(dir.path());
        assert!(!a.boot_from_cache().await);

        let ack = a.apply(good(2)).await;
        assert_eq!((ack.version, ack.applied), (2, true));
        assert_eq!(a.served_version(), Some(2));
        assert_eq!(state.borrow().applied_version, Some(2));
        assert_eq!(state.borrow().source, Some(SnapshotSource::ControlPlane));

        // A proxy that does not compile: the snapshot applies, the proxy is reported and
        // its last good version (same id) keeps serving.
        let served_id = a
            .table
            .load()
            .as_ref()
            .unwrap()
            .proxies()
            .next()
            .unwrap()
            .id;
        let mut bad = good(3);
        bad.proxies[0].id = served_id.to_string();
        bad.proxies[0].version = 2;
        bad.proxies[0].routes[0].url = "nope".into();
        let ack = a.apply(bad).await;
        assert!(ack.applied, "{ack:?}");
        assert_eq!(ack.proxy_failures.len(), 1);
        let failure = &ack.proxy_failures[0];
        assert!(failure.error.contains("route 'a'"), "{}", failure.error);
        assert_eq!((failure.version, failure.served_version), (2, 1));
        assert_eq!(a.served_version(), Some(3));
        assert!(
            a.table
                .load()
                .as_ref()
                .unwrap()
                .lookup("/p/chat/completions")
                .is_some()
        );
        assert_eq!(state.borrow().proxy_failures.len(), 1);

        // A snapshot that does not convert (another gateway's) is NACKed whole.
        let mut other = good(4);
        other.gateway = "other".into();
        assert!(!a.apply(other).await.applied);
        assert_eq!(a.served_version(), Some(3));

        // Same version again: ACK without recompiling.
        assert!(a.apply(good(2)).await.applied);
        assert!(a.apply(good(2)).await.applied);

        // A new node on the same cache dir boots from it.
        let (b, state) = applier(dir.path());
        assert!(b.boot_from_cache().await);
        assert_eq!(b.served_version(), Some(2));
        assert_eq!(state.borrow().source, Some(SnapshotSource::Cache));
    }

    /// Fields a newer control plane may add, at field numbers this build does not know:
    /// a length-delimited one and a varint one.
    fn unknown_fields() -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let mut buf = Vec::new();
        encode_key(900, WireType::LengthDelimited, &mut buf);
        let payload = b"a field from the future";
        encode_varint(payload.len() as u64, &mut buf);
        buf.extend_from_slice(payload);
        encode_key(901, WireType::Varint, &mut buf);
        encode_varint(42, &mut buf);
        buf
    }

    /// `message` encoded, with unknown fields after its own.
    fn with_unknown<M: prost::Message>(message: &M) -> Vec<u8> {
        let mut bytes = message.encode_to_vec();
        bytes.extend(unknown_fields());
        bytes
    }

    /// Appends `child` as the length-delimited field `field` of an encoded message.
    fn push_child(buf: &mut Vec<u8>, field: u32, child: &[u8]) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        encode_key(field, WireType::LengthDelimited, buf);
        encode_varint(child.len() as u64, buf);
        buf.extend_from_slice(child);
    }

    /// A rolling upgrade: a node one version behind receives a snapshot with fields it does
    /// not know (in the snapshot, a proxy, a route, its auth) and a control message of a kind
    /// it does not know; it applies what it knows and ACKs.
    #[tokio::test]
    async fn a_snapshot_with_unknown_fields_applies_what_it_knows() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = applier(dir.path());
        let known = good(7);

        // Snapshot ← proxy ← route ← auth, each with unknown fields (Snapshot.proxies = 3,
        // Proxy.routes = 6, Route.auth = 6).
        let mut proxy = known.proxies[0].clone();
        let mut route = proxy.routes.remove(0);
        let auth = route.auth.take().unwrap();
        let mut route_bytes = with_unknown(&route);
        push_child(&mut route_bytes, 6, &with_unknown(&auth));
        let mut proxy_bytes = with_unknown(&proxy);
        push_child(&mut proxy_bytes, 6, &route_bytes);
        let mut snapshot = known.clone();
        snapshot.proxies.clear();
        let mut bytes = with_unknown(&snapshot);
        push_child(&mut bytes, 3, &proxy_bytes);

        let mut message = Vec::new();
        push_child(&mut message, 1, &bytes);
        let decoded = pb::ControlMessage::decode(message.as_slice()).unwrap();
        let Some(pb::control_message::Kind::Snapshot(received)) = decoded.kind else {
            panic!("no snapshot in {decoded:?}");
        };
        assert_eq!(
            received, known,
            "the known fields survive, the unknown are dropped"
        );
        let ack = a.apply(received).await;
        assert_eq!(
            (ack.version, ack.applied, ack.error.as_str()),
            (7, true, "")
        );
        let table = a.table.load_full().unwrap();
        assert_eq!(table.version, 7);

        // A control message of a kind from a newer control plane decodes to no kind (the
        // session ignores it) instead of failing the stream.
        let mut future = Vec::new();
        push_child(&mut future, 2, &with_unknown(&known));
        let decoded = pb::ControlMessage::decode(future.as_slice()).unwrap();
        assert!(decoded.kind.is_none());
    }

    #[tokio::test]
    async fn a_corrupt_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = applier(dir.path());
        std::fs::write(a.cache.snapshot_path(), b"\x08\x96garbage").unwrap();
        assert!(!a.boot_from_cache().await);
        assert_eq!(a.served_version(), None);
    }

    #[test]
    fn endpoints() {
        let plain = ControlPlaneTls::default();
        let second = Duration::from_secs(1);
        assert!(endpoint("http://127.0.0.1:50051", second, &plain).is_ok());
        assert!(endpoint("https://cp:50051", second, &plain).is_ok());
        let err = endpoint("127.0.0.1:50051", second, &plain)
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://"), "{err}");
        let with_ca = ControlPlaneTls {
            ca: Some("/nonexistent/ca.crt".into()),
            identity: None,
        };
        let err = endpoint("http://cp:50051", second, &with_ca)
            .unwrap_err()
            .to_string();
        assert!(err.contains("need an https://"), "{err}");
        let err = endpoint("https://cp:50051", second, &with_ca)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--control-plane-ca /nonexistent/ca.crt: cannot read"),
            "{err}"
        );
    }
}
