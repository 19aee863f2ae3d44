//! Model-based routing: which route (and which upstream model) serves a request, and where
//! it goes when that fails. Pure decisions over a compiled proxy; no I/O.
//!
//! The request's `model` is `<route>/<model>`, split at the first `/`; the route's
//! `target_model`, when set, replaces the model part. A bare `<route>` uses that route's
//! `target_model`. A model that names no route this way is looked up in the routes' bare
//! model names (`models`: exact names first, then the longest `prefix*`), and served by that
//! route with that model (its `target_model` still overriding). No model, or an unknown
//! route, goes to the fallback route; a failing upstream (decided by the caller) goes there
//! too.

use std::sync::Arc;

use crate::error::ProxyError;
use crate::table::CompiledProxy;

/// One upstream attempt: a route of the proxy and the model to ask it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Index into the proxy's routes.
    pub route: usize,
    pub model: Arc<str>,
}

/// Why a request went to the fallback route (the `reason` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FallbackReason {
    NoModel,
    UnknownRoute,
    Connect,
    Timeout,
    Connection,
    Status5xx,
    Status429,
    /// Semantic routing: the best topic scored below the threshold.
    BelowThreshold,
    /// Semantic routing: the request has no user text.
    NoPrompt,
}

impl FallbackReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NoModel => "no_model",
            FallbackReason::UnknownRoute => "unknown_route",
            FallbackReason::Connect => "connect",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Connection => "connection",
            FallbackReason::Status5xx => "status_5xx",
            FallbackReason::Status429 => "status_429",
            FallbackReason::BelowThreshold => "below_threshold",
            FallbackReason::NoPrompt => "no_prompt",
        }
    }
}

/// The routing decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The named route serves; `fallback` is tried if it fails before the first byte.
    Route {
        choice: Choice,
        fallback: Option<Choice>,
    },
    /// The request names no usable route: the fallback serves it.
    Fallback {
        choice: Choice,
        reason: FallbackReason,
    },
    Reject(ProxyError),
}

/// Decides where a request naming `model` (the body's `model`, if a non-empty string) goes.
pub(crate) fn decide(proxy: &CompiledProxy, model: Option<&str>) -> Decision {
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return to_fallback(
            proxy,
            None,
            FallbackReason::NoModel,
            ProxyError::MissingModel(
                "the request names no model; send \"model\": \"<route>/<model>\"".to_owned(),
            ),
        );
    };
    let (route_name, model_part) = match model.split_once('/') {
        Some((r, m)) => (r, Some(m).filter(|m| !m.is_empty())),
        None => (model, None),
    };
    // `<route>/<model>`, or a bare `<route>` with a target model, names a route; anything
    // else may be a bare model name.
    let named = proxy
        .route(route_name)
        .filter(|&i| model_part.is_some() || proxy.routes[i].target_model.is_some());
    if named.is_none()
        && let Some(index) = proxy.bare.route(model)
    {
        let upstream_model = proxy.routes[index]
            .target_model
            .clone()
            .unwrap_or_else(|| Arc::from(model));
        let fallback = fallback_choice(proxy, Some(model))
            .filter(|fb| !(fb.route == index && fb.model == upstream_model));
        return Decision::Route {
            choice: Choice {
                route: index,
                model: upstream_model,
            },
            fallback,
        };
    }
    let Some(index) = proxy.route(route_name) else {
        // `gpt-4o` (no route) or `nope/gpt-4o`: the whole model, or its model part, is what
        // the fallback is asked for when it has no target model of its own.
        let asked = if model_part.is_some() || model.contains('/') {
            model_part
        } else {
            Some(model)
        };
        return to_fallback(
            proxy,
            asked,
            FallbackReason::UnknownRoute,
            ProxyError::UnknownRoute(model.to_owned()),
        );
    };
    let route = &proxy.routes[index];
    let Some(upstream_model) = route
        .target_model
        .clone()
        .or_else(|| model_part.map(Arc::from))
    else {
        return to_fallback(
            proxy,
            None,
            FallbackReason::NoModel,
            ProxyError::MissingModel(format!(
                "route '{route_name}' has no target model: name the model as '{route_name}/<model>'"
            )),
        );
    };
    let fallback = fallback_choice(proxy, model_part)
        .filter(|fb| !(fb.route == index && fb.model == upstream_model));
    Decision::Route {
        choice: Choice {
            route: index,
            model: upstream_model,
        },
        fallback,
    }
}

