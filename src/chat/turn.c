/*
 * turn.c: one turn's state machine (the contract and the transition table are
 * in turn.h; docs/ARCHITECTURE.md, "The life of a turn", tells the story).
 *
 * The state (turn_state) says what the turn waits for: the start of its load,
 * one store operation, or the provider call. At most one store operation of a
 * turn is in flight, and every one completes in on_store_done, which switches on
 * the state to the step that continues the turn; the provider's callbacks are
 * accepted in TURN_CALLING only. A callback arriving in any other state is a
 * programming error and ends the process (bad_state): never a silent return.
 *
 * Every turn that ends without its commit goes through end_uncommitted: an
 * error, the consumer going away (turn_cancel) and the shutdown (turn_abort_all)
 * differ only in what happens to the partial reply and whom they tell. A
 * consumer that goes away while a store operation is in flight cannot free the
 * turn under that operation: stop() records why (t->stopped) and unlinks the
 * turn, and the operation's completion ends it. Clean-up writes that nothing
 * waits for (lock release, aborting an idempotency record, committing a
 * cancelled turn's partial reply) are submitted fire-and-forget with their own
 * copies of every string, so they outlive the turn.
 *
 * The text received so far is kept by the turn itself (not only by the provider
 * call) because a cancelled call is freed at once, and the partial reply must
 * still be committable.
 */
#include "chat/turn.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "chat/context.h"
#include "chat/metrics.h"
#include "chat/models.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "core/log.h"
#include "core/util.h"
#include "llm/metrics.h"

/* Why a turn stops before its commit (see end_uncommitted). */
typedef enum turn_stop {
    STOP_NONE = 0,    /* not stopped: the consumer still waits for the end */
    STOP_ERROR,       /* the turn failed: nothing is kept, the consumer gets on_error */
    STOP_CLIENT_GONE, /* turn_cancel: the consumer left, no sink call */
    STOP_SHUTDOWN,    /* turn_abort_all: the consumer is answered 503 */
} turn_stop;

struct turn_engine {
    turn_env env;
    turn *running; /* the running turns (linked through prev/next) */
};

struct turn {
    turn_engine *e;
    const turn_env *env; /* &e->env */
    turn *prev, *next;   /* the engine's list of running turns */
    turn_state state;    /* what the turn waits for (turn.h, the transition table) */
    /* Orthogonal to the state: the consumer may leave during any store
     * operation, and the state must still say which one is in flight (its
     * completion gives back what it took). STOP_NONE while the consumer waits;
     * set by stop() only, while an operation is in flight. */
    turn_stop stopped;
    const turn_sink *sink;
    void *ud;
    char *session_id;
    char *user_message;   /* the new message's text (of a message with blocks: their text) */
    json_t *user_blocks;  /* NULL, or the new message's blocks (a deep copy of turn_params.message_blocks) */
    json_t *options;      /* NULL, or the request options as asked (a deep copy of turn_params.options) */
    json_t *call_options; /* the options the running call was given: checked for t->current, refused ones
                             dropped (DROP_UNSUPPORTED_PARAMS), no-ops left out; NULL when none */
    bool json_via_tool;   /* structured output through the forced tool (t->current has no native mode) */
    char *dropped;        /* options left out for t->current, comma-separated, or NULL */
    char *api_dropped;    /* turn_params.dropped: fields the API left out before the turn, or NULL */
    json_t *reply;        /* the reply's content (a copy of llm_result.content), kept across the commit */
    char *stop_sequence;  /* the reply's stop sequence, kept across the commit */
    int64_t reasoning_tokens;
    char *system_prompt;       /* resolved: the session's or the default */
    const chat_model *model;   /* the requested (or session's, or default) model */
    const chat_model *current; /* the model the running call uses (a fallback after a failure) */
    size_t next_fallback;      /* index into model->fallbacks of the next one to try */
    llm_message *msgs;         /* the provider request's messages (context_messages), kept for fallbacks */
    store_message *hist;       /* the history read, whose texts msgs borrow (owned; NULL for ephemeral turns) */
    size_t nhist;
    size_t n_msgs;
    char *lock_token;
    char *owner;
    char *idem_scope; /* the Idempotency-Key record this turn completes, or NULL */
    char *idem_key;
    int max_tokens;
    bool stream;
    bool ephemeral; /* no session: nothing is locked, loaded or stored */
    bool see_all;
    turn_truncation truncation;
    const chat_model *req_model; /* the model asked for, NULL: the session's or the default */
    char *req_system_prompt;     /* the system prompt asked for, NULL: the session's or the default */
    store_session sess;          /* the session as loaded (zeroed when absent) */
    struct event *load_ev;       /* TURN_QUEUED: starts the load on the next loop turn */
    llm_call *call;              /* TURN_CALLING: the running call (NULL in every other state) */
    /* The sink's own order (start before any delta or end), independent of the
     * state: on_start is due from the call's start, and a fast provider may
     * deliver its first delta or even its end before the start event runs. */
    struct event *start_ev; /* delivers on_start on the next loop turn */
    bool start_delivered;   /* on_start ran */
    /* The consumer's flow control, orthogonal to the state: set when on_delta
     * says "full" (the call pauses), cleared by turn_resume. */
    bool paused;
    /* History, not state: a turn refused before any provider call is not
     * counted as a failed turn (metrics). */
    bool called;
    chat_buf partial; /* reply text received so far, at most the provider's max_response_bytes */
    int64_t started_mono;
    int64_t committed_at;        /* wall-clock ms of the commit (the messages' created_at) */
    int64_t truncated_turns;     /* oldest turns left out of the provider request */
    int64_t unread_turns;        /* oldest turns the history read left out (beyond the context window) */
    int64_t prev_context_tokens; /* the conversation's size as the provider measured it last turn, -1 unknown */
    turn_error *fail;            /* a provider failure kept across a fallback's lease renewal; made on the first */
    /* the provider result, kept across the commit */
    int attempts;
    int64_t provider_ms; /* every call of the turn (a failed one before a fallback too) */
    int64_t provider_us;
    int64_t cost_micros;
    store_usage usage;
};

static const char *const state_names[] = {
    [TURN_QUEUED] = "queued",
    [TURN_PRECHECK] = "precheck",
    [TURN_LOCKING] = "locking",
    [TURN_LOCKED] = "locked",
    [TURN_LOADING_SESSION] = "loading_session",
    [TURN_COUNTING] = "counting",
    [TURN_LOADING_HISTORY] = "loading_history",
    [TURN_PREPARED] = "prepared",
    [TURN_CALLING] = "calling",
    [TURN_RENEWING_LOCK] = "renewing_lock",
    [TURN_RENEWING_IDEM] = "renewing_idem",
    [TURN_COMMITTING] = "committing",
    [TURN_ENDED] = "ended",
};

