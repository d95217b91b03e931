/*
 * config.c: loading and validating the server configuration.
 *
 * One static table, `settings`, lists every setting once: its NAME, where its
 * value lives in struct chat_config, its kind (string, URL, integer, duration,
 * size, enum), its default, its range, and its help text. Everything else is
 * driven by that table: the flag names (NAME lowercased, '_' -> '-'), the
 * .env and environment lookups, parsing and range checks, and --help.
 *
 * Loading happens in two phases. First the raw text of each setting is
 * collected from the four layers, each overriding the one below it:
 * built-in default < .env file < environment (the envp array, never getenv,
 * so tests control it) < flags. Only the winning text is kept, together with
 * where it came from, so that an error can say "(from ./.env line 3)".
 * Flags are scanned first (they choose the .env file) but applied last.
 * Second, every winning text is parsed into a scratch struct, then the
 * settings that depend on each other are cross-checked. Only when everything
 * is valid is the scratch struct handed to the caller, so a failed load
 * leaves the caller's struct zeroed.
 *
 * Unknown NAMEs in .env and the environment are ignored: those files and the
 * environment are shared with other tools. Unknown flags are errors.
 *
 * Secrets: the value of a setting whose NAME ends in _KEY, _TOKEN, _SECRET
 * or _PASSWORD is never copied into an error message, URLs are echoed with
 * their password replaced by "***", and .env syntax errors name only the
 * file and line, never the line's text.
 */
#define _GNU_SOURCE
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/netaddr.h"
#include "core/rate.h"

#define KIB ((int64_t)1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define SEC ((int64_t)1000)
#define MINUTE (60 * SEC)
#define HOUR (60 * MINUTE)

/* Longest duration we accept anywhere: a week. Keeps sums like
 * TURN_TIMEOUT + 60s far from overflow and catches unit mistakes
 * ("900000" meant as milliseconds is 10 days). */
#define DURATION_MAX (168 * HOUR)
/* A .env file is a handful of lines; anything bigger is a mistake. */
#define DOTENV_MAX_BYTES MIB
/* Longest value echoed in an error message, to keep errors on one line. */
#define ECHO_MAX 64
/* Help columns: flag and metavar, then NAME, then the default; the whole
 * stays within HELP_WIDTH. */
#define HELP_FLAG_WIDTH 36
#define HELP_NAME_WIDTH 28
#define HELP_WIDTH 100

enum kind {
    K_STR,          /* char *, any text */
    K_HTTP_URL,     /* char *, http:// or https://, trailing '/' removed */
    K_DB_URL,       /* char *, sqlite://, postgres:// or postgresql:// */
    K_INT,          /* int, in [min, max] */
    K_DURATION,     /* int64_t milliseconds, in [min, max] */
    K_SIZE,         /* size_t bytes, in [min, max] */
    K_CANCEL,       /* chat_cancel_policy: keep | drop */
    K_LOG_LEVEL,    /* chat_log_level: debug | info | warn | error */
    K_BOOL,         /* bool: on|off, true|false, yes|no, 1|0 */
    K_AUTH_MODE,    /* chat_auth_mode: none | token | keys (unset: derived from API_TOKEN) */
    K_DURATION_OFF, /* int64_t ms like K_DURATION, or "off" = 0 (for periods, never timeouts) */
    K_RATE,         /* char *, "off" or N/second|minute|hour (validated by core/rate.h's parser) */
    K_PROXIES,      /* char *, addresses and networks (validated as a core/netaddr.h network list) */
    K_HTTP_VERSION, /* chat_http_version: auto | 1.1 | 2 */
};

enum {
    F_EMPTY_OK = 1 << 0,      /* "" is a valid value (otherwise rejected) */
    F_HEADER_SAFE = 1 << 1,   /* goes into an HTTP header: no spaces or controls */
    F_NOT_IN_DOTENV = 1 << 2, /* ignored in .env (ENV_FILE cannot name itself) */
    F_MULTILINE = 1 << 3,     /* free text: newlines and tabs allowed */
};

struct setting {
    const char *name;    /* as in the environment, e.g. MAX_TOKENS */
    enum kind kind;      /* decides the field's C type and the parser */
    size_t offset;       /* of the field in struct chat_config */
    const char *def;     /* default text, parsed like any other value; NULL: computed */
    int64_t min, max;    /* range for K_INT, K_DURATION (ms), K_SIZE (bytes) */
    unsigned flags;      /* F_* */
    const char *group;   /* help heading; consecutive entries share one */
    const char *metavar; /* placeholder shown after the flag in help */
    const char *help;    /* one line, under 90 columns */
};

#define FIELD(f) offsetof(struct chat_config, f)

