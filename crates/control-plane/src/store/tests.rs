//! One suite, run against both backends (`sqlite::*` and `postgres::*`).

use std::sync::Arc;
use std::time::Duration;

use switchyard_model::{
    ConsumerProxies, ErrorCode, LibraryTopic, Limits, NodeKey, Price, ProxySpec, SemanticService,
    parse_proxy_input,
};
use switchyard_testkit::pg::PgDatabase;

use super::*;

/// The audit context of the suite's writes.
fn audit() -> Audit {
    Audit::new("test", "req-test")
}

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
    semantic_services_crud,
    proxies_name_existing_services_only,
    service_update_bumps_every_gateway_naming_it,
    service_delete_cannot_race_a_proxy_into_a_dangling_reference,
    service_updates_and_proxy_writes_do_not_deadlock,
    rewrite_semantic_services_keeps_versions,
    topics_crud,
    proxies_name_existing_topics_only,
    topic_update_bumps_every_gateway_naming_it,
    consumers_crud_and_their_gateways,
    consumers_name_existing_proxies_only,
    key_revocation_bumps_the_right_gateways_and_leaves_the_snapshot,
    expired_keys_leave_the_snapshot,
    every_consumer_for_star_and_deleted_proxies_drop_out,
    prices_are_seeded_once_and_writes_bump_every_gateway,
    audit_entries_commit_with_their_write_only,
    audit_queries_filter_and_page,
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
    let g = store
        .create_gateway(&audit(), "prod-eu", "hash1")
        .await
        .unwrap();
    assert_eq!(
        (g.name.as_str(), g.config_version, g.proxies),
        ("prod-eu", 0, 0)
    );
    assert!(matches!(
        store.create_gateway(&audit(), "prod-eu", "x").await,
        Err(StoreError::Conflict(_))
    ));
    store
        .create_gateway(&audit(), "dev", "hash2")
        .await
        .unwrap();
    let all = store.list_gateways().await.unwrap();
    assert_eq!(
        all.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["dev", "prod-eu"]
    );

    store
        .set_gateway_token(&audit(), "dev", "hash3")
        .await
        .unwrap();
    assert_eq!(
        store.get_gateway("dev").await.unwrap().unwrap().token_hash,
        "hash3"
    );
    assert!(matches!(
        store.set_gateway_token(&audit(), "nope", "h").await,
        Err(StoreError::NotFound(_))
    ));

    let p = store
        .create_proxy(&audit(), &spec("prod-eu", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    assert_eq!(
        store.get_gateway("prod-eu").await.unwrap().unwrap().proxies,
        1
    );
    assert!(matches!(
        store.delete_gateway(&audit(), "prod-eu").await,
        Err(StoreError::Conflict(_))
    ));
    store.delete_proxy(&audit(), p.id).await.unwrap();
    store.delete_gateway(&audit(), "prod-eu").await.unwrap();
    assert!(store.get_gateway("prod-eu").await.unwrap().is_none());
    assert!(matches!(
        store.delete_gateway(&audit(), "prod-eu").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn proxies_crud_and_versions(store: Arc<Store>) {
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let limits = Limits::default();
    let missing = store
        .create_proxy(&audit(), &spec("nope", "a", "/a"), &limits)
        .await;
    assert!(matches!(
        missing,
        Err(StoreError::Rejected {
            field: "gateway",
            ..
        })
    ));

    let p = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
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
        .update_proxy(&audit(), p.id, &spec("gw", "a2", "/a2"), None)
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
        .create_proxy(&audit(), &spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    assert_eq!(store.list_proxies(Some("gw")).await.unwrap().len(), 2);
    assert_eq!(store.list_proxies(Some("other")).await.unwrap().len(), 0);
    assert_eq!(store.list_proxies(None).await.unwrap().len(), 2);

    let deleted = store.delete_proxy(&audit(), p.id).await.unwrap();
    assert_eq!(deleted.spec.name, "a2");
    assert!(store.get_proxy(p.id).await.unwrap().is_none());
    assert!(matches!(
        store.delete_proxy(&audit(), p.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .update_proxy(&audit(), p.id, &spec("gw", "x", "/x"), None)
            .await,
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    store.create_gateway(&audit(), "gw2", "h").await.unwrap();
    let limits = Limits::default();
    let a = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let Err(StoreError::Conflict(msg)) = store
        .create_proxy(&audit(), &spec("gw", "b", "/a"), &limits)
        .await
    else {
        panic!("base path taken must conflict")
    };
    assert!(msg.contains("base path"), "{msg}");
    let Err(StoreError::Conflict(msg)) = store
        .create_proxy(&audit(), &spec("gw", "a", "/z"), &limits)
        .await
    else {
        panic!("name taken must conflict")
    };
    assert!(msg.contains("named"), "{msg}");
    // Same base path on another gateway is fine.
    store
        .create_proxy(&audit(), &spec("gw2", "a", "/a"), &limits)
        .await
        .unwrap();
    // An update into a taken base path conflicts and changes nothing.
    let b = store
        .create_proxy(&audit(), &spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    assert!(matches!(
        store
            .update_proxy(&audit(), b.id, &spec("gw", "b", "/a"), None)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_proxy(b.id).await.unwrap().unwrap().version, 1);
    assert_eq!(
        store.get_proxy(a.id).await.unwrap().unwrap().spec.base_path,
        "/a"
    );
}

async fn proxy_limit_holds_under_racing_creates(store: Arc<Store>) {
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let limits = Limits {
        proxies_per_gateway: 5,
        ..Limits::default()
    };
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_proxy(
                        &audit(),
                        &spec("gw", &format!("p{i}"), &format!("/p{i}")),
                        &limits,
                    )
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let p = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    store
        .update_proxy(&audit(), p.id, &spec("gw", "a", "/a1"), Some(1))
        .await
        .unwrap();
    let stale = store
        .update_proxy(&audit(), p.id, &spec("gw", "a", "/a2"), Some(1))
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(m)) if m.contains("version")));
    assert_eq!(
        store.get_proxy(p.id).await.unwrap().unwrap().spec.base_path,
        "/a1"
    );
}

async fn concurrent_updates_are_serialised(store: Arc<Store>) {
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let p = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    // Ten writers all claim to replace version 1: exactly one wins.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update_proxy(&audit(), p.id, &spec("gw", "a", &format!("/v{i}")), Some(1))
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
                    .update_proxy(&audit(), p.id, &spec("gw", "a", &format!("/w{i}")), None)
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    store.create_gateway(&audit(), "gw2", "h").await.unwrap();
    let p = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &Limits::default())
        .await
        .unwrap();
    let moved = store
        .update_proxy(&audit(), p.id, &spec("gw2", "a", "/a"), None)
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    assert_eq!(
        store.snapshot_source("gw").await.unwrap().unwrap(),
        SnapshotSource {
            version: 0,
            proxies: vec![],
            semantic_services: vec![],
            topics: vec![],
            consumers: vec![],
            prices: store.list_prices().await.unwrap(),
        }
    );
    let limits = Limits::default();
    store
        .create_proxy(&audit(), &spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let SnapshotSource {
        version, proxies, ..
    } = store.snapshot_source("gw").await.unwrap().unwrap();
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let fresh = Duration::from_secs(60);
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Connected {
                address: "10.0.0.1:8000",
                software_version: "0.1.0",
                has_encoder: None,
            },
        )
        .await
        .unwrap();
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Applied {
                version: 3,
                proxy_failures: &[crate::store::ProxyFailure {
                    proxy_id: "p-1".into(),
                    proxy: "semantic".into(),
                    version: 2,
                    error: "no encoder".into(),
                    served_version: Some(1),
                }],
            },
        )
        .await
        .unwrap();
    let nodes = store.list_nodes("gw", fresh).await.unwrap();
    assert_eq!(nodes[0].proxy_failures.len(), 1);
    assert_eq!(nodes[0].proxy_failures[0].served_version, Some(1));
    assert_eq!(nodes[0].has_encoder, None);
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
                has_encoder: None,
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let p = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &Limits::default())
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
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    store
        .record_node(
            "gw",
            "n1",
            NodeEvent::Connected {
                address: "a",
                software_version: "v",
                has_encoder: Some(true),
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
                    .record_node(
                        "gw",
                        "n1",
                        NodeEvent::Applied {
                            version: n,
                            proxy_failures: &[],
                        },
                    )
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
            .create_proxy(
                &audit(),
                &spec("gw", &format!("p{i}"), &format!("/p{i}")),
                &limits,
            )
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(heartbeats.await.unwrap() > 0);
    assert_eq!(store.list_proxies(Some("gw")).await.unwrap().len(), 20);
}

fn service(name: &str, url: &str, key: Option<&str>) -> SemanticService {
    SemanticService {
        name: name.into(),
        url: url.into(),
        model: "emb".into(),
        api_key: key.map(switchyard_model::Secret::new),
    }
}

fn spec_naming(gateway: &str, name: &str, base_path: &str, service: &str) -> ProxySpec {
    ProxySpec {
        semantic_service: Some(service.into()),
        ..spec(gateway, name, base_path)
    }
}

async fn config_version(store: &Store, gateway: &str) -> u64 {
    store
        .get_gateway(gateway)
        .await
        .unwrap()
        .unwrap()
        .config_version
}

async fn semantic_services_crud(store: Arc<Store>) {
    let created = store
        .create_semantic_service(
            &audit(),
            &service("embed-eu", "http://a/v1", Some("enc:v1:k")),
        )
        .await
        .unwrap();
    assert_eq!((created.version, created.proxies), (1, 0));
    let read = store
        .get_semantic_service("embed-eu")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, created);
    assert!(matches!(
        store
            .create_semantic_service(&audit(), &service("embed-eu", "http://b/v1", None))
            .await,
        Err(StoreError::Conflict(m)) if m.contains("already exists")
    ));
    store
        .create_semantic_service(&audit(), &service("another", "http://b/v1", None))
        .await
        .unwrap();
    let all = store.list_semantic_services().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|s| (s.service.name.as_str(), s.service.api_key.is_some()))
            .collect::<Vec<_>>(),
        [("another", false), ("embed-eu", true)]
    );

    let (updated, gateways) = store
        .update_semantic_service(&audit(), &service("embed-eu", "http://c/v1", None), Some(1))
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(updated.service, service("embed-eu", "http://c/v1", None));
    assert!(gateways.is_empty());
    assert_eq!(
        store
            .get_semantic_service("embed-eu")
            .await
            .unwrap()
            .unwrap(),
        updated
    );
    assert!(matches!(
        store
            .update_semantic_service(&audit(), &service("embed-eu", "http://d/v1", None), Some(1))
            .await,
        Err(StoreError::Conflict(m)) if m.contains("version")
    ));
    assert!(matches!(
        store
            .update_semantic_service(&audit(), &service("nope", "http://d/v1", None), None)
            .await,
        Err(StoreError::NotFound(_))
    ));

    store
        .delete_semantic_service(&audit(), "embed-eu")
        .await
        .unwrap();
    assert!(
        store
            .get_semantic_service("embed-eu")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.delete_semantic_service(&audit(), "embed-eu").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn proxies_name_existing_services_only(store: Arc<Store>) {
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let limits = Limits::default();
    let unknown = store
        .create_proxy(&audit(), &spec_naming("gw", "a", "/a", "embed-eu"), &limits)
        .await;
    assert!(matches!(
        unknown,
        Err(StoreError::Rejected {
            code: ErrorCode::InvalidValue,
            field: "semantic_service",
            ..
        })
    ));
    assert_eq!(store.list_proxies(None).await.unwrap().len(), 0);
    assert_eq!(config_version(&store, "gw").await, 0);

    store
        .create_semantic_service(&audit(), &service("embed-eu", "http://a/v1", Some("k1")))
        .await
        .unwrap();
    store
        .create_semantic_service(&audit(), &service("unused", "http://u/v1", Some("k2")))
        .await
        .unwrap();
    let a = store
        .create_proxy(&audit(), &spec_naming("gw", "a", "/a", "embed-eu"), &limits)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_proxy(a.id)
            .await
            .unwrap()
            .unwrap()
            .spec
            .semantic_service
            .as_deref(),
        Some("embed-eu")
    );
    store
        .create_proxy(&audit(), &spec_naming("gw", "b", "/b", "embed-eu"), &limits)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_semantic_service("embed-eu")
            .await
            .unwrap()
            .unwrap()
            .proxies,
        2
    );
    // The snapshot carries the services its proxies name, once, and no other.
    let source = store.snapshot_source("gw").await.unwrap().unwrap();
    assert_eq!(
        source.semantic_services,
        vec![service("embed-eu", "http://a/v1", Some("k1"))]
    );

    // An update naming an unknown service is refused and changes nothing.
    assert!(matches!(
        store
            .update_proxy(&audit(), a.id, &spec_naming("gw", "a", "/a", "nope"), None)
            .await,
        Err(StoreError::Rejected {
            field: "semantic_service",
            ..
        })
    ));
    assert_eq!(store.get_proxy(a.id).await.unwrap().unwrap().version, 1);

    let Err(StoreError::Conflict(msg)) = store.delete_semantic_service(&audit(), "embed-eu").await
    else {
        panic!("a service in use cannot be deleted")
    };
    assert!(
        msg.contains("2 proxies") && msg.contains("gw/a, gw/b"),
        "{msg}"
    );
    // Once no proxy names it, it can go.
    store
        .update_proxy(&audit(), a.id, &spec("gw", "a", "/a"), None)
        .await
        .unwrap();
    let b = store.list_proxies(Some("gw")).await.unwrap()[1].clone();
    store.delete_proxy(&audit(), b.id).await.unwrap();
    assert!(
        store
            .snapshot_source("gw")
            .await
            .unwrap()
            .unwrap()
            .semantic_services
            .is_empty()
    );
    store
        .delete_semantic_service(&audit(), "embed-eu")
        .await
        .unwrap();
}

async fn service_update_bumps_every_gateway_naming_it(store: Arc<Store>) {
    let limits = Limits::default();
    for g in ["gw1", "gw2", "gw3"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    store
        .create_semantic_service(&audit(), &service("embed-eu", "http://a/v1", None))
        .await
        .unwrap();
    store
        .create_semantic_service(&audit(), &service("other", "http://o/v1", None))
        .await
        .unwrap();
    // gw1 names it twice, gw2 once, gw3 names another service.
    store
        .create_proxy(
            &audit(),
            &spec_naming("gw1", "a", "/a", "embed-eu"),
            &limits,
        )
        .await
        .unwrap();
    store
        .create_proxy(
            &audit(),
            &spec_naming("gw1", "b", "/b", "embed-eu"),
            &limits,
        )
        .await
        .unwrap();
    store
        .create_proxy(
            &audit(),
            &spec_naming("gw2", "a", "/a", "embed-eu"),
            &limits,
        )
        .await
        .unwrap();
    store
        .create_proxy(&audit(), &spec_naming("gw3", "a", "/a", "other"), &limits)
        .await
        .unwrap();
    let before = [
        config_version(&store, "gw1").await,
        config_version(&store, "gw2").await,
        config_version(&store, "gw3").await,
    ];
    assert_eq!(before, [2, 1, 1]);

    let (record, mut gateways) = store
        .update_semantic_service(
            &audit(),
            &service("embed-eu", "http://b/v1", Some("k")),
            None,
        )
        .await
        .unwrap();
    gateways.sort();
    assert_eq!(gateways, ["gw1", "gw2"]);
    assert_eq!((record.version, record.proxies), (2, 3));
    assert_eq!(
        [
            config_version(&store, "gw1").await,
            config_version(&store, "gw2").await,
            config_version(&store, "gw3").await,
        ],
        [3, 2, 1],
        "each gateway naming the service gets exactly one new version"
    );
    let source = store.snapshot_source("gw2").await.unwrap().unwrap();
    assert_eq!(source.version, 2);
    assert_eq!(
        source.semantic_services,
        vec![service("embed-eu", "http://b/v1", Some("k"))]
    );
    // A refused update bumps nothing.
    assert!(
        store
            .update_semantic_service(&audit(), &service("embed-eu", "http://c/v1", None), Some(1))
            .await
            .is_err()
    );
    assert_eq!(config_version(&store, "gw1").await, 3);
    assert_eq!(
        store.gateway_versions().await.unwrap().len(),
        3,
        "the version poll sees every gateway"
    );
}

/// Deleting a service while proxies naming it are being created: whatever the interleaving,
/// never a proxy naming a missing service, and every outcome is a clean error.
async fn service_delete_cannot_race_a_proxy_into_a_dangling_reference(store: Arc<Store>) {
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let limits = Limits {
        proxies_per_gateway: 1000,
        ..Limits::default()
    };
    for round in 0..8 {
        let name = format!("svc-{round}");
        store
            .create_semantic_service(&audit(), &service(&name, "http://a/v1", None))
            .await
            .unwrap();
        let creates: Vec<_> = (0..6)
            .map(|i| {
                let (store, name) = (store.clone(), name.clone());
                let proxy = format!("r{round}-p{i}");
                tokio::spawn(async move {
                    store
                        .create_proxy(
                            &audit(),
                            &spec_naming("gw", &proxy, &format!("/{proxy}"), &name),
                            &limits,
                        )
                        .await
                })
            })
            .collect();
        let delete = {
            let (store, name) = (store.clone(), name.clone());
            tokio::spawn(async move { store.delete_semantic_service(&audit(), &name).await })
        };
        let mut created = 0;
        for t in creates {
            match t.await.unwrap() {
                Ok(_) => created += 1,
                Err(StoreError::Rejected {
                    field: "semantic_service",
                    ..
                }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let deleted = match delete.await.unwrap() {
            Ok(()) => true,
            Err(StoreError::Conflict(_)) => false,
            Err(e) => panic!("unexpected error: {e}"),
        };
        let naming = store
            .list_proxies(Some("gw"))
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.spec.semantic_service.as_deref() == Some(name.as_str()))
            .count();
        assert_eq!(naming, created);
        let exists = store.get_semantic_service(&name).await.unwrap().is_some();
        assert_eq!(exists, !deleted);
        assert!(
            exists || naming == 0,
            "round {round}: {naming} proxies name the deleted service"
        );
    }
}

/// Service updates (service row, then gateways) and proxy writes (service row, then their
/// gateway) racing each other: no deadlock, no error, every write lands.
async fn service_updates_and_proxy_writes_do_not_deadlock(store: Arc<Store>) {
    let limits = Limits::default();
    for g in ["gw1", "gw2", "gw3"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    for s in ["s1", "s2"] {
        store
            .create_semantic_service(&audit(), &service(s, "http://a/v1", None))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..12 {
        let writer = store.clone();
        tasks.push(tokio::spawn(async move {
            let gw = ["gw1", "gw2", "gw3"][i % 3];
            let svc = ["s1", "s2"][i % 2];
            writer
                .create_proxy(
                    &audit(),
                    &spec_naming(gw, &format!("p{i}"), &format!("/p{i}"), svc),
                    &limits,
                )
                .await
                .map(|_| ())
        }));
        let updater = store.clone();
        tasks.push(tokio::spawn(async move {
            let svc = ["s2", "s1"][i % 2];
            updater
                .update_semantic_service(
                    &audit(),
                    &service(svc, &format!("http://u{i}/v1"), None),
                    None,
                )
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.list_proxies(None).await.unwrap().len(), 12);
    for s in ["s1", "s2"] {
        assert_eq!(
            store
                .get_semantic_service(s)
                .await
                .unwrap()
                .unwrap()
                .version,
            7
        );
    }
    // Every gateway names both services now: one more update bumps each exactly once.
    let before: Vec<u64> = [
        config_version(&store, "gw1").await,
        config_version(&store, "gw2").await,
        config_version(&store, "gw3").await,
    ]
    .into();
    let (_, mut gateways) = store
        .update_semantic_service(&audit(), &service("s1", "http://final/v1", None), None)
        .await
        .unwrap();
    gateways.sort();
    assert_eq!(gateways, ["gw1", "gw2", "gw3"]);
    for (g, b) in ["gw1", "gw2", "gw3"].into_iter().zip(before) {
        assert_eq!(config_version(&store, g).await, b + 1);
    }
}

async fn rewrite_semantic_services_keeps_versions(store: Arc<Store>) {
    store
        .create_semantic_service(&audit(), &service("a", "http://a/v1", Some("old")))
        .await
        .unwrap();
    store
        .create_semantic_service(&audit(), &service("b", "http://b/v1", None))
        .await
        .unwrap();
    let changed = store
        .rewrite_semantic_services(|mut s| {
            Ok(s.api_key.take().map(|_| SemanticService {
                api_key: Some(switchyard_model::Secret::new("new")),
                ..s
            }))
        })
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let a = store.get_semantic_service("a").await.unwrap().unwrap();
    assert_eq!(a.version, 1);
    assert_eq!(a.service, service("a", "http://a/v1", Some("new")));
    assert_eq!(
        store
            .get_semantic_service("b")
            .await
            .unwrap()
            .unwrap()
            .service
            .api_key,
        None
    );
}

/// A store written before semantic services were named (an inline definition in a proxy's
/// spec) is migrated: the definition becomes a service of its own, the proxy names it, and
/// the (encrypted) key moves with it.
async fn legacy_inline_services_are_migrated(url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let full = if url.starts_with("postgres") {
        &PG_MIGRATIONS
    } else {
        &SQLITE_MIGRATIONS
    };
    let first_only = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(full.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    first_only.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO gateways (id, name, token_hash, config_version, created_at) VALUES ('g1', 'gw', 'h', 3, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut legacy = serde_json::to_value(spec("gw", "old", "/old")).unwrap();
    legacy["semantic_service"] = serde_json::json!(
        {"url": "http://emb/v1", "model": "text-embedding-3-small", "api_key": "enc:v1:abcd:Zm9v"}
    );
    let plain = serde_json::to_value(spec("gw", "plain", "/plain")).unwrap();
    for (id, body) in [
        ("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", legacy),
        ("11111111-2222-4333-8444-555555555555", plain),
    ] {
        sqlx::query(
            "INSERT INTO proxies (id, gateway_id, name, base_path, version, spec, created_at, updated_at) \
             VALUES ($1, 'g1', $2, $3, 2, $4, 0, 5)",
        )
        .bind(id)
        .bind(body["name"].as_str().unwrap().to_owned())
        .bind(body["base_path"].as_str().unwrap().to_owned())
        .bind(body.to_string())
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let store = Store::connect(url).await.unwrap();
    let migrated = store
        .get_semantic_service("proxy-0a1b2c3d4e5f")
        .await
        .unwrap()
        .expect("the inline definition became a named service");
    assert_eq!(
        migrated.service,
        SemanticService {
            name: "proxy-0a1b2c3d4e5f".into(),
            url: "http://emb/v1".into(),
            model: "text-embedding-3-small".into(),
            api_key: Some(switchyard_model::Secret::new("enc:v1:abcd:Zm9v")),
        }
    );
    assert_eq!(migrated.proxies, 1);
    let proxies = store.list_proxies(Some("gw")).await.unwrap();
    assert_eq!(
        proxies
            .iter()
            .map(|p| (
                p.spec.name.as_str(),
                p.spec.semantic_service.as_deref(),
                p.version
            ))
            .collect::<Vec<_>>(),
        [("old", Some("proxy-0a1b2c3d4e5f"), 2), ("plain", None, 2)]
    );
    assert_eq!(store.list_semantic_services().await.unwrap().len(), 1);
    // The reference is a real one: the service cannot be deleted under the proxy.
    assert!(matches!(
        store
            .delete_semantic_service(&audit(), "proxy-0a1b2c3d4e5f")
            .await,
        Err(StoreError::Conflict(_))
    ));
    // The migration keeps the version; the bundled prices seeded at this first start bump it.
    assert_eq!(config_version(&store, "gw").await, 4);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_legacy_inline_services_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    legacy_inline_services_are_migrated(&format!(
        "sqlite://{}/legacy.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_legacy_inline_services_are_migrated() {
    let db = PgDatabase::create().await;
    legacy_inline_services_are_migrated(db.url()).await;
}

fn library_topic(name: &str, utterances: &[&str]) -> LibraryTopic {
    LibraryTopic {
        name: name.into(),
        description: format!("{name} prompts"),
        utterances: utterances.iter().map(|u| (*u).to_owned()).collect(),
    }
}

/// A semantic proxy whose first route refers to `topic`, and whose deny list to `deny`.
fn spec_with_refs(
    gateway: &str,
    name: &str,
    base_path: &str,
    topic: &str,
    deny: Option<&str>,
) -> ProxySpec {
    let mut body = serde_json::json!({
        "name": name, "gateway": gateway, "base_path": base_path,
        "routing": {"strategy": "semantic"},
        "routes": [{"provider": "openai", "url": "https://api.openai.com/v1", "target_model": "m",
                    "auth": {"type": "static", "api_key": "enc:v1:test"},
                    "topics": [{"name": "inline", "utterances": ["hello"]}, {"ref": topic}]}]
    });
    if let Some(deny) = deny {
        body["prompt_guard"] =
            serde_json::json!({"threshold": 0.8, "deny_topics": [{"ref": deny}]});
    }
    parse_proxy_input(body.to_string().as_bytes())
        .unwrap()
        .validate(&Limits::default(), None)
        .unwrap()
}

async fn topics_crud(store: Arc<Store>) {
    let limits = Limits::default();
    let created = store
        .create_topic(
            &audit(),
            &library_topic("billing", &["pay my invoice", "refund"]),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!((created.version, created.proxies), (1, 0));
    assert!(matches!(
        store.create_topic(&audit(), &library_topic("billing", &["x"]), &limits).await,
        Err(StoreError::Conflict(m)) if m.contains("already exists")
    ));
    store
        .create_topic(
            &audit(),
            &library_topic("accounts", &["close my account"]),
            &limits,
        )
        .await
        .unwrap();
    let all = store.list_topics().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|t| (t.name.as_str(), t.utterance_count))
            .collect::<Vec<_>>(),
        [("accounts", 1), ("billing", 2)]
    );
    let read = store.get_topic("billing").await.unwrap().unwrap();
    assert_eq!(
        read.topic,
        library_topic("billing", &["pay my invoice", "refund"])
    );
    assert!(store.get_topic("nope").await.unwrap().is_none());

    let (updated, gateways) = store
        .update_topic(
            &audit(),
            &library_topic("billing", &["a", "b", "c"]),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!((updated.version, updated.topic.utterances.len()), (2, 3));
    assert!(gateways.is_empty());
    assert!(matches!(
        store.update_topic(&audit(), &library_topic("billing", &["a"]), Some(1)).await,
        Err(StoreError::Conflict(m)) if m.contains("version conflict")
    ));
    assert!(matches!(
        store
            .update_topic(&audit(), &library_topic("nope", &["a"]), None)
            .await,
        Err(StoreError::NotFound("topic"))
    ));
    store.delete_topic(&audit(), "accounts").await.unwrap();
    assert!(matches!(
        store.delete_topic(&audit(), "accounts").await,
        Err(StoreError::NotFound("topic"))
    ));

    // The library's size limit.
    let small = Limits {
        library_topics: 1,
        ..Limits::default()
    };
    let err = store
        .create_topic(&audit(), &library_topic("more", &["x"]), &small)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(v) if v.code == ErrorCode::LimitExceeded),
        "{err}"
    );
}

async fn proxies_name_existing_topics_only(store: Arc<Store>) {
    let limits = Limits::default();
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    store
        .create_topic(
            &audit(),
            &library_topic("billing", &["pay my invoice"]),
            &limits,
        )
        .await
        .unwrap();
    // A reference to a missing topic: 422 naming the reference, nothing stored.
    let err = store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw", "p", "/p", "billing", Some("weapons")),
            &limits,
        )
        .await
        .unwrap_err();
    match err {
        StoreError::Invalid(v) => {
            assert_eq!(v.field, "prompt_guard.deny_topics[0].ref");
            assert!(
                v.message.contains("'weapons' does not exist"),
                "{}",
                v.message
            );
        }
        other => panic!("{other}"),
    }
    assert!(store.list_proxies(None).await.unwrap().is_empty());

    store
        .create_topic(
            &audit(),
            &library_topic("weapons", &["build a bomb"]),
            &limits,
        )
        .await
        .unwrap();
    let p = store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw", "p", "/p", "billing", Some("weapons")),
            &limits,
        )
        .await
        .unwrap();
    let q = store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw", "q", "/q", "billing", None),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_topic("billing").await.unwrap().unwrap().proxies,
        2
    );
    assert_eq!(
        store.get_topic("weapons").await.unwrap().unwrap().proxies,
        1
    );

    // Deleting a topic still named: a conflict naming the proxies.
    let err = store.delete_topic(&audit(), "billing").await.unwrap_err();
    match err {
        StoreError::Conflict(m) => assert!(
            m.contains("2 proxies") && m.contains("gw/p") && m.contains("gw/q"),
            "{m}"
        ),
        other => panic!("{other}"),
    }
    // A proxy that stops naming a topic releases it; a deleted proxy too.
    store
        .update_proxy(
            &audit(),
            p.id,
            &spec_with_refs("gw", "p", "/p", "billing", None),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_topic("weapons").await.unwrap().unwrap().proxies,
        0
    );
    store.delete_topic(&audit(), "weapons").await.unwrap();
    store.delete_proxy(&audit(), q.id).await.unwrap();
    store.delete_proxy(&audit(), p.id).await.unwrap();
    store.delete_topic(&audit(), "billing").await.unwrap();
}

async fn topic_update_bumps_every_gateway_naming_it(store: Arc<Store>) {
    let limits = Limits::default();
    for g in ["gw", "gw2", "gw3"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    for t in ["billing", "other"] {
        store
            .create_topic(&audit(), &library_topic(t, &["one"]), &limits)
            .await
            .unwrap();
    }
    store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw", "a", "/a", "billing", None),
            &limits,
        )
        .await
        .unwrap();
    store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw", "b", "/b", "other", Some("billing")),
            &limits,
        )
        .await
        .unwrap();
    store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw2", "c", "/c", "billing", None),
            &limits,
        )
        .await
        .unwrap();
    store
        .create_proxy(
            &audit(),
            &spec_with_refs("gw3", "d", "/d", "other", None),
            &limits,
        )
        .await
        .unwrap();
    let before = store.snapshot_source("gw").await.unwrap().unwrap();
    assert_eq!(before.version, 2);
    assert_eq!(
        before
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["billing", "other"],
        "each topic once, however many proxies name it"
    );
    let (_, mut gateways) = store
        .update_topic(&audit(), &library_topic("billing", &["one", "two"]), None)
        .await
        .unwrap();
    gateways.sort();
    assert_eq!(gateways, ["gw", "gw2"]);
    let after = store.snapshot_source("gw").await.unwrap().unwrap();
    assert_eq!(after.version, 3, "one bump per gateway, not per proxy");
    assert_eq!(after.topics[0].utterances, ["one", "two"]);
    assert_eq!(
        store.snapshot_source("gw2").await.unwrap().unwrap().version,
        2
    );
    let gw3 = store.snapshot_source("gw3").await.unwrap().unwrap();
    assert_eq!(gw3.version, 1);
    assert_eq!(gw3.topics.len(), 1);
}

// ---- consumers, keys and prices ---------------------------------------------------------

fn consumer(name: &str, proxies: &[String]) -> switchyard_model::ConsumerSpec {
    let body = serde_json::json!({
        "name": name, "proxies": proxies,
        "rate_limits": [{"name": "rpm", "requests": 60, "window": "1m"}],
        "budget": {"usd": 5, "period": "day"},
        "metadata": {"team": "billing"}
    });
    switchyard_model::governance::parse_consumer_input(body.to_string().as_bytes())
        .unwrap()
        .validate(&Limits::default())
        .unwrap()
}

fn new_key(secret: &str, expires_at: Option<chrono::DateTime<chrono::Utc>>) -> NewKey {
    NewKey {
        id: uuid::Uuid::new_v4(),
        prefix: secret[..11].to_owned(),
        hash: switchyard_model::governance::key_hash(secret),
        created_at: from_ms(ms(chrono::Utc::now())),
        expires_at: expires_at.map(|t| from_ms(ms(t))),
    }
}

async fn versions(store: &Store, gateways: &[&str]) -> Vec<u64> {
    let mut out = Vec::new();
    for g in gateways {
        out.push(config_version(store, g).await);
    }
    out
}

async fn consumers_crud_and_their_gateways(store: Arc<Store>) {
    let limits = Limits::default();
    for g in ["gw", "gw2", "gw3"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    let a = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let b = store
        .create_proxy(&audit(), &spec("gw2", "b", "/b"), &limits)
        .await
        .unwrap();
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [1, 1, 0]);

    let (created, mut bumped) = store
        .create_consumer(&audit(), &consumer("billing-app", &[a.id.to_string()]))
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.spec.name, "billing-app");
    assert_eq!(created.spec.proxies, ConsumerProxies::Only(vec![a.id]));
    assert!(created.keys.is_empty());
    assert_eq!(bumped, ["gw"]);
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [2, 1, 0]);
    assert_eq!(
        store.get_consumer("billing-app").await.unwrap().unwrap(),
        created
    );
    assert!(matches!(
        store
            .create_consumer(&audit(), &consumer("billing-app", &[]))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [2, 1, 0]);

    // Moving the consumer from a's gateway to b's bumps both: gw drops it, gw2 gains it.
    let (updated, _) = store
        .update_consumer(
            &audit(),
            &consumer("billing-app", &[b.id.to_string()]),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [3, 2, 0]);
    assert!(
        store
            .snapshot_source("gw")
            .await
            .unwrap()
            .unwrap()
            .consumers
            .is_empty()
    );
    let gw2 = store.snapshot_source("gw2").await.unwrap().unwrap();
    assert_eq!(gw2.consumers.len(), 1);
    assert_eq!(gw2.consumers[0].name, "billing-app");
    assert_eq!(gw2.consumers[0].proxies, ConsumerProxies::Only(vec![b.id]));
    assert_eq!(gw2.consumers[0].rate_limits, updated.spec.rate_limits);
    assert_eq!(gw2.consumers[0].budget, updated.spec.budget);

    assert!(matches!(
        store
            .update_consumer(&audit(), &consumer("billing-app", &[]), Some(1))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .update_consumer(&audit(), &consumer("nope", &[]), None)
            .await,
        Err(StoreError::NotFound(_))
    ));

    store
        .create_consumer(
            &audit(),
            &consumer("analytics", &[a.id.to_string(), b.id.to_string()]),
        )
        .await
        .unwrap();
    let names: Vec<_> = store
        .list_consumers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.spec.name)
        .collect();
    assert_eq!(names, ["analytics", "billing-app"]);

    bumped = store
        .delete_consumer(&audit(), "billing-app")
        .await
        .unwrap();
    assert_eq!(
        bumped,
        ["gw2"].map(|g| {
            // gateway names come back in id order; one gateway here
            g.to_owned()
        })
    );
    assert!(store.get_consumer("billing-app").await.unwrap().is_none());
    assert!(matches!(
        store.delete_consumer(&audit(), "billing-app").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [4, 4, 0]);
}

async fn consumers_name_existing_proxies_only(store: Arc<Store>) {
    let limits = Limits::default();
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let a = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let missing = uuid::Uuid::new_v4();
    let refused = store
        .create_consumer(
            &audit(),
            &consumer("app", &[a.id.to_string(), missing.to_string()]),
        )
        .await;
    match refused {
        Err(StoreError::Invalid(e)) => {
            assert_eq!(e.field, "proxies[1]");
            assert!(e.message.contains(&missing.to_string()), "{}", e.message);
        }
        other => panic!("expected a 422 naming proxies[1], got {other:?}"),
    }
    assert!(
        store.list_consumers().await.unwrap().is_empty(),
        "nothing stored"
    );
    assert_eq!(config_version(&store, "gw").await, 1, "no version bumped");

    store
        .create_consumer(&audit(), &consumer("app", &[a.id.to_string()]))
        .await
        .unwrap();
    let refused = store
        .update_consumer(&audit(), &consumer("app", &[missing.to_string()]), None)
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(e)) if e.field == "proxies[0]"),
        "{refused:?}"
    );
    let kept = store.get_consumer("app").await.unwrap().unwrap();
    assert_eq!(kept.version, 1);
    assert_eq!(kept.spec.proxies, ConsumerProxies::Only(vec![a.id]));
}

async fn key_revocation_bumps_the_right_gateways_and_leaves_the_snapshot(store: Arc<Store>) {
    let limits = Limits::default();
    for g in ["gw", "gw2", "gw3"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    let a = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let b = store
        .create_proxy(&audit(), &spec("gw2", "b", "/b"), &limits)
        .await
        .unwrap();
    store
        .create_proxy(&audit(), &spec("gw3", "c", "/c"), &limits)
        .await
        .unwrap();
    store
        .create_consumer(
            &audit(),
            &consumer("app", &[a.id.to_string(), b.id.to_string()]),
        )
        .await
        .unwrap();
    let before = versions(&store, &["gw", "gw2", "gw3"]).await;
    assert_eq!(before, [2, 2, 1]);

    let secret = format!("sy_{}", "A".repeat(32));
    let key = new_key(&secret, None);
    let mut bumped = store
        .create_consumer_key(&audit(), "app", &key)
        .await
        .unwrap();
    bumped.sort();
    assert_eq!(bumped, ["gw", "gw2"]);
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [3, 3, 1]);
    let snap = store.snapshot_source("gw").await.unwrap().unwrap();
    assert_eq!(snap.version, 3);
    assert_eq!(
        snap.consumers[0].keys,
        [NodeKey {
            id: key.id,
            hash: key.hash,
            expires_at: None
        }]
    );
    assert!(
        store
            .snapshot_source("gw3")
            .await
            .unwrap()
            .unwrap()
            .consumers
            .is_empty()
    );
    let shown = store.get_consumer("app").await.unwrap().unwrap();
    assert_eq!(shown.keys.len(), 1);
    assert_eq!(shown.keys[0].id, key.id);
    assert_eq!(shown.keys[0].prefix, "sy_AAAAAAAA");
    assert_eq!(shown.keys[0].last_used_at, None);
    assert!(matches!(
        store
            .create_consumer_key(
                &audit(),
                "nope",
                &new_key(&format!("sy_{}", "B".repeat(32)), None)
            )
            .await,
        Err(StoreError::NotFound("consumer"))
    ));

    let mut bumped = store
        .revoke_consumer_key(&audit(), "app", key.id)
        .await
        .unwrap();
    bumped.sort();
    assert_eq!(bumped, ["gw", "gw2"]);
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [4, 4, 1]);
    for g in ["gw", "gw2"] {
        let snap = store.snapshot_source(g).await.unwrap().unwrap();
        assert_eq!(snap.consumers.len(), 1);
        assert!(
            snap.consumers[0].keys.is_empty(),
            "{g} still has the revoked key"
        );
    }
    assert!(
        store
            .get_consumer("app")
            .await
            .unwrap()
            .unwrap()
            .keys
            .is_empty()
    );
    assert!(matches!(
        store.revoke_consumer_key(&audit(), "app", key.id).await,
        Err(StoreError::NotFound("key"))
    ));
    assert!(matches!(
        store
            .revoke_consumer_key(&audit(), "app", uuid::Uuid::new_v4())
            .await,
        Err(StoreError::NotFound("key"))
    ));
    assert_eq!(versions(&store, &["gw", "gw2", "gw3"]).await, [4, 4, 1]);
}

async fn expired_keys_leave_the_snapshot(store: Arc<Store>) {
    let limits = Limits::default();
    store.create_gateway(&audit(), "gw", "h").await.unwrap();
    let a = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    store
        .create_consumer(&audit(), &consumer("app", &[a.id.to_string()]))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let live = new_key(
        &format!("sy_{}", "L".repeat(32)),
        Some(now + chrono::Duration::days(1)),
    );
    let gone = new_key(
        &format!("sy_{}", "E".repeat(32)),
        Some(now - chrono::Duration::seconds(1)),
    );
    store
        .create_consumer_key(&audit(), "app", &live)
        .await
        .unwrap();
    store
        .create_consumer_key(&audit(), "app", &gone)
        .await
        .unwrap();
    let snap = store.snapshot_source("gw").await.unwrap().unwrap();
    let ids: Vec<_> = snap.consumers[0].keys.iter().map(|k| k.id).collect();
    assert_eq!(
        ids,
        [live.id],
        "an expired key is not sent; a live one is, with its expiry"
    );
    assert_eq!(snap.consumers[0].keys[0].expires_at, live.expires_at);
    // The admin still sees both, each with its expiry.
    assert_eq!(
        store.get_consumer("app").await.unwrap().unwrap().keys.len(),
        2
    );
    // The same key twice is a conflict, not a second row.
    assert!(matches!(
        store
            .create_consumer_key(
                &audit(),
                "app",
                &NewKey {
                    id: uuid::Uuid::new_v4(),
                    ..live.clone()
                }
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn every_consumer_for_star_and_deleted_proxies_drop_out(store: Arc<Store>) {
    let limits = Limits::default();
    for g in ["gw", "gw2"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    let a = store
        .create_proxy(&audit(), &spec("gw", "a", "/a"), &limits)
        .await
        .unwrap();
    let b = store
        .create_proxy(&audit(), &spec("gw", "b", "/b"), &limits)
        .await
        .unwrap();
    let (everyone, mut bumped) = store
        .create_consumer(&audit(), &consumer("everyone", &["*".to_owned()]))
        .await
        .unwrap();
    bumped.sort();
    assert_eq!(bumped, ["gw", "gw2"], "'*' reaches every gateway");
    assert_eq!(everyone.spec.proxies, ConsumerProxies::All);
    for g in ["gw", "gw2"] {
        let snap = store.snapshot_source(g).await.unwrap().unwrap();
        assert_eq!(snap.consumers.len(), 1, "{g}");
        assert_eq!(snap.consumers[0].proxies, ConsumerProxies::All);
    }

    store
        .create_consumer(
            &audit(),
            &consumer("two", &[b.id.to_string(), a.id.to_string()]),
        )
        .await
        .unwrap();
    store.delete_proxy(&audit(), a.id).await.unwrap();
    let two = store.get_consumer("two").await.unwrap().unwrap();
    assert_eq!(
        two.spec.proxies,
        ConsumerProxies::Only(vec![b.id]),
        "a deleted proxy drops out"
    );
    store.delete_proxy(&audit(), b.id).await.unwrap();
    let snap = store.snapshot_source("gw").await.unwrap().unwrap();
    assert_eq!(
        snap.consumers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["everyone"],
        "a consumer with no proxy left on the gateway is not sent to it"
    );
    // Its stored definition can be written back as read.
    let two = store.get_consumer("two").await.unwrap().unwrap();
    assert_eq!(two.spec.proxies, ConsumerProxies::Only(vec![]));
    store
        .update_consumer(&audit(), &two.spec, Some(two.version))
        .await
        .unwrap();
}

async fn prices_are_seeded_once_and_writes_bump_every_gateway(store: Arc<Store>) {
    // Every store starts with the bundled list.
    let bundled = bundled_prices().unwrap();
    let table = store.list_prices().await.unwrap();
    assert_eq!(table.len(), bundled.len());
    let gpt41 = store.get_price("gpt-4.1").await.unwrap().unwrap();
    assert_eq!(
        (
            gpt41.input_per_mtok,
            gpt41.output_per_mtok,
            gpt41.cached_input_per_mtok
        ),
        (2.0, 8.0, Some(0.5))
    );

    for g in ["gw", "gw2"] {
        store.create_gateway(&audit(), g, "h").await.unwrap();
    }
    let bedrock = Price {
        model: "anthropic.claude-3-haiku-20240307-v1:0".into(),
        input_per_mtok: 0.25,
        output_per_mtok: 1.25,
        cached_input_per_mtok: None,
    };
    let (created, mut bumped) = store.put_price(&audit(), &bedrock).await.unwrap();
    assert!(created);
    bumped.sort();
    assert_eq!(bumped, ["gw", "gw2"]);
    assert_eq!(
        store.get_price(&bedrock.model).await.unwrap().unwrap(),
        bedrock
    );
    let changed = Price {
        output_per_mtok: 1.5,
        ..bedrock.clone()
    };
    let (created, _) = store.put_price(&audit(), &changed).await.unwrap();
    assert!(!created);
    assert_eq!(versions(&store, &["gw", "gw2"]).await, [2, 2]);
    let snap = store.snapshot_source("gw").await.unwrap().unwrap();
    assert!(snap.prices.contains(&changed));
    assert_eq!(snap.prices.len(), bundled.len() + 1);

    store.delete_price(&audit(), "gpt-4.1").await.unwrap();
    assert!(matches!(
        store.delete_price(&audit(), "gpt-4.1").await,
        Err(StoreError::NotFound("price"))
    ));
    assert_eq!(versions(&store, &["gw", "gw2"]).await, [3, 3]);

    // A later start seeds only what was never seeded: the admin's delete and the admin's own
    // price stay, a model new to the list is added (and every gateway hears of it).
    let mut seed: Vec<Price> = bundled.into_iter().map(|s| s.price).collect();
    seed.push(Price {
        output_per_mtok: 99.0,
        ..changed.clone()
    });
    seed.push(Price {
        model: "new-model".into(),
        input_per_mtok: 1.0,
        output_per_mtok: 2.0,
        cached_input_per_mtok: None,
    });
    assert_eq!(store.seed_prices(&seed).await.unwrap(), 1);
    assert!(store.get_price("gpt-4.1").await.unwrap().is_none());
    assert_eq!(
        store.get_price(&changed.model).await.unwrap().unwrap(),
        changed
    );
    assert!(store.get_price("new-model").await.unwrap().is_some());
    assert_eq!(versions(&store, &["gw", "gw2"]).await, [4, 4]);
    assert_eq!(store.seed_prices(&seed).await.unwrap(), 0);
    assert_eq!(
        versions(&store, &["gw", "gw2"]).await,
        [4, 4],
        "nothing seeded, nothing bumped"
    );
}

async fn audit_count(store: &Store) -> usize {
    store
        .list_audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .len()
}

async fn audit_entries_commit_with_their_write_only(store: Arc<Store>) {
    let limits = Limits {
        proxies_per_gateway: 1,
        ..Limits::default()
    };
    store
        .create_gateway(&audit(), "prod-eu", "h")
        .await
        .unwrap();
    let p = store
        .create_proxy(&audit(), &spec("prod-eu", "a", "/a"), &limits)
        .await
        .unwrap();
    assert_eq!(audit_count(&store).await, 2);
    // Refused inside the transaction, after the gateway's row was locked: nothing recorded.
    assert!(
        store
            .create_proxy(&audit(), &spec("prod-eu", "b", "/b"), &limits)
            .await
            .is_err()
    );
    assert!(
        store
            .update_proxy(&audit(), p.id, &spec("prod-eu", "a", "/a2"), Some(7))
            .await
            .is_err()
    );
    assert!(store.delete_gateway(&audit(), "prod-eu").await.is_err());
    assert!(
        store
            .create_gateway(&audit(), "prod-eu", "h")
            .await
            .is_err()
    );
    assert!(store.revoke_admin_token(&audit(), "nobody").await.is_err());
    assert_eq!(audit_count(&store).await, 2);
    // A committed write: its entry, with the context given.
    let ctx = Audit::new("ci", "req-42");
    store
        .update_proxy(&ctx, p.id, &spec("prod-eu", "a", "/a2"), Some(1))
        .await
        .unwrap();
    let newest = &store
        .list_audit(&AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap()[0];
    assert_eq!(
        (
            newest.actor.as_str(),
            newest.action.as_str(),
            newest.resource.clone(),
            newest.request_id.as_deref()
        ),
        ("ci", "update", format!("proxy/{}", p.id), Some("req-42"))
    );
    assert_eq!(newest.before.as_ref().unwrap()["base_path"], "/a");
    assert_eq!(newest.after.as_ref().unwrap()["base_path"], "/a2");
    // The process's own writes say so.
    store
        .create_gateway(&Audit::system("dev"), "dev", "h")
        .await
        .unwrap();
    let newest = &store
        .list_audit(&AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap()[0];
    assert_eq!(
        (newest.actor.as_str(), newest.request_id.as_deref()),
        ("system:dev", None)
    );
}

async fn audit_queries_filter_and_page(store: Arc<Store>) {
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let who = if i % 2 == 0 { "even" } else { "odd" };
        store
            .create_gateway(&Audit::new(who, format!("r{i}")), name, "h")
            .await
            .unwrap();
    }
    store
        .delete_gateway(&Audit::new("odd", "r9"), "e")
        .await
        .unwrap();
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut q);
        let store = store.clone();
        async move {
            store
                .list_audit(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.resource)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        q(|_| {}).await,
        [
            "gateway/e",
            "gateway/e",
            "gateway/d",
            "gateway/c",
            "gateway/b",
            "gateway/a"
        ]
    );
    assert_eq!(
        q(|q| q.actor = Some("even".into())).await,
        ["gateway/e", "gateway/c", "gateway/a"]
    );
    assert_eq!(
        q(|q| q.action = Some(AuditAction::Delete)).await,
        ["gateway/e"]
    );
    assert_eq!(
        q(|q| q.resource = Some(ResourceFilter::Exact("gateway/b".into()))).await,
        ["gateway/b"]
    );
    assert_eq!(
        q(|q| q.resource = Some(ResourceFilter::Prefix("gateway/".into())))
            .await
            .len(),
        6
    );
    assert!(
        q(|q| q.resource = Some(ResourceFilter::Prefix("proxy/".into())))
            .await
            .is_empty()
    );
    // A prefix is not a pattern: '%' and '_' mean themselves.
    assert!(
        q(|q| q.resource = Some(ResourceFilter::Prefix("gateway%".into())))
            .await
            .is_empty()
    );
    assert!(
        q(|q| q.since = Some(chrono::Utc::now() + chrono::Duration::hours(1)))
            .await
            .is_empty()
    );
    assert_eq!(
        q(|q| q.until = Some(chrono::Utc::now() + chrono::Duration::hours(1)))
            .await
            .len(),
        6
    );
    // Pages of 4 then 2, newest first, each entry once.
    let all = store
        .list_audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let first = store
        .list_audit(&AuditQuery {
            limit: 4,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let second = store
        .list_audit(&AuditQuery {
            limit: 4,
            after: Some(Cursor::of(&first[3])),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(first.len() + second.len(), all.len());
    let paged: Vec<i64> = first.iter().chain(&second).map(|e| e.id).collect();
    assert_eq!(paged, all.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// Migrations 0006 (usage) and 0007 (admin tokens and audit) were written in parallel, and
/// 0007 may reach a database first. sqlx applies every numbered migration a database has not
/// seen, lower numbers included: a database migrated without 0006 takes it later (the real
/// one once it exists, a stand-in touching its own table until then), and stays usable.
async fn a_later_lower_migration_applies_after_0007(url: &str) {
    use sqlx::Row;
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let embedded = if url.starts_with("postgres") {
        &PG_MIGRATIONS
    } else {
        &SQLITE_MIGRATIONS
    };
    let migrator = |migrations: Vec<Migration>| Migrator {
        migrations: std::borrow::Cow::Owned(migrations),
        ..Migrator::DEFAULT
    };
    let real_6 = embedded.migrations.iter().any(|m| m.version == 6);
    let mut full = embedded.migrations.to_vec();
    if !real_6 {
        full.push(Migration::new(
            6,
            "usage stand-in".into(),
            MigrationType::Simple,
            "CREATE TABLE usage_stand_in (id TEXT PRIMARY KEY)".into_sql_str(),
            false,
        ));
        full.sort_by_key(|m| m.version);
    }
    let without_6: Vec<Migration> = full.iter().filter(|m| m.version != 6).cloned().collect();
    assert!(without_6.iter().any(|m| m.version == 7));
    migrator(without_6).run(&pool).await.unwrap();
    migrator(full.clone()).run(&pool).await.unwrap();
    migrator(full.clone()).run(&pool).await.unwrap();
    let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("version").unwrap())
        .collect();
    assert_eq!(applied, full.iter().map(|m| m.version).collect::<Vec<_>>());
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, resource) VALUES (1, 'a', 'create', 'gateway/x')",
    )
    .execute(&pool)
    .await
    .unwrap();
    if real_6 {
        pool.close().await;
        let store = Store::connect(url).await.unwrap();
        store.create_gateway(&audit(), "gw", "h").await.unwrap();
    } else {
        sqlx::query("INSERT INTO usage_stand_in (id) VALUES ('x')")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_later_lower_migration_applies_after_0007() {
    let dir = tempfile::tempdir().unwrap();
    a_later_lower_migration_applies_after_0007(&format!(
        "sqlite://{}/order.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_later_lower_migration_applies_after_0007() {
    let db = PgDatabase::create().await;
    a_later_lower_migration_applies_after_0007(db.url()).await;
}