const char *turn_state_name(turn_state s)
{
    return (unsigned)s < sizeof state_names / sizeof state_names[0] && state_names[s] ? state_names[s] : "?";
}

turn_state turn_get_state(const turn *t)
{
    return t->state;
}

/* A callback or a call arrived in a state that cannot receive it: the state
 * machine is wrong, and going on would free or commit the wrong thing. */
static void bad_state(const turn *t, const char *event) __attribute__((noreturn));

static void bad_state(const turn *t, const char *event)
{
    chat_fatal("turn state machine violated: %s in state %s (session %s)", event, turn_state_name(t->state),
               t->session_id ? t->session_id : "");
}

/* True in the states where the session's turn lock is ours. */
static bool holds_lock(const turn *t)
{
    if (t->ephemeral)
        return false;
    switch (t->state) {
    case TURN_LOCKED:
    case TURN_LOADING_SESSION:
    case TURN_COUNTING:
    case TURN_LOADING_HISTORY:
    case TURN_PREPARED:
    case TURN_CALLING:
    case TURN_RENEWING_LOCK:
    case TURN_RENEWING_IDEM:
    case TURN_COMMITTING: return true;
    case TURN_QUEUED:
    case TURN_PRECHECK:
    case TURN_LOCKING:
    case TURN_ENDED: return false;
    }
    return false;
}

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
    json_decref(t->user_blocks);
    json_decref(t->options);
    json_decref(t->call_options);
    free(t->dropped);
    free(t->api_dropped);
    json_decref(t->reply);
    free(t->stop_sequence);
    free(t->system_prompt);
    context_messages_free(t->msgs, t->n_msgs);
    store_messages_free(t->hist, t->nhist);
    free(t->lock_token);
    free(t->owner);
    free(t->idem_scope);
    free(t->idem_key);
    chat_buf_free(&t->partial);
    free(t->fail);
    free(t);
}

/* ---- commit and release ---- */

/* The new user message's size in tokens, from the provider's counts: this
 * turn's whole input minus the conversation as it stood after the last turn.
 * When that is not derivable (the first turn, a truncated request, no usage),
 * the estimate every later turn would make of it (context.h), kept so that
 * they do not: a session past its window would otherwise walk the text of
 * every message it sends on every turn. */
static int64_t user_tokens(const turn *t, const llm_usage *u)
{
    if (t->prev_context_tokens >= 0 && u->input_tokens >= 0) {
        int64_t in = u->input_tokens + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                     (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0);
        int64_t d = in - t->prev_context_tokens;
        if (d > 0)
            return d;
    }
    return t->user_blocks ? llm_content_tokens(t->user_blocks) : context_estimate_tokens(t->user_message);
}

/* True if content holds text blocks only (or nothing). */
static bool only_text(const json_t *content)
{
    size_t i;
    const json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type || strcmp(type, "text") != 0)
            return false;
    }
    return true;
}

/* Submits the commit of t with the reply (text, and content: the reply as
 * blocks or NULL); cb (may be NULL) gets ud. Every string is copied into the
 * op, so that the commit can outlive the turn. */
static void submit_commit(turn *t, const char *text, const json_t *content, const char *status, const char *stop_reason,
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
    /* Blocks only for what plain text cannot hold: a plain-text message or
     * reply keeps blocks NULL, as every turn did before blocks existed. */
    if (t->user_blocks) {
        char *ub = chat_json_dumps(t->user_blocks, JSON_COMPACT, NULL);
        if (!ub)
            chat_fatal("out of memory");
        st->user_blocks = store_op_str(op, ub);
        free(ub);
    }
    if (content && !only_text(content)) {
        char *ab = chat_json_dumps(content, JSON_COMPACT, NULL);
        if (!ab)
            chat_fatal("out of memory");
        st->assistant_blocks = store_op_str(op, ab);
        free(ab);
    }
    st->status = status;
    st->stop_reason = store_op_str(op, stop_reason);
    st->user_tokens = user_tokens(t, u);
    st->usage = (store_usage){ u->input_tokens, u->output_tokens, u->cache_read_tokens, u->cache_write_tokens };
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
    op->in.idem_key = store_op_str(op, key);
    op->in.token = store_op_str(op, token);
    env_submit(&e->env, op, NULL, NULL);
}

/* Gives back the lock of session_id held by token. Fire and forget. */
static void submit_lock_release(turn_engine *e, const char *session_id, const char *token)
{
    store_op *op = store_op_new(STORE_OP_LOCK_RELEASE);
    op->in.session_id = store_op_str(op, session_id);
    op->in.token = store_op_str(op, token);
    env_submit(&e->env, op, NULL, NULL);
}

/* The turn ends without a commit: gives back the lock (when the state says it
 * is ours) and the idempotency record (a record begun by the API layer is
 * released even before the lock was taken: a retry may run again). */
static void release(turn *t)
{
    if (t->ephemeral)
        return;
    if (t->idem_key)
        turn_release_idempotency(t->e, t->idem_scope, t->idem_key, t->lock_token);
    if (holds_lock(t))
        submit_lock_release(t->e, t->session_id, t->lock_token);
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
    submit_lock_release(ud, st->session_id, st->lock_token);
}

/* CANCEL_POLICY=keep applies: there is a partial reply, and the lock to commit it. */
static bool keeps_partial(const turn *t)
{
    return t->env->keep_partial && t->partial.len > 0 && holds_lock(t);
}

/* A cancelled turn: commits what arrived as "incomplete", or drops it. */
static void keep_or_drop(turn *t, turn_stop why)
{
    bool keep = keeps_partial(t);
    if (keep) {
        /* The client never got a result: its Idempotency-Key must not replay
         * this partial reply, so the record is released, not completed. */
        if (t->idem_key) {
            turn_release_idempotency(t->e, t->idem_scope, t->idem_key, t->lock_token);
            free(t->idem_key);
            t->idem_key = NULL;
        }
        llm_usage unknown = { -1, -1, -1, -1, -1 };
        /* The text only: tool calls and thinking of a reply that never
         * finished are not kept (no call is left waiting for results). */
        submit_commit(t, chat_buf_str(&t->partial), NULL, "incomplete", NULL, &unknown, 0, false, on_partial_committed,
                      t->e);
        /* the commit releases the lock, or its callback does */
    } else {
        release(t);
    }
    chat_log(LOG_INFO, "turn cancelled",
             json_pack("{s:s,s:s,s:s,s:I}", "session", t->session_id, "reason",
                       why == STOP_SHUTDOWN ? "shutdown" : "client_disconnected", "partial", keep ? "kept" : "dropped",
                       "partial_bytes", (json_int_t)t->partial.len));
}

