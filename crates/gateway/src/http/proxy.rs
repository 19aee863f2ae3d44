//! The proxy handler: every path that is not reserved.
//!
//! Load the routing table once, find the proxy by base path, match the OpenAI endpoint,
//! decide the route, forward, fall back when the chosen route fails before anything reached
//! the client, and relay the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};
use switchyard_model::{Format, RoutingStrategy};
use tracing::{Instrument, field, info, info_span, warn};

use super::AppState;
use super::relay::{Ctx, NONE_VALUE, model_header, request_id};
use crate::error::{ProxyError, error_chain};
use crate::providers::openai::Inbound;
use crate::providers::{Operation, Upstream};
use crate::routing::{self, Choice, Decision, FallbackReason};
use crate::semantic::prompt::{BodyKind, last_user_text};
use crate::semantic::{self, dry_run};
use crate::table::{CompiledProxy, CompiledRoute};
use crate::telemetry::{self, Label, NONE};

/// The largest request body the gateway accepts.
pub(crate) const BODY_LIMIT: usize = 32 * 1024 * 1024;

pub(crate) async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let start = Instant::now();
    let request_id = request_id(req.headers());
    let span = info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = %req.method(),
        path = req.uri().path(),
        proxy = field::Empty,
        route = field::Empty,
        model = field::Empty,
        status = field::Empty,
        latency_ms = field::Empty,
    );
    let ctx = Ctx {
        start,
        request_id,
        span: span.clone(),
        proxy: Label::Static(NONE),
        route: Label::Static(NONE),
    };
    dispatch(&state, req, ctx).instrument(span).await
}

async fn dispatch(state: &AppState, req: Request, mut ctx: Ctx) -> Response {
    let Some(table) = state.table.load_full() else {
        return ctx.reject_unrouted(&ProxyError::NotReady);
    };
    let Some((proxy, rest)) = table.lookup(req.uri().path()) else {
        return ctx.reject_unrouted(&ProxyError::NoProxy);
    };
    let proxy = Arc::clone(proxy);
    ctx.span.record("proxy", &*proxy.name);
    ctx.proxy = Label::Shared(Arc::clone(&proxy.name));
    if proxy.format == Format::Gemini {
        return ctx.reject_unrouted(&ProxyError::NotImplemented(
            "serving gemini-format proxies (this gateway version serves openai-format proxies only)"
                .to_owned(),
        ));
    }
    if rest == dry_run::DRY_RUN_PATH {
        if req.method() != Method::POST {
            return ctx.reject_unrouted(&ProxyError::MethodNotAllowed { allow: "POST" });
        }
        return dry_run::handle(&proxy, req.into_body(), ctx).await;
    }
    let Some(op) = endpoint(rest) else {
        return ctx.reject_unrouted(&ProxyError::UnknownEndpoint);
    };
    let (method, allow) = match op {
        Operation::Models => (Method::GET, "GET"),
        _ => (Method::POST, "POST"),
    };
    if req.method() != method {
        return ctx.reject_unrouted(&ProxyError::MethodNotAllowed { allow });
    }
    match op {
        Operation::Models => list_models(state, &proxy, req, ctx).await,
        Operation::ChatCompletions | Operation::Responses => {
            let mut scores = None;
            let mut response = complete(state, &proxy, op, req, ctx, &mut scores).await;
            dry_run::stamp_scores(&mut response, scores);
            response
        }
    }
}

/// The OpenAI endpoint a path (after the base path) names, with or without `/v1`.
fn endpoint(rest: &str) -> Option<Operation> {
    let rest = rest.strip_prefix("/v1").unwrap_or(rest);
    match rest {
        "/chat/completions" => Some(Operation::ChatCompletions),
        "/responses" => Some(Operation::Responses),
        "/models" => Some(Operation::Models),
        _ => None,
    }
}

