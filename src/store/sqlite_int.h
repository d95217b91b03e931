/*
 * sqlite_int.h: what the files of the SQLite backend share (internal to
 * src/store; nothing outside the backend includes it).
 *
 * The backend, by job:
 *   sqlite_conn.c    the connection: URL, directories, the per-file write
 *                    mutex, statements, transactions, migrations, open/close
 *   sqlite_ops.c     the operations of store.h on sessions, turns, locks,
 *                    messages, statistics, retention and idempotency records,
 *                    and the backend table that dispatches store_ops
 *   sqlite_keys.c    API keys
 *   sqlite_import.c  `chatd import` into SQLite
 *   sqlite_writer.c  the writer thread: write ops of attached handles, in
 *                    group commits
 *   sqlite_walbuf.c  the VFS that writes a commit's WAL frames in one go
 *
 * Thread: a sqlite_db is used by one thread at a time (store.h).
 */
#ifndef CHATD_STORE_SQLITE_INT_H
#define CHATD_STORE_SQLITE_INT_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/backend.h"
#include "store/history_cache.h"
#include "store/turn_locks.h"

/* How long a connection waits for another connection's write lock. Writes are
 * a few milliseconds, so this only runs out when something is badly wrong. */
#define BUSY_TIMEOUT_MS 5000

/* Longest database path we accept (Linux PATH_MAX). */
#define PATH_BUF 4096

#define URL_PREFIX "sqlite://"
#define MIGRATION_PREFIX "schema/"

/* The session columns, in the order read_session() expects. */
#define SESSION_COLS                                                                       \
    "id, owner, system_prompt, model, created_at, updated_at, turn_count, message_count, " \
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros"

/* The message columns, in the order read_message() expects (blocks in their
 * stored form: see store/blocks.h). */
#define MESSAGE_COLS                                                             \
    "id, seq, role, content, status, model, stop_reason, tokens, input_tokens, " \
    "output_tokens, cache_read_tokens, cache_write_tokens, cost_micros, created_at, blocks"

/* An idempotency record: first its reply snapshot in MESSAGE_COLS order (so that
 * read_message() reads it), then the record's own columns from IDEM_COL_HASH on. */
#define IDEM_COLS                                                                       \
    "reply_id, reply_seq, 'assistant', reply_content, reply_status, reply_model, "      \
    "reply_stop_reason, reply_tokens, input_tokens, output_tokens, cache_read_tokens, " \
    "cache_write_tokens, cost_micros, reply_created_at, reply_blocks, "                 \
    "body_hash, state, status, response, session_id, created_at, expires_at, turn_count"
enum {
    IDEM_COL_HASH = 15,
    IDEM_COL_STATE,
    IDEM_COL_STATUS,
    IDEM_COL_RESPONSE,
    IDEM_COL_SESSION,
    IDEM_COL_CREATED,
    IDEM_COL_EXPIRES,
    IDEM_COL_TURNS,
};

/* The api_keys columns, in the order read_key() expects. */
#define KEY_COLS                                                                           \
    "id, name, hash, role, rate_limit, created_at, revoked_at, last_used_at, turn_count, " \
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros"

/*
 * Every statement the backend runs, prepared once per handle. The SQL sticks to
 * what PostgreSQL also accepts (ON CONFLICT, row values, RETURNING), so that a
 * second backend can reuse it nearly verbatim.
 */
