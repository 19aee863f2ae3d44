//! `/api/v1/gateways`: the deployment targets proxies belong to, their nodes' status and
//! their registration tokens.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_model::validate_gateway_name;

use super::{ApiError, AppState, Caller, parse_strict};
use crate::distribute::hash_token;
use crate::store::{GatewayRecord, ProxyFailure};

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
    /// Proxies of the applied version the node could not compile (it serves the others,
    /// and the last good version of these when it had one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    proxy_failures: Vec<ProxyFailure>,
    /// Whether the node has an in-process sentence encoder (absent: it did not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    has_encoder: Option<bool>,
}

#[derive(Serialize)]
pub(super) struct GatewayView {
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
            proxy_failures: n.proxy_failures,
            has_encoder: n.has_encoder,
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

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: CreateGateway = parse_strict(&body)?;
    validate_gateway_name("name", &input.name)?;
    let token = new_registration_token();
    let record = state
        .store
        .create_gateway(&caller.audit(), &input.name, &hash_token(&token))
        .await?;
    tracing::info!(gateway = %record.name, "gateway created");
    let mut view = gateway_view(&state, record).await?;
    view.registration_token = Some(token);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<GatewayView>>, ApiError> {
    let mut out = Vec::new();
    for g in state.store.list_gateways().await? {
        out.push(gateway_view(&state, g).await?);
    }
    Ok(Json(out))
}

pub(super) async fn get(
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

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_gateway(&caller.audit(), &name).await?;
    state.hub.notify(&name);
    tracing::info!(gateway = %name, "gateway deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new registration token; the old one stops working for new connections.
pub(super) async fn rotate_token(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let token = new_registration_token();
    state
        .store
        .set_gateway_token(&caller.audit(), &name, &hash_token(&token))
        .await?;
    tracing::info!(gateway = %name, "registration token rotated");
    Ok(Json(json!({"name": name, "registration_token": token})))
}
