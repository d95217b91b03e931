/*
 * redis_limit.c: token buckets in Redis, one asynchronous hiredis connection
 * per worker loop, failing open to the local limiter (contract in
 * redis_limit.h).
 *
 * Request life: every check or debit is a redis_limit_req on the limiter's
 * list. It is freed when two things are true: nobody will be called back any
 * more (`done`: answered, cancelled, or a debit, which never calls back) and
 * hiredis no longer holds it as a command's privdata (`in_redis` false: its
 * reply, or the NULL reply hiredis delivers when a connection goes away, has
 * been seen). That is what lets a deadline or a cancellation answer or drop a
 * check at once while its reply is still on the wire: the late reply finds the
 * request done and only frees it.
 *
 * Each request embeds one timer: the deadline while a command is in flight,
 * or a zero timeout that delivers a local answer on the next loop turn (the
 * callback never runs inside redis_limit_check).
 *
 * Connection states: IDLE (nothing, a reconnect timer pending), RESOLVING
 * (getaddrinfo_a running, polled by the same timer), CONNECTING (hiredis
 * context, connect deadline on that timer), READY. Only READY and not
 * degraded sends commands; every other state answers locally.
 *
 * hiredis 0.14 rules this relies on: redisAsyncFree called inside a hiredis
 * callback is deferred until the callback returns; redisAsyncFree runs every
 * pending reply callback with a NULL reply, then the disconnect callback if
 * the context had connected; a failed connect calls the connect callback with
 * REDIS_ERR and frees the context afterwards; a command issued on a context
 * being freed or disconnected returns REDIS_ERR.
 */
#define _GNU_SOURCE
#include "guard/redis_limit.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/util.h"
#include "guard/metrics.h"

#define KEY_PREFIX "chatd:rl:"
/* "chatd:rl:" + "requests:" + the key as ratelimit_key_normalise writes it. */
#define RKEYBUF (sizeof KEY_PREFIX + sizeof "requests:" + RATELIMIT_KEYBUF)
#define RESOLVE_POLL_MS 5
#define DETAIL_MAX 160

/*
 * The bucket, atomically. KEYS[1] the bucket's hash; ARGV: op (0 take one
 * request token, 1 test for one token, 2 debit), count, window_ms, amount.
 * Returns {allowed, limit, remaining, reset_s, retry_after_s}. Hash fields:
 * l level in units (one token = window_ms units), u time of l (Redis ms),
 * c and w the limit l is expressed in. The arithmetic mirrors ratelimit.c
 * (refill, change_limit, fill_result); idiv corrects the floating-point
 * quotient so that it is the exact floor for any integers below 2^53.
 */
