/*
 * openai_compat.c: POST /v1/chat/completions, the OpenAI Chat Completions shape
 * inbound, so that existing OpenAI SDK clients can use chatd as their base URL.
 *
 * Two modes:
 * - stateless (no session named): the request's messages are the whole
 *   conversation; system/developer messages become the system prompt; nothing is
 *   stored (an ephemeral turn).
 * - server-side memory: the request names a session with the `X-Session-Id`
 *   header or a `session_id` body field. chatd then keeps the history: only the
 *   last user message of the request is the new turn (earlier messages are
 *   ignored; a system message sets the system prompt of a new session). The
 *   `user` field is NOT used as a session: in OpenAI's API it identifies an end
 *   user, who may hold many conversations.
 *
 * Responses and stream chunks follow OpenAI's format exactly (docs/PROTOCOLS.md
 * B3, B4): role chunk, content chunks, finish chunk, the usage chunk with empty
 * `choices` when stream_options.include_usage is set, then `data: [DONE]`.
 * Errors use OpenAI's envelope {"error": {message, type, param, code}}.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/chat_run.h"
#include "api/request.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "guard/auth.h"
#include "core/util.h"

#define MAX_INPUT_MESSAGES API_OA_MAX_MESSAGES

static void oa_error(http_req *r, int status, const char *type, const char *code, const char *param, const char *fmt,
                     ...) __attribute__((format(printf, 6, 7)));

static void oa_error(http_req *r, int status, const char *type, const char *code, const char *param, const char *fmt,
                     ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof msg)
        chat_utf8_trim(msg); /* a sequence cut by the bound */
    http_req_log_set(r, "error_type", json_string(code ? code : type));
    http_reply_json(r, status,
                    json_pack("{s:{s:o,s:s,s:s?,s:s?}}", "error", "message", chat_json_text(msg), "type", type, "param",
                              param, "code", code));
}

/* "end_turn" and friends -> OpenAI's finish_reason vocabulary. */
static const char *finish_reason(const char *stop)
{
    if (!stop || strcmp(stop, "end_turn") == 0 || strcmp(stop, "stop_sequence") == 0 || strcmp(stop, "stop") == 0)
        return "stop";
    if (strcmp(stop, "max_tokens") == 0 || strcmp(stop, "length") == 0 ||
        strcmp(stop, "model_context_window_exceeded") == 0)
        return "length";
    if (strcmp(stop, "tool_use") == 0 || strcmp(stop, "tool_calls") == 0)
        return "tool_calls";
    if (strcmp(stop, "refusal") == 0 || strcmp(stop, "content_filter") == 0)
        return "content_filter";
    return "stop";
}

static json_t *oa_usage(const store_usage *u)
{
    int64_t in = (u->input_tokens > 0 ? u->input_tokens : 0) + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                 (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0);
    int64_t out = u->output_tokens > 0 ? u->output_tokens : 0;
    return json_pack("{s:I,s:I,s:I,s:{s:I},s:{s:I}}", "prompt_tokens", (json_int_t)in, "completion_tokens",
                     (json_int_t)out, "total_tokens", (json_int_t)(in + out), "prompt_tokens_details", "cached_tokens",
                     (json_int_t)(u->cache_read_tokens > 0 ? u->cache_read_tokens : 0), "completion_tokens_details",
                     "reasoning_tokens", (json_int_t)0);
}

/* ---- renderers ---- */

static json_t *chunk(chat_ctx *c, const char *model, json_t *choices)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:n,s:o}", "id", c->completion_id, "object", "chat.completion.chunk",
                          "created", (json_int_t)c->created, "model", model, "system_fingerprint", "choices", choices);
    if (c->include_usage)
        json_object_set_new(o, "usage", json_null());
    return o;
}

static bool send_chunk(chat_ctx *c, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char *line = chat_xasprintf("data: %s\n\n", text ? text : "{}");
    free(text);
    bool full = chat_write(c, line, strlen(line));
    free(line);
    return full;
}

