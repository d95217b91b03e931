/*
 * test_anthropic_api.c: the /v1/messages body parser (api/anthropic_api.h:
 * what becomes canonical options, what is ignored, what is refused, the
 * anthropic-version rules, system prompts, memory, the estimate and the
 * stop_reason mapping) and the count_tokens request to an Anthropic
 * provider (llm/count_tokens.h) against the scripted server of
 * llm_script_server.h on a real event loop: a count, a provider error, a
 * deadline, a connection refused, and a cancel.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>

#include "api/anthropic_api.h"
#include "llm/count_tokens.h"
#include "llm_script_server.h"

#define MAXMSG 1000

static bool parse(const char *body, const char *version, const char *header, bool counting, api_an_request *q,
                  api_an_invalid *why)
{
    return api_an_request_parse(body, strlen(body), version, header, MAXMSG, counting, q, why);
}

static void refused(const char *body, const char *version, const char *type, const char *needle)
{
    api_an_request q;
    api_an_invalid why;
    if (parse(body, version, NULL, false, &q, &why)) {
        api_an_request_free(&q);
        fail_msg("accepted: %s", body);
    }
    assert_int_equal(why.status, 400);
    assert_string_equal(why.type, type);
    if (!strstr(why.message, needle))
        fail_msg("\"%s\" does not name \"%s\"", why.message, needle);
}

static void test_options_mapping(void **state)
{
    (void)state;
    api_an_request q;
    api_an_invalid why;
    const char *body = "{\"model\":\"m\",\"max_tokens\":64,\"stream\":true,\"temperature\":0.25,\"top_k\":5,"
                       "\"stop_sequences\":[\"END\"],\"metadata\":{\"user_id\":\"u-9\",\"session_id\":\"s-2\"},"
                       "\"tools\":[{\"type\":\"custom\",\"name\":\"t\",\"description\":\"d\",\"input_schema\":"
                       "{\"type\":\"object\"},\"cache_control\":{\"type\":\"ephemeral\"},\"eager_input_streaming\":"
                       "true}],\"tool_choice\":{\"type\":\"tool\",\"name\":\"t\",\"disable_parallel_tool_use\":true},"
                       "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2048},\"output_config\":{\"format\":"
                       "{\"type\":\"json_schema\",\"schema\":{\"type\":\"object\"}},\"effort\":\"high\"},"
                       "\"service_tier\":\"auto\",\"cache_control\":{\"type\":\"ephemeral\"},"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    assert_true(parse(body, API_AN_VERSION_2023, NULL, false, &q, &why));
    json_t *want = json_loads(
        "{\"temperature\":0.25,\"top_k\":5,\"stop\":[\"END\"],\"user\":\"u-9\",\"tools\":[{\"name\":\"t\","
        "\"description\":\"d\",\"input_schema\":{\"type\":\"object\"},\"cache_control\":{\"type\":\"ephemeral\"}}],"
        "\"tool_choice\":{\"type\":\"tool\",\"name\":\"t\"},\"parallel_tool_calls\":false,\"thinking\":{\"type\":"
        "\"enabled\",\"budget_tokens\":2048},\"response_format\":{\"type\":\"json_schema\",\"name\":\"output\","
        "\"schema\":{\"type\":\"object\"}},\"reasoning_effort\":\"high\"}",
        0, NULL);
    assert_non_null(want);
    if (!json_equal(want, q.options)) {
        char *got = json_dumps(q.options, JSON_COMPACT | JSON_SORT_KEYS);
        fail_msg("options: %s", got);
    }
    json_decref(want);
    assert_string_equal(q.session_id, "s-2");
    assert_true(q.stream);
    assert_int_equal(q.max_tokens, 64);
    turn_params p;
    api_an_turn_params(&q, &p);
    assert_string_equal(p.session_id, "s-2");
    assert_null(p.history);
    assert_string_equal(p.message, "hi");
    assert_ptr_equal(p.options, q.options);
    api_an_request_free(&q);

    /* The header wins over metadata.session_id; no options at all: NULL. */
    assert_true(parse("{\"model\":\"m\",\"max_tokens\":1,\"metadata\":{\"session_id\":\"b\"},\"messages\":[{\"role\":"
                      "\"user\",\"content\":\"x\"}]}",
                      API_AN_VERSION_2023, "a", false, &q, &why));
    assert_string_equal(q.session_id, "a");
    assert_null(q.options);
    api_an_request_free(&q);
}