static const struct setting settings[] = {
    { "ANTHROPIC_API_KEY", K_STR, FIELD(anthropic_api_key), "", 0, 0, F_EMPTY_OK | F_HEADER_SAFE,
      "Provider (Anthropic Messages API)", "KEY",
      "API key sent as x-api-key; empty: the server starts, chat requests answer 503." },
    { "ANTHROPIC_BASE_URL", K_HTTP_URL, FIELD(anthropic_base_url), "https://api.anthropic.com", 0, 0, 0, NULL, "URL",
      "Base URL of the API, http:// or https:// (a trailing '/' is removed)." },
    { "ANTHROPIC_VERSION", K_STR, FIELD(anthropic_version), "2023-06-01", 0, 0, F_HEADER_SAFE, NULL, "TEXT",
      "Value of the anthropic-version request header." },
    { "CHAT_MODEL", K_STR, FIELD(chat_model), "claude-sonnet-4-6", 0, 0, 0, NULL, "MODEL",
      "Model used when a request names none (a name from the models table)." },
    { "PROMPT_CACHING", K_BOOL, FIELD(prompt_caching), "on", 0, 0, 0, NULL, "on|off",
      "Mark Anthropic prompt-cache breakpoints (system prompt, previous turn)." },
    { "OPENAI_API_KEY", K_STR, FIELD(openai_api_key), "", 0, 0, F_EMPTY_OK | F_HEADER_SAFE,
      "Provider (OpenAI-compatible Chat Completions)", "KEY",
      "Bearer key for the \"openai\" provider; empty: no Authorization header." },
    { "OPENAI_BASE_URL", K_HTTP_URL, FIELD(openai_base_url), "https://api.openai.com/v1", 0, 0, 0, NULL, "URL",
      "Base URL including /v1 (OpenAI, Groq, vLLM, Ollama, llama.cpp)." },
    { "MODELS_FILE", K_STR, FIELD(models_file), "", 0, 0, F_EMPTY_OK, NULL, "PATH",
      "JSON models table merged over the built-in one (models, prices, providers)." },
    { "MAX_TOKENS", K_INT, FIELD(max_tokens), "1024", 1, 1000000, 0, NULL, "N",
      "Upper bound on tokens generated per reply, 1..1000000." },
    { "DEFAULT_SYSTEM_PROMPT", K_STR, FIELD(default_system_prompt), "You are a helpful AI assistant.", 0, 0,
      F_EMPTY_OK | F_MULTILINE, NULL, "TEXT", "System prompt used when a request or session sets none." },

    { "HOST", K_STR, FIELD(host), "127.0.0.1", 0, 0, 0, "Listener and workers", "ADDR", "Address to listen on." },
    { "PORT", K_INT, FIELD(port), "8000", 0, 65535, 0, NULL, "N",
      "TCP port, 0..65535; 0 picks a free port and prints it at start." },
    { "WORKERS", K_INT, FIELD(workers), "0", 0, 256, 0, NULL, "N",
      "Worker threads (event loops), 0..256; 0 means one per CPU." },
    { "MAX_CONNECTIONS", K_INT, FIELD(max_connections), "0", 0, 10000000, 0, NULL, "N",
      "Open client connections, 0..10000000; more are answered 503. 0: from the fd limit." },

    { "DATABASE_URL", K_DB_URL, FIELD(database_url), "sqlite:///./data/chatd.db", 0, 0, 0, "Storage", "URL",
      "sqlite:///path/to/file.db or postgres://user:pass@host/db." },
    { "DATABASE_POOL_SIZE", K_INT, FIELD(database_pool_size), "8", 1, 1000, 0, NULL, "N",
      "PostgreSQL: connections per instance, shared out among the workers (at least one each)." },
    { "DATABASE_QUEUE_TIMEOUT", K_DURATION, FIELD(database_queue_timeout_ms), "2s", 1, DURATION_MAX, 0, NULL, "DUR",
      "PostgreSQL: longest wait for a free connection; then the request gets 503." },
    { "HISTORY_CACHE_SIZE", K_SIZE, FIELD(history_cache_bytes), "64MiB", 0, 64 * GIB, 0, NULL, "SIZE",
      "SQLite: recent sessions' newest messages kept in memory, 0..64GiB; 0 keeps none." },

    { "MAX_BODY_SIZE", K_SIZE, FIELD(max_body_bytes), "1MiB", KIB, GIB, 0, "HTTP limits", "SIZE",
      "Largest request body, 1KiB..1GiB." },
    { "MAX_HEADER_SIZE", K_SIZE, FIELD(max_header_bytes), "16KiB", KIB, MIB, 0, NULL, "SIZE",
      "Largest request head (request line and headers), 1KiB..1MiB." },
    { "MAX_MESSAGE_SIZE", K_SIZE, FIELD(max_message_bytes), "256KiB", 1, GIB, 0, NULL, "SIZE",
      "Largest single chat message, and joined system prompt of /v1/chat/completions, 1..1GiB." },
    { "MAX_IMAGE_SIZE", K_SIZE, FIELD(max_image_size), "5MiB", KIB, GIB, 0, NULL, "SIZE",
      "Largest image in a request, decoded bytes, 1KiB..1GiB (Anthropic's own limit is 5MiB)." },
    { "HEADER_TIMEOUT", K_DURATION, FIELD(header_timeout_ms), "10s", 1, DURATION_MAX, 0, NULL, "DUR",
      "A request (head and body) must arrive within this time." },
    { "IDLE_TIMEOUT", K_DURATION, FIELD(idle_timeout_ms), "60s", 1, DURATION_MAX, 0, NULL, "DUR",
      "Connection read/write idle timeout; must exceed HEARTBEAT_INTERVAL." },
    { "HEARTBEAT_INTERVAL", K_DURATION, FIELD(heartbeat_ms), "10s", 1, DURATION_MAX, 0, NULL, "DUR",
      "Send \": ping\" on a stream after this much provider silence." },
    { "STREAM_BUFFER_SIZE", K_SIZE, FIELD(stream_buffer_bytes), "64KiB", KIB, 256 * MIB, 0, NULL, "SIZE",
      "Client output queued before the provider transfer is paused, 1KiB..256MiB." },

    { "PROVIDER_CONNECT_TIMEOUT", K_DURATION, FIELD(provider_connect_timeout_ms), "10s", 1, DURATION_MAX, 0,
      "Provider deadlines and retries", "DUR", "Deadline for connecting to the provider (DNS, TCP, TLS)." },
    { "PROVIDER_FIRST_BYTE_TIMEOUT", K_DURATION, FIELD(provider_first_byte_timeout_ms), "600s", 1, DURATION_MAX, 0,
      NULL, "DUR", "Deadline for the first byte of the provider's response." },
    { "PROVIDER_IDLE_TIMEOUT", K_DURATION, FIELD(provider_idle_timeout_ms), "120s", 1, DURATION_MAX, 0, NULL, "DUR",
      "Longest silence allowed between two chunks of a provider stream." },
    { "TURN_TIMEOUT", K_DURATION, FIELD(turn_timeout_ms), "900s", 1, DURATION_MAX, 0, NULL, "DUR",
      "Deadline for a whole turn, retries included." },
    { "PROVIDER_MAX_RETRIES", K_INT, FIELD(provider_max_retries), "2", 0, 10, 0, NULL, "N",
      "Retries before the first byte reaches the client, 0..10." },
    { "PROVIDER_HTTP_VERSION", K_HTTP_VERSION, FIELD(provider_http_version), "auto", 0, 0, 0, NULL, "auto|1.1|2",
      "auto: HTTP/2 on https (ALPN), 1.1 on http; 2: also h2c on http; 1.1: never HTTP/2." },
    { "RETRY_MAX_WAIT", K_DURATION, FIELD(retry_max_wait_ms), "30s", 1, DURATION_MAX, 0, NULL, "DUR",
      "Cap on one wait between retries (also caps retry-after)." },

    { "CANCEL_POLICY", K_CANCEL, FIELD(cancel_policy), "keep", 0, 0, 0, "Turns", "keep|drop",
      "On client disconnect: keep the partial reply (incomplete) or drop it." },
    { "LOCK_TTL", K_DURATION, FIELD(lock_ttl_ms), NULL, 1, DURATION_MAX, 0, NULL, "DUR",
      "Expiry of a session's turn lock if its holder dies; must exceed TURN_TIMEOUT." },
    { "DRAIN_TIMEOUT", K_DURATION, FIELD(drain_timeout_ms), "30s", 1, DURATION_MAX, 0, NULL, "DUR",
      "On shutdown, how long running turns may take to finish." },
    { "DROP_UNSUPPORTED_PARAMS", K_BOOL, FIELD(drop_unsupported_params), "off", 0, 0, 0, NULL, "on|off",
      "on: leave out request options the model refuses (reported) instead of answering 400." },

    { "AUTH_MODE", K_AUTH_MODE, FIELD(auth_mode), NULL, 0, 0, 0, "Authentication", "none|token|keys",
      "Default: token when API_TOKEN is set, else none. keys: `chatd keys` API keys." },
    { "API_TOKEN", K_STR, FIELD(api_token), "", 0, 0, F_EMPTY_OK | F_HEADER_SAFE, NULL, "TOKEN",
      "Static bearer token (admin); with AUTH_MODE=keys it still works as admin." },
    { "ALLOW_UNAUTHENTICATED", K_BOOL, FIELD(allow_unauthenticated), "off", 0, 0, 0, NULL, "on|off",
      "With AUTH_MODE=none, allow listening on a non-loopback HOST anyway." },
    { "AUTH_FAILURE_LIMIT", K_RATE, FIELD(auth_failure_limit), "20/minute", 0, 0, 0, NULL, "N/unit|off",
      "Unknown API keys per client address; past it, key lookups get 429. off disables." },

    { "RATE_LIMIT", K_RATE, FIELD(rate_limit), "10/minute", 0, 0, 0, "Limits", "N/unit|off",
      "Chat requests per key (or client address), e.g. 10/minute; off disables." },
    { "TOKEN_LIMIT", K_RATE, FIELD(token_limit), "off", 0, 0, 0, NULL, "N/unit|off",
      "Provider tokens per key (or client address), e.g. 100000/minute." },
    { "REDIS_URL", K_STR, FIELD(redis_url), "", 0, 0, F_EMPTY_OK, NULL, "URL",
      "redis://[user:pass@]host[:port][/db]: limits shared by all instances; empty: local." },
    { "RATE_LIMIT_MAX_BUCKETS", K_INT, FIELD(rate_limit_max_buckets), "100000", 1, 100000000, 0, NULL, "N",
      "Bound on the limiter's memory: idle buckets are evicted beyond this." },
    { "TRUSTED_PROXIES", K_PROXIES, FIELD(trusted_proxies), "", 0, 0, F_EMPTY_OK, NULL, "ADDRS",
      "Comma-separated proxy addresses or networks (10.0.0.0/8) whose X-Forwarded-For is believed." },
    { "RATE_LIMIT_IPV6_PREFIX", K_INT, FIELD(rate_limit_ipv6_prefix), "64", 1, 128, 0, NULL, "BITS",
      "IPv6 clients share one bucket per network of this many bits, 1..128." },
    { "CORS_ORIGINS", K_STR, FIELD(cors_origins), "", 0, 0, F_EMPTY_OK, NULL, "ORIGINS",
      "Comma-separated allowed origins (https://app.example.com) or *; empty: CORS off." },
    { "CORS_CREDENTIALS", K_BOOL, FIELD(cors_credentials), "off", 0, 0, 0, NULL, "on|off",
      "Allow credentialed CORS requests (only with explicit origins)." },
    { "MAX_SESSIONS_PER_KEY", K_INT, FIELD(max_sessions_per_key), "0", 0, 100000000, 0, NULL, "N",
      "Cap on the sessions one API key may own (AUTH_MODE=keys); 0: no cap." },
    { "SESSION_TTL", K_DURATION_OFF, FIELD(session_ttl_ms), "off", 1, DURATION_MAX, 0, NULL, "DUR|off",
      "Delete sessions idle longer than this (periodic sweeper); off keeps them." },

    { "LOG_LEVEL", K_LOG_LEVEL, FIELD(log_level), "info", 0, 0, 0, "Logging", "LEVEL", "debug, info, warn or error." },

    { "ENV_FILE", K_STR, FIELD(env_file), ".env", 0, 0, F_NOT_IN_DOTENV, "Configuration", "PATH",
      "The .env file to read; must exist when given, the default is optional." },
};

