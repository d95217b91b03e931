/*
 * sqlite_ops.c: the SQLite backend's operations on sessions, turns, turn
 * locks, messages, statistics, retention and idempotency records, and the
 * backend table (store/backend.h) that dispatches every store_op kind.
 * Connection, statements and transactions: sqlite_conn.c.
 */
#define _GNU_SOURCE
#include "store/sqlite_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/util.h"
#include "store/blocks.h"

/* ---- turn locks ----------------------------------------------------------- */

/* In memory (turn_locks.h): the process owns the file, so a lock needs no row. */

static chat_rc sqlite_lock_acquire(sqlite_db *s, const char *session_id, const char *token, int64_t now, int64_t ttl_ms)
{
    return turn_locks_acquire(sqlite_turn_locks(s), session_id, token, now, ttl_ms);
}

static chat_rc sqlite_lock_refresh(sqlite_db *s, const char *session_id, const char *token, int64_t now, int64_t ttl_ms)
{
    return turn_locks_refresh(sqlite_turn_locks(s), session_id, token, now, ttl_ms);
}

static chat_rc sqlite_lock_release(sqlite_db *s, const char *session_id, const char *token)
{
    turn_locks_release(sqlite_turn_locks(s), session_id, token);
    return CHAT_OK;
}

/* ---- turns ---------------------------------------------------------------- */

/* Inside a write transaction: keeps the images of message id (new ones
 * inserted, known ones left as they are) and links them to it. */
static chat_rc link_blobs(sqlite_db *s, int64_t message_id, const store_packed *p, int64_t now)
{
    for (size_t i = 0; i < p->n_blobs; i++) {
        const store_blob *b = &p->blobs[i];
        sqlite3_stmt *st = s->st[ST_BLOB_INSERT];
        sql_bind_text(s, st, 1, b->sha256);
        sql_bind_text(s, st, 2, b->media_type);
        sql_bind_text(s, st, 3, b->data);
        sql_bind_i64(s, st, 4, b->bytes);
        sql_bind_i64(s, st, 5, now);
        chat_rc rc = sql_run(s, ST_BLOB_INSERT);
        if (rc != CHAT_OK)
            return rc;
        st = s->st[ST_BLOB_LINK];
        sql_bind_i64(s, st, 1, message_id);
        sql_bind_text(s, st, 2, b->sha256);
        rc = sql_run(s, ST_BLOB_LINK);
        if (rc != CHAT_OK)
            return rc;
    }
    return CHAT_OK;
}

/*
 * Inside a write transaction: takes the links of session_id's messages away
 * and removes the blobs that no other message links (before its messages are
 * deleted: session delete, reset and the retention sweep).
 */
