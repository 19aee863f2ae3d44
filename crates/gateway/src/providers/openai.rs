//! The OpenAI-compatible adapter (`openai`, `nvidia`, `openai-compatible`): a passthrough.
//!
//! The route's `url` is the API base (`https://api.openai.com/v1`); the gateway calls
//! `{url}/chat/completions`, `{url}/responses` and `{url}/models` with
//! `Authorization: Bearer <key>`. The body is the client's, with only `model` rewritten, so
//! fields this gateway does not know survive untouched. Nothing of the client's headers is
//! forwarded but `Accept` (its `Authorization` and selector headers never reach the upstream).

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use switchyard_model::Route;

use super::{Credential, Operation, join_url, parse_base_url};
use crate::error::ProxyError;

pub(crate) static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

#[derive(Debug)]
pub(crate) struct OpenAiUpstream {
    chat_completions: reqwest::Url,
    responses: reqwest::Url,
    models: reqwest::Url,
    pub(crate) credential: Credential,
}

/// What the adapter may read of the incoming request.
pub(crate) struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub request_id: &'a HeaderValue,
}

impl OpenAiUpstream {
    pub(crate) fn compile(route: &Route) -> Result<OpenAiUpstream, String> {
        let base = parse_base_url(&route.url)?;
        Ok(OpenAiUpstream {
            chat_completions: join_url(&base, "chat/completions")?,
            responses: join_url(&base, "responses")?,
            models: join_url(&base, "models")?,
            credential: Credential::compile(&route.auth, "Bearer ")?,
        })
    }

    pub(crate) fn url(&self, op: Operation) -> &reqwest::Url {
        match op {
            Operation::ChatCompletions => &self.chat_completions,
            Operation::Responses => &self.responses,
            Operation::Models => &self.models,
        }
    }

    /// Builds the upstream request: a `POST` of `body` for completions and responses, a
    /// `GET` for models.
    pub(crate) fn request(
        &self,
        client: &reqwest::Client,
        op: Operation,
        inbound: &Inbound<'_>,
        body: Option<Bytes>,
    ) -> Result<reqwest::RequestBuilder, ProxyError> {
        let auth = self.credential.resolve(inbound.headers, inbound.query)?;
        let url = self.url(op).clone();
        let mut req = match body {
            Some(body) => client
                .post(url)
                .header(header::CONTENT_TYPE, APPLICATION_JSON.clone())
                .body(body),
            None => client.get(url),
        };
        let accept = inbound
            .headers
            .get(header::ACCEPT)
            .cloned()
            .unwrap_or_else(|| APPLICATION_JSON.clone());
        req = req
            .header(header::ACCEPT, accept)
            .header("x-request-id", inbound.request_id.clone());
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::{Auth, Provider, Secret};

    fn route(url: &str, auth: Auth) -> Route {
        Route {
            name: "r".into(),
            provider: Provider::OpenAi,
            url: url.into(),
            region: None,
            api_version: None,
            auth,
            target_model: None,
            topics: vec![],
        }
    }

    #[test]
    fn builds_a_passthrough_request_without_client_credentials() {
        let up = OpenAiUpstream::compile(&route(
            "http://127.0.0.1:1/v1/",
            Auth::Static {
                api_key: Secret::new("sk-up"),
            },
        ))
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        headers.insert("x-other", HeaderValue::from_static("1"));
        let rid = HeaderValue::from_static("rid-1");
        let inbound = Inbound {
            headers: &headers,
            query: None,
            request_id: &rid,
        };
        let client = reqwest::Client::new();
        let req = up
            .request(
                &client,
                Operation::ChatCompletions,
                &inbound,
                Some(Bytes::from_static(b"{}")),
            )
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:1/v1/chat/completions");
        assert_eq!(req.method(), "POST");
        assert_eq!(req.headers()["authorization"], "Bearer sk-up");
        assert_eq!(req.headers()["x-request-id"], "rid-1");
        assert_eq!(req.headers()["content-type"], "application/json");
        assert!(req.headers().get("x-other").is_none());

        let req = up
            .request(&client, Operation::Models, &inbound, None)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:1/v1/models");
        assert_eq!(req.method(), "GET");
    }

    #[test]
    fn refuses_aws_credentials() {
        let err = OpenAiUpstream::compile(&route(
            "https://x/v1",
            Auth::StaticAws {
                access_key_id: Secret::new("a"),
                secret_access_key: Secret::new("b"),
                session_token: None,
            },
        ))
        .unwrap_err();
        assert!(err.contains("bedrock"), "{err}");
    }
}
