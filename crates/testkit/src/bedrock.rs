//! `MockBedrock`: a local stand-in for the Bedrock Runtime `Converse` and `ConverseStream`
//! APIs (`POST /model/{modelId}/converse`, `/converse-stream`), and for Claude's
//! `InvokeModel` and `InvokeModelWithResponseStream` (`/invoke`,
//! `/invoke-with-response-stream`: Anthropic's Messages body with `anthropic_version`
//! `bedrock-2023-05-31`, checked like the Messages API by [`crate::anthropic`]; streams are
//! `chunk` events whose payload carries the Messages event as base64 `bytes`).
//!
//! Every request must be signed with AWS Signature V4 (service `bedrock`, the mock's region):
//! the mock **recomputes the signature** from the request as it arrived (canonical URI from
//! the path on the wire, so a model id's `%3A` is canonicalised as `%253A`; signed headers;
//! SHA-256 of the body) with its own implementation, independent of the gateway's signer, and
//! answers 403 like AWS when it does not match, when the key is unknown, the scope wrong or
//! the date stale. The Converse body is checked like Bedrock does (roles alternate starting
//! with a user, content blocks hold exactly one member, tool results answer the previous turn's
//! tool uses, `toolConfig` present when tools are used, inference parameter ranges, unknown
//! fields refused); errors carry `x-amzn-ErrorType` and `{"message"}`. Streams are AWS
//! event-stream frames (prelude, headers, payload, both CRC32s) encoded here, padded with the
//! `"p"` field as Bedrock does.

use std::ops::Deref;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::anthropic;
use crate::script::{self, Conversation, Last, Reply, argument_pieces, decide, text_pieces, words};
use crate::server::{Behavior, Exchange, Handler, MockServer, ReportedUsage, type_name};

/// The access key id a default mock accepts.
pub const BEDROCK_ACCESS_KEY: &str = "AKIAMOCKACCESSKEY";
/// Its secret.
pub const BEDROCK_SECRET_KEY: &str = "mock/Secret+Key/wJalrXUtnFEMIK7MDENG";
/// The region a default mock serves.
pub const BEDROCK_REGION: &str = "us-east-1";

/// AWS keys the mock accepts.
#[derive(Debug, Clone)]
pub struct AwsKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Temporary credentials carry a session token that must be sent (and signed).
    pub session_token: Option<String>,
}

