//! Provider behaviours outside the conformance table: fallbacks across providers, parameters
//! a provider cannot honour, Bedrock model id forms and dynamic AWS keys, Gemini paths and
//! keys from the request.

use serde_json::{Value, json};
use switchyard_model::{Auth, Format, Provider, Secret};
use switchyard_testkit::snapshots::{openai_route, proxy, route, with_target};
use switchyard_testkit::{
    BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY, Behavior, GEMINI_API_KEY, MOCK_API_KEY,
    MockBedrock, MockGemini, MockOpenAi, reply_text,
};

use crate::common::*;

fn bedrock_route(mock: &MockBedrock, name: &str, auth: Auth) -> switchyard_model::Route {
    let mut r = route(name, Provider::Bedrock, &mock.endpoint(), auth);
    r.region = Some(BEDROCK_REGION.into());
    r
}

fn static_aws() -> Auth {
    Auth::StaticAws {
        access_key_id: Secret::new(BEDROCK_ACCESS_KEY),
        secret_access_key: Secret::new(BEDROCK_SECRET_KEY),
        session_token: None,
    }
}

#[tokio::test]
async fn a_failing_translated_route_falls_back_to_another_provider() {
    let bedrock = MockBedrock::start().await.unwrap();
    let openai = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            bedrock_route(&bedrock, "claude", static_aws()),
            openai_route("openai", &openai.base_url(), MOCK_API_KEY),
        ],
        Some(("openai", Some("gpt-4o-mini"))),
    )])
    .await;
    bedrock.set_behavior(Behavior::Reject {
        status: 503,
        code: "ServiceUnavailableException".into(),
        message: "Bedrock is unavailable.".into(),
    });
    for stream in [false, true] {
        let mut body = chat(Some("claude/anthropic.claude-3-haiku-20240307-v1:0"));
        body["stream"] = json!(stream);
        let resp = post(&gw, "/p/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        assert_stamped(&resp, "openai", "gpt-4o-mini");
        let text = resp.text().await.unwrap();
        assert!(text.contains("gpt-4o-mini."), "{text}");
    }
    assert_eq!(bedrock.request_count(), 2);

    // Without a fallback the upstream's 503 reaches the client in the OpenAI shape.
    let (_cp2, gw2, _cache2) = serving(vec![proxy(
        "q",
        "/q",
        vec![bedrock_route(&bedrock, "claude", static_aws())],
        None,
    )])
    .await;
    let (status, err) = error_of(
        post(
            &gw2,
            "/q/chat/completions",
            &chat(Some("claude/anthropic.claude-3-haiku-20240307-v1:0")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(err["message"], "Bedrock is unavailable.");
    assert_eq!(err["code"], "ServiceUnavailableException");
}

#[tokio::test]
async fn parameters_a_provider_cannot_honour_are_refused_naming_them() {
    let bedrock = MockBedrock::start().await.unwrap();
    let gemini = MockGemini::start().await.unwrap();
    let openai = MockOpenAi::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            with_target(
                bedrock_route(&bedrock, "claude", static_aws()),
                "anthropic.claude-3-haiku-20240307-v1:0",
            ),
            with_target(
                route(
                    "gemini",
                    Provider::Gemini,
                    &gemini.base_url(),
                    Auth::Static {
                        api_key: Secret::new(GEMINI_API_KEY),
                    },
                ),
                "gemini-2.5-flash",
            ),
            openai_route("openai", &openai.base_url(), MOCK_API_KEY),
        ],
        // A fallback never serves a request the client got wrong.
        Some(("openai", Some("gpt-4o"))),
    )])
    .await;
    let cases = [
        ("claude", json!({"seed": 7}), "seed"),
        ("claude", json!({"logprobs": true}), "logprobs"),
        ("gemini", json!({"n": 2}), "n"),
        (
            "gemini",
            json!({"tools": [{"type": "web_search"}]}),
            "tools",
        ),
    ];
    for (route, extra, param) in cases {
        let mut body = chat(Some(&format!("{route}/x")));
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = post(&gw, "/p/chat/completions", &body).await;
        assert_stamped(
            &resp,
            route,
            if route == "claude" {
                "anthropic.claude-3-haiku-20240307-v1:0"
            } else {
                "gemini-2.5-flash"
            },
        );
        let (status, err) = error_of(resp).await;
        assert_eq!(status, 400, "{body} → {err}");
        assert_eq!(err["code"], "unsupported_parameter", "{err}");
        assert!(err["param"].as_str().unwrap().starts_with(param), "{err}");
        assert!(err["message"].as_str().unwrap().contains(param), "{err}");
    }
    assert_eq!(
        bedrock.request_count() + gemini.request_count() + openai.request_count(),
        0
    );

    // The passthrough route serves what translation cannot.
    let mut body = chat(Some("openai/gpt-4o"));
    body["n"] = json!(2);
    assert_eq!(post(&gw, "/p/chat/completions", &body).await.status(), 200);
    // A body that is not what the API documents is the client's 400 on the translated path.
    let mut body = chat(Some("claude/x"));
    body["messages"] = json!("hello");
    let (status, err) = error_of(post(&gw, "/p/chat/completions", &body).await).await;
    assert_eq!(status, 400, "{err}");
}

