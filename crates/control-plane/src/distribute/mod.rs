//! Config distribution: the gRPC `ConfigDistribution` service that streams versioned
//! snapshots to gateway nodes and records what each node applied.

pub mod hub;
pub mod usage;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchyard_model::snapshot::Snapshot;
use switchyard_proto::encoded;
use switchyard_proto::encoded::config_distribution_server::ConfigDistribution;
use switchyard_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::crypto::Keyring;
use crate::store::{NodeEvent, ProxyFailure, Store};
use hub::Hub;

/// SHA-256 of a registration token, hex-encoded: what the store keeps.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds snapshots from the store (the gateway's proxies and the semantic services they
/// name), decrypting secrets, and caches the newest per gateway, encoded: the many nodes of
/// one gateway share one build and one encoding per version.
pub struct Snapshots {
    store: Arc<Store>,
    keyring: Arc<Keyring>,
    cache: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Cached>>>>,
}

/// One gateway's snapshot at one version, ready to send.
#[derive(Debug, Clone)]
pub struct Built {
    pub version: u64,
    /// The `ControlMessage` carrying it, encoded once (clones share the bytes).
    pub message: encoded::ControlMessage,
}

/// A gateway's cache entry: the newest build, and the hub's change count it was checked
/// against the store at (so the sessions woken by one change ask the store once).
#[derive(Debug, Default)]
struct Cached {
    built: Option<Built>,
    checked_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("gateway no longer exists")]
    GatewayGone,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot decrypt a secret of proxy '{proxy}': {source}")]
    Decrypt {
        proxy: String,
        source: crate::crypto::CryptoError,
    },
    #[error("cannot decrypt the key of semantic service '{name}': {source}")]
    DecryptService {
        name: String,
        source: crate::crypto::CryptoError,
    },
}

impl Snapshots {
    pub fn new(store: Arc<Store>, keyring: Arc<Keyring>) -> Self {
        Self {
            store,
            keyring,
            cache: Mutex::default(),
        }
    }

    /// The current snapshot of `gateway`, checked against the store.
    pub async fn current(&self, gateway: &str) -> Result<Built, SnapshotError> {
        self.current_as_of(gateway, None).await
    }

    /// The current snapshot of `gateway` as of the hub's change count `change`: the first
    /// caller for a count asks the store (and builds and encodes a new version once); the
    /// others, woken by the same change, share its answer. `None` always asks the store.
    pub async fn current_as_of(
        &self,
        gateway: &str,
        change: Option<u64>,
    ) -> Result<Built, SnapshotError> {
        let entry = Arc::clone(
            self.cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(gateway.to_owned())
                .or_default(),
        );
        let mut entry = entry.lock().await;
        if let (Some(change), Some(checked), Some(built)) = (change, entry.checked_at, &entry.built)
            && checked >= change
        {
            return Ok(built.clone());
        }
        let record = self
            .store
            .get_gateway(gateway)
            .await?
            .ok_or(SnapshotError::GatewayGone)?;
        if let Some(built) = &entry.built
            && built.version == record.config_version
        {
            let built = built.clone();
            entry.checked_at = change.max(entry.checked_at);
            return Ok(built);
        }
        let built = self.build(gateway).await?;
        entry.checked_at = change.max(entry.checked_at);
        entry.built = Some(built.clone());
        Ok(built)
    }

