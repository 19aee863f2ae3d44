//! `switchyard usage`: the usage report of `GET /api/v1/usage`, printed as a table, JSON or
//! CSV.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The control plane's admin API.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub admin_url: String,
    /// The admin token (prefer --admin-token-file or the environment variable).
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,
    /// A file holding the admin token (one trailing newline is ignored).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) an https:// admin API must chain to (default: the system roots).
    #[arg(long, env = "SWITCHYARD_ADMIN_CA")]
    pub admin_ca: Option<PathBuf>,
    /// Start of the range (RFC 3339, e.g. 2026-11-01T00:00:00Z); default: the start of the
    /// current UTC month.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the range, exclusive (RFC 3339); default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Comma-separated dimensions: gateway, proxy, route, model, consumer, day.
    #[arg(long)]
    pub group_by: Option<String>,
    /// Only this gateway.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Only this proxy (its id).
    #[arg(long)]
    pub proxy: Option<String>,
    /// Only this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only this consumer (an empty value: requests without one).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = UsageFormat::Table)]
    pub format: UsageFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UsageFormat {
    Table,
    Json,
    Csv,
}

/// The sums of every row, in print order.
const SUMS: [&str; 7] = [
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_usd",
];

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let token = match (&args.admin_token, &args.admin_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
            t.strip_suffix('\n').unwrap_or(&t).to_owned()
        }
        (None, None) => {
            bail!("--admin-token or --admin-token-file (or SWITCHYARD_ADMIN_TOKEN) is required")
        }
    };
    let now = chrono::Utc::now();
    let from = args
        .from
        .clone()
        .unwrap_or_else(|| now.format("%Y-%m-01T00:00:00Z").to_string());
    let to = args
        .to
        .clone()
        .unwrap_or_else(|| now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let mut query: Vec<(&str, String)> = vec![("from", from), ("to", to)];
    for (name, value) in [
        ("group_by", &args.group_by),
        ("gateway", &args.gateway),
        ("proxy", &args.proxy),
        ("route", &args.route),
        ("model", &args.model),
        ("consumer", &args.consumer),
    ] {
        if let Some(v) = value {
            query.push((name, v.clone()));
        }
    }
    let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &args.admin_ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read --admin-ca {}", ca.display()))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("--admin-ca is not a PEM certificate")?,
        );
    }
    let base = format!("{}/api/v1/usage", args.admin_url.trim_end_matches('/'));
    let url = format!(
        "{base}?{}",
        query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    );
    let response = client
        .build()?
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("the admin API's answer is not JSON")?;
    if !status.is_success() {
        let e = &body["error"];
        match e["field"].as_str() {
            Some(field) => bail!("{status}: {field}: {}", e["message"].as_str().unwrap_or("")),
            None => bail!("{status}: {}", e["message"].as_str().unwrap_or("")),
        }
    }
    let rows = body
        .as_array()
        .context("the admin API's answer is not a list of rows")?;
    let groups: Vec<String> = args
        .group_by
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .flat_map(|g| {
            if g == "proxy" {
                vec!["proxy".to_owned(), "proxy_id".to_owned()]
            } else {
                vec![g.to_owned()]
            }
        })
        .collect();
    print!("{}", render(args.format, &groups, rows)?);
    Ok(())
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The rows in `format`: the group's columns, then the sums.
pub fn render(format: UsageFormat, groups: &[String], rows: &[Value]) -> anyhow::Result<String> {
    let columns: Vec<&str> = groups.iter().map(String::as_str).chain(SUMS).collect();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    Ok(match format {
        UsageFormat::Json => format!("{}\n", serde_json::to_string_pretty(rows)?),
        UsageFormat::Csv => {
            let quote = |s: &str| {
                if s.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_owned()
                }
            };
            let mut out = columns.join(",");
            out.push('\n');
            for row in &table {
                out.push_str(&row.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            out
        }
        UsageFormat::Table => {
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    table
                        .iter()
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0)
                        .max(c.len())
                })
                .collect();
            let numeric = |i: usize| i >= groups.len();
            let line = |cells: Vec<&str>| {
                let mut s = String::new();
                for (i, c) in cells.iter().enumerate() {
                    if i > 0 {
                        s.push_str("  ");
                    }
                    let pad = widths[i].saturating_sub(c.chars().count());
                    if numeric(i) {
                        s.push_str(&" ".repeat(pad));
                        s.push_str(c);
                    } else {
                        s.push_str(c);
                        s.push_str(&" ".repeat(pad));
                    }
                }
                s.trim_end().to_owned() + "\n"
            };
            let mut out = line(columns.clone());
            for row in &table {
                out.push_str(&line(row.iter().map(String::as_str).collect()));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_table_csv_and_json() {
        let rows = vec![
            json!({"consumer": "billing-app", "day": "2026-11-24", "requests": 12, "errors": 1,
                   "input_tokens": 1200, "output_tokens": 300, "cached_input_tokens": 0,
                   "reasoning_tokens": 0, "cost_usd": 0.0048}),
            json!({"consumer": null, "day": "2026-11-24", "requests": 3, "errors": 0,
                   "input_tokens": 30, "output_tokens": 9, "cached_input_tokens": 2,
                   "reasoning_tokens": 1, "cost_usd": 0.5}),
        ];
        let groups = vec!["consumer".to_owned(), "day".to_owned()];
        let table = render(UsageFormat::Table, &groups, &rows).unwrap();
        assert_eq!(
            table,
            "consumer     day         requests  errors  input_tokens  output_tokens  cached_input_tokens  reasoning_tokens  cost_usd\n\
             billing-app  2026-11-24        12       1          1200            300                    0                 0  0.004800\n\
             \x20            2026-11-24         3       0            30              9                    2                 1  0.500000\n"
        );
        let csv = render(UsageFormat::Csv, &groups, &rows).unwrap();
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "billing-app,2026-11-24,12,1,1200,300,0,0,0.004800"
        );
        assert_eq!(
            encode("2026-11-01T00:00:00+01:00"),
            "2026-11-01T00%3A00%3A00%2B01%3A00"
        );
        let back: Vec<Value> =
            serde_json::from_str(&render(UsageFormat::Json, &groups, &rows).unwrap()).unwrap();
        assert_eq!(back, rows);
    }
}