static const char SCRIPT[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local op = tonumber(ARGV[1])\n"
    "local count = tonumber(ARGV[2])\n"
    "local win = tonumber(ARGV[3])\n"
    "local amount = tonumber(ARGV[4])\n"
    "local cap = count * win\n"
    "local FLOOR = -4503599627370496\n"
    "local function idiv(a, b)\n"
    "  local q = math.floor(a / b)\n"
    "  if (q + 1) * b <= a then q = q + 1 elseif q * b > a then q = q - 1 end\n"
    "  return q\n"
    "end\n"
    "local function cdiv(a, b)\n"
    "  if a <= 0 then return 0 end\n"
    "  return idiv(a + b - 1, b)\n"
    "end\n"
    "local function refill(level, upd, now, c, w)\n"
    "  if now <= upd then return level, upd end\n"
    "  local full = c * w\n"
    "  if level < full then\n"
    "    if now - upd >= cdiv(full - level, c) then level = full else level = level + (now - upd) * c end\n"
    "  end\n"
    "  return level, now\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)\n"
    "local st = redis.call('HMGET', KEYS[1], 'l', 'u', 'c', 'w')\n"
    "local level, upd = tonumber(st[1]), tonumber(st[2])\n"
    "local oc, ow = tonumber(st[3]), tonumber(st[4])\n"
    "if level and upd and oc and ow and oc > 0 and ow > 0 then\n"
    "  if oc ~= count or ow ~= win then\n"
    "    level, upd = refill(level, upd, now, oc, ow)\n"
    "    local lv = level / ow * win\n"
    "    if lv >= 0 then lv = math.floor(lv) else lv = math.ceil(lv) end\n"
    "    if lv > cap then lv = cap end\n"
    "    if lv < FLOOR then lv = FLOOR end\n"
    "    level = lv\n"
    "  end\n"
    "elseif op == 1 then\n"
    "  return {1, count, count, 0, 0}\n"
    "else\n"
    "  level, upd = cap, now\n"
    "end\n"
    "level, upd = refill(level, upd, now, count, win)\n"
    "local allowed = 1\n"
    "if op == 2 then\n"
    "  if amount > 1000000000 then amount = 1000000000 end\n"
    "  level = level - amount * win\n"
    "  if level < FLOOR then level = FLOOR end\n"
    "elseif level >= win then\n"
    "  if op == 0 then level = level - win end\n"
    "else\n"
    "  allowed = 0\n"
    "end\n"
    "if op ~= 1 then\n"
    "  redis.call('HSET', KEYS[1], 'l', string.format('%.0f', level), 'u', string.format('%.0f', upd),\n"
    "             'c', string.format('%.0f', count), 'w', string.format('%.0f', win))\n"
    "  redis.call('PEXPIRE', KEYS[1], upd - now + cdiv(cap - level, count) + 100)\n"
    "end\n"
    "local remaining = 0\n"
    "if level > 0 then remaining = idiv(level, win) end\n"
    "local retry = 0\n"
    "if allowed == 0 then\n"
    "  local ms = cdiv(win - level, count)\n"
    "  if ms < 1000 then retry = 1 else retry = cdiv(ms, 1000) end\n"
    "end\n"
    "return {allowed, count, remaining, cdiv(cdiv(cap - level, count), 1000), retry}\n";

typedef enum { ST_IDLE, ST_RESOLVING, ST_CONNECTING, ST_READY } conn_state;
typedef enum { OP_TAKE = 0, OP_TEST = 1, OP_DEBIT = 2 } script_op;

struct redis_limit_req {
    redis_limit *rl;
    struct redis_limit_req *prev, *next; /* the limiter's list of live requests */
    struct event timer;                  /* deadline while in flight, or the deferred local answer */
    redis_limit_cb cb;                   /* NULL for a debit */
    void *ud;
    const char *reason; /* why a deferred answer is local (static string); NULL: limit off */
    ratelimit_kind kind;
    ratelimit_spec eff; /* the limit applied (caller's or default) */
    script_op op;
    int64_t amount;     /* debit only */
    bool off;           /* the limit is off: answer "not limited" without Redis */
    bool in_redis;      /* hiredis holds us as privdata: a reply (maybe NULL) will come */
    bool done;          /* the callback has run, was cancelled, or never will (debit) */
    bool resent;        /* EVAL already sent after NOSCRIPT */
    size_t rkey_len;    /* bytes of rkey */
    size_t key_off;     /* where the normalised key starts in rkey (for the local limiter) */
    char rkey[RKEYBUF]; /* "chatd:rl:<kind>:<key>" */
};

/* A running getaddrinfo_a and the storage it writes into (must outlive it). */
typedef struct resolve {
    struct gaicb cb;
    struct addrinfo hints;
    char service[8];
    char name[REDIS_LIMIT_MAX_HOST + 1];
} resolve;

struct redis_limit {
    struct event_base *base;
    redis_limit_config cfg;
    ratelimit *local;      /* borrowed: the fallback */
    redisAsyncContext *ac; /* NULL unless CONNECTING or READY */
    conn_state state;
    bool numeric;          /* cfg.host is an address literal: no resolution */
    bool degraded;         /* a deadline passed and no reply arrived since */
    bool outage;           /* a fallback happened and no Redis answer since (logged) */
    bool closing;          /* redis_limit_free is running */
    struct event conn_ev;  /* reconnect backoff, resolution polling, connect deadline */
    struct event stall_ev; /* degraded too long: drop the connection */
    int64_t backoff_ms;    /* next reconnect delay */
    uint64_t rng;          /* jitter */
    resolve *res;          /* while RESOLVING */
    size_t inflight;       /* commands with a reply outstanding */
    redis_limit_req *reqs; /* live requests */
    redis_limit_stats st;
    char detail[DETAIL_MAX]; /* the last reason Redis could not be used (for the outage log) */
    char sha[41];            /* SHA1 of SCRIPT in hex, for EVALSHA */
};

/* ---- configuration and URL ------------------------------------------------------ */

void redis_limit_config_init(redis_limit_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->port = 6379;
    cfg->deadline_ms = 50;
    cfg->connect_timeout_ms = 1000;
    cfg->stall_ms = 1000;
    cfg->backoff_min_ms = 100;
    cfg->backoff_max_ms = 5000;
    cfg->max_inflight = 1024;
}

/* %-decodes [s, s+n) into out (cap bytes with the NUL). False if malformed, too long or NUL. */
static bool pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return false;
            int h = chat_hex_value((unsigned char)s[i + 1]), l = chat_hex_value((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return false;
            c = h * 16 + l;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap)
            return false;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return true;
}

/* Parses 1..5 decimal digits in [s, s+n) as 0..65535. */
static bool parse_u16(const char *s, size_t n, int *out)
{
    if (n == 0 || n > 5)
        return false;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > 65535)
        return false;
    *out = v;
    return true;
}

