/*
 * sqlite_keys.c: API keys in the SQLite backend (create, find by hash, list,
 * revoke, touch, count of a key's sessions).
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

/* ---- API keys ------------------------------------------------------------- */

/* Fills out from a row of KEY_COLS. NULL times read as 0 ("never"). */
static void read_key(sqlite3_stmt *st, store_key *out)
{
    out->id = sql_col_dup(st, 0);
    out->name = sql_col_dup(st, 1);
    out->hash = sql_col_dup(st, 2);
    out->role = sql_col_dup(st, 3);
    out->rate_limit = sql_col_dup(st, 4);
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

chat_rc sqlite_key_create(sqlite_db *s, const store_key_new *k)
{
    sqlite3_stmt *st = s->st[ST_KEY_CREATE];
    sql_bind_text(s, st, 1, k->id);
    sql_bind_text(s, st, 2, k->name);
    sql_bind_text(s, st, 3, k->hash);
    sql_bind_text(s, st, 4, k->role);
    sql_bind_text(s, st, 5, k->rate_limit);
    sql_bind_i64(s, st, 6, k->now);
    chat_rc rc = sql_run(s, ST_KEY_CREATE);
    if (rc != CHAT_OK)
        return rc;
    return sqlite3_changes(s->db) == 1 ? CHAT_OK : CHAT_ECONFLICT;
}

static void read_key_row(sqlite3_stmt *st, void *out)
{
    read_key(st, out);
}

chat_rc sqlite_key_find_by_hash(sqlite_db *s, const char *hash, store_key *out)
{
    if (!out)
        return CHAT_EINVAL;
    memset(out, 0, sizeof *out);
    return sql_fetch_row(s, ST_KEY_BY_HASH, hash, read_key_row, out);
}

chat_rc sqlite_keys_list(sqlite_db *s, store_key **out, size_t *n)
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
    while ((rc = sql_step(s, st)) == SQLITE_ROW) {
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
        return sql_fail(s, "ST_KEYS_LIST", rc);
    }
    *out = arr;
    *n = count;
    return CHAT_OK;
}

/*
 * Inside a transaction: reads the keys a statement bound to id_or_name returns,
 * at most two. *found receives how many (2 meaning "two or more"); *k the first.
 */
static chat_rc keys_matching(sqlite_db *s, enum stmt_id id, const char *id_or_name, store_key *k, int *found)
{
    sqlite3_stmt *st = s->st[id];
    int rc = SQLITE_DONE;
    *found = 0;
    sql_bind_text(s, st, 1, id_or_name);
    while (*found < 2 && (rc = sql_step(s, st)) == SQLITE_ROW) {
        if (*found == 0)
            read_key(st, k);
        (*found)++;
    }
    done(st);
    if (*found < 2 && rc != SQLITE_DONE)
        return sql_fail(s, sql_stmt_name[id], rc);
    return CHAT_OK;
}

chat_rc sqlite_key_revoke(sqlite_db *s, const char *id_or_name, int64_t now, store_key *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    store_key k = { 0 };
    int found = 0;
    chat_rc rc = sql_tx_begin(s, ST_BEGIN_WRITE);
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
        sql_bind_text(s, s->st[ST_KEY_REVOKE], 1, k.id);
        sql_bind_i64(s, s->st[ST_KEY_REVOKE], 2, now);
        rc = sql_run(s, ST_KEY_REVOKE);
        if (rc != CHAT_OK)
            goto out;
        k.revoked_at = now;
    }
    rc = sql_tx_commit(s);
out:
    if (rc != CHAT_OK)
        sql_tx_rollback(s);
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

chat_rc sqlite_key_session_count(sqlite_db *s, const char *id, int64_t *out)
{
    *out = 0;
    return sql_fetch_row(s, ST_KEY_SESSION_COUNT, id, read_count_row, out);
}

chat_rc sqlite_key_touch(sqlite_db *s, const char *id, int64_t now)
{
    /* Read first, in autocommit: a reader never waits for the write lock, so the
     * common case (touched within STORE_KEY_TOUCH_MS) costs no write at all. */
    sqlite3_stmt *st = s->st[ST_KEY_LAST_USED];
    sql_bind_text(s, st, 1, id);
    int src = sql_step(s, st);
    bool stale = src == SQLITE_ROW &&
                 (sqlite3_column_type(st, 0) == SQLITE_NULL || sqlite3_column_int64(st, 0) <= now - STORE_KEY_TOUCH_MS);
    done(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        return sql_fail(s, "ST_KEY_LAST_USED", src);
    if (!stale)
        return CHAT_OK;
    /* The WHERE repeats the test: another connection may have touched it since. */
    st = s->st[ST_KEY_TOUCH];
    sql_bind_text(s, st, 1, id);
    sql_bind_i64(s, st, 2, now);
    sql_bind_i64(s, st, 3, now - STORE_KEY_TOUCH_MS);
    return sql_run(s, ST_KEY_TOUCH);
}
