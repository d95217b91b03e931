/*
 * test_history_cache.c: store/history_cache.c, the tail-read cache of a served
 * SQLite file, against a model of the database.
 *
 * The model is a list of messages per session and the tail read's rule
 * written out again (newest first while the tokens taken do not exceed the
 * budget). Every answer the cache gives must equal the model's, field by
 * field; the cache may only miss. The named tests pin the protocol (a miss's
 * fill is dropped when a write came in between, write_begin/end keeps a
 * session out, appends must follow the cached seq, bounds); the last one
 * drives random turns, resets, deletes, sweeps and reads of varying budgets
 * through the same protocol the SQLite backend follows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json_out.h"
#include "core/mem.h"
#include "store/backend.h"
#include "store/history_cache.h"

/* ---- the model ---- */

#define SESSIONS 8
#define MAX_MSGS 400

typedef struct model {
    store_message m[SESSIONS][MAX_MSGS];
    size_t n[SESSIONS];
    bool exists[SESSIONS];
    int64_t next_id;
} model;

static const char *sid_of(int i)
{
    static const char *ids[SESSIONS] = { "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7" };
    return ids[i];
}

static void model_turn(model *md, int s, int64_t user_tokens, int64_t reply_tokens, size_t text_len,
                       store_message out[2])
{
    md->exists[s] = true;
    for (int k = 0; k < 2; k++) {
        store_message *m = &md->m[s][md->n[s]];
        memset(m, 0, sizeof *m);
        m->id = ++md->next_id;
        m->seq = (int64_t)md->n[s] + 1;
        m->role = k ? "assistant" : "user";
        char *text = malloc(text_len + 1);
        memset(text, k ? 'a' : 'u', text_len);
        if (m->id % 3 == 0 && text_len > 2)
            text[text_len / 2] = m->id % 2 ? '"' : '\n'; /* a text that needs escaping */
        text[text_len] = '\0';
        m->content = text;
        m->status = "complete";
        m->model = k ? "claude-test" : NULL;
        m->stop_reason = k ? "end_turn" : NULL;
        m->tokens = k ? reply_tokens : user_tokens;
        m->usage = k ? (store_usage){ 10, reply_tokens, 0, 0 } : (store_usage){ -1, -1, -1, -1 };
        m->cost_micros = k ? 3 : 0;
        m->created_at = 1000 + m->id;
        out[k] = *m;
        md->n[s]++;
    }
}

static void model_clear(model *md, int s, bool delete)
{
    for (size_t i = 0; i < md->n[s]; i++)
        free(md->m[s][i].content);
    md->n[s] = 0;
    if (delete)
        md->exists[s] = false;
}

/* The database's tail read: [first, n) of the session. */
static size_t model_tail(const model *md, int s, int64_t tail, int64_t *skipped)
{
    size_t n = md->n[s], k = 0;
    int64_t sum = 0;
    while (k < n && sum <= tail) {
        sum += store_known(md->m[s][n - 1 - k].tokens);
        k++;
    }
    *skipped = (int64_t)(n - k);
    return n - k;
}

static void assert_opt_str(const char *a, const char *b)
{
    if (!a || !b)
        assert_true(a == b);
    else
        assert_string_equal(a, b);
}

static void assert_same(const store_message *got, const store_message *want)
{
    assert_int_equal(got->id, want->id);
    assert_int_equal(got->seq, want->seq);
    assert_opt_str(got->role, want->role);
    assert_opt_str(got->content, want->content);
    assert_opt_str(got->blocks, want->blocks);
    assert_opt_str(got->status, want->status);
    assert_opt_str(got->model, want->model);
    assert_opt_str(got->stop_reason, want->stop_reason);
    assert_int_equal(got->tokens, want->tokens);
    assert_memory_equal(&got->usage, &want->usage, sizeof got->usage);
    assert_int_equal(got->cost_micros, want->cost_micros);
    assert_int_equal(got->created_at, want->created_at);
    /* What a read tells about the text (store.h), measured once by the cache. */
    size_t len = want->content ? strlen(want->content) : 0;
    assert_int_equal(got->content_len, len);
    assert_int_equal(got->content_plain, want->content && chat_json_plain(want->content, len));
}

