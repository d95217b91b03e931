/*
 * test_ratelimit.c: unit tests for the token-bucket limiter (src/guard/ratelimit.h).
 *
 * Time is injected (every call takes now_ms), so refill timing is checked to
 * the millisecond without sleeping. T0 is an arbitrary large start time, so
 * nothing depends on the clock starting at zero.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guard/ratelimit.h"

#define T0 ((int64_t)1700000000000)
#define SEC 1000
#define MIN (60 * SEC)
#define HOUR (60 * MIN)

static ratelimit_spec spec(const char *text)
{
    ratelimit_spec s;
    char err[200];
    if (ratelimit_spec_parse(text, &s, err, sizeof err) != CHAT_OK)
        fail_msg("spec %s: %s", text, err);
    return s;
}

static ratelimit *limiter(const char *requests, const char *tokens, size_t max_buckets)
{
    ratelimit_config cfg = { spec(requests), spec(tokens), max_buckets };
    return ratelimit_new(&cfg);
}

static ratelimit_result check(ratelimit *rl, const char *key, int64_t now)
{
    ratelimit_result r;
    ratelimit_check(rl, RATELIMIT_REQUESTS, key, NULL, now, &r);
    return r;
}

/* ---- refill timing, burst, remaining, reset, retry-after ---------------------- */

static void test_exact_refill(void **state)
{
    (void)state;
    ratelimit *rl = limiter("10/minute", "off", 100);
    /* burst = capacity: 10 at once */
    for (int i = 0; i < 10; i++) {
        ratelimit_result r = check(rl, "k", T0);
        assert_true(r.limited);
        assert_true(r.allowed);
        assert_int_equal(r.limit, 10);
        assert_int_equal(r.remaining, 9 - i);
        /* (i + 1) tokens missing, one back every 6 s */
        assert_int_equal(r.reset_s, 6 * (i + 1));
        assert_int_equal(r.retry_after_s, 0);
    }
    ratelimit_result r = check(rl, "k", T0);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_s, 6);
    assert_int_equal(r.reset_s, 60);
    /* one token every 6000 ms, to the millisecond */
    r = check(rl, "k", T0 + 5999);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_s, 1); /* 1 ms left: rounded up to a whole second */
    r = check(rl, "k", T0 + 6000);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 0);
    r = check(rl, "k", T0 + 6001);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_s, 6); /* 5999 ms */
    /* a long quiet period refills to capacity, never beyond */
    r = check(rl, "k", T0 + 10 * HOUR);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 9);
    for (int i = 0; i < 9; i++)
        assert_true(check(rl, "k", T0 + 10 * HOUR).allowed);
    assert_false(check(rl, "k", T0 + 10 * HOUR).allowed);
    /* time going backwards (another thread's older clock reading) counts as no time */
    assert_false(check(rl, "k", T0).allowed);
    assert_false(check(rl, "k", T0 + 10 * HOUR + 5999).allowed);
    assert_true(check(rl, "k", T0 + 10 * HOUR + 6000).allowed);
    /* other keys are independent */
    assert_true(check(rl, "other", T0).allowed);
    assert_int_equal(ratelimit_size(rl), 2);
    ratelimit_free(rl);
}

static void test_remaining_reset_retry(void **state)
{
    (void)state;
    ratelimit *rl = limiter("5/second", "off", 100);
    ratelimit_result r = check(rl, "a", T0);
    assert_int_equal(r.remaining, 4);
    assert_int_equal(r.reset_s, 1); /* 200 ms to full, rounded up */
    for (int i = 0; i < 4; i++)
        r = check(rl, "a", T0);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_s, 1); /* 1000 ms */
    r = check(rl, "a", T0 + 100);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_s, 1); /* 100 ms -> at least 1 s */
    assert_true(check(rl, "a", T0 + 200).allowed);
    ratelimit_free(rl);

    rl = limiter("100/hour", "off", 100);
    r = check(rl, "b", T0);
    assert_int_equal(r.remaining, 99);
    assert_int_equal(r.reset_s, 36);
    for (int i = 0; i < 99; i++)
        r = check(rl, "b", T0);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_s, 3600);
    r = check(rl, "b", T0);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_s, 36);
    r = check(rl, "b", T0 + 35001);
    assert_int_equal(r.retry_after_s, 1);
    ratelimit_free(rl);

    rl = limiter("1/hour", "off", 100);
    assert_true(check(rl, "c", T0).allowed);
    r = check(rl, "c", T0);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_s, 3600);
    assert_int_equal(r.reset_s, 3600);
    r = check(rl, "c", T0 + 30 * MIN);
    assert_int_equal(r.retry_after_s, 1800);
    r = check(rl, "c", T0 + HOUR - 1);
    assert_false(r.allowed);
    assert_true(check(rl, "c", T0 + HOUR).allowed);
    ratelimit_free(rl);
}

