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
 * The refusal byte's high bits also choose the request: 0x80 json_via_tool
 * (the forced json_output tool becomes text), 0x40 a small content cap
 * (llm_parse.max_bytes 200 instead of FUZZ_MAX_RESPONSE).
 * Oracles: the one-piece and chunked streams end in the same state; reply
 * text, error types, messages and codes are valid UTF-8 (they end up in JSON
 * responses and logs, which jansson refuses otherwise); an error is recorded
 * with a type and a message whenever the parser reports failure; the reply
 * text never outgrows the input (text only ever comes from it). Rich replies
 * (src/llm/reply.c): the events are well formed (blocks opened, filled and
 * closed in order, never interleaved, indexes counting up from 0, tool
 * arguments only inside a tool call, valid UTF-8) and the same in one piece
 * and in chunks; the content has one block per closed block, passes
 * llm_content_check, is the same in one piece and in chunks, and on success
 * its text blocks joined are exactly the text emitted.
 */
#ifndef CHATD_TESTS_FUZZ_LLM_FUZZ_H
#define CHATD_TESTS_FUZZ_LLM_FUZZ_H

#include "fuzz_util.h"
#include "llm/call_internal.h"
#include "llm/content.h"
#include "llm/sse.h"

#define FUZZ_MAX_RESPONSE 65536 /* max_response_bytes for these runs */

