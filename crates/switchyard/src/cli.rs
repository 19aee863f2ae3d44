use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchyard_control_plane::crypto::Keyring;
use switchyard_control_plane::{ControlPlane, ControlPlaneConfig};
use switchyard_gateway::limits::IpNet;
use switchyard_gateway::{
    CacheConfig, ControlPlaneTls, EncoderKind, FailureMode, Gateway, GatewayConfig, LimitsConfig,
    NodeLimits,
};
use switchyard_model::Limits;

use crate::traces::TraceArgs;

/// Switchyard: one endpoint in front of OpenAI, Azure OpenAI, Gemini, Bedrock and NVIDIA NIM.
///
/// Every flag can also be set with an environment variable `SWITCHYARD_<FLAG_IN_CAPS>`.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,switchyard_gateway=debug`).
    #[arg(long, global = true, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: admin REST API, gRPC config distribution, store.
    ControlPlane(ControlPlaneArgs),
    /// Run one gateway node: serves LLM traffic, fed by the control plane.
    Gateway(GatewayArgs),
    /// Run a control plane (embedded SQLite) and one gateway in one process, for a first run.
    Dev(DevArgs),
    /// Make a local CA and the fleet's certificates (control plane, node, gateway) for
    /// trying TLS and mTLS.
    Certs(CertsArgs),
    /// Print usage and cost (`GET /api/v1/usage`) as a table, JSON or CSV.
    Usage(crate::usage_cmd::UsageArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt/.key, control-plane.crt/.key, node.crt/.key and
    /// gateway.crt/.key into (created if missing; existing files are never overwritten).
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub days: i64,
    /// More DNS names or IP addresses for the control plane's certificate (repeatable;
    /// localhost, 127.0.0.1 and the in-cluster Service names are always there).
    #[arg(long = "control-plane-name")]
    pub control_plane_names: Vec<String>,
    /// More DNS names or IP addresses for the gateway's traffic certificate (repeatable).
    #[arg(long = "gateway-name")]
    pub gateway_names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServerTlsArgs {
    /// Serve gRPC and the admin API over TLS with this certificate (PEM, chain first);
    /// re-read when the file changes, without dropping connected nodes.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require gateway nodes to present a client certificate signed by this CA (PEM):
    /// mutual TLS on the gRPC listener. Needs --tls-cert.
    #[arg(long, env = "SWITCHYARD_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "SWITCHYARD_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

impl ServerTlsArgs {
    fn config(&self) -> Option<switchyard_tls::ServerTls> {
        let (cert, key) = (self.tls_cert.as_ref()?, self.tls_key.as_ref()?);
        let mut tls = switchyard_tls::ServerTls::new(cert, key);
        tls.client_ca = self.client_ca.clone();
        tls.reload_interval = self.tls_reload_interval;
        Some(tls)
    }
}

#[derive(Debug, Args)]
pub struct NodeTlsArgs {
    /// CA certificate (PEM) an https:// control plane must chain to; default: the system's
    /// trusted roots.
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// This node's client certificate (PEM), presented to the control plane (mTLS).
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the traffic listener over TLS with this certificate (PEM; HTTP/2 and HTTP/1.1
    /// by ALPN); re-read when the file changes.
    #[arg(long, env = "SWITCHYARD_LISTEN_TLS_CERT", requires = "listen_tls_key")]
    pub listen_tls_cert: Option<PathBuf>,
    /// The traffic certificate's private key (PEM).
    #[arg(long, env = "SWITCHYARD_LISTEN_TLS_KEY", requires = "listen_tls_cert")]
    pub listen_tls_key: Option<PathBuf>,
}

impl NodeTlsArgs {
    fn control_plane(&self) -> ControlPlaneTls {
        ControlPlaneTls {
            ca: self.control_plane_ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        }
    }

    fn listen(&self) -> Option<switchyard_tls::ServerTls> {
        let (cert, key) = (
            self.listen_tls_cert.as_ref()?,
            self.listen_tls_key.as_ref()?,
        );
        let mut tls = switchyard_tls::ServerTls::new(cert, key);
        tls.flags = ["--listen-tls-cert", "--listen-tls-key", "--client-ca"];
        Some(tls)
    }
}

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// `postgres://…` or `sqlite://…`; default: an embedded SQLite file under ./data/.
    #[arg(
        long,
        env = "SWITCHYARD_DATABASE_URL",
        default_value = "sqlite://data/switchyard.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// A file holding the database URL (when it carries a password), instead of
    /// --database-url.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Address of the admin REST API.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Address of the gRPC config distribution service.
    #[arg(
        long,
        env = "SWITCHYARD_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,
    /// Bearer token of the admin API (required unless --insecure-no-auth): at least 32
    /// bytes, no surrounding whitespace (e.g. `openssl rand -base64 32`). Prefer
    /// --admin-token-file: a flag's value is visible to every user in /proc.
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
    /// Serve the admin API without authentication (never in production).
    #[arg(long, env = "SWITCHYARD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Unknown admin tokens one client address may present within 10 minutes before it is
    /// refused (429) for 10 minutes; 0 turns the throttle off.
    #[arg(long, env = "SWITCHYARD_ADMIN_AUTH_MAX_FAILURES", default_value_t = switchyard_control_plane::api::ThrottleConfig::default().max_failures)]
    pub admin_auth_max_failures: u32,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// How long raw usage rows (one per request) are kept: `30d`, `720h`, …; `0` keeps them
    /// for ever. The hourly and daily totals are kept whatever this says.
    #[arg(long, env = "SWITCHYARD_USAGE_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub usage_retention: Retention,
    #[command(flatten)]
    pub traces: TraceArgs,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Key encrypting static provider secrets at rest: 32 bytes, base64
    /// (`openssl rand -base64 32`). With a SQLite store and no key, one is created in
    /// `encryption.key` beside the database file.
    #[arg(
        long,
        env = "SWITCHYARD_ENCRYPTION_KEY",
        hide_env_values = true,
        conflicts_with = "encryption_key_file"
    )]
    pub encryption_key: Option<String>,
    /// A file holding the encryption key (base64).
    #[arg(long, env = "SWITCHYARD_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Earlier keys (comma-separated base64), still accepted for decryption; secrets under
    /// them are re-encrypted with the current key at start-up.
    #[arg(
        long,
        env = "SWITCHYARD_PREVIOUS_ENCRYPTION_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        conflicts_with = "previous_encryption_keys_file"
    )]
    pub previous_encryption_keys: Vec<String>,
    /// A file holding the earlier keys, one per line.
    #[arg(long, env = "SWITCHYARD_PREVIOUS_ENCRYPTION_KEYS_FILE")]
    pub previous_encryption_keys_file: Option<PathBuf>,
}

