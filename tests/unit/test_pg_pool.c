/*
 * test_pg_pool.c: loop-level tests of the asynchronous PostgreSQL pool
 * (src/store/pg_pool.h).
 *
 * Without a server: argument checks, the queue deadline and bound against a
 * port nobody listens on, and pg_pool_free completing what is left.
 *
 * With a server (CHATD_TEST_PG_URL, e.g. through tests/pg/with-pg.sh; the
 * tests are skipped with a message otherwise): many concurrent ops, a refused
 * op, the queue deadline behind a busy connection (a second, raw connection
 * takes LOCK TABLE stats so that a stats_get waits), an op rolled back by a
 * deadlock (sent again), an idle connection the server closed (its next op is
 * requeued, not failed), and, with
 * the server's pgserver.sh directory (CHATD_TEST_PG_DIR, else found from its
 * data_directory), a server restart (tests/pg/pgserver.sh stop/start):
 * ops fail with CHAT_EUNAVAIL while it is down and succeed after, in the same
 * pool.
 *
 * Ops are built by hand and given straight to the pool. store_op_complete
 * (store.c) accounts every op against its owner_store: a private SQLite
 * memory store plays that part. The loop is run by hand until the callbacks
 * under test have run, with a bound.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "core/util.h"
#include "store/pg_pool.h"
#include "store/store.h"

static struct event_base *base;
static store *ledger;      /* owner_store of every op (see the file comment) */
static const char *pg_url; /* CHATD_TEST_PG_URL, or NULL */
static const char *pg_dir; /* CHATD_TEST_PG_DIR, or NULL */

typedef struct result {
    int done; /* callback runs: must end at exactly 1 */
    chat_rc rc;
    int64_t at_ms;     /* monotonic time of the completion */
    store_stats stats; /* stats_get's output */
    pg_pool *resubmit; /* when set, the callback submits a ping there (see test_free_completes) */
    struct result *child;
} result;

static void on_done(store_op *op, void *ud)
{
    result *r = ud;
    r->done++;
    r->rc = op->rc;
    r->at_ms = chat_mono_ms();
    if (op->kind == STORE_OP_STATS_GET)
        r->stats = op->out.stats;
    if (r->resubmit) {
        pg_pool *p = r->resubmit;
        r->resubmit = NULL;
        store_op *again = store_op_new(STORE_OP_PING);
        again->cb = on_done;
        again->ud = r->child;
        again->owner_store = ledger;
        pg_pool_submit(p, again);
    }
}

static store_op *mkop(store_op_kind kind, result *r)
{
    store_op *op = store_op_new(kind);
    op->cb = on_done;
    op->ud = r;
    op->owner_store = ledger;
    op->submitted_mono_us = chat_mono_us();
    return op;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until the n results are done, or timeout_ms passed. */
static bool run_until_done(result *rs, int n, int64_t timeout_ms)
{
    /* A persistent tick so that EVLOOP_ONCE returns even when nothing happens. */
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 10000 };
    event_add(tick, &tv);
    int64_t end = chat_mono_ms() + timeout_ms;
    bool all = false;
    while (!all && chat_mono_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE);
        all = true;
        for (int i = 0; i < n; i++)
            all = all && rs[i].done > 0;
    }
    event_free(tick);
    return all;
}

static void run_for(int64_t ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 10000 };
    event_add(tick, &tv);
    int64_t end = chat_mono_ms() + ms;
    while (chat_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
}

/* A URL on which nothing listens (a port just bound and released). */
static void dead_url(char *buf, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    snprintf(buf, len, "postgres://chatd@127.0.0.1:%d/chatd", ntohs(a.sin_port));
}

/* The directory of a server started by tests/pg/pgserver.sh (its data/ and
 * port file), found from the server's data_directory when CHATD_TEST_PG_DIR
 * is not set, or NULL (a server not started by pgserver.sh). */
static const char *find_pgserver_dir(void)
{
    static char dir[1024];
    PGconn *c = PQconnectdb(pg_url);
    const char *found = NULL;
    PGresult *res = NULL;
    if (PQstatus(c) != CONNECTION_OK)
        goto out;
    res = PQexec(c, "SELECT current_setting('data_directory')");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        goto out;
    snprintf(dir, sizeof dir, "%s", PQgetvalue(res, 0, 0));
    char *slash = strrchr(dir, '/');
    if (!slash || strcmp(slash, "/data") != 0)
        goto out;
    *slash = '\0';
    char port[1100];
    snprintf(port, sizeof port, "%s/port", dir);
    if (access(port, R_OK) == 0)
        found = dir;
out:
    PQclear(res);
    PQfinish(c);
    return found;
}

