//! Usage records: idempotent ingest (raw rows by id, plus hourly and daily rollups kept in
//! the same transaction), reports over any time range, and retention of the raw rows.
//!
//! # Layout
//! `usage_records` holds one row per request, keyed by the id its node made: a batch stored
//! twice inserts nothing the second time (`ON CONFLICT (id) DO NOTHING … RETURNING id`), and
//! only the rows that were really inserted are added to `usage_hourly` and `usage_daily`
//! (one upsert each, keys pre-aggregated and sorted, so two replicas ingesting at once take
//! row locks in the same order and cannot deadlock; on PostgreSQL a concurrent insert of the
//! same id waits for the first transaction and then inserts nothing). A report splits its
//! range into whole days (daily rollup), whole hours (hourly rollup) and the sub-hour edges
//! (raw rows), and adds the pieces up. Raw rows older than the retention are deleted in
//! chunks; the rollups are kept. A record older than the retention is acknowledged but not
//! stored (its id may already have been deleted, so storing it again could count it twice).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use switchyard_model::usage::{GroupBy, UsageEntry, UsageQuery};

use super::{Store, StoreError, ms};

/// Milliseconds in an hour and in a (UTC) day.
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// Rows per multi-row statement (22 parameters each: within PostgreSQL's and SQLite's
/// parameter limits).
const INSERT_CHUNK: usize = 100;
/// Raw rows deleted per statement by the retention sweep.
const DELETE_CHUNK: i64 = 10_000;

/// The outcome of one ingested batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Rows inserted (and added to the rollups).
    pub stored: u64,
    /// Records already stored (a batch sent again).
    pub duplicates: u64,
    /// Records older than the retention, not stored.
    pub expired: u64,
}

/// One row of a report: the group's values (in the query's `group_by` order) and its sums.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// The value of each `group_by` dimension; `day` as `YYYY-MM-DD`, `proxy` as its id.
    pub group: Vec<String>,
    /// The proxy's name, when grouped by proxy (one it had in the range).
    pub proxy_name: Option<String>,
    pub totals: UsageTotals,
}

/// What a report sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: i64,
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_nano_usd: i64,
}

