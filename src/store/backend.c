/*
 * backend.c: what the SQLite and PostgreSQL backends share (see backend.h):
 * argument checks, the session cursor format, the migration list and the
 * migration driver.
 */
#include "store/backend.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/assets.h"
#include "core/util.h"
#include "store/blocks.h"

bool store_valid_id(const char *id)
{
    return id && id[0] && strlen(id) <= STORE_ID_MAX;
}

bool store_valid_count(int64_t v)
{
    return v >= -1;
}

bool store_valid_usage(const store_usage *u)
{
    return store_valid_count(u->input_tokens) && store_valid_count(u->output_tokens) &&
           store_valid_count(u->cache_read_tokens) && store_valid_count(u->cache_write_tokens);
}

bool store_valid_scope(const char *scope)
{
    return scope && strlen(scope) <= STORE_ID_MAX;
}

bool store_valid_ttl(int64_t now, int64_t ttl_ms)
{
    return now >= 0 && ttl_ms > 0 && ttl_ms <= INT64_MAX - now;
}

bool store_valid_hash(const char *h)
{
    if (!h)
        return false;
    size_t i = 0;
    for (; h[i]; i++)
        if (i >= STORE_KEY_HASH_LEN || chat_hex_lower((unsigned char)h[i]) < 0)
            return false;
    return i == STORE_KEY_HASH_LEN;
}

bool store_valid_message(const store_message *m)
{
    return m->role && (strcmp(m->role, "user") == 0 || strcmp(m->role, "assistant") == 0) && m->content &&
           store_valid_blocks_text(m->blocks) && m->status &&
           (strcmp(m->status, "complete") == 0 || strcmp(m->status, "incomplete") == 0) && m->seq > 0 &&
           store_valid_count(m->tokens) && store_valid_usage(&m->usage) && m->cost_micros >= 0 && m->created_at >= 0;
}

bool store_valid_blocks_text(const char *blocks)
{
    if (!blocks)
        return true;
    size_t len = strnlen(blocks, STORE_BLOCKS_MAX + 1);
    if (len > STORE_BLOCKS_MAX)
        return false;
    size_t a = 0, b = len;
    while (a < b && strchr(" \t\r\n", blocks[a]))
        a++;
    while (b > a && strchr(" \t\r\n", blocks[b - 1]))
        b--;
    return b - a >= 2 && blocks[a] == '[' && blocks[b - 1] == ']';
}

chat_rc store_op_prepare(store_op *op)
{
    const store_op_in *in = &op->in;
    size_t n;
    if (op->kind == STORE_OP_TURN_COMMIT)
        n = 2;
    else if (op->kind == STORE_OP_SESSION_IMPORT)
        n = in->n_import_messages;
    else
        return CHAT_OK;
    store_op_unprepare(op);
    op->packed = chat_xcalloc(n ? n : 1, sizeof *op->packed);
    op->n_packed = n;
    for (size_t i = 0; i < n; i++) {
        const char *blocks = op->kind == STORE_OP_TURN_COMMIT
                                 ? (i == 0 ? in->turn.user_blocks : in->turn.assistant_blocks)
                                 : in->import_messages[i].blocks;
        if (store_blocks_pack(blocks, &op->packed[i]) != CHAT_OK) {
            store_op_unprepare(op);
            return CHAT_EINVAL;
        }
    }
    return CHAT_OK;
}

void store_op_unprepare(store_op *op)
{
    for (size_t i = 0; i < op->n_packed; i++)
        store_packed_clear(&op->packed[i]);
    free(op->packed);
    op->packed = NULL;
    op->n_packed = 0;
}

static bool valid_role(const char *role)
{
    return role && (strcmp(role, "user") == 0 || strcmp(role, "admin") == 0);
}

static bool valid_turn(const store_turn *t)
{
    return store_valid_id(t->session_id) && store_valid_id(t->lock_token) && (!t->owner || store_valid_id(t->owner)) &&
           t->model && t->model[0] && t->user_content && t->assistant_content &&
           store_valid_blocks_text(t->user_blocks) && store_valid_blocks_text(t->assistant_blocks) && t->status &&
           (strcmp(t->status, "complete") == 0 || strcmp(t->status, "incomplete") == 0) &&
           store_valid_count(t->user_tokens) && store_valid_usage(&t->usage) && t->cost_micros >= 0 && t->now >= 0 &&
           (!t->idem_key || (store_valid_id(t->idem_key) && store_valid_scope(t->idem_scope) &&
                             store_valid_ttl(t->now, t->idem_ttl_ms)));
}

