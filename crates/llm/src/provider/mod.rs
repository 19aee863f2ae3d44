//! Upstream providers: where a request goes, how it is authenticated, and which wire API
//! it speaks. One module per provider, each one [`ProviderAdapter`] implementation; the
//! body translation itself lives in [`crate::dialect`].

mod anthropic;
mod bedrock;
mod gemini;
mod openai_family;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

pub(crate) use anthropic::count_tokens_request as anthropic_count_tokens_request;
pub use bedrock::{bedrock_model_id, bedrock_region};

use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::openai_chat::ChatFlavor;
use crate::error::{ApiError, LlmError};
use crate::sigv4::AwsCredentials;
use crate::stream::StreamDecoder;

/// An upstream provider: the one list of provider identities. The domain model's routes,
/// the gRPC contract's enum and the admin API's OpenAPI document are checked against it
/// (`tests/provider_identity.rs`); validation messages are built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Provider {
    /// OpenAI (`https://api.openai.com/v1`).
    OpenAi,
    /// Azure OpenAI (deployments or the v1 surface).
    Azure,
    /// Google Gemini (Generative Language API).
    Gemini,
    /// AWS Bedrock Converse.
    Bedrock,
    /// NVIDIA NIM (OpenAI-compatible chat completions).
    Nvidia,
    /// Any OpenAI-compatible server.
    OpenAiCompatible,
    /// Anthropic's Messages API (`https://api.anthropic.com`).
    Anthropic,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 7] = [
        Provider::OpenAi,
        Provider::Azure,
        Provider::Gemini,
        Provider::Bedrock,
        Provider::Nvidia,
        Provider::OpenAiCompatible,
        Provider::Anthropic,
    ];

    /// The provider id used in configuration (`openai`, `azure`, `gemini`, `bedrock`,
    /// `nvidia`, `openai-compatible`, `anthropic`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Azure => "azure",
            Provider::Gemini => "gemini",
            Provider::Bedrock => "bedrock",
            Provider::Nvidia => "nvidia",
            Provider::OpenAiCompatible => "openai-compatible",
            Provider::Anthropic => "anthropic",
        }
    }

    /// Every provider id, comma-separated (for validation messages).
    pub fn ids() -> String {
        Provider::ALL.map(Provider::as_str).join(", ")
    }

    /// The adapter for this provider.
    pub fn adapter(self) -> &'static dyn ProviderAdapter {
        match self {
            Provider::OpenAi => &OPENAI,
            Provider::Azure => &AZURE,
            Provider::Gemini => &gemini::GeminiAdapter,
            Provider::Bedrock => &bedrock::BedrockAdapter,
            Provider::Nvidia => &NVIDIA,
            Provider::OpenAiCompatible => &OPENAI_COMPATIBLE,
            Provider::Anthropic => &anthropic::AnthropicAdapter,
        }
    }

    /// Whether routes of this provider take AWS credentials (else an API key).
    pub fn takes_aws_credentials(self) -> bool {
        self == Provider::Bedrock
    }

    /// Whether routes of this provider take a `region`.
    pub fn takes_region(self) -> bool {
        self == Provider::Bedrock
    }

    /// Whether routes of this provider take an `api_version`.
    pub fn takes_api_version(self) -> bool {
        self == Provider::Azure
    }

    /// Whether routes of this provider may have no credentials at all (local servers).
    pub fn auth_optional(self) -> bool {
        self == Provider::OpenAiCompatible
    }

    /// Whether the upstream speaks the OpenAI APIs (Chat Completions, and Responses where
    /// [`ProviderAdapter`] serves it).
    pub fn is_openai_family(self) -> bool {
        matches!(
            self,
            Provider::OpenAi | Provider::Azure | Provider::Nvidia | Provider::OpenAiCompatible
        )
    }

    /// Whether the upstream serves OpenAI's Responses API.
    pub fn serves_responses(self) -> bool {
        matches!(
            self,
            Provider::OpenAi | Provider::Azure | Provider::OpenAiCompatible
        )
    }
}

const OPENAI: openai_family::OpenAiFamily = openai_family::OpenAiFamily {
    provider: Provider::OpenAi,
    urls: openai_family::Urls::ApiBase,
    key: openai_family::KeyHeader::Bearer,
    flavor: ChatFlavor::OpenAi,
    responses: true,
    lists_models: true,
};

const AZURE: openai_family::OpenAiFamily = openai_family::OpenAiFamily {
    provider: Provider::Azure,
    urls: openai_family::Urls::Azure,
    key: openai_family::KeyHeader::Plain("api-key"),
    flavor: ChatFlavor::OpenAi,
    responses: true,
    lists_models: false,
};

const NVIDIA: openai_family::OpenAiFamily = openai_family::OpenAiFamily {
    provider: Provider::Nvidia,
    urls: openai_family::Urls::ApiBase,
    key: openai_family::KeyHeader::Bearer,
    flavor: ChatFlavor::Compatible,
    responses: false,
    lists_models: true,
};

