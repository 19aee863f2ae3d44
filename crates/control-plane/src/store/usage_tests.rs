//! Usage storage, on both backends: idempotent ingest, rollups that agree with the raw rows,
//! reports against hand-computed totals, concurrent replicas, retention.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use switchyard_model::usage::{GroupBy, UsageEntry, UsageQuery};
use switchyard_testkit::pg::PgDatabase;
use uuid::Uuid;

use super::*;

struct Harness {
    store: Arc<Store>,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _db: Option<PgDatabase>,
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/switchyard.db", dir.path().display());
    Harness {
        store: Arc::new(Store::connect(&url).await.unwrap()),
        url,
        _dir: Some(dir),
        _db: None,
    }
}

async fn postgres() -> Harness {
    let db = PgDatabase::create().await;
    Harness {
        store: Arc::new(Store::connect(db.url()).await.unwrap()),
        url: db.url().to_owned(),
        _dir: None,
        _db: Some(db),
    }
}

macro_rules! usage_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::sqlite().await;
                    super::$name(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::postgres().await;
                    super::$name(&h).await;
                }
            )*
        }
    };
}

usage_suite!(
    ingest_is_idempotent,
    reports_match_hand_computed_totals,
    reports_agree_with_the_raw_rows_over_any_range,
    replicas_ingesting_the_same_batch_store_it_once,
    retention_deletes_raw_rows_and_skips_expired_records,
);

const PROXY_A: Uuid = Uuid::from_u128(0xa);
const PROXY_B: Uuid = Uuid::from_u128(0xb);

fn t(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, minute, 0)
        .unwrap()
}

#[expect(
    clippy::too_many_arguments,
    reason = "a test fixture: every dimension at once"
)]
fn entry(
    at: DateTime<Utc>,
    proxy: Uuid,
    route: &str,
    model: &str,
    consumer: &str,
    status: u16,
    input: u64,
    output: u64,
    cost_nano: u64,
) -> UsageEntry {
    UsageEntry {
        id: Uuid::now_v7(),
        at,
        proxy_id: proxy,
        proxy: if proxy == PROXY_A { "support" } else { "sales" }.into(),
        route: route.into(),
        model: model.into(),
        consumer: consumer.into(),
        provider: "openai".into(),
        status,
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: input / 4,
        reasoning_tokens: output / 5,
        cost_nano_usd: cost_nano,
        latency_us: 1000,
        ttft_us: None,
        fell_back: false,
        stream: false,
        estimated: false,
    }
}

fn query(from: DateTime<Utc>, to: DateTime<Utc>, group_by: &[GroupBy]) -> UsageQuery {
    UsageQuery {
        from,
        to,
        group_by: group_by.to_vec(),
        gateway: None,
        proxy: None,
        route: None,
        model: None,
        consumer: None,
    }
}

