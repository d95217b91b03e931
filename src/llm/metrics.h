/*
 * llm/metrics.h: the metrics of provider calls: durations, time to first
 * byte, errors and retries, by provider. The families are defined in
 * llm/metrics.c on the registry of core/metrics.h; app/metrics.c lists them on
 * the page. The turn engine (chat/turn.c) reports each call once it ended.
 * Every function is a no-op until metrics_init. Any thread.
 */
#ifndef CHATD_LLM_METRICS_H
#define CHATD_LLM_METRICS_H

#include <stdint.h>

#include "core/metrics.h"

extern metrics_def llm_metric_duration; /* chatd_provider_request_duration_seconds */
extern metrics_def llm_metric_ttft;     /* chatd_provider_ttft_seconds */
extern metrics_def llm_metric_errors;   /* chatd_provider_errors_total */
extern metrics_def llm_metric_retries;  /* chatd_provider_retries_total */

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

#endif
