-- 003_blocks_blobs (PostgreSQL): rich message content and its images, as
-- SQLite's 004_blocks_blobs (src/store/schema/, where the columns are
-- explained): messages.blocks, idempotency.reply_blocks, blobs (one row per
-- image, keyed by the SHA-256 of its bytes, holding its base64 text) and
-- message_blobs (which message references which blob). The functions of
-- 002_ops that write or remove messages are replaced to keep them.
--
-- Locks. Blob rows come last in the order of 002_ops:
--     turn_locks -> idempotency -> sessions -> api_keys -> stats (one shard) -> blobs
-- every function takes them after everything else, in ascending sha256 order.
-- A writer that references a blob holds it FOR KEY SHARE (writers that share an
-- image do not wait for each other); a remover takes the candidates FOR UPDATE,
-- then deletes those no message links in a later statement (a fresh snapshot),
-- so a blob is never removed under a reference being committed, and a
-- reference never points at a removed blob (the foreign key would refuse it).

ALTER TABLE messages ADD COLUMN blocks text;
ALTER TABLE idempotency ADD COLUMN reply_blocks text;

CREATE TABLE blobs (
    sha256             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    media_type         TEXT    NOT NULL,
    data               TEXT    NOT NULL,
    bytes              BIGINT  NOT NULL,
    created_at         BIGINT  NOT NULL
);

CREATE TABLE message_blobs (
    message_id         BIGINT  NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    sha256             TEXT COLLATE "C" NOT NULL REFERENCES blobs (sha256),
    PRIMARY KEY (message_id, sha256)
);

CREATE INDEX message_blobs_sha256_idx ON message_blobs (sha256);

