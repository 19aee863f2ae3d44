//! The routing table: a [`Snapshot`] compiled into everything a request needs, precomputed.
//!
//! Compilation is per proxy: a proxy this node cannot compile (a semantic proxy on a node
//! without an encoder, say) is reported as a [`ProxyFailure`] and, when the previous table
//! served an earlier version of it, that version keeps serving; every other proxy of the
//! snapshot applies. One bad proxy never freezes the others. The table is published whole
//! (one `ArcSwap::store`); a request loads it once and uses that version to its end, streams
//! included.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::http::HeaderValue;
use switchyard_model::snapshot::Snapshot;
use switchyard_model::{Format, Provider, RESERVED_PATHS, RoutingStrategy};
use uuid::Uuid;

use crate::providers::Upstream;
use crate::semantic::{ProxySemantic, SemanticEngine};

/// The table a node serves; `None` until the first snapshot is applied.
pub type SharedTable = Arc<ArcSwapOption<RoutingTable>>;

/// Why a snapshot could not be compiled (the node NACKs it with this message and keeps its
/// table).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A proxy cannot be served (its base path, routes, fallback, semantic setup).
    #[error("proxy '{proxy}': {reason}")]
    Proxy { proxy: String, reason: String },
    /// One route of a proxy cannot be served (its URL, credentials, region).
    #[error("proxy '{proxy}': route '{route}': {reason}")]
    Route {
        proxy: String,
        route: String,
        reason: String,
    },
    /// Two proxies of the snapshot share a base path.
    #[error("proxy '{proxy}': base path '{base_path}' is used by another proxy")]
    BasePathTaken { proxy: String, base_path: String },
}

impl CompileError {
    /// Why, without the proxy's name (reported beside it).
    pub fn reason(&self) -> String {
        match self {
            CompileError::Proxy { reason, .. } => reason.clone(),
            CompileError::Route { route, reason, .. } => format!("route '{route}': {reason}"),
            CompileError::BasePathTaken { base_path, .. } => {
                format!("base path '{base_path}' is used by another proxy")
            }
        }
    }

