/*
 * test_store_keys.c: the store's idempotency records and API keys (schema 002)
 * against the contract of store/store.h, and migration 002 on top of an
 * existing version-1 database.
 *
 * As in test_store.c: SQLite by default, PostgreSQL when CHATD_TEST_PG_URL is
 * set (store_testdb.h); a fresh temporary directory per file-database test; and
 * a raw connection where the contract promises something about the stored
 * rows (nothing written on a conflict, a sweep deletes what it says).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/assets.h"
#include "store/store.h"
#include "store_testdb.h"

static int setup(void **state)
{
    return tdb_setup(state, "chatd_test_store_keys_", "/chat.db", true);
}

static int teardown(void **state)
{
    return tdb_teardown(state);
}

#define open_url tdb_open_url
#define open_mem tdb_open_mem

/* SQLite-only tests (migrations of SQLite files) use raw sqlite3 connections. */
#define lite_scalar tdb_lite_scalar

static sqlite3 *lite_open(const char *path, int flags)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, flags, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

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

/* A turn that completes idempotency record ("", key), owned by token. */
static store_turn idem_turn(const char *sid, const char *token, const char *key, int64_t now)
{
    store_turn t = make_turn(sid, token, now);
    t.idem_scope = "";
    t.idem_key = key;
    t.idem_ttl_ms = 86400000;
    return t;
}

static void lock_and_commit(store *s, store_turn t, store_turn_result *r)
{
    assert_int_equal(store_lock_acquire(s, t.session_id, t.lock_token, t.now, 60000), CHAT_OK);
    assert_int_equal(store_turn_commit(s, &t, r), CHAT_OK);
}

/* store_idem_begin that must succeed; returns the outcome and leaves *out filled. */
static store_idem_outcome begin(store *s, const char *scope, const char *key, const char *hash, const char *token,
                                const char *sid, int64_t now, int64_t lease, store_idem *out)
{
    assert_int_equal(store_idem_begin(s, scope, key, hash, token, sid, now, lease, out), CHAT_OK);
    return out->outcome;
}

/* Only the outcome matters. */
static store_idem_outcome outcome(store *s, const char *key, const char *hash, const char *token, int64_t now)
{
    store_idem r;
    store_idem_outcome o = begin(s, "", key, hash, token, "sx", now, 1000, &r);
    store_idem_clear(&r);
    return o;
}

/* ---- idempotency ---------------------------------------------------------- */

static void test_idem_state_machine(void **state)
{
    (void)state;
    store *s = open_mem();
    store_idem r;

    /* New: a running record for t1, leased until now + lease. */
    assert_int_equal(begin(s, "", "k1", "h1", "t1", "s1", 1000, 500, &r), STORE_IDEM_NEW);
    assert_string_equal(r.session_id, "s1");
    assert_int_equal(r.created_at, 1000);
    assert_int_equal(r.expires_at, 1500);
    assert_false(r.has_reply);
    assert_null(r.response);
    store_idem_clear(&r);
    assert_null(r.session_id);

    /* Same body while running: busy; another body: mismatch (checked first). */
    assert_int_equal(begin(s, "", "k1", "h1", "t2", "s1", 1100, 500, &r), STORE_IDEM_RUNNING);
    assert_string_equal(r.session_id, "s1");
    assert_int_equal(r.created_at, 1000);
    assert_int_equal(r.expires_at, 1500); /* the lease was not extended by the retry */
    store_idem_clear(&r);
    assert_int_equal(outcome(s, "k1", "h2", "t2", 1100), STORE_IDEM_MISMATCH);
    assert_int_equal(outcome(s, "k1", "h1", "t2", 1499), STORE_IDEM_RUNNING);

    /* The turn commits and completes the record in the same transaction. */
    store_turn_result res;
    store_turn t = idem_turn("s1", "t1", "k1", 1200);
    t.assistant_content = "the answer";
    t.usage = (store_usage){ 11, 22, -1, 4 };
    t.cost_micros = 777;
    lock_and_commit(s, t, &res);

    assert_int_equal(begin(s, "", "k1", "h1", "t3", "s1", 1300, 500, &r), STORE_IDEM_REPLAY);
    assert_int_equal(r.status, 200);
    assert_null(r.response);
    assert_true(r.has_reply);
    assert_string_equal(r.session_id, "s1");
    assert_int_equal(r.created_at, 1000);
    assert_int_equal(r.expires_at, 1200 + 86400000);
    assert_int_equal(r.turn_count, 1);
    assert_int_equal(r.reply.id, res.assistant_message_id);
    assert_int_equal(r.reply.seq, 2);
    assert_string_equal(r.reply.role, "assistant");
    assert_string_equal(r.reply.content, "the answer");
    assert_string_equal(r.reply.status, "complete");
    assert_string_equal(r.reply.model, "claude-test");
    assert_string_equal(r.reply.stop_reason, "end_turn");
    assert_int_equal(r.reply.tokens, 22);
    assert_int_equal(r.reply.usage.input_tokens, 11);
    assert_int_equal(r.reply.usage.output_tokens, 22);
    assert_int_equal(r.reply.usage.cache_read_tokens, -1);
    assert_int_equal(r.reply.usage.cache_write_tokens, 4);
    assert_int_equal(r.reply.cost_micros, 777);
    assert_int_equal(r.reply.created_at, 1200);
    store_idem_clear(&r);

    /* The replay equals the stored message, field for field. */
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "s1", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(begin(s, "", "k1", "h1", "t3", NULL, 1300, 500, &r), STORE_IDEM_REPLAY);
    assert_int_equal(m[1].id, r.reply.id);
    assert_string_equal(m[1].content, r.reply.content);
    assert_memory_equal(&m[1].usage, &r.reply.usage, sizeof m[1].usage);
    store_idem_clear(&r);
    store_messages_free(m, n);

    /* A different body on a done record: mismatch. A later turn on the session
     * does not change what the key replays. */
    assert_int_equal(outcome(s, "k1", "h2", "t3", 1300), STORE_IDEM_MISMATCH);
    lock_and_commit(s, make_turn("s1", "t4", 1400), NULL);
    assert_int_equal(begin(s, "", "k1", "h1", "t5", NULL, 1500, 500, &r), STORE_IDEM_REPLAY);
    assert_int_equal(r.turn_count, 1);
    assert_string_equal(r.reply.content, "the answer");
    store_idem_clear(&r);

    /* The replay survives a reset and a delete of the session. */
    assert_int_equal(store_session_reset(s, "s1", 1600, NULL), CHAT_OK);
    assert_int_equal(outcome(s, "k1", "h1", "t5", 1700), STORE_IDEM_REPLAY);
    assert_int_equal(store_session_delete(s, "s1"), CHAT_OK);
    assert_int_equal(begin(s, "", "k1", "h1", "t5", NULL, 1800, 500, &r), STORE_IDEM_REPLAY);
    assert_string_equal(r.reply.content, "the answer");
    store_idem_clear(&r);

    /* Once the replay TTL is over, the key starts afresh (even with another body). */
    assert_int_equal(outcome(s, "k1", "h1", "t6", 1200 + 86400000 - 1), STORE_IDEM_REPLAY);
    assert_int_equal(begin(s, "", "k1", "h9", "t6", "s9", 1200 + 86400000, 500, &r), STORE_IDEM_NEW);
    assert_string_equal(r.session_id, "s9");
    store_idem_clear(&r);
    store_idem_clear(NULL);
    store_close(s);
}

