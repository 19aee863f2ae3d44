//! Azure OpenAI, key in `api-key`. Two URL surfaces:
//!
//! - deployments (an `api_version` such as `2024-10-21`):
//!   `{url}/openai/deployments/{model}/chat/completions?api-version={v}` and
//!   `{url}/openai/responses?api-version={v}`;
//! - v1 (no `api_version`, or `v1`): `{url}/openai/v1/chat/completions` and
//!   `{url}/openai/v1/responses`, the model (deployment) named in the body; `preview`
//!   selects the v1 surface with `?api-version=preview`.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{
    Provider, ProviderAdapter, Target, UpstreamApi, api_key, encode_path_segment, join_url,
    json_post, with_model,
};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::{openai_chat, openai_responses};
use crate::error::{ApiError, LlmError};
use crate::passthrough::rewrite_model;
use crate::stream::StreamDecoder;

pub(super) struct AzureAdapter;

fn url(target: &Target) -> String {
    let version = target.api_version.as_deref().filter(|v| !v.is_empty());
    let path = match (version, target.api) {
        (None | Some("v1"), UpstreamApi::ChatCompletions) => "openai/v1/chat/completions".into(),
        (None | Some("v1"), UpstreamApi::Responses) => "openai/v1/responses".into(),
        (Some(v @ ("preview" | "latest")), UpstreamApi::ChatCompletions) => {
            format!("openai/v1/chat/completions?api-version={v}")
        }
        (Some(v @ ("preview" | "latest")), UpstreamApi::Responses) => {
            format!("openai/v1/responses?api-version={v}")
        }
        (Some(v), UpstreamApi::ChatCompletions) => format!(
            "openai/deployments/{}/chat/completions?api-version={}",
            encode_path_segment(&target.model),
            encode_path_segment(v)
        ),
        (Some(v), UpstreamApi::Responses) => {
            format!("openai/responses?api-version={}", encode_path_segment(v))
        }
    };
    join_url(&target.base_url, &path)
}

fn headers(target: &Target) -> Result<Vec<(&'static str, String)>, LlmError> {
    Ok(api_key(target)?
        .map(|key| vec![("api-key", key.to_owned())])
        .unwrap_or_default())
}

impl ProviderAdapter for AzureAdapter {
    fn provider(&self) -> Provider {
        Provider::Azure
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let req = with_model(req, &target.model);
        let body = match target.api {
            UpstreamApi::ChatCompletions => {
                openai_chat::render_request(&req, openai_chat::ChatFlavor::OpenAi, "azure")?
            }
            UpstreamApi::Responses => openai_responses::render_request(&req, "azure")?,
        };
        json_post(&url(target), &headers(target)?, body)
    }

    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        _stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        json_post(
            &url(target),
            &headers(target)?,
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
    use crate::stream::decode_all;

    fn target() -> Target {
        Target::new(
            Provider::Azure,
            "https://my-res.openai.azure.com/",
            "gpt-4o-prod",
        )
        .with_credentials(Credentials::ApiKey("azure-key".into()))
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: "azure/gpt-4o".into(),
            messages: vec![Message::text_message(Role::User, "hi")],
            max_tokens: Some(10),
            ..ChatRequest::default()
        }
    }

    #[test]
    fn deployment_and_v1_urls() {
        let req = target()
            .with_api_version("2024-10-21")
            .build_request(&request())
            .unwrap();
        assert_eq!(
            req.uri(),
            "https://my-res.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(req.headers()["api-key"], "azure-key");
        assert!(req.headers().get("authorization").is_none());
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(body["max_completion_tokens"], 10);

        let req = target().build_request(&request()).unwrap();
        assert_eq!(
            req.uri(),
            "https://my-res.openai.azure.com/openai/v1/chat/completions"
        );
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(body["model"], "gpt-4o-prod");

        let req = target()
            .with_api_version("preview")
            .with_api(UpstreamApi::Responses)
            .build_request(&request())
            .unwrap();
        assert_eq!(
            req.uri(),
            "https://my-res.openai.azure.com/openai/v1/responses?api-version=preview"
        );
        let req = target()
            .with_api_version("2025-04-01-preview")
            .with_api(UpstreamApi::Responses)
            .build_request(&request())
            .unwrap();
        assert_eq!(
            req.uri(),
            "https://my-res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
        );
    }

    #[test]
    fn content_filter_errors_and_prompt_filter_chunks() {
        let err = target()
            .parse_response(
                StatusCode::BAD_REQUEST,
                &HeaderMap::new(),
                br#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#,
            )
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("content_filter"));
        assert_eq!(err.status, StatusCode::BAD_REQUEST);

        // Azure starts streams with a chunk that has no choices, only filter results.
        let stream = concat!(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n",
            "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"Hi\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"created\":1,\"id\":\"chatcmpl-9\",\"model\":\"gpt-4o\",\"object\":\"chat.completion.chunk\"}\n\n",
            "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"created\":1,\"id\":\"chatcmpl-9\",\"model\":\"gpt-4o\",\"object\":\"chat.completion.chunk\"}\n\n",
            "data: [DONE]\n\n"
        );
        let mut decoder = target().stream_decoder();
        let events = decode_all(decoder.as_mut(), stream.as_bytes()).unwrap();
        assert!(events.contains(&crate::StreamEvent::TextDelta("Hi".into())));
        assert!(events.contains(&crate::StreamEvent::Finish(crate::FinishReason::Stop)));
    }
}
