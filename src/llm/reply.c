/*
 * reply.c: builds a reply's canonical content (llm/content.h) and its event
 * stream from what a provider parser reads, the same way for every provider
 * (contract in call_internal.h, "building the reply's content and events").
 *
 * One block is open at a time. Its text, thinking or argument JSON is
 * accumulated in st->acc and the block is appended to st->content when it
 * closes, so the position it gets is the index its events carried. Text goes
 * to st->emit as it arrives (the caller's reply text) and every piece to
 * st->event. A tool call's arguments are parsed when its block closes; the
 * LLM_JSON_TOOL call of a json_via_tool request is built as a text block whose
 * text is the argument JSON, so structured output reads the same whether the
 * model has a native mode or not.
 *
 * Limits: everything kept (text, arguments, ids, names, signatures, and a
 * fixed cost per block) is counted against st->max_bytes; passing it fails the
 * reply with LLM_ERR_PROTOCOL.
 *
 * Thread: pure functions over an llm_parse, any thread.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "llm/call_internal.h"

/* What opening a block counts against the cap, whatever it holds. */
#define BLOCK_COST 16

static void oom(void)
{
    chat_fatal("out of memory building a reply");
}

static json_t *jchk(json_t *v)
{
    if (!v)
        oom();
    return v;
}

/* Counts n more bytes against the cap; false (failure recorded) past it. */
static bool count(llm_parse *st, size_t n)
{
    st->content_bytes += n;
    if (st->max_bytes && st->content_bytes > st->max_bytes) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "reply content exceeds max_response_bytes=%zu",
                       st->max_bytes);
        return false;
    }
    return true;
}

static void acc_append(llm_parse *st, const char *s, size_t n)
{
    if (st->acc_len + n + 1 > st->acc_cap) {
        size_t cap = st->acc_cap ? st->acc_cap : 256;
        while (cap < st->acc_len + n + 1)
            cap *= 2;
        st->acc = chat_xrealloc(st->acc, cap);
        st->acc_cap = cap;
    }
    if (n)
        memcpy(st->acc + st->acc_len, s, n);
    st->acc_len += n;
    st->acc[st->acc_len] = '\0';
}

static int next_index(const llm_parse *st)
{
    return st->content ? (int)json_array_size(st->content) : 0;
}

/* True if content already holds a tool_use block with this id: the ids of one
 * message tell its calls apart (llm_content_check refuses a repeat). */
static bool id_taken(const llm_parse *st, const char *id)
{
    size_t i;
    json_t *b;
    json_array_foreach(st->content, i, b)
    {
        const char *t = json_string_value(json_object_get(b, "type"));
        const char *bid = json_string_value(json_object_get(b, "id"));
        if (t && bid && strcmp(t, "tool_use") == 0 && strcmp(bid, id) == 0)
            return true;
    }
    return false;
}

static void append_block(llm_parse *st, json_t *block)
{
    if (!st->content)
        st->content = jchk(json_array());
    json_array_append_new(st->content, block);
}

static int send_event(llm_parse *st, llm_event_kind kind, const char *id, const char *name, const char *data,
                      size_t len)
{
    if (!st->event)
        return 0;
    llm_event ev = { .kind = kind, .index = next_index(st), .id = id, .name = name, .data = data, .len = len };
    return st->event(st->emit_ud, &ev);
}

/* Text of the reply: to emit (the caller's text), then as a TEXT event. */
static int send_text(llm_parse *st, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (st->emit(st->emit_ud, s, n) != 0)
        return 1;
    return send_event(st, LLM_EV_TEXT, NULL, NULL, s, n);
}

static void clear_open(llm_parse *st)
{
    free(st->open_id);
    free(st->open_name);
    free(st->open_sig);
    st->open_id = st->open_name = st->open_sig = NULL;
    st->open_kind = LLM_BLK_NONE;
    st->open_json = false;
    st->acc_len = 0;
    if (st->acc)
        st->acc[0] = '\0';
}

