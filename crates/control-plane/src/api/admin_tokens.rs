//! `/api/v1/admin-tokens`: named admin tokens with a role (`admin`, `editor` scoped to
//! gateways, `viewer`). A token is shown once, when created; the store keeps its SHA-256.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use switchyard_model::{ValidationError, validate_gateway_name};

use super::auth::{ANONYMOUS, BOOTSTRAP, Caller, Role};
use super::{ApiError, AppState, parse_strict};
use crate::store::{AdminTokenRecord, NewAdminToken};

/// Every admin token starts with this.
pub const TOKEN_PREFIX: &str = "syadm_";
/// Characters of a token shown in listings (the prefix and 6 more).
const SHOWN_CHARS: usize = 12;
/// Gateways one editor token may name at most.
const MAX_GATEWAYS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAdminToken {
    name: String,
    role: String,
    #[serde(default)]
    gateways: Vec<String>,
}

/// The reply of `POST /admin-tokens`: the only time the token is shown.
#[derive(Serialize)]
struct NewTokenView {
    #[serde(flatten)]
    record: AdminTokenRecord,
    token: String,
}

/// A new token: `syadm_` and 32 bytes of the operating system's CSPRNG, base64url.
fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::internal("no randomness for a token", e))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn validate(input: CreateAdminToken) -> Result<(String, Role, Vec<String>), ValidationError> {
    validate_gateway_name("name", &input.name)?;
    if input.name == BOOTSTRAP || input.name == ANONYMOUS {
        return Err(ValidationError::invalid(
            "name",
            format!("'{}' is reserved", input.name),
        ));
    }
    let role = Role::parse(&input.role)
        .ok_or_else(|| ValidationError::invalid("role", "must be one of admin, editor, viewer"))?;
    match role {
        Role::Editor => {
            if input.gateways.is_empty() {
                return Err(ValidationError::rule(
                    "gateways",
                    "an editor needs the gateways whose proxies it may write",
                ));
            }
            if input.gateways.len() > MAX_GATEWAYS {
                return Err(ValidationError::limit(
                    "gateways",
                    format!("at most {MAX_GATEWAYS} gateways"),
                ));
            }
            for (i, g) in input.gateways.iter().enumerate() {
                validate_gateway_name(&format!("gateways[{i}]"), g)?;
                if input.gateways[..i].contains(g) {
                    return Err(ValidationError::rule(
                        format!("gateways[{i}]"),
                        format!("'{g}' is listed twice"),
                    ));
                }
            }
        }
        Role::Admin | Role::Viewer => {
            if !input.gateways.is_empty() {
                return Err(ValidationError::rule(
                    "gateways",
                    "only an editor is scoped to gateways (an admin writes all of them, a viewer none)",
                ));
            }
        }
    }
    Ok((input.name, role, input.gateways))
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (name, role, gateways) = validate(parse_strict(&body)?)?;
    let token = new_token()?;
    let new = NewAdminToken {
        name,
        role: role.as_str().to_owned(),
        gateways,
        prefix: token[..SHOWN_CHARS].to_owned(),
        hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())),
    };
    let record = state
        .store
        .create_admin_token(&caller.audit(), &new)
        .await?;
    tracing::info!(admin_token = %record.name, role = %record.role, gateways = ?record.gateways,
        prefix = %record.prefix, by = %caller.name, "admin token created");
    let mut response = (StatusCode::CREATED, Json(NewTokenView { record, token })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<AdminTokenRecord>>, ApiError> {
    Ok(Json(state.store.list_admin_tokens().await?))
}

/// Revokes a token: its next request gets 401.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if name == BOOTSTRAP {
        return Err(ValidationError::rule(
            "name",
            "the bootstrap token is the control plane's --admin-token: change it there",
        )
        .into());
    }
    state
        .store
        .revoke_admin_token(&caller.audit(), &name)
        .await?;
    tracing::info!(admin_token = %name, by = %caller.name, "admin token revoked");
    Ok(StatusCode::NO_CONTENT)
}
