/*
 * history_cache.h: the newest messages of recently used sessions, kept in
 * memory by the process that serves a SQLite file.
 *
 * Why: a turn reads its session's history newest first as far as the model's
 * context window reaches (the tail read, sqlite_ops.c). Each turn's commit
 * changes the file, and SQLite then drops every reader's page cache, so late
 * in a long session every turn read hundreds of pages back with pread, a third
 * of its CPU (bench/long_session.py). One chatd process owns a served SQLite
 * file (sqlite_file_own), and every write to a session's messages in it goes
 * through this process's writer, which keeps the cache in step: a turn's
 * commit appends its two messages, anything else that changes a session
 * (reset, delete, retention) drops it, and keeps it from being refilled
 * until the change is committed. `chatd import` beside the server only
 * adds sessions that do not exist, so a cached session cannot change behind
 * it; a session is cached only once its row exists.
 *
 * The contract: history_cache_get answers a tail read exactly as the database
 * would (the same messages, field by field, and the same count left out), or
 * misses. The read side is race-free with a generation per entry: a miss pins
 * the entry and notes its generation before the database read starts, every
 * write bumps it after its commit, and history_cache_fill keeps what was read
 * only if the generation did not move. A turn's append is applied only when
 * its first seq follows the cached last one, so it can never be applied twice
 * or over a gap; otherwise, and for messages with content blocks (their
 * stored form differs from what a read gives back), the entry is dropped.
 *
 * Memory: bounded by max_bytes (the strings and records of the cached
 * messages; strings that reads still share after the cache let them go are
 * not counted); least recently used sessions go first, and a session bigger than
 * a quarter of the bound is not kept. Entries without messages exist only
 * while a miss is being filled. Thread: any; each call takes the cache's
 * mutex, and copies are made under it.
 */
#ifndef CHATD_STORE_HISTORY_CACHE_H
#define CHATD_STORE_HISTORY_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef struct history_cache history_cache;

/* An empty cache holding at most max_bytes (0: caches nothing). Never NULL. */
history_cache *history_cache_new(size_t max_bytes);
/* Frees the cache and its messages. Accepts NULL. */
void history_cache_free(history_cache *c);

/*
 * A tail read of session_id for tail_tokens (> 0) from the cache. On a hit:
 * true, *out, *n and *skipped are set as the database read would set them.
 * *out is an array of its own whose strings are the cache's, shared and
 * read-only (store_message.packed): they stay valid, whatever the cache does
 * meanwhile, until store_messages_free(*out, *n), from any thread. On a miss: false, and *ticket must be
 * passed to exactly one history_cache_fill after the database read (which
 * must start after this call), whatever its outcome.
 */
bool history_cache_get(history_cache *c, const char *session_id, int64_t tail_tokens, store_message **out, size_t *n,
                       int64_t *skipped, uint64_t *ticket);

/*
 * After a miss: what the database read gave, msgs[0..n) oldest first, with
 * total the session's message count; ok false when the read failed or the
 * session does not exist (nothing is kept then). Kept (copied) only if no
 * write to the session came since the miss.
 */
void history_cache_fill(history_cache *c, const char *session_id, uint64_t ticket, bool ok, int64_t tail_tokens,
                        const store_message *msgs, size_t n, int64_t total);

/* After a committed turn: its messages (oldest first), and the session's
 * message count after it. */
void history_cache_append(history_cache *c, const char *session_id, const store_message *msgs, size_t n, int64_t total);
/*
 * Any other change to a session's messages (session_id), or to sessions not
 * named one by one (NULL: the retention sweep), is bracketed: write_begin
 * before it can run, write_end once it committed or failed, exactly once each.
 * In between, the session (every session for NULL) is neither served nor
 * filled, so no read can keep the state before the change once it is
 * committed.
 */
void history_cache_write_begin(history_cache *c, const char *session_id);
void history_cache_write_end(history_cache *c, const char *session_id);

/* The store_messages_free of an array history_cache_get returned: drops
 * its holds on the cache's strings, and the array. */
void history_cache_messages_release(store_message *arr, size_t n);

/* Sessions with messages kept, and their bytes (tests, metrics). */
size_t history_cache_sessions(history_cache *c);
size_t history_cache_bytes(history_cache *c);

#endif
