/*
 * store.h: durable conversation memory, behind one interface.
 *
 * A store handle is one connection to the database. Each worker thread opens its
 * own handle and uses it from that thread only; handles are not thread-safe, but
 * any number of handles (threads, processes) may share one database.
 *
 * Two ways to call. The functions below are synchronous: the caller's thread
 * waits for the database. They serve the command line, the tests and the
 * SQLite backend, whose calls are short and local (measured by the benchmark).
 * A server loop thread never waits on a network round trip, so it goes
 * through store operations instead (store_op, at the end of this header): the
 * same calls as data, submitted with store_submit and completed by a callback
 * on a later loop turn. SQLite runs reads at once on the handle's connection
 * and completes them on the next loop turn, and hands writes to one writer
 * thread per database file, which commits them in groups (one transaction and
 * one fsync for many turns, a savepoint per op so that a failed op fails
 * alone) and completes each on its loop once its group is on disk
 * (src/store/sqlite_writer.c); PostgreSQL queues them for a bounded pool of
 * connections driven by the loop with libpq's asynchronous API.
 *
 * Backends: "sqlite://..." (src/store/sqlite.c) and "postgres://..." or
 * "postgresql://..." (src/store/postgres.c), one schema, one behaviour: the
 * store test suite runs against both.
 *
 * Data model. A session is created by the first turn committed to it (never by a
 * failed turn). Its messages are rows numbered by `seq` (1, 2, ...) in order;
 * counters (turns, messages, tokens, cost) are kept on the session row and on a
 * global stats row, updated in the same transaction as the messages, so nothing
 * is computed by scanning. A turn (user message + assistant reply + usage) is
 * committed atomically by store_turn_commit(), which also releases the turn lock.
 *
 * Turn locks hold across the workers and processes that share a database. On
 * PostgreSQL, shared by many servers, a lock is a row. On SQLite, one server
 * process owns the file (a second one is refused when it attaches: CHAT_EBUSY),
 * so the locks live in that process's memory (store/turn_locks.h) and die with
 * it, as a dead holder's lock should. A lock carries an expiry so that a lock
 * left by a killed process (or a lost turn) goes stale. A token "holds" the
 * lock while the lock carries it: an expired lock that nobody took over still
 * lets its holder refresh it or commit (no other turn can have written in
 * between), until store_lock_acquire by another token or the sweeper
 * (store_sessions_expire) removes it. A commit's release takes effect once the
 * commit is durable.
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
 * Return values: CHAT_OK on success; CHAT_ENOTFOUND when the named session (or
 * key) does not exist; CHAT_EBUSY when a lock is held; CHAT_ECONFLICT when a
 * commit's lock token no longer owns the lock (or its idempotency record), or a
 * key's id or hash is taken; CHAT_EINVAL on bad arguments; CHAT_EIO on any
 * database error (the error text goes to the log).
 *
 * Also here: idempotency records (the Idempotency-Key header) and API keys; see
 * their sections at the end.
 */
#ifndef CHATD_STORE_STORE_H
#define CHATD_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

struct event_base;

typedef struct store store;

/* Longest session id, lock token or owner the store accepts, in bytes. */
#define STORE_ID_MAX 255

/* Longest blocks text (store_message.blocks, store_turn.user_blocks and
 * assistant_blocks) the store accepts, in bytes, images included: CHAT_EINVAL
 * beyond (as for blocks that are not a JSON array of objects with a "type"). */
#define STORE_BLOCKS_MAX ((size_t)64 << 20)

/* Token usage of one provider call, or of a sum of calls. -1 = unknown. */
typedef struct store_usage {
    int64_t input_tokens; /* uncached input tokens */
    int64_t output_tokens;
    int64_t cache_read_tokens;  /* input tokens read from the prompt cache */
    int64_t cache_write_tokens; /* input tokens written to the prompt cache */
} store_usage;

