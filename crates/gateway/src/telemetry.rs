//! Metric names and the small helpers that record them. Labels are low-cardinality: proxy
//! and route names (bounded by the snapshot), status codes, and fixed reason/kind sets.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram, SharedString, counter, gauge, histogram};

pub(crate) const REQUESTS_TOTAL: &str = "switchyard_gateway_requests_total";
pub(crate) const REQUEST_DURATION: &str = "switchyard_gateway_request_duration_seconds";
pub(crate) const UPSTREAM_ERRORS_TOTAL: &str = "switchyard_gateway_upstream_errors_total";
pub(crate) const FALLBACKS_TOTAL: &str = "switchyard_gateway_fallbacks_total";
pub(crate) const SNAPSHOT_VERSION: &str = "switchyard_gateway_snapshot_version";
pub(crate) const SNAPSHOT_APPLIES_TOTAL: &str = "switchyard_gateway_snapshot_applies_total";
pub(crate) const CONTROL_PLANE_CONNECTED: &str = "switchyard_gateway_control_plane_connected";
/// Tokens by `type` (`input`, `output`, `cached_input`, `reasoning`), after
/// OpenTelemetry's `gen_ai.client.token.usage`.
pub(crate) const TOKENS_TOTAL: &str = "switchyard_gateway_tokens_total";
/// Time from the request's arrival to the first byte of a streamed answer sent to the
/// client, after `gen_ai.server.time_to_first_token`.
pub(crate) const TIME_TO_FIRST_TOKEN: &str = "switchyard_gateway_time_to_first_token_seconds";
/// Successful answers whose upstream reported no usage.
pub(crate) const USAGE_MISSING_TOTAL: &str = "switchyard_gateway_usage_missing_total";

/// The label value for "no proxy / no route was chosen".
pub(crate) const NONE: &str = "none";

/// A label value that is either static or shared with the routing table (no copy).
#[derive(Debug, Clone)]
pub(crate) enum Label {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    pub(crate) fn shared(&self) -> SharedString {
        match self {
            Label::Static(s) => SharedString::const_str(s),
            Label::Shared(s) => SharedString::from(Arc::clone(s)),
        }
    }
}

/// A route's metric handles for the common case (a `200`, its input and output tokens),
/// looked up once per route and table rather than once per request.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    ok: Counter,
    duration: Histogram,
    input_tokens: Counter,
    output_tokens: Counter,
}

impl RouteMetrics {
    pub(crate) fn new(proxy: &Label, route: &Label) -> RouteMetrics {
        RouteMetrics {
            ok: counter!(
                REQUESTS_TOTAL,
                "proxy" => proxy.shared(),
                "route" => route.shared(),
                "status" => status_label(200),
            ),
            duration: histogram!(
                REQUEST_DURATION,
                "proxy" => proxy.shared(),
                "route" => route.shared(),
            ),
            input_tokens: counter!(
                TOKENS_TOTAL,
                "proxy" => proxy.shared(),
                "route" => route.shared(),
                "type" => "input",
            ),
            output_tokens: counter!(
                TOKENS_TOTAL,
                "proxy" => proxy.shared(),
                "route" => route.shared(),
                "type" => "output",
            ),
        }
    }

    /// [`request_finished`] for a `200`.
    pub(crate) fn ok(&self, elapsed: Duration) {
        self.ok.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    /// [`tokens`] of type `input` and `output`.
    pub(crate) fn tokens(&self, input: u64, output: u64) {
        self.input_tokens.increment(input);
        self.output_tokens.increment(output);
    }
}

pub(crate) fn request_finished(proxy: &Label, route: &Label, status: u16, elapsed: Duration) {
    counter!(
        REQUESTS_TOTAL,
        "proxy" => proxy.shared(),
        "route" => route.shared(),
        "status" => status_label(status),
    )
    .increment(1);
    histogram!(
        REQUEST_DURATION,
        "proxy" => proxy.shared(),
        "route" => route.shared(),
    )
    .record(elapsed.as_secs_f64());
}

pub(crate) fn tokens(proxy: &Label, route: &Label, kind: &'static str, count: u64) {
    counter!(
        TOKENS_TOTAL,
        "proxy" => proxy.shared(),
        "route" => route.shared(),
        "type" => kind,
    )
    .increment(count);
}

pub(crate) fn time_to_first_token(proxy: &Label, route: &Label, elapsed: Duration) {
    histogram!(
        TIME_TO_FIRST_TOKEN,
        "proxy" => proxy.shared(),
        "route" => route.shared(),
    )
    .record(elapsed.as_secs_f64());
}

pub(crate) fn usage_missing(proxy: &Label, route: &Label) {
    counter!(
        USAGE_MISSING_TOTAL,
        "proxy" => proxy.shared(),
        "route" => route.shared(),
    )
    .increment(1);
}

pub(crate) fn upstream_error(proxy: &Label, route: &Label, kind: &'static str) {
    counter!(
        UPSTREAM_ERRORS_TOTAL,
        "proxy" => proxy.shared(),
        "route" => route.shared(),
        "kind" => kind,
    )
    .increment(1);
}

pub(crate) fn fallback(proxy: &Label, from_route: &Label, reason: &'static str) {
    counter!(
        FALLBACKS_TOTAL,
        "proxy" => proxy.shared(),
        "from_route" => from_route.shared(),
        "reason" => reason,
    )
    .increment(1);
}

pub(crate) fn snapshot_applied(version: u64) {
    // A gauge holds an f64: exact for versions below 2^53.
    gauge!(SNAPSHOT_VERSION).set(version as f64);
}

/// How many proxies of the served snapshot this node could not compile.
pub(crate) fn proxy_failures(count: usize) {
    gauge!("switchyard_gateway_proxy_failures").set(count as f64);
}

pub(crate) fn snapshot_apply(result: &'static str) {
    counter!(SNAPSHOT_APPLIES_TOTAL, "result" => result).increment(1);
}

pub(crate) fn control_plane_connected(connected: bool) {
    gauge!(CONTROL_PLANE_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

fn status_label(status: u16) -> SharedString {
    let s = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        499 => "499",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return SharedString::from(other.to_string()),
    };
    SharedString::const_str(s)
}

/// A request's cost, in USD, by proxy, route and consumer (`none` without one). A gauge only
/// ever increased: the Prometheus exporter's counters hold whole numbers.
pub(crate) fn cost(proxy: &Label, route: &Label, consumer: Option<&str>, usd: f64) {
    metrics::gauge!("switchyard_gateway_cost_usd_total",
        "proxy" => proxy.shared(), "route" => route.shared(),
        "consumer" => consumer.unwrap_or(NONE).to_owned())
    .increment(usd);
}

/// A served request whose model has no price (it cost 0).
pub(crate) fn unpriced(proxy: &Label, route: &Label) {
    metrics::counter!("switchyard_gateway_unpriced_requests_total",
        "proxy" => proxy.shared(), "route" => route.shared())
    .increment(1);
}
