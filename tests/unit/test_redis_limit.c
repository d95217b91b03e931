/*
 * test_redis_limit.c: loop-level tests of the Redis-backed limiter
 * (src/guard/redis_limit.h) against a real redis-server.
 *
 * The tests start redis-server themselves (Debian's package) on 127.0.0.1 and
 * a free port, without persistence, and stop it by PID; a test that kills,
 * restarts or freezes (SIGSTOP) Redis starts its own. Each "instance" is a
 * redis_limit on its own event_base with its own local limiter, so two of
 * them in one test are two chatd instances sharing one Redis. The loop is
 * driven by hand until the callback under test has run, with a bound.
 *
 * Redis's clock is real: refill is checked with small windows (5/second) and
 * short sleeps, and other values use windows long enough that the few
 * milliseconds a test takes cannot change a rounded result.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "core/metrics.h"
#include "core/util.h"
#include "guard/metrics.h"
#include "guard/ratelimit.h"
#include "guard/redis_limit.h"

/* ---- redis-server ------------------------------------------------------------- */

typedef struct server {
    pid_t pid;
    int port;
    bool stopped; /* SIGSTOPped */
} server;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *admin_connect(int port)
{
    struct timeval tv = { 0, 200000 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Starts redis-server on port (0: a free one) and waits until it answers PING. */
static bool server_try_start(server *s, int port, const char *extra_name, const char *extra_value)
{
    s->port = port ? port : free_port();
    s->stopped = false;
    char p[16];
    snprintf(p, sizeof p, "%d", s->port);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        if (extra_name)
            execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                   "no", "--dir", "/tmp", "--loglevel", "warning", extra_name, extra_value, (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                   "no", "--dir", "/tmp", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    int64_t deadline = chat_mono_ms() + 5000;
    while (chat_mono_ms() < deadline) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return false; /* exited: port taken, or not installed */
        }
        redisContext *c = admin_connect(s->port);
        if (c) {
            redisReply *r = extra_name ? redisCommand(c, "AUTH %s", extra_value) : redisCommand(c, "PING");
            bool ok = r && r->type != REDIS_REPLY_ERROR;
            freeReplyObject(r);
            redisFree(c);
            if (ok)
                return true;
        }
        usleep(10000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return false;
}

static void server_start_opt(server *s, int port, const char *extra_name, const char *extra_value)
{
    for (int attempt = 0; attempt < 5; attempt++)
        if (server_try_start(s, port, extra_name, extra_value))
            return;
    fail_msg("cannot start redis-server (is Debian's redis-server installed?)");
}

static void server_start(server *s, int port)
{
    server_start_opt(s, port, NULL, NULL);
}

static void server_stop(server *s)
{
    if (s->pid <= 0)
        return;
    if (s->stopped)
        kill(s->pid, SIGCONT);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    s->stopped = false;
}

static void server_freeze(server *s, bool on)
{
    assert_int_equal(kill(s->pid, on ? SIGSTOP : SIGCONT), 0);
    s->stopped = on;
}

/* One blocking admin command (test code only, never on a loop under test). */
static long long admin_int(const server *s, const char *fmt, ...)
{
    redisContext *c = admin_connect(s->port);
    assert_non_null(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10)
                                                  : -999999;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static void admin_ok(const server *s, const char *cmd)
{
    redisContext *c = admin_connect(s->port);
    assert_non_null(c);
    redisReply *r = redisCommand(c, cmd);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(c);
}

/* True if INFO commandstats contains needle. */
static bool info_has(const server *s, const char *needle)
{
    redisContext *c = admin_connect(s->port);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "INFO commandstats");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    bool found = strstr(r->str, needle) != NULL;
    freeReplyObject(r);
    redisFree(c);
    return found;
}

/* ---- instances ---------------------------------------------------------------- */

typedef struct inst {
    struct event_base *base;
    struct event *tick; /* keeps EVLOOP_ONCE from sleeping long */
    ratelimit *local;
    redis_limit *rl;
} inst;

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static ratelimit_spec spec(const char *text)
{
    ratelimit_spec s;
    char err[200];
    if (ratelimit_spec_parse(text, &s, err, sizeof err) != CHAT_OK)
        fail_msg("spec %s: %s", text, err);
    return s;
}

static redis_limit_config test_cfg(int port, const char *requests, const char *tokens)
{
    redis_limit_config cfg;
    redis_limit_config_init(&cfg);
    cfg.port = port;
    cfg.requests = spec(requests);
    cfg.tokens = spec(tokens);
    /* Generous: replies from a local Redis take well under a millisecond, and
     * a sanitizer or valgrind build must not fail open by accident. The
     * deadline tests set their own. */
    cfg.deadline_ms = 500;
    cfg.backoff_min_ms = 20;
    cfg.backoff_max_ms = 200;
    return cfg;
}

static void inst_open_cfg(inst *in, const redis_limit_config *cfg)
{
    in->base = event_base_new();
    assert_non_null(in->base);
    in->tick = event_new(in->base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = { 0, 5000 };
    event_add(in->tick, &tv);
    ratelimit_config lc = { cfg->requests, cfg->tokens, 1000 };
    in->local = ratelimit_new(&lc);
    in->rl = redis_limit_new(in->base, cfg, in->local);
}

static void inst_open(inst *in, int port, const char *requests, const char *tokens)
{
    redis_limit_config cfg = test_cfg(port, requests, tokens);
    inst_open_cfg(in, &cfg);
}

static void inst_close(inst *in)
{
    redis_limit_free(in->rl);
    ratelimit_free(in->local);
    event_free(in->tick);
    event_base_free(in->base);
    memset(in, 0, sizeof *in);
}

/* Runs in's loop until *flag is non-zero or timeout_ms passed. */
static void run_until(inst *in, const int *flag, int timeout_ms)
{
    int64_t deadline = chat_mono_ms() + timeout_ms;
    while ((!flag || !*flag) && chat_mono_ms() < deadline)
        event_base_loop(in->base, EVLOOP_ONCE);
}

static void run_for(inst *in, int ms)
{
    run_until(in, NULL, ms);
}

static void wait_connected(inst *in, int timeout_ms)
{
    int64_t deadline = chat_mono_ms() + timeout_ms;
    while (!redis_limit_connected(in->rl) && chat_mono_ms() < deadline)
        event_base_loop(in->base, EVLOOP_ONCE);
    assert_true(redis_limit_connected(in->rl));
}

typedef struct answer {
    int calls;
    ratelimit_result res;
    int64_t at_ms;
} answer;

static void on_answer(void *ud, const ratelimit_result *res)
{
    answer *a = ud;
    a->calls++;
    a->res = *res;
    a->at_ms = chat_mono_ms();
}

/* One check, run to its answer. The callback must not run inside the call. */
static ratelimit_result check_spec(inst *in, ratelimit_kind kind, const char *key, const ratelimit_spec *sp)
{
    answer a = { 0 };
    redis_limit_req *h = redis_limit_check(in->rl, kind, key, sp, on_answer, &a);
    assert_non_null(h);
    assert_int_equal(a.calls, 0);
    run_until(in, &a.calls, 3000);
    assert_int_equal(a.calls, 1);
    return a.res;
}

static ratelimit_result check(inst *in, const char *key)
{
    return check_spec(in, RATELIMIT_REQUESTS, key, NULL);
}

static redis_limit_stats stats(const inst *in)
{
    redis_limit_stats st;
    redis_limit_get_stats(in->rl, &st);
    return st;
}

static uint64_t fallback_metric(void)
{
    char *text = metrics_render(NULL);
    const char *name = "\nchatd_ratelimit_redis_fallback_total ";
    const char *p = strstr(text, name);
    assert_non_null(p);
    uint64_t v = strtoull(p + strlen(name), NULL, 10);
    free(text);
    return v;
}

static void expect_result(const ratelimit_result *r, bool allowed, int64_t limit, int64_t remaining, int64_t reset_s,
                          int64_t retry_s)
{
    assert_true(r->limited);
    assert_int_equal(r->allowed, allowed);
    assert_int_equal(r->limit, limit);
    assert_int_equal(r->remaining, remaining);
    assert_int_equal(r->reset_s, reset_s);
    assert_int_equal(r->retry_after_s, retry_s);
}

/* ---- the shared server ---------------------------------------------------------- */

static server shared;

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    metrics_def *defs[] = { &guard_metric_redis_fallback };
    if (metrics_init(defs, 1) != CHAT_OK)
        return -1;
    server_start(&shared, 0);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    server_stop(&shared);
    metrics_shutdown();
    return 0;
}

static int flush(void **state)
{
    (void)state;
    admin_ok(&shared, "FLUSHALL");
    return 0;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_parse_url(void **state)
{
    (void)state;
    redis_limit_config c;
    char err[256];
    redis_limit_config_init(&c);
    assert_int_equal(redis_limit_parse_url("redis://cache.internal", &c, err, sizeof err), CHAT_OK);
    assert_string_equal(c.host, "cache.internal");
    assert_int_equal(c.port, 6379);
    assert_int_equal(c.db, 0);
    assert_string_equal(c.password, "");

    assert_int_equal(redis_limit_parse_url("redis://bob:p%40ss%3Aw@10.0.0.5:7000/3", &c, err, sizeof err), CHAT_OK);
    assert_string_equal(c.host, "10.0.0.5");
    assert_int_equal(c.port, 7000);
    assert_int_equal(c.db, 3);
    assert_string_equal(c.username, "bob");
    assert_string_equal(c.password, "p@ss:w");

    assert_int_equal(redis_limit_parse_url("redis://:secret@[::1]:6380/", &c, err, sizeof err), CHAT_OK);
    assert_string_equal(c.host, "::1");
    assert_int_equal(c.port, 6380);
    assert_string_equal(c.username, "");
    assert_string_equal(c.password, "secret");
    assert_int_equal(c.db, 0);

    /* Failures leave cfg alone and never echo the password. */
    static const char *const bad[] = {
        "",
        "http://h",
        "redis://",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:12x",
        "redis://h/x",
        "redis://h?timeout=1",
        "redis://[::1",
        "redis://::1:6379",
        "redis://:secret%zz@h",
        "redis://h h",
        "rediss://h",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(redis_limit_parse_url(bad[i], &c, err, sizeof err), CHAT_EINVAL);
        assert_true(strlen(err) > 10);
        assert_null(strstr(err, "secret"));
        assert_string_equal(c.host, "::1");
        assert_string_equal(c.password, "secret");
    }
    assert_int_equal(redis_limit_parse_url(NULL, &c, NULL, 0), CHAT_EINVAL);
}

/* Two instances alternating on one key: exactly N allowed in total. */
static void test_shared_limit_two_instances(void **state)
{
    (void)state;
    inst a, b;
    inst_open(&a, shared.port, "10/minute", "off");
    inst_open(&b, shared.port, "10/minute", "off");
    wait_connected(&a, 3000);
    wait_connected(&b, 3000);
    int allowed = 0;
    for (int i = 0; i < 30; i++) {
        ratelimit_result r = check(i % 2 ? &b : &a, "key:shared");
        assert_true(r.limited);
        assert_int_equal(r.limit, 10);
        if (r.allowed) {
            allowed++;
            assert_int_equal(r.remaining, 10 - allowed); /* one bucket, seen by both */
        } else {
            assert_int_equal(r.remaining, 0);
            assert_int_equal(r.retry_after_s, 6);
        }
    }
    assert_int_equal(allowed, 10);
    /* The local limiters were never touched. */
    assert_int_equal(stats(&a).fallbacks + stats(&b).fallbacks, 0);
    assert_int_equal(stats(&a).redis_answers, 15);
    assert_int_equal(stats(&b).redis_answers, 15);
    assert_int_equal(ratelimit_size(a.local) + ratelimit_size(b.local), 0);
    /* Another key is another bucket. */
    assert_true(check(&a, "key:other").allowed);
    inst_close(&a);
    inst_close(&b);
}

/* remaining / reset / retry_after, compared with the local limiter doing the same. */
static void test_values_match_local(void **state)
{
    (void)state;
    inst a;
    inst_open(&a, shared.port, "3/minute", "off");
    wait_connected(&a, 3000);
    ratelimit_config lc = { spec("3/minute"), spec("off"), 100 };
    ratelimit *ref = ratelimit_new(&lc);
    const int64_t now = 1000000;

    ratelimit_result r, l;
    r = check(&a, "k");
    expect_result(&r, true, 3, 2, 20, 0);
    r = check(&a, "k");
    expect_result(&r, true, 3, 1, 40, 0);
    r = check(&a, "k");
    expect_result(&r, true, 3, 0, 60, 0);
    r = check(&a, "k");
    expect_result(&r, false, 3, 0, 60, 20);

    /* The same sequence through ratelimit.c at a fixed time, plus a per-key limit
     * and a limit change on one key (balance carried over in tokens). */
    static const char *const seq[] = { "3/minute", "3/minute", "3/minute", "3/minute", "7/hour",
                                       "7/hour",   "2/second", "2/second", "100/hour", "100/hour" };
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        ratelimit_spec s = spec(seq[i]);
        r = check_spec(&a, RATELIMIT_REQUESTS, "key:diff", &s);
        ratelimit_check(ref, RATELIMIT_REQUESTS, "key:diff", &s, now, &l);
        assert_int_equal(r.limited, l.limited);
        assert_int_equal(r.allowed, l.allowed);
        assert_int_equal(r.limit, l.limit);
        assert_int_equal(r.remaining, l.remaining);
        assert_int_equal(r.reset_s, l.reset_s);
        assert_int_equal(r.retry_after_s, l.retry_after_s);
    }
    /* A limit that is off is answered without Redis and without a fallback. */
    ratelimit_spec off = { 0, 0 };
    r = check_spec(&a, RATELIMIT_REQUESTS, "k", &off);
    assert_false(r.limited);
    assert_true(r.allowed);
    assert_int_equal(stats(&a).fallbacks, 0);
    ratelimit_free(ref);
    inst_close(&a);
}

/* Refill from Redis's clock: 5/second is one token every 200 ms. */
static void test_refill(void **state)
{
    (void)state;
    inst a;
    inst_open(&a, shared.port, "5/second", "off");
    wait_connected(&a, 3000);
    for (int i = 0; i < 5; i++)
        assert_true(check(&a, "refill").allowed);
    ratelimit_result r = check(&a, "refill");
    expect_result(&r, false, 5, 0, 1, 1);
    usleep(230 * 1000);
    r = check(&a, "refill");
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_false(check(&a, "refill").allowed);
    assert_int_equal(stats(&a).fallbacks, 0);
    inst_close(&a);
}

/* Tokens: a check only tests and creates nothing; debits may go negative. */
static void test_tokens_debit(void **state)
{
    (void)state;
    inst a;
    inst_open(&a, shared.port, "off", "100/minute");
    wait_connected(&a, 3000);
    ratelimit_result r = check_spec(&a, RATELIMIT_TOKENS, "tok", NULL);
    expect_result(&r, true, 100, 100, 0, 0);
    assert_int_equal(admin_int(&shared, "EXISTS chatd:rl:tokens:tok"), 0);

    redis_limit_debit(a.rl, RATELIMIT_TOKENS, "tok", NULL, 40);
    r = check_spec(&a, RATELIMIT_TOKENS, "tok", NULL); /* same connection: after the debit */
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 60);
    assert_int_equal(r.reset_s, 24); /* 40 tokens at 600 ms each */

    redis_limit_debit(a.rl, RATELIMIT_TOKENS, "tok", NULL, 110); /* balance -50 */
    r = check_spec(&a, RATELIMIT_TOKENS, "tok", NULL);
    /* 51 tokens to get back to one: 30.6 s; full again after 150 tokens: 90 s. */
    expect_result(&r, false, 100, 0, 90, 31);
    long long level = admin_int(&shared, "HGET chatd:rl:tokens:tok l");
    assert_true(level < 0);
    assert_true(level <= -50LL * 60000 + 100LL * 2000); /* -50 tokens, plus at most 2 s of refill */
    /* A requests bucket of the same key is separate; debits <= 0 do nothing. */
    redis_limit_debit(a.rl, RATELIMIT_TOKENS, "tok2", NULL, 0);
    redis_limit_debit(a.rl, RATELIMIT_TOKENS, "tok2", NULL, -5);
    r = check_spec(&a, RATELIMIT_TOKENS, "tok2", NULL);
    assert_int_equal(r.remaining, 100);
    assert_int_equal(admin_int(&shared, "EXISTS chatd:rl:tokens:tok2"), 0);
    assert_int_equal(stats(&a).fallbacks, 0);
    inst_close(&a);
}

/* Every bucket has an expiry (idle buckets disappear); keys are prefixed and bounded. */
static void test_ttl_and_keys(void **state)
{
    (void)state;
    inst a;
    inst_open(&a, shared.port, "5/second", "off");
    wait_connected(&a, 3000);
    assert_true(check(&a, "ttl").allowed);
    long long pttl = admin_int(&shared, "PTTL chatd:rl:requests:ttl");
    assert_true(pttl > 0);
    assert_true(pttl <= 300); /* full again after 200 ms, +100 */
    assert_int_equal(admin_int(&shared, "HLEN chatd:rl:requests:ttl"), 4);

    char longkey[1001];
    memset(longkey, 'x', 1000);
    longkey[1000] = '\0';
    assert_true(check(&a, longkey).allowed);
    redisContext *c = admin_connect(shared.port);
    redisReply *keys = redisCommand(c, "KEYS chatd:rl:requests:xxx*");
    assert_non_null(keys);
    assert_int_equal(keys->type, REDIS_REPLY_ARRAY);
    assert_int_equal(keys->elements, 1);
    size_t len = keys->element[0]->len;
    assert_int_equal(len, strlen("chatd:rl:requests:") + RATELIMIT_MAX_KEY + 17);
    assert_int_equal(keys->element[0]->str[strlen("chatd:rl:requests:") + RATELIMIT_MAX_KEY], '#');
    freeReplyObject(keys);
    redisFree(c);
    /* A different long key with the same first 200 bytes is a different bucket. */
    longkey[999] = 'y';
    assert_int_equal(check(&a, longkey).remaining, 4);

    usleep(350 * 1000);
    assert_int_equal(admin_int(&shared, "EXISTS chatd:rl:requests:ttl"), 0);
    inst_close(&a);
}

/* After SCRIPT FLUSH (as after a restart) EVALSHA fails with NOSCRIPT and EVAL takes over. */
static void test_noscript(void **state)
{
    (void)state;
    inst a;
    inst_open(&a, shared.port, "4/minute", "off");
    wait_connected(&a, 3000);
    run_for(&a, 20); /* SCRIPT LOAD answered */
    admin_ok(&shared, "CONFIG RESETSTAT");
    assert_int_equal(check(&a, "ns").remaining, 3);
    /* Our SHA1 is Redis's: EVALSHA hit the script cache, no EVAL was needed. */
    assert_true(info_has(&shared, "cmdstat_evalsha:calls=1,"));
    assert_false(info_has(&shared, "cmdstat_eval:"));
    admin_ok(&shared, "SCRIPT FLUSH");
    assert_int_equal(check(&a, "ns").remaining, 2);
    assert_true(info_has(&shared, "cmdstat_eval:calls=1,"));
    redis_limit_debit(a.rl, RATELIMIT_REQUESTS, "ns", NULL, 1);
    admin_ok(&shared, "SCRIPT FLUSH");
    assert_int_equal(check(&a, "ns").remaining, 0);
    assert_int_equal(stats(&a).fallbacks, 0);
    inst_close(&a);
}

/* No Redis at all: fail open to the local limiter, counted, logged once. */
static void test_down_at_start(void **state)
{
    (void)state;
    uint64_t m0 = fallback_metric();
    inst a;
    inst_open(&a, free_port(), "2/minute", "off");
    run_for(&a, 100);
    assert_false(redis_limit_connected(a.rl));
    ratelimit_result r = check(&a, "down");
    expect_result(&r, true, 2, 1, 30, 0);
    assert_true(check(&a, "down").allowed);
    r = check(&a, "down");
    expect_result(&r, false, 2, 0, 60, 30); /* the local limiter enforces the limit */
    redis_limit_debit(a.rl, RATELIMIT_REQUESTS, "down2", NULL, 2);
    assert_false(check(&a, "down2").allowed);
    redis_limit_stats st = stats(&a);
    assert_int_equal(st.fallbacks, 5);
    assert_int_equal(st.redis_answers, 0);
    assert_int_equal(st.outages, 1);
    assert_int_equal(fallback_metric() - m0, 5);
    assert_int_equal(ratelimit_size(a.local), 2);
    inst_close(&a);
}

/* A listener whose backlog is full never completes a connect (the SYNs are
 * dropped): the connect deadline gives up and retries; checks meanwhile are
 * answered locally at once. */
static void test_connect_timeout(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 0), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    int fill[3];
    for (int i = 0; i < 3; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)connect(fill[i], (struct sockaddr *)&sa, sizeof sa);
    }
    usleep(20 * 1000);

    redis_limit_config cfg = test_cfg(ntohs(sa.sin_port), "5/minute", "off");
    cfg.connect_timeout_ms = 60;
    inst a;
    inst_open_cfg(&a, &cfg);
    int64_t t0 = chat_mono_ms();
    ratelimit_result r = check(&a, "ct");
    assert_true(chat_mono_ms() - t0 < 40);
    assert_int_equal(r.remaining, 4);
    run_for(&a, 400);
    assert_false(redis_limit_connected(a.rl));
    redis_limit_stats st = stats(&a);
    assert_int_equal(st.connects, 0);
    assert_true(st.connect_failures >= 2); /* 60 ms deadline, 20..40 ms backoff */
    assert_true(st.connect_failures <= 5);
    assert_int_equal(check(&a, "ct").remaining, 3);
    assert_int_equal(stats(&a).fallbacks, 2);
    inst_close(&a);
    for (int i = 0; i < 3; i++)
        close(fill[i]);
    close(lfd);
}