#define STATEMENTS(X)                                                                                                \
    X(ST_BEGIN_WRITE, "BEGIN IMMEDIATE")                                                                             \
    X(ST_BEGIN_READ, "BEGIN")                                                                                        \
    X(ST_COMMIT, "COMMIT")                                                                                           \
    X(ST_ROLLBACK, "ROLLBACK")                                                                                       \
    /* The writer thread's group commit: one savepoint per op inside the batch. */                                   \
    X(ST_SAVEPOINT, "SAVEPOINT op")                                                                                  \
    X(ST_RELEASE, "RELEASE op")                                                                                      \
    X(ST_ROLLBACK_TO, "ROLLBACK TO op")                                                                              \
    X(ST_PING, "SELECT 1")                                                                                           \
    X(ST_SESSION_CREATE,                                                                                             \
      "INSERT INTO sessions (id, owner, system_prompt, model, created_at, updated_at, "                              \
      "turn_count, message_count, input_tokens, output_tokens, cache_read_tokens, "                                  \
      "cache_write_tokens, cost_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, 2, ?6, ?7, ?8, ?9, ?10)")                 \
    X(ST_NEXT_SEQ, "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE session_id = ?1")                               \
    X(ST_MESSAGE_INSERT, "INSERT INTO messages (session_id, seq, role, content, status, model, stop_reason, "        \
                         "tokens, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "              \
                         "cost_micros, created_at, blocks) "                                                         \
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)")                \
    /* ---- images kept once per hash (store/blocks.h) ---- */                                                       \
    X(ST_BLOB_INSERT, "INSERT INTO blobs (sha256, media_type, data, bytes, created_at) "                             \
                      "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sha256) DO NOTHING")                                 \
    X(ST_BLOB_LINK, "INSERT INTO message_blobs (message_id, sha256) VALUES (?1, ?2) ON CONFLICT DO NOTHING")         \
    X(ST_BLOB_GET, "SELECT data FROM blobs WHERE sha256 = ?1")                                                       \
    /* The links of a session's messages go first, each blob they named is then */                                   \
    /* removed unless another message still links it. */                                                             \
    X(ST_BLOB_UNLINK_SESSION, "DELETE FROM message_blobs WHERE message_id IN "                                       \
                              "(SELECT id FROM messages WHERE session_id = ?1) RETURNING sha256")                    \
    X(ST_BLOB_DROP_UNUSED, "DELETE FROM blobs WHERE sha256 = ?1 "                                                    \
                           "AND NOT EXISTS (SELECT 1 FROM message_blobs WHERE sha256 = ?1)")                         \
    X(ST_SESSION_ADD_TURN, "UPDATE sessions SET model = ?2, updated_at = ?3, turn_count = turn_count + 1, "          \
                           "message_count = message_count + 2, input_tokens = input_tokens + ?4, "                   \
                           "output_tokens = output_tokens + ?5, cache_read_tokens = cache_read_tokens + ?6, "        \
                           "cache_write_tokens = cache_write_tokens + ?7, cost_micros = cost_micros + ?8 "           \
                           "WHERE id = ?1 RETURNING turn_count, message_count")                                      \
    X(ST_STATS_ADD_TURN, "UPDATE stats SET total_sessions = total_sessions + ?1, "                                   \
                         "total_messages = total_messages + 2, total_turns = total_turns + 1, "                      \
                         "input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3, "                    \
                         "cache_read_tokens = cache_read_tokens + ?4, "                                              \
                         "cache_write_tokens = cache_write_tokens + ?5, cost_micros = cost_micros + ?6 "             \
                         "WHERE id = 1")                                                                             \
    X(ST_STATS_SUB, "UPDATE stats SET total_sessions = total_sessions - ?1, "                                        \
                    "total_messages = total_messages - ?2, total_turns = total_turns - ?3 WHERE id = 1")             \
    X(ST_STATS_GET, "SELECT total_sessions, total_messages, total_turns, input_tokens, output_tokens, "              \
                    "cache_read_tokens, cache_write_tokens, cost_micros FROM stats WHERE id = 1")                    \
    X(ST_SESSION_GET, "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1")                                         \
    X(ST_SESSION_COUNTS, "SELECT turn_count, message_count FROM sessions WHERE id = ?1")                             \
    X(ST_SESSION_EXISTS, "SELECT 1 FROM sessions WHERE id = ?1")                                                     \
    X(ST_SESSION_DELETE, "DELETE FROM sessions WHERE id = ?1")                                                       \
    X(ST_SESSION_RESET, "UPDATE sessions SET turn_count = 0, message_count = 0, updated_at = ?2 WHERE id = ?1")      \
    X(ST_MESSAGES_DELETE, "DELETE FROM messages WHERE session_id = ?1")                                              \
    X(ST_MESSAGES_LIST, "SELECT " MESSAGE_COLS " FROM messages WHERE session_id = ?1 AND seq > ?2 "                  \
                        "ORDER BY seq LIMIT ?3")                                                                     \
    /* The newest first, for a turn's history read as far as its context window. */                                  \
    X(ST_MESSAGES_TAIL, "SELECT " MESSAGE_COLS " FROM messages WHERE session_id = ?1 ORDER BY seq DESC")             \
    /* Four listing variants rather than "?4 IS NULL OR owner = ?4", which would keep */                             \
    /* the planner from using the owner index. ?1 limit, ?2 ?3 cursor, ?4 owner. */                                  \
    X(ST_LIST_FIRST, "SELECT " SESSION_COLS " FROM sessions ORDER BY created_at DESC, id DESC LIMIT ?1")             \
    X(ST_LIST_AFTER, "SELECT " SESSION_COLS " FROM sessions WHERE (created_at, id) < (?2, ?3) "                      \
                     "ORDER BY created_at DESC, id DESC LIMIT ?1")                                                   \
    X(ST_LIST_OWNER_FIRST, "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?4 "                                 \
                           "ORDER BY created_at DESC, id DESC LIMIT ?1")                                             \
    X(ST_LIST_OWNER_AFTER, "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?4 AND (created_at, id) < (?2, ?3) " \
                           "ORDER BY created_at DESC, id DESC LIMIT ?1")                                             \
    /* The same four, oldest first (the same indexes, walked backwards). */                                          \
    X(ST_LIST_OLD_FIRST, "SELECT " SESSION_COLS " FROM sessions ORDER BY created_at, id LIMIT ?1")                   \
    X(ST_LIST_OLD_AFTER, "SELECT " SESSION_COLS " FROM sessions WHERE (created_at, id) > (?2, ?3) "                  \
                         "ORDER BY created_at, id LIMIT ?1")                                                         \
    X(ST_LIST_OLD_OWNER_FIRST, "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?4 "                             \
                               "ORDER BY created_at, id LIMIT ?1")                                                   \
    X(ST_LIST_OLD_OWNER_AFTER,                                                                                       \
      "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?4 AND (created_at, id) > (?2, ?3) "                      \
      "ORDER BY created_at, id LIMIT ?1")                                                                            \
    X(ST_EXPIRE_SELECT, "SELECT id, turn_count, message_count FROM sessions WHERE updated_at < ?1 "                  \
                        "ORDER BY updated_at LIMIT ?2")                                                              \
    /* ---- idempotency: ?1 scope, ?2 key, ?3 token throughout ---- */                                               \
    X(ST_IDEM_GET, "SELECT " IDEM_COLS " FROM idempotency WHERE scope = ?1 AND key = ?2")                            \
    X(ST_IDEM_DROP, "DELETE FROM idempotency WHERE scope = ?1 AND key = ?2")                                         \
    X(ST_IDEM_INSERT, "INSERT INTO idempotency (scope, key, token, body_hash, state, session_id, created_at, "       \
                      "expires_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)")                                  \
    X(ST_IDEM_REFRESH, "UPDATE idempotency SET expires_at = ?4 "                                                     \
                       "WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 'running'")                         \
    X(ST_IDEM_FINISH, "UPDATE idempotency SET state = 'done', status = ?4, response = ?5, expires_at = ?6 "          \
                      "WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 'running'")                          \
    X(ST_IDEM_ABORT, "DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND token = ?3 "                         \
                     "AND state = 'running'")                                                                        \
    X(ST_IDEM_COMMIT, "UPDATE idempotency SET state = 'done', status = 200, response = NULL, "                       \
                      "session_id = ?4, expires_at = ?5, turn_count = ?6, reply_id = ?7, reply_seq = ?8, "           \
                      "reply_content = ?9, reply_status = ?10, reply_model = ?11, reply_stop_reason = ?12, "         \
                      "reply_tokens = ?13, input_tokens = ?14, output_tokens = ?15, "                                \
                      "cache_read_tokens = ?16, cache_write_tokens = ?17, cost_micros = ?18, "                       \
                      "reply_created_at = ?19, reply_blocks = ?20 "                                                  \
                      "WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 'running'")                          \
    X(ST_IDEM_EXPIRE, "DELETE FROM idempotency WHERE (scope, key) IN (SELECT scope, key FROM idempotency "           \
                      "WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)")                                        \
    /* ---- API keys ---- */                                                                                         \
    /* No conflict target: a taken id or a taken hash both make it a no-op. */                                       \
    X(ST_KEY_CREATE, "INSERT INTO api_keys (id, name, hash, role, rate_limit, created_at) "                          \
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING")                                       \
    X(ST_KEY_BY_HASH, "SELECT " KEY_COLS " FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL")                    \
    X(ST_KEY_BY_ID, "SELECT " KEY_COLS " FROM api_keys WHERE id = ?1")                                               \
    X(ST_KEY_SESSION_COUNT, "SELECT session_count FROM api_keys WHERE id = ?1")                                      \
    /* Two rows are enough to tell "exactly one" from "ambiguous". */                                                \
    X(ST_KEY_BY_NAME, "SELECT " KEY_COLS " FROM api_keys WHERE name = ?1 AND revoked_at IS NULL "                    \
                      "ORDER BY created_at, id LIMIT 2")                                                             \
    X(ST_KEYS_LIST, "SELECT " KEY_COLS " FROM api_keys ORDER BY created_at, id")                                     \
    X(ST_KEY_REVOKE, "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")                     \
    X(ST_KEY_LAST_USED, "SELECT last_used_at FROM api_keys WHERE id = ?1")                                           \
    X(ST_KEY_TOUCH, "UPDATE api_keys SET last_used_at = ?2 "                                                         \
                    "WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at <= ?3)")                                \
    X(ST_KEY_ADD_TURN, "UPDATE api_keys SET turn_count = turn_count + 1, input_tokens = input_tokens + ?2, "         \
                       "output_tokens = output_tokens + ?3, cache_read_tokens = cache_read_tokens + ?4, "            \
                       "cache_write_tokens = cache_write_tokens + ?5, cost_micros = cost_micros + ?6 "               \
                       "WHERE id = ?1")                                                                              \
    /* ---- chatd import ---- */                                                                                     \
    X(ST_SESSION_IMPORT, "INSERT INTO sessions (" SESSION_COLS ") "                                                  \
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "                          \
                         "ON CONFLICT (id) DO NOTHING")                                                              \
    X(ST_STATS_IMPORT, "UPDATE stats SET total_sessions = total_sessions + 1, "                                      \
                       "total_messages = total_messages + ?1, total_turns = total_turns + ?2, "                      \
                       "input_tokens = input_tokens + ?3, output_tokens = output_tokens + ?4, "                      \
                       "cache_read_tokens = cache_read_tokens + ?5, "                                                \
                       "cache_write_tokens = cache_write_tokens + ?6, cost_micros = cost_micros + ?7 "               \
                       "WHERE id = 1")                                                                               \
    X(ST_KEY_IMPORT, "INSERT INTO api_keys (" KEY_COLS ") "                                                          \
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) "                         \
                     "ON CONFLICT DO NOTHING")

