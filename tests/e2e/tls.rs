//! TLS between the planes and on the traffic listener, over real sockets: mTLS from node to
//! control plane, refused impostors on either side, certificates re-read without dropping
//! nodes, HTTPS with HTTP/1.1 and HTTP/2 by ALPN, and the cost of a handshake.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use switchyard_control_plane::crypto::Keyring;
use switchyard_control_plane::{ControlPlane, ControlPlaneConfig};
use switchyard_e2e::{ADMIN_TOKEN, Store, eventually, fast_sync};
use switchyard_gateway::{ControlPlaneTls, Gateway, GatewayConfig, ServerTls};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi};
use switchyard_tls::certs::{BundleOptions, LocalCa, write_bundle, write_bundle_with};

const OPTIONS: BundleOptions = BundleOptions {
    days: 2,
    control_plane_names: vec![],
    gateway_names: vec![],
};

fn bundle(dir: &Path) {
    write_bundle(dir, &OPTIONS).unwrap();
}

/// A CA (kept, to sign renewals) and the fleet's certificate files.
struct Pki {
    ca: LocalCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::new("test CA", 2).unwrap();
        write_bundle_with(dir.path(), &OPTIONS, &ca).unwrap();
        Pki { ca, dir }
    }
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.crt")).unwrap()
    }
    fn server_tls(&self, mtls: bool) -> ServerTls {
        let mut tls = ServerTls::new(
            self.path("control-plane.crt"),
            self.path("control-plane.key"),
        );
        if mtls {
            tls.client_ca = Some(self.path("ca.crt"));
        }
        tls.reload_interval = Duration::from_millis(100);
        tls
    }
    fn node_tls(&self, with_identity: bool) -> ControlPlaneTls {
        ControlPlaneTls {
            ca: Some(self.path("ca.crt")),
            identity: with_identity.then(|| (self.path("node.crt"), self.path("node.key"))),
        }
    }
    /// An HTTPS client trusting only this CA.
    fn client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&self.ca_pem()).unwrap()])
    }
}

async fn start_plane(store: &Store, tls: ServerTls) -> ControlPlane {
    let config = ControlPlaneConfig {
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN_TOKEN.into()),
        resync_interval: Duration::from_millis(500),
        tls: Some(tls),
        ..ControlPlaneConfig::new(store.url(), Keyring::generate_key())
    };
    ControlPlane::start(config).await.unwrap()
}

