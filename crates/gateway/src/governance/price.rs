//! The price table on the node: a request's cost from its usage and the model that served
//! it (after any target-model override).
//!
//! A model is looked up as it is, then in plainer forms, so one entry prices its variants:
//! without a provider prefix (`anthropic/`, `anthropic.` and a Bedrock cross-region prefix
//! such as `us.`), without a Bedrock version suffix (`-v1:0`), and without a date suffix
//! (`-2024-07-18`, `-20250514`).

use std::collections::HashMap;

use switchyard_llm::Usage;
use switchyard_model::Price;

#[derive(Debug, Default)]
pub(crate) struct PriceTable {
    by_model: HashMap<String, Price>,
}

impl PriceTable {
    pub(crate) fn new(prices: &[Price]) -> PriceTable {
        PriceTable {
            by_model: prices
                .iter()
                .map(|p| (p.model.clone(), p.clone()))
                .collect(),
        }
    }

    /// The price of `model`, trying its plainer forms.
    pub(crate) fn find(&self, model: &str) -> Option<&Price> {
        if self.by_model.is_empty() {
            return None;
        }
        candidates(model).find_map(|m| self.by_model.get(&m))
    }

    /// The cost in USD of `usage` on `model`; `None` when the model has no price.
    pub(crate) fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let price = self.find(model)?;
        Some(price.cost(
            usage.input_tokens,
            usage.cached_input_tokens.unwrap_or(0),
            usage.output_tokens,
        ))
    }
}

/// `model` and its plainer forms, most specific first.
fn candidates(model: &str) -> impl Iterator<Item = String> {
    let mut out: Vec<String> = vec![model.to_owned()];
    let mut push = |m: &str| {
        if !m.is_empty() && !out.iter().any(|x| x == m) {
            out.push(m.to_owned());
        }
    };
    let mut m = model;
    if let Some(rest) = m.strip_prefix("anthropic/") {
        m = rest;
        push(m);
    }
    for region in ["us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au."] {
        if let Some(rest) = m.strip_prefix(region) {
            m = rest;
            push(m);
            break;
        }
    }
    if let Some(rest) = m.strip_prefix("anthropic.") {
        m = rest;
        push(m);
    }
    let unversioned = strip_bedrock_version(m);
    push(unversioned);
    push(strip_date(unversioned));
    out.into_iter()
}

/// `claude-3-5-sonnet-20240620-v1:0` → `claude-3-5-sonnet-20240620`.
fn strip_bedrock_version(m: &str) -> &str {
    if let Some(i) = m.rfind("-v")
        && let Some((major, minor)) = m[i + 2..].split_once(':')
        && !major.is_empty()
        && major.bytes().all(|b| b.is_ascii_digit())
        && minor.bytes().all(|b| b.is_ascii_digit())
    {
        return &m[..i];
    }
    m
}

/// `gpt-4o-mini-2024-07-18` → `gpt-4o-mini`; `claude-sonnet-4-20250514` → `claude-sonnet-4`.
fn strip_date(m: &str) -> &str {
    let b = m.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    // -YYYY-MM-DD
    if b.len() > 11 {
        let t = &b[b.len() - 11..];
        if t[0] == b'-'
            && digits(&t[1..5])
            && t[5] == b'-'
            && digits(&t[6..8])
            && t[8] == b'-'
            && digits(&t[9..11])
        {
            return &m[..m.len() - 11];
        }
    }
    // -YYYYMMDD
    if b.len() > 9 {
        let t = &b[b.len() - 9..];
        if t[0] == b'-' && digits(&t[1..]) && (t[1] == b'2') {
            return &m[..m.len() - 9];
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, input: f64, output: f64) -> Price {
        Price {
            model: model.into(),
            input_per_mtok: input,
            output_per_mtok: output,
            cached_input_per_mtok: None,
        }
    }

    #[test]
    fn plainer_forms_find_one_entry() {
        let table = PriceTable::new(&[
            price("gpt-4o-mini", 0.15, 0.6),
            price("claude-3-5-sonnet", 3.0, 15.0),
            price("claude-sonnet-4", 3.0, 15.0),
            price("claude-sonnet-4-20250514", 9.0, 9.0),
        ]);
        for (model, want) in [
            ("gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            (
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                "claude-3-5-sonnet",
            ),
            (
                "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
                "claude-3-5-sonnet",
            ),
            ("anthropic/claude-3-5-sonnet-20240620", "claude-3-5-sonnet"),
            // The most specific entry wins.
            (
                "anthropic.claude-sonnet-4-20250514-v1:0",
                "claude-sonnet-4-20250514",
            ),
        ] {
            assert_eq!(
                table.find(model).map(|p| p.model.as_str()),
                Some(want),
                "{model}"
            );
        }
        assert!(table.find("gpt-5").is_none());
        assert!(table.find("").is_none());
    }

    #[test]
    fn cost_uses_cached_and_output_prices() {
        let mut p = price("m", 2.0, 8.0);
        p.cached_input_per_mtok = Some(0.5);
        let table = PriceTable::new(&[p]);
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
            cached_input_tokens: Some(400),
            cache_write_input_tokens: None,
            reasoning_tokens: None,
        };
        let cost = table.cost("m", &usage).unwrap();
        assert!((cost - (600.0 * 2.0 + 400.0 * 0.5 + 500.0 * 8.0) / 1e6).abs() < 1e-12);
        assert_eq!(table.cost("other", &usage), None);
    }

    #[test]
    fn suffixes_strip_only_when_they_are_one() {
        assert_eq!(strip_date("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(strip_date("claude-opus-4-1-20250805"), "claude-opus-4-1");
        assert_eq!(strip_date("gpt-4.1"), "gpt-4.1");
        assert_eq!(strip_date("nemotron-70b"), "nemotron-70b");
        assert_eq!(strip_bedrock_version("x-v2:0"), "x");
        assert_eq!(strip_bedrock_version("x-v2"), "x-v2");
        assert_eq!(strip_bedrock_version("deepseek-v3"), "deepseek-v3");
    }
}
