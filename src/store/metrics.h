/*
 * store/metrics.h: the metrics of store operations: their durations and the
 * ones refused because the database was unavailable, by operation (a short
 * static name, store_op_name). The families are defined in store/metrics.c on
 * the registry of core/metrics.h; app/metrics.c lists them on the page;
 * store/store.c observes them when an operation completes. Every function is a
 * no-op until metrics_init. Any thread.
 */
#ifndef CHATD_STORE_METRICS_H
#define CHATD_STORE_METRICS_H

#include "core/metrics.h"

extern metrics_def store_metric_duration;    /* chatd_db_operation_duration_seconds */
extern metrics_def store_metric_unavailable; /* chatd_db_unavailable_total */

/* chatd_db_operation_duration_seconds{op} observes seconds. op is a short
 * static name (e.g. "turn_commit", "history_load"). */
void metrics_db_operation(const char *op, double seconds);

/* chatd_db_unavailable_total{op} += 1: an operation failed with CHAT_EUNAVAIL
 * (database unreachable, or no pooled connection within the queue timeout). */
void metrics_db_unavailable(const char *op);

#endif
