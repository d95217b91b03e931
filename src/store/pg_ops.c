/*
 * pg_ops.c: every store operation as one PostgreSQL statement (see pg.h).
 *
 * For each kind of store_op, a pg_op_def: the statement's SQL, how the op's
 * inputs become its text parameters (enc, which also validates them exactly as
 * the SQLite backend does, so both backends answer CHAT_EINVAL to the same
 * calls), and how the result fills the op's outputs (dec). Operations that
 * touch several rows call a PL/pgSQL function of the schema
 * (schema_pg/002_ops.sql), so that each is one round trip and one implicit
 * transaction; single-row writes are plain statements whose affected-row
 * count (PQcmdTuples) gives the answer, as sqlite3_changes() does in sqlite.c.
 *
 * The defs are immutable and shared by the blocking handle (postgres.c) and
 * the asynchronous pool (pg_pool.c). Results are in text format.
 */
#define _GNU_SOURCE
#include "store/backend.h"
#include "store/pg.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_out.h"
#include "core/log.h"
#include "store/blocks.h"

/* ---- parameters ------------------------------------------------------------- */

/* Too many parameters is a bug in a def, caught by the first test that runs it. */
static void param_slot_check(const pg_params *p)
{
    if (p->n >= PG_MAX_PARAMS) {
        chat_fatal("store(postgres): more than %d statement parameters", PG_MAX_PARAMS);
    }
}

void pg_param_str(pg_params *p, const char *v)
{
    param_slot_check(p);
    p->values[p->n++] = v;
}

void pg_param_i64(pg_params *p, int64_t v)
{
    param_slot_check(p);
    snprintf(p->num[p->n], sizeof p->num[p->n], "%" PRId64, v);
    p->values[p->n] = p->num[p->n];
    p->n++;
}

void pg_param_take(pg_params *p, char *heap_str)
{
    param_slot_check(p);
    p->owned[p->nowned++] = heap_str;
    p->values[p->n++] = heap_str;
}

void pg_params_clear(pg_params *p)
{
    for (int i = 0; i < p->nowned; i++)
        free(p->owned[i]);
    memset(p, 0, sizeof *p);
}

/* ---- argument checks: store_op_valid (backend.c), before an op gets here ---- */

/* ---- session cursors (the same form as sqlite.c's) --------------------------- */

/* ---- results ---------------------------------------------------------------- */

static bool res_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

/* Logs a failed statement (or a result of an unexpected shape: a schema that
 * does not match this binary) as one line and returns CHAT_EIO. */
static chat_rc res_fail(const PGresult *res, const store_op *op)
{
    if (res && res_ok(res)) {
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s,s:i,s:i}", "backend", "postgres", "op", store_op_name(op->kind), "error",
                           "unexpected result shape", "rows", PQntuples(res), "columns", PQnfields(res)));
        return CHAT_EIO;
    }
    const char *msg = res ? PQresultErrorMessage(res) : "no result";
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int len = (int)strcspn(msg, "\n");
    char *text = chat_xstrndup(msg, (size_t)len);
    chat_log(LOG_ERROR, "store error",
             json_pack("{s:s,s:s,s:s,s:s}", "backend", "postgres", "op", store_op_name(op->kind), "error", text,
                       "sqlstate", state ? state : "none"));
    free(text);
    return CHAT_EIO;
}

