//! A mock OpenAI-compatible `/embeddings` service: validates what it receives (method,
//! bearer key, `model`, `input`) and answers with deterministic bag-of-words vectors, so
//! texts sharing words are similar and unrelated texts are not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The vector size of the mock's embeddings.
pub const MOCK_EMBEDDING_DIM: usize = 256;

struct Shared {
    api_key: String,
    model: String,
    calls: AtomicUsize,
    inputs: Mutex<Vec<String>>,
}

/// A running mock embeddings service on 127.0.0.1.
pub struct MockEmbeddings {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// The deterministic embedding of `text`: one dimension per lower-cased word (hashed).
pub fn bag_of_words(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; MOCK_EMBEDDING_DIM];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let mut h: u64 = 1469598103934665603;
        for b in word.to_lowercase().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(1099511628211);
        }
        v[(h % MOCK_EMBEDDING_DIM as u64) as usize] += 1.0;
    }
    v
}

impl MockEmbeddings {
    /// Starts a mock expecting `Authorization: Bearer {api_key}` and `model`.
    pub async fn start(api_key: &str, model: &str) -> std::io::Result<MockEmbeddings> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            model: model.to_owned(),
            calls: AtomicUsize::new(0),
            inputs: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state(Arc::clone(&shared));
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(MockEmbeddings {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// The base URL to configure (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How many `/embeddings` calls were answered.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Every input text received, in order.
    pub fn inputs(&self) -> Vec<String> {
        self.shared
            .inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(format!("Bearer {}", shared.api_key).as_str()) {
        return error(StatusCode::UNAUTHORIZED, "bad or missing bearer key");
    }
    if body["model"] != json!(shared.model) {
        return error(StatusCode::BAD_REQUEST, "unexpected model");
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            let texts: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect();
            match texts {
                Some(t) if !t.is_empty() => t,
                _ => return error(StatusCode::BAD_REQUEST, "input must be strings"),
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, "input is required"),
    };
    shared.calls.fetch_add(1, Ordering::SeqCst);
    shared
        .inputs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(inputs.iter().cloned());
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": bag_of_words(t)}))
        .collect();
    Json(json!({"object": "list", "data": data, "model": shared.model})).into_response()
}
