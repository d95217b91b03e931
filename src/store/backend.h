/*
 * backend.h: what a store backend provides to store.c (internal to src/store).
 *
 * store.c owns the public handle, picks the backend by the URL's scheme, and
 * turns every synchronous call of store.h into a store_op run by backend->run,
 * so that a backend implements each operation once, for both call forms.
 */
#ifndef CHATD_STORE_BACKEND_H
#define CHATD_STORE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

struct chat_asset;

typedef struct store_backend {
    const char *name; /* "sqlite", "postgres": logs and metrics */
    /* Opens url (already known to be this backend's). Migrates, like store_open. */
    chat_rc (*open)(const char *url, void **impl, char *err, size_t errlen);
    void (*close)(void *impl);
    int (*schema_version)(void *impl);
    /* Runs op on the calling thread; sets and returns op->rc. */
    chat_rc (*run)(void *impl, store_op *op);
    /* NULL when ops run inline (store_submit calls run, then completes). */
    chat_rc (*attach)(void *impl, struct event_base *base, int pool_size, int64_t queue_timeout_ms);
    /* Queues op; the backend calls store_op_complete(op) once, on the loop. */
    void (*submit)(void *impl, store_op *op);
    /* Fails what is queued or in flight (CHAT_EUNAVAIL) and drops the pool (store_detach). */
    void (*detach)(void *impl);
} store_backend;

extern const store_backend store_backend_sqlite;
extern const store_backend store_backend_postgres;

/* Ends a submitted op: records its duration, runs its callback (if any), frees it. */
void store_op_complete(store_op *op);

/* On the loop thread, for an op whose result is in: completes it on a later
 * loop turn (at once when the handle is not attached). */
void store_op_defer(store_op *op);

/* From any thread (a backend's own thread), for an op whose result is in:
 * wakes the loop of the op's handle, which completes it on its next turn.
 * The handle must be attached and stay so until the op is posted (the
 * backend's detach waits for its thread's ops). */
void store_op_post(store_op *op);

/* Frees an op's outputs and zeroes them, so that it can run again. */
void store_op_out_reset(store_op *op);

/* ---- shared by the backends (backend.c), so that both accept and produce the same ---- */

/* Argument checks of store.h: an id is 1..STORE_ID_MAX bytes; a count is >= -1
 * (-1 unknown); a scope is "" or an id; now and now + ttl are valid times; a
 * key hash is exactly STORE_KEY_HASH_LEN lowercase hex digits; an imported
 * message has a known role and status, seq > 0, sane counts and blocks that
 * pass store_valid_blocks_text (store_op_prepare checks them whole). */
bool store_valid_id(const char *id);
bool store_valid_count(int64_t v);
bool store_valid_usage(const store_usage *u);
bool store_valid_scope(const char *scope);
bool store_valid_ttl(int64_t now, int64_t ttl_ms);
bool store_valid_hash(const char *h);
bool store_valid_message(const store_message *m);
/* Blocks as store_op_valid checks them, without parsing (store_op_prepare
 * parses): NULL, or text of at most STORE_BLOCKS_MAX bytes that starts with
 * '[' and ends with ']' (spaces around allowed). */
bool store_valid_blocks_text(const char *blocks);

/*
 * The argument checks of every op kind, written once in front of the backends:
 * store.c refuses an op that fails them with CHAT_EINVAL before any backend
 * sees it, so a backend may take its inputs as valid. What each kind needs:
 * ids of 1..STORE_ID_MAX bytes, valid times and leases, a turn with a known
 * status and sane counts, a key with a known role, limits in range, a cursor of
 * the form store_cursor_make writes, an import whose counts add up.
 */
bool store_op_valid(const store_op *op);

/*
 * The second half of the argument checks, for the kinds that write messages
 * (TURN_COMMIT, SESSION_IMPORT), run by store.c after store_op_valid and before
 * any backend: parses each message's blocks once, refuses blocks that
 * store_blocks_valid would (CHAT_EINVAL, as store_op_valid refuses the rest),
 * and keeps their stored form and images in op->packed (one per message, in
 * order: user then assistant for a turn), which the backends write. Other
 * kinds: CHAT_OK, nothing done. store_op_unprepare frees op->packed (also
 * called by store_op_free).
 */
chat_rc store_op_prepare(store_op *op) CHAT_MUST_CHECK;
void store_op_unprepare(store_op *op);

/* Unknown (-1) token counts add 0 to totals. */
int64_t store_known(int64_t v);

/*
 * Session list cursors: "<created_at>:<id in lowercase hex>", the key of the
 * last row of the previous page. Hex keeps it URL-safe and unambiguous
 * whatever the id holds; parsing accepts only the exact form made here, so a
 * cursor from one backend works on the other (export, import, failover).
 * store_cursor_make returns a heap string; store_cursor_parse writes the id
 * into idbuf (STORE_ID_MAX + 1 bytes) and returns false for anything else.
 */
char *store_cursor_make(int64_t created_at, const char *id);
bool store_cursor_parse(const char *c, int64_t *created_at, char *idbuf);

/* One embedded schema migration: "<prefix>NNN_name.sql". */
typedef struct store_migration {
    int version;
    const struct chat_asset *asset;
} store_migration;

/*
 * The migrations embedded under prefix (e.g. "schema/"), sorted by version, in
 * *out (free it) and *n. A .sql file with a bad name or a duplicate version is a
 * build mistake: CHAT_EIO with the reason in err, as is finding none.
 */
chat_rc store_migrations_collect(const char *prefix, store_migration **out, size_t *n, char *err, size_t errlen);

/*
 * What the migration driver needs from a backend's connection. Every function
 * returns CHAT_OK or CHAT_EIO with the reason in err.
 *   begin        opens the migration transaction and takes whatever lock keeps
 *                two processes from migrating at once
 *   exec         runs one SQL text (possibly several statements)
 *   current      the highest version recorded in schema_version (0: none)
 *   record       inserts a schema_version row
 *   commit       commits; rollback (no error) ends a failed transaction if open
 */
typedef struct store_migrator {
    chat_rc (*begin)(void *conn, char *err, size_t errlen);
    chat_rc (*exec)(void *conn, const char *sql, const char *what, char *err, size_t errlen);
    chat_rc (*current)(void *conn, int64_t *version, char *err, size_t errlen);
    chat_rc (*record)(void *conn, int version, const char *name, int64_t applied_at_ms, char *err, size_t errlen);
    chat_rc (*commit)(void *conn, char *err, size_t errlen);
    void (*rollback)(void *conn);
} store_migrator;

/*
 * The one migration driver: applies the migrations embedded under prefix that
 * the database has not recorded, in order, each recorded in schema_version, all
 * in one transaction (concurrent starts: the first migrates, the others wait on
 * its lock and find nothing to do). Refuses a database newer than this binary.
 * On success *version is the schema version now in place.
 */
chat_rc store_migrate(const store_migrator *m, void *conn, const char *prefix, int *version, char *err, size_t errlen);

/* Wall-clock time in milliseconds since the Unix epoch, as the store records it. */
int64_t store_wall_ms(void);

#endif