impl KeyArgs {
    fn previous(&self) -> anyhow::Result<Vec<String>> {
        match &self.previous_encryption_keys_file {
            None => Ok(self.previous_encryption_keys.clone()),
            Some(path) => Ok(read_secret_file(path, "--previous-encryption-keys-file")?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
        }
    }
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Proxies per gateway.
    #[arg(long, env = "SWITCHYARD_MAX_PROXIES_PER_GATEWAY", default_value_t = Limits::default().proxies_per_gateway)]
    pub max_proxies_per_gateway: usize,
    /// Routes per proxy.
    #[arg(long, env = "SWITCHYARD_MAX_ROUTES_PER_PROXY", default_value_t = Limits::default().routes_per_proxy)]
    pub max_routes_per_proxy: usize,
    /// Prompt topics across all routes of a proxy.
    #[arg(long, env = "SWITCHYARD_MAX_TOPICS_PER_PROXY", default_value_t = Limits::default().topics_per_proxy)]
    pub max_topics_per_proxy: usize,
    /// Utterances per prompt topic.
    #[arg(long, env = "SWITCHYARD_MAX_UTTERANCES_PER_TOPIC", default_value_t = Limits::default().utterances_per_topic)]
    pub max_utterances_per_topic: usize,
    /// Deny-list topics per proxy.
    #[arg(long, env = "SWITCHYARD_MAX_DENY_TOPICS_PER_PROXY", default_value_t = Limits::default().deny_topics_per_proxy)]
    pub max_deny_topics_per_proxy: usize,
    /// Utterances per deny-list topic.
    #[arg(long, env = "SWITCHYARD_MAX_UTTERANCES_PER_DENY_TOPIC", default_value_t = Limits::default().utterances_per_deny_topic)]
    pub max_utterances_per_deny_topic: usize,
    /// Characters per utterance.
    #[arg(long, env = "SWITCHYARD_MAX_CHARS_PER_UTTERANCE", default_value_t = Limits::default().chars_per_utterance)]
    pub max_chars_per_utterance: usize,
    /// Named patterns of a proxy's regex prompt guard.
    #[arg(long, env = "SWITCHYARD_MAX_REGEX_PATTERNS_PER_PROXY", default_value_t = Limits::default().regex_patterns_per_proxy)]
    pub max_regex_patterns_per_proxy: usize,
    /// Characters per regex guard pattern.
    #[arg(long, env = "SWITCHYARD_MAX_CHARS_PER_REGEX_PATTERN", default_value_t = Limits::default().chars_per_regex_pattern)]
    pub max_chars_per_regex_pattern: usize,
    /// Topics in the prompt topic library (/api/v1/topics).
    #[arg(long, env = "SWITCHYARD_MAX_LIBRARY_TOPICS", default_value_t = Limits::default().library_topics)]
    pub max_library_topics: usize,
    /// Utterances per library topic.
    #[arg(long, env = "SWITCHYARD_MAX_UTTERANCES_PER_LIBRARY_TOPIC", default_value_t = Limits::default().utterances_per_library_topic)]
    pub max_utterances_per_library_topic: usize,
    /// Library topics a proxy's routes may refer to (and, separately, its deny list).
    #[arg(long, env = "SWITCHYARD_MAX_LIBRARY_TOPICS_PER_PROXY", default_value_t = Limits::default().library_topics_per_proxy)]
    pub max_library_topics_per_proxy: usize,
    /// Rate limits of one proxy or one consumer.
    #[arg(long, env = "SWITCHYARD_MAX_RATE_LIMITS", default_value_t = Limits::default().rate_limits_per_owner)]
    pub max_rate_limits: usize,
    /// Proxies one consumer may name (besides "*", every proxy).
    #[arg(long, env = "SWITCHYARD_MAX_PROXIES_PER_CONSUMER", default_value_t = Limits::default().proxies_per_consumer)]
    pub max_proxies_per_consumer: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            proxies_per_gateway: self.max_proxies_per_gateway,
            routes_per_proxy: self.max_routes_per_proxy,
            topics_per_proxy: self.max_topics_per_proxy,
            utterances_per_topic: self.max_utterances_per_topic,
            deny_topics_per_proxy: self.max_deny_topics_per_proxy,
            utterances_per_deny_topic: self.max_utterances_per_deny_topic,
            chars_per_utterance: self.max_chars_per_utterance,
            regex_patterns_per_proxy: self.max_regex_patterns_per_proxy,
            chars_per_regex_pattern: self.max_chars_per_regex_pattern,
            library_topics: self.max_library_topics,
            utterances_per_library_topic: self.max_utterances_per_library_topic,
            library_topics_per_proxy: self.max_library_topics_per_proxy,
            rate_limits_per_owner: self.max_rate_limits,
            proxies_per_consumer: self.max_proxies_per_consumer,
        }
    }
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// gRPC URL of the control plane, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE")]
    pub control_plane: String,
    /// Name of the gateway this node serves.
    #[arg(long, env = "SWITCHYARD_GATEWAY")]
    pub gateway: String,
    /// The gateway's registration token (as `POST /api/v1/gateways` showed it). Prefer
    /// --registration-token-file: a flag's value is visible to every user in /proc.
    #[arg(
        long,
        env = "SWITCHYARD_REGISTRATION_TOKEN",
        hide_env_values = true,
        required_unless_present = "registration_token_file",
        conflicts_with = "registration_token_file"
    )]
    pub registration_token: Option<String>,
    /// A file holding the registration token (one trailing newline is ignored).
    #[arg(long, env = "SWITCHYARD_REGISTRATION_TOKEN_FILE")]
    pub registration_token_file: Option<PathBuf>,
    /// Address serving LLM traffic.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Directory keeping the last good snapshot (and the node id).
    #[arg(
        long,
        env = "SWITCHYARD_CACHE_DIR",
        default_value = "./data/gateway-cache"
    )]
    pub cache_dir: PathBuf,
    /// Address serving /metrics (and /healthz); without it the node serves no metrics.
    /// Never on the traffic port: clients must not read the node's internals.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// This node's id (default: generated once and kept in the cache dir).
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub tls: NodeTlsArgs,
    #[command(flatten)]
    pub semantic: SemanticArgs,
    #[command(flatten)]
    pub tuning: GatewayTuning,
    #[command(flatten)]
    pub traces: TraceArgs,
}

