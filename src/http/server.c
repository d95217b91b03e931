/*
 * server.c: evhttp wrapped into http_req objects with explicit ownership.
 *
 * How a client disconnect is seen. evhttp notices a closed connection only
 * while it reads or writes. Once a chunked reply started, it watches the socket
 * and runs the connection close callback; before that (a handler waiting for
 * the provider) it reads nothing, so we add our own EV_CLOSED watcher on the
 * socket (epoll's EPOLLRDHUP) for the time the request is pending.
 *
 * evhttp traps handled here (see docs/ARCHITECTURE.md):
 * - when the connection dies during a chunked reply, evhttp detaches the request
 *   from it and leaves it to us: we must call evhttp_send_reply_end() to free it;
 * - a close callback is per connection, so it is cleared before every terminal
 *   call (the connection may carry a later request with another owner);
 * - the idle timeout is a read/write inactivity timeout, not a header deadline:
 *   a client sending one header byte every few seconds would hold a connection
 *   forever. Connection trackers (below) add the deadline;
 * - evhttp frames a body by the first Content-Length it finds, or by chunks when
 *   any Transfer-Encoding says "chunked", and ignores the rest: a request whose
 *   framing another HTTP parser (a proxy in front) could read differently is
 *   answered 400 and its connection closed before dispatch (framing_error), so
 *   the bytes after it are never taken for a next request (request smuggling).
 */
#define _GNU_SOURCE
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_out.h"
#include "core/log.h"
#include "core/util.h"
#include "http/head_check.h"
#include "http/metrics.h"

/*
 * One tracker per connection, for the request-head deadline. evhttp offers no
 * hook when it frees a connection, so the tracker holds a reference on the
 * connection's bufferevent: the memory stays valid after evhttp let go of it,
 * and evhttp letting go is visible as its callbacks being cleared. A sweep timer
 * then drops the reference (closing the socket) and enforces the deadline: a
 * request head must arrive within HEADER_TIMEOUT of the connection opening,
 * and within IDLE_TIMEOUT of the previous response ending.
 *
 * The trackers also carry the connection cap: a tracker is created for every
 * accepted socket and released when its descriptor closes, so the shared
 * count of open connections (http_limits.open_connections) is exact in
 * descriptors, not in what evhttp still thinks is open. A connection accepted
 * past the cap gets a tracker marked refused: on the same loop turn (before
 * evhttp can have read a request from it) the fixed 503 below is written to
 * the socket and the socket is shut down; evhttp then sees EOF and lets it go.
 */
typedef struct conn_track {
    struct conn_track *next;
    struct bufferevent *bev;        /* referenced */
    struct http_req *req;           /* the request being served on it, or NULL */
    int64_t waiting_since;          /* monotonic ms when it started waiting for a head */
    bool served;                    /* at least one request was dispatched (TCP_NODELAY is set then) */
    bool cut;                       /* the deadline passed and the socket was shut down */
    bool refuse_pending;            /* refused past the cap, the 503 not yet written (linked in refusing) */
    struct conn_track *refuse_next; /* next in the server's refusing list */
    atomic_int *count;              /* the shared open-connection count it was added to, or NULL */
    http_head_check head;           /* the raw check of the request head arriving (head_check.h): 400 at dispatch */
} conn_track;

/* Most stream bytes gathered in one loop turn before they are sent at once
 * (http_stream_write); the writer is told "full" long before, at
 * http_limits.stream_buffer_bytes. */
#define STREAM_PEND_MAX (16u * 1024 * 1024)

/* A request still pending this long gets its close watcher (see watch_close). */
#define WATCH_DELAY_MS 20

/* Pause of the listener after a failed accept() (EMFILE and the like). */
#define ACCEPT_BACKOFF_MS 100
/* At most one log line per this period about failing accept() calls. */
#define ACCEPT_LOG_PERIOD_MS 10000

struct http_server {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    http_limits lim;
    http_dispatch_fn dispatch;
    void *ctx;
    int active;
    conn_track *tracks;
    struct event *sweep;
    conn_track *refusing;            /* connections refused past the cap, their 503 still to write */
    struct event *refuse_ev;         /* activated to write them */
    struct event *accept_resume;     /* re-enables the listener after ACCEPT_BACKOFF_MS */
    int64_t accept_logged_at;        /* monotonic ms of the last accept-failure log line */
    int64_t accept_failures;         /* failed accept() calls since that line */
    struct http_server *thread_next; /* next server of this loop thread (see thread_servers) */
    struct http_req *watch_head;     /* requests waiting for their close watcher, oldest first */
    struct http_req *watch_tail;
    struct event *watch_timer;   /* arms the watchers of those pending WATCH_DELAY_MS */
    struct http_req *flush_head; /* streams with written bytes still to send (each holds a ref) */
    struct event *flush_ev;      /* activated to send them, once per loop turn */
};

/* The servers of the current thread. libevent gives a listener's error
 * callback only the listener and evhttp's own argument, so it finds its
 * server here (a loop thread runs one server, tests a few). */
static __thread http_server *thread_servers;

