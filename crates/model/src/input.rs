//! Strict admin input and its validation into a [`ProxySpec`].
//!
//! Input types refuse unknown fields (the error names the field's path). Enumerations are
//! read as strings and checked here, so a wrong value is a 422 naming the field rather than
//! a parse error.

use serde::Deserialize;
use serde::de::IgnoredAny;
use uuid::Uuid;

use crate::names::{validate_base_path, validate_name};
use crate::{
    Auth, ErrorCode, Fallback, Format, GuardScope, Limits, PromptGuard, Provider, ProxySpec,
    RegexGuard, RegexPattern, Route, Routing, RoutingScoring, RoutingStrategy, Secret, Selector,
    Topic, TopicSource, ValidationError, validate_gateway_name,
};

/// The body of `POST /proxies` and `PUT /proxies/{id}`.
///
/// `id`, `version`, `created_at` and `updated_at` are accepted so that a proxy read with
/// `GET` can be edited and sent back: `version`, when present, is the version the write
/// replaces (optimistic concurrency), `id` must match the path, the timestamps are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyInput {
    pub name: String,
    pub gateway: String,
    #[serde(default)]
    pub format: Option<String>,
    pub base_path: String,
    #[serde(default)]
    pub routing: Option<RoutingInput>,
    pub routes: Vec<RouteInput>,
    #[serde(default)]
    pub prompt_guard: Option<PromptGuardInput>,
    #[serde(default)]
    pub regex_guard: Option<RegexGuardInput>,
    /// The name of a semantic service of the control plane.
    #[serde(default)]
    pub semantic_service: Option<String>,
    /// `{"required": true}`: only requests with a live consumer key are served.
    #[serde(default)]
    pub client_auth: Option<crate::ClientAuth>,
    #[serde(default)]
    pub rate_limits: Vec<crate::governance::RateLimitInput>,
    #[serde(default)]
    pub budget: Option<crate::governance::BudgetInput>,
    /// The response cache.
    #[serde(default)]
    pub cache: Option<crate::ResponseCacheInput>,
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default, deserialize_with = "version")]
    pub version: Option<u64>,
    #[serde(default)]
    pub created_at: Option<IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<IgnoredAny>,
    /// What `GET` shows about nodes' failures; ignored on input.
    #[serde(default)]
    pub status: Option<IgnoredAny>,
    /// A write's warnings; ignored on input.
    #[serde(default)]
    pub warnings: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingInput {
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub fallback: Option<FallbackInput>,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// `nearest` or `contrast`.
    #[serde(default)]
    pub scoring: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackInput {
    pub route: String,
    #[serde(default)]
    pub target_model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    #[serde(default)]
    pub name: Option<String>,
    pub provider: String,
    pub url: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub auth: Option<AuthInput>,
    #[serde(default)]
    pub target_model: Option<String>,
    /// Model names this route serves without its route prefix (exact, or `prefix*`).
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub topics: Vec<TopicInput>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthInput {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub expression: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
}

/// An inline topic (`name`, `utterances`) or a reference to a library topic (`ref`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicInput {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub utterances: Option<Vec<String>>,
    #[serde(default, rename = "ref")]
    pub library: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptGuardInput {
    pub threshold: f64,
    pub deny_topics: Vec<TopicInput>,
    /// `last_user` (default) or `all`.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexGuardInput {
    pub patterns: Vec<RegexPatternInput>,
    /// `all` (default) or `last_user`.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexPatternInput {
    pub name: String,
    pub pattern: String,
}

/// The compiled size bound of one regex guard pattern (the `regex` crate's `size_limit`):
/// patterns whose automaton would be larger are refused on write.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a regex guard pattern the way the gateway does (bounded program size).
pub fn compile_guard_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Parses an admin body strictly. A syntax error, a wrong type, a missing or an unknown field
/// is a [`ErrorCode::Malformed`] error whose `field` is the path where it happened.
pub fn parse_proxy_input(body: &[u8]) -> Result<ProxyInput, ValidationError> {
    parse_strict(body)
}

/// Strict parsing of any admin body (see [`parse_proxy_input`]).
pub(crate) fn parse_strict<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, ValidationError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let input: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ValidationError::new(ErrorCode::Malformed, field, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| ValidationError::new(ErrorCode::Malformed, "", e.to_string()))?;
    Ok(input)
}

impl ProxyInput {
    /// Validates every rule and limit, producing the spec to store.
    ///
    /// `previous` is the stored spec a `PUT` replaces: a static secret sent back as `***`
    /// keeps that route's stored secret.
    pub fn validate(
        self,
        limits: &Limits,
        previous: Option<&ProxySpec>,
    ) -> Result<ProxySpec, ValidationError> {
        validate_name("name", &self.name)?;
        validate_gateway_name("gateway", &self.gateway)?;
        let format = match self.format.as_deref() {
            None | Some("openai") => Format::Openai,
            Some("gemini") => Format::Gemini,
            Some("anthropic") => Format::Anthropic,
            Some(other) => {
                return Err(ValidationError::invalid(
                    "format",
                    format!("unknown format '{other}'; expected 'openai', 'gemini' or 'anthropic'"),
                ));
            }
        };
        validate_base_path("base_path", &self.base_path)?;

        if self.routes.is_empty() {
            return Err(ValidationError::rule(
                "routes",
                "a proxy needs at least one route",
            ));
        }
        if self.routes.len() > limits.routes_per_proxy {
            return Err(ValidationError::limit(
                "routes",
                format!("at most {} routes per proxy", limits.routes_per_proxy),
            ));
        }

        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        let mut topic_count = 0usize;
        let mut library_count = 0usize;
        for (i, input) in self.routes.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let prev = |name: &str| previous.and_then(|p| p.route(name));
            let route = input.validate(&field, limits, prev)?;
            if routes.iter().any(|r| r.name == route.name) {
                return Err(ValidationError::rule(
                    format!("{field}.name"),
                    format!("route name '{}' is used twice", route.name),
                ));
            }
            for (m, model) in route.models.iter().enumerate() {
                if let Some(other) = routes.iter().find(|r| r.models.contains(model)) {
                    return Err(ValidationError::rule(
                        format!("{field}.models[{m}]"),
                        format!(
                            "'{model}' is listed by route '{}' too: a bare model name must \
                             lead to one route",
                            other.name
                        ),
                    ));
                }
            }
            if format == Format::Gemini && route.provider != Provider::Gemini {
                return Err(ValidationError::rule(
                    format!("{field}.provider"),
                    "a proxy of format 'gemini' routes to 'gemini' routes only",
                ));
            }
            for (t, topic) in route.topics.iter().enumerate() {
                if topic.library_name().is_some() {
                    library_count += 1;
                    if library_count > limits.library_topics_per_proxy {
                        return Err(ValidationError::limit(
                            format!("{field}.topics[{t}]"),
                            format!(
                                "at most {} library topics across all routes of a proxy",
                                limits.library_topics_per_proxy
                            ),
                        ));
                    }
                    continue;
                }
                topic_count += 1;
                if topic_count > limits.topics_per_proxy {
                    return Err(ValidationError::limit(
                        format!("{field}.topics[{t}]"),
                        format!(
                            "at most {} inline prompt topics across all routes of a proxy (refer to library topics for more)",
                            limits.topics_per_proxy
                        ),
                    ));
                }
            }
            routes.push(route);
        }
        check_unique_topic_names(&routes)?;

        let routing = validate_routing(self.routing, &routes, topic_count + library_count)?;

        let prompt_guard = match self.prompt_guard {
            None => None,
            Some(guard) => Some(guard.validate(limits)?),
        };

        let regex_guard = match self.regex_guard {
            None => None,
            Some(guard) => Some(guard.validate(limits)?),
        };
        // Whether the service exists is the store's to check, in the write's transaction.
        if let Some(service) = &self.semantic_service {
            validate_gateway_name("semantic_service", service)?;
        }

        let client_auth = self.client_auth.unwrap_or_default();
        if client_auth.required {
            check_consumer_key_not_forwarded(&routes)?;
        }
        let rate_limits = crate::governance::validate_rate_limits(
            "rate_limits",
            self.rate_limits,
            crate::LimitKey::Proxy,
            limits,
        )?;
        let budget = self.budget.map(|b| b.validate("budget")).transpose()?;
        let cache = self
            .cache
            .map(|c| c.validate("cache", client_auth.required))
            .transpose()?;

        Ok(ProxySpec {
            name: self.name,
            gateway: self.gateway,
            format,
            base_path: self.base_path,
            routing,
            routes,
            prompt_guard,
            regex_guard,
            semantic_service: self.semantic_service,
            client_auth,
            rate_limits,
            budget,
            cache,
        })
    }
}

