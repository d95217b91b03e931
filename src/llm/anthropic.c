/*
 * anthropic.c: the Anthropic Messages API wire format (docs/PROTOCOLS.md section A),
 * behind llm_provider_ops (call_internal.h).
 *
 * Request: POST {base_url}/v1/messages with x-api-key, anthropic-version and a
 * JSON body {model, max_tokens, system?, messages:[{role, content}], stream?}.
 * With prompt caching on, cache_control breakpoints are added to that body
 * (llm_anthropic_mark_cache; the strings they go on become one-block arrays).
 * Reply: a JSON Message (A5), or an SSE stream routed on the SSE event name,
 * never on the JSON "type" (A6), or an error body (A7).
 *
 * Nothing here touches curl transfers or the loop: every function turns bytes
 * into an llm_parse or an llm_error_info, so tests feed it canned bytes.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "llm/call_internal.h"

/* Longest excerpt of a non-JSON error body put into a message. */
#define EXCERPT_MAX 200
/* The API rejects a request with more cache_control blocks than this (A4). */
#define MAX_BREAKPOINTS 4

static char *build_url(const llm_provider *p)
{
    size_t n = strlen(p->base_url);
    while (n > 0 && p->base_url[n - 1] == '/')
        n--; /* "https://host/" and "https://host" mean the same */
    if (n == 0 || !llm_header_safe(p->base_url))
        return NULL;
    return chat_xasprintf("%.*s/v1/messages", (int)n, p->base_url);
}

static struct curl_slist *build_headers(const llm_provider *p, bool stream)
{
    const char *version = p->version && *p->version ? p->version : "2023-06-01";
    if (!*p->api_key || !llm_header_safe(p->api_key) || !llm_header_safe(version))
        return NULL;
    struct curl_slist *h = NULL;
    char *line = chat_xasprintf("x-api-key: %s", p->api_key);
    h = llm_slist_add(h, line);
    memset(line, 0, strlen(line)); /* do not leave the key in freed memory */
    free(line);
    line = chat_xasprintf("anthropic-version: %s", version);
    h = llm_slist_add(h, line);
    free(line);
    h = llm_slist_add(h, "content-type: application/json");
    h = llm_slist_add(h, stream ? "accept: text/event-stream" : "accept: application/json");
    /* curl would otherwise send "Expect: 100-continue" for large bodies and
     * wait a round trip (or a second) for a 100 the API does not need. */
    h = llm_slist_add(h, "Expect:");
    return h;
}

static void oom_json(void)
{
    chat_fatal("out of memory building JSON");
}

/* ---- prompt caching (A4) ---- */

/* Unicode characters in a UTF-8 string (jansson only holds valid UTF-8). */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += (*p & 0xC0) != 0x80;
    return n;
}

/* Characters of text in a system or content value: a string, or the text of
 * the text blocks of a block array. Other blocks (images...) are not counted:
 * the estimate then errs on the side of not marking. */
static size_t content_chars(json_t *v)
{
    if (json_is_string(v))
        return utf8_chars(json_string_value(v));
    size_t n = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *b;
        json_array_foreach(v, i, b)
        {
            json_t *t = json_object_get(b, "text");
            if (json_is_string(t))
                n += utf8_chars(json_string_value(t));
        }
    }
    return n;
}

/* Estimated tokens of n characters: n / 4, rounded up. */
static int64_t est_tokens(size_t chars)
{
    return (int64_t)((chars + 3) / 4);
}

/* cache_control markers in the blocks of an array (system, content, tools). */
static int markers_in(json_t *arr)
{
    int n = 0;
    size_t i;
    json_t *b;
    if (json_is_array(arr))
        json_array_foreach(arr, i, b) n += json_object_get(b, "cache_control") != NULL;
    return n;
}

static int count_markers(json_t *body)
{
    /* The top-level automatic marker: counted, as the API may count it. */
    int n = json_object_get(body, "cache_control") != NULL;
    n += markers_in(json_object_get(body, "tools"));
    n += markers_in(json_object_get(body, "system"));
    json_t *msgs = json_object_get(body, "messages");
    size_t i;
    json_t *m;
    if (json_is_array(msgs))
        json_array_foreach(msgs, i, m) n += markers_in(json_object_get(m, "content"));
    return n;
}

static json_t *ephemeral(void)
{
    json_t *cc = json_pack("{s:s}", "type", "ephemeral");
    if (!cc)
        oom_json();
    return cc;
}

/*
 * Puts a breakpoint at the end of holder[key] (a system or content value).
 * Returns false, changing nothing, if it is already marked there or cannot be
 * (absent, empty, an empty text block, not a block).
 */
