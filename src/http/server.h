/*
 * server.h: the HTTP layer, a thin wrapper over libevent's evhttp.
 *
 * One http_server per worker thread, on that worker's event_base, accepting on
 * that worker's SO_REUSEPORT listener. Every request becomes an http_req that a
 * single dispatch callback receives; the handler answers at once (http_reply*)
 * or goes asynchronous (http_req_hold) and answers later, possibly streaming
 * (http_stream_*).
 *
 * Limits set explicitly: header size, body size (413), allowed methods, idle
 * timeout. Every response carries X-Request-Id, and one JSON access-log line is
 * written per request when it ends.
 *
 * Lifetime of an http_req: it exists from dispatch until (a) exactly one
 * terminal call was made (http_reply, http_reply_json, http_stream_end) or the
 * client went away, and (b) every http_req_hold was matched by http_req_release.
 * After the client went away, writes and terminal calls are harmless no-ops, so
 * an owner can finish its work without checking; the close callback tells it to
 * stop early (e.g. cancel the provider call).
 *
 * Thread: an http_req belongs to its worker's loop thread; never touch it from
 * another thread.
 */
#ifndef CHATD_HTTP_SERVER_H
#define CHATD_HTTP_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/json_out.h"
#include "core/rc.h"

struct event_base;

typedef struct http_server http_server;
typedef struct http_req http_req;

typedef enum {
    HTTP_GET = 1 << 0,
    HTTP_POST = 1 << 1,
    HTTP_HEAD = 1 << 2,
    HTTP_PUT = 1 << 3,
    HTTP_DELETE = 1 << 4,
    HTTP_OPTIONS = 1 << 5,
    HTTP_PATCH = 1 << 6,
} http_method;

typedef struct http_limits {
    size_t max_header_bytes;
    size_t max_body_bytes; /* larger bodies: http_req_body_too_large() is true (evhttp itself cuts at 2x) */
    int64_t idle_timeout_ms;
    int64_t header_timeout_ms;
    size_t stream_buffer_bytes; /* client output queue above which http_stream_write reports "full" */
    /* The connection cap, shared by every server of the process: *open_connections
     * (owned by the caller, outliving the servers; NULL: no count, no cap) counts
     * the client sockets open across them, and a connection accepted while it
     * is at max_connections (0: no cap) is refused: answered a fixed 503 at once
     * and closed, never reaching the handlers (open streams are not touched).
     * A socket counts from its accept until its descriptor is closed. */
    int max_connections;
    atomic_int *open_connections;
} http_limits;

/* Receives every request. ctx is the value given to http_server_new. */
typedef void (*http_dispatch_fn)(http_req *r, void *ctx);

/*
 * Creates a server on base accepting on the already-listening socket fd (the
 * server takes ownership of fd). Returns NULL (having closed fd) when the
 * server cannot be set up.
 *
 * When accept() fails (for want of descriptors or memory: EMFILE, ENFILE,
 * ENOBUFS, ENOMEM), the listener is paused for 100 ms instead of being polled
 * again at once, which would spin a CPU for as long as the shortage lasts; the
 * pending connections wait in the kernel's backlog meanwhile.
 */
http_server *http_server_new(struct event_base *base, int fd, const http_limits *lim, http_dispatch_fn dispatch,
                             void *ctx);

/* Stops accepting new connections (closes the listener); open connections go on. */
void http_server_stop_accepting(http_server *s);

/* Number of requests in flight (dispatched and not yet ended). */
int http_server_active(const http_server *s);

/* True while some connection still has response bytes queued for the client
 * (a finished response is not delivered until they are written). */
bool http_server_flushing(const http_server *s);

/* Frees the server and every connection. Accepts NULL. */
void http_server_free(http_server *s);

/*
 * Creates a TCP listening socket on host:port with SO_REUSEPORT (so every worker
 * can have its own), non-blocking. *bound_port receives the actual port (useful
 * with port 0). Returns the fd, or -1 with a reason in err.
 */
int http_listen(const char *host, int port, int *bound_port, char *err, size_t errlen);

