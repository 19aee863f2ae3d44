//! `GET /api/v1/audit`: the trail of admin writes, newest first, with filters and paging.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, RawQuery, State};
use axum::http::Uri;
use chrono::{DateTime, Utc};
use serde::Serialize;
use switchyard_model::{ErrorCode, ValidationError};

use super::{ApiError, AppState};
use crate::store::{AuditAction, AuditEntry, AuditQuery, Cursor, ResourceFilter};

/// Entries per page when `limit` is not given, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Longest `resource` or `actor` filter.
const MAX_FILTER: usize = 512;

#[derive(Serialize)]
pub(super) struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
    ValidationError::new(ErrorCode::Malformed, parameter, message).into()
}

fn time(parameter: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            bad(
                parameter,
                "must be an RFC 3339 time, e.g. 2026-11-25T00:00:00Z",
            )
        })
}

fn filter(parameter: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > MAX_FILTER {
        return Err(bad(parameter, format!("must be 1-{MAX_FILTER} characters")));
    }
    Ok(value.to_owned())
}

/// The query, every parameter checked (400 naming the one that is wrong).
fn parse(raw: Option<&str>) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..AuditQuery::default()
    };
    let uri: Uri = format!("/?{}", raw.unwrap_or(""))
        .parse()
        .map_err(|_| bad("", "the query string does not parse"))?;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| bad("", format!("the query string does not parse: {e}")))?;
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &pairs {
        if seen.contains(&key.as_str()) {
            return Err(bad(key, "given more than once"));
        }
        seen.push(key);
        match key.as_str() {
            "since" => q.since = Some(time("since", value)?),
            "until" => q.until = Some(time("until", value)?),
            "resource" => {
                let value = filter("resource", value)?;
                q.resource = Some(match value.strip_suffix('*') {
                    Some(prefix) => ResourceFilter::Prefix(prefix.to_owned()),
                    None => ResourceFilter::Exact(value),
                });
            }
            "actor" => q.actor = Some(filter("actor", value)?),
            "action" => {
                q.action = Some(AuditAction::parse(value).ok_or_else(|| {
                    bad(
                        "action",
                        "must be one of create, update, delete, rotate, revoke",
                    )
                })?);
            }
            "limit" => {
                q.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                q.after =
                    Some(Cursor::parse(value).ok_or_else(|| {
                        bad("cursor", "must be the next_cursor of a previous page")
                    })?);
            }
            other => {
                return Err(bad(
                    other,
                    "unknown parameter (expected since, until, resource, actor, action, limit, cursor)",
                ));
            }
        }
    }
    Ok(q)
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    let q = parse(raw.as_deref())?;
    let entries = state.store.list_audit(&q).await?;
    let next_cursor = (entries.len() == q.limit as usize)
        .then(|| entries.last().map(|e| Cursor::of(e).to_string()))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(raw: &str) -> String {
        parse(Some(raw)).unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn every_parameter_is_checked_and_named() {
        for (raw, name) in [
            ("since=yesterday", "since"),
            ("until=2026-13-01T00:00:00Z", "until"),
            ("action=edit", "action"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("cursor=-1", "cursor"),
            ("cursor=abc", "cursor"),
            ("cursor=42", "cursor"),
            ("cursor=1-0", "cursor"),
            ("resource=", "resource"),
            ("actor=", "actor"),
            ("colour=blue", "colour"),
            ("limit=5&limit=6", "limit"),
        ] {
            assert_eq!(field(raw), name, "{raw}");
        }
    }

    #[test]
    fn a_query_is_parsed() {
        let q = parse(Some(
            "since=2026-11-25T10:00:00%2B01:00&resource=proxy/*&actor=ci&action=update&limit=5&cursor=1764000000000-42",
        ))
        .unwrap();
        assert_eq!(
            q.since,
            Some(
                DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        assert_eq!(q.resource, Some(ResourceFilter::Prefix("proxy/".into())));
        assert_eq!(q.actor.as_deref(), Some("ci"));
        assert_eq!(q.action, Some(AuditAction::Update));
        assert_eq!(
            (q.limit, q.after),
            (
                5,
                Some(Cursor {
                    at_ms: 1_764_000_000_000,
                    id: 42
                })
            )
        );
        assert_eq!(parse(None).unwrap().limit, DEFAULT_LIMIT);
    }
}
