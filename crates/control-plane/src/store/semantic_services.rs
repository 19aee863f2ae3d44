//! Semantic services: named rows proxies reference. Updating or deleting one holds its row
//! `FOR UPDATE`; a proxy write naming one holds it `FOR SHARE` (see the module docs).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{ErrorCode, ProxySpec, SemanticService};

use super::audit::{Audit, Change, json};
use super::{
    Backend, Store, StoreError, check_version, from_ms, is_foreign_key_violation,
    is_unique_violation, ms, to_i64, to_u64,
};

/// A semantic service as stored (its key, if any, encrypted), with how many proxies name it.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticServiceRecord {
    pub service: SemanticService,
    pub version: u64,
    pub proxies: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn resource(name: &str) -> String {
    format!("semantic-service/{name}")
}

/// A service as its audit entries show it: the key as `***`.
fn audit_view(record: &SemanticServiceRecord) -> Result<serde_json::Value, StoreError> {
    let mut value = json(&record.service.clone().redacted())?;
    value["version"] = serde_json::Value::from(record.version);
    Ok(value)
}

impl Store {
    /// Within a proxy write: holds the row of the semantic service `spec` names (if any) for
    /// the rest of the transaction, refusing a name that does not exist.
    pub(super) async fn lock_named_service(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        spec: &ProxySpec,
    ) -> Result<(), StoreError> {
        let Some(name) = &spec.semantic_service else {
            return Ok(());
        };
        let sql = format!(
            "SELECT name FROM semantic_services WHERE name = $1{}",
            self.for_share()
        );
        match sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(StoreError::Rejected {
                code: ErrorCode::InvalidValue,
                field: "semantic_service",
                message: format!("semantic service '{name}' does not exist"),
            }),
        }
    }

    pub(super) const SERVICE_COLUMNS: &'static str = "s.name, s.url, s.model, s.api_key, s.version, s.created_at, s.updated_at, \
         (SELECT COUNT(*) FROM proxies p WHERE p.semantic_service = s.name) AS proxies";

    pub(super) fn service_from_row(row: &AnyRow) -> Result<SemanticServiceRecord, StoreError> {
        let api_key: Option<String> = row.try_get("api_key")?;
        Ok(SemanticServiceRecord {
            service: SemanticService {
                name: row.try_get("name")?,
                url: row.try_get("url")?,
                model: row.try_get("model")?,
                api_key: api_key.map(switchyard_model::Secret::new),
            },
            version: to_u64(row.try_get("version")?),
            proxies: to_u64(row.try_get("proxies")?),
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: from_ms(row.try_get("updated_at")?),
        })
    }

    /// Stores a new semantic service. Its key, if any, must already be encrypted.
    pub async fn create_semantic_service(
        &self,
        audit: &Audit,
        service: &SemanticService,
    ) -> Result<SemanticServiceRecord, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let now = from_ms(ms(Utc::now()));
        let res = sqlx::query(
            "INSERT INTO semantic_services (name, url, model, api_key, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6)",
        )
        .bind(&service.name)
        .bind(&service.url)
        .bind(&service.model)
        .bind(service.api_key.as_ref().map(|k| k.expose().to_owned()))
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "semantic service '{}' already exists",
                    service.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let record = SemanticServiceRecord {
            service: service.clone(),
            version: 1,
            proxies: 0,
            created_at: now,
            updated_at: now,
        };
        self.record(
            &mut tx,
            audit,
            Change::create(resource(&service.name), audit_view(&record)?),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn list_semantic_services(&self) -> Result<Vec<SemanticServiceRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM semantic_services s ORDER BY s.name",
            Self::SERVICE_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::service_from_row).collect()
    }

    pub async fn get_semantic_service(
        &self,
        name: &str,
    ) -> Result<Option<SemanticServiceRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM semantic_services s WHERE s.name = $1",
            Self::SERVICE_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::service_from_row).transpose()
    }

    /// Replaces a semantic service (its key, if any, already encrypted). `expected_version`,
    /// when given, must be the stored version. In the same transaction, every gateway with a
    /// proxy naming the service gets a new config version (so its nodes get the new
    /// definition); their names are returned with the new record.
    pub async fn update_semantic_service(
        &self,
        audit: &Audit,
        service: &SemanticService,
        expected_version: Option<u64>,
    ) -> Result<(SemanticServiceRecord, Vec<String>), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {} FROM semantic_services s WHERE s.name = $1{}",
            Self::SERVICE_COLUMNS,
            self.for_update()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&service.name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("semantic service"))?;
        let before = Self::service_from_row(&row)?;
        let current = before.version;
        check_version("semantic service", current, expected_version)?;
        sqlx::query(
            "UPDATE semantic_services SET url = $1, model = $2, api_key = $3, version = $4, updated_at = $5 \
             WHERE name = $6",
        )
        .bind(&service.url)
        .bind(&service.model)
        .bind(service.api_key.as_ref().map(|k| k.expose().to_owned()))
        .bind(to_i64(current + 1))
        .bind(ms(Utc::now()))
        .bind(&service.name)
        .execute(&mut *tx)
        .await?;
        // Proxy writes naming this service wait for its row (held above), so this sees
        // every proxy naming it.
        let ids = self
            .gateways_of_proxies(&mut tx, "p.semantic_service = $1", &service.name)
            .await?;
        let names = self.bump_gateways(&mut tx, ids).await?;
        let sql = format!(
            "SELECT {} FROM semantic_services s WHERE s.name = $1",
            Self::SERVICE_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&service.name)
            .fetch_one(&mut *tx)
            .await?;
        let record = Self::service_from_row(&row)?;
        self.record(
            &mut tx,
            audit,
            Change::update(
                resource(&service.name),
                audit_view(&before)?,
                audit_view(&record)?,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((record, names))
    }

    /// Deletes a semantic service no proxy names.
    pub async fn delete_semantic_service(
        &self,
        audit: &Audit,
        name: &str,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {} FROM semantic_services s WHERE s.name = $1{}",
            Self::SERVICE_COLUMNS,
            self.for_update()
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(StoreError::NotFound("semantic service"));
        };
        let before = Self::service_from_row(&row)?;
        let users = sqlx::query(
            "SELECT g.name AS gateway, p.name FROM proxies p JOIN gateways g ON g.id = p.gateway_id \
             WHERE p.semantic_service = $1 ORDER BY g.name, p.name",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let shown = users
                .iter()
                .take(5)
                .map(|r| {
                    Ok(format!(
                        "{}/{}",
                        r.try_get::<String, _>("gateway")?,
                        r.try_get::<String, _>("name")?
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
                .join(", ");
            let more = if users.len() > 5 { ", …" } else { "" };
            return Err(StoreError::Conflict(format!(
                "semantic service '{name}' is used by {} prox{} ({shown}{more}); point them elsewhere first",
                users.len(),
                if users.len() == 1 { "y" } else { "ies" }
            )));
        }
        let res = sqlx::query("DELETE FROM semantic_services WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await;
        match res {
            Ok(_) => {}
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "semantic service '{name}' is used by a proxy; point it elsewhere first"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.record(
            &mut tx,
            audit,
            Change::delete(resource(name), audit_view(&before)?),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rewrites every stored semantic service through `f` (used to re-encrypt keys under a
    /// new key); those for which `f` returns `None` are left alone. Versions are not bumped.
    pub async fn rewrite_semantic_services(
        &self,
        mut f: impl FnMut(SemanticService) -> Result<Option<SemanticService>, StoreError>,
    ) -> Result<usize, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {} FROM semantic_services s{}",
            Self::SERVICE_COLUMNS,
            match self.backend {
                Backend::Postgres => " FOR UPDATE OF s",
                Backend::Sqlite => "",
            }
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        let mut changed = 0;
        for row in &rows {
            let record = Self::service_from_row(row)?;
            let name = record.service.name.clone();
            if let Some(service) = f(record.service)? {
                sqlx::query(
                    "UPDATE semantic_services SET url = $1, model = $2, api_key = $3 WHERE name = $4",
                )
                .bind(&service.url)
                .bind(&service.model)
                .bind(service.api_key.as_ref().map(|k| k.expose().to_owned()))
                .bind(&name)
                .execute(&mut *tx)
                .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }
}
