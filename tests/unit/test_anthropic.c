/*
 * test_anthropic.c: the Anthropic wire format without sockets: the exact
 * request body, the headers and URL, non-streaming replies, SSE streams fed
 * through the real SSE parser into the provider's event handler (bytes from
 * docs/PROTOCOLS.md A5-A7), error bodies, and the shared retry-after and excerpt
 * helpers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llm/call_internal.h"
#include "llm/provider.h"
#include "llm/sse.h"

#include "body_tree.h"
#include "llm_test_util.h"

static const llm_provider *prov(void)
{
    static llm_provider p = {
        .kind = LLM_PROVIDER_ANTHROPIC,
        .name = "anthropic",
        .base_url = "https://api.anthropic.com/",
        .api_key = "sk-ant-test-KEY",
        .version = "2023-06-01",
        .connect_timeout_ms = 1000,
        .first_byte_timeout_ms = 1000,
        .idle_timeout_ms = 1000,
        .total_timeout_ms = 5000,
        .max_response_bytes = 65536,
    };
    return &p;
}

/* ---- request ---- */

static void test_body_exact(void **state)
{
    (void)state;
    llm_message msgs[] = { { "user", "Hello", NULL, 0, false },
                           { "assistant", "Hi \"there\"\n", NULL, 0, false },
                           { "user", "caf\xc3\xa9?", NULL, 0, false } };
    llm_request req = { .model = "claude-sonnet-4-5",
                        .system = "You are terse.",
                        .messages = msgs,
                        .n_messages = 3,
                        .max_tokens = 1024,
                        .stream = true };
    char *b = llm_build_body(prov(), &req);
    assert_non_null(b);
    assert_string_equal(b, "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"system\":\"You are terse.\","
                           "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},"
                           "{\"role\":\"assistant\",\"content\":\"Hi \\\"there\\\"\\n\"},"
                           "{\"role\":\"user\",\"content\":\"caf\xc3\xa9?\"}],\"stream\":true}");
    free(b);
}

static void test_body_no_system_no_stream(void **state)
{
    (void)state;
    llm_message msgs[] = { { "user", "Hello", NULL, 0, false } };
    llm_request req = { .model = "m", .system = NULL, .messages = msgs, .n_messages = 1, .max_tokens = 5 };
    char *b = llm_build_body(prov(), &req);
    assert_string_equal(b,
                        "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}");
    free(b);
    req.system = "";
    b = llm_build_body(prov(), &req);
    assert_null(strstr(b, "system"));
    free(b);
}

static void test_body_invalid(void **state)
{
    (void)state;
    llm_message msgs[] = { { "user", "bad \xff utf8", NULL, 0, false } };
    llm_request req = { .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 5 };
    assert_null(llm_build_body(prov(), &req));
    msgs[0].content = "ok";
    req.max_tokens = 0;
    assert_null(llm_build_body(prov(), &req));
    req.max_tokens = 5;
    req.n_messages = 0;
    assert_null(llm_build_body(prov(), &req));
    req.n_messages = 1;
    req.model = NULL;
    assert_null(llm_build_body(prov(), &req));
    llm_provider other = *prov();
    other.kind = LLM_PROVIDER_OPENAI + 10;
    req.model = "m";
    assert_null(llm_build_body(&other, &req));
}

/* ---- rich content and options (A11) ---- */

/* The body for one user message (text, or blocks given as JSON) with options given as JSON (or NULL). */
static char *body_with(const char *blocks_json, const char *options_json, bool via_tool)
{
    json_t *blocks = blocks_json ? json_loads(blocks_json, 0, NULL) : NULL;
    json_t *opts = options_json ? json_loads(options_json, 0, NULL) : NULL;
    if (blocks_json)
        assert_non_null(blocks);
    if (options_json)
        assert_non_null(opts);
    llm_message msgs[] = { { "user", "Hi", blocks, 0, false } };
    llm_request req = {
        .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 2048, .options = opts, .json_via_tool = via_tool
    };
    char *b = llm_build_body(prov(), &req);
    json_decref(blocks);
    json_decref(opts);
    return b;
}

#define HEAD "{\"model\":\"m\",\"max_tokens\":2048,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]"

static void test_body_blocks_all_kinds(void **state)
{
    (void)state;
    json_t *u1 = json_loads("[{\"type\":\"text\",\"text\":\"What is here?\"},"
                            "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":"
                            "\"iVBORw0KGgo=\"}},"
                            "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x.test/a.jpg\"}}]",
                            0, NULL);
    json_t *a1 = json_loads("[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"sig==\"},"
                            "{\"type\":\"redacted_thinking\",\"data\":\"opaque\"},"
                            "{\"type\":\"text\",\"text\":\"Let me look.\"},"
                            "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{\"city\":"
                            "\"Paris\"}}]",
                            0, NULL);
    json_t *u2 = json_loads("[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\"18C\","
                            "\"cache_control\":{\"type\":\"ephemeral\"}},"
                            "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\",\"content\":[{\"type\":\"text\","
                            "\"text\":\"boom\"}],\"is_error\":true}]",
                            0, NULL);
    assert_non_null(u1);
    assert_non_null(a1);
    assert_non_null(u2);
    llm_message msgs[] = { { "user", NULL, u1, 0, false },
                           { "assistant", "ignored", a1, 0, false },
                           { "user", NULL, u2, 0, false } };
    llm_request req = { .model = "m", .messages = msgs, .n_messages = 3, .max_tokens = 100, .stream = true };
    char *b = llm_build_body(prov(), &req);
    assert_non_null(b);
    assert_string_equal(
        b, "{\"model\":\"m\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
           "\"text\":\"What is here?\"},{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":"
           "\"image/png\",\"data\":\"iVBORw0KGgo=\"}},{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":"
           "\"https://x.test/a.jpg\"}}]},{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":"
           "\"hmm\",\"signature\":\"sig==\"},{\"type\":\"redacted_thinking\",\"data\":\"opaque\"},{\"type\":\"text\","
           "\"text\":\"Let me look.\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":"
           "{\"city\":\"Paris\"}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
           "\"toolu_1\",\"content\":\"18C\",\"cache_control\":{\"type\":\"ephemeral\"}},{\"type\":\"tool_result\","
           "\"tool_use_id\":\"toolu_2\",\"content\":[{\"type\":\"text\",\"text\":\"boom\"}],\"is_error\":true}]}],"
           "\"stream\":true}");
    free(b);
    /* The caller's blocks are copied, never changed (prompt caching marks the copy). */
    llm_provider p = *prov();
    p.prompt_caching = true;
    p.cache_min_tokens = 1;
    b = llm_build_body(&p, &req);
    assert_non_null(b);
    assert_null(json_object_get(json_array_get(a1, 3), "cache_control"));
    /* The previous turn's end is the tool_use block: marked there. */
    assert_non_null(strstr(b, "\"input\":{\"city\":\"Paris\"},\"cache_control\":{\"type\":\"ephemeral\"}}]}"));
    free(b);
    /* Thinking without a signature (another provider's reasoning) is left out. */
    json_t *a2 =
        json_loads("[{\"type\":\"thinking\",\"thinking\":\"oa\"},{\"type\":\"text\",\"text\":\"x\"}]", 0, NULL);
    llm_message m2[] = { { "user", "q", NULL, 0, false },
                         { "assistant", NULL, a2, 0, false },
                         { "user", "r", NULL, 0, false } };
    llm_request r2 = { .model = "m", .messages = m2, .n_messages = 3, .max_tokens = 9 };
    b = llm_build_body(prov(), &r2);
    assert_non_null(strstr(b, "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}"));
    free(b);
    json_array_remove(a2, 1);
    assert_null(llm_build_body(prov(), &r2)); /* nothing left */
    json_decref(a2);
    /* Not an array, empty, or a block without a type: unusable. */
    msgs[0].blocks = json_object_get(json_array_get(u1, 0), "text");
    assert_null(llm_build_body(prov(), &req));
    json_t *empty = json_array();
    msgs[0].blocks = empty;
    assert_null(llm_build_body(prov(), &req));
    json_decref(empty);
    json_decref(u1);
    json_decref(a1);
    json_decref(u2);
}

