//! Builders of snapshots for tests: domain proxies and routes, converted to the wire form
//! the control plane sends.

use chrono::{DateTime, Utc};
use switchyard_model::snapshot::Snapshot;
use switchyard_model::{
    Auth, Fallback, Format, Provider, Proxy, ProxySpec, Route, Routing, RoutingStrategy, Secret,
    SemanticService,
};
use switchyard_proto::v1 as pb;
use uuid::Uuid;

/// An OpenAI route with a static key.
pub fn openai_route(name: &str, url: &str, api_key: &str) -> Route {
    route(
        name,
        Provider::OpenAi,
        url,
        Auth::Static {
            api_key: Secret::new(api_key),
        },
    )
}

/// A route of any provider and auth, without a target model.
pub fn route(name: &str, provider: Provider, url: &str, auth: Auth) -> Route {
    Route {
        name: name.to_owned(),
        provider,
        url: url.to_owned(),
        region: None,
        api_version: None,
        auth,
        target_model: None,
        models: Vec::new(),
        topics: vec![],
    }
}

/// Sets a route's target model.
pub fn with_target(mut route: Route, target_model: &str) -> Route {
    route.target_model = Some(target_model.to_owned());
    route
}

/// A model-routed OpenAI-format proxy with an optional fallback `(route, target_model)`.
pub fn proxy(
    name: &str,
    base_path: &str,
    routes: Vec<Route>,
    fallback: Option<(&str, Option<&str>)>,
) -> Proxy {
    Proxy {
        id: Uuid::new_v4(),
        version: 1,
        spec: ProxySpec {
            name: name.to_owned(),
            gateway: String::new(),
            format: Format::Openai,
            base_path: base_path.to_owned(),
            routing: Routing {
                strategy: RoutingStrategy::Model,
                fallback: fallback.map(|(route, target)| Fallback {
                    route: route.to_owned(),
                    target_model: target.map(str::to_owned),
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

/// The wire snapshot of `gateway` at `version`.
pub fn snapshot(gateway: &str, version: u64, proxies: Vec<Proxy>) -> pb::Snapshot {
    snapshot_with_services(gateway, version, proxies, Vec::new())
}

/// The wire snapshot of `gateway` at `version`, carrying the semantic services its proxies
/// name.
pub fn snapshot_with_services(
    gateway: &str,
    version: u64,
    proxies: Vec<Proxy>,
    semantic_services: Vec<SemanticService>,
) -> pb::Snapshot {
    let proxies = proxies
        .into_iter()
        .map(|mut p| {
            p.spec.gateway = gateway.to_owned();
            p
        })
        .collect();
    pb::Snapshot::from(&Snapshot {
        gateway: gateway.to_owned(),
        version,
        proxies,
        semantic_services,
        topics: Vec::new(),
        consumers: Vec::new(),
        prices: Vec::new(),
        created_at: Utc::now(),
    })
}