/*
 * The one way a turn ends without its commit, for every reason: stops the
 * provider call and the pending start, gives back what the turn holds (for a
 * cancel, after committing or dropping the partial reply), tells the consumer
 * (err, unless it left: err NULL or t->stopped), and frees the turn. No store
 * operation of the turn may be in flight.
 */
static void end_uncommitted(turn *t, turn_stop why, const turn_error *err)
{
    if (t->call) {
        llm_call_cancel(t->call);
        t->call = NULL;
    }
    if (t->start_ev)
        event_del(t->start_ev); /* a failure before the start stays a plain error reply */
    if (why == STOP_ERROR) {
        release(t);
        if (t->called) /* a turn refused before its provider call is not a failed turn */
            metrics_turn(METRICS_TURN_ERROR);
    } else {
        keep_or_drop(t, why);
    }
    bool tell = err && t->stopped == STOP_NONE;
    t->state = TURN_ENDED;
    if (tell)
        t->sink->on_error(t->ud, err);
    turn_free(t);
}

/* The error a shutdown answers; kept: the partial reply is committed. */
static void shutdown_error(turn_error *err, bool kept)
{
    turn_error_set(err, 503, "server_shutting_down", "%s",
                   kept ? "chatd is shutting down; the turn was cancelled and its partial reply kept as incomplete"
                        : "chatd is shutting down; the turn was cancelled and nothing was stored: it can be retried");
}

/*
 * turn_cancel and turn_abort_all: the consumer leaves (STOP_CLIENT_GONE) or
 * the server stops (STOP_SHUTDOWN). Without a store operation in flight the
 * turn ends here; with one, it is unlinked and marked, and the operation's
 * completion ends it (a commit in flight still lands).
 */
static void stop(turn *t, turn_stop why)
{
    metrics_cancel_reason reason = why == STOP_SHUTDOWN ? METRICS_CANCEL_SHUTDOWN : METRICS_CANCEL_CLIENT_GONE;
    turn_error err;
    switch (t->state) {
    case TURN_COMMITTING:
        if (why == STOP_SHUTDOWN)
            return; /* the commit completes normally and answers */
        metrics_turn_cancelled(reason);
        metrics_turn(METRICS_TURN_CANCELLED);
        t->stopped = why;
        unlink_turn(t);
        return;
    case TURN_PRECHECK:
    case TURN_LOCKING:
    case TURN_LOADING_SESSION:
    case TURN_COUNTING:
    case TURN_LOADING_HISTORY:
    case TURN_RENEWING_LOCK:
    case TURN_RENEWING_IDEM:
        /* A load or a lease renewal waiting on the store: answer now; the
         * operation's completion gives back what it took. */
        metrics_turn_cancelled(reason);
        metrics_turn(METRICS_TURN_CANCELLED);
        if (why == STOP_SHUTDOWN) {
            shutdown_error(&err, false);
            err.retry_after_s = 1;
            t->sink->on_error(t->ud, &err);
        }
        t->stopped = why;
        unlink_turn(t);
        return;
    case TURN_QUEUED:
    case TURN_PREPARED:
    case TURN_CALLING:
        metrics_turn_cancelled(reason);
        metrics_turn(METRICS_TURN_CANCELLED);
        if (t->call) {
            /* Cancelled before keep_or_drop reads the partial reply: nothing more arrives. */
            llm_call_cancel(t->call);
            t->call = NULL;
        }
        shutdown_error(&err, keeps_partial(t));
        end_uncommitted(t, why, why == STOP_SHUTDOWN ? &err : NULL);
        return;
    case TURN_LOCKED:
    case TURN_ENDED: break;
    }
    bad_state(t, why == STOP_SHUTDOWN ? "turn_abort_all" : "turn_cancel");
}

/* ---- the provider call ---- */

static void on_store_done(store_op *op, void *ud);

/* Submits op for t, which enters state (the operation's wait); on_store_done
 * continues the turn, on a later loop turn. Submit as the last step: the
 * completion may end and free the turn. */
static void submit_step(turn *t, turn_state state, store_op *op)
{
    t->state = state;
    env_submit(t->env, op, on_store_done, t);
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
    turn_info info = { .session_id = t->session_id, .model = t->current->name, .dropped = t->dropped };
    if (t->sink->on_start)
        t->sink->on_start(t->ud, &info);
}

static void on_start_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    turn *t = arg;
    switch (t->state) {
    case TURN_CALLING:
    case TURN_RENEWING_LOCK: /* a first call failed fast; a fallback is on its way */
    case TURN_RENEWING_IDEM: ensure_started(t); return;
    default: bad_state(t, "start event");
    }
}

static void on_llm_done(void *ud, const llm_result *res);

static int on_llm_delta(void *ud, const char *text, size_t len)
{
    turn *t = ud;
    if (t->state != TURN_CALLING)
        bad_state(t, "provider delta");
    ensure_started(t);
    if (chat_buf_append(&t->partial, text, len) != CHAT_OK) {
        /* Past max_response_bytes: not kept (the call itself fails on a
         * reply that large); the piece still goes to the consumer. */
    }
    if (t->sink->on_delta && t->sink->on_delta(t->ud, text, len)) {
        t->paused = true;
        return LLM_PAUSE;
    }
    return LLM_CONTINUE;
}

/* Every reply event, when the sink takes events (turn_sink.on_event): the
 * text is kept as on_llm_delta keeps it, and every event is forwarded. */
static int on_llm_event(void *ud, const llm_event *ev)
{
    turn *t = ud;
    if (t->state != TURN_CALLING)
        bad_state(t, "provider event");
    ensure_started(t);
    if (ev->kind == LLM_EV_TEXT && chat_buf_append(&t->partial, ev->data, ev->len) != CHAT_OK) {
        /* Past max_response_bytes: not kept, as in on_llm_delta. */
    }
    if (t->sink->on_event(t->ud, ev)) {
        t->paused = true;
        return LLM_PAUSE;
    }
    return LLM_CONTINUE;
}