int llm_reply_close(llm_parse *st, bool strict)
{
    llm_block_kind kind = st->open_kind;
    if (kind == LLM_BLK_NONE)
        return 0;
    json_t *block = NULL;
    const char *type = "text";
    const char *stop_data = NULL;
    int rc = 0;
    const char *acc = st->acc ? st->acc : "";
    if (kind == LLM_BLK_TEXT && st->open_json) {
        /* The forced tool's input is the reply: "" means {} as for any tool. */
        if (st->acc_len == 0) {
            acc_append(st, "{}", 2);
            acc = st->acc;
            if (send_text(st, "{}", 2) != 0) {
                clear_open(st);
                return 1;
            }
        }
        json_error_t je;
        json_t *v = chat_json_loadb(acc, st->acc_len, 0, &je);
        bool ok = json_is_object(v), parsed = v != NULL;
        json_decref(v);
        if (!ok && strict) {
            llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "the %s tool's input is not a JSON object: %s",
                           LLM_JSON_TOOL, parsed ? "not an object" : je.text);
            clear_open(st);
            return 1;
        }
        st->json_seen = true;
        block = json_pack("{s:s,s:s%}", "type", "text", "text", acc, st->acc_len);
    } else if (kind == LLM_BLK_TEXT) {
        if (st->acc_len > 0)
            block = json_pack("{s:s,s:s%}", "type", "text", "text", acc, st->acc_len);
        else
            block = NULL; /* no text: no block (nothing was sent about it either) */
        if (!block) {
            clear_open(st);
            return 0;
        }
    } else if (kind == LLM_BLK_THINKING) {
        type = "thinking";
        block = json_pack("{s:s,s:s%}", "type", "thinking", "thinking", acc, st->acc_len);
        if (block && st->open_sig) {
            json_object_set_new(block, "signature", jchk(json_string(st->open_sig)));
            stop_data = st->open_sig;
        }
    } else {
        type = "tool_use";
        json_error_t je;
        json_t *input = st->acc_len ? chat_json_loadb(acc, st->acc_len, 0, &je) : json_object();
        if (!json_is_object(input)) {
            if (strict)
                llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error",
                               "the arguments of tool call %s (%s) are not a JSON object: %s", st->open_id,
                               st->open_name, input ? "not an object" : je.text);
            json_decref(input);
            clear_open(st);
            return strict ? 1 : 0;
        }
        if (id_taken(st, st->open_id)) {
            json_decref(input);
            if (strict)
                llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "two tool calls with the id %s", st->open_id);
            clear_open(st);
            return strict ? 1 : 0;
        }
        block = json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id", st->open_id, "name", st->open_name, "input",
                          input);
        st->tool_seen = true;
    }
    if (!block)
        oom();
    /* The event carries the block's index: send before appending. */
    if (st->event) {
        llm_event ev = { .kind = LLM_EV_BLOCK_STOP,
                         .index = next_index(st),
                         .id = kind == LLM_BLK_TOOL ? st->open_id : NULL,
                         .name = type,
                         .data = stop_data,
                         .len = stop_data ? strlen(stop_data) : 0 };
        /* The block is appended whatever the sink says: it is complete. */
        append_block(st, block);
        ev.index = next_index(st) - 1;
        rc = st->event(st->emit_ud, &ev);
    } else {
        append_block(st, block);
    }
    clear_open(st);
    return rc;
}

int llm_reply_open(llm_parse *st, llm_block_kind kind, const char *id, const char *name)
{
    if (llm_reply_close(st, true) != 0)
        return 1;
    /* Every block costs something, so that a stream of empty blocks is bounded too. */
    if (!count(st, BLOCK_COST))
        return 1;
    if (kind == LLM_BLK_TOOL) {
        if (!id || !*id || !name || !*name) {
            llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "a tool call without %s",
                           !id || !*id ? "an id" : "a name");
            return 1;
        }
        if (!count(st, strlen(id) + strlen(name)))
            return 1;
        if (st->json_via_tool && strcmp(name, LLM_JSON_TOOL) == 0) {
            st->open_kind = LLM_BLK_TEXT;
            st->open_json = true;
            return 0;
        }
        st->open_kind = LLM_BLK_TOOL;
        st->open_id = llm_strndup_utf8(id, strlen(id));
        st->open_name = llm_strndup_utf8(name, strlen(name));
        return send_event(st, LLM_EV_TOOL_START, st->open_id, st->open_name, NULL, 0);
    }
    st->open_kind = kind == LLM_BLK_THINKING ? LLM_BLK_THINKING : LLM_BLK_TEXT;
    return 0;
}

int llm_reply_piece(llm_parse *st, llm_block_kind kind, const char *s, size_t n)
{
    if (kind == LLM_BLK_TOOL) {
        if (st->open_kind != LLM_BLK_TOOL && !st->open_json) {
            llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "tool call arguments outside a tool call");
            return 1;
        }
    } else if (st->open_kind != kind || st->open_json) {
        if (llm_reply_open(st, kind, NULL, NULL) != 0)
            return 1;
    }
    if (n == 0)
        return 0;
    if (!count(st, n))
        return 1;
    acc_append(st, s, n);
    if (st->open_kind == LLM_BLK_TEXT)
        return send_text(st, s, n); /* text, or the forced tool's input shown as text */
    return send_event(st, st->open_kind == LLM_BLK_THINKING ? LLM_EV_THINKING : LLM_EV_TOOL_ARGS, NULL, NULL, s, n);
}

