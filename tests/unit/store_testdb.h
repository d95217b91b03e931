/*
 * store_testdb.h: the database under the store test suites (test_store.c,
 * test_store_keys.c), so that the same tests run against both backends.
 *
 * By default the suites run against SQLite (files in a per-test temporary
 * directory, or "sqlite://:memory:"). When CHATD_TEST_PG_URL is set (the URL of
 * a PostgreSQL database the tests may wipe, e.g. from tests/pg/with-pg.sh),
 * they run against PostgreSQL instead: every test starts from an empty
 * database (schema public dropped and recreated), and the tests that are about
 * SQLite itself (file URLs, WAL, :memory:, SQLite migrations) are skipped by
 * name.
 *
 * A "raw" connection reads the stored rows behind the store's back, to check
 * what the contract promises about them (counters equal a scan, nothing
 * written on a conflict): a read-only sqlite3 connection on the file, or a
 * libpq connection.
 *
 * The cmocka fixture is here too (tdb_setup, tdb_teardown): a fresh
 * temporary directory per test, the database URL in it, or the wiped
 * PostgreSQL database.
 *
 * Header-only (static inline): each test executable is one file.
 */
#ifndef CHATD_TESTS_STORE_TESTDB_H
#define CHATD_TESTS_STORE_TESTDB_H

#include <ftw.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/assets.h"
#include "store/store.h"

/* The PostgreSQL URL under test, or NULL when the suite runs against SQLite. */
static inline const char *tdb_pg(void)
{
    const char *u = getenv("CHATD_TEST_PG_URL");
    return u && u[0] ? u : NULL;
}

static inline void tdb_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static inline PGconn *tdb_pg_connect(void)
{
    PGconn *c = PQconnectdb(tdb_pg());
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect to CHATD_TEST_PG_URL: %s", PQerrorMessage(c));
    PQsetNoticeProcessor(c, tdb_quiet, NULL);
    return c;
}

/* Runs SQL on a raw PostgreSQL connection; fails the test on an error. */
static inline void tdb_pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* Empties the PostgreSQL database: no tables, no schema_version. */
static inline void tdb_pg_reset(void)
{
    PGconn *c = tdb_pg_connect();
    tdb_pg_exec(c, "SET client_min_messages = warning; DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    PQfinish(c);
}

/* The highest migration version embedded for the backend under test. */
static inline int tdb_expected_version(void)
{
    const char *prefix = tdb_pg() ? "schema_pg/" : "schema/";
    size_t pre = strlen(prefix);
    int max = 0;
    for (size_t i = 0; i < chat_assets_count; i++) {
        const char *n = chat_assets[i].name;
        if (strncmp(n, prefix, pre) == 0 && strstr(n, ".sql")) {
            int v = atoi(n + pre);
            if (v > max)
                max = v;
        }
    }
    return max;
}

/* A raw connection to the database under test. */
typedef struct rawdb {
    sqlite3 *lite;
    PGconn *pg;
} rawdb;

/* Opens a raw connection: PostgreSQL when under test, else the SQLite file at
 * path (read-only unless writable). */
static inline rawdb *raw_open_db(const char *path, bool writable)
{
    rawdb *db = calloc(1, sizeof *db);
    if (tdb_pg()) {
        db->pg = tdb_pg_connect();
        return db;
    }
    int flags = writable ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;
    assert_int_equal(sqlite3_open_v2(path, &db->lite, flags, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db->lite, 5000);
    return db;
}

static inline void raw_close(rawdb *db)
{
    if (!db)
        return;
    sqlite3_close(db->lite);
    PQfinish(db->pg);
    free(db);
}

/* A one-integer query on a sqlite3 connection, or fails the test. */
static inline int64_t tdb_lite_scalar(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Runs a one-integer query (SQL NULL reads as 0, as in SQLite's API). */
static inline int64_t scalar(rawdb *db, const char *sql)
{
    if (db->pg) {
        PGresult *r = PQexec(db->pg, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
            fail_msg("%s: %s", sql, PQresultErrorMessage(r));
        int64_t v = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        return v;
    }
    return tdb_lite_scalar(db->lite, sql);
}

/* Runs a statement that returns nothing interesting. */
static inline void raw_exec(rawdb *db, const char *sql)
{
    if (db->pg) {
        tdb_pg_exec(db->pg, sql);
        return;
    }
    char *err = NULL;
    if (sqlite3_exec(db->lite, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err ? err : "error");
}

/*
 * Runs the group, leaving out under PostgreSQL the tests named in
 * sqlite_only (NULL-terminated). Returns what cmocka's runner returns.
 */
static inline int tdb_run_tests(const char *group, const struct CMUnitTest *tests, size_t n,
                                const char *const *sqlite_only)
{
    struct CMUnitTest *run = calloc(n ? n : 1, sizeof *run);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        for (const char *const *s = sqlite_only; tdb_pg() && *s && !skip; s++)
            skip = strcmp(tests[i].name, *s) == 0;
        if (skip)
            fprintf(stderr, "[ SKIPPED  ] %s (SQLite only)\n", tests[i].name);
        else
            run[count++] = tests[i];
    }
    char name[128];
    snprintf(name, sizeof name, "%s (%s)", group, tdb_pg() ? "postgres" : "sqlite");
    int rc = _cmocka_run_group_tests(name, run, count, NULL, NULL);
    free(run);
    return rc;
}

/* ---- the per-test fixture ------------------------------------------------ */

struct fixture {
    char dir[64];   /* the test's temporary directory */
    char path[256]; /* dir + the file name tdb_setup was given */
    char url[600];  /* "sqlite:///" + path (four slashes, as path is absolute), or the PostgreSQL URL */
};

static inline int tdb_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* For cmocka: a fresh directory /tmp/<prefix>XXXXXX, the SQLite file at file
 * (e.g. "/chat.db") under it, or, with use_pg and CHATD_TEST_PG_URL, the
 * PostgreSQL database, emptied. */
static inline int tdb_setup(void **state, const char *prefix, const char *file, bool use_pg)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/%sXXXXXX", prefix);
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s%s", f->dir, file);
    snprintf(f->url, sizeof f->url, "sqlite:///%s", f->path);
    if (use_pg && tdb_pg()) {
        tdb_pg_reset();
        snprintf(f->url, sizeof f->url, "%s", tdb_pg());
    }
    *state = f;
    return 0;
}

static inline int tdb_teardown(void **state)
{
    struct fixture *f = *state;
    nftw(f->dir, tdb_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* store_open, or fails the test. */
static inline store *tdb_open_url(const char *url)
{
    store *s = NULL;
    char err[256] = "";
    chat_rc rc = store_open(url, &s, err, sizeof err);
    if (rc != CHAT_OK)
        fail_msg("store_open(%s): %s: %s", url, chat_rc_str(rc), err);
    return s;
}

/* A private, empty database: SQLite in memory, or the PostgreSQL one wiped. */
static inline store *tdb_open_mem(void)
{
    if (tdb_pg()) {
        tdb_pg_reset();
        return tdb_open_url(tdb_pg());
    }
    return tdb_open_url("sqlite://:memory:");
}

#endif
