//! Strict admin input for a named semantic service (`/api/v1/semantic-services`) and its
//! validation into a [`SemanticService`].

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::input::{keep_or_check_secret, parse_strict, validate_model, validate_url};
use crate::{SemanticService, ValidationError, validate_gateway_name};

/// The body of `POST /semantic-services` and `PUT /semantic-services/{name}`.
///
/// `version`, `proxies`, `created_at` and `updated_at` are accepted so that a service read
/// with `GET` can be edited and sent back: `version`, when present, is the version the write
/// replaces (optimistic concurrency); the others are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticServiceInput {
    /// Required on `POST`; on `PUT` optional, and when present it must be the path's name.
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    pub model: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default, deserialize_with = "crate::input::version")]
    pub version: Option<u64>,
    #[serde(default)]
    pub proxies: Option<IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
}

/// Parses a semantic service body strictly (unknown fields are refused, naming their path).
pub fn parse_semantic_service_input(body: &[u8]) -> Result<SemanticServiceInput, ValidationError> {
    parse_strict(body)
}

impl SemanticServiceInput {
    /// Validates a new service (`POST`): the body must name it.
    pub fn validate_new(self) -> Result<SemanticService, ValidationError> {
        let Some(name) = self.name.clone() else {
            return Err(ValidationError::new(
                crate::ErrorCode::Malformed,
                "name",
                "missing field `name`",
            ));
        };
        self.validate(name, None)
    }

    /// Validates the replacement of `previous` (`PUT`). A key sent back as `***` keeps the
    /// stored one; a body without `api_key` leaves the service without a key.
    pub fn validate_replacement(
        self,
        previous: &SemanticService,
    ) -> Result<SemanticService, ValidationError> {
        if let Some(name) = &self.name
            && *name != previous.name
        {
            return Err(ValidationError::rule(
                "name",
                format!(
                    "a semantic service cannot be renamed (this is '{}'); create a new one and point the proxies at it",
                    previous.name
                ),
            ));
        }
        self.validate(previous.name.clone(), Some(previous))
    }

