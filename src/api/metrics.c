/* api/metrics.c: the API layer's metric family (see api/metrics.h). */
#include "api/metrics.h"

metrics_def api_metric_active_streams = {
    .desc = { METRICS_GAUGE, "chatd_active_streams", "Streaming responses currently open.", { NULL }, 0, NULL, 0 }
};

void metrics_active_streams_add(int64_t delta)
{
    metrics_child *c = metrics_def_child(&api_metric_active_streams, NULL);
    if (c)
        metrics_gauge_add(c, delta);
}
