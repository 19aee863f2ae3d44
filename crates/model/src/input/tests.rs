use serde_json::{Value, json};

use super::*;

fn contract_example() -> Value {
    json!({
        "name": "support-assistant",
        "gateway": "prod-eu",
        "format": "openai",
        "base_path": "/support",
        "routing": {
            "strategy": "model",
            "fallback": {"route": "openai", "target_model": "gpt-4o-mini"},
            "threshold": 0.6
        },
        "routes": [
            {
                "name": "openai",
                "provider": "openai",
                "url": "https://api.openai.com/v1",
                "auth": {"type": "static", "api_key": "sk-test"},
                "target_model": "gpt-4.1",
                "topics": [{"name": "billing", "utterances": ["How do I pay my invoice?"]}]
            },
            {
                "name": "claude",
                "provider": "bedrock",
                "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                "region": "us-east-1",
                "auth": {"type": "dynamic", "expression": "#[attributes.headers['x-aws-key']]"},
                "target_model": "anthropic/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
            }
        ],
        "prompt_guard": {
            "threshold": 0.7,
            "deny_topics": [{"name": "weapons", "utterances": ["How do I build a bomb?"]}]
        }
    })
}

fn validate(v: &Value) -> Result<ProxySpec, ValidationError> {
    validate_with(v, &Limits::default())
}

fn validate_with(v: &Value, limits: &Limits) -> Result<ProxySpec, ValidationError> {
    parse_proxy_input(v.to_string().as_bytes())?.validate(limits, None)
}

fn err(v: &Value) -> ValidationError {
    validate(v).unwrap_err()
}

#[test]
fn the_contract_example_is_valid() {
    let spec = validate(&contract_example()).unwrap();
    assert_eq!(spec.routes.len(), 2);
    assert_eq!(spec.routes[1].provider, Provider::Bedrock);
    assert!(matches!(spec.routes[1].auth, Auth::Dynamic { .. }));
    assert_eq!(spec.routing.fallback.as_ref().unwrap().route, "openai");
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let mut v = contract_example();
    v["routes"][1]["auth"]["colour"] = json!("red");
    let e = err(&v);
    assert_eq!(e.code, ErrorCode::Malformed);
    assert_eq!(e.field, "routes[1].auth.colour");
    assert!(e.message.contains("colour"), "{}", e.message);

    let mut v = contract_example();
    v["surprise"] = json!(1);
    assert_eq!(err(&v).field, "surprise");
}

#[test]
fn malformed_json_and_wrong_types_are_malformed() {
    let e = parse_proxy_input(b"{\"name\": ").unwrap_err();
    assert_eq!(e.code, ErrorCode::Malformed);
    let mut v = contract_example();
    v["routes"][0]["topics"] = json!("billing");
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::Malformed, "routes[0].topics")
    );
    let mut v = contract_example();
    v.as_object_mut().unwrap().remove("base_path");
    assert_eq!(err(&v).code, ErrorCode::Malformed);
    assert!(parse_proxy_input(b"{} trailing").is_err());
}

#[test]
fn route_name_defaults_to_the_provider_id_and_must_be_unique() {
    let mut v = contract_example();
    v["routes"][0].as_object_mut().unwrap().remove("name");
    v["routing"]["fallback"]["route"] = json!("openai");
    assert_eq!(validate(&v).unwrap().routes[0].name, "openai");

    let mut v = contract_example();
    v["routes"][1]["name"] = json!("openai");
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::RuleViolated, "routes[1].name")
    );
}

#[test]
fn topic_limit_counts_across_routes() {
    let mut v = contract_example();
    let topics: Vec<Value> = (0..4)
        .map(|i| json!({"name": format!("a{i}"), "utterances": ["x"]}))
        .collect();
    v["routes"][0]["topics"] = json!(topics);
    let topics: Vec<Value> = (0..2)
        .map(|i| json!({"name": format!("b{i}"), "utterances": ["x"]}))
        .collect();
    v["routes"][1]["topics"] = json!(topics.clone());
    assert!(validate(&v).is_ok(), "6 topics are allowed");

    let mut more = topics;
    more.push(json!({"name": "b2", "utterances": ["x"]}));
    v["routes"][1]["topics"] = json!(more);
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::LimitExceeded, "routes[1].topics[2]")
    );

    let raised = Limits {
        topics_per_proxy: 100,
        ..Limits::default()
    };
    assert!(validate_with(&v, &raised).is_ok());
}