static bool mark_end(json_t *holder, const char *key)
{
    json_t *v = json_object_get(holder, key);
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return false; /* the API rejects cache_control on an empty text block */
        json_t *blocks = json_pack("[{s:s,s:O,s:o}]", "type", "text", "text", v, "cache_control", ephemeral());
        if (!blocks)
            oom_json();
        json_object_set_new(holder, key, blocks); /* keeps the key's place in the object */
        return true;
    }
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    json_t *last = n ? json_array_get(v, n - 1) : NULL;
    if (!json_is_object(last) || json_object_get(last, "cache_control"))
        return false;
    const char *type = json_string_value(json_object_get(last, "type"));
    json_t *text = json_object_get(last, "text");
    if (type && strcmp(type, "text") == 0 && (!json_is_string(text) || json_string_length(text) == 0))
        return false;
    json_object_set_new(last, "cache_control", ephemeral());
    return true;
}

int llm_anthropic_mark_cache(json_t *body, int64_t min_tokens)
{
    if (!json_is_object(body))
        return 0;
    if (min_tokens <= 0)
        min_tokens = LLM_CACHE_MIN_TOKENS_DEFAULT;
    int slots = MAX_BREAKPOINTS - count_markers(body);
    int added = 0;
    json_t *sys = json_object_get(body, "system");
    size_t sys_chars = content_chars(sys);
    json_t *msgs = json_object_get(body, "messages");
    size_t n = json_is_array(msgs) ? json_array_size(msgs) : 0;

    /* 1. The end of the previous turn: the last assistant message before the final one. */
    if (slots > 0 && n >= 2) {
        size_t at = n - 1;
        for (size_t i = n - 1; i-- > 0;) {
            const char *role = json_string_value(json_object_get(json_array_get(msgs, i), "role"));
            if (role && strcmp(role, "assistant") == 0) {
                at = i;
                break;
            }
        }
        if (at < n - 1) {
            size_t chars = sys_chars;
            for (size_t i = 0; i <= at; i++)
                chars += content_chars(json_object_get(json_array_get(msgs, i), "content"));
            if (est_tokens(chars) >= min_tokens && mark_end(json_array_get(msgs, at), "content")) {
                added++;
                slots--;
            }
        }
    }
    /* 2. The system prompt on its own. */
    if (slots > 0 && sys && est_tokens(sys_chars) >= min_tokens && mark_end(body, "system"))
        added++;
    return added;
}

/* ---- the request body ---- */

/*
 * The body: {"model", "max_tokens", "system" (only when non-empty),
 * "messages":[{"role","content"}], "stream":true (only when streaming)}, with
 * cache_control breakpoints when p->prompt_caching is on.
 * NULL if a field is missing or a string is not valid UTF-8.
 */
static char *build_body(const llm_provider *p, const llm_request *req)
{
    char *out = NULL;
    json_t *root = NULL;
    if (!req->model || !*req->model || req->max_tokens <= 0 || req->n_messages == 0 || !req->messages)
        goto out;
    root = json_object();
    json_t *msgs = json_array();
    if (!root || !msgs)
        oom_json();
    json_t *model = json_string(req->model);
    if (!model)
        goto out_msgs;
    json_object_set_new(root, "model", model);
    json_object_set_new(root, "max_tokens", json_integer(req->max_tokens));
    if (req->system && *req->system) {
        json_t *sys = json_string(req->system);
        if (!sys)
            goto out_msgs;
        json_object_set_new(root, "system", sys);
    }
    for (size_t i = 0; i < req->n_messages; i++) {
        const llm_message *m = &req->messages[i];
        if (!m->role || !m->content)
            goto out_msgs;
        json_t *role = json_string(m->role);
        json_t *content = json_string(m->content);
        if (!role || !content) {
            json_decref(role);
            json_decref(content);
            goto out_msgs;
        }
        json_t *o = json_object();
        if (!o)
            oom_json();
        json_object_set_new(o, "role", role);
        json_object_set_new(o, "content", content);
        json_array_append_new(msgs, o);
    }
    json_object_set_new(root, "messages", msgs);
    msgs = NULL;
    if (req->stream)
        json_object_set_new(root, "stream", json_true());
    if (p->prompt_caching)
        (void)llm_anthropic_mark_cache(root, p->cache_min_tokens);
    out = json_dumps(root, JSON_COMPACT);
    if (!out)
        oom_json();
out_msgs:
    json_decref(msgs);
out:
    json_decref(root);
    return out;
}

/* ---- reading replies ---- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Overwrites each usage field the object reports (cumulative totals, A6). */
static void read_usage(llm_parse *st, json_t *u)
{
    if (!json_is_object(u))
        return;
    json_t *v;
    if (json_is_integer(v = json_object_get(u, "input_tokens")))
        st->usage.input_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(u, "output_tokens")))
        st->usage.output_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(u, "cache_read_input_tokens")))
        st->usage.cache_read_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(u, "cache_creation_input_tokens")))
        st->usage.cache_write_tokens = json_integer_value(v);
}

static void set_str(char **dst, const char *v)
{
    if (!v)
        return;
    free(*dst);
    *dst = llm_strndup_utf8(v, 256);
}

/* Parses one event's JSON; on failure records LLM_ERR_PROTOCOL and returns NULL. */
static json_t *event_json(llm_parse *st, const char *type, const char *data, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "malformed JSON in the %s event: %s", type,
                       j ? "not an object" : je.text);
        return NULL;
    }
    return j;
}