/* Starts the provider call on t->current (the model or a fallback), with the
 * options fitted to it (fit_model): the turn enters TURN_CALLING. Anything
 * but CHAT_OK: no call, the state unchanged. */
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
        .options = t->call_options,
        .json_via_tool = t->json_via_tool,
    };
    llm_callbacks cbs = { .on_delta = on_llm_delta, .on_done = on_llm_done };
    if (t->sink->on_event) {
        cbs.on_delta = NULL;
        cbs.on_event = on_llm_event;
    }
    chat_rc rc = llm_call_start(t->env->llm, &m->provider, &req, &cbs, t, &t->call);
    if (rc == CHAT_OK) {
        t->called = true;
        t->paused = false;
        t->state = TURN_CALLING;
    }
    return rc;
}

static bool fit_model(turn *t, const chat_model *m, turn_error *err);

/* Starts the next fallback model whose provider is configured and that can
 * take the request (fit_model: its content, and its options as turn.h says);
 * false when none is left. */
static bool start_fallback(turn *t)
{
    while (t->next_fallback < t->model->n_fallbacks) {
        const chat_model *next = models_find(t->env->models, t->model->fallbacks[t->next_fallback++]);
        if (!next || !next->available)
            continue;
        turn_error why;
        if (!fit_model(t, next, &why)) {
            chat_log(LOG_INFO, "fallback model skipped: it cannot take the request",
                     json_pack("{s:s,s:s,s:s}", "session", t->session_id, "fallback_model", next->name, "reason",
                               why.message));
            continue;
        }
        chat_log(LOG_INFO, "starting a fallback model",
                 json_pack("{s:s,s:s,s:s}", "session", t->session_id, "failed_model", t->current->name,
                           "fallback_model", next->name));
        t->current = next;
        if (t->start_delivered && t->sink->on_model)
            t->sink->on_model(t->ud, next->name); /* else on_start names it */
        if (start_call(t) == CHAT_OK)
            return true;
    }
    return false;
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
    case LLM_ERR_TRUNCATED: return true;
    case LLM_ERR_HTTP: return res->http_status == 408 || res->http_status == 429 || res->http_status >= 500;
    default: return false;
    }
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
    if (!t->reply)
        t->reply = json_array();
    turn_result out = {
        .stop_sequence = t->stop_sequence,
        .content = t->reply,
        .dropped = t->dropped,
        .reasoning_tokens = t->reasoning_tokens,
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
        .provider_us = t->provider_us,
    };
    bool tell = t->stopped == STOP_NONE;
    t->state = TURN_ENDED;
    if (tell)
        t->sink->on_done(t->ud, &out);
    turn_free(t);
}

/* Submits a lease renewal step before a fallback: the lock, then the Idempotency-Key record. */
static void submit_renewal(turn *t, turn_state state)
{
    store_op *op = store_op_new(state == TURN_RENEWING_LOCK ? STORE_OP_LOCK_REFRESH : STORE_OP_IDEM_REFRESH);
    if (state == TURN_RENEWING_LOCK) {
        op->in.session_id = store_op_str(op, t->session_id);
    } else {
        op->in.scope = store_op_str(op, t->idem_scope);
        op->in.idem_key = store_op_str(op, t->idem_key);
    }
    op->in.token = store_op_str(op, t->lock_token);
    op->in.now = chat_now_ms();
    op->in.ttl_ms = t->env->lock_ttl_ms;
    submit_step(t, state, op);
}

/* The reply's content, ours to keep: a reference to llm_result.content
 * (provider.h: the provider layer never changes it after on_done, and the
 * turn only reads it), or the text as one block when there is none. */
static json_t *reply_content(const llm_result *res)
{
    json_t *c = res->content ? json_incref((json_t *)res->content) : json_array();
    if (!c)
        chat_fatal("out of memory");
    if (!res->content && res->text && res->text_len > 0)
        json_array_append_new(c, json_pack("{s:s,s:s%}", "type", "text", "text", res->text, res->text_len));
    return c;
}

static void on_llm_done(void *ud, const llm_result *res)
{
    turn *t = ud;
    if (t->state != TURN_CALLING)
        bad_state(t, "provider end");
    t->call = NULL; /* freed by the provider layer when we return */
    observe_call(t, res);
    t->provider_ms += res->duration_ms;
    t->provider_us += res->duration_us;

    if (res->status != LLM_OK) {
        if (!t->fail)
            t->fail = chat_xcalloc(1, sizeof *t->fail);
        turn_map_llm_error(res, t->fail);
        t->fail->attempts = res->attempts;
        if (worth_fallback(res) && t->next_fallback < t->model->n_fallbacks) {
            chat_log(LOG_WARN, "provider call failed, trying a fallback model",
                     json_pack("{s:s,s:s,s:i,s:s?}", "session", t->session_id, "failed_model", t->current->name,
                               "http_status", res->http_status, "provider_error_type", res->error_type));
            if (t->ephemeral) {
                if (start_fallback(t))
                    return;
            } else {
                /* Each fallback gets a full TURN_TIMEOUT: renew the lock first. */
                submit_renewal(t, TURN_RENEWING_LOCK);
                return;
            }
        }
        chat_log(LOG_WARN, "provider call failed",
                 json_pack("{s:s,s:i,s:s?,s:s?,s:i,s:s?}", "session", t->session_id, "http_status", res->http_status,
                           "provider_error_type", res->error_type, "provider_request_id", res->request_id, "attempts",
                           res->attempts, "detail", res->error_message));
        end_uncommitted(t, STOP_ERROR, t->fail);
        return;
    }

    ensure_started(t);
    t->usage = (store_usage){ res->usage.input_tokens, res->usage.output_tokens, res->usage.cache_read_tokens,
                              res->usage.cache_write_tokens };
    t->cost_micros = models_cost_micros(t->current, &t->usage);
    t->attempts = res->attempts;
    t->reasoning_tokens = res->usage.reasoning_tokens;
    t->stop_sequence = res->stop_sequence ? chat_xstrdup(res->stop_sequence) : NULL;
    t->reply = reply_content(res);
    if (t->ephemeral) {
        t->committed_at = chat_now_ms();
        store_turn_result none = { 0 };
        finish_done(t, res->text ? res->text : "", res->text ? res->text_len : 0, res->stop_reason, &none);
        return;
    }
    t->state = TURN_COMMITTING;
    submit_commit(t, res->text ? res->text : "", t->reply, "complete", res->stop_reason, &res->usage, t->cost_micros,
                  true, on_store_done, t);
}

