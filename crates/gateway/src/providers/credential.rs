//! Upstream credentials: compiled once per route (static keys kept as they are, selectors
//! parsed), resolved per request into the `switchyard_llm::Credentials` the provider adapter
//! signs or sends with.
//!
//! - API keys (every provider but Bedrock): a static key, or a dynamic key read by a selector
//!   from the incoming request.
//! - AWS keys (Bedrock): static keys, one selector each for the key id, the secret and the
//!   optional session token, or one selector whose value is
//!   `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`.

use axum::http::HeaderMap;
use switchyard_llm::Credentials;
use switchyard_llm::sigv4::AwsCredentials;
use switchyard_model::{Auth, Selector, SelectorSource};

use crate::error::{CredentialPlace, ProxyError};

/// How a route authenticates to its upstream.
pub(crate) enum Credential {
    None,
    /// A key stored by the control plane.
    Static(String),
    /// A key read from each request.
    Dynamic(SelectorSource),
    /// AWS keys stored by the control plane.
    StaticAws(AwsCredentials),
    /// AWS keys read from each request, one selector each.
    DynamicAws {
        access_key_id: SelectorSource,
        secret_access_key: SelectorSource,
        session_token: Option<SelectorSource>,
    },
    /// AWS keys read from each request as `ACCESS_KEY_ID:SECRET[:SESSION_TOKEN]`.
    CombinedAws(SelectorSource),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Static(_) => f.write_str("Static(***)"),
            Credential::Dynamic(source) => write!(f, "Dynamic({source:?})"),
            Credential::StaticAws(aws) => write!(f, "StaticAws({})", aws.access_key_id),
            Credential::DynamicAws { access_key_id, .. } => {
                write!(f, "DynamicAws({access_key_id:?}, …)")
            }
            Credential::CombinedAws(source) => write!(f, "CombinedAws({source:?})"),
        }
    }
}

fn selector(field: &str, expression: &str) -> Result<SelectorSource, String> {
    Selector::parse(field, expression)
        .map(|s| s.source)
        .map_err(|e| e.to_string())
}

impl Credential {
    /// Compiles a route's auth; `aws` says whether the route signs with AWS keys (Bedrock).
    pub(crate) fn compile(auth: &Auth, aws: bool) -> Result<Credential, String> {
        let compiled = match auth {
            Auth::None => Credential::None,
            Auth::Static { api_key } => {
                if api_key.expose().bytes().any(|b| b.is_ascii_control()) {
                    return Err(
                        "the static API key holds characters not allowed in a header".into(),
                    );
                }
                Credential::Static(api_key.expose().to_owned())
            }
            Auth::Dynamic { expression } if aws => {
                Credential::CombinedAws(selector("auth.expression", expression)?)
            }
            Auth::Dynamic { expression } => {
                Credential::Dynamic(selector("auth.expression", expression)?)
            }
            Auth::StaticAws {
                access_key_id,
                secret_access_key,
                session_token,
            } => Credential::StaticAws(AwsCredentials {
                access_key_id: access_key_id.expose().to_owned(),
                secret_access_key: secret_access_key.expose().to_owned(),
                session_token: session_token.as_ref().map(|t| t.expose().to_owned()),
            }),
            Auth::DynamicAws {
                access_key_id,
                secret_access_key,
                session_token,
            } => Credential::DynamicAws {
                access_key_id: selector("auth.access_key_id", access_key_id)?,
                secret_access_key: selector("auth.secret_access_key", secret_access_key)?,
                session_token: session_token
                    .as_deref()
                    .map(|t| selector("auth.session_token", t))
                    .transpose()?,
            },
        };
        let is_aws = matches!(
            compiled,
            Credential::StaticAws(_) | Credential::DynamicAws { .. } | Credential::CombinedAws(_)
        );
        if aws && !is_aws {
            return Err(
                "bedrock routes sign with AWS keys: give access_key_id and secret_access_key (static or dynamic)"
                    .to_owned(),
            );
        }
        if !aws && is_aws {
            return Err("AWS credentials are only valid on bedrock routes".to_owned());
        }
        Ok(compiled)
    }

    /// The credentials for one request. A dynamic key missing from the request is a 401.
    pub(crate) fn resolve(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Credentials, ProxyError> {
        Ok(match self {
            Credential::None => Credentials::None,
            Credential::Static(key) => Credentials::ApiKey(key.clone()),
            Credential::Dynamic(source) => Credentials::ApiKey(select(source, headers, query)?),
            Credential::StaticAws(aws) => Credentials::Aws(aws.clone()),
            Credential::DynamicAws {
                access_key_id,
                secret_access_key,
                session_token,
            } => Credentials::Aws(AwsCredentials {
                access_key_id: select(access_key_id, headers, query)?,
                secret_access_key: select(secret_access_key, headers, query)?,
                session_token: session_token
                    .as_ref()
                    .map(|s| select(s, headers, query))
                    .transpose()?,
            }),
            Credential::CombinedAws(source) => {
                let value = select(source, headers, query)?;
                let mut parts = value.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(id), Some(secret), token) if !id.is_empty() && !secret.is_empty() => {
                        Credentials::Aws(AwsCredentials {
                            access_key_id: id.to_owned(),
                            secret_access_key: secret.to_owned(),
                            session_token: token.filter(|t| !t.is_empty()).map(str::to_owned),
                        })
                    }
                    _ => {
                        return Err(ProxyError::InvalidCredential(format!(
                            "the AWS credentials read from {} must be ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]",
                            place(source)
                        )));
                    }
                }
            }
        })
    }
}

fn place(source: &SelectorSource) -> String {
    match source {
        SelectorSource::Header(h) => format!("the '{h}' request header"),
        SelectorSource::Query(q) => format!("the '{q}' query parameter"),
    }
}

