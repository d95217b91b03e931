/*
 * store.h: durable conversation memory, behind one interface.
 *
 * A store handle is one connection to the database. Each worker thread opens its
 * own handle and uses it from that thread only; handles are not thread-safe, but
 * any number of handles (threads, processes) may share one database.
 *
 * Calling convention (chosen once, for every backend): calls are synchronous and
 * short. The SQLite backend runs small indexed transactions (WAL mode) and is
 * measured by the benchmark; a backend that talks to a remote server must keep
 * each call bounded by its own deadline and report CHAT_EUNAVAIL when it cannot.
 *
 * Data model. A session is created by the first turn committed to it (never by a
 * failed turn). Its messages are rows numbered by `seq` (1, 2, ...) in order;
 * counters (turns, messages, tokens, cost) are kept on the session row and on a
 * global stats row, updated in the same transaction as the messages, so nothing
 * is computed by scanning. A turn (user message + assistant reply + usage) is
 * committed atomically by store_turn_commit(), which also releases the turn lock.
 *
 * Turn locks live in the database so they hold across workers and processes; a
 * lock carries an expiry so that a lock left by a killed process goes stale.
 * A token "holds" the lock while the lock row carries it: an expired lock that
 * nobody took over still lets its holder refresh it or commit (no other turn can
 * have written in between), until store_lock_acquire by another token or the
 * sweeper (store_sessions_expire) removes it.
 *
 * Times are milliseconds since the Unix epoch (UTC). Token counts are int64;
 * -1 means "unknown" (e.g. a stream cut before the provider reported usage).
 * Costs are integer micro-dollars.
 *
 * Ownership: strings passed in are borrowed for the duration of the call. Output
 * structs own their heap strings; release them with the matching *_clear/_free.
 * Session ids, lock tokens and owners are 1..STORE_ID_MAX bytes (CHAT_EINVAL
 * otherwise, as for a NULL handle or NULL output pointer).
 *
 * Return values: CHAT_OK on success; CHAT_ENOTFOUND when the named session does
 * not exist; CHAT_EBUSY when a lock is held; CHAT_ECONFLICT when a commit's lock
 * token no longer owns the lock; CHAT_EINVAL on bad arguments; CHAT_EIO on any
 * database error (the error text goes to the log).
 */
#ifndef CHATD_STORE_STORE_H
#define CHATD_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

typedef struct store store;

/* Longest session id, lock token or owner the store accepts, in bytes. */
#define STORE_ID_MAX 255

/* Token usage of one provider call, or of a sum of calls. -1 = unknown. */
typedef struct store_usage {
    int64_t input_tokens;        /* uncached input tokens */
    int64_t output_tokens;
    int64_t cache_read_tokens;   /* input tokens read from the prompt cache */
    int64_t cache_write_tokens;  /* input tokens written to the prompt cache */
} store_usage;

typedef struct store_session {
    char *id;
    char *owner;          /* API key id that created it; NULL when auth is off */
    char *system_prompt;  /* fixed by the first turn, as the template does */
    char *model;          /* model of the last committed turn */
    int64_t created_at;
    int64_t updated_at;   /* time of the last commit or reset */
    int64_t turn_count;   /* committed turns since the last reset */
    int64_t message_count;
    store_usage usage;    /* totals over all turns ever committed (kept across resets); unknown parts count as 0 */
    int64_t cost_micros;  /* total cost over all turns */
} store_session;

typedef struct store_message {
    int64_t id;           /* globally unique, increasing */
    int64_t seq;          /* position in its session: 1, 2, ... */
    char *role;           /* "user" or "assistant" */
    char *content;
    char *status;         /* "complete", or "incomplete" for a reply cut by a disconnect */
    char *model;          /* assistant messages: the model that answered; NULL for user messages */
    char *stop_reason;    /* assistant messages: provider stop reason, or NULL */
    int64_t tokens;       /* tokens this message costs in context (user: input share, assistant: output), -1 unknown */
    store_usage usage;    /* assistant messages: the provider call's usage; all -1 for user messages */
    int64_t cost_micros;  /* assistant messages: the turn's cost; 0 for user messages */
    int64_t created_at;
} store_message;

/*
 * total_* always equal what a scan of the stored data would give (a reset takes
 * its messages and turns out, a delete its session, messages and turns). usage
 * and cost_micros cover every turn ever committed: deletes and resets do not
 * refund them.
 */
typedef struct store_stats {
    int64_t total_sessions;
    int64_t total_messages;
    int64_t total_turns;   /* sum of the sessions' turn_count */
    store_usage usage;     /* unknown parts count as 0 */
    int64_t cost_micros;
} store_stats;

/* Everything one turn commits. */
typedef struct store_turn {
    const char *session_id;
    const char *owner;           /* may be NULL */
    const char *system_prompt;   /* used only when the session does not exist yet */
    const char *model;
    const char *user_content;
    const char *assistant_content;
    const char *status;          /* "complete" or "incomplete" */
    const char *stop_reason;     /* may be NULL */
    int64_t user_tokens;         /* -1 if unknown */
    store_usage usage;
    int64_t cost_micros;
    const char *lock_token;      /* the token that holds the session's turn lock */
    int64_t now;
} store_turn;