#define AS_ENUM(name, sql) name,
#define AS_SQL(name, sql) [name] = sql,
#define AS_NAME(name, sql) [name] = #name,

enum stmt_id { STATEMENTS(AS_ENUM) ST_COUNT };
/* The SQL and the name of each statement (sqlite_conn.c). */
extern const char *const sql_stmt_sql[ST_COUNT];
extern const char *const sql_stmt_name[ST_COUNT];

typedef struct file_lock file_lock;
typedef struct sqlite_writer sqlite_writer;

typedef struct sqlite_db sqlite_db;

struct sqlite_db {
    sqlite3 *db;                /* the connection; owned */
    file_lock *writer;          /* the file's in-process write mutex; NULL for :memory: */
    bool writing;               /* this handle holds writer->mu */
    bool sync_normal;           /* DATABASE_URL ?synchronous=normal: commits without fsync */
    sqlite3_stmt *st[ST_COUNT]; /* prepared statements, each reset after use; owned */
    int schema_version;         /* highest migration applied, read in store_open */
    int bind_rc;                /* first failed sqlite3_bind_* since the last step, or SQLITE_OK */
    char *url;                  /* the URL it was opened with (the writer thread opens its own) */
    bool memory;                /* a private :memory: database: no writer thread */
    /* Inside the writer thread's group commit (sqlite_writer.c): the batch's
     * transaction is open, and each op runs inside a savepoint that the writer
     * releases or rolls back; the ops' own BEGIN/COMMIT/ROLLBACK do nothing. */
    bool batch;
    /* Attached to a loop (store_attach) on a file database: write ops go to
     * the file's writer thread; inflight counts this handle's ops there
     * (guarded by the writer's mutex). */
    sqlite_writer *wr;
    int inflight;
    turn_locks *mem_locks; /* a :memory: database's own turn locks; file databases share their file's */
};