const OPENAI_COMPATIBLE: openai_family::OpenAiFamily = openai_family::OpenAiFamily {
    provider: Provider::OpenAiCompatible,
    urls: openai_family::Urls::ApiBase,
    key: openai_family::KeyHeader::Bearer,
    flavor: ChatFlavor::Compatible,
    responses: true,
    lists_models: true,
};

impl From<Provider> for &'static str {
    fn from(p: Provider) -> &'static str {
        p.as_str()
    }
}

impl TryFrom<String> for Provider {
    type Error = String;

    fn try_from(s: String) -> Result<Provider, String> {
        Provider::try_from(s.as_str())
    }
}

impl TryFrom<&str> for Provider {
    type Error = String;

    fn try_from(s: &str) -> Result<Provider, String> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown provider '{s}'; expected one of {}",
                    Provider::ids()
                )
            })
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = LlmError;

    fn from_str(s: &str) -> Result<Provider, LlmError> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| LlmError::Target(format!("unknown provider `{s}`")))
    }
}

/// How the gateway authenticates to the upstream.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials (local or keyless servers).
    #[default]
    None,
    /// An API key: `Authorization: Bearer` (OpenAI, NVIDIA, compatible), `api-key` (Azure),
    /// `x-goog-api-key` (Gemini) or `x-api-key` (Anthropic).
    ApiKey(String),
    /// AWS keys for SigV4 (Bedrock).
    Aws(AwsCredentials),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::ApiKey(_) => f.write_str("ApiKey(***)"),
            Credentials::Aws(aws) => f.debug_tuple("Aws").field(aws).finish(),
        }
    }
}

/// Which OpenAI API an OpenAI-family upstream is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamApi {
    /// `POST …/chat/completions` (every provider's default).
    #[default]
    ChatCompletions,
    /// `POST …/responses` (OpenAI, Azure, OpenAI-compatible).
    Responses,
}

/// One resolved upstream call target: a route's provider, URL, model and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The provider.
    pub provider: Provider,
    /// The route's `url` (API base for OpenAI-family, resource endpoint for Azure, host for
    /// Gemini, runtime endpoint for Bedrock).
    pub base_url: String,
    /// The upstream model (Azure: the deployment; Bedrock: `anthropic/<id>` or the bare id).
    pub model: String,
    /// Azure `api-version` (`2024-10-21`, …); `None` or `v1` selects Azure's v1 surface.
    pub api_version: Option<String>,
    /// AWS region (Bedrock); taken from the endpoint host when `None`.
    pub region: Option<String>,
    /// Credentials.
    pub credentials: Credentials,
    /// Chat Completions or Responses, for OpenAI-family providers.
    pub api: UpstreamApi,
}

impl Target {
    /// A target with no credentials, API version or region.
    pub fn new(provider: Provider, base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Target {
            provider,
            base_url: base_url.into(),
            model: model.into(),
            api_version: None,
            region: None,
            credentials: Credentials::None,
            api: UpstreamApi::ChatCompletions,
        }
    }

    /// Sets the credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Target {
        self.credentials = credentials;
        self
    }

    /// Sets the Azure API version.
    pub fn with_api_version(mut self, version: impl Into<String>) -> Target {
        self.api_version = Some(version.into());
        self
    }

    /// Sets the AWS region.
    pub fn with_region(mut self, region: impl Into<String>) -> Target {
        self.region = Some(region.into());
        self
    }

    /// Selects the upstream API.
    pub fn with_api(mut self, api: UpstreamApi) -> Target {
        self.api = api;
        self
    }

    /// This target's adapter.
    pub fn adapter(&self) -> &'static dyn ProviderAdapter {
        self.provider.adapter()
    }

    /// Translates and builds the upstream request (see [`ProviderAdapter::build_request`]).
    pub fn build_request(&self, req: &ChatRequest) -> Result<http::Request<Bytes>, LlmError> {
        self.adapter().build_request(self, req)
    }

    /// Builds a passthrough request (see [`ProviderAdapter::build_passthrough`]).
    pub fn build_passthrough(
        &self,
        body: &[u8],
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        self.adapter().build_passthrough(self, body, stream)
    }

    /// Builds a passthrough request around a body already rewritten for the upstream (see
    /// [`ProviderAdapter::passthrough_request`]).
    pub fn passthrough_request(
        &self,
        body: Bytes,
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        self.adapter().passthrough_request(self, body, stream)
    }

    /// The request listing the upstream's models, if the provider lists them (see
    /// [`ProviderAdapter::models_request`]).
    pub fn models_request(&self) -> Option<Result<http::Request<Bytes>, LlmError>> {
        self.adapter().models_request(self)
    }

    /// Parses the upstream's answer (see [`ProviderAdapter::parse_response`]).
    pub fn parse_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError> {
        self.adapter().parse_response(self, status, headers, body)
    }

    /// Parses a non-2xx answer (see [`ProviderAdapter::parse_error`]).
    pub fn parse_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
        self.adapter().parse_error(self, status, headers, body)
    }

    /// A decoder for this target's stream (see [`ProviderAdapter::stream_decoder`]).
    pub fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        self.adapter().stream_decoder(self)
    }
}

