//! Cache keys: a SHA-256 over a canonical encoding of everything that can change the answer.
//!
//! The key is computed from the canonical [`ChatRequest`] (so a chat, Responses, Gemini or
//! Anthropic request asking the same thing gets the same key), plus the proxy, the route and
//! model that would serve it, and the scope value (the consumer, under `scope: consumer`).
//! Left out on purpose: the stream flag and `stream_options` (a stored answer is replayed
//! either way), `user` and `metadata` (they do not change the answer), and anything outside
//! the body (request id, headers). JSON values (tool schemas, response schemas) are encoded
//! with their object keys sorted, so key order does not matter.
//!
//! Every field is written as a tag byte and a length-prefixed value, so no two different
//! requests encode to the same bytes.

use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_llm::{ChatRequest, ContentPart, Image, ResponseFormat, Role, ToolChoice};
use uuid::Uuid;

/// What identifies the answer besides the request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyScope<'a> {
    pub proxy: Uuid,
    pub route: &'a str,
    pub model: &'a str,
    /// The consumer's name under `scope: consumer`, else `None`.
    pub consumer: Option<&'a str>,
}

/// A request's cache key, as lowercase hex.
pub(crate) type Key = String;

/// Why a request is not cached at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uncacheable {
    /// Parts the canonical form cannot carry (built-in tools, audio, stored conversations…):
    /// a stored answer could not be faithful to them.
    Untranslatable,
    /// `n > 1` or log-probabilities: the canonical answer holds one choice, no logprobs.
    Shape,
}

impl Uncacheable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Uncacheable::Untranslatable => "untranslatable",
            Uncacheable::Shape => "shape",
        }
    }
}

fn cacheable(req: &ChatRequest) -> Result<(), Uncacheable> {
    if !req.untranslatable.is_empty() {
        return Err(Uncacheable::Untranslatable);
    }
    if req.n.is_some_and(|n| n > 1) || req.logprobs {
        return Err(Uncacheable::Shape);
    }
    Ok(())
}

/// The exact key of `req` served under `scope`.
pub(crate) fn exact_key(scope: KeyScope<'_>, req: &ChatRequest) -> Result<Key, Uncacheable> {
    cacheable(req)?;
    let mut w = Writer::new(b"exact/1");
    w.scope(scope);
    w.request(req, None);
    Ok(w.finish())
}

/// The semantic cache's view of `req`: the key of everything but the last user message's
/// text (its images and the rest of the conversation included), and that text. `None` when
/// the request has no user text.
pub(crate) fn semantic_key(
    scope: KeyScope<'_>,
    req: &ChatRequest,
) -> Result<Option<(Key, String)>, Uncacheable> {
    cacheable(req)?;
    let Some(last) = req.messages.iter().rposition(|m| m.role == Role::User) else {
        return Ok(None);
    };
    let text = req.messages[last].text();
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut w = Writer::new(b"semantic/1");
    w.scope(scope);
    w.request(req, Some(last));
    Ok(Some((w.finish(), text)))
}

struct Writer {
    hash: Sha256,
}

impl Writer {
    fn new(domain: &[u8]) -> Writer {
        let mut w = Writer {
            hash: Sha256::new(),
        };
        w.bytes(b'D', domain);
        w
    }

