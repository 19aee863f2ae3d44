use std::time::Duration;

use chrono::TimeZone;
use switchyard_model::{BudgetPeriod, ConsumerProxies, NodeKey, Selector, Window};
use switchyard_testkit::redis::{RedisServer, unique_prefix};

use super::*;
use counters::{LEASE_IDLE, MAX_LEASE};

const KEY: &str = "sy_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const OTHER_KEY: &str = "sy_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn limit(name: &str, amount: LimitAmount, window: &str, key: LimitKey) -> RateLimit {
    RateLimit {
        name: name.into(),
        amount,
        window: Window::parse("w", window).unwrap(),
        key,
    }
}

fn governance(proxies: ConsumerProxies, expires_at: Option<chrono::DateTime<Utc>>) -> Governance {
    let snapshot = Snapshot {
        gateway: "gw".into(),
        version: 1,
        proxies: vec![],
        semantic_services: vec![],
        topics: vec![],
        consumers: vec![NodeConsumer {
            name: "billing-app".into(),
            proxies,
            rate_limits: vec![],
            budget: None,
            keys: vec![NodeKey {
                id: Uuid::new_v4(),
                hash: key_hash(KEY),
                expires_at,
            }],
        }],
        prices: vec![],
        created_at: Utc::now(),
    };
    Governance::compile(&snapshot)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    h
}

#[test]
fn keys_are_found_in_each_formats_place() {
    let bearer = format!("Bearer {KEY}");
    for (h, q) in [
        (headers(&[("authorization", &bearer)]), None),
        (
            headers(&[("authorization", &format!("bearer  {KEY} "))]),
            None,
        ),
        (headers(&[("x-api-key", KEY)]), None),
        (headers(&[("x-goog-api-key", KEY)]), None),
        (headers(&[]), Some(format!("alt=sse&key={KEY}"))),
    ] {
        assert_eq!(presented_key(&h, q.as_deref()).as_deref(), Some(KEY));
    }
    assert_eq!(presented_key(&headers(&[]), Some("alt=sse")), None);
    assert_eq!(
        presented_key(&headers(&[("authorization", "Basic abc")]), None).as_deref(),
        Some("Basic abc")
    );
    assert_eq!(
        query_param("a=1&key=x%2By+z", "key").as_deref(),
        Some("x+y z")
    );
    // The query is read as dynamic credentials read it (one parser): a bad escape is no key
    // at all (then 401 missing_api_key).
    assert_eq!(query_param("key=%zz%4", "key"), None);
}

#[test]
fn authentication_refuses_missing_unknown_expired_and_foreign_keys() {
    let proxy = Uuid::new_v4();
    let gov = governance(ConsumerProxies::All, None);
    let with = |k: &str| headers(&[("authorization", &format!("Bearer {k}"))]);
    assert_eq!(
        &*gov.authenticate(proxy, &with(KEY), None).unwrap().name,
        "billing-app"
    );
    assert_eq!(
        gov.authenticate(proxy, &headers(&[]), None).unwrap_err(),
        ProxyError::MissingConsumerKey
    );
    for bad in [
        OTHER_KEY,
        "sk-not-ours",
        "sy_short",
        "",
        "sy_ÄAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert_eq!(
            gov.authenticate(proxy, &headers(&[("x-api-key", bad)]), None)
                .unwrap_err(),
            ProxyError::InvalidConsumerKey,
            "{bad}"
        );
    }
    // Expired keys are refused by the node itself, without a new snapshot.
    let expired = governance(
        ConsumerProxies::All,
        Some(Utc::now() - chrono::Duration::seconds(1)),
    );
    assert_eq!(
        expired.authenticate(proxy, &with(KEY), None).unwrap_err(),
        ProxyError::InvalidConsumerKey
    );
    let later = governance(
        ConsumerProxies::All,
        Some(Utc::now() + chrono::Duration::hours(1)),
    );
    assert!(later.authenticate(proxy, &with(KEY), None).is_ok());
    // A consumer not allowed on this proxy: 403.
    let elsewhere = governance(ConsumerProxies::Only(vec![Uuid::new_v4()]), None);
    assert_eq!(
        elsewhere.authenticate(proxy, &with(KEY), None).unwrap_err(),
        ProxyError::ConsumerNotAllowed
    );
    let here = governance(ConsumerProxies::Only(vec![proxy]), None);
    assert!(here.authenticate(proxy, &with(KEY), None).is_ok());
}

