/*
 * llm_script_server.h: a scripted provider for loop-level tests, shared by
 * test_llm_loop.c (the LLM client) and test_turn.c (the turn engine).
 *
 * A tiny evhttp server on 127.0.0.1 runs in the test process, on the same
 * event_base as the code under test. Each request gets the next script (the
 * last one repeats): status, headers, a plain body or timed chunks, and how
 * the reply ends (cleanly, hanging, or with a TCP reset). The server records
 * what it received (body, URI, headers, arrival times) and when the client
 * closed an unfinished reply. Canned Anthropic SSE events follow.
 *
 * Header-only (static inline): each test executable is one file. Include it
 * after <cmocka.h>.
 */
#ifndef CHATD_TESTS_LLM_SCRIPT_SERVER_H
#define CHATD_TESTS_LLM_SCRIPT_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/util.h"

/* ------------------------------------------------------------------------ */
/* The scripted server                                                        */

typedef enum { END_OK = 0, END_HANG, END_RESET } end_kind;

typedef struct script {
    int status;
    const char *headers[8]; /* "Name: value" */
    int head_delay_ms;      /* wait before sending the response head */
    const char *body;       /* non-NULL: a plain (content-length) reply */
    const char *chunks[24]; /* else: a chunked reply, one chunk each */
    int chunk_delay_ms;     /* between chunks, and before the end */
    end_kind end;
} script;

typedef struct srv srv;

typedef struct sreq {
    srv *s;
    struct evhttp_request *req; /* NULL once finished or freed by evhttp */
    const script *sc;
    int next;     /* next chunk to send */
    bool started; /* reply head sent */
    struct event *tm;
    struct sreq *link;
} sreq;

struct srv {
    struct event_base *base;
    struct evhttp *http;
    int port;
    const script *scripts; /* request i uses scripts[min(i, n-1)] */
    int n_scripts;
    int nreq;
    int64_t req_ms[16]; /* arrival time of each request */
    char *body;         /* last request's body */
    char *uri;
    char *h_key, *h_version, *h_ctype, *h_accept, *h_expect, *h_encoding, *h_auth;
    int last_fd; /* socket of the last request's connection */
    int closes;  /* connections closed by the peer while a reply was unfinished */
    int64_t close_ms;
    sreq *reqs;
};

static inline char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static inline void sreq_finish_detached(sreq *r)
{
    /* The request was detached from its (dead) connection by evhttp; answering
     * it is how it gets freed (see docs/ARCHITECTURE.md, evhttp traps). */
    if (r->started)
        evhttp_send_reply_end(r->req);
    else
        evhttp_send_reply(r->req, 500, "gone", NULL);
}

static inline void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    sreq *r = arg;
    if (!r->req)
        return;
    r->s->closes++;
    r->s->close_ms = chat_mono_ms();
    event_del(r->tm);
    if (evhttp_request_get_connection(r->req) == NULL)
        sreq_finish_detached(r);
    /* else evhttp frees the still attached request itself */
    r->req = NULL;
}

static inline void sreq_done(sreq *r)
{
    evhttp_connection_set_closecb(evhttp_request_get_connection(r->req), NULL, NULL);
    r->req = NULL;
}

static inline void step_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sreq *r = arg;
    const script *sc = r->sc;
    if (!r->req)
        return;
    if (!r->started) {
        struct evkeyvalq *oh = evhttp_request_get_output_headers(r->req);
        for (int i = 0; i < 8 && sc->headers[i]; i++) {
            const char *colon = strchr(sc->headers[i], ':');
            char *name = strndup(sc->headers[i], (size_t)(colon - sc->headers[i]));
            evhttp_add_header(oh, name, colon + 2);
            free(name);
        }
        if (sc->body) {
            struct evbuffer *b = evbuffer_new();
            evbuffer_add(b, sc->body, strlen(sc->body));
            evhttp_connection_set_closecb(evhttp_request_get_connection(r->req), NULL, NULL);
            evhttp_send_reply(r->req, sc->status, "X", b);
            evbuffer_free(b);
            r->req = NULL;
            return;
        }
        evhttp_send_reply_start(r->req, sc->status, "X");
        r->started = true;
    }
    if (r->next < 24 && sc->chunks[r->next]) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add(b, sc->chunks[r->next], strlen(sc->chunks[r->next]));
        evhttp_send_reply_chunk(r->req, b);
        evbuffer_free(b);
        r->next++;
        struct timeval tv = { 0, sc->chunk_delay_ms * 1000 };
        evtimer_add(r->tm, &tv);
        return;
    }
    switch (sc->end) {
    case END_OK: {
        struct evhttp_request *req = r->req;
        sreq_done(r);
        evhttp_send_reply_end(req);
        break;
    }
    case END_HANG: break;
    case END_RESET: {
        struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
        int sfd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
        struct linger lg = { 1, 0 }; /* close() now sends a RST */
        setsockopt(sfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        sreq_done(r);
        evhttp_connection_free(evcon); /* frees the request too */
        break;
    }
    }
}

