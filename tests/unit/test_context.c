/* Unit tests of chat/context.c: the context-window budget and truncation boundaries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "chat/context.h"

static store_message msg(const char *role, const char *content, int64_t tokens)
{
    store_message m;
    memset(&m, 0, sizeof m);
    m.role = (char *)role;
    m.content = (char *)content;
    m.tokens = tokens;
    return m;
}

static void test_estimate(void **state)
{
    (void)state;
    assert_int_equal(context_estimate_tokens(""), 0);
    assert_int_equal(context_estimate_tokens(NULL), 0);
    assert_int_equal(context_estimate_tokens("a"), 1);
    assert_int_equal(context_estimate_tokens("abcd"), 1);
    assert_int_equal(context_estimate_tokens("abcde"), 2);
    /* code points, not bytes: four 2-byte and one 4-byte character = 5 code points */
    assert_int_equal(context_estimate_tokens("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xf0\x9f\x8e\x89"), 2);
}

/* System "sys." (1 token), new message 8 chars (2 tokens), history of 3 turns of 10 tokens each. */
static store_message hist6[6];
static void setup_hist(void)
{
    for (int i = 0; i < 6; i++)
        hist6[i] = msg(i % 2 ? "assistant" : "user", "ignored: tokens are known", 5);
}

static void test_everything_fits(void **state)
{
    (void)state;
    setup_hist();
    context_plan p;
    assert_int_equal(context_fit(hist6, 6, "sys.", "12345678", 1000, 100, &p), CHAT_OK);
    assert_int_equal(p.first, 0);
    assert_int_equal(p.truncated_turns, 0);
    assert_int_equal(p.tokens, 1 + 2 + 30);
    assert_int_equal(p.budget, 900);
}

static void test_exactly_at_budget_fits(void **state)
{
    (void)state;
    setup_hist();
    context_plan p;
    /* 33 tokens, budget 33: nothing left out */
    assert_int_equal(context_fit(hist6, 6, "sys.", "12345678", 43, 10, &p), CHAT_OK);
    assert_int_equal(p.truncated_turns, 0);
    assert_int_equal(p.tokens, 33);
}

static void test_one_over_drops_oldest_turn(void **state)
{
    (void)state;
    setup_hist();
    context_plan p;
    /* budget 32: one whole turn (10 tokens) goes */
    assert_int_equal(context_fit(hist6, 6, "sys.", "12345678", 42, 10, &p), CHAT_OK);
    assert_int_equal(p.truncated_turns, 1);
    assert_int_equal(p.first, 2);
    assert_int_equal(p.tokens, 23);
    assert_string_equal(hist6[p.first].role, "user"); /* the first message sent is a user message */
}

static void test_drop_all_history(void **state)
{
    (void)state;
    setup_hist();
    context_plan p;
    assert_int_equal(context_fit(hist6, 6, "sys.", "12345678", 13, 10, &p), CHAT_OK);
    assert_int_equal(p.truncated_turns, 3);
    assert_int_equal(p.first, 6);
    assert_int_equal(p.tokens, 3);
}

static void test_single_message_larger_than_budget(void **state)
{
    (void)state;
    setup_hist();
    context_plan p;
    assert_int_equal(context_fit(hist6, 6, "sys.", "12345678", 12, 10, &p), CHAT_ETOOBIG);
    assert_int_equal(p.budget, 2);
    assert_int_equal(p.tokens, 33);
    assert_int_equal(context_fit(NULL, 0, "", "123456789", 12, 10, &p), CHAT_ETOOBIG);
}

static void test_unknown_counts_are_estimated(void **state)
{
    (void)state;
    store_message h[2] = {msg("user", "12345678", -1), msg("assistant", "1234", -1)};
    context_plan p;
    assert_int_equal(context_fit(h, 2, NULL, "1234", 100, 10, &p), CHAT_OK);
    assert_int_equal(p.tokens, 2 + 1 + 1);
}

static void test_odd_history_drops_leading_message_first(void **state)
{
    (void)state;
    store_message h[3] = {msg("assistant", "x", 4), msg("user", "x", 4), msg("assistant", "x", 4)};
    context_plan p;
    assert_int_equal(context_fit(h, 3, NULL, "1234", 10, 1, &p), CHAT_OK);
    assert_int_equal(p.first, 1);
    assert_int_equal(p.truncated_turns, 0);
    assert_int_equal(p.tokens, 9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_estimate),
        cmocka_unit_test(test_everything_fits),
        cmocka_unit_test(test_exactly_at_budget_fits),
        cmocka_unit_test(test_one_over_drops_oldest_turn),
        cmocka_unit_test(test_drop_all_history),
        cmocka_unit_test(test_single_message_larger_than_budget),
        cmocka_unit_test(test_unknown_counts_are_estimated),
        cmocka_unit_test(test_odd_history_drops_leading_message_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
