//! Provider adapters: how one route talks to its upstream.
//!
//! Each provider is one module; [`Upstream`] is the closed set the routing table compiles a
//! route into, and the HTTP layer dispatches over it in one place. The OpenAI-compatible
//! adapter (`openai`, `nvidia`, `openai-compatible`) is a passthrough: the inbound OpenAI
//! body is forwarded with only `model` rewritten. Providers whose wire format differs
//! (`azure`, `gemini`, `bedrock`) compile into [`Upstream::NotYet`] and answer 501 until
//! their adapter module lands.

pub(crate) mod credential;
pub(crate) mod openai;

use switchyard_model::{Provider, Route};

pub(crate) use credential::Credential;

/// What the client asked the proxy to do (an inbound OpenAI operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    ChatCompletions,
    Responses,
    Models,
}

/// A route's upstream, compiled.
#[derive(Debug)]
pub(crate) enum Upstream {
    OpenAi(Box<openai::OpenAiUpstream>),
    /// A provider whose adapter is not part of this build yet.
    NotYet(Provider),
}

impl Upstream {
    /// Compiles a route's provider settings; fails on anything the node could not serve.
    pub(crate) fn compile(route: &Route) -> Result<Upstream, String> {
        match route.provider {
            Provider::OpenAi | Provider::Nvidia | Provider::OpenAiCompatible => {
                openai::OpenAiUpstream::compile(route).map(|u| Upstream::OpenAi(Box::new(u)))
            }
            Provider::Azure | Provider::Gemini | Provider::Bedrock => {
                // Still check what every adapter will need, so a bad URL is refused now.
                parse_base_url(&route.url)?;
                Ok(Upstream::NotYet(route.provider))
            }
        }
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
}