static inline void handler(struct evhttp_request *req, void *arg)
{
    srv *s = arg;
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
    if (s->nreq < 16)
        s->req_ms[s->nreq] = chat_mono_ms();
    const script *sc = &s->scripts[s->nreq < s->n_scripts ? s->nreq : s->n_scripts - 1];
    s->nreq++;
    free(s->uri);
    free(s->body);
    free(s->h_key), free(s->h_version), free(s->h_ctype), free(s->h_accept), free(s->h_expect), free(s->h_encoding),
        free(s->h_auth);
    s->uri = strdup(evhttp_request_get_uri(req));
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    s->body = calloc(1, n + 1);
    evbuffer_copyout(in, s->body, n);
    s->h_key = dup_or_null(evhttp_find_header(ih, "x-api-key"));
    s->h_auth = dup_or_null(evhttp_find_header(ih, "authorization"));
    s->h_version = dup_or_null(evhttp_find_header(ih, "anthropic-version"));
    s->h_ctype = dup_or_null(evhttp_find_header(ih, "content-type"));
    s->h_accept = dup_or_null(evhttp_find_header(ih, "accept"));
    s->h_expect = dup_or_null(evhttp_find_header(ih, "expect"));
    s->h_encoding = dup_or_null(evhttp_find_header(ih, "accept-encoding"));

    s->last_fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evhttp_request_get_connection(req)));
    sreq *r = calloc(1, sizeof *r);
    r->s = s;
    r->req = req;
    r->sc = sc;
    r->tm = evtimer_new(s->base, step_cb, r);
    r->link = s->reqs;
    s->reqs = r;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_conn_close, r);
    struct timeval tv = { sc->head_delay_ms / 1000, (sc->head_delay_ms % 1000) * 1000 };
    evtimer_add(r->tm, &tv);
}

static inline void srv_start(srv *s, struct event_base *base, const script *scripts, int n)
{
    memset(s, 0, sizeof *s);
    s->base = base;
    s->scripts = scripts;
    s->n_scripts = n;
    s->http = evhttp_new(base);
    evhttp_set_gencb(s->http, handler, s);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    assert_non_null(bs);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl);
    s->port = ntohs(sa.sin_port);
}

/* True if the client closed the last request's connection (evhttp does not
 * read, so cannot notice, while a handler has not started its reply). */
static inline bool peer_closed(srv *s)
{
    char b;
    return recv(s->last_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static inline void srv_stop(srv *s)
{
    evhttp_free(s->http);
    while (s->reqs) {
        sreq *r = s->reqs;
        s->reqs = r->link;
        event_free(r->tm);
        free(r);
    }
    free(s->uri), free(s->body), free(s->h_key), free(s->h_version), free(s->h_ctype), free(s->h_accept),
        free(s->h_expect), free(s->h_encoding), free(s->h_auth);
}

/* ------------------------------------------------------------------------ */
/* Canned replies: Anthropic streams and errors (docs/PROTOCOLS.md A5-A7)      */

#define SSE_CT "content-type: text/event-stream; charset=utf-8"
#define JSON_CT "content-type: application/json"
#define EV_START                                                                                                 \
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":"            \
    "\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-test-20260101\",\"stop_reason\":null," \
    "\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"cache_creation_input_tokens\":3,"                   \
    "\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n"
#define EV_BLOCK                                                                                         \
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":" \
    "{\"type\":\"text\",\"text\":\"\"}}\n\n"
#define EV_DELTA(t)                                                                                        \
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":" \
    "\"text_delta\",\"text\":\"" t "\"}}\n\n"
#define EV_PING "event: ping\ndata: {\"type\": \"ping\"}\n\n"
#define EV_BSTOP "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
#define EV_MDELTA(reason, out)                                                                           \
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"" reason "\"," \
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":" out "}}\n\n"
#define EV_STOP "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
#define EV_ERROR(type, msg) \
    "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"" type "\", \"message\": \"" msg "\"}}\n\n"
#define ERR_BODY(type, msg) "{\"type\":\"error\",\"error\":{\"type\":\"" type "\",\"message\":\"" msg "\"}}"

/* Blocks at any index: a tool call (its arguments in pieces of JSON text,
 * escaped for a JSON string) and a text block, as Anthropic streams them
 * (docs/PROTOCOLS.md A5). */
#define EV_TEXT_START_AT(i)                                                                                   \
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":" #i ",\"content_block\":" \
    "{\"type\":\"text\",\"text\":\"\"}}\n\n"
#define EV_TOOL_START(i, id, name)                                                                            \
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":" #i ",\"content_block\":" \
    "{\"type\":\"tool_use\",\"id\":\"" id "\",\"name\":\"" name "\",\"input\":{}}}\n\n"
#define EV_TOOL_ARGS(i, piece)                                                                                  \
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":" #i ",\"delta\":{\"type\":" \
    "\"input_json_delta\",\"partial_json\":\"" piece "\"}}\n\n"
#define EV_BSTOP_AT(i) "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":" #i "}\n\n"

/* "Let me check." then a call of get_weather({"city":"Paris"}), stop_reason tool_use. */
static const script STREAM_TOOL_CALL __attribute__((unused)) = {
    .status = 200,
    .headers = { SSE_CT },
    .chunks = { EV_START, EV_BLOCK, EV_DELTA("Let me "), EV_DELTA("check."), EV_BSTOP,
                EV_TOOL_START(1, "toolu_01", "get_weather"), EV_TOOL_ARGS(1, "{\\\"city\\\":"),
                EV_TOOL_ARGS(1, " \\\"Paris\\\"}"), EV_BSTOP_AT(1), EV_MDELTA("tool_use", "30"), EV_STOP },
    .chunk_delay_ms = 2,
};

static const script STREAM_OK = {
    .status = 200,
    .headers = { SSE_CT, "request-id: req_stream_1" },
    .chunks = { EV_START, EV_BLOCK, EV_PING, EV_DELTA("Hello"), EV_DELTA(", "), EV_DELTA("world"), EV_DELTA("!"),
                EV_BSTOP, EV_MDELTA("max_tokens", "5"), EV_MDELTA("end_turn", "9"), EV_STOP },
    .chunk_delay_ms = 2,
};

#endif