bool pg_res_rerunnable(const PGresult *res)
{
    if (!res || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return false;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state && (strcmp(state, "40P01") == 0 || strcmp(state, "40001") == 0);
}

void pg_log_rerun(const char *name, const PGresult *res, int attempt)
{
    chat_log(LOG_WARN, "postgres transaction rolled back, run again",
             json_pack("{s:s,s:s,s:i}", "op", name, "sqlstate", PQresultErrorField(res, PG_DIAG_SQLSTATE), "attempt",
                       attempt));
}

/* A bigint column; SQL NULL reads as 0 (as sqlite3_column_int64 does). */
static int64_t col_i64(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* Heap copy of a text column, NULL for SQL NULL. */
static char *col_dup(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : chat_xstrdup(PQgetvalue(res, row, col));
}

/* Rows changed by an INSERT/UPDATE/DELETE. */
static int64_t changed(const PGresult *res)
{
    return strtoll(PQcmdTuples((PGresult *)res), NULL, 10);
}

/* The status word of the first row's first column ('ok', 'conflict', ...). */
static bool word_is(const PGresult *res, const char *word)
{
    return PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) && strcmp(PQgetvalue(res, 0, 0), word) == 0;
}

#define SESSION_COLS                                                                       \
    "id, owner, system_prompt, model, created_at, updated_at, turn_count, message_count, " \
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros"

#define MESSAGE_COLS(p)                                                                                         \
    p "id, " p "seq, " p "role, " p "content, " p "status, " p "model, " p "stop_reason, " p "tokens, " p       \
      "input_tokens, " p "output_tokens, " p "cache_read_tokens, " p "cache_write_tokens, " p "cost_micros, " p \
      "created_at"

#define KEY_COLS                                                                           \
    "id, name, hash, role, rate_limit, created_at, revoked_at, last_used_at, turn_count, " \
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros"

/* Fills out from a row of SESSION_COLS. */
static void read_session(const PGresult *res, int row, store_session *out)
{
    out->id = col_dup(res, row, 0);
    out->owner = col_dup(res, row, 1);
    out->system_prompt = col_dup(res, row, 2);
    out->model = col_dup(res, row, 3);
    out->created_at = col_i64(res, row, 4);
    out->updated_at = col_i64(res, row, 5);
    out->turn_count = col_i64(res, row, 6);
    out->message_count = col_i64(res, row, 7);
    out->usage.input_tokens = col_i64(res, row, 8);
    out->usage.output_tokens = col_i64(res, row, 9);
    out->usage.cache_read_tokens = col_i64(res, row, 10);
    out->usage.cache_write_tokens = col_i64(res, row, 11);
    out->cost_micros = col_i64(res, row, 12);
}

/* Fills m from 14 columns in MESSAGE_COLS order starting at column c. */
static void read_message(const PGresult *res, int row, int c, store_message *m)
{
    m->id = col_i64(res, row, c);
    m->seq = col_i64(res, row, c + 1);
    m->role = col_dup(res, row, c + 2);
    m->content = col_dup(res, row, c + 3);
    m->status = col_dup(res, row, c + 4);
    m->model = col_dup(res, row, c + 5);
    m->stop_reason = col_dup(res, row, c + 6);
    m->tokens = col_i64(res, row, c + 7);
    m->usage.input_tokens = col_i64(res, row, c + 8);
    m->usage.output_tokens = col_i64(res, row, c + 9);
    m->usage.cache_read_tokens = col_i64(res, row, c + 10);
    m->usage.cache_write_tokens = col_i64(res, row, c + 11);
    m->cost_micros = col_i64(res, row, c + 12);
    m->created_at = col_i64(res, row, c + 13);
}

/* Fills out from KEY_COLS starting at column c. NULL times read as 0. */
static void read_key(const PGresult *res, int row, int c, store_key *out)
{
    out->id = col_dup(res, row, c);
    out->name = col_dup(res, row, c + 1);
    out->hash = col_dup(res, row, c + 2);
    out->role = col_dup(res, row, c + 3);
    out->rate_limit = col_dup(res, row, c + 4);
    out->created_at = col_i64(res, row, c + 5);
    out->revoked_at = col_i64(res, row, c + 6);
    out->last_used_at = col_i64(res, row, c + 7);
    out->turn_count = col_i64(res, row, c + 8);
    out->usage.input_tokens = col_i64(res, row, c + 9);
    out->usage.output_tokens = col_i64(res, row, c + 10);
    out->usage.cache_read_tokens = col_i64(res, row, c + 11);
    out->usage.cache_write_tokens = col_i64(res, row, c + 12);
    out->cost_micros = col_i64(res, row, c + 13);
}

/* ---- generic decoders ----------------------------------------------------------- */

/* Any successful result is CHAT_OK. */
static chat_rc dec_ok(const PGresult *res, store_op *op)
{
    return res_ok(res) ? CHAT_OK : res_fail(res, op);
}

/* One changed row: CHAT_OK; none: CHAT_ECONFLICT (token no longer owns it). */
static chat_rc dec_one_or_conflict(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    return changed(res) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

/* The count of changed rows goes to out.count. */
static chat_rc dec_changed_count(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    op->out.count = changed(res);
    return CHAT_OK;
}

/* A one-column bigint result goes to out.count; no row (or NULL): ENOTFOUND. */
static chat_rc dec_count_or_notfound(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return CHAT_ENOTFOUND;
    op->out.count = col_i64(res, 0, 0);
    return CHAT_OK;
}

/* ---- per kind ------------------------------------------------------------------ */

static chat_rc enc_none(const store_op *op, pg_params *p)
{
    (void)op;
    (void)p;
    return CHAT_OK;
}

static chat_rc enc_lock_ttl(const store_op *op, pg_params *p)
{
    const store_op_in *in = &op->in;
    pg_param_str(p, in->session_id);
    pg_param_str(p, in->token);
    pg_param_i64(p, in->now + in->ttl_ms);
    if (op->kind == STORE_OP_LOCK_ACQUIRE)
        pg_param_i64(p, in->now);
    return CHAT_OK;
}

/* Inserted, or an expired lock taken over: one row; a live lock kept: none. */
static chat_rc dec_lock_acquire(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    return changed(res) == 1 ? CHAT_OK : CHAT_EBUSY;
}

static chat_rc enc_lock_release(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.session_id);
    pg_param_str(p, op->in.token);
    return CHAT_OK;
}

/* ---- blocks and images (store/blocks.h) ------------------------------------ */

static int blob_ptr_cmp(const void *a, const void *b)
{
    return strcmp((*(const store_blob *const *)a)->sha256, (*(const store_blob *const *)b)->sha256);
}

/* The images of n packed messages as chatd_blobs_keep takes them: a JSON
 * array of [sha256, media_type, data, bytes], distinct, in ascending sha256
 * order (the lock order); NULL (SQL NULL) when there are none. Heap. */
static char *blobs_json(const store_packed *packed, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += packed[i].n_blobs;
    if (total == 0)
        return NULL;
    const store_blob **all = chat_xcalloc(total, sizeof *all);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < packed[i].n_blobs; j++)
            all[k++] = &packed[i].blobs[j];
    qsort(all, total, sizeof *all, blob_ptr_cmp);
    /* Written by hand rather than through jansson, which would check and
     * escape every character of megabytes of base64 that needs no escaping
     * (its alphabet and '=' only: store_blocks_pack moved nothing else). */
    chat_buf b;
    chat_buf_init(&b, SIZE_MAX);
    int ok = chat_buf_append(&b, "[", 1) == CHAT_OK;
    for (size_t i = 0; i < total && ok; i++) {
        if (i > 0 && strcmp(all[i]->sha256, all[i - 1]->sha256) == 0)
            continue;
        json_t *mt = json_string(all[i]->media_type);
        char *mtext = mt ? chat_json_dumps(mt, JSON_ENCODE_ANY, NULL) : NULL;
        json_decref(mt);
        if (!mtext)
            chat_fatal("store(postgres): cannot encode an image's media type");
        ok = chat_buf_printf(&b, "%s[\"%s\",%s,\"", b.len > 1 ? "," : "", all[i]->sha256, mtext) == CHAT_OK &&
             chat_buf_append(&b, all[i]->data, all[i]->data_len) == CHAT_OK &&
             chat_buf_printf(&b, "\",%" PRId64 "]", all[i]->bytes) == CHAT_OK;
        free(mtext);
    }
    ok = ok && chat_buf_append(&b, "]", 1) == CHAT_OK;
    free(all);
    if (!ok)
        chat_fatal("store(postgres): out of memory encoding image blobs");
    return chat_buf_steal(&b);
}