/* Redis killed mid-test: fail open; restarted: shared limits again after reconnecting. */
static void test_killed_and_restarted(void **state)
{
    (void)state;
    server s;
    server_start(&s, 0);
    inst a, b;
    inst_open(&a, s.port, "4/minute", "off");
    inst_open(&b, s.port, "4/minute", "off");
    wait_connected(&a, 3000);
    wait_connected(&b, 3000);
    assert_int_equal(check(&a, "k1").remaining, 3);
    assert_int_equal(stats(&a).redis_answers, 1);

    uint64_t m0 = fallback_metric();
    server_stop(&s);
    for (int i = 0; i < 3; i++) {
        int64_t t0 = chat_mono_ms();
        ratelimit_result r = check(&a, "k1");
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 3 - i); /* the local bucket, fresh */
        assert_true(chat_mono_ms() - t0 < 400);
    }
    assert_int_equal(stats(&a).fallbacks, 3);
    assert_int_equal(stats(&a).outages, 1);
    assert_true(fallback_metric() - m0 >= 3);
    /* A worker's loop notices the closed connection by itself (b has sent nothing). */
    run_for(&a, 50);
    run_for(&b, 50);
    assert_false(redis_limit_connected(a.rl));
    assert_false(redis_limit_connected(b.rl));
    assert_int_equal(stats(&b).fallbacks, 0);

    server_start(&s, s.port);
    wait_connected(&a, 3000);
    wait_connected(&b, 3000);
    int allowed = 0;
    for (int i = 0; i < 10; i++)
        allowed += check(i % 2 ? &b : &a, "k2").allowed;
    assert_int_equal(allowed, 4);
    assert_true(stats(&a).connects >= 2);
    assert_int_equal(stats(&a).outages, 1);
    inst_close(&a);
    inst_close(&b);
    server_stop(&s);
}

