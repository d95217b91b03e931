/*
 * redis_limit.h: the rate limits of ratelimit.h, shared by every chatd
 * instance through one Redis server (REDIS_URL), so that N instances together
 * enforce the configured limit instead of N times it.
 *
 * Semantics: exactly those of ratelimit.h (the same token buckets, kinds,
 * per-key specs, results and headers), computed by one Lua script that Redis
 * runs atomically. Differences, all deliberate:
 * - Time is Redis's own clock (redis.call('TIME'), milliseconds), read inside
 *   the script, so instances with skewed clocks agree on every bucket.
 * - Bucket state (level in units, last update in ms, the limit it is expressed
 *   in) is one hash per bucket, "chatd:rl:<kind>:<key>" (kind "requests" or
 *   "tokens"; keys longer than RATELIMIT_MAX_KEY bytes are cut and suffixed
 *   with a hash of the whole key, as ratelimit.c does, so a Redis key is at
 *   most 235 bytes). Every write sets the hash's expiry to the time the
 *   bucket is full again (+100 ms): a missing bucket behaves exactly as a
 *   full one, so Redis's TTL evicts idle buckets and memory stays bounded by
 *   the keys active within one window. Redis's maxmemory policy is the outer
 *   bound; an evicted bucket only forgets consumption.
 * - Arithmetic is Lua's doubles, exact for every value the script can hold
 *   (|level| < 2^53: the most negative balance is clamped at -2^52 units).
 *   A limit change carries the balance over in tokens, rounded toward zero in
 *   floating point (it may differ from ratelimit.c by one unit).
 * The script is sent as EVALSHA and re-sent as EVAL when Redis answers
 * NOSCRIPT (after a restart or SCRIPT FLUSH); SCRIPT LOAD is also sent on
 * every connect so that this is rare.
 *
 * Connection: one per redis_limit, i.e. one per worker, created on that
 * worker's event_base and driven by hiredis's asynchronous API through its
 * libevent adapter. No call ever blocks the loop: a host name is resolved by
 * glibc's getaddrinfo_a (its own thread), polled from the loop every 5 ms; an
 * IPv4 address is preferred when the name has both. A lost connection is
 * re-established with exponential backoff (backoff_min_ms doubling to
 * backoff_max_ms, +-20% jitter, reset by a successful connect). A TCP
 * connect has its own deadline, connect_timeout_ms.
 *
 * Failure policy: FAIL OPEN TO THE LOCAL LIMITER. A check is answered by
 * ratelimit_check() on the process's local limiter (passed to redis_limit_new)
 * whenever Redis cannot answer it in time:
 * - no connection (never connected, lost, reconnecting, name not resolved);
 * - Redis answered an error (NOAUTH, OOM, script error, ...);
 * - no answer within deadline_ms (default 50 ms) of the call. The connection
 *   is then "degraded": later checks go straight to the local limiter, without
 *   waiting, until any reply arrives on it. If none arrives within stall_ms
 *   (default 1000 ms) of the first missed deadline, the connection is dropped
 *   and re-established (this is what gets us off a frozen server or a dead
 *   peer that never sent a reset);
 * - more than max_inflight commands already waiting on the connection.
 * During an outage each instance enforces the limit on its own (N instances
 * allow up to N times the limit): availability over exactness, since the
 * limiter protects cost, not correctness. Every operation answered locally
 * counts once in chatd_ratelimit_redis_fallback_total (metrics_redis_fallback).
 * One warning is logged when an outage begins (the first fallback after a
 * Redis answer, with the reason) and one info line when it ends (the first
 * Redis answer after it), never one per request.
 * Debits follow the same policy without a deadline: a debit is sent to Redis
 * when the connection is usable and applied to the local limiter otherwise,
 * or when Redis answers it with an error or the connection is lost before the
 * answer (it may then have been applied in Redis as well: counted twice is the
 * safe side).
 *
 * Cancellation: redis_limit_check returns a handle. Until its callback has
 * started, redis_limit_cancel(handle) guarantees that the callback will never
 * run (a reply arriving later is read and dropped). After the callback has
 * started the handle is invalid: the owner clears its copy in the callback.
 * So the owner of a request keeps the handle while the check is in flight and
 * cancels it when its client goes away; no callback can then run into freed
 * memory.
 *
 * Thread: a redis_limit belongs to the thread running its event_base (the
 * worker); every function below must be called on that thread, and callbacks
 * run there. The local ratelimit it falls back to is thread-safe and shared by
 * all workers. Nothing here takes a lock.
 */
#ifndef CHATD_GUARD_REDIS_LIMIT_H
#define CHATD_GUARD_REDIS_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"
#include "guard/ratelimit.h"

struct event_base;

#define REDIS_LIMIT_MAX_HOST 255 /* host name or address bytes */
#define REDIS_LIMIT_MAX_USER 127 /* ACL user name bytes */
#define REDIS_LIMIT_MAX_PASS 255 /* password bytes (after %-decoding) */
#define REDIS_LIMIT_MAX_URL 1024 /* REDIS_URL bytes */

