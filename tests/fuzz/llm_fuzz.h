/*
 * llm_fuzz.h: the body of the two provider targets (fuzz_llm_anthropic.c,
 * fuzz_llm_openai.c), which differ only in their llm_provider_ops: what a
 * provider parser does with a reply, fed as call.c feeds it.
 *
 * Input: a mode byte, then the mode's parameters and bytes:
 *   mode 0, a streamed 2xx reply: 2 bytes of split seed, 1 byte "the caller
 *     refuses text after N pieces" (0: never), then the raw SSE bytes, fed
 *     through the real SSE parser into ops->on_sse_event, once in one piece and
 *     once in random chunks;
 *   mode 1, a 2xx JSON body: 1 byte refusal as above, then the body for
 *     ops->parse_json_body;
 *   mode 2, an error body: 2 bytes HTTP status (400..599), then the body for
 *     ops->parse_error;
 *   mode 3, the retry-after-ms and retry-after header values (NUL between
 *     them) for llm_retry_after_ms (shared by both providers).
 * Oracles: the one-piece and chunked streams end in the same state; reply
 * text, error types, messages and codes are valid UTF-8 (they end up in JSON
 * responses and logs, which jansson refuses otherwise); an error is recorded
 * with a type and a message whenever the parser reports failure; the reply
 * text never outgrows the input (text only ever comes from it).
 */
#ifndef CHATD_TESTS_FUZZ_LLM_FUZZ_H
#define CHATD_TESTS_FUZZ_LLM_FUZZ_H

#include "fuzz_util.h"
#include "llm/call_internal.h"
#include "llm/sse.h"

#define FUZZ_MAX_RESPONSE 65536 /* max_response_bytes for these runs */

typedef struct text_sink {
    char *text; /* everything emitted, as call.c's c->text */
    size_t len;
    int pieces;
    int refuse_after; /* refuse (return 1) at this piece, 0 = never: the call cancelled */
    bool refused;     /* it did */
    llm_parse *st;
} text_sink;

static int sink_emit(void *ud, const char *t, size_t n)
{
    text_sink *s = ud;
    FUZZ_CHECK(t != NULL || n == 0, "NULL text");
    FUZZ_CHECK(fuzz_utf8_valid(t, n), "emitted text is not valid UTF-8");
    if (s->len + n > FUZZ_MAX_RESPONSE) {
        llm_parse_fail(s->st, LLM_ERR_PROTOCOL, "protocol_error", "reply text exceeds max_response_bytes");
        return 1;
    }
    char *grown = realloc(s->text, s->len + n + 1);
    FUZZ_CHECK(grown != NULL, "out of memory");
    s->text = grown;
    if (n)
        memcpy(s->text + s->len, t, n);
    s->len += n;
    s->text[s->len] = '\0';
    s->pieces++;
    s->refused = s->refuse_after && s->pieces >= s->refuse_after;
    return s->refused;
}

typedef struct stream_run {
    const llm_provider_ops *ops;
    llm_parse st;
    text_sink sink;
    sse_parser *sse;
} stream_run;

/* As call.c's sse_event: stop at the first recorded failure. */
static int on_event(void *ud, const char *type, size_t type_len, const char *data, size_t data_len)
{
    (void)type_len;
    stream_run *r = ud;
    int rc = r->ops->on_sse_event(&r->st, type, data, data_len);
    return (rc || r->st.err != LLM_OK) ? 1 : 0;
}

static void run_init(stream_run *r, const llm_provider_ops *ops, int refuse_after)
{
    memset(r, 0, sizeof *r);
    r->ops = ops;
    r->sink.refuse_after = refuse_after;
    r->sink.st = &r->st;
    llm_parse_init(&r->st, sink_emit, &r->sink);
    r->sse = sse_new(FUZZ_MAX_RESPONSE, FUZZ_MAX_RESPONSE, on_event, r);
}

