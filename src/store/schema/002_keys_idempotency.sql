-- 002_keys_idempotency: API keys (with usage totals) and idempotency records.
--
-- Same rules as 001_init: applied inside the store's migration transaction, no
-- BEGIN/COMMIT here, plain types that PostgreSQL accepts as well. Times are
-- milliseconds since the Unix epoch (UTC).

-- API keys. The secret is never stored: only the hex SHA-256 of it, which is
-- what authentication looks up (hence UNIQUE: one secret, one key). Names are
-- labels for people and may repeat.
CREATE TABLE api_keys (
    id                 TEXT    NOT NULL PRIMARY KEY,   -- public id, e.g. "key_" + 16 hex digits
    name               TEXT    NOT NULL,
    hash               TEXT    NOT NULL UNIQUE,        -- lowercase hex SHA-256 of the secret
    role               TEXT    NOT NULL CHECK (role IN ('user', 'admin')),
    rate_limit         TEXT,                           -- spec like "60/minute"; NULL: the server default
    created_at         BIGINT  NOT NULL,
    revoked_at         BIGINT,                         -- NULL while the key is active
    last_used_at       BIGINT,                         -- NULL until first use (coarse: see store_key_touch)
    -- Totals over the turns this key made, kept by the turn commit; unknown (-1) counts as 0.
    turn_count         BIGINT  NOT NULL DEFAULT 0,
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_micros        BIGINT  NOT NULL DEFAULT 0
);

-- `chatd keys revoke NAME` looks keys up by name.
CREATE INDEX api_keys_name_idx ON api_keys (name);

-- One row per (scope, Idempotency-Key). scope is the API key id, or '' when
-- auth is off, so that two clients cannot see each other's keys.
--
-- A row is 'running' while its first request runs: expires_at is then a short
-- lease (refreshed with the turn lock), so that a row left by a killed process
-- stops blocking retries. 'done' rows carry what a retry replays until
-- expires_at (e.g. 24 h): either the turn committed by store_turn_commit (the
-- reply_* snapshot below, written in the same transaction as the messages, so
-- that a committed turn always replays, even after a crash, a reset or a
-- delete of its session), or a status and body set by store_idem_finish.
CREATE TABLE idempotency (
    scope              TEXT    NOT NULL,
    key                TEXT    NOT NULL,
    body_hash          TEXT    NOT NULL,               -- hash of the request body, chosen by the caller
    state              TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    token              TEXT    NOT NULL,               -- the attempt that owns the row (its turn lock token)
    status             BIGINT,                         -- done: HTTP status to replay
    response           TEXT,                           -- done by store_idem_finish: the body to replay
    session_id         TEXT,
    created_at         BIGINT  NOT NULL,
    expires_at         BIGINT  NOT NULL,               -- running: lease end; done: end of replay
    -- done by store_turn_commit: the session's turn count after the turn, and a
    -- copy of the assistant message as committed (same meaning as in messages).
    turn_count         BIGINT,
    reply_id           BIGINT,                         -- messages.id of the assistant message
    reply_seq          BIGINT,
    reply_content      TEXT,
    reply_status       TEXT,
    reply_model        TEXT,
    reply_stop_reason  TEXT,
    reply_tokens       BIGINT,
    input_tokens       BIGINT,
    output_tokens      BIGINT,
    cache_read_tokens  BIGINT,
    cache_write_tokens BIGINT,
    cost_micros        BIGINT,
    reply_created_at   BIGINT,
    PRIMARY KEY (scope, key)
);

-- The expiry sweep.
CREATE INDEX idempotency_expires_idx ON idempotency (expires_at);
