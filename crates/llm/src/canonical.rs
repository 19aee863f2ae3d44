//! The canonical request, response and stream event: the hub every format translates through.
//!
//! Conventions:
//! - Token counts follow OpenAI's semantics: `input_tokens` includes cached input,
//!   `output_tokens` includes reasoning tokens.
//! - Tool-call arguments are JSON text, exactly as the model produced them.
//! - A response has one choice; `n > 1` is only served by the passthrough path.

use std::collections::BTreeMap;

/// A chat request in canonical form.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The model as the client named it (`route/model` before routing, the upstream model
    /// after the gateway rewrote it). Empty for Gemini, where the model is in the URL path.
    pub model: String,
    /// The conversation, system and developer messages included, in order.
    pub messages: Vec<Message>,
    /// Function tools the model may call.
    pub tools: Vec<Tool>,
    /// How the model may use the tools.
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one turn.
    pub parallel_tool_calls: Option<bool>,
    /// Plain text, any JSON object, or JSON matching a schema.
    pub response_format: Option<ResponseFormat>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Top-k sampling (Gemini only).
    pub top_k: Option<u32>,
    /// Maximum output tokens.
    pub max_tokens: Option<u64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// Presence penalty.
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f64>,
    /// Number of choices; values above 1 cannot be translated.
    pub n: Option<u32>,
    /// Whether token log-probabilities were asked for (cannot be translated).
    pub logprobs: bool,
    /// Reasoning effort (`none`, `minimal`, `low`, `medium`, `high`, …).
    pub reasoning_effort: Option<String>,
    /// Whether the client wants a stream.
    pub stream: bool,
    /// Whether the client asked for a final usage chunk (`stream_options.include_usage`).
    pub stream_include_usage: bool,
    /// An end-user id (does not change the answer; forwarded where the upstream has a field).
    pub user: Option<String>,
    /// Free-form string metadata (forwarded where the upstream has a field).
    pub metadata: BTreeMap<String, String>,
    /// Parts of the request that were understood but have no canonical form (built-in tools,
    /// audio parts, stored-conversation references, unknown top-level fields…). Translation
    /// to another API refuses a request that has any, naming the first; the passthrough path
    /// can still serve it.
    pub untranslatable: Vec<Untranslatable>,
}

/// A part of a request the canonical form cannot carry: where it is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    /// The JSON path of the part (`tools[0]`, `messages[2].content[1]`, `seed`…).
    pub field: String,
    /// What it is, in lowercase (`built-in tool \`web_search\``).
    pub reason: String,
}

impl Untranslatable {
    /// The part at `field`, for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Untranslatable {
        Untranslatable {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Untranslatable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl ChatRequest {
    /// The text of the last user message (for semantic routing and the prompt guard).
    pub fn last_user_text(&self) -> Option<String> {
        let message = self.messages.iter().rev().find(|m| m.role == Role::User)?;
        let text = message.text();
        if text.is_empty() { None } else { Some(text) }
    }

    /// The system and developer messages' text, joined by blank lines.
    pub fn system_text(&self) -> Option<String> {
        let parts: Vec<String> = self
            .messages
            .iter()
            .filter(|m| m.role.is_system())
            .map(Message::text)
            .filter(|t| !t.is_empty())
            .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.join("\n\n"))
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// System instructions.
    System,
    /// Developer instructions (OpenAI's newer name for system; mapped to system elsewhere).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool's result (its parts are [`ContentPart::ToolResult`]).
    Tool,
}

impl Role {
    /// Whether this is a system or developer message.
    pub fn is_system(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its parts, in order.
    pub content: Vec<ContentPart>,
    /// An optional participant name (OpenAI `name`).
    pub name: Option<String>,
}

impl Message {
    /// A message holding one text part.
    pub fn text_message(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: vec![ContentPart::Text(text.into())],
            name: None,
        }
    }

    /// The text parts joined (no separator, as the model wrote them).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text(t) = part {
                out.push_str(t);
            }
        }
        out
    }

    /// The tool calls in this message.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.content.iter().filter_map(|p| match p {
            ContentPart::ToolCall(c) => Some(c),
            _ => None,
        })
    }
}

/// A part of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    /// Text.
    Text(String),
    /// An image.
    Image(Image),
    /// A call the assistant made.
    ToolCall(ToolCall),
    /// The result of a tool call (in a [`Role::Tool`] message).
    ToolResult(ToolResult),
}

