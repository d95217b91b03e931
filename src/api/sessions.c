/*
 * sessions.c: history, listing, reset, delete and statistics, in both flavors.
 *
 * Every handler goes through the asynchronous store (store_submit): a job
 * holds the request across its one or two operations (the visibility check,
 * then the action), and drops it if the client went away in between.
 *
 * The template's GET /sessions has no pagination: it is streamed. Pages of
 * SEED_LIST_PAGE sessions are read oldest first (the template's order), each
 * written as one chunk of the JSON array; the next page is read only once the
 * client's output queue is below STREAM_BUFFER_SIZE. The job then holds one
 * page at most, whatever the number of sessions, and the bytes are those of
 * the one document it used to build in memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "core/log.h"
#include "core/util.h"

/* Sessions per store call of GET /sessions: the rows carry their system
 * prompts, so a page is what the listing holds in memory at once. */
#define SEED_LIST_PAGE 100
/* Bound on one page's JSON text (a row is at most about 200 bytes). */
#define SEED_LIST_PAGE_TEXT (1024 * 1024)


static json_t *time_json(int64_t ms)
{
    char buf[32];
    chat_format_rfc3339(ms, buf);
    return json_string(buf);
}

static json_t *session_json(const store_session *s)
{
    return json_pack("{s:s,s:o,s:o,s:I,s:I,s:s?,s:s?,s:o,s:o}", "id", s->id, "created_at", time_json(s->created_at),
                     "updated_at", time_json(s->updated_at), "turn_count", (json_int_t)s->turn_count, "message_count",
                     (json_int_t)s->message_count, "model", s->model, "system_prompt", s->system_prompt, "usage",
                     api_usage_json(&s->usage), "cost", api_cost_json(s->cost_micros));
}

/* Parses an optional integer query parameter within [lo, hi]; answers 400 and returns false if bad. */
static bool query_int(http_req *r, const char *name, long lo, long hi, long dflt, long *out)
{
    const char *v = http_req_query(r, name);
    *out = dflt;
    if (!v)
        return true;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi) {
        api_error(r, API_V1, 400, "invalid_request_error", "query parameter %s must be an integer in %ld..%ld", name,
                  lo, hi);
        return false;
    }
    *out = n;
    return true;
}

/* What a session handler does once the session is known to be visible. */
typedef enum {
    ACT_SEED_HISTORY,
    ACT_SEED_DELETE,
    ACT_SEED_RESET,
    ACT_V1_GET,
    ACT_V1_DELETE,
    ACT_V1_MESSAGES,
    ACT_V1_RESET,
    ACT_SEED_LIST, /* no session: pages through the listing */
    ACT_V1_LIST,
    ACT_SEED_STATS,
    ACT_V1_STATS,
} action;

typedef struct sjob {
    http_req *r;
    api_env *w;
    action act;
    char *id; /* the session (owned), NULL for listings and stats */
    long after, limit;
    store_session sess; /* filled by the visibility check */
    /* ACT_SEED_LIST, streamed */
    char *cursor;     /* where the next page starts (owned), NULL before the first */
    bool in_store;    /* a page is being read: its callback owns the next step */
    bool wants_drain; /* waiting for the client's queue to drain before the next page */
    bool streaming;   /* the 200 and the opening bracket were sent */
    int64_t listed;   /* sessions written so far */
} sjob;

static api_flavor flavor_of(action a)
{
    return a == ACT_SEED_HISTORY || a == ACT_SEED_DELETE || a == ACT_SEED_RESET || a == ACT_SEED_LIST ||
                   a == ACT_SEED_STATS
               ? API_SEED
               : API_V1;
}

static sjob *sjob_new(http_req *r, api_env *w, action act, const char *id)
{
    sjob *j = chat_xcalloc(1, sizeof *j);
    j->r = r;
    j->w = w;
    j->act = act;
    j->id = id ? chat_xstrdup(id) : NULL;
    http_req_hold(r);
    return j;
}