/// What a Bedrock mock is started with.
#[derive(Debug, Clone)]
pub struct BedrockConfig {
    pub region: String,
    pub keys: Vec<AwsKey>,
    /// The model ids it serves.
    pub models: Vec<String>,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        BedrockConfig {
            region: BEDROCK_REGION.to_owned(),
            keys: vec![AwsKey {
                access_key_id: BEDROCK_ACCESS_KEY.to_owned(),
                secret_access_key: BEDROCK_SECRET_KEY.to_owned(),
                session_token: None,
            }],
            models: [
                "anthropic.claude-3-haiku-20240307-v1:0",
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// A running Bedrock Runtime mock (endpoint `http://127.0.0.1:PORT`); stopped when dropped.
pub struct MockBedrock {
    server: MockServer,
}

impl Deref for MockBedrock {
    type Target = MockServer;
    fn deref(&self) -> &MockServer {
        &self.server
    }
}

impl MockBedrock {
    pub async fn start() -> std::io::Result<MockBedrock> {
        Self::start_with(BedrockConfig::default()).await
    }

    pub async fn start_with(config: BedrockConfig) -> std::io::Result<MockBedrock> {
        Ok(MockBedrock {
            server: MockServer::start(BedrockHandler { config }).await?,
        })
    }

    /// The runtime endpoint to configure a route with (`url`; give the region separately).
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }
}

struct BedrockHandler {
    config: BedrockConfig,
}

/// An AWS error: `x-amzn-ErrorType` and `{"message"}`.
fn aws_error(status: u16, error_type: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            "x-amzn-errortype",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        )
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
        .body(Body::from(json!({"message": message}).to_string()))
        .unwrap_or_default()
}

fn validation(message: impl AsRef<str>) -> Response {
    aws_error(400, "ValidationException", message.as_ref())
}

impl Handler for BedrockHandler {
    fn handle(&self, ex: &Exchange<'_>) -> Response {
        let req = ex.req;
        if let Behavior::Reject {
            status,
            code,
            message,
        } = ex.behavior
        {
            return aws_error(*status, code, message);
        }
        if let Err(e) = verify_sigv4(
            &self.config,
            &req.method,
            &req.path,
            req.query.as_deref(),
            &req.headers,
            &req.body,
            SystemTime::now(),
        ) {
            return e.response();
        }
        let Some(rest) = req.path.strip_prefix("/model/") else {
            return aws_error(404, "UnknownOperationException", "");
        };
        let (raw_model, stream, invoke) = if let Some(m) = rest.strip_suffix("/converse-stream") {
            (m, true, false)
        } else if let Some(m) = rest.strip_suffix("/converse") {
            (m, false, false)
        } else if let Some(m) = rest.strip_suffix("/invoke-with-response-stream") {
            (m, true, true)
        } else if let Some(m) = rest.strip_suffix("/invoke") {
            (m, false, true)
        } else {
            return aws_error(404, "UnknownOperationException", "");
        };
        if req.method != Method::POST {
            return aws_error(405, "UnknownOperationException", "");
        }
        let model = percent_decode(raw_model);
        if !self.config.models.contains(&model) {
            return validation("The provided model identifier is invalid.");
        }
        if invoke {
            return invoke_model(ex, &model, stream);
        }
        let conv = match check_converse(&req.body) {
            Ok(c) => c,
            Err(message) => return validation(message),
        };
        let reply = decide(&model, &conv);
        let usage = script::usage(&conv, &reply);
        ex.report(usage);
        if stream {
            converse_stream(ex, &reply, &usage)
        } else {
            converse(&reply, &usage)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signature V4, recomputed.

/// Why a signature was refused (403 like AWS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Error {
    pub error_type: &'static str,
    pub message: String,
}

impl SigV4Error {
    fn new(error_type: &'static str, message: impl Into<String>) -> SigV4Error {
        SigV4Error {
            error_type,
            message: message.into(),
        }
    }

    fn response(&self) -> Response {
        aws_error(403, self.error_type, &self.message)
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 encoding of everything but unreserved characters (AWS `UriEncode`).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `YYYYMMDDTHHMMSSZ` → seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Verifies a request's SigV4 signature by recomputing it (`now` bounds the date skew).
pub fn verify_sigv4(
    config: &BedrockConfig,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let missing = || {
        SigV4Error::new(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        )
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let incomplete = || {
        SigV4Error::new(
            "IncompleteSignatureException",
            format!(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization={auth}"
            ),
        )
    };
    let params = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(incomplete)?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in params.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(incomplete)?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let (credential, signed_headers, signature) = match (credential, signed_headers, signature) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => return Err(incomplete()),
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope[..] else {
        return Err(incomplete());
    };
    let Some(key) = config.keys.iter().find(|k| k.access_key_id == access_key) else {
        return Err(SigV4Error::new(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    if terminator != "aws4_request" {
        return Err(SigV4Error::new(
            "InvalidSignatureException",
            "Credential should be scoped with a valid terminator: 'aws4_request'.",
        ));
    }
    if service != "bedrock" {
        return Err(SigV4Error::new(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        ));
    }
    if region != config.region {
        return Err(SigV4Error::new(
            "InvalidSignatureException",
            format!("Credential should be scoped to a valid region, not '{region}'. "),
        ));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let amz_date = header("x-amz-date").ok_or_else(|| {
        SigV4Error::new(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    if !amz_date.starts_with(date) {
        return Err(SigV4Error::new(
            "InvalidSignatureException",
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{amz_date}'"
            ),
        ));
    }
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        SigV4Error::new(
            "IncompleteSignatureException",
            format!("bad X-Amz-Date '{amz_date}'"),
        )
    })?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    if now.abs_diff(signed_at) > 15 * 60 {
        return Err(SigV4Error::new(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is now earlier or later than the allowed 15 minutes."
            ),
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(SigV4Error::new(
                "InvalidSignatureException",
                format!("'{required}' must be a signed header."),
            ));
        }
    }
    match (&key.session_token, header("x-amz-security-token")) {
        (Some(expected), Some(given)) if expected == given => {
            if !names.contains(&"x-amz-security-token") {
                return Err(SigV4Error::new(
                    "InvalidSignatureException",
                    "'x-amz-security-token' must be a signed header.",
                ));
            }
        }
        (None, None) => {}
        _ => {
            return Err(SigV4Error::new(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
    }

    let canonical_uri: String = path
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query_pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    query_pairs.sort();
    let canonical_query = query_pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::new(
                "InvalidSignatureException",
                format!("the signed header '{name}' is missing from the request"),
            ));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = match header("x-amz-content-sha256") {
        Some(h) => h.to_owned(),
        None => hex(&Sha256::digest(body)),
    };
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", key.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let expected = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    if expected != signature {
        return Err(SigV4Error::new(
            "InvalidSignatureException",
            format!(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{canonical_request}'\n"
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Converse requests.

const REQUEST_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
    "outputConfig",
];

const BLOCK_MEMBERS: &[&str] = &[
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
];

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path} must be an object, not {}", type_name(v)))
}

fn check_converse(body: &[u8]) -> Result<Conversation, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!("Malformed input request: {e}, please reformat your input and try again.")
    })?;
    let req = object(&value, "the request")?;
    if let Some(unknown) = req.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "Malformed input request: #: extraneous key [{unknown}] is not permitted, please reformat your input and try again."
        ));
    }
    let mut total = 0;
    if let Some(system) = req.get("system") {
        let blocks = system
            .as_array()
            .ok_or("system must be a list of SystemContentBlock")?;
        for (i, block) in blocks.iter().enumerate() {
            let block = object(block, &format!("system.{i}"))?;
            match block.get("text") {
                Some(Value::String(t)) if !t.trim().is_empty() => total += words(t),
                Some(_) => {
                    return Err(format!(
                        "The text field in the SystemContentBlock object at system.{i} is blank. Add text to the text field, and try again."
                    ));
                }
                None if block.contains_key("cachePoint") || block.contains_key("guardContent") => {}
                None => {
                    return Err(format!(
                        "system.{i} must hold text, guardContent or cachePoint"
                    ));
                }
            }
        }
    }
    if let Some(config) = req.get("inferenceConfig") {
        let config = object(config, "inferenceConfig")?;
        for k in config.keys() {
            if !["maxTokens", "temperature", "topP", "stopSequences"].contains(&k.as_str()) {
                return Err(format!(
                    "Malformed input request: #/inferenceConfig: extraneous key [{k}] is not permitted"
                ));
            }
        }
        if let Some(v) = config.get("maxTokens")
            && v.as_u64().is_none_or(|n| n < 1)
        {
            return Err(format!(
                "1 validation error detected: Value '{v}' at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1"
            ));
        }
        for (k, max) in [("temperature", 1.0), ("topP", 1.0)] {
            if let Some(v) = config.get(k)
                && v.as_f64().is_none_or(|x| !(0.0..=max).contains(&x))
            {
                return Err(format!(
                    "1 validation error detected: Value '{v}' at 'inferenceConfig.{k}' failed to satisfy constraint: Member must have value less than or equal to {max}"
                ));
            }
        }
        if let Some(stop) = config.get("stopSequences")
            && !stop
                .as_array()
                .is_some_and(|s| s.iter().all(|x| x.as_str().is_some_and(|x| !x.is_empty())))
        {
            return Err("inferenceConfig.stopSequences must be a list of non-empty strings".into());
        }
    }
    let (tools, no_tools, has_tool_config) = match req.get("toolConfig") {
        None => (Vec::new(), false, false),
        Some(tc) => {
            let (tools, no_tools) = check_tool_config(tc)?;
            (tools, no_tools, true)
        }
    };
    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) | None => {
            return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
        }
        Some(other) => return Err(format!("messages must be a list, not {}", type_name(other))),
    };
    let mut last = Last::Other;
    let mut previous_role = "";
    let mut open_tool_uses: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let message = object(message, &format!("messages.{i}"))?;
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(role, "user" | "assistant") {
            return Err(format!(
                "1 validation error detected: Value '{role}' at 'messages.{i}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]"
            ));
        }
        if i == 0 && role != "user" {
            return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
        }
        if role == previous_role {
            return Err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into());
        }
        previous_role = role;
        let blocks = match message.get("content") {
            Some(Value::Array(b)) if !b.is_empty() => b,
            _ => {
                return Err(format!(
                    "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."
                ));
            }
        };
        let mut tool_uses = Vec::new();
        let mut result = None;
        let mut results = 0;
        for (j, block) in blocks.iter().enumerate() {
            let path = format!("messages.{i}.content.{j}");
            let block = object(block, &path)?;
            let members: Vec<&str> = BLOCK_MEMBERS
                .iter()
                .copied()
                .filter(|k| block.contains_key(*k))
                .collect();
            if members.len() != 1 || block.len() != 1 {
                return Err(format!(
                    "The ContentBlock object at {path} must set exactly one of the following keys: {}",
                    BLOCK_MEMBERS.join(", ")
                ));
            }
            match members[0] {
                "text" => match block.get("text") {
                    Some(Value::String(t)) if !t.trim().is_empty() => total += words(t),
                    _ => {
                        return Err(format!(
                            "The text field in the ContentBlock object at {path} is blank. Add text to the text field, and try again."
                        ));
                    }
                },
                "image" => check_image(&block["image"], &path)?,
                "toolUse" => {
                    if role != "assistant" {
                        return Err(format!(
                            "{path}: toolUse blocks are only allowed in assistant messages"
                        ));
                    }
                    let tool_use = object(&block["toolUse"], &format!("{path}.toolUse"))?;
                    let id = tool_use
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let name = tool_use
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if id.is_empty() || name.is_empty() || !tool_use.contains_key("input") {
                        return Err(format!("{path}.toolUse needs toolUseId, name and input"));
                    }
                    if !tool_use["input"].is_object() {
                        return Err(format!("{path}.toolUse.input must be a JSON object"));
                    }
                    tool_uses.push(id.to_owned());
                }
                "toolResult" => {
                    if role != "user" {
                        return Err(format!(
                            "{path}: toolResult blocks are only allowed in user messages"
                        ));
                    }
                    let tr = object(&block["toolResult"], &format!("{path}.toolResult"))?;
                    let id = tr
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !open_tool_uses.iter().any(|u| u == id) {
                        return Err(format!(
                            "The toolUseId {id} at {path}.toolResult does not match any toolUse block of the previous turn."
                        ));
                    }
                    if let Some(status) = tr.get("status")
                        && !matches!(status.as_str(), Some("success" | "error"))
                    {
                        return Err(format!("{path}.toolResult.status must be success or error"));
                    }
                    let content = match tr.get("content") {
                        Some(Value::Array(c)) if !c.is_empty() => c,
                        _ => {
                            return Err(format!(
                                "{path}.toolResult.content must be a non-empty list"
                            ));
                        }
                    };
                    let mut text = String::new();
                    for (k, c) in content.iter().enumerate() {
                        let c = object(c, &format!("{path}.toolResult.content.{k}"))?;
                        if let Some(t) = c.get("text").and_then(Value::as_str) {
                            text.push_str(t);
                        } else if let Some(j) = c.get("json") {
                            text.push_str(&j.to_string());
                        } else if !c.contains_key("image") && !c.contains_key("document") {
                            return Err(format!(
                                "{path}.toolResult.content.{k} must hold text, json, image or document"
                            ));
                        }
                    }
                    total += words(&text);
                    results += 1;
                    result = Some(text);
                }
                "document" | "video" | "guardContent" | "cachePoint" | "reasoningContent"
                | "citationsContent" => {}
                _ => {}
            }
        }
        if role == "user" && results > open_tool_uses.len() {
            return Err(format!(
                "The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks of previous turn."
            ));
        }
        if (!tool_uses.is_empty() || results > 0) && !has_tool_config {
            return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
        }
        open_tool_uses = tool_uses;
        last = match (role, result) {
            (_, Some(r)) => Last::ToolResult(r),
            ("user", None) => Last::User,
            _ => Last::Other,
        };
    }
    Ok(Conversation {
        last,
        tools,
        no_tools,
        words: total,
        directive: None,
    })
}

fn check_image(image: &Value, path: &str) -> Result<(), String> {
    let image = object(image, &format!("{path}.image"))?;
    match image.get("format").and_then(Value::as_str) {
        Some("png" | "jpeg" | "gif" | "webp") => {}
        other => {
            return Err(format!(
                "1 validation error detected: Value '{}' at '{path}.image.format' failed to satisfy constraint: Member must satisfy enum value set: [png, jpeg, gif, webp]",
                other.unwrap_or("null")
            ));
        }
    }
    let source = image
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{path}.image.source is required"))?;
    match source.get("bytes").and_then(Value::as_str) {
        Some(b) => {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| format!("{path}.image.source.bytes is not valid base64"))?;
            Ok(())
        }
        None if source.contains_key("s3Location") => Ok(()),
        None => Err(format!("{path}.image.source must hold bytes or s3Location")),
    }
}

fn check_tool_config(tc: &Value) -> Result<(Vec<String>, bool), String> {
    let tc = object(tc, "toolConfig")?;
    let tools = match tc.get("tools") {
        Some(Value::Array(t)) if !t.is_empty() => t,
        _ => return Err("toolConfig.tools must be a non-empty list".into()),
    };
    let mut names = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let tool = object(tool, &format!("toolConfig.tools.{i}"))?;
        if tool.contains_key("cachePoint") {
            continue;
        }
        let spec = tool
            .get("toolSpec")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("toolConfig.tools.{i} must hold a toolSpec"))?;
        let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "1 validation error detected: Value '{name}' at 'toolConfig.tools.{i}.member.toolSpec.name' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
            ));
        }
        let schema = spec
            .get("inputSchema")
            .and_then(|s| s.get("json"))
            .ok_or_else(|| format!("toolConfig.tools.{i}.toolSpec.inputSchema.json is required"))?;
        if !schema.is_object() {
            return Err(format!(
                "toolConfig.tools.{i}.toolSpec.inputSchema.json must be a JSON object"
            ));
        }
        names.push(name.to_owned());
    }
    if let Some(choice) = tc.get("toolChoice") {
        let choice = object(choice, "toolConfig.toolChoice")?;
        let set: Vec<&String> = choice.keys().collect();
        match set.as_slice() {
            [k] if *k == "auto" || *k == "any" => {}
            [k] if *k == "tool" => {
                let name = choice["tool"].get("name").and_then(Value::as_str);
                if !name.is_some_and(|n| names.iter().any(|t| t == n)) {
                    return Err("toolConfig.toolChoice.tool.name must name one of the tools".into());
                }
            }
            _ => {
                return Err(
                    "toolConfig.toolChoice must set exactly one of auto, any or tool".into(),
                );
            }
        }
    }
    Ok((names, false))
}

