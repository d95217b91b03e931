/* Unit tests of llm/content.c: the canonical content check (every block type,
 * each role, the messages naming the block and field), the text, presence and
 * token measures, and the event names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llm/content.h"

/* A 1x1 PNG, as clients send it. */
#define PNG_B64 "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (!v)
        fail_msg("bad test JSON: %s: %s", e.text, text);
    return v;
}

/* content (JSON text) checked as role: ok, or refused with a message containing want. */
static void check_as(const char *content, const char *role, const char *want)
{
    json_t *c = parse(content);
    char why[256] = "";
    const char *r = llm_content_check(c, role, why, sizeof why);
    if (!want) {
        if (r)
            fail_msg("%s as %s refused: %s", content, role, r);
    } else {
        if (!r)
            fail_msg("%s as %s accepted, wanted \"%s\"", content, role, want);
        assert_ptr_equal(r, why);
        if (!strstr(why, want))
            fail_msg("%s as %s: got \"%s\", wanted \"%s\"", content, role, why, want);
    }
    json_decref(c);
}

static void test_check_accepts(void **state)
{
    (void)state;
    check_as("[{\"type\":\"text\",\"text\":\"hi\"}]", "user", NULL);
    check_as("[{\"type\":\"text\",\"text\":\"hi\",\"cache_control\":{\"type\":\"ephemeral\"}}]", "user", NULL);
    check_as("[{\"type\":\"text\",\"text\":\"look\"},{\"type\":\"image\",\"source\":{\"type\":\"base64\","
             "\"media_type\":\"image/png\",\"data\":\"" PNG_B64 "\"}}]",
             "user", NULL);
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://example.com/a.jpg\"}}]", "user",
             NULL);
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/webp\","
             "\"data\":\"AAAA\"}}]",
             "user", NULL);
    check_as("[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"sig\"},{\"type\":\"text\","
             "\"text\":\"ok\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\","
             "\"input\":{\"city\":\"Paris\"}},{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"f\","
             "\"input\":{}}]",
             "assistant", NULL);
    check_as("[{\"type\":\"redacted_thinking\",\"data\":\"xyz\"}]", "assistant", NULL);
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\"15 C\"},"
             "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\",\"is_error\":true,\"content\":"
             "[{\"type\":\"text\",\"text\":\"no\"},{\"type\":\"image\",\"source\":{\"type\":\"base64\","
             "\"media_type\":\"image/gif\",\"data\":\"" PNG_B64 "\"}}]},{\"type\":\"text\",\"text\":\"and?\"}]",
             "user", NULL);
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"call_9\"}]", "user", NULL); /* content optional */
}

static void test_check_refuses(void **state)
{
    (void)state;
    check_as("{}", "user", "content: must be an array");
    check_as("[]", "user", "content: must hold at least one block");
    check_as("[{\"type\":\"text\",\"text\":\"x\"}]", "system", "role: must be");
    check_as("[\"hi\"]", "user", "content[0]: a content block must be an object");
    check_as("[{\"text\":\"hi\"}]", "user", "content[0].type: required");
    check_as("[{\"type\":\"video\"}]", "user", "content[0].type: unknown block type \"video\"");
    check_as("[{\"type\":\"text\"}]", "user", "content[0].text: required");
    check_as("[{\"type\":\"text\",\"text\":5}]", "user", "content[0].text: must be a string");
    check_as("[{\"type\":\"text\",\"text\":\"a\",\"cache_control\":1}]", "user",
             "content[0].cache_control: must be an object");
    /* images */
    check_as("[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image\"}]", "user", "content[1].source: required");
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"file\"}}]", "user",
             "content[0].source.type: \"file\" is not supported");
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/bmp\","
             "\"data\":\"AAAA\"}}]",
             "user", "content[0].source.media_type: \"image/bmp\" is not supported");
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\"}}]", "user",
             "content[0].source.data: required");
    check_as("[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"},{\"type\":\"image\","
             "\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"not base64!\"}}]",
             "user", "content[2].source.data: not valid base64");
    const char *bad64[] = { "AAA", "AA=A", "A===", "AB==", "AAB=", "", "QUJD\\nREVG" };
    for (size_t i = 0; i < sizeof bad64 / sizeof bad64[0]; i++) {
        char buf[256];
        snprintf(buf, sizeof buf,
                 "[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"%s\"}}]",
                 bad64[i]);
        check_as(buf, "user", "not valid base64");
    }
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\","
             "\"data\":\"QQ==\"}}]",
             "user", NULL);
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"file:///etc/passwd\"}}]", "user",
             "content[0].source.url: must be an http");
    check_as("[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x/a.png\"}}]", "assistant",
             "content[0].type: an image may appear only in a user message");
    /* tool calls */
    check_as("[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}]", "user",
             "tool_use may appear only in an assistant message");
    check_as("[{\"type\":\"tool_use\",\"name\":\"f\",\"input\":{}}]", "assistant", "content[0].id: required");
    check_as("[{\"type\":\"tool_use\",\"id\":\"\",\"name\":\"f\",\"input\":{}}]", "assistant",
             "content[0].id: must not be empty");
    check_as("[{\"type\":\"tool_use\",\"id\":\"t\",\"input\":{}}]", "assistant", "content[0].name: required");
    check_as("[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\"}]", "assistant", "content[0].input: required");
    check_as("[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":\"{}\"}]", "assistant",
             "content[0].input: must be a JSON object");
    check_as("[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}},{\"type\":\"tool_use\","
             "\"id\":\"t\",\"name\":\"g\",\"input\":{}}]",
             "assistant", "content[1].id: \"t\" repeats content[0]");
    /* tool results */
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"t\"}]", "assistant",
             "tool_result may appear only in a user message");
    check_as("[{\"type\":\"tool_result\",\"content\":\"x\"}]", "user", "content[0].tool_use_id: required");
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":5}]", "user",
             "content[0].content: must be a string or an array");
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"is_error\":\"yes\"}]", "user",
             "content[0].is_error: must be a boolean");
    check_as("[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":"
             "[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"tool_result\",\"tool_use_id\":\"u\"}]}]",
             "user", "content[1].content[1].type: a tool result holds only text and image blocks");
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":[{\"type\":\"image\",\"source\":"
             "{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"@@@@\"}}]}]",
             "user", "content[0].content[0].source.data: not valid base64");
    check_as("[{\"type\":\"tool_result\",\"tool_use_id\":\"t\"},{\"type\":\"tool_result\",\"tool_use_id\":\"t\"}]",
             "user", "content[1].tool_use_id: \"t\" repeats content[0]");
    /* thinking */
    check_as("[{\"type\":\"thinking\",\"thinking\":\"x\"}]", "user",
             "thinking may appear only in an assistant message");
    check_as("[{\"type\":\"thinking\"}]", "assistant", "content[0].thinking: required");
    check_as("[{\"type\":\"thinking\",\"thinking\":\"x\",\"signature\":3}]", "assistant",
             "content[0].signature: must be a string");
    check_as("[{\"type\":\"redacted_thinking\"}]", "assistant", "content[0].data: required");
    /* A short buffer is still a terminated line. */
    json_t *c = parse("[{\"type\":\"text\"}]");
    char tiny[8];
    assert_non_null(llm_content_check(c, "user", tiny, sizeof tiny));
    assert_int_equal(strlen(tiny), sizeof tiny - 1);
    json_decref(c);
}

