/* Unit tests of chat/models.c: the built-in table, MODELS_FILE merging, and
 * integer cost arithmetic against hand-computed values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "chat/models.h"

static struct chat_config base_cfg(void)
{
    struct chat_config c;
    memset(&c, 0, sizeof c);
    c.anthropic_api_key = "k";
    c.anthropic_base_url = "http://127.0.0.1:1";
    c.anthropic_version = "2023-06-01";
    c.chat_model = "claude-sonnet-4-6";
    c.openai_api_key = "";
    c.openai_base_url = "https://api.openai.com/v1";
    c.models_file = "";
    c.prompt_caching = true;
    c.provider_connect_timeout_ms = c.provider_first_byte_timeout_ms = c.provider_idle_timeout_ms = 1000;
    c.turn_timeout_ms = 1000;
    c.retry_max_wait_ms = 1000;
    return c;
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/chatd-models-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_builtin(void **state)
{
    (void)state;
    struct chat_config c = base_cfg();
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *d = models_default(t);
    assert_string_equal(d->name, "claude-sonnet-4-6");
    assert_true(d->available);
    assert_true(d->provider.prompt_caching);
    assert_int_equal(d->price.input, 3000000);
    assert_int_equal(d->price.cache_read, 300000);
    const chat_model *g = models_find(t, "gpt-4o-mini");
    assert_non_null(g);
    assert_false(g->available); /* no OPENAI_API_KEY, default base URL */
    assert_string_equal(g->missing, "OPENAI_API_KEY");
    assert_false(g->provider.prompt_caching);
    assert_null(models_find(t, "nope"));
    models_free(t);
}

static void test_cost_arithmetic(void **state)
{
    (void)state;
    struct chat_config c = base_cfg();
    model_table *t = NULL;
    char err[256];
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *s = models_find(t, "claude-sonnet-4-6");
    store_usage u = { 1000000, 0, 0, 0 };
    assert_int_equal(models_cost_micros(s, &u), 3000000); /* $3.00 */
    u = (store_usage){ 1000, 500, 0, 0 };
    assert_int_equal(models_cost_micros(s, &u), 3000 + 7500);
    u = (store_usage){ 0, 0, 2, 0 }; /* 2 x 0.3 micro-dollars = 0.6 -> rounds to 1 */
    assert_int_equal(models_cost_micros(s, &u), 1);
    u = (store_usage){ 0, 0, 1, 0 }; /* 0.3 -> 0 */
    assert_int_equal(models_cost_micros(s, &u), 0);
    u = (store_usage){ -1, 10, -1, 100 }; /* unknown parts count as 0; 100 writes x 3.75 = 375 */
    assert_int_equal(models_cost_micros(s, &u), 150 + 375);
    const chat_model *m = models_find(t, "gpt-4o-mini"); /* 0.15 / 0.60 / 0.075 */
    u = (store_usage){ 1234567, 7654321, 1000, 0 };
    /* (1234567*150000 + 7654321*600000 + 1000*75000) / 1e6 = 185185.05 + 4592592.6 + 75 = 4777852.65 */
    assert_int_equal(models_cost_micros(m, &u), 4777853);
    models_free(t);
}

static void test_models_file_merge(void **state)
{
    (void)state;
    char *path = write_tmp("{\"providers\":{\"local\":{\"type\":\"openai\",\"base_url\":\"http://127.0.0.1:9/v1/\","
                           "\"max_tokens_field\":\"max_completion_tokens\"}},"
                           "\"models\":[{\"name\":\"claude-sonnet-4-6\",\"provider\":\"anthropic\",\"context_window\":"
                           "1000,\"max_output\":100,\"price\":{\"input\":1},\"fallbacks\":[\"tiny\"]},"
                           "{\"name\":\"tiny\",\"provider\":\"local\",\"model_id\":\"tiny:1b\",\"context_window\":2048,"
                           "\"max_output\":256}]}");
    struct chat_config c = base_cfg();
    c.models_file = path;
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *s = models_find(t, "claude-sonnet-4-6");
    assert_int_equal(s->context_window, 1000); /* replaced by name */
    assert_int_equal(s->price.input, 1000000);
    assert_int_equal(s->price.output, 0);
    assert_int_equal(s->n_fallbacks, 1);
    const chat_model *tiny = models_find(t, "tiny");
    assert_true(tiny->available); /* names no key variable: a local server */
    assert_string_equal(tiny->model_id, "tiny:1b");
    assert_string_equal(tiny->provider.base_url, "http://127.0.0.1:9/v1");
    assert_string_equal(tiny->provider.max_tokens_field, "max_completion_tokens");
    assert_int_equal(tiny->provider.kind, LLM_PROVIDER_OPENAI);
    assert_non_null(models_find(t, "claude-haiku-4-5")); /* built-ins stay */
    models_free(t);
    unlink(path);
    free(path);
}

