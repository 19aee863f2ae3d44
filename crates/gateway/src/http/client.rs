//! The upstream HTTP client of the request path: hyper's pooled client over rustls, taking
//! the `http::Request` that `switchyard_llm` builds as it is.
//!
//! A thin layer on purpose: a general-purpose client (reqwest) re-parses every request's URL
//! into a WHATWG `Url` (with IDNA) and wraps the request in its own types, which profiling
//! the passthrough hop showed at about a tenth of its user CPU. Each traffic I/O thread has
//! its own `UpstreamClient`, so a pooled connection is always driven by the thread that
//! uses it. HTTPS upstreams get HTTP/2 or HTTP/1.1 by ALPN and the platform's certificate
//! verification (the same verifier reqwest uses), plain-HTTP upstreams HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An upstream's answer; its body arrives as it is read.
pub(crate) type UpstreamResponse = http::Response<Incoming>;

/// What can break an upstream call before its response headers.
#[derive(Debug)]
pub(crate) struct CallError(hyper_util::client::legacy::Error);

impl CallError {
    /// The connection could not be made (refused, unreachable, TLS, connect timeout).
    pub(crate) fn is_connect(&self) -> bool {
        self.0.is_connect()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_connect() {
            f.write_str("cannot connect to the upstream")
        } else {
            f.write_str("the upstream connection failed")
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A pooled client for upstream calls. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl UpstreamClient {
    /// A client whose connections time out after `connect_timeout` (TCP connect) and are
    /// closed after 90 s idle.
    pub(crate) fn new(connect_timeout: Duration) -> Result<UpstreamClient, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
            .map_err(|e| format!("cannot load the platform's certificate verifier: {e}"))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(UpstreamClient { inner })
    }

    /// Sends `request` and returns once the response headers are in. Redirects are not
    /// followed (an upstream's 3xx goes back to the client as it is).
    pub(crate) async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<UpstreamResponse, CallError> {
        self.inner
            .request(request.map(Full::new))
            .await
            .map_err(CallError)
    }
}

/// The declared length of an answer's body, if it declared one.
pub(crate) fn content_length(resp: &UpstreamResponse) -> Option<u64> {
    hyper::body::Body::size_hint(resp.body()).exact()
}
