/*
 * Unit tests of api/openai_request.c: POST /v1/chat/completions bodies
 * translated into canonical content and options (llm/content.h), and the
 * refusals in OpenAI's envelope (status, code, param, a message naming the
 * place).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/request.h"
#include "llm/content.h"

#define PNG_B64 "iVBORw0KGgoAAAANSUhEUg=="  /* 16 bytes: a PNG signature and the IHDR header */
#define JPEG_B64 "/9j/4AAQSkZJRgAB"         /* 12 bytes: a JPEG/JFIF start */
#define WEBP_B64 "UklGRgAAAABXRUJQVlA4IA==" /* 16 bytes: RIFF....WEBPVP8 */

static const api_oa_limits LIM = { .max_message_bytes = 1000, .max_image_bytes = 64, .drop_unsupported = false };

/* Parses body (NUL-terminated) with lim; asserts the outcome is ok. */
static void parse_lim(const char *body, const char *session, const api_oa_limits *lim, bool ok, api_oa_request *q,
                      api_oa_invalid *why)
{
    bool got = api_oa_request_parse(body, strlen(body), session, lim, q, why);
    if (got != ok)
        fail_msg("%s: %s", body, got ? "accepted" : why->message);
}

static void parse(const char *body, bool ok, api_oa_request *q, api_oa_invalid *why)
{
    parse_lim(body, NULL, &LIM, ok, q, why);
}

/* body is refused with status, code and param, the message containing needle. */
static void refused(const char *body, int status, const char *code, const char *param, const char *needle)
{
    api_oa_request q;
    api_oa_invalid why;
    parse(body, false, &q, &why);
    assert_int_equal(why.status, status);
    assert_string_equal(why.type, "invalid_request_error");
    assert_string_equal(why.code, code);
    if (param)
        assert_string_equal(why.param, param);
    else
        assert_null(why.param);
    if (!strstr(why.message, needle))
        fail_msg("\"%s\" lacks \"%s\"", why.message, needle);
    assert_null(q.root);
}

