//! One provider identity: the translation library's list (`switchyard_llm::Provider::ALL`)
//! is the one list. The domain model uses that very type; this test checks the other views
//! against it: the gRPC contract's enum, the admin API's OpenAPI document, and the ids the
//! stored JSON carries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use switchyard_llm::Provider;
use switchyard_model::snapshot::{provider_from_pb, provider_to_pb};
use switchyard_proto::v1 as pb;

#[test]
fn the_proto_enum_names_exactly_the_providers() {
    for p in Provider::ALL {
        let value = provider_to_pb(p);
        assert_ne!(
            value,
            pb::Provider::Unspecified,
            "{p} is missing from config.proto"
        );
        assert_eq!(provider_from_pb(value as i32), Some(p));
    }
    // Every value the contract defines (past UNSPECIFIED) is a provider of the list.
    let mut defined = 0;
    for i in 1..64 {
        if pb::Provider::try_from(i).is_ok() {
            defined += 1;
            assert!(
                provider_from_pb(i).is_some(),
                "config.proto value {i} names no provider of the list"
            );
        }
    }
    assert_eq!(defined, Provider::ALL.len());
    assert_eq!(provider_from_pb(0), None);
}

#[test]
fn the_openapi_document_lists_exactly_the_providers() {
    let doc: Value = serde_json::from_str(switchyard_control_plane::api::OPENAPI).unwrap();
    let listed: Vec<&str> = doc["components"]["schemas"]["Route"]["properties"]["provider"]["enum"]
        .as_array()
        .expect("Route.provider is an enum")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ids: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(listed, ids);
}

#[test]
fn the_model_stores_and_validates_the_same_ids() {
    for p in Provider::ALL {
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(json, Value::from(p.as_str()));
        let back: switchyard_model::Provider = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }
    let err = serde_json::from_value::<switchyard_model::Provider>(Value::from("vertex"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&Provider::ids()), "{err}");
    // The admin API's message for an unknown provider names the list.
    let body = serde_json::json!({"name": "p", "gateway": "gw", "base_path": "/p",
        "routes": [{"provider": "vertex", "url": "https://x"}]});
    let err = switchyard_model::parse_proxy_input(body.to_string().as_bytes())
        .and_then(|input| input.validate(&switchyard_model::Limits::default(), None))
        .unwrap_err();
    assert_eq!(err.field, "routes[0].provider");
    assert!(err.message.contains(&Provider::ids()), "{}", err.message);
}
