//! A minimal upstream for benchmarks: canned answers, as fast as possible, in one provider's
//! wire format.
//!
//! `mock-upstream --port 9000 [--provider openai|gemini|bedrock|anthropic]`:
//!
//! - `openai` (default): `POST /v1/chat/completions` and `/chat/completions` (a canned
//!   completion, or a canned SSE stream when the body asks for `"stream": true`) and
//!   `GET /v1/models`;
//! - `gemini`: `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`
//!   (SSE);
//! - `bedrock`: `POST /model/{model}/converse` and `/converse-stream` (AWS event-stream
//!   frames). Signatures are not checked here (the testkit's `MockBedrock` does that);
//! - `anthropic`: `POST /v1/messages` (a canned message, or the Messages SSE event sequence).
//!
//! The model picks the stream's shape, so a benchmark can choose it through a gateway:
//! `bench-paced` streams 20 text chunks 2 ms apart (the first one at once), `bench-burst`
//! streams 200 chunks at once, anything else a short stream of a few chunks.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use switchyard_testkit::bedrock::frame;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a canned reply from the benchmark upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":11,"total_tokens":23}}"#;

const GEMINI_COMPLETION: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hello! This is a canned reply from the benchmark upstream."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":11,"totalTokenCount":23},"modelVersion":"bench-model","responseId":"bench"}"#;

const BEDROCK_COMPLETION: &str = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello! This is a canned reply from the benchmark upstream."}]}},"stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":11,"totalTokens":23},"metrics":{"latencyMs":1}}"#;

const ANTHROPIC_COMPLETION: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench-model","content":[{"type":"text","text":"Hello! This is a canned reply from the benchmark upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":11}}"#;

const MODELS: &str = r#"{"object":"list","data":[{"id":"bench-model","object":"model","created":1700000000,"owned_by":"bench"}]}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Gemini,
    Bedrock,
    Anthropic,
}

/// How a stream for `model` is shaped: text pieces and the pause between events.
fn shape(model: &str) -> (Vec<String>, Duration) {
    match model {
        "bench-paced" => (
            (0..20).map(|i| format!("token{i} ")).collect(),
            Duration::from_millis(2),
        ),
        "bench-burst" => (
            (0..200).map(|i| format!("token{i} ")).collect(),
            Duration::ZERO,
        ),
        _ => (
            vec!["Hello! ".into(), "This is a canned reply.".into()],
            Duration::ZERO,
        ),
    }
}

fn openai_events(model: &str) -> Vec<Bytes> {
    let (pieces, _) = shape(model);
    let chunk = |delta: &str, finish: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        ))
    };
    let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
    for p in &pieces {
        events.push(chunk(&format!("{{\"content\":\"{p}\"}}"), "null"));
    }
    events.push(chunk("{}", "\"stop\""));
    events.push(Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
        pieces.len(),
        pieces.len() + 12
    )));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn gemini_events(model: &str) -> Vec<Bytes> {
    let (pieces, _) = shape(model);
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let finish = if i + 1 == n { ",\"finishReason\":\"STOP\"" } else { "" };
            Bytes::from(format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{p}\"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":12,\"candidatesTokenCount\":{},\"totalTokenCount\":{}}},\"modelVersion\":\"{model}\",\"responseId\":\"bench\"}}\r\n\r\n",
                i + 1,
                i + 13
            ))
        })
        .collect()
}

