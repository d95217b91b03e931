/*
 * http/metrics.h: the metrics of the HTTP server (http/server.c): requests by
 * route, method and status, their durations, open and refused connections.
 * The families are defined in http/metrics.c on the registry of
 * core/metrics.h; app/metrics.c lists them on the page. Every function is a
 * no-op until metrics_init. Any thread.
 */
#ifndef CHATD_HTTP_METRICS_H
#define CHATD_HTTP_METRICS_H

#include <stdint.h>

#include "core/metrics.h"

extern metrics_def http_metric_requests;            /* chatd_http_requests_total */
extern metrics_def http_metric_duration;            /* chatd_http_request_duration_seconds */
extern metrics_def http_metric_connections_open;    /* chatd_connections_open */
extern metrics_def http_metric_connections_refused; /* chatd_connections_refused_total */

/*
 * One finished HTTP request: chatd_http_requests_total{route,method,status} += 1
 * and chatd_http_request_duration_seconds{route} observes seconds. route is the
 * route pattern from the route table (e.g. "/v1/sessions/{}"), never the raw path
 * (that would be unbounded); NULL means no route matched ("unmatched"). method is
 * the request method name ("GET"). Call once, when the request ends.
 */
void metrics_http_request(const char *route, const char *method, int status, double seconds);

/* chatd_connections_open += delta (+1 when a client socket is accepted, -1
 * when it is closed); http/server.c keeps it with the connection cap's count. */
void metrics_connections_open_add(int64_t delta);

/* chatd_connections_refused_total += 1: one connection refused (503, closed)
 * because MAX_CONNECTIONS were open. */
void metrics_connections_refused(void);

#endif
