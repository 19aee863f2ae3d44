//! Who calls the admin API, and what they may do.
//!
//! - [`request_id`] gives every admin request an id (`x-request-id`: the client's when it is
//!   a short printable token, a new UUID otherwise), echoed in the response and kept in the
//!   audit entry of the request's write.
//! - [`authenticate`] resolves the bearer token to a [`Caller`]: the command line's
//!   `--admin-token` is the admin `bootstrap`; other tokens are looked up by their SHA-256 in
//!   the store. A missing or unknown token gets 401, counted in
//!   `switchyard_control_plane_admin_auth_failures_total{reason}` and logged with the client's
//!   address (never the token). Unknown tokens also count towards [`AuthThrottle`]: an address
//!   with too many gets 429 with `Retry-After` for a while, whatever token it sends.
//! - [`authorize`] runs per endpoint with the role the endpoint requires (the table in
//!   `super::endpoints`); a token without it gets 403 `forbidden` naming the role. Proxy
//!   writes need `editor`, and their handlers also check the proxy's gateway is one of the
//!   editor's ([`Caller::require_gateway`]).
//!
//! With `--insecure-no-auth` every request is the admin `anonymous` (audited as such).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::store::Audit;

/// The name the command line's `--admin-token` acts under.
pub const BOOTSTRAP: &str = "bootstrap";
/// The name every request acts under with `--insecure-no-auth`.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Viewer, Role::Editor, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// What an endpoint requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// Public (the OpenAPI document).
    Nothing,
    /// At least this role (`Editor`: on the gateway of the proxy written, checked by the
    /// handler).
    Role(Role),
}

impl Required {
    /// As the OpenAPI document's `x-required-role` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Required::Nothing => "none",
            Required::Role(r) => r.as_str(),
        }
    }
}

/// The request's id, set by [`request_id`].
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Who makes an admin request: set by [`authenticate`] for every endpoint behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The gateways an editor may write proxies on.
    pub gateways: Vec<String>,
    pub request_id: String,
}

impl Caller {
    /// The audit context of this caller's writes.
    pub fn audit(&self) -> Audit {
        Audit::new(&self.name, &self.request_id)
    }

    /// Refuses a proxy write on `gateway` unless the caller is an admin or an editor of it.
    pub fn require_gateway(&self, gateway: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Editor if self.gateways.iter().any(|g| g == gateway) => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "writing a proxy of gateway '{gateway}' needs the admin role or the editor role on gateway '{gateway}'; token '{}' is {}",
                self.name,
                self.describe()
            ))),
        }
    }

    fn describe(&self) -> String {
        match self.role {
            Role::Editor => format!("an editor of {}", self.gateways.join(", ")),
            Role::Admin => "an admin".into(),
            Role::Viewer => "a viewer".into(),
        }
    }
}

/// `x-request-id`: kept when the client sent a short printable one, otherwise a new UUID;
/// echoed in the response.
pub(super) async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The peer address of an admin connection, plain or TLS (serve the router with
/// `into_make_service_with_connect_info::<ClientAddr>()`). The direct peer only: a
/// forwarded-for header is the client's to forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, switchyard_tls::TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, switchyard_tls::TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip().to_canonical())
}

/// How often a token's `last_used_at` is written at most.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// The caller a presented token stands for (`None`: no such live token).
async fn resolve(
    state: &AppState,
    bootstrap: &str,
    token: &str,
    request_id: &str,
) -> Result<Option<Caller>, ApiError> {
    let presented = Sha256::digest(token.as_bytes());
    if bool::from(presented.ct_eq(&Sha256::digest(bootstrap.as_bytes()))) {
        return Ok(Some(Caller {
            name: BOOTSTRAP.into(),
            role: Role::Admin,
            gateways: Vec::new(),
            request_id: request_id.into(),
        }));
    }
    let hash = hex::encode(presented);
    let Some(found) = state.store.find_admin_token(&hash).await? else {
        return Ok(None);
    };
    // The lookup was by hash; compare again, in constant time, before trusting the row.
    if !bool::from(found.hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Ok(None);
    }
    let Some(role) = Role::parse(&found.record.role) else {
        return Err(ApiError::internal(
            "an admin token has an unknown role",
            &found.record.role,
        ));
    };
    let now = chrono::Utc::now();
    if found
        .record
        .last_used_at
        .is_none_or(|t| now - t >= TOUCH_EVERY)
        && let Err(e) = state
            .store
            .touch_admin_token(&found.id, now, TOUCH_EVERY)
            .await
    {
        tracing::warn!(error = %e, token = %found.record.name, "cannot record an admin token's last use");
    }
    Ok(Some(Caller {
        name: found.record.name,
        role,
        gateways: found.record.gateways,
        request_id: request_id.into(),
    }))
}

