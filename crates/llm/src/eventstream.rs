//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), used by
//! Bedrock's `ConverseStream`.
//!
//! A message is:
//!
//! ```text
//! total length (u32 BE) | headers length (u32 BE) | prelude CRC32 (of the 8 bytes before)
//! headers | payload | message CRC32 (of everything before it)
//! ```
//!
//! Each header is a 1-byte name length, the name, a 1-byte value type and the value
//! (0 true, 1 false, 2 i8, 3 i16, 4 i32, 5 i64, 6 u16-length bytes, 7 u16-length UTF-8 string,
//! 8 i64 milliseconds timestamp, 9 16-byte UUID). Integers are big-endian.
//!
//! [`FrameDecoder`] decodes from chunks of any size and verifies both CRCs; [`encode_frame`]
//! and the helpers [`encode_event`] / [`encode_exception`] write frames (for mock servers).

use bytes::{BufMut, Bytes, BytesMut};

/// The largest message accepted (AWS's limit).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The largest headers section accepted (AWS's limit).
pub const MAX_HEADERS_BYTES: usize = 128 * 1024;
const PRELUDE_LEN: usize = 12;
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;

/// A header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Type 0 / 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Int16(i16),
    /// Type 4.
    Int32(i32),
    /// Type 5.
    Int64(i64),
    /// Type 6.
    ByteArray(Bytes),
    /// Type 7.
    String(String),
    /// Type 8: milliseconds since the Unix epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// A named header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (at most 255 bytes).
    pub name: String,
    /// Header value.
    pub value: HeaderValue,
}

/// One event-stream message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Headers in wire order.
    pub headers: Vec<Header>,
    /// The payload (JSON for Bedrock).
    pub payload: Bytes,
}

impl Message {
    /// The value of a string header, e.g. `:event-type`.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| match &h.value {
            HeaderValue::String(s) if h.name == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// A message with string headers.
    pub fn with_string_headers(headers: &[(&str, &str)], payload: impl Into<Bytes>) -> Message {
        Message {
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).to_owned(),
                    value: HeaderValue::String((*v).to_owned()),
                })
                .collect(),
            payload: payload.into(),
        }
    }
}