static void test_idem_scopes(void **state)
{
    (void)state;
    store *s = open_mem();
    store_idem r;
    assert_int_equal(begin(s, "", "k", "h", "t1", NULL, 1000, 500, &r), STORE_IDEM_NEW);
    assert_null(r.session_id);
    store_idem_clear(&r);
    /* The same key under other API keys is another record. */
    assert_int_equal(begin(s, "key_a", "k", "other", "t2", NULL, 1000, 500, &r), STORE_IDEM_NEW);
    store_idem_clear(&r);
    assert_int_equal(begin(s, "key_b", "k", "h", "t3", NULL, 1000, 500, &r), STORE_IDEM_NEW);
    store_idem_clear(&r);
    assert_int_equal(begin(s, "key_a", "k", "other", "t4", NULL, 1001, 500, &r), STORE_IDEM_RUNNING);
    store_idem_clear(&r);

    /* A commit completes only its own scope's record. */
    store_turn t = idem_turn("s", "t2", "k", 1100);
    t.idem_scope = "key_a";
    lock_and_commit(s, t, NULL);
    assert_int_equal(begin(s, "key_a", "k", "other", "t5", NULL, 1200, 500, &r), STORE_IDEM_REPLAY);
    store_idem_clear(&r);
    assert_int_equal(begin(s, "", "k", "h", "t5", NULL, 1200, 500, &r), STORE_IDEM_RUNNING);
    store_idem_clear(&r);
    assert_int_equal(begin(s, "key_b", "k", "h", "t5", NULL, 1200, 500, &r), STORE_IDEM_RUNNING);
    store_idem_clear(&r);
    store_close(s);
}

/* A running record left by a dead request stops blocking when its lease ends,
 * and the dead request's late commit cannot complete the retry's record. */
static void test_idem_lease(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_idem r;
    assert_int_equal(begin(s, "", "k", "h", "t1", "s", 1000, 100, &r), STORE_IDEM_NEW);
    store_idem_clear(&r);
    assert_int_equal(store_lock_acquire(s, "s", "t1", 1000, 100), CHAT_OK);
    assert_int_equal(store_idem_refresh(s, "", "k", "t1", 1050, 100), CHAT_OK); /* until 1150 */
    assert_int_equal(outcome(s, "k", "h", "t2", 1149), STORE_IDEM_RUNNING);
    assert_int_equal(store_idem_refresh(s, "", "k", "t2", 1149, 100), CHAT_ECONFLICT);

    /* Lease over: t2 takes the key. */
    assert_int_equal(begin(s, "", "k", "h", "t2", "s", 1150, 100, &r), STORE_IDEM_NEW);
    assert_int_equal(r.expires_at, 1250);
    store_idem_clear(&r);

    /* t1 still holds the session lock (nobody took it), but no longer the key:
     * its commit writes nothing, and its refresh, finish and abort fail or do nothing. */
    store_turn t = idem_turn("s", "t1", "k", 1160);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);
    assert_int_equal(store_idem_refresh(s, "", "k", "t1", 1160, 100), CHAT_ECONFLICT);
    assert_int_equal(store_idem_finish(s, "", "k", "t1", 400, "{}", 1160, 1000), CHAT_ECONFLICT);
    assert_int_equal(store_idem_abort(s, "", "k", "t1"), CHAT_OK);
    assert_int_equal(outcome(s, "k", "h", "t3", 1170), STORE_IDEM_RUNNING); /* t2's record stayed */
    rawdb *db = raw_open_db(f->path, false);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM sessions"), 0);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM messages"), 0);
    assert_int_equal(scalar(db, "SELECT SUM(total_turns + total_messages + cost_micros) FROM stats"), 0);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM idempotency WHERE token = 't2' AND state = 'running'"), 1);
    raw_close(db);
    /* The failed commit left t1's session lock in place. */
    assert_int_equal(store_lock_release(s, "s", "t1"), CHAT_OK);

    /* t2's lease expires too, but nobody took over: t2 still owns the record and commits. */
    t = idem_turn("s", "t2", "k", 5000);
    lock_and_commit(s, t, NULL);
    assert_int_equal(outcome(s, "k", "h", "t3", 5001), STORE_IDEM_REPLAY);
    /* Done records have no lease to refresh and cannot be finished or aborted. */
    assert_int_equal(store_idem_refresh(s, "", "k", "t2", 5002, 100), CHAT_ECONFLICT);
    assert_int_equal(store_idem_finish(s, "", "k", "t2", 500, "{}", 5002, 100), CHAT_ECONFLICT);
    assert_int_equal(store_idem_abort(s, "", "k", "t2"), CHAT_OK);
    assert_int_equal(outcome(s, "k", "h", "t3", 5003), STORE_IDEM_REPLAY);

    /* A commit naming a key that has no record at all writes nothing. */
    t = idem_turn("s", "t9", "never-begun", 6000);
    assert_int_equal(store_lock_acquire(s, "s", "t9", 6000, 100), CHAT_OK);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);
    store_session sess;
    assert_int_equal(store_session_get(s, "s", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, 1);
    store_session_clear(&sess);
    store_close(s);
}

