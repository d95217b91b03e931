/*
 * store.c: the store handle, the backend choice, and the two call forms.
 *
 * Every synchronous function of store.h is written here once, as "build the
 * store_op, run it, hand the outputs back": a backend implements each
 * operation once (its run function), and the synchronous and the submitted
 * forms cannot drift apart. The cost is a struct on the stack per call.
 */
#define _GNU_SOURCE
#include "store/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "store/history_cache.h"
#include "core/util.h"
#include "store/metrics.h"

struct store {
    const store_backend *be;
    void *impl;
    int pending; /* submitted and not completed */
    /* Ops that finished inside store_submit (SQLite runs them inline; any
     * backend's refused ops) wait here, in order, for done_ev to complete them
     * on a later loop turn (store.h's contract). */
    struct event *done_ev; /* NULL until store_attach, and again after store_detach */
    store_op *done_head, *done_tail;
    /* Ops finished on another thread (the SQLite writer) wait here, guarded
     * by post_mu, and wake the loop through wake_fd (an eventfd: it works
     * whether or not libevent was set up for threads). */
    pthread_mutex_t post_mu;
    store_op *post_head, *post_tail;
    int wake_fd; /* -1 when not attached */
    struct event *wake_ev;
};

/* ---- handle ----------------------------------------------------------------- */

static const store_backend *backend_for(const char *url)
{
    if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0)
        return &store_backend_postgres;
    return &store_backend_sqlite; /* which names anything else a bad URL */
}

chat_rc store_open(const char *url, store **out, char *err, size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
    if (!out || !url) {
        if (err && errlen > 0)
            snprintf(err, errlen, "no database url");
        return CHAT_EINVAL;
    }
    *out = NULL;
    const store_backend *be = backend_for(url);
    void *impl = NULL;
    chat_rc rc = be->open(url, &impl, err, errlen);
    if (rc != CHAT_OK)
        return rc;
    store *s = chat_xcalloc(1, sizeof *s);
    s->be = be;
    s->impl = impl;
    s->wake_fd = -1;
    pthread_mutex_init(&s->post_mu, NULL);
    *out = s;
    return CHAT_OK;
}

void store_close(store *s)
{
    if (!s)
        return;
    store_detach(s);
    s->be->close(s->impl);
    pthread_mutex_destroy(&s->post_mu);
    free(s);
}

int store_schema_version(store *s)
{
    return s ? s->be->schema_version(s->impl) : 0;
}

/* ---- operations ------------------------------------------------------------- */

static const char *const op_names[STORE_OP_KIND_COUNT] = {
    [STORE_OP_PING] = "ping",
    [STORE_OP_LOCK_ACQUIRE] = "lock_acquire",
    [STORE_OP_LOCK_REFRESH] = "lock_refresh",
    [STORE_OP_LOCK_RELEASE] = "lock_release",
    [STORE_OP_TURN_COMMIT] = "turn_commit",
    [STORE_OP_SESSION_GET] = "session_get",
    [STORE_OP_SESSION_DELETE] = "session_delete",
    [STORE_OP_SESSION_RESET] = "session_reset",
    [STORE_OP_SESSIONS_LIST] = "sessions_list",
    [STORE_OP_MESSAGES_LIST] = "history_load",
    [STORE_OP_STATS_GET] = "stats_get",
    [STORE_OP_SESSIONS_EXPIRE] = "sessions_expire",
    [STORE_OP_IDEM_BEGIN] = "idem_begin",
    [STORE_OP_IDEM_REFRESH] = "idem_refresh",
    [STORE_OP_IDEM_FINISH] = "idem_finish",
    [STORE_OP_IDEM_ABORT] = "idem_abort",
    [STORE_OP_IDEM_EXPIRE] = "idem_expire",
    [STORE_OP_KEY_CREATE] = "key_create",
    [STORE_OP_KEY_FIND_BY_HASH] = "key_find",
    [STORE_OP_KEYS_LIST] = "keys_list",
    [STORE_OP_KEY_REVOKE] = "key_revoke",
    [STORE_OP_KEY_TOUCH] = "key_touch",
    [STORE_OP_KEY_SESSION_COUNT] = "key_session_count",
    [STORE_OP_SESSION_IMPORT] = "session_import",
    [STORE_OP_KEY_IMPORT] = "key_import",
    [STORE_OP_SESSIONS_LIST_OLDEST] = "sessions_list_oldest",
};

