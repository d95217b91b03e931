/*
 * test_sse.c: unit tests for the incremental SSE parser (src/llm/sse.h).
 *
 * Every input is checked three ways (fed whole; split in two at every byte
 * boundary; one byte at a time with empty feeds in between), and each way must
 * produce the same summary: the dispatched events (type, data, last event id at
 * the time of the call), the final status, last event id and retry. Pieces are
 * copied into exactly-sized heap blocks so that ASan catches any read past the
 * end of a piece. A fuzz loop compares the parser against a deliberately naive
 * reference implementation written straight from the WHATWG text, on random
 * inputs split at random points.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llm/sse.h"

#define BIG ((size_t)1 << 20)

/* ---- summaries ---------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len;
    size_t cap;
} strbuf;

static void sb_add(strbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(strbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* Appends s escaped: printable ASCII as is, except \ , ( ) which, like every other byte, become \xHH. */
static void sb_esc(strbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\\' || c == ',' || c == '(' || c == ')') {
            char hex[8];
            snprintf(hex, sizeof(hex), "\\x%02x", c);
            sb_str(b, hex);
        } else {
            sb_add(b, (const char *)&c, 1);
        }
    }
}

static void sb_event(strbuf *b, const char *type, size_t tlen, const char *data, size_t dlen, const char *id)
{
    sb_str(b, "(");
    sb_esc(b, type, tlen);
    sb_str(b, ",");
    sb_esc(b, data, dlen);
    sb_str(b, ",id=");
    sb_esc(b, id, strlen(id));
    sb_str(b, ")");
}

static const char *rc_name(chat_rc rc)
{
    switch (rc) {
    case CHAT_OK: return "ok";
    case CHAT_ETOOBIG: return "toobig";
    case CHAT_ECANCELED: return "canceled";
    default: return "unexpected";
    }
}

static void sb_tail(strbuf *b, chat_rc rc, const char *id, long retry)
{
    char tmp[64];
    sb_str(b, " rc=");
    sb_str(b, rc_name(rc));
    sb_str(b, " id=");
    sb_esc(b, id, strlen(id));
    snprintf(tmp, sizeof(tmp), " retry=%ld", retry);
    sb_str(b, tmp);
}

/* ---- running the parser ------------------------------------------------- */

typedef struct {
    sse_parser *parser;
    strbuf log;
    int n_events;
    int stop_at; /* return nonzero from the stop_at-th event (1-based); 0 = never */
} rec;

static int on_event(void *ud, const char *type, size_t type_len, const char *data, size_t data_len)
{
    rec *r = ud;
    /* The contract: both NUL-terminated, lengths exact. */
    assert_int_equal(type[type_len], '\0');
    assert_int_equal(data[data_len], '\0');
    assert_true(type_len > 0);
    sb_event(&r->log, type, type_len, data, data_len, sse_last_event_id(r->parser));
    r->n_events++;
    return r->stop_at && r->n_events >= r->stop_at;
}

typedef struct {
    const char *in;
    size_t len;
    const char *expect; /* expected events, e.g. "(message,a,id=)" */
    const char *tail;   /* expected tail; NULL means " rc=ok id= retry=-1" */
    size_t max_line;    /* 0 means BIG */
    size_t max_event;   /* 0 means BIG */
    int stop_at;
} vec;

/*
 * Feeds `in` cut at the ncuts non-decreasing offsets in `cuts`, each piece in
 * its own exactly-sized heap block (empty pieces are fed as NULL, 0). With
 * empty_feeds, an empty feed follows every piece. Checks that errors are sticky.
 * Returns the summary (caller frees).
 */
static char *run(const vec *v, const size_t *cuts, size_t ncuts, int empty_feeds)
{
    rec r = { 0 };
    r.stop_at = v->stop_at;
    r.parser = sse_new(v->max_line ? v->max_line : BIG, v->max_event ? v->max_event : BIG, on_event, &r);
    sb_str(&r.log, "");

    chat_rc first = CHAT_OK;
    size_t start = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t stop = k < ncuts ? cuts[k] : v->len;
        assert_true(stop >= start && stop <= v->len);
        size_t n = stop - start;
        char *piece = n ? malloc(n) : NULL;
        if (n)
            memcpy(piece, v->in + start, n);
        int before = r.n_events;
        chat_rc rc = sse_feed(r.parser, piece, n);
        free(piece);
        if (first != CHAT_OK) {
            /* Errors are sticky and nothing more is dispatched. */
            assert_int_equal(rc, first);
            assert_int_equal(r.n_events, before);
        } else {
            first = rc;
        }
        if (empty_feeds)
            assert_int_equal(sse_feed(r.parser, NULL, 0), first);
        start = stop;
    }
    sb_tail(&r.log, first, sse_last_event_id(r.parser), sse_retry_ms(r.parser));
    sse_free(r.parser);
    return r.log.p;
}

/* Feeds one byte at a time, with an empty feed after each. */
static char *run_bytewise(const vec *v)
{
    size_t *cuts = malloc((v->len + 1) * sizeof(*cuts));
    for (size_t i = 0; i < v->len; i++)
        cuts[i] = i + 1;
    char *out = run(v, cuts, v->len, 1);
    free(cuts);
    return out;
}