async fn complete(
    state: &AppState,
    proxy: &CompiledProxy,
    op: Operation,
    req: Request,
    mut ctx: Ctx,
    scores: &mut Option<HeaderValue>,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, &parts.headers).await {
        Ok(b) => b,
        Err(e) => return ctx.reject_unrouted(&e),
    };
    let mut json: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return ctx.reject_unrouted(&ProxyError::InvalidJson(e.to_string())),
    };
    drop(bytes);
    let asked = match json.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return ctx.reject_unrouted(&ProxyError::MissingModel(
                "'model' must be a string such as \"<route>/<model>\"".to_owned(),
            ));
        }
    };
    let request_id = ctx.request_id.clone();
    let inbound = Inbound {
        headers: &parts.headers,
        query: parts.uri.query(),
        request_id: &request_id,
    };
    // Prompt guards, then semantic routing: one embedding of the last user message.
    let evaluation = match &proxy.semantic {
        None => None,
        Some(semantic) => {
            let kind = match op {
                Operation::Responses => BodyKind::Responses,
                _ => BodyKind::Chat,
            };
            let prompt = last_user_text(kind, &json);
            match semantic.evaluate(prompt.as_deref()).await {
                Ok(ev) => {
                    if dry_run::wants_scores(&parts.headers) {
                        *scores = ev.scores_header();
                    }
                    Some(ev)
                }
                Err(e) => return ctx.reject_unrouted(&e),
            }
        }
    };
    if let Some(blocked) = evaluation.as_ref().and_then(|ev| ev.blocked()) {
        info!(parent: &ctx.span, "prompt blocked by the prompt guard");
        return ctx.reject_unrouted(&blocked);
    }
    let decision = match &evaluation {
        Some(ev) if proxy.strategy == RoutingStrategy::Semantic => {
            semantic::decide(proxy, &ev.pick)
        }
        _ => routing::decide(proxy, asked.as_deref()),
    };
    let (first, fallback) = match decision {
        Decision::Reject(e) => return ctx.reject_unrouted(&e),
        Decision::Route { choice, fallback } => (choice, fallback),
        Decision::Fallback { choice, reason } => {
            telemetry::fallback(&ctx.proxy, &Label::Static(NONE), reason.as_str());
            info!(parent: &ctx.span, reason = reason.as_str(), "no route named: using the fallback route");
            (choice, None)
        }
    };

    let route = Arc::clone(&proxy.routes[first.route]);
    let model = ctx.choose(&route, &first);
    let failure = match attempt(state, &route, op, &first, &mut json, &inbound).await {
        Attempt::Served(resp) => return ctx.relay(resp, &route.name_header, &model),
        Attempt::Refused(e) => return ctx.reject(&e, &route.name_header, &model),
        Attempt::Failed(failure) => failure,
    };
    telemetry::upstream_error(&ctx.proxy, &ctx.route, failure.reason.as_str());
    warn!(parent: &ctx.span, route = &*route.name, reason = failure.reason.as_str(), error = %failure.detail, "upstream attempt failed");
    let Some(second) = fallback else {
        return finish_failure(&ctx, failure, &route.name_header, &model);
    };

    telemetry::fallback(&ctx.proxy, &ctx.route, failure.reason.as_str());
    drop(failure);
    let route = Arc::clone(&proxy.routes[second.route]);
    let model = ctx.choose(&route, &second);
    info!(parent: &ctx.span, route = &*route.name, "falling back");
    match attempt(state, &route, op, &second, &mut json, &inbound).await {
        Attempt::Served(resp) => ctx.relay(resp, &route.name_header, &model),
        Attempt::Refused(e) => ctx.reject(&e, &route.name_header, &model),
        Attempt::Failed(failure) => {
            telemetry::upstream_error(&ctx.proxy, &ctx.route, failure.reason.as_str());
            warn!(parent: &ctx.span, route = &*route.name, reason = failure.reason.as_str(), error = %failure.detail, "fallback attempt failed");
            finish_failure(&ctx, failure, &route.name_header, &model)
        }
    }
}

