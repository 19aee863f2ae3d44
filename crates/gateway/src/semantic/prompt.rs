//! The prompt a semantic decision looks at: the last user message of a request body, for
//! each inbound format (OpenAI chat `messages`, OpenAI Responses `input`, Gemini `contents`).
//! Text parts of a multi-part message are joined with newlines; images and other parts are
//! ignored.

use serde_json::{Map, Value};

/// The inbound body shapes a prompt can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `POST …/chat/completions`: `messages[]` with `role` and `content`.
    Chat,
    /// `POST …/responses`: `input` (a string, or items with `role` and `content`).
    Responses,
    /// Gemini `generateContent`: `contents[]` with `role` and `parts[].text`.
    #[allow(dead_code)] // Served once the gateway serves gemini-format proxies.
    Gemini,
}

/// The last user message's text, or `None` when the body has no user text.
pub(crate) fn last_user_text(kind: BodyKind, body: &Map<String, Value>) -> Option<String> {
    let text = match kind {
        BodyKind::Chat => body
            .get("messages")?
            .as_array()?
            .iter()
            .rev()
            .find(|m| role(m) == Some("user"))
            .and_then(|m| content_text(m.get("content")?)),
        BodyKind::Responses => match body.get("input")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => items
                .iter()
                .rev()
                .find(|item| {
                    role(item) == Some("user")
                        && item
                            .get("type")
                            .and_then(Value::as_str)
                            .is_none_or(|t| t == "message")
                })
                .and_then(|item| content_text(item.get("content")?)),
            _ => None,
        },
        BodyKind::Gemini => body
            .get("contents")?
            .as_array()?
            .iter()
            .rev()
            .find(|c| matches!(role(c), None | Some("user")))
            .and_then(|c| parts_text(c.get("parts")?)),
    }?;
    (!text.trim().is_empty()).then_some(text)
}

fn role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

/// A `content` that is a string, or an array of parts (`{"type": "text" | "input_text",
/// "text": …}` or bare strings).
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => join(parts.iter().filter_map(|p| match p {
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

fn parts_text(parts: &Value) -> Option<String> {
    join(
        parts
            .as_array()?
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str)),
    )
}

fn join<'a>(texts: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut out = String::new();
    for t in texts {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(t);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test bodies are objects"),
        }
    }

    #[test]
    fn chat_takes_the_last_user_message() {
        let b = body(json!({"messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [
                {"type": "text", "text": "second"},
                {"type": "image_url", "image_url": {"url": "data:…"}},
                {"type": "text", "text": "question"}
            ]},
            {"role": "tool", "content": "tool output"}
        ]}));
        assert_eq!(
            last_user_text(BodyKind::Chat, &b).as_deref(),
            Some("second\nquestion")
        );
        let none = body(json!({"messages": [{"role": "system", "content": "x"}]}));
        assert_eq!(last_user_text(BodyKind::Chat, &none), None);
        let blank = body(json!({"messages": [{"role": "user", "content": "  "}]}));
        assert_eq!(last_user_text(BodyKind::Chat, &blank), None);
        assert_eq!(last_user_text(BodyKind::Chat, &body(json!({}))), None);
    }

    #[test]
    fn responses_input_string_or_items() {
        let s = body(json!({"input": "hello there"}));
        assert_eq!(
            last_user_text(BodyKind::Responses, &s).as_deref(),
            Some("hello there")
        );
        let items = body(json!({"input": [
            {"role": "user", "content": "old"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "new"}]},
            {"type": "function_call_output", "call_id": "c", "output": "x"}
        ]}));
        assert_eq!(
            last_user_text(BodyKind::Responses, &items).as_deref(),
            Some("new")
        );
    }

    #[test]
    fn gemini_contents() {
        let b = body(json!({"contents": [
            {"role": "user", "parts": [{"text": "one"}]},
            {"role": "model", "parts": [{"text": "two"}]},
            {"parts": [{"text": "three"}, {"text": "four"}]}
        ]}));
        assert_eq!(
            last_user_text(BodyKind::Gemini, &b).as_deref(),
            Some("three\nfour")
        );
    }
}
