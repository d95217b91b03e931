/* Unit tests of core/util.c: the session-id rule, ids and time formats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/util.h"

static void test_valid_id(void **state)
{
    (void)state;
    char max[129], over[130];
    memset(max, 'a', 128);
    max[128] = '\0';
    memset(over, 'a', 129);
    over[129] = '\0';
    const char *good[] = { "a", "test-1", "A.b_c:d-e", "0", "session-abc123", max };
    const char *bad[] = { "", "a b", "a/b", "a%2Fb", "ü", "a\tb", "a\nb", "x?y", "<script>", over, NULL };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(chat_valid_id(good[i]));
    for (size_t i = 0; bad[i]; i++)
        if (chat_valid_id(bad[i]))
            fail_msg("accepted \"%s\"", bad[i]);
    assert_false(chat_valid_id(NULL));
}

static void test_random_id(void **state)
{
    (void)state;
    char a[64], b[64];
    chat_random_id(a, sizeof a, "req_", 12);
    chat_random_id(b, sizeof b, "req_", 12);
    assert_int_equal(strlen(a), 4 + 24);
    assert_true(strncmp(a, "req_", 4) == 0);
    assert_string_not_equal(a, b);
    assert_true(chat_valid_id(a));
    char small[8];
    chat_random_id(small, sizeof small, "req_", 12); /* too small: empty, never overflow */
    assert_string_equal(small, "");
}

static void test_time_formats(void **state)
{
    (void)state;
    char buf[32];
    chat_format_rfc3339(1795670592123LL, buf);
    assert_string_equal(buf, "2026-11-26T05:23:12.123Z");
    chat_format_rfc3339(0, buf);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    chat_format_iso_local(1795670592123LL, buf); /* local time: check the shape only */
    assert_int_equal(strlen(buf), 26);
    assert_true(buf[10] == 'T' && buf[19] == '.');
    assert_true(strcmp(buf + 20, "123000") == 0);
}

static void test_utf8_trim(void **state)
{
    (void)state;
    char a[] = "caf\xc3\xa9"; /* complete: unchanged */
    chat_utf8_trim(a);
    assert_string_equal(a, "caf\xc3\xa9");
    char b[] = "caf\xc3"; /* a cut 2-byte sequence */
    chat_utf8_trim(b);
    assert_string_equal(b, "caf");
    char c[] = "x\xf0\x9f\x8e"; /* a cut 4-byte sequence */
    chat_utf8_trim(c);
    assert_string_equal(c, "x");
    char d[] = "x\xf0\x9f\x8e\x89"; /* complete 4-byte */
    chat_utf8_trim(d);
    assert_string_equal(d, "x\xf0\x9f\x8e\x89");
    char e[] = "";
    chat_utf8_trim(e);
    assert_string_equal(e, "");
}

static void escaped(const char *in, size_t len, const char *want)
{
    char *got = chat_utf8_escape(in, len);
    assert_string_equal(got, want);
    free(got);
}

/* Client bytes become JSON-safe text: invalid bytes as \xHH, valid UTF-8 kept. */
static void test_utf8_escape(void **state)
{
    (void)state;
    escaped("/v1/caf\xc3\xa9", 9, "/v1/caf\xc3\xa9");       /* valid: unchanged */
    escaped("/v1/\xff", 5, "/v1/\\xff");                    /* a byte that never starts UTF-8 */
    escaped("\x80\xbf", 2, "\\x80\\xbf");                   /* stray continuation bytes */
    escaped("\xc0\xaf", 2, "\\xc0\\xaf");                   /* overlong '/' */
    escaped("\xe0\x80\xaf", 3, "\\xe0\\x80\\xaf");          /* overlong 3-byte */
    escaped("\xf0\x80\x80\xaf", 4, "\\xf0\\x80\\x80\\xaf"); /* overlong 4-byte */
    escaped("\xed\xa0\x80", 3, "\\xed\\xa0\\x80");          /* a surrogate */
    escaped("\xf4\x90\x80\x80", 4, "\\xf4\\x90\\x80\\x80"); /* above U+10FFFF */
    escaped("a\xe2\x82", 3, "a\\xe2\\x82");                 /* cut short */
    escaped("a\x01\x7f", 3, "a\x01\x7f");                   /* control characters are valid UTF-8 */
    escaped("a\0b", 3, "a\\x00b");                          /* NUL */
    escaped("\xf0\x9f\x8e\x89!", 5, "\xf0\x9f\x8e\x89!");   /* 4-byte */
    escaped("", 0, "");
    for (unsigned b = 0x80; b <= 0xff; b++) {
        char in[2] = { (char)b, 0 };
        json_t *j = chat_json_text(in);
        assert_non_null(j);
        char want[8];
        snprintf(want, sizeof want, "\\x%02x", b);
        assert_string_equal(json_string_value(j), want);
        json_decref(j);
    }
    json_t *ok = chat_json_text("caf\xc3\xa9");
    assert_string_equal(json_string_value(ok), "caf\xc3\xa9");
    json_decref(ok);
    json_t *null = chat_json_text(NULL);
    assert_true(json_is_null(null));
    json_decref(null);
    assert_int_equal(chat_utf8_seq((const unsigned char *)"\xc3\xa9", 2), 2);
    assert_int_equal(chat_utf8_seq((const unsigned char *)"\xc3\xa9", 1), 0);
}

static void test_clocks(void **state)
{
    (void)state;
    int64_t m1 = chat_mono_ms(), u1 = chat_mono_us();
    assert_true(m1 > 0 && u1 > 0);
    assert_true(chat_mono_ms() >= m1);
    assert_true(chat_now_ms() > 1700000000000LL);
}

static void test_hex(void **state)
{
    (void)state;
    static const char digits[] = "0123456789abcdef";
    for (int c = 0; c < 256; c++) {
        const char *at = c ? strchr(digits, c) : NULL;
        int lower = at ? (int)(at - digits) : -1;
        int any = c >= 'A' && c <= 'F' ? c - 'A' + 10 : lower;
        assert_int_equal(chat_hex_lower(c), lower);
        assert_int_equal(chat_hex_value(c), any);
    }
}

static void test_b64(void **state)
{
    (void)state;
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int c = 0; c < 256; c++) {
        const char *at = c ? strchr(alphabet, c) : NULL;
        assert_int_equal(chat_b64_value(c), at ? (int)(at - alphabet) : -1);
    }
    static const char *const good[] = { "AAAA", "QQ==", "QUI=", "QUJD", "aGVsbG8gd29ybGQ=", "+/+/" };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(chat_b64_canonical(good[i], strlen(good[i])));
    /* empty, a length not a multiple of 4, '=' inside or three of them, a foreign byte,
     * URL-safe digits, and stray bits before the padding ("QR==" and "QUJ=" decode like
     * "QQ==" and "QUI=" but are not their canonical form) */
    static const char *const bad[] = { "", "QQ=", "QUJDR", "Q=Q=", "A===", "QU I", "QUJ\n", "-_-_", "QR==", "QUJ=" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(chat_b64_canonical(bad[i], strlen(bad[i])));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_id),  cmocka_unit_test(test_random_id),   cmocka_unit_test(test_time_formats),
        cmocka_unit_test(test_utf8_trim), cmocka_unit_test(test_utf8_escape), cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_hex),       cmocka_unit_test(test_b64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
