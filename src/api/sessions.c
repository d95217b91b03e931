/*
 * sessions.c: history, listing, reset, delete and statistics, in both flavors.
 *
 * Every handler goes through the asynchronous store (store_submit): a job
 * holds the request across its one or two operations (the visibility check,
 * then the action), and drops it if the client went away in between.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/alloc.h"
#include "core/util.h"

#define SEED_LIST_CAP 100000 /* /sessions has no pagination in the template: bound it */
#define SEED_LIST_PAGE 1000  /* read in pages of the store's largest listing */


static json_t *time_json(int64_t ms)
{
    char buf[32];
    chat_format_rfc3339(ms, buf);
    return json_string(buf);
}

static json_t *session_json(const store_session *s)
{
    return json_pack("{s:s,s:o,s:o,s:I,s:I,s:s?,s:s?,s:o,s:o}", "id", s->id, "created_at",
                     time_json(s->created_at), "updated_at", time_json(s->updated_at), "turn_count",
                     (json_int_t)s->turn_count, "message_count", (json_int_t)s->message_count,
                     "model", s->model, "system_prompt", s->system_prompt, "usage",
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
        api_error(r, API_V1, 400, "invalid_request_error", "query parameter %s must be an integer in %ld..%ld",
                  name, lo, hi);
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
    ACT_SEED_LIST,  /* no session: pages through the listing */
    ACT_V1_LIST,
    ACT_SEED_STATS,
    ACT_V1_STATS,
} action;

typedef struct sjob {
    http_req *r;
    chat_worker *w;
    action act;
    char *id;              /* the session (owned), NULL for listings and stats */
    long after, limit;
    store_session sess;    /* filled by the visibility check */
    json_t *acc;           /* ACT_SEED_LIST: the sessions so far */
} sjob;

static api_flavor flavor_of(action a)
{
    return a == ACT_SEED_HISTORY || a == ACT_SEED_DELETE || a == ACT_SEED_RESET || a == ACT_SEED_LIST ||
                   a == ACT_SEED_STATS
               ? API_SEED
               : API_V1;
}

static sjob *sjob_new(http_req *r, chat_worker *w, action act, const char *id)
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
    json_decref(j->acc);
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

/* One page of the caller's sessions after cursor (NULL: the first page). */
static void submit_list(sjob *j, const char *cursor, int limit)
{
    store_op *op = store_op_new(STORE_OP_SESSIONS_LIST);
    op->in.owner = store_op_str(op, api_owner_filter(j->r));
    op->in.limit = limit;
    op->in.cursor = cursor && *cursor ? store_op_str(op, cursor) : NULL;
    submit(j, op, on_action);
}

/* Starts the job: the visibility check for session actions, the action itself otherwise. */
static void start(sjob *j)
{
    store_op *op;
    switch (j->act) {
    case ACT_SEED_LIST:
        j->acc = json_array();
        submit_list(j, NULL, SEED_LIST_PAGE);
        return;
    case ACT_V1_LIST:
        submit_list(j, http_req_query(j->r, "cursor"), (int)j->limit);
        return;
    case ACT_SEED_STATS:
    case ACT_V1_STATS:
        submit(j, store_op_new(STORE_OP_STATS_GET), on_action);
        return;
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
    case ACT_SEED_HISTORY:
        api_error(j->r, API_SEED, 404, "not_found_error", "Session not found");
        break;
    case ACT_SEED_DELETE:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s}", "status", "not_found", "session_id", j->id));
        break;
    case ACT_SEED_RESET:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s}", "status", "not_found", "session_id", j->id));
        break;
    default:
        api_error(j->r, API_V1, 404, "not_found_error", "session %s not found", j->id);
        break;
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
    case ACT_V1_DELETE:
        next = store_op_new(STORE_OP_SESSION_DELETE);
        break;
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
        http_reply_json(j->r, 200, json_pack("{s:s,s:o,s:I}", "session_id", j->id, "messages", arr, "turn_count",
                                             (json_int_t)j->sess.turn_count));
        return;
    }
    bool more = n > (size_t)j->limit;
    json_t *arr = json_array();
    for (size_t i = 0; i < n && i < (size_t)j->limit; i++) {
        const store_message *m = &msgs[i];
        char idbuf[32];
        snprintf(idbuf, sizeof idbuf, "msg_%lld", (long long)m->id);
        json_t *o = json_pack("{s:s,s:I,s:s,s:s,s:s,s:o}", "id", idbuf, "seq", (json_int_t)m->seq, "role",
                              m->role, "content", m->content, "status", m->status, "created_at",
                              time_json(m->created_at));
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

/* ACT_SEED_LIST: one more page arrived. True when the job is done (answered). */
static bool seed_list_page(sjob *j, store_op *op)
{
    for (size_t i = 0; i < op->out.n_sessions; i++) {
        const store_session *ss = &op->out.sessions[i];
        char ts[32];
        chat_format_iso_local(ss->created_at, ts);
        json_array_append_new(j->acc, json_pack("{s:s,s:I,s:s}", "session_id", ss->id, "turns",
                                                (json_int_t)ss->turn_count, "created_at", ts));
    }
    if (op->out.next_cursor && json_array_size(j->acc) < SEED_LIST_CAP) {
        submit_list(j, op->out.next_cursor, SEED_LIST_PAGE);
        return false;
    }
    /* The template lists sessions oldest first (dict order); the store gives newest first. */
    json_t *oldest_first = json_array();
    for (size_t i = json_array_size(j->acc); i > 0; i--)
        json_array_append(oldest_first, json_array_get(j->acc, i - 1));
    http_reply_json(j->r, 200, json_pack("{s:o}", "sessions", oldest_first));
    return true;
}

static void reply_stats(sjob *j, const store_stats *st)
{
    if (j->act == ACT_SEED_STATS) {
        json_t *avg = st->total_sessions ? json_real((double)st->total_messages / (double)st->total_sessions)
                                         : json_integer(0);
        http_reply_json(j->r, 200, json_pack("{s:I,s:I,s:o}", "total_sessions", (json_int_t)st->total_sessions,
                                             "total_messages", (json_int_t)st->total_messages,
                                             "avg_messages_per_session", avg));
        return;
    }
    http_reply_json(j->r, 200, json_pack("{s:I,s:I,s:I,s:o,s:o}", "sessions", (json_int_t)st->total_sessions,
                                         "messages", (json_int_t)st->total_messages, "turns",
                                         (json_int_t)st->total_turns, "usage", api_usage_json(&st->usage), "cost",
                                         api_cost_json(st->cost_micros)));
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
    case ACT_V1_MESSAGES:
        reply_messages(j, op->out.messages, op->out.n_messages);
        break;
    case ACT_SEED_DELETE:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s}", "status", "cleared", "session_id", j->id));
        break;
    case ACT_V1_DELETE:
        http_reply(j->r, 204, NULL, NULL, 0);
        break;
    case ACT_SEED_RESET:
        http_reply_json(j->r, 200, json_pack("{s:s,s:s,s:I}", "status", "reset", "session_id", j->id,
                                             "previous_turns", (json_int_t)op->out.count));
        break;
    case ACT_V1_RESET:
        http_reply_json(j->r, 200, json_pack("{s:s,s:I}", "session_id", j->id, "previous_turns",
                                             (json_int_t)op->out.count));
        break;
    case ACT_SEED_LIST:
        if (!seed_list_page(j, op))
            return; /* the next page is on its way */
        break;
    case ACT_V1_LIST: {
        json_t *arr = json_array();
        for (size_t i = 0; i < op->out.n_sessions; i++)
            json_array_append_new(arr, session_json(&op->out.sessions[i]));
        http_reply_json(j->r, 200, json_pack("{s:o,s:o}", "data", arr, "next_cursor",
                                             op->out.next_cursor ? json_string(op->out.next_cursor) : json_null()));
        break;
    }
    case ACT_SEED_STATS:
    case ACT_V1_STATS:
        reply_stats(j, &op->out.stats);
        break;
    case ACT_V1_GET:
        break; /* answered in on_visible */
    }
    sjob_free(j);
}