static void test_cache_skips_final_thinking(void **state)
{
    (void)state;
    /* Tool results, tool inputs and images count towards the prefix. */
    char *big = malloc(5000);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    json_t *b2 =
        json_pack("{s:[{s:s,s:[{s:s,s:s,s:s}]},{s:s,s:[{s:s,s:s,s:s,s:{}}]},{s:s,s:s}]}", "messages", "role", "user",
                  "content", "type", "tool_result", "tool_use_id", "t", "content", big, "role", "assistant", "content",
                  "type", "tool_use", "id", "t2", "name", "f", "input", "role", "user", "content", "r");
    free(big);
    assert_non_null(b2);
    assert_int_equal(llm_anthropic_mark_cache(b2, 1024), 1);
    json_decref(b2);
    json_t *b3 = json_loads("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":"
                            "{\"type\":\"url\",\"url\":\"https://x.test/a.png\"}}]},{\"role\":\"assistant\","
                            "\"content\":\"ok\"},{\"role\":\"user\",\"content\":\"r\"}]}",
                            0, NULL);
    assert_int_equal(llm_anthropic_mark_cache(b3, 1024), 1);
    json_decref(b3);
    json_t *body = json_loads("{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
                              "\"content\":[{\"type\":\"thinking\",\"thinking\":\"t\",\"signature\":\"s\"}]},"
                              "{\"role\":\"user\",\"content\":\"r\"}]}",
                              0, NULL);
    assert_int_equal(llm_anthropic_mark_cache(body, 1), 0);
    json_decref(body);
}

static void test_body_sampling_options(void **state)
{
    (void)state;
    char *b = body_with(NULL,
                        "{\"temperature\":0.5,\"top_p\":0.25,\"top_k\":40,\"stop\":[\"END\",\"###\"],"
                        "\"user\":\"u-42\",\"n\":1,\"logprobs\":false,\"presence_penalty\":0,"
                        "\"frequency_penalty\":0.0,\"logit_bias\":{}}",
                        false);
    assert_non_null(b);
    assert_string_equal(b, HEAD ",\"temperature\":0.5,\"top_p\":0.25,\"top_k\":40,"
                                "\"stop_sequences\":[\"END\",\"###\"],\"metadata\":{\"user_id\":\"u-42\"}}");
    free(b);
    /* metadata as given; its own user_id wins over user. */
    b = body_with(NULL, "{\"metadata\":{\"user_id\":\"m-1\"},\"user\":\"u-42\"}", false);
    assert_string_equal(b, HEAD ",\"metadata\":{\"user_id\":\"m-1\"}}");
    free(b);
    b = body_with(NULL, "{\"stop\":\"STOP\"}", false);
    assert_string_equal(b, HEAD ",\"stop_sequences\":[\"STOP\"]}");
    free(b);
    b = body_with(NULL, "{}", false);
    assert_string_equal(b, HEAD "}");
    free(b);
}

static void test_body_options_refused(void **state)
{
    (void)state;
    /* What Anthropic cannot carry is never silently dropped: the body is refused. */
    const char *bad[] = {
        "{\"seed\":1}",
        "{\"presence_penalty\":0.5}",
        "{\"frequency_penalty\":-1}",
        "{\"logit_bias\":{\"50256\":-100}}",
        "{\"logprobs\":true}",
        "{\"top_logprobs\":2}",
        "{\"n\":2}",
        "{\"frobnicate\":true}",
        "{\"temperature\":\"hot\"}",
        "{\"top_k\":1.5}",
        "{\"stop\":[1]}",
        "{\"stop\":[]}",
        "{\"user\":7}",
        "{\"metadata\":[]}",
        "{\"tools\":{}}",
        "{\"tools\":[{\"name\":\"f\"}]}",
        "{\"tools\":[{\"name\":\"\",\"input_schema\":{}}]}",
        "{\"tool_choice\":{\"type\":\"maybe\"}}",
        "{\"tool_choice\":{\"type\":\"tool\"}}",
        "{\"parallel_tool_calls\":\"no\"}",
        "{\"response_format\":{\"type\":\"xml\"}}",
        "{\"response_format\":{\"type\":\"json_schema\"}}",
        "{\"thinking\":true}",
        "{\"reasoning_effort\":\"extreme\"}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *b = body_with(NULL, bad[i], false);
        if (b)
            fail_msg("accepted %s: %s", bad[i], b);
    }
}

static void test_body_tools(void **state)
{
    (void)state;
    const char *tools = "\"tools\":[{\"name\":\"get_weather\",\"description\":\"Weather now\",\"input_schema\":"
                        "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}},\"strict\":true,"
                        "\"extra\":1},{\"name\":\"now\",\"input_schema\":{\"type\":\"object\"}}]";
    char opts[1024];
    snprintf(opts, sizeof opts, "{%s,\"tool_choice\":{\"type\":\"auto\"}}", tools);
    char *b = body_with(NULL, opts, false);
    assert_string_equal(b,
                        HEAD ",\"tools\":[{\"name\":\"get_weather\",\"description\":\"Weather now\","
                             "\"input_schema\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}},"
                             "\"strict\":true},{\"name\":\"now\",\"input_schema\":{\"type\":\"object\"}}],"
                             "\"tool_choice\":{\"type\":\"auto\"}}");
    free(b);
    snprintf(opts, sizeof opts,
             "{%s,\"tool_choice\":{\"type\":\"tool\",\"name\":\"now\"},\"parallel_tool_calls\":false}", tools);
    b = body_with(NULL, opts, false);
    assert_non_null(
        strstr(b, "\"tool_choice\":{\"type\":\"tool\",\"name\":\"now\",\"disable_parallel_tool_use\":true}}"));
    free(b);
    /* parallel_tool_calls false alone: auto with the flag; true: nothing to say. */
    snprintf(opts, sizeof opts, "{%s,\"parallel_tool_calls\":false}", tools);
    b = body_with(NULL, opts, false);
    assert_non_null(strstr(b, "\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true}}"));
    free(b);
    snprintf(opts, sizeof opts, "{%s,\"parallel_tool_calls\":true}", tools);
    b = body_with(NULL, opts, false);
    assert_null(strstr(b, "tool_choice"));
    free(b);
    snprintf(opts, sizeof opts, "{%s,\"tool_choice\":{\"type\":\"none\"},\"parallel_tool_calls\":false}", tools);
    b = body_with(NULL, opts, false);
    assert_non_null(strstr(b, "\"tool_choice\":{\"type\":\"none\"}}"));
    free(b);
    /* Without tools, auto and none say nothing; any and tool are left for the API to refuse. */
    b = body_with(NULL, "{\"tool_choice\":{\"type\":\"none\"}}", false);
    assert_string_equal(b, HEAD "}");
    free(b);
    b = body_with(NULL, "{\"tools\":[],\"tool_choice\":{\"type\":\"auto\"},\"parallel_tool_calls\":false}", false);
    assert_string_equal(b, HEAD "}");
    free(b);
    b = body_with(NULL, "{\"tool_choice\":{\"type\":\"any\"}}", false);
    assert_string_equal(b, HEAD ",\"tool_choice\":{\"type\":\"any\"}}");
    free(b);
    snprintf(opts, sizeof opts, "{%s,\"tool_choice\":{\"type\":\"any\"}}", tools);
    b = body_with(NULL, opts, false);
    assert_non_null(strstr(b, "\"tool_choice\":{\"type\":\"any\"}}"));
    free(b);
}

