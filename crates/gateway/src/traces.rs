//! OpenTelemetry traces of the request path, when the node exports them (`--otlp-endpoint`;
//! the process installs the exporter, the `tracing` ↔ OpenTelemetry layer and the W3C
//! propagator, and sets [`crate::GatewayConfig::traces`]).
//!
//! The `request` span (made in `http::proxy`) is the server span: it continues the client's
//! `traceparent`, is named `{gen_ai.operation.name} {gen_ai.request.model}` and carries the
//! GenAI semantic-convention attributes set here (`gen_ai.operation.name`,
//! `gen_ai.provider.name` and the older `gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.usage.*`) beside its own fields (`proxy`, `consumer`,
//! `route`, `model`, `status`). Its children: `guard` (the prompt guards and the semantic
//! evaluation), `routing` (the decision), and `upstream` (one per attempt, a client span
//! until the upstream's response headers) whose context goes upstream as `traceparent`.
//!
//! Without an exporter none of this runs: the children are `Span::none()` and no attribute is
//! built; an incoming `traceparent`/`tracestate` is still forwarded upstream unchanged, so a
//! client's trace reaches the provider either way.

use axum::http::{HeaderMap, HeaderName};
use opentelemetry::trace::Status;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use switchyard_llm::{InboundFormat, Provider, Usage};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Makes `span` a child of the trace the client's headers carry (W3C `traceparent`); must be
/// called before the span is first entered. A request without one starts a new trace.
pub(crate) fn continue_trace(span: &Span, headers: &HeaderMap) {
    if !headers.contains_key(&TRACEPARENT) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// Writes the trace context of `span` (the upstream attempt) into the upstream request's
/// headers; without traces, forwards the client's own trace headers as they are.
pub(crate) fn propagate(span: &Span, traces: bool, incoming: &HeaderMap, outgoing: &mut HeaderMap) {
    if traces {
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(outgoing));
        });
        return;
    }
    for name in [&TRACEPARENT, &TRACESTATE] {
        if let Some(value) = incoming.get(name) {
            outgoing.insert(name.clone(), value.clone());
        }
    }
}

/// `gen_ai.operation.name` of a client format.
pub(crate) fn operation(format: InboundFormat) -> &'static str {
    match format {
        InboundFormat::OpenAiChat | InboundFormat::OpenAiResponses | InboundFormat::Anthropic => {
            "chat"
        }
        InboundFormat::Gemini => "generate_content",
        InboundFormat::AnthropicCountTokens => "count_tokens",
    }
}

/// `gen_ai.provider.name` of a provider: the semantic conventions' well-known value where
/// there is one, else Switchyard's provider id.
pub(crate) fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "openai",
        Provider::Azure => "azure.ai.openai",
        Provider::Gemini => "gcp.gemini",
        Provider::Bedrock => "aws.bedrock",
        other => other.as_str(),
    }
}

/// What the client asked for, once the body is read: the span's name and the request
/// attributes.
pub(crate) fn requested(span: &Span, format: InboundFormat, model: Option<&str>) {
    let operation = operation(format);
    span.set_attribute("gen_ai.operation.name", operation);
    match model {
        Some(model) => {
            span.set_attribute("gen_ai.request.model", model.to_owned());
            span.record("otel.name", format!("{operation} {model}"));
        }
        None => {
            span.record("otel.name", operation);
        }
    }
}

/// The provider a route sends to (the request span and its upstream attempt).
pub(crate) fn provider(span: &Span, provider: Provider) {
    let name = provider_name(provider);
    span.set_attribute("gen_ai.provider.name", name);
    span.set_attribute("gen_ai.system", name);
}

/// A finished request: the model that served it, its usage and cost, and an error status for
/// a 5xx (the semantic conventions' rule for server spans).
pub(crate) fn finished(
    span: &Span,
    model: Option<&str>,
    usage: Option<&Usage>,
    cost: Option<f64>,
    status: u16,
    outcome: &'static str,
) {
    if let Some(model) = model {
        span.set_attribute("gen_ai.response.model", model.to_owned());
    }
    if let Some(usage) = usage {
        span.set_attribute("gen_ai.usage.input_tokens", to_i64(usage.input_tokens));
        span.set_attribute("gen_ai.usage.output_tokens", to_i64(usage.output_tokens));
        if let Some(cached) = usage.cached_input_tokens {
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", to_i64(cached));
        }
        if let Some(reasoning) = usage.reasoning_tokens {
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", to_i64(reasoning));
        }
    }
    if let Some(usd) = cost {
        span.set_attribute("switchyard.cost_usd", usd);
    }
    span.set_attribute("http.response.status_code", i64::from(status));
    span.set_attribute("switchyard.outcome", outcome);
    if status >= 500 {
        span.set_status(Status::error(outcome));
    }
}

/// An upstream attempt's end: the status it answered with, or why it failed.
pub(crate) fn attempt_ended(span: &Span, status: Option<u16>, error: Option<&str>) {
    if let Some(status) = status {
        span.set_attribute("http.response.status_code", i64::from(status));
    }
    if let Some(error) = error {
        span.set_attribute("error.type", error.to_owned());
        span.set_status(Status::error(error.to_owned()));
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