/* One tail read as the backend does it: the cache, else the model (the
 * database) and a fill. Checks a hit against the model; returns whether it hit. */
static bool read_tail(history_cache *c, model *md, int s, int64_t tail)
{
    store_message *out = NULL;
    size_t n = 0;
    int64_t skipped = -1;
    uint64_t ticket = 0;
    int64_t want_skipped;
    size_t first = model_tail(md, s, tail, &want_skipped);
    if (history_cache_get(c, sid_of(s), tail, &out, &n, &skipped, &ticket)) {
        assert_int_equal(n, md->n[s] - first);
        assert_int_equal(skipped, want_skipped);
        for (size_t i = 0; i < n; i++)
            assert_same(&out[i], &md->m[s][first + i]);
        store_messages_free(out, n);
        return true;
    }
    history_cache_fill(c, sid_of(s), ticket, md->exists[s], tail, &md->m[s][first], md->n[s] - first,
                       (int64_t)md->n[s]);
    return false;
}

static void append_turn(history_cache *c, model *md, int s, int64_t ut, int64_t rt, size_t len)
{
    store_message two[2];
    model_turn(md, s, ut, rt, len, two);
    history_cache_append(c, sid_of(s), two, 2, (int64_t)md->n[s]);
}

static void model_free(model *md)
{
    for (int s = 0; s < SESSIONS; s++)
        model_clear(md, s, true);
}

/* ---- named cases ---- */

static void test_miss_fill_hit_append(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *c = history_cache_new(1 << 20);
    assert_false(read_tail(c, md, 0, 1000)); /* no session: nothing kept */
    append_turn(c, md, 0, 5, 7, 10);         /* no entry: nothing to append to */
    assert_false(read_tail(c, md, 0, 1000)); /* miss, filled */
    assert_int_equal(history_cache_sessions(c), 1);
    assert_true(read_tail(c, md, 0, 1000));
    for (int i = 0; i < 20; i++) {
        append_turn(c, md, 0, 5, 7, 10);
        assert_true(read_tail(c, md, 0, 1000));
        assert_true(read_tail(c, md, 0, 3)); /* a smaller budget: fewer, from the same entry */
    }
    /* A budget beyond the cached one, with the whole session cached: a hit. */
    assert_true(read_tail(c, md, 0, 1000000));
    history_cache_free(c);
    model_free(md);
    free(md);
}

static void test_cut_tail(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *c = history_cache_new(1 << 20);
    for (int i = 0; i < 30; i++)
        model_turn(md, 1, 10, i % 3 == 0 ? -1 : 4, 8, (store_message[2]){ 0 });
    assert_false(read_tail(c, md, 1, 100)); /* a cut tail */
    assert_true(read_tail(c, md, 1, 100));
    assert_true(read_tail(c, md, 1, 50));
    assert_false(read_tail(c, md, 1, 101)); /* more than was read: the database again */
    assert_true(read_tail(c, md, 1, 101));
    for (int i = 0; i < 10; i++) {
        append_turn(c, md, 1, i % 2 ? -1 : 30, 2, 8); /* trimmed to the budget as it grows */
        assert_true(read_tail(c, md, 1, 101));
        assert_true(read_tail(c, md, 1, 0));
    }
    history_cache_free(c);
    model_free(md);
    free(md);
}

