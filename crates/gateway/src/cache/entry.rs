//! The one stored form of a cached answer: the canonical stream events of the answer, in
//! the order and chunking they arrived (for a streamed answer) or cut into chunks (for a
//! JSON answer), with the model that answered. From it a hit is rendered in any client
//! format: folded into one canonical response for a JSON client, or pushed event by event
//! through the client format's stream encoder for a streaming one (one body chunk per
//! event, so text, tool calls and usage arrive in chunks as they did, never as one lump).
//!
//! Ids and timestamps are not stored: each hit gets fresh ones, as a fresh answer would.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_llm::{
    ChatRequest, ChatResponse, FinishReason, InboundFormat, StreamEvent, ToolCall, Usage,
};

/// The largest text slice of a chunk made from a JSON answer.
const CHUNK_CHARS: usize = 48;

/// A cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The stored form's version (an entry of another version is a miss).
    pub v: u8,
    /// The model that answered.
    pub model: String,
    /// When it was stored (Unix milliseconds): an exact lookup refuses an entry older than
    /// the exact TTL (an entry lives as long as the longer of the two TTLs).
    #[serde(default)]
    pub at: u64,
    pub events: Vec<Ev>,
}

pub(crate) const ENTRY_VERSION: u8 = 1;

/// One canonical stream event (no start, no error: an answer with an error is never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Ev {
    Text {
        d: String,
    },
    ToolStart {
        i: u32,
        id: String,
        name: String,
    },
    ToolArgs {
        i: u32,
        d: String,
    },
    Finish {
        r: String,
    },
    Usage {
        input: u64,
        output: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cached: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_write: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning: Option<u64>,
    },
}

fn finish_str(r: &FinishReason) -> String {
    match r {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
        FinishReason::ToolCalls => "tool_calls".into(),
        FinishReason::ContentFilter => "content_filter".into(),
        FinishReason::Other(o) => format!("other:{o}"),
    }
}

fn finish_from(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.strip_prefix("other:").unwrap_or(other).to_owned()),
    }
}

/// Splits `text` into slices of at most `CHUNK_CHARS` characters, cut after whitespace
/// where there is some.
fn slices(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len();
        for (n, (i, _)) in rest.char_indices().enumerate() {
            if n == CHUNK_CHARS {
                end = i;
                break;
            }
        }
        if end < rest.len()
            && let Some(space) = rest[..end].rfind(char::is_whitespace)
            && space > 0
        {
            end = space + rest[space..].chars().next().map_or(1, char::len_utf8);
        }
        out.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    out
}