static chat_rc unlink_session_blobs(sqlite_db *s, const char *session_id)
{
    char **shas = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = s->st[ST_BLOB_UNLINK_SESSION];
    sql_bind_text(s, st, 1, session_id);
    int src;
    while ((src = sql_step(s, st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            shas = chat_xrealloc(shas, cap * sizeof *shas);
        }
        shas[n++] = sql_col_dup(st, 0);
    }
    done(st);
    chat_rc rc = src == SQLITE_DONE ? CHAT_OK : sql_fail(s, "ST_BLOB_UNLINK_SESSION", src);
    for (size_t i = 0; i < n && rc == CHAT_OK; i++) {
        if (!shas[i])
            continue;
        sql_bind_text(s, s->st[ST_BLOB_DROP_UNUSED], 1, shas[i]);
        rc = sql_run(s, ST_BLOB_DROP_UNUSED); /* a second time for a repeated hash: a no-op */
    }
    for (size_t i = 0; i < n; i++)
        free(shas[i]);
    free(shas);
    return rc;
}

/* Binds and runs one message insert into session_id, with its blocks in
 * their stored form (packed, made from m->blocks by store_op_prepare) and
 * their images; *id (when not NULL) receives its row id. The turn commit and
 * the session import both store their messages through here, so that both
 * write the same columns. */
chat_rc sql_insert_message_row(sqlite_db *s, const char *session_id, const store_message *m, const store_packed *packed,
                               int64_t *id)
{
    sqlite3_stmt *st = s->st[ST_MESSAGE_INSERT];
    sql_bind_text(s, st, 1, session_id);
    sql_bind_i64(s, st, 2, m->seq);
    sql_bind_text(s, st, 3, m->role);
    sql_bind_text(s, st, 4, m->content);
    sql_bind_text(s, st, 5, m->status);
    sql_bind_text(s, st, 6, m->model);
    sql_bind_text(s, st, 7, m->stop_reason);
    sql_bind_i64(s, st, 8, m->tokens);
    sql_bind_i64(s, st, 9, m->usage.input_tokens);
    sql_bind_i64(s, st, 10, m->usage.output_tokens);
    sql_bind_i64(s, st, 11, m->usage.cache_read_tokens);
    sql_bind_i64(s, st, 12, m->usage.cache_write_tokens);
    sql_bind_i64(s, st, 13, m->cost_micros);
    sql_bind_i64(s, st, 14, m->created_at);
    sql_bind_text(s, st, 15, packed->stored);
    chat_rc rc = sql_run(s, ST_MESSAGE_INSERT);
    int64_t row = sqlite3_last_insert_rowid(s->db);
    if (rc == CHAT_OK)
        rc = link_blobs(s, row, packed, m->created_at);
    if (rc == CHAT_OK && id)
        *id = row;
    return rc;
}

/* One of the turn's two messages as its row holds it: the user's, or the
 * assistant's reply. The strings are t's, only read (store_message's are not
 * const because the readers own theirs). */
static store_message turn_message(const store_turn *t, int64_t seq, bool assistant, int64_t id)
{
    return (store_message){
        .id = id,
        .seq = seq,
        .role = assistant ? "assistant" : "user",
        .content = (char *)(assistant ? t->assistant_content : t->user_content),
        .blocks = (char *)(assistant ? t->assistant_blocks : t->user_blocks),
        .status = (char *)(assistant ? t->status : "complete"),
        .model = (char *)(assistant ? t->model : NULL),
        .stop_reason = (char *)(assistant ? t->stop_reason : NULL),
        .tokens = assistant ? t->usage.output_tokens : t->user_tokens,
        .usage = assistant ? t->usage : (store_usage){ -1, -1, -1, -1 },
        .cost_micros = assistant ? t->cost_micros : 0,
        .created_at = t->now,
    };
}

static chat_rc insert_message(sqlite_db *s, const store_turn *t, const store_packed *packed, int64_t seq,
                              bool assistant, int64_t *id)
{
    const store_message m = turn_message(t, seq, assistant, 0);
    return sql_insert_message_row(s, t->session_id, &m, &packed[assistant ? 1 : 0], id);
}

void sqlite_turn_done(sqlite_db *s, const store_turn *t, const store_turn_result *res, chat_rc rc)
{
    history_cache *hc = sqlite_history(s);
    if (hc && rc == CHAT_OK) {
        /* The seqs are the session's last two: message_count - 1 and
         * message_count for a session whose seqs have no gap (every session
         * made by turns; an imported one may have gaps, and then the cache's
         * seq check drops it rather than append). */
        int64_t seq = res->message_count - 1;
        const store_message m[2] = { turn_message(t, seq, false, res->user_message_id),
                                     turn_message(t, seq + 1, true, res->assistant_message_id) };
        history_cache_append(hc, t->session_id, m, 2, res->message_count);
    }
    turn_locks_settle(sqlite_turn_locks(s), t->session_id, t->lock_token, rc == CHAT_OK);
}

/* The session an op changes other than by a turn (NULL for the retention
 * sweep, which may change any), and whether it changes any. */
static bool history_write_of(const store_op *op, const char **session_id)
{
    switch (op->kind) {
    case STORE_OP_SESSION_DELETE:
    case STORE_OP_SESSION_RESET: *session_id = op->in.session_id; return true;
    case STORE_OP_SESSION_IMPORT: *session_id = op->in.import_session ? op->in.import_session->id : NULL; return true;
    case STORE_OP_SESSIONS_EXPIRE: *session_id = NULL; return true;
    default: return false;
    }
}

void sqlite_history_write_begin(sqlite_db *s, const store_op *op)
{
    const char *sid;
    history_cache *hc = sqlite_history(s);
    if (hc && history_write_of(op, &sid))
        history_cache_write_begin(hc, sid);
}

void sqlite_history_write_end(sqlite_db *s, const store_op *op)
{
    const char *sid;
    history_cache *hc = sqlite_history(s);
    if (hc && history_write_of(op, &sid))
        history_cache_write_end(hc, sid);
}

/*
 * Inside the commit's transaction: marks the turn's idempotency record done,
 * with a copy of the assistant message (see store.h for why a copy). The record
 * must still be running and owned by the lock token: a record whose lease ran
 * out and that a retry took over belongs to the retry, and this commit must not
 * happen (CHAT_ECONFLICT), so that one key never commits two turns.
 */
static chat_rc idem_complete(sqlite_db *s, const store_turn *t, const store_turn_result *r, int64_t reply_seq)
{
    sqlite3_stmt *st = s->st[ST_IDEM_COMMIT];
    sql_bind_text(s, st, 1, t->idem_scope);
    sql_bind_text(s, st, 2, t->idem_key);
    sql_bind_text(s, st, 3, t->lock_token);
    sql_bind_text(s, st, 4, t->session_id);
    sql_bind_i64(s, st, 5, t->now + t->idem_ttl_ms);
    sql_bind_i64(s, st, 6, r->turn_count);
    sql_bind_i64(s, st, 7, r->assistant_message_id);
    sql_bind_i64(s, st, 8, reply_seq);
    sql_bind_text(s, st, 9, t->assistant_content);
    sql_bind_text(s, st, 10, t->status);
    sql_bind_text(s, st, 11, t->model);
    sql_bind_text(s, st, 12, t->stop_reason);
    sql_bind_i64(s, st, 13, t->usage.output_tokens); /* as insert_message() stores it */
    sql_bind_i64(s, st, 14, t->usage.input_tokens);
    sql_bind_i64(s, st, 15, t->usage.output_tokens);
    sql_bind_i64(s, st, 16, t->usage.cache_read_tokens);
    sql_bind_i64(s, st, 17, t->usage.cache_write_tokens);
    sql_bind_i64(s, st, 18, t->cost_micros);
    sql_bind_i64(s, st, 19, t->now);
    sql_bind_text(s, st, 20, t->assistant_blocks); /* whole: see 004_blocks_blobs.sql */
    chat_rc rc = sql_run(s, ST_IDEM_COMMIT);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

/* packed: the two messages' blocks in stored form (store_op_prepare). */
static chat_rc sqlite_turn_commit(sqlite_db *s, const store_turn *turn, const store_packed *packed,
                                  store_turn_result *res)
{
    const store_turn *t = turn;
    store_turn_result r = { 0 };
    sqlite3_stmt *st;
    int src;

    /* Pinned, the lock cannot expire and be taken over while the commit is in
     * flight; it is settled once the commit is durable or failed: here when
     * the commit is this op's own transaction, by the writer after the batch's
     * COMMIT otherwise (sqlite_writer.c). */
    chat_rc rc = turn_locks_pin(sqlite_turn_locks(s), t->session_id, t->lock_token);
    if (rc != CHAT_OK)
        return rc;
    rc = sql_tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        goto settle;

    /* The session with this turn counted: updated if it exists, else made
     * with it, one statement either way (the write transaction keeps anyone
     * from making it between the two). */
    st = s->st[ST_SESSION_ADD_TURN];
    sql_bind_text(s, st, 1, t->session_id);
    sql_bind_text(s, st, 2, t->session_model ? t->session_model : t->model);
    sql_bind_i64(s, st, 3, t->now);
    sql_bind_usage(s, st, 4, &t->usage, t->cost_micros);
    src = sql_step(s, st);
    if (src == SQLITE_ROW) {
        r.turn_count = sqlite3_column_int64(st, 0);
        r.message_count = sqlite3_column_int64(st, 1);
    }
    done(st);
    int64_t created = src == SQLITE_DONE; /* no row: the session is new */
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = sql_fail(s, "ST_SESSION_ADD_TURN", src);
        goto out;
    }
    if (created) {
        st = s->st[ST_SESSION_CREATE];
        sql_bind_text(s, st, 1, t->session_id);
        sql_bind_text(s, st, 2, t->owner);
        sql_bind_text(s, st, 3, t->system_prompt);
        sql_bind_text(s, st, 4, t->session_model ? t->session_model : t->model);
        sql_bind_i64(s, st, 5, t->now);
        sql_bind_usage(s, st, 6, &t->usage, t->cost_micros);
        rc = sql_run(s, ST_SESSION_CREATE);
        if (rc != CHAT_OK)
            goto out;
        r.turn_count = 1;
        r.message_count = 2;
    }

    /* A session this turn just made has no messages (foreign keys are on,
     * and deleting a session deletes its messages): its first seq is 1. */
    int64_t last_seq = 0;
    if (!created) {
        st = s->st[ST_NEXT_SEQ];
        sql_bind_text(s, st, 1, t->session_id);
        src = sql_step(s, st);
        last_seq = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        done(st);
        if (src != SQLITE_ROW) {
            rc = sql_fail(s, "ST_NEXT_SEQ", src);
            goto out;
        }
    }

    rc = insert_message(s, t, packed, last_seq + 1, false, &r.user_message_id);
    if (rc != CHAT_OK)
        goto out;
    rc = insert_message(s, t, packed, last_seq + 2, true, &r.assistant_message_id);
    if (rc != CHAT_OK)
        goto out;

    st = s->st[ST_STATS_ADD_TURN];
    sql_bind_i64(s, st, 1, created);
    sql_bind_usage(s, st, 2, &t->usage, t->cost_micros);
    rc = sql_run(s, ST_STATS_ADD_TURN);
    if (rc != CHAT_OK)
        goto out;

    if (t->owner) {
        /* No row when the owner is not a stored key (e.g. the single API_TOKEN):
         * nothing to charge, not an error. */
        st = s->st[ST_KEY_ADD_TURN];
        sql_bind_text(s, st, 1, t->owner);
        sql_bind_usage(s, st, 2, &t->usage, t->cost_micros);
        rc = sql_run(s, ST_KEY_ADD_TURN);
        if (rc != CHAT_OK)
            goto out;
    }

    if (t->idem_key) {
        rc = idem_complete(s, t, &r, last_seq + 2);
        if (rc != CHAT_OK)
            goto out;
    }

    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
    else if (res)
        *res = r;
settle:
    if (!s->batch)
        sqlite_turn_done(s, t, &r, rc);
    return rc;
}

/* ---- sessions ------------------------------------------------------------- */

/* Fills out from a row of SESSION_COLS. */
static void read_session(sqlite3_stmt *st, store_session *out)
{
    out->id = sql_col_dup(st, 0);
    out->owner = sql_col_dup(st, 1);
    out->system_prompt = sql_col_dup(st, 2);
    out->model = sql_col_dup(st, 3);
    out->created_at = sqlite3_column_int64(st, 4);
    out->updated_at = sqlite3_column_int64(st, 5);
    out->turn_count = sqlite3_column_int64(st, 6);
    out->message_count = sqlite3_column_int64(st, 7);
    out->usage.input_tokens = sqlite3_column_int64(st, 8);
    out->usage.output_tokens = sqlite3_column_int64(st, 9);
    out->usage.cache_read_tokens = sqlite3_column_int64(st, 10);
    out->usage.cache_write_tokens = sqlite3_column_int64(st, 11);
    out->cost_micros = sqlite3_column_int64(st, 12);
}

/*
 * Runs a bound query of at most one row on statement id, keyed by one text
 * parameter: read(st, out) on a row and CHAT_OK, CHAT_ENOTFOUND without one,
 * CHAT_EIO on an error. The statement is reset either way.
 */
chat_rc sql_fetch_row(sqlite_db *s, enum stmt_id id, const char *key, void (*read)(sqlite3_stmt *, void *), void *out)
{
    sqlite3_stmt *st = s->st[id];
    sql_bind_text(s, st, 1, key);
    int rc = sql_step(s, st);
    chat_rc out_rc = CHAT_OK;
    if (rc == SQLITE_ROW)
        read(st, out);
    else if (rc == SQLITE_DONE)
        out_rc = CHAT_ENOTFOUND;
    else
        out_rc = sql_fail(s, sql_stmt_name[id], rc);
    done(st);
    return out_rc;
}

static void read_session_row(sqlite3_stmt *st, void *out)
{
    read_session(st, out);
}

static chat_rc sqlite_session_get(sqlite_db *s, const char *session_id, store_session *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    return sql_fetch_row(s, ST_SESSION_GET, session_id, read_session_row, out);
}

/* Inside a write transaction: the session's counters, or CHAT_ENOTFOUND. */
static chat_rc session_counts(sqlite_db *s, const char *session_id, int64_t *turns, int64_t *messages)
{
    sqlite3_stmt *st = s->st[ST_SESSION_COUNTS];
    sql_bind_text(s, st, 1, session_id);
    int rc = sql_step(s, st);
    chat_rc out;
    if (rc == SQLITE_ROW) {
        *turns = sqlite3_column_int64(st, 0);
        *messages = sqlite3_column_int64(st, 1);
        out = CHAT_OK;
    } else if (rc == SQLITE_DONE) {
        out = CHAT_ENOTFOUND;
    } else {
        out = sql_fail(s, "ST_SESSION_COUNTS", rc);
    }
    done(st);
    return out;
}

/* Inside a write transaction: subtracts from the global counters. */
static chat_rc stats_sub(sqlite_db *s, int64_t sessions, int64_t messages, int64_t turns)
{
    sqlite3_stmt *st = s->st[ST_STATS_SUB];
    sql_bind_i64(s, st, 1, sessions);
    sql_bind_i64(s, st, 2, messages);
    sql_bind_i64(s, st, 3, turns);
    return sql_run(s, ST_STATS_SUB);
}

/*
 * Inside a write transaction: deletes an existing session, its messages (not
 * left to the cascade, so the counts stay right even where foreign keys are
 * off) and its lock, and takes them out of the global counters.
 */
static chat_rc delete_session(sqlite_db *s, const char *session_id, int64_t turns, int64_t messages)
{
    chat_rc unlinked = unlink_session_blobs(s, session_id);
    if (unlinked != CHAT_OK)
        return unlinked;
    static const enum stmt_id steps[] = { ST_MESSAGES_DELETE, ST_SESSION_DELETE };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        sql_bind_text(s, s->st[steps[i]], 1, session_id);
        chat_rc rc = sql_run(s, steps[i]);
        if (rc != CHAT_OK)
            return rc;
    }
    chat_rc rc = stats_sub(s, 1, messages, turns);
    /* A turn in flight on it then fails its commit (CHAT_ECONFLICT). Dropped
     * even if this transaction rolls back: that turn was about to lose its
     * session anyway, and a lock never outlives its purpose. */
    if (rc == CHAT_OK)
        turn_locks_drop(sqlite_turn_locks(s), session_id);
    return rc;
}

