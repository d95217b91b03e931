/*
 * sqlite_writer.c: the SQLite backend's writer thread and its group commit.
 *
 * A server loop must not wait on the disk, and a database file takes one
 * writer at a time anyway. So when a handle on a file database is attached to
 * a loop (store_attach), the write ops it is given (sqlite_op_writes) leave
 * the loop: they go to one writer thread per database file in this process,
 * shared by every attached handle on that file, with its own connection. The
 * read ops keep running on the handle's own connection, at once: in WAL mode a
 * reader never waits for the writer and sees every committed batch.
 *
 * Group commit: the writer takes every op queued meanwhile (at most
 * BATCH_MAX) and runs them, in the order they were queued, in one BEGIN
 * IMMEDIATE ... COMMIT, so that many turns cost one commit and one fsync
 * (synchronous=FULL). Each op runs inside its own savepoint: an op that fails
 * (a lost turn lock, a taken key id, a database error in one statement) is
 * rolled back alone and the others still commit. The ops' own transactions are
 * no-ops inside a batch (sqlite_db.batch), so that an op is written once, for
 * both forms. Only after COMMIT returned (the batch is on disk) is any op of
 * the batch posted back to the loop of its handle (store_op_post), which runs
 * its callback on a later turn: a turn is acknowledged only once its commit is
 * durable, as before. If the batch's transaction is lost (SQLite rolls the
 * whole transaction back on some errors, e.g. a full disk) or COMMIT fails,
 * nothing of it was written: each op then runs again alone, in its own
 * transaction, and reports its own result. A turn commit pins its session's
 * turn lock (turn_locks.h) when it runs; the lock is released only here, after
 * the batch is on disk, so that the session's next turn reads a history that
 * holds this one.
 *
 * Ordering: writes complete in the order they were submitted, across the
 * handles of the process (one queue); a read submitted after a write that has
 * not completed yet may run before it.
 */
#define _GNU_SOURCE
#include "store/sqlite_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"

/* Most ops in one batch: bounds the time a batch holds the write lock, and so
 * the wait of the ops that come after it. */
#define BATCH_MAX 256

typedef struct wnode {
    store_op *op;
    sqlite_db *owner; /* the handle it came from (op->owner_store's backend) */
    struct wnode *next;
} wnode;

struct sqlite_writer {
    char *key; /* the database file's real path */
    int refs;  /* attached handles; guarded by writers_mu */
    pthread_t thread;
    pthread_mutex_t mu;     /* guards the queue, stop, and the handles' inflight */
    pthread_cond_t work_cv; /* an op was queued, or stop */
    pthread_cond_t idle_cv; /* a handle's inflight went down */
    wnode *head, *tail;
    bool stop;
    sqlite_db *db; /* the writer's own connection; used by its thread only */
    struct sqlite_writer *next;
};

static pthread_mutex_t writers_mu = PTHREAD_MUTEX_INITIALIZER;
static sqlite_writer *writers;

bool sqlite_op_writes(store_op_kind kind)
{
    switch (kind) {
    case STORE_OP_TURN_COMMIT:
    case STORE_OP_SESSION_DELETE:
    case STORE_OP_SESSION_RESET:
    case STORE_OP_SESSIONS_EXPIRE:
    case STORE_OP_IDEM_BEGIN:
    case STORE_OP_IDEM_REFRESH:
    case STORE_OP_IDEM_FINISH:
    case STORE_OP_IDEM_ABORT:
    case STORE_OP_IDEM_EXPIRE:
    case STORE_OP_KEY_CREATE:
    case STORE_OP_KEY_REVOKE:
    case STORE_OP_KEY_TOUCH:
    case STORE_OP_SESSION_IMPORT:
    case STORE_OP_KEY_IMPORT: return true;
    case STORE_OP_LOCK_ACQUIRE: /* in memory: turn_locks.h */
    case STORE_OP_LOCK_REFRESH:
    case STORE_OP_LOCK_RELEASE:
    case STORE_OP_PING:
    case STORE_OP_SESSION_GET:
    case STORE_OP_SESSIONS_LIST:
    case STORE_OP_SESSIONS_LIST_OLDEST:
    case STORE_OP_MESSAGES_LIST:
    case STORE_OP_STATS_GET:
    case STORE_OP_KEY_FIND_BY_HASH:
    case STORE_OP_KEYS_LIST:
    case STORE_OP_KEY_SESSION_COUNT:
    case STORE_OP_KIND_COUNT: break;
    }
    return false;
}

