//! The audit trail: one row per admin write, appended by the write itself in its own
//! transaction (so a write that is refused or rolled back leaves no entry, and a committed one
//! always has its entry). `before` and `after` are the resource as the API shows it, with every
//! secret as `"***"` (provider keys, registration tokens, key and token hashes).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError, from_ms, ms};

/// Who makes a write, and the admin request it belongs to: every store write takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The admin token's name (`bootstrap` for `--admin-token`).
    pub actor: String,
    /// The admin request's `x-request-id`; `None` for writes the process makes itself.
    pub request_id: Option<String>,
}

impl Audit {
    pub fn new(actor: impl Into<String>, request_id: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            request_id: Some(request_id.into()),
        }
    }

    /// A write the process makes itself (`switchyard dev` creating its gateway), named `what`.
    pub fn system(what: &str) -> Self {
        Self {
            actor: format!("system:{what}"),
            request_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    Create,
    Update,
    Delete,
    Rotate,
    Revoke,
}

impl AuditAction {
    pub const ALL: [AuditAction; 5] = [
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Delete,
        AuditAction::Rotate,
        AuditAction::Revoke,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
            AuditAction::Rotate => "rotate",
            AuditAction::Revoke => "revoke",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// One entry of the trail, as `GET /audit` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<String>,
}

/// Which entries to read, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time.
    pub until: Option<DateTime<Utc>>,
    /// The resource exactly, or every resource starting with `prefix` (`proxy/`, `consumer/acme`).
    pub resource: Option<ResourceFilter>,
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    /// Entries after this one in the order (the last entry of the previous page).
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// A position in the trail's order, newest first: by `at`, then `id` (ids are unique, so
/// the order is total). As text: `<at in ms>-<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: i64,
    pub id: i64,
}

impl Cursor {
    pub fn of(entry: &AuditEntry) -> Self {
        Self {
            at_ms: ms(entry.at),
            id: entry.id,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('-')?;
        let at_ms = at.parse().ok().filter(|v: &i64| *v >= 0)?;
        let id = id.parse().ok().filter(|v: &i64| *v > 0)?;
        Some(Self { at_ms, id })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.at_ms, self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceFilter {
    Exact(String),
    Prefix(String),
}

/// A change to record: what was done to which resource, and its state before and after.
pub(super) struct Change {
    pub action: AuditAction,
    pub resource: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Change {
    pub fn create(resource: impl Into<String>, after: Value) -> Self {
        Self {
            action: AuditAction::Create,
            resource: resource.into(),
            before: None,
            after: Some(after),
        }
    }

    pub fn update(resource: impl Into<String>, before: Value, after: Value) -> Self {
        Self {
            action: AuditAction::Update,
            resource: resource.into(),
            before: Some(before),
            after: Some(after),
        }
    }

    pub fn delete(resource: impl Into<String>, before: Value) -> Self {
        Self {
            action: AuditAction::Delete,
            resource: resource.into(),
            before: Some(before),
            after: None,
        }
    }
}

/// A value as JSON for an entry (the types recorded always serialise).
pub(super) fn json<T: Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))
}

fn text(value: Option<&Value>) -> Option<String> {
    value.map(Value::to_string)
}

fn entry_from_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let parse = |column: &str| -> Result<Option<Value>, StoreError> {
        let raw: Option<String> = row.try_get(column)?;
        raw.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt(format!("audit entry {column}: {e}")))
        })
        .transpose()
    };
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: from_ms(row.try_get("at")?),
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        resource: row.try_get("resource")?,
        before: parse("before_state")?,
        after: parse("after_state")?,
        request_id: row.try_get("request_id")?,
    })
}

impl Store {
    /// Appends `change` to the trail inside the write's transaction.
    pub(super) async fn record(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        audit: &Audit,
        change: Change,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, resource, before_state, after_state, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(ms(Utc::now()))
        .bind(&audit.actor)
        .bind(change.action.as_str())
        .bind(&change.resource)
        .bind(text(change.before.as_ref()))
        .bind(text(change.after.as_ref()))
        .bind(audit.request_id.clone())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Entries matching `q`, newest first (by `at`, then `id`; at most `q.limit`). The
    /// indexes `(at, id)`, `(resource, at, id)` and `(actor, at, id)` serve this order, so a
    /// page costs about its own rows whatever the filters and however old the window.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        // Conditions are this function's constants; every value is a bound parameter.
        let mut conditions: Vec<String> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if q.since.is_some() {
            conditions.push(format!("at >= ${}", next()));
        }
        if q.until.is_some() {
            conditions.push(format!("at < ${}", next()));
        }
        match &q.resource {
            Some(ResourceFilter::Exact(_)) => conditions.push(format!("resource = ${}", next())),
            Some(ResourceFilter::Prefix(_)) => {
                let (a, b) = (next(), next());
                conditions.push(format!("SUBSTR(resource, 1, CAST(${a} AS INTEGER)) = ${b}"));
            }
            None => {}
        }
        if q.actor.is_some() {
            conditions.push(format!("actor = ${}", next()));
        }
        if q.action.is_some() {
            conditions.push(format!("action = ${}", next()));
        }
        if q.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            // `at <= a` first, so the index's range starts at the cursor.
            conditions.push(format!("at <= ${a} AND (at < ${b} OR id < ${c})"));
        }
        let limit = next();
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT id, at, actor, action, resource, before_state, after_state, request_id \
             FROM audit_log{filter} ORDER BY at DESC, id DESC LIMIT ${limit}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(since) = q.since {
            query = query.bind(ms(since));
        }
        if let Some(until) = q.until {
            query = query.bind(ms(until));
        }
        match &q.resource {
            Some(ResourceFilter::Exact(r)) => query = query.bind(r.clone()),
            Some(ResourceFilter::Prefix(p)) => {
                query = query
                    .bind(i64::try_from(p.chars().count()).unwrap_or(i64::MAX))
                    .bind(p.clone());
            }
            None => {}
        }
        if let Some(actor) = &q.actor {
            query = query.bind(actor.clone());
        }
        if let Some(action) = q.action {
            query = query.bind(action.as_str());
        }
        if let Some(c) = q.after {
            query = query.bind(c.at_ms).bind(c.at_ms).bind(c.id);
        }
        query = query.bind(i64::from(q.limit));
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(entry_from_row).collect()
    }
}
