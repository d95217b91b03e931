/*
 * app/metrics.c: the families GET /metrics exposes, in page order. Each module
 * defines the families it observes (http/metrics.h, llm/metrics.h,
 * chat/metrics.h, api/metrics.h, store/metrics.h, guard/metrics.h); this list,
 * above them all, decides which are exposed and in which order (dashboards
 * and tests/unit/test_metrics.c read the page: keep the order when adding a
 * family, add new ones at the end).
 */
#include "app/app.h"

#include "api/metrics.h"
#include "chat/metrics.h"
#include "core/metrics.h"
#include "guard/metrics.h"
#include "http/metrics.h"
#include "llm/metrics.h"
#include "store/metrics.h"

static metrics_def build_info = { .desc = { METRICS_GAUGE,
                                            "chatd_build_info",
                                            "A metric with a constant '1' value labelled by the chatd version.",
                                            { "version" },
                                            1,
                                            NULL,
                                            0 } };

static metrics_def *const page[] = {
    &build_info,
    &http_metric_requests,
    &http_metric_duration,
    &llm_metric_duration,
    &llm_metric_ttft,
    &llm_metric_errors,
    &llm_metric_retries,
    &chat_metric_tokens,
    &chat_metric_cost,
    &api_metric_active_streams,
    &store_metric_duration,
    &guard_metric_rate_limited,
    &chat_metric_turns_cancelled,
    &chat_metric_turns,
    &store_metric_unavailable,
    &guard_metric_redis_fallback,
    &http_metric_connections_open,
    &http_metric_connections_refused,
    &guard_metric_auth_lookups,
    &store_metric_history_reads,
    &store_metric_history_bytes,
};

chat_rc chat_app_metrics_init(const char *version)
{
    chat_rc rc = metrics_init(page, sizeof page / sizeof page[0]);
    if (rc != CHAT_OK)
        return rc;
    metrics_gauge_set(metrics_def_child1(&build_info, version ? version : "unknown"), 1);
    return CHAT_OK;
}