static void check_vec(const vec *v)
{
    strbuf exp = { 0 };
    sb_str(&exp, v->expect);
    sb_str(&exp, v->tail ? v->tail : " rc=ok id= retry=-1");

    char *whole = run(v, NULL, 0, 0);
    assert_string_equal(whole, exp.p);
    free(whole);

    for (size_t cut = 0; cut <= v->len; cut++) {
        char *split = run(v, &cut, 1, 0);
        if (strcmp(split, exp.p) != 0)
            print_error("split at %zu of %zu\n", cut, v->len);
        assert_string_equal(split, exp.p);
        free(split);
    }

    char *bytes = run_bytewise(v);
    assert_string_equal(bytes, exp.p);
    free(bytes);
    free(exp.p);
}

#define S(x) .in = (x), .len = sizeof(x) - 1
#define FEED(p, lit) sse_feed((p), (lit), sizeof(lit) - 1)
#define CHECK(...) check_vec(&(vec){ __VA_ARGS__ })

/* ---- docs/PROTOCOLS.md section C, test vector table -------------------------- */

static void test_table_vectors(void **state)
{
    (void)state;
    CHECK(S("data: a\n\n"), .expect = "(message,a,id=)");
    CHECK(S("data:a\r\n\r\n"), .expect = "(message,a,id=)");
    CHECK(S("data:  a\n\n"), .expect = "(message, a,id=)");
    CHECK(S("data: a\ndata: b\n\n"), .expect = "(message,a\\x0ab,id=)");
    CHECK(S("data\n\n"), .expect = "(message,,id=)");
    CHECK(S("event: x\ndata: {}\n\n"), .expect = "(x,{},id=)");
    CHECK(S("event: x\n\n"), .expect = "");
    CHECK(S(": keepalive\n\n"), .expect = "");
    CHECK(S("\xEF\xBB\xBF"
            "data: a\n\n"),
          .expect = "(message,a,id=)");
    CHECK(S("data: a\r\rdata: b\r\r"), .expect = "(message,a,id=)(message,b,id=)");
    CHECK(S("data: a\r\n\r\n"), .expect = "(message,a,id=)"); /* the split at 8 is the table's case */
    CHECK(S("data: a"), .expect = "");
    CHECK(S("DATA: a\n\n"), .expect = "");
    CHECK(S("data : a\n\n"), .expect = "");
    CHECK(S("id: 1\x00\ndata: a\n\n"), .expect = "(message,a,id=)");
    CHECK(S("retry: 1e3\ndata: a\n\n"), .expect = "(message,a,id=)");
    CHECK(S("data: [DONE]\n\n"), .expect = "(message,[DONE],id=)");
}

/* The table's explicit two-read case: a CR ending one read, LF starting the next. */
static void test_cr_then_lf_across_feeds(void **state)
{
    (void)state;
    rec r = { 0 };
    r.parser = sse_new(BIG, BIG, on_event, &r);
    sb_str(&r.log, "");
    assert_int_equal(FEED(r.parser, "data: a\r"), CHAT_OK);
    assert_int_equal(r.n_events, 0);
    assert_int_equal(sse_feed(r.parser, NULL, 0), CHAT_OK); /* an empty read keeps the pending CR */
    assert_int_equal(FEED(r.parser, "\n"), CHAT_OK);
    assert_int_equal(r.n_events, 0); /* CR+LF were one line ending: no early dispatch */
    assert_int_equal(FEED(r.parser, "\r\n"), CHAT_OK);
    assert_int_equal(r.n_events, 1);
    assert_string_equal(r.log.p, "(message,a,id=)");
    /* A CR at the end followed by a CR is two line endings. */
    assert_int_equal(FEED(r.parser, "data: b\r"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "\r"), CHAT_OK);
    assert_int_equal(r.n_events, 2);
    /* A CR at the end followed by text: the text starts a new line. */
    assert_int_equal(FEED(r.parser, "data: c\r"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "data: d\n\n"), CHAT_OK);
    assert_string_equal(r.log.p, "(message,a,id=)(message,b,id=)(message,c\\x0ad,id=)");
    sse_free(r.parser);
    free(r.log.p);
}

/* ---- line endings ------------------------------------------------------- */

static void test_line_endings(void **state)
{
    (void)state;
    CHECK(S("data: a\r\ndata: b\rdata: c\n\r\n"), .expect = "(message,a\\x0ab\\x0ac,id=)");
    CHECK(S("data: 1\n\rdata: 2\r\n\ndata: 3\r\r\n"), .expect = "(message,1,id=)(message,2,id=)(message,3,id=)");
    CHECK(S("data: a\n\r\n\r\n\n\r"), .expect = "(message,a,id=)");
    /* LF CR is two endings, not one. */
    CHECK(S("data: a\n\rdata: b\n\n"), .expect = "(message,a,id=)(message,b,id=)");
    /* Only CR and LF end lines: VT, FF, NEL and U+2028 are content. */
    CHECK(S("data: a\x0b\x0c\xc2\x85\xe2\x80\xa8z\n\n"),
          .expect = "(message,a\\x0b\\x0c\\xc2\\x85\\xe2\\x80\\xa8z,id=)");
    CHECK(S("\n\n\r\r\r\n"), .expect = "");
}

/* ---- BOM ---------------------------------------------------------------- */