chat_rc redis_limit_parse_url(const char *url, redis_limit_config *cfg, char *err, size_t errlen)
{
    chat_rc rc = CHAT_EINVAL;
    redis_limit_config *c = chat_xmalloc(sizeof *c);
    *c = *cfg;
    c->username[0] = c->password[0] = '\0';
    c->port = 6379;
    c->db = 0;
    if (err && errlen)
        err[0] = '\0';

    if (!url || !*url) {
        chat_set_err(err, errlen, "empty Redis URL (expected redis://[[user]:password@]host[:port][/db])");
        goto out;
    }
    if (strlen(url) > REDIS_LIMIT_MAX_URL) {
        chat_set_err(err, errlen, "Redis URL longer than %d bytes", REDIS_LIMIT_MAX_URL);
        goto out;
    }
    if (strncasecmp(url, "redis://", 8) != 0) {
        chat_set_err(err, errlen, "Redis URL must start with redis:// (rediss:// and unix sockets are not supported)");
        goto out;
    }
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    if (*end == '?' || *end == '#') {
        chat_set_err(err, errlen, "Redis URL options (?...) and fragments are not supported");
        goto out;
    }
    const char *at = memrchr(p, '@', (size_t)(end - p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pass = colon ? colon + 1 : p;
        if (colon && !pct_decode(p, (size_t)(colon - p), c->username, sizeof c->username)) {
            chat_set_err(err, errlen, "Redis URL: bad or too long user name (at most %d bytes, %%-encoded)",
                         REDIS_LIMIT_MAX_USER);
            goto out;
        }
        if (!pct_decode(pass, (size_t)(at - pass), c->password, sizeof c->password)) {
            chat_set_err(err, errlen, "Redis URL: bad or too long password (at most %d bytes, %%-encoded)",
                         REDIS_LIMIT_MAX_PASS);
            goto out;
        }
        p = at + 1;
    }
    const char *host = p, *host_end, *after;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(end - host));
        if (!host_end) {
            chat_set_err(err, errlen, "Redis URL: '[' without ']' around an IPv6 address");
            goto out;
        }
        after = host_end + 1;
        for (const char *q = host; q < host_end; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.') {
                chat_set_err(err, errlen, "Redis URL: bad IPv6 address");
                goto out;
            }
    } else {
        host_end = memchr(p, ':', (size_t)(end - p));
        if (!host_end)
            host_end = end;
        after = host_end;
        for (const char *q = host; q < host_end; q++)
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-' && *q != '_') {
                chat_set_err(err, errlen, "Redis URL: bad character in host name (IPv6 addresses go in brackets)");
                goto out;
            }
    }
    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0 || hlen > REDIS_LIMIT_MAX_HOST) {
        chat_set_err(err, errlen, "Redis URL: host name empty or longer than %d bytes", REDIS_LIMIT_MAX_HOST);
        goto out;
    }
    memcpy(c->host, host, hlen);
    c->host[hlen] = '\0';
    if (after < end) {
        if (*after != ':' || !parse_u16(after + 1, (size_t)(end - after - 1), &c->port) || c->port == 0) {
            chat_set_err(err, errlen, "Redis URL: port must be a number 1..65535");
            goto out;
        }
    }
    if (*end == '/' && end[1] && !parse_u16(end + 1, strlen(end + 1), &c->db)) {
        chat_set_err(err, errlen, "Redis URL: database must be a number 0..65535 after the '/'");
        goto out;
    }
    *cfg = *c;
    rc = CHAT_OK;
