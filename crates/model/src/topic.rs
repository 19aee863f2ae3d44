//! Strict admin input for the prompt topic library (`/api/v1/topics`) and its validation
//! into a [`LibraryTopic`]: JSON bodies, and utterance uploads as plain text (one per line).

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::input::parse_strict;
use crate::{ErrorCode, LibraryTopic, Limits, ValidationError};

/// Characters of a library topic's description.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

/// The body of `POST /topics` and `PUT /topics/{name}`.
///
/// `version`, `proxies`, `utterance_count`, `created_at` and `updated_at` are accepted so that
/// a topic read with `GET` can be edited and sent back: `version`, when present, is the
/// version the write replaces (optimistic concurrency); the others are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryTopicInput {
    /// Required on `POST`; on `PUT` optional, and when present it must be the path's name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub utterances: Vec<String>,
    #[serde(default, deserialize_with = "crate::input::version")]
    pub version: Option<u64>,
    #[serde(default)]
    pub proxies: Option<IgnoredAny>,
    #[serde(default)]
    pub utterance_count: Option<IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// Parses a library topic body strictly (unknown fields are refused, naming their path).
pub fn parse_library_topic_input(body: &[u8]) -> Result<LibraryTopicInput, ValidationError> {
    parse_strict(body)
}

impl LibraryTopicInput {
    /// Validates a new topic (`POST`): the body must name it.
    pub fn validate_new(self, limits: &Limits) -> Result<LibraryTopic, ValidationError> {
        let Some(name) = self.name.clone() else {
            return Err(ValidationError::new(
                ErrorCode::Malformed,
                "name",
                "missing field `name`",
            ));
        };
        self.validate(name, limits)
    }

    /// Validates the replacement of the topic `name` (`PUT`); a topic cannot be renamed.
    pub fn validate_replacement(
        self,
        name: &str,
        limits: &Limits,
    ) -> Result<LibraryTopic, ValidationError> {
        if let Some(given) = &self.name
            && given != name
        {
            return Err(ValidationError::rule(
                "name",
                format!(
                    "a library topic cannot be renamed (this is '{name}'); create a new one and point the proxies at it"
                ),
            ));
        }
        self.validate(name.to_owned(), limits)
    }

    fn validate(self, name: String, limits: &Limits) -> Result<LibraryTopic, ValidationError> {
        validate_topic_name("name", &name)?;
        let description = self.description.unwrap_or_default();
        let chars = description.chars().count();
        if chars > MAX_DESCRIPTION_CHARS {
            return Err(ValidationError::limit(
                "description",
                format!("at most {MAX_DESCRIPTION_CHARS} characters (got {chars})"),
            ));
        }
        let utterances =
            validate_utterances(self.utterances, limits, |i| format!("utterances[{i}]"))?;
        Ok(LibraryTopic {
            name,
            description,
            utterances,
        })
    }
}

/// A library topic's name: 1-64 characters of lowercase letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit (it appears in URLs and in `x-switchyard-scores`).
pub fn validate_topic_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if valid {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            format!(
                "'{name}' is not a valid topic name: 1-64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

/// Validates a library topic's utterances (the JSON form): each non-blank, one line, within
/// the character limit; at least one and at most the library limit. Surrounding whitespace is
/// trimmed and repeated utterances are kept once (the first time). `field(i)` names the
/// `i`-th (0-based) utterance in errors.
pub fn validate_utterances(
    utterances: Vec<String>,
    limits: &Limits,
    field: impl Fn(usize) -> String,
) -> Result<Vec<String>, ValidationError> {
    let mut out: Vec<String> = Vec::with_capacity(utterances.len());
    let mut seen = std::collections::HashSet::with_capacity(utterances.len());
    for (i, utterance) in utterances.into_iter().enumerate() {
        let text = utterance.trim();
        if text.is_empty() {
            return Err(ValidationError::invalid(field(i), "must not be empty"));
        }
        check_utterance(text, limits, || field(i))?;
        if seen.insert(text.to_owned()) {
            out.push(text.to_owned());
        }
    }
    check_count(out.len(), limits, "utterances")?;
    Ok(out)
}

/// Parses an utterance upload in `text/plain`: one utterance per line (`\n` or `\r\n`),
/// surrounding whitespace trimmed, blank lines (and so a trailing newline) ignored, repeated
/// lines kept once. Errors name the 1-based line (`field` is `line 17`).
pub fn parse_utterance_lines(body: &[u8], limits: &Limits) -> Result<Vec<String>, ValidationError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        ValidationError::new(
            ErrorCode::Malformed,
            format!("line {line}"),
            "the upload is not valid UTF-8",
        )
    })?;
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        check_utterance(line, limits, || format!("line {}", i + 1))?;
        if seen.insert(line) {
            out.push(line.to_owned());
        }
    }
    check_count(out.len(), limits, "utterances")?;
    Ok(out)
}

fn check_utterance(
    text: &str,
    limits: &Limits,
    field: impl Fn() -> String,
) -> Result<(), ValidationError> {
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ValidationError::invalid(
            field(),
            "must be one line without control characters",
        ));
    }
    let chars = text.chars().count();
    if chars > limits.chars_per_utterance {
        return Err(ValidationError::limit(
            field(),
            format!(
                "at most {} characters per utterance (got {chars})",
                limits.chars_per_utterance
            ),
        ));
    }
    Ok(())
}

