/*
 * transfer.c: `chatd export` / `chatd import` (the format is in transfer.h).
 *
 * Export pages through the sessions with the store's cursor and writes one
 * line per session, its messages inline; memory is one page of sessions plus
 * the largest session. Import reads one line at a time into a buffer that
 * grows up to a fixed maximum, parses it with jansson, checks every field it
 * needs (a wrong type is an error naming the line and the field, never a
 * silent zero), and hands the result to store_key_import /
 * store_session_import, which insert it in one transaction each. An existing
 * id comes back as CHAT_ECONFLICT and is counted as skipped: that is what
 * makes a second run of the same import harmless.
 */
#define _GNU_SOURCE
#include "store/transfer.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "core/util.h"
#include "store/blocks.h"

/* Sessions per store_sessions_list call. */
#define EXPORT_PAGE 200
/* How many times a session that changes while it is read is read again. */
#define EXPORT_RETRIES 5

/* ---- export ---------------------------------------------------------------- */

/* A JSON string for s, or null for NULL. A string that is not valid UTF-8
 * cannot be written as JSON: *bad is set (the caller fails the export rather
 * than write a null in its place). */
static json_t *jstr(const char *s, bool *bad)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (!j) {
        *bad = true;
        return json_null();
    }
    return j;
}

static json_t *usage_json(const store_usage *u)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "input_tokens", (json_int_t)u->input_tokens, "output_tokens",
                     (json_int_t)u->output_tokens, "cache_read_tokens", (json_int_t)u->cache_read_tokens,
                     "cache_write_tokens", (json_int_t)u->cache_write_tokens);
}

/* json_object_set_new for ints, to keep the builders below readable. */
static void set_int(json_t *obj, const char *name, int64_t v)
{
    json_object_set_new(obj, name, json_integer((json_int_t)v));
}

static json_t *key_json(const store_key *k, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("key"));
    json_object_set_new(o, "id", jstr(k->id, bad));
    json_object_set_new(o, "name", jstr(k->name, bad));
    json_object_set_new(o, "hash", jstr(k->hash, bad));
    json_object_set_new(o, "role", jstr(k->role, bad));
    json_object_set_new(o, "rate_limit", jstr(k->rate_limit, bad));
    set_int(o, "created_at", k->created_at);
    set_int(o, "revoked_at", k->revoked_at);
    set_int(o, "last_used_at", k->last_used_at);
    set_int(o, "turn_count", k->turn_count);
    json_object_set_new(o, "usage", usage_json(&k->usage));
    set_int(o, "cost_micros", k->cost_micros);
    return o;
}

static json_t *session_json(const store_session *ss, const store_message *msgs, size_t n, bool *bad)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("session"));
    json_object_set_new(o, "id", jstr(ss->id, bad));
    json_object_set_new(o, "owner", jstr(ss->owner, bad));
    json_object_set_new(o, "system_prompt", jstr(ss->system_prompt, bad));
    json_object_set_new(o, "model", jstr(ss->model, bad));
    set_int(o, "created_at", ss->created_at);
    set_int(o, "updated_at", ss->updated_at);
    set_int(o, "turn_count", ss->turn_count);
    set_int(o, "message_count", ss->message_count);
    json_object_set_new(o, "usage", usage_json(&ss->usage));
    set_int(o, "cost_micros", ss->cost_micros);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const store_message *m = &msgs[i];
        json_t *jm = json_object();
        set_int(jm, "seq", m->seq);
        json_object_set_new(jm, "role", jstr(m->role, bad));
        json_object_set_new(jm, "content", jstr(m->content, bad));
        json_object_set_new(jm, "status", jstr(m->status, bad));
        json_object_set_new(jm, "model", jstr(m->model, bad));
        json_object_set_new(jm, "stop_reason", jstr(m->stop_reason, bad));
        set_int(jm, "tokens", m->tokens);
        json_object_set_new(jm, "usage", usage_json(&m->usage));
        set_int(jm, "cost_micros", m->cost_micros);
        set_int(jm, "created_at", m->created_at);
        if (m->blocks) {
            /* As a JSON array (images inline), not as a string holding one. */
            json_t *blocks = chat_json_loads(m->blocks, 0, NULL);
            if (!blocks)
                *bad = true;
            else
                json_object_set_new(jm, "blocks", blocks);
        }
        json_array_append_new(arr, jm);
    }
    json_object_set_new(o, "messages", arr);
    return o;
}