out:
    explicit_bzero(c, sizeof *c); /* a copy of the password */
    free(c);
    return rc;
}

/* ---- small helpers -------------------------------------------------------------- */

static void add_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = { .tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(ev, &tv);
}

/* Remembers why Redis cannot be used right now (the detail of the outage log line). */
static void note(redis_limit *rl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(redis_limit *rl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rl->detail, sizeof rl->detail, fmt, ap);
    va_end(ap);
}

/* One operation served locally: counted, and the first of an outage logged. */
static void count_fallback(redis_limit *rl, const char *reason)
{
    rl->st.fallbacks++;
    metrics_redis_fallback();
    if (rl->outage)
        return;
    rl->outage = true;
    rl->st.outages++;
    chat_log(LOG_WARN, "redis rate limiter unavailable, failing open to the local limiter",
             json_pack("{s:s, s:s, s:s, s:i}", "reason", reason, "detail", rl->detail[0] ? rl->detail : reason,
                       "redis_host", rl->cfg.host, "redis_port", rl->cfg.port));
}

/* Redis answered a script: the end of an outage, if there was one. */
static void redis_answered(redis_limit *rl)
{
    if (!rl->outage)
        return;
    rl->outage = false;
    chat_log(LOG_INFO, "redis rate limiter recovered",
             json_pack("{s:s, s:i}", "redis_host", rl->cfg.host, "redis_port", rl->cfg.port));
}

static void clear_degraded(redis_limit *rl)
{
    if (!rl->degraded)
        return;
    rl->degraded = false;
    event_del(&rl->stall_ev);
}

/* ---- requests ------------------------------------------------------------------- */

/* Frees req if no callback can run and hiredis no longer holds it. */
static void maybe_free(redis_limit_req *req)
{
    if (!req->done || req->in_redis)
        return;
    redis_limit *rl = req->rl;
    event_del(&req->timer);
    if (req->prev)
        req->prev->next = req->next;
    else
        rl->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    free(req);
}

/* Calls the callback once, then lets the request go. */
static void deliver(redis_limit_req *req, const ratelimit_result *res)
{
    event_del(&req->timer);
    req->done = true;
    req->cb(req->ud, res);
    maybe_free(req);
}

/* Answers from the local limiter (or "not limited" when the limit is off). */
static void answer_local(redis_limit_req *req, const char *reason)
{
    ratelimit_result res;
    if (req->off) {
        memset(&res, 0, sizeof res);
        res.allowed = true;
    } else {
        count_fallback(req->rl, reason);
        ratelimit_check(req->rl->local, req->kind, req->rkey + req->key_off, &req->eff, chat_mono_ms(), &res);
    }
    deliver(req, &res);
}

static void on_req_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_limit_req *req = arg;
    redis_limit *rl = req->rl;
    if (req->done)
        return;
    if (!req->in_redis) { /* a deferred local answer */
        answer_local(req, req->reason);
        return;
    }
    /* The deadline: answer now; the reply, if it comes, will only free us. */
    rl->st.deadlines++;
    note(rl, "no answer within %d ms", rl->cfg.deadline_ms);
    if (!rl->degraded) {
        rl->degraded = true;
        add_ms(&rl->stall_ev, rl->cfg.stall_ms);
    }
    answer_local(req, "timeout");
}

static redis_limit_req *new_req(redis_limit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                                script_op op)
{
    redis_limit_req *req = chat_xcalloc(1, sizeof *req);
    req->rl = rl;
    req->kind = kind;
    req->op = op;
    evtimer_assign(&req->timer, rl->base, on_req_timer, req);
    req->next = rl->reqs;
    if (rl->reqs)
        rl->reqs->prev = req;
    rl->reqs = req;

    if ((unsigned)kind >= RATELIMIT_KIND_COUNT) {
        req->off = true;
        return req;
    }
    const ratelimit_spec *s = spec ? spec : kind == RATELIMIT_REQUESTS ? &rl->cfg.requests : &rl->cfg.tokens;
    assert(ratelimit_spec_valid(s));
    if (s->count <= 0 || !ratelimit_spec_valid(s))
        req->off = true;
    else
        req->eff = *s;

    int n = snprintf(req->rkey, sizeof req->rkey, KEY_PREFIX "%s:", kind == RATELIMIT_REQUESTS ? "requests" : "tokens");
    req->key_off = (size_t)n;
    /* The same stored form as the local limiter's: bounded, distinct keys stay distinct. */
    req->rkey_len = req->key_off + ratelimit_key_normalise(key, req->rkey + req->key_off);
    return req;
}