static void test_text_has_tokens(void **state)
{
    (void)state;
    json_t *c = parse("[{\"type\":\"thinking\",\"thinking\":\"abcd\",\"signature\":\"s\"},{\"type\":\"text\","
                      "\"text\":\"Hello, \"},{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\",\"input\":{\"a\":1}},"
                      "{\"type\":\"text\",\"text\":\"w\\u00f6rld\"}]");
    char *text = llm_content_text(c);
    assert_string_equal(text, "Hello, w\xc3\xb6rld");
    free(text);
    assert_true(llm_content_has(c, "tool_use"));
    assert_true(llm_content_has(c, "thinking"));
    assert_false(llm_content_has(c, "image"));
    /* thinking 4 + "Hello, " 7 + name 1 + {"a":1} 7 + "wörld" 5 = 24 code points -> 6 tokens */
    assert_int_equal(llm_content_tokens(c), 6);
    json_decref(c);

    c = parse(
        "[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x/a.png\"}},{\"type\":\"tool_result\","
        "\"tool_use_id\":\"t\",\"content\":[{\"type\":\"text\",\"text\":\"12345\"},{\"type\":\"image\","
        "\"source\":{\"type\":\"url\",\"url\":\"https://x/b.png\"}}]},{\"type\":\"tool_result\","
        "\"tool_use_id\":\"u\",\"content\":\"abc\"}]");
    /* 8 code points -> 2 tokens, two images */
    assert_int_equal(llm_content_tokens(c), 2 + 2 * LLM_IMAGE_TOKENS);
    text = llm_content_text(c);
    assert_string_equal(text, "");
    free(text);
    json_decref(c);

    /* documents: a text one by its text, any other as an image */
    c = parse("[{\"type\":\"document\",\"source\":{\"type\":\"text\",\"data\":\"12345678\"}},"
              "{\"type\":\"document\",\"source\":{\"type\":\"base64\",\"media_type\":\"application/pdf\","
              "\"data\":\"AAAA\"}}]");
    assert_int_equal(llm_content_tokens(c), 2 + LLM_IMAGE_TOKENS);
    json_decref(c);

    /* NULL-safe */
    text = llm_content_text(NULL);
    assert_string_equal(text, "");
    free(text);
    assert_false(llm_content_has(NULL, "text"));
    assert_int_equal(llm_content_tokens(NULL), 0);
}

static void test_event_names(void **state)
{
    (void)state;
    assert_string_equal(llm_event_name(LLM_EV_TEXT), "text");
    assert_string_equal(llm_event_name(LLM_EV_THINKING), "thinking");
    assert_string_equal(llm_event_name(LLM_EV_TOOL_START), "tool_start");
    assert_string_equal(llm_event_name(LLM_EV_TOOL_ARGS), "tool_args");
    assert_string_equal(llm_event_name(LLM_EV_BLOCK_STOP), "block_stop");
    assert_string_equal(llm_event_name((llm_event_kind)99), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_accepts),
        cmocka_unit_test(test_check_refuses),
        cmocka_unit_test(test_text_has_tokens),
        cmocka_unit_test(test_event_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
