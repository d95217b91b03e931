/* Unit tests of core/json_out.c: the JSON writer that equals json_dumps byte
 * for byte (tests/fuzz/fuzz_json_out.c compares the two on arbitrary input;
 * these pin the cases by name). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json_out.h"

/* Both writers, same flags: same text (or both NULL); returns ours. */
static char *both(const json_t *v, size_t flags)
{
    char *want = json_dumps(v, flags);
    size_t len = 0;
    char *got = chat_json_dumps(v, flags, &len);
    if (!want) {
        assert_null(got);
        return NULL;
    }
    assert_non_null(got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(want);
    return got;
}

static void expect(const json_t *v, size_t flags, const char *text)
{
    char *s = both(v, flags);
    assert_non_null(s);
    assert_string_equal(s, text);
    free(s);
}

static void test_escapes(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:s}", "k\"ey", "q\" b\\ \b\f\n\r\t \x01\x1f / \x7f caf\xc3\xa9 \xf0\x9f\x98\x80");
    expect(v, JSON_COMPACT,
           "{\"k\\\"ey\":\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0001\\u001F / \x7f caf\xc3\xa9 \xf0\x9f\x98\x80\"}");
    expect(v, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH,
           "{\"k\\\"ey\":\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0001\\u001F \\/ \x7f caf\\u00E9 \\uD83D\\uDE00\"}");
    json_decref(v);

    json_t *nul = json_stringn("a\0b", 3);
    expect(nul, JSON_ENCODE_ANY, "\"a\\u0000b\"");
    json_decref(nul);
}

static void test_numbers_and_layout(void **state)
{
    (void)state;
    json_t *v = json_pack("[I,I,i,f,f,f,n,b,b,{},[],{s:i,s:[]}]", (json_int_t)INT64_MIN, (json_int_t)INT64_MAX, 0, 0.1,
                          1e300, 3.0, 1, 0, "a", 1, "b");
    char *compact = both(v, JSON_COMPACT);
    assert_non_null(compact);
    free(compact);
    expect(v, JSON_COMPACT | JSON_REAL_PRECISION(3),
           "[-9223372036854775808,9223372036854775807,0,0.1,1e300,3.0,null,true,false,{},[],{\"a\":1,\"b\":[]}]");
    expect(v, 0,
           "[-9223372036854775808, 9223372036854775807, 0, 0.10000000000000001, 1.0000000000000001e300, 3.0, null, "
           "true, false, {}, [], {\"a\": 1, \"b\": []}]");
    json_decref(v);
}

static void test_what_json_dumps_refuses(void **state)
{
    (void)state;
    assert_null(chat_json_dumps(NULL, JSON_COMPACT, NULL));
    json_t *s = json_string("x");
    assert_null(both(s, JSON_COMPACT)); /* not a container without JSON_ENCODE_ANY */
    expect(s, JSON_COMPACT | JSON_ENCODE_ANY, "\"x\"");
    json_decref(s);

    /* Invalid UTF-8 only gets in through the _nocheck constructors. */
    const char *bad[] = { "\xc0\x80", "\xed\xa0\x80", "\xf5\x80\x80\x80", "ok \xe2\x82", "\x80" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *b = json_pack("[o]", json_string_nocheck(bad[i]));
        assert_null(both(b, JSON_COMPACT));
        assert_null(both(b, JSON_COMPACT | JSON_ENSURE_ASCII));
        json_decref(b);
        json_t *o = json_object();
        json_object_set_new_nocheck(o, bad[i], json_true());
        /* jansson ignores a key's failure: the key's text so far, unclosed,
         * then the value ({":true} here). The same bytes, not NULL. */
        char *t = both(o, JSON_COMPACT);
        assert_non_null(t);
        free(t);
        json_decref(o);
    }
}

static void test_cycle_and_depth(void **state)
{
    (void)state;
    /* A value that contains itself: json_dumps refuses it, and so does the
     * writer (past CHAT_JSON_OUT_DEPTH it hands over to json_dumps). */
    json_t *a = json_array(), *b = json_array();
    json_array_append(a, b);
    json_array_append(b, a);
    assert_null(both(a, JSON_COMPACT));
    json_array_clear(b);
    json_decref(a);
    json_decref(b);

    /* Deeper than CHAT_JSON_OUT_DEPTH but acyclic: the same text. */
    json_t *deep = json_array();
    json_t *top = deep;
    for (int i = 0; i < CHAT_JSON_OUT_DEPTH + 10; i++) {
        json_t *next = json_array();
        json_array_append_new(deep, next);
        deep = next;
    }
    char *s = both(top, JSON_COMPACT);
    assert_non_null(s);
    assert_int_equal(strlen(s), 2 * (CHAT_JSON_OUT_DEPTH + 11));
    free(s);
    json_decref(top);
}