static int group_setup(void **state)
{
    (void)state;
    base = event_base_new();
    char err[256];
    if (!base || store_open("sqlite://:memory:", &ledger, err, sizeof err) != CHAT_OK)
        return -1;
    pg_url = getenv("CHATD_TEST_PG_URL");
    pg_dir = getenv("CHATD_TEST_PG_DIR");
    if (pg_url && !*pg_url)
        pg_url = NULL;
    if (pg_dir && !*pg_dir)
        pg_dir = NULL;
    if (!pg_url) {
        fprintf(stderr, "test_pg_pool: CHATD_TEST_PG_URL is not set: the tests that need a PostgreSQL "
                        "server are skipped (ctest -R '^pg_pool$' runs them on a throwaway server)\n");
        return 0;
    }
    /* Migrates the schema the defs need (stats, the functions). */
    store *s = NULL;
    if (store_open(pg_url, &s, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "test_pg_pool: store_open(%s): %s\n", pg_url, err);
        return -1;
    }
    store_close(s);
    if (!pg_dir)
        pg_dir = find_pgserver_dir();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    store_close(ledger);
    event_base_free(base);
    return 0;
}

#define NEED_PG()                                                    \
    do {                                                             \
        if (!pg_url) {                                               \
            fprintf(stderr, "  skipped: needs CHATD_TEST_PG_URL\n"); \
            skip();                                                  \
        }                                                            \
    } while (0)

/* pg_url with application_name=name, so that the test can find the pool's
 * sessions in pg_stat_activity (the URL overrides the pool's "chatd"). */
static const char *named_url(const char *name)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s%capplication_name=%s", pg_url, strchr(pg_url, '?') ? '&' : '?', name);
    return buf;
}

/* A raw blocking connection for the test's own statements. */
static PGconn *raw_connect(void)
{
    const char *kw[] = { "application_name", "dbname", NULL };
    const char *val[] = { "chatd_test_raw", pg_url, NULL };
    PGconn *c = PQconnectdbParams(kw, val, 1);
    assert_non_null(c);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("raw connect: %s", PQerrorMessage(c));
    return c;
}

static void raw_exec(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* ---- without a server ---------------------------------------------------- */

static void test_bad_args(void **state)
{
    (void)state;
    pg_pool *p = (pg_pool *)1;
    const char *url = "postgres://chatd@127.0.0.1:1/chatd";
    assert_int_equal(pg_pool_new(NULL, url, 1, 100, &p), CHAT_EINVAL);
    assert_null(p);
    assert_int_equal(pg_pool_new(base, NULL, 1, 100, &p), CHAT_EINVAL);
    assert_int_equal(pg_pool_new(base, url, 0, 100, &p), CHAT_EINVAL);
    assert_int_equal(pg_pool_new(base, url, PG_POOL_MAX_SIZE + 1, 100, &p), CHAT_EINVAL);
    assert_int_equal(pg_pool_new(base, url, 1, 0, &p), CHAT_EINVAL);
    assert_int_equal(pg_pool_new(base, "host=x port", 1, 100, &p), CHAT_EINVAL);
    assert_int_equal(pg_pool_new(base, "postgres://h:notaport:x/db?bogus=1", 1, 100, &p), CHAT_EINVAL);
    assert_null(p);
    assert_int_equal(pg_pool_new(base, url, 1, 100, NULL), CHAT_EINVAL);
    assert_int_equal(pg_pool_pending(NULL), 0);
    pg_pool_free(NULL);
}

/* No server at all: every op fails at its deadline, none earlier, none hangs. */
static void test_unreachable_deadline(void **state)
{
    (void)state;
    char url[128];
    dead_url(url, sizeof url);
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, url, 2, 300, &p), CHAT_OK);
    result rs[5] = { 0 };
    int64_t t0 = chat_mono_ms();
    for (int i = 0; i < 5; i++)
        pg_pool_submit(p, mkop(STORE_OP_PING, &rs[i]));
    for (int i = 0; i < 5; i++)
        assert_int_equal(rs[i].done, 0); /* never completed inside submit */
    assert_int_equal(pg_pool_pending(p), 5);
    assert_true(run_until_done(rs, 5, 5000));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rs[i].done, 1);
        assert_int_equal(rs[i].rc, CHAT_EUNAVAIL);
        assert_true(rs[i].at_ms - t0 >= 295);
        assert_true(rs[i].at_ms - t0 < 2000);
    }
    assert_int_equal(pg_pool_pending(p), 0);
    /* The pool keeps trying (backoff) and keeps failing ops at their deadline. */
    result again = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &again));
    assert_true(run_until_done(&again, 1, 5000));
    assert_int_equal(again.rc, CHAT_EUNAVAIL);
    pg_pool_free(p);
    assert_int_equal(again.done, 1);
}

