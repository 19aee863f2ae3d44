use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use switchyard_gateway::{Gateway, GatewayConfig, SyncTuning};
use switchyard_model::Proxy;
use switchyard_testkit::FakeControlPlane;
use switchyard_testkit::snapshots::snapshot;
use tempfile::TempDir;

pub const GW: &str = "test-gw";
pub const TOKEN: &str = "reg-token";
pub const WAIT: Duration = Duration::from_secs(10);
/// The gateway's upstream response-header timeout in these tests.
pub const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);

/// One Prometheus recorder for the whole test binary.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_test_writer()
                .try_init();
            PrometheusBuilder::new().install_recorder().unwrap()
        })
        .clone()
}

pub fn tuning() -> SyncTuning {
    SyncTuning {
        heartbeat_interval: Duration::from_millis(200),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
    }
}

pub fn config(control_plane: &str, cache_dir: &Path) -> GatewayConfig {
    let mut config = GatewayConfig::new(control_plane, GW, TOKEN, cache_dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream_connect_timeout = Duration::from_secs(1);
    config.upstream_header_timeout = HEADER_TIMEOUT;
    config.drain_timeout = Duration::from_secs(5);
    config.metrics = Some(metrics_handle());
    config
}

pub async fn start_node_in(control_plane: &str, cache_dir: &Path) -> Gateway {
    Gateway::start_with(config(control_plane, cache_dir), tuning())
        .await
        .unwrap()
}

/// A control plane serving `proxies` at version 1, and a node that applied it.
pub async fn serving(proxies: Vec<Proxy>) -> (FakeControlPlane, Gateway, TempDir) {
    let cp = FakeControlPlane::start().await.unwrap();
    cp.push(snapshot(GW, 1, proxies)).await;
    let cache = tempfile::tempdir().unwrap();
    let gw = start_node_in(&cp.url(), cache.path()).await;
    let ack = cp.wait_for_ack(1, WAIT).await.expect("no ack");
    assert!(ack.applied, "{ack:?}");
    assert_eq!(gw.applied_version(), Some(1));
    (cp, gw, cache)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.local_addr())
}

pub fn chat(model: Option<&str>) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "Hi there"}]});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    body
}

pub async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url(gw, path))
        .json(body)
        .send()
        .await
        .unwrap()
}

pub async fn get(gw: &Gateway, path: &str) -> reqwest::Response {
    client().get(url(gw, path)).send().await.unwrap()
}

/// Asserts the `x-switchyard-*` and `x-request-id` headers.
pub fn assert_stamped(resp: &reqwest::Response, route: &str, model: &str) {
    let h = resp.headers();
    assert_eq!(h["x-switchyard-route"], route, "route header of {h:?}");
    assert_eq!(h["x-switchyard-model"], model, "model header of {h:?}");
    assert!(!h["x-request-id"].is_empty());
}

/// The status and the OpenAI error object of an error response.
pub async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    let err = body["error"].clone();
    assert!(err["message"].is_string(), "{body}");
    assert!(err["type"].is_string(), "{body}");
    assert!(err.get("code").is_some(), "{body}");
    (status, err)
}

/// The assistant text of a chat completion.
pub async fn reply_of(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no reply in {body}"))
        .to_owned()
}

/// A port nothing listens on.
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}
