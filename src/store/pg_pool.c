/*
 * pg_pool.c: the asynchronous PostgreSQL pool (contract in pg_pool.h).
 *
 * How it works. Each connection is a small state machine driven by one
 * socket event and one timer:
 *
 *   DOWN --timer (backoff)--> CONNECTING --PQconnectPoll OK--> PREPARING
 *   PREPARING --every def prepared--> IDLE <--op done-- BUSY <--op-- IDLE
 *   any state --loss, failure or connect timeout--> DOWN (timer = backoff)
 *
 * CONNECTING follows libpq's documented loop: wait for what PQconnectPoll last
 * asked (write first), call it again; the socket may change between calls, so
 * the event is made again after each one. PREPARING and BUSY share one
 * routine (io_step): flush the output (PQflush until 0, waiting for
 * write-ready while it returns 1), then PQconsumeInput on read-ready and take
 * results while PQisBusy says they are complete; PQgetResult returning NULL
 * ends the statement. An IDLE connection keeps a read event, so that the
 * server closing it (restart, pg_terminate_backend) is seen at once.
 *
 * Ops wait in two FIFOs: `retry` (ops requeued once because their statement
 * surely never reached the server) is served before `queue`. Both are bounded
 * by the deadline timer, armed for the earliest deadline. A decided op goes
 * to `done`, and an always-registered event (`kick`), activated by hand,
 * completes it on the next loop turn: completions never run inside
 * pg_pool_submit or in the middle of a connection's state change, so a
 * callback that submits again finds the pool consistent.
 */
#include "store/pg_pool.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/util.h"
#include "store/backend.h"
#include "store/pg.h"

/* A connect (TCP, TLS, authentication) plus preparing the defs must end within
 * this: libpq's connect_timeout is not applied to PQconnectPoll. */
#define CONNECT_TIMEOUT_MS 5000
/* Bounds a statement once sent (the pool's queue deadline no longer applies):
 * one stuck behind a lock nobody releases would otherwise hold its connection
 * forever. The server cancels it (SQLSTATE 57014, rolled back), and the op
 * completes with CHAT_EUNAVAIL. Far above what any def takes. */
#define STATEMENT_TIMEOUT_OPTION "-c statement_timeout=30000" /* ms; 30 s */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
/* Longest error text kept for the log. */
#define ERR_MAX 300

typedef enum conn_state {
    CONN_DOWN = 0,   /* no PGconn; the timer is the reconnect backoff */
    CONN_CONNECTING, /* PQconnectPoll in progress; the timer is the connect timeout */
    CONN_PREPARING,  /* preparing pg_op_defs[prep_next]; the timer still runs */
    CONN_IDLE,       /* ready for an op; read event watches for the server closing it */
    CONN_BUSY,       /* running op */
} conn_state;

typedef struct pg_conn {
    pg_pool *pool;
    PGconn *pg; /* NULL when DOWN */
    conn_state state;
    struct event *io;      /* socket event (EV_PERSIST), NULL when none */
    evutil_socket_t io_fd; /* what io watches, to re-make it only when it changes */
    short io_what;
    struct event *timer;  /* backoff when DOWN, connect timeout while connecting */
    int64_t backoff_ms;   /* last backoff used; 0 once connected */
    size_t prep_next;     /* PREPARING: index of the def being prepared */
    bool prep_failed;     /* PREPARING: its result was an error (text in err) */
    store_op *op;         /* BUSY: the op in flight */
    const pg_op_def *def; /* BUSY: its def */
    bool op_retry;        /* BUSY: the op was already requeued once */
    bool rerun;           /* BUSY: its transaction was rolled back by a deadlock: send it again */
    int reruns;           /* BUSY: how many times the op was sent again so */
    bool sent;            /* PREPARING/BUSY: the whole statement left libpq's buffer */
    bool decoded;         /* BUSY: dec ran on the first result */
    char err[ERR_MAX];    /* last error worth logging (server FATAL, failed prepare), or "" */
} pg_conn;

typedef struct op_list {
    store_op *head, *tail;
    int n;
} op_list;

/* What the log last said about the pool, so that only transitions are logged. */
typedef enum pool_health {
    HEALTH_UNKNOWN = 0, /* no connection has succeeded or failed yet */
    HEALTH_UP,          /* a connection succeeded last */
    HEALTH_DOWN,        /* a connection failed or was lost last */
} pool_health;

