//! What every mock provider answers, whatever its wire format: a deterministic reply naming
//! the model, one function call when tools are offered, and a reply quoting the tool's result
//! once it comes back. Tests assert on these across providers.
//!
//! A prompt may script the call (OpenAI chat and Anthropic mocks): a line
//! `mock-tool: NAME {json arguments}` in the last user message makes the mock call the offered
//! tool `NAME` with those arguments, so a real agent (Claude Code) can be driven through a
//! real tool of its own.

use crate::server::ReportedUsage;

/// The assistant's deterministic reply to a request for `model`.
pub fn reply_text(model: &str) -> String {
    format!("Hello! This is a mock reply from {model}.")
}

/// The arguments of the function call every mock makes when tools are offered (JSON text).
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris","unit":"celsius"}"#;

/// The reply once the tool's result came back.
pub fn tool_reply_text(result: &str) -> String {
    format!("The tool answered: {result}")
}

/// Input tokens every mock reports as served from its prompt cache (OpenAI's semantics:
/// part of the input count).
pub const CACHED_TOKENS: u64 = 2;

/// What the conversation ends with, as a mock sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Last {
    User,
    ToolResult(String),
    Other,
}

/// A conversation, reduced to what decides the reply.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub last: Last,
    /// The function tools offered, in order.
    pub tools: Vec<String>,
    /// Whether tool calls are forbidden (`tool_choice: none`, mode `NONE`).
    pub no_tools: bool,
    /// Words of text in the whole request (the mock's "tokens").
    pub words: u64,
    /// The call the last user message scripted (`mock-tool: NAME {arguments}`).
    pub directive: Option<(String, String)>,
}

/// The call a user message's text scripts: `mock-tool: NAME {json arguments}`.
pub(crate) fn directive(text: &str) -> Option<(String, String)> {
    let at = text.find("mock-tool:")?;
    let rest = text[at + "mock-tool:".len()..].trim_start();
    let (name, args) = rest.split_once(char::is_whitespace)?;
    let mut values =
        serde_json::Deserializer::from_str(args.trim_start()).into_iter::<serde_json::Value>();
    let value = values.next()?.ok()?;
    value
        .is_object()
        .then(|| (name.to_owned(), value.to_string()))
}

/// The mock's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Text(String),
    Call { name: String, arguments: String },
}

impl Reply {
    pub(crate) fn text(&self) -> &str {
        match self {
            Reply::Text(t) => t,
            Reply::Call { arguments, .. } => arguments,
        }
    }
}

pub(crate) fn decide(model: &str, conv: &Conversation) -> Reply {
    match &conv.last {
        Last::ToolResult(result) => Reply::Text(tool_reply_text(result)),
        Last::User
            if !conv.no_tools
                && conv
                    .directive
                    .as_ref()
                    .is_some_and(|(name, _)| conv.tools.contains(name)) =>
        {
            let (name, arguments) = conv.directive.clone().unwrap_or_default();
            Reply::Call { name, arguments }
        }
        Last::User if !conv.no_tools && !conv.tools.is_empty() => Reply::Call {
            name: conv.tools[0].clone(),
            arguments: TOOL_ARGUMENTS.to_owned(),
        },
        _ => Reply::Text(reply_text(model)),
    }
}

/// Counts words, the mocks' tokens.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The usage a mock reports for `conv` answered with `reply`.
pub(crate) fn usage(conv: &Conversation, reply: &Reply) -> ReportedUsage {
    ReportedUsage {
        input: conv.words + 3,
        output: words(reply.text()).max(1),
        cached: CACHED_TOKENS,
    }
}

/// A reply's text in stream-sized pieces (words with their trailing space).
pub(crate) fn text_pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// Function-call arguments in stream-sized pieces (7 bytes at most, on char boundaries).
pub(crate) fn argument_pieces(arguments: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut piece = String::new();
    for c in arguments.chars() {
        if piece.len() + c.len_utf8() > 7 {
            out.push(std::mem::take(&mut piece));
        }
        piece.push(c);
    }
    if !piece.is_empty() {
        out.push(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let mut conv = Conversation {
            last: Last::User,
            tools: vec!["get_weather".into()],
            no_tools: false,
            words: 4,
            directive: None,
        };
        assert_eq!(
            decide("m", &conv),
            Reply::Call {
                name: "get_weather".into(),
                arguments: TOOL_ARGUMENTS.into()
            }
        );
        conv.no_tools = true;
        assert_eq!(decide("m", &conv), Reply::Text(reply_text("m")));
        conv.last = Last::ToolResult("18C".into());
        assert_eq!(
            decide("m", &conv),
            Reply::Text("The tool answered: 18C".into())
        );
        conv.last = Last::User;
        conv.no_tools = false;
        conv.tools.push("Read".into());
        conv.directive = directive("Please.\nmock-tool: Read {\"file_path\": \"/tmp/a b\"} thanks");
        assert_eq!(
            decide("m", &conv),
            Reply::Call {
                name: "Read".into(),
                arguments: r#"{"file_path":"/tmp/a b"}"#.into()
            }
        );
        conv.directive = directive("mock-tool: Write {}");
        assert_eq!(
            decide("m", &conv),
            Reply::Call {
                name: "get_weather".into(),
                arguments: TOOL_ARGUMENTS.into()
            },
            "a tool that is not offered is not called"
        );
        assert_eq!(directive("mock-tool: Read [1]"), None);
        assert_eq!(argument_pieces(TOOL_ARGUMENTS).concat(), TOOL_ARGUMENTS);
        assert!(argument_pieces(TOOL_ARGUMENTS).len() > 3);
        assert_eq!(text_pieces("a b c").concat(), "a b c");
    }
}
