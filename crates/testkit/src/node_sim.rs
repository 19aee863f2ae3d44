//! `NodeSimulator`: one process holding many gateway-node streams to a real control plane,
//! each behaving like a node on the wire -- `Hello`, then an `Ack` for every snapshot,
//! heartbeats -- without compiling anything. It measures the control plane's fan-out: how
//! long a change takes to be acknowledged by every node.
//!
//! Each simulated node has its own HTTP/2 connection, as real nodes do, so the control plane
//! holds one connection and one session per node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_distribution_client::ConfigDistributionClient;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// How to run the simulated nodes.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The control plane's gRPC URL (`http://…`).
    pub url: String,
    pub gateway: String,
    pub registration_token: String,
    pub nodes: usize,
    /// Node ids are `{prefix}-{index}`.
    pub prefix: String,
    pub heartbeat: Duration,
    /// How many nodes connect at once while starting.
    pub connect_concurrency: usize,
}

impl SimConfig {
    pub fn new(url: impl Into<String>, gateway: &str, token: &str, nodes: usize) -> SimConfig {
        SimConfig {
            url: url.into(),
            gateway: gateway.to_owned(),
            registration_token: token.to_owned(),
            nodes,
            prefix: "sim".to_owned(),
            heartbeat: Duration::from_secs(10),
            connect_concurrency: 64,
        }
    }
}

/// Why the simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("node {node}: {reason}")]
    Node { node: usize, reason: String },
    #[error("{missing} of {total} nodes had not acknowledged version {version} after {waited:?}")]
    Timeout {
        version: u64,
        missing: usize,
        total: usize,
        waited: Duration,
    },
}

struct Shared {
    /// The newest version each node acknowledged.
    acked: Vec<AtomicU64>,
    /// Nodes whose stream is open.
    connected: AtomicUsize,
    /// Snapshots received by all nodes, in total.
    received: AtomicU64,
    progress: Notify,
}

/// The running simulated nodes; dropping it closes every stream.
pub struct NodeSimulator {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl NodeSimulator {
    /// Connects every node and waits until each has acknowledged a first snapshot (or
    /// `timeout`).
    pub async fn start(config: SimConfig, timeout: Duration) -> Result<NodeSimulator, SimError> {
        let shared = Arc::new(Shared {
            acked: (0..config.nodes).map(|_| AtomicU64::new(0)).collect(),
            connected: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            progress: Notify::new(),
        });
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            config.connect_concurrency.max(1),
        ));
        for index in 0..config.nodes {
            let (config, shared, cancel, ready) = (
                config.clone(),
                shared.clone(),
                cancel.clone(),
                ready_tx.clone(),
            );
            let permits = permits.clone();
            tasks.spawn(async move {
                let permit = permits.acquire_owned().await;
                // A failure before the first snapshot is reported through `ready`; a stream
                // ending later shows in `connected()`.
                let _ended = run_node(index, &config, &shared, &cancel, move |r| {
                    drop(permit);
                    let _ = ready.send((index, r));
                })
                .await;
            });
        }
        drop(ready_tx);
        let sim = NodeSimulator {
            shared,
            cancel,
            tasks,
        };
        let deadline = Instant::now() + timeout;
        for _ in 0..config.nodes {
            match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
                Ok(Some((_, Ok(())))) => {}
                Ok(Some((node, Err(reason)))) => return Err(SimError::Node { node, reason }),
                Ok(None) => break,
                Err(_) => {
                    let missing = config.nodes - sim.connected();
                    return Err(SimError::Timeout {
                        version: 0,
                        missing,
                        total: config.nodes,
                        waited: timeout,
                    });
                }
            }
        }
        Ok(sim)
    }

    /// Nodes whose stream is open.
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Snapshots received by all nodes so far.
    pub fn snapshots_received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Nodes that have acknowledged `version` (or newer).
    pub fn acked(&self, version: u64) -> usize {
        self.shared
            .acked
            .iter()
            .filter(|v| v.load(Ordering::Relaxed) >= version)
            .count()
    }

    /// The newest version every node has acknowledged.
    pub fn min_acked(&self) -> u64 {
        self.shared
            .acked
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Waits until every node has acknowledged `version` (or newer); the time it took.
    pub async fn wait_all_acked(
        &self,
        version: u64,
        timeout: Duration,
    ) -> Result<Duration, SimError> {
        let started = Instant::now();
        loop {
            let notified = self.shared.progress.notified();
            let missing = self.shared.acked.len() - self.acked(version);
            if missing == 0 {
                return Ok(started.elapsed());
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                let missing = self.shared.acked.len() - self.acked(version);
                if missing == 0 {
                    return Ok(started.elapsed());
                }
                return Err(SimError::Timeout {
                    version,
                    missing,
                    total: self.shared.acked.len(),
                    waited: timeout,
                });
            }
        }
    }

    /// Closes every stream and waits for the tasks.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One node: connect, hello, then ACK every snapshot until cancelled or the stream ends.
async fn run_node(
    index: usize,
    config: &SimConfig,
    shared: &Shared,
    cancel: &CancellationToken,
    on_first: impl FnOnce(Result<(), String>),
) -> Result<(), String> {
    let mut on_first = Some(on_first);
    let mut report = |r: Result<(), String>| {
        if let Some(f) = on_first.take() {
            f(r);
        }
    };
    let result = async {
        let channel = Endpoint::from_shared(config.url.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client =
            ConfigDistributionClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::NodeMessage {
            kind: Some(pb::node_message::Kind::Hello(pb::Hello {
                gateway: config.gateway.clone(),
                node_id: format!("{}-{index}", config.prefix),
                registration_token: config.registration_token.clone(),
                address: format!("simulated:{index}"),
                software_version: "node-simulator".to_owned(),
                current_version: 0,
                has_encoder: None,
            })),
        };
        tx.send(hello)
            .await
            .map_err(|_| "stream closed".to_owned())?;
        let inbound = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("subscribe: {}", s.message()))?
            .into_inner();
        Ok::<_, String>((tx, inbound))
    }
    .await;
    let (tx, mut inbound) = match result {
        Ok(parts) => parts,
        Err(reason) => {
            report(Err(reason.clone()));
            return Err(reason);
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.tick().await;
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                let beat = pb::NodeMessage {
                    kind: Some(pb::node_message::Kind::Heartbeat(pb::Heartbeat {
                        current_version: shared.acked[index].load(Ordering::Relaxed),
                    })),
                };
                if tx.send(beat).await.is_err() {
                    break Err("stream closed".to_owned());
                }
            }
            message = inbound.message() => match message {
                Ok(Some(pb::ControlMessage { kind: Some(pb::control_message::Kind::Snapshot(snapshot)) })) => {
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    let ack = pb::NodeMessage {
                        kind: Some(pb::node_message::Kind::Ack(pb::Ack {
                            version: snapshot.version,
                            applied: true,
                            error: String::new(),
                            proxy_failures: Vec::new(),
                        })),
                    };
                    if tx.send(ack).await.is_err() {
                        break Err("stream closed".to_owned());
                    }
                    shared.acked[index].fetch_max(snapshot.version, Ordering::Relaxed);
                    shared.progress.notify_waiters();
                    report(Ok(()));
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err("the control plane ended the stream".to_owned()),
                Err(status) => break Err(format!("stream error: {}", status.message())),
            },
        }
    };
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    if let Err(reason) = &ended {
        report(Err(reason.clone()));
    }
    ended
}
