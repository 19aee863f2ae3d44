//! The admin REST API (`/api/v1`), plus `/healthz`, `/readyz` and `/metrics`.

mod error;
mod semantic_services;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use switchyard_model::{
    ErrorCode, Limits, Proxy, ProxySpec, ValidationError, parse_proxy_input, validate_gateway_name,
};
use uuid::Uuid;

pub use error::ApiError;

use crate::crypto::Keyring;
use crate::distribute::hash_token;
use crate::distribute::hub::Hub;
use crate::store::{GatewayRecord, Store};

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest admin request body (large enough for raised utterance limits).
const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct AppState {
    pub store: Arc<Store>,
    pub keyring: Arc<Keyring>,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    /// `None` only with `--insecure-no-auth`.
    pub admin_token: Option<String>,
    pub node_stale_after: Duration,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/gateways", get(list_gateways).post(create_gateway))
        .route("/gateways/{name}", get(get_gateway).delete(delete_gateway))
        .route("/gateways/{name}/registration-token", post(rotate_token))
        .route("/proxies", get(list_proxies).post(create_proxy))
        .route(
            "/proxies/{id}",
            get(get_proxy).put(update_proxy).delete(delete_proxy),
        )
        .route(
            "/semantic-services",
            get(semantic_services::list).post(semantic_services::create),
        )
        .route(
            "/semantic-services/{name}",
            get(semantic_services::get)
                .put(semantic_services::update)
                .delete(semantic_services::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(record_metrics))
        .with_state(state)
}

async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = &state.admin_token else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => {
            next.run(req).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("switchyard_control_plane_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("switchyard_control_plane_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
        }
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
        )
            .into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ---- gateways ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGateway {
    name: String,
}

#[derive(Serialize)]
struct NodeView {
    id: String,
    address: String,
    connected: bool,
    applied_version: Option<u64>,
    last_seen: chrono::DateTime<chrono::Utc>,
    software_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

#[derive(Serialize)]
struct GatewayView {
    id: String,
    name: String,
    /// The version of the gateway's configuration (bumped by every change of its proxies or
    /// of a semantic service they name).
    config_version: u64,
    proxies: u64,
    nodes: Vec<NodeView>,
    created_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_token: Option<String>,
}

pub(crate) fn new_registration_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "syreg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn parse_strict<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ValidationError::new(
            ErrorCode::Malformed,
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    de.end()
        .map_err(|e| ValidationError::new(ErrorCode::Malformed, "", e.to_string()))?;
    Ok(value)
}

async fn gateway_view(state: &AppState, g: GatewayRecord) -> Result<GatewayView, ApiError> {
    let nodes = state
        .store
        .list_nodes(&g.name, state.node_stale_after)
        .await?
        .into_iter()
        .map(|n| NodeView {
            id: n.node_id,
            address: n.address,
            connected: n.connected,
            applied_version: n.applied_version,
            last_seen: n.last_seen,
            software_version: n.software_version,
            last_error: n.last_error,
        })
        .collect();
    Ok(GatewayView {
        id: g.id,
        name: g.name,
        config_version: g.config_version,
        proxies: g.proxies,
        nodes,
        created_at: g.created_at,
        registration_token: None,
    })
}

async fn create_gateway(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: CreateGateway = parse_strict(&body)?;
    validate_gateway_name("name", &input.name)?;
    let token = new_registration_token();
    let record = state
        .store
        .create_gateway(&input.name, &hash_token(&token))
        .await?;
    tracing::info!(gateway = %record.name, "gateway created");
    let mut view = gateway_view(&state, record).await?;
    view.registration_token = Some(token);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list_gateways(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<GatewayView>>, ApiError> {
    let mut out = Vec::new();
    for g in state.store.list_gateways().await? {
        out.push(gateway_view(&state, g).await?);
    }
    Ok(Json(out))
}

async fn get_gateway(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<GatewayView>, ApiError> {
    let g = state
        .store
        .get_gateway(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("gateway"))?;
    Ok(Json(gateway_view(&state, g).await?))
}

async fn delete_gateway(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_gateway(&name).await?;
    state.hub.notify(&name);
    tracing::info!(gateway = %name, "gateway deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new registration token; the old one stops working for new connections.
async fn rotate_token(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let token = new_registration_token();
    state
        .store
        .set_gateway_token(&name, &hash_token(&token))
        .await?;
    tracing::info!(gateway = %name, "registration token rotated");
    Ok(Json(json!({"name": name, "registration_token": token})))
}

// ---- proxies ----------------------------------------------------------------------------------

fn view(proxy: Proxy) -> Proxy {
    Proxy {
        spec: proxy.spec.redacted(),
        ..proxy
    }
}

fn decrypt(state: &AppState, spec: ProxySpec) -> Result<ProxySpec, ApiError> {
    spec.try_map_secrets(|s| state.keyring.decrypt(&s))
        .map_err(|e| ApiError::internal("cannot decrypt a stored secret", e))
}

fn encrypt(state: &AppState, spec: ProxySpec) -> ProxySpec {
    match spec.try_map_secrets(|s| Ok::<_, std::convert::Infallible>(state.keyring.encrypt(&s))) {
        Ok(spec) => spec,
        Err(never) => match never {},
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("proxy"))
}

async fn create_proxy(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = parse_proxy_input(&body)?;
    let spec = input.validate(&state.limits, None)?;
    let gateway = spec.gateway.clone();
    let proxy = state
        .store
        .create_proxy(&encrypt(&state, spec), &state.limits)
        .await?;
    state.hub.notify(&gateway);
    tracing::info!(proxy = %proxy.id, name = %proxy.spec.name, gateway = %gateway, "proxy created");
    Ok((StatusCode::CREATED, Json(view(proxy))).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    gateway: Option<String>,
}

async fn list_proxies(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Proxy>>, ApiError> {
    let proxies = state.store.list_proxies(q.gateway.as_deref()).await?;
    Ok(Json(proxies.into_iter().map(view).collect()))
}

async fn get_proxy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Proxy>, ApiError> {
    let proxy = state
        .store
        .get_proxy(parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("proxy"))?;
    Ok(Json(view(proxy)))
}

/// The version a PUT replaces: from the body's `version` or the `If-Match` header (both
/// given must agree), if either is.
pub(crate) fn expected_version(
    body: Option<u64>,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    match (body, if_match(headers)?) {
        (Some(a), Some(b)) if a != b => {
            Err(ValidationError::rule("version", "differs from the If-Match header").into())
        }
        (a, b) => Ok(a.or(b)),
    }
}

/// `If-Match: "3"` (or `3`) names the version a `PUT` replaces, like `version` in the body.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ValidationError::new(
                ErrorCode::Malformed,
                "If-Match",
                "must be the version the write replaces, e.g. \"3\"",
            )
            .into()
        })
}

async fn update_proxy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Proxy>, ApiError> {
    let id = parse_id(&id)?;
    let input = parse_proxy_input(&body)?;
    if input.id.is_some_and(|body_id| body_id != id) {
        return Err(ValidationError::rule("id", "does not match the proxy id in the path").into());
    }
    let expected = expected_version(input.version, &headers)?;
    let stored = state
        .store
        .get_proxy(id)
        .await?
        .ok_or_else(|| ApiError::not_found("proxy"))?;
    let previous = decrypt(&state, stored.spec)?;
    let spec = input.validate(&state.limits, Some(&previous))?;
    let old_gateway = previous.gateway.clone();
    let proxy = state
        .store
        .update_proxy(id, &encrypt(&state, spec), expected)
        .await?;
    state.hub.notify(&old_gateway);
    tracing::info!(proxy = %proxy.id, version = proxy.version, "proxy updated");
    Ok(Json(view(proxy)))
}

async fn delete_proxy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let proxy = state.store.delete_proxy(parse_id(&id)?).await?;
    state.hub.notify(&proxy.spec.gateway);
    tracing::info!(proxy = %proxy.id, name = %proxy.spec.name, "proxy deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests;
