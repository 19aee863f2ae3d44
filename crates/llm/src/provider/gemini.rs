//! Google Gemini: `{url}/v1beta/models/{model}:generateContent` or
//! `:streamGenerateContent?alt=sse`, key in `x-goog-api-key`.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{
    Provider, ProviderAdapter, Target, UpstreamApi, api_key, encode_path_segment, join_url,
    json_post, split_status,
};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::gemini;
use crate::error::{ApiError, LlmError};
use crate::stream::StreamDecoder;

pub(super) struct GeminiAdapter;

fn model_name(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

fn url(target: &Target, stream: bool) -> Result<String, LlmError> {
    if target.api != UpstreamApi::ChatCompletions {
        return Err(LlmError::Target(
            "gemini routes do not serve the responses api".into(),
        ));
    }
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    Ok(join_url(
        &target.base_url,
        &format!(
            "v1beta/models/{}:{method}",
            encode_path_segment(model_name(&target.model))
        ),
    ))
}

fn headers(target: &Target) -> Result<Vec<(&'static str, String)>, LlmError> {
    Ok(api_key(target)?
        .map(|key| vec![("x-goog-api-key", key.to_owned())])
        .unwrap_or_default())
}

impl ProviderAdapter for GeminiAdapter {
    fn provider(&self) -> Provider {
        Provider::Gemini
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let body = gemini::render_request(req, model_name(&target.model))?;
        json_post(&url(target, req.stream)?, &headers(target)?, body)
    }

    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        self.passthrough_request(target, Bytes::copy_from_slice(body), stream)
    }

    fn passthrough_request(
        &self,
        target: &Target,
        body: Bytes,
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        json_post(&url(target, stream)?, &headers(target)?, body)
    }

    fn parse_response(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError> {
        split_status(self, target, status, headers, body, gemini::parse_response)
    }

    fn parse_error(
        &self,
        _target: &Target,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError {
        // Streaming errors come as a JSON array of one error object.
        let trimmed = body.trim_ascii();
        if trimmed.starts_with(b"[")
            && let Ok(items) = serde_json::from_slice::<Vec<serde_json::Value>>(trimmed)
            && let Some(first) = items.first()
        {
            return gemini::parse_error(status, first.to_string().as_bytes());
        }
        gemini::parse_error(status, body)
    }

    fn stream_decoder(&self, _target: &Target) -> Box<dyn StreamDecoder> {
        Box::new(gemini::GeminiStreamDecoder::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};
    use crate::provider::Credentials;

    fn target() -> Target {
        Target::new(
            Provider::Gemini,
            "https://generativelanguage.googleapis.com",
            "gemini-2.5-flash",
        )
        .with_credentials(Credentials::ApiKey("AIza-test".into()))
    }

    #[test]
    fn urls_and_key() {
        let mut req = ChatRequest {
            messages: vec![Message::text_message(Role::User, "hi")],
            ..ChatRequest::default()
        };
        let http = target().build_request(&req).unwrap();
        assert_eq!(
            http.uri(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(http.headers()["x-goog-api-key"], "AIza-test");
        req.stream = true;
        let http = target().build_request(&req).unwrap();
        assert_eq!(
            http.uri(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        let pass = target()
            .build_passthrough(b"{\"contents\":[]}", true)
            .unwrap();
        assert_eq!(pass.body().as_ref(), b"{\"contents\":[]}");
        assert!(pass.uri().to_string().ends_with("?alt=sse"));
    }

    #[test]
    fn errors() {
        let body = br#"[{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}]"#;
        let err = target().parse_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        assert_eq!(err.message, "API key not valid.");
        let ok = target()
            .parse_response(
                StatusCode::OK,
                &HeaderMap::new(),
                br#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP","index":0}]}"#,
            )
            .unwrap();
        assert_eq!(ok.model, "gemini-2.5-flash");
    }
}
