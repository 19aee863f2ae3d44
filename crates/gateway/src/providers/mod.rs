//! A route's upstream, compiled: which provider, where, and with which credentials.
//!
//! All provider knowledge (URLs, auth headers, SigV4, wire formats, stream framing) lives in
//! `switchyard_llm`; this module only turns a route of the snapshot into what a request needs
//! to build a [`Target`] for that library: checked once when the table is compiled, resolved
//! per request (dynamic credentials come from the incoming request).

pub(crate) mod credential;

use axum::http::HeaderMap;
use bytes::Bytes;
use switchyard_llm::provider::bedrock_region;
use switchyard_llm::{Target, UpstreamApi};
use switchyard_model::{Provider, Route};

pub(crate) use credential::Credential;

use crate::error::ProxyError;

/// A route's upstream, compiled.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub provider: Provider,
    /// The route's `url`, validated, without a trailing slash.
    base_url: String,
    api_version: Option<String>,
    region: Option<String>,
    pub credential: Credential,
}

impl Upstream {
    /// Compiles a route's provider settings; fails on anything the node could not serve.
    pub(crate) fn compile(route: &Route) -> Result<Upstream, String> {
        let provider = route.provider;
        let base = parse_base_url(&route.url)?;
        let credential = Credential::compile(&route.auth, provider.takes_aws_credentials())?;
        let region = route.region.clone().filter(|r| !r.is_empty());
        if provider.takes_region() {
            // The one Bedrock region rule: the route's, else the one its host names.
            bedrock_region(region.as_deref(), &route.url)?;
        }
        Ok(Upstream {
            provider,
            base_url: base.as_str().trim_end_matches('/').to_owned(),
            api_version: route.api_version.clone().filter(|v| !v.is_empty()),
            region,
            credential,
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

    /// The request listing the upstream's models (`GET {url}/models` with this route's key,
    /// for providers that list them the OpenAI way; see
    /// [`switchyard_llm::ProviderAdapter::models_request`]); `None` for the others.
    pub(crate) fn models_request(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Result<http::Request<Bytes>, ProxyError>> {
        let lists = self.provider.adapter().models_request(&Target::new(
            self.provider,
            self.base_url.clone(),
            "",
        ));
        lists.as_ref()?;
        let target = match self.target("", UpstreamApi::ChatCompletions, headers, query) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        target.models_request().map(|r| {
            r.map_err(|e| match e {
                switchyard_llm::LlmError::Target(why) if why.contains("header value") => {
                    ProxyError::InvalidCredential(
                        "the API key holds characters not allowed in a header".to_owned(),
                    )
                }
                other => ProxyError::UpstreamUnavailable(other.to_string()),
            })
        })
    }

    /// The header carrying the request id to this upstream.
    pub(crate) fn request_id_header(&self) -> &'static str {
        self.provider.adapter().request_id_header()
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::{Auth, Secret};

    #[test]
    fn base_urls() {
        let u = parse_base_url("https://api.openai.com/v1/").unwrap();
        assert_eq!(u.as_str(), "https://api.openai.com/v1");
        let u = parse_base_url("http://127.0.0.1:9000").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/");
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
            models: Vec::new(),
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
        assert!(up.models_request(&HeaderMap::new(), None).is_none());
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
        assert_eq!(t.provider, Provider::Azure);

        let up = Upstream::compile(&route(Provider::Nvidia, "https://x/v1", key)).unwrap();
        assert_eq!(
            up.models_request(&HeaderMap::new(), None)
                .unwrap()
                .unwrap()
                .uri(),
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
