/*
 * chat.c: the four chat endpoints. They share one body parser and one turn
 * engine; they differ only in how a turn's events become HTTP:
 *
 *   POST /chat            seed JSON      {response, session_id, timestamp, turn_count}
 *   POST /chat-stream     seed text      raw text chunks; the response starts with the
 *                                        first byte of the reply, so a failure before it
 *                                        still gets a real status; after it, the
 *                                        template's "\nError: ..." trailer
 *   POST /v1/chat         v1 JSON
 *   POST /v1/chat/stream  v1 SSE         start, delta*, done | error; ": ping" heartbeats
 *
 * A chat_ctx ties one request to one turn. It holds a reference on the request;
 * the client going away cancels the turn; the turn ending (done or error) sends
 * the response and frees the context.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/api.h"
#include "chat/turn.h"
#include "core/alloc.h"
#include "core/util.h"

typedef enum { MODE_SEED_JSON, MODE_SEED_TEXT, MODE_V1_JSON, MODE_V1_SSE } chat_mode;

typedef struct chat_body {
    json_t *root;               /* owns the strings below */
    const char *message;
    const char *session_id;
    const char *system_prompt;
    const char *model;
    int max_tokens;
    char generated_id[40];
} chat_body;

typedef struct chat_ctx {
    http_req *r;
    chat_worker *w;
    turn *t;
    chat_mode mode;
    api_flavor flavor;
    bool started;               /* response headers sent */
    struct event *heartbeat;
    int64_t last_write;         /* monotonic ms of the last byte queued */
    char session_id[130];
} chat_ctx;

/* ---- body parsing and validation ---- */

static bool is_blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    return true;
}