static void test_bom(void **state)
{
    (void)state;
    /* Only one BOM is dropped: a second one is part of the field name. */
    CHECK(S("\xEF\xBB\xBF\xEF\xBB\xBF"
            "data: a\n\ndata: b\n\n"),
          .expect = "(message,b,id=)");
    /* Not at stream start: content. */
    CHECK(S("data: a\n\n\xEF\xBB\xBF"
            "data: b\n\n"),
          .expect = "(message,a,id=)");
    CHECK(S("data: \xEF\xBB\xBFx\n\n"), .expect = "(message,\\xef\\xbb\\xbfx,id=)");
    /* A partial BOM is ordinary content of the first line. */
    CHECK(S("\xEF"
            "data: a\n\ndata: b\n\n"),
          .expect = "(message,b,id=)");
    CHECK(S("\xEF\xBB"
            "data: a\n\ndata: b\n\n"),
          .expect = "(message,b,id=)");
    CHECK(S("\xEF\xBB\n"
            "data: b\n\n"),
          .expect = "(message,b,id=)");
    CHECK(S("\xEF\xBB\r\n"
            "data: b\n\n"),
          .expect = "(message,b,id=)");
    CHECK(S("\xEF\xBB\xBF\r\n"
            "data: b\r\n\r\n"),
          .expect = "(message,b,id=)");
    CHECK(S("\xEF\xBB\xBF"
            ":c\n"
            "data: b\n\n"),
          .expect = "(message,b,id=)");
    /* A UTF-16 BOM is not honoured: the first line is garbage and ignored. */
    CHECK(S("\xFE\xFF"
            "data: a\n\ndata: b\n\n"),
          .expect = "(message,b,id=)");
    CHECK(S("\xEF\xBB\xBF"), .expect = "");
    CHECK(S("\xEF\xBB"), .expect = "");
}

/* The BOM split over three feeds, explicitly. */
static void test_bom_split_feeds(void **state)
{
    (void)state;
    rec r = { 0 };
    r.parser = sse_new(BIG, BIG, on_event, &r);
    sb_str(&r.log, "");
    assert_int_equal(FEED(r.parser, "\xEF"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "\xBB"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "\xBF"
                                    "da"),
                     CHAT_OK);
    assert_int_equal(FEED(r.parser, "ta: a\n\n"), CHAT_OK);
    assert_string_equal(r.log.p, "(message,a,id=)");
    sse_free(r.parser);
    free(r.log.p);
}

/* ---- fields ------------------------------------------------------------- */

static void test_comments(void **state)
{
    (void)state;
    CHECK(S(":\n\n"), .expect = "");
    CHECK(S(": ping\r\n\r\n: OPENROUTER PROCESSING\n\n"), .expect = "");
    CHECK(S("data: a\n: c\ndata: b\n\n"), .expect = "(message,a\\x0ab,id=)");
    CHECK(S(":data: x\n\ndata: y\n\n"), .expect = "(message,y,id=)");
    /* A comment line is not an empty line: it does not dispatch. */
    CHECK(S("data: a\n:\n"), .expect = "");
}

static void test_field_value_split(void **state)
{
    (void)state;
    CHECK(S("data:a:b\n\n"), .expect = "(message,a:b,id=)");
    CHECK(S("data: :x\n\n"), .expect = "(message,:x,id=)");
    CHECK(S("data:\n\n"), .expect = "(message,,id=)");
    CHECK(S("data: \n\n"), .expect = "(message,,id=)");
    CHECK(S("data:   \n\n"), .expect = "(message,  ,id=)");
    CHECK(S("data:\t a\n\n"), .expect = "(message,\\x09 a,id=)");
    CHECK(S("data: a \n\n"), .expect = "(message,a ,id=)");
    CHECK(S("event:  x\ndata: 1\n\n"), .expect = "( x,1,id=)");
    CHECK(S("event:x\ndata:1\n\n"), .expect = "(x,1,id=)");
}

static void test_data_join(void **state)
{
    (void)state;
    CHECK(S("data\ndata\n\n"), .expect = "(message,\\x0a,id=)");
    CHECK(S("data: a\ndata\n\n"), .expect = "(message,a\\x0a,id=)");
    CHECK(S("data\ndata: a\n\n"), .expect = "(message,\\x0aa,id=)");
    CHECK(S("data: a\ndata: b\ndata: c\n\n"), .expect = "(message,a\\x0ab\\x0ac,id=)");
    /* Other fields between data lines do not break the join. */
    CHECK(S("data: a\nevent: e\nfoo: x\ndata: b\n\n"), .expect = "(e,a\\x0ab,id=)");
}

static void test_event_type(void **state)
{
    (void)state;
    CHECK(S("event: a\nevent: b\ndata: x\n\n"), .expect = "(b,x,id=)");
    /* The type is reset after a dispatch... */
    CHECK(S("event: a\ndata: 1\n\ndata: 2\n\n"), .expect = "(a,1,id=)(message,2,id=)");
    /* ...and after an empty line without data. */
    CHECK(S("event: a\n\ndata: 2\n\n"), .expect = "(message,2,id=)");
    CHECK(S("event:\ndata: x\n\n"), .expect = "(message,x,id=)");
    CHECK(S("event: a\nevent\ndata: x\n\n"), .expect = "(message,x,id=)");
    CHECK(S("data: x\nevent: late\n\n"), .expect = "(late,x,id=)");
    CHECK(S("event: message_stop\ndata: {}\n\n"), .expect = "(message_stop,{},id=)");
}