static int on_sse_event(llm_parse *st, const char *type, const char *data, size_t len)
{
    int rc = 0;
    json_t *j = NULL;

    if (strcmp(type, "ping") == 0)
        return 0;
    if (strcmp(type, "error") == 0) {
        /* The provider gave up after its 200: report its error as it said it. */
        json_error_t je;
        j = json_loadb(data, len, 0, &je);
        json_t *e = json_object_get(j, "error");
        const char *et = jstr(e, "type");
        const char *em = jstr(e, "message");
        char *ex = em ? llm_strndup_utf8(em, 1024) : llm_excerpt(data, len, EXCERPT_MAX);
        llm_parse_fail(st, LLM_ERR_STREAM, et ? et : "api_error", "%s", ex);
        free(ex);
        rc = 1;
        goto out;
    }
    if (strcmp(type, "message_start") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *m = json_object_get(j, "message");
        set_str(&st->model, jstr(m, "model"));
        read_usage(st, json_object_get(m, "usage"));
    } else if (strcmp(type, "content_block_start") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *idx = json_object_get(j, "index");
        st->block_index = json_is_integer(idx) ? json_integer_value(idx) : -1;
        const char *bt = jstr(json_object_get(j, "content_block"), "type");
        st->block_is_text = bt && strcmp(bt, "text") == 0;
    } else if (strcmp(type, "content_block_delta") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *idx = json_object_get(j, "index");
        json_t *d = json_object_get(j, "delta");
        const char *dt = jstr(d, "type");
        json_t *text = json_object_get(d, "text");
        /* Only text_delta of text blocks; a delta for a block whose start we
         * did not see is taken as text only if it says text_delta. */
        bool known = json_is_integer(idx) && json_integer_value(idx) == st->block_index;
        if (dt && strcmp(dt, "text_delta") == 0 && json_is_string(text) && (!known || st->block_is_text))
            rc = st->emit(st->emit_ud, json_string_value(text), json_string_length(text));
    } else if (strcmp(type, "message_delta") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        set_str(&st->stop_reason, jstr(json_object_get(j, "delta"), "stop_reason"));
        read_usage(st, json_object_get(j, "usage"));
    } else if (strcmp(type, "message_stop") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        st->complete = true;
    } else if (strcmp(type, "content_block_stop") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        st->block_index = -1;
        st->block_is_text = false;
    }
    /* Anything else: a new event type we do not know yet; ignore it (A6). */
out:
    json_decref(j);
    return rc;
}

static llm_status parse_json_body(llm_parse *st, const char *body, size_t len)
{
    llm_status rc = LLM_ERR_PROTOCOL;
    json_t *j = llm_load_object(st, body, len);
    if (!j)
        goto out;
    json_t *content = json_object_get(j, "content");
    if (!json_is_array(content)) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "response has no content array");
        goto out;
    }
    set_str(&st->model, jstr(j, "model"));
    set_str(&st->stop_reason, jstr(j, "stop_reason"));
    read_usage(st, json_object_get(j, "usage"));
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *bt = jstr(b, "type");
        json_t *text = json_object_get(b, "text");
        if (bt && strcmp(bt, "text") == 0 && json_is_string(text) &&
            st->emit(st->emit_ud, json_string_value(text), json_string_length(text)) != 0)
            goto out; /* the sink recorded why */
    }
    st->complete = true;
    rc = LLM_OK;
out:
    json_decref(j);
    return rc;
}

/*
 * A7 error bodies: {"type":"error","error":{"type","message","details"?}}.
 * Also accepted, as proxies and compatible servers send them: {"error":"text"},
 * {"message":...}, {"detail":...}, and anything not JSON (an excerpt).
 */
static void parse_error(int http_status, const char *body, size_t len, llm_error_info *out)
{
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *j = len ? json_loadb(body, len, 0, &je) : NULL;
    const char *type = NULL, *msg = NULL;
    if (json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        if (json_is_object(e)) {
            type = jstr(e, "type");
            msg = jstr(e, "message");
            const char *code = jstr(json_object_get(e, "details"), "error_code");
            /* A spend cap: retrying cannot help until someone raises it. */
            if (code && strcmp(code, "enforced_spend_limit_reached") == 0)
                out->no_retry = true;
            if (code && *code)
                out->code = llm_strndup_utf8(code, 256);
        } else if (json_is_string(e)) {
            msg = json_string_value(e);
        }
        if (!msg)
            msg = jstr(j, "message");
        if (!msg)
            msg = jstr(j, "detail");
    }
    out->type = chat_xstrdup(type && *type ? type : llm_error_type_for_status(http_status));
    if (msg && *msg) {
        out->message = llm_strndup_utf8(msg, 1024);
    } else {
        out->message = llm_http_error_text(http_status, body, len);
    }
    json_decref(j);
}

const llm_provider_ops llm_anthropic_ops = {
    .build_url = build_url,
    .build_headers = build_headers,
    .build_body = build_body,
    .on_sse_event = on_sse_event,
    .parse_json_body = parse_json_body,
    .parse_error = parse_error,
    .request_id_header = "request-id",
    .end_marker = "message_stop",
};
