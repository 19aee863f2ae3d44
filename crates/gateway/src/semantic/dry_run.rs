//! `POST {base}/_switchyard/route` `{"prompt": "..."}`: where would this prompt go, and why.
//! Nothing is sent upstream. The answer shows the guards' matches, every topic's score, the
//! chosen route (and its model) and the reason.

use axum::body::Body;
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Evaluation, Pick, Scored, decide};
use crate::error::ProxyError;
use crate::http::relay::{Ctx, NONE_VALUE};
use crate::routing::Decision;
use crate::table::CompiledProxy;

/// The path (after the proxy's base path) of the dry run.
pub(crate) const DRY_RUN_PATH: &str = "/_switchyard/route";

const BODY_LIMIT: usize = 1024 * 1024;

pub(crate) async fn handle(
    proxy: &CompiledProxy,
    body: Body,
    ctx: Ctx,
    cache: &crate::cache::CacheHandle,
    consumer: Option<&str>,
) -> Response {
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return ctx.reject_unrouted(&ProxyError::PayloadTooLarge { limit: BODY_LIMIT });
        }
    };
    let (prompt, model) = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => match m.get("prompt") {
            Some(Value::String(p)) => (
                p.clone(),
                m.get("model").and_then(Value::as_str).map(str::to_owned),
            ),
            _ => {
                return ctx.reject_unrouted(&ProxyError::InvalidJson(
                    "send {\"prompt\": \"...\"}".to_owned(),
                ));
            }
        },
        Ok(_) => {
            return ctx.reject_unrouted(&ProxyError::InvalidJson(
                "send {\"prompt\": \"...\"}".to_owned(),
            ));
        }
        Err(e) => return ctx.reject_unrouted(&ProxyError::InvalidJson(e.to_string())),
    };
    let prompt = Some(prompt.as_str()).filter(|p| !p.trim().is_empty());
    let evaluation = match &proxy.semantic {
        Some(s) => match s.evaluate(super::Screened::prompt(s, prompt)).await {
            Ok(e) => Some(e),
            Err(e) => return ctx.reject_unrouted(&e),
        },
        None => None,
    };
    let mut body = report(proxy, evaluation.as_ref());
    if let Some(c) = semantic_cache(
        proxy,
        evaluation.as_ref(),
        prompt,
        model.as_deref(),
        cache,
        consumer,
    )
    .await
    {
        body["cache"] = c;
    }
    ctx.respond_json(
        Bytes::from(body.to_string()),
        None,
        None,
        &NONE_VALUE,
        &NONE_VALUE,
    )
}

fn scores(list: &[Scored], proxy: &CompiledProxy, with_route: bool) -> Value {
    Value::Array(
        list.iter()
            .map(|s| {
                let mut v = json!({"topic": s.topic, "score": s.score});
                if with_route && let Some(r) = s.route.and_then(|r| proxy.routes.get(r)) {
                    v["route"] = json!(&*r.name);
                }
                v
            })
            .collect(),
    )
}

fn report(proxy: &CompiledProxy, ev: Option<&Evaluation>) -> Value {
    let strategy = match proxy.strategy {
        switchyard_model::RoutingStrategy::Model => "model",
        switchyard_model::RoutingStrategy::Semantic => "semantic",
    };
    let Some(ev) = ev else {
        return json!({
            "proxy": &*proxy.name,
            "strategy": strategy,
            "blocked": false,
            "matched_topics": [],
            "matched_patterns": [],
            "guard": null,
            "routing": null,
            "reason": "this proxy has no prompt guard and routes by the request's model",
        });
    };
    let blocked = ev.blocked().is_some();
    let guard = ev
        .guard_threshold
        .map(|t| json!({"threshold": t, "scores": scores(&ev.guard_scores, proxy, false)}));
    let (route, model, fallback, reason) = if blocked {
        let why = if ev.matched_patterns.is_empty() {
            format!(
                "blocked by the prompt guard: deny topic(s) {} reached the threshold",
                ev.matched_topics.join(", ")
            )
        } else {
            format!(
                "blocked by the regex guard: pattern(s) {}",
                ev.matched_patterns.join(", ")
            )
        };
        (None, None, false, why)
    } else if ev.pick == Pick::NotSemantic {
        (
            None,
            None,
            false,
            "not blocked; this proxy routes by the request's model".to_owned(),
        )
    } else {
        match decide(proxy, &ev.pick) {
            Decision::Route { choice, .. } => {
                let why = match &ev.pick {
                    Pick::Route { topic, score, .. } => format!(
                        "topic '{topic}' scored {score:.3}, at least the {}",
                        threshold_text(ev)
                    ),
                    _ => String::new(),
                };
                (
                    proxy.routes.get(choice.route).map(|r| r.name.to_string()),
                    Some(choice.model.to_string()),
                    false,
                    why,
                )
            }
            Decision::Fallback { choice, .. } => {
                let why = match &ev.pick {
                    Pick::BelowThreshold { best: Some(b) } => format!(
                        "the best topic '{}' scored {:.3}, below the {}: fallback route",
                        b.topic,
                        b.score,
                        threshold_text(ev)
                    ),
                    _ => "no user text to compare: fallback route".to_owned(),
                };
                (
                    proxy.routes.get(choice.route).map(|r| r.name.to_string()),
                    Some(choice.model.to_string()),
                    true,
                    why,
                )
            }
            Decision::Reject(e) => (None, None, false, e.message()),
        }
    };
    let routing = ev.route_threshold.map(|t| {
        json!({
            "threshold": t,
            "threshold_source": if ev.route_calibration.is_some() { "calibrated" } else { "configured" },
            "calibration": ev.route_calibration.map(|c| c.describe()),
            "scoring": ev.route_scoring.map(|s| s.as_str()),
            "scores": scores(&ev.route_scores, proxy, true),
            "route": route,
            "model": model,
            "fallback": fallback,
        })
    });
    json!({
        "proxy": &*proxy.name,
        "strategy": strategy,
        "encoder": ev.embedded_by,
        "blocked": blocked,
        "matched_topics": ev.matched_topics,
        "matched_patterns": ev.matched_patterns,
        "guard": guard,
        "routing": routing,
        "reason": reason,
    })
}