static chat_rc sqlite_session_delete(sqlite_db *s, const char *session_id)
{
    int64_t turns = 0, messages = 0;
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    rc = session_counts(s, session_id, &turns, &messages);
    if (rc == CHAT_OK)
        rc = delete_session(s, session_id, turns, messages);
    if (rc == CHAT_OK)
        rc = sql_tx_commit(s);
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
    return rc;
}

static chat_rc sqlite_session_reset(sqlite_db *s, const char *session_id, int64_t now, int64_t *previous_turns)
{
    int64_t turns = 0, messages = 0;
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    rc = session_counts(s, session_id, &turns, &messages);
    if (rc != CHAT_OK)
        goto out;
    rc = unlink_session_blobs(s, session_id);
    if (rc != CHAT_OK)
        goto out;
    sql_bind_text(s, s->st[ST_MESSAGES_DELETE], 1, session_id);
    rc = sql_run(s, ST_MESSAGES_DELETE);
    if (rc != CHAT_OK)
        goto out;
    sql_bind_text(s, s->st[ST_SESSION_RESET], 1, session_id);
    sql_bind_i64(s, s->st[ST_SESSION_RESET], 2, now);
    rc = sql_run(s, ST_SESSION_RESET);
    if (rc != CHAT_OK)
        goto out;
    rc = stats_sub(s, 0, messages, turns);
    if (rc != CHAT_OK)
        goto out;
    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
    else if (previous_turns)
        *previous_turns = turns;
    return rc;
}

