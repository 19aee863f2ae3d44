//! The fast path: when a client speaks the upstream's own API, its body is forwarded with
//! only `model` rewritten, byte-for-byte otherwise (unknown fields, key order and number
//! formatting survive), and usage is read from the answer without re-encoding it.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::canonical::Usage;
use crate::dialect::{gemini, openai_chat, openai_responses};
use crate::error::LlmError;

pub use gemini::usage_from_response as usage_from_gemini_response;
pub use openai_chat::usage_from_chunk as usage_from_openai_chunk;
pub use openai_chat::usage_from_response as usage_from_openai_response;
pub use openai_responses::usage_from_event as usage_from_responses_event;
pub use openai_responses::usage_from_response as usage_from_responses_response;

/// A JSON object's top-level entries in order, each value kept as its raw text.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

fn parse(body: &[u8]) -> Result<Entries, LlmError> {
    serde_json::from_slice(body)
        .map_err(|e| LlmError::invalid("", format!("body is not a json object: {e}")))
}

fn write(entries: &Entries) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    for (i, (key, value)) in entries.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(Value::from(key.as_str()).to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

fn raw(value: &Value) -> Result<Box<RawValue>, LlmError> {
    RawValue::from_string(value.to_string())
        .map_err(|e| LlmError::Internal(format!("raw json value: {e}")))
}

/// Replaces the top-level `model` (adding it when absent), keeping every other byte of the
/// values and the order of the keys.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Bytes, LlmError> {
    let mut entries = parse(body)?;
    let value = raw(&Value::from(model))?;
    let mut found = false;
    for (key, v) in &mut entries.0 {
        if key == "model" {
            *v = value.clone();
            found = true;
        }
    }
    if !found {
        entries.0.insert(0, ("model".to_owned(), value));
    }
    Ok(write(&entries))
}

/// For a streaming Chat Completions body (`"stream": true`), sets
/// `stream_options.include_usage` so the last chunk carries usage; other bodies are
/// returned unchanged. Returns whether the client had asked for usage itself, so the
/// gateway knows whether to drop the extra chunk (see [`is_usage_only_chunk`]).
pub fn request_stream_usage(body: &[u8]) -> Result<(Bytes, bool), LlmError> {
    let mut entries = parse(body)?;
    let streaming = entries
        .0
        .iter()
        .any(|(k, v)| k == "stream" && v.get().trim() == "true");
    if !streaming {
        return Ok((Bytes::copy_from_slice(body), false));
    }
    let mut asked = false;
    let mut found = false;
    for (key, v) in &mut entries.0 {
        if key != "stream_options" {
            continue;
        }
        found = true;
        let mut options: Value = serde_json::from_str(v.get())
            .map_err(|e| LlmError::invalid("stream_options", format!("not valid json: {e}")))?;
        let Some(map) = options.as_object_mut() else {
            return Err(LlmError::invalid("stream_options", "must be an object"));
        };
        asked = map.get("include_usage") == Some(&Value::Bool(true));
        map.insert("include_usage".into(), Value::Bool(true));
        *v = raw(&options)?;
    }
    if !found {
        let mut options = serde_json::Map::new();
        options.insert("include_usage".into(), Value::Bool(true));
        entries
            .0
            .push(("stream_options".to_owned(), raw(&Value::Object(options))?));
    }
    Ok((write(&entries), asked))
}

/// Whether a chunk's data is the usage-only chunk (`"choices": []` with usage) that
/// [`request_stream_usage`] added, so the gateway can hold it back from clients that did not
/// ask for it.
pub fn is_usage_only_chunk(data: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct C {
        #[serde(default)]
        choices: Option<Vec<Value>>,
        #[serde(default)]
        usage: Option<Value>,
    }
    matches!(
        serde_json::from_str::<C>(data),
        Ok(C { choices: Some(c), usage: Some(u) }) if c.is_empty() && !u.is_null()
    )
}

/// The event that ends a passthrough stream the upstream broke (cut connection, garbled
/// event), in `format`'s streaming error shape: Chat Completions and Gemini
/// `data: {"error": {…}}` (what their SDKs raise on), Responses an `error` event with the
/// next `sequence_number`.
pub fn stream_error_frame(
    format: crate::InboundFormat,
    err: &crate::ApiError,
    sequence_number: u64,
) -> Bytes {
    use crate::InboundFormat;
    match format {
        InboundFormat::OpenAiChat => {
            crate::sse::data_frame(&String::from_utf8_lossy(&openai_chat::render_error(err)))
        }
        InboundFormat::Gemini => {
            crate::sse::data_frame(&String::from_utf8_lossy(&gemini::render_error(err)))
        }
        InboundFormat::OpenAiResponses => {
            let event = serde_json::json!({
                "type": "error",
                "code": err.code.clone().unwrap_or_else(|| err.kind.label().to_owned()),
                "message": err.message,
                "param": err.param,
                "sequence_number": sequence_number,
            });
            crate::sse::event_frame("error", &event.to_string())
        }
    }
}

