/*
 * chat_run.c: one turn for one HTTP request (see chat_run.h).
 */
#include "api/chat_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/idempotency.h"
#include "core/alloc.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"

static void ctx_free(chat_ctx *c)
{
    if (c->rnd_state_free)
        c->rnd_state_free(c->rnd_state);
    free(c->model);
    if (c->start_timer)
        event_free(c->start_timer);
    if (c->heartbeat) {
        event_free(c->heartbeat);
        metrics_active_streams_add(-1);
    }
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
    /* The provider was paid for what was sent and received: count it against
     * TOKEN_LIMIT, or leaving before `done` would dodge the limit. */
    if (t)
        api_debit_tokens(c->r, c->w, turn_estimated_tokens(t));
    turn_cancel(t);
    ctx_free(c);
}

static void on_drain(void *ud)
{
    chat_ctx *c = ud;
    turn_resume(c->t);
}

bool chat_write(chat_ctx *c, const char *data, size_t len)
{
    c->last_write = chat_mono_ms();
    return http_stream_write(c->r, data, len);
}

chat_json_writer *chat_event_open(const char *name)
{
    chat_json_writer *w = chat_json_doc_new(JSON_COMPACT);
    if (name) {
        chat_json_write_raw(w, "event: ", 7);
        chat_json_write_raw(w, name, strlen(name));
        chat_json_write_raw(w, "\n", 1);
    }
    chat_json_write_raw(w, "data: ", 6);
    return w;
}

bool chat_event_send(chat_ctx *c, chat_json_writer *w)
{
    chat_json_write_raw(w, "\n\n", 2);
    size_t len;
    char *text = chat_json_doc_end(w, &len);
    if (!text) {
        chat_log(LOG_ERROR, "cannot encode a stream event", json_pack("{s:s}", "request_id", http_req_id(c->r)));
        return false;
    }
    bool full = chat_write(c, text, len);
    free(text);
    return full;
}

int64_t chat_heartbeat_wait_ms(int64_t idle_ms, int64_t interval_ms)
{
    /* The loop's timers run on libevent's coarse clock (a kernel tick, up to
     * 10 ms, behind chat_mono_ms), so a timer set for one interval can fire a
     * few ms short of it: a sixteenth of the interval counts as a full one,
     * and short of that the timer waits out the rest of the interval, never
     * a whole new one (which would leave two intervals of silence). */
    if (idle_ms >= interval_ms - interval_ms / 16)
        return 0;
    return interval_ms - idle_ms;
}

static void arm_heartbeat(chat_ctx *c, int64_t ms)
{
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    event_add(c->heartbeat, &tv);
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    chat_ctx *c = arg;
    /* Only when the provider has been silent: a proxy must see bytes at least
     * every HEARTBEAT_INTERVAL, and tokens count as bytes. */
    int64_t ms = c->w->cfg->heartbeat_ms;
    int64_t wait = chat_heartbeat_wait_ms(chat_mono_ms() - c->last_write, ms);
    if (!wait) {
        const char *ping = c->rnd->ping ? c->rnd->ping : ": ping\n\n";
        chat_write(c, ping, strlen(ping));
        wait = ms;
    }
    arm_heartbeat(c, wait);
}

void chat_start_sse(chat_ctx *c)
{
    http_add_header(c->r, "Cache-Control", "no-cache");
    http_add_header(c->r, "X-Accel-Buffering", "no");
    http_stream_start(c->r, 200, "text/event-stream; charset=utf-8");
    c->started = true;
    c->heartbeat = evtimer_new(c->w->base, on_heartbeat, c);
    metrics_active_streams_add(1); /* one per SSE stream, until ctx_free */
    arm_heartbeat(c, c->w->cfg->heartbeat_ms);
}

void chat_error_reply(chat_ctx *c, const turn_error *err)
{
    if (err->retry_after_s > 0) {
        char ra[32];
        snprintf(ra, sizeof ra, "%lld", (long long)err->retry_after_s);
        http_add_header(c->r, "Retry-After", ra);
    }
    api_error(c->r, c->flavor, err->status, err->type, "%s", err->message);
}

