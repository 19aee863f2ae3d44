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
}

/// What a node said, recorded by [`Store::record_node`].
#[derive(Debug, Clone, Copy)]
pub enum NodeEvent<'a> {
    Connected {
        address: &'a str,
        software_version: &'a str,
    },
    Applied {
        version: u64,
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
            NodeEvent::Connected { address, software_version } => sqlx::query(
                "INSERT INTO nodes (gateway_id, node_id, address, software_version, connected, last_seen) \
                 VALUES ($1, $2, $3, $4, 1, $5) \
                 ON CONFLICT (gateway_id, node_id) DO UPDATE SET address = $3, software_version = $4, connected = 1, last_seen = $5",
            )
            .bind(gateway_id)
            .bind(node_id)
            .bind(address.to_owned())
            .bind(software_version.to_owned())
            .bind(now),
            NodeEvent::Applied { version } => sqlx::query(
                "UPDATE nodes SET applied_version = $1, last_error = NULL, last_seen = $2 WHERE gateway_id = $3 AND node_id = $4",
            )
            .bind(to_i64(version))
            .bind(now)
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
            "SELECT n.node_id, n.address, n.software_version, n.connected, n.applied_version, n.last_error, n.last_seen \
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
                Ok(NodeRecord {
                    node_id: r.try_get("node_id")?,
                    address: r.try_get("address")?,
                    software_version: r.try_get("software_version")?,
                    connected: connected != 0 && last_seen >= cutoff,
                    applied_version: applied.map(to_u64),
                    last_error: r.try_get("last_error")?,
                    last_seen: from_ms(last_seen),
                })
            })
            .collect()
    }
}