fn to_fallback(
    proxy: &CompiledProxy,
    asked: Option<&str>,
    reason: FallbackReason,
    otherwise: ProxyError,
) -> Decision {
    match fallback_choice(proxy, asked) {
        Some(choice) => Decision::Fallback { choice, reason },
        None => Decision::Reject(otherwise),
    }
}

/// The fallback route with its model: the fallback's `target_model`, else the fallback
/// route's `target_model`, else the model the request asked for.
pub(crate) fn fallback_choice(proxy: &CompiledProxy, asked: Option<&str>) -> Option<Choice> {
    let fb = proxy.fallback.as_ref()?;
    let model = fb
        .target_model
        .clone()
        .or_else(|| proxy.routes[fb.route].target_model.clone())
        .or_else(|| asked.map(Arc::from))?;
    Some(Choice {
        route: fb.route,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RoutingTable;
    use crate::table::tests::{proxy, route, snapshot};
    use switchyard_model::{Fallback, Provider};

    fn compile(p: switchyard_model::Proxy) -> Arc<CompiledProxy> {
        let t = RoutingTable::compile(&snapshot(1, vec![p])).unwrap();
        t.lookup("/p").unwrap().0.clone()
    }

    fn choice(route: usize, model: &str) -> Choice {
        Choice {
            route,
            model: Arc::from(model),
        }
    }

    #[test]
    fn route_and_model_without_fallback() {
        let p = compile(proxy(
            "p",
            "/p",
            vec![
                route("openai", Provider::OpenAi, None),
                route("fixed", Provider::Nvidia, Some("llama")),
            ],
            None,
        ));
        assert_eq!(
            decide(&p, Some("openai/gpt-4.1/mini")),
            Decision::Route {
                choice: choice(0, "gpt-4.1/mini"),
                fallback: None
            }
        );
        assert_eq!(
            decide(&p, Some("fixed/whatever")),
            Decision::Route {
                choice: choice(1, "llama"),
                fallback: None
            }
        );
        assert_eq!(
            decide(&p, Some("fixed")),
            Decision::Route {
                choice: choice(1, "llama"),
                fallback: None
            }
        );
        let Decision::Reject(e) = decide(&p, Some("openai")) else {
            panic!()
        };
        assert_eq!(e.code(), "model_required");
        let Decision::Reject(e) = decide(&p, None) else {
            panic!()
        };
        assert_eq!(e.status().as_u16(), 400);
        let Decision::Reject(e) = decide(&p, Some("nope/x")) else {
            panic!()
        };
        assert_eq!((e.status().as_u16(), e.code()), (404, "model_not_found"));
        let Decision::Reject(e) = decide(&p, Some("gpt-4o")) else {
            panic!()
        };
        assert_eq!(e.code(), "model_not_found");
    }

    #[test]
    fn fallback_models() {
        // The fallback route has no target model: it is asked for the request's model part.
        let p = compile(proxy(
            "p",
            "/p",
            vec![
                route("a", Provider::OpenAi, None),
                route("b", Provider::OpenAi, None),
            ],
            Some("b"),
        ));
        assert_eq!(
            decide(&p, Some("a/m1")),
            Decision::Route {
                choice: choice(0, "m1"),
                fallback: Some(choice(1, "m1"))
            }
        );
        assert_eq!(
            decide(&p, Some("zz/m2")),
            Decision::Fallback {
                choice: choice(1, "m2"),
                reason: FallbackReason::UnknownRoute
            }
        );
        assert_eq!(
            decide(&p, Some("gpt-4o")),
            Decision::Fallback {
                choice: choice(1, "gpt-4o"),
                reason: FallbackReason::UnknownRoute
            }
        );
        // No model and no target model anywhere: nothing to ask for.
        assert!(matches!(decide(&p, None), Decision::Reject(_)));
        // The same route and model as the fallback: no second attempt.
        assert_eq!(
            decide(&p, Some("b/m1")),
            Decision::Route {
                choice: choice(1, "m1"),
                fallback: None
            }
        );

        // The fallback's own target model wins over the route's.
        let mut spec = proxy(
            "p",
            "/p",
            vec![
                route("a", Provider::OpenAi, None),
                route("b", Provider::OpenAi, Some("b-model")),
            ],
            None,
        );
        spec.spec.routing.fallback = Some(Fallback {
            route: "b".into(),
            target_model: Some("fb-model".into()),
        });
        let p = compile(spec);
        assert_eq!(
            decide(&p, None),
            Decision::Fallback {
                choice: choice(1, "fb-model"),
                reason: FallbackReason::NoModel
            }
        );
        let p = compile(proxy(
            "p",
            "/p",
            vec![
                route("a", Provider::OpenAi, None),
                route("b", Provider::OpenAi, Some("b-model")),
            ],
            Some("b"),
        ));
        assert_eq!(
            decide(&p, Some("")),
            Decision::Fallback {
                choice: choice(1, "b-model"),
                reason: FallbackReason::NoModel
            }
        );
    }

    fn with_models(mut r: switchyard_model::Route, models: &[&str]) -> switchyard_model::Route {
        r.models = models.iter().map(|m| m.to_string()).collect();
        r
    }

    #[test]
    fn bare_model_names_reach_their_route() {
        let p = compile(proxy(
            "p",
            "/p",
            vec![
                with_models(
                    route("openai", Provider::OpenAi, None),
                    &["gpt-4.1", "gpt-5*", "o4-mini"],
                ),
                with_models(
                    route("gemini", Provider::Gemini, None),
                    &["gemini-*", "gpt-5-gemini-special"],
                ),
                with_models(
                    route("nim", Provider::Nvidia, Some("meta/llama-3.1-8b-instruct")),
                    &["meta/*"],
                ),
                route("fb", Provider::OpenAi, Some("gpt-4o-mini")),
            ],
            Some("fb"),
        ));
        let routed = |model: &str| match decide(&p, Some(model)) {
            Decision::Route { choice, fallback } => (choice, fallback),
            other => panic!("{model}: {other:?}"),
        };
        // Exact, then the longest prefix; the model goes upstream as sent.
        assert_eq!(routed("gpt-4.1").0, choice(0, "gpt-4.1"));
        assert_eq!(routed("gpt-5-mini").0, choice(0, "gpt-5-mini"));
        assert_eq!(routed("gemini-2.5-flash").0, choice(1, "gemini-2.5-flash"));
        // An exact name wins over a longer prefix of another route.
        assert_eq!(
            routed("gpt-5-gemini-special").0,
            choice(1, "gpt-5-gemini-special")
        );
        // A bare name with a '/' that names no route; the target model still overrides.
        assert_eq!(
            routed("meta/llama-3.3-70b").0,
            choice(2, "meta/llama-3.1-8b-instruct")
        );
        // The fallback still stands behind a bare-named route.
        assert_eq!(routed("o4-mini").1, Some(choice(3, "gpt-4o-mini")));
        // `<route>/<model>` keeps its meaning.
        assert_eq!(routed("openai/gemini-x").0, choice(0, "gemini-x"));
        // Not listed: the fallback, as before.
        assert!(matches!(
            decide(&p, Some("claude-sonnet-4")),
            Decision::Fallback {
                reason: FallbackReason::UnknownRoute,
                ..
            }
        ));
        // A prefix matches from the start only.
        assert!(matches!(
            decide(&p, Some("x-gpt-5")),
            Decision::Fallback { .. }
        ));
    }

    #[test]
    fn a_bare_name_listed_by_two_routes_does_not_compile() {
        let p = proxy(
            "p",
            "/p",
            vec![
                with_models(route("a", Provider::OpenAi, None), &["gpt-5*"]),
                with_models(route("b", Provider::OpenAi, None), &["gpt-5*"]),
            ],
            None,
        );
        let err = RoutingTable::compile(&snapshot(1, vec![p])).unwrap_err();
        assert!(err.to_string().contains("'gpt-5*'"), "{err}");
    }
}
