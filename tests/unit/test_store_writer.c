/*
 * test_store_writer.c: the SQLite backend's writer thread and group commit,
 * and the history read bounded by a token budget (store/store.h,
 * src/store/sqlite_writer.c), on real database files.
 *
 * - Group commit: worker threads, each with its own handle attached to its own
 *   event loop (as the server's workers), submit many turns on distinct
 *   sessions at once; every one completes on a later loop turn, and afterwards
 *   a fresh handle finds every turn and exact counters. Ops that fail inside a
 *   batch (a commit whose lock token does not hold the lock, a key whose id is
 *   taken) fail alone: the ops batched with them commit.
 * - The history cache of a served file (store/history_cache.h): every tail
 *   read through an attached handle equals the database's, through turns, a
 *   reset and a delete.
 * (The history tail, MESSAGES_LIST with tail_tokens, is tested in test_store.c,
 * on both backends.)
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/event.h>

#include <sqlite3.h>

#include "core/assets.h"
#include "store/sqlite_int.h"
#include "store/store.h"
#include "store_testdb.h"

static int setup(void **state)
{
    return tdb_setup(state, "chatd_test_writer_", "/chat.db", false);
}

static int teardown(void **state)
{
    return tdb_teardown(state);
}

#define open_url tdb_open_url

/* ---- group commit ------------------------------------------------------------ */

#define THREADS 4
#define TURNS_PER_THREAD 150

struct worker {
    const char *url;
    int index;
    int done;        /* callbacks run */
    int ok;          /* commits that succeeded */
    int conflicts;   /* commits refused with CHAT_ECONFLICT (the planted bad tokens) */
    int inline_done; /* callbacks that ran inside store_submit (must stay 0) */
    bool submitting;
    int failures;
};

static void on_done(store_op *op, void *ud)
{
    struct worker *w = ud;
    if (w->submitting)
        w->inline_done++;
    w->done++;
    if (op->kind == STORE_OP_TURN_COMMIT) {
        if (op->rc == CHAT_OK)
            w->ok++;
        else if (op->rc == CHAT_ECONFLICT)
            w->conflicts++;
        else
            w->failures++;
    } else if (op->kind == STORE_OP_LOCK_ACQUIRE && op->rc != CHAT_OK) {
        w->failures++;
    }
}

/* Every tenth commit (i % 10 == 9) carries a token that does not hold the
 * lock: refused before it writes. Every tenth (i % 10 == 4) names an
 * idempotency record that does not exist: refused after its messages and
 * counters were written, which its savepoint must take back. */
static bool refused(int i)
{
    return i % 10 == 9 || i % 10 == 4;
}

static store_op *turn_op(int thread, int i)
{
    char sid[64];
    snprintf(sid, sizeof sid, "w%d-s%d", thread, i);
    store_op *op = store_op_new(STORE_OP_TURN_COMMIT);
    store_turn *t = &op->in.turn;
    t->session_id = store_op_str(op, sid);
    t->system_prompt = "You are helpful.";
    t->model = "claude-test";
    t->user_content = store_op_str(op, sid);
    t->assistant_content = "hi there";
    t->status = "complete";
    t->stop_reason = "end_turn";
    t->user_tokens = 3;
    t->usage = (store_usage){ 10, 5, 0, 0 };
    t->cost_micros = 7;
    t->lock_token = i % 10 == 9 ? "not-the-holder" : "tok";
    t->now = 1000 + i;
    if (i % 10 == 4) {
        t->idem_scope = "";
        t->idem_key = "no-such-record";
        t->idem_ttl_ms = 60000;
    }
    return op;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    store *s = open_url(w->url);
    struct event_base *base = event_base_new();
    if (store_attach(s, base, 1, 5000) != CHAT_OK)
        w->failures++;
    w->submitting = true;
    for (int i = 0; i < TURNS_PER_THREAD; i++) {
        char sid[64];
        snprintf(sid, sizeof sid, "w%d-s%d", w->index, i);
        store_op *lock = store_op_new(STORE_OP_LOCK_ACQUIRE);
        lock->in.session_id = store_op_str(lock, sid);
        lock->in.token = "tok";
        lock->in.now = 1000;
        lock->in.ttl_ms = 600000;
        store_submit(s, lock, on_done, w);
        store_submit(s, turn_op(w->index, i), on_done, w);
    }
    w->submitting = false;
    for (int spins = 0; spins < 100000 && w->done < 2 * TURNS_PER_THREAD; spins++)
        event_base_loop(base, EVLOOP_ONCE);
    store_close(s); /* detaches: nothing left in flight */
    event_base_free(base);
    return NULL;
}