static void test_a_write_between_miss_and_fill(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *c = history_cache_new(1 << 20);
    store_message two[2];
    model_turn(md, 0, 1, 1, 4, two);
    store_message *out;
    size_t n;
    int64_t skipped;
    uint64_t ticket;

    /* A reset committed while a miss read the state before it: not kept. */
    assert_false(history_cache_get(c, "s0", 100, &out, &n, &skipped, &ticket));
    history_cache_write_begin(c, "s0");
    history_cache_write_end(c, "s0");
    history_cache_fill(c, "s0", ticket, true, 100, md->m[0], md->n[0], (int64_t)md->n[0]);
    assert_int_equal(history_cache_sessions(c), 0);

    /* A change in flight: neither served nor filled until it ends. */
    assert_false(read_tail(c, md, 0, 100));
    assert_true(read_tail(c, md, 0, 100));
    history_cache_write_begin(c, "s0");
    assert_false(history_cache_get(c, "s0", 100, &out, &n, &skipped, &ticket));
    history_cache_fill(c, "s0", ticket, true, 100, md->m[0], md->n[0], (int64_t)md->n[0]);
    assert_int_equal(history_cache_sessions(c), 0);
    model_clear(md, 0, false);
    history_cache_write_end(c, "s0");
    assert_false(read_tail(c, md, 0, 100));
    assert_true(read_tail(c, md, 0, 100)); /* the empty session after the reset */

    /* The sweep (every session) the same way. */
    history_cache_write_begin(c, NULL);
    assert_false(history_cache_get(c, "s0", 100, &out, &n, &skipped, &ticket));
    history_cache_fill(c, "s0", ticket, true, 100, md->m[0], md->n[0], (int64_t)md->n[0]);
    history_cache_write_end(c, NULL);
    assert_int_equal(history_cache_sessions(c), 0);

    /* A turn committed between a miss and its fill. */
    assert_false(history_cache_get(c, "s0", 100, &out, &n, &skipped, &ticket));
    model_turn(md, 0, 1, 1, 4, two);
    history_cache_append(c, "s0", two, 2, (int64_t)md->n[0]);
    history_cache_fill(c, "s0", ticket, true, 100, md->m[0], 0, 0); /* what it read before the turn */
    assert_int_equal(history_cache_sessions(c), 0);
    assert_false(read_tail(c, md, 0, 100));
    assert_true(read_tail(c, md, 0, 100));
    history_cache_free(c);
    model_free(md);
    free(md);
}

static void test_appends_that_do_not_follow(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *c = history_cache_new(1 << 20);
    store_message two[2];
    model_turn(md, 0, 1, 1, 4, two);
    assert_false(read_tail(c, md, 0, 100));
    /* The same turn twice: the second does not follow, the entry goes. */
    history_cache_append(c, "s0", two, 2, 2);
    assert_int_equal(history_cache_sessions(c), 0);
    assert_false(read_tail(c, md, 0, 100));
    /* A gap. */
    model_turn(md, 0, 1, 1, 4, two);
    two[0].seq += 5;
    two[1].seq += 5;
    history_cache_append(c, "s0", two, 2, 4);
    assert_int_equal(history_cache_sessions(c), 0);
    /* Content blocks: not kept (their stored form is not what a read gives). */
    assert_false(read_tail(c, md, 0, 100));
    model_turn(md, 0, 1, 1, 4, two);
    two[1].blocks = "[{\"type\":\"text\",\"text\":\"x\"}]";
    history_cache_append(c, "s0", two, 2, 6);
    assert_int_equal(history_cache_sessions(c), 0);
    history_cache_free(c);
    model_free(md);
    free(md);
}

