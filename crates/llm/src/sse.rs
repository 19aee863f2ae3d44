//! Server-sent events: an incremental parser (for upstream streams) and frame writers (for
//! the streams sent to clients and by mock providers).
//!
//! The parser follows the WHATWG event-stream rules: lines end with `\r\n`, `\n` or `\r`
//! (also when a `\r\n` pair is split across chunks), `:` starts a comment, an event is
//! dispatched on a blank line, multiple `data:` lines join with `\n`, and one leading space
//! after the colon is dropped. Bytes arrive in chunks of any size; the events are the same
//! however the input is split.

use bytes::Bytes;

use crate::error::StreamError;

/// The largest event (all its lines together) the parser buffers before giving up.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// An incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    pending_bytes: usize,
    failed: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, StreamError> {
        if self.failed {
            return Err(StreamError::Sse("parser already failed".into()));
        }
        let mut events = Vec::new();
        for &byte in chunk {
            if self.skip_lf {
                self.skip_lf = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\r' => {
                    self.skip_lf = true;
                    self.end_line(&mut events);
                }
                b'\n' => self.end_line(&mut events),
                _ => {
                    self.line.push(byte);
                    self.pending_bytes += 1;
                    if self.pending_bytes > MAX_EVENT_BYTES {
                        self.failed = true;
                        return Err(StreamError::Sse(format!(
                            "event larger than {MAX_EVENT_BYTES} bytes"
                        )));
                    }
                }
            }
        }
        Ok(events)
    }

    /// Ends the stream: a last event not followed by a blank line is still dispatched
    /// (upstreams that close right after `data: …\n` lose nothing).
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, StreamError> {
        if self.failed {
            return Err(StreamError::Sse("parser already failed".into()));
        }
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.dispatch(&mut events);
        Ok(events)
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..i], value)
            }
            None => (&line[..], &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        self.pending_bytes = 0;
        let event = self.event.take();
        if let Some(data) = self.data.take() {
            events.push(SseEvent {
                event,
                data,
                id: self.id.clone(),
            });
        }
    }
}

/// Writes one `data:` event (multi-line data becomes several `data:` lines).
pub fn data_frame(data: &str) -> Bytes {
    frame(None, data)
}

/// Writes one event with an `event:` name and `data:`.
pub fn event_frame(event: &str, data: &str) -> Bytes {
    frame(Some(event), data)
}

fn frame(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 16);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// OpenAI's end-of-stream marker, `data: [DONE]`.
pub fn done_frame() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut events = p.push(input).unwrap();
        events.extend(p.finish().unwrap());
        events
    }

    #[test]
    fn parses_fields_comments_and_line_endings() {
        let input = b": keep-alive\nevent: response.created\ndata: {\"a\":1}\n\ndata: one\r\ndata:two\r\n\r\nid: 7\rdata: x\r\r";
        let events = parse_all(input);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("response.created".into()),
                    data: "{\"a\":1}".into(),
                    id: None
                },
                SseEvent {
                    event: None,
                    data: "one\ntwo".into(),
                    id: None
                },
                SseEvent {
                    event: None,
                    data: "x".into(),
                    id: Some("7".into())
                },
            ]
        );
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_name_resets() {
        let events = parse_all(b"event: ping\n\ndata: x\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn unterminated_last_event_is_dispatched_on_finish() {
        let events = parse_all(b"data: [DONE]");
        assert_eq!(events[0].data, "[DONE]");
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut p = SseParser::new();
        let chunk = vec![b'a'; 1024 * 1024];
        let mut failed = false;
        for _ in 0..20 {
            if p.push(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(p.push(b"\n\n").is_err());
    }

    #[test]
    fn frames_round_trip() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&event_frame("e", "line1\nline2"));
        bytes.extend_from_slice(&data_frame("{}"));
        bytes.extend_from_slice(&done_frame());
        let events = parse_all(&bytes);
        assert_eq!(events[0].event.as_deref(), Some("e"));
        assert_eq!(events[0].data, "line1\nline2");
        assert_eq!(events[1].data, "{}");
        assert_eq!(events[2].data, "[DONE]");
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(
            input in proptest::collection::vec(
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '),
                    Just(b'd'), Just(b'a'), Just(b't'), Just(b'e'), Just(b'v'),
                    any::<u8>()
                ],
                0..400,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let whole = parse_all(&input);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut p = SseParser::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                got.extend(p.push(&input[start..cut]).unwrap());
                start = cut;
            }
            got.extend(p.push(&input[start..]).unwrap());
            got.extend(p.finish().unwrap());
            prop_assert_eq!(whole, got);
        }

        #[test]
        fn frames_survive_any_data(data in "[^\r]{0,200}") {
            let events = parse_all(&data_frame(&data));
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(&events[0].data, &data);
        }
    }
}
