/*
 * metrics.h: the process-wide metrics registry and the metrics chatd exposes.
 *
 * Two layers.
 *
 * 1. A generic registry (metrics_registry): families of counters, gauges and
 *    histograms, each with up to METRICS_MAX_LABELS label names fixed at
 *    registration. A family holds one child per label combination. Children
 *    are created lazily on first use: the lookup is lock-free (an open-addressed
 *    table of atomically published pointers, never resized, never shrunk); only
 *    the creation of a new child takes the family's mutex. The number of
 *    children is bounded by the family's max_children: once that many exist,
 *    every new combination goes to one overflow child whose label values are
 *    all "other" (so memory stays bounded whatever values callers pass, and
 *    the overflow is visible in the output). Observations are C11 atomics
 *    (relaxed: each value is independent), no lock. The registry renders in the
 *    Prometheus text exposition format 0.0.4.
 *
 * 2. The chatd metrics (metrics_init and the metrics_<what>() functions): one
 *    process-wide registry whose families are defined in one table in
 *    metrics.c (names, help texts, labels, buckets). Callers pass plain values
 *    (a route pattern, a status code, seconds); they never build label
 *    strings. Before metrics_init and after metrics_shutdown every observation
 *    function is a harmless no-op, so unit tests of other modules need no setup.
 *
 * Label values are normalised before use: NULL becomes "", values longer than
 * METRICS_MAX_VALUE_LEN bytes are cut, and bytes that are not valid UTF-8 become
 * '?' (the exposition format requires UTF-8). Rendering escapes '\\', '"' and
 * newline in label values, and '\\' and newline in help texts.
 *
 * Thread: registration (metrics_register, metrics_init) happens at start-up on
 * one thread, before any observation. Observations, metrics_child_get and
 * rendering are safe from any thread at any time after that. Freeing
 * (metrics_registry_free, metrics_shutdown) requires that no other thread uses
 * the registry any more.
 */
#ifndef CHATD_CORE_METRICS_H
#define CHATD_CORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

/* ------------------------------------------------------------------------ */
/* Generic registry                                                         */
/* ------------------------------------------------------------------------ */

#define METRICS_MAX_LABELS 4        /* label names per family */
#define METRICS_MAX_CHILDREN 4096   /* upper bound for a family's max_children */
#define METRICS_MAX_BUCKETS 32      /* finite histogram buckets per family (+Inf is implied) */
#define METRICS_MAX_VALUE_LEN 128   /* bytes kept of one label value */
#define METRICS_OVERFLOW_VALUE "other"