struct pg_pool {
    struct event_base *base;
    char *url; /* owned copy; never logged (it may hold a password) */
    int64_t queue_timeout_ms;
    int size;
    pg_conn *conns;         /* size of them */
    op_list queue;          /* waiting ops, FIFO, so deadlines do not decrease */
    op_list retry;          /* ops requeued once, served before queue */
    op_list done;           /* decided ops, completed by kick */
    struct event *kick;     /* activated by hand: completes done */
    struct event *deadline; /* fails waiting ops past their deadline */
    int64_t armed_deadline; /* the deadline the timer is armed for, or -1 */
    int pending;            /* submitted and not completed */
    pool_health health;     /* for logging transitions */
    int64_t down_since_ms;  /* monotonic, when health went HEALTH_DOWN */
    bool closing;           /* pg_pool_free has begun */
};

static void conn_lost(pg_conn *c, const char *why);
static void io_step(pg_conn *c, short what);
static void io_cb(evutil_socket_t fd, short what, void *arg);

/* ---- op lists ------------------------------------------------------------ */

static void list_push(op_list *l, store_op *op)
{
    op->next = NULL;
    if (l->tail)
        l->tail->next = op;
    else
        l->head = op;
    l->tail = op;
    l->n++;
}

static store_op *list_pop(op_list *l)
{
    store_op *op = l->head;
    if (!op)
        return NULL;
    l->head = op->next;
    if (!l->head)
        l->tail = NULL;
    l->n--;
    op->next = NULL;
    return op;
}

/* Decides op's result; kick completes it on the next loop turn. */
static void finish(pg_pool *p, store_op *op, chat_rc rc)
{
    op->rc = rc;
    list_push(&p->done, op);
    event_active(p->kick, EV_TIMEOUT, 0);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_pool *p = arg;
    /* Only what is decided now: an op a callback submits and that is refused
     * at once waits for the next turn, so a callback resubmitting forever
     * cannot starve the loop. */
    store_op *op = p->done.head;
    p->done = (op_list){ 0 };
    while (op) {
        store_op *next = op->next;
        op->next = NULL;
        p->pending--;
        store_op_complete(op);
        op = next;
    }
}

/* ---- logging --------------------------------------------------------------- */

/* Copies a libpq message into dst on one line, without the trailing newline. */
static void one_line(char *dst, size_t len, const char *src)
{
    size_t j = 0;
    bool space = false;
    for (size_t i = 0; src && src[i] && j + 1 < len; i++) {
        char ch = src[i];
        if (ch == '\n' || ch == '\t' || ch == '\r' || ch == ' ') {
            space = j > 0;
            continue;
        }
        if (space && j + 2 < len)
            dst[j++] = ' ';
        space = false;
        dst[j++] = ch;
    }
    dst[j] = '\0';
}

static void health_down(pg_pool *p, const char *why)
{
    if (p->health == HEALTH_DOWN || p->closing)
        return;
    chat_log(LOG_WARN, p->health == HEALTH_UNKNOWN ? "postgres unreachable" : "postgres connection lost",
             json_pack("{s:s, s:i}", "error", why, "queued", p->queue.n + p->retry.n));
    p->health = HEALTH_DOWN;
    p->down_since_ms = chat_mono_ms();
}

static void health_up(pg_pool *p)
{
    if (p->health == HEALTH_UP)
        return;
    if (p->health == HEALTH_DOWN)
        chat_log(LOG_INFO, "postgres connection recovered",
                 json_pack("{s:I}", "down_ms", (json_int_t)(chat_mono_ms() - p->down_since_ms)));
    else
        chat_log(LOG_INFO, "postgres pool connected", json_pack("{s:i}", "size", p->size));
    p->health = HEALTH_UP;
}

/* libpq's default notice processor prints to stderr, which would break the
 * one-JSON-object-per-line log. A FATAL message (the server ending the
 * session, e.g. at shutdown) is kept as the reason of the loss that follows. */
static void notice_cb(void *arg, const PGresult *res)
{
    pg_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
        one_line(c->err, sizeof c->err, msg ? msg : PQresultErrorMessage(res));
        return;
    }
    chat_log(sev && strcmp(sev, "WARNING") == 0 ? LOG_WARN : LOG_DEBUG, "postgres notice",
             json_pack("{s:s?, s:s?}", "severity", sev, "message", msg));
}

/* ---- connections ------------------------------------------------------------ */

/* Watches the connection's current socket for what. force: make the event
 * again even if fd and flags look unchanged (while connecting, libpq may have
 * closed the socket and opened another with the same number). */
