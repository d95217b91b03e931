/*
 * test_config.c: unit tests for src/core/config.c.
 *
 * Every test runs with the working directory set to a fresh empty temporary
 * directory (so that a stray ./.env cannot leak in), and builds its own argv
 * and envp: config.c never reads the real environment. Temporary .env files
 * are written with mkstemp in /tmp and removed by the test that made them.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"

#define ERRLEN 512

/* NULL-terminated literal arrays for argv and envp. */
#define V(...) ((char *[]){ __VA_ARGS__, NULL })
#define NONE ((char *[]){ NULL })

static char tmpdir[64];

static int count(char **v)
{
    int n = 0;
    while (v[n])
        n++;
    return n;
}

/* Loads with the given flags and environment; err always NUL-terminated. */
static chat_rc load(struct chat_config *cfg, char *err, char **args, char **env)
{
    return chat_config_load(cfg, count(args), args, env, err, ERRLEN);
}

/* Writes content (len bytes) to a new mkstemp file in /tmp; returns a heap path. */
static char *write_tmp_n(const char *content, size_t len)
{
    char *path = strdup("/tmp/test_config_env_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    return path;
}

static char *write_tmp(const char *content)
{
    return write_tmp_n(content, strlen(content));
}

static void drop_tmp(char *path)
{
    unlink(path);
    free(path);
}

/* "MAX_TOKENS" -> "max-tokens", written independently of config.c. */
static void to_flag(const char *name, char *buf, size_t buflen)
{
    size_t j = 0;
    for (const char *p = name; *p && j + 1 < buflen; p++)
        buf[j++] = *p == '_' ? '-' : (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    buf[j] = '\0';
}

static bool all_zero(const struct chat_config *cfg)
{
    const unsigned char *p = (const unsigned char *)cfg;
    for (size_t i = 0; i < sizeof *cfg; i++)
        if (p[i])
            return false;
    return true;
}

/* Expects a failed load: CHAT_EINVAL, cfg zeroed, err containing every
 * non-NULL needle. */
static void expect_fail(char **args, char **env, const char *needle1, const char *needle2)
{
    struct chat_config cfg;
    char err[ERRLEN];
    memset(&cfg, 0xA5, sizeof cfg); /* garbage in: must come out zeroed */
    chat_rc rc = load(&cfg, err, args, env);
    if (rc != CHAT_EINVAL)
        fail_msg("expected CHAT_EINVAL, got %d (err \"%s\")", rc, err);
    assert_true(all_zero(&cfg));
    if (needle1 && !strstr(err, needle1))
        fail_msg("error \"%s\" lacks \"%s\"", err, needle1);
    if (needle2 && !strstr(err, needle2))
        fail_msg("error \"%s\" lacks \"%s\"", err, needle2);
    assert_null(strchr(err, '\n'));
    chat_config_free(&cfg);
}

static void expect_ok(struct chat_config *cfg, char **args, char **env)
{
    char err[ERRLEN];
    chat_rc rc = load(cfg, err, args, env);
    if (rc != CHAT_OK)
        fail_msg("expected CHAT_OK, got %d: %s", rc, err);
    assert_string_equal(err, "");
}

/* ------------------------------------------------------------------ */

static void test_defaults(void **state)
{
    (void)state;
    struct chat_config c;
    expect_ok(&c, NONE, NONE);
    assert_string_equal(c.anthropic_api_key, "");
    assert_string_equal(c.anthropic_base_url, "https://api.anthropic.com");
    assert_string_equal(c.anthropic_version, "2023-06-01");
    assert_string_equal(c.chat_model, "claude-sonnet-4-6");
    assert_int_equal(c.max_tokens, 1024);
    assert_string_equal(c.default_system_prompt, "You are a helpful AI assistant.");
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8000);
    assert_int_equal(c.workers, 0);
    assert_int_equal(c.max_connections, 0);
    assert_string_equal(c.database_url, "sqlite:///./data/chatd.db");
    assert_int_equal(c.max_body_bytes, 1024 * 1024);
    assert_int_equal(c.max_header_bytes, 16 * 1024);
    assert_int_equal(c.max_message_bytes, 256 * 1024);
    assert_int_equal(c.max_image_size, 5 * 1024 * 1024);
    assert_false(c.drop_unsupported_params);
    assert_int_equal(c.header_timeout_ms, 10000);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.heartbeat_ms, 10000);
    assert_int_equal(c.stream_buffer_bytes, 64 * 1024);
    assert_int_equal(c.provider_connect_timeout_ms, 10000);
    assert_int_equal(c.provider_first_byte_timeout_ms, 600000);
    assert_int_equal(c.provider_idle_timeout_ms, 120000);
    assert_int_equal(c.turn_timeout_ms, 900000);
    assert_int_equal(c.provider_max_retries, 2);
    assert_int_equal(c.retry_max_wait_ms, 30000);
    assert_int_equal(c.cancel_policy, CANCEL_KEEP_PARTIAL);
    assert_int_equal(c.lock_ttl_ms, 960000);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.auth_mode, AUTH_MODE_NONE);
    assert_string_equal(c.env_file, ".env");
    assert_string_equal(c.trusted_proxies, "");
    assert_int_equal(c.rate_limit_ipv6_prefix, 64);
    assert_string_equal(c.auth_failure_limit, "20/minute");
    chat_config_free(&c);
    assert_true(all_zero(&c));
    chat_config_free(NULL);
}

