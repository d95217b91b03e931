/*
 * transport.c: libcurl's multi interface driven by one libevent event_base
 * (curl's hiperfifo pattern).
 *
 * How it works. curl tells us which sockets it wants watched through
 * CURLMOPT_SOCKETFUNCTION: we keep one persistent libevent event per socket
 * (a sockinfo, attached to the socket with curl_multi_assign) and re-assign it
 * when the wanted directions change. curl tells us when it next needs to run
 * through CURLMOPT_TIMERFUNCTION: we keep one libevent timer for the whole
 * multi. When a socket is ready or the timer fires we call
 * curl_multi_socket_action, then drain curl_multi_info_read and hand each
 * finished transfer to call.c (llm__call_transfer_done). That hand-off happens
 * after curl_multi_socket_action has returned, so call.c may use the curl API
 * and run user callbacks there.
 *
 * Connection policy (llm__transport_prepare, the multi options in
 * llm_transport_new and llm_transport_set_http_version). Over HTTP/2 with
 * multiplexing on, every transfer to a host shares one connection while it
 * has room (CURLMOPT_PIPELINING CURLPIPE_MULTIPLEX, and
 * CURLOPT_PIPEWAIT so that a burst of new transfers waits for the connection
 * being set up instead of each opening its own); a connection carries at most
 * LLM_H2_MAX_STREAMS streams (or the server's lower limit), then curl opens
 * another. A cancelled call resets only its own stream (RST_STREAM); the
 * connection stays for the others. Over HTTP/1.1 a connection carries one
 * transfer at a time and is kept for the next (keep-alive); at most
 * LLM_MAX_IDLE_CONNECTIONS idle ones are kept, so that the connections of a
 * burst are closed once it ends, and none that a running call holds counts
 * (set_max_connects). docs/PROTOCOLS.md E.
 *
 * Multiplexing with libcurl before 8.1.0 (Debian 12 has 7.88.1) is on only
 * when PROVIDER_HTTP_VERSION=2 asks for it; with auto each transfer has a
 * connection of its own (CURLPIPE_NOTHING), as with HTTP/1.1. Measured with
 * 7.88.1 and the fake provider (tests/integration/test_h2.py): a paused
 * stream (chatd pauses a transfer whose client does not read) whose 16 KB
 * buffer fills stops the whole connection, every other stream included,
 * until it is resumed or cancelled (curl removed that mechanism in 8.1.0);
 * a stream sharing a connection with a large one sometimes sat idle until an
 * unrelated curl timer woke it (10 s, up to the 120 s idle deadline). Where
 * the clients read promptly, 10,000 concurrent streams were all whole.
 *
 * h2c with libcurl before 8.0.0 (Debian 12 has 7.88.1). A transfer that asks
 * for HTTP/2 with prior knowledge and is given an existing h2c connection
 * switches that connection to HTTP/2 a second time, and fails with "Error in
 * the HTTP2 framing layer" (curl issue 10634, fixed in 8.0.0 by commit
 * cbe9d82c22). So on such a libcurl a prior-knowledge transfer always opens a
 * connection of its own (CURLOPT_FRESH_CONNECT), and the others ask for
 * CURL_HTTP_VERSION_2TLS, which on http:// never switches anything: it joins an
 * h2c connection that has room, or (if none does) opens a plain HTTP/1.1 one.
 * To choose, the transport keeps, per origin, the h2c connections open, by
 * socket (CURLOPT_OPENSOCKETFUNCTION / CLOSESOCKETFUNCTION on the transfers
 * that open them), each marked ready once its opener got the first byte of
 * its answer (llm__transport_h2c_answered), when curl has surely taken it as
 * HTTP/2. It compares the calls running with the streams the ready ones can
 * carry (LLM_H2_MAX_STREAMS each): room, and the call joins; none, and it
 * opens its own. While no connection is ready, new calls open their own (a
 * burst in that window of about one round trip costs a few connections; a
 * non-streaming opener's first byte comes only with its whole answer, so a
 * burst of non-streaming calls meanwhile gets a connection each, as over
 * HTTP/1.1).
 *
 * A joiner must never open a connection. Where curl finds no connection it
 * can join (the provider allows fewer streams per connection than we count
 * on, a ready connection curl will not reuse, ...), a 2TLS transfer opens a
 * plain HTTP/1.1 connection, and libcurl 7.88 then hands later joiners that
 * busy HTTP/1.1 connection as if it multiplexed (url.c, ConnectionExists:
 * "When not multiplexed, we have a match here!", since the host's bundle is
 * marked as multiplexing): their requests are pipelined behind the running
 * ones and the answers are garbled or never come. That was the 10,000-stream
 * stall of bench/README.md: 40-90 % of the streams stuck after their first
 * byte, the provider no longer reading the HTTP/1.1 connection with the
 * pipelined requests (a packet capture showed a megabyte of them queued on
 * one connection). So a joiner's CURLOPT_OPENSOCKETFUNCTION refuses to open
 * a socket (h2c_joiner_open_cb): the attempt fails at once without a byte
 * sent, and the call starts again as an opener (llm__transport_h2c_reopen),
 * not counted as a retry.
 *
 * Watches. A socket's event stays added across the transfers of its
 * connection: when curl says CURL_POLL_REMOVE (the transfer ended and the
 * connection went back to the cache), the event keeps watching for reads
 * (the socket is "parked"), and the next transfer that reuses the connection
 * usually wants just that, so nothing changes. Removing and adding it again
 * were two epoll_ctl calls per provider call (of 4.8 per stateless turn;
 * epoll_ctl went from 5.2 % to 3.2 % of chatd's CPU samples). If a parked
 * socket turns readable (the server closed the idle connection, or sent
 * something), the event is removed then, without curl, which checks a cached
 * connection before reusing it. Since curl has
 * forgotten a removed socket (curl_multi_assign no longer reaches it), the
 * transport finds its record by descriptor number, and it must drop that
 * record before the descriptor is closed and its number reused: every
 * transfer gets CURLOPT_CLOSESOCKETFUNCTION (sock_close_cb), which curl keeps
 * with each connection and calls for every socket it closes.
 *
 * The transport also keeps a list of every live call (running, or waiting for
 * a retry timer) so that llm_transport_free can cancel them all.
 */
