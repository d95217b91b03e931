/*
 * guard/metrics.h: the metrics of authentication and rate limiting: requests
 * refused by a limit, checks the local limiter served instead of Redis, and
 * how API keys were checked. The families are defined in guard/metrics.c on
 * the registry of core/metrics.h; app/metrics.c lists them on the page. Every
 * function is a no-op until metrics_init. Any thread.
 */
#ifndef CHATD_GUARD_METRICS_H
#define CHATD_GUARD_METRICS_H

#include "core/metrics.h"

extern metrics_def guard_metric_rate_limited;   /* chatd_rate_limited_total */
extern metrics_def guard_metric_redis_fallback; /* chatd_ratelimit_redis_fallback_total */
extern metrics_def guard_metric_auth_lookups;   /* chatd_auth_key_lookups_total */

/* chatd_rate_limited_total{kind} */
typedef enum {
    METRICS_RL_REQUESTS = 0,  /* request rate ("requests") */
    METRICS_RL_TOKENS,        /* provider tokens per minute ("tokens") */
    METRICS_RL_AUTH_FAILURES, /* failed authentications per client address ("auth_failures") */
    METRICS_RL_KIND_COUNT
} metrics_rl_kind;

/* chatd_auth_key_lookups_total{result}: how an API key (AUTH_MODE=keys) was checked */
typedef enum {
    METRICS_AUTH_VALID = 0,   /* the store found a valid key ("valid") */
    METRICS_AUTH_INVALID,     /* the store found no usable key: unknown or revoked ("invalid") */
    METRICS_AUTH_UNAVAILABLE, /* the store could not answer ("unavailable") */
    METRICS_AUTH_CACHED,      /* refused from the cache of recent unknown keys, store not asked ("cached_invalid") */
    METRICS_AUTH_LIMITED,     /* refused by AUTH_FAILURE_LIMIT, store not asked ("limited") */
    METRICS_AUTH_RESULT_COUNT
} metrics_auth_result;

/* chatd_rate_limited_total{kind} += 1 (one request refused). */
void metrics_rate_limited(metrics_rl_kind kind);

/* chatd_ratelimit_redis_fallback_total += 1: one rate-limit check or debit
 * served by the local limiter because Redis was unreachable, too slow or
 * answered an error (guard/redis_limit.h). */
void metrics_redis_fallback(void);

/* chatd_auth_key_lookups_total{result} += 1: one request whose bearer token
 * needed an API key lookup, by what answered it (the first three results are
 * the lookups the store served). */
void metrics_auth_key_lookup(metrics_auth_result result);

#endif
