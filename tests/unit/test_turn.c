/*
 * test_turn.c: loop-level tests of the turn engine (chat/turn.c), in process.
 *
 * Each test runs turns on one event_base against a real store (SQLite
 * ":memory:") and the scripted provider of llm_script_server.h, through the
 * same transport and models table as the server. The store is reached through
 * turn_env.submit: by default every operation completes on the next loop turn
 * (as with PostgreSQL), and a test may hold one operation (the nth of a kind)
 * until it releases it, to act while the turn waits on it: cancel, shut down.
 * Two tests use the production path instead: store_submit on an attached
 * SQLite handle.
 *
 * Every test checks the sink's calls (on_start before any delta, exactly one
 * end, none after a cancel) and the store's final state: no dangling user
 * message, the turn lock free, the Idempotency-Key record completed or given
 * back.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "chat/models.h"
#include "chat/turn.h"
#include "core/log.h"
#include "core/util.h"
#include "llm/transport.h"
#include "store/store.h"

#include "llm_script_server.h"

#define HASH "0000000000000000000000000000000000000000000000000000000000000000"
#define MAX_OPS 64

/* ------------------------------------------------------------------------ */
/* The fixture                                                                */

typedef struct pend {
    store_op *op;
    store_op_cb cb;
    void *ud;
} pend;

typedef struct fx {
    struct event_base *base;
    srv s;
    char base_url[64];
    char *models_path;
    struct chat_config cfg;
    model_table *models;
    store *db;
    llm_transport *llm;
    turn_engine *e;
    /* the store seam */
    bool inline_store;       /* env.submit NULL: the production store_submit */
    store_op_kind hold_kind; /* hold the hold_nth operation of this kind (0: none) */
    int hold_nth;
    int seen_of_kind;
    store_op_kind fail_kind; /* operations of this kind complete with CHAT_EUNAVAIL, not run (0: none) */
    pend held;               /* the held operation, op NULL when none */
    pend queue[MAX_OPS];     /* completed on the next loop turn */
    int nq;
    struct event *pump;
    store_op_kind kinds[MAX_OPS]; /* every operation submitted, in order */
    int nkinds;
    /* the sink */
    turn *t;          /* the running turn, NULL once it ended */
    char events[256]; /* 'S' on_start, 'D' on_delta, 'd' on_done, 'e' on_error */
    int nev;
    char text[8192];
    size_t len;
    turn_error err;
    char res_model[64];
    char res_text[8192];
    int64_t res_turn_count;
    int64_t res_message_id;
    char info_dropped[128]; /* turn_info.dropped at on_start ("" for NULL) */
    char res_dropped[128];  /* turn_result.dropped */
    char res_content[4096]; /* turn_result.content as compact JSON */
    char res_stop_reason[32];
    char res_stop_sequence[32];
    char evlog[1024]; /* on_event: "<kind letter><index>" per event, e.g. "t0t0x0u1a1a1x1" */
    size_t evlog_len;
    char tool_args[256]; /* the TOOL_ARGS pieces joined */
    bool cancel_in_done; /* break the contract: turn_cancel inside on_done (fatal) */
} fx;

/* ---- the store seam ---- */

static void complete(fx *f, pend p)
{
    if (p.op->kind == f->fail_kind)
        p.op->rc = CHAT_EUNAVAIL; /* the database unreachable */
    else
        store_run(f->db, p.op);
    if (p.cb)
        p.cb(p.op, p.ud);
    store_op_free(p.op);
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fx *f = arg;
    /* Only what was queued before this turn: completions submit the next steps. */
    pend batch[MAX_OPS];
    int n = f->nq;
    memcpy(batch, f->queue, sizeof batch[0] * (size_t)n);
    f->nq = 0;
    for (int i = 0; i < n; i++)
        complete(f, batch[i]);
}

static void fx_submit(void *ctx, store_op *op, store_op_cb cb, void *ud)
{
    fx *f = ctx;
    assert_true(f->nkinds < MAX_OPS);
    f->kinds[f->nkinds++] = op->kind;
    pend p = { op, cb, ud };
    if (op->kind == f->hold_kind && ++f->seen_of_kind == f->hold_nth) {
        assert_null(f->held.op);
        f->held = p;
        return;
    }
    assert_true(f->nq < MAX_OPS);
    f->queue[f->nq++] = p;
    struct timeval now = { 0, 0 };
    evtimer_add(f->pump, &now);
}

/* Completes the held operation now (as its loop would). */
static void fx_release(fx *f)
{
    assert_non_null(f->held.op);
    pend p = f->held;
    f->held.op = NULL;
    complete(f, p);
}

/* ---- the sink ---- */

static void ev(fx *f, char c)
{
    assert_true(f->nev + 1 < (int)sizeof f->events);
    f->events[f->nev++] = c;
    f->events[f->nev] = '\0';
}

static void sink_start(void *ud, const turn_info *info)
{
    fx *f = ud;
    assert_non_null(info->model);
    snprintf(f->info_dropped, sizeof f->info_dropped, "%s", info->dropped ? info->dropped : "");
    ev(f, 'S');
}

static bool sink_delta(void *ud, const char *text, size_t len)
{
    fx *f = ud;
    ev(f, 'D');
    assert_true(f->len + len < sizeof f->text);
    memcpy(f->text + f->len, text, len);
    f->len += len;
    f->text[f->len] = '\0';
    return false;
}

static void sink_done(void *ud, const turn_result *res)
{
    fx *f = ud;
    ev(f, 'd');
    snprintf(f->res_model, sizeof f->res_model, "%s", res->model);
    snprintf(f->res_text, sizeof f->res_text, "%.*s", (int)res->text_len, res->text);
    f->res_turn_count = res->turn_count;
    f->res_message_id = res->message_id;
    snprintf(f->res_dropped, sizeof f->res_dropped, "%s", res->dropped ? res->dropped : "");
    snprintf(f->res_stop_reason, sizeof f->res_stop_reason, "%s", res->stop_reason ? res->stop_reason : "");
    snprintf(f->res_stop_sequence, sizeof f->res_stop_sequence, "%s", res->stop_sequence ? res->stop_sequence : "");
    assert_non_null(res->content);
    char *c = json_dumps(res->content, JSON_COMPACT);
    snprintf(f->res_content, sizeof f->res_content, "%s", c);
    free(c);
    if (f->cancel_in_done)
        turn_cancel(f->t); /* forbidden: the turn is ending */
    f->t = NULL;
}

static void sink_error(void *ud, const turn_error *err)
{
    fx *f = ud;
    ev(f, 'e');
    f->err = *err;
    f->t = NULL;
}

static const turn_sink SINK = {
    .on_start = sink_start, .on_delta = sink_delta, .on_done = sink_done, .on_error = sink_error
};

/* A sink that renders events: each is logged as a letter (t text, h thinking,
 * u tool start, a tool arguments, x block stop) and its index; text goes to
 * f->text as with on_delta. */
static bool sink_event(void *ud, const llm_event *e)
{
    fx *f = ud;
    static const char letters[] = { [LLM_EV_TEXT] = 't',
                                    [LLM_EV_THINKING] = 'h',
                                    [LLM_EV_TOOL_START] = 'u',
                                    [LLM_EV_TOOL_ARGS] = 'a',
                                    [LLM_EV_BLOCK_STOP] = 'x' };
    assert_true(f->evlog_len + 16 < sizeof f->evlog);
    f->evlog_len +=
        (size_t)snprintf(f->evlog + f->evlog_len, sizeof f->evlog - f->evlog_len, "%c%d", letters[e->kind], e->index);
    if (e->kind == LLM_EV_TEXT) {
        ev(f, 'D');
        assert_true(f->len + e->len < sizeof f->text);
        memcpy(f->text + f->len, e->data, e->len);
        f->len += e->len;
        f->text[f->len] = '\0';
    } else if (e->kind == LLM_EV_TOOL_START) {
        assert_string_equal(e->id, "toolu_01");
        assert_string_equal(e->name, "get_weather");
    } else if (e->kind == LLM_EV_TOOL_ARGS) {
        size_t used = strlen(f->tool_args);
        assert_true(used + e->len < sizeof f->tool_args);
        memcpy(f->tool_args + used, e->data, e->len);
        f->tool_args[used + e->len] = '\0';
    }
    return false;
}