static void expect_error(const char *json, const char *needle)
{
    char *path = write_tmp(json);
    struct chat_config c = base_cfg();
    c.models_file = path;
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_EINVAL);
    assert_null(t);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    unlink(path);
    free(path);
}

static void test_models_file_errors(void **state)
{
    (void)state;
    expect_error("{", "MODELS_FILE");
    expect_error("[]", "JSON object");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"nowhere\",\"context_window\":1,\"max_output\":1}]}",
                 "unknown provider");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":0,\"max_output\":1}]}",
                 "context_window");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"fallbacks\":[\"ghost\"]}]}",
                 "fallback ghost");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"price\":{\"input\":\"3\"}}]}",
                 "price.input");
    struct chat_config c = base_cfg();
    c.chat_model = "missing-model";
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "CHAT_MODEL"));
}

static json_t *opts(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (!v)
        fail_msg("bad test JSON: %s", text);
    return v;
}

/* options (JSON text) on model: accepted (want NULL), or refused naming want with a message containing msg. */
static void check_opts(const chat_model *m, const char *options, const char *want, const char *msg)
{
    json_t *o = opts(options);
    char why[256] = "";
    const char *r = models_check_options(m, o, why, sizeof why);
    if (!want && r)
        fail_msg("%s on %s refused: %s", options, m->name, why);
    if (want && (!r || strcmp(r, want) != 0))
        fail_msg("%s on %s: got %s (%s), wanted %s", options, m->name, r ? r : "NULL", why, want);
    if (msg && !strstr(why, msg))
        fail_msg("%s on %s: \"%s\" does not say \"%s\"", options, m->name, why, msg);
    json_decref(o);
}

static void test_builtin_features(void **state)
{
    (void)state;
    struct chat_config c = base_cfg();
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const char *claude[] = { "claude-sonnet-4-6", "claude-opus-4-5", "claude-haiku-4-5" };
    for (size_t i = 0; i < 3; i++) {
        const chat_model *m = models_find(t, claude[i]);
        assert_int_equal(m->features,
                         CHAT_MODEL_TOOLS | CHAT_MODEL_VISION | CHAT_MODEL_STRUCTURED_OUTPUT | CHAT_MODEL_THINKING);
        assert_true(m->temperature_max == 1.0);
        assert_int_equal(m->n_rejects, 0);
    }
    const chat_model *g = models_find(t, "gpt-4o");
    assert_int_equal(g->features, CHAT_MODEL_TOOLS | CHAT_MODEL_VISION | CHAT_MODEL_STRUCTURED_OUTPUT);
    assert_true(g->temperature_max == 2.0);
    assert_int_equal(models_find(t, "llama-3.3-70b-versatile")->features, CHAT_MODEL_TOOLS);
    models_free(t);
}

static void test_features_file(void **state)
{
    (void)state;
    char *path = write_tmp("{\"providers\":{\"strict\":{\"type\":\"openai\",\"base_url\":\"http://127.0.0.1:9/v1\","
                           "\"rejects\":[\"seed\",\"top_k\"]}},"
                           "\"models\":[{\"name\":\"r1\",\"provider\":\"strict\",\"context_window\":9,\"max_output\":1,"
                           "\"features\":[\"reasoning_effort\",\"tools\"],\"temperature_max\":1.5,"
                           "\"rejects\":[\"temperature\",\"seed\"]}]}");
    struct chat_config c = base_cfg();
    c.models_file = path;
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *m = models_find(t, "r1");
    assert_int_equal(m->features, CHAT_MODEL_REASONING_EFFORT | CHAT_MODEL_TOOLS);
    assert_true(m->temperature_max == 1.5);
    /* the model's and the provider's, merged without repeats */
    assert_int_equal(m->n_rejects, 3);
    assert_string_equal(m->rejects[0], "temperature");
    assert_string_equal(m->rejects[1], "seed");
    assert_string_equal(m->rejects[2], "top_k");
    check_opts(m, "{\"seed\":1}", "seed", "seed: model r1 does not accept this parameter");
    check_opts(m, "{\"top_k\":5}", "top_k", NULL);
    check_opts(m, "{\"temperature\":0.5}", "temperature", NULL);
    check_opts(m, "{\"reasoning_effort\":\"low\",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2000}}", NULL,
               NULL);
    models_free(t);
    unlink(path);
    free(path);

    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"features\":[\"tools\",\"telepathy\"]}]}",
                 "model x: unknown feature \"telepathy\" (known: tools, vision, structured_output, thinking");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"features\":\"tools\"}]}",
                 "\"features\" must be an array");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"features\":[3]}]}",
                 "unknown feature (not a string)");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"temperature_max\":\"1\"}]}",
                 "temperature_max");
    expect_error("{\"models\":[{\"name\":\"x\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1,"
                 "\"rejects\":[\"temprature\"]}]}",
                 "model x: \"rejects\" names an unknown option \"temprature\"");
    expect_error("{\"providers\":{\"p\":{\"type\":\"openai\",\"base_url\":\"http://h/v1\",\"rejects\":\"seed\"}}}",
                 "provider p: \"rejects\" must be an array");
}

