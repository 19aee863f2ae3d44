-- Switchyard control-plane schema (SQLite). Timestamps are unix milliseconds.
CREATE TABLE gateways (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    token_hash     TEXT NOT NULL,
    config_version INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);

CREATE TABLE proxies (
    id         TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL REFERENCES gateways (id),
    name       TEXT NOT NULL,
    base_path  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    CONSTRAINT proxies_name_unique UNIQUE (gateway_id, name),
    CONSTRAINT proxies_base_path_unique UNIQUE (gateway_id, base_path)
);
CREATE INDEX proxies_gateway ON proxies (gateway_id);

CREATE TABLE nodes (
    gateway_id       TEXT NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    node_id          TEXT NOT NULL,
    address          TEXT NOT NULL,
    software_version TEXT NOT NULL,
    connected        INTEGER NOT NULL,
    applied_version  INTEGER,
    last_error       TEXT,
    last_seen        INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, node_id)
);