/* ---- the connection and statement helpers (sqlite_conn.c) ---- */

chat_rc sql_fail(sqlite_db *s, const char *what, int rc);
void sql_bind_text(sqlite_db *s, sqlite3_stmt *st, int i, const char *v);
void sql_bind_i64(sqlite_db *s, sqlite3_stmt *st, int i, int64_t v);
/* A usage and its cost at parameters first .. first + 4, in the columns'
 * order (input, output, cache read, cache write, cost micros); an unknown
 * count (-1) is bound as 0, as every total column keeps it. */
void sql_bind_usage(sqlite_db *s, sqlite3_stmt *st, int first, const store_usage *u, int64_t cost_micros);
int sql_step(sqlite_db *s, sqlite3_stmt *st);
void sql_done_in(sqlite_db *s, sqlite3_stmt *st);
chat_rc sql_run(sqlite_db *s, enum stmt_id id);
char *sql_col_dup(sqlite3_stmt *st, int i);
chat_rc sql_tx_begin(sqlite_db *s, enum stmt_id kind);
void sql_tx_rollback(sqlite_db *s);
chat_rc sql_tx_commit(sqlite_db *s);
chat_rc sqlite_open(const char *url, sqlite_db **out, char *err, size_t errlen);
void sqlite_close(sqlite_db *s);
int sqlite_schema_version(sqlite_db *s);
chat_rc sqlite_ping(sqlite_db *s);
/* The real path of a file database (not for :memory:). */
const char *sqlite_file_key(const sqlite_db *s);
/* The turn locks of s's database: its file's, shared by the process's handles
 * on it, or a :memory: handle's own. */
