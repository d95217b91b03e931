/*
 * config.h: the server's configuration, filled once at start, then read-only.
 *
 * Precedence, lowest to highest: built-in defaults < the .env file < the process
 * environment < command-line flags. Every setting has one NAME (as in the
 * environment and .env, e.g. MAX_TOKENS) and one flag (--max-tokens VALUE or
 * --max-tokens=VALUE: the name lowercased, '_' -> '-'). The table of settings in
 * config.c is the single source for parsing, defaults and `chatd --help`.
 *
 * Values are validated: a bad value (not a number, out of range, unknown enum,
 * malformed URL) is a start-up error naming the setting and the source it came
 * from, never a default silently used. Durations accept "250ms", "10s", "5m",
 * "1h", or a plain number of seconds, and must lie in 1ms..168h (no timeout can
 * be disabled with 0). Sizes accept "512", "64k"/"64KiB", "1m"/"1MiB",
 * "1g"/"1GiB" (case-insensitive, binary multiples). Cross-checks: LOCK_TTL must
 * exceed TURN_TIMEOUT, HEARTBEAT_INTERVAL must be below IDLE_TIMEOUT. The value
 * of a *_KEY / *_TOKEN setting never appears in an error message; URLs are
 * echoed with their password masked.
 *
 * .env syntax: `NAME=value` or `export NAME=value`; blank and `#` lines;
 * 'single-quoted' (literal) or "double-quoted" (\n \r \t \" \\ escapes) values;
 * unquoted values are trimmed and end at " #". Unknown NAMEs in .env and the
 * environment are ignored (other tools share them); unknown flags are errors.
 *
 * Thread: load on the main thread before starting workers; afterwards every
 * thread may read the struct concurrently (it never changes).
 */
#ifndef CHATD_CORE_CONFIG_H
#define CHATD_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/log.h"
#include "core/rc.h"

typedef enum { CANCEL_KEEP_PARTIAL = 0, CANCEL_DROP } chat_cancel_policy;

/* PROVIDER_HTTP_VERSION (llm/transport.h llm_http_version says what each means). */
typedef enum { CHAT_HTTP_AUTO = 0, CHAT_HTTP_1_1, CHAT_HTTP_2 } chat_http_version;

/* AUTH_MODE (guard/auth.h says what each mode means). */
typedef enum { AUTH_MODE_NONE = 0, AUTH_MODE_TOKEN, AUTH_MODE_KEYS } chat_auth_mode;

struct chat_config {
    /* provider */
    char *anthropic_api_key;     /* ANTHROPIC_API_KEY, "" = not configured (chat answers 503) */
    char *anthropic_base_url;    /* ANTHROPIC_BASE_URL, default https://api.anthropic.com */
    char *anthropic_version;     /* ANTHROPIC_VERSION, default 2023-06-01 */
    char *chat_model;            /* CHAT_MODEL, default claude-sonnet-4-6 */
    int max_tokens;              /* MAX_TOKENS, default 1024, 1..1000000 */
    char *default_system_prompt; /* DEFAULT_SYSTEM_PROMPT, default "You are a helpful AI assistant.", may be "" */
    bool prompt_caching;         /* PROMPT_CACHING, default on */
    char *openai_api_key;        /* OPENAI_API_KEY, "" = send no Authorization header */
    char *openai_base_url;       /* OPENAI_BASE_URL, default https://api.openai.com/v1 */
    char *models_file;           /* MODELS_FILE, "" = the built-in table only */

    /* listener and workers */
    char *host;          /* HOST, default 127.0.0.1 */
    int port;            /* PORT, default 8000, 0..65535 (0: pick a free port, printed at start) */
    int workers;         /* WORKERS, default 0 = number of CPUs, 0..256 */
    int max_connections; /* MAX_CONNECTIONS, open client connections, 0 = derived from RLIMIT_NOFILE */

    /* storage */
    char *database_url;                /* DATABASE_URL, default sqlite:///./data/chatd.db */
    int database_pool_size;            /* DATABASE_POOL_SIZE: PostgreSQL connections per instance */
    int64_t database_queue_timeout_ms; /* DATABASE_QUEUE_TIMEOUT */
    size_t history_cache_bytes;        /* HISTORY_CACHE_SIZE: SQLite, the served file's history cache; 0 = none */

    /* HTTP limits */
    size_t max_body_bytes;    /* MAX_BODY_SIZE, default 1MiB, 1KiB..1GiB */
    size_t max_header_bytes;  /* MAX_HEADER_SIZE, default 16KiB, 1KiB..1MiB */
    size_t max_message_bytes; /* MAX_MESSAGE_SIZE, one chat message, default 256KiB, 1..1GiB */
    /* MAX_IMAGE_SIZE: the largest image a request may carry, in bytes of the
     * DECODED image (base64 text is 4/3 of it), default 5MiB (Anthropic's
     * per-image limit), 1KiB..1GiB; the API parsers answer 400 beyond it. */
    size_t max_image_size;
    int64_t header_timeout_ms; /* HEADER_TIMEOUT, a whole request (head and body) must arrive within, default 10s */
    int64_t idle_timeout_ms;   /* IDLE_TIMEOUT, evhttp read/write idle, default 60s, > HEARTBEAT_INTERVAL */
    int64_t heartbeat_ms;      /* HEARTBEAT_INTERVAL, ": ping" while the provider is silent, default 10s */
    size_t
        stream_buffer_bytes; /* STREAM_BUFFER_SIZE, client queue cap before pausing the provider, 64KiB, 1KiB..256MiB */