fn totals(rows: &[UsageRow]) -> BTreeMap<Vec<String>, (i64, i64, i64, i64, i64)> {
    rows.iter()
        .map(|r| {
            let t = &r.totals;
            (
                r.group.clone(),
                (
                    t.requests,
                    t.errors,
                    t.input_tokens,
                    t.output_tokens,
                    t.cost_nano_usd,
                ),
            )
        })
        .collect()
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

async fn ingest_is_idempotent(h: &Harness) {
    let store = &h.store;
    let batch: Vec<UsageEntry> = (0..2500)
        .map(|i| {
            entry(
                t(3, 10, i % 60),
                PROXY_A,
                "openai",
                "gpt-4.1",
                "app",
                200,
                10,
                5,
                7,
            )
        })
        .collect();
    let first = store
        .ingest_usage("prod-eu", "n1", &batch, None)
        .await
        .unwrap();
    assert_eq!(
        first,
        Ingested {
            stored: 2500,
            duplicates: 0,
            expired: 0
        }
    );
    // The same batch again (its answer was lost), and a batch overlapping it.
    let again = store
        .ingest_usage("prod-eu", "n1", &batch, None)
        .await
        .unwrap();
    assert_eq!(
        again,
        Ingested {
            stored: 0,
            duplicates: 2500,
            expired: 0
        }
    );
    let mut overlap = batch[2000..].to_vec();
    overlap.push(entry(
        t(3, 11, 0),
        PROXY_A,
        "openai",
        "gpt-4.1",
        "app",
        200,
        10,
        5,
        7,
    ));
    let third = store
        .ingest_usage("prod-eu", "n2", &overlap, None)
        .await
        .unwrap();
    assert_eq!(
        third,
        Ingested {
            stored: 1,
            duplicates: 500,
            expired: 0
        }
    );

    let rows = store
        .usage_report(&query(t(1, 0, 0), t(10, 0, 0), &[]))
        .await
        .unwrap();
    assert_eq!(totals(&rows)[&vec![]], (2501, 0, 25010, 12505, 2501 * 7));
    let raw = store.usage_records(t(1, 0, 0), t(10, 0, 0)).await.unwrap();
    assert_eq!(raw.len(), 2501);
    // The stored record is the one sent, under the gateway and node of the batch.
    let sent = &batch[17];
    let stored = raw.iter().find(|r| r.entry.id == sent.id).unwrap();
    assert_eq!(
        (&stored.entry, stored.gateway.as_str(), stored.node.as_str()),
        (sent, "prod-eu", "n1")
    );
}

/// A small, fixed data set whose totals are written out by hand.
fn fixture() -> Vec<(&'static str, UsageEntry)> {
    vec![
        // Nov 3: billing-app on support/gpt-4.1 twice (one error), on sales once.
        (
            "prod-eu",
            entry(
                t(3, 9, 15),
                PROXY_A,
                "openai",
                "gpt-4.1",
                "billing-app",
                200,
                100,
                20,
                1_000,
            ),
        ),
        (
            "prod-eu",
            entry(
                t(3, 9, 45),
                PROXY_A,
                "openai",
                "gpt-4.1",
                "billing-app",
                502,
                0,
                0,
                0,
            ),
        ),
        (
            "prod-us",
            entry(
                t(3, 23, 59),
                PROXY_B,
                "claude",
                "anthropic.claude",
                "billing-app",
                200,
                300,
                40,
                5_000,
            ),
        ),
        // Nov 4: search-app, and a request without a consumer.
        (
            "prod-eu",
            entry(
                t(4, 0, 0),
                PROXY_A,
                "openai",
                "gpt-4.1-mini",
                "search-app",
                200,
                50,
                10,
                200,
            ),
        ),
        (
            "prod-eu",
            entry(t(4, 12, 30), PROXY_A, "openai", "gpt-4.1", "", 429, 0, 0, 0),
        ),
        // Nov 5, 08:10: search-app on sales.
        (
            "prod-us",
            entry(
                t(5, 8, 10),
                PROXY_B,
                "claude",
                "anthropic.claude",
                "search-app",
                200,
                700,
                70,
                9_000,
            ),
        ),
    ]
}

async fn ingest_fixture(store: &Store) {
    for (gateway, e) in fixture() {
        store
            .ingest_usage(gateway, "node-1", &[e], None)
            .await
            .unwrap();
    }
}

async fn reports_match_hand_computed_totals(h: &Harness) {
    let store = &h.store;
    ingest_fixture(store).await;
    let month = |g: &[GroupBy]| query(t(1, 0, 0), t(30, 0, 0), g);

    let by_consumer_day = totals(
        &store
            .usage_report(&month(&[GroupBy::Consumer, GroupBy::Day]))
            .await
            .unwrap(),
    );
    let expected: BTreeMap<_, _> = [
        (key(&["", "2026-11-04"]), (1, 1, 0, 0, 0)),
        (key(&["billing-app", "2026-11-03"]), (3, 1, 400, 60, 6_000)),
        (key(&["search-app", "2026-11-04"]), (1, 0, 50, 10, 200)),
        (key(&["search-app", "2026-11-05"]), (1, 0, 700, 70, 9_000)),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_consumer_day, expected);

    let by_gateway_model = totals(
        &store
            .usage_report(&month(&[GroupBy::Gateway, GroupBy::Model]))
            .await
            .unwrap(),
    );
    let expected: BTreeMap<_, _> = [
        (key(&["prod-eu", "gpt-4.1"]), (3, 2, 100, 20, 1_000)),
        (key(&["prod-eu", "gpt-4.1-mini"]), (1, 0, 50, 10, 200)),
        (
            key(&["prod-us", "anthropic.claude"]),
            (2, 0, 1000, 110, 14_000),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_gateway_model, expected);

    // Grouped by proxy: the id, with the name beside it.
    let by_proxy = store.usage_report(&month(&[GroupBy::Proxy])).await.unwrap();
    assert_eq!(by_proxy.len(), 2);
    let support = by_proxy
        .iter()
        .find(|r| r.group[0] == PROXY_A.to_string())
        .unwrap();
    assert_eq!(support.proxy_name.as_deref(), Some("support"));
    assert_eq!(support.totals.requests, 4);

    // Filters: a gateway and a consumer; the empty consumer selects requests without one.
    let mut q = month(&[GroupBy::Route]);
    q.gateway = Some("prod-us".into());
    q.consumer = Some("search-app".into());
    assert_eq!(
        totals(&store.usage_report(&q).await.unwrap()),
        [(key(&["claude"]), (1, 0, 700, 70, 9_000))]
            .into_iter()
            .collect()
    );
    let mut q = month(&[]);
    q.consumer = Some(String::new());
    assert_eq!(
        totals(&store.usage_report(&q).await.unwrap())[&vec![]],
        (1, 1, 0, 0, 0)
    );
    let mut q = month(&[]);
    q.proxy = Some(PROXY_B);
    q.model = Some("anthropic.claude".into());
    assert_eq!(
        totals(&store.usage_report(&q).await.unwrap())[&vec![]],
        (2, 0, 1000, 110, 14_000)
    );

    // A range with minute edges: Nov 3 09:30 – Nov 4 12:30 (the 09:15 request is out, the
    // 12:30 one too: `to` is exclusive).
    let q = query(t(3, 9, 30), t(4, 12, 30), &[GroupBy::Day]);
    assert_eq!(
        totals(&store.usage_report(&q).await.unwrap()),
        [
            (key(&["2026-11-03"]), (2, 1, 300, 40, 5_000)),
            (key(&["2026-11-04"]), (1, 0, 50, 10, 200)),
        ]
        .into_iter()
        .collect()
    );
    // Nothing in range: one row of zeros without grouping, no rows with it.
    let empty = query(t(20, 0, 0), t(21, 0, 0), &[]);
    assert_eq!(
        totals(&store.usage_report(&empty).await.unwrap())[&vec![]],
        (0, 0, 0, 0, 0)
    );
    let empty = query(t(20, 0, 0), t(21, 0, 0), &[GroupBy::Day]);
    assert!(store.usage_report(&empty).await.unwrap().is_empty());
}

/// The straightforward answer: every raw record in range, filtered and summed in memory.
fn reference(
    entries: &[(&str, UsageEntry)],
    q: &UsageQuery,
) -> BTreeMap<Vec<String>, (i64, i64, i64, i64, i64)> {
    let mut out: BTreeMap<Vec<String>, (i64, i64, i64, i64, i64)> = BTreeMap::new();
    for (gateway, e) in entries {
        if e.at < q.from || e.at >= q.to {
            continue;
        }
        if q.consumer.as_ref().is_some_and(|c| *c != e.consumer)
            || q.gateway.as_deref().is_some_and(|g| g != *gateway)
        {
            continue;
        }
        let group: Vec<String> = q
            .group_by
            .iter()
            .map(|g| match g {
                GroupBy::Gateway => (*gateway).to_owned(),
                GroupBy::Proxy => e.proxy_id.to_string(),
                GroupBy::Route => e.route.clone(),
                GroupBy::Model => e.model.clone(),
                GroupBy::Consumer => e.consumer.clone(),
                GroupBy::Day => e.at.format("%Y-%m-%d").to_string(),
            })
            .collect();
        let s = out.entry(group).or_default();
        s.0 += 1;
        s.1 += i64::from(e.status >= 400);
        s.2 += e.input_tokens as i64;
        s.3 += e.output_tokens as i64;
        s.4 += e.cost_nano_usd as i64;
    }
    out
}

async fn reports_agree_with_the_raw_rows_over_any_range(h: &Harness) {
    let store = &h.store;
    // Records every 7 minutes over 3 days, spread over consumers, models and gateways.
    let consumers = ["a", "b", ""];
    let models = ["gpt-4.1", "gemini-2.5-flash"];
    let entries: Vec<(&str, UsageEntry)> = (0..(3 * 24 * 60 / 7))
        .map(|i: u32| {
            let at = t(10, 0, 0) + chrono::Duration::minutes(i64::from(i) * 7);
            let gateway = if i.is_multiple_of(5) {
                "prod-us"
            } else {
                "prod-eu"
            };
            let status = if i.is_multiple_of(11) { 500 } else { 200 };
            (
                gateway,
                entry(
                    at,
                    PROXY_A,
                    "r",
                    models[(i % 2) as usize],
                    consumers[(i % 3) as usize],
                    status,
                    u64::from(i % 97),
                    u64::from(i % 13),
                    u64::from(i) * 3,
                ),
            )
        })
        .collect();
    for chunk in entries.chunks(100) {
        for gateway in ["prod-eu", "prod-us"] {
            let batch: Vec<UsageEntry> = chunk
                .iter()
                .filter(|(g, _)| *g == gateway)
                .map(|(_, e)| e.clone())
                .collect();
            store
                .ingest_usage(gateway, "n", &batch, None)
                .await
                .unwrap();
        }
    }
    let ranges = [
        (t(10, 0, 0), t(13, 0, 0)),
        (t(10, 3, 17), t(12, 22, 3)),
        (t(10, 23, 59), t(11, 0, 1)),
        (t(11, 5, 0), t(11, 9, 0)),
        (t(9, 0, 0), t(20, 0, 0)),
        (t(12, 0, 30), t(12, 0, 31)),
    ];
    let groupings: [&[GroupBy]; 4] = [
        &[],
        &[GroupBy::Consumer, GroupBy::Day],
        &[GroupBy::Gateway, GroupBy::Model, GroupBy::Day],
        &[GroupBy::Day, GroupBy::Consumer],
    ];
    for (from, to) in ranges {
        for g in groupings {
            for consumer in [None, Some("a"), Some("")] {
                let mut q = query(from, to, g);
                q.consumer = consumer.map(str::to_owned);
                let mut expected = reference(&entries, &q);
                if g.is_empty() && expected.is_empty() {
                    expected.insert(vec![], (0, 0, 0, 0, 0));
                }
                let got = totals(&store.usage_report(&q).await.unwrap());
                assert_eq!(got, expected, "{from} – {to}, {g:?}, consumer {consumer:?}");
            }
        }
    }
}

async fn replicas_ingesting_the_same_batch_store_it_once(h: &Harness) {
    // Two stores on one database: the two replicas of a control plane.
    let other = Arc::new(Store::connect(&h.url).await.unwrap());
    let batches: Vec<Vec<UsageEntry>> = (0..6)
        .map(|b| {
            (0..400)
                .map(|i| {
                    entry(
                        t(4, (b * 3) % 24, i % 60),
                        PROXY_A,
                        "openai",
                        "gpt-4.1",
                        ["x", "y"][(i % 2) as usize],
                        200,
                        3,
                        2,
                        1,
                    )
                })
                .collect()
        })
        .collect();
    let mut tasks = Vec::new();
    for round in 0..2 {
        for batch in &batches {
            // Each batch reaches both replicas at once (a node's retry after a lost answer).
            for store in [&h.store, &other] {
                let (store, batch) = (Arc::clone(store), batch.clone());
                tasks.push(tokio::spawn(async move {
                    let _ = round;
                    store
                        .ingest_usage("prod-eu", "n", &batch, None)
                        .await
                        .unwrap()
                }));
            }
        }
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap().stored;
    }
    assert_eq!(stored, 2400);
    let rows = h
        .store
        .usage_report(&query(t(1, 0, 0), t(30, 0, 0), &[GroupBy::Consumer]))
        .await
        .unwrap();
    assert_eq!(
        totals(&rows),
        [
            (key(&["x"]), (1200, 0, 3600, 2400, 1200)),
            (key(&["y"]), (1200, 0, 3600, 2400, 1200)),
        ]
        .into_iter()
        .collect()
    );
    other.close().await;
}

async fn retention_deletes_raw_rows_and_skips_expired_records(h: &Harness) {
    let store = &h.store;
    let now = Utc::now();
    let old = entry(
        now - chrono::Duration::days(40),
        PROXY_A,
        "r",
        "m",
        "c",
        200,
        1,
        1,
        1,
    );
    let recent = entry(
        now - chrono::Duration::days(2),
        PROXY_A,
        "r",
        "m",
        "c",
        200,
        1,
        1,
        1,
    );
    // Kept for ever: both stored.
    let r = store
        .ingest_usage("g", "n", &[old.clone(), recent.clone()], None)
        .await
        .unwrap();
    assert_eq!(r.stored, 2);
    // 30 days: the old one's raw row goes; its rollups stay.
    let deleted = store
        .delete_usage_before(now - chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let raw = store
        .usage_records(now - chrono::Duration::days(400), now)
        .await
        .unwrap();
    assert_eq!(raw.len(), 1);
    let day =
        |d: DateTime<Utc>| Utc.from_utc_datetime(&d.date_naive().and_hms_opt(0, 0, 0).unwrap());
    let whole = query(
        day(now - chrono::Duration::days(41)),
        day(now + chrono::Duration::days(1)),
        &[],
    );
    assert_eq!(
        totals(&store.usage_report(&whole).await.unwrap())[&vec![]].0,
        2
    );
    // Sent again once its raw row is gone: acknowledged as expired, not counted twice.
    let r = store
        .ingest_usage("g", "n", &[old], Some(chrono::Duration::days(30)))
        .await
        .unwrap();
    assert_eq!(
        r,
        Ingested {
            stored: 0,
            duplicates: 0,
            expired: 1
        }
    );
    assert_eq!(
        totals(&store.usage_report(&whole).await.unwrap())[&vec![]].0,
        2
    );
}
