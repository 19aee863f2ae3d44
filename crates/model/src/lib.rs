//! Switchyard's domain: gateways, proxies, routes, topics, the limits that bound them, and
//! the validation that turns strict admin input into a validated [`ProxySpec`].
//!
//! Shared by both planes. It knows no HTTP server, SQL or gRPC transport; the only wire types
//! it touches are the generated snapshot messages of `switchyard-proto`, through explicit,
//! fallible conversions in [`snapshot`].
#![forbid(unsafe_code)]

mod cache;
mod error;
pub mod governance;
mod input;
mod limits;
mod names;
mod secret;
mod selector;
mod service;
pub mod snapshot;
mod spec;
mod topic;
pub mod usage;

pub use cache::{
    CacheScope, DEFAULT_CACHE_THRESHOLD, ExactCache, ResponseCache, ResponseCacheInput,
    SemanticCache,
};
pub use error::{ErrorCode, ValidationError};
pub use governance::{
    Budget, BudgetPeriod, ClientAuth, Consumer, ConsumerKey, ConsumerProxies, ConsumerSpec,
    LimitAmount, LimitKey, NodeConsumer, NodeKey, Price, RateLimit, Window,
};
pub use input::{ProxyInput, REGEX_SIZE_LIMIT, compile_guard_regex, parse_proxy_input};
pub use limits::Limits;
pub use names::{RESERVED_PATHS, validate_gateway_name};
pub use secret::{REDACTED, Secret};
pub use selector::{Selector, SelectorSource};
pub use service::{SemanticServiceInput, parse_semantic_service_input};
pub use spec::{
    Auth, DEFAULT_SEMANTIC_THRESHOLD, Fallback, Format, GuardScope, LibraryTopic, PromptGuard,
    Provider, Proxy, ProxySpec, RegexGuard, RegexPattern, Route, Routing, RoutingScoring,
    RoutingStrategy, SemanticService, Topic, TopicSource,
};
pub use topic::{
    LibraryTopicInput, MAX_DESCRIPTION_CHARS, parse_library_topic_input, parse_utterance_lines,
    validate_topic_name, validate_utterances,
};
