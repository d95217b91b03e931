/* Open-loop HTTP/1.1 load generator of bench/ (issue 15: "added latency p99 at
 * half of the maximum rate"). wrk is closed-loop: a slow response delays the
 * next request on its connection, so the load drops exactly when the server is
 * slow and the tail is hidden (coordinated omission). Here request i is due at
 * t0 + i / rate whatever happened to the others, and its latency runs from
 * that SCHEDULED time to the end of its response: a request that waited for a
 * free connection, or behind a stalled loop, is charged that wait.
 *
 *   openloop --url http://127.0.0.1:PORT/path --rate R --duration S
 *            [--method POST] [--body-file F] [--header 'Name: value']...
 *            [--connections N] [--max-connections M] [--max-queue Q]
 *            [--timeout S] [--drain S] [--max-response BYTES]
 *            [--expect STR] [--reject STR] [--prefix P]
 *            [--session-slots S] [--session-turns K] [--warmup S]
 *            [--interval S] [--out FILE] [--raw-out PREFIX]
 *
 * Connections: a pool of HTTP/1.1 keep-alive connections, one request in
 * flight on each (no pipelining). A due request takes an idle connection; if
 * none is idle a new one is opened while there are fewer than
 * --max-connections, else the request waits in a FIFO (at most --max-queue;
 * beyond that it is dropped and counted). The pool starts with --connections
 * (default 16) connections, each primed with one request (the template's
 * first numbers) before the schedule starts, so the TCP connects are not in
 * the figures and a burst of connects at t0 does not stall the server (opening
 * hundreds of connections at once took a Node server ~0.5 s).
 *
 * Warm-up: --warmup S runs the same schedule for S seconds first (rate x S
 * requests numbered before the measured ones); their responses are counted in
 * warmup_* only, not in the latency, rate or status figures.
 *
 * Templates: the body (file), the path and header values may hold {{n}} (the
 * request's number, from 0), {{session}} and {{prefix}}. {{session}} is
 * "<prefix>-<n>" (a fresh session per request) unless --session-slots S is
 * given: then request n belongs to session "<prefix>-<epoch>-<slot>" with
 * slot = n mod S and epoch = n / (S * K), K = --session-turns (default 1): a
 * session gets K turns, S / rate seconds apart, so turns of one session do not
 * overlap unless a turn takes longer than that.
 *
 * A response counts as ok when its status is 2xx, its body holds --expect (if
 * given) and does not hold --reject (if given); a 2xx that fails these is
 * bad_body. Errors are transport failures (connect, timeout, EOF, response
 * larger than --max-response, ...). X-Chatd-Overhead-Ms (chatd's own measure
 * of what a request cost it, src/http/server.c) is collected from every 2xx
 * response that has it.
 *
 * Bounded: the schedule ends after --duration seconds (rate * duration
 * requests, at most 20 million), in-flight requests get --drain more seconds
 * (default: --timeout + 1), then the program prints its JSON and exits.
 * --interval S prints one JSON line per S seconds to stderr (progress, with
 * the interval's latency p99). Output: one JSON object on stdout or in --out;
 * --raw-out PREFIX also writes every measured latency (microseconds) to
 * PREFIX.lat and every X-Chatd-Overhead-Ms value to PREFIX.ovh, one per line
 * (so that runs can be merged: bench/report.py).
 * Exit status 0 when the run ran (whatever the responses), 2 on bad arguments
 * or setup failure.
 *
 * Built by bench/lib.sh (build_openloop): cc -O2 -std=c11 ... -levent. Single
 * threaded: everything runs on one libevent loop with precise (timerfd)
 * timers; send_lag in the output says how late the loop noticed requests were due
 * compared with their schedule (a generator that cannot keep up shows here). */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define MAX_REQUESTS 20000000ULL
#define MAX_HEADERS 32
#define MAX_PATH 4096
#define MAX_BODY_FILE (4u << 20)
#define MAX_CODES 600

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "openloop: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory (%s)", "calloc");
    return p;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- templates ---- */

enum seg_kind { SEG_TEXT, SEG_N, SEG_SESSION, SEG_PREFIX };
struct seg {
    enum seg_kind kind;
    const char *text; /* SEG_TEXT: points into the template (not owned) */
    size_t len;
};
struct tmpl {
    struct seg *segs;
    size_t n;
};