fn consumer(
    name: &str,
    rate_limits: Vec<RateLimit>,
    budget: Option<Budget>,
) -> Arc<CompiledConsumer> {
    Arc::new(CompiledConsumer {
        name: Arc::from(name),
        proxies: ConsumerProxies::All,
        rate_limits,
        budget,
    })
}

#[test]
fn each_limit_key_counts_separately() {
    let proxy_id = Uuid::new_v4();
    let name: Arc<str> = Arc::from("support");
    let tenant =
        LimitKey::Selector(Selector::parse("k", "#[attributes.headers['x-tenant']]").unwrap());
    let proxy = ProxyGovernance {
        client_auth: true,
        rate_limits: vec![
            limit("all", LimitAmount::Requests(10), "1m", LimitKey::Proxy),
            limit(
                "per-app",
                LimitAmount::Tokens(1000),
                "1h",
                LimitKey::Consumer,
            ),
            limit("per-tenant", LimitAmount::Requests(5), "30s", tenant),
        ],
        budget: Some(Budget {
            usd: 5.0,
            period: BudgetPeriod::Day,
        }),
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    let h = headers(&[("x-tenant", "acme")]);
    let app = consumer(
        "billing-app",
        vec![limit(
            "app-rpm",
            LimitAmount::Requests(3),
            "1m",
            LimitKey::Consumer,
        )],
        Some(Budget {
            usd: 1.5,
            period: BudgetPeriod::Month,
        }),
    );
    let req = Request {
        proxy_id,
        proxy_name: &name,
        proxy: &proxy,
        consumer: Some(Arc::clone(&app)),
        headers: &h,
        query: None,
    };
    let slots = plan("pre", &req, now);
    let keys: Vec<&str> = slots.iter().map(|s| s.counter.key.as_str()).collect();
    let p = format!("pre:p:{proxy_id}");
    assert_eq!(
        keys,
        [
            format!("{p}:l:all:60:{proxy_id}").as_str(),
            format!("{p}:l:per-app:3600:billing-app").as_str(),
            format!("{p}:l:per-tenant:30:acme").as_str(),
            format!("{p}:b:2026-11-25").as_str(),
            "pre:c:billing-app:l:app-rpm:60:billing-app",
            "pre:c:billing-app:b:2026-11",
        ]
    );
    let kinds: Vec<CounterKind> = slots.iter().map(|s| s.counter.kind).collect();
    assert_eq!(
        kinds,
        [
            CounterKind::Requests,
            CounterKind::Consumption,
            CounterKind::Requests,
            CounterKind::Consumption,
            CounterKind::Requests,
            CounterKind::Consumption,
        ]
    );
    // A budget counts nano-USD until its period ends.
    assert_eq!(slots[3].counter.limit, 5_000_000_000);
    assert_eq!(slots[3].counter.window_ms, 12 * 3600 * 1000);
    // Without the header, the empty value; a hostile value is hashed, never used raw.
    let bare = headers(&[]);
    let hostile = headers(&[("x-tenant", "a:b cé")]);
    for (h, want) in [
        (&bare, ":l:per-tenant:30:"),
        (&hostile, ":l:per-tenant:30:h."),
    ] {
        let req = Request {
            headers: h,
            consumer: None,
            ..req_ref(&req)
        };
        let slots = plan("pre", &req, now);
        assert!(
            slots[2].counter.key.contains(want),
            "{}",
            slots[2].counter.key
        );
        assert!(!slots[2].counter.key.contains(' '));
        // No consumer: its limits do not apply, and the consumer key is empty.
        assert_eq!(slots.len(), 4);
        assert!(slots[1].counter.key.ends_with(":l:per-app:3600:"));
    }
}

fn req_ref<'a>(r: &Request<'a>) -> Request<'a> {
    Request {
        proxy_id: r.proxy_id,
        proxy_name: r.proxy_name,
        proxy: r.proxy,
        consumer: r.consumer.clone(),
        headers: r.headers,
        query: r.query,
    }
}