/* ---- provider tokens per minute ------------------------------------------------ */

static void test_tokens_debit(void **state)
{
    (void)state;
    ratelimit *rl = limiter("off", "1000/minute", 100);
    ratelimit_result r;
    /* a check takes nothing and creates nothing */
    for (int i = 0; i < 5; i++) {
        ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0, &r);
        assert_true(r.limited);
        assert_true(r.allowed);
        assert_int_equal(r.limit, 1000);
        assert_int_equal(r.remaining, 1000);
        assert_int_equal(r.reset_s, 0);
    }
    assert_int_equal(ratelimit_size(rl), 0);
    /* requests are off here: no limit, no headers */
    ratelimit_check(rl, RATELIMIT_REQUESTS, "key", NULL, T0, &r);
    assert_false(r.limited);
    assert_true(r.allowed);

    ratelimit_debit(rl, RATELIMIT_TOKENS, "key", NULL, 400, T0);
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 600);
    assert_int_equal(r.reset_s, 24); /* 400 tokens at 1000/min */
    /* the turn's actual count overdraws: the balance goes to -500 */
    ratelimit_debit(rl, RATELIMIT_TOKENS, "key", NULL, 1100, T0);
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0, &r);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_s, 90);       /* 1500 tokens missing */
    assert_int_equal(r.retry_after_s, 31); /* 501 tokens to reach one: 30060 ms */
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0 + 30059, &r);
    assert_false(r.allowed);
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0 + 30060, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 1);
    /* checks never consume */
    for (int i = 0; i < 10; i++) {
        ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0 + 30060, &r);
        assert_true(r.allowed);
    }
    /* debits of nothing, or with the limit off, change nothing */
    ratelimit_debit(rl, RATELIMIT_TOKENS, "key", NULL, 0, T0 + 30060);
    ratelimit_debit(rl, RATELIMIT_TOKENS, "key", NULL, -50, T0 + 30060);
    ratelimit_spec off = spec("off");
    ratelimit_debit(rl, RATELIMIT_TOKENS, "key", &off, 1000000, T0 + 30060);
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0 + 30060, &r);
    assert_int_equal(r.remaining, 1);
    /* a huge debit saturates without overflow and refills in bounded arithmetic */
    ratelimit_debit(rl, RATELIMIT_TOKENS, "key", NULL, INT64_MAX, T0 + 30060);
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, T0 + 30060, &r);
    assert_false(r.allowed);
    assert_true(r.retry_after_s > 0);
    ratelimit_check(rl, RATELIMIT_TOKENS, "key", NULL, INT64_MAX / 2, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 1000);
    /* debiting a key that has no bucket yet creates it */
    ratelimit_debit(rl, RATELIMIT_TOKENS, "new", NULL, 2000, T0);
    ratelimit_check(rl, RATELIMIT_TOKENS, "new", NULL, T0, &r);
    assert_false(r.allowed);
    assert_int_equal(ratelimit_size(rl), 2);
    ratelimit_free(rl);
}

/* ---- per-key limits, kinds ------------------------------------------------------- */

static void test_overrides_and_kinds(void **state)
{
    (void)state;
    ratelimit *rl = limiter("2/minute", "100/minute", 100);
    ratelimit_spec vip = spec("5/minute");
    ratelimit_result r;
    int allowed = 0;
    for (int i = 0; i < 10; i++) {
        ratelimit_check(rl, RATELIMIT_REQUESTS, "vip", &vip, T0, &r);
        allowed += r.allowed;
        assert_int_equal(r.limit, 5);
    }
    assert_int_equal(allowed, 5);
    allowed = 0;
    for (int i = 0; i < 10; i++)
        allowed += check(rl, "plain", T0).allowed;
    assert_int_equal(allowed, 2);

    /* an override of "off" exempts the key */
    ratelimit_spec off = spec("off");
    for (int i = 0; i < 10; i++) {
        ratelimit_check(rl, RATELIMIT_REQUESTS, "internal", &off, T0, &r);
        assert_true(r.allowed);
        assert_false(r.limited);
    }

    /* a key's limit changes: the balance carries over in tokens, clamped to the new capacity */
    ratelimit_spec ten = spec("10/minute"), five = spec("5/minute"), twenty = spec("20/minute"),
                   hourly = spec("120/hour");
    ratelimit_check(rl, RATELIMIT_REQUESTS, "chg", &ten, T0, &r);
    ratelimit_check(rl, RATELIMIT_REQUESTS, "chg", &ten, T0, &r);
    assert_int_equal(r.remaining, 8);
    ratelimit_check(rl, RATELIMIT_REQUESTS, "chg", &twenty, T0, &r);
    assert_int_equal(r.limit, 20);
    assert_int_equal(r.remaining, 7); /* 8 left, not 18: a raised limit grants no instant burst */
    ratelimit_check(rl, RATELIMIT_REQUESTS, "chg", &hourly, T0, &r);
    assert_int_equal(r.limit, 120);
    assert_int_equal(r.remaining, 6); /* another window: still counted in tokens */
    ratelimit_check(rl, RATELIMIT_REQUESTS, "chg", &five, T0, &r);
    assert_int_equal(r.remaining, 4); /* 6 clamps to the capacity 5, minus this one */

    /* the two kinds are separate buckets, even for the same key */
    ratelimit_debit(rl, RATELIMIT_TOKENS, "plain", NULL, 150, T0);
    ratelimit_check(rl, RATELIMIT_TOKENS, "plain", NULL, T0, &r);
    assert_false(r.allowed);
    assert_int_equal(r.limit, 100);
    ratelimit_check(rl, RATELIMIT_REQUESTS, "fresh", NULL, T0, &r);
    assert_true(r.allowed);
    ratelimit_check(rl, RATELIMIT_TOKENS, "fresh", NULL, T0, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 100);

    /* NULL key is the empty key */
    assert_true(check(rl, NULL, T0).allowed);
    assert_true(check(rl, "", T0).allowed);
    assert_false(check(rl, NULL, T0).allowed);
    ratelimit_free(rl);
}

