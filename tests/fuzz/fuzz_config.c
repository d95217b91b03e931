/*
 * fuzz_config: configuration values (src/core/config.c): every setting of the
 * table (durations, sizes, integers, rate specs, booleans, URLs such as
 * DATABASE_URL and REDIS_URL, TRUSTED_PROXIES, CORS_ORIGINS...) and the .env
 * file syntax, through the public chat_config_load.
 *
 * The setting names are read from `chatd --help` (chat_config_print_help) at
 * start-up, so that a setting added to the table is fuzzed without anyone
 * editing this file.
 *
 * Input: a mode byte, then "NAME=value" (up to a NUL; a NAME that is not in
 * the table picks one by hash). Mode bits: 1 the value comes as a flag
 * (--name=value) instead of the environment; 2 a *_URL value is wrapped as
 * "https://u:<canary password>@value" (4: postgres://, 8: redis://); a mode byte
 * of 0xF0 or above means ".env mode": the rest is a whole .env file.
 * Oracles (config.h): a failure writes one non-empty line of printable,
 * valid UTF-8 text; the value of a secret (*_KEY, *_TOKEN...) never appears
 * in it; nor does the password of a URL value. A REDIS_URL value also goes
 * through redis_limit_parse_url, as at server start (redis_limit.h: a refusal
 * changes nothing and never shows the password; an accepted URL has a host,
 * a port 1..65535 and a db 0..65535).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/config.h"
#include "fuzz_util.h"
#include "guard/redis_limit.h"

#define MAX_SETTINGS 128
#define SECRET_CANARY "Zq8SecretCanary"
#define PASSWORD_CANARY "Pw0rdCanary7x"

static char *names[MAX_SETTINGS];
static size_t n_names;
/* The environment's first entry: "ENV_FILE=/dev/null" when a ./.env exists
 * (it must not leak into the runs), else a harmless variable: the loader
 * then reads no file at all, which keeps it fast (a .env read allocates its
 * 1 MiB maximum, an mmap per run under ASan). */
static char *no_dotenv = "FUZZ_NO_DOTENV=1";

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Collects the settings from the help text, whose lines read
 * "  --flag-name META   FLAG_NAME   default ...": NAME is the flag upper-cased
 * with '-' as '_' (config.h), and must appear on the line too. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *help = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&help, &len);
    FUZZ_CHECK(f != NULL, "open_memstream");
    chat_config_print_help(f);
    fclose(f);
    char *save = NULL;
    for (char *line = strtok_r(help, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "  --", 4) != 0 || n_names == MAX_SETTINGS)
            continue;
        size_t n = strcspn(line + 4, " =");
        char *name = strndup(line + 4, n);
        FUZZ_CHECK(name != NULL, "out of memory");
        for (char *c = name; *c; c++)
            *c = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        FUZZ_CHECK(strstr(line, name) != NULL, "help line without its NAME %s: %s", name, line);
        names[n_names++] = name;
    }
    free(help);
    FUZZ_CHECK(n_names >= 40, "only %zu settings found in the help text", n_names);
    if (access(".env", F_OK) == 0)
        no_dotenv = "ENV_FILE=/dev/null";
    return 0;
}

static size_t count_in(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
        n++;
    return n;
}

/* raw: the input's own bytes of the value; a password we wrapped around them
 * must not show (what the input itself holds elsewhere, say in a path, may). */
static void check_err(const char *err, bool secret, bool wrapped, const char *raw)
{
    size_t n = strlen(err);
    FUZZ_CHECK(n > 0, "a failure without a message");
    FUZZ_CHECK(fuzz_utf8_valid(err, n), "message is not valid UTF-8: %s", err);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7f, "control byte 0x%02x in the message: %s",
                   (unsigned char)err[i], err);
    if (secret)
        FUZZ_CHECK(!strstr(err, SECRET_CANARY), "a secret's value in the message: %s", err);
    if (wrapped)
        FUZZ_CHECK(count_in(err, PASSWORD_CANARY) <= count_in(raw, PASSWORD_CANARY),
                   "a URL password in the message: %s", err);
}

/* REDIS_URL is only checked for control bytes by the loader; the server
 * parses it at start (app.c) with redis_limit_parse_url: fuzzed here too. */