#[derive(Debug, Args)]
pub struct SemanticArgs {
    /// Directory holding the sentence encoder (`model.safetensors`, `tokenizer.json`,
    /// `config.json`; see scripts/fetch-model) for semantic routing and the semantic prompt
    /// guard. Without it, proxies using them are refused (NACKed) unless they name a
    /// remote semantic_service. `dev` defaults to ./models/all-MiniLM-L6-v2 (or
    /// ./models/static with --encoder static) when it exists.
    #[arg(long, env = "SWITCHYARD_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Which encoder the model directory holds.
    #[arg(long, env = "SWITCHYARD_ENCODER", value_enum, default_value_t = EncoderArg::Minilm)]
    pub encoder: EncoderArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncoderArg {
    /// all-MiniLM-L6-v2: accurate, a few ms per prompt.
    Minilm,
    /// model2vec static embeddings: microseconds per prompt, less accurate.
    Static,
}

impl SemanticArgs {
    fn kind(&self) -> EncoderKind {
        match self.encoder {
            EncoderArg::Minilm => EncoderKind::MiniLm,
            EncoderArg::Static => EncoderKind::Static,
        }
    }

    /// The model directory: the flag, else (dev only) the one scripts/fetch-model fills.
    fn dir(&self, dev_default: bool) -> Option<PathBuf> {
        if let Some(dir) = &self.model_dir {
            return Some(dir.clone());
        }
        if !dev_default {
            return None;
        }
        let default = PathBuf::from(match self.encoder {
            EncoderArg::Minilm => "models/all-MiniLM-L6-v2",
            EncoderArg::Static => "models/static",
        });
        default.is_dir().then_some(default)
    }
}

#[derive(Debug, Args)]
pub struct GatewayTuning {
    /// Upstream connect timeout (e.g. 5s, 500ms).
    #[arg(long, env = "SWITCHYARD_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// Time allowed for an upstream's response headers (e.g. 60s, 2m).
    #[arg(long, env = "SWITCHYARD_UPSTREAM_HEADER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upstream_header_timeout: Duration,
    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Threads serving LLM traffic, each with its own event loop and upstream connection
    /// pool (default: one per core).
    #[arg(long, env = "SWITCHYARD_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub io_threads: Option<u16>,
    #[command(flatten)]
    pub protection: ProtectionArgs,
    #[command(flatten)]
    pub counters: CounterArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub usage: UsageShippingArgs,
}

/// The response cache's bounds on this node (entries are shared through `--redis-url`).
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The most bytes of cached answers (serialized) the node keeps in memory, in front of
    /// Redis (and alone without it); least recently used entries go first.
    #[arg(long, env = "SWITCHYARD_CACHE_MEMORY", default_value = "64MiB", value_parser = parse_size)]
    pub cache_memory: usize,
    /// The largest cached answer (serialized bytes); larger answers are not stored.
    #[arg(long, env = "SWITCHYARD_CACHE_MAX_ENTRY_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub cache_max_entry_bytes: usize,
}

