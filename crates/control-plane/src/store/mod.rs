//! The control plane's store: PostgreSQL or an embedded SQLite file, behind one type.
//!
//! Both backends run through sqlx's `Any` driver with the same SQL, except for the few
//! dialect differences named where they occur. Migrations are numbered files under
//! `migrations/postgres` and `migrations/sqlite`, applied at start-up.
//!
//! # Concurrency
//! Every write that touches a gateway's proxies runs in one transaction that first locks the
//! gateway's row (`SELECT … FOR UPDATE` on PostgreSQL; on SQLite, one writer at a time through
//! a process-wide lock, since one control plane owns the file). Writes to one gateway are
//! therefore serialised: two racing creates cannot exceed the proxies-per-gateway limit, and
//! each write bumps the gateway's `config_version` exactly once. A `PUT` may also carry the
//! version it replaces; a stale one is refused with a conflict (optimistic concurrency).
//!
//! Semantic services are named rows that proxies reference (a foreign key on
//! `proxies.semantic_service`, besides the name in the spec). Locks are always taken service
//! first, then gateways (in id order), so writes cannot deadlock: a proxy write naming a
//! service holds that service's row `FOR SHARE` for its transaction, while updating or
//! deleting a service holds it `FOR UPDATE`. So a delete cannot race a proxy write into a
//! dangling reference, and a service update sees every proxy naming it and bumps the
//! `config_version` of each of their gateways in the same transaction.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
// Dynamic SQL below only ever splices this module's own constants (column lists, the
// dialect's `FOR UPDATE`), never input: that is what each `AssertSqlSafe` asserts.
use sqlx::{AnyPool, AssertSqlSafe, Row};
use switchyard_model::{ErrorCode, Limits, Proxy, ProxySpec, SemanticService};
use uuid::Uuid;

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The channel on which PostgreSQL notifies every control-plane replica of a committed
/// change; the payload is the gateway's name.
pub const PG_CHANNEL: &str = "switchyard_config";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A write that breaks a rule or limit only the store can check (HTTP 422).
    #[error("{field}: {message}")]
    Rejected {
        code: ErrorCode,
        field: &'static str,
        message: String,
    },
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("unsupported database url: {0}")]
    BadUrl(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

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

/// A semantic service as stored (its key, if any, encrypted), with how many proxies name it.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticServiceRecord {
    pub service: SemanticService,
    pub version: u64,
    pub proxies: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a gateway's snapshot is built from, read consistently.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSource {
    pub version: u64,
    /// Ordered by base path.
    pub proxies: Vec<Proxy>,
    /// The semantic services the proxies name, each once, ordered by name (keys encrypted).
    pub semantic_services: Vec<SemanticService>,
}

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

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// SQLite: one writer at a time (see the module docs).
    write_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Connects and applies pending migrations. `sqlite://` files are created if missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::BadUrl(
                "expected postgres://… or sqlite://… (e.g. sqlite://data/switchyard.db)".into(),
            ));
        };
        let mut connect_url = url.to_owned();
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            if let Some(path) = sqlite_file(url)
                && let Some(dir) = std::path::Path::new(&path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::BadUrl(format!("cannot create directory {}: {e}", dir.display()))
                })?;
            }
            if !connect_url.contains("mode=") {
                connect_url.push(if connect_url.contains('?') { '&' } else { '?' });
                connect_url.push_str("mode=rwc");
            }
            options = options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                        .await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        let pool = options.connect(&connect_url).await?;
        match backend {
            Backend::Postgres => PG_MIGRATIONS.run(&pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self {
            pool,
            backend,
            url: url.to_owned(),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL this store was opened with (for the PostgreSQL listener).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        }
    }

    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    fn for_share(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        }
    }

    // ---- gateways -------------------------------------------------------------------------

    pub async fn create_gateway(
        &self,
        name: &str,
        token_hash: &str,
    ) -> Result<GatewayRecord, StoreError> {
        let _guard = self.write_guard().await;
        let now = Utc::now();
        let id = Uuid::new_v4().to_string();
        let res = sqlx::query(
            "INSERT INTO gateways (id, name, token_hash, config_version, created_at) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(token_hash)
        .bind(ms(now))
        .execute(&self.pool)
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
        Ok(GatewayRecord {
            id,
            name: name.to_owned(),
            token_hash: token_hash.to_owned(),
            config_version: 0,
            created_at: from_ms(ms(now)),
            proxies: 0,
        })
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

    pub async fn set_gateway_token(&self, name: &str, token_hash: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let res = sqlx::query("UPDATE gateways SET token_hash = $1 WHERE name = $2")
            .bind(token_hash)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("gateway"));
        }
        Ok(())
    }

    /// Deletes a gateway with no proxies (its node records go with it).
    pub async fn delete_gateway(&self, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT id FROM gateways WHERE name = $1{}",
            self.for_update()
        );
        let id: String = match sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => row.try_get("id")?,
            None => return Err(StoreError::NotFound("gateway")),
        };
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
        tx.commit().await?;
        Ok(())
    }

    /// Locks the gateway's row for the rest of the transaction and returns its id.
    async fn lock_gateway(
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
    async fn bump_version(
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

    // ---- proxies --------------------------------------------------------------------------

    /// Stores a new proxy. `spec`'s secrets must already be encrypted.
    pub async fn create_proxy(
        &self,
        spec: &ProxySpec,
        limits: &Limits,
    ) -> Result<Proxy, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        self.lock_named_service(&mut tx, spec).await?;
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
        self.bump_version(&mut tx, &gateway_id, &spec.gateway)
            .await?;
        tx.commit().await?;
        Ok(proxy)
    }

    /// Replaces a proxy. `expected_version`, when given, must be the stored version.
    pub async fn update_proxy(
        &self,
        id: Uuid,
        spec: &ProxySpec,
        expected_version: Option<u64>,
    ) -> Result<Proxy, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        self.lock_named_service(&mut tx, spec).await?;
        let gateway_id = self.lock_gateway(&mut tx, &spec.gateway).await?;
        let row = sqlx::query(
            "SELECT p.version, p.created_at, g.name AS gateway FROM proxies p \
             JOIN gateways g ON g.id = p.gateway_id WHERE p.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("proxy"))?;
        let current = to_u64(row.try_get("version")?);
        let current_gateway: String = row.try_get("gateway")?;
        if current_gateway != spec.gateway {
            return Err(StoreError::Rejected {
                code: ErrorCode::RuleViolated,
                field: "gateway",
                message: format!(
                    "a proxy cannot move between gateways (it is on '{current_gateway}'); delete and recreate it"
                ),
            });
        }
        if let Some(expected) = expected_version
            && expected != current
        {
            return Err(StoreError::Conflict(format!(
                "version conflict: the proxy is at version {current}, the update was made against {expected}"
            )));
        }
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
        self.bump_version(&mut tx, &gateway_id, &spec.gateway)
            .await?;
        tx.commit().await?;
        Ok(Proxy {
            id,
            version: current + 1,
            spec: spec.clone(),
            created_at: from_ms(row.try_get("created_at")?),
            updated_at: now,
        })
    }

    /// Deletes a proxy, returning what was deleted.
    pub async fn delete_proxy(&self, id: Uuid) -> Result<Proxy, StoreError> {
        let _guard = self.write_guard().await;
        let proxy = self
            .get_proxy(id)
            .await?
            .ok_or(StoreError::NotFound("proxy"))?;
        let mut tx = self.pool.begin().await?;
        let gateway_id = self.lock_gateway(&mut tx, &proxy.spec.gateway).await?;
        let res = sqlx::query("DELETE FROM proxies WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("proxy"));
        }
        self.bump_version(&mut tx, &gateway_id, &proxy.spec.gateway)
            .await?;
        tx.commit().await?;
        Ok(proxy)
    }

    const PROXY_COLUMNS: &'static str =
        "p.id, p.version, p.spec, p.created_at, p.updated_at, g.name AS gateway";

    fn proxy_from_row(row: &AnyRow) -> Result<Proxy, StoreError> {
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

    /// The gateway's config version, all its proxies and the semantic services they name,
    /// read consistently.
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
        tx.commit().await?;
        Ok(Some(SnapshotSource {
            version,
            proxies,
            semantic_services,
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

    /// Rewrites every stored spec through `f` (used to re-encrypt secrets under a new key).
    /// Specs for which `f` returns `None` are left alone. Versions are not bumped: what the
    /// proxies mean does not change.
    pub async fn rewrite_specs(
        &self,
        mut f: impl FnMut(ProxySpec) -> Result<Option<ProxySpec>, StoreError>,
    ) -> Result<usize, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
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

    // ---- semantic services ------------------------------------------------------------

    /// Within a proxy write: holds the row of the semantic service `spec` names (if any) for
    /// the rest of the transaction, refusing a name that does not exist.
    async fn lock_named_service(
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

    const SERVICE_COLUMNS: &'static str = "s.name, s.url, s.model, s.api_key, s.version, s.created_at, s.updated_at, \
         (SELECT COUNT(*) FROM proxies p WHERE p.semantic_service = s.name) AS proxies";

    fn service_from_row(row: &AnyRow) -> Result<SemanticServiceRecord, StoreError> {
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
        service: &SemanticService,
    ) -> Result<SemanticServiceRecord, StoreError> {
        let _guard = self.write_guard().await;
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
        .execute(&self.pool)
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
        Ok(SemanticServiceRecord {
            service: service.clone(),
            version: 1,
            proxies: 0,
            created_at: now,
            updated_at: now,
        })
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
        service: &SemanticService,
        expected_version: Option<u64>,
    ) -> Result<(SemanticServiceRecord, Vec<String>), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT version FROM semantic_services WHERE name = $1{}",
            self.for_update()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&service.name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound("semantic service"))?;
        let current = to_u64(row.try_get("version")?);
        if let Some(expected) = expected_version
            && expected != current
        {
            return Err(StoreError::Conflict(format!(
                "version conflict: the semantic service is at version {current}, the update was made against {expected}"
            )));
        }
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
        // Proxy writes naming this service wait for its row (held above), so this sees every
        // proxy naming it; gateways are locked in id order, like every multi-gateway write.
        let sql = format!(
            "SELECT g.id, g.name FROM gateways g WHERE g.id IN \
             (SELECT p.gateway_id FROM proxies p WHERE p.semantic_service = $1) ORDER BY g.id{}",
            self.for_update()
        );
        let gateways = sqlx::query(AssertSqlSafe(sql))
            .bind(&service.name)
            .fetch_all(&mut *tx)
            .await?;
        let mut names = Vec::with_capacity(gateways.len());
        for row in &gateways {
            let (id, name): (String, String) = (row.try_get("id")?, row.try_get("name")?);
            self.bump_version(&mut tx, &id, &name).await?;
            names.push(name);
        }
        let sql = format!(
            "SELECT {} FROM semantic_services s WHERE s.name = $1",
            Self::SERVICE_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(&service.name)
            .fetch_one(&mut *tx)
            .await?;
        let record = Self::service_from_row(&row)?;
        tx.commit().await?;
        Ok((record, names))
    }

    /// Deletes a semantic service no proxy names.
    pub async fn delete_semantic_service(&self, name: &str) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT name FROM semantic_services WHERE name = $1{}",
            self.for_update()
        );
        if sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound("semantic service"));
        }
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
        let mut tx = self.pool.begin().await?;
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

    // ---- nodes ----------------------------------------------------------------------------

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

fn spec_json(spec: &ProxySpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
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

/// The file path of a `sqlite://` URL, if it names one.
fn sqlite_file(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

#[cfg(test)]
mod tests;
