//! The prompt topic library: named topics that proxies reference from routes and deny lists.
//!
//! `proxy_topics` records which proxy names which topic (a foreign key on both sides), kept in
//! step with the proxy's spec by every proxy write. Locks follow the store's order: a proxy
//! write holds each topic it names `FOR SHARE` (after the semantic service, before the
//! gateway); updating or deleting a topic holds its row `FOR UPDATE`, then the gateways of
//! the proxies naming it, in id order. So a delete cannot race a proxy write into a dangling
//! reference, and an update bumps the version of every gateway that serves the topic.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{ErrorCode, LibraryTopic, Limits, ProxySpec, ValidationError};

use super::audit::{Audit, Change, json};
use super::{
    Store, StoreError, check_version, from_ms, is_foreign_key_violation, is_unique_violation, ms,
    to_i64, to_u64,
};

/// A library topic as stored, with how many proxies name it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRecord {
    pub topic: LibraryTopic,
    pub version: u64,
    pub proxies: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A library topic without its utterances (for listings).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSummary {
    pub name: String,
    pub description: String,
    pub utterance_count: u64,
    pub version: u64,
    pub proxies: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SUMMARY_COLUMNS: &str = "t.name, t.description, t.utterance_count, t.version, t.created_at, t.updated_at, \
     (SELECT COUNT(*) FROM proxy_topics pt WHERE pt.topic = t.name) AS proxies";

fn summary_from_row(row: &AnyRow) -> Result<TopicSummary, StoreError> {
    Ok(TopicSummary {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        utterance_count: to_u64(row.try_get("utterance_count")?),
        version: to_u64(row.try_get("version")?),
        proxies: to_u64(row.try_get("proxies")?),
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

fn record_from_row(row: &AnyRow) -> Result<TopicRecord, StoreError> {
    let summary = summary_from_row(row)?;
    let utterances: String = row.try_get("utterances")?;
    let utterances: Vec<String> = serde_json::from_str(&utterances)
        .map_err(|e| StoreError::Corrupt(format!("topic {}: {e}", summary.name)))?;
    Ok(TopicRecord {
        topic: LibraryTopic {
            name: summary.name,
            description: summary.description,
            utterances,
        },
        version: summary.version,
        proxies: summary.proxies,
        created_at: summary.created_at,
        updated_at: summary.updated_at,
    })
}

fn utterances_json(topic: &LibraryTopic) -> Result<String, StoreError> {
    serde_json::to_string(&topic.utterances).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn resource(name: &str) -> String {
    format!("topic/{name}")
}

/// A topic as its audit entries show it (it holds no secret).
fn audit_view(record: &TopicRecord) -> Result<serde_json::Value, StoreError> {
    let mut value = json(&record.topic)?;
    value["version"] = serde_json::Value::from(record.version);
    Ok(value)
}

impl Store {
    /// Stores a new library topic (at most `limits.library_topics` of them).
    pub async fn create_topic(
        &self,
        audit: &Audit,
        topic: &LibraryTopic,
        limits: &Limits,
    ) -> Result<TopicRecord, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM topics")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if to_u64(count) >= limits.library_topics as u64 {
            return Err(StoreError::Invalid(ValidationError::limit(
                "name",
                format!(
                    "the library already holds {count} topics; at most {}",
                    limits.library_topics
                ),
            )));
        }
        let now = from_ms(ms(Utc::now()));
        let res = sqlx::query(
            "INSERT INTO topics (name, description, utterances, utterance_count, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6)",
        )
        .bind(&topic.name)
        .bind(&topic.description)
        .bind(utterances_json(topic)?)
        .bind(to_i64(topic.utterances.len() as u64))
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "topic '{}' already exists",
                    topic.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let record = TopicRecord {
            topic: topic.clone(),
            version: 1,
            proxies: 0,
            created_at: now,
            updated_at: now,
        };
        self.record(
            &mut tx,
            audit,
            Change::create(resource(&topic.name), audit_view(&record)?),
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Every library topic, without utterances, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} FROM topics t ORDER BY t.name");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(summary_from_row).collect()
    }

    pub async fn get_topic(&self, name: &str) -> Result<Option<TopicRecord>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, t.utterances FROM topics t WHERE t.name = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// Replaces a library topic. `expected_version`, when given, must be the stored version.
    /// In the same transaction every gateway with a proxy naming the topic gets a new config
    /// version; their names are returned with the new record.
    pub async fn update_topic(
        &self,
        audit: &Audit,
        topic: &LibraryTopic,
        expected_version: Option<u64>,
    ) -> Result<(TopicRecord, Vec<String>), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, t.utterances FROM topics t WHERE t.name = $1{}",
            self.for_update()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&topic.name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("topic"))?;
        let before = record_from_row(&row)?;
        let current = before.version;
        check_version("topic", current, expected_version)?;
        sqlx::query(
            "UPDATE topics SET description = $1, utterances = $2, utterance_count = $3, version = $4, updated_at = $5 \
             WHERE name = $6",
        )
        .bind(&topic.description)
        .bind(utterances_json(topic)?)
        .bind(to_i64(topic.utterances.len() as u64))
        .bind(to_i64(current + 1))
        .bind(ms(Utc::now()))
        .bind(&topic.name)
        .execute(&mut *tx)
        .await?;
        // Proxy writes naming this topic wait for its row (held above), so this sees every
        // proxy naming it.
        let ids = self
            .gateways_of_proxies(
                &mut tx,
                "p.id IN (SELECT pt.proxy_id FROM proxy_topics pt WHERE pt.topic = $1)",
                &topic.name,
            )
            .await?;
        let names = self.bump_gateways(&mut tx, ids).await?;
        let sql = format!("SELECT {SUMMARY_COLUMNS}, t.utterances FROM topics t WHERE t.name = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&topic.name)
            .fetch_one(&mut *tx)
            .await?;
        let record = record_from_row(&row)?;
        self.record(
            &mut tx,
            audit,
            Change::update(
                resource(&topic.name),
                audit_view(&before)?,
                audit_view(&record)?,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((record, names))
    }

    /// Deletes a library topic no proxy names; otherwise a conflict naming them.
    pub async fn delete_topic(&self, audit: &Audit, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, t.utterances FROM topics t WHERE t.name = $1{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(StoreError::NotFound("topic"));
        };
        let before = record_from_row(&row)?;
        let users = sqlx::query(
            "SELECT g.name AS gateway, p.name, p.id FROM proxy_topics pt \
             JOIN proxies p ON p.id = pt.proxy_id JOIN gateways g ON g.id = p.gateway_id \
             WHERE pt.topic = $1 ORDER BY g.name, p.name",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let shown = users
                .iter()
                .take(10)
                .map(|r| {
                    Ok(format!(
                        "{}/{} ({})",
                        r.try_get::<String, _>("gateway")?,
                        r.try_get::<String, _>("name")?,
                        r.try_get::<String, _>("id")?
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
                .join(", ");
            let more = if users.len() > 10 { ", …" } else { "" };
            return Err(StoreError::Conflict(format!(
                "topic '{name}' is used by {} prox{}: {shown}{more}; remove the references first",
                users.len(),
                if users.len() == 1 { "y" } else { "ies" }
            )));
        }
        let res = sqlx::query("DELETE FROM topics WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await;
        match res {
            Ok(_) => {}
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "topic '{name}' is used by a proxy; remove the reference first"
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

    /// Within a proxy write: holds the row of every library topic `spec` names for the rest
    /// of the transaction (in name order), refusing a name that does not exist with a 422
    /// naming the reference's field.
    pub(super) async fn lock_library_topics(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        spec: &ProxySpec,
    ) -> Result<(), StoreError> {
        let mut refs = spec.library_refs();
        refs.sort_by(|a, b| a.1.cmp(b.1));
        refs.dedup_by(|a, b| a.1 == b.1);
        let sql = format!(
            "SELECT name FROM topics WHERE name = $1{}",
            self.for_share()
        );
        for (field, name) in refs {
            if sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?
                .is_none()
            {
                return Err(StoreError::Invalid(ValidationError::new(
                    ErrorCode::InvalidValue,
                    field,
                    format!(
                        "library topic '{name}' does not exist (create it with POST /api/v1/topics)"
                    ),
                )));
            }
        }
        Ok(())
    }

    /// Within a proxy write: makes `proxy_topics` list exactly the topics `spec` names.
    pub(super) async fn set_proxy_topics(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        proxy_id: &str,
        spec: &ProxySpec,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM proxy_topics WHERE proxy_id = $1")
            .bind(proxy_id)
            .execute(&mut **tx)
            .await?;
        let mut names: Vec<&str> = spec.library_refs().into_iter().map(|(_, n)| n).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            sqlx::query("INSERT INTO proxy_topics (proxy_id, topic) VALUES ($1, $2)")
                .bind(proxy_id)
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The library topics the proxies of `gateway` name, each once, by name (inside the
    /// snapshot's read transaction).
    pub(super) async fn gateway_topics(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        gateway: &str,
    ) -> Result<Vec<LibraryTopic>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, t.utterances FROM topics t WHERE t.name IN \
             (SELECT pt.topic FROM proxy_topics pt JOIN proxies p ON p.id = pt.proxy_id \
              JOIN gateways g ON g.id = p.gateway_id WHERE g.name = $1) \
             ORDER BY t.name"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(gateway)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| record_from_row(r).map(|record| record.topic))
            .collect()
    }
}
