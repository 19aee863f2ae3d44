//! `OtlpReceiver`: an OpenTelemetry collector's trace endpoint, in process — a tonic server
//! implementing OTLP's `TraceService/Export` RPC with the `opentelemetry-proto` types — that
//! keeps every span it receives for a test to look at (names, ids, parentage, attributes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    /// Arrays, maps and bytes, as their debug text.
    Other(String),
}

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// Hex, 32 characters.
    pub trace_id: String,
    /// Hex, 16 characters.
    pub span_id: String,
    /// Hex; empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind` (1 internal, 2 server, 3 client).
    pub kind: i32,
    /// OTLP's status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    pub attributes: BTreeMap<String, AttrValue>,
    /// The names of the span's events (log lines emitted inside it).
    pub events: Vec<String>,
}

impl ReceivedSpan {
    pub const SERVER: i32 = 2;
    pub const CLIENT: i32 = 3;

    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    /// A string attribute.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key)? {
            AttrValue::Int(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    exports: Mutex<usize>,
}

struct Receiver {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match value(kv.value.as_ref()) {
                    AttrValue::Str(s) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        kind: span.kind,
                        status_code: span.status.map_or(0, |s| s.code),
                        attributes: attributes(span.attributes),
                        events: span.events.into_iter().map(|e| e.name).collect(),
                    });
                }
            }
        }
        self.shared
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(received);
        *self
            .shared
            .exports
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, AttrValue> {
    kvs.into_iter()
        .map(|kv| {
            let v = value(kv.value.as_ref());
            (kv.key, v)
        })
        .collect()
}

fn value(v: Option<&AnyValue>) -> AttrValue {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => AttrValue::Str(s.clone()),
        Some(Any::IntValue(n)) => AttrValue::Int(*n),
        Some(Any::DoubleValue(d)) => AttrValue::Double(*d),
        Some(Any::BoolValue(b)) => AttrValue::Bool(*b),
        other => AttrValue::Other(format!("{other:?}")),
    }
}

/// A running receiver; stopped when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let service = TraceServiceServer::new(Receiver {
            shared: Arc::clone(&shared),
        });
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    cancelled.cancelled_owned(),
                )
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            shared,
            stop,
            server: Some(server),
        })
    }

    /// The endpoint to export to: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many `Export` calls arrived.
    pub fn exports(&self) -> usize {
        *self
            .shared
            .exports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the spans received satisfy `done` (or `timeout` passes); returns them.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
