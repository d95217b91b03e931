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
 *   user, who may hold many conversations. Tool results sent as the last
 *   (tool) messages answer the tool calls of the session's last reply.
 *
 * The request is checked and translated into canonical content and options by
 * openai_request.c (api/request.h). The reply is rendered back from canonical
 * content: text as content (null when the reply is only tool calls), tool_use
 * blocks as tool_calls (arguments as JSON text), thinking as reasoning_content
 * (the convention of vLLM and DeepSeek, which OpenAI-compatible clients read)
 * and, when signed, as thinking_blocks to send back (LiteLLM's convention).
 *
 * Responses and stream chunks follow OpenAI's format exactly (docs/PROTOCOLS.md
 * B3, B4): role chunk, content / reasoning_content / tool_calls delta chunks
 * (a call's first chunk carries index, id, type and name with empty arguments,
 * the next ones pieces of its arguments), finish chunk, the usage chunk with
 * empty `choices` when stream_options.include_usage is set, then `data:
 * [DONE]`. Errors use OpenAI's envelope {"error": {message, type, param, code}}.
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
#include "core/json_out.h"
#include "guard/auth.h"
#include "core/util.h"
#include "llm/content.h"

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

/* "end_turn" and friends -> OpenAI's finish_reason vocabulary. A reply that
 * ended for a tool call is "tool_calls" only when it carries one (structured
 * output through a forced tool comes back as text: "stop"). */
static const char *finish_reason(const char *stop, bool has_calls)
{
    if (!stop || strcmp(stop, "end_turn") == 0 || strcmp(stop, "stop_sequence") == 0 || strcmp(stop, "stop") == 0)
        return "stop";
    if (strcmp(stop, "max_tokens") == 0 || strcmp(stop, "length") == 0 ||
        strcmp(stop, "model_context_window_exceeded") == 0)
        return "length";
    if (strcmp(stop, "tool_use") == 0 || strcmp(stop, "tool_calls") == 0)
        return has_calls ? "tool_calls" : "stop";
    if (strcmp(stop, "refusal") == 0 || strcmp(stop, "content_filter") == 0)
        return "content_filter";
    return "stop";
}

static json_t *oa_usage(const turn_result *res)
{
    const store_usage *u = &res->usage;
    int64_t in = (u->input_tokens > 0 ? u->input_tokens : 0) + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                 (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0);
    int64_t out = u->output_tokens > 0 ? u->output_tokens : 0;
    return json_pack("{s:I,s:I,s:I,s:{s:I},s:{s:I}}", "prompt_tokens", (json_int_t)in, "completion_tokens",
                     (json_int_t)out, "total_tokens", (json_int_t)(in + out), "prompt_tokens_details", "cached_tokens",
                     (json_int_t)(u->cache_read_tokens > 0 ? u->cache_read_tokens : 0), "completion_tokens_details",
                     "reasoning_tokens", (json_int_t)(res->reasoning_tokens > 0 ? res->reasoning_tokens : 0));
}

/* A JSON string of n bytes of provider text; "" if they are not UTF-8 (never NULL). */
static json_t *text_json(const char *s, size_t n)
{
    json_t *t = s ? json_stringn(s, n) : NULL;
    return t ? t : json_string("");
}

static bool has_calls(const json_t *content)
{
    return content && llm_content_has(content, "tool_use");
}

/*
 * The reply's signed thinking as thinking_blocks (LiteLLM's convention:
 * [{"type":"thinking","thinking","signature"} | {"type":"redacted_thinking",
 * "data"}]), which a client sends back on the assistant message so that an
 * Anthropic tool loop with thinking continues (docs/PROTOCOLS.md A11); NULL
 * when there is none (thinking without a signature cannot be sent back).
 */
static json_t *thinking_blocks(const json_t *content)
{
    json_t *out = NULL;
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        json_t *x = NULL;
        if (type && strcmp(type, "thinking") == 0 && json_is_string(json_object_get(b, "signature")) &&
            json_string_length(json_object_get(b, "signature")))
            x = json_pack("{s:s,s:O,s:O}", "type", "thinking", "thinking", json_object_get(b, "thinking"), "signature",
                          json_object_get(b, "signature"));
        else if (type && strcmp(type, "redacted_thinking") == 0)
            x = json_pack("{s:s,s:O}", "type", "redacted_thinking", "data", json_object_get(b, "data"));
        if (!x)
            continue;
        if (!out)
            out = json_array();
        json_array_append_new(out, x);
    }
    return out;
}

/*
 * The assistant message of a whole reply (docs/PROTOCOLS.md B3): content the
 * text (null when the reply is only tool calls), tool_calls from the tool_use
 * blocks, reasoning_content from the thinking blocks.
 */
