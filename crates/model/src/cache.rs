//! A proxy's response cache: `{"exact": {"ttl": "10m"}, "semantic": {"threshold": 0.95,
//! "ttl": "1h"}, "scope": "consumer"}` — strict admin input here, validated into
//! [`ResponseCache`] (what the store keeps and snapshots carry).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ValidationError, Window};

/// The semantic cache's threshold when the proxy does not set one.
pub const DEFAULT_CACHE_THRESHOLD: f64 = 0.95;

/// A proxy's validated response cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseCache {
    /// Answers reused for equal requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactCache>,
    /// Answers reused for requests equal but for a similar last user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticCache>,
    /// Who shares entries; `None`: the default (consumer when the proxy requires keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,
}

impl ResponseCache {
    /// The scope in force on a proxy that does (or does not) require consumer keys.
    pub fn effective_scope(&self, client_auth_required: bool) -> CacheScope {
        self.scope.unwrap_or(if client_auth_required {
            CacheScope::Consumer
        } else {
            CacheScope::Proxy
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactCache {
    #[serde(serialize_with = "window_out", deserialize_with = "window_in")]
    pub ttl: Window,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemanticCache {
    /// The least cosine similarity of the last user messages for a hit (0 < t ≤ 1).
    pub threshold: f64,
    #[serde(serialize_with = "window_out", deserialize_with = "window_in")]
    pub ttl: Window,
}

/// Whose answers a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Only answers stored for the same consumer.
    Consumer,
    /// Any answer stored through the proxy.
    Proxy,
}

impl CacheScope {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheScope::Consumer => "consumer",
            CacheScope::Proxy => "proxy",
        }
    }

    pub fn parse(s: &str) -> Option<CacheScope> {
        match s {
            "consumer" => Some(CacheScope::Consumer),
            "proxy" => Some(CacheScope::Proxy),
            _ => None,
        }
    }
}

fn window_out<S: Serializer>(w: &Window, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&w.to_string())
}

fn window_in<'de, D: Deserializer<'de>>(d: D) -> Result<Window, D::Error> {
    let text = String::deserialize(d)?;
    Window::parse("ttl", &text).map_err(serde::de::Error::custom)
}

/// The admin input of a proxy's `cache`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCacheInput {
    #[serde(default)]
    pub exact: Option<ExactCacheInput>,
    #[serde(default)]
    pub semantic: Option<SemanticCacheInput>,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactCacheInput {
    pub ttl: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticCacheInput {
    #[serde(default)]
    pub threshold: Option<f64>,
    pub ttl: String,
}

impl ResponseCacheInput {
    /// Validates `cache` of a proxy (`client_auth_required`: whether it requires keys).
    pub fn validate(
        self,
        field: &str,
        client_auth_required: bool,
    ) -> Result<ResponseCache, ValidationError> {
        let exact = match self.exact {
            None => None,
            Some(e) => Some(ExactCache {
                ttl: Window::parse(&format!("{field}.exact.ttl"), &e.ttl)?,
            }),
        };
        let semantic = match self.semantic {
            None => None,
            Some(s) => {
                let threshold = s.threshold.unwrap_or(DEFAULT_CACHE_THRESHOLD);
                if !threshold.is_finite() || threshold <= 0.0 || threshold > 1.0 {
                    return Err(ValidationError::invalid(
                        format!("{field}.semantic.threshold"),
                        "a similarity threshold above 0 and at most 1",
                    ));
                }
                Some(SemanticCache {
                    threshold,
                    ttl: Window::parse(&format!("{field}.semantic.ttl"), &s.ttl)?,
                })
            }
        };
        if exact.is_none() && semantic.is_none() {
            return Err(ValidationError::invalid(
                field,
                "name `exact`, `semantic` or both (leave `cache` out for no cache)",
            ));
        }
        let scope = match self.scope.as_deref() {
            None => None,
            Some(s) => Some(CacheScope::parse(s).ok_or_else(|| {
                ValidationError::invalid(
                    format!("{field}.scope"),
                    format!("'{s}': expected 'consumer' or 'proxy'"),
                )
            })?),
        };
        if scope == Some(CacheScope::Consumer) && !client_auth_required {
            return Err(ValidationError::rule(
                format!("{field}.scope"),
                "scope 'consumer' needs consumer keys: set client_auth.required",
            ));
        }
        Ok(ResponseCache {
            exact,
            semantic,
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn input(v: serde_json::Value) -> ResponseCacheInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validates_and_names_the_field() {
        let c = input(serde_json::json!({"exact": {"ttl": "10m"}, "scope": "consumer"}))
            .validate("cache", true)
            .unwrap();
        assert_eq!(c.exact.as_ref().unwrap().ttl.seconds, 600);
        assert_eq!(c.effective_scope(true), CacheScope::Consumer);
        // Stored form round-trips as written.
        let stored = serde_json::to_value(&c).unwrap();
        assert_eq!(stored["exact"]["ttl"], "10m");
        assert_eq!(serde_json::from_value::<ResponseCache>(stored).unwrap(), c);
        let c = input(serde_json::json!({"semantic": {"ttl": "1h", "threshold": 0.9}}))
            .validate("cache", false)
            .unwrap();
        assert_eq!(c.semantic.as_ref().unwrap().threshold, 0.9);
        assert_eq!(c.semantic.as_ref().unwrap().ttl.seconds, 3600);
        let c = input(serde_json::json!({"semantic": {"ttl": "1h"}}))
            .validate("cache", false)
            .unwrap();
        assert_eq!(c.semantic.unwrap().threshold, DEFAULT_CACHE_THRESHOLD);

        let c = input(serde_json::json!({"exact": {"ttl": "30s"}}))
            .validate("cache", false)
            .unwrap();
        assert_eq!(c.effective_scope(false), CacheScope::Proxy);
        assert_eq!(c.effective_scope(true), CacheScope::Consumer);

        for (v, auth, field) in [
            (
                serde_json::json!({"exact": {"ttl": "10x"}}),
                false,
                "cache.exact.ttl",
            ),
            (
                serde_json::json!({"semantic": {"ttl": "1h", "threshold": 1.5}}),
                false,
                "cache.semantic.threshold",
            ),
            (serde_json::json!({}), false, "cache"),
            (
                serde_json::json!({"exact": {"ttl": "1m"}, "scope": "team"}),
                true,
                "cache.scope",
            ),
            (
                serde_json::json!({"exact": {"ttl": "1m"}, "scope": "consumer"}),
                false,
                "cache.scope",
            ),
        ] {
            let e = input(v.clone()).validate("cache", auth).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
        assert!(
            serde_json::from_value::<ResponseCacheInput>(
                serde_json::json!({"exact": {"ttl": "1m", "size": 3}})
            )
            .is_err()
        );
    }
}