static void test_other_flags_delegate(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:i,s:i}", "b", 1, "a", 2);
    expect(v, JSON_INDENT(2), "{\n  \"b\": 1,\n  \"a\": 2\n}");
    expect(v, JSON_COMPACT | JSON_SORT_KEYS, "{\"a\":2,\"b\":1}");
    expect(v, JSON_COMPACT | JSON_PRESERVE_ORDER, "{\"b\":1,\"a\":2}");
    json_decref(v);
}

/* Strings are scanned sixteen (SSE2) and eight bytes at a time: every byte that ends a run, at
 * every offset of a word and across words, under every flag that changes the
 * bytes that end a run. */
static void test_word_scan_boundaries(void **state)
{
    (void)state;
    static const char *const specials[] = { "\"",   "\\", "\n",       "\x01",         "\x1f",
                                            "\x7f", "/",  "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                            " ",    "~" };
    static const size_t flag_sets[] = { JSON_COMPACT, JSON_COMPACT | JSON_ESCAPE_SLASH,
                                        JSON_COMPACT | JSON_ENSURE_ASCII,
                                        JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH };
    char buf[64];
    for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++)
        for (size_t len = 1; len <= 40; len += 3)
            for (size_t at = 0; at < len; at++) {
                size_t sl = strlen(specials[k]);
                if (at + sl > len)
                    continue;
                memset(buf, 'a', len);
                memcpy(buf + at, specials[k], sl);
                buf[len] = '\0';
                json_t *v = json_pack("[s]", buf);
                assert_non_null(v);
                for (size_t f = 0; f < sizeof flag_sets / sizeof flag_sets[0]; f++) {
                    char *s = both(v, flag_sets[f]);
                    assert_non_null(s);
                    free(s);
                }
                json_decref(v);
            }
}

/* A string written with chat_json_write_plain in a hole of [hole, 1]. */
typedef struct plain_arg {
    const char *s;
    size_t n;
} plain_arg;

static bool write_plain(chat_json_writer *w, void *ud)
{
    const plain_arg *a = ud;
    return chat_json_write_plain(w, a->s, a->n);
}

/* chat_json_plain says which strings need no escape, and what
 * chat_json_write_plain writes for those is json_dumps's text, under every
 * flag set (copied where the flags allow, escaped where they do not). */
static void test_plain_strings(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool plain;
    } cases[] = {
        { "", true },
        { "hello world", true },
        { "a/b", true },
        { "caf\xc3\xa9", true },
        { "\xe2\x82\xac 5", true },
        { "\xf0\x9f\x98\x80", true },
        { "del \x7f", true },
        { "~", true },
        { "say \"hi\"", false },
        { "back\\slash", false },
        { "two\nlines", false },
        { "tab\t", false },
        { "\x01", false },
        { "\x1f", false },
        { "bad \xff", false },
        { "cut \xc3", false },
        { "\xed\xa0\x80", false }, /* a surrogate's encoding is not UTF-8 */
    };
    static const size_t flag_sets[] = { JSON_COMPACT, JSON_COMPACT | JSON_ESCAPE_SLASH,
                                        JSON_COMPACT | JSON_ENSURE_ASCII,
                                        JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH };
    char buf[200];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (size_t pad = 0; pad < 40; pad += 7) { /* across the 16- and 8-byte scans */
            size_t sl = strlen(cases[k].s);
            memset(buf, 'x', pad);
            memcpy(buf + pad, cases[k].s, sl);
            memset(buf + pad + sl, 'y', pad);
            size_t n = 2 * pad + sl;
            buf[n] = '\0';
            assert_int_equal(chat_json_plain(buf, n), cases[k].plain);
            if (!cases[k].plain)
                continue;
            json_t *hole = json_array();
            json_t *doc = json_pack("[O,i]", hole, 1);
            json_t *want_doc = json_pack("[s%,i]", buf, n, 1);
            assert_non_null(want_doc);
            plain_arg a = { buf, n };
            for (size_t f = 0; f < sizeof flag_sets / sizeof flag_sets[0]; f++) {
                char *want = chat_json_dumps(want_doc, flag_sets[f], NULL);
                char *got = chat_json_dumps_splice(doc, flag_sets[f], hole, write_plain, &a, NULL);
                assert_non_null(want);
                assert_non_null(got);
                assert_string_equal(got, want);
                free(want);
                free(got);
            }
            json_decref(want_doc);
            json_decref(doc);
            json_decref(hole);
        }
}

