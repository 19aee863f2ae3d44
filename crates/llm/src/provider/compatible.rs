//! NVIDIA NIM and other OpenAI-compatible servers: `{url}/chat/completions` with an
//! optional bearer key. Requests use `max_tokens` and send `developer` messages as `system`,
//! which such servers understand. OpenAI-compatible routes may also use `{url}/responses`.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::openai::bearer;
use super::{Provider, ProviderAdapter, Target, UpstreamApi, join_url, json_post, with_model};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::{openai_chat, openai_responses};
use crate::error::{ApiError, LlmError};
use crate::passthrough::rewrite_model;
use crate::stream::StreamDecoder;

pub(super) struct CompatibleAdapter {
    pub(super) provider: Provider,
}

impl CompatibleAdapter {
    fn path(&self, target: &Target) -> Result<&'static str, LlmError> {
        match (target.api, self.provider) {
            (UpstreamApi::ChatCompletions, _) => Ok("chat/completions"),
            (UpstreamApi::Responses, Provider::OpenAiCompatible) => Ok("responses"),
            (UpstreamApi::Responses, _) => Err(LlmError::Target(format!(
                "{} routes serve chat completions only",
                self.provider
            ))),
        }
    }
}

impl ProviderAdapter for CompatibleAdapter {
    fn provider(&self) -> Provider {
        self.provider
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let path = self.path(target)?;
        let req = with_model(req, &target.model);
        let name = self.provider.as_str();
        let body = match target.api {
            UpstreamApi::ChatCompletions => {
                openai_chat::render_request(&req, openai_chat::ChatFlavor::Compatible, name)?
            }
            UpstreamApi::Responses => openai_responses::render_request(&req, name)?,
        };
        json_post(&join_url(&target.base_url, path), &bearer(target)?, body)
    }

    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        _stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        json_post(
            &join_url(&target.base_url, self.path(target)?),
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

    fn request() -> ChatRequest {
        ChatRequest {
            model: "nim/meta/llama-3.1-8b-instruct".into(),
            messages: vec![
                Message::text_message(Role::Developer, "terse"),
                Message::text_message(Role::User, "hi"),
            ],
            max_tokens: Some(64),
            ..ChatRequest::default()
        }
    }

    #[test]
    fn nvidia_request() {
        let target = Target::new(
            Provider::Nvidia,
            "https://integrate.api.nvidia.com/v1",
            "meta/llama-3.1-8b-instruct",
        )
        .with_credentials(Credentials::ApiKey("nvapi-x".into()));
        let req = target.build_request(&request()).unwrap();
        assert_eq!(
            req.uri(),
            "https://integrate.api.nvidia.com/v1/chat/completions"
        );
        assert_eq!(req.headers()["authorization"], "Bearer nvapi-x");
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(body["model"], "meta/llama-3.1-8b-instruct");
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(
            target
                .clone()
                .with_api(UpstreamApi::Responses)
                .build_request(&request())
                .is_err()
        );
    }

    #[test]
    fn keyless_compatible_server() {
        let target = Target::new(
            Provider::OpenAiCompatible,
            "http://localhost:8000/v1",
            "llama",
        );
        let req = target.build_request(&request()).unwrap();
        assert!(req.headers().get("authorization").is_none());
        let aws = target.with_credentials(Credentials::Aws(crate::sigv4::AwsCredentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        }));
        assert!(matches!(
            aws.build_request(&request()),
            Err(LlmError::Target(_))
        ));
    }
}
