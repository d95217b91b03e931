/*
 * sqlite.c: the SQLite backend of store.h.
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
 * Database errors are logged to stderr as one line and reported as CHAT_EIO.
 */
#define _GNU_SOURCE
#include "store/backend.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/alloc.h"
#include "core/assets.h"
#include "core/log.h"
#include "core/util.h"

/* How long a connection waits for another connection's write lock. Writes are
 * a few milliseconds, so this only runs out when something is badly wrong. */
#define BUSY_TIMEOUT_MS 5000

/* Longest database path we accept (Linux PATH_MAX). */
#define PATH_BUF 4096

#define URL_PREFIX "sqlite://"
#define MIGRATION_PREFIX "schema/"

/* The session columns, in the order read_session() expects. */
#define SESSION_COLS                                                                    \
    "id, owner, system_prompt, model, created_at, updated_at, turn_count, message_count, " \
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros"

/* The message columns, in the order read_message() expects. */
#define MESSAGE_COLS                                                                  \
    "id, seq, role, content, status, model, stop_reason, tokens, input_tokens, "       \
    "output_tokens, cache_read_tokens, cache_write_tokens, cost_micros, created_at"

/* An idempotency record: first its reply snapshot in MESSAGE_COLS order (so that
 * read_message() reads it), then the record's own columns from IDEM_COL_HASH on. */
#define IDEM_COLS                                                                          \
    "reply_id, reply_seq, 'assistant', reply_content, reply_status, reply_model, "          \
    "reply_stop_reason, reply_tokens, input_tokens, output_tokens, cache_read_tokens, "     \
    "cache_write_tokens, cost_micros, reply_created_at, "                                  \
    "body_hash, state, status, response, session_id, created_at, expires_at, turn_count"
enum {
    IDEM_COL_HASH = 14,
    IDEM_COL_STATE,
    IDEM_COL_STATUS,
    IDEM_COL_RESPONSE,
    IDEM_COL_SESSION,
    IDEM_COL_CREATED,
    IDEM_COL_EXPIRES,
    IDEM_COL_TURNS,
};

/* The api_keys columns, in the order read_key() expects. */
#define KEY_COLS                                                                          \
    "id, name, hash, role, rate_limit, created_at, revoked_at, last_used_at, turn_count, " \
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros"

/*
 * Every statement the backend runs, prepared once per handle. The SQL sticks to
 * what PostgreSQL also accepts (ON CONFLICT, row values, RETURNING), so that a
 * second backend can reuse it nearly verbatim.
 */
#define STATEMENTS(X)                                                                        \
    X(ST_BEGIN_WRITE, "BEGIN IMMEDIATE")                                                     \
    X(ST_SYNC_NORMAL, "PRAGMA synchronous=NORMAL")                                           \
    X(ST_SYNC_FULL, "PRAGMA synchronous=FULL")                                               \
    X(ST_BEGIN_READ, "BEGIN")                                                                \
    X(ST_COMMIT, "COMMIT")                                                                   \
    X(ST_ROLLBACK, "ROLLBACK")                                                               \
    X(ST_PING, "SELECT 1")                                                                   \
    /* Insert, or take over an expired lock; sqlite3_changes() says which happened. */       \
    X(ST_LOCK_ACQUIRE,                                                                       \
      "INSERT INTO turn_locks (session_id, token, expires_at) VALUES (?1, ?2, ?3) "          \
      "ON CONFLICT (session_id) DO UPDATE SET token = excluded.token, "                      \
      "expires_at = excluded.expires_at WHERE turn_locks.expires_at <= ?4")                  \
    X(ST_LOCK_REFRESH, "UPDATE turn_locks SET expires_at = ?3 WHERE session_id = ?1 AND token = ?2") \
    X(ST_LOCK_RELEASE, "DELETE FROM turn_locks WHERE session_id = ?1 AND token = ?2")        \
    X(ST_LOCK_TOKEN, "SELECT token FROM turn_locks WHERE session_id = ?1")                   \
    X(ST_LOCK_DROP, "DELETE FROM turn_locks WHERE session_id = ?1")                          \
    X(ST_LOCK_SWEEP, "DELETE FROM turn_locks WHERE expires_at <= ?1")                        \
    X(ST_SESSION_CREATE,                                                                     \
      "INSERT INTO sessions (id, owner, system_prompt, model, created_at, updated_at) "       \
      "VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (id) DO NOTHING")                         \
    X(ST_NEXT_SEQ, "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE session_id = ?1")       \
    X(ST_MESSAGE_INSERT,                                                                     \
      "INSERT INTO messages (session_id, seq, role, content, status, model, stop_reason, "   \
      "tokens, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "         \
      "cost_micros, created_at) "                                                            \
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)")                \
    X(ST_SESSION_ADD_TURN,                                                                   \
      "UPDATE sessions SET model = ?2, updated_at = ?3, turn_count = turn_count + 1, "       \
      "message_count = message_count + 2, input_tokens = input_tokens + ?4, "                \
      "output_tokens = output_tokens + ?5, cache_read_tokens = cache_read_tokens + ?6, "     \
      "cache_write_tokens = cache_write_tokens + ?7, cost_micros = cost_micros + ?8 "        \
      "WHERE id = ?1 RETURNING turn_count, message_count")                                   \
    X(ST_STATS_ADD_TURN,                                                                     \
      "UPDATE stats SET total_sessions = total_sessions + ?1, "                              \
      "total_messages = total_messages + 2, total_turns = total_turns + 1, "                 \
      "input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3, "               \
      "cache_read_tokens = cache_read_tokens + ?4, "                                         \
      "cache_write_tokens = cache_write_tokens + ?5, cost_micros = cost_micros + ?6 "        \
      "WHERE id = 1")                                                                        \
    X(ST_STATS_SUB,                                                                          \
      "UPDATE stats SET total_sessions = total_sessions - ?1, "                              \
      "total_messages = total_messages - ?2, total_turns = total_turns - ?3 WHERE id = 1")   \
    X(ST_STATS_GET,                                                                          \
      "SELECT total_sessions, total_messages, total_turns, input_tokens, output_tokens, "    \
      "cache_read_tokens, cache_write_tokens, cost_micros FROM stats WHERE id = 1")          \
    X(ST_SESSION_GET, "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1")                 \
    X(ST_SESSION_COUNTS, "SELECT turn_count, message_count FROM sessions WHERE id = ?1")     \
    X(ST_SESSION_EXISTS, "SELECT 1 FROM sessions WHERE id = ?1")                             \
    X(ST_SESSION_DELETE, "DELETE FROM sessions WHERE id = ?1")                               \
    X(ST_SESSION_RESET,                                                                      \
      "UPDATE sessions SET turn_count = 0, message_count = 0, updated_at = ?2 WHERE id = ?1") \
    X(ST_MESSAGES_DELETE, "DELETE FROM messages WHERE session_id = ?1")                      \
    X(ST_MESSAGES_LIST,                                                                      \
      "SELECT " MESSAGE_COLS " FROM messages WHERE session_id = ?1 AND seq > ?2 "            \
      "ORDER BY seq LIMIT ?3")                                                               \
    /* Four listing variants rather than "?4 IS NULL OR owner = ?4", which would keep */     \
    /* the planner from using the owner index. ?1 limit, ?2 ?3 cursor, ?4 owner. */          \
    X(ST_LIST_FIRST,                                                                         \
      "SELECT " SESSION_COLS " FROM sessions ORDER BY created_at DESC, id DESC LIMIT ?1")    \
    X(ST_LIST_AFTER,                                                                         \
      "SELECT " SESSION_COLS " FROM sessions WHERE (created_at, id) < (?2, ?3) "             \
      "ORDER BY created_at DESC, id DESC LIMIT ?1")                                          \
    X(ST_LIST_OWNER_FIRST,                                                                   \
      "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?4 "                              \
      "ORDER BY created_at DESC, id DESC LIMIT ?1")                                          \
    X(ST_LIST_OWNER_AFTER,                                                                   \
      "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?4 AND (created_at, id) < (?2, ?3) " \
      "ORDER BY created_at DESC, id DESC LIMIT ?1")                                          \
    X(ST_EXPIRE_SELECT,                                                                      \
      "SELECT id, turn_count, message_count FROM sessions AS s WHERE updated_at < ?1 "       \
      "AND NOT EXISTS (SELECT 1 FROM turn_locks AS l "                                       \
      "WHERE l.session_id = s.id AND l.expires_at > ?2) "                                    \
      "ORDER BY updated_at LIMIT ?3")                                                        \
    /* ---- idempotency: ?1 scope, ?2 key, ?3 token throughout ---- */                       \
    X(ST_IDEM_GET, "SELECT " IDEM_COLS " FROM idempotency WHERE scope = ?1 AND key = ?2")    \
    X(ST_IDEM_DROP, "DELETE FROM idempotency WHERE scope = ?1 AND key = ?2")                 \
    X(ST_IDEM_INSERT,                                                                        \
      "INSERT INTO idempotency (scope, key, token, body_hash, state, session_id, created_at, " \
      "expires_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)")                          \
    X(ST_IDEM_REFRESH,                                                                       \
      "UPDATE idempotency SET expires_at = ?4 "                                              \
      "WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 'running'")                  \
    X(ST_IDEM_FINISH,                                                                        \
      "UPDATE idempotency SET state = 'done', status = ?4, response = ?5, expires_at = ?6 "   \
      "WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 'running'")                  \
    X(ST_IDEM_ABORT,                                                                         \
      "DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND token = ?3 "                \
      "AND state = 'running'")                                                               \
    X(ST_IDEM_COMMIT,                                                                        \
      "UPDATE idempotency SET state = 'done', status = 200, response = NULL, "               \
      "session_id = ?4, expires_at = ?5, turn_count = ?6, reply_id = ?7, reply_seq = ?8, "   \
      "reply_content = ?9, reply_status = ?10, reply_model = ?11, reply_stop_reason = ?12, " \
      "reply_tokens = ?13, input_tokens = ?14, output_tokens = ?15, "                        \
      "cache_read_tokens = ?16, cache_write_tokens = ?17, cost_micros = ?18, "               \
      "reply_created_at = ?19 "                                                              \
      "WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 'running'")                  \
    X(ST_IDEM_EXPIRE,                                                                        \
      "DELETE FROM idempotency WHERE (scope, key) IN (SELECT scope, key FROM idempotency "   \
      "WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)")                                \
    /* ---- API keys ---- */                                                                 \
    /* No conflict target: a taken id or a taken hash both make it a no-op. */               \
    X(ST_KEY_CREATE,                                                                         \
      "INSERT INTO api_keys (id, name, hash, role, rate_limit, created_at) "                 \
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING")                               \
    X(ST_KEY_BY_HASH,                                                                        \
      "SELECT " KEY_COLS " FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL")            \
    X(ST_KEY_BY_ID, "SELECT " KEY_COLS " FROM api_keys WHERE id = ?1")                       \
    X(ST_KEY_SESSION_COUNT, "SELECT session_count FROM api_keys WHERE id = ?1")              \
    /* Two rows are enough to tell "exactly one" from "ambiguous". */                        \
    X(ST_KEY_BY_NAME,                                                                        \
      "SELECT " KEY_COLS " FROM api_keys WHERE name = ?1 AND revoked_at IS NULL "            \
      "ORDER BY created_at, id LIMIT 2")                                                     \
    X(ST_KEYS_LIST, "SELECT " KEY_COLS " FROM api_keys ORDER BY created_at, id")             \
    X(ST_KEY_REVOKE,                                                                         \
      "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")            \
    X(ST_KEY_LAST_USED, "SELECT last_used_at FROM api_keys WHERE id = ?1")                   \
    X(ST_KEY_TOUCH,                                                                          \
      "UPDATE api_keys SET last_used_at = ?2 "                                               \
      "WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at <= ?3)")                      \
    X(ST_KEY_ADD_TURN,                                                                       \
      "UPDATE api_keys SET turn_count = turn_count + 1, input_tokens = input_tokens + ?2, "  \
      "output_tokens = output_tokens + ?3, cache_read_tokens = cache_read_tokens + ?4, "     \
      "cache_write_tokens = cache_write_tokens + ?5, cost_micros = cost_micros + ?6 "        \
      "WHERE id = ?1")                                                                       \
    /* ---- chatd import ---- */                                                             \
    X(ST_SESSION_IMPORT,                                                                     \
      "INSERT INTO sessions (" SESSION_COLS ") "                                             \
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "                     \
      "ON CONFLICT (id) DO NOTHING")                                                         \
    X(ST_STATS_IMPORT,                                                                       \
      "UPDATE stats SET total_sessions = total_sessions + 1, "                               \
      "total_messages = total_messages + ?1, total_turns = total_turns + ?2, "               \
      "input_tokens = input_tokens + ?3, output_tokens = output_tokens + ?4, "               \
      "cache_read_tokens = cache_read_tokens + ?5, "                                         \
      "cache_write_tokens = cache_write_tokens + ?6, cost_micros = cost_micros + ?7 "        \
      "WHERE id = 1")                                                                        \
    X(ST_KEY_IMPORT,                                                                         \
      "INSERT INTO api_keys (" KEY_COLS ") "                                                 \
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) "                \
      "ON CONFLICT DO NOTHING")