static struct tmpl tmpl_compile(const char *s, size_t len)
{
    struct tmpl t = { xcalloc(len / 2 + 2, sizeof(struct seg)), 0 };
    size_t i = 0, start = 0;
    while (i < len) {
        enum seg_kind k = SEG_TEXT;
        size_t vlen = 0;
        if (len - i >= 5 && memcmp(s + i, "{{n}}", 5) == 0)
            k = SEG_N, vlen = 5;
        else if (len - i >= 11 && memcmp(s + i, "{{session}}", 11) == 0)
            k = SEG_SESSION, vlen = 11;
        else if (len - i >= 10 && memcmp(s + i, "{{prefix}}", 10) == 0)
            k = SEG_PREFIX, vlen = 10;
        if (k == SEG_TEXT) {
            i++;
            continue;
        }
        if (i > start)
            t.segs[t.n++] = (struct seg){ SEG_TEXT, s + start, i - start };
        t.segs[t.n++] = (struct seg){ k, NULL, 0 };
        i += vlen;
        start = i;
    }
    if (len > start)
        t.segs[t.n++] = (struct seg){ SEG_TEXT, s + start, len - start };
    return t;
}

/* Options (set once by main, read by the loop). */
static const char *g_prefix = "ol";
static uint64_t g_slots, g_turns = 1;

static int session_name(char *out, size_t cap, uint64_t n)
{
    if (!g_slots)
        return snprintf(out, cap, "%s-%" PRIu64, g_prefix, n);
    return snprintf(out, cap, "%s-%" PRIu64 "-%" PRIu64, g_prefix, n / (g_slots * g_turns), n % g_slots);
}

/* Appends the expansion of t for request n to b. */
static void tmpl_expand(const struct tmpl *t, uint64_t n, struct evbuffer *b)
{
    char tmp[256];
    for (size_t i = 0; i < t->n; i++) {
        const struct seg *s = &t->segs[i];
        switch (s->kind) {
        case SEG_TEXT: evbuffer_add(b, s->text, s->len); break;
        case SEG_N: evbuffer_add_printf(b, "%" PRIu64, n); break;
        case SEG_SESSION:
            session_name(tmp, sizeof tmp, n);
            evbuffer_add(b, tmp, strlen(tmp));
            break;
        case SEG_PREFIX: evbuffer_add(b, g_prefix, strlen(g_prefix)); break;
        }
    }
}

/* Expansion into a NUL-terminated string of at most cap - 1 bytes; false if
 * it does not fit. */
static bool tmpl_expand_str(const struct tmpl *t, uint64_t n, char *out, size_t cap)
{
    struct evbuffer *b = evbuffer_new();
    if (!b)
        die("out of memory (%s)", "evbuffer");
    tmpl_expand(t, n, b);
    size_t len = evbuffer_get_length(b);
    bool ok = len < cap;
    if (ok) {
        evbuffer_remove(b, out, len);
        out[len] = '\0';
    }
    evbuffer_free(b);
    return ok;
}

/* ---- state ---- */

struct conn {
    struct evhttp_connection *evcon;
    bool busy;
};

struct reqctx {
    uint64_t n;
    int64_t sched_us;
    struct conn *conn;
};

static struct event_base *g_base;
static struct evhttp_uri *g_uri;
static char g_host_hdr[300];
static const char *g_host;
static int g_port;
static enum evhttp_cmd_type g_method = EVHTTP_REQ_GET;
static const char *g_method_name = "GET";
static struct tmpl g_path, g_body;
static bool g_has_body;
static char *g_hdr_name[MAX_HEADERS];
static struct tmpl g_hdr_val[MAX_HEADERS];
static int g_nhdr;
static const char *g_expect, *g_reject;
static double g_rate, g_duration, g_timeout = 10, g_drain = -1, g_interval;
static size_t g_max_resp = 1u << 20;
static int g_init_conns = 16, g_max_conns = 1024;
static size_t g_max_queue = 100000;

static struct conn *g_conns;
static int g_nconns, g_idle_top;
static struct conn **g_idle; /* stack of idle connections */

static uint64_t g_total, g_next; /* requests in the schedule; next to become due */
static uint64_t g_warm;          /* the first g_warm requests are the warm-up */
static uint64_t g_first;         /* the first g_first of those prime the pool */
static uint64_t g_primed;        /* prime requests finished */
static double g_warmup;
static int64_t g_t0;
static struct event *g_tick, *g_stop, *g_progress;
static bool g_schedule_done, g_stopping;

