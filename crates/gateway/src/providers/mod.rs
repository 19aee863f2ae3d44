//! A route's upstream, compiled: which provider, where, and with which credentials.
//!
//! All provider knowledge (URLs, auth headers, SigV4, wire formats, stream framing) lives in
//! `switchyard_llm`; this module only turns a route of the snapshot into what a request needs
//! to build a [`Target`] for that library: checked once when the table is compiled, resolved
//! per request (dynamic credentials come from the incoming request).

pub(crate) mod credential;

use axum::http::HeaderMap;
use bytes::Bytes;
use switchyard_llm::{Provider as LlmProvider, Target, UpstreamApi};
use switchyard_model::{Provider, Route};

pub(crate) use credential::Credential;

use crate::error::ProxyError;

/// A route's upstream, compiled.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub provider: LlmProvider,
    /// The route's `url`, validated, without a trailing slash.
    base_url: String,
    api_version: Option<String>,
    region: Option<String>,
    pub credential: Credential,
    /// `{url}/models` for providers that list their models the OpenAI way.
    models_url: Option<reqwest::Url>,
}

/// The provider of a route, as the translation library names it.
pub(crate) fn llm_provider(provider: Provider) -> LlmProvider {
    match provider {
        Provider::OpenAi => LlmProvider::OpenAi,
        Provider::Azure => LlmProvider::Azure,
        Provider::Gemini => LlmProvider::Gemini,
        Provider::Bedrock => LlmProvider::Bedrock,
        Provider::Nvidia => LlmProvider::Nvidia,
        Provider::OpenAiCompatible => LlmProvider::OpenAiCompatible,
    }
}

impl Upstream {
    /// Compiles a route's provider settings; fails on anything the node could not serve.
    pub(crate) fn compile(route: &Route) -> Result<Upstream, String> {
        let provider = llm_provider(route.provider);
        let base = parse_base_url(&route.url)?;
        let credential = Credential::compile(&route.auth, provider == LlmProvider::Bedrock)?;
        let region = route.region.clone().filter(|r| !r.is_empty());
        if provider == LlmProvider::Bedrock && region.is_none() {
            // Without a region in the route, the endpoint host must name one.
            let host = base.host_str().unwrap_or_default();
            let mut labels = host.split('.');
            let named = matches!(
                (labels.next(), labels.next()),
                (Some(service), Some(r)) if service.starts_with("bedrock") && !r.is_empty()
            );
            if !named {
                return Err(format!(
                    "bedrock route needs a region (none given and none in the host of '{}')",
                    route.url
                ));
            }
        }
        let models_url = match provider {
            LlmProvider::OpenAi | LlmProvider::Nvidia | LlmProvider::OpenAiCompatible => {
                Some(join_url(&base, "models")?)
            }
            _ => None,
        };
        Ok(Upstream {
            provider,
            base_url: base.as_str().trim_end_matches('/').to_owned(),
            api_version: route.api_version.clone().filter(|v| !v.is_empty()),
            region,
            credential,
            models_url,
        })
    }