/* ---- seed ---- */

/* The handlers of one session: validate the id, then run act. */
static void session_action(http_req *r, chat_worker *w, const char *id, action act, long after, long limit)
{
    if (!api_check_session_id(r, flavor_of(act), id, "path", "session_id"))
        return;
    sjob *j = sjob_new(r, w, act, id);
    j->after = after;
    j->limit = limit;
    start(j);
}

void api_seed_history_get(http_req *r, chat_worker *w, char **params)
{
    session_action(r, w, params[0], ACT_SEED_HISTORY, 0, 0);
}

void api_seed_history_delete(http_req *r, chat_worker *w, char **params)
{
    session_action(r, w, params[0], ACT_SEED_DELETE, 0, 0);
}

void api_seed_sessions(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    start(sjob_new(r, w, ACT_SEED_LIST, NULL));
}

void api_seed_reset(http_req *r, chat_worker *w, char **params)
{
    session_action(r, w, params[0], ACT_SEED_RESET, 0, 0);
}

void api_seed_stats(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    start(sjob_new(r, w, ACT_SEED_STATS, NULL));
}

/* ---- v1 ---- */

void api_v1_sessions_list(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    long limit;
    if (!query_int(r, "limit", 1, 100, 20, &limit))
        return;
    sjob *j = sjob_new(r, w, ACT_V1_LIST, NULL);
    j->limit = limit;
    start(j);
}

void api_v1_session_get(http_req *r, chat_worker *w, char **params)
{
    session_action(r, w, params[0], ACT_V1_GET, 0, 0);
}

void api_v1_session_delete(http_req *r, chat_worker *w, char **params)
{
    session_action(r, w, params[0], ACT_V1_DELETE, 0, 0);
}

void api_v1_session_messages(http_req *r, chat_worker *w, char **params)
{
    if (!api_check_session_id(r, API_V1, params[0], "path", "session_id"))
        return;
    long after, limit;
    if (!query_int(r, "after", 0, 1L << 40, 0, &after) || !query_int(r, "limit", 1, 1000, 100, &limit))
        return;
    session_action(r, w, params[0], ACT_V1_MESSAGES, after, limit);
}

void api_v1_session_reset(http_req *r, chat_worker *w, char **params)
{
    session_action(r, w, params[0], ACT_V1_RESET, 0, 0);
}

void api_v1_stats(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    start(sjob_new(r, w, ACT_V1_STATS, NULL));
}