static void test_id(void **state)
{
    (void)state;
    CHECK(S("id: 1\ndata: a\n\n"), .expect = "(message,a,id=1)", .tail = " rc=ok id=1 retry=-1");
    /* Persists across events. */
    CHECK(S("id: 1\ndata: a\n\ndata: b\n\n"), .expect = "(message,a,id=1)(message,b,id=1)",
          .tail = " rc=ok id=1 retry=-1");
    /* An empty value resets it (with or without a colon). */
    CHECK(S("id: 1\ndata: a\n\nid\ndata: b\n\n"), .expect = "(message,a,id=1)(message,b,id=)");
    CHECK(S("id: 1\ndata: a\n\nid:\ndata: b\n\n"), .expect = "(message,a,id=1)(message,b,id=)");
    /* With NUL it is ignored entirely. */
    CHECK(S("id: 1\n\nid: 2\x00\n\ndata: x\n\n"), .expect = "(message,x,id=1)", .tail = " rc=ok id=1 retry=-1");
    CHECK(S("id: \x00\n\n"), .expect = "");
    /* Committed by the empty line even when nothing is dispatched. */
    CHECK(S("id: 5\n\n"), .expect = "", .tail = " rc=ok id=5 retry=-1");
    /* Not committed when the event is cut off by end of stream. */
    CHECK(S("id: 1\n\nid: 7\ndata: a\n"), .expect = "", .tail = " rc=ok id=1 retry=-1");
    /* The last id field of the event wins; one leading space removed. */
    CHECK(S("id: 1\nid:  x\ndata: a\n\n"), .expect = "(message,a,id= x)", .tail = " rc=ok id= x retry=-1");
    CHECK(S("ID: 1\ndata: a\n\n"), .expect = "(message,a,id=)");
}

static void test_retry(void **state)
{
    (void)state;
    CHECK(S("retry: 1000\n"), .expect = "", .tail = " rc=ok id= retry=1000");
    CHECK(S("retry:007\n"), .expect = "", .tail = " rc=ok id= retry=7");
    CHECK(S("retry: 0\n"), .expect = "", .tail = " rc=ok id= retry=0");
    CHECK(S("retry: 1e3\n"), .expect = "");
    CHECK(S("retry: -5\n"), .expect = "");
    CHECK(S("retry: +5\n"), .expect = "");
    CHECK(S("retry:\n"), .expect = "");
    CHECK(S("retry\n"), .expect = "");
    CHECK(S("retry: 12 \n"), .expect = "");
    CHECK(S("retry:  12\n"), .expect = "");
    CHECK(S("retry: 1\x00\n"), .expect = "");
    CHECK(S("retry: 10\nretry: x\n"), .expect = "", .tail = " rc=ok id= retry=10");
    CHECK(S("retry: 10\nretry: 20\ndata: a\n\n"), .expect = "(message,a,id=)", .tail = " rc=ok id= retry=20");
    CHECK(S("Retry: 10\n"), .expect = "");
    /* Saturates rather than overflowing. */
    char tail[64];
    snprintf(tail, sizeof(tail), " rc=ok id= retry=%ld", LONG_MAX);
    CHECK(S("retry: 99999999999999999999999999999999\n"), .expect = "", .tail = tail);
}

static void test_unknown_and_case(void **state)
{
    (void)state;
    CHECK(S("foo: bar\ndata: a\n\n"), .expect = "(message,a,id=)");
    CHECK(S("error: {\"x\":1}\n\n"), .expect = "");
    CHECK(S("Data: a\n\n"), .expect = "");
    CHECK(S(" data: a\n\n"), .expect = "");
    CHECK(S("data\x00: a\n\n"), .expect = "");
    CHECK(S("dat: a\n\ndataa: b\n\n"), .expect = "");
    CHECK(S("Event: x\ndata: a\n\n"), .expect = "(message,a,id=)");
    CHECK(S("EVENT: x\ndata: a\n\n"), .expect = "(message,a,id=)");
}

static void test_dispatch_and_eof(void **state)
{
    (void)state;
    /* Exactly one trailing LF is removed. */
    CHECK(S("data\ndata\ndata\n\n"), .expect = "(message,\\x0a\\x0a,id=)");
    /* Incomplete events at EOF are discarded. */
    CHECK(S("data: a\n"), .expect = "");
    CHECK(S("data: a\n\ndata: b"), .expect = "(message,a,id=)");
    CHECK(S("data: a\n\ndata: b\n"), .expect = "(message,a,id=)");
    CHECK(S("data: a\n\ndata: b\r"), .expect = "(message,a,id=)");
    CHECK(S(""), .expect = "");
}

/* ---- NUL bytes ---------------------------------------------------------- */

static void test_nul_passthrough(void **state)
{
    (void)state;
    CHECK(S("data: a\x00"
            "b\n\n"),
          .expect = "(message,a\\x00b,id=)");
    CHECK(S("data: \x00\n\n"), .expect = "(message,\\x00,id=)");
    CHECK(S("data: \x00\x00\ndata: \x00\n\n"), .expect = "(message,\\x00\\x00\\x0a\\x00,id=)");
    CHECK(S("event: x\x00y\ndata: 1\n\n"), .expect = "(x\\x00y,1,id=)");
    CHECK(S("\x00\n\ndata: 1\n\n"), .expect = "(message,1,id=)");
}

/* ---- limits ------------------------------------------------------------- */

