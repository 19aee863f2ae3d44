//! A request body, scanned once: its top-level entries located (not parsed), so every later
//! step reads only what it needs.
//!
//! [`scan`] walks the body once, validating it as JSON and recording where each top-level
//! value lies, without building a tree. An [`Envelope`] adds what routing needs (the model,
//! whether to stream, whether an OpenAI chat client asked for usage) and where the prompt
//! lies; the passthrough body is then written in one pass from those spans (the model
//! replaced, `stream_options.include_usage` added when the gateway needs it), and the prompt
//! is parsed from its own span only.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::LlmError;

/// Why a body has no usable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not a JSON object.
    #[error("the body must be a JSON object")]
    NotObject,
    /// The body is not valid JSON.
    #[error("{0}")]
    Json(String),
    /// `model` is neither a string nor null.
    #[error("'model' must be a string such as \"<route>/<model>\"")]
    ModelNotString,
}

/// A top-level key: where it lies in the body when it has no escapes, else its text.
#[derive(Debug, Clone)]
enum Key {
    Span(Range<usize>),
    Owned(Box<str>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    value: Range<usize>,
}

/// A body's top-level entries, in order, as spans of the body.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    entries: Vec<Entry>,
}

impl Entry {
    /// Whether this entry's key is `key` (a key without escapes is its bytes in the body).
    fn is(&self, body: &[u8], key: &str) -> bool {
        match &self.key {
            Key::Span(r) => &body[r.clone()] == key.as_bytes(),
            Key::Owned(k) => &**k == key,
        }
    }
}

impl Scanned {
    /// The raw text of the value of `key` (the last one, if repeated).
    pub fn raw<'a>(&self, body: &'a [u8], key: &str) -> Option<&'a str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.is(body, key))
            .and_then(|e| std::str::from_utf8(&body[e.value.clone()]).ok())
    }

    fn span(&self, body: &[u8], key: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.is(body, key))
            .map(|e| e.value.clone())
    }

    fn count(&self, body: &[u8], key: &str) -> usize {
        self.entries.iter().filter(|e| e.is(body, key)).count()
    }

    /// The body with every top-level `model` set to `model` (added first when absent) and,
    /// when `ask_usage`, `stream_options.include_usage` set to true; every other value kept
    /// byte for byte, in order.
    pub fn write(
        &self,
        body: &[u8],
        model: Option<&str>,
        ask_usage: bool,
    ) -> Result<Bytes, LlmError> {
        let mut out = Vec::with_capacity(body.len() + 64);
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        if let Some(model) = model
            && self.count(body, "model") == 0
        {
            sep(&mut out);
            out.extend_from_slice(b"\"model\":");
            write_json_str(&mut out, model);
        }
        let mut has_options = false;
        for entry in &self.entries {
            sep(&mut out);
            match &entry.key {
                Key::Span(r) => {
                    out.push(b'"');
                    out.extend_from_slice(&body[r.clone()]);
                    out.push(b'"');
                }
                Key::Owned(k) => write_json_str(&mut out, k),
            }
            out.push(b':');
            let value = &body[entry.value.clone()];
            match model {
                Some(model) if entry.is(body, "model") => write_json_str(&mut out, model),
                _ if ask_usage && entry.is(body, "stream_options") => {
                    has_options = true;
                    out.extend_from_slice(&with_include_usage(value)?);
                }
                _ => out.extend_from_slice(value),
            }
        }
        if ask_usage && !has_options {
            sep(&mut out);
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Ok(Bytes::from(out))
    }
}

impl Scanned {
    /// The body without the top-level entries named in `drop`, with `add` (key, raw JSON
    /// value) appended; every other entry kept byte for byte, in order.
    pub fn write_edited(
        &self,
        body: &[u8],
        drop: &[&str],
        add: &[(&str, String)],
    ) -> Result<Bytes, LlmError> {
        let mut out = Vec::with_capacity(body.len() + 64);
        out.push(b'{');
        let mut first = true;
        for entry in &self.entries {
            if drop.iter().any(|k| entry.is(body, k)) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            match &entry.key {
                Key::Span(r) => {
                    out.push(b'"');
                    out.extend_from_slice(&body[r.clone()]);
                    out.push(b'"');
                }
                Key::Owned(k) => write_json_str(&mut out, k),
            }
            out.push(b':');
            out.extend_from_slice(&body[entry.value.clone()]);
        }
        for (key, raw) in add {
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_str(&mut out, key);
            out.push(b':');
            out.extend_from_slice(raw.as_bytes());
        }
        out.push(b'}');
        Ok(Bytes::from(out))
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `stream_options` with `include_usage: true` (kept in place when present, else added).
fn with_include_usage(raw: &[u8]) -> Result<Vec<u8>, LlmError> {
    let mut options: Value = serde_json::from_slice(raw)
        .map_err(|e| LlmError::invalid("stream_options", format!("not valid json: {e}")))?;
    let Some(map) = options.as_object_mut() else {
        return Err(LlmError::invalid("stream_options", "must be an object"));
    };
    map.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&options).map_err(|e| LlmError::Internal(format!("stream_options: {e}")))
}

/// A map key, borrowed from the body when it has no escapes.
struct BodyKey<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for BodyKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BodyKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BodyKey(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BodyKey(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where `inner` lies inside `outer` (both slices of the same body).
fn offset(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Scans a JSON object body once: valid JSON, and where each top-level value lies.
pub fn scan(body: &[u8]) -> Result<Scanned, EnvelopeError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(EnvelopeError::NotObject);
    }
    struct V<'b>(&'b [u8]);
    impl<'de: 'b, 'b> Visitor<'de> for V<'b> {
        type Value = Scanned;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a json object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
            let mut entries = Vec::with_capacity(8);
            while let Some(BodyKey(key)) = map.next_key::<BodyKey<'de>>()? {
                let value: &'de RawValue = map.next_value()?;
                let key = match key {
                    Cow::Borrowed(k) => {
                        let start = offset(self.0, k.as_bytes());
                        Key::Span(start..start + k.len())
                    }
                    Cow::Owned(k) => Key::Owned(k.into_boxed_str()),
                };
                let text = value.get().as_bytes();
                let start = offset(self.0, text);
                entries.push(Entry {
                    key,
                    value: start..start + text.len(),
                });
            }
            Ok(Scanned { entries })
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let scanned = de
        .deserialize_map(V(body))
        .map_err(|e| EnvelopeError::Json(e.to_string()))?;
    de.end().map_err(|e| EnvelopeError::Json(e.to_string()))?;
    Ok(scanned)
}