/* ---- listing -------------------------------------------------------------- */

static chat_rc sqlite_sessions_list(sqlite_db *s, const char *owner, const char *cursor, int limit, bool oldest_first,
                                    store_session **out, size_t *n, char **next_cursor)
{
    if (!out || !n || !next_cursor)
        return CHAT_EINVAL;
    *out = NULL;
    *n = 0;
    *next_cursor = NULL;

    int64_t after_created = 0;
    char after_id[STORE_ID_MAX + 1];
    if (cursor && !store_cursor_parse(cursor, &after_created, after_id))
        return CHAT_EINVAL;

    enum stmt_id id;
    if (oldest_first)
        id = owner ? (cursor ? ST_LIST_OLD_OWNER_AFTER : ST_LIST_OLD_OWNER_FIRST)
                   : (cursor ? ST_LIST_OLD_AFTER : ST_LIST_OLD_FIRST);
    else
        id = owner ? (cursor ? ST_LIST_OWNER_AFTER : ST_LIST_OWNER_FIRST) : (cursor ? ST_LIST_AFTER : ST_LIST_FIRST);
    sqlite3_stmt *st = s->st[id];
    /* One row more than asked tells whether another page follows. */
    sql_bind_i64(s, st, 1, (int64_t)limit + 1);
    if (cursor) {
        sql_bind_i64(s, st, 2, after_created);
        sql_bind_text(s, st, 3, after_id);
    }
    if (owner)
        sql_bind_text(s, st, 4, owner);

    store_session *arr = NULL;
    size_t count = 0, cap = 0;
    bool more = false;
    int rc;
    while ((rc = sql_step(s, st)) == SQLITE_ROW) {
        if (count == (size_t)limit) {
            more = true;
            break;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            arr = chat_xrealloc(arr, cap * sizeof *arr);
        }
        memset(&arr[count], 0, sizeof arr[count]);
        read_session(st, &arr[count]);
        count++;
    }
    done(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_sessions_free(arr, count);
        return sql_fail(s, sql_stmt_name[id], rc);
    }
    if (more)
        *next_cursor = store_cursor_make(arr[count - 1].created_at, arr[count - 1].id);
    *out = arr;
    *n = count;
    return CHAT_OK;
}