#[test]
fn utterance_limits() {
    let mut v = contract_example();
    let ten: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    v["routes"][0]["topics"][0]["utterances"] = json!(ten);
    assert!(validate(&v).is_ok());
    let eleven: Vec<String> = (0..11).map(|i| format!("u{i}")).collect();
    v["routes"][0]["topics"][0]["utterances"] = json!(eleven);
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::LimitExceeded, "routes[0].topics[0].utterances")
    );

    let mut v = contract_example();
    v["routes"][0]["topics"][0]["utterances"] = json!(["é".repeat(500)]);
    assert!(validate(&v).is_ok(), "500 characters, not bytes");
    v["routes"][0]["topics"][0]["utterances"] = json!(["a".repeat(501)]);
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (
            ErrorCode::LimitExceeded,
            "routes[0].topics[0].utterances[0]"
        )
    );
    v["routes"][0]["topics"][0]["utterances"] = json!([]);
    assert_eq!(err(&v).field, "routes[0].topics[0].utterances");
}

#[test]
fn deny_list_limits() {
    let mut v = contract_example();
    let six: Vec<Value> = (0..6)
        .map(|i| json!({"name": format!("d{i}"), "utterances": ["x"]}))
        .collect();
    v["prompt_guard"]["deny_topics"] = json!(six);
    assert!(validate(&v).is_ok());
    let seven: Vec<Value> = (0..7)
        .map(|i| json!({"name": format!("d{i}"), "utterances": ["x"]}))
        .collect();
    v["prompt_guard"]["deny_topics"] = json!(seven);
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::LimitExceeded, "prompt_guard.deny_topics[6]")
    );

    let mut v = contract_example();
    let eleven: Vec<String> = (0..11).map(|i| format!("u{i}")).collect();
    v["prompt_guard"]["deny_topics"][0]["utterances"] = json!(eleven);
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (
            ErrorCode::LimitExceeded,
            "prompt_guard.deny_topics[0].utterances"
        )
    );
    let mut v = contract_example();
    v["prompt_guard"]["deny_topics"][0]["utterances"] = json!(["x".repeat(501)]);
    assert_eq!(err(&v).field, "prompt_guard.deny_topics[0].utterances[0]");
    let mut v = contract_example();
    v["prompt_guard"]["threshold"] = json!(1.5);
    assert_eq!(err(&v).field, "prompt_guard.threshold");
}

#[test]
fn semantic_needs_target_models_and_topics() {
    let mut v = contract_example();
    v["routing"]["strategy"] = json!("semantic");
    assert!(validate(&v).is_ok());
    v["routes"][1]
        .as_object_mut()
        .unwrap()
        .remove("target_model");
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::RuleViolated, "routes[1].target_model")
    );

    let mut v = contract_example();
    v["routing"]["strategy"] = json!("semantic");
    v["routes"][0].as_object_mut().unwrap().remove("topics");
    assert_eq!(err(&v).field, "routes");
}

#[test]
fn base_path_and_enums_name_their_field() {
    for (path, value, field) in [
        ("base_path", json!("support"), "base_path"),
        ("base_path", json!("/metrics"), "base_path"),
        ("format", json!("cohere"), "format"),
        ("gateway", json!("Prod EU"), "gateway"),
    ] {
        let mut v = contract_example();
        v[path] = value;
        let e = err(&v);
        assert_eq!(e.field, field);
        assert_ne!(e.code, ErrorCode::Malformed);
    }
    let mut v = contract_example();
    v["routes"][0]["provider"] = json!("cohere");
    assert_eq!(err(&v).field, "routes[0].provider");
    let mut v = contract_example();
    v["routing"]["strategy"] = json!("random");
    assert_eq!(err(&v).field, "routing.strategy");
    let mut v = contract_example();
    v["routing"]["threshold"] = json!(-0.1);
    assert_eq!(err(&v).field, "routing.threshold");
}