static const turn_sink SINK_EVENTS = {
    .on_start = sink_start, .on_delta = sink_delta, .on_done = sink_done, .on_error = sink_error, .on_event = sink_event
};

/* The sink's contract: on_start at most once and before any delta; exactly
 * one end (end 'd' or 'e'), last; or none (end 0: the consumer left). */
static void assert_sequence(const fx *f, char end)
{
    const char *e = f->events;
    size_t n = strlen(e);
    int starts = 0, ends = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i] == 'S') {
            starts++;
            assert_int_equal(i, 0);
        } else if (e[i] == 'D') {
            assert_int_equal(e[0], 'S');
        } else {
            ends++;
        }
    }
    assert_true(starts <= 1);
    if (end) {
        assert_int_equal(ends, 1);
        assert_int_equal(e[n - 1], end);
    } else {
        assert_int_equal(ends, 0);
    }
}

/* ---- set-up ---- */

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/chatd-turn-models-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* "primary" (tools, vision, thinking; no native structured output) falls back
 * to "backup" (plain text only); "big" has room for very long conversations,
 * "tiny" for none; "small" (tools) fits a few short exchanges; "native" has
 * structured output and falls back to "backup". */
static const char MODELS[] =
    "{\"models\":["
    "{\"name\":\"primary\",\"provider\":\"anthropic\",\"model_id\":\"primary-id\",\"context_window\":200000,"
    "\"max_output\":4096,\"price\":{\"input\":1,\"output\":2},\"fallbacks\":[\"backup\"],"
    "\"features\":[\"tools\",\"vision\",\"thinking\"]},"
    "{\"name\":\"backup\",\"provider\":\"anthropic\",\"model_id\":\"backup-id\",\"context_window\":200000,"
    "\"max_output\":4096,\"price\":{\"input\":1,\"output\":2}},"
    "{\"name\":\"big\",\"provider\":\"anthropic\",\"model_id\":\"big-id\",\"context_window\":100000000,"
    "\"max_output\":4096},"
    "{\"name\":\"tiny\",\"provider\":\"anthropic\",\"model_id\":\"tiny-id\",\"context_window\":100,"
    "\"max_output\":10},"
    "{\"name\":\"small\",\"provider\":\"anthropic\",\"model_id\":\"small-id\",\"context_window\":80,"
    "\"max_output\":10,\"features\":[\"tools\"]},"
    "{\"name\":\"native\",\"provider\":\"anthropic\",\"model_id\":\"native-id\",\"context_window\":200000,"
    "\"max_output\":4096,\"features\":[\"tools\",\"structured_output\"],\"fallbacks\":[\"backup\"]}]}";

typedef struct fx_opts {
    bool inline_store;
    bool drop_partial;     /* CANCEL_POLICY=drop */
    bool drop_unsupported; /* DROP_UNSUPPORTED_PARAMS=on */
    int64_t max_sessions_per_key;
} fx_opts;

static void fx_init(fx *f, const script *scripts, int n, fx_opts o)
{
    memset(f, 0, sizeof *f);
    chat_log_set_level(LOG_ERROR);
    f->base = event_base_new();
    srv_start(&f->s, f->base, scripts, n);
    snprintf(f->base_url, sizeof f->base_url, "http://127.0.0.1:%d", f->s.port);
    f->models_path = write_tmp(MODELS);
    struct chat_config *c = &f->cfg;
    c->anthropic_api_key = "sk-test";
    c->anthropic_base_url = f->base_url;
    c->anthropic_version = "2023-06-01";
    c->chat_model = "primary";
    c->openai_api_key = "";
    c->openai_base_url = "https://api.openai.com/v1";
    c->models_file = f->models_path;
    c->prompt_caching = false;
    c->provider_connect_timeout_ms = 2000;
    c->provider_first_byte_timeout_ms = 3000;
    c->provider_idle_timeout_ms = 3000;
    c->turn_timeout_ms = 5000;
    c->retry_max_wait_ms = 1000;
    c->provider_max_retries = 0;
    char err[256] = "";
    assert_int_equal(models_load(c, &f->models, err, sizeof err), CHAT_OK);
    assert_int_equal(store_open("sqlite://:memory:", &f->db, err, sizeof err), CHAT_OK);
    assert_int_equal(store_attach(f->db, f->base, 1, 1000), CHAT_OK);
    f->llm = llm_transport_new(f->base);
    f->pump = evtimer_new(f->base, pump_cb, f);
    f->inline_store = o.inline_store;
    turn_env env = {
        .base = f->base,
        .db = f->db,
        .submit = o.inline_store ? NULL : fx_submit,
        .submit_ctx = f,
        .llm = f->llm,
        .models = f->models,
        .max_tokens = 256,
        .default_system_prompt = "Be brief.",
        .lock_ttl_ms = 60000,
        .max_sessions_per_key = o.max_sessions_per_key,
        .keep_partial = !o.drop_partial,
        .drop_unsupported = o.drop_unsupported,
    };
    f->e = turn_engine_new(&env);
}

static void fx_free(fx *f)
{
    assert_null(f->held.op);
    assert_int_equal(f->nq, 0); /* every clean-up write ran */
    assert_true(turn_engine_idle(f->e));
    turn_engine_free(f->e);
    llm_transport_free(f->llm);
    store_detach(f->db); /* its completion event lives on the base */
    event_free(f->pump);
    srv_stop(&f->s);
    event_base_free(f->base);
    store_close(f->db);
    models_free(f->models);
    unlink(f->models_path);
    free(f->models_path);
}

static turn_params params(const char *session, const char *request_id, const char *message)
{
    return (turn_params){
        .session_id = session,
        .message = message,
        .request_id = request_id,
        .stream = true,
        .see_all = true, /* auth off; the ownership tests say otherwise */
        .truncation = TURN_TRUNCATE_AUTO,
    };
}