static json_t *oa_message(const turn_result *res)
{
    json_t *calls = json_array();
    chat_buf thinking;
    chat_buf_init(&thinking, (size_t)-1 / 2); /* bounded by the reply, which the provider bounds */
    size_t i;
    json_t *b;
    json_array_foreach(res->content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "tool_use") == 0) {
            json_t *input = json_object_get(b, "input");
            char *args = input ? chat_json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY, NULL) : NULL;
            const char *id = json_string_value(json_object_get(b, "id"));
            const char *name = json_string_value(json_object_get(b, "name"));
            json_array_append_new(calls,
                                  json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", id ? id : "", "type", "function", "function",
                                            "name", name ? name : "", "arguments", args ? args : "{}"));
            free(args);
        } else if (type && strcmp(type, "thinking") == 0) {
            json_t *t = json_object_get(b, "thinking");
            if (chat_buf_append(&thinking, json_string_value(t) ? json_string_value(t) : "", json_string_length(t)) !=
                CHAT_OK)
                break;
        }
    }
    json_t *content = res->text_len || json_array_size(calls) == 0 ? text_json(res->text, res->text_len) : json_null();
    json_t *msg = json_pack("{s:s,s:o,s:n}", "role", "assistant", "content", content, "refusal");
    if (json_array_size(calls))
        json_object_set_new(msg, "tool_calls", calls);
    else
        json_decref(calls);
    if (thinking.len)
        json_object_set_new(msg, "reasoning_content", text_json(chat_buf_str(&thinking), thinking.len));
    json_t *tb = thinking_blocks(res->content);
    if (tb)
        json_object_set_new(msg, "thinking_blocks", tb);
    chat_buf_free(&thinking);
    return msg;
}

/* The stop sequence that ended the reply, when the provider said which: the
 * choice's stop_reason, as vLLM reports it (OpenAI's format has no field). */
static void add_stop_sequence(json_t *choice, const turn_result *res)
{
    json_t *s = res->stop_sequence ? json_string(res->stop_sequence) : NULL;
    if (s)
        json_object_set_new(choice, "stop_reason", s);
}

/* ---- renderers ---- */

/* The stream's own state (chat_ctx.rnd_state). */
typedef struct oa_stream {
    int tools;      /* tool calls announced so far: the next one's index */
    bool in_tool;   /* the open block is a tool call */
    bool tool_args; /* ... and some of its arguments were sent */
} oa_stream;

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
    char *text = chat_json_dumps(o, JSON_COMPACT, NULL);
    json_decref(o);
    char *line = chat_xasprintf("data: %s\n\n", text ? text : "{}");
    free(text);
    bool full = chat_write(c, line, strlen(line));
    free(line);
    return full;
}

/* One delta chunk of choice 0 (delta is taken). */
static bool send_delta(chat_ctx *c, json_t *delta)
{
    return send_chunk(c,
                      chunk(c, c->model ? c->model : "",
                            json_pack("[{s:i,s:o,s:n,s:n}]", "index", 0, "delta", delta, "logprobs", "finish_reason")));
}

static void oa_json_done(chat_ctx *c, const turn_result *res)
{
    json_t *choices = json_pack("[{s:i,s:o,s:n,s:s}]", "index", 0, "message", oa_message(res), "logprobs",
                                "finish_reason", finish_reason(res->stop_reason, has_calls(res->content)));
    add_stop_sequence(json_array_get(choices, 0), res);
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:n}", "id", c->completion_id, "object", "chat.completion",
                          "created", (json_int_t)c->created, "model", res->model, "choices", choices, "usage",
                          oa_usage(res), "system_fingerprint");
    if (*res->session_id)
        json_object_set_new(o, "session_id", json_string(res->session_id));
    http_reply_json(c->r, 200, o);
}

/*
 * OpenAI's error.param for a turn's refusal of a field: the turn names the
 * option (or the message's block) first, "<name>: why" (chat/turn.c,
 * models_check_options), so the param is that name when the message starts
 * with one. NULL for every other error.
 */
static const char *error_param(const turn_error *err, char *buf, size_t len)
{
    if (strcmp(err->type, "unsupported_parameter") != 0)
        return NULL;
    size_t n = strcspn(err->message, ":");
    if (!err->message[n] || n == 0 || n >= len)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        char ch = err->message[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '.' || ch == '[' || ch == ']'))
            return NULL;
    }
    memcpy(buf, err->message, n);
    buf[n] = '\0';
    return buf;
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
    char param[96];
    oa_error(c->r, err->status, api_openai_type_of(err->status), err->type, error_param(err, param, sizeof param), "%s",
             err->message);
}

static const chat_renderer oa_json = { .stream = false, .done = oa_json_done, .error = oa_error_render };

/*
 * The stream starts (headers, then the role chunk) at the first delta, so that
 * a provider failure before it still gets a real HTTP status, which the OpenAI
 * SDKs turn into their typed errors. If the provider stays silent for a
 * heartbeat interval, the stream starts anyway, so that heartbeats keep
 * proxies from cutting the connection.
 */
static void oa_stream_open(chat_ctx *c)
{
    if (c->start_timer)
        event_del(c->start_timer);
    chat_start_sse(c);
}

static void oa_stream_begin(chat_ctx *c)
{
    if (c->started)
        return;
    oa_stream_open(c);
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
    if (!len)
        return false;
    oa_stream_begin(c);
    return send_delta(c, json_pack("{s:o}", "content", text_json(text, len)));
}