#[test]
fn fallback_must_name_a_route() {
    let mut v = contract_example();
    v["routing"]["fallback"]["route"] = json!("nope");
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::RuleViolated, "routing.fallback.route")
    );
}

#[test]
fn anthropic_proxies_route_to_every_provider() {
    let mut v = contract_example();
    v["format"] = json!("anthropic");
    let spec = parse_proxy_input(v.to_string().as_bytes())
        .unwrap()
        .validate(&Limits::default(), None)
        .unwrap();
    assert_eq!(spec.format, Format::Anthropic);
    assert_eq!(spec.format.id(), "anthropic");
}

#[test]
fn gemini_proxies_route_to_gemini_only() {
    let v = json!({
        "name": "g", "gateway": "gw", "format": "gemini", "base_path": "/g",
        "routes": [{"provider": "openai", "url": "https://api.openai.com/v1",
                    "auth": {"type": "static", "api_key": "k"}}]
    });
    assert_eq!(err(&v).field, "routes[0].provider");
}

#[test]
fn provider_specific_fields() {
    let route = |extra: Value| {
        let mut r = json!({"provider": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
            "auth": {"type": "static", "access_key_id": "AKID", "secret_access_key": "SECRET"}});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [r]})
    };
    assert_eq!(err(&route(json!({}))).field, "routes[0].region");
    let spec = validate(&route(json!({"region": "us-east-1"}))).unwrap();
    assert!(matches!(spec.routes[0].auth, Auth::StaticAws { .. }));
    assert_eq!(
        err(&route(
            json!({"region": "us-east-1", "auth": {"type": "static", "api_key": "k"}})
        ))
        .field,
        "routes[0].auth.api_key"
    );
    let separate = route(json!({"region": "us-east-1", "auth": {"type": "dynamic",
        "access_key_id": "#[attributes.headers['x-id']]",
        "secret_access_key": "attributes.headers['x-secret']"}}));
    assert!(matches!(
        validate(&separate).unwrap().routes[0].auth,
        Auth::DynamicAws { .. }
    ));

    let openai = json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [
        {"provider": "openai", "url": "https://api.openai.com/v1", "region": "us-east-1",
         "auth": {"type": "static", "api_key": "k"}}]});
    assert_eq!(err(&openai).field, "routes[0].region");
    let no_auth = json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [
        {"provider": "openai", "url": "https://api.openai.com/v1"}]});
    assert_eq!(err(&no_auth).field, "routes[0].auth");
    let compatible = json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [
        {"provider": "openai-compatible", "url": "http://127.0.0.1:11434/v1/"}]});
    let spec = validate(&compatible).unwrap();
    assert_eq!(spec.routes[0].auth, Auth::None);
    assert_eq!(
        spec.routes[0].url, "http://127.0.0.1:11434/v1",
        "trailing slash trimmed"
    );
    let bad_url = json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [
        {"provider": "openai-compatible", "url": "ftp://x"}]});
    assert_eq!(err(&bad_url).field, "routes[0].url");
    let bad_selector = json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [
        {"provider": "openai", "url": "https://x", "auth": {"type": "dynamic", "expression": "env.KEY"}}]});
    assert_eq!(err(&bad_selector).field, "routes[0].auth.expression");
}

#[test]
fn redacted_secret_on_put_keeps_the_stored_one() {
    let stored = validate(&contract_example()).unwrap();
    let mut v = contract_example();
    v["routes"][0]["auth"]["api_key"] = json!("***");
    let spec = parse_proxy_input(v.to_string().as_bytes())
        .unwrap()
        .validate(&Limits::default(), Some(&stored))
        .unwrap();
    assert_eq!(
        spec.routes[0].auth,
        Auth::Static {
            api_key: Secret::new("sk-test")
        }
    );
    // Without a stored secret, the placeholder is refused.
    assert_eq!(err(&v).field, "routes[0].auth.api_key");
}

#[test]
fn stored_json_round_trips_and_is_lenient() {
    let spec = validate(&contract_example()).unwrap();
    let mut stored = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        stored["routes"][0]["auth"],
        json!({"type": "static", "api_key": "sk-test"})
    );
    stored["a_field_from_the_future"] = json!(true);
    stored["routes"][0]["auth"]["rotation"] = json!("weekly");
    let back: ProxySpec = serde_json::from_value(stored).unwrap();
    assert_eq!(back, spec);
    let redacted = serde_json::to_value(spec.redacted()).unwrap();
    assert_eq!(redacted["routes"][0]["auth"]["api_key"], "***");
}

