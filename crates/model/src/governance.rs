//! Governance: who may call a proxy (consumers and their keys), how much (rate limits and
//! budgets) and at what cost (the price table). Validated admin input here; enforcement is
//! the gateway's, with counters shared through Redis.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::input::parse_strict;
use crate::names::validate_name;
use crate::{Limits, Selector, ValidationError};

/// Whether a proxy serves only requests carrying a live consumer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub required: bool,
}

/// One rate limit of a proxy or a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub amount: LimitAmount,
    pub window: Window,
    pub key: LimitKey,
}

/// What a limit counts, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAmount {
    /// Input + output tokens as the provider reports them.
    Tokens(u64),
    /// Admitted requests.
    Requests(u64),
}

impl LimitAmount {
    pub fn value(self) -> u64 {
        match self {
            LimitAmount::Tokens(n) | LimitAmount::Requests(n) => n,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            LimitAmount::Tokens(_) => "tokens",
            LimitAmount::Requests(_) => "requests",
        }
    }
}

/// A fixed window's length, written `Ns`, `Nm`, `Nh` or `Nd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub seconds: u64,
    /// How it was written (`"1h"` stays `"1h"`, not `"3600s"`).
    pub unit: char,
}

/// The longest window: a year.
pub const MAX_WINDOW_SECONDS: u64 = 366 * 86_400;

impl Window {
    pub fn parse(field: &str, text: &str) -> Result<Window, ValidationError> {
        let bad = |why: &str| {
            ValidationError::invalid(
                field,
                format!(
                    "{why}; expected a whole number followed by s, m, h or d, such as 30s, 1m, 1h or 1d"
                ),
            )
        };
        let text = text.trim();
        let Some(unit) = text.chars().last() else {
            return Err(bad("empty window"));
        };
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad(&format!("unknown window unit in '{text}'"))),
        };
        let digits = &text[..text.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("'{text}' is not a window")));
        }
        let n: u64 = digits.parse().map_err(|_| bad("window too long"))?;
        if n == 0 {
            return Err(bad("a window must be at least 1"));
        }
        let seconds = n
            .checked_mul(scale)
            .filter(|s| *s <= MAX_WINDOW_SECONDS)
            .ok_or_else(|| bad("a window is at most 366d"))?;
        Ok(Window { seconds, unit })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = match self.unit {
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => 1,
        };
        if self.seconds.is_multiple_of(scale) {
            write!(f, "{}{}", self.seconds / scale, self.unit)
        } else {
            write!(f, "{}s", self.seconds)
        }
    }
}

/// What a limit counts separately: one counter for the owner, one per consumer, or one per
/// distinct value of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Proxy,
    Consumer,
    Selector(Selector),
}

impl LimitKey {
    /// `proxy`, `consumer` (also `#[attributes.consumer]`), or a header or query selector.
    pub fn parse(field: &str, text: &str) -> Result<LimitKey, ValidationError> {
        let trimmed = text.trim();
        let inner = trimmed
            .strip_prefix("#[")
            .and_then(|s| s.strip_suffix(']'))
            .map(str::trim)
            .unwrap_or(trimmed);
        match inner {
            "proxy" => Ok(LimitKey::Proxy),
            "consumer" | "attributes.consumer" => Ok(LimitKey::Consumer),
            _ => Selector::parse(field, trimmed)
                .map(LimitKey::Selector)
                .map_err(|e| {
                    ValidationError::invalid(
                        field,
                        format!(
                            "{}; a limit's key is 'proxy', 'consumer' or a selector such as #[attributes.headers['x-tenant']]",
                            e.message
                        ),
                    )
                }),
        }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::Proxy => f.write_str("proxy"),
            LimitKey::Consumer => f.write_str("consumer"),
            LimitKey::Selector(s) => write!(f, "{s}"),
        }
    }
}

/// The stored and shown form of a rate limit (the admin API's).
#[derive(Serialize, Deserialize)]
struct RateLimitWire {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
    window: String,
    key: String,
}

