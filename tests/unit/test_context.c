/* Unit tests of chat/context.c: the context-window budget and truncation boundaries, and the
 * provider messages built from a history (context_messages). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chat/context.h"
#include "core/util.h"

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
    store_message h[2] = { msg("user", "12345678", -1), msg("assistant", "1234", -1) };
    context_plan p;
    assert_int_equal(context_fit(h, 2, NULL, "1234", 100, 10, &p), CHAT_OK);
    assert_int_equal(p.tokens, 2 + 1 + 1);
}

static void test_odd_history_drops_leading_message_first(void **state)
{
    (void)state;
    store_message h[3] = { msg("assistant", "x", 4), msg("user", "x", 4), msg("assistant", "x", 4) };
    context_plan p;
    assert_int_equal(context_fit(h, 3, NULL, "1234", 10, 1, &p), CHAT_OK);
    assert_int_equal(p.first, 1);
    assert_int_equal(p.truncated_turns, 0);
    assert_int_equal(p.tokens, 9);
}

/* Empty messages are left out, the first message is a user message, and
 * same-role neighbours merge with a blank line; first skips a prefix. */
static void test_messages_merge(void **state)
{
    (void)state;
    store_message h[6] = { msg("user", "old", -1),   msg("assistant", "lead", -1), msg("user", "a", -1),
                           msg("assistant", "", -1), msg("user", "b", -1),         msg("assistant", "r", -1) };
    llm_message *m = NULL;
    const char *newest = "c";
    size_t n = context_messages(h, 1, 6, newest, &m);
    assert_int_equal(n, 3);
    assert_string_equal(m[0].role, "user");
    assert_string_equal(m[0].content, "a\n\nb");
    assert_string_equal(m[1].role, "assistant");
    assert_string_equal(m[1].content, "r");
    assert_string_equal(m[2].role, "user");
    assert_string_equal(m[2].content, "c");
    for (size_t i = 0; i < n; i++) /* measured once here, so the request is written without measuring */
        assert_int_equal(m[i].content_len, strlen(m[i].content));
    /* One part: the history's own text, not a copy; merged: made here. */
    assert_ptr_equal(m[1].content, h[5].content);
    assert_ptr_equal(m[2].content, newest);
    assert_true(m[0].content != h[2].content && m[0].content != h[4].content);
    /* Detached, every text is the array's: the history may go. */
    const char *borrowed = m[1].content;
    context_messages_detach(m, n);
    assert_true(m[1].content != borrowed);
    assert_string_equal(m[1].content, "r");
    assert_string_equal(m[0].content, "a\n\nb");
    context_messages_free(m, n);

    n = context_messages(h, 0, 0, "only", &m);
    assert_int_equal(n, 1);
    assert_string_equal(m[0].content, "only");
    context_messages_free(m, n);

    n = context_messages(NULL, 0, 0, "", &m); /* nothing has content */
    assert_int_equal(n, 0);
    context_messages_free(m, n);
}

/* What the history knows of a text (store_message.content_len and
 * content_plain, from a cache read) goes with it when the text is borrowed as
 * it is, and not to a merged text (its "\n\n" needs an escape). */
static void test_messages_carry_plain(void **state)
{
    (void)state;
    store_message h[4] = { msg("user", "q1", -1), msg("assistant", "r1", -1), msg("user", "q2", -1),
                           msg("user", "q3", -1) };
    for (size_t i = 0; i < 4; i++) {
        h[i].content_len = strlen(h[i].content);
        h[i].content_plain = true;
    }
    h[1].content_len = 1; /* taken as known: not measured again */
    llm_message *m = NULL;
    size_t n = context_messages(h, 0, 4, "q4", &m);
    assert_int_equal(n, 3);
    assert_true(m[0].content_plain); /* q1, borrowed */
    assert_int_equal(m[0].content_len, 2);
    assert_true(m[1].content_plain); /* r1, borrowed, with the length it came with */
    assert_int_equal(m[1].content_len, 1);
    assert_false(m[2].content_plain); /* q2 + q3 + q4, merged here */
    assert_string_equal(m[2].content, "q2\n\nq3\n\nq4");
    context_messages_free(m, n);
    h[0].content_plain = false;
    n = context_messages(h, 0, 2, "q", &m);
    assert_false(m[0].content_plain);
    assert_false(m[2].content_plain); /* the new message: not known */
    context_messages_free(m, n);
}