/* A frozen Redis: the deadline answers locally in time; replies arriving late
 * are dropped; a server silent past stall_ms is disconnected and reconnected. */
static void test_deadline(void **state)
{
    (void)state;
    server s;
    server_start(&s, 0);
    redis_limit_config cfg = test_cfg(s.port, "5/minute", "off");
    cfg.deadline_ms = 50;
    cfg.stall_ms = 300;
    inst a;
    inst_open_cfg(&a, &cfg);
    wait_connected(&a, 3000);
    assert_true(check(&a, "d").allowed);

    server_freeze(&s, true);
    int64_t t0 = chat_mono_ms();
    answer x = { 0 }, cancelled = { 0 };
    redis_limit_check(a.rl, RATELIMIT_REQUESTS, "d", NULL, on_answer, &x);
    redis_limit_req *h = redis_limit_check(a.rl, RATELIMIT_REQUESTS, "d", NULL, on_answer, &cancelled);
    redis_limit_cancel(h); /* in flight: its reply will come after SIGCONT */
    run_until(&a, &x.calls, 1000);
    assert_int_equal(x.calls, 1);
    assert_true(x.at_ms - t0 >= 45);
    assert_true(x.at_ms - t0 <= 150);
    assert_true(x.res.allowed);
    assert_int_equal(x.res.remaining, 4); /* the local limiter's fresh bucket */
    assert_int_equal(stats(&a).deadlines, 1);
    assert_false(redis_limit_connected(a.rl)); /* degraded */

    /* Degraded: no more waiting for the deadline. */
    t0 = chat_mono_ms();
    check(&a, "d");
    assert_true(chat_mono_ms() - t0 < 40);
    assert_int_equal(stats(&a).deadlines, 1);

    /* Back before stall_ms: the late replies clear the degraded state. */
    server_freeze(&s, false);
    wait_connected(&a, 1000);
    assert_int_equal(cancelled.calls, 0);
    assert_int_equal(stats(&a).connects, 1);
    uint64_t answers = stats(&a).redis_answers;
    ratelimit_result r = check(&a, "d");
    assert_int_equal(stats(&a).redis_answers, answers + 1);
    /* Redis applied the first check and the two late ones (one answered
     * locally, one cancelled), then this one. */
    assert_int_equal(r.remaining, 1);

    /* Frozen past stall_ms: the connection is dropped and re-established. */
    server_freeze(&s, true);
    check(&a, "d");
    run_for(&a, 500);
    server_freeze(&s, false);
    int64_t deadline = chat_mono_ms() + 3000;
    while (stats(&a).redis_answers == answers + 1 && chat_mono_ms() < deadline) {
        wait_connected(&a, 3000);
        check(&a, "d2");
    }
    assert_true(stats(&a).redis_answers > answers + 1);
    assert_true(stats(&a).connects >= 2);
    assert_int_equal(cancelled.calls, 0);
    inst_close(&a);
    server_stop(&s);
}