/* pg_pool_free completes the queue, and an op a callback submits meanwhile. */
static void test_free_completes(void **state)
{
    (void)state;
    char url[128];
    dead_url(url, sizeof url);
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, url, 1, 60000, &p), CHAT_OK);
    result rs[3] = { 0 }, child = { 0 };
    rs[0].resubmit = p;
    rs[0].child = &child;
    for (int i = 0; i < 3; i++)
        pg_pool_submit(p, mkop(STORE_OP_PING, &rs[i]));
    run_for(50);
    assert_int_equal(pg_pool_pending(p), 3);
    pg_pool_free(p);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rs[i].done, 1);
        assert_int_equal(rs[i].rc, CHAT_EUNAVAIL);
    }
    assert_int_equal(child.done, 1);
    assert_int_equal(child.rc, CHAT_EUNAVAIL);
}

/* Past PG_POOL_QUEUE_MAX waiting ops, the next is refused at once. */
static void test_queue_bound(void **state)
{
    (void)state;
    char url[128];
    dead_url(url, sizeof url);
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, url, 1, 60000, &p), CHAT_OK);
    int n = PG_POOL_QUEUE_MAX + 1;
    result *rs = calloc((size_t)n, sizeof *rs);
    assert_non_null(rs);
    for (int i = 0; i < n; i++)
        pg_pool_submit(p, mkop(STORE_OP_PING, &rs[i]));
    assert_int_equal(rs[n - 1].done, 0); /* refused, but not inside submit */
    assert_true(run_until_done(&rs[n - 1], 1, 1000));
    assert_int_equal(rs[n - 1].rc, CHAT_EUNAVAIL);
    assert_int_equal(rs[0].done, 0);
    assert_int_equal(pg_pool_pending(p), PG_POOL_QUEUE_MAX);
    pg_pool_free(p);
    for (int i = 0; i < n; i++)
        assert_int_equal(rs[i].done, 1);
    free(rs);
}

/* ---- with a server ----------------------------------------------------------- */

static void test_many_concurrent(void **state)
{
    (void)state;
    NEED_PG();
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, named_url("pgpool_many"), 4, 10000, &p), CHAT_OK);
    enum { N = 600 };
    result *rs = calloc(N, sizeof *rs);
    assert_non_null(rs);
    for (int i = 0; i < N; i++)
        pg_pool_submit(p, mkop(i % 2 ? STORE_OP_STATS_GET : STORE_OP_PING, &rs[i]));
    assert_int_equal(pg_pool_pending(p), N);
    assert_true(run_until_done(rs, N, 20000));
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].done, 1);
        if (rs[i].rc != CHAT_OK)
            fail_msg("op %d: %s", i, chat_rc_str(rs[i].rc));
        if (i % 2)
            assert_true(rs[i].stats.total_sessions >= 0);
    }
    assert_int_equal(pg_pool_pending(p), 0);
    /* The pool opened its 4 connections, no more. */
    PGconn *raw = raw_connect();
    PGresult *res = PQexec(raw, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgpool_many'");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(atoi(PQgetvalue(res, 0, 0)), 4);
    PQclear(res);
    PQfinish(raw);
    pg_pool_free(p);
    free(rs);
}

/* An op the pool cannot encode (no statement for its kind) completes with
 * CHAT_EINVAL, and the connection stays usable. (Ops with invalid arguments
 * never reach the pool: store.c refuses them with store_op_valid, which
 * test_store checks on both backends.) */
static void test_enc_refusal(void **state)
{
    (void)state;
    NEED_PG();
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, pg_url, 1, 5000, &p), CHAT_OK);
    result rs[3] = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_KIND_COUNT, &rs[0])); /* no def */
    pg_pool_submit(p, mkop(STORE_OP_PING, &rs[1]));
    store_op *bad = mkop(STORE_OP_KIND_COUNT, &rs[2]); /* no def */
    pg_pool_submit(p, bad);
    assert_true(run_until_done(rs, 3, 5000));
    assert_int_equal(rs[0].rc, CHAT_EINVAL);
    assert_int_equal(rs[1].rc, CHAT_OK);
    assert_int_equal(rs[2].rc, CHAT_EINVAL);
    pg_pool_free(p);
}

