/*
 * context.c: the context-window budget (see context.h).
 */
#include "chat/context.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

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

/* Part i of the request: hist[i], or the new message after the history
 * (i == n). Returns its role as a static string ("user" or "assistant"), or
 * NULL when it has no content (left out). */
static const char *part(const store_message *hist, size_t n, const char *message, size_t i, const char **content,
                        size_t *len)
{
    const char *role = i < n ? hist[i].role : "user";
    const char *c = i < n ? hist[i].content : message;
    if (!c || !*c)
        return NULL;
    *content = c;
    *len = strlen(c);
    return role && strcmp(role, "user") == 0 ? "user" : "assistant";
}

/* A first pass measures each resulting message, a second copies every part
 * once into a buffer allocated at its final size. */
size_t context_messages(const store_message *hist, size_t first, size_t n, const char *message, llm_message **out)
{
    size_t *size = chat_xcalloc(n - first + 1, sizeof *size);
    size_t count = 0;
    const char *last = NULL; /* role of message count - 1 */
    for (size_t i = first; i <= n; i++) {
        const char *content;
        size_t len;
        const char *role = part(hist, n, message, i, &content, &len);
        if (!role || (count == 0 && role[0] != 'u'))
            continue;
        if (count > 0 && role == last) {
            size[count - 1] += 2 + len; /* "\n\n" + content */
            continue;
        }
        size[count++] = len;
        last = role;
    }
    llm_message *msgs = chat_xcalloc(count ? count : 1, sizeof *msgs);
    size_t k = 0, used = 0; /* message k - 1 holds used bytes so far */
    char *buf = NULL;       /* its content */
    for (size_t i = first; i <= n; i++) {
        const char *content;
        size_t len;
        const char *role = part(hist, n, message, i, &content, &len);
        if (!role || (k == 0 && role[0] != 'u'))
            continue;
        if (k > 0 && role == msgs[k - 1].role) {
            memcpy(buf + used, "\n\n", 2);
            memcpy(buf + used + 2, content, len);
            used += 2 + len;
            buf[used] = '\0';
            continue;
        }
        buf = chat_xmalloc(size[k] + 1);
        memcpy(buf, content, len);
        buf[len] = '\0';
        used = len;
        msgs[k].role = role;
        msgs[k].content = buf;
        k++;
    }
    free(size);
    *out = msgs;
    return count;
}

void context_messages_free(llm_message *msgs, size_t n)
{
    for (size_t i = 0; msgs && i < n; i++)
        free((char *)msgs[i].content);
    free(msgs);
}
