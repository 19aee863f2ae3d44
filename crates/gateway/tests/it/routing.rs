//! Routing decisions, passthrough, errors and fallbacks over real HTTP.

use serde_json::{Value, json};
use switchyard_model::{Auth, Provider};
use switchyard_testkit::snapshots::{openai_route, proxy, route, with_target};
use switchyard_testkit::{Behavior, MOCK_API_KEY, MockConfig, MockOpenAi, reply_text};

use crate::common::*;

#[tokio::test]
async fn routes_by_model_and_rewrites_only_the_model() {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "support",
        "/support",
        vec![
            openai_route("openai", &a.base_url(), MOCK_API_KEY),
            with_target(
                openai_route("fixed", &b.base_url(), MOCK_API_KEY),
                "llama-3",
            ),
        ],
        None,
    )])
    .await;

    // Field order and unknown-to-the-gateway fields survive; only `model` changes.
    let raw = r#"{"messages":[{"role":"user","content":"Hi"}],"model":"openai/gpt-4.1","temperature":0.2,"stream":false}"#;
    let resp = client()
        .post(url(&gw, "/support/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-secret")
        .header("x-request-id", "req-42")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "openai", "gpt-4.1");
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(reply_of(resp).await, reply_text("gpt-4.1"));
    let seen = a.last_request().unwrap();
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        r#"{"messages":[{"role":"user","content":"Hi"}],"model":"gpt-4.1","temperature":0.2,"stream":false}"#
    );
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-mock-key"));
    assert_eq!(seen.header("x-request-id"), Some("req-42"));

    // The `/v1` prefix works too; the route's target model replaces the model.
    for model in ["fixed/whatever", "fixed"] {
        let resp = post(&gw, "/support/v1/chat/completions", &chat(Some(model))).await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_stamped(&resp, "fixed", "llama-3");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a fresh uuid: {id}");
        assert_eq!(reply_of(resp).await, reply_text("llama-3"));
        assert_eq!(
            b.last_request().unwrap().model().as_deref(),
            Some("llama-3")
        );
    }
    assert_eq!(a.request_count(), 1);

    // The Responses API.
    let resp = post(
        &gw,
        "/support/v1/responses",
        &json!({"model": "openai/gpt-4o-mini", "input": "Hello"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "openai", "gpt-4o-mini");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        reply_text("gpt-4o-mini")
    );
    assert_eq!(a.last_request().unwrap().path, "/v1/responses");

    // What the upstream refuses (here: a parameter it does not know) passes through as is.
    let resp = post(
        &gw,
        "/support/chat/completions",
        &json!({"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": "x"}], "bogus": 1}),
    )
    .await;
    assert_stamped(&resp, "openai", "gpt-4.1");
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("bogus"), "{err}");
}

#[tokio::test]
async fn errors_without_a_fallback_have_the_openai_shape() {
    let a = MockOpenAi::start().await.unwrap();
    let dead = format!("http://127.0.0.1:{}/v1", closed_port().await);
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            openai_route("main", &a.base_url(), MOCK_API_KEY),
            openai_route("dead", &dead, MOCK_API_KEY),
        ],
        None,
    )])
    .await;

    let resp = post(&gw, "/p/chat/completions", &chat(None)).await;
    assert_stamped(&resp, "none", "none");
    let (status, err) = error_of(resp).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("model_required"))
    );

    let resp = post(&gw, "/p/chat/completions", &chat(Some("nope/gpt-4o"))).await;
    assert_stamped(&resp, "none", "none");
    let (status, err) = error_of(resp).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let resp = client()
        .post(url(&gw, "/p/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_stamped(&resp, "none", "none");
    let (status, err) = error_of(resp).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_json")));

    let resp = get(&gw, "/p/chat/completions").await;
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(error_of(resp).await.0, 405);
    let resp = get(&gw, "/p/embeddings").await;
    assert_stamped(&resp, "none", "none");
    assert_eq!(error_of(resp).await.0, 404);
    let resp = post(&gw, "/elsewhere/chat/completions", &chat(Some("main/m"))).await;
    assert_stamped(&resp, "none", "none");
    assert_eq!(error_of(resp).await.0, 404);

    // 32 MiB is the limit.
    let big = vec![b' '; 32 * 1024 * 1024 + 1];
    let resp = client()
        .post(url(&gw, "/p/chat/completions"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 413);

    // Upstream errors: a connect error is a 502, a slow upstream a 504, an upstream 5xx or
    // 429 is passed through as is.
    let resp = post(&gw, "/p/chat/completions", &chat(Some("dead/m"))).await;
    assert_stamped(&resp, "dead", "m");
    let (status, err) = error_of(resp).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (502, Some("upstream_unavailable"))
    );

    a.set_behavior(Behavior::DelayHeaders(HEADER_TIMEOUT * 2));
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main/m"))).await;
    assert_stamped(&resp, "main", "m");
    let (status, err) = error_of(resp).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (504, Some("upstream_timeout"))
    );

    for status in [500u16, 429, 503] {
        let body = format!(
            r#"{{"error":{{"message":"upstream says {status}","type":"server_error","code":null}}}}"#
        );
        a.set_behavior(Behavior::Fail {
            status,
            body: body.clone(),
        });
        let resp = post(&gw, "/p/chat/completions", &chat(Some("main/m"))).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_stamped(&resp, "main", "m");
        assert_eq!(resp.text().await.unwrap(), body);
    }

    // A dropped connection is a 502 too.
    a.set_behavior(Behavior::DropConnection);
    let resp = post(&gw, "/p/chat/completions", &chat(Some("main/m"))).await;
    assert_eq!(error_of(resp).await.0, 502);
}

