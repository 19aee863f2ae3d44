-- Switchyard control-plane schema (PostgreSQL). Timestamps are unix milliseconds.
CREATE TABLE gateways (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    token_hash     TEXT NOT NULL,
    config_version BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE proxies (
    id         TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL REFERENCES gateways (id),
    name       TEXT NOT NULL,
    base_path  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT proxies_name_unique UNIQUE (gateway_id, name),
    CONSTRAINT proxies_base_path_unique UNIQUE (gateway_id, base_path)
);
CREATE INDEX proxies_gateway ON proxies (gateway_id);

CREATE TABLE nodes (
    gateway_id       TEXT NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    node_id          TEXT NOT NULL,
    address          TEXT NOT NULL,
    software_version TEXT NOT NULL,
    connected        BIGINT NOT NULL,
    applied_version  BIGINT,
    last_error       TEXT,
    last_seen        BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, node_id)
);
