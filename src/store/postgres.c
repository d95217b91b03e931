/*
 * postgres.c: the PostgreSQL backend of store.h.
 *
 * A handle is one blocking libpq connection (PQconnectdb) plus, once attached
 * to a server loop, a pool of asynchronous connections (pg_pool.c). The
 * blocking connection serves what may wait: `chatd migrate|keys|export|import`,
 * the tests, and the migrations at server start. A loop thread never uses it:
 * store_submit goes to the pool.
 *
 * Every operation is one prepared statement described by a pg_op_def
 * (pg_ops.c), the same on both connections, so the blocking and the
 * asynchronous paths cannot behave differently. The statements are prepared
 * once per connection, right after the migrations.
 *
 * Migrations. The schema comes from the numbered files "schema_pg/NNN_name.sql"
 * embedded in the binary (core/assets.h). store_open applies the pending ones in
 * order, each recorded in schema_version, all in one transaction that first
 * takes a transaction-scoped advisory lock: when several processes start at
 * once, the first migrates and the others wait on the lock, then find nothing
 * left to do. A database migrated by a newer binary is refused.
 *
 * Connection loss on the blocking handle: the statement fails (CHAT_EIO, as
 * any database error), and the next operation reconnects first (PQreset) and
 * prepares the statements again, so a CLI or test handle survives a server
 * restart between two calls.
 *
 * Database errors are logged to stderr as one line and reported as CHAT_EIO.
 */
#define _GNU_SOURCE
#include "store/backend.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/assets.h"
#include "core/log.h"
#include "core/util.h"
#include "store/pg.h"
#include "store/pg_pool.h"

#define MIGRATION_PREFIX "schema_pg/"

/* Takes the advisory lock that serializes migrations until the transaction
 * ends. The key is any constant nothing else in the database uses: "chatd" in
 * ASCII, 0x6368617464. */
#define MIGRATION_LOCK_SQL "SELECT pg_advisory_xact_lock(426952979556)"

typedef struct pg_db {
    PGconn *conn;       /* the blocking connection; owned */
    char *url;          /* as given to store_open; owned (the pool connects to it too) */
    int schema_version; /* highest migration applied, read at open */
    pg_pool *pool;      /* store_attach's pool, or NULL; owned */
    bool detached;      /* store_detach ran: submitted ops fail at once */
} pg_db;

/* Notices (e.g. "relation already exists, skipping") are not errors: dropped. */
static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

const char *pg_handle_url(const void *pg_handle)
{
    return pg_handle ? ((const pg_db *)pg_handle)->url : NULL;
}

/* ---- migrations --------------------------------------------------------------- */

/* Runs one SQL text (possibly several statements); CHAT_EIO with the reason in err. */
static chat_rc exec_sql(PGconn *c, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    chat_rc rc = CHAT_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        chat_set_err(err, errlen, "%s: %s", what, res ? PQresultErrorMessage(res) : PQerrorMessage(c));
        rc = CHAT_EIO;
    }
    PQclear(res);
    return rc;
}

/* ---- the migration driver is store_migrate (backend.c) ---- */

static chat_rc mig_exec(void *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    return exec_sql(((pg_db *)conn)->conn, sql, what, err, errlen);
}

/* The advisory lock makes a second instance starting at the same time wait,
 * then find the migrations applied. */
static chat_rc mig_begin(void *conn, char *err, size_t errlen)
{
    PGconn *c = ((pg_db *)conn)->conn;
    chat_rc rc = exec_sql(c, "BEGIN", "begin migration", err, errlen);
    if (rc == CHAT_OK)
        rc = exec_sql(c, MIGRATION_LOCK_SQL, "migration lock", err, errlen);
    return rc;
}

static chat_rc mig_current(void *conn, int64_t *version, char *err, size_t errlen)
{
    PGresult *res = PQexec(((pg_db *)conn)->conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
    chat_rc rc = CHAT_OK;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        chat_set_err(err, errlen, "read schema_version: %s", PQresultErrorMessage(res));
        rc = CHAT_EIO;
    } else {
        *version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    }
    PQclear(res);
    return rc;
}

static chat_rc mig_record(void *conn, int version, const char *name, int64_t applied_at_ms, char *err, size_t errlen)
{
    char v[24], applied[24];
    snprintf(v, sizeof v, "%d", version);
    snprintf(applied, sizeof applied, "%" PRId64, applied_at_ms);
    const char *values[3] = { v, name, applied };
    PGresult *res = PQexecParams(((pg_db *)conn)->conn,
                                 "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)", 3, NULL,
                                 values, NULL, NULL, 0);
    chat_rc rc = CHAT_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        chat_set_err(err, errlen, "record %s: %s", name, PQresultErrorMessage(res));
        rc = CHAT_EIO;
    }
    PQclear(res);
    return rc;
}

static chat_rc mig_commit(void *conn, char *err, size_t errlen)
{
    return exec_sql(((pg_db *)conn)->conn, "COMMIT", "commit migration", err, errlen);
}

static void mig_rollback(void *conn)
{
    PQclear(PQexec(((pg_db *)conn)->conn, "ROLLBACK"));
}

static const store_migrator pg_migrator = {
    .begin = mig_begin,
    .exec = mig_exec,
    .current = mig_current,
    .record = mig_record,
    .commit = mig_commit,
    .rollback = mig_rollback,
};

/* Applies the pending migrations in one transaction under the advisory lock. */
static chat_rc migrate(pg_db *d, char *err, size_t errlen)
{
    return store_migrate(&pg_migrator, d, MIGRATION_PREFIX, &d->schema_version, err, errlen);
}