#[tokio::test]
async fn falls_back_on_no_model_unknown_route_and_failing_routes() {
    let primary = MockOpenAi::start().await.unwrap();
    let backup = MockOpenAi::start().await.unwrap();
    let dead = format!("http://127.0.0.1:{}/v1", closed_port().await);
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            openai_route("primary", &primary.base_url(), MOCK_API_KEY),
            openai_route("backup", &backup.base_url(), MOCK_API_KEY),
            openai_route("dead", &dead, MOCK_API_KEY),
        ],
        Some(("backup", Some("backup-model"))),
    )])
    .await;

    let check = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        assert_stamped(&resp, "backup", "backup-model");
        assert_eq!(reply_of(resp).await, reply_text("backup-model"));
    };
    check(post(&gw, "/p/chat/completions", &chat(None)).await).await;
    check(post(&gw, "/p/chat/completions", &chat(Some("nope/gpt-4o"))).await).await;
    check(post(&gw, "/p/chat/completions", &chat(Some("dead/gpt-4o"))).await).await;
    assert_eq!(backup.request_count(), 3);

    let failures = [
        Behavior::Fail {
            status: 500,
            body: "{}".into(),
        },
        Behavior::Fail {
            status: 429,
            body: "{}".into(),
        },
        Behavior::DropConnection,
        Behavior::DelayHeaders(HEADER_TIMEOUT * 2),
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        primary.set_behavior(failure.clone());
        check(post(&gw, "/p/chat/completions", &chat(Some("primary/gpt-4o"))).await).await;
        assert_eq!(primary.request_count(), i + 1, "{failure:?}");
        assert_eq!(
            backup.last_request().unwrap().model().as_deref(),
            Some("backup-model")
        );
    }

    // A 4xx is the client's to see: no fallback.
    primary.set_behavior(Behavior::Fail {
        status: 400,
        body: "{}".into(),
    });
    let before = backup.request_count();
    let resp = post(&gw, "/p/chat/completions", &chat(Some("primary/gpt-4o"))).await;
    assert_eq!(resp.status(), 400);
    assert_stamped(&resp, "primary", "gpt-4o");
    assert_eq!(backup.request_count(), before);

    // The fallback failing too: its error is the answer.
    backup.set_behavior(Behavior::Fail {
        status: 503,
        body: "{}".into(),
    });
    let resp = post(&gw, "/p/chat/completions", &chat(Some("dead/m"))).await;
    assert_eq!(resp.status(), 503);
    assert_stamped(&resp, "backup", "backup-model");

    let metrics = crate::common::metrics_handle().render();
    for expected in [
        "switchyard_gateway_fallbacks_total{proxy=\"p\",from_route=\"none\",reason=\"no_model\"}",
        "switchyard_gateway_fallbacks_total{proxy=\"p\",from_route=\"primary\",reason=\"status_429\"}",
        "switchyard_gateway_fallbacks_total{proxy=\"p\",from_route=\"dead\",reason=\"connect\"}",
        "switchyard_gateway_upstream_errors_total{proxy=\"p\",route=\"primary\",kind=\"timeout\"}",
        "switchyard_gateway_requests_total{proxy=\"p\",route=\"backup\",status=\"200\"}",
        "switchyard_gateway_request_duration_seconds",
        "switchyard_gateway_snapshot_version",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn fallback_without_target_model_gets_the_requested_model() {
    let primary = MockOpenAi::start().await.unwrap();
    let backup = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            openai_route("primary", &primary.base_url(), MOCK_API_KEY),
            openai_route("backup", &backup.base_url(), MOCK_API_KEY),
        ],
        Some(("backup", None)),
    )])
    .await;
    primary.set_behavior(Behavior::Fail {
        status: 502,
        body: "{}".into(),
    });
    let resp = post(&gw, "/p/chat/completions", &chat(Some("primary/gpt-4o"))).await;
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "backup", "gpt-4o");
    let resp = post(&gw, "/p/chat/completions", &chat(Some("gpt-4o-mini"))).await;
    assert_stamped(&resp, "backup", "gpt-4o-mini");
    // Nothing to ask the fallback for.
    let resp = post(&gw, "/p/chat/completions", &chat(None)).await;
    assert_eq!(error_of(resp).await.0, 400);
}