static void test_line_limit(void **state)
{
    (void)state;
    /* Lines of exactly max_line bytes pass; the line ending and the BOM are not counted. */
    CHECK(S("data: 0123\n\n"), .max_line = 10, .expect = "(message,0123,id=)");
    CHECK(S("data: 0123\r\n\r\n"), .max_line = 10, .expect = "(message,0123,id=)");
    CHECK(S("\xEF\xBB\xBF"
            "data: 0123\n\n"),
          .max_line = 10, .expect = "(message,0123,id=)");
    /* One byte more fails, whether or not its ending has arrived. */
    CHECK(S("data: 01234\n\n"), .max_line = 10, .expect = "", .tail = " rc=toobig id= retry=-1");
    CHECK(S("data: 01234"), .max_line = 10, .expect = "", .tail = " rc=toobig id= retry=-1");
    /* Comments and unknown fields count too. */
    CHECK(S(": 456789012\n"), .max_line = 10, .expect = "", .tail = " rc=toobig id= retry=-1");
    /* Events before the long line are delivered; nothing after it. */
    CHECK(S("data: 1\n\ndata: 01234567890\n\ndata: 2\n\n"), .max_line = 10, .expect = "(message,1,id=)",
          .tail = " rc=toobig id= retry=-1");
    /* A partial BOM counts: it is content. */
    CHECK(S("\xEF\xBB"
            "data: 0123\n\n"),
          .max_line = 10, .expect = "", .tail = " rc=toobig id= retry=-1");
    CHECK(S("\xEF\xBB"
            "data: 01\n\n"),
          .max_line = 10, .expect = "");
}

/* A line that only becomes too long over several feeds fails before its end arrives. */
static void test_line_limit_across_feeds(void **state)
{
    (void)state;
    rec r = { 0 };
    r.parser = sse_new(10, BIG, on_event, &r);
    sb_str(&r.log, "");
    assert_int_equal(FEED(r.parser, "data: 1\n\ndata: 01"), CHAT_OK);
    assert_int_equal(r.n_events, 1);
    assert_int_equal(FEED(r.parser, "23"), CHAT_OK); /* exactly 10 buffered */
    assert_int_equal(FEED(r.parser, "4"), CHAT_ETOOBIG);
    /* Sticky: nothing more parsed or dispatched. */
    assert_int_equal(FEED(r.parser, "\n\n"), CHAT_ETOOBIG);
    assert_int_equal(FEED(r.parser, "data: x\n\n"), CHAT_ETOOBIG);
    assert_int_equal(sse_feed(r.parser, NULL, 0), CHAT_ETOOBIG);
    assert_int_equal(r.n_events, 1);
    sse_free(r.parser);
    free(r.log.p);

    /* An endless line fed in small pieces is refused once past the limit. */
    r = (rec){ 0 };
    r.parser = sse_new(1000, BIG, on_event, &r);
    chat_rc rc = CHAT_OK;
    size_t fed = 0;
    while (rc == CHAT_OK && fed < 100000) {
        rc = FEED(r.parser, "xxxxxxx");
        fed += 7;
    }
    assert_int_equal(rc, CHAT_ETOOBIG);
    assert_true(fed > 1000 && fed <= 1007);
    sse_free(r.parser);
}

static void test_event_limit(void **state)
{
    (void)state;
    CHECK(S("data: 12345\n\n"), .max_event = 5, .expect = "(message,12345,id=)");
    CHECK(S("data: 123456\n\n"), .max_event = 5, .expect = "", .tail = " rc=toobig id= retry=-1");
    /* The joining LF counts; the final LF does not. */
    CHECK(S("data: 12\ndata: 34\n\n"), .max_event = 5, .expect = "(message,12\\x0a34,id=)");
    CHECK(S("data: 12\ndata: 345\n\n"), .max_event = 5, .expect = "", .tail = " rc=toobig id= retry=-1");
    CHECK(S("data\ndata\ndata\ndata\ndata\ndata\n\n"), .max_event = 5,
          .expect = "(message,\\x0a\\x0a\\x0a\\x0a\\x0a,id=)");
    CHECK(S("data\ndata\ndata\ndata\ndata\ndata\ndata\n\n"), .max_event = 5, .expect = "",
          .tail = " rc=toobig id= retry=-1");
    /* The limit is per event: the buffer is reset by each dispatch. */
    CHECK(S("data: 12345\n\ndata: 12345\n\n"), .max_event = 5, .expect = "(message,12345,id=)(message,12345,id=)");
    CHECK(S("data: 1\n\ndata: 123\ndata: 45\n\n"), .max_event = 5, .expect = "(message,1,id=)",
          .tail = " rc=toobig id= retry=-1");
    /* Only data counts towards it. */
    CHECK(S("event: 1234567890\nid: 1234567890\ndata: 1\n\n"), .max_event = 5, .expect = "(1234567890,1,id=1234567890)",
          .tail = " rc=ok id=1234567890 retry=-1");
}

static void test_event_limit_across_feeds(void **state)
{
    (void)state;
    rec r = { 0 };
    r.parser = sse_new(BIG, 10, on_event, &r);
    sb_str(&r.log, "");
    assert_int_equal(FEED(r.parser, "data: 0123\n"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "data: 4567\n"), CHAT_OK); /* "0123\n4567": 9 */
    assert_int_equal(FEED(r.parser, "da"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "ta\n"), CHAT_OK);    /* 10: exactly the limit */
    assert_int_equal(FEED(r.parser, "data: x"), CHAT_OK); /* not known to be too big until its end */
    assert_int_equal(FEED(r.parser, "\r"), CHAT_ETOOBIG);
    assert_int_equal(FEED(r.parser, "\n\n"), CHAT_ETOOBIG);
    assert_int_equal(r.n_events, 0);
    sse_free(r.parser);
    free(r.log.p);

    /* The same event under the limit, dispatched after pieces that split every line. */
    r = (rec){ 0 };
    r.parser = sse_new(BIG, 10, on_event, &r);
    sb_str(&r.log, "");
    assert_int_equal(FEED(r.parser, "data: 0123\nda"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "ta: 4567\nda"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "ta\r"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "\n\r"), CHAT_OK);
    assert_int_equal(FEED(r.parser, "\n"), CHAT_OK);
    assert_string_equal(r.log.p, "(message,0123\\x0a4567\\x0a,id=)");
    sse_free(r.parser);
    free(r.log.p);
}

