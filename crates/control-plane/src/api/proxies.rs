//! `/api/v1/proxies`: LLM proxies, validated on write, their secrets encrypted at rest and
//! redacted on read.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchyard_model::{Proxy, ProxySpec, ValidationError, parse_proxy_input};
use uuid::Uuid;

use super::{ApiError, AppState, expected_version};

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

pub(super) async fn create(
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
pub(super) struct ListQuery {
    gateway: Option<String>,
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Proxy>>, ApiError> {
    let proxies = state.store.list_proxies(q.gateway.as_deref()).await?;
    Ok(Json(proxies.into_iter().map(view).collect()))
}

pub(super) async fn get(
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

pub(super) async fn update(
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

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let proxy = state.store.delete_proxy(parse_id(&id)?).await?;
    state.hub.notify(&proxy.spec.gateway);
    tracing::info!(proxy = %proxy.id, name = %proxy.spec.name, "proxy deleted");
    Ok(StatusCode::NO_CONTENT)
}
