//! The admin REST API (`/api/v1`), plus `/healthz`, `/readyz` and `/metrics` (the latter
//! behind the admin token, like the API: Prometheus scrapes with `authorization`).

mod consumers;
mod error;
mod gateways;
mod prices;
mod proxies;
mod semantic_services;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use switchyard_model::{ErrorCode, Limits, ValidationError};

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
    /// `None` only with `--insecure-no-auth`.
    pub admin_token: Option<String>,
    pub node_stale_after: Duration,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/gateways", get(gateways::list).post(gateways::create))
        .route(
            "/gateways/{name}",
            get(gateways::get).delete(gateways::delete),
        )
        .route(
            "/gateways/{name}/registration-token",
            post(gateways::rotate_token),
        )
        .route("/proxies", get(proxies::list).post(proxies::create))
        .route(
            "/proxies/{id}",
            get(proxies::get)
                .put(proxies::update)
                .delete(proxies::delete),
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
        .route("/topics", get(topics::list).post(topics::create))
        .route(
            "/topics/{name}",
            get(topics::get).put(topics::update).delete(topics::delete),
        )
        .route(
            "/topics/{name}/utterances",
            get(topics::get_utterances).put(topics::put_utterances),
        )
        .route("/consumers", get(consumers::list).post(consumers::create))
        .route(
            "/consumers/{name}",
            get(consumers::get)
                .put(consumers::update)
                .delete(consumers::delete),
        )
        .route("/consumers/{name}/keys", post(consumers::create_key))
        .route(
            "/consumers/{name}/keys/{id}",
            axum::routing::delete(consumers::revoke_key),
        )
        .route("/prices", get(prices::list))
        // A model name may hold '/' (`anthropic/…`): the rest of the path is the name.
        .route(
            "/prices/{*model}",
            get(prices::get).put(prices::put).delete(prices::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/api/v1", api)
        .route(
            "/metrics",
            get(metrics_text)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_token)),
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

/// The answers given without reading the request's body: no or a bad token, no such
/// endpoint or method, a body over the limit.
fn refused_unread(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED
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
