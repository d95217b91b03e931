/*
 * test_store.c: a store backend against the contract of store/store.h.
 *
 * SQLite by default; PostgreSQL when CHATD_TEST_PG_URL is set (store_testdb.h:
 * an empty database per test, SQLite-only tests skipped). Each test gets a
 * fresh temporary directory (mkdtemp) for its file databases; tests that need
 * no file use "sqlite://:memory:" (or the PostgreSQL database). Where the
 * contract promises something about the stored data (counters equal a scan,
 * nothing written on a conflict), a second, raw connection checks it.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/assets.h"
#include "store/store.h"
#include "store_testdb.h"

static int setup(void **state)
{
    return tdb_setup(state, "chatd_test_store_", "/db/chat.db", true);
}

static int teardown(void **state)
{
    return tdb_teardown(state);
}

#define open_url tdb_open_url
#define open_mem tdb_open_mem

/* The highest migration version embedded in the binary for this backend. */
static int expected_version(void)
{
    return tdb_expected_version();
}

static const store_usage NO_USAGE = { -1, -1, -1, -1 };

/* A turn with plausible contents; callers override what they test. */
static store_turn make_turn(const char *sid, const char *token, int64_t now)
{
    store_turn t = {
        .session_id = sid,
        .owner = NULL,
        .system_prompt = "You are helpful.",
        .model = "claude-test",
        .user_content = "hello",
        .assistant_content = "hi there",
        .status = "complete",
        .stop_reason = "end_turn",
        .user_tokens = 3,
        .usage = { 10, 5, 2, 1 },
        .cost_micros = 100,
        .lock_token = token,
        .now = now,
    };
    return t;
}

/* Locks, commits t, and checks both succeeded. */
static store_turn_result commit(store *s, store_turn t)
{
    store_turn_result r;
    assert_int_equal(store_lock_acquire(s, t.session_id, t.lock_token, t.now, 60000), CHAT_OK);
    assert_int_equal(store_turn_commit(s, &t, &r), CHAT_OK);
    return r;
}

static store_turn_result commit_simple(store *s, const char *sid, int64_t now)
{
    return commit(s, make_turn(sid, "tok", now));
}

static rawdb *raw_open(const char *path)
{
    return raw_open_db(path, false);
}

/* The stats row's counts equal a scan of the tables. */
static void assert_counts_match_scan(store *s, const char *path)
{
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    rawdb *db = raw_open(path);
    assert_int_equal(st.total_sessions, scalar(db, "SELECT COUNT(*) FROM sessions"));
    assert_int_equal(st.total_messages, scalar(db, "SELECT COUNT(*) FROM messages"));
    assert_int_equal(st.total_messages, scalar(db, "SELECT COALESCE(SUM(message_count),0) FROM sessions"));
    assert_int_equal(st.total_turns, scalar(db, "SELECT COALESCE(SUM(turn_count),0) FROM sessions"));
    /* Every session's own counters match its rows too. */
    assert_int_equal(0, scalar(db, "SELECT COUNT(*) FROM sessions s WHERE message_count != "
                                   "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id)"));
    assert_int_equal(0, scalar(db, "SELECT COUNT(*) FROM sessions WHERE 2 * turn_count != message_count"));
    raw_close(db);
}

/* ---- open and migrations -------------------------------------------------- */

static void test_open_bad_urls(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {
        "",
        "postgres://%zz/",
        "postgresql://h/db?bogus=1",
        "sqlite:",
        "sqlite://",
        "sqlite:///",
        "sqlite://relative.db",
        "sqlite:///dir/",
        "sqlite:///a.db?mode=ro",
        "sqlite:///:memory:",
        "SQLITE:///a.db",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        store *s = (store *)1;
        char err[256] = "";
        assert_int_equal(store_open(bad[i], &s, err, sizeof err), CHAT_EINVAL);
        assert_null(s);
        assert_true(strlen(err) > 0);
        assert_null(strchr(err, '\n'));
    }
    store *s = NULL;
    assert_int_equal(store_open(NULL, &s, NULL, 0), CHAT_EINVAL);
    assert_int_equal(store_open("sqlite://:memory:", NULL, NULL, 0), CHAT_EINVAL);
    assert_int_equal(store_open("nope", &s, NULL, 0), CHAT_EINVAL); /* no err buffer: fine */

    /* A parent that cannot be created: a regular file in the way. */
    char file[300], url[400], err[256] = "";
    snprintf(file, sizeof file, "%s/plainfile", f->dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(url, sizeof url, "sqlite:///%s/sub/x.db", file);
    assert_int_equal(store_open(url, &s, err, sizeof err), CHAT_EIO);
    assert_null(s);
    assert_non_null(strstr(err, "plainfile"));

    /* A database path that is a directory. */
    snprintf(url, sizeof url, "sqlite:///%s", f->dir);
    assert_int_equal(store_open(url, &s, err, sizeof err), CHAT_EIO);
    assert_null(s);
}

static void test_open_migrate_twice(void **state)
{
    struct fixture *f = *state;
    int want = expected_version();
    assert_true(want >= 1);

    store *s = open_url(f->url); /* also creates f->dir/db/ */
    assert_int_equal(store_schema_version(s), want);
    assert_int_equal(store_ping(s), CHAT_OK);
    commit_simple(s, "keep", 1000);
    store_close(s);

    s = open_url(f->url);
    assert_int_equal(store_schema_version(s), want);
    store_close(s);

    rawdb *db = raw_open(f->path);
    /* Each migration recorded exactly once; data untouched by the second open. */
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM schema_version"), want);
    assert_int_equal(scalar(db, "SELECT MAX(version) FROM schema_version"), want);
    /* SQLite: one stats row; PostgreSQL: its 16 shards. */
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM stats"), tdb_pg() ? 16 : 1);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM messages"), 2);
    if (!tdb_pg()) {
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_prepare_v2(db->lite, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
        sqlite3_finalize(st);

        struct stat sb;
        char dir[300];
        snprintf(dir, sizeof dir, "%s/db", f->dir);
        assert_int_equal(stat(dir, &sb), 0);
        assert_true(S_ISDIR(sb.st_mode));
    }
    raw_close(db);

    /* A schema newer than the binary is refused. */
    rawdb *w = raw_open_db(f->path, true);
    raw_exec(w, "INSERT INTO schema_version VALUES (999999, 'future.sql', 0)");
    raw_close(w);
    char err[256] = "";
    s = NULL;
    assert_int_equal(store_open(f->url, &s, err, sizeof err), CHAT_EIO);
    assert_null(s);
    assert_non_null(strstr(err, "newer"));
}

static void test_open_relative_path(void **state)
{
    struct fixture *f = *state;
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(f->dir), 0);
    store *s = NULL;
    char err[256] = "";
    chat_rc rc = store_open("sqlite:///./rel/deeper/x.db", &s, err, sizeof err);
    int ch = chdir(cwd);
    assert_int_equal(ch, 0);
    assert_int_equal(rc, CHAT_OK);
    store_close(s);
    char p[300];
    snprintf(p, sizeof p, "%s/rel/deeper/x.db", f->dir);
    assert_int_equal(access(p, F_OK), 0);
}

struct opener {
    const char *url;
    pthread_barrier_t *go;
    chat_rc rc;
    int version;
};

static void *open_thread(void *arg)
{
    struct opener *o = arg;
    store *s = NULL;
    char err[256] = "";
    pthread_barrier_wait(o->go);
    o->rc = store_open(o->url, &s, err, sizeof err);
    if (o->rc != CHAT_OK)
        fprintf(stderr, "concurrent open: %s\n", err);
    o->version = store_schema_version(s);
    store_close(s);
    return NULL;
}