    fn proxy(proxy: &str, reason: impl Into<String>) -> CompileError {
        CompileError::Proxy {
            proxy: proxy.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A proxy of a snapshot this node could not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFailure {
    pub proxy_id: Uuid,
    pub proxy_name: String,
    /// The version that failed.
    pub version: u64,
    pub error: CompileError,
    /// The version still served (from the previous table), if any.
    pub served_version: Option<u64>,
}

/// One version of everything this node serves.
#[derive(Debug)]
pub struct RoutingTable {
    pub version: u64,
    pub gateway: String,
    /// Proxies by base path, except `/`.
    by_path: HashMap<Box<str>, Arc<CompiledProxy>>,
    root: Option<Arc<CompiledProxy>>,
    /// Consumer keys, consumers and prices of this snapshot.
    pub(crate) governance: Arc<crate::governance::Governance>,
}

/// A proxy, ready to serve.
#[derive(Debug)]
pub struct CompiledProxy {
    pub id: Uuid,
    /// The proxy's version (of its definition, not of the snapshot).
    pub version: u64,
    pub name: Arc<str>,
    pub base_path: String,
    pub format: Format,
    pub strategy: RoutingStrategy,
    pub routes: Vec<Arc<CompiledRoute>>,
    pub(crate) fallback: Option<CompiledFallback>,
    /// Semantic routing and the prompt guards, when the proxy uses any.
    pub(crate) semantic: Option<Arc<ProxySemantic>>,
    /// Client authentication, rate limits and budget.
    pub(crate) governance: crate::governance::ProxyGovernance,
    /// The routes' bare model names.
    pub(crate) bare: BareModels,
    /// The response cache, when the proxy has one.
    pub(crate) cache: Option<crate::cache::ProxyCache>,
}

/// The bare model names of a proxy's routes: exact names, and prefixes longest first.
#[derive(Debug, Default)]
pub(crate) struct BareModels {
    exact: HashMap<Box<str>, usize>,
    prefixes: Vec<(Box<str>, usize)>,
}

impl BareModels {
    fn compile(routes: &[switchyard_model::Route]) -> Result<BareModels, String> {
        let mut bare = BareModels::default();
        for (index, route) in routes.iter().enumerate() {
            for model in &route.models {
                let taken = match model.strip_suffix('*') {
                    Some(prefix) => {
                        let taken = bare.prefixes.iter().any(|(p, _)| **p == *prefix);
                        bare.prefixes.push((prefix.into(), index));
                        taken
                    }
                    None => bare.exact.insert(model.as_str().into(), index).is_some(),
                };
                if taken {
                    return Err(format!("the model name '{model}' is listed by two routes"));
                }
            }
        }
        bare.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(bare)
    }

    /// The route serving `model` by its bare name: an exact name first, then the longest
    /// prefix.
    pub(crate) fn route(&self, model: &str) -> Option<usize> {
        if let Some(index) = self.exact.get(model) {
            return Some(*index);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| model.starts_with(&**prefix))
            .map(|(_, index)| *index)
    }
}

/// A route, ready to serve.
#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    pub provider: Provider,
    pub target_model: Option<Arc<str>>,
    /// Its bare model names (exact, or `prefix*`), as configured.
    pub(crate) models: Box<[Box<str>]>,
    /// The `x-switchyard-route` value.
    pub(crate) name_header: HeaderValue,
    pub(crate) upstream: Upstream,
    /// Its metric handles, made on first use.
    pub(crate) metrics: std::sync::OnceLock<Arc<crate::telemetry::RouteMetrics>>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledFallback {
    /// Index into [`CompiledProxy::routes`].
    pub route: usize,
    pub target_model: Option<Arc<str>>,
}

impl RoutingTable {
    /// Compiles a snapshot on a node without a sentence encoder; fails on anything this node
    /// could not serve (including semantic routing and semantic guards).
    pub fn compile(snapshot: &Snapshot) -> Result<RoutingTable, CompileError> {
        let engine = SemanticEngine::without_encoder(reqwest::Client::new());
        let (table, mut failures) = Self::compile_with(snapshot, &engine, None);
        if failures.is_empty() {
            Ok(table)
        } else {
            Err(failures.swap_remove(0).error)
        }
    }

    /// Compiles a snapshot, encoding topic utterances with `engine`. Blocking: call it off
    /// the reactor. Each proxy compiles on its own: one that fails is reported, and served
    /// in the version `previous` (the table being replaced) had, if it had one.
    pub(crate) fn compile_with(
        snapshot: &Snapshot,
        engine: &SemanticEngine,
        previous: Option<&RoutingTable>,
    ) -> (RoutingTable, Vec<ProxyFailure>) {
        let mut table = RoutingTable {
            version: snapshot.version,
            gateway: snapshot.gateway.clone(),
            by_path: HashMap::with_capacity(snapshot.proxies.len()),
            root: None,
            governance: Arc::new(crate::governance::Governance::compile(snapshot)),
        };
        let mut failures = Vec::new();
        let mut kept: Vec<(Arc<CompiledProxy>, usize)> = Vec::new();
        for proxy in &snapshot.proxies {
            let spec = &proxy.spec;
            let outcome = compile_proxy(proxy, snapshot, engine).and_then(|compiled| {
                let base = compiled.base_path.clone();
                if table.insert(Arc::new(compiled)) {
                    Ok(())
                } else {
                    Err(CompileError::BasePathTaken {
                        proxy: spec.name.clone(),
                        base_path: base,
                    })
                }
            });
            if let Err(error) = outcome {
                let last_good = previous
                    .and_then(|t| t.proxies().find(|p| p.id == proxy.id))
                    .map(Arc::clone);
                if let Some(old) = &last_good {
                    kept.push((Arc::clone(old), failures.len()));
                }
                failures.push(ProxyFailure {
                    proxy_id: proxy.id,
                    proxy_name: spec.name.clone(),
                    version: proxy.version,
                    error,
                    served_version: None,
                });
            }
        }
        // The last good versions of failed proxies, where their base path is still free
        // (a proxy that compiled wins its base path).
        for (old, at) in kept {
            let version = old.version;
            if table.insert(old) {
                failures[at].served_version = Some(version);
            }
        }
        engine.retain(snapshot.proxies.iter().map(|p| &p.spec), &snapshot.topics);
        (table, failures)
    }

    /// Adds a proxy at its base path; `false` when the path is taken.
    fn insert(&mut self, proxy: Arc<CompiledProxy>) -> bool {
        if proxy.base_path == "/" {
            if self.root.is_some() {
                return false;
            }
            self.root = Some(proxy);
            return true;
        }
        let key: Box<str> = proxy.base_path.clone().into_boxed_str();
        match self.by_path.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(proxy);
                true
            }
        }
    }

    /// The proxy whose base path is the longest prefix of `path` at a `/` boundary, and the
    /// rest of the path after it.
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(&Arc<CompiledProxy>, &'p str)> {
        let mut end = path.len();
        while end > 0 {
            let prefix = &path[..end];
            if let Some(proxy) = self.by_path.get(prefix) {
                return Some((proxy, &path[end..]));
            }
            match prefix.rfind('/') {
                Some(i) => end = i,
                None => break,
            }
        }
        self.root.as_ref().map(|p| (p, path))
    }

    pub fn proxies(&self) -> impl Iterator<Item = &Arc<CompiledProxy>> {
        self.by_path.values().chain(self.root.iter())
    }
}

impl CompiledProxy {
    pub(crate) fn route(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| &*r.name == name)
    }
}

