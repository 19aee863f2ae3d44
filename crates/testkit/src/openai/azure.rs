//! The Azure OpenAI mock: `api-key`, deployments and dated `api-version`s, the v1 surface,
//! and Azure's own error shape.

use std::collections::BTreeMap;
use std::ops::Deref;

use axum::response::{IntoResponse, Response};
use http::Method;
use serde_json::json;

use super::{
    CHAT_FIELDS, Flavor, RESPONSES_FIELDS, chat_completions, kind_for, parse_common, responses,
};
use crate::server::{Behavior, Exchange, Handler, MockServer, json_response};

/// The key a default Azure mock expects in `api-key`.
pub const AZURE_API_KEY: &str = "azure-mock-key";

/// What an Azure mock is started with.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub api_key: String,
    /// Deployment name → the model it runs (what answers report as `model`).
    pub deployments: BTreeMap<String, String>,
    /// The dated `api-version`s the deployments surface accepts.
    pub api_versions: Vec<String>,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            api_key: AZURE_API_KEY.to_owned(),
            deployments: [
                ("gpt-4o-prod", "gpt-4o-2024-08-06"),
                ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
            ]
            .into_iter()
            .map(|(d, m)| (d.to_owned(), m.to_owned()))
            .collect(),
            api_versions: [
                "2024-06-01",
                "2024-10-21",
                "2025-03-01-preview",
                "2025-04-01-preview",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// A running Azure OpenAI mock (resource endpoint `http://127.0.0.1:PORT`); stopped when
/// dropped. Serves `/openai/deployments/{deployment}/chat/completions?api-version=…`,
/// `/openai/responses?api-version=…` and the v1 surface `/openai/v1/chat/completions`,
/// `/openai/v1/responses`.
pub struct MockAzure {
    server: MockServer,
}

impl Deref for MockAzure {
    type Target = MockServer;
    fn deref(&self) -> &MockServer {
        &self.server
    }
}

impl MockAzure {
    pub async fn start() -> std::io::Result<MockAzure> {
        Self::start_with(AzureConfig::default()).await
    }

    pub async fn start_with(config: AzureConfig) -> std::io::Result<MockAzure> {
        Ok(MockAzure {
            server: MockServer::start(AzureHandler { config }).await?,
        })
    }

    /// The resource endpoint to configure a route with (`url`).
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }
}

struct AzureHandler {
    config: AzureConfig,
}

/// Azure's own error shape: `{"error": {"code", "message"}}`.
fn azure_error(status: u16, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

impl Handler for AzureHandler {
    fn handle(&self, ex: &Exchange<'_>) -> Response {
        let req = ex.req;
        if let Behavior::Reject {
            status,
            code,
            message,
        } = ex.behavior
        {
            return json_response(
                *status,
                &json!({"error": {"code": code, "message": message, "type": kind_for(*status), "param": null}}),
            );
        }
        if req.header("api-key") != Some(self.config.api_key.as_str()) {
            return azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            );
        }
        if req.method != Method::POST {
            return azure_error(405, "405", "Method not allowed");
        }
        let version = req.query_param("api-version");
        // Refusals of an `api-version` on the dated surface.
        let dated = |v: Option<&str>| match v {
            None => Err(Box::new(azure_error(404, "404", "Resource not found"))),
            Some(v) if self.config.api_versions.iter().any(|k| k == v) => Ok(v.to_owned()),
            Some(_) => Err(Box::new(azure_error(
                400,
                "BadRequest",
                "API version not supported",
            ))),
        };
        let path = req.path.as_str();
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let Some(deployment) = rest.strip_suffix("/chat/completions") else {
                return azure_error(404, "404", "Resource not found");
            };
            if let Err(e) = dated(version) {
                return *e;
            }
            let Some(model) = self.config.deployments.get(deployment) else {
                return azure_error(
                    404,
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
                );
            };
            return match parse_common(req, CHAT_FIELDS, false) {
                Ok((body, _, stream)) => chat_completions(ex, &body, model, stream, Flavor::Azure),
                Err(e) => e.into_response(),
            };
        }
        let (v1, responses_api) = match path {
            "/openai/v1/chat/completions" => (true, false),
            "/openai/v1/responses" => (true, true),
            "/openai/responses" => (false, true),
            _ => return azure_error(404, "404", "Resource not found"),
        };
        if v1 {
            if let Some(v) = version
                && !matches!(v, "preview" | "latest")
            {
                return azure_error(400, "BadRequest", "API version not supported");
            }
        } else {
            match dated(version) {
                Err(e) => return *e,
                Ok(v) if v.as_str() < "2025-03-01" => {
                    return azure_error(400, "BadRequest", "API version not supported");
                }
                Ok(_) => {}
            }
        }
        let fields = if responses_api {
            RESPONSES_FIELDS
        } else {
            CHAT_FIELDS
        };
        let (body, deployment, stream) = match parse_common(req, fields, true) {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
        let Some(model) = self.config.deployments.get(&deployment) else {
            return azure_error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
            );
        };
        if responses_api {
            responses(ex, &body, model, stream)
        } else {
            chat_completions(ex, &body, model, stream, Flavor::Azure)
        }
    }
}