static void test_precedence_layers(void **state)
{
    (void)state;
    struct chat_config c;
    char *env_file = write_tmp("PORT=1111\nCHAT_MODEL=from-dotenv\nMAX_TOKENS=11\nWORKERS=3\n");
    char *ef = NULL;
    if (asprintf(&ef, "--env-file=%s", env_file) < 0)
        fail();

    /* .env over defaults */
    expect_ok(&c, V(ef), NONE);
    assert_int_equal(c.port, 1111);
    assert_string_equal(c.chat_model, "from-dotenv");
    assert_int_equal(c.max_tokens, 11);
    assert_int_equal(c.workers, 3);
    assert_string_equal(c.env_file, env_file);
    chat_config_free(&c);

    /* environment over .env */
    expect_ok(&c, V(ef), V("PORT=2222", "CHAT_MODEL=from-env"));
    assert_int_equal(c.port, 2222);
    assert_string_equal(c.chat_model, "from-env");
    assert_int_equal(c.max_tokens, 11);
    chat_config_free(&c);

    /* flags over environment */
    expect_ok(&c, V(ef, "--port", "3333"), V("PORT=2222", "CHAT_MODEL=from-env"));
    assert_int_equal(c.port, 3333);
    assert_string_equal(c.chat_model, "from-env");
    assert_int_equal(c.max_tokens, 11);
    assert_int_equal(c.workers, 3);
    chat_config_free(&c);

    /* ENV_FILE from the environment selects the file too */
    char *ev = NULL;
    if (asprintf(&ev, "ENV_FILE=%s", env_file) < 0)
        fail();
    expect_ok(&c, NONE, V(ev));
    assert_int_equal(c.port, 1111);
    assert_string_equal(c.env_file, env_file);
    chat_config_free(&c);
    /* ...and the flag beats it */
    expect_ok(&c, V("--env-file", "/dev/null"), V(ev));
    assert_int_equal(c.port, 8000);
    assert_string_equal(c.env_file, "/dev/null");
    chat_config_free(&c);

    free(ev);
    free(ef);
    drop_tmp(env_file);
}

static void test_default_dotenv_in_cwd(void **state)
{
    (void)state;
    struct chat_config c;
    FILE *f = fopen(".env", "w");
    assert_non_null(f);
    fputs("PORT=4444\nENV_FILE=/nonexistent/ignored\n", f);
    fclose(f);
    expect_ok(&c, NONE, NONE);
    assert_int_equal(c.port, 4444); /* ENV_FILE inside .env is ignored */
    chat_config_free(&c);
    unlink(".env");
    /* absent default: fine */
    expect_ok(&c, NONE, NONE);
    assert_int_equal(c.port, 8000);
    chat_config_free(&c);
}

static void test_env_file_errors(void **state)
{
    (void)state;
    expect_fail(V("--env-file", "/nonexistent/x.env"), NONE, "/nonexistent/x.env", "--env-file");
    expect_fail(NONE, V("ENV_FILE=/nonexistent/y.env"), "/nonexistent/y.env", "ENV_FILE");
    expect_fail(V("--env-file="), NONE, "ENV_FILE", "empty");
    expect_fail(V("--env-file", "/tmp"), NONE, "/tmp", "cannot read");
}

static void test_flag_syntaxes(void **state)
{
    (void)state;
    struct chat_config c;
    expect_ok(&c,
              V("--max-tokens", "2048", "--database-url=postgres://u@db/chat", "--default-system-prompt=",
                "--provider-first-byte-timeout", "2m", "--cancel-policy=drop", "--port=1", "--port", "2"),
              NONE);
    assert_int_equal(c.max_tokens, 2048);
    assert_string_equal(c.database_url, "postgres://u@db/chat");
    assert_string_equal(c.default_system_prompt, "");
    assert_int_equal(c.provider_first_byte_timeout_ms, 120000);
    assert_int_equal(c.cancel_policy, CANCEL_DROP);
    assert_int_equal(c.port, 2); /* last one wins */
    chat_config_free(&c);

    /* a value may contain '=' and, with '=', start with "--" */
    expect_ok(&c, V("--default-system-prompt=a=b", "--chat-model=--x"), NONE);
    assert_string_equal(c.default_system_prompt, "a=b");
    assert_string_equal(c.chat_model, "--x");
    chat_config_free(&c);
}