#define AS_ENUM(name, sql) name,
#define AS_SQL(name, sql) [name] = sql,
#define AS_NAME(name, sql) [name] = #name,

enum stmt_id { STATEMENTS(AS_ENUM) ST_COUNT };
static const char *const stmt_sql[ST_COUNT] = {STATEMENTS(AS_SQL)};
static const char *const stmt_name[ST_COUNT] = {STATEMENTS(AS_NAME)};

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
    struct file_lock *next;
} file_lock;

static pthread_mutex_t file_locks_mu = PTHREAD_MUTEX_INITIALIZER;
static file_lock *file_locks;

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
        free(l->path);
        free(l);
    }
    pthread_mutex_unlock(&file_locks_mu);
}

typedef struct sqlite_db sqlite_db;

struct sqlite_db {
    sqlite3 *db;                  /* the connection; owned */
    file_lock *writer;            /* the file's in-process write mutex; NULL for :memory: */
    bool writing;                 /* this handle holds writer->mu */
    bool sync_normal;             /* DATABASE_URL ?synchronous=normal: commits without fsync */
    sqlite3_stmt *st[ST_COUNT];   /* prepared statements, each reset after use; owned */
    int schema_version;           /* highest migration applied, read in store_open */
    int bind_rc;                  /* first failed sqlite3_bind_* since the last step, or SQLITE_OK */
};

/* ---- errors --------------------------------------------------------------- */

/* Logs one line naming the failed operation and SQLite's reason; returns CHAT_EIO. */
static void sqlite_close(sqlite_db *s);

static chat_rc db_fail(sqlite_db *s, const char *what, int rc)
{
    chat_log(LOG_ERROR, "store error",
             json_pack("{s:s,s:s,s:s,s:s,s:i}", "backend", "sqlite", "op", what, "error",
                       s && s->db ? sqlite3_errmsg(s->db) : "no connection", "reason", sqlite3_errstr(rc), "code", rc));
    return CHAT_EIO;
}

/* ---- statement helpers ---------------------------------------------------- */

/* Binding failures (e.g. SQLITE_TOOBIG) are remembered and reported by step(),
 * so that call sites bind without checking each call. */
static void note_bind(sqlite_db *s, int rc)
{
    if (rc != SQLITE_OK && s->bind_rc == SQLITE_OK)
        s->bind_rc = rc;
}

static void bind_text(sqlite_db *s, sqlite3_stmt *st, int i, const char *v)
{
    note_bind(s, v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i));
}

static void bind_i64(sqlite_db *s, sqlite3_stmt *st, int i, int64_t v)
{
    note_bind(s, sqlite3_bind_int64(st, i, v));
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
static int step(sqlite_db *s, sqlite3_stmt *st)
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
static void done_in(sqlite_db *s, sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (s->writing && sqlite3_get_autocommit(s->db))
        write_unlock(s);
}

#define done(st) done_in(s, (st))

/* Runs a bound statement that returns no rows. */
static chat_rc run(sqlite_db *s, enum stmt_id id)
{
    sqlite3_stmt *st = s->st[id];
    int rc = step(s, st);
    done(st);
    if (rc != SQLITE_DONE)
        return db_fail(s, stmt_name[id], rc);
    return CHAT_OK;
}

/* Heap copy of a text column, NULL for SQL NULL. */
static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? chat_xstrdup((const char *)t) : NULL;
}

/* ---- transactions --------------------------------------------------------- */

static chat_rc tx_begin(sqlite_db *s, enum stmt_id kind)
{
    if (kind == ST_BEGIN_WRITE)
        write_lock(s);
    chat_rc rc = run(s, kind);
    if (rc != CHAT_OK)
        write_unlock(s);
    return rc;
}

/* Rolls back the open transaction, if any (a failed COMMIT may leave none). */
static void tx_rollback(sqlite_db *s)
{
    if (!sqlite3_get_autocommit(s->db) && run(s, ST_ROLLBACK) != CHAT_OK)
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "rollback", "error",
                           "rollback failed; the connection may be unusable"));
    write_unlock(s);
}

static chat_rc tx_commit(sqlite_db *s)
{
    chat_rc rc = run(s, ST_COMMIT);
    if (rc != CHAT_OK)
        tx_rollback(s);
    write_unlock(s);
    return rc;
}

