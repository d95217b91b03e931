/*
 * test_llm_loop.c: loop-level tests of the LLM client (transport.c, call.c,
 * anthropic.c, openai.c) against a tiny evhttp server running in this process on
 * 127.0.0.1, on the same event_base as the calls.
 *
 * Each test scripts the server's replies (status, headers, a plain body or
 * timed chunks, and how the reply ends: cleanly, hanging, or with a TCP
 * reset), runs one call, and checks the callbacks (counted and ordered), the
 * result, what the server received, and timings. Every run of the loop has a
 * watchdog so that a hung call fails its test instead of the suite.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/util.h"
#include "llm/provider.h"
#include "llm/transport.h"

#define API_KEY "sk-ant-secret-KEY-123456"

#include "llm_script_server.h"

/* ------------------------------------------------------------------------ */
/* The client side                                                            */

typedef struct tc {
    struct event_base *base;
    srv s;
    llm_transport *t;
    llm_provider p;
    char base_url[64];
    llm_call *call;
    int64_t start_ms;
    /* deltas */
    int deltas;
    char text[8192];
    size_t len;
    int64_t delta_ms[64];
    int pause_every;        /* return LLM_PAUSE on every pause_every-th delta (0 = never) */
    int resume_after_ms;    /* then resume after this long */
    int64_t resumed_ms;     /* last resume */
    int delta_while_paused; /* deltas received while we were paused: must stay 0 */
    bool paused;
    int cancel_after_deltas; /* cancel (from the loop) after this many deltas (0 = never) */
    bool cancelled;
    bool cancel_inside; /* cancel from inside on_delta itself (must be deferred by the call) */
    int64_t cancel_ms;
    int after_cancel;     /* callbacks after cancel: must stay 0 */
    struct event *action; /* deferred resume / cancel */
    /* done */
    int done;
    int delta_after_done;
    int64_t done_ms;
    llm_status status;
    int http_status;
    char *error_type, *error_message, *error_code, *request_id, *stop_reason, *model, *rtext;
    int64_t retry_after_ms;
    llm_usage usage;
    bool delivered;
    int attempts;
    int64_t ttfb_ms;
    /* events (on_event instead of on_delta) */
    bool use_events;
    int pause_every_event; /* return LLM_PAUSE on every n-th event (0 = never) */
    int events;
    int event_while_paused; /* must stay 0 */
    char evlog[4096];       /* "<kind name>:<index>[:id:name][:data]|" per event, unmerged */
    size_t evlen;
    const json_t *options; /* for the request */
    bool json_via_tool;
    char *content, *stop_sequence; /* from on_done */
} tc;

static void action_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tc *c = arg;
    if (c->cancel_after_deltas && c->deltas >= c->cancel_after_deltas && !c->cancelled) {
        c->cancelled = true;
        c->cancel_ms = chat_mono_ms();
        llm_call_cancel(c->call);
        c->call = NULL;
        return;
    }
    if (c->paused) {
        c->paused = false;
        c->resumed_ms = chat_mono_ms();
        llm_call_resume(c->call);
    }
}

static int on_delta(void *ud, const char *text, size_t len)
{
    tc *c = ud;
    if (c->cancelled)
        c->after_cancel++;
    if (c->done)
        c->delta_after_done++;
    if (c->paused)
        c->delta_while_paused++;
    assert_true(c->len + len < sizeof c->text);
    memcpy(c->text + c->len, text, len);
    c->len += len;
    c->text[c->len] = '\0';
    if (c->deltas < 64)
        c->delta_ms[c->deltas] = chat_mono_ms();
    c->deltas++;
    if (c->cancel_inside && c->cancel_after_deltas && c->deltas == c->cancel_after_deltas) {
        c->cancelled = true;
        c->cancel_ms = chat_mono_ms();
        llm_call_cancel(c->call);
        c->call = NULL;
        return LLM_CONTINUE;
    }
    if (c->cancel_after_deltas && c->deltas == c->cancel_after_deltas) {
        /* Not from inside on_delta (provider.h): on the next loop turn. */
        struct timeval tv = { 0, 0 };
        evtimer_add(c->action, &tv);
    }
    if (c->pause_every && c->deltas % c->pause_every == 0) {
        c->paused = true;
        struct timeval tv = { 0, c->resume_after_ms * 1000 };
        evtimer_add(c->action, &tv);
        return LLM_PAUSE;
    }
    return LLM_CONTINUE;
}

static void log_s(tc *c, const char *p, size_t n)
{
    assert_true(c->evlen + n < sizeof c->evlog);
    memcpy(c->evlog + c->evlen, p, n);
    c->evlen += n;
    c->evlog[c->evlen] = '\0';
}

static int on_event(void *ud, const llm_event *ev)
{
    tc *c = ud;
    if (c->cancelled)
        c->after_cancel++;
    if (c->done)
        c->delta_after_done++;
    if (c->paused)
        c->event_while_paused++;
    char head[32];
    int n = snprintf(head, sizeof head, "%s:%d", llm_event_name(ev->kind), ev->index);
    log_s(c, head, (size_t)n);
    if (ev->id) {
        log_s(c, ":", 1);
        log_s(c, ev->id, strlen(ev->id));
    }
    if (ev->name) {
        log_s(c, ":", 1);
        log_s(c, ev->name, strlen(ev->name));
    }
    if (ev->data) {
        log_s(c, ":", 1);
        log_s(c, ev->data, ev->len);
    }
    log_s(c, "|", 1);
    c->events++;
    if (c->pause_every_event && c->events % c->pause_every_event == 0) {
        c->paused = true;
        struct timeval tv = { 0, c->resume_after_ms * 1000 };
        evtimer_add(c->action, &tv);
        return LLM_PAUSE;
    }
    return LLM_CONTINUE;
}