#define N_SETTINGS (sizeof settings / sizeof settings[0])

/* The default LOCK_TTL is computed: a lock must outlive the longest turn. */
#define LOCK_TTL_MARGIN_MS (60 * SEC)
#define LOCK_TTL_DEFAULT_HELP "TURN_TIMEOUT+60s"

enum source { SRC_DEFAULT = 0, SRC_DOTENV, SRC_ENV, SRC_FLAG };

/* The winning raw text of one setting and where it came from. */
struct raw {
    char *value;     /* owned; NULL: not set by any layer (default applies) */
    enum source src; /* SRC_DEFAULT when value is NULL */
    int line;        /* .env line number for SRC_DOTENV */
};

/* State of one load; freed as a whole at the end. */
struct loader {
    struct raw flags[N_SETTINGS]; /* scanned first, applied last */
    struct raw vals[N_SETTINGS];  /* the merged layers */
    char *dotenv_path;            /* the .env file actually read, or NULL */
    char *err;
    size_t errlen;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static void set_err(struct loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message is one printable ASCII line whatever it quotes (a flag name, a
 * .env path or line, a reason from another parser): control characters, DEL
 * and non-ASCII bytes become \xHH, and an escape is never cut in half. */
static void set_err(struct loader *ld, const char *fmt, ...)
{
    if (!ld->err || ld->errlen == 0)
        return;
    char raw[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t j = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        bool plain = *p >= 0x20 && *p < 0x7f;
        if (j + (plain ? 1 : 4) >= ld->errlen)
            break;
        if (plain)
            ld->err[j++] = (char)*p;
        else
            j += (size_t)snprintf(ld->err + j, ld->errlen - j, "\\x%02x", *p);
    }
    ld->err[j] = '\0';
}

static void raw_set(struct raw *r, const char *value, size_t len, enum source src, int line)
{
    free(r->value);
    r->value = chat_xstrndup(value, len);
    r->src = src;
    r->line = line;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A secret's value must never be echoed, whatever the message. Decided by
 * name so that settings added later are covered without anyone remembering. */
static bool is_secret(const struct setting *s)
{
    return ends_with(s->name, "_KEY") || ends_with(s->name, "_TOKEN") || ends_with(s->name, "_SECRET") ||
           ends_with(s->name, "_PASSWORD");
}

/* Writes the flag spelling of NAME ("--max-tokens") into buf. */
static void flag_name(const struct setting *s, char *buf, size_t buflen)
{
    size_t j = 0;
    if (buflen < 3) {
        if (buflen)
            buf[0] = '\0';
        return;
    }
    buf[j++] = '-';
    buf[j++] = '-';
    for (const char *p = s->name; *p && j + 1 < buflen; p++)
        buf[j++] = *p == '_' ? '-' : (char)tolower((unsigned char)*p);
    buf[j] = '\0';
}

/* Does the flag text (without "--", len bytes) spell this setting's NAME? */
static bool flag_matches(const struct setting *s, const char *text, size_t len)
{
    if (strlen(s->name) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char want = s->name[i] == '_' ? '-' : (char)tolower((unsigned char)s->name[i]);
        if (text[i] != want)
            return false;
    }
    return true;
}

static int find_by_name(const char *name, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strlen(settings[i].name) == len && memcmp(settings[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static int find_by_flag(const char *text, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (flag_matches(&settings[i], text, len))
            return (int)i;
    return -1;
}

/* "(from environment)", "(from ./.env line 3)", "(from flag --port)". */
static void describe_source(const struct loader *ld, size_t idx, char *buf, size_t buflen)
{
    const struct raw *r = &ld->vals[idx];
    char flag[64];
    switch (r->src) {
    case SRC_DOTENV:
        snprintf(buf, buflen, "from %s line %d", ld->dotenv_path ? ld->dotenv_path : ".env", r->line);
        break;
    case SRC_ENV: snprintf(buf, buflen, "from environment"); break;
    case SRC_FLAG:
        flag_name(&settings[idx], flag, sizeof flag);
        snprintf(buf, buflen, "from flag %s", flag);
        break;
    case SRC_DEFAULT:
    default: snprintf(buf, buflen, "default"); break;
    }
}

/*
 * Copies value into buf for an error message: control characters and
 * non-ASCII bytes as \xNN (the message stays one printable line), at most
 * ECHO_MAX input bytes, and for URLs the password of user:password@ replaced
 * by "***" and any query cut off (a DATABASE_URL may well carry a password).
 */
static void echo_value(const char *value, bool is_url, char *buf, size_t buflen)
{
    const char *pw_start = NULL, *pw_end = NULL;
    if (is_url) {
        const char *scheme = strstr(value, "://");
        if (scheme) {
            const char *auth = scheme + 3;
            size_t auth_len = strcspn(auth, "/?#");
            const char *at = memrchr(auth, '@', auth_len);
            const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
            if (colon) {
                pw_start = colon + 1;
                pw_end = at;
            }
        }
    }
    size_t j = 0, n = 0;
    for (const char *p = value; *p && j + 8 < buflen; p++, n++) {
        if (n >= ECHO_MAX) {
            j += (size_t)snprintf(buf + j, buflen - j, "...");
            break;
        }
        if (pw_start && p == pw_start) {
            j += (size_t)snprintf(buf + j, buflen - j, "***");
            p = pw_end - 1;
            pw_start = NULL; /* once: an empty password would loop otherwise */
            continue;
        }
        if (is_url && *p == '?') {
            /* Query parameters may carry credentials too (libpq's ?password=). */
            j += (size_t)snprintf(buf + j, buflen - j, "?...");
            break;
        }
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c >= 0x7f)
            j += (size_t)snprintf(buf + j, buflen - j, "\\x%02x", c);
        else if (c == '"' || c == '\\')
            j += (size_t)snprintf(buf + j, buflen - j, "\\%c", c);
        else
            buf[j++] = (char)c;
    }
    if (j < buflen)
        buf[j] = '\0';
    else if (buflen)
        buf[buflen - 1] = '\0';
}

/* One error line: `invalid NAME "value" (from SRC): reason`, the value left
 * out for secrets. */
static void value_error(struct loader *ld, size_t idx, const char *value, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void value_error(struct loader *ld, size_t idx, const char *value, const char *fmt, ...)
{
    const struct setting *s = &settings[idx];
    char src[512], echo[ECHO_MAX * 4 + 16], reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    describe_source(ld, idx, src, sizeof src);
    if (is_secret(s)) {
        set_err(ld, "invalid %s (%s; value not shown): %s", s->name, src, reason);
    } else {
        /* Any *_URL by name, not only the kinds parsed as URLs here: REDIS_URL
         * (a plain string to this file) carries a password just as well. */
        echo_value(value, s->kind == K_HTTP_URL || s->kind == K_DB_URL || ends_with(s->name, "_URL"), echo,
                   sizeof echo);
        set_err(ld, "invalid %s \"%s\" (%s): %s", s->name, echo, src, reason);
    }
}

/* Human form of a duration for messages and help: "168h", "10s", "250ms". */
static void format_duration(int64_t ms, char *buf, size_t buflen)
{
    if (ms != 0 && ms % HOUR == 0)
        snprintf(buf, buflen, "%" PRId64 "h", ms / HOUR);
    else if (ms != 0 && ms % MINUTE == 0)
        snprintf(buf, buflen, "%" PRId64 "m", ms / MINUTE);
    else if (ms != 0 && ms % SEC == 0)
        snprintf(buf, buflen, "%" PRId64 "s", ms / SEC);
    else
        snprintf(buf, buflen, "%" PRId64 "ms", ms);
}

static void format_size(int64_t bytes, char *buf, size_t buflen)
{
    if (bytes != 0 && bytes % GIB == 0)
        snprintf(buf, buflen, "%" PRId64 "GiB", bytes / GIB);
    else if (bytes != 0 && bytes % MIB == 0)
        snprintf(buf, buflen, "%" PRId64 "MiB", bytes / MIB);
    else if (bytes != 0 && bytes % KIB == 0)
        snprintf(buf, buflen, "%" PRId64 "KiB", bytes / KIB);
    else
        snprintf(buf, buflen, "%" PRId64, bytes);
}

/* ------------------------------------------------------------------ */
/* Value parsers: strict, whole string, no overflow. Each returns false
 * on any junk; the caller words the message.                          */

/* Unsigned decimal digits only (no sign, no spaces); *end is set to the
 * first non-digit. False on no digits or on overflow of int64_t. */
static bool parse_digits(const char *s, int64_t *out, const char **end)
{
    int64_t v = 0;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return false;
    for (; isdigit((unsigned char)*p); p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    *end = p;
    return true;
}

static bool parse_int(const char *s, int64_t *out)
{
    bool neg = *s == '-';
    const char *end;
    int64_t v;
    if (!parse_digits(neg ? s + 1 : s, &v, &end) || *end)
        return false;
    *out = neg ? -v : v;
    return true;
}

/* Multiplies v by a unit factor; false on overflow. */
static bool scale(int64_t v, int64_t unit, int64_t *out)
{
    return !__builtin_mul_overflow(v, unit, out);
}

/* "250ms", "10s", "5m", "1h" (units case-insensitive) or plain seconds. */
static bool parse_duration(const char *s, int64_t *out_ms)
{
    static const struct {
        const char *suffix;
        int64_t ms;
    } units[] = { { "", SEC }, { "ms", 1 }, { "s", SEC }, { "m", MINUTE }, { "h", HOUR } };
    const char *end;
    int64_t v;
    if (!parse_digits(s, &v, &end))
        return false;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(end, units[i].suffix) == 0)
            return scale(v, units[i].ms, out_ms);
    return false;
}

/* "512", "64k", "64KiB", "1m", "1MiB", "1g", "1GiB" (case-insensitive;
 * all binary multiples). "kb"/"mb" are refused: they are ambiguous. */
static bool parse_size(const char *s, int64_t *out)
{
    static const struct {
        const char *suffix;
        int64_t bytes;
    } units[] = { { "", 1 },    { "b", 1 },     { "k", KIB }, { "kib", KIB },
                  { "m", MIB }, { "mib", MIB }, { "g", GIB }, { "gib", GIB } };
    const char *end;
    int64_t v;
    if (!parse_digits(s, &v, &end))
        return false;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(end, units[i].suffix) == 0)
            return scale(v, units[i].bytes, out);
    return false;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* True if s has a byte we refuse: control characters and DEL (a value with
 * an escaped newline is almost always a mistake, and in a header it would be
 * an injection), except newline, CR and tab in free text; and spaces in
 * header values and URLs. */
static bool has_bad_bytes(const char *s, bool allow_space, bool multiline)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (multiline && (*p == '\n' || *p == '\r' || *p == '\t'))
            continue;
        if (*p < 0x20 || *p == 0x7f || (!allow_space && *p == ' '))
            return true;
    }
    return false;
}

/*
 * Parses one setting's text into its field of cfg. On failure writes the
 * error (through value_error) and returns false. Strings are stored as
 * copies; the caller frees cfg on failure.
 */
static bool parse_setting(struct loader *ld, size_t idx, const char *value, struct chat_config *cfg)
{
    const struct setting *s = &settings[idx];
    char *field = (char *)cfg + s->offset;
    char lo[32], hi[32];
    int64_t v;

    if (*value == '\0' && !(s->flags & F_EMPTY_OK)) {
        value_error(ld, idx, value, "must not be empty");
        return false;
    }

    switch (s->kind) {
    case K_STR:
        if (has_bad_bytes(value, !(s->flags & F_HEADER_SAFE), s->flags & F_MULTILINE)) {
            value_error(ld, idx, value, "%s",
                        s->flags & F_HEADER_SAFE ? "must not contain spaces or control characters"
                                                 : "must not contain control characters");
            return false;
        }
        *(char **)field = chat_xstrdup(value);
        return true;

    case K_HTTP_URL: {
        const char *rest = has_prefix(value, "https://") ? value + 8 : has_prefix(value, "http://") ? value + 7 : NULL;
        if (!rest) {
            value_error(ld, idx, value, "expected a URL starting with http:// or https://");
            return false;
        }
        if (*rest == '\0' || *rest == '/' || has_bad_bytes(value, false, false)) {
            value_error(ld, idx, value, "expected a URL with a host and no spaces or control characters");
            return false;
        }
        /* Paths are appended as "/v1/messages": drop trailing slashes so the
         * result never has "//". */
        size_t len = strlen(value);
        while (len > 0 && value[len - 1] == '/')
            len--;
        *(char **)field = chat_xstrndup(value, len);
        return true;
    }

    case K_DB_URL: {
        const char *rest = has_prefix(value, "sqlite://")       ? value + 9
                           : has_prefix(value, "postgres://")   ? value + 11
                           : has_prefix(value, "postgresql://") ? value + 13
                                                                : NULL;
        if (!rest) {
            value_error(ld, idx, value, "expected a URL starting with sqlite://, postgres:// or postgresql://");
            return false;
        }
        if (*rest == '\0' || has_bad_bytes(value, false, false)) {
            value_error(ld, idx, value,
                        "expected a path or host after the scheme, without spaces or control "
                        "characters (e.g. sqlite:///./data/chatd.db)");
            return false;
        }
        *(char **)field = chat_xstrdup(value);
        return true;
    }

    case K_INT:
        if (!parse_int(value, &v) || v < s->min || v > s->max) {
            value_error(ld, idx, value, "expected an integer %" PRId64 "..%" PRId64, s->min, s->max);
            return false;
        }
        *(int *)field = (int)v;
        return true;

    case K_DURATION_OFF:
        if (strcasecmp(value, "off") == 0) {
            *(int64_t *)field = 0;
            return true;
        }
        /* fall through */
    case K_DURATION:
        format_duration(s->min, lo, sizeof lo);
        format_duration(s->max, hi, sizeof hi);
        if (!parse_duration(value, &v)) {
            value_error(ld, idx, value,
                        "expected a duration %s..%s such as 250ms, 10s, 5m, 1h (a plain number is seconds)", lo, hi);
            return false;
        }
        if (v == 0) {
            value_error(ld, idx, value, "must be above 0: timeouts cannot be disabled (%s..%s)", lo, hi);
            return false;
        }
        if (v < s->min || v > s->max) {
            value_error(ld, idx, value, "out of range: expected a duration %s..%s", lo, hi);
            return false;
        }
        *(int64_t *)field = v;
        return true;

    case K_SIZE:
        format_size(s->min, lo, sizeof lo);
        format_size(s->max, hi, sizeof hi);
        if (!parse_size(value, &v) || v < s->min || v > s->max) {
            value_error(ld, idx, value, "expected a size %s..%s such as 512, 64k, 64KiB, 1m, 1MiB", lo, hi);
            return false;
        }
        *(size_t *)field = (size_t)v;
        return true;

    case K_CANCEL:
        if (strcasecmp(value, "keep") == 0) {
            *(chat_cancel_policy *)field = CANCEL_KEEP_PARTIAL;
        } else if (strcasecmp(value, "drop") == 0) {
            *(chat_cancel_policy *)field = CANCEL_DROP;
        } else {
            value_error(ld, idx, value, "expected keep or drop");
            return false;
        }
        return true;

    case K_HTTP_VERSION:
        if (strcasecmp(value, "auto") == 0) {
            *(chat_http_version *)field = CHAT_HTTP_AUTO;
        } else if (strcmp(value, "1.1") == 0) {
            *(chat_http_version *)field = CHAT_HTTP_1_1;
        } else if (strcmp(value, "2") == 0) {
            *(chat_http_version *)field = CHAT_HTTP_2;
        } else {
            value_error(ld, idx, value, "expected auto, 1.1 or 2");
            return false;
        }
        return true;

    case K_BOOL: {
        static const char *const yes[] = { "on", "true", "yes", "1" }, *const no[] = { "off", "false", "no", "0" };
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(value, yes[i]) == 0) {
                *(bool *)field = true;
                return true;
            }
            if (strcasecmp(value, no[i]) == 0) {
                *(bool *)field = false;
                return true;
            }
        }
        value_error(ld, idx, value, "expected on or off");
        return false;
    }

    case K_RATE: {
        chat_rate rate;
        char why[160];
        if (chat_rate_parse(value, &rate, why, sizeof why) != CHAT_OK) {
            value_error(ld, idx, value, "%s", why);
            return false;
        }
        *(char **)field = chat_xstrdup(value);
        return true;
    }

    case K_PROXIES: {
        chat_netlist *t = NULL;
        char why[200];
        if (chat_netlist_parse(value, &t, why, sizeof why) != CHAT_OK) {
            value_error(ld, idx, value, "%s", why);
            return false;
        }
        chat_netlist_free(t);
        *(char **)field = chat_xstrdup(value);
        return true;
    }

    case K_AUTH_MODE: {
        static const struct {
            const char *name;
            chat_auth_mode mode;
        } modes[] = { { "none", AUTH_MODE_NONE }, { "token", AUTH_MODE_TOKEN }, { "keys", AUTH_MODE_KEYS } };
        for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
            if (strcasecmp(value, modes[i].name) == 0) {
                *(chat_auth_mode *)field = modes[i].mode;
                return true;
            }
        }
        value_error(ld, idx, value, "expected none, token or keys");
        return false;
    }

    case K_LOG_LEVEL: {
        static const struct {
            const char *name;
            chat_log_level level;
        } levels[] = { { "debug", LOG_DEBUG }, { "info", LOG_INFO }, { "warn", LOG_WARN }, { "error", LOG_ERROR } };
        for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
            if (strcasecmp(value, levels[i].name) == 0) {
                *(chat_log_level *)field = levels[i].level;
                return true;
            }
        }
        value_error(ld, idx, value, "expected debug, info, warn or error");
        return false;
    }
    }
    value_error(ld, idx, value, "internal error: unknown kind");
    return false;
}

