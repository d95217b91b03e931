/*
 * test_auth_cache.c: unit tests for the negative cache of unknown API key
 * hashes (src/guard/auth_cache.h): lifetime to the millisecond, the fixed
 * bound under a flood of distinct hashes, replacement within a set, and
 * input that is not a hash.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guard/auth.h"
#include "guard/auth_cache.h"

#define T0 ((int64_t)1700000000000)

static void hash_of(int i, char out[65])
{
    char secret[32];
    snprintf(secret, sizeof secret, "junk-%d", i);
    auth_sha256_hex(secret, out);
}

static void test_lifetime(void **state)
{
    (void)state;
    auth_negcache *c = auth_negcache_new(AUTH_NEGCACHE_ENTRIES, AUTH_NEGCACHE_TTL_MS);
    char h[65], other[65];
    hash_of(1, h);
    hash_of(2, other);
    assert_false(auth_negcache_contains(c, h, T0));
    auth_negcache_add(c, h, T0);
    assert_true(auth_negcache_contains(c, h, T0));
    assert_true(auth_negcache_contains(c, h, T0 + AUTH_NEGCACHE_TTL_MS - 1));
    assert_false(auth_negcache_contains(c, h, T0 + AUTH_NEGCACHE_TTL_MS)); /* a key created meanwhile now works */
    assert_false(auth_negcache_contains(c, other, T0));
    /* Adding again restarts the lifetime. */
    auth_negcache_add(c, h, T0 + 1000);
    assert_true(auth_negcache_contains(c, h, T0 + AUTH_NEGCACHE_TTL_MS + 999));
    assert_false(auth_negcache_contains(c, h, T0 + AUTH_NEGCACHE_TTL_MS + 1000));
    assert_int_equal(auth_negcache_live(c, T0 + 1000), 1);
    auth_negcache_free(c);
    auth_negcache_free(NULL);
    assert_false(auth_negcache_contains(NULL, h, T0));
    auth_negcache_add(NULL, h, T0);
}

static void test_not_a_hash(void **state)
{
    (void)state;
    auth_negcache *c = auth_negcache_new(16, 1000);
    char h[65];
    hash_of(3, h);
    char upper[65];
    memcpy(upper, h, sizeof upper);
    for (int i = 0; i < 64; i++)
        if (upper[i] >= 'a' && upper[i] <= 'f')
            upper[i] = (char)(upper[i] - 'a' + 'A');
    const char *bad[] = { NULL, "", "abc", upper, "zz" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        auth_negcache_add(c, bad[i], T0);
        assert_false(auth_negcache_contains(c, bad[i], T0));
    }
    char longer[80];
    snprintf(longer, sizeof longer, "%s00", h);
    auth_negcache_add(c, longer, T0);
    assert_false(auth_negcache_contains(c, longer, T0));
    assert_false(auth_negcache_contains(c, h, T0)); /* the 64-digit prefix was not added */
    assert_int_equal(auth_negcache_live(c, T0), 0);
    auth_negcache_free(c);
}

static void test_bounded_under_a_flood(void **state)
{
    (void)state;
    auth_negcache *c = auth_negcache_new(AUTH_NEGCACHE_ENTRIES, AUTH_NEGCACHE_TTL_MS);
    assert_int_equal(auth_negcache_capacity(c), AUTH_NEGCACHE_ENTRIES);
    char h[65];
    for (int i = 0; i < 100000; i++) {
        hash_of(i, h);
        auth_negcache_add(c, h, T0 + i / 100);
        assert_true(auth_negcache_contains(c, h, T0 + i / 100)); /* the newest is always kept */
    }
    assert_true(auth_negcache_live(c, T0 + 1000) <= AUTH_NEGCACHE_ENTRIES);
    assert_true(auth_negcache_live(c, T0 + 1000) > AUTH_NEGCACHE_ENTRIES / 2);
    /* The oldest entries were the ones replaced. */
    hash_of(0, h);
    assert_false(auth_negcache_contains(c, h, T0 + 1000));
    auth_negcache_free(c);
    /* Sizes round up to whole sets; tiny caches still work. */
    c = auth_negcache_new(5, 1000);
    assert_int_equal(auth_negcache_capacity(c), 2 * AUTH_NEGCACHE_WAYS);
    auth_negcache_free(c);
    c = auth_negcache_new(0, 0);
    assert_int_equal(auth_negcache_capacity(c), AUTH_NEGCACHE_WAYS);
    hash_of(7, h);
    auth_negcache_add(c, h, T0);
    assert_true(auth_negcache_contains(c, h, T0));
    assert_false(auth_negcache_contains(c, h, T0 + 1)); /* ttl 0 became 1 ms */
    auth_negcache_free(c);
}

static void test_replacement_prefers_expired_then_oldest(void **state)
{
    (void)state;
    /* One set: every hash lands in it. */
    auth_negcache *c = auth_negcache_new(AUTH_NEGCACHE_WAYS, 1000);
    char h[AUTH_NEGCACHE_WAYS + 2][65];
    for (int i = 0; i < AUTH_NEGCACHE_WAYS + 2; i++)
        hash_of(100 + i, h[i]);
    for (int i = 0; i < AUTH_NEGCACHE_WAYS; i++)
        auth_negcache_add(c, h[i], T0 + i * 100);
    /* Full: the next one replaces the oldest (h[0]). */
    auth_negcache_add(c, h[AUTH_NEGCACHE_WAYS], T0 + 500);
    assert_false(auth_negcache_contains(c, h[0], T0 + 500));
    for (int i = 1; i <= AUTH_NEGCACHE_WAYS; i++)
        assert_true(auth_negcache_contains(c, h[i], T0 + 500));
    /* At T0 + 1150, h[1] (added at T0 + 100) expired: it is the one replaced, though h[2] is alive. */
    auth_negcache_add(c, h[AUTH_NEGCACHE_WAYS + 1], T0 + 1150);
    assert_true(auth_negcache_contains(c, h[2], T0 + 1150));
    assert_true(auth_negcache_contains(c, h[AUTH_NEGCACHE_WAYS + 1], T0 + 1150));
    assert_int_equal(auth_negcache_live(c, T0 + 1150), AUTH_NEGCACHE_WAYS);
    auth_negcache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifetime),
        cmocka_unit_test(test_not_a_hash),
        cmocka_unit_test(test_bounded_under_a_flood),
        cmocka_unit_test(test_replacement_prefers_expired_then_oldest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