static void test_body_structured_output(void **state)
{
    (void)state;
    const char *rf = "{\"response_format\":{\"type\":\"json_schema\",\"name\":\"city\",\"strict\":true,"
                     "\"schema\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"}}}}}";
    char *b = body_with(NULL, rf, false);
    assert_string_equal(b, HEAD ",\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":{\"type\":"
                                "\"object\",\"properties\":{\"name\":{\"type\":\"string\"}}}}}}");
    free(b);
    b = body_with(NULL, "{\"response_format\":{\"type\":\"json_object\"}}", false);
    assert_string_equal(b, HEAD ",\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":{\"type\":"
                                "\"object\"}}}}");
    free(b);
    b = body_with(NULL, "{\"response_format\":{\"type\":\"text\"}}", false);
    assert_string_equal(b, HEAD "}");
    free(b);
    /* Through a forced tool. */
    b = body_with(NULL, rf, true);
    assert_string_equal(b, HEAD ",\"tools\":[{\"name\":\"json_output\",\"description\":\"Respond with the final "
                                "answer as this tool's input.\",\"input_schema\":{\"type\":\"object\",\"properties\":"
                                "{\"name\":{\"type\":\"string\"}}}}],\"tool_choice\":{\"type\":\"tool\",\"name\":"
                                "\"json_output\"}}");
    free(b);
    b = body_with(NULL, "{\"response_format\":{\"type\":\"json_object\"}}", true);
    assert_non_null(strstr(b, "\"input_schema\":{\"type\":\"object\"}}]"));
    free(b);
    /* With the caller's tools the model may call any tool; a forcing tool_choice contradicts it. */
    b = body_with(NULL,
                  "{\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],\"response_format\":"
                  "{\"type\":\"json_object\"},\"tool_choice\":{\"type\":\"auto\"}}",
                  true);
    assert_non_null(strstr(b, "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}},{\"name\":"
                              "\"json_output\""));
    assert_non_null(strstr(b, "\"tool_choice\":{\"type\":\"any\"}}"));
    free(b);
    assert_null(body_with(NULL,
                          "{\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],\"response_format\":"
                          "{\"type\":\"json_object\"},\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"}}",
                          true));
    /* Without a response_format json_via_tool changes nothing. */
    b = body_with(NULL, "{\"temperature\":1}", true);
    assert_string_equal(b, HEAD ",\"temperature\":1}");
    free(b);
}

static void test_body_thinking(void **state)
{
    (void)state;
    char *b = body_with(NULL, "{\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2000}}", false);
    assert_string_equal(b, HEAD ",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2000}}");
    free(b);
    b = body_with(NULL, "{\"thinking\":{\"type\":\"disabled\"},\"reasoning_effort\":\"high\"}", false);
    assert_string_equal(b, HEAD ",\"thinking\":{\"type\":\"disabled\"}}");
    free(b);
    const char *effort[][2] = { { "minimal", "1024" }, { "low", "1024" }, { "medium", "2047" }, { "high", "2047" } };
    for (size_t i = 0; i < 4; i++) {
        char opts[128], want[256];
        snprintf(opts, sizeof opts, "{\"reasoning_effort\":\"%s\"}", effort[i][0]);
        snprintf(want, sizeof want, HEAD ",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":%s}}", effort[i][1]);
        b = body_with(NULL, opts, false);
        assert_string_equal(b, want);
        free(b);
    }
    /* With room under max_tokens, the documented budgets. */
    json_t *opts = json_loads("{\"reasoning_effort\":\"medium\"}", 0, NULL);
    llm_message msgs[] = { { "user", "Hi", NULL, 0, false } };
    llm_request req = { .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 32000, .options = opts };
    b = llm_build_body(prov(), &req);
    assert_non_null(strstr(b, "\"budget_tokens\":4096}"));
    free(b);
    json_decref(opts);
    opts = json_loads("{\"reasoning_effort\":\"high\"}", 0, NULL);
    req.options = opts;
    b = llm_build_body(prov(), &req);
    assert_non_null(strstr(b, "\"budget_tokens\":16384}"));
    free(b);
    json_decref(opts);
}

static void test_url_and_headers(void **state)
{
    (void)state;
    char *url = llm_anthropic_ops.build_url(prov());
    assert_string_equal(url, "https://api.anthropic.com/v1/messages");
    free(url);
    struct curl_slist *h = llm_anthropic_ops.build_headers(prov(), true);
    const char *want[] = { "x-api-key: sk-ant-test-KEY", "anthropic-version: 2023-06-01",
                           "content-type: application/json", "accept: text/event-stream", "Expect:" };
    size_t i = 0;
    for (struct curl_slist *l = h; l; l = l->next, i++) {
        assert_true(i < 5);
        assert_string_equal(l->data, want[i]);
    }
    assert_int_equal(i, 5);
    curl_slist_free_all(h);
    h = llm_anthropic_ops.build_headers(prov(), false);
    assert_string_equal(h->next->next->next->data, "accept: application/json");
    curl_slist_free_all(h);
    /* A key with a line break would inject headers: refused. */
    llm_provider bad = *prov();
    bad.api_key = "sk\r\nX-Evil: 1";
    assert_null(llm_anthropic_ops.build_headers(&bad, true));
}

/* ---- prompt caching (A4) ---- */

#define CC "\"cache_control\":{\"type\":\"ephemeral\"}"

/* Occurrences of "cache_control" in s. */
static int count_cc(const char *s)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, "cache_control")) != NULL; p++)
        n++;
    return n;
}

static void test_cache_short_no_markers(void **state)
{
    (void)state;
    llm_provider p = *prov();
    p.prompt_caching = true; /* cache_min_tokens 0: the default, 1024 tokens */
    llm_message msgs[] = { { "user", "Hello", NULL, 0, false },
                           { "assistant", "Hi there", NULL, 0, false },
                           { "user", "Next?", NULL, 0, false } };
    llm_request req = {
        .model = "m", .system = "You are terse.", .messages = msgs, .n_messages = 3, .max_tokens = 64, .stream = true
    };
    char *b = llm_build_body(&p, &req);
    assert_string_equal(b,
                        "{\"model\":\"m\",\"max_tokens\":64,\"system\":\"You are terse.\",\"messages\":["
                        "{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":\"Hi there\"},"
                        "{\"role\":\"user\",\"content\":\"Next?\"}],\"stream\":true}");
    free(b);
}

