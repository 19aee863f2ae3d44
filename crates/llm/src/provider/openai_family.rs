//! The OpenAI family: OpenAI, Azure OpenAI, NVIDIA NIM and any OpenAI-compatible server.
//!
//! They speak the same two APIs (Chat Completions and Responses, one dialect module each);
//! what differs between them is data, not code: where the API lives ([`Urls`]), how the key
//! is sent ([`KeyHeader`]), the chat flavor of the request body, whether the Responses API
//! is served and whether models are listed at `{url}/models`. A new OpenAI-compatible
//! provider is one more [`OpenAiFamily`] value (see `provider/mod.rs`).
//!
//! - OpenAI: `{url}/chat/completions` or `{url}/responses`, `Authorization: Bearer`.
//! - Azure OpenAI, key in `api-key`. Two URL surfaces: deployments (an `api_version` such as
//!   `2024-10-21`): `{url}/openai/deployments/{model}/chat/completions?api-version={v}` and
//!   `{url}/openai/responses?api-version={v}`; v1 (no `api_version`, or `v1`):
//!   `{url}/openai/v1/chat/completions` and `{url}/openai/v1/responses`, the model
//!   (deployment) named in the body; `preview` selects the v1 surface with
//!   `?api-version=preview`.
//! - NVIDIA NIM and other OpenAI-compatible servers: `{url}/chat/completions` with an
//!   optional bearer key. Requests use `max_tokens` and send `developer` messages as
//!   `system`, which such servers understand. OpenAI-compatible routes may also use
//!   `{url}/responses`.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{
    Provider, ProviderAdapter, Target, UpstreamApi, api_key, encode_path_segment, join_url,
    json_post, with_model,
};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::openai_chat::ChatFlavor;
use crate::dialect::{openai_chat, openai_responses};
use crate::error::{ApiError, LlmError};
use crate::passthrough::rewrite_model;
use crate::stream::StreamDecoder;

/// Where an OpenAI-family API lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Urls {
    /// The route's `url` is the API base: `{url}/chat/completions`, `{url}/responses`.
    ApiBase,
    /// Azure's resource endpoint, with its deployments and v1 surfaces.
    Azure,
}

/// How an OpenAI-family upstream takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyHeader {
    /// `Authorization: Bearer {key}`.
    Bearer,
    /// The key as it is, in this header.
    Plain(&'static str),
}

/// One OpenAI-family provider, as data.
#[derive(Debug)]
pub(crate) struct OpenAiFamily {
    pub provider: Provider,
    pub urls: Urls,
    pub key: KeyHeader,
    pub flavor: ChatFlavor,
    /// Whether the Responses API is served (else Chat Completions only).
    pub responses: bool,
    /// Whether `GET {url}/models` lists the upstream's models.
    pub lists_models: bool,
}

impl OpenAiFamily {
    fn url(&self, target: &Target) -> Result<String, LlmError> {
        if target.api == UpstreamApi::Responses && !self.responses {
            return Err(LlmError::Target(format!(
                "{} routes serve chat completions only",
                self.provider
            )));
        }
        Ok(match self.urls {
            Urls::ApiBase => join_url(&target.base_url, api_path(target.api)),
            Urls::Azure => azure_url(target),
        })
    }

    fn headers(&self, target: &Target) -> Result<Vec<(&'static str, String)>, LlmError> {
        Ok(match (api_key(target)?, self.key) {
            (None, _) => Vec::new(),
            (Some(key), KeyHeader::Bearer) => vec![("authorization", format!("Bearer {key}"))],
            (Some(key), KeyHeader::Plain(name)) => vec![(name, key.to_owned())],
        })
    }
}

fn api_path(api: UpstreamApi) -> &'static str {
    match api {
        UpstreamApi::ChatCompletions => "chat/completions",
        UpstreamApi::Responses => "responses",
    }
}

fn azure_url(target: &Target) -> String {
    let version = target.api_version.as_deref().filter(|v| !v.is_empty());
    let path = match (version, target.api) {
        (None | Some("v1"), api) => format!("openai/v1/{}", api_path(api)),
        (Some(v @ ("preview" | "latest")), api) => {
            format!("openai/v1/{}?api-version={v}", api_path(api))
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

impl ProviderAdapter for OpenAiFamily {
    fn provider(&self) -> Provider {
        self.provider
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let url = self.url(target)?;
        let req = with_model(req, &target.model);
        let name = self.provider.as_str();
        let body = match target.api {
            UpstreamApi::ChatCompletions => openai_chat::render_request(&req, self.flavor, name)?,
            UpstreamApi::Responses => openai_responses::render_request(&req, name)?,
        };
        json_post(&url, &self.headers(target)?, body)
    }

    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        self.passthrough_request(target, rewrite_model(body, &target.model)?, stream)
    }

    fn passthrough_request(
        &self,
        target: &Target,
        body: Bytes,
        _stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        json_post(&self.url(target)?, &self.headers(target)?, body)
    }

    fn parse_response(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError> {
        super::split_status(self, target, status, headers, body, |b| match target.api {
            UpstreamApi::ChatCompletions => openai_chat::parse_response(b),
            UpstreamApi::Responses => openai_responses::parse_response(b),
        })
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
        match target.api {
            UpstreamApi::ChatCompletions => Box::new(openai_chat::ChatStreamDecoder::new()),
            UpstreamApi::Responses => Box::new(openai_responses::ResponsesStreamDecoder::new()),
        }
    }

    fn models_request(&self, target: &Target) -> Option<Result<http::Request<Bytes>, LlmError>> {
        if !self.lists_models {
            return None;
        }
        let url = join_url(&target.base_url, "models");
        let build = || {
            let mut builder =
                http::Request::get(&url).header(http::header::ACCEPT, "application/json");
            for (name, value) in self.headers(target)? {
                let mut value = http::HeaderValue::from_str(&value).map_err(|_| {
                    LlmError::Target(format!("`{name}` is not a valid header value"))
                })?;
                value.set_sensitive(true);
                builder = builder.header(name, value);
            }
            builder
                .body(Bytes::new())
                .map_err(|e| LlmError::Target(format!("invalid upstream url `{url}`: {e}")))
        };
        Some(build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};
    use crate::provider::Credentials;
    use crate::stream::decode_all;

    mod openai {
        use super::*;

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

    mod azure {
        use super::*;

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

    mod compatible {
        use super::*;

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
}