/* ---- messages ------------------------------------------------------------- */

static void read_message(sqlite3_stmt *st, store_message *m)
{
    m->id = sqlite3_column_int64(st, 0);
    m->seq = sqlite3_column_int64(st, 1);
    m->role = sql_col_dup(st, 2);
    m->content = sql_col_dup(st, 3);
    m->status = sql_col_dup(st, 4);
    m->model = sql_col_dup(st, 5);
    m->stop_reason = sql_col_dup(st, 6);
    m->tokens = sqlite3_column_int64(st, 7);
    m->usage.input_tokens = sqlite3_column_int64(st, 8);
    m->usage.output_tokens = sqlite3_column_int64(st, 9);
    m->usage.cache_read_tokens = sqlite3_column_int64(st, 10);
    m->usage.cache_write_tokens = sqlite3_column_int64(st, 11);
    m->cost_micros = sqlite3_column_int64(st, 12);
    m->created_at = sqlite3_column_int64(st, 13);
    m->blocks = sql_col_dup(st, 14);
}

/* store_blocks_unpack's look-up: a blob's data, inside the read transaction. */
static char *lookup_blob(void *ud, const char *sha256, bool *failed)
{
    sqlite_db *s = ud;
    sqlite3_stmt *st = s->st[ST_BLOB_GET];
    sql_bind_text(s, st, 1, sha256);
    int src = sql_step(s, st);
    char *data = src == SQLITE_ROW ? sql_col_dup(st, 0) : NULL;
    done(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        (void)sql_fail(s, "ST_BLOB_GET", src);
        *failed = true;
    }
    return data;
}

/* Puts the images back into the blocks of m (read from messages). */
static chat_rc unpack_message(sqlite_db *s, store_message *m)
{
    if (!store_blocks_has_refs(m->blocks))
        return CHAT_OK;
    char *whole = NULL;
    chat_rc rc = store_blocks_unpack(m->blocks, lookup_blob, s, &whole);
    if (rc == CHAT_OK) {
        free(m->blocks);
        m->blocks = whole;
    }
    return rc;
}

/*
 * The newest messages of a session, read newest first only as far as needed:
 * until the tokens of those read (unknown counts as 0) exceed tail_tokens, or
 * the session's start. Returned oldest first, like the whole list; *skipped
 * receives how many older messages were left out (the session's message count
 * minus those returned). One read transaction, like sqlite_messages_list.
 */
static chat_rc sqlite_messages_tail(sqlite_db *s, const char *session_id, int64_t tail_tokens, store_message **out,
                                    size_t *n, int64_t *skipped)
{
    *out = NULL;
    *n = 0;
    *skipped = 0;
    history_cache *hc = sqlite_history(s);
    uint64_t ticket = 0;
    if (hc && history_cache_get(hc, session_id, tail_tokens, out, n, skipped, &ticket))
        return CHAT_OK;
    store_message *arr = NULL;
    size_t count = 0, cap = 0;
    int64_t turns = 0, messages = 0, sum = 0;
    int src = SQLITE_DONE;
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_READ);
    if (rc != CHAT_OK) {
        if (hc)
            history_cache_fill(hc, session_id, ticket, false, tail_tokens, NULL, 0, 0);
        return rc;
    }
    rc = session_counts(s, session_id, &turns, &messages);
    if (rc != CHAT_OK)
        goto out;
    sqlite3_stmt *st = s->st[ST_MESSAGES_TAIL];
    sql_bind_text(s, st, 1, session_id);
    while (sum <= tail_tokens && (src = sql_step(s, st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            arr = chat_xrealloc(arr, cap * sizeof *arr);
        }
        memset(&arr[count], 0, sizeof arr[count]);
        read_message(st, &arr[count]);
        sum += store_known(arr[count].tokens);
        count++;
    }
    done(st);
    if (sum <= tail_tokens && src != SQLITE_DONE) {
        rc = sql_fail(s, "ST_MESSAGES_TAIL", src);
        goto out;
    }
    for (size_t i = 0; i < count / 2; i++) { /* oldest first */
        store_message tmp = arr[i];
        arr[i] = arr[count - 1 - i];
        arr[count - 1 - i] = tmp;
    }
    for (size_t i = 0; i < count && rc == CHAT_OK; i++)
        rc = unpack_message(s, &arr[i]);
    if (rc != CHAT_OK)
        goto out;
    rc = sql_tx_commit(s);
out:
    if (hc)
        history_cache_fill(hc, session_id, ticket, rc == CHAT_OK, tail_tokens, arr, count, messages);
    if (rc != CHAT_OK) {
        sql_tx_rollback(s);
        store_messages_free(arr, count);
        return rc;
    }
    *out = arr;
    *n = count;
    *skipped = messages > (int64_t)count ? messages - (int64_t)count : 0;
    return CHAT_OK;
}

