//! Errors at the translation boundary.
//!
//! There are three error types, one per boundary:
//!
//! - [`LlmError`]: a request could not be parsed or translated (client's fault, or a route
//!   misconfiguration). Raised before anything is sent upstream.
//! - [`ApiError`]: an error as an API reports it: what an upstream returned (a 4xx/5xx body,
//!   Bedrock's `x-amzn-ErrorType`, an error event inside a 200 stream), or what the gateway
//!   wants to tell its client. Every inbound format can render it
//!   ([`crate::InboundFormat::render_error`]).
//! - [`StreamError`]: an upstream stream's bytes could not be decoded (broken SSE, bad
//!   event-stream CRC, invalid JSON, a stream that ended early).
//!
//! All three convert into [`ApiError`], which carries the single mapping to an HTTP status,
//! each format's error `type`/`status` string and a low-cardinality metric label.

use http::StatusCode;

/// The class of an error: drives the HTTP status, the error `type` in OpenAI bodies, the
/// `status` in Gemini bodies and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (400).
    InvalidRequest,
    /// The prompt does not fit the model's context window (400).
    ContextLengthExceeded,
    /// Missing or bad credentials (401).
    Authentication,
    /// Authenticated but not allowed (403).
    PermissionDenied,
    /// Unknown model, deployment or path (404).
    NotFound,
    /// Too many requests or quota exhausted (429).
    RateLimited,
    /// The upstream took too long (504 / 408).
    Timeout,
    /// The upstream is overloaded or unavailable (503).
    Unavailable,
    /// The upstream failed (500 / 502 / 424).
    Upstream,
    /// The upstream answered with something that could not be understood (502).
    InvalidResponse,
    /// A bug or misconfiguration on our side (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status used when no more precise status is known.
    pub fn default_status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::ContextLengthExceeded => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Upstream | ErrorKind::InvalidResponse => StatusCode::BAD_GATEWAY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind an HTTP status implies, for upstreams whose body says nothing better.
    pub fn from_status(status: StatusCode) -> ErrorKind {
        match status.as_u16() {
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 | 504 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimited,
            503 | 529 => ErrorKind::Unavailable,
            400..=499 => ErrorKind::InvalidRequest,
            _ => ErrorKind::Upstream,
        }
    }

    /// The OpenAI error `type` string.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::ContextLengthExceeded => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Unavailable
            | ErrorKind::Upstream
            | ErrorKind::InvalidResponse
            | ErrorKind::Internal => "server_error",
        }
    }

    /// The Anthropic error `type` string (`{"type": "error", "error": {"type", …}}`).
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::ContextLengthExceeded => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::Upstream | ErrorKind::InvalidResponse | ErrorKind::Internal => "api_error",
        }
    }

    /// The kind for an Anthropic error `type` string.
    pub fn from_anthropic_type(kind: &str) -> Option<ErrorKind> {
        Some(match kind {
            "invalid_request_error" | "request_too_large" => ErrorKind::InvalidRequest,
            "authentication_error" => ErrorKind::Authentication,
            "permission_error" | "billing_error" => ErrorKind::PermissionDenied,
            "not_found_error" => ErrorKind::NotFound,
            "rate_limit_error" => ErrorKind::RateLimited,
            "timeout_error" => ErrorKind::Timeout,
            "overloaded_error" => ErrorKind::Unavailable,
            "api_error" => ErrorKind::Upstream,
            _ => return None,
        })
    }

    /// The Google RPC status string used in Gemini error bodies.
    pub fn google_status(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::ContextLengthExceeded => "INVALID_ARGUMENT",
            ErrorKind::Authentication => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
            ErrorKind::Timeout => "DEADLINE_EXCEEDED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Upstream | ErrorKind::InvalidResponse | ErrorKind::Internal => "INTERNAL",
        }
    }

    /// The kind for a Google RPC status string.
    pub fn from_google_status(status: &str) -> Option<ErrorKind> {
        Some(match status {
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
                ErrorKind::InvalidRequest
            }
            "UNAUTHENTICATED" => ErrorKind::Authentication,
            "PERMISSION_DENIED" => ErrorKind::PermissionDenied,
            "NOT_FOUND" => ErrorKind::NotFound,
            "RESOURCE_EXHAUSTED" => ErrorKind::RateLimited,
            "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
            "UNAVAILABLE" => ErrorKind::Unavailable,
            "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => ErrorKind::Upstream,
            _ => return None,
        })
    }

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Upstream => "upstream",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error as an API reports it: parsed from an upstream or built by the gateway, and
/// rendered in the client's format by [`crate::InboundFormat::render_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} ({status}): {message}")]
pub struct ApiError {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// The class of the error.
    pub kind: ErrorKind,
    /// A human-readable message.
    pub message: String,
    /// A machine-readable code when the upstream gave one (OpenAI `code`, Bedrock exception
    /// name, Gemini `status`).
    pub code: Option<String>,
    /// The request parameter at fault, when known.
    pub param: Option<String>,
}

