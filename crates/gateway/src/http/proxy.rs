//! The proxy handler: every path that is not reserved.
//!
//! One request goes through four stages, each in its own place:
//!
//! 1. **inbound** ([`super::inbound`]): load the routing table once, find the proxy by base
//!    path, the operation by the rest of the path (per the proxy's format), read the body and
//!    take what routing needs (model, stream); the canonical request is parsed on demand;
//! 2. **route decision** ([`crate::routing`]): which route and model, and the fallback;
//! 3. **upstream call** ([`super::upstream`]): passthrough or translated request, sent with a
//!    header timeout; a failure before anything reached the client (connect error, timeout,
//!    5xx, 429) goes to the fallback once;
//! 4. **response** ([`respond`], [`super::relay`], [`super::filter`]): relayed or translated
//!    back into the client's format, streams chunk by chunk; usage recorded at the end.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use switchyard_llm::{ChatRequest, InboundFormat, Target};
use switchyard_model::RoutingStrategy;
use tracing::{Instrument, Span, field, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::AppState;
use super::client::UpstreamResponse;
use super::filter::BodyFilter;
use super::inbound::{Endpoint, InboundRequest};
use super::relay::{Ctx, NONE_VALUE, Served, model_header, request_id};
use super::upstream::{Call, prepare};
use crate::cache::{self, ProxyCache};
use crate::error::{ProxyError, error_chain};
use crate::governance::{self, CompiledConsumer};
use crate::routing::{self, Choice, Decision, FallbackReason};
use crate::semantic::{self, dry_run};
use crate::table::{CompiledProxy, CompiledRoute};
use crate::telemetry::{self, Label, NONE};
use crate::traces;

/// The most of an upstream error body read to translate it.
const ERROR_BODY_LIMIT: usize = 1024 * 1024;
/// The most of a translated (non-streamed) upstream answer read.
const ANSWER_BODY_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let start = Instant::now();
    let request_id = request_id(req.headers());
    let span = info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = %req.method(),
        path = req.uri().path(),
        proxy = field::Empty,
        consumer = field::Empty,
        route = field::Empty,
        model = field::Empty,
        status = field::Empty,
        latency_ms = field::Empty,
        otel.name = field::Empty,
        otel.kind = field::Empty,
    );
    if state.traces {
        span.record("otel.kind", "server");
        traces::continue_trace(&span, req.headers());
    }
    let ctx = Ctx {
        start,
        request_id,
        span: span.clone(),
        proxy: Label::Static(NONE),
        route: Label::Static(NONE),
        format: InboundFormat::OpenAiChat,
        served: Served::default(),
        route_metrics: None,
        upstream_idle: state.limits.upstream_idle_timeout,
        offload: state.reading.offload.clone(),
        governance: None,
        gate: None,
        request_bytes: 0,
        traces: state.traces,
        cache: None,
        cache_similarity: None,
        proxy_id: None,
        fell_back: false,
        usage_sink: state.usage.clone(),
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
    ctx.proxy_id = Some(proxy.id);
    if let Some(format) = InboundFormat::for_surface(proxy.format.id()) {
        ctx.format = format;
    }
    ctx.governance = Some(Arc::clone(&table.governance));
    // Who calls: on a proxy with client authentication, a live key of a consumer allowed on
    // it, before anything else is read.
    let consumer = if proxy.governance.client_auth {
        match table
            .governance
            .authenticate(proxy.id, req.headers(), req.uri().query())
        {
            Ok(consumer) => {
                ctx.span.record("consumer", &*consumer.name);
                Some(consumer)
            }
            Err(e) => return ctx.reject_unrouted(&e),
        }
    } else {
        None
    };
    if rest == dry_run::DRY_RUN_PATH {
        if req.method() != Method::POST {
            return ctx.reject_unrouted(&ProxyError::MethodNotAllowed { allow: "POST" });
        }
        let consumer = consumer.as_ref().map(|c| Arc::clone(&c.name));
        return dry_run::handle(
            &proxy,
            req.into_body(),
            ctx,
            &state.cache,
            consumer.as_deref(),
        )
        .await;
    }
    let Some(endpoint) = Endpoint::parse(proxy.format, rest) else {
        return ctx.reject_unrouted(&ProxyError::UnknownEndpoint);
    };
    ctx.format = endpoint.format();
    let (method, allow) = endpoint.method();
    if req.method() != method {
        return ctx.reject_unrouted(&ProxyError::MethodNotAllowed { allow });
    }
    match endpoint {
        Endpoint::Models => list_models(state, &proxy, req, ctx).await,
        Endpoint::Complete(op) => {
            let mut scores = None;
            let mut response = complete(state, &proxy, op, req, ctx, consumer, &mut scores).await;
            dry_run::stamp_scores(&mut response, scores);
            response
        }
    }
}