static char *dup_s(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void on_done(void *ud, const llm_result *r)
{
    tc *c = ud;
    if (c->cancelled)
        c->after_cancel++;
    c->done++;
    c->done_ms = chat_mono_ms();
    c->status = r->status;
    c->http_status = r->http_status;
    c->error_type = dup_s(r->error_type);
    c->error_message = dup_s(r->error_message);
    c->error_code = dup_s(r->error_code);
    c->request_id = dup_s(r->request_id);
    c->stop_reason = dup_s(r->stop_reason);
    c->model = dup_s(r->model);
    c->rtext = strndup(r->text, r->text_len);
    assert_non_null(r->content); /* never NULL, even on failure */
    assert_true(json_is_array(r->content));
    c->content = json_dumps(r->content, JSON_COMPACT);
    c->stop_sequence = dup_s(r->stop_sequence);
    assert_int_equal(strlen(r->text), r->text_len);
    c->retry_after_ms = r->retry_after_ms;
    c->usage = r->usage;
    c->delivered = r->delivered;
    c->attempts = r->attempts;
    c->ttfb_ms = r->ttfb_ms;
    c->call = NULL;
    if (r->status == LLM_OK) {
        assert_null(r->error_type);
        assert_null(r->error_message);
        assert_null(r->error_code);
    } else {
        assert_non_null(r->error_type);
        assert_non_null(r->error_message);
        assert_null(strstr(r->error_message, API_KEY));
    }
    event_base_loopbreak(c->base);
}

static void tc_init(tc *c, const script *scripts, int n)
{
    memset(c, 0, sizeof *c);
    c->base = event_base_new();
    srv_start(&c->s, c->base, scripts, n);
    c->t = llm_transport_new(c->base);
    snprintf(c->base_url, sizeof c->base_url, "http://127.0.0.1:%d", c->s.port);
    c->p = (llm_provider){
        .kind = LLM_PROVIDER_ANTHROPIC,
        .name = "anthropic",
        .base_url = c->base_url,
        .api_key = API_KEY,
        .version = "2023-06-01",
        .connect_timeout_ms = 1000,
        .first_byte_timeout_ms = 2000,
        .idle_timeout_ms = 2000,
        .total_timeout_ms = 5000,
        .max_retries = 0,
        .retry_base_ms = 20,
        .retry_max_wait_ms = 1000,
        .max_response_bytes = 65536,
    };
    c->action = evtimer_new(c->base, action_cb, c);
    c->retry_after_ms = -2;
}

/* The reply fields the callbacks filled in (heap copies). */
static void tc_free_results(tc *c)
{
    free(c->error_type), free(c->error_message), free(c->error_code), free(c->request_id), free(c->stop_reason),
        free(c->model), free(c->rtext), free(c->content), free(c->stop_sequence);
}

static void tc_free(tc *c)
{
    llm_transport_free(c->t); /* cancels a call still running: no callback */
    srv_stop(&c->s);
    event_free(c->action);
    event_base_free(c->base);
    tc_free_results(c);
}

static void tc_start(tc *c, bool stream)
{
    static const llm_message msgs[] = { { "user", "Hello", NULL, 0, false } };
    llm_request req = { .model = "claude-test",
                        .system = "Be brief.",
                        .messages = msgs,
                        .n_messages = 1,
                        .max_tokens = 64,
                        .stream = stream,
                        .options = c->options,
                        .json_via_tool = c->json_via_tool };
    llm_callbacks cbs = { .on_delta = on_delta, .on_done = on_done, .on_event = c->use_events ? on_event : NULL };
    c->start_ms = chat_mono_ms();
    assert_int_equal(llm_call_start(c->t, &c->p, &req, &cbs, c, &c->call), CHAT_OK);
    assert_non_null(c->call);
    assert_int_equal(c->done, 0); /* never from inside llm_call_start */
    assert_int_equal(llm_transport_active(c->t), 1);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

/* Runs the loop until on_done (or the watchdog, which fails the test). */
static void run_until_done(tc *c, int max_ms)
{
    struct event *wd = evtimer_new(c->base, watchdog_cb, c->base);
    struct timeval tv = { max_ms / 1000, (max_ms % 1000) * 1000 };
    evtimer_add(wd, &tv);
    while (!c->done && event_base_dispatch(c->base) == 0) {
        if (!evtimer_pending(wd, NULL))
            break;
    }
    event_free(wd);
    assert_int_equal(c->done, 1);
}

/* Runs the loop for ms (to see that nothing more happens, or for the server to notice). */
static void run_for(tc *c, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    event_base_loopexit(c->base, &tv);
    event_base_dispatch(c->base);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                      */

static void test_nonstream_ok(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { JSON_CT, "request-id: req_011CVabc" },
        .body = "{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test-1\","
                "\"content\":[{\"type\":\"thinking\",\"thinking\":\"hm\"},{\"type\":\"text\",\"text\":\"Hi! \"},"
                "{\"type\":\"text\",\"text\":\"How can I help?\"}],\"stop_reason\":\"end_turn\","
                "\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,"
                "\"cache_read_input_tokens\":0,\"output_tokens\":9}}",
    } };
    tc c;
    tc_init(&c, sc, 1);
    tc_start(&c, false);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.http_status, 200);
    assert_string_equal(c.rtext, "Hi! How can I help?");
    assert_int_equal(c.deltas, 0);
    assert_string_equal(c.stop_reason, "end_turn");
    assert_string_equal(c.model, "claude-test-1");
    assert_string_equal(c.request_id, "req_011CVabc");
    assert_int_equal(c.usage.input_tokens, 12);
    assert_int_equal(c.usage.output_tokens, 9);
    assert_int_equal(c.attempts, 1);
    assert_int_equal(c.retry_after_ms, -1);
    assert_true(c.ttfb_ms >= 0);
    /* What went over the wire. */
    assert_string_equal(c.s.uri, "/v1/messages");
    assert_string_equal(c.s.h_key, API_KEY);
    assert_string_equal(c.s.h_version, "2023-06-01");
    assert_string_equal(c.s.h_ctype, "application/json");
    assert_string_equal(c.s.h_accept, "application/json");
    assert_null(c.s.h_expect);
    assert_null(c.s.h_encoding);
    assert_string_equal(c.s.body, "{\"model\":\"claude-test\",\"max_tokens\":64,\"system\":\"Be brief.\","
                                  "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}");
    assert_int_equal(llm_transport_active(c.t), 0);
    tc_free(&c);
}

static void test_stream_ok(void **state)
{
    (void)state;
    tc c;
    tc_init(&c, &STREAM_OK, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.deltas, 4);
    assert_string_equal(c.text, "Hello, world!");
    assert_string_equal(c.rtext, "Hello, world!");
    for (int i = 1; i < 4; i++)
        assert_true(c.delta_ms[i] >= c.delta_ms[i - 1]);
    assert_true(c.done_ms >= c.delta_ms[3]);
    assert_int_equal(c.delta_after_done, 0);
    assert_string_equal(c.stop_reason, "end_turn");
    assert_string_equal(c.model, "claude-test-20260101");
    assert_string_equal(c.request_id, "req_stream_1");
    /* message_delta usage overwrites (9, not 1 + 5 + 9); input and cache from message_start. */
    assert_int_equal(c.usage.output_tokens, 9);
    assert_int_equal(c.usage.input_tokens, 11);
    assert_int_equal(c.usage.cache_write_tokens, 3);
    assert_int_equal(c.usage.cache_read_tokens, 100);
    assert_true(c.delivered);
    assert_int_equal(c.attempts, 1);
    assert_string_equal(c.s.h_accept, "text/event-stream");
    assert_non_null(strstr(c.s.body, "\"stream\":true"));
    tc_free(&c);
}

/* The whole stream in one TCP write: every event arrives in one curl write. */
static void test_stream_one_chunk(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START EV_BLOCK EV_DELTA("a") EV_DELTA("b") EV_DELTA("c") EV_BSTOP EV_MDELTA("end_turn", "3")
                        EV_STOP },
    } };
    tc c;
    tc_init(&c, sc, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.text, "abc");
    assert_int_equal(c.deltas, 3);
    tc_free(&c);
}

typedef struct err_case {
    script sc;
    int max_retries;
    int status;
    const char *type;
    const char *msg_part;
    int64_t retry_after_ms;
    int attempts;
} err_case;