fn compile_proxy(
    proxy: &switchyard_model::Proxy,
    snapshot: &Snapshot,
    engine: &SemanticEngine,
) -> Result<CompiledProxy, CompileError> {
    let spec = &proxy.spec;
    let fail = |reason: String| CompileError::proxy(&spec.name, reason);
    check_base_path(&spec.base_path).map_err(fail)?;
    if spec.routes.is_empty() {
        return Err(fail("no routes".to_owned()));
    }
    let mut routes: Vec<Arc<CompiledRoute>> = Vec::with_capacity(spec.routes.len());
    for route in &spec.routes {
        if route.name.is_empty() || route.name.contains('/') {
            return Err(fail(format!("route name '{}' is not valid", route.name)));
        }
        if routes.iter().any(|r| *r.name == *route.name) {
            return Err(fail(format!("route name '{}' is used twice", route.name)));
        }
        let upstream = Upstream::compile(route).map_err(|reason| CompileError::Route {
            proxy: spec.name.clone(),
            route: route.name.clone(),
            reason,
        })?;
        let name_header = HeaderValue::from_str(&route.name).map_err(|_| {
            fail(format!(
                "route name '{}' is not a valid header value",
                route.name
            ))
        })?;
        routes.push(Arc::new(CompiledRoute {
            name: Arc::from(route.name.as_str()),
            provider: route.provider,
            target_model: route.target_model.as_deref().map(Arc::from),
            models: route.models.iter().map(|m| m.as_str().into()).collect(),
            name_header,
            upstream,
            metrics: std::sync::OnceLock::new(),
        }));
    }
    let fallback = match &spec.routing.fallback {
        None => None,
        Some(f) => {
            let route = routes
                .iter()
                .position(|r| *r.name == *f.route)
                .ok_or_else(|| {
                    fail(format!("the fallback names an unknown route '{}'", f.route))
                })?;
            Some(CompiledFallback {
                route,
                target_model: f.target_model.as_deref().map(Arc::from),
            })
        }
    };
    let service =
        match &spec.semantic_service {
            None => None,
            Some(name) => Some(snapshot.semantic_service(name).ok_or_else(|| {
                fail(format!("semantic service '{name}' is not in the snapshot"))
            })?),
        };
    let semantic = engine
        .compile_proxy(spec, service, &snapshot.topics)
        .map_err(fail)?;
    let bare = BareModels::compile(&spec.routes).map_err(fail)?;
    Ok(CompiledProxy {
        id: proxy.id,
        version: proxy.version,
        name: Arc::from(spec.name.as_str()),
        base_path: spec.base_path.clone(),
        format: spec.format,
        strategy: spec.routing.strategy,
        routes,
        fallback,
        semantic,
        governance: crate::governance::ProxyGovernance::compile(spec),
        bare,
        cache: spec
            .cache
            .as_ref()
            .map(|c| crate::cache::ProxyCache::compile(c, spec.client_auth.required)),
    })
}

