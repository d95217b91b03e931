/*
 * test_openai.c: the OpenAI-compatible wire format without sockets: the exact
 * request body (system, history, stream options, each max-tokens field), the
 * URL and headers (no Authorization without a key), non-streaming replies,
 * chunk sequences of OpenAI, Groq, vLLM, Ollama and llama.cpp fed through the
 * real SSE parser into the provider's event handler (shapes from
 * docs/PROTOCOLS.md B3, B4, B7), in-stream errors in each form, and error bodies.
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

static llm_provider prov(void)
{
    return (llm_provider){
        .kind = LLM_PROVIDER_OPENAI,
        .name = "openai",
        .base_url = "https://api.openai.com/v1/",
        .api_key = "sk-proj-test-KEY",
        .connect_timeout_ms = 1000,
        .first_byte_timeout_ms = 1000,
        .idle_timeout_ms = 1000,
        .total_timeout_ms = 5000,
        .max_response_bytes = 65536,
    };
}

/* ---- request ---- */

/* The text messages written without a tree equal a tree's dump, with and
 * without a system prompt, streaming or not; a message with blocks in the
 * middle becomes its messages (tool results one each) in their place. */
static void test_body_written_equals_tree(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "Hello", "", "q \" b \\ s / t \t n \n", "ctl \x01\x1f", "caf\xc3\xa9 \xf0\x9f\x98\x80", "</x>",
    };
    enum { N = 7 };
    llm_message m[N];
    for (size_t i = 0; i < N; i++)
        m[i] = (llm_message){ .role = i % 2 ? "assistant" : "user",
                              .content = texts[i % 6],
                              .content_len = i % 3 ? strlen(texts[i % 6]) : 0 };
    llm_provider p = prov();
    for (int shape = 0; shape < 4; shape++) {
        const char *sys = shape & 1 ? "S\xc3\xa9 \"x\"" : NULL;
        for (size_t n = 1; n <= N; n++) {
            llm_request req = {
                .model = "gpt-x", .system = sys, .messages = m, .n_messages = n, .max_tokens = 7, .stream = shape & 2
            };
            char *want = body_tree_reference(&p, &req);
            char *got = llm_build_body(&p, &req);
            assert_non_null(got);
            assert_string_equal(got, want);
            free(got);
            free(want);
        }
    }
    json_t *calls = json_loads("[{\"type\":\"tool_use\",\"id\":\"c1\",\"name\":\"f\",\"input\":{}},"
                               "{\"type\":\"tool_use\",\"id\":\"c2\",\"name\":\"g\",\"input\":{}}]",
                               0, NULL);
    json_t *results = json_loads("[{\"type\":\"tool_result\",\"tool_use_id\":\"c1\",\"content\":\"r1\"},"
                                 "{\"type\":\"tool_result\",\"tool_use_id\":\"c2\",\"content\":\"r2\"}]",
                                 0, NULL);
    m[1].blocks = calls;
    m[2].blocks = results;
    llm_request req = { .model = "gpt-x", .messages = m, .n_messages = 4, .max_tokens = 7 };
    char *got = llm_build_body(&p, &req);
    assert_non_null(got);
    assert_string_equal(got, "{\"model\":\"gpt-x\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},"
                             "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":"
                             "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},{\"id\":\"c2\","
                             "\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},"
                             "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"r1\"},{\"role\":\"tool\","
                             "\"tool_call_id\":\"c2\",\"content\":\"r2\"},{\"role\":\"assistant\",\"content\":"
                             "\"ctl \\u0001\\u001F\"}],\"max_tokens\":7,\"stream\":false}");
    free(got);
    /* Not UTF-8 in a text message or the system prompt, a text message without content: no body. */
    m[3].content = "bad \xc3";
    assert_null(llm_build_body(&p, &req));
    m[3].content = NULL;
    assert_null(llm_build_body(&p, &req));
    m[3].content = "ok";
    req.system = "\xff";
    assert_null(llm_build_body(&p, &req));
    json_decref(calls);
    json_decref(results);
}


static const llm_message HISTORY[] = { { "user", "Hello", NULL, 0, false },
                                       { "assistant", "Hi \"there\"\n", NULL, 0, false },
                                       { "user", "caf\xc3\xa9?", NULL, 0, false } };

#define MSGS_JSON                                                                                             \
    "\"messages\":[{\"role\":\"system\",\"content\":\"You are terse.\"},"                                     \
    "{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":\"Hi \\\"there\\\"\\n\"}," \
    "{\"role\":\"user\",\"content\":\"caf\xc3\xa9?\"}]"

static void test_body_exact_stream(void **state)
{
    (void)state;
    llm_provider p = prov();
    llm_request req = { .model = "gpt-4o-mini",
                        .system = "You are terse.",
                        .messages = HISTORY,
                        .n_messages = 3,
                        .max_tokens = 256,
                        .stream = true };
    char *b = llm_build_body(&p, &req);
    assert_non_null(b);
    assert_string_equal(b, "{\"model\":\"gpt-4o-mini\"," MSGS_JSON ",\"max_tokens\":256,\"stream\":true,"
                           "\"stream_options\":{\"include_usage\":true}}");
    free(b);

    /* The current OpenAI field, as in the B2 example. */
    p.max_tokens_field = "max_completion_tokens";
    b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"gpt-4o-mini\"," MSGS_JSON ",\"max_completion_tokens\":256,"
                           "\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    free(b);
}

static void test_body_exact_nonstream(void **state)
{
    (void)state;
    llm_provider p = prov();
    p.max_tokens_field = "max_tokens"; /* explicit, same as the default */
    llm_request req = { .model = "llama3.2",
                        .system = "You are terse.",
                        .messages = HISTORY,
                        .n_messages = 3,
                        .max_tokens = 64,
                        .stream = false };
    char *b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"llama3.2\"," MSGS_JSON ",\"max_tokens\":64,\"stream\":false}");
    free(b);
    p.max_tokens_field = "max_completion_tokens";
    b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"llama3.2\"," MSGS_JSON ",\"max_completion_tokens\":64,\"stream\":false}");
    free(b);
    p.max_tokens_field = "";
    b = llm_build_body(&p, &req);
    assert_non_null(strstr(b, "\"max_tokens\":64"));
    free(b);

    /* No system prompt (NULL or empty): no system message at all. */
    req.system = NULL;
    req.n_messages = 1;
    b = llm_build_body(&p, &req);
    assert_string_equal(b, "{\"model\":\"llama3.2\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
                           "\"max_tokens\":64,\"stream\":false}");
    free(b);
    req.system = "";
    b = llm_build_body(&p, &req);
    assert_null(strstr(b, "system"));
    free(b);
}

static void test_body_invalid(void **state)
{
    (void)state;
    llm_provider p = prov();
    llm_message msgs[] = { { "user", "ok", NULL, 0, false } };
    llm_request req = { .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 5 };
    p.max_tokens_field = "max_new_tokens"; /* a typo in the configuration is refused, not sent */
    assert_null(llm_build_body(&p, &req));
    p.max_tokens_field = NULL;
    char *b = llm_build_body(&p, &req);
    assert_non_null(b);
    free(b);
    msgs[0].content = "bad \xff utf8";
    assert_null(llm_build_body(&p, &req));
    msgs[0].content = "ok";
    req.system = "bad \xc3";
    assert_null(llm_build_body(&p, &req));
    req.system = NULL;
    req.max_tokens = 0;
    assert_null(llm_build_body(&p, &req));
    req.max_tokens = 5;
    req.n_messages = 0;
    assert_null(llm_build_body(&p, &req));
    req.n_messages = 1;
    req.model = "";
    assert_null(llm_build_body(&p, &req));
    req.model = "m";
    msgs[0].role = NULL;
    assert_null(llm_build_body(&p, &req));
}

