/*
 * openai.c: the OpenAI Chat Completions wire format and the servers that copy
 * it (Groq, vLLM, Ollama's /v1, llama.cpp's llama-server), docs/PROTOCOLS.md
 * section B, behind llm_provider_ops (call_internal.h).
 *
 * Request: POST {base_url}/chat/completions (base_url includes the /v1, as the
 * SDKs take it), "Authorization: Bearer <key>" unless the key is empty, and a
 * JSON body {model, messages:[{role:"system"}?, {role, content}...],
 * max_tokens|max_completion_tokens, stream, stream_options?}.
 *
 * Replies, read the way the compatible servers really send them (B3, B4, B7):
 * - non-streaming: choices[0].message.content, finish_reason, usage;
 * - streaming: data-only SSE; "[DONE]" is compared before any JSON parsing;
 *   text from choices[0].delta.content (choices may be empty); the
 *   finish_reason from whichever chunk has it; usage from the `choices: []`
 *   usage chunk, Groq's x_groq.usage in the finish chunk, or vLLM's usage on
 *   every chunk (each report overwrites: the last one wins);
 * - the end: a finish_reason makes the reply complete (llm_parse.finished),
 *   and [DONE] after it ends the stream (llm_parse.complete). Ollama may close
 *   without [DONE], and a stream may be cut before its usage chunk: both are
 *   successes (usage -1 when never reported). Without a finish_reason the
 *   reply is truncated, even if [DONE] came: old llama.cpp sends its error as
 *   a non-standard `error:` SSE field, which SSE parsing drops, then [DONE];
 *   Ollama loses a mid-stream error's text and just stops;
 * - in-stream errors: `data: {"error":{...}}` (OpenAI, vLLM which then sends
 *   [DONE], new llama.cpp) and `event: error` (which the openai SDK also
 *   accepts) end the call with LLM_ERR_STREAM;
 * - error bodies (B5, B7): {"error":{message,type,param,code}} with code a
 *   string, an integer or null; vLLM's flat {"object":"error","message",...};
 *   {"error":"text"}; FastAPI's {"detail":...}; plain text or HTML.
 *
 * stop_reason keeps the provider's finish_reason value (stop, length,
 * content_filter, tool_calls...), not mapped to Anthropic's vocabulary.
 * Usage: input_tokens = prompt_tokens - prompt_tokens_details.cached_tokens
 * (the uncached input, Anthropic's meaning), cache_read_tokens = cached_tokens,
 * output_tokens = completion_tokens; cache writes are not reported (-1).
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
/* Longest provider error message, type or code kept. */
#define MESSAGE_MAX 1024
#define FIELD_MAX 256

static void oom_json(void)
{
    chat_fatal("out of memory building JSON");
}

/* ---- the request ---- */

static char *build_url(const llm_provider *p)
{
    size_t n = strlen(p->base_url);
    while (n > 0 && p->base_url[n - 1] == '/')
        n--; /* "https://host/v1/" and "https://host/v1" mean the same */
    if (n == 0 || !llm_header_safe(p->base_url))
        return NULL;
    return chat_xasprintf("%.*s/chat/completions", (int)n, p->base_url);
}

static struct curl_slist *build_headers(const llm_provider *p, bool stream)
{
    const char *key = p->api_key ? p->api_key : "";
    if (!llm_header_safe(key))
        return NULL;
    struct curl_slist *h = NULL;
    if (*key) {
        /* No key, no header: local servers (Ollama, llama.cpp, vLLM) need none,
         * and "Bearer " with nothing after it is rejected by some proxies. */
        char *line = chat_xasprintf("Authorization: Bearer %s", key);
        h = llm_slist_add(h, line);
        memset(line, 0, strlen(line)); /* do not leave the key in freed memory */
        free(line);
    }
    h = llm_slist_add(h, "content-type: application/json");
    h = llm_slist_add(h, stream ? "accept: text/event-stream" : "accept: application/json");
    /* curl would otherwise send "Expect: 100-continue" for large bodies and
     * wait a round trip (or a second) for a 100 the API does not need. */
    h = llm_slist_add(h, "Expect:");
    return h;
}

