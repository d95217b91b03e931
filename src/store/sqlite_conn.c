/*
 * sqlite_conn.c: the SQLite backend of store.h: its connection (the files of
 * the backend are listed in sqlite_int.h).
 *
 * One struct store wraps one sqlite3 connection, used by one thread (opened with
 * SQLITE_OPEN_NOMUTEX: the handle is never shared, so SQLite's own mutexes would
 * be pure overhead). Any number of connections, in threads or processes, may
 * share one database file: WAL mode lets readers run beside the single writer,
 * and the busy timeout makes a second writer wait its turn instead of failing.
 *
 * Every write that touches more than one row runs in BEGIN IMMEDIATE, which takes
 * the write lock up front. A deferred transaction would start as a reader and
 * could fail to upgrade (SQLITE_BUSY_SNAPSHOT, which the busy handler cannot
 * cure) when another connection committed in between. Transactions are short and
 * indexed, so that one worker's write never stalls the others' event loops for
 * long. Single-statement writes (locks, idempotency leases and finishes, key
 * creation and touch) run in autocommit mode, which takes the write lock at the
 * start of the statement in the same way.
 *
 * Statements are prepared once in store_open (SQLITE_PREPARE_PERSISTENT) and
 * reset after every use, so that no statement keeps a read snapshot open (an
 * un-reset SELECT would pin the WAL and block checkpoints).
 *
 * The schema comes from the numbered migrations in src/store/schema, embedded in
 * the binary (core/assets.h). store_open applies the pending ones in order, each
 * recorded in schema_version, all inside one BEGIN IMMEDIATE transaction: when
 * several workers or processes start at once, the first migrates and the others
 * wait on the write lock, then find nothing left to do.
 *
 * Database errors are logged as one JSON line and reported as CHAT_EIO.
 */
#define _GNU_SOURCE
#include "store/sqlite_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/assets.h"
#include "core/log.h"
#include "core/util.h"

const char *const sql_stmt_sql[ST_COUNT] = { STATEMENTS(AS_SQL) };
const char *const sql_stmt_name[ST_COUNT] = { STATEMENTS(AS_NAME) };

/*
 * Writers in one process take a mutex per database file before SQLite's own
 * write lock. Without it, two workers that want to write at once meet
 * SQLITE_BUSY, and SQLite's busy handler sleeps in steps of up to 100 ms: the
 * benchmark measured that as a p99 in the hundreds of milliseconds. A mutex
 * hands over at once. Other processes sharing the file still go through
 * busy_timeout. The wait is bounded (BUSY_TIMEOUT_MS) so a misuse (one thread
 * holding a write transaction on one handle while writing on another) degrades
 * to SQLite's own handling instead of deadlocking.
 */
typedef struct file_lock {
    char *path;
    pthread_mutex_t mu;
    int refs;
    turn_locks *locks; /* the file's turn locks (turn_locks.h) */
    /* The history cache (history_cache.h), from the moment this process owns
     * the file (sqlite_file_own); NULL before, and for a file it does not own. */
    history_cache *history;
    /* -1, or a descriptor on the file holding flock(LOCK_EX): this process
     * serves the file (sqlite_file_own). Closed only with the last handle: the
     * close of any descriptor on the file drops the process's POSIX locks,
     * SQLite's included, so none may be open then. */
    int owner_fd;
    struct file_lock *next;
} file_lock;

static pthread_mutex_t file_locks_mu = PTHREAD_MUTEX_INITIALIZER;
static file_lock *file_locks;
/* store_set_history_cache_size: read when a file comes to be owned. */
static size_t history_cache_bytes_max = STORE_HISTORY_CACHE_DEFAULT;