/// What every provider can do. Implementations are stateless; all per-call data is in the
/// [`Target`].
pub trait ProviderAdapter: Send + Sync {
    /// The provider this adapter serves.
    fn provider(&self) -> Provider;

    /// Translates the canonical request into the upstream's HTTP request: URL (streaming or
    /// not, from `req.stream`), auth headers (SigV4-signed for Bedrock), JSON body with the
    /// target's model. Parameters the upstream cannot honour are refused with
    /// [`LlmError::Unsupported`] naming them.
    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError>;

    /// Builds a request carrying the client's own body, for the fast path where the inbound
    /// format is the upstream's API: OpenAI-family bodies get only `model` rewritten (unknown
    /// fields and key order kept), Gemini bodies are sent as they are.
    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError>;

    /// Builds a passthrough request around a body already in the upstream's API (the model
    /// already rewritten where the API carries it): URL and authentication only.
    fn passthrough_request(
        &self,
        target: &Target,
        body: Bytes,
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError>;

    /// Parses the upstream's answer: a 2xx body into the canonical response (the target's
    /// model filled in when the upstream names none), anything else into its error.
    fn parse_response(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError>;

    /// Parses a non-2xx answer (also for streams, whose errors arrive before the first byte).
    fn parse_error(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError;

    /// A fresh decoder for one streamed answer.
    fn stream_decoder(&self, target: &Target) -> Box<dyn StreamDecoder>;

    /// The `Accept` header of a translated streaming request (the upstream's stream framing).
    fn stream_accept(&self) -> &'static str {
        "text/event-stream"
    }

    /// The request listing the upstream's models (`GET {url}/models` with the route's key),
    /// for providers that list them the OpenAI way; `None` for the others.
    fn models_request(&self, _target: &Target) -> Option<Result<http::Request<Bytes>, LlmError>> {
        None
    }

    /// The header carrying the gateway's request id to the upstream (and in its logs).
    fn request_id_header(&self) -> &'static str {
        "x-request-id"
    }
}

/// `base` + `/` + `path`, with one slash between them.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A JSON POST to `url` with the given extra headers.
pub(crate) fn json_post(
    url: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<http::Request<Bytes>, LlmError> {
    let mut builder = http::Request::post(url).header(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| LlmError::Target(format!("`{name}` is not a valid header value")))?;
        value.set_sensitive(true);
        builder = builder.header(*name, value);
    }
    builder
        .body(body)
        .map_err(|e| LlmError::Target(format!("invalid upstream url `{url}`: {e}")))
}

/// The API key, if any; other credential kinds are a misconfiguration.
pub(crate) fn api_key(target: &Target) -> Result<Option<&str>, LlmError> {
    match &target.credentials {
        Credentials::None => Ok(None),
        Credentials::ApiKey(key) => Ok(Some(key.as_str())),
        Credentials::Aws(_) => Err(LlmError::Target(format!(
            "{} routes take an api key, not aws credentials",
            target.provider
        ))),
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Percent-decodes a path segment or query value (`+` is a space when `plus_is_space`);
/// `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The request with its model replaced by the target's.
pub(crate) fn with_model(req: &ChatRequest, model: &str) -> ChatRequest {
    let mut req = req.clone();
    req.model = model.to_owned();
    req
}

/// Non-2xx answers become errors; a 2xx body is parsed by `parse`.
pub(crate) fn split_status(
    adapter: &dyn ProviderAdapter,
    target: &Target,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<ChatResponse, ApiError>,
) -> Result<ChatResponse, ApiError> {
    if !status.is_success() {
        return Err(adapter.parse_error(target, status, headers, body));
    }
    let mut resp = parse(body)?;
    if resp.model.is_empty() {
        resp.model = target.model.clone();
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever an upstream sends, parsing ends in a value or an error, never a panic.
        #[test]
        fn garbage_answers_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            status in 100u16..600,
            stream in any::<bool>(),
        ) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            for provider in Provider::ALL {
                for api in [UpstreamApi::ChatCompletions, UpstreamApi::Responses] {
                    let target = Target::new(provider, "http://x", "m").with_api(api);
                    let _ = target.parse_response(status, &HeaderMap::new(), &body);
                    if stream {
                        let mut decoder = target.stream_decoder();
                        let _ = decoder.push(&body);
                        let _ = decoder.finish();
                    }
                }
            }
        }
    }

    #[test]
    fn provider_ids_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
            assert_eq!(p.adapter().provider(), p);
        }
        assert!("vertex".parse::<Provider>().is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(join_url("https://x/v1/", "/chat"), "https://x/v1/chat");
        assert_eq!(
            encode_path_segment("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
        let debug = format!(
            "{:?}",
            Target::new(Provider::OpenAi, "u", "m")
                .with_credentials(Credentials::ApiKey("sk-secret".into()))
        );
        assert!(!debug.contains("sk-secret"));
    }
}