#include "llm/transport.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/util.h"
#include "llm/call_internal.h"

/* One h2c connection of an origin, by its socket. */
typedef struct h2c_conn {
    curl_socket_t fd;
    bool ready; /* its opener got the first byte of its answer: curl knows it multiplexes */
} h2c_conn;

/* One http:// origin spoken to over h2c (see the top of the file). */
typedef struct h2c_origin {
    llm_transport *t;        /* the transport whose transfers open its connections */
    char *origin;            /* "http://host:port", the base URL up to its path */
    h2c_conn *conns;         /* the h2c sockets open (connections being set up or up) */
    size_t n_conns, cap;     /* how many; the array's length */
    int ready;               /* of those, the ready ones (others may join them) */
    struct h2c_origin *next; /* in the transport's list */
} h2c_origin;

/* One socket curl asked us to watch, until curl closes it ("Watches" above). */
typedef struct sockinfo {
    struct event *ev; /* persistent event on fd, added while `watched` */
    llm_transport *t; /* the owner */
    curl_socket_t fd; /* the socket */
    short kind;       /* the event's flags: EV_PERSIST and EV_READ and/or EV_WRITE */
    bool watched;     /* ev is added */
    bool parked;      /* curl said CURL_POLL_REMOVE: an idle connection, not curl's to hear about */
} sockinfo;