/* ------------------------------------------------------------------ */
/* Layers                                                              */

/* Scans argv into ld->flags. Errors: positional arguments, unknown flags,
 * missing values. */
static bool scan_flags(struct loader *ld, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!arg || strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            /* Not echoed: a stray word after a flag might be a secret. */
            set_err(ld, "unexpected argument #%d: expected flags --name value or --name=value (see --help)", i + 1);
            return false;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        int idx = find_by_flag(name, name_len);
        if (idx < 0) {
            set_err(ld, "unknown flag --%.*s (see --help)", (int)(name_len > 64 ? 64 : name_len), name);
            return false;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc && argv[i + 1] && strncmp(argv[i + 1], "--", 2) != 0) {
            value = argv[++i];
        } else {
            /* A following "--flag" is almost surely a forgotten value, not a
             * value that happens to start with "--"; that one needs '='. */
            set_err(ld, "missing value for --%.*s (use --%.*s=VALUE for a value starting with --)", (int)name_len, name,
                    (int)name_len, name);
            return false;
        }
        raw_set(&ld->flags[idx], value, strlen(value), SRC_FLAG, 0);
    }
    return true;
}

/* Applies the environment: known NAMEs only, first occurrence wins, as
 * getenv would see it. */
static void apply_env(struct loader *ld, char **envp)
{
    bool seen[N_SETTINGS] = { false };
    for (char **e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        int idx = find_by_name(*e, (size_t)(eq - *e));
        if (idx < 0 || seen[idx])
            continue;
        seen[idx] = true;
        raw_set(&ld->vals[idx], eq + 1, strlen(eq + 1), SRC_ENV, 0);
    }
}