impl ApiError {
    /// An error of `kind` with that kind's default status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            status: kind.default_status(),
            kind,
            message: message.into(),
            code: None,
            param: None,
        }
    }

    /// An error with an explicit status.
    pub fn with_status(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            code: None,
            param: None,
        }
    }

    /// Sets the machine-readable code.
    pub fn code(mut self, code: impl Into<String>) -> ApiError {
        self.code = Some(code.into());
        self
    }

    /// Sets the parameter at fault.
    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// An upstream answer that could not be understood.
    pub fn invalid_response(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidResponse, message)
    }

    /// Whether a client may retry (or the gateway fall back): rate limits, timeouts and
    /// server-side failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::Unavailable
        ) || self.status.is_server_error()
    }
}

/// A request could not be parsed or translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The client's request body is malformed; `field` is a JSON path like
    /// `messages[2].content[0].image_url.url` (empty for the whole body).
    #[error("invalid request: {field}: {message}")]
    InvalidRequest {
        /// Where in the body the problem is.
        field: String,
        /// What is wrong, in lowercase.
        message: String,
    },
    /// A parameter the chosen provider cannot honour (it would change the answer).
    #[error("`{field}` is not supported by {provider}: {message}")]
    Unsupported {
        /// The provider id (`bedrock`, `gemini`, …).
        provider: &'static str,
        /// The request field that cannot be honoured.
        field: String,
        /// Why, in lowercase.
        message: String,
    },
    /// The route's target is unusable (missing region, credentials of the wrong kind, bad URL).
    #[error("invalid target: {0}")]
    Target(String),
    /// A bug: something that should not fail did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl LlmError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> LlmError {
        LlmError::InvalidRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(
        provider: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> LlmError {
        LlmError::Unsupported {
            provider,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The error as the client should see it.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            LlmError::InvalidRequest { field, message } => {
                let text = if field.is_empty() {
                    message.clone()
                } else {
                    format!("{field}: {message}")
                };
                let err = ApiError::new(ErrorKind::InvalidRequest, text);
                if field.is_empty() {
                    err
                } else {
                    err.param(field.clone())
                }
            }
            LlmError::Unsupported { field, .. } => {
                ApiError::new(ErrorKind::InvalidRequest, self.to_string())
                    .code("unsupported_parameter")
                    .param(field.clone())
            }
            LlmError::Target(_) | LlmError::Internal(_) => {
                ApiError::new(ErrorKind::Internal, self.to_string())
            }
        }
    }
}

impl From<LlmError> for ApiError {
    fn from(err: LlmError) -> ApiError {
        err.to_api_error()
    }
}

/// An upstream stream's bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The SSE framing is broken (e.g. an event larger than the limit).
    #[error("malformed server-sent events: {0}")]
    Sse(String),
    /// The AWS event-stream framing is broken (bad length, bad CRC, bad header).
    #[error("malformed event stream: {0}")]
    Frame(#[from] crate::eventstream::FrameError),
    /// An event's payload is not the JSON the API documents.
    #[error("malformed stream event: {0}")]
    Payload(String),
    /// The stream ended before the upstream said it was complete.
    #[error("stream ended before completion")]
    Truncated,
}

impl From<StreamError> for ApiError {
    fn from(err: StreamError) -> ApiError {
        ApiError::invalid_response(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses_and_strings() {
        assert_eq!(ErrorKind::RateLimited.default_status(), 429);
        assert_eq!(ErrorKind::RateLimited.openai_type(), "rate_limit_error");
        assert_eq!(ErrorKind::RateLimited.google_status(), "RESOURCE_EXHAUSTED");
        assert_eq!(
            ErrorKind::from_google_status("RESOURCE_EXHAUSTED"),
            Some(ErrorKind::RateLimited)
        );
        assert_eq!(
            ErrorKind::from_status(StatusCode::UNAUTHORIZED),
            ErrorKind::Authentication
        );
        assert_eq!(
            ErrorKind::from_status(StatusCode::INTERNAL_SERVER_ERROR),
            ErrorKind::Upstream
        );
    }

    #[test]
    fn llm_errors_become_client_errors() {
        let err = LlmError::invalid("messages[0].role", "unknown role `robot`").to_api_error();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        assert!(err.message.contains("unknown role"));

        let err = LlmError::unsupported("bedrock", "seed", "no equivalent").to_api_error();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.param.as_deref(), Some("seed"));
        assert!(err.message.contains("bedrock"));
        assert!(!err.is_retryable());
        assert!(ApiError::new(ErrorKind::Unavailable, "x").is_retryable());
    }
}