struct http_req {
    http_server *srv;
    struct evhttp_request *req;         /* NULL once the request ended (terminal call or client gone) */
    struct evhttp_connection *evcon;    /* valid while req is */
    struct event *close_watch;          /* EV_CLOSED on the socket while the request is pending */
    struct http_req *wq_prev, *wq_next; /* in the server's queue of watchers to arm */
    bool wq_queued;                     /* in that queue */
    int64_t wq_since;                   /* monotonic ms it was queued */
    conn_track *track;                  /* its connection's tracker, NULL once released */
    int refs;                           /* 1 for dispatch + one per http_req_hold */
    bool streaming;                     /* a chunked reply was started */
    bool ended;                         /* the terminal call was made or the client went away */
    bool client_gone;
    bool want_drain;             /* a write reported "full": call on_drain when the queue empties */
    bool chunk_cb;               /* a chunk went through evhttp with on_written: direct writes may follow */
    chat_buf pend;               /* stream bytes written in this loop turn, sent together (see http_stream_write) */
    bool flush_queued;           /* in the server's flush list */
    struct http_req *flush_next; /* next in that list */
    int status;
    http_method method;
    char id[132]; /* ours, or the client's X-Request-Id (<= 128 chars) */
    char *path;
    char *body;
    size_t body_len;
    struct evkeyvalq query;
    bool query_parsed;
    char peer[64];
    int64_t start_us; /* monotonic, when the request was dispatched: its latency and overhead */
    json_t *log_fields;
    const char *route; /* matched pattern, for metrics */
    void *data;        /* the handler layer's (see http_req_set_data) */
    void (*data_free)(void *);
    int64_t provider_us; /* time spent waiting on the provider */
    void (*on_close)(void *ud);
    void *on_close_ud;
    void (*on_drain)(void *ud);
    void *on_drain_ud;
};

static void req_end(http_req *r);
static void req_maybe_free(http_req *r);

/* ---- listener ---- */

int http_listen(const char *host, int port, int *bound_port, char *err, size_t errlen)
{
    struct addrinfo hints = { 0 }, *res = NULL;
    char portstr[16];
    int fd = -1, one = 1;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve HOST %s: %s", host, gai_strerror(gai));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0)
        goto fail;
    if (listen(fd, 1024) < 0)
        goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        goto fail;
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(res);
    return fd;
fail:
    snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return -1;
}

/* ---- request objects ---- */

static http_method method_of(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET: return HTTP_GET;
    case EVHTTP_REQ_POST: return HTTP_POST;
    case EVHTTP_REQ_HEAD: return HTTP_HEAD;
    case EVHTTP_REQ_PUT: return HTTP_PUT;
    case EVHTTP_REQ_DELETE: return HTTP_DELETE;
    case EVHTTP_REQ_OPTIONS: return HTTP_OPTIONS;
    case EVHTTP_REQ_PATCH: return HTTP_PATCH;
    default: return 0;
    }
}

const char *http_req_method_name(const http_req *r)
{
    switch (r->method) {
    case HTTP_GET: return "GET";
    case HTTP_POST: return "POST";
    case HTTP_HEAD: return "HEAD";
    case HTTP_PUT: return "PUT";
    case HTTP_DELETE: return "DELETE";
    case HTTP_OPTIONS: return "OPTIONS";
    case HTTP_PATCH: return "PATCH";
    }
    return "OTHER";
}

static void watch_dequeue(http_req *r)
{
    if (!r->wq_queued)
        return;
    http_server *srv = r->srv;
    if (r->wq_prev)
        r->wq_prev->wq_next = r->wq_next;
    else
        srv->watch_head = r->wq_next;
    if (r->wq_next)
        r->wq_next->wq_prev = r->wq_prev;
    else
        srv->watch_tail = r->wq_prev;
    r->wq_prev = r->wq_next = NULL;
    r->wq_queued = false;
}

static void close_watch_stop(http_req *r)
{
    watch_dequeue(r);
    if (r->close_watch) {
        event_free(r->close_watch);
        r->close_watch = NULL;
    }
}

/* The client went away: tell the owner once, and release evhttp's request. */
static void client_gone(http_req *r)
{
    if (r->client_gone || r->ended)
        return;
    r->client_gone = true;
    close_watch_stop(r);
    if (r->status == 0)
        r->status = 499; /* nginx's "client closed request", for the log */
    http_req_log_set(r, "client_closed", json_true());
    http_req_hold(r);
    if (r->on_close) {
        void (*cb)(void *) = r->on_close;
        r->on_close = NULL;
        cb(r->on_close_ud);
    }
    if (!r->ended) {
        struct evhttp_request *req = r->req;
        if (r->evcon)
            evhttp_connection_set_closecb(r->evcon, NULL, NULL);
        req_end(r);
        if (r->streaming)
            evhttp_send_reply_end(req); /* frees the detached request */
        else {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
            evhttp_send_reply(req, 499, "Client Closed Request", NULL);
        }
    }
    http_req_release(r);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    http_req *r = arg;
    r->evcon = NULL; /* being freed by evhttp */
    client_gone(r);
}

static void on_close_watch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    client_gone(arg);
}

static void access_log(http_req *r)
{
    int64_t elapsed_us = chat_mono_us() - r->start_us;
    metrics_http_request(r->route, http_req_method_name(r), r->status, (double)elapsed_us / 1e6);
    if (!chat_log_enabled(LOG_INFO))
        return; /* the line would be dropped: do not build it */
    json_t *f = r->log_fields ? r->log_fields : json_object();
    r->log_fields = NULL;
    json_object_set_new(f, "request_id", json_string(r->id));
    json_object_set_new(f, "method", json_string(http_req_method_name(r)));
    json_object_set_new(f, "path", chat_json_text(r->path)); /* the client's bytes, escaped if not UTF-8 */
    json_object_set_new(f, "status", json_integer(r->status));
    json_object_set_new(f, "duration_ms", json_integer(elapsed_us / 1000));
    json_object_set_new(f, "peer", json_string(r->peer));
    /* Every line has the same keys; fields that do not apply are null. */
    static const char *const optional[] = { "session", "provider_ms", "tokens" };
    for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++)
        if (!json_object_get(f, optional[i]))
            json_object_set_new(f, optional[i], json_null());
    chat_log(LOG_INFO, "request", f);
}

