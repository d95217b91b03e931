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

/* The blocks of hist[i], or NULL for a plain-text message. */
static const json_t *blocks_of(const json_t *const *hist_blocks, size_t i)
{
    return hist_blocks ? hist_blocks[i] : NULL;
}

static int64_t message_tokens(const store_message *m, const json_t *blocks)
{
    if (m->tokens >= 0)
        return m->tokens;
    return blocks ? llm_content_tokens(blocks) : context_estimate_tokens(m->content);
}

/* True if blocks hold a tool result: such a user message answers the tool
 * calls of the reply before it, and so continues that exchange. */
static bool answers_calls(const json_t *blocks)
{
    return llm_content_has(blocks, "tool_result");
}

static bool is_user(const store_message *m)
{
    return m->role && strcmp(m->role, "user") == 0;
}

/* True if hist[i] opens an exchange: a user message that answers no tool call. */
static bool opens_exchange(const store_message *hist, const json_t *const *hist_blocks, size_t i)
{
    return is_user(&hist[i]) && !answers_calls(blocks_of(hist_blocks, i));
}

chat_rc context_fit_blocks(const store_message *hist, const json_t *const *hist_blocks, size_t n, const char *system,
                           const char *message, const json_t *message_blocks, int64_t context_window,
                           int64_t max_tokens, context_plan *out)
{
    int64_t fixed = context_estimate_tokens(system) +
                    (message_blocks ? llm_content_tokens(message_blocks) : context_estimate_tokens(message));
    /* A new message of tool results continues the last exchange of the
     * history, which must then be sent whole: it is part of the minimum. */
    size_t pinned = n; /* history from here on is never left out */
    if (answers_calls(message_blocks)) {
        pinned = 0;
        for (size_t i = n; i-- > 0;)
            if (opens_exchange(hist, hist_blocks, i)) {
                pinned = i;
                break;
            }
    }
    int64_t history = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t k = message_tokens(&hist[i], blocks_of(hist_blocks, i));
        if (i >= pinned)
            fixed += k;
        else
            history += k;
    }
    out->budget = context_window - max_tokens;
    out->first = 0;
    out->truncated_turns = 0;
    out->tokens = fixed + history;
    if (fixed > out->budget)
        return CHAT_ETOOBIG;
    /* Leave out whole exchanges from the front (a leading run that opens no
     * exchange, as a history starting with a reply, goes first), so that a
     * tool call is never separated from its result. */
    size_t first = 0;
    while (fixed + history > out->budget && first < pinned) {
        size_t next = first + 1;
        while (next < pinned && !opens_exchange(hist, hist_blocks, next))
            next++;
        for (size_t i = first; i < next; i++) {
            history -= message_tokens(&hist[i], blocks_of(hist_blocks, i));
            if (is_user(&hist[i])) /* one stored turn per user message, tool results included */
                out->truncated_turns++;
        }
        first = next;
    }
    out->first = first;
    out->tokens = fixed + history;
    return CHAT_OK;
}

chat_rc context_fit(const store_message *hist, size_t n, const char *system, const char *message,
                    int64_t context_window, int64_t max_tokens, context_plan *out)
{
    return context_fit_blocks(hist, NULL, n, system, message, NULL, context_window, max_tokens, out);
}

/* Part i of the request: hist[i], or the new message after the history
 * (i == n). Returns its role as a static string ("user" or "assistant"), or
 * NULL when it has no content (left out). *len comes in as the text's length
 * if known (else 0) and goes out as it; *plain says whether the text is known
 * to need no JSON escape (store_message.content_plain). */
static const char *part(const store_message *hist, const json_t *const *hist_blocks, size_t n, const char *message,
                        const json_t *message_blocks, size_t i, const char **content, size_t *len, bool *plain,
                        const json_t **blocks)
{
    const char *role = i < n ? hist[i].role : "user";
    const char *c = i < n ? hist[i].content : message;
    const json_t *b = i < n ? blocks_of(hist_blocks, i) : message_blocks;
    *blocks = NULL;
    *plain = false;
    if (b && json_array_size(b) > 0) {
        *blocks = b;
        *content = NULL;
        *len = 0;
    } else {
        if (!c || !*c)
            return NULL;
        *content = c;
        if (!*len)
            *len = i < n && hist[i].content_len ? hist[i].content_len : strlen(c);
        *plain = i < n && hist[i].content_plain;
    }
    return role && strcmp(role, "user") == 0 ? "user" : "assistant";
}

/* A text block holding text (len bytes). */
static json_t *text_block(const char *text, size_t len)
{
    json_t *b = json_pack("{s:s,s:s%}", "type", "text", "text", text, len);
    if (!b)
        chat_fatal("out of memory");
    return b;
}

/* The merged message k (role already set) gains a part: text (when it still
 * has no blocks and the part has none) or blocks. A text message meeting
 * blocks turns into blocks, its text first. */
static void merge_blocks(llm_message *m, json_t **acc, const char *text, size_t used, const json_t *blocks,
                         const char *ptext, size_t plen)
{
    if (!*acc) {
        *acc = json_array();
        if (!*acc)
            chat_fatal("out of memory");
        if (used > 0)
            json_array_append_new(*acc, text_block(text, used));
    }
    if (blocks)
        json_array_extend(*acc, (json_t *)blocks);
    else
        json_array_append_new(*acc, text_block(ptext, plen));
    m->blocks = *acc;
}

