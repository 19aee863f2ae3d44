//! Usage accounting, in one place: what one request consumed and how it was served, recorded
//! once when it ends (its body done, streams included, or the client gone).
//!
//! Every proxied request ends in one [`UsageRecord`] handed to [`record`], which emits the
//! request metrics, the token counters (`switchyard_gateway_tokens_total{proxy,route,type}`,
//! after OpenTelemetry's `gen_ai.client.token.usage`), the time to first token of streams
//! (`switchyard_gateway_time_to_first_token_seconds`), and the request's one structured log
//! line (`request finished`). Token counts follow OpenAI's semantics whatever the provider:
//! input includes cached input, output includes reasoning. Usage comes from the upstream's
//! own report: the canonical response or stream events on the translated path, the llm
//! usage readers on the passthrough path (for OpenAI chat streams the gateway asks for
//! `stream_options.include_usage` and holds the extra chunk back from clients that did not).
//!
//! This is the seam for governance (budgets, per-key quotas, billing exports): whatever it
//! needs to know about a finished request is in the record. Every record of a request on a
//! proxy is also queued for the control plane ([`ship`]: batched, spooled under the cache
//! dir while the control plane is away; never waited for).

pub(crate) mod ship;
pub(crate) mod spool;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_llm::{InboundFormat, Usage};
use tracing::{Span, info};

use crate::telemetry::{self, Label};

/// One finished request.
#[derive(Debug, Clone)]
pub(crate) struct UsageRecord {
    pub proxy: Label,
    pub route: Label,
    /// The provider id of the route that served (`none` when no route did).
    pub provider: &'static str,
    /// The upstream model asked for (`none` when no route was chosen).
    pub model: Arc<str>,
    pub format: InboundFormat,
    pub stream: bool,
    /// Whether the request was translated (as opposed to passed through).
    pub translated: bool,
    pub status: u16,
    pub outcome: &'static str,
    /// From the request's arrival to the end of its body.
    pub latency: Duration,
    /// From the request's arrival to the first byte of the answer's body sent to the client.
    pub time_to_first_byte: Option<Duration>,
    /// What the upstream reported; `None` when it reported nothing (or no upstream answered).
    pub usage: Option<Usage>,
    /// The serving route's metric handles, when a route was chosen.
    pub route_metrics: Option<Arc<telemetry::RouteMetrics>>,
    /// The snapshot's governance: the price table the cost is computed with.
    pub governance: Option<Arc<crate::governance::Governance>>,
    /// The request's consumer and the counters its tokens and cost are charged to.
    pub gate: Option<Arc<crate::governance::Gate>>,
    /// The request body's size.
    pub request_bytes: usize,
    /// Chunks of the answer sent to the client.
    pub events_sent: u64,
    /// Whether the request's span is exported ([`crate::traces`]).
    pub traces: bool,
    /// What the response cache did, when the proxy has one. A hit (`usage` is then `None`:
    /// no upstream tokens were spent) is charged nothing and costs 0.
    pub cache: Option<crate::cache::Outcome>,
    /// The proxy's id, once the request reached one (only those records are shipped).
    pub proxy_id: Option<uuid::Uuid>,
    /// Whether the fallback route was chosen or tried.
    pub fell_back: bool,
    /// Where the record is queued for the control plane (`None`: shipping is off).
    pub sink: Option<ship::UsageSink>,
}

impl UsageRecord {
    /// What the request is charged for: the upstream's report, or, for a stream cut short
    /// before the upstream reported usage (the client left, or the upstream broke off), an
    /// estimate of what was produced: a token per event sent, and the request's bytes / 4
    /// as its input.
    pub(crate) fn billed_usage(&self) -> (Option<Usage>, bool) {
        if self.cache.is_some_and(crate::cache::Outcome::is_hit) {
            return (None, false);
        }
        if let Some(usage) = self.usage {
            return (Some(usage), false);
        }
        let cut_short = matches!(
            self.outcome,
            "client_disconnected" | "upstream_stream_error"
        );
        if self.stream && cut_short && self.events_sent > 0 {
            let estimate = Usage {
                input_tokens: (self.request_bytes as u64).div_ceil(4),
                output_tokens: self.events_sent,
                ..Usage::default()
            };
            return (Some(estimate), true);
        }
        (None, false)
    }
}