static uint64_t *g_queue; /* FIFO ring of due requests waiting for a connection */
static size_t g_qcap, g_qhead, g_qlen, g_qmax;

/* results */
static uint64_t g_sent, g_completed, g_ok, g_non2xx, g_bad_body, g_errors, g_dropped, g_dispatch_fail;
static uint64_t g_codes[MAX_CODES], g_code_other;
static uint64_t g_err_kind[8];
static uint32_t *g_lat; /* us, of every completed response (any status), completion order */
static float *g_ovh;    /* X-Chatd-Overhead-Ms of 2xx responses that had it */
static uint32_t *g_lag; /* us between scheduled and actual dispatch, per sent request */
static uint64_t g_nlat, g_novh, g_nlag;
static int64_t g_in_flight, g_max_in_flight; /* due and not finished (queued or on a connection) */
static int64_t g_in_flight_m;                /* the same, measured requests only */
static uint64_t g_warm_done, g_warm_bad;     /* warm-up: responses, and those not ok */
static double g_inflight_area;               /* integral of in_flight over time, us * requests */
static int64_t g_area_last;
static int64_t g_last_done_us;
static uint64_t g_prog_lat_mark, g_prog_sent, g_prog_done;

static const char *const g_err_names[8] = { "timeout", "eof",      "exception", "buffer_error",
                                            "cancel",  "too_long", "dispatch",  "other" };

static void area_update(int64_t t)
{
    if (g_area_last)
        g_inflight_area += (double)g_in_flight_m * (double)(t - g_area_last);
    g_area_last = t;
}

static int64_t sched_time(uint64_t i)
{
    return g_t0 + (int64_t)llround((double)(i - g_first) * 1e6 / g_rate);
}

static void try_finish(void);
static void dispatch(struct conn *c, uint64_t n);

static void conn_idle(struct conn *c)
{
    c->busy = false;
    if (g_qlen && !g_stopping) {
        uint64_t n = g_queue[g_qhead];
        g_qhead = (g_qhead + 1) % g_qcap;
        g_qlen--;
        dispatch(c, n);
        return;
    }
    g_idle[g_idle_top++] = c;
}

static struct conn *conn_new(void)
{
    if (g_nconns >= g_max_conns)
        return NULL;
    struct conn *c = &g_conns[g_nconns];
    c->evcon = evhttp_connection_base_new(g_base, NULL, g_host, (unsigned short)g_port);
    if (!c->evcon)
        die("cannot create a connection to %s", g_host);
    struct timeval tv = { (time_t)g_timeout, (suseconds_t)((g_timeout - (double)(time_t)g_timeout) * 1e6) };
    evhttp_connection_set_timeout_tv(c->evcon, &tv);
    evhttp_connection_set_retries(c->evcon, 0);
    evhttp_connection_set_max_body_size(c->evcon, (ev_ssize_t)g_max_resp);
    evhttp_connection_set_max_headers_size(c->evcon, 65536);
    g_nconns++;
    return c;
}

static void start_schedule(void);

static void finish(struct reqctx *x, int64_t t)
{
    if (x->n < g_first && ++g_primed == g_first)
        start_schedule();
    area_update(t);
    g_in_flight--;
    if (x->n >= g_warm) {
        g_in_flight_m--;
        g_last_done_us = t;
    }
    struct conn *c = x->conn;
    free(x);
    conn_idle(c);
    try_finish();
}

static void on_error(enum evhttp_request_error e, void *arg)
{
    const struct reqctx *x = arg; /* the request's cb_arg */
    if (x->n < g_warm)
        return;
    unsigned k = (unsigned)e;
    g_err_kind[k < 6 ? k : 7]++;
}