/* Pool of 1, its connection busy (stats locked by another session): waiting
 * ops fail at their deadline; the op in flight is not touched and completes
 * once the lock goes. */
static void test_queue_deadline_busy(void **state)
{
    (void)state;
    NEED_PG();
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, pg_url, 1, 300, &p), CHAT_OK);
    result warm = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &warm));
    assert_true(run_until_done(&warm, 1, 5000));
    assert_int_equal(warm.rc, CHAT_OK);

    PGconn *raw = raw_connect();
    raw_exec(raw, "BEGIN");
    raw_exec(raw, "LOCK TABLE stats IN ACCESS EXCLUSIVE MODE");
    result slow = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_STATS_GET, &slow));
    run_for(100);
    assert_int_equal(slow.done, 0);
    result rs[3] = { 0 };
    int64_t t0 = chat_mono_ms();
    for (int i = 0; i < 3; i++)
        pg_pool_submit(p, mkop(STORE_OP_PING, &rs[i]));
    assert_true(run_until_done(rs, 3, 5000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rs[i].rc, CHAT_EUNAVAIL);
        assert_true(rs[i].at_ms - t0 >= 295);
    }
    assert_int_equal(slow.done, 0);
    assert_int_equal(pg_pool_pending(p), 1);
    raw_exec(raw, "COMMIT");
    assert_true(run_until_done(&slow, 1, 5000));
    assert_int_equal(slow.rc, CHAT_OK);
    result after = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &after));
    assert_true(run_until_done(&after, 1, 5000));
    assert_int_equal(after.rc, CHAT_OK);
    PQfinish(raw);
    pg_pool_free(p);
}

/* A statement stuck behind a lock is cancelled by the pool's statement_timeout
 * and completes with CHAT_EUNAVAIL; its connection stays usable. The URL's
 * options replace the pool's 30 s default, so that the test is quick. */
static void test_statement_timeout(void **state)
{
    (void)state;
    NEED_PG();
    char url[1024];
    snprintf(url, sizeof url, "%s%coptions=-c%%20statement_timeout%%3D200", pg_url, strchr(pg_url, '?') ? '&' : '?');
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, url, 1, 5000, &p), CHAT_OK);
    result warm = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &warm));
    assert_true(run_until_done(&warm, 1, 5000));
    assert_int_equal(warm.rc, CHAT_OK);

    PGconn *raw = raw_connect();
    raw_exec(raw, "BEGIN");
    raw_exec(raw, "LOCK TABLE stats IN ACCESS EXCLUSIVE MODE");
    result slow = { 0 };
    int64_t t0 = chat_mono_ms();
    pg_pool_submit(p, mkop(STORE_OP_STATS_GET, &slow));
    assert_true(run_until_done(&slow, 1, 5000));
    assert_int_equal(slow.rc, CHAT_EUNAVAIL);
    assert_true(slow.at_ms - t0 >= 195);
    raw_exec(raw, "COMMIT");
    PQfinish(raw);

    result after = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_STATS_GET, &after));
    assert_true(run_until_done(&after, 1, 5000));
    assert_int_equal(after.rc, CHAT_OK);
    assert_int_equal(pg_pool_pending(p), 0);
    pg_pool_free(p);
}

/* An op whose transaction the server rolls back to break a deadlock is sent
 * again, not failed: a raw connection locks the stats table, the pool's
 * session reset locks its session row and waits for stats, and the raw
 * connection then asks for that session row. The reset waited first, so its
 * deadlock check runs first and it is the one rolled back; sent again, it
 * waits for the raw connection's commit and then succeeds. */