/// Records a finished request: metrics, the `request finished` log line (in `span`), and,
/// with traces, the span's response model, usage, cost and status.
pub(crate) fn record(rec: &UsageRecord, span: &Span) {
    match &rec.route_metrics {
        Some(m) if rec.status == 200 => m.ok(rec.latency),
        _ => telemetry::request_finished(&rec.proxy, &rec.route, rec.status, rec.latency),
    }
    if let Some(usage) = &rec.usage {
        match &rec.route_metrics {
            Some(m) => m.tokens(usage.input_tokens, usage.output_tokens),
            None => {
                telemetry::tokens(&rec.proxy, &rec.route, "input", usage.input_tokens);
                telemetry::tokens(&rec.proxy, &rec.route, "output", usage.output_tokens);
            }
        }
        if let Some(cached) = usage.cached_input_tokens.filter(|n| *n > 0) {
            telemetry::tokens(&rec.proxy, &rec.route, "cached_input", cached);
        }
        if let Some(reasoning) = usage.reasoning_tokens.filter(|n| *n > 0) {
            telemetry::tokens(&rec.proxy, &rec.route, "reasoning", reasoning);
        }
    } else if (200..300).contains(&rec.status)
        && rec.provider != telemetry::NONE
        && !rec.cache.is_some_and(crate::cache::Outcome::is_hit)
    {
        telemetry::usage_missing(&rec.proxy, &rec.route);
    }
    if rec.stream
        && let Some(ttft) = rec.time_to_first_byte
    {
        telemetry::time_to_first_token(&rec.proxy, &rec.route, ttft);
    }
    let (billed, estimated) = rec.billed_usage();
    let consumer = rec
        .gate
        .as_ref()
        .and_then(|g| g.consumer.as_ref())
        .map(|c| &*c.name);
    let hit = rec.cache.is_some_and(crate::cache::Outcome::is_hit);
    let cost = match (&billed, &rec.governance) {
        // A hit costs nothing.
        _ if hit => Some(0.0),
        (Some(usage), Some(gov)) if rec.provider != telemetry::NONE => {
            let cost = gov.prices.cost(&rec.model, usage);
            match cost {
                Some(usd) => telemetry::cost(&rec.proxy, &rec.route, consumer, usd),
                None => telemetry::unpriced(&rec.proxy, &rec.route),
            }
            cost
        }
        _ => None,
    };
    if let Some(gate) = &rec.gate {
        gate.settle(billed.as_ref(), cost.unwrap_or(0.0), span);
    }
    if let (Some(sink), Some(proxy_id)) = (&rec.sink, rec.proxy_id) {
        sink.push(ship::UsageEvent {
            at: SystemTime::now()
                .checked_sub(rec.latency)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            proxy_id,
            proxy: rec.proxy.clone(),
            route: rec.route.clone(),
            model: (rec.provider != telemetry::NONE).then(|| Arc::clone(&rec.model)),
            consumer: rec
                .gate
                .as_ref()
                .and_then(|g| g.consumer.as_ref())
                .map(|c| Arc::clone(&c.name)),
            provider: rec.provider,
            status: rec.status,
            usage: billed,
            cost_nano_usd: switchyard_model::usage::usd_to_nano(cost.unwrap_or(0.0)),
            latency: rec.latency,
            ttft: rec.time_to_first_byte,
            fell_back: rec.fell_back,
            stream: rec.stream,
            estimated,
        });
    }
    if rec.traces {
        let served = (rec.provider != telemetry::NONE).then_some(&*rec.model);
        crate::traces::finished(
            span,
            served,
            rec.usage.as_ref(),
            cost,
            rec.status,
            rec.outcome,
        );
    }
    let latency_ms = rec.latency.as_secs_f64() * 1000.0;
    span.record("status", rec.status);
    span.record("latency_ms", latency_ms);
    let usage = rec.usage.unwrap_or_default();
    info!(
        parent: span,
        status = rec.status,
        latency_ms,
        outcome = rec.outcome,
        provider = rec.provider,
        upstream_model = &*rec.model,
        format = rec.format.label(),
        stream = rec.stream,
        translated = rec.translated,
        ttft_ms = rec.time_to_first_byte.map(|d| d.as_secs_f64() * 1000.0),
        input_tokens = rec.usage.map(|_| usage.input_tokens),
        output_tokens = rec.usage.map(|_| usage.output_tokens),
        cached_input_tokens = usage.cached_input_tokens,
        reasoning_tokens = usage.reasoning_tokens,
        usage_estimated = estimated.then_some(true),
        consumer,
        cost_usd = cost,
        cache = rec.cache.map(crate::cache::Outcome::header),
        "request finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_tokens_and_first_token_times() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rec = UsageRecord {
            proxy: Label::Static("p"),
            route: Label::Static("r"),
            provider: "bedrock",
            model: Arc::from("anthropic.claude"),
            format: InboundFormat::OpenAiChat,
            stream: true,
            translated: true,
            status: 200,
            outcome: "completed",
            latency: Duration::from_millis(30),
            time_to_first_byte: Some(Duration::from_millis(5)),
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 7,
                cached_input_tokens: Some(4),
                cache_write_input_tokens: None,
                reasoning_tokens: None,
            }),
            route_metrics: None,
            governance: None,
            gate: None,
            request_bytes: 0,
            events_sent: 0,
            traces: false,
            cache: None,
            proxy_id: None,
            fell_back: false,
            sink: None,
        };
        metrics::with_local_recorder(&recorder, || {
            record(&rec, &Span::none());
            record(
                &UsageRecord {
                    usage: None,
                    stream: false,
                    ..rec.clone()
                },
                &Span::none(),
            );
        });
        let text = handle.render();
        for line in [
            r#"switchyard_gateway_tokens_total{proxy="p",route="r",type="input"} 12"#,
            r#"switchyard_gateway_tokens_total{proxy="p",route="r",type="output"} 7"#,
            r#"switchyard_gateway_tokens_total{proxy="p",route="r",type="cached_input"} 4"#,
            r#"switchyard_gateway_usage_missing_total{proxy="p",route="r"} 1"#,
            r#"switchyard_gateway_time_to_first_token_seconds_count{proxy="p",route="r"} 1"#,
            r#"switchyard_gateway_requests_total{proxy="p",route="r",status="200"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("type=\"reasoning\""), "{text}");
    }
}