typedef struct store_session {
    char *id;
    char *owner;         /* API key id that created it; NULL when auth is off */
    char *system_prompt; /* fixed by the first turn, as the template does */
    char *model;         /* model of the last committed turn */
    int64_t created_at;
    int64_t updated_at; /* time of the last commit or reset */
    int64_t turn_count; /* committed turns since the last reset */
    int64_t message_count;
    store_usage usage;   /* totals over all turns ever committed (kept across resets); unknown parts count as 0 */
    int64_t cost_micros; /* total cost over all turns */
} store_session;

typedef struct store_message {
    int64_t id;    /* globally unique, increasing */
    int64_t seq;   /* position in its session: 1, 2, ... */
    char *role;    /* "user" or "assistant" */
    char *content; /* the text (of a message with blocks: its text blocks joined, maybe "") */
    /* NULL for a plain-text message, else the canonical content (llm/content.h)
     * as JSON text: tool calls, tool results, images (whole: the store keeps
     * each image once per content hash and puts it back on read), thinking.
     * Every read that returns messages (store_messages_list, the reply of an
     * idempotency record, the export) gives it back as committed (equal as
     * JSON; the key order and spacing may differ). On import and commit it must
     * be a JSON array of objects with a string "type", at most STORE_BLOCKS_MAX
     * bytes, without the store's own image references (CHAT_EINVAL). */
    char *blocks;
    char *status;      /* "complete", or "incomplete" for a reply cut by a disconnect */
    char *model;       /* assistant messages: the model that answered; NULL for user messages */
    char *stop_reason; /* assistant messages: provider stop reason, or NULL */
    /* Tokens this message costs in context (user: its input share as the
     * provider measured it, else its estimate; assistant: output), -1 unknown
     * (older rows, imports). */
    int64_t tokens;
    store_usage usage;   /* assistant messages: the provider call's usage; all -1 for user messages */
    int64_t cost_micros; /* assistant messages: the turn's cost; 0 for user messages */
    int64_t created_at;
    /* Set on element 0 of an array whose strings are shared with the history
     * cache (a cache read, history_cache.h); store_messages_free releases
     * them. Such messages are read-only. */
    bool packed;
    /* Known facts about content, set on the messages of a cache read (0 and
     * false elsewhere: unknown): its length, and whether it needs no JSON
     * escape (chat_json_plain, core/json_out.h). A provider body then copies
     * the text instead of measuring and escaping it again on every turn. */
    size_t content_len;
    bool content_plain;
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
    int64_t total_turns; /* sum of the sessions' turn_count */
    store_usage usage;   /* unknown parts count as 0 */
    int64_t cost_micros;
} store_stats;

/* Everything one turn commits. */
typedef struct store_turn {
    const char *session_id;
    const char *owner;         /* API key id making the turn: owns a new session, is charged the usage; may be NULL */
    const char *system_prompt; /* used only when the session does not exist yet */
    const char *model;         /* the model that answered (stored on the assistant message) */
    /* The model the session keeps for its next turns: the one the turn asked for,
     * which differs from model after a fallback. NULL means model. */
    const char *session_model;
    const char *user_content;
    const char *assistant_content;
    /* NULL, or the canonical content as JSON text (see store_message.blocks);
     * user_content / assistant_content then hold its text. */
    const char *user_blocks;
    const char *assistant_blocks;
    const char *status;      /* "complete" or "incomplete" */
    const char *stop_reason; /* may be NULL */
    int64_t user_tokens;     /* -1 if unknown */
    store_usage usage;
    int64_t cost_micros;
    const char *lock_token; /* the token that holds the session's turn lock */
    int64_t now;
    /*
     * Optional. When idem_key is non-NULL the commit also completes the
     * idempotency record (idem_scope, idem_key), which must be 'running' and
     * owned by lock_token (see store_idem_begin; else CHAT_ECONFLICT, nothing
     * written): it becomes 'done', status 200, replayable until now + idem_ttl_ms,
     * with a copy of the assistant message. Zero-initialised fields mean "none".
     */
    const char *idem_scope; /* with idem_key: "" or an API key id */
    const char *idem_key;
    int64_t idem_ttl_ms; /* > 0 with idem_key */
} store_turn;

