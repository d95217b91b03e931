/*
 * turn.h: one conversation turn, from the lock to the commit.
 *
 * A turn takes the session's turn lock (in the store, so it holds across workers
 * and processes), loads the history, builds the provider request, runs the
 * provider call, and commits the user message and the reply together, only after
 * the provider finished. A provider failure commits nothing: the history stays
 * exactly as it was. A consumer that goes away (turn_cancel) aborts the provider
 * call at once; per CANCEL_POLICY the text received so far is committed marked
 * "incomplete" (keep) or dropped (drop); either way the lock is released and the
 * history stays well-formed (user, assistant, user, assistant, ...).
 *
 * The turn knows nothing about HTTP: it reports to a sink. Sink calls happen on
 * the loop's thread, never from inside turn_start: on_start before any on_delta,
 * then exactly one of on_done / on_error ends a started turn (none after
 * turn_cancel); the turn frees itself right after that call returns, so the
 * consumer must drop its pointer there.
 *
 * The state machine (enum turn_state). A turn waits for one thing at a time:
 * the start of its load, one store operation, or the provider call. "op" is
 * the store operation submitted on entering the state; ENDED means the last
 * sink call is being made and the turn is then freed.
 *
 *   state            entered by                     next, on
 *   QUEUED           turn_start (session turns)     PRECHECK (caller limited to its own sessions)
 *                                                   or LOCKING (see_all), on the next loop turn
 *   PRECHECK         op SESSION_GET                 LOCKING; ENDED 404 (another key's session)
 *   LOCKING          op LOCK_ACQUIRE                LOCKED (taken); ENDED 409 (busy), 503/500
 *   LOCKED           the lock is ours               LOADING_SESSION at once
 *   LOADING_SESSION  op SESSION_GET                 LOADING_HISTORY (exists); COUNTING (new, key
 *                                                   capped); PREPARED (new); ENDED 404, 503/500
 *   COUNTING         op KEY_SESSION_COUNT           PREPARED; ENDED 403 (at MAX_SESSIONS_PER_KEY)
 *   LOADING_HISTORY  op MESSAGES_LIST               PREPARED; ENDED 503/500
 *   PREPARED         request built (ephemeral       CALLING at once; ENDED 400/503 before it
 *                    turns: inside turn_start)      (context, model), 500 (call not started)
 *   CALLING          llm_call_start                 COMMITTING (reply complete; ephemeral: ENDED
 *                                                   on_done); RENEWING_LOCK (failed before any
 *                                                   delta, retryable, a fallback left; ephemeral:
 *                                                   CALLING on the fallback); ENDED on_error
 *   RENEWING_LOCK    op LOCK_REFRESH                RENEWING_IDEM (with an Idempotency-Key) or
 *                                                   CALLING (the fallback); ENDED (provider's error)
 *   RENEWING_IDEM    op IDEM_REFRESH                CALLING (the fallback); ENDED (provider's error)
 *   COMMITTING       op TURN_COMMIT                 ENDED on_done; ENDED on_error 409/503/500
 *   ENDED            the last sink call             (freed)
 *
 * Every ENDED without a commit (errors, turn_cancel, turn_abort_all) takes one
 * path: the call is aborted, the lock (held from LOCKED to COMMITTING) and the
 * Idempotency-Key record are given back, a cancelled turn's partial reply is
 * committed "incomplete" first under CANCEL_POLICY=keep. turn_cancel and
 * turn_abort_all in QUEUED, PREPARED or CALLING end the turn at once; in a
 * state waiting on a store operation they unlink the turn (turn_abort_all
 * answers it 503 first) and the operation's completion ends it, giving back
 * what it took; in COMMITTING the commit still lands (turn_cancel: silently;
 * turn_abort_all leaves the turn alone: it answers). A store or provider
 * callback in a state that does not expect it aborts the process.
 */
#ifndef CHATD_CHAT_TURN_H
#define CHATD_CHAT_TURN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llm/provider.h"
#include "llm/transport.h"
#include "store/store.h"

struct event_base;
struct model_table;

