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

#include <stdbool.h>
#include <stdint.h>

#include "core/metrics.h"

extern metrics_def store_metric_duration;    /* chatd_db_operation_duration_seconds */
extern metrics_def store_metric_unavailable; /* chatd_db_unavailable_total */

extern metrics_def store_metric_history_reads; /* chatd_history_cache_reads_total */
extern metrics_def store_metric_history_bytes; /* chatd_history_cache_bytes */

/* chatd_history_cache_reads_total{result="hit"|"miss"} += 1: a turn's
 * history read served from the SQLite history cache, or not. */
void metrics_history_read(bool hit);
/* chatd_history_cache_bytes += delta: the messages the history caches hold. */
void metrics_history_bytes(int64_t delta);

/* chatd_db_operation_duration_seconds{op} observes seconds. op is a short
 * static name (e.g. "turn_commit", "history_load"). */
void metrics_db_operation(const char *op, double seconds);

/* chatd_db_unavailable_total{op} += 1: an operation failed with CHAT_EUNAVAIL
 * (database unreachable, or no pooled connection within the queue timeout). */
void metrics_db_unavailable(const char *op);

#endif