/* Keys longer than RATELIMIT_MAX_KEY that share their stored prefix stay distinct. */
static void test_long_keys(void **state)
{
    (void)state;
    ratelimit *rl = limiter("1/hour", "off", 100);
    char a[400], b[400];
    memset(a, 'x', sizeof a - 1);
    a[sizeof a - 1] = '\0';
    memcpy(b, a, sizeof b);
    b[sizeof b - 2] = 'y';
    assert_true(check(rl, a, T0).allowed);
    assert_true(check(rl, b, T0).allowed);
    assert_false(check(rl, a, T0).allowed);
    assert_false(check(rl, b, T0).allowed);
    assert_int_equal(ratelimit_size(rl), 2);
    ratelimit_free(rl);
}

/* ---- bounded memory ---------------------------------------------------------------- */

static void test_eviction_bound(void **state)
{
    (void)state;
    ratelimit *rl = limiter("1/hour", "off", 64);
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_true(check(rl, key, T0 + i).allowed);
        assert_true(ratelimit_size(rl) <= 64);
    }
    assert_int_equal(ratelimit_size(rl), 64);
    /* no bucket was idle: the least recently used went first, so the last 64 are kept */
    for (int i = 1000 - 64; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_false(check(rl, key, T0 + 1000).allowed);
    }
    ratelimit_free(rl);
}

static void test_eviction_idle_first(void **state)
{
    (void)state;
    ratelimit *rl = limiter("5/second", "off", 8);
    ratelimit_spec sticky = spec("2/hour");
    ratelimit_result r;
    char key[32];
    /* Oldest: 4 buckets that stay non-full for half an hour. */
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "sticky%d", i);
        ratelimit_check(rl, RATELIMIT_REQUESTS, key, &sticky, T0, &r);
        assert_int_equal(r.remaining, 1);
    }
    /* Newer: 4 buckets that are full again 200 ms later. */
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "idle%d", i);
        assert_true(check(rl, key, T0 + 10).allowed);
    }
    assert_int_equal(ratelimit_size(rl), 8);
    /* At T0+1000 the idle ones are full: the newcomers must evict them, not the
     * least recently used (sticky) ones. */
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "new%d", i);
        assert_true(check(rl, key, T0 + 1000).allowed);
        assert_int_equal(ratelimit_size(rl), 8);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "sticky%d", i);
        ratelimit_check(rl, RATELIMIT_REQUESTS, key, &sticky, T0 + 1001, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 0); /* the bucket survived: a new one would say 1 */
    }
    /* Nothing is idle now (new* refill at T0+1200): the least recently used goes,
     * one of new* (used at T0+1000), never a sticky one (T0+1001). */
    assert_true(check(rl, "late", T0 + 1002).allowed);
    assert_int_equal(ratelimit_size(rl), 8);
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "sticky%d", i);
        ratelimit_check(rl, RATELIMIT_REQUESTS, key, &sticky, T0 + 1003, &r);
        assert_false(r.allowed);
    }
    ratelimit_free(rl);

    /* A tokens bucket below zero is not idle, however old: forgetting it would
     * hand its owner a full budget. */
    rl = limiter("5/second", "1000/minute", 2);
    ratelimit_debit(rl, RATELIMIT_TOKENS, "spender", NULL, 5000, T0);
    assert_true(check(rl, "brief", T0 + 1).allowed);
    assert_true(check(rl, "newcomer", T0 + 1000).allowed); /* "brief" is idle by now */
    ratelimit_check(rl, RATELIMIT_TOKENS, "spender", NULL, T0 + 1000, &r);
    assert_false(r.allowed);
    assert_int_equal(ratelimit_size(rl), 2);
    ratelimit_free(rl);
}

