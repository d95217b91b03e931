/*
 * test_heartbeat.c: the SSE heartbeat's decision (api/chat_run.h
 * chat_heartbeat_wait_ms). The timer that asks runs on the event loop's coarse
 * clock, so it can ask a few ms before a full interval of silence by the
 * precise clock; it must then wait out only the rest of the interval, never a
 * whole new one, or a stream stays silent for two intervals and a proxy with
 * an idle timeout of one cuts it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "api/chat_run.h"

static void full_interval_sends(void **state)
{
    (void)state;
    assert_int_equal(chat_heartbeat_wait_ms(1000, 1000), 0);
    assert_int_equal(chat_heartbeat_wait_ms(5000, 1000), 0);
    assert_int_equal(chat_heartbeat_wait_ms(10000, 10000), 0);
}

static void coarse_clock_short_by_a_tick_sends(void **state)
{
    (void)state;
    /* a 4 ms or 10 ms kernel tick behind */
    assert_int_equal(chat_heartbeat_wait_ms(996, 1000), 0);
    assert_int_equal(chat_heartbeat_wait_ms(990, 1000), 0);
    assert_int_equal(chat_heartbeat_wait_ms(9990, 10000), 0);
}

static void recent_write_waits_the_rest(void **state)
{
    (void)state;
    assert_int_equal(chat_heartbeat_wait_ms(0, 1000), 1000);
    assert_int_equal(chat_heartbeat_wait_ms(300, 1000), 700);
    assert_int_equal(chat_heartbeat_wait_ms(900, 1000), 100);
    assert_int_equal(chat_heartbeat_wait_ms(2000, 10000), 8000);
}

static void every_wait_ends_by_the_interval(void **state)
{
    (void)state;
    /* Whatever the silence so far, the next heartbeat is due no later than
     * one interval after the last byte, and a wait is never zero or negative. */
    for (int64_t interval = 1; interval <= 20000; interval = interval * 3 + 1)
        for (int64_t idle = 0; idle <= 2 * interval; idle++) {
            int64_t w = chat_heartbeat_wait_ms(idle, interval);
            assert_true(w >= 0);
            if (w)
                assert_true(idle + w == interval);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_interval_sends),
        cmocka_unit_test(coarse_clock_short_by_a_tick_sends),
        cmocka_unit_test(recent_write_waits_the_rest),
        cmocka_unit_test(every_wait_ends_by_the_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
