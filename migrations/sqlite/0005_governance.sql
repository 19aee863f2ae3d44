-- Governance: consumers (client applications) and their keys, and the price table.
-- Timestamps are unix milliseconds.

-- A consumer's spec is its admin JSON (proxies, rate limits, budget, metadata). The proxies
-- it may call are also rows of consumer_proxies (the source of truth: a deleted proxy drops
-- out of every consumer), or all_proxies = 1 for "*".
CREATE TABLE consumers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    all_proxies INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE consumer_proxies (
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    proxy_id    TEXT NOT NULL REFERENCES proxies (id) ON DELETE CASCADE,
    PRIMARY KEY (consumer_id, proxy_id)
);
CREATE INDEX consumer_proxies_proxy ON consumer_proxies (proxy_id);

-- Keys are kept as the hex SHA-256 of the whole key; the secret itself is never stored.
-- A revoked key keeps its row (revoked_at set) so that what it did stays attributable.
CREATE TABLE consumer_keys (
    id           TEXT PRIMARY KEY,
    consumer_id  TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX consumer_keys_consumer ON consumer_keys (consumer_id);

-- USD per million tokens; cached_input_per_mtok NULL: cached input costs as much as input.
CREATE TABLE prices (
    model                 TEXT PRIMARY KEY,
    input_per_mtok        REAL NOT NULL,
    output_per_mtok       REAL NOT NULL,
    cached_input_per_mtok REAL,
    updated_at            INTEGER NOT NULL
);

-- Which models of the bundled price list were seeded already: each is seeded once, so an
-- admin's DELETE or PUT of a seeded price is never undone at a later start, while models a
-- newer release adds to the list are seeded when it first starts.
CREATE TABLE price_seeds (
    model     TEXT PRIMARY KEY,
    seeded_at INTEGER NOT NULL
);
