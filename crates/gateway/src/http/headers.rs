//! Which upstream response headers reach the client: an allowlist.
//!
//! An upstream's framing is never relayed: `Content-Length`, `Transfer-Encoding` and the
//! connection headers describe the upstream's connection, not the client's, and copying them
//! let a lying upstream (`Content-Length: 5` on a chunked body) desynchronise the client's
//! connection. The server sets the client's framing from the body it actually sends (hyper
//! reports an upstream body's exact length only when it was framed by one). Headers an
//! upstream names in `Connection` are hop-by-hop by definition and dropped too. What passes
//! is the content's description and the providers' informational headers (request ids, rate
//! limits, processing time, retry hints); `Set-Cookie` and everything else stays behind.

use axum::http::{HeaderMap, HeaderName, header};

static UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Exact names relayed.
const NAMES: &[&str] = &[
    "content-type",
    "content-language",
    "cache-control",
    "retry-after",
    "retry-after-ms",
    "apim-request-id",
    "x-amzn-requestid",
    "x-amzn-errortype",
    "request-id",
];

/// Name prefixes relayed (providers' informational families).
const PREFIXES: &[&str] = &[
    "x-ratelimit-",
    "ratelimit-",
    "openai-",
    "x-ms-",
    "azureml-",
    "x-amzn-bedrock-",
    "anthropic-",
];

/// The headers named by the upstream's `Connection` header (lowercase).
fn connection_named(upstream: &HeaderMap) -> Vec<String> {
    upstream
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether an upstream header may reach the client (before `Connection`-named ones are
/// taken out).
fn allowed(name: &HeaderName) -> bool {
    let name = name.as_str();
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The client's copy of an upstream's response headers: the allowlisted ones, minus any the
/// upstream named in `Connection`; its `x-request-id` as `x-upstream-request-id`.
/// `content_encoding`: whether the body goes out byte for byte (then its `Content-Encoding`
/// still describes it).
pub(crate) fn relayed(upstream: &HeaderMap, content_encoding: bool) -> HeaderMap {
    let hop = connection_named(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len().min(16) + 4);
    for (name, value) in upstream {
        if hop.iter().any(|h| h == name.as_str()) {
            continue;
        }
        if name.as_str() == "x-request-id" {
            out.append(UPSTREAM_REQUEST_ID.clone(), value.clone());
        } else if allowed(name) || (content_encoding && name == header::CONTENT_ENCODING) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn framing_and_connection_headers_never_pass() {
        let up = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            (
                "connection",
                "keep-alive, x-ratelimit-remaining-requests, X-Internal",
            ),
            ("keep-alive", "timeout=5"),
            ("x-internal", "10.0.0.7"),
            ("x-ratelimit-remaining-requests", "99"),
            ("x-ratelimit-limit-requests", "100"),
            ("set-cookie", "session=1"),
            ("server", "internal-proxy/1.2"),
            ("content-type", "application/json"),
            ("openai-processing-ms", "12"),
            ("x-request-id", "req_1"),
            ("content-encoding", "gzip"),
        ]);
        let out = relayed(&up, false);
        for gone in [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "x-internal",
            "x-ratelimit-remaining-requests",
            "set-cookie",
            "server",
            "content-encoding",
            "x-request-id",
        ] {
            assert!(out.get(gone).is_none(), "{gone} must not be relayed");
        }
        assert_eq!(out["x-ratelimit-limit-requests"], "100");
        assert_eq!(out["content-type"], "application/json");
        assert_eq!(out["openai-processing-ms"], "12");
        assert_eq!(out["x-upstream-request-id"], "req_1");
        assert_eq!(relayed(&up, true)["content-encoding"], "gzip");
    }
}
