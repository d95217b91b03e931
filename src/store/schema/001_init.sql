-- 001_init: sessions, messages, turn locks and the global stats row.
--
-- Applied by the store inside one BEGIN IMMEDIATE transaction, together with its
-- row in schema_version (which the store creates itself before any migration).
-- A migration must not contain BEGIN/COMMIT.
--
-- The logical schema is meant to be shared with a future PostgreSQL backend:
-- plain TEXT and BIGINT columns, standard constraints. The one SQLite-specific
-- spelling is messages.id (see there). Times are milliseconds since the Unix
-- epoch (UTC); token counts and costs (micro-dollars) are integers.

CREATE TABLE sessions (
    id                 TEXT    NOT NULL PRIMARY KEY,
    owner              TEXT,                         -- API key id that created it; NULL when auth is off
    system_prompt      TEXT,                         -- fixed by the first turn
    model              TEXT,                         -- model of the last committed turn
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,             -- last commit or reset (drives retention)
    turn_count         BIGINT  NOT NULL DEFAULT 0,   -- since the last reset
    message_count      BIGINT  NOT NULL DEFAULT 0,   -- rows in messages for this session
    -- Totals over every turn ever committed (kept across resets); unknown (-1) counts as 0.
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_micros        BIGINT  NOT NULL DEFAULT 0
);

-- Cursor pagination, newest first: (created_at, id) is the cursor key. PostgreSQL
-- must compare id with COLLATE "C" to order ids as SQLite's BINARY collation does.
CREATE INDEX sessions_created_idx ON sessions (created_at DESC, id DESC);
CREATE INDEX sessions_owner_created_idx ON sessions (owner, created_at DESC, id DESC);
-- The retention sweeper scans by idle time.
CREATE INDEX sessions_updated_idx ON sessions (updated_at);

CREATE TABLE messages (
    -- Globally unique and increasing, never reused after deletes (hence
    -- AUTOINCREMENT rather than a plain rowid alias). PostgreSQL:
    -- id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY.
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq                BIGINT  NOT NULL,             -- 1, 2, ... within the session (restarts after a reset)
    role               TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    content            TEXT    NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('complete', 'incomplete')),
    model              TEXT,                         -- assistant messages only
    stop_reason        TEXT,                         -- assistant messages only
    tokens             BIGINT  NOT NULL DEFAULT -1,  -- context cost of this message, -1 unknown
    input_tokens       BIGINT  NOT NULL DEFAULT -1,  -- provider usage (assistant), -1 unknown
    output_tokens      BIGINT  NOT NULL DEFAULT -1,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT -1,
    cache_write_tokens BIGINT  NOT NULL DEFAULT -1,
    cost_micros        BIGINT  NOT NULL DEFAULT 0,
    created_at         BIGINT  NOT NULL,
    -- Also the index that lists a session's messages in order (and serves the
    -- foreign key's cascade).
    UNIQUE (session_id, seq)
);

-- One row per session with a turn in progress. No foreign key: a lock is taken
-- before the session's first turn creates it.
CREATE TABLE turn_locks (
    session_id         TEXT    NOT NULL PRIMARY KEY,
    token              TEXT    NOT NULL,
    expires_at         BIGINT  NOT NULL
);

-- Global counters, one row, updated in the same transaction as the data they
-- count. total_* equal what a scan of sessions/messages would give; the usage
-- and cost totals cover every turn ever committed (deletes do not refund them).
CREATE TABLE stats (
    id                 INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    total_sessions     BIGINT  NOT NULL DEFAULT 0,
    total_messages     BIGINT  NOT NULL DEFAULT 0,
    total_turns        BIGINT  NOT NULL DEFAULT 0,
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_micros        BIGINT  NOT NULL DEFAULT 0
);

INSERT INTO stats (id) VALUES (1);