/* ---- request accessors (valid while the request lives) ---- */
http_method http_req_method(const http_req *r);
const char *http_req_method_name(const http_req *r);
/* The raw (still percent-encoded) path without the query string. */
const char *http_req_path(const http_req *r);
/* A query parameter (decoded), or NULL. */
const char *http_req_query(http_req *r, const char *name);
/* A request header (case-insensitive), or NULL. */
const char *http_req_header(const http_req *r, const char *name);
/* Every line of a request header that may be sent several times (e.g.
 * X-Forwarded-For), in the order received: fills out[0..max) with the first
 * values (valid while the request lives) and returns how many lines there
 * are, which may exceed max (call again with room for all). */
size_t http_req_header_values(const http_req *r, const char *name, const char **out, size_t max);
/* The request body, NUL-terminated (the NUL is not counted in *len). */
const char *http_req_body(http_req *r, size_t *len);
/* Our request id (also sent as X-Request-Id). */
const char *http_req_id(const http_req *r);
/* The peer address as text. */
const char *http_req_peer(const http_req *r);
/* True when the body is larger than max_body_bytes (the handler must answer 413). */
bool http_req_body_too_large(const http_req *r);

/* The matched route pattern (a static string, e.g. "/v1/sessions/{}"), used as
 * the low-cardinality label of metrics; NULL until the router sets it. */
void http_req_set_route(http_req *r, const char *pattern);

/* One opaque pointer for the handler layer (e.g. the caller's identity);
 * free_fn (may be NULL) runs when the request is freed. */
void http_req_set_data(http_req *r, void *data, void (*free_fn)(void *));
void *http_req_data(const http_req *r);

/* Adds time spent waiting on the provider, in microseconds; the
 * X-Chatd-Overhead-Ms header of the response is the elapsed time minus this
 * (the server's own overhead), in milliseconds with three decimals. */
void http_req_add_provider_us(http_req *r, int64_t us);

/* Adds a field to this request's access-log line (reference stolen). */
void http_req_log_set(http_req *r, const char *key, json_t *value);

/* ---- ownership for asynchronous handlers ---- */
void http_req_hold(http_req *r);
void http_req_release(http_req *r);

/* True once the client went away before the response ended. An owner that
 * resumes after an asynchronous step (e.g. a store operation) checks it
 * instead of installing a close callback it cannot act on. */
bool http_req_gone(const http_req *r);

/* cb runs once, on the loop, if the client goes away before the response ended. */
void http_req_on_close(http_req *r, void (*cb)(void *ud), void *ud);

/* cb runs when the client's output queue drained after http_stream_write returned true. */
void http_req_on_drain(http_req *r, void (*cb)(void *ud), void *ud);

/* ---- responses ---- */
/* Adds a response header; call before the first byte of the response. */
void http_add_header(http_req *r, const char *name, const char *value);

/* Terminal: a complete response with a body (len bytes, may be 0). */
void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len);

/* The flags of every JSON response: compact, and reals with 12 significant
 * digits (prices like 0.3 print as 0.3, not 0.29999999999999999). */
#define HTTP_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(12))

/* Terminal: a JSON response (reference to body stolen). A body that cannot be
 * encoded (a bug: invalid UTF-8 in a string) gets a 500 instead. */
void http_reply_json(http_req *r, int status, json_t *body);

/* Terminal: the same for a document written with core/json_out.h's writer
 * (chat_json_doc_new(HTTP_JSON_FLAGS)); doc is ended and freed here. */
void http_reply_json_doc(http_req *r, int status, chat_json_writer *doc);

/* Starts a chunked response. */
void http_stream_start(http_req *r, int status, const char *content_type);

/* Queues len bytes of a started stream. Returns true when the client's output
 * queue is above the limit: the caller should stop producing until the drain
 * callback runs. Returns false (and drops the data) after the client went away. */
bool http_stream_write(http_req *r, const char *data, size_t len);

/* Terminal: ends a started stream. */
void http_stream_end(http_req *r);

/* Terminal: ends a started stream as failed: the connection is closed without
 * the final empty chunk, so the client sees a truncated response, not a
 * complete one (for an error found after the status line was sent). */
void http_stream_abort(http_req *r);


#endif