/// Usage records to the control plane.
#[derive(Debug, Args)]
pub struct UsageShippingArgs {
    /// Send every request's usage record to the control plane (`off`: metrics and logs
    /// only).
    #[arg(long, env = "SWITCHYARD_USAGE_SHIPPING", value_enum, default_value_t = Toggle::On)]
    pub usage_shipping: Toggle,
    /// Usage records waiting in memory at most; past it new ones are dropped (counted in
    /// `switchyard_gateway_usage_dropped_total{reason="buffer_full"}`).
    #[arg(long, env = "SWITCHYARD_USAGE_BUFFER", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub usage_buffer: u32,
    /// How often waiting usage records are sent (in batches of up to 1,000).
    #[arg(long, env = "SWITCHYARD_USAGE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub usage_flush_interval: Duration,
    /// The bound of the usage spool (records the control plane has not acknowledged, kept
    /// in --cache-dir/usage-spool); past it the oldest are dropped. About 150 bytes a record:
    /// 256MiB is some 1.7 million records.
    #[arg(long, env = "SWITCHYARD_USAGE_SPOOL_MAX", default_value = "256MiB", value_parser = parse_size)]
    pub usage_spool_max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

impl UsageShippingArgs {
    fn config(&self) -> anyhow::Result<switchyard_gateway::UsageShipping> {
        if self.usage_flush_interval.is_zero() {
            bail!("--usage-flush-interval must be more than 0");
        }
        Ok(switchyard_gateway::UsageShipping {
            enabled: self.usage_shipping == Toggle::On,
            buffer: self.usage_buffer as usize,
            interval: self.usage_flush_interval,
            spool_max_bytes: self.usage_spool_max as u64,
            ..switchyard_gateway::UsageShipping::default()
        })
    }
}

/// How long raw usage rows are kept (`None`: for ever).
#[derive(Debug, Clone, Copy)]
pub struct Retention(pub Option<Duration>);

/// `30d`, `720h`, `90m`…: how long raw usage rows are kept; `0` (or `off`): for ever.
fn parse_retention(s: &str) -> Result<Retention, String> {
    let s = s.trim();
    if s == "0" || s == "off" {
        return Ok(Retention(None));
    }
    let d = match s.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|d| Duration::from_secs(d * 86_400))
            .map_err(|_| format!("'{s}' is not a retention (e.g. 30d, 720h, or 0 for ever)"))?,
        None => parse_duration(s)?,
    };
    if d < Duration::from_secs(3600) {
        return Err(format!(
            "'{s}': keep raw usage rows at least an hour (or 0 for ever)"
        ));
    }
    Ok(Retention(Some(d)))
}

