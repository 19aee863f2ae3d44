//! The formats clients speak to the gateway. Each owns everything the gateway needs to know
//! about it: its endpoints (path → operation), its envelope (model, stream flag) and where
//! its prompt lies, its parser, response renderer and stream encoder, its error shape, its
//! passthrough stream inspector and usage readers, and its metric label. The gateway never
//! matches on a format.

use bytes::Bytes;
use http::StatusCode;

use crate::canonical::{ChatRequest, ChatResponse, Usage};
use crate::dialect::{anthropic, gemini, openai_chat, openai_responses};
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{ApiError, LlmError};
use crate::passthrough::StreamInspector;
use crate::provider::{Provider, Target, UpstreamApi, percent_decode};
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
    /// `POST …/v1/messages` (Anthropic Messages).
    Anthropic,
    /// `POST …/v1/messages/count_tokens` (Anthropic's token count of a Messages request,
    /// served by `anthropic` routes).
    AnthropicCountTokens,
}

/// What a request path asks for: a completion in `format`, with the model and the stream
/// flag when the path names them (Gemini: `/models/{model}:streamGenerateContent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client's format.
    pub format: InboundFormat,
    /// The model named in the path.
    pub model: Option<String>,
    /// Whether the path asks for a stream (`None`: the body says).
    pub stream: Option<bool>,
}

impl Operation {
    /// The error for a query string this operation cannot serve: a Gemini stream asked for
    /// without `alt=sse` (only server-sent events are served).
    pub fn query_error(&self, query: Option<&str>) -> Option<ApiError> {
        if self.format != InboundFormat::Gemini || self.stream != Some(true) {
            return None;
        }
        let sse = query.is_some_and(|q| {
            q.split('&')
                .any(|pair| pair.eq_ignore_ascii_case("alt=sse"))
        });
        (!sse).then(|| {
            ApiError::new(
                crate::ErrorKind::InvalidRequest,
                "streamGenerateContent is served as server-sent events only: add ?alt=sse",
            )
            .param("alt")
        })
    }
}