/* The sha256 of a message's images as a PostgreSQL text[] literal
 * ("{a,b}": hex needs no quoting); NULL when it has none. Heap. */
static char *refs_array(const store_packed *p)
{
    if (p->n_blobs == 0)
        return NULL;
    char *out = chat_xmalloc(p->n_blobs * (STORE_BLOB_HEX + 1) + 2);
    size_t len = 0;
    out[len++] = '{';
    for (size_t i = 0; i < p->n_blobs; i++) {
        if (i > 0)
            out[len++] = ',';
        memcpy(out + len, p->blobs[i].sha256, STORE_BLOB_HEX);
        len += STORE_BLOB_HEX;
    }
    out[len++] = '}';
    out[len] = '\0';
    return out;
}

static chat_rc enc_turn_commit(const store_op *op, pg_params *p)
{
    const store_turn *t = &op->in.turn;
    pg_param_str(p, t->session_id);
    pg_param_str(p, t->owner);
    pg_param_str(p, t->system_prompt);
    pg_param_str(p, t->model);
    pg_param_str(p, t->session_model ? t->session_model : t->model);
    pg_param_str(p, t->user_content);
    pg_param_str(p, t->assistant_content);
    pg_param_str(p, t->status);
    pg_param_str(p, t->stop_reason);
    pg_param_i64(p, t->user_tokens);
    pg_param_i64(p, t->usage.input_tokens);
    pg_param_i64(p, t->usage.output_tokens);
    pg_param_i64(p, t->usage.cache_read_tokens);
    pg_param_i64(p, t->usage.cache_write_tokens);
    pg_param_i64(p, t->cost_micros);
    pg_param_str(p, t->lock_token);
    pg_param_i64(p, t->now);
    pg_param_str(p, t->idem_key ? t->idem_scope : NULL);
    pg_param_str(p, t->idem_key);
    if (t->idem_key)
        pg_param_i64(p, t->now + t->idem_ttl_ms);
    else
        pg_param_str(p, NULL);
    /* The blocks in their stored form, and the images apart (store/blocks.h;
     * made by store_op_prepare, owned by the op, which outlives the query). */
    const store_packed *packed = op->packed;
    if (op->n_packed != 2)
        chat_fatal("store(postgres): a turn commit that store_op_prepare did not prepare");
    pg_param_str(p, packed[0].stored);
    pg_param_str(p, packed[1].stored);
    pg_param_str(p, t->idem_key ? t->assistant_blocks : NULL); /* the record keeps the reply whole */
    pg_param_take(p, blobs_json(packed, 2));
    pg_param_take(p, refs_array(&packed[0]));
    pg_param_take(p, refs_array(&packed[1]));
    return CHAT_OK;
}

static chat_rc dec_turn_commit(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (word_is(res, "conflict"))
        return CHAT_ECONFLICT;
    if (!word_is(res, "ok") || PQnfields(res) != 5)
        return res_fail(res, op);
    op->out.turn.user_message_id = col_i64(res, 0, 1);
    op->out.turn.assistant_message_id = col_i64(res, 0, 2);
    op->out.turn.turn_count = col_i64(res, 0, 3);
    op->out.turn.message_count = col_i64(res, 0, 4);
    return CHAT_OK;
}

static chat_rc enc_session_id(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.session_id);
    return CHAT_OK;
}

static chat_rc dec_session_get(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (PQntuples(res) == 0)
        return CHAT_ENOTFOUND;
    read_session(res, 0, &op->out.session);
    return CHAT_OK;
}

static chat_rc dec_session_delete(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (word_is(res, "notfound"))
        return CHAT_ENOTFOUND;
    return word_is(res, "ok") ? CHAT_OK : res_fail(res, op);
}