/* The body's name for the output-token limit (provider.h), NULL if not a known one. */
static const char *max_tokens_field(const llm_provider *p)
{
    const char *f = p->max_tokens_field;
    if (!f || !*f || strcmp(f, "max_tokens") == 0)
        return "max_tokens";
    if (strcmp(f, "max_completion_tokens") == 0)
        return "max_completion_tokens";
    return NULL;
}

/* Appends {"role","content"} to msgs; false if a string is not valid UTF-8. */
static bool add_message(json_t *msgs, const char *role, const char *content)
{
    json_t *r = json_string(role);
    json_t *c = json_string(content);
    if (!r || !c) {
        json_decref(r);
        json_decref(c);
        return false;
    }
    json_t *o = json_object();
    if (!o)
        oom_json();
    json_object_set_new(o, "role", r);
    json_object_set_new(o, "content", c);
    json_array_append_new(msgs, o);
    return true;
}

/*
 * The body: {"model", "messages":[{"role":"system"} (only when the system
 * prompt is non-empty), {"role","content"}...], "<max_tokens_field>",
 * "stream", "stream_options":{"include_usage":true} (only when streaming:
 * OpenAI rejects stream_options otherwise)}.
 * NULL if a field is missing, the max-tokens field name is unknown, or a
 * string is not valid UTF-8.
 */
static char *build_body(const llm_provider *p, const llm_request *req)
{
    char *out = NULL;
    json_t *root = NULL, *msgs = NULL;
    const char *field = max_tokens_field(p);
    if (!field || !req->model || !*req->model || req->max_tokens <= 0 || req->n_messages == 0 || !req->messages)
        goto out;
    root = json_object();
    msgs = json_array();
    if (!root || !msgs)
        oom_json();
    json_t *model = json_string(req->model);
    if (!model)
        goto out;
    json_object_set_new(root, "model", model);
    if (req->system && *req->system && !add_message(msgs, "system", req->system))
        goto out;
    for (size_t i = 0; i < req->n_messages; i++) {
        const llm_message *m = &req->messages[i];
        if (!m->role || !m->content || !add_message(msgs, m->role, m->content))
            goto out;
    }
    json_object_set_new(root, "messages", msgs);
    msgs = NULL;
    json_object_set_new(root, field, json_integer(req->max_tokens));
    json_object_set_new(root, "stream", json_boolean(req->stream));
    if (req->stream) {
        /* Without it OpenAI sends no usage at all in a stream (B4). */
        json_t *so = json_pack("{s:b}", "include_usage", 1);
        if (!so)
            oom_json();
        json_object_set_new(root, "stream_options", so);
    }
    out = json_dumps(root, JSON_COMPACT);
    if (!out)
        oom_json();
out:
    json_decref(msgs);
    json_decref(root);
    return out;
}

/* ---- reading replies ---- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void set_str(char **dst, const char *v)
{
    if (!v)
        return;
    free(*dst);
    *dst = llm_strndup_utf8(v, FIELD_MAX);
}

/* An error code as text: a string as is, an integer (vLLM, llama.cpp) in
 * decimal; NULL for null, absent or anything else. Heap. */
static char *code_text(json_t *code)
{
    if (json_is_string(code) && json_string_length(code) > 0)
        return llm_strndup_utf8(json_string_value(code), FIELD_MAX);
    if (json_is_integer(code))
        return chat_xasprintf("%lld", (long long)json_integer_value(code));
    return NULL;
}

/*
 * Overwrites the usage fields an OpenAI usage object reports (each report is
 * a running total, never a delta: the last one wins). Groq's x_groq.usage and
 * vLLM's per-chunk usage have the same fields.
 */