static void oa_json_done(chat_ctx *c, const turn_result *res)
{
    json_t *choices =
        json_pack("[{s:i,s:{s:s,s:s%,s:n},s:n,s:s}]", "index", 0, "message", "role", "assistant", "content", res->text,
                  res->text_len, "refusal", "logprobs", "finish_reason", finish_reason(res->stop_reason));
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:n}", "id", c->completion_id, "object", "chat.completion",
                          "created", (json_int_t)c->created, "model", res->model, "choices", choices, "usage",
                          oa_usage(&res->usage), "system_fingerprint");
    if (*res->session_id)
        json_object_set_new(o, "session_id", json_string(res->session_id));
    http_reply_json(c->r, 200, o);
}

static void oa_error_render(chat_ctx *c, const turn_error *err)
{
    if (c->started) {
        /* In-band, as OpenAI-compatible servers do; the SDK raises APIError. */
        send_chunk(c, json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", err->message, "type",
                                api_openai_type_of(err->status), "param", "code", err->type));
        http_stream_end(c->r);
        return;
    }
    if (err->retry_after_s > 0) {
        char ra[32];
        snprintf(ra, sizeof ra, "%lld", (long long)err->retry_after_s);
        http_add_header(c->r, "Retry-After", ra);
    }
    oa_error(c->r, err->status, api_openai_type_of(err->status), err->type, NULL, "%s", err->message);
}

static const chat_renderer oa_json = { .stream = false, .done = oa_json_done, .error = oa_error_render };

/*
 * The stream starts (headers, then the role chunk) at the first delta, so that
 * a provider failure before it still gets a real HTTP status, which the OpenAI
 * SDKs turn into their typed errors. If the provider stays silent for a
 * heartbeat interval, the stream starts anyway, so that heartbeats keep
 * proxies from cutting the connection.
 */
static void oa_stream_begin(chat_ctx *c)
{
    if (c->started)
        return;
    if (c->start_timer)
        event_del(c->start_timer);
    chat_start_sse(c);
    send_chunk(c, chunk(c, c->model ? c->model : "",
                        json_pack("[{s:i,s:{s:s,s:s,s:n},s:n,s:n}]", "index", 0, "delta", "role", "assistant",
                                  "content", "", "refusal", "logprobs", "finish_reason")));
}

static void on_start_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    oa_stream_begin(arg);
}

static void oa_sse_start(chat_ctx *c, const turn_info *info)
{
    /* Every chunk names the model; the turn reports it here, once. */
    free(c->model);
    c->model = chat_xstrdup(info->model);
    int64_t ms = c->w->cfg->heartbeat_ms;
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    c->start_timer = evtimer_new(c->w->base, on_start_timer, c);
    evtimer_add(c->start_timer, &tv);
}

static bool oa_sse_delta(chat_ctx *c, const char *text, size_t len)
{
    oa_stream_begin(c);
    return send_chunk(c, chunk(c, c->model ? c->model : "",
                               json_pack("[{s:i,s:{s:s%},s:n,s:n}]", "index", 0, "delta", "content", text, len,
                                         "logprobs", "finish_reason")));
}

static void oa_sse_done(chat_ctx *c, const turn_result *res)
{
    oa_stream_begin(c);
    send_chunk(c, chunk(c, res->model,
                        json_pack("[{s:i,s:{},s:n,s:s}]", "index", 0, "delta", "logprobs", "finish_reason",
                                  finish_reason(res->stop_reason))));
    if (c->include_usage) {
        json_t *o = chunk(c, res->model, json_array());
        json_object_set_new(o, "usage", oa_usage(&res->usage));
        send_chunk(c, o);
    }
    chat_write(c, "data: [DONE]\n\n", 14);
    http_stream_end(c->r);
}

static const chat_renderer oa_sse = {
    .stream = true,
    .start = oa_sse_start,
    .delta = oa_sse_delta,
    .done = oa_sse_done,
    .error = oa_error_render,
};

/* ---- request ---- */

/* Text of an OpenAI message content: a string, or an array of {"type":"text","text":...} parts.
 * Returns a heap string, "" for null; NULL (with *why) for an unsupported shape. */