/* ---- concurrency ---------------------------------------------------------------------- */

#define THREADS 8

typedef struct {
    ratelimit *rl;
    int id;
    int allowed;
    int64_t now;
} hammer_arg;

static void *hammer_one_key(void *argp)
{
    hammer_arg *a = argp;
    for (int i = 0; i < 5000; i++)
        a->allowed += check(a->rl, "hot", a->now).allowed;
    return NULL;
}

static void test_concurrent_one_key(void **state)
{
    (void)state;
    ratelimit *rl = limiter("1000/hour", "off", 16);
    pthread_t t[THREADS];
    hammer_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (hammer_arg){ rl, i, 0, T0 };
        assert_int_equal(pthread_create(&t[i], NULL, hammer_one_key, &a[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        total += a[i].allowed;
    }
    assert_int_equal(total, 1000);
    /* 1000/hour refills one token every 3600 ms */
    for (int i = 0; i < THREADS; i++)
        a[i] = (hammer_arg){ rl, i, 0, T0 + 3600 * 3 };
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer_one_key, &a[i]), 0);
    total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        total += a[i].allowed;
    }
    assert_int_equal(total, 3);
    ratelimit_free(rl);
}

static void *hammer_many_keys(void *argp)
{
    hammer_arg *a = argp;
    unsigned seed = (unsigned)a->id * 2654435761u;
    char key[32];
    for (int i = 0; i < 20000; i++) {
        seed = seed * 1103515245u + 12345u;
        snprintf(key, sizeof key, "c%u", (seed >> 8) % 500);
        int64_t now = T0 + i; /* every thread's clock moves, slightly out of step */
        if (i % 3 == 0)
            ratelimit_debit(a->rl, RATELIMIT_TOKENS, key, NULL, 7, now);
        else
            a->allowed += check(a->rl, key, now).allowed;
    }
    return NULL;
}

static void test_concurrent_eviction(void **state)
{
    (void)state;
    ratelimit *rl = limiter("3/second", "100/minute", 40);
    pthread_t t[THREADS];
    hammer_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (hammer_arg){ rl, i, 0, 0 };
        assert_int_equal(pthread_create(&t[i], NULL, hammer_many_keys, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_true(ratelimit_size(rl) <= 40);
    assert_true(ratelimit_size(rl) > 0);
    ratelimit_free(rl);
}

/* ---- headers ---------------------------------------------------------------------------- */

typedef struct {
    int n;
    char names[8][32];
    char values[8][32];
} hdrs;

static void collect(void *ud, const char *name, const char *value)
{
    hdrs *h = ud;
    assert_true(h->n < 8);
    snprintf(h->names[h->n], sizeof h->names[h->n], "%s", name);
    snprintf(h->values[h->n], sizeof h->values[h->n], "%s", value);
    h->n++;
}

static void test_headers(void **state)
{
    (void)state;
    ratelimit *rl = limiter("2/minute", "off", 10);
    hdrs h = { 0 };
    ratelimit_result r = check(rl, "h", T0);
    ratelimit_headers(&r, collect, &h);
    assert_int_equal(h.n, 3);
    assert_string_equal(h.names[0], "RateLimit-Limit");
    assert_string_equal(h.values[0], "2");
    assert_string_equal(h.names[1], "RateLimit-Remaining");
    assert_string_equal(h.values[1], "1");
    assert_string_equal(h.names[2], "RateLimit-Reset");
    assert_string_equal(h.values[2], "30");
    check(rl, "h", T0);
    r = check(rl, "h", T0 + 1000);
    memset(&h, 0, sizeof h);
    ratelimit_headers(&r, collect, &h);
    assert_int_equal(h.n, 4);
    assert_string_equal(h.values[1], "0");
    assert_string_equal(h.values[2], "59");
    assert_string_equal(h.names[3], "Retry-After");
    assert_string_equal(h.values[3], "29");
    /* a limit that is off sends nothing */
    ratelimit_check(rl, RATELIMIT_TOKENS, "h", NULL, T0, &r);
    memset(&h, 0, sizeof h);
    ratelimit_headers(&r, collect, &h);
    assert_int_equal(h.n, 0);
    ratelimit_free(rl);
    ratelimit_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_refill),        cmocka_unit_test(test_remaining_reset_retry),
        cmocka_unit_test(test_tokens_debit),        cmocka_unit_test(test_overrides_and_kinds),
        cmocka_unit_test(test_long_keys),           cmocka_unit_test(test_eviction_bound),
        cmocka_unit_test(test_eviction_idle_first), cmocka_unit_test(test_concurrent_one_key),
        cmocka_unit_test(test_concurrent_eviction), cmocka_unit_test(test_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