static void test_version_rules(void **state)
{
    (void)state;
    const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char body[512];
    const char *sampling[] = { "\"temperature\":0", "\"top_p\":null", "\"top_k\":1" };
    const char *names[] = { "temperature: Extra inputs", "top_p: Extra inputs", "top_k: Extra inputs" };
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"model\":\"m\",\"max_tokens\":1,%s,%s}", sampling[i], msgs);
        refused(body, API_AN_VERSION_2026, "invalid_request_error", names[i]);
        api_an_request q;
        api_an_invalid why;
        assert_true(parse(body, API_AN_VERSION_2023, NULL, false, &q, &why));
        api_an_request_free(&q);
    }
    const char *doc_in_assistant =
        "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
        "\"assistant\",\"content\":[{\"type\":\"document\",\"source\":{\"type\":\"text\",\"media_type\":"
        "\"text/plain\",\"data\":\"d\"}}]},{\"role\":\"user\",\"content\":\"b\"}]}";
    refused(doc_in_assistant, API_AN_VERSION_2026, "invalid_request_error", "document block is not permitted");
    api_an_request q;
    api_an_invalid why;
    assert_true(parse(doc_in_assistant, API_AN_VERSION_2023, NULL, false, &q, &why));
    assert_true(q.has_document);
    api_an_request_free(&q);
    const char *cited = "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                        "\"text\",\"text\":\"a\",\"citations\":[{\"type\":\"char_location\"}]}]}]}";
    refused(cited, API_AN_VERSION_2026, "invalid_request_error", "citations: Extra inputs");
    assert_true(parse(cited, API_AN_VERSION_2023, NULL, false, &q, &why));
    api_an_request_free(&q);
}

static void test_refusals(void **state)
{
    (void)state;
    const char *v = API_AN_VERSION_2023;
    refused("[]", v, "invalid_request_error", "JSON object");
    refused("{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", v, "invalid_request_error",
            "model: Field required");
    refused("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", v, "invalid_request_error",
            "max_tokens: Field required");
    refused("{\"model\":\"m\",\"max_tokens\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", v,
            "invalid_request_error", "max_tokens");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[]}", v, "invalid_request_error", "messages");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", v,
            "invalid_request_error", "messages.0.content");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":"
            "\"assistant\",\"content\":\"pre\"}]}",
            v, "unsupported_parameter", "prefill");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":"
            "\"system\",\"content\":\"late\"},{\"role\":\"user\",\"content\":\"y\"}]}",
            v, "invalid_request_error", "messages.1");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
            "\"tool_use\",\"id\":\"a\",\"name\":\"t\",\"input\":{}}]}]}",
            v, "invalid_request_error", "messages.0.content[0]");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"bogus\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", v,
            "invalid_request_error", "bogus: Extra inputs are not permitted");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"container\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":"
            "\"x\"}]}",
            v, "unsupported_parameter", "container");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"tools\":[{\"type\":\"bash_20250124\",\"name\":\"bash\"}],"
            "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            v, "unsupported_parameter", "server tool");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"tools\":[{\"name\":\"t\",\"input_schema\":{},\"input_examples\":"
            "[{}]}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            v, "unsupported_parameter", "input_examples");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"thinking\":{\"type\":\"adaptive\"},\"messages\":[{\"role\":"
            "\"user\",\"content\":\"x\"}]}",
            v, "unsupported_parameter", "adaptive");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"output_config\":{\"effort\":\"max\"},\"messages\":[{\"role\":"
            "\"user\",\"content\":\"x\"}]}",
            v, "unsupported_parameter", "effort");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"metadata\":{\"tenant\":\"x\"},\"messages\":[{\"role\":\"user\","
            "\"content\":\"x\"}]}",
            v, "invalid_request_error", "metadata.tenant");
    refused("{\"model\":\"m\",\"max_tokens\":1,\"metadata\":{\"session_id\":\"bad id\"},\"messages\":[{\"role\":"
            "\"user\",\"content\":\"x\"}]}",
            v, "invalid_request_error", "session id");
    char big[MAXMSG + 200];
    memset(big, 'a', sizeof big);
    int n =
        snprintf(big, sizeof big, "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"");
    memset(big + n, 'a', MAXMSG + 1);
    snprintf(big + n + MAXMSG + 1, sizeof big - (size_t)n - MAXMSG - 1, "\"}]}");
    refused(big, v, "string_above_max_length", "MAX_MESSAGE_SIZE");
}