static void on_done(struct evhttp_request *req, void *arg)
{
    struct reqctx *x = arg;
    int64_t t = now_us();
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (x->n < g_warm) {
        g_warm_done++;
        if (code < 200 || code > 299)
            g_warm_bad++;
        finish(x, t);
        return;
    }
    if (code <= 0) {
        g_errors++;
        finish(x, t);
        return;
    }
    g_completed++;
    if (code < MAX_CODES)
        g_codes[code]++;
    else
        g_code_other++;
    int64_t lat = t - x->sched_us;
    g_lat[g_nlat++] = (uint32_t)(lat < 0 ? 0 : lat > UINT32_MAX ? UINT32_MAX : lat);
    if (code < 200 || code > 299) {
        g_non2xx++;
    } else {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        bool whole = true;
        if (g_expect && evbuffer_search(in, g_expect, strlen(g_expect), NULL).pos < 0)
            whole = false;
        if (g_reject && evbuffer_search(in, g_reject, strlen(g_reject), NULL).pos >= 0)
            whole = false;
        if (whole)
            g_ok++;
        else
            g_bad_body++;
        const char *o = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Chatd-Overhead-Ms");
        if (o) {
            char *end;
            double v = strtod(o, &end);
            if (end != o && v >= 0 && g_novh < g_total)
                g_ovh[g_novh++] = (float)v;
        }
    }
    finish(x, t);
}