/* Writes obj as one line and releases it. */
static chat_rc write_line(FILE *out, json_t *obj)
{
    int r = json_dumpf(obj, out, JSON_COMPACT);
    json_decref(obj);
    if (r != 0 || fputc('\n', out) == EOF)
        return CHAT_EIO;
    return CHAT_OK;
}

/*
 * Writes one session. listed is its row from the listing; its messages are read
 * after it, so a turn committed in between makes the two disagree: the session
 * is then read again (row first, then messages) until they agree. A session
 * deleted meanwhile is left out.
 */
static chat_rc export_session(store *s, const store_session *listed, FILE *out, transfer_counts *c, char *err,
                              size_t errlen)
{
    chat_rc rc = CHAT_EIO;
    store_session fresh = { 0 };
    store_message *msgs = NULL;
    size_t n = 0;
    const store_session *ss = listed;
    for (int attempt = 0;; attempt++) {
        chat_rc r = store_messages_list(s, ss->id, 0, 0, &msgs, &n);
        if (r == CHAT_ENOTFOUND) {
            rc = CHAT_OK;
            goto out;
        }
        if (r != CHAT_OK) {
            chat_set_err(err, errlen, "cannot read the messages of session \"%s\" (%s)", ss->id, chat_rc_str(r));
            goto out;
        }
        if ((int64_t)n == ss->message_count)
            break;
        store_messages_free(msgs, n);
        msgs = NULL;
        n = 0;
        if (attempt == EXPORT_RETRIES) {
            chat_set_err(err, errlen, "session \"%s\" kept changing while it was read: stop the servers and retry",
                         listed->id);
            goto out;
        }
        store_session_clear(&fresh);
        r = store_session_get(s, listed->id, &fresh);
        if (r == CHAT_ENOTFOUND) {
            rc = CHAT_OK;
            goto out;
        }
        if (r != CHAT_OK) {
            chat_set_err(err, errlen, "cannot read session \"%s\" (%s)", listed->id, chat_rc_str(r));
            goto out;
        }
        ss = &fresh;
    }
    bool bad = false;
    json_t *line = session_json(ss, msgs, n, &bad);
    if (bad) {
        json_decref(line);
        chat_set_err(err, errlen, "session \"%s\" holds text that is not valid UTF-8 (or blocks that are not JSON)",
                     ss->id);
        rc = CHAT_EINVAL;
        goto out;
    }
    if (write_line(out, line) != CHAT_OK) {
        chat_set_err(err, errlen, "write error: %s", strerror(errno));
        goto out;
    }
    c->sessions++;
    c->messages += (int64_t)n;
    rc = CHAT_OK;
out:
    store_messages_free(msgs, n);
    store_session_clear(&fresh);
    return rc;
}