static void sjob_free(sjob *j)
{
    http_req_release(j->r);
    store_session_clear(&j->sess);
    free(j->cursor);
    free(j->id);
    free(j);
}

static void on_action(store_op *op, void *ud);
static void on_visible(store_op *op, void *ud);

/* Submits op for j, continuing in cb. */
static void submit(sjob *j, store_op *op, store_op_cb cb)
{
    store_submit(j->w->db, op, cb, j);
}

/* One page of the caller's sessions after cursor (NULL: the first page), of kind
 * STORE_OP_SESSIONS_LIST (newest first) or STORE_OP_SESSIONS_LIST_OLDEST, continuing in cb. */
static void submit_list(sjob *j, store_op_kind kind, const char *cursor, int limit, store_op_cb cb)
{
    store_op *op = store_op_new(kind);
    op->in.owner = store_op_str(op, api_owner_filter(j->r));
    op->in.limit = limit;
    op->in.cursor = cursor && *cursor ? store_op_str(op, cursor) : NULL;
    submit(j, op, cb);
}

static void on_seed_page(store_op *op, void *ud);

/* ACT_SEED_LIST: reads the next page (after j->cursor). */
static void seed_list_next(sjob *j)
{
    j->in_store = true;
    submit_list(j, STORE_OP_SESSIONS_LIST_OLDEST, j->cursor, SEED_LIST_PAGE, on_seed_page);
}

/* The shutdown passed DRAIN_TIMEOUT (running turns were cancelled): a listing
 * still going stops too, as a cut response, rather than being written whole
 * by the store's completions after the loop (they then come at once). True
 * when it stopped the job (freed). */
static bool seed_list_stopped(sjob *j)
{
    if (!*j->w->aborted)
        return false;
    if (j->streaming)
        http_stream_abort(j->r);
    else
        api_error(j->r, API_SEED, 503, "server_shutting_down", "the server is shutting down; retry shortly");
    sjob_free(j);
    return true;
}

/* The client's queue drained: the next page. */
static void on_seed_drain(void *ud)
{
    sjob *j = ud;
    if (!j->wants_drain)
        return;
    j->wants_drain = false;
    seed_list_next(j); /* (a stop, if any, is seen when the page arrives, outside evhttp's callback) */
}

/* The client went away mid-listing. With a page being read, its callback sees
 * the request gone and frees the job; waiting for a drain that will never
 * come, the job is freed here. */
static void on_seed_close(void *ud)
{
    sjob *j = ud;
    if (j->in_store)
        return;
    sjob_free(j);
}

/* ACT_SEED_LIST: one page arrived: write it, then read the next one, now or
 * once the client caught up. */
