//! Gateway nodes' last known state, as their control-plane sessions report it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, from_ms, ms, to_i64, to_u64};

/// A gateway node's last known state.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub node_id: String,
    pub address: String,
    pub software_version: String,
    pub connected: bool,
    pub applied_version: Option<u64>,
    pub last_error: Option<String>,
    pub last_seen: DateTime<Utc>,
    /// Proxies of the applied snapshot the node could not compile.
    pub proxy_failures: Vec<ProxyFailure>,
    /// Whether the node has an in-process sentence encoder (`None`: it did not say).
    pub has_encoder: Option<bool>,
}

/// A proxy a node could not compile, as it reported it with its ACK.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyFailure {
    pub proxy_id: String,
    pub proxy: String,
    /// The proxy version that failed.
    pub version: u64,
    pub error: String,
    /// The version of the proxy the node still serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_version: Option<u64>,
}

/// What a node said, recorded by [`Store::record_node`].
#[derive(Debug, Clone, Copy)]
pub enum NodeEvent<'a> {
    Connected {
        address: &'a str,
        software_version: &'a str,
        has_encoder: Option<bool>,
    },
    Applied {
        version: u64,
        /// Proxies of that version the node could not compile (it serves the others).
        proxy_failures: &'a [ProxyFailure],
    },
    Rejected {
        version: u64,
        error: &'a str,
    },
    Heartbeat,
    Disconnected,
}

impl Store {
    pub async fn record_node(
        &self,
        gateway: &str,
        node_id: &str,
        event: NodeEvent<'_>,
    ) -> Result<(), StoreError> {
        // Node updates are writes too: on SQLite one sneaking in between another write
        // transaction's read and its write would fail that transaction (SQLITE_BUSY_SNAPSHOT).
        let _guard = self.write_guard().await;
        let now = ms(Utc::now());
        let gateway_id: String = match sqlx::query("SELECT id FROM gateways WHERE name = $1")
            .bind(gateway)
            .fetch_optional(&self.pool)
            .await?
        {
            Some(row) => row.try_get("id")?,
            None => return Err(StoreError::NotFound("gateway")),
        };
        let query = match event {
            NodeEvent::Connected {
                address,
                software_version,
                has_encoder,
            } => sqlx::query(
                "INSERT INTO nodes (gateway_id, node_id, address, software_version, connected, last_seen, has_encoder) \
                 VALUES ($1, $2, $3, $4, 1, $5, $6) \
                 ON CONFLICT (gateway_id, node_id) DO UPDATE SET address = $3, software_version = $4, connected = 1, last_seen = $5, has_encoder = $6",
            )
            .bind(gateway_id)
            .bind(node_id)
            .bind(address.to_owned())
            .bind(software_version.to_owned())
            .bind(now)
            .bind(has_encoder.map(i64::from)),
            NodeEvent::Applied {
                version,
                proxy_failures,
            } => sqlx::query(
                "UPDATE nodes SET applied_version = $1, last_error = NULL, last_seen = $2, proxy_failures = $3 WHERE gateway_id = $4 AND node_id = $5",
            )
            .bind(to_i64(version))
            .bind(now)
            .bind(if proxy_failures.is_empty() {
                None
            } else {
                serde_json::to_string(proxy_failures).ok()
            })
            .bind(gateway_id)
            .bind(node_id),
            NodeEvent::Rejected { version, error } => sqlx::query(
                "UPDATE nodes SET last_error = $1, last_seen = $2 WHERE gateway_id = $3 AND node_id = $4",
            )
            .bind(format!("version {version} rejected: {error}"))
            .bind(now)
            .bind(gateway_id)
            .bind(node_id),
            NodeEvent::Heartbeat => sqlx::query(
                "UPDATE nodes SET connected = 1, last_seen = $1 WHERE gateway_id = $2 AND node_id = $3",
            )
            .bind(now)
            .bind(gateway_id)
            .bind(node_id),
            NodeEvent::Disconnected => sqlx::query(
                "UPDATE nodes SET connected = 0, last_seen = $1 WHERE gateway_id = $2 AND node_id = $3",
            )
            .bind(now)
            .bind(gateway_id)
            .bind(node_id),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// A gateway's nodes. A node counts as connected only if its control-plane replica saw
    /// it within `stale_after` (so a replica that died does not leave nodes "connected").
    pub async fn list_nodes(
        &self,
        gateway: &str,
        stale_after: Duration,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.address, n.software_version, n.connected, n.applied_version, n.last_error, n.last_seen, n.proxy_failures, n.has_encoder \
             FROM nodes n JOIN gateways g ON g.id = n.gateway_id WHERE g.name = $1 ORDER BY n.node_id",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        let cutoff = ms(Utc::now()) - i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        rows.iter()
            .map(|r| {
                let last_seen: i64 = r.try_get("last_seen")?;
                let connected: i64 = r.try_get("connected")?;
                let applied: Option<i64> = r.try_get("applied_version")?;
                let failures: Option<String> = r.try_get("proxy_failures")?;
                let has_encoder: Option<i64> = r.try_get("has_encoder")?;
                Ok(NodeRecord {
                    node_id: r.try_get("node_id")?,
                    address: r.try_get("address")?,
                    software_version: r.try_get("software_version")?,
                    connected: connected != 0 && last_seen >= cutoff,
                    applied_version: applied.map(to_u64),
                    last_error: r.try_get("last_error")?,
                    last_seen: from_ms(last_seen),
                    // Lenient: a value this version cannot read shows as no failures.
                    proxy_failures: failures
                        .and_then(|f| serde_json::from_str(&f).ok())
                        .unwrap_or_default(),
                    has_encoder: has_encoder.map(|v| v != 0),
                })
            })
            .collect()
    }
}