fn check_count(n: usize, limits: &Limits, field: &str) -> Result<(), ValidationError> {
    if n == 0 {
        return Err(ValidationError::rule(
            field,
            "a topic needs at least one utterance",
        ));
    }
    if n > limits.utterances_per_library_topic {
        return Err(ValidationError::limit(
            field,
            format!(
                "at most {} utterances per library topic (got {n}); the control plane's --max-utterances-per-library-topic raises it",
                limits.utterances_per_library_topic
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn new(v: &Value) -> Result<LibraryTopic, ValidationError> {
        parse_library_topic_input(v.to_string().as_bytes())?.validate_new(&Limits::default())
    }

    fn fails<T: std::fmt::Debug>(r: Result<T, ValidationError>) -> (ErrorCode, String) {
        let e = r.unwrap_err();
        (e.code, e.field)
    }

    #[test]
    fn a_valid_topic_is_trimmed_and_deduplicated() {
        let t = new(&json!({"name": "billing", "description": "invoices",
            "utterances": ["  pay my invoice ", "refund", "pay my invoice"]}))
        .unwrap();
        assert_eq!(t.name, "billing");
        assert_eq!(t.description, "invoices");
        assert_eq!(t.utterances, vec!["pay my invoice", "refund"]);
        let t = new(&json!({"name": "a.b_c-1", "utterances": ["x"]})).unwrap();
        assert_eq!(t.description, "");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let base = json!({"name": "billing", "utterances": ["x"]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(
            fails(new(&with("colour", json!(1)))),
            (ErrorCode::Malformed, "colour".into())
        );
        assert_eq!(
            fails(new(&json!({"utterances": ["x"]}))),
            (ErrorCode::Malformed, "name".into())
        );
        for bad in ["Billing", "-x", "", "a b", &"a".repeat(65), "é"] {
            assert_eq!(
                fails(new(&with("name", json!(bad)))),
                (ErrorCode::InvalidValue, "name".into()),
                "{bad}"
            );
        }
        assert_eq!(
            fails(new(&with("utterances", json!([])))),
            (ErrorCode::RuleViolated, "utterances".into())
        );
        assert_eq!(
            fails(new(&with("utterances", json!(["ok", "  "])))),
            (ErrorCode::InvalidValue, "utterances[1]".into())
        );
        assert_eq!(
            fails(new(&with("utterances", json!(["ok", "two\nlines"])))),
            (ErrorCode::InvalidValue, "utterances[1]".into())
        );
        assert_eq!(
            fails(new(&with("utterances", json!(["ok", "x".repeat(501)])))),
            (ErrorCode::LimitExceeded, "utterances[1]".into())
        );
        assert!(new(&with("utterances", json!(["é".repeat(500)]))).is_ok());
        let many: Vec<String> = (0..2001).map(|i| format!("u{i}")).collect();
        assert_eq!(
            fails(new(&with("utterances", json!(many)))),
            (ErrorCode::LimitExceeded, "utterances".into())
        );
        let enough: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
        assert!(new(&with("utterances", json!(enough))).is_ok());
        // 2,001 lines that collapse to 2,000 distinct ones are within the limit.
        let mut dup: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
        dup.push("u0".into());
        assert!(new(&with("utterances", json!(dup))).is_ok());
        assert_eq!(
            fails(new(&with("description", json!("d".repeat(1001))))),
            (ErrorCode::LimitExceeded, "description".into())
        );
    }

    #[test]
    fn a_replacement_cannot_rename() {
        let input = parse_library_topic_input(
            json!({"name": "other", "utterances": ["x"], "version": 3, "proxies": 2,
                   "utterance_count": 1, "created_at": "x", "updated_at": "y"})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(input.version, Some(3));
        assert_eq!(
            fails(
                input
                    .clone()
                    .validate_replacement("billing", &Limits::default())
            ),
            (ErrorCode::RuleViolated, "name".into())
        );
        let t = input
            .validate_replacement("other", &Limits::default())
            .unwrap();
        assert_eq!(t.name, "other");
        let nameless = parse_library_topic_input(br#"{"utterances": ["x"]}"#).unwrap();
        assert_eq!(
            nameless
                .validate_replacement("billing", &Limits::default())
                .unwrap()
                .name,
            "billing"
        );
    }

    #[test]
    fn text_uploads_take_one_utterance_per_line() {
        let limits = Limits::default();
        let parsed = parse_utterance_lines(
            b"pay my invoice\r\n\n  refund please  \n\npay my invoice\n",
            &limits,
        )
        .unwrap();
        assert_eq!(parsed, vec!["pay my invoice", "refund please"]);
        assert_eq!(parse_utterance_lines(b"one", &limits).unwrap(), vec!["one"]);

        let long = format!("ok\n\nfine\n{}\n", "x".repeat(501));
        let e = parse_utterance_lines(long.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::LimitExceeded, "line 4")
        );
        assert!(e.message.contains("got 501"), "{}", e.message);

        let e = parse_utterance_lines(b"ok\nbad\x07bell\n", &limits).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::InvalidValue, "line 2")
        );
        let e = parse_utterance_lines(b"ok\nfine\n\xff\xfe\n", &limits).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::Malformed, "line 3"));
        let e = parse_utterance_lines(b"\n \n\n", &limits).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::RuleViolated, "utterances")
        );

        let small = Limits {
            utterances_per_library_topic: 2,
            ..Limits::default()
        };
        let e = parse_utterance_lines(b"a\nb\nc\n", &small).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::LimitExceeded, "utterances")
        );
        assert!(e.message.contains("got 3"), "{}", e.message);
    }
}