impl Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (tokens, requests) = match self.amount {
            LimitAmount::Tokens(n) => (Some(n), None),
            LimitAmount::Requests(n) => (None, Some(n)),
        };
        RateLimitWire {
            name: self.name.clone(),
            tokens,
            requests,
            window: self.window.to_string(),
            key: self.key.to_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = RateLimitWire::deserialize(d)?;
        let amount = match (wire.tokens, wire.requests) {
            (Some(n), None) => LimitAmount::Tokens(n),
            (None, Some(n)) => LimitAmount::Requests(n),
            _ => return Err(D::Error::custom("a rate limit has tokens or requests")),
        };
        Ok(RateLimit {
            name: wire.name,
            amount,
            window: Window::parse("window", &wire.window).map_err(D::Error::custom)?,
            key: LimitKey::parse("key", &wire.key).map_err(D::Error::custom)?,
        })
    }
}

/// A spending cap in USD per UTC calendar day or month.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub usd: f64,
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    /// The period holding `t`: its label (`2026-11-25` or `2026-11`) and when it ends.
    pub fn containing(self, t: DateTime<Utc>) -> (String, DateTime<Utc>) {
        use chrono::{Datelike, NaiveDate, TimeZone};
        let date = t.date_naive();
        match self {
            BudgetPeriod::Day => {
                let next = date.succ_opt().unwrap_or(date);
                let end = Utc.from_utc_datetime(&next.and_time(chrono::NaiveTime::MIN));
                (date.format("%Y-%m-%d").to_string(), end)
            }
            BudgetPeriod::Month => {
                let (y, m) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                let next = NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(date);
                let end = Utc.from_utc_datetime(&next.and_time(chrono::NaiveTime::MIN));
                (date.format("%Y-%m").to_string(), end)
            }
        }
    }
}

/// Which proxies a consumer may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerProxies {
    /// `["*"]`: every proxy.
    All,
    Only(Vec<Uuid>),
}

impl ConsumerProxies {
    pub fn allows(&self, proxy: Uuid) -> bool {
        match self {
            ConsumerProxies::All => true,
            ConsumerProxies::Only(ids) => ids.contains(&proxy),
        }
    }
}

impl Serialize for ConsumerProxies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConsumerProxies::All => ["*"].serialize(s),
            ConsumerProxies::Only(ids) => ids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ConsumerProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let items = Vec::<String>::deserialize(d)?;
        if items.iter().any(|s| s == "*") {
            return Ok(ConsumerProxies::All);
        }
        items
            .iter()
            .map(|s| Uuid::parse_str(s).map_err(D::Error::custom))
            .collect::<Result<_, _>>()
            .map(ConsumerProxies::Only)
    }
}

/// A validated consumer definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerSpec {
    pub name: String,
    pub proxies: ConsumerProxies,
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A stored consumer with its keys (never their secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub id: Uuid,
    pub version: u64,
    #[serde(flatten)]
    pub spec: ConsumerSpec,
    pub keys: Vec<ConsumerKey>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A consumer key as shown: its id and the first characters of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerKey {
    pub id: Uuid,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The secret of a new key: `sy_` and 32 characters of base62 (190 bits).
pub const KEY_PREFIX: &str = "sy_";
/// How many characters of a key (after `sy_`) are kept to show which key it is.
pub const KEY_SHOWN_CHARS: usize = 8;
/// The length of a key's secret part.
pub const KEY_SECRET_CHARS: usize = 32;

/// A consumer key's hash: SHA-256 of the whole key string. Keys are 190 random bits, so a
/// fast hash is as strong as a slow one here (no dictionary to try).
pub fn key_hash(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// Whether `key` has the shape of a consumer key (so a malformed one is refused before any
/// lookup).
pub fn is_key_shaped(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_SECRET_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// A consumer as a node needs it: what it may call, its limits, and its live keys' hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeConsumer {
    pub name: String,
    pub proxies: ConsumerProxies,
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    pub keys: Vec<NodeKey>,
}

/// A key's hash and expiry, as nodes receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKey {
    pub id: Uuid,
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
    pub expires_at: Option<DateTime<Utc>>,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        use serde::de::Error;
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(D::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("a key hash is 32 bytes"))
    }
}

/// One model's price, in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Cached input tokens; when absent they cost as much as other input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
}