    fn validate(
        self,
        name: String,
        previous: Option<&SemanticService>,
    ) -> Result<SemanticService, ValidationError> {
        validate_gateway_name("name", &name)?;
        let url = validate_url("url", &self.url)?;
        validate_model("model", &self.model)?;
        if self.api_key.as_deref() == Some(crate::REDACTED)
            && previous.is_some_and(|p| p.url != url)
        {
            return Err(ValidationError::rule(
                "api_key",
                "'***' cannot keep the stored key because the url changed; send the key again",
            ));
        }
        let api_key = match self.api_key {
            None => None,
            Some(key) => Some(keep_or_check_secret("api_key", key, || {
                previous.and_then(|p| p.api_key.clone())
            })?),
        };
        Ok(SemanticService {
            name,
            url,
            model: self.model,
            api_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{ErrorCode, Secret};

    fn body() -> Value {
        json!({"name": "embed-eu", "url": "https://api.openai.com/v1/",
               "model": "text-embedding-3-small", "api_key": "sk-emb"})
    }

    fn new(v: &Value) -> Result<SemanticService, ValidationError> {
        parse_semantic_service_input(v.to_string().as_bytes())?.validate_new()
    }

    fn replace(v: &Value, previous: &SemanticService) -> Result<SemanticService, ValidationError> {
        parse_semantic_service_input(v.to_string().as_bytes())?.validate_replacement(previous)
    }

    fn fails(result: Result<SemanticService, ValidationError>) -> (ErrorCode, String) {
        let e = result.unwrap_err();
        (e.code, e.field)
    }

    #[test]
    fn a_valid_service_is_normalised_and_its_key_is_a_secret() {
        let s = new(&body()).unwrap();
        assert_eq!(s.name, "embed-eu");
        assert_eq!(
            s.url, "https://api.openai.com/v1",
            "the trailing '/' is dropped"
        );
        assert_eq!(s.model, "text-embedding-3-small");
        assert_eq!(s.api_key, Some(Secret::new("sk-emb")));
        assert!(!format!("{s:?}").contains("sk-emb"));
        let shown = serde_json::to_value(s.clone().redacted()).unwrap();
        assert_eq!(shown["api_key"], "***");
        assert!(!shown.to_string().contains("sk-emb"));
        let encrypted = s
            .try_map_secrets(|k| Ok::<_, ()>(Secret::new(format!("enc:{}", k.expose()))))
            .unwrap();
        assert_eq!(encrypted.api_key, Some(Secret::new("enc:sk-emb")));
    }

    #[test]
    fn the_key_is_optional() {
        let mut v = body();
        v.as_object_mut().unwrap().remove("api_key");
        let s = new(&v).unwrap();
        assert_eq!(s.api_key, None);
        let shown = serde_json::to_value(s.redacted()).unwrap();
        assert!(shown.get("api_key").is_none(), "{shown}");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let with = |field: &str, value: Value| {
            let mut v = body();
            v[field] = value;
            v
        };
        assert_eq!(
            fails(new(&with("colour", json!("red")))),
            (ErrorCode::Malformed, "colour".into())
        );
        assert_eq!(
            fails(new(&with("url", json!(3)))),
            (ErrorCode::Malformed, "url".into())
        );
        let mut nameless = body();
        nameless.as_object_mut().unwrap().remove("name");
        assert_eq!(fails(new(&nameless)), (ErrorCode::Malformed, "name".into()));
        for bad in ["Embed", "-x", "a_b", "", &"a".repeat(64)] {
            assert_eq!(
                fails(new(&with("name", json!(bad)))),
                (ErrorCode::InvalidValue, "name".into()),
                "{bad}"
            );
        }
        for bad in ["ftp://x/v1", "not a url", "http://x/v1?q=1", "https:///v1"] {
            assert_eq!(
                fails(new(&with("url", json!(bad)))),
                (ErrorCode::InvalidValue, "url".into()),
                "{bad}"
            );
        }
        for bad in ["", "a b", &"m".repeat(257)] {
            assert_eq!(
                fails(new(&with("model", json!(bad)))),
                (ErrorCode::InvalidValue, "model".into()),
                "{bad}"
            );
        }
        for bad in ["", "sk with space", "sk-\u{e9}"] {
            assert_eq!(
                fails(new(&with("api_key", json!(bad)))),
                (ErrorCode::InvalidValue, "api_key".into()),
                "{bad}"
            );
        }
        // `***` means "keep the stored key": a new service has none.
        assert_eq!(
            fails(new(&with("api_key", json!("***")))),
            (ErrorCode::RuleViolated, "api_key".into())
        );
    }

    #[test]
    fn a_replacement_keeps_the_key_on_request_and_cannot_rename() {
        let stored = new(&body()).unwrap();
        // What a GET shows, sent back with a new model; the same URL.
        let mut v = serde_json::to_value(stored.clone().redacted()).unwrap();
        // A new URL with '***' would send the stored key somewhere new: refused.
        let mut moved = v.clone();
        moved["url"] = json!("http://127.0.0.1:9/v1");
        let e = parse_semantic_service_input(moved.to_string().as_bytes())
            .unwrap()
            .validate_replacement(&stored)
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.code),
            ("api_key", ErrorCode::RuleViolated)
        );
        v["model"] = json!("text-embedding-3-large");
        v["version"] = json!(3);
        v["proxies"] = json!(2);
        v["created_at"] = json!("2025-01-01T00:00:00Z");
        v["updated_at"] = json!("2025-01-01T00:00:00Z");
        let input = parse_semantic_service_input(v.to_string().as_bytes()).unwrap();
        assert_eq!(input.version, Some(3));
        let s = input.validate_replacement(&stored).unwrap();
        assert_eq!(s.model, "text-embedding-3-large");
        assert_eq!(
            s.api_key,
            Some(Secret::new("sk-emb")),
            "'***' keeps the key"
        );

        let mut new_key = v.clone();
        new_key["api_key"] = json!("sk-other");
        assert_eq!(
            replace(&new_key, &stored).unwrap().api_key,
            Some(Secret::new("sk-other"))
        );
        let mut no_key = v.clone();
        no_key.as_object_mut().unwrap().remove("api_key");
        assert_eq!(replace(&no_key, &stored).unwrap().api_key, None);
        let mut no_name = v.clone();
        no_name.as_object_mut().unwrap().remove("name");
        assert_eq!(replace(&no_name, &stored).unwrap().name, "embed-eu");

        let mut renamed = v.clone();
        renamed["name"] = json!("embed-us");
        assert_eq!(
            fails(replace(&renamed, &stored)),
            (ErrorCode::RuleViolated, "name".into())
        );
        // Nothing stored to keep.
        let keyless = SemanticService {
            api_key: None,
            ..stored
        };
        assert_eq!(
            fails(replace(&v, &keyless)),
            (ErrorCode::RuleViolated, "api_key".into())
        );
    }
}