/* Several workers opening (and migrating) a brand-new database at once. */
static void test_open_concurrent(void **state)
{
    struct fixture *f = *state;
    enum { N = 8 };
    pthread_t th[N];
    struct opener o[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    for (int i = 0; i < N; i++) {
        o[i] = (struct opener){ .url = f->url, .go = &go };
        assert_int_equal(pthread_create(&th[i], NULL, open_thread, &o[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(o[i].rc, CHAT_OK);
        assert_int_equal(o[i].version, expected_version());
    }
    pthread_barrier_destroy(&go);
    rawdb *db = raw_open(f->path);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM schema_version"), expected_version());
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM stats"), tdb_pg() ? 16 : 1);
    raw_close(db);
}

/* ---- turns ---------------------------------------------------------------- */

static void test_commit_creates_session(void **state)
{
    (void)state;
    store *s = open_mem();
    store_session sess;
    assert_int_equal(store_session_get(s, "s1", &sess), CHAT_ENOTFOUND);

    store_turn t = make_turn("s1", "tok-a", 1000);
    t.owner = "key_1";
    t.system_prompt = "first prompt";
    store_turn_result r1 = commit(s, t);
    assert_int_equal(r1.turn_count, 1);
    assert_int_equal(r1.message_count, 2);
    assert_true(r1.assistant_message_id > r1.user_message_id);

    assert_int_equal(store_session_get(s, "s1", &sess), CHAT_OK);
    assert_string_equal(sess.id, "s1");
    assert_string_equal(sess.owner, "key_1");
    assert_string_equal(sess.system_prompt, "first prompt");
    assert_string_equal(sess.model, "claude-test");
    assert_int_equal(sess.created_at, 1000);
    assert_int_equal(sess.updated_at, 1000);
    assert_int_equal(sess.turn_count, 1);
    assert_int_equal(sess.message_count, 2);
    store_session_clear(&sess);
    assert_null(sess.id);

    /* The commit released the lock: another token takes it at once. */
    assert_int_equal(store_lock_acquire(s, "s1", "tok-b", 1001, 60000), CHAT_OK);
    t = make_turn("s1", "tok-b", 2000);
    t.system_prompt = "second prompt (ignored)";
    t.model = "claude-other";
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_OK); /* res may be NULL */

    assert_int_equal(store_session_get(s, "s1", &sess), CHAT_OK);
    assert_string_equal(sess.system_prompt, "first prompt");
    assert_string_equal(sess.model, "claude-other");
    assert_int_equal(sess.created_at, 1000);
    assert_int_equal(sess.updated_at, 2000);
    assert_int_equal(sess.turn_count, 2);
    assert_int_equal(sess.message_count, 4);
    store_session_clear(&sess);

    /* A NULL system prompt and owner are stored as NULL. */
    t = make_turn("s2", "tok", 3000);
    t.system_prompt = NULL;
    commit(s, t);
    assert_int_equal(store_session_get(s, "s2", &sess), CHAT_OK);
    assert_null(sess.system_prompt);
    assert_null(sess.owner);
    store_session_clear(&sess);
    store_session_clear(NULL);

    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 2);
    assert_int_equal(st.total_turns, 3);
    assert_int_equal(st.total_messages, 6);
    store_close(s);
}

static void test_messages_order(void **state)
{
    (void)state;
    store *s = open_mem();
    int64_t prev_id = 0;
    for (int i = 0; i < 3; i++) {
        char u[32], a[32];
        snprintf(u, sizeof u, "question %d", i);
        snprintf(a, sizeof a, "answer %d", i);
        store_turn t = make_turn("s", "tok", 1000 + i);
        t.user_content = u;
        t.assistant_content = a;
        t.user_tokens = 7 + i;
        t.usage = (store_usage){ 100 + i, 20 + i, 3, 4 };
        t.cost_micros = 55;
        if (i == 2) {
            t.status = "incomplete";
            t.stop_reason = NULL;
        }
        store_turn_result r = commit(s, t);
        assert_true(r.user_message_id > prev_id);
        prev_id = r.assistant_message_id;
        assert_int_equal(r.turn_count, i + 1);
    }
    /* A message in another session interleaves ids but not seqs. */
    commit_simple(s, "other", 5000);

    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "s", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 6);
    for (size_t i = 0; i < n; i++) {
        int turn = (int)i / 2;
        bool user = i % 2 == 0;
        char want[32];
        snprintf(want, sizeof want, user ? "question %d" : "answer %d", turn);
        assert_int_equal(m[i].seq, (int64_t)i + 1);
        if (i > 0)
            assert_true(m[i].id > m[i - 1].id);
        assert_string_equal(m[i].role, user ? "user" : "assistant");
        assert_string_equal(m[i].content, want);
        assert_int_equal(m[i].created_at, 1000 + turn);
        if (user) {
            assert_string_equal(m[i].status, "complete");
            assert_null(m[i].model);
            assert_null(m[i].stop_reason);
            assert_int_equal(m[i].tokens, 7 + turn);
            assert_memory_equal(&m[i].usage, &NO_USAGE, sizeof NO_USAGE);
            assert_int_equal(m[i].cost_micros, 0);
        } else {
            assert_string_equal(m[i].status, turn == 2 ? "incomplete" : "complete");
            assert_string_equal(m[i].model, "claude-test");
            if (turn == 2)
                assert_null(m[i].stop_reason);
            else
                assert_string_equal(m[i].stop_reason, "end_turn");
            assert_int_equal(m[i].tokens, 20 + turn);
            assert_int_equal(m[i].usage.input_tokens, 100 + turn);
            assert_int_equal(m[i].usage.output_tokens, 20 + turn);
            assert_int_equal(m[i].usage.cache_read_tokens, 3);
            assert_int_equal(m[i].usage.cache_write_tokens, 4);
            assert_int_equal(m[i].cost_micros, 55);
        }
    }
    store_messages_free(m, n);

    assert_int_equal(store_messages_list(s, "s", 2, 3, &m, &n), CHAT_OK);
    assert_int_equal(n, 3);
    assert_int_equal(m[0].seq, 3);
    assert_int_equal(m[2].seq, 5);
    store_messages_free(m, n);

    assert_int_equal(store_messages_list(s, "s", 5, 100, &m, &n), CHAT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(m[0].seq, 6);
    store_messages_free(m, n);

    assert_int_equal(store_messages_list(s, "s", 6, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 0);
    store_messages_free(m, n);

    assert_int_equal(store_messages_list(s, "s", -5, -1, &m, &n), CHAT_OK);
    assert_int_equal(n, 6);
    store_messages_free(m, n);
    store_messages_free(NULL, 0);
    store_close(s);
}

static void test_usage_unknown(void **state)
{
    (void)state;
    store *s = open_mem();
    store_turn t = make_turn("u", "tok", 1000);
    t.usage = (store_usage){ 10, -1, 5, -1 };
    t.cost_micros = 100;
    commit(s, t);
    t = make_turn("u", "tok", 2000);
    t.usage = (store_usage){ -1, 7, -1, 3 };
    t.cost_micros = 250;
    commit(s, t);
    t = make_turn("u", "tok", 3000);
    t.usage = NO_USAGE;
    t.user_tokens = -1;
    t.cost_micros = 0;
    commit(s, t);

    store_session sess;
    assert_int_equal(store_session_get(s, "u", &sess), CHAT_OK);
    assert_int_equal(sess.usage.input_tokens, 10);
    assert_int_equal(sess.usage.output_tokens, 7);
    assert_int_equal(sess.usage.cache_read_tokens, 5);
    assert_int_equal(sess.usage.cache_write_tokens, 3);
    assert_int_equal(sess.cost_micros, 350);
    store_session_clear(&sess);

    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.usage.input_tokens, 10);
    assert_int_equal(st.usage.output_tokens, 7);
    assert_int_equal(st.usage.cache_read_tokens, 5);
    assert_int_equal(st.usage.cache_write_tokens, 3);
    assert_int_equal(st.cost_micros, 350);

    /* The messages keep the unknowns as -1. */
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "u", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 6);
    assert_int_equal(m[1].usage.output_tokens, -1);
    assert_int_equal(m[1].tokens, -1);
    assert_int_equal(m[3].usage.input_tokens, -1);
    assert_int_equal(m[4].tokens, -1);
    assert_memory_equal(&m[5].usage, &NO_USAGE, sizeof NO_USAGE);
    store_messages_free(m, n);
    store_close(s);
}

static void test_invalid_args(void **state)
{
    (void)state;
    store *s = open_mem();
    char longid[STORE_ID_MAX + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    char maxid[STORE_ID_MAX + 1];
    memset(maxid, 'y', sizeof maxid - 1);
    maxid[sizeof maxid - 1] = '\0';

    assert_int_equal(store_lock_acquire(s, NULL, "t", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(s, "", "t", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(s, "s", NULL, 1, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(s, "s", "t", 1, 0), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(s, "s", "t", -1, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(s, "s", "t", INT64_MAX - 5, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(s, longid, "t", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_acquire(NULL, "s", "t", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_lock_refresh(s, "s", "t", 1, -3), CHAT_EINVAL);
    assert_int_equal(store_lock_release(s, "s", NULL), CHAT_EINVAL);
    assert_int_equal(store_ping(NULL), CHAT_EINVAL);

    /* The longest valid id works end to end. */
    commit(s, make_turn(maxid, "tok", 1000));

    assert_int_equal(store_lock_acquire(s, "s", "tok", 1000, 60000), CHAT_OK);
    store_turn good = make_turn("s", "tok", 1000);
    store_turn t;
    assert_int_equal(store_turn_commit(s, NULL, NULL), CHAT_EINVAL);
#define BAD(field, value)                                              \
    do {                                                               \
        t = good;                                                      \
        t.field = value;                                               \
        assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_EINVAL); \
    } while (0)
    BAD(session_id, NULL);
    BAD(session_id, longid);
    BAD(lock_token, NULL);
    BAD(owner, "");
    BAD(model, NULL);
    BAD(model, "");
    BAD(user_content, NULL);
    BAD(assistant_content, NULL);
    BAD(status, NULL);
    BAD(status, "done");
    BAD(user_tokens, -2);
    BAD(usage.input_tokens, -2);
    BAD(usage.cache_write_tokens, INT64_MIN);
    BAD(cost_micros, -1);
    BAD(now, -1);
#undef BAD
    /* Nothing was written by the rejected commits, and the lock still holds. */
    store_session sess;
    assert_int_equal(store_session_get(s, "s", &sess), CHAT_ENOTFOUND);
    assert_int_equal(store_lock_acquire(s, "s", "other", 1001, 60000), CHAT_EBUSY);
    /* Empty contents are allowed (a reply cut before its first token). */
    t = good;
    t.assistant_content = "";
    t.status = "incomplete";
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_OK);

    store_session *arr = NULL;
    size_t n = 1;
    char *next = NULL;
    assert_int_equal(store_sessions_list(s, NULL, NULL, 0, &arr, &n, &next), CHAT_EINVAL);
    assert_int_equal(store_sessions_list(s, NULL, NULL, 1001, &arr, &n, &next), CHAT_EINVAL);
    assert_int_equal(store_sessions_list(s, "", NULL, 10, &arr, &n, &next), CHAT_EINVAL);
    assert_int_equal(store_sessions_list(s, NULL, NULL, 10, NULL, &n, &next), CHAT_EINVAL);
    assert_null(arr);
    assert_int_equal(n, 0);
    store_message *msgs = NULL;
    assert_int_equal(store_messages_list(s, NULL, 0, 0, &msgs, &n), CHAT_EINVAL);
    assert_int_equal(store_messages_list(s, "s", 0, 0, NULL, &n), CHAT_EINVAL);
    assert_null(msgs);
    assert_int_equal(store_session_get(s, NULL, &sess), CHAT_EINVAL);
    assert_int_equal(store_session_get(s, "s", NULL), CHAT_EINVAL);
    assert_int_equal(store_session_reset(s, "s", -1, NULL), CHAT_EINVAL);
    assert_int_equal(store_session_delete(s, ""), CHAT_EINVAL);
    assert_int_equal(store_stats_get(s, NULL), CHAT_EINVAL);
    int64_t del = 9;
    assert_int_equal(store_sessions_expire(s, 100, 100, 0, &del), CHAT_EINVAL);
    assert_int_equal(del, 0);
    store_close(s);
    store_close(NULL);
}

/* ---- locks ---------------------------------------------------------------- */

static void test_locks(void **state)
{
    (void)state;
    store *s = open_mem();
    assert_int_equal(store_lock_acquire(s, "s", "t1", 1000, 100), CHAT_OK); /* until 1100 */
    assert_int_equal(store_lock_acquire(s, "s", "t2", 1050, 100), CHAT_EBUSY);
    assert_int_equal(store_lock_acquire(s, "s", "t1", 1050, 100), CHAT_EBUSY); /* same token */
    assert_int_equal(store_lock_acquire(s, "s", "t2", 1099, 100), CHAT_EBUSY);
    /* Other sessions are independent. */
    assert_int_equal(store_lock_acquire(s, "other", "t2", 1050, 100), CHAT_OK);

    /* An expired but untaken lock is still held by its token. */
    assert_int_equal(store_lock_refresh(s, "s", "t1", 1200, 100), CHAT_OK); /* until 1300 */
    assert_int_equal(store_lock_acquire(s, "s", "t2", 1250, 100), CHAT_EBUSY);

    /* Takeover at expiry (expires_at <= now). */
    assert_int_equal(store_lock_acquire(s, "s", "t2", 1300, 100), CHAT_OK); /* until 1400 */
    assert_int_equal(store_lock_refresh(s, "s", "t1", 1300, 100), CHAT_ECONFLICT);
    assert_int_equal(store_lock_release(s, "s", "t1"), CHAT_OK); /* not held: no-op */
    assert_int_equal(store_lock_acquire(s, "s", "t3", 1350, 100), CHAT_EBUSY);

    assert_int_equal(store_lock_refresh(s, "s", "t2", 1390, 100), CHAT_OK); /* until 1490 */
    assert_int_equal(store_lock_acquire(s, "s", "t3", 1450, 100), CHAT_EBUSY);
    assert_int_equal(store_lock_release(s, "s", "t2"), CHAT_OK);
    assert_int_equal(store_lock_acquire(s, "s", "t3", 1451, 100), CHAT_OK);
    assert_int_equal(store_lock_refresh(s, "s", "t2", 1452, 100), CHAT_ECONFLICT);

    assert_int_equal(store_lock_release(s, "never", "x"), CHAT_OK);
    assert_int_equal(store_lock_refresh(s, "never", "x", 1, 1), CHAT_ECONFLICT);
    store_close(s);
}

static void test_commit_conflict(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);

    /* No lock at all: nothing written. */
    store_turn t = make_turn("c", "tok", 1000);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);
    store_session sess;
    assert_int_equal(store_session_get(s, "c", &sess), CHAT_ENOTFOUND);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions + st.total_messages + st.total_turns + st.cost_micros, 0);

    commit(s, make_turn("c", "tok0", 1000));
    store_stats before;
    assert_int_equal(store_stats_get(s, &before), CHAT_OK);

    /* Wrong token while another holds the lock. */
    assert_int_equal(store_lock_acquire(s, "c", "t1", 2000, 100), CHAT_OK);
    t = make_turn("c", "t-wrong", 2010);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);

    /* Stolen: t1 expired, t2 took over; t1's late commit must write nothing. */
    assert_int_equal(store_lock_acquire(s, "c", "t2", 2100, 100), CHAT_OK);
    t = make_turn("c", "t1", 2150);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);

    assert_int_equal(store_session_get(s, "c", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, 1);
    assert_int_equal(sess.message_count, 2);
    assert_int_equal(sess.updated_at, 1000);
    assert_int_equal(sess.cost_micros, 100);
    store_session_clear(&sess);
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_memory_equal(&st, &before, sizeof st);
    rawdb *db = raw_open(f->path);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM messages"), 2);
    raw_close(db);
    /* t1's failed commit left t2's lock in place (live until 2200). */
    assert_int_equal(store_lock_acquire(s, "c", "t3", 2160, 100), CHAT_EBUSY);

    /* The rightful holder commits even after its lock expired, if untaken. */
    t = make_turn("c", "t2", 5000);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_OK);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT); /* lock released */
    assert_counts_match_scan(s, f->path);
    store_close(s);
}

/* ---- reset, delete, counters ---------------------------------------------- */

static void test_reset(void **state)
{
    (void)state;
    store *s = open_mem();
    for (int i = 0; i < 3; i++)
        commit_simple(s, "r", 1000 + i);
    commit_simple(s, "keep", 1500);

    int64_t prev = -1;
    assert_int_equal(store_session_reset(s, "r", 2000, &prev), CHAT_OK);
    assert_int_equal(prev, 3);

    store_session sess;
    assert_int_equal(store_session_get(s, "r", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, 0);
    assert_int_equal(sess.message_count, 0);
    assert_int_equal(sess.updated_at, 2000);
    assert_int_equal(sess.created_at, 1000);
    assert_string_equal(sess.system_prompt, "You are helpful.");
    assert_int_equal(sess.usage.input_tokens, 30); /* totals kept */
    assert_int_equal(sess.cost_micros, 300);
    store_session_clear(&sess);

    store_message *m = NULL;
    size_t n = 9;
    assert_int_equal(store_messages_list(s, "r", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 0);
    store_messages_free(m, n);

    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 2);
    assert_int_equal(st.total_messages, 2);
    assert_int_equal(st.total_turns, 1);
    assert_int_equal(st.usage.input_tokens, 40);
    assert_int_equal(st.cost_micros, 400);

    /* The next turn starts again at seq 1 and keeps the system prompt. */
    store_turn t = make_turn("r", "tok", 3000);
    t.system_prompt = "ignored";
    store_turn_result r = commit(s, t);
    assert_int_equal(r.turn_count, 1);
    assert_int_equal(r.message_count, 2);
    assert_int_equal(store_messages_list(s, "r", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(m[0].seq, 1);
    assert_int_equal(m[1].seq, 2);
    store_messages_free(m, n);
    assert_int_equal(store_session_get(s, "r", &sess), CHAT_OK);
    assert_string_equal(sess.system_prompt, "You are helpful.");
    store_session_clear(&sess);

    assert_int_equal(store_session_reset(s, "r", 4000, NULL), CHAT_OK); /* NULL out is fine */
    assert_int_equal(store_session_reset(s, "missing", 4000, &prev), CHAT_ENOTFOUND);
    store_close(s);
}

static void test_delete(void **state)
{
    (void)state;
    store *s = open_mem();
    commit_simple(s, "d", 1000);
    commit_simple(s, "d", 1001);
    commit_simple(s, "keep", 1002);
    assert_int_equal(store_lock_acquire(s, "d", "live", 1100, 60000), CHAT_OK);

    assert_int_equal(store_session_delete(s, "d"), CHAT_OK);
    store_session sess;
    assert_int_equal(store_session_get(s, "d", &sess), CHAT_ENOTFOUND);
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "d", 0, 0, &m, &n), CHAT_ENOTFOUND);
    assert_null(m);
    /* The lock went with it. */
    assert_int_equal(store_lock_acquire(s, "d", "new", 1101, 60000), CHAT_OK);

    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 1);
    assert_int_equal(st.total_messages, 2);
    assert_int_equal(st.total_turns, 1);
    assert_int_equal(st.cost_micros, 300); /* spend is not refunded */

    assert_int_equal(store_session_delete(s, "d"), CHAT_ENOTFOUND);
    store_close(s);
}

static void test_not_found(void **state)
{
    (void)state;
    store *s = open_mem();
    store_session sess;
    store_message *m = NULL;
    size_t n = 0;
    int64_t prev = 0;
    assert_int_equal(store_session_get(s, "nope", &sess), CHAT_ENOTFOUND);
    assert_null(sess.id);
    assert_int_equal(store_session_delete(s, "nope"), CHAT_ENOTFOUND);
    assert_int_equal(store_session_reset(s, "nope", 1, &prev), CHAT_ENOTFOUND);
    assert_int_equal(store_messages_list(s, "nope", 0, 0, &m, &n), CHAT_ENOTFOUND);
    /* A lock alone does not make a session. */
    assert_int_equal(store_lock_acquire(s, "nope", "t", 1, 100), CHAT_OK);
    assert_int_equal(store_session_get(s, "nope", &sess), CHAT_ENOTFOUND);
    store_close(s);
}

/* Tiny deterministic generator for the mixed-operations test. */
static uint32_t rnd(uint32_t *x)
{
    *x = *x * 1103515245u + 12345u;
    return (*x >> 16) & 0x7fff;
}

static void test_stats_invariant(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    uint32_t seed = 42;
    store_usage spent = { 0, 0, 0, 0 };
    int64_t cost = 0, now = 1000;
    for (int round = 0; round < 20; round++) {
        for (int op = 0; op < 25; op++) {
            char sid[16];
            snprintf(sid, sizeof sid, "m%u", rnd(&seed) % 12);
            uint32_t k = rnd(&seed) % 10;
            now++;
            if (k < 6) {
                store_turn t = make_turn(sid, "tok", now);
                /* Some parts unknown. */
                t.usage.input_tokens = k == 0 ? -1 : (int64_t)(rnd(&seed) % 100);
                t.usage.output_tokens = k == 1 ? -1 : (int64_t)(rnd(&seed) % 100);
                t.usage.cache_read_tokens = k == 2 ? -1 : 1;
                t.usage.cache_write_tokens = k == 3 ? -1 : 2;
                t.cost_micros = rnd(&seed) % 1000;
                commit(s, t);
                spent.input_tokens += t.usage.input_tokens < 0 ? 0 : t.usage.input_tokens;
                spent.output_tokens += t.usage.output_tokens < 0 ? 0 : t.usage.output_tokens;
                spent.cache_read_tokens += t.usage.cache_read_tokens < 0 ? 0 : 1;
                spent.cache_write_tokens += t.usage.cache_write_tokens < 0 ? 0 : 2;
                cost += t.cost_micros;
            } else if (k < 8) {
                chat_rc rc = store_session_reset(s, sid, now, NULL);
                assert_true(rc == CHAT_OK || rc == CHAT_ENOTFOUND);
            } else if (k < 9) {
                chat_rc rc = store_session_delete(s, sid);
                assert_true(rc == CHAT_OK || rc == CHAT_ENOTFOUND);
            } else {
                int64_t del = -1;
                assert_int_equal(store_sessions_expire(s, now - 40, now, 2, &del), CHAT_OK);
                assert_true(del >= 0 && del <= 2);
            }
        }
        assert_counts_match_scan(s, f->path);
        store_stats st;
        assert_int_equal(store_stats_get(s, &st), CHAT_OK);
        assert_memory_equal(&st.usage, &spent, sizeof spent);
        assert_int_equal(st.cost_micros, cost);
    }
    store_close(s);
}

/* ---- listing -------------------------------------------------------------- */

/* Creates a session with a given creation time and owner. */
static void make_session(store *s, const char *sid, const char *owner, int64_t created)
{
    store_turn t = make_turn(sid, "tok", created);
    t.owner = owner;
    commit(s, t);
}

/* Pages through the listing with page size `limit`, writing ids into got. */
static size_t list_all(store *s, const char *owner, int limit, char got[][8], size_t max, size_t *pages)
{
    size_t total = 0;
    char *cursor = NULL;
    *pages = 0;
    do {
        store_session *arr = NULL;
        size_t n = 0;
        char *next = NULL;
        assert_int_equal(store_sessions_list(s, owner, cursor, limit, &arr, &n, &next), CHAT_OK);
        (*pages)++;
        assert_true(n <= (size_t)limit);
        /* A page that announces more is full. */
        if (next)
            assert_int_equal(n, limit);
        for (size_t i = 0; i < n; i++) {
            assert_true(total < max);
            snprintf(got[total++], 8, "%s", arr[i].id);
        }
        store_sessions_free(arr, n);
        free(cursor);
        cursor = next;
    } while (cursor);
    return total;
}

static void test_list_pagination(void **state)
{
    (void)state;
    store *s = open_mem();
    /* Ties on created_at, spanning page boundaries. */
    static const struct {
        const char *id;
        const char *owner;
        int64_t created;
    } rows[] = {
        { "s0", "k1", 100 }, { "s1", "k2", 200 }, { "s2", "k1", 200 }, { "s3", "k2", 200 },
        { "s4", "k1", 300 }, { "s5", NULL, 300 }, { "s6", "k1", 50 },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        make_session(s, rows[i].id, rows[i].owner, rows[i].created);
    static const char *const newest_first[] = { "s5", "s4", "s3", "s2", "s1", "s0", "s6" };

    char got[16][8];
    size_t pages;
    for (int limit = 1; limit <= 8; limit++) {
        size_t n = list_all(s, NULL, limit, got, 16, &pages);
        assert_int_equal(n, 7);
        for (size_t i = 0; i < n; i++)
            assert_string_equal(got[i], newest_first[i]);
        /* No empty trailing page, even when 7 is a multiple of the limit. */
        assert_int_equal(pages, (7 + limit - 1) / limit);
    }

    static const char *const k1[] = { "s4", "s2", "s0", "s6" };
    size_t n = list_all(s, "k1", 3, got, 16, &pages);
    assert_int_equal(n, 4);
    assert_int_equal(pages, 2);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(got[i], k1[i]);
    n = list_all(s, "k2", 1, got, 16, &pages);
    assert_int_equal(n, 2);
    assert_string_equal(got[0], "s3");
    assert_string_equal(got[1], "s1");
    n = list_all(s, "nobody", 5, got, 16, &pages);
    assert_int_equal(n, 0);

    /* The listing carries full sessions. */
    store_session *arr = NULL;
    char *next = NULL;
    assert_int_equal(store_sessions_list(s, NULL, NULL, 1, &arr, &n, &next), CHAT_OK);
    assert_int_equal(n, 1);
    assert_string_equal(arr[0].id, "s5");
    assert_null(arr[0].owner);
    assert_int_equal(arr[0].created_at, 300);
    assert_int_equal(arr[0].turn_count, 1);
    assert_string_equal(arr[0].system_prompt, "You are helpful.");
    assert_non_null(next);
    store_sessions_free(arr, n);
    free(next);
    store_close(s);
}

/* The oldest-first listing (STORE_OP_SESSIONS_LIST_OLDEST, for the template's
 * GET /sessions): the reverse order of the listing above, with its own cursors. */
static size_t list_oldest(store *s, const char *owner, int limit, char got[][8], size_t max)
{
    size_t total = 0;
    char *cursor = NULL;
    do {
        store_op *op = store_op_new(STORE_OP_SESSIONS_LIST_OLDEST);
        op->in.owner = store_op_str(op, owner);
        op->in.cursor = store_op_str(op, cursor);
        op->in.limit = limit;
        assert_int_equal(store_run(s, op), CHAT_OK);
        assert_true(op->out.n_sessions <= (size_t)limit);
        if (op->out.next_cursor)
            assert_int_equal(op->out.n_sessions, limit);
        for (size_t i = 0; i < op->out.n_sessions; i++) {
            assert_true(total < max);
            snprintf(got[total++], 8, "%s", op->out.sessions[i].id);
        }
        free(cursor);
        cursor = op->out.next_cursor;
        op->out.next_cursor = NULL;
        store_op_free(op);
    } while (cursor);
    return total;
}

static void test_list_oldest_first(void **state)
{
    (void)state;
    store *s = open_mem();
    static const struct {
        const char *id;
        const char *owner;
        int64_t created;
    } rows[] = {
        { "s0", "k1", 100 }, { "s1", "k2", 200 }, { "s2", "k1", 200 }, { "s3", "k2", 200 },
        { "s4", "k1", 300 }, { "s5", NULL, 300 }, { "s6", "k1", 50 },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        make_session(s, rows[i].id, rows[i].owner, rows[i].created);
    static const char *const oldest_first[] = { "s6", "s0", "s1", "s2", "s3", "s4", "s5" };
    char got[16][8];
    for (int limit = 1; limit <= 8; limit++) {
        size_t n = list_oldest(s, NULL, limit, got, 16);
        assert_int_equal(n, 7);
        for (size_t i = 0; i < n; i++)
            assert_string_equal(got[i], oldest_first[i]);
    }
    static const char *const k1[] = { "s6", "s0", "s2", "s4" };
    size_t n = list_oldest(s, "k1", 3, got, 16);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(got[i], k1[i]);
    assert_int_equal(list_oldest(s, "nobody", 5, got, 16), 0);

    /* A cursor that is not one gives CHAT_EINVAL. */
    store_op *op = store_op_new(STORE_OP_SESSIONS_LIST_OLDEST);
    op->in.cursor = "not-a-cursor";
    op->in.limit = 5;
    assert_int_equal(store_run(s, op), CHAT_EINVAL);
    store_op_free(op);
    store_close(s);
}

static void test_list_cursor_after_delete(void **state)
{
    (void)state;
    store *s = open_mem();
    make_session(s, "a", NULL, 10);
    make_session(s, "b", NULL, 20);
    make_session(s, "c", NULL, 30);
    store_session *arr = NULL;
    size_t n = 0;
    char *next = NULL;
    assert_int_equal(store_sessions_list(s, NULL, NULL, 1, &arr, &n, &next), CHAT_OK);
    assert_string_equal(arr[0].id, "c");
    store_sessions_free(arr, n);
    assert_non_null(next);
    assert_int_equal(store_session_delete(s, "c"), CHAT_OK);
    assert_int_equal(store_session_delete(s, "b"), CHAT_OK);
    char *cursor = next;
    assert_int_equal(store_sessions_list(s, NULL, cursor, 5, &arr, &n, &next), CHAT_OK);
    free(cursor);
    assert_int_equal(n, 1);
    assert_string_equal(arr[0].id, "a");
    assert_null(next);
    store_sessions_free(arr, n);
    store_sessions_free(NULL, 0);
    store_close(s);
}

static void test_invalid_cursor(void **state)
{
    (void)state;
    store *s = open_mem();
    make_session(s, "s:1", NULL, 100);
    make_session(s, "s:2", NULL, 100);
    static const char *const bad[] = {
        "",
        "abc",
        "12",
        "12:",
        ":733a31",
        "012:733a31",
        "+12:733a31",
        "-12:733a31",
        " 12:733a31",
        "12:733a3",
        "12:733a3g",
        "12:733A31",
        "12:733a31:",
        "12:733a31 ",
        "99999999999999999999:733a31",
        "9223372036854775808:61",
        "12:00",
        "12:6100",
        "12;733a31",
        "0x1:61",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        store_session *arr = (store_session *)1;
        size_t n = 7;
        char *next = (char *)1;
        if (store_sessions_list(s, NULL, bad[i], 10, &arr, &n, &next) != CHAT_EINVAL)
            fail_msg("cursor \"%s\" was accepted", bad[i]);
        assert_null(arr);
        assert_int_equal(n, 0);
        assert_null(next);
    }
    /* An over-long id is rejected too. */
    char longc[2 * STORE_ID_MAX + 16];
    int off = snprintf(longc, sizeof longc, "1:");
    for (int i = 0; i < STORE_ID_MAX + 1; i++)
        off += snprintf(longc + off, sizeof longc - (size_t)off, "61");
    store_session *arr = NULL;
    size_t n = 0;
    char *next = NULL;
    assert_int_equal(store_sessions_list(s, NULL, longc, 10, &arr, &n, &next), CHAT_EINVAL);

    /* Well-formed cursors that match no row are fine: "0:61" is before everything,
     * the maximum time is after everything. */
    assert_int_equal(store_sessions_list(s, NULL, "0:61", 10, &arr, &n, &next), CHAT_OK);
    assert_int_equal(n, 0);
    store_sessions_free(arr, n);
    assert_int_equal(store_sessions_list(s, NULL, "9223372036854775807:61", 10, &arr, &n, &next), CHAT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(arr[0].id, "s:2");
    store_sessions_free(arr, n);
    /* Ids with the separator character round-trip through the cursor. */
    assert_int_equal(store_sessions_list(s, NULL, NULL, 1, &arr, &n, &next), CHAT_OK);
    store_sessions_free(arr, n);
    assert_non_null(next);
    char *cursor = next;
    assert_int_equal(store_sessions_list(s, NULL, cursor, 1, &arr, &n, &next), CHAT_OK);
    free(cursor);
    assert_int_equal(n, 1);
    assert_string_equal(arr[0].id, "s:1");
    assert_null(next);
    store_sessions_free(arr, n);
    store_close(s);
}

/* ---- retention ------------------------------------------------------------ */

static void test_expire(void **state)
{
    (void)state;
    store *s = open_mem();
    commit_simple(s, "e100", 100);
    commit_simple(s, "e200", 200);
    commit_simple(s, "e300", 300);
    commit_simple(s, "e400", 400);
    commit_simple(s, "e400b", 400);
    /* e200 has a turn in progress. */
    assert_int_equal(store_lock_acquire(s, "e200", "busy", 1000, 500), CHAT_OK); /* until 1500 */

    int64_t del = -1;
    assert_int_equal(store_sessions_expire(s, 400, 1000, 100, &del), CHAT_OK);
    assert_int_equal(del, 2);
    store_session sess;
    assert_int_equal(store_session_get(s, "e100", &sess), CHAT_ENOTFOUND);
    assert_int_equal(store_session_get(s, "e300", &sess), CHAT_ENOTFOUND);
    assert_int_equal(store_session_get(s, "e200", &sess), CHAT_OK);
    store_session_clear(&sess);
    assert_int_equal(store_session_get(s, "e400", &sess), CHAT_OK); /* not < 400 */
    store_session_clear(&sess);

    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 3);
    assert_int_equal(st.total_messages, 6);
    assert_int_equal(st.total_turns, 3);

    /* Once the lock has expired, the idle session goes, and the stale lock too. */
    assert_int_equal(store_sessions_expire(s, 400, 1500, 100, &del), CHAT_OK);
    assert_int_equal(del, 1);
    assert_int_equal(store_session_get(s, "e200", &sess), CHAT_ENOTFOUND);

    /* limit caps one sweep. */
    assert_int_equal(store_sessions_expire(s, 1000, 1600, 1, &del), CHAT_OK);
    assert_int_equal(del, 1);
    assert_int_equal(store_sessions_expire(s, 1000, 1600, 1, &del), CHAT_OK);
    assert_int_equal(del, 1);
    assert_int_equal(store_sessions_expire(s, 1000, 1600, 1, NULL), CHAT_OK);
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 0);
    assert_int_equal(st.total_messages, 0);
    assert_int_equal(st.total_turns, 0);

    /* Expired locks without a session are swept; live ones stay. */
    assert_int_equal(store_lock_acquire(s, "ghost", "dead", 2000, 100), CHAT_OK);  /* until 2100 */
    assert_int_equal(store_lock_acquire(s, "ghost2", "live", 2000, 900), CHAT_OK); /* until 2900 */
    assert_int_equal(store_lock_refresh(s, "ghost", "dead", 2050, 100), CHAT_OK);  /* until 2150 */
    assert_int_equal(store_sessions_expire(s, 0, 2200, 10, &del), CHAT_OK);
    assert_int_equal(del, 0);
    assert_int_equal(store_lock_refresh(s, "ghost", "dead", 2200, 100), CHAT_ECONFLICT);
    assert_int_equal(store_lock_refresh(s, "ghost2", "live", 2200, 100), CHAT_OK);
    store_close(s);
}

/* ---- durability and several handles -------------------------------------- */

static void test_reopen(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn t = make_turn("p", "tok", 1000);
    t.owner = "key";
    commit(s, t);
    commit_simple(s, "p", 2000);
    assert_int_equal(store_lock_acquire(s, "p", "held", 3000, 60000), CHAT_OK);
    store_close(s);

    s = open_url(f->url);
    store_session sess;
    assert_int_equal(store_session_get(s, "p", &sess), CHAT_OK);
    assert_string_equal(sess.owner, "key");
    assert_int_equal(sess.turn_count, 2);
    assert_int_equal(sess.cost_micros, 200);
    store_session_clear(&sess);
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "p", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 4);
    assert_string_equal(m[3].content, "hi there");
    int64_t last_id = m[3].id;
    store_messages_free(m, n);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 1);
    assert_int_equal(st.total_messages, 4);
    assert_int_equal(st.total_turns, 2);
    /* SQLite's turn locks live in the process that holds the file open
     * (turn_locks.h): once every handle closed, as after a restart, none is
     * left. PostgreSQL's are rows, shared by every server: it survived. */
    assert_int_equal(store_lock_acquire(s, "p", "other", 3001, 1000), tdb_pg() ? CHAT_EBUSY : CHAT_OK);

    /* Message ids are never reused, even after the newest rows are deleted. */
    assert_int_equal(store_session_delete(s, "p"), CHAT_OK);
    store_turn_result r = commit_simple(s, "q", 4000);
    assert_true(r.user_message_id > last_id);
    store_close(s);
}