static void test_bounds(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *off = history_cache_new(0);
    model_turn(md, 0, 1, 1, 4, (store_message[2]){ 0 });
    assert_false(read_tail(off, md, 0, 100));
    assert_false(read_tail(off, md, 0, 100));
    history_cache_free(off);

    /* 16 KiB: a session of 20 KiB (over a quarter) is never kept; sessions
     * of about 3 KiB are, the least recently used going first. */
    history_cache *c = history_cache_new(16 << 10);
    for (int i = 0; i < 10; i++)
        model_turn(md, 7, 1, 1, 1000, (store_message[2]){ 0 });
    assert_false(read_tail(c, md, 7, 1 << 20));
    assert_false(read_tail(c, md, 7, 1 << 20));
    for (int s = 1; s <= 6; s++) {
        model_turn(md, s, 1, 1, 1500, (store_message[2]){ 0 });
        assert_false(read_tail(c, md, s, 1 << 20));
        assert_true(history_cache_bytes(c) <= 16 << 10);
    }
    assert_true(history_cache_sessions(c) < 6);
    assert_true(read_tail(c, md, 6, 1 << 20));  /* the newest stays */
    assert_false(read_tail(c, md, 1, 1 << 20)); /* the oldest went */
    /* A cached session that grows past a quarter is let go. */
    for (int i = 0; i < 3; i++)
        append_turn(c, md, 6, 1, 1, 1000);
    assert_false(read_tail(c, md, 6, 1 << 20));
    assert_true(history_cache_bytes(c) <= 16 << 10);
    history_cache_free(c);
    model_free(md);
    free(md);
}

/* The bound is on memory: what the cache counts is what malloc holds for it
 * (within a quarter), for many sessions of short messages, where the small
 * strings and the arrays weigh most (core/mem.h: jemalloc's or glibc's count).
 * Not under ASan, whose allocator neither count sees. */
static void test_bytes_are_memory(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip();
#else
    history_cache *c = history_cache_new(256 << 20);
    store_message m[4];
    memset(m, 0, sizeof m);
    for (int i = 0; i < 4; i++) {
        m[i].id = i + 1;
        m[i].seq = i + 1;
        m[i].role = i % 2 ? "assistant" : "user";
        m[i].content = i % 2 ? "Hello! You said: a short message" : "a short message";
        m[i].status = "complete";
        m[i].model = i % 2 ? "claude-sonnet-4-6" : NULL;
        m[i].stop_reason = i % 2 ? "end_turn" : NULL;
        m[i].tokens = 5;
    }
    size_t before = chat_mem_allocated();
    char sid[32];
    for (int s = 0; s < 5000; s++) {
        snprintf(sid, sizeof sid, "sess-%d", s);
        store_message *out;
        size_t n;
        int64_t skipped;
        uint64_t ticket;
        assert_false(history_cache_get(c, sid, 1000, &out, &n, &skipped, &ticket));
        history_cache_fill(c, sid, ticket, true, 1000, m, 2, 2);
        history_cache_append(c, sid, m + 2, 2, 4);
    }
    size_t held = chat_mem_allocated() - before, counted = history_cache_bytes(c);
    assert_true(counted * 4 >= held * 3 && counted * 4 <= held * 5);
    history_cache_free(c);
#endif
}

/* ---- random ---- */

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(uint64_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state % n;
}

/* A hit shares the cache's strings: they must stay whole while the read
 * holds them, whatever the cache does meanwhile (a delete's drop, an append
 * that trims the tail, eviction, the cache freed), and be freed once both
 * let go (ASan and valgrind see a leak or a use after free). */
static void expect_read(const store_message *got, size_t n, const store_message *want)
{
    for (size_t i = 0; i < n; i++)
        assert_same(&got[i], &want[i]);
}

