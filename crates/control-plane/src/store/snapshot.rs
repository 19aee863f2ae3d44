//! What the distribution side reads: a gateway's consistent snapshot source and every
//! gateway's current version.

use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{LibraryTopic, Proxy, SemanticService};

use super::{Backend, Store, StoreError, to_u64};

/// What a gateway's snapshot is built from, read consistently.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSource {
    pub version: u64,
    /// Ordered by base path.
    pub proxies: Vec<Proxy>,
    /// The semantic services the proxies name, each once, ordered by name (keys encrypted).
    pub semantic_services: Vec<SemanticService>,
    /// The library topics the proxies name, each once, ordered by name.
    pub topics: Vec<LibraryTopic>,
    /// The consumers allowed on at least one of the proxies, with their live keys, by name.
    pub consumers: Vec<switchyard_model::NodeConsumer>,
    /// The price table, by model.
    pub prices: Vec<switchyard_model::Price>,
}

impl Store {
    /// The gateway's config version, all its proxies, the semantic services and library
    /// topics they name, the consumers allowed on them (with their live keys' hashes) and the
    /// price table, read consistently.
    pub async fn snapshot_source(
        &self,
        gateway: &str,
    ) -> Result<Option<SnapshotSource>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let Some(row) = sqlx::query("SELECT config_version FROM gateways WHERE name = $1")
            .bind(gateway)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let version = to_u64(row.try_get("config_version")?);
        let sql = format!(
            "SELECT {} FROM proxies p JOIN gateways g ON g.id = p.gateway_id WHERE g.name = $1 ORDER BY p.base_path",
            Self::PROXY_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(gateway)
            .fetch_all(&mut *tx)
            .await?;
        let proxies = rows
            .iter()
            .map(Self::proxy_from_row)
            .collect::<Result<_, _>>()?;
        let sql = format!(
            "SELECT {} FROM semantic_services s WHERE s.name IN \
             (SELECT p.semantic_service FROM proxies p JOIN gateways g ON g.id = p.gateway_id WHERE g.name = $1) \
             ORDER BY s.name",
            Self::SERVICE_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(gateway)
            .fetch_all(&mut *tx)
            .await?;
        let semantic_services = rows
            .iter()
            .map(|r| Self::service_from_row(r).map(|record| record.service))
            .collect::<Result<_, _>>()?;
        let topics = self.gateway_topics(&mut tx, gateway).await?;
        let consumers = self
            .gateway_consumers(&mut tx, gateway, chrono::Utc::now())
            .await?;
        let prices = self.all_prices(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(SnapshotSource {
            version,
            proxies,
            semantic_services,
            topics,
            consumers,
            prices,
        }))
    }

    /// The current config version of every gateway (for the periodic resync).
    pub async fn gateway_versions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT name, config_version FROM gateways")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, to_u64(r.try_get("config_version")?))))
            .collect()
    }
}
