//! The admin API over real HTTP, on a throwaway SQLite store.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;

const TOKEN: &str = "admin-secret";

struct Api {
    base: String,
    http: reqwest::Client,
    store: Arc<Store>,
    keyring: Arc<Keyring>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(limits: Limits) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::connect(&format!("sqlite://{}/cp.db", dir.path().display()))
                .await
                .unwrap(),
        );
        let keyring = Arc::new(Keyring::new(&Keyring::generate_key(), &[]).unwrap());
        let state = Arc::new(AppState {
            store: store.clone(),
            keyring: keyring.clone(),
            hub: Arc::new(Hub::default()),
            limits,
            admin_token: Some(TOKEN.into()),
            node_stale_after: Duration::from_secs(30),
            metrics: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        Api {
            base,
            http: reqwest::Client::new(),
            store,
            keyring,
            _dir: dir,
        }
    }

    async fn call(
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

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

fn proxy(name: &str, base_path: &str) -> Value {
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
    assert!(api_key.expose().starts_with("enc:v1:"));
    assert_eq!(
        api.keyring.decrypt(api_key).unwrap().expose(),
        "sk-very-secret"
    );

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
        api.keyring.decrypt(api_key).unwrap().expose(),
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

#[test]
fn openapi_documents_every_route() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    for (path, methods) in [
        ("/gateways", &["get", "post"][..]),
        ("/gateways/{name}", &["get", "delete"]),
        ("/gateways/{name}/registration-token", &["post"]),
        ("/proxies", &["get", "post"]),
        ("/proxies/{id}", &["get", "put", "delete"]),
        ("/openapi.json", &["get"]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "{m} {path} is not documented"
            );
        }
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        6,
        "a documented path the router does not serve"
    );
}