typedef struct turn turn;

/* What a turn waits for; the transition table is at the top of this file. */
typedef enum turn_state {
    TURN_QUEUED = 0,
    TURN_PRECHECK,
    TURN_LOCKING,
    TURN_LOCKED,
    TURN_LOADING_SESSION,
    TURN_COUNTING,
    TURN_LOADING_HISTORY,
    TURN_PREPARED,
    TURN_CALLING,
    TURN_RENEWING_LOCK,
    TURN_RENEWING_IDEM,
    TURN_COMMITTING,
    TURN_ENDED,
} turn_state;

/* The state's name in logs, e.g. "loading_history"; "?" for a bad value. */
const char *turn_state_name(turn_state s);

/* Submits a store operation with the meaning of store_submit (cb, if any,
 * runs once, on a later turn of the loop). */
typedef void (*turn_submit_fn)(void *ctx, store_op *op, store_op_cb cb, void *ud);

/*
 * What the turns of one loop need from the server around them, and nothing
 * more: filled in once by the owner of the loop (src/app/), then read-only.
 * Every pointer is borrowed and must outlive the engine made from it.
 */
typedef struct turn_env {
    struct event_base *base;           /* the loop every callback of a turn runs on */
    store *db;                         /* this loop's store handle (attached to base) */
    turn_submit_fn submit;             /* NULL: store_submit(db, ...); tests put a deferring one here */
    void *submit_ctx;                  /* first argument of submit */
    llm_transport *llm;                /* this loop's provider transport */
    const struct model_table *models;  /* the models table (read-only, shared by every loop) */
    int max_tokens;                    /* MAX_TOKENS: the reply limit when a request names none */
    const char *default_system_prompt; /* DEFAULT_SYSTEM_PROMPT, for a new session without one */
    int64_t lock_ttl_ms;               /* LOCK_TTL: the turn lock's and the Idempotency-Key lease's length */
    int64_t max_sessions_per_key;      /* MAX_SESSIONS_PER_KEY, 0 = no cap */
    bool keep_partial;                 /* CANCEL_POLICY=keep: a cancelled turn's partial reply is committed */
    /* DROP_UNSUPPORTED_PARAMS=on: an option the model refuses is left out
     * (named in turn_info.dropped) instead of failing the turn with 400
     * unsupported_parameter. */
    bool drop_unsupported;
} turn_env;

/* The turns of one loop: a copy of its env and the list of its running turns.
 * Owned by the loop's owner; used from that loop's thread only. */
typedef struct turn_engine turn_engine;

/* Makes the engine of a loop; env is copied (not what it points to). Aborts on OOM. */
turn_engine *turn_engine_new(const turn_env *env);

/* Frees the engine. Call after turn_abort_all and after the store's
 * operations have completed (store_detach), when no turn is left. Accepts NULL. */
void turn_engine_free(turn_engine *e);

/* True when no turn is running (the drain waits for it, with the store idle). */
bool turn_engine_idle(const turn_engine *e);

typedef enum {
    TURN_TRUNCATE_AUTO = 0, /* leave out the oldest whole turns (reported as truncated_turns) */
    TURN_TRUNCATE_REJECT,   /* answer 400 context_length_exceeded instead */
} turn_truncation;