static void check_redis_url(const char *value, bool wrapped, const char *raw)
{
    redis_limit_config cfg, before;
    redis_limit_config_init(&cfg);
    before = cfg;
    char err[256] = "";
    chat_rc rc = redis_limit_parse_url(value, &cfg, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL, "rc %d", rc);
    if (rc != CHAT_OK) {
        FUZZ_CHECK(memcmp(&cfg, &before, sizeof cfg) == 0, "a refused REDIS_URL changed the configuration");
        FUZZ_CHECK(err[0] != '\0', "REDIS_URL refused without a reason");
        if (wrapped)
            FUZZ_CHECK(count_in(err, PASSWORD_CANARY) <= count_in(raw, PASSWORD_CANARY),
                       "the REDIS_URL password in the message: %s", err);
        return;
    }
    FUZZ_CHECK(memchr(cfg.host, '\0', sizeof cfg.host) && memchr(cfg.username, '\0', sizeof cfg.username) &&
                   memchr(cfg.password, '\0', sizeof cfg.password),
               "a field not NUL-terminated");
    FUZZ_CHECK(cfg.host[0] != '\0', "an empty host accepted");
    FUZZ_CHECK(cfg.port >= 1 && cfg.port <= 65535, "port %d", cfg.port);
    FUZZ_CHECK(cfg.db >= 0 && cfg.db <= 65535, "db %d", cfg.db);
}

/* The setting an input names: "NAME=value" with a NAME of the table, else
 * the one its first bytes hash to (so that any input reaches some setting). */
static const char *pick_setting(const char *text, const char **value)
{
    const char *eq = strchr(text, '=');
    size_t n = eq ? (size_t)(eq - text) : 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)text[i];
        h *= 0x100000001b3ull;
    }
    *value = eq ? eq + 1 : text;
    for (size_t i = 0; i < n_names; i++)
        if (strlen(names[i]) == n && memcmp(names[i], text, n) == 0)
            return names[i];
    return names[h % n_names];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    uint8_t how = fuzz_byte(&in);
    char err[512] = "";
    struct chat_config cfg;
    chat_rc rc;

    if ((how & 0xF0) == 0xF0) {
        /* .env mode: the input is the file. */
        int fd = memfd_create("fuzz-dotenv", 0);
        FUZZ_CHECK(fd >= 0, "memfd_create");
        FUZZ_CHECK(in.n == 0 || write(fd, in.p, in.n) == (ssize_t)in.n, "write");
        char env_file[64];
        snprintf(env_file, sizeof env_file, "ENV_FILE=/proc/self/fd/%d", fd);
        char *envp[] = { env_file, NULL };
        rc = chat_config_load(&cfg, 0, NULL, envp, err, sizeof err);
        FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL, "rc %d", rc);
        if (rc != CHAT_OK)
            check_err(err, false, false, "");
        chat_config_free(&cfg);
        close(fd);
        return 0;
    }

    /* A value ends at its first NUL, as in a real environment. */
    char *text = fuzz_strndup(in.p, in.n);
    const char *raw;
    const char *name = pick_setting(text, &raw);
    bool secret = ends_with(name, "_KEY") || ends_with(name, "_TOKEN") || ends_with(name, "_SECRET") ||
                  ends_with(name, "_PASSWORD");
    bool url = ends_with(name, "_URL") && (how & 2);
    char *value = NULL, *setting = NULL;
    int ok;
    if (url)
        ok = asprintf(&value, "%s://u:%s@%s",
                      (how & 4)   ? "postgres"
                      : (how & 8) ? "redis"
                                  : "https",
                      PASSWORD_CANARY, raw);
    else if (secret)
        ok = asprintf(&value, "%s%s", SECRET_CANARY, raw);
    else
        ok = asprintf(&value, "%s", raw);
    FUZZ_CHECK(ok >= 0, "out of memory");

    if (how & 1) {
        /* --flag-name=value */
        char flag[128];
        size_t k = 0;
        for (const char *c = name; *c && k < sizeof flag - 1; c++)
            flag[k++] = *c == '_' ? '-' : (char)tolower((unsigned char)*c);
        flag[k] = '\0';
        ok = asprintf(&setting, "--%s=%s", flag, value);
        FUZZ_CHECK(ok >= 0, "out of memory");
        char *argv[] = { setting, NULL };
        char *envp[] = { no_dotenv, NULL };
        rc = chat_config_load(&cfg, 1, argv, envp, err, sizeof err);
    } else {
        ok = asprintf(&setting, "%s=%s", name, value);
        FUZZ_CHECK(ok >= 0, "out of memory");
        char *envp[] = { no_dotenv, setting, NULL };
        rc = chat_config_load(&cfg, 0, NULL, envp, err, sizeof err);
    }
    FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL, "rc %d", rc);
    if (rc != CHAT_OK)
        check_err(err, secret, url, raw);
    if (strcmp(name, "REDIS_URL") == 0 && *value)
        check_redis_url(value, url, raw);
    chat_config_free(&cfg);
    free(setting);
    free(value);
    free(text);
    return 0;
}