#[test]
fn headers_show_the_tightest_limit_of_each_kind() {
    let slot = |name: &str, amount: LimitAmount, limit: i64| Slot {
        counter: Counter {
            key: name.into(),
            kind: match amount {
                LimitAmount::Requests(_) => CounterKind::Requests,
                LimitAmount::Tokens(_) => CounterKind::Consumption,
            },
            limit,
            window_ms: 60_000,
        },
        what: SlotKind::Limit {
            name: Arc::from(name),
            amount,
        },
    };
    let slots = [
        slot("a", LimitAmount::Requests(100), 100),
        slot("b", LimitAmount::Requests(10), 10),
        slot("t", LimitAmount::Tokens(5000), 5000),
    ];
    let states = [
        counters::CounterState {
            value: 50,
            ttl_ms: 30_000,
        },
        counters::CounterState {
            value: 9,
            ttl_ms: 1_500,
        },
        counters::CounterState {
            value: 6000,
            ttl_ms: 59_001,
        },
    ];
    let h = ratelimit_headers(&slots, &states);
    let get = |n: &str| {
        h.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(get("x-ratelimit-limit-requests"), "10");
    assert_eq!(get("x-ratelimit-remaining-requests"), "1");
    assert_eq!(get("x-ratelimit-reset-requests"), "2");
    assert_eq!(get("x-ratelimit-limit-tokens"), "5000");
    assert_eq!(get("x-ratelimit-remaining-tokens"), "0");
    assert_eq!(get("x-ratelimit-reset-tokens"), "60");
    assert_eq!(retry_after_secs(1, 60_000), 1);
    assert_eq!(retry_after_secs(59_001, 60_000), 60);
    assert_eq!(retry_after_secs(-2, 60_000), 60);
}

#[test]
fn money_counts_in_whole_nano_dollars() {
    assert_eq!(usd_to_nanos(50.0), 50_000_000_000);
    assert_eq!(usd_to_nanos(0.000_001_5), 1_500);
    assert_eq!(usd_to_nanos(-1.0), 0);
    assert_eq!(usd_to_nanos(f64::MAX), i64::MAX);
}

fn counter(prefix: &str, name: &str, kind: CounterKind, limit: i64, window_ms: i64) -> Counter {
    Counter {
        key: format!("{prefix}:{name}"),
        kind,
        limit,
        window_ms,
    }
}

/// Charges `amount` as `Gate::settle` does: now, or later when the node's share holds it.
async fn charge(handle: &CounterHandle, c: &Counter, amount: i64) -> Vec<Option<i64>> {
    let charges = [(c.clone(), amount)];
    match handle.charge(&charges) {
        Some(values) => values,
        None => handle.charge_now(&charges).await,
    }
}

/// The Lua scripts on a real Redis, every admission and charge sent (share 0): the same
/// semantics as the local counters.
#[tokio::test]
async fn the_redis_scripts_admit_refuse_charge_and_expire() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let counters = Counters::new(LimitsConfig {
        redis_url: Some(server.url()),
        key_prefix: prefix.clone(),
        timeout: Duration::from_secs(2),
        on_failure: FailureMode::Closed,
        local_share: 0.0,
        ..LimitsConfig::default()
    })
    .unwrap();
    let handle = CounterHandle::new(counters);
    let reqs = counter(&prefix, "r", CounterKind::Requests, 2, 60_000);
    let toks = counter(&prefix, "t", CounterKind::Consumption, 100, 60_000);
    let both = [&reqs, &toks];
    let Verdict::Admitted(s) = handle.admit(&both).await.unwrap() else {
        panic!("refused")
    };
    assert_eq!((s[0].value, s[1].value), (1, 0));
    assert!(s[0].ttl_ms > 59_000 && s[1].ttl_ms > 59_000, "{s:?}");
    assert_eq!(charge(&handle, &toks, 99).await, vec![Some(99)]);
    assert!(matches!(
        handle.admit(&both).await.unwrap(),
        Verdict::Admitted(_)
    ));
    // Both limits reached: the first one at its limit is named.
    assert!(matches!(
        handle.admit(&both).await.unwrap(),
        Verdict::Refused { index: 0, ttl_ms } if ttl_ms > 0
    ));
    assert_eq!(charge(&handle, &toks, 1).await, vec![Some(100)]);
    assert!(matches!(
        handle.admit(&[&toks]).await.unwrap(),
        Verdict::Refused { index: 0, .. }
    ));
    // A short window ends, and counting starts again.
    let short = counter(&prefix, "s", CounterKind::Requests, 1, 200);
    assert!(matches!(
        handle.admit(&[&short]).await.unwrap(),
        Verdict::Admitted(_)
    ));
    assert!(matches!(
        handle.admit(&[&short]).await.unwrap(),
        Verdict::Refused { .. }
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        handle.admit(&[&short]).await.unwrap(),
        Verdict::Admitted(_)
    ));
}

