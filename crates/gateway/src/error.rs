//! The gateway's two error boundaries: [`GatewayError`] for starting and running a node, and
//! [`ProxyError`] for one proxied request, with its single mapping to an HTTP status, the
//! OpenAI error body and a low-cardinality metric label.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use bytes::Bytes;
use switchyard_llm::{ApiError, ErrorKind, ErrorShape, InboundFormat};

/// Why a gateway node could not start, or stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid control plane url '{url}': {reason}")]
    ControlPlaneUrl { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] switchyard_tls::TlsError),
    #[error("cannot build the upstream http client: {0}")]
    HttpClient(String),
    #[error(transparent)]
    Model(#[from] crate::semantic::ModelLoadError),
    #[error("cannot start the embedding worker: {0}")]
    EmbeddingWorker(std::io::Error),
    #[error("rate limits: {0}")]
    Limits(String),
    #[error("cannot start the traffic I/O threads: {0}")]
    Runtime(String),
    #[error("{what} server stopped: {reason}")]
    Server { what: &'static str, reason: String },
}

/// Where a dynamic credential was expected on the incoming request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredentialPlace {
    Header(String),
    Query(String),
}

/// Why one proxied request failed before an upstream answer could be relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// No snapshot has been served yet.
    NotReady,
    /// No proxy's base path matches the request path.
    NoProxy,
    /// The proxy does not serve this path.
    UnknownEndpoint,
    MethodNotAllowed {
        allow: &'static str,
    },
    PayloadTooLarge {
        limit: usize,
    },
    BodyRead(String),
    /// The client paused longer than the body timeout while sending its body (408).
    BodyTimeout,
    InvalidJson(String),
    MissingModel(String),
    UnknownRoute(String),
    MissingCredential(CredentialPlace),
    /// A dynamic credential was found but is unusable.
    InvalidCredential(String),
    /// An upstream's error answer, rendered in the client's format with the upstream's status.
    Api(ApiError),
    /// A request refused before anything was sent because it cannot be served as asked: a
    /// body the translated path cannot parse, a parameter the provider cannot honour, a
    /// Gemini stream without `alt=sse` (400 naming the field).
    Untranslatable(ApiError),
    UpstreamUnavailable(String),
    UpstreamTimeout,
    /// A prompt guard matched (403).
    PromptBlocked {
        topics: Vec<String>,
        patterns: Vec<String>,
    },
    /// Semantic routing found no route and there is no fallback.
    NoSemanticRoute(String),
    /// The prompt could not be embedded (encoder saturated or remote service down).
    SemanticUnavailable(String),
    /// The request breaks one of the node's request limits (messages, parts, nesting, the
    /// text a prompt guard scans): 400 naming the limit and the field.
    LimitExceeded {
        param: &'static str,
        message: String,
    },
    /// The node holds as many request bytes in flight as it allows: 503, retry later.
    Overloaded,
    /// A proxy with client authentication, and no consumer key on the request (401).
    MissingConsumerKey,
    /// A consumer key that is malformed, unknown, revoked or expired (401).
    InvalidConsumerKey,
    /// A live key of a consumer not allowed on this proxy (403).
    ConsumerNotAllowed,
    /// A rate limit is reached (429 with `Retry-After`).
    RateLimited {
        limit: String,
        retry_after: u64,
    },
    /// A budget is spent (429 with `Retry-After`).
    BudgetExceeded {
        owner: String,
        retry_after: u64,
    },
    /// The shared counters do not answer and the failure mode is `closed` (503).
    LimitsUnavailable,
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoProxy | ProxyError::UnknownEndpoint | ProxyError::UnknownRoute(_) => {
                StatusCode::NOT_FOUND
            }
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyRead(_) | ProxyError::InvalidJson(_) | ProxyError::MissingModel(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::MissingCredential(_) | ProxyError::InvalidCredential(_) => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::Api(e) | ProxyError::Untranslatable(e) => e.status,
            ProxyError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::PromptBlocked { .. } => StatusCode::FORBIDDEN,
            ProxyError::NoSemanticRoute(_) => StatusCode::BAD_REQUEST,
            ProxyError::SemanticUnavailable(_) | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
            ProxyError::MissingConsumerKey | ProxyError::InvalidConsumerKey => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::ConsumerNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } | ProxyError::BudgetExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::LimitsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Retry-After` (seconds) of a refusal that passes with time.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after, .. }
            | ProxyError::BudgetExceeded { retry_after, .. } => Some(*retry_after),
            ProxyError::LimitsUnavailable => Some(1),
            _ => None,
        }
    }

    /// The OpenAI error `type`.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            ProxyError::NotReady => "service_unavailable",
            ProxyError::MissingCredential(_)
            | ProxyError::InvalidCredential(_)
            | ProxyError::MissingConsumerKey
            | ProxyError::InvalidConsumerKey => "authentication_error",
            ProxyError::ConsumerNotAllowed => "permission_error",
            ProxyError::RateLimited { .. } | ProxyError::BudgetExceeded { .. } => {
                "rate_limit_error"
            }
            ProxyError::LimitsUnavailable => "service_unavailable",
            ProxyError::Api(e) | ProxyError::Untranslatable(e) => e.kind.openai_type(),
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTimeout => "upstream_error",
            ProxyError::PromptBlocked { .. } => "prompt_blocked",
            ProxyError::SemanticUnavailable(_) | ProxyError::Overloaded => "service_unavailable",
            _ => "invalid_request_error",
        }
    }

    /// The OpenAI error `code`, also the metric label of the failure.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProxyError::NotReady => "not_ready",
            ProxyError::NoProxy | ProxyError::UnknownEndpoint => "not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::PayloadTooLarge { .. } => "request_too_large",
            ProxyError::BodyRead(_) => "invalid_body",
            ProxyError::BodyTimeout => "request_timeout",
            ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::MissingModel(_) => "model_required",
            ProxyError::UnknownRoute(_) => "model_not_found",
            ProxyError::MissingCredential(_) => "missing_api_key",
            ProxyError::InvalidCredential(_) => "invalid_api_key",
            ProxyError::Api(e) => e.kind.label(),
            ProxyError::Untranslatable(_) => "untranslatable",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::PromptBlocked { .. } => "prompt_blocked",
            ProxyError::NoSemanticRoute(_) => "no_route_matched",
            ProxyError::SemanticUnavailable(_) => "semantic_unavailable",
            ProxyError::LimitExceeded { .. } => "request_limit_exceeded",
            ProxyError::Overloaded => "overloaded",
            ProxyError::MissingConsumerKey => "missing_api_key",
            ProxyError::InvalidConsumerKey => "invalid_api_key",
            ProxyError::ConsumerNotAllowed => "consumer_not_allowed",
            ProxyError::RateLimited { .. } => "rate_limit_exceeded",
            ProxyError::BudgetExceeded { .. } => "budget_exceeded",
            ProxyError::LimitsUnavailable => "limits_unavailable",
        }
    }

    /// What went wrong in full, for the log line of the request (never for the client:
    /// upstream error chains name internal hosts and addresses).
    pub(crate) fn detail(&self) -> String {
        match self {
            ProxyError::UpstreamUnavailable(why) => format!("the upstream is unavailable: {why}"),
            ProxyError::SemanticUnavailable(why) => {
                format!("the prompt could not be embedded: {why}")
            }
            other => other.message(),
        }
    }

    /// The message the client sees.
    pub(crate) fn message(&self) -> String {
        match self {
            ProxyError::NotReady => {
                "this gateway node has not received its configuration yet".to_owned()
            }
            ProxyError::NoProxy => "no proxy is served at this path".to_owned(),
            ProxyError::UnknownEndpoint => "this proxy does not serve this path".to_owned(),
            ProxyError::MethodNotAllowed { allow } => {
                format!("method not allowed on this path; use {allow}")
            }
            ProxyError::PayloadTooLarge { limit } => {
                format!("the request body is larger than {limit} bytes")
            }
            ProxyError::BodyRead(why) => format!("could not read the request body: {why}"),
            ProxyError::BodyTimeout => {
                "the request body was not received in time (client body timeout)".to_owned()
            }
            ProxyError::InvalidJson(why) => format!("the request body is not valid JSON: {why}"),
            ProxyError::MissingModel(why) => why.clone(),
            ProxyError::UnknownRoute(model) => format!(
                "the model '{model}' does not exist: name a model as '<route>/<model>' with one of this proxy's routes"
            ),
            ProxyError::MissingCredential(CredentialPlace::Header(h)) => {
                format!("missing API key: this route reads it from the '{h}' request header")
            }
            ProxyError::MissingCredential(CredentialPlace::Query(q)) => {
                format!("missing API key: this route reads it from the '{q}' query parameter")
            }
            ProxyError::InvalidCredential(why) => why.clone(),
            ProxyError::Api(e) | ProxyError::Untranslatable(e) => e.message.clone(),
            ProxyError::UpstreamUnavailable(_) => {
                "the upstream is unavailable (the gateway's log has the details under this request's x-request-id)".to_owned()
            }
            ProxyError::UpstreamTimeout => {
                "the upstream did not answer in time (response headers timeout)".to_owned()
            }
            ProxyError::PromptBlocked { topics, patterns } => {
                let mut why = Vec::new();
                if !topics.is_empty() {
                    why.push(format!("deny topic(s) {}", topics.join(", ")));
                }
                if !patterns.is_empty() {
                    why.push(format!("pattern(s) {}", patterns.join(", ")));
                }
                format!(
                    "the prompt was blocked by this proxy's prompt guard: it matches {}",
                    why.join(" and ")
                )
            }
            ProxyError::NoSemanticRoute(why) => why.clone(),
            ProxyError::SemanticUnavailable(_) => {
                "the prompt could not be embedded for semantic routing or the prompt guard; retry later (the gateway's log has the details under this request's x-request-id)".to_owned()
            }
            ProxyError::LimitExceeded { message, .. } => message.clone(),
            ProxyError::Overloaded => {
                "this gateway node is holding as many request bytes as it allows; retry shortly"
                    .to_owned()
            }
            ProxyError::MissingConsumerKey => "missing API key: this proxy serves only requests carrying a consumer key (Authorization: Bearer, x-api-key, x-goog-api-key or ?key=)".to_owned(),
            ProxyError::InvalidConsumerKey => {
                "invalid API key: the key is unknown, revoked or expired".to_owned()
            }
            ProxyError::ConsumerNotAllowed => {
                "this consumer is not allowed to call this proxy".to_owned()
            }
            ProxyError::RateLimited { limit, retry_after } => format!(
                "rate limit '{limit}' reached; retry after {retry_after} s"
            ),
            ProxyError::BudgetExceeded { owner, retry_after } => format!(
                "the budget of {owner} is spent for this period; retry after {retry_after} s"
            ),
            ProxyError::LimitsUnavailable => "rate limits cannot be checked right now (the shared counters do not answer); retry shortly".to_owned(),
        }
    }

    /// The OpenAI-shaped error body: `{"error": {"message", "type", "code"}}`.
    pub(crate) fn body(&self) -> Bytes {
        if let ProxyError::PromptBlocked { topics, patterns } = self {
            let mut error = serde_json::json!({
                "message": self.message(),
                "type": self.error_type(),
                "code": self.code(),
                "param": null,
                "matched_topics": topics,
            });
            if !patterns.is_empty() {
                error["matched_patterns"] = serde_json::json!(patterns);
            }
            return Bytes::from(serde_json::json!({ "error": error }).to_string());
        }
        match self {
            ProxyError::Api(e) | ProxyError::Untranslatable(e) => {
                InboundFormat::OpenAiChat.render_error(e).1
            }
            ProxyError::LimitExceeded { param, message } => {
                let body = serde_json::json!({"error": {
                    "message": message, "type": self.error_type(), "code": self.code(),
                    "param": param,
                }});
                Bytes::from(body.to_string())
            }
            _ => openai_error_body(&self.message(), self.error_type(), self.code()),
        }
    }

    /// The error body in the client's format: OpenAI's
    /// `{"error": {"message", "type", "param", "code"}}` or Gemini's
    /// `{"error": {"code", "message", "status"}}`.
    pub(crate) fn body_for(&self, format: InboundFormat) -> Bytes {
        match format.error_shape() {
            ErrorShape::OpenAi => self.body(),
            _ => format.render_error(&self.api_error()).1,
        }
    }

    /// The error as the translation library carries it.
    pub(crate) fn api_error(&self) -> ApiError {
        match self {
            ProxyError::Api(e) | ProxyError::Untranslatable(e) => e.clone(),
            other => {
                let status = other.status();
                let kind = ErrorKind::from_status(status);
                ApiError::with_status(status, kind, other.message()).code(other.code())
            }
        }
    }
}

pub(crate) fn openai_error_body(message: &str, kind: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "code": code, "param": null}
    });
    Bytes::from(body.to_string())
}

/// An error and its sources, one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_openai_shape_and_a_fitting_status() {
        let cases = [
            (ProxyError::NotReady, 503),
            (ProxyError::NoProxy, 404),
            (ProxyError::MissingModel("no model".into()), 400),
            (ProxyError::UnknownRoute("x/y".into()), 404),
            (
                ProxyError::MissingCredential(CredentialPlace::Header("x-key".into())),
                401,
            ),
            (ProxyError::PayloadTooLarge { limit: 1 }, 413),
            (ProxyError::UpstreamUnavailable("refused".into()), 502),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::InvalidCredential("bad key value".into()), 401),
            (
                ProxyError::Api(
                    ApiError::new(ErrorKind::RateLimited, "slow down").code("rate_limit_exceeded"),
                ),
                429,
            ),
            (
                ProxyError::PromptBlocked {
                    topics: vec!["weapons".into()],
                    patterns: vec![],
                },
                403,
            ),
            (ProxyError::NoSemanticRoute("none".into()), 400),
            (ProxyError::SemanticUnavailable("full".into()), 503),
            (
                ProxyError::LimitExceeded {
                    param: "messages",
                    message: "at most 2 messages".into(),
                },
                400,
            ),
            (ProxyError::Overloaded, 503),
            (ProxyError::BodyTimeout, 408),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
            match &err {
                // An upstream's error keeps its own code (the label is for metrics).
                ProxyError::Api(e) | ProxyError::Untranslatable(e) => {
                    assert_eq!(v["error"]["code"], e.code.clone().unwrap())
                }
                _ => assert_eq!(v["error"]["code"], err.code()),
            }
            assert_eq!(v["error"]["type"], err.error_type());
            assert!(v["error"]["message"].as_str().unwrap().len() > 3);
        }
        let blocked: serde_json::Value = serde_json::from_slice(
            &ProxyError::PromptBlocked {
                topics: vec!["weapons".into()],
                patterns: vec!["ssn".into()],
            }
            .body(),
        )
        .unwrap();
        assert_eq!(blocked["error"]["type"], "prompt_blocked");
        assert_eq!(
            blocked["error"]["matched_topics"],
            serde_json::json!(["weapons"])
        );
        assert_eq!(
            blocked["error"]["matched_patterns"],
            serde_json::json!(["ssn"])
        );
        let m = ProxyError::MissingCredential(CredentialPlace::Header("x-key".into())).message();
        assert!(m.contains("x-key"));
    }

    #[test]
    fn clients_never_see_upstream_error_chains() {
        let chain = "cannot connect to the upstream: tcp connect error: 10.1.2.3:443: refused";
        for err in [
            ProxyError::UpstreamUnavailable(chain.into()),
            ProxyError::SemanticUnavailable(format!("http://embed.internal:9000: {chain}")),
        ] {
            for format in [InboundFormat::OpenAiChat, InboundFormat::Gemini] {
                let body = String::from_utf8(err.body_for(format).to_vec()).unwrap();
                assert!(!body.contains("10.1.2.3"), "{body}");
                assert!(!body.contains("internal"), "{body}");
            }
            // The log line keeps it.
            assert!(err.detail().contains("10.1.2.3"));
        }
    }

    #[test]
    fn errors_render_in_the_clients_format() {
        let err = ProxyError::UnknownRoute("x/y".into());
        let v: serde_json::Value =
            serde_json::from_slice(&err.body_for(InboundFormat::Gemini)).unwrap();
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
        assert!(v["error"]["message"].as_str().unwrap().contains("x/y"));
        let v: serde_json::Value =
            serde_json::from_slice(&err.body_for(InboundFormat::OpenAiResponses)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");

        let upstream = ProxyError::Api(
            ApiError::new(ErrorKind::Authentication, "bad key").code("invalid_api_key"),
        );
        let v: serde_json::Value = serde_json::from_slice(&upstream.body()).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let v: serde_json::Value =
            serde_json::from_slice(&upstream.body_for(InboundFormat::Gemini)).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    }
}