static void run_free(stream_run *r)
{
    sse_free(r->sse);
    llm_parse_reset(&r->st);
    free(r->sink.text);
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_str(const char *what, const char *s)
{
    if (s)
        FUZZ_CHECK(fuzz_utf8_valid(s, strlen(s)), "%s is not valid UTF-8", what);
}

/* What any parse state must satisfy, whatever the input. */
static void check_state(const llm_parse *st, size_t input_len, size_t text_len)
{
    check_str("model", st->model);
    check_str("stop_reason", st->stop_reason);
    check_str("err_type", st->err_type);
    check_str("err_message", st->err_message);
    check_str("err_code", st->err_code);
    if (st->err != LLM_OK)
        FUZZ_CHECK(st->err_type && st->err_message, "error %d without type or message", st->err);
    FUZZ_CHECK(text_len <= input_len, "%zu bytes of text from %zu bytes of input", text_len, input_len);
}

static void fuzz_stream(const llm_provider_ops *ops, fuzz_in *in)
{
    uint64_t seed = fuzz_byte(in);
    seed = seed << 8 | fuzz_byte(in);
    int refuse_after = fuzz_byte(in) % 8;
    const char *bytes = (const char *)in->p;
    size_t len = in->n;

    stream_run whole, split;
    run_init(&whole, ops, refuse_after);
    run_init(&split, ops, refuse_after);
    chat_rc rc_whole = sse_feed(whole.sse, len ? bytes : NULL, len);
    chat_rc rc_split = CHAT_OK;
    fuzz_rng rng = fuzz_rng_seed(seed);
    for (size_t off = 0; off < len && rc_split == CHAT_OK;) {
        size_t n = fuzz_chunk_len(&rng, len - off);
        rc_split = sse_feed(split.sse, bytes + off, n);
        off += n;
    }

    check_state(&whole.st, len, whole.sink.len);
    check_state(&split.st, len, split.sink.len);
    FUZZ_CHECK(rc_whole == rc_split, "sse_feed: %d in one piece, %d in chunks", rc_whole, rc_split);
    FUZZ_CHECK(whole.sink.len == split.sink.len &&
                   (whole.sink.len == 0 || memcmp(whole.sink.text, split.sink.text, whole.sink.len) == 0),
               "reply text differs between one piece and chunks");
    FUZZ_CHECK(whole.st.err == split.st.err, "status %d in one piece, %d in chunks", whole.st.err, split.st.err);
    FUZZ_CHECK(same_str(whole.st.err_type, split.st.err_type) && same_str(whole.st.err_message, split.st.err_message) &&
                   same_str(whole.st.err_code, split.st.err_code),
               "error differs between one piece and chunks");
    FUZZ_CHECK(same_str(whole.st.model, split.st.model) && same_str(whole.st.stop_reason, split.st.stop_reason),
               "model or stop reason differs between one piece and chunks");
    FUZZ_CHECK(memcmp(&whole.st.usage, &split.st.usage, sizeof whole.st.usage) == 0, "usage differs");
    FUZZ_CHECK(whole.st.complete == split.st.complete && whole.st.finished == split.st.finished,
               "end state differs between one piece and chunks");
    run_free(&whole);
    run_free(&split);
}

static void fuzz_json_body(const llm_provider_ops *ops, fuzz_in *in)
{
    int refuse_after = fuzz_byte(in) % 8;
    char *body = fuzz_strndup(in->p, in->n);
    stream_run r;
    run_init(&r, ops, refuse_after);
    llm_status rc = ops->parse_json_body(&r.st, body, in->n);
    check_state(&r.st, in->n, r.sink.len);
    FUZZ_CHECK(rc == LLM_OK || rc == LLM_ERR_PROTOCOL || rc == LLM_ERR_STREAM, "unexpected status %d", rc);
    if (rc == LLM_OK)
        FUZZ_CHECK(r.st.err == LLM_OK && r.st.complete, "LLM_OK with an error recorded or incomplete");
    else /* a cancelled call (the sink refused) records no error of its own */
        FUZZ_CHECK(r.st.err != LLM_OK || r.sink.refused, "failure %d without an error recorded", rc);
    run_free(&r);
    free(body);
}

static void fuzz_error_body(const llm_provider_ops *ops, fuzz_in *in)
{
    unsigned v = fuzz_byte(in);
    v = v << 8 | fuzz_byte(in);
    int status = 400 + (int)(v % 200);
    char *body = fuzz_strndup(in->p, in->n);
    llm_error_info e;
    ops->parse_error(status, body, in->n, &e);
    FUZZ_CHECK(e.type && *e.type, "error without a type");
    FUZZ_CHECK(e.message && *e.message, "error without a message");
    check_str("error type", e.type);
    check_str("error message", e.message);
    check_str("error code", e.code);
    FUZZ_CHECK(strlen(e.message) <= 4096, "error message of %zu bytes", strlen(e.message));
    llm_error_info_free(&e);
    free(body);
}

static void fuzz_retry_after(fuzz_in *in)
{
    char *s = fuzz_strndup(in->p, in->n);
    size_t first = strlen(s);
    const char *second = first < in->n ? s + first + 1 : NULL;
    int64_t ms = llm_retry_after_ms(*s ? s : NULL, second, (time_t)1767225600); /* 2026-01-01 */
    FUZZ_CHECK(ms >= -1, "retry hint %lld", (long long)ms);
    free(s);
}

static int fuzz_provider(const llm_provider_ops *ops, const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    switch (fuzz_byte(&in) % 4) {
    case 0: fuzz_stream(ops, &in); break;
    case 1: fuzz_json_body(ops, &in); break;
    case 2: fuzz_error_body(ops, &in); break;
    default: fuzz_retry_after(&in); break;
    }
    return 0;
}

#endif