fn failure(reason: &'static str) {
    metrics::counter!("switchyard_control_plane_admin_auth_failures_total", "reason" => reason)
        .increment(1);
}

fn route(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned())
}

pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), |r| r.0.clone());
    let Some(bootstrap) = &state.admin_token else {
        req.extensions_mut().insert(Caller {
            name: ANONYMOUS.into(),
            role: Role::Admin,
            gateways: Vec::new(),
            request_id,
        });
        return next.run(req).await;
    };
    let client = client_ip(&req);
    let shown = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let now = Instant::now();
    if let Some(retry_after) = state.auth_throttle.blocked(client, now) {
        failure("throttled");
        return too_many(retry_after);
    }
    let Some(token) = bearer(req.headers()) else {
        failure("missing");
        tracing::warn!(client = %shown, route = %route(&req), "admin request without a bearer token");
        return ApiError::unauthorized().into_response();
    };
    match resolve(&state, bootstrap, token, &request_id).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => {
            failure("invalid");
            let blocked = state.auth_throttle.fail(client, now);
            tracing::warn!(client = %shown, route = %route(&req), "admin request with an unknown or revoked token");
            if let Some(block) = blocked {
                tracing::warn!(
                    client = %shown,
                    failures = state.auth_throttle.config.max_failures,
                    blocked_for_s = block.as_secs(),
                    "too many failed admin authentications: refusing this client for a while"
                );
            }
            ApiError::unauthorized().into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn too_many(retry_after: Duration) -> Response {
    // Rounded up: a client that waits this long is accepted.
    let secs = u64::try_from(retry_after.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        format!("too many failed authentications from this address; retry after {secs} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// What [`authorize`] checks for one endpoint.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    /// The endpoint, as a refusal names it (`POST /consumers`).
    pub endpoint: String,
    pub required: Required,
}

/// Refuses a caller without the endpoint's role (403 naming it).
pub(super) async fn authorize(State(rule): State<Rule>, req: Request, next: Next) -> Response {
    let Required::Role(needed) = rule.required else {
        return next.run(req).await;
    };
    let Some(caller) = req.extensions().get::<Caller>() else {
        // Only reachable if an endpoint were mounted outside `authenticate`: fail closed.
        return ApiError::unauthorized().into_response();
    };
    if caller.role >= needed {
        return next.run(req).await;
    }
    ApiError::forbidden(format!(
        "{} needs the {} role; token '{}' is {}",
        rule.endpoint,
        needed.as_str(),
        caller.name,
        caller.describe()
    ))
    .into_response()
}

/// Thresholds of the failed-authentication throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Unknown tokens from one address within `window` before it is refused (0: never).
    pub max_failures: u32,
    pub window: Duration,
    /// How long an address is refused once over the limit.
    pub block: Duration,
    /// Addresses tracked at most (memory bound); past it, the stalest entry is dropped.
    pub max_clients: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(600),
            block: Duration::from_secs(600),
            max_clients: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        self.blocked_until.is_none_or(|t| t <= now)
            && now.duration_since(self.window_start) >= window
    }
}

/// Failed authentications per client address (IPv6 per /64, so one host cannot dodge it by
/// walking its prefix): a small map with expiry, bounded by `max_clients`.
#[derive(Debug)]
pub struct AuthThrottle {
    config: ThrottleConfig,
    clients: Mutex<HashMap<IpAddr, Entry>>,
}

/// The address an entry is kept under.
fn client_key(ip: Option<IpAddr>) -> IpAddr {
    match ip {
        Some(IpAddr::V6(v6)) => IpAddr::V6((v6.to_bits() & !((1u128 << 64) - 1)).into()),
        Some(v4) => v4,
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    }
}

impl AuthThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `ip` is still refused, if it is.
    pub fn blocked(&self, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        if self.config.max_failures == 0 {
            return None;
        }
        let clients = self.lock();
        clients
            .get(&client_key(ip))
            .and_then(|e| e.blocked_until)
            .filter(|&t| t > now)
            .map(|t| t - now)
    }

    /// Counts a failure of `ip`; returns the block's length when this one starts a block.
    pub fn fail(&self, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        if self.config.max_failures == 0 {
            return None;
        }
        let key = client_key(ip);
        let mut clients = self.lock();
        if !clients.contains_key(&key) && clients.len() >= self.config.max_clients {
            let window = self.config.window;
            clients.retain(|_, e| !e.expired(now, window));
            if clients.len() >= self.config.max_clients {
                // Still full: drop the entry whose window started first, preferring one
                // that is not blocked.
                let stalest = clients
                    .iter()
                    .min_by_key(|(_, e)| (e.blocked_until.is_some_and(|t| t > now), e.window_start))
                    .map(|(k, _)| *k);
                if let Some(k) = stalest {
                    clients.remove(&k);
                }
            }
        }
        let entry = clients.entry(key).or_insert(Entry {
            failures: 0,
            window_start: now,
            blocked_until: None,
        });
        if now.duration_since(entry.window_start) >= self.config.window {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures += 1;
        if entry.failures >= self.config.max_failures {
            entry.failures = 0;
            entry.window_start = now;
            entry.blocked_until = Some(now + self.config.block);
            return Some(self.config.block);
        }
        None
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_clients: usize) -> ThrottleConfig {
        ThrottleConfig {
            max_failures: 3,
            window: Duration::from_secs(60),
            block: Duration::from_secs(120),
            max_clients,
        }
    }

    #[test]
    fn blocks_after_the_limit_for_the_block_time() {
        let t = AuthThrottle::new(config(100));
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let other: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let now = Instant::now();
        assert_eq!(t.fail(ip, now), None);
        assert_eq!(t.fail(ip, now), None);
        assert_eq!(t.blocked(ip, now), None);
        assert_eq!(t.fail(ip, now), Some(Duration::from_secs(120)));
        assert_eq!(t.blocked(ip, now), Some(Duration::from_secs(120)));
        assert_eq!(
            t.blocked(other, now),
            None,
            "another address is not blocked"
        );
        let later = now + Duration::from_secs(119);
        assert_eq!(t.blocked(ip, later), Some(Duration::from_secs(1)));
        assert_eq!(t.blocked(ip, now + Duration::from_secs(120)), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = AuthThrottle::new(config(100));
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let now = Instant::now();
        t.fail(ip, now);
        t.fail(ip, now);
        let later = now + Duration::from_secs(61);
        assert_eq!(t.fail(ip, later), None);
        assert_eq!(t.fail(ip, later), None);
        assert!(t.fail(ip, later).is_some());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = AuthThrottle::new(config(100));
        let now = Instant::now();
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:1"] {
            t.fail(Some(host.parse().unwrap()), now);
        }
        assert!(
            t.blocked(Some("2001:db8::9".parse().unwrap()), now)
                .is_some()
        );
        assert!(
            t.blocked(Some("2001:db8:0:1::1".parse().unwrap()), now)
                .is_none()
        );
    }

    #[test]
    fn memory_is_bounded_and_blocked_entries_are_kept_first() {
        let t = AuthThrottle::new(config(4));
        let now = Instant::now();
        let blocked: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            t.fail(blocked, now);
        }
        for i in 0..1000u32 {
            let ip = IpAddr::V4((0x0b00_0000 + i).into());
            t.fail(Some(ip), now + Duration::from_millis(u64::from(i)));
            assert!(t.tracked() <= 4);
        }
        assert!(
            t.blocked(blocked, now + Duration::from_secs(1)).is_some(),
            "a flood of new addresses does not free a blocked one"
        );
    }

    #[test]
    fn zero_disables_it() {
        let t = AuthThrottle::new(ThrottleConfig {
            max_failures: 0,
            ..config(10)
        });
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.fail(None, now), None);
        }
        assert_eq!(t.blocked(None, now), None);
    }
}