/* The headers as one string, lines joined with '|'. */
static void headers_str(struct curl_slist *h, char *out, size_t cap)
{
    out[0] = '\0';
    for (struct curl_slist *l = h; l; l = l->next) {
        if (out[0])
            strncat(out, "|", cap - strlen(out) - 1);
        strncat(out, l->data, cap - strlen(out) - 1);
    }
}

/* ---- rich content and options (B8) ---- */

/* The body for one user message "Hi" (non-streaming) with options given as JSON. */
static char *body_opts(const char *options_json, bool via_tool)
{
    llm_provider p = prov();
    json_t *opts = json_loads(options_json, 0, NULL);
    assert_non_null(opts);
    llm_message msgs[] = { { "user", "Hi", NULL, 0, false } };
    llm_request req = {
        .model = "m", .messages = msgs, .n_messages = 1, .max_tokens = 64, .options = opts, .json_via_tool = via_tool
    };
    char *b = llm_build_body(&p, &req);
    json_decref(opts);
    return b;
}

#define OA_HEAD \
    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":64,\"stream\":false"

static void test_body_blocks_all_kinds(void **state)
{
    (void)state;
    llm_provider p = prov();
    json_t *u1 = json_loads("[{\"type\":\"text\",\"text\":\"What is here?\"},"
                            "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":"
                            "\"iVBORw0KGgo=\"}},"
                            "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x.test/a.jpg\"},"
                            "\"cache_control\":{\"type\":\"ephemeral\"}}]",
                            0, NULL);
    json_t *a1 = json_loads("[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"sig==\"},"
                            "{\"type\":\"redacted_thinking\",\"data\":\"opaque\"},"
                            "{\"type\":\"text\",\"text\":\"Let me \"},{\"type\":\"text\",\"text\":\"look.\"},"
                            "{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"get_weather\",\"input\":{\"city\":"
                            "\"Paris\"}},{\"type\":\"tool_use\",\"id\":\"call_2\",\"name\":\"now\",\"input\":{}}]",
                            0, NULL);
    json_t *u2 = json_loads("[{\"type\":\"tool_result\",\"tool_use_id\":\"call_1\",\"content\":\"18C\"},"
                            "{\"type\":\"tool_result\",\"tool_use_id\":\"call_2\",\"content\":[{\"type\":\"text\","
                            "\"text\":\"no \"},{\"type\":\"text\",\"text\":\"clock\"}],\"is_error\":true},"
                            "{\"type\":\"text\",\"text\":\"Go on.\"}]",
                            0, NULL);
    json_t *a2 =
        json_loads("[{\"type\":\"tool_use\",\"id\":\"call_3\",\"name\":\"now\",\"input\":{\"tz\":\"UTC\"}}]", 0, NULL);
    json_t *u3 = json_loads("[{\"type\":\"tool_result\",\"tool_use_id\":\"call_3\"}]", 0, NULL);
    assert_true(u1 && a1 && u2 && a2 && u3);
    llm_message msgs[] = { { "user", NULL, u1, 0, false },
                           { "assistant", NULL, a1, 0, false },
                           { "user", NULL, u2, 0, false },
                           { "assistant", NULL, a2, 0, false },
                           { "user", NULL, u3, 0, false } };
    llm_request req = { .model = "m", .system = "S", .messages = msgs, .n_messages = 5, .max_tokens = 9 };
    char *b = llm_build_body(&p, &req);
    assert_non_null(b);
    assert_string_equal(
        b, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":"
           "[{\"type\":\"text\",\"text\":\"What is here?\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
           "\"data:image/png;base64,iVBORw0KGgo=\"}},{\"type\":\"image_url\",\"image_url\":{\"url\":"
           "\"https://x.test/a.jpg\"}}]},{\"role\":\"assistant\",\"content\":\"Let me look.\",\"tool_calls\":"
           "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
           "\"{\\\"city\\\":\\\"Paris\\\"}\"}},{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":"
           "\"now\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"18C\"},"
           "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":\"Error: no clock\"},{\"role\":\"user\","
           "\"content\":\"Go on.\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_3\","
           "\"type\":\"function\",\"function\":{\"name\":\"now\",\"arguments\":\"{\\\"tz\\\":\\\"UTC\\\"}\"}}]},"
           "{\"role\":\"tool\",\"tool_call_id\":\"call_3\",\"content\":\"\"}],\"max_tokens\":9,\"stream\":false}");
    free(b);
    /* What a Chat Completions message cannot hold is refused, not dropped. */
    const char *bad[][2] = {
        { "user", "[{\"type\":\"document\",\"source\":{}}]" },
        { "user", "[{\"type\":\"tool_result\",\"tool_use_id\":\"x\",\"content\":[{\"type\":\"image\",\"source\":"
                  "{\"type\":\"url\",\"url\":\"https://x.test/a.png\"}}]}]" },
        { "user", "[{\"type\":\"tool_result\",\"content\":\"no id\"}]" },
        { "user", "[{\"type\":\"image\",\"source\":{\"type\":\"file\"}}]" },
        { "user", "[{\"type\":\"thinking\",\"thinking\":\"x\"}]" },
        { "assistant", "[{\"type\":\"tool_use\",\"id\":\"c\",\"name\":\"f\",\"input\":[]}]" },
        { "assistant", "[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x.test/a.png\"}}]" },
        { "user", "[]" },
        { "user", "{}" },
        { "system", "[{\"type\":\"text\",\"text\":\"x\"}]" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *blk = json_loads(bad[i][1], 0, NULL);
        assert_non_null(blk);
        llm_message one[] = { { bad[i][0], NULL, blk, 0, false } };
        llm_request r1 = { .model = "m", .messages = one, .n_messages = 1, .max_tokens = 9 };
        char *x = llm_build_body(&p, &r1);
        if (x)
            fail_msg("accepted %s: %s", bad[i][1], x);
        json_decref(blk);
    }
    json_decref(u1);
    json_decref(a1);
    json_decref(u2);
    json_decref(a2);
    json_decref(u3);
}

static void test_body_sampling_options(void **state)
{
    (void)state;
    char *b = body_opts("{\"n\":1,\"user\":\"u-1\",\"top_logprobs\":2,\"logprobs\":true,\"logit_bias\":{\"50256\":"
                        "-100},\"frequency_penalty\":0.5,\"presence_penalty\":-0.5,\"seed\":7,\"stop\":[\"END\"],"
                        "\"top_k\":40,\"top_p\":0.25,\"temperature\":1.5,\"metadata\":{\"k\":\"v\"},"
                        "\"reasoning_effort\":\"low\"}",
                        false);
    assert_non_null(b);
    assert_string_equal(b, OA_HEAD ",\"temperature\":1.5,\"top_p\":0.25,\"top_k\":40,\"stop\":[\"END\"],"
                                   "\"seed\":7,\"presence_penalty\":-0.5,\"frequency_penalty\":0.5,\"logit_bias\":"
                                   "{\"50256\":-100},\"logprobs\":true,\"top_logprobs\":2,\"n\":1,\"user\":\"u-1\","
                                   "\"reasoning_effort\":\"low\"}");
    free(b);
    const char *bad[] = { "{\"frobnicate\":1}",
                          "{\"tools\":[{\"name\":\"f\"}]}",
                          "{\"tool_choice\":{\"type\":\"tool\"}}",
                          "{\"response_format\":{\"type\":\"yaml\"}}",
                          "{\"response_format\":{\"type\":\"json_schema\"}}",
                          "{\"response_format\":{\"type\":\"json_schema\",\"schema\":{},\"name\":3}}",
                          "{\"thinking\":{\"type\":\"enabled\"}}",
                          "{\"thinking\":{\"type\":\"maybe\"}}",
                          "{\"parallel_tool_calls\":1}",
                          "[]" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b = body_opts(bad[i], false);
        if (b)
            fail_msg("accepted %s: %s", bad[i], b);
    }
}

static void test_body_tools(void **state)
{
    (void)state;
    const char *tools = "\"tools\":[{\"name\":\"get_weather\",\"description\":\"Weather now\",\"input_schema\":"
                        "{\"type\":\"object\"},\"strict\":true},{\"name\":\"now\",\"input_schema\":{\"type\":"
                        "\"object\"}}],\"parallel_tool_calls\":false";
    const char *want_tools = ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                             "\"description\":\"Weather now\",\"parameters\":{\"type\":\"object\"},\"strict\":true}},"
                             "{\"type\":\"function\",\"function\":{\"name\":\"now\",\"parameters\":{\"type\":"
                             "\"object\"}}}],\"parallel_tool_calls\":false";
    const char *choices[][2] = {
        { "", "" },
        { ",\"tool_choice\":{\"type\":\"auto\"}", ",\"tool_choice\":\"auto\"" },
        { ",\"tool_choice\":{\"type\":\"none\"}", ",\"tool_choice\":\"none\"" },
        { ",\"tool_choice\":{\"type\":\"any\"}", ",\"tool_choice\":\"required\"" },
        { ",\"tool_choice\":{\"type\":\"tool\",\"name\":\"now\"}",
          ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"now\"}}" },
    };
    for (size_t i = 0; i < 5; i++) {
        char opts[1024], want[2048];
        snprintf(opts, sizeof opts, "{%s%s}", tools, choices[i][0]);
        snprintf(want, sizeof want, OA_HEAD "%s%s}", want_tools, choices[i][1]);
        char *b = body_opts(opts, false);
        assert_non_null(b);
        assert_string_equal(b, want);
        free(b);
    }
    /* tool_choice auto or none without tools says nothing; required stays for OpenAI to refuse. */
    char *n = body_opts("{\"tool_choice\":{\"type\":\"none\"}}", false);
    assert_string_equal(n, OA_HEAD "}");
    free(n);
    n = body_opts("{\"tool_choice\":{\"type\":\"any\"}}", false);
    assert_string_equal(n, OA_HEAD ",\"tool_choice\":\"required\"}");
    free(n);
    /* parallel_tool_calls without tools says nothing (OpenAI rejects it alone). */
    char *b = body_opts("{\"parallel_tool_calls\":true}", false);
    assert_string_equal(b, OA_HEAD "}");
    free(b);
}

static void test_body_structured_and_reasoning(void **state)
{
    (void)state;
    char *b = body_opts("{\"response_format\":{\"type\":\"json_schema\",\"name\":\"city\",\"strict\":true,"
                        "\"schema\":{\"type\":\"object\"}}}",
                        false);
    assert_string_equal(b, OA_HEAD ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":"
                                   "\"city\",\"schema\":{\"type\":\"object\"},\"strict\":true}}}");
    free(b);
    b = body_opts("{\"response_format\":{\"type\":\"json_schema\",\"schema\":{\"type\":\"object\"}}}", false);
    assert_string_equal(b, OA_HEAD ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":"
                                   "\"response\",\"schema\":{\"type\":\"object\"}}}}");
    free(b);
    b = body_opts("{\"response_format\":{\"type\":\"json_object\"}}", false);
    assert_string_equal(b, OA_HEAD ",\"response_format\":{\"type\":\"json_object\"}}");
    free(b);
    b = body_opts("{\"response_format\":{\"type\":\"text\"}}", false);
    assert_string_equal(b, OA_HEAD "}");
    free(b);
    /* Through a forced tool. */
    b = body_opts("{\"response_format\":{\"type\":\"json_schema\",\"schema\":{\"type\":\"object\"}}}", true);
    assert_string_equal(b, OA_HEAD ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"json_output\","
                                   "\"description\":\"Respond with the final answer as this tool's input.\","
                                   "\"parameters\":{\"type\":\"object\"}}}],\"tool_choice\":{\"type\":\"function\","
                                   "\"function\":{\"name\":\"json_output\"}}}");
    free(b);
    b = body_opts("{\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"response_format\":{\"type\":\"json_object\"}}",
                  true);
    assert_non_null(strstr(b, "\"tool_choice\":\"required\"}"));
    assert_non_null(strstr(b, "\"name\":\"json_output\""));
    free(b);
    assert_null(body_opts("{\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],\"tool_choice\":{\"type\":\"none\"},"
                          "\"response_format\":{\"type\":\"json_object\"}}",
                          true));
    /* thinking budgets become an effort; an explicit effort wins; disabled says nothing. */
    const char *budgets[][2] = {
        { "1024", "low" }, { "2048", "low" }, { "2049", "medium" }, { "8192", "medium" }, { "8193", "high" }
    };
    for (size_t i = 0; i < 5; i++) {
        char opts[128], want[256];
        snprintf(opts, sizeof opts, "{\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":%s}}", budgets[i][0]);
        snprintf(want, sizeof want, OA_HEAD ",\"reasoning_effort\":\"%s\"}", budgets[i][1]);
        b = body_opts(opts, false);
        assert_string_equal(b, want);
        free(b);
    }
    b = body_opts("{\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":9000},\"reasoning_effort\":\"minimal\"}",
                  false);
    assert_string_equal(b, OA_HEAD ",\"reasoning_effort\":\"minimal\"}");
    free(b);
    b = body_opts("{\"thinking\":{\"type\":\"disabled\"}}", false);
    assert_string_equal(b, OA_HEAD "}");
    free(b);
}