#[test]
fn regex_guard_is_validated_and_compiled() {
    let mut v = contract_example();
    v["regex_guard"] = json!({"patterns": [
        {"name": "ssn", "pattern": "\\b\\d{3}-\\d{2}-\\d{4}\\b"},
        {"name": "card", "pattern": "\\b(?:\\d[ -]?){13,16}\\b"}
    ]});
    let spec = validate(&v).unwrap();
    let guard = spec.regex_guard.as_ref().unwrap();
    assert_eq!(guard.patterns.len(), 2);
    assert_eq!(guard.patterns[0].name, "ssn");
    assert!(
        compile_guard_regex(&guard.patterns[0].pattern)
            .unwrap()
            .is_match("my ssn is 123-45-6789")
    );

    let mut bad = v.clone();
    bad["regex_guard"]["patterns"][1]["pattern"] = json!("(unclosed");
    let e = err(&bad);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::InvalidValue, "regex_guard.patterns[1].pattern")
    );
    assert!(e.message.contains("regular expression"), "{}", e.message);

    let mut dup = v.clone();
    dup["regex_guard"]["patterns"][1]["name"] = json!("ssn");
    assert_eq!(err(&dup).field, "regex_guard.patterns[1].name");

    let mut empty = v.clone();
    empty["regex_guard"]["patterns"] = json!([]);
    assert_eq!(err(&empty).code, ErrorCode::RuleViolated);

    let mut unknown = v.clone();
    unknown["regex_guard"]["patterns"][0]["flags"] = json!("i");
    assert_eq!(err(&unknown).field, "regex_guard.patterns[0].flags");
}

#[test]
fn regex_guard_limits() {
    let mut v = contract_example();
    let twenty: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("p{i}"), "pattern": format!("secret{i}")}))
        .collect();
    v["regex_guard"] = json!({"patterns": twenty});
    assert!(validate(&v).is_ok());
    let twenty_one: Vec<Value> = (0..21)
        .map(|i| json!({"name": format!("p{i}"), "pattern": format!("secret{i}")}))
        .collect();
    v["regex_guard"] = json!({"patterns": twenty_one});
    let e = err(&v);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::LimitExceeded, "regex_guard.patterns[20]")
    );
    let raised = Limits {
        regex_patterns_per_proxy: 21,
        ..Limits::default()
    };
    assert!(validate_with(&v, &raised).is_ok());

    let mut long = contract_example();
    long["regex_guard"] = json!({"patterns": [{"name": "x", "pattern": "a".repeat(1001)}]});
    let e = err(&long);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::LimitExceeded, "regex_guard.patterns[0].pattern")
    );

    // Short to write, huge to compile: refused by the compiled-size bound.
    let mut huge = contract_example();
    huge["regex_guard"] = json!({"patterns": [{"name": "x", "pattern": "\\w{500}\\w{500}"}]});
    let e = err(&huge);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::LimitExceeded, "regex_guard.patterns[0].pattern")
    );
}

#[test]
fn semantic_service_is_a_reference_by_name() {
    let mut v = contract_example();
    v["semantic_service"] = json!("embed-eu");
    let spec = validate(&v).unwrap();
    assert_eq!(spec.semantic_service.as_deref(), Some("embed-eu"));
    let stored = serde_json::to_value(&spec).unwrap();
    assert_eq!(stored["semantic_service"], "embed-eu");
    assert!(
        validate(&contract_example())
            .unwrap()
            .semantic_service
            .is_none()
    );

    // Only the name: the inline definition of earlier versions is malformed.
    let mut inline = contract_example();
    inline["semantic_service"] = json!({"url": "http://127.0.0.1:9/v1", "model": "emb"});
    let e = err(&inline);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::Malformed, "semantic_service")
    );
    let mut bad = contract_example();
    bad["semantic_service"] = json!("Not A Name");
    let e = err(&bad);
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::InvalidValue, "semantic_service")
    );
}

