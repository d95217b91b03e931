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

#include <jansson.h>

#include "core/rc.h"
#include "llm/provider.h"
#include "store/store.h"

/* The estimate used for text whose token count is not known: one token per
 * four Unicode code points, rounded up (0 for ""). */
int64_t context_estimate_tokens(const char *text);

typedef struct context_plan {
    size_t first;            /* index in the history of the first message to send */
    int64_t truncated_turns; /* whole turns left out */
    int64_t tokens;          /* what is sent: system + kept history + new message */
    int64_t budget;          /* context_window - max_tokens */
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

/*
 * The provider request's messages: hist[first..n) then the new message. The
 * provider wants non-empty messages, alternating, starting with a user
 * message. Committed turns already alternate, but an assistant reply can be
 * empty (the provider may answer with no content): empty messages are left
 * out, so are leading assistant messages, and neighbours of the same role are
 * merged with a blank line between them. Roles other than "user" count as
 * "assistant". Linear in the total size, however many neighbours merge.
 * Returns the number of messages (0 only when nothing has content) and sets
 * *out to a heap array whose roles are static strings. A message of one text
 * part borrows that text from hist or message, which must then outlive the
 * array (context_messages_detach copies them); merged texts are the array's.
 * Free with context_messages_free(*out, count).
 */
size_t context_messages(const store_message *hist, size_t first, size_t n, const char *message, llm_message **out);

/*
 * The same two steps for a conversation with content blocks (llm/content.h):
 * hist_blocks (NULL, or n entries) holds the parsed blocks of each message
 * (NULL for a plain-text one, whose text is hist[i].content), and
 * message_blocks (may be NULL) those of the new message.
 *
 * context_fit_blocks estimates a block message with llm_content_tokens when
 * its count is unknown, and leaves out whole EXCHANGES rather than pairs: an
 * exchange is a user message that answers no tool call (holds no
 * tool_result), and everything up to the next such message (the replies
 * calling tools and the user messages answering them), so that a tool call
 * is never sent without its result or the reverse. When the new message
 * holds tool results, the last exchange of the history belongs to it and is
 * never left out: it counts in the minimum that must fit (CHAT_ETOOBIG
 * otherwise). truncated_turns counts the user messages left out (one per
 * stored turn).
 *
 * context_messages_blocks builds the messages as context_messages does; a
 * message with blocks keeps them (llm_message.blocks, a reference owned by
 * the array) and its content is the text of its blocks (the array's, maybe ""). Two
 * same-role neighbours of which one has blocks merge into one block array
 * (the text one as a text block, in order). Free with context_messages_free.
 */
chat_rc context_fit_blocks(const store_message *hist, const json_t *const *hist_blocks, size_t n, const char *system,
                           const char *message, const json_t *message_blocks, int64_t context_window,
                           int64_t max_tokens, context_plan *out) CHAT_MUST_CHECK;
size_t context_messages_blocks(const store_message *hist, const json_t *const *hist_blocks, size_t first, size_t n,
                               const char *message, const json_t *message_blocks, llm_message **out);

/* Makes every content of msgs (n messages from context_messages*) the
 * array's own copy, for a history that will not outlive it. */
void context_messages_detach(llm_message *msgs, size_t n);

/* Frees what context_messages or context_messages_blocks returned (the texts
 * it owns and the block references). Accepts NULL. */
void context_messages_free(llm_message *msgs, size_t n);

#endif