impl Price {
    /// The cost in USD of `input` tokens (of which `cached` were cached) and `output` tokens.
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> f64 {
        let cached = cached.min(input);
        let cached_rate = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        ((input - cached) as f64 * self.input_per_mtok
            + cached as f64 * cached_rate
            + output as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

// ---- admin input --------------------------------------------------------------------------

/// A rate limit as written by an admin (strict).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    pub name: String,
    #[serde(default)]
    pub tokens: Option<serde_json::Number>,
    #[serde(default)]
    pub requests: Option<serde_json::Number>,
    pub window: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// A budget as written by an admin (strict).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    pub usd: serde_json::Number,
    pub period: String,
}

/// The body of `POST /consumers` and `PUT /consumers/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerInput {
    pub name: String,
    pub proxies: Vec<String>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitInput>,
    #[serde(default)]
    pub budget: Option<BudgetInput>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The version a `PUT` replaces (optimistic concurrency).
    #[serde(default, deserialize_with = "crate::input::version")]
    pub version: Option<u64>,
    #[serde(default)]
    pub id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub keys: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

/// The body of `POST /consumers/{name}/keys` (may be empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// The body of `PUT /prices/{model}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    #[serde(default)]
    pub model: Option<String>,
    pub input_per_mtok: serde_json::Number,
    pub output_per_mtok: serde_json::Number,
    #[serde(default)]
    pub cached_input_per_mtok: Option<serde_json::Number>,
}

/// The most metadata a consumer carries, serialised.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The longest model name in the price table.
pub const MAX_MODEL_NAME: usize = 200;

pub fn parse_consumer_input(body: &[u8]) -> Result<ConsumerInput, ValidationError> {
    parse_strict(body)
}

pub fn parse_key_input(body: &[u8]) -> Result<KeyInput, ValidationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(KeyInput::default());
    }
    parse_strict(body)
}

pub fn parse_price_input(body: &[u8]) -> Result<PriceInput, ValidationError> {
    parse_strict(body)
}

/// A whole, positive number (a limit's amount); `5.0` is as whole as `5` in JSON.
fn positive_count(field: &str, n: &serde_json::Number) -> Result<u64, ValidationError> {
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    });
    match whole {
        Some(v) if v > 0 => Ok(v),
        _ => Err(ValidationError::invalid(
            field,
            format!("must be a whole number of at least 1, not {n}"),
        )),
    }
}

/// A finite, non-negative amount of money (or a price).
fn non_negative(field: &str, n: &serde_json::Number) -> Result<f64, ValidationError> {
    match n.as_f64() {
        Some(v) if (0.0..=1e12).contains(&v) => Ok(v),
        _ => Err(ValidationError::invalid(
            field,
            format!("must be a finite number of at least 0, not {n}"),
        )),
    }
}

impl RateLimitInput {
    /// `default_key` is the owner's natural key (`proxy` for a proxy, `consumer` for a
    /// consumer).
    pub fn validate(
        self,
        field: &str,
        default_key: LimitKey,
    ) -> Result<RateLimit, ValidationError> {
        validate_name(&format!("{field}.name"), &self.name)?;
        let amount = match (&self.tokens, &self.requests) {
            (Some(n), None) => LimitAmount::Tokens(positive_count(&format!("{field}.tokens"), n)?),
            (None, Some(n)) => {
                LimitAmount::Requests(positive_count(&format!("{field}.requests"), n)?)
            }
            _ => {
                return Err(ValidationError::rule(
                    field,
                    "a rate limit has exactly one of 'tokens' or 'requests'",
                ));
            }
        };
        let window = Window::parse(&format!("{field}.window"), &self.window)?;
        let key = match &self.key {
            None => default_key,
            Some(text) => LimitKey::parse(&format!("{field}.key"), text)?,
        };
        Ok(RateLimit {
            name: self.name,
            amount,
            window,
            key,
        })
    }
}

/// Validates an owner's list of limits: each one, at most `limits.rate_limits_per_owner`, and
/// names unique.
pub fn validate_rate_limits(
    field: &str,
    inputs: Vec<RateLimitInput>,
    default_key: LimitKey,
    limits: &Limits,
) -> Result<Vec<RateLimit>, ValidationError> {
    if inputs.len() > limits.rate_limits_per_owner {
        return Err(ValidationError::limit(
            field,
            format!(
                "at most {} rate limits, not {}",
                limits.rate_limits_per_owner,
                inputs.len()
            ),
        ));
    }
    let mut out: Vec<RateLimit> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let item = format!("{field}[{i}]");
        let limit = input.validate(&item, default_key.clone())?;
        if out.iter().any(|l| l.name == limit.name) {
            return Err(ValidationError::rule(
                format!("{item}.name"),
                format!("rate limit name '{}' is used twice", limit.name),
            ));
        }
        out.push(limit);
    }
    Ok(out)
}