static const char *skip_blank(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

static bool is_name_start(char c)
{
    return isalpha((unsigned char)c) || c == '_';
}

static bool is_name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/*
 * Parses one .env line (NUL-terminated, without its newline). On success
 * sets *name and *name_len (NULL for a blank or comment line) and *value (a new
 * string). On failure returns the reason, which never quotes the line.
 */
static const char *parse_dotenv_line(const char *line, const char **name, size_t *name_len, char **value)
{
    const char *p = skip_blank(line);
    *name = NULL;
    *value = NULL;
    if (*p == '\0' || *p == '#')
        return NULL;
    if (strncmp(p, "export", 6) == 0 && (p[6] == ' ' || p[6] == '\t'))
        p = skip_blank(p + 6);
    if (!is_name_start(*p))
        return "expected NAME=value";
    const char *n = p;
    while (is_name_char(*p))
        p++;
    size_t nlen = (size_t)(p - n);
    p = skip_blank(p);
    if (*p != '=')
        return "expected NAME=value";
    p = skip_blank(p + 1);

    char *out = chat_xmalloc(strlen(p) + 1);
    size_t j = 0;
    if (*p == '\'') {
        /* Single quotes: literal, no escapes. */
        const char *close = strchr(p + 1, '\'');
        if (!close) {
            free(out);
            return "unterminated single-quoted value";
        }
        j = (size_t)(close - (p + 1));
        memcpy(out, p + 1, j);
        p = close + 1;
    } else if (*p == '"') {
        /* Double quotes: \n \r \t \" \\ are escapes; any other backslash is
         * kept as written (these files are shared with other dotenv tools). */
        for (p++;; p++) {
            if (*p == '\0') {
                free(out);
                return "unterminated double-quoted value";
            }
            if (*p == '"')
                break;
            if (*p == '\\' && p[1] != '\0') {
                switch (p[1]) {
                case 'n':
                    out[j++] = '\n';
                    p++;
                    continue;
                case 'r':
                    out[j++] = '\r';
                    p++;
                    continue;
                case 't':
                    out[j++] = '\t';
                    p++;
                    continue;
                case '"':
                    out[j++] = '"';
                    p++;
                    continue;
                case '\\':
                    out[j++] = '\\';
                    p++;
                    continue;
                default: break;
                }
            }
            out[j++] = *p;
        }
        p++;
    } else {
        /* Unquoted: ends at a '#' preceded by a blank; trailing blanks cut. */
        const char *start = p;
        for (; *p; p++)
            if (*p == '#' && p > start && (p[-1] == ' ' || p[-1] == '\t'))
                break;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        j = (size_t)(end - start);
        memcpy(out, start, j);
        p = "";
    }
    out[j] = '\0';
    p = skip_blank(p);
    if (*p != '\0' && *p != '#') {
        free(out);
        return "unexpected text after the closing quote";
    }
    *name = n;
    *name_len = nlen;
    *value = out;
    return NULL;
}

/*
 * Reads the .env file at path into ld->vals. required: a missing file is an
 * error (it was named explicitly); otherwise a missing file is skipped. Any
 * other failure to read is an error either way: silently ignoring a file
 * that exists would start the server with settings nobody chose.
 */
static bool apply_dotenv(struct loader *ld, const char *path, bool required, const char *named_by)
{
    bool ok = false;
    char *buf = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!required && errno == ENOENT)
            return true;
        set_err(ld, "cannot read .env file %s (%s): %s", path, named_by, strerror(errno));
        return false;
    }
    buf = chat_xmalloc(DOTENV_MAX_BYTES + 1);
    size_t n = fread(buf, 1, DOTENV_MAX_BYTES + 1, f);
    if (ferror(f)) {
        set_err(ld, "cannot read .env file %s (%s): %s", path, named_by, strerror(errno));
        goto out;
    }
    if (n > DOTENV_MAX_BYTES) {
        set_err(ld, "cannot read .env file %s (%s): larger than %d bytes", path, named_by, (int)DOTENV_MAX_BYTES);
        goto out;
    }
    buf[n] = '\0';
    free(ld->dotenv_path);
    ld->dotenv_path = chat_xstrdup(path);

    int lineno = 0;
    char *line = buf;
    while (line < buf + n) {
        char *nl = memchr(line, '\n', (size_t)(buf + n - line));
        char *line_end = nl ? nl : buf + n;
        lineno++;
        if (memchr(line, '\0', (size_t)(line_end - line))) {
            set_err(ld, "%s line %d: contains a NUL byte", path, lineno);
            goto out;
        }
        *line_end = '\0';
        if (line_end > line && line_end[-1] == '\r') /* CRLF files */
            line_end[-1] = '\0';

        const char *name;
        size_t name_len;
        char *value;
        const char *why = parse_dotenv_line(line, &name, &name_len, &value);
        if (why) {
            set_err(ld, "%s line %d: %s", path, lineno, why);
            goto out;
        }
        if (name) {
            int idx = find_by_name(name, name_len);
            if (idx >= 0 && !(settings[idx].flags & F_NOT_IN_DOTENV))
                raw_set(&ld->vals[idx], value, strlen(value), SRC_DOTENV, lineno);
            free(value);
        }
        line = line_end + 1;
    }
    ok = true;