static void test_flag_errors(void **state)
{
    (void)state;
    expect_fail(V("--no-such-flag", "1"), NONE, "unknown flag --no-such-flag", NULL);
    expect_fail(V("--no-such=secretvalue"), NONE, "unknown flag --no-such", NULL);
    expect_fail(V("--MAX-TOKENS", "5"), NONE, "unknown flag --MAX-TOKENS", NULL);
    expect_fail(V("--max_tokens", "5"), NONE, "unknown flag --max_tokens", NULL);
    expect_fail(V("--max-tokens"), NONE, "missing value for --max-tokens", NULL);
    expect_fail(V("--max-tokens", "--port", "1"), NONE, "missing value for --max-tokens", NULL);
    expect_fail(V("serve"), NONE, "unexpected argument #1", NULL);
    expect_fail(V("--port", "1", "-p"), NONE, "unexpected argument #3", NULL);
    expect_fail(V("--"), NONE, "unexpected argument", NULL);
    /* unknown flags win over nothing: a secret after '=' is not echoed */
    struct chat_config c;
    char err[ERRLEN];
    assert_int_equal(load(&c, err, V("--anthropic-key=sk-live-123"), NONE), CHAT_EINVAL);
    assert_null(strstr(err, "sk-live-123"));
}

static void test_unknown_names_ignored(void **state)
{
    (void)state;
    struct chat_config c;
    char *f = write_tmp("OTHER_TOOL_SETTING=whatever\nPORT=5\n");
    char *ef = NULL;
    if (asprintf(&ef, "--env-file=%s", f) < 0)
        fail();
    expect_ok(&c, V(ef), V("PATH=/usr/bin", "port=7", "NOEQUALS", "SOME_TOKEN=x", "PORT=6", "PORT=9"));
    /* lowercase "port" is not PORT; the first PORT wins, as getenv would */
    assert_int_equal(c.port, 6);
    chat_config_free(&c);
    free(ef);
    drop_tmp(f);
}

/* One bad value per setting kind and range edge; the message must name the
 * setting, echo the value, name the source and give the reason. */
static const struct {
    const char *name, *value, *reason;
} bad_values[] = {
    { "PORT", "80x", "expected an integer 0..65535" },
    { "PORT", "65536", "expected an integer 0..65535" },
    { "PORT", "-1", "expected an integer 0..65535" },
    { "PORT", " 80", "expected an integer" },
    { "PORT", "+80", "expected an integer" },
    { "PORT", "", "must not be empty" },
    { "PORT", "99999999999999999999999", "expected an integer" },
    { "MAX_TOKENS", "0", "expected an integer 1..1000000" },
    { "MAX_TOKENS", "1000001", "expected an integer 1..1000000" },
    { "WORKERS", "257", "expected an integer 0..256" },
    { "MAX_CONNECTIONS", "-1", "expected an integer 0..10000000" },
    { "MAX_CONNECTIONS", "10000001", "expected an integer 0..10000000" },
    { "MAX_CONNECTIONS", "many", "expected an integer 0..10000000" },
    { "PROVIDER_MAX_RETRIES", "11", "expected an integer 0..10" },
    { "HOST", "", "must not be empty" },
    { "CHAT_MODEL", "", "must not be empty" },
    { "ANTHROPIC_VERSION", "2023 06", "spaces" },
    { "ANTHROPIC_BASE_URL", "ftp://x", "http:// or https://" },
    { "ANTHROPIC_BASE_URL", "api.anthropic.com", "http:// or https://" },
    { "ANTHROPIC_BASE_URL", "https://", "host" },
    { "ANTHROPIC_BASE_URL", "https://a b", "spaces" },
    { "DATABASE_URL", "mysql://x", "sqlite://, postgres:// or postgresql://" },
    { "DATABASE_URL", "sqlite://", "path or host" },
    { "DATABASE_URL", "", "must not be empty" },
    { "CANCEL_POLICY", "maybe", "keep or drop" },
    { "LOG_LEVEL", "verbose", "debug, info, warn or error" },
    { "AUTH_MODE", "open", "expected none, token or keys" },
    { "HEADER_TIMEOUT", "0", "timeouts cannot be disabled" },
    { "HEADER_TIMEOUT", "0ms", "timeouts cannot be disabled" },
    { "IDLE_TIMEOUT", "10x", "expected a duration" },
    { "IDLE_TIMEOUT", "1.5s", "expected a duration" },
    { "IDLE_TIMEOUT", "-5s", "expected a duration" },
    { "IDLE_TIMEOUT", "169h", "out of range" },
    { "IDLE_TIMEOUT", "99999999999999999h", "expected a duration" },
    { "HEARTBEAT_INTERVAL", "s", "expected a duration" },
    { "PROVIDER_CONNECT_TIMEOUT", "0s", "timeouts cannot be disabled" },
    { "PROVIDER_FIRST_BYTE_TIMEOUT", "0", "timeouts cannot be disabled" },
    { "PROVIDER_IDLE_TIMEOUT", "0", "timeouts cannot be disabled" },
    { "TURN_TIMEOUT", "0", "timeouts cannot be disabled" },
    { "RETRY_MAX_WAIT", "0", "above 0" },
    { "PROVIDER_HTTP_VERSION", "3", "expected auto, 1.1 or 2" },
    { "PROVIDER_HTTP_VERSION", "2.0", "expected auto, 1.1 or 2" },
    { "PROVIDER_HTTP_VERSION", "", "must not be empty" },
    { "LOCK_TTL", "0", "above 0" },
    { "DRAIN_TIMEOUT", "0", "timeouts cannot be disabled" },
    { "MAX_BODY_SIZE", "1kb", "expected a size" },
    { "MAX_BODY_SIZE", "2GiB", "expected a size 1KiB..1GiB" },
    { "MAX_BODY_SIZE", "100", "expected a size 1KiB..1GiB" },
    { "MAX_HEADER_SIZE", "2MiB", "expected a size 1KiB..1MiB" },
    { "MAX_MESSAGE_SIZE", "0", "expected a size" },
    { "MAX_MESSAGE_SIZE", "99999999999999999g", "expected a size" },
    { "STREAM_BUFFER_SIZE", "64 k", "expected a size" },
    { "MAX_IMAGE_SIZE", "100", "expected a size 1KiB..1GiB" },
    { "DROP_UNSUPPORTED_PARAMS", "maybe", "expected on or off" },
    { "DEFAULT_SYSTEM_PROMPT", "a\x01z", "control characters" },
    { "TRUSTED_PROXIES", "localhost", "entry \"localhost\" is not an IP address or network" },
    { "TRUSTED_PROXIES", "127.0.0.1,proxy.internal", "entry \"proxy.internal\" is not an IP address" },
    { "TRUSTED_PROXIES", "10.0.0.1/8", "host bits set below the prefix: write 10.0.0.0/8" },
    { "TRUSTED_PROXIES", "10.0.0.0/33", "bad prefix length: expected /0../32" },
    { "TRUSTED_PROXIES", "fd00::/129", "bad prefix length: expected /0../128" },
    { "RATE_LIMIT_IPV6_PREFIX", "0", "expected an integer 1..128" },
    { "RATE_LIMIT_IPV6_PREFIX", "129", "expected an integer 1..128" },
    { "RATE_LIMIT_IPV6_PREFIX", "64bits", "expected an integer 1..128" },
    { "AUTH_FAILURE_LIMIT", "20/fortnight", "unknown unit" },
    { "AUTH_FAILURE_LIMIT", "0/minute", "use \"off\" to disable" },
    { "AUTH_FAILURE_LIMIT", "20", "has no /unit" },
};