/*
 * The array is followed, in the same allocation, by one flag per message:
 * whether the array owns its content (made here) or borrows it from the
 * history or the new message (a message of one text part, the common case:
 * a long history is not copied once more per turn).
 */
static bool *owned_flags(llm_message *msgs, size_t n)
{
    return (bool *)(void *)(msgs + n);
}

/* A first pass measures each resulting text message, a second builds them:
 * a message of one text part borrows that text, merged neighbours are copied
 * once into a buffer allocated at its final size. A message that holds
 * blocks (or meets a part with blocks) becomes a block array instead: its
 * text is then the text of its blocks. */
size_t context_messages_blocks(const store_message *hist, const json_t *const *hist_blocks, size_t first, size_t n,
                               const char *message, const json_t *message_blocks, llm_message **out)
{
    size_t *size = chat_xcalloc(n - first + 1, sizeof *size);
    size_t *plen = chat_xcalloc(n - first + 1, sizeof *plen); /* each part's text, measured once */
    size_t count = 0;
    const char *last = NULL; /* role of message count - 1 */
    for (size_t i = first; i <= n; i++) {
        const char *content;
        size_t len = 0;
        bool plain;
        const json_t *blocks;
        const char *role = part(hist, hist_blocks, n, message, message_blocks, i, &content, &len, &plain, &blocks);
        plen[i - first] = len;
        if (!role || (count == 0 && role[0] != 'u'))
            continue;
        if (count > 0 && role == last) {
            size[count - 1] += 2 + len; /* "\n\n" + content */
            continue;
        }
        size[count++] = len;
        last = role;
    }
    size_t slots = count ? count : 1;
    llm_message *msgs = chat_xcalloc(1, slots * (sizeof *msgs + sizeof(bool)));
    bool *owned = owned_flags(msgs, slots);
    json_t **acc = chat_xcalloc(slots, sizeof *acc); /* merged block arrays (owned), by message */
    size_t k = 0, used = 0;                          /* message k - 1 holds used bytes of text so far */
    char *buf = NULL;                                /* its text, while it is made here */
    for (size_t i = first; i <= n; i++) {
        const char *content;
        size_t len = plen[i - first];
        bool plain;
        const json_t *blocks;
        const char *role = part(hist, hist_blocks, n, message, message_blocks, i, &content, &len, &plain, &blocks);
        if (!role || (k == 0 && role[0] != 'u'))
            continue;
        if (k > 0 && role == msgs[k - 1].role) {
            llm_message *m = &msgs[k - 1];
            if (blocks || m->blocks) {
                if (m->blocks && !acc[k - 1]) {
                    /* a single borrowed array so far: copy it before extending */
                    acc[k - 1] = json_copy((json_t *)m->blocks);
                    if (!acc[k - 1])
                        chat_fatal("out of memory");
                }
                merge_blocks(m, &acc[k - 1], m->content, used, blocks, content, len);
                continue;
            }
            memcpy(buf + used, "\n\n", 2);
            memcpy(buf + used + 2, content, len);
            used += 2 + len;
            buf[used] = '\0';
            m->content_len = used;
            continue;
        }
        used = len;
        if (size[k] > len) { /* neighbours follow (each adds at least "\n\n"): made here at its final size */
            buf = chat_xmalloc(size[k] + 1);
            if (content)
                memcpy(buf, content, len);
            buf[used] = '\0';
            msgs[k].content = buf;
            owned[k] = true;
        } else {
            msgs[k].content = content ? content : "";
            msgs[k].content_plain = plain; /* borrowed as it is */
        }
        msgs[k].role = role;
        msgs[k].content_len = used;
        msgs[k].blocks = blocks; /* borrowed until the end: copied before a merge extends it */
        k++;
    }
    /* Every block message owns one reference to its array, and its content is the text of its blocks. */
    for (size_t j = 0; j < k; j++) {
        if (!msgs[j].blocks)
            continue;
        if (acc[j]) {
            msgs[j].blocks = acc[j]; /* the merged array: its reference passes to the message */
        } else {
            json_incref((json_t *)msgs[j].blocks);
        }
        if (owned[j])
            free((char *)msgs[j].content);
        msgs[j].content = llm_content_text(msgs[j].blocks);
        msgs[j].content_len = 0;
        msgs[j].content_plain = false;
        owned[j] = true;
    }
    free(acc);
    free(plen);
    free(size);
    *out = msgs;
    return count;
}

void context_messages_detach(llm_message *msgs, size_t n)
{
    bool *owned = owned_flags(msgs, n ? n : 1);
    for (size_t i = 0; msgs && i < n; i++) {
        if (owned[i])
            continue;
        size_t len = msgs[i].content_len ? msgs[i].content_len : strlen(msgs[i].content);
        char *copy = chat_xmalloc(len + 1);
        memcpy(copy, msgs[i].content, len + 1);
        msgs[i].content = copy;
        owned[i] = true;
    }
}

size_t context_messages(const store_message *hist, size_t first, size_t n, const char *message, llm_message **out)
{
    return context_messages_blocks(hist, NULL, first, n, message, NULL, out);
}

void context_messages_free(llm_message *msgs, size_t n)
{
    if (!msgs)
        return;
    bool *owned = owned_flags(msgs, n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        if (owned[i])
            free((char *)msgs[i].content);
        json_decref((json_t *)msgs[i].blocks);
    }
    free(msgs);
}