    /* provider call deadlines and retries */
    int64_t provider_connect_timeout_ms;     /* PROVIDER_CONNECT_TIMEOUT, default 10s */
    int64_t provider_first_byte_timeout_ms;  /* PROVIDER_FIRST_BYTE_TIMEOUT, default 600s */
    int64_t provider_idle_timeout_ms;        /* PROVIDER_IDLE_TIMEOUT, gap between tokens, default 120s */
    int64_t turn_timeout_ms;                 /* TURN_TIMEOUT, whole turn, default 900s */
    int provider_max_retries;                /* PROVIDER_MAX_RETRIES, default 2, 0..10 */
    int64_t retry_max_wait_ms;               /* RETRY_MAX_WAIT, cap on one wait, default 30s */
    chat_http_version provider_http_version; /* PROVIDER_HTTP_VERSION: auto (default) | 1.1 | 2 */

    /* turns */
    chat_cancel_policy cancel_policy; /* CANCEL_POLICY: keep (default) | drop */
    int64_t lock_ttl_ms;              /* LOCK_TTL, default TURN_TIMEOUT + 60s when unset; must exceed TURN_TIMEOUT */
    int64_t drain_timeout_ms;         /* DRAIN_TIMEOUT, graceful shutdown, default 30s */
    /* DROP_UNSUPPORTED_PARAMS, default off: a request option the model
     * refuses fails the request with 400 unsupported_parameter; on: it is
     * left out and named in X-Chatd-Dropped-Params and the log. */
    bool drop_unsupported_params;

    /* authentication (see guard/auth.h) */
    chat_auth_mode auth_mode;   /* AUTH_MODE: none|token|keys; unset: token with API_TOKEN, else none */
    char *api_token;            /* API_TOKEN, "" = none */
    bool allow_unauthenticated; /* ALLOW_UNAUTHENTICATED, default off */
    char *auth_failure_limit;   /* AUTH_FAILURE_LIMIT, failed key lookups per client address, "20/minute" */

    /* limits (see guard/ratelimit.h, http/cors.h) */
    char *rate_limit;           /* RATE_LIMIT, "10/minute" (as the template) or "off" */
    char *token_limit;          /* TOKEN_LIMIT, default "off" */
    int rate_limit_max_buckets; /* RATE_LIMIT_MAX_BUCKETS, default 100000 */
    char *redis_url;            /* REDIS_URL, "" = limits local to this process */
    char *trusted_proxies;      /* TRUSTED_PROXIES, comma-separated addresses and networks */
    int rate_limit_ipv6_prefix; /* RATE_LIMIT_IPV6_PREFIX, bits of an IPv6 client's bucket, default 64 */
    char *cors_origins;         /* CORS_ORIGINS, "" = CORS off */
    bool cors_credentials;      /* CORS_CREDENTIALS, default off */
    int64_t session_ttl_ms;     /* SESSION_TTL, 0 = off (default) */
    int max_sessions_per_key;   /* MAX_SESSIONS_PER_KEY, 0 = no cap */

    /* logging */
    chat_log_level log_level; /* LOG_LEVEL: debug|info|warn|error, default info */

    char *env_file; /* --env-file / ENV_FILE as given, default ".env" (read only if it exists) */
};

/*
 * Loads the configuration. argv holds only the flags (argc of them, e.g. what
 * follows `chatd serve`); envp is a NULL-terminated "NAME=value" array (pass
 * `environ`; it is never read through getenv). The .env file is read from
 * --env-file / ENV_FILE if given (then it must be readable), else "./.env" if it
 * exists. cfg must not be NULL; its previous contents are overwritten, not freed.
 * On success returns CHAT_OK and cfg owns its strings (release with
 * chat_config_free). On failure writes one line naming the setting, the bad
 * value's source and the reason into err (printable ASCII: any other byte it
 * quotes, from a value, a flag, a .env path or line, as \xHH; truncated to
 * errlen; err may be NULL when errlen is 0), and returns CHAT_EINVAL; cfg is then all zero (safe to
 * chat_config_free). `--help` is not handled here (main checks it first).
 */
chat_rc chat_config_load(struct chat_config *cfg, int argc, char **argv, char **envp, char *err,
                         size_t errlen) CHAT_MUST_CHECK;

/* Frees the strings of cfg and zeroes it. Accepts NULL. */
void chat_config_free(struct chat_config *cfg);

/* Prints every setting: flag, NAME, default, and a one-line description. */
void chat_config_print_help(FILE *out);

#endif