/* Cancelled checks never call back, whether answered by Redis or locally; freeing
 * the limiter with checks in flight calls nothing back either. */
static void test_cancel_and_free(void **state)
{
    (void)state;
    inst a;
    inst_open(&a, shared.port, "5/minute", "off");
    wait_connected(&a, 3000);
    answer x = { 0 };
    redis_limit_cancel(redis_limit_check(a.rl, RATELIMIT_REQUESTS, "c", NULL, on_answer, &x));
    redis_limit_cancel(NULL);
    run_for(&a, 100);
    assert_int_equal(x.calls, 0);
    assert_int_equal(check(&a, "c").remaining, 3); /* the cancelled one was still counted by Redis */

    answer y[3] = { { 0 } };
    for (int i = 0; i < 3; i++)
        redis_limit_check(a.rl, RATELIMIT_REQUESTS, "c", NULL, on_answer, &y[i]);
    inst_close(&a);
    for (int i = 0; i < 3; i++)
        assert_int_equal(y[i].calls, 0);

    /* A deferred local answer can be cancelled too. */
    inst_open(&a, free_port(), "5/minute", "off");
    answer z = { 0 };
    redis_limit_cancel(redis_limit_check(a.rl, RATELIMIT_REQUESTS, "c", NULL, on_answer, &z));
    run_for(&a, 50);
    assert_int_equal(z.calls, 0);
    assert_int_equal(stats(&a).fallbacks, 0);
    inst_close(&a);
}