/// Redis away: `closed` refuses, `open` counts locally; both go back to Redis when it answers.
#[tokio::test]
async fn a_failed_redis_falls_back_and_comes_back() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix();
    let make = |mode| {
        CounterHandle::new(
            Counters::new(LimitsConfig {
                redis_url: Some(server.url()),
                key_prefix: prefix.clone(),
                timeout: Duration::from_millis(200),
                on_failure: mode,
                local_share: 0.0,
                ..LimitsConfig::default()
            })
            .unwrap(),
        )
    };
    let open = make(FailureMode::Open);
    let closed = make(FailureMode::Closed);
    let c = counter(&prefix, "r", CounterKind::Requests, 1000, 60_000);
    for h in [&open, &closed] {
        assert!(matches!(h.admit(&[&c]).await, Ok(Verdict::Admitted(_))));
    }
    server.stop();
    assert_eq!(closed.admit(&[&c]).await, Err(Unavailable));
    assert!(closed.shared().describe().contains("unavailable"));
    // Open: local counters, starting from zero on this node.
    let Ok(Verdict::Admitted(s)) = open.admit(&[&c]).await else {
        panic!("open mode refused")
    };
    assert_eq!(s[0].value, 1);
    assert!(open.shared().describe().contains("local"));
    server.restart();
    // The next probes (every 500 ms) find it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = open.admit(&[&c]).await;
        let b = closed.admit(&[&c]).await;
        if open.shared().describe() == "limits: redis"
            && closed.shared().describe() == "limits: redis"
        {
            assert!(matches!(b, Ok(Verdict::Admitted(_))) || b == Err(Unavailable));
            assert!(a.is_ok());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back on Redis: a fresh server, so the shared count starts again.
    let Ok(Verdict::Admitted(s)) = open.admit(&[&c]).await else {
        panic!("refused")
    };
    let Ok(Verdict::Admitted(t)) = closed.admit(&[&c]).await else {
        panic!("refused")
    };
    assert_eq!(
        t[0].value,
        s[0].value + 1,
        "both count on the same shared counter"
    );
}

/// A node of a gateway, counting on `server` with the default share (0.5).
fn sharing_node(server: &RedisServer, prefix: &str) -> CounterHandle {
    CounterHandle::new(
        Counters::new(LimitsConfig {
            redis_url: Some(server.url()),
            key_prefix: prefix.to_owned(),
            timeout: Duration::from_secs(2),
            on_failure: FailureMode::Closed,
            ..LimitsConfig::default()
        })
        .unwrap(),
    )
}

async fn redis_value(server: &RedisServer, key: &str) -> i64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<i64>>(&mut conn)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Leased admissions never pass a request limit, however the requests fall on the nodes, and
/// most of them never wait for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_request_limits_are_never_exceeded_and_rarely_ask_redis() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let nodes = [
        sharing_node(&server, &prefix),
        sharing_node(&server, &prefix),
        sharing_node(&server, &prefix),
    ];
    let c = counter(&prefix, "r", CounterKind::Requests, 500, 60_000);
    let admitted = futures::future::join_all((0..1500).map(|i| {
        let (node, c) = (nodes[i % 3].clone(), c.clone());
        async move { matches!(node.admit(&[&c]).await, Ok(Verdict::Admitted(_))) }
    }))
    .await;
    let admitted = admitted.iter().filter(|a| **a).count();
    assert_eq!(admitted, 500, "exactly the limit admitted over three nodes");
    let scripts: u64 = nodes.iter().map(|n| n.shared().scripts_run()).sum();
    eprintln!("{scripts} scripts for 500 admissions and 1000 refusals");
    // Without shares: 1,500 scripts. With them, a node's requests wait for its one lease
    // request in flight, and share its answer (a lease, or a refusal).
    assert!(
        scripts < 150,
        "{scripts} scripts for 500 admissions and 1000 refusals"
    );
    assert_eq!(redis_value(&server, &c.key).await, 500);
}

