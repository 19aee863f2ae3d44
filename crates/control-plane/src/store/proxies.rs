//! Proxies: each write holds the named semantic service's row, then its gateway's, and bumps
//! the gateway's version.

use std::str::FromStr;

use chrono::Utc;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{ErrorCode, Limits, Proxy, ProxySpec};
use uuid::Uuid;

use super::audit::{Audit, Change, json};
use super::{
    Backend, Store, StoreError, check_version, from_ms, is_foreign_key_violation, ms, to_i64,
    to_u64,
};

impl Store {
    /// Stores a new proxy. `spec`'s secrets must already be encrypted.
    pub async fn create_proxy(
        &self,
        audit: &Audit,
        spec: &ProxySpec,
        limits: &Limits,
    ) -> Result<Proxy, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        self.lock_named_service(&mut tx, spec).await?;
        self.lock_library_topics(&mut tx, spec).await?;
        let gateway_id = self.lock_gateway(&mut tx, &spec.gateway).await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM proxies WHERE gateway_id = $1")
            .bind(&gateway_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if to_u64(count) >= limits.proxies_per_gateway as u64 {
            return Err(StoreError::Rejected {
                code: ErrorCode::LimitExceeded,
                field: "gateway",
                message: format!(
                    "gateway '{}' already has {count} proxies; at most {} per gateway",
                    spec.gateway, limits.proxies_per_gateway
                ),
            });
        }
        let now = from_ms(ms(Utc::now()));
        let proxy = Proxy {
            id: Uuid::new_v4(),
            version: 1,
            spec: spec.clone(),
            created_at: now,
            updated_at: now,
        };
        let res = sqlx::query(
            "INSERT INTO proxies (id, gateway_id, name, base_path, version, spec, created_at, updated_at, semantic_service) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(proxy.id.to_string())
        .bind(&gateway_id)
        .bind(&spec.name)
        .bind(&spec.base_path)
        .bind(1i64)
        .bind(spec_json(spec)?)
        .bind(ms(now))
        .bind(ms(now))
        .bind(spec.semantic_service.clone())
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            return Err(map_proxy_unique(e, spec));
        }
        self.set_proxy_topics(&mut tx, &proxy.id.to_string(), spec)
            .await?;
        self.bump_version(&mut tx, &gateway_id, &spec.gateway)
            .await?;
        self.record(
            &mut tx,
            audit,
            Change::create(resource(&proxy), audit_view(&proxy)?),
        )
        .await?;
        tx.commit().await?;
        Ok(proxy)
    }