static chat_rc enc_session_reset(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.session_id);
    pg_param_i64(p, op->in.now);
    return CHAT_OK;
}

static chat_rc enc_sessions_list(const store_op *op, pg_params *p)
{
    const store_op_in *in = &op->in;
    int64_t after_created = 0;
    char after_id[STORE_ID_MAX + 1];
    if (in->cursor && !store_cursor_parse(in->cursor, &after_created, after_id))
        return CHAT_EINVAL;
    /* One row more than asked tells whether another page follows. */
    pg_param_i64(p, (int64_t)in->limit + 1);
    if (in->cursor) {
        pg_param_i64(p, after_created);
        pg_param_take(p, chat_xstrdup(after_id));
    } else {
        pg_param_str(p, NULL);
        pg_param_str(p, NULL);
    }
    pg_param_str(p, in->owner);
    return CHAT_OK;
}

static chat_rc dec_sessions_list(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    int rows = PQntuples(res);
    int count = rows > op->in.limit ? op->in.limit : rows;
    store_session *arr = count > 0 ? chat_xcalloc((size_t)count, sizeof *arr) : NULL;
    for (int i = 0; i < count; i++)
        read_session(res, i, &arr[i]);
    if (rows > count)
        op->out.next_cursor = store_cursor_make(arr[count - 1].created_at, arr[count - 1].id);
    op->out.sessions = arr;
    op->out.n_sessions = (size_t)count;
    return CHAT_OK;
}

static chat_rc enc_messages_list(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.session_id);
    pg_param_i64(p, op->in.after_seq);
    if (op->in.limit > 0)
        pg_param_i64(p, op->in.limit);
    else
        pg_param_str(p, NULL); /* LIMIT NULL: all */
    return CHAT_OK;
}

/* Puts the images back into m->blocks (stored form) from images, the list
 * "<sha256>:<base64>,..." of the blobs the message links (or NULL). */
static chat_rc unpack_blocks(store_message *m, const char *images)
{
    if (!store_blocks_has_refs(m->blocks))
        return CHAT_OK;
    char *whole = NULL;
    chat_rc rc = store_blocks_unpack(m->blocks, store_blob_lookup_pairs, (void *)images, &whole);
    if (rc == CHAT_OK) {
        free(m->blocks);
        m->blocks = whole;
    }
    return rc;
}

/* No row: no session. One row with a NULL message id: a session without
 * (further) messages. Otherwise one message per row. fields: the columns
 * expected (the tail adds the session's message count). */
static chat_rc dec_messages(const PGresult *res, store_op *op, int fields)
{
    if (!res_ok(res))
        return res_fail(res, op);
    int rows = PQntuples(res);
    if (rows == 0)
        return CHAT_ENOTFOUND;
    if (rows == 1 && PQgetisnull(res, 0, 0))
        return CHAT_OK;
    if (PQnfields(res) != fields)
        return res_fail(res, op);
    store_message *arr = chat_xcalloc((size_t)rows, sizeof *arr);
    chat_rc rc = CHAT_OK;
    for (int i = 0; i < rows && rc == CHAT_OK; i++) {
        read_message(res, i, 0, &arr[i]);
        arr[i].blocks = col_dup(res, i, 14);
        rc = unpack_blocks(&arr[i], PQgetisnull(res, i, 15) ? NULL : PQgetvalue(res, i, 15));
    }
    if (rc != CHAT_OK) {
        store_messages_free(arr, (size_t)rows);
        return rc;
    }
    op->out.messages = arr;
    op->out.n_messages = (size_t)rows;
    return CHAT_OK;
}

static chat_rc dec_messages_list(const PGresult *res, store_op *op)
{
    return dec_messages(res, op, 16);
}

static chat_rc enc_messages_tail(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.session_id);
    pg_param_i64(p, op->in.tail_tokens);
    return CHAT_OK;
}

/* As the list, and out.count: the session's messages left out. */
static chat_rc dec_messages_tail(const PGresult *res, store_op *op)
{
    chat_rc rc = dec_messages(res, op, 17);
    if (rc == CHAT_OK && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
        int64_t total = strtoll(PQgetvalue(res, 0, 16), NULL, 10);
        op->out.count = total > (int64_t)op->out.n_messages ? total - (int64_t)op->out.n_messages : 0;
    }
    return rc;
}

static chat_rc dec_stats_get(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    /* The shards that 001_init inserts are gone: not a state we can answer from. */
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "postgres", "op", "stats_get", "error",
                           "the stats rows are missing"));
        return CHAT_EIO;
    }
    store_stats *st = &op->out.stats;
    st->total_sessions = col_i64(res, 0, 0);
    st->total_messages = col_i64(res, 0, 1);
    st->total_turns = col_i64(res, 0, 2);
    st->usage.input_tokens = col_i64(res, 0, 3);
    st->usage.output_tokens = col_i64(res, 0, 4);
    st->usage.cache_read_tokens = col_i64(res, 0, 5);
    st->usage.cache_write_tokens = col_i64(res, 0, 6);
    st->cost_micros = col_i64(res, 0, 7);
    return CHAT_OK;
}

static chat_rc enc_sessions_expire(const store_op *op, pg_params *p)
{
    pg_param_i64(p, op->in.before);
    pg_param_i64(p, op->in.now);
    pg_param_i64(p, op->in.limit);
    return CHAT_OK;
}