/// What routing needs from a request body, and where the rest lies.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The model the body names (`None` when absent or null, and for formats that name it
    /// in the path).
    pub model: Option<String>,
    /// `"stream": true`.
    pub stream: bool,
    /// `"stream_options": {"include_usage": true}` (OpenAI chat).
    pub include_usage: bool,
    pub(crate) scanned: Scanned,
    /// Where the messages the prompt is read from lie.
    pub(crate) prompt: Option<Range<usize>>,
}

impl Envelope {
    /// Reads the envelope fields from a scanned body. `model_in_body`: whether the format
    /// names the model (and streaming) in the body; `prompt_field`: the field holding the
    /// conversation.
    pub(crate) fn read(
        body: &[u8],
        model_in_body: bool,
        prompt_field: &str,
    ) -> Result<Envelope, EnvelopeError> {
        let scanned = scan(body)?;
        let prompt = scanned.span(body, prompt_field);
        if !model_in_body {
            return Ok(Envelope {
                scanned,
                prompt,
                ..Envelope::default()
            });
        }
        for key in ["model", "stream", "stream_options"] {
            if scanned.count(body, key) > 1 {
                return Err(EnvelopeError::Json(format!("duplicate field `{key}`")));
            }
        }
        let model = match scanned.raw(body, "model") {
            None | Some("null") => None,
            Some(raw) => Some(
                serde_json::from_str::<String>(raw).map_err(|_| EnvelopeError::ModelNotString)?,
            ),
        };
        let stream = scanned.raw(body, "stream") == Some("true");
        let include_usage = scanned
            .raw(body, "stream_options")
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .is_some_and(|o| o.get("include_usage") == Some(&Value::Bool(true)));
        Ok(Envelope {
            model,
            stream,
            include_usage,
            scanned,
            prompt,
        })
    }

    /// The conversation's JSON (the value of `messages`, `input` or `contents`), parsed.
    pub(crate) fn prompt_value(&self, body: &[u8]) -> Option<Value> {
        serde_json::from_slice(&body[self.prompt.clone()?]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_spans_and_rewrites_in_one_pass() {
        let body = br#" { "a\u0062": [1, {"x": 2}], "model" : "r/m", "stream": true } "#;
        let scanned = scan(body).unwrap();
        assert_eq!(scanned.raw(body, "ab"), Some(r#"[1, {"x": 2}]"#));
        assert_eq!(scanned.raw(body, "model"), Some(r#""r/m""#));
        let out = scanned.write(body, Some("m2"), true).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"ab":[1, {"x": 2}],"model":"m2","stream":true,"stream_options":{"include_usage":true}}"#
        );
        let out = scanned.write(body, None, false).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"ab":[1, {"x": 2}],"model":"r/m","stream":true}"#
        );
        for bad in [&b""[..], b"[1]", b"\"x\"", b"{", b"{}x", b"{\"a\":}"] {
            assert!(scan(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(scan(b"[1]").unwrap_err(), EnvelopeError::NotObject);
    }

    #[test]
    fn envelopes() {
        let body = br#"{"model":"a/b","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let env = Envelope::read(body, true, "messages").unwrap();
        assert_eq!(env.model.as_deref(), Some("a/b"));
        assert!(env.stream && env.include_usage);
        assert_eq!(
            env.prompt_value(body).unwrap()[0]["content"],
            Value::from("hi")
        );
        let env = Envelope::read(br#"{"model":null,"stream":1}"#, true, "messages").unwrap();
        assert_eq!(env.model, None);
        assert!(!env.stream);
        assert!(env.prompt.is_none());
        assert_eq!(
            Envelope::read(br#"{"model":3}"#, true, "messages").unwrap_err(),
            EnvelopeError::ModelNotString
        );
        assert!(matches!(
            Envelope::read(br#"{"model":"a","model":"b"}"#, true, "messages"),
            Err(EnvelopeError::Json(_))
        ));
        // A format naming the model in its path reads no envelope fields.
        let env = Envelope::read(br#"{"model":3,"contents":[]}"#, false, "contents").unwrap();
        assert_eq!(env.model, None);
        assert!(env.prompt.is_some());
    }

    #[test]
    fn stream_options_must_be_an_object_to_add_usage() {
        let body = br#"{"stream":true,"stream_options":[1]}"#;
        let err = scan(body).unwrap().write(body, None, true).unwrap_err();
        assert!(matches!(err, LlmError::InvalidRequest { field, .. } if field == "stream_options"));
        let body = br#"{"stream":true,"stream_options":{"x":1,"include_usage":false}}"#;
        let out = scan(body).unwrap().write(body, None, true).unwrap();
        assert_eq!(
            out.as_ref(),
            br#"{"stream":true,"stream_options":{"x":1,"include_usage":true}}"#
        );
    }
}