static void test_two_handles(void **state)
{
    struct fixture *f = *state;
    store *w1 = open_url(f->url);
    store *w2 = open_url(f->url);

    assert_int_equal(store_lock_acquire(w1, "x", "t1", 1000, 60000), CHAT_OK);
    assert_int_equal(store_lock_acquire(w2, "x", "t2", 1001, 60000), CHAT_EBUSY);
    store_turn t = make_turn("x", "t2", 1002);
    assert_int_equal(store_turn_commit(w2, &t, NULL), CHAT_ECONFLICT);
    t = make_turn("x", "t1", 1003);
    assert_int_equal(store_turn_commit(w1, &t, NULL), CHAT_OK);

    /* w2 sees w1's commit and can now take the lock. */
    store_session sess;
    assert_int_equal(store_session_get(w2, "x", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, 1);
    store_session_clear(&sess);
    assert_int_equal(store_lock_acquire(w2, "x", "t2", 1004, 60000), CHAT_OK);
    t = make_turn("x", "t2", 1005);
    assert_int_equal(store_turn_commit(w2, &t, NULL), CHAT_OK);
    store_stats st;
    assert_int_equal(store_stats_get(w1, &st), CHAT_OK);
    assert_int_equal(st.total_turns, 2);
    store_close(w1);
    store_close(w2);
}

struct worker {
    const char *url;
    int id;
    int turns; /* turns to commit */
    pthread_barrier_t *go;
    int busy;   /* EBUSY answers seen */
    int errors; /* anything unexpected */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One worker: its own handle, contending with the others for one session. */
static void *worker_thread(void *arg)
{
    struct worker *w = arg;
    store *s = NULL;
    char err[256];
    pthread_barrier_wait(w->go);
    if (store_open(w->url, &s, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "worker %d: %s\n", w->id, err);
        w->errors++;
        return NULL;
    }
    char token[32], content[64];
    for (int done = 0; done < w->turns && w->errors == 0;) {
        snprintf(token, sizeof token, "w%d-%d", w->id, done);
        chat_rc rc = store_lock_acquire(s, "shared", token, now_ms(), 60000);
        if (rc == CHAT_EBUSY) {
            w->busy++;
            struct timespec ts = { 0, 200000 };
            nanosleep(&ts, NULL);
            continue;
        }
        if (rc != CHAT_OK) {
            w->errors++;
            break;
        }
        snprintf(content, sizeof content, "worker %d turn %d", w->id, done);
        store_turn t = make_turn("shared", token, now_ms());
        t.user_content = content;
        if (store_turn_commit(s, &t, NULL) != CHAT_OK)
            w->errors++;
        /* Also a private session, written concurrently with the shared one. */
        char own[16];
        snprintf(own, sizeof own, "own%d", w->id);
        if (store_lock_acquire(s, own, token, now_ms(), 60000) != CHAT_OK)
            w->errors++;
        t = make_turn(own, token, now_ms());
        if (store_turn_commit(s, &t, NULL) != CHAT_OK)
            w->errors++;
        done++;
    }
    store_close(s);
    return NULL;
}

static void test_workers_contend(void **state)
{
    struct fixture *f = *state;
    enum { N = 4, TURNS = 25 };
    store *s = open_url(f->url); /* migrate up front; workers open concurrently anyway */
    pthread_t th[N];
    struct worker w[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    for (int i = 0; i < N; i++) {
        w[i] = (struct worker){ .url = f->url, .id = i, .turns = TURNS, .go = &go };
        assert_int_equal(pthread_create(&th[i], NULL, worker_thread, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].errors, 0);
    }
    pthread_barrier_destroy(&go);

    store_session sess;
    assert_int_equal(store_session_get(s, "shared", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, N * TURNS);
    store_session_clear(&sess);
    /* seqs are gapless, and each turn's two messages are adjacent. */
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "shared", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 2 * N * TURNS);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(m[i].seq, (int64_t)i + 1);
        assert_string_equal(m[i].role, i % 2 ? "assistant" : "user");
    }
    store_messages_free(m, n);
    assert_counts_match_scan(s, f->path);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, N + 1);
    assert_int_equal(st.total_turns, 2 * N * TURNS);
    store_close(s);
}

/* chatd import: a session and its messages go in verbatim, counted once. */
static void test_import(void **state)
{
    (void)state;
    store *s = open_mem();
    commit_simple(s, "live", 500);
    store_message msgs[2] = {
        { .seq = 1,
          .role = "user",
          .content = "q \"1\"\n\u00e9",
          .status = "complete",
          .tokens = 4,
          .usage = { -1, -1, -1, -1 },
          .created_at = 10 },
        { .seq = 2,
          .role = "assistant",
          .content = "a",
          .status = "incomplete",
          .model = "m",
          .stop_reason = NULL,
          .tokens = -1,
          .usage = { 7, -1, 2, 3 },
          .cost_micros = 9,
          .created_at = 20 },
    };
    store_session sess = { .id = "imp",
                           .owner = "key_x",
                           .system_prompt = "sp",
                           .model = "m",
                           .created_at = 10,
                           .updated_at = 20,
                           .turn_count = 1,
                           .message_count = 2,
                           .usage = { 7, -1, 2, 3 },
                           .cost_micros = 9 };
    assert_int_equal(store_session_import(s, &sess, msgs, 2), CHAT_OK);
    assert_int_equal(store_session_import(s, &sess, msgs, 2), CHAT_ECONFLICT);
    sess.id = "bad";
    assert_int_equal(store_session_import(s, &sess, msgs, 1), CHAT_EINVAL); /* count differs */
    msgs[1].status = "nope";
    assert_int_equal(store_session_import(s, &sess, msgs, 2), CHAT_EINVAL);
    msgs[1].status = "incomplete";

    store_session got;
    assert_int_equal(store_session_get(s, "imp", &got), CHAT_OK);
    assert_string_equal(got.owner, "key_x");
    assert_int_equal(got.updated_at, 20);
    assert_int_equal(got.usage.output_tokens, 0); /* unknown counts as 0 */
    assert_int_equal(got.usage.cache_write_tokens, 3);
    store_session_clear(&got);
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "imp", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(m[0].content, "q \"1\"\n\u00e9");
    assert_null(m[0].model);
    assert_int_equal(m[0].tokens, 4);
    assert_true(m[1].id > m[0].id);
    assert_string_equal(m[1].status, "incomplete");
    assert_null(m[1].stop_reason);
    assert_int_equal(m[1].usage.input_tokens, 7);
    assert_int_equal(m[1].usage.output_tokens, -1);
    assert_int_equal(m[1].cost_micros, 9);
    assert_int_equal(m[1].created_at, 20);
    store_messages_free(m, n);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 2);
    assert_int_equal(st.total_messages, 4);
    assert_int_equal(st.total_turns, 2);
    assert_int_equal(st.cost_micros, 109);

    store_key k = { .id = "key_x",
                    .name = "x",
                    .role = "admin",
                    .created_at = 5,
                    .revoked_at = 6,
                    .turn_count = 3,
                    .usage = { 1, 2, -1, 4 },
                    .cost_micros = 8,
                    .hash = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" };
    assert_int_equal(store_key_import(s, &k), CHAT_OK);
    assert_int_equal(store_key_import(s, &k), CHAT_ECONFLICT);
    store_key *keys = NULL;
    assert_int_equal(store_keys_list(s, &keys, &n), CHAT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(keys[0].revoked_at, 6);
    assert_int_equal(keys[0].last_used_at, 0);
    assert_int_equal(keys[0].usage.cache_read_tokens, 0);
    assert_int_equal(keys[0].cost_micros, 8);
    store_keys_free(keys, n);
    store_close(s);
}

/* One mixer: its own handle, turns, resets, deletes and sweeps on a few shared
 * sessions, at the same time as the others. */
struct mixer {
    const char *url;
    int id;
    pthread_barrier_t *go;
    int errors;  /* an answer the contract does not allow (e.g. CHAT_EIO from a deadlock) */
    int commits; /* turns committed */
};

static void *mixer_thread(void *arg)
{
    struct mixer *m = arg;
    store *s = NULL;
    char err[256];
    if (store_open(m->url, &s, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "mixer %d: %s\n", m->id, err);
        m->errors++;
        pthread_barrier_wait(m->go);
        return NULL;
    }
    pthread_barrier_wait(m->go);
    uint32_t seed = 7u + (uint32_t)m->id;
    for (int i = 0; i < 150; i++) {
        char sid[8], token[32];
        snprintf(sid, sizeof sid, "c%u", rnd(&seed) % 5);
        snprintf(token, sizeof token, "m%d-%d", m->id, i);
        uint32_t k = rnd(&seed) % 10;
        chat_rc rc;
        if (k < 6) {
            rc = store_lock_acquire(s, sid, token, now_ms(), 60000);
            if (rc == CHAT_EBUSY)
                continue;
            if (rc != CHAT_OK) {
                m->errors++;
                continue;
            }
            store_turn t = make_turn(sid, token, now_ms());
            t.owner = k % 2 ? "key_a" : "key_b";
            rc = store_turn_commit(s, &t, NULL);
            /* A delete or reset meanwhile may have taken the lock with the session. */
            if (rc == CHAT_OK)
                m->commits++;
            else if (rc == CHAT_ECONFLICT)
                rc = store_lock_release(s, sid, token);
            else
                m->errors++;
        } else if (k < 7) {
            rc = store_session_reset(s, sid, now_ms(), NULL);
            m->errors += rc != CHAT_OK && rc != CHAT_ENOTFOUND;
        } else if (k < 8) {
            rc = store_session_delete(s, sid);
            m->errors += rc != CHAT_OK && rc != CHAT_ENOTFOUND;
        } else {
            int64_t del = 0;
            rc = store_sessions_expire(s, now_ms() + 1, now_ms(), 3, &del);
            m->errors += rc != CHAT_OK;
        }
    }
    store_close(s);
    return NULL;
}

/* Every kind of write at once from several handles: no deadlock or error, and
 * the counters (global, per session, per key) still equal a scan. */
static void test_mixed_concurrent(void **state)
{
    struct fixture *f = *state;
    enum { N = 6 };
    store *s = open_url(f->url);
    static const store_key_new keys[] = {
        { "key_a", "a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "user", NULL, 1 },
        { "key_b", "b", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "user", NULL, 1 },
    };
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(store_key_create(s, &keys[i]), CHAT_OK);
    pthread_t th[N];
    struct mixer m[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    for (int i = 0; i < N; i++) {
        m[i] = (struct mixer){ .url = f->url, .id = i, .go = &go };
        assert_int_equal(pthread_create(&th[i], NULL, mixer_thread, &m[i]), 0);
    }
    int commits = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(m[i].errors, 0);
        commits += m[i].commits;
    }
    pthread_barrier_destroy(&go);
    assert_true(commits > 0);
    assert_counts_match_scan(s, f->path);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.cost_micros, 100 * (int64_t)commits); /* never refunded */
    rawdb *db = raw_open(f->path);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM api_keys k WHERE session_count != "
                                "(SELECT COUNT(*) FROM sessions s WHERE s.owner = k.id)"),
                     0);
    assert_int_equal(scalar(db, "SELECT SUM(turn_count) FROM api_keys"), commits);
    raw_close(db);
    store_close(s);
}