static void test_group_commit_many_sessions(void **state)
{
    struct fixture *f = *state;
    /* Migrates once, and stays open: turn locks live as long as the process
     * holds the file open (turn_locks.h), and the checks below read them. */
    store *seed = open_url(f->url);

    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .url = f->url, .index = i };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].inline_done, 0);
        assert_int_equal(w[i].failures, 0);
        assert_int_equal(w[i].done, 2 * TURNS_PER_THREAD);
        assert_int_equal(w[i].conflicts, 2 * TURNS_PER_THREAD / 10);
        ok += w[i].ok;
    }
    assert_int_equal(ok, THREADS * (TURNS_PER_THREAD - 2 * TURNS_PER_THREAD / 10));

    /* A fresh handle: every acknowledged turn is there, the refused ones are
     * not, and the counters are exact. */
    store *s = open_url(f->url);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, ok);
    assert_int_equal(st.total_turns, ok);
    assert_int_equal(st.total_messages, 2 * ok);
    assert_int_equal(st.usage.input_tokens, 10 * ok);
    assert_int_equal(st.cost_micros, 7 * ok);
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < TURNS_PER_THREAD; i++) {
            char sid[64];
            snprintf(sid, sizeof sid, "w%d-s%d", t, i);
            store_session sess = { 0 };
            chat_rc rc = store_session_get(s, sid, &sess);
            if (refused(i)) {
                assert_int_equal(rc, CHAT_ENOTFOUND);
                /* its lock is still held by "tok" (the refused commit released nothing) */
                assert_int_equal(store_lock_acquire(s, sid, "other", 2000, 1000), CHAT_EBUSY);
            } else {
                assert_int_equal(rc, CHAT_OK);
                assert_int_equal(sess.turn_count, 1);
                assert_int_equal(sess.message_count, 2);
                /* the commit released the lock */
                assert_int_equal(store_lock_acquire(s, sid, "other", 2000, 1000), CHAT_OK);
            }
            store_session_clear(&sess);
        }
    }
    store_close(s);
    store_close(seed);
}

struct one {
    int done;
    chat_rc rc[8];
};

static void on_one(store_op *op, void *ud)
{
    struct one *o = ud;
    if (o->done < 8)
        o->rc[o->done] = op->rc;
    o->done++;
}

static store_op *key_op(const char *id, const char *hash)
{
    store_op *op = store_op_new(STORE_OP_KEY_CREATE);
    op->in.key_new.id = store_op_str(op, id);
    op->in.key_new.name = "k";
    op->in.key_new.hash = store_op_str(op, hash);
    op->in.key_new.role = "user";
    op->in.key_new.now = 1000;
    return op;
}

/* A failed op inside a batch does not take the others down; submitted from
 * one loop without running it, the ops are in the writer's queue together. */
