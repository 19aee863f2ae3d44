//! One pass over a request body, before anything is built from it: checks its shape against
//! the node's limits (messages, parts per message, array items, nesting).
//!
//! The pass allocates nothing per element, so a body of a million messages costs a scan of
//! its bytes and a 400 naming the limit, never the memory of a million parsed messages
//! (translating such a body into a provider's format used to take gigabytes).

use std::cell::Cell;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::ProxyError;

/// The shape limits of one request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeLimits {
    pub messages: usize,
    pub parts_per_message: usize,
    pub array_items: usize,
    pub depth: usize,
}

impl From<&crate::limits::NodeLimits> for ShapeLimits {
    fn from(l: &crate::limits::NodeLimits) -> Self {
        ShapeLimits {
            messages: l.max_messages,
            parts_per_message: l.max_parts_per_message,
            array_items: l.max_array_items,
            depth: l.max_json_depth,
        }
    }
}

/// Checks `body` against `limits`. A limit broken is a 400 naming it; a syntax error is the
/// usual invalid-JSON 400.
pub(crate) fn check(body: &[u8], limits: &ShapeLimits) -> Result<(), ProxyError> {
    let scan = Scan {
        limits,
        hit: Cell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let walked = Walk {
        scan: &scan,
        depth: 0,
        slot: Slot::Root,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(hit) = scan.hit.take() {
        return Err(hit);
    }
    walked.map_err(|e| ProxyError::InvalidJson(e.to_string()))
}

struct Scan<'a> {
    limits: &'a ShapeLimits,
    hit: Cell<Option<ProxyError>>,
}

impl Scan<'_> {
    fn refuse<E: serde::de::Error>(&self, param: &'static str, message: String) -> E {
        self.hit
            .set(Some(ProxyError::LimitExceeded { param, message }));
        E::custom("request limit exceeded")
    }
}

/// Where in the body a value sits (what its arrays are limited by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Root,
    /// The message list (`messages`, `input`, `contents`), named for the error.
    Messages(&'static str),
    Message(&'static str),
    /// A message's parts (`content` or `parts`).
    Parts(&'static str),
    Other,
}

struct Walk<'s, 'a> {
    scan: &'s Scan<'a>,
    depth: usize,
    slot: Slot,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Walk<'_, '_> {
    fn child(&self, slot: Slot) -> Self {
        Walk {
            scan: self.scan,
            depth: self.depth + 1,
            slot,
        }
    }

    fn enter<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.depth >= self.scan.limits.depth {
            return Err(self.scan.refuse(
                "body",
                format!(
                    "the request body nests deeper than {} levels (the node's max JSON depth)",
                    self.scan.limits.depth
                ),
            ));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        let limits = self.scan.limits;
        let (limit, child, what) = match self.slot {
            Slot::Messages(name) => (limits.messages, Slot::Message(name), "messages"),
            Slot::Parts(name) => (limits.parts_per_message, Slot::Other, name),
            _ => (limits.array_items, Slot::Other, "items"),
        };
        let mut count = 0_usize;
        while let Some(()) = seq.next_element_seed(self.child(child))? {
            count += 1;
            if count > limit {
                let (param, message) = match self.slot {
                    Slot::Messages(name) => (
                        name,
                        format!("at most {limit} messages per request ('{name}' has more)"),
                    ),
                    Slot::Parts(name) => (
                        name,
                        format!("at most {limit} content parts per message ('{name}' has more)"),
                    ),
                    _ => (
                        "body",
                        format!("at most {limit} {what} per JSON array in a request body"),
                    ),
                };
                return Err(self.scan.refuse(param, message));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let slot = match (self.slot, key) {
                (Slot::Root, Key::Messages(name)) => Slot::Messages(name),
                (Slot::Message(_), Key::Parts(name)) => Slot::Parts(name),
                _ => Slot::Other,
            };
            map.next_value_seed(self.child(slot))?;
        }
        Ok(())
    }
}

/// The keys the walk cares about; every other key is `Other` (and not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Messages(&'static str),
    Parts(&'static str),
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "messages" => Key::Messages("messages"),
            "input" => Key::Messages("input"),
            "contents" => Key::Messages("contents"),
            "content" => Key::Parts("content"),
            "parts" => Key::Parts("parts"),
            _ => Key::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShapeLimits = ShapeLimits {
        messages: 3,
        parts_per_message: 2,
        array_items: 4,
        depth: 6,
    };

    fn limit(body: &str) -> (&'static str, String) {
        match check(body.as_bytes(), &LIMITS) {
            Err(ProxyError::LimitExceeded { param, message }) => (param, message),
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn limits_are_named() {
        let (param, msg) = limit(r#"{"messages":[{},{},{},{}]}"#);
        assert_eq!(param, "messages");
        assert!(msg.contains("at most 3 messages"), "{msg}");
        assert_eq!(limit(r#"{"input":[1,2,3,4]}"#).0, "input");
        assert_eq!(limit(r#"{"contents":[{},{},{},{}]}"#).0, "contents");
        let (param, msg) = limit(r#"{"messages":[{"content":[{},{},{}]}]}"#);
        assert_eq!(param, "content");
        assert!(msg.contains("at most 2 content parts"), "{msg}");
        assert_eq!(limit(r#"{"contents":[{"parts":[1,2,3]}]}"#).0, "parts");
        let (param, msg) = limit(r#"{"tools":[1,2,3,4,5]}"#);
        assert_eq!(param, "body");
        assert!(msg.contains("at most 4 items"), "{msg}");
        let (param, msg) = limit(r#"{"a":{"b":{"c":{"d":{"e":{"f":{}}}}}}}"#);
        assert_eq!(param, "body");
        assert!(msg.contains("deeper than 6"), "{msg}");
        // Within every limit.
        assert!(
            check(
                br#"{"messages":[{"content":[{},{}]},{},{}],"a":{"b":{"c":{"d":{"e":1}}}}}"#,
                &LIMITS
            )
            .is_ok()
        );
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        assert!(matches!(
            check(br#"{"messages":[}"#, &LIMITS),
            Err(ProxyError::InvalidJson(_))
        ));
        assert!(matches!(
            check(br#"{} trailing"#, &LIMITS),
            Err(ProxyError::InvalidJson(_))
        ));
    }

    #[test]
    fn a_million_messages_are_refused_without_parsing_them() {
        let mut body = String::from(r#"{"model":"r/m","messages":["#);
        for i in 0..1_000_000 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"role":"user","content":"hi"}"#);
        }
        body.push_str("]}");
        let limits = ShapeLimits {
            messages: 10_000,
            parts_per_message: 1_000,
            array_items: 10_000,
            depth: 64,
        };
        let err = check(body.as_bytes(), &limits).unwrap_err();
        assert!(matches!(
            err,
            ProxyError::LimitExceeded {
                param: "messages",
                ..
            }
        ));
    }
}
