/* store/metrics.c: the store's metric families (see store/metrics.h). */
#include "store/metrics.h"

/* Database operations: SQLite commits are sub-millisecond to a few milliseconds;
 * anything above 10ms is a loop stall worth seeing. */
static const double db_buckets[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1 };

metrics_def store_metric_duration = { .desc = { METRICS_HISTOGRAM,
                                                "chatd_db_operation_duration_seconds",
                                                "Duration of database operations, by operation.",
                                                { "op" },
                                                64,
                                                db_buckets,
                                                sizeof db_buckets / sizeof db_buckets[0] } };

metrics_def store_metric_unavailable = {
    .desc = { METRICS_COUNTER,
              "chatd_db_unavailable_total",
              "Database operations that failed because the database was unreachable, or every "
              "pooled connection stayed busy past DATABASE_QUEUE_TIMEOUT, by operation.",
              { "op" },
              64,
              NULL,
              0 }
};

void metrics_db_operation(const char *op, double seconds)
{
    metrics_child *c = metrics_def_child1(&store_metric_duration, op);
    if (c)
        metrics_histogram_observe(c, seconds);
}

void metrics_db_unavailable(const char *op)
{
    metrics_child *c = metrics_def_child1(&store_metric_unavailable, op);
    if (c)
        metrics_counter_add(c, 1);
}

metrics_def store_metric_history_reads = {
    .desc = { METRICS_COUNTER,
              "chatd_history_cache_reads_total",
              "Turns' history reads on SQLite, by result: hit (from the history cache, HISTORY_CACHE_SIZE) or "
              "miss (from the database file).",
              { "result" },
              4,
              NULL,
              0 }
};

metrics_def store_metric_history_bytes = { .desc = { METRICS_GAUGE,
                                                     "chatd_history_cache_bytes",
                                                     "Bytes of messages the SQLite history cache holds.",
                                                     { NULL },
                                                     0,
                                                     NULL,
                                                     0 } };

void metrics_history_read(bool hit)
{
    metrics_child *c = metrics_def_child1(&store_metric_history_reads, hit ? "hit" : "miss");
    if (c)
        metrics_counter_add(c, 1);
}

void metrics_history_bytes(int64_t delta)
{
    metrics_child *c = metrics_def_child(&store_metric_history_bytes, NULL);
    if (c)
        metrics_gauge_add(c, delta);
}