#[tokio::test]
async fn bedrock_model_ids_and_dynamic_aws_keys() {
    let bedrock = MockBedrock::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![
            bedrock_route(
                &bedrock,
                "claude",
                Auth::Dynamic {
                    expression: "#[attributes.headers['x-aws-key']]".into(),
                },
            ),
            bedrock_route(
                &bedrock,
                "split",
                Auth::DynamicAws {
                    access_key_id: "attributes.headers['x-aws-id']".into(),
                    secret_access_key: "attributes.headers['x-aws-secret']".into(),
                    session_token: None,
                },
            ),
        ],
        None,
    )])
    .await;
    let combined = format!("{BEDROCK_ACCESS_KEY}:{BEDROCK_SECRET_KEY}");
    for (model, id) in [
        (
            "claude/anthropic/anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (
            "claude/anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (
            "claude/anthropic/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
    ] {
        let resp = client()
            .post(url(&gw, "/p/chat/completions"))
            .header("x-aws-key", &combined)
            .json(&chat(Some(model)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(reply_of(resp).await, reply_text(id));
        let seen = bedrock.last_request().unwrap();
        assert_eq!(
            seen.path,
            format!("/model/{}/converse", id.replace(':', "%3A"))
        );
        // The client's selector header never reaches the upstream.
        assert!(seen.header("x-aws-key").is_none());
    }
    // Missing: 401 naming the header; malformed: 401; a wrong secret: AWS's 403.
    let (status, err) = error_of(
        post(
            &gw,
            "/p/chat/completions",
            &chat(Some("claude/anthropic.claude-3-haiku-20240307-v1:0")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        err["message"].as_str().unwrap().contains("x-aws-key"),
        "{err}"
    );
    for (value, expected) in [("no-colon", 401), ("AKIAMOCKACCESSKEY:wrong", 403)] {
        let resp = client()
            .post(url(&gw, "/p/chat/completions"))
            .header("x-aws-key", value)
            .json(&chat(Some("claude/anthropic.claude-3-haiku-20240307-v1:0")))
            .send()
            .await
            .unwrap();
        let (status, err) = error_of(resp).await;
        assert_eq!(status, expected, "{err}");
        assert!(!err["message"].as_str().unwrap().contains("wrong"), "{err}");
    }
    let resp = client()
        .post(url(&gw, "/p/chat/completions"))
        .header("x-aws-id", BEDROCK_ACCESS_KEY)
        .header("x-aws-secret", BEDROCK_SECRET_KEY)
        .json(&chat(Some("split/anthropic.claude-3-haiku-20240307-v1:0")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn gemini_proxies_pass_the_body_through() {
    let gemini = MockGemini::start().await.unwrap();
    let mut p = proxy(
        "g",
        "/g",
        vec![
            route(
                "gemini",
                Provider::Gemini,
                &gemini.base_url(),
                Auth::Dynamic {
                    expression: "attributes.headers['x-goog-api-key']".into(),
                },
            ),
            with_target(
                route(
                    "flash",
                    Provider::Gemini,
                    &gemini.base_url(),
                    Auth::Static {
                        api_key: Secret::new(GEMINI_API_KEY),
                    },
                ),
                "gemini-2.5-flash",
            ),
        ],
        None,
    );
    p.spec.format = Format::Gemini;
    let (_cp, gw, _cache) = serving(vec![p]).await;
    // Fields the gateway does not know (safetySettings, snake_case names) reach Gemini as sent.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "generationConfig": {"temperature": 0.3}});
    let send = |path: &str, key: Option<&str>| {
        let mut r = client().post(url(&gw, path)).json(&body);
        if let Some(k) = key {
            r = r.header("x-goog-api-key", k);
        }
        r.send()
    };
    for path in [
        "/g/v1beta/models/gemini/gemini-2.5-pro:generateContent",
        "/g/v1/models/gemini%2Fgemini-2.5-pro:generateContent",
        "/g/models/gemini/gemini-2.5-pro:generateContent",
    ] {
        let resp = send(path, Some(GEMINI_API_KEY)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_stamped(&resp, "gemini", "gemini-2.5-pro");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"],
            reply_text("gemini-2.5-pro")
        );
        let seen = gemini.last_request().unwrap();
        assert_eq!(seen.path, "/v1beta/models/gemini-2.5-pro:generateContent");
        assert_eq!(seen.json(), body);
    }
    // The route's target model wins; its static key is used.
    let resp = send("/g/v1beta/models/flash:generateContent", None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_stamped(&resp, "flash", "gemini-2.5-flash");

    // Errors in Gemini's shape: no key, unknown route, a stream without alt=sse, a wrong path.
    for (path, key, status) in [
        (
            "/g/v1beta/models/gemini/gemini-2.5-pro:generateContent",
            None,
            401,
        ),
        (
            "/g/v1beta/models/nope/x:generateContent",
            Some(GEMINI_API_KEY),
            404,
        ),
        (
            "/g/v1beta/models/gemini/gemini-2.5-pro:streamGenerateContent",
            Some(GEMINI_API_KEY),
            400,
        ),
        (
            "/g/v1beta/models/gemini/gemini-2.5-pro:countTokens",
            Some(GEMINI_API_KEY),
            404,
        ),
        ("/g/chat/completions", Some(GEMINI_API_KEY), 404),
    ] {
        let resp = send(path, key).await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], status, "{v}");
        assert!(v["error"]["status"].is_string(), "{v}");
    }
    // Gemini's own refusal comes back as Gemini said it.
    let resp = send(
        "/g/v1beta/models/gemini/gemini-9:generateContent",
        Some(GEMINI_API_KEY),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("models/gemini-9"),
        "{v}"
    );
}

/// JSON mode on Bedrock: emulated with a forced tool; the client gets the JSON as the message
/// content (and as text deltas when streaming), with a `stop` finish and no tool calls.
#[tokio::test]
async fn json_mode_on_bedrock_answers_json_content() {
    let bedrock = MockBedrock::start().await.unwrap();
    let (_cp, gw, _cache) = serving(vec![proxy(
        "p",
        "/p",
        vec![bedrock_route(&bedrock, "claude", static_aws())],
        None,
    )])
    .await;
    let mut body = chat(Some("claude/anthropic.claude-3-haiku-20240307-v1:0"));
    body["response_format"] = json!({"type": "json_object"});
    let resp = post(&gw, "/p/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let message = &answer["choices"][0]["message"];
    assert!(
        message.get("tool_calls").is_none_or(Value::is_null),
        "{answer}"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let content: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"city": "Paris", "unit": "celsius"}));
    // What Bedrock was asked: the gateway's forced tool.
    let asked = bedrock.last_request().unwrap().json();
    assert_eq!(
        asked["toolConfig"]["toolChoice"]["tool"]["name"],
        "switchyard_json_answer"
    );

    body["stream"] = json!(true);
    let resp = post(&gw, "/p/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let mut content = String::new();
    let mut finish = None;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        assert!(choice["delta"].get("tool_calls").is_none(), "{line}");
        if let Some(piece) = choice["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    let content: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(content, json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(finish.as_deref(), Some("stop"));
}