static chat_rc sqlite_messages_list(sqlite_db *s, const char *session_id, int64_t after_seq, int limit,
                                    store_message **out, size_t *n)
{
    if (!out || !n)
        return CHAT_EINVAL;
    *out = NULL;
    *n = 0;

    store_message *arr = NULL;
    size_t count = 0, cap = 0;
    sqlite3_stmt *st;
    int src;
    /* A read transaction, so that the existence check and the rows come from
     * one snapshot (a concurrent delete cannot turn ENOTFOUND into "empty"). */
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_READ);
    if (rc != CHAT_OK)
        return rc;

    st = s->st[ST_SESSION_EXISTS];
    sql_bind_text(s, st, 1, session_id);
    src = sql_step(s, st);
    done(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? CHAT_ENOTFOUND : sql_fail(s, "ST_SESSION_EXISTS", src);
        goto out;
    }

    st = s->st[ST_MESSAGES_LIST];
    sql_bind_text(s, st, 1, session_id);
    sql_bind_i64(s, st, 2, after_seq);
    sql_bind_i64(s, st, 3, limit > 0 ? limit : -1); /* LIMIT -1: no limit */
    while ((src = sql_step(s, st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            arr = chat_xrealloc(arr, cap * sizeof *arr);
        }
        memset(&arr[count], 0, sizeof arr[count]);
        read_message(st, &arr[count]);
        count++;
    }
    done(st);
    if (src != SQLITE_DONE) {
        rc = sql_fail(s, "ST_MESSAGES_LIST", src);
        goto out;
    }
    for (size_t i = 0; i < count && rc == CHAT_OK; i++)
        rc = unpack_message(s, &arr[i]);
    if (rc != CHAT_OK)
        goto out;
    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK) {
        sql_tx_rollback(s);
        store_messages_free(arr, count);
        return rc;
    }
    *out = arr;
    *n = count;
    return CHAT_OK;
}

/* ---- stats and retention -------------------------------------------------- */

static chat_rc sqlite_stats_get(sqlite_db *s, store_stats *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    if (!s)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_STATS_GET];
    int rc = sql_step(s, st);
    chat_rc out_rc = CHAT_OK;
    if (rc == SQLITE_ROW) {
        out->total_sessions = sqlite3_column_int64(st, 0);
        out->total_messages = sqlite3_column_int64(st, 1);
        out->total_turns = sqlite3_column_int64(st, 2);
        out->usage.input_tokens = sqlite3_column_int64(st, 3);
        out->usage.output_tokens = sqlite3_column_int64(st, 4);
        out->usage.cache_read_tokens = sqlite3_column_int64(st, 5);
        out->usage.cache_write_tokens = sqlite3_column_int64(st, 6);
        out->cost_micros = sqlite3_column_int64(st, 7);
    } else {
        /* SQLITE_DONE: the row that 001_init inserts is gone. */
        out_rc = sql_fail(s, "ST_STATS_GET", rc == SQLITE_DONE ? SQLITE_CORRUPT : rc);
    }
    done(st);
    return out_rc;
}

struct expired {
    char *id;
    int64_t turns;
    int64_t messages;
};

static chat_rc sqlite_sessions_expire(sqlite_db *s, int64_t before, int64_t now, int limit, int64_t *deleted)
{
    if (deleted)
        *deleted = 0;

    struct expired *victims = NULL;
    size_t count = 0, cap = 0;
    sqlite3_stmt *st;
    int src;
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;

    st = s->st[ST_EXPIRE_SELECT];
    sql_bind_i64(s, st, 1, before);
    sql_bind_i64(s, st, 2, limit);
    while ((src = sql_step(s, st)) == SQLITE_ROW) {
        /* A session in a turn stays: its commit is coming. */
        if (turn_locks_live(sqlite_turn_locks(s), (const char *)sqlite3_column_text(st, 0), now))
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            victims = chat_xrealloc(victims, cap * sizeof *victims);
        }
        victims[count].id = sql_col_dup(st, 0);
        victims[count].turns = sqlite3_column_int64(st, 1);
        victims[count].messages = sqlite3_column_int64(st, 2);
        count++;
    }
    done(st);
    if (src != SQLITE_DONE) {
        rc = sql_fail(s, "ST_EXPIRE_SELECT", src);
        goto out;
    }
    for (size_t i = 0; i < count && rc == CHAT_OK; i++)
        rc = delete_session(s, victims[i].id, victims[i].turns, victims[i].messages);
    if (rc != CHAT_OK)
        goto out;

    /* Locks whose turn ended without releasing them (a lost worker) and whose
     * session never got another turn would otherwise stay forever. */
    turn_locks_sweep(sqlite_turn_locks(s), now);
    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
    else if (deleted)
        *deleted = (int64_t)count;
    for (size_t i = 0; i < count; i++)
        free(victims[i].id);
    free(victims);
    return rc;
}

/* ---- idempotency ---------------------------------------------------------- */

/* Fills out from a live row of IDEM_COLS, for a request with body_hash. */
static void read_idem(sqlite3_stmt *st, const char *body_hash, store_idem *out)
{
    const unsigned char *hash = sqlite3_column_text(st, IDEM_COL_HASH);
    const unsigned char *state = sqlite3_column_text(st, IDEM_COL_STATE);
    out->session_id = sql_col_dup(st, IDEM_COL_SESSION);
    out->created_at = sqlite3_column_int64(st, IDEM_COL_CREATED);
    out->expires_at = sqlite3_column_int64(st, IDEM_COL_EXPIRES);
    /* A different body is reported first, whatever the state: it is the
     * client's mistake, and retrying later would not cure it. */
    if (!hash || strcmp((const char *)hash, body_hash) != 0) {
        out->outcome = STORE_IDEM_MISMATCH;
        return;
    }
    if (!state || strcmp((const char *)state, "done") != 0) {
        out->outcome = STORE_IDEM_RUNNING;
        return;
    }
    out->outcome = STORE_IDEM_REPLAY;
    out->status = sqlite3_column_int(st, IDEM_COL_STATUS);
    out->response = sql_col_dup(st, IDEM_COL_RESPONSE);
    if (sqlite3_column_type(st, 0) != SQLITE_NULL) { /* reply_id: done by a turn commit */
        out->has_reply = true;
        read_message(st, &out->reply);
        out->turn_count = sqlite3_column_int64(st, IDEM_COL_TURNS);
    }
}

