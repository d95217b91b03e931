/*
 * http/metrics.c: the HTTP server's metric families (see http/metrics.h).
 * Bounds on label combinations: routes are the ~20 patterns of the route table
 * (plus "unmatched"), methods a handful, statuses a few dozen at most.
 */
#include "http/metrics.h"

#include <stdio.h>

/* Request latency: from a cached GET (milliseconds) to a long streamed turn (minutes). */
static const double http_buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300 };

metrics_def http_metric_requests = { .desc = { METRICS_COUNTER,
                                               "chatd_http_requests_total",
                                               "HTTP requests answered, by route pattern, method and status code.",
                                               { "route", "method", "status" },
                                               512,
                                               NULL,
                                               0 } };

metrics_def http_metric_duration = {
    .desc = { METRICS_HISTOGRAM,
              "chatd_http_request_duration_seconds",
              "Time from receiving an HTTP request to the end of its response, by route pattern.",
              { "route" },
              64,
              http_buckets,
              sizeof http_buckets / sizeof http_buckets[0] }
};

metrics_def http_metric_connections_open = {
    .desc = { METRICS_GAUGE,
              "chatd_connections_open",
              "Client connections currently open (sockets accepted and not yet closed).",
              { NULL },
              0,
              NULL,
              0 }
};

metrics_def http_metric_connections_refused = {
    .desc = { METRICS_COUNTER,
              "chatd_connections_refused_total",
              "Client connections refused with 503 because MAX_CONNECTIONS were open.",
              { NULL },
              0,
              NULL,
              0 }
};

void metrics_http_request(const char *route, const char *method, int status, double seconds)
{
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    const char *r = route ? route : "unmatched";
    const char *vals[3] = { r, method, st };
    metrics_child *c = metrics_def_child(&http_metric_requests, vals);
    if (c)
        metrics_counter_add(c, 1);
    c = metrics_def_child1(&http_metric_duration, r);
    if (c)
        metrics_histogram_observe(c, seconds);
}

void metrics_connections_open_add(int64_t delta)
{
    metrics_child *c = metrics_def_child(&http_metric_connections_open, NULL);
    if (c)
        metrics_gauge_add(c, delta);
}

void metrics_connections_refused(void)
{
    metrics_child *c = metrics_def_child(&http_metric_connections_refused, NULL);
    if (c)
        metrics_counter_add(c, 1);
}