impl Entry {
    /// From a complete JSON answer: its text and each tool call's arguments cut into chunks.
    pub(crate) fn from_response(resp: &ChatResponse) -> Entry {
        let mut events = Vec::new();
        if let Some(text) = &resp.text {
            events.extend(slices(text).into_iter().map(|d| Ev::Text { d }));
        }
        for (i, call) in resp.tool_calls.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            events.push(Ev::ToolStart {
                i,
                id: call.id.clone(),
                name: call.name.clone(),
            });
            events.extend(
                slices(&call.arguments)
                    .into_iter()
                    .map(|d| Ev::ToolArgs { i, d }),
            );
        }
        events.push(Ev::Finish {
            r: finish_str(&resp.finish_reason),
        });
        if let Some(u) = &resp.usage {
            events.push(usage_ev(u));
        }
        Entry {
            v: ENTRY_VERSION,
            model: resp.model.clone(),
            at: 0,
            events,
        }
    }

    /// From the canonical events of a complete stream; `None` when it is not one (an error
    /// event, or no `Finish`).
    pub(crate) fn from_events(events: &[StreamEvent]) -> Option<Entry> {
        let mut model = String::new();
        let mut out = Vec::with_capacity(events.len());
        let mut finished = false;
        for e in events {
            match e {
                StreamEvent::Start { model: m, .. } => {
                    if let Some(m) = m
                        && model.is_empty()
                    {
                        model.clone_from(m);
                    }
                }
                StreamEvent::TextDelta(d) => {
                    if !d.is_empty() {
                        out.push(Ev::Text { d: d.clone() });
                    }
                }
                StreamEvent::ToolCallStart { index, id, name } => out.push(Ev::ToolStart {
                    i: *index,
                    id: id.clone(),
                    name: name.clone(),
                }),
                StreamEvent::ToolCallDelta { index, arguments } => out.push(Ev::ToolArgs {
                    i: *index,
                    d: arguments.clone(),
                }),
                StreamEvent::Finish(r) => {
                    finished = true;
                    out.push(Ev::Finish { r: finish_str(r) });
                }
                StreamEvent::Usage(u) => out.push(usage_ev(u)),
                StreamEvent::Error(_) => return None,
            }
        }
        finished.then_some(Entry {
            v: ENTRY_VERSION,
            model,
            at: 0,
            events: out,
        })
    }

    /// Whether an exact lookup may serve it: stored less than `ttl` ago (it may live longer,
    /// for the semantic cache).
    pub(crate) fn fresh(&self, ttl: std::time::Duration) -> bool {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.at == 0 || unix_ms() < self.at.saturating_add(ttl)
    }

    /// The usage the answer reported.
    pub(crate) fn usage(&self) -> Option<Usage> {
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Ev::Usage { .. } => Some(to_event(e)),
                _ => None,
            })
            .and_then(|e| match e {
                StreamEvent::Usage(u) => Some(u),
                _ => None,
            })
    }

    /// The whole answer, for a JSON client (fresh id and time).
    pub(crate) fn response(&self, fallback_model: &str) -> ChatResponse {
        let mut resp = ChatResponse {
            model: if self.model.is_empty() {
                fallback_model.to_owned()
            } else {
                self.model.clone()
            },
            ..ChatResponse::default()
        };
        let mut text: Option<String> = None;
        for e in &self.events {
            match e {
                Ev::Text { d } => text.get_or_insert_with(String::new).push_str(d),
                Ev::ToolStart { id, name, .. } => resp.tool_calls.push(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                }),
                Ev::ToolArgs { i, d } => {
                    if let Some(call) = resp.tool_calls.get_mut(*i as usize) {
                        call.arguments.push_str(d);
                    }
                }
                Ev::Finish { r } => resp.finish_reason = finish_from(r),
                Ev::Usage { .. } => {
                    if let StreamEvent::Usage(u) = to_event(e) {
                        resp.usage = Some(u);
                    }
                }
            }
        }
        resp.text = text;
        resp
    }

    /// The answer as the client format's stream: one body chunk per event.
    pub(crate) fn stream(
        &self,
        format: InboundFormat,
        fallback_model: &str,
        include_usage: bool,
    ) -> Vec<Bytes> {
        let model = if self.model.is_empty() {
            fallback_model
        } else {
            &self.model
        };
        let stub = ChatRequest {
            model: model.to_owned(),
            stream: true,
            stream_include_usage: include_usage,
            ..ChatRequest::default()
        };
        let mut encoder = format.stream_encoder(&stub);
        let mut out = Vec::with_capacity(self.events.len() + 2);
        let mut push = |b: Bytes| {
            if !b.is_empty() {
                out.push(b);
            }
        };
        push(encoder.push(&StreamEvent::Start {
            id: None,
            model: Some(model.to_owned()),
        }));
        for e in &self.events {
            push(encoder.push(&to_event(e)));
        }
        push(encoder.finish());
        out
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn usage_ev(u: &Usage) -> Ev {
    Ev::Usage {
        input: u.input_tokens,
        output: u.output_tokens,
        cached: u.cached_input_tokens,
        cache_write: u.cache_write_input_tokens,
        reasoning: u.reasoning_tokens,
    }
}

fn to_event(e: &Ev) -> StreamEvent {
    match e {
        Ev::Text { d } => StreamEvent::TextDelta(d.clone()),
        Ev::ToolStart { i, id, name } => StreamEvent::ToolCallStart {
            index: *i,
            id: id.clone(),
            name: name.clone(),
        },
        Ev::ToolArgs { i, d } => StreamEvent::ToolCallDelta {
            index: *i,
            arguments: d.clone(),
        },
        Ev::Finish { r } => StreamEvent::Finish(finish_from(r)),
        Ev::Usage {
            input,
            output,
            cached,
            cache_write,
            reasoning,
        } => StreamEvent::Usage(Usage {
            input_tokens: *input,
            output_tokens: *output,
            cached_input_tokens: *cached,
            cache_write_input_tokens: *cache_write,
            reasoning_tokens: *reasoning,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer() -> ChatResponse {
        ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4.1".into(),
            created: 5,
            text: Some("The quick brown fox jumps over the lazy dog, again and again and again, until the end.".into()),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Paris","unit":"celsius","days":[1,2,3,4,5,6,7,8,9,10,11,12]}"#.into(),
            }],
            finish_reason: FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 20,
                reasoning_tokens: Some(4),
                ..Usage::default()
            }),
        }
    }

    #[test]
    fn a_json_answer_round_trips_and_streams_in_chunks() {
        let entry = Entry::from_response(&answer());
        let text_chunks = entry
            .events
            .iter()
            .filter(|e| matches!(e, Ev::Text { .. }))
            .count();
        assert!(text_chunks >= 2, "{entry:?}");
        let back = entry.response("x");
        let expected = ChatResponse {
            id: String::new(),
            created: 0,
            ..answer()
        };
        assert_eq!(back, expected);
        assert_eq!(entry.usage().unwrap().output_tokens, 20);
        // Through the stored bytes.
        let bytes = serde_json::to_vec(&entry).unwrap();
        let again: Entry = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(again, entry);

        // Every format streams it in several events, text and the call intact.
        for format in [
            InboundFormat::OpenAiChat,
            InboundFormat::OpenAiResponses,
            InboundFormat::Gemini,
            InboundFormat::Anthropic,
        ] {
            let chunks = entry.stream(format, "x", true);
            assert!(chunks.len() >= 3, "{format:?}: {chunks:?}");
            let all: Vec<u8> = chunks.concat();
            let text = String::from_utf8(all).unwrap();
            assert!(text.contains("quick brown"), "{format:?}: {text}");
            assert!(text.contains("weather"), "{format:?}: {text}");
        }
    }

    #[test]
    fn streams_keep_their_chunks_and_incomplete_ones_are_refused() {
        let events = vec![
            StreamEvent::Start {
                id: Some("c".into()),
                model: Some("m".into()),
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Usage::default()
            }),
        ];
        let entry = Entry::from_events(&events).unwrap();
        assert_eq!(entry.model, "m");
        assert_eq!(
            entry.events[..2],
            [Ev::Text { d: "Hel".into() }, Ev::Text { d: "lo".into() }]
        );
        assert_eq!(entry.response("x").text.as_deref(), Some("Hello"));
        assert!(Entry::from_events(&events[..3]).is_none(), "no finish");
        let mut failed = events.clone();
        failed.push(StreamEvent::Error(switchyard_llm::ApiError::new(
            switchyard_llm::ErrorKind::Upstream,
            "boom",
        )));
        assert!(Entry::from_events(&failed).is_none());
    }

    #[test]
    fn slices_cut_on_whitespace_and_char_boundaries() {
        let text = "é".repeat(100);
        let s = slices(&text);
        assert_eq!(s.concat(), text);
        assert!(s.iter().all(|p| p.chars().count() <= CHUNK_CHARS));
        let words = "word ".repeat(40);
        let s = slices(&words);
        assert_eq!(s.concat(), words);
        assert!(s[..s.len() - 1].iter().all(|p| p.ends_with(' ')), "{s:?}");
        assert!(slices("").is_empty());
    }
}