fn check_base_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("base path '{path}' must start with '/'"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(format!("base path '{path}' must not end with '/'"));
    }
    if path.contains("//") || path.contains('?') || path.contains('#') {
        return Err(format!("base path '{path}' is not a clean path"));
    }
    if RESERVED_PATHS.iter().any(|r| {
        path == *r
            || path
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('/'))
    }) {
        return Err(format!("base path '{path}' is reserved by the gateway"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use switchyard_model::{Auth, Fallback, Proxy, ProxySpec, Route, Routing, Secret};

    pub(crate) fn route(name: &str, provider: Provider, target: Option<&str>) -> Route {
        Route {
            name: name.into(),
            provider,
            url: "http://127.0.0.1:9/v1".into(),
            region: None,
            api_version: None,
            auth: Auth::Static {
                api_key: Secret::new("k"),
            },
            target_model: target.map(Into::into),
            models: Vec::new(),
            topics: vec![],
        }
    }

    pub(crate) fn proxy(name: &str, base: &str, routes: Vec<Route>, fb: Option<&str>) -> Proxy {
        Proxy {
            id: Uuid::new_v4(),
            version: 1,
            spec: ProxySpec {
                name: name.into(),
                gateway: "gw".into(),
                format: Format::Openai,
                base_path: base.into(),
                routing: Routing {
                    strategy: RoutingStrategy::Model,
                    fallback: fb.map(|r| Fallback {
                        route: r.into(),
                        target_model: None,
                    }),
                    threshold: None,
                    scoring: None,
                },
                routes,
                prompt_guard: None,
                regex_guard: None,
                semantic_service: None,
                client_auth: Default::default(),
                rate_limits: Vec::new(),
                budget: None,
                cache: None,
            },
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    pub(crate) fn snapshot(version: u64, proxies: Vec<Proxy>) -> Snapshot {
        Snapshot {
            gateway: "gw".into(),
            version,
            proxies,
            semantic_services: Vec::new(),
            topics: Vec::new(),
            consumers: Vec::new(),
            prices: Vec::new(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn one(base: &str) -> Proxy {
        proxy(base, base, vec![route("a", Provider::OpenAi, None)], None)
    }

    #[test]
    fn longest_prefix_at_segment_boundaries() {
        let t = RoutingTable::compile(&snapshot(
            3,
            vec![one("/support"), one("/support/eu"), one("/")],
        ))
        .unwrap();
        assert_eq!(t.version, 3);
        let hit = |p: &'static str| {
            t.lookup(p)
                .map(|(proxy, rest)| (proxy.base_path.clone(), rest))
        };
        assert_eq!(
            hit("/support/chat/completions"),
            Some(("/support".into(), "/chat/completions"))
        );
        assert_eq!(
            hit("/support/eu/v1/models"),
            Some(("/support/eu".into(), "/v1/models"))
        );
        assert_eq!(hit("/support"), Some(("/support".into(), "")));
        assert_eq!(
            hit("/supportx/models"),
            Some(("/".into(), "/supportx/models"))
        );
        assert_eq!(hit("/models"), Some(("/".into(), "/models")));

        let t = RoutingTable::compile(&snapshot(1, vec![one("/support")])).unwrap();
        assert!(t.lookup("/supportx/models").is_none());
        assert!(t.lookup("/").is_none());
        assert!(t.lookup("/other/support/models").is_none());
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let cases: Vec<(Vec<Proxy>, &str)> = vec![
            (vec![one("/a"), one("/a")], "used by another proxy"),
            (vec![one("/healthz")], "reserved"),
            (vec![one("/metrics/x")], "reserved"),
            (vec![one("a")], "start with"),
            (vec![one("/a/")], "end with"),
            (
                vec![proxy(
                    "p",
                    "/p",
                    vec![route("a", Provider::OpenAi, None)],
                    Some("zz"),
                )],
                "unknown route 'zz'",
            ),
            (
                vec![proxy(
                    "p",
                    "/p",
                    vec![
                        route("a", Provider::OpenAi, None),
                        route("a", Provider::Nvidia, None),
                    ],
                    None,
                )],
                "used twice",
            ),
            (vec![proxy("p", "/p", vec![], None)], "no routes"),
        ];
        for (proxies, expected) in cases {
            let err = RoutingTable::compile(&snapshot(1, proxies)).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} should contain {expected}"
            );
        }

        let mut bad_url = route("a", Provider::OpenAi, None);
        bad_url.url = "not a url".into();
        let err = RoutingTable::compile(&snapshot(1, vec![proxy("p", "/p", vec![bad_url], None)]))
            .unwrap_err();
        assert!(err.to_string().contains("route 'a'"), "{err}");

        let mut bad_selector = route("a", Provider::OpenAi, None);
        bad_selector.auth = Auth::Dynamic {
            expression: "attributes.cookies['x']".into(),
        };
        assert!(
            RoutingTable::compile(&snapshot(
                1,
                vec![proxy("p", "/p", vec![bad_selector], None)]
            ))
            .is_err()
        );
    }

    #[test]
    fn compiles_every_provider() {
        let mut bedrock = route("b", Provider::Bedrock, Some("anthropic/x"));
        bedrock.region = Some("us-east-1".into());
        bedrock.auth = Auth::StaticAws {
            access_key_id: Secret::new("AKID"),
            secret_access_key: Secret::new("SECRET"),
            session_token: None,
        };
        let mut azure = route("z", Provider::Azure, Some("deployment"));
        azure.api_version = Some("2024-10-21".into());
        let t = RoutingTable::compile(&snapshot(
            1,
            vec![proxy(
                "p",
                "/p",
                vec![
                    route("a", Provider::OpenAi, Some("m")),
                    bedrock,
                    azure,
                    route("g", Provider::Gemini, None),
                ],
                Some("a"),
            )],
        ))
        .unwrap();
        let (p, _) = t.lookup("/p/models").unwrap();
        let providers: Vec<_> = p.routes.iter().map(|r| r.upstream.provider).collect();
        assert_eq!(
            providers,
            vec![
                switchyard_llm::Provider::OpenAi,
                switchyard_llm::Provider::Bedrock,
                switchyard_llm::Provider::Azure,
                switchyard_llm::Provider::Gemini
            ]
        );
        assert_eq!(p.fallback.as_ref().unwrap().route, 0);
        assert_eq!(p.routes[0].target_model.as_deref(), Some("m"));
        assert_eq!(t.proxies().count(), 1);

        // A bedrock route with an API key cannot sign: the snapshot is refused.
        let mut keyed = route("b", Provider::Bedrock, None);
        keyed.region = Some("us-east-1".into());
        let err = RoutingTable::compile(&snapshot(1, vec![proxy("p", "/p", vec![keyed], None)]))
            .unwrap_err();
        assert!(err.to_string().contains("AWS keys"), "{err}");
    }
}