static void test_url_and_headers(void **state)
{
    (void)state;
    llm_provider p = prov();
    char *url = llm_openai_ops.build_url(&p);
    assert_string_equal(url, "https://api.openai.com/v1/chat/completions");
    free(url);
    p.base_url = "https://api.groq.com/openai/v1";
    url = llm_openai_ops.build_url(&p);
    assert_string_equal(url, "https://api.groq.com/openai/v1/chat/completions");
    free(url);
    p.base_url = "http://localhost:11434/v1";
    url = llm_openai_ops.build_url(&p);
    assert_string_equal(url, "http://localhost:11434/v1/chat/completions");
    free(url);
    p.base_url = "http://h/v1\r\nX: y";
    assert_null(llm_openai_ops.build_url(&p));

    char buf[512];
    p = prov();
    struct curl_slist *h = llm_openai_ops.build_headers(&p, true);
    headers_str(h, buf, sizeof buf);
    assert_string_equal(buf, "Authorization: Bearer sk-proj-test-KEY|content-type: application/json|"
                             "accept: text/event-stream|Expect:");
    curl_slist_free_all(h);
    h = llm_openai_ops.build_headers(&p, false);
    headers_str(h, buf, sizeof buf);
    assert_string_equal(buf, "Authorization: Bearer sk-proj-test-KEY|content-type: application/json|"
                             "accept: application/json|Expect:");
    curl_slist_free_all(h);

    /* No key (Ollama, llama.cpp, vLLM): no Authorization header at all. */
    p.api_key = "";
    h = llm_openai_ops.build_headers(&p, true);
    headers_str(h, buf, sizeof buf);
    assert_string_equal(buf, "content-type: application/json|accept: text/event-stream|Expect:");
    curl_slist_free_all(h);
    p.api_key = NULL;
    h = llm_openai_ops.build_headers(&p, false);
    headers_str(h, buf, sizeof buf);
    assert_string_equal(buf, "content-type: application/json|accept: application/json|Expect:");
    curl_slist_free_all(h);

    /* A key with a line break would inject headers: refused. */
    p.api_key = "sk\r\nX-Evil: 1";
    assert_null(llm_openai_ops.build_headers(&p, true));

    assert_string_equal(llm_openai_ops.request_id_header, "x-request-id");
}