/* ---- what the answering model can take: options, content, tool-call pairing ---- */

/* Appends name to t->dropped (comma-separated). */
static void add_dropped(turn *t, const char *name)
{
    char *d = t->dropped ? chat_xasprintf("%s,%s", t->dropped, name) : chat_xstrdup(name);
    free(t->dropped);
    t->dropped = d;
}

/*
 * Fits the request to model m before a call on it: every message it will be
 * sent must be readable by m (models_check_content), and every option must
 * be one m takes (models_check_options): a refused option fails with 400
 * unsupported_parameter, or with env.drop_unsupported is left out and named
 * in t->dropped. On success t->call_options, t->json_via_tool and t->dropped
 * describe the call on m; on failure they are unchanged and *err is set.
 */
static bool fit_model(turn *t, const chat_model *m, turn_error *err)
{
    char why[400];
    for (size_t i = 0; i < t->n_msgs; i++) {
        if (t->msgs[i].blocks && models_check_content(m, t->msgs[i].blocks, why, sizeof why)) {
            turn_error_set(err, 400, "unsupported_parameter", "messages[%zu].%s", i, why);
            return false;
        }
    }
    json_t *opts = t->options ? json_deep_copy(t->options) : NULL;
    if (t->options && !opts)
        chat_fatal("out of memory");
    char *dropped = NULL;
    const char *refused;
    while (opts && (refused = models_check_options(m, opts, why, sizeof why)) != NULL) {
        if (!t->env->drop_unsupported || !json_object_get(opts, refused)) { /* not a key: nothing to drop */
            turn_error_set(err, 400, "unsupported_parameter", "%s", why);
            json_decref(opts);
            free(dropped);
            return false;
        }
        char *name = chat_xstrdup(refused); /* refused may point into opts */
        char *d = dropped ? chat_xasprintf("%s,%s", dropped, name) : chat_xstrdup(name);
        free(dropped);
        dropped = d;
        chat_log(
            LOG_INFO, "request option dropped (DROP_UNSUPPORTED_PARAMS)",
            json_pack("{s:s,s:s,s:s,s:s}", "session", t->session_id, "model", m->name, "option", name, "reason", why));
        json_object_del(opts, name);
        free(name);
    }
    if (opts) {
        models_strip_noops(m, opts);
        if (json_object_size(opts) == 0) {
            json_decref(opts);
            opts = NULL;
        }
    }
    json_decref(t->call_options);
    t->call_options = opts;
    free(t->dropped);
    t->dropped = NULL;
    if (t->api_dropped)
        add_dropped(t, t->api_dropped);
    if (dropped) {
        add_dropped(t, dropped);
        free(dropped);
    }
    const char *rf = json_string_value(json_object_get(json_object_get(opts, "response_format"), "type"));
    t->json_via_tool = rf && (strcmp(rf, "json_schema") == 0 || strcmp(rf, "json_object") == 0) &&
                       !(m->features & CHAT_MODEL_STRUCTURED_OUTPUT);
    return true;
}

static bool is_block(const json_t *b, const char *type)
{
    const char *t = json_string_value(json_object_get(b, "type"));
    return t && strcmp(t, type) == 0;
}

/*
 * The tool-call rule between a reply (calls: its blocks, NULL for plain text)
 * and the user message that follows it (answer: its blocks, NULL for plain
 * text), at where (for the message). A reply that called tools must be
 * followed by a message that begins with exactly one tool_result for each of
 * its calls (text and images may follow); tool results answer nothing else.
 */
static bool check_pairing(const json_t *calls, const json_t *answer, const char *where, turn_error *err)
{
    size_t ncalls = 0, i;
    const json_t *b;
    char ids[256] = "";
    size_t used = 0;
    json_array_foreach(calls, i, b)
    {
        if (!is_block(b, "tool_use"))
            continue;
        const char *id = json_string_value(json_object_get(b, "id"));
        if (used < sizeof ids)
            used += (size_t)snprintf(ids + used, sizeof ids - used, "%s%s", ncalls ? ", " : "", id ? id : "?");
        ncalls++;
    }
    size_t lead = 0;
    while (lead < json_array_size(answer) && is_block(json_array_get(answer, lead), "tool_result"))
        lead++;
    bool stray = false; /* a tool result after other blocks */
    for (i = lead; i < json_array_size(answer); i++)
        stray |= is_block(json_array_get(answer, i), "tool_result");
    if (ncalls == 0) {
        if (lead > 0 || stray) {
            turn_error_set(err, 400, "unexpected_tool_results",
                           "%s holds tool_result blocks, but the reply before it called no tools", where);
            return false;
        }
        return true;
    }
    bool ok = lead == ncalls && !stray;
    for (i = 0; ok && i < lead; i++) {
        const char *id = json_string_value(json_object_get(json_array_get(answer, i), "tool_use_id"));
        bool found = false;
        size_t k;
        json_array_foreach(calls, k, b)
        {
            const char *cid = json_string_value(json_object_get(b, "id"));
            if (is_block(b, "tool_use") && cid && id && strcmp(cid, id) == 0)
                found = true;
        }
        ok = found; /* ids are unique within a message (llm_content_check), so a full match is a bijection */
    }
    if (!ok) {
        turn_error_set(err, 400, "tool_results_required",
                       "the reply before %s called tools (%s%s): %s must begin with one tool_result block for each "
                       "of these ids, in any order (text and images may follow)",
                       where, ids, used >= sizeof ids ? "..." : "", where);
        return false;
    }
    return true;
}

/* ---- prepare: the request, from the loaded session ---- */

/*
 * Everything between the load and the call: the system prompt, the model, the
 * context window, the provider request. hist (may be NULL) is the session's
 * history, or the ephemeral turn's conversation; hist_blocks (NULL, or nhist
 * entries) the parsed blocks of its messages (referenced by t->msgs, not
 * kept otherwise). On success the turn is
 * TURN_PREPARED (the call is not started: begin_call does that); false with
 * *err set when the turn cannot run.
 */
