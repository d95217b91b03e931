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
 * the worker's loop thread, never from inside turn_start. Exactly one of
 * on_done / on_error ends a started turn; the turn frees itself right after that
 * call returns, so the consumer must drop its pointer there.
 */
#ifndef CHATD_CHAT_TURN_H
#define CHATD_CHAT_TURN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app/app.h"
#include "store/store.h"

typedef struct turn turn;

typedef enum {
    TURN_TRUNCATE_AUTO = 0,     /* leave out the oldest whole turns (reported as truncated_turns) */
    TURN_TRUNCATE_REJECT,       /* answer 400 context_length_exceeded instead */
} turn_truncation;

typedef struct turn_params {
    const char *session_id;     /* NULL: an ephemeral turn (no lock, no history, nothing stored) */
    const llm_message *history; /* ephemeral turns: the conversation before message (copied) */
    size_t n_history;
    const char *message;
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
    const char *type;           /* static string, e.g. "session_busy" */
    char message[512];
    int64_t retry_after_s;      /* > 0: send Retry-After */
    int attempts;               /* provider attempts made (0: the provider was not called) */
} turn_error;

typedef struct turn_info {
    const char *session_id;
    const char *model;
} turn_info;

typedef struct turn_result {
    const char *session_id;
    const char *model;
    const char *text;
    size_t text_len;
    const char *stop_reason;
    store_usage usage;
    int64_t cost_micros;        /* what the turn cost on the answering model */
    int64_t message_id;         /* the assistant message's id */
    int64_t turn_count;
    int64_t created_at;         /* ms since epoch */
    int attempts;
    int64_t provider_ms;
    int64_t truncated_turns;    /* oldest turns left out of the provider request */
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
} turn_sink;

/*
 * Starts a turn on worker w. On success returns the turn (owned by itself: it
 * ends with on_done or on_error, or with turn_cancel); the session's load runs
 * from the loop, through the asynchronous store, so its failures (409
 * session_busy, 404, 403 session_limit_reached, 500/503 database) arrive as
 * on_error. A failure known at once (unknown model: 400; provider not
 * configured: 503; an ephemeral conversation too long: 400) returns NULL and
 * fills *err; no sink call is made.
 */
turn *turn_start(chat_worker *w, const turn_params *p, const turn_sink *sink, void *ud,
                 turn_error *err);

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

/* Cancels every running turn of w (graceful shutdown after the drain deadline):
 * each gets on_error (503 "server shutting down") and then ends as by
 * turn_cancel (a turn whose load waits on the store is answered at once and
 * detached: the operation's callback cleans up). A commit in flight completes
 * normally and answers: keep the loop running until w->turns is empty. */
void turn_abort_all(chat_worker *w);

/* Gives back a running Idempotency-Key record owned by token (nothing will
 * complete it: a retry may run the request again). Fire and forget. */
void turn_release_idempotency(chat_worker *w, const char *scope, const char *key, const char *token);

/* Maps a provider outcome to the client-facing error (the table in docs/API.md). */
void turn_map_llm_error(const llm_result *res, turn_error *err);

#endif
