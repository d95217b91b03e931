/*
 * count_tokens.h: one POST {base}/v1/messages/count_tokens to an Anthropic
 * provider (docs/PROTOCOLS.md A9), asynchronous on a worker's loop.
 *
 * The endpoint is rarely called and answers at once, so each request drives
 * its own small curl multi handle from the loop (libevent events for its
 * sockets and one timer, as llm/transport.c does for the chat calls) and frees
 * it when done: no state outlives a request, and nothing blocks the loop.
 * No retries: a failure is reported to the caller.
 *
 * Thread: the thread of base only. The callback runs exactly once, on a later
 * turn of the loop, never from inside llm_count_start, unless llm_count_cancel
 * was called first.
 */
#ifndef CHATD_LLM_COUNT_TOKENS_H
#define CHATD_LLM_COUNT_TOKENS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/rc.h"
#include "llm/provider.h"

struct event_base;

typedef struct llm_count llm_count;

/* The outcome; valid only during the callback. */
typedef struct llm_count_result {
    int http_status;           /* the provider's status; 0 when none came (connect error, timeout) */
    bool timed_out;            /* no answer within the deadline (http_status 0) */
    int64_t input_tokens;      /* the count (a 200 with {"input_tokens": n}), else -1 */
    const char *error_type;    /* the provider's error.type when it sent one, else NULL */
    const char *error_message; /* why it failed (the provider's error.message, or ours); NULL on success */
} llm_count_result;

typedef void (*llm_count_cb)(void *ud, const llm_count_result *res);

/*
 * Sends body (a count_tokens JSON body, copied) to provider p (an Anthropic
 * provider; borrowed: must outlive the request), with its key and version
 * headers. On success *out is the request, owned by itself until the callback
 * returns (then freed) or llm_count_cancel. CHAT_EINVAL for a provider that
 * is not Anthropic's or has no base URL (nothing started, no callback).
 */
chat_rc llm_count_start(struct event_base *base, const llm_provider *p, const char *body, llm_count_cb cb, void *ud,
                        llm_count **out) CHAT_MUST_CHECK;

/* Aborts the request and frees it; no callback afterwards. Accepts NULL. Not
 * from inside the callback. */
void llm_count_cancel(llm_count *c);

#endif