/* Marks the request ended (before the evhttp terminal call, which may free the
 * evhttp request): no more writes, the watcher is gone, the access log is written. */
static void req_end(http_req *r)
{
    if (r->track) {
        conn_track *t = r->track;
        t->req = NULL;
        t->waiting_since = chat_mono_ms();
        /* The next head is checked when it starts with the next bytes to
         * arrive; pipelined bytes already read are not (they may be anywhere
         * in a request), evhttp's own parsing still applies to them. */
        http_head_check_begin(&t->head);
        t->head.scanning = evbuffer_get_length(bufferevent_get_input(t->bev)) == 0;
        r->track = NULL;
    }
    r->ended = true;
    close_watch_stop(r);
    r->req = NULL;
    r->srv->active--;
    access_log(r);
}

static void req_maybe_free(http_req *r)
{
    if (r->refs > 0 || !r->ended)
        return;
    if (r->query_parsed)
        evhttp_clear_headers(&r->query);
    json_decref(r->log_fields);
    chat_buf_free(&r->pend);
    if (r->data_free)
        r->data_free(r->data);
    free(r->path);
    free(r->body);
    free(r);
}

/* A request answered later is watched for its client going away (only then:
 * most requests are answered at once and need no watcher). */
static void watch_arm(http_req *r)
{
    struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return;
    r->close_watch = event_new(r->srv->base, fd, EV_CLOSED, on_close_watch, r);
    if (r->close_watch)
        event_add(r->close_watch, NULL);
}

/*
 * Arming the watcher costs two epoll_ctl calls (on, then off at the answer),
 * a good share of the syscalls of a request that waits only a millisecond or
 * two for the provider. So a request held for later is queued, and a server
 * timer arms the watchers of those still pending after WATCH_DELAY_MS: a
 * client that left before that is seen when its watcher is armed (EPOLLRDHUP
 * is level-triggered), at most about 2 x WATCH_DELAY_MS late.
 */
static void watch_close(http_req *r)
{
    http_server *srv = r->srv;
    r->wq_since = chat_mono_ms();
    r->wq_prev = srv->watch_tail;
    r->wq_next = NULL;
    if (srv->watch_tail)
        srv->watch_tail->wq_next = r;
    else
        srv->watch_head = r;
    srv->watch_tail = r;
    r->wq_queued = true;
    if (!evtimer_pending(srv->watch_timer, NULL)) {
        struct timeval tv = { 0, WATCH_DELAY_MS * 1000 };
        evtimer_add(srv->watch_timer, &tv);
    }
}

static void watch_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *srv = arg;
    int64_t now = chat_mono_ms();
    while (srv->watch_head && now - srv->watch_head->wq_since >= WATCH_DELAY_MS) {
        http_req *r = srv->watch_head;
        watch_dequeue(r);
        watch_arm(r);
    }
    if (srv->watch_head) {
        int64_t wait = srv->watch_head->wq_since + WATCH_DELAY_MS - now;
        struct timeval tv = { 0, (suseconds_t)(wait > 0 ? wait : 1) * 1000 };
        evtimer_add(srv->watch_timer, &tv);
    }
}

void http_req_hold(http_req *r)
{
    if (!r->close_watch && !r->wq_queued && !r->ended && !r->streaming && !r->client_gone)
        watch_close(r);
    r->refs++;
}

void http_req_release(http_req *r)
{
    if (--r->refs == 0)
        req_maybe_free(r);
}

/* RFC 9110 token characters, for header names. */
static bool tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/*
 * Why a parsed request must not be served, or NULL: a body framing that is
 * ambiguous (several Content-Length, Content-Length with Transfer-Encoding, a
 * transfer coding other than a single "chunked"), or a header name or value
 * with bytes RFC 9110 forbids there (control characters, DEL; a name that is
 * not a token). The answer is 400 and the connection is closed.
 */
static const char *framing_error(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    struct evkeyval *kv;
    int cl = 0, te = 0;
    bool te_chunked = false;
    TAILQ_FOREACH(kv, h, next)
    {
        if (!*kv->key)
            return "empty header name";
        for (const unsigned char *p = (const unsigned char *)kv->key; *p; p++)
            if (!tchar(*p))
                return "invalid character in a header name";
        for (const unsigned char *p = (const unsigned char *)kv->value; *p; p++)
            if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
                return "control character in a header value";
        if (evutil_ascii_strcasecmp(kv->key, "Content-Length") == 0)
            cl++;
        else if (evutil_ascii_strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            te++;
            te_chunked = evutil_ascii_strcasecmp(kv->value, "chunked") == 0;
        }
    }
    if (cl > 1)
        return "more than one Content-Length";
    if (te > 0 && cl > 0)
        return "both Content-Length and Transfer-Encoding";
    if (te > 1 || (te == 1 && !te_chunked))
        return "unsupported Transfer-Encoding (only a single \"chunked\" is accepted)";
    return NULL;
}

/*
 * A request id ("req_" and 24 hex digits) from the kernel's generator, as
 * chat_random_id makes them, but read a thousand bytes at a time per thread:
 * one getrandom syscall per request was one of the ~16 a stateless request
 * costs. The bytes are used once each.
 */