chat_rc transfer_export(store *s, FILE *out, transfer_counts *counts, char *err, size_t errlen)
{
    transfer_counts local;
    transfer_counts *c = counts ? counts : &local;
    memset(c, 0, sizeof *c);
    chat_rc rc = CHAT_EIO;
    store_key *keys = NULL;
    size_t nkeys = 0;
    store_session *page = NULL;
    size_t npage = 0;
    char *cursor = NULL;

    json_t *header = json_pack("{s:s,s:i,s:I,s:i}", "format", TRANSFER_FORMAT, "version", TRANSFER_VERSION,
                               "exported_at", (json_int_t)chat_now_ms(), "schema_version", store_schema_version(s));
    if (write_line(out, header) != CHAT_OK) {
        chat_set_err(err, errlen, "write error: %s", strerror(errno));
        goto out;
    }

    chat_rc r = store_keys_list(s, &keys, &nkeys);
    if (r != CHAT_OK) {
        chat_set_err(err, errlen, "cannot read the API keys (%s)", chat_rc_str(r));
        goto out;
    }
    for (size_t i = 0; i < nkeys; i++) {
        bool bad = false;
        json_t *line = key_json(&keys[i], &bad);
        if (bad) {
            json_decref(line);
            chat_set_err(err, errlen, "key \"%s\" holds text that is not valid UTF-8", keys[i].id);
            rc = CHAT_EINVAL;
            goto out;
        }
        if (write_line(out, line) != CHAT_OK) {
            chat_set_err(err, errlen, "write error: %s", strerror(errno));
            goto out;
        }
        c->keys++;
    }

    for (;;) {
        char *next = NULL;
        r = store_sessions_list(s, NULL, cursor, EXPORT_PAGE, &page, &npage, &next);
        free(cursor);
        cursor = next;
        if (r != CHAT_OK) {
            chat_set_err(err, errlen, "cannot list the sessions (%s)", chat_rc_str(r));
            goto out;
        }
        for (size_t i = 0; i < npage; i++) {
            chat_rc e = export_session(s, &page[i], out, c, err, errlen);
            if (e != CHAT_OK) {
                rc = e;
                goto out;
            }
        }
        store_sessions_free(page, npage);
        page = NULL;
        npage = 0;
        if (!cursor)
            break;
    }

    json_t *end = json_pack("{s:s,s:I,s:I,s:I}", "type", "end", "keys", (json_int_t)c->keys, "sessions",
                            (json_int_t)c->sessions, "messages", (json_int_t)c->messages);
    if (write_line(out, end) != CHAT_OK || fflush(out) != 0) {
        chat_set_err(err, errlen, "write error: %s", strerror(errno));
        goto out;
    }
    rc = CHAT_OK;
out:
    store_keys_free(keys, nkeys);
    store_sessions_free(page, npage);
    free(cursor);
    return rc;
}

/* ---- import ---------------------------------------------------------------- */

typedef struct importer {
    store *s;
    transfer_counts *c;
    size_t line; /* number of the line being handled, from 1 */
    char *err;
    size_t errlen;
    bool header_seen;
    bool end_seen;
    bool sessions_seen; /* key lines must come before the first session line */
    int64_t file_keys;  /* lines of each kind read, for the end line's check */
    int64_t file_sessions;
    int64_t file_messages;
} importer;

static chat_rc fail(importer *im, chat_rc rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Writes "line N: <reason>" into the error buffer; returns rc. */
static chat_rc fail(importer *im, chat_rc rc, const char *fmt, ...)
{
    if (!im->err || im->errlen == 0)
        return rc;
    int k = snprintf(im->err, im->errlen, "line %zu: ", im->line);
    if (k < 0 || (size_t)k >= im->errlen)
        return rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->err + k, im->errlen - (size_t)k, fmt, ap);
    va_end(ap);
    return rc;
}

/* Field readers. what names the object in messages ("key \"k1\""). They
 * return false after writing the error. */
static bool get_int(importer *im, json_t *obj, const char *what, const char *name, int64_t *out)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_integer(v)) {
        (void)fail(im, CHAT_EINVAL, "%s: \"%s\" must be an integer", what, name);
        return false;
    }
    *out = (int64_t)json_integer_value(v);
    return true;
}

/* Strings point into obj (valid while it lives); nullable allows null. */
static bool get_str(importer *im, json_t *obj, const char *what, const char *name, bool nullable, char **out)
{
    json_t *v = json_object_get(obj, name);
    if (nullable && (v == NULL || json_is_null(v))) {
        *out = NULL;
        return true;
    }
    if (!json_is_string(v)) {
        (void)fail(im, CHAT_EINVAL, "%s: \"%s\" must be a string%s", what, name, nullable ? " or null" : "");
        return false;
    }
    /* The store treats text as C strings: a NUL inside would cut it silently. */
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        (void)fail(im, CHAT_EINVAL, "%s: \"%s\" contains a NUL character", what, name);
        return false;
    }
    *out = (char *)json_string_value(v);
    return true;
}

