/*
 * turn.c: the turn state machine.
 *
 *   turn_start: (ephemeral: build request -> start call at once)
 *   load, one store operation at a time, each completed by a callback on the loop:
 *     [ownership check] -> lock -> session -> [key's session count] -> history
 *     -> build request -> start call
 *   (next loop turn) sink.on_start
 *   llm on_delta*: remember the text, pass it to the sink, pause on "full"
 *   llm on_done:  OK    -> commit (user + reply + usage + cost, lock released)
 *                          -> (commit's callback) sink.on_done
 *                 error, nothing delivered yet, retryable, a fallback model left
 *                       -> renew the lock (and idempotency lease)
 *                          -> (callback) start the call again on the next fallback model
 *                 error -> release lock -> sink.on_error
 *   turn_cancel:  abort the call -> commit partial as "incomplete" or drop -> release
 *
 * At most one store operation of a turn is in flight (op_pending). A consumer
 * that goes away meanwhile cannot free the turn under the operation: the turn
 * is detached instead (no more sink calls) and the operation's callback ends
 * it. Clean-up writes that nothing waits for (lock release, aborting an
 * idempotency record, committing a cancelled turn's partial reply) are
 * submitted fire-and-forget with their own copies of every string, so they
 * outlive the turn.
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

struct turn_engine {
    turn_env env;
    turn *running;              /* the running turns (linked through prev/next) */
};

struct turn {
    turn_engine *e;
    const turn_env *env;        /* &e->env */
    turn *prev, *next;          /* the engine's list of running turns */
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
    /* ---- store steps ---- */
    bool called;                /* a provider call was started */
    bool op_pending;            /* one of this turn's store operations is in flight */
    bool detached;              /* the consumer is gone: op's callback ends the turn, no sink call */
    bool committing;            /* the op in flight is the turn's commit */
    bool locked;                /* the turn lock is ours (session turns) */
    bool see_all;
    turn_truncation truncation;
    const chat_model *req_model;/* the model asked for, NULL: the session's or the default */
    char *req_system_prompt;    /* the system prompt asked for, NULL: the session's or the default */
    store_session sess;         /* the session as loaded (zeroed when absent) */
    struct event *load_ev;      /* starts the load on the next loop turn */
    turn_error fail;            /* a provider failure kept across a fallback's lease renewal */
    /* the provider result, kept across the commit */
    int attempts;
    int64_t provider_ms;
    int64_t cost_micros;
    store_usage usage;
};

/* Every store operation of the engine goes through here (see turn_env.submit). */
static void env_submit(const turn_env *env, store_op *op, store_op_cb cb, void *ud)
{
    if (env->submit)
        env->submit(env->submit_ctx, op, cb, ud);
    else
        store_submit(env->db, op, cb, ud);
}

turn_engine *turn_engine_new(const turn_env *env)
{
    turn_engine *e = chat_xcalloc(1, sizeof *e);
    e->env = *env;
    return e;
}

void turn_engine_free(turn_engine *e)
{
    free(e);
}

bool turn_engine_idle(const turn_engine *e)
{
    return e->running == NULL;
}

static void link_turn(turn *t)
{
    t->next = t->e->running;
    if (t->next)
        t->next->prev = t;
    t->e->running = t;
}

