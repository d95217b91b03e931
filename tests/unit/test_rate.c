/*
 * test_rate.c: unit tests for the "N/unit" rate parser (src/core/rate.h), which
 * the config loader and the rate limiters of guard/ share.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/rate.h"

#define SEC 1000
#define MIN (60 * SEC)
#define HOUR (60 * MIN)

/* Valid texts, and every kind of bad one with the words its error must hold. */
static void test_parse(void **state)
{
    (void)state;
    const struct {
        const char *text;
        int64_t count, window_ms;
    } ok[] = {
        { "10/minute", 10, MIN },
        { "5/second", 5, SEC },
        { "100/hour", 100, HOUR },
        { "1/second", 1, SEC },
        { "1000000000/hour", 1000000000, HOUR },
        { "off", 0, 0 },
        { "OFF", 0, 0 },
        { "7/Minute", 7, MIN },
        { "3/HOUR", 3, HOUR },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        chat_rate s = { -1, -1 };
        char err[200] = "x";
        if (chat_rate_parse(ok[i].text, &s, err, sizeof err) != CHAT_OK)
            fail_msg("%s: %s", ok[i].text, err);
        assert_int_equal(s.count, ok[i].count);
        assert_int_equal(s.window_ms, ok[i].window_ms);
        assert_string_equal(err, "");
    }
    const struct {
        const char *text;
        const char *msg; /* a substring the error must contain */
    } bad[] = {
        { NULL, "empty" },
        { "", "empty" },
        { "10", "no /unit" },
        { "/minute", "no count" },
        { "0/minute", "use \"off\"" },
        { "-1/minute", "plain decimal" },
        { "+1/minute", "plain decimal" },
        { " 10/minute", "plain decimal" },
        { "10 /minute", "plain decimal" },
        { "1.5/second", "plain decimal" },
        { "1e3/second", "plain decimal" },
        { "010/minute", "leading zero" },
        { "1000000001/second", "above 1000000000" },
        { "99999999999999999999999999/hour", "above 1000000000" },
        { "10/min", "unknown unit \"min\"" },
        { "10/minutes", "unknown unit" },
        { "10/", "unknown unit \"\"" },
        { "10/minute ", "unknown unit" },
        { "10/minute/x", "unknown unit \"minute/x\"" },
        { "10/day", "unknown unit" },
        { "10/\xa2hour\x1b[2J", "unknown unit \"\\xa2hour\\x1b[2J\"" }, /* quoted as printable ASCII */
        { "of", "no /unit" },
        { "unlimited", "no /unit" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        chat_rate s = { -1, -1 };
        char err[200] = "";
        assert_int_equal(chat_rate_parse(bad[i].text, &s, err, sizeof err), CHAT_EINVAL);
        if (!strstr(err, bad[i].msg))
            fail_msg("%s: error \"%s\" lacks \"%s\"", bad[i].text ? bad[i].text : "(null)", err, bad[i].msg);
        assert_int_equal(s.count, 0);
        assert_int_equal(s.window_ms, 0);
    }
    /* err may be absent; a short err is truncated, not overrun */
    chat_rate s;
    assert_int_equal(chat_rate_parse("x", &s, NULL, 0), CHAT_EINVAL);
    char tiny[8];
    assert_int_equal(chat_rate_parse("10/fortnight", &s, tiny, sizeof tiny), CHAT_EINVAL);
    assert_int_equal(strlen(tiny), sizeof tiny - 1);
}

/* The bounds chat_rate_valid accepts: off, or a count and window within range. */
static void test_valid(void **state)
{
    (void)state;
    const struct {
        chat_rate r;
        bool valid;
    } cases[] = {
        { { 0, 0 }, true },
        { { 0, 12345 }, true },
        { { 1, 1 }, true },
        { { 10, MIN }, true },
        { { CHAT_RATE_MAX_COUNT, CHAT_RATE_MAX_WINDOW_MS }, true },
        { { CHAT_RATE_MAX_COUNT + 1, MIN }, false },
        { { 10, CHAT_RATE_MAX_WINDOW_MS + 1 }, false },
        { { 10, 0 }, false },
        { { -1, MIN }, false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (chat_rate_valid(&cases[i].r) != cases[i].valid)
            fail_msg("case %zu: {%lld, %lld} expected %s", i, (long long)cases[i].r.count,
                     (long long)cases[i].r.window_ms, cases[i].valid ? "valid" : "invalid");
    /* What the parser produces is always valid. */
    const char *texts[] = { "off", "1/second", "1000000000/hour", "7/minute" };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        chat_rate r;
        assert_int_equal(chat_rate_parse(texts[i], &r, NULL, 0), CHAT_OK);
        assert_true(chat_rate_valid(&r));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
