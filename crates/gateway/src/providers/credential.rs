//! API keys: a static key turned into its header value once, at compile time, or a dynamic
//! key read by a selector from each incoming request.

use axum::http::{HeaderMap, HeaderValue};
use switchyard_model::{Auth, Selector, SelectorSource};

use crate::error::{CredentialPlace, ProxyError};

/// How a route authenticates to its upstream with one key in one header.
pub(crate) enum Credential {
    None,
    /// The complete header value (e.g. `Bearer sk-…`), marked sensitive.
    Static(HeaderValue),
    Dynamic {
        source: SelectorSource,
        /// Prepended to the selected value (`"Bearer "`, or `""` for a bare key header).
        prefix: &'static str,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Static(_) => f.write_str("Static(***)"),
            Credential::Dynamic { source, .. } => write!(f, "Dynamic({source:?})"),
        }
    }
}

impl Credential {
    /// Compiles a route's auth for a provider that takes one key with `prefix`.
    pub(crate) fn compile(auth: &Auth, prefix: &'static str) -> Result<Credential, String> {
        match auth {
            Auth::None => Ok(Credential::None),
            Auth::Static { api_key } => {
                let mut value = HeaderValue::try_from(format!("{prefix}{}", api_key.expose()))
                    .map_err(|_| "the static API key holds characters not allowed in a header")?;
                value.set_sensitive(true);
                Ok(Credential::Static(value))
            }
            Auth::Dynamic { expression } => {
                let selector =
                    Selector::parse("auth.expression", expression).map_err(|e| e.to_string())?;
                Ok(Credential::Dynamic {
                    source: selector.source,
                    prefix,
                })
            }
            Auth::StaticAws { .. } | Auth::DynamicAws { .. } => {
                Err("AWS credentials are only valid on bedrock routes".to_owned())
            }
        }
    }

    /// The header value to send, if any. A dynamic key missing from the request is a 401.
    pub(crate) fn resolve(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        match self {
            Credential::None => Ok(None),
            Credential::Static(v) => Ok(Some(v.clone())),
            Credential::Dynamic { source, prefix } => {
                let raw = match source {
                    SelectorSource::Header(name) => headers
                        .get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(|v| strip_bearer(v.trim()).to_owned()),
                    SelectorSource::Query(name) => query.and_then(|q| query_param(q, name)),
                };
                let missing = || {
                    ProxyError::MissingCredential(match source {
                        SelectorSource::Header(h) => CredentialPlace::Header(h.clone()),
                        SelectorSource::Query(q) => CredentialPlace::Query(q.clone()),
                    })
                };
                let raw = raw.filter(|v| !v.is_empty()).ok_or_else(missing)?;
                let mut value =
                    HeaderValue::try_from(format!("{prefix}{raw}")).map_err(|_| missing())?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }
}

/// Clients often send `Authorization: Bearer <key>`-style values in the selected header too.
fn strip_bearer(v: &str) -> &str {
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim_start(),
        _ => v,
    }
}

/// The decoded value of the first `name` parameter of a query string.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == name).then(|| percent_decode(v))?
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::Secret;

    #[test]
    fn static_keys_are_precomputed_and_sensitive() {
        let c = Credential::compile(
            &Auth::Static {
                api_key: Secret::new("sk-1"),
            },
            "Bearer ",
        )
        .unwrap();
        let v = c.resolve(&HeaderMap::new(), None).unwrap().unwrap();
        assert_eq!(v, "Bearer sk-1");
        assert!(v.is_sensitive());
        assert!(!format!("{c:?}").contains("sk-1"));
        assert!(
            Credential::compile(
                &Auth::Static {
                    api_key: Secret::new("a\nb")
                },
                ""
            )
            .is_err()
        );
    }

    #[test]
    fn dynamic_keys_from_headers_and_query() {
        let c = Credential::compile(
            &Auth::Dynamic {
                expression: "#[attributes.headers['X-Key']]".into(),
            },
            "Bearer ",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        let err = c.resolve(&h, None).unwrap_err();
        assert_eq!(
            err,
            ProxyError::MissingCredential(CredentialPlace::Header("x-key".into()))
        );
        h.insert("x-key", HeaderValue::from_static("Bearer  abc"));
        assert_eq!(c.resolve(&h, None).unwrap().unwrap(), "Bearer abc");

        let q = Credential::compile(
            &Auth::Dynamic {
                expression: "attributes.queryParams['key']".into(),
            },
            "Bearer ",
        )
        .unwrap();
        assert_eq!(
            q.resolve(&h, Some("a=1&key=s%6B-2+x")).unwrap().unwrap(),
            "Bearer sk-2 x"
        );
        assert!(q.resolve(&h, Some("a=1")).is_err());
        assert!(q.resolve(&h, Some("key=")).is_err());
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&b=2", "b").as_deref(), Some("2"));
        assert_eq!(query_param("a", "a").as_deref(), Some(""));
        assert_eq!(query_param("a%20b=%41", "a b").as_deref(), Some("A"));
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(query_param("", "a"), None);
    }
}