static void test_cache_long_system_and_previous_turn(void **state)
{
    (void)state;
    llm_provider p = *prov();
    p.prompt_caching = true;
    p.cache_min_tokens = 4; /* 13 characters or more */
    llm_message msgs[] = { { "user", "Hello", NULL, 0, false },
                           { "assistant", "Hi there", NULL, 0, false },
                           { "user", "Next?", NULL, 0, false } };
    llm_request req = {
        .model = "m", .system = "You are terse.", .messages = msgs, .n_messages = 3, .max_tokens = 64, .stream = true
    };
    char *b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"m\",\"max_tokens\":64,"
                           "\"system\":[{\"type\":\"text\",\"text\":\"You are terse.\"," CC "}],"
                           "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},"
                           "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"Hi there\"," CC "}]},"
                           "{\"role\":\"user\",\"content\":\"Next?\"}],\"stream\":true}");
    free(b);

    /* Off: the same request is sent with plain strings. */
    p.prompt_caching = false;
    b = llm_build_body(&p, &req);
    assert_int_equal(count_cc(b), 0);
    free(b);

    /* A long conversation: only the end of the previous turn is marked, never more. */
    p.prompt_caching = true;
    llm_message many[21];
    for (int i = 0; i < 21; i++)
        many[i] = (llm_message){ i % 2 ? "assistant" : "user", i % 2 ? "an answer of some length" : "a question", NULL,
                                 0, false };
    req.messages = many;
    req.n_messages = 21;
    b = llm_build_body(&p, &req);
    assert_int_equal(count_cc(b), 2);
    assert_non_null(strstr(b, "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"an answer of some "
                              "length\"," CC "}]},{\"role\":\"user\",\"content\":\"a question\"}],\"stream\":true}"));
    free(b);
}

static void test_cache_min_length(void **state)
{
    (void)state;
    llm_provider p = *prov();
    p.prompt_caching = true;
    /* system 14 chars (4 tokens); prefix through the assistant: 14 + 5 + 5 (é counts once) = 24 chars = 6 tokens. */
    llm_message msgs[] = { { "user", "Hello", NULL, 0, false },
                           { "assistant", "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", NULL, 0, false },
                           { "user", "Next?", NULL, 0, false } };
    llm_request req = { .model = "m", .system = "You are terse.", .messages = msgs, .n_messages = 3, .max_tokens = 8 };

    p.cache_min_tokens = 5; /* the system alone is too short, the prefix is long enough */
    char *b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"m\",\"max_tokens\":8,\"system\":\"You are terse.\",\"messages\":["
                           "{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":[{\"type\":"
                           "\"text\",\"text\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"," CC "}]},"
                           "{\"role\":\"user\",\"content\":\"Next?\"}]}");
    free(b);
    p.cache_min_tokens = 6; /* exactly the prefix (characters, not the 29 bytes) */
    b = llm_build_body(&p, &req);
    assert_int_equal(count_cc(b), 1);
    free(b);
    p.cache_min_tokens = 7; /* one more: nothing is marked */
    b = llm_build_body(&p, &req);
    assert_int_equal(count_cc(b), 0);
    free(b);

    /* First turn: no previous turn to mark, only the system prompt can be. */
    p.cache_min_tokens = 4;
    req.n_messages = 1;
    b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"m\",\"max_tokens\":8,\"system\":[{\"type\":\"text\",\"text\":"
                           "\"You are terse.\"," CC "}],\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}");
    free(b);

    /* No system prompt: only the previous turn. An empty assistant reply cannot carry a marker. */
    req.system = NULL;
    req.n_messages = 3;
    p.cache_min_tokens = 1;
    b = llm_build_body(&p, &req);
    assert_int_equal(count_cc(b), 1);
    free(b);
    msgs[1].content = "";
    b = llm_build_body(&p, &req);
    assert_int_equal(count_cc(b), 0);
    free(b);
}

/* Marks body (JSON text) and returns the result as text; *added gets the count. */
static char *mark_json(const char *in, int64_t min, int *added)
{
    json_error_t je;
    json_t *j = json_loads(in, 0, &je);
    assert_non_null(j);
    *added = llm_anthropic_mark_cache(j, min);
    char *out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return out;
}

static void test_cache_limit_with_caller_markers(void **state)
{
    (void)state;
    int added;
    /* Three caller markers (two tools, one system block): one slot left, for the previous turn. */
    char *b = mark_json(
        "{\"tools\":[{\"name\":\"a\"," CC "},{\"name\":\"b\"," CC "}],"
        "\"system\":[{\"type\":\"text\",\"text\":\"sys one\"},{\"type\":\"text\",\"text\":\"sys two\"," CC "}],"
        "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":"
        "\"Hi there\"},{\"role\":\"user\",\"content\":\"Next?\"}]}",
        1, &added);
    assert_int_equal(added, 1);
    assert_int_equal(count_cc(b), 4);
    assert_non_null(
        strstr(b, "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"Hi there\"," CC "}]}"));
    free(b);

    /* The top-level automatic marker counts too (conservatively): with two tool
     * markers only one is added, the previous turn's, not the system's. */
    b = mark_json(
        "{\"cache_control\":{\"type\":\"ephemeral\"},\"tools\":[{\"name\":\"a\"," CC "},{\"name\":\"b\"," CC
        "}],\"system\":\"a long enough system prompt\",\"messages\":[{\"role\":\"user\",\"content\":"
        "\"Hello\"},{\"role\":\"assistant\",\"content\":\"Hi there\"},{\"role\":\"user\",\"content\":\"x\"}]}",
        1, &added);
    assert_int_equal(added, 1);
    assert_int_equal(count_cc(b), 4);
    assert_non_null(strstr(b, "\"system\":\"a long enough system prompt\""));
    free(b);

    /* Four already (message blocks too): nothing is added. */
    b = mark_json("{\"system\":[{\"type\":\"text\",\"text\":\"s\"," CC "}],\"messages\":["
                  "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"," CC "}]},"
                  "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"b\"," CC "}]},"
                  "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"c\"," CC "}]},"
                  "{\"role\":\"assistant\",\"content\":\"d\"},{\"role\":\"user\",\"content\":\"e\"}]}",
                  1, &added);
    assert_int_equal(added, 0);
    assert_int_equal(count_cc(b), 4);
    free(b);

    /* The previous turn already marked by the caller: kept as is, not doubled; the system gets the other one. */
    b = mark_json("{\"system\":\"long system\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},"
                  "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\","
                  "\"text\":\"two\"," CC "}]},{\"role\":\"user\",\"content\":\"Next?\"}]}",
                  1, &added);
    assert_int_equal(added, 1);
    assert_string_equal(b, "{\"system\":[{\"type\":\"text\",\"text\":\"long system\"," CC "}],\"messages\":["
                           "{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":[{\"type\":"
                           "\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":\"two\"," CC "}]},"
                           "{\"role\":\"user\",\"content\":\"Next?\"}]}");
    free(b);

    /* A block array gets its marker on the last block; an image block counts no characters. */
    b = mark_json("{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"},{\"role\":\"assistant\","
                  "\"content\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":\"two\"}]},"
                  "{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":{}}]}]}",
                  5, &added);
    assert_int_equal(added, 1);
    assert_non_null(strstr(b, "[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":\"two\"," CC "}]"));
    free(b);
    b = mark_json("{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"},{\"role\":\"assistant\","
                  "\"content\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":\"two\"}]},"
                  "{\"role\":\"user\",\"content\":\"x\"}]}",
                  6, &added); /* 17 characters = 5 tokens < 6 */
    assert_int_equal(added, 0);
    free(b);

    /* Not an object, no messages: nothing to do. */
    assert_int_equal(llm_anthropic_mark_cache(NULL, 1), 0);
    b = mark_json("{\"system\":\"\"}", 1, &added);
    assert_int_equal(added, 0);
    free(b);
}