/// Where a consumer key may be found on a request; with client authentication on, a route
/// must not take its provider credential from one of them (the consumer key would be sent
/// upstream as the provider key).
const CONSUMER_KEY_HEADERS: &[&str] = &["authorization", "x-api-key", "x-goog-api-key"];
const CONSUMER_KEY_QUERY: &str = "key";

fn check_consumer_key_not_forwarded(routes: &[Route]) -> Result<(), ValidationError> {
    for (i, route) in routes.iter().enumerate() {
        let expressions: Vec<(&str, &str)> = match &route.auth {
            Auth::Dynamic { expression } => vec![("expression", expression)],
            Auth::DynamicAws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let mut v = vec![
                    ("access_key_id", access_key_id.as_str()),
                    ("secret_access_key", secret_access_key.as_str()),
                ];
                if let Some(t) = session_token {
                    v.push(("session_token", t));
                }
                v
            }
            _ => continue,
        };
        for (leaf, expression) in expressions {
            let Ok(selector) = Selector::parse("", expression) else {
                continue;
            };
            let clash = match &selector.source {
                crate::SelectorSource::Header(h) => CONSUMER_KEY_HEADERS.contains(&h.as_str()),
                crate::SelectorSource::Query(q) => q == CONSUMER_KEY_QUERY,
            };
            if clash {
                return Err(ValidationError::rule(
                    format!("routes[{i}].auth.{leaf}"),
                    format!(
                        "with client_auth.required the consumer key is read from {} and ?{CONSUMER_KEY_QUERY}: take the provider key from another header",
                        CONSUMER_KEY_HEADERS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_unique_topic_names(routes: &[Route]) -> Result<(), ValidationError> {
    let mut seen = std::collections::HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        for (t, topic) in route.topics.iter().enumerate() {
            if !seen.insert(topic.name()) {
                let leaf = if topic.library_name().is_some() {
                    "ref"
                } else {
                    "name"
                };
                return Err(ValidationError::rule(
                    format!("routes[{i}].topics[{t}].{leaf}"),
                    format!("topic name '{}' is used twice in this proxy", topic.name()),
                ));
            }
        }
    }
    Ok(())
}

fn validate_routing(
    input: Option<RoutingInput>,
    routes: &[Route],
    topic_count: usize,
) -> Result<Routing, ValidationError> {
    let input = input.unwrap_or(RoutingInput {
        strategy: None,
        fallback: None,
        threshold: None,
        scoring: None,
    });
    let strategy = match input.strategy.as_deref() {
        None | Some("model") => RoutingStrategy::Model,
        Some("semantic") => RoutingStrategy::Semantic,
        Some(other) => {
            return Err(ValidationError::invalid(
                "routing.strategy",
                format!("unknown strategy '{other}'; expected 'model' or 'semantic'"),
            ));
        }
    };
    if let Some(t) = input.threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ValidationError::invalid(
            "routing.threshold",
            "must be between 0 and 1",
        ));
    }
    let fallback = match input.fallback {
        None => None,
        Some(f) => {
            if !routes.iter().any(|r| r.name == f.route) {
                return Err(ValidationError::rule(
                    "routing.fallback.route",
                    format!("no route named '{}' in this proxy", f.route),
                ));
            }
            if let Some(m) = &f.target_model {
                validate_model("routing.fallback.target_model", m)?;
            }
            Some(Fallback {
                route: f.route,
                target_model: f.target_model,
            })
        }
    };
    if strategy == RoutingStrategy::Semantic {
        for (i, route) in routes.iter().enumerate() {
            if route.target_model.is_none() {
                return Err(ValidationError::rule(
                    format!("routes[{i}].target_model"),
                    "every route needs a target_model when the strategy is 'semantic'",
                ));
            }
        }
        if topic_count == 0 {
            return Err(ValidationError::rule(
                "routes",
                "semantic routing needs at least one prompt topic on some route",
            ));
        }
    }
    let scoring = match input.scoring.as_deref() {
        None => None,
        Some(s) => Some(RoutingScoring::parse(s).ok_or_else(|| {
            ValidationError::invalid(
                "routing.scoring",
                format!("unknown scoring '{s}'; expected 'nearest' or 'contrast'"),
            )
        })?),
    };
    Ok(Routing {
        strategy,
        fallback,
        threshold: input.threshold,
        scoring,
    })
}

impl RouteInput {
    fn validate<'p>(
        self,
        field: &str,
        limits: &Limits,
        previous: impl Fn(&str) -> Option<&'p Route>,
    ) -> Result<Route, ValidationError> {
        let provider = Provider::try_from(self.provider.as_str())
            .map_err(|message| ValidationError::invalid(format!("{field}.provider"), message))?;
        let name = self.name.unwrap_or_else(|| provider.as_str().to_owned());
        validate_name(&format!("{field}.name"), &name)?;
        let url = validate_url(&format!("{field}.url"), &self.url)?;

        if provider.takes_region() {
            // The contract asks for the region itself; its form is the one Bedrock region
            // rule's (`switchyard_llm::provider::bedrock_region`).
            match self.region.as_deref() {
                None => {
                    return Err(ValidationError::rule(
                        format!("{field}.region"),
                        format!("{provider} routes need a region"),
                    ));
                }
                Some("") => {
                    return Err(ValidationError::invalid(
                        format!("{field}.region"),
                        "'' is not a valid value",
                    ));
                }
                Some(r) => {
                    switchyard_llm::provider::bedrock_region(Some(r), &url).map_err(|message| {
                        ValidationError::invalid(format!("{field}.region"), message)
                    })?;
                }
            }
        } else if self.region.is_some() {
            return Err(ValidationError::rule(
                format!("{field}.region"),
                format!(
                    "only {} routes take a region, not {provider}",
                    providers_where(Provider::takes_region)
                ),
            ));
        }
        if let Some(v) = &self.api_version {
            if !provider.takes_api_version() {
                return Err(ValidationError::rule(
                    format!("{field}.api_version"),
                    format!(
                        "only {} routes take an api_version, not {provider}",
                        providers_where(Provider::takes_api_version)
                    ),
                ));
            }
            validate_token(&format!("{field}.api_version"), v, 64, |b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
            })?;
        }
        if let Some(m) = &self.target_model {
            validate_model(&format!("{field}.target_model"), m)?;
        }
        if self.models.len() > MODELS_PER_ROUTE {
            return Err(ValidationError::limit(
                format!("{field}.models"),
                format!("at most {MODELS_PER_ROUTE} model names per route"),
            ));
        }
        for (m, model) in self.models.iter().enumerate() {
            validate_bare_model(&format!("{field}.models[{m}]"), model)?;
            if self.models[..m].contains(model) {
                return Err(ValidationError::rule(
                    format!("{field}.models[{m}]"),
                    format!("'{model}' is listed twice"),
                ));
            }
        }

        let auth_field = format!("{field}.auth");
        let auth = match self.auth {
            None if provider.auth_optional() => Auth::None,
            None => {
                return Err(ValidationError::rule(
                    auth_field,
                    format!("{provider} routes need auth (static or dynamic)"),
                ));
            }
            Some(a) => {
                // A stored secret may only be kept (`***`) for the destination it was given
                // for: a changed URL, provider or region would send it somewhere new.
                let kept = previous(&name).map(|r| {
                    let same = r.provider == provider && r.url == url && r.region == self.region;
                    (
                        &r.auth,
                        (!same).then(|| format!("{field}.url, provider or region")),
                    )
                });
                a.validate(&auth_field, provider, kept)?
            }
        };

        let mut topics = Vec::with_capacity(self.topics.len());
        for (t, topic) in self.topics.into_iter().enumerate() {
            topics.push(topic.validate(
                &format!("{field}.topics[{t}]"),
                limits.utterances_per_topic,
                limits.chars_per_utterance,
            )?);
        }

        Ok(Route {
            name,
            provider,
            url,
            region: self.region,
            api_version: self.api_version,
            auth,
            target_model: self.target_model,
            models: self.models,
            topics,
        })
    }
}

impl AuthInput {
    /// `previous` is the stored auth of the route this one replaces, with what changed in
    /// the route's destination if anything did (then `***` cannot keep its secrets).
    fn validate(
        self,
        field: &str,
        provider: Provider,
        previous: Option<(&Auth, Option<String>)>,
    ) -> Result<Auth, ValidationError> {
        let (previous, moved) = match previous {
            Some((auth, moved)) => (Some(auth), moved),
            None => (None, None),
        };
        let keep = |name: &str, value: String, stored: &dyn Fn() -> Option<Secret>| {
            let field = format!("{field}.{name}");
            if value == crate::REDACTED
                && let Some(what) = &moved
            {
                return Err(ValidationError::rule(
                    field,
                    format!(
                        "'***' cannot keep the stored secret because the route's destination changed ({what}); send the secret again"
                    ),
                ));
            }
            keep_or_check_secret(&field, value, stored)
        };
        let reject = |name: &str, v: &Option<String>| match v {
            Some(_) => Err(ValidationError::rule(
                format!("{field}.{name}"),
                format!(
                    "not used by auth of type '{}' on a {provider} route",
                    self.kind
                ),
            )),
            None => Ok(()),
        };
        let required = |name: &str, v: Option<String>| {
            v.ok_or_else(|| {
                ValidationError::rule(
                    format!("{field}.{name}"),
                    format!(
                        "required by auth of type '{}' on a {provider} route",
                        self.kind
                    ),
                )
            })
        };
        let aws = provider.takes_aws_credentials();
        match (self.kind.as_str(), aws) {
            ("none", _) => {
                if !provider.auth_optional() {
                    return Err(ValidationError::rule(
                        format!("{field}.type"),
                        format!("{provider} routes need credentials"),
                    ));
                }
                for (n, v) in [
                    ("api_key", &self.api_key),
                    ("expression", &self.expression),
                    ("access_key_id", &self.access_key_id),
                    ("secret_access_key", &self.secret_access_key),
                    ("session_token", &self.session_token),
                ] {
                    reject(n, v)?;
                }
                Ok(Auth::None)
            }
            ("static", false) => {
                reject("expression", &self.expression)?;
                reject("access_key_id", &self.access_key_id)?;
                reject("secret_access_key", &self.secret_access_key)?;
                reject("session_token", &self.session_token)?;
                let key = required("api_key", self.api_key.clone())?;
                let key = keep("api_key", key, &|| match previous {
                    Some(Auth::Static { api_key }) => Some(api_key.clone()),
                    _ => None,
                })?;
                Ok(Auth::Static { api_key: key })
            }
            ("static", true) => {
                reject("api_key", &self.api_key)?;
                reject("expression", &self.expression)?;
                let prev = match previous {
                    Some(Auth::StaticAws {
                        access_key_id,
                        secret_access_key,
                        session_token,
                    }) => Some((access_key_id, secret_access_key, session_token)),
                    _ => None,
                };
                let id = keep(
                    "access_key_id",
                    required("access_key_id", self.access_key_id.clone())?,
                    &|| prev.map(|p| p.0.clone()),
                )?;
                let secret = keep(
                    "secret_access_key",
                    required("secret_access_key", self.secret_access_key.clone())?,
                    &|| prev.map(|p| p.1.clone()),
                )?;
                let token = match self.session_token.clone() {
                    None => None,
                    Some(t) => Some(keep("session_token", t, &|| {
                        prev.and_then(|p| p.2.clone())
                    })?),
                };
                Ok(Auth::StaticAws {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: token,
                })
            }
            ("dynamic", false) => {
                reject("api_key", &self.api_key)?;
                reject("access_key_id", &self.access_key_id)?;
                reject("secret_access_key", &self.secret_access_key)?;
                reject("session_token", &self.session_token)?;
                let expression = required("expression", self.expression.clone())?;
                Selector::parse(&format!("{field}.expression"), &expression)?;
                Ok(Auth::Dynamic { expression })
            }
            ("dynamic", true) => {
                reject("api_key", &self.api_key)?;
                match (
                    self.expression.clone(),
                    self.access_key_id.clone(),
                    self.secret_access_key.clone(),
                ) {
                    (Some(expression), None, None) => {
                        reject("session_token", &self.session_token)?;
                        Selector::parse(&format!("{field}.expression"), &expression)?;
                        Ok(Auth::Dynamic { expression })
                    }
                    (None, Some(id), Some(secret)) => {
                        Selector::parse(&format!("{field}.access_key_id"), &id)?;
                        Selector::parse(&format!("{field}.secret_access_key"), &secret)?;
                        if let Some(t) = &self.session_token {
                            Selector::parse(&format!("{field}.session_token"), t)?;
                        }
                        Ok(Auth::DynamicAws {
                            access_key_id: id,
                            secret_access_key: secret,
                            session_token: self.session_token.clone(),
                        })
                    }
                    _ => Err(ValidationError::rule(
                        field,
                        "dynamic bedrock auth takes either 'expression' (selecting ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]) or both 'access_key_id' and 'secret_access_key' selectors",
                    )),
                }
            }
            (other, _) => Err(ValidationError::invalid(
                format!("{field}.type"),
                format!("unknown auth type '{other}'; expected 'static' or 'dynamic'"),
            )),
        }
    }
}

/// A secret as sent: `***` keeps the stored one (on a `PUT`); anything else must be a usable
/// header value of at most 4096 bytes.
pub(crate) fn keep_or_check_secret(
    field: &str,
    value: String,
    stored: impl FnOnce() -> Option<Secret>,
) -> Result<Secret, ValidationError> {
    if value == crate::REDACTED {
        return stored().ok_or_else(|| {
            ValidationError::rule(
                field,
                "'***' keeps the stored secret, but there is no stored secret of that kind to keep",
            )
        });
    }
    if value.is_empty() || value.len() > 4096 {
        return Err(ValidationError::invalid(field, "must be 1-4096 characters"));
    }
    if value.bytes().any(|b| b.is_ascii_control() || b == b' ') || !value.is_ascii() {
        return Err(ValidationError::invalid(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(Secret::new(value))
}

impl TopicInput {
    fn validate(
        self,
        field: &str,
        max_utterances: usize,
        max_chars: usize,
    ) -> Result<TopicSource, ValidationError> {
        if let Some(library) = self.library {
            for (present, name) in [
                (self.name.is_some(), "name"),
                (self.utterances.is_some(), "utterances"),
            ] {
                if present {
                    return Err(ValidationError::rule(
                        format!("{field}.{name}"),
                        "a reference to a library topic takes only 'ref' (its utterances live in the library)",
                    ));
                }
            }
            crate::topic::validate_topic_name(&format!("{field}.ref"), &library)?;
            return Ok(TopicSource::Library { name: library });
        }
        let missing = |name: &str| {
            ValidationError::new(
                ErrorCode::Malformed,
                field,
                format!("missing field `{name}` (or `ref` to a library topic)"),
            )
        };
        let name = self.name.ok_or_else(|| missing("name"))?;
        let utterances = self.utterances.ok_or_else(|| missing("utterances"))?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(ValidationError::invalid(
                format!("{field}.name"),
                "must be 1-64 characters",
            ));
        }
        if utterances.is_empty() {
            return Err(ValidationError::rule(
                format!("{field}.utterances"),
                "a topic needs at least one utterance",
            ));
        }
        if utterances.len() > max_utterances {
            return Err(ValidationError::limit(
                format!("{field}.utterances"),
                format!(
                    "at most {max_utterances} utterances per inline topic (a library topic holds more)"
                ),
            ));
        }
        for (u, utterance) in utterances.iter().enumerate() {
            let chars = utterance.chars().count();
            if utterance.trim().is_empty() {
                return Err(ValidationError::invalid(
                    format!("{field}.utterances[{u}]"),
                    "must not be empty",
                ));
            }
            if chars > max_chars {
                return Err(ValidationError::limit(
                    format!("{field}.utterances[{u}]"),
                    format!("at most {max_chars} characters per utterance (got {chars})"),
                ));
            }
        }
        Ok(TopicSource::Inline(Topic {
            name: name.to_owned(),
            utterances,
        }))
    }
}

impl PromptGuardInput {
    fn validate(self, limits: &Limits) -> Result<PromptGuard, ValidationError> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(ValidationError::invalid(
                "prompt_guard.threshold",
                "must be between 0 and 1",
            ));
        }
        if self.deny_topics.is_empty() {
            return Err(ValidationError::rule(
                "prompt_guard.deny_topics",
                "a prompt guard needs at least one deny topic",
            ));
        }
        let (mut inline, mut library) = (0usize, 0usize);
        for (t, topic) in self.deny_topics.iter().enumerate() {
            let (count, max, what) = if topic.library.is_some() {
                library += 1;
                (library, limits.library_topics_per_proxy, "library")
            } else {
                inline += 1;
                (inline, limits.deny_topics_per_proxy, "inline")
            };
            if count > max {
                return Err(ValidationError::limit(
                    format!("prompt_guard.deny_topics[{t}]"),
                    format!("at most {max} {what} deny-list topics per proxy"),
                ));
            }
        }
        let mut topics: Vec<TopicSource> = Vec::with_capacity(self.deny_topics.len());
        for (t, topic) in self.deny_topics.into_iter().enumerate() {
            let field = format!("prompt_guard.deny_topics[{t}]");
            let topic = topic.validate(
                &field,
                limits.utterances_per_deny_topic,
                limits.chars_per_utterance,
            )?;
            if topics.iter().any(|x| x.name() == topic.name()) {
                let leaf = if topic.library_name().is_some() {
                    "ref"
                } else {
                    "name"
                };
                return Err(ValidationError::rule(
                    format!("{field}.{leaf}"),
                    format!("deny topic name '{}' is used twice", topic.name()),
                ));
            }
            topics.push(topic);
        }
        let scope = match &self.scope {
            None => GuardScope::LastUser,
            Some(s) => GuardScope::parse("prompt_guard.scope", s)?,
        };
        Ok(PromptGuard {
            threshold: self.threshold,
            deny_topics: topics,
            scope,
        })
    }
}

impl RegexGuardInput {
    fn validate(self, limits: &Limits) -> Result<RegexGuard, ValidationError> {
        let scope = match &self.scope {
            None => GuardScope::All,
            Some(s) => GuardScope::parse("regex_guard.scope", s)?,
        };
        if self.patterns.is_empty() {
            return Err(ValidationError::rule(
                "regex_guard.patterns",
                "a regex guard needs at least one pattern",
            ));
        }
        if self.patterns.len() > limits.regex_patterns_per_proxy {
            return Err(ValidationError::limit(
                format!("regex_guard.patterns[{}]", limits.regex_patterns_per_proxy),
                format!(
                    "at most {} regex guard patterns per proxy",
                    limits.regex_patterns_per_proxy
                ),
            ));
        }
        let mut patterns: Vec<RegexPattern> = Vec::with_capacity(self.patterns.len());
        for (i, p) in self.patterns.into_iter().enumerate() {
            let field = format!("regex_guard.patterns[{i}]");
            let name = p.name.trim();
            if name.is_empty() || name.chars().count() > 64 {
                return Err(ValidationError::invalid(
                    format!("{field}.name"),
                    "must be 1-64 characters",
                ));
            }
            if patterns.iter().any(|x| x.name == name) {
                return Err(ValidationError::rule(
                    format!("{field}.name"),
                    format!("pattern name '{name}' is used twice"),
                ));
            }
            let chars = p.pattern.chars().count();
            if chars == 0 {
                return Err(ValidationError::invalid(
                    format!("{field}.pattern"),
                    "must not be empty",
                ));
            }
            if chars > limits.chars_per_regex_pattern {
                return Err(ValidationError::limit(
                    format!("{field}.pattern"),
                    format!(
                        "at most {} characters per pattern (got {chars})",
                        limits.chars_per_regex_pattern
                    ),
                ));
            }
            if let Err(e) = compile_guard_regex(&p.pattern) {
                let code = match e {
                    regex::Error::CompiledTooBig(_) => ErrorCode::LimitExceeded,
                    _ => ErrorCode::InvalidValue,
                };
                let first = e.to_string();
                let message = first
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(ValidationError::new(
                    code,
                    format!("{field}.pattern"),
                    format!("not a valid regular expression: {message}"),
                ));
            }
            patterns.push(RegexPattern {
                name: name.to_owned(),
                pattern: p.pattern,
            });
        }
        Ok(RegexGuard { patterns, scope })
    }
}

pub(crate) fn validate_url(field: &str, url: &str) -> Result<String, ValidationError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ValidationError::invalid(field, format!("'{url}' is not a valid URL")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(ValidationError::invalid(
                field,
                "must be an http:// or https:// URL",
            ));
        }
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(ValidationError::invalid(field, "must name a host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Credentials in a URL end up in logs, caches and the admin API's answers: they
        // belong in `auth` (or a semantic service's `api_key`).
        return Err(ValidationError::invalid(
            field,
            "must not contain credentials (userinfo before '@'); put them in auth",
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(ValidationError::invalid(
            field,
            "must not have a query or fragment",
        ));
    }
    if url.len() > 2048 {
        return Err(ValidationError::invalid(
            field,
            "must be at most 2048 characters",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The most bare model names one route lists.
pub const MODELS_PER_ROUTE: usize = 64;

/// A bare model name of a route's `models`: a model name, or a prefix of one ending in `*`.
fn validate_bare_model(field: &str, model: &str) -> Result<(), ValidationError> {
    let name = model.strip_suffix('*').unwrap_or(model);
    if name.is_empty() {
        return Err(ValidationError::invalid(
            field,
            "a prefix needs at least one character before '*' (a route for every model is \
             the fallback route)",
        ));
    }
    if name.contains('*') {
        return Err(ValidationError::invalid(
            field,
            "'*' may only end a prefix (e.g. 'gpt-5*')",
        ));
    }
    validate_model(field, name)
}

pub(crate) fn validate_model(field: &str, model: &str) -> Result<(), ValidationError> {
    if model.is_empty() || model.chars().count() > 256 {
        return Err(ValidationError::invalid(field, "must be 1-256 characters"));
    }
    if model.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::invalid(
            field,
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

/// The ids of the providers with a property, for validation messages.
fn providers_where(has: impl Fn(Provider) -> bool) -> String {
    Provider::ALL
        .into_iter()
        .filter(|p| has(*p))
        .map(Provider::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `version` in a body: a non-negative integer up to `i64::MAX` (what the store keeps),
/// also when written as a float with no fraction (`3.0`, as JSON allows).
pub(crate) fn version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let max = i64::MAX as u64;
    let value = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => Some(v),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..=max as f64).contains(&f) => {
            format!("{f:.0}").parse::<u64>().ok()
        }
        _ => None,
    };
    match value {
        Some(v) if v <= max => Ok(Some(v)),
        _ => Err(D::Error::custom(format!(
            "invalid value: {n}, expected a version: an integer from 0 to {max}"
        ))),
    }
}

fn validate_token(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(u8) -> bool,
) -> Result<(), ValidationError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(allowed) {
        return Err(ValidationError::invalid(
            field,
            format!("'{value}' is not a valid value"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
