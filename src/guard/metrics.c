/*
 * guard/metrics.c: the guard's metric families (see guard/metrics.h). Their
 * label sets are closed: every value is exposed at 0 from the start.
 */
#include "guard/metrics.h"

static const char *const rl_kind_names[METRICS_RL_KIND_COUNT + 1] = { "requests", "tokens", "auth_failures", NULL };
static const char *const auth_result_names[METRICS_AUTH_RESULT_COUNT + 1] = { "valid",       "invalid",
                                                                              "unavailable", "cached_invalid",
                                                                              "limited",     NULL };

metrics_def guard_metric_rate_limited = {
    .desc = { METRICS_COUNTER,
              "chatd_rate_limited_total",
              "Requests refused by a rate limit, by limit kind (requests, tokens, auth_failures).",
              { "kind" },
              4,
              NULL,
              0 },
    .initial = rl_kind_names
};

metrics_def guard_metric_redis_fallback = {
    .desc = { METRICS_COUNTER,
              "chatd_ratelimit_redis_fallback_total",
              "Rate-limit checks and debits served by the local limiter because Redis was "
              "unreachable, too slow or failing.",
              { NULL },
              0,
              NULL,
              0 }
};

metrics_def guard_metric_auth_lookups = {
    .desc = { METRICS_COUNTER,
              "chatd_auth_key_lookups_total",
              "Requests whose bearer token needed an API key lookup, by result: valid, invalid and "
              "unavailable (the store was asked), cached_invalid and limited (it was not).",
              { "result" },
              8,
              NULL,
              0 },
    .initial = auth_result_names
};

void metrics_rate_limited(metrics_rl_kind kind)
{
    if ((unsigned)kind >= METRICS_RL_KIND_COUNT)
        return;
    metrics_child *c = metrics_def_child1(&guard_metric_rate_limited, rl_kind_names[kind]);
    if (c)
        metrics_counter_add(c, 1);
}

void metrics_redis_fallback(void)
{
    metrics_child *c = metrics_def_child(&guard_metric_redis_fallback, NULL);
    if (c)
        metrics_counter_add(c, 1);
}

void metrics_auth_key_lookup(metrics_auth_result result)
{
    if ((unsigned)result >= METRICS_AUTH_RESULT_COUNT)
        return;
    metrics_child *c = metrics_def_child1(&guard_metric_auth_lookups, auth_result_names[result]);
    if (c)
        metrics_counter_add(c, 1);
}
