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
//!
//! # Audit
//! Every admin write takes an [`Audit`] (the actor and the request id) and appends its entry
//! to `audit_log` in its own transaction, with the resource's state before and after read
//! under the write's locks (see `audit.rs`).
//!
//! One submodule per resource. Dynamic SQL in them only ever splices their own constants (column lists, the
//! dialect's `FOR UPDATE`), never input: that is what each `AssertSqlSafe` asserts.

mod admin_tokens;
mod audit;
mod consumers;
mod gateways;
mod nodes;
mod prices;
mod proxies;
mod semantic_services;
mod snapshot;
mod topics;
mod usage;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use switchyard_model::ErrorCode;

pub use admin_tokens::{AdminTokenMatch, AdminTokenRecord, NewAdminToken};
pub use audit::{Audit, AuditAction, AuditEntry, AuditQuery, Cursor, ResourceFilter};
pub use consumers::NewKey;
pub use gateways::GatewayRecord;
pub use nodes::{NodeEvent, NodeRecord, ProxyFailure};
pub use prices::{BUNDLED_PRICES, SeedPrice, bundled_prices};
pub use semantic_services::SemanticServiceRecord;
pub use snapshot::SnapshotSource;
pub use topics::{TopicRecord, TopicSummary};
pub use usage::{DAY_MS, HOUR_MS, Ingested, StoredUsage, UsageRow, UsageTotals};

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
    /// Like `Rejected`, for a field known only at run time (e.g. `routes[0].topics[1].ref`).
    #[error("{0}")]
    Invalid(switchyard_model::ValidationError),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("unsupported database url: {0}")]
    BadUrl(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

/// Refuses an update made against a version other than the stored one (`expected`, when the
/// client sent one): the one optimistic-concurrency rule of every versioned resource.
fn check_version(what: &str, current: u64, expected: Option<u64>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current => Err(StoreError::Conflict(format!(
            "version conflict: the {what} is at version {current}, the update was made against {expected}"
        ))),
        _ => Ok(()),
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
    /// Connects, applies pending migrations and seeds the price table with the bundled
    /// prices not seeded before. `sqlite://` files are created if missing.
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
        let store = Self {
            pool,
            backend,
            url: url.to_owned(),
            write_lock: tokio::sync::Mutex::new(()),
        };
        let seed: Vec<_> = bundled_prices()?.into_iter().map(|s| s.price).collect();
        store.seed_prices(&seed).await?;
        Ok(store)
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

    /// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken
    /// at the start, where `busy_timeout` applies, instead of at the first write. A deferred
    /// transaction that must upgrade its read lock gets `SQLITE_BUSY` at once, without waiting,
    /// when another connection still holds the lock, for instance one whose transaction was
    /// dropped on an error path and whose rollback sqlx has not yet run.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
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
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
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

#[cfg(test)]
mod usage_tests;