static void on_seed_page(store_op *op, void *ud)
{
    sjob *j = ud;
    j->in_store = false;
    if (http_req_gone(j->r)) {
        sjob_free(j);
        return;
    }
    if (seed_list_stopped(j))
        return;
    if (op->rc != CHAT_OK) {
        if (j->streaming)
            http_stream_abort(j->r); /* the client sees a cut response, not a short list */
        else
            api_db_error(j->r, API_SEED, op->rc);
        sjob_free(j);
        return;
    }
    chat_buf text;
    chat_buf_init(&text, SEED_LIST_PAGE_TEXT);
    chat_rc rc = j->streaming ? CHAT_OK : chat_buf_appends(&text, "{\"sessions\":[");
    for (size_t i = 0; rc == CHAT_OK && i < op->out.n_sessions; i++) {
        const store_session *ss = &op->out.sessions[i];
        char ts[32];
        chat_format_iso_local(ss->created_at, ts);
        /* Each element exactly as json_dumps wrote it inside the whole document. */
        json_t *o =
            json_pack("{s:s,s:I,s:s}", "session_id", ss->id, "turns", (json_int_t)ss->turn_count, "created_at", ts);
        char *one = o ? chat_json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(12), NULL) : NULL;
        json_decref(o);
        if (!one) {
            rc = CHAT_EINVAL;
            break;
        }
        if (j->listed + (int64_t)i > 0)
            rc = chat_buf_appends(&text, ",");
        if (rc == CHAT_OK)
            rc = chat_buf_appends(&text, one);
        free(one);
    }
    bool last = !op->out.next_cursor;
    if (rc == CHAT_OK && last)
        rc = chat_buf_appends(&text, "]}");
    if (rc != CHAT_OK) {
        /* A row that cannot be encoded, or a page past its bound: a bug, not the client's. */
        chat_log(LOG_ERROR, "cannot encode the session listing",
                 json_pack("{s:s,s:s}", "request_id", http_req_id(j->r), "error", chat_rc_str(rc)));
        if (j->streaming)
            http_stream_abort(j->r);
        else
            api_error(j->r, API_SEED, 500, "internal_error", "response encoding failed");
        chat_buf_free(&text);
        sjob_free(j);
        return;
    }
    if (!j->streaming) {
        http_stream_start(j->r, 200, "application/json");
        http_req_on_close(j->r, on_seed_close, j);
        j->streaming = true;
    }
    bool full = http_stream_write(j->r, chat_buf_str(&text), text.len);
    chat_buf_free(&text);
    j->listed += (int64_t)op->out.n_sessions;
    if (last) {
        http_stream_end(j->r);
        sjob_free(j);
        return;
    }
    free(j->cursor);
    j->cursor = op->out.next_cursor;
    op->out.next_cursor = NULL;
    if (full) {
        j->wants_drain = true;
        http_req_on_drain(j->r, on_seed_drain, j);
        return;
    }
    seed_list_next(j);
}

/* Starts the job: the visibility check for session actions, the action itself otherwise. */
static void start(sjob *j)
{
    store_op *op;
    switch (j->act) {
    case ACT_SEED_LIST: seed_list_next(j); return;
    case ACT_V1_LIST:
        submit_list(j, STORE_OP_SESSIONS_LIST, http_req_query(j->r, "cursor"), (int)j->limit, on_action);
        return;
    case ACT_SEED_STATS:
    case ACT_V1_STATS: submit(j, store_op_new(STORE_OP_STATS_GET), on_action); return;
    default:
        op = store_op_new(STORE_OP_SESSION_GET);
        op->in.session_id = store_op_str(op, j->id);
        submit(j, op, on_visible);
        return;
    }
}

static void not_found(sjob *j)
{
    switch (j->act) {
    case ACT_SEED_HISTORY: api_error(j->r, API_SEED, 404, "not_found_error", "Session not found"); break;
    case ACT_SEED_DELETE:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s}", "status", "not_found", "session_id", j->id));
        break;
    case ACT_SEED_RESET:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s}", "status", "not_found", "session_id", j->id));
        break;
    default: api_error(j->r, API_V1, 404, "not_found_error", "session %s not found", j->id); break;
    }
}

/*
 * The session was looked up: a session the caller may not see is "not found"
 * (the same answer as an absent one, so that ids of others cannot be probed).
 */
static void on_visible(store_op *op, void *ud)
{
    sjob *j = ud;
    if (http_req_gone(j->r)) {
        sjob_free(j);
        return;
    }
    if (op->rc == CHAT_ENOTFOUND || (op->rc == CHAT_OK && !api_can_access(j->r, op->out.session.owner))) {
        not_found(j);
        sjob_free(j);
        return;
    }
    if (op->rc != CHAT_OK) {
        api_db_error(j->r, flavor_of(j->act), op->rc);
        sjob_free(j);
        return;
    }
    j->sess = op->out.session;
    memset(&op->out.session, 0, sizeof op->out.session);

    store_op *next;
    switch (j->act) {
    case ACT_V1_GET:
        http_reply_json(j->r, 200, session_json(&j->sess));
        sjob_free(j);
        return;
    case ACT_SEED_HISTORY:
    case ACT_V1_MESSAGES:
        next = store_op_new(STORE_OP_MESSAGES_LIST);
        next->in.after_seq = j->after;
        next->in.limit = j->act == ACT_V1_MESSAGES ? (int)j->limit + 1 : 0;
        break;
    case ACT_SEED_DELETE:
    case ACT_V1_DELETE: next = store_op_new(STORE_OP_SESSION_DELETE); break;
    default: /* the resets */
        next = store_op_new(STORE_OP_SESSION_RESET);
        next->in.now = chat_now_ms();
        break;
    }
    next->in.session_id = store_op_str(next, j->id);
    submit(j, next, on_action);
}