static bool valid_session_import(const store_op_in *in)
{
    const store_session *ss = in->import_session;
    size_t n = in->n_import_messages;
    if (!ss || !store_valid_id(ss->id) || (ss->owner && !store_valid_id(ss->owner)) ||
        (n > 0 && !in->import_messages) || ss->message_count != (int64_t)n || ss->turn_count < 0 ||
        ss->cost_micros < 0 || ss->created_at < 0 || ss->updated_at < 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!store_valid_message(&in->import_messages[i]))
            return false;
    return true;
}

static bool valid_key_import(const store_key *k)
{
    return k && store_valid_id(k->id) && store_valid_id(k->name) && store_valid_hash(k->hash) && valid_role(k->role) &&
           (!k->rate_limit || store_valid_id(k->rate_limit)) && k->created_at > 0 && k->revoked_at >= 0 &&
           k->last_used_at >= 0 && k->turn_count >= 0 && k->cost_micros >= 0;
}

bool store_op_valid(const store_op *op)
{
    const store_op_in *in = &op->in;
    switch (op->kind) {
    case STORE_OP_PING:
    case STORE_OP_STATS_GET:
    case STORE_OP_KEYS_LIST: return true;
    case STORE_OP_LOCK_ACQUIRE:
    case STORE_OP_LOCK_REFRESH:
        return store_valid_id(in->session_id) && store_valid_id(in->token) && store_valid_ttl(in->now, in->ttl_ms);
    case STORE_OP_LOCK_RELEASE: return store_valid_id(in->session_id) && store_valid_id(in->token);
    case STORE_OP_TURN_COMMIT: return valid_turn(&in->turn);
    case STORE_OP_SESSION_GET:
    case STORE_OP_SESSION_DELETE:
    case STORE_OP_MESSAGES_LIST: return store_valid_id(in->session_id);
    case STORE_OP_SESSION_RESET: return store_valid_id(in->session_id) && in->now >= 0;
    case STORE_OP_SESSIONS_LIST:
    case STORE_OP_SESSIONS_LIST_OLDEST: {
        int64_t created;
        char id[STORE_ID_MAX + 1];
        return in->limit >= 1 && in->limit <= 1000 && (!in->owner || store_valid_id(in->owner)) &&
               (!in->cursor || store_cursor_parse(in->cursor, &created, id));
    }
    case STORE_OP_SESSIONS_EXPIRE:
    case STORE_OP_IDEM_EXPIRE: return in->limit >= 1 && in->now >= 0;
    case STORE_OP_IDEM_BEGIN:
        return store_valid_scope(in->scope) && store_valid_id(in->idem_key) && store_valid_id(in->body_hash) &&
               store_valid_id(in->token) && (!in->session_id || store_valid_id(in->session_id)) &&
               store_valid_ttl(in->now, in->ttl_ms);
    case STORE_OP_IDEM_REFRESH:
        return store_valid_scope(in->scope) && store_valid_id(in->idem_key) && store_valid_id(in->token) &&
               store_valid_ttl(in->now, in->ttl_ms);
    case STORE_OP_IDEM_FINISH:
        return store_valid_scope(in->scope) && store_valid_id(in->idem_key) && store_valid_id(in->token) &&
               in->status >= 100 && in->status <= 599 && in->response && store_valid_ttl(in->now, in->ttl_ms);
    case STORE_OP_IDEM_ABORT:
        return store_valid_scope(in->scope) && store_valid_id(in->idem_key) && store_valid_id(in->token);
    case STORE_OP_KEY_CREATE: {
        const store_key_new *k = &in->key_new;
        return store_valid_id(k->id) && store_valid_id(k->name) && store_valid_hash(k->hash) && valid_role(k->role) &&
               (!k->rate_limit || store_valid_id(k->rate_limit)) && k->now > 0;
    }
    case STORE_OP_KEY_FIND_BY_HASH: return store_valid_hash(in->hash);
    case STORE_OP_KEY_REVOKE:
    case STORE_OP_KEY_TOUCH: return store_valid_id(in->id) && in->now > 0;
    case STORE_OP_KEY_SESSION_COUNT: return store_valid_id(in->id);
    case STORE_OP_SESSION_IMPORT: return valid_session_import(in);
    case STORE_OP_KEY_IMPORT: return valid_key_import(in->import_key);
    case STORE_OP_KIND_COUNT: break;
    }
    return false;
}

int64_t store_known(int64_t v)
{
    return v < 0 ? 0 : v;
}

char *store_cursor_make(int64_t created_at, const char *id)
{
    static const char hex[] = "0123456789abcdef";
    size_t len = strlen(id);
    char *h = chat_xmalloc(2 * len + 1);
    for (size_t i = 0; i < len; i++) {
        h[2 * i] = hex[(unsigned char)id[i] >> 4];
        h[2 * i + 1] = hex[(unsigned char)id[i] & 15];
    }
    h[2 * len] = '\0';
    char *c = chat_xasprintf("%" PRId64 ":%s", created_at, h);
    free(h);
    return c;
}