/* Many thousands of same-role messages merge in linear time (re-copying the
 * merged text per part took 22 s for 100,000 parts). */
static void test_messages_merge_linear(void **state)
{
    (void)state;
    enum { N = 200000 };
    store_message *h = calloc(N, sizeof *h);
    for (size_t i = 0; i < N; i++)
        h[i] = msg("user", "hello world", -1);
    llm_message *m = NULL;
    int64_t t0 = chat_mono_ms();
    size_t n = context_messages(h, 0, N, "last", &m);
    int64_t took = chat_mono_ms() - t0;
    assert_int_equal(n, 1);
    size_t want = (size_t)N * (11 + 2) + 4;
    assert_int_equal(strlen(m[0].content), want);
    assert_int_equal(m[0].content_len, want);
    assert_memory_equal(m[0].content + want - 17, "hello world\n\nlast", 17);
    assert_true(took < 1000);
    context_messages_free(m, n);
    free(h);
}

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (!v)
        fail_msg("bad test JSON: %s", text);
    return v;
}

#define CALL(id)                                                                        \
    "[{\"type\":\"text\",\"text\":\"let me look\"},{\"type\":\"tool_use\",\"id\":\"" id \
    "\",\"name\":\"f\",\"input\":{}}]"
#define RESULT(id) "[{\"type\":\"tool_result\",\"tool_use_id\":\"" id "\",\"content\":\"42\"}]"

/* A tool exchange is left out whole: [q1 / call / result / answer] [q2 / a2], then the new message. */
static void test_truncation_keeps_tool_pairs(void **state)
{
    (void)state;
    store_message h[6] = { msg("user", "q1", 10), msg("assistant", "let me look", 10),
                           msg("user", "", 10),   msg("assistant", "answer", 10),
                           msg("user", "q2", 10), msg("assistant", "a2", 10) };
    const json_t *b[6] = { NULL, J(CALL("t1")), J(RESULT("t1")), NULL, NULL, NULL };
    context_plan p;
    /* budget 55: 60 of history + 1 does not fit; dropping the first exchange (40) does */
    assert_int_equal(context_fit_blocks(h, b, 6, NULL, "1234", NULL, 65, 10, &p), CHAT_OK);
    assert_int_equal(p.first, 4);
    assert_int_equal(p.truncated_turns, 2); /* two stored turns: the question and the tool results */
    assert_int_equal(p.tokens, 21);
    /* a pair-wise cut would have started at the tool results: never */
    assert_int_equal(context_fit_blocks(h, b, 6, NULL, "1234", NULL, 1000, 10, &p), CHAT_OK);
    assert_int_equal(p.first, 0);

    /* The new message answers a call: the last exchange is pinned. */
    store_message h2[4] = { msg("user", "q0", 10), msg("assistant", "a0", 10), msg("user", "q1", 10),
                            msg("assistant", "let me look", 10) };
    const json_t *b2[4] = { NULL, NULL, NULL, b[1] };
    json_t *res = J(RESULT("t1"));
    assert_int_equal(context_fit_blocks(h2, b2, 4, NULL, NULL, res, 30, 10, &p), CHAT_ETOOBIG);
    assert_int_equal(p.tokens, 41); /* 40 + the result's 1 */
    assert_int_equal(context_fit_blocks(h2, b2, 4, NULL, NULL, res, 31, 0, &p), CHAT_OK);
    assert_int_equal(p.first, 2);
    assert_int_equal(p.truncated_turns, 1);
    assert_int_equal(p.tokens, 21);
    json_decref(res);
    /* results followed by text still answer the call: the same exchange is pinned */
    res = J("[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"42\"},{\"type\":\"text\","
            "\"text\":\"ok\"}]");
    assert_int_equal(context_fit_blocks(h2, b2, 4, NULL, NULL, res, 30, 10, &p), CHAT_ETOOBIG);
    assert_int_equal(context_fit_blocks(h2, b2, 4, NULL, NULL, res, 31, 0, &p), CHAT_OK);
    assert_int_equal(p.first, 2);
    json_decref(res);
    for (int i = 0; i < 6; i++)
        json_decref((json_t *)b[i]);
}