static void new_request_id(char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    static __thread unsigned char pool[1020];
    static __thread size_t left;
    enum { N = 12 };
    if (outlen < 4 + 2 * N + 1) {
        chat_random_id(out, outlen, "req_", N);
        return;
    }
    if (left < N) {
        size_t got = 0;
        while (got < sizeof pool) {
            ssize_t n = getrandom(pool + got, sizeof pool - got, 0);
            if (n > 0)
                got += (size_t)n;
        }
        left = sizeof pool;
    }
    unsigned char *raw = pool + sizeof pool - left;
    left -= N;
    memcpy(out, "req_", 4);
    for (size_t i = 0; i < N; i++) {
        out[4 + 2 * i] = hex[raw[i] >> 4];
        out[4 + 2 * i + 1] = hex[raw[i] & 15];
    }
    out[4 + 2 * N] = '\0';
    memset(raw, 0, N);
}

static void dispatch_cb(struct evhttp_request *req, void *arg)
{
    http_server *srv = arg;
    http_req *r = chat_xcalloc(1, sizeof *r);
    r->srv = srv;
    r->req = req;
    r->evcon = evhttp_request_get_connection(req);
    r->refs = 1;
    chat_buf_init(&r->pend, STREAM_PEND_MAX);
    r->start_us = chat_mono_us();
    r->method = method_of(evhttp_request_get_command(req));
    srv->active++;
    struct bufferevent *cbev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    for (conn_track *t = srv->tracks; cbev && t; t = t->next)
        if (t->bev == cbev) {
            if (!t->served) {
                /* Small writes (SSE events) must leave at once, not wait for
                 * the peer's delayed ACK (Nagle): about 40 ms per event otherwise. */
                int one = 1;
                evutil_socket_t sock = bufferevent_getfd(cbev);
                if (sock >= 0)
                    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
            t->req = r;
            t->served = true;
            r->track = t;
            break;
        }


    const char *uri = evhttp_request_get_uri(req);
    const char *q = strchr(uri, '?');
    r->path = q ? chat_xstrndup(uri, (size_t)(q - uri)) : chat_xstrdup(uri);

    const char *rid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
    if (rid && chat_valid_id(rid) && strlen(rid) < sizeof r->id)
        snprintf(r->id, sizeof r->id, "%s", rid);
    else
        new_request_id(r->id, sizeof r->id);

    char *host = NULL;
    ev_uint16_t port = 0;
    if (r->evcon) {
        evhttp_connection_get_peer(r->evcon, &host, &port);
        snprintf(r->peer, sizeof r->peer, "%s", host ? host : "");
    }

    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    r->body_len = evbuffer_get_length(in);
    r->body = chat_xmalloc(r->body_len + 1);
    /* Moved out, not copied: evhttp would keep its copy (at least a 1 KiB
     * chain) for as long as the request lives, a whole stream. */
    if (r->body_len && evbuffer_remove(in, r->body, r->body_len) != (int)r->body_len)
        r->body_len = 0;
    r->body[r->body_len] = '\0';

    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Request-Id", r->id);
    if (r->evcon)
        evhttp_connection_set_closecb(r->evcon, on_conn_close, r);

    const char *bad = r->track && r->track->head.error ? r->track->head.error : framing_error(req);
    if (bad) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        http_req_log_set(r, "error", json_string(bad));
        http_reply_json(r, 400,
                        json_pack("{s:{s:s,s:s,s:s}}", "error", "type", "invalid_request_error", "message", bad,
                                  "request_id", r->id));
    } else
        srv->dispatch(r, srv->ctx);
    http_req_release(r);
}

/* ---- accessors ---- */

http_method http_req_method(const http_req *r)
{
    return r->method;
}
const char *http_req_path(const http_req *r)
{
    return r->path;
}
const char *http_req_id(const http_req *r)
{
    return r->id;
}
const char *http_req_peer(const http_req *r)
{
    return r->peer;
}
bool http_req_body_too_large(const http_req *r)
{
    return r->body_len > r->srv->lim.max_body_bytes;
}

const char *http_req_query(http_req *r, const char *name)
{
    if (!r->query_parsed) {
        TAILQ_INIT(&r->query);
        r->query_parsed = true;
        if (r->req) {
            const char *uri = evhttp_request_get_uri(r->req);
            const char *q = strchr(uri, '?');
            if (q && evhttp_parse_query_str(q + 1, &r->query) != 0)
                evhttp_clear_headers(&r->query);
        }
    }
    return evhttp_find_header(&r->query, name);
}

const char *http_req_header(const http_req *r, const char *name)
{
    if (!r->req)
        return NULL;
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

size_t http_req_header_values(const http_req *r, const char *name, const char **out, size_t max)
{
    size_t n = 0;
    struct evkeyval *kv;
    if (!r->req)
        return 0;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(r->req), next)
    {
        if (evutil_ascii_strcasecmp(kv->key, name) != 0)
            continue;
        if (n < max)
            out[n] = kv->value;
        n++;
    }
    return n;
}

const char *http_req_body(http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body;
}

void http_req_log_set(http_req *r, const char *key, json_t *value)
{
    if (!chat_log_enabled(LOG_INFO)) { /* no access log to put it in */
        json_decref(value);
        return;
    }
    if (!r->log_fields)
        r->log_fields = json_object();
    json_object_set_new(r->log_fields, key, value);
}

void http_req_set_route(http_req *r, const char *pattern)
{
    r->route = pattern;
}