static void dispatch(struct conn *c, uint64_t n)
{
    int64_t t = now_us();
    int64_t sched = n < g_first ? t : sched_time(n);
    c->busy = true;
    struct reqctx *x = xcalloc(1, sizeof *x);
    x->n = n;
    x->sched_us = sched;
    x->conn = c;
    struct evhttp_request *req = evhttp_request_new(on_done, x);
    if (!req)
        die("out of memory (%s)", "evhttp_request_new");
    evhttp_request_set_error_cb(req, on_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", g_host_hdr);
    char val[1024];
    for (int i = 0; i < g_nhdr; i++) {
        if (!tmpl_expand_str(&g_hdr_val[i], n, val, sizeof val))
            die("header %s is longer than 1023 bytes after expansion", g_hdr_name[i]);
        evhttp_add_header(h, g_hdr_name[i], val);
    }
    if (g_has_body)
        tmpl_expand(&g_body, n, evhttp_request_get_output_buffer(req));
    char path[MAX_PATH];
    if (!tmpl_expand_str(&g_path, n, path, sizeof path))
        die("the path is longer than %s bytes after expansion", "4095");
    if (n >= g_warm)
        g_sent++;
    if (evhttp_make_request(c->evcon, req, g_method, path) != 0) {
        /* Rare (a synchronous connect failure): counted as an error; the
         * connection is reused for the next request. */
        if (n >= g_warm) {
            g_dispatch_fail++;
            g_err_kind[6]++;
            g_errors++;
        } else {
            g_warm_bad++;
        }
        finish(x, now_us());
    }
}

/* A request became due. */
static void due(uint64_t n)
{
    int64_t t = now_us();
    if (n >= g_warm) {
        int64_t lag = t - sched_time(n);
        g_lag[g_nlag++] = (uint32_t)(lag < 0 ? 0 : lag);
    }
    area_update(t);
    g_in_flight++;
    if (n >= g_warm) {
        g_in_flight_m++;
        if (g_in_flight_m > g_max_in_flight)
            g_max_in_flight = g_in_flight_m;
    }
    struct conn *c = g_idle_top ? g_idle[--g_idle_top] : conn_new();
    if (c) {
        dispatch(c, n);
        return;
    }
    if (g_qlen >= g_max_queue) {
        g_in_flight--;
        if (n >= g_warm) {
            g_dropped++;
            g_in_flight_m--;
        }
        return;
    }
    g_queue[(g_qhead + g_qlen) % g_qcap] = n;
    g_qlen++;
    if (g_qlen > g_qmax)
        g_qmax = g_qlen;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    int64_t t = now_us();
    while (g_next < g_total && sched_time(g_next) <= t)
        due(g_next++);
    if (g_next >= g_total) {
        g_schedule_done = true;
        /* In-flight requests get g_drain more seconds. */
        struct timeval tv = { (time_t)g_drain, (suseconds_t)((g_drain - (double)(time_t)g_drain) * 1e6) };
        evtimer_add(g_stop, &tv);
        try_finish();
        return;
    }
    int64_t wait = sched_time(g_next) - now_us();
    struct timeval tv = { 0, 0 };
    if (wait > 0) {
        tv.tv_sec = (time_t)(wait / 1000000);
        tv.tv_usec = (suseconds_t)(wait % 1000000);
    }
    evtimer_add(g_tick, &tv);
}

/* t0: 10 ms from now. */
static void start_schedule(void)
{
    g_t0 = now_us() + 10000;
    struct timeval first = { 0, 10000 };
    evtimer_add(g_tick, &first);
}

static void try_finish(void)
{
    if (g_schedule_done && g_in_flight == 0 && !g_stopping) {
        g_stopping = true;
        event_base_loopbreak(g_base);
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    g_stopping = true;
    event_base_loopbreak(g_base);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static size_t rank(uint64_t n, double p)
{
    size_t r = (size_t)ceil(p / 100.0 * (double)n);
    return r < 1 ? 0 : r - 1;
}

static void on_progress(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    uint64_t k = g_nlat - g_prog_lat_mark;
    double p99 = -1;
    if (k) {
        uint32_t *tmp = malloc(k * sizeof *tmp);
        if (tmp) {
            memcpy(tmp, g_lat + g_prog_lat_mark, k * sizeof *tmp);
            qsort(tmp, k, sizeof *tmp, cmp_u32);
            p99 = tmp[rank(k, 99)] / 1000.0;
            free(tmp);
        }
    }
    fprintf(stderr,
            "{\"t_s\":%.1f,\"sent\":%" PRIu64 ",\"completed\":%" PRIu64 ",\"interval_sent\":%" PRIu64
            ",\"interval_completed\":%" PRIu64 ",\"interval_p99_ms\":%.3f,\"non_2xx\":%" PRIu64 ",\"bad_body\":%" PRIu64
            ",\"errors\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"in_flight\":%" PRId64
            ",\"queued\":%zu,\"connections\":%d}\n",
            (now_us() - g_t0) / 1e6, g_sent, g_completed, g_sent - g_prog_sent, g_completed - g_prog_done, p99,
            g_non2xx, g_bad_body, g_errors, g_dropped, g_in_flight, g_qlen, g_nconns);
    g_prog_lat_mark = g_nlat;
    g_prog_sent = g_sent;
    g_prog_done = g_completed;
}

static void print_pcts_u32(FILE *f, uint32_t *v, uint64_t n)
{
    qsort(v, n, sizeof *v, cmp_u32);
    double sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += v[i];
    fprintf(f, "{\"samples\":%" PRIu64, n);
    if (n) {
        static const double ps[] = { 50, 90, 99, 99.9 };
        static const char *const names[] = { "p50", "p90", "p99", "p99.9" };
        for (int i = 0; i < 4; i++)
            fprintf(f, ",\"%s\":%.3f", names[i], v[rank(n, ps[i])] / 1000.0);
        fprintf(f, ",\"min\":%.3f,\"max\":%.3f,\"mean\":%.4f", v[0] / 1000.0, v[n - 1] / 1000.0, sum / n / 1000.0);
    }
    fputc('}', f);
}

static void print_json(FILE *f, int64_t t_end)
{
    /* From the first measured request's schedule to the last completion (or the stop). */
    double span = (double)(t_end - sched_time(g_warm)) / 1e6;
    double sched_span = g_duration;
    uint64_t unfinished = (uint64_t)g_in_flight_m;
    fprintf(f, "{\"url\":\"");
    for (const char *p = evhttp_uri_get_host(g_uri); *p; p++)
        fputc(*p == '"' || *p == '\\' ? '?' : *p, f);
    fprintf(f, ":%d\",\"method\":\"%s\",\"rate\":%.3f,\"duration_s\":%.3f,", g_port, g_method_name, g_rate, g_duration);
    fprintf(f,
            "\"scheduled\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"completed\":%" PRIu64 ",\"ok\":%" PRIu64
            ",\"non_2xx\":%" PRIu64 ",\"bad_body\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"dropped\":%" PRIu64
            ",\"unfinished\":%" PRIu64 ",",
            g_next > g_warm ? g_next - g_warm : 0, g_sent, g_completed, g_ok, g_non2xx, g_bad_body, g_errors, g_dropped,
            unfinished);
    fprintf(f, "\"error_kinds\":{");
    bool first = true;
    for (int i = 0; i < 8; i++) {
        if (!g_err_kind[i])
            continue;
        fprintf(f, "%s\"%s\":%" PRIu64, first ? "" : ",", g_err_names[i], g_err_kind[i]);
        first = false;
    }
    uint64_t kinds = 0;
    for (int i = 0; i < 8; i++)
        kinds += g_err_kind[i];
    if (g_errors > kinds) /* e.g. a refused connect reports no kind */
        fprintf(f, "%s\"unclassified\":%" PRIu64, first ? "" : ",", g_errors - kinds);
    fprintf(f, "},\"status_codes\":{");
    first = true;
    for (int i = 0; i < MAX_CODES; i++) {
        if (!g_codes[i])
            continue;
        fprintf(f, "%s\"%d\":%" PRIu64, first ? "" : ",", i, g_codes[i]);
        first = false;
    }
    if (g_code_other)
        fprintf(f, "%s\"other\":%" PRIu64, first ? "" : ",", g_code_other);
    fprintf(f, "},\"primed_connections\":%" PRIu64 ",", g_first);
    fprintf(f, "\"warmup_s\":%.3f,\"warmup_responses\":%" PRIu64 ",\"warmup_not_ok\":%" PRIu64, g_warmup, g_warm_done,
            g_warm_bad);
    fprintf(f, ",\"connections_opened\":%d,\"max_in_flight\":%" PRId64 ",\"max_queued\":%zu,", g_nconns,
            g_max_in_flight, g_qmax);
    fprintf(f, "\"achieved_rate\":%.3f,", sched_span > 0 ? (double)g_sent / sched_span : 0);
    /* The generator's own CPU (it shares the machine with the server). */
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
              (double)ru.ru_stime.tv_usec / 1e6;
    fprintf(f, "\"generator_cpu_s\":%.3f,\"generator_cpu_ms_per_request\":%.4f,", cpu,
            g_next ? cpu * 1000.0 / (double)g_next : 0);
    fprintf(f, "\"completed_rate\":%.3f,", span > 0 ? (double)g_completed / span : 0);
    /* Little's law over [first measured request's schedule, last
     * completion]: the mean number of requests in flight, measured by
     * integrating the count from the moment the loop saw each one due, and
     * completions/s x mean latency (which runs from the scheduled time). The
     * two agree when mean_in_flight + rate_x_mean_send_lag equals
     * rate_x_mean_latency: a check of the bookkeeping and the clocks. */
    double mean_lat_s = 0;
    for (uint64_t i = 0; i < g_nlat; i++)
        mean_lat_s += g_lat[i];
    mean_lat_s = g_nlat ? mean_lat_s / (double)g_nlat / 1e6 : 0;
    double mean_lag_s = 0;
    for (uint64_t i = 0; i < g_nlag; i++)
        mean_lag_s += g_lag[i];
    mean_lag_s = g_nlag ? mean_lag_s / (double)g_nlag / 1e6 : 0;
    fprintf(f, "\"little\":{\"mean_in_flight\":%.3f,\"rate_x_mean_latency\":%.3f,\"rate_x_mean_send_lag\":%.3f},",
            span > 0 ? g_inflight_area / 1e6 / span : 0, span > 0 ? (double)g_completed / span * mean_lat_s : 0,
            span > 0 ? (double)g_completed / span * mean_lag_s : 0);
    fprintf(f, "\"latency_ms\":");
    print_pcts_u32(f, g_lat, g_nlat);
    fprintf(f, ",\"send_lag_ms\":");
    print_pcts_u32(f, g_lag, g_nlag);
    qsort(g_ovh, g_novh, sizeof *g_ovh, cmp_float);
    fprintf(f, ",\"overhead_header_ms\":{\"samples\":%" PRIu64, g_novh);
    if (g_novh) {
        static const double ps[] = { 50, 90, 99, 99.9 };
        static const char *const names[] = { "p50", "p90", "p99", "p99.9" };
        for (int i = 0; i < 4; i++)
            fprintf(f, ",\"%s\":%.3f", names[i], (double)g_ovh[rank(g_novh, ps[i])]);
        fprintf(f, ",\"max\":%.3f", (double)g_ovh[g_novh - 1]);
    }
    fprintf(f, "}}\n");
}

/* PREFIX.lat: measured latencies in us; PREFIX.ovh: overhead header values. */
static void write_raw(const char *prefix)
{
    char path[4096];
    snprintf(path, sizeof path, "%s.lat", prefix);
    FILE *f = fopen(path, "w");
    if (!f)
        die("cannot write %s", path);
    for (uint64_t i = 0; i < g_nlat; i++)
        fprintf(f, "%" PRIu32 "\n", g_lat[i]);
    if (fclose(f) != 0)
        die("cannot write %s", path);
    snprintf(path, sizeof path, "%s.ovh", prefix);
    f = fopen(path, "w");
    if (!f)
        die("cannot write %s", path);
    for (uint64_t i = 0; i < g_novh; i++)
        fprintf(f, "%g\n", (double)g_ovh[i]);
    if (fclose(f) != 0)
        die("cannot write %s", path);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open %s", path);
    char *buf = xcalloc(1, MAX_BODY_FILE + 1);
    size_t n = fread(buf, 1, MAX_BODY_FILE + 1, f);
    if (ferror(f))
        die("cannot read %s", path);
    fclose(f);
    if (n > MAX_BODY_FILE)
        die("%s is larger than 4 MiB", path);
    *len = n;
    return buf;
}

static double num_arg(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= lo && d <= hi)) {
        fprintf(stderr, "openloop: --%s must be a number in [%g, %g] (got '%s')\n", name, lo, hi, v);
        exit(2);
    }
    return d;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "url", required_argument, 0, 'u' },           { "rate", required_argument, 0, 'r' },
        { "duration", required_argument, 0, 'd' },      { "method", required_argument, 0, 'm' },
        { "body-file", required_argument, 0, 'b' },     { "header", required_argument, 0, 'H' },
        { "connections", required_argument, 0, 'c' },   { "max-connections", required_argument, 0, 'C' },
        { "max-queue", required_argument, 0, 'Q' },     { "timeout", required_argument, 0, 't' },
        { "drain", required_argument, 0, 'D' },         { "max-response", required_argument, 0, 'R' },
        { "expect", required_argument, 0, 'e' },        { "reject", required_argument, 0, 'x' },
        { "prefix", required_argument, 0, 'p' },        { "session-slots", required_argument, 0, 's' },
        { "session-turns", required_argument, 0, 'k' }, { "interval", required_argument, 0, 'i' },
        { "out", required_argument, 0, 'o' },           { "warmup", required_argument, 0, 'w' },
        { "raw-out", required_argument, 0, 'a' },       { 0, 0, 0, 0 },
    };
    const char *url = NULL, *body_file = NULL, *out = NULL, *raw_out = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'r': g_rate = num_arg("rate", optarg, 0.001, 1e6); break;
        case 'd': g_duration = num_arg("duration", optarg, 0.001, 86400); break;
        case 'm':
            g_method_name = optarg;
            if (!strcmp(optarg, "GET"))
                g_method = EVHTTP_REQ_GET;
            else if (!strcmp(optarg, "POST"))
                g_method = EVHTTP_REQ_POST;
            else if (!strcmp(optarg, "PUT"))
                g_method = EVHTTP_REQ_PUT;
            else if (!strcmp(optarg, "DELETE"))
                g_method = EVHTTP_REQ_DELETE;
            else
                die("--method must be GET, POST, PUT or DELETE (got '%s')", optarg);
            break;
        case 'b': body_file = optarg; break;
        case 'H': {
            if (g_nhdr >= MAX_HEADERS)
                die("at most 32 --header (%s)", optarg);
            const char *colon = strchr(optarg, ':');
            if (!colon || colon == optarg)
                die("--header must be 'Name: value' (got '%s')", optarg);
            g_hdr_name[g_nhdr] = strndup(optarg, (size_t)(colon - optarg));
            if (!g_hdr_name[g_nhdr])
                die("out of memory (%s)", "strndup");
            const char *v = colon + 1;
            while (*v == ' ')
                v++;
            g_hdr_val[g_nhdr] = tmpl_compile(v, strlen(v));
            g_nhdr++;
            break;
        }
        case 'c': g_init_conns = (int)num_arg("connections", optarg, 0, 100000); break;
        case 'C': g_max_conns = (int)num_arg("max-connections", optarg, 1, 100000); break;
        case 'Q': g_max_queue = (size_t)num_arg("max-queue", optarg, 0, 10000000); break;
        case 't': g_timeout = num_arg("timeout", optarg, 0.001, 3600); break;
        case 'D': g_drain = num_arg("drain", optarg, 0, 3600); break;
        case 'R': g_max_resp = (size_t)num_arg("max-response", optarg, 1, 1 << 30); break;
        case 'e': g_expect = optarg; break;
        case 'x': g_reject = optarg; break;
        case 'p': g_prefix = optarg; break;
        case 's': g_slots = (uint64_t)num_arg("session-slots", optarg, 0, 1e9); break;
        case 'k': g_turns = (uint64_t)num_arg("session-turns", optarg, 1, 1e6); break;
        case 'i': g_interval = num_arg("interval", optarg, 0, 3600); break;
        case 'o': out = optarg; break;
        case 'w': g_warmup = num_arg("warmup", optarg, 0, 3600); break;
        case 'a': raw_out = optarg; break;
        default: exit(2);
        }
    }
    if (!url || g_rate <= 0 || g_duration <= 0)
        die("usage: openloop --url http://HOST:PORT/PATH --rate R --duration S [...]%s", " (see bench/openloop.c)");
    if (strlen(g_prefix) > 100)
        die("--prefix is longer than 100 bytes: %s", g_prefix);
    if (g_init_conns > g_max_conns)
        g_init_conns = g_max_conns;
    if (g_drain < 0)
        g_drain = g_timeout + 1;
    double total = floor(g_rate * g_duration), warm = floor(g_rate * g_warmup);
    if (total < 1 || total + warm > (double)MAX_REQUESTS)
        die("rate x (duration + warmup) must be between 1 and 20 million requests%s", "");
    g_warm = (uint64_t)warm;
    g_first = (uint64_t)g_init_conns;
    g_warm += g_first;
    g_total = (uint64_t)total + g_warm;

    g_uri = evhttp_uri_parse(url);
    if (!g_uri || !evhttp_uri_get_host(g_uri) || !evhttp_uri_get_scheme(g_uri) ||
        strcmp(evhttp_uri_get_scheme(g_uri), "http") != 0)
        die("--url must be http://HOST[:PORT]/PATH (got '%s')", url);
    g_host = evhttp_uri_get_host(g_uri);
    g_port = evhttp_uri_get_port(g_uri) > 0 ? evhttp_uri_get_port(g_uri) : 80;
    snprintf(g_host_hdr, sizeof g_host_hdr, "%.256s:%d", g_host, g_port);
    {
        const char *p = evhttp_uri_get_path(g_uri);
        const char *q = evhttp_uri_get_query(g_uri);
        static char pq[MAX_PATH];
        int w = snprintf(pq, sizeof pq, "%s%s%s", p && *p ? p : "/", q ? "?" : "", q ? q : "");
        if (w < 0 || (size_t)w >= sizeof pq)
            die("the URL's path is too long: %s", url);
        g_path = tmpl_compile(pq, strlen(pq));
    }
    if (body_file) {
        size_t len;
        char *body = read_file(body_file, &len);
        g_body = tmpl_compile(body, len);
        g_has_body = true;
    }

    g_lat = xcalloc(g_total, sizeof *g_lat);
    g_lag = xcalloc(g_total, sizeof *g_lag);
    g_ovh = xcalloc(g_total, sizeof *g_ovh);
    g_conns = xcalloc((size_t)g_max_conns, sizeof *g_conns);
    g_idle = xcalloc((size_t)g_max_conns, sizeof *g_idle);
    g_qcap = g_max_queue + 1;
    g_queue = xcalloc(g_qcap, sizeof *g_queue);

    struct event_config *cfg = event_config_new();
    if (!cfg)
        die("out of memory (%s)", "event_config");
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    g_base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!g_base)
        die("cannot create the event base%s", "");
    g_tick = evtimer_new(g_base, on_tick, NULL);
    g_stop = evtimer_new(g_base, on_stop, NULL);
    g_progress = event_new(g_base, -1, EV_PERSIST, on_progress, NULL);
    if (!g_tick || !g_stop || !g_progress)
        die("out of memory (%s)", "event");

    /* The initial pool, each connection primed with one request (evhttp
     * connects lazily, at a connection's first request). */
    for (uint64_t i = 0; i < g_first; i++) {
        area_update(now_us());
        g_in_flight++;
        dispatch(conn_new(), i);
    }
    g_next = g_first;
    if (!g_first)
        start_schedule();
    if (g_interval > 0) {
        struct timeval iv = { (time_t)g_interval, (suseconds_t)((g_interval - (double)(time_t)g_interval) * 1e6) };
        event_add(g_progress, &iv);
    }
    event_base_dispatch(g_base);
    int64_t t_end = g_in_flight == 0 && g_last_done_us ? g_last_done_us : now_us();
    area_update(t_end);

    FILE *f = stdout;
    if (out) {
        f = fopen(out, "w");
        if (!f)
            die("cannot write %s", out);
    }
    print_json(f, t_end);
    if (f != stdout)
        fclose(f);
    if (raw_out)
        write_raw(raw_out);
    /* Requests still in flight are abandoned with the process (freeing their
     * connections would run their callbacks after the report). */
    return 0;
}
