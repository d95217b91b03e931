/*
 * chat/metrics.h: the metrics of conversation turns: how each ended, why it
 * was cancelled, the tokens providers reported and the estimated cost. The
 * families are defined in chat/metrics.c on the registry of core/metrics.h;
 * app/metrics.c lists them on the page. The turn engine (chat/turn.c)
 * observes them. Every function is a no-op until metrics_init. Any thread.
 */
#ifndef CHATD_CHAT_METRICS_H
#define CHATD_CHAT_METRICS_H

#include <stdint.h>

#include "core/metrics.h"

extern metrics_def chat_metric_tokens;          /* chatd_tokens_total */
extern metrics_def chat_metric_cost;            /* chatd_cost_microdollars_total */
extern metrics_def chat_metric_turns_cancelled; /* chatd_turns_cancelled_total */
extern metrics_def chat_metric_turns;           /* chatd_turns_total */

/* chatd_turns_total{outcome} */
typedef enum {
    METRICS_TURN_OK = 0,    /* committed ("ok") */
    METRICS_TURN_ERROR,     /* failed, nothing committed ("error") */
    METRICS_TURN_CANCELLED, /* the consumer went away or the server shut down ("cancelled") */
    METRICS_TURN_OUTCOME_COUNT
} metrics_turn_outcome;

/* chatd_turns_cancelled_total{reason} */
typedef enum {
    METRICS_CANCEL_CLIENT_GONE = 0, /* the client disconnected ("client_disconnect") */
    METRICS_CANCEL_SHUTDOWN,        /* the drain deadline passed ("shutdown") */
    METRICS_CANCEL_REASON_COUNT
} metrics_cancel_reason;

/* chatd_tokens_total{direction} for input, output, cache_read and cache_write;
 * negative values (unknown) are skipped. Pass a turn's usage once. */
void metrics_tokens(int64_t input, int64_t output, int64_t cache_read, int64_t cache_write);

/* chatd_cost_microdollars_total += n (n <= 0 is ignored). */
void metrics_cost_microdollars(int64_t n);

/* chatd_turns_cancelled_total{reason} += 1. */
void metrics_turn_cancelled(metrics_cancel_reason reason);

/* chatd_turns_total{outcome} += 1 (once per started turn). */
void metrics_turn(metrics_turn_outcome outcome);

#endif
