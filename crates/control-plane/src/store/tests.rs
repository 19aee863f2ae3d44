//! One suite, run against both backends (`sqlite::*` and `postgres::*`).

use std::sync::Arc;
use std::time::Duration;

use switchyard_model::{Limits, ProxySpec, parse_proxy_input};
use switchyard_testkit::pg::PgDatabase;

use super::*;

/// Keeps whatever backs a store (temp dir or database) alive for the test.
struct Harness {
    store: Arc<Store>,
    _dir: Option<tempfile::TempDir>,
    _db: Option<PgDatabase>,
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/switchyard.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    Harness {
        store: Arc::new(store),
        _dir: Some(dir),
        _db: None,
    }
}

async fn postgres() -> Harness {
    let db = PgDatabase::create().await;
    let store = Store::connect(db.url()).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    Harness {
        store: Arc::new(store),
        _dir: None,
        _db: Some(db),
    }
}

macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::sqlite().await;
                    super::$name(h.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::postgres().await;
                    super::$name(h.store.clone()).await;
                }
            )*
        }
    };
}

store_suite!(
    gateways_crud,
    proxies_crud_and_versions,
    unique_name_and_base_path,
    proxy_limit_holds_under_racing_creates,
    optimistic_version_check,
    concurrent_updates_are_serialised,
    proxy_cannot_move_gateways,
    snapshot_source_is_consistent,
    nodes_are_tracked,
    rewrite_specs_keeps_versions,
    node_updates_do_not_break_concurrent_writes,
);

fn spec(gateway: &str, name: &str, base_path: &str) -> ProxySpec {
    let body = serde_json::json!({
        "name": name, "gateway": gateway, "base_path": base_path,
        "routes": [{"provider": "openai", "url": "https://api.openai.com/v1",
                    "auth": {"type": "static", "api_key": "enc:v1:test"}}]
    });
    parse_proxy_input(body.to_string().as_bytes())
        .unwrap()
        .validate(&Limits::default(), None)
        .unwrap()
}