static void test_error_statuses(void **state)
{
    (void)state;
    static const err_case cases[] = {
        { { .status = 400,
            .headers = { JSON_CT, "request-id: req_400" },
            .body = ERR_BODY("invalid_request_error", "max_tokens: required") },
          2,
          400,
          "invalid_request_error",
          "max_tokens: required",
          -1,
          1 },
        { { .status = 401,
            .headers = { JSON_CT },
            .body = ERR_BODY("authentication_error", "invalid x-api-key " API_KEY) },
          2,
          401,
          "authentication_error",
          "invalid x-api-key [redacted]",
          -1,
          1 },
        { { .status = 404, .headers = { JSON_CT }, .body = ERR_BODY("not_found_error", "model: nope") },
          0,
          404,
          "not_found_error",
          "nope",
          -1,
          1 },
        { { .status = 413,
            .headers = { "content-type: text/html" },
            .body = "<html><body><h1>413 Request Entity Too Large</h1></body></html>" },
          0,
          413,
          "request_too_large",
          "HTTP 413: 413 Request Entity Too Large",
          -1,
          1 },
        { { .status = 429,
            .headers = { JSON_CT, "retry-after: 2" },
            .body = ERR_BODY("rate_limit_error", "slow down") },
          0,
          429,
          "rate_limit_error",
          "slow down",
          2000,
          1 },
        { { .status = 429,
            .headers = { JSON_CT, "retry-after-ms: 350", "retry-after: 1" },
            .body = ERR_BODY("rate_limit_error", "ms wins") },
          0,
          429,
          "rate_limit_error",
          "ms wins",
          350,
          1 },
        { { .status = 429,
            .headers = { JSON_CT },
            .body = "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"spend limit\","
                    "\"details\":{\"error_code\":\"enforced_spend_limit_reached\"}}}" },
          2,
          429,
          "rate_limit_error",
          "spend limit",
          -1,
          1 },
        { { .status = 500, .headers = { JSON_CT }, .body = ERR_BODY("api_error", "Internal server error") },
          0,
          500,
          "api_error",
          "Internal",
          -1,
          1 },
        { { .status = 502, .headers = { "content-type: text/plain" }, .body = "Bad Gateway\r\n" },
          0,
          502,
          "api_error",
          "HTTP 502: Bad Gateway",
          -1,
          1 },
        { { .status = 504,
            .headers = { JSON_CT },
            .body = "{\"error\":{\"type\":\"timeout_error\",\"message\":\"Request timeout\"}}" },
          0,
          504,
          "timeout_error",
          "Request timeout",
          -1,
          1 },
        { { .status = 529,
            .headers = { JSON_CT, "x-should-retry: false", "request-id: req_011CSHoEeqs5C35K2UUqR7Fy" },
            .body = ERR_BODY("overloaded_error", "Overloaded") },
          2,
          529,
          "overloaded_error",
          "Overloaded",
          -1,
          1 },
        /* x-should-retry: true makes even a 400 retryable (A8), up to max_retries. */
        { { .status = 400,
            .headers = { JSON_CT, "x-should-retry: true" },
            .body = ERR_BODY("invalid_request_error", "try again") },
          2,
          400,
          "invalid_request_error",
          "try again",
          -1,
          3 },
        /* retries exhausted: the last error is reported, with the attempts made. */
        { { .status = 503, .headers = { JSON_CT, "retry-after-ms: 10" }, .body = ERR_BODY("api_error", "unavailable") },
          1,
          503,
          "api_error",
          "unavailable",
          10,
          2 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const err_case *e = &cases[i];
        tc c;
        tc_init(&c, &e->sc, 1);
        c.p.max_retries = e->max_retries;
        c.p.retry_base_ms = 5;
        tc_start(&c, true);
        run_until_done(&c, 3000);
        if (c.status != LLM_ERR_HTTP || c.http_status != e->status || strcmp(c.error_type, e->type) != 0 ||
            !strstr(c.error_message, e->msg_part) || c.retry_after_ms != e->retry_after_ms || c.attempts != e->attempts)
            fail_msg("case %zu: status %d http %d type %s message '%s' retry_after %lld attempts %d", i, c.status,
                     c.http_status, c.error_type, c.error_message, (long long)c.retry_after_ms, c.attempts);
        assert_int_equal(c.s.nreq, e->attempts);
        assert_int_equal(c.deltas, 0);
        assert_false(c.delivered);
        if (i == 0)
            assert_string_equal(c.request_id, "req_400");
        tc_free(&c);
    }
}

static void test_retry_529_then_ok(void **state)
{
    (void)state;
    static const script sc[2] = {
        { .status = 529, .headers = { JSON_CT }, .body = ERR_BODY("overloaded_error", "Overloaded") },
        { 0 },
    };
    script both[2] = { sc[0], STREAM_OK };
    tc c;
    tc_init(&c, both, 2);
    c.p.max_retries = 2;
    c.p.retry_base_ms = 40;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    assert_int_equal(c.s.nreq, 2);
    assert_int_equal(c.http_status, 200);
    assert_string_equal(c.text, "Hello, world!");
    int64_t gap = c.s.req_ms[1] - c.s.req_ms[0];
    /* backoff 40 ms * [0.75, 1], plus the 529's round trip */
    assert_true(gap >= 29);
    assert_true(gap < 400);
    tc_free(&c);
}

static void test_retry_after_honoured(void **state)
{
    (void)state;
    script both[2] = {
        { .status = 429, .headers = { JSON_CT, "retry-after-ms: 150" }, .body = ERR_BODY("rate_limit_error", "wait") },
        STREAM_OK
    };
    tc c;
    tc_init(&c, both, 2);
    c.p.max_retries = 1;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    int64_t gap = c.s.req_ms[1] - c.s.req_ms[0];
    assert_true(gap >= 145);
    assert_true(gap < 600);
    assert_int_equal(c.retry_after_ms, -1); /* the hint of the last response, which had none */
    tc_free(&c);
}

static void test_retry_stream_error_before_delta(void **state)
{
    (void)state;
    script both[2] = {
        { .status = 200, .headers = { SSE_CT }, .chunks = { EV_START, EV_ERROR("overloaded_error", "Overloaded") } },
        STREAM_OK
    };
    tc c;
    tc_init(&c, both, 2);
    c.p.max_retries = 1;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    assert_string_equal(c.text, "Hello, world!");
    assert_string_equal(c.model, "claude-test-20260101");
    tc_free(&c);
}

static void test_no_retry_after_delta(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("Hello"),
                                               EV_ERROR("overloaded_error", "Overloaded") },
                                   .chunk_delay_ms = 5 } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_retries = 3;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_STREAM);
    assert_string_equal(c.error_type, "overloaded_error");
    assert_string_equal(c.error_message, "Overloaded");
    assert_int_equal(c.attempts, 1);
    assert_true(c.delivered);
    assert_string_equal(c.rtext, "Hello");
    assert_int_equal(c.http_status, 200);
    run_for(&c, 100);
    assert_int_equal(c.s.nreq, 1);
    tc_free(&c);
}

static void test_retry_after_too_long(void **state)
{
    (void)state;
    static const script sc[] = {
        { .status = 429, .headers = { JSON_CT, "retry-after: 30" }, .body = ERR_BODY("rate_limit_error", "later") }
    };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_retries = 2;
    c.p.retry_max_wait_ms = 1000;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_RETRY_AFTER);
    assert_int_equal(c.http_status, 429);
    assert_string_equal(c.error_type, "rate_limit_error");
    assert_int_equal(c.retry_after_ms, 30000);
    assert_int_equal(c.attempts, 1);
    assert_true(c.done_ms - c.start_ms < 500); /* no waiting */
    assert_int_equal(c.s.nreq, 1);
    tc_free(&c);
}

static void test_truncated(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("Hel"), EV_DELTA("lo") },
                                   .chunk_delay_ms = 3 } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TRUNCATED);
    assert_string_equal(c.rtext, "Hello");
    assert_int_equal(c.attempts, 1); /* deltas were delivered: no retry */
    assert_non_null(strstr(c.error_message, "message_stop"));
    tc_free(&c);
}

static void test_connection_reset(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("Hi") },
                                   .chunk_delay_ms = 20,
                                   .end = END_RESET } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TRUNCATED);
    assert_string_equal(c.rtext, "Hi");
    assert_int_equal(c.attempts, 1);
    tc_free(&c);
}

static void test_reset_before_delta_is_retried(void **state)
{
    (void)state;
    script both[2] = {
        { .status = 200, .headers = { SSE_CT }, .chunks = { EV_START }, .chunk_delay_ms = 20, .end = END_RESET },
        STREAM_OK
    };
    tc c;
    tc_init(&c, both, 2);
    c.p.max_retries = 1;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    assert_string_equal(c.text, "Hello, world!");
    tc_free(&c);
}

static void test_connect_refused(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200, .headers = { JSON_CT }, .body = "{}" } };
    tc c;
    tc_init(&c, sc, 1);
    /* A port nobody listens on: bind, read the port, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    snprintf(c.base_url, sizeof c.base_url, "http://127.0.0.1:%d", ntohs(sa.sin_port));
    c.p.max_retries = 1;
    c.p.retry_base_ms = 10;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_CONNECT);
    assert_string_equal(c.error_type, "connection_error");
    assert_int_equal(c.attempts, 2);
    assert_int_equal(c.http_status, 0);
    assert_int_equal(c.ttfb_ms, -1);
    tc_free(&c);
}

static void test_first_byte_timeout(void **state)
{
    (void)state;
    static const script sc[] = {
        { .status = 200, .headers = { SSE_CT }, .head_delay_ms = 1500, .chunks = { EV_START } }
    };
    tc c;
    tc_init(&c, sc, 1);
    c.p.first_byte_timeout_ms = 200;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TIMEOUT);
    assert_non_null(strstr(c.error_message, "first-byte"));
    int64_t el = c.done_ms - c.start_ms;
    assert_true(el >= 195 && el < 700);
    run_for(&c, 50);
    assert_true(peer_closed(&c.s)); /* the client left at once */
    tc_free(&c);
}