bool store_cursor_parse(const char *c, int64_t *created_at, char *idbuf)
{
    const char *p = c;
    int64_t v = 0;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] != ':'))
        return false; /* no sign, no leading zeros */
    for (; *p >= '0' && *p <= '9'; p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (*p++ != ':')
        return false;
    size_t len = strlen(p);
    if (len == 0 || len % 2 != 0 || len / 2 > STORE_ID_MAX)
        return false;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = chat_hex_lower((unsigned char)p[2 * i]), lo = chat_hex_lower((unsigned char)p[2 * i + 1]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            return false;
        idbuf[i] = (char)(hi << 4 | lo);
    }
    idbuf[len / 2] = '\0';
    *created_at = v;
    return true;
}

static int migration_cmp(const void *a, const void *b)
{
    const store_migration *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

chat_rc store_migrations_collect(const char *prefix, store_migration **out, size_t *n, char *err, size_t errlen)
{
    static const char suffix[] = ".sql";
    size_t pre = strlen(prefix), suf = strlen(suffix);
    store_migration *m = chat_xcalloc(chat_assets_count ? chat_assets_count : 1, sizeof *m);
    size_t count = 0;
    const char *why = NULL;
    for (size_t i = 0; i < chat_assets_count; i++) {
        const char *name = chat_assets[i].name;
        size_t len = strlen(name);
        /* Other files under the prefix (not ending in .sql) are ignored. */
        if (strncmp(name, prefix, pre) != 0 || len < pre + suf || strcmp(name + len - suf, suffix) != 0)
            continue;
        const char *p = name + pre;
        long v = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 9) {
            v = v * 10 + (*p - '0');
            p++;
            digits++;
        }
        /* NNN_x.sql: digits, '_', at least one name character, ".sql". */
        if (digits == 0 || v == 0 || *p != '_' || (size_t)(p + 1 - name) >= len - suf) {
            if (err && errlen > 0)
                snprintf(err, errlen, "bad migration name %s (want %sNNN_name.sql)", name, prefix);
            why = "bad name";
            break;
        }
        m[count].version = (int)v;
        m[count].asset = &chat_assets[i];
        count++;
    }
    if (!why) {
        qsort(m, count, sizeof *m, migration_cmp);
        for (size_t i = 1; i < count && !why; i++) {
            if (m[i].version == m[i - 1].version) {
                if (err && errlen > 0)
                    snprintf(err, errlen, "migrations %s and %s have the same version", m[i - 1].asset->name,
                             m[i].asset->name);
                why = "duplicate";
            }
        }
    }
    if (!why && count == 0) {
        if (err && errlen > 0)
            snprintf(err, errlen, "no %s*.sql schema migrations embedded in this binary", prefix);
        why = "none";
    }
    if (why) {
        free(m);
        return CHAT_EIO;
    }
    *out = m;
    *n = count;
    return CHAT_OK;
}

int64_t store_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

chat_rc store_migrate(const store_migrator *mg, void *conn, const char *prefix, int *version, char *err, size_t errlen)
{
    store_migration *m = NULL;
    size_t n = 0;
    bool in_tx = false;
    chat_rc rc = store_migrations_collect(prefix, &m, &n, err, errlen);
    if (rc != CHAT_OK)
        return rc;
    rc = mg->begin(conn, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    in_tx = true;
    /* Bootstrapped here rather than in a migration: it must exist before we can
     * ask which migrations were applied. */
    rc = mg->exec(conn,
                  "CREATE TABLE IF NOT EXISTS schema_version ("
                  " version BIGINT NOT NULL PRIMARY KEY,"
                  " name TEXT NOT NULL,"
                  " applied_at BIGINT NOT NULL)",
                  "create schema_version", err, errlen);
    if (rc != CHAT_OK)
        goto out;
    int64_t current = 0;
    rc = mg->current(conn, &current, err, errlen);
    if (rc != CHAT_OK)
        goto out;
    if (current > m[n - 1].version) {
        /* An older binary must not write into a schema it does not know. */
        chat_set_err(err, errlen, "database schema version %" PRId64 " is newer than this binary's %d", current,
                     m[n - 1].version);
        rc = CHAT_EIO;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].version <= current)
            continue;
        rc = mg->exec(conn, (const char *)m[i].asset->data, m[i].asset->name, err, errlen);
        if (rc != CHAT_OK)
            goto out;
        rc = mg->record(conn, m[i].version, m[i].asset->name + strlen(prefix), store_wall_ms(), err, errlen);
        if (rc != CHAT_OK)
            goto out;
    }
    in_tx = false; /* COMMIT ends the transaction whatever it answers */
    rc = mg->commit(conn, err, errlen);
    if (rc == CHAT_OK)
        *version = m[n - 1].version;
out:
    if (in_tx)
        mg->rollback(conn);
    free(m);
    return rc;
}