/* Why a command cannot be sent now, or NULL if it can. */
static const char *unusable(const redis_limit *rl)
{
    if (rl->state != ST_READY || !rl->ac)
        return "unavailable";
    if (rl->degraded)
        return "timeout";
    if (rl->inflight >= rl->cfg.max_inflight)
        return "overloaded";
    return NULL;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends the script for req (EVALSHA, or EVAL when full). False if hiredis refused. */
static bool send_script(redis_limit *rl, redis_limit_req *req, bool full)
{
    int r;
    if (full)
        r = redisAsyncCommand(rl->ac, on_reply, req, "EVAL %s 1 %b %lld %lld %lld %lld", SCRIPT, req->rkey,
                              req->rkey_len, (long long)req->op, (long long)req->eff.count,
                              (long long)req->eff.window_ms, (long long)req->amount);
    else
        r = redisAsyncCommand(rl->ac, on_reply, req, "EVALSHA %s 1 %b %lld %lld %lld %lld", rl->sha, req->rkey,
                              req->rkey_len, (long long)req->op, (long long)req->eff.count,
                              (long long)req->eff.window_ms, (long long)req->amount);
    if (r != REDIS_OK) {
        note(rl, "command refused: %s", rl->ac->errstr[0] ? rl->ac->errstr : "connection closing");
        return false;
    }
    req->in_redis = true;
    rl->inflight++;
    return true;
}

static bool parse_result(const redisReply *r, ratelimit_result *out)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5)
        return false;
    for (size_t i = 0; i < 5; i++)
        if (!r->element[i] || r->element[i]->type != REDIS_REPLY_INTEGER)
            return false;
    memset(out, 0, sizeof *out);
    out->limited = true;
    out->allowed = r->element[0]->integer != 0;
    out->limit = r->element[1]->integer;
    out->remaining = r->element[2]->integer;
    out->reset_s = r->element[3]->integer;
    out->retry_after_s = r->element[4]->integer;
    return true;
}

static bool is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Describes a reply that is not a script result (for the outage log). */
static void note_bad_reply(redis_limit *rl, const redisReply *r)
{
    if (!r)
        note(rl, "connection lost before the answer");
    else if (r->type == REDIS_REPLY_ERROR)
        note(rl, "redis error: %.120s", r->str ? r->str : "");
    else
        note(rl, "unexpected reply type %d", r->type);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    redisReply *r = reply;
    redis_limit_req *req = privdata;
    redis_limit *rl = req->rl;

    req->in_redis = false;
    rl->inflight--;
    if (r)
        clear_degraded(rl); /* the server is alive: it answered */
    if (rl->closing) {
        maybe_free(req);
        return;
    }
    if (is_noscript(r) && !req->resent && (req->op == OP_DEBIT || !req->done)) {
        req->resent = true;
        if (send_script(rl, req, true))
            return;
    }
    if (req->op == OP_DEBIT) {
        if (r && r->type == REDIS_REPLY_ARRAY) {
            redis_answered(rl);
        } else {
            note_bad_reply(rl, r);
            count_fallback(rl, r ? "error" : "unavailable");
            ratelimit_debit(rl->local, req->kind, req->rkey + req->key_off, &req->eff, req->amount, chat_mono_ms());
        }
        maybe_free(req);
        return;
    }
    if (req->done) { /* cancelled or answered at its deadline */
        maybe_free(req);
        return;
    }
    ratelimit_result res;
    if (parse_result(r, &res)) {
        rl->st.redis_answers++;
        redis_answered(rl);
        deliver(req, &res);
        return;
    }
    note_bad_reply(rl, r);
    answer_local(req, r ? "error" : "unavailable");
}

/* ---- the connection ------------------------------------------------------------- */