void http_req_set_data(http_req *r, void *data, void (*free_fn)(void *))
{
    if (r->data_free)
        r->data_free(r->data);
    r->data = data;
    r->data_free = free_fn;
}

void *http_req_data(const http_req *r)
{
    return r->data;
}

void http_req_add_provider_us(http_req *r, int64_t us)
{
    if (us > 0)
        r->provider_us += us;
}

/* X-Chatd-Overhead-Ms: what the request cost us, not counting the provider,
 * in milliseconds with microsecond resolution ("0.153"): whole milliseconds
 * said 0 or 1 for most requests. */
static void add_overhead_header(http_req *r)
{
    char buf[32];
    int64_t us = chat_mono_us() - r->start_us - r->provider_us;
    if (us < 0)
        us = 0;
    snprintf(buf, sizeof buf, "%lld.%03lld", (long long)(us / 1000), (long long)(us % 1000));
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "X-Chatd-Overhead-Ms", buf);
}

bool http_req_gone(const http_req *r)
{
    return r->client_gone;
}

void http_req_on_close(http_req *r, void (*cb)(void *ud), void *ud)
{
    r->on_close = cb;
    r->on_close_ud = ud;
}

void http_req_on_drain(http_req *r, void (*cb)(void *ud), void *ud)
{
    r->on_drain = cb;
    r->on_drain_ud = ud;
}

/* ---- responses ---- */

void http_add_header(http_req *r, const char *name, const char *value)
{
    if (r->req && !r->streaming)
        evhttp_add_header(evhttp_request_get_output_headers(r->req), name, value);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return "Status";
}

void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len)
{
    if (r->ended || r->streaming)
        return;
    struct evhttp_request *req = r->req;
    if (content_type)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
    add_overhead_header(r);
    /* Straight into the request's own output buffer (evhttp frames what it holds). */
    if (len)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    r->status = status;
    if (r->evcon)
        evhttp_connection_set_closecb(r->evcon, NULL, NULL);
    req_end(r);
    evhttp_send_reply(req, status, reason_of(status), NULL);
}

/* Terminal: text (malloc'd, taken) as a JSON response; NULL gets a 500. */
static void reply_json_text(http_req *r, int status, char *text, size_t len)
{
    if (!text) {
        /* A body that could not be built (a bug: e.g. invalid UTF-8 in a string). */
        chat_log(LOG_ERROR, "cannot encode a JSON response",
                 json_pack("{s:s,s:i}", "request_id", r->id, "status", status));
        static const char fallback[] =
            "{\"error\":{\"type\":\"internal_error\",\"message\":\"response encoding failed\"}}";
        http_reply(r, 500, "application/json", fallback, sizeof fallback - 1);
        return;
    }
    http_reply(r, status, "application/json", text, len);
    free(text);
}

void http_reply_json(http_req *r, int status, json_t *body)
{
    size_t len = 0;
    char *text = body ? chat_json_dumps(body, HTTP_JSON_FLAGS, &len) : NULL;
    json_decref(body);
    reply_json_text(r, status, text, len);
}

void http_reply_json_doc(http_req *r, int status, chat_json_writer *doc)
{
    size_t len = 0;
    char *text = chat_json_doc_end(doc, &len);
    reply_json_text(r, status, text, len);
}

void http_stream_start(http_req *r, int status, const char *content_type)
{
    if (r->ended || r->streaming)
        return;
    if (content_type)
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Content-Type", content_type);
    add_overhead_header(r);
    r->streaming = true;
    r->status = status;
    /* From here evhttp itself watches the socket and runs on_conn_close. */
    close_watch_stop(r);
    /* An HTTP/1.0 client asking for keep-alive cannot have a chunked reply
     * framed for it: evhttp would announce Content-Length 0. Such a stream ends
     * with the connection instead. */
    if (evhttp_request_get_input_headers(r->req) && r->req->major == 1 && r->req->minor == 0)
        evhttp_remove_header(evhttp_request_get_input_headers(r->req), "Connection");
    evhttp_send_reply_start(r->req, status, reason_of(status));
    /* evhttp now reads the socket (to see the client go away) with the idle
     * timeout, and only writes re-arm it: a text stream (no heartbeats) whose
     * provider is silent longer than IDLE_TIMEOUT would be cut. Keep the write
     * timeout, drop the read one; the connection tracker enforces idleness
     * after the response. */
    struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    if (bev) {
        struct timeval wt = { .tv_sec = r->srv->lim.idle_timeout_ms / 1000,
                              .tv_usec = (r->srv->lim.idle_timeout_ms % 1000) * 1000 };
        bufferevent_set_timeouts(bev, NULL, &wt);
    }
}

static void on_written(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    http_req *r = arg;
    if (r->want_drain && !r->ended) {
        r->want_drain = false;
        if (r->on_drain)
            r->on_drain(r->on_drain_ud);
    }
}

/*
 * Writes one chunk of a stream straight to the socket, when nothing is queued
 * before it. Through evhttp, a chunk costs an epoll_ctl to watch the socket
 * for writing, a loop turn to learn it is writable (it nearly always is), the
 * writev, and an epoll_ctl to stop watching: for a stream of small deltas, most
 * of its syscalls. Here it is one sendmsg. What the socket does not take is
 * queued raw (it continues the frame already begun) in the connection's output
 * buffer, and evhttp's bufferevent writes it as usual; its drain callback is
 * evhttp's, on_written, set by the stream's first chunk (which always goes
 * through evhttp, r->chunk_cb). Returns false when nothing was written (the
 * socket is full, or failed: the caller queues the chunk through evhttp, whose
 * write then reports the failure as for any chunk).
 */
