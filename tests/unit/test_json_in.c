/* Unit tests of core/json_in.c: the JSON reader that returns what json_loadb
 * returns (tests/fuzz/fuzz_json_in.c compares the two on arbitrary input;
 * these pin the cases by name, and check that the common text takes the fast
 * path rather than jansson's). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json_in.h"

/* Both readers agree on text; returns ours (NULL when both refuse it). */
static json_t *both(const char *text, size_t len, size_t flags)
{
    json_error_t we, ge;
    json_t *want = json_loadb(text, len, flags, &we);
    json_t *got = chat_json_loadb(text, len, flags, &ge);
    if (!want) {
        assert_null(got);
        assert_string_equal(ge.text, we.text);
        assert_int_equal(ge.position, we.position);
        return NULL;
    }
    assert_non_null(got);
    assert_true(json_equal(want, got));
    char *a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY), *b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
    assert_string_equal(a, b);
    assert_string_equal(ge.text, "");
    free(a);
    free(b);
    json_decref(want);
    return got;
}

/* text is read by the fast reader itself, and equals jansson's value. */
static void fast(const char *text, size_t flags)
{
    json_t *v = chat_json_fast_loadb(text, strlen(text), flags);
    if (!v)
        fail_msg("the fast reader handed over: %s", text);
    json_decref(v);
    json_decref(both(text, strlen(text), flags));
}

/* text is handed to jansson, which reads it (want_ok) or refuses it. */
static void handed_over(const char *text, size_t len, size_t flags, int want_ok)
{
    json_t *v = chat_json_fast_loadb(text, len, flags);
    if (v)
        fail_msg("the fast reader took: %.*s", (int)len, text);
    json_t *got = both(text, len, flags);
    assert_int_equal(got != NULL, want_ok);
    json_decref(got);
}

static void test_common_documents_take_the_fast_path(void **state)
{
    (void)state;
    fast("{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"Hello!\"}],"
         "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":2,\"output_tokens\":5}}",
         0);
    fast(" {\"model\" : \"m\", \"messages\" : [ {\"role\":\"user\", \"content\":\"hi\"} ] ,\r\n\t\"temperature\":0.7,"
         "\"top_p\":1e-3,\"max_tokens\":1024,\"stream\":true,\"n\":-0,\"x\":-12.5E+2} \n",
         0);
    fast("[]", 0);
    fast("{}", 0);
    fast("[[[[{\"a\":{\"b\":[true,false,null]}}]]]]", 0);
    /* Escapes, UTF-8 as it is, escaped keys, a surrogate pair. */
    fast("{\"k\\\"ey\\n\":\"q\\\" b\\\\ \\/ \\b\\f\\n\\r\\t caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\u00e9\\u20AC"
         "\\ud83d\\ude00\",\"plain\":\"x\"}",
         0);
    /* The largest integers the fast path reads itself: 18 digits. */
    fast("[999999999999999999,-999999999999999999,0,-0]", 0);
    /* Scalars at the top under JSON_DECODE_ANY. */
    fast("\"s\"", JSON_DECODE_ANY);
    fast(" 42 ", JSON_DECODE_ANY);
    fast("3.5", JSON_DECODE_ANY);
    fast("null", JSON_DECODE_ANY);
}

static void test_values(void **state)
{
    (void)state;
    json_t *v = both("{\"a\":1,\"b\":2.5,\"c\":\"\\u00e9\",\"a\":3}", 34, 0);
    assert_non_null(v);
    assert_true(json_is_integer(json_object_get(v, "a")));
    assert_int_equal(json_integer_value(json_object_get(v, "a")), 3);    /* the last duplicate wins ... */
    assert_string_equal(json_object_iter_key(json_object_iter(v)), "a"); /* ... in the first one's place */
    assert_true(json_is_real(json_object_get(v, "b")));
    assert_string_equal(json_string_value(json_object_get(v, "c")), "\xc3\xa9");
    json_decref(v);

    /* A string with a NUL byte in the middle of the buffer is refused; the buffer need not end with one. */
    const char text[] = { '[', '"', 'a', '"', ']', 'x' };
    v = chat_json_loadb(text, 5, 0, NULL);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_array_get(v, 0)), "a");
    json_decref(v);
    v = chat_json_loads("{\"k\":[1,2]}", 0, NULL);
    assert_int_equal(json_array_size(json_object_get(v, "k")), 2);
    json_decref(v);
}