static void test_reads_outlive_the_cache(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *c = history_cache_new(64 << 10);
    for (int i = 0; i < 5; i++)
        model_turn(md, 0, 4, 4, 100, (store_message[2]){ 0 });
    assert_false(read_tail(c, md, 0, 1000));

    store_message *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    int64_t skipped;
    uint64_t ticket;
    assert_true(history_cache_get(c, sid_of(0), 1000, &a, &na, &skipped, &ticket));
    assert_true(history_cache_get(c, sid_of(0), 1000, &b, &nb, &skipped, &ticket));
    assert_int_equal(na, 10);
    assert_true(a[3].content == b[3].content); /* shared, not copied */

    /* The session deleted: the cache drops it; both reads still hold it. */
    history_cache_write_begin(c, sid_of(0));
    history_cache_write_end(c, sid_of(0));
    assert_int_equal(history_cache_sessions(c), 0);
    expect_read(a, na, md->m[0]);
    store_messages_free(a, na);
    expect_read(b, nb, md->m[0]);

    /* Refilled, read, then trimmed by appends past its budget, then evicted
     * by other sessions, then the cache freed: the read is still whole. */
    assert_false(read_tail(c, md, 0, 40));
    assert_true(history_cache_get(c, sid_of(0), 40, &a, &na, &skipped, &ticket));
    int64_t first = (int64_t)md->n[0] - (int64_t)na;
    for (int i = 0; i < 6; i++)
        append_turn(c, md, 0, 4, 4, 100);
    for (int s = 1; s < SESSIONS; s++) {
        for (int i = 0; i < 20; i++)
            model_turn(md, s, 4, 4, 400, (store_message[2]){ 0 });
        assert_false(read_tail(c, md, s, 1000000));
    }
    expect_read(a, na, &md->m[0][first]);
    history_cache_free(c);
    expect_read(a, na, &md->m[0][first]);
    expect_read(b, nb, md->m[0]);
    store_messages_free(a, na);
    store_messages_free(b, nb);
    model_free(md);
    free(md);
}

static void test_random_against_the_model(void **state)
{
    (void)state;
    model *md = calloc(1, sizeof *md);
    history_cache *c = history_cache_new(48 << 10);
    int hits = 0, reads = 0;
    static const int64_t budgets[] = { 0, 5, 40, 120, 1000, 1 << 30 };
    for (int step = 0; step < 20000; step++) {
        int s = (int)rnd(SESSIONS);
        uint64_t what = rnd(100);
        if (what < 45) {
            reads++;
            hits += read_tail(c, md, s, budgets[rnd(6)]);
        } else if (what < 93) {
            if (md->n[s] + 2 > MAX_MSGS) {
                history_cache_write_begin(c, sid_of(s));
                model_clear(md, s, false);
                history_cache_write_end(c, sid_of(s));
            } else {
                int64_t ut = rnd(4) == 0 ? -1 : (int64_t)rnd(30);
                append_turn(c, md, s, ut, (int64_t)rnd(8), (size_t)rnd(200));
            }
        } else if (what < 97) {
            history_cache_write_begin(c, sid_of(s));
            model_clear(md, s, rnd(2) == 0); /* a reset or a delete */
            history_cache_write_end(c, sid_of(s));
        } else if (what < 98) {
            history_cache_write_begin(c, NULL);
            model_clear(md, s, true); /* the sweep deleted one */
            history_cache_write_end(c, NULL);
        } else {
            /* A miss whose fill comes after a turn: kept only if nothing moved. */
            store_message *out = NULL;
            size_t n = 0;
            int64_t skipped;
            uint64_t ticket;
            int64_t dummy;
            int64_t b = budgets[rnd(6)];
            if (history_cache_get(c, sid_of(s), b, &out, &n, &skipped, &ticket)) {
                store_messages_free(out, n);
                continue;
            }
            size_t first = model_tail(md, s, b, &dummy);
            size_t before = md->n[s];
            if (before + 2 <= MAX_MSGS)
                append_turn(c, md, s, 3, 3, 10);
            history_cache_fill(c, sid_of(s), ticket, md->exists[s], b, &md->m[s][first], before - first,
                               (int64_t)before);
        }
        assert_true(history_cache_bytes(c) <= 48 << 10);
    }
    /* The cache does serve: most reads hit. */
    assert_true(hits > reads / 2);
    history_cache_free(c);
    model_free(md);
    free(md);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_miss_fill_hit_append),
        cmocka_unit_test(test_cut_tail),
        cmocka_unit_test(test_a_write_between_miss_and_fill),
        cmocka_unit_test(test_appends_that_do_not_follow),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_bytes_are_memory),
        cmocka_unit_test(test_reads_outlive_the_cache),
        cmocka_unit_test(test_random_against_the_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