/* TRUSTED_PROXIES takes addresses and networks of both families; the text is kept as given. */
static void test_trusted_proxies_and_ipv6_prefix(void **state)
{
    (void)state;
    struct chat_config c;
    expect_ok(
        &c, NONE,
        V("TRUSTED_PROXIES= 127.0.0.1, ::1 ,10.0.0.0/8,fd00::/8,::ffff:192.168.0.0/112", "RATE_LIMIT_IPV6_PREFIX=48"));
    assert_string_equal(c.trusted_proxies, " 127.0.0.1, ::1 ,10.0.0.0/8,fd00::/8,::ffff:192.168.0.0/112");
    assert_int_equal(c.rate_limit_ipv6_prefix, 48);
    chat_config_free(&c);
    expect_ok(&c, V("--rate-limit-ipv6-prefix", "128"), NONE);
    assert_int_equal(c.rate_limit_ipv6_prefix, 128);
    assert_string_equal(c.trusted_proxies, "");
    chat_config_free(&c);
    expect_ok(&c, NONE, V("AUTH_FAILURE_LIMIT=OFF"));
    assert_string_equal(c.auth_failure_limit, "OFF");
    chat_config_free(&c);
}

static void test_validation_errors_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        char *e = NULL, *quoted = NULL;
        if (asprintf(&e, "%s=%s", bad_values[i].name, bad_values[i].value) < 0)
            fail();
        /* echoed values are escaped; only check plain ones verbatim */
        if (!strpbrk(bad_values[i].value, "\x01\"\\") &&
            asprintf(&quoted, "invalid %s \"%s\" (from environment)", bad_values[i].name, bad_values[i].value) < 0)
            fail();
        expect_fail(NONE, V(e), quoted ? quoted : bad_values[i].name, bad_values[i].reason);
        free(quoted);
        free(e);
    }
}

static void test_validation_errors_flag_and_dotenv(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        if (strchr(bad_values[i].value, '\x01') || strchr(bad_values[i].value, ' ') || bad_values[i].value[0] == '\0')
            continue; /* unquoted .env would trim or reject these */
        char flag[64], *arg = NULL, *src = NULL, *content = NULL, *ef = NULL, *where = NULL;
        to_flag(bad_values[i].name, flag, sizeof flag);
        if (asprintf(&arg, "--%s=%s", flag, bad_values[i].value) < 0 || asprintf(&src, "(from flag --%s)", flag) < 0)
            fail();
        expect_fail(V(arg), NONE, src, bad_values[i].reason);

        if (asprintf(&content, "# comment\n\n%s=%s\n", bad_values[i].name, bad_values[i].value) < 0)
            fail();
        char *path = write_tmp(content);
        if (asprintf(&ef, "--env-file=%s", path) < 0 || asprintf(&where, "(from %s line 3)", path) < 0)
            fail();
        expect_fail(V(ef), NONE, where, bad_values[i].reason);
        drop_tmp(path);
        free(arg);
        free(src);
        free(content);
        free(ef);
        free(where);
    }
}