typedef struct turn_params {
    const char *session_id; /* NULL: an ephemeral turn (no lock, no history, nothing stored) */
    /* Ephemeral turns: the conversation before message (copied; the blocks
     * of its messages are referenced, json_incref, not deep-copied). Every
     * reply in it that calls tools must be followed by the user's results,
     * as for the new message below (400 tool_results_required /
     * unexpected_tool_results naming the history message). */
    const llm_message *history;
    size_t n_history;
    const char *message; /* the new user message's text (ignored when message_blocks is set) */
    /* NULL, or the new user message as canonical blocks (llm/content.h):
     * text and images, or the results of the previous reply's tool calls
     * (tool_result blocks). A session whose last reply called tools accepts
     * only a message that answers every one of those calls (400
     * tool_results_required otherwise), and tool results answer nothing else
     * (400 unexpected_tool_results). Precisely: the message begins with exactly
     * one tool_result per tool_use id of that reply (any order), then any
     * text and image blocks. Blocks that are not well-formed canonical user
     * content (llm_content_check) fail turn_start with 400
     * invalid_request_error. Copied (json_deep_copy) by turn_start. The
     * committed user message keeps them (store_turn.user_blocks). */
    const json_t *message_blocks;
    /* NULL, or the request options (llm/content.h), checked against the
     * answering model before the call (400 unsupported_parameter naming the
     * option and the model, or dropped per env.drop_unsupported). Copied.
     * The content sent (the new message and the kept history) is checked
     * too: images on a model without "vision", tool blocks on one without
     * "tools" are 400 unsupported_parameter (never dropped). response_format
     * json_schema/json_object on a model without "structured_output" goes
     * through the forced tool (llm_request.json_via_tool).
     * FALLBACKS are checked the same way before they are tried: a fallback
     * that cannot read the content is skipped; one that refuses an option is
     * skipped too, unless env.drop_unsupported, which then drops the option
     * for it (turn_result.dropped names what the answering model went
     * without). */
    const json_t *options;
    /* NULL, or the request fields the API already left out under
     * DROP_UNSUPPORTED_PARAMS (fields no provider takes), comma-separated:
     * reported first in turn_info.dropped / turn_result.dropped, so that a
     * response names every dropped field in one X-Chatd-Dropped-Params. Copied. */
    const char *dropped;
    const char *system_prompt;  /* NULL: the session's, or DEFAULT_SYSTEM_PROMPT for a new session */
    const char *model;          /* NULL: the session's model, or CHAT_MODEL; unknown names: 400 */
    int max_tokens;             /* 0: MAX_TOKENS */
    bool stream;                /* use the provider's streaming mode */
    const char *request_id;     /* used as the lock token and in logs */
    const char *owner;          /* API key id owning new sessions (and charged), may be NULL */
    bool see_all;               /* the caller may use any session; else only those of owner */
    const char *idem_scope;     /* with idem_key: the Idempotency-Key record this turn completes */
    const char *idem_key;       /* (begun by the caller with the request id as token), or NULL */
    turn_truncation truncation; /* when the conversation exceeds the model's context window */
} turn_params;

/* How long a committed turn stays replayable under its Idempotency-Key. */
#define TURN_IDEMPOTENCY_TTL_MS (24LL * 3600 * 1000)

/* A client-facing error: HTTP status, a stable type, and a message safe to show. */
typedef struct turn_error {
    int status;
    const char *type; /* static string, e.g. "session_busy" */
    char message[512];
    int64_t retry_after_s; /* > 0: send Retry-After */
    int attempts;          /* provider attempts made (0: the provider was not called) */
} turn_error;

typedef struct turn_info {
    const char *session_id;
    const char *model;
    const char *dropped; /* options left out (DROP_UNSUPPORTED_PARAMS), comma-separated, or NULL */
} turn_info;

/* A committed reply keeps its blocks (store_turn.assistant_blocks) when it
 * holds anything but text (tool calls, thinking); a plain-text reply keeps
 * blocks NULL. A cancelled turn's partial reply (CANCEL_POLICY=keep) is
 * committed as its text only: tool calls and thinking of a reply that never
 * finished are not kept, so no call is left waiting for results. */

typedef struct turn_result {
    const char *session_id;
    const char *model;
    const char *text;
    size_t text_len;
    const char *stop_reason;
    const char *stop_sequence; /* the stop sequence that ended the reply, when the provider said; else NULL */
    /* The reply as canonical content (llm/content.h); never NULL. text above
     * is its text (for structured output through a forced tool: the tool's
     * input as JSON text). Borrowed during on_done. */
    const json_t *content;
    const char *dropped; /* as turn_info.dropped */
    store_usage usage;
    int64_t reasoning_tokens; /* of usage.output_tokens, spent thinking; -1 = not reported */
    int64_t cost_micros;      /* what the turn cost on the answering model */
    int64_t message_id;       /* the assistant message's id */
    int64_t turn_count;
    int64_t created_at; /* ms since epoch */
    int attempts;
    int64_t provider_ms;
    int64_t truncated_turns; /* oldest turns left out of the provider request */
    int64_t provider_us;     /* time in provider calls, fallbacks' included (provider_ms in microseconds) */
} turn_result;

