//! `/api/v1/prices`: the price table (USD per million tokens) nodes compute each request's
//! cost from. Model names may hold `.`, `:` and `/` (`anthropic.claude-…-v1:0`), so the
//! route takes the rest of the path.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use switchyard_model::Price;
use switchyard_model::governance::parse_price_input;

use super::{ApiError, AppState, Caller};

pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<Price>>, ApiError> {
    Ok(Json(state.store.list_prices().await?))
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Price>, ApiError> {
    state
        .store
        .get_price(&model)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("price"))
}

/// Sets one model's price (201 when it is new); every gateway gets a new config version.
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let price = parse_price_input(&body)?.validate(&model)?;
    let (created, gateways) = state.store.put_price(&caller.audit(), &price).await?;
    state.hub.notify_all();
    tracing::info!(model = %price.model, input = price.input_per_mtok, output = price.output_per_mtok,
        cached_input = ?price.cached_input_per_mtok, gateways = gateways.len(), "price set");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(price)).into_response())
}

/// Removes one model's price: its requests cost 0 from then on (counted as unpriced).
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    let gateways = state.store.delete_price(&caller.audit(), &model).await?;
    state.hub.notify_all();
    tracing::info!(model = %model, gateways = gateways.len(), "price deleted");
    Ok(StatusCode::NO_CONTENT)
}
