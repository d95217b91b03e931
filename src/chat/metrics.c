/*
 * chat/metrics.c: the turn metric families (see chat/metrics.h). Their label
 * sets are closed: every value is exposed at 0 from the start.
 */
#include "chat/metrics.h"

static const char *const turn_outcome_names[METRICS_TURN_OUTCOME_COUNT + 1] = { "ok", "error", "cancelled", NULL };
static const char *const cancel_reason_names[METRICS_CANCEL_REASON_COUNT + 1] = { "client_disconnect", "shutdown",
                                                                                  NULL };
enum { DIR_INPUT, DIR_OUTPUT, DIR_CACHE_READ, DIR_CACHE_WRITE, DIR_COUNT };
static const char *const direction_names[DIR_COUNT + 1] = { "input", "output", "cache_read", "cache_write", NULL };

metrics_def chat_metric_tokens = {
    .desc = { METRICS_COUNTER,
              "chatd_tokens_total",
              "LLM tokens reported by providers, by direction (input, output, cache_read, cache_write).",
              { "direction" },
              8,
              NULL,
              0 },
    .initial = direction_names
};

metrics_def chat_metric_cost = { .desc = { METRICS_COUNTER,
                                           "chatd_cost_microdollars_total",
                                           "Estimated provider cost of all turns, in millionths of a US dollar.",
                                           { NULL },
                                           0,
                                           NULL,
                                           0 } };

metrics_def chat_metric_turns_cancelled = { .desc = { METRICS_COUNTER,
                                                      "chatd_turns_cancelled_total",
                                                      "Turns cancelled before they finished, by reason.",
                                                      { "reason" },
                                                      8,
                                                      NULL,
                                                      0 },
                                            .initial = cancel_reason_names };

metrics_def chat_metric_turns = { .desc = { METRICS_COUNTER,
                                            "chatd_turns_total",
                                            "Conversation turns ended, by outcome (ok, error, cancelled).",
                                            { "outcome" },
                                            8,
                                            NULL,
                                            0 },
                                  .initial = turn_outcome_names };

void metrics_tokens(int64_t input, int64_t output, int64_t cache_read, int64_t cache_write)
{
    const int64_t v[DIR_COUNT] = { input, output, cache_read, cache_write };
    for (size_t i = 0; i < DIR_COUNT; i++) {
        if (v[i] <= 0)
            continue;
        metrics_child *c = metrics_def_child1(&chat_metric_tokens, direction_names[i]);
        if (c)
            metrics_counter_add(c, (uint64_t)v[i]);
    }
}

void metrics_cost_microdollars(int64_t n)
{
    if (n <= 0)
        return;
    metrics_child *c = metrics_def_child(&chat_metric_cost, NULL);
    if (c)
        metrics_counter_add(c, (uint64_t)n);
}

void metrics_turn_cancelled(metrics_cancel_reason reason)
{
    if ((unsigned)reason >= METRICS_CANCEL_REASON_COUNT)
        return;
    metrics_child *c = metrics_def_child1(&chat_metric_turns_cancelled, cancel_reason_names[reason]);
    if (c)
        metrics_counter_add(c, 1);
}

void metrics_turn(metrics_turn_outcome outcome)
{
    if ((unsigned)outcome >= METRICS_TURN_OUTCOME_COUNT)
        return;
    metrics_child *c = metrics_def_child1(&chat_metric_turns, turn_outcome_names[outcome]);
    if (c)
        metrics_counter_add(c, 1);
}
