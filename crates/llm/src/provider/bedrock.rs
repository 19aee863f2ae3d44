//! AWS Bedrock Converse: `{url}/model/{model id}/converse` or `/converse-stream`, signed
//! with SigV4 (service `bedrock`) for the route's region. An Anthropic client's Messages body
//! goes to Claude through `{url}/model/{model id}/invoke` (or
//! `/invoke-with-response-stream`) instead, so its `cache_control` marks and thinking blocks
//! survive (the passthrough path).

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{
    Credentials, Provider, ProviderAdapter, Target, encode_path_segment, join_url, json_post,
    split_status,
};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::dialect::bedrock;
use crate::error::{ApiError, LlmError};
use crate::sigv4::sign_request;
use crate::stream::StreamDecoder;

pub(super) struct BedrockAdapter;

/// The Bedrock model id of a route model: `anthropic/<id>` (provider prefix) or a bare id;
/// ARNs are kept whole.
pub fn bedrock_model_id(model: &str) -> &str {
    if model.starts_with("arn:") {
        return model;
    }
    match model.split_once('/') {
        Some((_prefix, id)) if !id.is_empty() => id,
        _ => model,
    }
}

/// The AWS region a Bedrock route signs for: the route's `region` (lowercase letters,
/// digits and `-`, at most 32 characters), else the one its runtime endpoint's host names
/// (`bedrock-runtime.us-east-1.amazonaws.com`). The one Bedrock region rule: admin
/// validation (which requires `region` itself), the node's route compilation and request
/// signing all call it.
pub fn bedrock_region(region: Option<&str>, base_url: &str) -> Result<String, String> {
    if let Some(region) = region.filter(|r| !r.is_empty()) {
        if region.len() > 32
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "region '{region}' must be at most 32 lowercase letters, digits and '-'"
            ));
        }
        return Ok(region.to_owned());
    }
    // bedrock-runtime.us-east-1.amazonaws.com
    let host = base_url
        .split("://")
        .nth(1)
        .unwrap_or(base_url)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    let mut labels = host.split('.');
    match (labels.next(), labels.next()) {
        (Some(service), Some(region)) if service.starts_with("bedrock") && !region.is_empty() => {
            Ok(region.to_owned())
        }
        _ => Err(format!(
            "bedrock routes need a region (none given and none in the host of '{base_url}')"
        )),
    }
}

fn region(target: &Target) -> Result<String, LlmError> {
    bedrock_region(target.region.as_deref(), &target.base_url).map_err(LlmError::Target)
}

/// A signed POST of `body` to `{url}/model/{model id}/{action}` at `time`.
fn signed_post(
    target: &Target,
    action: &str,
    body: Bytes,
    time: SystemTime,
) -> Result<http::Request<Bytes>, LlmError> {
    let Credentials::Aws(credentials) = &target.credentials else {
        return Err(LlmError::Target(
            "bedrock routes need aws credentials (access key id and secret)".into(),
        ));
    };
    let region = region(target)?;
    let url = join_url(
        &target.base_url,
        &format!(
            "model/{}/{action}",
            encode_path_segment(bedrock_model_id(&target.model))
        ),
    );
    let mut request = json_post(&url, &[], body)?;
    sign_request(&mut request, credentials, &region, "bedrock", time)?;
    Ok(request)
}

/// Builds and signs a Converse request at `time` (tests pass a fixed time).
pub(crate) fn build_at(
    target: &Target,
    req: &ChatRequest,
    time: SystemTime,
) -> Result<http::Request<Bytes>, LlmError> {
    if !matches!(target.credentials, Credentials::Aws(_)) {
        return Err(LlmError::Target(
            "bedrock routes need aws credentials (access key id and secret)".into(),
        ));
    }
    let body = bedrock::render_request(req, bedrock_model_id(&target.model))?;
    let action = if req.stream {
        "converse-stream"
    } else {
        "converse"
    };
    signed_post(target, action, body, time)
}

impl ProviderAdapter for BedrockAdapter {
    fn provider(&self) -> Provider {
        Provider::Bedrock
    }

    fn build_request(
        &self,
        target: &Target,
        req: &ChatRequest,
    ) -> Result<http::Request<Bytes>, LlmError> {
        build_at(target, req, SystemTime::now())
    }

    /// `body` is an `InvokeModel` body already (Anthropic's Messages body for Bedrock:
    /// [`crate::dialect::anthropic::bedrock_invoke_body`]); Converse is always translated.
    fn build_passthrough(
        &self,
        target: &Target,
        body: &[u8],
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        self.passthrough_request(target, Bytes::copy_from_slice(body), stream)
    }

