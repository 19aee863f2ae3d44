//! One module per wire API. Each holds its private wire structs and translates both ways:
//! parse a request into the canonical form and render one from it, parse and render
//! responses, errors and streams. Inbound formats and provider adapters are thin layers over
//! these, so each API's shapes live in exactly one place.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai_chat;
pub mod openai_responses;

use std::fmt;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::canonical::{ChatRequest, Image};
use crate::error::{ApiError, ErrorKind, LlmError};

/// Parses a JSON request body, naming the failing field on error.
pub(crate) fn parse_body<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, LlmError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        LlmError::invalid(field, e.into_inner().to_string())
    })
}

/// Parses bytes into a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<serde_json::Value, LlmError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| LlmError::invalid("", format!("body is not valid json: {e}")))?;
    if !value.is_object() {
        return Err(LlmError::invalid("", "body must be a json object"));
    }
    Ok(value)
}

/// Top-level keys of `value` not in `known`, except those sent at a value that changes
/// nothing ([`is_neutral`]).
pub(crate) fn unknown_keys(value: &serde_json::Value, known: &[&str]) -> Vec<String> {
    match value.as_object() {
        Some(map) => map
            .iter()
            .filter(|(k, v)| !known.contains(&k.as_str()) && !is_neutral(k, v))
            .map(|(k, _)| k.clone())
            .collect(),
        None => Vec::new(),
    }
}

/// Whether a field a dialect does not translate is sent at its neutral value: `null` (the
/// APIs read it as not sent), or its documented default. Such a field changes nothing, so it
/// passes (and is dropped when translating) instead of being refused; any other value is
/// refused as before.
fn is_neutral(field: &str, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    if value.is_null() {
        return true;
    }
    match field {
        // Chat Completions: no bias, text out only.
        "logit_bias" => value.as_object().is_some_and(serde_json::Map::is_empty),
        "modalities" => {
            matches!(value.as_array().map(Vec::as_slice), Some([Value::String(m)]) if m == "text")
        }
        // Responses: run in the foreground.
        "background" => value == &Value::Bool(false),
        _ => false,
    }
}

/// Serializes a wire struct. Our wire structs have string keys and no fallible `Serialize`
/// impls, so this cannot fail in practice; if it ever does, the failure is logged and an
/// error object is produced instead of a panic.
pub(crate) fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(v) => Bytes::from(v),
        Err(e) => {
            tracing::error!(error = %e, "failed to serialize a wire struct");
            Bytes::from_static(br#"{"error":{"message":"internal serialization error"}}"#)
        }
    }
}

/// Like [`json_bytes`] but as a `String` (for SSE data lines).
pub(crate) fn json_string<T: Serialize>(value: &T) -> String {
    String::from_utf8_lossy(&json_bytes(value)).into_owned()
}

/// Serializes a request body for upstream.
pub(crate) fn request_bytes<T: Serialize>(value: &T) -> Result<Bytes, LlmError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| LlmError::Internal(format!("serializing request: {e}")))
}

/// A fresh id such as `chatcmpl-3f2a…`.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first 500 characters of a body, for error messages.
pub(crate) fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".to_owned();
    }
    text.chars().take(500).collect()
}

/// An error for an upstream body that is not what its API documents.
pub(crate) fn bad_body(api: &str, e: impl fmt::Display) -> ApiError {
    ApiError::invalid_response(format!("unreadable {api} response: {e}"))
}

/// The error for a non-JSON (or unexpected JSON) error body.
pub(crate) fn status_error(status: http::StatusCode, body: &[u8]) -> ApiError {
    ApiError::with_status(status, ErrorKind::from_status(status), body_snippet(body))
}

/// The `role` of a message or item.
pub(crate) fn role(message: &serde_json::Value) -> Option<&str> {
    message.get("role").and_then(serde_json::Value::as_str)
}

/// The text of a `content` that is a string, or an array of parts (`{"type": "text" |
/// "input_text", "text": …}` or bare strings); other parts (images…) are skipped.
pub(crate) fn prompt_content_text(content: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => join_texts(parts.iter().filter_map(|p| match p {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => {
                let kind = o.get("type").and_then(Value::as_str);
                if matches!(kind, None | Some("text" | "input_text")) {
                    o.get("text").and_then(Value::as_str)
                } else {
                    None
                }
            }
            _ => None,
        })),
        _ => None,
    }
}

/// Texts joined with newlines; `None` when there are none.
pub(crate) fn join_texts<'a>(texts: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut out = String::new();
    for t in texts {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(t);
    }
    (!out.is_empty()).then_some(out)
}