static void test_check_options_anthropic(void **state)
{
    (void)state;
    struct chat_config c = base_cfg();
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *m = models_find(t, "claude-sonnet-4-6");
    check_opts(m, "{}", NULL, NULL);
    check_opts(m,
               "{\"temperature\":1,\"top_p\":0.9,\"top_k\":40,\"stop\":[\"END\"],\"user\":\"u1\",\"metadata\":"
               "{\"user_id\":\"u1\"},\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],"
               "\"tool_choice\":{\"type\":\"any\"},\"parallel_tool_calls\":false,\"response_format\":{\"type\":"
               "\"json_schema\",\"name\":\"x\",\"schema\":{\"type\":\"object\"}},\"thinking\":{\"type\":\"enabled\","
               "\"budget_tokens\":1024},\"reasoning_effort\":\"high\",\"n\":1}",
               NULL, NULL);
    check_opts(m, "{\"temperature\":1.5}", "temperature",
               "temperature: 1.5 is above 1, the most model claude-sonnet-4-6 accepts");
    check_opts(m, "{\"temperature\":-0.1}", "temperature", "-0.1 is below 0");
    check_opts(m, "{\"temperature\":\"hot\"}", "temperature", "must be a number");
    check_opts(m, "{\"top_p\":1.2}", "top_p", "from 0 to 1");
    check_opts(m, "{\"top_k\":0}", "top_k", "at least 1");
    check_opts(m, "{\"stop\":[\"\"]}", "stop", "non-empty");
    const char *refused[] = { "{\"seed\":7}",
                              "{\"presence_penalty\":0.5}",
                              "{\"frequency_penalty\":-1}",
                              "{\"logit_bias\":{\"50256\":-100}}",
                              "{\"logprobs\":true}",
                              "{\"top_logprobs\":3}" };
    const char *names[] = { "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs" };
    for (size_t i = 0; i < 6; i++)
        check_opts(m, refused[i], names[i], "model claude-sonnet-4-6 (provider anthropic");
    /* their no-op values are accepted and left out of the request */
    json_t *o = opts("{\"presence_penalty\":0,\"frequency_penalty\":0,\"logprobs\":false,\"logit_bias\":{},"
                     "\"top_logprobs\":0,\"n\":1,\"response_format\":{\"type\":\"text\"},\"temperature\":0.5,"
                     "\"metadata\":{\"user_id\":\"u\"}}");
    char why[256];
    assert_null(models_check_options(m, o, why, sizeof why));
    models_strip_noops(m, o);
    char *left = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(left, "{\"metadata\":{\"user_id\":\"u\"},\"temperature\":0.5}");
    free(left);
    json_decref(o);
    check_opts(m, "{\"n\":2}", "n", "only 1 is supported");
    check_opts(m, "{\"response_format\":{\"type\":\"yaml\"}}", "response_format", "type must be");
    check_opts(m, "{\"whatever\":1}", "whatever", "whatever: an unknown parameter");
    /* the first refusal in the table's order, whatever the client's order */
    check_opts(m, "{\"seed\":1,\"temperature\":3}", "temperature", NULL);
    models_free(t);
}

