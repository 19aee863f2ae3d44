//! The admin REST API (`/api/v1`), plus `/healthz`, `/readyz` and `/metrics` (the latter
//! behind a `viewer` token or better, like the API's reads: Prometheus scrapes with
//! `authorization`). Who may call what: [`endpoints`] and `auth.rs`.

mod admin_tokens;
mod audit;
pub mod auth;
mod consumers;
mod error;
mod gateways;
mod prices;
mod proxies;
mod semantic_services;
mod topics;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use switchyard_model::{ErrorCode, Limits, ValidationError};

pub use auth::{AuthThrottle, Caller, ClientAddr, Required, Role, ThrottleConfig};
pub use error::ApiError;
pub(crate) use gateways::new_registration_token;

use crate::crypto::Keyring;
use crate::distribute::hub::Hub;
use crate::store::Store;

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest admin request body (large enough for raised utterance limits).
const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct AppState {
    pub store: Arc<Store>,
    pub keyring: Arc<Keyring>,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    /// The command line's admin token (the admin `bootstrap`); `None` only with
    /// `--insecure-no-auth`.
    pub admin_token: Option<String>,
    /// Failed admin authentications per client address.
    pub auth_throttle: AuthThrottle,
    pub node_stale_after: Duration,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// One endpoint of `/api/v1`: its method and path, the role it requires, and its handler.
/// The router is built from [`endpoints`] alone, so no endpoint can exist without a
/// required role (the OpenAPI document's `x-required-role` is checked against it).
pub(crate) struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub required: Required,
    handler: MethodRouter<Arc<AppState>>,
}

/// An endpoint served by `handler` for `method` (GET, POST, PUT or DELETE).
fn ep<H, T>(method: Method, path: &'static str, required: Required, handler: H) -> Endpoint
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let handler = match method {
        Method::POST => post(handler),
        Method::PUT => put(handler),
        Method::DELETE => delete(handler),
        _ => get(handler),
    };
    Endpoint {
        method,
        path,
        required,
        handler,
    }
}

/// Every endpoint of `/api/v1` with the role it requires. Reads need `viewer`; proxy writes
/// `editor` (on the proxy's gateway, checked by their handlers); every other write `admin`.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use Method as M;
    const NONE: Required = Required::Nothing;
    const VIEWER: Required = Required::Role(Role::Viewer);
    const EDITOR: Required = Required::Role(Role::Editor);
    const ADMIN: Required = Required::Role(Role::Admin);
    vec![
        ep(M::GET, "/openapi.json", NONE, openapi),
        ep(M::GET, "/gateways", VIEWER, gateways::list),
        ep(M::POST, "/gateways", ADMIN, gateways::create),
        ep(M::GET, "/gateways/{name}", VIEWER, gateways::get),
        ep(M::DELETE, "/gateways/{name}", ADMIN, gateways::delete),
        ep(
            M::POST,
            "/gateways/{name}/registration-token",
            ADMIN,
            gateways::rotate_token,
        ),
        ep(M::GET, "/proxies", VIEWER, proxies::list),
        ep(M::POST, "/proxies", EDITOR, proxies::create),
        ep(M::GET, "/proxies/{id}", VIEWER, proxies::get),
        ep(M::PUT, "/proxies/{id}", EDITOR, proxies::update),
        ep(M::DELETE, "/proxies/{id}", EDITOR, proxies::delete),
        ep(
            M::GET,
            "/semantic-services",
            VIEWER,
            semantic_services::list,
        ),
        ep(
            M::POST,
            "/semantic-services",
            ADMIN,
            semantic_services::create,
        ),
        ep(
            M::GET,
            "/semantic-services/{name}",
            VIEWER,
            semantic_services::get,
        ),
        ep(
            M::PUT,
            "/semantic-services/{name}",
            ADMIN,
            semantic_services::update,
        ),
        ep(
            M::DELETE,
            "/semantic-services/{name}",
            ADMIN,
            semantic_services::delete,
        ),
        ep(M::GET, "/topics", VIEWER, topics::list),
        ep(M::POST, "/topics", ADMIN, topics::create),
        ep(M::GET, "/topics/{name}", VIEWER, topics::get),
        ep(M::PUT, "/topics/{name}", ADMIN, topics::update),
        ep(M::DELETE, "/topics/{name}", ADMIN, topics::delete),
        ep(
            M::GET,
            "/topics/{name}/utterances",
            VIEWER,
            topics::get_utterances,
        ),
        ep(
            M::PUT,
            "/topics/{name}/utterances",
            ADMIN,
            topics::put_utterances,
        ),
        ep(M::GET, "/consumers", VIEWER, consumers::list),
        ep(M::POST, "/consumers", ADMIN, consumers::create),
        ep(M::GET, "/consumers/{name}", VIEWER, consumers::get),
        ep(M::PUT, "/consumers/{name}", ADMIN, consumers::update),
        ep(M::DELETE, "/consumers/{name}", ADMIN, consumers::delete),
        ep(
            M::POST,
            "/consumers/{name}/keys",
            ADMIN,
            consumers::create_key,
        ),
        ep(
            M::DELETE,
            "/consumers/{name}/keys/{id}",
            ADMIN,
            consumers::revoke_key,
        ),
        ep(M::GET, "/prices", VIEWER, prices::list),
        // A model name may hold '/' (`anthropic/…`): the rest of the path is the name.
        ep(M::GET, "/prices/{*model}", VIEWER, prices::get),
        ep(M::PUT, "/prices/{*model}", ADMIN, prices::put),
        ep(M::DELETE, "/prices/{*model}", ADMIN, prices::delete),
        ep(M::GET, "/admin-tokens", VIEWER, admin_tokens::list),
        ep(M::POST, "/admin-tokens", ADMIN, admin_tokens::create),
        ep(
            M::DELETE,
            "/admin-tokens/{name}",
            ADMIN,
            admin_tokens::revoke,
        ),
        ep(M::GET, "/audit", VIEWER, audit::list),
        ep(M::GET, "/usage", VIEWER, usage::report),
    ]
}

