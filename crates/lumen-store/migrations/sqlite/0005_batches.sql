-- Files (uploads and batch results) and batch jobs with one row per input line.
-- `owner` is the tenant (or, for a key without one, `key:<id>`; empty on an open server):
-- every lookup filters on it, so another tenant's ids are simply not found.
CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX files_owner ON files(owner, created_at);

CREATE TABLE batches (
    id                TEXT PRIMARY KEY,
    owner             TEXT NOT NULL,
    -- The store key that created it (empty: a static key or an open server): items run as it.
    key_id            TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    input_file_id     TEXT NOT NULL,
    output_file_id    TEXT,
    error_file_id     TEXT,
    status            TEXT NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress',
                        'finalizing', 'completed', 'expired', 'cancelling', 'cancelled')),
    completion_window TEXT NOT NULL,
    -- JSON object (OpenAI's metadata), or NULL.
    metadata          TEXT,
    -- JSON array of validation errors ({code, message, line}), or NULL.
    errors            TEXT,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    in_progress_at    INTEGER,
    finalizing_at     INTEGER,
    completed_at      INTEGER,
    failed_at         INTEGER,
    expired_at        INTEGER,
    cancelling_at     INTEGER,
    cancelled_at      INTEGER,
    total             INTEGER NOT NULL DEFAULT 0,
    completed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX batches_owner ON batches(owner, created_at);
CREATE INDEX batches_status ON batches(status);

-- One row per input line. `state`: pending, running (leased to `lease_owner` until
-- `lease_expires_ms`), done (answered: `outcome` ok / error / expired, `result` the output
-- or error line) or cancelled (never run). A row turns `done` exactly once.
CREATE TABLE batch_items (
    batch_id          TEXT NOT NULL REFERENCES batches(id),
    line              INTEGER NOT NULL,
    custom_id         TEXT NOT NULL,
    body              TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'cancelled')),
    lease_owner       TEXT,
    lease_expires_ms  INTEGER,
    outcome           TEXT CHECK (outcome IN ('ok', 'error', 'expired')),
    result            TEXT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX batch_items_state ON batch_items(state, batch_id);

-- A batch item's usage event names its batch and line.
ALTER TABLE usage_events ADD COLUMN batch_id TEXT;
ALTER TABLE usage_events ADD COLUMN custom_id TEXT;
