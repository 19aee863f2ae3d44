//! Anthropic: `{url}/v1/messages`, key in `x-api-key`, `anthropic-version` on every request.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{Provider, ProviderAdapter, Target, api_key, join_url, json_post, split_status};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::anthropic;
use crate::error::{ApiError, LlmError};
use crate::stream::StreamDecoder;

pub(super) struct AnthropicAdapter;

/// `{url}/v1/messages` (a route `url` ending in `/v1` is taken as the API base).
fn url(target: &Target) -> String {
    let base = target.base_url.trim_end_matches('/');
    match base.strip_suffix("/v1") {
        Some(_) => join_url(base, "messages"),
        None => join_url(base, "v1/messages"),
    }
}

/// `POST {url}/v1/messages/count_tokens` with the client's body (the model rewritten).
pub(crate) fn count_tokens_request(
    target: &Target,
    body: Bytes,
) -> Result<http::Request<Bytes>, LlmError> {
    if target.provider != Provider::Anthropic {
        return Err(LlmError::Target(format!(
            "{} routes do not count tokens",
            target.provider
        )));
    }
    json_post(
        &format!("{}/count_tokens", url(target)),
        &headers(target)?,
        body,
    )
}

fn headers(target: &Target) -> Result<Vec<(&'static str, String)>, LlmError> {
    let mut headers = vec![("anthropic-version", anthropic::ANTHROPIC_VERSION.to_owned())];
    if let Some(key) = api_key(target)? {
        headers.push(("x-api-key", key.to_owned()));
    }
    Ok(headers)
}

impl ProviderAdapter for AnthropicAdapter {
    fn provider(&self) -> Provider {
        Provider::Anthropic
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let body = anthropic::render_request(req, &target.model)?;
        json_post(&url(target), &headers(target)?, body)
    }

    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let body = crate::passthrough::rewrite_model(body, &target.model)?;
        self.passthrough_request(target, body, stream)
    }

    fn passthrough_request(
        &self,
        target: &Target,
        body: Bytes,
        _stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        json_post(&url(target), &headers(target)?, body)
    }

    fn parse_response(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError> {
        split_status(
            self,
            target,
            status,
            headers,
            body,
            anthropic::parse_response,
        )
    }

    fn parse_error(
        &self,
        _target: &Target,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError {
        anthropic::parse_error(status, body)
    }

    fn stream_decoder(&self, _target: &Target) -> Box<dyn StreamDecoder> {
        Box::new(anthropic::AnthropicStreamDecoder::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};
    use crate::provider::Credentials;

    fn target(url: &str) -> Target {
        Target::new(Provider::Anthropic, url, "claude-sonnet-4-5")
            .with_credentials(Credentials::ApiKey("sk-ant-test".into()))
    }

    #[test]
    fn url_key_and_version() {
        let req = ChatRequest {
            messages: vec![Message::text_message(Role::User, "hi")],
            ..ChatRequest::default()
        };
        for base in [
            "https://api.anthropic.com",
            "https://api.anthropic.com/",
            "https://api.anthropic.com/v1",
        ] {
            let http = target(base).build_request(&req).unwrap();
            assert_eq!(
                http.uri(),
                "https://api.anthropic.com/v1/messages",
                "{base}"
            );
            assert_eq!(http.headers()["x-api-key"], "sk-ant-test");
            assert_eq!(http.headers()["anthropic-version"], "2023-06-01");
            assert!(http.headers().get("authorization").is_none());
        }
        let pass = target("http://127.0.0.1:9")
            .build_passthrough(br#"{"model":"r/x","max_tokens":5,"messages":[]}"#, false)
            .unwrap();
        assert_eq!(
            pass.body().as_ref(),
            br#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}"#
        );
        let aws =
            target("http://x").with_credentials(Credentials::Aws(crate::sigv4::AwsCredentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
                session_token: None,
            }));
        assert!(matches!(aws.build_request(&req), Err(LlmError::Target(_))));
    }

    #[test]
    fn errors_keep_anthropic_types() {
        let err = target("http://x").parse_error(
            StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(err.status.as_u16(), 529);
        assert_eq!(err.kind, crate::ErrorKind::Unavailable);
        assert_eq!(err.message, "Overloaded");
        assert!(err.is_retryable());
    }
}