static void unlink_turn(turn *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else if (t->e->running == t)
        t->e->running = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static void turn_free(turn *t)
{
    unlink_turn(t);
    if (t->start_ev)
        event_free(t->start_ev);
    if (t->load_ev)
        event_free(t->load_ev);
    store_session_clear(&t->sess);
    free(t->req_system_prompt);
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

/* Submits the commit of t with reply text; cb (may be NULL) gets ud. Every
 * string is copied into the op, so that the commit can outlive the turn. */
static void submit_commit(turn *t, const char *text, const char *status, const char *stop_reason,
                          const llm_usage *u, int64_t cost, bool with_idem, store_op_cb cb, void *ud)
{
    t->committed_at = chat_now_ms();
    store_op *op = store_op_new(STORE_OP_TURN_COMMIT);
    store_turn *st = &op->in.turn;
    st->session_id = store_op_str(op, t->session_id);
    st->owner = store_op_str(op, t->owner);
    st->system_prompt = store_op_str(op, t->system_prompt);
    st->model = store_op_str(op, t->current->name);
    st->session_model = store_op_str(op, t->model->name); /* a fallback answers this turn only */
    st->user_content = store_op_str(op, t->user_message);
    st->assistant_content = store_op_str(op, text);
    st->status = status;
    st->stop_reason = store_op_str(op, stop_reason);
    st->user_tokens = user_tokens(t, u);
    st->usage = (store_usage){u->input_tokens, u->output_tokens, u->cache_read_tokens, u->cache_write_tokens};
    st->cost_micros = cost;
    st->lock_token = store_op_str(op, t->lock_token);
    st->now = t->committed_at;
    if (with_idem && t->idem_key) {
        st->idem_scope = store_op_str(op, t->idem_scope);
        st->idem_key = store_op_str(op, t->idem_key);
        st->idem_ttl_ms = TURN_IDEMPOTENCY_TTL_MS;
    }
    env_submit(t->env, op, cb, ud);
}

void turn_release_idempotency(turn_engine *e, const char *scope, const char *key, const char *token)
{
    store_op *op = store_op_new(STORE_OP_IDEM_ABORT);
    op->in.scope = store_op_str(op, scope ? scope : "");
    op->in.key = store_op_str(op, key);
    op->in.token = store_op_str(op, token);
    env_submit(&e->env, op, NULL, NULL);
}

/* Nothing was committed: releases the lock and, when set, the idempotency
 * record (a retry with the same Idempotency-Key may run again). Fire and forget. */
static void submit_release(turn_engine *e, const char *session_id, const char *token, const char *idem_scope,
                           const char *idem_key)
{
    if (idem_key)
        turn_release_idempotency(e, idem_scope, idem_key, token);
    store_op *op = store_op_new(STORE_OP_LOCK_RELEASE);
    op->in.session_id = store_op_str(op, session_id);
    op->in.token = store_op_str(op, token);
    env_submit(&e->env, op, NULL, NULL);
}

/* The turn ends without a commit: gives back the lock and the idempotency
 * record (a record begun by the API layer is released even before the lock
 * was taken). */
static void release_lock(turn *t)
{
    if (t->ephemeral)
        return;
    if (t->locked)
        submit_release(t->e, t->session_id, t->lock_token, t->idem_scope, t->idem_key);
    else if (t->idem_key)
        turn_release_idempotency(t->e, t->idem_scope, t->idem_key, t->lock_token);
    t->locked = false;
    free(t->idem_key);
    t->idem_key = NULL;
}

/* The partial reply of a cancelled turn was committed (or not). ud is the engine. */
static void on_partial_committed(store_op *op, void *ud)
{
    if (op->rc == CHAT_OK)
        return;
    const store_turn *st = &op->in.turn;
    chat_log(LOG_ERROR, "cannot commit incomplete turn",
             json_pack("{s:s,s:s}", "session", st->session_id, "error", chat_rc_str(op->rc)));
    submit_release(ud, st->session_id, st->lock_token, NULL, NULL);
}

/* Ends a turn whose call is gone without reaching on_done: keep or drop what arrived. */
static void finish_cancelled(turn *t, const char *why)
{
    bool keep = t->env->keep_partial && t->partial_len > 0 && t->locked;
    if (keep) {
        /* The client never got a result: its Idempotency-Key must not replay
         * this partial reply, so the record is released, not completed. */
        if (t->idem_key) {
            turn_release_idempotency(t->e, t->idem_scope, t->idem_key, t->lock_token);
            free(t->idem_key);
            t->idem_key = NULL;
        }
        llm_usage unknown = {-1, -1, -1, -1};
        submit_commit(t, t->partial, "incomplete", NULL, &unknown, 0, false, on_partial_committed, t->e);
        t->locked = false; /* the commit releases it, or its callback does */
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

/* Ends the turn with err: nothing committed, the lock given back. */
static void fail_turn(turn *t, const turn_error *err)
{
    if (t->start_ev)
        event_del(t->start_ev); /* a failure before the start stays a plain error reply */
    release_lock(t);
    if (t->called) /* a turn refused before its provider call is not a failed turn */
        metrics_turn(METRICS_TURN_ERROR);
    if (!t->detached)
        t->sink->on_error(t->ud, err);
    turn_free(t);
}

/* Starts the next fallback model whose provider is configured; false when none is left. */
static bool start_fallback(turn *t)
{
    while (t->next_fallback < t->model->n_fallbacks) {
        const chat_model *next = models_find(t->env->models, t->model->fallbacks[t->next_fallback++]);
        if (!next || !next->available)
            continue;
        chat_log(LOG_INFO, "starting a fallback model",
                 json_pack("{s:s,s:s,s:s}", "session", t->session_id, "failed_model", t->current->name,
                           "fallback_model", next->name));
        t->current = next;
        if (start_call(t) == CHAT_OK)
            return true;
    }
    return false;
}

/* Submits op for t; its callback ends or continues the turn. Nothing may touch
 * t after this call: with SQLite the callback has already run. */
static void turn_submit(turn *t, store_op *op, store_op_cb cb)
{
    t->op_pending = true;
    env_submit(t->env, op, cb, t);
}

static void shutdown_error(turn_error *err)
{
    set_error(err, 503, "server_shutting_down",
              "chatd is shutting down; the turn was cancelled and nothing was stored: it can be retried");
    err->retry_after_s = 1;
}

/*
 * Before a fallback restarts the provider call: extends the turn lock, then
 * the Idempotency-Key lease, for another full turn; then starts the fallback.
 * The lock lost (or the database down) ends the turn with the provider's error.
 */
static void on_lease_renewed(store_op *op, void *ud)
{
    turn *t = ud;
    t->op_pending = false;
    if (t->detached) {
        finish_cancelled(t, "client_disconnected");
        turn_free(t);
        return;
    }
    if (op->rc != CHAT_OK) {
        fail_turn(t, &t->fail);
        return;
    }
    if (op->kind == STORE_OP_LOCK_REFRESH && t->idem_key) {
        store_op *next = store_op_new(STORE_OP_IDEM_REFRESH);
        next->in.scope = store_op_str(next, t->idem_scope);
        next->in.key = store_op_str(next, t->idem_key);
        next->in.token = store_op_str(next, t->lock_token);
        next->in.now = chat_now_ms();
        next->in.ttl_ms = t->env->lock_ttl_ms;
        turn_submit(t, next, on_lease_renewed);
        return;
    }
    if (!start_fallback(t))
        fail_turn(t, &t->fail);
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

/* The turn succeeded (committed, or ephemeral: res is all zero): tells the
 * sink, unless it left, and frees the turn. */
static void finish_done(turn *t, const char *text, size_t text_len, const char *stop_reason,
                        const store_turn_result *res)
{
    metrics_cost_microdollars(t->cost_micros);
    metrics_turn(METRICS_TURN_OK);
    turn_result out = {
        .session_id = t->session_id,
        .model = t->current->name,
        .cost_micros = t->cost_micros,
        .text = text,
        .text_len = text_len,
        .stop_reason = stop_reason,
        .usage = t->usage,
        .message_id = res->assistant_message_id,
        .turn_count = res->turn_count,
        .created_at = t->committed_at,
        .attempts = t->attempts,
        .truncated_turns = t->truncated_turns,
        .provider_ms = t->provider_ms,
    };
    if (!t->detached)
        t->sink->on_done(t->ud, &out);
    turn_free(t);
}

/* The commit of a finished turn answered. */
static void on_committed(store_op *op, void *ud)
{
    turn *t = ud;
    t->op_pending = false;
    if (op->rc != CHAT_OK) {
        turn_error err;
        if (op->rc == CHAT_ECONFLICT)
            set_error(&err, 409, "session_busy", "the turn lock of session %s expired before the reply was stored",
                      t->session_id);
        else if (op->rc == CHAT_EUNAVAIL)
            set_error(&err, 503, "database_unavailable",
                      "the reply could not be stored: the database is busy or unreachable");
        else
            set_error(&err, 500, "internal_error", "the reply could not be stored");
        fail_turn(t, &err);
        return;
    }
    t->locked = false; /* the commit released it */
    const store_turn *st = &op->in.turn;
    finish_done(t, st->assistant_content, strlen(st->assistant_content), st->stop_reason, &op->out.turn);
}

static void on_llm_done(void *ud, const llm_result *res)
{
    turn *t = ud;
    t->call = NULL; /* freed by the provider layer when we return */
    observe_call(t, res);

    if (res->status != LLM_OK) {
        turn_map_llm_error(res, &t->fail);
        t->fail.attempts = res->attempts;
        if (worth_fallback(res) && t->next_fallback < t->model->n_fallbacks) {
            chat_log(LOG_WARN, "provider call failed, trying a fallback model",
                     json_pack("{s:s,s:s,s:i,s:s?}", "session", t->session_id, "failed_model", t->current->name,
                               "http_status", res->http_status, "provider_error_type", res->error_type));
            if (t->ephemeral) {
                if (start_fallback(t))
                    return;
            } else {
                /* Each fallback gets a full TURN_TIMEOUT: renew the lock first. */
                store_op *op = store_op_new(STORE_OP_LOCK_REFRESH);
                op->in.session_id = store_op_str(op, t->session_id);
                op->in.token = store_op_str(op, t->lock_token);
                op->in.now = chat_now_ms();
                op->in.ttl_ms = t->env->lock_ttl_ms;
                turn_submit(t, op, on_lease_renewed);
                return;
            }
        }
        chat_log(LOG_WARN, "provider call failed",
                 json_pack("{s:s,s:i,s:s?,s:s?,s:i,s:s?}", "session", t->session_id, "http_status",
                           res->http_status, "provider_error_type", res->error_type,
                           "provider_request_id", res->request_id, "attempts", res->attempts,
                           "detail", res->error_message));
        fail_turn(t, &t->fail);
        return;
    }

    ensure_started(t);
    t->usage = (store_usage){res->usage.input_tokens, res->usage.output_tokens, res->usage.cache_read_tokens,
                             res->usage.cache_write_tokens};
    t->cost_micros = models_cost_micros(t->current, &t->usage);
    t->attempts = res->attempts;
    t->provider_ms = res->duration_ms;
    if (t->ephemeral) {
        t->committed_at = chat_now_ms();
        store_turn_result none = {0};
        finish_done(t, res->text ? res->text : "", res->text ? res->text_len : 0, res->stop_reason, &none);
        return;
    }
    t->op_pending = true;
    t->committing = true;
    submit_commit(t, res->text ? res->text : "", "complete", res->stop_reason, &res->usage, t->cost_micros, true,
                  on_committed, t);
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
    chat_rc rc = llm_call_start(t->env->llm, &m->provider, &req, &cbs, t, &t->call);
    if (rc == CHAT_OK)
        t->called = true;
    return rc;
}

/* ---- the load: ownership, lock, session, history ---- */

static bool foreign(const turn *t, const store_session *s)
{
    return !t->see_all && (!s->owner || !t->owner || strcmp(s->owner, t->owner) != 0);
}

void turn_store_error(chat_rc rc, turn_error *err)
{
    if (rc == CHAT_EUNAVAIL) {
        set_error(err, 503, "database_unavailable", "the database is busy or unreachable; retry shortly");
        err->retry_after_s = 1;
    } else {
        set_error(err, 500, "internal_error", "the database is not available");
    }
}

/* Every load callback starts here: true when the turn must stop (and was ended). */
static bool load_interrupted(turn *t)
{
    t->op_pending = false;
    if (t->detached) {
        release_lock(t);
        turn_free(t);
        return true;
    }
    return false;
}

/*
 * Everything after the load: the model, the context window, the provider
 * request, the call. hist (may be NULL) is the session's history, or the
 * ephemeral turn's conversation. False with *err set when the turn cannot run.
 */
static bool prepare(turn *t, const store_message *hist, size_t nhist, turn_error *err)
{
    const model_table *mt = t->env->models;
    bool exists = t->sess.id != NULL;
    t->system_prompt = chat_xstrdup(exists && t->sess.system_prompt ? t->sess.system_prompt
                                    : t->req_system_prompt          ? t->req_system_prompt
                                                                    : t->env->default_system_prompt);
    const chat_model *model = t->req_model;
    if (!model && exists && t->sess.model)
        model = models_find(mt, t->sess.model); /* the session remembers its model */
    if (!model)
        model = models_default(mt);
    if (!model->available) {
        set_error(err, 503, "provider_not_configured",
                  "model %s needs a provider API key: set %s and restart chatd", model->name, model->missing);
        return false;
    }
    t->model = t->current = model;
    t->partial_max = model->provider.max_response_bytes;

    /* Fit the conversation into the model's context window. */
    context_plan plan;
    int64_t reply_max = t->max_tokens < model->max_output ? t->max_tokens : model->max_output;
    chat_rc rc = context_fit(hist, nhist, t->system_prompt, t->user_message, model->context_window, reply_max, &plan);
    if (rc == CHAT_ETOOBIG) {
        set_error(err, 400, "context_length_exceeded",
                  "the message and system prompt (about %lld tokens) do not fit in the context window of %s "
                  "(%lld tokens, %lld of them reserved for the reply)",
                  (long long)plan.tokens, model->name, (long long)model->context_window, (long long)reply_max);
        return false;
    }
    if (plan.truncated_turns > 0 && t->truncation == TURN_TRUNCATE_REJECT) {
        set_error(err, 400, "context_length_exceeded",
                  "the conversation (about %lld tokens) exceeds the context budget of %s (%lld tokens); reset the "
                  "session or send \"truncation\": \"auto\" to leave out the oldest turns",
                  (long long)(plan.tokens), model->name, (long long)plan.budget);
        return false;
    }
    llm_message *lm = chat_xcalloc(nhist + 1, sizeof *lm);
    for (size_t i = plan.first; i < nhist; i++) {
        lm[i - plan.first].role = hist[i].role;
        lm[i - plan.first].content = hist[i].content;
    }
    build_messages(t, lm, nhist - plan.first);
    free(lm);
    t->truncated_turns = plan.truncated_turns;
    /* What the last committed turn measured: the conversation's exact size
     * then. This turn's input minus it is the new message's real size. */
    if (plan.truncated_turns == 0 && nhist > 0 && !t->ephemeral) {
        const store_message *last = &hist[nhist - 1];
        const store_usage *u = &last->usage;
        if (strcmp(last->role, "assistant") == 0 && u->input_tokens >= 0 && u->output_tokens >= 0)
            t->prev_context_tokens = u->input_tokens + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                                     (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0) + u->output_tokens;
    }
    if (start_call(t) != CHAT_OK) {
        set_error(err, 500, "internal_error", "the provider call could not be started");
        return false;
    }
    t->start_ev = evtimer_new(t->env->base, on_start_ev, t);
    struct timeval now = {0, 0};
    evtimer_add(t->start_ev, &now);
    return true;
}

/* The load is complete: run the turn, or end it with the reason it cannot run. */
static void loaded(turn *t, const store_message *hist, size_t nhist)
{
    turn_error err;
    if (!prepare(t, hist, nhist, &err))
        fail_turn(t, &err);
}

static void on_history(store_op *op, void *ud)
{
    turn *t = ud;
    if (load_interrupted(t))
        return;
    if (op->rc != CHAT_OK && op->rc != CHAT_ENOTFOUND) {
        turn_error err;
        turn_store_error(op->rc, &err);
        fail_turn(t, &err);
        return;
    }
    loaded(t, op->out.messages, op->out.n_messages);
}

static void on_owned_count(store_op *op, void *ud)
{
    turn *t = ud;
    if (load_interrupted(t))
        return;
    /* A soft cap: two first turns of new sessions racing may both pass. */
    int64_t cap = t->env->max_sessions_per_key;
    if (op->rc == CHAT_OK && op->out.count >= cap) {
        turn_error err;
        set_error(&err, 403, "session_limit_reached",
                  "this API key already owns %lld sessions (MAX_SESSIONS_PER_KEY); delete some to start new ones",
                  (long long)op->out.count);
        fail_turn(t, &err);
        return;
    }
    loaded(t, NULL, 0);
}

static void on_session(store_op *op, void *ud)
{
    turn *t = ud;
    if (load_interrupted(t))
        return;
    turn_error err;
    if (op->rc != CHAT_OK && op->rc != CHAT_ENOTFOUND) {
        turn_store_error(op->rc, &err);
        fail_turn(t, &err);
        return;
    }
    if (op->rc == CHAT_OK) {
        if (foreign(t, &op->out.session)) {
            /* Checked again under the lock: the session may have been created since. */
            set_error(&err, 404, "not_found_error", "session %s not found", t->session_id);
            fail_turn(t, &err);
            return;
        }
        t->sess = op->out.session;
        memset(&op->out.session, 0, sizeof op->out.session);
        store_op *next = store_op_new(STORE_OP_MESSAGES_LIST);
        next->in.session_id = store_op_str(next, t->session_id);
        turn_submit(t, next, on_history);
        return;
    }
    if (t->owner && t->env->max_sessions_per_key > 0) {
        store_op *next = store_op_new(STORE_OP_KEY_SESSION_COUNT);
        next->in.id = store_op_str(next, t->owner);
        turn_submit(t, next, on_owned_count);
        return;
    }
    loaded(t, NULL, 0);
}

static void on_locked(store_op *op, void *ud)
{
    turn *t = ud;
    if (op->rc == CHAT_OK)
        t->locked = true; /* before anything can end the turn: the lock must be given back */
    if (load_interrupted(t))
        return;
    turn_error err;
    if (op->rc == CHAT_EBUSY) {
        set_error(&err, 409, "session_busy", "another turn is in progress on session %s; retry when it has finished",
                  t->session_id);
        fail_turn(t, &err);
        return;
    }
    if (op->rc != CHAT_OK) {
        turn_store_error(op->rc, &err);
        fail_turn(t, &err);
        return;
    }
    store_op *next = store_op_new(STORE_OP_SESSION_GET);
    next->in.session_id = store_op_str(next, t->session_id);
    turn_submit(t, next, on_session);
}

static void submit_lock(turn *t)
{
    store_op *op = store_op_new(STORE_OP_LOCK_ACQUIRE);
    op->in.session_id = store_op_str(op, t->session_id);
    op->in.token = store_op_str(op, t->lock_token);
    op->in.now = chat_now_ms();
    op->in.ttl_ms = t->env->lock_ttl_ms;
    turn_submit(t, op, on_locked);
}

/* Ownership first, before touching the lock: a session of another key must
 * look absent (404), and a foreign caller must not hold its lock even briefly
 * (that would make the owner's turns fail with 409). */
static void on_precheck(store_op *op, void *ud)
{
    turn *t = ud;
    if (load_interrupted(t))
        return;
    if (op->rc == CHAT_OK && foreign(t, &op->out.session)) {
        turn_error err;
        set_error(&err, 404, "not_found_error", "session %s not found", t->session_id);
        fail_turn(t, &err);
        return;
    }
    submit_lock(t);
}

static void on_load_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    turn *t = arg;
    if (t->see_all) {
        submit_lock(t);
        return;
    }
    store_op *op = store_op_new(STORE_OP_SESSION_GET);
    op->in.session_id = store_op_str(op, t->session_id);
    turn_submit(t, op, on_precheck);
}

/* ---- public ---- */

turn *turn_start(turn_engine *e, const turn_params *p, const turn_sink *sink, void *ud, turn_error *err)
{
    const chat_model *model = NULL;
    if (p->model) {
        model = models_find(e->env.models, p->model);
        if (!model) {
            set_error(err, 400, "invalid_request_error",
                      "unknown model \"%s\": GET /v1/models lists the models this server offers", p->model);
            goto fail;
        }
        if (!model->available) {
            set_error(err, 503, "provider_not_configured",
                      "model %s needs a provider API key: set %s and restart chatd", model->name, model->missing);
            goto fail;
        }
    }

    turn *t = chat_xcalloc(1, sizeof *t);
    t->e = e;
    t->env = &e->env;
    t->sink = sink;
    t->ud = ud;
    t->session_id = chat_xstrdup(p->session_id ? p->session_id : "");
    t->ephemeral = p->session_id == NULL;
    t->user_message = chat_xstrdup(p->message);
    t->req_system_prompt = p->system_prompt ? chat_xstrdup(p->system_prompt) : NULL;
    t->req_model = model;
    t->lock_token = chat_xstrdup(p->request_id);
    t->owner = p->owner ? chat_xstrdup(p->owner) : NULL;
    t->see_all = p->see_all;
    t->truncation = p->truncation;
    if (p->idem_key && !t->ephemeral) {
        t->idem_scope = chat_xstrdup(p->idem_scope ? p->idem_scope : "");
        t->idem_key = chat_xstrdup(p->idem_key);
    }
    t->max_tokens = p->max_tokens > 0 ? p->max_tokens : e->env.max_tokens;
    t->prev_context_tokens = -1;
    t->stream = p->stream;
    t->started_mono = chat_mono_ms();

    if (t->ephemeral) {
        /* The caller gave the whole conversation: nothing to load. It carries
         * no token counts, so its size is estimated. */
        store_message *view = chat_xcalloc(p->n_history + 1, sizeof *view);
        for (size_t i = 0; i < p->n_history; i++) {
            view[i].role = (char *)p->history[i].role;
            view[i].content = (char *)p->history[i].content;
            view[i].tokens = -1;
        }
        bool ok = prepare(t, view, p->n_history, err);
        free(view);
        if (!ok) {
            turn_free(t);
            return NULL;
        }
        link_turn(t);
        return t;
    }
    /* The load runs from the loop: sink calls never happen inside turn_start. */
    t->load_ev = evtimer_new(e->env.base, on_load_ev, t);
    struct timeval now = {0, 0};
    evtimer_add(t->load_ev, &now);
    link_turn(t);
    return t;

fail:
    if (p->idem_key && p->session_id)
        turn_release_idempotency(e, p->idem_scope, p->idem_key, p->request_id);
    return NULL;
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
    metrics_turn_cancelled(METRICS_CANCEL_CLIENT_GONE);
    metrics_turn(METRICS_TURN_CANCELLED);
    if (t->op_pending) {
        /* The operation's callback ends the turn (a commit in flight still lands). */
        t->detached = true;
        unlink_turn(t);
        return;
    }
    if (t->call) {
        llm_call_cancel(t->call);
        t->call = NULL;
    }
    finish_cancelled(t, "client_disconnected");
    turn_free(t);
}

void turn_abort_all(turn_engine *e)
{
    turn *t = e->running;
    while (t) {
        turn *next = t->next;
        if (t->op_pending) {
            if (!t->committing) {
                /* A load or a lease renewal waiting on the store: answer now;
                 * the operation's callback gives back what it took. */
                turn_error err;
                shutdown_error(&err);
                metrics_turn_cancelled(METRICS_CANCEL_SHUTDOWN);
                metrics_turn(METRICS_TURN_CANCELLED);
                t->sink->on_error(t->ud, &err);
                t->detached = true;
                unlink_turn(t);
            }
            /* A commit in flight completes normally (and answers). */
            t = next;
            continue;
        }
        if (t->call) {
            llm_call_cancel(t->call);
            t->call = NULL;
        }
        turn_error err;
        set_error(&err, 503, "server_shutting_down",
                  t->env->keep_partial && t->partial_len > 0
                      ? "chatd is shutting down; the turn was cancelled and its partial reply kept as incomplete"
                      : "chatd is shutting down; the turn was cancelled and nothing was stored: it can be retried");
        finish_cancelled(t, "shutdown");
        metrics_turn_cancelled(METRICS_CANCEL_SHUTDOWN);
        metrics_turn(METRICS_TURN_CANCELLED);
        t->sink->on_error(t->ud, &err);
        turn_free(t);
        t = next;
    }
}