static void start(fx *f, const turn_params *p)
{
    turn_error err;
    f->t = turn_start(f->e, p, &SINK, f, &err);
    assert_non_null(f->t);
    assert_int_equal(f->nev, 0); /* never from inside turn_start */
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

/* Runs the loop until cond holds; fails the test after max_ms. */
#define RUN_UNTIL(f, cond, max_ms)                                                    \
    do {                                                                              \
        bool expired_ = false;                                                        \
        struct event *wd_ = evtimer_new((f)->base, watchdog_cb, &expired_);           \
        struct timeval tv_ = { (max_ms) / 1000, ((max_ms) % 1000) * 1000 };           \
        evtimer_add(wd_, &tv_);                                                       \
        while (!(cond) && !expired_)                                                  \
            event_base_loop((f)->base, EVLOOP_ONCE);                                  \
        event_free(wd_);                                                              \
        if (!(cond))                                                                  \
            fail_msg("timed out waiting for %s (events \"%s\")", #cond, (f)->events); \
    } while (0)

/* Runs the loop for ms: lets fire-and-forget writes and the server settle. */
static void run_for(fx *f, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

/* ---- the store's state ---- */

static void assert_lock_free(fx *f, const char *session)
{
    assert_int_equal(store_lock_acquire(f->db, session, "probe", chat_now_ms(), 60000), CHAT_OK);
    assert_int_equal(store_lock_release(f->db, session, "probe"), CHAT_OK);
}

/* The session's messages as "role:status:content|..." ("" for none). */
static char *history(fx *f, const char *session)
{
    store_message *m = NULL;
    size_t n = 0;
    chat_rc rc = store_messages_list(f->db, session, 0, 100, &m, &n);
    assert_true(rc == CHAT_OK || rc == CHAT_ENOTFOUND);
    static char out[4096];
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        used += (size_t)snprintf(out + used, sizeof out - used, "%s%s:%s:%s", i ? "|" : "", m[i].role, m[i].status,
                                 m[i].content);
    store_messages_free(m, n);
    return out;
}

/* The stored token count of message i of session. */
static int64_t message_tokens(fx *f, const char *session, size_t i)
{
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(f->db, session, 0, 100, &m, &n), CHAT_OK);
    assert_true(i < n);
    int64_t k = m[i].tokens;
    store_messages_free(m, n);
    return k;
}

/* Begins an Idempotency-Key record for the turn (as the API does, with the request id as token). */
static void idem_begin(fx *f, const char *key, const char *token, const char *session)
{
    store_idem rec;
    assert_int_equal(store_idem_begin(f->db, "", key, HASH, token, session, chat_now_ms(), 60000, &rec), CHAT_OK);
    assert_int_equal(rec.outcome, STORE_IDEM_NEW);
    store_idem_clear(&rec);
}

/* What a retry with the same key finds now: NEW (the record was given back),
 * REPLAY (completed by the commit) or RUNNING (still leased: a leak). */
static store_idem_outcome idem_probe(fx *f, const char *key, const char *session)
{
    store_idem rec;
    assert_int_equal(store_idem_begin(f->db, "", key, HASH, "probe", session, chat_now_ms(), 60000, &rec), CHAT_OK);
    store_idem_outcome o = rec.outcome;
    store_idem_clear(&rec);
    return o;
}

/* A committed first turn on session (owned by key_1), written directly. */
static void seed_turn(fx *f, const char *session)
{
    int64_t now = chat_now_ms();
    assert_int_equal(store_lock_acquire(f->db, session, "seed", now, 60000), CHAT_OK);
    store_turn st = {
        .session_id = session,
        .owner = "key_1",
        .system_prompt = "Be brief.",
        .model = "primary",
        .user_content = "Earlier question",
        .assistant_content = "Earlier answer",
        .status = "complete",
        .user_tokens = -1,
        .usage = { 5, 3, -1, -1 },
        .lock_token = "seed",
        .now = now,
    };
    store_turn_result res;
    assert_int_equal(store_turn_commit(f->db, &st, &res), CHAT_OK);
}

static int count_kind(const fx *f, store_op_kind k)
{
    int n = 0;
    for (int i = 0; i < f->nkinds; i++)
        n += f->kinds[i] == k;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Scripts                                                                    */

/* Two deltas, then the provider goes silent (the turn stays in TURN_CALLING). */
static const script STREAM_HANG = {
    .status = 200,
    .headers = { SSE_CT },
    .chunks = { EV_START, EV_BLOCK, EV_DELTA("Partial "), EV_DELTA("reply") },
    .chunk_delay_ms = 2,
    .end = END_HANG,
};

static const script OVERLOADED_529 = {
    .status = 529,
    .headers = { JSON_CT },
    .head_delay_ms = 20,
    .body = ERR_BODY("overloaded_error", "Overloaded"),
};

static const script BAD_REQUEST_400 = {
    .status = 400,
    .headers = { JSON_CT },
    .head_delay_ms = 20,
    .body = ERR_BODY("invalid_request_error", "max_tokens: too large"),
};

static const script ERROR_AFTER_DELTA = {
    .status = 200,
    .headers = { SSE_CT },
    .chunks = { EV_START, EV_BLOCK, EV_DELTA("Hi"), EV_ERROR("overloaded_error", "Overloaded") },
    .chunk_delay_ms = 2,
};

/* ------------------------------------------------------------------------ */
/* Tests                                                                      */

/* The production path: store_submit, each step completing on a later loop turn. */
static void test_done_inline_store(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ .inline_store = true });
    turn_params p = params("s1", "req-1", "Hello?");
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    assert_string_equal(f.events, "SDDDDd");
    assert_string_equal(f.text, "Hello, world!");
    assert_string_equal(f.res_text, "Hello, world!");
    assert_string_equal(f.res_model, "primary");
    assert_int_equal(f.res_turn_count, 1);
    assert_true(f.res_message_id > 0);
    assert_string_equal(history(&f, "s1"), "user:complete:Hello?|assistant:complete:Hello, world!");
    /* A first turn has no earlier size to subtract: its message keeps the
     * estimate (6 code points / 4, rounded up), not -1 to recount each turn. */
    assert_int_equal(message_tokens(&f, "s1", 0), 2);
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

/* The load's steps in order, for a new session and for one with history,
 * each completed on a later loop turn; the history reaches the provider. */
static void test_load_steps_and_history(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    turn_params p = params("s1", "req-1", "First");
    p.owner = "key_1";
    p.see_all = false; /* the ownership check comes first */
    start(&f, &p);
    assert_int_equal(turn_get_state(f.t), TURN_QUEUED);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    static const store_op_kind first[] = { STORE_OP_SESSION_GET, STORE_OP_LOCK_ACQUIRE, STORE_OP_SESSION_GET,
                                           STORE_OP_TURN_COMMIT };
    assert_int_equal(f.nkinds, 4);
    assert_memory_equal(f.kinds, first, sizeof first);

    f.nkinds = 0;
    f.nev = 0;
    f.events[0] = '\0';
    f.len = 0;
    p = params("s1", "req-2", "Second");
    p.owner = "key_1";
    p.see_all = false;
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    static const store_op_kind second[] = { STORE_OP_SESSION_GET, STORE_OP_LOCK_ACQUIRE, STORE_OP_SESSION_GET,
                                            STORE_OP_MESSAGES_LIST, STORE_OP_TURN_COMMIT };
    assert_int_equal(f.nkinds, 5);
    assert_memory_equal(f.kinds, second, sizeof second);
    assert_int_equal(f.res_turn_count, 2);
    assert_non_null(strstr(f.s.body, "{\"role\":\"user\",\"content\":\"First\"},{\"role\":\"assistant\","
                                     "\"content\":\"Hello, world!\"},{\"role\":\"user\",\"content\":\"Second\"}"));
    assert_string_equal(history(&f, "s1"), "user:complete:First|assistant:complete:Hello, world!|"
                                           "user:complete:Second|assistant:complete:Hello, world!");
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

/* Holds the nth operation of kind, cancels the turn while it waits, then lets
 * the operation complete: nothing reaches the sink or the provider, nothing
 * is committed, the lock and the idempotency record are given back. */
static void gone_while_waiting(store_op_kind kind, int nth, turn_state waiting, bool seeded, bool owner)
{
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ .max_sessions_per_key = owner ? 10 : 0 });
    if (seeded)
        seed_turn(&f, "s1");
    const char *before = seeded ? "user:complete:Earlier question|assistant:complete:Earlier answer" : "";
    f.hold_kind = kind;
    f.hold_nth = nth;
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    p.see_all = !owner;
    p.owner = owner ? "key_1" : NULL;
    start(&f, &p);
    RUN_UNTIL(&f, f.held.op != NULL, 3000);
    assert_int_equal(turn_get_state(f.t), waiting);
    turn_cancel(f.t);
    assert_true(turn_engine_idle(f.e)); /* unlinked at once; the operation ends it */
    fx_release(&f);
    run_for(&f, 30);
    assert_sequence(&f, 0);
    assert_string_equal(f.events, "");
    assert_int_equal(f.s.nreq, 0);
    assert_string_equal(history(&f, "s1"), before);
    assert_lock_free(&f, "s1");
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_NEW);
    fx_free(&f);
}

static void test_gone_during_load(void **state)
{
    (void)state;
    /* The ownership check before the lock. */
    gone_while_waiting(STORE_OP_SESSION_GET, 1, TURN_PRECHECK, true, true);
    /* The session, under the lock. */
    gone_while_waiting(STORE_OP_SESSION_GET, 2, TURN_LOADING_SESSION, true, true);
    /* The history. */
    gone_while_waiting(STORE_OP_MESSAGES_LIST, 1, TURN_LOADING_HISTORY, true, false);
    /* A capped key's session count, for a new session. */
    gone_while_waiting(STORE_OP_KEY_SESSION_COUNT, 1, TURN_COUNTING, false, true);
}

