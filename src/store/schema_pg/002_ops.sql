-- 002_ops (PostgreSQL): the store operations that touch more than one row, as
-- functions, so that each operation is one statement (src/store/pg_ops.c): one
-- round trip, atomic in its implicit transaction, whatever the connection.
--
-- Concurrency. Functions run at READ COMMITTED and serialize through row locks,
-- always taken in this order, so that two operations never wait for each other
-- in a cycle (which PostgreSQL would break by failing one of them):
--     turn_locks -> idempotency -> sessions -> api_keys -> stats (one shard)
-- A sweep (expire) takes its locks with SKIP LOCKED and so never waits behind
-- a turn in progress; it skips what is busy and takes it on its next run.
--
-- Results: functions answer a status word ('ok', 'conflict', 'notfound') that
-- pg_ops.c maps to chat_rc, plus the operation's outputs.

-- The stats shard of this connection (see stats in 001_init).
CREATE FUNCTION chatd_stats_shard() RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT pg_backend_pid() % 16
$$;

-- store_turn_commit. p_session_model is the model the session keeps (already
-- resolved from session_model/model by the caller); p_idem_key NULL: no
-- idempotency record; p_idem_expires: now + idem_ttl_ms.
CREATE FUNCTION chatd_turn_commit(
    p_sid text, p_owner text, p_system text, p_model text, p_session_model text,
    p_user text, p_assistant text, p_status text, p_stop text, p_user_tokens bigint,
    p_in bigint, p_out bigint, p_cr bigint, p_cw bigint, p_cost bigint,
    p_token text, p_now bigint, p_idem_scope text, p_idem_key text, p_idem_expires bigint,
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
                          cost_micros, created_at)
    VALUES (p_sid, v_seq + 1, 'user', p_user, 'complete', NULL, NULL, p_user_tokens,
            -1, -1, -1, -1, 0, p_now)
    RETURNING id INTO r_user_id;
    INSERT INTO messages (session_id, seq, role, content, status, model, stop_reason, tokens,
                          input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                          cost_micros, created_at)
    VALUES (p_sid, v_seq + 2, 'assistant', p_assistant, p_status, p_model, p_stop, p_out,
            p_in, p_out, p_cr, p_cw, p_cost, p_now)
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
               reply_created_at = p_now
         WHERE i.scope = p_idem_scope AND i.key = p_idem_key;
    END IF;

    DELETE FROM turn_locks AS l WHERE l.session_id = p_sid;
    r_rc := 'ok';
END
$$;