/* The JSON text of v (compact, sorted keys), for comparisons. */
static char *dump(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

static void assert_json(const json_t *v, const char *expected)
{
    json_t *e = json_loads(expected, JSON_DECODE_ANY, NULL);
    assert_non_null(e);
    if (!json_equal(v, e)) {
        char *a = dump(v);
        fail_msg("got %s, expected %s", a ? a : "NULL", expected);
    }
    json_decref(e);
}

static void test_plain_text(void **state)
{
    (void)state;
    api_oa_request q;
    api_oa_invalid why;
    parse("{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"A\"}]},"
          "{\"role\":\"system\",\"content\":\"B\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"h\"},"
          "{\"type\":\"text\",\"text\":\"i\"}]}],\"n\":1,\"logprobs\":false,\"frequency_penalty\":0,"
          "\"presence_penalty\":0,\"parallel_tool_calls\":true,\"response_format\":{\"type\":\"text\"},"
          "\"tool_choice\":\"auto\",\"store\":true,\"metadata\":{\"a\":\"b\"},\"service_tier\":\"auto\",\"stop\":[],"
          "\"temperature\":null,\"user\":\"\"}",
          true, &q, &why);
    assert_int_equal(q.n_hist, 1);
    assert_string_equal(q.hist[0].content, "hi");
    assert_null(q.hist[0].blocks);
    assert_string_equal(chat_buf_str(&q.system), "A\n\nB");
    /* every option at its default: nothing to carry */
    assert_null(q.options);
    turn_params p;
    api_oa_turn_params(&q, &p);
    assert_null(p.message_blocks);
    assert_null(p.options);
    assert_string_equal(p.message, "hi");
    api_oa_request_free(&q);
}

static void test_images(void **state)
{
    (void)state;
    api_oa_request q;
    api_oa_invalid why;
    parse("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"what is it?\"},"
          "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64," PNG_B64 "\"}},"
          "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64," JPEG_B64 "\",\"detail\":\"auto\"}},"
          "{\"type\":\"image_url\",\"image_url\":{\"url\":\"DATA:image/WEBP;base64," WEBP_B64 "\"}},"
          "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://example.com/cat.png\"}}]}]}",
          true, &q, &why);
    assert_int_equal(q.n_hist, 1);
    assert_string_equal(q.hist[0].content, "what is it?");
    assert_json(
        q.hist[0].blocks,
        "[{\"type\":\"text\",\"text\":\"what is it?\"},"
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"" PNG_B64 "\"}},"
        /* a JPEG labelled PNG goes as what it is */
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/jpeg\",\"data\":\"" JPEG_B64 "\"}},"
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/webp\",\"data\":\"" WEBP_B64 "\"}},"
        "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://example.com/cat.png\"}}]");
    char bad[200];
    assert_null(llm_content_check(q.hist[0].blocks, "user", bad, sizeof bad));
    turn_params p;
    api_oa_turn_params(&q, &p);
    assert_ptr_equal(p.message_blocks, q.hist[0].blocks);
    api_oa_request_free(&q);

    /* an image alone is a message */
    parse("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
          "\"data:image/png;base64," PNG_B64 "\"}}]}]}",
          true, &q, &why);
    assert_string_equal(q.hist[0].content, "");
    assert_int_equal(json_array_size(q.hist[0].blocks), 1);
    api_oa_request_free(&q);
}

static void test_image_refusals(void **state)
{
    (void)state;
    /* 72 bytes decoded, over the 64-byte limit of LIM */
    const char *big = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"user\",\"content\":["
                      "{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
                      "\"data:image/png;base64,iVBORw0KGgo"
                      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}}]}]}";
    refused(big, 413, "request_too_large", "messages", "messages[1].content[1]: the image is 72 bytes");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"data:image/png;base64,iVBOR!0KGgo=\"}}]}]}",
            400, "invalid_value", "messages", "messages[0].content[0].image_url.url: the data is not valid base64");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"data:image/png;base64,aGVsbG8gd29ybGQh\"}}]}]}",
            400, "invalid_value", "messages", "not a PNG, JPEG, GIF or WebP image");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"data:image/svg+xml;base64,PHN2Zz4=\"}}]}]}",
            400, "invalid_value", "messages", "data:image/png|jpeg|gif|webp;base64");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"http://example.com/a.png\"}}]}]}",
            400, "invalid_value", "messages", "an https URL");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"https://example.com/a.png\",\"detail\":\"low\"}}]}]}",
            400, "unsupported_parameter", "messages", "messages[0].content[0].image_url.detail");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\",\"input_audio\":{\"data\":"
            "\"AAAA\",\"format\":\"wav\"}}]}]}",
            400, "unsupported_parameter", "messages", "messages[0].content[0]: input_audio parts are not supported");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_id\":\"f\"}}]}]}", 400,
            "unsupported_parameter", "messages", "file parts");
    refused("{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
            "\"https://a.b/c.png\"}}]},{\"role\":\"user\",\"content\":\"x\"}]}",
            400, "invalid_value", "messages", "a system message takes only text parts");
}