typedef struct store_turn_result {
    int64_t user_message_id;
    int64_t assistant_message_id;
    int64_t turn_count; /* the session's turn count after this turn */
    int64_t message_count;
} store_turn_result;

/*
 * Opens the database named by url and applies pending schema migrations
 * (idempotent, safe when several processes start at once). A database whose
 * schema is newer than this binary's migrations is refused (CHAT_EIO).
 * PostgreSQL: "postgres://user:password@host:port/dbname?..." (any libpq
 * connection URI; the handle opened by store_open is one blocking connection,
 * see store_attach for the server's pool).
 * SQLite: "sqlite:///relative/path.db" (three slashes: relative to the current
 * directory), "sqlite:////absolute/path.db", and "sqlite://:memory:" for tests
 * (a private database per handle, gone at close). A file URL may end with
 * "?synchronous=full" (the default: an acknowledged commit survives a power
 * loss) or "?synchronous=normal" (no fsync per commit: still safe against a
 * process crash such as kill -9, not against a power loss or kernel crash).
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
chat_rc store_lock_acquire(store *s, const char *session_id, const char *token, int64_t now,
                           int64_t ttl_ms) CHAT_MUST_CHECK;

/* Extends a held lock to now + ttl_ms. CHAT_ECONFLICT if token no longer holds it. */
chat_rc store_lock_refresh(store *s, const char *session_id, const char *token, int64_t now,
                           int64_t ttl_ms) CHAT_MUST_CHECK;

/* Releases the lock if token holds it; releasing a lock not held is not an error. */
chat_rc store_lock_release(store *s, const char *session_id, const char *token) CHAT_MUST_CHECK;

/*
 * Commits a turn in one transaction: creates the session if needed (with
 * turn->system_prompt and owner), appends the user message then the assistant
 * message, updates the session's and the global counters, adds the turn's usage
 * to the totals of the API key turn->owner (when such a key exists; revoked or
 * not, the turn ran), completes the idempotency record if turn->idem_key is set,
 * and releases the lock. CHAT_ECONFLICT (nothing written) if turn->lock_token
 * does not hold the lock, or does not own the running idempotency record.
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
chat_rc store_session_reset(store *s, const char *session_id, int64_t now, int64_t *previous_turns) CHAT_MUST_CHECK;

/*
 * Lists sessions, newest first (by creation time, then id). owner filters by
 * owner when non-NULL. cursor is NULL for the first page, else a value returned
 * in *next_cursor. At most limit (1..1000) sessions are returned in *out (an
 * array of *n, free with store_sessions_free). *next_cursor is a heap string
 * when more sessions follow, else NULL; an invalid cursor gives CHAT_EINVAL.
 */
chat_rc store_sessions_list(store *s, const char *owner, const char *cursor, int limit, store_session **out, size_t *n,
                            char **next_cursor) CHAT_MUST_CHECK;

void store_sessions_free(store_session *arr, size_t n);

/*
 * Lists a session's messages in order, those with seq > after_seq, at most limit
 * of them (limit <= 0: all). CHAT_ENOTFOUND if the session does not exist.
 * *out is an array of *n (free with store_messages_free).
 */
chat_rc store_messages_list(store *s, const char *session_id, int64_t after_seq, int limit, store_message **out,
                            size_t *n) CHAT_MUST_CHECK;

void store_messages_free(store_message *arr, size_t n);

/* Global counters, read from the stats row (no scan). */
chat_rc store_stats_get(store *s, store_stats *out) CHAT_MUST_CHECK;

/*
 * Deletes at most limit sessions whose updated_at < before (retention sweeper),
 * keeping counters right; *deleted receives how many were deleted. Sessions with
 * a live turn lock are skipped. Also removes every expired turn lock (expires_at
 * <= now), so that locks left by dead holders do not accumulate. Idempotency
 * records have their own sweep (store_idem_expire).
 */