/* ---- store_submit: one contract on both backends ---------------------------- */

struct submitted {
    int done; /* callbacks run so far */
    chat_rc rc[3];
    int order[3]; /* which op completed n-th */
};

static void on_submitted(store_op *op, void *ud)
{
    struct submitted *r = ud;
    int which = (int)op->in.limit; /* the op's index, carried in an input it does not read */
    if (op->kind == STORE_OP_SESSIONS_LIST)
        which = 2;
    r->rc[which] = op->rc;
    r->order[r->done++] = which;
}

/* Every callback runs on a later loop turn, never inside store_submit, in
 * submission order; ops with invalid arguments are refused (CHAT_EINVAL) the
 * same way, before a backend sees them. */
static void test_submit_completes_on_a_later_turn(void **state)
{
    (void)state;
    store *s = open_mem();
    struct event_base *base = event_base_new();
    assert_int_equal(store_attach(s, base, 1, 5000), CHAT_OK);
    struct submitted r = { 0 };
    store_op *ping = store_op_new(STORE_OP_PING);
    ping->in.limit = 0;
    store_submit(s, ping, on_submitted, &r);
    store_op *bad = store_op_new(STORE_OP_SESSION_GET); /* no session id */
    bad->in.limit = 1;
    store_submit(s, bad, on_submitted, &r);
    store_op *badlist = store_op_new(STORE_OP_SESSIONS_LIST); /* limit 0 */
    store_submit(s, badlist, on_submitted, &r);
    assert_int_equal(r.done, 0); /* nothing completed inside store_submit */
    assert_int_equal(store_pending(s), 3);
    for (int i = 0; i < 500 && r.done < 3; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(r.done, 3);
    assert_int_equal(r.rc[0], CHAT_OK);
    assert_int_equal(r.rc[1], CHAT_EINVAL);
    assert_int_equal(r.rc[2], CHAT_EINVAL);
    if (!tdb_pg()) { /* SQLite completes in submission order; a pool may not */
        assert_int_equal(r.order[0], 0);
        assert_int_equal(r.order[1], 1);
        assert_int_equal(r.order[2], 2);
    }
    assert_int_equal(store_pending(s), 0);
    /* Detached, ops complete at once (no loop to wait for). */
    store_detach(s);
    struct submitted after = { 0 };
    store_op *late = store_op_new(STORE_OP_SESSION_GET);
    late->in.limit = 1;
    store_submit(s, late, on_submitted, &after);
    assert_int_equal(after.done, 1);
    assert_int_equal(after.rc[1], CHAT_EINVAL);
    store_close(s);
    event_base_free(base);
}

/* ---- the history tail (both backends) ---------------------------------------- */

static void commit_tokens(store *s, const char *sid, int i, int64_t user_tokens, int64_t reply_tokens)
{
    char user[32], reply[32];
    snprintf(user, sizeof user, "u%d", i);
    snprintf(reply, sizeof reply, "a%d", i);
    store_turn t = {
        .session_id = sid,
        .model = "claude-test",
        .user_content = user,
        .assistant_content = reply,
        .status = "complete",
        .user_tokens = user_tokens,
        .usage = { 10, reply_tokens, 0, 0 },
        .lock_token = "tok",
        .now = 1000 + i,
    };
    assert_int_equal(store_lock_acquire(s, sid, "tok", t.now, 60000), CHAT_OK);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_OK);
}