static void test_nonstream_whole_reply_deadline(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200, .headers = { JSON_CT }, .head_delay_ms = 800, .body = "{}" } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.first_byte_timeout_ms = 200;
    c.p.max_retries = 1;
    c.p.retry_base_ms = 10;
    tc_start(&c, false);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TIMEOUT);
    assert_non_null(strstr(c.error_message, "first-byte"));
    assert_int_equal(c.attempts, 2); /* a first-byte timeout is retried, nothing was delivered */
    tc_free(&c);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("Hi") },
                                   .chunk_delay_ms = 5,
                                   .end = END_HANG } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.idle_timeout_ms = 200;
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TIMEOUT);
    assert_non_null(strstr(c.error_message, "idle"));
    assert_string_equal(c.rtext, "Hi");
    assert_int_equal(c.attempts, 1);
    int64_t gap = c.done_ms - c.delta_ms[0];
    if (!(gap >= 190 && gap < 700))
        fail_msg("idle gap %lld ms", (long long)gap);
    run_for(&c, 200);
    assert_int_equal(c.s.closes, 1);
    tc_free(&c);
}

static void test_total_timeout(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("1"), EV_DELTA("2"), EV_DELTA("3"),
                                               EV_DELTA("4"), EV_DELTA("5"), EV_DELTA("6"), EV_DELTA("7"),
                                               EV_DELTA("8"), EV_STOP },
                                   .chunk_delay_ms = 100 } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.total_timeout_ms = 350;
    c.p.max_retries = 3;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TIMEOUT);
    assert_non_null(strstr(c.error_message, "total"));
    assert_int_equal(c.attempts, 1);
    int64_t el = c.done_ms - c.start_ms;
    assert_true(el >= 345 && el < 800);
    tc_free(&c);
}

static void test_body_too_large(void **state)
{
    (void)state;
    static const script sc[] = {
        { .status = 200,
          .headers = { JSON_CT },
          .body = "{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"0123456789012345678"
                  "90123456789012345678901234567890123456789012345678901234567890123456789\"}]}" }
    };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_response_bytes = 64;
    c.p.max_retries = 2;
    tc_start(&c, false);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_PROTOCOL);
    assert_non_null(strstr(c.error_message, "max_response_bytes"));
    assert_int_equal(c.attempts, 1);
    tc_free(&c);
}

static void test_malformed_event(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("ok"),
                                               "event: content_block_delta\ndata: {\"index\":0,\"delta\":\n\n",
                                               EV_STOP } } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_PROTOCOL);
    assert_string_equal(c.rtext, "ok");
    assert_int_equal(c.attempts, 1);
    tc_free(&c);
}

static void test_wrong_content_type(void **state)
{
    (void)state;
    static const script sc[] = {
        { .status = 200, .headers = { "content-type: text/html" }, .body = "<html>hi</html>" }
    };
    tc c;
    tc_init(&c, sc, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_PROTOCOL);
    assert_non_null(strstr(c.error_message, "text/html"));
    tc_free(&c);
}

/* Pause on the first delta while every event is already in the same buffer:
 * the rest must wait for resume, then arrive complete and in order. The pause
 * outlasts the idle deadline, which must not fire. */
static void test_pause_resume_one_buffer(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START EV_BLOCK EV_DELTA("one ") EV_DELTA("two ") EV_DELTA("three")
                        EV_BSTOP EV_MDELTA("end_turn", "3") EV_STOP },
    } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.idle_timeout_ms = 150;
    c.pause_every = 1;
    c.resume_after_ms = 300;
    tc_start(&c, true);
    run_until_done(&c, 5000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.delta_while_paused, 0);
    assert_string_equal(c.text, "one two three");
    assert_string_equal(c.rtext, "one two three");
    assert_true(c.deltas >= 2);
    assert_true(c.delta_ms[1] - c.delta_ms[0] >= 295); /* nothing before the resume */
    assert_true(c.done_ms - c.delta_ms[0] >= 295);
    tc_free(&c);
}

/* Pause on every delta with the events spread over time: curl's own pause
 * and re-delivery are exercised; no byte may be parsed twice. */
static void test_pause_resume_spread(void **state)
{
    (void)state;
    tc c;
    tc_init(&c, &STREAM_OK, 1);
    c.p.idle_timeout_ms = 100;
    c.pause_every = 1;
    c.resume_after_ms = 150;
    tc_start(&c, true);
    run_until_done(&c, 5000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.delta_while_paused, 0);
    assert_string_equal(c.text, "Hello, world!");
    assert_int_equal(c.deltas, 4);
    for (int i = 1; i < 4; i++)
        assert_true(c.delta_ms[i] - c.delta_ms[i - 1] >= 145);
    assert_int_equal(c.usage.output_tokens, 9);
    tc_free(&c);
}

/* ---- reply events (on_event) and content ---- */

#define X_BSTART(i, block)                                                                                          \
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":" #i ",\"content_block\":" block \
    "}\n\n"
#define X_DELTA(i, delta) \
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":" #i ",\"delta\":" delta "}\n\n"
#define X_BSTOP(i) "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":" #i "}\n\n"

#define X_T1 X_BSTART(0, "{\"type\":\"thinking\",\"thinking\":\"\"}")
#define X_T2 X_DELTA(0, "{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}")
#define X_T3 X_DELTA(0, "{\"type\":\"signature_delta\",\"signature\":\"SIG\"}")
#define X_X1 X_BSTART(1, "{\"type\":\"text\",\"text\":\"\"}")
#define X_X2 X_DELTA(1, "{\"type\":\"text_delta\",\"text\":\"Let \"}")
#define X_X3 X_DELTA(1, "{\"type\":\"text_delta\",\"text\":\"me.\"}")
#define X_U1 X_BSTART(2, "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}")
#define X_U2 X_DELTA(2, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}")
#define X_U3 X_DELTA(2, "{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}")
/* thinking with its signature, text in two pieces, a tool call in two pieces */
#define X_THINK_TEXT_TOOL X_T1 X_T2 X_T3 X_BSTOP(0) X_X1 X_X2 X_X3 X_BSTOP(1) X_U1 X_U2 X_U3 X_BSTOP(2)

static const char *X_EVENTS =
    "thinking:0:hm|block_stop:0:thinking:SIG|text:1:Let |text:1:me.|block_stop:1:text|"
    "tool_start:2:toolu_1:f|tool_args:2:{\"a\":|tool_args:2:1}|block_stop:2:toolu_1:tool_use|";
static const char *X_CONTENT = "[{\"type\":\"thinking\",\"thinking\":\"hm\",\"signature\":\"SIG\"},{\"type\":\"text\","
                               "\"text\":\"Let me.\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\","
                               "\"input\":{\"a\":1}}]";

/* With on_event every event goes there, text included, and on_delta is never called. */
static void test_events_stream(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START, X_THINK_TEXT_TOOL, EV_MDELTA("tool_use", "9") EV_STOP },
        .chunk_delay_ms = 10,
    } };
    tc c;
    tc_init(&c, sc, 1);
    c.use_events = true;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.deltas, 0);
    assert_string_equal(c.evlog, X_EVENTS);
    assert_string_equal(c.content, X_CONTENT);
    assert_string_equal(c.rtext, "Let me.");
    assert_string_equal(c.stop_reason, "tool_use");
    assert_true(c.delivered);
    assert_int_equal(c.usage.reasoning_tokens, -1); /* not reported */
    tc_free(&c);

    /* The same stream to an on_delta caller: only the text, as before. */
    tc_init(&c, sc, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.text, "Let me.");
    assert_int_equal(c.deltas, 2);
    assert_int_equal(c.events, 0);
    assert_string_equal(c.content, X_CONTENT);
    tc_free(&c);
}