static bool watch(pg_conn *c, short what, bool force)
{
    evutil_socket_t fd = PQsocket(c->pg);
    if (fd < 0)
        return false;
    if (c->io && !force && c->io_fd == fd && c->io_what == what)
        return true;
    if (c->io)
        event_free(c->io);
    c->io = event_new(c->pool->base, fd, (short)(what | EV_PERSIST), io_cb, c);
    if (!c->io)
        return false;
    c->io_fd = fd;
    c->io_what = what;
    return event_add(c->io, NULL) == 0;
}

/* Closes the connection's socket and PGconn; the state becomes DOWN. */
static void conn_close(pg_conn *c)
{
    if (c->io) {
        event_free(c->io); /* before PQfinish closes the fd it watches */
        c->io = NULL;
    }
    evtimer_del(c->timer);
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->state = CONN_DOWN;
    c->op = NULL;
    c->def = NULL;
    c->sent = c->decoded = c->op_retry = c->rerun = c->prep_failed = false;
    c->reruns = 0;
}

static void arm_timer(pg_conn *c, int64_t ms)
{
    struct timeval tv = { .tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
}

static void start_connect(pg_conn *c)
{
    pg_pool *p = c->pool;
    /* Keywords before dbname are defaults the URL may override (libpq applies
     * them in order, and dbname expands into the URL's settings). Keepalives
     * bound the wait for a server that vanished without closing the socket,
     * statement_timeout the wait for one that answers but never finishes. */
    const char *const kw[] = { "application_name", "keepalives", "keepalives_idle", "keepalives_interval",
                               "keepalives_count", "options",    "dbname",          NULL };
    const char *const val[] = { "chatd", "1", "30", "10", "3", STATEMENT_TIMEOUT_OPTION, p->url, NULL };
    c->err[0] = '\0';
    c->pg = PQconnectStartParams(kw, val, 1);
    if (!c->pg) {
        conn_lost(c, "out of memory");
        return;
    }
    PQsetNoticeReceiver(c->pg, notice_cb, c);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_lost(c, NULL);
        return;
    }
    c->state = CONN_CONNECTING;
    arm_timer(c, CONNECT_TIMEOUT_MS);
    /* libpq: before the first PQconnectPoll, behave as if it asked for write. */
    if (!watch(c, EV_WRITE, true))
        conn_lost(c, "cannot watch the connection's socket");
}

/* The connection is unusable: log (once per pool transition), requeue or fail
 * its op, close it, and schedule the reconnect. why: NULL for libpq's error. */
static void conn_lost(pg_conn *c, const char *why)
{
    pg_pool *p = c->pool;
    char msg[ERR_MAX];
    if (c->err[0])
        one_line(msg, sizeof msg, c->err);
    else if (why)
        one_line(msg, sizeof msg, why);
    else
        one_line(msg, sizeof msg, c->pg ? PQerrorMessage(c->pg) : "connection lost");
    if (!msg[0])
        snprintf(msg, sizeof msg, "connection lost");
    health_down(p, msg);

    store_op *op = c->op;
    bool requeue = op && !c->sent && !c->op_retry;
    conn_close(c);
    if (op) {
        if (requeue)
            list_push(&p->retry, op); /* dispatch, at the end of the callback, picks it up */
        else
            finish(p, op, CHAT_EUNAVAIL);
    }
    if (p->closing)
        return;
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    arm_timer(c, c->backoff_ms);
}

/* Sends the prepare of the next def, or makes the connection IDLE after the last. */
static void prepare_next(pg_conn *c)
{
    if (c->prep_next >= pg_op_defs_count) {
        evtimer_del(c->timer);
        c->state = CONN_IDLE;
        c->backoff_ms = 0;
        c->err[0] = '\0';
        health_up(c->pool);
        if (!watch(c, EV_READ, false))
            conn_lost(c, "cannot watch the connection's socket");
        return;
    }
    const pg_op_def *d = &pg_op_defs[c->prep_next];
    c->sent = false;
    c->prep_failed = false;
    if (!PQsendPrepare(c->pg, d->name, d->sql, d->nparams, NULL)) {
        conn_lost(c, NULL);
        return;
    }
    io_step(c, 0);
}

static void connect_step(pg_conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        if (!watch(c, EV_READ, true))
            conn_lost(c, "cannot watch the connection's socket");
        return;
    case PGRES_POLLING_WRITING:
        if (!watch(c, EV_WRITE, true))
            conn_lost(c, "cannot watch the connection's socket");
        return;
    case PGRES_POLLING_OK: break;
    default: /* PGRES_POLLING_FAILED */ conn_lost(c, NULL); return;
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        conn_lost(c, NULL);
        return;
    }
    c->state = CONN_PREPARING;
    c->prep_next = 0;
    prepare_next(c);
}

