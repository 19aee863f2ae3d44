//! Usage: one record per proxied request ([`UsageEntry`], validated from what a node sends)
//! and the report query of `GET /api/v1/usage` ([`UsageQuery`], validated from the query
//! string, every parameter named when refused).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{ErrorCode, ValidationError};

/// The longest proxy, route, model, consumer or provider name a record carries (nodes cut
/// longer ones to this, in characters).
pub const MAX_LABEL_CHARS: usize = 256;
/// The largest token count of one record (larger is a broken node).
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// The largest cost of one record, in nano-USD (a million dollars).
pub const MAX_COST_NANO_USD: u64 = 1_000_000_000_000_000;
/// The most records in one batch from a node.
pub const MAX_BATCH_RECORDS: usize = 5_000;

/// Nano-USD per USD: costs are stored as integers so sums are exact.
pub const NANO_PER_USD: f64 = 1e9;

/// One finished request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEntry {
    /// Made on the node (UUID v7): the key that makes storage idempotent.
    pub id: Uuid,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    pub proxy_id: Uuid,
    pub proxy: String,
    /// Empty when no route was chosen.
    pub route: String,
    /// Empty when no model was chosen.
    pub model: String,
    /// Empty when the proxy does not authenticate consumers.
    pub consumer: String,
    pub provider: String,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nano_usd: u64,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
    pub fell_back: bool,
    pub stream: bool,
    pub estimated: bool,
}

impl UsageEntry {
    /// Counted in a report's `errors`: every answer with a status of 400 or more.
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }
}

/// Cuts `s` to [`MAX_LABEL_CHARS`] characters (what a node does before sending).
pub fn truncate_label(s: &str) -> &str {
    match s.char_indices().nth(MAX_LABEL_CHARS) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// USD as whole nano-USD (rounded; negative or not finite is 0).
pub fn usd_to_nano(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        // Saturating: `as` clamps a float too large for u64.
        (usd * NANO_PER_USD).round() as u64
    } else {
        0
    }
}