out:
    free(buf);
    fclose(f);
    return ok;
}

/* ------------------------------------------------------------------ */
/* Cross-checks between settings                                       */

static bool cross_check(struct loader *ld, struct chat_config *cfg)
{
    int lock = find_by_name("LOCK_TTL", 8);
    int turn = find_by_name("TURN_TIMEOUT", 12);
    int hb = find_by_name("HEARTBEAT_INTERVAL", 18);
    int idle = find_by_name("IDLE_TIMEOUT", 12);
    int auth = find_by_name("AUTH_MODE", 9);
    char a[32], b[32], src[512];

    bool has_token = cfg->api_token && *cfg->api_token;
    if (!ld->vals[auth].value) {
        /* Unset: an API_TOKEN alone means it is to be required. */
        cfg->auth_mode = has_token ? AUTH_MODE_TOKEN : AUTH_MODE_NONE;
    } else if (cfg->auth_mode == AUTH_MODE_TOKEN && !has_token) {
        set_err(ld, "AUTH_MODE=token needs API_TOKEN to be set");
        return false;
    }
    if (!ld->vals[lock].value) {
        cfg->lock_ttl_ms = cfg->turn_timeout_ms + LOCK_TTL_MARGIN_MS;
    } else if (cfg->lock_ttl_ms <= cfg->turn_timeout_ms) {
        /* A lock that can expire while its turn still runs lets a second
         * turn start on the same session. */
        format_duration(cfg->turn_timeout_ms, a, sizeof a);
        describe_source(ld, (size_t)turn, src, sizeof src);
        value_error(ld, (size_t)lock, ld->vals[lock].value,
                    "must be above TURN_TIMEOUT (%s, %s), or a lock could expire while its turn is "
                    "still running",
                    a, src);
        return false;
    }

    if (cfg->heartbeat_ms >= cfg->idle_timeout_ms) {
        format_duration(cfg->idle_timeout_ms, b, sizeof b);
        describe_source(ld, (size_t)idle, src, sizeof src);
        format_duration(cfg->heartbeat_ms, a, sizeof a);
        value_error(ld, (size_t)hb, ld->vals[hb].value ? ld->vals[hb].value : a,
                    "must be below IDLE_TIMEOUT (%s, %s), otherwise a silent stream would be cut by "
                    "the idle timeout before the next heartbeat",
                    b, src);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */

static void loader_free(struct loader *ld)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        free(ld->flags[i].value);
        free(ld->vals[i].value);
    }
    free(ld->dotenv_path);
}