/* Whether an error result means the session is over (the server is shutting
 * down or ended it, or libpq lost the connection): such a result is a loss,
 * not an answer for dec. A result without SQLSTATE was made by libpq itself.
 * An ERROR (not FATAL) of class 08, e.g. a protocol violation from a def whose
 * parameters do not match, leaves the session usable: dec gets it. */
static bool result_is_loss(pg_conn *c, const PGresult *res)
{
    if (PQstatus(c->pg) == CONNECTION_BAD)
        return true;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        return true;
    return !state || strncmp(state, "57P", 3) == 0; /* admin/crash shutdown, cannot connect now */
}

/* One result of the current statement. Returns false when it is a loss. */
static bool take_result(pg_conn *c, const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_FATAL_ERROR && result_is_loss(c, res)) {
        if (!c->err[0])
            one_line(c->err, sizeof c->err, PQresultErrorMessage(res));
        return false;
    }
    if (c->state == CONN_PREPARING) {
        if (st != PGRES_COMMAND_OK && !c->prep_failed) {
            c->prep_failed = true;
            char msg[ERR_MAX / 2]; /* leaves room for the name */
            one_line(msg, sizeof msg, PQresultErrorMessage(res));
            snprintf(c->err, sizeof c->err, "prepare %s: %s", pg_op_defs[c->prep_next].name, msg);
        }
        return true;
    }
    if (c->decoded)
        return true; /* one statement, one result: ignore anything more */
    c->decoded = true;
    const char *state = st == PGRES_FATAL_ERROR ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (pg_res_rerunnable(res) && c->reruns < PG_RERUN_MAX) {
        /* Rolled back whole (pg.h): statement_done sends it again. */
        pg_log_rerun(c->def->name, res, c->reruns + 2);
        c->rerun = true;
    } else if (state && strcmp(state, "57014") == 0) {
        /* query_canceled: the statement_timeout ran out (or an admin cancelled
         * it); nothing was committed. */
        chat_log(LOG_WARN, "postgres statement cancelled", json_pack("{s:s}", "op", c->def->name));
        c->op->rc = CHAT_EUNAVAIL;
    } else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_FATAL_ERROR) {
        c->op->rc = c->def->dec(res, c->op);
    } else {
        chat_log(LOG_ERROR, "postgres unexpected result",
                 json_pack("{s:s, s:s}", "op", c->def->name, "status", PQresStatus(st)));
        c->op->rc = CHAT_EIO;
    }
    return true;
}

static void start_op(pg_conn *c, store_op *op, bool retry, int reruns);

/* PQgetResult returned NULL: the statement is over. */
static void statement_done(pg_conn *c)
{
    if (c->state == CONN_PREPARING) {
        if (c->prep_failed) {
            conn_lost(c, NULL); /* c->err says which prepare failed */
            return;
        }
        c->prep_next++;
        prepare_next(c);
        return;
    }
    store_op *op = c->op;
    if (c->rerun) {
        c->op = NULL;
        c->def = NULL;
        c->state = CONN_IDLE;
        start_op(c, op, c->op_retry, c->reruns + 1);
        return;
    }
    if (!c->decoded) {
        chat_log(LOG_ERROR, "postgres statement without result", json_pack("{s:s}", "op", c->def->name));
        op->rc = CHAT_EIO;
    }
    c->op = NULL;
    c->def = NULL;
    c->state = CONN_IDLE;
    finish(c->pool, op, op->rc);
    /* io already watches EV_READ, which is what IDLE needs. */
}

/* Drives the statement of a PREPARING or BUSY connection: flush, read, take
 * results. what: the socket event that fired (0 right after sending). */
static void io_step(pg_conn *c, short what)
{
    if ((what & EV_READ) && !PQconsumeInput(c->pg)) {
        conn_lost(c, NULL);
        return;
    }
    if (!c->sent) {
        int r = PQflush(c->pg);
        if (r < 0) {
            conn_lost(c, NULL);
            return;
        }
        if (r == 1) {
            /* libpq: wait for write-ready, and also read-ready (the server
             * may be waiting for us to read before it reads more). */
            if (!watch(c, EV_READ | EV_WRITE, false))
                conn_lost(c, "cannot watch the connection's socket");
            return;
        }
        c->sent = true;
        if (!watch(c, EV_READ, false)) {
            conn_lost(c, "cannot watch the connection's socket");
            return;
        }
    }
    while (!PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (!res) {
            statement_done(c);
            return;
        }
        bool ok = take_result(c, res);
        PQclear(res);
        if (!ok) {
            conn_lost(c, NULL);
            return;
        }
    }
    if (PQstatus(c->pg) == CONNECTION_BAD)
        conn_lost(c, NULL);
}