/* The conversation of a tool loop: calls, their results, a follow-up. */
#define TOOL_LOOP                                                                                          \
    "{\"role\":\"user\",\"content\":\"weather?\"},"                                                        \
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["                                            \
    "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"       \
    "\"{\\\"city\\\":\\\"Paris\\\"}\"}},"                                                                  \
    "{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]}," \
    "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":[{\"type\":\"text\",\"text\":\"noon\"}]}," \
    "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"sunny\"}"

static void test_tool_loop(void **state)
{
    (void)state;
    api_oa_request q;
    api_oa_invalid why;
    parse("{\"messages\":[{\"role\":\"system\",\"content\":\"S\"}," TOOL_LOOP
          ",{\"role\":\"user\",\"content\":\"and tomorrow?\"}],"
          "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"d\","
          "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}},\"strict\":true}},"
          "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}],\"tool_choice\":\"required\","
          "\"parallel_tool_calls\":false}",
          true, &q, &why);
    assert_int_equal(q.n_hist, 3);
    assert_string_equal(q.hist[0].role, "user");
    assert_null(q.hist[0].blocks);
    assert_string_equal(q.hist[1].role, "assistant");
    assert_string_equal(q.hist[1].content, "");
    assert_json(q.hist[1].blocks,
                "[{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"get_weather\",\"input\":"
                "{\"city\":\"Paris\"}},{\"type\":\"tool_use\",\"id\":\"call_2\",\"name\":\"get_time\","
                "\"input\":{}}]");
    /* the results, in order, and the user's follow-up: one user message */
    assert_string_equal(q.hist[2].role, "user");
    assert_string_equal(q.hist[2].content, "and tomorrow?");
    assert_json(q.hist[2].blocks, "[{\"type\":\"tool_result\",\"tool_use_id\":\"call_2\",\"content\":\"noon\"},"
                                  "{\"type\":\"tool_result\",\"tool_use_id\":\"call_1\",\"content\":\"sunny\"},"
                                  "{\"type\":\"text\",\"text\":\"and tomorrow?\"}]");
    assert_json(q.options,
                "{\"tools\":[{\"name\":\"get_weather\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\","
                "\"properties\":{\"city\":{\"type\":\"string\"}}},\"strict\":true},{\"name\":\"get_time\","
                "\"input_schema\":{\"type\":\"object\",\"properties\":{}}}],\"tool_choice\":{\"type\":\"any\"},"
                "\"parallel_tool_calls\":false}");
    turn_params p;
    api_oa_turn_params(&q, &p);
    assert_int_equal(p.n_history, 2);
    assert_ptr_equal(p.history, q.hist);
    assert_ptr_equal(p.message_blocks, q.hist[2].blocks);
    assert_ptr_equal(p.options, q.options);
    api_oa_request_free(&q);

    /* ending on the results; text and calls in one assistant message; a named tool_choice */
    parse("{\"messages\":[{\"role\":\"user\",\"content\":\"w\"},{\"role\":\"assistant\",\"content\":\"Let me see.\","
          "\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
          "{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"\"}],\"tools\":[{\"type\":\"function\","
          "\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}",
          true, &q, &why);
    assert_json(q.hist[1].blocks, "[{\"type\":\"text\",\"text\":\"Let me see.\"},{\"type\":\"tool_use\",\"id\":\"c\","
                                  "\"name\":\"f\",\"input\":{}}]");
    assert_json(q.hist[2].blocks, "[{\"type\":\"tool_result\",\"tool_use_id\":\"c\"}]");
    assert_json(json_object_get(q.options, "tool_choice"), "{\"type\":\"tool\",\"name\":\"f\"}");
    api_oa_request_free(&q);

    /* with a session, results alone answer the stored calls; the turn is them */
    parse_lim("{\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"toolu_1\",\"content\":\"42\"}]}", "s1", &LIM, true,
              &q, &why);
    assert_int_equal(q.n_hist, 1);
    api_oa_turn_params(&q, &p);
    assert_null(p.history);
    assert_json(p.message_blocks, "[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\"42\"}]");
    api_oa_request_free(&q);
}

static void test_thinking_blocks(void **state)
{
    (void)state;
    api_oa_request q;
    api_oa_invalid why;
    parse("{\"messages\":[{\"role\":\"user\",\"content\":\"w\"},{\"role\":\"assistant\",\"content\":null,"
          "\"reasoning_content\":\"hmm\",\"thinking_blocks\":[{\"type\":\"thinking\",\"thinking\":\"hmm\","
          "\"signature\":\"sig\"},{\"type\":\"redacted_thinking\",\"data\":\"opaque\"}],\"tool_calls\":[{\"id\":"
          "\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\","
          "\"tool_call_id\":\"c\",\"content\":\"r\"}]}",
          true, &q, &why);
    assert_json(q.hist[1].blocks, "[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"sig\"},"
                                  "{\"type\":\"redacted_thinking\",\"data\":\"opaque\"},"
                                  "{\"type\":\"tool_use\",\"id\":\"c\",\"name\":\"f\",\"input\":{}}]");
    api_oa_request_free(&q);
    refused("{\"messages\":[{\"role\":\"assistant\",\"content\":\"a\",\"thinking_blocks\":[{\"type\":"
            "\"thinking\",\"thinking\":\"x\"}]},{\"role\":\"user\",\"content\":\"x\"}]}",
            400, "invalid_value", "messages", "messages[0].thinking_blocks[0] must be");
}

static void test_tool_refusals(void **state)
{
    (void)state;
    refused("{\"messages\":[" TOOL_LOOP ",{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"x\"}]}", 400,
            "invalid_value", "messages", "messages[4]: tool_call_id \"call_1\" is answered twice");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"tool\",\"tool_call_id\":\"c\","
            "\"content\":\"x\"}]}",
            400, "invalid_value", "messages", "messages[1]: tool_call_id \"c\" answers no tool call");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"tool_calls\":[{\"id\":"
            "\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},{\"id\":\"b\",\"type\":"
            "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":"
            "\"a\",\"content\":\"1\"},{\"role\":\"user\",\"content\":\"go on\"}]}",
            400, "invalid_value", "messages", "messages[3]: an assistant message with 'tool_calls' must be followed");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"tool_calls\":[{\"id\":"
            "\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]},{\"role\":\"tool\","
            "\"tool_call_id\":\"a\",\"content\":\"1\"}]}",
            400, "invalid_value", "messages", "messages[1].tool_calls[0].function.arguments must be the JSON text of");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"tool_calls\":[{\"id\":"
            "\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}]}",
            400, "invalid_value", "messages", "must be the JSON text of an object");
    refused("{\"messages\":[{\"role\":\"function\",\"name\":\"f\",\"content\":\"x\"}]}", 400, "unsupported_parameter",
            "messages", "messages[0].name");
    refused("{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}", 400, "unsupported_parameter", "messages",
            "role \"function\" is deprecated");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"custom\",\"custom\":"
            "{\"name\":\"g\"}}]}",
            400, "unsupported_parameter", "tools", "tools[0].type \"custom\"");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":"
            "{\"name\":\"bad name\"}}]}",
            400, "invalid_value", "tools", "tools[0].function.name");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}", 400, "invalid_value",
            "tool_choice", "only allowed when tools are specified");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":"
            "{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}",
            400, "invalid_value", "tool_choice", "\"g\", which is not in tools");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"functions\":[{\"name\":\"f\"}]}", 400,
            "unsupported_parameter", "functions", "functions is not supported: deprecated: use tools");
}