static file_lock *file_lock_get(const char *path)
{
    char *real = realpath(path, NULL);
    const char *key = real ? real : path;
    pthread_mutex_lock(&file_locks_mu);
    file_lock *l = file_locks;
    while (l && strcmp(l->path, key) != 0)
        l = l->next;
    if (!l) {
        l = chat_xcalloc(1, sizeof *l);
        l->path = chat_xstrdup(key);
        pthread_mutex_init(&l->mu, NULL);
        l->locks = turn_locks_new();
        l->owner_fd = -1;
        l->next = file_locks;
        file_locks = l;
    }
    l->refs++;
    pthread_mutex_unlock(&file_locks_mu);
    free(real);
    return l;
}

static void file_lock_put(file_lock *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&file_locks_mu);
    if (--l->refs == 0) {
        file_lock **pp = &file_locks;
        while (*pp != l)
            pp = &(*pp)->next;
        *pp = l->next;
        pthread_mutex_destroy(&l->mu);
        turn_locks_free(l->locks);
        history_cache_free(l->history);
        if (l->owner_fd >= 0)
            close(l->owner_fd);
        free(l->path);
        free(l);
    }
    pthread_mutex_unlock(&file_locks_mu);
}

/* The real path of a file database (the key of its write mutex and writer). */
const char *sqlite_file_key(const sqlite_db *s)
{
    return s->writer->path;
}

turn_locks *sqlite_turn_locks(sqlite_db *s)
{
    return s->writer ? s->writer->locks : s->mem_locks;
}

chat_rc sqlite_file_own(sqlite_db *s, char *err, size_t errlen)
{
    file_lock *l = s->writer;
    if (!l)
        return CHAT_OK; /* :memory: is private to its handle */
    pthread_mutex_lock(&file_locks_mu);
    chat_rc rc = CHAT_OK;
    if (l->owner_fd < 0) {
        int fd = open(l->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            chat_set_err(err, errlen, "cannot open %s: %s", l->path, strerror(errno));
            rc = CHAT_EIO;
        } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK) {
                chat_set_err(err, errlen,
                             "the database file %s is in use by another chatd server process (one server owns a "
                             "SQLite file; run several servers on PostgreSQL)",
                             l->path);
                rc = CHAT_EBUSY;
            } else {
                chat_set_err(err, errlen, "cannot lock %s: %s", l->path, strerror(e));
                rc = CHAT_EIO;
            }
        } else {
            l->owner_fd = fd;
            l->history = history_cache_new(history_cache_bytes_max);
        }
    }
    pthread_mutex_unlock(&file_locks_mu);
    return rc;
}

history_cache *sqlite_history(sqlite_db *s)
{
    return s->writer ? s->writer->history : NULL;
}

void store_set_history_cache_size(size_t bytes)
{
    history_cache_bytes_max = bytes;
}

/* ---- errors --------------------------------------------------------------- */

/* Logs one line naming the failed operation and SQLite's reason; returns CHAT_EIO. */

chat_rc sql_fail(sqlite_db *s, const char *what, int rc)
{
    chat_log(LOG_ERROR, "store error",
             json_pack("{s:s,s:s,s:s,s:s,s:i}", "backend", "sqlite", "op", what, "error",
                       s && s->db ? sqlite3_errmsg(s->db) : "no connection", "reason", sqlite3_errstr(rc), "code", rc));
    return CHAT_EIO;
}

/* ---- statement helpers ---------------------------------------------------- */

/* Binding failures (e.g. SQLITE_TOOBIG) are remembered and reported by sql_step(),
 * so that call sites bind without checking each call. */
static void note_bind(sqlite_db *s, int rc)
{
    if (rc != SQLITE_OK && s->bind_rc == SQLITE_OK)
        s->bind_rc = rc;
}

void sql_bind_text(sqlite_db *s, sqlite3_stmt *st, int i, const char *v)
{
    note_bind(s, v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i));
}

void sql_bind_i64(sqlite_db *s, sqlite3_stmt *st, int i, int64_t v)
{
    note_bind(s, sqlite3_bind_int64(st, i, v));
}

