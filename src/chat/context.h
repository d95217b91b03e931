/*
 * context.h: fitting a conversation into a model's context window.
 *
 * The budget of a request is the model's context window minus the tokens
 * reserved for the reply (max_tokens). Past messages count what the provider
 * reported for them when it is known (store_message.tokens), and an estimate
 * otherwise; the new message and the system prompt are always estimated. When
 * everything does not fit, the oldest whole turns (a user message and its
 * reply) are left out of the provider request; the stored history keeps them.
 * The first message sent is therefore always a user message.
 *
 * Pure functions: no I/O, any thread.
 */
#ifndef CHATD_CHAT_CONTEXT_H
#define CHATD_CHAT_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"
#include "store/store.h"

/* The estimate used for text whose token count is not known: one token per
 * four Unicode code points, rounded up (0 for ""). */
int64_t context_estimate_tokens(const char *text);

typedef struct context_plan {
    size_t first;             /* index in the history of the first message to send */
    int64_t truncated_turns;  /* whole turns left out */
    int64_t tokens;           /* what is sent: system + kept history + new message */
    int64_t budget;           /* context_window - max_tokens */
} context_plan;

/*
 * Plans the request: keeps as many of the most recent turns of hist (n
 * messages, alternating user/assistant, oldest first) as fit in the budget.
 * Returns CHAT_OK with *out filled, or CHAT_ETOOBIG (out->tokens and
 * out->budget still filled) when the system prompt and the new message alone do
 * not fit. A conversation exactly at the budget fits.
 */
chat_rc context_fit(const store_message *hist, size_t n, const char *system, const char *message,
                    int64_t context_window, int64_t max_tokens, context_plan *out) CHAT_MUST_CHECK;

#endif