/// Refuses what no translation can carry: untranslatable parts, `n > 1`, log-probabilities.
pub(crate) fn check_translatable(
    req: &ChatRequest,
    provider: &'static str,
) -> Result<(), LlmError> {
    if let Some(item) = req.untranslatable.first() {
        return Err(LlmError::unsupported(
            provider,
            item.field.clone(),
            format!("{}; only a passthrough route can serve it", item.reason)
                .trim_start_matches("; "),
        ));
    }
    if req.n.unwrap_or(1) > 1 {
        return Err(LlmError::unsupported(
            provider,
            "n",
            "several choices can only be served by a passthrough route",
        ));
    }
    if req.logprobs {
        return Err(LlmError::unsupported(
            provider,
            "logprobs",
            "log-probabilities can only be served by a passthrough route",
        ));
    }
    Ok(())
}

/// Splits a `data:` URL into media type and base64 data.
pub(crate) fn parse_data_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type.to_owned(), data.to_owned()))
}

/// An image as a URL (`data:` URL for inline bytes).
pub(crate) fn image_url(image: &Image) -> String {
    match image {
        Image::Url { url, .. } => url.clone(),
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

/// An image from a URL, turning `data:` URLs into inline bytes.
pub(crate) fn image_from_url(url: String, detail: Option<String>) -> Image {
    match parse_data_url(&url) {
        Some((media_type, data)) => Image::Base64 { media_type, data },
        None => Image::Url { url, detail },
    }
}

/// Tool-call arguments (JSON text) as a JSON value; empty text is `{}`.
pub(crate) fn arguments_value(
    arguments: &str,
    field: impl FnOnce() -> String,
) -> Result<serde_json::Value, LlmError> {
    if arguments.trim().is_empty() {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(arguments)
        .map_err(|e| LlmError::invalid(field(), format!("tool call arguments are not json: {e}")))
}

/// Either a string or a list of `T` (OpenAI's `content`, `stop`, Responses' `input`).
/// Deserialized without buffering so errors inside the list keep their path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TextOr<T> {
    Text(String),
    List(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = TextOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextOr::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(TextOr::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(TextOr::List(items))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<T: Serialize> Serialize for TextOr<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TextOr::Text(t) => serializer.serialize_str(t),
            TextOr::List(items) => items.serialize(serializer),
        }
    }
}

/// Maps a canonical reasoning effort to a Gemini thinking budget (Gemini 2.5 models).
pub(crate) fn thinking_budget(effort: &str) -> Option<i64> {
    Some(match effort {
        "none" => 0,
        "minimal" => 512,
        "low" => 1024,
        "medium" => 8192,
        "high" | "xhigh" => 24576,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png".into(), "AAAA".into()))
        );
        assert_eq!(parse_data_url("https://x/y.png"), None);
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        let img = image_from_url("data:image/jpeg;base64,/9j/".into(), None);
        assert_eq!(image_url(&img), "data:image/jpeg;base64,/9j/");
    }

    #[test]
    fn text_or_list_keeps_error_paths() {
        #[derive(Deserialize, Debug)]
        struct Item {
            #[expect(dead_code)]
            n: u32,
        }
        #[derive(Deserialize, Debug)]
        struct Body {
            content: TextOr<Item>,
        }
        let err =
            parse_body::<Body>(serde_json::json!({"content": [{"n": 1}, {"n": "x"}]})).unwrap_err();
        match err {
            LlmError::InvalidRequest { field, .. } => assert_eq!(field, "content[1].n"),
            other => panic!("unexpected {other:?}"),
        }
        let ok = parse_body::<Body>(serde_json::json!({"content": "hi"})).unwrap();
        assert!(matches!(ok.content, TextOr::Text(t) if t == "hi"));
    }

    #[test]
    fn translatability_checks() {
        let mut req = ChatRequest::default();
        assert!(check_translatable(&req, "bedrock").is_ok());
        req.untranslatable
            .push(crate::canonical::Untranslatable::new(
                "tools[0]",
                "built-in tool `web_search`",
            ));
        match check_translatable(&req, "bedrock").unwrap_err() {
            LlmError::Unsupported { field, message, .. } => {
                assert_eq!(field, "tools[0]");
                assert!(message.contains("web_search"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let req = ChatRequest {
            n: Some(2),
            ..ChatRequest::default()
        };
        assert!(check_translatable(&req, "gemini").is_err());
    }
}