static void read_usage(llm_parse *st, json_t *u)
{
    if (!json_is_object(u))
        return;
    json_t *prompt = json_object_get(u, "prompt_tokens");
    json_t *completion = json_object_get(u, "completion_tokens");
    json_t *cached = json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
    int64_t c = json_is_integer(cached) ? json_integer_value(cached) : -1;
    if (json_is_integer(prompt)) {
        int64_t pt = json_integer_value(prompt);
        /* Cached tokens are part of prompt_tokens; Anthropic's input_tokens
         * are the uncached ones only, and callers expect that meaning. */
        st->usage.input_tokens = c >= 0 && c <= pt ? pt - c : pt;
    }
    if (c >= 0)
        st->usage.cache_read_tokens = c;
    if (json_is_integer(completion))
        st->usage.output_tokens = json_integer_value(completion);
}

/*
 * Records an error reported after a 200 (a data chunk with "error", an
 * `event: error`, or a 200 JSON body that is an error): err is the value of
 * "error" (object or string) or NULL when the payload was not JSON.
 */
static void fail_with_error(llm_parse *st, json_t *err, const char *raw, size_t len)
{
    const char *type = NULL, *msg = NULL;
    char *code = NULL;
    if (json_is_object(err)) {
        type = jstr(err, "type");
        msg = jstr(err, "message");
        code = code_text(json_object_get(err, "code"));
    } else if (json_is_string(err)) {
        msg = json_string_value(err);
    }
    char *m = msg && *msg ? llm_strndup_utf8(msg, MESSAGE_MAX) : llm_excerpt(raw, len, EXCERPT_MAX);
    if (!*m) {
        free(m);
        m = chat_xstrdup("the provider reported an error without a message");
    }
    char *t = type && *type ? llm_strndup_utf8(type, FIELD_MAX) : chat_xstrdup("api_error");
    llm_parse_fail(st, LLM_ERR_STREAM, t, "%s", m);
    if (st->err == LLM_ERR_STREAM && !st->err_code) {
        st->err_code = code;
        code = NULL;
    }
    free(t);
    free(m);
    free(code);
}

/* Takes text, finish_reason, model and usage from one chunk or body; returns emit's verdict. */
static int read_choice(llm_parse *st, json_t *choice, const char *what)
{
    int rc = 0;
    json_t *content = json_object_get(json_object_get(choice, what), "content");
    if (json_is_string(content) && json_string_length(content) > 0)
        rc = st->emit(st->emit_ud, json_string_value(content), json_string_length(content));
    const char *fr = jstr(choice, "finish_reason");
    if (fr && *fr) {
        set_str(&st->stop_reason, fr);
        st->finished = true;
    }
    return rc;
}

/* The first choice (n is always 1 for us), NULL if there is none. */
static json_t *first_choice(json_t *j)
{
    json_t *choices = json_object_get(j, "choices");
    json_t *c = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
    return json_is_object(c) ? c : NULL;
}

static int on_sse_event(llm_parse *st, const char *type, const char *data, size_t len)
{
    int rc = 0;
    json_t *j = NULL;
    json_error_t je;

    if (st->complete)
        return 0; /* after [DONE] nothing belongs to this reply any more */
    if (strcmp(type, "error") == 0) {
        /* The other form of in-stream error the openai SDK accepts. */
        j = json_loadb(data, len, 0, &je);
        json_t *e = json_object_get(j, "error");
        fail_with_error(st, e ? e : j, data, len);
        rc = 1;
        goto out;
    }
    if (strcmp(type, "message") != 0)
        return 0; /* chunks are data-only; an event type we do not know is skipped */
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        if (!st->finished) {
            llm_parse_fail(st, LLM_ERR_TRUNCATED, "truncated", "the stream ended ([DONE]) without a finish_reason");
            return 1;
        }
        st->complete = true;
        return 0;
    }
    j = json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "malformed JSON in a stream chunk: %s",
                       j ? "not an object" : je.text);
        rc = 1;
        goto out;
    }
    json_t *err = json_object_get(j, "error");
    if (err && !json_is_null(err)) {
        fail_with_error(st, err, data, len);
        rc = 1;
        goto out;
    }
    if (!st->model)
        set_str(&st->model, jstr(j, "model")); /* the same on every chunk */
    read_usage(st, json_object_get(j, "usage"));
    read_usage(st, json_object_get(json_object_get(j, "x_groq"), "usage"));
    json_t *c = first_choice(j);
    if (c)
        rc = read_choice(st, c, "delta");
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
    json_t *err = json_object_get(j, "error");
    if (err && !json_is_null(err)) {
        fail_with_error(st, err, body, len);
        goto out;
    }
    json_t *c = first_choice(j);
    if (!c) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "response has no choices");
        goto out;
    }
    set_str(&st->model, jstr(j, "model"));
    read_usage(st, json_object_get(j, "usage"));
    /* content may be null (a refusal or tool calls): an empty reply, not an error. */
    if (read_choice(st, c, "message") != 0)
        goto out; /* the sink recorded why */
    st->complete = true;
    rc = LLM_OK;
