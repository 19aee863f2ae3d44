//! Change notification inside one control-plane replica, fed by local writes, by PostgreSQL
//! `LISTEN` (writes made through other replicas) and by a periodic version poll (anything a
//! dropped listener connection missed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{PG_CHANNEL, Store};

/// One watch per gateway; its value is a change counter (nodes re-read the snapshot version).
#[derive(Debug, Default)]
pub struct Hub {
    gateways: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    pub fn subscribe(&self, gateway: &str) -> watch::Receiver<u64> {
        let mut map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(gateway.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the streams of `gateway`'s nodes.
    pub fn notify(&self, gateway: &str) {
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(gateway) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn notify_all(&self) {
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        for tx in map.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Relays PostgreSQL notifications to the hub until cancelled, reconnecting on failure.
pub async fn listen_postgres(store: Arc<Store>, hub: Arc<Hub>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut listener = PgListener::connect(store.url()).await?;
            listener.listen(PG_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = cancel.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres listener cannot connect; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    // At most 250 ms between attempts: when the database comes back, the nodes of
                    // this replica must hear of changes made elsewhere within a second.
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(200);
        // Anything committed while we were not listening must not be missed.
        hub.notify_all();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => hub.notify(n.payload()),
                    Ok(None) => {
                        tracing::warn!("postgres listener connection lost; reconnecting");
                        hub.notify_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres listener failed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// Polls every gateway's config version and notifies those that changed: the safety net
/// behind notifications (and the only cross-process path on SQLite).
pub async fn poll_versions(
    store: Arc<Store>,
    hub: Arc<Hub>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.gateway_versions().await {
            Ok(versions) => {
                for (name, version) in versions {
                    if seen
                        .insert(name.clone(), version)
                        .is_some_and(|old| old != version)
                    {
                        hub.notify(&name);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "config version poll failed"),
        }
    }
}