typedef enum { METRICS_COUNTER = 1, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;
typedef struct metrics_child metrics_child;

/*
 * Describes one family. The strings (name, help, label names) are borrowed and
 * must outlive the registry (use string literals); buckets are copied.
 */
typedef struct metrics_desc {
    metrics_type type;
    const char *name;                        /* [a-zA-Z_:][a-zA-Z0-9_:]*, unique in the registry */
    const char *help;                        /* one line of text */
    const char *labels[METRICS_MAX_LABELS];  /* label names in order; the first NULL ends the list */
    size_t max_children;                     /* labelled families: 1..METRICS_MAX_CHILDREN combinations
                                                before overflow; ignored without labels */
    const double *buckets;                   /* histograms: strictly increasing finite upper bounds */
    size_t nbuckets;                         /* histograms: 1..METRICS_MAX_BUCKETS */
} metrics_desc;

/* Creates an empty registry. Never returns NULL (aborts on OOM). */
metrics_registry *metrics_registry_new(void);

/* Frees the registry, its families and children. Accepts NULL. No other thread
 * may use the registry or any pointer obtained from it during or after this. */
void metrics_registry_free(metrics_registry *reg);

/*
 * Registers a family described by d. On success stores the family in *out
 * (owned by reg, valid until metrics_registry_free) and returns CHAT_OK. An
 * unlabelled family gets its single child at once. Returns CHAT_EINVAL (and
 * leaves *out NULL) for an invalid or duplicate name, an invalid, reserved
 * ("__" prefix, or "le" on a histogram) or repeated label name, max_children out
 * of range, or buckets that are not strictly increasing finite numbers.
 * Start-up only (single-threaded).
 */
chat_rc metrics_register(metrics_registry *reg, const metrics_desc *d, metrics_family **out)
    CHAT_MUST_CHECK;

/*
 * Returns the child of f for the label values (exactly as many as f has label
 * names; may be NULL when f has none). Never returns NULL: a new combination
 * beyond max_children returns the overflow child ("other" for every label).
 * Lock-free when the child exists; takes f's mutex once to create it. The child
 * lives as long as the registry, so callers may cache it. Any thread.
 */
metrics_child *metrics_child_get(metrics_family *f, const char *const *values);

/* Observations (any thread, lock-free). Calling one on a child of another type is a
 * programming error (asserted). */
void metrics_counter_add(metrics_child *c, uint64_t n);
void metrics_gauge_add(metrics_child *c, int64_t delta);
void metrics_gauge_set(metrics_child *c, int64_t v);
/* Counts v in the first bucket whose upper bound is >= v (bounds are inclusive,
 * as Prometheus' "le" says) and adds it to the sum. NaN is ignored. */
void metrics_histogram_observe(metrics_child *c, double v);

/* Current values (for tests and diagnostics). */
uint64_t metrics_counter_value(const metrics_child *c);
int64_t metrics_gauge_value(const metrics_child *c);
/* Histogram: the number of observations; *sum (may be NULL) receives their sum. */
uint64_t metrics_histogram_count(const metrics_child *c, double *sum);

/* Number of children of f, the overflow child included. */
size_t metrics_family_children(const metrics_family *f);

/*
 * Renders every family in registration order (children in creation order) in
 * the Prometheus text format 0.0.4: "# HELP", "# TYPE", one sample line per
 * counter/gauge child, and per histogram child the cumulative _bucket{le=...}
 * lines ending with le="+Inf", then _sum and _count (_count equals the +Inf
 * bucket). Returns a NUL-terminated heap string the caller frees; *len (may be
 * NULL) receives its length. Its size is bounded by the registry's families,
 * their max_children and buckets. Any thread, concurrently with observations
 * (each value is read once; a histogram's _sum may lag its _count by the
 * observations in flight).
 */
char *metrics_registry_render(const metrics_registry *reg, size_t *len);

/* ------------------------------------------------------------------------ */
/* chatd's metrics                                                          */
/* ------------------------------------------------------------------------ */

/* chatd_turns_total{outcome} */
typedef enum {
    METRICS_TURN_OK = 0,        /* committed ("ok") */
    METRICS_TURN_ERROR,         /* failed, nothing committed ("error") */
    METRICS_TURN_CANCELLED,     /* the consumer went away or the server shut down ("cancelled") */
    METRICS_TURN_OUTCOME_COUNT
} metrics_turn_outcome;

/* chatd_turns_cancelled_total{reason} */
typedef enum {
    METRICS_CANCEL_CLIENT_GONE = 0, /* the client disconnected ("client_disconnect") */
    METRICS_CANCEL_SHUTDOWN,        /* the drain deadline passed ("shutdown") */
    METRICS_CANCEL_REASON_COUNT
} metrics_cancel_reason;

/* chatd_rate_limited_total{kind} */
typedef enum {
    METRICS_RL_REQUESTS = 0,    /* request rate ("requests") */
    METRICS_RL_TOKENS,          /* provider tokens per minute ("tokens") */
    METRICS_RL_AUTH_FAILURES,   /* failed authentications per client address ("auth_failures") */
    METRICS_RL_KIND_COUNT
} metrics_rl_kind;

/* chatd_auth_key_lookups_total{result}: how an API key (AUTH_MODE=keys) was checked */
typedef enum {
    METRICS_AUTH_VALID = 0,     /* the store found a valid key ("valid") */
    METRICS_AUTH_INVALID,       /* the store found no usable key: unknown or revoked ("invalid") */
    METRICS_AUTH_UNAVAILABLE,   /* the store could not answer ("unavailable") */
    METRICS_AUTH_CACHED,        /* refused from the cache of recent unknown keys, store not asked ("cached_invalid") */
    METRICS_AUTH_LIMITED,       /* refused by AUTH_FAILURE_LIMIT, store not asked ("limited") */
    METRICS_AUTH_RESULT_COUNT
} metrics_auth_result;

/*
 * Creates the process-wide registry with every chatd family, sets
 * chatd_build_info{version} to 1, and creates the children of the closed label
 * sets (turn outcomes, cancel reasons, rate-limit kinds, token directions) so
 * they are exposed at 0 from the start. Call once on the main thread before
 * the workers start. Returns CHAT_EINVAL if already initialised (or if the
 * table in metrics.c were invalid, which a unit test rules out).
 */
chat_rc metrics_init(const char *version) CHAT_MUST_CHECK;

/* Frees the process-wide registry (after every worker stopped); observations
 * become no-ops again and metrics_init may be called anew. Safe without init. */
void metrics_shutdown(void);

/* The process-wide registry (NULL before metrics_init), e.g. for tests. */
metrics_registry *metrics_global(void);

/* Renders the process-wide registry (see metrics_registry_render): the body of
 * GET /metrics, served as "text/plain; version=0.0.4; charset=utf-8".
 * Before metrics_init returns an empty heap string. */
char *metrics_render(size_t *len);

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/*
 * One finished HTTP request: chatd_http_requests_total{route,method,status} += 1
 * and chatd_http_request_duration_seconds{route} observes seconds. route is the
 * route pattern from the route table (e.g. "/v1/sessions/{}"), never the raw path
 * (that would be unbounded); NULL means no route matched ("unmatched"). method is
 * the request method name ("GET"). Call once, when the request ends.
 */
void metrics_http_request(const char *route, const char *method, int status, double seconds);

/*
 * One provider call ended (retries included): chatd_provider_request_duration_seconds
 * {provider} observes seconds; chatd_provider_ttft_seconds{provider} observes
 * ttft_seconds, the time to the first reply byte, when it is >= 0 (pass -1 when
 * no byte arrived).
 */
void metrics_provider_request(const char *provider, double seconds, double ttft_seconds);

/* chatd_provider_errors_total{provider,type} += 1. type is a short static
 * classification (e.g. "connect", "timeout", "http_529", "overloaded_error"). */
void metrics_provider_error(const char *provider, const char *type);

/* chatd_provider_retries_total{provider} += n (n <= 0 is ignored). */
void metrics_provider_retries(const char *provider, int64_t n);

/* chatd_tokens_total{direction} for input, output, cache_read and cache_write;
 * negative values (unknown) are skipped. Pass a turn's usage once. */
void metrics_tokens(int64_t input, int64_t output, int64_t cache_read, int64_t cache_write);

/* chatd_cost_microdollars_total += n (n <= 0 is ignored). */
void metrics_cost_microdollars(int64_t n);

/* chatd_active_streams += delta (+1 when a stream starts, -1 when it ends). */
void metrics_active_streams_add(int64_t delta);

/* chatd_db_operation_duration_seconds{op} observes seconds. op is a short
 * static name (e.g. "turn_commit", "history_load"). */
void metrics_db_operation(const char *op, double seconds);

/* chatd_db_unavailable_total{op} += 1: an operation failed with CHAT_EUNAVAIL
 * (database unreachable, or no pooled connection within the queue timeout). */
void metrics_db_unavailable(const char *op);

/* chatd_rate_limited_total{kind} += 1 (one request refused). */
void metrics_rate_limited(metrics_rl_kind kind);

/* chatd_turns_cancelled_total{reason} += 1. */
void metrics_turn_cancelled(metrics_cancel_reason reason);

/* chatd_turns_total{outcome} += 1 (once per started turn). */
void metrics_turn(metrics_turn_outcome outcome);

/* chatd_ratelimit_redis_fallback_total += 1: one rate-limit check or debit
 * served by the local limiter because Redis was unreachable, too slow or
 * answered an error (guard/redis_limit.h). */
void metrics_redis_fallback(void);

/* chatd_connections_open += delta (+1 when a client socket is accepted, -1
 * when it is closed); http/server.c keeps it with the connection cap's count. */
void metrics_connections_open_add(int64_t delta);

/* chatd_connections_refused_total += 1: one connection refused (503, closed)
 * because MAX_CONNECTIONS were open. */
void metrics_connections_refused(void);

/* chatd_auth_key_lookups_total{result} += 1: one request whose bearer token
 * needed an API key lookup, by what answered it (the first three results are
 * the lookups the store served). */
void metrics_auth_key_lookup(metrics_auth_result result);

#endif