/* ---- replies ---- */

/* The sink and the SSE feeder are in llm_test_util.h (shared with the other provider suite). */
static chat_rc feed_stream(llm_parse *st, const char *bytes, size_t step)
{
    return llm_test_feed(&llm_openai_ops, st, bytes, step);
}

static void test_json_body_openai(void **state)
{
    (void)state;
    /* B3, verbatim but for the cached tokens. */
    const char *body =
        "{\"id\":\"chatcmpl-ABfvaueLEMLNYbT8YzpJxsmiQ6HSY\",\"object\":\"chat.completion\",\"created\":1727346142,"
        "\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
        "\"content\":\"Hello!\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":1400,\"completion_tokens\":37,\"total_tokens\":1437,"
        "\"prompt_tokens_details\":{\"cached_tokens\":1024},\"completion_tokens_details\":{\"reasoning_tokens\":0}},"
        "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b40fb1c6fb\"}";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(llm_openai_ops.parse_json_body(&st, body, strlen(body)), LLM_OK);
    assert_string_equal(s.text, "Hello!");
    assert_string_equal(st.stop_reason, "stop");
    assert_string_equal(st.model, "gpt-4o-2024-08-06");
    assert_int_equal(st.usage.input_tokens, 1400 - 1024); /* uncached, as Anthropic counts */
    assert_int_equal(st.usage.cache_read_tokens, 1024);
    assert_int_equal(st.usage.cache_write_tokens, -1);
    assert_int_equal(st.usage.output_tokens, 37);
    assert_true(st.complete);
    llm_parse_reset(&st);
}

static void test_json_body_variants(void **state)
{
    (void)state;
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    /* Ollama: usage with the three counts only; vLLM-style omitted nulls; finish "length". */
    const char *ollama = "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"llama3.2\","
                         "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                         "\"assistant\",\"content\":\"Hi there\"},\"finish_reason\":\"length\"}],"
                         "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}";
    assert_int_equal(llm_openai_ops.parse_json_body(&st, ollama, strlen(ollama)), LLM_OK);
    assert_string_equal(s.text, "Hi there");
    assert_string_equal(st.stop_reason, "length");
    assert_int_equal(st.usage.input_tokens, 12);
    assert_int_equal(st.usage.cache_read_tokens, -1); /* not reported, not zero */
    assert_int_equal(st.usage.output_tokens, 2);
    llm_parse_reset(&st);

    /* content null (refusal / tool calls): an empty reply, not an error. */
    memset(&s, 0, sizeof s);
    const char *nul = "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,"
                      "\"refusal\":\"I can't\"},\"finish_reason\":\"stop\"}]}";
    assert_int_equal(llm_openai_ops.parse_json_body(&st, nul, strlen(nul)), LLM_OK);
    assert_int_equal(s.len, 0);
    assert_int_equal(st.usage.input_tokens, -1);
    llm_parse_reset(&st);

    /* No choices, empty choices, broken JSON: protocol errors. */
    assert_int_equal(llm_openai_ops.parse_json_body(&st, "{\"choices\":[]}", 14), LLM_ERR_PROTOCOL);
    assert_string_equal(st.err_type, "protocol_error");
    llm_parse_reset(&st);
    assert_int_equal(llm_openai_ops.parse_json_body(&st, "{\"object\":\"x\"}", 14), LLM_ERR_PROTOCOL);
    llm_parse_reset(&st);
    assert_int_equal(llm_openai_ops.parse_json_body(&st, "{\"choices\":", 11), LLM_ERR_PROTOCOL);
    llm_parse_reset(&st);

    /* An error object with a 200: the provider's error. */
    const char *err = "{\"error\":{\"message\":\"Loading model\",\"type\":\"unavailable_error\",\"code\":503}}";
    assert_int_equal(llm_openai_ops.parse_json_body(&st, err, strlen(err)), LLM_ERR_STREAM);
    assert_string_equal(st.err_type, "unavailable_error");
    assert_string_equal(st.err_message, "Loading model");
    assert_string_equal(st.err_code, "503");
    llm_parse_reset(&st);

    /* The sink refusing more text stops the parse. */
    sink stop = { .stop_after = 1 };
    llm_parse_init(&st, sink_emit, &stop);
    assert_int_not_equal(llm_openai_ops.parse_json_body(&st, ollama, strlen(ollama)), LLM_OK);
    assert_false(st.complete);
    llm_parse_reset(&st);
}

/* B4, verbatim shapes (ids shortened): role chunk, content chunks, a separate
 * finish chunk, the choices:[] usage chunk, [DONE]. */
#define OA_CHUNK(delta, finish)                                                                                \
    "data: {\"id\":\"chatcmpl-DZmny\",\"object\":\"chat.completion.chunk\",\"created\":1777421458,\"model\":"  \
    "\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_d4636387fb\",\"choices\":" \
    "[{\"index\":0,\"delta\":" delta ",\"logprobs\":null,\"finish_reason\":" finish "}],\"usage\":null,"       \
    "\"obfuscation\":\"7aTeg89Ysb8uO\"}\n\n"
static const char *STREAM_OPENAI = OA_CHUNK("{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}", "null")
    OA_CHUNK("{\"content\":\"Hello\"}", "null") OA_CHUNK("{\"content\":\" caf\\u00e9\"}", "null") OA_CHUNK(
        "{}",
        "\"stop\"") "data: "
                    "{\"id\":\"chatcmpl-DZmny\",\"object\":\"chat.completion.chunk\",\"created\":1777421458,\"model\":"
                    "\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_d4636387fb\","
                    "\"choices\":[],"
                    "\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":177,\"total_tokens\":196,\"prompt_tokens_"
                    "details\":"
                    "{\"cached_tokens\":3},\"completion_tokens_details\":{\"reasoning_tokens\":0}},\"obfuscation\":"
                    "\"a\"}\n\n"
                    "data: [DONE]\n\n";

static void test_stream_openai_any_split(void **state)
{
    (void)state;
    size_t steps[] = { 1, 2, 3, 7, 64, 100000 };
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        assert_int_equal(feed_stream(&st, STREAM_OPENAI, steps[k]), CHAT_OK);
        assert_int_equal(st.err, LLM_OK);
        assert_true(st.finished);
        assert_true(st.complete);
        assert_string_equal(s.text, "Hello caf\xc3\xa9");
        assert_int_equal(s.pieces, 2); /* the empty role chunk emits nothing */
        assert_string_equal(st.model, "gpt-4o-2024-08-06");
        assert_string_equal(st.stop_reason, "stop");
        assert_int_equal(st.usage.input_tokens, 16);
        assert_int_equal(st.usage.cache_read_tokens, 3);
        assert_int_equal(st.usage.output_tokens, 177);
        assert_int_equal(st.usage.cache_write_tokens, -1);
        llm_parse_reset(&st);
    }
}

