//! The formats clients speak to the gateway, each with its parser, response renderer,
//! stream encoder and error shape.

use bytes::Bytes;
use http::StatusCode;

use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::{gemini, openai_chat, openai_responses};
use crate::error::{ApiError, LlmError};
use crate::provider::{Provider, Target, UpstreamApi};
use crate::stream::StreamEncoder;

/// A client-facing API format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InboundFormat {
    /// `POST …/chat/completions`.
    OpenAiChat,
    /// `POST …/responses`.
    OpenAiResponses,
    /// `POST …/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.
    Gemini,
}

impl InboundFormat {
    /// Parses a request body. Gemini bodies name neither model nor streaming (both are in
    /// the URL): the caller sets `model` and `stream` on the result.
    pub fn parse_request(self, body: &[u8]) -> Result<ChatRequest, LlmError> {
        match self {
            InboundFormat::OpenAiChat => openai_chat::parse_request(body),
            InboundFormat::OpenAiResponses => openai_responses::parse_request(body),
            InboundFormat::Gemini => gemini::parse_request(body),
        }
    }

    /// Renders a non-streamed answer as this format's JSON body.
    pub fn render_response(self, resp: &ChatResponse) -> Bytes {
        match self {
            InboundFormat::OpenAiChat => openai_chat::render_response(resp),
            InboundFormat::OpenAiResponses => openai_responses::render_response(resp),
            InboundFormat::Gemini => gemini::render_response(resp),
        }
    }

    /// A fresh encoder for one streamed answer to `req` (its `model` is reported, and
    /// `stream_include_usage` decides OpenAI chat's final usage chunk).
    pub fn stream_encoder(self, req: &ChatRequest) -> Box<dyn StreamEncoder> {
        match self {
            InboundFormat::OpenAiChat => Box::new(openai_chat::ChatStreamEncoder::new(
                req.model.clone(),
                req.stream_include_usage,
            )),
            InboundFormat::OpenAiResponses => Box::new(
                openai_responses::ResponsesStreamEncoder::new(req.model.clone()),
            ),
            InboundFormat::Gemini => Box::new(gemini::GeminiStreamEncoder::new(req.model.clone())),
        }
    }

    /// An error as this format's status and body: OpenAI
    /// `{"error": {"message", "type", "param", "code"}}`, Gemini
    /// `{"error": {"code", "message", "status"}}`.
    pub fn render_error(self, err: &ApiError) -> (StatusCode, Bytes) {
        let body = match self {
            InboundFormat::OpenAiChat | InboundFormat::OpenAiResponses => {
                openai_chat::render_error(err)
            }
            InboundFormat::Gemini => gemini::render_error(err),
        };
        (err.status, body)
    }

    /// Whether a request in this format can go to `target` on the passthrough path (the
    /// target speaks this very API).
    pub fn passthrough_to(self, target: &Target) -> bool {
        match self {
            InboundFormat::OpenAiChat => {
                target.api == UpstreamApi::ChatCompletions
                    && matches!(
                        target.provider,
                        Provider::OpenAi
                            | Provider::Azure
                            | Provider::Nvidia
                            | Provider::OpenAiCompatible
                    )
            }
            InboundFormat::OpenAiResponses => {
                target.api == UpstreamApi::Responses
                    && matches!(
                        target.provider,
                        Provider::OpenAi | Provider::Azure | Provider::OpenAiCompatible
                    )
            }
            InboundFormat::Gemini => target.provider == Provider::Gemini,
        }
    }

    /// The upstream API a request in this format is sent with on `provider` (whose route
    /// has `api_version`): a Responses request stays a Responses request on providers with
    /// that API (OpenAI, OpenAI-compatible, and Azure on its v1 surface or with an
    /// `api-version` from `2025-03-01-preview` on, the first to serve it) and is translated
    /// to Chat Completions elsewhere; everything else uses Chat Completions (or, for Gemini and
    /// Bedrock, the provider's own API, which ignores this choice).
    pub fn upstream_api(self, provider: Provider, api_version: Option<&str>) -> UpstreamApi {
        if self != InboundFormat::OpenAiResponses {
            return UpstreamApi::ChatCompletions;
        }
        let native = match provider {
            Provider::OpenAi | Provider::OpenAiCompatible => true,
            Provider::Azure => match api_version.filter(|v| !v.is_empty()) {
                None | Some("v1" | "preview" | "latest") => true,
                // Dated versions compare as text: `YYYY-MM-DD[-preview]`.
                Some(v) => v >= "2025-03-01",
            },
            Provider::Gemini | Provider::Bedrock | Provider::Nvidia => false,
        };
        if native {
            UpstreamApi::Responses
        } else {
            UpstreamApi::ChatCompletions
        }
    }