impl BudgetInput {
    pub fn validate(self, field: &str) -> Result<Budget, ValidationError> {
        let usd = non_negative(&format!("{field}.usd"), &self.usd)?;
        let period = match self.period.as_str() {
            "day" => BudgetPeriod::Day,
            "month" => BudgetPeriod::Month,
            other => {
                return Err(ValidationError::invalid(
                    format!("{field}.period"),
                    format!("unknown period '{other}'; expected 'day' or 'month'"),
                ));
            }
        };
        Ok(Budget { usd, period })
    }
}

impl ConsumerInput {
    /// Validates every rule and limit. Whether the named proxies exist is the store's to
    /// check, in the write's transaction.
    pub fn validate(self, limits: &Limits) -> Result<ConsumerSpec, ValidationError> {
        validate_name("name", &self.name)?;
        let proxies = if self.proxies.iter().any(|p| p == "*") {
            if self.proxies.len() > 1 {
                return Err(ValidationError::rule(
                    "proxies",
                    "'*' (every proxy) stands alone",
                ));
            }
            ConsumerProxies::All
        } else {
            let mut ids = Vec::with_capacity(self.proxies.len());
            for (i, p) in self.proxies.iter().enumerate() {
                let id = Uuid::parse_str(p).map_err(|_| {
                    ValidationError::invalid(
                        format!("proxies[{i}]"),
                        format!("'{p}' is not a proxy id (or '*' for every proxy)"),
                    )
                })?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if ids.len() > limits.proxies_per_consumer {
                return Err(ValidationError::limit(
                    "proxies",
                    format!(
                        "at most {} proxies per consumer",
                        limits.proxies_per_consumer
                    ),
                ));
            }
            ConsumerProxies::Only(ids)
        };
        let rate_limits =
            validate_rate_limits("rate_limits", self.rate_limits, LimitKey::Consumer, limits)?;
        let budget = self.budget.map(|b| b.validate("budget")).transpose()?;
        let metadata = self.metadata.unwrap_or_default();
        let size = serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len());
        if size > MAX_METADATA_BYTES {
            return Err(ValidationError::limit(
                "metadata",
                format!("at most {MAX_METADATA_BYTES} bytes of JSON"),
            ));
        }
        Ok(ConsumerSpec {
            name: self.name,
            proxies,
            rate_limits,
            budget,
            metadata,
        })
    }
}

impl KeyInput {
    /// The expiry, which must be in the future.
    pub fn validate(self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ValidationError> {
        let Some(text) = self.expires_at else {
            return Ok(None);
        };
        let t = DateTime::parse_from_rfc3339(&text)
            .map_err(|e| {
                ValidationError::invalid(
                    "expires_at",
                    format!("not an RFC 3339 time ({e}), e.g. 2027-01-01T00:00:00Z"),
                )
            })?
            .with_timezone(&Utc);
        if t <= now {
            return Err(ValidationError::invalid(
                "expires_at",
                "must be in the future",
            ));
        }
        Ok(Some(t))
    }
}

/// A model name of the price table: 1–200 printable characters without spaces.
pub fn validate_model_name(field: &str, model: &str) -> Result<(), ValidationError> {
    let ok = !model.is_empty()
        && model.len() <= MAX_MODEL_NAME
        && model.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            format!("must be 1-{MAX_MODEL_NAME} printable characters without spaces"),
        ))
    }
}

impl PriceInput {
    /// `model` is the path's; a body naming another model is refused.
    pub fn validate(self, model: &str) -> Result<Price, ValidationError> {
        validate_model_name("model", model)?;
        if let Some(m) = &self.model
            && m != model
        {
            return Err(ValidationError::rule(
                "model",
                format!("the body names '{m}' but the path names '{model}'"),
            ));
        }
        Ok(Price {
            model: model.to_owned(),
            input_per_mtok: non_negative("input_per_mtok", &self.input_per_mtok)?,
            output_per_mtok: non_negative("output_per_mtok", &self.output_per_mtok)?,
            cached_input_per_mtok: self
                .cached_input_per_mtok
                .as_ref()
                .map(|n| non_negative("cached_input_per_mtok", n))
                .transpose()?,
        })
    }
}