static void test_gone_during_lock(void **state)
{
    (void)state;
    /* The lock is taken after the consumer left: the completion gives it back. */
    gone_while_waiting(STORE_OP_LOCK_ACQUIRE, 1, TURN_LOCKING, false, false);
    gone_while_waiting(STORE_OP_LOCK_ACQUIRE, 1, TURN_LOCKING, true, true);
}

/* Cancelled mid-stream: the partial reply is kept as "incomplete" (keep) or
 * dropped; the Idempotency-Key record is given back either way (the client
 * never got a result to replay). */
static void gone_during_call(bool drop)
{
    fx f;
    fx_init(&f, &STREAM_HANG, 1, (fx_opts){ .drop_partial = drop });
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Tell me");
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.len == strlen("Partial reply"), 3000);
    assert_int_equal(turn_get_state(f.t), TURN_CALLING);
    turn_cancel(f.t);
    f.t = NULL;
    assert_true(turn_engine_idle(f.e));
    RUN_UNTIL(&f, f.s.closes == 1, 3000); /* the provider transfer was aborted */
    run_for(&f, 20);
    assert_sequence(&f, 0);
    assert_string_equal(f.events, "SDD");
    assert_string_equal(history(&f, "s1"), drop ? "" : "user:complete:Tell me|assistant:incomplete:Partial reply");
    assert_lock_free(&f, "s1");
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_NEW);
    fx_free(&f);
}

static void test_gone_during_call_keep(void **state)
{
    (void)state;
    gone_during_call(false);
}

static void test_gone_during_call_drop(void **state)
{
    (void)state;
    gone_during_call(true);
}

/* The commit in flight lands; the consumer that left hears nothing. */
static void test_gone_during_commit(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    f.hold_kind = STORE_OP_TURN_COMMIT;
    f.hold_nth = 1;
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.held.op != NULL, 3000);
    assert_int_equal(turn_get_state(f.t), TURN_COMMITTING);
    turn_cancel(f.t);
    f.t = NULL;
    assert_true(turn_engine_idle(f.e));
    fx_release(&f);
    run_for(&f, 20);
    assert_sequence(&f, 0);
    assert_string_equal(f.events, "SDDDD");
    assert_string_equal(history(&f, "s1"), "user:complete:Hello?|assistant:complete:Hello, world!");
    assert_lock_free(&f, "s1");
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_REPLAY); /* completed with the commit */
    fx_free(&f);
}

/* The first model is overloaded before any delta: the lock and the
 * Idempotency-Key lease are renewed, then the fallback answers. */
static void test_fallback_after_renewal(void **state)
{
    (void)state;
    static const script sc[] = { OVERLOADED_529, STREAM_OK };
    fx f;
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    assert_string_equal(f.events, "SDDDDd");
    assert_string_equal(f.res_model, "backup");
    assert_int_equal(f.s.nreq, 2);
    assert_non_null(strstr(f.s.body, "\"model\":\"backup-id\""));
    static const store_op_kind kinds[] = { STORE_OP_LOCK_ACQUIRE, STORE_OP_SESSION_GET, STORE_OP_LOCK_REFRESH,
                                           STORE_OP_IDEM_REFRESH, STORE_OP_TURN_COMMIT };
    assert_int_equal(f.nkinds, 5);
    assert_memory_equal(f.kinds, kinds, sizeof kinds);
    store_session sess;
    assert_int_equal(store_session_get(f.db, "s1", &sess), CHAT_OK);
    assert_string_equal(sess.model, "primary"); /* a fallback answers this turn only */
    store_session_clear(&sess);
    assert_string_equal(history(&f, "s1"), "user:complete:Hello?|assistant:complete:Hello, world!");
    assert_lock_free(&f, "s1");
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_REPLAY);
    fx_free(&f);
}

/* The consumer leaves while the lease is renewed: no fallback call, nothing kept. */
static void test_gone_during_renewal(void **state)
{
    (void)state;
    static const script sc[] = { OVERLOADED_529, STREAM_OK };
    fx f;
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    f.hold_kind = STORE_OP_LOCK_REFRESH;
    f.hold_nth = 1;
    turn_params p = params("s1", "req-1", "Hello?");
    start(&f, &p);
    RUN_UNTIL(&f, f.held.op != NULL, 3000);
    assert_int_equal(turn_get_state(f.t), TURN_RENEWING_LOCK);
    turn_cancel(f.t);
    f.t = NULL;
    fx_release(&f);
    run_for(&f, 30);
    assert_sequence(&f, 0);
    assert_int_equal(f.s.nreq, 1);
    assert_string_equal(history(&f, "s1"), "");
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

/* Shutdown while the load waits on the store: answered 503 at once, the
 * operation's completion gives back the lock and the record. */
static void test_shutdown_during_load(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    seed_turn(&f, "s1");
    f.hold_kind = STORE_OP_MESSAGES_LIST;
    f.hold_nth = 1;
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    p.see_all = true;
    start(&f, &p);
    RUN_UNTIL(&f, f.held.op != NULL, 3000);
    turn_abort_all(f.e);
    assert_string_equal(f.events, "e");
    assert_int_equal(f.err.status, 503);
    assert_string_equal(f.err.type, "server_shutting_down");
    assert_int_equal(f.err.retry_after_s, 1);
    assert_true(turn_engine_idle(f.e));
    fx_release(&f);
    run_for(&f, 20);
    assert_sequence(&f, 'e');
    assert_int_equal(f.s.nreq, 0);
    assert_string_equal(history(&f, "s1"), "user:complete:Earlier question|assistant:complete:Earlier answer");
    assert_lock_free(&f, "s1");
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_NEW);
    fx_free(&f);
}

/* Shutdown mid-stream: answered 503, the partial reply kept as incomplete. */
static void test_shutdown_during_call(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_HANG, 1, (fx_opts){ 0 });
    turn_params p = params("s1", "req-1", "Tell me");
    start(&f, &p);
    RUN_UNTIL(&f, f.len == strlen("Partial reply"), 3000);
    turn_abort_all(f.e);
    assert_sequence(&f, 'e');
    assert_string_equal(f.events, "SDDe");
    assert_int_equal(f.err.status, 503);
    assert_non_null(strstr(f.err.message, "kept as incomplete"));
    run_for(&f, 20);
    assert_string_equal(history(&f, "s1"), "user:complete:Tell me|assistant:incomplete:Partial reply");
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

/* Shutdown while the commit is in flight: the turn is left alone, and answers. */
static void test_shutdown_during_commit(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    f.hold_kind = STORE_OP_TURN_COMMIT;
    f.hold_nth = 1;
    turn_params p = params("s1", "req-1", "Hello?");
    start(&f, &p);
    RUN_UNTIL(&f, f.held.op != NULL, 3000);
    turn_abort_all(f.e);
    assert_false(turn_engine_idle(f.e)); /* the drain waits for it */
    assert_string_equal(f.events, "SDDDD");
    fx_release(&f);
    assert_sequence(&f, 'd');
    assert_true(turn_engine_idle(f.e));
    assert_string_equal(history(&f, "s1"), "user:complete:Hello?|assistant:complete:Hello, world!");
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

/* A provider error before the first delta (not retryable, no fallback for
 * a 400): on_error after on_start, nothing stored, everything given back. */
static void test_error_before_delta(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &BAD_REQUEST_400, 1, (fx_opts){ 0 });
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_sequence(&f, 'e');
    assert_string_equal(f.events, "Se");
    assert_int_equal(f.err.status, 400);
    assert_string_equal(f.err.type, "invalid_request_error");
    assert_int_equal(f.err.attempts, 1);
    assert_int_equal(f.s.nreq, 1);
    store_session sess;
    assert_int_equal(store_session_get(f.db, "s1", &sess), CHAT_ENOTFOUND); /* no session, no dangling message */
    assert_lock_free(&f, "s1");
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_NEW);
    fx_free(&f);
}

