//! The validated domain. These types are what the store keeps (as JSON, leniently: unknown
//! fields are ignored so rolling upgrades can add optional ones) and what snapshots carry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Secret;

/// The semantic threshold used when a proxy does not set one.
pub const DEFAULT_SEMANTIC_THRESHOLD: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Openai,
    Gemini,
    Anthropic,
}

impl Format {
    /// The format id of the contract (`openai`, `gemini`, `anthropic`): also the API surface id of the
    /// inbound formats a proxy of this format serves.
    pub fn id(self) -> &'static str {
        match self {
            Format::Openai => "openai",
            Format::Gemini => "gemini",
            Format::Anthropic => "anthropic",
        }
    }
}

/// A route's provider: the one provider list, owned by the translation library (its ids,
/// what each provider's routes take, and its adapter).
pub use switchyard_llm::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    Model,
    Semantic,
}

/// A proxy as stored: identity, version and the validated spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    pub id: Uuid,
    pub version: u64,
    #[serde(flatten)]
    pub spec: ProxySpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated proxy definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxySpec {
    pub name: String,
    pub gateway: String,
    pub format: Format,
    pub base_path: String,
    pub routing: Routing,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_guard: Option<PromptGuard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_guard: Option<RegexGuard>,
    /// The name of the control plane's [`SemanticService`] this proxy embeds prompts and
    /// utterances with, instead of the node's in-process encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_service: Option<String>,
    /// Whether callers must present a consumer key.
    #[serde(default)]
    pub client_auth: crate::ClientAuth,
    #[serde(default)]
    pub rate_limits: Vec<crate::RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::Budget>,
    /// The response cache (exact and semantic), when the proxy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::ResponseCache>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    pub strategy: RoutingStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<RoutingScoring>,
}

/// How semantic routing scores a route's topics for a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingScoring {
    /// The similarity of the topic's nearest utterance (the rule before the topic library).
    Nearest,
    /// The mean similarity of the topic's 5 nearest utterances, less half the best score of
    /// another route's topics.
    Contrast,
}

impl RoutingScoring {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingScoring::Nearest => "nearest",
            RoutingScoring::Contrast => "contrast",
        }
    }

    pub fn parse(s: &str) -> Option<RoutingScoring> {
        match s {
            "nearest" => Some(RoutingScoring::Nearest),
            "contrast" => Some(RoutingScoring::Contrast),
            _ => None,
        }
    }
}

impl Routing {
    /// The threshold semantic routing compares against, when the proxy sets one (without
    /// one the gateway calibrates it).
    pub fn semantic_threshold(&self) -> f64 {
        self.threshold.unwrap_or(DEFAULT_SEMANTIC_THRESHOLD)
    }