/// Where rate-limit and budget counters live.
#[derive(Debug, Args)]
pub struct CounterArgs {
    /// Redis holding the rate-limit and budget counters shared by every node of a gateway,
    /// e.g. redis://127.0.0.1:6379 (rediss:// for TLS; redis://:password@host/db). Without
    /// it, counters are per node.
    #[arg(long, env = "SWITCHYARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the node's Redis keys (gateways sharing one Redis may keep apart).
    #[arg(
        long,
        env = "SWITCHYARD_REDIS_KEY_PREFIX",
        default_value = "switchyard"
    )]
    pub redis_key_prefix: String,
    /// The longest a request waits for Redis before the failure mode applies.
    #[arg(long, env = "SWITCHYARD_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// While Redis does not answer: `open` counts on the node's own counters, `closed`
    /// refuses limited requests with 503.
    #[arg(long, env = "SWITCHYARD_LIMITS_ON_REDIS_FAILURE", default_value = "open", value_parser = ["open", "closed"])]
    pub limits_on_redis_failure: String,
    /// The part of a shared limit's remaining room the nodes may use between them without
    /// asking Redis for each request (0 to 1): request limits are leased to nodes in shares of
    /// it and never exceeded; token limits and budgets are charged in batches while far from
    /// the limit. 0 sends every admission and charge to Redis.
    #[arg(long, env = "SWITCHYARD_LIMITS_LOCAL_SHARE", default_value_t = 0.5)]
    pub limits_local_share: f64,
    /// How often a node sends the charges it holds to Redis and refreshes its view of the
    /// shared counters.
    #[arg(long, env = "SWITCHYARD_LIMITS_SYNC_INTERVAL", default_value = "10ms", value_parser = parse_duration)]
    pub limits_sync_interval: Duration,
}

impl CounterArgs {
    fn config(&self) -> anyhow::Result<LimitsConfig> {
        Ok(LimitsConfig {
            redis_url: self.redis_url.clone(),
            key_prefix: self.redis_key_prefix.clone(),
            timeout: self.redis_timeout,
            on_failure: self
                .limits_on_redis_failure
                .parse::<FailureMode>()
                .map_err(|e| anyhow::anyhow!("--limits-on-redis-failure {e}"))?,
            local_share: self.limits_local_share,
            sync_interval: self.limits_sync_interval,
        })
    }
}

/// The node's protective limits (see `switchyard_gateway::NodeLimits`).
#[derive(Debug, Args)]
pub struct ProtectionArgs {
    /// Time a client has to send a request's headers, from connect or from the end of the
    /// previous response (so an idle keep-alive connection is closed after it too).
    #[arg(long, env = "SWITCHYARD_CLIENT_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub client_header_timeout: Duration,
    /// Longest pause while a client sends a request body (then 408 and the connection closes).
    #[arg(long, env = "SWITCHYARD_CLIENT_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub client_body_timeout: Duration,
    /// Open client connections at once, over all I/O threads; more are closed on accept.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = NodeLimits::DEFAULT_MAX_CONNECTIONS, value_parser = parse_positive)]
    pub max_connections: usize,
    /// Longest pause in an upstream's answer once its headers arrived (a stream then ends
    /// with an error event).
    #[arg(long, env = "SWITCHYARD_UPSTREAM_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub upstream_idle_timeout: Duration,
    /// Messages per request (`messages`, `input`, `contents`); more is a 400 naming the limit.
    #[arg(long, env = "SWITCHYARD_MAX_MESSAGES", default_value_t = NodeLimits::DEFAULT_MAX_MESSAGES)]
    pub max_messages: usize,
    /// Content parts per message.
    #[arg(long, env = "SWITCHYARD_MAX_PARTS_PER_MESSAGE", default_value_t = NodeLimits::DEFAULT_MAX_PARTS_PER_MESSAGE)]
    pub max_parts_per_message: usize,
    /// Elements of any other JSON array of a request body.
    #[arg(long, env = "SWITCHYARD_MAX_ARRAY_ITEMS", default_value_t = NodeLimits::DEFAULT_MAX_ARRAY_ITEMS)]
    pub max_array_items: usize,
    /// Nesting depth of a request body's JSON (at most 128).
    #[arg(long, env = "SWITCHYARD_MAX_JSON_DEPTH", default_value_t = NodeLimits::DEFAULT_MAX_JSON_DEPTH, value_parser = parse_depth)]
    pub max_json_depth: usize,
    /// Request body bytes held at once over all requests (e.g. 512MiB); past it, 503.
    #[arg(long, env = "SWITCHYARD_MAX_INFLIGHT_REQUEST_BYTES", default_value = "512MiB", value_parser = parse_size)]
    pub max_inflight_request_bytes: usize,
    /// Bodies at least this large are parsed, guarded and translated on the CPU pool.
    #[arg(long, env = "SWITCHYARD_OFFLOAD_THRESHOLD", default_value = "256KiB", value_parser = parse_size)]
    pub offload_threshold: usize,
    /// Threads of the CPU pool for large bodies (default: half the cores, at least one).
    #[arg(long, env = "SWITCHYARD_OFFLOAD_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub offload_threads: Option<u16>,
    /// Text a prompt guard scans per request; a request with more guarded text is a 400.
    #[arg(long, env = "SWITCHYARD_GUARD_MAX_SCAN_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub guard_max_scan_bytes: usize,
    /// Upstream address ranges never connected to (comma-separated CIDRs), e.g.
    /// `169.254.0.0/16,fd00:ec2::/32` for cloud metadata services. Default: none.
    #[arg(long, env = "SWITCHYARD_UPSTREAM_DENY_CIDRS", value_delimiter = ',')]
    pub upstream_deny_cidrs: Vec<IpNet>,
}

