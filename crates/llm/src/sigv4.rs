//! AWS Signature Version 4 for Bedrock requests (via the `aws-sigv4` crate).
//!
//! The request path must already be percent-encoded as it goes on the wire (a model id's `:`
//! as `%3A`); the canonical request then encodes it once more (`%253A`), as boto3 and the AWS
//! SDKs do. Headers added after signing are not covered by the signature.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;

use crate::error::LlmError;

/// AWS credentials for signing.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// Access key id (`AKIA…`).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Signs `request` in place (adds `authorization`, `x-amz-date` and, with a session token,
/// `x-amz-security-token`) for `service` in `region` at `time`.
pub fn sign_request(
    request: &mut http::Request<Bytes>,
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), LlmError> {
    let identity = Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "switchyard",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| LlmError::Internal(format!("sigv4 parameters: {e}")))?
        .into();
    let uri = request.uri().to_string();
    let mut headers = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        let value = value
            .to_str()
            .map_err(|_| LlmError::Internal(format!("header `{name}` is not ascii")))?;
        headers.push((name.as_str(), value));
    }
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(request.body()),
    )
    .map_err(|e| LlmError::Internal(format!("sigv4 request: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| LlmError::Internal(format!("sigv4 signing: {e}")))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(serde::Deserialize)]
    struct Vector {
        label: String,
        method: String,
        host: String,
        path_on_wire: String,
        body: String,
        access_key: String,
        secret_key: String,
        session_token: Option<String>,
        region: String,
        service: String,
        authorization: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../tests/fixtures/sigv4_vectors.json");
        serde_json::from_str(text).unwrap()
    }

    /// 2024-01-01T00:00:00Z, the vectors' `x_amz_date`.
    fn vector_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_704_067_200)
    }

    #[test]
    fn known_answer_vectors() {
        let vectors = vectors();
        assert!(vectors.len() >= 3);
        for v in vectors {
            let mut req = http::Request::builder()
                .method(v.method.as_str())
                .uri(format!("https://{}{}", v.host, v.path_on_wire))
                .header("content-type", "application/json")
                .body(Bytes::from(v.body.clone()))
                .unwrap();
            let creds = AwsCredentials {
                access_key_id: v.access_key.clone(),
                secret_access_key: v.secret_key.clone(),
                session_token: v.session_token.clone(),
            };
            sign_request(&mut req, &creds, &v.region, &v.service, vector_time()).unwrap();
            assert_eq!(
                req.headers()["authorization"].to_str().unwrap(),
                v.authorization,
                "vector `{}`",
                v.label
            );
            assert_eq!(req.headers()["x-amz-date"], "20240101T000000Z");
            if let Some(token) = &v.session_token {
                assert_eq!(req.headers()["x-amz-security-token"], token.as_str());
            }
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let creds = AwsCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
            session_token: Some("token".into()),
        };
        let text = format!("{creds:?}");
        assert!(!text.contains("secret\"") && !text.contains("token\""));
    }
}