void sql_bind_usage(sqlite_db *s, sqlite3_stmt *st, int first, const store_usage *u, int64_t cost_micros)
{
    sql_bind_i64(s, st, first, store_known(u->input_tokens));
    sql_bind_i64(s, st, first + 1, store_known(u->output_tokens));
    sql_bind_i64(s, st, first + 2, store_known(u->cache_read_tokens));
    sql_bind_i64(s, st, first + 3, store_known(u->cache_write_tokens));
    sql_bind_i64(s, st, first + 4, cost_micros);
}

static void write_lock(sqlite_db *s)
{
    if (!s->writer || s->writing)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += BUSY_TIMEOUT_MS / 1000;
    if (pthread_mutex_timedlock(&s->writer->mu, &ts) == 0)
        s->writing = true;
}

static void write_unlock(sqlite_db *s)
{
    if (s->writing) {
        s->writing = false;
        pthread_mutex_unlock(&s->writer->mu);
    }
}

/* sqlite3_step, or the pending bind error if a bind failed. A write outside a
 * transaction takes the file's write mutex until done(). */
int sql_step(sqlite_db *s, sqlite3_stmt *st)
{
    if (s->bind_rc != SQLITE_OK) {
        int rc = s->bind_rc;
        s->bind_rc = SQLITE_OK;
        return rc;
    }
    if (!sqlite3_stmt_readonly(st) && sqlite3_get_autocommit(s->db))
        write_lock(s);
    return sqlite3_step(st);
}

/* Returns a statement to its idle state and drops its (borrowed) bindings; a
 * write outside a transaction releases the write mutex. */
void sql_done_in(sqlite_db *s, sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (s->writing && sqlite3_get_autocommit(s->db))
        write_unlock(s);
}


/* Runs a bound statement that returns no rows. */
chat_rc sql_run(sqlite_db *s, enum stmt_id id)
{
    sqlite3_stmt *st = s->st[id];
    int rc = sql_step(s, st);
    done(st);
    if (rc != SQLITE_DONE)
        return sql_fail(s, sql_stmt_name[id], rc);
    return CHAT_OK;
}

/* Heap copy of a text column, NULL for SQL NULL. */
char *sql_col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? chat_xstrdup((const char *)t) : NULL;
}

/* ---- transactions --------------------------------------------------------- */

/* Inside the writer's batch (s->batch) the transaction is the batch's and the
 * op's atomicity is the savepoint the writer put around it: begin, commit and
 * rollback are no-ops there, and a failed op is rolled back by the writer. */
chat_rc sql_tx_begin(sqlite_db *s, enum stmt_id kind)
{
    if (s->batch)
        return CHAT_OK;
    if (kind == ST_BEGIN_WRITE)
        write_lock(s);
    chat_rc rc = sql_run(s, kind);
    if (rc != CHAT_OK)
        write_unlock(s);
    return rc;
}

/* Rolls back the open transaction, if any (a failed COMMIT may leave none). */
void sql_tx_rollback(sqlite_db *s)
{
    if (s->batch)
        return;
    if (!sqlite3_get_autocommit(s->db) && sql_run(s, ST_ROLLBACK) != CHAT_OK)
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "rollback", "error",
                           "rollback failed; the connection may be unusable"));
    write_unlock(s);
}

chat_rc sql_tx_commit(sqlite_db *s)
{
    if (s->batch)
        return CHAT_OK;
    chat_rc rc = sql_run(s, ST_COMMIT);
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
    write_unlock(s);
    return rc;
}

/* ---- open: URL, directories, connection setup, migrations ----------------- */

/*
 * Splits a sqlite:// URL into the filename for sqlite3_open_v2. *path is a heap
 * string; *memory tells whether it is a private in-memory database.
 */
static chat_rc parse_path(const char *url, char **path, bool *memory, const char *usage, char *err, size_t errlen);