async fn complete(
    state: &AppState,
    proxy: &CompiledProxy,
    op: switchyard_llm::Operation,
    req: Request,
    mut ctx: Ctx,
    consumer: Option<Arc<CompiledConsumer>>,
    scores: &mut Option<HeaderValue>,
) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(e) = op.query_error(parts.uri.query()) {
        return ctx.reject_unrouted(&ProxyError::Untranslatable(e));
    }

    // Stage 1: what the client asked for.
    let inbound = match InboundRequest::read(&op, body, &parts.headers, &state.reading).await {
        Ok(r) => Arc::new(r),
        Err(e) => return ctx.reject_unrouted(&e),
    };
    ctx.request_bytes = inbound.body.len();
    if ctx.traces {
        traces::requested(&ctx.span, inbound.format, inbound.model.as_deref());
    }

    // Admission: every rate limit and budget of the proxy and the consumer, in one atomic
    // step (one round trip to the shared counters).
    let gate = if proxy.governance.limits_anything() {
        let request = governance::Request {
            proxy_id: proxy.id,
            proxy_name: &proxy.name,
            proxy: &proxy.governance,
            consumer,
            headers: &parts.headers,
            query: parts.uri.query(),
        };
        match governance::admit(&state.counters, request).await {
            Ok(gate) => gate,
            Err((e, headers)) => {
                ctx.gate = Some(Arc::new(governance::Gate::refused(headers)));
                return ctx.reject_unrouted(&e);
            }
        }
    } else {
        governance::Gate::consumer_only(consumer)
    };
    ctx.gate = Some(Arc::new(gate));

    // Stage 2: where it goes. Prompt guards first (over the texts of their scope), then
    // semantic routing (the last user message). Taking and scanning the texts of a large
    // body is CPU work: off the I/O thread.
    let evaluation = match &proxy.semantic {
        None => None,
        Some(semantic) => {
            let guard = if ctx.traces {
                info_span!(parent: &ctx.span, "guard")
            } else {
                Span::none()
            };
            let screen = {
                let semantic = Arc::clone(semantic);
                let inbound = Arc::clone(&inbound);
                let max_scan = state.limits.guard_max_scan_bytes;
                move || semantic.screen(inbound.format, inbound.prompt(), &inbound.body, max_scan)
            };
            let screened = match state
                .reading
                .offload
                .run(inbound.body.len(), screen)
                .instrument(guard.clone())
                .await
            {
                Ok(s) => s,
                Err(e) => return ctx.reject_unrouted(&e),
            };
            match semantic.evaluate(screened).instrument(guard.clone()).await {
                Ok(ev) => {
                    if dry_run::wants_scores(&parts.headers) {
                        *scores = ev.scores_header();
                    }
                    if ctx.traces {
                        guard.set_attribute("switchyard.guard.blocked", ev.blocked().is_some());
                        if let Some(by) = &ev.embedded_by {
                            guard.set_attribute("switchyard.guard.embedded_by", by.clone());
                        }
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
    let routing = if ctx.traces {
        info_span!(parent: &ctx.span, "routing")
    } else {
        Span::none()
    };
    let decision = routing.in_scope(|| match &evaluation {
        Some(ev) if proxy.strategy == RoutingStrategy::Semantic => {
            semantic::decide(proxy, &ev.pick)
        }
        _ => routing::decide(proxy, inbound.model.as_deref()),
    });
    let (first, fallback) = match decision {
        Decision::Reject(e) => {
            if ctx.traces {
                routing.set_attribute("switchyard.decision", "reject");
            }
            return ctx.reject_unrouted(&e);
        }
        Decision::Route { choice, fallback } => {
            if ctx.traces {
                routing.set_attribute("switchyard.decision", "route");
            }
            (choice, fallback)
        }
        Decision::Fallback { choice, reason } => {
            if ctx.traces {
                routing.set_attribute("switchyard.decision", "fallback");
                routing.set_attribute("switchyard.fallback_reason", reason.as_str());
            }
            telemetry::fallback(&ctx.proxy, &Label::Static(NONE), reason.as_str());
            info!(parent: &ctx.span, reason = reason.as_str(), "no route named: using the fallback route");
            ctx.fell_back = true;
            (choice, None)
        }
    };
    if ctx.traces {
        let strategy = match proxy.strategy {
            RoutingStrategy::Model => "model",
            RoutingStrategy::Semantic => "semantic",
        };
        routing.set_attribute("switchyard.strategy", strategy);
        routing.set_attribute(
            "switchyard.route",
            proxy.routes[first.route].name.to_string(),
        );
        routing.set_attribute("gen_ai.request.model", first.model.to_string());
    }
    drop(routing);

    // Stages 3 and 4: the upstream call, with one fallback before the first byte, and the
    // answer in the client's format.
    let request_id = ctx.request_id.clone();
    let call = Call {
        inbound: &inbound,
        headers: &parts.headers,
        query: parts.uri.query(),
        request_id: &request_id,
    };
    let route = Arc::clone(&proxy.routes[first.route]);
    let model = ctx.choose(&route, &first);

    // The response cache: a hit is answered here; a miss carries where to store its answer.
    let plan = match &proxy.cache {
        None => None,
        Some(cache) => {
            let lookup = Lookup {
                proxy,
                cache,
                choice: &first,
                route: &route,
                inbound: &inbound,
                headers: &parts.headers,
                model: &model,
            };
            match cache_lookup(state, lookup, &mut ctx).await {
                Ok(plan) => plan,
                Err(hit) => return hit,
            }
        }
    };
    let failure = match attempt(state, &route, &first, &call, &mut ctx).await {
        Attempt::Served(answer) => {
            return respond(&ctx, answer, &inbound, &route.name_header, &model, plan).await;
        }
        Attempt::Refused(e) => return ctx.reject(&e, &route.name_header, &model),
        Attempt::Failed(failure) => failure,
    };
    telemetry::upstream_error(&ctx.proxy, &ctx.route, failure.reason.as_str());
    warn!(parent: &ctx.span, route = &*route.name, reason = failure.reason.as_str(), error = %failure.detail, "upstream attempt failed");
    let Some(second) = fallback else {
        return finish_failure(&ctx, failure, &inbound, &route.name_header, &model).await;
    };

    telemetry::fallback(&ctx.proxy, &ctx.route, failure.reason.as_str());
    ctx.fell_back = true;
    drop(failure);
    let route = Arc::clone(&proxy.routes[second.route]);
    let model = ctx.choose(&route, &second);
    info!(parent: &ctx.span, route = &*route.name, "falling back");
    match attempt(state, &route, &second, &call, &mut ctx).await {
        // Served by the fallback after a failure: not stored (the key names the first route).
        Attempt::Served(answer) => {
            respond(&ctx, answer, &inbound, &route.name_header, &model, None).await
        }
        Attempt::Refused(e) => ctx.reject(&e, &route.name_header, &model),
        Attempt::Failed(failure) => {
            telemetry::upstream_error(&ctx.proxy, &ctx.route, failure.reason.as_str());
            warn!(parent: &ctx.span, route = &*route.name, reason = failure.reason.as_str(), error = %failure.detail, "fallback attempt failed");
            finish_failure(&ctx, failure, &inbound, &route.name_header, &model).await
        }
    }
}

impl Ctx {
    /// Records the route about to be tried; returns its `x-switchyard-model` value.
    fn choose(&mut self, route: &CompiledRoute, choice: &Choice) -> HeaderValue {
        self.route = Label::Shared(Arc::clone(&route.name));
        let (proxy, label) = (&self.proxy, &self.route);
        self.route_metrics =
            Some(Arc::clone(route.metrics.get_or_init(|| {
                Arc::new(crate::telemetry::RouteMetrics::new(proxy, label))
            })));
        self.span.record("route", &*route.name);
        self.span.record("model", &*choice.model);
        if self.traces {
            traces::provider(&self.span, route.provider);
        }
        self.served = Served {
            provider: route.provider.as_str(),
            model: Arc::clone(&choice.model),
            stream: false,
            translated: false,
        };
        model_header(&choice.model)
    }
}

/// A failed attempt with no fallback left: the upstream's own answer if it gave one (5xx or
/// 429, in the client's format), else the gateway's error.
async fn finish_failure(
    ctx: &Ctx,
    failure: Failure,
    inbound: &InboundRequest,
    route: &HeaderValue,
    model: &HeaderValue,
) -> Response {
    match failure.answer {
        Some(answer) => respond(ctx, answer, inbound, route, model, None).await,
        None => {
            let err = match failure.reason {
                FallbackReason::Timeout => ProxyError::UpstreamTimeout,
                _ => ProxyError::UpstreamUnavailable(failure.detail),
            };
            ctx.reject(&err, route, model)
        }
    }
}

/// An upstream's answer (its status is not yet looked at).
struct Answer {
    resp: UpstreamResponse,
    target: Target,
    translated: bool,
}

enum Attempt {
    /// An answer to relay or translate (2xx, or a 4xx that is the client's to see).
    Served(Answer),
    /// The gateway refused before calling the upstream (no fallback applies).
    Refused(ProxyError),
    /// The upstream failed before anything reached the client: the fallback may serve.
    Failed(Failure),
}

struct Failure {
    reason: FallbackReason,
    detail: String,
    answer: Option<Answer>,
}

async fn attempt(
    state: &AppState,
    route: &Arc<CompiledRoute>,
    choice: &Choice,
    call: &Call<'_>,
    ctx: &mut Ctx,
) -> Attempt {
    let span = if ctx.traces {
        let span = info_span!(
            parent: &ctx.span,
            "upstream",
            otel.kind = "client",
            route = &*route.name,
            model = &*choice.model,
        );
        traces::provider(&span, route.provider);
        span.set_attribute("gen_ai.request.model", choice.model.to_string());
        span
    } else {
        Span::none()
    };
    let attempt = attempt_in(state, route, choice, call, ctx, &span)
        .instrument(span.clone())
        .await;
    if ctx.traces {
        match &attempt {
            Attempt::Served(answer) => {
                traces::attempt_ended(&span, Some(answer.resp.status().as_u16()), None);
            }
            Attempt::Refused(e) => traces::attempt_ended(&span, None, Some(e.code())),
            Attempt::Failed(failure) => traces::attempt_ended(
                &span,
                failure.answer.as_ref().map(|a| a.resp.status().as_u16()),
                Some(failure.reason.as_str()),
            ),
        }
    }
    attempt
}

async fn attempt_in(
    state: &AppState,
    route: &Arc<CompiledRoute>,
    choice: &Choice,
    call: &Call<'_>,
    ctx: &mut Ctx,
    span: &Span,
) -> Attempt {
    let size = call.inbound.body.len();
    let prepared = if state.reading.offload.offloads(size) {
        // Translating (or rewriting) a large body is CPU work: off the I/O thread.
        let route = Arc::clone(route);
        let model = Arc::clone(&choice.model);
        let inbound = Arc::clone(call.inbound);
        let headers = call.headers.clone();
        let query = call.query.map(str::to_owned);
        let request_id = call.request_id.clone();
        let work = move || {
            let call = Call {
                inbound: &inbound,
                headers: &headers,
                query: query.as_deref(),
                request_id: &request_id,
            };
            prepare(&route.upstream, &model, &call)
        };
        state.reading.offload.run(size, work).await
    } else {
        prepare(&route.upstream, &choice.model, call)
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => return Attempt::Refused(e),
    };
    traces::propagate(
        span,
        ctx.traces,
        call.headers,
        prepared.request.headers_mut(),
    );
    ctx.served.stream = call.inbound.stream;
    ctx.served.translated = prepared.translated;
    let target = prepared.target;
    let translated = prepared.translated;
    match tokio::time::timeout(state.header_timeout, state.client.send(prepared.request)).await {
        Err(_) => Attempt::Failed(Failure {
            reason: FallbackReason::Timeout,
            detail: format!(
                "no response headers within {} ms",
                state.header_timeout.as_millis()
            ),
            answer: None,
        }),
        Ok(Err(e)) => Attempt::Failed(Failure {
            reason: if e.is_connect() {
                FallbackReason::Connect
            } else {
                FallbackReason::Connection
            },
            detail: error_chain(&e),
            answer: None,
        }),
        Ok(Ok(resp)) => {
            let status = resp.status();
            let answer = Answer {
                resp,
                target,
                translated,
            };
            let reason = if status == StatusCode::TOO_MANY_REQUESTS {
                FallbackReason::Status429
            } else if status.is_server_error() {
                FallbackReason::Status5xx
            } else {
                return Attempt::Served(answer);
            };
            Attempt::Failed(Failure {
                reason,
                detail: format!("upstream answered {status}"),
                answer: Some(answer),
            })
        }
    }
}

/// Stage 4: the upstream's answer in the client's format.
///
/// - passthrough: relayed as it is (streams event by event, checked, usage read);
/// - translated error: parsed (`x-amzn-ErrorType`, Gemini and OpenAI error bodies) and
///   rendered in the client's error shape with the upstream's status;
/// - translated stream: through the per-request stream translator;
/// - translated answer: parsed into the canonical response and rendered.
async fn respond(
    ctx: &Ctx,
    answer: Answer,
    inbound: &InboundRequest,
    route: &HeaderValue,
    model: &HeaderValue,
    plan: Option<cache::Plan>,
) -> Response {
    let Answer {
        resp,
        target,
        translated,
    } = answer;
    let status = resp.status();
    if !translated && !status.is_success() {
        // The upstream speaks the client's API: its error goes as it is when it has that
        // API's error shape (Azure's `innererror` and the like survive), else it is
        // re-rendered in it (Azure's bare `{"code", "message"}` 401s, HTML from a proxy).
        let headers = resp.headers().clone();
        let body = read_capped(resp, ERROR_BODY_LIMIT, ctx.upstream_idle)
            .await
            .unwrap_or_default();
        if inbound.format.has_error_shape(&body) {
            return ctx.relay_error(status, &headers, body, route, model);
        }
        let err = target.parse_error(status, &headers, &body);
        return ctx.reject(&ProxyError::Api(err), route, model);
    }
    if !translated {
        if inbound.stream && is_aws_event_stream(resp.headers()) {
            // Claude on Bedrock (InvokeModelWithResponseStream): the Messages events arrive
            // in event-stream frames and leave as the client's server-sent events.
            // (Not cached: the frames are InvokeModel's, which no decoder of the target reads.)
            let inspector = inbound.format.stream_inspector_for(&target, false);
            return ctx.relay_translated(resp, BodyFilter::sse(inspector), None, route, model);
        }
        let (filter, recorder) = if inbound.stream && is_event_stream(resp.headers()) {
            (
                BodyFilter::sse(inbound.format.stream_inspector(inbound.asks_stream_usage())),
                plan.map(|p| cache::Recorder::stream(p, &target)),
            )
        } else {
            (
                BodyFilter::tee(inbound.format),
                plan.filter(|_| !inbound.stream)
                    .map(|p| cache::Recorder::json(p, &target, resp.headers())),
            )
        };
        return ctx.relay(resp, filter, recorder, route, model);
    }
    if !status.is_success() {
        let headers = resp.headers().clone();
        let body = read_capped(resp, ERROR_BODY_LIMIT, ctx.upstream_idle)
            .await
            .unwrap_or_default();
        let err = target.parse_error(status, &headers, &body);
        return ctx.reject(&ProxyError::Api(err), route, model);
    }
    if inbound.stream {
        let stub = ChatRequest {
            model: target.model.clone(),
            stream: true,
            stream_include_usage: inbound
                .canonical()
                .map(|r| r.stream_include_usage)
                .unwrap_or(false),
            parallel_tool_calls: inbound.canonical().ok().and_then(|r| r.parallel_tool_calls),
            ..ChatRequest::default()
        };
        let filter = BodyFilter::translate(
            target.stream_decoder(),
            inbound.format.stream_encoder(&stub),
        );
        let recorder = plan.map(|p| cache::Recorder::stream(p, &target));
        return ctx.relay_translated(resp, filter, recorder, route, model);
    }
    let headers = resp.headers().clone();
    let body = match read_capped(resp, ANSWER_BODY_LIMIT, ctx.upstream_idle).await {
        Ok(b) => b,
        Err(e) => {
            telemetry::upstream_error(&ctx.proxy, &ctx.route, "connection");
            return ctx.reject(&ProxyError::UpstreamUnavailable(e), route, model);
        }
    };
    // Translating a large answer is CPU work: off the I/O thread.
    let size = body.len();
    let format = inbound.format;
    let upstream_headers = headers.clone();
    let one_tool_call = inbound
        .canonical()
        .is_ok_and(|r| r.parallel_tool_calls == Some(false));
    let translate = move || {
        target
            .parse_response(status, &upstream_headers, &body)
            .map(|mut chat| {
                if one_tool_call {
                    chat.keep_first_tool_call();
                }
                (format.render_response(&chat), chat)
            })
    };
    match ctx.offload.run(size, translate).await {
        Ok((out, chat)) => {
            if let Some(plan) = plan {
                plan.store(cache::entry::Entry::from_response(&chat));
            }
            ctx.respond_json(out, Some(&headers), chat.usage, route, model)
        }
        Err(e) => ctx.reject(&ProxyError::Api(e), route, model),
    }
}

/// What a cache lookup needs to know about the request.
struct Lookup<'a> {
    proxy: &'a CompiledProxy,
    cache: &'a ProxyCache,
    choice: &'a Choice,
    route: &'a CompiledRoute,
    inbound: &'a Arc<InboundRequest>,
    headers: &'a HeaderMap,
    /// The `x-switchyard-model` value.
    model: &'a HeaderValue,
}

/// Looks the request up in the proxy's cache (unless `Cache-Control` says not to): `Err`
/// with the answer on a hit, else where to store the answer (`None`: not stored).
async fn cache_lookup(
    state: &AppState,
    l: Lookup<'_>,
    ctx: &mut Ctx,
) -> Result<Option<cache::Plan>, Response> {
    ctx.cache = Some(cache::Outcome::Miss);
    let directive = cache::directive(l.headers);
    if directive == cache::Directive::Bypass {
        return Ok(None);
    }
    let consumer = match l.cache.scope {
        switchyard_model::CacheScope::Proxy => None,
        switchyard_model::CacheScope::Consumer => {
            match ctx.gate.as_ref().and_then(|g| g.consumer.as_ref()) {
                Some(c) => Some(Arc::clone(&c.name)),
                // No consumer to scope by: nothing is shared.
                None => return Ok(None),
            }
        }
    };
    // The keys need the canonical request: parsing a large body is CPU work.
    let keys = {
        let inbound = Arc::clone(l.inbound);
        let (proxy, route, model) = (
            l.proxy.id,
            Arc::clone(&l.route.name),
            Arc::clone(&l.choice.model),
        );
        let semantic = l.cache.semantic.is_some();
        let work = move || {
            let req = inbound.canonical().ok()?;
            let scope = cache::key::KeyScope {
                proxy,
                route: &route,
                model: &model,
                consumer: consumer.as_deref(),
            };
            let exact = cache::key::exact_key(scope, req);
            let semantic = if semantic {
                cache::key::semantic_key(scope, req).ok().flatten()
            } else {
                None
            };
            Some((exact, semantic))
        };
        state.reading.offload.run(l.inbound.body.len(), work).await
    };
    let (key, semantic_key) = match keys {
        Some((Ok(key), semantic)) => (key, semantic),
        Some((Err(why), _)) => {
            metrics::counter!(cache::NOT_STORED, "proxy" => ctx.proxy.shared(), "reason" => why.as_str())
                .increment(1);
            return Ok(None);
        }
        None => return Ok(None),
    };
    let hit = |ctx: &mut Ctx, entry: &cache::entry::Entry, outcome, similarity| {
        ctx.cache = Some(outcome);
        ctx.cache_similarity = similarity;
        ctx.served.stream = l.inbound.stream;
        cache::count_lookup(&l.proxy.name, outcome, entry.usage());
        info!(parent: &ctx.span, cache = outcome.header(), similarity, "answered from the response cache");
        serve_hit(
            ctx,
            entry,
            l.inbound,
            &l.route.name_header,
            l.model,
            &l.choice.model,
        )
    };
    if directive == cache::Directive::Use
        && let Some(exact_ttl) = l.cache.exact_ttl
        && let Some((entry, _)) = state.cache.get(l.proxy.id, &l.proxy.name, &key).await
        && entry.fresh(exact_ttl)
    {
        return Err(hit(ctx, &entry, cache::Outcome::Hit, None));
    }
    // The semantic cache: the last user message's vector, compared within its group.
    let mut semantic_plan = None;
    if let (Some((threshold, ttl)), Some((rest, text)), Some(embedder)) =
        (l.cache.semantic, semantic_key, l.proxy.semantic.as_ref())
    {
        match embedder.embed(&text).await {
            Some(Ok(v)) => {
                if let Some(vector) = cache::semantic::Quantized::new(&v) {
                    if directive == cache::Directive::Use
                        && let Some((found, similarity)) =
                            state.cache.nearest(l.proxy.id, &rest, &vector)
                        && similarity >= threshold
                        && let Some((entry, _)) =
                            state.cache.get(l.proxy.id, &l.proxy.name, &found).await
                    {
                        return Err(hit(
                            ctx,
                            &entry,
                            cache::Outcome::SemanticHit,
                            Some(similarity),
                        ));
                    }
                    semantic_plan = Some(cache::SemanticPlan { rest, vector, ttl });
                }
            }
            Some(Err(e)) => {
                warn!(parent: &ctx.span, error = %e, "semantic cache: the prompt could not be embedded; not looked up");
            }
            None => {}
        }
    }
    if directive == cache::Directive::Use {
        cache::count_lookup(&l.proxy.name, cache::Outcome::Miss, None);
    }
    let ttl = match (l.cache.exact_ttl, &semantic_plan) {
        (Some(e), Some(s)) => e.max(s.ttl),
        (Some(e), None) => e,
        (None, Some(s)) => s.ttl,
        (None, None) => return Ok(None),
    };
    Ok(Some(cache::Plan {
        handle: state.cache.clone(),
        proxy: l.proxy.id,
        proxy_name: Arc::clone(&l.proxy.name),
        key,
        ttl,
        semantic: semantic_plan,
    }))
}

/// A cached answer in the client's format: a stream of its events, or one JSON body.
fn serve_hit(
    ctx: &Ctx,
    entry: &cache::entry::Entry,
    inbound: &InboundRequest,
    route: &HeaderValue,
    model: &HeaderValue,
    model_name: &str,
) -> Response {
    if inbound.stream {
        let include_usage = inbound
            .canonical()
            .map(|r| r.stream_include_usage)
            .unwrap_or(false);
        ctx.replay(
            entry.stream(inbound.format, model_name, include_usage),
            route,
            model,
        )
    } else {
        let body = inbound.format.render_response(&entry.response(model_name));
        ctx.respond_json(body, None, None, route, model)
    }
}

fn is_aws_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .starts_with("application/vnd.amazon.eventstream")
        })
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Reads an upstream body whole, up to `limit` bytes.
async fn read_capped(
    resp: UpstreamResponse,
    limit: usize,
    idle: std::time::Duration,
) -> Result<Bytes, String> {
    use futures::StreamExt;
    let mut body = super::relay::idle_bounded(resp, idle);
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| format!("could not read the upstream answer: {}", error_chain(&*e)))?;
        if out.len() + chunk.len() > limit {
            return Err(format!("the upstream answer is larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// `GET {base}/models`: the models this proxy routes to, as `<route>/<model>` ids. A route
/// with a target model lists that one; an OpenAI-family route without one lists its
/// upstream's models. Routes that cannot answer are left out. Bare model names follow: each
/// route's exact `models`, and the upstream's models its `prefix*` names would send to it.
async fn list_models(state: &AppState, proxy: &CompiledProxy, req: Request, ctx: Ctx) -> Response {
    let (parts, _) = req.into_parts();
    let lookups = proxy.routes.iter().map(|route| {
        let parts = &parts;
        let request_id = &ctx.request_id;
        async move {
            let ids = match &route.target_model {
                Some(target) => Ok(vec![target.to_string()]),
                None => upstream_models(state, route, parts, request_id).await,
            };
            (route, ids)
        }
    });
    let results = futures::future::join_all(lookups).await;
    let mut data = Vec::new();
    let mut bare: Vec<serde_json::Value> = Vec::new();
    let mut bare_seen = std::collections::HashSet::new();
    let mut served_by: Vec<&str> = Vec::new();
    let mut failures = Vec::new();
    let entry = |id: &str, route: &CompiledRoute| {
        serde_json::json!({
            "id": id,
            "object": "model",
            "created": 0,
            "owned_by": route.provider.as_str(),
        })
    };
    for (index, (route, ids)) in results.into_iter().enumerate() {
        let exact = route.models.iter().filter(|m| !m.ends_with('*'));
        for name in exact {
            if bare_seen.insert(name.to_string()) {
                bare.push(entry(name, route));
            }
        }
        match ids {
            Ok(ids) => {
                if !ids.is_empty() {
                    served_by.push(&route.name);
                }
                for id in &ids {
                    if proxy.bare.route(id) == Some(index) && bare_seen.insert(id.clone()) {
                        bare.push(entry(id, route));
                    }
                }
                data.extend(
                    ids.into_iter()
                        .map(|id| entry(&format!("{}/{id}", route.name), route)),
                );
            }
            Err(e) => {
                warn!(parent: &ctx.span, route = &*route.name, error = %e, "cannot list the route's models");
                failures.push(format!("route '{}': {e}", route.name));
            }
        }
    }
    data.extend(bare);
    if data.is_empty() && !failures.is_empty() {
        return ctx.reject_unrouted(&ProxyError::UpstreamUnavailable(failures.join("; ")));
    }
    let route_header = if served_by.is_empty() {
        NONE_VALUE.clone()
    } else {
        HeaderValue::from_str(&served_by.join(",")).unwrap_or_else(|_| NONE_VALUE.clone())
    };
    let body = serde_json::json!({"object": "list", "data": data});
    ctx.respond_json(
        Bytes::from(body.to_string()),
        None,
        None,
        &route_header,
        &NONE_VALUE,
    )
}

async fn upstream_models(
    state: &AppState,
    route: &CompiledRoute,
    parts: &axum::http::request::Parts,
    request_id: &HeaderValue,
) -> Result<Vec<String>, String> {
    let Some(request) = route
        .upstream
        .models_request(&parts.headers, parts.uri.query())
    else {
        return Ok(vec![]);
    };
    let mut request = request.map_err(|e| e.message())?;
    request
        .headers_mut()
        .insert(route.upstream.request_id_header(), request_id.clone());
    let fetch = async {
        let resp = state
            .client
            .send(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("upstream answered {status}"));
        }
        read_capped(resp, ANSWER_BODY_LIMIT, state.limits.upstream_idle_timeout).await
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