struct llm_transport {
    struct event_base *base; /* borrowed; outlives the transport */
    CURLM *multi;            /* owns every easy handle currently added */
    struct event *timer;     /* curl's single timeout */
    llm_link calls;          /* sentinel of the list of live calls */
    int n_calls;             /* length of that list */
    int n_transfers;         /* easy handles in the multi (llm__transport_add) */
    sockinfo **socks;        /* by descriptor number: every socket curl asked us to watch and has not closed */
    size_t socks_cap;        /* length of socks */
    uint64_t rng;            /* xorshift64 state for backoff jitter (not security relevant) */
    llm_http_version http;   /* PROVIDER_HTTP_VERSION, for transfers prepared from now on */
    bool pk_reuse_broken;    /* libcurl < 8.0.0: see the top of the file */
    bool h2_pause_blocks;    /* libcurl < 8.1.0: multiplexing only when asked (see the top of the file) */
    h2c_origin *origins;     /* freed after the multi (its connections call back on close) */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

/* curl_global_init is process-wide; once, before the first multi handle. */
static void curl_init_once(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        chat_fatal("curl_global_init failed");
    }
}

/* Hands every finished transfer to its call. */
static void check_multi_info(llm_transport *t)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(t->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;
        llm_call *c = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&c);
        if (c)
            llm__call_transfer_done(c, rc); /* removes the handle; may free c */
    }
}

static void sock_unwatch(sockinfo *si)
{
    if (si->watched)
        event_del(si->ev);
    si->watched = false;
}

static void socket_event_cb(evutil_socket_t fd, short what, void *arg)
{
    sockinfo *si = arg;
    llm_transport *t = si->t;
    if (si->parked) {
        /* An idle connection woke (closed by the server, most likely): stop
         * listening; curl checks the connection before it reuses it. */
        sock_unwatch(si);
        return;
    }
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(t->multi, fd, action, &running);
    check_multi_info(t);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    llm_transport *t = arg;
    int running = 0;
    curl_multi_socket_action(t->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(t);
}

/* CURLMOPT_TIMERFUNCTION: only (re)arms our timer; never calls back into curl. */
static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    llm_transport *t = userp;
    if (timeout_ms < 0) {
        evtimer_del(t->timer);
        return 0;
    }
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    evtimer_add(t->timer, &tv);
    return 0;
}

static sockinfo *sock_find(const llm_transport *t, curl_socket_t fd)
{
    return fd >= 0 && (size_t)fd < t->socks_cap ? t->socks[fd] : NULL;
}

/* fd's record, made on first use. The table grows to the largest descriptor
 * number curl used, which the process's descriptor limit bounds. */
static sockinfo *sock_get(llm_transport *t, curl_socket_t fd)
{
    sockinfo *si = sock_find(t, fd);
    if (si)
        return si;
    if (fd < 0)
        chat_fatal("curl asked to watch an invalid socket");
    if ((size_t)fd >= t->socks_cap) {
        size_t cap = t->socks_cap ? t->socks_cap : 64;
        while (cap <= (size_t)fd)
            cap *= 2;
        t->socks = chat_xrealloc(t->socks, cap * sizeof *t->socks);
        memset(t->socks + t->socks_cap, 0, (cap - t->socks_cap) * sizeof *t->socks);
        t->socks_cap = cap;
    }
    si = chat_xcalloc(1, sizeof *si);
    si->t = t;
    si->fd = fd;
    si->ev = event_new(t->base, fd, 0, socket_event_cb, si);
    if (!si->ev)
        chat_fatal("event_new failed");
    t->socks[fd] = si;
    return si;
}

/* Makes si's event watch for kind (added), unless it already does. */
static void sock_watch(sockinfo *si, short kind)
{
    if (si->watched && si->kind == kind)
        return;
    sock_unwatch(si);
    event_assign(si->ev, si->t->base, si->fd, kind, socket_event_cb, si);
    event_add(si->ev, NULL);
    si->kind = kind;
    si->watched = true;
}

static void sock_forget(llm_transport *t, sockinfo *si)
{
    t->socks[si->fd] = NULL;
    event_free(si->ev);
    free(si);
}

/* CURLOPT_CLOSESOCKETFUNCTION of every transfer: the record goes before the
 * descriptor does, since its number may be reused at once. */
