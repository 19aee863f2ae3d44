//! `FaultProxy`: a TCP proxy on 127.0.0.1 that a test puts between a node and its control
//! plane(s) to break the link on purpose: `cut` (every open connection closed at once),
//! `delay` (each chunk held back), `black_hole` (bytes stop flowing both ways but stay
//! queued, as with packets dropped and retransmitted; new connections hang the same way),
//! then `heal`. Several targets act like a Service in front of replicas: a new connection
//! goes to the first target that accepts it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the link does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Delay(Duration),
    BlackHole,
}

struct Shared {
    fault: watch::Sender<Fault>,
    /// Cancelled by `cut`: every connection opened before ends.
    generation: Mutex<CancellationToken>,
}

/// A running fault proxy; dropping it stops accepting and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    pub async fn start(targets: Vec<SocketAddr>) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fault: watch::channel(Fault::None).0,
            generation: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        let (accepting, stopped) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let _ = client.set_nodelay(true);
                let cut = accepting
                    .generation
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let fault = accepting.fault.subscribe();
                let targets = targets.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    // A black-holed link does not even complete new connections' data path.
                    let mut gate = fault.clone();
                    if wait_passable(&mut gate, &cut, &stopped).await.is_err() {
                        return;
                    }
                    let mut upstream = None;
                    for target in &targets {
                        if let Ok(s) = TcpStream::connect(target).await {
                            upstream = Some(s);
                            break;
                        }
                    }
                    let Some(upstream) = upstream else { return };
                    let _ = upstream.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    let a = pump(cr, uw, fault.clone(), cut.clone(), stopped.clone());
                    let b = pump(ur, cw, fault, cut, stopped);
                    // Either direction ending ends the connection.
                    tokio::select! { _ = a => {}, _ = b => {} }
                });
            }
        });
        Ok(FaultProxy { addr, shared, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, for a node's `--control-plane`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    pub fn black_hole(&self) {
        self.set(Fault::BlackHole);
    }

    pub fn delay(&self, by: Duration) {
        self.set(Fault::Delay(by));
    }

    /// Back to a clean link; queued bytes flow again.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    /// Closes every open connection at once (new ones are accepted as usual).
    pub fn cut(&self) {
        let mut generation = self
            .shared
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generation.cancel();
        *generation = CancellationToken::new();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

/// Waits while the link is black-holed; `Err` when the connection must end.
async fn wait_passable(
    fault: &mut watch::Receiver<Fault>,
    cut: &CancellationToken,
    stopped: &CancellationToken,
) -> Result<Option<Duration>, ()> {
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::None => return Ok(None),
            Fault::Delay(d) => return Ok(Some(d)),
            Fault::BlackHole => {
                tokio::select! {
                    _ = cut.cancelled() => return Err(()),
                    _ = stopped.cancelled() => return Err(()),
                    changed = fault.changed() => if changed.is_err() { return Err(()) },
                }
            }
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    cut: CancellationToken,
    stopped: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return,
            _ = stopped.cancelled() => return,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        match wait_passable(&mut fault, &cut, &stopped).await {
            Err(()) => return,
            Ok(Some(delay)) => tokio::time::sleep(delay).await,
            Ok(None) => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