static void test_conversation(void **state)
{
    (void)state;
    api_an_request q;
    api_an_invalid why;
    const char *body = "{\"model\":\"m\",\"max_tokens\":5,\"system\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":"
                       "\"text\",\"text\":\"two\",\"cache_control\":{\"type\":\"ephemeral\"}}],\"messages\":["
                       "{\"role\":\"system\",\"content\":\"three\"},{\"role\":\"user\",\"content\":\"q1\"},"
                       "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":"
                       "\"tool_use\",\"id\":\"c1\",\"name\":\"t\",\"input\":{\"x\":1}}]},{\"role\":\"user\","
                       "\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"c1\",\"content\":\"r\"}]}]}";
    assert_true(parse(body, API_AN_VERSION_2026, NULL, false, &q, &why));
    assert_string_equal(chat_buf_str(&q.system), "one\ntwo\nthree");
    assert_int_equal(q.n_hist, 3);
    assert_string_equal(q.hist[0].role, "user");
    assert_null(q.hist[0].blocks);
    assert_string_equal(q.hist[1].content, "a");
    assert_non_null(q.hist[1].blocks);
    turn_params p;
    api_an_turn_params(&q, &p);
    assert_null(p.session_id);
    assert_int_equal(p.n_history, 2);
    assert_ptr_equal(p.history, q.hist);
    assert_string_equal(p.message, "");
    assert_ptr_equal(p.message_blocks, q.hist[2].blocks);
    assert_string_equal(p.system_prompt, "one\ntwo\nthree");
    api_an_request_free(&q);

    /* count_tokens: no max_tokens, an assistant message may end it; the estimate. */
    assert_true(parse("{\"model\":\"m\",\"system\":\"abcd\",\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"abcdefgh\"},{\"role\":\"assistant\",\"content\":\"wxyz\"}]}",
                      API_AN_VERSION_2026, NULL, true, &q, &why));
    assert_int_equal(api_an_estimate_tokens(&q), 4);
    assert_int_equal(q.max_tokens, 0);
    api_an_request_free(&q);
}

static void test_stop_reason(void **state)
{
    (void)state;
    assert_string_equal(api_an_stop_reason(NULL), "end_turn");
    assert_string_equal(api_an_stop_reason("stop"), "end_turn");
    assert_string_equal(api_an_stop_reason("length"), "max_tokens");
    assert_string_equal(api_an_stop_reason("tool_calls"), "tool_use");
    assert_string_equal(api_an_stop_reason("content_filter"), "refusal");
    assert_string_equal(api_an_stop_reason("stop_sequence"), "stop_sequence");
    assert_string_equal(api_an_stop_reason("pause_turn"), "pause_turn");
    assert_string_equal(api_an_stop_reason("weird"), "end_turn");
}

/* ---- count_tokens against the scripted server ---- */

typedef struct outcome {
    int calls;
    int status;
    bool timed_out;
    int64_t tokens;
    char type[64];
    char message[256];
    struct event_base *base;
} outcome;

static void on_count(void *ud, const llm_count_result *res)
{
    outcome *o = ud;
    o->calls++;
    o->status = res->http_status;
    o->timed_out = res->timed_out;
    o->tokens = res->input_tokens;
    snprintf(o->type, sizeof o->type, "%s", res->error_type ? res->error_type : "");
    snprintf(o->message, sizeof o->message, "%s", res->error_message ? res->error_message : "");
    event_base_loopexit(o->base, NULL);
}