-- store_session_delete: 'ok' or 'notfound'.
CREATE FUNCTION chatd_session_delete(p_sid text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_turns bigint;
    v_messages bigint;
BEGIN
    -- Wait for a turn being committed on this session (it holds its lock row),
    -- so that the delete takes that turn with it.
    PERFORM 1 FROM turn_locks AS l WHERE l.session_id = p_sid FOR UPDATE;
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
    RETURN 'ok';
END
$$;

-- store_session_reset: the turn count before the reset, NULL if no such session.
CREATE FUNCTION chatd_session_reset(p_sid text, p_now bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_turns bigint;
    v_messages bigint;
BEGIN
    SELECT s.turn_count, s.message_count INTO v_turns, v_messages
      FROM sessions AS s WHERE s.id = p_sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM messages AS m WHERE m.session_id = p_sid;
    UPDATE sessions AS s SET turn_count = 0, message_count = 0, updated_at = p_now
     WHERE s.id = p_sid;
    UPDATE stats AS t
       SET total_messages = t.total_messages - v_messages, total_turns = t.total_turns - v_turns
     WHERE t.id = chatd_stats_shard();
    RETURN v_turns;
END
$$;

-- store_sessions_list: newest first, one row more than the page (p_limit is
-- the page size + 1). Four queries rather than "p_owner IS NULL OR ...", so
-- that each is planned with its index.
CREATE FUNCTION chatd_sessions_list(p_limit bigint, p_after_created bigint, p_after_id text,
                                    p_owner text)
RETURNS SETOF sessions LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_owner IS NULL AND p_after_id IS NULL THEN
        RETURN QUERY SELECT * FROM sessions AS s
                      ORDER BY s.created_at DESC, s.id DESC LIMIT p_limit;
    ELSIF p_owner IS NULL THEN
        RETURN QUERY SELECT * FROM sessions AS s
                      WHERE (s.created_at, s.id) < (p_after_created, p_after_id COLLATE "C")
                      ORDER BY s.created_at DESC, s.id DESC LIMIT p_limit;
    ELSIF p_after_id IS NULL THEN
        RETURN QUERY SELECT * FROM sessions AS s WHERE s.owner = p_owner
                      ORDER BY s.created_at DESC, s.id DESC LIMIT p_limit;
    ELSE
        RETURN QUERY SELECT * FROM sessions AS s
                      WHERE s.owner = p_owner
                        AND (s.created_at, s.id) < (p_after_created, p_after_id COLLATE "C")
                      ORDER BY s.created_at DESC, s.id DESC LIMIT p_limit;
    END IF;
END
$$;

-- store_sessions_expire: how many sessions were deleted.
CREATE FUNCTION chatd_sessions_expire(p_before bigint, p_now bigint, p_limit bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_sessions bigint;
    v_turns bigint;
    v_messages bigint;
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
    WITH gone AS (
        DELETE FROM sessions AS s WHERE s.id = ANY (v_ids)
        RETURNING s.turn_count, s.message_count)
    SELECT count(*), COALESCE(sum(g.turn_count), 0), COALESCE(sum(g.message_count), 0)
      INTO v_sessions, v_turns, v_messages FROM gone AS g;
    UPDATE stats AS t
       SET total_sessions = t.total_sessions - v_sessions,
           total_messages = t.total_messages - v_messages, total_turns = t.total_turns - v_turns
     WHERE t.id = chatd_stats_shard();
    RETURN v_sessions;
END
$$;

-- store_idem_begin. r_outcome: 'new' (a running record now exists for
-- p_token; the other columns are NULL), else 'mismatch', 'running' or
-- 'replay' with the live record's columns.
CREATE FUNCTION chatd_idem_begin(p_scope text, p_key text, p_hash text, p_token text,
                                 p_sid text, p_now bigint, p_expires bigint)
RETURNS TABLE (r_outcome text, r_reply_id bigint, r_reply_seq bigint, r_reply_role text,
               r_reply_content text,
               r_reply_status text, r_reply_model text, r_reply_stop_reason text,
               r_reply_tokens bigint, r_input_tokens bigint, r_output_tokens bigint,
               r_cache_read_tokens bigint, r_cache_write_tokens bigint, r_cost_micros bigint,
               r_reply_created_at bigint, r_status bigint, r_response text, r_session_id text,
               r_created_at bigint, r_expires_at bigint, r_turn_count bigint)
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
           reply_created_at = NULL
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
               i.status, i.response, i.session_id, i.created_at, i.expires_at, i.turn_count
          FROM idempotency AS i WHERE i.scope = p_scope AND i.key = p_key;
END
$$;

-- store_key_revoke: r_rc 'ok' (with the key as now stored), 'notfound', or
-- 'conflict' (a name that designates several active keys).
CREATE FUNCTION chatd_key_revoke(p_id_or_name text, p_now bigint)
RETURNS TABLE (r_rc text, r_id text, r_name text, r_hash text, r_role text, r_rate_limit text,
               r_created_at bigint, r_revoked_at bigint, r_last_used_at bigint,
               r_turn_count bigint, r_input_tokens bigint, r_output_tokens bigint,
               r_cache_read_tokens bigint, r_cache_write_tokens bigint, r_cost_micros bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_id text;
    v_found integer := 0;
    v_row record;
BEGIN
    -- An id wins over a name (ids are unique; see sqlite.c).
    SELECT k.id INTO v_id FROM api_keys AS k WHERE k.id = p_id_or_name FOR UPDATE;
    IF NOT FOUND THEN
        FOR v_row IN SELECT k.id FROM api_keys AS k
                      WHERE k.name = p_id_or_name AND k.revoked_at IS NULL
                      ORDER BY k.created_at, k.id LIMIT 2 FOR UPDATE LOOP
            v_found := v_found + 1;
            IF v_found = 1 THEN
                v_id := v_row.id;
            END IF;
        END LOOP;
        IF v_found <> 1 THEN
            r_rc := CASE WHEN v_found = 0 THEN 'notfound' ELSE 'conflict' END;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    UPDATE api_keys AS k SET revoked_at = p_now WHERE k.id = v_id AND k.revoked_at IS NULL;
    RETURN QUERY
        SELECT 'ok'::text, k.id::text, k.name, k.hash, k.role, k.rate_limit, k.created_at,
               k.revoked_at, k.last_used_at, k.turn_count, k.input_tokens, k.output_tokens,
               k.cache_read_tokens, k.cache_write_tokens, k.cost_micros
          FROM api_keys AS k WHERE k.id = v_id;
END
$$;

-- store_session_import: 'ok' or 'conflict' (the id exists). p_messages is a
-- JSON array of objects with the messages columns (see pg_ops.c), inserted in
-- array order so that their new ids keep it.
CREATE FUNCTION chatd_session_import(
    p_id text, p_owner text, p_system text, p_model text, p_created bigint, p_updated bigint,
    p_turns bigint, p_message_count bigint, p_in bigint, p_out bigint, p_cr bigint,
    p_cw bigint, p_cost bigint, p_messages jsonb)
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
                          cost_micros, created_at)
    SELECT p_id, (e.j->>'seq')::bigint, e.j->>'role', e.j->>'content', e.j->>'status',
           e.j->>'model', e.j->>'stop_reason', (e.j->>'tokens')::bigint,
           (e.j->>'input_tokens')::bigint, (e.j->>'output_tokens')::bigint,
           (e.j->>'cache_read_tokens')::bigint, (e.j->>'cache_write_tokens')::bigint,
           (e.j->>'cost_micros')::bigint, (e.j->>'created_at')::bigint
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
    RETURN 'ok';
END
$$;
