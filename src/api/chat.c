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
 * The request-to-turn plumbing is chat_run() (chat_run.c); this file holds the
 * body parser and the three renderers of the seed and /v1 endpoints.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/chat_run.h"
#include "api/idempotency.h"
#include "api/request.h"
#include "guard/auth.h"
#include "core/alloc.h"
#include "core/util.h"

typedef api_chat_body chat_body;

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
        json_array_append_new(
            errors, api_detail_item("string_type", "body", field, "Input should be a valid string", json_incref(v)));
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* Records a refusal with one problem (item stolen) and returns false. */
static bool invalid_one(api_chat_invalid *why, json_t *item, const char *msg)
{
    why->detail = json_pack("[o]", item);
    snprintf(why->message, sizeof why->message, "%s", msg);
    return false;
}

bool api_chat_body_parse(const char *text, size_t len, api_flavor f, size_t max_message_bytes, api_chat_body *b,
                         api_chat_invalid *why)
{
    json_error_t jerr;
    memset(b, 0, sizeof *b);
    memset(why, 0, sizeof *why);

    if (len == 0)
        return invalid_one(why, api_detail_item("missing", "body", NULL, "Field required", json_null()),
                           "the request body is empty: send a JSON object");
    b->root = json_loadb(text, len, 0, &jerr);
    if (!b->root) {
        json_t *loc = json_pack("[s,i]", "body", jerr.position);
        /* jansson's text quotes the bytes it stopped at, which need not be
         * UTF-8 (json_pack would fail on them: a 500 instead of the 422). */
        json_t *item = json_pack("{s:s,s:o,s:s,s:{},s:{s:o}}", "type", "json_invalid", "loc", loc, "msg",
                                 "JSON decode error", "input", "ctx", "error", chat_json_text(jerr.text));
        char msg[300];
        snprintf(msg, sizeof msg, "the request body is not valid JSON: %s (at byte %d)", jerr.text, jerr.position);
        return invalid_one(why, item, msg);
    }
    if (!json_is_object(b->root)) {
        invalid_one(why,
                    api_detail_item("model_attributes_type", "body", NULL,
                                    "Input should be a valid dictionary or object to extract fields from",
                                    json_incref(b->root)),
                    "the request body must be a JSON object");
        json_decref(b->root);
        b->root = NULL;
        return false;
    }

    json_t *errors = json_array();
    char v1msg[300] = "";
    json_t *m = json_object_get(b->root, "message");
    if (!m) {
        json_array_append_new(errors,
                              api_detail_item("missing", "body", "message", "Field required", json_incref(b->root)));
        snprintf(v1msg, sizeof v1msg, "message is required");
    } else if (!json_is_string(m)) {
        json_array_append_new(errors, api_detail_item("string_type", "body", "message",
                                                      "Input should be a valid string", json_incref(m)));
        snprintf(v1msg, sizeof v1msg, "message must be a string");
    } else {
        b->message = json_string_value(m);
        size_t mlen = json_string_length(m);
        if (mlen == 0 || is_blank(b->message)) {
            json_array_append_new(errors,
                                  api_detail_item("string_too_short", "body", "message",
                                                  "String should have at least 1 non-blank character", json_incref(m)));
            snprintf(v1msg, sizeof v1msg, "message must not be empty");
        } else if (mlen > max_message_bytes) {
            char msg[128];
            snprintf(msg, sizeof msg, "String should have at most %zu bytes", max_message_bytes);
            json_array_append_new(errors, api_detail_item("string_too_long", "body", "message", msg, json_null()));
            snprintf(v1msg, sizeof v1msg, "message is longer than MAX_MESSAGE_SIZE (%zu bytes)", max_message_bytes);
        }
    }

    json_t *sid = json_object_get(b->root, "session_id");
    if (!sid || (f == API_V1 && json_is_null(sid))) {
        if (f == API_SEED) {
            json_array_append_new(
                errors, api_detail_item("missing", "body", "session_id", "Field required", json_incref(b->root)));
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
            snprintf(v1msg, sizeof v1msg, "invalid session_id: use 1 to 128 characters of letters, digits and . _ : -");
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
        json_t *tr = json_object_get(b->root, "truncation");
        if (tr && !json_is_null(tr)) {
            const char *v = json_string_value(tr);
            if (v && strcmp(v, "auto") == 0)
                b->truncation = TURN_TRUNCATE_AUTO;
            else if (v && strcmp(v, "reject") == 0)
                b->truncation = TURN_TRUNCATE_REJECT;
            else {
                json_array_append_new(errors, api_detail_item("enum", "body", "truncation",
                                                              "Input should be 'auto' or 'reject'", json_incref(tr)));
                if (!*v1msg)
                    snprintf(v1msg, sizeof v1msg, "truncation must be \"auto\" or \"reject\"");
            }
        }
        json_t *mt = json_object_get(b->root, "max_tokens");
        if (mt && !json_is_null(mt)) {
            if (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000) {
                json_array_append_new(errors,
                                      api_detail_item("int_type", "body", "max_tokens",
                                                      "Input should be an integer in 1..1000000", json_incref(mt)));
                if (!*v1msg)
                    snprintf(v1msg, sizeof v1msg, "max_tokens must be an integer in 1..1000000");
            } else {
                b->max_tokens = (int)json_integer_value(mt);
            }
        }
    }

    if (json_array_size(errors) > 0) {
        why->detail = errors;
        snprintf(why->message, sizeof why->message, "%s", v1msg);
        json_decref(b->root);
        b->root = NULL;
        return false;
    }
    json_decref(errors);
    return true;
}

void api_chat_turn_params(const api_chat_body *b, turn_params *p)
{
    *p = (turn_params){
        .session_id = b->session_id,
        .message = b->message,
        .system_prompt = b->system_prompt,
        .model = b->model,
        .max_tokens = b->max_tokens,
        .truncation = b->truncation,
    };
}

/*
 * Parses and validates the request's chat body. On failure answers the request
 * (422 {"detail": [...]} seed / 400 invalid_request_error v1) and returns false.
 */
static bool parse_chat_body(http_req *r, api_env *w, api_flavor f, chat_body *b)
{
    size_t len;
    const char *text = http_req_body(r, &len);
    api_chat_invalid why;
    if (api_chat_body_parse(text, len, f, w->cfg->max_message_bytes, b, &why))
        return true;
    if (f == API_SEED) {
        http_req_log_set(r, "error_type", json_string("validation_error"));
        http_reply_json(r, 422, json_pack("{s:o}", "detail", why.detail));
    } else {
        json_decref(why.detail);
        api_error(r, API_V1, 400, "invalid_request_error", "%s", why.message);
    }
    return false;
}

/* ---- renderers ---- */

/* Writes one SSE event: "event: NAME\ndata: JSON\n\n" (json stolen). */
static bool sse_event(chat_ctx *c, const char *name, json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    char *ev = chat_xasprintf("event: %s\ndata: %s\n\n", name, text ? text : "{}");
    free(text);
    bool full = chat_write(c, ev, strlen(ev));
    free(ev);
    return full;
}

static void seed_json_done(chat_ctx *c, const turn_result *res)
{
    char ts[32];
    chat_format_iso_local(res->created_at, ts);
    http_reply_json(c->r, 200,
                    json_pack("{s:s%,s:s,s:s,s:I}", "response", res->text, res->text_len, "session_id", res->session_id,
                              "timestamp", ts, "turn_count", (json_int_t)res->turn_count));
}

static const chat_renderer seed_json = {
    .stream = false,
    .done = seed_json_done,
    .error = chat_error_reply,
};

/* The template's /chat-stream: raw text. The response starts with the first
 * byte of the reply, so a failure before it still gets a real status. */
static bool seed_text_delta(chat_ctx *c, const char *text, size_t len)
{
    if (!c->started) {
        http_stream_start(c->r, 200, "text/plain; charset=utf-8");
        c->started = true;
    }
    return chat_write(c, text, len);
}

static void seed_text_done(chat_ctx *c, const turn_result *res)
{
    (void)res;
    if (!c->started)
        http_stream_start(c->r, 200, "text/plain; charset=utf-8");
    http_stream_end(c->r);
}

static void seed_text_error(chat_ctx *c, const turn_error *err)
{
    if (!c->started) {
        chat_error_reply(c, err);
        return;
    }
    char *tail = chat_xasprintf("\nError: %s", err->message); /* the template's trailer */
    chat_write(c, tail, strlen(tail));
    free(tail);
    http_stream_end(c->r);
}

static const chat_renderer seed_text = {
    .stream = true,
    .delta = seed_text_delta,
    .done = seed_text_done,
    .error = seed_text_error,
};

static void v1_json_done(chat_ctx *c, const turn_result *res)
{
    char ts[32], idbuf[32];
    chat_format_rfc3339(res->created_at, ts);
    snprintf(idbuf, sizeof idbuf, "msg_%lld", (long long)res->message_id);
    http_reply_json(c->r, 200,
                    json_pack("{s:s,s:s,s:s,s:s%,s:s?,s:o,s:o,s:I,s:I,s:s,s:s}", "id", idbuf, "session_id",
                              res->session_id, "model", res->model, "response", res->text, res->text_len, "stop_reason",
                              res->stop_reason, "usage", api_usage_json(&res->usage), "cost",
                              api_cost_json(res->cost_micros), "turn_count", (json_int_t)res->turn_count,
                              "truncated_turns", (json_int_t)res->truncated_turns, "created_at", ts, "request_id",
                              http_req_id(c->r)));
}

static const chat_renderer v1_json = {
    .stream = false,
    .done = v1_json_done,
    .error = chat_error_reply,
};

static void v1_sse_start(chat_ctx *c, const turn_info *info)
{
    chat_start_sse(c);
    sse_event(c, "start",
              json_pack("{s:s,s:s,s:s}", "session_id", info->session_id, "model", info->model, "request_id",
                        http_req_id(c->r)));
}

static bool v1_sse_delta(chat_ctx *c, const char *text, size_t len)
{
    return sse_event(c, "delta", json_pack("{s:s%}", "text", text, len));
}

static void v1_sse_done(chat_ctx *c, const turn_result *res)
{
    char idbuf[32];
    snprintf(idbuf, sizeof idbuf, "msg_%lld", (long long)res->message_id);
    sse_event(c, "done",
              json_pack("{s:s,s:s,s:s,s:s?,s:o,s:o,s:I,s:I}", "id", idbuf, "session_id", res->session_id, "model",
                        res->model, "stop_reason", res->stop_reason, "usage", api_usage_json(&res->usage), "cost",
                        api_cost_json(res->cost_micros), "turn_count", (json_int_t)res->turn_count, "truncated_turns",
                        (json_int_t)res->truncated_turns));
    http_stream_end(c->r);
}

static void v1_sse_error(chat_ctx *c, const turn_error *err)
{
    if (!c->started) {
        chat_error_reply(c, err);
        return;
    }
    json_t *data =
        json_pack("{s:s,s:s,s:s}", "type", err->type, "message", err->message, "request_id", http_req_id(c->r));
    if (err->retry_after_s > 0) /* the Retry-After a JSON reply would have carried */
        json_object_set_new(data, "retry_after", json_integer(err->retry_after_s));
    sse_event(c, "error", data);
    http_stream_end(c->r);
}

static const chat_renderer v1_sse = {
    .stream = true,
    .start = v1_sse_start,
    .delta = v1_sse_delta,
    .done = v1_sse_done,
    .error = v1_sse_error,
};

/* ---- handlers ---- */

/* A chat request between its body's validation and its turn (the
 * Idempotency-Key look-up may wait on the store). */
typedef struct chat_job {
    http_req *r;
    api_env *w;
    const chat_renderer *rnd;
    api_flavor f;
    chat_body b;
} chat_job;

static void run_chat(void *ud, idem_decision d, store_idem *idem)
{
    chat_job *j = ud;
    http_req *r = j->r;
    if (d == IDEM_REPLAY) {
        chat_replay_record(r, j->w, j->rnd, j->f, idem, NULL, NULL);
    } else if (d != IDEM_ANSWERED) {
        turn_params p;
        api_chat_turn_params(&j->b, &p);
        p.stream = j->rnd->stream;
        p.request_id = http_req_id(r);
        p.owner = api_identity(r)->key_id[0] ? api_identity(r)->key_id : NULL;
        p.see_all = api_owner_filter(r) == NULL;
        p.idem_scope = api_identity(r)->key_id;
        p.idem_key = d == IDEM_RUN ? http_req_header(r, "Idempotency-Key") : NULL;
        chat_run(r, j->w, j->rnd, j->f, &p, NULL, NULL);
    }
    json_decref(j->b.root);
    http_req_release(r);
    free(j);
}

static void handle_chat(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f)
{
    chat_job *j = chat_xcalloc(1, sizeof *j);
    if (!parse_chat_body(r, w, f, &j->b)) {
        free(j);
        return;
    }
    j->r = r;
    j->w = w;
    j->rnd = rnd;
    j->f = f;
    http_req_hold(r);
    if (f == API_V1)
        api_idempotency_begin(r, w, f, api_identity(r)->key_id, j->b.session_id, run_chat, j);
    else
        run_chat(j, IDEM_NONE, NULL);
}

void api_seed_chat(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &seed_json, API_SEED);
}

void api_seed_chat_stream(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &seed_text, API_SEED);
}

void api_v1_chat(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &v1_json, API_V1);
}

void api_v1_chat_stream(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &v1_sse, API_V1);
}
