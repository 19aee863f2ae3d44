//! `FakeControlPlane`: a real tonic `ConfigDistribution` server on 127.0.0.1 that a test
//! drives. It sends the current snapshot after a node's `Hello` and every pushed snapshot to
//! every connected node, records what nodes send (Hellos, ACKs, NACKs, heartbeats), can refuse
//! tokens or gateways like the real one, and can be stopped and started again on its address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::config_distribution_server::{
    ConfigDistribution, ConfigDistributionServer,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Something a node did on its stream.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    Hello(pb::Hello),
    Ack(pb::Ack),
    Heartbeat(pb::Heartbeat),
    /// The node's stream ended.
    Disconnected,
}

type Outbound = mpsc::Sender<Result<pb::ControlMessage, Status>>;

#[derive(Default)]
struct State {
    snapshot: Option<pb::Snapshot>,
    streams: Vec<Outbound>,
    /// Tokens accepted; `None` accepts any.
    token: Option<String>,
    /// The gateway this control plane knows; `None` knows every gateway.
    gateway: Option<String>,
    events: Vec<NodeEvent>,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    stop: CancellationToken,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, event: NodeEvent) {
        self.state().events.push(event);
        self.changed.notify_waiters();
    }
}

/// A running fake control plane.
pub struct FakeControlPlane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl FakeControlPlane {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<FakeControlPlane> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Starts on `addr` (e.g. the address of a stopped one, to restart it).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeControlPlane> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            stop: CancellationToken::new(),
        });
        let service = ConfigDistributionServer::new(Service {
            shared: Arc::clone(&shared),
        });
        let stop = shared.stop.clone();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await;
        });
        Ok(FakeControlPlane {
            addr,
            shared,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a gateway node is configured with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Only this registration token is accepted (`Unauthenticated` otherwise).
    pub fn require_token(&self, token: impl Into<String>) {
        self.shared.state().token = Some(token.into());
    }

    /// Only this gateway is known (`NotFound` otherwise).
    pub fn only_gateway(&self, gateway: impl Into<String>) {
        self.shared.state().gateway = Some(gateway.into());
    }

    /// Makes `snapshot` the current one and sends it to every connected node.
    pub async fn push(&self, snapshot: pb::Snapshot) {
        let streams = {
            let mut state = self.shared.state();
            state.snapshot = Some(snapshot.clone());
            state.streams.retain(|s| !s.is_closed());
            state.streams.clone()
        };
        for stream in streams {
            let message = pb::ControlMessage {
                kind: Some(pb::control_message::Kind::Snapshot(snapshot.clone())),
            };
            let _ = stream.send(Ok(message)).await;
        }
    }

    /// Nodes with an open stream.
    pub fn connected(&self) -> usize {
        let mut state = self.shared.state();
        state.streams.retain(|s| !s.is_closed());
        state.streams.len()
    }

    pub fn events(&self) -> Vec<NodeEvent> {
        self.shared.state().events.clone()
    }

    pub fn hellos(&self) -> Vec<pb::Hello> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                NodeEvent::Hello(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    pub fn acks(&self) -> Vec<pb::Ack> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                NodeEvent::Ack(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Waits until an event matching `pred` was recorded (at any time); returns it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.events().into_iter().find(|e| pred(e));
            }
        }
    }

    /// Waits for the ACK or NACK of `version`.
    pub async fn wait_for_ack(&self, version: u64, timeout: Duration) -> Option<pb::Ack> {
        match self
            .wait_for(
                timeout,
                |e| matches!(e, NodeEvent::Ack(a) if a.version == version),
            )
            .await
        {
            Some(NodeEvent::Ack(a)) => Some(a),
            _ => None,
        }
    }

    /// Waits until `n` events match `pred`.
    pub async fn wait_for_count(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&NodeEvent) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if self.events().iter().filter(|e| pred(e)).count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.events().iter().filter(|e| pred(e)).count() >= n;
            }
        }
    }

    /// Stops serving: every open stream ends with `Unavailable`, the port is released.
    /// Returns the address, to start again on it.
    pub async fn stop(mut self) -> SocketAddr {
        self.shutdown().await;
        self.addr
    }

    async fn shutdown(&mut self) {
        let streams = std::mem::take(&mut self.shared.state().streams);
        for stream in streams {
            let _ = stream.try_send(Err(Status::unavailable("control plane shutting down")));
        }
        self.shared.stop.cancel();
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl ConfigDistribution for Service {
    type SubscribeStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::NodeMessage {
                kind: Some(pb::node_message::Kind::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        self.shared.record(NodeEvent::Hello(hello.clone()));
        let (tx, rx) = mpsc::channel(16);
        {
            let mut state = self.shared.state();
            if state
                .token
                .as_ref()
                .is_some_and(|t| *t != hello.registration_token)
            {
                return Err(Status::unauthenticated("invalid registration token"));
            }
            if state.gateway.as_ref().is_some_and(|g| *g != hello.gateway) {
                return Err(Status::not_found(format!(
                    "gateway '{}' does not exist",
                    hello.gateway
                )));
            }
            if let Some(snapshot) = &state.snapshot {
                let message = pb::ControlMessage {
                    kind: Some(pb::control_message::Kind::Snapshot(snapshot.clone())),
                };
                // A fresh channel with room: cannot fail.
                let _ = tx.try_send(Ok(message));
            }
            state.streams.push(tx.clone());
        }
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shared.stop.cancelled() => break,
                    _ = tx.closed() => break,
                    m = inbound.message() => m,
                };
                match message {
                    Ok(Some(pb::NodeMessage { kind: Some(kind) })) => shared.record(match kind {
                        pb::node_message::Kind::Hello(h) => NodeEvent::Hello(h),
                        pb::node_message::Kind::Ack(a) => NodeEvent::Ack(a),
                        pb::node_message::Kind::Heartbeat(h) => NodeEvent::Heartbeat(h),
                    }),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            shared.record(NodeEvent::Disconnected);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