#[test]
fn versions_are_integers_from_zero_to_i64_max_also_as_integral_floats() {
    let with = |version: &str| {
        let mut v = contract_example().to_string();
        v.pop();
        v.push_str(&format!(",\"version\":{version}}}"));
        parse_proxy_input(v.as_bytes()).map(|input| input.version)
    };
    assert_eq!(with("3").unwrap(), Some(3));
    assert_eq!(with("3.0").unwrap(), Some(3));
    assert_eq!(with("null").unwrap(), None);
    assert_eq!(with("9223372036854775807").unwrap(), Some(i64::MAX as u64));
    for bad in ["-1", "1.5", "9223372036854775808", "1e30", "\"3\""] {
        let err = with(bad).unwrap_err();
        assert_eq!(err.field, "version", "{bad}");
        assert_eq!(err.code, ErrorCode::Malformed, "{bad}");
    }
}

#[test]
fn models_are_measured_in_characters() {
    let mut v = contract_example();
    v["routes"][0]["target_model"] = json!("é".repeat(256));
    assert!(validate(&v).is_ok());
    v["routes"][0]["target_model"] = json!("é".repeat(257));
    assert_eq!(err(&v).field, "routes[0].target_model");
}

#[test]
fn redacted_secret_is_refused_when_the_destination_changes() {
    let stored = validate(&contract_example()).unwrap();
    let put = |edit: &dyn Fn(&mut Value)| {
        let mut v = contract_example();
        v["routes"][0]["auth"]["api_key"] = json!("***");
        edit(&mut v);
        parse_proxy_input(v.to_string().as_bytes())
            .unwrap()
            .validate(&Limits::default(), Some(&stored))
    };
    // Same destination: kept.
    assert!(put(&|_| {}).is_ok());
    // A new URL would send the stored key to a new host: refused, naming the field.
    let e = put(&|v| v["routes"][0]["url"] = json!("https://attacker.example/v1")).unwrap_err();
    assert_eq!(e.field, "routes[0].auth.api_key");
    assert_eq!(e.code, ErrorCode::RuleViolated);
    assert!(e.message.contains("destination changed"), "{}", e.message);
    // A new provider under the same route name: refused too.
    let e = put(&|v| {
        v["routes"][0]["provider"] = json!("nvidia");
    })
    .unwrap_err();
    assert_eq!(e.field, "routes[0].auth.api_key");
    // Sending the key again with the new URL is fine.
    let mut v = contract_example();
    v["routes"][0]["url"] = json!("https://other.example/v1");
    let spec = parse_proxy_input(v.to_string().as_bytes())
        .unwrap()
        .validate(&Limits::default(), Some(&stored))
        .unwrap();
    assert_eq!(spec.routes[0].url, "https://other.example/v1");
}