typedef struct store_turn_result {
    int64_t user_message_id;
    int64_t assistant_message_id;
    int64_t turn_count;          /* the session's turn count after this turn */
    int64_t message_count;
} store_turn_result;

/*
 * Opens the database named by url and applies pending schema migrations
 * (idempotent, safe when several processes start at once). A database whose
 * schema is newer than this binary's migrations is refused (CHAT_EIO).
 * Supported: "sqlite:///relative/path.db" (three slashes: relative to the current
 * directory), "sqlite:////absolute/path.db", and "sqlite://:memory:" for tests
 * (a private database per handle, gone at close).
 * The parent directory of a file database is created if missing. On failure
 * writes a one-line reason into err (if errlen > 0) and returns CHAT_EINVAL (bad
 * url) or CHAT_EIO. On success *out owns the handle.
 */
chat_rc store_open(const char *url, store **out, char *err, size_t errlen) CHAT_MUST_CHECK;

/* Closes the handle (finalizes statements; with SQLite the last connection to a
 * file also checkpoints its WAL). Accepts NULL. */
void store_close(store *s);

/* The schema version after migrations (for /readyz and `chatd migrate`). */
int store_schema_version(store *s);

/* A trivial round trip to the database; CHAT_OK when it answers. */
chat_rc store_ping(store *s) CHAT_MUST_CHECK;

/*
 * Takes the turn lock of session_id for token until now + ttl_ms. Succeeds if no
 * lock exists or the existing one expired (its holder died); CHAT_EBUSY if a live
 * lock is held by any token (including this same token). The session need not exist.
 */
chat_rc store_lock_acquire(store *s, const char *session_id, const char *token,
                           int64_t now, int64_t ttl_ms) CHAT_MUST_CHECK;

/* Extends a held lock to now + ttl_ms. CHAT_ECONFLICT if token no longer holds it. */
chat_rc store_lock_refresh(store *s, const char *session_id, const char *token,
                           int64_t now, int64_t ttl_ms) CHAT_MUST_CHECK;

/* Releases the lock if token holds it; releasing a lock not held is not an error. */
chat_rc store_lock_release(store *s, const char *session_id, const char *token) CHAT_MUST_CHECK;

/*
 * Commits a turn in one transaction: creates the session if needed (with
 * turn->system_prompt and owner), appends the user message then the assistant
 * message, updates the session's and the global counters, and releases the lock.
 * CHAT_ECONFLICT (nothing written) if turn->lock_token does not hold the lock.
 * On success fills *res (may be NULL).
 */
chat_rc store_turn_commit(store *s, const store_turn *turn, store_turn_result *res) CHAT_MUST_CHECK;

/* Fetches one session. CHAT_ENOTFOUND if it does not exist. *out must be cleared by the caller. */
chat_rc store_session_get(store *s, const char *session_id, store_session *out) CHAT_MUST_CHECK;

/* Frees the strings of a session filled by the store and zeroes it. Accepts NULL. */
void store_session_clear(store_session *sess);

/*
 * Deletes a session and its messages (and any turn lock on it).
 * CHAT_ENOTFOUND if it does not exist.
 */
chat_rc store_session_delete(store *s, const char *session_id) CHAT_MUST_CHECK;

/*
 * Deletes the session's messages and sets its turn and message counts to 0; the
 * session itself (system prompt, creation time, cost totals) remains.
 * *previous_turns receives the turn count before the reset. CHAT_ENOTFOUND if it
 * does not exist.
 */
chat_rc store_session_reset(store *s, const char *session_id, int64_t now,
                            int64_t *previous_turns) CHAT_MUST_CHECK;

/*
 * Lists sessions, newest first (by creation time, then id). owner filters by
 * owner when non-NULL. cursor is NULL for the first page, else a value returned
 * in *next_cursor. At most limit (1..1000) sessions are returned in *out (an
 * array of *n, free with store_sessions_free). *next_cursor is a heap string
 * when more sessions follow, else NULL; an invalid cursor gives CHAT_EINVAL.
 */
chat_rc store_sessions_list(store *s, const char *owner, const char *cursor, int limit,
                            store_session **out, size_t *n, char **next_cursor) CHAT_MUST_CHECK;

void store_sessions_free(store_session *arr, size_t n);

/*
 * Lists a session's messages in order, those with seq > after_seq, at most limit
 * of them (limit <= 0: all). CHAT_ENOTFOUND if the session does not exist.
 * *out is an array of *n (free with store_messages_free).
 */
chat_rc store_messages_list(store *s, const char *session_id, int64_t after_seq, int limit,
                            store_message **out, size_t *n) CHAT_MUST_CHECK;

void store_messages_free(store_message *arr, size_t n);

/* Global counters, read from the stats row (no scan). */
chat_rc store_stats_get(store *s, store_stats *out) CHAT_MUST_CHECK;

/*
 * Deletes at most limit sessions whose updated_at < before (retention sweeper),
 * keeping counters right; *deleted receives how many were deleted. Sessions with
 * a live turn lock are skipped. Also removes every expired turn lock (expires_at
 * <= now), so that locks left by dead holders do not accumulate.
 */
chat_rc store_sessions_expire(store *s, int64_t before, int64_t now, int limit,
                              int64_t *deleted) CHAT_MUST_CHECK;

#endif
