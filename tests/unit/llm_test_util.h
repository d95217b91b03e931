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

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
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
    /* With sink_event as llm_parse.event: the events as "<k><index>[:...]|"
     * (T text, K thinking, S tool_start :id:name, A tool_args, E block_stop
     * :type[:data]), consecutive pieces of one kind and block merged so that
     * the log does not depend on how the bytes were split. */
    char events[8192];
    size_t elen;
    int last_kind; /* kind + 1 of the last piece logged, 0 if the last entry is not a piece */
    int last_index;
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

static inline void sink_log(sink *s, const char *p, size_t n)
{
    assert_true(s->elen + n < sizeof s->events);
    memcpy(s->events + s->elen, p, n);
    s->elen += n;
    s->events[s->elen] = '\0';
}

static inline int sink_event(void *ud, const llm_event *ev)
{
    sink *s = ud;
    static const char letters[] = "TKSAE";
    bool piece = ev->kind == LLM_EV_TEXT || ev->kind == LLM_EV_THINKING || ev->kind == LLM_EV_TOOL_ARGS;
    if (piece && s->last_kind == (int)ev->kind + 1 && s->last_index == ev->index) {
        s->elen--; /* drop the '|' and go on with the same entry */
        sink_log(s, ev->data, ev->len);
        sink_log(s, "|", 1);
        return 0;
    }
    char head[64];
    int hn = snprintf(head, sizeof head, "%c%d", letters[ev->kind], ev->index);
    sink_log(s, head, (size_t)hn);
    if (ev->kind == LLM_EV_TOOL_START) {
        assert_non_null(ev->id);
        assert_non_null(ev->name);
        sink_log(s, ":", 1);
        sink_log(s, ev->id, strlen(ev->id));
        sink_log(s, ":", 1);
        sink_log(s, ev->name, strlen(ev->name));
    } else if (ev->kind == LLM_EV_BLOCK_STOP) {
        assert_non_null(ev->name);
        sink_log(s, ":", 1);
        sink_log(s, ev->name, strlen(ev->name));
        if (ev->data) {
            sink_log(s, ":", 1);
            sink_log(s, ev->data, ev->len);
        }
    } else {
        sink_log(s, ":", 1);
        sink_log(s, ev->data, ev->len);
    }
    sink_log(s, "|", 1);
    s->last_kind = piece ? (int)ev->kind + 1 : 0;
    s->last_index = ev->index;
    return 0;
}

/* The content built so far as compact JSON (heap), "[]" when none. */
static inline char *content_json(const llm_parse *st)
{
    return st->content ? json_dumps(st->content, JSON_COMPACT) : strdup("[]");
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