/* An id this chatd can hold whole: an API key id or a session owner, 1..STORE_ID_MAX
 * bytes (every limit, idempotency record and session of a key is keyed by its
 * id, so an id is never cut). NULL passes (a nullable field that is null). */
static bool check_key_id(importer *im, const char *what, const char *name, const char *id)
{
    if (id && (!*id || strlen(id) > STORE_ID_MAX)) {
        (void)fail(im, CHAT_EINVAL, "%s: \"%s\" is %zu bytes: an API key id is 1 to %d bytes", what, name, strlen(id),
                   STORE_ID_MAX);
        return false;
    }
    return true;
}

/* A session id the API can address: chat_valid_id's rule (1..CHAT_ID_MAX
 * characters of [A-Za-z0-9._:-]), which every session made through the API
 * follows. Anything else could be listed but never read, continued or deleted. */
static bool check_session_id(importer *im, const char *what, const char *id)
{
    if (!chat_valid_id(id)) {
        (void)fail(im, CHAT_EINVAL,
                   "%s: \"id\" (%zu bytes) is not a session id chatd can serve: 1 to %d characters "
                   "of letters, digits and . _ : -",
                   what, strlen(id), CHAT_ID_MAX);
        return false;
    }
    return true;
}

static bool get_usage(importer *im, json_t *obj, const char *what, store_usage *u)
{
    json_t *v = json_object_get(obj, "usage");
    if (!json_is_object(v)) {
        (void)fail(im, CHAT_EINVAL, "%s: \"usage\" must be an object", what);
        return false;
    }
    char w[STORE_ID_MAX + 64];
    snprintf(w, sizeof w, "%s usage", what);
    return get_int(im, v, w, "input_tokens", &u->input_tokens) &&
           get_int(im, v, w, "output_tokens", &u->output_tokens) &&
           get_int(im, v, w, "cache_read_tokens", &u->cache_read_tokens) &&
           get_int(im, v, w, "cache_write_tokens", &u->cache_write_tokens);
}

/*
 * A message's optional "blocks": absent or null for a plain-text message (every
 * export written before blocks existed), else the canonical content array,
 * images inline, which *out receives as JSON text (heap) for the store.
 */
static bool get_blocks(importer *im, json_t *obj, const char *what, char **out)
{
    *out = NULL;
    json_t *v = json_object_get(obj, "blocks");
    if (!v || json_is_null(v))
        return true;
    if (!json_is_array(v)) {
        (void)fail(im, CHAT_EINVAL, "%s: \"blocks\" must be an array or null", what);
        return false;
    }
    char *text = chat_json_dumps(v, JSON_COMPACT, NULL);
    if (!text)
        chat_fatal("import: out of memory");
    if (!store_blocks_valid(text)) {
        free(text);
        (void)fail(im, CHAT_EINVAL,
                   "%s: \"blocks\" must be content blocks: objects with a string \"type\", at most %zu bytes, "
                   "images as base64 or url sources",
                   what, (size_t)STORE_BLOCKS_MAX);
        return false;
    }
    *out = chat_xstrdup(text);
    free(text);
    return true;
}

/* The id of obj for error messages, shortened: it may be anything. */
static void describe(char *out, size_t outlen, const char *kind, json_t *obj)
{
    json_t *id = json_object_get(obj, "id");
    if (json_is_string(id))
        snprintf(out, outlen, "%s \"%.100s\"", kind, json_string_value(id));
    else
        snprintf(out, outlen, "%s", kind);
}

