-- Usage (SQLite): one row per proxied request (raw, kept for --usage-retention), and two rollups kept
-- beside it at ingest, in the same transaction: per hour and per UTC day, keyed by every
-- dimension a report groups by. Reports read the rollups for whole days and hours and the
-- raw rows only for the parts of a range that are not on an hour boundary. Times are unix
-- milliseconds; costs are nano-USD (integers, so sums are exact).
CREATE TABLE usage_records (
    id                  TEXT PRIMARY KEY,
    at                  BIGINT NOT NULL,
    gateway             TEXT NOT NULL,
    node                TEXT NOT NULL,
    proxy_id            TEXT NOT NULL,
    proxy               TEXT NOT NULL,
    route               TEXT NOT NULL,
    model               TEXT NOT NULL,
    consumer            TEXT NOT NULL,
    provider            TEXT NOT NULL,
    status              BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    latency_us          BIGINT NOT NULL,
    ttft_us             BIGINT,
    fell_back           BIGINT NOT NULL,
    stream              BIGINT NOT NULL,
    estimated           BIGINT NOT NULL,
    received_at         BIGINT NOT NULL
);
CREATE INDEX usage_records_at ON usage_records (at);

CREATE TABLE usage_hourly (
    bucket              BIGINT NOT NULL,
    gateway             TEXT NOT NULL,
    proxy_id            TEXT NOT NULL,
    route               TEXT NOT NULL,
    model               TEXT NOT NULL,
    consumer            TEXT NOT NULL,
    proxy               TEXT NOT NULL,
    requests            BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    PRIMARY KEY (bucket, gateway, proxy_id, route, model, consumer)
);

CREATE TABLE usage_daily (
    bucket              BIGINT NOT NULL,
    gateway             TEXT NOT NULL,
    proxy_id            TEXT NOT NULL,
    route               TEXT NOT NULL,
    model               TEXT NOT NULL,
    consumer            TEXT NOT NULL,
    proxy               TEXT NOT NULL,
    requests            BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    PRIMARY KEY (bucket, gateway, proxy_id, route, model, consumer)
);