/* Pausing on every event with the whole stream in one network read: the
 * events parsed after each pause are held and delivered in order, one per
 * resume, and on_done waits for the last of them. */
static void test_events_pause_resume(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START X_THINK_TEXT_TOOL EV_MDELTA("tool_use", "9") EV_STOP },
    } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.idle_timeout_ms = 100;
    c.use_events = true;
    c.pause_every_event = 1;
    c.resume_after_ms = 30;
    tc_start(&c, true);
    run_until_done(&c, 5000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.event_while_paused, 0);
    assert_int_equal(c.delta_after_done, 0);
    assert_int_equal(c.deltas, 0);
    /* Held pieces of one block are merged into one event: compare the merged text. */
    assert_non_null(strstr(c.evlog, "thinking:0:hm|block_stop:0:thinking:SIG|"));
    assert_non_null(strstr(c.evlog, "block_stop:1:text|tool_start:2:toolu_1:f|"));
    assert_non_null(strstr(c.evlog, "|block_stop:2:toolu_1:tool_use|"));
    assert_true(strstr(c.evlog, "text:1:Let ") != NULL || strstr(c.evlog, "text:1:Let me.") != NULL);
    assert_string_equal(c.content, X_CONTENT);
    assert_true(c.events >= 6);
    assert_true(c.done_ms - c.start_ms >= 30 * (c.events - 1) - 5);
    tc_free(&c);

    /* Spread over reads, pausing every second event. */
    static const script spread[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START, X_THINK_TEXT_TOOL, EV_MDELTA("tool_use", "9"), EV_STOP },
        .chunk_delay_ms = 20,
    } };
    tc_init(&c, spread, 1);
    c.p.idle_timeout_ms = 500;
    c.use_events = true;
    c.pause_every_event = 2;
    c.resume_after_ms = 40;
    tc_start(&c, true);
    run_until_done(&c, 5000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.event_while_paused, 0);
    assert_string_equal(c.content, X_CONTENT);
    tc_free(&c);
}

/* A tool call whose arguments do not parse fails the call (protocol error),
 * and the content keeps what was whole. Plain text replies keep their one
 * text block, and the options reach the body. */
static void test_events_errors_and_content(void **state)
{
    (void)state;
    static const script bad[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { EV_START X_BSTART(0, "{\"type\":\"text\",\"text\":\"\"}")
                        X_DELTA(0, "{\"type\":\"text_delta\",\"text\":\"Hi\"}") X_BSTOP(0)
                            X_BSTART(1, "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}")
                                X_DELTA(1, "{\"type\":\"input_json_delta\",\"partial_json\":\"{oops\"}") X_BSTOP(1)
                                    EV_MDELTA("tool_use", "9") EV_STOP },
    } };
    tc c;
    tc_init(&c, bad, 1);
    c.use_events = true;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_PROTOCOL);
    assert_non_null(strstr(c.error_message, "not a JSON object"));
    assert_string_equal(c.content, "[{\"type\":\"text\",\"text\":\"Hi\"}]");
    tc_free(&c);

    tc_init(&c, &STREAM_OK, 1);
    json_t *opts = json_pack("{s:f,s:[s]}", "temperature", 0.5, "stop", "END");
    c.options = opts;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.content, "[{\"type\":\"text\",\"text\":\"Hello, world!\"}]");
    assert_non_null(strstr(c.s.body, "\"temperature\":0.5,\"stop_sequences\":[\"END\"]"));
    json_decref(opts);
    tc_free(&c);

    /* An option the provider cannot carry: the call does not start. */
    tc_init(&c, &STREAM_OK, 1);
    opts = json_pack("{s:i}", "seed", 1);
    static const llm_message msgs[] = { { "user", "Hello", NULL, 0, false } };
    llm_request req = { .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 8, .options = opts };
    llm_callbacks cbs = { .on_delta = on_delta, .on_done = on_done };
    llm_call *call = NULL;
    assert_int_equal(llm_call_start(c.t, &c.p, &req, &cbs, &c, &call), CHAT_EINVAL);
    assert_null(call);
    json_decref(opts);
    tc_free(&c);
}

static void test_cancel_mid_stream(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START, EV_BLOCK, EV_DELTA("a"), EV_DELTA("b"), EV_DELTA("c"),
                                               EV_DELTA("d"), EV_DELTA("e"), EV_DELTA("f"), EV_STOP },
                                   .chunk_delay_ms = 30 } };
    tc c;
    tc_init(&c, sc, 1);
    c.cancel_after_deltas = 2;
    tc_start(&c, true);
    struct timeval tv = { 3, 0 };
    event_base_loopexit(c.base, &tv);
    while (!(c.cancelled && c.s.closes) && event_base_loop(c.base, EVLOOP_ONCE) == 0 && !event_base_got_exit(c.base))
        ;
    assert_true(c.cancelled);
    assert_int_equal(c.s.closes, 1);
    assert_true(c.s.close_ms - c.cancel_ms < 300);
    assert_int_equal(llm_transport_active(c.t), 0);
    run_for(&c, 300); /* the stream would have gone on: nothing may reach us */
    assert_int_equal(c.after_cancel, 0);
    assert_int_equal(c.done, 0);
    assert_int_equal(c.deltas, 2);
    tc_free(&c);
}

static void test_cancel_inside_delta(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { EV_START EV_BLOCK EV_DELTA("a") EV_DELTA("b") EV_DELTA("c"),
                                               EV_DELTA("d"), EV_DELTA("e"), EV_STOP },
                                   .chunk_delay_ms = 30 } };
    tc c;
    tc_init(&c, sc, 1);
    c.cancel_after_deltas = 2;
    c.cancel_inside = true;
    tc_start(&c, true);
    struct timeval tv = { 3, 0 };
    event_base_loopexit(c.base, &tv);
    while (!(c.cancelled && c.s.closes) && event_base_loop(c.base, EVLOOP_ONCE) == 0 && !event_base_got_exit(c.base))
        ;
    assert_true(c.cancelled);
    assert_int_equal(c.s.closes, 1);
    assert_true(c.s.close_ms - c.cancel_ms < 300);
    run_for(&c, 200);
    assert_int_equal(c.deltas, 2); /* "c" was in the same read: never delivered */
    assert_int_equal(c.after_cancel, 0);
    assert_int_equal(c.done, 0);
    assert_int_equal(llm_transport_active(c.t), 0);
    tc_free(&c);
}

/* message_stop arrived but the server keeps the response open: complete, not an error. */
static void test_stop_then_hang(void **state)
{
    (void)state;
    script sc = STREAM_OK;
    sc.end = END_HANG;
    tc c;
    tc_init(&c, &sc, 1);
    c.p.idle_timeout_ms = 200;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.rtext, "Hello, world!");
    tc_free(&c);
}

static void cancel_now_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tc *c = arg;
    c->cancelled = true;
    c->cancel_ms = chat_mono_ms();
    llm_call_cancel(c->call);
    c->call = NULL;
}

static void test_cancel_during_retry_wait(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 529,
                                   .headers = { JSON_CT, "retry-after-ms: 600" },
                                   .body = ERR_BODY("overloaded_error", "Overloaded") } };
    tc c;
    tc_init(&c, sc, 1);
    c.p.max_retries = 2;
    c.p.retry_max_wait_ms = 5000;
    tc_start(&c, true);
    /* Let the 529 arrive and the call start its 600 ms wait, then cancel. */
    run_for(&c, 200);
    assert_int_equal(c.s.nreq, 1);
    assert_int_equal(c.done, 0);
    struct event *ev = evtimer_new(c.base, cancel_now_cb, &c);
    struct timeval tv = { 0, 0 };
    evtimer_add(ev, &tv);
    run_for(&c, 800);
    event_free(ev);
    assert_true(c.cancelled);
    assert_int_equal(c.s.nreq, 1); /* the retry never happened */
    assert_int_equal(c.done, 0);
    assert_int_equal(c.after_cancel, 0);
    assert_int_equal(llm_transport_active(c.t), 0);
    tc_free(&c);
}