    fn passthrough_request(
        &self,
        target: &Target,
        body: Bytes,
        stream: bool,
    ) -> Result<http::Request<Bytes>, LlmError> {
        let action = if stream {
            "invoke-with-response-stream"
        } else {
            "invoke"
        };
        signed_post(target, action, body, SystemTime::now())
    }

    fn parse_response(
        &self,
        target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, ApiError> {
        split_status(self, target, status, headers, body, bedrock::parse_response)
    }

    fn parse_error(
        &self,
        _target: &Target,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError {
        bedrock::parse_error(status, headers, body)
    }

    fn stream_decoder(&self, _target: &Target) -> Box<dyn StreamDecoder> {
        Box::new(bedrock::ConverseStreamDecoder::new())
    }

    fn stream_accept(&self) -> &'static str {
        "application/vnd.amazon.eventstream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};
    use crate::sigv4::AwsCredentials;
    use std::time::{Duration, UNIX_EPOCH};

    fn target(model: &str) -> Target {
        Target::new(
            Provider::Bedrock,
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            model,
        )
        .with_credentials(Credentials::Aws(AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }))
    }

    /// The request of the first known-answer vector: same path, body and time.
    #[test]
    fn signed_request_matches_the_boto3_vector() {
        let req = ChatRequest {
            messages: vec![Message::text_message(Role::User, "hi")],
            max_tokens: Some(32),
            ..ChatRequest::default()
        };
        let time = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let http = build_at(
            &target("anthropic/anthropic.claude-3-haiku-20240307-v1:0"),
            &req,
            time,
        )
        .unwrap();
        assert_eq!(
            http.uri(),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        assert_eq!(
            http.body().as_ref(),
            br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":32}}"#
        );
        assert_eq!(
            http.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=d43fa81695ae0928794ea51e80793b827f3819d51869b46a1b822efe1122666c"
        );
    }

    #[test]
    fn the_one_region_rule() {
        assert_eq!(
            bedrock_region(Some("eu-west-3"), "http://localhost:9000").as_deref(),
            Ok("eu-west-3")
        );
        assert_eq!(
            bedrock_region(None, "https://bedrock-runtime.us-east-1.amazonaws.com/").as_deref(),
            Ok("us-east-1")
        );
        assert_eq!(
            bedrock_region(
                Some(""),
                "https://bedrock-runtime.ap-south-1.amazonaws.com:443"
            )
            .as_deref(),
            Ok("ap-south-1")
        );
        for bad in ["US-EAST-1", "us_east_1", "us-east-1 ", &"a".repeat(33)] {
            let err = bedrock_region(Some(bad), "https://x").unwrap_err();
            assert!(err.contains("lowercase"), "{bad}: {err}");
        }
        let err = bedrock_region(None, "http://localhost:9000").unwrap_err();
        assert!(err.contains("need a region"), "{err}");
    }

    #[test]
    fn model_ids_regions_and_streams() {
        assert_eq!(
            bedrock_model_id("anthropic/us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(
            bedrock_model_id("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        let arn = "arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.claude";
        assert_eq!(bedrock_model_id(arn), arn);

        let req = ChatRequest {
            messages: vec![Message::text_message(Role::User, "hi")],
            stream: true,
            ..ChatRequest::default()
        };
        let http = target("anthropic.claude-3-haiku-20240307-v1:0")
            .build_request(&req)
            .unwrap();
        assert!(http.uri().path().ends_with("/converse-stream"));
        assert!(
            http.headers()["authorization"]
                .to_str()
                .unwrap()
                .contains("/us-east-1/bedrock/aws4_request")
        );

        let mut eu = target("m").with_region("eu-west-3");
        eu.base_url = "http://localhost:9000".into();
        let http = eu.build_request(&req).unwrap();
        assert!(
            http.headers()["authorization"]
                .to_str()
                .unwrap()
                .contains("/eu-west-3/bedrock/")
        );
        let mut no_region = target("m");
        no_region.base_url = "http://localhost:9000".into();
        assert!(matches!(
            no_region.build_request(&req),
            Err(LlmError::Target(_))
        ));
        let keyed = target("m").with_credentials(Credentials::ApiKey("k".into()));
        assert!(matches!(
            keyed.build_request(&req),
            Err(LlmError::Target(_))
        ));
    }
}