/// Usage from a whole passthrough answer in `format`.
pub fn usage_from_body(format: crate::InboundFormat, body: &[u8]) -> Option<Usage> {
    match format {
        crate::InboundFormat::OpenAiChat => openai_chat::usage_from_response(body),
        crate::InboundFormat::OpenAiResponses => openai_responses::usage_from_response(body),
        crate::InboundFormat::Gemini => gemini::usage_from_response(body),
    }
}

/// Usage from one passthrough stream event's `data:` (the last one seen is final).
pub fn usage_from_stream_data(format: crate::InboundFormat, data: &str) -> Option<Usage> {
    match format {
        crate::InboundFormat::OpenAiChat => openai_chat::usage_from_chunk(data),
        crate::InboundFormat::OpenAiResponses => openai_responses::usage_from_event(data),
        crate::InboundFormat::Gemini => gemini::usage_from_response(data.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rewrites_only_the_model() {
        let body = br#"{ "z": 1.50, "model" : "openai/gpt-4.1", "messages": [ {"role":"user","content":"h\u00e9"} ], "a": {"b": [1e3, null]} }"#;
        let out = rewrite_model(body, "gpt-4.1").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"z":1.50,"model":"gpt-4.1","messages":[ {"role":"user","content":"h\u00e9"} ],"a":{"b": [1e3, null]}}"#
        );
        let out = rewrite_model(br#"{"messages":[]}"#, "m\"x").unwrap();
        assert_eq!(out.as_ref(), br#"{"model":"m\"x","messages":[]}"#);
        assert!(rewrite_model(b"[1]", "m").is_err());
        assert!(rewrite_model(b"{\"model\":", "m").is_err());
    }

    #[test]
    fn stream_usage_is_requested() {
        let (out, asked) = request_stream_usage(br#"{"model":"m","stream":true}"#).unwrap();
        assert_eq!(
            out.as_ref(),
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert!(!asked);
        let (out, asked) = request_stream_usage(
            br#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#,
        )
        .unwrap();
        assert!(asked);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["x"], 1);
        let (out, _) = request_stream_usage(br#"{"stream":false}"#).unwrap();
        assert_eq!(out.as_ref(), br#"{"stream":false}"#);

        assert!(is_usage_only_chunk(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        ));
        assert!(!is_usage_only_chunk(
            r#"{"choices":[{"index":0}],"usage":null}"#
        ));
        assert_eq!(
            usage_from_openai_chunk(
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
            )
            .map(|u| u.total_tokens()),
            Some(3)
        );
    }

    #[test]
    fn stream_error_frames() {
        use crate::{ApiError, ErrorKind, InboundFormat};
        let err = ApiError::invalid_response("the upstream stream broke off");
        let chat = stream_error_frame(InboundFormat::OpenAiChat, &err, 0);
        let chat = std::str::from_utf8(&chat).unwrap();
        let data: Value =
            serde_json::from_str(chat.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(data["error"]["message"], "the upstream stream broke off");
        assert_eq!(data["error"]["type"], "server_error");
        let gem = stream_error_frame(InboundFormat::Gemini, &err, 0);
        let gem = std::str::from_utf8(&gem).unwrap();
        let data: Value = serde_json::from_str(gem.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(data["error"]["status"], "INTERNAL");
        assert_eq!(data["error"]["code"], 502);
        let resp = stream_error_frame(
            InboundFormat::OpenAiResponses,
            &ApiError::new(ErrorKind::Unavailable, "busy"),
            7,
        );
        let resp = std::str::from_utf8(&resp).unwrap();
        assert!(resp.starts_with("event: error\ndata: "), "{resp}");
        let data: Value =
            serde_json::from_str(resp.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["type"], "error");
        assert_eq!(data["sequence_number"], 7);
        assert_eq!(data["code"], "unavailable");
    }

    proptest! {
        #[test]
        fn rewrite_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = rewrite_model(&body, "m");
            let _ = request_stream_usage(&body);
        }

        #[test]
        fn rewrite_keeps_every_other_field(
            keys in proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..8)
        ) {
            let mut original = serde_json::Map::new();
            for (k, v) in &keys {
                original.insert(k.clone(), Value::from(*v));
            }
            let body = Value::Object(original.clone()).to_string();
            let out: Value = serde_json::from_slice(&rewrite_model(body.as_bytes(), "x").unwrap()).unwrap();
            let mut expected = original;
            expected.insert("model".into(), Value::from("x"));
            prop_assert_eq!(out, Value::Object(expected));
        }
    }
}
