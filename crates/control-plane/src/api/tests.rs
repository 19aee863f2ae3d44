//! The admin API over real HTTP, on a throwaway SQLite store.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;

pub(super) const TOKEN: &str = "admin-secret";

pub(super) struct Api {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    pub(super) store: Arc<Store>,
    keyring: Arc<Keyring>,
    _dir: Option<tempfile::TempDir>,
}

impl Api {
    pub(super) async fn start(limits: Limits) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cp.db", dir.path().display());
        Api::start_on(
            &url,
            limits,
            Some(TOKEN),
            ThrottleConfig::default(),
            Some(dir),
        )
        .await
    }

    /// An API on the store at `url` (`dir`, if any, holds it); `admin_token: None` is
    /// `--insecure-no-auth`.
    pub(super) async fn start_on(
        url: &str,
        limits: Limits,
        admin_token: Option<&str>,
        throttle: ThrottleConfig,
        dir: Option<tempfile::TempDir>,
    ) -> Api {
        let store = Arc::new(Store::connect(url).await.unwrap());
        let keyring = Arc::new(Keyring::new(&Keyring::generate_key(), &[]).unwrap());
        let state = Arc::new(AppState {
            store: store.clone(),
            keyring: keyring.clone(),
            hub: Arc::new(Hub::default()),
            limits,
            admin_token: admin_token.map(str::to_owned),
            auth_throttle: AuthThrottle::new(throttle),
            node_stale_after: Duration::from_secs(30),
            metrics: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let app = router(state).into_make_service_with_connect_info::<ClientAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Api {
            base,
            http: reqwest::Client::new(),
            store,
            keyring,
            _dir: dir,
        }
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    pub(super) async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub(super) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub(super) async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub(super) async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
    /// `PUT` with a raw body of the given content type.
    pub(super) async fn put_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

pub(super) fn proxy(name: &str, base_path: &str) -> Value {
    json!({
        "name": name, "gateway": "prod-eu", "format": "openai", "base_path": base_path,
        "routing": {"strategy": "model", "fallback": {"route": "openai", "target_model": "gpt-4o-mini"}},
        "routes": [{"name": "openai", "provider": "openai", "url": "https://api.openai.com/v1",
                    "auth": {"type": "static", "api_key": "sk-very-secret"}, "target_model": "gpt-4.1",
                    "topics": [{"name": "billing", "utterances": ["How do I pay my invoice?"]}]}]
    })
}

fn assert_error(
    status: StatusCode,
    body: &Value,
    want_status: StatusCode,
    want_code: &str,
    want_field: Option<&str>,
) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match want_field {
        Some(f) => assert_eq!(body["error"]["field"], f, "{body}"),
        None => assert!(body["error"].get("field").is_none(), "{body}"),
    }
}

#[tokio::test]
async fn bearer_token_is_required() {
    let api = Api::start(Limits::default()).await;
    let url = format!("{}/gateways", api.base);
    let resp = api.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = api
        .http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = api.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The OpenAPI document is public.
    let doc: Value = api
        .http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn gateways_lifecycle() {
    let api = Api::start(Limits::default()).await;
    let (status, body) = api.post("/gateways", json!({"name": "prod-eu"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["registration_token"].as_str().unwrap();
    assert!(token.starts_with("syreg_") && token.len() > 40);
    assert_eq!(body["proxies"], 0);
    assert_eq!(body["nodes"], json!([]));

    let (status, body) = api.get("/gateways/prod-eu").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.get("registration_token").is_none(),
        "the token is shown once"
    );
    let (status, body) = api.get("/gateways").await;
    assert_eq!(
        (status, body.as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );

    let (s, b) = api.post("/gateways", json!({"name": "prod-eu"})).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    let (s, b) = api.post("/gateways", json!({"name": "Prod EU"})).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        Some("name"),
    );
    let (s, b) = api
        .post("/gateways", json!({"name": "x", "region": "eu"}))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "malformed", Some("region"));
    let (s, b) = api.get("/gateways/nope").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (s, b) = api
        .post("/gateways/prod-eu/registration-token", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(b["registration_token"].as_str().unwrap(), token);

    let (s, created) = api.post("/proxies", proxy("a", "/a")).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(api.get("/gateways/prod-eu").await.1["proxies"], 1);
    let (s, b) = api.delete("/gateways/prod-eu").await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        api.delete(&format!("/proxies/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete("/gateways/prod-eu").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.get("/gateways/prod-eu").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn proxies_lifecycle_with_secrets_never_returned() {
    let api = Api::start(Limits::default()).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    let (status, created) = api.post("/proxies", proxy("support", "/support")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["routes"][0]["auth"],
        json!({"type": "static", "api_key": "***"})
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, read) = api.get(&format!("/proxies/{id}")).await;
    assert_eq!(read, created);
    assert_eq!(api.get("/proxies").await.1.as_array().unwrap().len(), 1);
    assert_eq!(
        api.get("/proxies?gateway=prod-eu")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.get("/proxies?gateway=other")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // At rest the key is encrypted; it decrypts to what was sent.
    let stored = api
        .store
        .get_proxy(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let switchyard_model::Auth::Static { api_key } = &stored.spec.routes[0].auth else {
        panic!()
    };
    assert!(api_key.expose().starts_with("enc:v2:"));
    assert_eq!(
        api.keyring
            .decrypt_proxy(stored.spec.clone())
            .map(|s| s.routes[0].auth.clone())
            .unwrap(),
        switchyard_model::Auth::Static {
            api_key: switchyard_model::Secret::new("sk-very-secret")
        }
    );
    assert_ne!(api_key.expose(), "sk-very-secret");

    // GET → edit → PUT round-trips, keeping the redacted key.
    let mut edited = read.clone();
    edited["routes"][0]["target_model"] = json!("gpt-5");
    let (status, updated) = api.put(&format!("/proxies/{id}"), edited.clone()).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["routes"][0]["target_model"], "gpt-5");
    let stored = api
        .store
        .get_proxy(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let switchyard_model::Auth::Static { api_key } = &stored.spec.routes[0].auth else {
        panic!()
    };
    assert_eq!(
        api.keyring
            .decrypt(
                api_key,
                &stored.spec.secret_owner(),
                "routes[openai].auth.api_key"
            )
            .unwrap()
            .expose(),
        "sk-very-secret"
    );

    // The same edit again carries version 1: stale.
    let (s, b) = api.put(&format!("/proxies/{id}"), edited).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    // If-Match works like `version`.
    let resp = api
        .http
        .put(format!("{}/proxies/{id}", api.base))
        .bearer_auth(TOKEN)
        .header("if-match", "\"1\"")
        .json(&proxy("support", "/support"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = api
        .http
        .put(format!("{}/proxies/{id}", api.base))
        .bearer_auth(TOKEN)
        .header("if-match", "\"2\"")
        .json(&proxy("support", "/support"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let mut wrong_id = proxy("support", "/support");
    wrong_id["id"] = json!(uuid::Uuid::new_v4());
    let (s, b) = api.put(&format!("/proxies/{id}"), wrong_id).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rule_violated",
        Some("id"),
    );

    assert_eq!(
        api.delete(&format!("/proxies/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    let (s, b) = api.get(&format!("/proxies/{id}")).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(
        api.delete(&format!("/proxies/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/proxies/not-a-uuid").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_bodies_and_every_limit_are_refused_and_store_nothing() {
    let api = Api::start(Limits::default()).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    let utterances = |n: usize| (0..n).map(|i| format!("utterance {i}")).collect::<Vec<_>>();
    let topics = |n: usize| {
        (0..n)
            .map(|i| json!({"name": format!("t{i}"), "utterances": ["x"]}))
            .collect::<Vec<_>>()
    };
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            {
                let mut p = proxy("a", "/a");
                p["routes"][0]["topics"] = json!(topics(7));
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
            "routes[0].topics[6]",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["routes"][0]["topics"][0]["utterances"] = json!(utterances(11));
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
            "routes[0].topics[0].utterances",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["routes"][0]["topics"][0]["utterances"] = json!(["x".repeat(501)]);
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
            "routes[0].topics[0].utterances[0]",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["prompt_guard"] = json!({"threshold": 0.7, "deny_topics": topics(7)});
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
            "prompt_guard.deny_topics[6]",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["prompt_guard"] = json!({"threshold": 0.7, "deny_topics": [{"name": "w", "utterances": utterances(11)}]});
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
            "prompt_guard.deny_topics[0].utterances",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["routing"]["strategy"] = json!("semantic");
                p["routes"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("target_model");
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule_violated",
            "routes[0].target_model",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["base_path"] = json!("no-slash");
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "base_path",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["gateway"] = json!("missing");
                p
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "gateway",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["routes"][0]["auth"]["extra"] = json!(1);
                p
            },
            StatusCode::BAD_REQUEST,
            "malformed",
            "routes[0].auth.extra",
        ),
        (
            {
                let mut p = proxy("a", "/a");
                p["routes"] = json!("openai");
                p
            },
            StatusCode::BAD_REQUEST,
            "malformed",
            "routes",
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, b) = api.post("/proxies", body).await;
        assert_error(s, &b, status, code, Some(field));
    }
    let resp = api
        .http
        .post(format!("{}/proxies", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": \"a\",")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "malformed"
    );
    // Nothing was stored and no version was bumped.
    assert_eq!(api.get("/proxies").await.1, json!([]));
    assert_eq!(api.get("/gateways/prod-eu").await.1["config_version"], 0);

    // Base path and name uniqueness are conflicts.
    assert_eq!(
        api.post("/proxies", proxy("a", "/a")).await.0,
        StatusCode::CREATED
    );
    let (s, b) = api.post("/proxies", proxy("b", "/a")).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    let (s, b) = api.post("/proxies", proxy("a", "/b")).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
}

#[tokio::test]
async fn proxies_per_gateway_limit() {
    let api = Api::start(Limits::default()).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    for i in 0..50 {
        let (s, b) = api
            .post("/proxies", proxy(&format!("p{i}"), &format!("/p{i}")))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, b) = api.post("/proxies", proxy("p50", "/p50")).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "limit_exceeded",
        Some("gateway"),
    );
    assert_eq!(api.get("/gateways/prod-eu").await.1["proxies"], 50);
}

#[tokio::test]
async fn raised_limits_are_honoured() {
    let limits = Limits {
        utterances_per_topic: 2000,
        ..Limits::default()
    };
    let api = Api::start(limits).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    let mut p = proxy("a", "/a");
    p["routes"][0]["topics"][0]["utterances"] = json!(
        (0..2000)
            .map(|i| format!("utterance number {i}"))
            .collect::<Vec<_>>()
    );
    let (s, b) = api.post("/proxies", p).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// Everything logged on this thread while the guard lives, at every level.
pub(super) fn capture_logs() -> (
    Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

pub(super) fn embed_eu() -> Value {
    json!({"name": "embed-eu", "url": "https://api.openai.com/v1",
           "model": "text-embedding-3-small", "api_key": "sk-embed-very-secret"})
}

fn semantic_proxy(name: &str, base_path: &str, service: &str) -> Value {
    let mut p = proxy(name, base_path);
    p["routing"]["strategy"] = json!("semantic");
    p["semantic_service"] = json!(service);
    p
}

async fn stored_service_key(api: &Api, name: &str) -> Option<String> {
    let record = api.store.get_semantic_service(name).await.unwrap().unwrap();
    let owner = record.service.secret_owner();
    record.service.api_key.map(|k| {
        assert!(k.expose().starts_with("enc:v2:"), "encrypted at rest");
        api.keyring
            .decrypt(&k, &owner, "api_key")
            .unwrap()
            .expose()
            .to_owned()
    })
}

// Current-thread runtime: the server's tasks log on this thread, into the captured logs.
#[tokio::test(flavor = "current_thread")]
async fn semantic_services_lifecycle_with_the_key_never_shown() {
    let (logs, _guard) = capture_logs();
    let api = Api::start(Limits::default()).await;
    let (status, created) = api.post("/semantic-services", embed_eu()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "embed-eu");
    assert_eq!(created["url"], "https://api.openai.com/v1");
    assert_eq!(created["model"], "text-embedding-3-small");
    assert_eq!(created["api_key"], "***");
    assert_eq!(
        (created["version"].clone(), created["proxies"].clone()),
        (json!(1), json!(0))
    );
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());
    assert_eq!(
        stored_service_key(&api, "embed-eu").await.as_deref(),
        Some("sk-embed-very-secret")
    );

    let (status, read) = api.get("/semantic-services/embed-eu").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);
    let (status, all) = api.get("/semantic-services").await;
    assert_eq!((status, all), (StatusCode::OK, json!([created.clone()])));

    // A local server without a key.
    let (status, local) = api
        .post(
            "/semantic-services",
            json!({"name": "local", "url": "http://127.0.0.1:7997/v1", "model": "bge-small"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{local}");
    assert!(local.get("api_key").is_none(), "{local}");
    assert_eq!(stored_service_key(&api, "local").await, None);
    assert_eq!(
        api.get("/semantic-services")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // GET → edit → PUT: `***` keeps the key (same destination), the version moves on.
    let mut edited = read.clone();
    edited["url"] = json!("https://api.openai.com/v1/");
    edited["model"] = json!("text-embedding-3-large");
    let (status, updated) = api.put("/semantic-services/embed-eu", edited.clone()).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["url"], "https://api.openai.com/v1");
    assert_eq!(updated["model"], "text-embedding-3-large");
    assert_eq!(
        (updated["version"].clone(), updated["api_key"].clone()),
        (json!(2), json!("***"))
    );
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(
        stored_service_key(&api, "embed-eu").await.as_deref(),
        Some("sk-embed-very-secret")
    );
    // The same edit again carries version 1: stale. So does a stale If-Match.
    let (s, b) = api.put("/semantic-services/embed-eu", edited).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    let resp = api
        .http
        .put(format!("{}/semantic-services/embed-eu", api.base))
        .bearer_auth(TOKEN)
        .header("if-match", "\"1\"")
        .json(&embed_eu())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // A new key replaces the old one.
    let mut rekeyed = updated.clone();
    rekeyed["api_key"] = json!("sk-rotated-secret");
    let (status, body) = api.put("/semantic-services/embed-eu", rekeyed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(
        stored_service_key(&api, "embed-eu").await.as_deref(),
        Some("sk-rotated-secret")
    );
    // Renaming is refused; so is `***` where no key is stored.
    let mut renamed = body.clone();
    renamed["name"] = json!("embed-us");
    let (s, b) = api.put("/semantic-services/embed-eu", renamed).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rule_violated",
        Some("name"),
    );
    let mut keep_nothing = local.clone();
    keep_nothing["api_key"] = json!("***");
    let (s, b) = api.put("/semantic-services/local", keep_nothing).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rule_violated",
        Some("api_key"),
    );
    let (s, b) = api.put("/semantic-services/nope", embed_eu()).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    // Delete, then it is gone.
    assert_eq!(
        api.delete("/semantic-services/local").await.0,
        StatusCode::NO_CONTENT
    );
    let (s, b) = api.get("/semantic-services/local").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    let (s, b) = api.delete("/semantic-services/local").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    // No reply and no log line ever showed a key.
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("semantic service created"), "{logs}");
    assert!(logs.contains("semantic service updated"), "{logs}");
    for secret in ["sk-embed-very-secret", "sk-rotated-secret"] {
        assert!(!logs.contains(secret), "{secret} was logged");
        assert!(
            !api.get("/semantic-services")
                .await
                .1
                .to_string()
                .contains(secret)
        );
    }
}

#[tokio::test]
async fn semantic_service_bodies_are_strict_and_names_unique() {
    let api = Api::start(Limits::default()).await;
    let with = |field: &str, value: Value| {
        let mut v = embed_eu();
        v[field] = value;
        v
    };
    let cases: Vec<(Value, StatusCode, &str, Option<&str>)> = vec![
        (
            with("colour", json!("red")),
            StatusCode::BAD_REQUEST,
            "malformed",
            Some("colour"),
        ),
        (
            with("model", json!(7)),
            StatusCode::BAD_REQUEST,
            "malformed",
            Some("model"),
        ),
        (
            {
                let mut v = embed_eu();
                v.as_object_mut().unwrap().remove("name");
                v
            },
            StatusCode::BAD_REQUEST,
            "malformed",
            Some("name"),
        ),
        (
            {
                let mut v = embed_eu();
                v.as_object_mut().unwrap().remove("url");
                v
            },
            StatusCode::BAD_REQUEST,
            "malformed",
            None,
        ),
        (
            with("name", json!("Embed EU")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            Some("name"),
        ),
        (
            with("url", json!("ftp://x/v1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            Some("url"),
        ),
        (
            with("model", json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            Some("model"),
        ),
        (
            with("api_key", json!("has space")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            Some("api_key"),
        ),
        (
            with("api_key", json!("***")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule_violated",
            Some("api_key"),
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, b) = api.post("/semantic-services", body).await;
        assert_error(s, &b, status, code, field);
    }
    let resp = api
        .http
        .post(format!("{}/semantic-services", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": \"embed-eu\",")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        api.get("/semantic-services").await.1,
        json!([]),
        "nothing stored"
    );

    assert_eq!(
        api.post("/semantic-services", embed_eu()).await.0,
        StatusCode::CREATED
    );
    let (s, b) = api
        .post("/semantic-services", with("url", json!("http://other/v1")))
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    assert_eq!(
        api.get("/semantic-services/embed-eu").await.1["url"],
        "https://api.openai.com/v1",
        "the duplicate changed nothing"
    );
    let (s, b) = api
        .put("/semantic-services/embed-eu", with("extra", json!(1)))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "malformed", Some("extra"));

    // Every route needs the token.
    for (method, path) in [
        (reqwest::Method::GET, "/semantic-services"),
        (reqwest::Method::POST, "/semantic-services"),
        (reqwest::Method::GET, "/semantic-services/embed-eu"),
        (reqwest::Method::PUT, "/semantic-services/embed-eu"),
        (reqwest::Method::DELETE, "/semantic-services/embed-eu"),
    ] {
        let resp = api
            .http
            .request(method.clone(), format!("{}{path}", api.base))
            .json(&embed_eu())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert_eq!(
        api.get("/semantic-services/embed-eu").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn proxies_reference_semantic_services_by_name() {
    let api = Api::start(Limits::default()).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    api.post("/gateways", json!({"name": "prod-us"})).await;

    // An unknown service: 422 naming the field, nothing stored, no version bumped.
    let (s, b) = api
        .post("/proxies", semantic_proxy("a", "/a", "embed-eu"))
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        Some("semantic_service"),
    );
    assert_eq!(api.get("/proxies").await.1, json!([]));
    assert_eq!(api.get("/gateways/prod-eu").await.1["config_version"], 0);
    // The inline definition is gone: one way to name a service.
    let mut inline = proxy("a", "/a");
    inline["semantic_service"] =
        json!({"url": "http://127.0.0.1:9/v1", "model": "emb", "api_key": "sk"});
    let (s, b) = api.post("/proxies", inline).await;
    assert_error(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "malformed",
        Some("semantic_service"),
    );

    api.post("/semantic-services", embed_eu()).await;
    let (s, created) = api
        .post("/proxies", semantic_proxy("a", "/a", "embed-eu"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["semantic_service"], "embed-eu");
    let id = created["id"].as_str().unwrap().to_owned();
    let mut us = semantic_proxy("b", "/b", "embed-eu");
    us["gateway"] = json!("prod-us");
    assert_eq!(api.post("/proxies", us).await.0, StatusCode::CREATED);
    assert_eq!(api.get("/semantic-services/embed-eu").await.1["proxies"], 2);

    // A PUT naming an unknown service is refused and changes nothing.
    let mut edited = created.clone();
    edited["semantic_service"] = json!("nope");
    let (s, b) = api.put(&format!("/proxies/{id}"), edited).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        Some("semantic_service"),
    );
    assert_eq!(api.get(&format!("/proxies/{id}")).await.1["version"], 1);

    // In use: the service cannot be deleted.
    let (s, b) = api.delete("/semantic-services/embed-eu").await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prod-eu/a"),
        "{b}"
    );

    // Updating the service gives every gateway using it a new version.
    let eu = api.get("/gateways/prod-eu").await.1["config_version"].clone();
    let us = api.get("/gateways/prod-us").await.1["config_version"].clone();
    let mut moved = api.get("/semantic-services/embed-eu").await.1;
    moved["url"] = json!("http://127.0.0.1:9/v1");
    if moved.get("api_key").is_some() {
        // A new destination needs its key again ('***' would follow the URL).
        moved["api_key"] = json!("sk-moved");
    }
    assert_eq!(
        api.put("/semantic-services/embed-eu", moved).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/gateways/prod-eu").await.1["config_version"],
        eu.as_u64().unwrap() + 1
    );
    assert_eq!(
        api.get("/gateways/prod-us").await.1["config_version"],
        us.as_u64().unwrap() + 1
    );

    // Once no proxy names it, it can go.
    let mut plain = created.clone();
    plain.as_object_mut().unwrap().remove("semantic_service");
    plain["routing"]["strategy"] = json!("model");
    assert_eq!(
        api.put(&format!("/proxies/{id}"), plain).await.0,
        StatusCode::OK
    );
    for p in api
        .get("/proxies?gateway=prod-us")
        .await
        .1
        .as_array()
        .unwrap()
    {
        let pid = p["id"].as_str().unwrap();
        assert_eq!(
            api.delete(&format!("/proxies/{pid}")).await.0,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        api.delete("/semantic-services/embed-eu").await.0,
        StatusCode::NO_CONTENT
    );
}

/// A proxy of gateway `prod-eu` routing with inline topics and library references.
fn library_proxy(name: &str, base_path: &str, topic: &str) -> Value {
    json!({
        "name": name, "gateway": "prod-eu", "base_path": base_path,
        "routing": {"strategy": "semantic", "fallback": {"route": "openai"}},
        "routes": [{"name": "openai", "provider": "openai", "url": "https://api.openai.com/v1",
                    "auth": {"type": "static", "api_key": "sk-x"}, "target_model": "gpt-4.1",
                    "topics": [{"name": "greetings", "utterances": ["hello"]}, {"ref": topic}]}],
        "prompt_guard": {"threshold": 0.8, "deny_topics": [{"ref": topic}]}
    })
}

#[tokio::test]
async fn the_topic_library_lifecycle() {
    let api = Api::start(Limits::default()).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    let (s, created) = api
        .post(
            "/topics",
            json!({"name": "billing", "description": "invoices", "utterances": ["pay my invoice", " refund ", "pay my invoice"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["utterances"], json!(["pay my invoice", "refund"]));
    assert_eq!(
        (
            created["version"].as_u64(),
            created["proxies"].as_u64(),
            created["utterance_count"].as_u64()
        ),
        (Some(1), Some(0), Some(2))
    );
    let (s, b) = api
        .post("/topics", json!({"name": "billing", "utterances": ["x"]}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");

    // Proxies mix inline topics and references; a missing reference is a 422 naming it.
    let (s, b) = api.post("/proxies", library_proxy("p", "/p", "nope")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"]["field"], "routes[0].topics[1].ref");
    let (s, p) = api
        .post("/proxies", library_proxy("p", "/p", "billing"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["routes"][0]["topics"][1], json!({"ref": "billing"}));
    assert_eq!(
        p["prompt_guard"]["deny_topics"][0],
        json!({"ref": "billing"})
    );
    let (_, read) = api.get("/topics/billing").await;
    assert_eq!(read["proxies"], 1);

    // text/plain upload: one per line, blank lines and the trailing newline ignored.
    let (s, b) = api
        .put_raw(
            "/topics/billing/utterances",
            "text/plain; charset=utf-8",
            "How do I pay my invoice?\r\n\nI was charged twice\n\n",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["utterances"],
        json!(["How do I pay my invoice?", "I was charged twice"])
    );
    assert_eq!(
        (b["version"].as_u64(), b["description"].as_str()),
        (Some(2), Some("invoices"))
    );
    let long = format!("fine\n\nalso fine\n{}\n", "x".repeat(501));
    let (s, b) = api
        .put_raw("/topics/billing/utterances", "text/plain", &long)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["error"]["field"], "line 4");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500 characters"),
        "{b}"
    );
    // JSON array upload, with a stale If-Match refused.
    let (s, b) = api
        .put_raw(
            "/topics/billing/utterances",
            "application/json",
            r#"["one", "two", "three"]"#,
        )
        .await;
    assert_eq!(
        (s, b["utterance_count"].as_u64()),
        (StatusCode::OK, Some(3)),
        "{b}"
    );
    let (s, b) = api
        .put_raw(
            "/topics/billing/utterances",
            "application/json",
            r#"["ok", ""]"#,
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("[1]")),
        "{b}"
    );
    let (s, b) = api
        .put_raw("/topics/billing/utterances", "application/xml", "<x/>")
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    let resp = api
        .http
        .put(format!("{}/topics/billing/utterances", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .header("if-match", "\"1\"")
        .body("stale")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let (s, _) = api
        .put_raw("/topics/nope/utterances", "text/plain", "x")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The utterances back as text.
    let text = api
        .http
        .get(format!("{}/topics/billing/utterances", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "one\ntwo\nthree\n");

    // A GET reply sent back with a change; renaming is refused.
    let (_, mut edited) = api.get("/topics/billing").await;
    edited["description"] = json!("billing questions");
    let (s, b) = api.put("/topics/billing", edited.clone()).await;
    assert_eq!((s, b["version"].as_u64()), (StatusCode::OK, Some(4)), "{b}");
    edited["name"] = json!("other");
    let (s, b) = api.put("/topics/billing", edited).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );

    let (s, list) = api.get("/topics").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["name"], "billing");
    assert!(
        list[0].get("utterances").is_none(),
        "listings leave utterances out"
    );
    assert_eq!(list[0]["utterance_count"], 3);

    // Deleting a topic a proxy names: 409 naming the proxy; then it goes.
    let (s, b) = api.delete("/topics/billing").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("prod-eu/p") && message.contains(p["id"].as_str().unwrap()),
        "{message}"
    );
    api.delete(&format!("/proxies/{}", p["id"].as_str().unwrap()))
        .await;
    let (s, _) = api.delete("/topics/billing").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get("/topics/billing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn library_limits_are_enforced_and_raisable() {
    let api = Api::start(Limits::default()).await;
    let many: Vec<String> = (0..2001).map(|i| format!("utterance {i}")).collect();
    let (s, b) = api
        .post("/topics", json!({"name": "big", "utterances": many}))
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("utterances")),
        "{b}"
    );
    let (s, _) = api
        .post(
            "/topics",
            json!({"name": "big", "utterances": &many[..2000]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let text = many.join("\n");
    let (s, b) = api
        .put_raw("/topics/big/utterances", "text/plain", &text)
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("utterances")),
        "{b}"
    );
    let (s, b) = api
        .post("/topics", json!({"name": "Bad Name", "utterances": ["x"]}))
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name")),
        "{b}"
    );
    let (s, b) = api
        .post(
            "/topics",
            json!({"name": "x", "utterances": ["y"], "colour": 1}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("colour")),
        "{b}"
    );

    // Library references per proxy have their own limit; inline topics keep theirs.
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    for i in 0..17 {
        api.post(
            "/topics",
            json!({"name": format!("t{i}"), "utterances": ["x"]}),
        )
        .await;
    }
    let mut p = library_proxy("p", "/p", "t0");
    let refs: Vec<Value> = (0..17).map(|i| json!({"ref": format!("t{i}")})).collect();
    p["routes"][0]["topics"] = json!(refs);
    let (s, b) = api.post("/proxies", p.clone()).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("routes[0].topics[16]")
        ),
        "{b}"
    );
    let mut mixed: Vec<Value> = (0..16).map(|i| json!({"ref": format!("t{i}")})).collect();
    mixed.extend((0..6).map(|i| json!({"name": format!("inline{i}"), "utterances": ["x"]})));
    p["routes"][0]["topics"] = json!(mixed);
    let (s, b) = api.post("/proxies", p.clone()).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "16 references and 6 inline topics: {b}"
    );
    let (s, b) = api
        .post("/proxies", {
            let mut q = library_proxy("q", "/q", "t0");
            q["routes"][0]["topics"] = json!([{"ref": "t1", "name": "x"}]);
            q
        })
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("routes[0].topics[0].name")
        ),
        "{b}"
    );

    let raised = Api::start(Limits {
        utterances_per_library_topic: 5000,
        ..Limits::default()
    })
    .await;
    let (s, b) = raised
        .post("/topics", json!({"name": "big", "utterances": many}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// A body refused before it is read (no token, no such endpoint) ends the connection, and
/// the answer says so: a client reusing the connection does not lose its next request.
#[tokio::test]
async fn refusals_of_unread_bodies_close_the_connection_cleanly() {
    let api = Api::start(Limits::default()).await;
    let addr = api
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let pad = "a".repeat(200_000);
    let body = format!(r#"{{"name":"x","url":"https://x","model":"m","pad":"{pad}"}}"#);
    let request = format!(
        "POST /api/v1/semantic-services HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer (and close) before the whole body is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");

    // Through a pooled client: the refused request, then another on the same pool.
    let refused = api
        .http
        .post(format!("{}/semantic-services", api.base))
        .body(body.clone())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = api.get("/gateways").await;
    assert_eq!(status, StatusCode::OK);

    // A request without a body keeps its connection.
    let resp = api
        .http
        .get(format!("{}/gateways", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("connection").is_none());
}

// ---- consumers, keys and prices -----------------------------------------------------------

/// A gateway `prod-eu` with one proxy; its id.
async fn gateway_with_a_proxy(api: &Api) -> String {
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    let (s, p) = api.post("/proxies", proxy("support", "/support")).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    p["id"].as_str().unwrap().to_owned()
}

async fn gateway_version(api: &Api) -> u64 {
    api.store
        .get_gateway("prod-eu")
        .await
        .unwrap()
        .unwrap()
        .config_version
}

#[tokio::test]
async fn consumers_lifecycle_with_keys_shown_once() {
    let api = Api::start(Limits::default()).await;
    let proxy_id = gateway_with_a_proxy(&api).await;
    let v0 = gateway_version(&api).await;

    let body = json!({
        "name": "billing-app", "proxies": [proxy_id],
        "rate_limits": [{"name": "tokens-per-app", "tokens": 100000, "window": "1h", "key": "consumer"},
                        {"name": "per-tenant", "requests": 600, "window": "1m", "key": "#[attributes.headers['x-tenant']]"}],
        "budget": {"usd": 50.0, "period": "month"},
        "metadata": {"team": "billing"}
    });
    let (s, created) = api.post("/consumers", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "billing-app");
    assert_eq!(created["version"], 1);
    assert_eq!(created["proxies"], json!([proxy_id]));
    assert_eq!(created["rate_limits"], body["rate_limits"]);
    assert_eq!(created["budget"], json!({"usd": 50.0, "period": "month"}));
    assert_eq!(created["metadata"], json!({"team": "billing"}));
    assert_eq!(created["keys"], json!([]));
    assert_eq!(
        gateway_version(&api).await,
        v0 + 1,
        "its gateway hears of it"
    );
    let (s, b) = api.post("/consumers", body.clone()).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);

    // A key: shown once, stored as its hash, listed by id and prefix.
    let resp = api
        .http
        .post(format!("{}/consumers/billing-app/keys", api.base))
        .bearer_auth(TOKEN)
        .json(&json!({"expires_at": "2099-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let issued: Value = resp.json().await.unwrap();
    let key = issued["key"].as_str().unwrap().to_owned();
    assert!(switchyard_model::governance::is_key_shaped(&key), "{key}");
    assert_eq!(issued["prefix"], key[..11]);
    assert_eq!(issued["consumer"], "billing-app");
    assert_eq!(issued["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(gateway_version(&api).await, v0 + 2);
    // An empty body is a key that does not expire; two keys never repeat.
    let resp = api
        .http
        .post(format!("{}/consumers/billing-app/keys", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let second: Value = resp.json().await.unwrap();
    assert_eq!(second["expires_at"], Value::Null);
    assert_ne!(second["key"], issued["key"]);

    let (s, read) = api.get("/consumers/billing-app").await;
    assert_eq!(s, StatusCode::OK);
    let text = read.to_string();
    assert!(
        !text.contains(&key[3..]),
        "the secret is never shown again: {text}"
    );
    assert_eq!(read["keys"].as_array().unwrap().len(), 2);
    assert_eq!(read["keys"][0]["id"], issued["id"]);
    assert_eq!(read["keys"][0]["prefix"], issued["prefix"]);
    assert_eq!(read["keys"][0]["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(read["keys"][0]["last_used_at"], Value::Null);
    assert!(read["keys"][0].get("key").is_none());
    let (_, list) = api.get("/consumers").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&key[3..]));

    // What the nodes get: the key's hash, never the key.
    let snap = api.store.snapshot_source("prod-eu").await.unwrap().unwrap();
    assert_eq!(snap.consumers.len(), 1);
    let hashes: Vec<_> = snap.consumers[0].keys.iter().map(|k| k.hash).collect();
    assert!(hashes.contains(&switchyard_model::governance::key_hash(&key)));

    // Replace: version checks, no rename, keys stay.
    let mut replacement = body.clone();
    replacement["budget"] = json!({"usd": 10, "period": "day"});
    replacement["version"] = json!(7);
    let (s, b) = api.put("/consumers/billing-app", replacement.clone()).await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict", None);
    replacement["version"] = json!(1);
    let (s, updated) = api.put("/consumers/billing-app", replacement.clone()).await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["budget"], json!({"usd": 10.0, "period": "day"}));
    assert_eq!(updated["keys"].as_array().unwrap().len(), 2);
    // What GET returns can be sent back as it is.
    let (s, again) = api.put("/consumers/billing-app", updated.clone()).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["version"], 3);
    let mut renamed = body.clone();
    renamed["name"] = json!("other");
    let (s, b) = api.put("/consumers/billing-app", renamed).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rule_violated",
        Some("name"),
    );
    let (s, b) = api
        .put("/consumers/nope", json!({"name": "nope", "proxies": ["*"]}))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    // Revoke: gone from the listing and from the nodes' snapshot.
    let before = gateway_version(&api).await;
    let id = issued["id"].as_str().unwrap();
    let (s, _) = api
        .delete(&format!("/consumers/billing-app/keys/{id}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(gateway_version(&api).await, before + 1);
    let (_, read) = api.get("/consumers/billing-app").await;
    assert_eq!(read["keys"].as_array().unwrap().len(), 1);
    assert_eq!(read["keys"][0]["id"], second["id"]);
    let snap = api.store.snapshot_source("prod-eu").await.unwrap().unwrap();
    assert!(
        !snap.consumers[0]
            .keys
            .iter()
            .any(|k| k.hash == switchyard_model::governance::key_hash(&key))
    );
    let (s, b) = api
        .delete(&format!("/consumers/billing-app/keys/{id}"))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    let (s, b) = api.delete("/consumers/billing-app/keys/not-a-uuid").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    // Delete: the consumer and its keys go.
    let (s, _) = api.delete("/consumers/billing-app").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api.get("/consumers/billing-app").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    assert!(
        api.store
            .snapshot_source("prod-eu")
            .await
            .unwrap()
            .unwrap()
            .consumers
            .is_empty()
    );
    let (s, b) = api.post("/consumers/billing-app/keys", json!({})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn bad_governance_input_is_refused_and_stores_nothing() {
    let api = Api::start(Limits::default()).await;
    let proxy_id = gateway_with_a_proxy(&api).await;
    let v0 = gateway_version(&api).await;
    let limit = |l: Value| json!({"name": "app", "proxies": ["*"], "rate_limits": [l]});
    let seventeen: Vec<Value> = (0..17)
        .map(|i| json!({"name": format!("l{i}"), "requests": 5, "window": "1m"}))
        .collect();
    let missing = uuid::Uuid::new_v4().to_string();
    let consumer_cases: Vec<(Value, &str, &str)> = vec![
        (
            limit(json!({"name": "t", "tokens": 10, "window": "1w"})),
            "invalid_value",
            "rate_limits[0].window",
        ),
        (
            limit(json!({"name": "t", "tokens": 0, "window": "1h"})),
            "invalid_value",
            "rate_limits[0].tokens",
        ),
        (
            limit(json!({"name": "t", "requests": -3, "window": "1h"})),
            "invalid_value",
            "rate_limits[0].requests",
        ),
        (
            limit(
                json!({"name": "t", "requests": 3, "window": "1h", "key": "#[attributes.nope['x']]"}),
            ),
            "invalid_value",
            "rate_limits[0].key",
        ),
        (
            limit(json!({"name": "t", "requests": 3, "tokens": 3, "window": "1h"})),
            "rule_violated",
            "rate_limits[0]",
        ),
        (
            json!({"name": "app", "proxies": ["*"], "rate_limits": seventeen}),
            "limit_exceeded",
            "rate_limits",
        ),
        (
            json!({"name": "app", "proxies": [proxy_id, missing]}),
            "invalid_value",
            "proxies[1]",
        ),
        (
            json!({"name": "app", "proxies": ["not-an-id"]}),
            "invalid_value",
            "proxies[0]",
        ),
        (
            json!({"name": "app", "proxies": ["*"], "budget": {"usd": -1, "period": "day"}}),
            "invalid_value",
            "budget.usd",
        ),
        (
            json!({"name": "app", "proxies": ["*"], "budget": {"usd": 1, "period": "week"}}),
            "invalid_value",
            "budget.period",
        ),
        (
            json!({"name": "bad name", "proxies": ["*"]}),
            "invalid_value",
            "name",
        ),
    ];
    for (body, code, field) in consumer_cases {
        let (s, b) = api.post("/consumers", body.clone()).await;
        assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, code, Some(field));
    }
    let (s, b) = api
        .post(
            "/consumers",
            json!({"name": "app", "proxies": ["*"], "owner": "x"}),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "malformed", Some("owner"));
    let (s, b) = api.post("/consumers", json!({"name": "app"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (_, list) = api.get("/consumers").await;
    assert_eq!(list, json!([]), "nothing stored");
    assert_eq!(gateway_version(&api).await, v0, "no gateway bumped");

    // The same rules on a proxy's limits and budget.
    let (_, before) = api.get(&format!("/proxies/{proxy_id}")).await;
    let proxy_cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([{"name": "t", "tokens": 10, "window": "10y"}]),
            "invalid_value",
            "rate_limits[0].window",
        ),
        (
            json!([{"name": "t", "requests": 0, "window": "1m"}]),
            "invalid_value",
            "rate_limits[0].requests",
        ),
        (
            json!([{"name": "t", "requests": 1, "window": "1m", "key": "#[oops"}]),
            "invalid_value",
            "rate_limits[0].key",
        ),
        (
            json!(
                (0..17)
                    .map(|i| json!({"name": format!("l{i}"), "requests": 5, "window": "1m"}))
                    .collect::<Vec<_>>()
            ),
            "limit_exceeded",
            "rate_limits",
        ),
    ];
    for (limits, code, field) in proxy_cases {
        let mut body = proxy("support", "/support");
        body["rate_limits"] = limits;
        let (s, b) = api.put(&format!("/proxies/{proxy_id}"), body.clone()).await;
        assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, code, Some(field));
        let mut other = body;
        other["name"] = json!("other");
        other["base_path"] = json!("/other");
        let (s, b) = api.post("/proxies", other).await;
        assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, code, Some(field));
    }
    let mut body = proxy("support", "/support");
    body["budget"] = json!({"usd": -0.5, "period": "month"});
    let (s, b) = api.put(&format!("/proxies/{proxy_id}"), body).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        Some("budget.usd"),
    );
    let (_, after) = api.get(&format!("/proxies/{proxy_id}")).await;
    assert_eq!(after, before, "the proxy is unchanged");
    let (_, proxies) = api.get("/proxies").await;
    assert_eq!(proxies.as_array().unwrap().len(), 1, "no proxy created");
    assert_eq!(gateway_version(&api).await, v0);

    // Keys: an expiry in the past or not a time, a body of the wrong shape.
    api.post("/consumers", json!({"name": "app", "proxies": ["*"]}))
        .await;
    let v1 = gateway_version(&api).await;
    for (body, status, code) in [
        (
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
        (
            json!({"expires_at": "tomorrow"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
    ] {
        let (s, b) = api.post("/consumers/app/keys", body).await;
        assert_error(s, &b, status, code, Some("expires_at"));
    }
    let (s, b) = api.post("/consumers/app/keys", json!({"expires": 1})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "malformed", Some("expires"));
    let (_, read) = api.get("/consumers/app").await;
    assert_eq!(read["keys"], json!([]), "no key stored");
    assert_eq!(gateway_version(&api).await, v1);
}

#[tokio::test]
async fn prices_are_seeded_and_editable_by_model_name() {
    let api = Api::start(Limits::default()).await;
    let (s, table) = api.get("/prices").await;
    assert_eq!(s, StatusCode::OK);
    let table = table.as_array().unwrap();
    let bundled = crate::store::bundled_prices().unwrap();
    assert_eq!(table.len(), bundled.len());
    let gpt41 = table.iter().find(|p| p["model"] == "gpt-4.1").unwrap();
    assert_eq!(
        gpt41,
        &json!({"model": "gpt-4.1", "input_per_mtok": 2.0, "output_per_mtok": 8.0, "cached_input_per_mtok": 0.5})
    );
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    let v0 = gateway_version(&api).await;

    // Model names with '.', ':' and '/' are one path parameter.
    for model in [
        "anthropic.claude-3-haiku-20240307-v1:0",
        "anthropic/us.anthropic.claude-3-haiku-20240307-v1:0",
        "nvidia/llama-3.3-nemotron-super-49b-v1",
    ] {
        let body = json!({"input_per_mtok": 0.25, "output_per_mtok": 1.25});
        let (s, b) = api.put(&format!("/prices/{model}"), body.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{model}: {b}");
        assert_eq!(
            b,
            json!({"model": model, "input_per_mtok": 0.25, "output_per_mtok": 1.25})
        );
        let (s, b) = api.put(&format!("/prices/{model}"), json!({"model": model, "input_per_mtok": 0.3, "output_per_mtok": 1.5, "cached_input_per_mtok": 0.03})).await;
        assert_eq!(s, StatusCode::OK, "{model}: {b}");
        let (s, b) = api.get(&format!("/prices/{model}")).await;
        assert_eq!(s, StatusCode::OK, "{model}");
        assert_eq!(b["cached_input_per_mtok"], 0.03);
    }
    assert_eq!(
        gateway_version(&api).await,
        v0 + 6,
        "every price write reaches every gateway"
    );

    // Bad prices: refused with the field, nothing stored.
    let model = "gpt-new";
    for (body, status, field) in [
        (
            json!({"input_per_mtok": -1, "output_per_mtok": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "input_per_mtok",
        ),
        (
            json!({"input_per_mtok": 1, "output_per_mtok": 1e13}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "output_per_mtok",
        ),
        (
            json!({"input_per_mtok": 1, "output_per_mtok": 2, "cached_input_per_mtok": -0.5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cached_input_per_mtok",
        ),
        (
            json!({"model": "other", "input_per_mtok": 1, "output_per_mtok": 2}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "model",
        ),
        (
            json!({"input_per_mtok": "1", "output_per_mtok": 2}),
            StatusCode::BAD_REQUEST,
            "input_per_mtok",
        ),
        (json!({"input_per_mtok": 1}), StatusCode::BAD_REQUEST, ""),
    ] {
        let (s, b) = api.put(&format!("/prices/{model}"), body.clone()).await;
        assert_eq!(s, status, "{body}: {b}");
        if !field.is_empty() {
            assert_eq!(b["error"]["field"], field, "{body}: {b}");
        }
    }
    // A price that is not a finite number (JSON cannot say NaN; 1e400 overflows).
    let (s, b) = api
        .put_raw(
            &format!("/prices/{model}"),
            "application/json",
            r#"{"input_per_mtok": 1e400, "output_per_mtok": 1}"#,
        )
        .await;
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
        "{b}"
    );
    assert_eq!(b["error"]["field"], "input_per_mtok", "{b}");
    let (s, b) = api
        .put(
            "/prices/bad%20name",
            json!({"input_per_mtok": 1, "output_per_mtok": 1}),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        Some("model"),
    );
    let (s, _) = api.get(&format!("/prices/{model}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing stored");
    assert_eq!(gateway_version(&api).await, v0 + 6, "no gateway bumped");

    let (s, _) = api.delete("/prices/gpt-4.1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api.delete("/prices/gpt-4.1").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    let (_, table) = api.get("/prices").await;
    assert!(
        !table
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["model"] == "gpt-4.1")
    );
}
