//! Consumers (client applications) and their keys.
//!
//! A consumer is global; the proxies it may call are rows of `consumer_proxies` (or
//! `all_proxies` for `"*"`), so deleting a proxy drops it from every consumer. Keys are stored
//! as SHA-256 hashes only. Every consumer or key write bumps, in its transaction, the config
//! version of every gateway serving a proxy the consumer may call, before and after the write
//! (all gateways for `"*"`), so a new, changed or revoked key reaches their nodes at once.
//!
//! Locks: the consumer's row first (`FOR UPDATE`; a create inserts it first), then the
//! gateways in id order through `bump_gateways`. Proxy writes lock their gateway and never a
//! consumer, so the two cannot deadlock. The proxies a consumer names are checked once
//! before the gateways are locked (to find them) and once after (a proxy cannot be deleted
//! while its gateway is held, nor move to another gateway), so a consumer never names a
//! proxy that does not exist.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::{
    Consumer, ConsumerKey, ConsumerProxies, ConsumerSpec, NodeConsumer, NodeKey, REDACTED,
    ValidationError,
};
use uuid::Uuid;

use super::audit::{Audit, AuditAction, Change, json};
use super::{Store, StoreError, check_version, from_ms, is_unique_violation, ms, to_i64, to_u64};

/// A new key as stored: its hash and shown prefix, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub id: Uuid,
    pub prefix: String,
    pub hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

const CONSUMER_COLUMNS: &str =
    "c.id, c.name, c.all_proxies, c.version, c.spec, c.created_at, c.updated_at";
const KEY_COLUMNS: &str =
    "k.id, k.consumer_id, k.prefix, k.hash, k.created_at, k.expires_at, k.last_used_at";

/// A consumer's row before its keys and proxies are attached.
struct ConsumerRow {
    id: String,
    all_proxies: bool,
    version: u64,
    spec: ConsumerSpec,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn consumer_row(row: &AnyRow) -> Result<ConsumerRow, StoreError> {
    let name: String = row.try_get("name")?;
    let spec: String = row.try_get("spec")?;
    let spec: ConsumerSpec = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Corrupt(format!("consumer {name}: {e}")))?;
    Ok(ConsumerRow {
        id: row.try_get("id")?,
        all_proxies: row.try_get::<i64, _>("all_proxies")? != 0,
        version: to_u64(row.try_get("version")?),
        spec,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

fn parse_uuid(what: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("{what} id '{text}': {e}")))
}

fn key_row(row: &AnyRow) -> Result<(String, ConsumerKey, [u8; 32]), StoreError> {
    let id: String = row.try_get("id")?;
    let hash: String = row.try_get("hash")?;
    let hash: [u8; 32] = hex::decode(&hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("key {id}: bad hash")))?;
    let key = ConsumerKey {
        id: parse_uuid("key", &id)?,
        prefix: row.try_get("prefix")?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(from_ms),
    };
    Ok((row.try_get("consumer_id")?, key, hash))
}