/* A turn-lock op in the queue (an acquire behind a commit in flight): it
 * writes nothing and runs after its batch's commits are settled. */
static bool is_lock_op(store_op_kind kind)
{
    return kind == STORE_OP_LOCK_ACQUIRE || kind == STORE_OP_LOCK_REFRESH || kind == STORE_OP_LOCK_RELEASE;
}

/* Runs the batch's ops in one transaction, a savepoint each. False when the
 * transaction was lost or did not commit: nothing of the batch is written. */
static bool run_grouped(sqlite_db *db, wnode *batch)
{
    db->batch = true;
    bool ok = true;
    for (wnode *n = batch; n && ok; n = n->next) {
        if (is_lock_op(n->op->kind))
            continue;
        if (sql_run(db, ST_SAVEPOINT) != CHAT_OK) {
            ok = false;
            break;
        }
        sqlite_run_op(db, n->op);
        if (sqlite3_get_autocommit(db->db)) { /* SQLite rolled the whole transaction back */
            ok = false;
            break;
        }
        if (n->op->rc != CHAT_OK && sql_run(db, ST_ROLLBACK_TO) != CHAT_OK)
            ok = false;
        else if (sql_run(db, ST_RELEASE) != CHAT_OK)
            ok = false;
    }
    db->batch = false;
    if (!ok) {
        sql_tx_rollback(db);
        return false;
    }
    return sql_tx_commit(db) == CHAT_OK; /* rolls back when it fails */
}

static void run_batch(sqlite_writer *w, wnode *batch)
{
    sqlite_db *db = w->db;
    bool writes = false, grouped = false;
    for (wnode *n = batch; n && !writes; n = n->next)
        writes = !is_lock_op(n->op->kind);
    if (!writes) {
        /* Lock ops only: no transaction. */
    } else if (sql_tx_begin(db, ST_BEGIN_WRITE) != CHAT_OK) {
        /* The write lock did not come within the busy timeout (another
         * process): every op of the batch fails alike (logged by sql_fail). */
        for (wnode *n = batch; n; n = n->next)
            if (!is_lock_op(n->op->kind))
                n->op->rc = CHAT_EIO;
    } else if ((grouped = run_grouped(db, batch)) == false) {
        for (wnode *n = batch; n; n = n->next) {
            if (is_lock_op(n->op->kind))
                continue;
            store_op_out_reset(n->op);
            sqlite_run_op(db, n->op); /* alone, in its own transaction */
        }
    }
    /* On disk (or failed): the commits' messages into the history cache and
     * their turn locks settled (a commit that ran alone, after a lost batch,
     * did both itself: then only the settle of a commit that never ran is
     * left), the other history changes ended, then the lock ops that waited
     * behind the commits, then all back to their loops, in order. */
    turn_locks *locks = sqlite_turn_locks(db);
    for (wnode *n = batch; n; n = n->next) {
        if (n->op->kind == STORE_OP_TURN_COMMIT) {
            const store_turn *t = &n->op->in.turn;
            if (grouped)
                sqlite_turn_done(db, t, &n->op->out.turn, n->op->rc);
            else
                turn_locks_settle(locks, t->session_id, t->lock_token, n->op->rc == CHAT_OK);
        }
        sqlite_history_write_end(db, n->op);
    }
    for (wnode *n = batch; n; n = n->next)
        if (is_lock_op(n->op->kind))
            sqlite_run_op(db, n->op);
    while (batch) {
        wnode *n = batch;
        batch = n->next;
        sqlite_db *owner = n->owner;
        store_op_post(n->op); /* the op may be freed from here on */
        free(n);
        pthread_mutex_lock(&w->mu);
        if (--owner->inflight == 0)
            pthread_cond_broadcast(&w->idle_cv);
        pthread_mutex_unlock(&w->mu);
    }
}