static void test_deadlock_rerun(void **state)
{
    (void)state;
    NEED_PG();
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, pg_url, 1, 30000, &p), CHAT_OK);
    PGconn *raw = raw_connect();
    raw_exec(raw, "DELETE FROM sessions WHERE id = 'deadlock-rerun'");
    raw_exec(raw, "INSERT INTO sessions (id, created_at, updated_at) VALUES ('deadlock-rerun', 1, 1)");
    raw_exec(raw, "BEGIN");
    raw_exec(raw, "UPDATE stats SET total_turns = total_turns"); /* every shard's row */
    result r = { 0 };
    store_op *op = mkop(STORE_OP_SESSION_RESET, &r);
    op->in.session_id = store_op_str(op, "deadlock-rerun");
    op->in.now = 2;
    pg_pool_submit(p, op);
    run_for(300); /* the reset holds the session row and waits for stats */
    assert_int_equal(r.done, 0);
    /* Blocks until the server breaks the cycle (deadlock_timeout, 1 s by default). */
    raw_exec(raw, "UPDATE sessions SET updated_at = 3 WHERE id = 'deadlock-rerun'");
    run_for(300); /* the reset's rollback arrives; sent again, it waits for the session row */
    assert_int_equal(r.done, 0);
    raw_exec(raw, "COMMIT");
    assert_true(run_until_done(&r, 1, 5000));
    assert_int_equal(r.rc, CHAT_OK);
    PGresult *res = PQexec(raw, "SELECT turn_count, updated_at FROM sessions WHERE id = 'deadlock-rerun'");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "0");
    assert_string_equal(PQgetvalue(res, 0, 1), "2");
    PQclear(res);
    raw_exec(raw, "DELETE FROM sessions WHERE id = 'deadlock-rerun'");
    PQfinish(raw);
    pg_pool_free(p);
}

struct sync_reset {
    store *s;
    chat_rc rc;
    volatile int done;
};

static void *sync_reset_thread(void *arg)
{
    struct sync_reset *r = arg;
    r->rc = store_session_reset(r->s, "deadlock-rerun-sync", 2, NULL);
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* The same deadlock on the blocking handle of store_open (the CLI's and the
 * store tests' path): the reset is sent again there too. */
static void test_deadlock_rerun_sync(void **state)
{
    (void)state;
    NEED_PG();
    char err[256];
    struct sync_reset r = { 0 };
    assert_int_equal(store_open(pg_url, &r.s, err, sizeof err), CHAT_OK);
    PGconn *raw = raw_connect();
    raw_exec(raw, "DELETE FROM sessions WHERE id = 'deadlock-rerun-sync'");
    raw_exec(raw, "INSERT INTO sessions (id, created_at, updated_at) VALUES ('deadlock-rerun-sync', 1, 1)");
    raw_exec(raw, "BEGIN");
    raw_exec(raw, "UPDATE stats SET total_turns = total_turns");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, sync_reset_thread, &r), 0);
    usleep(300 * 1000); /* the reset holds the session row and waits for stats */
    bool early = __atomic_load_n(&r.done, __ATOMIC_ACQUIRE);
    raw_exec(raw, "UPDATE sessions SET updated_at = 3 WHERE id = 'deadlock-rerun-sync'");
    usleep(300 * 1000); /* rolled back and sent again, the reset waits for the session row */
    bool before_commit = __atomic_load_n(&r.done, __ATOMIC_ACQUIRE);
    raw_exec(raw, "COMMIT");
    pthread_join(th, NULL); /* joined before any assert: r lives in this frame */
    assert_false(early);
    assert_false(before_commit);
    assert_int_equal(r.rc, CHAT_OK);
    PGresult *res = PQexec(raw, "SELECT updated_at FROM sessions WHERE id = 'deadlock-rerun-sync'");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "2");
    PQclear(res);
    raw_exec(raw, "DELETE FROM sessions WHERE id = 'deadlock-rerun-sync'");
    PQfinish(raw);
    store_close(r.s);
}

/* The server ends the pool's idle connection before the loop notices: the
 * next op finds it dead before sending, is requeued and succeeds on the new
 * connection. */
static void test_idle_killed_requeued(void **state)
{
    (void)state;
    NEED_PG();
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, named_url("pgpool_killed"), 1, 5000, &p), CHAT_OK);
    result warm = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &warm));
    assert_true(run_until_done(&warm, 1, 5000));
    assert_int_equal(warm.rc, CHAT_OK);
    PGconn *raw = raw_connect();
    PGresult *res =
        PQexec(raw, "SELECT count(*) FROM pg_stat_activity, "
                    "LATERAL pg_terminate_backend(pid) AS t WHERE application_name = 'pgpool_killed' AND t");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(atoi(PQgetvalue(res, 0, 0)), 1);
    PQclear(res);
    PQfinish(raw);
    usleep(300 * 1000); /* the goodbye reaches the socket; the loop does not run */
    result r = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &r));
    assert_true(run_until_done(&r, 1, 5000));
    assert_int_equal(r.rc, CHAT_OK);
    pg_pool_free(p);
}

