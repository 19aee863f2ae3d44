use serde::{Deserialize, Serialize};

/// What the admin API shows instead of a secret, and what a `PUT` may send back to keep the
/// stored secret unchanged.
pub const REDACTED: &str = "***";

/// A credential. Its `Debug` never shows the value, so it cannot leak through logs.
///
/// Serialisation is transparent: the control plane encrypts secrets before they reach the
/// store (see `Proxy::try_map_secrets`), and the admin API redacts them before replying.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_redacted_placeholder(&self) -> bool {
        self.0 == REDACTED
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("sk-live-123");
        assert!(!format!("{s:?}").contains("sk-live"));
        assert_eq!(s.expose(), "sk-live-123");
    }
}