void chat_log_turn(chat_ctx *c, const turn_result *res)
{
    if (!chat_log_enabled(LOG_INFO)) /* no access log: http_req_log_set would drop them unread */
        return;
    http_req_log_set(c->r, "provider_ms", json_integer(res->provider_ms));
    http_req_log_set(c->r, "tokens", api_usage_json(&res->usage));
    http_req_log_set(c->r, "attempts", json_integer(res->attempts));
    http_req_log_set(c->r, "model", json_string(res->model));
    http_req_log_set(c->r, "cost_micros", json_integer(res->cost_micros));
}

/* X-Chatd-Dropped-Params, once, while headers can still be added. */
static void add_dropped(chat_ctx *c, const char *dropped)
{
    if (!dropped || !*dropped || c->dropped_sent || c->started)
        return;
    http_add_header(c->r, "X-Chatd-Dropped-Params", dropped);
    http_req_log_set(c->r, "dropped_params", json_string(dropped));
    c->dropped_sent = true;
}

json_t *chat_tool_calls_json(const json_t *content)
{
    json_t *calls = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type || strcmp(type, "tool_use") != 0)
            continue;
        json_t *input = json_object_get(b, "input");
        json_array_append_new(calls, json_pack("{s:O?,s:O?,s:O}", "id", json_object_get(b, "id"), "name",
                                               json_object_get(b, "name"), "input", input ? input : json_object()));
    }
    return calls;
}

/* ---- the turn sink: forwards to the renderer ---- */

static void sink_start(void *ud, const turn_info *info)
{
    chat_ctx *c = ud;
    add_dropped(c, info->dropped);
    if (c->rnd->start)
        c->rnd->start(c, info);
}

/* The renderers that defer their stream's header (OpenAI chunks, Anthropic's
 * message_start) name c->model in it: the fallback's, when one took over. */
static void sink_model(void *ud, const char *model)
{
    chat_ctx *c = ud;
    free(c->model);
    c->model = chat_xstrdup(model);
}

static bool sink_delta(void *ud, const char *text, size_t len)
{
    chat_ctx *c = ud;
    return c->rnd->delta ? c->rnd->delta(c, text, len) : false;
}

static bool sink_event(void *ud, const llm_event *ev)
{
    chat_ctx *c = ud;
    if (c->rnd->event)
        return c->rnd->event(c, ev);
    if (ev->kind == LLM_EV_TEXT && c->rnd->delta)
        return c->rnd->delta(c, ev->data, ev->len);
    return false;
}

static void sink_done(void *ud, const turn_result *res)
{
    chat_ctx *c = ud;
    c->t = NULL;
    chat_log_turn(c, res);
    http_req_add_provider_us(c->r, res->provider_us);
    const store_usage *u = &res->usage;
    int64_t tokens = (u->input_tokens > 0 ? u->input_tokens : 0) + (u->output_tokens > 0 ? u->output_tokens : 0) +
                     (u->cache_read_tokens > 0 ? u->cache_read_tokens : 0) +
                     (u->cache_write_tokens > 0 ? u->cache_write_tokens : 0);
    api_debit_tokens(c->r, c->w, tokens);
    add_dropped(c, res->dropped);
    c->rnd->done(c, res);
    ctx_free(c);
}

static void sink_error(void *ud, const turn_error *err)
{
    chat_ctx *c = ud;
    c->t = NULL;
    http_req_log_set(c->r, "error_type", json_string(err->type));
    if (err->attempts > 0)
        http_req_log_set(c->r, "attempts", json_integer(err->attempts));
    c->rnd->error(c, err);
    ctx_free(c);
}

static const turn_sink chat_sink = {
    .on_start = sink_start,
    .on_delta = sink_delta,
    .on_done = sink_done,
    .on_error = sink_error,
    .on_event = sink_event,
    .on_model = sink_model,
};