static void test_block_estimates(void **state)
{
    (void)state;
    /* unknown counts of block messages: llm_content_tokens (an image counts LLM_IMAGE_TOKENS) */
    store_message h[2] = { msg("user", "", -1), msg("assistant", "abcdefgh", -1) };
    json_t *img = J("[{\"type\":\"text\",\"text\":\"1234\"},{\"type\":\"image\",\"source\":{\"type\":\"url\","
                    "\"url\":\"https://x/a.png\"}}]");
    const json_t *b[2] = { img, NULL };
    context_plan p;
    assert_int_equal(context_fit_blocks(h, b, 2, NULL, NULL, img, 100000, 10, &p), CHAT_OK);
    assert_int_equal(p.tokens, (1 + LLM_IMAGE_TOKENS) * 2 + 2);
    json_decref(img);
}

static void test_messages_with_blocks(void **state)
{
    (void)state;
    store_message h[5] = { msg("user", "q1", -1), msg("assistant", "let me look", -1), msg("user", "", -1),
                           msg("assistant", "", -1), msg("user", "more", -1) };
    json_t *call = J(CALL("t1")), *result = J(RESULT("t1"));
    const json_t *b[5] = { NULL, call, result, NULL, NULL };
    json_t *img = J("[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x/a.png\"}}]");
    llm_message *m = NULL;
    size_t n = context_messages_blocks(h, b, 0, 5, NULL, img, &m);
    /* q1 / call / (result + "more" + image merged: the empty reply is left out) */
    assert_int_equal(n, 3);
    assert_null(m[0].blocks);
    assert_string_equal(m[0].content, "q1");
    assert_ptr_equal(m[1].blocks, call); /* shared, not copied */
    assert_string_equal(m[1].content, "let me look");
    assert_string_equal(m[2].role, "user");
    char *merged = json_dumps(m[2].blocks, JSON_COMPACT);
    assert_string_equal(merged, "[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"42\"},"
                                "{\"type\":\"text\",\"text\":\"more\"},{\"type\":\"image\",\"source\":"
                                "{\"type\":\"url\",\"url\":\"https://x/a.png\"}}]");
    free(merged);
    assert_string_equal(m[2].content, "more");
    assert_int_equal(m[0].content_len, 2);
    assert_int_equal(m[2].content_len, 0);        /* a block message's text: not measured */
    assert_int_equal(json_array_size(result), 1); /* the history's arrays are not changed */
    context_messages_free(m, n);

    /* text then blocks of the same role: one block array, the text first */
    store_message h2[2] = { msg("user", "first", -1), msg("assistant", "", -1) };
    n = context_messages_blocks(h2, NULL, 0, 2, NULL, img, &m);
    assert_int_equal(n, 1);
    merged = json_dumps(m[0].blocks, JSON_COMPACT);
    assert_string_equal(merged, "[{\"type\":\"text\",\"text\":\"first\"},{\"type\":\"image\",\"source\":"
                                "{\"type\":\"url\",\"url\":\"https://x/a.png\"}}]");
    free(merged);
    context_messages_free(m, n);
    /* the references are given back: only ours are left */
    assert_int_equal(call->refcount, 1);
    assert_int_equal(img->refcount, 1);
    json_decref(call);
    json_decref(result);
    json_decref(img);
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
        cmocka_unit_test(test_messages_merge),
        cmocka_unit_test(test_messages_merge_linear),
        cmocka_unit_test(test_messages_carry_plain),
        cmocka_unit_test(test_truncation_keeps_tool_pairs),
        cmocka_unit_test(test_block_estimates),
        cmocka_unit_test(test_messages_with_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