-- Makes sure every blob of p_blobs exists and holds each FOR KEY SHARE until
-- the transaction ends. p_blobs: [[sha256, media_type, data, bytes], ...],
-- distinct, in ascending sha256 order (store/blocks.c sorts them). A blob
-- removed by a concurrent remover between our insert and our lock is inserted
-- again (the loop).
CREATE FUNCTION chatd_blobs_keep(p_blobs jsonb, p_now bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_shas text[];
    v_locked integer;
BEGIN
    IF p_blobs IS NULL OR jsonb_array_length(p_blobs) = 0 THEN
        RETURN;
    END IF;
    SELECT array_agg(e.j->>0 ORDER BY e.n) INTO v_shas
      FROM jsonb_array_elements(p_blobs) WITH ORDINALITY AS e(j, n);
    FOR v_try IN 1..10 LOOP
        INSERT INTO blobs (sha256, media_type, data, bytes, created_at)
        SELECT e.j->>0, e.j->>1, e.j->>2, (e.j->>3)::bigint, p_now
          FROM jsonb_array_elements(p_blobs) WITH ORDINALITY AS e(j, n)
         ORDER BY e.n
        ON CONFLICT (sha256) DO NOTHING;
        SELECT count(*) INTO v_locked FROM (
            SELECT 1 FROM blobs AS b WHERE b.sha256 = ANY (v_shas)
             ORDER BY b.sha256 FOR KEY SHARE) AS x;
        IF v_locked = cardinality(v_shas) THEN
            RETURN;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'chatd_blobs_keep: blobs removed as fast as they are inserted';
END
$$;

-- Removes the blobs among p_shas that no message links any more (their links
-- are already deleted in this transaction).
CREATE FUNCTION chatd_blobs_drop_unused(p_shas text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_shas IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM blobs AS b WHERE b.sha256 = ANY (p_shas) ORDER BY b.sha256 FOR UPDATE;
    DELETE FROM blobs AS b
     WHERE b.sha256 = ANY (p_shas)
       AND NOT EXISTS (SELECT 1 FROM message_blobs AS mb WHERE mb.sha256 = b.sha256);
END
$$;

-- The blob hashes the messages of the sessions p_ids link, distinct (NULL: none).
CREATE FUNCTION chatd_session_blobs(p_ids text[]) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(DISTINCT mb.sha256)
      FROM messages AS m JOIN message_blobs AS mb ON mb.message_id = m.id
     WHERE m.session_id = ANY (p_ids)
$$;

-- store_turn_commit, as in 002_ops, with the blocks of both messages
-- (p_user_blocks, p_assistant_blocks: stored form, NULL for plain text), the
-- reply's blocks whole for the idempotency record (p_reply_blocks), the images
-- (p_blobs, as chatd_blobs_keep takes them) and which message references which
-- (p_user_refs, p_assistant_refs: sha256 arrays).
DROP FUNCTION chatd_turn_commit(text, text, text, text, text, text, text, text, text, bigint, bigint, bigint,
                                bigint, bigint, bigint, text, bigint, text, text, bigint);
CREATE FUNCTION chatd_turn_commit(
    p_sid text, p_owner text, p_system text, p_model text, p_session_model text,
    p_user text, p_assistant text, p_status text, p_stop text, p_user_tokens bigint,
    p_in bigint, p_out bigint, p_cr bigint, p_cw bigint, p_cost bigint,
    p_token text, p_now bigint, p_idem_scope text, p_idem_key text, p_idem_expires bigint,
    p_user_blocks text, p_assistant_blocks text, p_reply_blocks text, p_blobs jsonb,
    p_user_refs text[], p_assistant_refs text[],
    OUT r_rc text, OUT r_user_id bigint, OUT r_assistant_id bigint,
    OUT r_turn_count bigint, OUT r_message_count bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_created integer := 0;
    v_seq bigint;
    k_in bigint := greatest(p_in, 0);
    k_out bigint := greatest(p_out, 0);
    k_cr bigint := greatest(p_cr, 0);
    k_cw bigint := greatest(p_cw, 0);
BEGIN
    -- The token must hold the lock, and keeps holding it until we commit: the
    -- row lock makes a concurrent acquire (takeover) or sweep wait for us, or
    -- makes us see its result (then the token no longer holds it).
    PERFORM 1 FROM turn_locks AS l WHERE l.session_id = p_sid AND l.token = p_token FOR UPDATE;
    IF NOT FOUND THEN
        r_rc := 'conflict';
        RETURN;
    END IF;
    IF p_idem_key IS NOT NULL THEN
        PERFORM 1 FROM idempotency AS i
         WHERE i.scope = p_idem_scope AND i.key = p_idem_key AND i.token = p_token
           AND i.state = 'running'
           FOR UPDATE;
        IF NOT FOUND THEN
            r_rc := 'conflict';
            RETURN;
        END IF;
    END IF;

    -- Update the session, or create it with this first turn. The loop covers a
    -- session deleted between the two statements (not a takeover: the lock is ours).
    LOOP
        UPDATE sessions AS s
           SET model = p_session_model, updated_at = p_now,
               turn_count = s.turn_count + 1, message_count = s.message_count + 2,
               input_tokens = s.input_tokens + k_in, output_tokens = s.output_tokens + k_out,
               cache_read_tokens = s.cache_read_tokens + k_cr,
               cache_write_tokens = s.cache_write_tokens + k_cw,
               cost_micros = s.cost_micros + p_cost
         WHERE s.id = p_sid
        RETURNING s.turn_count, s.message_count INTO r_turn_count, r_message_count;
        EXIT WHEN FOUND;
        INSERT INTO sessions AS s (id, owner, system_prompt, model, created_at, updated_at,
                                   turn_count, message_count, input_tokens, output_tokens,
                                   cache_read_tokens, cache_write_tokens, cost_micros)
        VALUES (p_sid, p_owner, p_system, p_session_model, p_now, p_now, 1, 2,
                k_in, k_out, k_cr, k_cw, p_cost)
        ON CONFLICT (id) DO NOTHING
        RETURNING s.turn_count, s.message_count INTO r_turn_count, r_message_count;
        IF FOUND THEN
            v_created := 1;
            EXIT;
        END IF;
    END LOOP;

    -- The session row is ours until commit: nobody else appends meanwhile.
    SELECT COALESCE(MAX(m.seq), 0) INTO v_seq FROM messages AS m WHERE m.session_id = p_sid;
    INSERT INTO messages (session_id, seq, role, content, status, model, stop_reason, tokens,
                          input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                          cost_micros, created_at, blocks)
    VALUES (p_sid, v_seq + 1, 'user', p_user, 'complete', NULL, NULL, p_user_tokens,
            -1, -1, -1, -1, 0, p_now, p_user_blocks)
    RETURNING id INTO r_user_id;
    INSERT INTO messages (session_id, seq, role, content, status, model, stop_reason, tokens,
                          input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                          cost_micros, created_at, blocks)
    VALUES (p_sid, v_seq + 2, 'assistant', p_assistant, p_status, p_model, p_stop, p_out,
            p_in, p_out, p_cr, p_cw, p_cost, p_now, p_assistant_blocks)
    RETURNING id INTO r_assistant_id;

    -- No row when the owner is not a stored key: nothing to charge.
    IF p_owner IS NOT NULL THEN
        UPDATE api_keys AS k
           SET turn_count = k.turn_count + 1, input_tokens = k.input_tokens + k_in,
               output_tokens = k.output_tokens + k_out,
               cache_read_tokens = k.cache_read_tokens + k_cr,
               cache_write_tokens = k.cache_write_tokens + k_cw,
               cost_micros = k.cost_micros + p_cost
         WHERE k.id = p_owner;
    END IF;

    UPDATE stats AS t
       SET total_sessions = t.total_sessions + v_created,
           total_messages = t.total_messages + 2, total_turns = t.total_turns + 1,
           input_tokens = t.input_tokens + k_in, output_tokens = t.output_tokens + k_out,
           cache_read_tokens = t.cache_read_tokens + k_cr,
           cache_write_tokens = t.cache_write_tokens + k_cw,
           cost_micros = t.cost_micros + p_cost
     WHERE t.id = chatd_stats_shard();

    IF p_idem_key IS NOT NULL THEN
        UPDATE idempotency AS i
           SET state = 'done', status = 200, response = NULL, session_id = p_sid,
               expires_at = p_idem_expires, turn_count = r_turn_count,
               reply_id = r_assistant_id, reply_seq = v_seq + 2, reply_content = p_assistant,
               reply_status = p_status, reply_model = p_model, reply_stop_reason = p_stop,
               reply_tokens = p_out, input_tokens = p_in, output_tokens = p_out,
               cache_read_tokens = p_cr, cache_write_tokens = p_cw, cost_micros = p_cost,
               reply_created_at = p_now, reply_blocks = p_reply_blocks
         WHERE i.scope = p_idem_scope AND i.key = p_idem_key;
    END IF;

    -- The images, last (see the lock order above), then the references to them.
    PERFORM chatd_blobs_keep(p_blobs, p_now);
    INSERT INTO message_blobs (message_id, sha256)
    SELECT r_user_id, r.sha FROM unnest(p_user_refs) AS r(sha)
    UNION ALL
    SELECT r_assistant_id, r.sha FROM unnest(p_assistant_refs) AS r(sha)
    ON CONFLICT DO NOTHING;

    DELETE FROM turn_locks AS l WHERE l.session_id = p_sid;
    r_rc := 'ok';
END
$$;

-- store_session_delete, as in 002_ops; the session's images that no other
-- message uses go too.
CREATE OR REPLACE FUNCTION chatd_session_delete(p_sid text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_turns bigint;
    v_messages bigint;
    v_shas text[];
BEGIN
    -- Wait for a turn being committed on this session (it holds its lock row),
    -- so that the delete takes that turn with it.
    PERFORM 1 FROM turn_locks AS l WHERE l.session_id = p_sid FOR UPDATE;
    v_shas := chatd_session_blobs(ARRAY[p_sid]);
    DELETE FROM sessions AS s WHERE s.id = p_sid
    RETURNING s.turn_count, s.message_count INTO v_turns, v_messages;
    IF NOT FOUND THEN
        RETURN 'notfound';
    END IF;
    -- Messages go by the cascade. A lock taken since our first statement is
    -- left to its holder (SKIP LOCKED: waiting for it here would invert the
    -- lock order); its turn will create the session afresh.
    DELETE FROM turn_locks AS l
     WHERE l.session_id IN (SELECT x.session_id FROM turn_locks AS x
                             WHERE x.session_id = p_sid FOR UPDATE SKIP LOCKED);
    UPDATE stats AS t
       SET total_sessions = t.total_sessions - 1, total_messages = t.total_messages - v_messages,
           total_turns = t.total_turns - v_turns
     WHERE t.id = chatd_stats_shard();
    PERFORM chatd_blobs_drop_unused(v_shas);
    RETURN 'ok';
END
$$;

-- store_session_reset, as in 002_ops; the images of the removed messages that
-- no other message uses go too.
CREATE OR REPLACE FUNCTION chatd_session_reset(p_sid text, p_now bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_turns bigint;
    v_messages bigint;
    v_shas text[];
BEGIN
    SELECT s.turn_count, s.message_count INTO v_turns, v_messages
      FROM sessions AS s WHERE s.id = p_sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_shas := chatd_session_blobs(ARRAY[p_sid]);
    DELETE FROM messages AS m WHERE m.session_id = p_sid;
    UPDATE sessions AS s SET turn_count = 0, message_count = 0, updated_at = p_now
     WHERE s.id = p_sid;
    UPDATE stats AS t
       SET total_messages = t.total_messages - v_messages, total_turns = t.total_turns - v_turns
     WHERE t.id = chatd_stats_shard();
    PERFORM chatd_blobs_drop_unused(v_shas);
    RETURN v_turns;
END
$$;

-- store_sessions_expire, as in 002_ops; the images of the removed sessions
-- that no other message uses go too.
CREATE OR REPLACE FUNCTION chatd_sessions_expire(p_before bigint, p_now bigint, p_limit bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_sessions bigint;
    v_turns bigint;
    v_messages bigint;
    v_shas text[];
BEGIN
    -- Expired locks first (also those of sessions that never got a turn). A
    -- lock row held by a commit in progress is skipped, and so is its session
    -- below, which that commit is updating.
    DELETE FROM turn_locks AS l
     WHERE l.session_id IN (SELECT x.session_id FROM turn_locks AS x
                             WHERE x.expires_at <= p_now FOR UPDATE SKIP LOCKED);
    -- Idle sessions without a lock; rows locked by someone else are busy.
    SELECT array_agg(v.id) INTO v_ids FROM (
        SELECT s.id FROM sessions AS s
         WHERE s.updated_at < p_before
           AND NOT EXISTS (SELECT 1 FROM turn_locks AS l WHERE l.session_id = s.id)
         ORDER BY s.updated_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED) AS v;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- The owners' keys in one order (the delete triggers update them).
    PERFORM 1 FROM api_keys AS k
     WHERE k.id IN (SELECT s.owner FROM sessions AS s WHERE s.id = ANY (v_ids))
     ORDER BY k.id FOR UPDATE;
    v_shas := chatd_session_blobs(v_ids);
    WITH gone AS (
        DELETE FROM sessions AS s WHERE s.id = ANY (v_ids)
        RETURNING s.turn_count, s.message_count)
    SELECT count(*), COALESCE(sum(g.turn_count), 0), COALESCE(sum(g.message_count), 0)
      INTO v_sessions, v_turns, v_messages FROM gone AS g;
    UPDATE stats AS t
       SET total_sessions = t.total_sessions - v_sessions,
           total_messages = t.total_messages - v_messages, total_turns = t.total_turns - v_turns
     WHERE t.id = chatd_stats_shard();
    PERFORM chatd_blobs_drop_unused(v_shas);
    RETURN v_sessions;
END
$$;

-- store_idem_begin, as in 002_ops, with the reply's blocks (r_reply_blocks) last.
DROP FUNCTION chatd_idem_begin(text, text, text, text, text, bigint, bigint);
CREATE FUNCTION chatd_idem_begin(p_scope text, p_key text, p_hash text, p_token text,
                                 p_sid text, p_now bigint, p_expires bigint)
RETURNS TABLE (r_outcome text, r_reply_id bigint, r_reply_seq bigint, r_reply_role text,
               r_reply_content text,
               r_reply_status text, r_reply_model text, r_reply_stop_reason text,
               r_reply_tokens bigint, r_input_tokens bigint, r_output_tokens bigint,
               r_cache_read_tokens bigint, r_cache_write_tokens bigint, r_cost_micros bigint,
               r_reply_created_at bigint, r_status bigint, r_response text, r_session_id text,
               r_created_at bigint, r_expires_at bigint, r_turn_count bigint, r_reply_blocks text)
LANGUAGE plpgsql AS $$
BEGIN
    -- Insert, or replace an expired record. Both concurrent callers cannot
    -- win: the second waits on the first's row and then sees it live. A live
    -- row that the WHERE keeps stays locked by us, so it reads the same below.
    INSERT INTO idempotency AS i (scope, key, body_hash, state, token, session_id,
                                  created_at, expires_at)
    VALUES (p_scope, p_key, p_hash, 'running', p_token, p_sid, p_now, p_expires)
    ON CONFLICT (scope, key) DO UPDATE
       SET body_hash = excluded.body_hash, state = 'running', token = excluded.token,
           status = NULL, response = NULL, session_id = excluded.session_id,
           created_at = excluded.created_at, expires_at = excluded.expires_at,
           turn_count = NULL, reply_id = NULL, reply_seq = NULL, reply_content = NULL,
           reply_status = NULL, reply_model = NULL, reply_stop_reason = NULL,
           reply_tokens = NULL, input_tokens = NULL, output_tokens = NULL,
           cache_read_tokens = NULL, cache_write_tokens = NULL, cost_micros = NULL,
           reply_created_at = NULL, reply_blocks = NULL
     WHERE i.expires_at <= p_now;
    IF FOUND THEN
        r_outcome := 'new';
        RETURN NEXT;
        RETURN;
    END IF;
    -- A different body first, whatever the state (the client's mistake).
    RETURN QUERY
        SELECT CASE WHEN i.body_hash <> p_hash THEN 'mismatch'
                    WHEN i.state <> 'done' THEN 'running' ELSE 'replay' END,
               i.reply_id, i.reply_seq, 'assistant'::text, i.reply_content, i.reply_status, i.reply_model,
               i.reply_stop_reason, i.reply_tokens, i.input_tokens, i.output_tokens,
               i.cache_read_tokens, i.cache_write_tokens, i.cost_micros, i.reply_created_at,
               i.status, i.response, i.session_id, i.created_at, i.expires_at, i.turn_count,
               i.reply_blocks
          FROM idempotency AS i WHERE i.scope = p_scope AND i.key = p_key;
END
$$;

-- store_session_import, as in 002_ops; each element of p_messages may carry
-- "blocks" (stored form) and "refs" (the sha256 of the images it references),
-- p_blobs the images (as chatd_blobs_keep takes them).
DROP FUNCTION chatd_session_import(text, text, text, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint,
                                   bigint, bigint, jsonb);
CREATE FUNCTION chatd_session_import(
    p_id text, p_owner text, p_system text, p_model text, p_created bigint, p_updated bigint,
    p_turns bigint, p_message_count bigint, p_in bigint, p_out bigint, p_cr bigint,
    p_cw bigint, p_cost bigint, p_messages jsonb, p_blobs jsonb)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sessions (id, owner, system_prompt, model, created_at, updated_at, turn_count,
                          message_count, input_tokens, output_tokens, cache_read_tokens,
                          cache_write_tokens, cost_micros)
    VALUES (p_id, p_owner, p_system, p_model, p_created, p_updated, p_turns, p_message_count,
            p_in, p_out, p_cr, p_cw, p_cost)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'conflict';
    END IF;
    INSERT INTO messages (session_id, seq, role, content, status, model, stop_reason, tokens,
                          input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                          cost_micros, created_at, blocks)
    SELECT p_id, (e.j->>'seq')::bigint, e.j->>'role', e.j->>'content', e.j->>'status',
           e.j->>'model', e.j->>'stop_reason', (e.j->>'tokens')::bigint,
           (e.j->>'input_tokens')::bigint, (e.j->>'output_tokens')::bigint,
           (e.j->>'cache_read_tokens')::bigint, (e.j->>'cache_write_tokens')::bigint,
           (e.j->>'cost_micros')::bigint, (e.j->>'created_at')::bigint, e.j->>'blocks'
      FROM jsonb_array_elements(p_messages) WITH ORDINALITY AS e(j, n)
     ORDER BY e.n;
    UPDATE stats AS t
       SET total_sessions = t.total_sessions + 1,
           total_messages = t.total_messages + p_message_count,
           total_turns = t.total_turns + p_turns,
           input_tokens = t.input_tokens + p_in, output_tokens = t.output_tokens + p_out,
           cache_read_tokens = t.cache_read_tokens + p_cr,
           cache_write_tokens = t.cache_write_tokens + p_cw,
           cost_micros = t.cost_micros + p_cost
     WHERE t.id = chatd_stats_shard();
    -- The images, last (see the lock order above), then the references to them.
    PERFORM chatd_blobs_keep(p_blobs, p_created);
    INSERT INTO message_blobs (message_id, sha256)
    SELECT m.id, r.sha
      FROM jsonb_array_elements(p_messages) AS e(j)
     CROSS JOIN LATERAL jsonb_array_elements_text(COALESCE(e.j->'refs', '[]'::jsonb)) AS r(sha)
      JOIN messages AS m ON m.session_id = p_id AND m.seq = (e.j->>'seq')::bigint
    ON CONFLICT DO NOTHING;
    RETURN 'ok';
END
$$;
