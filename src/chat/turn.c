/*
 * turn.c: the turn state machine.
 *
 *   turn_start: lock -> load session + history -> build request -> start call
 *   (next loop turn) sink.on_start
 *   llm on_delta*: remember the text, pass it to the sink, pause on "full"
 *   llm on_done:  OK    -> commit (user + reply + usage + cost, lock released) -> sink.on_done
 *                 error, nothing delivered yet, retryable, a fallback model left
 *                       -> start the call again on the next fallback model
 *                 error -> release lock -> sink.on_error
 *   turn_cancel:  abort the call -> commit partial as "incomplete" or drop -> release
 *
 * The text received so far is kept by the turn itself (not only by the provider
 * call) because a cancelled call is freed at once, and the partial reply must
 * still be committable.
 */
#include "chat/turn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "chat/context.h"
#include "chat/models.h"
#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"

struct turn {
    chat_worker *w;
    turn *prev, *next;          /* the worker's list of running turns */
    const turn_sink *sink;
    void *ud;
    char *session_id;
    char *user_message;
    char *system_prompt;        /* resolved: the session's or the default */
    const chat_model *model;    /* the requested (or session's, or default) model */
    const chat_model *current;  /* the model the running call uses (a fallback after a failure) */
    size_t next_fallback;       /* index into model->fallbacks of the next one to try */
    llm_message *msgs;          /* the provider request's messages, kept for fallbacks */
    size_t n_msgs;
    char **owned;               /* merged message strings owned by the turn */
    size_t n_owned;
    char *lock_token;
    char *owner;
    char *idem_scope;           /* the Idempotency-Key record this turn completes, or NULL */
    char *idem_key;
    int max_tokens;
    bool stream;
    bool ephemeral;             /* no session: nothing is locked, loaded or stored */
    llm_call *call;             /* NULL once the call ended or was cancelled */
    struct event *start_ev;     /* delivers on_start on the next loop turn */
    bool start_delivered;       /* on_start ran (always before any delta or on_done) */
    bool paused;
    char *partial;              /* reply text received so far */
    size_t partial_len, partial_cap;
    size_t partial_max;
    int64_t started_mono;
    int64_t committed_at;       /* wall-clock ms of the commit (the messages' created_at) */
    int64_t truncated_turns;    /* oldest turns left out of the provider request */
    int64_t prev_context_tokens;/* the conversation's size as the provider measured it last turn, -1 unknown */
};

static void link_turn(turn *t)
{
    t->next = t->w->turns;
    if (t->next)
        t->next->prev = t;
    t->w->turns = t;
}