/* ---- callback stop ------------------------------------------------------ */

static void test_callback_stop(void **state)
{
    (void)state;
    const char three[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    CHECK(S(three), .stop_at = 1, .expect = "(message,1,id=)", .tail = " rc=canceled id= retry=-1");
    CHECK(S(three), .stop_at = 2, .expect = "(message,1,id=)(message,2,id=)", .tail = " rc=canceled id= retry=-1");
    CHECK(S(three), .stop_at = 3, .expect = "(message,1,id=)(message,2,id=)(message,3,id=)",
          .tail = " rc=canceled id= retry=-1");
    CHECK(S(three), .stop_at = 4, .expect = "(message,1,id=)(message,2,id=)(message,3,id=)");

    /* The rest of the piece is not parsed: the retry after the stop is not seen. */
    rec r = { 0 };
    r.stop_at = 1;
    r.parser = sse_new(BIG, BIG, on_event, &r);
    sb_str(&r.log, "");
    assert_int_equal(FEED(r.parser, "data: 1\n\nretry: 5\ndata: 2\n\n"), CHAT_ECANCELED);
    assert_int_equal(r.n_events, 1);
    assert_int_equal(sse_retry_ms(r.parser), -1);
    assert_int_equal(FEED(r.parser, "data: 3\n\n"), CHAT_ECANCELED);
    assert_int_equal(r.n_events, 1);
    sse_free(r.parser);
    free(r.log.p);
}

/* ---- Anthropic streams (docs/PROTOCOLS.md A6) -------------------------------- */

static const char ANTHROPIC_FIXTURE[] =
    "event: message_start\n"
    "data: "
    "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":\"message\","
    "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-opus-latest\",\"stop_reason\":null,\"stop_sequence\":"
    "null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n"
    "\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n"
    "\n"
    "event: message_delta\n"
    "data: "
    "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_"
    "tokens\":6}}\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

static const char *const ANTHROPIC_FIXTURE_EVENTS[][2] = {
    { "message_start",
      "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":\"message\","
      "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-opus-latest\",\"stop_reason\":null,\"stop_sequence\":"
      "null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}" },
    { "content_block_start",
      "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}" },
    { "ping", "{\"type\": \"ping\"}" },
    { "content_block_delta",
      "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}" },
    { "content_block_delta",
      "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}" },
    { "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}" },
    { "message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
                       "\"usage\":{\"output_tokens\":6}}" },
    { "message_stop", "{\"type\":\"message_stop\"}" },
};

static const char ANTHROPIC_2026[] =
    "event: message_start\n"
    "data: "
    "{\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-8\",\"id\":\"msg_\xe2\x80\xa6\",\"type\":"
    "\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"stop_details\":"
    "null,\"usage\":{\"input_tokens\":31,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"cache_"
    "creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":7,\"service_tier\":"
    "\"standard\",\"inference_geo\":\"global\"}}               }\n"
    "\n"
    "event: message_delta\n"
    "data: "
    "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"stop_details\":null},"
    "\"usage\":{\"input_tokens\":31,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":"
    "547}               }\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"       }\n"
    "\n"
    "event: error\n"
    "data: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n"
    "\n";

static const char *const ANTHROPIC_2026_EVENTS[][2] = {
    { "message_start",
      "{\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-8\",\"id\":\"msg_\xe2\x80\xa6\",\"type\":"
      "\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"stop_details\":"
      "null,\"usage\":{\"input_tokens\":31,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"cache_"
      "creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":7,\"service_"
      "tier\":\"standard\",\"inference_geo\":\"global\"}}               }" },
    { "message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
                       "\"stop_details\":null},\"usage\":{\"input_tokens\":31,\"cache_creation_input_tokens\":0,"
                       "\"cache_read_input_tokens\":0,\"output_tokens\":547}               }" },
    { "message_stop", "{\"type\":\"message_stop\"       }" },
    { "error", "{\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}" },
};

/* Replaces every LF of in by `eol`. */
static char *with_eol(const char *in, const char *eol, size_t *out_len)
{
    strbuf b = { 0 };
    sb_str(&b, "");
    for (const char *s = in; *s; s++) {
        if (*s == '\n')
            sb_str(&b, eol);
        else
            sb_add(&b, s, 1);
    }
    *out_len = b.len;
    return b.p;
}

/*
 * Checks `stream` (LF endings) against its expected events, also with CRLF and
 * CR endings and with a BOM in front, with unbounded limits and with limits
 * that fit the longest line and the largest data exactly.
 */
static void check_anthropic(const char *stream, const char *const events[][2], size_t n)
{
    strbuf exp = { 0 };
    sb_str(&exp, "");
    size_t longest_data = 0;
    for (size_t i = 0; i < n; i++) {
        size_t dlen = strlen(events[i][1]);
        sb_event(&exp, events[i][0], strlen(events[i][0]), events[i][1], dlen, "");
        longest_data = dlen > longest_data ? dlen : longest_data;
    }
    size_t longest_line = 0;
    for (const char *s = stream; *s;) {
        size_t l = strcspn(s, "\n");
        longest_line = l > longest_line ? l : longest_line;
        s += l + (s[l] ? 1 : 0);
    }
    assert_true(longest_line == longest_data + strlen("data: "));

    static const char *const eols[] = { "\n", "\r\n", "\r" };
    for (size_t e = 0; e < 3; e++) {
        size_t len;
        char *in = with_eol(stream, eols[e], &len);
        char *bom = malloc(len + 3);
        memcpy(bom, "\xEF\xBB\xBF", 3);
        memcpy(bom + 3, in, len);
        CHECK(.in = in, .len = len, .expect = exp.p);
        CHECK(.in = bom, .len = len + 3, .expect = exp.p);
        CHECK(.in = in, .len = len, .expect = exp.p, .max_line = longest_line, .max_event = longest_data);
        CHECK(.in = bom, .len = len + 3, .expect = exp.p, .max_line = longest_line, .max_event = longest_data);
        free(bom);
        free(in);
    }
    free(exp.p);
}