impl UsageTotals {
    fn add(&mut self, o: &UsageTotals) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.cost_nano_usd += o.cost_nano_usd;
    }

    fn of(e: &UsageEntry) -> UsageTotals {
        UsageTotals {
            requests: 1,
            errors: i64::from(e.is_error()),
            input_tokens: to_i64(e.input_tokens),
            output_tokens: to_i64(e.output_tokens),
            cached_input_tokens: to_i64(e.cached_input_tokens),
            reasoning_tokens: to_i64(e.reasoning_tokens),
            cost_nano_usd: to_i64(e.cost_nano_usd),
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored raw record (tests and exports read them back).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUsage {
    pub gateway: String,
    pub node: String,
    pub entry: UsageEntry,
}

/// The key of a rollup row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RollupKey<'a> {
    bucket: i64,
    gateway: &'a str,
    proxy_id: String,
    route: &'a str,
    model: &'a str,
    consumer: &'a str,
}

const RAW_COLUMNS: &str = "id, at, gateway, node, proxy_id, proxy, route, model, consumer, provider, status, \
     input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_nano_usd, latency_us, ttft_us, \
     fell_back, stream, estimated, received_at";
const RAW_PARAMS: usize = 22;

const ROLLUP_COLUMNS: &str = "bucket, gateway, proxy_id, route, model, consumer, proxy, requests, errors, \
     input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_nano_usd";
const ROLLUP_PARAMS: usize = 14;

/// `($1, …, $n), ($n+1, …)`: placeholders for `rows` rows of `width` parameters.
fn placeholders(rows: usize, width: usize) -> String {
    let mut s = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..width {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(r * width + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// The three ranges a report reads: `[from, to)` split at day and hour boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub daily: Option<(i64, i64)>,
    pub hourly: Vec<(i64, i64)>,
    pub raw: Vec<(i64, i64)>,
}

fn ceil_to(v: i64, unit: i64) -> i64 {
    v.div_euclid(unit) * unit + if v.rem_euclid(unit) == 0 { 0 } else { unit }
}

fn floor_to(v: i64, unit: i64) -> i64 {
    v.div_euclid(unit) * unit
}

/// Splits `[from, to)` (ms) into whole days, whole hours and the sub-hour rest.
pub(crate) fn plan(from: i64, to: i64) -> Plan {
    let mut plan = Plan {
        daily: None,
        hourly: Vec::new(),
        raw: Vec::new(),
    };
    let (d0, d1) = (ceil_to(from, DAY_MS), floor_to(to, DAY_MS));
    let mut hour_parts = Vec::new();
    if d0 < d1 {
        plan.daily = Some((d0, d1));
        hour_parts.push((from, d0));
        hour_parts.push((d1, to));
    } else {
        hour_parts.push((from, to));
    }
    for (a, b) in hour_parts.into_iter().filter(|(a, b)| a < b) {
        let (h0, h1) = (ceil_to(a, HOUR_MS), floor_to(b, HOUR_MS));
        if h0 < h1 {
            plan.hourly.push((h0, h1));
            plan.raw.push((a, h0));
            plan.raw.push((h1, b));
        } else {
            plan.raw.push((a, b));
        }
    }
    plan.raw.retain(|(a, b)| a < b);
    plan
}

/// A value bound into a report query.
enum Bind {
    Int(i64),
    Text(String),
}

impl Store {
    /// Stores a node's batch, once per record id, and adds the new rows to the rollups, in
    /// one transaction. `retention`: records older than it are counted as expired, not
    /// stored.
    pub async fn ingest_usage(
        &self,
        gateway: &str,
        node: &str,
        entries: &[UsageEntry],
        retention: Option<chrono::Duration>,
    ) -> Result<Ingested, StoreError> {
        let now = Utc::now();
        let cutoff = retention.map(|r| now - r);
        let mut fresh: Vec<&UsageEntry> = entries
            .iter()
            .filter(|e| cutoff.is_none_or(|c| e.at >= c))
            .collect();
        let mut outcome = Ingested {
            expired: (entries.len() - fresh.len()) as u64,
            ..Ingested::default()
        };
        if fresh.is_empty() {
            return Ok(outcome);
        }
        // One order for every writer: row locks are taken in it (no deadlock between
        // replicas), and a batch repeating an id inserts it once.
        fresh.sort_by_key(|e| e.id);
        fresh.dedup_by_key(|e| e.id);
        let received = ms(now);
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let mut inserted = std::collections::HashSet::new();
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO usage_records ({RAW_COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
                placeholders(chunk.len(), RAW_PARAMS)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(e.id.to_string())
                    .bind(ms(e.at))
                    .bind(gateway)
                    .bind(node)
                    .bind(e.proxy_id.to_string())
                    .bind(&e.proxy)
                    .bind(&e.route)
                    .bind(&e.model)
                    .bind(&e.consumer)
                    .bind(&e.provider)
                    .bind(i64::from(e.status))
                    .bind(to_i64(e.input_tokens))
                    .bind(to_i64(e.output_tokens))
                    .bind(to_i64(e.cached_input_tokens))
                    .bind(to_i64(e.reasoning_tokens))
                    .bind(to_i64(e.cost_nano_usd))
                    .bind(to_i64(e.latency_us))
                    .bind(e.ttft_us.map(to_i64))
                    .bind(i64::from(e.fell_back))
                    .bind(i64::from(e.stream))
                    .bind(i64::from(e.estimated))
                    .bind(received);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let id: String = row.try_get("id")?;
                inserted.insert(id);
            }
        }
        let new: Vec<&UsageEntry> = fresh
            .iter()
            .copied()
            .filter(|e| inserted.contains(&e.id.to_string()))
            .collect();
        outcome.stored = new.len() as u64;
        outcome.duplicates = (entries.len() as u64) - outcome.expired - outcome.stored;
        for (table, unit) in [("usage_hourly", HOUR_MS), ("usage_daily", DAY_MS)] {
            let mut sums: BTreeMap<RollupKey<'_>, (&str, UsageTotals)> = BTreeMap::new();
            for e in &new {
                let key = RollupKey {
                    bucket: floor_to(ms(e.at), unit),
                    gateway,
                    proxy_id: e.proxy_id.to_string(),
                    route: &e.route,
                    model: &e.model,
                    consumer: &e.consumer,
                };
                let slot = sums
                    .entry(key)
                    .or_insert((&e.proxy, UsageTotals::default()));
                slot.0 = &e.proxy;
                slot.1.add(&UsageTotals::of(e));
            }
            let sums: Vec<_> = sums.into_iter().collect();
            for chunk in sums.chunks(INSERT_CHUNK) {
                let sql = format!(
                    "INSERT INTO {table} ({ROLLUP_COLUMNS}) VALUES {} \
                     ON CONFLICT (bucket, gateway, proxy_id, route, model, consumer) DO UPDATE SET \
                     proxy = excluded.proxy, requests = {table}.requests + excluded.requests, \
                     errors = {table}.errors + excluded.errors, \
                     input_tokens = {table}.input_tokens + excluded.input_tokens, \
                     output_tokens = {table}.output_tokens + excluded.output_tokens, \
                     cached_input_tokens = {table}.cached_input_tokens + excluded.cached_input_tokens, \
                     reasoning_tokens = {table}.reasoning_tokens + excluded.reasoning_tokens, \
                     cost_nano_usd = {table}.cost_nano_usd + excluded.cost_nano_usd",
                    placeholders(chunk.len(), ROLLUP_PARAMS)
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (k, (proxy, t)) in chunk {
                    q = q
                        .bind(k.bucket)
                        .bind(k.gateway)
                        .bind(k.proxy_id.clone())
                        .bind(k.route)
                        .bind(k.model)
                        .bind(k.consumer)
                        .bind(*proxy)
                        .bind(t.requests)
                        .bind(t.errors)
                        .bind(t.input_tokens)
                        .bind(t.output_tokens)
                        .bind(t.cached_input_tokens)
                        .bind(t.reasoning_tokens)
                        .bind(t.cost_nano_usd);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// A usage report: the sums of `[from, to)` grouped as asked, filtered, ordered by the
    /// group's values.
    pub async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let plan = plan(ms(query.from), ms(query.to));
        let mut groups: BTreeMap<Vec<String>, UsageRow> = BTreeMap::new();
        let mut pieces: Vec<(&str, (i64, i64))> = Vec::new();
        if let Some(range) = plan.daily {
            pieces.push(("usage_daily", range));
        }
        pieces.extend(plan.hourly.iter().map(|r| ("usage_hourly", *r)));
        pieces.extend(plan.raw.iter().map(|r| ("usage_records", *r)));
        for (table, (a, b)) in pieces {
            for row in self.report_piece(table, a, b, query).await? {
                let slot = groups.entry(row.group.clone()).or_insert_with(|| UsageRow {
                    group: row.group.clone(),
                    ..UsageRow::default()
                });
                if row.proxy_name.is_some() {
                    slot.proxy_name = row.proxy_name;
                }
                slot.totals.add(&row.totals);
            }
        }
        if query.group_by.is_empty() && groups.is_empty() {
            // Totals of an empty range: one row of zeros.
            return Ok(vec![UsageRow::default()]);
        }
        Ok(groups.into_values().collect())
    }

    async fn report_piece(
        &self,
        table: &str,
        from: i64,
        to: i64,
        query: &UsageQuery,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let raw = table == "usage_records";
        let time = if raw { "at" } else { "bucket" };
        let mut cols: Vec<String> = Vec::new();
        for g in &query.group_by {
            cols.push(match g {
                GroupBy::Gateway => "gateway".to_owned(),
                GroupBy::Proxy => "proxy_id".to_owned(),
                GroupBy::Route => "route".to_owned(),
                GroupBy::Model => "model".to_owned(),
                GroupBy::Consumer => "consumer".to_owned(),
                GroupBy::Day => format!("(({time} / {DAY_MS}) * {DAY_MS})"),
            });
        }
        let sums = if raw {
            "COUNT(*) AS requests, \
             CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT) AS cached_input_tokens, \
             CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT) AS reasoning_tokens, \
             CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) AS cost_nano_usd"
        } else {
            "CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(errors), 0) AS BIGINT) AS errors, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT) AS cached_input_tokens, \
             CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT) AS reasoning_tokens, \
             CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) AS cost_nano_usd"
        };
        let mut binds = vec![Bind::Int(from), Bind::Int(to)];
        let mut filter = String::new();
        let mut add = |col: &str, value: String, binds: &mut Vec<Bind>| {
            binds.push(Bind::Text(value));
            filter.push_str(&format!(" AND {col} = ${}", binds.len()));
        };
        if let Some(v) = &query.gateway {
            add("gateway", v.clone(), &mut binds);
        }
        if let Some(v) = &query.proxy {
            add("proxy_id", v.to_string(), &mut binds);
        }
        if let Some(v) = &query.route {
            add("route", v.clone(), &mut binds);
        }
        if let Some(v) = &query.model {
            add("model", v.clone(), &mut binds);
        }
        if let Some(v) = &query.consumer {
            add("consumer", v.clone(), &mut binds);
        }
        let select: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} AS g{i}"))
            .collect();
        let proxy_name = query.group_by.contains(&GroupBy::Proxy);
        let mut sql = String::from("SELECT ");
        for s in &select {
            sql.push_str(s);
            sql.push_str(", ");
        }
        if proxy_name {
            sql.push_str("MAX(proxy) AS proxy_name, ");
        }
        sql.push_str(sums);
        sql.push_str(&format!(
            " FROM {table} WHERE {time} >= $1 AND {time} < $2{filter}"
        ));
        if !cols.is_empty() {
            sql.push_str(" GROUP BY ");
            sql.push_str(&cols.join(", "));
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                Bind::Int(v) => q.bind(v),
                Bind::Text(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| piece_row(row, &query.group_by, proxy_name))
            .filter(|r| !matches!(r, Ok(row) if row.totals.requests == 0))
            .collect()
    }

    /// Deletes raw rows older than `cutoff`, in chunks; returns how many went.
    pub async fn delete_usage_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let _guard = self.write_guard().await;
            let done = sqlx::query(
                "DELETE FROM usage_records WHERE id IN (SELECT id FROM usage_records WHERE at < $1 LIMIT $2)",
            )
            .bind(ms(cutoff))
            .bind(DELETE_CHUNK)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += done;
            if done < DELETE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// The raw records of `[from, to)`, oldest first (tests; exports).
    pub async fn usage_records(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredUsage>, StoreError> {
        let sql = format!(
            "SELECT {RAW_COLUMNS} FROM usage_records WHERE at >= $1 AND at < $2 ORDER BY at, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ms(from))
            .bind(ms(to))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_from_row).collect()
    }
}

fn piece_row(row: &AnyRow, group_by: &[GroupBy], proxy_name: bool) -> Result<UsageRow, StoreError> {
    let mut group = Vec::with_capacity(group_by.len());
    for (i, g) in group_by.iter().enumerate() {
        let col = format!("g{i}");
        group.push(match g {
            GroupBy::Day => {
                let day: i64 = row.try_get(col.as_str())?;
                super::from_ms(day).format("%Y-%m-%d").to_string()
            }
            _ => row.try_get(col.as_str())?,
        });
    }
    Ok(UsageRow {
        group,
        proxy_name: if proxy_name {
            row.try_get("proxy_name")?
        } else {
            None
        },
        totals: UsageTotals {
            requests: row.try_get("requests")?,
            errors: row.try_get("errors")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cached_input_tokens: row.try_get("cached_input_tokens")?,
            reasoning_tokens: row.try_get("reasoning_tokens")?,
            cost_nano_usd: row.try_get("cost_nano_usd")?,
        },
    })
}

fn stored_from_row(row: &AnyRow) -> Result<StoredUsage, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("usage record: bad {what}"));
    let id: String = row.try_get("id")?;
    let proxy_id: String = row.try_get("proxy_id")?;
    let u = |name: &str| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(name)?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    let ttft: Option<i64> = row.try_get("ttft_us")?;
    Ok(StoredUsage {
        gateway: row.try_get("gateway")?,
        node: row.try_get("node")?,
        entry: UsageEntry {
            id: uuid::Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
            at: super::from_ms(row.try_get("at")?),
            proxy_id: uuid::Uuid::parse_str(&proxy_id).map_err(|_| corrupt("proxy_id"))?,
            proxy: row.try_get("proxy")?,
            route: row.try_get("route")?,
            model: row.try_get("model")?,
            consumer: row.try_get("consumer")?,
            provider: row.try_get("provider")?,
            status: u16::try_from(u("status")?).map_err(|_| corrupt("status"))?,
            input_tokens: u("input_tokens")?,
            output_tokens: u("output_tokens")?,
            cached_input_tokens: u("cached_input_tokens")?,
            reasoning_tokens: u("reasoning_tokens")?,
            cost_nano_usd: u("cost_nano_usd")?,
            latency_us: u("latency_us")?,
            ttft_us: ttft.map(|v| u64::try_from(v).unwrap_or(0)),
            fell_back: u("fell_back")? != 0,
            stream: u("stream")? != 0,
            estimated: u("estimated")? != 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_days_hours_and_edges() {
        let d = DAY_MS;
        let h = HOUR_MS;
        // Whole days only.
        assert_eq!(
            plan(10 * d, 12 * d),
            Plan {
                daily: Some((10 * d, 12 * d)),
                hourly: vec![],
                raw: vec![]
            }
        );
        // Hour-aligned edges around whole days.
        assert_eq!(
            plan(10 * d - 2 * h, 12 * d + 3 * h),
            Plan {
                daily: Some((10 * d, 12 * d)),
                hourly: vec![(10 * d - 2 * h, 10 * d), (12 * d, 12 * d + 3 * h)],
                raw: vec![]
            }
        );
        // Minutes on both ends, within one day.
        let (a, b) = (10 * d + h + 60_000, 10 * d + 5 * h + 120_000);
        assert_eq!(
            plan(a, b),
            Plan {
                daily: None,
                hourly: vec![(10 * d + 2 * h, 10 * d + 5 * h)],
                raw: vec![(a, 10 * d + 2 * h), (10 * d + 5 * h, b)]
            }
        );
        // Within one hour.
        assert_eq!(
            plan(a, a + 1000),
            Plan {
                daily: None,
                hourly: vec![],
                raw: vec![(a, a + 1000)]
            }
        );
    }
}