static void test_options(void **state)
{
    (void)state;
    api_oa_request q;
    api_oa_invalid why;
    parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0.2,\"top_p\":0.9,\"stop\":\"END\","
          "\"seed\":7,\"presence_penalty\":0.5,\"frequency_penalty\":-1,\"logit_bias\":{\"50256\":-100},"
          "\"n\":2,\"user\":\"u-1\",\"reasoning_effort\":\"low\","
          "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"out\",\"schema\":{\"type\":"
          "\"object\"},\"strict\":true}},\"top_k\":40,\"max_completion_tokens\":50,\"modalities\":[\"text\"],"
          "\"verbosity\":\"medium\"}",
          true, &q, &why);
    assert_json(q.options, "{\"temperature\":0.2,\"top_p\":0.9,\"stop\":[\"END\"],\"seed\":7,\"presence_penalty\":0.5,"
                           "\"frequency_penalty\":-1,\"logit_bias\":{\"50256\":-100},\"n\":2,\"user\":\"u-1\","
                           "\"reasoning_effort\":\"low\","
                           "\"response_format\":{\"type\":\"json_schema\",\"name\":\"out\",\"schema\":{\"type\":"
                           "\"object\"},\"strict\":true},\"top_k\":40}");
    assert_int_equal(q.max_tokens, 50);
    api_oa_request_free(&q);

    parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"},"
          "\"stop\":[\"a\",\"b\"],\"temperature\":0,\"safety_identifier\":\"hash-1\"}",
          true, &q, &why);
    assert_json(q.options, "{\"response_format\":{\"type\":\"json_object\"},\"stop\":[\"a\",\"b\"],\"temperature\":0,"
                           "\"user\":\"hash-1\"}");
    api_oa_request_free(&q);

    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":2.5}", 400, "invalid_value",
            "temperature", "temperature must be a number between 0 and 2");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":\"1\"}", 400, "invalid_type", "top_p",
            "top_p must be a number");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400,
            "invalid_value", "stop", "at most 4");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":1.5}", 400, "invalid_type", "seed",
            "seed must be an integer");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}", 400, "invalid_value",
            "top_logprobs", "requires logprobs");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":0}", 400, "invalid_value", "n",
            "n must be an integer");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"huge\"}", 400,
            "invalid_value", "reasoning_effort", "reasoning_effort must be one of");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"xhigh\"}", 400,
            "unsupported_parameter", "reasoning_effort", "\"xhigh\" is not supported");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":2}", 400,
            "unsupported_parameter", "logprobs", "chatd does not return log probabilities");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_schema\","
            "\"json_schema\":{\"schema\":{}}}}",
            400, "invalid_value", "response_format", "json_schema.name");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temprature\":0.2}", 400, "unknown_parameter", NULL,
            "Unrecognized request argument supplied: temprature");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"audio\":{\"voice\":\"alloy\"}}", 400,
            "unsupported_parameter", "audio", "audio is not supported");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"modalities\":[\"text\",\"audio\"]}", 400,
            "unsupported_parameter", "modalities", "modalities");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"prediction\":{\"type\":\"content\","
            "\"content\":\"x\"}}",
            400, "unsupported_parameter", "prediction", "prediction");
}