fn bedrock_event(kind: &str, payload: &str) -> Bytes {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

fn bedrock_events(model: &str) -> Vec<Bytes> {
    let (pieces, _) = shape(model);
    let mut events = vec![bedrock_event(
        "messageStart",
        r#"{"p":"abcd","role":"assistant"}"#,
    )];
    for p in &pieces {
        events.push(bedrock_event(
            "contentBlockDelta",
            &format!(
                "{{\"contentBlockIndex\":0,\"delta\":{{\"text\":\"{p}\"}},\"p\":\"abcdefgh\"}}"
            ),
        ));
    }
    events.push(bedrock_event(
        "contentBlockStop",
        r#"{"contentBlockIndex":0,"p":"ab"}"#,
    ));
    events.push(bedrock_event(
        "messageStop",
        r#"{"p":"abc","stopReason":"end_turn"}"#,
    ));
    events.push(bedrock_event(
        "metadata",
        &format!(
            "{{\"metrics\":{{\"latencyMs\":1}},\"p\":\"a\",\"usage\":{{\"inputTokens\":12,\"outputTokens\":{},\"totalTokens\":{}}}}}",
            pieces.len(),
            pieces.len() + 12
        ),
    ));
    events
}

fn anthropic_events(model: &str) -> Vec<Bytes> {
    let (pieces, _) = shape(model);
    let event = |kind: &str, data: String| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let mut events = vec![
        event(
            "message_start",
            format!(
                "{{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{model}\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}}}}"
            ),
        ),
        event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
                .into(),
        ),
    ];
    for p in &pieces {
        events.push(event(
            "content_block_delta",
            format!("{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{p}\"}}}}"),
        ));
    }
    events.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#.into(),
    ));
    events.push(event(
        "message_delta",
        format!(
            "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{}}}}}",
            pieces.len()
        ),
    ));
    events.push(event("message_stop", r#"{"type":"message_stop"}"#.into()));
    events
}

/// Sends `events`, paced as the model says.
fn stream(model: &str, events: Vec<Bytes>, content_type: &'static str) -> Response {
    let (_, pause) = shape(model);
    let body = if pause.is_zero() {
        Body::from(events.concat())
    } else {
        let paced =
            futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                Ok::<_, std::io::Error>(e)
            });
        Body::from_stream(paced)
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn wants_stream(body: &[u8]) -> bool {
    // Cheap on purpose: the benchmark sends compact JSON.
    body.windows(13).any(|w| w == b"\"stream\":true")
        || body.windows(14).any(|w| w == b"\"stream\": true")
}

/// The `model` of an OpenAI body (cheap, like [`wants_stream`]).
fn body_model(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split("\"model\"")
        .nth(1)
        .and_then(|rest| rest.trim_start().strip_prefix(':'))
        .and_then(|rest| rest.trim_start().strip_prefix('"'))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("bench-model")
        .to_owned()
}

async fn chat(body: Bytes) -> Response {
    if wants_stream(&body) {
        return stream(
            &body_model(&body),
            openai_events(&body_model(&body)),
            "text/event-stream",
        );
    }
    json(COMPLETION)
}

// Every handler takes the request body, so the connection is kept alive for the next one.
async fn gemini(Path(call): Path<String>, _body: Bytes) -> Response {
    match call.rsplit_once(':') {
        Some((_, "generateContent")) => json(GEMINI_COMPLETION),
        Some((model, "streamGenerateContent")) => {
            stream(model, gemini_events(model), "text/event-stream")
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn converse(_body: Bytes) -> Response {
    json(BEDROCK_COMPLETION)
}

async fn converse_stream(Path(model): Path<String>, _body: Bytes) -> Response {
    stream(
        &model,
        bedrock_events(&model),
        "application/vnd.amazon.eventstream",
    )
}

async fn messages(body: Bytes) -> Response {
    if wants_stream(&body) {
        let model = body_model(&body);
        return stream(&model, anthropic_events(&model), "text/event-stream");
    }
    json(ANTHROPIC_COMPLETION)
}

async fn models() -> Response {
    json(MODELS)
}

fn parse_args() -> Result<(SocketAddr, Provider), String> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 9000).into();
    let mut provider = Provider::OpenAi;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--port" => addr.set_port(value.parse().map_err(|_| format!("bad port '{value}'"))?),
            "--listen" => {
                addr = value
                    .parse()
                    .map_err(|_| format!("bad address '{value}'"))?
            }
            "--provider" => {
                provider = match value.as_str() {
                    "openai" => Provider::OpenAi,
                    "gemini" => Provider::Gemini,
                    "bedrock" => Provider::Bedrock,
                    "anthropic" => Provider::Anthropic,
                    other => {
                        return Err(format!(
                            "unknown provider '{other}' (openai, gemini, bedrock, anthropic)"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown flag '{other}' (use --port N, --listen ADDR, --provider openai|gemini|bedrock|anthropic)"
                ));
            }
        }
    }
    Ok((addr, provider))
}

fn router(provider: Provider) -> Router {
    match provider {
        Provider::OpenAi => Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/chat/completions", post(chat))
            .route("/v1/models", get(models)),
        Provider::Gemini => Router::new()
            .route("/v1beta/models/{call}", post(gemini))
            .route("/v1/models/{call}", post(gemini)),
        Provider::Bedrock => Router::new()
            .route("/model/{model}/converse", post(converse))
            .route("/model/{model}/converse-stream", post(converse_stream)),
        Provider::Anthropic => Router::new().route("/v1/messages", post(messages)),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (addr, provider) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    println!("mock-upstream ({provider:?}) listening on {addr}");
    match axum::serve(listener, router(provider)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-upstream: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_llm::{Provider as LlmProvider, StreamEvent, Target};

    #[test]
    fn detects_streaming_requests_and_models() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"model": "m", "stream": true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
        assert_eq!(
            body_model(br#"{"model":"bench-paced","stream":true}"#),
            "bench-paced"
        );
        assert_eq!(body_model(b"{}"), "bench-model");
    }

    /// The canned streams are what the gateway's decoders read.
    #[test]
    fn canned_streams_decode() {
        for (provider, events) in [
            (LlmProvider::OpenAi, openai_events("bench-burst")),
            (LlmProvider::Gemini, gemini_events("bench-burst")),
            (LlmProvider::Bedrock, bedrock_events("bench-burst")),
            (LlmProvider::Anthropic, anthropic_events("bench-burst")),
        ] {
            let target = Target::new(provider, "http://x", "m");
            let decoded = switchyard_llm::stream::decode_all(
                target.stream_decoder().as_mut(),
                &events.concat(),
            )
            .unwrap();
            let deltas = decoded
                .iter()
                .filter(|e| matches!(e, StreamEvent::TextDelta(_)))
                .count();
            assert_eq!(deltas, 200, "{provider:?}");
            assert!(
                decoded.iter().any(|e| matches!(e, StreamEvent::Usage(_))),
                "{provider:?}"
            );
        }
        for body in [
            COMPLETION,
            GEMINI_COMPLETION,
            BEDROCK_COMPLETION,
            ANTHROPIC_COMPLETION,
            MODELS,
        ] {
            serde_json::from_str::<serde_json::Value>(body).unwrap();
        }
    }
}
