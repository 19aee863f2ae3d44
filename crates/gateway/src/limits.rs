//! The node's protective limits: what one client, one upstream or one request may hold of
//! the node (time, connections, bytes, CPU), so that none of them can hurt requests that are
//! not its own. Every field is a flag of `switchyard gateway` (README, "Configuration").

use std::time::Duration;

pub use ipnet::IpNet;

/// Limits on connections, request shapes and in-flight work. [`NodeLimits::default`] holds
/// the production defaults.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    /// Time a client has to send a request's headers, counted from connect or from the end
    /// of the previous response (hyper's HTTP/1 header read timeout): so an idle keep-alive
    /// connection is closed after this long too.
    pub client_header_timeout: Duration,
    /// Longest pause allowed while a client sends a request body; past it the request is
    /// answered 408 and the connection closed.
    pub client_body_timeout: Duration,
    /// Open client connections the node holds at once, over all I/O threads; a connection
    /// past the cap is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Longest pause allowed in an upstream's answer once its headers arrived (between two
    /// body chunks); past it the answer is cut (a stream ends with an error event).
    pub upstream_idle_timeout: Duration,
    /// Messages of one request (`messages`, `input`, `contents`).
    pub max_messages: usize,
    /// Content parts of one message (`content` array, Gemini `parts`).
    pub max_parts_per_message: usize,
    /// Elements of any other JSON array of a request body.
    pub max_array_items: usize,
    /// Nesting depth of a request body's JSON.
    pub max_json_depth: usize,
    /// Request body bytes the node holds at once, over all requests in flight; a request
    /// that would go past it is answered 503.
    pub max_inflight_request_bytes: usize,
    /// Bodies (requests and translated answers) at least this large are parsed, guarded
    /// and translated on the bounded CPU pool instead of the I/O thread.
    pub offload_threshold: usize,
    /// Threads of the CPU pool for large bodies (default: half the cores, at least one).
    pub offload_threads: usize,
    /// Text a prompt guard scans per request (after extraction); a request whose guarded
    /// text is longer is refused with 400 rather than scanned in part.
    pub guard_max_scan_bytes: usize,
    /// Upstream addresses the node never connects to (e.g. `169.254.0.0/16`, the cloud
    /// metadata range); checked on the address actually connected to, after DNS.
    pub upstream_deny_cidrs: Vec<IpNet>,
}

impl NodeLimits {
    pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
    pub const DEFAULT_MAX_MESSAGES: usize = 10_000;
    pub const DEFAULT_MAX_PARTS_PER_MESSAGE: usize = 1_000;
    pub const DEFAULT_MAX_ARRAY_ITEMS: usize = 10_000;
    pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
    pub const DEFAULT_MAX_INFLIGHT_REQUEST_BYTES: usize = 512 * 1024 * 1024;
    pub const DEFAULT_OFFLOAD_THRESHOLD: usize = 256 * 1024;
    pub const DEFAULT_GUARD_MAX_SCAN_BYTES: usize = 4 * 1024 * 1024;

    /// The default size of the CPU pool: half the cores, at least one.
    pub fn default_offload_threads() -> usize {
        (std::thread::available_parallelism().map_or(1, usize::from) / 2).max(1)
    }
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            client_header_timeout: Self::DEFAULT_CLIENT_HEADER_TIMEOUT,
            client_body_timeout: Self::DEFAULT_CLIENT_BODY_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            upstream_idle_timeout: Self::DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_parts_per_message: Self::DEFAULT_MAX_PARTS_PER_MESSAGE,
            max_array_items: Self::DEFAULT_MAX_ARRAY_ITEMS,
            max_json_depth: Self::DEFAULT_MAX_JSON_DEPTH,
            max_inflight_request_bytes: Self::DEFAULT_MAX_INFLIGHT_REQUEST_BYTES,
            offload_threshold: Self::DEFAULT_OFFLOAD_THRESHOLD,
            offload_threads: Self::default_offload_threads(),
            guard_max_scan_bytes: Self::DEFAULT_GUARD_MAX_SCAN_BYTES,
            upstream_deny_cidrs: Vec::new(),
        }
    }
}