static bool stream_write_direct(http_req *r, struct bufferevent *bev, const char *data, size_t len, bool last)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd < 0)
        return false;
    bool framed = r->req->chunked && len > 0;
    char head[24];
    int hl = framed ? snprintf(head, sizeof head, "%zx\r\n", len) : 0;
    struct iovec iov[4] = {
        { .iov_base = head, .iov_len = (size_t)hl },
        { .iov_base = (void *)data, .iov_len = len },
        { .iov_base = (void *)"\r\n", .iov_len = framed ? 2 : 0 },
        { .iov_base = (void *)"0\r\n\r\n", .iov_len = r->req->chunked && last ? 5 : 0 },
    };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 4 };
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0)
        return false;
    /* Queue what is left of the frame, in order. */
    struct evbuffer *out = bufferevent_get_output(bev);
    size_t sent = (size_t)n;
    for (int i = 0; i < 4; i++) {
        size_t l = iov[i].iov_len;
        if (sent >= l) {
            sent -= l;
            continue;
        }
        evbuffer_add(out, (const char *)iov[i].iov_base + sent, l - sent);
        sent = 0;
    }
    return true;
}

/* Sends what r gathered in this loop turn as one chunk: straight to the socket
 * when nothing is queued before it, else through evhttp. Then, if the writer
 * was told "full" and everything left, tells it to go on (on_written would not
 * run: the bufferevent wrote nothing). */
static void stream_flush(http_req *r)
{
    if (r->pend.len == 0)
        return;
    struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    if (r->ended || !bev) {
        chat_buf_free(&r->pend);
        return;
    }
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0 ||
        !stream_write_direct(r, bev, r->pend.data, r->pend.len, false)) {
        struct evbuffer *buf = evbuffer_new();
        evbuffer_add(buf, r->pend.data, r->pend.len);
        evhttp_send_reply_chunk_with_cb(r->req, buf, on_written, r);
        evbuffer_free(buf);
    }
    /* Freed, not kept: an idle stream (most of a long one's life) holds none. */
    chat_buf_free(&r->pend);
    if (r->want_drain && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        r->want_drain = false;
        if (r->on_drain)
            r->on_drain(r->on_drain_ud);
    }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *srv = arg;
    http_req *list = srv->flush_head;
    srv->flush_head = NULL;
    while (list) {
        http_req *r = list;
        list = r->flush_next;
        r->flush_next = NULL;
        r->flush_queued = false;
        stream_flush(r);
        http_req_release(r); /* the list's reference */
    }
}

/*
 * A stream's writes are gathered for the rest of the loop turn and sent as one
 * chunk by flush_ev: the deltas of one provider read (often several) become one
 * sendmsg. The first chunk of a stream goes through evhttp at once (it sets
 * on_written as evhttp's drain callback for the rest, see stream_write_direct).
 * "Full" counts the gathered bytes with the queued ones.
 */
bool http_stream_write(http_req *r, const char *data, size_t len)
{
    if (r->ended || !r->streaming || !r->evcon)
        return false;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);
    if (!bev || !r->chunk_cb || r->method == HTTP_HEAD || len == 0 || chat_buf_append(&r->pend, data, len) != CHAT_OK) {
        stream_flush(r); /* keeps the order */
        struct evbuffer *buf = evbuffer_new();
        evbuffer_add(buf, data, len);
        evhttp_send_reply_chunk_with_cb(r->req, buf, on_written, r);
        evbuffer_free(buf);
        r->chunk_cb = true;
    } else if (!r->flush_queued) {
        r->flush_queued = true;
        r->refs++; /* released by flush_cb */
        r->flush_next = r->srv->flush_head;
        r->srv->flush_head = r;
        event_active(r->srv->flush_ev, EV_TIMEOUT, 0);
    }
    size_t queued = (bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0) + r->pend.len;
    if (queued > r->srv->lim.stream_buffer_bytes) {
        r->want_drain = true;
        return true;
    }
    return false;
}

void http_stream_abort(http_req *r)
{
    if (r->ended || !r->streaming)
        return;
    struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    evutil_socket_t sock = bev ? bufferevent_getfd(bev) : -1;
    /* Shut down first: the final chunk that http_stream_end queues then never
     * leaves, and evhttp frees the connection on the failed write. */
    if (sock >= 0)
        shutdown(sock, SHUT_RDWR);
    http_req_log_set(r, "aborted", json_true());
    chat_buf_free(&r->pend); /* never sent */
    http_stream_end(r);
}

void http_stream_end(http_req *r)
{
    if (r->ended || !r->streaming)
        return;
    /* The gathered bytes and the last chunk in one sendmsg when the socket is
     * free; evhttp, told the body is no longer chunked, then adds nothing and
     * ends the request at once (no loop turn to wait for a writable socket). */
    struct bufferevent *bev = r->evcon ? evhttp_connection_get_bufferevent(r->evcon) : NULL;
    if (bev && r->req->chunked && r->method != HTTP_HEAD && evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
        stream_write_direct(r, bev, r->pend.data, r->pend.len, true)) {
        chat_buf_free(&r->pend);
        r->req->chunked = 0;
    } else
        stream_flush(r); /* before the last chunk */
    struct evhttp_request *req = r->req;
    if (r->evcon)
        evhttp_connection_set_closecb(r->evcon, NULL, NULL);
    req_end(r);
    evhttp_send_reply_end(req);
}

/* ---- connection trackers ---- */

static void release_closed(http_server *srv);