static void test_check_options_features(void **state)
{
    (void)state;
    char *path = write_tmp(
        "{\"providers\":{\"local\":{\"type\":\"openai\",\"base_url\":\"http://127.0.0.1:9/v1\"}},"
        "\"models\":[{\"name\":\"plain\",\"provider\":\"local\",\"context_window\":9,\"max_output\":1},"
        "{\"name\":\"tooly\",\"provider\":\"local\",\"context_window\":9,\"max_output\":1,\"features\":[\"tools\"]},"
        "{\"name\":\"old-claude\",\"provider\":\"anthropic\",\"context_window\":9,\"max_output\":1}]}");
    struct chat_config c = base_cfg();
    c.models_file = path;
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *plain = models_find(t, "plain"), *tooly = models_find(t, "tooly");
    const chat_model *old = models_find(t, "old-claude");
    /* OpenAI-compatible: sampling and penalties pass, up to temperature 2 */
    check_opts(plain,
               "{\"temperature\":2,\"top_k\":3,\"seed\":1,\"presence_penalty\":1,\"frequency_penalty\":1,"
               "\"logit_bias\":{\"1\":2},\"logprobs\":true,\"top_logprobs\":2,\"user\":\"u\",\"stop\":[\"x\"]}",
               NULL, NULL);
    check_opts(plain, "{\"temperature\":2.5}", "temperature", "2.5 is above 2, the most model plain accepts");
    check_opts(plain, "{\"tools\":[]}", "tools", "tools: model plain does not support tool use");
    check_opts(plain, "{\"tool_choice\":{\"type\":\"auto\"}}", "tool_choice", NULL);
    check_opts(plain, "{\"response_format\":{\"type\":\"json_object\"}}", "response_format",
               "neither structured output nor tool use");
    check_opts(plain, "{\"reasoning_effort\":\"low\"}", "reasoning_effort", "model plain does not support");
    check_opts(plain, "{\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":9}}", "thinking", NULL);
    check_opts(plain, "{\"thinking\":{\"type\":\"disabled\"}}", NULL, NULL); /* asks for nothing */
    check_opts(tooly, "{\"response_format\":{\"type\":\"json_schema\",\"schema\":{}}}", NULL, NULL); /* via a tool */
    /* metadata is Anthropic's: accepted and left out for OpenAI-compatible servers */
    json_t *o = opts("{\"metadata\":{\"a\":\"b\"},\"n\":1,\"seed\":3}");
    models_strip_noops(plain, o);
    char *left = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(left, "{\"seed\":3}");
    free(left);
    json_decref(o);
    /* an Anthropic model without features */
    check_opts(old, "{\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2000}}", "thinking",
               "model old-claude does not support extended thinking");
    check_opts(old, "{\"reasoning_effort\":\"low\"}", "reasoning_effort", NULL);
    check_opts(old, "{\"parallel_tool_calls\":true}", "parallel_tool_calls", NULL);
    assert_true(old->temperature_max == 1.0);

    /* content */
    json_t *img = opts("[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image\",\"source\":{\"type\":\"url\","
                       "\"url\":\"https://x/a.png\"}}]");
    json_t *nested = opts("[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":[{\"type\":\"image\","
                          "\"source\":{\"type\":\"url\",\"url\":\"https://x/a.png\"}}]}]");
    json_t *call = opts("[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}]");
    char why[256];
    assert_string_equal(models_check_content(plain, img, why, sizeof why), "vision");
    assert_string_equal(why, "content[1]: model plain does not accept images");
    assert_string_equal(models_check_content(plain, call, why, sizeof why), "tools");
    assert_non_null(strstr(why, "content[0]: model plain does not support tool use"));
    assert_string_equal(models_check_content(tooly, nested, why, sizeof why), "vision");
    assert_string_equal(why, "content[0].content[0]: model tooly does not accept images");
    assert_null(models_check_content(tooly, call, why, sizeof why));
    assert_null(models_check_content(plain, NULL, why, sizeof why));
    json_decref(img);
    json_decref(nested);
    json_decref(call);
    models_free(t);
    unlink(path);
    free(path);
}

static void test_anthropic_version_rejects_sampling(void **state)
{
    (void)state;
    struct chat_config c = base_cfg();
    c.anthropic_version = ANTHROPIC_VERSION_NO_SAMPLING;
    model_table *t = NULL;
    char err[256] = "";
    assert_int_equal(models_load(&c, &t, err, sizeof err), CHAT_OK);
    const chat_model *m = models_find(t, "claude-opus-4-5");
    assert_int_equal(m->n_rejects, 3);
    check_opts(m, "{\"temperature\":0.5}", "temperature", "temperature: model claude-opus-4-5 does not accept");
    check_opts(m, "{\"top_p\":0.5}", "top_p", NULL);
    check_opts(m, "{\"top_k\":5}", "top_k", NULL);
    check_opts(m, "{\"stop\":[\"x\"],\"tools\":[]}", NULL, NULL);
    assert_int_equal(models_find(t, "gpt-4o")->n_rejects, 0); /* another provider */
    models_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_cost_arithmetic),
        cmocka_unit_test(test_models_file_merge),
        cmocka_unit_test(test_models_file_errors),
        cmocka_unit_test(test_builtin_features),
        cmocka_unit_test(test_features_file),
        cmocka_unit_test(test_check_options_anthropic),
        cmocka_unit_test(test_check_options_features),
        cmocka_unit_test(test_anthropic_version_rejects_sampling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
