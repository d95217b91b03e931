/*
 * turn_locks.h: the SQLite backend's turn locks, kept in memory.
 *
 * One chatd server process owns a SQLite file (sqlite_writer.c refuses a
 * second one), so a session's turn lock needs no row: a table in memory,
 * shared by every handle on the file in the process, holds it. That saves each
 * turn a lock row written and deleted, and a trip through the writer thread.
 * After a crash the table is gone with the process that held the locks, which
 * is what a lock of a dead holder should do.
 *
 * The semantics are store.h's (store_lock_acquire and the rest):
 * - acquire succeeds when no lock exists or the existing one expired
 *   (expires_at <= now); CHAT_EBUSY while a live one is held, by any token;
 * - a token holds the lock while the entry carries it, expired or not, until
 *   another token takes it over (refresh, pin and release all check the token);
 * - a turn commit pins the lock (turn_locks_pin: it cannot expire and be taken
 *   over while the commit is in flight) from the moment it is submitted, and
 *   settles it once the commit is durable or failed (turn_locks_settle):
 *   released after a commit, back to its expiry after a failure, so that the
 *   turn engine's own release still finds it. An acquire that meets a pinned
 *   lock queues behind the commit (sqlite_ops.c), as it did when locks were rows
 *   written in order: a client that retries at once after a turn ended does not
 *   get a 409 for the few milliseconds of the commit.
 *
 * Thread: any; each call takes the table's mutex. Memory: one entry per
 * session in a turn; expired ones go with a takeover, turn_locks_sweep, or
 * when the table would grow (acquire sweeps before doubling).
 */
#ifndef CHATD_STORE_TURN_LOCKS_H
#define CHATD_STORE_TURN_LOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include <stddef.h>

#include "core/rc.h"

typedef struct turn_locks turn_locks;

/* An empty table. Never returns NULL (aborts when out of memory). */
turn_locks *turn_locks_new(void);
/* Frees the table and its entries. Accepts NULL. */
void turn_locks_free(turn_locks *t);

/* CHAT_OK (now held by token until now + ttl_ms) or CHAT_EBUSY. */
chat_rc turn_locks_acquire(turn_locks *t, const char *session_id, const char *token, int64_t now, int64_t ttl_ms);
/* CHAT_OK (extended to now + ttl_ms; a pinned lock stays pinned) or
 * CHAT_ECONFLICT when token no longer holds it. */
chat_rc turn_locks_refresh(turn_locks *t, const char *session_id, const char *token, int64_t now, int64_t ttl_ms);
/* Removes the lock if token holds it; anything else is a no-op. */
void turn_locks_release(turn_locks *t, const char *session_id, const char *token);
/* Removes the session's lock whoever holds it (the session was deleted). */
void turn_locks_drop(turn_locks *t, const char *session_id);
/* True when session_id has a lock that is live at now (pinned counts as live). */
bool turn_locks_live(turn_locks *t, const char *session_id, int64_t now);
/* True when session_id's lock is pinned: its turn's commit is in flight. */
bool turn_locks_pinned(turn_locks *t, const char *session_id);

/* CHAT_OK when token holds the lock, which is then pinned (idempotent);
 * CHAT_ECONFLICT otherwise. */
chat_rc turn_locks_pin(turn_locks *t, const char *session_id, const char *token);
/* Ends a pin of token: committed releases the lock, else it gets its expiry
 * back. A no-op when token does not hold the lock or it is not pinned. */
void turn_locks_settle(turn_locks *t, const char *session_id, const char *token, bool committed);

/* Removes the locks that expired (expires_at <= now) and are not pinned; returns how many. */
size_t turn_locks_sweep(turn_locks *t, int64_t now);
/* Number of entries (tests and metrics). */
size_t turn_locks_count(turn_locks *t);

#endif