impl ProtectionArgs {
    fn limits(&self) -> NodeLimits {
        NodeLimits {
            client_header_timeout: self.client_header_timeout,
            client_body_timeout: self.client_body_timeout,
            max_connections: self.max_connections,
            upstream_idle_timeout: self.upstream_idle_timeout,
            max_messages: self.max_messages,
            max_parts_per_message: self.max_parts_per_message,
            max_array_items: self.max_array_items,
            max_json_depth: self.max_json_depth,
            max_inflight_request_bytes: self.max_inflight_request_bytes,
            offload_threshold: self.offload_threshold,
            offload_threads: self
                .offload_threads
                .map_or_else(NodeLimits::default_offload_threads, usize::from),
            guard_max_scan_bytes: self.guard_max_scan_bytes,
            upstream_deny_cidrs: self.upstream_deny_cidrs.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address of the admin REST API.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Address of the gRPC config distribution service.
    #[arg(
        long,
        env = "SWITCHYARD_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,
    /// Address serving LLM traffic.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Directory for the SQLite store, keys, admin token and the gateway's cache.
    #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address serving the gateway's /metrics; without it the node serves none (the admin
    /// API's /metrics, behind the admin token, shows the same process's metrics).
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub semantic: SemanticArgs,
    #[command(flatten)]
    pub tuning: GatewayTuning,
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// `1048576`, `64KiB`, `512MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4MiB, 262144)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(factor)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// A count of at least 1.
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

/// A JSON nesting depth: 2-128 (the JSON parser's own bound is 128).
fn parse_depth(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (2..=128).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a depth between 2 and 128")),
    }
}

/// Reads a secret from a file: its content without one trailing newline.
fn read_secret_file(path: &Path, flag: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    Ok(text.to_owned())
}

/// A bearer token from its flag or its file, checked: at least 32 bytes, no surrounding
/// whitespace (clients' tokens are compared as sent, so a token with a stray space could
/// never be presented).
fn token(value: Option<&str>, file: Option<&Path>, flag: &str) -> anyhow::Result<Option<String>> {
    let token = match (value, file) {
        (Some(v), _) => v.to_owned(),
        (None, Some(path)) => read_secret_file(path, &format!("{flag}-file"))?,
        (None, None) => return Ok(None),
    };
    if token.trim() != token {
        bail!("{flag} has leading or trailing whitespace; remove it");
    }
    if token.len() < 32 {
        bail!(
            "{flag} must be at least 32 bytes (it has {}); make one with `openssl rand -base64 32`",
            token.len()
        );
    }
    Ok(Some(token))
}

/// `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

/// Colour (ANSI escape codes) only when stderr is a terminal, and never with `NO_COLOR` set:
/// a pod's log (`kubectl logs`), a file or a pipe gets plain text.
pub(crate) fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .context("metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

/// Reads a key file, or creates one with a fresh key (mode 0600) if `create` and missing.
fn key_from_file(path: &Path, create: bool) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = Keyring::generate_key();
            write_private(path, &key)?;
            tracing::info!(path = %path.display(), "created a new encryption key; back it up with the database");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read key file {}", path.display())),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn encryption_key(keys: &KeyArgs, database_url: &str) -> anyhow::Result<String> {
    if let Some(k) = &keys.encryption_key {
        return Ok(k.clone());
    }
    if let Some(path) = &keys.encryption_key_file {
        return key_from_file(path, false);
    }
    let Some(db) = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
    else {
        bail!(
            "--encryption-key or --encryption-key-file is required with a PostgreSQL store (every replica needs the same key)"
        );
    };
    let db = db.split('?').next().unwrap_or_default();
    let dir = Path::new(db).parent().unwrap_or(Path::new("."));
    key_from_file(&dir.join("encryption.key"), true)
}

impl Command {
    /// The command's trace export flags and its default `service.name`.
    pub fn traces(&self) -> (Option<&TraceArgs>, &'static str) {
        match self {
            Command::ControlPlane(args) => (Some(&args.traces), "switchyard-control-plane"),
            Command::Gateway(args) => (Some(&args.traces), "switchyard-gateway"),
            Command::Dev(args) => (Some(&args.traces), "switchyard-dev"),
            Command::Certs(_) | Command::Usage(_) => (None, "switchyard"),
        }
    }
}

/// Runs the command; `traces`: whether the process exports spans (the gateway then makes
/// its request-path spans).
pub async fn run(cli: Cli, traces: bool) -> anyhow::Result<()> {
    match cli.command {
        Command::ControlPlane(args) => run_control_plane(args).await,
        Command::Gateway(args) => run_gateway(args, traces).await,
        Command::Dev(args) => run_dev(args, traces).await,
        Command::Certs(args) => run_certs(&args),
        Command::Usage(args) => crate::usage_cmd::run(args).await,
    }
}

async fn run_control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let admin_token = token(
        args.admin_token.as_deref(),
        args.admin_token_file.as_deref(),
        "--admin-token",
    )?;
    let admin_token = match (admin_token, args.insecure_no_auth) {
        (Some(t), false) => Some(t),
        (None, true) => {
            tracing::warn!("the admin API runs WITHOUT authentication (--insecure-no-auth)");
            None
        }
        (Some(_), true) => bail!("--admin-token and --insecure-no-auth are mutually exclusive"),
        (None, false) => bail!(
            "--admin-token or --admin-token-file (or SWITCHYARD_ADMIN_TOKEN[_FILE]) is required unless --insecure-no-auth"
        ),
    };
    let database_url = match &args.database_url_file {
        Some(path) => read_secret_file(path, "--database-url-file")?,
        None => args.database_url.clone(),
    };
    let key = encryption_key(&args.keys, &database_url)?;
    let config = ControlPlaneConfig {
        admin_listen: args.admin_listen,
        grpc_listen: args.grpc_listen,
        admin_token,
        previous_encryption_keys: args.keys.previous()?,
        limits: args.limits.limits(),
        metrics: Some(install_metrics()?),
        tls: args.tls.config(),
        auth_throttle: switchyard_control_plane::api::ThrottleConfig {
            max_failures: args.admin_auth_max_failures,
            ..Default::default()
        },
        usage_retention: args.usage_retention.0,
        ..ControlPlaneConfig::new(database_url, key)
    };
    let cp = ControlPlane::start(config).await?;
    shutdown_signal().await;
    cp.shutdown().await;
    Ok(())
}

/// A gateway node's configuration: `base` (made with `GatewayConfig::new`) plus the flags
/// shared by `gateway` and `dev`.
fn gateway_config(
    mut base: GatewayConfig,
    listen: SocketAddr,
    tuning: &GatewayTuning,
    metrics: PrometheusHandle,
    semantic: (Option<PathBuf>, EncoderKind),
) -> anyhow::Result<GatewayConfig> {
    base.listen = listen;
    base.counters = tuning.counters.config()?;
    anyhow::ensure!(
        tuning.cache.cache_max_entry_bytes > 0,
        "--cache-max-entry-bytes must be more than 0"
    );
    base.cache = CacheConfig {
        memory_bytes: tuning.cache.cache_memory,
        max_entry_bytes: tuning.cache.cache_max_entry_bytes,
    };
    base.upstream_connect_timeout = tuning.upstream_connect_timeout;
    base.upstream_header_timeout = tuning.upstream_header_timeout;
    base.drain_timeout = tuning.drain_timeout;
    base.io_threads = tuning.io_threads.map(usize::from);
    base.limits = tuning.protection.limits();
    base.usage = tuning.usage.config()?;
    base.metrics = Some(metrics);
    (base.model_dir, base.encoder_kind) = semantic;
    Ok(base)
}

async fn run_gateway(args: GatewayArgs, traces: bool) -> anyhow::Result<()> {
    let registration_token = token(
        args.registration_token.as_deref(),
        args.registration_token_file.as_deref(),
        "--registration-token",
    )?
    .context("--registration-token or --registration-token-file is required")?;
    let mut config = gateway_config(
        GatewayConfig::new(
            args.control_plane,
            args.gateway,
            registration_token,
            args.cache_dir,
        ),
        args.listen,
        &args.tuning,
        install_metrics()?,
        (args.semantic.dir(false), args.semantic.kind()),
    )?;
    config.metrics_listen = args.metrics_listen;
    config.node_id = args.node_id;
    config.control_plane_tls = args.tls.control_plane();
    config.listen_tls = args.tls.listen();
    config.traces = traces;
    let gateway = Gateway::start(config).await?;
    gateway.run_until(shutdown_signal()).await?;
    Ok(())
}

fn run_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let options = switchyard_tls::certs::BundleOptions {
        days: args.days,
        control_plane_names: args.control_plane_names.clone(),
        gateway_names: args.gateway_names.clone(),
    };
    let written = switchyard_tls::certs::write_bundle(&args.out, &options)?;
    println!(
        "wrote a local CA and certificates (valid {} days):",
        args.days
    );
    for path in written {
        println!("  {}", path.display());
    }
    let d = args.out.display();
    println!(
        "\ncontrol plane:  --tls-cert {d}/control-plane.crt --tls-key {d}/control-plane.key --client-ca {d}/ca.crt\n\
         gateway node:   --control-plane https://127.0.0.1:50051 --control-plane-ca {d}/ca.crt --tls-cert {d}/node.crt --tls-key {d}/node.key\n\
         \x20               --listen-tls-cert {d}/gateway.crt --listen-tls-key {d}/gateway.key\n\
         Keep ca.key offline; it signs every certificate of the fleet."
    );
    Ok(())
}

