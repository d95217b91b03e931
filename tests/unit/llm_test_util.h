/*
 * llm_test_util.h: the scaffolding shared by the provider wire-format suites
 * (test_anthropic.c, test_openai.c): a text sink standing in for the caller's
 * emit callback, and a feeder that pushes bytes through the real SSE parser
 * into one provider's event handler, in pieces of any size.
 *
 * Header-only (static inline): each test executable is one file. Include it
 * after <cmocka.h>, whose assertions the sink uses.
 */
#ifndef CHATD_TESTS_LLM_TEST_UTIL_H
#define CHATD_TESTS_LLM_TEST_UTIL_H

#include <stddef.h>
#include <string.h>

#include "llm/call_internal.h"
#include "llm/sse.h"

/* Collects the emitted text; stop_after > 0 makes the sink refuse more text
 * after that many pieces (the caller going away mid-stream). */
typedef struct sink {
    char text[4096];
    size_t len;
    int pieces;
    int stop_after; /* return nonzero after this many pieces (0 = never) */
} sink;

static inline int sink_emit(void *ud, const char *t, size_t n)
{
    sink *s = ud;
    assert_true(s->len + n < sizeof s->text);
    memcpy(s->text + s->len, t, n);
    s->len += n;
    s->text[s->len] = '\0';
    s->pieces++;
    return s->stop_after && s->pieces >= s->stop_after;
}

/* What the SSE callback needs: whose event handler, on which parse state. */
typedef struct llm_test_feed_ctx {
    const llm_provider_ops *ops;
    llm_parse *st;
} llm_test_feed_ctx;

static inline int llm_test_feed_event(void *ud, const char *type, size_t tl, const char *data, size_t dl)
{
    (void)tl;
    const llm_test_feed_ctx *c = ud;
    return c->ops->on_sse_event(c->st, type, data, dl);
}

/* Feeds bytes through the real SSE parser into ops' event handler in pieces
 * of `step` bytes; returns the first status other than CHAT_OK, if any. */
static inline chat_rc llm_test_feed(const llm_provider_ops *ops, llm_parse *st, const char *bytes, size_t step)
{
    llm_test_feed_ctx c = { ops, st };
    sse_parser *p = sse_new(65536, 65536, llm_test_feed_event, &c);
    size_t n = strlen(bytes);
    chat_rc rc = CHAT_OK;
    for (size_t i = 0; i < n && rc == CHAT_OK; i += step)
        rc = sse_feed(p, bytes + i, n - i < step ? n - i : step);
    sse_free(p);
    return rc;
}

#endif