static void reply_messages(sjob *j, const store_message *msgs, size_t n)
{
    if (j->act == ACT_SEED_HISTORY) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, json_pack("{s:s,s:s}", "role", msgs[i].role, "content", msgs[i].content));
        http_reply_json(j->r, 200,
                        json_pack("{s:s,s:o,s:I}", "session_id", j->id, "messages", arr, "turn_count",
                                  (json_int_t)j->sess.turn_count));
        return;
    }
    bool more = n > (size_t)j->limit;
    json_t *arr = json_array();
    for (size_t i = 0; i < n && i < (size_t)j->limit; i++) {
        const store_message *m = &msgs[i];
        char idbuf[32];
        snprintf(idbuf, sizeof idbuf, "msg_%lld", (long long)m->id);
        json_t *o = json_pack("{s:s,s:I,s:s,s:s,s:s,s:o}", "id", idbuf, "seq", (json_int_t)m->seq, "role", m->role,
                              "content", m->content, "status", m->status, "created_at", time_json(m->created_at));
        if (m->blocks) { /* the canonical content (llm/content.h); the seed /history stays text */
            json_t *blocks = chat_json_loads(m->blocks, 0, NULL);
            if (json_is_array(blocks))
                json_object_set_new(o, "blocks", blocks);
            else
                json_decref(blocks);
        }
        if (strcmp(m->role, "assistant") == 0) {
            json_object_set_new(o, "model", m->model ? json_string(m->model) : json_null());
            json_object_set_new(o, "stop_reason", m->stop_reason ? json_string(m->stop_reason) : json_null());
            json_object_set_new(o, "usage", api_usage_json(&m->usage));
            json_object_set_new(o, "cost", api_cost_json(m->cost_micros));
        }
        json_array_append_new(arr, o);
    }
    http_reply_json(j->r, 200, json_pack("{s:o,s:b}", "data", arr, "has_more", more));
}

static void reply_stats(sjob *j, const store_stats *st)
{
    if (j->act == ACT_SEED_STATS) {
        json_t *avg =
            st->total_sessions ? json_real((double)st->total_messages / (double)st->total_sessions) : json_integer(0);
        http_reply_json(j->r, 200,
                        json_pack("{s:I,s:I,s:o}", "total_sessions", (json_int_t)st->total_sessions, "total_messages",
                                  (json_int_t)st->total_messages, "avg_messages_per_session", avg));
        return;
    }
    http_reply_json(j->r, 200,
                    json_pack("{s:I,s:I,s:I,s:o,s:o}", "sessions", (json_int_t)st->total_sessions, "messages",
                              (json_int_t)st->total_messages, "turns", (json_int_t)st->total_turns, "usage",
                              api_usage_json(&st->usage), "cost", api_cost_json(st->cost_micros)));
}