/* A provider error after a delta: no fallback (text reached the client), the
 * partial reply is not kept (a failed turn commits nothing). */
static void test_error_after_delta(void **state)
{
    (void)state;
    static const script sc[] = { ERROR_AFTER_DELTA, STREAM_OK };
    fx f;
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    seed_turn(&f, "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.see_all = true;
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_sequence(&f, 'e');
    assert_string_equal(f.events, "SDe");
    assert_int_equal(f.err.status, 503);
    assert_string_equal(f.err.type, "provider_overloaded");
    assert_int_equal(f.s.nreq, 1);
    assert_int_equal(count_kind(&f, STORE_OP_LOCK_REFRESH), 0);
    assert_string_equal(history(&f, "s1"), "user:complete:Earlier question|assistant:complete:Earlier answer");
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

/* The Idempotency-Key record: completed by a successful turn's commit (a
 * retry replays the reply), given back by a refused one (a retry runs). */
static void test_idempotency_complete_and_release(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    store_idem rec;
    assert_int_equal(store_idem_begin(f.db, "", "k1", HASH, "probe", "s1", chat_now_ms(), 60000, &rec), CHAT_OK);
    assert_int_equal(rec.outcome, STORE_IDEM_REPLAY);
    assert_true(rec.has_reply);
    assert_string_equal(rec.reply.content, "Hello, world!");
    assert_int_equal(rec.turn_count, 1);
    store_idem_clear(&rec);

    /* The session is now busy under another token: the next turn is refused (409). */
    assert_int_equal(store_lock_acquire(f.db, "s1", "other", chat_now_ms(), 60000), CHAT_OK);
    f.nev = 0;
    f.events[0] = '\0';
    idem_begin(&f, "k2", "req-2", "s1");
    p = params("s1", "req-2", "Again");
    p.idem_scope = "";
    p.idem_key = "k2";
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_sequence(&f, 'e');
    assert_string_equal(f.events, "e");
    assert_int_equal(f.err.status, 409);
    assert_string_equal(f.err.type, "session_busy");
    assert_int_equal(idem_probe(&f, "k2", "s1"), STORE_IDEM_NEW);
    assert_int_equal(store_lock_release(f.db, "s1", "other"), CHAT_OK);
    assert_string_equal(history(&f, "s1"), "user:complete:Hello?|assistant:complete:Hello, world!");
    fx_free(&f);
}

/* Refusals during the load and the preparation: nothing reaches the
 * provider, the lock (when taken) and the record are given back. */
static void test_refused_before_the_call(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ .max_sessions_per_key = 1 });
    store_key_new key = { .id = "key_1", .name = "one", .hash = HASH, .role = "user", .now = chat_now_ms() };
    assert_int_equal(store_key_create(f.db, &key), CHAT_OK);
    seed_turn(&f, "s1"); /* key_1's one session */

    /* Another key's session looks absent, and its lock is never touched. */
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.owner = "key_2";
    p.see_all = false;
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_string_equal(f.events, "e");
    assert_int_equal(f.err.status, 404);
    assert_int_equal(f.nkinds, 2);
    assert_int_equal(f.kinds[0], STORE_OP_SESSION_GET);
    assert_int_equal(f.kinds[1], STORE_OP_IDEM_ABORT);
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_NEW);

    /* A capped key starting one session too many. */
    f.nev = 0;
    f.events[0] = '\0';
    f.nkinds = 0;
    p = params("s2", "req-2", "Hello?");
    p.owner = "key_1";
    p.see_all = false;
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_string_equal(f.events, "e");
    assert_int_equal(f.err.status, 403);
    assert_string_equal(f.err.type, "session_limit_reached");
    assert_int_equal(count_kind(&f, STORE_OP_KEY_SESSION_COUNT), 1);
    assert_lock_free(&f, "s2");

    /* A message that cannot fit the model's context window (prepare fails). */
    f.nev = 0;
    f.events[0] = '\0';
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = '\0';
    p = params("s1", "req-3", big);
    p.model = "tiny";
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_string_equal(f.events, "e");
    assert_int_equal(f.err.status, 400);
    assert_string_equal(f.err.type, "context_length_exceeded");
    assert_lock_free(&f, "s1");

    assert_int_equal(f.s.nreq, 0);
    assert_string_equal(history(&f, "s1"), "user:complete:Earlier question|assistant:complete:Earlier answer");
    assert_string_equal(history(&f, "s2"), "");
    fx_free(&f);
}

/* The database failing a step: during the load (503, nothing called), the
 * lease renewal before a fallback (the provider's error, no second call), the
 * commit (503, nothing stored). The lock is given back each time. */
static void store_fails(store_op_kind kind, const script *sc, int nsc, const char *events, int status, const char *type,
                        int nreq)
{
    fx f;
    fx_init(&f, sc, nsc, (fx_opts){ 0 });
    seed_turn(&f, "s1");
    f.fail_kind = kind;
    turn_params p = params("s1", "req-1", "Hello?");
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    run_for(&f, 20);
    assert_sequence(&f, events[strlen(events) - 1]);
    assert_string_equal(f.events, events);
    assert_int_equal(f.err.status, status);
    assert_string_equal(f.err.type, type);
    assert_int_equal(f.s.nreq, nreq);
    assert_string_equal(history(&f, "s1"), "user:complete:Earlier question|assistant:complete:Earlier answer");
    assert_lock_free(&f, "s1");
    fx_free(&f);
}

static void test_store_errors(void **state)
{
    (void)state;
    static const script fallback[] = { OVERLOADED_529, STREAM_OK };
    store_fails(STORE_OP_MESSAGES_LIST, &STREAM_OK, 1, "e", 503, "database_unavailable", 0);
    store_fails(STORE_OP_LOCK_REFRESH, fallback, 2, "Se", 503, "provider_overloaded", 1);
    store_fails(STORE_OP_TURN_COMMIT, &STREAM_OK, 1, "SDDDDe", 503, "database_unavailable", 1);
}

/* An ephemeral turn falls back at once (no lease to renew) and touches no store. */
static void test_ephemeral_fallback(void **state)
{
    (void)state;
    static const script sc[] = { OVERLOADED_529, STREAM_OK };
    fx f;
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    turn_params p = params(NULL, "req-1", "Hello?");
    p.model = "primary";
    start(&f, &p);
    assert_int_equal(turn_get_state(f.t), TURN_CALLING); /* prepared and called inside turn_start */
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    assert_string_equal(f.events, "SDDDDd");
    assert_string_equal(f.res_model, "backup");
    assert_int_equal(f.s.nreq, 2);
    assert_int_equal(f.nkinds, 0);
    fx_free(&f);
}

/* The commit is refused (the lock was taken over meanwhile): on_error 409,
 * nothing stored, the Idempotency-Key record given back. */
static void test_commit_refused(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    f.hold_kind = STORE_OP_TURN_COMMIT;
    f.hold_nth = 1;
    idem_begin(&f, "k1", "req-1", "s1");
    turn_params p = params("s1", "req-1", "Hello?");
    p.idem_scope = "";
    p.idem_key = "k1";
    start(&f, &p);
    RUN_UNTIL(&f, f.held.op != NULL, 3000);
    assert_int_equal(store_lock_release(f.db, "s1", "req-1"), CHAT_OK);
    assert_int_equal(store_lock_acquire(f.db, "s1", "thief", chat_now_ms(), 60000), CHAT_OK);
    fx_release(&f);
    run_for(&f, 20);
    assert_sequence(&f, 'e');
    assert_string_equal(f.events, "SDDDDe");
    assert_int_equal(f.err.status, 409);
    assert_string_equal(f.err.type, "session_busy");
    assert_string_equal(history(&f, "s1"), "");
    assert_int_equal(store_lock_acquire(f.db, "s1", "probe", chat_now_ms(), 60000), CHAT_EBUSY); /* the thief's */
    assert_int_equal(store_lock_release(f.db, "s1", "thief"), CHAT_OK);
    assert_int_equal(idem_probe(&f, "k1", "s1"), STORE_IDEM_NEW);
    fx_free(&f);
}