/// The selected value (a `Bearer ` prefix dropped), or a 401 naming where it was expected.
fn select(
    source: &SelectorSource,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, ProxyError> {
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
    let value = raw.filter(|v| !v.is_empty()).ok_or_else(missing)?;
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(missing());
    }
    Ok(value)
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

/// Decodes `%XX` escapes and `+` (form encoding) of a query component.
fn percent_decode(s: &str) -> Option<String> {
    switchyard_llm::provider::percent_decode(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use switchyard_model::Secret;

    fn key(c: &Credentials) -> &str {
        match c {
            Credentials::ApiKey(k) => k,
            other => panic!("not a key: {other:?}"),
        }
    }

    fn aws(c: Credentials) -> AwsCredentials {
        match c {
            Credentials::Aws(a) => a,
            other => panic!("not aws: {other:?}"),
        }
    }

    #[test]
    fn static_keys_are_kept_and_never_printed() {
        let c = Credential::compile(
            &Auth::Static {
                api_key: Secret::new("sk-1"),
            },
            false,
        )
        .unwrap();
        assert_eq!(key(&c.resolve(&HeaderMap::new(), None).unwrap()), "sk-1");
        assert!(!format!("{c:?}").contains("sk-1"));
        assert!(
            Credential::compile(
                &Auth::Static {
                    api_key: Secret::new("a\nb")
                },
                false
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
            false,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        let err = c.resolve(&h, None).unwrap_err();
        assert_eq!(
            err,
            ProxyError::MissingCredential(CredentialPlace::Header("x-key".into()))
        );
        h.insert("x-key", HeaderValue::from_static("Bearer  abc"));
        assert_eq!(key(&c.resolve(&h, None).unwrap()), "abc");

        let q = Credential::compile(
            &Auth::Dynamic {
                expression: "attributes.queryParams['key']".into(),
            },
            false,
        )
        .unwrap();
        assert_eq!(
            key(&q.resolve(&h, Some("a=1&key=s%6B-2+x")).unwrap()),
            "sk-2 x"
        );
        assert!(q.resolve(&h, Some("a=1")).is_err());
        assert!(q.resolve(&h, Some("key=")).is_err());
        assert!(q.resolve(&h, Some("key=a%0Ab")).is_err());
    }

    #[test]
    fn aws_keys_static_separate_and_combined() {
        let s = Credential::compile(
            &Auth::StaticAws {
                access_key_id: Secret::new("AKID"),
                secret_access_key: Secret::new("SECRET"),
                session_token: None,
            },
            true,
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("SECRET"));
        let a = aws(s.resolve(&HeaderMap::new(), None).unwrap());
        assert_eq!(
            (a.access_key_id.as_str(), a.secret_access_key.as_str()),
            ("AKID", "SECRET")
        );

        let d = Credential::compile(
            &Auth::DynamicAws {
                access_key_id: "attributes.headers['x-id']".into(),
                secret_access_key: "attributes.headers['x-secret']".into(),
                session_token: Some("attributes.headers['x-token']".into()),
            },
            true,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-id", HeaderValue::from_static("AK"));
        h.insert("x-secret", HeaderValue::from_static("SK"));
        assert_eq!(
            d.resolve(&h, None).unwrap_err(),
            ProxyError::MissingCredential(CredentialPlace::Header("x-token".into()))
        );
        h.insert("x-token", HeaderValue::from_static("TOK"));
        let a = aws(d.resolve(&h, None).unwrap());
        assert_eq!(a.session_token.as_deref(), Some("TOK"));

        let c = Credential::compile(
            &Auth::Dynamic {
                expression: "attributes.headers['x-aws']".into(),
            },
            true,
        )
        .unwrap();
        h.insert(
            "x-aws",
            HeaderValue::from_static("AK:S/K+x:TOKEN:with:colons"),
        );
        let a = aws(c.resolve(&h, None).unwrap());
        assert_eq!(a.access_key_id, "AK");
        assert_eq!(a.secret_access_key, "S/K+x");
        assert_eq!(a.session_token.as_deref(), Some("TOKEN:with:colons"));
        h.insert("x-aws", HeaderValue::from_static("AK:SK"));
        assert_eq!(aws(c.resolve(&h, None).unwrap()).session_token, None);
        h.insert("x-aws", HeaderValue::from_static("just-a-key"));
        let err = c.resolve(&h, None).unwrap_err();
        assert_eq!(err.status().as_u16(), 401);
        assert!(err.message().contains("ACCESS_KEY_ID:SECRET_ACCESS_KEY"));
    }

    #[test]
    fn credentials_must_fit_the_provider() {
        let key = Auth::Static {
            api_key: Secret::new("k"),
        };
        assert!(
            Credential::compile(&key, true)
                .unwrap_err()
                .contains("bedrock")
        );
        assert!(Credential::compile(&Auth::None, true).is_err());
        let aws = Auth::StaticAws {
            access_key_id: Secret::new("a"),
            secret_access_key: Secret::new("b"),
            session_token: None,
        };
        assert!(
            Credential::compile(&aws, false)
                .unwrap_err()
                .contains("bedrock")
        );
    }

    #[test]
    fn query_params_and_paths() {
        assert_eq!(query_param("a=1&b=2", "b").as_deref(), Some("2"));
        assert_eq!(query_param("a", "a").as_deref(), Some(""));
        assert_eq!(query_param("a%20b=%41", "a b").as_deref(), Some("A"));
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(query_param("", "a"), None);
        assert_eq!(
            switchyard_llm::provider::percent_decode("gemini%2Fgemini-2.5+flash", false).as_deref(),
            Some("gemini/gemini-2.5+flash")
        );
    }
}
