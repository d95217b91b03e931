/*
 * pg_pool.h: a bounded pool of asynchronous PostgreSQL connections driven by
 * one libevent loop (internal to src/store; postgres.c's submit path).
 *
 * Each submitted store_op runs as ONE prepared statement (pg.h: its
 * pg_op_def) on one of at most `size` connections, with libpq's non-blocking
 * API: no call here waits for the network, so the loop thread never blocks
 * on a round trip (one caveat: libpq resolves a host NAME with a blocking
 * getaddrinfo while connecting; give an IP address or a unix socket in the
 * URL, or a name the resolver answers from /etc/hosts).
 *
 * Connections. pg_pool_new starts all `size` connections at once (not
 * lazily: the first requests do not pay the connect, and an unreachable
 * server shows in the log at startup). A new connection prepares every def of
 * pg_op_defs, one after another, before it takes ops. A connection that is
 * lost (the server restarted or closed it, a send or read failed, a FATAL
 * error, or a connect or prepare that failed or took more than 5 s) is
 * dropped and reconnected after a backoff (100 ms, doubling to 2 s, back to
 * 100 ms once connected), forever: chatd recovers by itself when PostgreSQL
 * comes back. The pool logs the loss once when it goes down and once when a
 * connection is made again ("postgres connection lost"/"... recovered").
 * Idle connections are watched, so one closed by the server is replaced
 * before an op picks it.
 *
 * Queue. Ops wait in a FIFO for a free connection, at most queue_timeout_ms
 * (op->deadline_mono_ms is set by pg_pool_submit): past it an op completes
 * with CHAT_EUNAVAIL (the API answers 503), also when no connection can be
 * made at all, so nothing waits forever for a dead server. At most
 * PG_POOL_QUEUE_MAX ops wait; more complete at once with CHAT_EUNAVAIL. Once
 * sent, an op has no pool deadline: the pool's connections set a 30 s
 * statement_timeout (past it the op completes with CHAT_EUNAVAIL; a URL that
 * sets `options` replaces it) and TCP keepalives, which bound it.
 *
 * Results. An op completes with the rc of its def's enc when enc refuses it
 * (nothing sent), else with what dec returns for its result; with
 * CHAT_EUNAVAIL when its connection is lost after the statement was sent
 * (it may or may not have been committed). An op whose statement surely did
 * not reach the server (the send failed, or its connection was found dead
 * just before) is requeued once, ahead of the queue, for another connection.
 *
 * Completion. Every submitted op is completed exactly once with
 * store_op_complete(op) (which runs its callback and frees it), always from a
 * loop callback, never from inside pg_pool_submit (even a refusal is
 * delivered on the next loop turn), so a caller may submit in the middle of
 * its own state changes. The one exception is pg_pool_free, which completes
 * what is left before it returns.
 *
 * Thread: everything runs on the thread of the loop given to pg_pool_new; no
 * function may be called from another thread.
 */
#ifndef CHATD_STORE_PG_POOL_H
#define CHATD_STORE_PG_POOL_H

#include <stdint.h>

#include "core/rc.h"
#include "store/store.h"

struct event_base;

/* Largest pool, and most ops waiting in the queue. */
#define PG_POOL_MAX_SIZE 256
#define PG_POOL_QUEUE_MAX 10000

typedef struct pg_pool pg_pool;

/*
 * Creates a pool of size (1..PG_POOL_MAX_SIZE) connections to url (any libpq
 * connection string or URI, copied) on base, which must outlive the pool, and
 * starts connecting them all. Does not wait for any connection: an
 * unreachable server is not an error here (ops fail at their deadline until
 * it answers). queue_timeout_ms (> 0) bounds an op's wait for a connection.
 * CHAT_EINVAL for a NULL argument, a size or timeout out of range, or a url
 * libpq cannot parse. On success *out owns the pool (pg_pool_free).
 */
chat_rc pg_pool_new(struct event_base *base, const char *url, int size, int64_t queue_timeout_ms,
                    pg_pool **out) CHAT_MUST_CHECK;

/*
 * Queues op (ownership passes to the pool until it is completed, see
 * "Completion" above) and sets op->deadline_mono_ms (op->next is the pool's
 * while it holds op; cb, ud and owner_store are store_op_complete's
 * business). An op whose kind has no def completes with CHAT_EINVAL. Never
 * completes op before returning.
 */
void pg_pool_submit(pg_pool *p, store_op *op);

/* Ops submitted and not yet completed: queued, in flight, or decided and
 * waiting for the next loop turn to be completed. */
int pg_pool_pending(const pg_pool *p);

/*
 * Completes every op not completed yet (those already decided with their rc,
 * the others with CHAT_EUNAVAIL: the statement of one in flight may still
 * commit), closes the connections and frees the pool's events. An op
 * submitted by a callback during this completes with CHAT_EUNAVAIL before
 * pg_pool_free returns. Must not be called from a completion callback of this
 * pool. Accepts NULL.
 */
void pg_pool_free(pg_pool *p);

#endif