/* Validates an optional string field; returns false (with an error item added) if present and not a string. */
static bool opt_string(json_t *root, const char *field, const char **out, json_t *errors)
{
    json_t *v = json_object_get(root, field);
    *out = NULL;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        json_array_append_new(errors, api_detail_item("string_type", "body", field,
                                                      "Input should be a valid string", json_incref(v)));
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/*
 * Parses and validates a chat body. On failure answers the request (422 seed /
 * 400 v1) and returns false.
 */
static bool parse_chat_body(http_req *r, chat_worker *w, api_flavor f, chat_body *b)
{
    const struct chat_config *cfg = w->app->cfg;
    size_t len;
    const char *text = http_req_body(r, &len);
    json_error_t jerr;
    memset(b, 0, sizeof *b);

    if (len == 0) {
        api_invalid(r, f, api_detail_item("missing", "body", NULL, "Field required", json_null()),
                    "the request body is empty: send a JSON object");
        return false;
    }
    b->root = json_loadb(text, len, 0, &jerr);
    if (!b->root) {
        json_t *loc = json_pack("[s,i]", "body", jerr.position);
        json_t *item = json_pack("{s:s,s:o,s:s,s:{},s:{s:s}}", "type", "json_invalid", "loc", loc, "msg",
                                 "JSON decode error", "input", "ctx", "error", jerr.text);
        char msg[300];
        snprintf(msg, sizeof msg, "the request body is not valid JSON: %s (at byte %d)", jerr.text,
                 jerr.position);
        api_invalid(r, f, item, msg);
        return false;
    }
    if (!json_is_object(b->root)) {
        api_invalid(r, f,
                    api_detail_item("model_attributes_type", "body", NULL,
                                    "Input should be a valid dictionary or object to extract fields from",
                                    json_incref(b->root)),
                    "the request body must be a JSON object");
        json_decref(b->root);
        return false;
    }

    json_t *errors = json_array();
    char v1msg[300] = "";
    json_t *m = json_object_get(b->root, "message");
    if (!m) {
        json_array_append_new(errors, api_detail_item("missing", "body", "message", "Field required",
                                                      json_incref(b->root)));
        snprintf(v1msg, sizeof v1msg, "message is required");
    } else if (!json_is_string(m)) {
        json_array_append_new(errors, api_detail_item("string_type", "body", "message",
                                                      "Input should be a valid string", json_incref(m)));
        snprintf(v1msg, sizeof v1msg, "message must be a string");
    } else {
        b->message = json_string_value(m);
        size_t mlen = json_string_length(m);
        if (mlen == 0 || is_blank(b->message)) {
            json_array_append_new(errors, api_detail_item("string_too_short", "body", "message",
                                                          "String should have at least 1 non-blank character",
                                                          json_incref(m)));
            snprintf(v1msg, sizeof v1msg, "message must not be empty");
        } else if (mlen > cfg->max_message_bytes) {
            char msg[128];
            snprintf(msg, sizeof msg, "String should have at most %zu bytes", cfg->max_message_bytes);
            json_array_append_new(errors, api_detail_item("string_too_long", "body", "message", msg, json_null()));
            snprintf(v1msg, sizeof v1msg, "message is longer than MAX_MESSAGE_SIZE (%zu bytes)",
                     cfg->max_message_bytes);
        }
    }

    json_t *sid = json_object_get(b->root, "session_id");
    if (!sid || (f == API_V1 && json_is_null(sid))) {
        if (f == API_SEED) {
            json_array_append_new(errors, api_detail_item("missing", "body", "session_id", "Field required",
                                                          json_incref(b->root)));
            if (!*v1msg)
                snprintf(v1msg, sizeof v1msg, "session_id is required");
        } else {
            chat_random_id(b->generated_id, sizeof b->generated_id, "s_", 12);
            b->session_id = b->generated_id;
        }
    } else if (!json_is_string(sid)) {
        json_array_append_new(errors, api_detail_item("string_type", "body", "session_id",
                                                      "Input should be a valid string", json_incref(sid)));
        if (!*v1msg)
            snprintf(v1msg, sizeof v1msg, "session_id must be a string");
    } else if (!chat_valid_id(json_string_value(sid))) {
        json_array_append_new(errors, api_detail_item("string_pattern_mismatch", "body", "session_id",
                                                      "String should match pattern '^[A-Za-z0-9._:-]{1,128}$'",
                                                      json_incref(sid)));
        if (!*v1msg)
            snprintf(v1msg, sizeof v1msg,
                     "invalid session_id: use 1 to 128 characters of letters, digits and . _ : -");
    } else {
        b->session_id = json_string_value(sid);
    }

    if (!opt_string(b->root, "system_prompt", &b->system_prompt, errors) && !*v1msg)
        snprintf(v1msg, sizeof v1msg, "system_prompt must be a string");
    if (b->system_prompt && !*b->system_prompt)
        b->system_prompt = NULL; /* the template's `system_prompt or DEFAULT` */
    if (f == API_V1) {
        if (!opt_string(b->root, "model", &b->model, errors) && !*v1msg)
            snprintf(v1msg, sizeof v1msg, "model must be a string");
        if (b->model && !*b->model) {
            b->model = NULL;
        }
        json_t *mt = json_object_get(b->root, "max_tokens");
        if (mt && !json_is_null(mt)) {
            if (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000) {
                json_array_append_new(errors, api_detail_item("int_type", "body", "max_tokens",
                                                              "Input should be an integer in 1..1000000",
                                                              json_incref(mt)));
                if (!*v1msg)
                    snprintf(v1msg, sizeof v1msg, "max_tokens must be an integer in 1..1000000");
            } else {
                b->max_tokens = (int)json_integer_value(mt);
            }
        }
    }

    if (json_array_size(errors) > 0) {
        if (f == API_SEED) {
            http_req_log_set(r, "error_type", json_string("validation_error"));
            http_reply_json(r, 422, json_pack("{s:o}", "detail", errors));
        } else {
            json_decref(errors);
            api_error(r, API_V1, 400, "invalid_request_error", "%s", v1msg);
        }
        json_decref(b->root);
        b->root = NULL;
        return false;
    }
    json_decref(errors);
    return true;
}

/* ---- context lifetime ---- */

static void ctx_free(chat_ctx *c)
{
    if (c->heartbeat)
        event_free(c->heartbeat);
    http_req_on_close(c->r, NULL, NULL);
    http_req_on_drain(c->r, NULL, NULL);
    http_req_release(c->r);
    free(c);
}

static void on_client_close(void *ud)
{
    chat_ctx *c = ud;
    turn *t = c->t;
    c->t = NULL;
    turn_cancel(t);
    ctx_free(c);
}

static void on_drain(void *ud)
{
    chat_ctx *c = ud;
    turn_resume(c->t);
}

static void stream_write(chat_ctx *c, const char *data, size_t len, bool *full)
{
    c->last_write = chat_mono_ms();
    bool f = http_stream_write(c->r, data, len);
    if (full)
        *full = f;
}

/* Writes one SSE event: "event: NAME\ndata: JSON\n\n" (json stolen). */
static bool sse_event(chat_ctx *c, const char *name, json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    char *ev = chat_xasprintf("event: %s\ndata: %s\n\n", name, text ? text : "{}");
    free(text);
    bool full = false;
    stream_write(c, ev, strlen(ev), &full);
    free(ev);
    return full;
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    chat_ctx *c = arg;
    int64_t now = chat_mono_ms();
    /* Only when the provider has been silent: a proxy must see bytes at least
     * every HEARTBEAT_INTERVAL, tokens count as bytes. */
    if (now - c->last_write >= c->w->app->cfg->heartbeat_ms - 5)
        stream_write(c, ": ping\n\n", 8, NULL);
}

static void log_turn(chat_ctx *c, const turn_result *res)
{
    http_req_log_set(c->r, "provider_ms", json_integer(res->provider_ms));
    http_req_log_set(c->r, "tokens", api_usage_json(&res->usage));
    http_req_log_set(c->r, "attempts", json_integer(res->attempts));
    http_req_log_set(c->r, "model", json_string(res->model));
    http_req_log_set(c->r, "cost_micros", json_integer(res->cost_micros));
}

/* ---- sink ---- */

static void sink_start(void *ud, const turn_info *info)
{
    chat_ctx *c = ud;
    if (c->mode != MODE_V1_SSE)
        return;
    http_add_header(c->r, "Cache-Control", "no-cache");
    http_add_header(c->r, "X-Accel-Buffering", "no");
    http_stream_start(c->r, 200, "text/event-stream; charset=utf-8");
    c->started = true;
    sse_event(c, "start", json_pack("{s:s,s:s,s:s}", "session_id", info->session_id, "model", info->model,
                                    "request_id", http_req_id(c->r)));
    int64_t ms = c->w->app->cfg->heartbeat_ms;
    c->heartbeat = event_new(c->w->base, -1, EV_PERSIST, on_heartbeat, c);
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(c->heartbeat, &tv);
}

static bool sink_delta(void *ud, const char *text, size_t len)
{
    chat_ctx *c = ud;
    bool full = false;
    if (c->mode == MODE_SEED_TEXT) {
        if (!c->started) {
            http_stream_start(c->r, 200, "text/plain; charset=utf-8");
            c->started = true;
        }
        stream_write(c, text, len, &full);
    } else if (c->mode == MODE_V1_SSE) {
        full = sse_event(c, "delta", json_pack("{s:s%}", "text", text, len));
    }
    return full;
}

static void sink_done(void *ud, const turn_result *res)
{
    chat_ctx *c = ud;
    c->t = NULL;
    char idbuf[32];
    snprintf(idbuf, sizeof idbuf, "msg_%lld", (long long)res->message_id);
    log_turn(c, res);
    switch (c->mode) {
    case MODE_SEED_JSON: {
        char ts[32];
        chat_format_iso_local(res->created_at, ts);
        http_reply_json(c->r, 200, json_pack("{s:s%,s:s,s:s,s:I}", "response", res->text, res->text_len,
                                             "session_id", res->session_id, "timestamp", ts, "turn_count",
                                             (json_int_t)res->turn_count));
        break;
    }
    case MODE_SEED_TEXT:
        if (!c->started)
            http_stream_start(c->r, 200, "text/plain; charset=utf-8");
        http_stream_end(c->r);
        break;
    case MODE_V1_JSON: {
        char ts[32];
        chat_format_rfc3339(res->created_at, ts);
        http_reply_json(c->r, 200,
                        json_pack("{s:s,s:s,s:s,s:s%,s:s?,s:o,s:o,s:I,s:s,s:s}", "id", idbuf, "session_id",
                                  res->session_id, "model", res->model, "response", res->text, res->text_len,
                                  "stop_reason", res->stop_reason, "usage", api_usage_json(&res->usage),
                                  "cost", api_cost_json(res->cost_micros), "turn_count",
                                  (json_int_t)res->turn_count, "created_at", ts, "request_id", http_req_id(c->r)));
        break;
    }
    case MODE_V1_SSE:
        sse_event(c, "done", json_pack("{s:s,s:s,s:s,s:s?,s:o,s:o,s:I}", "id", idbuf, "session_id",
                                       res->session_id, "model", res->model, "stop_reason", res->stop_reason,
                                       "usage", api_usage_json(&res->usage), "cost",
                                       api_cost_json(res->cost_micros), "turn_count", (json_int_t)res->turn_count));
        http_stream_end(c->r);
        break;
    }
    ctx_free(c);
}

static void sink_error(void *ud, const turn_error *err)
{
    chat_ctx *c = ud;
    c->t = NULL;
    http_req_log_set(c->r, "error_type", json_string(err->type));
    if (c->started && c->mode == MODE_SEED_TEXT) {
        char *tail = chat_xasprintf("\nError: %s", err->message);
        stream_write(c, tail, strlen(tail), NULL);
        free(tail);
        http_stream_end(c->r);
    } else if (c->started && c->mode == MODE_V1_SSE) {
        sse_event(c, "error", json_pack("{s:s,s:s,s:s}", "type", err->type, "message", err->message,
                                        "request_id", http_req_id(c->r)));
        http_stream_end(c->r);
    } else {
        if (err->retry_after_s > 0) {
            char ra[32];
            snprintf(ra, sizeof ra, "%lld", (long long)err->retry_after_s);
            http_add_header(c->r, "Retry-After", ra);
        }
        api_error(c->r, c->flavor, err->status, err->type, "%s", err->message);
    }
    ctx_free(c);
}

static const turn_sink chat_sink = {
    .on_start = sink_start,
    .on_delta = sink_delta,
    .on_done = sink_done,
    .on_error = sink_error,
};

/* ---- handlers ---- */

static void handle_chat(http_req *r, chat_worker *w, chat_mode mode)
{
    api_flavor f = (mode == MODE_SEED_JSON || mode == MODE_SEED_TEXT) ? API_SEED : API_V1;
    if (atomic_load(&w->app->stopping)) {
        http_add_header(r, "Retry-After", "1");
        api_error(r, f, 503, "server_shutting_down", "chatd is shutting down; retry on another instance");
        return;
    }
    chat_body b;
    if (!parse_chat_body(r, w, f, &b))
        return;

    chat_ctx *c = chat_xcalloc(1, sizeof *c);
    c->r = r;
    c->w = w;
    c->mode = mode;
    c->flavor = f;
    c->last_write = chat_mono_ms();
    snprintf(c->session_id, sizeof c->session_id, "%s", b.session_id);
    http_req_hold(r);
    http_req_log_set(r, "session", json_string(b.session_id));

    turn_params p = {
        .session_id = b.session_id,
        .message = b.message,
        .system_prompt = b.system_prompt,
        .model = b.model,
        .max_tokens = b.max_tokens,
        .stream = mode == MODE_SEED_TEXT || mode == MODE_V1_SSE,
        .request_id = http_req_id(r),
        .owner = NULL,
    };
    turn_error err;
    c->t = turn_start(w, &p, &chat_sink, c, &err);
    json_decref(b.root);
    if (!c->t) {
        if (err.retry_after_s > 0) {
            char ra[32];
            snprintf(ra, sizeof ra, "%lld", (long long)err.retry_after_s);
            http_add_header(r, "Retry-After", ra);
        }
        api_error(r, f, err.status, err.type, "%s", err.message);
        ctx_free(c);
        return;
    }
    http_req_on_close(r, on_client_close, c);
    http_req_on_drain(r, on_drain, c);
}

void api_seed_chat(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    handle_chat(r, w, MODE_SEED_JSON);
}

void api_seed_chat_stream(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    handle_chat(r, w, MODE_SEED_TEXT);
}

void api_v1_chat(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    handle_chat(r, w, MODE_V1_JSON);
}

void api_v1_chat_stream(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    handle_chat(r, w, MODE_V1_SSE);
}
