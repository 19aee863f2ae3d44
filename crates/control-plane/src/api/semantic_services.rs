//! `/api/v1/semantic-services`: named remote embeddings services that proxies reference by
//! name (`"semantic_service": "embed-eu"`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use switchyard_model::{SemanticService, parse_semantic_service_input};

use super::{ApiError, AppState, Caller, expected_version};
use crate::store::SemanticServiceRecord;

/// A semantic service as the API shows it: the key redacted (`***`, absent when none).
#[derive(Serialize)]
pub(super) struct SemanticServiceView {
    #[serde(flatten)]
    service: SemanticService,
    version: u64,
    /// How many proxies name this service.
    proxies: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn view(record: SemanticServiceRecord) -> SemanticServiceView {
    SemanticServiceView {
        service: record.service.redacted(),
        version: record.version,
        proxies: record.proxies,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn encrypt(state: &AppState, service: SemanticService) -> Result<SemanticService, ApiError> {
    state
        .keyring
        .encrypt_service(service)
        .map_err(|e| ApiError::internal("cannot encrypt a secret", e))
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let service = parse_semantic_service_input(&body)?.validate_new()?;
    let record = state
        .store
        .create_semantic_service(&caller.audit(), &encrypt(&state, service)?)
        .await?;
    tracing::info!(semantic_service = %record.service.name, "semantic service created");
    Ok((StatusCode::CREATED, Json(view(record))).into_response())
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<SemanticServiceView>>, ApiError> {
    let records = state.store.list_semantic_services().await?;
    Ok(Json(records.into_iter().map(view).collect()))
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<SemanticServiceView>, ApiError> {
    let record = state
        .store
        .get_semantic_service(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("semantic service"))?;
    Ok(Json(view(record)))
}

/// Replaces a service; every gateway with a proxy naming it gets a new config version, so
/// its nodes switch to the new definition.
pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SemanticServiceView>, ApiError> {
    let input = parse_semantic_service_input(&body)?;
    let expected = expected_version(input.version, &headers)?;
    let stored = state
        .store
        .get_semantic_service(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("semantic service"))?;
    let previous = state
        .keyring
        .decrypt_service(stored.service)
        .map_err(|e| ApiError::internal("cannot decrypt a stored secret", e))?;
    let service = input.validate_replacement(&previous)?;
    let (record, gateways) = state
        .store
        .update_semantic_service(&caller.audit(), &encrypt(&state, service)?, expected)
        .await?;
    for gateway in &gateways {
        state.hub.notify(gateway);
    }
    tracing::info!(
        semantic_service = %record.service.name, version = record.version,
        gateways = ?gateways, "semantic service updated"
    );
    Ok(Json(view(record)))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_semantic_service(&caller.audit(), &name)
        .await?;
    tracing::info!(semantic_service = %name, "semantic service deleted");
    Ok(StatusCode::NO_CONTENT)
}