fn spec_json(spec: &ConsumerSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The proxy ids a spec names (none for `"*"`).
fn named_proxies(spec: &ConsumerSpec) -> &[Uuid] {
    match &spec.proxies {
        ConsumerProxies::All => &[],
        ConsumerProxies::Only(ids) => ids,
    }
}

fn resource(name: &str) -> String {
    format!("consumer/{name}")
}

fn key_resource(consumer: &str, key: Uuid) -> String {
    format!("consumer/{consumer}/keys/{key}")
}

/// A key as its audit entries show it: the secret as `***` (its hash is never shown).
fn key_view(key: &ConsumerKey) -> Result<serde_json::Value, StoreError> {
    let mut value = json(key)?;
    value["key"] = serde_json::Value::from(REDACTED);
    Ok(value)
}

impl Store {
    /// Stores a new consumer, refusing a proxy id that does not exist (422 naming
    /// `proxies[i]`) and a taken name (409). Returns the consumer and the gateways bumped.
    pub async fn create_consumer(
        &self,
        audit: &Audit,
        spec: &ConsumerSpec,
    ) -> Result<(Consumer, Vec<String>), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let id = Uuid::new_v4();
        let now = from_ms(ms(Utc::now()));
        let res = sqlx::query(
            "INSERT INTO consumers (id, name, all_proxies, version, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(&spec.name)
        .bind(i64::from(spec.proxies == ConsumerProxies::All))
        .bind(spec_json(spec)?)
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "consumer '{}' already exists",
                    spec.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let gateways = self
            .set_consumer_proxies(&mut tx, &id.to_string(), None, spec)
            .await?;
        let consumer = self
            .read_consumer(&mut tx, &spec.name)
            .await?
            .ok_or(StoreError::NotFound("consumer"))?;
        self.record(
            &mut tx,
            audit,
            Change::create(resource(&spec.name), json(&consumer)?),
        )
        .await?;
        tx.commit().await?;
        Ok((consumer, gateways))
    }

    /// Replaces a consumer's proxies, limits, budget and metadata (its keys stay).
    /// `expected_version`, when given, must be the stored version.
    pub async fn update_consumer(
        &self,
        audit: &Audit,
        spec: &ConsumerSpec,
        expected_version: Option<u64>,
    ) -> Result<(Consumer, Vec<String>), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let locked = self.lock_consumer(&mut tx, &spec.name).await?;
        check_version("consumer", locked.version, expected_version)?;
        let before = self
            .read_consumer(&mut tx, &spec.name)
            .await?
            .ok_or(StoreError::NotFound("consumer"))?;
        sqlx::query(
            "UPDATE consumers SET all_proxies = $1, version = $2, spec = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(i64::from(spec.proxies == ConsumerProxies::All))
        .bind(to_i64(locked.version + 1))
        .bind(spec_json(spec)?)
        .bind(ms(Utc::now()))
        .bind(&locked.id)
        .execute(&mut *tx)
        .await?;
        let gateways = self
            .set_consumer_proxies(&mut tx, &locked.id, Some(locked.all_proxies), spec)
            .await?;
        let consumer = self
            .read_consumer(&mut tx, &spec.name)
            .await?
            .ok_or(StoreError::NotFound("consumer"))?;
        self.record(
            &mut tx,
            audit,
            Change::update(resource(&spec.name), json(&before)?, json(&consumer)?),
        )
        .await?;
        tx.commit().await?;
        Ok((consumer, gateways))
    }

    /// Deletes a consumer and its keys; returns the gateways bumped.
    pub async fn delete_consumer(
        &self,
        audit: &Audit,
        name: &str,
    ) -> Result<Vec<String>, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let locked = self.lock_consumer(&mut tx, name).await?;
        let before = self
            .read_consumer(&mut tx, name)
            .await?
            .ok_or(StoreError::NotFound("consumer"))?;
        let ids = self
            .consumer_gateway_ids(&mut tx, &locked.id, locked.all_proxies)
            .await?;
        let gateways = self.bump_gateways(&mut tx, ids).await?;
        sqlx::query("DELETE FROM consumers WHERE id = $1")
            .bind(&locked.id)
            .execute(&mut *tx)
            .await?;
        self.record(
            &mut tx,
            audit,
            Change::delete(resource(name), json(&before)?),
        )
        .await?;
        tx.commit().await?;
        Ok(gateways)
    }

    pub async fn get_consumer(&self, name: &str) -> Result<Option<Consumer>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let consumer = self.read_consumer(&mut tx, name).await?;
        tx.commit().await?;
        Ok(consumer)
    }

    /// Every consumer with its live keys, by name.
    pub async fn list_consumers(&self) -> Result<Vec<Consumer>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("SELECT {CONSUMER_COLUMNS} FROM consumers c ORDER BY c.name");
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM consumer_keys k WHERE k.revoked_at IS NULL \
             ORDER BY k.created_at, k.id"
        );
        let key_rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        let links = sqlx::query("SELECT consumer_id, proxy_id FROM consumer_proxies")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut keys: HashMap<String, Vec<ConsumerKey>> = HashMap::new();
        for row in &key_rows {
            let (consumer_id, key, _) = key_row(row)?;
            keys.entry(consumer_id).or_default().push(key);
        }
        let mut proxies: HashMap<String, Vec<Uuid>> = HashMap::new();
        for row in &links {
            let proxy: String = row.try_get("proxy_id")?;
            proxies
                .entry(row.try_get("consumer_id")?)
                .or_default()
                .push(parse_uuid("proxy", &proxy)?);
        }
        rows.iter()
            .map(|row| {
                let r = consumer_row(row)?;
                let live = proxies.remove(&r.id).unwrap_or_default();
                let keys = keys.remove(&r.id).unwrap_or_default();
                assemble(r, &live, keys)
            })
            .collect()
    }

    /// Stores a new key of `consumer` (its hash and prefix); returns the gateways bumped.
    pub async fn create_consumer_key(
        &self,
        audit: &Audit,
        consumer: &str,
        key: &NewKey,
    ) -> Result<Vec<String>, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let locked = self.lock_consumer(&mut tx, consumer).await?;
        let res = sqlx::query(
            "INSERT INTO consumer_keys (id, consumer_id, prefix, hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.id.to_string())
        .bind(&locked.id)
        .bind(&key.prefix)
        .bind(hex::encode(key.hash))
        .bind(ms(key.created_at))
        .bind(key.expires_at.map(ms))
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            // 190 random bits do not collide; a clash means the same key was sent twice.
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict("this key already exists".into()));
            }
            Err(e) => return Err(e.into()),
        }
        let ids = self
            .consumer_gateway_ids(&mut tx, &locked.id, locked.all_proxies)
            .await?;
        let gateways = self.bump_gateways(&mut tx, ids).await?;
        let view = ConsumerKey {
            id: key.id,
            prefix: key.prefix.clone(),
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: None,
        };
        self.record(
            &mut tx,
            audit,
            Change::create(key_resource(consumer, key.id), key_view(&view)?),
        )
        .await?;
        tx.commit().await?;
        Ok(gateways)
    }

    /// Revokes a live key of `consumer` (404 for an unknown or already revoked one); returns
    /// the gateways bumped, whose nodes then refuse it.
    pub async fn revoke_consumer_key(
        &self,
        audit: &Audit,
        consumer: &str,
        key: Uuid,
    ) -> Result<Vec<String>, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let locked = self.lock_consumer(&mut tx, consumer).await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM consumer_keys k \
             WHERE k.id = $1 AND k.consumer_id = $2 AND k.revoked_at IS NULL"
        );
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(key.to_string())
            .bind(&locked.id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(StoreError::NotFound("key"));
        };
        let (_, before, _) = key_row(&row)?;
        let res = sqlx::query(
            "UPDATE consumer_keys SET revoked_at = $1 \
             WHERE id = $2 AND consumer_id = $3 AND revoked_at IS NULL",
        )
        .bind(ms(Utc::now()))
        .bind(key.to_string())
        .bind(&locked.id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("key"));
        }
        let ids = self
            .consumer_gateway_ids(&mut tx, &locked.id, locked.all_proxies)
            .await?;
        let gateways = self.bump_gateways(&mut tx, ids).await?;
        self.record(
            &mut tx,
            audit,
            Change {
                action: AuditAction::Revoke,
                resource: key_resource(consumer, key),
                before: Some(key_view(&before)?),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(gateways)
    }

    /// Locks a consumer's row for the rest of the transaction.
    async fn lock_consumer(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
    ) -> Result<ConsumerRow, StoreError> {
        let sql = format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers c WHERE c.name = $1{}",
            self.for_update()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("consumer"))?;
        consumer_row(&row)
    }

    /// The gateways serving a proxy the consumer may call now (every gateway for `"*"`).
    async fn consumer_gateway_ids(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        consumer_id: &str,
        all_proxies: bool,
    ) -> Result<Vec<String>, StoreError> {
        if all_proxies {
            return self.all_gateway_ids(tx).await;
        }
        self.gateways_of_proxies(
            tx,
            "p.id IN (SELECT cp.proxy_id FROM consumer_proxies cp WHERE cp.consumer_id = $1)",
            consumer_id,
        )
        .await
    }

    /// The gateway of each proxy `spec` names, refusing one that does not exist.
    async fn named_proxy_gateways(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        spec: &ConsumerSpec,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for (i, proxy) in named_proxies(spec).iter().enumerate() {
            let row = sqlx::query("SELECT gateway_id FROM proxies WHERE id = $1")
                .bind(proxy.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            match row {
                Some(row) => ids.push(row.try_get("gateway_id")?),
                None => {
                    return Err(StoreError::Invalid(ValidationError::invalid(
                        format!("proxies[{i}]"),
                        format!("proxy '{proxy}' does not exist"),
                    )));
                }
            }
        }
        Ok(ids)
    }

    /// Within a consumer write (its row held): bumps the gateways it could call before
    /// (`was_all`: `None` for a new consumer) and can call after, checks the proxies it names
    /// exist, and makes `consumer_proxies` list exactly them.
    async fn set_consumer_proxies(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        consumer_id: &str,
        was_all: Option<bool>,
        spec: &ConsumerSpec,
    ) -> Result<Vec<String>, StoreError> {
        let mut ids = match was_all {
            Some(all) => self.consumer_gateway_ids(tx, consumer_id, all).await?,
            None => Vec::new(),
        };
        if spec.proxies == ConsumerProxies::All {
            ids.extend(self.all_gateway_ids(tx).await?);
        } else {
            ids.extend(self.named_proxy_gateways(tx, spec).await?);
        }
        let gateways = self.bump_gateways(tx, ids).await?;
        // Again with the gateways held: a proxy deleted in between is refused too.
        self.named_proxy_gateways(tx, spec).await?;
        sqlx::query("DELETE FROM consumer_proxies WHERE consumer_id = $1")
            .bind(consumer_id)
            .execute(&mut **tx)
            .await?;
        for proxy in named_proxies(spec) {
            sqlx::query("INSERT INTO consumer_proxies (consumer_id, proxy_id) VALUES ($1, $2)")
                .bind(consumer_id)
                .bind(proxy.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(gateways)
    }

    /// One consumer with its live keys and the proxies it may call.
    async fn read_consumer(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
    ) -> Result<Option<Consumer>, StoreError> {
        let sql = format!("SELECT {CONSUMER_COLUMNS} FROM consumers c WHERE c.name = $1");
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let r = consumer_row(&row)?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM consumer_keys k WHERE k.consumer_id = $1 AND k.revoked_at IS NULL \
             ORDER BY k.created_at, k.id"
        );
        let keys = sqlx::query(AssertSqlSafe(sql))
            .bind(&r.id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| key_row(row).map(|(_, key, _)| key))
            .collect::<Result<Vec<_>, _>>()?;
        let live = self.linked_proxies(tx, &r.id).await?;
        assemble(r, &live, keys).map(Some)
    }

    async fn linked_proxies(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        consumer_id: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT proxy_id FROM consumer_proxies WHERE consumer_id = $1")
            .bind(consumer_id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| parse_uuid("proxy", &row.try_get::<String, _>("proxy_id")?))
            .collect()
    }

    /// The consumers a gateway's nodes need (inside the snapshot's read transaction): those
    /// allowed on at least one of its proxies, by name, each with the proxies of this
    /// gateway it may call and its keys that are neither revoked nor expired at `now`.
    pub(super) async fn gateway_consumers(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        gateway: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<NodeConsumer>, StoreError> {
        const ON_GATEWAY: &str = "SELECT cp.consumer_id, cp.proxy_id FROM consumer_proxies cp \
             JOIN proxies p ON p.id = cp.proxy_id JOIN gateways g ON g.id = p.gateway_id \
             WHERE g.name = $1";
        let mut proxies: HashMap<String, Vec<Uuid>> = HashMap::new();
        for row in sqlx::query(ON_GATEWAY)
            .bind(gateway)
            .fetch_all(&mut **tx)
            .await?
        {
            let proxy: String = row.try_get("proxy_id")?;
            proxies
                .entry(row.try_get("consumer_id")?)
                .or_default()
                .push(parse_uuid("proxy", &proxy)?);
        }
        let sql = format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers c WHERE c.all_proxies <> 0 OR c.id IN \
             (SELECT cp.consumer_id FROM consumer_proxies cp JOIN proxies p ON p.id = cp.proxy_id \
              JOIN gateways g ON g.id = p.gateway_id WHERE g.name = $1) \
             ORDER BY c.name"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(gateway)
            .fetch_all(&mut **tx)
            .await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM consumer_keys k WHERE k.revoked_at IS NULL \
             AND (k.expires_at IS NULL OR k.expires_at > $1) AND k.consumer_id IN \
             (SELECT c.id FROM consumers c WHERE c.all_proxies <> 0 OR c.id IN \
              (SELECT cp.consumer_id FROM consumer_proxies cp JOIN proxies p ON p.id = cp.proxy_id \
               JOIN gateways g ON g.id = p.gateway_id WHERE g.name = $2)) \
             ORDER BY k.created_at, k.id"
        );
        let mut keys: HashMap<String, Vec<NodeKey>> = HashMap::new();
        for row in sqlx::query(AssertSqlSafe(sql))
            .bind(ms(now))
            .bind(gateway)
            .fetch_all(&mut **tx)
            .await?
        {
            let (consumer_id, key, hash) = key_row(&row)?;
            keys.entry(consumer_id).or_default().push(NodeKey {
                id: key.id,
                hash,
                expires_at: key.expires_at,
            });
        }
        rows.iter()
            .map(|row| {
                let r = consumer_row(row)?;
                let proxies = if r.all_proxies {
                    ConsumerProxies::All
                } else {
                    let mut here = proxies.remove(&r.id).unwrap_or_default();
                    here.sort_unstable();
                    ConsumerProxies::Only(here)
                };
                Ok(NodeConsumer {
                    keys: keys.remove(&r.id).unwrap_or_default(),
                    name: r.spec.name,
                    proxies,
                    rate_limits: r.spec.rate_limits,
                    budget: r.spec.budget,
                })
            })
            .collect()
    }
}

/// A consumer as shown: the stored spec with the proxies that still exist (in the order it
/// named them), and its live keys.
fn assemble(r: ConsumerRow, live: &[Uuid], keys: Vec<ConsumerKey>) -> Result<Consumer, StoreError> {
    let mut spec = r.spec;
    if !r.all_proxies {
        let named = named_proxies(&spec).to_vec();
        spec.proxies =
            ConsumerProxies::Only(named.into_iter().filter(|id| live.contains(id)).collect());
    }
    Ok(Consumer {
        id: parse_uuid("consumer", &r.id)?,
        version: r.version,
        spec,
        keys,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}
