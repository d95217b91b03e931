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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_cost_arithmetic),
        cmocka_unit_test(test_models_file_merge),
        cmocka_unit_test(test_models_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