static void *writer_main(void *arg)
{
    sqlite_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->work_cv, &w->mu);
        if (!w->head)
            break; /* stopping, and nothing left */
        wnode *batch = w->head, *last = batch;
        for (int i = 1; i < BATCH_MAX && last->next; i++)
            last = last->next;
        w->head = last->next;
        if (!w->head)
            w->tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&w->mu);
        run_batch(w, batch);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

chat_rc sqlite_writer_attach(sqlite_db *s)
{
    if (s->wr)
        return CHAT_OK;
    const char *key = sqlite_file_key(s);
    pthread_mutex_lock(&writers_mu);
    sqlite_writer *w = writers;
    while (w && strcmp(w->key, key) != 0)
        w = w->next;
    if (w) {
        w->refs++;
        s->wr = w;
        pthread_mutex_unlock(&writers_mu);
        return CHAT_OK;
    }
    /* The process that writes through a writer serves the file, and keeps its
     * turn locks in memory: no other server may share it. */
    char err[512] = "";
    chat_rc owned = sqlite_file_own(s, err, sizeof err);
    if (owned != CHAT_OK) {
        pthread_mutex_unlock(&writers_mu);
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "own_file", "error", err));
        return owned;
    }
    w = chat_xcalloc(1, sizeof *w);
    if (sqlite_open(s->url, &w->db, err, sizeof err) != CHAT_OK) {
        pthread_mutex_unlock(&writers_mu);
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "writer_open", "error", err));
        free(w);
        return CHAT_EIO;
    }
    w->key = chat_xstrdup(key);
    w->refs = 1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work_cv, NULL);
    pthread_cond_init(&w->idle_cv, NULL);
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        pthread_mutex_unlock(&writers_mu);
        sqlite_close(w->db);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->work_cv);
        pthread_cond_destroy(&w->idle_cv);
        free(w->key);
        free(w);
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "writer_start", "error", "pthread_create"));
        return CHAT_EIO;
    }
    w->next = writers;
    writers = w;
    s->wr = w;
    pthread_mutex_unlock(&writers_mu);
    return CHAT_OK;
}

void sqlite_writer_submit(sqlite_db *s, store_op *op)
{
    sqlite_writer *w = s->wr;
    wnode *n = chat_xmalloc(sizeof *n);
    n->op = op;
    n->owner = s;
    n->next = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->tail)
        w->tail->next = n;
    else
        w->head = n;
    w->tail = n;
    s->inflight++;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
}

void sqlite_writer_detach(sqlite_db *s)
{
    sqlite_writer *w = s ? s->wr : NULL;
    if (!w)
        return;
    /* Its ops are all posted back before the handle lets go (store_op_post
     * needs the handle attached). */
    pthread_mutex_lock(&w->mu);
    while (s->inflight > 0)
        pthread_cond_wait(&w->idle_cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    s->wr = NULL;

    pthread_mutex_lock(&writers_mu);
    bool last = --w->refs == 0;
    if (last) {
        sqlite_writer **pp = &writers;
        while (*pp != w)
            pp = &(*pp)->next;
        *pp = w->next;
    }
    pthread_mutex_unlock(&writers_mu);
    if (!last)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->work_cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    sqlite_close(w->db);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work_cv);
    pthread_cond_destroy(&w->idle_cv);
    free(w->key);
    free(w);
}