#[tokio::test]
async fn dynamic_keys_come_from_a_header_or_a_query_parameter() {
    let a = MockOpenAi::start_with(MockConfig {
        api_key: Some("sk-user-1".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dynamic = |name: &str, expression: &str| {
        route(
            name,
            Provider::OpenAiCompatible,
            &a.base_url(),
            Auth::Dynamic {
                expression: expression.into(),
            },
        )
    };
    let (_cp, gw, _cache) = serving(vec![
        proxy(
            "h",
            "/h",
            vec![dynamic("r", "#[attributes.headers['x-upstream-key']]")],
            None,
        ),
        proxy(
            "q",
            "/q",
            vec![dynamic("r", "attributes.queryParams['key']")],
            None,
        ),
    ])
    .await;

    let resp = client()
        .post(url(&gw, "/h/chat/completions"))
        .header("x-upstream-key", "sk-user-1")
        .header("authorization", "Bearer not-for-upstream")
        .json(&chat(Some("r/m")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = a.last_request().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-user-1"));
    assert_eq!(seen.header("x-upstream-key"), None);

    let resp = post(&gw, "/h/chat/completions", &chat(Some("r/m"))).await;
    assert_stamped(&resp, "r", "m");
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 401);
    assert!(
        err["message"].as_str().unwrap().contains("x-upstream-key"),
        "{err}"
    );

    let resp = client()
        .post(url(&gw, "/q/chat/completions?key=sk-user-1"))
        .json(&chat(Some("r/m")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(a.last_request().unwrap().query, None);

    let resp = post(&gw, "/q/chat/completions", &chat(Some("r/m"))).await;
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 401);
    assert!(err["message"].as_str().unwrap().contains("'key'"), "{err}");

    // A wrong key is the upstream's 401, passed through.
    let resp = client()
        .post(url(&gw, "/h/chat/completions"))
        .header("x-upstream-key", "sk-wrong")
        .json(&chat(Some("r/m")))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(resp).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
}

#[tokio::test]
async fn models_lists_what_each_route_serves() {
    let a = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            openai_route("openai", &a.base_url(), MOCK_API_KEY),
            with_target(
                openai_route("fixed", &a.base_url(), MOCK_API_KEY),
                "llama-3",
            ),
        ],
        None,
    )])
    .await;
    for path in ["/p/models", "/p/v1/models"] {
        let resp = get(&gw, path).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-route"], "openai,fixed");
        assert_eq!(resp.headers()["x-switchyard-model"], "none");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(
            model_ids(&body),
            ["openai/gpt-4o-mini", "openai/gpt-4.1", "fixed/llama-3"]
        );
    }
    assert_eq!(a.last_request().unwrap().path, "/v1/models");
    let resp = client().post(url(&gw, "/p/models")).send().await.unwrap();
    assert_eq!(error_of(resp).await.0, 405);
}

/// Bare model names (a route's `models`) reach their route with the model as sent, and
/// `GET /models` lists them beside the `<route>/<model>` ids.
#[tokio::test]
async fn bare_model_names_reach_their_route_and_are_listed() {
    let a = MockOpenAi::start().await.unwrap();
    let b = MockOpenAi::start().await.unwrap();
    let mut openai = openai_route("openai", &a.base_url(), MOCK_API_KEY);
    openai.models = vec!["gpt-4*".into(), "o4-mini".into()];
    let mut fixed = with_target(
        openai_route("fixed", &b.base_url(), MOCK_API_KEY),
        "llama-3",
    );
    fixed.models = vec!["llama*".into()];
    let (_cp, gw, _cache) = serving(vec![proxy("p", "/p", vec![openai, fixed], None)]).await;

    for (model, route, upstream) in [
        ("gpt-4.1", "openai", "gpt-4.1"),
        ("o4-mini", "openai", "o4-mini"),
        ("llama-3.3-70b", "fixed", "llama-3"),
        ("openai/llama-9", "openai", "llama-9"),
    ] {
        let resp = post(&gw, "/p/v1/chat/completions", &chat(Some(model))).await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_stamped(&resp, route, upstream);
        assert_eq!(reply_of(resp).await, reply_text(upstream), "{model}");
    }
    let seen: Value = serde_json::from_slice(&a.last_request().unwrap().body).unwrap();
    assert_eq!(seen["model"], "llama-9");
    // Not listed, no fallback: the unknown-route error, as before.
    let resp = post(&gw, "/p/v1/chat/completions", &chat(Some("claude-4"))).await;
    assert_eq!(error_of(resp).await.0, 404);

    let resp = get(&gw, "/p/v1/models").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        model_ids(&body),
        [
            "openai/gpt-4o-mini",
            "openai/gpt-4.1",
            "fixed/llama-3",
            // Bare: the exact name, the upstream's models its prefix sends there, and the
            // target model of a route whose prefix covers it.
            "o4-mini",
            "gpt-4o-mini",
            "gpt-4.1",
            "llama-3",
        ]
    );
}

/// The ids of a `GET /models` answer, in order.
fn model_ids(body: &Value) -> Vec<&str> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect()
}
