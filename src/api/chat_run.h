/*
 * chat_run.h: runs one turn for one HTTP request, shared by every chat
 * endpoint. What differs between endpoints (JSON, raw text, SSE, OpenAI chunks)
 * is a renderer: a few functions that turn the turn's events into bytes.
 *
 * A chat_ctx ties the request to the turn: it holds a reference on the request;
 * the client going away cancels the turn; the turn ending (done or error)
 * renders the response and frees the context. Internal to src/api/.
 */
#ifndef CHATD_API_CHAT_RUN_H
#define CHATD_API_CHAT_RUN_H

#include "api/api.h"
#include "chat/turn.h"
#include "llm/content.h"
#include "store/store.h"

typedef struct chat_ctx chat_ctx;

typedef struct chat_renderer {
    bool stream;                                              /* ask the provider to stream */
    void (*start)(chat_ctx *c, const turn_info *info);        /* may be NULL */
    bool (*delta)(chat_ctx *c, const char *text, size_t len); /* may be NULL; true = client full */
    void (*done)(chat_ctx *c, const turn_result *res);        /* must end the response */
    void (*error)(chat_ctx *c, const turn_error *err);        /* must end the response */
    /*
     * May be NULL. When set, every reply event (llm/content.h: text, thinking,
     * tool-call start and argument pieces, block stops), text included, comes
     * here in stream order, and delta is not called for the text the turn
     * delivers as events; true = client full (as delta). Set delta too: a
     * turn (or a provider) that reports only text pieces still calls delta.
     * When NULL, text events go to delta and the others are dropped, so a
     * text-only renderer sees exactly what it saw before events existed.
     */
    bool (*event)(chat_ctx *c, const llm_event *ev);
    /* The bytes of one heartbeat on an SSE stream; NULL: the comment ": ping". */
    const char *ping;
} chat_renderer;

struct chat_ctx {
    http_req *r;
    api_env *w;
    turn *t;
    const chat_renderer *rnd;
    api_flavor flavor;
    bool started; /* response headers sent */
    struct event *heartbeat;
    struct event *start_timer; /* a renderer's deferred stream start (freed with the context) */
    int64_t last_write;        /* monotonic ms of the last byte queued */
    /* for the OpenAI-compatible renderer */
    bool include_usage;
    int64_t created;         /* seconds since the epoch */
    char completion_id[160]; /* "chatcmpl-" + the request id (at most 131 bytes) */
    char *model;             /* the answering model's name, owned (any length a models file gives) */
    bool dropped_sent;       /* X-Chatd-Dropped-Params added */
    /* a renderer's own state, e.g. a tool call's arguments being streamed;
     * rnd_state_free (when set) frees it with the context */
    void *rnd_state;
    void (*rnd_state_free)(void *state);
};

/*
 * Starts the turn described by p and answers r through rnd. Always answers r
 * (at once on a start failure, later otherwise). init (may be NULL) is applied
 * to the context before the turn starts. When the turn left options out
 * (DROP_UNSUPPORTED_PARAMS: turn_info.dropped / turn_result.dropped), the
 * response carries X-Chatd-Dropped-Params with their names (added before the
 * renderer's start, or before done when start sent nothing).
 */
void chat_run(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f, const turn_params *p,
              void (*init)(chat_ctx *c, void *arg), void *arg);

/*
 * Answers r with a turn that already happened (an Idempotency-Key replay),
 * through the same renderer: start, then the reply (a renderer with an event
 * hook gets res->content as events, block by block: a text block as one TEXT
 * event, a tool_use block as TOOL_START, its input as one TOOL_ARGS piece,
 * and every block closed by BLOCK_STOP; else the whole text as one delta),
 * then done. res->content NULL is taken as one text block of res->text.
 */
void chat_replay(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f, const turn_result *res,
                 void (*init)(chat_ctx *c, void *arg), void *arg);

/*
 * chat_replay of a replayable Idempotency-Key record (has_reply): the result
 * is read from rec's stored assistant message, its canonical blocks included
 * (store_message.blocks), so a replayed tool-call reply carries its calls.
 */
void chat_replay_record(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f, const store_idem *rec,
                        void (*init)(chat_ctx *c, void *arg), void *arg);

/* The reply's tool calls as [{id, name, input}] from canonical content (new
 * reference, maybe empty; NULL-safe). */
json_t *chat_tool_calls_json(const json_t *content);

/* Queues bytes on a started stream; true when the client's queue is full. */
bool chat_write(chat_ctx *c, const char *data, size_t len);

/*
 * One SSE event written without a tree: chat_event_open starts it ("event:
 * NAME\n" when name is not NULL, then "data: ") and returns a document
 * writer (core/json_out.h, compact) for its data, one value; chat_event_send
 * ends the event and queues it (chat_write's return). An event whose data
 * failed (a string that is not UTF-8: a bug) is logged and dropped, so that
 * a client never gets half an event.
 */
chat_json_writer *chat_event_open(const char *name);
bool chat_event_send(chat_ctx *c, chat_json_writer *w);

/*
 * Starts an SSE response (headers for proxies) with heartbeats (the
 * renderer's ping): one whenever nothing was written for HEARTBEAT_INTERVAL.
 */
void chat_start_sse(chat_ctx *c);

/*
 * The heartbeat's decision after idle_ms of silence on a stream whose interval
 * is interval_ms: 0 = send a heartbeat now, else how many ms to wait before
 * asking again (the rest of the interval). Pure; exposed for its unit test.
 */
int64_t chat_heartbeat_wait_ms(int64_t idle_ms, int64_t interval_ms);

/* Answers an error before any byte was sent (with Retry-After when set). */
void chat_error_reply(chat_ctx *c, const turn_error *err);

/* Adds the turn's figures to the access-log line. */
void chat_log_turn(chat_ctx *c, const turn_result *res);

#endif