static char *content_text(json_t *content, const char **why)
{
    if (!content || json_is_null(content))
        return chat_xstrdup("");
    if (json_is_string(content))
        return chat_xstrdup(json_string_value(content));
    if (!json_is_array(content)) {
        *why = "content must be a string or an array of text parts";
        return NULL;
    }
    size_t i, total = 0;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        const char *text = json_string_value(json_object_get(part, "text"));
        if (!type || strcmp(type, "text") != 0 || !text) {
            *why = "only text content parts are supported";
            return NULL;
        }
        total += strlen(text) + 1;
    }
    char *out = chat_xmalloc(total + 1), *p = out;
    json_array_foreach(content, i, part)
    {
        const char *text = json_string_value(json_object_get(part, "text"));
        size_t n = strlen(text);
        memcpy(p, text, n);
        p += n;
    }
    *p = '\0';
    return out;
}

struct oa_init {
    bool include_usage;
};

static void init_ctx(chat_ctx *c, void *arg)
{
    struct oa_init *in = arg;
    c->include_usage = in->include_usage;
    c->created = chat_now_ms() / 1000;
    snprintf(c->completion_id, sizeof c->completion_id, "chatcmpl-%s", http_req_id(c->r));
}

/* Records a refusal (OpenAI's envelope) and returns false. */
static bool oa_invalid(api_oa_invalid *why, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool oa_invalid(api_oa_invalid *why, const char *code, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why->message, sizeof why->message, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof why->message)
        chat_utf8_trim(why->message); /* a sequence cut by the bound */
    why->status = 400;
    why->type = "invalid_request_error";
    why->code = code;
    why->param = param;
    return false;
}

void api_oa_request_free(api_oa_request *q)
{
    if (!q)
        return;
    for (size_t k = 0; k < q->n_texts; k++)
        free(q->texts[k]);
    free(q->texts);
    free(q->hist);
    chat_buf_free(&q->system); /* safe on a zeroed buffer too */
    json_decref(q->root);
    memset(q, 0, sizeof *q);
}