async fn admin(
    http: &reqwest::Client,
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("https://localhost:{}/api/v1{path}", cp.admin_addr().port());
    let mut req = http.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn node_config(
    cp: &ControlPlane,
    token: &str,
    cache: &Path,
    tls: ControlPlaneTls,
) -> GatewayConfig {
    let url = format!("https://localhost:{}", cp.grpc_addr().port());
    let mut config = GatewayConfig::new(url, "tls-gw", token, cache);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream_header_timeout = Duration::from_secs(5);
    config.drain_timeout = Duration::from_secs(2);
    config.control_plane_tls = tls;
    config
}

/// A gateway with one proxy to the mock: its registration token and the proxy's id.
async fn gateway_with_proxy(
    http: &reqwest::Client,
    cp: &ControlPlane,
    mock: &MockOpenAi,
) -> (String, String) {
    let (status, body) = admin(
        http,
        cp,
        reqwest::Method::POST,
        "/gateways",
        Some(json!({"name": "tls-gw"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["registration_token"].as_str().unwrap().to_owned();
    let proxy = json!({
        "name": "support", "gateway": "tls-gw", "format": "openai", "base_path": "/support",
        "routing": {"strategy": "model"},
        "routes": [{"name": "openai", "provider": "openai", "url": mock.base_url(),
                    "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]
    });
    let (status, body) = admin(http, cp, reqwest::Method::POST, "/proxies", Some(proxy)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (token, body["id"].as_str().unwrap().to_owned())
}

async fn node_ids(http: &reqwest::Client, cp: &ControlPlane) -> Vec<String> {
    let (status, body) = admin(http, cp, reqwest::Method::GET, "/gateways/tls-gw", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn chat_over(http: &reqwest::Client, url: &str) -> (StatusCode, reqwest::Version) {
    let resp = http
        .post(format!("{url}/support/chat/completions"))
        .json(&json!({"model": "openai/x", "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.version())
}

/// The node streams its snapshot over mTLS, the admin API answers over HTTPS, and the node
/// serves its traffic over HTTPS with both HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sync_over_mtls_and_serve_https() {
    let pki = Pki::new();
    let store = Store::sqlite();
    let cp = start_plane(&store, pki.server_tls(true)).await;
    let mock = MockOpenAi::start().await.unwrap();
    let http = pki.client().build().unwrap();
    let (token, _) = gateway_with_proxy(&http, &cp, &mock).await;

    // Plain HTTP to the TLS admin port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", cp.admin_addr()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    let cache = tempfile::tempdir().unwrap();
    let mut config = node_config(&cp, &token, cache.path(), pki.node_tls(true));
    config.node_id = Some("mtls-node".into());
    config.listen_tls = Some(ServerTls::new(
        pki.path("gateway.crt"),
        pki.path("gateway.key"),
    ));
    let node = Gateway::start_with(config, fast_sync()).await.unwrap();
    let port = node.local_addr().port();
    let url = format!("https://localhost:{port}");

    let h1 = pki.client().http1_only().build().unwrap();
    eventually(
        Duration::from_secs(10),
        "the proxy served over HTTPS",
        || async { chat_over(&h1, &url).await.0 == StatusCode::OK },
    )
    .await;
    assert_eq!(
        chat_over(&h1, &url).await,
        (StatusCode::OK, reqwest::Version::HTTP_11)
    );
    // ALPN picks HTTP/2 for a client offering it.
    let h2 = pki.client().build().unwrap();
    assert_eq!(
        chat_over(&h2, &url).await,
        (StatusCode::OK, reqwest::Version::HTTP_2)
    );
    assert!(node.sync_state().borrow().connected);
    assert_eq!(node_ids(&http, &cp).await, ["mtls-node"]);

    // A client that does not trust the gateway's CA is refused.
    let stranger = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .send()
        .await;
    assert!(stranger.is_err(), "an untrusted certificate was accepted");
    node.shutdown().await;
    cp.shutdown().await;
}

/// Without a client certificate, or with one from another CA, a node never gets past the
/// handshake: it is not registered and learns why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_valid_client_certificate_are_refused() {
    let pki = Pki::new();
    let store = Store::sqlite();
    let cp = start_plane(&store, pki.server_tls(true)).await;
    let mock = MockOpenAi::start().await.unwrap();
    let http = pki.client().build().unwrap();
    let (token, _) = gateway_with_proxy(&http, &cp, &mock).await;

    let no_cert = tempfile::tempdir().unwrap();
    let anonymous = Gateway::start_with(
        node_config(&cp, &token, no_cert.path(), pki.node_tls(false)),
        fast_sync(),
    )
    .await
    .unwrap();

    // A client certificate signed by another CA.
    let other = tempfile::tempdir().unwrap();
    bundle(other.path());
    let foreign_tls = ControlPlaneTls {
        ca: Some(pki.path("ca.crt")),
        identity: Some((other.path().join("node.crt"), other.path().join("node.key"))),
    };
    let foreign_cache = tempfile::tempdir().unwrap();
    let foreign = Gateway::start_with(
        node_config(&cp, &token, foreign_cache.path(), foreign_tls),
        fast_sync(),
    )
    .await
    .unwrap();

    for node in [&anonymous, &foreign] {
        let mut state = node.sync_state();
        eventually(Duration::from_secs(10), "a sync error", || {
            let has_error = state.borrow_and_update().last_error.is_some();
            async move { has_error }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let state = node.sync_state().borrow().clone();
        assert!(
            !state.connected && state.sessions == 0 && state.applied_version.is_none(),
            "{state:?}"
        );
    }
    assert!(
        node_ids(&http, &cp).await.is_empty(),
        "a refused node registered"
    );
    anonymous.shutdown().await;
    foreign.shutdown().await;
    cp.shutdown().await;
}

/// A node that trusts its own CA never talks to a control plane with another CA's
/// certificate (an impostor re-routing its traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_an_impostor_control_plane() {
    let pki = Pki::new();
    let impostor_pki = Pki::new();
    let store = Store::sqlite();
    let impostor = start_plane(&store, impostor_pki.server_tls(false)).await;
    let mock = MockOpenAi::start().await.unwrap();
    let (token, _) =
        gateway_with_proxy(&impostor_pki.client().build().unwrap(), &impostor, &mock).await;
    let cache = tempfile::tempdir().unwrap();
    let node = Gateway::start_with(
        node_config(&impostor, &token, cache.path(), pki.node_tls(true)),
        fast_sync(),
    )
    .await
    .unwrap();
    let mut state = node.sync_state();
    eventually(Duration::from_secs(10), "a sync error", || {
        let has_error = state.borrow_and_update().last_error.is_some();
        async move { has_error }
    })
    .await;
    let state = node.sync_state().borrow().clone();
    assert!(
        !state.connected && state.applied_version.is_none(),
        "{state:?}"
    );
    node.shutdown().await;
    impostor.shutdown().await;
}

/// The certificate the server presents to a new connection.
async fn served_certificate(
    addr: SocketAddr,
    ca: &[u8],
    identity: Option<(&Path, &Path)>,
) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(switchyard_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = switchyard_tls::read_certs("cert", cert).unwrap();
            let key = switchyard_tls::read_key("key", key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Replacing the certificate files changes what new connections get, while the connected
/// node keeps its stream (no reconnect) and keeps receiving changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_re_read_without_dropping_nodes() {
    let pki = Pki::new();
    let served = tempfile::tempdir().unwrap();
    let (cert, key) = (served.path().join("cp.crt"), served.path().join("cp.key"));
    std::fs::copy(pki.path("control-plane.crt"), &cert).unwrap();
    std::fs::copy(pki.path("control-plane.key"), &key).unwrap();
    let mut tls = ServerTls::new(&cert, &key).with_client_ca(pki.path("ca.crt"));
    tls.reload_interval = Duration::from_millis(100);
    let store = Store::sqlite();
    let cp = start_plane(&store, tls).await;
    let mock = MockOpenAi::start().await.unwrap();
    let http = pki.client().build().unwrap();
    let (token, proxy_id) = gateway_with_proxy(&http, &cp, &mock).await;
    let cache = tempfile::tempdir().unwrap();
    let node = Gateway::start_with(
        node_config(&cp, &token, cache.path(), pki.node_tls(true)),
        fast_sync(),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the node on the first version",
        || async { node.applied_version().is_some() },
    )
    .await;
    let first_version = node.applied_version().unwrap();
    let identity = Some((pki.path("node.crt"), pki.path("node.key")));
    let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let before = served_certificate(cp.grpc_addr(), &pki.ca_pem(), identity).await;
    assert_eq!(
        before,
        switchyard_tls::read_certs("cert", &cert).unwrap()[0]
    );

    // A renewed certificate from the same CA (as cert-manager would write it).
    let renewed = pki
        .ca
        .server("switchyard-control-plane", &["localhost".into()])
        .unwrap();
    std::fs::write(&key, &renewed.key_pem).unwrap();
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    let grpc = cp.grpc_addr();
    let ca = pki.ca_pem();
    eventually(
        Duration::from_secs(5),
        "the renewed certificate on new gRPC connections",
        || {
            let ca = ca.clone();
            let before = before.clone();
            async move { served_certificate(grpc, &ca, identity).await != before }
        },
    )
    .await;
    let admin_cert = served_certificate(cp.admin_addr(), &pki.ca_pem(), None).await;
    assert_ne!(admin_cert, before, "the admin listener re-read it too");

    // The node kept its stream: a change still reaches it, with no reconnect.
    let (status, body) = admin(
        &http,
        &cp,
        reqwest::Method::PUT,
        &format!("/proxies/{proxy_id}"),
        Some(json!({
            "name": "support", "gateway": "tls-gw", "format": "openai", "base_path": "/support2",
            "routing": {"strategy": "model"},
            "routes": [{"name": "openai", "provider": "openai", "url": mock.base_url(),
                        "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(Duration::from_secs(5), "the change on the node", || async {
        node.applied_version() > Some(first_version)
    })
    .await;
    assert_eq!(
        node.sync_state().borrow().sessions,
        1,
        "the node reconnected"
    );
    node.shutdown().await;
    cp.shutdown().await;
}

/// A certificate problem stops the control plane at start with one line naming the file.
#[tokio::test]
async fn a_bad_certificate_stops_the_start_with_the_file_named() {
    let pki = Pki::new();
    let store = Store::sqlite();
    let tls = ServerTls::new(pki.path("control-plane.crt"), pki.path("node.key"));
    let config = ControlPlaneConfig {
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(tls),
        ..ControlPlaneConfig::new(store.url(), Keyring::generate_key())
    };
    let err = ControlPlane::start(config).await.err().unwrap().to_string();
    assert!(
        err.starts_with("--tls-key ") && err.contains("node.key") && err.contains("does not match"),
        "{err}"
    );

    let cache = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::new("https://localhost:1", "g", "t", cache.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.listen_tls = Some({
        let mut t = ServerTls::new(pki.path("missing.crt"), pki.path("gateway.key"));
        t.flags = ["--listen-tls-cert", "--listen-tls-key", "--client-ca"];
        t
    });
    let err = Gateway::start(config).await.err().unwrap().to_string();
    assert!(
        err.starts_with("--listen-tls-cert ") && err.contains("missing.crt: cannot read"),
        "{err}"
    );
}

/// The cost of TLS per new connection to the traffic listener: full handshakes (no session
/// resumption) against plain TCP connects, printed for the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_cost_per_new_connection() {
    let pki = Pki::new();
    let cache = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::new("http://127.0.0.1:1", "g", "t", cache.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.listen_tls = Some(ServerTls::new(
        pki.path("gateway.crt"),
        pki.path("gateway.key"),
    ));
    let node = Gateway::start_with(config, fast_sync()).await.unwrap();
    let addr = node.local_addr();
    let ca = pki.ca_pem();
    const N: u32 = 200;
    let started = Instant::now();
    for _ in 0..N {
        drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let tcp = started.elapsed() / N;
    let started = Instant::now();
    for _ in 0..N {
        served_certificate(addr, &ca, None).await;
    }
    let tls = started.elapsed() / N;
    println!(
        "new connection: TCP connect {tcp:?}, TCP + TLS 1.3 handshake {tls:?} (ECDSA P-256, client and server in one process)"
    );
    assert!(tls > tcp, "a handshake costs something");
    node.shutdown().await;
}