static int sock_close_cb(void *clientp, curl_socket_t s)
{
    llm_transport *t = clientp;
    sockinfo *si = sock_find(t, s);
    if (si)
        sock_forget(t, si);
    return close(s);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl wants, or park it. */
static int multi_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    llm_transport *t = userp;
    if (what == CURL_POLL_REMOVE) {
        sockinfo *si = sock_find(t, s);
        if (si) {
            si->parked = true;
            if (si->watched && (si->kind & EV_WRITE))
                sock_watch(si, EV_PERSIST | EV_READ); /* a writable socket would wake us at every turn */
        }
        return 0;
    }
    sockinfo *si = sock_get(t, s);
    si->parked = false;
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (kind == EV_PERSIST)
        sock_unwatch(si);
    else
        sock_watch(si, kind);
    return 0;
}

/* curl closes the longest-idle connection when a transfer ends with more than
 * CURLMOPT_MAXCONNECTS open, in use or not; the transfers in the multi (the one
 * ending included) hold at most one connection each, so this bound leaves
 * LLM_MAX_IDLE_CONNECTIONS idle ones and never closes one a call needs. */
static void set_max_connects(llm_transport *t)
{
    curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, (long)t->n_transfers + LLM_MAX_IDLE_CONNECTIONS);
}

CURLMcode llm__transport_add(llm_transport *t, CURL *e)
{
    CURLMcode mc = curl_multi_add_handle(t->multi, e);
    if (mc == CURLM_OK) {
        t->n_transfers++;
        set_max_connects(t);
    }
    return mc;
}

void llm__transport_remove(llm_transport *t, CURL *e)
{
    if (curl_multi_remove_handle(t->multi, e) == CURLM_OK && t->n_transfers > 0)
        t->n_transfers--;
    set_max_connects(t);
}