/* Bytes were read into a connection's input buffer, before evhttp parses them. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    conn_track *t = arg;
    if (!t->head.scanning || info->n_added == 0)
        return;
    struct evbuffer_ptr pos;
    if (evbuffer_ptr_set(buf, &pos, info->orig_size, EVBUFFER_PTR_SET) != 0)
        return;
    size_t left = info->n_added;
    while (left > 0 && t->head.scanning) {
        struct evbuffer_iovec v[4];
        int n = evbuffer_peek(buf, (ev_ssize_t)left, &pos, v, 4);
        if (n <= 0)
            return;
        size_t done = 0;
        for (int i = 0; i < n && i < 4 && left > 0; i++) {
            size_t k = v[i].iov_len < left ? v[i].iov_len : left;
            http_head_check_feed(&t->head, v[i].iov_base, k);
            left -= k;
            done += k;
        }
        if (left > 0 && evbuffer_ptr_set(buf, &pos, done, EVBUFFER_PTR_ADD) != 0)
            return;
    }
}

/* evhttp accepted a connection and asks for its bufferevent: track it, count
 * it, and refuse it if that takes the count past the cap. */
static struct bufferevent *on_new_bev(struct event_base *base, void *arg)
{
    http_server *srv = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        return NULL;
    conn_track *t = chat_xcalloc(1, sizeof *t);
    bufferevent_incref(bev);
    t->bev = bev;
    t->waiting_since = chat_mono_ms();
    http_head_check_begin(&t->head);
    evbuffer_add_cb(bufferevent_get_input(bev), on_input, t);
    atomic_int *count = srv->lim.open_connections;
    if (count) {
        int open = atomic_fetch_add(count, 1) + 1;
        t->count = count;
        metrics_connections_open_add(1);
        if (srv->lim.max_connections > 0 && open > srv->lim.max_connections) {
            /* Sockets of this worker that closed since the last sweep still
             * count: release them first, then decide. */
            release_closed(srv);
            if (atomic_load(count) > srv->lim.max_connections) {
                t->refuse_pending = true;
                t->refuse_next = srv->refusing;
                srv->refusing = t;
                event_active(srv->refuse_ev, EV_TIMEOUT, 0);
            }
        }
    }
    t->next = srv->tracks;
    srv->tracks = t;
    return bev;
}

static bool released_by_evhttp(struct bufferevent *bev)
{
    bufferevent_data_cb rcb = NULL, wcb = NULL;
    bufferevent_event_cb ecb = NULL;
    bufferevent_getcb(bev, &rcb, &wcb, &ecb, NULL);
    return !rcb && !wcb && !ecb;
}

static void track_release(conn_track *t)
{
    if (t->req)
        t->req->track = NULL;
    evbuffer_remove_cb(bufferevent_get_input(t->bev), on_input, t);
    bufferevent_decref(t->bev); /* the last reference: closes the socket */
    if (t->count) {
        atomic_fetch_sub(t->count, 1);
        metrics_connections_open_add(-1);
    }
    free(t);
}

/* Releases the trackers of connections evhttp let go of (closing their sockets). */
static void release_closed(http_server *srv)
{
    conn_track **pp = &srv->tracks;
    while (*pp) {
        conn_track *t = *pp;
        if (!t->refuse_pending && released_by_evhttp(t->bev)) {
            *pp = t->next;
            track_release(t);
            continue;
        }
        pp = &t->next;
    }
}

/* The answer to a connection past MAX_CONNECTIONS: fixed, so that refusing
 * costs no allocation and no parsing. */
static const char refusal[] =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 95\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n"
    "\r\n"
    "{\"error\":{\"type\":\"too_many_connections\",\"message\":\"too many open connections, retry shortly\"}}\n";

/* Writes the 503 to every refused connection and shuts its socket down. The
 * socket is fresh, its send buffer empty: the short write does not block. */
static void refuse_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *srv = arg;
    while (srv->refusing) {
        conn_track *t = srv->refusing;
        srv->refusing = t->refuse_next;
        t->refuse_next = NULL;
        t->refuse_pending = false;
        t->cut = true;
        evutil_socket_t sock = bufferevent_getfd(t->bev);
        if (sock >= 0 && !released_by_evhttp(t->bev)) {
            ssize_t n = send(sock, refusal, sizeof refusal - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n; /* a client already gone needs no answer */
            shutdown(sock, SHUT_RDWR);
        }
        metrics_connections_refused();
    }
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *srv = arg;
    int64_t now = chat_mono_ms();
    conn_track **pp = &srv->tracks;
    while (*pp) {
        conn_track *t = *pp;
        if (!t->refuse_pending && released_by_evhttp(t->bev)) {
            *pp = t->next;
            track_release(t);
            continue;
        }
        int64_t limit = t->served ? srv->lim.idle_timeout_ms : srv->lim.header_timeout_ms;
        if (!t->req && !t->cut && now - t->waiting_since > limit) {
            /* evhttp sees EOF on its next read and frees the connection itself. */
            evutil_socket_t sock = bufferevent_getfd(t->bev);
            if (sock >= 0)
                shutdown(sock, SHUT_RDWR);
            t->cut = true;
            if (!t->served)
                chat_log(LOG_INFO, "request head not received within HEADER_TIMEOUT, connection closed", NULL);
        }
        pp = &t->next;
    }
}

/* ---- listener back-off ---- */

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_server *s = arg;
    if (s->bound)
        evconnlistener_enable(evhttp_bound_socket_get_listener(s->bound));
}