impl FromStr for BudgetPeriod {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "month" => Ok(BudgetPeriod::Month),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_parse_and_print_as_written() {
        for (text, secs) in [("30s", 30), ("1m", 60), ("2h", 7200), ("7d", 604_800)] {
            let w = Window::parse("w", text).unwrap();
            assert_eq!(w.seconds, secs);
            assert_eq!(w.to_string(), text);
        }
        for bad in ["", "1", "m", "0s", "-1m", "1.5h", "1w", "400d", "1 h"] {
            let e = Window::parse("rate_limits[0].window", bad).unwrap_err();
            assert_eq!(e.field, "rate_limits[0].window", "{bad}");
        }
    }

    #[test]
    fn limit_keys() {
        assert_eq!(LimitKey::parse("k", "proxy").unwrap(), LimitKey::Proxy);
        assert_eq!(
            LimitKey::parse("k", "consumer").unwrap(),
            LimitKey::Consumer
        );
        assert_eq!(
            LimitKey::parse("k", "#[attributes.consumer]").unwrap(),
            LimitKey::Consumer
        );
        let k = LimitKey::parse("k", "#[attributes.headers['X-Tenant']]").unwrap();
        assert!(matches!(k, LimitKey::Selector(_)));
        assert_eq!(k.to_string(), "#[attributes.headers['x-tenant']]");
        let e = LimitKey::parse("rate_limits[1].key", "#[attributes.nope]").unwrap_err();
        assert_eq!(e.field, "rate_limits[1].key");
    }