async fn gateways_crud(store: Arc<Store>) {
    let g = store.create_gateway("prod-eu", "hash1").await.unwrap();
    assert_eq!(
        (g.name.as_str(), g.config_version, g.proxies),
        ("prod-eu", 0, 0)
    );
    assert!(matches!(
        store.create_gateway("prod-eu", "x").await,
        Err(StoreError::Conflict(_))
    ));
    store.create_gateway("dev", "hash2").await.unwrap();
    let all = store.list_gateways().await.unwrap();
    assert_eq!(
        all.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["dev", "prod-eu"]
    );

    store.set_gateway_token("dev", "hash3").await.unwrap();
    assert_eq!(
        store.get_gateway("dev").await.unwrap().unwrap().token_hash,
        "hash3"
    );
    assert!(matches!(
        store.set_gateway_token("nope", "h").await,
        Err(StoreError::NotFound(_))
    ));

    let p = store
        .create_proxy(&spec("prod-eu", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    assert_eq!(
        store.get_gateway("prod-eu").await.unwrap().unwrap().proxies,
        1
    );
    assert!(matches!(
        store.delete_gateway("prod-eu").await,
        Err(StoreError::Conflict(_))
    ));
    store.delete_proxy(p.id).await.unwrap();
    store.delete_gateway("prod-eu").await.unwrap();
    assert!(store.get_gateway("prod-eu").await.unwrap().is_none());
    assert!(matches!(
        store.delete_gateway("prod-eu").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn proxies_crud_and_versions(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    let limits = Limits::default();
    let missing = store.create_proxy(&spec("nope", "a", "/a"), &limits).await;
    assert!(matches!(
        missing,
        Err(StoreError::Rejected {
            field: "gateway",
            ..
        })
    ));

    let p = store
        .create_proxy(&spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    assert_eq!(p.version, 1);
    assert_eq!(
        store
            .get_gateway("gw")
            .await
            .unwrap()
            .unwrap()
            .config_version,
        1
    );
    let read = store.get_proxy(p.id).await.unwrap().unwrap();
    assert_eq!(read, p);

    let updated = store
        .update_proxy(p.id, &spec("gw", "a2", "/a2"), None)
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.created_at, p.created_at);
    assert_eq!(
        store.get_proxy(p.id).await.unwrap().unwrap().spec.base_path,
        "/a2"
    );
    assert_eq!(
        store
            .get_gateway("gw")
            .await
            .unwrap()
            .unwrap()
            .config_version,
        2
    );

    store
        .create_proxy(&spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    assert_eq!(store.list_proxies(Some("gw")).await.unwrap().len(), 2);
    assert_eq!(store.list_proxies(Some("other")).await.unwrap().len(), 0);
    assert_eq!(store.list_proxies(None).await.unwrap().len(), 2);

    let deleted = store.delete_proxy(p.id).await.unwrap();
    assert_eq!(deleted.spec.name, "a2");
    assert!(store.get_proxy(p.id).await.unwrap().is_none());
    assert!(matches!(
        store.delete_proxy(p.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update_proxy(p.id, &spec("gw", "x", "/x"), None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .get_gateway("gw")
            .await
            .unwrap()
            .unwrap()
            .config_version,
        4
    );
}

async fn unique_name_and_base_path(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    store.create_gateway("gw2", "h").await.unwrap();
    let limits = Limits::default();
    let a = store
        .create_proxy(&spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let Err(StoreError::Conflict(msg)) = store.create_proxy(&spec("gw", "b", "/a"), &limits).await
    else {
        panic!("base path taken must conflict")
    };
    assert!(msg.contains("base path"), "{msg}");
    let Err(StoreError::Conflict(msg)) = store.create_proxy(&spec("gw", "a", "/z"), &limits).await
    else {
        panic!("name taken must conflict")
    };
    assert!(msg.contains("named"), "{msg}");
    // Same base path on another gateway is fine.
    store
        .create_proxy(&spec("gw2", "a", "/a"), &limits)
        .await
        .unwrap();
    // An update into a taken base path conflicts and changes nothing.
    let b = store
        .create_proxy(&spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    assert!(matches!(
        store.update_proxy(b.id, &spec("gw", "b", "/a"), None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_proxy(b.id).await.unwrap().unwrap().version, 1);
    assert_eq!(
        store.get_proxy(a.id).await.unwrap().unwrap().spec.base_path,
        "/a"
    );
}

async fn proxy_limit_holds_under_racing_creates(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    let limits = Limits {
        proxies_per_gateway: 5,
        ..Limits::default()
    };
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_proxy(&spec("gw", &format!("p{i}"), &format!("/p{i}")), &limits)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Rejected {
                field: "gateway", ..
            }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(store.list_proxies(Some("gw")).await.unwrap().len(), 5);
    assert_eq!(
        store
            .get_gateway("gw")
            .await
            .unwrap()
            .unwrap()
            .config_version,
        5
    );
}

async fn optimistic_version_check(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    let p = store
        .create_proxy(&spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    store
        .update_proxy(p.id, &spec("gw", "a", "/a1"), Some(1))
        .await
        .unwrap();
    let stale = store
        .update_proxy(p.id, &spec("gw", "a", "/a2"), Some(1))
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(m)) if m.contains("version")));
    assert_eq!(
        store.get_proxy(p.id).await.unwrap().unwrap().spec.base_path,
        "/a1"
    );
}

async fn concurrent_updates_are_serialised(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    let p = store
        .create_proxy(&spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    // Ten writers all claim to replace version 1: exactly one wins.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update_proxy(p.id, &spec("gw", "a", &format!("/v{i}")), Some(1))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 1);
    // Without a precondition, every write lands and each bumps the version once.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update_proxy(p.id, &spec("gw", "a", &format!("/w{i}")), None)
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.get_proxy(p.id).await.unwrap().unwrap().version, 12);
    assert_eq!(
        store
            .get_gateway("gw")
            .await
            .unwrap()
            .unwrap()
            .config_version,
        12
    );
}

async fn proxy_cannot_move_gateways(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    store.create_gateway("gw2", "h").await.unwrap();
    let p = store
        .create_proxy(&spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    let moved = store
        .update_proxy(p.id, &spec("gw2", "a", "/a"), None)
        .await;
    assert!(matches!(
        moved,
        Err(StoreError::Rejected {
            field: "gateway",
            ..
        })
    ));
}

async fn snapshot_source_is_consistent(store: Arc<Store>) {
    assert!(store.snapshot_source("gw").await.unwrap().is_none());
    store.create_gateway("gw", "h").await.unwrap();
    assert_eq!(
        store.snapshot_source("gw").await.unwrap().unwrap(),
        (0, vec![])
    );
    let limits = Limits::default();
    store
        .create_proxy(&spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    store
        .create_proxy(&spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let (version, proxies) = store.snapshot_source("gw").await.unwrap().unwrap();
    assert_eq!(version, 2);
    assert_eq!(
        proxies
            .iter()
            .map(|p| p.spec.base_path.as_str())
            .collect::<Vec<_>>(),
        ["/a", "/b"]
    );
    assert_eq!(
        store.gateway_versions().await.unwrap(),
        vec![("gw".to_owned(), 2)]
    );
}

async fn nodes_are_tracked(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    let fresh = Duration::from_secs(60);
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Connected {
                address: "10.0.0.1:8000",
                software_version: "0.1.0",
            },
        )
        .await
        .unwrap();
    store
        .record_node("gw", "n1", NodeEvent::Applied { version: 3 })
        .await
        .unwrap();
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Rejected {
                version: 4,
                error: "bad",
            },
        )
        .await
        .unwrap();
    let nodes = store.list_nodes("gw", fresh).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].connected);
    assert_eq!(nodes[0].applied_version, Some(3));
    assert!(
        nodes[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("version 4")
    );
    // A node its replica has not seen recently does not count as connected.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !store
            .list_nodes("gw", Duration::from_millis(5))
            .await
            .unwrap()[0]
            .connected
    );
    store
        .record_node("gw", "n1", NodeEvent::Disconnected)
        .await
        .unwrap();
    assert!(!store.list_nodes("gw", fresh).await.unwrap()[0].connected);
    // Reconnecting keeps the applied version.
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Connected {
                address: "10.0.0.1:8000",
                software_version: "0.1.0",
            },
        )
        .await
        .unwrap();
    let n = &store.list_nodes("gw", fresh).await.unwrap()[0];
    assert!(n.connected);
    assert_eq!(n.applied_version, Some(3));
    assert!(matches!(
        store.record_node("nope", "n1", NodeEvent::Heartbeat).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn rewrite_specs_keeps_versions(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    let p = store
        .create_proxy(&spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    let changed = store
        .rewrite_specs(|mut s| {
            s.routes[0].target_model = Some("rewritten".into());
            Ok(Some(s))
        })
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let read = store.get_proxy(p.id).await.unwrap().unwrap();
    assert_eq!(read.version, 1);
    assert_eq!(
        read.spec.routes[0].target_model.as_deref(),
        Some("rewritten")
    );
    assert_eq!(store.rewrite_specs(|_| Ok(None)).await.unwrap(), 0);
}

/// Node status updates arrive at any time (heartbeats, ACKs); they must never make a proxy
/// write fail (on SQLite a write slipping between a transaction's read and its write would).
async fn node_updates_do_not_break_concurrent_writes(store: Arc<Store>) {
    store.create_gateway("gw", "h").await.unwrap();
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Connected {
                address: "a",
                software_version: "v",
            },
        )
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heartbeats = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .record_node("gw", "n1", NodeEvent::Heartbeat)
                    .await
                    .unwrap();
                store
                    .record_node("gw", "n1", NodeEvent::Applied { version: n })
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let limits = Limits::default();
    for i in 0..20 {
        store
            .create_proxy(&spec("gw", &format!("p{i}"), &format!("/p{i}")), &limits)
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(heartbeats.await.unwrap() > 0);
    assert_eq!(store.list_proxies(Some("gw")).await.unwrap().len(), 20);
}