chat_rc store_sessions_expire(store *s, int64_t before, int64_t now, int limit, int64_t *deleted) CHAT_MUST_CHECK;

/* ---- idempotency ----------------------------------------------------------
 *
 * One record per (scope, key): scope is the API key id of the caller, or ""
 * when auth is off (so clients never share keys); key is the Idempotency-Key
 * header. A record is created 'running' by store_idem_begin, owned by a token
 * (pass the turn's lock token: store_turn_commit checks it), and becomes 'done'
 * with what a retry must replay:
 *
 * - a committed turn: store_turn_commit with idem_key set marks it done in the
 *   SAME transaction as the messages. The reply (its message id is only known
 *   inside the commit) is copied into the record, so a retry replays it from
 *   the record alone: no second step after the commit that a crash could miss
 *   (a committed turn never runs twice), and nothing that a later reset, delete
 *   or retention sweep of the session could take away within the TTL. The API
 *   rebuilds the response from out->reply and out->turn_count, with the same
 *   code that built the first one;
 * - any other outcome worth replaying (e.g. a 4xx): store_idem_finish stores
 *   the status and body;
 * - a failure that a retry should run again (provider error, timeout):
 *   store_idem_abort deletes the record.
 *
 * Expiry: while running, expires_at is a short lease (give the turn lock TTL and
 * refresh it with the lock), so that a record left by a killed process stops
 * blocking retries; when done, it is the replay TTL (e.g. 24 h). An expired
 * record, running or done, counts as absent. A running record whose lease
 * expired but that nobody replaced is still owned by its token (as with locks).
 *
 * Keys, scopes, tokens and body hashes are bounded like ids (1..STORE_ID_MAX
 * bytes; scope may be ""); times as above.
 */

typedef enum store_idem_outcome {
    STORE_IDEM_NEW = 1,  /* a 'running' record now exists for the caller's token: run the request */
    STORE_IDEM_REPLAY,   /* done with the same body hash: replay it, do not run anything */
    STORE_IDEM_RUNNING,  /* the first request is still running (live lease): answer 409 */
    STORE_IDEM_MISMATCH, /* the key was used with another body (running or done): answer 422 */
} store_idem_outcome;

/* What store_idem_begin found. Strings are heap-owned: store_idem_clear. */
typedef struct store_idem {
    store_idem_outcome outcome; /* 0 (none of the above) after an error */
    char *session_id;           /* the record's session (NEW: a copy of the argument); may be NULL */
    int64_t created_at;         /* when the first request began */
    int64_t expires_at;         /* lease end (NEW, RUNNING) or end of replay (REPLAY) */
    /* REPLAY only: */
    int status;          /* HTTP status to replay (200 for a committed turn) */
    char *response;      /* body stored by store_idem_finish; NULL for a committed turn */
    bool has_reply;      /* true for a committed turn: reply and turn_count are set */
    store_message reply; /* copy of the assistant message as committed (role "assistant") */
    int64_t turn_count;  /* the session's turn count right after that turn */
} store_idem;

/*
 * Looks up (scope, key) and, when there is no live record, creates a 'running'
 * one owned by token, leased until now + lease_ms (outcome STORE_IDEM_NEW).
 * Otherwise reports what exists, in this order: another body_hash -> MISMATCH;
 * running -> RUNNING; done -> REPLAY. Returns CHAT_OK with out->outcome set in
 * all four cases; *out must be cleared by the caller (also after errors, which
 * leave it zeroed). session_id (may be NULL) is stored in a new record.
 */
chat_rc store_idem_begin(store *s, const char *scope, const char *key, const char *body_hash, const char *token,
                         const char *session_id, int64_t now, int64_t lease_ms, store_idem *out) CHAT_MUST_CHECK;

/* Frees the strings of a store_idem and zeroes it. Accepts NULL. */
void store_idem_clear(store_idem *r);

/* Extends the lease of a running record to now + lease_ms (call it with
 * store_lock_refresh). CHAT_ECONFLICT if token no longer owns a running record. */