static void run_count(const script *sc, int port_override, int64_t total_ms, outcome *o, srv *s)
{
    struct event_base *base = event_base_new();
    srv_start(s, base, sc, 1);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port_override ? port_override : s->port);
    llm_provider p = { .kind = LLM_PROVIDER_ANTHROPIC,
                       .name = "anthropic",
                       .base_url = url,
                       .api_key = "sk-test-key",
                       .version = "2026-10-21",
                       .connect_timeout_ms = 1000,
                       .total_timeout_ms = total_ms };
    memset(o, 0, sizeof *o);
    o->base = base;
    llm_count *c = NULL;
    assert_int_equal(llm_count_start(base, &p, "{\"model\":\"x\",\"messages\":[]}", on_count, o, &c), CHAT_OK);
    assert_non_null(c);
    assert_int_equal(o->calls, 0); /* never from inside the start */
    struct timeval guard = { 5, 0 };
    event_base_loopexit(base, &guard);
    event_base_dispatch(base);
    srv_stop(s);
    event_base_free(base);
}

static void test_count_tokens_ok(void **state)
{
    (void)state;
    static const script ok = { .status = 200, .headers = { JSON_CT }, .body = "{\"input_tokens\": 42}" };
    outcome o;
    srv s;
    run_count(&ok, 0, 0, &o, &s);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.tokens, 42);
    assert_string_equal(o.message, "");
}

static void test_count_tokens_errors(void **state)
{
    (void)state;
    static const script bad = { .status = 400,
                                .headers = { JSON_CT },
                                .body = ERR_BODY("invalid_request_error", "messages: at least one message") };
    outcome o;
    srv s;
    run_count(&bad, 0, 0, &o, &s);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.status, 400);
    assert_int_equal(o.tokens, -1);
    assert_string_equal(o.type, "invalid_request_error");
    assert_string_equal(o.message, "messages: at least one message");

    static const script proxy = { .status = 502, .body = "<html>bad gateway</html>" };
    run_count(&proxy, 0, 0, &o, &s);
    assert_int_equal(o.status, 502);
    assert_non_null(strstr(o.message, "HTTP 502"));

    static const script hang = { .status = 200, .head_delay_ms = 3000, .body = "{}" };
    run_count(&hang, 0, 300, &o, &s);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.status, 0);
    assert_true(o.timed_out);

    /* Nobody listens on port 9 (discard): refused at once. */
    run_count(&proxy, 9, 0, &o, &s);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.status, 0);
    assert_false(o.timed_out);
    assert_non_null(strstr(o.message, "count_tokens request failed"));
}

static void on_cancel_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    llm_count_cancel(arg);
}

static void test_count_tokens_cancel(void **state)
{
    (void)state;
    static const script slow = { .status = 200, .head_delay_ms = 2000, .body = "{\"input_tokens\":1}" };
    struct event_base *base = event_base_new();
    srv s;
    srv_start(&s, base, &slow, 1);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s.port);
    llm_provider p = { .kind = LLM_PROVIDER_ANTHROPIC, .base_url = url, .api_key = "k" };
    outcome o = { .base = base };
    llm_count *c = NULL;
    assert_int_equal(llm_count_start(base, &p, "{}", on_count, &o, &c), CHAT_OK);
    struct event *t = evtimer_new(base, on_cancel_timer, c);
    struct timeval tv = { 0, 200 * 1000 }, end = { 1, 0 };
    evtimer_add(t, &tv);
    event_base_loopexit(base, &end);
    event_base_dispatch(base);
    assert_int_equal(o.calls, 0);
    assert_int_equal(s.nreq, 1);
    assert_string_equal(s.h_key, "k");
    assert_string_equal(s.h_version, "2023-06-01");
    assert_string_equal(s.uri, "/v1/messages/count_tokens");
    event_free(t);
    srv_stop(&s);
    event_base_free(base);

    /* Not an Anthropic provider: refused, no callback. */
    llm_provider oa = { .kind = LLM_PROVIDER_OPENAI, .base_url = url };
    assert_int_equal(llm_count_start(base, &oa, "{}", on_count, &o, &c), CHAT_EINVAL);
    assert_null(c);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_mapping),
        cmocka_unit_test(test_version_rules),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_conversation),
        cmocka_unit_test(test_stop_reason),
        cmocka_unit_test(test_count_tokens_ok),
        cmocka_unit_test(test_count_tokens_errors),
        cmocka_unit_test(test_count_tokens_cancel),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
