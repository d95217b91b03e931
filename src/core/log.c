#define _GNU_SOURCE
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/json_out.h"
#include "core/util.h"

static chat_log_level min_level = LOG_INFO;

/*
 * The writer thread (chat_log_start). A loop thread must never wait on
 * stderr: behind it may be a pipe to a log collector that stalls (journald,
 * a container runtime), and a blocked write(2) would stop every request on
 * that loop. So, while the writer runs, chat_log only copies the line into a
 * ring of bytes under a mutex, and the writer thread empties the ring with as
 * few writes as it can. A line that does not fit is dropped, counted, and
 * reported by the writer once there is room again: a stalled collector costs
 * log lines, never requests. Lines keep their order (one ring).
 */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t work; /* bytes queued, or stop */
    pthread_cond_t idle; /* the ring went empty */
    char *ring;
    size_t cap, head, len; /* len bytes queued from head, wrapping at cap */
    size_t inflight;       /* bytes from head being written (len includes them) */
    uint64_t dropped;      /* lines dropped since the last report */
    uint64_t dropped_total;
    bool running, stop;
    pthread_t thread;
} W = { .mu = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER, .idle = PTHREAD_COND_INITIALIZER };

/* Writes all of [p, p + n) to stderr (a short write is retried; an error ends it). */
static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&W.mu);
    for (;;) {
        while (W.len == 0 && W.dropped == 0 && !W.stop)
            pthread_cond_wait(&W.work, &W.mu);
        if (W.len == 0 && W.dropped == 0)
            break; /* stopping, and drained */
        uint64_t dropped = W.dropped;
        W.dropped = 0;
        size_t head = W.head, n = W.len;
        W.inflight = n;
        pthread_mutex_unlock(&W.mu);
        /* The queued bytes are ours until inflight is cleared: producers only
         * write into the free part of the ring. */
        size_t first = n < W.cap - head ? n : W.cap - head;
        struct iovec iov[2] = { { W.ring + head, first }, { W.ring, n - first } };
        size_t done = 0;
        int idx = 0;
        while (done < n) {
            ssize_t w = writev(STDERR_FILENO, iov + idx, 2 - idx);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break; /* stderr is gone: the lines are lost, as with a direct write */
            done += (size_t)w;
            size_t k = (size_t)w;
            while (k > 0 && idx < 2) {
                size_t t = k < iov[idx].iov_len ? k : iov[idx].iov_len;
                iov[idx].iov_base = (char *)iov[idx].iov_base + t;
                iov[idx].iov_len -= t;
                k -= t;
                if (iov[idx].iov_len == 0)
                    idx++;
            }
        }
        if (dropped > 0) {
            char ts[32], line[160];
            chat_format_rfc3339(chat_now_ms(), ts);
            int m = snprintf(line, sizeof line,
                             "{\"time\":\"%s\",\"level\":\"warn\",\"msg\":\"log lines dropped: stderr was not "
                             "read fast enough\",\"dropped\":%llu}\n",
                             ts, (unsigned long long)dropped);
            if (m > 0)
                write_all(line, (size_t)m < sizeof line ? (size_t)m : sizeof line - 1);
        }
        pthread_mutex_lock(&W.mu);
        W.head = (W.head + n) % W.cap;
        W.len -= n;
        W.inflight = 0;
        if (W.len == 0)
            pthread_cond_broadcast(&W.idle);
    }
    pthread_mutex_unlock(&W.mu);
    return NULL;
}

chat_rc chat_log_start(size_t ring_bytes)
{
    if (ring_bytes == 0)
        return CHAT_ENOMEM;
    /* Allocated before taking the mutex: an allocation failure ends in
     * chat_fatal, whose chat_log_flush takes it. */
    char *ring = chat_xmalloc(ring_bytes);
    pthread_mutex_lock(&W.mu);
    chat_rc rc = CHAT_OK;
    if (W.running) {
        free(ring);
    } else {
        W.ring = ring;
        W.cap = ring_bytes;
        W.head = W.len = W.inflight = 0;
        W.dropped = W.dropped_total = 0;
        W.stop = false;
        if (pthread_create(&W.thread, NULL, writer_main, NULL) != 0) {
            free(W.ring);
            W.ring = NULL;
            rc = CHAT_ENOMEM;
        } else {
            W.running = true;
        }
    }
    pthread_mutex_unlock(&W.mu);
    return rc;
}

void chat_log_stop(void)
{
    pthread_mutex_lock(&W.mu);
    if (!W.running) {
        pthread_mutex_unlock(&W.mu);
        return;
    }
    W.stop = true;
    pthread_cond_signal(&W.work);
    pthread_mutex_unlock(&W.mu);
    pthread_join(W.thread, NULL);
    pthread_mutex_lock(&W.mu);
    W.running = false;
    free(W.ring);
    W.ring = NULL;
    W.cap = W.head = W.len = 0;
    pthread_mutex_unlock(&W.mu);
}

void chat_log_flush(int64_t timeout_ms)
{
    pthread_mutex_lock(&W.mu);
    if (W.running && !pthread_equal(pthread_self(), W.thread)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (W.len > 0)
            if (pthread_cond_timedwait(&W.idle, &W.mu, &until) != 0)
                break;
    }
    pthread_mutex_unlock(&W.mu);
}

uint64_t chat_log_dropped(void)
{
    pthread_mutex_lock(&W.mu);
    uint64_t n = W.dropped_total;
    pthread_mutex_unlock(&W.mu);
    return n;
}

/* One whole line: queued for the writer thread, or written here when none runs. */
static void emit(const char *line, size_t n)
{
    pthread_mutex_lock(&W.mu);
    if (!W.running) {
        pthread_mutex_unlock(&W.mu);
        write_all(line, n);
        return;
    }
    if (n > W.cap - W.len) {
        W.dropped++;
        W.dropped_total++;
    } else {
        size_t tail = (W.head + W.len) % W.cap;
        size_t first = n < W.cap - tail ? n : W.cap - tail;
        memcpy(W.ring + tail, line, first);
        memcpy(W.ring, line + first, n - first);
        W.len += n;
    }
    pthread_cond_signal(&W.work);
    pthread_mutex_unlock(&W.mu);
}

static const char *level_names[] = { "debug", "info", "warn", "error", "notice" };

void chat_log_set_level(chat_log_level lvl)
{
    min_level = lvl;
}

bool chat_log_enabled(chat_log_level lvl)
{
    return lvl >= min_level || lvl == LOG_NOTICE;
}

void chat_log(chat_log_level lvl, const char *msg, json_t *fields)
{
    if (!chat_log_enabled(lvl)) {
        json_decref(fields);
        return;
    }
    char ts[32];
    chat_format_rfc3339(chat_now_ms(), ts);
    json_t *line = json_object();
    json_object_set_new(line, "time", json_string(ts));
    json_object_set_new(line, "level", json_string(level_names[lvl]));
    json_object_set_new(line, "msg", json_string(msg ? msg : ""));
    if (fields && json_is_object(fields))
        json_object_update(line, fields);
    json_decref(fields);
    char *text = chat_json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII, NULL);
    json_decref(line);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps allocates n+1 bytes: replace the NUL, write n+1 */
    emit(text, n + 1);
    free(text);
}

void chat_logf(chat_log_level lvl, const char *fmt, ...)
{
    if (lvl < min_level && lvl != LOG_NOTICE)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    chat_log(lvl, buf, NULL);
}