chat_rc store_idem_refresh(store *s, const char *scope, const char *key, const char *token, int64_t now,
                           int64_t lease_ms) CHAT_MUST_CHECK;

/*
 * Marks the running record owned by token done with an HTTP status (100..599)
 * and a response body to replay until now + ttl_ms. For outcomes other than a
 * committed turn (which store_turn_commit completes by itself). CHAT_ECONFLICT
 * if token no longer owns a running record.
 */
chat_rc store_idem_finish(store *s, const char *scope, const char *key, const char *token, int status,
                          const char *response, int64_t now, int64_t ttl_ms) CHAT_MUST_CHECK;

/* Deletes the record if it is running and owned by token (the request failed
 * and a retry may run it again); otherwise does nothing and returns CHAT_OK. */
chat_rc store_idem_abort(store *s, const char *scope, const char *key, const char *token) CHAT_MUST_CHECK;

/* Deletes at most limit records with expires_at <= now (run it from the
 * retention sweeper); *deleted (may be NULL) receives how many. */
chat_rc store_idem_expire(store *s, int64_t now, int limit, int64_t *deleted) CHAT_MUST_CHECK;

/* ---- API keys -------------------------------------------------------------
 *
 * The secret of a key is never stored: callers hash it (SHA-256, lowercase hex,
 * STORE_KEY_HASH_LEN characters exactly: any other form is CHAT_EINVAL, so that
 * a differently spelled hash can never silently fail to match) and the store
 * keeps and looks up the hash. Ids and hashes are unique; names are labels and
 * may repeat. Times in store_key are 0 for "never" (store calls take now > 0).
 */

#define STORE_KEY_HASH_LEN 64

/* store_key_touch writes last_used_at at most once per this many ms per key. */
#define STORE_KEY_TOUCH_MS 60000

typedef struct store_key_new {
    const char *id;         /* public id, 1..STORE_ID_MAX bytes (e.g. "key_" + 16 hex digits) */
    const char *name;       /* 1..STORE_ID_MAX bytes */
    const char *hash;       /* lowercase hex SHA-256 of the secret */
    const char *role;       /* "user" or "admin" */
    const char *rate_limit; /* NULL (server default) or a spec such as "60/minute", not parsed here */
    int64_t now;            /* creation time, > 0 */
} store_key_new;

typedef struct store_key {
    char *id;
    char *name;
    char *hash;
    char *role;
    char *rate_limit; /* NULL: the server default */
    int64_t created_at;
    int64_t revoked_at;   /* 0 while active */
    int64_t last_used_at; /* 0 if never; STORE_KEY_TOUCH_MS granularity */
    /* Totals over the turns committed with this key as turn owner (kept by
     * store_turn_commit); unknown parts count as 0. */
    int64_t turn_count;
    store_usage usage;
    int64_t cost_micros;
} store_key;

/* Creates a key. CHAT_ECONFLICT (nothing written) if its id or hash exists. */
chat_rc store_key_create(store *s, const store_key_new *k) CHAT_MUST_CHECK;

/* Finds the active key with this hash (authentication). CHAT_ENOTFOUND if there
 * is none or it is revoked. *out must be cleared by the caller. */
chat_rc store_key_find_by_hash(store *s, const char *hash, store_key *out) CHAT_MUST_CHECK;

/* Lists every key, revoked ones too, oldest first (by creation time, then id).
 * *out is an array of *n (free with store_keys_free). */
chat_rc store_keys_list(store *s, store_key **out, size_t *n) CHAT_MUST_CHECK;

/*
 * Revokes a key named by its id or, when no key has that id, by its name. A
 * name must designate exactly one active key: CHAT_ECONFLICT (nothing written)
 * when several do, so that a label cannot revoke more than meant. Revoking a
 * revoked key (by id) is CHAT_OK and keeps the first revocation time.
 * CHAT_ENOTFOUND if nothing matches. On success fills *out (may be NULL) with
 * the key as now stored; the caller clears it.
 */