typedef struct reserve_arg {
    size_t reserve;
    const char *s;
    size_t n;
} reserve_arg;

static bool write_reserved(chat_json_writer *w, void *ud)
{
    const reserve_arg *a = ud;
    chat_json_write_reserve(w, a->reserve);
    chat_json_write_raw(w, "[", 1);
    bool ok = chat_json_write_string(w, a->s, a->n);
    chat_json_write_raw(w, ",", 1);
    ok = ok && chat_json_write_plain(w, "", 0);
    chat_json_write_raw(w, "]", 1);
    return ok;
}

/* A reservation changes only the room, never the text: too small (the writer
 * doubles past it), exact, or far too large, after a prefix or not. */
static void test_write_reserve(void **state)
{
    (void)state;
    size_t n = 70000;
    char *text = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        text[i] = "plain words \"quoted\"\n"[i % 21];
    text[n] = '\0';
    json_t *want_doc = json_pack("{s:s,s:[s%,s]}", "model", "m", "messages", text, n, "");
    char *want = chat_json_dumps(want_doc, JSON_COMPACT, NULL);
    assert_non_null(want);
    static const size_t reserves[] = { 0, 1, 100, 69999, 70000, 80000, 1 << 22 };
    for (size_t k = 0; k < sizeof reserves / sizeof reserves[0]; k++) {
        json_t *hole = json_array();
        json_t *doc = json_pack("{s:s,s:O}", "model", "m", "messages", hole);
        reserve_arg a = { reserves[k], text, n };
        size_t len = 0;
        char *got = chat_json_dumps_splice(doc, JSON_COMPACT, hole, write_reserved, &a, &len);
        assert_non_null(got);
        assert_string_equal(got, want);
        assert_int_equal(len, strlen(want));
        free(got);
        json_decref(doc);
        json_decref(hole);
    }
    free(want);
    json_decref(want_doc);
    free(text);
}

/* The same document written with the writer and as a tree: the same text,
 * under compact and spaced layouts, ENSURE_ASCII and ESCAPE_SLASH. */
static void test_doc_equals_tree(void **state)
{
    (void)state;
    static const size_t flags[] = { JSON_COMPACT, 0, JSON_COMPACT | JSON_ENSURE_ASCII,
                                    JSON_COMPACT | JSON_ESCAPE_SLASH | JSON_REAL_PRECISION(12) };
    json_t *inner = json_pack("{s:[i,f,b],s:{}}", "xs", 1, 0.3, 1, "e");
    json_t *tree = json_pack("{s:s,s:I,s:n,s:b,s:[{s:s,s:{}},[],s],s:{s:s},s:O,s:s,s:s}", "id", "a/b \"q\"\n", "n",
                             (json_int_t)-9007199254740993LL, "none", "yes", 0, "list", "k", "v", "e",
                             "\xc3\xa9\xf0\x9f\x98\x80", "o", "deep", "x", "val", inner, "text", "", "bad", "");
    for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++) {
        chat_json_writer *w = chat_json_doc_new(flags[k]);
        chat_json_obj(w, NULL);
        chat_json_str(w, "id", "a/b \"q\"\n");
        chat_json_int(w, "n", -9007199254740993LL);
        chat_json_null(w, "none");
        chat_json_bool(w, "yes", false);
        chat_json_arr(w, "list");
        chat_json_obj(w, NULL);
        chat_json_strn(w, "k", "vXX", 1);
        chat_json_obj(w, "e");
        chat_json_close(w);
        chat_json_close(w);
        chat_json_arr(w, NULL);
        chat_json_close(w);
        chat_json_str(w, NULL, "\xc3\xa9\xf0\x9f\x98\x80");
        chat_json_close(w);
        chat_json_obj(w, "o");
        chat_json_str(w, "deep", "x");
        chat_json_close(w);
        chat_json_val(w, "val", inner);
        chat_json_str_or_empty(w, "text", "", 0);
        chat_json_str_or_empty(w, "bad", "ok\xff", 3); /* not UTF-8: "" */
        chat_json_close(w);
        size_t len = 0;
        char *got = chat_json_doc_end(w, &len);
        char *want = json_dumps(tree, flags[k]);
        assert_non_null(got);
        assert_non_null(want);
        assert_string_equal(got, want);
        assert_int_equal(len, strlen(want));
        free(got);
        free(want);
    }
    json_decref(tree);
    json_decref(inner);
}

