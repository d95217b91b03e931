/*
 * sessions.c: history, listing, reset, delete and statistics, in both flavors.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/util.h"

#define SEED_LIST_CAP 100000 /* /sessions has no pagination in the template: bound it */

static void db_error(http_req *r, api_flavor f)
{
    api_error(r, f, 500, "internal_error", "the database is not available");
}

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

/*
 * Whether the caller can see session id: 1 yes, 0 no (absent, or owned by
 * another key: the same answer, so that ids of others cannot be probed), -1 on
 * a database error. When out is non-NULL and the answer is 1, it holds the session.
 */
static int visible(http_req *r, chat_worker *w, const char *id, store_session *out)
{
    store_session s = {0};
    chat_rc rc = store_session_get(w->db, id, &s);
    if (rc == CHAT_ENOTFOUND)
        return 0;
    if (rc != CHAT_OK)
        return -1;
    int ok = api_can_access(r, s.owner) ? 1 : 0;
    if (ok && out)
        *out = s;
    else
        store_session_clear(&s);
    return ok;
}

/* ---- seed ---- */

void api_seed_history_get(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_SEED, id, "path", "session_id"))
        return;
    store_session s = {0};
    store_message *msgs = NULL;
    size_t n = 0;
    int vis = visible(r, w, id, &s);
    if (vis == 0) {
        api_error(r, API_SEED, 404, "not_found_error", "Session not found");
        return;
    }
    chat_rc rc = vis < 0 ? CHAT_EIO : store_messages_list(w->db, id, 0, 0, &msgs, &n);
    if (rc != CHAT_OK) {
        store_session_clear(&s);
        db_error(r, API_SEED);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:s}", "role", msgs[i].role, "content", msgs[i].content));
    http_reply_json(r, 200, json_pack("{s:s,s:o,s:I}", "session_id", id, "messages", arr, "turn_count",
                                      (json_int_t)s.turn_count));
    store_messages_free(msgs, n);
    store_session_clear(&s);
}

void api_seed_history_delete(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_SEED, id, "path", "session_id"))
        return;
    int vis = visible(r, w, id, NULL);
    chat_rc rc = vis < 0 ? CHAT_EIO : vis == 0 ? CHAT_ENOTFOUND : store_session_delete(w->db, id);
    if (rc != CHAT_OK && rc != CHAT_ENOTFOUND) {
        db_error(r, API_SEED);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s,s:s}", "status", rc == CHAT_OK ? "cleared" : "not_found",
                                      "session_id", id));
}

void api_seed_sessions(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    json_t *arr = json_array();
    char *cursor = NULL;
    size_t total = 0;
    do {
        store_session *page = NULL;
        size_t n = 0;
        char *next = NULL;
        chat_rc rc = store_sessions_list(w->db, api_owner_filter(r), cursor, 1000, &page, &n, &next);
        free(cursor);
        cursor = NULL;
        if (rc != CHAT_OK) {
            json_decref(arr);
            db_error(r, API_SEED);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            char ts[32];
            chat_format_iso_local(page[i].created_at, ts);
            json_array_append_new(arr, json_pack("{s:s,s:I,s:s}", "session_id", page[i].id, "turns",
                                                 (json_int_t)page[i].turn_count, "created_at", ts));
        }
        total += n;
        store_sessions_free(page, n);
        cursor = next;
    } while (cursor && total < SEED_LIST_CAP);
    free(cursor);
    /* The template lists sessions oldest first (dict order); the store gives newest first. */
    json_t *oldest_first = json_array();
    for (size_t i = json_array_size(arr); i > 0; i--)
        json_array_append(oldest_first, json_array_get(arr, i - 1));
    json_decref(arr);
    http_reply_json(r, 200, json_pack("{s:o}", "sessions", oldest_first));
}

void api_seed_reset(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_SEED, id, "path", "session_id"))
        return;
    int64_t prev = 0;
    int vis = visible(r, w, id, NULL);
    chat_rc rc = vis < 0 ? CHAT_EIO : vis == 0 ? CHAT_ENOTFOUND : store_session_reset(w->db, id, chat_now_ms(), &prev);
    if (rc == CHAT_ENOTFOUND) {
        http_reply_json(r, 200, json_pack("{s:s,s:s}", "status", "not_found", "session_id", id));
        return;
    }
    if (rc != CHAT_OK) {
        db_error(r, API_SEED);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s,s:s,s:I}", "status", "reset", "session_id", id,
                                      "previous_turns", (json_int_t)prev));
}

