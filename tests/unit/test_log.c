/*
 * test_log.c: core/log.h's writer thread.
 *
 * stderr is pointed at a pipe the test reads. Without the writer, a line is
 * on the pipe when chat_log returns. With it, chat_log never waits for the
 * reader: with the pipe full and nobody reading, thousands of lines are
 * logged at once (an alarm fails the test if one blocks), the ring's overflow
 * is dropped and counted, and once the reader comes back every line that was
 * queued arrives, whole and in order, followed by the writer's "log lines
 * dropped" report.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

static int saved_stderr = -1;
static int pipe_rd = -1;

/* stderr -> a new pipe of at most 4 KiB (so that it fills fast). */
static void redirect_stderr(void)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    (void)fcntl(p[1], F_SETPIPE_SZ, 4096);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
    close(p[1]);
    pipe_rd = p[0];
}

static void restore_stderr(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    close(pipe_rd);
    saved_stderr = pipe_rd = -1;
}

struct reader {
    char *buf;
    size_t len, cap;
};

/* Reads the pipe until EOF (every writer closed). */
static void *read_all(void *arg)
{
    struct reader *r = arg;
    for (;;) {
        if (r->cap - r->len < 65536) {
            r->cap = r->cap * 2 + 65536;
            r->buf = realloc(r->buf, r->cap + 1);
            assert_non_null(r->buf);
        }
        ssize_t n = read(pipe_rd, r->buf + r->len, r->cap - r->len);
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    r->buf[r->len] = '\0';
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_log: chat_log blocked\n";
    ssize_t ignored = write(saved_stderr, msg, sizeof msg - 1);
    (void)ignored;
    _exit(1);
}

static void test_direct_write_without_the_writer(void **state)
{
    (void)state;
    redirect_stderr();
    chat_log(LOG_WARN, "direct", json_pack("{s:i}", "n", 7));
    char buf[512];
    ssize_t n = read(pipe_rd, buf, sizeof buf - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"msg\":\"direct\""));
    assert_non_null(strstr(buf, "\"n\":7"));
    assert_int_equal(buf[n - 1], '\n');
    restore_stderr();
}

static void test_a_stalled_reader_costs_lines_not_waits(void **state)
{
    (void)state;
    redirect_stderr();
    assert_int_equal(chat_log_start(16 * 1024), CHAT_OK);
    signal(SIGALRM, on_alarm);
    alarm(20);
    /* Nobody reads: the pipe fills at 4 KiB, the ring at 16 KiB; the rest
     * must be dropped, without a wait. */
    enum { LINES = 5000 };
    for (int i = 0; i < LINES; i++)
        chat_log(LOG_WARN, "line", json_pack("{s:i,s:s}", "seq", i, "pad", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    alarm(0);
    uint64_t dropped = chat_log_dropped();
    assert_true(dropped > 0);
    assert_true(dropped < LINES);

    /* The reader comes back; stop drains and joins the writer. */
    struct reader r = { 0 };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, read_all, &r), 0);
    chat_log_stop();
    chat_log(LOG_WARN, "after stop", NULL); /* direct again */
    dup2(saved_stderr, STDERR_FILENO);      /* the pipe's last writer goes: EOF */
    pthread_join(th, NULL);
    close(saved_stderr);
    close(pipe_rd);
    saved_stderr = pipe_rd = -1;

    /* Whole lines, seq increasing, as many as were not dropped, the report,
     * then the line written after stop. */
    int last = -1, got = 0, reports = 0;
    bool after = false;
    for (char *line = strtok(r.buf, "\n"); line; line = strtok(NULL, "\n")) {
        assert_int_equal(line[0], '{');
        assert_int_equal(line[strlen(line) - 1], '}');
        assert_false(after);
        const char *seq = strstr(line, "\"seq\":");
        if (seq) {
            int v = atoi(seq + 6);
            assert_true(v > last);
            last = v;
            got++;
        } else if (strstr(line, "log lines dropped")) {
            reports++;
            assert_non_null(strstr(line, "\"dropped\":"));
        } else {
            assert_non_null(strstr(line, "after stop"));
            after = true;
        }
    }
    assert_true(after);
    assert_true(reports >= 1);
    assert_int_equal((uint64_t)got + dropped, LINES);
    free(r.buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_write_without_the_writer),
        cmocka_unit_test(test_a_stalled_reader_costs_lines_not_waits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
