/*
 * llm/metrics.c: the provider call metric families (see llm/metrics.h).
 * Providers are short static names from the models table.
 */
#include "llm/metrics.h"

/* A provider call: one second to several minutes for long completions. */
static const double provider_buckets[] = { 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600 };
/* Time to first token: a few hundred milliseconds typically, seconds under load. */
static const double ttft_buckets[] = { 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60 };

metrics_def llm_metric_duration = { .desc = { METRICS_HISTOGRAM,
                                              "chatd_provider_request_duration_seconds",
                                              "Duration of LLM provider calls, retries included.",
                                              { "provider" },
                                              16,
                                              provider_buckets,
                                              sizeof provider_buckets / sizeof provider_buckets[0] } };

metrics_def llm_metric_ttft = { .desc = { METRICS_HISTOGRAM,
                                          "chatd_provider_ttft_seconds",
                                          "Time from the start of a provider call to its first reply byte.",
                                          { "provider" },
                                          16,
                                          ttft_buckets,
                                          sizeof ttft_buckets / sizeof ttft_buckets[0] } };

metrics_def llm_metric_errors = { .desc = { METRICS_COUNTER,
                                            "chatd_provider_errors_total",
                                            "Failed LLM provider calls, by provider and error type.",
                                            { "provider", "type" },
                                            128,
                                            NULL,
                                            0 } };

metrics_def llm_metric_retries = { .desc = { METRICS_COUNTER,
                                             "chatd_provider_retries_total",
                                             "Retried LLM provider attempts.",
                                             { "provider" },
                                             16,
                                             NULL,
                                             0 } };

void metrics_provider_request(const char *provider, double seconds, double ttft_seconds)
{
    metrics_child *c = metrics_def_child1(&llm_metric_duration, provider);
    if (!c)
        return;
    metrics_histogram_observe(c, seconds);
    if (ttft_seconds >= 0) {
        c = metrics_def_child1(&llm_metric_ttft, provider);
        if (c)
            metrics_histogram_observe(c, ttft_seconds);
    }
}

void metrics_provider_error(const char *provider, const char *type)
{
    const char *vals[2] = { provider, type };
    metrics_child *c = metrics_def_child(&llm_metric_errors, vals);
    if (c)
        metrics_counter_add(c, 1);
}

void metrics_provider_retries(const char *provider, int64_t n)
{
    if (n <= 0)
        return;
    metrics_child *c = metrics_def_child1(&llm_metric_retries, provider);
    if (c)
        metrics_counter_add(c, (uint64_t)n);
}