static void test_durations_and_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t ms;
    } durations[] = {
        { "250ms", 250 }, { "10s", 10000 },  { "5m", 300000 },      { "1h", 3600000 }, { "7", 7000 },
        { "1MS", 1 },     { "2H", 7200000 }, { "168h", 604800000 }, { "007s", 7000 },
    };
    for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++) {
        struct chat_config c;
        char *e = NULL;
        if (asprintf(&e, "DRAIN_TIMEOUT=%s", durations[i].text) < 0)
            fail();
        expect_ok(&c, NONE, V(e));
        if (c.drain_timeout_ms != durations[i].ms)
            fail_msg("%s: got %lld ms", durations[i].text, (long long)c.drain_timeout_ms);
        chat_config_free(&c);
        free(e);
    }
    static const struct {
        const char *text;
        size_t bytes;
    } sizes[] = {
        { "512", 512 },       { "64k", 65536 },       { "64KiB", 65536 },  { "64kib", 65536 },
        { "64K", 65536 },     { "1m", 1048576 },      { "1MiB", 1048576 }, { "1M", 1048576 },
        { "1g", 1073741824 }, { "1GiB", 1073741824 }, { "2048b", 2048 },   { "1", 1 },
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct chat_config c;
        char *e = NULL;
        if (asprintf(&e, "MAX_MESSAGE_SIZE=%s", sizes[i].text) < 0)
            fail();
        expect_ok(&c, NONE, V(e));
        if (c.max_message_bytes != sizes[i].bytes)
            fail_msg("%s: got %zu bytes", sizes[i].text, c.max_message_bytes);
        chat_config_free(&c);
        free(e);
    }
}

static void test_normalisation(void **state)
{
    (void)state;
    struct chat_config c;
    expect_ok(&c, NONE,
              V("ANTHROPIC_BASE_URL=http://127.0.0.1:9999/", "LOG_LEVEL=WARN", "CANCEL_POLICY=Drop",
                "DATABASE_URL=postgresql://h/db", "ANTHROPIC_API_KEY=sk-ant-abc"));
    assert_string_equal(c.anthropic_base_url, "http://127.0.0.1:9999");
    assert_int_equal(c.log_level, LOG_WARN);
    assert_int_equal(c.cancel_policy, CANCEL_DROP);
    assert_string_equal(c.database_url, "postgresql://h/db");
    assert_string_equal(c.anthropic_api_key, "sk-ant-abc");
    chat_config_free(&c);

    expect_ok(&c, NONE, V("ANTHROPIC_BASE_URL=https://proxy.example/anthropic//", "ANTHROPIC_API_KEY="));
    assert_string_equal(c.anthropic_base_url, "https://proxy.example/anthropic");
    assert_string_equal(c.anthropic_api_key, "");
    assert_int_equal(c.provider_http_version, CHAT_HTTP_AUTO);
    chat_config_free(&c);

    expect_ok(&c, V("--provider-http-version", "2"), NONE);
    assert_int_equal(c.provider_http_version, CHAT_HTTP_2);
    chat_config_free(&c);
    expect_ok(&c, NONE, V("PROVIDER_HTTP_VERSION=1.1"));
    assert_int_equal(c.provider_http_version, CHAT_HTTP_1_1);
    chat_config_free(&c);
    expect_ok(&c, NONE, V("PROVIDER_HTTP_VERSION=AUTO"));
    assert_int_equal(c.provider_http_version, CHAT_HTTP_AUTO);
    chat_config_free(&c);
}

static void test_cross_checks(void **state)
{
    (void)state;
    struct chat_config c;
    /* LOCK_TTL follows TURN_TIMEOUT when unset, whatever layer set that */
    expect_ok(&c, V("--turn-timeout", "2m"), NONE);
    assert_int_equal(c.lock_ttl_ms, 180000);
    chat_config_free(&c);
    expect_ok(&c, NONE, V("LOCK_TTL=20m"));
    assert_int_equal(c.lock_ttl_ms, 1200000);
    chat_config_free(&c);
    expect_fail(NONE, V("LOCK_TTL=15m"), "invalid LOCK_TTL \"15m\" (from environment)", "TURN_TIMEOUT (15m, default)");
    expect_fail(V("--turn-timeout=1h"), V("LOCK_TTL=30m"), "LOCK_TTL", "TURN_TIMEOUT (1h, from flag --turn-timeout)");

    /* HEARTBEAT_INTERVAL must be below IDLE_TIMEOUT */
    expect_ok(&c, NONE, V("HEARTBEAT_INTERVAL=59s"));
    chat_config_free(&c);
    expect_fail(NONE, V("HEARTBEAT_INTERVAL=60s"), "invalid HEARTBEAT_INTERVAL \"60s\" (from environment)",
                "must be below IDLE_TIMEOUT (1m, default), otherwise a silent stream would be cut");
    expect_fail(V("--idle-timeout", "5s"), NONE, "invalid HEARTBEAT_INTERVAL \"10s\" (default)",
                "IDLE_TIMEOUT (5s, from flag --idle-timeout)");
}

