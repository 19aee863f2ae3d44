-- Named admin tokens with roles, and the audit trail of every admin write.
-- Timestamps are unix milliseconds. Independent of every other migration's tables, so it may
-- be applied before or after 0006 (sqlx applies whichever numbered file is missing).

-- The command line's --admin-token is the built-in admin `bootstrap` and is not stored.
-- Tokens are kept as the hex SHA-256 of the whole token; the secret is never stored. A
-- revoked token keeps its row (revoked_at set), so its name stays attributable in the audit
-- trail; a live name is unique.
CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    gateways     TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE UNIQUE INDEX admin_tokens_live_name ON admin_tokens (name) WHERE revoked_at IS NULL;

-- One row per admin write, appended in the write's own transaction. before_state and
-- after_state are JSON with every secret as "***" (NULL: the resource did not exist).
CREATE TABLE audit_log (
    id           BIGSERIAL PRIMARY KEY,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    resource     TEXT NOT NULL,
    before_state TEXT,
    after_state  TEXT,
    request_id   TEXT
);
-- Read newest first by (at, id), whatever the filter.
CREATE INDEX audit_log_at ON audit_log (at, id);
CREATE INDEX audit_log_resource ON audit_log (resource, at, id);
CREATE INDEX audit_log_actor ON audit_log (actor, at, id);
