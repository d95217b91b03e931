/*
 * test_sqlite_walbuf.c: store/sqlite_walbuf.c, the VFS that gathers a
 * commit's WAL writes into one.
 *
 * Against real files: what one connection commits through the VFS, another
 * (default VFS) sees at once, page for page, across rewrites of a page within
 * a transaction, spills of a large transaction, checkpoints and WAL restarts;
 * a process that dies in the middle of a transaction leaves exactly the
 * transactions it committed; and a commit of many pages reaches the kernel in
 * a couple of writes, where the default VFS takes two per page.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "store/sqlite_int.h"
#include "store_testdb.h"

static int setup(void **state)
{
    return tdb_setup(state, "chatd-walbuf.", "/t.db", false);
}

/* The test's database file. */
static const char *db_path(void **state)
{
    return ((struct fixture *)*state)->path;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : sqlite3_errstr(rc));
}

static sqlite3 *open_db(const char *path, const char *vfs)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    exec_ok(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL");
    return db;
}

#define one_int tdb_lite_scalar

/* A digest of the whole table, from any connection. */
#define DIGEST "SELECT count(*) * 1000003 + coalesce(sum(id * length(v) + unicode(substr(v, 1 + id % 97))), 0) FROM t"

static void test_other_connections_see_every_commit(void **state)
{
    const char *vfs = sqlite_walbuf_vfs();
    assert_non_null(vfs);
    sqlite3 *w = open_db(db_path(state), vfs), *r = open_db(db_path(state), NULL);
    exec_ok(w, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)");
    exec_ok(w, "PRAGMA wal_autocheckpoint=50; PRAGMA cache_size=20"); /* checkpoints, restarts, spills */
    srand(7);
    char sql[256];
    for (int tx = 0; tx < 300; tx++) {
        exec_ok(w, "BEGIN IMMEDIATE");
        int ops = 1 + rand() % 12;
        for (int k = 0; k < ops; k++) {
            int what = rand() % 4, id = 1 + rand() % 400, len = 1 + rand() % 9000;
            if (what == 0)
                snprintf(sql, sizeof sql, "DELETE FROM t WHERE id = %d", id);
            else if (what == 1) /* the same rows again: pages rewritten within the transaction */
                snprintf(sql, sizeof sql, "UPDATE t SET v = v || 'x' WHERE id BETWEEN %d AND %d", id, id + 20);
            else
                snprintf(sql, sizeof sql,
                         "INSERT OR REPLACE INTO t VALUES (%d, printf('%%.*c', %d, char(97 + %d %% 26)))", id, len, id);
            exec_ok(w, sql);
        }
        exec_ok(w, "COMMIT");
        assert_int_equal(one_int(r, DIGEST), one_int(w, DIGEST));
        if (tx % 50 == 49)
            exec_ok(w, "PRAGMA wal_checkpoint(TRUNCATE)");
    }
    sqlite3_close(w);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(r, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(r);
}

/* In the forked child (no cmocka there): sql, or the child exits with code. */
static void child_exec(sqlite3 *db, const char *sql, int code)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        _exit(code);
}

static void test_a_death_mid_transaction_keeps_the_commits(void **state)
{
    const char *path = db_path(state);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        sqlite3 *w = NULL;
        if (sqlite3_open_v2(path, &w, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, sqlite_walbuf_vfs()) != SQLITE_OK)
            _exit(2);
        child_exec(w,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=10;"
                   "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
                   3);
        for (int i = 1; i <= 40; i++) {
            char sql[160];
            snprintf(sql, sizeof sql, "INSERT INTO t VALUES (%d, printf('%%.*c', %d, 'c'))", i, 3000 + i);
            child_exec(w, sql, 4);
        }
        /* A transaction far larger than the page cache: its pages spill into
         * the WAL before any commit. Then the process dies, as kill -9 would. */
        child_exec(w,
                   "BEGIN; INSERT INTO t SELECT id + 1000, printf('%.*c', 5000, 'd') FROM t;"
                   "INSERT INTO t SELECT id + 2000, v FROM t; UPDATE t SET v = v || 'e';",
                   5);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    sqlite3 *r = open_db(path, NULL);
    assert_int_equal(one_int(r, "SELECT count(*) FROM t"), 40);
    assert_int_equal(one_int(r, "SELECT sum(length(v)) FROM t"), 40 * 3000 + 40 * 41 / 2);
    assert_int_equal(one_int(r, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
    sqlite3_close(r);
}

/* ---- the writes that reach the kernel ---- */

static sqlite3_syscall_ptr real_pwrite, real_pwrite64;
static int writes;

static ssize_t count_pwrite(int fd, const void *buf, size_t n, off_t off)
{
    writes++;
    return ((ssize_t(*)(int, const void *, size_t, off_t))real_pwrite)(fd, buf, n, off);
}

static ssize_t count_pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    writes++;
    return ((ssize_t(*)(int, const void *, size_t, off64_t))real_pwrite64)(fd, buf, n, off);
}

/* The kernel writes of one commit of about 40 new pages. */
static int writes_of_a_commit(const char *path, const char *vfs)
{
    sqlite3 *db = open_db(path, vfs);
    exec_ok(db, "PRAGMA wal_autocheckpoint=0; CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)");
    exec_ok(db, "INSERT INTO t SELECT NULL, 'warm'"); /* the WAL exists, its header written */
    exec_ok(db, "BEGIN IMMEDIATE");
    for (int i = 0; i < 40; i++)
        exec_ok(db, "INSERT INTO t VALUES (NULL, printf('%.*c', 3500, 'p'))");
    writes = 0;
    exec_ok(db, "COMMIT");
    int n = writes;
    sqlite3_close(db);
    return n;
}

static void test_a_commit_is_a_few_writes(void **state)
{
    sqlite3_vfs *unix_vfs = sqlite3_vfs_find(NULL);
    assert_non_null(unix_vfs->xSetSystemCall);
    real_pwrite = unix_vfs->xGetSystemCall(unix_vfs, "pwrite");
    real_pwrite64 = unix_vfs->xGetSystemCall(unix_vfs, "pwrite64");
    if (real_pwrite)
        unix_vfs->xSetSystemCall(unix_vfs, "pwrite", (sqlite3_syscall_ptr)count_pwrite);
    if (real_pwrite64)
        unix_vfs->xSetSystemCall(unix_vfs, "pwrite64", (sqlite3_syscall_ptr)count_pwrite64);
    int plain = writes_of_a_commit(db_path(state), NULL);
    int gathered = writes_of_a_commit(db_path(state), sqlite_walbuf_vfs());
    unix_vfs->xSetSystemCall(unix_vfs, NULL, NULL); /* all back to the defaults */
    print_message("writes of a 40-page commit: default VFS %d, walbuf %d\n", plain, gathered);
    assert_true(plain >= 80); /* a header and a page per frame */
    assert_true(gathered >= 1);
    assert_true(gathered <= 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_other_connections_see_every_commit, setup, tdb_teardown),
        cmocka_unit_test_setup_teardown(test_a_death_mid_transaction_keeps_the_commits, setup, tdb_teardown),
        cmocka_unit_test_setup_teardown(test_a_commit_is_a_few_writes, setup, tdb_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