static chat_rc parse_url(const char *url, char **path, bool *memory, bool *sync_normal, char *err, size_t errlen)
{
    static const char usage[] = "expected sqlite:///relative/path, sqlite:////absolute/path or sqlite://:memory:, "
                                "optionally followed by ?synchronous=full or ?synchronous=normal";
    *path = NULL;
    *memory = false;
    *sync_normal = false;
    /* The one option: the durability of a commit (see configure()). */
    char *copy = NULL;
    const char *q = strchr(url, '?');
    if (q) {
        if (strcmp(q, "?synchronous=normal") == 0) {
            *sync_normal = true;
        } else if (strcmp(q, "?synchronous=full") != 0) {
            chat_set_err(err, errlen, "unsupported database url option %s (%s)", q, usage);
            return CHAT_EINVAL;
        }
        copy = chat_xstrndup(url, (size_t)(q - url));
        url = copy;
    }
    chat_rc rc = parse_path(url, path, memory, usage, err, errlen);
    free(copy);
    return rc;
}

static chat_rc parse_path(const char *url, char **path, bool *memory, const char *usage, char *err, size_t errlen)
{
    if (strncmp(url, URL_PREFIX, strlen(URL_PREFIX)) != 0) {
        chat_set_err(err, errlen, "unsupported database url (%s)", usage);
        return CHAT_EINVAL;
    }
    const char *rest = url + strlen(URL_PREFIX);
    if (strcmp(rest, ":memory:") == 0) {
        *path = chat_xstrdup(":memory:");
        *memory = true;
        return CHAT_OK;
    }
    if (rest[0] != '/' || rest[1] == '\0') {
        chat_set_err(err, errlen, "database url has no path (%s)", usage);
        return CHAT_EINVAL;
    }
    const char *p = rest + 1; /* "sqlite:///a" -> "a", "sqlite:////a" -> "/a" */
    size_t len = strlen(p);
    if (len >= PATH_BUF) {
        chat_set_err(err, errlen, "database path is longer than %d bytes", PATH_BUF - 1);
        return CHAT_EINVAL;
    }
    if (p[len - 1] == '/') {
        chat_set_err(err, errlen, "database path %s names a directory, not a file", p);
        return CHAT_EINVAL;
    }
    /* SQLite would read these as URI parameters or a memory database; reject
     * rather than guess. */
    if (strpbrk(p, "?#") || strcmp(p, ":memory:") == 0) {
        chat_set_err(err, errlen, "unsupported characters in database path %s (%s)", p, usage);
        return CHAT_EINVAL;
    }
    *path = chat_xstrdup(p);
    return CHAT_OK;
}

/* mkdir -p of the directory that will hold path. New directories are 0700:
 * they hold users' conversations. */
static chat_rc make_parent_dirs(const char *path, char *err, size_t errlen)
{
    char buf[PATH_BUF];
    size_t len = strlen(path);
    if (len >= sizeof buf) {
        chat_set_err(err, errlen, "database path too long");
        return CHAT_EINVAL;
    }
    memcpy(buf, path, len + 1);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf)
        return CHAT_OK; /* in the current directory, or in / */
    *slash = '\0';
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
            int e = errno;
            struct stat sb;
            if (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
                chat_set_err(err, errlen, "cannot create directory %s: %s", buf, strerror(e));
                return CHAT_EIO;
            }
        }
        *p = saved;
        if (saved == '\0')
            break;
    }
    return CHAT_OK;
}

/* Runs one SQL text (possibly several statements) outside the statement cache. */
static chat_rc exec_sql(sqlite_db *s, const char *sql, const char *what, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        chat_set_err(err, errlen, "%s: %s", what, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return CHAT_EIO;
    }
    return CHAT_OK;
}

/*
 * Per-connection settings. These pragmas must run outside a transaction
 * (foreign_keys and journal_mode are silently ignored inside one).
 */