/* The messages written without a tree equal the tree's dump: escapes,
 * non-ASCII text, empty texts, blocks between texts, a breakpoint on a text
 * message and on a block message, with and without caching. */
static void test_body_written_equals_tree(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "Hello",
        "",
        "quote \" backslash \\ slash / tab \t nl \n cr \r",
        "ctl \x01\x1f del \x7f",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
        "eight by"
        "tes run",
        "</script>",
    };
    json_t *blocks = json_loads("[{\"type\":\"text\",\"text\":\"b\\u00e9\"},{\"type\":\"tool_use\",\"id\":\"t1\","
                                "\"name\":\"f\",\"input\":{\"a\":[1,2.5,null,true]}}]",
                                0, NULL);
    json_t *results = json_loads("[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"r\"}]", 0, NULL);
    assert_non_null(blocks);
    assert_non_null(results);
    enum { N = 9 };
    llm_message m[N];
    for (int shape = 0; shape < 4; shape++) {
        for (size_t i = 0; i < N; i++) {
            m[i] = (llm_message){ .role = i % 2 ? "assistant" : "user",
                                  .content = texts[(i + (size_t)shape) % (sizeof texts / sizeof *texts)] };
            if (shape >= 2) /* the length given, as the context gives it */
                m[i].content_len = strlen(m[i].content);
        }
        if (shape & 1) { /* a tool exchange in the middle, or as the previous turn's end */
            size_t k = shape == 1 ? 3 : 7;
            m[k].blocks = blocks;
            m[k + 1].blocks = results;
        }
        for (int caching = 0; caching < 2; caching++) {
            for (int64_t min = 1; min <= 64; min *= 8) {
                llm_provider p = *prov();
                p.prompt_caching = caching;
                p.cache_min_tokens = min;
                llm_request req = { .model = "claude-x",
                                    .system = shape & 2 ? "S\xc3\xa9" : NULL,
                                    .messages = m,
                                    .n_messages = N,
                                    .max_tokens = 99,
                                    .stream = shape == 2 };
                for (size_t n = 1; n <= N; n++) {
                    req.n_messages = n;
                    char *got = llm_build_body(&p, &req);
                    char *want = body_tree_reference(&p, &req);
                    assert_non_null(got);
                    assert_non_null(want);
                    assert_string_equal(got, want);
                    free(got);
                    free(want);
                }
            }
        }
    }
    /* Not UTF-8 in a text message, or a message without content: no body. */
    m[0] = (llm_message){ .role = "user", .content = "bad \xc3" };
    llm_request req = { .model = "claude-x", .messages = m, .n_messages = 1, .max_tokens = 9 };
    assert_null(llm_build_body(prov(), &req));
    m[0].content = NULL;
    assert_null(llm_build_body(prov(), &req));
    json_decref(blocks);
    json_decref(results);
}

/* ---- replies ---- */

/* The sink and the SSE feeder are in llm_test_util.h (shared with the other provider suite). */
static chat_rc feed_stream(llm_parse *st, const char *bytes, size_t step)
{
    return llm_test_feed(&llm_anthropic_ops, st, bytes, step);
}

/* A6 fixture, verbatim. */
static const char *STREAM_BASIC =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":"
    "\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-opus-latest\",\"stop_reason\":null,"
    "\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n"
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
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
    "\"usage\":{\"output_tokens\":6}}\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

static void test_stream_basic_any_split(void **state)
{
    (void)state;
    size_t steps[] = { 1, 2, 3, 7, 64, 100000 };
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        assert_int_equal(feed_stream(&st, STREAM_BASIC, steps[k]), CHAT_OK);
        assert_int_equal(st.err, LLM_OK);
        assert_true(st.complete);
        assert_string_equal(s.text, "Hello there");
        assert_int_equal(s.pieces, 2);
        assert_string_equal(st.model, "claude-3-opus-latest");
        assert_string_equal(st.stop_reason, "end_turn");
        assert_int_equal(st.usage.input_tokens, 11);
        assert_int_equal(st.usage.output_tokens, 6);
        assert_int_equal(st.usage.cache_read_tokens, -1);
        llm_parse_reset(&st);
    }
}

/* The 2026 shape: padded JSON, cache fields, repeated message_delta (overwrite, never add). */
static void test_stream_2026_usage_overwrite(void **state)
{
    (void)state;
    const char *bytes =
        "event: message_start\r\n"
        "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-8\",\"id\":\"msg_x\",\"type\":"
        "\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
        "\"stop_details\":null,\"usage\":{\"input_tokens\":31,\"cache_creation_input_tokens\":5,"
        "\"cache_read_input_tokens\":188086,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,"
        "\"ephemeral_1h_input_tokens\":0},\"output_tokens\":7,\"service_tier\":\"standard\","
        "\"inference_geo\":\"global\"}}               }\r\n\r\n"
        "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\r\n\r\n"
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\r\n\r\n"
        "event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n"
        "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":1,"
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n"
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":1,"
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"caf\\u00e9 \xe2\x80\xa8 ok\"}}\r\n\r\n"
        "event: some_future_event\r\ndata: {not even json\r\n\r\n"
        "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},"
        "\"usage\":{\"output_tokens\":300}}\r\n\r\n"
        "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
        "\"stop_sequence\":null,\"stop_details\":null},\"usage\":{\"input_tokens\":31,"
        "\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":188086,\"output_tokens\":547}"
        "               }\r\n\r\n"
        "event: message_stop\r\ndata: {\"type\":\"message_stop\"       }\r\n\r\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, bytes, 5), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_true(st.complete);
    assert_string_equal(s.text, "caf\xc3\xa9 \xe2\x80\xa8 ok"); /* the thinking block is skipped */
    assert_string_equal(st.model, "claude-opus-4-8");
    assert_string_equal(st.stop_reason, "end_turn");
    assert_int_equal(st.usage.input_tokens, 31);
    assert_int_equal(st.usage.output_tokens, 547); /* not 7 + 300 + 547 */
    assert_int_equal(st.usage.cache_read_tokens, 188086);
    assert_int_equal(st.usage.cache_write_tokens, 5);
    llm_parse_reset(&st);
}

