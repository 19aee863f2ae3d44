//! The texts a prompt guard of scope `all` reads, and the normalisation every guard matches
//! against. (The last user message, for scope `last_user` and semantic routing, is the
//! inbound format's own knowledge: `InboundFormat::prompt_text`.)
//!
//! * [`all_texts`]: every text of the request: system and developer messages, earlier turns,
//!   assistant tool calls and tool results, Responses `instructions`, Gemini
//!   `systemInstruction` and function responses.
//! * [`normalize`]: NFKC (full-width letters, ligatures and the like fold to their plain
//!   forms) without zero-width and other invisible format characters, so `ｉｇｎｏｒｅ` or
//!   `ig\u{200B}nore` match a pattern written as `ignore`.

use serde_json::{Map, Value};
use switchyard_llm::InboundFormat;
use unicode_normalization::UnicodeNormalization;

/// The top-level fields whose texts a guard of scope `all` reads, per format.
fn guarded_fields(format: InboundFormat) -> &'static [&'static str] {
    match format {
        InboundFormat::OpenAiChat => &["messages"],
        InboundFormat::OpenAiResponses => &["instructions", "input"],
        InboundFormat::Gemini => &["systemInstruction", "system_instruction", "contents"],
        InboundFormat::Anthropic | InboundFormat::AnthropicCountTokens => &["system", "messages"],
    }
}

/// Keys whose string values are structure or binary data, not text a model reads as a
/// prompt (roles, ids, types, media).
const NOT_TEXT: &[&str] = &[
    "role",
    "type",
    "id",
    "call_id",
    "tool_call_id",
    "status",
    "detail",
    "url",
    "image_url",
    "file_id",
    "file_data",
    "data",
    "mime_type",
    "media_type",
    "tool_use_id",
    "mimeType",
    "inline_data",
    "inlineData",
    "file_uri",
    "fileUri",
    "encrypted_content",
    "signature",
    "thoughtSignature",
];

/// Every text of the request a guard of scope `all` reads, in order, or an error when they
/// add up to more than `max_bytes` (a guard never scans a prefix and lets the rest pass).
pub(crate) fn all_texts(
    format: InboundFormat,
    body: &Map<String, Value>,
    max_bytes: usize,
) -> Result<Vec<String>, usize> {
    let mut out = Vec::new();
    let mut total = 0_usize;
    for field in guarded_fields(format) {
        if let Some(v) = body.get(*field) {
            collect(v, &mut out, &mut total, max_bytes)?;
        }
    }
    Ok(out)
}

fn collect(v: &Value, out: &mut Vec<String>, total: &mut usize, max: usize) -> Result<(), usize> {
    match v {
        Value::String(s) if !s.trim().is_empty() => {
            *total += s.len();
            if *total > max {
                return Err(*total);
            }
            out.push(s.clone());
        }
        Value::Array(items) => {
            for item in items {
                collect(item, out, total, max)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                if !NOT_TEXT.contains(&k.as_str()) {
                    collect(item, out, total, max)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether a character is invisible formatting that can hide a word from a pattern:
/// zero-width spaces and joiners, bidi controls, word joiners and invisible operators,
/// the soft hyphen, variation selectors, the byte-order mark, tag characters.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

/// The text a guard matches: invisible characters removed, then NFKC.
pub(crate) fn normalize(text: &str) -> String {
    text.chars().filter(|c| !is_invisible(*c)).nfkc().collect()
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
    fn all_texts_reads_every_message_and_instruction() {
        let chat = body(json!({"messages": [
            {"role": "system", "content": "sys secret"},
            {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "tool result"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        ]}));
        let texts = all_texts(InboundFormat::OpenAiChat, &chat, 1 << 20).unwrap();
        for t in [
            "sys secret",
            "dev",
            "first",
            "{\"q\":\"args\"}",
            "tool result",
            "f",
        ] {
            assert!(texts.iter().any(|x| x == t), "{t} missing from {texts:?}");
        }
        assert!(
            !texts
                .iter()
                .any(|x| x.contains("base64") || x == "c1" || x == "system")
        );

        let responses = body(json!({"instructions": "be evil", "input": [
            {"type": "function_call_output", "call_id": "c", "output": "out"}]}));
        let texts = all_texts(InboundFormat::OpenAiResponses, &responses, 1 << 20).unwrap();
        assert_eq!(texts, ["be evil", "out"]);

        let gemini = body(json!({"systemInstruction": {"parts": [{"text": "sys"}]},
            "contents": [{"role": "user", "parts": [{"text": "u"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}));
        assert_eq!(
            all_texts(InboundFormat::Gemini, &gemini, 1 << 20).unwrap(),
            ["sys", "u"]
        );

        // Over the scan bound: refused, never scanned in part.
        assert!(all_texts(InboundFormat::OpenAiChat, &chat, 10).is_err());
    }

    #[test]
    fn normalization_folds_lookalikes_and_drops_invisible_characters() {
        assert_eq!(normalize("ｉｇｎｏｒｅ"), "ignore");
        assert_eq!(normalize("ig\u{200B}no\u{200D}re\u{FEFF}"), "ignore");
        assert_eq!(normalize("ﬁle"), "file");
        assert_eq!(normalize("plain text"), "plain text");
    }
}