/* ---- argument checks ------------------------------------------------------ */

/* ---- open: URL, directories, connection setup, migrations ----------------- */

/*
 * Splits a sqlite:// URL into the filename for sqlite3_open_v2. *path is a heap
 * string; *memory tells whether it is a private in-memory database.
 */
static chat_rc parse_path(const char *url, char **path, bool *memory, const char *usage, char *err,
                          size_t errlen);

static chat_rc parse_url(const char *url, char **path, bool *memory, bool *sync_normal, char *err, size_t errlen)
{
    static const char usage[] =
        "expected sqlite:///relative/path, sqlite:////absolute/path or sqlite://:memory:, "
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
    rc = exec_sql(s, s->sync_normal ? "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                                    : "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                  "connection setup", err,
                  errlen);
    return rc;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Applies the pending migrations in one BEGIN IMMEDIATE transaction. */
static chat_rc migrate(sqlite_db *s, char *err, size_t errlen)
{
    store_migration *m = NULL;
    size_t n = 0;
    sqlite3_stmt *st = NULL;
    int src;
    chat_rc rc = store_migrations_collect(MIGRATION_PREFIX, &m, &n, err, errlen);
    if (rc != CHAT_OK)
        return rc;

    rc = exec_sql(s, "BEGIN IMMEDIATE", "begin migration", err, errlen);
    if (rc != CHAT_OK)
        goto out;
    /* Bootstrapped here rather than in a migration: it must exist before we can
     * ask which migrations were applied. */
    rc = exec_sql(s,
                  "CREATE TABLE IF NOT EXISTS schema_version ("
                  " version BIGINT NOT NULL PRIMARY KEY,"
                  " name TEXT NOT NULL,"
                  " applied_at BIGINT NOT NULL)",
                  "create schema_version", err, errlen);
    if (rc != CHAT_OK)
        goto out;

    rc = CHAT_EIO;
    src = sqlite3_prepare_v2(s->db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", -1,
                             &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        chat_set_err(err, errlen, "read schema_version: %s", sqlite3_errmsg(s->db));
        goto out;
    }
    int64_t current = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (current > m[n - 1].version) {
        /* An older binary must not write into a schema it does not know. */
        chat_set_err(err, errlen, "database schema version %" PRId64 " is newer than this binary's %d",
                current, m[n - 1].version);
        goto out;
    }

    src = sqlite3_prepare_v2(s->db,
                             "INSERT INTO schema_version (version, name, applied_at) "
                             "VALUES (?1, ?2, ?3)",
                             -1, &st, NULL);
    if (src != SQLITE_OK) {
        chat_set_err(err, errlen, "prepare schema_version insert: %s", sqlite3_errmsg(s->db));
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].version <= current)
            continue;
        rc = exec_sql(s, (const char *)m[i].asset->data, m[i].asset->name, err, errlen);
        if (rc != CHAT_OK)
            goto out;
        rc = CHAT_EIO;
        sqlite3_bind_int(st, 1, m[i].version);
        sqlite3_bind_text(st, 2, m[i].asset->name + strlen(MIGRATION_PREFIX), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, wall_ms());
        src = sqlite3_step(st);
        sqlite3_reset(st);
        if (src != SQLITE_DONE) {
            chat_set_err(err, errlen, "record %s: %s", m[i].asset->name, sqlite3_errmsg(s->db));
            goto out;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = exec_sql(s, "COMMIT", "commit migration", err, errlen);
    if (rc == CHAT_OK)
        s->schema_version = m[n - 1].version;

out:
    sqlite3_finalize(st);
    if (rc != CHAT_OK && !sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    free(m);
    return rc;
}

static chat_rc prepare_all(sqlite_db *s, char *err, size_t errlen)
{
    for (int i = 0; i < ST_COUNT; i++) {
        int rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                                    NULL);
        if (rc != SQLITE_OK) {
            chat_set_err(err, errlen, "prepare %s: %s", stmt_name[i], sqlite3_errmsg(s->db));
            return CHAT_EIO;
        }
    }
    return CHAT_OK;
}

static chat_rc sqlite_open(const char *url, sqlite_db **out, char *err, size_t errlen)
{
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
    int src = sqlite3_open_v2(path, &s->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                              NULL);
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

    s->sync_normal = sync_normal;
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

static void sqlite_close(sqlite_db *s)
{
    if (!s)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    write_unlock(s);
    file_lock_put(s->writer);
    if (s->db) {
        int rc = sqlite3_close(s->db);
        if (rc != SQLITE_OK)
            chat_log(LOG_ERROR, "store error",
                     json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "close", "error", sqlite3_errstr(rc)));
    }
    free(s);
}

static int sqlite_schema_version(sqlite_db *s)
{
    return s ? s->schema_version : 0;
}

static chat_rc sqlite_ping(sqlite_db *s)
{
    if (!s)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_PING];
    int rc = step(s, st);
    done(st);
    return rc == SQLITE_ROW ? CHAT_OK : db_fail(s, "ping", rc);
}

/* ---- turn locks ----------------------------------------------------------- */

/*
 * Runs a one-statement write without waiting for the disk (synchronous=NORMAL
 * for that commit). Only for rows whose loss in a power cut is harmless: turn
 * locks expire by themselves, and the next FULL commit (the turn's) syncs these
 * WAL frames too. A turn then costs one fsync, its commit, instead of three.
 */
static chat_rc run_unsynced(sqlite_db *s, enum stmt_id id)
{
    if (s->sync_normal)
        return run(s, id);
    if (run(s, ST_SYNC_NORMAL) != CHAT_OK)
        return run(s, id);
    chat_rc rc = run(s, id);
    if (run(s, ST_SYNC_FULL) != CHAT_OK)
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s,s:s}", "backend", "sqlite", "op", "pragma", "error",
                           "cannot restore synchronous=FULL"));
    return rc;
}

static chat_rc sqlite_lock_acquire(sqlite_db *s, const char *session_id, const char *token, int64_t now,
                           int64_t ttl_ms)
{
    if (!s || !store_valid_id(session_id) || !store_valid_id(token) || now < 0 || ttl_ms <= 0 ||
        ttl_ms > INT64_MAX - now)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_LOCK_ACQUIRE];
    bind_text(s, st, 1, session_id);
    bind_text(s, st, 2, token);
    bind_i64(s, st, 3, now + ttl_ms);
    bind_i64(s, st, 4, now);
    chat_rc rc = run_unsynced(s, ST_LOCK_ACQUIRE);
    if (rc != CHAT_OK)
        return rc;
    /* 0 rows: the conflict's WHERE kept a live lock in place. */
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_EBUSY;
}

static chat_rc sqlite_lock_refresh(sqlite_db *s, const char *session_id, const char *token, int64_t now,
                           int64_t ttl_ms)
{
    if (!s || !store_valid_id(session_id) || !store_valid_id(token) || now < 0 || ttl_ms <= 0 ||
        ttl_ms > INT64_MAX - now)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_LOCK_REFRESH];
    bind_text(s, st, 1, session_id);
    bind_text(s, st, 2, token);
    bind_i64(s, st, 3, now + ttl_ms);
    chat_rc rc = run_unsynced(s, ST_LOCK_REFRESH);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static chat_rc sqlite_lock_release(sqlite_db *s, const char *session_id, const char *token)
{
    if (!s || !store_valid_id(session_id) || !store_valid_id(token))
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_LOCK_RELEASE];
    bind_text(s, st, 1, session_id);
    bind_text(s, st, 2, token);
    return run_unsynced(s, ST_LOCK_RELEASE);
}

/* Inside a transaction: CHAT_OK when token holds the session's lock. */
static chat_rc check_lock(sqlite_db *s, const char *session_id, const char *token)
{
    sqlite3_stmt *st = s->st[ST_LOCK_TOKEN];
    bind_text(s, st, 1, session_id);
    int rc = step(s, st);
    chat_rc out;
    if (rc == SQLITE_ROW) {
        const unsigned char *held = sqlite3_column_text(st, 0);
        out = held && strcmp((const char *)held, token) == 0 ? CHAT_OK : CHAT_ECONFLICT;
    } else if (rc == SQLITE_DONE) {
        out = CHAT_ECONFLICT;
    } else {
        out = db_fail(s, "ST_LOCK_TOKEN", rc);
    }
    done(st);
    return out;
}

/* ---- turns ---------------------------------------------------------------- */

static bool valid_turn(const store_turn *t)
{
    return t && store_valid_id(t->session_id) && store_valid_id(t->lock_token) &&
           (!t->owner || store_valid_id(t->owner)) && t->model && t->model[0] && t->user_content &&
           t->assistant_content && t->status &&
           (strcmp(t->status, "complete") == 0 || strcmp(t->status, "incomplete") == 0) &&
           store_valid_count(t->user_tokens) && store_valid_usage(&t->usage) && t->cost_micros >= 0 &&
           t->now >= 0 &&
           (!t->idem_key || (store_valid_id(t->idem_key) && store_valid_scope(t->idem_scope) &&
                             store_valid_ttl(t->now, t->idem_ttl_ms)));
}