    pub(crate) fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    /// The call target for one request: this upstream asked for `model` over `api`, with the
    /// credentials for this request.
    pub(crate) fn target(
        &self,
        model: &str,
        api: UpstreamApi,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Target, ProxyError> {
        let mut target = Target::new(self.provider, self.base_url.clone(), model)
            .with_api(api)
            .with_credentials(self.credential.resolve(headers, query)?);
        target.api_version = self.api_version.clone();
        target.region = self.region.clone();
        Ok(target)
    }

    /// `GET {url}/models` with this route's key, for providers that list models the OpenAI
    /// way; `None` for the others.
    pub(crate) fn models_request(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Result<http::Request<Bytes>, ProxyError>> {
        let url = self.models_url.as_ref()?;
        let mut req = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| ProxyError::UpstreamUnavailable(format!("bad models url {url}: {e}")));
        match (self.credential.resolve(headers, query), &mut req) {
            (Ok(switchyard_llm::Credentials::ApiKey(key)), Ok(req)) => {
                let Ok(mut value) = http::HeaderValue::try_from(format!("Bearer {key}")) else {
                    return Some(Err(ProxyError::InvalidCredential(
                        "the API key holds characters not allowed in a header".to_owned(),
                    )));
                };
                value.set_sensitive(true);
                req.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
            (Err(e), _) => return Some(Err(e)),
            _ => {}
        }
        Some(req)
    }
}

/// Parses an upstream base URL (`http` or `https`), without a trailing slash.
pub(crate) fn parse_base_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url.trim_end_matches('/'))
        .map_err(|e| format!("url '{url}' is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url '{url}' must be http or https"));
    }
    if parsed.host_str().is_none() {
        return Err(format!("url '{url}' has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("url '{url}' must not carry a query or fragment"));
    }
    Ok(parsed)
}

/// `{base}/{suffix}` for a base URL without a trailing slash.
pub(crate) fn join_url(base: &reqwest::Url, suffix: &str) -> Result<reqwest::Url, String> {
    let joined = format!("{}/{suffix}", base.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&joined).map_err(|e| format!("cannot build '{joined}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::{Auth, Secret};

    #[test]
    fn base_urls() {
        let u = parse_base_url("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            join_url(&u, "chat/completions").unwrap().as_str(),
            "https://api.openai.com/v1/chat/completions"
        );
        let u = parse_base_url("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            join_url(&u, "models").unwrap().as_str(),
            "http://127.0.0.1:9000/models"
        );
        for bad in [
            "",
            "api.openai.com",
            "ftp://x/y",
            "https://x/v1?a=b",
            "http://",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    fn route(provider: Provider, url: &str, auth: Auth) -> Route {
        Route {
            name: "r".into(),
            provider,
            url: url.into(),
            region: None,
            api_version: None,
            auth,
            target_model: None,
            topics: vec![],
        }
    }

    fn aws() -> Auth {
        Auth::StaticAws {
            access_key_id: Secret::new("AKID"),
            secret_access_key: Secret::new("SECRET"),
            session_token: None,
        }
    }

    #[test]
    fn targets_carry_the_route_settings() {
        let key = Auth::Static {
            api_key: Secret::new("k"),
        };
        let mut azure = route(
            Provider::Azure,
            "https://res.openai.azure.com/",
            key.clone(),
        );
        azure.api_version = Some("2024-10-21".into());
        let up = Upstream::compile(&azure).unwrap();
        assert!(up.models_url.is_none());
        let t = up
            .target(
                "gpt-4o",
                UpstreamApi::ChatCompletions,
                &HeaderMap::new(),
                None,
            )
            .unwrap();
        assert_eq!(t.base_url, "https://res.openai.azure.com");
        assert_eq!(t.api_version.as_deref(), Some("2024-10-21"));
        assert_eq!(t.provider, LlmProvider::Azure);

        let up = Upstream::compile(&route(Provider::Nvidia, "https://x/v1", key)).unwrap();
        assert_eq!(
            up.models_url.as_ref().unwrap().as_str(),
            "https://x/v1/models"
        );
    }

    #[test]
    fn bedrock_needs_aws_keys_and_a_region() {
        let up = Upstream::compile(&route(
            Provider::Bedrock,
            "https://bedrock-runtime.eu-west-3.amazonaws.com",
            aws(),
        ))
        .unwrap();
        let t = up
            .target(
                "anthropic/m",
                UpstreamApi::ChatCompletions,
                &HeaderMap::new(),
                None,
            )
            .unwrap();
        assert!(matches!(t.credentials, switchyard_llm::Credentials::Aws(_)));

        let err =
            Upstream::compile(&route(Provider::Bedrock, "http://127.0.0.1:9", aws())).unwrap_err();
        assert!(err.contains("region"), "{err}");
        let mut local = route(Provider::Bedrock, "http://127.0.0.1:9", aws());
        local.region = Some("us-east-1".into());
        let t = Upstream::compile(&local)
            .unwrap()
            .target("m", UpstreamApi::ChatCompletions, &HeaderMap::new(), None)
            .unwrap();
        assert_eq!(t.region.as_deref(), Some("us-east-1"));

        let err = Upstream::compile(&route(Provider::OpenAi, "https://x/v1", aws())).unwrap_err();
        assert!(err.contains("bedrock"), "{err}");
    }
}