/* Same-role neighbours are merged (empty replies skipped) on the wire; a
 * conversation of many thousands of same-role messages does not stall the
 * loop (the merge itself: test_context.c). */
static void test_merge_same_role(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ .inline_store = true });
    static const llm_message small[] = { { "assistant", "dropped: not after a user message", NULL, 0, false },
                                         { "user", "a", NULL, 0, false },
                                         { "assistant", "", NULL, 0, false },
                                         { "user", "b", NULL, 0, false } };
    turn_params p = params(NULL, "req-1", "c");
    p.history = small;
    p.n_history = 4;
    start(&f, &p);
    RUN_UNTIL(&f, f.t == NULL, 3000);
    assert_sequence(&f, 'd');
    assert_non_null(strstr(f.s.body, "\"messages\":[{\"role\":\"user\",\"content\":\"a\\n\\nb\\n\\nc\"}]"));

    enum { N = 100000 };
    llm_message *many = calloc(N, sizeof *many);
    for (size_t i = 0; i < N; i++)
        many[i] = (llm_message){ "user", "hello world", NULL, 0, false };
    f.nev = 0;
    f.events[0] = '\0';
    p = params(NULL, "req-2", "last");
    p.history = many;
    p.n_history = N;
    p.model = "big";
    int64_t t0 = chat_mono_ms();
    start(&f, &p); /* an ephemeral turn is prepared inside turn_start */
    int64_t took = chat_mono_ms() - t0;
    assert_true(took < 2000); /* quadratic copying takes minutes here */
    assert_true(turn_estimated_tokens(f.t) >= (int64_t)N * 3);
    turn_cancel(f.t); /* before on_start: no sink call */
    f.t = NULL;
    free(many);
    run_for(&f, 20);
    assert_string_equal(f.events, ""); /* cancelled before on_start was due */
    fx_free(&f);
}

/* ---- rich content: options, tool calls, images, events ---- */

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (!v)
        fail_msg("bad test JSON: %s: %s", e.text, text);
    return v;
}

/* The last provider request body, parsed. */
static json_t *sent(fx *f)
{
    assert_non_null(f->s.body);
    return J(f->s.body);
}

/* The stored blocks of message i of session ("" for NULL). */
static char *stored_blocks(fx *f, const char *session, size_t i)
{
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(f->db, session, 0, 100, &m, &n), CHAT_OK);
    assert_true(i < n);
    static char out[4096];
    snprintf(out, sizeof out, "%s", m[i].blocks ? m[i].blocks : "");
    store_messages_free(m, n);
    return out;
}

/* Runs one turn to its end with the given sink. */
static void run_turn(fx *f, const turn_params *p, const turn_sink *sink)
{
    turn_error err;
    f->nev = 0;
    f->events[0] = '\0';
    f->len = 0;
    f->text[0] = '\0';
    f->t = turn_start(f->e, p, sink, f, &err);
    if (!f->t) {
        f->err = err;
        ev(f, 'E'); /* refused inside turn_start */
        return;
    }
    RUN_UNTIL(f, f->t == NULL, 3000);
    run_for(f, 10); /* the fire-and-forget writes (lock release) */
}

/* Options reach the provider as its wire format says; no-ops are left out. */
static void test_options_reach_provider(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    json_t *o = J("{\"temperature\":0.5,\"top_k\":7,\"stop\":[\"END\"],\"n\":1,\"presence_penalty\":0,"
                  "\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}],"
                  "\"tool_choice\":{\"type\":\"auto\"}}");
    turn_params p = params("s1", "req-1", "Hello?");
    p.options = o;
    run_turn(&f, &p, &SINK);
    json_decref(o); /* the turn copied them */
    assert_sequence(&f, 'd');
    json_t *b = sent(&f);
    assert_true(json_number_value(json_object_get(b, "temperature")) == 0.5);
    assert_int_equal(json_integer_value(json_object_get(b, "top_k")), 7);
    assert_string_equal(json_string_value(json_array_get(json_object_get(b, "stop_sequences"), 0)), "END");
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(b, "tools"), 0), "name")),
                        "get_weather");
    assert_null(json_object_get(b, "n"));
    assert_null(json_object_get(b, "presence_penalty"));
    json_decref(b);
    assert_string_equal(f.res_dropped, "");
    assert_string_equal(f.res_content, "[{\"type\":\"text\",\"text\":\"Hello, world!\"}]");
    assert_string_equal(stored_blocks(&f, "s1", 0), ""); /* plain text stays plain */
    assert_string_equal(stored_blocks(&f, "s1", 1), "");
    fx_free(&f);
}

/* An option the model refuses: 400 before any call, nothing stored; with
 * DROP_UNSUPPORTED_PARAMS it is left out and named. */
static void test_unsupported_option(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    json_t *o = J("{\"temperature\":1.5}");
    turn_params p = params("s1", "req-1", "Hello?");
    p.options = o;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_int_equal(f.err.status, 400);
    assert_string_equal(f.err.type, "unsupported_parameter");
    assert_string_equal(f.err.message, "temperature: 1.5 is above 1, the most model primary accepts");
    json_decref(o);
    o = J("{\"seed\":42,\"temperature\":0.2}");
    p = params(NULL, "req-2", "Hello?"); /* ephemeral: refused inside turn_start */
    p.options = o;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.events, "E");
    assert_string_equal(f.err.type, "unsupported_parameter");
    assert_non_null(strstr(f.err.message, "seed: model primary"));
    assert_int_equal(f.s.nreq, 0); /* the provider was never called */
    assert_string_equal(history(&f, "s1"), "");
    assert_lock_free(&f, "s1");
    fx_free(&f);

    fx_init(&f, &STREAM_OK, 1, (fx_opts){ .drop_unsupported = true });
    p = params("s1", "req-3", "Hello?");
    p.options = o;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_string_equal(f.info_dropped, "seed");
    assert_string_equal(f.res_dropped, "seed");
    json_t *b = sent(&f);
    assert_null(json_object_get(b, "seed"));
    assert_non_null(json_object_get(b, "temperature"));
    json_decref(b);
    json_decref(o);
    /* several refused: all named, in the table's order */
    o = J("{\"logit_bias\":{\"1\":2},\"seed\":1,\"temperature\":9}");
    p = params("s2", "req-4", "Hello?");
    p.options = o;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_string_equal(f.res_dropped, "temperature,seed,logit_bias");
    json_decref(o);
    fx_free(&f);
}

/* A reply that calls a tool is committed with its blocks; the session then
 * wants exactly that call's result, and the results turn carries both to the
 * provider. */