#[test]
fn urls_with_credentials_are_refused() {
    for url in [
        "https://user:pass@api.openai.com/v1",
        "https://user@api.openai.com/v1",
        "http://:secret@10.0.0.1:8080",
    ] {
        let v = json!({"name": "p", "gateway": "gw", "base_path": "/p", "routes": [
            {"provider": "openai-compatible", "url": url}]});
        let e = err(&v);
        assert_eq!(e.field, "routes[0].url", "{url}");
        assert!(e.message.contains("credentials"), "{}", e.message);
        assert!(
            !e.message.contains("pass"),
            "the error must not echo the secret"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON values, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Field names of the proxy body, so mutations hit real fields.
    const FIELDS: &[&str] = &[
        "name",
        "gateway",
        "format",
        "base_path",
        "routing",
        "routes",
        "prompt_guard",
        "regex_guard",
        "semantic_service",
        "id",
        "version",
        "strategy",
        "fallback",
        "threshold",
        "provider",
        "url",
        "region",
        "api_version",
        "auth",
        "type",
        "api_key",
        "expression",
        "target_model",
        "topics",
        "utterances",
        "patterns",
        "pattern",
        "scope",
        "deny_topics",
    ];

    /// Replaces or adds a value at a random path of `v`.
    fn mutate(v: &mut Value, path: &[usize], key: usize, new: Value) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let k = m
                    .keys()
                    .nth(path.first().copied().unwrap_or(0) % m.len())
                    .cloned();
                match (path.len(), k) {
                    (0 | 1, _) => {
                        m.insert(FIELDS[key % FIELDS.len()].to_owned(), new);
                    }
                    (_, Some(k)) => mutate(m.get_mut(&k).unwrap(), &path[1..], key, new),
                    _ => {}
                }
            }
            Value::Array(a) if !a.is_empty() && path.len() > 1 => {
                let i = path[0] % a.len();
                mutate(&mut a[i], &path[1..], key, new);
            }
            other => *other = new,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        /// Arbitrary bytes: parsed or refused with a malformed-body error, never a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(body in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Err(e) = parse_proxy_input(&body) {
                prop_assert_eq!(e.code, ErrorCode::Malformed);
            }
        }

        /// The contract example with one value replaced anywhere: the parser and the
        /// validator either accept it or name a field of the body, never panic; what they
        /// accept is a spec that validates again the same way (GET → PUT round trip).
        #[test]
        fn mutated_bodies_are_accepted_or_name_a_field(
            path in prop::collection::vec(any::<usize>(), 0..5),
            key in any::<usize>(),
            new in json_value(),
        ) {
            let mut v = contract_example();
            mutate(&mut v, &path, key, new);
            match parse_proxy_input(v.to_string().as_bytes()).and_then(|i| i.validate(&Limits::default(), None)) {
                Ok(spec) => {
                    let shown = serde_json::to_value(&spec).unwrap();
                    let again = parse_proxy_input(shown.to_string().as_bytes())
                        .and_then(|i| i.validate(&Limits::default(), Some(&spec)));
                    prop_assert!(again.is_ok(), "{:?} for {}", again, shown);
                    prop_assert_eq!(again.unwrap(), spec);
                }
                Err(e) => {
                    prop_assert!(!e.message.is_empty());
                    // A field path names something of the body (or the body itself).
                    let first = e.field.split(['.', '[']).next().unwrap_or_default();
                    prop_assert!(
                        first.is_empty() || FIELDS.contains(&first) || v.get(first).is_some(),
                        "field {:?} of {:?}", e.field, e
                    );
                }
            }
        }
    }
}

#[test]
fn bare_model_names_are_exact_or_prefixes_and_lead_to_one_route() {
    let mut v = contract_example();
    v["routes"][0]["models"] = json!(["gpt-4.1", "gpt-5*", "o4-mini"]);
    v["routes"][1]["models"] = json!(["claude-*", "anthropic.claude-sonnet-4"]);
    let spec = validate(&v).unwrap();
    assert_eq!(spec.routes[0].models, ["gpt-4.1", "gpt-5*", "o4-mini"]);
    // Stored and served back as given.
    let back: ProxySpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(back.routes[1].models, spec.routes[1].models);

    let refused = |models_0: Value, models_1: Value| {
        let mut v = contract_example();
        v["routes"][0]["models"] = models_0;
        v["routes"][1]["models"] = models_1;
        let e = err(&v);
        (e.code, e.field)
    };
    // The same name, or the same prefix, on two routes: which route serves is ambiguous.
    assert_eq!(
        refused(json!(["gpt-5*"]), json!(["x", "gpt-5*"])),
        (ErrorCode::RuleViolated, "routes[1].models[1]".to_owned())
    );
    assert_eq!(
        refused(json!(["gpt-4.1"]), json!(["gpt-4.1"])),
        (ErrorCode::RuleViolated, "routes[1].models[0]".to_owned())
    );
    // Listed twice on one route.
    assert_eq!(
        refused(json!(["a", "a"]), json!([])),
        (ErrorCode::RuleViolated, "routes[0].models[1]".to_owned())
    );
    // '*' alone (that is the fallback's job), '*' inside a name, spaces, empty.
    for bad in ["*", "gpt-*-mini", "gpt 5", "", "**"] {
        assert_eq!(
            refused(json!([bad]), json!([])),
            (ErrorCode::InvalidValue, "routes[0].models[0]".to_owned()),
            "{bad:?}"
        );
    }
    let too_many: Vec<String> = (0..=MODELS_PER_ROUTE).map(|i| format!("m{i}")).collect();
    assert_eq!(
        refused(json!(too_many), json!([])),
        (ErrorCode::LimitExceeded, "routes[0].models".to_owned())
    );
}