/// How a format shapes its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorShape {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"error": {"code", "message", "status"}}`.
    Google,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl InboundFormat {
    /// Every inbound format.
    pub const ALL: [InboundFormat; 5] = [
        InboundFormat::OpenAiChat,
        InboundFormat::OpenAiResponses,
        InboundFormat::Gemini,
        InboundFormat::Anthropic,
        InboundFormat::AnthropicCountTokens,
    ];

    /// The API surface serving this format: the proxy `format` id (`openai`, `gemini`,
    /// `anthropic`).
    pub fn surface(self) -> &'static str {
        match self {
            InboundFormat::OpenAiChat | InboundFormat::OpenAiResponses => "openai",
            InboundFormat::Gemini => "gemini",
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => "anthropic",
        }
    }

    /// The format whose shape errors take on an API surface before its endpoint is known
    /// (the first format of that surface).
    pub fn for_surface(surface: &str) -> Option<InboundFormat> {
        InboundFormat::ALL
            .into_iter()
            .find(|f| f.surface() == surface)
    }

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            InboundFormat::OpenAiChat => "openai_chat",
            InboundFormat::OpenAiResponses => "openai_responses",
            InboundFormat::Gemini => "gemini",
            InboundFormat::Anthropic => "anthropic",
            InboundFormat::AnthropicCountTokens => "anthropic_count_tokens",
        }
    }

    /// This format's endpoint: the operation a path (after a proxy's base path) names, or
    /// `None`. OpenAI paths may sit under `/v1`, Gemini paths under `/v1beta` or `/v1`.
    pub fn match_path(self, rest: &str) -> Option<Operation> {
        let simple = |path: &str| {
            (rest.strip_prefix("/v1").unwrap_or(rest) == path).then_some(Operation {
                format: self,
                model: None,
                stream: None,
            })
        };
        match self {
            InboundFormat::OpenAiChat => simple("/chat/completions"),
            InboundFormat::OpenAiResponses => simple("/responses"),
            InboundFormat::Anthropic => simple("/messages"),
            InboundFormat::AnthropicCountTokens => simple("/messages/count_tokens"),
            InboundFormat::Gemini => {
                let rest = rest
                    .strip_prefix("/v1beta")
                    .or_else(|| rest.strip_prefix("/v1"))
                    .unwrap_or(rest);
                let (model, method) = rest.strip_prefix("/models/")?.rsplit_once(':')?;
                let stream = match method {
                    "generateContent" => false,
                    "streamGenerateContent" => true,
                    _ => return None,
                };
                let model = percent_decode(model, false)?;
                let model = model.strip_prefix("models/").unwrap_or(&model).to_owned();
                if model.is_empty() {
                    return None;
                }
                Some(Operation {
                    format: self,
                    model: Some(model),
                    stream: Some(stream),
                })
            }
        }
    }

    /// Whether the body names the model and the stream flag (else the path does).
    pub fn model_in_body(self) -> bool {
        match self {
            InboundFormat::OpenAiChat
            | InboundFormat::OpenAiResponses
            | InboundFormat::Anthropic
            | InboundFormat::AnthropicCountTokens => true,
            InboundFormat::Gemini => false,
        }
    }

    /// Scans a request body once (see [`crate::envelope`]): valid JSON, the model and stream
    /// flag (for formats that name them in the body) and where the prompt lies.
    pub fn envelope(self, body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let prompt_field = match self {
            InboundFormat::OpenAiChat
            | InboundFormat::Anthropic
            | InboundFormat::AnthropicCountTokens => "messages",
            InboundFormat::OpenAiResponses => "input",
            InboundFormat::Gemini => "contents",
        };
        Envelope::read(body, self.model_in_body(), prompt_field)
    }

    /// The prompt semantic routing and the prompt guard look at: the last user message's
    /// text (text parts joined with newlines), or `None` when the body has none.
    pub fn prompt_text(self, envelope: &Envelope, body: &[u8]) -> Option<String> {
        let value = envelope.prompt_value(body)?;
        let text = match self {
            InboundFormat::OpenAiChat => openai_chat::last_user_text(&value),
            InboundFormat::OpenAiResponses => openai_responses::last_user_text(&value),
            InboundFormat::Gemini => gemini::last_user_text(&value),
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                anthropic::last_user_text(&value)
            }
        }?;
        (!text.trim().is_empty()).then_some(text)
    }

    /// The body to send to `target` on the passthrough path, written once from the
    /// envelope: the model replaced where the format carries it in the body, and, when
    /// `ask_usage`, the final usage chunk asked for (OpenAI chat streams). An Anthropic body
    /// for Bedrock becomes `InvokeModel`'s (see [`anthropic::bedrock_invoke_body`]), with the
    /// client's `anthropic-beta` header (`client_headers`) as `anthropic_beta`.
    pub fn passthrough_body(
        self,
        envelope: &Envelope,
        body: &Bytes,
        target: &Target,
        client_headers: &http::HeaderMap,
        ask_usage: bool,
    ) -> Result<Bytes, LlmError> {
        match self {
            InboundFormat::OpenAiChat | InboundFormat::OpenAiResponses => envelope.scanned.write(
                body,
                Some(&target.model),
                ask_usage && self == InboundFormat::OpenAiChat,
            ),
            InboundFormat::Gemini => Ok(body.clone()),
            InboundFormat::Anthropic if target.provider == Provider::Bedrock => {
                let beta = client_headers
                    .get("anthropic-beta")
                    .and_then(|v| v.to_str().ok());
                anthropic::bedrock_invoke_body(&envelope.scanned, body, beta)
            }
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                envelope.scanned.write(body, Some(&target.model), false)
            }
        }
    }

    /// The passthrough request carrying `body` to `target` (see
    /// [`Target::passthrough_request`]); a token count goes to Anthropic's `count_tokens`.
    pub fn passthrough_request(
        self,
        target: &Target,
        body: Bytes,
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        match self {
            InboundFormat::AnthropicCountTokens => {
                crate::provider::anthropic_count_tokens_request(target, body)
            }
            _ => target.passthrough_request(body, stream),
        }
    }

    /// The client's headers a passthrough request to `target` carries on (the API's version
    /// and beta flags, for an Anthropic client on an `anthropic` route).
    pub fn passthrough_headers(self, target: &Target) -> &'static [&'static str] {
        match self {
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens
                if target.provider == Provider::Anthropic =>
            {
                &["anthropic-version", "anthropic-beta"]
            }
            _ => &[],
        }
    }

    /// Whether the gateway must ask the upstream for usage on this passthrough request (and
    /// hold the extra chunk back): an OpenAI chat stream whose client did not ask itself.
    pub fn asks_stream_usage(self, envelope: &Envelope) -> bool {
        self == InboundFormat::OpenAiChat && envelope.stream && !envelope.include_usage
    }

    /// How this format shapes its errors.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            InboundFormat::OpenAiChat | InboundFormat::OpenAiResponses => ErrorShape::OpenAi,
            InboundFormat::Gemini => ErrorShape::Google,
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => ErrorShape::Anthropic,
        }
    }

    /// Whether an error body already has this format's error shape: OpenAI's `{"error":
    /// {"message", "type", …}}` (`type` may be null), Gemini's `{"error": {"code",
    /// "message", "status"}}`.
    pub fn has_error_shape(self, body: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return false;
        };
        let err = &v["error"];
        match self.error_shape() {
            ErrorShape::OpenAi => err["message"].is_string() && err.get("type").is_some(),
            ErrorShape::Google => {
                err["code"].is_u64() && err["message"].is_string() && err["status"].is_string()
            }
            ErrorShape::Anthropic => {
                v["type"] == "error" && err["type"].is_string() && err["message"].is_string()
            }
        }
    }

    /// A fresh inspector for one passthrough stream (see [`StreamInspector`]).
    /// `hold_usage_chunk`: the gateway asked for the usage chunk the client did not.
    pub fn stream_inspector(self, hold_usage_chunk: bool) -> StreamInspector {
        StreamInspector::new(self, hold_usage_chunk)
    }

    /// A fresh inspector for one passthrough stream from `target`: as
    /// [`InboundFormat::stream_inspector`], reading the Messages events out of Bedrock's
    /// event-stream frames first for an Anthropic client on a Bedrock route.
    pub fn stream_inspector_for(self, target: &Target, hold_usage_chunk: bool) -> StreamInspector {
        let inspector = StreamInspector::new(self, hold_usage_chunk);
        if self == InboundFormat::Anthropic && target.provider == Provider::Bedrock {
            inspector.reading_event_stream()
        } else {
            inspector
        }
    }

    /// Usage from a whole passthrough answer in this format.
    pub fn usage_from_body(self, body: &[u8]) -> Option<Usage> {
        match self {
            InboundFormat::OpenAiChat => openai_chat::usage_from_response(body),
            InboundFormat::OpenAiResponses => openai_responses::usage_from_response(body),
            InboundFormat::Gemini => gemini::usage_from_response(body),
            InboundFormat::Anthropic => anthropic::usage_from_response(body),
            // A count is no completion: nothing was generated, nothing is billed.
            InboundFormat::AnthropicCountTokens => None,
        }
    }

    /// The event that ends a passthrough stream the upstream broke (cut connection, garbled
    /// event), in this format's streaming error shape: Chat Completions and Gemini
    /// `data: {"error": {…}}` (what their SDKs raise on), Responses an `error` event with
    /// the next `sequence_number`.
    pub fn stream_error_frame(self, err: &ApiError, sequence_number: u64) -> Bytes {
        match self {
            InboundFormat::OpenAiChat | InboundFormat::Gemini => {
                crate::sse::data_frame(&String::from_utf8_lossy(&self.render_error(err).1))
            }
            InboundFormat::OpenAiResponses => {
                let event = serde_json::json!({
                    "type": "error",
                    "code": err.code.clone().unwrap_or_else(|| err.kind.label().to_owned()),
                    "message": err.message,
                    "param": err.param,
                    "sequence_number": sequence_number,
                });
                crate::sse::event_frame("error", &event.to_string())
            }
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                anthropic::stream_error_frame(err)
            }
        }
    }

    /// Parses a request body. Gemini bodies name neither model nor streaming (both are in
    /// the URL): the caller sets `model` and `stream` on the result.
    pub fn parse_request(self, body: &[u8]) -> Result<ChatRequest, LlmError> {
        match self {
            InboundFormat::OpenAiChat => openai_chat::parse_request(body),
            InboundFormat::OpenAiResponses => openai_responses::parse_request(body),
            InboundFormat::Gemini => gemini::parse_request(body),
            InboundFormat::Anthropic => anthropic::parse_request(body),
            InboundFormat::AnthropicCountTokens => Err(LlmError::invalid(
                "model",
                "count_tokens is served by routes of provider `anthropic` only",
            )),
        }
    }

    /// Renders a non-streamed answer as this format's JSON body.
    pub fn render_response(self, resp: &ChatResponse) -> Bytes {
        match self {
            InboundFormat::OpenAiChat => openai_chat::render_response(resp),
            InboundFormat::OpenAiResponses => openai_responses::render_response(resp),
            InboundFormat::Gemini => gemini::render_response(resp),
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                anthropic::render_response(resp)
            }
        }
    }

    /// A fresh encoder for one streamed answer to `req` (its `model` is reported, and
    /// `stream_include_usage` decides OpenAI chat's final usage chunk).
    /// With `parallel_tool_calls: false`, the encoder passes the first tool call only.
    pub fn stream_encoder(self, req: &ChatRequest) -> Box<dyn StreamEncoder> {
        let encoder = self.plain_stream_encoder(req);
        if req.parallel_tool_calls == Some(false) {
            Box::new(crate::stream::FirstToolCallOnly(encoder))
        } else {
            encoder
        }
    }

    fn plain_stream_encoder(self, req: &ChatRequest) -> Box<dyn StreamEncoder> {
        match self {
            InboundFormat::OpenAiChat => Box::new(openai_chat::ChatStreamEncoder::new(
                req.model.clone(),
                req.stream_include_usage,
            )),
            InboundFormat::OpenAiResponses => Box::new(
                openai_responses::ResponsesStreamEncoder::new(req.model.clone()),
            ),
            InboundFormat::Gemini => Box::new(gemini::GeminiStreamEncoder::new(req.model.clone())),
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                Box::new(anthropic::AnthropicStreamEncoder::new(req.model.clone()))
            }
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
            InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => {
                anthropic::render_error(err)
            }
        };
        (err.status, body)
    }

    /// Whether a request in this format can go to `target` on the passthrough path (the
    /// target speaks this very API).
    pub fn passthrough_to(self, target: &Target) -> bool {
        match self {
            InboundFormat::OpenAiChat => {
                target.api == UpstreamApi::ChatCompletions && target.provider.is_openai_family()
            }
            InboundFormat::OpenAiResponses => {
                target.api == UpstreamApi::Responses && target.provider.serves_responses()
            }
            InboundFormat::Gemini => target.provider == Provider::Gemini,
            // Claude on Bedrock takes the Messages body through InvokeModel; other Bedrock
            // models are reached through Converse.
            InboundFormat::Anthropic => {
                target.provider == Provider::Anthropic
                    || (target.provider == Provider::Bedrock
                        && crate::provider::bedrock_model_id(&target.model).contains("anthropic."))
            }
            InboundFormat::AnthropicCountTokens => target.provider == Provider::Anthropic,
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
            Provider::Azure => match api_version.filter(|v| !v.is_empty()) {
                None | Some("v1" | "preview" | "latest") => true,
                // Dated versions compare as text: `YYYY-MM-DD[-preview]`.
                Some(v) => v >= "2025-03-01",
            },
            other => other.serves_responses(),
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

    /// The prompt text (moved from the gateway's `semantic::prompt`, same cases).
    fn prompt(format: InboundFormat, body: serde_json::Value) -> Option<String> {
        let bytes = body.to_string();
        let envelope = format.envelope(bytes.as_bytes()).unwrap();
        format.prompt_text(&envelope, bytes.as_bytes())
    }

    #[test]
    fn chat_takes_the_last_user_message() {
        use serde_json::json;
        let b = json!({"messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [
                {"type": "text", "text": "second"},
                {"type": "image_url", "image_url": {"url": "data:…"}},
                {"type": "text", "text": "question"}
            ]},
            {"role": "tool", "content": "tool output"}
        ]});
        assert_eq!(
            prompt(InboundFormat::OpenAiChat, b).as_deref(),
            Some("second\nquestion")
        );
        let none = json!({"messages": [{"role": "system", "content": "x"}]});
        assert_eq!(prompt(InboundFormat::OpenAiChat, none), None);
        let blank = json!({"messages": [{"role": "user", "content": "  "}]});
        assert_eq!(prompt(InboundFormat::OpenAiChat, blank), None);
        assert_eq!(prompt(InboundFormat::OpenAiChat, json!({})), None);
    }

    #[test]
    fn responses_input_string_or_items() {
        use serde_json::json;
        let s = json!({"input": "hello there"});
        assert_eq!(
            prompt(InboundFormat::OpenAiResponses, s).as_deref(),
            Some("hello there")
        );
        let items = json!({"input": [
            {"role": "user", "content": "old"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "new"}]},
            {"type": "function_call_output", "call_id": "c", "output": "x"}
        ]});
        assert_eq!(
            prompt(InboundFormat::OpenAiResponses, items).as_deref(),
            Some("new")
        );
    }

    #[test]
    fn gemini_contents() {
        use serde_json::json;
        let b = json!({"contents": [
            {"role": "user", "parts": [{"text": "one"}]},
            {"role": "model", "parts": [{"text": "two"}]},
            {"parts": [{"text": "three"}, {"text": "four"}]}
        ]});
        assert_eq!(
            prompt(InboundFormat::Gemini, b).as_deref(),
            Some("three\nfour")
        );
    }

    #[test]
    fn endpoints_labels_and_error_shapes() {
        assert_eq!(
            InboundFormat::OpenAiChat.match_path("/v1/chat/completions"),
            Some(Operation {
                format: InboundFormat::OpenAiChat,
                model: None,
                stream: None
            })
        );
        assert_eq!(
            InboundFormat::OpenAiResponses.match_path("/chat/completions"),
            None
        );
        let op = InboundFormat::Gemini
            .match_path("/v1beta/models/g%2Fm:streamGenerateContent")
            .unwrap();
        assert_eq!((op.model.as_deref(), op.stream), (Some("g/m"), Some(true)));
        let labels: Vec<_> = InboundFormat::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(
            labels,
            [
                "openai_chat",
                "openai_responses",
                "gemini",
                "anthropic",
                "anthropic_count_tokens"
            ]
        );
        assert_eq!(
            InboundFormat::for_surface("gemini"),
            Some(InboundFormat::Gemini)
        );
        assert_eq!(
            InboundFormat::for_surface("openai"),
            Some(InboundFormat::OpenAiChat)
        );
        assert!(
            InboundFormat::OpenAiChat.has_error_shape(br#"{"error":{"message":"m","type":null}}"#)
        );
        assert!(
            !InboundFormat::Gemini.has_error_shape(br#"{"error":{"message":"m","type":null}}"#)
        );
        assert!(InboundFormat::Gemini.has_error_shape(
            br#"{"error":{"code":400,"message":"m","status":"INVALID_ARGUMENT"}}"#
        ));
        assert!(!InboundFormat::OpenAiChat.has_error_shape(b"<html>"));
    }

    #[test]
    fn passthrough_bodies_are_written_once() {
        let none = http::HeaderMap::new();
        let openai = Target::new(Provider::OpenAi, "u", "m");
        let body = Bytes::from_static(br#"{"model":"r/m","stream":true,"messages":[]}"#);
        let env = InboundFormat::OpenAiChat.envelope(&body).unwrap();
        assert!(InboundFormat::OpenAiChat.asks_stream_usage(&env));
        let out = InboundFormat::OpenAiChat
            .passthrough_body(&env, &body, &openai, &none, true)
            .unwrap();
        assert_eq!(
            out.as_ref(),
            br#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
        );
        // Responses bodies never get stream_options; Gemini bodies go as they are.
        let env = InboundFormat::OpenAiResponses.envelope(&body).unwrap();
        assert!(!InboundFormat::OpenAiResponses.asks_stream_usage(&env));
        let out = InboundFormat::OpenAiResponses
            .passthrough_body(&env, &body, &openai, &none, true)
            .unwrap();
        assert_eq!(
            out.as_ref(),
            br#"{"model":"m","stream":true,"messages":[]}"#
        );
        let env = InboundFormat::Gemini.envelope(&body).unwrap();
        let out = InboundFormat::Gemini
            .passthrough_body(&env, &body, &openai, &none, true)
            .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn anthropic_bodies_for_anthropic_and_bedrock() {
        let body = Bytes::from_static(
            br#"{"model":"claude/x","max_tokens":9,"stream":true,"metadata":{"user_id":"u"},"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}]}"#,
        );
        let f = InboundFormat::Anthropic;
        let env = f.envelope(&body).unwrap();
        assert!(env.stream && !f.asks_stream_usage(&env));
        assert_eq!(env.model.as_deref(), Some("claude/x"));
        let mut headers = http::HeaderMap::new();
        headers.insert("anthropic-beta", "a-1, b-2".parse().unwrap());
        let anthropic = Target::new(Provider::Anthropic, "u", "claude-sonnet-4-5");
        assert!(f.passthrough_to(&anthropic));
        assert_eq!(
            f.passthrough_headers(&anthropic),
            ["anthropic-version", "anthropic-beta"]
        );
        let out = f
            .passthrough_body(&env, &body, &anthropic, &headers, false)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            std::str::from_utf8(&body)
                .unwrap()
                .replace("claude/x", "claude-sonnet-4-5")
        );
        let bedrock = Target::new(
            Provider::Bedrock,
            "u",
            "anthropic/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        );
        assert!(f.passthrough_to(&bedrock));
        assert!(f.passthrough_headers(&bedrock).is_empty());
        let out = f
            .passthrough_body(&env, &body, &bedrock, &headers, false)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"max_tokens":9,"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}],"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["a-1","b-2"]}"#
        );
        // Other Bedrock models go through Converse; no other provider takes the body.
        assert!(!f.passthrough_to(&Target::new(Provider::Bedrock, "u", "meta.llama3-70b")));
        assert!(!f.passthrough_to(&Target::new(Provider::OpenAi, "u", "m")));
        assert!(!InboundFormat::OpenAiChat.passthrough_to(&anthropic));
        assert_eq!(
            f.match_path("/v1/messages").map(|o| o.format),
            Some(InboundFormat::Anthropic)
        );
        assert!(f.match_path("/messages").is_some());
        let count = InboundFormat::AnthropicCountTokens;
        assert_eq!(
            count
                .match_path("/v1/messages/count_tokens")
                .map(|o| o.format),
            Some(count)
        );
        assert!(f.match_path("/v1/messages/count_tokens").is_none());
        assert!(count.passthrough_to(&anthropic));
        assert!(!count.passthrough_to(&bedrock));
        let api = Target::new(Provider::Anthropic, "https://api.anthropic.com", "m");
        let req = count
            .passthrough_request(&api, Bytes::from_static(b"{}"), false)
            .unwrap();
        assert_eq!(
            req.uri(),
            "https://api.anthropic.com/v1/messages/count_tokens"
        );
        let req = f
            .passthrough_request(&api, Bytes::from_static(b"{}"), false)
            .unwrap();
        assert_eq!(req.uri(), "https://api.anthropic.com/v1/messages");
        let err = count.parse_request(b"{}").unwrap_err();
        assert!(matches!(err, LlmError::InvalidRequest { ref field, .. } if field == "model"));
        assert_eq!(InboundFormat::for_surface("anthropic"), Some(f));
        assert!(f.match_path("/v1/chat/completions").is_none());
        assert!(f.has_error_shape(
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"m"}}"#
        ));
        assert!(!f.has_error_shape(br#"{"error":{"message":"m","type":null}}"#));
    }
}
