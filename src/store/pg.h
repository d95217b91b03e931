/*
 * pg.h: internals shared by the PostgreSQL backend's two halves (not a public
 * header; include only from src/store/ and tests).
 *
 * Every store operation is ONE prepared statement: a call of a PL/pgSQL
 * function of the schema (schema_pg/) or a plain statement, run in its own
 * implicit transaction, so an operation is one round trip and atomic without
 * client-side BEGIN/COMMIT. A pg_op_def says how an op becomes the statement's
 * text parameters (enc) and how the result fills the op's outputs (dec). The
 * same defs serve both execution paths:
 *   - synchronous (postgres.c: pg_run), the blocking handle of store_open,
 *     used by `chatd migrate|keys|export|import` and the store test suite;
 *   - asynchronous (pg_pool.c), connections driven by a worker's event loop
 *     with libpq's non-blocking API, used by store_submit in the server.
 *
 * Thread: a PGconn belongs to one thread; defs are immutable.
 */
#ifndef CHATD_STORE_PG_H
#define CHATD_STORE_PG_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "store/store.h"

#define PG_MAX_PARAMS 32

/* Text parameters of one statement. enc points values[i] at the op's strings
 * (borrowed: the op outlives the query), at num[i] for integers (pg_param_i64),
 * or at heap strings it registers in owned (freed by pg_params_clear).
 * values[i] == NULL is SQL NULL. */
typedef struct pg_params {
    int n;
    const char *values[PG_MAX_PARAMS];
    char num[PG_MAX_PARAMS][24];
    char *owned[PG_MAX_PARAMS];
    int nowned;
} pg_params;

void pg_param_str(pg_params *p, const char *v);   /* appends v (NULL: SQL NULL) */
void pg_param_i64(pg_params *p, int64_t v);       /* appends v as decimal text */
void pg_param_take(pg_params *p, char *heap_str); /* appends and frees it in pg_params_clear */
void pg_params_clear(pg_params *p);

typedef struct pg_op_def {
    store_op_kind kind;
    const char *name; /* prepared statement name, unique */
    const char *sql;  /* with $1..$n, n == the params enc appends */
    int nparams;
    /* Validates the op's inputs like the SQLite backend (same CHAT_EINVAL
     * cases) and appends the parameters. Not CHAT_OK: the statement is not
     * sent and the op completes with that rc. */
    chat_rc (*enc)(const store_op *op, pg_params *p);
    /* Fills op->out from a PGRES_TUPLES_OK / PGRES_COMMAND_OK result and
     * returns the op's rc (CHAT_OK, CHAT_EBUSY, CHAT_ENOTFOUND, ...). Also
     * called for PGRES_FATAL_ERROR results on a healthy connection: maps the
     * SQLSTATE (e.g. unique_violation -> CHAT_ECONFLICT where the API says so)
     * or logs and returns CHAT_EIO. Never called after a connection loss. */
    chat_rc (*dec)(const PGresult *res, store_op *op);
} pg_op_def;

/* The def for kind, or NULL (kind out of range). Every kind has one. */
const pg_op_def *pg_op_def_get(store_op_kind kind);
/* The def that runs op: its kind's, or a variant of it that the op's inputs
 * ask for (MESSAGES_LIST with tail_tokens). NULL as pg_op_def_get. */
const pg_op_def *pg_op_def_for(const store_op *op);

/* Every def, for preparing the statements on a new connection (the one-per-kind
 * entries in kind order, then the variants). */
extern const pg_op_def pg_op_defs[];
extern const size_t pg_op_defs_count;

/* A statement that failed with deadlock_detected (40P01) or
 * serialization_failure (40001) was rolled back whole (every op is one
 * statement, its own transaction), so nothing of it happened and it is sent
 * again, up to PG_RERUN_MAX times, by both execution paths. */
#define PG_RERUN_MAX 3
bool pg_res_rerunnable(const PGresult *res);
/* Logs that statement name, rolled back (res), is sent again as attempt n. */
void pg_log_rerun(const char *name, const PGresult *res, int attempt);

/* Opening a pool: the URL store_open was given (owned by the handle). */
const char *pg_handle_url(const void *pg_handle);

#endif
