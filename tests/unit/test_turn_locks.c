/*
 * test_turn_locks.c: store/turn_locks.h beyond what the store suites cover:
 * the table stays about the size of the live locks. Locks that expired
 * unreleased (a lost turn) go when the table would grow, pinned ones (a commit
 * in flight) never do.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "store/turn_locks.h"

static void test_expired_locks_go_before_the_table_grows(void **state)
{
    (void)state;
    turn_locks *t = turn_locks_new();
    char sid[32];
    for (int i = 0; i < 64; i++) { /* the initial bucket count: no growth yet */
        snprintf(sid, sizeof sid, "lost-%d", i);
        assert_int_equal(turn_locks_acquire(t, sid, "tok", 0, 10), CHAT_OK);
    }
    assert_int_equal(turn_locks_pin(t, "lost-0", "tok"), CHAT_OK); /* a commit in flight */
    assert_int_equal(turn_locks_count(t), 64);
    /* Later, one more: the 63 expired unpinned locks are swept, not doubled. */
    assert_int_equal(turn_locks_acquire(t, "new", "tok", 100, 10), CHAT_OK);
    assert_int_equal(turn_locks_count(t), 2);
    assert_true(turn_locks_pinned(t, "lost-0"));
    assert_true(turn_locks_live(t, "new", 100));
    assert_false(turn_locks_live(t, "lost-1", 100));
    /* All live: the table grows and keeps them. */
    for (int i = 0; i < 200; i++) {
        snprintf(sid, sizeof sid, "live-%d", i);
        assert_int_equal(turn_locks_acquire(t, sid, "tok", 100, 1000), CHAT_OK);
    }
    assert_int_equal(turn_locks_count(t), 202);
    turn_locks_settle(t, "lost-0", "tok", true);
    assert_int_equal(turn_locks_count(t), 201);
    turn_locks_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expired_locks_go_before_the_table_grows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
