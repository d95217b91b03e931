/*
 * api/metrics.h: the metrics of the API layer: streaming responses open. The
 * family is defined in api/metrics.c on the registry of core/metrics.h;
 * app/metrics.c lists it on the page. A no-op until metrics_init. Any thread.
 */
#ifndef CHATD_API_METRICS_H
#define CHATD_API_METRICS_H

#include <stdint.h>

#include "core/metrics.h"

extern metrics_def api_metric_active_streams; /* chatd_active_streams */

/* chatd_active_streams += delta (+1 when a stream starts, -1 when it ends). */
void metrics_active_streams_add(int64_t delta);

#endif
