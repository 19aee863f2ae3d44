use serde::{Deserialize, Serialize};

/// The limits enforced on every admin write. The defaults are the contract's; the control
/// plane may be started with higher ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub proxies_per_gateway: usize,
    pub routes_per_proxy: usize,
    pub topics_per_proxy: usize,
    pub utterances_per_topic: usize,
    pub deny_topics_per_proxy: usize,
    pub utterances_per_deny_topic: usize,
    pub chars_per_utterance: usize,
    /// Named patterns of a proxy's regex prompt guard.
    #[serde(default = "default_regex_patterns")]
    pub regex_patterns_per_proxy: usize,
    /// Characters per regex pattern (each is also compiled with a bounded program size).
    #[serde(default = "default_regex_chars")]
    pub chars_per_regex_pattern: usize,
    /// Topics in the prompt topic library.
    #[serde(default = "default_library_topics")]
    pub library_topics: usize,
    /// Utterances per library topic.
    #[serde(default = "default_library_utterances")]
    pub utterances_per_library_topic: usize,
    /// Library topics a proxy's routes refer to (besides its inline topics), and, separately,
    /// library topics its deny list refers to.
    #[serde(default = "default_library_refs")]
    pub library_topics_per_proxy: usize,
    /// Rate limits of one proxy or one consumer.
    #[serde(default = "default_rate_limits")]
    pub rate_limits_per_owner: usize,
    /// Proxies a consumer names (besides `*`, every proxy).
    #[serde(default = "default_consumer_proxies")]
    pub proxies_per_consumer: usize,
}

fn default_rate_limits() -> usize {
    Limits::default().rate_limits_per_owner
}

fn default_consumer_proxies() -> usize {
    Limits::default().proxies_per_consumer
}

fn default_library_topics() -> usize {
    Limits::default().library_topics
}

fn default_library_utterances() -> usize {
    Limits::default().utterances_per_library_topic
}

fn default_library_refs() -> usize {
    Limits::default().library_topics_per_proxy
}

fn default_regex_patterns() -> usize {
    Limits::default().regex_patterns_per_proxy
}

fn default_regex_chars() -> usize {
    Limits::default().chars_per_regex_pattern
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            proxies_per_gateway: 50,
            routes_per_proxy: 64,
            topics_per_proxy: 6,
            utterances_per_topic: 10,
            deny_topics_per_proxy: 6,
            utterances_per_deny_topic: 10,
            chars_per_utterance: 500,
            regex_patterns_per_proxy: 20,
            chars_per_regex_pattern: 1000,
            library_topics: 1000,
            utterances_per_library_topic: 2000,
            library_topics_per_proxy: 16,
            rate_limits_per_owner: 16,
            proxies_per_consumer: 1000,
        }
    }
}