static bool prepare(turn *t, const store_message *hist, const json_t *const *hist_blocks, size_t nhist, turn_error *err)
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
        turn_error_set(err, 503, "provider_not_configured",
                       "model %s needs a provider API key: set %s and restart chatd", model->name, model->missing);
        return false;
    }
    t->model = t->current = model;
    chat_buf_init(&t->partial, model->provider.max_response_bytes);

    /* The tool-call rule: the new message answers the last reply's calls (of
     * an ephemeral conversation, every reply's calls are answered). */
    if (t->ephemeral) {
        for (size_t i = 0; i < nhist; i++) {
            if (!hist[i].role || strcmp(hist[i].role, "user") != 0)
                continue;
            const json_t *prev = i > 0 && hist_blocks ? hist_blocks[i - 1] : NULL;
            char where[48];
            snprintf(where, sizeof where, "history message %zu", i);
            if (!check_pairing(prev, hist_blocks ? hist_blocks[i] : NULL, where, err))
                return false;
        }
        for (size_t i = 0; i + 1 < nhist; i++) {
            if (hist_blocks && llm_content_has(hist_blocks[i], "tool_use") && hist[i + 1].role &&
                strcmp(hist[i + 1].role, "user") != 0) {
                turn_error_set(err, 400, "tool_results_required",
                               "history message %zu calls tools: the next message must be the user's tool results", i);
                return false;
            }
        }
    }
    const json_t *last_reply =
        nhist > 0 && hist_blocks && hist[nhist - 1].role && strcmp(hist[nhist - 1].role, "assistant") == 0
            ? hist_blocks[nhist - 1]
            : NULL;
    if (!check_pairing(last_reply, t->user_blocks, "the new message", err))
        return false;

    /* Fit the conversation into the model's context window. */
    context_plan plan;
    int64_t reply_max = t->max_tokens < model->max_output ? t->max_tokens : model->max_output;
    chat_rc rc = context_fit_blocks(hist, hist_blocks, nhist, t->system_prompt, t->user_message, t->user_blocks,
                                    model->context_window, reply_max, &plan);
    if (rc == CHAT_ETOOBIG) {
        turn_error_set(err, 400, "context_length_exceeded",
                       "the message and system prompt (about %lld tokens) do not fit in the context window of %s "
                       "(%lld tokens, %lld of them reserved for the reply)",
                       (long long)plan.tokens, model->name, (long long)model->context_window, (long long)reply_max);
        return false;
    }
    /* Turns the history read left out: beyond the window, so the plan would
     * have left them out too. */
    plan.truncated_turns += t->unread_turns;
    if (plan.truncated_turns > 0 && t->truncation == TURN_TRUNCATE_REJECT) {
        turn_error_set(err, 400, "context_length_exceeded",
                       "the conversation (about %lld tokens) exceeds the context budget of %s (%lld tokens); reset the "
                       "session or send \"truncation\": \"auto\" to leave out the oldest turns",
                       (long long)(plan.tokens), model->name, (long long)plan.budget);
        return false;
    }
    /* Kept for a fallback, which restarts the call. Their texts are borrowed
     * from the history the turn keeps (t->hist); an ephemeral turn's
     * history is its caller's, so they are copied. */
    t->n_msgs =
        context_messages_blocks(hist, hist_blocks, plan.first, nhist, t->user_message, t->user_blocks, &t->msgs);
    if (t->ephemeral)
        context_messages_detach(t->msgs, t->n_msgs);
    t->truncated_turns = plan.truncated_turns;
    /* What the model can take: the content it will be sent, and the options. */
    if (!fit_model(t, model, err))
        return false;
    /* What the last committed turn measured: the conversation's exact size
     * then. This turn's input minus it is the new message's real size. */
    if (plan.truncated_turns == 0 && nhist > 0 && !t->ephemeral) {
        const store_message *last = &hist[nhist - 1];
        const store_usage *u = &last->usage;
        if (strcmp(last->role, "assistant") == 0 && u->input_tokens >= 0 && u->output_tokens >= 0)
            t->prev_context_tokens = u->input_tokens + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                                     (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0) + u->output_tokens;
    }
    t->state = TURN_PREPARED;
    return true;
}

/* TURN_PREPARED -> TURN_CALLING: starts the call on the requested model, and
 * the sink's on_start for the next loop turn. False with *err set when the
 * call cannot start (the state is unchanged). */
static bool begin_call(turn *t, turn_error *err)
{
    if (t->state != TURN_PREPARED)
        bad_state(t, "begin_call");
    if (start_call(t) != CHAT_OK) {
        turn_error_set(err, 500, "internal_error", "the provider call could not be started");
        return false;
    }
    t->start_ev = evtimer_new(t->env->base, on_start_ev, t);
    struct timeval now = { 0, 0 };
    evtimer_add(t->start_ev, &now);
    return true;
}

/* The load is complete: prepare and call, or end the turn with the reason it
 * cannot run. The blocks of the history are parsed once here; the request's
 * messages keep references to those they send. */
static void loaded(turn *t, const store_message *hist, size_t nhist)
{
    turn_error err;
    json_t **blocks = nhist > 0 ? chat_xcalloc(nhist, sizeof *blocks) : NULL;
    for (size_t i = 0; i < nhist; i++) {
        if (!hist[i].blocks)
            continue;
        json_error_t jerr;
        blocks[i] = chat_json_loads(hist[i].blocks, 0, &jerr);
        if (!json_is_array(blocks[i])) {
            /* Stored by an older or broken writer: the text stands in. */
            chat_log(LOG_WARN, "stored message blocks unreadable, using its text",
                     json_pack("{s:s,s:I,s:s}", "session", t->session_id, "message_id", (json_int_t)hist[i].id, "error",
                               jerr.text));
            json_decref(blocks[i]);
            blocks[i] = NULL;
        }
    }
    bool ok = prepare(t, hist, (const json_t *const *)blocks, nhist, &err);
    for (size_t i = 0; i < nhist; i++)
        json_decref(blocks[i]);
    free(blocks);
    if (!ok || !begin_call(t, &err))
        end_uncommitted(t, STOP_ERROR, &err);
}

/* ---- the load: ownership, lock, session, history (one store step each) ---- */

static bool foreign(const turn *t, const store_session *s)
{
    return !t->see_all && (!s->owner || !t->owner || strcmp(s->owner, t->owner) != 0);
}

static void submit_lock(turn *t)
{
    store_op *op = store_op_new(STORE_OP_LOCK_ACQUIRE);
    op->in.session_id = store_op_str(op, t->session_id);
    op->in.token = store_op_str(op, t->lock_token);
    op->in.now = chat_now_ms();
    op->in.ttl_ms = t->env->lock_ttl_ms;
    submit_step(t, TURN_LOCKING, op);
}

/* TURN_PRECHECK: ownership first, before touching the lock: a session of
 * another key must look absent (404), and a foreign caller must not hold its
 * lock even briefly (that would make the owner's turns fail with 409). */