impl Ctx {
    /// Records the route about to be tried; returns its `x-switchyard-model` value.
    fn choose(&mut self, route: &CompiledRoute, choice: &Choice) -> HeaderValue {
        self.route = Label::Shared(Arc::clone(&route.name));
        self.span.record("route", &*route.name);
        self.span.record("model", &*choice.model);
        model_header(&choice.model)
    }
}

/// A failed attempt with no fallback left: the upstream's own answer if it gave one (5xx or
/// 429, passed through as is), else the gateway's error.
fn finish_failure(
    ctx: &Ctx,
    failure: Failure,
    route: &HeaderValue,
    model: &HeaderValue,
) -> Response {
    match failure.response {
        Some(resp) => ctx.relay(resp, route, model),
        None => {
            let err = match failure.reason {
                FallbackReason::Timeout => ProxyError::UpstreamTimeout,
                _ => ProxyError::UpstreamUnavailable(failure.detail),
            };
            ctx.reject(&err, route, model)
        }
    }
}

enum Attempt {
    /// An answer to relay (2xx, or a 4xx that is the client's to see).
    Served(reqwest::Response),
    /// The gateway refused before calling the upstream (no fallback applies).
    Refused(ProxyError),
    /// The upstream failed before anything reached the client: the fallback may serve.
    Failed(Failure),
}

struct Failure {
    reason: FallbackReason,
    detail: String,
    response: Option<reqwest::Response>,
}

async fn attempt(
    state: &AppState,
    route: &CompiledRoute,
    op: Operation,
    choice: &Choice,
    json: &mut Map<String, Value>,
    inbound: &Inbound<'_>,
) -> Attempt {
    let upstream = match &route.upstream {
        Upstream::OpenAi(u) => u,
        Upstream::NotYet(provider) => {
            return Attempt::Refused(ProxyError::NotImplemented(format!(
                "the '{provider}' provider (route '{}')",
                route.name
            )));
        }
    };
    json.insert("model".to_owned(), Value::String(choice.model.to_string()));
    let body = match serde_json::to_vec(json) {
        Ok(b) => Bytes::from(b),
        Err(e) => return Attempt::Refused(ProxyError::InvalidJson(e.to_string())),
    };
    let request = match upstream.request(&state.client, op, inbound, Some(body)) {
        Ok(r) => r,
        Err(e) => return Attempt::Refused(e),
    };
    match tokio::time::timeout(state.header_timeout, request.send()).await {
        Err(_) => Attempt::Failed(Failure {
            reason: FallbackReason::Timeout,
            detail: format!(
                "no response headers within {} ms",
                state.header_timeout.as_millis()
            ),
            response: None,
        }),
        Ok(Err(e)) => Attempt::Failed(Failure {
            reason: if e.is_connect() {
                FallbackReason::Connect
            } else if e.is_timeout() {
                FallbackReason::Timeout
            } else {
                FallbackReason::Connection
            },
            detail: error_chain(&e),
            response: None,
        }),
        Ok(Ok(resp)) => {
            let status = resp.status();
            let reason = if status == StatusCode::TOO_MANY_REQUESTS {
                FallbackReason::Status429
            } else if status.is_server_error() {
                FallbackReason::Status5xx
            } else {
                return Attempt::Served(resp);
            };
            Attempt::Failed(Failure {
                reason,
                detail: format!("upstream answered {status}"),
                response: Some(resp),
            })
        }
    }
}

/// Reads the whole request body, refusing more than [`BODY_LIMIT`] bytes with 413.
async fn read_body(body: Body, headers: &HeaderMap) -> Result<Bytes, ProxyError> {
    let too_large = ProxyError::PayloadTooLarge { limit: BODY_LIMIT };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_LIMIT as u64) {
        return Err(too_large);
    }
    match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
        Err(e) => Err(ProxyError::BodyRead(e.to_string())),
    }
}

