-- The prompt topic library: named topics with up to thousands of utterances (a JSON array of
-- strings), referenced by proxies from routes and deny lists (`{"ref": "<name>"}`).
CREATE TABLE topics (
    name            TEXT PRIMARY KEY,
    description     TEXT NOT NULL,
    utterances      TEXT NOT NULL,
    utterance_count INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- Which proxy refers to which library topic (also in its spec): a proxy cannot name a missing
-- topic, a topic cannot be deleted while a proxy names it, and a topic's update finds the
-- gateways to notify.
CREATE TABLE proxy_topics (
    proxy_id TEXT NOT NULL REFERENCES proxies (id) ON DELETE CASCADE,
    topic    TEXT NOT NULL REFERENCES topics (name),
    PRIMARY KEY (proxy_id, topic)
);
CREATE INDEX proxy_topics_topic ON proxy_topics (topic);