typedef struct redis_limit_config {
    char host[REDIS_LIMIT_MAX_HOST + 1];     /* name, IPv4 or IPv6 address (no brackets) */
    int port;                                /* 1..65535 (default 6379) */
    char username[REDIS_LIMIT_MAX_USER + 1]; /* "" = no ACL user ("AUTH <password>") */
    char password[REDIS_LIMIT_MAX_PASS + 1]; /* "" = no AUTH */
    int db;                                  /* SELECTed when not 0 */
    ratelimit_spec requests;                 /* default RATELIMIT_REQUESTS limit: the same as the local limiter's */
    ratelimit_spec tokens;                   /* default RATELIMIT_TOKENS limit: the same as the local limiter's */
    int deadline_ms;                         /* a check not answered by Redis within this fails open (default 50) */
    int connect_timeout_ms;                  /* name resolution excluded (default 1000) */
    int stall_ms;        /* drop a connection silent this long after a missed deadline (default 1000) */
    int backoff_min_ms;  /* first reconnect delay (default 100) */
    int backoff_max_ms;  /* largest reconnect delay (default 5000) */
    size_t max_inflight; /* commands waiting on the connection before falling back (default 1024) */
} redis_limit_config;

/* Fills cfg with the defaults above, host "127.0.0.1", no limits (off). */
void redis_limit_config_init(redis_limit_config *cfg);

/*
 * Parses REDIS_URL, redis://[[username]:password@]host[:port][/db] (host a
 * name, an IPv4 address or a bracketed IPv6 address; user and password may be
 * %-encoded; db 0..65535), into the connection fields of cfg (host, port,
 * username, password, db), leaving the other fields as they are. On failure
 * returns CHAT_EINVAL, leaves cfg unchanged and writes one line saying what is
 * wrong into err (errlen bytes, may be 0); the line never contains the
 * password. Any thread.
 */
chat_rc redis_limit_parse_url(const char *url, redis_limit_config *cfg, char *err, size_t errlen) CHAT_MUST_CHECK;

typedef struct redis_limit redis_limit;
typedef struct redis_limit_req redis_limit_req;

/*
 * Creates a limiter on base (the worker's loop) and starts connecting (the
 * connection completes on the loop; checks issued before that fail open).
 * cfg is copied; local is borrowed and must outlive the redis_limit. Invalid
 * specs in cfg are a programming error (asserted; off in release builds).
 * Never returns NULL (aborts on OOM). Call on the thread that will run base.
 */
redis_limit *redis_limit_new(struct event_base *base, const redis_limit_config *cfg, ratelimit *local);

/*
 * Closes the connection and frees the limiter. Checks still in flight are
 * dropped: their callbacks never run and their handles become invalid, so
 * call this after every owner of a handle is gone (e.g. after the worker's
 * HTTP server is freed). Not from inside a redis_limit callback. Accepts NULL.
 * base must still exist.
 */
void redis_limit_free(redis_limit *rl);

/* Receives the decision of one check. res is valid during the call only. */
typedef void (*redis_limit_cb)(void *ud, const ratelimit_result *res);

/*
 * Checks key against its limit of the given kind, as ratelimit_check does:
 * spec is the key's own limit or NULL for the configured default of that
 * kind; RATELIMIT_REQUESTS takes one token when allowed; RATELIMIT_TOKENS
 * only tests (a missing bucket is not created); key NULL is the empty key
 * (copied, any length). Asynchronous: calls cb(ud, res) exactly once, later,
 * on the loop, never from inside this call, unless the returned handle is
 * cancelled first. When the limit is off, res says so (limited false,
 * allowed true) without asking Redis. Never returns NULL.
 */
redis_limit_req *redis_limit_check(redis_limit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                                   redis_limit_cb cb, void *ud);

/*
 * Cancels a check whose callback has not started: the callback will never
 * run. h must be a handle returned by redis_limit_check whose callback has
 * not run yet (inside its own callback, cancelling it is a harmless no-op);
 * NULL is accepted. The memory is released when Redis's reply (if any) has
 * been read.
 */
void redis_limit_cancel(redis_limit_req *h);

/*
 * Subtracts amount tokens from key's bucket, as ratelimit_debit does (<= 0 is
 * ignored, the balance may go negative, a limit that is off makes it a
 * no-op). Fire and forget: nothing is reported back; see the failure policy
 * above for where it is applied.
 */
void redis_limit_debit(redis_limit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                       int64_t amount);

/* True when the connection is established and not degraded, i.e. when a
 * check issued now would be sent to Redis. */
bool redis_limit_connected(const redis_limit *rl);

/* Counters of one redis_limit, for tests and diagnostics. */
typedef struct redis_limit_stats {
    uint64_t redis_answers;    /* checks answered by Redis */
    uint64_t fallbacks;        /* checks and debits served by the local limiter */
    uint64_t deadlines;        /* checks whose deadline passed before Redis answered */
    uint64_t connects;         /* connections established */
    uint64_t connect_failures; /* attempts that failed: resolution, refused, timed out */
    uint64_t outages;          /* outages begun (each logged once) */
} redis_limit_stats;

void redis_limit_get_stats(const redis_limit *rl, redis_limit_stats *out);

#endif