/// A framing error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The prelude's CRC does not match.
    #[error("prelude crc mismatch (expected {expected:#010x}, computed {computed:#010x})")]
    PreludeCrc {
        /// CRC on the wire.
        expected: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The message's CRC does not match.
    #[error("message crc mismatch (expected {expected:#010x}, computed {computed:#010x})")]
    MessageCrc {
        /// CRC on the wire.
        expected: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The lengths in the prelude are impossible or over the limits.
    #[error("invalid lengths: total {total}, headers {headers}")]
    Length {
        /// Total length field.
        total: u32,
        /// Headers length field.
        headers: u32,
    },
    /// A header is malformed.
    #[error("invalid header: {0}")]
    Header(String),
    /// The stream ended inside a message.
    #[error("stream ended inside a message ({0} bytes left over)")]
    Truncated(usize),
    /// A value is too large to encode.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The decoder already failed.
    #[error("decoder already failed")]
    Poisoned,
}

/// Encodes one message with both CRCs.
pub fn encode_frame(message: &Message) -> Result<Bytes, FrameError> {
    let mut headers = BytesMut::new();
    for header in &message.headers {
        let name = header.name.as_bytes();
        let name_len = u8::try_from(name.len())
            .map_err(|_| FrameError::Encode(format!("header name `{}` too long", header.name)))?;
        headers.put_u8(name_len);
        headers.put_slice(name);
        match &header.value {
            HeaderValue::Bool(true) => headers.put_u8(0),
            HeaderValue::Bool(false) => headers.put_u8(1),
            HeaderValue::Byte(v) => {
                headers.put_u8(2);
                headers.put_i8(*v);
            }
            HeaderValue::Int16(v) => {
                headers.put_u8(3);
                headers.put_i16(*v);
            }
            HeaderValue::Int32(v) => {
                headers.put_u8(4);
                headers.put_i32(*v);
            }
            HeaderValue::Int64(v) => {
                headers.put_u8(5);
                headers.put_i64(*v);
            }
            HeaderValue::ByteArray(v) => {
                headers.put_u8(6);
                put_len16(&mut headers, v, &header.name)?;
            }
            HeaderValue::String(v) => {
                headers.put_u8(7);
                put_len16(&mut headers, v.as_bytes(), &header.name)?;
            }
            HeaderValue::Timestamp(v) => {
                headers.put_u8(8);
                headers.put_i64(*v);
            }
            HeaderValue::Uuid(v) => {
                headers.put_u8(9);
                headers.put_slice(v);
            }
        }
    }
    if headers.len() > MAX_HEADERS_BYTES {
        return Err(FrameError::Encode("headers too large".into()));
    }
    let total = MIN_MESSAGE_LEN + headers.len() + message.payload.len();
    if total > MAX_MESSAGE_BYTES {
        return Err(FrameError::Encode("message too large".into()));
    }
    let mut out = BytesMut::with_capacity(total);
    // Both lengths are bounded by the limits above, far below u32::MAX.
    out.put_u32(total as u32);
    out.put_u32(headers.len() as u32);
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.put_u32(prelude_crc);
    out.put_slice(&headers);
    out.put_slice(&message.payload);
    let message_crc = crc32fast::hash(&out);
    out.put_u32(message_crc);
    Ok(out.freeze())
}

fn put_len16(out: &mut BytesMut, value: &[u8], name: &str) -> Result<(), FrameError> {
    let len = u16::try_from(value.len())
        .map_err(|_| FrameError::Encode(format!("header `{name}` value too long")))?;
    out.put_u16(len);
    out.put_slice(value);
    Ok(())
}

/// Encodes a Bedrock-style event: `:event-type`, `:content-type: application/json`,
/// `:message-type: event`, and the JSON payload.
pub fn encode_event(event_type: &str, json_payload: &[u8]) -> Result<Bytes, FrameError> {
    encode_frame(&Message::with_string_headers(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        Bytes::copy_from_slice(json_payload),
    ))
}

/// Encodes a Bedrock-style exception: `:exception-type` (e.g. `throttlingException`),
/// `:message-type: exception` and a `{"message": …}` payload.
pub fn encode_exception(exception_type: &str, message: &str) -> Result<Bytes, FrameError> {
    let mut body = serde_json::Map::new();
    body.insert("message".into(), serde_json::Value::from(message));
    let payload = serde_json::Value::Object(body).to_string();
    encode_frame(&Message::with_string_headers(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload,
    ))
}

/// An incremental decoder; chunks may split messages anywhere.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Feeds bytes; returns the messages they completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Message>, FrameError> {
        if self.failed {
            return Err(FrameError::Poisoned);
        }
        self.buf.extend_from_slice(chunk);
        let mut messages = Vec::new();
        loop {
            match self.next_message() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => return Ok(messages),
                Err(e) => {
                    self.failed = true;
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
    }

    /// Ends the stream; an incomplete message left over is an error.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if self.failed {
            return Err(FrameError::Poisoned);
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }

    fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < PRELUDE_LEN {
            return Ok(None);
        }
        let total = read_u32(&self.buf[0..4]);
        let headers_len = read_u32(&self.buf[4..8]);
        let expected = read_u32(&self.buf[8..12]);
        let computed = crc32fast::hash(&self.buf[0..8]);
        if expected != computed {
            return Err(FrameError::PreludeCrc { expected, computed });
        }
        let total_us = total as usize;
        let headers_us = headers_len as usize;
        if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_BYTES).contains(&total_us)
            || headers_us > MAX_HEADERS_BYTES
            || headers_us > total_us - MIN_MESSAGE_LEN
        {
            return Err(FrameError::Length {
                total,
                headers: headers_len,
            });
        }
        if self.buf.len() < total_us {
            return Ok(None);
        }
        let frame = self.buf.split_to(total_us).freeze();
        let expected = read_u32(&frame[total_us - 4..]);
        let computed = crc32fast::hash(&frame[..total_us - 4]);
        if expected != computed {
            return Err(FrameError::MessageCrc { expected, computed });
        }
        let headers = decode_headers(&frame[PRELUDE_LEN..PRELUDE_LEN + headers_us])?;
        let payload = frame.slice(PRELUDE_LEN + headers_us..total_us - 4);
        Ok(Some(Message { headers, payload }))
    }
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn take<'a>(input: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], FrameError> {
    if input.len() < n {
        return Err(FrameError::Header(format!("{what} runs past the headers")));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_array<const N: usize>(input: &mut &[u8], what: &str) -> Result<[u8; N], FrameError> {
    let mut out = [0u8; N];
    out.copy_from_slice(take(input, N, what)?);
    Ok(out)
}

fn decode_headers(mut input: &[u8]) -> Result<Vec<Header>, FrameError> {
    let mut headers = Vec::new();
    while !input.is_empty() {
        let name_len = take(&mut input, 1, "header name length")?[0] as usize;
        if name_len == 0 {
            return Err(FrameError::Header("empty header name".into()));
        }
        let name = std::str::from_utf8(take(&mut input, name_len, "header name")?)
            .map_err(|_| FrameError::Header("header name is not utf-8".into()))?
            .to_owned();
        let kind = take(&mut input, 1, "header type")?[0];
        let value = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(take_array(&mut input, "byte")?)),
            3 => HeaderValue::Int16(i16::from_be_bytes(take_array(&mut input, "int16")?)),
            4 => HeaderValue::Int32(i32::from_be_bytes(take_array(&mut input, "int32")?)),
            5 => HeaderValue::Int64(i64::from_be_bytes(take_array(&mut input, "int64")?)),
            6 | 7 => {
                let len = u16::from_be_bytes(take_array(&mut input, "value length")?) as usize;
                let bytes = take(&mut input, len, "header value")?;
                if kind == 6 {
                    HeaderValue::ByteArray(Bytes::copy_from_slice(bytes))
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(bytes)
                            .map_err(|_| {
                                FrameError::Header(format!("header `{name}` is not utf-8"))
                            })?
                            .to_owned(),
                    )
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(take_array(&mut input, "timestamp")?)),
            9 => HeaderValue::Uuid(take_array(&mut input, "uuid")?),
            other => {
                return Err(FrameError::Header(format!(
                    "header `{name}` has unknown type {other}"
                )));
            }
        };
        headers.push(Header { name, value });
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_types_message() -> Message {
        let h = |name: &str, value| Header {
            name: name.into(),
            value,
        };
        Message {
            headers: vec![
                h("t", HeaderValue::Bool(true)),
                h("f", HeaderValue::Bool(false)),
                h("b", HeaderValue::Byte(-3)),
                h("s", HeaderValue::Int16(-300)),
                h("i", HeaderValue::Int32(70_000)),
                h("l", HeaderValue::Int64(-1 << 40)),
                h("a", HeaderValue::ByteArray(Bytes::from_static(b"\x00\x01"))),
                h(":event-type", HeaderValue::String("chunk".into())),
                h("ts", HeaderValue::Timestamp(1_700_000_000_000)),
                h("u", HeaderValue::Uuid([7; 16])),
            ],
            payload: Bytes::from_static(b"{\"x\":1}"),
        }
    }

    /// The empty message from the AWS event-stream test suite: 16 bytes, known CRCs.
    #[test]
    fn empty_message_matches_known_bytes() {
        let bytes = encode_frame(&Message::default()).unwrap();
        assert_eq!(
            bytes.as_ref(),
            &[
                0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98,
                0xc8, 0xff
            ]
        );
    }

    #[test]
    fn round_trips_every_header_type() {
        let message = all_types_message();
        let bytes = encode_frame(&message).unwrap();
        let mut d = FrameDecoder::new();
        let got = d.push(&bytes).unwrap();
        assert_eq!(got, vec![message]);
        assert_eq!(got[0].header_str(":event-type"), Some("chunk"));
        d.finish().unwrap();
    }

    #[test]
    fn event_and_exception_helpers() {
        let mut d = FrameDecoder::new();
        let mut bytes = encode_event("contentBlockDelta", b"{}").unwrap().to_vec();
        bytes.extend_from_slice(&encode_exception("throttlingException", "slow down").unwrap());
        let got = d.push(&bytes).unwrap();
        assert_eq!(got[0].header_str(":message-type"), Some("event"));
        assert_eq!(
            got[1].header_str(":exception-type"),
            Some("throttlingException")
        );
        assert_eq!(got[1].payload.as_ref(), br#"{"message":"slow down"}"#);
    }

    #[test]
    fn detects_corruption() {
        let bytes = encode_frame(&all_types_message()).unwrap().to_vec();
        let mut bad = bytes.clone();
        bad[2] ^= 0x01;
        assert!(matches!(
            FrameDecoder::new().push(&bad),
            Err(FrameError::PreludeCrc { .. })
        ));
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 6] ^= 0x01;
        assert!(matches!(
            FrameDecoder::new().push(&bad),
            Err(FrameError::MessageCrc { .. })
        ));
        let mut d = FrameDecoder::new();
        assert!(d.push(&bytes[..bytes.len() - 1]).unwrap().is_empty());
        assert_eq!(d.finish(), Err(FrameError::Truncated(bytes.len() - 1)));
    }

    #[test]
    fn rejects_impossible_lengths_with_valid_prelude_crc() {
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&8u32.to_be_bytes());
        prelude.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        let mut d = FrameDecoder::new();
        assert!(matches!(d.push(&prelude), Err(FrameError::Length { .. })));
        assert_eq!(d.push(b""), Err(FrameError::Poisoned));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = FrameDecoder::new();
            let _ = d.push(&bytes);
            let _ = d.finish();
        }

        #[test]
        fn any_split_gives_the_same_messages(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..5),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for p in payloads {
                let m = Message::with_string_headers(&[(":event-type", "chunk")], p);
                input.extend_from_slice(&encode_frame(&m).unwrap());
                expected.push(m);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                got.extend(d.push(&input[start..cut]).unwrap());
                start = cut;
            }
            got.extend(d.push(&input[start..]).unwrap());
            d.finish().unwrap();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn flipped_bit_is_detected(index in 0usize..60, bit in 0u8..8) {
            let bytes = encode_event("messageStop", br#"{"stopReason":"end_turn"}"#).unwrap().to_vec();
            let mut bad = bytes.clone();
            let i = index % bad.len();
            bad[i] ^= 1 << bit;
            let mut d = FrameDecoder::new();
            let result = d.push(&bad).and_then(|m| d.finish().map(|()| m));
            prop_assert!(result.is_err());
        }
    }
}