/* Raw bytes around the top value (an SSE event), a NULL string, a null. */
static void test_doc_raw_and_null(void **state)
{
    (void)state;
    chat_json_writer *w = chat_json_doc_new(JSON_COMPACT);
    chat_json_write_raw(w, "data: ", 6);
    chat_json_arr(w, NULL);
    chat_json_str(w, NULL, NULL);
    chat_json_null(w, NULL);
    chat_json_int(w, NULL, 0);
    chat_json_close(w);
    chat_json_write_raw(w, "\n\n", 2);
    size_t len = 0;
    char *got = chat_json_doc_end(w, &len);
    assert_string_equal(got, "data: [null,null,0]\n\n");
    assert_int_equal(len, 21);
    free(got);
}

/* What makes a document fail: NULL from chat_json_doc_end, nothing leaked. */
static void test_doc_failures(void **state)
{
    (void)state;
    chat_json_writer *w = chat_json_doc_new(JSON_COMPACT); /* a string that is not UTF-8 */
    chat_json_obj(w, NULL);
    chat_json_strn(w, "s", "\xc3", 1);
    chat_json_close(w);
    assert_null(chat_json_doc_end(w, NULL));

    w = chat_json_doc_new(JSON_COMPACT); /* a member of an object without a key */
    chat_json_obj(w, NULL);
    chat_json_int(w, NULL, 1);
    chat_json_close(w);
    assert_null(chat_json_doc_end(w, NULL));

    w = chat_json_doc_new(JSON_COMPACT); /* a NULL value */
    chat_json_arr(w, NULL);
    chat_json_val(w, NULL, NULL);
    chat_json_close(w);
    assert_null(chat_json_doc_end(w, NULL));

    w = chat_json_doc_new(JSON_COMPACT); /* left open */
    chat_json_obj(w, NULL);
    assert_null(chat_json_doc_end(w, NULL));

    w = chat_json_doc_new(JSON_COMPACT); /* a close too many */
    chat_json_arr(w, NULL);
    chat_json_close(w);
    chat_json_close(w);
    assert_null(chat_json_doc_end(w, NULL));

    w = chat_json_doc_new(JSON_COMPACT); /* nesting past 64 */
    for (int i = 0; i < 65; i++)
        chat_json_arr(w, NULL);
    for (int i = 0; i < 65; i++)
        chat_json_close(w);
    assert_null(chat_json_doc_end(w, NULL));

    w = chat_json_doc_new(JSON_COMPACT); /* 64 is fine */
    for (int i = 0; i < 64; i++)
        chat_json_arr(w, NULL);
    for (int i = 0; i < 64; i++)
        chat_json_close(w);
    char *ok = chat_json_doc_end(w, NULL);
    assert_non_null(ok);
    assert_int_equal(strlen(ok), 128);
    free(ok);

    w = chat_json_doc_new(JSON_INDENT(2)); /* a layout it does not write */
    chat_json_arr(w, NULL);
    chat_json_close(w);
    assert_null(chat_json_doc_end(w, NULL));
}

static void test_large_string(void **state)
{
    (void)state;
    size_t n = 3 * 1000 * 1000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = "ab\"\n\xc3\xa9xyz "[i % 11];
    big[n] = '\0';
    /* Cut at a character boundary: the pattern's 11 bytes hold one 2-byte sequence at offsets 4-5. */
    json_t *v = json_pack("{s:s}", "content", big);
    assert_non_null(v);
    char *s = both(v, JSON_COMPACT);
    assert_non_null(s);
    free(s);
    json_decref(v);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_numbers_and_layout),
        cmocka_unit_test(test_what_json_dumps_refuses),
        cmocka_unit_test(test_cycle_and_depth),
        cmocka_unit_test(test_other_flags_delegate),
        cmocka_unit_test(test_word_scan_boundaries),
        cmocka_unit_test(test_large_string),
        cmocka_unit_test(test_write_reserve),
        cmocka_unit_test(test_plain_strings),
        cmocka_unit_test(test_doc_equals_tree),
        cmocka_unit_test(test_doc_raw_and_null),
        cmocka_unit_test(test_doc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