chat_rc store_key_revoke(store *s, const char *id_or_name, int64_t now, store_key *out) CHAT_MUST_CHECK;

/*
 * Records that key id was used at now. Cheap enough to call on every request:
 * it reads first and writes (one small autocommit write) only when the stored
 * time is STORE_KEY_TOUCH_MS or more older. An unknown id is not an error.
 */
chat_rc store_key_touch(store *s, const char *id, int64_t now) CHAT_MUST_CHECK;

/* How many sessions the key owns (kept by triggers on sessions, schema 003).
 * CHAT_ENOTFOUND for an unknown id. */
chat_rc store_key_session_count(store *s, const char *id, int64_t *out) CHAT_MUST_CHECK;

/* Frees the strings of a key and zeroes it. Accepts NULL. */
void store_key_clear(store_key *k);

void store_keys_free(store_key *arr, size_t n);

/* ---- import (chatd import) -------------------------------------------------
 *
 * Copies made by `chatd export` go back in verbatim, into either backend.
 */

/*
 * Inserts a session exactly as given (id, owner, system prompt, model, times,
 * counts, usage and cost totals) with its messages (seq, role, content, blocks
 * (images kept once per hash, as by a commit), status, model, stop reason,
 * tokens, usage, cost, created_at; ids are assigned anew,
 * in the given order) and adds it to the global counters (one session, its
 * messages, its turns, its usage and cost). One transaction. CHAT_ECONFLICT
 * (nothing written) if a session with that id exists; CHAT_EINVAL if
 * message_count differs from n or a message is malformed.
 */
chat_rc store_session_import(store *s, const store_session *sess, const store_message *msgs, size_t n) CHAT_MUST_CHECK;

/* Inserts a key exactly as given (times, revocation, totals; session counts are
 * kept by the sessions themselves). CHAT_ECONFLICT if its id or hash exists. */
chat_rc store_key_import(store *s, const store_key *k) CHAT_MUST_CHECK;

/* ---- store operations: the asynchronous form -------------------------------
 *
 * A store_op is one call of the synchronous API above as data: its kind names
 * the function, `in` holds the arguments and `out` receives the results, with
 * the same meanings, limits and return codes as that function (rc). Fields a
 * kind does not use are ignored. Kinds and the fields they use:
 *
 *   PING               -
 *   LOCK_ACQUIRE       session_id token now ttl_ms
 *   LOCK_REFRESH       session_id token now ttl_ms
 *   LOCK_RELEASE       session_id token
 *   TURN_COMMIT        turn                        -> out.turn
 *   SESSION_GET        session_id                  -> out.session
 *   SESSION_DELETE     session_id
 *   SESSION_RESET      session_id now              -> out.count (previous turns)
 *   SESSIONS_LIST      owner cursor limit          -> out.sessions, n_sessions, next_cursor
 *   SESSIONS_LIST_OLDEST  as SESSIONS_LIST, oldest first (by creation time, then
 *                      id); its cursors are not interchangeable with SESSIONS_LIST's
 *   MESSAGES_LIST      session_id after_seq limit  -> out.messages, n_messages
 *                      or session_id tail_tokens   -> out.messages, n_messages, count (older ones left out)
 *   STATS_GET          -                           -> out.stats
 *   SESSIONS_EXPIRE    before now limit            -> out.count (deleted)
 *   IDEM_BEGIN         scope idem_key body_hash token session_id now ttl_ms (lease) -> out.idem
 *   IDEM_REFRESH       scope idem_key token now ttl_ms (lease)
 *   IDEM_FINISH        scope idem_key token status response now ttl_ms
 *   IDEM_ABORT         scope idem_key token
 *   IDEM_EXPIRE        now limit                   -> out.count (deleted)
 *   KEY_CREATE         key_new
 *   KEY_FIND_BY_HASH   hash                        -> out.key
 *   KEYS_LIST          -                           -> out.keys, n_keys
 *   KEY_REVOKE         id (id or name) now         -> out.key
 *   KEY_TOUCH          id now
 *   KEY_SESSION_COUNT  id                          -> out.count
 *   SESSION_IMPORT     import_session import_messages n_import_messages
 *   KEY_IMPORT         import_key
 *
 * Ownership: an op owns its input strings. Set string fields (including those
 * inside in.turn and in.key_new) to copies made with store_op_str, or to
 * string literals; never to memory the caller frees before completion. The op
 * owns its outputs too: a callback that keeps one moves it out (copy the
 * struct, then zero the field). store_submit takes the op; it is freed after
 * its callback returns. Inputs of import kinds are borrowed (synchronous use
 * only).
 *
 * Thread: store_submit and the callback run on the loop thread the handle was
 * attached to (store_attach; with SQLite any thread that owns the handle).
 */