    /// Reads, decrypts and encodes `gateway`'s snapshot (in a `snapshot build` span).
    #[tracing::instrument(
        name = "snapshot build",
        skip(self),
        fields(version = tracing::field::Empty, proxies = tracing::field::Empty, bytes = tracing::field::Empty)
    )]
    async fn build(&self, gateway: &str) -> Result<Built, SnapshotError> {
        let source = self
            .store
            .snapshot_source(gateway)
            .await?
            .ok_or(SnapshotError::GatewayGone)?;
        let proxies = source
            .proxies
            .into_iter()
            .map(|mut p| {
                let name = p.spec.name.clone();
                p.spec = self.keyring.decrypt_proxy(p.spec).map_err(|source| {
                    SnapshotError::Decrypt {
                        proxy: name,
                        source,
                    }
                })?;
                Ok(p)
            })
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        let semantic_services = source
            .semantic_services
            .into_iter()
            .map(|service| {
                let name = service.name.clone();
                self.keyring
                    .decrypt_service(service)
                    .map_err(|source| SnapshotError::DecryptService { name, source })
            })
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        let snapshot = Snapshot {
            gateway: gateway.to_owned(),
            version: source.version,
            proxies,
            semantic_services,
            topics: source.topics,
            consumers: source.consumers,
            prices: source.prices,
            created_at: Utc::now(),
        };
        let message = encoded::ControlMessage::snapshot(&pb::Snapshot::from(&snapshot));
        let span = tracing::Span::current();
        // Signed: OpenTelemetry has no unsigned integers (a `u64` would be exported as text).
        span.record(
            "version",
            i64::try_from(snapshot.version).unwrap_or(i64::MAX),
        );
        span.record(
            "proxies",
            i64::try_from(snapshot.proxies.len()).unwrap_or(i64::MAX),
        );
        span.record(
            "bytes",
            i64::try_from(message.snapshot_len()).unwrap_or(i64::MAX),
        );
        metrics::counter!("switchyard_control_plane_snapshot_encodings_total").increment(1);
        metrics::histogram!("switchyard_control_plane_snapshot_bytes")
            .record(message.snapshot_len() as f64);
        let built = Built {
            version: snapshot.version,
            message,
        };
        Ok(built)
    }
}

/// The gRPC service.
pub struct Distributor {
    store: Arc<Store>,
    hub: Arc<Hub>,
    snapshots: Arc<Snapshots>,
    cancel: CancellationToken,
    hello_timeout: Duration,
}

impl Distributor {
    pub fn new(
        store: Arc<Store>,
        hub: Arc<Hub>,
        snapshots: Arc<Snapshots>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            snapshots,
            cancel,
            hello_timeout: Duration::from_secs(10),
        }
    }

    /// Checks a node's hello. Every field is validated before it is looked up or logged (a
    /// newline in a name must not forge a log line, nor megabytes of it fill the log), and
    /// an unknown gateway is answered exactly like a wrong token, so gateway names cannot
    /// be enumerated through this port.
    async fn authenticate(&self, hello: &pb::Hello) -> Result<(), Status> {
        check_hello(hello)?;
        check_token(&self.store, &hello.gateway, &hello.registration_token).await
    }
}

/// Checks a node's registration token for `gateway` (the hello's, and each usage batch's).
pub(crate) async fn check_token(store: &Store, gateway: &str, token: &str) -> Result<(), Status> {
    let refused = || Status::unauthenticated("unknown gateway or invalid registration token");
    let presented = hash_token(token);
    let gateway = store.get_gateway(gateway).await.map_err(|e| {
        tracing::error!(error = %e, "store unavailable while authenticating a node");
        Status::unavailable("the control plane cannot check the token now; retry")
    })?;
    // Compared in constant time against a real hash or a stand-in of the same length.
    let expected = gateway.map_or_else(|| hash_token(""), |g| g.token_hash);
    let matches = bool::from(presented.as_bytes().ct_eq(expected.as_bytes()));
    if !matches || token.is_empty() {
        return Err(refused());
    }
    Ok(())
}

/// A token of a node's identity: 1-`max` characters of letters, digits and `-._:@/+`.
pub(crate) fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:@/+[]".contains(&b))
}

/// Validates a hello's fields (the registration token excepted: only its hash is used).
fn check_hello(hello: &pb::Hello) -> Result<(), Status> {
    if switchyard_model::validate_gateway_name("gateway", &hello.gateway).is_err() {
        return Err(Status::invalid_argument(
            "gateway must be 1-63 characters of a-z, 0-9 and '-'",
        ));
    }
    if !is_token(&hello.node_id, 128) {
        return Err(Status::invalid_argument(
            "node_id must be 1-128 characters of letters, digits and -._:@/+",
        ));
    }
    if !hello.address.is_empty() && !is_token(&hello.address, 256) {
        return Err(Status::invalid_argument(
            "address must be at most 256 characters of letters, digits and -._:@/+[]",
        ));
    }
    if !hello.software_version.is_empty() && !is_token(&hello.software_version, 64) {
        return Err(Status::invalid_argument(
            "software_version must be at most 64 characters of letters, digits and -._:@/+",
        ));
    }
    if hello.registration_token.len() > 1024 {
        return Err(Status::invalid_argument(
            "registration_token is longer than 1024 characters",
        ));
    }
    Ok(())
}