/*
 * A reply event as a delta chunk (docs/PROTOCOLS.md B4): text -> content,
 * thinking -> reasoning_content, a tool call's start -> tool_calls[{index, id,
 * type, function{name, arguments:""}}], its argument pieces ->
 * tool_calls[{index, function{arguments}}]. Blocks arrive whole and in order
 * (llm/content.h), so the arguments belong to the last call announced.
 */
static bool oa_sse_event(chat_ctx *c, const llm_event *ev)
{
    oa_stream *s = c->rnd_state;
    switch (ev->kind) {
    case LLM_EV_TEXT: return oa_sse_delta(c, ev->data, ev->len);
    case LLM_EV_THINKING:
        if (!ev->len)
            return false;
        oa_stream_begin(c);
        return send_delta(c, json_pack("{s:o}", "reasoning_content", text_json(ev->data, ev->len)));
    case LLM_EV_TOOL_START: {
        json_t *delta =
            json_pack("{s:[{s:i,s:s,s:s,s:{s:s,s:s}}]}", "tool_calls", "index", s->tools++, "id", ev->id ? ev->id : "",
                      "type", "function", "function", "name", ev->name ? ev->name : "", "arguments", "");
        s->in_tool = true;
        s->tool_args = false;
        if (!c->started) {
            /* A reply that opens with a call: the role comes with it and the
             * content is null, as OpenAI streams it (the SDKs then end with
             * content null, as in a whole response). */
            oa_stream_open(c);
            json_object_set_new(delta, "role", json_string("assistant"));
            json_object_set_new(delta, "content", json_null());
            json_object_set_new(delta, "refusal", json_null());
        }
        return send_delta(c, delta);
    }
    case LLM_EV_TOOL_ARGS:
        if (!s->in_tool || !ev->len)
            return false;
        s->tool_args = true;
        return send_delta(c, json_pack("{s:[{s:i,s:{s:o}}]}", "tool_calls", "index", s->tools - 1, "function",
                                       "arguments", text_json(ev->data, ev->len)));
    case LLM_EV_BLOCK_STOP:
        if (!s->in_tool)
            return false;
        s->in_tool = false;
        /* A call without arguments still gets its "{}", which clients parse. */
        if (!s->tool_args)
            return send_delta(c, json_pack("{s:[{s:i,s:{s:s}}]}", "tool_calls", "index", s->tools - 1, "function",
                                           "arguments", "{}"));
        return false;
    }
    return false;
}

static void oa_sse_done(chat_ctx *c, const turn_result *res)
{
    json_t *finish = json_pack("[{s:i,s:{},s:n,s:s}]", "index", 0, "delta", "logprobs", "finish_reason",
                               finish_reason(res->stop_reason, has_calls(res->content)));
    add_stop_sequence(json_array_get(finish, 0), res);
    oa_stream_begin(c);
    /* The signatures are known only now: the thinking to send back comes whole, last. */
    json_t *tb = thinking_blocks(res->content);
    if (tb)
        send_delta(c, json_pack("{s:o}", "thinking_blocks", tb));
    send_chunk(c, chunk(c, res->model, finish));
    if (c->include_usage) {
        json_t *o = chunk(c, res->model, json_array());
        json_object_set_new(o, "usage", oa_usage(res));
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
    .event = oa_sse_event,
};

/* ---- the request ---- */

struct oa_init {
    bool include_usage;
};

static void init_ctx(chat_ctx *c, void *arg)
{
    struct oa_init *in = arg;
    c->include_usage = in->include_usage;
    c->created = chat_now_ms() / 1000;
    snprintf(c->completion_id, sizeof c->completion_id, "chatcmpl-%s", http_req_id(c->r));
    c->rnd_state = chat_xcalloc(1, sizeof(oa_stream));
    c->rnd_state_free = free;
}

void api_v1_chat_completions(http_req *r, api_env *w, char **params)
{
    (void)params;
    size_t len;
    const char *body = http_req_body(r, &len);
    api_oa_request q;
    api_oa_invalid why;
    api_oa_limits lim = {
        .max_message_bytes = w->cfg->max_message_bytes,
        .max_image_bytes = w->cfg->max_image_size,
        .drop_unsupported = w->cfg->drop_unsupported_params,
    };
    if (!api_oa_request_parse(body, len, http_req_header(r, "X-Session-Id"), &lim, &q, &why)) {
        oa_error(r, why.status, why.type, why.code, why.param, "%s", why.message);
        return;
    }
    turn_params p;
    api_oa_turn_params(&q, &p);
    /* Fields no provider takes, left out (DROP_UNSUPPORTED_PARAMS): the turn
     * names them with the options the model refuses, in one header. */
    p.dropped = q.dropped[0] ? q.dropped : NULL;
    p.request_id = http_req_id(r);
    p.owner = api_identity(r)->key_id[0] ? api_identity(r)->key_id : NULL;
    p.see_all = api_owner_filter(r) == NULL;
    struct oa_init in = { .include_usage = q.include_usage };
    chat_run(r, w, q.stream ? &oa_sse : &oa_json, API_V1, &p, init_ctx, &in);
    api_oa_request_free(&q);
}