/// `GET {base}/models`: the models this proxy routes to, as `<route>/<model>` ids. A route
/// with a target model lists that one; an OpenAI-compatible route without one lists its
/// upstream's models. Routes that cannot answer are left out.
async fn list_models(state: &AppState, proxy: &CompiledProxy, req: Request, ctx: Ctx) -> Response {
    let (parts, _) = req.into_parts();
    let inbound = Inbound {
        headers: &parts.headers,
        query: parts.uri.query(),
        request_id: &ctx.request_id,
    };
    let lookups = proxy.routes.iter().map(|route| {
        let inbound = &inbound;
        async move {
            let ids = match (&route.target_model, &route.upstream) {
                (Some(target), _) => Ok(vec![target.to_string()]),
                (None, Upstream::OpenAi(_)) => upstream_models(state, route, inbound).await,
                (None, Upstream::NotYet(_)) => Ok(vec![]),
            };
            (route, ids)
        }
    });
    let results = futures::future::join_all(lookups).await;
    let mut data = Vec::new();
    let mut served_by: Vec<&str> = Vec::new();
    let mut failures = Vec::new();
    for (route, ids) in results {
        match ids {
            Ok(ids) => {
                if !ids.is_empty() {
                    served_by.push(&route.name);
                }
                data.extend(ids.into_iter().map(|id| {
                    serde_json::json!({
                        "id": format!("{}/{id}", route.name),
                        "object": "model",
                        "created": 0,
                        "owned_by": route.provider.id(),
                    })
                }));
            }
            Err(e) => {
                warn!(parent: &ctx.span, route = &*route.name, error = %e, "cannot list the route's models");
                failures.push(format!("route '{}': {e}", route.name));
            }
        }
    }
    if data.is_empty() && !failures.is_empty() {
        return ctx.reject_unrouted(&ProxyError::UpstreamUnavailable(failures.join("; ")));
    }
    let route_header = if served_by.is_empty() {
        NONE_VALUE.clone()
    } else {
        HeaderValue::from_str(&served_by.join(",")).unwrap_or_else(|_| NONE_VALUE.clone())
    };
    let body = serde_json::json!({"object": "list", "data": data});
    ctx.respond_json(Bytes::from(body.to_string()), &route_header)
}

async fn upstream_models(
    state: &AppState,
    route: &CompiledRoute,
    inbound: &Inbound<'_>,
) -> Result<Vec<String>, String> {
    let Upstream::OpenAi(upstream) = &route.upstream else {
        return Ok(vec![]);
    };
    let request = upstream
        .request(&state.client, Operation::Models, inbound, None)
        .map_err(|e| e.message())?;
    let fetch = async {
        let resp = request.send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("upstream answered {status}"));
        }
        let body = resp.bytes().await.map_err(|e| error_chain(&e))?;
        Ok::<_, String>(body)
    };
    let body = tokio::time::timeout(state.header_timeout, fetch)
        .await
        .map_err(|_| "timed out".to_owned())??;
    let list: Value = serde_json::from_slice(&body).map_err(|e| format!("bad model list: {e}"))?;
    let ids = list
        .get("data")
        .and_then(Value::as_array)
        .ok_or("bad model list: no 'data' array")?
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_or_without_a_length() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("33554433"));
        let err = read_body(Body::empty(), &headers).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);

        // Chunked: counted as it arrives.
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let chunks = (0..33).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_body(body, &HeaderMap::new()).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let ok = read_body(Body::from("{}"), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(ok, "{}");
    }

    #[test]
    fn endpoints_with_and_without_v1() {
        assert_eq!(
            endpoint("/chat/completions"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(
            endpoint("/v1/chat/completions"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(endpoint("/responses"), Some(Operation::Responses));
        assert_eq!(endpoint("/v1/models"), Some(Operation::Models));
        for bad in [
            "",
            "/",
            "/v1",
            "/v1/",
            "/v1x/models",
            "/chat",
            "/models/x",
            "/v1/v1/models",
        ] {
            assert_eq!(endpoint(bad), None, "{bad}");
        }
    }
}