/* accept() failed with a non-transient error (libevent filters EAGAIN, EINTR
 * and ECONNABORTED). Left enabled, the listener would be ready again at once
 * with the same connection pending and the same error: pause it instead. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)arg; /* evhttp's, not ours */
    int err = EVUTIL_SOCKET_ERROR();
    http_server *s = thread_servers;
    while (s && !(s->bound && evhttp_bound_socket_get_listener(s->bound) == lev))
        s = s->thread_next;
    if (!s)
        return;
    evconnlistener_disable(lev);
    struct timeval tv = { 0, ACCEPT_BACKOFF_MS * 1000 };
    event_add(s->accept_resume, &tv);
    s->accept_failures++;
    int64_t now = chat_mono_ms();
    if (s->accept_logged_at == 0 || now - s->accept_logged_at >= ACCEPT_LOG_PERIOD_MS) {
        chat_log(LOG_WARN, "accept failed, listener paused",
                 json_pack("{s:s,s:i,s:I,s:I}", "error", strerror(err), "errno", err, "backoff_ms",
                           (json_int_t)ACCEPT_BACKOFF_MS, "failures", (json_int_t)s->accept_failures));
        s->accept_logged_at = now;
        s->accept_failures = 0;
    }
}

/* ---- server ---- */

http_server *http_server_new(struct event_base *base, int fd, const http_limits *lim, http_dispatch_fn dispatch,
                             void *ctx)
{
    http_server *s = chat_xcalloc(1, sizeof *s);
    s->base = base;
    s->lim = *lim;
    s->dispatch = dispatch;
    s->ctx = ctx;
    s->http = evhttp_new(base);
    if (!s->http)
        goto fail;
    evhttp_set_max_headers_size(s->http, (ev_ssize_t)lim->max_header_bytes);
    /* evhttp answers an oversized body itself, with an HTML page. It gets a
     * higher limit than ours so that the usual case (a body somewhat too large)
     * reaches the handlers, which answer 413 in the API's JSON shape; evhttp's
     * own 413 remains the hard memory bound. */
    size_t hard =
        lim->max_body_bytes * 2 > lim->max_body_bytes + 65536 ? lim->max_body_bytes * 2 : lim->max_body_bytes + 65536;
    evhttp_set_max_body_size(s->http, (ev_ssize_t)hard);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    struct timeval tv = { .tv_sec = lim->idle_timeout_ms / 1000, .tv_usec = (lim->idle_timeout_ms % 1000) * 1000 };
    evhttp_set_timeout_tv(s->http, &tv);
    evhttp_set_gencb(s->http, dispatch_cb, s);
    evhttp_set_bevcb(s->http, on_new_bev, s);
    s->sweep = event_new(base, -1, EV_PERSIST, sweep_cb, s);
    struct timeval sweep_tv = { 0, 250 * 1000 };
    event_add(s->sweep, &sweep_tv);
    s->refuse_ev = event_new(base, -1, 0, refuse_cb, s);
    s->accept_resume = event_new(base, -1, 0, accept_resume_cb, s);
    s->watch_timer = evtimer_new(base, watch_timer_cb, s);
    s->flush_ev = event_new(base, -1, 0, flush_cb, s);
    if (!s->refuse_ev || !s->accept_resume || !s->watch_timer || !s->flush_ev)
        goto fail;
    s->bound = evhttp_accept_socket_with_handle(s->http, fd);
    if (!s->bound) {
        close(fd);
        evhttp_free(s->http);
        s->http = NULL;
        fd = -1;
        goto fail;
    }
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(s->bound), on_accept_error);
    s->thread_next = thread_servers;
    thread_servers = s;
    return s;
fail:
    if (s->http)
        evhttp_free(s->http);
    else if (fd >= 0)
        close(fd);
    if (s->sweep)
        event_free(s->sweep);
    if (s->refuse_ev)
        event_free(s->refuse_ev);
    if (s->accept_resume)
        event_free(s->accept_resume);
    if (s->watch_timer)
        event_free(s->watch_timer);
    if (s->flush_ev)
        event_free(s->flush_ev);
    free(s);
    return NULL;
}

void http_server_stop_accepting(http_server *s)
{
    if (s && s->bound) {
        evhttp_del_accept_socket(s->http, s->bound);
        s->bound = NULL;
        event_del(s->accept_resume);
    }
}

int http_server_active(const http_server *s)
{
    return s ? s->active : 0;
}

bool http_server_flushing(const http_server *s)
{
    for (const conn_track *t = s ? s->tracks : NULL; t; t = t->next)
        if (!released_by_evhttp(t->bev) && evbuffer_get_length(bufferevent_get_output(t->bev)) > 0)
            return true;
    return false;
}

void http_server_free(http_server *s)
{
    if (!s)
        return;
    for (http_server **pp = &thread_servers; *pp; pp = &(*pp)->thread_next)
        if (*pp == s) {
            *pp = s->thread_next;
            break;
        }
    flush_cb(-1, 0, s); /* the last gathered bytes, and the list's references */
    evhttp_free(s->http);
    while (s->watch_head)
        watch_dequeue(s->watch_head); /* requests still held by their owners */
    if (s->sweep)
        event_free(s->sweep);
    event_free(s->refuse_ev);
    event_free(s->accept_resume);
    event_free(s->watch_timer);
    event_free(s->flush_ev);
    s->refusing = NULL; /* the trackers below are freed with the rest */
    while (s->tracks) {
        conn_track *t = s->tracks;
        s->tracks = t->next;
        track_release(t);
    }
    free(s);
}
