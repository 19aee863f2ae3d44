-- Named semantic services (remote OpenAI-compatible /embeddings endpoints), referenced by
-- proxies by name. `api_key` is encrypted by the control plane (NULL: no key).
CREATE TABLE semantic_services (
    name       TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    model      TEXT NOT NULL,
    api_key    TEXT,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The service a proxy names (also in its spec): a proxy cannot name a missing service, and a
-- service cannot be deleted while a proxy names it.
ALTER TABLE proxies ADD COLUMN semantic_service TEXT REFERENCES semantic_services (name);
CREATE INDEX proxies_semantic_service ON proxies (semantic_service);

-- Proxies written before services were named carried an inline definition: each becomes a
-- service of its own, `proxy-<first 12 hex digits of the proxy id>`, keeping the encrypted key.
INSERT INTO semantic_services (name, url, model, api_key, version, created_at, updated_at)
SELECT 'proxy-' || substr(replace(id, '-', ''), 1, 12),
       json_extract(spec, '$.semantic_service.url'),
       json_extract(spec, '$.semantic_service.model'),
       json_extract(spec, '$.semantic_service.api_key'),
       1, updated_at, updated_at
FROM proxies
WHERE json_type(spec, '$.semantic_service') = 'object';

UPDATE proxies
SET semantic_service = 'proxy-' || substr(replace(id, '-', ''), 1, 12),
    spec = json_set(spec, '$.semantic_service', 'proxy-' || substr(replace(id, '-', ''), 1, 12))
WHERE json_type(spec, '$.semantic_service') = 'object';