    /// The scoring rule in force: the one set, else `contrast` when the threshold is left to
    /// calibration and `nearest` when a threshold is set (what such thresholds were tuned
    /// for before `contrast` existed).
    pub fn effective_scoring(&self) -> RoutingScoring {
        self.scoring.unwrap_or(if self.threshold.is_some() {
            RoutingScoring::Nearest
        } else {
            RoutingScoring::Contrast
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub route: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub provider: Provider,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub auth: Auth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_model: Option<String>,
    /// Model names served without the route prefix: exact names, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicSource>,
}

/// Upstream credentials.
///
/// The JSON form is the contract's flat one (`{"type": "static", "api_key": …}`), used both
/// by the admin API (with secrets redacted) and by the store (with secrets encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "AuthRecord", try_from = "AuthRecord")]
pub enum Auth {
    /// No credentials (only `openai-compatible` routes).
    None,
    /// A key stored by the control plane.
    Static { api_key: Secret },
    /// A key read from each request by a selector. On a Bedrock route the selected value is
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`.
    Dynamic { expression: String },
    /// Static AWS credentials (Bedrock).
    StaticAws {
        access_key_id: Secret,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
    /// AWS credentials read from each request by separate selectors (Bedrock).
    DynamicAws {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
}

/// The flat, lenient JSON form of [`Auth`] (unknown fields are ignored: stored data may come
/// from a newer version).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AuthRecord {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl From<Auth> for AuthRecord {
    fn from(auth: Auth) -> Self {
        let s = |x: Secret| Some(x.expose().to_owned());
        match auth {
            Auth::None => AuthRecord {
                kind: "none".into(),
                ..Default::default()
            },
            Auth::Static { api_key } => AuthRecord {
                kind: "static".into(),
                api_key: s(api_key),
                ..Default::default()
            },
            Auth::Dynamic { expression } => AuthRecord {
                kind: "dynamic".into(),
                expression: Some(expression),
                ..Default::default()
            },
            Auth::StaticAws {
                access_key_id,
                secret_access_key,
                session_token,
            } => AuthRecord {
                kind: "static".into(),
                access_key_id: s(access_key_id),
                secret_access_key: s(secret_access_key),
                session_token: session_token.and_then(s),
                ..Default::default()
            },
            Auth::DynamicAws {
                access_key_id,
                secret_access_key,
                session_token,
            } => AuthRecord {
                kind: "dynamic".into(),
                access_key_id: Some(access_key_id),
                secret_access_key: Some(secret_access_key),
                session_token,
                ..Default::default()
            },
        }
    }
}

impl TryFrom<AuthRecord> for Auth {
    type Error = String;

    fn try_from(r: AuthRecord) -> Result<Self, Self::Error> {
        match (
            r.kind.as_str(),
            r.api_key,
            r.expression,
            r.access_key_id,
            r.secret_access_key,
        ) {
            ("none", ..) => Ok(Auth::None),
            ("static", Some(api_key), _, None, None) => Ok(Auth::Static {
                api_key: Secret::new(api_key),
            }),
            ("static", None, _, Some(id), Some(secret)) => Ok(Auth::StaticAws {
                access_key_id: Secret::new(id),
                secret_access_key: Secret::new(secret),
                session_token: r.session_token.map(Secret::new),
            }),
            ("dynamic", _, Some(expression), None, None) => Ok(Auth::Dynamic { expression }),
            ("dynamic", _, None, Some(id), Some(secret)) => Ok(Auth::DynamicAws {
                access_key_id: id,
                secret_access_key: secret,
                session_token: r.session_token,
            }),
            (kind, ..) => Err(format!(
                "auth of type '{kind}' has an unexpected set of fields"
            )),
        }
    }
}

/// An inline prompt topic: a name and its example utterances, written into the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub utterances: Vec<String>,
}

/// A topic of a route or of a deny list: inline, or a reference to a topic of the control
/// plane's prompt topic library (`{"ref": "billing"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TopicSource {
    Library {
        #[serde(rename = "ref")]
        name: String,
    },
    Inline(Topic),
}

impl TopicSource {
    /// The topic's name: the inline topic's, or the library topic's.
    pub fn name(&self) -> &str {
        match self {
            TopicSource::Library { name } | TopicSource::Inline(Topic { name, .. }) => name,
        }
    }

    /// The library topic this refers to, if it is a reference.
    pub fn library_name(&self) -> Option<&str> {
        match self {
            TopicSource::Library { name } => Some(name),
            TopicSource::Inline(_) => None,
        }
    }
}

impl From<Topic> for TopicSource {
    fn from(topic: Topic) -> Self {
        TopicSource::Inline(topic)
    }
}

/// A named topic of the prompt topic library (`/api/v1/topics`): created once, with up to
/// thousands of utterances, and referenced by name from any proxy's routes and deny lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryTopic {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub utterances: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptGuard {
    pub threshold: f64,
    pub deny_topics: Vec<TopicSource>,
    /// Which text the guard reads; stored guards written before scopes existed read the
    /// last user message, as they did.
    #[serde(default = "GuardScope::last_user")]
    pub scope: GuardScope,
}

/// Named regular expressions refused in prompts (`regex` crate syntax, validated on write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegexGuard {
    pub patterns: Vec<RegexPattern>,
    /// Which text the guard reads (default: all of it).
    #[serde(default = "GuardScope::all")]
    pub scope: GuardScope,
}

/// Which text of a request a prompt guard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardScope {
    /// The last user message only.
    LastUser,
    /// Every text of the request: system and developer messages, earlier turns, tool calls
    /// and results, Responses `instructions`, Gemini `systemInstruction`.
    All,
}

impl GuardScope {
    pub fn last_user() -> Self {
        GuardScope::LastUser
    }

    pub fn all() -> Self {
        GuardScope::All
    }

    pub fn id(self) -> &'static str {
        match self {
            GuardScope::LastUser => "last_user",
            GuardScope::All => "all",
        }
    }

    /// Parses a scope as written in admin input (`field` names it in the error).
    pub fn parse(field: &str, value: &str) -> Result<Self, crate::ValidationError> {
        match value {
            "last_user" => Ok(GuardScope::LastUser),
            "all" => Ok(GuardScope::All),
            other => Err(crate::ValidationError::invalid(
                field,
                format!("unknown scope '{other}'; expected 'last_user' or 'all'"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegexPattern {
    pub name: String,
    pub pattern: String,
}

/// A named remote OpenAI-compatible embeddings service (`POST {url}/embeddings`), kept by
/// the control plane and used, instead of the node's in-process encoder, by the proxies that
/// name it in `semantic_service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemanticService {
    pub name: String,
    pub url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set (a local embeddings server may need none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
}

impl SemanticService {
    /// Applies `f` to the key, e.g. to encrypt before storing or decrypt after loading.
    pub fn try_map_secrets<E>(
        self,
        f: impl FnOnce(Secret) -> Result<Secret, E>,
    ) -> Result<Self, E> {
        self.try_map_secrets_at(|_, s| f(s))
    }

    /// [`SemanticService::try_map_secrets`], telling `f` each secret's field (`api_key`).
    pub fn try_map_secrets_at<E>(
        mut self,
        f: impl FnOnce(&str, Secret) -> Result<Secret, E>,
    ) -> Result<Self, E> {
        if let Some(key) = self.api_key.take() {
            self.api_key = Some(f("api_key", key)?);
        }
        Ok(self)
    }

    /// Who owns this service's secrets (what an encrypted secret is bound to).
    pub fn secret_owner(&self) -> String {
        format!("semantic_service:{}", self.name)
    }

    /// The same service with its key (if any) replaced by [`crate::REDACTED`].
    pub fn redacted(self) -> Self {
        Self {
            api_key: self.api_key.map(|_| Secret::new(crate::REDACTED)),
            ..self
        }
    }
}

impl ProxySpec {
    /// Whether serving this proxy needs sentence embeddings (semantic routing or a semantic
    /// prompt guard).
    pub fn needs_embeddings(&self) -> bool {
        self.routing.strategy == RoutingStrategy::Semantic
            || self.prompt_guard.is_some()
            || self.cache.as_ref().is_some_and(|c| c.semantic.is_some())
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// Every library topic this proxy refers to, with the path of the reference
    /// (`routes[0].topics[1].ref`), in order (a name may appear more than once).
    pub fn library_refs(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            for (t, topic) in route.topics.iter().enumerate() {
                if let Some(name) = topic.library_name() {
                    refs.push((format!("routes[{i}].topics[{t}].ref"), name));
                }
            }
        }
        for (t, topic) in self
            .prompt_guard
            .iter()
            .flat_map(|g| g.deny_topics.iter().enumerate())
        {
            if let Some(name) = topic.library_name() {
                refs.push((format!("prompt_guard.deny_topics[{t}].ref"), name));
            }
        }
        refs
    }

    /// Applies `f` to every secret, e.g. to encrypt before storing or decrypt after loading.
    pub fn try_map_secrets<E>(
        self,
        mut f: impl FnMut(Secret) -> Result<Secret, E>,
    ) -> Result<Self, E> {
        self.try_map_secrets_at(|_, s| f(s))
    }

    /// [`ProxySpec::try_map_secrets`], telling `f` each secret's field, e.g.
    /// `routes[openai].auth.api_key` (routes by name: a secret stays bound to its route when
    /// routes are reordered).
    pub fn try_map_secrets_at<E>(
        mut self,
        mut f: impl FnMut(&str, Secret) -> Result<Secret, E>,
    ) -> Result<Self, E> {
        for route in &mut self.routes {
            let at = |field: &str| format!("routes[{}].auth.{field}", route.name);
            match &mut route.auth {
                Auth::Static { api_key } => *api_key = f(&at("api_key"), api_key.clone())?,
                Auth::StaticAws {
                    access_key_id,
                    secret_access_key,
                    session_token,
                } => {
                    *access_key_id = f(&at("access_key_id"), access_key_id.clone())?;
                    *secret_access_key = f(&at("secret_access_key"), secret_access_key.clone())?;
                    if let Some(token) = session_token {
                        *token = f(&at("session_token"), token.clone())?;
                    }
                }
                Auth::None | Auth::Dynamic { .. } | Auth::DynamicAws { .. } => {}
            }
        }
        Ok(self)
    }

    /// Who owns this proxy's secrets (what an encrypted secret is bound to).
    pub fn secret_owner(&self) -> String {
        format!("proxy:{}/{}", self.gateway, self.name)
    }

    /// The same spec with every secret replaced by [`crate::REDACTED`].
    pub fn redacted(self) -> Self {
        match self
            .try_map_secrets(|_| Ok::<_, std::convert::Infallible>(Secret::new(crate::REDACTED)))
        {
            Ok(spec) => spec,
            Err(never) => match never {},
        }
    }
}
