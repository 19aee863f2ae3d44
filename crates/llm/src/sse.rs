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

/// Splits a byte stream into raw events, each with its closing blank line, however the bytes
/// are chunked; lines may end with `\r\n`, `\n` or `\r`. The one line splitter of the
/// crate: [`SseParser`] reads fields from its events, and the passthrough stream inspector
/// ([`crate::passthrough::StreamInspector`]) relays them byte for byte.
#[derive(Debug)]
pub struct EventSplitter {
    buf: Vec<u8>,
    /// Where the next event starts (bytes before it were handed out).
    start: usize,
    /// Where scanning resumes, and whether that position starts a line.
    scanned: usize,
    at_line_start: bool,
}

impl Default for EventSplitter {
    fn default() -> Self {
        EventSplitter {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            at_line_start: true,
        }
    }
}

impl EventSplitter {
    /// Appends bytes (events handed out before are dropped from the buffer first).
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The bytes of the event being received (not yet complete).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete event (with its line endings and closing blank line), if the
    /// buffer holds one.
    pub fn next_event(&mut self) -> Option<&[u8]> {
        let mut i = self.scanned;
        let mut at_line_start = self.at_line_start;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b != b'\n' && b != b'\r' {
                at_line_start = false;
                i += 1;
                continue;
            }
            let len = if b == b'\r' {
                match self.buf.get(i + 1) {
                    None => break, // a `\n` may follow in the next chunk
                    Some(b'\n') => 2,
                    Some(_) => 1,
                }
            } else {
                1
            };
            i += len;
            if at_line_start {
                let start = self.start;
                self.start = i;
                self.scanned = i;
                self.at_line_start = true;
                return Some(&self.buf[start..i]);
            }
            at_line_start = true;
        }
        self.scanned = i;
        self.at_line_start = at_line_start;
        None
    }

    /// Whatever is left at the end of the stream (an event without its blank line), unless
    /// it is only whitespace.
    pub fn take_rest(&mut self) -> Option<Vec<u8>> {
        let rest = &self.buf[self.start..];
        if rest.iter().all(u8::is_ascii_whitespace) {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
            return None;
        }
        let rest = rest.to_vec();
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        self.at_line_start = true;
        Some(rest)
    }
}

/// The lines of one raw event, without their endings.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        let mut next = end;
        if rest.get(next) == Some(&b'\r') {
            next += 1;
            if rest.get(next) == Some(&b'\n') {
                next += 1;
            }
        } else if next < rest.len() {
            next += 1;
        }
        rest = &rest[next..];
        Some(line)
    })
}

/// One field line: its name and value (one leading space after the colon dropped); `None`
/// for a comment.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first() == Some(&b':') {
        return None;
    }
    Some(match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let value = &line[i + 1..];
            (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[][..]),
    })
}

/// The `data:` of one raw event (lines joined with `\n`) and its `event:` name; `None` when
/// it has no `data:` line. Borrows when the event has one data line of valid UTF-8.
pub fn event_data(event: &[u8]) -> Option<(std::borrow::Cow<'_, str>, Option<&str>)> {
    let mut name = None;
    let mut data: Option<std::borrow::Cow<'_, str>> = None;
    for line in lines(event) {
        let Some((key, value)) = field(line) else {
            continue;
        };
        match key {
            b"event" => name = std::str::from_utf8(value).ok(),
            b"data" => {
                let value = String::from_utf8_lossy(value);
                data = Some(match data {
                    None => value,
                    Some(prev) => {
                        let mut joined = prev.into_owned();
                        joined.push('\n');
                        joined.push_str(&value);
                        std::borrow::Cow::Owned(joined)
                    }
                });
            }
            _ => {}
        }
    }
    data.map(|d| (d, name))
}

/// An incremental SSE parser: [`EventSplitter`] for the framing, then each event's fields.
#[derive(Debug, Default)]
pub struct SseParser {
    splitter: EventSplitter,
    /// The last event id seen (it carries over to later events).
    id: Option<String>,
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
        self.splitter.push(chunk);
        let mut events = Vec::new();
        while let Some(raw) = self.splitter.next_event() {
            if let Some(event) = parse(raw, &mut self.id) {
                events.push(event);
            }
        }
        if self.splitter.pending() > MAX_EVENT_BYTES {
            self.failed = true;
            return Err(StreamError::Sse(format!(
                "event larger than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(events)
    }

    /// Ends the stream: a last event not followed by a blank line is still dispatched
    /// (upstreams that close right after `data: …\n` lose nothing).
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, StreamError> {
        if self.failed {
            return Err(StreamError::Sse("parser already failed".into()));
        }
        Ok(self
            .splitter
            .take_rest()
            .and_then(|rest| parse(&rest, &mut self.id))
            .into_iter()
            .collect())
    }
}

/// The fields of one raw event; `None` when it has no `data:` line.
fn parse(raw: &[u8], last_id: &mut Option<String>) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in lines(raw) {
        let Some((name, value)) = field(line) else {
            continue;
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => event = Some(value.into_owned()),
            b"data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => data = Some(value.into_owned()),
            },
            b"id" if !value.contains('\0') => *last_id = Some(value.into_owned()),
            _ => {}
        }
    }
    Some(SseEvent {
        event,
        data: data?,
        id: last_id.clone(),
    })
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
    fn splits_events_however_chunked() {
        let text = "data: a\r\n\r\n: comment\n\ndata: b\rdata: c\r\rdata: d\n\n";
        for split in 0..text.len() {
            let mut s = EventSplitter::default();
            let mut events = Vec::new();
            for part in [&text.as_bytes()[..split], &text.as_bytes()[split..]] {
                s.push(part);
                while let Some(e) = s.next_event() {
                    events.push(String::from_utf8(e.to_vec()).unwrap());
                }
            }
            assert_eq!(
                events,
                vec![
                    "data: a\r\n\r\n",
                    ": comment\n\n",
                    "data: b\rdata: c\r\r",
                    "data: d\n\n"
                ],
                "split at {split}"
            );
            assert!(s.take_rest().is_none());
        }
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