static void schedule_reconnect(redis_limit *rl)
{
    if (rl->state != ST_READY)
        rl->st.connect_failures++; /* never got to READY: this attempt failed */
    rl->state = ST_IDLE;
    /* +-20% so that the workers of every instance do not reconnect in step. */
    rl->rng ^= rl->rng << 13;
    rl->rng ^= rl->rng >> 7;
    rl->rng ^= rl->rng << 17;
    int64_t d = rl->backoff_ms * 8 / 10 + (int64_t)(rl->rng % (uint64_t)(rl->backoff_ms * 4 / 10 + 1));
    add_ms(&rl->conn_ev, d);
    rl->backoff_ms = rl->backoff_ms * 2 > rl->cfg.backoff_max_ms ? rl->cfg.backoff_max_ms : rl->backoff_ms * 2;
}

/* The connection is gone (the context is freed or about to be by hiredis). */
static void connection_lost(redis_limit *rl)
{
    rl->ac = NULL;
    clear_degraded(rl);
    if (!rl->closing)
        schedule_reconnect(rl); /* counts a failure unless we were READY */
    rl->state = ST_IDLE;
}

/* Closes the connection from our side (not inside a hiredis callback). */
static void drop_connection(redis_limit *rl)
{
    redisAsyncContext *ac = rl->ac;
    if (!ac)
        return;
    event_del(&rl->conn_ev);
    redisAsyncFree(ac); /* pending replies come back NULL; on_disconnect runs if it had connected */
    if (rl->ac == ac)
        connection_lost(rl);
}

static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_limit *rl = ac->data;
    redisReply *r = reply;
    if (r)
        clear_degraded(rl);
    if (r && r->type == REDIS_REPLY_ERROR && !rl->closing) {
        note(rl, "%s failed: %.120s", (const char *)privdata, r->str ? r->str : "");
        chat_log(LOG_ERROR, "redis rate limiter: connection setup failed",
                 json_pack("{s:s, s:s}", "command", (const char *)privdata, "error", r->str ? r->str : ""));
    }
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    redis_limit *rl = ac->data;
    event_del(&rl->conn_ev);
    if (status != REDIS_OK) {
        note(rl, "connect to %s:%d failed: %.100s", rl->cfg.host, rl->cfg.port, ac->errstr);
        connection_lost(rl); /* hiredis frees ac after we return */
        return;
    }
    rl->state = ST_READY;
    rl->backoff_ms = rl->cfg.backoff_min_ms;
    rl->st.connects++;
    /* Pipelined before any script: Redis runs them in order. */
    if (rl->cfg.password[0]) {
        if (rl->cfg.username[0])
            redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s %s", rl->cfg.username, rl->cfg.password);
        else
            redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s", rl->cfg.password);
    }
    if (rl->cfg.db)
        redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d", rl->cfg.db);
    redisAsyncCommand(ac, on_setup_reply, "SCRIPT LOAD", "SCRIPT LOAD %s", SCRIPT);
    chat_log(LOG_INFO, "redis rate limiter connected",
             json_pack("{s:s, s:i}", "redis_host", rl->cfg.host, "redis_port", rl->cfg.port));
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redis_limit *rl = cac->data;
    if (!rl->closing && status != REDIS_OK)
        note(rl, "connection lost: %.120s", cac->errstr);
    else if (!rl->closing && !rl->detail[0])
        note(rl, "connection closed");
    connection_lost(rl);
}