    #[test]
    fn rate_limits_round_trip_and_refuse_bad_amounts() {
        let input: RateLimitInput =
            serde_json::from_str(r#"{"name":"t","tokens":100000,"window":"1h","key":"consumer"}"#)
                .unwrap();
        let limit = input.validate("rate_limits[0]", LimitKey::Proxy).unwrap();
        assert_eq!(limit.amount, LimitAmount::Tokens(100_000));
        let json = serde_json::to_value(&limit).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name":"t","tokens":100000,"window":"1h","key":"consumer"})
        );
        let back: RateLimit = serde_json::from_value(json).unwrap();
        assert_eq!(back, limit);

        for (body, field) in [
            (r#"{"name":"t","tokens":0,"window":"1h"}"#, "l.tokens"),
            (r#"{"name":"t","requests":-5,"window":"1h"}"#, "l.requests"),
            (r#"{"name":"t","requests":1.5,"window":"1h"}"#, "l.requests"),
            (r#"{"name":"t","requests":0.0,"window":"1h"}"#, "l.requests"),
            (r#"{"name":"t","window":"1h"}"#, "l"),
            (r#"{"name":"t","tokens":1,"requests":1,"window":"1h"}"#, "l"),
            (r#"{"name":"t","tokens":1,"window":"1y"}"#, "l.window"),
            (r#"{"name":"","tokens":1,"window":"1h"}"#, "l.name"),
        ] {
            let input: RateLimitInput = serde_json::from_str(body).unwrap();
            let e = input.validate("l", LimitKey::Proxy).unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
    }

    #[test]
    fn at_most_sixteen_limits_with_unique_names() {
        let limits = Limits::default();
        let make = |n: usize| -> Vec<RateLimitInput> {
            (0..n)
                .map(|i| RateLimitInput {
                    name: format!("l{i}"),
                    tokens: None,
                    requests: Some(10.into()),
                    window: "1m".into(),
                    key: None,
                })
                .collect()
        };
        assert_eq!(
            validate_rate_limits("rate_limits", make(16), LimitKey::Proxy, &limits)
                .unwrap()
                .len(),
            16
        );
        let e =
            validate_rate_limits("rate_limits", make(17), LimitKey::Proxy, &limits).unwrap_err();
        assert_eq!(e.field, "rate_limits");
        let mut twice = make(2);
        twice[1].name = "l0".into();
        let e = validate_rate_limits("rate_limits", twice, LimitKey::Proxy, &limits).unwrap_err();
        assert_eq!(e.field, "rate_limits[1].name");
    }

    #[test]
    fn consumers_validate() {
        let limits = Limits::default();
        let ok = parse_consumer_input(
            br#"{"name":"billing-app","proxies":["*"],"rate_limits":[{"name":"r","requests":5,"window":"1m"}],"budget":{"usd":50,"period":"day"},"metadata":{"team":"x"}}"#,
        )
        .unwrap()
        .validate(&limits)
        .unwrap();
        assert_eq!(ok.proxies, ConsumerProxies::All);
        assert_eq!(ok.rate_limits[0].key, LimitKey::Consumer);
        for (body, field) in [
            (r#"{"name":"a","proxies":["nope"]}"#, "proxies[0]"),
            (r#"{"name":"a","proxies":["*","*"]}"#, "proxies"),
            (
                r#"{"name":"a","proxies":["*"],"budget":{"usd":-1,"period":"day"}}"#,
                "budget.usd",
            ),
            (
                r#"{"name":"a","proxies":["*"],"budget":{"usd":1,"period":"week"}}"#,
                "budget.period",
            ),
            (r#"{"name":"a b","proxies":["*"]}"#, "name"),
        ] {
            let e = parse_consumer_input(body.as_bytes())
                .unwrap()
                .validate(&limits)
                .unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
        let e = parse_consumer_input(br#"{"name":"a","proxies":["*"],"extra":1}"#).unwrap_err();
        assert_eq!(e.field, "extra");
    }

    #[test]
    fn prices_refuse_what_is_not_a_finite_non_negative_number() {
        let ok = parse_price_input(
            br#"{"input_per_mtok":2,"output_per_mtok":8,"cached_input_per_mtok":0.5}"#,
        )
        .unwrap()
        .validate("gpt-4.1")
        .unwrap();
        assert_eq!(ok.cost(1_000_000, 0, 0), 2.0);
        assert!(
            (ok.cost(1000, 400, 500) - (600.0 * 2.0 + 400.0 * 0.5 + 500.0 * 8.0) / 1e6).abs()
                < 1e-12
        );
        for (body, field) in [
            (
                r#"{"input_per_mtok":-1,"output_per_mtok":8}"#,
                "input_per_mtok",
            ),
            (
                r#"{"input_per_mtok":1,"output_per_mtok":1e400}"#,
                "output_per_mtok",
            ),
            (
                r#"{"input_per_mtok":1,"output_per_mtok":2,"cached_input_per_mtok":-0.1}"#,
                "cached_input_per_mtok",
            ),
            (
                r#"{"model":"other","input_per_mtok":1,"output_per_mtok":2}"#,
                "model",
            ),
        ] {
            let e = parse_price_input(body.as_bytes())
                .and_then(|p| p.validate("gpt-4.1"))
                .unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
        // Without a cached price, cached input costs as much as other input.
        let p = Price {
            model: "m".into(),
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            cached_input_per_mtok: None,
        };
        assert_eq!(p.cost(1_000_000, 500_000, 1_000_000), 3.0);
    }

    #[test]
    fn budget_periods_are_utc_calendar_periods() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let (label, end) = BudgetPeriod::Day.containing(t);
        assert_eq!(label, "2026-12-31");
        assert_eq!(end, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (label, end) = BudgetPeriod::Month.containing(t);
        assert_eq!(label, "2026-12");
        assert_eq!(end, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (_, end) =
            BudgetPeriod::Month.containing(Utc.with_ymd_and_hms(2026, 2, 3, 1, 0, 0).unwrap());
        assert_eq!(end, Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap());
    }

    #[test]
    fn keys_have_a_shape_and_a_hash() {
        let key = format!("{KEY_PREFIX}{}", "a".repeat(KEY_SECRET_CHARS));
        assert!(is_key_shaped(&key));
        assert!(!is_key_shaped("sy_short"));
        assert!(!is_key_shaped(&format!(
            "sk_{}",
            "a".repeat(KEY_SECRET_CHARS)
        )));
        assert!(!is_key_shaped(&format!(
            "{KEY_PREFIX}{}!",
            "a".repeat(KEY_SECRET_CHARS - 1)
        )));
        assert_eq!(key_hash(&key), key_hash(&key));
        assert_ne!(key_hash(&key), key_hash("sy_other"));
    }
}