static chat_rc configure(sqlite_db *s, bool memory, char *err, size_t errlen)
{
    chat_rc rc;
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    /*
     * Converting a new database to WAL needs an exclusive lock, and SQLite
     * answers SQLITE_BUSY at once, without the busy handler, when another
     * connection is converting or migrating it at the same moment (several
     * workers starting on a fresh file). Retry for as long as the busy timeout.
     */
    for (int waited = 0; src == SQLITE_OK; waited += 10) {
        src = sqlite3_step(st);
        if ((src & 0xff) != SQLITE_BUSY || waited >= BUSY_TIMEOUT_MS)
            break;
        sqlite3_reset(st);
        src = SQLITE_OK;
        sqlite3_sleep(10);
    }
    if (src != SQLITE_ROW) {
        chat_set_err(err, errlen, "cannot set WAL mode: %s", sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return CHAT_EIO;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!memory && (!mode || strcmp(mode, "wal") != 0))
        /* Still correct (rollback journal), only less concurrent: e.g. a
         * filesystem without shared memory support. */
        chat_log(LOG_WARN, "sqlite: WAL mode unavailable",
                 json_pack("{s:s,s:s}", "backend", "sqlite", "journal_mode", mode ? mode : "unknown"));
    sqlite3_finalize(st);

    /*
     * synchronous=FULL: in WAL mode every COMMIT fsyncs the WAL. We tell the
     * client a turn is saved (`done`) right after COMMIT returns, so the commit
     * must survive a power loss or kernel crash. NORMAL would only fsync at
     * checkpoints: a process crash would still lose nothing (the WAL is in the
     * OS page cache), but a power loss could silently roll back the last
     * acknowledged turns. The cost is one fsync per turn, which is small next to
     * an LLM call. `?synchronous=normal` in DATABASE_URL chooses NORMAL, for
     * those who accept that trade (measured in bench/README.md).
     */
    rc = exec_sql(s,
                  s->sync_normal ? "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                                 : "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                  "connection setup", err, errlen);
    return rc;
}

/* ---- migrations: the driver is store_migrate (backend.c) ---- */

static chat_rc mig_exec(void *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    return exec_sql(conn, sql, what, err, errlen);
}

/* BEGIN IMMEDIATE takes the write lock up front: a second process that starts
 * at the same time waits here, then finds the migrations applied. */
static chat_rc mig_begin(void *conn, char *err, size_t errlen)
{
    return exec_sql(conn, "BEGIN IMMEDIATE", "begin migration", err, errlen);
}

static chat_rc mig_current(void *conn, int64_t *version, char *err, size_t errlen)
{
    sqlite_db *s = conn;
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    chat_rc rc = CHAT_OK;
    if (src != SQLITE_ROW) {
        chat_set_err(err, errlen, "read schema_version: %s", sqlite3_errmsg(s->db));
        rc = CHAT_EIO;
    } else {
        *version = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return rc;
}

static chat_rc mig_record(void *conn, int version, const char *name, int64_t applied_at_ms, char *err, size_t errlen)
{
    sqlite_db *s = conn;
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(s->db, "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
                                 -1, &st, NULL);
    if (src == SQLITE_OK) {
        sqlite3_bind_int(st, 1, version);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, applied_at_ms);
        src = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    if (src != SQLITE_DONE) {
        chat_set_err(err, errlen, "record %s: %s", name, sqlite3_errmsg(s->db));
        return CHAT_EIO;
    }
    return CHAT_OK;
}

static void mig_rollback(void *conn)
{
    sqlite_db *s = conn;
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* A COMMIT that fails (e.g. SQLITE_BUSY) may leave the transaction open: end it. */
static chat_rc mig_commit(void *conn, char *err, size_t errlen)
{
    chat_rc rc = exec_sql(conn, "COMMIT", "commit migration", err, errlen);
    if (rc != CHAT_OK)
        mig_rollback(conn);
    return rc;
}

static const store_migrator sqlite_migrator = {
    .begin = mig_begin,
    .exec = mig_exec,
    .current = mig_current,
    .record = mig_record,
    .commit = mig_commit,
    .rollback = mig_rollback,
};

static chat_rc migrate(sqlite_db *s, char *err, size_t errlen)
{
    return store_migrate(&sqlite_migrator, s, MIGRATION_PREFIX, &s->schema_version, err, errlen);
}

static chat_rc prepare_all(sqlite_db *s, char *err, size_t errlen)
{
    for (int i = 0; i < ST_COUNT; i++) {
        int rc = sqlite3_prepare_v3(s->db, sql_stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            chat_set_err(err, errlen, "prepare %s: %s", sql_stmt_name[i], sqlite3_errmsg(s->db));
            return CHAT_EIO;
        }
    }
    return CHAT_OK;
}

/*
 * Process-wide settings, before SQLite initializes (sqlite3_config refuses them
 * after: then they stay SQLite's defaults, which are only slower). Memory
 * statistics off: with them SQLite takes a global mutex and updates counters
 * around every allocation and free (about 60 of each per /chat turn across
 * the writer and the readers), and nothing in chatd reads them.
 */
static void sqlite_global_config(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

chat_rc sqlite_open(const char *url, sqlite_db **out, char *err, size_t errlen)
{
    static pthread_once_t config_once = PTHREAD_ONCE_INIT;
    pthread_once(&config_once, sqlite_global_config);
    chat_rc rc;
    sqlite_db *s = NULL;
    char *path = NULL;
    bool memory = false;

    if (err && errlen > 0)
        err[0] = '\0';
    if (!out || !url) {
        chat_set_err(err, errlen, "no database url");
        return CHAT_EINVAL;
    }
    *out = NULL;
    bool sync_normal = false;
    rc = parse_url(url, &path, &memory, &sync_normal, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    if (!memory) {
        rc = make_parent_dirs(path, err, errlen);
        if (rc != CHAT_OK)
            goto out;
    }

    s = chat_xcalloc(1, sizeof *s);
    /* synchronous=FULL: every commit syncs the WAL, and its frames may wait
     * in memory for that sync (sqlite_walbuf.c). */
    const char *vfs = memory || sync_normal ? NULL : sqlite_walbuf_vfs();
    int src = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, vfs);
    if (src != SQLITE_OK) {
        chat_set_err(err, errlen, "cannot open database %s: %s", path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        rc = CHAT_EIO;
        goto out;
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* Before anything that takes a lock, including the journal mode change. */
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    if (!memory)
        s->writer = file_lock_get(path); /* after open: the file exists, realpath names it */
    else
        s->mem_locks = turn_locks_new();

    s->sync_normal = sync_normal;
    s->memory = memory;
    s->url = chat_xstrdup(url);
    rc = configure(s, memory, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    rc = migrate(s, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    rc = prepare_all(s, err, errlen);
    if (rc != CHAT_OK)
        goto out;

    *out = s;
    s = NULL;
out:
    sqlite_close(s);
    free(path);
    return rc;
}

void sqlite_close(sqlite_db *s)
{
    if (!s)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite_writer_detach(s);
    write_unlock(s);
    file_lock_put(s->writer);
    turn_locks_free(s->mem_locks);
    free(s->url);
    if (s->db) {
        int rc = sqlite3_close(s->db);
        if (rc != SQLITE_OK)
            chat_log(LOG_ERROR, "store error",
                     json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "close", "error", sqlite3_errstr(rc)));
    }
    free(s);
}

int sqlite_schema_version(sqlite_db *s)
{
    return s ? s->schema_version : 0;
}

chat_rc sqlite_ping(sqlite_db *s)
{
    if (!s)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_PING];
    int rc = sql_step(s, st);
    done(st);
    return rc == SQLITE_ROW ? CHAT_OK : sql_fail(s, "ping", rc);
}