static chat_rc enc_idem_begin(const store_op *op, pg_params *p)
{
    const store_op_in *in = &op->in;
    pg_param_str(p, in->scope);
    pg_param_str(p, in->idem_key);
    pg_param_str(p, in->body_hash);
    pg_param_str(p, in->token);
    pg_param_str(p, in->session_id);
    pg_param_i64(p, in->now);
    pg_param_i64(p, in->now + in->ttl_ms);
    return CHAT_OK;
}

/* Columns of chatd_idem_begin's result. */
enum {
    IDEM_OUTCOME = 0,
    IDEM_REPLY = 1, /* 14 columns in MESSAGE_COLS order (the role is 'assistant') */
    IDEM_STATUS = 15,
    IDEM_RESPONSE,
    IDEM_SESSION,
    IDEM_CREATED,
    IDEM_EXPIRES,
    IDEM_TURNS,
    IDEM_REPLY_BLOCKS, /* whole, images inline */
    IDEM_NCOLS
};

static chat_rc dec_idem_begin(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (PQntuples(res) != 1 || PQnfields(res) != IDEM_NCOLS)
        return res_fail(res, op);
    store_idem *out = &op->out.idem;
    const char *outcome = PQgetvalue(res, 0, IDEM_OUTCOME);
    if (strcmp(outcome, "new") == 0) {
        out->outcome = STORE_IDEM_NEW;
        out->session_id = op->in.session_id ? chat_xstrdup(op->in.session_id) : NULL;
        out->created_at = op->in.now;
        out->expires_at = op->in.now + op->in.ttl_ms;
        return CHAT_OK;
    }
    if (strcmp(outcome, "mismatch") == 0)
        out->outcome = STORE_IDEM_MISMATCH;
    else if (strcmp(outcome, "running") == 0)
        out->outcome = STORE_IDEM_RUNNING;
    else if (strcmp(outcome, "replay") == 0)
        out->outcome = STORE_IDEM_REPLAY;
    else
        return res_fail(res, op);
    out->session_id = col_dup(res, 0, IDEM_SESSION);
    out->created_at = col_i64(res, 0, IDEM_CREATED);
    out->expires_at = col_i64(res, 0, IDEM_EXPIRES);
    if (out->outcome != STORE_IDEM_REPLAY)
        return CHAT_OK;
    out->status = (int)col_i64(res, 0, IDEM_STATUS);
    out->response = col_dup(res, 0, IDEM_RESPONSE);
    if (!PQgetisnull(res, 0, IDEM_REPLY)) { /* reply_id: done by a turn commit */
        out->has_reply = true;
        read_message(res, 0, IDEM_REPLY, &out->reply);
        out->reply.blocks = col_dup(res, 0, IDEM_REPLY_BLOCKS);
        out->turn_count = col_i64(res, 0, IDEM_TURNS);
    }
    return CHAT_OK;
}

static chat_rc enc_idem_refresh(const store_op *op, pg_params *p)
{
    const store_op_in *in = &op->in;
    pg_param_str(p, in->scope);
    pg_param_str(p, in->idem_key);
    pg_param_str(p, in->token);
    pg_param_i64(p, in->now + in->ttl_ms);
    return CHAT_OK;
}

static chat_rc enc_idem_finish(const store_op *op, pg_params *p)
{
    const store_op_in *in = &op->in;
    pg_param_str(p, in->scope);
    pg_param_str(p, in->idem_key);
    pg_param_str(p, in->token);
    pg_param_i64(p, in->status);
    pg_param_str(p, in->response);
    pg_param_i64(p, in->now + in->ttl_ms);
    return CHAT_OK;
}

static chat_rc enc_idem_abort(const store_op *op, pg_params *p)
{
    const store_op_in *in = &op->in;
    pg_param_str(p, in->scope);
    pg_param_str(p, in->idem_key);
    pg_param_str(p, in->token);
    return CHAT_OK;
}

static chat_rc enc_idem_expire(const store_op *op, pg_params *p)
{
    pg_param_i64(p, op->in.now);
    pg_param_i64(p, op->in.limit);
    return CHAT_OK;
}

static chat_rc enc_key_create(const store_op *op, pg_params *p)
{
    const store_key_new *k = &op->in.key_new;
    pg_param_str(p, k->id);
    pg_param_str(p, k->name);
    pg_param_str(p, k->hash);
    pg_param_str(p, k->role);
    pg_param_str(p, k->rate_limit);
    pg_param_i64(p, k->now);
    return CHAT_OK;
}

static chat_rc enc_key_hash(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.hash);
    return CHAT_OK;
}

static chat_rc dec_key_one(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (PQntuples(res) == 0)
        return CHAT_ENOTFOUND;
    read_key(res, 0, 0, &op->out.key);
    return CHAT_OK;
}

static chat_rc dec_keys_list(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    int rows = PQntuples(res);
    store_key *arr = rows > 0 ? chat_xcalloc((size_t)rows, sizeof *arr) : NULL;
    for (int i = 0; i < rows; i++)
        read_key(res, i, 0, &arr[i]);
    op->out.keys = arr;
    op->out.n_keys = (size_t)rows;
    return CHAT_OK;
}