static void test_tool_call_then_results(void **state)
{
    (void)state;
    static const script sc[] = { STREAM_TOOL_CALL, STREAM_OK };
    fx f;
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    json_t *tools = J("{\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}]}");
    turn_params p = params("s1", "req-1", "Weather in Paris?");
    p.options = tools;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_string_equal(f.res_stop_reason, "tool_use");
    assert_string_equal(f.res_text, "Let me check.");
    assert_string_equal(f.res_content, "[{\"type\":\"text\",\"text\":\"Let me check.\"},{\"type\":\"tool_use\",\"id\":"
                                       "\"toolu_01\",\"name\":\"get_weather\",\"input\":{\"city\":\"Paris\"}}]");
    json_t *stored = J(stored_blocks(&f, "s1", 1));
    json_t *want = J(f.res_content);
    assert_true(json_equal(stored, want));
    json_decref(stored);
    json_decref(want);
    assert_string_equal(stored_blocks(&f, "s1", 0), "");

    /* Plain text does not answer the call. */
    p = params("s1", "req-2", "never mind");
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_int_equal(f.err.status, 400);
    assert_string_equal(f.err.type, "tool_results_required");
    assert_non_null(strstr(f.err.message, "toolu_01"));
    /* Nor does a result for another call. */
    json_t *wrong = J("[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_99\",\"content\":\"15 C\"}]");
    p = params("s1", "req-3", NULL);
    p.message_blocks = wrong;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_string_equal(f.err.type, "tool_results_required");
    /* Nor text before the result. */
    json_t *late = J("[{\"type\":\"text\",\"text\":\"here\"},{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\"}]");
    p.message_blocks = late;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.err.type, "tool_results_required");
    assert_int_equal(f.s.nreq, 1);
    assert_lock_free(&f, "s1");

    json_t *answer = J("[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\",\"content\":\"15 C, sunny\"},"
                       "{\"type\":\"text\",\"text\":\"Be short.\"}]");
    p = params("s1", "req-4", NULL);
    p.message_blocks = answer;
    p.options = tools;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_string_equal(f.res_text, "Hello, world!");
    json_t *b = sent(&f);
    json_t *msgs = json_object_get(b, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    json_t *call = json_array_get(json_object_get(json_array_get(msgs, 1), "content"), 1);
    assert_string_equal(json_string_value(json_object_get(call, "type")), "tool_use");
    assert_string_equal(json_string_value(json_object_get(call, "id")), "toolu_01");
    json_t *res = json_array_get(json_object_get(json_array_get(msgs, 2), "content"), 0);
    assert_string_equal(json_string_value(json_object_get(res, "type")), "tool_result");
    assert_string_equal(json_string_value(json_object_get(res, "tool_use_id")), "toolu_01");
    json_decref(b);
    /* the results message is stored with its blocks, its text beside them */
    assert_string_equal(history(&f, "s1"), "user:complete:Weather in Paris?|assistant:complete:Let me check.|"
                                           "user:complete:Be short.|assistant:complete:Hello, world!");
    stored = J(stored_blocks(&f, "s1", 2));
    assert_true(json_equal(stored, answer));
    json_decref(stored);
    /* a result when no call is pending */
    p = params("s1", "req-5", NULL);
    p.message_blocks = answer;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.err.type, "unexpected_tool_results");
    json_decref(answer);
    json_decref(wrong);
    json_decref(late);
    json_decref(tools);
    fx_free(&f);
}

/* The pairing rule without the store: a new session and ephemeral histories. */
static void test_pairing_without_history(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    json_t *result = J("[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\",\"content\":\"42\"}]");
    json_t *call = J("[{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"f\",\"input\":{}}]");
    turn_params p = params("fresh", "req-1", NULL);
    p.message_blocks = result;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_int_equal(f.err.status, 400);
    assert_string_equal(f.err.type, "unexpected_tool_results");
    assert_string_equal(history(&f, "fresh"), "");

    /* ephemeral: a call answered by text inside the history */
    llm_message h[3] = { { "user", "q", NULL, 0, false },
                         { "assistant", "", call, 0, false },
                         { "user", "no", NULL, 0, false } };
    p = params(NULL, "req-2", "next");
    p.history = h;
    p.n_history = 3;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.events, "E");
    assert_string_equal(f.err.type, "tool_results_required");
    assert_non_null(strstr(f.err.message, "history message 2"));
    /* ephemeral: the new message must answer the last call */
    p.n_history = 2;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.err.type, "tool_results_required");
    assert_non_null(strstr(f.err.message, "the new message"));
    p.message_blocks = result;
    p.message = NULL;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_int_equal(f.s.nreq, 1);
    /* malformed blocks are refused by turn_start */
    json_t *bad = J("[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\","
                    "\"data\":\"!!\"}}]");
    p = params(NULL, "req-3", NULL);
    p.message_blocks = bad;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.events, "E");
    assert_string_equal(f.err.type, "invalid_request_error");
    assert_non_null(strstr(f.err.message, "content[0].source.data: not valid base64"));
    json_decref(bad);
    /* a document block (the Anthropic-shaped API's, checked there) is passed on; the others keep their indexes */
    bad = J("[{\"type\":\"document\",\"source\":{\"type\":\"text\",\"media_type\":\"text/plain\","
            "\"data\":\"The sky is blue.\"}},{\"type\":\"text\"}]");
    p.message_blocks = bad;
    run_turn(&f, &p, &SINK);
    assert_string_equal(f.events, "E");
    assert_non_null(strstr(f.err.message, "content[1].text: required"));
    json_decref(bad);
    json_t *doc = J("[{\"type\":\"document\",\"source\":{\"type\":\"text\",\"media_type\":\"text/plain\","
                    "\"data\":\"The sky is blue.\"}},{\"type\":\"text\",\"text\":\"What colour?\"}]");
    p = params(NULL, "req-4", NULL);
    p.message_blocks = doc;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_non_null(strstr(f.s.body, "\"document\""));
    json_decref(doc);
    json_decref(result);
    json_decref(call);
    fx_free(&f);
}

/* Images need "vision": refused on backup (no features), whole, never dropped. */
static void test_image_needs_vision(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ .drop_unsupported = true });
    json_t *img = J("[{\"type\":\"text\",\"text\":\"What is this?\"},{\"type\":\"image\",\"source\":{\"type\":"
                    "\"base64\",\"media_type\":\"image/png\",\"data\":\"QUJD\"}}]");
    turn_params p = params("s1", "req-1", NULL);
    p.message_blocks = img;
    p.model = "backup";
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_int_equal(f.err.status, 400);
    assert_string_equal(f.err.type, "unsupported_parameter");
    assert_string_equal(f.err.message, "messages[0].content[1]: model backup does not accept images");
    assert_int_equal(f.s.nreq, 0);
    /* primary reads it; the image reaches the provider and the store */
    p.model = "primary";
    p.request_id = "req-2";
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    json_t *b = sent(&f);
    json_t *c = json_object_get(json_array_get(json_object_get(b, "messages"), 0), "content");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(c, 1), "source"), "data")),
                        "QUJD");
    json_decref(b);
    assert_string_equal(history(&f, "s1"), "user:complete:What is this?|assistant:complete:Hello, world!");
    json_t *stored = J(stored_blocks(&f, "s1", 0));
    assert_true(json_equal(stored, img));
    json_decref(stored);
    fx_free(&f);

    /* a fallback that cannot read the image is skipped, drop mode or not */
    static const script sc[] = { OVERLOADED_529, STREAM_OK };
    fx_init(&f, sc, 2, (fx_opts){ .drop_unsupported = true });
    p = params(NULL, "req-3", NULL);
    p.message_blocks = img;
    p.model = "primary";
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_int_equal(f.err.status, 503);
    assert_int_equal(f.s.nreq, 1);
    json_decref(img);
    fx_free(&f);
}

/* A reply cancelled in the middle of a tool call is kept as its text only
 * (CANCEL_POLICY=keep): no call is left pending, the next turn is free. */
static void test_cancel_during_tool_call(void **state)
{
    (void)state;
    static const script sc[] = {
        {
            .status = 200,
            .headers = { SSE_CT },
            .chunks = { EV_START, EV_BLOCK, EV_DELTA("Let me "), EV_DELTA("check."), EV_BSTOP,
                        EV_TOOL_START(1, "toolu_01", "get_weather"), EV_TOOL_ARGS(1, "{\\\"city\\\":") },
            .chunk_delay_ms = 2,
            .end = END_HANG,
        },
        STREAM_OK,
    };
    fx f;
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    json_t *tools = J("{\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}]}");
    turn_params p = params("s1", "req-1", "Weather?");
    p.options = tools;
    turn_error err;
    f.t = turn_start(f.e, &p, &SINK_EVENTS, &f, &err);
    assert_non_null(f.t);
    RUN_UNTIL(&f, strstr(f.evlog, "a1") != NULL, 3000);
    turn_cancel(f.t);
    f.t = NULL;
    run_for(&f, 30);
    assert_string_equal(history(&f, "s1"), "user:complete:Weather?|assistant:incomplete:Let me check.");
    assert_string_equal(stored_blocks(&f, "s1", 1), "");
    assert_lock_free(&f, "s1");
    p = params("s1", "req-2", "Never mind.");
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    json_decref(tools);
    fx_free(&f);
}