static void test_failed_op_alone_in_its_batch(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    struct event_base *base = event_base_new();
    assert_int_equal(store_attach(s, base, 1, 5000), CHAT_OK);
    static const char h1[] = "1111111111111111111111111111111111111111111111111111111111111111";
    static const char h2[] = "2222222222222222222222222222222222222222222222222222222222222222";
    static const char h3[] = "3333333333333333333333333333333333333333333333333333333333333333";
    struct one o = { 0 };
    store_submit(s, key_op("key_a", h1), on_one, &o);
    store_submit(s, key_op("key_a", h2), on_one, &o); /* id taken: CHAT_ECONFLICT */
    store_submit(s, key_op("key_b", h3), on_one, &o);
    assert_int_equal(o.done, 0);
    for (int i = 0; i < 10000 && o.done < 3; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(o.done, 3);
    assert_int_equal(o.rc[0], CHAT_OK);
    assert_int_equal(o.rc[1], CHAT_ECONFLICT);
    assert_int_equal(o.rc[2], CHAT_OK);
    store_close(s);
    event_base_free(base);

    s = open_url(f->url);
    store_key *keys = NULL;
    size_t n = 0;
    assert_int_equal(store_keys_list(s, &keys, &n), CHAT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(keys[0].hash, h1);
    assert_string_equal(keys[1].hash, h3);
    store_keys_free(keys, n);
    store_close(s);
}

static store_op *acquire_op(const char *sid, const char *token, int64_t now)
{
    store_op *op = store_op_new(STORE_OP_LOCK_ACQUIRE);
    op->in.session_id = store_op_str(op, sid);
    op->in.token = store_op_str(op, token);
    op->in.now = now;
    op->in.ttl_ms = 60000;
    return op;
}

/* A turn's lock (in memory) ends with its commit: an acquire submitted while
 * the commit is in flight waits for it and then succeeds, as a client that
 * retries right after its turn ended expects; while the turn still runs, an
 * acquire is refused at once. */
static void test_acquire_waits_for_a_commit_in_flight(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    struct event_base *base = event_base_new();
    assert_int_equal(store_attach(s, base, 1, 5000), CHAT_OK);
    struct one o = { 0 };
    store_submit(s, acquire_op("w0-s0", "tok", 1000), on_one, &o);
    store_submit(s, acquire_op("w0-s0", "next", 1001), on_one, &o); /* the turn runs: busy */
    store_submit(s, turn_op(0, 0), on_one, &o);                     /* holder "tok" commits */
    store_submit(s, acquire_op("w0-s0", "next", 1002), on_one, &o); /* behind the commit */
    for (int i = 0; i < 10000 && o.done < 4; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(o.done, 4);
    assert_int_equal(o.rc[0], CHAT_OK);
    assert_int_equal(o.rc[1], CHAT_EBUSY);
    assert_int_equal(o.rc[2], CHAT_OK);
    assert_int_equal(o.rc[3], CHAT_OK);
    /* "next" holds it now. */
    assert_int_equal(store_lock_acquire(s, "w0-s0", "third", 1003, 1000), CHAT_EBUSY);
    store_close(s);
    event_base_free(base);
}

/* ---- the history cache (store/history_cache.h) --------------------------------- */

struct got {
    int done;
    chat_rc rc;
    store_message *msgs;
    size_t n;
    int64_t count;
};

static void on_got(store_op *op, void *ud)
{
    struct got *g = ud;
    g->done++;
    g->rc = op->rc;
    g->msgs = op->out.messages; /* taken: the op is freed after this */
    g->n = op->out.n_messages;
    g->count = op->out.count;
    op->out.messages = NULL;
    op->out.n_messages = 0;
}

/* Submits op and runs the loop until its callback ran. */
static struct got run_op(store *s, struct event_base *base, store_op *op)
{
    struct got g = { 0 };
    store_submit(s, op, on_got, &g);
    for (int i = 0; i < 10000 && !g.done; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(g.done, 1);
    return g;
}

static void assert_opt_str(const char *a, const char *b)
{
    if (!a || !b)
        assert_true(a == b);
    else
        assert_string_equal(a, b);
}

/* A tail read through the attached handle (as a turn reads: the history cache
 * first) equals the newest messages of the whole list, read uncached, under
 * the tail rule, field by field. */
static void check_tail(store *s, struct event_base *base, const char *sid, int64_t budget)
{
    store_op *op = store_op_new(STORE_OP_MESSAGES_LIST);
    op->in.session_id = store_op_str(op, sid);
    op->in.tail_tokens = budget;
    struct got g = run_op(s, base, op);
    store_message *all = NULL;
    size_t n = 0;
    chat_rc lrc = store_messages_list(s, sid, 0, 100000, &all, &n);
    assert_true(lrc == CHAT_OK || (lrc == CHAT_ENOTFOUND && n == 0));
    size_t k = 0;
    int64_t sum = 0;
    while (k < n && sum <= budget) {
        sum += all[n - 1 - k].tokens < 0 ? 0 : all[n - 1 - k].tokens;
        k++;
    }
    assert_int_equal(g.rc, lrc);
    assert_int_equal(g.n, k);
    if (g.rc == CHAT_OK)
        assert_int_equal(g.count, (int64_t)(n - k));
    for (size_t i = 0; i < k; i++) {
        const store_message *a = &g.msgs[i], *b = &all[n - k + i];
        assert_int_equal(a->id, b->id);
        assert_int_equal(a->seq, b->seq);
        assert_opt_str(a->role, b->role);
        assert_opt_str(a->content, b->content);
        assert_opt_str(a->blocks, b->blocks);
        assert_opt_str(a->status, b->status);
        assert_opt_str(a->model, b->model);
        assert_opt_str(a->stop_reason, b->stop_reason);
        assert_int_equal(a->tokens, b->tokens);
        assert_memory_equal(&a->usage, &b->usage, sizeof a->usage);
        assert_int_equal(a->cost_micros, b->cost_micros);
        assert_int_equal(a->created_at, b->created_at);
    }
    store_messages_free(g.msgs, g.n);
    store_messages_free(all, n);
}

/* Through turns (text, and one with content blocks), a budget that cuts the
 * history, a reset and a delete, every tail read of a served file equals the
 * database's. */
static void test_tail_reads_through_the_history_cache(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    struct event_base *base = event_base_new();
    assert_int_equal(store_attach(s, base, 1, 5000), CHAT_OK);
    static const int64_t budgets[] = { 1, 40, 1000000 };
    for (int i = 0; i < 36; i++) {
        if (i == 14) {
            store_op *op = store_op_new(STORE_OP_SESSION_RESET);
            op->in.session_id = store_op_str(op, "hc");
            op->in.now = 5000;
            assert_int_equal(run_op(s, base, op).rc, CHAT_OK);
        } else if (i == 25) {
            store_op *op = store_op_new(STORE_OP_SESSION_DELETE);
            op->in.session_id = store_op_str(op, "hc");
            assert_int_equal(run_op(s, base, op).rc, CHAT_OK);
        }
        for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++)
            check_tail(s, base, "hc", budgets[b]);
        store_op *lock = store_op_new(STORE_OP_LOCK_ACQUIRE);
        lock->in.session_id = store_op_str(lock, "hc");
        lock->in.token = "tok";
        lock->in.now = 1000 + i;
        lock->in.ttl_ms = 600000;
        assert_int_equal(run_op(s, base, lock).rc, CHAT_OK);
        store_op *op = store_op_new(STORE_OP_TURN_COMMIT);
        store_turn *t = &op->in.turn;
        char text[64];
        snprintf(text, sizeof text, "turn %d", i);
        t->session_id = store_op_str(op, "hc");
        t->system_prompt = "You are helpful.";
        t->model = "claude-test";
        t->user_content = store_op_str(op, text);
        t->assistant_content = "hi there";
        if (i == 8)
            t->assistant_blocks = "[{\"type\":\"text\",\"text\":\"hi there\"}]";
        t->status = "complete";
        t->stop_reason = "end_turn";
        t->user_tokens = i % 4 == 0 ? -1 : 7;
        t->usage = (store_usage){ 10, 3, 0, 0 };
        t->cost_micros = 7;
        t->lock_token = "tok";
        t->now = 2000 + i;
        assert_int_equal(run_op(s, base, op).rc, CHAT_OK);
        for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++)
            check_tail(s, base, "hc", budgets[b]);
    }
    store_close(s);
    event_base_free(base);
}

/* ---- the session list statements and their indexes ------------------------- */

#define AS_ROW(id, sql) { #id, sql },
static const struct {
    const char *name, *sql;
} statements[] = { STATEMENTS(AS_ROW) };

/* Every session list (newest or oldest first, all or one owner's, first page
 * or after a cursor) walks an index of the migrated schema, in either
 * direction: no scan of the table, no sort (006_session_indexes_ascending.sql
 * made them ascending and the owner one partial). */
static void test_session_lists_walk_an_index(void **state)
{
    struct fixture *f = *state;
    store_close(open_url(f->url)); /* creates and migrates the file */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    int lists = 0;
    for (size_t i = 0; i < sizeof statements / sizeof statements[0]; i++) {
        if (strncmp(statements[i].name, "ST_LIST_", 8) != 0)
            continue;
        lists++;
        char *q = sqlite3_mprintf("EXPLAIN QUERY PLAN %s", statements[i].sql);
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
        int rows = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *detail = (const char *)sqlite3_column_text(st, 3);
            rows++;
            /* A list of one owner's sessions seeks that owner in its index. */
            const char *want = strstr(statements[i].name, "OWNER")
                                   ? "SEARCH sessions USING INDEX sessions_owner_created_idx (owner=?"
                                   : "USING INDEX sessions_created_idx";
            if (!strstr(detail, want) || strstr(detail, "TEMP B-TREE"))
                fail_msg("%s: %s", statements[i].name, detail);
        }
        assert_int_equal(rows, 1);
        sqlite3_finalize(st);
        sqlite3_free(q);
    }
    assert_int_equal(lists, 8);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_group_commit_many_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_op_alone_in_its_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acquire_waits_for_a_commit_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tail_reads_through_the_history_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_lists_walk_an_index, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