turn_locks *sqlite_turn_locks(sqlite_db *s);
/* Makes this process the one server of s's file: an exclusive flock held until
 * the process's last handle on the file closes (a no-op for :memory: and once
 * held). CHAT_EBUSY, with a message in err, when another process holds it. */
chat_rc sqlite_file_own(sqlite_db *s, char *err, size_t errlen);
/* The history cache of s's file (history_cache.h) when this process owns it
 * (sqlite_file_own), else NULL: nobody else may change a cached session. */
history_cache *sqlite_history(sqlite_db *s);

/* Resets a statement after use (and releases the write mutex after a write
 * outside a transaction); expects the handle in a variable named s. */
#define done(st) sql_done_in(s, (st))

/* ---- the writer thread (sqlite_writer.c) ---- */

/* True for the op kinds that write (they go to the writer thread when the
 * handle is attached); the others read on the handle's own connection. */
bool sqlite_op_writes(store_op_kind kind);

/* Starts (or shares) the writer thread of s's database file. */
chat_rc sqlite_writer_attach(sqlite_db *s);

/* Queues a write op of an attached handle; the writer posts it back
 * (store_op_post) once its batch is committed or failed. */
void sqlite_writer_submit(sqlite_db *s, store_op *op);

/* Waits until s has no op left in the writer, then lets go of the writer
 * (the last handle stops the thread). No-op when not attached. */
void sqlite_writer_detach(sqlite_db *s);

/* Runs one op on a connection (the backend's run function). */
chat_rc sqlite_run_op(sqlite_db *s, store_op *op);

/*
 * The history cache kept in step with the writes (history_cache.h), for the
 * ops that change a session's messages other than a turn's commit (delete,
 * reset, import, the retention sweep): write_begin before the op can run
 * (when it is queued for the writer, or run inline), write_end once it is
 * committed or failed, exactly once each. No-ops for other kinds and when
 * the file is not cached.
 */
void sqlite_history_write_begin(sqlite_db *s, const store_op *op);
void sqlite_history_write_end(sqlite_db *s, const store_op *op);

/* A turn's commit is durable (rc CHAT_OK, res filled) or failed: its two
 * messages go into the history cache, then its turn lock is settled (in that
 * order: the session's next turn may read its history as soon as the lock is
 * released). Exactly once per commit that ran. */
void sqlite_turn_done(sqlite_db *s, const store_turn *t, const store_turn_result *res, chat_rc rc);

/* ---- shared by the operations (sqlite_ops.c) ---- */

struct store_packed;
chat_rc sql_insert_message_row(sqlite_db *s, const char *session_id, const store_message *m,
                               const struct store_packed *packed, int64_t *id);
chat_rc sql_fetch_row(sqlite_db *s, enum stmt_id id, const char *key, void (*read)(sqlite3_stmt *, void *), void *out);

/* ---- operations in their own files, dispatched by sqlite_ops.c ---- */

chat_rc sqlite_key_create(sqlite_db *s, const store_key_new *k);
chat_rc sqlite_key_find_by_hash(sqlite_db *s, const char *hash, store_key *out);
chat_rc sqlite_keys_list(sqlite_db *s, store_key **out, size_t *n);
chat_rc sqlite_key_revoke(sqlite_db *s, const char *id_or_name, int64_t now, store_key *out);
chat_rc sqlite_key_session_count(sqlite_db *s, const char *id, int64_t *out);
chat_rc sqlite_key_touch(sqlite_db *s, const char *id, int64_t now);
chat_rc sqlite_session_import(sqlite_db *s, const store_session *ss, const store_message *msgs,
                              const struct store_packed *packed, size_t n);
chat_rc sqlite_key_import(sqlite_db *s, const store_key *k);

/* The name of the VFS of sqlite_walbuf.c (registered on the first call), or
 * NULL if SQLite refused it (then the default VFS serves). For file databases
 * in synchronous=FULL only. */
#define SQLITE_WALBUF_VFS "chatd-walbuf"
const char *sqlite_walbuf_vfs(void);

#endif