/* A new multi handle on t's loop, with an empty connection cache. */
static void multi_open(llm_transport *t)
{
    t->multi = curl_multi_init();
    if (!t->multi)
        chat_fatal("cannot create the curl multi handle");
    curl_multi_setopt(t->multi, CURLMOPT_SOCKETFUNCTION, multi_socket_cb);
    curl_multi_setopt(t->multi, CURLMOPT_SOCKETDATA, t);
    curl_multi_setopt(t->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(t->multi, CURLMOPT_TIMERDATA, t);
    curl_multi_setopt(t->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, (long)LLM_H2_MAX_STREAMS);
    t->n_transfers = 0;
    set_max_connects(t);
}

llm_transport *llm_transport_new(struct event_base *base)
{
    pthread_once(&curl_once, curl_init_once);
    llm_transport *t = chat_xcalloc(1, sizeof *t);
    t->base = base;
    t->calls.prev = t->calls.next = &t->calls;
    t->rng = (uint64_t)chat_mono_ms() ^ ((uint64_t)(uintptr_t)t << 17) ^ 0x9E3779B97F4A7C15ull;
    if (!t->rng)
        t->rng = 1;
    t->timer = evtimer_new(base, timer_event_cb, t);
    if (!t->timer)
        chat_fatal("cannot create the curl timer");
    const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    t->pk_reuse_broken = vi->version_num < 0x080000;
    t->h2_pause_blocks = vi->version_num < 0x080100;
    multi_open(t);
    llm_transport_set_http_version(t, LLM_HTTP_AUTO);
    return t;
}

/* Closes the multi handle with every connection in its cache. */
static void multi_close(llm_transport *t)
{
    curl_multi_cleanup(t->multi);
    t->multi = NULL;
    /* curl closed its connections (sock_close_cb); free any record it left. */
    for (size_t fd = 0; fd < t->socks_cap; fd++)
        if (t->socks[fd])
            sock_forget(t, t->socks[fd]);
    event_del(t->timer);
}

void llm_transport_shed(llm_transport *t)
{
    llm__easy_pool_drain();
    if (t->n_calls > 0)
        return; /* their connections are in use */
    multi_close(t);
    multi_open(t);
    llm_transport_set_http_version(t, t->http);
}

void llm_transport_free(llm_transport *t)
{
    if (!t)
        return;
    /* Cancelling unlinks and frees each call, so save the next link first. */
    for (llm_link *l = t->calls.next, *next; l != &t->calls; l = next) {
        next = l->next;
        llm_call_cancel(llm__call_of_link(l));
    }
    if (t->calls.next != &t->calls) {
        /* Only a call inside its own on_done survives a cancel: freeing the
         * transport from there would leave that call a dangling transport. */
        chat_fatal("llm_transport_free called from inside a call's callback");
    }
    multi_close(t);
    while (t->origins) {
        h2c_origin *o = t->origins;
        t->origins = o->next;
        free(o->origin);
        free(o->conns);
        free(o);
    }
    event_free(t->timer);
    free(t->socks);
    free(t);
}

int llm_transport_active(const llm_transport *t)
{
    return t ? t->n_calls : 0;
}

struct event_base *llm__transport_base(llm_transport *t)
{
    return t->base;
}

double llm__transport_random(llm_transport *t)
{
    uint64_t x = t->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t->rng = x;
    return (double)(x >> 11) / 9007199254740992.0; /* 2^53 */
}

void llm_transport_set_http_version(llm_transport *t, llm_http_version v)
{
    t->http = v;
    /* Multiplex where it is safe, or where asked for explicitly (the top of the file). */
    long mux = (v == LLM_HTTP_2 || !t->h2_pause_blocks) ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING;
    curl_multi_setopt(t->multi, CURLMOPT_PIPELINING, mux);
}

/* The record of base_url's origin (scheme://authority), created on first use. */
static h2c_origin *origin_of(llm_transport *t, const char *base_url)
{
    const char *auth = strstr(base_url, "://");
    size_t n = auth ? (size_t)(auth + 3 - base_url) + strcspn(auth + 3, "/?#") : strlen(base_url);
    for (h2c_origin *o = t->origins; o; o = o->next)
        if (strlen(o->origin) == n && strncasecmp(o->origin, base_url, n) == 0)
            return o;
    h2c_origin *o = chat_xcalloc(1, sizeof *o);
    o->t = t;
    o->origin = chat_xstrndup(base_url, n);
    o->next = t->origins;
    t->origins = o;
    return o;
}

/* CURLOPT_OPENSOCKETFUNCTION of a transfer opening an h2c connection (its
 * ticket): records the socket with the origin and in the ticket. */
static curl_socket_t h2c_open_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)purpose;
    llm_h2c_ticket *ticket = clientp;
    h2c_origin *o = ticket->origin;
    curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (s == CURL_SOCKET_BAD)
        return s;
    if (o->n_conns == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 16;
        o->conns = chat_xrealloc(o->conns, o->cap * sizeof *o->conns);
    }
    o->conns[o->n_conns++] = (h2c_conn){ .fd = s, .ready = false };
    ticket->fd = s;
    return s;
}

static h2c_conn *h2c_conn_find(h2c_origin *o, curl_socket_t s)
{
    for (size_t i = 0; i < o->n_conns; i++)
        if (o->conns[i].fd == s)
            return &o->conns[i];
    return NULL;
}

/* CURLOPT_CLOSESOCKETFUNCTION, kept by the connection (curl calls it for the
 * sockets h2c_open_cb opened, whichever transfer closes them). */
static int h2c_close_cb(void *clientp, curl_socket_t s)
{
    h2c_origin *o = clientp;
    h2c_conn *hc = h2c_conn_find(o, s);
    if (hc) {
        if (hc->ready)
            o->ready--;
        *hc = o->conns[--o->n_conns];
    }
    return sock_close_cb(o->t, s);
}

void llm__transport_h2c_answered(llm_h2c_ticket *ticket)
{
    if (!ticket->opener || ticket->fd == CURL_SOCKET_BAD)
        return;
    h2c_origin *o = ticket->origin;
    h2c_conn *hc = h2c_conn_find(o, ticket->fd);
    if (hc && !hc->ready) {
        hc->ready = true;
        o->ready++;
    }
}