/* Cut after the finish chunk, before the usage chunk: the text is complete,
 * the usage unknown (-1, never 0). */
static void test_stream_cut_before_usage(void **state)
{
    (void)state;
    size_t cut = strstr(STREAM_OPENAI, "\"choices\":[],") - STREAM_OPENAI;
    char *part = strndup(STREAM_OPENAI, cut);
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, part, 5), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_true(st.finished);
    assert_false(st.complete);
    assert_string_equal(s.text, "Hello caf\xc3\xa9");
    assert_int_equal(st.usage.input_tokens, -1);
    assert_int_equal(st.usage.output_tokens, -1);
    assert_int_equal(st.usage.cache_read_tokens, -1);
    llm_parse_reset(&st);
    free(part);

    /* Cut before the finish chunk: not finished, so the call reports truncation. */
    cut = strstr(STREAM_OPENAI, "\"delta\":{}") - STREAM_OPENAI;
    part = strndup(STREAM_OPENAI, cut);
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, part, 5), CHAT_OK);
    assert_false(st.finished);
    assert_false(st.complete);
    llm_parse_reset(&st);
    free(part);
}

static void test_stream_groq(void **state)
{
    (void)state;
    /* Groq: x_groq.id first, usage inside x_groq of the finish chunk, no usage chunk. */
    const char *bytes =
        "data: {\"id\":\"chatcmpl-g\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
        "\"llama-3.3-70b-versatile\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":"
        "{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],"
        "\"x_groq\":{\"id\":\"req_01abc\"}}\n\n"
        "data: {\"id\":\"chatcmpl-g\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
        "\"llama-3.3-70b-versatile\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Fast \"},"
        "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"chatcmpl-g\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
        "\"llama-3.3-70b-versatile\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"reply\"},"
        "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"chatcmpl-g\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
        "\"llama-3.3-70b-versatile\",\"service_tier\":\"on_demand\",\"choices\":[{\"index\":0,\"delta\":{},"
        "\"logprobs\":null,\"finish_reason\":\"length\"}],\"x_groq\":{\"id\":\"req_01abc\",\"usage\":"
        "{\"queue_time\":0.01,\"prompt_tokens\":42,\"prompt_time\":0.001,\"completion_tokens\":2,"
        "\"completion_time\":0.01,\"total_tokens\":44,\"total_time\":0.011}}}\n\n"
        "data: [DONE]\n\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, bytes, 9), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_true(st.complete);
    assert_string_equal(s.text, "Fast reply");
    assert_string_equal(st.stop_reason, "length");
    assert_string_equal(st.model, "llama-3.3-70b-versatile");
    assert_int_equal(st.usage.input_tokens, 42);
    assert_int_equal(st.usage.output_tokens, 2);
    assert_int_equal(st.usage.cache_read_tokens, -1);
    llm_parse_reset(&st);
}

static void test_stream_vllm_continuous_usage(void **state)
{
    (void)state;
    /* vLLM with continuous_usage_stats: usage on every chunk, nulls omitted; the last one wins. */
    const char *bytes =
        "data: {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],"
        "\"usage\":{\"prompt_tokens\":10,\"total_tokens\":10,\"completion_tokens\":0}}\n\n"
        "data: {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen\","
        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],"
        "\"usage\":{\"prompt_tokens\":10,\"total_tokens\":11,\"completion_tokens\":1}}\n\n"
        "data: {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen\","
        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":10,\"total_tokens\":12,\"completion_tokens\":2}}\n\n"
        "data: {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen\","
        "\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"total_tokens\":12,\"completion_tokens\":2}}\n\n"
        "data: [DONE]\n\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, bytes, 100000), CHAT_OK);
    assert_true(st.complete);
    assert_string_equal(s.text, "ab"); /* finish_reason in the last content chunk */
    assert_string_equal(st.stop_reason, "stop");
    assert_int_equal(st.usage.input_tokens, 10);
    assert_int_equal(st.usage.output_tokens, 2); /* not 0 + 1 + 2 + 2 */
    llm_parse_reset(&st);
}

static void test_stream_ollama_no_done(void **state)
{
    (void)state;
    /* Ollama: a separate finish chunk with delta {}, usage chunk, and in some
     * cases no [DONE]: the stream just closes. Finished, so a success. */
    const char *bytes =
        "data: {\"id\":\"chatcmpl-o\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2\","
        "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":\"Hi\"},\"finish_reason\":null}]}\r\n\r\n"
        ": ping\r\n\r\n"
        "data: {\"id\":\"chatcmpl-o\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2\","
        "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":\"\",\"reasoning\":\"thinking...\"},\"finish_reason\":null}]}\r\n\r\n"
        "data: {\"id\":\"chatcmpl-o\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2\","
        "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":\"\"},\"finish_reason\":\"stop\"}]}\r\n\r\n"
        "data: {\"id\":\"chatcmpl-o\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2\","
        "\"system_fingerprint\":\"fp_ollama\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,"
        "\"completion_tokens\":1,\"total_tokens\":8}}\r\n\r\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, bytes, 4), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_true(st.finished);
    assert_false(st.complete);
    assert_string_equal(s.text, "Hi"); /* the reasoning text is not reply text */
    assert_int_equal(st.usage.input_tokens, 7);
    assert_int_equal(st.usage.output_tokens, 1);
    llm_parse_reset(&st);

    /* Ollama losing a mid-stream error: an empty-delta chunk, then EOF. Not finished: truncated. */
    const char *lost =
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"llama3.2\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"role\":\"assistant\",\"content\":\"Par\"},\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"llama3.2\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, lost, 100000), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_false(st.finished);
    assert_string_equal(s.text, "Par");
    llm_parse_reset(&st);
}

static void test_stream_llamacpp(void **state)
{
    (void)state;
    /* llama.cpp: finish_reason with timings on the last chunk, then [DONE]. */
    const char *ok =
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":"
        "null}}],\"created\":1,\"id\":\"chatcmpl-l\",\"model\":\"gguf\",\"system_fingerprint\":\"b4000\","
        "\"object\":\"chat.completion.chunk\"}\n\n"
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Yo\"}}],\"created\":1,"
        "\"id\":\"chatcmpl-l\",\"model\":\"gguf\",\"object\":\"chat.completion.chunk\"}\n\n"
        "data: {\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"created\":1,\"id\":"
        "\"chatcmpl-l\",\"model\":\"gguf\",\"object\":\"chat.completion.chunk\",\"timings\":{\"prompt_n\":5,"
        "\"predicted_n\":1}}\n\n"
        "data: {\"choices\":[],\"created\":1,\"id\":\"chatcmpl-l\",\"model\":\"gguf\",\"object\":"
        "\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":1,\"prompt_tokens\":5,\"total_tokens\":6}}\n\n"
        "data: [DONE]\n\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, ok, 3), CHAT_OK);
    assert_true(st.complete);
    assert_string_equal(s.text, "Yo");
    assert_int_equal(st.usage.input_tokens, 5);
    llm_parse_reset(&st);

    /* Newer llama.cpp: an in-band error with an integer code, then the stream ends. */
    const char *err_new =
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Yo\"}}],\"object\":"
        "\"chat.completion.chunk\"}\n\n"
        "data: {\"error\":{\"code\":500,\"message\":\"failed to decode\",\"type\":\"server_error\"}}\n\n";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, err_new, 100000), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_STREAM);
    assert_string_equal(st.err_type, "server_error");
    assert_string_equal(st.err_message, "failed to decode");
    assert_string_equal(st.err_code, "500");
    assert_string_equal(s.text, "Yo");
    llm_parse_reset(&st);

    /* Older llama.cpp: the non-standard `error:` field (dropped by SSE rules),
     * then [DONE] without any finish_reason: truncated, not a success. */
    const char *err_old =
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Yo\"}}],\"object\":"
        "\"chat.completion.chunk\"}\n\n"
        "error: {\"code\":500,\"message\":\"failed\",\"type\":\"server_error\"}\n\n"
        "data: [DONE]\n\n";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(feed_stream(&st, err_old, 100000), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_TRUNCATED);
    assert_string_equal(st.err_type, "truncated");
    assert_non_null(strstr(st.err_message, "finish_reason"));
    assert_false(st.complete);
    llm_parse_reset(&st);
}

