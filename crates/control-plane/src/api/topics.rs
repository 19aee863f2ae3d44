//! `/api/v1/topics`: the prompt topic library. Named topics with up to thousands of
//! utterances, referenced from proxies' routes and deny lists as `{"ref": "<name>"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use switchyard_model::{
    ErrorCode, LibraryTopic, ValidationError, parse_library_topic_input, parse_utterance_lines,
    validate_topic_name, validate_utterances,
};

use super::{ApiError, AppState, Caller, expected_version};
use crate::store::{TopicRecord, TopicSummary};

/// A topic as `GET /topics/{name}` and writes show it.
#[derive(Serialize)]
pub(super) struct TopicView {
    #[serde(flatten)]
    topic: LibraryTopic,
    utterance_count: usize,
    version: u64,
    /// How many proxies refer to this topic.
    proxies: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn view(record: TopicRecord) -> TopicView {
    TopicView {
        utterance_count: record.topic.utterances.len(),
        topic: record.topic,
        version: record.version,
        proxies: record.proxies,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// A topic as `GET /topics` lists it: without its utterances.
#[derive(Serialize)]
pub(super) struct TopicListItem {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    utterance_count: u64,
    version: u64,
    proxies: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn list_item(s: TopicSummary) -> TopicListItem {
    TopicListItem {
        name: s.name,
        description: s.description,
        utterance_count: s.utterance_count,
        version: s.version,
        proxies: s.proxies,
        created_at: s.created_at,
        updated_at: s.updated_at,
    }
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let topic = parse_library_topic_input(&body)?.validate_new(&state.limits)?;
    let record = state
        .store
        .create_topic(&caller.audit(), &topic, &state.limits)
        .await?;
    tracing::info!(topic = %record.topic.name, utterances = record.topic.utterances.len(), "library topic created");
    Ok((StatusCode::CREATED, Json(view(record))).into_response())
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<TopicListItem>>, ApiError> {
    let topics = state.store.list_topics().await?;
    Ok(Json(topics.into_iter().map(list_item).collect()))
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    let record = state
        .store
        .get_topic(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("topic"))?;
    Ok(Json(view(record)))
}

/// `GET /topics/{name}/utterances`: the utterances as `text/plain`, one per line (what
/// `PUT` takes back).
pub(super) async fn get_utterances(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = state
        .store
        .get_topic(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("topic"))?;
    let mut text = record.topic.utterances.join("\n");
    text.push('\n');
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::ETAG, format!("\"{}\"", record.version)),
        ],
        text,
    )
        .into_response())
}

/// Replaces a topic (description and utterances); every gateway with a proxy naming it gets
/// a new config version, so its nodes switch to the new utterances.
pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TopicView>, ApiError> {
    let input = parse_library_topic_input(&body)?;
    let expected = expected_version(input.version, &headers)?;
    let topic = input.validate_replacement(&name, &state.limits)?;
    replace(&state, &caller, topic, expected).await
}

/// `PUT /topics/{name}/utterances`: replaces only the utterances, from a `text/plain` body
/// (one per line) or a JSON array of strings. `If-Match` may name the version replaced.
pub(super) async fn put_utterances(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TopicView>, ApiError> {
    validate_topic_name("name", &name).map_err(|_| ApiError::not_found("topic"))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let utterances = match content_type.as_str() {
        "text/plain" => parse_utterance_lines(&body, &state.limits)?,
        "application/json" => {
            let list: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
                ValidationError::new(
                    ErrorCode::Malformed,
                    "",
                    format!("expected a JSON array of strings: {e}"),
                )
            })?;
            validate_utterances(list, &state.limits, |i| format!("[{i}]"))?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send the utterances as text/plain (one per line) or as a JSON array (application/json), not '{other}'"
                ),
            ));
        }
    };
    let expected = expected_version(None, &headers)?;
    let stored = state
        .store
        .get_topic(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("topic"))?;
    let topic = LibraryTopic {
        utterances,
        ..stored.topic
    };
    replace(&state, &caller, topic, expected).await
}

async fn replace(
    state: &AppState,
    caller: &Caller,
    topic: LibraryTopic,
    expected: Option<u64>,
) -> Result<Json<TopicView>, ApiError> {
    let (record, gateways) = state
        .store
        .update_topic(&caller.audit(), &topic, expected)
        .await?;
    for gateway in &gateways {
        state.hub.notify(gateway);
    }
    tracing::info!(
        topic = %record.topic.name, version = record.version,
        utterances = record.topic.utterances.len(), gateways = ?gateways, "library topic updated"
    );
    Ok(Json(view(record)))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_topic(&caller.audit(), &name).await?;
    tracing::info!(topic = %name, "library topic deleted");
    Ok(StatusCode::NO_CONTENT)
}
