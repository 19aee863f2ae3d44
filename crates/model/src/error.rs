use serde::Serialize;

/// Why an admin write was refused. Maps to HTTP 400 (`Malformed`) or 422 (the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON of the expected shape (unknown field, wrong type, missing
    /// field).
    Malformed,
    /// A value is outside what the field accepts.
    InvalidValue,
    /// A configured limit was exceeded.
    LimitExceeded,
    /// A rule spanning several fields was broken (e.g. a fallback naming no route).
    RuleViolated,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RuleViolated => "rule_violated",
        }
    }
}

/// A refused write, naming the offending field as a path such as `routes[1].topics[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub code: ErrorCode,
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, field, message)
    }

    pub fn limit(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitExceeded, field, message)
    }

    pub fn rule(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::RuleViolated, field, message)
    }
}