void api_seed_stats(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    store_stats st;
    if (store_stats_get(w->db, &st) != CHAT_OK) {
        db_error(r, API_SEED);
        return;
    }
    json_t *avg = st.total_sessions ? json_real((double)st.total_messages / (double)st.total_sessions)
                                    : json_integer(0);
    http_reply_json(r, 200, json_pack("{s:I,s:I,s:o}", "total_sessions", (json_int_t)st.total_sessions,
                                      "total_messages", (json_int_t)st.total_messages,
                                      "avg_messages_per_session", avg));
}

/* ---- v1 ---- */

void api_v1_sessions_list(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    long limit;
    if (!query_int(r, "limit", 1, 100, 20, &limit))
        return;
    const char *cursor = http_req_query(r, "cursor");
    store_session *page = NULL;
    size_t n = 0;
    char *next = NULL;
    chat_rc rc = store_sessions_list(w->db, api_owner_filter(r), cursor && *cursor ? cursor : NULL, (int)limit,
                                     &page, &n, &next);
    if (rc == CHAT_EINVAL) {
        api_error(r, API_V1, 400, "invalid_request_error", "invalid cursor");
        return;
    }
    if (rc != CHAT_OK) {
        db_error(r, API_V1);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, session_json(&page[i]));
    http_reply_json(r, 200, json_pack("{s:o,s:o}", "data", arr, "next_cursor",
                                      next ? json_string(next) : json_null()));
    free(next);
    store_sessions_free(page, n);
}

void api_v1_session_get(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_V1, id, "path", "session_id"))
        return;
    store_session s = {0};
    int vis = visible(r, w, id, &s);
    if (vis == 0) {
        api_error(r, API_V1, 404, "not_found_error", "session %s not found", id);
        return;
    }
    if (vis < 0) {
        db_error(r, API_V1);
        return;
    }
    http_reply_json(r, 200, session_json(&s));
    store_session_clear(&s);
}

void api_v1_session_delete(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_V1, id, "path", "session_id"))
        return;
    int vis = visible(r, w, id, NULL);
    chat_rc rc = vis < 0 ? CHAT_EIO : vis == 0 ? CHAT_ENOTFOUND : store_session_delete(w->db, id);
    if (rc == CHAT_ENOTFOUND) {
        api_error(r, API_V1, 404, "not_found_error", "session %s not found", id);
        return;
    }
    if (rc != CHAT_OK) {
        db_error(r, API_V1);
        return;
    }
    http_reply(r, 204, NULL, NULL, 0);
}

void api_v1_session_messages(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_V1, id, "path", "session_id"))
        return;
    long after, limit;
    if (!query_int(r, "after", 0, 1L << 40, 0, &after) || !query_int(r, "limit", 1, 1000, 100, &limit))
        return;
    store_message *msgs = NULL;
    size_t n = 0;
    int vis = visible(r, w, id, NULL);
    chat_rc rc = vis < 0 ? CHAT_EIO : vis == 0 ? CHAT_ENOTFOUND
                                                : store_messages_list(w->db, id, after, (int)limit + 1, &msgs, &n);
    if (rc == CHAT_ENOTFOUND) {
        api_error(r, API_V1, 404, "not_found_error", "session %s not found", id);
        return;
    }
    if (rc != CHAT_OK) {
        db_error(r, API_V1);
        return;
    }
    bool more = n > (size_t)limit;
    json_t *arr = json_array();
    for (size_t i = 0; i < n && i < (size_t)limit; i++) {
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
    http_reply_json(r, 200, json_pack("{s:o,s:b}", "data", arr, "has_more", more));
    store_messages_free(msgs, n);
}

void api_v1_session_reset(http_req *r, chat_worker *w, char **params)
{
    const char *id = params[0];
    if (!api_check_session_id(r, API_V1, id, "path", "session_id"))
        return;
    int64_t prev = 0;
    int vis = visible(r, w, id, NULL);
    chat_rc rc = vis < 0 ? CHAT_EIO : vis == 0 ? CHAT_ENOTFOUND : store_session_reset(w->db, id, chat_now_ms(), &prev);
    if (rc == CHAT_ENOTFOUND) {
        api_error(r, API_V1, 404, "not_found_error", "session %s not found", id);
        return;
    }
    if (rc != CHAT_OK) {
        db_error(r, API_V1);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s,s:I}", "session_id", id, "previous_turns", (json_int_t)prev));
}

void api_v1_stats(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    store_stats st;
    if (store_stats_get(w->db, &st) != CHAT_OK) {
        db_error(r, API_V1);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:I,s:I,s:I,s:o,s:o}", "sessions", (json_int_t)st.total_sessions,
                                      "messages", (json_int_t)st.total_messages, "turns",
                                      (json_int_t)st.total_turns, "usage", api_usage_json(&st.usage), "cost",
                                      api_cost_json(st.cost_micros)));
}