typedef struct text_sink {
    char *text; /* everything emitted, as call.c's c->text */
    size_t len;
    char *evlog; /* every event, "<kind><index>:<id>:<name>:<data>|", to compare runs */
    size_t evlen;
    int open;  /* index of the block events are open for, -1 none */
    bool tool; /* that block began with TOOL_START */
    int stops; /* BLOCK_STOP events so far: the index of the next block */
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

static void sink_log(text_sink *s, const char *p, size_t n)
{
    char *grown = realloc(s->evlog, s->evlen + n + 1);
    FUZZ_CHECK(grown != NULL, "out of memory");
    s->evlog = grown;
    if (n)
        memcpy(s->evlog + s->evlen, p, n);
    s->evlen += n;
    s->evlog[s->evlen] = '\0';
}

/* The event oracle (llm/content.h "Reply events"). */
static int sink_event(void *ud, const llm_event *ev)
{
    text_sink *s = ud;
    bool piece = ev->kind == LLM_EV_TEXT || ev->kind == LLM_EV_THINKING || ev->kind == LLM_EV_TOOL_ARGS;
    FUZZ_CHECK(ev->kind <= LLM_EV_BLOCK_STOP, "event kind %d", (int)ev->kind);
    if (piece) {
        FUZZ_CHECK(ev->data && ev->len > 0, "an empty piece");
        FUZZ_CHECK(fuzz_utf8_valid(ev->data, ev->len), "a piece that is not valid UTF-8");
    }
    if (ev->kind == LLM_EV_TOOL_START) {
        FUZZ_CHECK(s->open == -1, "tool_start inside block %d", s->open);
        FUZZ_CHECK(ev->index == s->stops, "tool_start for block %d, expected %d", ev->index, s->stops);
        FUZZ_CHECK(ev->id && *ev->id && ev->name && *ev->name, "tool_start without id or name");
        FUZZ_CHECK(fuzz_utf8_valid(ev->id, strlen(ev->id)) && fuzz_utf8_valid(ev->name, strlen(ev->name)),
                   "tool id or name not valid UTF-8");
        s->open = ev->index;
        s->tool = true;
    } else if (piece) {
        if (s->open == -1) {
            FUZZ_CHECK(ev->kind != LLM_EV_TOOL_ARGS, "tool_args outside a tool call");
            FUZZ_CHECK(ev->index == s->stops, "a piece opens block %d, expected %d", ev->index, s->stops);
            s->open = ev->index;
            s->tool = false;
        }
        FUZZ_CHECK(ev->index == s->open, "a piece for block %d while %d is open", ev->index, s->open);
        FUZZ_CHECK((ev->kind == LLM_EV_TOOL_ARGS) == s->tool, "a piece of the wrong kind in block %d", ev->index);
    } else {
        FUZZ_CHECK(ev->index == s->stops, "block_stop for %d, expected %d", ev->index, s->stops);
        FUZZ_CHECK(s->open == -1 || s->open == ev->index, "block_stop for %d while %d is open", ev->index, s->open);
        FUZZ_CHECK(ev->name && *ev->name, "block_stop without the block's type");
        s->stops++;
        s->open = -1;
    }
    char head[32];
    int n = snprintf(head, sizeof head, "%d%d:", (int)ev->kind, ev->index);
    sink_log(s, head, (size_t)n);
    sink_log(s, ev->id ? ev->id : "", ev->id ? strlen(ev->id) : 0);
    sink_log(s, ":", 1);
    sink_log(s, ev->name ? ev->name : "", ev->name ? strlen(ev->name) : 0);
    sink_log(s, ":", 1);
    sink_log(s, ev->data ? ev->data : "", ev->data ? ev->len : 0);
    sink_log(s, "|", 1);
    return 0;
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

/* flags: the refusal byte (its low bits the refusal, its high bits the request, see above). */
static void run_init(stream_run *r, const llm_provider_ops *ops, unsigned flags)
{
    memset(r, 0, sizeof *r);
    r->ops = ops;
    r->sink.refuse_after = (int)(flags % 8);
    r->sink.st = &r->st;
    r->sink.open = -1;
    llm_parse_init(&r->st, sink_emit, &r->sink);
    r->st.event = sink_event;
    r->st.json_via_tool = (flags & 0x80) != 0;
    r->st.max_bytes = (flags & 0x40) ? 200 : FUZZ_MAX_RESPONSE;
    r->sse = sse_new(FUZZ_MAX_RESPONSE, FUZZ_MAX_RESPONSE, on_event, r);
}

static void run_free(stream_run *r)
{
    sse_free(r->sse);
    llm_parse_reset(&r->st);
    free(r->sink.text);
    free(r->sink.evlog);
}

/* The content oracle: call after the parse. Returns the content as JSON text (heap) to compare runs. */
static char *check_content(stream_run *r, bool streamed)
{
    llm_parse *st = &r->st;
    if (streamed)
        FUZZ_CHECK((size_t)r->sink.stops == json_array_size(st->content), "%d blocks closed, %zu in the content",
                   r->sink.stops, json_array_size(st->content));
    bool ok = st->err == LLM_OK && !r->sink.refused;
    if (ok) {
        /* What call.c does before on_done: the open block (if any) is kept. */
        st->event = NULL;
        (void)llm_reply_close(st, false);
    }
    char why[256];
    if (json_array_size(st->content) > 0)
        FUZZ_CHECK(llm_content_check(st->content, "assistant", why, sizeof why) == NULL, "content: %s", why);
    if (ok && (st->complete || st->finished)) {
        char *text = llm_content_text(st->content);
        FUZZ_CHECK(strlen(text) <= r->sink.len && memcmp(text, r->sink.text ? r->sink.text : "", strlen(text)) == 0 &&
                       strlen(text) == r->sink.len,
                   "the content's text differs from the text emitted");
        free(text);
    }
    char *dump = st->content ? json_dumps(st->content, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    return dump ? dump : fuzz_strndup((const uint8_t *)"[]", 2);
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
    unsigned flags = fuzz_byte(in);
    const char *bytes = (const char *)in->p;
    size_t len = in->n;

    stream_run whole, split;
    run_init(&whole, ops, flags);
    run_init(&split, ops, flags);
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
    FUZZ_CHECK(whole.sink.evlen == split.sink.evlen &&
                   (whole.sink.evlen == 0 || memcmp(whole.sink.evlog, split.sink.evlog, whole.sink.evlen) == 0),
               "events differ between one piece and chunks");
    check_str("stop_sequence", whole.st.stop_sequence);
    FUZZ_CHECK(same_str(whole.st.stop_sequence, split.st.stop_sequence), "stop_sequence differs");
    char *cw = check_content(&whole, true);
    char *cs = check_content(&split, true);
    FUZZ_CHECK(strcmp(cw, cs) == 0, "content differs between one piece and chunks");
    free(cw);
    free(cs);
    run_free(&whole);
    run_free(&split);
}

static void fuzz_json_body(const llm_provider_ops *ops, fuzz_in *in)
{
    unsigned flags = fuzz_byte(in);
    char *body = fuzz_strndup(in->p, in->n);
    stream_run r;
    run_init(&r, ops, flags);
    llm_status rc = ops->parse_json_body(&r.st, body, in->n);
    check_state(&r.st, in->n, r.sink.len);
    FUZZ_CHECK(rc == LLM_OK || rc == LLM_ERR_PROTOCOL || rc == LLM_ERR_STREAM, "unexpected status %d", rc);
    if (rc == LLM_OK)
        FUZZ_CHECK(r.st.err == LLM_OK && r.st.complete, "LLM_OK with an error recorded or incomplete");
    else /* a cancelled call (the sink refused) records no error of its own */
        FUZZ_CHECK(r.st.err != LLM_OK || r.sink.refused, "failure %d without an error recorded", rc);
    free(check_content(&r, false));
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
