/*
 * context.c: the context-window budget (see context.h).
 */
#include "chat/context.h"

int64_t context_estimate_tokens(const char *text)
{
    int64_t cps = 0;
    for (const unsigned char *p = (const unsigned char *)text; p && *p; p++)
        if ((*p & 0xC0) != 0x80) /* count UTF-8 lead bytes: one per code point */
            cps++;
    return (cps + 3) / 4;
}

static int64_t message_tokens(const store_message *m)
{
    return m->tokens >= 0 ? m->tokens : context_estimate_tokens(m->content);
}

chat_rc context_fit(const store_message *hist, size_t n, const char *system, const char *message,
                    int64_t context_window, int64_t max_tokens, context_plan *out)
{
    int64_t fixed = context_estimate_tokens(system) + context_estimate_tokens(message);
    int64_t history = 0;
    for (size_t i = 0; i < n; i++)
        history += message_tokens(&hist[i]);
    out->budget = context_window - max_tokens;
    out->first = 0;
    out->truncated_turns = 0;
    out->tokens = fixed + history;
    if (fixed > out->budget)
        return CHAT_ETOOBIG;
    /* Leave out whole turns from the front; an odd leading message (a history
     * that does not start with a user message) goes first, alone. */
    size_t first = n % 2;
    if (first && out->tokens > out->budget)
        history -= message_tokens(&hist[0]);
    else
        first = 0;
    while (fixed + history > out->budget && first + 1 < n) {
        history -= message_tokens(&hist[first]) + message_tokens(&hist[first + 1]);
        first += 2;
        out->truncated_turns++;
    }
    out->first = first;
    out->tokens = fixed + history;
    return CHAT_OK;
}