/* Feeds the renderer's event hook one reply's content as events (a replay). */
static void replay_events(chat_ctx *c, const json_t *content)
{
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        llm_event ev = { .index = (int)i };
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type)
            continue;
        if (strcmp(type, "text") == 0 || strcmp(type, "thinking") == 0) {
            bool text = type[1] == 'e';
            json_t *v = json_object_get(b, text ? "text" : "thinking");
            ev.kind = text ? LLM_EV_TEXT : LLM_EV_THINKING;
            ev.data = json_string_value(v) ? json_string_value(v) : "";
            ev.len = json_string_value(v) ? json_string_length(v) : 0;
            c->rnd->event(c, &ev);
        } else if (strcmp(type, "tool_use") == 0) {
            ev.kind = LLM_EV_TOOL_START;
            ev.id = json_string_value(json_object_get(b, "id"));
            ev.name = json_string_value(json_object_get(b, "name"));
            ev.id = ev.id ? ev.id : "";
            ev.name = ev.name ? ev.name : "";
            c->rnd->event(c, &ev);
            json_t *input = json_object_get(b, "input");
            char *args = input ? chat_json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY, NULL) : NULL;
            llm_event a = { .kind = LLM_EV_TOOL_ARGS, .index = (int)i, .data = args ? args : "{}" };
            a.len = strlen(a.data);
            c->rnd->event(c, &a);
            free(args);
        }
        llm_event stop = { .kind = LLM_EV_BLOCK_STOP, .index = (int)i };
        c->rnd->event(c, &stop);
    }
}

void chat_replay(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f, const turn_result *res,
                 void (*init)(chat_ctx *c, void *arg), void *arg)
{
    chat_ctx *c = chat_xcalloc(1, sizeof *c);
    c->r = r;
    c->w = w;
    c->rnd = rnd;
    c->flavor = f;
    c->last_write = chat_mono_ms();
    http_req_hold(r);
    if (init)
        init(c, arg);
    http_add_header(r, "Idempotent-Replayed", "true");
    http_req_log_set(r, "idempotent_replay", json_true());
    turn_result copy = *res;
    json_t *own = NULL;
    if (!copy.content) {
        /* json_pack fails only on text that is not UTF-8: no block then */
        own = copy.text_len ? json_pack("[{s:s,s:s%}]", "type", "text", "text", copy.text, copy.text_len) : NULL;
        if (!own)
            own = json_array();
        copy.content = own;
    }
    turn_info info = { .session_id = copy.session_id, .model = copy.model };
    if (rnd->start)
        rnd->start(c, &info);
    if (rnd->event)
        replay_events(c, copy.content);
    else if (rnd->delta && copy.text_len)
        rnd->delta(c, copy.text, copy.text_len);
    rnd->done(c, &copy);
    json_decref(own);
    ctx_free(c);
}

void chat_replay_record(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f, const store_idem *rec,
                        void (*init)(chat_ctx *c, void *arg), void *arg)
{
    turn_result res;
    api_idempotency_result(rec, &res);
    json_t *content = NULL;
    if (rec->reply.blocks) {
        content = chat_json_loads(rec->reply.blocks, 0, NULL);
        if (content && !json_is_array(content)) {
            json_decref(content);
            content = NULL;
        }
    }
    res.content = content;     /* NULL: chat_replay makes the text block */
    res.reasoning_tokens = -1; /* not kept with the reply */
    chat_replay(r, w, rnd, f, &res, init, arg);
    json_decref(content);
}

void chat_run(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f, const turn_params *p,
              void (*init)(chat_ctx *c, void *arg), void *arg)
{
    chat_ctx *c = chat_xcalloc(1, sizeof *c);
    c->r = r;
    c->w = w;
    c->rnd = rnd;
    c->flavor = f;
    c->last_write = chat_mono_ms();
    http_req_hold(r);
    if (p->session_id)
        http_req_log_set(r, "session", chat_json_text(p->session_id));
    if (init)
        init(c, arg);
    if (atomic_load(w->stopping)) {
        turn_error err = { .status = 503, .type = "server_shutting_down", .retry_after_s = 1 };
        snprintf(err.message, sizeof err.message, "chatd is shutting down; retry on another instance");
        if (p->idem_key && p->session_id)
            turn_release_idempotency(w->turns, p->idem_scope, p->idem_key, p->request_id);
        rnd->error(c, &err);
        ctx_free(c);
        return;
    }
    turn_error err;
    c->t = turn_start(w->turns, p, &chat_sink, c, &err);
    if (!c->t) {
        http_req_log_set(r, "error_type", json_string(err.type));
        rnd->error(c, &err);
        ctx_free(c);
        return;
    }
    http_req_on_close(r, on_client_close, c);
    http_req_on_drain(r, on_drain, c);
}