static void test_transport_free_cancels(void **state)
{
    (void)state;
    static const script sc[] = {
        { .status = 200, .headers = { SSE_CT }, .chunks = { EV_START, EV_BLOCK, EV_DELTA("x") }, .end = END_HANG }
    };
    tc c;
    tc_init(&c, sc, 1);
    tc_start(&c, true);
    run_for(&c, 150);
    assert_int_equal(c.deltas, 1);
    llm_transport_free(c.t);
    c.t = NULL;
    run_for(&c, 100);
    assert_int_equal(c.done, 0);
    assert_int_equal(c.s.closes, 1);
    tc_free(&c);
}

static void test_invalid_start(void **state)
{
    (void)state;
    static const script sc[] = { { .status = 200, .headers = { JSON_CT }, .body = "{}" } };
    tc c;
    tc_init(&c, sc, 1);
    llm_message m = { "user", "hi", NULL, 0, false };
    llm_request req = { .model = "m", .messages = &m, .n_messages = 1, .max_tokens = 5 };
    llm_callbacks cbs = { .on_delta = on_delta, .on_done = on_done };
    llm_call *call = (llm_call *)&c;
    c.p.total_timeout_ms = 0;
    assert_int_equal(llm_call_start(c.t, &c.p, &req, &cbs, &c, &call), CHAT_EINVAL);
    assert_null(call);
    c.p.total_timeout_ms = 1000;
    c.p.api_key = "bad\nkey";
    assert_int_equal(llm_call_start(c.t, &c.p, &req, &cbs, &c, &call), CHAT_EINVAL);
    c.p.api_key = API_KEY;
    req.n_messages = 0;
    assert_int_equal(llm_call_start(c.t, &c.p, &req, &cbs, &c, &call), CHAT_EINVAL);
    req.n_messages = 1;
    cbs.on_done = NULL;
    assert_int_equal(llm_call_start(c.t, &c.p, &req, &cbs, &c, &call), CHAT_EINVAL);
    assert_int_equal(llm_transport_active(c.t), 0);
    run_for(&c, 50);
    assert_int_equal(c.done, 0);
    llm_call_cancel(NULL);
    llm_transport_free(NULL);
    tc_free(&c);
}

/* Two calls at once on one transport, one streaming and one not. */
/* A second client d on c's loop, transport and server: starts a streamed call
 * for d (tc_free_results frees what it receives; c owns the rest). */
static void tc_start_second(tc *d, tc *c)
{
    memset(d, 0, sizeof *d);
    d->base = c->base;
    d->retry_after_ms = -2;
    static const llm_message msgs[] = { { "user", "Hello", NULL, 0, false } };
    llm_request req = { .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 64, .stream = true };
    llm_callbacks cbs = { .on_delta = on_delta, .on_done = on_done };
    assert_int_equal(llm_call_start(c->t, &c->p, &req, &cbs, d, &d->call), CHAT_OK);
}

static void test_two_calls(void **state)
{
    (void)state;
    tc c;
    tc_init(&c, &STREAM_OK, 1);
    tc_start(&c, true);
    tc d;
    tc_start_second(&d, &c);
    assert_int_equal(llm_transport_active(c.t), 2);
    while (!(c.done && d.done))
        run_until_done(c.done ? &d : &c, 3000);
    assert_string_equal(c.text, "Hello, world!");
    assert_string_equal(d.text, "Hello, world!");
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(d.status, LLM_OK);
    tc_free_results(&d);
    tc_free(&c);
}

/* llm_transport_shed: an idle transport closes its cached connection (the
 * server sees it end) and connects afresh for the next call; a transport with
 * a call running keeps its connections, and the call ends normally. */
static void test_shed(void **state)
{
    (void)state;
    tc c;
    tc_init(&c, &STREAM_OK, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_false(peer_closed(&c.s)); /* kept for the next call */
    llm_transport_shed(c.t);
    bool closed = false;
    for (int i = 0; i < 200 && !(closed = peer_closed(&c.s)); i++)
        usleep(1000);
    assert_true(closed);

    tc d;
    tc_start_second(&d, &c);
    llm_transport_shed(c.t); /* a call is running: nothing is cut */
    run_until_done(&d, 3000);
    assert_int_equal(d.status, LLM_OK);
    assert_string_equal(d.text, "Hello, world!");
    assert_int_equal(c.s.nreq, 2);
    assert_false(peer_closed(&c.s));
    tc_free_results(&d);
    tc_free(&c);
}

/* ------------------------------------------------------------------------ */
/* OpenAI-compatible provider (docs/PROTOCOLS.md B)                                */

#define OA_CHUNK(delta, finish)                                                                                 \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test-1\"," \
    "\"choices\":[{\"index\":0,\"delta\":" delta ",\"logprobs\":null,\"finish_reason\":" finish "}],"           \
    "\"usage\":null}\n\n"
#define OA_ROLE OA_CHUNK("{\"role\":\"assistant\",\"content\":\"\"}", "null")
#define OA_DELTA(t) OA_CHUNK("{\"content\":\"" t "\"}", "null")
#define OA_FINISH(reason) OA_CHUNK("{}", "\"" reason "\"")
#define OA_USAGE(prompt, cached, completion)                                                                    \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test-1\"," \
    "\"choices\":[],\"usage\":{\"prompt_tokens\":" prompt ",\"completion_tokens\":" completion                  \
    ",\"total_tokens\":0,\"prompt_tokens_details\":{\"cached_tokens\":" cached "}}}\n\n"
#define OA_DONE "data: [DONE]\n\n"
#define OA_ERR_BODY(type, code, msg) \
    "{\"error\":{\"message\":\"" msg "\",\"type\":\"" type "\",\"param\":null,\"code\":" code "}}"

static const script OA_STREAM_OK = {
    .status = 200,
    .headers = { SSE_CT, "x-request-id: req_oa_1", "request-id: not-this-one" },
    .chunks = { OA_ROLE, OA_DELTA("Hello"), OA_DELTA(", world"), ": keep-alive\n\n", OA_DELTA("!"), OA_FINISH("stop"),
                OA_USAGE("1500", "1024", "7"), OA_DONE },
    .chunk_delay_ms = 2,
};

/* tc_init, then point the provider at the server as an OpenAI-compatible one. */
static void tc_init_openai(tc *c, const script *scripts, int n)
{
    tc_init(c, scripts, n);
    snprintf(c->base_url, sizeof c->base_url, "http://127.0.0.1:%d/v1/", c->s.port);
    c->p.kind = LLM_PROVIDER_OPENAI;
    c->p.name = "openai";
    c->p.version = NULL;
}

static void test_openai_stream_ok(void **state)
{
    (void)state;
    tc c;
    tc_init_openai(&c, &OA_STREAM_OK, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.http_status, 200);
    assert_int_equal(c.deltas, 3);
    assert_string_equal(c.text, "Hello, world!");
    assert_string_equal(c.rtext, "Hello, world!");
    assert_string_equal(c.stop_reason, "stop");
    assert_string_equal(c.model, "gpt-test-1");
    assert_string_equal(c.request_id, "req_oa_1");
    assert_int_equal(c.usage.input_tokens, 1500 - 1024);
    assert_int_equal(c.usage.cache_read_tokens, 1024);
    assert_int_equal(c.usage.cache_write_tokens, -1);
    assert_int_equal(c.usage.output_tokens, 7);
    assert_int_equal(c.attempts, 1);
    /* What went over the wire. */
    assert_string_equal(c.s.uri, "/v1/chat/completions");
    assert_string_equal(c.s.h_auth, "Bearer " API_KEY);
    assert_null(c.s.h_key);
    assert_null(c.s.h_version);
    assert_string_equal(c.s.h_ctype, "application/json");
    assert_string_equal(c.s.h_accept, "text/event-stream");
    assert_null(c.s.h_expect);
    assert_string_equal(c.s.body, "{\"model\":\"claude-test\",\"messages\":[{\"role\":\"system\",\"content\":"
                                  "\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":64,"
                                  "\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    tc_free(&c);
}

static void test_openai_nonstream_ok(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { JSON_CT, "x-request-id: req_oa_2" },
        .body = "{\"id\":\"chatcmpl-2\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"llama3.2\","
                "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                "\"content\":\"Hi! How can I help?\"},\"finish_reason\":\"length\"}],"
                "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":9,\"total_tokens\":21}}",
    } };
    tc c;
    tc_init_openai(&c, sc, 1);
    c.p.api_key = ""; /* a local server: no Authorization header */
    c.p.max_tokens_field = "max_completion_tokens";
    tc_start(&c, false);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.rtext, "Hi! How can I help?");
    assert_int_equal(c.deltas, 0);
    assert_string_equal(c.stop_reason, "length");
    assert_string_equal(c.model, "llama3.2");
    assert_string_equal(c.request_id, "req_oa_2");
    assert_int_equal(c.usage.input_tokens, 12);
    assert_int_equal(c.usage.cache_read_tokens, -1);
    assert_int_equal(c.usage.output_tokens, 9);
    assert_null(c.s.h_auth);
    assert_string_equal(c.s.h_accept, "application/json");
    assert_string_equal(c.s.body, "{\"model\":\"claude-test\",\"messages\":[{\"role\":\"system\",\"content\":"
                                  "\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hello\"}],"
                                  "\"max_completion_tokens\":64,\"stream\":false}");
    tc_free(&c);
}