static void test_stream_error_event(void **state)
{
    (void)state;
    const char *bytes = "event: content_block_delta\n"
                        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
                        "\"text\":\"Hi\"}}\n\n"
                        "event: error\n"
                        "data: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": "
                        "\"Overloaded\"}}\n\n"
                        "event: content_block_delta\n"
                        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
                        "\"text\":\"never\"}}\n\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, bytes, 1000), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_STREAM);
    assert_string_equal(st.err_type, "overloaded_error");
    assert_string_equal(st.err_message, "Overloaded");
    assert_string_equal(s.text, "Hi");
    assert_false(st.complete);
    llm_parse_reset(&st);

    /* An error event whose JSON is broken is still the provider's error. */
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, "event: error\ndata: oops <b>bad</b>\n\n", 3), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_STREAM);
    assert_string_equal(st.err_type, "api_error");
    assert_string_equal(st.err_message, "oops <b>bad</b>");
    llm_parse_reset(&st);
}

static void test_stream_malformed_json(void **state)
{
    (void)state;
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    const char *bytes = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
                        "{\"type\":\"text_delta\",\"text\":\"Hel\n\n";
    assert_int_equal(feed_stream(&st, bytes, 1000), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    assert_string_equal(st.err_type, "protocol_error");
    assert_non_null(strstr(st.err_message, "content_block_delta"));
    assert_int_equal(s.len, 0);
    llm_parse_reset(&st);
}

static void test_stream_truncated_and_data_only(void **state)
{
    (void)state;
    /* Cut before message_stop: not complete, so the call reports truncation. */
    size_t cut = strstr(STREAM_BASIC, "event: message_stop") - STREAM_BASIC;
    char *part = strndup(STREAM_BASIC, cut + 30);
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, part, 10), CHAT_OK);
    assert_false(st.complete);
    assert_int_equal(st.err, LLM_OK);
    llm_parse_reset(&st);
    free(part);

    /* Data-only events (no event: line) are "message" events: ignored, as the SDK does. */
    sink s2 = { 0 };
    llm_parse_init(&st, sink_emit, &s2);
    assert_int_equal(feed_stream(&st, "data: {\"type\":\"message_stop\"}\n\n", 100), CHAT_OK);
    assert_false(st.complete);
    llm_parse_reset(&st);
}

static void test_emit_stop(void **state)
{
    (void)state;
    sink s = { .stop_after = 1 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, STREAM_BASIC, 100000), CHAT_ECANCELED);
    assert_string_equal(s.text, "Hello");
    llm_parse_reset(&st);
}

static void test_json_body(void **state)
{
    (void)state;
    const char *body =
        "{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\","
        "\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"x\"},"
        "{\"type\":\"text\",\"text\":\"Hi! \"},{\"type\":\"text\",\"text\":\"How can I help?\"}],"
        "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,"
        "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":9,"
        "\"service_tier\":\"standard\"}}";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, body, strlen(body)), LLM_OK);
    assert_string_equal(s.text, "Hi! How can I help?");
    assert_string_equal(st.stop_reason, "end_turn");
    assert_string_equal(st.model, "claude-sonnet-4-5-20250929");
    assert_int_equal(st.usage.input_tokens, 12);
    assert_int_equal(st.usage.output_tokens, 9);
    assert_int_equal(st.usage.cache_write_tokens, 0);
    llm_parse_reset(&st);

    /* Empty content is a valid reply (A5). */
    const char *empty = "{\"type\":\"message\",\"content\":[],\"stop_reason\":\"end_turn\"}";
    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, empty, strlen(empty)), LLM_OK);
    llm_parse_reset(&st);

    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, "{\"content\":", 11), LLM_ERR_PROTOCOL);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    llm_parse_reset(&st);
    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, "{\"type\":\"message\"}", 18), LLM_ERR_PROTOCOL);
    llm_parse_reset(&st);
}

/* ---- rich replies (A11) ---- */

#define EV(name, json) "event: " name "\ndata: " json "\n\n"
#define START_MSG                                                                                                      \
    EV("message_start", "{\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":" \
                        "9,\"output_tokens\":1}}}")
#define BSTART(i, block) \
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":" #i ",\"content_block\":" block "}")
#define BDELTA(i, delta) \
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":" #i ",\"delta\":" delta "}")
#define BSTOP(i) EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":" #i "}")
#define MSG_END(reason, seq)                                                                                           \
    EV("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"" reason "\",\"stop_sequence\":" seq \
                        "},\"usage\":{\"output_tokens\":50,\"output_tokens_details\":{\"thinking_tokens\":12}}}")      \
    EV("message_stop", "{\"type\":\"message_stop\"}")

static const char *STREAM_TOOLS = START_MSG BSTART(0, "{\"type\":\"thinking\",\"thinking\":\"\"}")
    BDELTA(0, "{\"type\":\"thinking_delta\",\"thinking\":\"Let me\"}")
        BDELTA(0, "{\"type\":\"thinking_delta\",\"thinking\":\" think\"}")
            BDELTA(0, "{\"type\":\"signature_delta\",\"signature\":\"EqQBsig\"}") BSTOP(0) BSTART(
                1, "{\"type\":\"text\",\"text\":\"\"}") BDELTA(1, "{\"type\":\"text_delta\",\"text\":\"I'll check \"}")
                BDELTA(1, "{\"type\":\"text_delta\",\"text\":\"both.\"}") BSTOP(1)
                    BSTART(2, "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}")
                        BDELTA(2, "{\"type\":\"input_json_delta\",\"partial_json\":\"\"}")
                            BDELTA(2, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}") BDELTA(
                                2, "{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"Paris\\\"}\"}") BSTOP(2)
                                BSTART(3, "{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"now\",\"input\":{}}")
                                    EV("ping", "{\"type\":\"ping\"}") BSTOP(3) MSG_END("tool_use", "null");

static void test_stream_tools_thinking_any_split(void **state)
{
    (void)state;
    size_t steps[] = { 1, 2, 5, 64, 100000 };
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        st.event = sink_event;
        assert_int_equal(feed_stream(&st, STREAM_TOOLS, steps[k]), CHAT_OK);
        assert_int_equal(st.err, LLM_OK);
        assert_true(st.complete);
        assert_string_equal(s.text, "I'll check both.");
        assert_string_equal(s.events, "K0:Let me think|E0:thinking:EqQBsig|T1:I'll check both.|E1:text|"
                                      "S2:toolu_1:get_weather|A2:{\"city\": \"Paris\"}|E2:tool_use|"
                                      "S3:toolu_2:now|E3:tool_use|");
        char *c = content_json(&st);
        assert_string_equal(c, "[{\"type\":\"thinking\",\"thinking\":\"Let me think\",\"signature\":\"EqQBsig\"},"
                               "{\"type\":\"text\",\"text\":\"I'll check both.\"},{\"type\":\"tool_use\",\"id\":"
                               "\"toolu_1\",\"name\":\"get_weather\",\"input\":{\"city\":\"Paris\"}},{\"type\":"
                               "\"tool_use\",\"id\":\"toolu_2\",\"name\":\"now\",\"input\":{}}]");
        free(c);
        assert_string_equal(st.stop_reason, "tool_use");
        assert_null(st.stop_sequence);
        assert_int_equal(st.usage.reasoning_tokens, 12);
        assert_int_equal(st.usage.output_tokens, 50);
        llm_parse_reset(&st);
        assert_null(st.content);
        assert_true(st.event == sink_event); /* the sinks survive a reset */
    }
}