static void op_out_clear(store_op *op);

const char *store_op_name(store_op_kind kind)
{
    return kind > 0 && kind < STORE_OP_KIND_COUNT ? op_names[kind] : "unknown";
}

store_op *store_op_new(store_op_kind kind)
{
    store_op *op = chat_xcalloc(1, sizeof *op);
    op->kind = kind;
    return op;
}

const char *store_op_str(store_op *op, const char *str)
{
    if (!str)
        return NULL;
    if (op->nstrs >= STORE_OP_MAX_STRS) { /* a programming error, like an allocation failure */
        chat_fatal("store_op_str: more than %d strings in one op", STORE_OP_MAX_STRS);
    }
    return op->strs[op->nstrs++] = chat_xstrdup(str);
}

void store_op_out_reset(store_op *op)
{
    op_out_clear(op);
}

static void op_out_clear(store_op *op)
{
    store_session_clear(&op->out.session);
    store_sessions_free(op->out.sessions, op->out.n_sessions);
    free(op->out.next_cursor);
    store_messages_free(op->out.messages, op->out.n_messages);
    store_idem_clear(&op->out.idem);
    store_key_clear(&op->out.key);
    store_keys_free(op->out.keys, op->out.n_keys);
    memset(&op->out, 0, sizeof op->out);
}

void store_op_free(store_op *op)
{
    if (!op)
        return;
    op_out_clear(op);
    store_op_unprepare(op);
    for (int i = 0; i < op->nstrs; i++)
        free(op->strs[i]);
    free(op);
}

chat_rc store_run(store *s, store_op *op)
{
    if (!op)
        return CHAT_EINVAL;
    if (!s || op->kind <= 0 || op->kind >= STORE_OP_KIND_COUNT || !store_op_valid(op) ||
        store_op_prepare(op) != CHAT_OK)
        return op->rc = CHAT_EINVAL;
    return s->be->run(s->impl, op);
}

static void complete_done(evutil_socket_t fd, short what, void *arg);
static void complete_posted(evutil_socket_t fd, short what, void *arg);

chat_rc store_attach(store *s, struct event_base *base, int pool_size, int64_t queue_timeout_ms)
{
    if (!s || !base || pool_size < 1 || queue_timeout_ms < 1)
        return CHAT_EINVAL;
    if (s->done_ev)
        return CHAT_EINVAL; /* attached twice */
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0)
        return CHAT_EIO;
    s->wake_ev = event_new(base, s->wake_fd, EV_READ | EV_PERSIST, complete_posted, s);
    if (!s->wake_ev || event_add(s->wake_ev, NULL) != 0)
        chat_fatal("store: event_new failed");
    s->done_ev = event_new(base, -1, 0, complete_done, s);
    if (!s->done_ev)
        chat_fatal("store: event_new failed");
    chat_rc rc = s->be->attach ? s->be->attach(s->impl, base, pool_size, queue_timeout_ms) : CHAT_OK;
    if (rc != CHAT_OK) {
        event_free(s->done_ev);
        s->done_ev = NULL;
        event_free(s->wake_ev);
        s->wake_ev = NULL;
        close(s->wake_fd);
        s->wake_fd = -1;
        return rc;
    }
    return CHAT_OK;
}

void store_op_complete(store_op *op)
{
    store *s = op->owner_store;
    s->pending--;
    metrics_db_operation(store_op_name(op->kind), (double)(chat_mono_us() - op->submitted_mono_us) / 1e6);
    if (op->rc == CHAT_EUNAVAIL)
        metrics_db_unavailable(store_op_name(op->kind));
    if (op->cb)
        op->cb(op, op->ud);
    store_op_free(op);
}

/* Completes, in submission order, the inline ops that have finished, including
 * any that their callbacks submit meanwhile (those wait for the next turn
 * when the loop is running: each pass takes the list as it stands). */
static void complete_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    store *s = arg;
    store_op *op = s->done_head;
    s->done_head = s->done_tail = NULL;
    while (op) {
        store_op *next = op->next;
        op->next = NULL;
        store_op_complete(op);
        op = next;
    }
}