out:
    json_decref(j);
    return st->err != LLM_OK ? st->err : rc;
}

/* A message from FastAPI's {"detail": ...}: a string, or the first item's
 * "msg" of a validation error list, else the JSON itself (heap or NULL). */
static char *detail_message(json_t *d)
{
    if (json_is_string(d))
        return json_string_length(d) ? llm_strndup_utf8(json_string_value(d), MESSAGE_MAX) : NULL;
    if (!d || json_is_null(d))
        return NULL;
    const char *m = jstr(json_is_array(d) ? json_array_get(d, 0) : d, "msg");
    if (m && *m)
        return llm_strndup_utf8(m, MESSAGE_MAX);
    char *dump = json_dumps(d, JSON_COMPACT);
    if (!dump)
        return NULL;
    char *ex = llm_excerpt(dump, strlen(dump), EXCERPT_MAX);
    free(dump);
    return ex;
}

/*
 * B5/B7 error bodies: {"error":{"message","type","param","code"}} (code a
 * string, an integer or null), the flat {"object":"error","message","type",
 * "code"}, {"error":"text"}, {"detail":...}, and anything not JSON (an
 * excerpt). The type defaults to the A7 name for the status, so callers see
 * the same vocabulary whichever provider failed. A 429 whose type or code is
 * insufficient_quota is a billing state, not a rate limit: never retried.
 */
static void parse_error(int http_status, const char *body, size_t len, llm_error_info *out)
{
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *j = len ? json_loadb(body, len, 0, &je) : NULL;
    const char *type = NULL;
    char *msg = NULL;
    if (json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        json_t *holder = json_is_object(e) ? e : j; /* the flat shape has the fields at the top */
        if (json_is_string(e) && json_string_length(e))
            msg = llm_strndup_utf8(json_string_value(e), MESSAGE_MAX);
        const char *m = jstr(holder, "message");
        if (!msg && m && *m)
            msg = llm_strndup_utf8(m, MESSAGE_MAX);
        type = jstr(holder, "type");
        out->code = code_text(json_object_get(holder, "code"));
        if (!msg)
            msg = detail_message(json_object_get(j, "detail"));
    }
    out->type =
        type && *type ? llm_strndup_utf8(type, FIELD_MAX) : chat_xstrdup(llm_error_type_for_status(http_status));
    if (http_status == 429 &&
        (strcmp(out->type, "insufficient_quota") == 0 || (out->code && strcmp(out->code, "insufficient_quota") == 0)))
        out->no_retry = true;
    if (msg) {
        out->message = msg;
    } else {
        out->message = llm_http_error_text(http_status, body, len);
    }
    json_decref(j);
}

const llm_provider_ops llm_openai_ops = {
    .build_url = build_url,
    .build_headers = build_headers,
    .build_body = build_body,
    .on_sse_event = on_sse_event,
    .parse_json_body = parse_json_body,
    .parse_error = parse_error,
    .request_id_header = "x-request-id",
    .end_marker = "finish_reason",
};