/* CURLOPT_OPENSOCKETFUNCTION of a joiner: curl found no connection it could
 * join and would open a plain HTTP/1.1 one (the top of the file). Refused: the
 * attempt fails at once, and llm__transport_h2c_reopen makes it an opener. */
static curl_socket_t h2c_joiner_open_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)purpose;
    (void)a;
    llm_h2c_ticket *ticket = clientp;
    ticket->refused = true;
    return CURL_SOCKET_BAD;
}

/* Sets e up to open an h2c connection of its own. */
static long h2c_open_own(h2c_origin *o, CURL *e, llm_h2c_ticket *ticket)
{
    ticket->opener = true;
    ticket->fd = CURL_SOCKET_BAD;
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, h2c_open_cb);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, ticket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, h2c_close_cb);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, o);
    return CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
}

/* h2c on a libcurl that cannot reuse a prior-knowledge connection (the top of
 * the file): either open a new h2c connection, or join one. */
static long h2c_choose(llm_transport *t, const llm_provider *p, CURL *e, llm_h2c_ticket *ticket)
{
    h2c_origin *o = origin_of(t, p->base_url);
    ticket->origin = o;
    /* This call is not linked yet: n_calls + 1 calls would be running. All
     * of the transport's calls are counted, whatever their provider, so the
     * estimate errs towards one connection more, never one stream too many. */
    if (o->ready > 0 && (int64_t)t->n_calls + 1 <= (int64_t)o->ready * LLM_H2_MAX_STREAMS) {
        curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, h2c_joiner_open_cb);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, ticket);
        return CURL_HTTP_VERSION_2TLS; /* joins a connection that speaks HTTP/2 */
    }
    return h2c_open_own(o, e, ticket);
}

bool llm__transport_h2c_reopen(CURL *e, llm_h2c_ticket *ticket)
{
    if (!ticket->refused)
        return false;
    ticket->refused = false;
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, h2c_open_own(ticket->origin, e, ticket));
    return true;
}

void llm__transport_prepare(llm_transport *t, const llm_provider *p, CURL *e, llm_h2c_ticket *ticket)
{
    *ticket = (llm_h2c_ticket){ .fd = CURL_SOCKET_BAD };
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, sock_close_cb); /* h2c_choose may replace it */
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, t);
    bool tls = p->base_url && strncasecmp(p->base_url, "https://", 8) == 0;
    long version = CURL_HTTP_VERSION_1_1;
    switch (t->http) {
    case LLM_HTTP_AUTO: version = tls ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1; break;
    case LLM_HTTP_1_1: version = CURL_HTTP_VERSION_1_1; break;
    case LLM_HTTP_2:
        if (tls)
            version = CURL_HTTP_VERSION_2TLS;
        else if (t->pk_reuse_broken && p->base_url)
            version = h2c_choose(t, p, e, ticket);
        else
            version = CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
        break;
    }
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, version);
    /* A transfer that may speak HTTP/2 keeps curl's default receive buffer,
     * whatever call.c chose: libcurl 7.88 copies a whole DATA frame (up to 16
     * KiB) into it, and wrote past a 1 KiB one (heap overflow, found by ASan
     * under 16 concurrent streams over h2c). HTTP/1.1 reads at most the buffer. */
    if (version != CURL_HTTP_VERSION_1_1)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)CURL_MAX_WRITE_SIZE);
    /* Where the connection can multiplex (HTTP/2), a new transfer waits for it
     * rather than opening a connection of its own. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
}

void llm__transport_link(llm_transport *t, llm_link *l)
{
    l->prev = t->calls.prev;
    l->next = &t->calls;
    t->calls.prev->next = l;
    t->calls.prev = l;
    t->n_calls++;
}

void llm__transport_unlink(llm_transport *t, llm_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
    t->n_calls--;
}