/* Binds and runs one message insert into session_id; *id (when not NULL)
 * receives its row id. The turn commit and the session import both store
 * their messages through here, so that both write the same columns. */
static chat_rc insert_message_row(sqlite_db *s, const char *session_id, const store_message *m, int64_t *id)
{
    sqlite3_stmt *st = s->st[ST_MESSAGE_INSERT];
    bind_text(s, st, 1, session_id);
    bind_i64(s, st, 2, m->seq);
    bind_text(s, st, 3, m->role);
    bind_text(s, st, 4, m->content);
    bind_text(s, st, 5, m->status);
    bind_text(s, st, 6, m->model);
    bind_text(s, st, 7, m->stop_reason);
    bind_i64(s, st, 8, m->tokens);
    bind_i64(s, st, 9, m->usage.input_tokens);
    bind_i64(s, st, 10, m->usage.output_tokens);
    bind_i64(s, st, 11, m->usage.cache_read_tokens);
    bind_i64(s, st, 12, m->usage.cache_write_tokens);
    bind_i64(s, st, 13, m->cost_micros);
    bind_i64(s, st, 14, m->created_at);
    chat_rc rc = run(s, ST_MESSAGE_INSERT);
    if (rc == CHAT_OK && id)
        *id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

/* One of the turn's two messages as a row: the user's, or the assistant's
 * reply. The strings are only read (store_message's are not const because
 * the readers own theirs). */
static chat_rc insert_message(sqlite_db *s, const store_turn *t, int64_t seq, bool assistant,
                              int64_t *id)
{
    const store_message m = {
        .seq = seq,
        .role = assistant ? "assistant" : "user",
        .content = (char *)(assistant ? t->assistant_content : t->user_content),
        .status = (char *)(assistant ? t->status : "complete"),
        .model = (char *)(assistant ? t->model : NULL),
        .stop_reason = (char *)(assistant ? t->stop_reason : NULL),
        .tokens = assistant ? t->usage.output_tokens : t->user_tokens,
        .usage = assistant ? t->usage : (store_usage){-1, -1, -1, -1},
        .cost_micros = assistant ? t->cost_micros : 0,
        .created_at = t->now,
    };
    return insert_message_row(s, t->session_id, &m, id);
}

/*
 * Inside the commit's transaction: marks the turn's idempotency record done,
 * with a copy of the assistant message (see store.h for why a copy). The record
 * must still be running and owned by the lock token: a record whose lease ran
 * out and that a retry took over belongs to the retry, and this commit must not
 * happen (CHAT_ECONFLICT), so that one key never commits two turns.
 */
static chat_rc idem_complete(sqlite_db *s, const store_turn *t, const store_turn_result *r,
                             int64_t reply_seq)
{
    sqlite3_stmt *st = s->st[ST_IDEM_COMMIT];
    bind_text(s, st, 1, t->idem_scope);
    bind_text(s, st, 2, t->idem_key);
    bind_text(s, st, 3, t->lock_token);
    bind_text(s, st, 4, t->session_id);
    bind_i64(s, st, 5, t->now + t->idem_ttl_ms);
    bind_i64(s, st, 6, r->turn_count);
    bind_i64(s, st, 7, r->assistant_message_id);
    bind_i64(s, st, 8, reply_seq);
    bind_text(s, st, 9, t->assistant_content);
    bind_text(s, st, 10, t->status);
    bind_text(s, st, 11, t->model);
    bind_text(s, st, 12, t->stop_reason);
    bind_i64(s, st, 13, t->usage.output_tokens); /* as insert_message() stores it */
    bind_i64(s, st, 14, t->usage.input_tokens);
    bind_i64(s, st, 15, t->usage.output_tokens);
    bind_i64(s, st, 16, t->usage.cache_read_tokens);
    bind_i64(s, st, 17, t->usage.cache_write_tokens);
    bind_i64(s, st, 18, t->cost_micros);
    bind_i64(s, st, 19, t->now);
    chat_rc rc = run(s, ST_IDEM_COMMIT);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static chat_rc sqlite_turn_commit(sqlite_db *s, const store_turn *turn, store_turn_result *res)
{
    if (!s || !valid_turn(turn))
        return CHAT_EINVAL;
    const store_turn *t = turn;
    store_turn_result r = {0};
    sqlite3_stmt *st;
    int src;

    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    rc = check_lock(s, t->session_id, t->lock_token);
    if (rc != CHAT_OK)
        goto out;

    st = s->st[ST_SESSION_CREATE];
    bind_text(s, st, 1, t->session_id);
    bind_text(s, st, 2, t->owner);
    bind_text(s, st, 3, t->system_prompt);
    bind_text(s, st, 4, t->session_model ? t->session_model : t->model);
    bind_i64(s, st, 5, t->now);
    rc = run(s, ST_SESSION_CREATE);
    if (rc != CHAT_OK)
        goto out;
    int64_t created = sqlite3_changes(s->db); /* 0: it existed (DO NOTHING) */

    st = s->st[ST_NEXT_SEQ];
    bind_text(s, st, 1, t->session_id);
    src = step(s, st);
    int64_t last_seq = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    done(st);
    if (src != SQLITE_ROW) {
        rc = db_fail(s, "ST_NEXT_SEQ", src);
        goto out;
    }

    rc = insert_message(s, t, last_seq + 1, false, &r.user_message_id);
    if (rc != CHAT_OK)
        goto out;
    rc = insert_message(s, t, last_seq + 2, true, &r.assistant_message_id);
    if (rc != CHAT_OK)
        goto out;

    st = s->st[ST_SESSION_ADD_TURN];
    bind_text(s, st, 1, t->session_id);
    bind_text(s, st, 2, t->session_model ? t->session_model : t->model);
    bind_i64(s, st, 3, t->now);
    bind_i64(s, st, 4, store_known(t->usage.input_tokens));
    bind_i64(s, st, 5, store_known(t->usage.output_tokens));
    bind_i64(s, st, 6, store_known(t->usage.cache_read_tokens));
    bind_i64(s, st, 7, store_known(t->usage.cache_write_tokens));
    bind_i64(s, st, 8, t->cost_micros);
    src = step(s, st);
    if (src == SQLITE_ROW) {
        r.turn_count = sqlite3_column_int64(st, 0);
        r.message_count = sqlite3_column_int64(st, 1);
    }
    done(st);
    if (src != SQLITE_ROW) {
        rc = db_fail(s, "ST_SESSION_ADD_TURN", src);
        goto out;
    }

    st = s->st[ST_STATS_ADD_TURN];
    bind_i64(s, st, 1, created);
    bind_i64(s, st, 2, store_known(t->usage.input_tokens));
    bind_i64(s, st, 3, store_known(t->usage.output_tokens));
    bind_i64(s, st, 4, store_known(t->usage.cache_read_tokens));
    bind_i64(s, st, 5, store_known(t->usage.cache_write_tokens));
    bind_i64(s, st, 6, t->cost_micros);
    rc = run(s, ST_STATS_ADD_TURN);
    if (rc != CHAT_OK)
        goto out;

    if (t->owner) {
        /* No row when the owner is not a stored key (e.g. the single API_TOKEN):
         * nothing to charge, not an error. */
        st = s->st[ST_KEY_ADD_TURN];
        bind_text(s, st, 1, t->owner);
        bind_i64(s, st, 2, store_known(t->usage.input_tokens));
        bind_i64(s, st, 3, store_known(t->usage.output_tokens));
        bind_i64(s, st, 4, store_known(t->usage.cache_read_tokens));
        bind_i64(s, st, 5, store_known(t->usage.cache_write_tokens));
        bind_i64(s, st, 6, t->cost_micros);
        rc = run(s, ST_KEY_ADD_TURN);
        if (rc != CHAT_OK)
            goto out;
    }

    if (t->idem_key) {
        rc = idem_complete(s, t, &r, last_seq + 2);
        if (rc != CHAT_OK)
            goto out;
    }

    st = s->st[ST_LOCK_RELEASE];
    bind_text(s, st, 1, t->session_id);
    bind_text(s, st, 2, t->lock_token);
    rc = run(s, ST_LOCK_RELEASE);
    if (rc != CHAT_OK)
        goto out;

    rc = tx_commit(s);
out:
    if (rc != CHAT_OK)
        tx_rollback(s);
    else if (res)
        *res = r;
    return rc;
}

/* ---- sessions ------------------------------------------------------------- */

/* Fills out from a row of SESSION_COLS. */
static void read_session(sqlite3_stmt *st, store_session *out)
{
    out->id = col_dup(st, 0);
    out->owner = col_dup(st, 1);
    out->system_prompt = col_dup(st, 2);
    out->model = col_dup(st, 3);
    out->created_at = sqlite3_column_int64(st, 4);
    out->updated_at = sqlite3_column_int64(st, 5);
    out->turn_count = sqlite3_column_int64(st, 6);
    out->message_count = sqlite3_column_int64(st, 7);
    out->usage.input_tokens = sqlite3_column_int64(st, 8);
    out->usage.output_tokens = sqlite3_column_int64(st, 9);
    out->usage.cache_read_tokens = sqlite3_column_int64(st, 10);
    out->usage.cache_write_tokens = sqlite3_column_int64(st, 11);
    out->cost_micros = sqlite3_column_int64(st, 12);
}

/*
 * Runs a bound query of at most one row on statement id, keyed by one text
 * parameter: read(st, out) on a row and CHAT_OK, CHAT_ENOTFOUND without one,
 * CHAT_EIO on an error. The statement is reset either way.
 */
static chat_rc fetch_row(sqlite_db *s, enum stmt_id id, const char *key, void (*read)(sqlite3_stmt *, void *),
                         void *out)
{
    sqlite3_stmt *st = s->st[id];
    bind_text(s, st, 1, key);
    int rc = step(s, st);
    chat_rc out_rc = CHAT_OK;
    if (rc == SQLITE_ROW)
        read(st, out);
    else if (rc == SQLITE_DONE)
        out_rc = CHAT_ENOTFOUND;
    else
        out_rc = db_fail(s, stmt_name[id], rc);
    done(st);
    return out_rc;
}

static void read_session_row(sqlite3_stmt *st, void *out)
{
    read_session(st, out);
}

static chat_rc sqlite_session_get(sqlite_db *s, const char *session_id, store_session *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    if (!s || !store_valid_id(session_id))
        return CHAT_EINVAL;
    return fetch_row(s, ST_SESSION_GET, session_id, read_session_row, out);
}

/* Inside a write transaction: the session's counters, or CHAT_ENOTFOUND. */
static chat_rc session_counts(sqlite_db *s, const char *session_id, int64_t *turns, int64_t *messages)
{
    sqlite3_stmt *st = s->st[ST_SESSION_COUNTS];
    bind_text(s, st, 1, session_id);
    int rc = step(s, st);
    chat_rc out;
    if (rc == SQLITE_ROW) {
        *turns = sqlite3_column_int64(st, 0);
        *messages = sqlite3_column_int64(st, 1);
        out = CHAT_OK;
    } else if (rc == SQLITE_DONE) {
        out = CHAT_ENOTFOUND;
    } else {
        out = db_fail(s, "ST_SESSION_COUNTS", rc);
    }
    done(st);
    return out;
}

/* Inside a write transaction: subtracts from the global counters. */
static chat_rc stats_sub(sqlite_db *s, int64_t sessions, int64_t messages, int64_t turns)
{
    sqlite3_stmt *st = s->st[ST_STATS_SUB];
    bind_i64(s, st, 1, sessions);
    bind_i64(s, st, 2, messages);
    bind_i64(s, st, 3, turns);
    return run(s, ST_STATS_SUB);
}

/*
 * Inside a write transaction: deletes an existing session, its messages (not
 * left to the cascade, so the counts stay right even where foreign keys are
 * off) and its lock, and takes them out of the global counters.
 */
static chat_rc delete_session(sqlite_db *s, const char *session_id, int64_t turns, int64_t messages)
{
    static const enum stmt_id steps[] = {ST_MESSAGES_DELETE, ST_SESSION_DELETE, ST_LOCK_DROP};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        bind_text(s, s->st[steps[i]], 1, session_id);
        chat_rc rc = run(s, steps[i]);
        if (rc != CHAT_OK)
            return rc;
    }
    return stats_sub(s, 1, messages, turns);
}

static chat_rc sqlite_session_delete(sqlite_db *s, const char *session_id)
{
    if (!s || !store_valid_id(session_id))
        return CHAT_EINVAL;
    int64_t turns = 0, messages = 0;
    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    rc = session_counts(s, session_id, &turns, &messages);
    if (rc == CHAT_OK)
        rc = delete_session(s, session_id, turns, messages);
    if (rc == CHAT_OK)
        rc = tx_commit(s);
    if (rc != CHAT_OK)
        tx_rollback(s);
    return rc;
}

static chat_rc sqlite_session_reset(sqlite_db *s, const char *session_id, int64_t now,
                            int64_t *previous_turns)
{
    if (!s || !store_valid_id(session_id) || now < 0)
        return CHAT_EINVAL;
    int64_t turns = 0, messages = 0;
    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    rc = session_counts(s, session_id, &turns, &messages);
    if (rc != CHAT_OK)
        goto out;
    bind_text(s, s->st[ST_MESSAGES_DELETE], 1, session_id);
    rc = run(s, ST_MESSAGES_DELETE);
    if (rc != CHAT_OK)
        goto out;
    bind_text(s, s->st[ST_SESSION_RESET], 1, session_id);
    bind_i64(s, s->st[ST_SESSION_RESET], 2, now);
    rc = run(s, ST_SESSION_RESET);
    if (rc != CHAT_OK)
        goto out;
    rc = stats_sub(s, 0, messages, turns);
    if (rc != CHAT_OK)
        goto out;
    rc = tx_commit(s);
out:
    if (rc != CHAT_OK)
        tx_rollback(s);
    else if (previous_turns)
        *previous_turns = turns;
    return rc;
}

/* ---- listing -------------------------------------------------------------- */

static chat_rc sqlite_sessions_list(sqlite_db *s, const char *owner, const char *cursor, int limit,
                            store_session **out, size_t *n, char **next_cursor)
{
    if (!out || !n || !next_cursor)
        return CHAT_EINVAL;
    *out = NULL;
    *n = 0;
    *next_cursor = NULL;
    if (!s || limit < 1 || limit > 1000 || (owner && !store_valid_id(owner)))
        return CHAT_EINVAL;

    int64_t after_created = 0;
    char after_id[STORE_ID_MAX + 1];
    if (cursor && !store_cursor_parse(cursor, &after_created, after_id))
        return CHAT_EINVAL;

    enum stmt_id id = owner ? (cursor ? ST_LIST_OWNER_AFTER : ST_LIST_OWNER_FIRST)
                            : (cursor ? ST_LIST_AFTER : ST_LIST_FIRST);
    sqlite3_stmt *st = s->st[id];
    /* One row more than asked tells whether another page follows. */
    bind_i64(s, st, 1, (int64_t)limit + 1);
    if (cursor) {
        bind_i64(s, st, 2, after_created);
        bind_text(s, st, 3, after_id);
    }
    if (owner)
        bind_text(s, st, 4, owner);

    store_session *arr = NULL;
    size_t count = 0, cap = 0;
    bool more = false;
    int rc;
    while ((rc = step(s, st)) == SQLITE_ROW) {
        if (count == (size_t)limit) {
            more = true;
            break;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            arr = chat_xrealloc(arr, cap * sizeof *arr);
        }
        memset(&arr[count], 0, sizeof arr[count]);
        read_session(st, &arr[count]);
        count++;
    }
    done(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_sessions_free(arr, count);
        return db_fail(s, stmt_name[id], rc);
    }
    if (more)
        *next_cursor = store_cursor_make(arr[count - 1].created_at, arr[count - 1].id);
    *out = arr;
    *n = count;
    return CHAT_OK;
}

/* ---- messages ------------------------------------------------------------- */

static void read_message(sqlite3_stmt *st, store_message *m)
{
    m->id = sqlite3_column_int64(st, 0);
    m->seq = sqlite3_column_int64(st, 1);
    m->role = col_dup(st, 2);
    m->content = col_dup(st, 3);
    m->status = col_dup(st, 4);
    m->model = col_dup(st, 5);
    m->stop_reason = col_dup(st, 6);
    m->tokens = sqlite3_column_int64(st, 7);
    m->usage.input_tokens = sqlite3_column_int64(st, 8);
    m->usage.output_tokens = sqlite3_column_int64(st, 9);
    m->usage.cache_read_tokens = sqlite3_column_int64(st, 10);
    m->usage.cache_write_tokens = sqlite3_column_int64(st, 11);
    m->cost_micros = sqlite3_column_int64(st, 12);
    m->created_at = sqlite3_column_int64(st, 13);
}

static chat_rc sqlite_messages_list(sqlite_db *s, const char *session_id, int64_t after_seq, int limit,
                            store_message **out, size_t *n)
{
    if (!out || !n)
        return CHAT_EINVAL;
    *out = NULL;
    *n = 0;
    if (!s || !store_valid_id(session_id))
        return CHAT_EINVAL;

    store_message *arr = NULL;
    size_t count = 0, cap = 0;
    sqlite3_stmt *st;
    int src;
    /* A read transaction, so that the existence check and the rows come from
     * one snapshot (a concurrent delete cannot turn ENOTFOUND into "empty"). */
    chat_rc rc = tx_begin(s, ST_BEGIN_READ);
    if (rc != CHAT_OK)
        return rc;

    st = s->st[ST_SESSION_EXISTS];
    bind_text(s, st, 1, session_id);
    src = step(s, st);
    done(st);
    if (src != SQLITE_ROW) {
        rc = src == SQLITE_DONE ? CHAT_ENOTFOUND : db_fail(s, "ST_SESSION_EXISTS", src);
        goto out;
    }

    st = s->st[ST_MESSAGES_LIST];
    bind_text(s, st, 1, session_id);
    bind_i64(s, st, 2, after_seq);
    bind_i64(s, st, 3, limit > 0 ? limit : -1); /* LIMIT -1: no limit */
    while ((src = step(s, st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            arr = chat_xrealloc(arr, cap * sizeof *arr);
        }
        memset(&arr[count], 0, sizeof arr[count]);
        read_message(st, &arr[count]);
        count++;
    }
    done(st);
    if (src != SQLITE_DONE) {
        rc = db_fail(s, "ST_MESSAGES_LIST", src);
        goto out;
    }
    rc = tx_commit(s);
out:
    if (rc != CHAT_OK) {
        tx_rollback(s);
        store_messages_free(arr, count);
        return rc;
    }
    *out = arr;
    *n = count;
    return CHAT_OK;
}

/* ---- stats and retention -------------------------------------------------- */

static chat_rc sqlite_stats_get(sqlite_db *s, store_stats *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    if (!s)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_STATS_GET];
    int rc = step(s, st);
    chat_rc out_rc = CHAT_OK;
    if (rc == SQLITE_ROW) {
        out->total_sessions = sqlite3_column_int64(st, 0);
        out->total_messages = sqlite3_column_int64(st, 1);
        out->total_turns = sqlite3_column_int64(st, 2);
        out->usage.input_tokens = sqlite3_column_int64(st, 3);
        out->usage.output_tokens = sqlite3_column_int64(st, 4);
        out->usage.cache_read_tokens = sqlite3_column_int64(st, 5);
        out->usage.cache_write_tokens = sqlite3_column_int64(st, 6);
        out->cost_micros = sqlite3_column_int64(st, 7);
    } else {
        /* SQLITE_DONE: the row that 001_init inserts is gone. */
        out_rc = db_fail(s, "ST_STATS_GET", rc == SQLITE_DONE ? SQLITE_CORRUPT : rc);
    }
    done(st);
    return out_rc;
}

struct expired {
    char *id;
    int64_t turns;
    int64_t messages;
};

static chat_rc sqlite_sessions_expire(sqlite_db *s, int64_t before, int64_t now, int limit, int64_t *deleted)
{
    if (deleted)
        *deleted = 0;
    if (!s || limit < 1 || now < 0)
        return CHAT_EINVAL;

    struct expired *victims = NULL;
    size_t count = 0, cap = 0;
    sqlite3_stmt *st;
    int src;
    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;

    st = s->st[ST_EXPIRE_SELECT];
    bind_i64(s, st, 1, before);
    bind_i64(s, st, 2, now);
    bind_i64(s, st, 3, limit);
    while ((src = step(s, st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            victims = chat_xrealloc(victims, cap * sizeof *victims);
        }
        victims[count].id = col_dup(st, 0);
        victims[count].turns = sqlite3_column_int64(st, 1);
        victims[count].messages = sqlite3_column_int64(st, 2);
        count++;
    }
    done(st);
    if (src != SQLITE_DONE) {
        rc = db_fail(s, "ST_EXPIRE_SELECT", src);
        goto out;
    }
    for (size_t i = 0; i < count && rc == CHAT_OK; i++)
        rc = delete_session(s, victims[i].id, victims[i].turns, victims[i].messages);
    if (rc != CHAT_OK)
        goto out;

    /* Locks left by holders that died and whose session never got a turn would
     * otherwise stay forever. */
    bind_i64(s, s->st[ST_LOCK_SWEEP], 1, now);
    rc = run(s, ST_LOCK_SWEEP);
    if (rc != CHAT_OK)
        goto out;
    rc = tx_commit(s);
out:
    if (rc != CHAT_OK)
        tx_rollback(s);
    else if (deleted)
        *deleted = (int64_t)count;
    for (size_t i = 0; i < count; i++)
        free(victims[i].id);
    free(victims);
    return rc;
}

/* ---- idempotency ---------------------------------------------------------- */

/* Fills out from a live row of IDEM_COLS, for a request with body_hash. */
static void read_idem(sqlite3_stmt *st, const char *body_hash, store_idem *out)
{
    const unsigned char *hash = sqlite3_column_text(st, IDEM_COL_HASH);
    const unsigned char *state = sqlite3_column_text(st, IDEM_COL_STATE);
    out->session_id = col_dup(st, IDEM_COL_SESSION);
    out->created_at = sqlite3_column_int64(st, IDEM_COL_CREATED);
    out->expires_at = sqlite3_column_int64(st, IDEM_COL_EXPIRES);
    /* A different body is reported first, whatever the state: it is the
     * client's mistake, and retrying later would not cure it. */
    if (!hash || strcmp((const char *)hash, body_hash) != 0) {
        out->outcome = STORE_IDEM_MISMATCH;
        return;
    }
    if (!state || strcmp((const char *)state, "done") != 0) {
        out->outcome = STORE_IDEM_RUNNING;
        return;
    }
    out->outcome = STORE_IDEM_REPLAY;
    out->status = sqlite3_column_int(st, IDEM_COL_STATUS);
    out->response = col_dup(st, IDEM_COL_RESPONSE);
    if (sqlite3_column_type(st, 0) != SQLITE_NULL) { /* reply_id: done by a turn commit */
        out->has_reply = true;
        read_message(st, &out->reply);
        out->turn_count = sqlite3_column_int64(st, IDEM_COL_TURNS);
    }
}

static chat_rc sqlite_idem_begin(sqlite_db *s, const char *scope, const char *key, const char *body_hash,
                         const char *token, const char *session_id, int64_t now,
                         int64_t lease_ms, store_idem *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    if (!s || !store_valid_scope(scope) || !store_valid_id(key) || !store_valid_id(body_hash) ||
        !store_valid_id(token) || (session_id && !store_valid_id(session_id)) || !store_valid_ttl(now, lease_ms))
        return CHAT_EINVAL;

    sqlite3_stmt *st;
    int src;
    bool exists = false, live = false;
    /* A write transaction from the start: the look-up and the insert must be
     * one step, or two requests with the same key could both see no record. */
    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;

    st = s->st[ST_IDEM_GET];
    bind_text(s, st, 1, scope);
    bind_text(s, st, 2, key);
    src = step(s, st);
    if (src == SQLITE_ROW) {
        exists = true;
        live = sqlite3_column_int64(st, IDEM_COL_EXPIRES) > now;
        if (live)
            read_idem(st, body_hash, out);
    }
    done(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = db_fail(s, "ST_IDEM_GET", src);
        goto out;
    }

    if (!live) {
        /* Absent, or expired (running or done): start afresh. */
        if (exists) {
            bind_text(s, s->st[ST_IDEM_DROP], 1, scope);
            bind_text(s, s->st[ST_IDEM_DROP], 2, key);
            rc = run(s, ST_IDEM_DROP);
            if (rc != CHAT_OK)
                goto out;
        }
        st = s->st[ST_IDEM_INSERT];
        bind_text(s, st, 1, scope);
        bind_text(s, st, 2, key);
        bind_text(s, st, 3, token);
        bind_text(s, st, 4, body_hash);
        bind_text(s, st, 5, session_id);
        bind_i64(s, st, 6, now);
        bind_i64(s, st, 7, now + lease_ms);
        rc = run(s, ST_IDEM_INSERT);
        if (rc != CHAT_OK)
            goto out;
        out->outcome = STORE_IDEM_NEW;
        out->session_id = session_id ? chat_xstrdup(session_id) : NULL;
        out->created_at = now;
        out->expires_at = now + lease_ms;
    }
    rc = tx_commit(s);
out:
    if (rc != CHAT_OK) {
        tx_rollback(s);
        store_idem_clear(out);
    }
    return rc;
}

static chat_rc sqlite_idem_refresh(sqlite_db *s, const char *scope, const char *key, const char *token,
                           int64_t now, int64_t lease_ms)
{
    if (!s || !store_valid_scope(scope) || !store_valid_id(key) || !store_valid_id(token) ||
        !store_valid_ttl(now, lease_ms))
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_IDEM_REFRESH];
    bind_text(s, st, 1, scope);
    bind_text(s, st, 2, key);
    bind_text(s, st, 3, token);
    bind_i64(s, st, 4, now + lease_ms);
    chat_rc rc = run(s, ST_IDEM_REFRESH);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static chat_rc sqlite_idem_finish(sqlite_db *s, const char *scope, const char *key, const char *token,
                          int status, const char *response, int64_t now, int64_t ttl_ms)
{
    if (!s || !store_valid_scope(scope) || !store_valid_id(key) || !store_valid_id(token) || status < 100 ||
        status > 599 || !response || !store_valid_ttl(now, ttl_ms))
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_IDEM_FINISH];
    bind_text(s, st, 1, scope);
    bind_text(s, st, 2, key);
    bind_text(s, st, 3, token);
    bind_i64(s, st, 4, status);
    bind_text(s, st, 5, response);
    bind_i64(s, st, 6, now + ttl_ms);
    chat_rc rc = run(s, ST_IDEM_FINISH);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static chat_rc sqlite_idem_abort(sqlite_db *s, const char *scope, const char *key, const char *token)
{
    if (!s || !store_valid_scope(scope) || !store_valid_id(key) || !store_valid_id(token))
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_IDEM_ABORT];
    bind_text(s, st, 1, scope);
    bind_text(s, st, 2, key);
    bind_text(s, st, 3, token);
    return run(s, ST_IDEM_ABORT);
}

static chat_rc sqlite_idem_expire(sqlite_db *s, int64_t now, int limit, int64_t *deleted)
{
    if (deleted)
        *deleted = 0;
    if (!s || now < 0 || limit < 1)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_IDEM_EXPIRE];
    bind_i64(s, st, 1, now);
    bind_i64(s, st, 2, limit);
    chat_rc rc = run(s, ST_IDEM_EXPIRE);
    if (rc == CHAT_OK && deleted)
        *deleted = sqlite3_changes(s->db);
    return rc;
}