fn label(field: &str, value: &str) -> Result<String, ValidationError> {
    if value.chars().count() > MAX_LABEL_CHARS {
        return Err(ValidationError::invalid(
            field,
            format!("longer than {MAX_LABEL_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::invalid(field, "holds a control character"));
    }
    Ok(value.to_owned())
}

fn bounded(field: &str, value: u64, max: u64) -> Result<u64, ValidationError> {
    if value > max {
        return Err(ValidationError::invalid(field, format!("above {max}")));
    }
    Ok(value)
}

#[cfg(feature = "proto")]
mod proto {
    use super::*;
    use switchyard_proto::v1 as pb;

    /// The earliest and latest request times a record may carry (2020 … 2200).
    const EARLIEST_MS: i64 = 1_577_836_800_000;
    const LATEST_MS: i64 = 7_258_118_400_000;

    impl UsageEntry {
        /// Validates one record of a batch; errors name `records[index].<field>`.
        pub fn from_proto(
            index: usize,
            r: &pb::UsageRecord,
        ) -> Result<UsageEntry, ValidationError> {
            let field = |name: &str| format!("records[{index}].{name}");
            let id = <[u8; 16]>::try_from(r.id.as_slice())
                .map(Uuid::from_bytes)
                .map_err(|_| ValidationError::invalid(field("id"), "must be 16 bytes"))?;
            if id.is_nil() {
                return Err(ValidationError::invalid(field("id"), "must not be nil"));
            }
            if !(EARLIEST_MS..=LATEST_MS).contains(&r.at_unix_ms) {
                return Err(ValidationError::invalid(
                    field("at_unix_ms"),
                    "outside 2020-01-01 … 2200-01-01",
                ));
            }
            let at = DateTime::from_timestamp_millis(r.at_unix_ms)
                .ok_or_else(|| ValidationError::invalid(field("at_unix_ms"), "not a time"))?;
            let proxy_id = Uuid::parse_str(&r.proxy_id)
                .map_err(|_| ValidationError::invalid(field("proxy_id"), "must be a UUID"))?;
            let status = u16::try_from(r.status)
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| ValidationError::invalid(field("status"), "must be 100-599"))?;
            Ok(UsageEntry {
                id,
                at,
                proxy_id,
                proxy: label(&field("proxy"), &r.proxy)?,
                route: label(&field("route"), &r.route)?,
                model: label(&field("model"), &r.model)?,
                consumer: label(&field("consumer"), &r.consumer)?,
                provider: label(&field("provider"), &r.provider)?,
                status,
                input_tokens: bounded(&field("input_tokens"), r.input_tokens, MAX_TOKENS)?,
                output_tokens: bounded(&field("output_tokens"), r.output_tokens, MAX_TOKENS)?,
                cached_input_tokens: bounded(
                    &field("cached_input_tokens"),
                    r.cached_input_tokens,
                    MAX_TOKENS,
                )?,
                reasoning_tokens: bounded(
                    &field("reasoning_tokens"),
                    r.reasoning_tokens,
                    MAX_TOKENS,
                )?,
                cost_nano_usd: bounded(
                    &field("cost_nano_usd"),
                    r.cost_nano_usd,
                    MAX_COST_NANO_USD,
                )?,
                latency_us: bounded(&field("latency_us"), r.latency_us, MAX_TOKENS)?,
                ttft_us: r
                    .ttft_us
                    .map(|v| bounded(&field("ttft_us"), v, MAX_TOKENS))
                    .transpose()?,
                fell_back: r.fell_back,
                stream: r.stream,
                estimated: r.estimated,
            })
        }
    }

    impl From<&UsageEntry> for pb::UsageRecord {
        fn from(e: &UsageEntry) -> pb::UsageRecord {
            pb::UsageRecord {
                id: e.id.as_bytes().to_vec(),
                at_unix_ms: e.at.timestamp_millis(),
                proxy_id: e.proxy_id.to_string(),
                proxy: e.proxy.clone(),
                route: e.route.clone(),
                model: e.model.clone(),
                consumer: e.consumer.clone(),
                status: u32::from(e.status),
                input_tokens: e.input_tokens,
                output_tokens: e.output_tokens,
                cached_input_tokens: e.cached_input_tokens,
                reasoning_tokens: e.reasoning_tokens,
                cost_nano_usd: e.cost_nano_usd,
                latency_us: e.latency_us,
                ttft_us: e.ttft_us,
                fell_back: e.fell_back,
                stream: e.stream,
                estimated: e.estimated,
                provider: e.provider.clone(),
            }
        }
    }
}

/// A dimension a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupBy {
    Gateway,
    Proxy,
    Route,
    Model,
    Consumer,
    Day,
}

impl GroupBy {
    pub const ALL: [GroupBy; 6] = [
        GroupBy::Gateway,
        GroupBy::Proxy,
        GroupBy::Route,
        GroupBy::Model,
        GroupBy::Consumer,
        GroupBy::Day,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Gateway => "gateway",
            GroupBy::Proxy => "proxy",
            GroupBy::Route => "route",
            GroupBy::Model => "model",
            GroupBy::Consumer => "consumer",
            GroupBy::Day => "day",
        }
    }

    fn parse(s: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// The longest range one report may cover (a little over a leap year).
pub const MAX_RANGE_DAYS: i64 = 400;

/// A validated `GET /usage` query: `[from, to)`, the grouping (in the order given), and the
/// filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Vec<GroupBy>,
    pub gateway: Option<String>,
    pub proxy: Option<Uuid>,
    pub route: Option<String>,
    pub model: Option<String>,
    pub consumer: Option<String>,
}

/// The query parameters `GET /usage` takes.
pub const USAGE_PARAMS: [&str; 8] = [
    "from", "to", "group_by", "gateway", "proxy", "route", "model", "consumer",
];

impl UsageQuery {
    /// Validates the decoded query parameters. `from` and `to` are required RFC 3339 times;
    /// `group_by` is a comma-separated list of dimensions (none: one row of totals);
    /// filters are exact matches (`proxy` a proxy id; `consumer=` with an empty value:
    /// requests without a consumer). A malformed, unknown or repeated parameter is a 400
    /// naming it; the rules across parameters (`from` before `to`, at most
    /// [`MAX_RANGE_DAYS`] apart) are a 422 naming `to`.
    pub fn parse(pairs: &[(String, String)]) -> Result<UsageQuery, ValidationError> {
        let bad = |field: &str, msg: String| ValidationError::new(ErrorCode::Malformed, field, msg);
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in pairs {
            let Some(known) = USAGE_PARAMS.iter().find(|p| **p == k) else {
                return Err(bad(
                    k,
                    format!(
                        "unknown parameter; expected one of {}",
                        USAGE_PARAMS.join(", ")
                    ),
                ));
            };
            if seen.contains(known) {
                return Err(bad(k, "given more than once".to_owned()));
            }
            seen.push(known);
        }
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let time = |name: &str| -> Result<DateTime<Utc>, ValidationError> {
            let v = get(name).ok_or_else(|| {
                bad(
                    name,
                    "required (an RFC 3339 time, e.g. 2026-11-01T00:00:00Z)".into(),
                )
            })?;
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    bad(
                        name,
                        format!("not an RFC 3339 time ({e}), e.g. 2026-11-01T00:00:00Z"),
                    )
                })
        };
        let from = time("from")?;
        let to = time("to")?;
        // Rules across parameters: 422, like every rule of the admin API.
        if from >= to {
            return Err(ValidationError::rule("to", "must be after from"));
        }
        if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
            return Err(ValidationError::rule(
                "to",
                format!("at most {MAX_RANGE_DAYS} days after from"),
            ));
        }
        let mut group_by = Vec::new();
        if let Some(list) = get("group_by").filter(|v| !v.is_empty()) {
            for part in list.split(',') {
                let g = GroupBy::parse(part).ok_or_else(|| {
                    bad(
                        "group_by",
                        format!(
                            "unknown dimension '{}'; expected a comma-separated list of gateway, proxy, route, model, consumer, day",
                            part.chars().take(64).collect::<String>()
                        ),
                    )
                })?;
                // A repeated dimension is the same grouping.
                if !group_by.contains(&g) {
                    group_by.push(g);
                }
            }
        }
        let text = |name: &str, empty_ok: bool| -> Result<Option<String>, ValidationError> {
            match get(name) {
                None => Ok(None),
                Some("") if !empty_ok => Err(bad(name, "must not be empty".into())),
                Some(v) if v.chars().count() > MAX_LABEL_CHARS => Err(bad(
                    name,
                    format!("longer than {MAX_LABEL_CHARS} characters"),
                )),
                Some(v) if v.chars().any(char::is_control) => {
                    Err(bad(name, "holds a control character".into()))
                }
                Some(v) => Ok(Some(v.to_owned())),
            }
        };
        let proxy = match get("proxy") {
            None => None,
            Some(v) => Some(
                Uuid::parse_str(v)
                    .map_err(|_| bad("proxy", "must be a proxy id (a UUID)".into()))?,
            ),
        };
        let gateway = text("gateway", false)?;
        if let Some(g) = &gateway {
            crate::validate_gateway_name("gateway", g).map_err(|e| bad("gateway", e.message))?;
        }
        Ok(UsageQuery {
            from,
            to,
            group_by,
            gateway,
            proxy,
            route: text("route", true)?,
            model: text("model", true)?,
            consumer: text("consumer", true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(s: &[(&str, &str)]) -> Result<UsageQuery, ValidationError> {
        let pairs: Vec<(String, String)> = s
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        UsageQuery::parse(&pairs)
    }

    const FROM: (&str, &str) = ("from", "2026-11-01T00:00:00Z");
    const TO: (&str, &str) = ("to", "2026-11-02T00:00:00+01:00");

    #[test]
    fn parses_a_full_query() {
        let query = q(&[
            FROM,
            TO,
            ("group_by", "consumer,day"),
            ("gateway", "prod-eu"),
            ("consumer", ""),
            ("proxy", "0195f3a2-0000-7000-8000-000000000001"),
        ])
        .unwrap();
        assert_eq!(query.group_by, vec![GroupBy::Consumer, GroupBy::Day]);
        assert_eq!(query.consumer.as_deref(), Some(""));
        assert_eq!(query.gateway.as_deref(), Some("prod-eu"));
        assert_eq!(query.to.to_rfc3339(), "2026-11-01T23:00:00+00:00");
    }

    #[test]
    fn names_each_bad_parameter() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![TO], "from"),
            (vec![FROM], "to"),
            (vec![("from", "yesterday"), TO], "from"),
            (vec![FROM, ("to", "2026-13-01T00:00:00Z")], "to"),
            (vec![FROM, TO, ("group_by", "consumer,week")], "group_by"),
            (vec![FROM, TO, ("group_by", "consumer, day")], "group_by"),
            (vec![FROM, TO, ("gateway", "Prod EU")], "gateway"),
            (vec![FROM, TO, ("gateway", "")], "gateway"),
            (vec![FROM, TO, ("proxy", "support")], "proxy"),
            (vec![FROM, TO, ("consumer", "a\nb")], "consumer"),
            (vec![FROM, TO, ("limit", "3")], "limit"),
            (vec![FROM, FROM, TO], "from"),
        ];
        for (params, field) in cases {
            let e = q(&params).unwrap_err();
            assert_eq!(e.field, field, "{params:?}: {e}");
            assert_eq!(e.code, ErrorCode::Malformed);
        }
        for params in [
            vec![
                ("from", "2026-11-02T00:00:00Z"),
                ("to", "2026-11-01T00:00:00Z"),
            ],
            vec![FROM, ("to", "2028-11-01T00:00:00Z")],
        ] {
            let e = q(&params).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.code),
                ("to", ErrorCode::RuleViolated),
                "{e}"
            );
        }
        let repeated = q(&[FROM, TO, ("group_by", "day,consumer,day")]).unwrap();
        assert_eq!(repeated.group_by, vec![GroupBy::Day, GroupBy::Consumer]);
    }

    #[test]
    fn truncates_labels_on_char_boundaries() {
        let long = "é".repeat(300);
        assert_eq!(truncate_label(&long).chars().count(), MAX_LABEL_CHARS);
        assert_eq!(truncate_label("gpt-4.1"), "gpt-4.1");
        assert_eq!(usd_to_nano(0.000_123_4), 123_400);
        assert_eq!(usd_to_nano(-1.0), 0);
        assert_eq!(usd_to_nano(f64::NAN), 0);
    }

    #[cfg(feature = "proto")]
    #[test]
    fn records_round_trip_and_refuse_garbage() {
        use switchyard_proto::v1 as pb;
        let entry = UsageEntry {
            id: Uuid::now_v7(),
            at: DateTime::from_timestamp_millis(1_795_000_000_000).unwrap(),
            proxy_id: Uuid::new_v4(),
            proxy: "support".into(),
            route: "openai".into(),
            model: "gpt-4.1".into(),
            consumer: String::new(),
            provider: "openai".into(),
            status: 200,
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 2,
            reasoning_tokens: 1,
            cost_nano_usd: 1234,
            latency_us: 5000,
            ttft_us: Some(700),
            fell_back: true,
            stream: true,
            estimated: false,
        };
        let wire = pb::UsageRecord::from(&entry);
        assert_eq!(UsageEntry::from_proto(0, &wire).unwrap(), entry);
        let broken: Vec<(pb::UsageRecord, &str)> = vec![
            (
                pb::UsageRecord {
                    id: vec![1; 3],
                    ..wire.clone()
                },
                "records[4].id",
            ),
            (
                pb::UsageRecord {
                    id: vec![0; 16],
                    ..wire.clone()
                },
                "records[4].id",
            ),
            (
                pb::UsageRecord {
                    at_unix_ms: -5,
                    ..wire.clone()
                },
                "records[4].at_unix_ms",
            ),
            (
                pb::UsageRecord {
                    proxy_id: "x".into(),
                    ..wire.clone()
                },
                "records[4].proxy_id",
            ),
            (
                pb::UsageRecord {
                    status: 70_000,
                    ..wire.clone()
                },
                "records[4].status",
            ),
            (
                pb::UsageRecord {
                    model: "m".repeat(257),
                    ..wire.clone()
                },
                "records[4].model",
            ),
            (
                pb::UsageRecord {
                    route: "a\u{0}".into(),
                    ..wire.clone()
                },
                "records[4].route",
            ),
            (
                pb::UsageRecord {
                    input_tokens: u64::MAX,
                    ..wire.clone()
                },
                "records[4].input_tokens",
            ),
            (
                pb::UsageRecord {
                    cost_nano_usd: u64::MAX,
                    ..wire.clone()
                },
                "records[4].cost_nano_usd",
            ),
        ];
        for (record, field) in broken {
            assert_eq!(UsageEntry::from_proto(4, &record).unwrap_err().field, field);
        }
    }
}
