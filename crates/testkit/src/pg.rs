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
        Self::create_on(&admin_url()).await
    }

    /// A fresh database on the server `admin_url` names (a [`PgServer`]'s, say).
    pub async fn create_on(admin_url: &str) -> PgDatabase {
        let admin_url = admin_url.to_owned();
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

/// A private PostgreSQL server, started for one test from the machine's binaries
/// (`/usr/lib/postgresql/*/bin`), on a free port with its data in a temporary directory,
/// so the test can stop and start it without touching any shared server. Run as root, it
/// runs as the `postgres` user (initdb refuses root). Removed on drop.
pub struct PgServer {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL binaries under /usr/lib/postgresql (apt-get install postgresql)"
                )
            });
        let dir =
            std::env::temp_dir().join(format!("switchyard-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let server = PgServer {
            bin,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            server.run(
                "chown",
                &["-R", "postgres", &server.dir.display().to_string()],
                false,
            );
        }
        let data = server.dir.join("data").display().to_string();
        server.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
            true,
        );
        server.start_again();
        server
    }

    /// A command running `program`, as the `postgres` user when run as root and it is one of
    /// PostgreSQL's tools.
    fn command(&self, program: &std::path::Path, postgres_tool: bool) -> std::process::Command {
        if self.as_postgres && postgres_tool {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str], postgres_tool: bool) {
        let program = if postgres_tool {
            self.bin.join(tool)
        } else {
            std::path::PathBuf::from(tool)
        };
        let out = self
            .command(&program, postgres_tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        if !out.status.success() {
            panic!(
                "{} {args:?} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let data = self.dir.join("data").display().to_string();
        let log = self.dir.join("log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
            true,
        );
    }

    /// Stops the server at once (`immediate`: like a crash; connections are cut).
    pub fn stop(&self) {
        let data = self.dir.join("data").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "stop"],
            true,
        );
    }

    /// The URL of the `postgres` database on it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self
            .command(&self.bin.join("pg_ctl"), true)
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