/* ---- API keys ------------------------------------------------------------- */

/* Fills out from a row of KEY_COLS. NULL times read as 0 ("never"). */
static void read_key(sqlite3_stmt *st, store_key *out)
{
    out->id = col_dup(st, 0);
    out->name = col_dup(st, 1);
    out->hash = col_dup(st, 2);
    out->role = col_dup(st, 3);
    out->rate_limit = col_dup(st, 4);
    out->created_at = sqlite3_column_int64(st, 5);
    out->revoked_at = sqlite3_column_int64(st, 6);
    out->last_used_at = sqlite3_column_int64(st, 7);
    out->turn_count = sqlite3_column_int64(st, 8);
    out->usage.input_tokens = sqlite3_column_int64(st, 9);
    out->usage.output_tokens = sqlite3_column_int64(st, 10);
    out->usage.cache_read_tokens = sqlite3_column_int64(st, 11);
    out->usage.cache_write_tokens = sqlite3_column_int64(st, 12);
    out->cost_micros = sqlite3_column_int64(st, 13);
}

static chat_rc sqlite_key_create(sqlite_db *s, const store_key_new *k)
{
    if (!s || !k || !store_valid_id(k->id) || !store_valid_id(k->name) || !store_valid_hash(k->hash) ||
        !k->role || (strcmp(k->role, "user") != 0 && strcmp(k->role, "admin") != 0) ||
        (k->rate_limit && !store_valid_id(k->rate_limit)) || k->now <= 0)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_KEY_CREATE];
    bind_text(s, st, 1, k->id);
    bind_text(s, st, 2, k->name);
    bind_text(s, st, 3, k->hash);
    bind_text(s, st, 4, k->role);
    bind_text(s, st, 5, k->rate_limit);
    bind_i64(s, st, 6, k->now);
    chat_rc rc = run(s, ST_KEY_CREATE);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static void read_key_row(sqlite3_stmt *st, void *out)
{
    read_key(st, out);
}

