//! Harness for the end-to-end suite: control planes on either store, gateway nodes, an
//! admin client, and polling helpers. Everything runs for real on 127.0.0.1.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use switchyard_control_plane::crypto::Keyring;
use switchyard_control_plane::{ControlPlane, ControlPlaneConfig};
use switchyard_gateway::{Gateway, GatewayConfig, SyncTuning};
use switchyard_testkit::pg::PgDatabase;

pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// Where a control plane keeps its state; kept alive for the test's duration.
pub enum Store {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Store {
    pub fn sqlite() -> Store {
        Store::Sqlite(tempfile::tempdir().unwrap())
    }

    pub async fn postgres() -> Store {
        Store::Postgres(PgDatabase::create().await)
    }

    pub fn url(&self) -> String {
        match self {
            Store::Sqlite(dir) => format!("sqlite://{}/switchyard.db", dir.path().display()),
            Store::Postgres(db) => db.url().to_owned(),
        }
    }
}

/// A control plane with a fixed key and fixed ports, so it can be stopped and started again
/// on the same store and addresses.
pub struct Plane {
    pub url: String,
    pub key: String,
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    running: Option<ControlPlane>,
    tweak: Box<dyn Fn(&mut ControlPlaneConfig) + Send + Sync>,
}

/// Port 0: the control plane binds a free port itself (and holds it), so parallel tests
/// cannot race for one; [`Plane::restart`] then records the ports it got.
const ANY_PORT: &str = "127.0.0.1:0";

impl Plane {
    pub async fn start(store: &Store) -> Plane {
        Self::start_with(store, |_| {}).await
    }

    /// [`Plane::start`] with the configuration adjusted by `tweak` (metrics, limits…); the
    /// same adjustment applies on every [`Plane::restart`].
    pub async fn start_with(
        store: &Store,
        tweak: impl Fn(&mut ControlPlaneConfig) + Send + Sync + 'static,
    ) -> Plane {
        let mut plane = Plane {
            tweak: Box::new(tweak),
            url: store.url(),
            key: Keyring::generate_key(),
            admin_addr: ANY_PORT.parse().unwrap(),
            grpc_addr: ANY_PORT.parse().unwrap(),
            running: None,
        };
        plane.restart().await;
        plane
    }

    /// Starts the control plane again (after [`Plane::stop`]) on the same store and the
    /// ports it had (the first start picks free ones).
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "already running");
        let mut config = ControlPlaneConfig {
            admin_listen: self.admin_addr,
            grpc_listen: self.grpc_addr,
            admin_token: Some(ADMIN_TOKEN.into()),
            resync_interval: Duration::from_millis(500),
            ..ControlPlaneConfig::new(self.url.clone(), self.key.clone())
        };
        (self.tweak)(&mut config);
        let running = ControlPlane::start(config).await.unwrap();
        self.admin_addr = running.admin_addr();
        self.grpc_addr = running.grpc_addr();
        self.running = Some(running);
    }

    pub async fn stop(&mut self) {
        if let Some(cp) = self.running.take() {
            cp.shutdown().await;
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn admin(&self) -> Admin {
        Admin {
            base: format!("http://{}/api/v1", self.admin_addr),
            http: reqwest::Client::new(),
        }
    }

    /// Creates a gateway and returns its registration token.
    pub async fn create_gateway(&self, name: &str) -> String {
        let (status, body) = self
            .admin()
            .post("/gateways", serde_json::json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["registration_token"].as_str().unwrap().to_owned()
    }
}

/// The admin API, authenticated.
pub struct Admin {
    pub base: String,
    pub http: reqwest::Client,
}

impl Admin {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// Tuning that reconnects quickly, so tests of a returning control plane stay short.
pub fn fast_sync() -> SyncTuning {
    SyncTuning {
        heartbeat_interval: Duration::from_millis(500),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(300),
    }
}

/// Starts a gateway node on a free port.
pub async fn start_node(plane: &Plane, gateway: &str, token: &str, cache_dir: &Path) -> Gateway {
    start_node_at(
        &plane.grpc_url(),
        gateway,
        token,
        cache_dir,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
}

pub async fn start_node_at(
    control_plane: &str,
    gateway: &str,
    token: &str,
    cache_dir: &Path,
    listen: SocketAddr,
) -> Gateway {
    let mut config = node_config(control_plane, gateway, token, cache_dir);
    config.listen = listen;
    Gateway::start_with(config, fast_sync()).await.unwrap()
}

/// The configuration [`start_node`] uses, to adjust before starting a node.
pub fn node_config(
    control_plane: &str,
    gateway: &str,
    token: &str,
    cache_dir: &Path,
) -> GatewayConfig {
    let mut config = GatewayConfig::new(control_plane, gateway, token, cache_dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream_connect_timeout = Duration::from_secs(2);
    config.upstream_header_timeout = Duration::from_secs(5);
    config.drain_timeout = Duration::from_secs(5);
    config
}

/// Polls `check` every 20 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat completion through a gateway: `(status, x-switchyard-route, x-switchyard-model, body)`.
pub async fn chat(
    http: &reqwest::Client,
    gateway: SocketAddr,
    path: &str,
    model: &str,
) -> (StatusCode, String, String, Value) {
    let resp = http
        .post(format!("http://{gateway}{path}/chat/completions"))
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (route, served) = (header("x-switchyard-route"), header("x-switchyard-model"));
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, route, served, body)
}

/// The interpreter with the SDKs: `SWITCHYARD_PYTHON`, or the repo's `.venv` made by
/// `scripts/test`. Missing is a failure, never a skip.
pub fn python() -> String {
    if let Ok(p) = std::env::var("SWITCHYARD_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "no Python with the SDKs: run scripts/test (it creates .venv), or set SWITCHYARD_PYTHON"
    );
    venv.to_owned()
}

/// Runs one pytest file with `env`; fails on any failure or skip.
pub async fn pytest(file: &str, env: &[(&str, String)]) {
    let path = format!("{}/python/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = tokio::process::Command::new(python());
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rfE",
        &path,
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "the Python SDK tests in {file} failed"
    );
    assert!(
        stdout.contains("passed") && !stdout.contains("skipped"),
        "{stdout}"
    );
}
