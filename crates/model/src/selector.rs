use crate::ValidationError;

/// Where a dynamic credential is read from on each incoming request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorSource {
    /// `attributes.headers['name']`; the name is stored lowercased.
    Header(String),
    /// `attributes.queryParams['name']`.
    Query(String),
}

/// A parsed selector expression such as `#[attributes.headers['x-api-key']]` (the `#[ … ]`
/// wrapper is optional; quotes may be single or double).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub source: SelectorSource,
}

impl Selector {
    pub fn parse(field: &str, expression: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| {
            ValidationError::invalid(
                field,
                format!(
                    "{why}; expected attributes.headers['name'] or attributes.queryParams['name'], optionally inside #[ ]"
                ),
            )
        };
        let mut e = expression.trim();
        if let Some(inner) = e.strip_prefix("#[") {
            e = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed '#['"))?
                .trim();
        }
        let (kind, rest) = if let Some(rest) = e.strip_prefix("attributes.headers[") {
            ("header", rest)
        } else if let Some(rest) = e.strip_prefix("attributes.queryParams[") {
            ("query", rest)
        } else {
            return Err(bad("unknown selector"));
        };
        let rest = rest.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
        let name = match rest.as_bytes() {
            [b'\'', .., b'\''] | [b'"', .., b'"'] if rest.len() >= 2 => &rest[1..rest.len() - 1],
            _ => return Err(bad("the name must be quoted")),
        };
        if name.is_empty() || name.len() > 128 {
            return Err(bad("the name must be 1-128 characters"));
        }
        let source = if kind == "header" {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad("not a valid header name"));
            }
            SelectorSource::Header(name.to_ascii_lowercase())
        } else {
            SelectorSource::Query(name.to_owned())
        };
        Ok(Self { source })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            SelectorSource::Header(name) => write!(f, "#[attributes.headers['{name}']]"),
            SelectorSource::Query(name) => write!(f, "#[attributes.queryParams['{name}']]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_forms() {
        let h = Selector::parse("f", "#[attributes.headers['X-AWS-Key']]").unwrap();
        assert_eq!(h.source, SelectorSource::Header("x-aws-key".into()));
        let h = Selector::parse("f", "attributes.headers[\"x-api-key\"]").unwrap();
        assert_eq!(h.source, SelectorSource::Header("x-api-key".into()));
        let q = Selector::parse("f", " #[ attributes.queryParams['key'] ] ").unwrap();
        assert_eq!(q.source, SelectorSource::Query("key".into()));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "#[attributes.headers['x']",
            "attributes.headers[x]",
            "attributes.cookies['x']",
            "attributes.headers['']",
            "attributes.headers['bad header']",
            "attributes.headers['x'",
        ] {
            let err = Selector::parse("routes[0].auth.expression", bad).unwrap_err();
            assert_eq!(err.field, "routes[0].auth.expression", "{bad}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any input: a selector or an error naming the field, never a panic.
            #[test]
            fn any_input_parses_or_names_the_field(expr in "\\PC{0,80}") {
                match Selector::parse("auth.expression", &expr) {
                    Ok(s) => match s.source {
                        SelectorSource::Header(h) => {
                            prop_assert!(http::HeaderName::from_bytes(h.as_bytes()).is_ok());
                            prop_assert_eq!(h.clone(), h.to_ascii_lowercase());
                        }
                        SelectorSource::Query(q) => prop_assert!(!q.is_empty() && q.len() <= 128),
                    },
                    Err(e) => prop_assert_eq!(e.field, "auth.expression"),
                }
            }

            /// Inputs shaped like selectors, with random names, quotes and wrappers.
            #[test]
            fn selector_shaped_inputs(
                wrap in any::<bool>(),
                header in any::<bool>(),
                quote in prop::sample::select(vec!["'", "\"", "", "`"]),
                // Printable ASCII without quote characters: a name holding the quotes would make
                // the expression quote it itself (`['0']` from an empty quote and the name
                // `'0'`), which this oracle does not model.
                name in "[ !#-&(-_a-~]{0,140}",
                pad in "[ \t]{0,3}",
            ) {
                let kind = if header { "headers" } else { "queryParams" };
                let inner = format!("attributes.{kind}[{quote}{name}{quote}]");
                let expr = if wrap { format!("{pad}#[{pad}{inner}{pad}]{pad}") } else { format!("{pad}{inner}") };
                let parsed = Selector::parse("f", &expr);
                let valid_name = !quote.is_empty() && quote != "`" && !name.is_empty() && name.len() <= 128
                    && (!header || http::HeaderName::from_bytes(name.as_bytes()).is_ok());
                prop_assert_eq!(parsed.is_ok(), valid_name, "{}", expr);
                if let Ok(s) = parsed {
                    let want = if header {
                        SelectorSource::Header(name.to_ascii_lowercase())
                    } else {
                        SelectorSource::Query(name.clone())
                    };
                    prop_assert_eq!(s.source, want);
                }
            }
        }
    }
}