    /// The `Content-Type` of streamed answers.
    pub fn stream_content_type(self) -> &'static str {
        "text/event-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{FinishReason, StreamEvent, Usage};
    use crate::error::ErrorKind;
    use crate::stream::{decode_all, encode_all};
    use serde_json::Value;

    #[test]
    fn errors_in_each_shape() {
        let err = ApiError::new(ErrorKind::NotFound, "no route `foo`").code("route_not_found");
        let (status, body) = InboundFormat::OpenAiChat.render_error(&err);
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "no route `foo`");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], "route_not_found");
        let (status, body) = InboundFormat::Gemini.render_error(&err);
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": 404, "message": "no route `foo`", "status": "NOT_FOUND"}})
        );
        let bad = crate::InboundFormat::OpenAiChat
            .parse_request(b"{")
            .unwrap_err()
            .to_api_error();
        assert_eq!(
            InboundFormat::OpenAiChat.render_error(&bad).0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn passthrough_matrix() {
        let chat = Target::new(Provider::Nvidia, "u", "m");
        let responses = Target::new(Provider::OpenAi, "u", "m").with_api(UpstreamApi::Responses);
        let gemini = Target::new(Provider::Gemini, "u", "m");
        let bedrock = Target::new(Provider::Bedrock, "u", "m");
        assert!(InboundFormat::OpenAiChat.passthrough_to(&chat));
        assert!(!InboundFormat::OpenAiChat.passthrough_to(&responses));
        assert!(InboundFormat::OpenAiResponses.passthrough_to(&responses));
        assert!(InboundFormat::Gemini.passthrough_to(&gemini));
        for f in [
            InboundFormat::OpenAiChat,
            InboundFormat::OpenAiResponses,
            InboundFormat::Gemini,
        ] {
            assert!(!f.passthrough_to(&bedrock));
        }
    }

    #[test]
    fn upstream_apis() {
        use InboundFormat::*;
        assert_eq!(
            OpenAiChat.upstream_api(Provider::OpenAi, None),
            UpstreamApi::ChatCompletions
        );
        assert_eq!(
            OpenAiResponses.upstream_api(Provider::OpenAi, None),
            UpstreamApi::Responses
        );
        assert_eq!(
            OpenAiResponses.upstream_api(Provider::Nvidia, None),
            UpstreamApi::ChatCompletions
        );
        assert_eq!(
            OpenAiResponses.upstream_api(Provider::Bedrock, None),
            UpstreamApi::ChatCompletions
        );
        for (version, api) in [
            (None, UpstreamApi::Responses),
            (Some("v1"), UpstreamApi::Responses),
            (Some("preview"), UpstreamApi::Responses),
            (Some("2025-04-01-preview"), UpstreamApi::Responses),
            (Some("2025-03-01-preview"), UpstreamApi::Responses),
            (Some("2024-10-21"), UpstreamApi::ChatCompletions),
            (Some("2025-01-01-preview"), UpstreamApi::ChatCompletions),
        ] {
            assert_eq!(
                OpenAiResponses.upstream_api(Provider::Azure, version),
                api,
                "{version:?}"
            );
        }
    }

    /// Bedrock stream → canonical → each inbound format, through the public API only.
    #[test]
    fn bedrock_stream_to_every_inbound_format() {
        let events = vec![
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::TextDelta("Hi".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "t1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"x\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "2}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Usage::default()
            }),
        ];
        let frames = encode_all(
            &mut crate::dialect::bedrock::ConverseStreamEncoder::new(),
            &events,
        );
        let target = Target::new(
            Provider::Bedrock,
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            "m",
        );
        let decoded = decode_all(target.stream_decoder().as_mut(), &frames).unwrap();
        assert_eq!(decoded, events);

        let req = ChatRequest {
            model: "claude/m".into(),
            stream_include_usage: true,
            ..ChatRequest::default()
        };
        let chat = encode_all(
            InboundFormat::OpenAiChat.stream_encoder(&req).as_mut(),
            &decoded,
        );
        let chat = String::from_utf8(chat.to_vec()).unwrap();
        assert!(chat.contains("\"model\":\"claude/m\""));
        assert!(chat.contains("\"arguments\":\"2}\""));
        assert!(chat.contains("\"finish_reason\":\"tool_calls\""));
        assert!(chat.contains("\"total_tokens\":7"));

        let resp = encode_all(
            InboundFormat::OpenAiResponses.stream_encoder(&req).as_mut(),
            &decoded,
        );
        let resp = String::from_utf8(resp.to_vec()).unwrap();
        assert!(resp.contains("\"arguments\":\"{\\\"x\\\":2}\""));
        assert!(resp.contains("event: response.completed"));

        let gem = encode_all(
            InboundFormat::Gemini.stream_encoder(&req).as_mut(),
            &decoded,
        );
        let gem = String::from_utf8(gem.to_vec()).unwrap();
        assert!(gem.contains("\"args\":{\"x\":2}"));
    }
}