/* AUTH_MODE is parsed once into chat_auth_mode; unset, it is derived from API_TOKEN. */
static void test_auth_mode(void **state)
{
    (void)state;
    struct chat_config c;
    expect_ok(&c, NONE, V("API_TOKEN=secret"));
    assert_int_equal(c.auth_mode, AUTH_MODE_TOKEN);
    chat_config_free(&c);
    expect_ok(&c, NONE, V("API_TOKEN="));
    assert_int_equal(c.auth_mode, AUTH_MODE_NONE);
    chat_config_free(&c);
    expect_ok(&c, NONE, V("AUTH_MODE=Keys"));
    assert_int_equal(c.auth_mode, AUTH_MODE_KEYS);
    chat_config_free(&c);
    expect_ok(&c, V("--auth-mode", "none"), V("API_TOKEN=secret"));
    assert_int_equal(c.auth_mode, AUTH_MODE_NONE);
    chat_config_free(&c);
    expect_ok(&c, NONE, V("AUTH_MODE=TOKEN", "API_TOKEN=secret"));
    assert_int_equal(c.auth_mode, AUTH_MODE_TOKEN);
    chat_config_free(&c);
    expect_fail(NONE, V("AUTH_MODE=token"), "AUTH_MODE=token needs API_TOKEN to be set", NULL);
    expect_fail(NONE, V("AUTH_MODE="), "invalid AUTH_MODE \"\" (from environment): must not be empty", NULL);
}

static void test_dotenv_syntax(void **state)
{
    (void)state;
    struct chat_config c;
    char *path = write_tmp("# a comment\n"
                           "\n"
                           "   \t\n"
                           "  # indented comment\n"
                           "export CHAT_MODEL=exported-model\n"
                           "HOST = 0.0.0.0   # trailing comment\n"
                           "DEFAULT_SYSTEM_PROMPT=\"line1\\nsaid \\\"hi\\\" \\\\ \\q\" # c\n"
                           "ANTHROPIC_VERSION='lit\\n#x'\n"
                           "DATABASE_URL=sqlite:///tmp/a#b.db\n"
                           "LOG_LEVEL=debug\r\n"
                           "ANTHROPIC_API_KEY=\n"
                           "ANTHROPIC_BASE_URL=  'http://x/'  \n"
                           "UNKNOWN_THING=\"whatever \\\" # not a comment\"\n"
                           "PORT=1234");
    char *ef = NULL;
    if (asprintf(&ef, "--env-file=%s", path) < 0)
        fail();
    expect_ok(&c, V(ef), NONE);
    assert_string_equal(c.chat_model, "exported-model");
    assert_string_equal(c.host, "0.0.0.0");
    assert_string_equal(c.default_system_prompt, "line1\nsaid \"hi\" \\ \\q");
    assert_string_equal(c.anthropic_version, "lit\\n#x");
    assert_string_equal(c.database_url, "sqlite:///tmp/a#b.db");
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_string_equal(c.anthropic_api_key, "");
    assert_string_equal(c.anthropic_base_url, "http://x");
    assert_int_equal(c.port, 1234); /* last line without newline */
    chat_config_free(&c);
    free(ef);
    drop_tmp(path);

    /* A later line overrides an earlier one. */
    path = write_tmp("PORT=1\nPORT=2\n");
    if (asprintf(&ef, "--env-file=%s", path) < 0)
        fail();
    expect_ok(&c, V(ef), NONE);
    assert_int_equal(c.port, 2);
    chat_config_free(&c);
    free(ef);
    drop_tmp(path);
}