/// A node's per-proxy failures as stored: bounded (at most 1000, errors of at most 2000
/// characters), whatever the node sent.
fn proxy_failures(reported: &[pb::ProxyFailure]) -> Vec<ProxyFailure> {
    reported
        .iter()
        .take(1000)
        .map(|f| ProxyFailure {
            proxy_id: f.proxy_id.chars().take(64).collect(),
            proxy: f.proxy_name.chars().take(128).collect(),
            version: f.version,
            error: f.error.chars().take(2000).collect(),
            served_version: (f.served_version > 0).then_some(f.served_version),
        })
        .collect()
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<encoded::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDistribution for Distributor {
    type SubscribeStream = ControlStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.hello_timeout, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))?;
        let hello = match first {
            Some(Ok(pb::NodeMessage {
                kind: Some(pb::node_message::Kind::Hello(h)),
            })) => h,
            Some(Ok(_)) => return Err(Status::invalid_argument("the first message must be hello")),
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("stream closed before hello")),
        };
        if let Err(status) = self.authenticate(&hello).await {
            // Only validated names reach the log; anything else is logged as refused input.
            match check_hello(&hello) {
                Ok(()) => {
                    tracing::warn!(gateway = %hello.gateway, node = %hello.node_id, reason = %status.message(), "node refused")
                }
                Err(_) => tracing::warn!(reason = %status.message(), "node refused: invalid hello"),
            }
            metrics::counter!("switchyard_control_plane_node_rejections_total").increment(1);
            return Err(status);
        }
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            recorder: spawn_recorder(
                self.store.clone(),
                hello.gateway.clone(),
                hello.node_id.clone(),
            ),
            snapshots: self.snapshots.clone(),
            changes: self.hub.subscribe(&hello.gateway),
            cancel: self.cancel.child_token(),
            gateway: hello.gateway.clone(),
            node_id: hello.node_id.clone(),
        };
        tokio::spawn(session.run(hello, inbound, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a session records of its node, owned so it can wait in the recorder's queue.
#[derive(Debug)]
enum Record {
    Connected {
        address: String,
        software_version: String,
        has_encoder: Option<bool>,
    },
    /// A version applied, with the proxies the node could not compile.
    Applied(u64, Vec<ProxyFailure>),
    Rejected(u64, String),
    Heartbeat,
    Disconnected,
}

/// How many node events may wait for the store before new ones are dropped (a heartbeat or
/// ACK that cannot be written is logged; the node's next one corrects the record).
const RECORD_QUEUE: usize = 256;

/// Writes one node's events to the store in order, in a task of its own: a slow or
/// unreachable database never holds up the node's stream, so snapshots keep flowing while
/// PostgreSQL is away. Ends when the session drops its sender (after `Disconnected`).
fn spawn_recorder(store: Arc<Store>, gateway: String, node_id: String) -> mpsc::Sender<Record> {
    let (tx, mut rx) = mpsc::channel::<Record>(RECORD_QUEUE);
    tokio::spawn(async move {
        while let Some(record) = rx.recv().await {
            let event = match &record {
                Record::Connected {
                    address,
                    software_version,
                    has_encoder,
                } => NodeEvent::Connected {
                    address,
                    software_version,
                    has_encoder: *has_encoder,
                },
                Record::Applied(version, failures) => NodeEvent::Applied {
                    version: *version,
                    proxy_failures: failures,
                },
                Record::Rejected(version, error) => NodeEvent::Rejected {
                    version: *version,
                    error,
                },
                Record::Heartbeat => NodeEvent::Heartbeat,
                Record::Disconnected => NodeEvent::Disconnected,
            };
            if let Err(e) = store.record_node(&gateway, &node_id, event).await {
                tracing::warn!(gateway = %gateway, node = %node_id, error = %e, "cannot record node state");
            }
        }
    });
    tx
}

/// One node's stream: sends snapshots, records ACKs/NACKs and heartbeats.
struct Session {
    recorder: mpsc::Sender<Record>,
    snapshots: Arc<Snapshots>,
    changes: tokio::sync::watch::Receiver<u64>,
    cancel: CancellationToken,
    gateway: String,
    node_id: String,
}

impl Session {
    fn record(&self, record: Record) {
        if let Err(e) = self.recorder.try_send(record) {
            tracing::warn!(gateway = %self.gateway, node = %self.node_id, record = ?e.into_inner(), "the store is behind: a node event was not recorded");
        }
    }

    async fn run(
        mut self,
        hello: pb::Hello,
        mut inbound: Streaming<pb::NodeMessage>,
        tx: mpsc::Sender<Result<encoded::ControlMessage, Status>>,
    ) {
        let gauge = metrics::gauge!("switchyard_control_plane_connected_nodes", "gateway" => self.gateway.clone());
        gauge.increment(1.0);
        tracing::info!(
            gateway = %self.gateway, node = %self.node_id, address = %hello.address,
            version = hello.current_version, "node connected"
        );
        self.record(Record::Connected {
            address: hello.address.clone(),
            software_version: hello.software_version.clone(),
            has_encoder: hello.has_encoder,
        });
        if hello.current_version > 0 {
            self.record(Record::Applied(hello.current_version, Vec::new()));
        }
        let mut sent: Option<u64> = None;
        self.changes.mark_changed();
        let reason = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break "control plane shutting down",
                _ = tx.closed() => break "stream closed",
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        break "hub closed";
                    }
                    let change = *self.changes.borrow_and_update();
                    // A new stream checks the store itself; streams woken by one change
                    // share one check.
                    let as_of = sent.is_some().then_some(change);
                    match self.snapshots.current_as_of(&self.gateway, as_of).await {
                        Ok(snapshot) if sent != Some(snapshot.version) => {
                            let version = snapshot.version;
                            if tx.send(Ok(snapshot.message)).await.is_err() {
                                break "stream closed";
                            }
                            metrics::counter!("switchyard_control_plane_snapshots_sent_total").increment(1);
                            tracing::debug!(gateway = %self.gateway, node = %self.node_id, version, "snapshot sent");
                            sent = Some(version);
                        }
                        Ok(_) => {}
                        Err(crate::distribute::SnapshotError::GatewayGone) => {
                            let _ = tx.send(Err(Status::not_found("gateway was deleted"))).await;
                            break "gateway deleted";
                        }
                        Err(e) => {
                            tracing::error!(gateway = %self.gateway, error = %e, "cannot build snapshot; node keeps its current one");
                        }
                    }
                }
                msg = inbound.next() => match msg {
                    Some(Ok(pb::NodeMessage { kind: Some(kind) })) => self.on_message(kind),
                    Some(Ok(_)) => {}
                    Some(Err(status)) => {
                        tracing::debug!(gateway = %self.gateway, node = %self.node_id, error = %status, "node stream error");
                        break "stream error";
                    }
                    None => break "node closed the stream",
                },
            }
        };
        gauge.decrement(1.0);
        tracing::info!(gateway = %self.gateway, node = %self.node_id, reason, "node disconnected");
        self.record(Record::Disconnected);
    }

    fn on_message(&self, kind: pb::node_message::Kind) {
        use pb::node_message::Kind;
        match kind {
            Kind::Ack(ack) if ack.applied => {
                metrics::counter!("switchyard_control_plane_node_acks_total", "result" => "ack")
                    .increment(1);
                let failures = proxy_failures(&ack.proxy_failures);
                if failures.is_empty() {
                    tracing::info!(gateway = %self.gateway, node = %self.node_id, version = ack.version, "node applied snapshot");
                } else {
                    tracing::warn!(
                        gateway = %self.gateway, node = %self.node_id, version = ack.version,
                        failed = ?failures.iter().map(|f| f.proxy.as_str()).collect::<Vec<_>>(),
                        "node applied snapshot except some proxies"
                    );
                }
                self.record(Record::Applied(ack.version, failures));
            }
            Kind::Ack(ack) => {
                metrics::counter!("switchyard_control_plane_node_acks_total", "result" => "nack")
                    .increment(1);
                tracing::warn!(
                    gateway = %self.gateway, node = %self.node_id, version = ack.version,
                    error = %ack.error, "node rejected snapshot"
                );
                self.record(Record::Rejected(ack.version, ack.error));
            }
            Kind::Heartbeat(_) => self.record(Record::Heartbeat),
            Kind::Hello(_) => {
                tracing::warn!(gateway = %self.gateway, node = %self.node_id, "unexpected second hello ignored");
            }
        }
    }
}