static void connect_addr(redis_limit *rl, const char *addr)
{
    redisAsyncContext *ac = redisAsyncConnect(addr, rl->cfg.port);
    if (!ac || ac->err) {
        note(rl, "connect to %s:%d failed: %.100s", rl->cfg.host, rl->cfg.port, ac ? ac->errstr : "no memory");
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(rl);
        return;
    }
    ac->data = rl;
    if (redisLibeventAttach(ac, rl->base) != REDIS_OK) {
        note(rl, "cannot attach to the event loop");
        redisAsyncFree(ac);
        schedule_reconnect(rl);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rl->ac = ac;
    rl->state = ST_CONNECTING;
    add_ms(&rl->conn_ev, rl->cfg.connect_timeout_ms);
}

static void free_resolve(resolve *res)
{
    if (res->cb.ar_result)
        freeaddrinfo(res->cb.ar_result);
    free(res);
}

static void start_connect(redis_limit *rl)
{
    rl->detail[0] = '\0';
    if (rl->numeric) {
        connect_addr(rl, rl->cfg.host);
        return;
    }
    resolve *res = chat_xcalloc(1, sizeof *res);
    snprintf(res->name, sizeof res->name, "%s", rl->cfg.host);
    snprintf(res->service, sizeof res->service, "%d", rl->cfg.port);
    res->hints.ai_family = AF_UNSPEC;
    res->hints.ai_socktype = SOCK_STREAM;
    res->cb.ar_name = res->name;
    res->cb.ar_service = res->service;
    res->cb.ar_request = &res->hints;
    struct gaicb *list[1] = { &res->cb };
    int e = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
    if (e != 0) {
        note(rl, "cannot resolve %s: %s", rl->cfg.host, gai_strerror(e));
        free(res);
        schedule_reconnect(rl);
        return;
    }
    rl->res = res;
    rl->state = ST_RESOLVING;
    add_ms(&rl->conn_ev, RESOLVE_POLL_MS);
}

/* Polls the running resolution; connects to its first IPv4 address (else the first one). */
static void poll_resolve(redis_limit *rl)
{
    resolve *res = rl->res;
    int e = gai_error(&res->cb);
    if (e == EAI_INPROGRESS) {
        add_ms(&rl->conn_ev, RESOLVE_POLL_MS);
        return;
    }
    rl->res = NULL;
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *ai = e == 0 ? res->cb.ar_result : NULL; ai; ai = ai->ai_next)
        if (!pick || (ai->ai_family == AF_INET && pick->ai_family != AF_INET))
            pick = ai;
    char addr[INET6_ADDRSTRLEN] = "";
    if (pick && pick->ai_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)pick->ai_addr)->sin_addr, addr, sizeof addr);
    else if (pick && pick->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)pick->ai_addr)->sin6_addr, addr, sizeof addr);
    if (!addr[0]) {
        note(rl, "cannot resolve %s: %s", rl->cfg.host, e ? gai_strerror(e) : "no address");
        free_resolve(res);
        schedule_reconnect(rl);
        return;
    }
    free_resolve(res);
    connect_addr(rl, addr);
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_limit *rl = arg;
    switch (rl->state) {
    case ST_IDLE: start_connect(rl); break;
    case ST_RESOLVING: poll_resolve(rl); break;
    case ST_CONNECTING:
        note(rl, "connect to %s:%d timed out after %d ms", rl->cfg.host, rl->cfg.port, rl->cfg.connect_timeout_ms);
        drop_connection(rl);
        break;
    case ST_READY: break;
    }
}

static void on_stall(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redis_limit *rl = arg;
    if (!rl->degraded || rl->state != ST_READY)
        return;
    note(rl, "no answer for %d ms: connection dropped", rl->cfg.stall_ms);
    chat_log(LOG_WARN, "redis rate limiter: server not answering, reconnecting",
             json_pack("{s:s, s:i, s:i}", "redis_host", rl->cfg.host, "redis_port", rl->cfg.port, "stall_ms",
                       rl->cfg.stall_ms));
    drop_connection(rl);
}

/* ---- public --------------------------------------------------------------------- */

