-- Tenants, API keys (digests only) and the usage ledger with its rollups: the SQLite schema
-- in PostgreSQL's types (BIGINT for every count and Unix time, an identity ledger id).
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    -- Hex SHA-256 of the secret; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    tenant_id     TEXT REFERENCES tenants(id),
    -- JSON array of model names, or NULL for every model.
    models        TEXT,
    rpm           BIGINT,
    tpm           BIGINT,
    max_parallel  BIGINT,
    budget_tokens BIGINT,
    budget_period TEXT CHECK (budget_period IN ('day', 'month')),
    max_priority  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id);

CREATE TABLE usage_events (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id        TEXT NOT NULL,
    created_at_ms     BIGINT NOT NULL,
    key_id            TEXT NOT NULL DEFAULT '',
    tenant_id         TEXT NOT NULL DEFAULT '',
    model             TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
    latency_ms        BIGINT NOT NULL,
    ttft_ms           BIGINT
);
CREATE INDEX usage_events_time ON usage_events(created_at_ms);
CREATE INDEX usage_events_key ON usage_events(key_id, id);

-- One row per (width, bucket, key, tenant, model), kept in step with usage_events in the
-- same transaction, so reports and budgets never scan raw events.
CREATE TABLE usage_rollups (
    width         TEXT NOT NULL CHECK (width IN ('1m', '1h', '1d')),
    bucket_start  BIGINT NOT NULL,
    key_id        TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    model         TEXT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    requests      BIGINT NOT NULL,
    PRIMARY KEY (width, bucket_start, key_id, tenant_id, model)
);
CREATE INDEX usage_rollups_key ON usage_rollups(key_id, width, bucket_start);