static void test_idem_abort_finish(void **state)
{
    (void)state;
    store *s = open_mem();
    store_idem r;
    /* Abort (the provider failed): a retry with the same key runs again. */
    assert_int_equal(outcome(s, "k", "h", "t1", 1000), STORE_IDEM_NEW);
    assert_int_equal(store_idem_abort(s, "", "k", "t1"), CHAT_OK);
    assert_int_equal(outcome(s, "k", "h", "t2", 1001), STORE_IDEM_NEW);
    assert_int_equal(store_idem_abort(s, "", "k", "t-other"), CHAT_OK); /* not its owner: no-op */
    assert_int_equal(outcome(s, "k", "h", "t3", 1002), STORE_IDEM_RUNNING);
    assert_int_equal(store_idem_abort(s, "", "missing", "t1"), CHAT_OK);

    /* Finish with an error worth replaying. */
    assert_int_equal(store_idem_finish(s, "", "k", "t2", 400, "{\"error\":{\"type\":\"x\"}}", 2000, 1000), CHAT_OK);
    assert_int_equal(begin(s, "", "k", "h", "t4", NULL, 2500, 100, &r), STORE_IDEM_REPLAY);
    assert_int_equal(r.status, 400);
    assert_string_equal(r.response, "{\"error\":{\"type\":\"x\"}}");
    assert_false(r.has_reply);
    assert_null(r.reply.content);
    assert_int_equal(r.expires_at, 3000);
    store_idem_clear(&r);
    assert_int_equal(store_idem_finish(s, "", "k", "t2", 400, "{}", 2600, 1000), CHAT_ECONFLICT);
    /* A finished record cannot be committed by a turn either. */
    store_turn t = idem_turn("s", "t2", "k", 2700);
    assert_int_equal(store_lock_acquire(s, "s", "t2", 2700, 100), CHAT_OK);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);
    assert_int_equal(outcome(s, "k", "h", "t5", 3000), STORE_IDEM_NEW); /* expired */
    store_close(s);
}

static void test_idem_expire(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    char key[16], tok[16];
    /* Running records with leases ending at 1100..1104, done ones at 2000..2002. */
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "run%d", i);
        snprintf(tok, sizeof tok, "t%d", i);
        assert_int_equal(outcome(s, key, "h", tok, 100 + i), STORE_IDEM_NEW); /* lease 1000 */
    }
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "done%d", i);
        snprintf(tok, sizeof tok, "d%d", i);
        assert_int_equal(outcome(s, key, "h", tok, 100), STORE_IDEM_NEW);
        assert_int_equal(store_idem_finish(s, "", key, tok, 201, "{}", 1000 + i, 1000), CHAT_OK);
    }
    int64_t del = -1;
    assert_int_equal(store_idem_expire(s, 1099, 100, &del), CHAT_OK);
    assert_int_equal(del, 0);
    assert_int_equal(store_idem_expire(s, 1102, 2, &del), CHAT_OK); /* limit caps */
    assert_int_equal(del, 2);
    assert_int_equal(store_idem_expire(s, 1102, 100, &del), CHAT_OK);
    assert_int_equal(del, 1);
    rawdb *db = raw_open_db(f->path, false);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM idempotency"), 5);
    assert_int_equal(scalar(db, "SELECT MIN(expires_at) FROM idempotency"), 1103);
    raw_close(db);
    assert_int_equal(store_idem_expire(s, 2001, 100, NULL), CHAT_OK);
    assert_int_equal(outcome(s, "done2", "h", "x", 2001), STORE_IDEM_REPLAY);
    assert_int_equal(store_idem_expire(s, 5000, 100, &del), CHAT_OK);
    assert_int_equal(del, 1);
    db = raw_open_db(f->path, false);
    assert_int_equal(scalar(db, "SELECT COUNT(*) FROM idempotency"), 0);
    raw_close(db);
    store_close(s);
}

/*
 * Crash safety: a child process begins a key, commits the turn with it, and is
 * killed before it can do anything else (no close, no checkpoint). The key must
 * replay after reopening, never run again. A second child dies mid-turn: its
 * key blocks retries only until its lease ends.
 */