/* Completes, in the order they were posted, the ops other threads finished. */
static void complete_posted(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    store *s = arg;
    uint64_t n;
    if (fd >= 0 && read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
        chat_fatal("store: reading the wake-up eventfd failed");
    pthread_mutex_lock(&s->post_mu);
    store_op *op = s->post_head;
    s->post_head = s->post_tail = NULL;
    pthread_mutex_unlock(&s->post_mu);
    while (op) {
        store_op *next = op->next;
        op->next = NULL;
        store_op_complete(op);
        op = next;
    }
}

void store_op_post(store_op *op)
{
    store *s = op->owner_store;
    op->next = NULL;
    pthread_mutex_lock(&s->post_mu);
    bool was_empty = s->post_head == NULL;
    if (s->post_tail)
        s->post_tail->next = op;
    else
        s->post_head = op;
    s->post_tail = op;
    if (was_empty) {
        uint64_t one = 1;
        /* EAGAIN only when the counter is full: the loop is due to wake anyway. */
        if (write(s->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
            chat_fatal("store: writing the wake-up eventfd failed");
    }
    pthread_mutex_unlock(&s->post_mu);
}

/* An inline op has its result: complete it on a later loop turn, or at once
 * when there is no loop (a handle never attached, or detached). */
static void defer_completion(store *s, store_op *op);

void store_op_defer(store_op *op)
{
    defer_completion(op->owner_store, op);
}

static void defer_completion(store *s, store_op *op)
{
    if (!s->done_ev) {
        store_op_complete(op);
        return;
    }
    op->next = NULL;
    if (s->done_tail)
        s->done_tail->next = op;
    else
        s->done_head = op;
    s->done_tail = op;
    event_active(s->done_ev, 0, 0);
}

void store_submit(store *s, store_op *op, store_op_cb cb, void *ud)
{
    op->cb = cb;
    op->ud = ud;
    op->owner_store = s;
    op->submitted_mono_us = chat_mono_us();
    s->pending++;
    if (op->kind <= 0 || op->kind >= STORE_OP_KIND_COUNT || !store_op_valid(op) || store_op_prepare(op) != CHAT_OK) {
        op->rc = CHAT_EINVAL;
        defer_completion(s, op);
    } else if (s->be->submit) {
        s->be->submit(s->impl, op);
    } else {
        s->be->run(s->impl, op);
        defer_completion(s, op);
    }
}

int store_pending(const store *s)
{
    return s ? s->pending : 0;
}

void store_detach(store *s)
{
    if (!s)
        return;
    if (s->be->detach)
        s->be->detach(s->impl); /* after this no other thread posts an op */
    if (s->wake_ev) {
        event_free(s->wake_ev);
        s->wake_ev = NULL;
        close(s->wake_fd);
        s->wake_fd = -1;
        complete_posted(-1, 0, s);
    }
    if (s->done_ev) {
        /* Inline ops already have their results: complete them now, then
         * complete later submissions at once (there is no loop turn to wait for). */
        event_free(s->done_ev);
        s->done_ev = NULL;
        complete_done(-1, 0, s);
    }
}

/* ---- the synchronous API, as operations ------------------------------------ */

/* Runs a stack op whose inputs the caller borrowed; outputs stay in op. */
static chat_rc run_op(store *s, store_op *op)
{
    if (!s || !store_op_valid(op) || store_op_prepare(op) != CHAT_OK) {
        op->rc = CHAT_EINVAL;
        return CHAT_EINVAL;
    }
    chat_rc rc = s->be->run(s->impl, op);
    store_op_unprepare(op); /* a stack op is not freed by store_op_free */
    return rc;
}

#define OP(kind_)                \
    (store_op)                   \
    {                            \
        .kind = STORE_OP_##kind_ \
    }

chat_rc store_ping(store *s)
{
    store_op op = OP(PING);
    return run_op(s, &op);
}

chat_rc store_lock_acquire(store *s, const char *session_id, const char *token, int64_t now, int64_t ttl_ms)
{
    store_op op = OP(LOCK_ACQUIRE);
    op.in.session_id = session_id;
    op.in.token = token;
    op.in.now = now;
    op.in.ttl_ms = ttl_ms;
    return run_op(s, &op);
}

chat_rc store_lock_refresh(store *s, const char *session_id, const char *token, int64_t now, int64_t ttl_ms)
{
    store_op op = OP(LOCK_REFRESH);
    op.in.session_id = session_id;
    op.in.token = token;
    op.in.now = now;
    op.in.ttl_ms = ttl_ms;
    return run_op(s, &op);
}

chat_rc store_lock_release(store *s, const char *session_id, const char *token)
{
    store_op op = OP(LOCK_RELEASE);
    op.in.session_id = session_id;
    op.in.token = token;
    return run_op(s, &op);
}

chat_rc store_turn_commit(store *s, const store_turn *turn, store_turn_result *res)
{
    if (!turn)
        return CHAT_EINVAL;
    store_op op = OP(TURN_COMMIT);
    op.in.turn = *turn;
    chat_rc rc = run_op(s, &op);
    if (rc == CHAT_OK && res)
        *res = op.out.turn;
    return rc;
}

chat_rc store_session_get(store *s, const char *session_id, store_session *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    store_op op = OP(SESSION_GET);
    op.in.session_id = session_id;
    chat_rc rc = run_op(s, &op);
    *out = op.out.session;
    return rc;
}

chat_rc store_session_delete(store *s, const char *session_id)
{
    store_op op = OP(SESSION_DELETE);
    op.in.session_id = session_id;
    return run_op(s, &op);
}

chat_rc store_session_reset(store *s, const char *session_id, int64_t now, int64_t *previous_turns)
{
    store_op op = OP(SESSION_RESET);
    op.in.session_id = session_id;
    op.in.now = now;
    chat_rc rc = run_op(s, &op);
    if (previous_turns)
        *previous_turns = op.out.count;
    return rc;
}

chat_rc store_sessions_list(store *s, const char *owner, const char *cursor, int limit, store_session **out, size_t *n,
                            char **next_cursor)
{
    if (!out || !n || !next_cursor)
        return CHAT_EINVAL;
    *out = NULL;
    *n = 0;
    *next_cursor = NULL;
    store_op op = OP(SESSIONS_LIST);
    op.in.owner = owner;
    op.in.cursor = cursor;
    op.in.limit = limit;
    chat_rc rc = run_op(s, &op);
    *out = op.out.sessions;
    *n = op.out.n_sessions;
    *next_cursor = op.out.next_cursor;
    return rc;
}

chat_rc store_messages_list(store *s, const char *session_id, int64_t after_seq, int limit, store_message **out,
                            size_t *n)
{
    if (!out || !n)
        return CHAT_EINVAL;
    store_op op = OP(MESSAGES_LIST);
    op.in.session_id = session_id;
    op.in.after_seq = after_seq;
    op.in.limit = limit;
    chat_rc rc = run_op(s, &op);
    *out = op.out.messages;
    *n = op.out.n_messages;
    return rc;
}

chat_rc store_stats_get(store *s, store_stats *out)
{
    if (!out)
        return CHAT_EINVAL;
    store_op op = OP(STATS_GET);
    chat_rc rc = run_op(s, &op);
    *out = op.out.stats;
    return rc;
}

chat_rc store_sessions_expire(store *s, int64_t before, int64_t now, int limit, int64_t *deleted)
{
    store_op op = OP(SESSIONS_EXPIRE);
    op.in.before = before;
    op.in.now = now;
    op.in.limit = limit;
    chat_rc rc = run_op(s, &op);
    if (deleted)
        *deleted = op.out.count;
    return rc;
}

chat_rc store_idem_begin(store *s, const char *scope, const char *key, const char *body_hash, const char *token,
                         const char *session_id, int64_t now, int64_t lease_ms, store_idem *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    store_op op = OP(IDEM_BEGIN);
    op.in.scope = scope;
    op.in.idem_key = key;
    op.in.body_hash = body_hash;
    op.in.token = token;
    op.in.session_id = session_id;
    op.in.now = now;
    op.in.ttl_ms = lease_ms;
    chat_rc rc = run_op(s, &op);
    *out = op.out.idem;
    return rc;
}

chat_rc store_idem_refresh(store *s, const char *scope, const char *key, const char *token, int64_t now,
                           int64_t lease_ms)
{
    store_op op = OP(IDEM_REFRESH);
    op.in.scope = scope;
    op.in.idem_key = key;
    op.in.token = token;
    op.in.now = now;
    op.in.ttl_ms = lease_ms;
    return run_op(s, &op);
}

chat_rc store_idem_finish(store *s, const char *scope, const char *key, const char *token, int status,
                          const char *response, int64_t now, int64_t ttl_ms)
{
    store_op op = OP(IDEM_FINISH);
    op.in.scope = scope;
    op.in.idem_key = key;
    op.in.token = token;
    op.in.status = status;
    op.in.response = response;
    op.in.now = now;
    op.in.ttl_ms = ttl_ms;
    return run_op(s, &op);
}

chat_rc store_idem_abort(store *s, const char *scope, const char *key, const char *token)
{
    store_op op = OP(IDEM_ABORT);
    op.in.scope = scope;
    op.in.idem_key = key;
    op.in.token = token;
    return run_op(s, &op);
}

chat_rc store_idem_expire(store *s, int64_t now, int limit, int64_t *deleted)
{
    store_op op = OP(IDEM_EXPIRE);
    op.in.now = now;
    op.in.limit = limit;
    chat_rc rc = run_op(s, &op);
    if (deleted)
        *deleted = op.out.count;
    return rc;
}

chat_rc store_key_create(store *s, const store_key_new *k)
{
    if (!k)
        return CHAT_EINVAL;
    store_op op = OP(KEY_CREATE);
    op.in.key_new = *k;
    return run_op(s, &op);
}

chat_rc store_key_find_by_hash(store *s, const char *hash, store_key *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    store_op op = OP(KEY_FIND_BY_HASH);
    op.in.hash = hash;
    chat_rc rc = run_op(s, &op);
    *out = op.out.key;
    return rc;
}

chat_rc store_keys_list(store *s, store_key **out, size_t *n)
{
    if (!out || !n)
        return CHAT_EINVAL;
    store_op op = OP(KEYS_LIST);
    chat_rc rc = run_op(s, &op);
    *out = op.out.keys;
    *n = op.out.n_keys;
    return rc;
}

chat_rc store_key_revoke(store *s, const char *id_or_name, int64_t now, store_key *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    store_op op = OP(KEY_REVOKE);
    op.in.id = id_or_name;
    op.in.now = now;
    chat_rc rc = run_op(s, &op);
    if (out)
        *out = op.out.key;
    else
        store_key_clear(&op.out.key);
    return rc;
}

chat_rc store_key_touch(store *s, const char *id, int64_t now)
{
    store_op op = OP(KEY_TOUCH);
    op.in.id = id;
    op.in.now = now;
    return run_op(s, &op);
}

chat_rc store_key_session_count(store *s, const char *id, int64_t *out)
{
    if (!out)
        return CHAT_EINVAL;
    store_op op = OP(KEY_SESSION_COUNT);
    op.in.id = id;
    chat_rc rc = run_op(s, &op);
    *out = op.out.count;
    return rc;
}

chat_rc store_session_import(store *s, const store_session *sess, const store_message *msgs, size_t n)
{
    store_op op = OP(SESSION_IMPORT);
    op.in.import_session = sess;
    op.in.import_messages = msgs;
    op.in.n_import_messages = n;
    return run_op(s, &op);
}

chat_rc store_key_import(store *s, const store_key *k)
{
    store_op op = OP(KEY_IMPORT);
    op.in.import_key = k;
    return run_op(s, &op);
}

/* ---- output structs ---------------------------------------------------------- */

void store_session_clear(store_session *sess)
{
    if (!sess)
        return;
    free(sess->id);
    free(sess->owner);
    free(sess->system_prompt);
    free(sess->model);
    memset(sess, 0, sizeof *sess);
}

void store_sessions_free(store_session *arr, size_t n)
{
    if (!arr)
        return;
    for (size_t i = 0; i < n; i++)
        store_session_clear(&arr[i]);
    free(arr);
}

void store_messages_free(store_message *arr, size_t n)
{
    if (!arr)
        return;
    if (n > 0 && arr[0].packed) {
        history_cache_messages_release(arr, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        free(arr[i].role);
        free(arr[i].content);
        free(arr[i].blocks);
        free(arr[i].status);
        free(arr[i].model);
        free(arr[i].stop_reason);
    }
    free(arr);
}

void store_idem_clear(store_idem *r)
{
    if (!r)
        return;
    free(r->session_id);
    free(r->response);
    free(r->reply.role);
    free(r->reply.content);
    free(r->reply.blocks);
    free(r->reply.status);
    free(r->reply.model);
    free(r->reply.stop_reason);
    memset(r, 0, sizeof *r);
}

void store_key_clear(store_key *k)
{
    if (!k)
        return;
    free(k->id);
    free(k->name);
    free(k->hash);
    free(k->role);
    free(k->rate_limit);
    memset(k, 0, sizeof *k);
}

void store_keys_free(store_key *arr, size_t n)
{
    if (!arr)
        return;
    for (size_t i = 0; i < n; i++)
        store_key_clear(&arr[i]);
    free(arr);
}
