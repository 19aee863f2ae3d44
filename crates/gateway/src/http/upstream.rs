//! Stage 3 of a request: the upstream call for one attempt (a route and a model).
//!
//! When the client speaks the upstream's own API (OpenAI chat to an OpenAI-family chat
//! endpoint, Responses to a Responses API, Gemini to Gemini) the client's body goes as it is
//! with only `model` rewritten (the passthrough path: fields Switchyard does not know
//! survive); otherwise the canonical request is translated by the route's provider adapter.
//! Either way `switchyard_llm` builds the request (URL, auth headers, SigV4); this module adds
//! the request id and the `Accept` header, and sends it.

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use switchyard_llm::Target;

use super::inbound::InboundRequest;
use super::relay::APPLICATION_JSON;
use crate::error::ProxyError;
use crate::providers::Upstream;

/// What an attempt may read of the incoming request.
pub(crate) struct Call<'a> {
    pub inbound: &'a std::sync::Arc<InboundRequest>,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub request_id: &'a HeaderValue,
}

/// An upstream request, ready to send.
pub(crate) struct Prepared {
    pub target: Target,
    /// Translated through the canonical model (as opposed to passed through).
    pub translated: bool,
    pub request: http::Request<Bytes>,
}

/// Builds the request asking `upstream` for `model`. Fails before anything is sent when the
/// request cannot be served there (a dynamic key missing: 401; a parameter the provider
/// cannot honour, or a malformed body on the translated path: 400 naming the field).
pub(crate) fn prepare(
    upstream: &Upstream,
    model: &str,
    call: &Call<'_>,
) -> Result<Prepared, ProxyError> {
    let inbound = call.inbound;
    let api = inbound
        .format
        .upstream_api(upstream.provider, upstream.api_version());
    let target = upstream.target(model, api, call.headers, call.query)?;
    let translated = !inbound.format.passthrough_to(&target);
    let built = if translated {
        target.build_request(inbound.canonical()?)
    } else {
        // The client's body, written once with the model replaced (and, for an OpenAI chat
        // stream whose client did not ask for it, the usage chunk asked for; it is held
        // back from the client).
        inbound
            .passthrough_body(&target, call.headers)
            .and_then(|body| {
                inbound
                    .format
                    .passthrough_request(&target, body, inbound.stream)
            })
    };
    let mut request = built.map_err(|e| ProxyError::Untranslatable(e.to_api_error()))?;
    if !translated {
        // The client's API version and beta flags, where the upstream speaks its API.
        for name in inbound.format.passthrough_headers(&target) {
            if let Some(value) = call.headers.get(*name) {
                request.headers_mut().insert(*name, value.clone());
            }
        }
    }
    let accept = if !translated {
        call.headers
            .get(header::ACCEPT)
            .cloned()
            .unwrap_or_else(|| APPLICATION_JSON.clone())
    } else if !inbound.stream {
        APPLICATION_JSON.clone()
    } else {
        HeaderValue::from_static(target.adapter().stream_accept())
    };
    let headers = request.headers_mut();
    headers.insert(header::ACCEPT, accept);
    headers.insert(
        target.adapter().request_id_header(),
        call.request_id.clone(),
    );
    Ok(Prepared {
        target,
        translated,
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::inbound::Endpoint;
    use switchyard_llm::{InboundFormat, Operation};

    fn op(format: InboundFormat) -> Operation {
        match Endpoint::complete(format) {
            Endpoint::Complete(op) => op,
            Endpoint::Models => unreachable!("a completion endpoint"),
        }
    }
    use switchyard_model::{Auth, Provider as RouteProvider, Route, Secret};

    fn upstream(provider: RouteProvider, url: &str, auth: Auth) -> Upstream {
        Upstream::compile(&Route {
            name: "r".into(),
            provider,
            url: url.into(),
            region: Some("us-east-1".into()).filter(|_| provider == RouteProvider::Bedrock),
            api_version: None,
            auth,
            target_model: None,
            models: Vec::new(),
            topics: vec![],
        })
        .unwrap()
    }

    fn key() -> Auth {
        Auth::Static {
            api_key: Secret::new("sk-up"),
        }
    }

    fn call<'a>(
        inbound: &'a std::sync::Arc<InboundRequest>,
        headers: &'a HeaderMap,
        rid: &'a HeaderValue,
    ) -> Call<'a> {
        Call {
            inbound,
            headers,
            query: None,
            request_id: rid,
        }
    }

    #[test]
    fn passthrough_sends_the_clients_body_with_the_model_rewritten() {
        let body = br#"{"model":"openai/x","messages":[{"role":"user","content":"hi"}],"future":{"a":1},"stream":true}"#;
        let inbound = std::sync::Arc::new(
            InboundRequest::from_bytes(&op(InboundFormat::OpenAiChat), Bytes::from_static(body))
                .unwrap(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        let rid = HeaderValue::from_static("rid-1");
        let up = upstream(RouteProvider::OpenAi, "http://127.0.0.1:1/v1/", key());
        let p = prepare(&up, "gpt-4.1", &call(&inbound, &headers, &rid)).unwrap();
        assert!(!p.translated);
        let req = p.request;
        assert_eq!(req.uri(), "http://127.0.0.1:1/v1/chat/completions");
        assert_eq!(req.headers()["authorization"], "Bearer sk-up");
        assert_eq!(req.headers()["x-request-id"], "rid-1");
        let sent = req.body();
        assert_eq!(
            std::str::from_utf8(sent).unwrap(),
            r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"future":{"a":1},"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn translation_goes_through_the_provider_adapter() {
        let body = br#"{"model":"claude/m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#;
        let inbound = std::sync::Arc::new(
            InboundRequest::from_bytes(&op(InboundFormat::OpenAiChat), Bytes::from_static(body))
                .unwrap(),
        );
        let headers = HeaderMap::new();
        let rid = HeaderValue::from_static("rid-1");
        let up = upstream(
            RouteProvider::Bedrock,
            "http://127.0.0.1:1",
            Auth::StaticAws {
                access_key_id: Secret::new("AKID"),
                secret_access_key: Secret::new("SECRET"),
                session_token: None,
            },
        );
        let p = prepare(
            &up,
            "anthropic/anthropic.claude-3-haiku-20240307-v1:0",
            &call(&inbound, &headers, &rid),
        )
        .unwrap();
        assert!(p.translated);
        assert_eq!(
            p.request.uri(),
            "http://127.0.0.1:1/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
        );
        assert!(
            p.request.headers()["authorization"]
                .to_str()
                .unwrap()
                .starts_with("AWS4-HMAC-SHA256")
        );
        assert_eq!(
            p.request.headers()["accept"],
            "application/vnd.amazon.eventstream"
        );

        // A parameter Bedrock cannot honour: refused before anything is sent, naming it.
        let body = br#"{"model":"claude/m","messages":[{"role":"user","content":"hi"}],"seed":7}"#;
        let inbound = std::sync::Arc::new(
            InboundRequest::from_bytes(&op(InboundFormat::OpenAiChat), Bytes::from_static(body))
                .unwrap(),
        );
        let Err(ProxyError::Untranslatable(err)) =
            prepare(&up, "m", &call(&inbound, &headers, &rid))
        else {
            panic!("seed must be refused");
        };
        assert_eq!(err.status.as_u16(), 400);
        assert_eq!(err.param.as_deref(), Some("seed"));

        // Responses to NVIDIA: translated to chat completions.
        let body = br#"{"model":"nim/m","input":"hi"}"#;
        let inbound = std::sync::Arc::new(
            InboundRequest::from_bytes(
                &op(InboundFormat::OpenAiResponses),
                Bytes::from_static(body),
            )
            .unwrap(),
        );
        let up = upstream(RouteProvider::Nvidia, "http://127.0.0.1:1/v1", key());
        let p = prepare(&up, "meta/llama", &call(&inbound, &headers, &rid)).unwrap();
        assert!(p.translated);
        assert_eq!(p.request.uri(), "http://127.0.0.1:1/v1/chat/completions");
    }
}
