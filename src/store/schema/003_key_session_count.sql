-- 003_key_session_count: how many sessions each API key owns, for
-- MAX_SESSIONS_PER_KEY, kept by triggers so that no caller can forget it and
-- nothing is counted by scanning at request time.
--
-- The trigger bodies are SQLite syntax; a PostgreSQL backend writes the same
-- triggers in PL/pgSQL.

ALTER TABLE api_keys ADD COLUMN session_count BIGINT NOT NULL DEFAULT 0;

UPDATE api_keys SET session_count = (SELECT COUNT(*) FROM sessions WHERE sessions.owner = api_keys.id);

CREATE TRIGGER sessions_owner_insert AFTER INSERT ON sessions
WHEN NEW.owner IS NOT NULL
BEGIN
    UPDATE api_keys SET session_count = session_count + 1 WHERE id = NEW.owner;
END;

CREATE TRIGGER sessions_owner_delete AFTER DELETE ON sessions
WHEN OLD.owner IS NOT NULL
BEGIN
    UPDATE api_keys SET session_count = session_count - 1 WHERE id = OLD.owner;
END;