static void test_stream_redacted_stop_sequence_unknown_block(void **state)
{
    (void)state;
    const char *bytes = START_MSG BSTART(0, "{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgB\"}") BSTOP(0)
        BSTART(1, "{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}")
            BDELTA(1, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":1}\"}")
                BDELTA(1, "{\"type\":\"text_delta\",\"text\":\"not text\"}") BSTOP(1)
                    BSTART(2, "{\"type\":\"text\",\"text\":\"\"}") BSTOP(2)
                        BSTART(3, "{\"type\":\"text\",\"text\":\"\"}")
                            BDELTA(3, "{\"type\":\"text_delta\",\"text\":\"Done\"}")
                                BDELTA(3, "{\"type\":\"citations_delta\",\"citation\":{}}")
                                    BDELTA(3, "{\"type\":\"input_json_delta\",\"partial_json\":\"x\"}") BSTOP(3)
                                        MSG_END("stop_sequence", "\"###\"");
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    st.event = sink_event;
    assert_int_equal(feed_stream(&st, bytes, 3), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_true(st.complete);
    /* The skipped block and the empty text block leave no trace. */
    assert_string_equal(s.events, "E0:redacted_thinking:EmwKAhgB|T1:Done|E1:text|");
    char *c = content_json(&st);
    assert_string_equal(c, "[{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgB\"},{\"type\":\"text\",\"text\":"
                           "\"Done\"}]");
    free(c);
    assert_string_equal(st.stop_reason, "stop_sequence");
    assert_string_equal(st.stop_sequence, "###");
    llm_parse_reset(&st);
}

static void test_stream_json_via_tool(void **state)
{
    (void)state;
    const char *bytes = START_MSG BSTART(0, "{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"json_output\","
                                            "\"input\":{}}")
        BDELTA(0, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"name\\\":\"}")
            BDELTA(0, "{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Oslo\\\"}\"}") BSTOP(0)
                MSG_END("tool_use", "null");
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    st.event = sink_event;
    st.json_via_tool = true;
    assert_int_equal(feed_stream(&st, bytes, 4), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_string_equal(s.text, "{\"name\":\"Oslo\"}");
    assert_string_equal(s.events, "T0:{\"name\":\"Oslo\"}|E0:text|");
    char *c = content_json(&st);
    assert_string_equal(c, "[{\"type\":\"text\",\"text\":\"{\\\"name\\\":\\\"Oslo\\\"}\"}]");
    free(c);
    assert_string_equal(st.stop_reason, "end_turn");
    llm_parse_reset(&st);
    /* Without json_via_tool the same stream is an ordinary tool call. */
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    st.event = sink_event;
    assert_int_equal(feed_stream(&st, bytes, 4), CHAT_OK);
    assert_string_equal(s.text, "");
    assert_string_equal(st.stop_reason, "tool_use");
    assert_string_equal(s.events, "S0:toolu_9:json_output|A0:{\"name\":\"Oslo\"}|E0:tool_use|");
    llm_parse_reset(&st);
}

static void test_stream_bad_tool_input(void **state)
{
    (void)state;
    const char *bad[] = {
        START_MSG BSTART(0, "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}")
            BDELTA(0, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}") BSTOP(0)
                MSG_END("tool_use", "null"),
        START_MSG BSTART(0, "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}")
            BDELTA(0, "{\"type\":\"input_json_delta\",\"partial_json\":\"[1]\"}") BSTOP(0) MSG_END("tool_use", "null"),
        START_MSG BSTART(0, "{\"type\":\"tool_use\",\"name\":\"f\",\"input\":{}}") BSTOP(0) MSG_END("tool_use", "null"),
        START_MSG BSTART(0, "{\"type\":\"redacted_thinking\"}") MSG_END("end_turn", "null"),
        /* A block left open when the message stops is checked then. */
        START_MSG BSTART(0, "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}")
            BDELTA(0, "{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}") MSG_END("tool_use", "null"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        (void)feed_stream(&st, bad[i], 7);
        assert_int_equal(st.err, LLM_ERR_PROTOCOL);
        assert_false(st.complete);
        assert_non_null(st.err_message);
        llm_parse_reset(&st);
    }
    /* Empty blocks cost something too: a stream of them cannot grow without bound. */
    {
        char many[8192] = START_MSG;
        for (int i = 0; i < 20; i++) {
            size_t at = strlen(many);
            snprintf(many + at, sizeof many - at, "%s%s", BSTART(0, "{\"type\":\"thinking\",\"thinking\":\"\"}"),
                     BSTOP(0));
        }
        sink s0 = { 0 };
        llm_parse st0;
        llm_parse_init(&st0, sink_emit, &s0);
        st0.max_bytes = 100;
        (void)feed_stream(&st0, many, 100000);
        assert_int_equal(st0.err, LLM_ERR_PROTOCOL);
        assert_true(json_array_size(st0.content) < 10);
        llm_parse_reset(&st0);
    }
    /* The content cap counts arguments too. */
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    st.max_bytes = 10;
    (void)feed_stream(&st, STREAM_TOOLS, 100000);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    assert_non_null(strstr(st.err_message, "max_response_bytes=10"));
    llm_parse_reset(&st);
}

static void test_json_body_blocks(void **state)
{
    (void)state;
    const char *body =
        "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":["
        "{\"type\":\"thinking\",\"thinking\":\"hm\",\"signature\":\"sig\"},{\"type\":\"redacted_thinking\",\"data\":"
        "\"xx\"},{\"type\":\"text\",\"text\":\"Hi \"},{\"type\":\"text\",\"text\":\"\"},{\"type\":\"tool_use\",\"id\":"
        "\"toolu_1\",\"name\":\"f\",\"input\":{\"a\":[1,2]}},{\"type\":\"text\",\"text\":\"there\"}],"
        "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\",\"usage\":{\"input_tokens\":3,"
        "\"output_tokens\":4,\"output_tokens_details\":{\"thinking_tokens\":2}}}";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, body, strlen(body)), LLM_OK);
    assert_string_equal(s.text, "Hi there");
    char *c = content_json(&st);
    assert_string_equal(c, "[{\"type\":\"thinking\",\"thinking\":\"hm\",\"signature\":\"sig\"},{\"type\":"
                           "\"redacted_thinking\",\"data\":\"xx\"},{\"type\":\"text\",\"text\":\"Hi \"},{\"type\":"
                           "\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{\"a\":[1,2]}},{\"type\":\"text\","
                           "\"text\":\"there\"}]");
    free(c);
    assert_string_equal(st.stop_sequence, "END");
    assert_string_equal(st.stop_reason, "stop_sequence");
    assert_int_equal(st.usage.reasoning_tokens, 2);
    llm_parse_reset(&st);

    const char *forced = "{\"content\":[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"json_output\",\"input\":"
                         "{\"k\":\"v\"}}],\"stop_reason\":\"tool_use\"}";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    st.json_via_tool = true;
    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, forced, strlen(forced)), LLM_OK);
    assert_string_equal(s.text, "{\"k\":\"v\"}");
    assert_string_equal(st.stop_reason, "end_turn");
    c = content_json(&st);
    assert_string_equal(c, "[{\"type\":\"text\",\"text\":\"{\\\"k\\\":\\\"v\\\"}\"}]");
    free(c);
    llm_parse_reset(&st);

    const char *bad[] = {
        "{\"content\":[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":\"{}\"}]}",
        "{\"content\":[{\"type\":\"text\"}]}",
        "{\"content\":[{\"text\":\"x\"}]}",
        "{\"content\":[{\"type\":\"thinking\",\"thinking\":\"x\",\"signature\":1}]}",
        "{\"content\":[{\"type\":\"redacted_thinking\"}]}",
        "{\"content\":[7]}",
        "{\"content\":[{\"type\":\"tool_use\",\"id\":\"\",\"name\":\"f\",\"input\":{}}]}",
        "{\"content\":[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":{}},{\"type\":\"tool_use\","
        "\"id\":\"a\",\"name\":\"g\",\"input\":{}}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&s, 0, sizeof s);
        llm_parse_init(&st, sink_emit, &s);
        assert_int_equal(llm_anthropic_ops.parse_json_body(&st, bad[i], strlen(bad[i])), LLM_ERR_PROTOCOL);
        assert_int_equal(st.err, LLM_ERR_PROTOCOL);
        llm_parse_reset(&st);
    }
    /* Unknown block types are skipped, as in a stream. */
    const char *other =
        "{\"content\":[{\"type\":\"server_tool_use\",\"id\":\"s\",\"name\":\"web_search\",\"input\":{}}]}";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(llm_anthropic_ops.parse_json_body(&st, other, strlen(other)), LLM_OK);
    assert_int_equal(json_array_size(st.content), 0);
    llm_parse_reset(&st);
}