static chat_rc enc_key_revoke(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.id);
    pg_param_i64(p, op->in.now);
    return CHAT_OK;
}

static chat_rc dec_key_revoke(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op);
    if (word_is(res, "notfound"))
        return CHAT_ENOTFOUND;
    if (word_is(res, "conflict"))
        return CHAT_ECONFLICT;
    if (!word_is(res, "ok"))
        return res_fail(res, op);
    read_key(res, 0, 1, &op->out.key);
    return CHAT_OK;
}

static chat_rc enc_key_touch(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.id);
    pg_param_i64(p, op->in.now);
    pg_param_i64(p, op->in.now - STORE_KEY_TOUCH_MS);
    return CHAT_OK;
}

static chat_rc enc_key_id(const store_op *op, pg_params *p)
{
    pg_param_str(p, op->in.id);
    return CHAT_OK;
}

/* A JSON string, or JSON null for NULL; NULL when s is not valid UTF-8. */
static json_t *json_str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* The messages of an import as the JSON array chatd_session_import unpacks,
 * with their blocks in stored form (packed[i]) and the sha256 of their images
 * ("refs"); NULL when a string is not valid UTF-8 (PostgreSQL text could not
 * hold it). */
static char *messages_json(const store_message *msgs, const store_packed *packed, size_t n)
{
    json_t *arr = json_array();
    char *out = NULL;
    for (size_t i = 0; i < n; i++) {
        const store_message *m = &msgs[i];
        json_t *content = json_string(m->content), *model = json_str_or_null(m->model),
               *stop = json_str_or_null(m->stop_reason);
        json_t *o =
            content && model && stop
                ? json_pack("{s:I,s:s,s:o,s:s,s:o,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "seq", (json_int_t)m->seq, "role",
                            m->role, "content", content, "status", m->status, "model", model, "stop_reason", stop,
                            "tokens", (json_int_t)m->tokens, "input_tokens", (json_int_t)m->usage.input_tokens,
                            "output_tokens", (json_int_t)m->usage.output_tokens, "cache_read_tokens",
                            (json_int_t)m->usage.cache_read_tokens, "cache_write_tokens",
                            (json_int_t)m->usage.cache_write_tokens, "cost_micros", (json_int_t)m->cost_micros,
                            "created_at", (json_int_t)m->created_at)
                : NULL;
        if (!o) {
            /* json_pack steals its "o" arguments even when it fails. */
            if (!(content && model && stop)) {
                json_decref(content);
                json_decref(model);
                json_decref(stop);
            }
            goto out;
        }
        if (packed[i].stored) {
            json_t *blocks = json_string(packed[i].stored);
            if (!blocks) {
                json_decref(o);
                goto out;
            }
            json_object_set_new(o, "blocks", blocks);
        }
        if (packed[i].n_blobs > 0) {
            json_t *refs = json_array();
            for (size_t j = 0; j < packed[i].n_blobs; j++)
                json_array_append_new(refs, json_string(packed[i].blobs[j].sha256));
            json_object_set_new(o, "refs", refs);
        }
        json_array_append_new(arr, o);
    }
    char *dumped = chat_json_dumps(arr, JSON_COMPACT, NULL);
    if (!dumped) {
        chat_fatal("store(postgres): out of memory encoding an import");
    }
    out = chat_xstrdup(dumped);
    free(dumped);
out:
    json_decref(arr);
    return out;
}

static chat_rc enc_session_import(const store_op *op, pg_params *p)
{
    const store_session *ss = op->in.import_session;
    const store_message *msgs = op->in.import_messages;
    size_t n = op->in.n_import_messages;
    if (op->n_packed != n || !op->packed)
        chat_fatal("store(postgres): an import that store_op_prepare did not prepare");
    char *json = messages_json(msgs, op->packed, n);
    if (!json)
        return CHAT_EINVAL;
    char *blobs = blobs_json(op->packed, n);
    pg_param_str(p, ss->id);
    pg_param_str(p, ss->owner);
    pg_param_str(p, ss->system_prompt);
    pg_param_str(p, ss->model);
    pg_param_i64(p, ss->created_at);
    pg_param_i64(p, ss->updated_at);
    pg_param_i64(p, ss->turn_count);
    pg_param_i64(p, ss->message_count);
    pg_param_i64(p, store_known(ss->usage.input_tokens));
    pg_param_i64(p, store_known(ss->usage.output_tokens));
    pg_param_i64(p, store_known(ss->usage.cache_read_tokens));
    pg_param_i64(p, store_known(ss->usage.cache_write_tokens));
    pg_param_i64(p, ss->cost_micros);
    pg_param_take(p, json);
    pg_param_take(p, blobs);
    return CHAT_OK;
}

static chat_rc dec_session_import(const PGresult *res, store_op *op)
{
    if (!res_ok(res))
        return res_fail(res, op); /* e.g. a repeated seq: UNIQUE (session_id, seq), as in SQLite */
    if (word_is(res, "conflict"))
        return CHAT_ECONFLICT;
    return word_is(res, "ok") ? CHAT_OK : res_fail(res, op);
}