bool api_oa_request_parse(const char *body, size_t len, const char *session_header, size_t max_message_bytes,
                          api_oa_request *q, api_oa_invalid *why)
{
    json_error_t jerr;
    memset(q, 0, sizeof *q);
    memset(why, 0, sizeof *why);
    json_t *root = json_loadb(body, len, 0, &jerr);
    size_t n = 0, nhist = 0, nsystem = 0;
    bool ok = false;
    /* The system prompt: every system/developer message, joined by blank lines.
     * Appended as they come (geometric growth: linear in the total, however
     * many parts), at most MAX_MESSAGE_SIZE bytes in all. */
    chat_buf_init(&q->system, max_message_bytes);
    q->root = root;

    if (!root || !json_is_object(root)) {
        oa_invalid(why, "invalid_json", NULL, "the body must be a JSON object: %s", root ? "not an object" : jerr.text);
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    json_t *msgs = json_object_get(root, "messages");
    json_t *stream = json_object_get(root, "stream");
    json_t *sopts = json_object_get(root, "stream_options");
    json_t *mt = json_object_get(root, "max_completion_tokens");
    if (!mt || json_is_null(mt))
        mt = json_object_get(root, "max_tokens");
    if (model && !json_is_null(model) && !json_is_string(model)) {
        oa_invalid(why, "invalid_type", "model", "model must be a string");
        goto out;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0 || json_array_size(msgs) > MAX_INPUT_MESSAGES) {
        oa_invalid(why, "invalid_value", "messages", "messages must be a non-empty array (at most %d)",
                   MAX_INPUT_MESSAGES);
        goto out;
    }
    if (stream && !json_is_null(stream) && !json_is_boolean(stream)) {
        oa_invalid(why, "invalid_type", "stream", "stream must be a boolean");
        goto out;
    }
    if (mt && !json_is_null(mt) &&
        (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000)) {
        oa_invalid(why, "invalid_value", "max_tokens",
                   "max_tokens / max_completion_tokens must be an integer in 1..1000000");
        goto out;
    }
    bool streaming = json_is_true(stream);
    if (sopts && !json_is_null(sopts) && !streaming) {
        oa_invalid(why, "invalid_value", "stream_options", "stream_options is only allowed when stream is true");
        goto out;
    }

    /* Split the messages: system/developer -> system prompt; the rest -> history + last user message. */
    size_t count = json_array_size(msgs);
    q->texts = chat_xcalloc(count, sizeof *q->texts);
    q->hist = chat_xcalloc(count, sizeof *q->hist);
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *why_not = NULL;
        if (!role) {
            oa_invalid(why, "invalid_value", "messages", "messages[%zu].role is required", i);
            goto out;
        }
        char *text = content_text(json_object_get(m, "content"), &why_not);
        if (!text) {
            oa_invalid(why, "invalid_value", "messages", "messages[%zu]: %s", i, why_not);
            goto out;
        }
        q->texts[n++] = text;
        q->n_texts = n;
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            if ((nsystem++ > 0 && chat_buf_append(&q->system, "\n\n", 2) != CHAT_OK) ||
                chat_buf_appends(&q->system, text) != CHAT_OK) {
                oa_invalid(why, "string_above_max_length", "messages",
                           "the system and developer messages (joined, up to messages[%zu]) are longer than "
                           "MAX_MESSAGE_SIZE (%zu bytes)",
                           i, max_message_bytes);
                goto out;
            }
        } else if (strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0) {
            q->hist[nhist].role = role;
            q->hist[nhist].content = text;
            nhist++;
        } else {
            oa_invalid(why, "unsupported_value", "messages",
                       "messages[%zu].role \"%s\" is not supported (system, developer, user, assistant)", i, role);
            goto out;
        }
    }
    if (nhist == 0 || strcmp(q->hist[nhist - 1].role, "user") != 0 || !*q->hist[nhist - 1].content) {
        oa_invalid(why, "invalid_value", "messages", "the last message must be a non-empty user message");
        goto out;
    }
    if (strlen(q->hist[nhist - 1].content) > max_message_bytes) {
        oa_invalid(why, "string_above_max_length", "messages",
                   "the last message is longer than MAX_MESSAGE_SIZE (%zu bytes)", max_message_bytes);
        goto out;
    }

    const char *session = session_header;
    json_t *sid = json_object_get(root, "session_id");
    if (!session && json_is_string(sid))
        session = json_string_value(sid);
    if (session && !chat_valid_id(session)) {
        oa_invalid(why, "invalid_value", "session_id",
                   "invalid session id: use 1 to 128 characters of letters, digits and . _ : -");
        goto out;
    }

    q->n_hist = nhist;
    q->session_id = session;
    q->model = json_is_string(model) ? json_string_value(model) : NULL;
    q->max_tokens = json_is_integer(mt) ? (int)json_integer_value(mt) : 0;
    q->stream = streaming;
    q->include_usage = streaming && json_is_true(json_object_get(sopts, "include_usage"));
    ok = true;
out:
    if (!ok)
        api_oa_request_free(q);
    return ok;
}

void api_oa_turn_params(const api_oa_request *q, turn_params *p)
{
    *p = (turn_params){
        .session_id = q->session_id,
        .history = q->session_id ? NULL : q->hist,
        .n_history = q->session_id ? 0 : q->n_hist - 1,
        .message = q->hist[q->n_hist - 1].content,
        .system_prompt = q->system.len ? chat_buf_str(&q->system) : NULL,
        .model = q->model,
        .max_tokens = q->max_tokens,
        .stream = q->stream,
    };
}

void api_v1_chat_completions(http_req *r, api_env *w, char **params)
{
    (void)params;
    size_t len;
    const char *body = http_req_body(r, &len);
    api_oa_request q;
    api_oa_invalid why;
    if (!api_oa_request_parse(body, len, http_req_header(r, "X-Session-Id"), w->cfg->max_message_bytes, &q, &why)) {
        oa_error(r, why.status, why.type, why.code, why.param, "%s", why.message);
        return;
    }
    turn_params p;
    api_oa_turn_params(&q, &p);
    p.request_id = http_req_id(r);
    p.owner = api_identity(r)->key_id[0] ? api_identity(r)->key_id : NULL;
    p.see_all = api_owner_filter(r) == NULL;
    struct oa_init in = { .include_usage = q.include_usage };
    chat_run(r, w, q.stream ? &oa_sse : &oa_json, API_V1, &p, init_ctx, &in);
    api_oa_request_free(&q);
}
