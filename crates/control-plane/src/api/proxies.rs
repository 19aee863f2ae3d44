//! `/api/v1/proxies`: LLM proxies, validated on write, their secrets encrypted at rest and
//! redacted on read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use switchyard_model::{Proxy, ProxySpec, ValidationError, parse_proxy_input};
use uuid::Uuid;

use super::{ApiError, AppState, Caller, expected_version};

fn view(proxy: Proxy) -> Proxy {
    Proxy {
        spec: proxy.spec.redacted(),
        ..proxy
    }
}

/// A proxy as one `GET`, `POST` or `PUT` shows it: the definition (secrets redacted), the
/// nodes that could not apply it, and the write's warnings. A client may send it back as is
/// (`status` and `warnings` are ignored on input).
#[derive(Serialize)]
pub(super) struct ProxyView {
    #[serde(flatten)]
    proxy: Proxy,
    status: ProxyStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct ProxyStatus {
    /// Nodes of the proxy's gateway that could not compile its current or an earlier
    /// version (empty: none reported a failure).
    node_failures: Vec<NodeFailure>,
}

#[derive(Serialize)]
struct NodeFailure {
    node: String,
    version: u64,
    error: String,
    /// The version the node still serves, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    served_version: Option<u64>,
}

/// The proxy's view with what its gateway's nodes reported about it.
async fn full_view(
    state: &AppState,
    proxy: Proxy,
    warnings: Vec<String>,
) -> Result<ProxyView, ApiError> {
    let id = proxy.id.to_string();
    let node_failures = state
        .store
        .list_nodes(&proxy.spec.gateway, state.node_stale_after)
        .await?
        .into_iter()
        .flat_map(|n| {
            let node = n.node_id;
            n.proxy_failures
                .into_iter()
                .filter(|f| f.proxy_id == id)
                .map(move |f| NodeFailure {
                    node: node.clone(),
                    version: f.version,
                    error: f.error,
                    served_version: f.served_version,
                })
        })
        .collect();
    Ok(ProxyView {
        proxy: view(proxy),
        status: ProxyStatus { node_failures },
        warnings,
    })
}

/// What the control plane can tell at write time about nodes that will not be able to
/// serve `spec`: a proxy needing the in-process encoder on a gateway whose connected nodes
/// all said they have none.
async fn write_warnings(state: &AppState, spec: &ProxySpec) -> Result<Vec<String>, ApiError> {
    if !spec.needs_embeddings() || spec.semantic_service.is_some() {
        return Ok(Vec::new());
    }
    let nodes = state
        .store
        .list_nodes(&spec.gateway, state.node_stale_after)
        .await?;
    let connected: Vec<_> = nodes.iter().filter(|n| n.connected).collect();
    if !connected.is_empty() && connected.iter().all(|n| n.has_encoder == Some(false)) {
        return Ok(vec![format!(
            "no connected node of gateway '{}' has a sentence encoder ({} connected): they will not apply this proxy (semantic routing, the semantic prompt guard or the semantic cache) and keep serving its previous version, if any; start the nodes with --model-dir, or name a semantic_service",
            spec.gateway,
            connected.len()
        )]);
    }
    Ok(Vec::new())
}

fn decrypt(state: &AppState, spec: ProxySpec) -> Result<ProxySpec, ApiError> {
    state
        .keyring
        .decrypt_proxy(spec)
        .map_err(|e| ApiError::internal("cannot decrypt a stored secret", e))
}

fn encrypt(state: &AppState, spec: ProxySpec) -> Result<ProxySpec, ApiError> {
    state
        .keyring
        .encrypt_proxy(spec)
        .map_err(|e| ApiError::internal("cannot encrypt a secret", e))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("proxy"))
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = parse_proxy_input(&body)?;
    let spec = input.validate(&state.limits, None)?;
    caller.require_gateway(&spec.gateway)?;
    let gateway = spec.gateway.clone();
    let warnings = write_warnings(&state, &spec).await?;
    let proxy = state
        .store
        .create_proxy(&caller.audit(), &encrypt(&state, spec)?, &state.limits)
        .await?;
    state.hub.notify(&gateway);
    tracing::info!(proxy = %proxy.id, name = %proxy.spec.name, gateway = %gateway, "proxy created");
    let view = full_view(&state, proxy, warnings).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
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
) -> Result<Json<ProxyView>, ApiError> {
    let proxy = state
        .store
        .get_proxy(parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("proxy"))?;
    Ok(Json(full_view(&state, proxy, Vec::new()).await?))
}

pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ProxyView>, ApiError> {
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
    caller.require_gateway(&stored.spec.gateway)?;
    let previous = decrypt(&state, stored.spec)?;
    let spec = input.validate(&state.limits, Some(&previous))?;
    caller.require_gateway(&spec.gateway)?;
    let old_gateway = previous.gateway.clone();
    let warnings = write_warnings(&state, &spec).await?;
    let proxy = state
        .store
        .update_proxy(&caller.audit(), id, &encrypt(&state, spec)?, expected)
        .await?;
    state.hub.notify(&old_gateway);
    tracing::info!(proxy = %proxy.id, version = proxy.version, "proxy updated");
    Ok(Json(full_view(&state, proxy, warnings).await?))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    // A proxy never moves between gateways, so the gateway checked here is the one deleted from.
    let stored = state
        .store
        .get_proxy(id)
        .await?
        .ok_or_else(|| ApiError::not_found("proxy"))?;
    caller.require_gateway(&stored.spec.gateway)?;
    let proxy = state.store.delete_proxy(&caller.audit(), id).await?;
    state.hub.notify(&proxy.spec.gateway);
    tracing::info!(proxy = %proxy.id, name = %proxy.spec.name, "proxy deleted");
    Ok(StatusCode::NO_CONTENT)
}
