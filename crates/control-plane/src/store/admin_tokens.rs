//! Named admin tokens: a role (`admin`, `editor`, `viewer`), the gateways an editor may
//! write, and the token's SHA-256 (never the token). Revoked tokens keep their row.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{REDACTED, ValidationError};

use super::audit::{Audit, AuditAction, Change, json};
use super::{Store, StoreError, from_ms, is_unique_violation, ms};

/// An admin token as stored and listed: everything but the secret and its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminTokenRecord {
    pub name: String,
    pub role: String,
    /// The gateways an editor may write (empty for other roles).
    pub gateways: Vec<String>,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A new token as the store keeps it.
#[derive(Debug, Clone)]
pub struct NewAdminToken {
    pub name: String,
    pub role: String,
    pub gateways: Vec<String>,
    pub prefix: String,
    /// Hex SHA-256 of the whole token.
    pub hash: String,
}

/// A live token found by its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminTokenMatch {
    pub id: String,
    pub hash: String,
    pub record: AdminTokenRecord,
}

const COLUMNS: &str =
    "id, name, role, gateways, prefix, hash, created_at, created_by, last_used_at";

fn from_row(row: &AnyRow) -> Result<AdminTokenMatch, StoreError> {
    let name: String = row.try_get("name")?;
    let gateways: String = row.try_get("gateways")?;
    let gateways: Vec<String> = serde_json::from_str(&gateways)
        .map_err(|e| StoreError::Corrupt(format!("admin token {name}: {e}")))?;
    Ok(AdminTokenMatch {
        id: row.try_get("id")?,
        hash: row.try_get("hash")?,
        record: AdminTokenRecord {
            name,
            role: row.try_get("role")?,
            gateways,
            prefix: row.try_get("prefix")?,
            created_at: from_ms(row.try_get("created_at")?),
            created_by: row.try_get("created_by")?,
            last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(from_ms),
        },
    })
}

/// The token as an audit entry shows it: the secret as `***`.
fn audit_view(record: &AdminTokenRecord) -> Result<serde_json::Value, StoreError> {
    let mut value = json(record)?;
    value["token"] = serde_json::Value::from(REDACTED);
    if let Some(o) = value.as_object_mut() {
        o.remove("last_used_at");
    }
    Ok(value)
}

impl Store {
    /// Stores a new token; an editor's gateways must exist (422 naming `gateways[i]`), a live
    /// name must be free (409).
    pub async fn create_admin_token(
        &self,
        audit: &Audit,
        token: &NewAdminToken,
    ) -> Result<AdminTokenRecord, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        for (i, gateway) in token.gateways.iter().enumerate() {
            let sql = format!(
                "SELECT id FROM gateways WHERE name = $1{}",
                self.for_share()
            );
            if sqlx::query(AssertSqlSafe(sql))
                .bind(gateway)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                return Err(StoreError::Invalid(ValidationError::invalid(
                    format!("gateways[{i}]"),
                    format!("gateway '{gateway}' does not exist"),
                )));
            }
        }
        let now = from_ms(ms(Utc::now()));
        let gateways = serde_json::to_string(&token.gateways)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, gateways, prefix, hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&token.name)
        .bind(&token.role)
        .bind(gateways)
        .bind(&token.prefix)
        .bind(&token.hash)
        .bind(ms(now))
        .bind(&audit.actor)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "an admin token named '{}' already exists",
                    token.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let record = AdminTokenRecord {
            name: token.name.clone(),
            role: token.role.clone(),
            gateways: token.gateways.clone(),
            prefix: token.prefix.clone(),
            created_at: now,
            created_by: audit.actor.clone(),
            last_used_at: None,
        };
        self.record(
            &mut tx,
            audit,
            Change::create(format!("admin-token/{}", token.name), audit_view(&record)?),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Every live token, by name.
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM admin_tokens WHERE revoked_at IS NULL ORDER BY name");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| from_row(row).map(|m| m.record))
            .collect()
    }

    /// The live token whose hash is `hash`, if any.
    pub async fn find_admin_token(
        &self,
        hash: &str,
    ) -> Result<Option<AdminTokenMatch>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM admin_tokens WHERE hash = $1 AND revoked_at IS NULL");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Notes that a token was used at `now`, at most once per `every` (not an admin write:
    /// not audited).
    pub async fn touch_admin_token(
        &self,
        id: &str,
        now: DateTime<Utc>,
        every: chrono::Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE admin_tokens SET last_used_at = $1 \
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(ms(now))
        .bind(id)
        .bind(ms(now - every))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes the live token named `name` (404 when there is none).
    pub async fn revoke_admin_token(&self, audit: &Audit, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM admin_tokens WHERE name = $1 AND revoked_at IS NULL{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(StoreError::NotFound("admin token"));
        };
        let found = from_row(&row)?;
        sqlx::query("UPDATE admin_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(ms(Utc::now()))
            .bind(&found.id)
            .execute(&mut *tx)
            .await?;
        self.record(
            &mut tx,
            audit,
            Change {
                action: AuditAction::Revoke,
                resource: format!("admin-token/{name}"),
                before: Some(audit_view(&found.record)?),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