static void test_idem_crash(void **state)
{
    struct fixture *f = *state;
    store_close(open_url(f->url)); /* migrate up front */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        store *c = NULL;
        store_idem r;
        if (store_open(f->url, &c, NULL, 0) != CHAT_OK ||
            store_idem_begin(c, "key_x", "crash", "h", "tok", "cs", 1000, 60000, &r) != CHAT_OK ||
            r.outcome != STORE_IDEM_NEW || store_lock_acquire(c, "cs", "tok", 1000, 60000) != CHAT_OK)
            _exit(1);
        store_turn t = idem_turn("cs", "tok", "crash", 2000);
        t.idem_scope = "key_x";
        if (store_turn_commit(c, &t, NULL) != CHAT_OK)
            _exit(2);
        /* Another key, begun but never finished. */
        if (store_idem_begin(c, "key_x", "dangling", "h", "tok2", "cs", 2000, 60000, &r) != CHAT_OK)
            _exit(3);
        raise(SIGKILL);
        _exit(4);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);

    store *s = open_url(f->url);
    store_idem r;
    assert_int_equal(begin(s, "key_x", "crash", "h", "retry", "cs", 3000, 60000, &r), STORE_IDEM_REPLAY);
    assert_true(r.has_reply);
    assert_string_equal(r.reply.content, "hi there");
    assert_int_equal(r.turn_count, 1);
    store_idem_clear(&r);
    assert_int_equal(begin(s, "key_x", "dangling", "h", "retry", "cs", 3000, 60000, &r), STORE_IDEM_RUNNING);
    store_idem_clear(&r);
    assert_int_equal(begin(s, "key_x", "dangling", "h", "retry", "cs", 62000, 60000, &r), STORE_IDEM_NEW);
    store_idem_clear(&r);
    store_session sess;
    assert_int_equal(store_session_get(s, "cs", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, 1);
    store_session_clear(&sess);
    store_close(s);
}

struct racer {
    const char *url;
    int id;
    pthread_barrier_t *go;
    chat_rc rc;
    store_idem_outcome outcome;
};

static void *racer_thread(void *arg)
{
    struct racer *r = arg;
    store *s = NULL;
    char tok[16];
    snprintf(tok, sizeof tok, "t%d", r->id);
    r->rc = store_open(r->url, &s, NULL, 0);
    pthread_barrier_wait(r->go);
    if (r->rc == CHAT_OK) {
        store_idem out;
        r->rc = store_idem_begin(s, "", "same", "h", tok, NULL, 1000, 60000, &out);
        r->outcome = out.outcome;
        store_idem_clear(&out);
    }
    store_close(s);
    return NULL;
}

/* Several workers receive the same key at once: exactly one runs it. */
static void test_idem_race(void **state)
{
    struct fixture *f = *state;
    enum { N = 6 };
    store_close(open_url(f->url));
    pthread_t th[N];
    struct racer rs[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    for (int i = 0; i < N; i++) {
        rs[i] = (struct racer){ .url = f->url, .id = i, .go = &go };
        assert_int_equal(pthread_create(&th[i], NULL, racer_thread, &rs[i]), 0);
    }
    int fresh = 0, running = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rs[i].rc, CHAT_OK);
        fresh += rs[i].outcome == STORE_IDEM_NEW;
        running += rs[i].outcome == STORE_IDEM_RUNNING;
    }
    pthread_barrier_destroy(&go);
    assert_int_equal(fresh, 1);
    assert_int_equal(running, N - 1);
}