static void test_anthropic_fixture(void **state)
{
    (void)state;
    check_anthropic(ANTHROPIC_FIXTURE, ANTHROPIC_FIXTURE_EVENTS,
                    sizeof(ANTHROPIC_FIXTURE_EVENTS) / sizeof(ANTHROPIC_FIXTURE_EVENTS[0]));
}

static void test_anthropic_2026(void **state)
{
    (void)state;
    check_anthropic(ANTHROPIC_2026, ANTHROPIC_2026_EVENTS,
                    sizeof(ANTHROPIC_2026_EVENTS) / sizeof(ANTHROPIC_2026_EVENTS[0]));
}

/* ---- misc --------------------------------------------------------------- */

static void test_lifecycle(void **state)
{
    (void)state;
    sse_free(NULL);
    rec r = { 0 };
    r.parser = sse_new(SIZE_MAX, SIZE_MAX, on_event, &r); /* no overflow in capacity maths */
    sb_str(&r.log, "");
    assert_string_equal(sse_last_event_id(r.parser), "");
    assert_int_equal(sse_retry_ms(r.parser), -1);
    assert_int_equal(sse_feed(r.parser, NULL, 0), CHAT_OK);
    assert_int_equal(FEED(r.parser, "id: 9\ndata: a\n\ndata: pending"), CHAT_OK);
    assert_string_equal(r.log.p, "(message,a,id=9)");
    assert_string_equal(sse_last_event_id(r.parser), "9");
    sse_free(r.parser); /* with a pending line and event: ASan checks nothing leaks */
    free(r.log.p);
}

/* Many events of growing size through one parser: buffers are reused and grow correctly. */
static void test_many_events(void **state)
{
    (void)state;
    rec r = { 0 };
    r.parser = sse_new(5000, 5000, on_event, &r);
    strbuf in = { 0 };
    strbuf exp = { 0 };
    sb_str(&in, "");
    sb_str(&exp, "");
    char data[4001];
    for (int i = 0; i < 4000; i += 37) {
        for (int j = 0; j < i; j++)
            data[j] = (char)('a' + (i + j) % 26);
        sb_str(&in, "event: e\ndata: ");
        sb_add(&in, data, (size_t)i);
        sb_str(&in, "\r\n\r\n");
        sb_event(&exp, "e", 1, data, (size_t)i, "");
    }
    /* Fed in pieces of 1000 bytes, unaligned with events. */
    for (size_t off = 0; off < in.len; off += 1000) {
        size_t n = in.len - off < 1000 ? in.len - off : 1000;
        assert_int_equal(sse_feed(r.parser, in.p + off, n), CHAT_OK);
    }
    assert_string_equal(r.log.p, exp.p);
    sse_free(r.parser);
    free(r.log.p);
    free(in.p);
    free(exp.p);
}

/* ---- fuzz: random inputs against a naive reference ---------------------- */

/*
 * The reference: the standard transcribed literally, on the whole input at
 * once, byte by byte, with the data buffer kept as the spec keeps it (each
 * value followed by LF) and the limits checked in their own words.
 */