static void precheck_done(turn *t, store_op *op)
{
    if (op->rc == CHAT_OK && foreign(t, &op->out.session)) {
        turn_error err;
        turn_error_set(&err, 404, "not_found_error", "session %s not found", t->session_id);
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    submit_lock(t);
}

/* TURN_LOCKING answered; when it succeeded the turn is TURN_LOCKED already. */
static void lock_done(turn *t, store_op *op)
{
    turn_error err;
    if (op->rc == CHAT_EBUSY) {
        turn_error_set(&err, 409, "session_busy",
                       "another turn is in progress on session %s; retry when it has finished", t->session_id);
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    if (op->rc != CHAT_OK) {
        turn_store_error(op->rc, &err);
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    store_op *next = store_op_new(STORE_OP_SESSION_GET);
    next->in.session_id = store_op_str(next, t->session_id);
    submit_step(t, TURN_LOADING_SESSION, next);
}

/* TURN_LOADING_SESSION: the session under the lock (or its absence). */
static void session_done(turn *t, store_op *op)
{
    turn_error err;
    if (op->rc != CHAT_OK && op->rc != CHAT_ENOTFOUND) {
        turn_store_error(op->rc, &err);
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    if (op->rc == CHAT_OK) {
        if (foreign(t, &op->out.session)) {
            /* Checked again under the lock: the session may have been created since. */
            turn_error_set(&err, 404, "not_found_error", "session %s not found", t->session_id);
            end_uncommitted(t, STOP_ERROR, &err);
            return;
        }
        t->sess = op->out.session;
        memset(&op->out.session, 0, sizeof op->out.session);
        /* Only as much history as the model's context window can hold is
         * read (newest first): the rest would be left out anyway, and a
         * turn's cost must not grow with its session (issue 15). */
        const chat_model *m = t->req_model;
        if (!m && t->sess.model)
            m = models_find(t->env->models, t->sess.model);
        if (!m)
            m = models_default(t->env->models);
        store_op *next = store_op_new(STORE_OP_MESSAGES_LIST);
        next->in.session_id = store_op_str(next, t->session_id);
        next->in.tail_tokens = m && m->context_window > 0 ? m->context_window : 0;
        submit_step(t, TURN_LOADING_HISTORY, next);
        return;
    }
    if (t->owner && t->env->max_sessions_per_key > 0) {
        store_op *next = store_op_new(STORE_OP_KEY_SESSION_COUNT);
        next->in.id = store_op_str(next, t->owner);
        submit_step(t, TURN_COUNTING, next);
        return;
    }
    loaded(t, NULL, 0);
}

/* TURN_COUNTING: a new session of a capped key. A soft cap: two first turns
 * of new sessions racing may both pass. */
static void count_done(turn *t, store_op *op)
{
    if (op->rc == CHAT_OK && op->out.count >= t->env->max_sessions_per_key) {
        turn_error err;
        turn_error_set(&err, 403, "session_limit_reached",
                       "this API key already owns %lld sessions (MAX_SESSIONS_PER_KEY); delete some to start new ones",
                       (long long)op->out.count);
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    loaded(t, NULL, 0);
}

/* TURN_LOADING_HISTORY. */
static void history_done(turn *t, store_op *op)
{
    if (op->rc != CHAT_OK && op->rc != CHAT_ENOTFOUND) {
        turn_error err;
        turn_store_error(op->rc, &err);
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    if (op->rc == CHAT_OK && op->out.count > 0) {
        /* Older messages were not read: the turns they hold are left out of
         * the request. One stored turn per user message, so they are the
         * session's turns minus the user messages read. */
        int64_t users = 0;
        for (size_t i = 0; i < op->out.n_messages; i++)
            if (op->out.messages[i].role && strcmp(op->out.messages[i].role, "user") == 0)
                users++;
        int64_t k = t->sess.turn_count - users;
        t->unread_turns = k < 0 ? 0 : k > op->out.count ? op->out.count : k;
    }
    /* Kept by the turn: the request's messages borrow its texts. */
    t->hist = op->out.messages;
    t->nhist = op->out.n_messages;
    op->out.messages = NULL;
    op->out.n_messages = 0;
    loaded(t, t->hist, t->nhist);
}

/*
 * TURN_RENEWING_LOCK / TURN_RENEWING_IDEM: before a fallback restarts the
 * provider call, the turn lock, then the Idempotency-Key lease, are extended
 * for another full turn; then the fallback starts. The lock lost (or the
 * database down) ends the turn with the provider's error.
 */
static void renewal_done(turn *t, store_op *op)
{
    if (op->rc != CHAT_OK) {
        end_uncommitted(t, STOP_ERROR, t->fail);
        return;
    }
    if (t->state == TURN_RENEWING_LOCK && t->idem_key) {
        submit_renewal(t, TURN_RENEWING_IDEM);
        return;
    }
    if (!start_fallback(t))
        end_uncommitted(t, STOP_ERROR, t->fail);
}

/* TURN_COMMITTING: the commit of a finished turn answered. It lands even when
 * the consumer left meanwhile (then nobody is told). */
static void commit_done(turn *t, store_op *op)
{
    if (op->rc != CHAT_OK) {
        turn_error err;
        if (op->rc == CHAT_ECONFLICT)
            turn_error_set(&err, 409, "session_busy", "the turn lock of session %s expired before the reply was stored",
                           t->session_id);
        else if (op->rc == CHAT_EUNAVAIL)
            turn_error_set(&err, 503, "database_unavailable",
                           "the reply could not be stored: the database is busy or unreachable");
        else
            turn_error_set(&err, 500, "internal_error", "the reply could not be stored");
        end_uncommitted(t, STOP_ERROR, &err);
        return;
    }
    const store_turn *st = &op->in.turn;
    finish_done(t, st->assistant_content, strlen(st->assistant_content), st->stop_reason, &op->out.turn);
}

/* Every store operation of a turn completes here: the state says which one it was. */
static void on_store_done(store_op *op, void *ud)
{
    turn *t = ud;
    void (*step)(turn *, store_op *) = NULL;
    switch (t->state) {
    case TURN_PRECHECK: step = precheck_done; break;
    case TURN_LOCKING:
        if (op->rc == CHAT_OK)
            t->state = TURN_LOCKED; /* first: however the turn ends now, the lock must be given back */
        step = lock_done;
        break;
    case TURN_LOADING_SESSION: step = session_done; break;
    case TURN_COUNTING: step = count_done; break;
    case TURN_LOADING_HISTORY: step = history_done; break;
    case TURN_RENEWING_LOCK:
    case TURN_RENEWING_IDEM: step = renewal_done; break;
    case TURN_COMMITTING:
        commit_done(t, op); /* a commit lands even for a consumer that left */
        return;
    case TURN_QUEUED:
    case TURN_LOCKED:
    case TURN_PREPARED:
    case TURN_CALLING:
    case TURN_ENDED: bad_state(t, store_op_name(op->kind));
    }
    if (t->stopped != STOP_NONE) {
        /* The consumer left while this operation was in flight. */
        end_uncommitted(t, t->stopped, NULL);
        return;
    }
    step(t, op);
}

/* TURN_QUEUED: the load starts from the loop, so that no sink call happens inside turn_start. */
static void on_load_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    turn *t = arg;
    if (t->state != TURN_QUEUED)
        bad_state(t, "load event");
    if (t->see_all) {
        submit_lock(t);
        return;
    }
    store_op *op = store_op_new(STORE_OP_SESSION_GET);
    op->in.session_id = store_op_str(op, t->session_id);
    submit_step(t, TURN_PRECHECK, op);
}

/* ---- public ---- */

/* The model p asks for: *out NULL when it names none (the session's or the
 * default is used); false with *err set for an unknown or unusable one. */
static bool requested_model(const turn_engine *e, const turn_params *p, const chat_model **out, turn_error *err)
{
    *out = NULL;
    if (!p->model)
        return true;
    const chat_model *model = models_find(e->env.models, p->model);
    if (!model) {
        turn_error_set(err, 400, "invalid_request_error",
                       "unknown model \"%s\": GET /v1/models lists the models this server offers", p->model);
        return false;
    }
    if (!model->available) {
        turn_error_set(err, 503, "provider_not_configured",
                       "model %s needs a provider API key: set %s and restart chatd", model->name, model->missing);
        return false;
    }
    *out = model;
    return true;
}

/* An ephemeral turn: the caller gave the whole conversation, so nothing is
 * loaded; it is prepared and called at once (TURN_CALLING). It carries no
 * token counts, so its size is estimated. False with *err set otherwise. */
static bool start_ephemeral(turn *t, const turn_params *p, turn_error *err)
{
    store_message *view = chat_xcalloc(p->n_history + 1, sizeof *view);
    const json_t **blocks = chat_xcalloc(p->n_history + 1, sizeof *blocks);
    for (size_t i = 0; i < p->n_history; i++) {
        view[i].role = (char *)p->history[i].role;
        view[i].content = (char *)p->history[i].content;
        view[i].tokens = -1;
        blocks[i] = p->history[i].blocks; /* referenced by t->msgs, not copied */
    }
    bool ok = prepare(t, view, blocks, p->n_history, err) && begin_call(t, err);
    free(blocks);
    free(view);
    return ok;
}

/* The new message's blocks are canonical user content (llm_content_check),
 * but for "document" blocks, which only the Anthropic-shaped API accepts and
 * checks itself (llm/content.h: passed to Anthropic unchanged): they are
 * checked as empty text blocks, so that the messages keep their indexes. */
static bool message_blocks_ok(const json_t *blocks, char *why, size_t whylen)
{
    if (!llm_content_has(blocks, "document"))
        return llm_content_check(blocks, "user", why, whylen) == NULL;
    json_t *view = json_array();
    if (!view)
        chat_fatal("out of memory");
    size_t i;
    const json_t *b;
    json_array_foreach(blocks, i, b)
    {
        if (is_block(b, "document"))
            json_array_append_new(view, json_pack("{s:s,s:s}", "type", "text", "text", ""));
        else
            json_array_append(view, (json_t *)b);
    }
    bool ok = llm_content_check(view, "user", why, whylen) == NULL;
    json_decref(view);
    return ok;
}

turn *turn_start(turn_engine *e, const turn_params *p, const turn_sink *sink, void *ud, turn_error *err)
{
    const chat_model *model;
    if (!requested_model(e, p, &model, err)) {
        if (p->idem_key && p->session_id)
            turn_release_idempotency(e, p->idem_scope, p->idem_key, p->request_id);
        return NULL;
    }
    char why[300];
    if (p->message_blocks && !message_blocks_ok(p->message_blocks, why, sizeof why)) {
        turn_error_set(err, 400, "invalid_request_error", "message %s", why);
        if (p->idem_key && p->session_id)
            turn_release_idempotency(e, p->idem_scope, p->idem_key, p->request_id);
        return NULL;
    }
    turn *t = chat_xcalloc(1, sizeof *t);
    t->e = e;
    t->env = &e->env;
    t->state = TURN_QUEUED;
    t->sink = sink;
    t->ud = ud;
    t->session_id = chat_xstrdup(p->session_id ? p->session_id : "");
    t->ephemeral = p->session_id == NULL;
    if (p->message_blocks) {
        t->user_blocks = json_deep_copy(p->message_blocks);
        if (!t->user_blocks)
            chat_fatal("out of memory");
        t->user_message = llm_content_text(t->user_blocks);
    } else {
        t->user_message = chat_xstrdup(p->message ? p->message : "");
    }
    t->api_dropped = p->dropped && *p->dropped ? chat_xstrdup(p->dropped) : NULL;
    if (p->options) {
        t->options = json_deep_copy(p->options);
        if (!t->options)
            chat_fatal("out of memory");
    }
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
        if (!start_ephemeral(t, p, err)) {
            turn_free(t); /* nothing was taken, no sink call was made */
            return NULL;
        }
    } else {
        /* The load runs from the loop: no sink call inside turn_start. */
        t->load_ev = evtimer_new(e->env.base, on_load_ev, t);
        struct timeval now = { 0, 0 };
        evtimer_add(t->load_ev, &now);
    }
    link_turn(t);
    return t;
}

int64_t turn_estimated_tokens(const turn *t)
{
    int64_t n = context_estimate_tokens(t->system_prompt) + context_estimate_tokens(chat_buf_str(&t->partial));
    for (size_t i = 0; i < t->n_msgs; i++)
        n += t->msgs[i].blocks ? llm_content_tokens(t->msgs[i].blocks) : context_estimate_tokens(t->msgs[i].content);
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
    if (t)
        stop(t, STOP_CLIENT_GONE);
}

void turn_abort_all(turn_engine *e)
{
    turn *t = e->running;
    while (t) {
        turn *next = t->next;
        stop(t, STOP_SHUTDOWN);
        t = next;
    }
}