static void test_idem_invalid_args(void **state)
{
    (void)state;
    store *s = open_mem();
    char longid[STORE_ID_MAX + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    store_idem r;
#define BAD_BEGIN(...)                                                    \
    do {                                                                  \
        memset(&r, 0x5a, sizeof r);                                       \
        assert_int_equal(store_idem_begin(__VA_ARGS__, &r), CHAT_EINVAL); \
        assert_int_equal(r.outcome, 0);                                   \
        assert_null(r.session_id);                                        \
    } while (0)
    BAD_BEGIN(NULL, "", "k", "h", "t", NULL, 1, 10);
    BAD_BEGIN(s, NULL, "k", "h", "t", NULL, 1, 10);
    BAD_BEGIN(s, longid, "k", "h", "t", NULL, 1, 10);
    BAD_BEGIN(s, "", NULL, "h", "t", NULL, 1, 10);
    BAD_BEGIN(s, "", "", "h", "t", NULL, 1, 10);
    BAD_BEGIN(s, "", longid, "h", "t", NULL, 1, 10);
    BAD_BEGIN(s, "", "k", NULL, "t", NULL, 1, 10);
    BAD_BEGIN(s, "", "k", "", "t", NULL, 1, 10);
    BAD_BEGIN(s, "", "k", "h", NULL, NULL, 1, 10);
    BAD_BEGIN(s, "", "k", "h", "t", "", 1, 10);
    BAD_BEGIN(s, "", "k", "h", "t", NULL, -1, 10);
    BAD_BEGIN(s, "", "k", "h", "t", NULL, 1, 0);
    BAD_BEGIN(s, "", "k", "h", "t", NULL, INT64_MAX - 5, 10);
#undef BAD_BEGIN
    assert_int_equal(store_idem_begin(s, "", "k", "h", "t", NULL, 1, 10, NULL), CHAT_EINVAL);
    assert_int_equal(store_idem_refresh(s, "", "k", "t", 1, 0), CHAT_EINVAL);
    assert_int_equal(store_idem_refresh(s, NULL, "k", "t", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_idem_finish(s, "", "k", "t", 99, "{}", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_idem_finish(s, "", "k", "t", 600, "{}", 1, 10), CHAT_EINVAL);
    assert_int_equal(store_idem_finish(s, "", "k", "t", 200, NULL, 1, 10), CHAT_EINVAL);
    assert_int_equal(store_idem_finish(s, "", "k", "t", 200, "{}", 1, -1), CHAT_EINVAL);
    assert_int_equal(store_idem_abort(s, "", NULL, "t"), CHAT_EINVAL);
    assert_int_equal(store_idem_abort(s, "", "k", ""), CHAT_EINVAL);
    int64_t del = 7;
    assert_int_equal(store_idem_expire(s, 1, 0, &del), CHAT_EINVAL);
    assert_int_equal(del, 0);
    assert_int_equal(store_idem_expire(s, -1, 10, NULL), CHAT_EINVAL);
    assert_int_equal(store_idem_expire(NULL, 1, 10, NULL), CHAT_EINVAL);

    /* Turns with bad idempotency fields are refused before anything is written. */
    assert_int_equal(outcome(s, "k", "h", "tok", 1000), STORE_IDEM_NEW);
    assert_int_equal(store_lock_acquire(s, "s", "tok", 1000, 60000), CHAT_OK);
    store_turn good = idem_turn("s", "tok", "k", 1000), t;
#define BAD(field, value)                                              \
    do {                                                               \
        t = good;                                                      \
        t.field = value;                                               \
        assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_EINVAL); \
    } while (0)
    BAD(idem_key, "");
    BAD(idem_key, longid);
    BAD(idem_scope, NULL);
    BAD(idem_scope, longid);
    BAD(idem_ttl_ms, 0);
    BAD(idem_ttl_ms, INT64_MAX);
#undef BAD
    assert_int_equal(outcome(s, "k", "h", "tok2", 1001), STORE_IDEM_RUNNING);
    /* Without idem_key, the other idem fields are ignored. */
    t = make_turn("s", "tok", 1000);
    t.idem_scope = NULL;
    t.idem_ttl_ms = -5;
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_OK);
    assert_int_equal(outcome(s, "k", "h", "tok2", 1002), STORE_IDEM_RUNNING);
    store_close(s);
}

/* ---- API keys ------------------------------------------------------------- */

/* A valid-looking hash: 64 lowercase hex digits derived from c. */
static const char *hash_of(char c, char buf[STORE_KEY_HASH_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < STORE_KEY_HASH_LEN; i++)
        buf[i] = hex[(c + i) & 15];
    buf[STORE_KEY_HASH_LEN] = '\0';
    return buf;
}

static void create_key(store *s, const char *id, const char *name, char hc, const char *role, int64_t now)
{
    char h[STORE_KEY_HASH_LEN + 1];
    store_key_new k = { .id = id, .name = name, .hash = hash_of(hc, h), .role = role, .now = now };
    assert_int_equal(store_key_create(s, &k), CHAT_OK);
}

static void test_keys_create_find(void **state)
{
    (void)state;
    store *s = open_mem();
    char h1[STORE_KEY_HASH_LEN + 1], h2[STORE_KEY_HASH_LEN + 1], h3[STORE_KEY_HASH_LEN + 1];
    hash_of(1, h1);
    hash_of(2, h2);
    hash_of(3, h3);
    store_key_new k = {
        .id = "key_0001", .name = "ci", .hash = h1, .role = "admin", .rate_limit = "60/minute", .now = 1000
    };
    assert_int_equal(store_key_create(s, &k), CHAT_OK);

    store_key got;
    assert_int_equal(store_key_find_by_hash(s, h1, &got), CHAT_OK);
    assert_string_equal(got.id, "key_0001");
    assert_string_equal(got.name, "ci");
    assert_string_equal(got.hash, h1);
    assert_string_equal(got.role, "admin");
    assert_string_equal(got.rate_limit, "60/minute");
    assert_int_equal(got.created_at, 1000);
    assert_int_equal(got.revoked_at, 0);
    assert_int_equal(got.last_used_at, 0);
    assert_int_equal(got.turn_count, 0);
    assert_int_equal(got.cost_micros, 0);
    store_key_clear(&got);
    assert_null(got.id);
    store_key_clear(NULL);
    assert_int_equal(store_key_find_by_hash(s, h2, &got), CHAT_ENOTFOUND);
    assert_null(got.id);

    /* Ids and hashes are unique, names are not. */
    store_key_new dup = k;
    dup.hash = h2;
    assert_int_equal(store_key_create(s, &dup), CHAT_ECONFLICT); /* same id */
    dup = k;
    dup.id = "key_0002";
    assert_int_equal(store_key_create(s, &dup), CHAT_ECONFLICT); /* same hash */
    assert_int_equal(store_key_find_by_hash(s, h2, &got), CHAT_ENOTFOUND);
    dup.hash = h2;
    dup.role = "user";
    dup.rate_limit = NULL;
    assert_int_equal(store_key_create(s, &dup), CHAT_OK); /* same name "ci" */
    assert_int_equal(store_key_find_by_hash(s, h2, &got), CHAT_OK);
    assert_string_equal(got.id, "key_0002");
    assert_string_equal(got.role, "user");
    assert_null(got.rate_limit);
    store_key_clear(&got);

    /* Bad arguments. */
    char upper[STORE_KEY_HASH_LEN + 1], shortish[STORE_KEY_HASH_LEN], longer[STORE_KEY_HASH_LEN + 2];
    memcpy(upper, h3, sizeof upper);
    upper[5] = 'A';
    memcpy(shortish, h3, STORE_KEY_HASH_LEN - 1);
    shortish[STORE_KEY_HASH_LEN - 1] = '\0';
    memcpy(longer, h3, STORE_KEY_HASH_LEN);
    longer[STORE_KEY_HASH_LEN] = '0';
    longer[STORE_KEY_HASH_LEN + 1] = '\0';
    char nonhex[STORE_KEY_HASH_LEN + 1];
    memcpy(nonhex, h3, sizeof nonhex);
    nonhex[0] = 'g';
    store_key_new good = { .id = "key_3", .name = "n", .hash = h3, .role = "user", .now = 5 };
    store_key_new b;
#define BAD(field, value)                                       \
    do {                                                        \
        b = good;                                               \
        b.field = value;                                        \
        assert_int_equal(store_key_create(s, &b), CHAT_EINVAL); \
    } while (0)
    BAD(id, NULL);
    BAD(id, "");
    BAD(name, NULL);
    BAD(name, "");
    BAD(hash, NULL);
    BAD(hash, upper);
    BAD(hash, shortish);
    BAD(hash, longer);
    BAD(hash, nonhex);
    BAD(role, NULL);
    BAD(role, "root");
    BAD(rate_limit, "");
    BAD(now, 0);
#undef BAD
    assert_int_equal(store_key_create(s, NULL), CHAT_EINVAL);
    assert_int_equal(store_key_create(NULL, &good), CHAT_EINVAL);
    assert_int_equal(store_key_find_by_hash(s, upper, &got), CHAT_EINVAL);
    assert_int_equal(store_key_find_by_hash(s, h3, NULL), CHAT_EINVAL);
    assert_int_equal(store_key_create(s, &good), CHAT_OK);

    store_key *arr = NULL;
    size_t n = 0;
    assert_int_equal(store_keys_list(s, &arr, &n), CHAT_OK);
    assert_int_equal(n, 3);
    /* Oldest first. */
    assert_string_equal(arr[0].id, "key_3");
    assert_string_equal(arr[1].id, "key_0001");
    assert_string_equal(arr[2].id, "key_0002");
    store_keys_free(arr, n);
    store_keys_free(NULL, 0);
    assert_int_equal(store_keys_list(s, NULL, &n), CHAT_EINVAL);
    store_close(s);
}

static void test_keys_revoke(void **state)
{
    (void)state;
    store *s = open_mem();
    char h[STORE_KEY_HASH_LEN + 1];
    create_key(s, "key_a", "alpha", 'a', "user", 100);
    create_key(s, "key_b", "twin", 'b', "user", 200);
    create_key(s, "key_c", "twin", 'c', "admin", 300);
    create_key(s, "key_d", "key_a", 'd', "user", 400); /* a name equal to another key's id */

    store_key k;
    assert_int_equal(store_key_revoke(s, "key_a", 1000, &k), CHAT_OK); /* by id */
    assert_string_equal(k.id, "key_a");
    assert_int_equal(k.revoked_at, 1000);
    store_key_clear(&k);
    assert_int_equal(store_key_find_by_hash(s, hash_of('a', h), &k), CHAT_ENOTFOUND);
    assert_int_equal(store_key_find_by_hash(s, hash_of('d', h), &k), CHAT_OK); /* not key_d */
    store_key_clear(&k);
    /* Again by id: fine, the first revocation time stays. */
    assert_int_equal(store_key_revoke(s, "key_a", 2000, &k), CHAT_OK);
    assert_int_equal(k.revoked_at, 1000);
    store_key_clear(&k);

    /* By name: ambiguous while two active keys carry it. */
    assert_int_equal(store_key_revoke(s, "twin", 3000, &k), CHAT_ECONFLICT);
    assert_null(k.id);
    assert_int_equal(store_key_find_by_hash(s, hash_of('b', h), &k), CHAT_OK);
    store_key_clear(&k);
    assert_int_equal(store_key_revoke(s, "key_b", 3000, NULL), CHAT_OK);
    assert_int_equal(store_key_revoke(s, "twin", 3100, &k), CHAT_OK);
    assert_string_equal(k.id, "key_c");
    assert_int_equal(k.revoked_at, 3100);
    store_key_clear(&k);
    /* No active key carries the name any more. */
    assert_int_equal(store_key_revoke(s, "twin", 3200, &k), CHAT_ENOTFOUND);
    assert_int_equal(store_key_revoke(s, "nobody", 3200, &k), CHAT_ENOTFOUND);
    assert_int_equal(store_key_revoke(s, "", 3200, &k), CHAT_EINVAL);
    assert_int_equal(store_key_revoke(s, "key_d", 0, &k), CHAT_EINVAL);

    store_key *arr = NULL;
    size_t n = 0;
    assert_int_equal(store_keys_list(s, &arr, &n), CHAT_OK);
    assert_int_equal(n, 4);
    assert_int_equal(arr[0].revoked_at, 1000);
    assert_int_equal(arr[1].revoked_at, 3000);
    assert_int_equal(arr[2].revoked_at, 3100);
    assert_int_equal(arr[3].revoked_at, 0);
    assert_string_equal(arr[3].name, "key_a");
    store_keys_free(arr, n);
    /* A revoked key's hash stays taken. */
    store_key_new again = { .id = "key_e", .name = "e", .hash = hash_of('a', h), .role = "user", .now = 5000 };
    assert_int_equal(store_key_create(s, &again), CHAT_ECONFLICT);
    store_close(s);
}

static void test_keys_touch(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    char h[STORE_KEY_HASH_LEN + 1];
    create_key(s, "key_t", "t", 't', "user", 100);
    store_key k;
#define LAST_USED(want)                                                            \
    do {                                                                           \
        assert_int_equal(store_key_find_by_hash(s, hash_of('t', h), &k), CHAT_OK); \
        assert_int_equal(k.last_used_at, want);                                    \
        store_key_clear(&k);                                                       \
    } while (0)
    /* SQLite: PRAGMA data_version on another connection changes when the store
     * commits a write. PostgreSQL: the key row's xmin changes when a new version
     * of it is written. Either tells a touch that wrote from one that did not. */
    rawdb *db = raw_open_db(f->path, false);
    const char *version_sql =
        tdb_pg() ? "SELECT xmin::text::bigint FROM api_keys WHERE id = 'key_t'" : "PRAGMA data_version";
    int64_t v0 = scalar(db, version_sql);
    LAST_USED(0);
    assert_int_equal(store_key_touch(s, "key_t", 1000), CHAT_OK);
    LAST_USED(1000);
    int64_t v1 = scalar(db, version_sql);
    assert_true(v1 != v0);
    /* Within STORE_KEY_TOUCH_MS: no write at all. */
    assert_int_equal(store_key_touch(s, "key_t", 1000 + STORE_KEY_TOUCH_MS - 1), CHAT_OK);
    assert_int_equal(store_key_touch(s, "key_t", 500), CHAT_OK); /* never backwards */
    LAST_USED(1000);
    assert_int_equal(scalar(db, version_sql), v1);
    assert_int_equal(store_key_touch(s, "key_t", 1000 + STORE_KEY_TOUCH_MS), CHAT_OK);
    LAST_USED(1000 + STORE_KEY_TOUCH_MS);
    assert_true(scalar(db, version_sql) != v1);
    raw_close(db);
#undef LAST_USED
    assert_int_equal(store_key_touch(s, "key_unknown", 1000), CHAT_OK);
    assert_int_equal(store_key_touch(s, "", 1000), CHAT_EINVAL);
    assert_int_equal(store_key_touch(s, "key_t", 0), CHAT_EINVAL);
    store_close(s);
}

/* The turn commit charges the key that made the turn; sessions keep their owner. */
static void test_keys_usage(void **state)
{
    (void)state;
    store *s = open_mem();
    char h[STORE_KEY_HASH_LEN + 1];
    create_key(s, "key_1", "one", '1', "user", 10);
    create_key(s, "key_2", "two", '2', "user", 20);

    store_turn t = make_turn("a", "tok", 1000);
    t.owner = "key_1";
    t.usage = (store_usage){ 10, 20, 30, 40 };
    t.cost_micros = 500;
    lock_and_commit(s, t, NULL);
    t = make_turn("a", "tok", 1100);
    t.owner = "key_1";
    t.usage = (store_usage){ 1, -1, 2, -1 }; /* unknown parts count as 0 */
    t.cost_micros = 5;
    lock_and_commit(s, t, NULL);
    t = make_turn("b", "tok", 1200);
    t.owner = "key_2";
    lock_and_commit(s, t, NULL);
    t = make_turn("c", "tok", 1300); /* no owner */
    lock_and_commit(s, t, NULL);
    t = make_turn("d", "tok", 1400); /* an owner that is not a stored key: fine */
    t.owner = "env-token";
    lock_and_commit(s, t, NULL);
    /* A failed commit charges nothing. */
    t = make_turn("e", "not-held", 1500);
    t.owner = "key_2";
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_ECONFLICT);
    /* A revoked key is still charged for the turn it ran. */
    assert_int_equal(store_key_revoke(s, "key_2", 1550, NULL), CHAT_OK);
    t = make_turn("b", "tok", 1600);
    t.owner = "key_2";
    lock_and_commit(s, t, NULL);

    store_key k;
    assert_int_equal(store_key_find_by_hash(s, hash_of('1', h), &k), CHAT_OK);
    assert_int_equal(k.turn_count, 2);
    assert_int_equal(k.usage.input_tokens, 11);
    assert_int_equal(k.usage.output_tokens, 20);
    assert_int_equal(k.usage.cache_read_tokens, 32);
    assert_int_equal(k.usage.cache_write_tokens, 40);
    assert_int_equal(k.cost_micros, 505);
    store_key_clear(&k);
    store_key *arr = NULL;
    size_t n = 0;
    assert_int_equal(store_keys_list(s, &arr, &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(arr[1].id, "key_2");
    assert_int_equal(arr[1].turn_count, 2);
    assert_int_equal(arr[1].usage.input_tokens, 20);
    assert_int_equal(arr[1].cost_micros, 200);
    store_keys_free(arr, n);

    /* The API enforces isolation with the owner that get and list return. */
    store_session sess;
    assert_int_equal(store_session_get(s, "a", &sess), CHAT_OK);
    assert_string_equal(sess.owner, "key_1");
    store_session_clear(&sess);
    store_session *list = NULL;
    char *next = NULL;
    assert_int_equal(store_sessions_list(s, "key_2", NULL, 10, &list, &n, &next), CHAT_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].id, "b");
    assert_string_equal(list[0].owner, "key_2");
    assert_null(next);
    store_sessions_free(list, n);
    store_close(s);
}

/* ---- migration 002 on a version-1 database ------------------------------- */

static void test_migrate_from_v1(void **state)
{
    struct fixture *f = *state;
    const struct chat_asset *v1 = chat_asset_find("schema/001_init.sql");
    assert_non_null(v1);
    /* What a version-1 binary left behind: schema 1 and a conversation. */
    sqlite3 *db = lite_open(f->path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    char *err = NULL;
    int rc = sqlite3_exec(db,
                          "BEGIN;"
                          "CREATE TABLE schema_version (version BIGINT NOT NULL PRIMARY KEY,"
                          " name TEXT NOT NULL, applied_at BIGINT NOT NULL);",
                          NULL, NULL, &err);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, (const char *)v1->data, NULL, NULL, &err);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(
            db,
            "INSERT INTO schema_version VALUES (1, '001_init.sql', 1);"
            "INSERT INTO sessions (id, owner, system_prompt, model, created_at, updated_at,"
            " turn_count, message_count, input_tokens, cost_micros)"
            " VALUES ('old', 'key_old', 'sp', 'm', 10, 20, 1, 2, 7, 9);"
            "INSERT INTO messages (session_id, seq, role, content, status, created_at)"
            " VALUES ('old', 1, 'user', 'q', 'complete', 10), ('old', 2, 'assistant', 'a', 'complete', 20);"
            "UPDATE stats SET total_sessions = 1, total_messages = 2, total_turns = 1,"
            " input_tokens = 7, cost_micros = 9;"
            "COMMIT;",
            NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fail_msg("building the v1 database: %s", err ? err : sqlite3_errstr(rc));
    sqlite3_close(db);

    store *s = open_url(f->url);
    assert_true(store_schema_version(s) >= 2);
    store_session sess;
    assert_int_equal(store_session_get(s, "old", &sess), CHAT_OK);
    assert_string_equal(sess.owner, "key_old");
    assert_int_equal(sess.turn_count, 1);
    assert_int_equal(sess.usage.input_tokens, 7);
    store_session_clear(&sess);
    store_message *m = NULL;
    size_t n = 0;
    assert_int_equal(store_messages_list(s, "old", 0, 0, &m, &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(m[1].content, "a");
    int64_t last_id = m[1].id;
    store_messages_free(m, n);

    /* The old session takes new turns, with a key and an idempotency record. */
    create_key(s, "key_old", "legacy", 'o', "user", 30);
    store_idem r;
    assert_int_equal(begin(s, "key_old", "k", "h", "tok", "old", 40, 60000, &r), STORE_IDEM_NEW);
    store_idem_clear(&r);
    store_turn t = idem_turn("old", "tok", "k", 50);
    t.idem_scope = "key_old";
    t.owner = "key_old";
    store_turn_result res;
    lock_and_commit(s, t, &res);
    assert_int_equal(res.turn_count, 2);
    assert_true(res.user_message_id > last_id);
    store_close(s);

    /* Reopening applies nothing more and keeps everything. */
    s = open_url(f->url);
    int version = store_schema_version(s);
    assert_int_equal(begin(s, "key_old", "k", "h", "tok2", "old", 60, 60000, &r), STORE_IDEM_REPLAY);
    assert_int_equal(r.turn_count, 2);
    store_idem_clear(&r);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 1);
    assert_int_equal(st.total_messages, 4);
    assert_int_equal(st.total_turns, 2);
    assert_int_equal(st.usage.input_tokens, 17);
    store_close(s);
    db = lite_open(f->path, SQLITE_OPEN_READONLY);
    assert_int_equal(lite_scalar(db, "SELECT COUNT(*) FROM schema_version WHERE version = 2"), 1);
    assert_int_equal(lite_scalar(db, "SELECT applied_at FROM schema_version WHERE version = 1"), 1);
    /* 1 was recorded by "the old binary", each later one once by the store. */
    assert_int_equal(lite_scalar(db, "SELECT COUNT(*) FROM schema_version"), version);
    assert_int_equal(lite_scalar(db, "SELECT turn_count FROM api_keys WHERE id = 'key_old'"), 1);
    sqlite3_close(db);
}

/* DATABASE_URL ?synchronous=normal|full: accepted, anything else refused; data is the same. */
static void test_url_synchronous_option(void **state)
{
    struct fixture *f = *state;
    char url[700], err[256] = "";
    store *s = NULL;
    snprintf(url, sizeof url, "%s?synchronous=normal", f->url);
    s = open_url(url);
    store_turn t = make_turn("sync", "tok", 1000);
    lock_and_commit(s, t, NULL);
    store_close(s);
    snprintf(url, sizeof url, "%s?synchronous=full", f->url);
    s = open_url(url);
    store_session sess = { 0 };
    assert_int_equal(store_session_get(s, "sync", &sess), CHAT_OK);
    assert_int_equal(sess.turn_count, 1);
    store_session_clear(&sess);
    store_close(s);
    const char *bad[] = { "?synchronous=off", "?journal=wal", "?", "?synchronous=normal&x=1" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(url, sizeof url, "%s%s", f->url, bad[i]);
        s = NULL;
        assert_int_equal(store_open(url, &s, err, sizeof err), CHAT_EINVAL);
        assert_null(s);
        assert_non_null(strstr(err, "option"));
    }
}

/* Schema 003: api_keys.session_count follows session creation, deletion and expiry. */
static void test_keys_session_count(void **state)
{
    (void)state;
    store *s = open_mem();
    int64_t n = -1;
    create_key(s, "key_1", "one", '1', "user", 10);
    create_key(s, "key_2", "two", '2', "user", 20);
    assert_int_equal(store_key_session_count(s, "key_1", &n), CHAT_OK);
    assert_int_equal(n, 0);
    const char *sids[] = { "a", "b", "c" };
    for (int i = 0; i < 3; i++) {
        store_turn t = make_turn(sids[i], "tok", 1000 + i);
        t.owner = i < 2 ? "key_1" : "key_2";
        lock_and_commit(s, t, NULL);
    }
    store_turn again = make_turn("a", "tok", 2000); /* a second turn creates no session */
    again.owner = "key_1";
    lock_and_commit(s, again, NULL);
    assert_int_equal(store_key_session_count(s, "key_1", &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(store_key_session_count(s, "key_2", &n), CHAT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(store_session_delete(s, "b"), CHAT_OK);
    int64_t prev = 0;
    assert_int_equal(store_session_reset(s, "a", 3000, &prev), CHAT_OK); /* a reset keeps the session */
    assert_int_equal(store_key_session_count(s, "key_1", &n), CHAT_OK);
    assert_int_equal(n, 1);
    int64_t deleted = 0;
    assert_int_equal(store_sessions_expire(s, 1000000, 1000000, 10, &deleted), CHAT_OK);
    assert_int_equal(deleted, 2);
    assert_int_equal(store_key_session_count(s, "key_1", &n), CHAT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_key_session_count(s, "key_2", &n), CHAT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_key_session_count(s, "nope", &n), CHAT_ENOTFOUND);
    store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idem_state_machine),
        cmocka_unit_test(test_idem_scopes),
        cmocka_unit_test_setup_teardown(test_idem_lease, setup, teardown),
        cmocka_unit_test(test_idem_abort_finish),
        cmocka_unit_test_setup_teardown(test_idem_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_race, setup, teardown),
        cmocka_unit_test(test_idem_invalid_args),
        cmocka_unit_test(test_keys_create_find),
        cmocka_unit_test(test_keys_revoke),
        cmocka_unit_test_setup_teardown(test_keys_touch, setup, teardown),
        cmocka_unit_test(test_keys_usage),
        cmocka_unit_test(test_keys_session_count),
        cmocka_unit_test_setup_teardown(test_url_synchronous_option, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_from_v1, setup, teardown),
    };
    /* About SQLite itself: its URL options, and its migrations on an old file. */
    static const char *const sqlite_only[] = { "test_url_synchronous_option", "test_migrate_from_v1", NULL };
    return tdb_run_tests("store_keys", tests, sizeof tests / sizeof tests[0], sqlite_only);
}