static chat_rc import_header(importer *im, json_t *obj)
{
    json_t *fmt = json_object_get(obj, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), TRANSFER_FORMAT) != 0)
        return fail(im, CHAT_EINVAL,
                    "not a chatd export (the first line must be the header "
                    "{\"format\":\"" TRANSFER_FORMAT "\",...})");
    json_t *ver = json_object_get(obj, "version");
    if (!json_is_integer(ver) || json_integer_value(ver) < 1)
        return fail(im, CHAT_EINVAL, "header: \"version\" must be a positive integer");
    if (json_integer_value(ver) != TRANSFER_VERSION)
        return fail(im, CHAT_EINVAL,
                    "export format version %lld is newer than this chatd reads (%d): import "
                    "with the chatd that exported it",
                    (long long)json_integer_value(ver), TRANSFER_VERSION);
    im->header_seen = true;
    return CHAT_OK;
}

static chat_rc import_key(importer *im, json_t *obj)
{
    char what[160];
    describe(what, sizeof what, "key", obj);
    if (im->sessions_seen)
        return fail(im, CHAT_EINVAL, "%s: key lines must come before the session lines", what);
    im->file_keys++;
    store_key k = { 0 };
    if (!get_str(im, obj, what, "id", false, &k.id) || !get_str(im, obj, what, "name", false, &k.name) ||
        !get_str(im, obj, what, "hash", false, &k.hash) || !get_str(im, obj, what, "role", false, &k.role) ||
        !get_str(im, obj, what, "rate_limit", true, &k.rate_limit) ||
        !get_int(im, obj, what, "created_at", &k.created_at) || !get_int(im, obj, what, "revoked_at", &k.revoked_at) ||
        !get_int(im, obj, what, "last_used_at", &k.last_used_at) ||
        !get_int(im, obj, what, "turn_count", &k.turn_count) || !get_usage(im, obj, what, &k.usage) ||
        !get_int(im, obj, what, "cost_micros", &k.cost_micros) || !check_key_id(im, what, "id", k.id))
        return CHAT_EINVAL;
    chat_rc rc = store_key_import(im->s, &k);
    if (rc == CHAT_OK) {
        im->c->keys++;
        return CHAT_OK;
    }
    if (rc == CHAT_ECONFLICT) {
        /* Its id exists (skip: a re-run), or only its hash does: the same
         * secret under another id, which a copy cannot settle by itself. */
        int64_t ignored;
        chat_rc e = store_key_session_count(im->s, k.id, &ignored);
        if (e == CHAT_OK) {
            im->c->keys_skipped++;
            return CHAT_OK;
        }
        if (e == CHAT_ENOTFOUND)
            return fail(im, CHAT_EINVAL, "%s: another key of the database has the same hash (secret)", what);
        rc = e;
    }
    if (rc == CHAT_EINVAL)
        return fail(im, CHAT_EINVAL,
                    "%s: refused by the store (id and name 1..%d bytes, hash %d lowercase hex "
                    "digits, role user or admin, times >= 0)",
                    what, STORE_ID_MAX, STORE_KEY_HASH_LEN);
    return fail(im, CHAT_EIO, "%s: database error (%s; see the log above)", what, chat_rc_str(rc));
}