void llm_reply_signature(llm_parse *st, const char *sig, size_t n)
{
    if (st->open_kind != LLM_BLK_THINKING || !count(st, n))
        return;
    /* One signature_delta per block; if more come, they are joined. */
    size_t old = st->open_sig ? strlen(st->open_sig) : 0;
    char *s = chat_xmalloc(old + n + 1);
    if (old)
        memcpy(s, st->open_sig, old);
    memcpy(s + old, sig, n);
    s[old + n] = '\0';
    free(st->open_sig);
    st->open_sig = s;
}

int llm_reply_redacted(llm_parse *st, const char *data)
{
    if (llm_reply_close(st, true) != 0)
        return 1;
    if (!count(st, strlen(data)))
        return 1;
    append_block(st, jchk(json_pack("{s:s,s:s}", "type", "redacted_thinking", "data", data)));
    if (!st->event)
        return 0;
    llm_event ev = { .kind = LLM_EV_BLOCK_STOP,
                     .index = next_index(st) - 1,
                     .name = "redacted_thinking",
                     .data = data,
                     .len = strlen(data) };
    return st->event(st->emit_ud, &ev);
}

static bool is_str(json_t *b, const char *key)
{
    return json_is_string(json_object_get(b, key));
}

int llm_reply_block(llm_parse *st, json_t *b)
{
    if (llm_reply_close(st, true) != 0)
        return 1;
    const char *type = json_string_value(json_object_get(b, "type"));
    const char *bad = NULL;
    if (!json_is_object(b) || !type)
        bad = "a content block without a type";
    else if (strcmp(type, "text") == 0 && !is_str(b, "text"))
        bad = "a text block without text";
    else if (strcmp(type, "tool_use") == 0 &&
             (!is_str(b, "id") || !is_str(b, "name") || !json_string_length(json_object_get(b, "id")) ||
              !json_string_length(json_object_get(b, "name")) || !json_is_object(json_object_get(b, "input"))))
        bad = "a tool_use block without an id, a name or an input object";
    else if (strcmp(type, "tool_use") == 0 && id_taken(st, json_string_value(json_object_get(b, "id"))))
        bad = "two tool calls with the same id";
    else if (strcmp(type, "redacted_thinking") == 0 && is_str(b, "data") &&
             !json_string_length(json_object_get(b, "data")))
        bad = "a redacted_thinking block with empty data";
    else if (strcmp(type, "thinking") == 0 &&
             (!is_str(b, "thinking") || (json_object_get(b, "signature") && !is_str(b, "signature"))))
        bad = "a thinking block without its thinking text";
    else if (strcmp(type, "redacted_thinking") == 0 && !is_str(b, "data"))
        bad = "a redacted_thinking block without data";
    if (bad) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "malformed reply: %s", bad);
        return 1;
    }
    char *dump = chat_json_dumps(b, JSON_COMPACT, NULL);
    if (!dump)
        oom();
    bool ok = count(st, strlen(dump));
    free(dump);
    if (!ok)
        return 1;
    if (strcmp(type, "tool_use") == 0 && st->json_via_tool &&
        strcmp(json_string_value(json_object_get(b, "name")), LLM_JSON_TOOL) == 0) {
        char *text = chat_json_dumps(json_object_get(b, "input"), JSON_COMPACT, NULL);
        if (!text)
            oom();
        st->json_seen = true;
        append_block(st, jchk(json_pack("{s:s,s:s}", "type", "text", "text", text)));
        int rc = st->emit(st->emit_ud, text, strlen(text));
        free(text);
        return rc;
    }
    if (strcmp(type, "tool_use") == 0)
        st->tool_seen = true;
    if (strcmp(type, "text") == 0 && json_string_length(json_object_get(b, "text")) == 0)
        return 0; /* an empty text block is dropped, as in a stream */
    if (strcmp(type, "text") != 0 && strcmp(type, "tool_use") != 0 && strcmp(type, "thinking") != 0 &&
        strcmp(type, "redacted_thinking") != 0)
        return 0;                     /* a block type we do not know (server tools...) is skipped, as in a stream */
    append_block(st, json_incref(b)); /* the reply's tree is freed after the parse; nothing changes b */
    if (strcmp(type, "text") == 0) {
        json_t *t = json_object_get(b, "text");
        return st->emit(st->emit_ud, json_string_value(t), json_string_length(t));
    }
    return 0;
}

void llm_reply_stop_reason(llm_parse *st, const char *reason, const char *end_after)
{
    if (!reason)
        return;
    if (st->json_seen && !st->tool_seen && (strcmp(reason, "tool_use") == 0 || strcmp(reason, "tool_calls") == 0))
        reason = end_after;
    free(st->stop_reason);
    st->stop_reason = llm_strndup_utf8(reason, 256);
}
