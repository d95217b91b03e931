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

/* The "usage" member of a whole response or of the last stream chunk. */
static void write_usage(chat_json_writer *w, const turn_result *res)
{
    const store_usage *u = &res->usage;
    int64_t in = (u->input_tokens > 0 ? u->input_tokens : 0) + (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                 (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0);
    int64_t out = u->output_tokens > 0 ? u->output_tokens : 0;
    chat_json_obj(w, "usage");
    chat_json_int(w, "prompt_tokens", in);
    chat_json_int(w, "completion_tokens", out);
    chat_json_int(w, "total_tokens", in + out);
    chat_json_obj(w, "prompt_tokens_details");
    chat_json_int(w, "cached_tokens", u->cache_read_tokens > 0 ? u->cache_read_tokens : 0);
    chat_json_close(w);
    chat_json_obj(w, "completion_tokens_details");
    chat_json_int(w, "reasoning_tokens", res->reasoning_tokens > 0 ? res->reasoning_tokens : 0);
    chat_json_close(w);
    chat_json_close(w);
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
 * The "message" member of a whole reply (docs/PROTOCOLS.md B3): content the
 * text (null when the reply is only tool calls), tool_calls from the tool_use
 * blocks (calls: whether there are any), reasoning_content from the thinking
 * blocks.
 */
static void write_message(chat_json_writer *w, const turn_result *res, bool calls)
{
    chat_json_obj(w, "message");
    chat_json_str(w, "role", "assistant");
    if (res->text_len || !calls)
        chat_json_str_or_empty(w, "content", res->text, res->text_len);
    else
        chat_json_null(w, "content");
    chat_json_null(w, "refusal");
    chat_buf thinking;
    chat_buf_init(&thinking, (size_t)-1 / 2); /* bounded by the reply, which the provider bounds */
    if (calls)
        chat_json_arr(w, "tool_calls");
    size_t i;
    json_t *b;
    json_array_foreach(res->content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "tool_use") == 0) {
            json_t *input = json_object_get(b, "input");
            size_t args_len = 0;
            char *args = input ? chat_json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY, &args_len) : NULL;
            const char *id = json_string_value(json_object_get(b, "id"));
            const char *name = json_string_value(json_object_get(b, "name"));
            chat_json_obj(w, NULL);
            chat_json_str(w, "id", id ? id : "");
            chat_json_str(w, "type", "function");
            chat_json_obj(w, "function");
            chat_json_str(w, "name", name ? name : "");
            chat_json_strn(w, "arguments", args ? args : "{}", args ? args_len : 2);
            chat_json_close(w);
            chat_json_close(w);
            free(args);
        } else if (type && strcmp(type, "thinking") == 0) {
            json_t *t = json_object_get(b, "thinking");
            if (chat_buf_append(&thinking, json_string_value(t) ? json_string_value(t) : "", json_string_length(t)) !=
                CHAT_OK)
                break;
        }
    }
    if (calls)
        chat_json_close(w);
    if (thinking.len)
        chat_json_str_or_empty(w, "reasoning_content", chat_buf_str(&thinking), thinking.len);
    chat_buf_free(&thinking);
    json_t *tb = thinking_blocks(res->content);
    if (tb)
        chat_json_val(w, "thinking_blocks", tb);
    json_decref(tb);
    chat_json_close(w);
}

/* The stop sequence that ended the reply, when the provider said which: the
 * choice's stop_reason, as vLLM reports it (OpenAI's format has no field). */
static void write_stop_sequence(chat_json_writer *w, const turn_result *res)
{
    if (res->stop_sequence)
        chat_json_str_or_empty(w, "stop_reason", res->stop_sequence, strlen(res->stop_sequence));
}

/* ---- renderers ---- */

/* The stream's own state (chat_ctx.rnd_state). */
typedef struct oa_stream {
    int tools;      /* tool calls announced so far: the next one's index */
    bool in_tool;   /* the open block is a tool call */
    bool tool_args; /* ... and some of its arguments were sent */
} oa_stream;

/*
 * A chunk is written straight into its SSE event: chunk_open writes the
 * chunk's members up to its open choices array, the caller writes
 * the choices, chunk_send closes the array, adds the usage (the last chunk's
 * when usage is not NULL, else null when the client asked for usage), ends
 * the event and queues it (chat_write's return).
 */
static chat_json_writer *chunk_open(chat_ctx *c, const char *model)
{
    chat_json_writer *w = chat_event_open(NULL);
    chat_json_obj(w, NULL);
    chat_json_str(w, "id", c->completion_id);
    chat_json_str(w, "object", "chat.completion.chunk");
    chat_json_int(w, "created", c->created);
    chat_json_str(w, "model", model);
    chat_json_null(w, "system_fingerprint");
    chat_json_arr(w, "choices");
    return w;
}

static bool chunk_send(chat_ctx *c, chat_json_writer *w, const turn_result *usage)
{
    chat_json_close(w); /* choices */
    if (usage)
        write_usage(w, usage);
    else if (c->include_usage)
        chat_json_null(w, "usage");
    chat_json_close(w);
    return chat_event_send(c, w);
}

/* A delta chunk of choice 0: delta_open leaves its delta object open for the
 * caller's members, delta_send closes and queues it. */
static chat_json_writer *delta_open(chat_ctx *c)
{
    chat_json_writer *w = chunk_open(c, c->model ? c->model : "");
    chat_json_obj(w, NULL);
    chat_json_int(w, "index", 0);
    chat_json_obj(w, "delta");
    return w;
}