/* Read-ready on an IDLE connection: nothing is expected but the server's
 * goodbye (a FATAL message, then end of file), or a notice. */
static void idle_read(pg_conn *c)
{
    if (!PQconsumeInput(c->pg)) {
        conn_lost(c, NULL);
        return;
    }
    (void)PQisBusy(c->pg); /* parses what arrived: notices go to notice_cb */
    PGnotify *n;
    while ((n = PQnotifies(c->pg)) != NULL)
        PQfreemem(n);
    if (PQstatus(c->pg) == CONNECTION_BAD)
        conn_lost(c, NULL);
}

/* Sends op on the IDLE connection c (retry: op was requeued once already;
 * reruns: times it was sent again after a deadlock, take_result). */
static void start_op(pg_conn *c, store_op *op, bool retry, int reruns)
{
    pg_pool *p = c->pool;
    const pg_op_def *def = pg_op_def_for(op);
    if (!def) {
        finish(p, op, CHAT_EINVAL);
        return;
    }
    pg_params prm;
    memset(&prm, 0, sizeof prm);
    chat_rc rc = def->enc(op, &prm);
    if (rc != CHAT_OK) {
        pg_params_clear(&prm);
        finish(p, op, rc);
        return;
    }
    c->op = op;
    c->def = def;
    c->op_retry = retry;
    c->rerun = false;
    c->reruns = reruns;
    c->sent = false;
    c->decoded = false;
    c->state = CONN_BUSY;
    /* The server may have closed this connection in this same loop turn,
     * before its read event ran: look first, so that such an op is requeued
     * instead of failed. */
    int ok = PQconsumeInput(c->pg) && PQstatus(c->pg) == CONNECTION_OK;
    if (ok) {
        (void)PQisBusy(c->pg);
        ok = PQstatus(c->pg) == CONNECTION_OK && !c->err[0];
    }
    /* libpq copies the parameters into its output buffer: prm can go now. */
    if (ok)
        ok = PQsendQueryPrepared(c->pg, def->name, prm.n, prm.values, NULL, NULL, 0);
    pg_params_clear(&prm);
    if (!ok) {
        conn_lost(c, NULL); /* not sent: requeued once */
        return;
    }
    io_step(c, 0);
}

/* ---- queue ----------------------------------------------------------------- */

/* Arms the deadline timer for the earliest waiting op (queue's head, as
 * deadlines do not decrease along it, or any op of the short retry list). */
static void arm_deadline(pg_pool *p)
{
    int64_t d = p->queue.head ? p->queue.head->deadline_mono_ms : -1;
    for (store_op *op = p->retry.head; op; op = op->next)
        if (d < 0 || op->deadline_mono_ms < d)
            d = op->deadline_mono_ms;
    if (d == p->armed_deadline)
        return;
    p->armed_deadline = d;
    if (d < 0) {
        evtimer_del(p->deadline);
        return;
    }
    int64_t wait = d - chat_mono_ms();
    if (wait < 0)
        wait = 0;
    struct timeval tv = { .tv_sec = (time_t)(wait / 1000), .tv_usec = (suseconds_t)(wait % 1000) * 1000 };
    evtimer_add(p->deadline, &tv);
}

/* Gives waiting ops to IDLE connections, retried ops first. */
static void dispatch(pg_pool *p)
{
    if (p->closing)
        return;
    for (int i = 0; i < p->size && (p->retry.head || p->queue.head); i++) {
        pg_conn *c = &p->conns[i];
        /* An op enc refuses leaves c IDLE: take the next one. */
        while (c->state == CONN_IDLE && (p->retry.head || p->queue.head)) {
            bool retry = p->retry.head != NULL;
            start_op(c, list_pop(retry ? &p->retry : &p->queue), retry, 0);
        }
    }
    arm_deadline(p);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_pool *p = arg;
    p->armed_deadline = -1; /* fired: no longer pending */
    int64_t now = chat_mono_ms();
    while (p->queue.head && p->queue.head->deadline_mono_ms <= now)
        finish(p, list_pop(&p->queue), CHAT_EUNAVAIL);
    op_list keep = { 0 };
    store_op *op;
    while ((op = list_pop(&p->retry)) != NULL) {
        if (op->deadline_mono_ms <= now)
            finish(p, op, CHAT_EUNAVAIL);
        else
            list_push(&keep, op);
    }
    p->retry = keep;
    dispatch(p);
}

