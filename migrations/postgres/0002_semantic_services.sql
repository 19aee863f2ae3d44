-- Named semantic services (remote OpenAI-compatible /embeddings endpoints), referenced by
-- proxies by name. `api_key` is encrypted by the control plane (NULL: no key).
CREATE TABLE semantic_services (
    name       TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    model      TEXT NOT NULL,
    api_key    TEXT,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The service a proxy names (also in its spec): a proxy cannot name a missing service, and a
-- service cannot be deleted while a proxy names it.
ALTER TABLE proxies ADD COLUMN semantic_service TEXT REFERENCES semantic_services (name);
CREATE INDEX proxies_semantic_service ON proxies (semantic_service);

-- Proxies written before services were named carried an inline definition: each becomes a
-- service of its own, `proxy-<first 12 hex digits of the proxy id>`, keeping the encrypted key.
INSERT INTO semantic_services (name, url, model, api_key, version, created_at, updated_at)
SELECT 'proxy-' || substr(replace(id, '-', ''), 1, 12),
       spec::jsonb #>> '{semantic_service,url}',
       spec::jsonb #>> '{semantic_service,model}',
       spec::jsonb #>> '{semantic_service,api_key}',
       1, updated_at, updated_at
FROM proxies
WHERE jsonb_typeof(spec::jsonb -> 'semantic_service') = 'object';

UPDATE proxies
SET semantic_service = 'proxy-' || substr(replace(id, '-', ''), 1, 12),
    spec = jsonb_set(spec::jsonb, '{semantic_service}',
                     to_jsonb('proxy-' || substr(replace(id, '-', ''), 1, 12)))::text
WHERE jsonb_typeof(spec::jsonb -> 'semantic_service') = 'object';