// ---------------------------------------------------------------------------------------
// Answers.

/// `InvokeModel` / `InvokeModelWithResponseStream` with Claude's Messages body.
fn invoke_model(ex: &Exchange<'_>, model: &str, stream: bool) -> Response {
    let checked = match anthropic::check_messages(&ex.req.body, anthropic::Dialect::Bedrock) {
        Ok(c) => c,
        Err(message) => return validation(message),
    };
    let reply = decide(model, &checked.conv);
    let usage = checked.usage(&reply);
    ex.report(usage);
    if !stream {
        let mut body = anthropic::message_json(model, &checked, &reply, &usage);
        body["id"] = json!(format!(
            "msg_bdrk_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..24]
        ));
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
            .header("x-amzn-bedrock-input-token-count", usage.input.to_string())
            .header(
                "x-amzn-bedrock-output-token-count",
                usage.output.to_string(),
            )
            .body(Body::from(body.to_string()))
            .unwrap_or_default();
    }
    let mut events = anthropic::message_events(model, &checked, &reply, &usage);
    if let Some(last) = events.last_mut() {
        last["amazon-bedrock-invocationMetrics"] = json!({
            "inputTokenCount": usage.input, "outputTokenCount": usage.output,
            "invocationLatency": 420, "firstByteLatency": 120,
        });
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|e| {
            let bytes = base64::engine::general_purpose::STANDARD.encode(e.to_string());
            event("chunk", json!({"bytes": bytes}))
        })
        .collect();
    match ex.behavior {
        Behavior::GarbledStream => {
            let mut broken = frames[1].to_vec();
            let at = broken.len() - 8;
            broken[at] ^= 0x20;
            frames[1] = Bytes::from(broken);
        }
        Behavior::StreamError => {
            frames.truncate(2);
            frames.push(frame(
                &[
                    (":exception-type", "modelStreamErrorException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                json!({"message": "The model stream broke off."})
                    .to_string()
                    .as_bytes(),
            ));
        }
        _ => {}
    }
    ex.stream("application/vnd.amazon.eventstream", frames)
}

fn wire_usage(u: &ReportedUsage) -> Value {
    // Bedrock reports cache reads apart from inputTokens.
    json!({
        "inputTokens": u.input - u.cached,
        "outputTokens": u.output,
        "totalTokens": u.input + u.output,
        "cacheReadInputTokens": u.cached,
        "cacheWriteInputTokens": 0,
    })
}

fn tool_use_id() -> String {
    format!(
        "tooluse_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..22]
    )
}

fn converse(reply: &Reply, usage: &ReportedUsage) -> Response {
    let (content, stop) = match reply {
        Reply::Text(t) => (json!([{"text": t}]), "end_turn"),
        Reply::Call { name, arguments } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            (
                json!([{"toolUse": {"toolUseId": tool_use_id(), "name": name, "input": input}}]),
                "tool_use",
            )
        }
    };
    let body = json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": wire_usage(usage),
        "metrics": {"latencyMs": 42},
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// One event-stream frame: prelude (total and headers length), its CRC32, string headers,
/// the payload, and the CRC32 of everything before it.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut head = BytesMut::new();
    for (name, value) in headers {
        head.put_u8(name.len() as u8);
        head.put_slice(name.as_bytes());
        head.put_u8(7); // string
        head.put_u16(value.len() as u16);
        head.put_slice(value.as_bytes());
    }
    let total = 12 + head.len() + payload.len() + 4;
    let mut out = BytesMut::with_capacity(total);
    out.put_u32(total as u32);
    out.put_u32(head.len() as u32);
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.put_u32(prelude_crc);
    out.put_slice(&head);
    out.put_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.put_u32(message_crc);
    out.freeze()
}

fn event(kind: &str, mut payload: Value) -> Bytes {
    // Bedrock pads every event with a `p` field of varying length.
    let pad = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123";
    payload["p"] = json!(&pad[..(kind.len() * 3) % pad.len()]);
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn converse_stream(ex: &Exchange<'_>, reply: &Reply, usage: &ReportedUsage) -> Response {
    let mut events = vec![event("messageStart", json!({"role": "assistant"}))];
    let stop = match reply {
        Reply::Text(text) => {
            for piece in text_pieces(text) {
                events.push(event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
                ));
            }
            "end_turn"
        }
        Reply::Call { name, arguments } => {
            events.push(event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": tool_use_id(), "name": name}}}),
            ));
            for piece in argument_pieces(arguments) {
                events.push(event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                ));
            }
            "tool_use"
        }
    };
    events.push(event("contentBlockStop", json!({"contentBlockIndex": 0})));
    events.push(event("messageStop", json!({"stopReason": stop})));
    events.push(event(
        "metadata",
        json!({"usage": wire_usage(usage), "metrics": {"latencyMs": 42}}),
    ));
    match ex.behavior {
        Behavior::GarbledStream => {
            // A byte flipped in a frame's payload: its message CRC no longer matches.
            let mut broken = events[1].to_vec();
            let at = broken.len() - 8;
            broken[at] ^= 0x20;
            events[1] = Bytes::from(broken);
        }
        Behavior::StreamError => {
            events.truncate(2);
            events.push(frame(
                &[
                    (":exception-type", "throttlingException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                json!({"message": "Too many tokens, please wait before trying again."})
                    .to_string()
                    .as_bytes(),
            ));
        }
        _ => {}
    }
    ex.stream("application/vnd.amazon.eventstream", events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long_key = [0xaau8; 131];
        assert_eq!(
            hex(&hmac(
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(parse_amz_date("20240101T000000Z"), Some(1_704_067_200));
        assert_eq!(parse_amz_date("19700101T000001Z"), Some(1));
        assert_eq!(parse_amz_date("2024-01-01"), None);
    }

    #[test]
    fn frames_have_both_crcs() {
        let f = frame(&[(":event-type", "x")], b"{}");
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len()
        );
        let crc = u32::from_be_bytes(f[8..12].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&f[..8]));
        let n = f.len();
        assert_eq!(
            u32::from_be_bytes(f[n - 4..].try_into().unwrap()),
            crc32fast::hash(&f[..n - 4])
        );
    }
}