static void test_openai_midstream_error(void **state)
{
    (void)state;
    /* After a delta: reported as it came, never retried. */
    static const script sc[] = {
        { .status = 200,
          .headers = { SSE_CT },
          .chunks = { OA_ROLE, OA_DELTA("Par"),
                      "data: " OA_ERR_BODY("server_error", "null", "The server had an error") "\n\n" },
          .chunk_delay_ms = 5 }
    };
    tc c;
    tc_init_openai(&c, sc, 1);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_STREAM);
    assert_string_equal(c.error_type, "server_error");
    assert_string_equal(c.error_message, "The server had an error");
    assert_null(c.error_code);
    assert_string_equal(c.rtext, "Par");
    assert_true(c.delivered);
    assert_int_equal(c.attempts, 1);
    assert_int_equal(c.http_status, 200);
    run_for(&c, 100);
    assert_int_equal(c.s.nreq, 1);
    tc_free(&c);

    /* Before any delta (vLLM: integer code, then [DONE]): retried, and the retry succeeds. */
    script both[2] = {
        { .status = 200,
          .headers = { SSE_CT },
          .chunks = { OA_ROLE, "data: " OA_ERR_BODY("InternalServerError", "500", "KV cache full") "\n\n", OA_DONE } },
        OA_STREAM_OK
    };
    tc_init_openai(&c, both, 2);
    c.p.max_retries = 1;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    assert_string_equal(c.text, "Hello, world!");
    tc_free(&c);

    /* The same with no retry left: the error as the provider said it, with its code. */
    tc_init_openai(&c, both, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_STREAM);
    assert_string_equal(c.error_type, "InternalServerError");
    assert_string_equal(c.error_code, "500");
    assert_false(c.delivered);
    tc_free(&c);
}

static void test_openai_retry_429_then_ok(void **state)
{
    (void)state;
    script both[2] = { { .status = 429,
                         .headers = { JSON_CT, "retry-after-ms: 120", "x-request-id: req_429" },
                         .body = OA_ERR_BODY("tokens", "\"rate_limit_exceeded\"", "Rate limit reached") },
                       OA_STREAM_OK };
    tc c;
    tc_init_openai(&c, both, 2);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    assert_int_equal(c.s.nreq, 2);
    assert_string_equal(c.text, "Hello, world!");
    assert_string_equal(c.request_id, "req_oa_1");
    int64_t gap = c.s.req_ms[1] - c.s.req_ms[0];
    assert_true(gap >= 115 && gap < 600);
    tc_free(&c);

    /* insufficient_quota is a 429 too, but waiting cannot help: not retried. */
    static const script quota[] = { { .status = 429,
                                      .headers = { JSON_CT, "retry-after: 1" },
                                      .body = OA_ERR_BODY("insufficient_quota", "\"insufficient_quota\"",
                                                          "You exceeded your current quota") } };
    tc_init_openai(&c, quota, 1);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_HTTP);
    assert_int_equal(c.http_status, 429);
    assert_string_equal(c.error_type, "insufficient_quota");
    assert_string_equal(c.error_code, "insufficient_quota");
    assert_string_equal(c.error_message, "You exceeded your current quota");
    assert_int_equal(c.attempts, 1);
    assert_int_equal(c.retry_after_ms, 1000);
    run_for(&c, 100);
    assert_int_equal(c.s.nreq, 1);
    tc_free(&c);

    /* A vLLM 500 with an integer code and no key configured: retried, then reported. */
    static const script v500[] = {
        { .status = 500, .headers = { JSON_CT }, .body = OA_ERR_BODY("InternalServerError", "500", "oops") }
    };
    tc_init_openai(&c, v500, 1);
    c.p.api_key = NULL;
    c.p.max_retries = 1;
    c.p.retry_base_ms = 5;
    tc_start(&c, false);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_HTTP);
    assert_string_equal(c.error_type, "InternalServerError");
    assert_string_equal(c.error_code, "500");
    assert_int_equal(c.attempts, 2);
    assert_null(c.s.h_auth);
    tc_free(&c);
}

static void test_openai_truncated(void **state)
{
    (void)state;
    /* Clean close without a finish_reason (what Ollama does after losing an error). */
    static const script sc[] = { { .status = 200,
                                   .headers = { SSE_CT },
                                   .chunks = { OA_ROLE, OA_DELTA("Hel"), OA_DELTA("lo"), OA_ROLE },
                                   .chunk_delay_ms = 3 } };
    tc c;
    tc_init_openai(&c, sc, 1);
    c.p.max_retries = 2;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TRUNCATED);
    assert_string_equal(c.error_type, "truncated");
    assert_non_null(strstr(c.error_message, "finish_reason"));
    assert_string_equal(c.rtext, "Hello");
    assert_int_equal(c.attempts, 1); /* deltas were delivered: no retry */
    tc_free(&c);

    /* [DONE] without a finish_reason (old llama.cpp after its `error:` field): truncated too. */
    static const script old[] = { { .status = 200,
                                    .headers = { SSE_CT },
                                    .chunks = { OA_ROLE, OA_DELTA("Hi"), "error: {\"code\":500,\"message\":\"x\"}\n\n",
                                                OA_DONE },
                                    .chunk_delay_ms = 3 } };
    tc_init_openai(&c, old, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_ERR_TRUNCATED);
    assert_string_equal(c.rtext, "Hi");
    tc_free(&c);

    /* A reset before any text: retried (nothing was delivered). */
    script both[2] = {
        { .status = 200, .headers = { SSE_CT }, .chunks = { OA_ROLE }, .chunk_delay_ms = 20, .end = END_RESET },
        OA_STREAM_OK
    };
    tc_init_openai(&c, both, 2);
    c.p.max_retries = 1;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.attempts, 2);
    tc_free(&c);
}

/* The stream ends after its finish_reason but without [DONE] or usage, in
 * each way it can: a clean close (Ollama), a reset, a server that keeps the
 * response open. The reply is complete: success, usage unknown (-1). */