static void test_error_bodies(void **state)
{
    (void)state;
    llm_error_info e;
    const char *b529 = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"},"
                       "\"request_id\":\"req_011CSHoEeqs5C35K2UUqR7Fy\"}";
    llm_anthropic_ops.parse_error(529, b529, strlen(b529), &e);
    assert_string_equal(e.type, "overloaded_error");
    assert_string_equal(e.message, "Overloaded");
    assert_false(e.no_retry);
    llm_error_info_free(&e);

    const char *spend = "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"spend cap\","
                        "\"details\":{\"error_code\":\"enforced_spend_limit_reached\"}}}";
    llm_anthropic_ops.parse_error(429, spend, strlen(spend), &e);
    assert_string_equal(e.type, "rate_limit_error");
    assert_true(e.no_retry);
    llm_error_info_free(&e);

    const char *html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
                       "Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n";
    llm_anthropic_ops.parse_error(502, html, strlen(html), &e);
    assert_string_equal(e.type, "api_error");
    assert_string_equal(e.message, "HTTP 502: 502 Bad Gateway 502 Bad Gateway cloudflare");
    llm_error_info_free(&e);

    llm_anthropic_ops.parse_error(400, "plain text oops", 15, &e);
    assert_string_equal(e.type, "invalid_request_error");
    assert_string_equal(e.message, "HTTP 400: plain text oops");
    llm_error_info_free(&e);

    llm_anthropic_ops.parse_error(413, "", 0, &e);
    assert_string_equal(e.type, "request_too_large");
    assert_string_equal(e.message, "HTTP 413 with an empty body");
    llm_error_info_free(&e);

    llm_anthropic_ops.parse_error(500, "{\"error\":\"boom\"}", 16, &e);
    assert_string_equal(e.type, "api_error");
    assert_string_equal(e.message, "boom");
    llm_error_info_free(&e);

    llm_anthropic_ops.parse_error(422, "{\"detail\":\"bad field\"}", 22, &e);
    assert_string_equal(e.type, "invalid_request_error");
    assert_string_equal(e.message, "bad field");
    llm_error_info_free(&e);

    /* Binary garbage: bounded, printable, valid UTF-8. */
    char junk[1000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 37 + 1);
    llm_anthropic_ops.parse_error(503, junk, sizeof junk, &e);
    assert_string_equal(e.type, "api_error");
    assert_true(strlen(e.message) <= 200 + 10);
    for (const unsigned char *p = (const unsigned char *)e.message; *p; p++)
        assert_true(*p >= 0x20 && *p != 0x7f);
    llm_error_info_free(&e);
}

static void test_retry_after(void **state)
{
    (void)state;
    time_t now = 1700000000;
    assert_int_equal(llm_retry_after_ms(NULL, NULL, now), -1);
    assert_int_equal(llm_retry_after_ms("1500", "9", now), 1500);
    assert_int_equal(llm_retry_after_ms(NULL, "2", now), 2000);
    assert_int_equal(llm_retry_after_ms(NULL, "0.25", now), 250);
    assert_int_equal(llm_retry_after_ms("junk", "3", now), 3000);
    assert_int_equal(llm_retry_after_ms(NULL, "soon", now), -1);
    assert_int_equal(llm_retry_after_ms(NULL, "-4", now), -1);
    /* 1700000000 is Tue, 14 Nov 2023 22:13:20 GMT. */
    assert_int_equal(llm_retry_after_ms(NULL, "Tue, 14 Nov 2023 22:13:50 GMT", now), 30000);
    assert_int_equal(llm_retry_after_ms(NULL, "Tue, 14 Nov 2023 22:00:00 GMT", now), 0);
}

static void test_helpers(void **state)
{
    (void)state;
    char *s = llm_strndup_utf8("ab\xc3\xa9z", 3); /* would cut the é */
    assert_string_equal(s, "ab");
    free(s);
    const char *raw = "  line1\n\tline2  \xff end";
    s = llm_excerpt(raw, strlen(raw), 100);
    assert_string_equal(s, "line1 line2 ? end");
    free(s);
    s = llm_excerpt("abcdefgh", 8, 4);
    assert_string_equal(s, "abcd");
    free(s);
    assert_string_equal(llm_error_type_for_status(529), "overloaded_error");
    assert_string_equal(llm_error_type_for_status(418), "invalid_request_error");
    assert_string_equal(llm_error_type_for_status(503), "api_error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_exact),
        cmocka_unit_test(test_body_no_system_no_stream),
        cmocka_unit_test(test_body_invalid),
        cmocka_unit_test(test_body_blocks_all_kinds),
        cmocka_unit_test(test_cache_skips_final_thinking),
        cmocka_unit_test(test_body_sampling_options),
        cmocka_unit_test(test_body_options_refused),
        cmocka_unit_test(test_body_tools),
        cmocka_unit_test(test_body_structured_output),
        cmocka_unit_test(test_body_thinking),
        cmocka_unit_test(test_url_and_headers),
        cmocka_unit_test(test_cache_short_no_markers),
        cmocka_unit_test(test_cache_long_system_and_previous_turn),
        cmocka_unit_test(test_cache_min_length),
        cmocka_unit_test(test_cache_limit_with_caller_markers),
        cmocka_unit_test(test_stream_basic_any_split),
        cmocka_unit_test(test_stream_2026_usage_overwrite),
        cmocka_unit_test(test_stream_error_event),
        cmocka_unit_test(test_stream_malformed_json),
        cmocka_unit_test(test_stream_truncated_and_data_only),
        cmocka_unit_test(test_emit_stop),
        cmocka_unit_test(test_json_body),
        cmocka_unit_test(test_stream_tools_thinking_any_split),
        cmocka_unit_test(test_stream_redacted_stop_sequence_unknown_block),
        cmocka_unit_test(test_stream_json_via_tool),
        cmocka_unit_test(test_stream_bad_tool_input),
        cmocka_unit_test(test_json_body_blocks),
        cmocka_unit_test(test_body_written_equals_tree),
        cmocka_unit_test(test_error_bodies),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
