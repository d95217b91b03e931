-- 001_init (PostgreSQL): the logical schema of SQLite's 001_init, 002_keys_idempotency
-- and 003_key_session_count in one step: sessions, messages, turn locks, the global
-- counters, API keys (with the session_count triggers) and idempotency records.
--
-- Applied by store_open (src/store/postgres.c) inside one transaction that holds
-- pg_advisory_xact_lock, together with its row in schema_version. A migration must
-- not contain BEGIN/COMMIT. The column meanings are those of the SQLite files
-- (src/store/schema/); only what differs is explained here.
--
-- Ids that are ordered (sessions listed by (created_at, id), keys by
-- (created_at, id)) are COLLATE "C", so that the order and the cursor comparisons
-- are bytewise, as with SQLite's BINARY collation, whatever the database locale.

CREATE TABLE sessions (
    id                 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner              TEXT COLLATE "C",
    system_prompt      TEXT,
    model              TEXT,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    turn_count         BIGINT  NOT NULL DEFAULT 0,
    message_count      BIGINT  NOT NULL DEFAULT 0,
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_micros        BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX sessions_created_idx ON sessions (created_at DESC, id DESC);
CREATE INDEX sessions_owner_created_idx ON sessions (owner, created_at DESC, id DESC);
CREATE INDEX sessions_updated_idx ON sessions (updated_at);

CREATE TABLE messages (
    -- Never reused after deletes (a sequence only moves forward).
    id                 BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id         TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq                BIGINT  NOT NULL,
    role               TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    content            TEXT    NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('complete', 'incomplete')),
    model              TEXT,
    stop_reason        TEXT,
    tokens             BIGINT  NOT NULL DEFAULT -1,
    input_tokens       BIGINT  NOT NULL DEFAULT -1,
    output_tokens      BIGINT  NOT NULL DEFAULT -1,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT -1,
    cache_write_tokens BIGINT  NOT NULL DEFAULT -1,
    cost_micros        BIGINT  NOT NULL DEFAULT 0,
    created_at         BIGINT  NOT NULL,
    UNIQUE (session_id, seq)
);

CREATE TABLE turn_locks (
    session_id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    token              TEXT    NOT NULL,
    expires_at         BIGINT  NOT NULL
);
-- The sweep of expired locks.
CREATE INDEX turn_locks_expires_idx ON turn_locks (expires_at);

-- Global counters. SQLite has one row; here the counters are split over 16
-- rows (shards), each write adding to the shard of its connection
-- (pg_backend_pid() % 16) and a read summing them. A single row would be held
-- locked by every turn commit until its transaction commits, so that every
-- commit of every instance would queue behind the previous one; with shards,
-- concurrent connections mostly update different rows. Each shard's numbers are
-- deltas; only the sums mean something, and the sums are exact.
CREATE TABLE stats (
    id                 INTEGER NOT NULL PRIMARY KEY CHECK (id >= 0 AND id < 16),
    total_sessions     BIGINT  NOT NULL DEFAULT 0,
    total_messages     BIGINT  NOT NULL DEFAULT 0,
    total_turns        BIGINT  NOT NULL DEFAULT 0,
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_micros        BIGINT  NOT NULL DEFAULT 0
);

INSERT INTO stats (id) SELECT generate_series(0, 15);

CREATE TABLE api_keys (
    id                 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name               TEXT    NOT NULL,
    hash               TEXT    NOT NULL UNIQUE,
    role               TEXT    NOT NULL CHECK (role IN ('user', 'admin')),
    rate_limit         TEXT,
    created_at         BIGINT  NOT NULL,
    revoked_at         BIGINT,
    last_used_at       BIGINT,
    turn_count         BIGINT  NOT NULL DEFAULT 0,
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_micros        BIGINT  NOT NULL DEFAULT 0,
    -- Sessions owned by the key, kept by the triggers below (SQLite's 003).
    session_count      BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX api_keys_name_idx ON api_keys (name);

CREATE TABLE idempotency (
    scope              TEXT    NOT NULL,
    key                TEXT    NOT NULL,
    body_hash          TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    token              TEXT    NOT NULL,
    status             BIGINT,
    response           TEXT,
    session_id         TEXT,
    created_at         BIGINT  NOT NULL,
    expires_at         BIGINT  NOT NULL,
    turn_count         BIGINT,
    reply_id           BIGINT,
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

CREATE INDEX idempotency_expires_idx ON idempotency (expires_at);

-- SQLite's 003 triggers. A key created after its sessions starts at 0, as there.
CREATE FUNCTION chatd_sessions_owner_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE api_keys SET session_count = session_count + 1 WHERE id = NEW.owner;
        RETURN NEW;
    END IF;
    UPDATE api_keys SET session_count = session_count - 1 WHERE id = OLD.owner;
    RETURN OLD;
END
$$;

CREATE TRIGGER sessions_owner_insert AFTER INSERT ON sessions
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL) EXECUTE FUNCTION chatd_sessions_owner_count();

CREATE TRIGGER sessions_owner_delete AFTER DELETE ON sessions
    FOR EACH ROW WHEN (OLD.owner IS NOT NULL) EXECUTE FUNCTION chatd_sessions_owner_count();
