//! The upstream HTTP client of the request path: hyper's pooled client over rustls, taking
//! the `http::Request` that `switchyard_llm` builds as it is.
//!
//! A thin layer on purpose: a general-purpose client (reqwest) re-parses every request's URL
//! into a WHATWG `Url` (with IDNA) and wraps the request in its own types, which profiling
//! the passthrough hop showed at about a tenth of its user CPU. Each traffic I/O thread has
//! its own `UpstreamClient`, so a pooled connection is always driven by the thread that
//! uses it. HTTPS upstreams get HTTP/2 or HTTP/1.1 by ALPN and the platform's certificate
//! verification (the same verifier reqwest uses), plain-HTTP upstreams HTTP/1.1.
//!
//! An egress proxy is taken from the environment as curl reads it (`HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, either case): a proxied upstream is reached through
//! an HTTP `CONNECT` tunnel (TLS, when the upstream is HTTPS, runs end to end inside it), with
//! the proxy URL's credentials as `Proxy-Authorization`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service;

use super::egress::{GuardedResolver, Policy};

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
    inner: Client<Connector, Full<Bytes>>,
}

impl UpstreamClient {
    /// A client whose connections time out after `connect_timeout` (TCP connect) and are
    /// closed after 90 s idle, with the egress proxy of the environment, if any.
    pub(crate) fn new(connect_timeout: Duration, egress: Policy) -> Result<UpstreamClient, String> {
        Self::with_proxy(connect_timeout, Matcher::from_env(), egress)
    }

    /// [`UpstreamClient::new`] with the proxy rules given.
    pub(crate) fn with_proxy(
        connect_timeout: Duration,
        proxy: Matcher,
        egress: Policy,
    ) -> Result<UpstreamClient, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let mut guarded = HttpConnector::new_with_resolver(GuardedResolver::new(egress.clone()));
        guarded.enforce_http(false);
        guarded.set_nodelay(true);
        guarded.set_connect_timeout(Some(connect_timeout));
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
        let connector = Connector {
            direct: https(tls.clone(), guarded),
            egress,
            tls: Arc::new(tls),
            tcp,
            proxy: Arc::new(proxy),
        };
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

fn https<C>(tls: rustls::ClientConfig, inner: C) -> HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(inner)
}

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to an upstream directly, or through a `CONNECT` tunnel when the proxy rules say
/// so. Called once per new pooled connection, not per request.
#[derive(Clone)]
struct Connector {
    direct: HttpsConnector<HttpConnector<GuardedResolver>>,
    /// Denied upstream ranges: names are filtered by the resolver, IP literals here.
    egress: Policy,
    tls: Arc<rustls::ClientConfig>,
    tcp: HttpConnector,
    proxy: Arc<Matcher>,
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both paths connect with a fresh `HttpConnector`, which is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let host = dst.host().unwrap_or_default();
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            && self.egress.denies(ip)
        {
            let err = Policy::refusal(host);
            return Box::pin(async move { Err(err.into()) });
        }
        match self.proxy.intercept(&dst) {
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { direct.call(dst).await })
            }
            Some(via) => {
                let mut tunnel = Tunnel::new(via.uri().clone(), self.tcp.clone());
                if let Some(auth) = via.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let mut tunnelled = https(rustls::ClientConfig::clone(&self.tls), tunnel);
                Box::pin(async move { tunnelled.call(dst).await })
            }
        }
    }
}

/// The declared length of an answer's body, if it declared one.
pub(crate) fn content_length(resp: &UpstreamResponse) -> Option<u64> {
    hyper::body::Body::size_hint(resp.body()).exact()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Reads an HTTP head (up to the blank line) from `stream`.
    async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0_u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// An upstream answering every request on a connection with `200 ok`.
    async fn upstream() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while !read_head(&mut stream).await.is_empty() {
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    /// A CONNECT proxy that records the head of each tunnel request.
    async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let head = read_head(&mut client).await;
                    let target = head.split_whitespace().nth(1).unwrap().to_owned();
                    log.lock().unwrap().push(head);
                    let mut upstream = TcpStream::connect(target).await.unwrap();
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (port, seen)
    }

    async fn get(client: &UpstreamClient, port: u16) -> Result<Bytes, CallError> {
        let request = http::Request::get(format!("http://127.0.0.1:{port}/v1/models"))
            .body(Bytes::new())
            .unwrap();
        let resp = client.send(request).await?;
        assert_eq!(resp.status(), 200);
        Ok(resp.into_body().collect().await.unwrap().to_bytes())
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_proxied_upstream_is_reached_through_a_connect_tunnel_with_credentials() {
        let up = upstream().await;
        let (proxy, seen) = connect_proxy().await;
        let rules = Matcher::builder()
            .all(format!("http://user:secret@127.0.0.1:{proxy}"))
            .build();
        let client = UpstreamClient::with_proxy(TIMEOUT, rules, Policy::default()).unwrap();
        assert_eq!(get(&client, up).await.unwrap(), "ok");
        // The pooled tunnel serves the next request too.
        assert_eq!(get(&client, up).await.unwrap(), "ok");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "one tunnel: {seen:?}");
        assert!(
            seen[0].starts_with(&format!("CONNECT 127.0.0.1:{up} HTTP/1.1\r\n")),
            "{}",
            seen[0]
        );
        // Basic base64("user:secret").
        assert!(
            seen[0]
                .to_ascii_lowercase()
                .contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
            "{}",
            seen[0]
        );
    }

    #[tokio::test]
    async fn no_proxy_hosts_and_an_empty_environment_go_direct() {
        let up = upstream().await;
        let (proxy, seen) = connect_proxy().await;
        let rules = Matcher::builder()
            .all(format!("http://127.0.0.1:{proxy}"))
            .no("127.0.0.1".to_owned())
            .build();
        let client = UpstreamClient::with_proxy(TIMEOUT, rules, Policy::default()).unwrap();
        assert_eq!(get(&client, up).await.unwrap(), "ok");
        let client =
            UpstreamClient::with_proxy(TIMEOUT, Matcher::builder().build(), Policy::default())
                .unwrap();
        assert_eq!(get(&client, up).await.unwrap(), "ok");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_proxy_is_a_connect_error() {
        let up = upstream().await;
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let rules = Matcher::builder()
            .all(format!("http://127.0.0.1:{port}"))
            .build();
        let client = UpstreamClient::with_proxy(TIMEOUT, rules, Policy::default()).unwrap();
        let err = get(&client, up).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
}