/* ---- event callbacks ------------------------------------------------------- */

static void io_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    pg_conn *c = arg;
    switch (c->state) {
    case CONN_CONNECTING: connect_step(c); break;
    case CONN_PREPARING:
    case CONN_BUSY: io_step(c, what); break;
    case CONN_IDLE: idle_read(c); break;
    case CONN_DOWN: break;
    }
    dispatch(c->pool);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pg_conn *c = arg;
    if (c->state == CONN_DOWN) {
        start_connect(c);
    } else {
        char msg[64];
        snprintf(msg, sizeof msg, "connect timed out after %d ms", CONNECT_TIMEOUT_MS);
        conn_lost(c, msg);
    }
    dispatch(c->pool);
}

/* ---- API --------------------------------------------------------------------- */

chat_rc pg_pool_new(struct event_base *base, const char *url, int size, int64_t queue_timeout_ms, pg_pool **out)
{
    chat_rc rc = CHAT_EINVAL;
    pg_pool *p = NULL;
    if (out)
        *out = NULL;
    if (!base || !url || !out || size < 1 || size > PG_POOL_MAX_SIZE || queue_timeout_ms <= 0)
        goto out;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        char msg[ERR_MAX];
        one_line(msg, sizeof msg, perr ? perr : "out of memory");
        chat_log(LOG_ERROR, "postgres pool: bad url", json_pack("{s:s}", "error", msg));
        PQfreemem(perr);
        goto out;
    }
    PQconninfoFree(opts);

    rc = CHAT_EIO;
    p = chat_xcalloc(1, sizeof *p);
    p->base = base;
    p->url = chat_xstrdup(url);
    p->size = size;
    p->queue_timeout_ms = queue_timeout_ms;
    p->armed_deadline = -1;
    p->conns = chat_xcalloc((size_t)size, sizeof *p->conns);
    p->kick = event_new(base, -1, 0, kick_cb, p);
    p->deadline = evtimer_new(base, deadline_cb, p);
    if (!p->kick || !p->deadline)
        goto out;
    for (int i = 0; i < size; i++) {
        p->conns[i].pool = p;
        p->conns[i].timer = evtimer_new(base, conn_timer_cb, &p->conns[i]);
        if (!p->conns[i].timer)
            goto out;
    }
    for (int i = 0; i < size; i++)
        start_connect(&p->conns[i]);
    *out = p;
    p = NULL;
    rc = CHAT_OK;
out:
    pg_pool_free(p);
    return rc;
}

void pg_pool_submit(pg_pool *p, store_op *op)
{
    op->next = NULL;
    op->deadline_mono_ms = chat_mono_ms() + p->queue_timeout_ms;
    p->pending++;
    if (p->closing || p->queue.n >= PG_POOL_QUEUE_MAX) {
        finish(p, op, CHAT_EUNAVAIL);
        return;
    }
    list_push(&p->queue, op);
    dispatch(p);
}

int pg_pool_pending(const pg_pool *p)
{
    return p ? p->pending : 0;
}

void pg_pool_free(pg_pool *p)
{
    if (!p)
        return;
    p->closing = true;
    for (int i = 0; p->conns && i < p->size; i++) {
        pg_conn *c = &p->conns[i];
        store_op *op = c->op;
        if (c->timer)
            conn_close(c);
        if (op)
            finish(p, op, CHAT_EUNAVAIL);
    }
    store_op *op;
    while ((op = list_pop(&p->retry)) != NULL)
        finish(p, op, CHAT_EUNAVAIL);
    while ((op = list_pop(&p->queue)) != NULL)
        finish(p, op, CHAT_EUNAVAIL);
    /* Callbacks may submit again: closing makes those EUNAVAIL, in done. */
    while ((op = list_pop(&p->done)) != NULL) {
        p->pending--;
        store_op_complete(op);
    }
    for (int i = 0; p->conns && i < p->size; i++)
        if (p->conns[i].timer)
            event_free(p->conns[i].timer);
    if (p->kick)
        event_free(p->kick);
    if (p->deadline)
        event_free(p->deadline);
    free(p->conns);
    free(p->url);
    free(p);
}