static void test_dotenv_bad_lines(void **state)
{
    (void)state;
    static const struct {
        const char *content;
        int line;
        const char *reason;
    } cases[] = {
        { "PORT=1\njust some words\n", 2, "expected NAME=value" },
        { "\n\n\nPORT\n", 4, "expected NAME=value" },
        { "1PORT=5\n", 1, "expected NAME=value" },
        { "export\n", 1, "expected NAME=value" },
        { "=5\n", 1, "expected NAME=value" },
        { "A=1\nB=\"open\n", 2, "unterminated double-quoted value" },
        { "A='open\n", 1, "unterminated single-quoted value" },
        { "A=\"x\" y\n", 1, "unexpected text after the closing quote" },
        { "A='x'y\n", 1, "unexpected text after the closing quote" },
        { "A=\"x\\\"\n", 1, "unterminated double-quoted value" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = write_tmp(cases[i].content);
        char *ef = NULL, *where = NULL;
        if (asprintf(&ef, "--env-file=%s", path) < 0 ||
            asprintf(&where, "%s line %d: %s", path, cases[i].line, cases[i].reason) < 0)
            fail();
        expect_fail(V(ef), NONE, where, NULL);
        free(ef);
        free(where);
        drop_tmp(path);
    }
    /* A NUL byte in the file. */
    char *path = write_tmp_n("A=1\nB=x\0y\n", 10);
    char *ef = NULL;
    if (asprintf(&ef, "--env-file=%s", path) < 0)
        fail();
    expect_fail(V(ef), NONE, "line 2: contains a NUL byte", NULL);
    free(ef);
    drop_tmp(path);
}

static void test_secret_not_echoed(void **state)
{
    (void)state;
    /* from the environment, a flag and a .env file */
    expect_fail(NONE, V("ANTHROPIC_API_KEY=sk-ant-SECRET value"), "invalid ANTHROPIC_API_KEY (from environment",
                "spaces");
    expect_fail(V("--anthropic-api-key", "sk-ant-SECRET\tx"), NONE, "ANTHROPIC_API_KEY (from flag", NULL);
    char *path = write_tmp("ANTHROPIC_API_KEY=\"sk-ant-SECRET\\nx\"\n");
    char *ef = NULL;
    if (asprintf(&ef, "--env-file=%s", path) < 0)
        fail();
    struct chat_config c;
    char err[ERRLEN];
    assert_int_equal(load(&c, err, V(ef), NONE), CHAT_EINVAL);
    assert_non_null(strstr(err, "ANTHROPIC_API_KEY"));
    assert_null(strstr(err, "SECRET"));
    free(ef);
    drop_tmp(path);

    const char *secret_envs[] = { "ANTHROPIC_API_KEY=sk-ant-SECRET value", "ANTHROPIC_API_KEY=sk-ant-SECRET\x7f" };
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(load(&c, err, NONE, V((char *)secret_envs[i])), CHAT_EINVAL);
        assert_null(strstr(err, "SECRET"));
    }
    /* a syntax error on a .env line never quotes the line */
    path = write_tmp("ANTHROPIC_API_KEY=\"sk-ant-SECRET\n");
    if (asprintf(&ef, "--env-file=%s", path) < 0)
        fail();
    assert_int_equal(load(&c, err, V(ef), NONE), CHAT_EINVAL);
    assert_null(strstr(err, "SECRET"));
    free(ef);
    drop_tmp(path);
    /* a URL's password is masked */
    assert_int_equal(load(&c, err, NONE, V("DATABASE_URL=mysql://user:SECRETPW@db/x")), CHAT_EINVAL);
    assert_null(strstr(err, "SECRETPW"));
    assert_non_null(strstr(err, "mysql://user:***@db/x"));
    assert_int_equal(load(&c, err, NONE, V("DATABASE_URL=postgres://db/x?password=SECRETPW x")), CHAT_EINVAL);
    assert_null(strstr(err, "SECRETPW"));
    assert_non_null(strstr(err, "\"postgres://db/x?...\""));
    assert_int_equal(load(&c, err, NONE, V("ANTHROPIC_BASE_URL=https://u:@a b")), CHAT_EINVAL);
    assert_non_null(strstr(err, "https://u:***@a b"));
}

static void test_error_echo_is_one_bounded_line(void **state)
{
    (void)state;
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char *e = NULL;
    if (asprintf(&e, "CHAT_MODEL=a\nb%s", big) < 0)
        fail();
    struct chat_config c;
    char err[ERRLEN];
    assert_int_equal(load(&c, err, NONE, V(e)), CHAT_EINVAL);
    assert_non_null(strstr(err, "\"a\\x0ab"));
    assert_non_null(strstr(err, "...\""));
    assert_null(strchr(err, '\n'));
    assert_true(strlen(err) < 300);
    free(e);
    /* a tiny error buffer is truncated, not overrun */
    char small[8];
    assert_int_equal(chat_config_load(&c, 1, V("--bogus"), NONE, small, sizeof small), CHAT_EINVAL);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(chat_config_load(&c, 1, V("--bogus"), NONE, NULL, 0), CHAT_EINVAL);
}

static void test_help_lists_everything(void **state)
{
    (void)state;
    static const char *names[] = {
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_VERSION",
        "CHAT_MODEL",
        "MAX_TOKENS",
        "DEFAULT_SYSTEM_PROMPT",
        "HOST",
        "PORT",
        "WORKERS",
        "DATABASE_URL",
        "MAX_BODY_SIZE",
        "MAX_HEADER_SIZE",
        "MAX_MESSAGE_SIZE",
        "HEADER_TIMEOUT",
        "IDLE_TIMEOUT",
        "HEARTBEAT_INTERVAL",
        "STREAM_BUFFER_SIZE",
        "PROVIDER_CONNECT_TIMEOUT",
        "PROVIDER_FIRST_BYTE_TIMEOUT",
        "PROVIDER_IDLE_TIMEOUT",
        "TURN_TIMEOUT",
        "PROVIDER_MAX_RETRIES",
        "RETRY_MAX_WAIT",
        "PROVIDER_HTTP_VERSION",
        "CANCEL_POLICY",
        "LOCK_TTL",
        "DRAIN_TIMEOUT",
        "LOG_LEVEL",
        "MAX_CONNECTIONS",
        "ENV_FILE",
        "TRUSTED_PROXIES",
        "RATE_LIMIT_IPV6_PREFIX",
        "AUTH_FAILURE_LIMIT",
    };
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    chat_config_print_help(f);
    fclose(f);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char flag[64], needle[80];
        to_flag(names[i], flag, sizeof flag);
        snprintf(needle, sizeof needle, " %s", names[i]);
        const char *at = strstr(text, needle);
        while (at && at[strlen(needle)] != ' ' && at[strlen(needle)] != '\n')
            at = strstr(at + 1, needle);
        if (!at)
            fail_msg("help lacks %s", names[i]);
        snprintf(needle, sizeof needle, "  --%s ", flag);
        if (!strstr(text, needle))
            fail_msg("help lacks --%s", flag);
        /* and the flag is accepted */
        struct chat_config c;
        char err[ERRLEN];
        char *arg = NULL;
        if (asprintf(&arg, "--%s", flag) < 0)
            fail();
        assert_int_equal(load(&c, err, V(arg), NONE), CHAT_EINVAL);
        if (!strstr(err, "missing value"))
            fail_msg("--%s: %s", flag, err);
        free(arg);
    }
    assert_non_null(strstr(text, "default 8000"));
    assert_non_null(strstr(text, "TURN_TIMEOUT+60s"));
    assert_non_null(strstr(text, "\"You are a helpful AI assistant.\""));
    /* readable in 100 columns */
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        if (n > 100)
            fail_msg("help line over 100 columns: %.*s", (int)n, line);
        line += n + (nl ? 1 : 0);
    }
    free(text);
}