/// An image input.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// An `http(s)` or other URL the upstream must fetch.
    Url {
        /// The URL.
        url: String,
        /// OpenAI's `detail` hint (`low`, `high`, `auto`).
        detail: Option<String>,
    },
    /// Inline bytes, base64-encoded.
    Base64 {
        /// The media type (`image/png`, …).
        media_type: String,
        /// Standard base64 of the bytes.
        data: String,
    },
}

/// A function call made by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call id the tool result refers to.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// The result of a function call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The id of the call this answers.
    pub call_id: String,
    /// The result as text (often JSON).
    pub content: String,
    /// Whether the tool failed.
    pub is_error: bool,
}

/// A function tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The function name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The JSON Schema of its arguments.
    pub parameters: Option<serde_json::Value>,
    /// Whether arguments must match the schema exactly.
    pub strict: Option<bool>,
}

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This function must be called.
    Function(String),
    /// One of these functions must be called (Gemini's `allowedFunctionNames`).
    AnyOf(Vec<String>),
}

/// The requested output format.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Plain text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// What the output is.
        description: Option<String>,
        /// The JSON Schema.
        schema: serde_json::Value,
        /// Whether the schema must be followed exactly.
        strict: Option<bool>,
    },
}

/// A chat response in canonical form (one choice).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatResponse {
    /// The upstream's response id (or a generated one).
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// The answer's text, if any.
    pub text: Option<String>,
    /// The function calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Token usage, when the upstream reported it.
    pub usage: Option<Usage>,
}

impl ChatResponse {
    /// Honours `parallel_tool_calls: false` for upstreams that cannot be told: the first
    /// tool call only.
    pub fn keep_first_tool_call(&mut self) {
        self.tool_calls.truncate(1);
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    #[default]
    Stop,
    /// The token limit was reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// A safety filter stopped the answer.
    ContentFilter,
    /// Anything else, with the upstream's own reason.
    Other(String),
}

impl FinishReason {
    /// OpenAI's `finish_reason` string.
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::Other(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Token usage (OpenAI semantics: cached input is part of input, reasoning part of output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input_tokens: u64,
    /// All output tokens, reasoning included.
    pub output_tokens: u64,
    /// Input served from a prompt cache.
    pub cached_input_tokens: Option<u64>,
    /// Input written to a prompt cache (Bedrock).
    pub cache_write_input_tokens: Option<u64>,
    /// Output spent on reasoning.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One step of a streamed answer, independent of any wire format.
///
/// Decoders emit them in this order: `Start`, then any mix of `TextDelta` and tool-call
/// events (a `ToolCallStart` before that index's deltas), then `Finish` and `Usage` (either
/// order). `Error` may come at any point and ends the stream. Tool-call `index` counts tool
/// calls from 0 in the order they started.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The answer started.
    Start {
        /// The upstream's response id, if it gave one.
        id: Option<String>,
        /// The model that answers, if the upstream said.
        model: Option<String>,
    },
    /// More answer text.
    TextDelta(String),
    /// A tool call began.
    ToolCallStart {
        /// Index among this answer's tool calls.
        index: u32,
        /// The call id.
        id: String,
        /// The function name.
        name: String,
    },
    /// More of a tool call's JSON arguments.
    ToolCallDelta {
        /// Index among this answer's tool calls.
        index: u32,
        /// The next slice of the arguments' JSON text.
        arguments: String,
    },
    /// Generation stopped.
    Finish(FinishReason),
    /// Token usage for the whole answer.
    Usage(Usage),
    /// The upstream reported an error mid-stream.
    Error(crate::ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_user_text_and_system_text() {
        let req = ChatRequest {
            messages: vec![
                Message::text_message(Role::System, "be brief"),
                Message::text_message(Role::User, "first"),
                Message::text_message(Role::Assistant, "ok"),
                Message::text_message(Role::User, "second"),
                Message::text_message(Role::Developer, "and kind"),
            ],
            ..ChatRequest::default()
        };
        assert_eq!(req.last_user_text().as_deref(), Some("second"));
        assert_eq!(req.system_text().as_deref(), Some("be brief\n\nand kind"));
        assert_eq!(ChatRequest::default().last_user_text(), None);
    }

    #[test]
    fn usage_total_saturates() {
        let u = Usage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(u.total_tokens(), u64::MAX);
    }
}