static void test_drop_unsupported(void **state)
{
    (void)state;
    api_oa_limits lim = LIM;
    lim.drop_unsupported = true;
    api_oa_request q;
    api_oa_invalid why;
    parse_lim("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"audio\":{\"voice\":\"alloy\"},"
              "\"prediction\":{\"type\":\"content\",\"content\":\"x\"},\"verbosity\":null,\"temperature\":1,"
              "\"logprobs\":true}",
              NULL, &lim, true, &q, &why);
    assert_string_equal(q.dropped, "audio,prediction,logprobs");
    assert_json(q.options, "{\"temperature\":1}");
    api_oa_request_free(&q);
    /* an unknown field is still refused: it may be a misspelt option */
    parse_lim("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_pp\":1}", NULL, &lim, false, &q, &why);
    assert_string_equal(why.code, "unknown_parameter");
}

static void test_last_message(void **state)
{
    (void)state;
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"y\"}]}", 400,
            "invalid_value", "messages", "the last message must be");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", 400, "invalid_value", "messages",
            "the last message must be");
    char body[1200];
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%01001d\"}]}", 0);
    refused(body, 400, "string_above_max_length", "messages", "MAX_MESSAGE_SIZE (1000 bytes)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text),     cmocka_unit_test(test_images),
        cmocka_unit_test(test_image_refusals), cmocka_unit_test(test_tool_loop),
        cmocka_unit_test(test_tool_refusals),  cmocka_unit_test(test_thinking_blocks),
        cmocka_unit_test(test_options),        cmocka_unit_test(test_drop_unsupported),
        cmocka_unit_test(test_last_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