    /// Replaces a proxy. `expected_version`, when given, must be the stored version.
    pub async fn update_proxy(
        &self,
        audit: &Audit,
        id: Uuid,
        spec: &ProxySpec,
        expected_version: Option<u64>,
    ) -> Result<Proxy, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        self.lock_named_service(&mut tx, spec).await?;
        self.lock_library_topics(&mut tx, spec).await?;
        let gateway_id = self.lock_gateway(&mut tx, &spec.gateway).await?;
        let sql = format!(
            "SELECT {} FROM proxies p JOIN gateways g ON g.id = p.gateway_id WHERE p.id = $1",
            Self::PROXY_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("proxy"))?;
        let before = Self::proxy_from_row(&row)?;
        let current = before.version;
        let current_gateway = before.spec.gateway.clone();
        if current_gateway != spec.gateway {
            return Err(StoreError::Rejected {
                code: ErrorCode::RuleViolated,
                field: "gateway",
                message: format!(
                    "a proxy cannot move between gateways (it is on '{current_gateway}'); delete and recreate it"
                ),
            });
        }
        check_version("proxy", current, expected_version)?;
        let now = from_ms(ms(Utc::now()));
        let res = sqlx::query(
            "UPDATE proxies SET name = $1, base_path = $2, version = $3, spec = $4, updated_at = $5, semantic_service = $6 WHERE id = $7",
        )
        .bind(&spec.name)
        .bind(&spec.base_path)
        .bind(to_i64(current + 1))
        .bind(spec_json(spec)?)
        .bind(ms(now))
        .bind(spec.semantic_service.clone())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            return Err(map_proxy_unique(e, spec));
        }
        self.set_proxy_topics(&mut tx, &id.to_string(), spec)
            .await?;
        self.bump_version(&mut tx, &gateway_id, &spec.gateway)
            .await?;
        let proxy = Proxy {
            id,
            version: current + 1,
            spec: spec.clone(),
            created_at: before.created_at,
            updated_at: now,
        };
        self.record(
            &mut tx,
            audit,
            Change::update(resource(&proxy), audit_view(&before)?, audit_view(&proxy)?),
        )
        .await?;
        tx.commit().await?;
        Ok(proxy)
    }

    /// Deletes a proxy, returning what was deleted.
    pub async fn delete_proxy(&self, audit: &Audit, id: Uuid) -> Result<Proxy, StoreError> {
        let _guard = self.write_guard().await;
        let found = self
            .get_proxy(id)
            .await?
            .ok_or(StoreError::NotFound("proxy"))?;
        let mut tx = self.begin_write().await?;
        // A proxy never moves between gateways: holding this one's gateway holds the proxy.
        let gateway_id = self.lock_gateway(&mut tx, &found.spec.gateway).await?;
        let sql = format!(
            "SELECT {} FROM proxies p JOIN gateways g ON g.id = p.gateway_id WHERE p.id = $1",
            Self::PROXY_COLUMNS
        );
        let proxy = match sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => Self::proxy_from_row(&row)?,
            None => return Err(StoreError::NotFound("proxy")),
        };
        sqlx::query("DELETE FROM proxies WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        self.bump_version(&mut tx, &gateway_id, &proxy.spec.gateway)
            .await?;
        self.record(
            &mut tx,
            audit,
            Change::delete(resource(&proxy), audit_view(&proxy)?),
        )
        .await?;
        tx.commit().await?;
        Ok(proxy)
    }

    pub(super) const PROXY_COLUMNS: &'static str =
        "p.id, p.version, p.spec, p.created_at, p.updated_at, g.name AS gateway";

    pub(super) fn proxy_from_row(row: &AnyRow) -> Result<Proxy, StoreError> {
        let id: String = row.try_get("id")?;
        let spec: String = row.try_get("spec")?;
        let mut spec: ProxySpec = serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("proxy {id}: {e}")))?;
        spec.gateway = row.try_get("gateway")?;
        Ok(Proxy {
            id: Uuid::from_str(&id)
                .map_err(|e| StoreError::Corrupt(format!("proxy id {id}: {e}")))?,
            version: to_u64(row.try_get("version")?),
            spec,
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
        })
    }

    pub async fn get_proxy(&self, id: Uuid) -> Result<Option<Proxy>, StoreError> {
        let sql = format!(
            "SELECT {} FROM proxies p JOIN gateways g ON g.id = p.gateway_id WHERE p.id = $1",
            Self::PROXY_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::proxy_from_row).transpose()
    }

    pub async fn list_proxies(&self, gateway: Option<&str>) -> Result<Vec<Proxy>, StoreError> {
        let base = format!(
            "SELECT {} FROM proxies p JOIN gateways g ON g.id = p.gateway_id",
            Self::PROXY_COLUMNS
        );
        let rows = match gateway {
            Some(name) => {
                sqlx::query(AssertSqlSafe(format!(
                    "{base} WHERE g.name = $1 ORDER BY g.name, p.name"
                )))
                .bind(name)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!("{base} ORDER BY g.name, p.name")))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(Self::proxy_from_row).collect()
    }

    /// Rewrites every stored spec through `f` (used to re-encrypt secrets under a new key).
    /// Specs for which `f` returns `None` are left alone. Versions are not bumped: what the
    /// proxies mean does not change.
    pub async fn rewrite_specs(
        &self,
        mut f: impl FnMut(ProxySpec) -> Result<Option<ProxySpec>, StoreError>,
    ) -> Result<usize, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {} FROM proxies p JOIN gateways g ON g.id = p.gateway_id{}",
            Self::PROXY_COLUMNS,
            match self.backend {
                Backend::Postgres => " FOR UPDATE OF p",
                Backend::Sqlite => "",
            }
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        let mut changed = 0;
        for row in &rows {
            let proxy = Self::proxy_from_row(row)?;
            if let Some(spec) = f(proxy.spec)? {
                sqlx::query("UPDATE proxies SET spec = $1 WHERE id = $2")
                    .bind(spec_json(&spec)?)
                    .bind(proxy.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }
}

fn resource(proxy: &Proxy) -> String {
    format!("proxy/{}", proxy.id)
}

/// A proxy as its audit entries show it: every secret as `***`.
fn audit_view(proxy: &Proxy) -> Result<serde_json::Value, StoreError> {
    json(&Proxy {
        spec: proxy.spec.clone().redacted(),
        ..proxy.clone()
    })
}

fn spec_json(spec: &ProxySpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn map_proxy_unique(e: sqlx::Error, spec: &ProxySpec) -> StoreError {
    // Not reached while proxy writes hold the named service's row; the schema's last word.
    if is_foreign_key_violation(&e) {
        return StoreError::Rejected {
            code: ErrorCode::InvalidValue,
            field: "semantic_service",
            message: format!(
                "semantic service '{}' does not exist",
                spec.semantic_service.as_deref().unwrap_or_default()
            ),
        };
    }
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        let what = format!("{} {}", db.constraint().unwrap_or_default(), db.message());
        return if what.contains("base_path") {
            StoreError::Conflict(format!(
                "base path '{}' is already taken on gateway '{}'",
                spec.base_path, spec.gateway
            ))
        } else {
            StoreError::Conflict(format!(
                "a proxy named '{}' already exists on gateway '{}'",
                spec.name, spec.gateway
            ))
        };
    }
    StoreError::Db(e)
}