async fn run_dev(args: DevArgs, traces: bool) -> anyhow::Result<()> {
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let key = key_from_file(&data.join("encryption.key"), true)?;
    let token_path = data.join("admin-token");
    let admin_token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            let _ = std::fs::remove_file(&token_path);
            let t = format!(
                "sydev_{}",
                Keyring::generate_key().replace(['+', '/', '='], "")
            );
            write_private(&token_path, &t)?;
            t
        }
    };
    let metrics = install_metrics()?;
    let db = format!("sqlite://{}", data.join("switchyard.db").display());
    let config = ControlPlaneConfig {
        admin_listen: args.admin_listen,
        grpc_listen: args.grpc_listen,
        admin_token: Some(admin_token.clone()),
        metrics: Some(metrics.clone()),
        ..ControlPlaneConfig::new(db, key)
    };
    let cp = ControlPlane::start(config).await?;
    let registration = cp
        .bootstrap_gateway("dev")
        .await
        .context("cannot create the dev gateway")?;
    let mut config = gateway_config(
        GatewayConfig::new(
            format!("http://{}", cp.grpc_addr()),
            "dev",
            registration,
            data.join("gateway-cache"),
        ),
        args.listen,
        &args.tuning,
        metrics,
        (args.semantic.dir(true), args.semantic.kind()),
    )?;
    config.metrics_listen = args.metrics_listen;
    config.traces = traces;
    let gateway = Gateway::start(config).await?;
    let admin = format!("http://{}/api/v1", cp.admin_addr());
    println!(
        "\nSwitchyard dev is running (data in {data}).\n\
         \n  admin API    {admin}\n  admin token  {admin_token}\n  gateway      http://{gw}  (gateway \"dev\")\n  gRPC         http://{grpc}\n\
         \nCreate a proxy on gateway \"dev\", then send requests to http://{gw}/<base_path>/chat/completions.\n\
         For example:\n  curl -s {admin}/gateways -H 'Authorization: Bearer {admin_token}'\n",
        data = data.display(),
        gw = gateway.local_addr(),
        grpc = cp.grpc_addr(),
    );
    let served = gateway.run_until(shutdown_signal()).await;
    cp.shutdown().await;
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144").unwrap(), 262_144);
        assert_eq!(parse_size("256KiB").unwrap(), 262_144);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn tokens_are_checked_from_flags_and_files() {
        let long = "a".repeat(32);
        assert_eq!(token(Some(&long), None, "--t").unwrap(), Some(long.clone()));
        assert_eq!(token(None, None, "--t").unwrap(), None);
        let e = token(Some(" abc "), None, "--admin-token")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--admin-token") && e.contains("whitespace"),
            "{e}"
        );
        let e = token(Some("abc"), None, "--admin-token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 32 bytes"), "{e}");
        let padded = format!(" {long}");
        assert!(token(Some(&padded), None, "--t").is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{long}\n")).unwrap();
        assert_eq!(token(None, Some(&file), "--t").unwrap(), Some(long.clone()));
        std::fs::write(&file, format!("{long}\n\n")).unwrap();
        assert!(
            token(None, Some(&file), "--t").is_err(),
            "only one newline is ignored"
        );
        let e = token(None, Some(&dir.path().join("missing")), "--admin-token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--admin-token-file"), "{e}");
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