static chat_rc import_session(importer *im, json_t *obj)
{
    char what[160];
    describe(what, sizeof what, "session", obj);
    im->sessions_seen = true;
    im->file_sessions++;
    store_session ss = { 0 };
    if (!get_str(im, obj, what, "id", false, &ss.id) || !get_str(im, obj, what, "owner", true, &ss.owner) ||
        !get_str(im, obj, what, "system_prompt", true, &ss.system_prompt) ||
        !get_str(im, obj, what, "model", true, &ss.model) || !get_int(im, obj, what, "created_at", &ss.created_at) ||
        !get_int(im, obj, what, "updated_at", &ss.updated_at) ||
        !get_int(im, obj, what, "turn_count", &ss.turn_count) ||
        !get_int(im, obj, what, "message_count", &ss.message_count) || !get_usage(im, obj, what, &ss.usage) ||
        !get_int(im, obj, what, "cost_micros", &ss.cost_micros) || !check_session_id(im, what, ss.id) ||
        !check_key_id(im, what, "owner", ss.owner))
        return CHAT_EINVAL;
    json_t *arr = json_object_get(obj, "messages");
    if (!json_is_array(arr))
        return fail(im, CHAT_EINVAL, "%s: \"messages\" must be an array", what);
    size_t n = json_array_size(arr);
    im->file_messages += (int64_t)n;
    if ((int64_t)n != ss.message_count)
        return fail(im, CHAT_EINVAL, "%s: message_count is %lld but %zu messages follow", what,
                    (long long)ss.message_count, n);
    chat_rc rc = CHAT_EINVAL;
    store_message *msgs = n ? chat_xcalloc(n, sizeof *msgs) : NULL;
    char **blocks = n ? chat_xcalloc(n, sizeof *blocks) : NULL; /* the texts of msgs[i].blocks, owned */
    for (size_t i = 0; i < n; i++) {
        json_t *jm = json_array_get(arr, i);
        store_message *m = &msgs[i];
        char mw[200];
        snprintf(mw, sizeof mw, "%s message %zu", what, i + 1);
        if (!json_is_object(jm)) {
            rc = fail(im, CHAT_EINVAL, "%s: must be an object", mw);
            goto out;
        }
        if (!get_int(im, jm, mw, "seq", &m->seq) || !get_str(im, jm, mw, "role", false, &m->role) ||
            !get_str(im, jm, mw, "content", false, &m->content) || !get_str(im, jm, mw, "status", false, &m->status) ||
            !get_str(im, jm, mw, "model", true, &m->model) ||
            !get_str(im, jm, mw, "stop_reason", true, &m->stop_reason) || !get_int(im, jm, mw, "tokens", &m->tokens) ||
            !get_usage(im, jm, mw, &m->usage) || !get_int(im, jm, mw, "cost_micros", &m->cost_micros) ||
            !get_int(im, jm, mw, "created_at", &m->created_at) || !get_blocks(im, jm, mw, &blocks[i]))
            goto out;
        m->blocks = blocks[i];
        if (i > 0 && m->seq <= msgs[i - 1].seq) { /* a repeat would break the store's UNIQUE (session, seq) */
            rc = fail(im, CHAT_EINVAL, "%s: seq %lld does not follow %lld (messages are listed in increasing seq)", mw,
                      (long long)m->seq, (long long)msgs[i - 1].seq);
            goto out;
        }
    }
    rc = store_session_import(im->s, &ss, msgs, n);
    if (rc == CHAT_OK) {
        im->c->sessions++;
        im->c->messages += (int64_t)n;
    } else if (rc == CHAT_ECONFLICT) {
        im->c->sessions_skipped++;
        rc = CHAT_OK;
    } else if (rc == CHAT_EINVAL) {
        rc = fail(im, CHAT_EINVAL,
                  "%s: refused by the store (id 1..%d bytes; messages numbered 1, 2, ... with "
                  "role user or assistant and status complete or incomplete)",
                  what, STORE_ID_MAX);
    } else {
        rc = fail(im, CHAT_EIO, "%s: database error (%s; see the log above)", what, chat_rc_str(rc));
    }
out:
    for (size_t i = 0; i < n; i++)
        free(blocks[i]);
    free(blocks);
    free(msgs);
    return rc;
}

static chat_rc import_end(importer *im, json_t *obj)
{
    int64_t keys, sessions, messages;
    if (!get_int(im, obj, "end", "keys", &keys) || !get_int(im, obj, "end", "sessions", &sessions) ||
        !get_int(im, obj, "end", "messages", &messages))
        return CHAT_EINVAL;
    if (keys != im->file_keys || sessions != im->file_sessions || messages != im->file_messages)
        return fail(im, CHAT_EINVAL,
                    "the end line counts %lld keys, %lld sessions, %lld messages but the file "
                    "holds %lld, %lld, %lld: the file was edited or damaged",
                    (long long)keys, (long long)sessions, (long long)messages, (long long)im->file_keys,
                    (long long)im->file_sessions, (long long)im->file_messages);
    im->end_seen = true;
    return CHAT_OK;
}