/// Whether the prompt, sent alone as a user message, would be a semantic cache hit today:
/// `{"semantic": {"threshold", "hit", "similarity"}}` (the nearest entry's similarity, if
/// any), for the route the prompt would take (`model` names it on a model-routing proxy).
async fn semantic_cache(
    proxy: &CompiledProxy,
    ev: Option<&Evaluation>,
    prompt: Option<&str>,
    model: Option<&str>,
    cache: &crate::cache::CacheHandle,
    consumer: Option<&str>,
) -> Option<Value> {
    let (threshold, _) = proxy.cache.as_ref()?.semantic?;
    let decision = match ev {
        Some(ev) if proxy.strategy == switchyard_model::RoutingStrategy::Semantic => {
            decide(proxy, &ev.pick)
        }
        _ => crate::routing::decide(proxy, model),
    };
    let choice = match decision {
        Decision::Route { choice, .. } | Decision::Fallback { choice, .. } => choice,
        Decision::Reject(_) => {
            return Some(
                json!({"semantic": {"threshold": threshold, "hit": false, "similarity": null, "reason": "no route would serve it"}}),
            );
        }
    };
    let route = proxy.routes.get(choice.route)?;
    let consumer = match proxy.cache.as_ref()?.scope {
        switchyard_model::CacheScope::Proxy => None,
        switchyard_model::CacheScope::Consumer => consumer,
    };
    let req = switchyard_llm::ChatRequest {
        messages: vec![switchyard_llm::Message::text_message(
            switchyard_llm::Role::User,
            prompt.unwrap_or_default(),
        )],
        ..switchyard_llm::ChatRequest::default()
    };
    let scope = crate::cache::key::KeyScope {
        proxy: proxy.id,
        route: &route.name,
        model: &choice.model,
        consumer,
    };
    let (rest, text) = crate::cache::key::semantic_key(scope, &req)
        .ok()
        .flatten()?;
    let vector = proxy.semantic.as_ref()?.embed(&text).await?.ok()?;
    let vector = crate::cache::semantic::Quantized::new(&vector)?;
    let nearest = cache.nearest(proxy.id, &rest, &vector);
    let similarity = nearest.as_ref().map(|(_, s)| *s);
    let four = |x: f32| (f64::from(x) * 1e4).round() / 1e4;
    Some(json!({"semantic": {
        "threshold": four(threshold),
        "hit": similarity.is_some_and(|s| s >= threshold),
        "similarity": similarity.map(four),
        "route": &*route.name,
        "model": &*choice.model,
    }}))
}

/// "threshold 0.412 (calibrated from 60 utterances)" or "configured threshold 0.600".
fn threshold_text(ev: &Evaluation) -> String {
    let t = ev.route_threshold.unwrap_or_default();
    match &ev.route_calibration {
        Some(c) => c.describe(),
        None => format!("configured threshold {t:.3}"),
    }
}

/// The response header carrying a decision's scores when the request asked with
/// `x-switchyard-debug: scores`.
pub(crate) static SCORES_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-switchyard-scores");

/// Whether the request asked for the scores header.
pub(crate) fn wants_scores(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all("x-switchyard-debug")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("scores"))
}

/// Adds the scores header to a response.
pub(crate) fn stamp_scores(response: &mut Response, value: Option<HeaderValue>) {
    if let Some(v) = value {
        response.headers_mut().insert(SCORES_HEADER.clone(), v);
    }
}
