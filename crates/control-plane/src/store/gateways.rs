//! Gateways: the named deployment targets proxies belong to, their registration tokens,
//! and the row lock and version bump every write to a gateway's configuration goes through.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{ErrorCode, REDACTED};
use uuid::Uuid;

use super::audit::{Audit, AuditAction, Change};
use super::{Backend, PG_CHANNEL, Store, StoreError, from_ms, is_unique_violation, ms, to_u64};

/// A gateway as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRecord {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub config_version: u64,
    pub created_at: DateTime<Utc>,
    pub proxies: u64,
}

/// A gateway as its audit entries show it (the registration token as `***`).
fn audit_view(g: &GatewayRecord) -> serde_json::Value {
    serde_json::json!({
        "id": g.id,
        "name": g.name,
        "config_version": g.config_version,
        "created_at": g.created_at,
        "registration_token": REDACTED,
    })
}

impl Store {
    pub async fn create_gateway(
        &self,
        audit: &Audit,
        name: &str,
        token_hash: &str,
    ) -> Result<GatewayRecord, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let now = Utc::now();
        let id = Uuid::new_v4().to_string();
        let res = sqlx::query(
            "INSERT INTO gateways (id, name, token_hash, config_version, created_at) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(token_hash)
        .bind(ms(now))
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "gateway '{name}' already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let record = GatewayRecord {
            id,
            name: name.to_owned(),
            token_hash: token_hash.to_owned(),
            config_version: 0,
            created_at: from_ms(ms(now)),
            proxies: 0,
        };
        self.record(
            &mut tx,
            audit,
            Change::create(format!("gateway/{name}"), audit_view(&record)),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    const GATEWAY_COLUMNS: &'static str = "g.id, g.name, g.token_hash, g.config_version, g.created_at, \
         (SELECT COUNT(*) FROM proxies p WHERE p.gateway_id = g.id) AS proxies";

    fn gateway_from_row(row: &AnyRow) -> Result<GatewayRecord, StoreError> {
        Ok(GatewayRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            token_hash: row.try_get("token_hash")?,
            config_version: to_u64(row.try_get("config_version")?),
            created_at: from_ms(row.try_get("created_at")?),
            proxies: to_u64(row.try_get("proxies")?),
        })
    }

    pub async fn list_gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM gateways g ORDER BY g.name",
            Self::GATEWAY_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::gateway_from_row).collect()
    }

    pub async fn get_gateway(&self, name: &str) -> Result<Option<GatewayRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM gateways g WHERE g.name = $1",
            Self::GATEWAY_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::gateway_from_row).transpose()
    }

    /// Replaces a gateway's registration token (audited as `rotate`).
    pub async fn set_gateway_token(
        &self,
        audit: &Audit,
        name: &str,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("UPDATE gateways SET token_hash = $1 WHERE name = $2")
            .bind(token_hash)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("gateway"));
        }
        let secret = serde_json::json!({ "registration_token": REDACTED });
        self.record(
            &mut tx,
            audit,
            Change {
                action: AuditAction::Rotate,
                resource: format!("gateway/{name}"),
                before: Some(secret.clone()),
                after: Some(secret),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a gateway with no proxies (its node records go with it).
    pub async fn delete_gateway(&self, audit: &Audit, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {} FROM gateways g WHERE g.name = $1{}",
            Self::GATEWAY_COLUMNS,
            self.for_update()
        );
        let before = match sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => Self::gateway_from_row(&row)?,
            None => return Err(StoreError::NotFound("gateway")),
        };
        let id = before.id.clone();
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM proxies WHERE gateway_id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count > 0 {
            return Err(StoreError::Conflict(format!(
                "gateway '{name}' still has {count} prox{} deployed; delete them first",
                if count == 1 { "y" } else { "ies" }
            )));
        }
        sqlx::query("DELETE FROM nodes WHERE gateway_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM gateways WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        self.record(
            &mut tx,
            audit,
            Change::delete(format!("gateway/{name}"), audit_view(&before)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Locks the gateway's row for the rest of the transaction and returns its id.
    pub(super) async fn lock_gateway(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
    ) -> Result<String, StoreError> {
        let sql = format!(
            "SELECT id FROM gateways WHERE name = $1{}",
            self.for_update()
        );
        match sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        {
            Some(row) => Ok(row.try_get("id")?),
            None => Err(StoreError::Rejected {
                code: ErrorCode::InvalidValue,
                field: "gateway",
                message: format!("gateway '{name}' does not exist"),
            }),
        }
    }

    /// Bumps the gateway's config version; on PostgreSQL also queues a notification that is
    /// delivered to every replica when (and only if) the transaction commits.
    pub(super) async fn bump_version(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        gateway_id: &str,
        gateway_name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE gateways SET config_version = config_version + 1 WHERE id = $1")
            .bind(gateway_id)
            .execute(&mut **tx)
            .await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(PG_CHANNEL)
                .bind(gateway_name)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Bumps the config version of each gateway in `ids` (a write that changes what several
    /// gateways serve: a topic, a semantic service, a consumer, a price): locks their rows in
    /// id order, like every multi-gateway write, so two such writes cannot deadlock, and
    /// returns the names of those that still exist, for the caller to notify its hub.
    ///
    /// Callers gather `ids` after locking the row of what they change, so every proxy that
    /// refers to it is seen.
    pub(super) async fn bump_gateways(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        ids: impl IntoIterator<Item = String>,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = format!(
            "SELECT name FROM gateways WHERE id = $1{}",
            self.for_update()
        );
        let mut names = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(row) = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(&id)
                .fetch_optional(&mut **tx)
                .await?
            else {
                continue;
            };
            let name: String = row.try_get("name")?;
            self.bump_version(tx, &id, &name).await?;
            names.push(name);
        }
        Ok(names)
    }

    /// The ids of the gateways whose proxies match `where_sql` (a condition on `p`, the
    /// proxies table, with at most one parameter, `$1`), for `bump_gateways`.
    pub(super) async fn gateways_of_proxies(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        where_sql: &'static str,
        param: &str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!("SELECT DISTINCT p.gateway_id FROM proxies p WHERE {where_sql}");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(param)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("gateway_id")?)).collect()
    }

    /// The ids of every gateway (a change every node needs, such as a price).
    pub(super) async fn all_gateway_ids(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM gateways")
            .fetch_all(&mut **tx)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }
}