/* Handles one non-blank line. */
static chat_rc import_line(importer *im, const char *text, size_t len)
{
    /* jansson stops reading at a NUL byte and would accept what came before it. */
    if (memchr(text, '\0', len))
        return fail(im, CHAT_EINVAL, "contains a NUL byte (not JSON text)");
    json_error_t je;
    json_t *obj = chat_json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!obj)
        return fail(im, CHAT_EINVAL, "not valid JSON (%s, at column %d)", je.text, je.column);
    chat_rc rc;
    if (!json_is_object(obj)) {
        rc = fail(im, CHAT_EINVAL, "not a JSON object");
    } else if (!im->header_seen) {
        rc = import_header(im, obj);
    } else if (im->end_seen) {
        rc = fail(im, CHAT_EINVAL, "data after the end line");
    } else {
        json_t *type = json_object_get(obj, "type");
        const char *t = json_is_string(type) ? json_string_value(type) : "";
        if (strcmp(t, "key") == 0)
            rc = import_key(im, obj);
        else if (strcmp(t, "session") == 0)
            rc = import_session(im, obj);
        else if (strcmp(t, "end") == 0)
            rc = import_end(im, obj);
        else
            rc = fail(im, CHAT_EINVAL, "unknown line type \"%.40s\" (key, session or end expected)", t);
    }
    json_decref(obj);
    return rc;
}

/*
 * Reads one line into `line` (bounded by its maximum), without its "\n".
 * Returns 1, 0 at the end of the input, -1 when the line is longer than the
 * buffer's maximum, -2 on a read error.
 */
static int read_line(FILE *in, chat_buf *line)
{
    chat_buf_clear(line);
    bool any = false;
    int ch;
    while ((ch = getc_unlocked(in)) != EOF) {
        any = true;
        if (ch == '\n')
            break;
        char c = (char)ch;
        if (chat_buf_append(line, &c, 1) != CHAT_OK)
            return -1;
    }
    if (ch == EOF && ferror(in))
        return -2;
    return any ? 1 : 0;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

chat_rc transfer_import(store *s, FILE *in, size_t max_line, transfer_counts *counts, char *err, size_t errlen)
{
    transfer_counts local;
    importer im = { .s = s, .c = counts ? counts : &local, .err = err, .errlen = errlen };
    memset(im.c, 0, sizeof *im.c);
    if (max_line == 0)
        max_line = TRANSFER_MAX_LINE_DEFAULT;
    chat_buf line;
    chat_buf_init(&line, max_line);
    chat_rc rc = CHAT_OK;
    int r;
    while ((r = read_line(in, &line)) == 1) {
        im.line++;
        if (line.len == 0)
            continue; /* a blank line */
        size_t len = line.len;
        char *text = line.data;
        if (im.line == 1 && len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) { /* a BOM added by an editor */
            text += 3;
            len -= 3;
        }
        if (len > 0 && text[len - 1] == '\r')
            text[--len] = '\0';
        if (blank(text, len))
            continue;
        rc = import_line(&im, text, len);
        if (rc != CHAT_OK)
            goto out;
    }
    if (r == -1) {
        im.line++;
        rc = fail(&im, CHAT_ETOOBIG, "longer than %zu bytes (raise the limit with --max-line-bytes)", max_line);
    } else if (r == -2) {
        chat_set_err(err, errlen, "read error after line %zu: %s", im.line, strerror(errno));
        rc = CHAT_EIO;
    } else if (!im.header_seen) {
        chat_set_err(err, errlen, "the input is empty: not a chatd export");
        rc = CHAT_EINVAL;
    } else if (!im.end_seen) {
        chat_set_err(err, errlen, "the input ends after line %zu without the end line: the export was cut short",
                     im.line);
        rc = CHAT_EINVAL;
    }
out:
    chat_buf_free(&line);
    return rc;
}
