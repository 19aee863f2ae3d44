//! Snapshot ⇄ gRPC message conversions (feature `proto`).

use chrono::{DateTime, Utc};
use switchyard_proto::v1 as pb;
use uuid::Uuid;

use super::{InvalidSnapshot, Snapshot};
use crate::{
    Auth, Fallback, Format, GuardScope, LibraryTopic, PromptGuard, Provider, Proxy, ProxySpec,
    RegexGuard, RegexPattern, Route, Routing, RoutingStrategy, Secret, SemanticService, Topic,
    TopicSource,
};
use crate::{
    Budget, BudgetPeriod, ConsumerProxies, LimitAmount, LimitKey, NodeConsumer, NodeKey, Price,
    RateLimit, Window,
};

fn invalid(msg: impl Into<String>) -> InvalidSnapshot {
    InvalidSnapshot(msg.into())
}

impl From<&Snapshot> for pb::Snapshot {
    fn from(s: &Snapshot) -> Self {
        pb::Snapshot {
            gateway: s.gateway.clone(),
            version: s.version,
            proxies: s.proxies.iter().map(proxy_to_pb).collect(),
            created_at_unix_ms: s.created_at.timestamp_millis(),
            semantic_services: s
                .semantic_services
                .iter()
                .map(|s| pb::SemanticService {
                    name: s.name.clone(),
                    url: s.url.clone(),
                    model: s.model.clone(),
                    api_key: s.api_key.as_ref().map(|k| k.expose().to_owned()),
                })
                .collect(),
            topics: s
                .topics
                .iter()
                .map(|t| pb::LibraryTopic {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    utterances: t.utterances.clone(),
                })
                .collect(),
            consumers: s.consumers.iter().map(consumer_to_pb).collect(),
            prices: s
                .prices
                .iter()
                .map(|p| pb::Price {
                    model: p.model.clone(),
                    input_per_mtok: p.input_per_mtok,
                    output_per_mtok: p.output_per_mtok,
                    cached_input_per_mtok: p.cached_input_per_mtok,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = InvalidSnapshot;

    fn try_from(s: pb::Snapshot) -> Result<Self, Self::Error> {
        let created_at = DateTime::from_timestamp_millis(s.created_at_unix_ms)
            .ok_or_else(|| invalid("created_at is out of range"))?;
        let proxies = s
            .proxies
            .into_iter()
            .map(|p| {
                let name = p.name.clone();
                proxy_from_pb(p, &s.gateway)
                    .map_err(|e| invalid(format!("proxy '{name}': {}", e.0)))
            })
            .collect::<Result<Vec<Proxy>, _>>()?;
        let mut semantic_services: Vec<SemanticService> =
            Vec::with_capacity(s.semantic_services.len());
        for service in s.semantic_services {
            if service.name.is_empty() {
                return Err(invalid("a semantic service has no name"));
            }
            if semantic_services.iter().any(|x| x.name == service.name) {
                return Err(invalid(format!(
                    "semantic service '{}' is listed twice",
                    service.name
                )));
            }
            semantic_services.push(SemanticService {
                name: service.name,
                url: service.url,
                model: service.model,
                api_key: service.api_key.map(Secret::new),
            });
        }
        let mut topics: Vec<LibraryTopic> = Vec::with_capacity(s.topics.len());
        for topic in s.topics {
            if topic.name.is_empty() {
                return Err(invalid("a library topic has no name"));
            }
            if topics.iter().any(|t| t.name == topic.name) {
                return Err(invalid(format!(
                    "library topic '{}' is listed twice",
                    topic.name
                )));
            }
            if topic.utterances.is_empty() {
                return Err(invalid(format!(
                    "library topic '{}' has no utterances",
                    topic.name
                )));
            }
            topics.push(LibraryTopic {
                name: topic.name,
                description: topic.description,
                utterances: topic.utterances,
            });
        }
        for proxy in &proxies {
            for (field, name) in proxy.spec.library_refs() {
                if !topics.iter().any(|t| t.name == name) {
                    return Err(invalid(format!(
                        "proxy '{}': {field}: library topic '{name}' is not in the snapshot",
                        proxy.spec.name
                    )));
                }
            }
        }
        for proxy in &proxies {
            if let Some(name) = &proxy.spec.semantic_service
                && !semantic_services.iter().any(|s| s.name == *name)
            {
                return Err(invalid(format!(
                    "proxy '{}': semantic service '{name}' is not in the snapshot",
                    proxy.spec.name
                )));
            }
        }
        let mut consumers: Vec<NodeConsumer> = Vec::with_capacity(s.consumers.len());
        for c in s.consumers {
            let name = c.name.clone();
            let consumer =
                consumer_from_pb(c).map_err(|e| invalid(format!("consumer '{name}': {}", e.0)))?;
            if consumers.iter().any(|x| x.name == consumer.name) {
                return Err(invalid(format!("consumer '{name}' is listed twice")));
            }
            consumers.push(consumer);
        }
        let prices = s
            .prices
            .into_iter()
            .map(|p| {
                let finite = |v: f64| v.is_finite() && v >= 0.0;
                let ok = finite(p.input_per_mtok)
                    && finite(p.output_per_mtok)
                    && p.cached_input_per_mtok.is_none_or(finite);
                if !ok || p.model.is_empty() {
                    return Err(invalid(format!("price of '{}' is not valid", p.model)));
                }
                Ok(Price {
                    model: p.model,
                    input_per_mtok: p.input_per_mtok,
                    output_per_mtok: p.output_per_mtok,
                    cached_input_per_mtok: p.cached_input_per_mtok,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            gateway: s.gateway,
            version: s.version,
            proxies,
            semantic_services,
            topics,
            consumers,
            prices,
            created_at,
        })
    }
}

fn proxy_to_pb(p: &Proxy) -> pb::Proxy {
    let spec = &p.spec;
    pb::Proxy {
        id: p.id.to_string(),
        name: spec.name.clone(),
        format: match spec.format {
            Format::Openai => pb::Format::Openai,
            Format::Gemini => pb::Format::Gemini,
            Format::Anthropic => pb::Format::Anthropic,
        } as i32,
        base_path: spec.base_path.clone(),
        routing: Some(pb::Routing {
            strategy: match spec.routing.strategy {
                RoutingStrategy::Model => pb::RoutingStrategy::Model,
                RoutingStrategy::Semantic => pb::RoutingStrategy::Semantic,
            } as i32,
            fallback: spec.routing.fallback.as_ref().map(|f| pb::Fallback {
                route: f.route.clone(),
                target_model: f.target_model.clone(),
            }),
            threshold: spec.routing.threshold,
            scoring: spec
                .routing
                .scoring
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
        }),
        routes: spec.routes.iter().map(route_to_pb).collect(),
        prompt_guard: spec.prompt_guard.as_ref().map(|g| pb::PromptGuard {
            threshold: g.threshold,
            deny_topics: g.deny_topics.iter().map(topic_to_pb).collect(),
            scope: scope_to_pb(g.scope) as i32,
        }),
        regex_guard: spec.regex_guard.as_ref().map(|g| pb::RegexGuard {
            patterns: g
                .patterns
                .iter()
                .map(|p| pb::RegexPattern {
                    name: p.name.clone(),
                    pattern: p.pattern.clone(),
                })
                .collect(),
            scope: scope_to_pb(g.scope) as i32,
        }),
        semantic_service_name: spec.semantic_service.clone().unwrap_or_default(),
        client_auth_required: spec.client_auth.required,
        rate_limits: spec.rate_limits.iter().map(rate_limit_to_pb).collect(),
        budget: spec.budget.as_ref().map(budget_to_pb),
        cache: spec.cache.as_ref().map(cache_to_pb),
        version: p.version,
    }
}

fn scope_to_pb(scope: GuardScope) -> pb::GuardScope {
    match scope {
        GuardScope::LastUser => pb::GuardScope::LastUser,
        GuardScope::All => pb::GuardScope::All,
    }
}

/// A guard's scope off the wire: unspecified (an older control plane) is the guard's
/// default; a value this node does not know (a newer control plane) reads everything.
fn scope_from_pb(scope: i32, default: GuardScope) -> GuardScope {
    match pb::GuardScope::try_from(scope) {
        Ok(pb::GuardScope::LastUser) => GuardScope::LastUser,
        Ok(pb::GuardScope::All) => GuardScope::All,
        Ok(pb::GuardScope::Unspecified) => default,
        Err(_) => GuardScope::All,
    }
}

fn proxy_from_pb(p: pb::Proxy, gateway: &str) -> Result<Proxy, InvalidSnapshot> {
    let id = Uuid::parse_str(&p.id).map_err(|_| invalid(format!("id '{}' is not a UUID", p.id)))?;
    let format = match pb::Format::try_from(p.format) {
        Ok(pb::Format::Openai) => Format::Openai,
        Ok(pb::Format::Gemini) => Format::Gemini,
        Ok(pb::Format::Anthropic) => Format::Anthropic,
        _ => return Err(invalid(format!("unknown format {}", p.format))),
    };
    let routing = p.routing.ok_or_else(|| invalid("routing is missing"))?;
    let strategy = match pb::RoutingStrategy::try_from(routing.strategy) {
        Ok(pb::RoutingStrategy::Model) => RoutingStrategy::Model,
        Ok(pb::RoutingStrategy::Semantic) => RoutingStrategy::Semantic,
        _ => {
            return Err(invalid(format!(
                "unknown routing strategy {}",
                routing.strategy
            )));
        }
    };
    let routes = p
        .routes
        .into_iter()
        .map(route_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    if routes.is_empty() {
        return Err(invalid("no routes"));
    }
    let spec = ProxySpec {
        name: p.name,
        gateway: gateway.to_owned(),
        format,
        base_path: p.base_path,
        routing: Routing {
            strategy,
            fallback: routing.fallback.map(|f| Fallback {
                route: f.route,
                target_model: f.target_model,
            }),
            threshold: routing.threshold,
            scoring: match routing.scoring.as_str() {
                "" => None,
                s => Some(
                    crate::RoutingScoring::parse(s)
                        .ok_or_else(|| invalid(format!("unknown routing scoring '{s}'")))?,
                ),
            },
        },
        routes,
        prompt_guard: p.prompt_guard.map(|g| PromptGuard {
            threshold: g.threshold,
            deny_topics: g.deny_topics.into_iter().map(topic_from_pb).collect(),
            scope: scope_from_pb(g.scope, GuardScope::LastUser),
        }),
        regex_guard: p.regex_guard.map(|g| RegexGuard {
            patterns: g
                .patterns
                .into_iter()
                .map(|p| RegexPattern {
                    name: p.name,
                    pattern: p.pattern,
                })
                .collect(),
            scope: scope_from_pb(g.scope, GuardScope::All),
        }),
        semantic_service: (!p.semantic_service_name.is_empty()).then_some(p.semantic_service_name),
        client_auth: crate::ClientAuth {
            required: p.client_auth_required,
        },
        rate_limits: rate_limits_from_pb(p.rate_limits)?,
        budget: p.budget.map(budget_from_pb).transpose()?,
        cache: p.cache.map(cache_from_pb).transpose()?,
    };
    // Timestamps are control-plane bookkeeping; nodes do not need them.
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    Ok(Proxy {
        id,
        version: p.version,
        spec,
        created_at: epoch,
        updated_at: epoch,
    })
}

fn rate_limit_to_pb(l: &RateLimit) -> pb::RateLimit {
    use pb::rate_limit::Amount;
    pb::RateLimit {
        name: l.name.clone(),
        amount: Some(match l.amount {
            LimitAmount::Tokens(n) => Amount::Tokens(n),
            LimitAmount::Requests(n) => Amount::Requests(n),
        }),
        window: l.window.to_string(),
        key: l.key.to_string(),
    }
}

fn rate_limits_from_pb(limits: Vec<pb::RateLimit>) -> Result<Vec<RateLimit>, InvalidSnapshot> {
    use pb::rate_limit::Amount;
    limits
        .into_iter()
        .map(|l| {
            let what = |e: crate::ValidationError| {
                invalid(format!("rate limit '{}': {}", l.name, e.message))
            };
            let amount = match l.amount {
                Some(Amount::Tokens(n)) if n > 0 => LimitAmount::Tokens(n),
                Some(Amount::Requests(n)) if n > 0 => LimitAmount::Requests(n),
                _ => return Err(invalid(format!("rate limit '{}' has no amount", l.name))),
            };
            Ok(RateLimit {
                amount,
                window: Window::parse("window", &l.window).map_err(what)?,
                key: LimitKey::parse("key", &l.key).map_err(what)?,
                name: l.name,
            })
        })
        .collect()
}

fn cache_to_pb(c: &crate::ResponseCache) -> pb::ResponseCache {
    pb::ResponseCache {
        exact: c.exact.as_ref().map(|e| pb::CacheTier {
            ttl: e.ttl.to_string(),
            threshold: 0.0,
        }),
        semantic: c.semantic.as_ref().map(|s| pb::CacheTier {
            ttl: s.ttl.to_string(),
            threshold: s.threshold,
        }),
        scope: c.scope.map(|s| s.as_str().to_owned()).unwrap_or_default(),
    }
}

fn cache_from_pb(c: pb::ResponseCache) -> Result<crate::ResponseCache, InvalidSnapshot> {
    let ttl = |t: &str| {
        crate::Window::parse("cache ttl", t).map_err(|e| invalid(format!("bad cache ttl: {e}")))
    };
    let exact = match c.exact {
        None => None,
        Some(e) => Some(crate::ExactCache { ttl: ttl(&e.ttl)? }),
    };
    let semantic = match c.semantic {
        None => None,
        Some(s) => {
            if !(s.threshold > 0.0 && s.threshold <= 1.0) {
                return Err(invalid(
                    "a semantic cache threshold is above 0 and at most 1",
                ));
            }
            Some(crate::SemanticCache {
                threshold: s.threshold,
                ttl: ttl(&s.ttl)?,
            })
        }
    };
    let scope = match c.scope.as_str() {
        "" => None,
        s => Some(
            crate::CacheScope::parse(s)
                .ok_or_else(|| invalid(format!("unknown cache scope '{s}'")))?,
        ),
    };
    Ok(crate::ResponseCache {
        exact,
        semantic,
        scope,
    })
}

fn budget_to_pb(b: &Budget) -> pb::Budget {
    pb::Budget {
        usd: b.usd,
        period: b.period.as_str().to_owned(),
    }
}

fn budget_from_pb(b: pb::Budget) -> Result<Budget, InvalidSnapshot> {
    let period = b
        .period
        .parse::<BudgetPeriod>()
        .map_err(|()| invalid(format!("unknown budget period '{}'", b.period)))?;
    if !b.usd.is_finite() || b.usd < 0.0 {
        return Err(invalid("a budget is a finite amount of at least 0"));
    }
    Ok(Budget { usd: b.usd, period })
}

fn consumer_to_pb(c: &NodeConsumer) -> pb::Consumer {
    let (all_proxies, proxy_ids) = match &c.proxies {
        ConsumerProxies::All => (true, vec![]),
        ConsumerProxies::Only(ids) => (false, ids.iter().map(Uuid::to_string).collect()),
    };
    pb::Consumer {
        name: c.name.clone(),
        all_proxies,
        proxy_ids,
        rate_limits: c.rate_limits.iter().map(rate_limit_to_pb).collect(),
        budget: c.budget.as_ref().map(budget_to_pb),
        keys: c
            .keys
            .iter()
            .map(|k| pb::ConsumerKey {
                id: k.id.to_string(),
                sha256: k.hash.to_vec(),
                expires_at_unix_ms: k.expires_at.map_or(0, |t| t.timestamp_millis()),
            })
            .collect(),
    }
}

fn consumer_from_pb(c: pb::Consumer) -> Result<NodeConsumer, InvalidSnapshot> {
    let proxies = if c.all_proxies {
        ConsumerProxies::All
    } else {
        ConsumerProxies::Only(
            c.proxy_ids
                .iter()
                .map(|id| {
                    Uuid::parse_str(id)
                        .map_err(|_| invalid(format!("proxy id '{id}' is not a UUID")))
                })
                .collect::<Result<_, _>>()?,
        )
    };
    let keys = c
        .keys
        .into_iter()
        .map(|k| {
            let id = Uuid::parse_str(&k.id)
                .map_err(|_| invalid(format!("key id '{}' is not a UUID", k.id)))?;
            let hash: [u8; 32] = k
                .sha256
                .try_into()
                .map_err(|_| invalid(format!("key {id}: a hash is 32 bytes")))?;
            let expires_at = match k.expires_at_unix_ms {
                0 => None,
                ms => Some(
                    DateTime::from_timestamp_millis(ms)
                        .ok_or_else(|| invalid(format!("key {id}: expiry out of range")))?,
                ),
            };
            Ok(NodeKey {
                id,
                hash,
                expires_at,
            })
        })
        .collect::<Result<_, InvalidSnapshot>>()?;
    Ok(NodeConsumer {
        name: c.name,
        proxies,
        rate_limits: rate_limits_from_pb(c.rate_limits)?,
        budget: c.budget.map(budget_from_pb).transpose()?,
        keys,
    })
}

fn route_to_pb(r: &Route) -> pb::Route {
    use pb::auth::Kind;
    let kind = match &r.auth {
        Auth::None => Kind::None(pb::NoAuth {}),
        Auth::Static { api_key } => Kind::StaticKey(pb::StaticKey {
            api_key: api_key.expose().to_owned(),
        }),
        Auth::Dynamic { expression } => Kind::DynamicKey(pb::DynamicKey {
            expression: expression.clone(),
        }),
        Auth::StaticAws {
            access_key_id,
            secret_access_key,
            session_token,
        } => Kind::StaticAws(pb::StaticAws {
            access_key_id: access_key_id.expose().to_owned(),
            secret_access_key: secret_access_key.expose().to_owned(),
            session_token: session_token.as_ref().map(|t| t.expose().to_owned()),
        }),
        Auth::DynamicAws {
            access_key_id,
            secret_access_key,
            session_token,
        } => Kind::DynamicAws(pb::DynamicAws {
            combined: None,
            access_key_id: Some(access_key_id.clone()),
            secret_access_key: Some(secret_access_key.clone()),
            session_token: session_token.clone(),
        }),
    };
    pb::Route {
        name: r.name.clone(),
        provider: provider_to_pb(r.provider) as i32,
        url: r.url.clone(),
        region: r.region.clone(),
        api_version: r.api_version.clone(),
        auth: Some(pb::Auth { kind: Some(kind) }),
        target_model: r.target_model.clone(),
        topics: r.topics.iter().map(topic_to_pb).collect(),
        models: r.models.clone(),
    }
}

fn route_from_pb(r: pb::Route) -> Result<Route, InvalidSnapshot> {
    use pb::auth::Kind;
    let provider = provider_from_pb(r.provider).ok_or_else(|| {
        invalid(format!(
            "route '{}': unknown provider {}",
            r.name, r.provider
        ))
    })?;
    let kind = r
        .auth
        .and_then(|a| a.kind)
        .ok_or_else(|| invalid(format!("route '{}': auth is missing", r.name)))?;
    let auth = match kind {
        Kind::None(_) => Auth::None,
        Kind::StaticKey(k) => Auth::Static {
            api_key: Secret::new(k.api_key),
        },
        Kind::DynamicKey(k) => Auth::Dynamic {
            expression: k.expression,
        },
        Kind::StaticAws(k) => Auth::StaticAws {
            access_key_id: Secret::new(k.access_key_id),
            secret_access_key: Secret::new(k.secret_access_key),
            session_token: k.session_token.map(Secret::new),
        },
        Kind::DynamicAws(k) => match (k.combined, k.access_key_id, k.secret_access_key) {
            (Some(expression), None, None) => Auth::Dynamic { expression },
            (None, Some(access_key_id), Some(secret_access_key)) => Auth::DynamicAws {
                access_key_id,
                secret_access_key,
                session_token: k.session_token,
            },
            _ => {
                return Err(invalid(format!(
                    "route '{}': incomplete dynamic AWS auth",
                    r.name
                )));
            }
        },
    };
    Ok(Route {
        name: r.name,
        provider,
        url: r.url,
        region: r.region,
        api_version: r.api_version,
        auth,
        target_model: r.target_model,
        models: r.models,
        topics: r.topics.into_iter().map(topic_from_pb).collect(),
    })
}

/// A provider's value in the gRPC contract, named after its id (`openai-compatible` →
/// `PROVIDER_OPENAI_COMPATIBLE`); `PROVIDER_UNSPECIFIED` for an id the contract lacks (the
/// provider identity test keeps the two lists equal).
pub fn provider_to_pb(p: Provider) -> pb::Provider {
    let name = format!(
        "PROVIDER_{}",
        p.as_str().to_ascii_uppercase().replace('-', "_")
    );
    pb::Provider::from_str_name(&name).unwrap_or(pb::Provider::Unspecified)
}

/// The provider a gRPC contract value names, if any.
pub fn provider_from_pb(value: i32) -> Option<Provider> {
    Provider::ALL
        .into_iter()
        .find(|p| provider_to_pb(*p) as i32 == value)
}

fn topic_to_pb(t: &TopicSource) -> pb::Topic {
    match t {
        TopicSource::Inline(t) => pb::Topic {
            name: t.name.clone(),
            utterances: t.utterances.clone(),
            library_ref: String::new(),
        },
        TopicSource::Library { name } => pb::Topic {
            name: String::new(),
            utterances: Vec::new(),
            library_ref: name.clone(),
        },
    }
}

fn topic_from_pb(t: pb::Topic) -> TopicSource {
    if t.library_ref.is_empty() {
        TopicSource::Inline(Topic {
            name: t.name,
            utterances: t.utterances,
        })
    } else {
        TopicSource::Library {
            name: t.library_ref,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, parse_proxy_input};

    fn sample() -> Snapshot {
        let body = serde_json::json!({
            "name": "p", "gateway": "gw", "base_path": "/p",
            "routing": {"strategy": "semantic", "threshold": 0.4, "fallback": {"route": "a"}},
            "routes": [
                {"name": "a", "provider": "openai", "url": "https://x/v1",
                 "auth": {"type": "static", "api_key": "sk"}, "target_model": "m",
                 "models": ["gpt-4.1", "gpt-5*"],
                 "topics": [{"name": "t", "utterances": ["hello"]}, {"ref": "billing"}]},
                {"name": "b", "provider": "bedrock", "url": "https://y", "region": "us-east-1",
                 "target_model": "anthropic/x",
                 "auth": {"type": "dynamic", "access_key_id": "attributes.headers['a']",
                          "secret_access_key": "attributes.headers['b']"}},
                {"name": "c", "provider": "bedrock", "url": "https://y", "region": "us-east-1",
                 "target_model": "anthropic/x",
                 "auth": {"type": "static", "access_key_id": "AK", "secret_access_key": "SK", "session_token": "T"}}
            ],
            "prompt_guard": {"threshold": 0.8, "deny_topics": [{"name": "d", "utterances": ["bad"]}, {"ref": "weapons"}]},
            "regex_guard": {"patterns": [{"name": "ssn", "pattern": "\\b\\d{3}-\\d{2}-\\d{4}\\b"}]},
            "semantic_service": "emb-eu",
            "client_auth": {"required": true},
            "rate_limits": [
                {"name": "t", "tokens": 1000, "window": "1h", "key": "consumer"},
                {"name": "r", "requests": 60, "window": "1m", "key": "#[attributes.headers['x-tenant']]"}
            ],
            "budget": {"usd": 12.5, "period": "month"},
            "cache": {"exact": {"ttl": "10m"}, "semantic": {"threshold": 0.92, "ttl": "1h"}, "scope": "proxy"}
        });
        let spec = parse_proxy_input(body.to_string().as_bytes())
            .unwrap()
            .validate(&Limits::default(), None)
            .unwrap();
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        Snapshot {
            gateway: "gw".into(),
            version: 7,
            proxies: vec![Proxy {
                id: Uuid::new_v4(),
                version: 3,
                spec,
                created_at: epoch,
                updated_at: epoch,
            }],
            semantic_services: vec![
                SemanticService {
                    name: "emb-eu".into(),
                    url: "http://127.0.0.1:9/v1".into(),
                    model: "emb".into(),
                    api_key: Some(Secret::new("sk-emb")),
                },
                SemanticService {
                    name: "local".into(),
                    url: "http://127.0.0.1:10/v1".into(),
                    model: "emb".into(),
                    api_key: None,
                },
            ],
            topics: vec![
                LibraryTopic {
                    name: "billing".into(),
                    description: "invoices and refunds".into(),
                    utterances: vec!["pay my invoice".into(), "refund".into()],
                },
                LibraryTopic {
                    name: "weapons".into(),
                    description: String::new(),
                    utterances: vec!["build a bomb".into()],
                },
            ],
            consumers: vec![
                NodeConsumer {
                    name: "billing-app".into(),
                    proxies: ConsumerProxies::All,
                    rate_limits: vec![RateLimit {
                        name: "rpm".into(),
                        amount: LimitAmount::Requests(10),
                        window: Window::parse("w", "1m").unwrap(),
                        key: LimitKey::Consumer,
                    }],
                    budget: Some(Budget {
                        usd: 50.0,
                        period: BudgetPeriod::Day,
                    }),
                    keys: vec![
                        NodeKey {
                            id: Uuid::new_v4(),
                            hash: [7; 32],
                            expires_at: DateTime::from_timestamp_millis(1_900_000_000_000),
                        },
                        NodeKey {
                            id: Uuid::new_v4(),
                            hash: [9; 32],
                            expires_at: None,
                        },
                    ],
                },
                NodeConsumer {
                    name: "other".into(),
                    proxies: ConsumerProxies::Only(vec![Uuid::new_v4()]),
                    rate_limits: vec![],
                    budget: None,
                    keys: vec![],
                },
            ],
            prices: vec![Price {
                model: "gpt-4.1".into(),
                input_per_mtok: 2.0,
                output_per_mtok: 8.0,
                cached_input_per_mtok: Some(0.5),
            }],
            created_at: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
        }
    }

    #[test]
    fn bad_governance_on_the_wire_is_refused() {
        let wire = pb::Snapshot::from(&sample());
        let mut bad = wire.clone();
        bad.consumers[0].keys[0].sha256.pop();
        assert!(Snapshot::try_from(bad).unwrap_err().0.contains("32 bytes"));
        let mut bad = wire.clone();
        bad.proxies[0].rate_limits[0].window = "1y".into();
        assert!(
            Snapshot::try_from(bad)
                .unwrap_err()
                .0
                .contains("rate limit 't'")
        );
        let mut bad = wire.clone();
        bad.prices[0].input_per_mtok = f64::NAN;
        assert!(Snapshot::try_from(bad).unwrap_err().0.contains("price"));
        let mut bad = wire;
        bad.consumers[1].name = "billing-app".into();
        assert!(Snapshot::try_from(bad).unwrap_err().0.contains("twice"));
    }

    #[test]
    fn round_trips_through_proto() {
        let snap = sample();
        let wire = pb::Snapshot::from(&snap);
        assert_eq!(Snapshot::try_from(wire).unwrap(), snap);
    }

    #[test]
    fn semantic_services_travel_once_and_must_resolve() {
        let snap = sample();
        let wire = pb::Snapshot::from(&snap);
        assert_eq!(wire.proxies[0].semantic_service_name, "emb-eu");
        assert_eq!(wire.semantic_services.len(), 2);
        assert_eq!(wire.semantic_services[0].api_key.as_deref(), Some("sk-emb"));
        assert_eq!(wire.semantic_services[1].api_key, None);
        let back = Snapshot::try_from(wire.clone()).unwrap();
        assert_eq!(back.semantic_service("emb-eu").unwrap().model, "emb");
        assert!(back.semantic_service("nope").is_none());

        // A proxy naming a service the snapshot does not carry: refused (the node NACKs).
        let mut dangling = wire.clone();
        dangling.semantic_services.remove(0);
        let err = Snapshot::try_from(dangling).unwrap_err();
        assert!(
            err.0.contains("proxy 'p'") && err.0.contains("'emb-eu' is not in the snapshot"),
            "{err}"
        );
        let mut twice = wire.clone();
        twice
            .semantic_services
            .push(twice.semantic_services[0].clone());
        assert!(Snapshot::try_from(twice).unwrap_err().0.contains("twice"));
        let mut nameless = wire;
        nameless.semantic_services[1].name.clear();
        assert!(Snapshot::try_from(nameless).is_err());
    }

    #[test]
    fn library_topics_travel_once_and_must_resolve() {
        let snap = sample();
        let wire = pb::Snapshot::from(&snap);
        let route = &wire.proxies[0].routes[0];
        assert_eq!(route.topics[1].library_ref, "billing");
        assert!(route.topics[1].utterances.is_empty() && route.topics[1].name.is_empty());
        assert_eq!(route.topics[0].library_ref, "");
        assert_eq!(wire.topics.len(), 2);
        let back = Snapshot::try_from(wire.clone()).unwrap();
        assert_eq!(back.topic("billing").unwrap().utterances.len(), 2);
        assert_eq!(
            back.proxies[0].spec.routes[0].topics[1],
            TopicSource::Library {
                name: "billing".into()
            }
        );

        let mut dangling = wire.clone();
        dangling.topics.retain(|t| t.name != "weapons");
        let err = Snapshot::try_from(dangling).unwrap_err();
        assert!(
            err.0.contains("prompt_guard.deny_topics[1].ref")
                && err.0.contains("'weapons' is not in the snapshot"),
            "{err}"
        );
        let mut twice = wire.clone();
        twice.topics.push(twice.topics[0].clone());
        assert!(Snapshot::try_from(twice).unwrap_err().0.contains("twice"));
        let mut empty = wire;
        empty.topics[0].utterances.clear();
        assert!(
            Snapshot::try_from(empty)
                .unwrap_err()
                .0
                .contains("no utterances")
        );
    }

    #[test]
    fn refuses_unknown_enums_and_missing_parts() {
        let mut wire = pb::Snapshot::from(&sample());
        wire.proxies[0].routes[0].provider = 99;
        let err = Snapshot::try_from(wire).unwrap_err();
        assert!(err.0.contains("unknown provider"), "{err}");

        let mut wire = pb::Snapshot::from(&sample());
        wire.proxies[0].routing = None;
        assert!(Snapshot::try_from(wire).is_err());

        let mut wire = pb::Snapshot::from(&sample());
        wire.proxies[0].id = "nope".into();
        assert!(Snapshot::try_from(wire).is_err());
    }
}
