//! Roles (every endpoint × every kind of caller, from the endpoint table the router is built
//! from), the OpenAPI document's `x-required-role`, admin tokens, the audit trail (both
//! stores) and the failed-authentication throttle.

use std::time::Duration;

use reqwest::{Method as HttpMethod, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchyard_model::Limits;
use switchyard_testkit::pg::PgDatabase;

use super::tests::{Api, TOKEN, capture_logs, embed_eu, proxy};
use super::{METRICS_ROLE, OPENAPI, Required, Role, ThrottleConfig, endpoints};

/// A request as the holder of `token` (`None`: no `Authorization`), with `x-request-id`.
async fn call_as(
    api: &Api,
    token: Option<&str>,
    method: HttpMethod,
    path: &str,
    body: Option<Value>,
    request_id: Option<&str>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let url = if path == "/metrics" {
        format!("{}/metrics", api.base.trim_end_matches("/api/v1"))
    } else {
        format!("{}{path}", api.base)
    };
    let mut req = api.http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

/// A new admin token (as `bootstrap`).
async fn new_token(api: &Api, name: &str, role: &str, gateways: &[&str]) -> String {
    let (s, b) = api
        .post(
            "/admin-tokens",
            json!({"name": name, "role": role, "gateways": gateways}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["token"].as_str().unwrap().to_owned()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

// ---- the endpoint table against the OpenAPI document --------------------------------------

fn doc_path(path: &str) -> String {
    path.replace("{*model}", "{model}")
}

#[test]
fn openapi_lists_every_endpoint_with_its_role() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let table = endpoints();
    for e in &table {
        let op = &doc["paths"][doc_path(e.path)][e.method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {} is not documented", e.method, e.path);
        assert_eq!(
            op["x-required-role"],
            e.required.as_str(),
            "{} {}",
            e.method,
            e.path
        );
        let description = op["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(e.required.as_str()) || e.required == Required::Nothing,
            "{} {}: the description does not name the role: {description}",
            e.method,
            e.path
        );
        let responses = &op["responses"];
        match e.required {
            Required::Role(Role::Admin | Role::Editor) => {
                assert!(
                    responses["403"].is_object(),
                    "{} {}: no 403",
                    e.method,
                    e.path
                );
            }
            _ => assert!(responses["403"].is_null(), "{} {}: 403", e.method, e.path),
        }
        assert_eq!(
            responses["429"].is_object(),
            e.required != Required::Nothing,
            "{} {}",
            e.method,
            e.path
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        table.len(),
        "an operation the router does not serve is documented"
    );
}

// ---- every endpoint × every kind of caller ------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    Viewer,
    /// An editor of another gateway than the proxy's.
    EditorElsewhere,
    /// An editor of the proxy's gateway.
    EditorHere,
    Admin,
    Bootstrap,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Allowed,
    Unauthorized,
    Forbidden,
}

fn expected(required: Required, who: Who) -> Expect {
    let role = match who {
        Who::Nobody => {
            return if required == Required::Nothing {
                Expect::Allowed
            } else {
                Expect::Unauthorized
            };
        }
        Who::Viewer => Role::Viewer,
        // An editor of another gateway may not write this proxy.
        Who::EditorElsewhere if required == Required::Role(Role::Editor) => {
            return Expect::Forbidden;
        }
        Who::EditorElsewhere | Who::EditorHere => Role::Editor,
        Who::Admin | Who::Bootstrap => Role::Admin,
    };
    match required {
        Required::Role(needed) if role < needed => Expect::Forbidden,
        _ => Expect::Allowed,
    }
}

/// The path of `template` naming things the matrix's setup created.
fn concrete(template: &str, proxy_id: &str) -> String {
    let name = match template.split('/').nth(1).unwrap_or_default() {
        "gateways" => "prod-eu",
        "semantic-services" => "embed-eu",
        "topics" => "billing",
        "consumers" => "app",
        "admin-tokens" => "nobody",
        _ => "unused",
    };
    let id = if template.starts_with("/proxies") {
        proxy_id.to_owned()
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    template
        .replace("{*model}", "gpt-4.1")
        .replace("{name}", name)
        .replace("{id}", &id)
}

fn body_for(method: &HttpMethod, template: &str) -> Option<Value> {
    match (method.as_str(), template) {
        ("POST", "/proxies") => Some(proxy("other", "/other")),
        ("PUT", "/proxies/{id}") => Some(proxy("support", "/support-2")),
        ("POST" | "PUT", _) => Some(json!({})),
        _ => None,
    }
}

#[tokio::test]
async fn every_endpoint_refuses_every_caller_without_its_role() {
    let mut table: Vec<(HttpMethod, String, Required)> = endpoints()
        .into_iter()
        .map(|e| (e.method, e.path.to_owned(), e.required))
        .collect();
    table.push((HttpMethod::GET, "/metrics".into(), METRICS_ROLE));
    for (method, template, required) in table {
        // A fresh control plane per endpoint: what one caller's allowed write does cannot
        // change what the next caller gets.
        let api = Api::start(Limits::default()).await;
        api.post("/gateways", json!({"name": "prod-eu"})).await;
        api.post("/gateways", json!({"name": "prod-us"})).await;
        let (s, p) = api.post("/proxies", proxy("support", "/support")).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let proxy_id = p["id"].as_str().unwrap().to_owned();
        let viewer = new_token(&api, "ro", "viewer", &[]).await;
        let elsewhere = new_token(&api, "ed-us", "editor", &["prod-us"]).await;
        let here = new_token(&api, "ed-eu", "editor", &["prod-eu"]).await;
        let admin = new_token(&api, "root", "admin", &[]).await;
        let path = concrete(&template, &proxy_id);
        for (who, token) in [
            (Who::Nobody, None),
            (Who::Viewer, Some(viewer.as_str())),
            (Who::EditorElsewhere, Some(elsewhere.as_str())),
            (Who::EditorHere, Some(here.as_str())),
            (Who::Admin, Some(admin.as_str())),
            (Who::Bootstrap, Some(TOKEN)),
        ] {
            let (status, body, _) = call_as(
                &api,
                token,
                method.clone(),
                &path,
                body_for(&method, &template),
                None,
            )
            .await;
            let what = format!("{method} {path} as {who:?} ({required:?}): {status} {body}");
            match expected(required, who) {
                Expect::Unauthorized => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                }
                Expect::Forbidden => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                    assert_eq!(body["error"]["code"], "forbidden", "{what}");
                    let message = body["error"]["message"].as_str().unwrap_or_default();
                    assert!(
                        message.contains(&format!("{} role", required.as_str())),
                        "the refusal does not name the role: {what}"
                    );
                }
                Expect::Allowed => {
                    assert!(
                        !matches!(
                            status,
                            StatusCode::UNAUTHORIZED
                                | StatusCode::FORBIDDEN
                                | StatusCode::METHOD_NOT_ALLOWED
                                | StatusCode::TOO_MANY_REQUESTS
                        ) && body["error"]["message"] != "no such endpoint",
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_role_table_says_what_the_readme_says() {
    // Reads need viewer, proxy writes editor, every other write admin; only the document
    // itself is public.
    for e in endpoints() {
        let want = match (e.method.as_str(), e.path) {
            (_, "/openapi.json") => Required::Nothing,
            ("GET", _) => Required::Role(Role::Viewer),
            (_, p) if p.starts_with("/proxies") => Required::Role(Role::Editor),
            _ => Required::Role(Role::Admin),
        };
        assert_eq!(e.required, want, "{} {}", e.method, e.path);
    }
}

// ---- admin tokens --------------------------------------------------------------------------

#[tokio::test]
async fn admin_tokens_are_shown_once_stored_hashed_scoped_and_revocable() {
    let api = Api::start(Limits::default()).await;
    api.post("/gateways", json!({"name": "prod-eu"})).await;
    api.post("/gateways", json!({"name": "prod-us"})).await;
    let (s, created) = api
        .post(
            "/admin-tokens",
            json!({"name": "ci", "role": "editor", "gateways": ["prod-eu"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("syadm_") && token.len() >= 48, "{token}");
    assert_eq!(created["prefix"], &token[..12]);
    assert_eq!(
        (
            &created["role"],
            &created["gateways"],
            &created["created_by"]
        ),
        (&json!("editor"), &json!(["prod-eu"]), &json!("bootstrap"))
    );

    // Listed without the secret or its hash; stored as the hash only.
    let (s, list) = api.get("/admin-tokens").await;
    assert_eq!(s, StatusCode::OK);
    let text = list.to_string();
    assert!(
        !text.contains(&token) && !text.contains(&sha256_hex(&token)),
        "{text}"
    );
    assert_eq!(list[0]["name"], "ci");
    assert!(list[0].get("token").is_none() && list[0].get("hash").is_none());
    let stored = api
        .store
        .find_admin_token(&sha256_hex(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.name, "ci");

    // The editor writes proxies of its gateway only, and reads everything.
    let as_ci = |m, p: &str, b| {
        let p = p.to_owned();
        let token = token.clone();
        let api = &api;
        async move { call_as(api, Some(&token), m, &p, b, None).await }
    };
    let (s, b, _) = as_ci(HttpMethod::POST, "/proxies", Some(proxy("a", "/a"))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let mut us = proxy("b", "/b");
    us["gateway"] = json!("prod-us");
    let (s, b, _) = as_ci(HttpMethod::POST, "/proxies", Some(us)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("editor role on gateway 'prod-us'"),
        "{b}"
    );
    let (s, b, _) = as_ci(HttpMethod::POST, "/gateways", Some(json!({"name": "x"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, _, _) = as_ci(HttpMethod::GET, "/consumers", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = as_ci(HttpMethod::GET, "/audit", None).await;
    assert_eq!(s, StatusCode::OK);
    // Its use is noted.
    let (_, list) = api.get("/admin-tokens").await;
    assert!(list[0]["last_used_at"].is_string(), "{list}");

    // Refused input names the field.
    for (body, status, field) in [
        (json!({"name": "x", "role": "root"}), 422, "role"),
        (json!({"name": "x", "role": "editor"}), 422, "gateways"),
        (
            json!({"name": "x", "role": "viewer", "gateways": ["prod-eu"]}),
            422,
            "gateways",
        ),
        (
            json!({"name": "x", "role": "editor", "gateways": ["nope"]}),
            422,
            "gateways[0]",
        ),
        (
            json!({"name": "x", "role": "editor", "gateways": ["prod-eu", "prod-eu"]}),
            422,
            "gateways[1]",
        ),
        (json!({"name": "Bad Name", "role": "viewer"}), 422, "name"),
        (json!({"name": "bootstrap", "role": "admin"}), 422, "name"),
        (
            json!({"name": "x", "role": "viewer", "colour": 1}),
            400,
            "colour",
        ),
    ] {
        let (s, b) = api.post("/admin-tokens", body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body}: {b}");
        assert_eq!(b["error"]["field"], field, "{body}: {b}");
    }
    let (s, b) = api
        .post("/admin-tokens", json!({"name": "ci", "role": "viewer"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, b) = api.delete("/admin-tokens/bootstrap").await;
    assert_eq!(
        (s, &b["error"]["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("name")),
        "{b}"
    );
    let (s, _) = api.delete("/admin-tokens/nobody").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Revoked: refused at once; the name may be used again.
    let (s, _) = api.delete("/admin-tokens/ci").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b, _) = as_ci(HttpMethod::GET, "/gateways", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = api.get("/admin-tokens").await;
    assert_eq!((s, b), (StatusCode::OK, json!([])));
    let again = new_token(&api, "ci", "viewer", &[]).await;
    assert_ne!(again, token);
}

#[tokio::test]
async fn without_auth_every_caller_is_the_anonymous_admin() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cp.db", dir.path().display());
    let api = Api::start_on(
        &url,
        Limits::default(),
        None,
        ThrottleConfig::default(),
        Some(dir),
    )
    .await;
    let (s, b, _) = call_as(
        &api,
        None,
        HttpMethod::POST,
        "/gateways",
        Some(json!({"name": "prod-eu"})),
        Some("rid-1"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b, _) = call_as(
        &api,
        Some("anything"),
        HttpMethod::GET,
        "/audit",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["entries"][0]["actor"], "anonymous");
    assert_eq!(b["entries"][0]["request_id"], "rid-1");
}

// ---- the audit trail -----------------------------------------------------------------------

/// Every entry, newest first, read through the API in pages of 7 (checks the paging too).
async fn all_entries(api: &Api) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/audit?limit=7&cursor={c}"),
            None => "/audit?limit=7".to_owned(),
        };
        let (s, page) = api.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 7);
        out.extend(entries.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let order: Vec<(chrono::DateTime<chrono::Utc>, i64)> = out
        .iter()
        .map(|e| {
            (
                e["at"].as_str().unwrap().parse().unwrap(),
                e["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] > w[1]),
        "newest first, once each: {order:?}"
    );
    out
}

struct Trail<'a> {
    api: &'a Api,
    seen: usize,
    step: usize,
}

impl Trail<'_> {
    /// A write that must leave exactly one entry: `action` on `resource` by `actor`, with the
    /// request's id.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request, then the entry it must leave"
    )]
    async fn write(
        &mut self,
        token: &str,
        method: HttpMethod,
        path: &str,
        body: Option<Value>,
        action: &str,
        resource: &str,
        actor: &str,
    ) -> (Value, Value) {
        self.step += 1;
        let rid = format!("req-{}", self.step);
        let (s, b, headers) = call_as(
            self.api,
            Some(token),
            method.clone(),
            path,
            body,
            Some(&rid),
        )
        .await;
        assert!(s.is_success(), "{method} {path}: {s} {b}");
        assert_eq!(headers["x-request-id"], rid.as_str());
        let entries = all_entries(self.api).await;
        assert_eq!(
            entries.len(),
            self.seen + 1,
            "{method} {path} left {} entries",
            entries.len() - self.seen
        );
        self.seen += 1;
        let e = entries[0].clone();
        // `{}` at the end: an id the write makes.
        let got = e["resource"].as_str().unwrap_or_default();
        match resource.strip_suffix("{}") {
            Some(prefix) => assert!(got.starts_with(prefix) && got.len() > prefix.len(), "{e}"),
            None => assert_eq!(got, resource, "{method} {path}: {e}"),
        }
        assert_eq!(
            (
                e["action"].as_str(),
                e["actor"].as_str(),
                e["request_id"].as_str()
            ),
            (Some(action), Some(actor), Some(rid.as_str())),
            "{method} {path}: {e}"
        );
        assert!(e["at"].is_string());
        match action {
            "create" => assert!(e["before"].is_null() && e["after"].is_object(), "{e}"),
            "update" | "rotate" => {
                assert!(e["before"].is_object() && e["after"].is_object(), "{e}")
            }
            _ => assert!(e["before"].is_object() && e["after"].is_null(), "{e}"),
        }
        (b, e)
    }

    /// A write that must be refused with `status` and leave no entry.
    async fn refused(
        &mut self,
        token: &str,
        method: HttpMethod,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) {
        let (s, b, _) = call_as(self.api, Some(token), method.clone(), path, body, None).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {b}");
        let entries = all_entries(self.api).await;
        assert_eq!(
            entries.len(),
            self.seen,
            "the refused {method} {path} left an entry"
        );
    }
}

async fn every_write_leaves_one_entry_without_secrets(api: &Api) {
    use HttpMethod as M;
    let mut t = Trail {
        api,
        seen: 0,
        step: 0,
    };
    let mut secrets: Vec<String> = Vec::new();

    let (b, e) = t
        .write(
            TOKEN,
            M::POST,
            "/gateways",
            Some(json!({"name": "prod-eu"})),
            "create",
            "gateway/prod-eu",
            "bootstrap",
        )
        .await;
    assert_eq!(e["after"]["registration_token"], "***");
    secrets.push(b["registration_token"].as_str().unwrap().to_owned());
    t.refused(
        TOKEN,
        M::POST,
        "/gateways",
        Some(json!({"name": "prod-eu"})),
        409,
    )
    .await;
    t.refused(
        TOKEN,
        M::POST,
        "/gateways",
        Some(json!({"name": "Bad Name"})),
        422,
    )
    .await;
    t.refused(
        TOKEN,
        M::POST,
        "/gateways",
        Some(json!({"name": "x", "colour": 1})),
        400,
    )
    .await;
    let (b, e) = t
        .write(
            TOKEN,
            M::POST,
            "/gateways/prod-eu/registration-token",
            None,
            "rotate",
            "gateway/prod-eu",
            "bootstrap",
        )
        .await;
    assert_eq!(
        (
            &e["before"]["registration_token"],
            &e["after"]["registration_token"]
        ),
        (&json!("***"), &json!("***"))
    );
    secrets.push(b["registration_token"].as_str().unwrap().to_owned());
    t.refused(
        TOKEN,
        M::POST,
        "/gateways/nope/registration-token",
        None,
        404,
    )
    .await;

    let (_, e) = t
        .write(
            TOKEN,
            M::POST,
            "/semantic-services",
            Some(embed_eu()),
            "create",
            "semantic-service/embed-eu",
            "bootstrap",
        )
        .await;
    assert_eq!(e["after"]["api_key"], "***");
    secrets.push("sk-embed-very-secret".into());
    let mut service = embed_eu();
    service["api_key"] = json!("sk-embed-second-secret");
    service["model"] = json!("text-embedding-3-large");
    let (_, e) = t
        .write(
            TOKEN,
            M::PUT,
            "/semantic-services/embed-eu",
            Some(service.clone()),
            "update",
            "semantic-service/embed-eu",
            "bootstrap",
        )
        .await;
    assert_eq!(
        (&e["before"]["model"], &e["after"]["model"]),
        (
            &json!("text-embedding-3-small"),
            &json!("text-embedding-3-large")
        )
    );
    assert_eq!(
        (&e["before"]["api_key"], &e["after"]["api_key"]),
        (&json!("***"), &json!("***"))
    );
    secrets.push("sk-embed-second-secret".into());
    service["version"] = json!(1);
    t.refused(
        TOKEN,
        M::PUT,
        "/semantic-services/embed-eu",
        Some(service),
        409,
    )
    .await;

    t.write(
        TOKEN,
        M::POST,
        "/topics",
        Some(json!({"name": "billing", "utterances": ["How do I pay?"]})),
        "create",
        "topic/billing",
        "bootstrap",
    )
    .await;
    let (_, e) = t
        .write(
            TOKEN,
            M::PUT,
            "/topics/billing",
            Some(
                json!({"name": "billing", "description": "money", "utterances": ["How do I pay?"]}),
            ),
            "update",
            "topic/billing",
            "bootstrap",
        )
        .await;
    assert_eq!(e["after"]["description"], "money");
    t.refused(
        TOKEN,
        M::PUT,
        "/topics/billing",
        Some(json!({"name": "billing", "utterances": []})),
        422,
    )
    .await;
    let (s, b) = api
        .put_raw("/topics/billing/utterances", "text/plain", "one\ntwo\n")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let entries = all_entries(api).await;
    assert_eq!(entries.len(), t.seen + 1);
    t.seen += 1;
    assert_eq!(
        (&entries[0]["action"], &entries[0]["resource"]),
        (&json!("update"), &json!("topic/billing"))
    );
    assert_eq!(entries[0]["after"]["utterances"], json!(["one", "two"]));

    let (p, e) = t
        .write(
            TOKEN,
            M::POST,
            "/proxies",
            Some(proxy("support", "/support")),
            "create",
            "proxy/{}",
            "bootstrap",
        )
        .await;
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(e["resource"], format!("proxy/{id}"));
    assert_eq!(e["after"]["routes"][0]["auth"]["api_key"], "***");
    secrets.push("sk-very-secret".into());
    let stored = api
        .store
        .get_proxy(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let encrypted = serde_json::to_value(&stored.spec).unwrap()["routes"][0]["auth"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.push(encrypted);
    let mut second = proxy("support", "/support-v2");
    second["routes"][0]["auth"]["api_key"] = json!("sk-second-secret");
    let (_, e) = t
        .write(
            TOKEN,
            M::PUT,
            &format!("/proxies/{id}"),
            Some(second.clone()),
            "update",
            &format!("proxy/{id}"),
            "bootstrap",
        )
        .await;
    assert_eq!(
        (&e["before"]["base_path"], &e["after"]["base_path"]),
        (&json!("/support"), &json!("/support-v2"))
    );
    assert_eq!(
        (&e["before"]["version"], &e["after"]["version"]),
        (&json!(1), &json!(2))
    );
    secrets.push("sk-second-secret".into());
    second["version"] = json!(1);
    t.refused(TOKEN, M::PUT, &format!("/proxies/{id}"), Some(second), 409)
        .await;
    t.refused(
        TOKEN,
        M::POST,
        "/proxies",
        Some(proxy("support", "/other")),
        409,
    )
    .await;
    t.refused(TOKEN, M::DELETE, "/gateways/prod-eu", None, 409)
        .await;
    t.refused(
        TOKEN,
        M::DELETE,
        &format!("/proxies/{}", uuid::Uuid::new_v4()),
        None,
        404,
    )
    .await;

    t.write(
        TOKEN,
        M::POST,
        "/consumers",
        Some(json!({"name": "app", "proxies": [id]})),
        "create",
        "consumer/app",
        "bootstrap",
    )
    .await;
    t.refused(
        TOKEN,
        M::POST,
        "/consumers",
        Some(json!({"name": "app2", "proxies": [uuid::Uuid::new_v4()]})),
        422,
    )
    .await;
    let (_, e) = t
        .write(
            TOKEN,
            M::PUT,
            "/consumers/app",
            Some(json!({"name": "app", "proxies": ["*"]})),
            "update",
            "consumer/app",
            "bootstrap",
        )
        .await;
    assert_eq!(
        (&e["before"]["proxies"], &e["after"]["proxies"]),
        (&json!([id]), &json!(["*"]))
    );
    let (k, _) = t
        .write(
            TOKEN,
            M::POST,
            "/consumers/app/keys",
            Some(json!({})),
            "create",
            "consumer/app/keys/{}",
            "bootstrap",
        )
        .await;
    let key_id = k["id"].as_str().unwrap().to_owned();
    let key = k["key"].as_str().unwrap().to_owned();
    let entries = all_entries(api).await;
    assert_eq!(
        entries[0]["resource"],
        format!("consumer/app/keys/{key_id}")
    );
    assert_eq!(entries[0]["after"]["key"], "***");
    assert_eq!(entries[0]["after"]["prefix"], k["prefix"]);
    secrets.push(sha256_hex(&key));
    secrets.push(key);
    t.write(
        TOKEN,
        M::DELETE,
        &format!("/consumers/app/keys/{key_id}"),
        None,
        "revoke",
        &format!("consumer/app/keys/{key_id}"),
        "bootstrap",
    )
    .await;
    t.refused(
        TOKEN,
        M::DELETE,
        &format!("/consumers/app/keys/{key_id}"),
        None,
        404,
    )
    .await;

    let price = json!({"input_per_mtok": 1.0, "output_per_mtok": 2.0});
    t.write(
        TOKEN,
        M::PUT,
        "/prices/acme/model-1",
        Some(price),
        "create",
        "price/acme/model-1",
        "bootstrap",
    )
    .await;
    let (_, e) = t
        .write(
            TOKEN,
            M::PUT,
            "/prices/acme/model-1",
            Some(json!({"input_per_mtok": 3.0, "output_per_mtok": 4.0})),
            "update",
            "price/acme/model-1",
            "bootstrap",
        )
        .await;
    assert_eq!(
        (
            &e["before"]["input_per_mtok"],
            &e["after"]["input_per_mtok"]
        ),
        (&json!(1.0), &json!(3.0))
    );
    t.refused(
        TOKEN,
        M::PUT,
        "/prices/acme/model-1",
        Some(json!({"input_per_mtok": -1.0, "output_per_mtok": 4.0})),
        422,
    )
    .await;
    t.write(
        TOKEN,
        M::DELETE,
        "/prices/acme/model-1",
        None,
        "delete",
        "price/acme/model-1",
        "bootstrap",
    )
    .await;
    t.refused(TOKEN, M::DELETE, "/prices/acme/model-1", None, 404)
        .await;

    let (b, e) = t
        .write(
            TOKEN,
            M::POST,
            "/admin-tokens",
            Some(json!({"name": "ci", "role": "editor", "gateways": ["prod-eu"]})),
            "create",
            "admin-token/ci",
            "bootstrap",
        )
        .await;
    assert_eq!(e["after"]["token"], "***");
    let ci = b["token"].as_str().unwrap().to_owned();
    secrets.push(sha256_hex(&ci));
    secrets.push(ci.clone());
    let (b, _) = t
        .write(
            TOKEN,
            M::POST,
            "/admin-tokens",
            Some(json!({"name": "ro", "role": "viewer"})),
            "create",
            "admin-token/ro",
            "bootstrap",
        )
        .await;
    let ro = b["token"].as_str().unwrap().to_owned();
    secrets.push(ro.clone());
    t.refused(
        TOKEN,
        M::POST,
        "/admin-tokens",
        Some(json!({"name": "ci", "role": "viewer"})),
        409,
    )
    .await;
    // Refused for want of a role or of a gateway: no entry.
    t.refused(&ro, M::POST, "/proxies", Some(proxy("p3", "/p3")), 403)
        .await;
    t.refused(&ro, M::DELETE, &format!("/proxies/{id}"), None, 403)
        .await;
    t.refused(
        &ci,
        M::POST,
        "/consumers",
        Some(json!({"name": "c", "proxies": ["*"]})),
        403,
    )
    .await;
    t.refused(&ci, M::DELETE, "/admin-tokens/ro", None, 403)
        .await;
    // Another actor's write is attributed to it.
    let (_, e) = t
        .write(
            &ci,
            M::PUT,
            &format!("/proxies/{id}"),
            Some(proxy("support", "/support-v3")),
            "update",
            &format!("proxy/{id}"),
            "ci",
        )
        .await;
    assert_eq!(e["after"]["base_path"], "/support-v3");
    t.write(
        TOKEN,
        M::DELETE,
        "/admin-tokens/ci",
        None,
        "revoke",
        "admin-token/ci",
        "bootstrap",
    )
    .await;
    t.refused(TOKEN, M::DELETE, "/admin-tokens/ci", None, 404)
        .await;

    t.write(
        TOKEN,
        M::DELETE,
        "/consumers/app",
        None,
        "delete",
        "consumer/app",
        "bootstrap",
    )
    .await;
    let (_, e) = t
        .write(
            TOKEN,
            M::DELETE,
            &format!("/proxies/{id}"),
            None,
            "delete",
            &format!("proxy/{id}"),
            "bootstrap",
        )
        .await;
    assert_eq!(e["before"]["base_path"], "/support-v3");
    t.write(
        TOKEN,
        M::DELETE,
        "/topics/billing",
        None,
        "delete",
        "topic/billing",
        "bootstrap",
    )
    .await;
    t.write(
        TOKEN,
        M::DELETE,
        "/semantic-services/embed-eu",
        None,
        "delete",
        "semantic-service/embed-eu",
        "bootstrap",
    )
    .await;
    let (_, e) = t
        .write(
            TOKEN,
            M::DELETE,
            "/gateways/prod-eu",
            None,
            "delete",
            "gateway/prod-eu",
            "bootstrap",
        )
        .await;
    assert_eq!(e["before"]["registration_token"], "***");

    // No secret anywhere in the trail: not the keys and tokens set, not their hashes, not
    // the stored ciphertext.
    let registration_hashes: Vec<String> = secrets[..2].iter().map(|t| sha256_hex(t)).collect();
    secrets.extend(registration_hashes);
    let trail = Value::Array(all_entries(api).await).to_string();
    for secret in &secrets {
        assert!(
            !trail.contains(secret.as_str()),
            "a secret is in the audit trail: {secret}"
        );
    }
    assert!(trail.contains("***"));

    // Filters.
    let count = |q: &'static str| async move {
        let (s, b) = api.get(&format!("/audit?{q}")).await;
        assert_eq!(s, StatusCode::OK, "{q}: {b}");
        b["entries"].as_array().unwrap().len()
    };
    let (_, b) = api.get("/audit?resource=proxy/*").await;
    assert_eq!(b["entries"].as_array().unwrap().len(), 4, "{b}");
    assert_eq!(count("resource=gateway/prod-eu").await, 3);
    assert_eq!(count("resource=consumer/app*").await, 5);
    assert_eq!(count("actor=ci").await, 1);
    assert_eq!(count("action=revoke").await, 2);
    assert_eq!(count("action=rotate&resource=gateway/prod-eu").await, 1);
    assert_eq!(count("since=2000-01-01T00:00:00Z&limit=1000").await, t.seen);
    assert_eq!(count("until=2000-01-01T00:00:00Z").await, 0);
    assert_eq!(count("since=2999-01-01T00:00:00Z").await, 0);
    for (q, field) in [
        ("since=now", "since"),
        ("limit=0", "limit"),
        ("action=edit", "action"),
        ("cursor=x", "cursor"),
        ("who=me", "who"),
    ] {
        let (s, b) = api.get(&format!("/audit?{q}")).await;
        assert_eq!(
            (s, &b["error"]["field"]),
            (StatusCode::BAD_REQUEST, &json!(field)),
            "{q}: {b}"
        );
    }
}

#[tokio::test]
async fn every_write_leaves_one_entry_without_secrets_on_sqlite() {
    let api = Api::start(Limits::default()).await;
    every_write_leaves_one_entry_without_secrets(&api).await;
}

#[tokio::test]
async fn every_write_leaves_one_entry_without_secrets_on_postgres() {
    let db = PgDatabase::create().await;
    let api = Api::start_on(
        db.url(),
        Limits::default(),
        Some(TOKEN),
        ThrottleConfig::default(),
        None,
    )
    .await;
    every_write_leaves_one_entry_without_secrets(&api).await;
    api.store.close().await;
}

// ---- failed authentications ----------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn failed_authentications_are_logged_without_the_token_and_throttled() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cp.db", dir.path().display());
    let throttle = ThrottleConfig {
        max_failures: 3,
        window: Duration::from_secs(60),
        block: Duration::from_secs(30),
        max_clients: 100,
    };
    let api = Api::start_on(&url, Limits::default(), Some(TOKEN), throttle, Some(dir)).await;
    // Requests without a token guess nothing: refused, logged, not throttled.
    for _ in 0..5 {
        let (s, _, _) = call_as(&api, None, HttpMethod::GET, "/gateways", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, _, _) = call_as(&api, Some(TOKEN), HttpMethod::GET, "/gateways", None, None).await;
    assert_eq!(s, StatusCode::OK);
    // Unknown tokens: the third starts a block, during which even the right token is refused.
    for _ in 0..3 {
        let (s, _, _) = call_as(
            &api,
            Some("guess-0123456789abcdef"),
            HttpMethod::GET,
            "/gateways",
            None,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    for path in ["/gateways", "/metrics"] {
        let (s, b, headers) = call_as(&api, Some(TOKEN), HttpMethod::GET, path, None, None).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
        assert_eq!(b["error"]["code"], "too_many_failures");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
    }
    // The public document and health stay reachable.
    let (s, _, _) = call_as(&api, None, HttpMethod::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        !logs.contains("guess-0123456789abcdef"),
        "a token was logged"
    );
    assert!(!logs.contains(TOKEN), "a token was logged");
    assert_eq!(
        logs.matches("admin request with an unknown or revoked token")
            .count(),
        3,
        "{logs}"
    );
    assert_eq!(
        logs.matches("admin request without a bearer token").count(),
        5,
        "{logs}"
    );
    for line in logs.lines().filter(|l| l.contains("admin request with")) {
        assert!(
            line.contains("127.0.0.1"),
            "the client's address is not logged: {line}"
        );
    }
    assert!(
        logs.contains("too many failed admin authentications"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_refusal_for_want_of_a_role_closes_a_connection_with_an_unread_body() {
    let api = Api::start(Limits::default()).await;
    let viewer = new_token(&api, "ro", "viewer", &[]).await;
    let pad = "a".repeat(200_000);
    let body = format!(r#"{{"name":"x","url":"https://x","model":"m","pad":"{pad}"}}"#);
    let refused = api
        .http
        .post(format!("{}/semantic-services", api.base))
        .bearer_auth(&viewer)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.headers()["connection"], "close");
    // The pool's next request is not read as the rest of that body.
    let (s, _, _) = call_as(
        &api,
        Some(&viewer),
        HttpMethod::GET,
        "/gateways",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}
