//! The process's `tracing` subscriber: logs (text or JSON, filtered by `--log`) and, with
//! `--otlp-endpoint`, OpenTelemetry traces exported over OTLP/gRPC.
//!
//! Export never holds a request: finished spans go into a bounded queue (`--otlp-queue-size`;
//! past it new spans are dropped, and the SDK says so in the log) that a batch exporter's own
//! thread sends every `--otlp-export-interval`, each export bounded by `--otlp-timeout`. A
//! collector that is down costs failed exports on that thread, never latency on the request
//! path. Only Switchyard's own spans are exported (`switchyard_*` targets at `info`),
//! whatever `--log` says; the W3C trace-context propagator is installed for `traceparent` in
//! and out.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{LogArgs, LogFormat, parse_duration};

/// Trace export (`control-plane`, `gateway` and `dev`).
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (https:// verifies the collector against the system roots).
    /// Without it no span is exported and the request path does none of the work.
    #[arg(long, env = "SWITCHYARD_OTLP_ENDPOINT", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default: switchyard-control-plane,
    /// switchyard-gateway or switchyard-dev).
    #[arg(long, env = "SWITCHYARD_OTLP_SERVICE_NAME", requires = "otlp_endpoint")]
    pub otlp_service_name: Option<String>,
    /// Fraction of new traces kept (0 to 1); a request continuing a client's trace follows
    /// the client's sampling decision.
    #[arg(long, env = "SWITCHYARD_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub otlp_sample_ratio: f64,
    /// Most finished spans waiting for export; past it new spans are dropped, never waited
    /// for.
    #[arg(long, env = "SWITCHYARD_OTLP_QUEUE_SIZE", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub otlp_queue_size: u32,
    /// How often waiting spans are sent.
    #[arg(long, env = "SWITCHYARD_OTLP_EXPORT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub otlp_export_interval: Duration,
    /// Longest one export may take (a collector that accepts connections but does not
    /// answer).
    #[arg(long, env = "SWITCHYARD_OTLP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub otlp_timeout: Duration,
}

/// The trace pipeline, flushed by [`Telemetry::shutdown`] before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (the gateway then makes its request-path spans).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued (bounded by the export timeout) and stops the exporter.
    /// Must run while the Tokio runtime is alive (the gRPC channel is driven by it).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: could not flush the last traces: {e}");
        }
    }
}

/// Installs the global subscriber: the log layer, and the OpenTelemetry layer when `traces`
/// names an endpoint. Must be called inside the Tokio runtime (the exporter's gRPC channel
/// lives on it).
pub fn init(log: &LogArgs, traces: Option<&TraceArgs>, service: &str) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let Some((args, endpoint)) = traces.and_then(|t| Some((t, t.otlp_endpoint.as_deref()?))) else {
        // No traces: the log filter is the subscriber's (what is filtered out costs nothing).
        tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(log.log_format))
            .init();
        return Ok(Telemetry { provider: None });
    };
    let provider = provider(args, endpoint, service)?;
    let tracer = provider.tracer("switchyard");
    // Switchyard's spans (and the events inside them, as span events), not its
    // dependencies'.
    let exported = Targets::new()
        .with_target("switchyard", LevelFilter::INFO)
        .with_target("switchyard_gateway", LevelFilter::INFO)
        .with_target("switchyard_control_plane", LevelFilter::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        // A span is started when its first child (or its end) needs it, not when first
        // entered: the request span is named (`chat {model}`) once its body is read.
        .with_context_activation(false)
        .with_filter(exported.clone());
    // One filter for the subscriber (an `EnvFilter` as a per-layer filter was seen to lose
    // events under concurrency): `--log` decides the log lines, and Switchyard's spans are
    // made whatever it says, so `--log warn` still exports every request.
    tracing_subscriber::registry()
        .with(LogsAndSpans {
            logs: filter,
            spans: exported.clone(),
        })
        .with(log_layer(log.log_format))
        .with(otel)
        .init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing::info!(endpoint, service, "exporting traces over OTLP/gRPC");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The subscriber's filter with traces: what `--log` enables, plus Switchyard's spans.
struct LogsAndSpans {
    logs: tracing_subscriber::EnvFilter,
    spans: Targets,
}

impl LogsAndSpans {
    fn exported(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span() && self.spans.would_enable(meta.target(), meta.level())
    }
}

impl<S> Layer<S> for LogsAndSpans
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.exported(meta) {
            return tracing::subscriber::Interest::always();
        }
        Layer::<S>::register_callsite(&self.logs, meta)
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.exported(meta) || Layer::<S>::enabled(&self.logs, meta, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let logs = Layer::<S>::max_level_hint(&self.logs)?;
        Some(logs.max(LevelFilter::INFO))
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        Layer::<S>::on_new_span(&self.logs, attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        Layer::<S>::on_record(&self.logs, id, values, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        Layer::<S>::on_enter(&self.logs, id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        Layer::<S>::on_exit(&self.logs, id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        Layer::<S>::on_close(&self.logs, id, cx);
    }
}

/// The log lines: text or JSON on stderr, coloured only on a terminal.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(crate::cli::colour_logs());
    match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    }
}

fn provider(args: &TraceArgs, endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(args.otlp_timeout);
    if endpoint.starts_with("https://") {
        exporter = exporter.with_tls_config(
            opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_native_roots(),
        );
    }
    let exporter = exporter
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let queue = usize::try_from(args.otlp_queue_size).unwrap_or(usize::MAX);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(queue)
        .with_max_export_batch_size(queue.min(512))
        .with_scheduled_delay(args.otlp_export_interval)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let service = args
        .otlp_service_name
        .as_deref()
        .unwrap_or(service)
        .to_owned();
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let sampler =
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(args.otlp_sample_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build())
}

/// An `http://` or `https://` URL with a host.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("'{s}' is not an OTLP/gRPC endpoint: use http://host:4317 or https://host:4317")
        })?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("'{s}' has no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("'{s}': '{port}' is not a port"));
    }
    Ok(s.to_owned())
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{s}' is not a fraction between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_ratios_are_checked() {
        assert!(parse_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(parse_endpoint("https://otel.example.com").is_ok());
        assert!(parse_endpoint("http://[::1]:4317").is_ok());
        for bad in [
            "127.0.0.1:4317",
            "grpc://collector:4317",
            "http://",
            "http://:4317",
            "http://collector:port",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("half").is_err());
    }
}
