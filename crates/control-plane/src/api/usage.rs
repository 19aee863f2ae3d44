//! `GET /api/v1/usage`: usage and cost over a time range, grouped and filtered.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde_json::{Map, Value};
use switchyard_model::usage::{GroupBy, NANO_PER_USD, UsageQuery};
use switchyard_model::{ErrorCode, ValidationError};

use super::{ApiError, AppState};
use crate::store::UsageRow;

/// `?from=…&to=…&group_by=consumer,day&gateway=…&proxy=…&route=…&model=…&consumer=…`: one
/// row per group, ordered by the group's values, with `requests`, `errors`, the four token
/// sums and `cost_usd`.
pub(super) async fn report(
    State(state): State<Arc<AppState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ValidationError::new(ErrorCode::Malformed, "query", e.body_text()))?;
    let query = UsageQuery::parse(&pairs)?;
    let rows = state.store.usage_report(&query).await?;
    Ok(Json(rows.iter().map(|r| row_json(&query, r)).collect()))
}

/// One report row as JSON: the group's fields (`proxy` as its name beside `proxy_id`; an
/// empty route, model or consumer as `null`), then the sums.
pub(crate) fn row_json(query: &UsageQuery, row: &UsageRow) -> Value {
    let mut out = Map::new();
    for (g, value) in query.group_by.iter().zip(&row.group) {
        match g {
            GroupBy::Proxy => {
                out.insert("proxy_id".into(), Value::from(value.clone()));
                out.insert(
                    "proxy".into(),
                    row.proxy_name.clone().map_or(Value::Null, Value::from),
                );
            }
            GroupBy::Route | GroupBy::Model | GroupBy::Consumer if value.is_empty() => {
                out.insert(g.as_str().into(), Value::Null);
            }
            _ => {
                out.insert(g.as_str().into(), Value::from(value.clone()));
            }
        }
    }
    let t = &row.totals;
    out.insert("requests".into(), t.requests.into());
    out.insert("errors".into(), t.errors.into());
    out.insert("input_tokens".into(), t.input_tokens.into());
    out.insert("output_tokens".into(), t.output_tokens.into());
    out.insert("cached_input_tokens".into(), t.cached_input_tokens.into());
    out.insert("reasoning_tokens".into(), t.reasoning_tokens.into());
    out.insert(
        "cost_usd".into(),
        Value::from(t.cost_nano_usd as f64 / NANO_PER_USD),
    );
    Value::Object(out)
}