static void test_stream_errors(void **state)
{
    (void)state;
    struct {
        const char *bytes;
        const char *type, *message, *code;
        const char *text;
    } cases[] = {
        /* OpenAI (B4): code null. */
        { OA_CHUNK("{\"content\":\"Hi\"}", "null") "data: {\"error\":{\"message\":\"The server had an error while "
                                                   "processing your request.\",\"type\":"
                                                   "\"server_error\",\"param\":null,\"code\":null}}\n\n",
          "server_error", "The server had an error while processing your request.", NULL, "Hi" },
        /* A string code. */
        { "data: {\"error\":{\"message\":\"Rate limited\",\"type\":\"requests\",\"param\":null,\"code\":"
          "\"rate_limit_exceeded\"}}\n\n",
          "requests", "Rate limited", "rate_limit_exceeded", "" },
        /* vLLM: integer code, then [DONE] (never reached). */
        { "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n"
          "data: {\"error\":{\"message\":\"out of KV cache\",\"type\":\"InternalServerError\",\"param\":null,"
          "\"code\":500}}\n\n"
          "data: [DONE]\n\n",
          "InternalServerError", "out of KV cache", "500", "x" },
        /* `event: error`, the other form the openai SDK accepts. */
        { "event: error\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"api_error\",\"code\":\"e1\"}}\n\n",
          "api_error", "boom", "e1", "" },
        /* `event: error` whose data is not JSON. */
        { "event: error\ndata: upstream <b>died</b>\n\n", "api_error", "upstream <b>died</b>", NULL, "" },
        /* {"error":"string"}. */
        { "data: {\"error\":\"model crashed\"}\n\n", "api_error", "model crashed", NULL, "" },
        /* An error object without a message. */
        { "data: {\"error\":{\"type\":\"server_error\"}}\n\n", "server_error",
          "{\"error\":{\"type\":\"server_error\"}}", NULL, "" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        assert_int_equal(feed_stream(&st, cases[i].bytes, 7), CHAT_ECANCELED);
        if (st.err != LLM_ERR_STREAM || strcmp(st.err_type, cases[i].type) != 0 ||
            strcmp(st.err_message, cases[i].message) != 0 || strcmp(s.text, cases[i].text) != 0 ||
            (cases[i].code ? !st.err_code || strcmp(st.err_code, cases[i].code) != 0 : st.err_code != NULL))
            fail_msg("case %zu: err %d type %s message '%s' code %s text '%s'", i, st.err, st.err_type, st.err_message,
                     st.err_code ? st.err_code : "(null)", s.text);
        assert_false(st.complete);
        llm_parse_reset(&st);
    }
}

static void test_stream_done_and_oddities(void **state)
{
    (void)state;
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    /* [DONE] first: nothing came, not even a finish_reason. */
    assert_int_equal(feed_stream(&st, "data: [DONE]\n\n", 100), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_TRUNCATED);
    llm_parse_reset(&st);

    /* "[DONE]" is compared exactly, before JSON parsing; other non-JSON is malformed. */
    assert_int_equal(feed_stream(&st, "data: [DONE] \n\n", 100), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    assert_non_null(strstr(st.err_message, "malformed"));
    llm_parse_reset(&st);
    assert_int_equal(feed_stream(&st, OA_CHUNK("{\"content\":\"Hel", "null"), 100), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    llm_parse_reset(&st);
    assert_int_equal(feed_stream(&st, "data: [1,2]\n\n", 100), CHAT_ECANCELED);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    llm_parse_reset(&st);

    /* Unknown event types are skipped; "error": null is no error; chunks after [DONE] are ignored. */
    memset(&s, 0, sizeof s);
    const char *bytes = "event: keepalive\ndata: {not json\n\n"
                        "data: {\"error\":null,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},"
                        "\"finish_reason\":\"stop\"}]}\n\n"
                        "data: [DONE]\n\n"
                        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"late\"}}]}\n\n"
                        "data: not json\n\n";
    assert_int_equal(feed_stream(&st, bytes, 100000), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_true(st.complete);
    assert_string_equal(s.text, "ok");
    llm_parse_reset(&st);

    /* The sink refusing more text stops the stream at once. */
    sink stop = { .stop_after = 1 };
    llm_parse_init(&st, sink_emit, &stop);
    assert_int_equal(feed_stream(&st, STREAM_OPENAI, 100000), CHAT_ECANCELED);
    assert_string_equal(stop.text, "Hello");
    llm_parse_reset(&st);
}

/* ---- error bodies ---- */

/* ---- rich replies (B8) ---- */

#define TC(idx, rest) "{\"tool_calls\":[{\"index\":" #idx rest "}]}"
#define TC_FIRST(idx, id, name, args)                                                                                 \
    TC(idx, ",\"id\":\"" id "\",\"type\":\"function\",\"function\":{\"name\":\"" name "\",\"arguments\":\"" args "\"" \
            "}")
#define TC_ARGS(idx, args) TC(idx, ",\"function\":{\"arguments\":\"" args "\"}")
#define OA_USAGE_DONE                                                                                               \
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":40,\"completion_tokens_details\":" \
    "{\"reasoning_tokens\":25}}}\n\ndata: [DONE]\n\n"

/* OpenAI's shape: reasoning (DeepSeek/vLLM field), text, then two calls one after the other. */
static const char *STREAM_TOOLS =
    OA_CHUNK("{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"Think\"}", "null")
        OA_CHUNK("{\"reasoning_content\":\"ing\"}", "null") OA_CHUNK("{\"content\":\"Checking.\"}", "null")
            OA_CHUNK(TC_FIRST(0, "call_a", "get_weather", ""), "null") OA_CHUNK(TC_ARGS(0, "{\\\"city\\\":"), "null")
                OA_CHUNK(TC_ARGS(0, "\\\"Paris\\\"}"), "null") OA_CHUNK(TC_FIRST(1, "call_b", "now", "{}"), "null")
                    OA_CHUNK("{}", "\"tool_calls\"") OA_USAGE_DONE;

static void test_stream_tools_reasoning_any_split(void **state)
{
    (void)state;
    size_t steps[] = { 1, 3, 64, 100000 };
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        st.event = sink_event;
        assert_int_equal(feed_stream(&st, STREAM_TOOLS, steps[k]), CHAT_OK);
        assert_int_equal(st.err, LLM_OK);
        assert_true(st.complete);
        assert_string_equal(s.text, "Checking.");
        assert_string_equal(s.events, "K0:Thinking|E0:thinking|T1:Checking.|E1:text|S2:call_a:get_weather|"
                                      "A2:{\"city\":\"Paris\"}|E2:tool_use|S3:call_b:now|A3:{}|E3:tool_use|");
        char *c = content_json(&st);
        assert_string_equal(c, "[{\"type\":\"thinking\",\"thinking\":\"Thinking\"},{\"type\":\"text\",\"text\":"
                               "\"Checking.\"},{\"type\":\"tool_use\",\"id\":\"call_a\",\"name\":\"get_weather\","
                               "\"input\":{\"city\":\"Paris\"}},{\"type\":\"tool_use\",\"id\":\"call_b\",\"name\":"
                               "\"now\",\"input\":{}}]");
        free(c);
        assert_string_equal(st.stop_reason, "tool_calls");
        assert_int_equal(st.usage.reasoning_tokens, 25);
        assert_int_equal(st.usage.output_tokens, 40);
        llm_parse_reset(&st);
    }
}

/* Pieces of several calls interleaved, Ollama's "reasoning" field, and text
 * after the calls: the later calls are held and come whole, in order. */
static void test_stream_interleaved_calls(void **state)
{
    (void)state;
    const char *bytes =
        OA_CHUNK("{\"reasoning\":\"r\"}", "null") OA_CHUNK(TC_FIRST(0, "call_a", "f", "{\\\"x\\\":"), "null")
            OA_CHUNK(TC_FIRST(1, "call_b", "g", "{\\\"y\\\":"), "null") OA_CHUNK(TC_ARGS(0, "1}"), "null")
                OA_CHUNK(TC_FIRST(2, "call_c", "h", ""), "null") OA_CHUNK(TC_ARGS(1, "2}"), "null")
                    OA_CHUNK("{\"content\":\"And text.\"}", "null") OA_CHUNK("{}", "\"tool_calls\"") "data: [DONE]\n\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    st.event = sink_event;
    assert_int_equal(feed_stream(&st, bytes, 5), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_string_equal(s.events, "K0:r|E0:thinking|S1:call_a:f|A1:{\"x\":1}|E1:tool_use|S2:call_b:g|"
                                  "A2:{\"y\":2}|E2:tool_use|S3:call_c:h|E3:tool_use|T4:And text.|E4:text|");
    char *c = content_json(&st);
    assert_string_equal(c, "[{\"type\":\"thinking\",\"thinking\":\"r\"},{\"type\":\"tool_use\",\"id\":\"call_a\","
                           "\"name\":\"f\",\"input\":{\"x\":1}},{\"type\":\"tool_use\",\"id\":\"call_b\",\"name\":"
                           "\"g\",\"input\":{\"y\":2}},{\"type\":\"tool_use\",\"id\":\"call_c\",\"name\":\"h\","
                           "\"input\":{}},{\"type\":\"text\",\"text\":\"And text.\"}]");
    free(c);
    llm_parse_reset(&st);

    /* No id (a local server) gets call_<index>; a whole call in one piece with
     * arguments as an object; calls without an index numbered by position. */
    const char *local = OA_CHUNK("{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}},"
                                 "{\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}",
                                 "\"tool_calls\"") "data: [DONE]\n\n";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    st.event = sink_event;
    assert_int_equal(feed_stream(&st, local, 100000), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_string_equal(s.events, "S0:call_0:f|A0:{\"a\":1}|E0:tool_use|S1:call_1:g|A1:{}|E1:tool_use|");
    llm_parse_reset(&st);
}

static void test_stream_json_via_tool(void **state)
{
    (void)state;
    const char *bytes = OA_CHUNK(TC_FIRST(0, "call_j", "json_output", "{\\\"n\\\":"), "null")
        OA_CHUNK(TC_ARGS(0, "3}"), "null") OA_CHUNK("{}", "\"tool_calls\"") "data: [DONE]\n\n";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    st.event = sink_event;
    st.json_via_tool = true;
    assert_int_equal(feed_stream(&st, bytes, 2), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_string_equal(s.text, "{\"n\":3}");
    assert_string_equal(s.events, "T0:{\"n\":3}|E0:text|");
    assert_string_equal(st.stop_reason, "stop");
    llm_parse_reset(&st);
}

static void test_stream_tool_errors(void **state)
{
    (void)state;
    const char *bad[] = {
        /* arguments that are not a JSON object */
        OA_CHUNK(TC_FIRST(0, "c", "f", "{\\\"a\\\":"), "null") OA_CHUNK("{}", "\"tool_calls\""),
        OA_CHUNK(TC_FIRST(0, "c", "f", "[1]"), "\"tool_calls\""),
        /* a call that never names its function */
        OA_CHUNK(TC(0, ",\"id\":\"c\",\"function\":{\"arguments\":\"{}\"}"), "\"tool_calls\""),
        /* a call continued after its block ended (text came between) */
        OA_CHUNK(TC_FIRST(0, "c", "f", "{"), "null") OA_CHUNK("{\"content\":\"x\"}", "null")
            OA_CHUNK(TC_ARGS(0, "}"), "\"tool_calls\""),
        /* two calls with one id */
        OA_CHUNK(TC_FIRST(0, "c", "f", "{}"), "null") OA_CHUNK(TC_FIRST(1, "c", "g", "{}"), "\"tool_calls\""),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sink s = { 0 };
        llm_parse st;
        llm_parse_init(&st, sink_emit, &s);
        (void)feed_stream(&st, bad[i], 9);
        if (st.err != LLM_ERR_PROTOCOL)
            fail_msg("case %zu: err %d", i, (int)st.err);
        assert_false(st.finished);
        llm_parse_reset(&st);
    }
}

/* Arguments held for a later call count against the content cap at once. */
static void test_stream_held_args_cap(void **state)
{
    (void)state;
    /* Each held call alone fits the cap of 50; the two together with the open
     * one do not: refused as they arrive, before the calls end. */
#define HELD_ARGS                                                                            \
    OA_CHUNK(TC_FIRST(0, "call_a", "f", "{"), "null")                                        \
    OA_CHUNK(TC_FIRST(1, "call_b", "g", "{\\\"k\\\":\\\"01234567890123456789\\\"}"), "null") \
    OA_CHUNK(TC_FIRST(2, "call_c", "h", "{\\\"k\\\":\\\"01234567890123456789\\\"}"), "null")
    const char *held = HELD_ARGS;
    const char *bytes = HELD_ARGS OA_CHUNK(TC_ARGS(0, "}"), "\"tool_calls\"");
#undef HELD_ARGS
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    st.max_bytes = 50;
    (void)feed_stream(&st, held, 100000);
    assert_int_equal(st.err, LLM_ERR_PROTOCOL);
    assert_non_null(strstr(st.err_message, "max_response_bytes=50"));
    llm_parse_reset(&st);
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    st.max_bytes = 200;
    assert_int_equal(feed_stream(&st, bytes, 100000), CHAT_OK);
    assert_int_equal(st.err, LLM_OK);
    assert_int_equal(json_array_size(st.content), 3);
    llm_parse_reset(&st);
}

static void test_json_body_tools_reasoning(void **state)
{
    (void)state;
    const char *body =
        "{\"model\":\"deepseek-r\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
        "\"reasoning_content\":\"why\",\"content\":\"Sure.\",\"tool_calls\":[{\"id\":\"call_1\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"q\\\":true}\"}},"
        "{\"index\":0,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"\"}}]},"
        "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,"
        "\"completion_tokens_details\":{\"reasoning_tokens\":4}}}";
    sink s = { 0 };
    llm_parse st;
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(llm_openai_ops.parse_json_body(&st, body, strlen(body)), LLM_OK);
    assert_string_equal(s.text, "Sure.");
    char *c = content_json(&st);
    assert_string_equal(c, "[{\"type\":\"thinking\",\"thinking\":\"why\"},{\"type\":\"text\",\"text\":\"Sure.\"},"
                           "{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"f\",\"input\":{\"q\":true}},"
                           "{\"type\":\"tool_use\",\"id\":\"call_2\",\"name\":\"g\",\"input\":{}}]");
    free(c);
    assert_string_equal(st.stop_reason, "tool_calls");
    assert_int_equal(st.usage.reasoning_tokens, 4);
    llm_parse_reset(&st);

    const char *forced = "{\"choices\":[{\"message\":{\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
                         "\"type\":\"function\",\"function\":{\"name\":\"json_output\",\"arguments\":"
                         "\"{\\\"k\\\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    st.json_via_tool = true;
    assert_int_equal(llm_openai_ops.parse_json_body(&st, forced, strlen(forced)), LLM_OK);
    assert_string_equal(s.text, "{\"k\":1}");
    assert_string_equal(st.stop_reason, "stop");
    assert_int_equal(st.usage.reasoning_tokens, -1);
    llm_parse_reset(&st);

    const char *bad = "{\"choices\":[{\"message\":{\"tool_calls\":[{\"id\":\"c\",\"function\":{\"name\":\"f\","
                      "\"arguments\":\"{oops\"}}]},\"finish_reason\":\"tool_calls\"}]}";
    memset(&s, 0, sizeof s);
    llm_parse_init(&st, sink_emit, &s);
    assert_int_equal(llm_openai_ops.parse_json_body(&st, bad, strlen(bad)), LLM_ERR_PROTOCOL);
    assert_non_null(strstr(st.err_message, "not a JSON object"));
    llm_parse_reset(&st);
}

static void test_error_bodies(void **state)
{
    (void)state;
    struct {
        int status;
        const char *body;
        const char *type, *message, *code;
        bool no_retry;
    } cases[] = {
        { 401,
          "{\"error\":{\"message\":\"Incorrect API key provided: sk-not-a*****-key.\",\"type\":"
          "\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"},\"status\":401}",
          "invalid_request_error", "Incorrect API key provided: sk-not-a*****-key.", "invalid_api_key", false },
        { 400,
          "{\"error\":{\"message\":\"This model's maximum context length is 128000 tokens.\",\"type\":"
          "\"invalid_request_error\",\"param\":\"messages\",\"code\":\"context_length_exceeded\"}}",
          "invalid_request_error", "This model's maximum context length is 128000 tokens.", "context_length_exceeded",
          false },
        /* A rate limit (type "tokens") is retryable; a quota is not. */
        { 429,
          "{\"error\":{\"message\":\"Rate limit reached for gpt-4o-mini\",\"type\":\"tokens\",\"param\":null,"
          "\"code\":\"rate_limit_exceeded\"}}",
          "tokens", "Rate limit reached for gpt-4o-mini", "rate_limit_exceeded", false },
        { 429,
          "{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":\"insufficient_quota\","
          "\"param\":null,\"code\":\"insufficient_quota\"}}",
          "insufficient_quota", "You exceeded your current quota", "insufficient_quota", true },
        { 429, "{\"error\":{\"message\":\"quota\",\"type\":\"requests\",\"code\":\"insufficient_quota\"}}", "requests",
          "quota", "insufficient_quota", true },
        /* vLLM: integer code; the older flat shape. */
        { 400,
          "{\"error\":{\"message\":\"max_tokens is too large\",\"type\":\"BadRequestError\",\"param\":null,"
          "\"code\":400}}",
          "BadRequestError", "max_tokens is too large", "400", false },
        { 404,
          "{\"object\":\"error\",\"message\":\"The model `x` does not exist.\",\"type\":\"NotFoundError\","
          "\"param\":null,\"code\":404}",
          "NotFoundError", "The model `x` does not exist.", "404", false },
        /* Ollama: code null. llama.cpp: 503 while loading. */
        { 404,
          "{\"error\":{\"message\":\"model \\\"nope\\\" not found\",\"type\":\"not_found_error\",\"param\":null,"
          "\"code\":null}}",
          "not_found_error", "model \"nope\" not found", NULL, false },
        { 503, "{\"error\":{\"code\":503,\"message\":\"Loading model\",\"type\":\"unavailable_error\"}}",
          "unavailable_error", "Loading model", "503", false },
        /* {"error":"string"}, FastAPI detail (string and validation list), no type: derived from the status. */
        { 500, "{\"error\":\"boom\"}", "api_error", "boom", NULL, false },
        { 422, "{\"detail\":\"bad field\"}", "invalid_request_error", "bad field", NULL, false },
        { 422, "{\"detail\":[{\"loc\":[\"body\",\"messages\"],\"msg\":\"field required\",\"type\":\"value_error\"}]}",
          "invalid_request_error", "field required", NULL, false },
        { 429, "{\"detail\":{\"why\":1}}", "rate_limit_error", "{\"why\":1}", NULL, false },
        /* Not JSON. */
        { 502, "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
          "api_error", "HTTP 502: 502 Bad Gateway 502 Bad Gateway", NULL, false },
        { 503, "upstream connect error\n", "api_error", "HTTP 503: upstream connect error", NULL, false },
        { 401, "", "authentication_error", "HTTP 401 with an empty body", NULL, false },
        /* JSON without any message: an excerpt of the body. */
        { 500, "{\"error\":{\"code\":\"x\"}}", "api_error", "HTTP 500: {\"error\":{\"code\":\"x\"}}", "x", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        llm_error_info e;
        llm_openai_ops.parse_error(cases[i].status, cases[i].body, strlen(cases[i].body), &e);
        if (strcmp(e.type, cases[i].type) != 0 || strcmp(e.message, cases[i].message) != 0 ||
            e.no_retry != cases[i].no_retry ||
            (cases[i].code ? !e.code || strcmp(e.code, cases[i].code) != 0 : e.code != NULL))
            fail_msg("case %zu: type %s message '%s' code %s no_retry %d", i, e.type, e.message,
                     e.code ? e.code : "(null)", e.no_retry);
        llm_error_info_free(&e);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_exact_stream),
        cmocka_unit_test(test_body_written_equals_tree),
        cmocka_unit_test(test_body_exact_nonstream),
        cmocka_unit_test(test_body_invalid),
        cmocka_unit_test(test_body_blocks_all_kinds),
        cmocka_unit_test(test_body_sampling_options),
        cmocka_unit_test(test_body_tools),
        cmocka_unit_test(test_body_structured_and_reasoning),
        cmocka_unit_test(test_url_and_headers),
        cmocka_unit_test(test_json_body_openai),
        cmocka_unit_test(test_json_body_variants),
        cmocka_unit_test(test_stream_openai_any_split),
        cmocka_unit_test(test_stream_cut_before_usage),
        cmocka_unit_test(test_stream_groq),
        cmocka_unit_test(test_stream_vllm_continuous_usage),
        cmocka_unit_test(test_stream_ollama_no_done),
        cmocka_unit_test(test_stream_llamacpp),
        cmocka_unit_test(test_stream_errors),
        cmocka_unit_test(test_stream_done_and_oddities),
        cmocka_unit_test(test_stream_tools_reasoning_any_split),
        cmocka_unit_test(test_stream_interleaved_calls),
        cmocka_unit_test(test_stream_json_via_tool),
        cmocka_unit_test(test_stream_tool_errors),
        cmocka_unit_test(test_stream_held_args_cap),
        cmocka_unit_test(test_json_body_tools_reasoning),
        cmocka_unit_test(test_error_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