typedef struct turn_sink {
    /* The provider call is under way (lock taken, history loaded). */
    void (*on_start)(void *ud, const turn_info *info);
    /* A piece of the reply (streaming). Return true when the consumer is full:
     * the provider transfer pauses until turn_resume(). */
    bool (*on_delta)(void *ud, const char *text, size_t len);
    /* The turn is committed. */
    void (*on_done)(void *ud, const turn_result *res);
    /* The turn failed; nothing was committed. */
    void (*on_error)(void *ud, const turn_error *err);
    /* Optional: when set, every reply event (llm/content.h, text included)
     * comes here instead of on_delta, in stream order. Return true when the
     * consumer is full, as on_delta. */
    bool (*on_event)(void *ud, const llm_event *ev);
    /* Optional: after on_start, a fallback model took the turn over (nothing
     * of the reply had reached the sink yet); model is its name, borrowed for
     * the call. A stream that has not sent its header yet names this one. */
    void (*on_model)(void *ud, const char *model);
} turn_sink;

/*
 * Starts a turn in engine e (on e's loop thread). On success returns the turn
 * (owned by itself: it ends with on_done or on_error, or with turn_cancel), in
 * TURN_QUEUED (session turns) or TURN_CALLING (ephemeral); the session's load runs
 * from the loop, through the asynchronous store, so its failures (409
 * session_busy, 404, 403 session_limit_reached, 500/503 database) arrive as
 * on_error. A failure known at once (unknown model: 400; provider not
 * configured: 503; an ephemeral conversation too long: 400) returns NULL and
 * fills *err; no sink call is made.
 */
turn *turn_start(turn_engine *e, const turn_params *p, const turn_sink *sink, void *ud, turn_error *err);

/* The state of a running turn (t non-NULL, not yet ended), for tests and logs. */
turn_state turn_get_state(const turn *t);

/* An estimate of the provider tokens the turn has used so far (the request
 * sent plus the reply received), for TOKEN_LIMIT when a turn ends without the
 * provider's usage (a client that went away). */
int64_t turn_estimated_tokens(const turn *t);

/* The consumer drained after on_delta returned true: resume the provider. */
void turn_resume(turn *t);

/* The consumer went away: abort the provider call, keep or drop the partial
 * reply per CANCEL_POLICY, release the lock, free the turn (or, while a store
 * operation of the turn is in flight, leave that to its callback; a commit in
 * flight still lands). No sink call after this returns. Must not be called
 * from inside a sink callback. */
void turn_cancel(turn *t);

/* Cancels every running turn of e (graceful shutdown after the drain deadline):
 * each gets on_error (503 "server_shutting_down") and then ends as by
 * turn_cancel (a turn waiting on a store operation is answered at once and
 * unlinked: the operation's completion gives back what it took). A commit in
 * flight completes normally and answers: keep the loop running until
 * turn_engine_idle and the store has no operation pending. */
void turn_abort_all(turn_engine *e);

/* Gives back a running Idempotency-Key record owned by token (nothing will
 * complete it: a retry may run the request again). Fire and forget. */
void turn_release_idempotency(turn_engine *e, const char *scope, const char *key, const char *token);

/* Fills e: status, type (a static string), the message from fmt (cut at a
 * character boundary if too long), no Retry-After, no attempts. */
void turn_error_set(turn_error *e, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The error a client sees for a failed store operation (rc): 503
 * database_unavailable with Retry-After when a retry may succeed
 * (CHAT_EUNAVAIL), else 500. */
void turn_store_error(chat_rc rc, turn_error *err);

/* Maps a provider outcome to the client-facing error (the table in docs/API.md). */
void turn_map_llm_error(const llm_result *res, turn_error *err);

#endif