static chat_rc enc_key_import(const store_op *op, pg_params *p)
{
    const store_key *k = op->in.import_key;
    pg_param_str(p, k->id);
    pg_param_str(p, k->name);
    pg_param_str(p, k->hash);
    pg_param_str(p, k->role);
    pg_param_str(p, k->rate_limit);
    pg_param_i64(p, k->created_at);
    if (k->revoked_at > 0)
        pg_param_i64(p, k->revoked_at);
    else
        pg_param_str(p, NULL);
    if (k->last_used_at > 0)
        pg_param_i64(p, k->last_used_at);
    else
        pg_param_str(p, NULL);
    pg_param_i64(p, k->turn_count);
    pg_param_i64(p, store_known(k->usage.input_tokens));
    pg_param_i64(p, store_known(k->usage.output_tokens));
    pg_param_i64(p, store_known(k->usage.cache_read_tokens));
    pg_param_i64(p, store_known(k->usage.cache_write_tokens));
    pg_param_i64(p, k->cost_micros);
    return CHAT_OK;
}

/* ---- the table ---------------------------------------------------------------- */

const pg_op_def pg_op_defs[] = {
    { STORE_OP_PING, "chatd_ping", "SELECT 1", 0, enc_none, dec_ok },
    /* Insert, or take over an expired lock (the row lock makes a concurrent
     * acquire wait and then see our lock live). */
    { STORE_OP_LOCK_ACQUIRE, "chatd_lock_acquire",
      "INSERT INTO turn_locks AS l (session_id, token, expires_at) VALUES ($1, $2, $3) "
      "ON CONFLICT (session_id) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at "
      "WHERE l.expires_at <= $4",
      4, enc_lock_ttl, dec_lock_acquire },
    { STORE_OP_LOCK_REFRESH, "chatd_lock_refresh",
      "UPDATE turn_locks SET expires_at = $3 WHERE session_id = $1 AND token = $2", 3, enc_lock_ttl,
      dec_one_or_conflict },
    { STORE_OP_LOCK_RELEASE, "chatd_lock_release", "DELETE FROM turn_locks WHERE session_id = $1 AND token = $2", 2,
      enc_lock_release, dec_ok },
    { STORE_OP_TURN_COMMIT, "chatd_turn_commit",
      "SELECT r_rc, r_user_id, r_assistant_id, r_turn_count, r_message_count FROM chatd_turn_commit("
      "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, "
      "$24, $25, $26)",
      26, enc_turn_commit, dec_turn_commit },
    { STORE_OP_SESSION_GET, "chatd_session_get", "SELECT " SESSION_COLS " FROM sessions WHERE id = $1", 1,
      enc_session_id, dec_session_get },
    { STORE_OP_SESSION_DELETE, "chatd_session_delete", "SELECT chatd_session_delete($1)", 1, enc_session_id,
      dec_session_delete },
    { STORE_OP_SESSION_RESET, "chatd_session_reset", "SELECT chatd_session_reset($1, $2)", 2, enc_session_reset,
      dec_count_or_notfound },
    { STORE_OP_SESSIONS_LIST, "chatd_sessions_list", "SELECT " SESSION_COLS " FROM chatd_sessions_list($1, $2, $3, $4)",
      4, enc_sessions_list, dec_sessions_list },
    /* One statement, so one snapshot: the existence check and the rows agree. */
    /* After the columns: the stored blocks, and the data of the images they
     * reference as "<sha256>:<base64>,..." (NULL: none; store_blob_lookup_pairs). */
    { STORE_OP_MESSAGES_LIST, "chatd_messages_list",
      "SELECT " MESSAGE_COLS(
          "m.") ", m.blocks, m.images FROM sessions AS s LEFT JOIN LATERAL ("
                "SELECT x.*, (SELECT string_agg(b.sha256 || ':' || b.data, ',') FROM message_blobs AS mb "
                "JOIN blobs AS b ON b.sha256 = mb.sha256 WHERE mb.message_id = x.id) AS images "
                "FROM messages AS x WHERE x.session_id = s.id AND x.seq > $2 ORDER BY x.seq "
                "LIMIT $3) AS m ON true WHERE s.id = $1 ORDER BY m.seq",
      3, enc_messages_list, dec_messages_list },
    { STORE_OP_STATS_GET, "chatd_stats_get",
      "SELECT sum(total_sessions)::bigint, sum(total_messages)::bigint, sum(total_turns)::bigint, "
      "sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cache_read_tokens)::bigint, "
      "sum(cache_write_tokens)::bigint, sum(cost_micros)::bigint FROM stats",
      0, enc_none, dec_stats_get },
    { STORE_OP_SESSIONS_EXPIRE, "chatd_sessions_expire", "SELECT chatd_sessions_expire($1, $2, $3)", 3,
      enc_sessions_expire, dec_count_or_notfound },
    { STORE_OP_IDEM_BEGIN, "chatd_idem_begin", "SELECT * FROM chatd_idem_begin($1, $2, $3, $4, $5, $6, $7)", 7,
      enc_idem_begin, dec_idem_begin },
    { STORE_OP_IDEM_REFRESH, "chatd_idem_refresh",
      "UPDATE idempotency SET expires_at = $4 "
      "WHERE scope = $1 AND key = $2 AND token = $3 AND state = 'running'",
      4, enc_idem_refresh, dec_one_or_conflict },
    { STORE_OP_IDEM_FINISH, "chatd_idem_finish",
      "UPDATE idempotency SET state = 'done', status = $4, response = $5, expires_at = $6 "
      "WHERE scope = $1 AND key = $2 AND token = $3 AND state = 'running'",
      6, enc_idem_finish, dec_one_or_conflict },
    { STORE_OP_IDEM_ABORT, "chatd_idem_abort",
      "DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND token = $3 AND state = 'running'", 3, enc_idem_abort,
      dec_ok },
    /* SKIP LOCKED: a record being begun or committed right now is not in the way. */
    { STORE_OP_IDEM_EXPIRE, "chatd_idem_expire",
      "DELETE FROM idempotency WHERE (scope, key) IN (SELECT scope, key FROM idempotency "
      "WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
      2, enc_idem_expire, dec_changed_count },
    /* No conflict target: a taken id or a taken hash both make it a no-op. */
    { STORE_OP_KEY_CREATE, "chatd_key_create",
      "INSERT INTO api_keys (id, name, hash, role, rate_limit, created_at) VALUES ($1, $2, $3, $4, $5, $6) "
      "ON CONFLICT DO NOTHING",
      6, enc_key_create, dec_one_or_conflict },
    { STORE_OP_KEY_FIND_BY_HASH, "chatd_key_find_by_hash",
      "SELECT " KEY_COLS " FROM api_keys WHERE hash = $1 AND revoked_at IS NULL", 1, enc_key_hash, dec_key_one },
    { STORE_OP_KEYS_LIST, "chatd_keys_list", "SELECT " KEY_COLS " FROM api_keys ORDER BY created_at, id", 0, enc_none,
      dec_keys_list },
    { STORE_OP_KEY_REVOKE, "chatd_key_revoke", "SELECT * FROM chatd_key_revoke($1, $2)", 2, enc_key_revoke,
      dec_key_revoke },
    /* The WHERE makes the common case (touched recently) a read: no row
     * version written, nothing to vacuum. */
    { STORE_OP_KEY_TOUCH, "chatd_key_touch",
      "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $3)", 3,
      enc_key_touch, dec_ok },
    { STORE_OP_KEY_SESSION_COUNT, "chatd_key_session_count", "SELECT session_count FROM api_keys WHERE id = $1", 1,
      enc_key_id, dec_count_or_notfound },
    { STORE_OP_SESSION_IMPORT, "chatd_session_import",
      "SELECT chatd_session_import($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)", 15,
      enc_session_import, dec_session_import },
    { STORE_OP_KEY_IMPORT, "chatd_key_import",
      "INSERT INTO api_keys (" KEY_COLS ") "
      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING",
      14, enc_key_import, dec_one_or_conflict },
    /* One statement for the four cases (owner or not, cursor or not): the
     * listing oldest first serves only the template's unpaginated GET /sessions. */
    { STORE_OP_SESSIONS_LIST_OLDEST, "chatd_sessions_list_oldest",
      "SELECT " SESSION_COLS " FROM sessions WHERE ($4::text IS NULL OR owner = $4) "
      "AND ($3::text IS NULL OR (created_at, id) > ($2, $3 COLLATE \"C\")) ORDER BY created_at, id LIMIT $1",
      4, enc_sessions_list, dec_sessions_list },
    /* ---- variants, after the one-per-kind entries (pg_op_def_for) ---- */
    /* MESSAGES_LIST with tail_tokens (store.h): a message is read when the
     * tokens of the messages newer than it (unknown counts 0) add up to at most
     * the budget, as SQLite's newest-first read. The window still walks the
     * session's index entries, but only the rows that fit leave the server. */
    { STORE_OP_MESSAGES_LIST, "chatd_messages_tail",
      "SELECT " MESSAGE_COLS(
          "m.") ", m.blocks, m.images, s.message_count FROM sessions AS s LEFT JOIN LATERAL ("
                "SELECT y.*, (SELECT string_agg(b.sha256 || ':' || b.data, ',') FROM message_blobs AS mb "
                "JOIN blobs AS b ON b.sha256 = mb.sha256 WHERE mb.message_id = y.id) AS images "
                "FROM (SELECT x.*, COALESCE(sum(GREATEST(x.tokens, 0)) OVER (ORDER BY x.seq DESC "
                "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS newer "
                "FROM messages AS x WHERE x.session_id = s.id) AS y WHERE y.newer <= $2) AS m ON true "
                "WHERE s.id = $1 ORDER BY m.seq",
      2, enc_messages_tail, dec_messages_tail },
};

const size_t pg_op_defs_count = sizeof pg_op_defs / sizeof pg_op_defs[0];

const pg_op_def *pg_op_def_get(store_op_kind kind)
{
    /* The table is in kind order; the check keeps a misordered entry from
     * silently running the wrong statement. */
    if (kind <= 0 || (size_t)kind > pg_op_defs_count)
        return NULL;
    const pg_op_def *d = &pg_op_defs[kind - 1];
    return d->kind == kind ? d : NULL;
}

const pg_op_def *pg_op_def_for(const store_op *op)
{
    if (op->kind == STORE_OP_MESSAGES_LIST && op->in.tail_tokens > 0) {
        const pg_op_def *d = &pg_op_defs[pg_op_defs_count - 1];
        return d->kind == op->kind ? d : NULL;
    }
    return pg_op_def_get(op->kind);
}