static chat_rc sqlite_key_find_by_hash(sqlite_db *s, const char *hash, store_key *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    if (!s || !store_valid_hash(hash))
        return CHAT_EINVAL;
    return fetch_row(s, ST_KEY_BY_HASH, hash, read_key_row, out);
}

static chat_rc sqlite_keys_list(sqlite_db *s, store_key **out, size_t *n)
{
    if (!out || !n)
        return CHAT_EINVAL;
    *out = NULL;
    *n = 0;
    if (!s)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_KEYS_LIST];
    store_key *arr = NULL;
    size_t count = 0, cap = 0;
    int rc;
    while ((rc = step(s, st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            arr = chat_xrealloc(arr, cap * sizeof *arr);
        }
        memset(&arr[count], 0, sizeof arr[count]);
        read_key(st, &arr[count]);
        count++;
    }
    done(st);
    if (rc != SQLITE_DONE) {
        store_keys_free(arr, count);
        return db_fail(s, "ST_KEYS_LIST", rc);
    }
    *out = arr;
    *n = count;
    return CHAT_OK;
}

/*
 * Inside a transaction: reads the keys a statement bound to id_or_name returns,
 * at most two. *found receives how many (2 meaning "two or more"); *k the first.
 */
static chat_rc keys_matching(sqlite_db *s, enum stmt_id id, const char *id_or_name, store_key *k,
                             int *found)
{
    sqlite3_stmt *st = s->st[id];
    int rc = SQLITE_DONE;
    *found = 0;
    bind_text(s, st, 1, id_or_name);
    while (*found < 2 && (rc = step(s, st)) == SQLITE_ROW) {
        if (*found == 0)
            read_key(st, k);
        (*found)++;
    }
    done(st);
    if (*found < 2 && rc != SQLITE_DONE)
        return db_fail(s, stmt_name[id], rc);
    return CHAT_OK;
}