static void test_errors_are_janssons(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "  ",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "[01]",
        "[-]",
        "[1.]",
        "[1e]",
        "[.5]",
        "[+1]",
        "[truex]",
        "[tru]",
        "[nul]",
        "[\"a\tb\"]",
        "[\"\\x\"]",
        "[\"\\u12\"]",
        "[\"\\udc00\"]",
        "[\"\\ud800\"]",
        "[\"\\ud800\\u0041\"]",
        "[1] [2]",
        "[1]x",
        "\"s\"",
        "42",
        "[\"abc",
        "[\"\xc0\x80\"]",
        "[\"\xed\xa0\x80\"]",
        "[\"\xf4\x90\x80\x80\"]",
        "[\"\xe2\x82\"]",
        "[\"\x80\"]",
        "[\xef\xbb\xbf]",
        "\xef\xbb\xbf[]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        handed_over(bad[i], strlen(bad[i]), 0, 0);
    handed_over("[1]\0", 4, 0, 0);
    handed_over("[\"a\0b\"]", 7, 0, 0);
}

static void test_what_jansson_reads_for_it(void **state)
{
    (void)state;
    handed_over("[1234567890123456789]", 21, 0, 1); /* 19 digits: jansson checks the range */
    handed_over("[99999999999999999999]", 22, 0, 0);
    handed_over("[1e400]", 7, 0, 0); /* real number overflow */
    handed_over("[\"a\\u0000b\"]", 12, JSON_DECODE_ANY | JSON_ALLOW_NUL, 1);
    handed_over("[\"a\\u0000b\"]", 12, 0, 0);
    handed_over("{\"a\":1,\"a\":2}", 13, JSON_REJECT_DUPLICATES, 0);
    handed_over("{\"a\":1}", 7, JSON_REJECT_DUPLICATES, 1);
    /* A real of 64 characters or more. */
    char longreal[100];
    memset(longreal, '1', sizeof longreal);
    longreal[0] = '[';
    longreal[50] = '.';
    longreal[98] = ']';
    handed_over(longreal, 99, 0, 1);

    /* Nesting past CHAT_JSON_IN_DEPTH, still within jansson's limit. */
    char deep[2 * (CHAT_JSON_IN_DEPTH + 1) + 1];
    size_t n = 0;
    for (int i = 0; i <= CHAT_JSON_IN_DEPTH; i++)
        deep[n++] = '[';
    for (int i = 0; i <= CHAT_JSON_IN_DEPTH; i++)
        deep[n++] = ']';
    handed_over(deep, n, 0, 1);
    /* CHAT_JSON_IN_DEPTH levels are read fast. */
    char ok[2 * CHAT_JSON_IN_DEPTH + 1];
    memset(ok, '[', CHAT_JSON_IN_DEPTH);
    memset(ok + CHAT_JSON_IN_DEPTH, ']', CHAT_JSON_IN_DEPTH);
    ok[2 * CHAT_JSON_IN_DEPTH] = '\0';
    fast(ok, 0);
}

/* A long document with escapes everywhere: one scratch buffer serves every string. */
static void test_large_document(void **state)
{
    (void)state;
    size_t parts = 20000;
    size_t cap = parts * 64 + 16, n = 0;
    char *text = malloc(cap);
    text[n++] = '[';
    for (size_t i = 0; i < parts; i++)
        n += (size_t)snprintf(text + n, cap - n, "%s{\"k\\t%zu\":\"v\\u00e9 %zu \\n\",\"n\":%zu}", i ? "," : "", i, i,
                              i);
    text[n++] = ']';
    json_t *v = chat_json_fast_loadb(text, n, 0);
    assert_non_null(v);
    assert_int_equal(json_array_size(v), parts);
    json_decref(v);
    json_decref(both(text, n, 0));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_documents_take_the_fast_path),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors_are_janssons),
        cmocka_unit_test(test_what_jansson_reads_for_it),
        cmocka_unit_test(test_large_document),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