redis_limit *redis_limit_new(struct event_base *base, const redis_limit_config *cfg, ratelimit *local)
{
    assert(ratelimit_spec_valid(&cfg->requests) && ratelimit_spec_valid(&cfg->tokens));
    redis_limit *rl = chat_xcalloc(1, sizeof *rl);
    rl->base = base;
    rl->cfg = *cfg;
    rl->local = local;
    if (!ratelimit_spec_valid(&rl->cfg.requests))
        rl->cfg.requests = (ratelimit_spec){ 0, 0 };
    if (!ratelimit_spec_valid(&rl->cfg.tokens))
        rl->cfg.tokens = (ratelimit_spec){ 0, 0 };
    if (rl->cfg.deadline_ms < 1)
        rl->cfg.deadline_ms = 1;
    if (rl->cfg.connect_timeout_ms < 1)
        rl->cfg.connect_timeout_ms = 1;
    if (rl->cfg.stall_ms < rl->cfg.deadline_ms)
        rl->cfg.stall_ms = rl->cfg.deadline_ms;
    if (rl->cfg.backoff_min_ms < 1)
        rl->cfg.backoff_min_ms = 1;
    if (rl->cfg.backoff_max_ms < rl->cfg.backoff_min_ms)
        rl->cfg.backoff_max_ms = rl->cfg.backoff_min_ms;
    if (rl->cfg.max_inflight < 1)
        rl->cfg.max_inflight = 1;
    rl->backoff_ms = rl->cfg.backoff_min_ms;
    rl->rng = (uint64_t)chat_mono_us() ^ ((uint64_t)(uintptr_t)rl << 16) ^ 0x9e3779b97f4a7c15ULL;
    if (!rl->rng)
        rl->rng = 1;
    unsigned char a6[16];
    rl->numeric = inet_pton(AF_INET, rl->cfg.host, a6) == 1 || inet_pton(AF_INET6, rl->cfg.host, a6) == 1;

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(SCRIPT, strlen(SCRIPT), md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        chat_fatal("SHA1 unavailable");
    }
    for (unsigned i = 0; i < 20; i++)
        snprintf(rl->sha + 2 * i, 3, "%02x", md[i]);

    evtimer_assign(&rl->conn_ev, base, on_conn_timer, rl);
    evtimer_assign(&rl->stall_ev, base, on_stall, rl);
    start_connect(rl);
    return rl;
}

void redis_limit_free(redis_limit *rl)
{
    if (!rl)
        return;
    rl->closing = true;
    event_del(&rl->conn_ev);
    event_del(&rl->stall_ev);
    for (redis_limit_req *req = rl->reqs, *next; req; req = next) {
        next = req->next;
        req->done = true;
        maybe_free(req);
    }
    if (rl->ac)
        redisAsyncFree(rl->ac); /* the NULL replies free the requests still in flight */
    rl->ac = NULL;
    assert(!rl->reqs);
    if (rl->res) {
        struct gaicb *list[1] = { &rl->res->cb };
        int e = gai_cancel(&rl->res->cb);
        if (e == EAI_NOTCANCELED) {
            /* glibc's thread is writing into it: wait for it a little, else leave it to glibc. */
            struct timespec ts = { 1, 0 };
            gai_suspend((const struct gaicb *const *)list, 1, &ts);
            e = gai_error(&rl->res->cb) == EAI_INPROGRESS ? EAI_NOTCANCELED : EAI_ALLDONE;
        }
        if (e != EAI_NOTCANCELED)
            free_resolve(rl->res);
        rl->res = NULL;
    }
    explicit_bzero(rl->cfg.password, sizeof rl->cfg.password);
    free(rl);
}

redis_limit_req *redis_limit_check(redis_limit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                                   redis_limit_cb cb, void *ud)
{
    redis_limit_req *req = new_req(rl, kind, key, spec, kind == RATELIMIT_TOKENS ? OP_TEST : OP_TAKE);
    req->cb = cb;
    req->ud = ud;
    const char *why = req->off ? NULL : unusable(rl);
    if (!req->off && !why) {
        if (send_script(rl, req, false)) {
            add_ms(&req->timer, rl->cfg.deadline_ms);
            return req;
        }
        why = "unavailable";
    }
    req->reason = why;
    add_ms(&req->timer, 0); /* answered locally on the next loop turn */
    return req;
}

void redis_limit_cancel(redis_limit_req *h)
{
    if (!h || h->done)
        return;
    h->done = true;
    event_del(&h->timer);
    maybe_free(h);
}

void redis_limit_debit(redis_limit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                       int64_t amount)
{
    if (amount <= 0)
        return;
    redis_limit_req *req = new_req(rl, kind, key, spec, OP_DEBIT);
    req->done = true; /* nothing will be called back */
    req->amount = amount > RATELIMIT_MAX_COUNT ? RATELIMIT_MAX_COUNT : amount;
    if (!req->off) {
        const char *why = unusable(rl);
        if (!why && send_script(rl, req, false))
            return;
        count_fallback(rl, why ? why : "unavailable");
        ratelimit_debit(rl->local, req->kind, req->rkey + req->key_off, &req->eff, req->amount, chat_mono_ms());
    }
    maybe_free(req);
}

bool redis_limit_connected(const redis_limit *rl)
{
    return rl->state == ST_READY && rl->ac && !rl->degraded;
}

void redis_limit_get_stats(const redis_limit *rl, redis_limit_stats *out)
{
    *out = rl->st;
}