static chat_rc sqlite_key_revoke(sqlite_db *s, const char *id_or_name, int64_t now, store_key *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!s || !store_valid_id(id_or_name) || now <= 0)
        return CHAT_EINVAL;
    store_key k = {0};
    int found = 0;
    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;

    /* An id wins over a name: ids are unique, and a name equal to another key's
     * id must not make that key unrevocable by id. */
    rc = keys_matching(s, ST_KEY_BY_ID, id_or_name, &k, &found);
    if (rc == CHAT_OK && found == 0)
        rc = keys_matching(s, ST_KEY_BY_NAME, id_or_name, &k, &found);
    if (rc != CHAT_OK)
        goto out;
    if (found != 1) {
        rc = found == 0 ? CHAT_ENOTFOUND : CHAT_ECONFLICT;
        goto out;
    }
    if (k.revoked_at == 0) {
        bind_text(s, s->st[ST_KEY_REVOKE], 1, k.id);
        bind_i64(s, s->st[ST_KEY_REVOKE], 2, now);
        rc = run(s, ST_KEY_REVOKE);
        if (rc != CHAT_OK)
            goto out;
        k.revoked_at = now;
    }
    rc = tx_commit(s);
out:
    if (rc != CHAT_OK)
        tx_rollback(s);
    if (rc == CHAT_OK && out)
        *out = k;
    else
        store_key_clear(&k);
    return rc;
}

static void read_count_row(sqlite3_stmt *st, void *out)
{
    *(int64_t *)out = sqlite3_column_int64(st, 0);
}

static chat_rc sqlite_key_session_count(sqlite_db *s, const char *id, int64_t *out)
{
    if (!s || !store_valid_id(id) || !out)
        return CHAT_EINVAL;
    *out = 0;
    return fetch_row(s, ST_KEY_SESSION_COUNT, id, read_count_row, out);
}