typedef enum store_op_kind {
    STORE_OP_PING = 1,
    STORE_OP_LOCK_ACQUIRE,
    STORE_OP_LOCK_REFRESH,
    STORE_OP_LOCK_RELEASE,
    STORE_OP_TURN_COMMIT,
    STORE_OP_SESSION_GET,
    STORE_OP_SESSION_DELETE,
    STORE_OP_SESSION_RESET,
    STORE_OP_SESSIONS_LIST,
    STORE_OP_MESSAGES_LIST,
    STORE_OP_STATS_GET,
    STORE_OP_SESSIONS_EXPIRE,
    STORE_OP_IDEM_BEGIN,
    STORE_OP_IDEM_REFRESH,
    STORE_OP_IDEM_FINISH,
    STORE_OP_IDEM_ABORT,
    STORE_OP_IDEM_EXPIRE,
    STORE_OP_KEY_CREATE,
    STORE_OP_KEY_FIND_BY_HASH,
    STORE_OP_KEYS_LIST,
    STORE_OP_KEY_REVOKE,
    STORE_OP_KEY_TOUCH,
    STORE_OP_KEY_SESSION_COUNT,
    STORE_OP_SESSION_IMPORT,
    STORE_OP_KEY_IMPORT,
    STORE_OP_SESSIONS_LIST_OLDEST,
    STORE_OP_KIND_COUNT
} store_op_kind;

/* The operation's name for metrics and logs, e.g. "lock_acquire". */
const char *store_op_name(store_op_kind kind);

typedef struct store_op store_op;

/* Runs once per submitted op, on the loop, with op->rc set. ud is the value
 * given to store_submit. The op is freed when the callback returns. */
typedef void (*store_op_cb)(store_op *op, void *ud);

/* Most strings an op can own (store_op_str). */
#define STORE_OP_MAX_STRS 24

/* An op's inputs; which fields each kind reads is listed above. */
typedef struct store_op_in {
    const char *session_id, *token, *owner, *cursor, *scope, *idem_key, *body_hash, *hash, *id, *response;
    int64_t now, ttl_ms, before, after_seq;
    /* MESSAGES_LIST: when > 0 (after_seq and limit are then ignored), only the
     * newest messages are read, newest first, until their stored token counts
     * (unknown ones count 0) add up to more than tail_tokens, or the session
     * starts; they come back oldest first as usual, and out.count is how many
     * older messages were left out. A turn passes its model's context window,
     * so its cost does not grow with the session (both backends; PostgreSQL
     * still walks the session's index entries, but sends only what fits). */
    int64_t tail_tokens;
    int limit, status;
    store_turn turn;
    store_key_new key_new;
    const store_session *import_session;
    const store_message *import_messages;
    size_t n_import_messages;
    const store_key *import_key;
} store_op_in;

/* An op's outputs; which fields each kind writes is listed above. */
typedef struct store_op_out {
    store_session session;
    store_session *sessions;
    size_t n_sessions;
    char *next_cursor;
    store_message *messages;
    size_t n_messages;
    store_stats stats;
    store_turn_result turn;
    store_idem idem;
    store_key key;
    store_key *keys;
    size_t n_keys;
    int64_t count;
} store_op_out;

