/*
 * sqlite_import.c: `chatd import` into the SQLite backend: a session with its
 * messages in one transaction, and API keys; existing ids are skipped.
 */
#define _GNU_SOURCE
#include "store/sqlite_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/util.h"
#include "store/blocks.h"

/* ---- chatd import ------------------------------------------------------------ */

chat_rc sqlite_session_import(sqlite_db *s, const store_session *ss, const store_message *msgs,
                              const struct store_packed *packed, size_t n)
{
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_WRITE);
    if (rc != CHAT_OK)
        return rc;
    sqlite3_stmt *st = s->st[ST_SESSION_IMPORT];
    sql_bind_text(s, st, 1, ss->id);
    sql_bind_text(s, st, 2, ss->owner);
    sql_bind_text(s, st, 3, ss->system_prompt);
    sql_bind_text(s, st, 4, ss->model);
    sql_bind_i64(s, st, 5, ss->created_at);
    sql_bind_i64(s, st, 6, ss->updated_at);
    sql_bind_i64(s, st, 7, ss->turn_count);
    sql_bind_i64(s, st, 8, ss->message_count);
    sql_bind_usage(s, st, 9, &ss->usage, ss->cost_micros);
    rc = sql_run(s, ST_SESSION_IMPORT);
    if (rc != CHAT_OK)
        goto out;
    if (sqlite3_changes(s->db) != 1) {
        rc = CHAT_ECONFLICT;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        rc = sql_insert_message_row(s, ss->id, &msgs[i], &packed[i], NULL);
        if (rc != CHAT_OK) /* e.g. a repeated seq: UNIQUE (session_id, seq) */
            goto out;
    }
    st = s->st[ST_STATS_IMPORT];
    sql_bind_i64(s, st, 1, (int64_t)n);
    sql_bind_i64(s, st, 2, ss->turn_count);
    sql_bind_usage(s, st, 3, &ss->usage, ss->cost_micros);
    rc = sql_run(s, ST_STATS_IMPORT);
    if (rc != CHAT_OK)
        goto out;
    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
    return rc;
}

chat_rc sqlite_key_import(sqlite_db *s, const store_key *k)
{
    sqlite3_stmt *st = s->st[ST_KEY_IMPORT];
    sql_bind_text(s, st, 1, k->id);
    sql_bind_text(s, st, 2, k->name);
    sql_bind_text(s, st, 3, k->hash);
    sql_bind_text(s, st, 4, k->role);
    sql_bind_text(s, st, 5, k->rate_limit);
    sql_bind_i64(s, st, 6, k->created_at);
    if (k->revoked_at > 0)
        sql_bind_i64(s, st, 7, k->revoked_at);
    if (k->last_used_at > 0)
        sql_bind_i64(s, st, 8, k->last_used_at);
    sql_bind_i64(s, st, 9, k->turn_count);
    sql_bind_usage(s, st, 10, &k->usage, k->cost_micros);
    chat_rc rc = sql_run(s, ST_KEY_IMPORT);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}
