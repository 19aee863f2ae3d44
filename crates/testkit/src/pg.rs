//! Throwaway PostgreSQL databases for tests, on the server the test run was given.
//!
//! The server comes from `SWITCHYARD_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the machine's local server). Each
//! [`PgDatabase`] is a fresh database, dropped when the value is dropped. A server that
//! cannot be reached is a test failure, never a skip.

// Test support: failing loudly here is how a test reports a missing database.
#![allow(clippy::panic)]

use sqlx::{AssertSqlSafe, Connection};
// The database name is generated here (a UUID), never taken from input.
use sqlx::postgres::PgConnection;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("SWITCHYARD_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A fresh database on the test server; dropped (with `FORCE`) on drop.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin_url = admin_url();
        let name = format!("switchyard_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL server at {admin_url}: {e}\n\
                 (scripts/test starts one; or set SWITCHYARD_TEST_DATABASE_URL)"
            )
        });
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = conn.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, rest)) if base.len() > base.find("://").map_or(usize::MAX, |i| i + 3) => {
                let query = rest.find('?').map_or("", |q| &rest[q..]);
                format!("{base}/{name}{query}")
            }
            _ => panic!("SWITCHYARD_TEST_DATABASE_URL must name a database: {admin_url}"),
        };
        PgDatabase {
            admin_url,
            name,
            url,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop on a separate thread with its own runtime: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                        let _ = conn.close().await;
                    }
                });
            }
        })
        .join();
    }
}