static char *reference(const vec *v)
{
    size_t max_line = v->max_line ? v->max_line : BIG;
    size_t max_event = v->max_event ? v->max_event : BIG;
    const char *in = v->in;
    size_t len = v->len;
    strbuf log = { 0 };
    strbuf data = { 0 };
    strbuf type = { 0 };
    strbuf idbuf = { 0 };
    strbuf lastid = { 0 };
    sb_str(&log, "");
    sb_str(&data, "");
    sb_str(&type, "");
    sb_str(&idbuf, "");
    sb_str(&lastid, "");
    long retry = -1;
    int events = 0;
    chat_rc rc = CHAT_OK;

    size_t i = 0;
    if (len >= 3 && memcmp(in, "\xEF\xBB\xBF", 3) == 0)
        i = 3;
    else if (len < 3 && memcmp(in, "\xEF\xBB\xBF", len) == 0)
        i = len; /* a BOM cut short by end of stream: nothing to see */
    size_t start = i;
    while (i < len && rc == CHAT_OK) {
        if (in[i] != '\r' && in[i] != '\n') {
            i++;
            continue;
        }
        const char *line = in + start;
        size_t n = i - start;
        if (in[i] == '\r' && i + 1 < len && in[i + 1] == '\n')
            i++;
        i++;
        start = i;

        if (n > max_line) {
            rc = CHAT_ETOOBIG;
        } else if (n == 0) {
            lastid.len = 0;
            sb_add(&lastid, idbuf.p, idbuf.len);
            if (data.len == 0) {
                type.len = 0;
                continue;
            }
            data.len--;
            data.p[data.len] = '\0';
            if (type.len)
                sb_event(&log, type.p, type.len, data.p, data.len, lastid.p);
            else
                sb_event(&log, "message", 7, data.p, data.len, lastid.p);
            data.len = 0;
            type.len = 0;
            events++;
            if (v->stop_at && events >= v->stop_at)
                rc = CHAT_ECANCELED;
        } else if (line[0] == ':') {
            /* comment */
        } else {
            size_t c = 0;
            while (c < n && line[c] != ':')
                c++;
            const char *name = line;
            size_t name_len = c;
            const char *value = c < n ? line + c + 1 : line + n;
            size_t vlen = c < n ? n - c - 1 : 0;
            if (vlen > 0 && value[0] == ' ') {
                value++;
                vlen--;
            }
            if (name_len == 4 && memcmp(name, "data", 4) == 0) {
                sb_add(&data, value, vlen);
                sb_add(&data, "\n", 1);
                if (data.len - 1 > max_event)
                    rc = CHAT_ETOOBIG;
            } else if (name_len == 5 && memcmp(name, "event", 5) == 0) {
                type.len = 0;
                sb_add(&type, value, vlen);
            } else if (name_len == 2 && memcmp(name, "id", 2) == 0) {
                if (!memchr(value, '\0', vlen)) {
                    idbuf.len = 0;
                    sb_add(&idbuf, value, vlen);
                }
            } else if (name_len == 5 && memcmp(name, "retry", 5) == 0) {
                int ok = vlen > 0;
                long ms = 0;
                for (size_t k = 0; k < vlen && ok; k++) {
                    ok = value[k] >= '0' && value[k] <= '9';
                    if (ok && (__builtin_mul_overflow(ms, 10, &ms) || __builtin_add_overflow(ms, value[k] - '0', &ms)))
                        ms = LONG_MAX; /* saturates; stays there since LONG_MAX * 10 overflows again */
                }
                if (ok)
                    retry = ms;
            }
        }
    }
    /* An unterminated last line is discarded, but it must have fitted. */
    if (rc == CHAT_OK && len - start > max_line)
        rc = CHAT_ETOOBIG;
    sb_tail(&log, rc, lastid.p, retry);
    free(data.p);
    free(type.p);
    free(idbuf.p);
    free(lastid.p);
    return log.p;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(uint32_t n)
{
    /* xorshift64*: deterministic, good enough for input generation. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32) % n;
}

static void test_fuzz(void **state)
{
    (void)state;
    static const char *const tokens[] = {
        "data",    "data:", "data: ", "event:", "event: ", "id:",  "id: ",         "retry:",       "retry: ", ":",
        " ",       "\r",    "\n",     "\r\n",   "\n\n",    "\r\r", "\xEF\xBB\xBF", "\xEF",         "\xBB",    "x",
        "message", "1",     "42",     "{}",     "Data",    "e",    "ping",         "\xe2\x80\xa8", "\x00",
    };
    size_t ntok = sizeof(tokens) / sizeof(tokens[0]);
    char in[512];
    for (int iter = 0; iter < 5000; iter++) {
        size_t len = 0;
        int ntokens = (int)rnd(40);
        for (int t = 0; t < ntokens; t++) {
            uint32_t k = rnd((uint32_t)ntok + 2);
            if (k == ntok) { /* an arbitrary byte */
                in[len++] = (char)rnd(256);
            } else if (k == ntok + 1 || tokens[k][0] == '\0') { /* NUL */
                in[len++] = '\0';
            } else {
                size_t n = strlen(tokens[k]);
                memcpy(in + len, tokens[k], n);
                len += n;
            }
        }
        vec v = { .in = in, .len = len };
        if (rnd(2)) {
            v.max_line = 1 + rnd(20);
            v.max_event = 1 + rnd(20);
        }
        if (rnd(4) == 0)
            v.stop_at = 1 + (int)rnd(3);

        char *ref = reference(&v);
        char *whole = run(&v, NULL, 0, 0);
        if (strcmp(ref, whole) != 0) {
            strbuf b = { 0 };
            sb_str(&b, "");
            sb_esc(&b, in, len);
            print_error("iteration %d, input \"%s\", max_line %zu, max_event %zu, stop_at %d\n", iter, b.p, v.max_line,
                        v.max_event, v.stop_at);
            free(b.p);
        }
        assert_string_equal(whole, ref);

        size_t cuts[6];
        size_t ncuts = rnd(6);
        for (size_t c = 0; c < ncuts; c++)
            cuts[c] = len ? rnd((uint32_t)len + 1) : 0;
        for (size_t a = 1; a < ncuts; a++) /* insertion sort: cuts must increase */
            for (size_t b = a; b > 0 && cuts[b - 1] > cuts[b]; b--) {
                size_t tmp = cuts[b];
                cuts[b] = cuts[b - 1];
                cuts[b - 1] = tmp;
            }
        char *split = run(&v, cuts, ncuts, 0);
        assert_string_equal(split, ref);
        if (iter % 8 == 0) {
            char *bytes = run_bytewise(&v);
            assert_string_equal(bytes, ref);
            free(bytes);
        }
        free(split);
        free(whole);
        free(ref);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_vectors),
        cmocka_unit_test(test_cr_then_lf_across_feeds),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_bom_split_feeds),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_field_value_split),
        cmocka_unit_test(test_data_join),
        cmocka_unit_test(test_event_type),
        cmocka_unit_test(test_id),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_unknown_and_case),
        cmocka_unit_test(test_dispatch_and_eof),
        cmocka_unit_test(test_nul_passthrough),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_line_limit_across_feeds),
        cmocka_unit_test(test_event_limit),
        cmocka_unit_test(test_event_limit_across_feeds),
        cmocka_unit_test(test_callback_stop),
        cmocka_unit_test(test_anthropic_fixture),
        cmocka_unit_test(test_anthropic_2026),
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_many_events),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