/// A lease a node does not use goes back, so another node can use the whole limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_lease_goes_back_to_the_shared_counter() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let (a, b) = (
        sharing_node(&server, &prefix),
        sharing_node(&server, &prefix),
    );
    let c = counter(&prefix, "r", CounterKind::Requests, 100, 60_000);
    assert!(matches!(a.admit(&[&c]).await, Ok(Verdict::Admitted(_))));
    // One node so far: it leased half the room (50), counted in Redis at once.
    assert_eq!(redis_value(&server, &c.key).await, 50);
    tokio::time::sleep(LEASE_IDLE + Duration::from_millis(200)).await;
    assert_eq!(
        redis_value(&server, &c.key).await,
        1,
        "the idle lease came back"
    );
    let mut admitted = 0;
    while matches!(b.admit(&[&c]).await, Ok(Verdict::Admitted(_))) {
        admitted += 1;
        assert!(admitted <= 100, "the limit never stopped node b");
    }
    assert_eq!(admitted, 99, "node b used everything node a did not");
}

/// Charges within a node's allowance wait for the next sync (every 10 ms); one past it is
/// sent at once; the view of the counter refuses at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_within_the_share_are_batched_and_past_it_sent_at_once() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let node = sharing_node(&server, &prefix);
    let toks = counter(&prefix, "t", CounterKind::Consumption, 1000, 60_000);
    assert!(matches!(
        node.admit(&[&toks]).await,
        Ok(Verdict::Admitted(_))
    ));
    // Allowance: (1000 - 0) × 0.5 ÷ 1 node = 500.
    let held = node.charge(&[(toks.clone(), 100)]);
    assert_eq!(held, Some(vec![Some(100)]), "held within the allowance");
    let scripts = node.shared().scripts_run();
    // Admitted from the share: no script.
    assert!(matches!(
        node.admit(&[&toks]).await,
        Ok(Verdict::Admitted(_))
    ));
    assert_eq!(node.shared().scripts_run(), scripts);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        redis_value(&server, &toks.key).await,
        100,
        "sent by the sync"
    );
    // After the sync: allowance (1000 - 100) × 0.5 = 450; 500 more is past it.
    assert_eq!(node.charge(&[(toks.clone(), 500)]), None);
    assert_eq!(
        node.charge_now(&[(toks.clone(), 500)]).await,
        vec![Some(600)]
    );
    assert_eq!(redis_value(&server, &toks.key).await, 600);
    // Near the limit every admission asks Redis; at it, refused.
    assert_eq!(charge(&node, &toks, 400).await, vec![Some(1000)]);
    assert!(matches!(
        node.admit(&[&toks]).await,
        Ok(Verdict::Refused { index: 0, .. })
    ));
}

/// With share 0 every admission is a script: counts are exact at every request.
#[tokio::test]
async fn share_zero_asks_redis_for_every_admission() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let node = CounterHandle::new(
        Counters::new(LimitsConfig {
            redis_url: Some(server.url()),
            key_prefix: prefix.clone(),
            timeout: Duration::from_secs(2),
            local_share: 0.0,
            ..LimitsConfig::default()
        })
        .unwrap(),
    );
    let c = counter(&prefix, "r", CounterKind::Requests, 1000, 60_000);
    for i in 1..=5 {
        let Ok(Verdict::Admitted(s)) = node.admit(&[&c]).await else {
            panic!("refused")
        };
        assert_eq!(s[0].value, i);
        assert_eq!(redis_value(&server, &c.key).await, i);
    }
    assert_eq!(node.shared().scripts_run(), 5);
}

#[test]
fn a_share_outside_zero_to_one_is_refused() {
    for share in [-0.1, 1.5, f64::NAN] {
        let err = Counters::new(LimitsConfig {
            local_share: share,
            ..LimitsConfig::default()
        })
        .unwrap_err();
        assert!(err.contains("--limits-local-share"), "{err}");
    }
}

/// A lowered limit is not passed on the strength of a lease granted under the old one.
#[tokio::test]
async fn a_lease_does_not_outlive_a_lowered_limit() {
    let server = RedisServer::start();
    let prefix = unique_prefix();
    let node = sharing_node(&server, &prefix);
    let generous = counter(&prefix, "r", CounterKind::Requests, 1000, 60_000);
    assert!(matches!(
        node.admit(&[&generous]).await,
        Ok(Verdict::Admitted(_))
    ));
    assert_eq!(
        redis_value(&server, &generous.key).await,
        MAX_LEASE,
        "a lease of 256 (half the room, capped)"
    );
    let tight = Counter {
        limit: 10,
        ..generous.clone()
    };
    assert!(matches!(
        node.admit(&[&tight]).await,
        Ok(Verdict::Refused { index: 0, .. })
    ));
    // Nor once the share has taken in the new limit.
    assert!(matches!(
        node.admit(&[&tight]).await,
        Ok(Verdict::Refused { index: 0, .. })
    ));
}