chat_rc chat_config_load(struct chat_config *cfg, int argc, char **argv, char **envp, char *err, size_t errlen)
{
    chat_rc rc = CHAT_EINVAL;
    struct loader ld = { .err = err, .errlen = errlen };
    struct chat_config tmp = { 0 };
    int env_file = find_by_name("ENV_FILE", 8);

    memset(cfg, 0, sizeof *cfg);
    if (err && errlen)
        err[0] = '\0';

    if (!scan_flags(&ld, argc, argv))
        goto out;

    /* The .env file: named by flag, else by the environment, else the
     * optional default. Its own layer cannot name it. */
    {
        const char *path = settings[env_file].def;
        const char *named_by = "default";
        bool required = false;
        if (ld.flags[env_file].value) {
            path = ld.flags[env_file].value;
            named_by = "from flag --env-file";
            required = true;
        } else {
            for (char **e = envp; e && *e; e++) {
                if (strncmp(*e, "ENV_FILE=", 9) == 0) {
                    path = *e + 9;
                    named_by = "from environment ENV_FILE";
                    required = true;
                    break;
                }
            }
        }
        if (*path == '\0') {
            set_err(&ld, "invalid ENV_FILE \"\" (%s): must not be empty (use /dev/null to read no file)", named_by);
            goto out;
        }
        if (!apply_dotenv(&ld, path, required, named_by))
            goto out;
    }

    apply_env(&ld, envp);

    for (size_t i = 0; i < N_SETTINGS; i++) {
        if (ld.flags[i].value) {
            free(ld.vals[i].value);
            ld.vals[i] = ld.flags[i];
            ld.flags[i].value = NULL;
        }
    }

    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *value = ld.vals[i].value ? ld.vals[i].value : settings[i].def;
        if (!value)
            continue; /* computed in cross_check */
        if (!parse_setting(&ld, i, value, &tmp))
            goto out;
    }
    if (!cross_check(&ld, &tmp))
        goto out;

    *cfg = tmp;
    memset(&tmp, 0, sizeof tmp);
    rc = CHAT_OK;