static void unlink_turn(turn *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else if (t->w->turns == t)
        t->w->turns = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static void turn_free(turn *t)
{
    unlink_turn(t);
    if (t->start_ev)
        event_free(t->start_ev);
    free(t->session_id);
    free(t->user_message);
    free(t->system_prompt);
    for (size_t i = 0; i < t->n_owned; i++)
        free(t->owned[i]);
    free(t->owned);
    free(t->msgs);
    free(t->lock_token);
    free(t->owner);
    free(t->idem_scope);
    free(t->idem_key);
    free(t->partial);
    free(t);
}

static void set_error(turn_error *e, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void set_error(turn_error *e, int status, const char *type, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->retry_after_s = 0;
    e->attempts = 0;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    chat_utf8_trim(e->message);
}

/* ---- the error table (docs/API.md, "Errors") ---- */

static void map_stream_error(const llm_result *res, turn_error *err)
{
    const char *type = res->error_type ? res->error_type : "";
    const char *msg = res->error_message ? res->error_message : "the provider reported an error";
    if (strcmp(type, "overloaded_error") == 0)
        set_error(err, 503, "provider_overloaded", "the provider is overloaded: %s", msg);
    else if (strcmp(type, "rate_limit_error") == 0)
        set_error(err, 429, "rate_limit_error", "the provider rate limit was reached: %s", msg);
    else
        set_error(err, 502, "provider_error", "the provider failed (%s): %s", *type ? type : "error", msg);
}

void turn_map_llm_error(const llm_result *res, turn_error *err)
{
    const char *pmsg = res->error_message ? res->error_message : "no details";
    int s = res->http_status;
    switch (res->status) {
    case LLM_OK:
        set_error(err, 200, "ok", "ok");
        return;
    case LLM_ERR_HTTP:
        if (s == 400)
            set_error(err, 400, "invalid_request_error", "%s", pmsg);
        else if (s == 401 || s == 403)
            set_error(err, 502, "provider_auth_error",
                      "the provider rejected the configured API key (HTTP %d)", s);
        else if (s == 404)
            set_error(err, 400, "invalid_request_error", "%s", pmsg);
        else if (s == 413)
            set_error(err, 413, "request_too_large", "the provider rejected the request as too large: %s", pmsg);
        else if (s == 429) {
            set_error(err, 429, "rate_limit_error", "the provider rate limit was reached: %s", pmsg);
            err->retry_after_s = res->retry_after_ms > 0 ? (res->retry_after_ms + 999) / 1000 : 1;
        } else if (s == 529 || s == 503)
            set_error(err, 503, "provider_overloaded", "the provider is overloaded (HTTP %d): %s", s, pmsg);
        else if (s == 504)
            set_error(err, 504, "provider_timeout", "the provider timed out (HTTP 504): %s", pmsg);
        else
            set_error(err, 502, "provider_error", "the provider failed (HTTP %d): %s", s, pmsg);
        return;
    case LLM_ERR_CONNECT:
        set_error(err, 502, "provider_error", "cannot reach the provider: %s", pmsg);
        return;
    case LLM_ERR_TIMEOUT:
        set_error(err, 504, "provider_timeout", "the provider did not answer in time: %s", pmsg);
        return;
    case LLM_ERR_STREAM:
        map_stream_error(res, err);
        return;
    case LLM_ERR_TRUNCATED:
        set_error(err, 502, "provider_error", "the provider's response ended early: %s", pmsg);
        return;
    case LLM_ERR_PROTOCOL:
        set_error(err, 502, "provider_error", "the provider's response could not be read: %s", pmsg);
        return;
    case LLM_ERR_RETRY_AFTER:
        /* The provider asked for a longer wait than we hold a request for: pass
         * the hint on instead of hanging (429 stays 429, anything else is 503). */
        if (s == 429)
            set_error(err, 429, "rate_limit_error",
                      "the provider rate limit was reached and it asks to retry after longer than RETRY_MAX_WAIT: %s",
                      pmsg);
        else
            set_error(err, 503, "provider_overloaded",
                      "the provider is unavailable (HTTP %d) and asks to retry after longer than RETRY_MAX_WAIT", s);
        err->retry_after_s = res->retry_after_ms > 0 ? (res->retry_after_ms + 999) / 1000 : 1;
        return;
    }
    set_error(err, 502, "provider_error", "the provider failed: %s", pmsg);
}

/* ---- history -> provider messages ---- */

/*
 * The provider wants non-empty messages, alternating, starting with a user
 * message. Committed turns already alternate, but an assistant reply can be
 * empty (the provider may answer with no content): such messages are skipped and
 * neighbours of the same role are merged with a blank line between them.
 * Every content string of the result is a copy owned by the turn (t->owned),
 * because a fallback restarts the call after the history was freed.
 */
static void build_messages(turn *t, const llm_message *hist, size_t nhist)
{
    t->msgs = chat_xcalloc(nhist + 1, sizeof *t->msgs);
    t->owned = chat_xcalloc(nhist + 1, sizeof *t->owned);
    size_t n = 0;
    for (size_t i = 0; i <= nhist; i++) {
        const char *role = i < nhist ? hist[i].role : "user";
        const char *content = i < nhist ? hist[i].content : t->user_message;
        if (!content || !*content)
            continue;
        role = strcmp(role, "user") == 0 ? "user" : "assistant"; /* static strings */
        if (n == 0 && strcmp(role, "user") != 0)
            continue;
        if (n > 0 && strcmp(t->msgs[n - 1].role, role) == 0) {
            char *merged = chat_xasprintf("%s\n\n%s", t->msgs[n - 1].content, content);
            free(t->owned[n - 1]);
            t->owned[n - 1] = merged;
            t->msgs[n - 1].content = merged;
            continue;
        }
        t->owned[n] = chat_xstrdup(content);
        t->msgs[n].role = role;
        t->msgs[n].content = t->owned[n];
        n++;
    }
    t->n_msgs = t->n_owned = n;
}

/* ---- commit ---- */

/* The new user message's size in tokens, from the provider's counts: this
 * turn's whole input minus the conversation as it stood after the last turn.
 * -1 (estimate later) when that is not derivable. */
static int64_t user_tokens(const turn *t, const llm_usage *u)
{
    if (t->prev_context_tokens < 0 || u->input_tokens < 0)
        return -1;
    int64_t in = u->input_tokens + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                 (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0);
    int64_t d = in - t->prev_context_tokens;
    return d > 0 ? d : -1;
}

static chat_rc commit(turn *t, const char *text, const char *status, const char *stop_reason,
                      const llm_usage *u, int64_t cost, store_turn_result *res)
{
    t->committed_at = chat_now_ms();
    if (t->ephemeral)
        return CHAT_OK; /* res stays zero: no message id, no turn count */
    store_turn st = {
        .session_id = t->session_id,
        .owner = t->owner,
        .system_prompt = t->system_prompt,
        .model = t->current->name,
        .session_model = t->model->name, /* a fallback answers this turn only */
        .user_content = t->user_message,
        .assistant_content = text,
        .status = status,
        .stop_reason = stop_reason,
        .user_tokens = user_tokens(t, u),
        .usage = {u->input_tokens, u->output_tokens, u->cache_read_tokens, u->cache_write_tokens},
        .cost_micros = cost,
        .lock_token = t->lock_token,
        .now = t->committed_at,
        .idem_scope = t->idem_scope,
        .idem_key = t->idem_key,
        .idem_ttl_ms = TURN_IDEMPOTENCY_TTL_MS,
    };
    int64_t t0 = chat_mono_us();
    chat_rc rc = store_turn_commit(t->w->db, &st, res);
    metrics_db_operation("turn_commit", (double)(chat_mono_us() - t0) / 1e6);
    return rc;
}

static void release_lock(turn *t)
{
    if (t->ephemeral)
        return;
    /* Nothing was committed: a retry with the same Idempotency-Key may run again. */
    if (t->idem_key && store_idem_abort(t->w->db, t->idem_scope, t->idem_key, t->lock_token) != CHAT_OK)
        chat_log(LOG_ERROR, "cannot abort idempotency record", json_pack("{s:s}", "session", t->session_id));
    if (store_lock_release(t->w->db, t->session_id, t->lock_token) != CHAT_OK)
        chat_log(LOG_ERROR, "cannot release turn lock",
                 json_pack("{s:s}", "session", t->session_id));
}

/* Ends a turn whose call is gone without reaching on_done: keep or drop what arrived. */
static void finish_cancelled(turn *t, const char *why)
{
    bool keep = t->w->app->cfg->cancel_policy == CANCEL_KEEP_PARTIAL && t->partial_len > 0;
    if (keep) {
        /* The client never got a result: its Idempotency-Key must not replay
         * this partial reply, so the record is released, not completed. */
        if (t->idem_key) {
            if (store_idem_abort(t->w->db, t->idem_scope, t->idem_key, t->lock_token) != CHAT_OK)
                chat_log(LOG_ERROR, "cannot abort idempotency record", json_pack("{s:s}", "session", t->session_id));
            free(t->idem_key);
            t->idem_key = NULL;
        }
        llm_usage unknown = {-1, -1, -1, -1};
        chat_rc rc = commit(t, t->partial, "incomplete", NULL, &unknown, 0, NULL);
        if (rc != CHAT_OK) {
            chat_log(LOG_ERROR, "cannot commit incomplete turn",
                     json_pack("{s:s,s:s}", "session", t->session_id, "error", chat_rc_str(rc)));
            release_lock(t);
        }
    } else {
        release_lock(t);
    }
    chat_log(LOG_INFO, "turn cancelled",
             json_pack("{s:s,s:s,s:s,s:I}", "session", t->session_id, "reason", why, "partial",
                       keep ? "kept" : "dropped", "partial_bytes", (json_int_t)t->partial_len));
}

/* ---- provider callbacks ---- */

static void ensure_started(turn *t);

static int on_llm_delta(void *ud, const char *text, size_t len)
{
    turn *t = ud;
    ensure_started(t);
    if (t->partial_len + len <= t->partial_max) {
        if (t->partial_len + len + 1 > t->partial_cap) {
            size_t cap = t->partial_cap ? t->partial_cap : 1024;
            while (cap < t->partial_len + len + 1)
                cap *= 2;
            t->partial = chat_xrealloc(t->partial, cap);
            t->partial_cap = cap;
        }
        memcpy(t->partial + t->partial_len, text, len);
        t->partial_len += len;
        t->partial[t->partial_len] = '\0';
    }
    if (t->sink->on_delta && t->sink->on_delta(t->ud, text, len)) {
        t->paused = true;
        return LLM_PAUSE;
    }
    return LLM_CONTINUE;
}

/* True when another model may be tried: nothing reached the client, and the
 * failure is the provider's (overloaded, rate limited, down), not the request's. */
static bool worth_fallback(const llm_result *res)
{
    if (res->delivered)
        return false;
    switch (res->status) {
    case LLM_ERR_CONNECT:
    case LLM_ERR_TIMEOUT:
    case LLM_ERR_RETRY_AFTER:
    case LLM_ERR_STREAM:
    case LLM_ERR_TRUNCATED:
        return true;
    case LLM_ERR_HTTP:
        return res->http_status == 408 || res->http_status == 429 || res->http_status >= 500;
    default:
        return false;
    }
}

static chat_rc start_call(turn *t);

/* Before a fallback restarts the provider call: extends the turn lock (and the
 * Idempotency-Key lease) for another full turn. False when no fallback is left
 * to try or the lock was lost (then the turn ends with the current error). */
static bool renew_lease(turn *t)
{
    if (t->next_fallback >= t->model->n_fallbacks)
        return false;
    if (t->ephemeral)
        return true;
    int64_t now = chat_now_ms(), ttl = t->w->app->cfg->lock_ttl_ms;
    if (store_lock_refresh(t->w->db, t->session_id, t->lock_token, now, ttl) != CHAT_OK)
        return false;
    if (t->idem_key && store_idem_refresh(t->w->db, t->idem_scope, t->idem_key, t->lock_token, now, ttl) != CHAT_OK)
        return false;
    return true;
}

static void observe_call(const turn *t, const llm_result *res)
{
    const char *prov = t->current->provider.name;
    metrics_provider_request(prov, (double)res->duration_ms / 1000.0,
                             res->ttfb_ms >= 0 ? (double)res->ttfb_ms / 1000.0 : -1);
    if (res->attempts > 1)
        metrics_provider_retries(prov, res->attempts - 1);
    if (res->status != LLM_OK)
        metrics_provider_error(prov, res->error_type ? res->error_type : "error");
    metrics_tokens(res->usage.input_tokens, res->usage.output_tokens, res->usage.cache_read_tokens,
                   res->usage.cache_write_tokens);
}

static void on_llm_done(void *ud, const llm_result *res)
{
    turn *t = ud;
    t->call = NULL; /* freed by the provider layer when we return */
    observe_call(t, res);

    if (res->status != LLM_OK && worth_fallback(res) && renew_lease(t)) {
        /* The next fallback whose provider is configured; each gets a full
         * TURN_TIMEOUT, so the turn lock was renewed above. */
        while (t->next_fallback < t->model->n_fallbacks) {
            const chat_model *next = models_find(t->w->app->models, t->model->fallbacks[t->next_fallback++]);
            if (!next || !next->available)
                continue;
            chat_log(LOG_WARN, "provider call failed, trying a fallback model",
                     json_pack("{s:s,s:s,s:s,s:i,s:s?}", "session", t->session_id, "failed_model",
                               t->current->name, "fallback_model", next->name, "http_status", res->http_status,
                               "provider_error_type", res->error_type));
            t->current = next;
            if (start_call(t) == CHAT_OK)
                return;
        }
    }
    if (res->status == LLM_OK)
        ensure_started(t); /* a failure before the start stays a plain error reply */
    else if (t->start_ev)
        event_del(t->start_ev);

    if (res->status == LLM_OK) {
        store_turn_result tr = {0};
        const char *stop = res->stop_reason;
        store_usage su = {res->usage.input_tokens, res->usage.output_tokens, res->usage.cache_read_tokens,
                          res->usage.cache_write_tokens};
        int64_t cost = models_cost_micros(t->current, &su);
        chat_rc rc = commit(t, res->text ? res->text : "", "complete", stop, &res->usage, cost, &tr);
        if (rc != CHAT_OK) {
            turn_error err;
            if (rc == CHAT_ECONFLICT)
                set_error(&err, 409, "session_busy",
                          "the turn lock of session %s expired before the reply was stored", t->session_id);
            else
                set_error(&err, 500, "internal_error", "the reply could not be stored");
            release_lock(t);
            metrics_turn(METRICS_TURN_ERROR);
            t->sink->on_error(t->ud, &err);
        } else {
            metrics_cost_microdollars(cost);
            metrics_turn(METRICS_TURN_OK);
            turn_result out = {
                .session_id = t->session_id,
                .model = t->current->name,
                .cost_micros = cost,
                .text = res->text ? res->text : "",
                .text_len = res->text ? res->text_len : 0,
                .stop_reason = stop,
                .usage = {res->usage.input_tokens, res->usage.output_tokens,
                          res->usage.cache_read_tokens, res->usage.cache_write_tokens},
                .message_id = tr.assistant_message_id,
                .turn_count = tr.turn_count,
                .created_at = t->committed_at,
                .attempts = res->attempts,
                .truncated_turns = t->truncated_turns,
                .provider_ms = res->duration_ms,
            };
            t->sink->on_done(t->ud, &out);
        }
    } else {
        turn_error err;
        turn_map_llm_error(res, &err);
        err.attempts = res->attempts;
        chat_log(LOG_WARN, "provider call failed",
                 json_pack("{s:s,s:i,s:s?,s:s?,s:i,s:s?}", "session", t->session_id, "http_status",
                           res->http_status, "provider_error_type", res->error_type,
                           "provider_request_id", res->request_id, "attempts", res->attempts,
                           "detail", res->error_message));
        release_lock(t);
        metrics_turn(METRICS_TURN_ERROR);
        t->sink->on_error(t->ud, &err);
    }
    turn_free(t);
}

/* Delivers on_start once. The start event may still be pending when the first
 * delta or the end arrives: with a fast provider, the socket event that carries
 * the whole reply can run in the same loop iteration, before our timer. */
static void ensure_started(turn *t)
{
    if (t->start_delivered)
        return;
    t->start_delivered = true;
    if (t->start_ev)
        event_del(t->start_ev);
    turn_info info = {.session_id = t->session_id, .model = t->current->name};
    if (t->sink->on_start)
        t->sink->on_start(t->ud, &info);
}

static void on_start_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ensure_started(arg);
}

/* Starts the provider call on t->current (the model or a fallback). */
static chat_rc start_call(turn *t)
{
    const chat_model *m = t->current;
    int max_tokens = t->max_tokens;
    if (max_tokens > m->max_output)
        max_tokens = (int)m->max_output;
    llm_request req = {
        .model = m->model_id,
        .system = t->system_prompt,
        .messages = t->msgs,
        .n_messages = t->n_msgs,
        .max_tokens = max_tokens,
        .stream = t->stream,
        .request_id = t->lock_token,
    };
    llm_callbacks cbs = {.on_delta = on_llm_delta, .on_done = on_llm_done};
    return llm_call_start(t->w->llm, &m->provider, &req, &cbs, t, &t->call);
}

/* ---- public ---- */

turn *turn_start(chat_worker *w, const turn_params *p, const turn_sink *sink, void *ud,
                 turn_error *err)
{
    const struct chat_config *cfg = w->app->cfg;
    store_session sess = {0};
    store_message *hist = NULL;
    size_t nhist = 0;
    turn *t = NULL;
    bool locked = false;

    const model_table *mt = w->app->models;
    const chat_model *model = NULL;
    if (p->model) {
        model = models_find(mt, p->model);
        if (!model) {
            set_error(err, 400, "invalid_request_error",
                      "unknown model \"%s\": GET /v1/models lists the models this server offers", p->model);
            goto fail;
        }
    }
    if (model && !model->available) {
        set_error(err, 503, "provider_not_configured",
                  "model %s needs a provider API key: set %s and restart chatd", model->name, model->missing);
        goto fail;
    }

    chat_rc rc;
    bool exists = false;
    if (!p->session_id)
        goto loaded; /* ephemeral: the caller gave the whole conversation */
    /* Ownership first, before touching the lock: a session of another key must
     * look absent (404), and a foreign caller must not hold its lock even
     * briefly (that would make the owner's turns fail with 409). */
    if (!p->see_all) {
        rc = store_session_get(w->db, p->session_id, &sess);
        if (rc == CHAT_OK && (!sess.owner || !p->owner || strcmp(sess.owner, p->owner) != 0)) {
            set_error(err, 404, "not_found_error", "session %s not found", p->session_id);
            goto fail;
        }
        store_session_clear(&sess);
    }
    int64_t t0 = chat_mono_us();
    rc = store_lock_acquire(w->db, p->session_id, p->request_id, chat_now_ms(), cfg->lock_ttl_ms);
    metrics_db_operation("lock_acquire", (double)(chat_mono_us() - t0) / 1e6);
    if (rc == CHAT_EBUSY) {
        set_error(err, 409, "session_busy",
                  "another turn is in progress on session %s; retry when it has finished", p->session_id);
        goto fail;
    }
    if (rc != CHAT_OK) {
        set_error(err, 500, "internal_error", "the database is not available");
        goto fail;
    }
    locked = true;

    rc = store_session_get(w->db, p->session_id, &sess);
    if (rc != CHAT_OK && rc != CHAT_ENOTFOUND) {
        set_error(err, 500, "internal_error", "the database is not available");
        goto fail;
    }
    exists = rc == CHAT_OK;
    if (exists && !p->see_all && (!sess.owner || !p->owner || strcmp(sess.owner, p->owner) != 0)) {
        /* Checked again under the lock: the session may have been created since. */
        set_error(err, 404, "not_found_error", "session %s not found", p->session_id);
        goto fail;
    }
    if (!exists && p->owner && cfg->max_sessions_per_key > 0) {
        /* A soft cap: two first turns of new sessions racing may both pass. */
        int64_t owned = 0;
        if (store_key_session_count(w->db, p->owner, &owned) == CHAT_OK && owned >= cfg->max_sessions_per_key) {
            set_error(err, 403, "session_limit_reached",
                      "this API key already owns %lld sessions (MAX_SESSIONS_PER_KEY); delete some to start new ones",
                      (long long)owned);
            goto fail;
        }
    }
    if (exists) {
        t0 = chat_mono_us();
        rc = store_messages_list(w->db, p->session_id, 0, 0, &hist, &nhist);
        metrics_db_operation("history_load", (double)(chat_mono_us() - t0) / 1e6);
        if (rc != CHAT_OK && rc != CHAT_ENOTFOUND) {
            set_error(err, 500, "internal_error", "the database is not available");
            goto fail;
        }
    }

loaded:
    t = chat_xcalloc(1, sizeof *t);
    t->w = w;
    t->sink = sink;
    t->ud = ud;
    t->session_id = chat_xstrdup(p->session_id ? p->session_id : "");
    t->ephemeral = p->session_id == NULL;
    t->user_message = chat_xstrdup(p->message);
    t->system_prompt = chat_xstrdup(exists && sess.system_prompt ? sess.system_prompt
                                    : p->system_prompt            ? p->system_prompt
                                                                  : cfg->default_system_prompt);
    if (!model && exists && sess.model)
        model = models_find(mt, sess.model); /* the session remembers its model */
    if (!model)
        model = models_default(mt);
    if (!model->available) {
        set_error(err, 503, "provider_not_configured",
                  "model %s needs a provider API key: set %s and restart chatd", model->name, model->missing);
        goto fail;
    }
    t->model = t->current = model;
    t->lock_token = chat_xstrdup(p->request_id);
    t->owner = chat_xstrdup(p->owner);
    t->idem_scope = chat_xstrdup(p->idem_key ? (p->idem_scope ? p->idem_scope : "") : NULL);
    t->idem_key = chat_xstrdup(p->idem_key);
    t->max_tokens = p->max_tokens > 0 ? p->max_tokens : cfg->max_tokens;
    t->prev_context_tokens = -1;
    t->stream = p->stream;
    t->partial_max = model->provider.max_response_bytes;
    t->started_mono = chat_mono_ms();

    /* Fit the conversation into the model's context window. Ephemeral turns
     * carry no token counts: their history is estimated. */
    store_message *view = hist;
    size_t nview = nhist;
    if (t->ephemeral) {
        view = chat_xcalloc(p->n_history + 1, sizeof *view);
        for (size_t i = 0; i < p->n_history; i++) {
            view[i].role = (char *)p->history[i].role;
            view[i].content = (char *)p->history[i].content;
            view[i].tokens = -1;
        }
        nview = p->n_history;
    }
    context_plan plan;
    int64_t reply_max = t->max_tokens < model->max_output ? t->max_tokens : model->max_output;
    rc = context_fit(view, nview, t->system_prompt, t->user_message, model->context_window, reply_max, &plan);
    if (rc == CHAT_ETOOBIG) {
        set_error(err, 400, "context_length_exceeded",
                  "the message and system prompt (about %lld tokens) do not fit in the context window of %s "
                  "(%lld tokens, %lld of them reserved for the reply)",
                  (long long)plan.tokens, model->name, (long long)model->context_window, (long long)reply_max);
    } else if (plan.truncated_turns > 0 && p->truncation == TURN_TRUNCATE_REJECT) {
        set_error(err, 400, "context_length_exceeded",
                  "the conversation (about %lld tokens) exceeds the context budget of %s (%lld tokens); reset the "
                  "session or send \"truncation\": \"auto\" to leave out the oldest turns",
                  (long long)(plan.tokens), model->name, (long long)plan.budget);
        rc = CHAT_ETOOBIG;
    }
    if (rc == CHAT_OK) {
        llm_message *lm = chat_xcalloc(nview + 1, sizeof *lm);
        for (size_t i = plan.first; i < nview; i++) {
            lm[i - plan.first].role = view[i].role;
            lm[i - plan.first].content = view[i].content;
        }
        build_messages(t, lm, nview - plan.first);
        free(lm);
        t->truncated_turns = plan.truncated_turns;
        /* What the last committed turn measured: the conversation's exact size
         * then. This turn's input minus it is the new message's real size. */
        if (plan.truncated_turns == 0 && nview > 0 && !t->ephemeral) {
            const store_message *last = &view[nview - 1];
            if (strcmp(last->role, "assistant") == 0 && last->usage.input_tokens >= 0 &&
                last->usage.output_tokens >= 0)
                t->prev_context_tokens = last->usage.input_tokens + (last->usage.cache_read_tokens > 0 ? last->usage.cache_read_tokens : 0) +
                                         (last->usage.cache_write_tokens > 0 ? last->usage.cache_write_tokens : 0) +
                                         last->usage.output_tokens;
        }
    }
    if (view != hist)
        free(view);
    if (rc != CHAT_OK)
        goto fail;
    rc = start_call(t);
    if (rc != CHAT_OK) {
        set_error(err, 500, "internal_error", "the provider call could not be started");
        goto fail;
    }
    t->start_ev = evtimer_new(w->base, on_start_ev, t);
    struct timeval now = {0, 0};
    evtimer_add(t->start_ev, &now);
    link_turn(t);
    goto out;

fail:
    if (p->idem_key && p->session_id &&
        store_idem_abort(w->db, p->idem_scope ? p->idem_scope : "", p->idem_key, p->request_id) != CHAT_OK)
        chat_log(LOG_ERROR, "cannot abort idempotency record", json_pack("{s:s}", "session", p->session_id));
    if (locked && p->session_id && store_lock_release(w->db, p->session_id, p->request_id) != CHAT_OK)
        chat_log(LOG_ERROR, "cannot release turn lock", json_pack("{s:s}", "session", p->session_id));
    if (t) {
        turn_free(t);
        t = NULL;
    }
out:
    store_messages_free(hist, nhist);
    store_session_clear(&sess);
    return t;
}

int64_t turn_estimated_tokens(const turn *t)
{
    int64_t n = context_estimate_tokens(t->system_prompt) + context_estimate_tokens(t->partial);
    for (size_t i = 0; i < t->n_msgs; i++)
        n += context_estimate_tokens(t->msgs[i].content);
    return n;
}

void turn_resume(turn *t)
{
    if (t && t->paused && t->call) {
        t->paused = false;
        llm_call_resume(t->call);
    }
}

void turn_cancel(turn *t)
{
    if (!t)
        return;
    if (t->call) {
        llm_call_cancel(t->call);
        t->call = NULL;
    }
    finish_cancelled(t, "client_disconnected");
    metrics_turn_cancelled(METRICS_CANCEL_CLIENT_GONE);
    metrics_turn(METRICS_TURN_CANCELLED);
    turn_free(t);
}

void turn_abort_all(chat_worker *w)
{
    while (w->turns) {
        turn *t = w->turns;
        if (t->call) {
            llm_call_cancel(t->call);
            t->call = NULL;
        }
        turn_error err;
        set_error(&err, 503, "server_shutting_down",
                  t->w->app->cfg->cancel_policy == CANCEL_KEEP_PARTIAL && t->partial_len > 0
                      ? "chatd is shutting down; the turn was cancelled and its partial reply kept as incomplete"
                      : "chatd is shutting down; the turn was cancelled and nothing was stored: it can be retried");
        finish_cancelled(t, "shutdown");
        metrics_turn_cancelled(METRICS_CANCEL_SHUTDOWN);
        metrics_turn(METRICS_TURN_CANCELLED);
        t->sink->on_error(t->ud, &err);
        turn_free(t);
    }
}