/// The role `/metrics` (outside `/api/v1`) requires.
pub(crate) const METRICS_ROLE: Required = Required::Role(Role::Viewer);

pub fn router(state: Arc<AppState>) -> Router {
    let mut api = Router::new();
    let mut public = Router::new();
    for e in endpoints() {
        let rule = auth::Rule {
            endpoint: format!("{} {}", e.method, e.path),
            required: e.required,
        };
        let handler = e
            .handler
            .route_layer(middleware::from_fn_with_state(rule, auth::authorize));
        match e.required {
            Required::Nothing => public = public.route(e.path, handler),
            Required::Role(_) => api = api.route(e.path, handler),
        }
    }
    let api = api
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .merge(public);
    Router::new()
        .nest("/api/v1", api)
        .route(
            "/metrics",
            get(metrics_text)
                .route_layer(middleware::from_fn_with_state(
                    auth::Rule {
                        endpoint: "GET /metrics".into(),
                        required: METRICS_ROLE,
                    },
                    auth::authorize,
                ))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    auth::authenticate,
                )),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
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
        .layer(middleware::from_fn(auth::request_id))
        .with_state(state)
}

/// A request method as a metric label: the methods the API serves, `other` for anything
/// else (a label value taken from unauthenticated input must come from a closed set, or a
/// client can grow the metrics without bound).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Metrics of every admin request, and its span (`{method} {route}`, a server span
/// continuing the caller's W3C `traceparent`; exported with `--otlp-endpoint`).
async fn record_metrics(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let has_body = has_body(req.headers());
    let span = tracing::info_span!(
        "admin",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    if req.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(req.headers()))
        });
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    }
    let mut response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    if has_body && refused_unread(response.status()) {
        // The body was not read (refused before the handler, or too large): the server
        // will close the connection after this answer, so say so, or a client reusing the
        // connection loses its next request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("switchyard_control_plane_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("switchyard_control_plane_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    response
}

/// Whether a request carries a body (a non-zero length, or chunked).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The answers given without reading the request's body: no or a bad token, a role the
/// token lacks, a throttled address, no such endpoint or method, a body over the limit.
fn refused_unread(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::PAYLOAD_TOO_LARGE
    )
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_roles_audit;