out:
    chat_config_free(&tmp);
    loader_free(&ld);
    return rc;
}

void chat_config_free(struct chat_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        switch (settings[i].kind) {
        case K_STR:
        case K_HTTP_URL:
        case K_DB_URL:
        case K_RATE:
        case K_PROXIES: free(*(char **)((char *)cfg + settings[i].offset)); break;
        default: break;
        }
    }
    memset(cfg, 0, sizeof *cfg);
}

/*
 * Help layout, per setting, grouped under headings (fits 100 columns):
 *   --flag METAVAR                       NAME                         default D
 *       Description.
 * A default too long for the first line goes on a line of its own.
 */
void chat_config_print_help(FILE *out)
{
    const char *group = NULL;
    fprintf(out, "Settings (defaults < .env file < environment < flags; "
                 "--name VALUE or --name=VALUE):\n");
    fprintf(out, "  Durations: 250ms, 10s, 5m, 1h, or plain seconds. "
                 "Sizes: 512, 64k, 64KiB, 1m, 1MiB.\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &settings[i];
        char flag[64], lhs[96], def[128];
        if (s->group && s->group != group) {
            group = s->group;
            fprintf(out, "\n%s\n", group);
        }
        flag_name(s, flag, sizeof flag);
        snprintf(lhs, sizeof lhs, "  %s %s", flag, s->metavar);
        if (!s->def)
            snprintf(def, sizeof def, "%s", strcmp(s->name, "LOCK_TTL") == 0 ? LOCK_TTL_DEFAULT_HELP : "(derived)");
        else if (*s->def == '\0')
            snprintf(def, sizeof def, "(empty)");
        else if (strchr(s->def, ' '))
            snprintf(def, sizeof def, "\"%s\"", s->def);
        else
            snprintf(def, sizeof def, "%s", s->def);

        if (HELP_FLAG_WIDTH + 1 + HELP_NAME_WIDTH + strlen("default ") + strlen(def) <= HELP_WIDTH)
            fprintf(out, "%-*s %-*s default %s\n      %s\n", HELP_FLAG_WIDTH, lhs, HELP_NAME_WIDTH, s->name, def,
                    s->help);
        else
            fprintf(out, "%-*s %s\n      %s\n      Default: %s\n", HELP_FLAG_WIDTH, lhs, s->name, s->help, def);
    }
}