static void pgserver(const char *cmd)
{
    const char *src = getenv("CHATD_SOURCE_DIR");
    char script[1024];
    if (src)
        snprintf(script, sizeof script, "%s/tests/pg/pgserver.sh", src);
    else /* __FILE__ is tests/unit/test_pg_pool.c, absolute under CMake */
        snprintf(script, sizeof script, "%.*s/../pg/pgserver.sh",
                 (int)(strrchr(__FILE__, '/') ? strrchr(__FILE__, '/') - __FILE__ : 1), __FILE__);
    char line[2300];
    snprintf(line, sizeof line, "'%s' %s '%s' >/dev/null", script, cmd, pg_dir);
    assert_int_equal(system(line), 0);
}

/* PostgreSQL stops with an op in flight and comes back: that op and those
 * submitted meanwhile fail with CHAT_EUNAVAIL (none hangs), and the same pool
 * serves again once the server is up. */
static void test_server_restart(void **state)
{
    (void)state;
    NEED_PG();
    if (!pg_dir) {
        fprintf(stderr, "  skipped: needs CHATD_TEST_PG_DIR (the server's directory for pgserver.sh)\n");
        skip();
    }
    pg_pool *p = NULL;
    assert_int_equal(pg_pool_new(base, pg_url, 2, 500, &p), CHAT_OK);
    result warm[2] = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_PING, &warm[0]));
    pg_pool_submit(p, mkop(STORE_OP_PING, &warm[1]));
    assert_true(run_until_done(warm, 2, 5000));
    assert_int_equal(warm[0].rc, CHAT_OK);
    assert_int_equal(warm[1].rc, CHAT_OK);

    /* An op in flight (waiting for a lock) when the server stops. */
    PGconn *raw = raw_connect();
    raw_exec(raw, "BEGIN");
    raw_exec(raw, "LOCK TABLE stats IN ACCESS EXCLUSIVE MODE");
    result inflight = { 0 };
    pg_pool_submit(p, mkop(STORE_OP_STATS_GET, &inflight));
    run_for(100);
    assert_int_equal(inflight.done, 0);
    /* Immediate: a fast shutdown ends the lock holder's session first at
     * times, and the op in flight then completes normally. */
    setenv("PGSERVER_STOP_MODE", "immediate", 1);
    pgserver("stop");
    unsetenv("PGSERVER_STOP_MODE");
    PQfinish(raw);
    assert_true(run_until_done(&inflight, 1, 5000));
    assert_int_equal(inflight.rc, CHAT_EUNAVAIL);

    /* While it is down: ops fail by their deadline. */
    result down[3] = { 0 };
    for (int i = 0; i < 3; i++)
        pg_pool_submit(p, mkop(STORE_OP_PING, &down[i]));
    assert_true(run_until_done(down, 3, 3000));
    for (int i = 0; i < 3; i++)
        assert_int_equal(down[i].rc, CHAT_EUNAVAIL);
    run_for(2500); /* let the backoff reach its ceiling */

    pgserver("start");
    int64_t t0 = chat_mono_ms();
    bool ok = false;
    while (!ok && chat_mono_ms() - t0 < 15000) {
        result r = { 0 };
        pg_pool_submit(p, mkop(STORE_OP_PING, &r));
        assert_true(run_until_done(&r, 1, 5000));
        ok = r.rc == CHAT_OK;
        if (!ok)
            run_for(100);
    }
    assert_true(ok);
    /* Back to full service: both connections serve again. */
    result rs[20] = { 0 };
    for (int i = 0; i < 20; i++)
        pg_pool_submit(p, mkop(i % 2 ? STORE_OP_STATS_GET : STORE_OP_PING, &rs[i]));
    assert_true(run_until_done(rs, 20, 5000));
    for (int i = 0; i < 20; i++)
        assert_int_equal(rs[i].rc, CHAT_OK);
    assert_int_equal(pg_pool_pending(p), 0);
    pg_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_unreachable_deadline),
        cmocka_unit_test(test_free_completes),
        cmocka_unit_test(test_queue_bound),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_enc_refusal),
        cmocka_unit_test(test_queue_deadline_busy),
        cmocka_unit_test(test_statement_timeout),
        cmocka_unit_test(test_deadlock_rerun),
        cmocka_unit_test(test_deadlock_rerun_sync),
        cmocka_unit_test(test_idle_killed_requeued),
        cmocka_unit_test(test_server_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