static chat_rc sqlite_idem_begin(sqlite_db *s, const char *scope, const char *key, const char *body_hash,
                                 const char *token, const char *session_id, int64_t now, int64_t lease_ms,
                                 store_idem *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);

    sqlite3_stmt *st;
    int src;
    bool exists = false, live = false;
    /* A write transaction from the start: the look-up and the insert must be
     * one step, or two requests with the same key could both see no record. */
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;

    st = s->st[ST_IDEM_GET];
    sql_bind_text(s, st, 1, scope);
    sql_bind_text(s, st, 2, key);
    src = sql_step(s, st);
    if (src == SQLITE_ROW) {
        exists = true;
        live = sqlite3_column_int64(st, IDEM_COL_EXPIRES) > now;
        if (live)
            read_idem(st, body_hash, out);
    }
    done(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = sql_fail(s, "ST_IDEM_GET", src);
        goto out;
    }

    if (!live) {
        /* Absent, or expired (running or done): start afresh. */
        if (exists) {
            sql_bind_text(s, s->st[ST_IDEM_DROP], 1, scope);
            sql_bind_text(s, s->st[ST_IDEM_DROP], 2, key);
            rc = sql_run(s, ST_IDEM_DROP);
            if (rc != CHAT_OK)
                goto out;
        }
        st = s->st[ST_IDEM_INSERT];
        sql_bind_text(s, st, 1, scope);
        sql_bind_text(s, st, 2, key);
        sql_bind_text(s, st, 3, token);
        sql_bind_text(s, st, 4, body_hash);
        sql_bind_text(s, st, 5, session_id);
        sql_bind_i64(s, st, 6, now);
        sql_bind_i64(s, st, 7, now + lease_ms);
        rc = sql_run(s, ST_IDEM_INSERT);
        if (rc != CHAT_OK)
            goto out;
        out->outcome = STORE_IDEM_NEW;
        out->session_id = session_id ? chat_xstrdup(session_id) : NULL;
        out->created_at = now;
        out->expires_at = now + lease_ms;
    }
    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK) {
        sql_tx_rollback(s);
        store_idem_clear(out);
    }
    return rc;
}