static bool delta_send(chat_ctx *c, chat_json_writer *w)
{
    chat_json_close(w); /* delta */
    chat_json_null(w, "logprobs");
    chat_json_null(w, "finish_reason");
    chat_json_close(w); /* the choice */
    return chunk_send(c, w, NULL);
}

/* A delta of one text member (content, reasoning_content). */
static bool send_text_delta(chat_ctx *c, const char *key, const char *text, size_t len)
{
    chat_json_writer *w = delta_open(c);
    chat_json_str_or_empty(w, key, text, len);
    return delta_send(c, w);
}

/* A delta of one piece of tool call `index`'s arguments. */
static bool send_args_delta(chat_ctx *c, int index, const char *args, size_t len)
{
    chat_json_writer *w = delta_open(c);
    chat_json_arr(w, "tool_calls");
    chat_json_obj(w, NULL);
    chat_json_int(w, "index", index);
    chat_json_obj(w, "function");
    chat_json_str_or_empty(w, "arguments", args, len);
    chat_json_close(w);
    chat_json_close(w);
    chat_json_close(w);
    return delta_send(c, w);
}

static void oa_json_done(chat_ctx *c, const turn_result *res)
{
    bool calls = has_calls(res->content);
    chat_json_writer *w = chat_json_doc_new(HTTP_JSON_FLAGS);
    chat_json_obj(w, NULL);
    chat_json_str(w, "id", c->completion_id);
    chat_json_str(w, "object", "chat.completion");
    chat_json_int(w, "created", c->created);
    chat_json_str(w, "model", res->model);
    chat_json_arr(w, "choices");
    chat_json_obj(w, NULL);
    chat_json_int(w, "index", 0);
    write_message(w, res, calls);
    chat_json_null(w, "logprobs");
    chat_json_str(w, "finish_reason", finish_reason(res->stop_reason, calls));
    write_stop_sequence(w, res);
    chat_json_close(w);
    chat_json_close(w);
    write_usage(w, res);
    chat_json_null(w, "system_fingerprint");
    if (*res->session_id)
        chat_json_str(w, "session_id", res->session_id);
    chat_json_close(w);
    http_reply_json_doc(c->r, 200, w);
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
        chat_json_writer *w = chat_event_open(NULL);
        chat_json_obj(w, NULL);
        chat_json_obj(w, "error");
        chat_json_str(w, "message", err->message);
        chat_json_str(w, "type", api_openai_type_of(err->status));
        chat_json_null(w, "param");
        chat_json_str(w, "code", err->type);
        chat_json_close(w);
        chat_json_close(w);
        chat_event_send(c, w);
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
    chat_json_writer *w = delta_open(c);
    chat_json_str(w, "role", "assistant");
    chat_json_str(w, "content", "");
    chat_json_null(w, "refusal");
    delta_send(c, w);
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
    return send_text_delta(c, "content", text, len);
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
        return send_text_delta(c, "reasoning_content", ev->data, ev->len);
    case LLM_EV_TOOL_START: {
        bool first = !c->started;
        if (first)
            oa_stream_open(c);
        chat_json_writer *w = delta_open(c);
        chat_json_arr(w, "tool_calls");
        chat_json_obj(w, NULL);
        chat_json_int(w, "index", s->tools++);
        chat_json_str(w, "id", ev->id ? ev->id : "");
        chat_json_str(w, "type", "function");
        chat_json_obj(w, "function");
        chat_json_str(w, "name", ev->name ? ev->name : "");
        chat_json_str(w, "arguments", "");
        chat_json_close(w);
        chat_json_close(w);
        chat_json_close(w);
        s->in_tool = true;
        s->tool_args = false;
        if (first) {
            /* A reply that opens with a call: the role comes with it and the
             * content is null, as OpenAI streams it (the SDKs then end with
             * content null, as in a whole response). */
            chat_json_str(w, "role", "assistant");
            chat_json_null(w, "content");
            chat_json_null(w, "refusal");
        }
        return delta_send(c, w);
    }
    case LLM_EV_TOOL_ARGS:
        if (!s->in_tool || !ev->len)
            return false;
        s->tool_args = true;
        return send_args_delta(c, s->tools - 1, ev->data, ev->len);
    case LLM_EV_BLOCK_STOP:
        if (!s->in_tool)
            return false;
        s->in_tool = false;
        /* A call without arguments still gets its "{}", which clients parse. */
        if (!s->tool_args)
            return send_args_delta(c, s->tools - 1, "{}", 2);
        return false;
    }
    return false;
}

static void oa_sse_done(chat_ctx *c, const turn_result *res)
{
    oa_stream_begin(c);
    /* The signatures are known only now: the thinking to send back comes whole, last. */
    json_t *tb = thinking_blocks(res->content);
    if (tb) {
        chat_json_writer *w = delta_open(c);
        chat_json_val(w, "thinking_blocks", tb);
        delta_send(c, w);
        json_decref(tb);
    }
    chat_json_writer *w = chunk_open(c, res->model);
    chat_json_obj(w, NULL);
    chat_json_int(w, "index", 0);
    chat_json_obj(w, "delta");
    chat_json_close(w);
    chat_json_null(w, "logprobs");
    chat_json_str(w, "finish_reason", finish_reason(res->stop_reason, has_calls(res->content)));
    write_stop_sequence(w, res);
    chat_json_close(w);
    chunk_send(c, w, NULL);
    if (c->include_usage)
        chunk_send(c, chunk_open(c, res->model), res);
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