struct store_op {
    store_op_kind kind;
    chat_rc rc; /* the result, as the synchronous function returns it */
    store_op_in in;
    store_op_out out;
    /* Private to the store. */
    store *owner_store;
    store_op_cb cb;
    void *ud;
    int64_t deadline_mono_ms;  /* queue deadline (PostgreSQL) */
    int64_t submitted_mono_us; /* for the db_operation metric */
    store_op *next;            /* queue link */
    char *strs[STORE_OP_MAX_STRS];
    int nstrs;
    /* The blocks of a TURN_COMMIT (user, assistant) or of a SESSION_IMPORT
     * (one per message) in their stored form, made once in front of the
     * backends (store/blocks.h), freed with the op. */
    struct store_packed *packed;
    size_t n_packed;
};

/* A zeroed op of this kind (aborts on OOM). */
store_op *store_op_new(store_op_kind kind);

/* A copy of str owned by op (NULL for NULL), valid until the op is freed. */
const char *store_op_str(store_op *op, const char *str);

/* Frees the op, its strings and its outputs. Accepts NULL. */
void store_op_free(store_op *op);

/*
 * Runs op synchronously on the calling thread (any backend); sets op->rc and
 * returns it. The op stays the caller's (free it with store_op_free).
 */
chat_rc store_run(store *s, store_op *op);

/*
 * SQLite: the most bytes of message history the process that serves a file
 * keeps in memory for the turns' tail reads (store/history_cache.h); 0 keeps
 * none. Read when the process comes to own a file (the first store_attach on
 * it): call before. Not used by PostgreSQL, which several servers share.
 */
#define STORE_HISTORY_CACHE_DEFAULT ((size_t)64 << 20)
void store_set_history_cache_size(size_t bytes);

/*
 * Prepares the handle for store_submit from the loop of base: PostgreSQL opens
 * a pool of up to pool_size connections on that loop (the handle's own
 * blocking connection is not used by submitted ops); an op waits at most
 * queue_timeout_ms for a free connection, then completes with CHAT_EUNAVAIL
 * (the API answers 503). SQLite queues completions for that loop and, for a
 * file database, starts (or shares) the file's writer thread, with its own
 * connection. Call once, from the loop thread, before the first store_submit.
 */
chat_rc store_attach(store *s, struct event_base *base, int pool_size, int64_t queue_timeout_ms) CHAT_MUST_CHECK;

/*
 * Submits op; cb (may be NULL: fire and forget) runs once with the result,
 * always on a later turn of the loop the handle is attached to, never before
 * store_submit returns, on every backend: SQLite runs a read at once and
 * queues its completion, and queues a write for the file's writer thread,
 * which completes it after its group's COMMIT (durable under
 * synchronous=FULL); PostgreSQL runs it on a pool connection, and a lost
 * connection or an unreachable server completes it with CHAT_EUNAVAIL (an op
 * whose query had not been sent is retried once on a new connection).
 * On SQLite, writes complete in submission order (one queue per file and
 * process) and reads in submission order; a read may complete before a write
 * submitted earlier (wait for a write's callback before reading what it
 * wrote). A handle that was never attached, or was detached, completes ops at
 * once (the CLI and tests). A :memory: handle runs writes inline too.
 */
void store_submit(store *s, store_op *op, store_op_cb cb, void *ud);

/* Ops submitted and not yet completed (shutdown waits for 0). */
int store_pending(const store *s);

/*
 * Ends the asynchronous side, on the loop thread, before freeing what the
 * callbacks touch: PostgreSQL completes every op still queued or in flight
 * with CHAT_EUNAVAIL (their callbacks run now) and closes the pool; ops
 * submitted afterwards complete at once with CHAT_EUNAVAIL. SQLite waits for
 * the handle's writes still in the writer thread to be committed, completes
 * them and the finished ops still waiting for their loop turn now (the last
 * handle on a file stops its writer), and later ones at once. Call it before freeing the loop's event_base (store_close also calls
 * it). The synchronous API keeps working. Accepts NULL.
 */
void store_detach(store *s);

#endif
