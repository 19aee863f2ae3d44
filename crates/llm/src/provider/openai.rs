//! OpenAI: `{url}/chat/completions` or `{url}/responses`, `Authorization: Bearer`.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{
    Provider, ProviderAdapter, Target, UpstreamApi, api_key, join_url, json_post, with_model,
};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::{openai_chat, openai_responses};
use crate::error::{ApiError, LlmError};
use crate::passthrough::rewrite_model;
use crate::stream::StreamDecoder;

pub(super) struct OpenAiAdapter;

pub(super) fn bearer(target: &Target) -> Result<Vec<(&'static str, String)>, LlmError> {
    Ok(api_key(target)?
        .map(|key| vec![("authorization", format!("Bearer {key}"))])
        .unwrap_or_default())
}

fn path(api: UpstreamApi) -> &'static str {
    match api {
        UpstreamApi::ChatCompletions => "chat/completions",
        UpstreamApi::Responses => "responses",
    }
}

impl ProviderAdapter for OpenAiAdapter {
    fn provider(&self) -> Provider {
        Provider::OpenAi
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let req = with_model(req, &target.model);
        let body = match target.api {
            UpstreamApi::ChatCompletions => {
                openai_chat::render_request(&req, openai_chat::ChatFlavor::OpenAi, "openai")?
            }
            UpstreamApi::Responses => openai_responses::render_request(&req, "openai")?,
        };
        json_post(
            &join_url(&target.base_url, path(target.api)),
            &bearer(target)?,
            body,
        )
    }

    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        _stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        json_post(
            &join_url(&target.base_url, path(target.api)),
            &bearer(target)?,
            rewrite_model(body, &target.model)?,
        )
    }

    fn parse_response(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError> {
        super::parse_openai_family(self, target, status, headers, body)
    }

    fn parse_error(
        &self,
        _target: &Target,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError {
        openai_chat::parse_error(status, body)
    }

    fn stream_decoder(&self, target: &Target) -> Box<dyn StreamDecoder> {
        super::openai_family_decoder(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};
    use crate::provider::Credentials;

    fn target() -> Target {
        Target::new(Provider::OpenAi, "https://api.openai.com/v1/", "gpt-4.1")
            .with_credentials(Credentials::ApiKey("sk-test".into()))
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: "openai/gpt-4.1".into(),
            messages: vec![Message::text_message(Role::User, "hi")],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn chat_and_responses_requests() {
        let req = target().build_request(&request()).unwrap();
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(req.headers()["authorization"], "Bearer sk-test");
        assert_eq!(req.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(body["model"], "gpt-4.1");

        let req = target()
            .with_api(UpstreamApi::Responses)
            .build_request(&request())
            .unwrap();
        assert_eq!(req.uri(), "https://api.openai.com/v1/responses");
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(body["input"][0]["content"][0]["text"], "hi");
    }

    #[test]
    fn passthrough_rewrites_only_the_model() {
        let body = br#"{"model":"openai/gpt-4.1","messages":[],"future_field":{"x":1}}"#;
        let req = target().build_passthrough(body, false).unwrap();
        assert_eq!(
            req.body().as_ref(),
            br#"{"model":"gpt-4.1","messages":[],"future_field":{"x":1}}"#
        );
    }

    #[test]
    fn responses_errors_become_api_errors() {
        let err = target()
            .parse_response(
                StatusCode::UNAUTHORIZED,
                &HeaderMap::new(),
                br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            )
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Authentication);
        assert_eq!(err.code.as_deref(), Some("invalid_api_key"));
    }
}
