//! `/api/v1/consumers`: client applications, the proxies they may call, their limits and
//! budget, and their keys (shown once, stored as hashes).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use rand::TryRngCore;
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use switchyard_model::governance::{
    KEY_PREFIX, KEY_SECRET_CHARS, KEY_SHOWN_CHARS, key_hash, parse_consumer_input, parse_key_input,
};
use switchyard_model::{Consumer, ValidationError};
use uuid::Uuid;

use super::{ApiError, AppState, Caller, expected_version};
use crate::store::NewKey;

/// A new consumer key: `sy_` and 32 base62 characters from the operating system's CSPRNG
/// (about 190 bits).
fn new_key() -> String {
    let mut rng = rand::rngs::OsRng.unwrap_err();
    format!(
        "{KEY_PREFIX}{}",
        Alphanumeric.sample_string(&mut rng, KEY_SECRET_CHARS)
    )
}

/// The reply of `POST /consumers/{name}/keys`: the only time the key itself is shown.
#[derive(Serialize)]
struct NewKeyView {
    consumer: String,
    id: Uuid,
    key: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

fn notify(state: &AppState, gateways: &[String]) {
    for gateway in gateways {
        state.hub.notify(gateway);
    }
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec = parse_consumer_input(&body)?.validate(&state.limits)?;
    let (consumer, gateways) = state.store.create_consumer(&caller.audit(), &spec).await?;
    notify(&state, &gateways);
    tracing::info!(consumer = %consumer.spec.name, gateways = ?gateways, "consumer created");
    Ok((StatusCode::CREATED, Json(consumer)).into_response())
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<Consumer>>, ApiError> {
    Ok(Json(state.store.list_consumers().await?))
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Consumer>, ApiError> {
    state
        .store
        .get_consumer(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("consumer"))
}

/// Replaces a consumer's proxies, limits, budget and metadata; its keys stay. The gateways
/// it could call before and can call now get a new config version.
pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Consumer>, ApiError> {
    let input = parse_consumer_input(&body)?;
    let expected = expected_version(input.version, &headers)?;
    if input.name != name {
        return Err(ValidationError::rule(
            "name",
            format!(
                "a consumer cannot be renamed (this is '{name}'); create a new one and move the keys' users to it"
            ),
        )
        .into());
    }
    let spec = input.validate(&state.limits)?;
    let (consumer, gateways) = state
        .store
        .update_consumer(&caller.audit(), &spec, expected)
        .await?;
    notify(&state, &gateways);
    tracing::info!(consumer = %name, version = consumer.version, gateways = ?gateways, "consumer updated");
    Ok(Json(consumer))
}

/// Deletes a consumer; its keys stop working on every node within a second.
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let gateways = state.store.delete_consumer(&caller.audit(), &name).await?;
    notify(&state, &gateways);
    tracing::info!(consumer = %name, gateways = ?gateways, "consumer deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /consumers/{name}/keys`: a new key, shown in this reply only.
pub(super) async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Times are kept to the millisecond, as stored.
    let ms = |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t);
    let now = ms(Utc::now());
    let expires_at = parse_key_input(&body)?.validate(now)?.map(ms);
    let key = new_key();
    let record = NewKey {
        id: Uuid::new_v4(),
        prefix: key[..KEY_PREFIX.len() + KEY_SHOWN_CHARS].to_owned(),
        hash: key_hash(&key),
        created_at: now,
        expires_at,
    };
    let gateways = state
        .store
        .create_consumer_key(&caller.audit(), &name, &record)
        .await?;
    notify(&state, &gateways);
    tracing::info!(consumer = %name, key = %record.id, prefix = %record.prefix, gateways = ?gateways, "consumer key created");
    let mut response = (
        StatusCode::CREATED,
        Json(NewKeyView {
            consumer: name,
            id: record.id,
            key,
            prefix: record.prefix,
            created_at: record.created_at,
            expires_at: record.expires_at,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /consumers/{name}/keys/{id}`: revokes a key; every node refuses it within a
/// second.
pub(super) async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("key"))?;
    let gateways = state
        .store
        .revoke_consumer_key(&caller.audit(), &name, id)
        .await?;
    notify(&state, &gateways);
    tracing::info!(consumer = %name, key = %id, gateways = ?gateways, "consumer key revoked");
    Ok(StatusCode::NO_CONTENT)
}