static void on_action(store_op *op, void *ud)
{
    sjob *j = ud;
    if (http_req_gone(j->r)) {
        sjob_free(j);
        return;
    }
    if (op->rc == CHAT_ENOTFOUND) { /* deleted since the visibility check */
        not_found(j);
        sjob_free(j);
        return;
    }
    if (op->rc == CHAT_EINVAL && j->act == ACT_V1_LIST) {
        api_error(j->r, API_V1, 400, "invalid_request_error", "invalid cursor");
        sjob_free(j);
        return;
    }
    if (op->rc != CHAT_OK) {
        api_db_error(j->r, flavor_of(j->act), op->rc);
        sjob_free(j);
        return;
    }
    switch (j->act) {
    case ACT_SEED_HISTORY:
    case ACT_V1_MESSAGES: reply_messages(j, op->out.messages, op->out.n_messages); break;
    case ACT_SEED_DELETE:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s}", "status", "cleared", "session_id", j->id));
        break;
    case ACT_V1_DELETE: http_reply(j->r, 204, NULL, NULL, 0); break;
    case ACT_SEED_RESET:
        http_reply_json(j->r, 200,
                        json_pack("{s:s,s:s,s:I}", "status", "reset", "session_id", j->id, "previous_turns",
                                  (json_int_t)op->out.count));
        break;
    case ACT_V1_RESET:
        http_reply_json(j->r, 200,
                        json_pack("{s:s,s:I}", "session_id", j->id, "previous_turns", (json_int_t)op->out.count));
        break;
    case ACT_SEED_LIST: /* answered in on_seed_page */ break;
    case ACT_V1_LIST: {
        json_t *arr = json_array();
        for (size_t i = 0; i < op->out.n_sessions; i++)
            json_array_append_new(arr, session_json(&op->out.sessions[i]));
        http_reply_json(j->r, 200,
                        json_pack("{s:o,s:o}", "data", arr, "next_cursor",
                                  op->out.next_cursor ? json_string(op->out.next_cursor) : json_null()));
        break;
    }
    case ACT_SEED_STATS:
    case ACT_V1_STATS: reply_stats(j, &op->out.stats); break;
    case ACT_V1_GET: break; /* answered in on_visible */
    }
    sjob_free(j);
}

/* ---- seed ---- */

/* The handlers of one session: validate the id, then run act. */
static void session_action(http_req *r, api_env *w, const char *id, action act, long after, long limit)
{
    if (!api_check_session_id(r, flavor_of(act), id, "path", "session_id"))
        return;
    sjob *j = sjob_new(r, w, act, id);
    j->after = after;
    j->limit = limit;
    start(j);
}

void api_seed_history_get(http_req *r, api_env *w, char **params)
{
    session_action(r, w, params[0], ACT_SEED_HISTORY, 0, 0);
}

void api_seed_history_delete(http_req *r, api_env *w, char **params)
{
    session_action(r, w, params[0], ACT_SEED_DELETE, 0, 0);
}

void api_seed_sessions(http_req *r, api_env *w, char **params)
{
    (void)params;
    start(sjob_new(r, w, ACT_SEED_LIST, NULL));
}

void api_seed_reset(http_req *r, api_env *w, char **params)
{
    session_action(r, w, params[0], ACT_SEED_RESET, 0, 0);
}

void api_seed_stats(http_req *r, api_env *w, char **params)
{
    (void)params;
    start(sjob_new(r, w, ACT_SEED_STATS, NULL));
}

/* ---- v1 ---- */

void api_v1_sessions_list(http_req *r, api_env *w, char **params)
{
    (void)params;
    long limit;
    if (!query_int(r, "limit", 1, 100, 20, &limit))
        return;
    sjob *j = sjob_new(r, w, ACT_V1_LIST, NULL);
    j->limit = limit;
    start(j);
}

void api_v1_session_get(http_req *r, api_env *w, char **params)
{
    session_action(r, w, params[0], ACT_V1_GET, 0, 0);
}

void api_v1_session_delete(http_req *r, api_env *w, char **params)
{
    session_action(r, w, params[0], ACT_V1_DELETE, 0, 0);
}

void api_v1_session_messages(http_req *r, api_env *w, char **params)
{
    if (!api_check_session_id(r, API_V1, params[0], "path", "session_id"))
        return;
    long after, limit;
    if (!query_int(r, "after", 0, 1L << 40, 0, &after) || !query_int(r, "limit", 1, 1000, 100, &limit))
        return;
    session_action(r, w, params[0], ACT_V1_MESSAGES, after, limit);
}

void api_v1_session_reset(http_req *r, api_env *w, char **params)
{
    session_action(r, w, params[0], ACT_V1_RESET, 0, 0);
}

void api_v1_stats(http_req *r, api_env *w, char **params)
{
    (void)params;
    start(sjob_new(r, w, ACT_V1_STATS, NULL));
}