static chat_rc sqlite_idem_refresh(sqlite_db *s, const char *scope, const char *key, const char *token, int64_t now,
                                   int64_t lease_ms)
{
    sqlite3_stmt *st = s->st[ST_IDEM_REFRESH];
    sql_bind_text(s, st, 1, scope);
    sql_bind_text(s, st, 2, key);
    sql_bind_text(s, st, 3, token);
    sql_bind_i64(s, st, 4, now + lease_ms);
    chat_rc rc = sql_run(s, ST_IDEM_REFRESH);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static chat_rc sqlite_idem_finish(sqlite_db *s, const char *scope, const char *key, const char *token, int status,
                                  const char *response, int64_t now, int64_t ttl_ms)
{
    sqlite3_stmt *st = s->st[ST_IDEM_FINISH];
    sql_bind_text(s, st, 1, scope);
    sql_bind_text(s, st, 2, key);
    sql_bind_text(s, st, 3, token);
    sql_bind_i64(s, st, 4, status);
    sql_bind_text(s, st, 5, response);
    sql_bind_i64(s, st, 6, now + ttl_ms);
    chat_rc rc = sql_run(s, ST_IDEM_FINISH);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static chat_rc sqlite_idem_abort(sqlite_db *s, const char *scope, const char *key, const char *token)
{
    sqlite3_stmt *st = s->st[ST_IDEM_ABORT];
    sql_bind_text(s, st, 1, scope);
    sql_bind_text(s, st, 2, key);
    sql_bind_text(s, st, 3, token);
    return sql_run(s, ST_IDEM_ABORT);
}

static chat_rc sqlite_idem_expire(sqlite_db *s, int64_t now, int limit, int64_t *deleted)
{
    if (deleted)
        *deleted = 0;
    sqlite3_stmt *st = s->st[ST_IDEM_EXPIRE];
    sql_bind_i64(s, st, 1, now);
    sql_bind_i64(s, st, 2, limit);
    chat_rc rc = sql_run(s, ST_IDEM_EXPIRE);
    if (rc == CHAT_OK && deleted)
        *deleted = sqlite3_changes(s->db);
    return rc;
}

/* ---- the backend ------------------------------------------------------------- */

static chat_rc be_open(const char *url, void **impl, char *err, size_t errlen)
{
    sqlite_db *s = NULL;
    chat_rc rc = sqlite_open(url, &s, err, errlen);
    *impl = s;
    return rc;
}

static void be_close(void *impl)
{
    sqlite_close(impl);
}

static int be_schema_version(void *impl)
{
    return sqlite_schema_version(impl);
}

/* One op, by the function of the synchronous API it stands for. */
chat_rc sqlite_run_op(sqlite_db *s, store_op *op)
{
    const store_op_in *in = &op->in;
    store_op_out *o = &op->out;
    chat_rc rc = CHAT_EINVAL;
    switch (op->kind) {
    case STORE_OP_PING: rc = sqlite_ping(s); break;
    case STORE_OP_LOCK_ACQUIRE: rc = sqlite_lock_acquire(s, in->session_id, in->token, in->now, in->ttl_ms); break;
    case STORE_OP_LOCK_REFRESH: rc = sqlite_lock_refresh(s, in->session_id, in->token, in->now, in->ttl_ms); break;
    case STORE_OP_LOCK_RELEASE: rc = sqlite_lock_release(s, in->session_id, in->token); break;
    case STORE_OP_TURN_COMMIT:
        if (op->n_packed != 2)
            chat_fatal("store(sqlite): a turn commit that store_op_prepare did not prepare");
        rc = sqlite_turn_commit(s, &in->turn, op->packed, &o->turn);
        break;
    case STORE_OP_SESSION_GET: rc = sqlite_session_get(s, in->session_id, &o->session); break;
    case STORE_OP_SESSION_DELETE: rc = sqlite_session_delete(s, in->session_id); break;
    case STORE_OP_SESSION_RESET: rc = sqlite_session_reset(s, in->session_id, in->now, &o->count); break;
    case STORE_OP_SESSIONS_LIST:
    case STORE_OP_SESSIONS_LIST_OLDEST:
        rc = sqlite_sessions_list(s, in->owner, in->cursor, in->limit, op->kind == STORE_OP_SESSIONS_LIST_OLDEST,
                                  &o->sessions, &o->n_sessions, &o->next_cursor);
        break;
    case STORE_OP_MESSAGES_LIST:
        if (in->tail_tokens > 0)
            rc = sqlite_messages_tail(s, in->session_id, in->tail_tokens, &o->messages, &o->n_messages, &o->count);
        else
            rc = sqlite_messages_list(s, in->session_id, in->after_seq, in->limit, &o->messages, &o->n_messages);
        break;
    case STORE_OP_STATS_GET: rc = sqlite_stats_get(s, &o->stats); break;
    case STORE_OP_SESSIONS_EXPIRE: rc = sqlite_sessions_expire(s, in->before, in->now, in->limit, &o->count); break;
    case STORE_OP_IDEM_BEGIN:
        rc = sqlite_idem_begin(s, in->scope, in->idem_key, in->body_hash, in->token, in->session_id, in->now,
                               in->ttl_ms, &o->idem);
        break;
    case STORE_OP_IDEM_REFRESH:
        rc = sqlite_idem_refresh(s, in->scope, in->idem_key, in->token, in->now, in->ttl_ms);
        break;
    case STORE_OP_IDEM_FINISH:
        rc = sqlite_idem_finish(s, in->scope, in->idem_key, in->token, in->status, in->response, in->now, in->ttl_ms);
        break;
    case STORE_OP_IDEM_ABORT: rc = sqlite_idem_abort(s, in->scope, in->idem_key, in->token); break;
    case STORE_OP_IDEM_EXPIRE: rc = sqlite_idem_expire(s, in->now, in->limit, &o->count); break;
    case STORE_OP_KEY_CREATE: rc = sqlite_key_create(s, &in->key_new); break;
    case STORE_OP_KEY_FIND_BY_HASH: rc = sqlite_key_find_by_hash(s, in->hash, &o->key); break;
    case STORE_OP_KEYS_LIST: rc = sqlite_keys_list(s, &o->keys, &o->n_keys); break;
    case STORE_OP_KEY_REVOKE: rc = sqlite_key_revoke(s, in->id, in->now, &o->key); break;
    case STORE_OP_KEY_TOUCH: rc = sqlite_key_touch(s, in->id, in->now); break;
    case STORE_OP_KEY_SESSION_COUNT: rc = sqlite_key_session_count(s, in->id, &o->count); break;
    case STORE_OP_SESSION_IMPORT:
        if (op->n_packed != in->n_import_messages || !op->packed)
            chat_fatal("store(sqlite): an import that store_op_prepare did not prepare");
        rc = sqlite_session_import(s, in->import_session, in->import_messages, op->packed, in->n_import_messages);
        break;
    case STORE_OP_KEY_IMPORT: rc = sqlite_key_import(s, in->import_key); break;
    case STORE_OP_KIND_COUNT: break;
    }
    op->rc = rc;
    return rc;
}

static chat_rc be_run(void *impl, store_op *op)
{
    sqlite_history_write_begin(impl, op);
    chat_rc rc = sqlite_run_op(impl, op);
    sqlite_history_write_end(impl, op);
    return rc;
}

/* Attached to a loop: a file database gets its writer thread; a private
 * :memory: database keeps running everything inline. */
static chat_rc be_attach(void *impl, struct event_base *base, int pool_size, int64_t queue_timeout_ms)
{
    (void)base;
    (void)pool_size;
    (void)queue_timeout_ms;
    sqlite_db *s = impl;
    return s->memory ? CHAT_OK : sqlite_writer_attach(s);
}

/* Reads and turn-lock ops run at once on this handle (WAL: a read never waits
 * for the writer; the locks are in memory) and complete on the next loop turn;
 * writes go to the writer thread, which completes them once their batch is on
 * disk, and so does an acquire that meets a commit in flight. */
static void be_submit(void *impl, store_op *op)
{
    sqlite_db *s = impl;
    if (s->wr) {
        turn_locks *locks = sqlite_turn_locks(s);
        bool queue = sqlite_op_writes(op->kind);
        if (op->kind == STORE_OP_TURN_COMMIT) {
            /* Pinned from now: an acquire meanwhile queues behind this commit
             * (below) instead of answering busy. A token that lost the lock
             * fails at the commit itself (CHAT_ECONFLICT). */
            (void)turn_locks_pin(locks, op->in.turn.session_id, op->in.turn.lock_token);
        } else if (op->kind == STORE_OP_LOCK_ACQUIRE && turn_locks_pinned(locks, op->in.session_id)) {
            queue = true; /* the writer runs it once the commit is settled */
        }
        if (queue) {
            sqlite_history_write_begin(s, op); /* its write_end: the writer's, after the commit */
            sqlite_writer_submit(s, op);
            return;
        }
    }
    sqlite_history_write_begin(s, op);
    sqlite_run_op(s, op);
    sqlite_history_write_end(s, op);
    store_op_defer(op);
}

static void be_detach(void *impl)
{
    sqlite_writer_detach(impl);
}

const store_backend store_backend_sqlite = {
    .name = "sqlite",
    .open = be_open,
    .close = be_close,
    .schema_version = be_schema_version,
    .run = be_run,
    .attach = be_attach,
    .submit = be_submit,
    .detach = be_detach,
};