static void test_openai_end_after_finish(void **state)
{
    (void)state;
    const end_kind ends[] = { END_OK, END_RESET, END_HANG };
    for (size_t i = 0; i < 3; i++) {
        script sc = { .status = 200,
                      .headers = { SSE_CT },
                      .chunks = { OA_ROLE, OA_DELTA("Hi"), OA_FINISH("stop") },
                      .chunk_delay_ms = 20,
                      .end = ends[i] };
        tc c;
        tc_init_openai(&c, &sc, 1);
        c.p.idle_timeout_ms = 200;
        c.p.max_retries = 2;
        tc_start(&c, true);
        run_until_done(&c, 3000);
        if (c.status != LLM_OK)
            fail_msg("end %zu: status %d (%s)", i, c.status, c.error_message);
        assert_string_equal(c.rtext, "Hi");
        assert_string_equal(c.stop_reason, "stop");
        assert_int_equal(c.usage.input_tokens, -1);
        assert_int_equal(c.usage.output_tokens, -1);
        assert_int_equal(c.usage.cache_read_tokens, -1);
        assert_int_equal(c.attempts, 1);
        tc_free(&c);
    }

    /* The usage chunk arrived, then a clean close without [DONE]: its usage is kept. */
    static const script sc2[] = { { .status = 200,
                                    .headers = { SSE_CT },
                                    .chunks = { OA_ROLE, OA_DELTA("Hi"), OA_FINISH("stop"),
                                                OA_USAGE("9", "0", "1") } } };
    tc c;
    tc_init_openai(&c, sc2, 1);
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.usage.input_tokens, 9);
    assert_int_equal(c.usage.cache_read_tokens, 0);
    assert_int_equal(c.usage.output_tokens, 1);
    tc_free(&c);
}

/* OpenAI-compatible, end to end through the call: reasoning, interleaved
 * tool-call pieces delivered as whole blocks in order, reasoning tokens; and
 * structured output through the forced tool, which reaches the caller as text. */
static void test_openai_events_tools(void **state)
{
    (void)state;
#define OA_C(delta, fr) \
    "data: {\"model\":\"gpt-test-1\",\"choices\":[{\"index\":0,\"delta\":" delta ",\"finish_reason\":" fr "}]}\n\n"
    static const script sc[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { OA_C("{\"reasoning_content\":\"hm\"}", "null"),
                    OA_C("{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":"
                         "{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":\"}}]}",
                         "null"),
                    OA_C("{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":"
                         "{\"name\":\"g\",\"arguments\":\"{}\"}}]}",
                         "null"),
                    OA_C("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}", "null"),
                    OA_C("{}", "\"tool_calls\""),
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,"
                    "\"completion_tokens_details\":{\"reasoning_tokens\":4}}}\n\n",
                    OA_DONE },
        .chunk_delay_ms = 5,
    } };
    tc c;
    tc_init_openai(&c, sc, 1);
    c.use_events = true;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.evlog, "thinking:0:hm|block_stop:0:thinking|tool_start:1:call_a:f|tool_args:1:{\"x\":|"
                                 "tool_args:1:1}|block_stop:1:call_a:tool_use|tool_start:2:call_b:g|"
                                 "tool_args:2:{}|block_stop:2:call_b:tool_use|");
    assert_string_equal(c.content, "[{\"type\":\"thinking\",\"thinking\":\"hm\"},{\"type\":\"tool_use\",\"id\":"
                                   "\"call_a\",\"name\":\"f\",\"input\":{\"x\":1}},{\"type\":\"tool_use\",\"id\":"
                                   "\"call_b\",\"name\":\"g\",\"input\":{}}]");
    assert_string_equal(c.stop_reason, "tool_calls");
    assert_int_equal(c.usage.reasoning_tokens, 4);
    assert_string_equal(c.rtext, "");
    tc_free(&c);

    static const script forced[] = { {
        .status = 200,
        .headers = { SSE_CT },
        .chunks = { OA_C("{\"tool_calls\":[{\"index\":0,\"id\":\"call_j\",\"type\":\"function\",\"function\":"
                         "{\"name\":\"json_output\",\"arguments\":\"{\\\"n\\\":\"}}]}",
                         "null"),
                    OA_C("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"3}\"}}]}", "null"),
                    OA_C("{}", "\"tool_calls\""), OA_DONE },
    } };
    tc_init_openai(&c, forced, 1);
    json_t *opts = json_pack("{s:{s:s,s:{s:s}}}", "response_format", "type", "json_schema", "schema", "type", "object");
    c.options = opts;
    c.json_via_tool = true;
    tc_start(&c, true);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_string_equal(c.text, "{\"n\":3}"); /* an on_delta caller sees the JSON as text */
    assert_string_equal(c.rtext, "{\"n\":3}");
    assert_string_equal(c.stop_reason, "stop");
    assert_string_equal(c.content, "[{\"type\":\"text\",\"text\":\"{\\\"n\\\":3}\"}]");
    assert_non_null(
        strstr(c.s.body, "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"json_output\"}}"));
    json_decref(opts);
    tc_free(&c);
#undef OA_C
}

/* A non-streaming call with on_event: no events (as no deltas), the content whole. */
static void test_nonstream_content_no_events(void **state)
{
    (void)state;
    static const script sc[] = { {
        .status = 200,
        .headers = { JSON_CT },
        .body = "{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test-1\","
                "\"content\":[{\"type\":\"text\",\"text\":\"Using f.\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\","
                "\"name\":\"f\",\"input\":{\"a\":1}}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,"
                "\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}",
    } };
    tc c;
    tc_init(&c, sc, 1);
    c.use_events = true;
    tc_start(&c, false);
    run_until_done(&c, 3000);
    assert_int_equal(c.status, LLM_OK);
    assert_int_equal(c.events, 0);
    assert_int_equal(c.deltas, 0);
    assert_string_equal(c.rtext, "Using f.");
    assert_string_equal(c.content, "[{\"type\":\"text\",\"text\":\"Using f.\"},{\"type\":\"tool_use\",\"id\":"
                                   "\"toolu_1\",\"name\":\"f\",\"input\":{\"a\":1}}]");
    assert_string_equal(c.stop_reason, "tool_use");
    assert_null(c.stop_sequence);
    tc_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nonstream_ok),
        cmocka_unit_test(test_stream_ok),
        cmocka_unit_test(test_stream_one_chunk),
        cmocka_unit_test(test_error_statuses),
        cmocka_unit_test(test_retry_529_then_ok),
        cmocka_unit_test(test_retry_after_honoured),
        cmocka_unit_test(test_retry_stream_error_before_delta),
        cmocka_unit_test(test_no_retry_after_delta),
        cmocka_unit_test(test_retry_after_too_long),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_connection_reset),
        cmocka_unit_test(test_reset_before_delta_is_retried),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_first_byte_timeout),
        cmocka_unit_test(test_nonstream_whole_reply_deadline),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_total_timeout),
        cmocka_unit_test(test_body_too_large),
        cmocka_unit_test(test_malformed_event),
        cmocka_unit_test(test_wrong_content_type),
        cmocka_unit_test(test_pause_resume_one_buffer),
        cmocka_unit_test(test_pause_resume_spread),
        cmocka_unit_test(test_events_stream),
        cmocka_unit_test(test_events_pause_resume),
        cmocka_unit_test(test_events_errors_and_content),
        cmocka_unit_test(test_cancel_mid_stream),
        cmocka_unit_test(test_cancel_inside_delta),
        cmocka_unit_test(test_stop_then_hang),
        cmocka_unit_test(test_cancel_during_retry_wait),
        cmocka_unit_test(test_transport_free_cancels),
        cmocka_unit_test(test_invalid_start),
        cmocka_unit_test(test_two_calls),
        cmocka_unit_test(test_shed),
        cmocka_unit_test(test_openai_stream_ok),
        cmocka_unit_test(test_openai_nonstream_ok),
        cmocka_unit_test(test_openai_midstream_error),
        cmocka_unit_test(test_openai_retry_429_then_ok),
        cmocka_unit_test(test_openai_truncated),
        cmocka_unit_test(test_openai_end_after_finish),
        cmocka_unit_test(test_openai_events_tools),
        cmocka_unit_test(test_nonstream_content_no_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