/* The stop sequence that ended a reply reaches the result. */
static void test_stop_sequence(void **state)
{
    (void)state;
    static const script stop_seq = {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START, EV_BLOCK, EV_DELTA("one, two"), EV_BSTOP,
                    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
                    "\"stop_sequence\",\"stop_sequence\":\"three\"},\"usage\":{\"output_tokens\":4}}\n\n",
                    EV_STOP },
        .chunk_delay_ms = 2,
    };
    fx f;
    fx_init(&f, &stop_seq, 1, (fx_opts){ 0 });
    json_t *o = J("{\"stop\":[\"three\"]}");
    turn_params p = params(NULL, "req-1", "Count");
    p.options = o;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_string_equal(f.res_stop_reason, "stop_sequence");
    assert_string_equal(f.res_stop_sequence, "three");
    json_decref(o);
    fx_free(&f);
}

/* Truncation leaves out a whole tool exchange, never a call without its result. */
static void test_truncation_keeps_pairs(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    char q1[301];
    memset(q1, 'q', 300);
    q1[300] = '\0';
    json_t *call = J("[{\"type\":\"text\",\"text\":\"let me look\"},{\"type\":\"tool_use\",\"id\":\"toolu_01\","
                     "\"name\":\"f\",\"input\":{}}]");
    json_t *result = J("[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\",\"content\":\"42\"}]");
    llm_message h[6] = { { "user", q1, NULL, 0, false },   { "assistant", "let me look", call, 0, false },
                         { "user", "", result, 0, false }, { "assistant", "42.", NULL, 0, false },
                         { "user", "q2", NULL, 0, false }, { "assistant", "a2", NULL, 0, false } };
    turn_params p = params(NULL, "req-1", "next");
    p.history = h;
    p.n_history = 6;
    p.model = "small"; /* budget 70: the 75 tokens of q1 must go, with its whole exchange */
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    json_t *b = sent(&f);
    json_t *msgs = json_object_get(b, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    assert_null(strstr(f.s.body, "tool_result"));
    assert_null(strstr(f.s.body, "tool_use"));
    json_decref(b);

    /* the new message answers the call: its exchange stays whole, what is older goes */
    llm_message h2[4] = { { "user", q1, NULL, 0, false },
                          { "assistant", "a0", NULL, 0, false },
                          { "user", "q1", NULL, 0, false },
                          { "assistant", "let me look", call, 0, false } };
    p = params(NULL, "req-2", NULL);
    p.history = h2;
    p.n_history = 4;
    p.message_blocks = result;
    p.model = "small";
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    b = sent(&f);
    msgs = json_object_get(b, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "content")), "q1");
    json_decref(b);
    json_decref(call);
    json_decref(result);
    fx_free(&f);
}

/* A sink with on_event gets every event in stream order (text too, and no
 * on_delta); the reply's content is whole at the end. */
static void test_event_forwarding(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_TOOL_CALL, 1, (fx_opts){ 0 });
    json_t *tools = J("{\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}]}");
    turn_params p = params(NULL, "req-1", "Weather in Paris?");
    p.options = tools;
    run_turn(&f, &p, &SINK_EVENTS);
    assert_sequence(&f, 'd');
    assert_string_equal(f.evlog, "t0t0x0u1a1a1x1");
    assert_string_equal(f.text, "Let me check.");
    assert_string_equal(f.tool_args, "{\"city\": \"Paris\"}");
    assert_non_null(strstr(f.res_content, "\"input\":{\"city\":\"Paris\"}"));
    json_decref(tools);
    fx_free(&f);
}

/* Structured output: through the forced tool on a model without a native
 * mode, natively on one with it; a fallback without either is skipped. */
static void test_structured_output(void **state)
{
    (void)state;
    fx f;
    fx_init(&f, &STREAM_OK, 1, (fx_opts){ 0 });
    json_t *o = J("{\"response_format\":{\"type\":\"json_schema\",\"name\":\"answer\",\"schema\":{\"type\":"
                  "\"object\",\"properties\":{\"a\":{\"type\":\"string\"}}}}}");
    turn_params p = params(NULL, "req-1", "JSON please");
    p.options = o;
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    json_t *b = sent(&f);
    json_t *choice = json_object_get(b, "tool_choice");
    assert_string_equal(json_string_value(json_object_get(choice, "name")), LLM_JSON_TOOL);
    assert_non_null(strstr(f.s.body, "\"" LLM_JSON_TOOL "\""));
    json_decref(b);
    json_decref(o);
    fx_free(&f);

    /* "native" fails with 529; its fallback "backup" has neither structured output nor tools: skipped */
    static const script sc[] = { OVERLOADED_529, STREAM_OK };
    fx_init(&f, sc, 2, (fx_opts){ 0 });
    o = J("{\"response_format\":{\"type\":\"json_object\"}}");
    p = params(NULL, "req-2", "JSON please");
    p.options = o;
    p.model = "native";
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'e');
    assert_int_equal(f.err.status, 503); /* the provider's overload, as turn_map_llm_error says */
    assert_int_equal(f.s.nreq, 1);
    assert_null(strstr(f.s.body, LLM_JSON_TOOL)); /* native: no forced tool */
    json_decref(o);
    fx_free(&f);

    /* with drop mode, the fallback goes without the option */
    fx_init(&f, sc, 2, (fx_opts){ .drop_unsupported = true });
    o = J("{\"response_format\":{\"type\":\"json_object\"}}");
    p = params(NULL, "req-3", "JSON please");
    p.options = o;
    p.model = "native";
    run_turn(&f, &p, &SINK);
    assert_sequence(&f, 'd');
    assert_string_equal(f.res_model, "backup");
    assert_string_equal(f.res_dropped, "response_format");
    assert_int_equal(f.s.nreq, 2);
    assert_null(strstr(f.s.body, "json"));
    json_decref(o);
    fx_free(&f);
}

/* A call in a state that cannot take it is fatal, not silent: here the
 * consumer cancels from inside on_done, which turn.h forbids. */
static void test_bad_state_aborts(void **state)
{
    (void)state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        fx f;
        fx_init(&f, &STREAM_OK, 1, (fx_opts){ .inline_store = true });
        f.cancel_in_done = true;
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 2);
        turn_params p = params("s1", "req-1", "Hello?");
        start(&f, &p);
        RUN_UNTIL(&f, f.t == NULL, 3000);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_done_inline_store),
        cmocka_unit_test(test_load_steps_and_history),
        cmocka_unit_test(test_gone_during_load),
        cmocka_unit_test(test_gone_during_lock),
        cmocka_unit_test(test_gone_during_call_keep),
        cmocka_unit_test(test_gone_during_call_drop),
        cmocka_unit_test(test_gone_during_commit),
        cmocka_unit_test(test_fallback_after_renewal),
        cmocka_unit_test(test_gone_during_renewal),
        cmocka_unit_test(test_shutdown_during_load),
        cmocka_unit_test(test_shutdown_during_call),
        cmocka_unit_test(test_shutdown_during_commit),
        cmocka_unit_test(test_error_before_delta),
        cmocka_unit_test(test_error_after_delta),
        cmocka_unit_test(test_idempotency_complete_and_release),
        cmocka_unit_test(test_refused_before_the_call),
        cmocka_unit_test(test_store_errors),
        cmocka_unit_test(test_ephemeral_fallback),
        cmocka_unit_test(test_commit_refused),
        cmocka_unit_test(test_merge_same_role),
        cmocka_unit_test(test_options_reach_provider),
        cmocka_unit_test(test_unsupported_option),
        cmocka_unit_test(test_tool_call_then_results),
        cmocka_unit_test(test_pairing_without_history),
        cmocka_unit_test(test_image_needs_vision),
        cmocka_unit_test(test_truncation_keeps_pairs),
        cmocka_unit_test(test_event_forwarding),
        cmocka_unit_test(test_structured_output),
        cmocka_unit_test(test_stop_sequence),
        cmocka_unit_test(test_cancel_during_tool_call),
        cmocka_unit_test(test_bad_state_aborts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