static store_op *tail(store *s, const char *sid, int64_t budget)
{
    store_op *op = store_op_new(STORE_OP_MESSAGES_LIST);
    op->in.session_id = sid;
    op->in.tail_tokens = budget;
    assert_int_equal(store_run(s, op), CHAT_OK);
    return op;
}

static void test_history_tail_within_budget(void **state)
{
    (void)state;
    store *s = open_mem();
    for (int i = 0; i < 50; i++)
        commit_tokens(s, "long", i, 100, 100); /* 100 messages of 100 tokens */

    /* 1000 tokens: the newest 11 messages (their sum, 1100, is the first
     * past the budget), oldest first, 89 left out. */
    store_op *op = tail(s, "long", 1000);
    assert_int_equal(op->out.n_messages, 11);
    assert_int_equal(op->out.count, 89);
    for (size_t i = 0; i < op->out.n_messages; i++)
        assert_int_equal(op->out.messages[i].seq, 90 + (int64_t)i);
    assert_string_equal(op->out.messages[0].role, "assistant");
    assert_string_equal(op->out.messages[10].content, "a49");
    store_op_free(op);

    /* A budget beyond the session: all of it, nothing left out. */
    op = tail(s, "long", 1000000);
    assert_int_equal(op->out.n_messages, 100);
    assert_int_equal(op->out.count, 0);
    assert_int_equal(op->out.messages[0].seq, 1);
    store_op_free(op);

    /* Unknown counts add nothing: a session of unknown sizes is read whole. */
    for (int i = 0; i < 5; i++)
        commit_tokens(s, "unknown", i, -1, -1);
    op = tail(s, "unknown", 1);
    assert_int_equal(op->out.n_messages, 10);
    assert_int_equal(op->out.count, 0);
    store_op_free(op);

    /* A missing session is CHAT_ENOTFOUND, as for the whole list. */
    op = store_op_new(STORE_OP_MESSAGES_LIST);
    op->in.session_id = "nope";
    op->in.tail_tokens = 10;
    assert_int_equal(store_run(s, op), CHAT_ENOTFOUND);
    store_op_free(op);
    store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_bad_urls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_migrate_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_relative_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_concurrent, setup, teardown),
        cmocka_unit_test(test_commit_creates_session),
        cmocka_unit_test(test_messages_order),
        cmocka_unit_test(test_usage_unknown),
        cmocka_unit_test(test_invalid_args),
        cmocka_unit_test(test_submit_completes_on_a_later_turn),
        cmocka_unit_test(test_locks),
        cmocka_unit_test_setup_teardown(test_commit_conflict, setup, teardown),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test_setup_teardown(test_stats_invariant, setup, teardown),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_list_oldest_first),
        cmocka_unit_test(test_list_cursor_after_delete),
        cmocka_unit_test(test_invalid_cursor),
        cmocka_unit_test(test_expire),
        cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_workers_contend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_concurrent, setup, teardown),
        cmocka_unit_test(test_import),
        cmocka_unit_test(test_history_tail_within_budget),
    };
    /* About SQLite itself: file paths relative to the working directory. */
    static const char *const sqlite_only[] = { "test_open_relative_path", NULL };
    return tdb_run_tests("store", tests, sizeof tests / sizeof tests[0], sqlite_only);
}