static chat_rc sqlite_key_touch(sqlite_db *s, const char *id, int64_t now)
{
    if (!s || !store_valid_id(id) || now <= 0)
        return CHAT_EINVAL;
    /* Read first, in autocommit: a reader never waits for the write lock, so the
     * common case (touched within STORE_KEY_TOUCH_MS) costs no write at all. */
    sqlite3_stmt *st = s->st[ST_KEY_LAST_USED];
    bind_text(s, st, 1, id);
    int src = step(s, st);
    bool stale = src == SQLITE_ROW && (sqlite3_column_type(st, 0) == SQLITE_NULL ||
                                       sqlite3_column_int64(st, 0) <= now - STORE_KEY_TOUCH_MS);
    done(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        return db_fail(s, "ST_KEY_LAST_USED", src);
    if (!stale)
        return CHAT_OK;
    /* The WHERE repeats the test: another connection may have touched it since. */
    st = s->st[ST_KEY_TOUCH];
    bind_text(s, st, 1, id);
    bind_i64(s, st, 2, now);
    bind_i64(s, st, 3, now - STORE_KEY_TOUCH_MS);
    return run(s, ST_KEY_TOUCH);
}


/* ---- chatd import ------------------------------------------------------------ */

static chat_rc sqlite_session_import(sqlite_db *s, const store_session *ss, const store_message *msgs,
                                     size_t n)
{
    if (!s || !ss || !store_valid_id(ss->id) || (ss->owner && !store_valid_id(ss->owner)) || (n > 0 && !msgs) ||
        ss->message_count != (int64_t)n || ss->turn_count < 0 || ss->cost_micros < 0 ||
        ss->created_at < 0 || ss->updated_at < 0)
        return CHAT_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!store_valid_message(&msgs[i]))
            return CHAT_EINVAL;

    chat_rc rc = tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    sqlite3_stmt *st = s->st[ST_SESSION_IMPORT];
    bind_text(s, st, 1, ss->id);
    bind_text(s, st, 2, ss->owner);
    bind_text(s, st, 3, ss->system_prompt);
    bind_text(s, st, 4, ss->model);
    bind_i64(s, st, 5, ss->created_at);
    bind_i64(s, st, 6, ss->updated_at);
    bind_i64(s, st, 7, ss->turn_count);
    bind_i64(s, st, 8, ss->message_count);
    bind_i64(s, st, 9, store_known(ss->usage.input_tokens));
    bind_i64(s, st, 10, store_known(ss->usage.output_tokens));
    bind_i64(s, st, 11, store_known(ss->usage.cache_read_tokens));
    bind_i64(s, st, 12, store_known(ss->usage.cache_write_tokens));
    bind_i64(s, st, 13, ss->cost_micros);
    rc = run(s, ST_SESSION_IMPORT);
    if (rc != CHAT_OK)
        goto out;
    if (sqlite3_changes(s->db) != 1) {
        rc = CHAT_ECONFLICT;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rc = insert_message_row(s, ss->id, &msgs[i], NULL);
        if (rc != CHAT_OK) /* e.g. a repeated seq: UNIQUE (session_id, seq) */
            goto out;
    }
    st = s->st[ST_STATS_IMPORT];
    bind_i64(s, st, 1, (int64_t)n);
    bind_i64(s, st, 2, ss->turn_count);
    bind_i64(s, st, 3, store_known(ss->usage.input_tokens));
    bind_i64(s, st, 4, store_known(ss->usage.output_tokens));
    bind_i64(s, st, 5, store_known(ss->usage.cache_read_tokens));
    bind_i64(s, st, 6, store_known(ss->usage.cache_write_tokens));
    bind_i64(s, st, 7, ss->cost_micros);
    rc = run(s, ST_STATS_IMPORT);
    if (rc != CHAT_OK)
        goto out;
    rc = tx_commit(s);
out:
    if (rc != CHAT_OK)
        tx_rollback(s);
    return rc;
}

static chat_rc sqlite_key_import(sqlite_db *s, const store_key *k)
{
    if (!s || !k || !store_valid_id(k->id) || !store_valid_id(k->name) || !store_valid_hash(k->hash) || !k->role ||
        (strcmp(k->role, "user") != 0 && strcmp(k->role, "admin") != 0) ||
        (k->rate_limit && !store_valid_id(k->rate_limit)) || k->created_at <= 0 || k->revoked_at < 0 ||
        k->last_used_at < 0 || k->turn_count < 0 || k->cost_micros < 0)
        return CHAT_EINVAL;
    sqlite3_stmt *st = s->st[ST_KEY_IMPORT];
    bind_text(s, st, 1, k->id);
    bind_text(s, st, 2, k->name);
    bind_text(s, st, 3, k->hash);
    bind_text(s, st, 4, k->role);
    bind_text(s, st, 5, k->rate_limit);
    bind_i64(s, st, 6, k->created_at);
    if (k->revoked_at > 0)
        bind_i64(s, st, 7, k->revoked_at);
    if (k->last_used_at > 0)
        bind_i64(s, st, 8, k->last_used_at);
    bind_i64(s, st, 9, k->turn_count);
    bind_i64(s, st, 10, store_known(k->usage.input_tokens));
    bind_i64(s, st, 11, store_known(k->usage.output_tokens));
    bind_i64(s, st, 12, store_known(k->usage.cache_read_tokens));
    bind_i64(s, st, 13, store_known(k->usage.cache_write_tokens));
    bind_i64(s, st, 14, k->cost_micros);
    chat_rc rc = run(s, ST_KEY_IMPORT);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

/* ---- the backend ------------------------------------------------------------- */

static chat_rc be_open(const char *url, void **impl, char *err, size_t errlen)
{
    sqlite_db *s = NULL;
    chat_rc rc = sqlite_open(url, &s, err, errlen);
    *impl = s;
    return rc;
}

static void be_close(void *impl)
{
    sqlite_close(impl);
}

static int be_schema_version(void *impl)
{
    return sqlite_schema_version(impl);
}

/* One op, by the function of the synchronous API it stands for. */
static chat_rc be_run(void *impl, store_op *op)
{
    sqlite_db *s = impl;
    const typeof(op->in) *in = &op->in;
    typeof(op->out) *o = &op->out;
    chat_rc rc = CHAT_EINVAL;
    switch (op->kind) {
    case STORE_OP_PING: rc = sqlite_ping(s); break;
    case STORE_OP_LOCK_ACQUIRE: rc = sqlite_lock_acquire(s, in->session_id, in->token, in->now, in->ttl_ms); break;
    case STORE_OP_LOCK_REFRESH: rc = sqlite_lock_refresh(s, in->session_id, in->token, in->now, in->ttl_ms); break;
    case STORE_OP_LOCK_RELEASE: rc = sqlite_lock_release(s, in->session_id, in->token); break;
    case STORE_OP_TURN_COMMIT: rc = sqlite_turn_commit(s, &in->turn, &o->turn); break;
    case STORE_OP_SESSION_GET: rc = sqlite_session_get(s, in->session_id, &o->session); break;
    case STORE_OP_SESSION_DELETE: rc = sqlite_session_delete(s, in->session_id); break;
    case STORE_OP_SESSION_RESET: rc = sqlite_session_reset(s, in->session_id, in->now, &o->count); break;
    case STORE_OP_SESSIONS_LIST:
        rc = sqlite_sessions_list(s, in->owner, in->cursor, in->limit, &o->sessions, &o->n_sessions,
                                  &o->next_cursor);
        break;
    case STORE_OP_MESSAGES_LIST:
        rc = sqlite_messages_list(s, in->session_id, in->after_seq, in->limit, &o->messages, &o->n_messages);
        break;
    case STORE_OP_STATS_GET: rc = sqlite_stats_get(s, &o->stats); break;
    case STORE_OP_SESSIONS_EXPIRE: rc = sqlite_sessions_expire(s, in->before, in->now, in->limit, &o->count); break;
    case STORE_OP_IDEM_BEGIN:
        rc = sqlite_idem_begin(s, in->scope, in->key, in->body_hash, in->token, in->session_id, in->now,
                               in->ttl_ms, &o->idem);
        break;
    case STORE_OP_IDEM_REFRESH: rc = sqlite_idem_refresh(s, in->scope, in->key, in->token, in->now, in->ttl_ms); break;
    case STORE_OP_IDEM_FINISH:
        rc = sqlite_idem_finish(s, in->scope, in->key, in->token, in->status, in->response, in->now, in->ttl_ms);
        break;
    case STORE_OP_IDEM_ABORT: rc = sqlite_idem_abort(s, in->scope, in->key, in->token); break;
    case STORE_OP_IDEM_EXPIRE: rc = sqlite_idem_expire(s, in->now, in->limit, &o->count); break;
    case STORE_OP_KEY_CREATE: rc = sqlite_key_create(s, &in->key_new); break;
    case STORE_OP_KEY_FIND_BY_HASH: rc = sqlite_key_find_by_hash(s, in->hash, &o->key); break;
    case STORE_OP_KEYS_LIST: rc = sqlite_keys_list(s, &o->keys, &o->n_keys); break;
    case STORE_OP_KEY_REVOKE: rc = sqlite_key_revoke(s, in->id, in->now, &o->key); break;
    case STORE_OP_KEY_TOUCH: rc = sqlite_key_touch(s, in->id, in->now); break;
    case STORE_OP_KEY_SESSION_COUNT: rc = sqlite_key_session_count(s, in->id, &o->count); break;
    case STORE_OP_SESSION_IMPORT:
        rc = sqlite_session_import(s, in->import_session, in->import_messages, in->n_import_messages);
        break;
    case STORE_OP_KEY_IMPORT: rc = sqlite_key_import(s, in->import_key); break;
    case STORE_OP_KIND_COUNT: break;
    }
    op->rc = rc;
    return rc;
}

const store_backend store_backend_sqlite = {
    .name = "sqlite",
    .open = be_open,
    .close = be_close,
    .schema_version = be_schema_version,
    .run = be_run,
};