/* A host name is resolved without blocking the loop (getaddrinfo_a). */
static void test_hostname(void **state)
{
    (void)state;
    redis_limit_config cfg = test_cfg(shared.port, "5/minute", "off");
    snprintf(cfg.host, sizeof cfg.host, "localhost");
    inst a;
    inst_open_cfg(&a, &cfg);
    wait_connected(&a, 3000);
    assert_int_equal(check(&a, "h").remaining, 4);
    assert_int_equal(stats(&a).redis_answers, 1);
    inst_close(&a);

    /* Freed while the name is being resolved: nothing leaks or runs later. */
    for (int i = 0; i < 3; i++) {
        inst_open_cfg(&a, &cfg);
        answer x = { 0 };
        redis_limit_check(a.rl, RATELIMIT_REQUESTS, "h", NULL, on_answer, &x);
        inst_close(&a);
        assert_int_equal(x.calls, 0);
    }
}

/* AUTH from the URL; a wrong password fails open (with the error as the reason). */
static void test_auth(void **state)
{
    (void)state;
    server s;
    server_start_opt(&s, 0, "--requirepass", "s3cret");
    char url[128], err[256];
    redis_limit_config cfg = test_cfg(0, "5/minute", "off");
    snprintf(url, sizeof url, "redis://:s3cret@127.0.0.1:%d", s.port);
    assert_int_equal(redis_limit_parse_url(url, &cfg, err, sizeof err), CHAT_OK);
    inst a;
    inst_open_cfg(&a, &cfg);
    wait_connected(&a, 3000);
    assert_int_equal(check(&a, "auth").remaining, 4);
    assert_int_equal(stats(&a).redis_answers, 1);
    inst_close(&a);

    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d", s.port);
    assert_int_equal(redis_limit_parse_url(url, &cfg, err, sizeof err), CHAT_OK);
    inst_open_cfg(&a, &cfg);
    wait_connected(&a, 3000);
    ratelimit_result r = check(&a, "auth");
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 4); /* the local bucket: Redis refused to run the script */
    assert_int_equal(stats(&a).redis_answers, 0);
    assert_int_equal(stats(&a).fallbacks, 1);
    inst_close(&a);
    server_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test_setup(test_shared_limit_two_instances, flush),
        cmocka_unit_test_setup(test_values_match_local, flush),
        cmocka_unit_test_setup(test_refill, flush),
        cmocka_unit_test_setup(test_tokens_debit, flush),
        cmocka_unit_test_setup(test_ttl_and_keys, flush),
        cmocka_unit_test_setup(test_noscript, flush),
        cmocka_unit_test(test_down_at_start),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_killed_and_restarted),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test_setup(test_cancel_and_free, flush),
        cmocka_unit_test_setup(test_hostname, flush),
        cmocka_unit_test(test_auth),
    };
    /* e.g. REDIS_LIMIT_SKIP=test_hostname under valgrind: glibc's getaddrinfo_a
     * helper thread still holds its resolver state when the process exits. */
    if (getenv("REDIS_LIMIT_SKIP"))
        cmocka_set_skip_filter(getenv("REDIS_LIMIT_SKIP"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
