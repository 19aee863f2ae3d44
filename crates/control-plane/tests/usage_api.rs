//! `GET /api/v1/usage` over real HTTP, fed over real gRPC (a tonic client plays the node),
//! on both stores: the report's JSON against hand-computed totals, and every bad parameter
//! refused naming it.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use switchyard_control_plane::crypto::Keyring;
use switchyard_control_plane::{ControlPlane, ControlPlaneConfig};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::usage_reporting_client::UsageReportingClient;
use switchyard_testkit::pg::PgDatabase;

const ADMIN: &str = "admin";
const PROXY: &str = "0195f3a2-0000-7000-8000-00000000000a";

async fn start(url: &str) -> ControlPlane {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    ControlPlane::start(ControlPlaneConfig {
        admin_listen: any,
        grpc_listen: any,
        admin_token: Some(ADMIN.into()),
        ..ControlPlaneConfig::new(url, Keyring::generate_key())
    })
    .await
    .unwrap()
}

async fn get(cp: &ControlPlane, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req =
        reqwest::Client::new().get(format!("http://{}/api/v1/usage?{query}", cp.admin_addr()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// `2026-11-DDTHH:MM:00Z` in unix ms.
fn at(day: u32, hour: u32, minute: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(2026, 11, day)
        .unwrap()
        .and_hms_opt(hour, minute, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

fn record(
    n: u8,
    at_ms: i64,
    consumer: &str,
    model: &str,
    status: u32,
    input: u64,
    cost: u64,
) -> pb::UsageRecord {
    pb::UsageRecord {
        id: [n; 16].to_vec(),
        at_unix_ms: at_ms,
        proxy_id: PROXY.into(),
        proxy: "support".into(),
        route: "openai".into(),
        model: model.into(),
        consumer: consumer.into(),
        status,
        input_tokens: input,
        output_tokens: input / 2,
        cached_input_tokens: 1,
        reasoning_tokens: 0,
        cost_nano_usd: cost,
        provider: "openai".into(),
        ..Default::default()
    }
}

async fn report_and_validation(url: &str) {
    let cp = start(url).await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("http://{}/api/v1/gateways", cp.admin_addr()))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "prod-eu"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["registration_token"].as_str().unwrap().to_owned();
    let mut node = UsageReportingClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap();
    let records = vec![
        record(
            1,
            at(3, 9, 15),
            "billing-app",
            "gpt-4.1",
            200,
            100,
            1_500_000_000,
        ),
        record(2, at(3, 9, 45), "billing-app", "gpt-4.1", 502, 0, 0),
        record(3, at(3, 23, 59), "", "gpt-4.1-mini", 200, 40, 250_000_000),
        record(4, at(4, 0, 0), "search-app", "gpt-4.1", 200, 10, 2_000_000),
    ];
    let ack = node
        .report(pb::UsageBatch {
            gateway: "prod-eu".into(),
            node_id: "node-1".into(),
            registration_token: token,
            records,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 4);

    let month = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
    let (status, rows) = get(&cp, &format!("{month}&group_by=consumer,day"), Some(ADMIN)).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows,
        json!([
            {"consumer": null, "day": "2026-11-03", "requests": 1, "errors": 0, "input_tokens": 40,
             "output_tokens": 20, "cached_input_tokens": 1, "reasoning_tokens": 0, "cost_usd": 0.25},
            {"consumer": "billing-app", "day": "2026-11-03", "requests": 2, "errors": 1, "input_tokens": 100,
             "output_tokens": 50, "cached_input_tokens": 2, "reasoning_tokens": 0, "cost_usd": 1.5},
            {"consumer": "search-app", "day": "2026-11-04", "requests": 1, "errors": 0, "input_tokens": 10,
             "output_tokens": 5, "cached_input_tokens": 1, "reasoning_tokens": 0, "cost_usd": 0.002},
        ])
    );
    let (_, rows) = get(
        &cp,
        &format!("{month}&group_by=gateway,proxy&model=gpt-4.1"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        rows,
        json!([{"gateway": "prod-eu", "proxy_id": PROXY, "proxy": "support", "requests": 3, "errors": 1,
                "input_tokens": 110, "output_tokens": 55, "cached_input_tokens": 3, "reasoning_tokens": 0,
                "cost_usd": 1.502}])
    );
    // An offset in `from`; the range's edges inside hours (09:30 to 23:59:30).
    let (_, rows) = get(
        &cp,
        "from=2026-11-03T10:30:00%2B01:00&to=2026-11-03T23:59:30Z&consumer=",
        Some(ADMIN),
    )
    .await;
    assert_eq!(rows[0]["requests"], 1, "{rows}");
    let (_, rows) = get(
        &cp,
        "from=2026-11-03T09:30:00Z&to=2026-11-03T23:59:30Z",
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (rows[0]["requests"].clone(), rows[0]["errors"].clone()),
        (json!(2), json!(1)),
        "{rows}"
    );

    // No token: 401. Every bad parameter: 400 naming it (422 for the rules across them).
    assert_eq!(get(&cp, month, None).await.0, 401);
    for (query, field, status) in [
        ("to=2026-12-01T00:00:00Z", "from", 400),
        ("from=2026-11-01T00:00:00Z", "to", 400),
        ("from=last-week&to=2026-12-01T00:00:00Z", "from", 400),
        ("from=2026-11-01&to=2026-12-01T00:00:00Z", "from", 400),
        (
            "from=2026-11-01T00:00:00Z&to=2026-12-01T25:00:00Z",
            "to",
            400,
        ),
        (&format!("{month}&group_by=consumer,week"), "group_by", 400),
        (&format!("{month}&gateway=Prod_EU"), "gateway", 400),
        (&format!("{month}&proxy=support"), "proxy", 400),
        (&format!("{month}&model={}", "m".repeat(300)), "model", 400),
        (&format!("{month}&consumer=a%0Ab"), "consumer", 400),
        (&format!("{month}&page=2"), "page", 400),
        (&format!("{month}&from=2026-11-02T00:00:00Z"), "from", 400),
        (
            "from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z",
            "to",
            422,
        ),
        (
            "from=2025-01-01T00:00:00Z&to=2026-11-01T00:00:00Z",
            "to",
            422,
        ),
        ("from=%ZZ&to=2026-12-01T00:00:00Z", "from", 400),
    ] {
        let (s, body) = get(&cp, query, Some(ADMIN)).await;
        assert_eq!(s, status, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_report_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    report_and_validation(&format!("sqlite://{}/cp.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_report_and_validation() {
    let db = PgDatabase::create().await;
    report_and_validation(db.url()).await;
}