    fn finish(self) -> Key {
        let digest = self.hash.finalize();
        let mut out = String::with_capacity(64);
        for b in digest {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    fn tag(&mut self, tag: u8) {
        self.hash.update([tag]);
    }

    fn bytes(&mut self, tag: u8, b: &[u8]) {
        self.hash.update([tag]);
        self.hash.update((b.len() as u64).to_le_bytes());
        self.hash.update(b);
    }

    fn str(&mut self, tag: u8, s: &str) {
        self.bytes(tag, s.as_bytes());
    }

    fn opt_str(&mut self, tag: u8, s: Option<&str>) {
        match s {
            Some(s) => self.str(tag, s),
            None => self.tag(0),
        }
    }

    fn u64(&mut self, tag: u8, n: u64) {
        self.hash.update([tag]);
        self.hash.update(n.to_le_bytes());
    }

    fn opt_f64(&mut self, tag: u8, x: Option<f64>) {
        match x {
            // -0.0 and 0.0 ask the same.
            Some(x) => self.u64(tag, (x + 0.0).to_bits()),
            None => self.tag(0),
        }
    }

    fn opt_u64(&mut self, tag: u8, x: Option<u64>) {
        match x {
            Some(x) => self.u64(tag, x),
            None => self.tag(0),
        }
    }

    fn json(&mut self, v: &Value) {
        match v {
            Value::Null => self.tag(b'n'),
            Value::Bool(b) => self.u64(b'b', u64::from(*b)),
            Value::Number(n) => self.str(b'#', &n.to_string()),
            Value::String(s) => self.str(b's', s),
            Value::Array(items) => {
                self.u64(b'[', items.len() as u64);
                for item in items {
                    self.json(item);
                }
            }
            Value::Object(map) => {
                self.u64(b'{', map.len() as u64);
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                for k in keys {
                    self.str(b'k', k);
                    self.json(&map[k]);
                }
            }
        }
    }

    fn scope(&mut self, scope: KeyScope<'_>) {
        self.bytes(b'P', scope.proxy.as_bytes());
        self.str(b'R', scope.route);
        self.str(b'M', scope.model);
        self.opt_str(b'C', scope.consumer);
    }

    /// The request; with `skip_text_of`, that message's text parts are left out.
    fn request(&mut self, req: &ChatRequest, skip_text_of: Option<usize>) {
        self.u64(b'm', req.messages.len() as u64);
        for (i, m) in req.messages.iter().enumerate() {
            let role = match m.role {
                Role::System => "system",
                Role::Developer => "developer",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            self.str(b'r', role);
            self.opt_str(b'N', m.name.as_deref());
            self.u64(b'p', m.content.len() as u64);
            for part in &m.content {
                match part {
                    ContentPart::Text(t) if skip_text_of == Some(i) => {
                        // Its place is kept (the rest must still line up), not its text.
                        let _ = t;
                        self.tag(b'_');
                    }
                    ContentPart::Text(t) => self.str(b't', t),
                    ContentPart::Image(Image::Url { url, detail }) => {
                        self.str(b'u', url);
                        self.opt_str(b'd', detail.as_deref());
                    }
                    ContentPart::Image(Image::Base64 { media_type, data }) => {
                        self.str(b'i', media_type);
                        self.str(b'6', data);
                    }
                    ContentPart::ToolCall(c) => {
                        self.str(b'c', &c.id);
                        self.str(b'f', &c.name);
                        self.str(b'a', &c.arguments);
                    }
                    ContentPart::ToolResult(r) => {
                        self.str(b'o', &r.call_id);
                        self.str(b'O', &r.content);
                        self.u64(b'e', u64::from(r.is_error));
                    }
                }
            }
        }
        self.u64(b'T', req.tools.len() as u64);
        for t in &req.tools {
            self.str(b'f', &t.name);
            self.opt_str(b'd', t.description.as_deref());
            match &t.parameters {
                Some(p) => self.json(p),
                None => self.tag(0),
            }
            self.opt_u64(b'S', t.strict.map(u64::from));
        }
        match &req.tool_choice {
            None => self.tag(0),
            Some(ToolChoice::Auto) => self.str(b'h', "auto"),
            Some(ToolChoice::None) => self.str(b'h', "none"),
            Some(ToolChoice::Required) => self.str(b'h', "required"),
            Some(ToolChoice::Function(f)) => self.str(b'H', f),
            Some(ToolChoice::AnyOf(names)) => {
                self.u64(b'A', names.len() as u64);
                for n in names {
                    self.str(b'f', n);
                }
            }
        }
        self.opt_u64(b'L', req.parallel_tool_calls.map(u64::from));
        match &req.response_format {
            None => self.tag(0),
            Some(ResponseFormat::Text) => self.str(b'F', "text"),
            Some(ResponseFormat::JsonObject) => self.str(b'F', "json_object"),
            Some(ResponseFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            }) => {
                self.str(b'F', "json_schema");
                self.str(b'f', name);
                self.opt_str(b'd', description.as_deref());
                self.json(schema);
                self.opt_u64(b'S', strict.map(u64::from));
            }
        }
        self.opt_f64(b'1', req.temperature);
        self.opt_f64(b'2', req.top_p);
        self.opt_u64(b'3', req.top_k.map(u64::from));
        self.opt_u64(b'4', req.max_tokens);
        self.u64(b'5', req.stop.len() as u64);
        for s in &req.stop {
            self.str(b's', s);
        }
        self.opt_u64(b'6', req.seed.map(|s| s as u64));
        self.opt_f64(b'7', req.presence_penalty);
        self.opt_f64(b'8', req.frequency_penalty);
        self.opt_str(b'9', req.reasoning_effort.as_deref());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use switchyard_llm::InboundFormat;

    const PROXY: Uuid = Uuid::from_u128(7);

    fn scope() -> KeyScope<'static> {
        KeyScope {
            proxy: PROXY,
            route: "openai",
            model: "gpt-4.1",
            consumer: None,
        }
    }

    fn chat(body: serde_json::Value) -> ChatRequest {
        InboundFormat::OpenAiChat
            .parse_request(body.to_string().as_bytes())
            .unwrap()
    }

    fn key(body: serde_json::Value) -> Key {
        exact_key(scope(), &chat(body)).unwrap()
    }

    #[test]
    fn the_stream_flag_user_and_metadata_do_not_change_the_key() {
        let base = serde_json::json!({"model": "openai/gpt-4.1",
            "messages": [{"role": "user", "content": "Hello"}]});
        let k = key(base.clone());
        assert_eq!(k.len(), 64);
        let mut streamed = base.clone();
        streamed["stream"] = true.into();
        streamed["stream_options"] = serde_json::json!({"include_usage": true});
        streamed["user"] = "u-1".into();
        assert_eq!(key(streamed), k);
        // The model the client named is not the key's: the route and model that serve it are.
        let mut other_name = base.clone();
        other_name["model"] = "gpt-4.1".into();
        assert_eq!(key(other_name), k);
    }

    #[test]
    fn everything_that_can_change_the_answer_changes_the_key() {
        let base = serde_json::json!({"model": "m",
            "messages": [{"role": "system", "content": "Be brief"},
                         {"role": "user", "content": "Hello"}]});
        let k = key(base.clone());
        let variants = [
            (
                "messages",
                serde_json::json!([{"role": "system", "content": "Be long"}, {"role": "user", "content": "Hello"}]),
            ),
            (
                "messages",
                serde_json::json!([{"role": "user", "content": "Hello"}]),
            ),
            (
                "messages",
                serde_json::json!([{"role": "developer", "content": "Be brief"}, {"role": "user", "content": "Hello"}]),
            ),
            ("temperature", serde_json::json!(0.2)),
            ("top_p", serde_json::json!(0.5)),
            ("max_tokens", serde_json::json!(10)),
            ("seed", serde_json::json!(1)),
            ("stop", serde_json::json!(["x"])),
            ("presence_penalty", serde_json::json!(0.1)),
            ("frequency_penalty", serde_json::json!(0.1)),
            ("reasoning_effort", serde_json::json!("low")),
            (
                "tools",
                serde_json::json!([{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]),
            ),
            ("tool_choice", serde_json::json!("none")),
            (
                "response_format",
                serde_json::json!({"type": "json_object"}),
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(k.clone());
        for (field, value) in variants {
            let mut v = base.clone();
            v[field] = value.clone();
            let other = key(v);
            assert!(
                seen.insert(other),
                "{field} = {value} did not change the key"
            );
        }
        // Scope: proxy, route, model, consumer.
        let req = chat(base);
        for s in [
            KeyScope {
                proxy: Uuid::from_u128(8),
                ..scope()
            },
            KeyScope {
                route: "other",
                ..scope()
            },
            KeyScope {
                model: "gpt-4o",
                ..scope()
            },
            KeyScope {
                consumer: Some("a"),
                ..scope()
            },
            KeyScope {
                consumer: Some("b"),
                ..scope()
            },
        ] {
            assert!(seen.insert(exact_key(s, &req).unwrap()), "{s:?}");
        }
    }

    #[test]
    fn json_key_order_does_not_matter() {
        let a = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "w",
                "parameters": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}}}}]});
        let b: serde_json::Value = serde_json::from_str(
            r#"{"tools": [{"function": {"parameters": {"properties": {"b": {"type": "number"}, "a": {"type": "string"}}, "type": "object"}, "name": "w"}, "type": "function"}],
               "messages": [{"content": "x", "role": "user"}], "model": "m"}"#,
        )
        .unwrap();
        assert_eq!(key(a), key(b));
    }

    #[test]
    fn the_same_question_in_every_format_has_one_key() {
        let chat_key = key(serde_json::json!({"model": "m", "max_tokens": 64,
            "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]}));
        let responses = InboundFormat::OpenAiResponses
            .parse_request(
                serde_json::json!({"model": "m", "max_output_tokens": 64, "instructions": "Be brief",
                    "input": [{"role": "user", "content": "Hello"}]})
                .to_string()
                .as_bytes(),
            )
            .unwrap();
        let gemini = InboundFormat::Gemini
            .parse_request(
                serde_json::json!({"systemInstruction": {"parts": [{"text": "Be brief"}]},
                    "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
                    "generationConfig": {"maxOutputTokens": 64}})
                .to_string()
                .as_bytes(),
            )
            .unwrap();
        let anthropic = InboundFormat::Anthropic
            .parse_request(
                serde_json::json!({"model": "m", "max_tokens": 64, "system": "Be brief",
                    "messages": [{"role": "user", "content": "Hello"}]})
                .to_string()
                .as_bytes(),
            )
            .unwrap();
        for (name, req) in [
            ("responses", responses),
            ("gemini", gemini),
            ("anthropic", anthropic),
        ] {
            assert_eq!(
                exact_key(scope(), &req).unwrap(),
                chat_key,
                "{name}: {req:?}"
            );
        }
    }

    #[test]
    fn untranslatable_requests_are_not_cached() {
        let n = chat(
            serde_json::json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(exact_key(scope(), &n), Err(Uncacheable::Shape));
        let req = chat(
            serde_json::json!({"model": "m", "logprobs": true, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert!(exact_key(scope(), &req).is_err());
    }

    #[test]
    fn the_semantic_key_leaves_out_only_the_last_user_text() {
        let req = |system: &str, last: &str| {
            chat(serde_json::json!({"model": "m", "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": last}]}))
        };
        let (a, text) = semantic_key(scope(), &req("S", "How do I reset my password?"))
            .unwrap()
            .unwrap();
        assert_eq!(text, "How do I reset my password?");
        let (b, _) = semantic_key(scope(), &req("S", "password reset how?"))
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        let (c, _) = semantic_key(scope(), &req("T", "How do I reset my password?"))
            .unwrap()
            .unwrap();
        assert_ne!(a, c, "a different system prompt is a different key");
        // Never the exact key.
        assert_ne!(
            a,
            exact_key(scope(), &req("S", "How do I reset my password?")).unwrap()
        );
        let none = chat(
            serde_json::json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}),
        );
        assert_eq!(semantic_key(scope(), &none), Ok(None));
    }
}