/*
 * Malformed input: random .env files, environment values and flags built
 * from the characters that matter to the parsers. Every load must end in
 * CHAT_OK or CHAT_EINVAL (with cfg zeroed and a one-line message); the
 * sanitizer build turns any overrun or leak into a failure.
 */
static void test_random_input(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "PORT",
        "MAX_BODY_SIZE",
        "IDLE_TIMEOUT",
        "HEARTBEAT_INTERVAL",
        "ANTHROPIC_API_KEY",
        "DATABASE_URL",
        "ANTHROPIC_BASE_URL",
        "LOCK_TTL",
        "DEFAULT_SYSTEM_PROMPT",
        "export ",
        "=",
        "==",
        "\"",
        "'",
        "\\",
        "\\n",
        "#",
        " #",
        " ",
        "\t",
        "\n",
        "\r\n",
        "0",
        "1",
        "99999999999999999999",
        "ms",
        "s",
        "h",
        "k",
        "KiB",
        "m",
        "-",
        "https://",
        "sqlite://",
        "u:p@",
        "/",
        "\x01",
        "\xff",
        "drop",
        "x",
    };
    const size_t npieces = sizeof pieces / sizeof pieces[0];
    unsigned seed = 12345;
    char *path = write_tmp("");
    char *ef = NULL;
    if (asprintf(&ef, "--env-file=%s", path) < 0)
        fail();
    int oks = 0, fails = 0;
    for (int iter = 0; iter < 3000; iter++) {
        char text[512];
        size_t len = 0;
        int n = (int)(rand_r(&seed) % 24);
        for (int k = 0; k < n; k++) {
            const char *piece = pieces[(size_t)rand_r(&seed) % npieces];
            size_t pl = strlen(piece);
            if (len + pl >= sizeof text)
                break;
            memcpy(text + len, piece, pl);
            len += pl;
        }
        text[len] = '\0';
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fwrite(text, 1, len, f);
        fclose(f);

        /* the same text as an environment value and as a flag value */
        char *e = NULL, *arg = NULL;
        const char *name = pieces[(size_t)rand_r(&seed) % 9];
        char flag[64];
        to_flag(name, flag, sizeof flag);
        if (asprintf(&e, "%s=%s", name, text) < 0 || asprintf(&arg, "--%s=%s", flag, text) < 0)
            fail();
        char **variants[3][2] = { { V(ef), NONE }, { V("--env-file=/dev/null"), V(e) }, { V(arg), NONE } };
        for (int v = 0; v < 3; v++) {
            struct chat_config c;
            char err[ERRLEN];
            chat_rc rc = load(&c, err, variants[v][0], variants[v][1]);
            if (rc == CHAT_OK) {
                oks++;
                assert_non_null(c.host);
                chat_config_free(&c);
            } else {
                fails++;
                assert_int_equal(rc, CHAT_EINVAL);
                assert_true(all_zero(&c));
                assert_true(err[0] != '\0');
                assert_null(strchr(err, '\n'));
            }
        }
        free(e);
        free(arg);
    }
    /* the generator must exercise both outcomes, or it tests nothing */
    assert_true(oks > 100);
    assert_true(fails > 100);
    free(ef);
    drop_tmp(path);
}

/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config_cwd_XXXXXX");
    if (!mkdtemp(tmpdir) || chdir(tmpdir) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(".env");
    if (chdir("/") != 0)
        return -1;
    return rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_precedence_layers),
        cmocka_unit_test(test_default_dotenv_in_cwd),
        cmocka_unit_test(test_env_file_errors),
        cmocka_unit_test(test_flag_syntaxes),
        cmocka_unit_test(test_flag_errors),
        cmocka_unit_test(test_unknown_names_ignored),
        cmocka_unit_test(test_validation_errors_env),
        cmocka_unit_test(test_validation_errors_flag_and_dotenv),
        cmocka_unit_test(test_trusted_proxies_and_ipv6_prefix),
        cmocka_unit_test(test_durations_and_sizes),
        cmocka_unit_test(test_normalisation),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_auth_mode),
        cmocka_unit_test(test_dotenv_syntax),
        cmocka_unit_test(test_dotenv_bad_lines),
        cmocka_unit_test(test_secret_not_echoed),
        cmocka_unit_test(test_error_echo_is_one_bounded_line),
        cmocka_unit_test(test_help_lists_everything),
        cmocka_unit_test(test_random_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
