use crate::ValidationError;

/// Paths served by every gateway node itself; no proxy may take them as its base path.
pub const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// A gateway name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit
/// (it appears in URLs, metric labels and Kubernetes objects).
pub fn validate_gateway_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0] != b'-';
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            "must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'",
        ))
    }
}

/// A proxy or route name: 1–64 characters of letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit. Route names never contain `/`: a request's model is
/// `<route>/<model>`.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            "must be 1-64 characters of letters, digits, '-', '_' and '.', starting with a letter or digit",
        ))
    }
}

/// A base path: `/` or `/seg(/seg)*` with segments of unreserved URL characters, at most 128
/// characters, no trailing slash, not one of [`RESERVED_PATHS`].
pub(crate) fn validate_base_path(field: &str, path: &str) -> Result<(), ValidationError> {
    if !path.starts_with('/') {
        return Err(ValidationError::invalid(field, "must start with '/'"));
    }
    if path.len() > 128 {
        return Err(ValidationError::invalid(
            field,
            "must be at most 128 characters",
        ));
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(ValidationError::invalid(field, "must not end with '/'"));
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(ValidationError::invalid(
                field,
                "must not contain empty segments ('//')",
            ));
        }
        if segment == "." || segment == ".." {
            return Err(ValidationError::invalid(
                field,
                "must not contain '.' or '..' segments",
            ));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        {
            return Err(ValidationError::invalid(
                field,
                "segments may contain only letters, digits, '-', '_', '.' and '~'",
            ));
        }
    }
    if RESERVED_PATHS
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        return Err(ValidationError::invalid(
            field,
            format!("'{path}' is reserved by the gateway"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths() {
        for ok in ["/", "/support", "/a/b-c/d_e.f~g", "/v1"] {
            assert!(validate_base_path("base_path", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "support",
            "/support/",
            "//a",
            "/a//b",
            "/a b",
            "/healthz",
            "/metrics/x",
            "/a/..",
            "/a?b",
        ] {
            assert!(validate_base_path("base_path", bad).is_err(), "{bad}");
        }
        assert!(validate_base_path("f", &format!("/{}", "a".repeat(128))).is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("n", "openai").is_ok());
        assert!(validate_name("n", "claude-3.5_x").is_ok());
        assert!(validate_name("n", "a/b").is_err());
        assert!(validate_name("n", "-a").is_err());
        assert!(validate_name("n", "").is_err());
        assert!(validate_gateway_name("g", "prod-eu").is_ok());
        assert!(validate_gateway_name("g", "Prod").is_err());
        assert!(validate_gateway_name("g", "-x").is_err());
    }
}