/* Prepares every statement of pg_ops.c on the blocking connection. */
static chat_rc prepare_all(pg_db *d, char *err, size_t errlen)
{
    for (size_t i = 0; i < pg_op_defs_count; i++) {
        const pg_op_def *def = &pg_op_defs[i];
        PGresult *res = PQprepare(d->conn, def->name, def->sql, def->nparams, NULL);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            chat_set_err(err, errlen, "prepare %s: %s", def->name,
                         res ? PQresultErrorMessage(res) : PQerrorMessage(d->conn));
        PQclear(res);
        if (!ok)
            return CHAT_EIO;
    }
    return CHAT_OK;
}

/* ---- the backend ------------------------------------------------------------------ */

static void pg_close(void *impl)
{
    pg_db *d = impl;
    if (!d)
        return;
    pg_pool_free(d->pool);
    PQfinish(d->conn);
    free(d->url);
    free(d);
}

static chat_rc pg_open(const char *url, void **impl, char *err, size_t errlen)
{
    chat_rc rc = CHAT_EIO;
    *impl = NULL;
    /* libpq would also read a bare "dbname=..." string; only URIs name this backend. */
    if (strncmp(url, "postgres://", 11) != 0 && strncmp(url, "postgresql://", 13) != 0) {
        chat_set_err(err, errlen, "unsupported database url (expected postgres://...)");
        return CHAT_EINVAL;
    }
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        chat_set_err(err, errlen, "bad PostgreSQL url: %s", perr ? perr : "out of memory");
        PQfreemem(perr);
        return CHAT_EINVAL;
    }
    PQconninfoFree(opts);

    pg_db *d = chat_xcalloc(1, sizeof *d);
    d->url = chat_xstrdup(url);
    d->conn = PQconnectdb(url);
    if (!d->conn || PQstatus(d->conn) != CONNECTION_OK) {
        /* The message names the server; the URL may carry a password, so it is not repeated. */
        chat_set_err(err, errlen, "cannot connect to PostgreSQL: %s",
                     d->conn ? PQerrorMessage(d->conn) : "out of memory");
        goto out;
    }
    PQsetNoticeProcessor(d->conn, quiet_notice, NULL);
    rc = migrate(d, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    rc = prepare_all(d, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    *impl = d;
    d = NULL;
out:
    pg_close(d);
    return rc;
}

static int pg_schema_version(void *impl)
{
    return impl ? ((pg_db *)impl)->schema_version : 0;
}

/* A connection lost since the last call is made again before the next one. */
static chat_rc ensure_connected(pg_db *d)
{
    if (PQstatus(d->conn) == CONNECTION_OK)
        return CHAT_OK;
    PQreset(d->conn);
    char err[256] = "";
    if (PQstatus(d->conn) != CONNECTION_OK || prepare_all(d, err, sizeof err) != CHAT_OK) {
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "postgres", "op", "reconnect", "error",
                           err[0] ? err : PQerrorMessage(d->conn)));
        return CHAT_EIO;
    }
    PQsetNoticeProcessor(d->conn, quiet_notice, NULL);
    return CHAT_OK;
}

static chat_rc pg_run(void *impl, store_op *op)
{
    pg_db *d = impl;
    const pg_op_def *def = pg_op_def_for(op);
    pg_params p = { 0 };
    PGresult *res = NULL;
    chat_rc rc = CHAT_EINVAL;
    if (!d || !def)
        goto out;
    rc = def->enc(op, &p);
    if (rc != CHAT_OK)
        goto out;
    rc = ensure_connected(d);
    if (rc != CHAT_OK)
        goto out;
    for (int reruns = 0;; reruns++) {
        res = PQexecPrepared(d->conn, def->name, p.n, p.values, NULL, NULL, 0);
        if (!pg_res_rerunnable(res) || reruns == PG_RERUN_MAX)
            break;
        pg_log_rerun(def->name, res, reruns + 2);
        PQclear(res);
    }
    if (!res || PQstatus(d->conn) != CONNECTION_OK) {
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s,s:s}", "backend", "postgres", "op", store_op_name(op->kind), "error",
                           "connection lost", "reason", PQerrorMessage(d->conn)));
        rc = CHAT_EIO;
        goto out;
    }
    rc = def->dec(res, op);
out:
    PQclear(res);
    pg_params_clear(&p);
    op->rc = rc;
    return rc;
}

static chat_rc pg_attach(void *impl, struct event_base *base, int pool_size, int64_t queue_timeout_ms)
{
    pg_db *d = impl;
    if (!d || d->pool)
        return CHAT_EINVAL; /* once per handle */
    return pg_pool_new(base, d->url, pool_size, queue_timeout_ms, &d->pool);
}

/* Without a pool (never attached: a CLI handle), the op runs on the blocking
 * connection and completes at once, as with SQLite. */
static void pg_submit(void *impl, store_op *op)
{
    pg_db *d = impl;
    if (d && d->pool) {
        pg_pool_submit(d->pool, op);
        return;
    }
    if (d && d->detached) {
        op->rc = CHAT_EUNAVAIL; /* shutting down: never block the loop on the blocking connection */
    } else {
        pg_run(impl, op);
    }
    store_op_complete(op);
}

static void pg_detach(void *impl)
{
    pg_db *d = impl;
    d->detached = true;
    pg_pool *p = d->pool;
    d->pool = NULL; /* ops submitted by the callbacks below fail at once */
    pg_pool_free(p);
}

const store_backend store_backend_postgres = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .schema_version = pg_schema_version,
    .run = pg_run,
    .attach = pg_attach,
    .submit = pg_submit,
    .detach = pg_detach,
};
