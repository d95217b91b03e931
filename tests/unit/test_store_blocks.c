/*
 * test_store_blocks.c: rich message content in the store (schema 004 on
 * SQLite, 003 on PostgreSQL): blocks committed with a turn, an import or an
 * idempotent commit come back as committed; each image is kept once per
 * content hash and removed with its last reference (delete, reset, retention
 * sweep); export and import carry blocks; an older database migrates; bad
 * blocks are refused.
 *
 * As in test_store.c: SQLite by default, PostgreSQL when CHATD_TEST_PG_URL is
 * set (store_testdb.h); a fresh temporary directory per test; a raw
 * connection checks what is stored (images out of the message rows, one blob
 * row per image, no blob left behind).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <ftw.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/assets.h"
#include "store/blocks.h"
#include "store/store.h"
#include "store/transfer.h"
#include "store_testdb.h"

static int setup(void **state)
{
    return tdb_setup(state, "chatd_test_store_blocks_", "/chat.db", true);
}

static int teardown(void **state)
{
    return tdb_teardown(state);
}

#define open_url tdb_open_url

/* Two small images (a 1x1 PNG and a 1x1 GIF), canonical base64. */
#define PNG "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
#define GIF "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"

#define IMAGE(mt, data) \
    "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"" mt "\",\"data\":\"" data "\"}}"

/* A user message: text, an image, and a tool result that holds text and another image. */
static const char USER_BLOCKS[] = "[{\"type\":\"text\",\"text\":\"what is this?\"}," IMAGE(
    "image/png", PNG) ","
                      "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":[{\"type\":\"text\",\"text\":"
                      "\"42\"}," IMAGE("image/gif",
                                       GIF) "],\"is_error\":false,\"cache_control\":{\"type\":\"ephemeral\"}}]";

/* An assistant reply: thinking, text, a tool call. */
static const char ASSISTANT_BLOCKS[] =
    "[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"sig==\"},"
    "{\"type\":\"text\",\"text\":\"Let me look.\"},"
    "{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"get_weather\",\"input\":{\"city\":\"Paris\",\"n\":1.5,"
    "\"tags\":[\"a\",null,true]}}]";

/* Only the PNG; only the GIF. */
static const char PNG_ONLY[] = "[" IMAGE("image/png", PNG) "]";
static const char GIF_ONLY[] = "[" IMAGE("image/gif", GIF) "]";

static store_turn make_turn(const char *sid, const char *token, int64_t now)
{
    store_turn t = {
        .session_id = sid,
        .system_prompt = "sp",
        .model = "claude-test",
        .user_content = "what is this?",
        .assistant_content = "Let me look.",
        .user_blocks = USER_BLOCKS,
        .assistant_blocks = ASSISTANT_BLOCKS,
        .status = "complete",
        .stop_reason = "tool_use",
        .user_tokens = 3,
        .usage = { 10, 5, 2, 1 },
        .cost_micros = 100,
        .lock_token = token,
        .now = now,
    };
    return t;
}

static store_turn_result commit(store *s, store_turn t)
{
    store_turn_result r;
    assert_int_equal(store_lock_acquire(s, t.session_id, t.lock_token, t.now, 60000), CHAT_OK);
    chat_rc rc = store_turn_commit(s, &t, &r);
    if (rc != CHAT_OK)
        fail_msg("commit %s: %s", t.session_id, chat_rc_str(rc));
    return r;
}

/* Fails the test unless the two texts are equal as JSON. */
static void assert_json_equal(const char *got, const char *want)
{
    assert_non_null(got);
    json_error_t e;
    json_t *a = json_loads(got, 0, &e), *b = json_loads(want, 0, &e);
    assert_non_null(b);
    if (!a || !json_equal(a, b))
        fail_msg("JSON differs:\n got  %s\n want %s", got, want);
    json_decref(a);
    json_decref(b);
}

/* The messages of sid (asserts the session exists). */
static store_message *list(store *s, const char *sid, size_t *n)
{
    store_message *m = NULL;
    assert_int_equal(store_messages_list(s, sid, 0, 0, &m, n), CHAT_OK);
    return m;
}

static int64_t count(rawdb *db, const char *sql)
{
    return scalar(db, sql);
}

/* Rows of blobs and of message_blobs. */
static void assert_blobs(const struct fixture *f, int64_t blobs, int64_t links)
{
    rawdb *db = raw_open_db(f->path, false);
    assert_int_equal(count(db, "SELECT COUNT(*) FROM blobs"), blobs);
    assert_int_equal(count(db, "SELECT COUNT(*) FROM message_blobs"), links);
    /* Every link names a blob, every blob is linked. */
    assert_int_equal(count(db, "SELECT COUNT(*) FROM message_blobs mb WHERE NOT EXISTS "
                               "(SELECT 1 FROM blobs b WHERE b.sha256 = mb.sha256)"),
                     0);
    assert_int_equal(count(db, "SELECT COUNT(*) FROM blobs b WHERE NOT EXISTS "
                               "(SELECT 1 FROM message_blobs mb WHERE mb.sha256 = b.sha256)"),
                     0);
    raw_close(db);
}

/* ---- the rewrite itself (store/blocks.c), without a database --------------- */

/* Packs one image source with data and media type; returns the number of blobs. */
static size_t pack_one_image(const char *data, char *sha_out)
{
    char text[512];
    snprintf(text, sizeof text, "[" IMAGE("image/png", "%s") "]", data);
    store_packed p;
    assert_int_equal(store_blocks_pack(text, &p), CHAT_OK);
    size_t n = p.n_blobs;
    if (n == 1) {
        snprintf(sha_out, STORE_BLOB_HEX + 1, "%s", p.blobs[0].sha256);
        assert_string_equal(p.blobs[0].data, data);
        assert_string_equal(p.blobs[0].media_type, "image/png");
        assert_non_null(strstr(p.stored, "chatd_blob"));
        assert_null(strstr(p.stored, data));
        /* Back through a pairs list, as PostgreSQL gives it. */
        char pairs[600];
        snprintf(pairs, sizeof pairs, "0000:x,%s:%s", p.blobs[0].sha256, data);
        char *whole = NULL;
        assert_int_equal(store_blocks_unpack(p.stored, store_blob_lookup_pairs, pairs, &whole), CHAT_OK);
        assert_json_equal(whole, text);
        free(whole);
        /* A blob that is gone is an error, never a silently different message. */
        assert_int_equal(store_blocks_unpack(p.stored, store_blob_lookup_pairs, "00:x", &whole), CHAT_EIO);
        assert_null(whole);
    } else {
        assert_string_equal(p.stored, text); /* verbatim */
    }
    store_packed_clear(&p);
    return n;
}

static void test_pack_pure(void **state)
{
    (void)state;
    char sha[STORE_BLOB_HEX + 1] = "";
    /* The key is the SHA-256 of the decoded bytes (values from sha256sum). */
    assert_int_equal(pack_one_image("AAAA", sha), 1);
    assert_string_equal(sha, "709e80c88487a2411e1ee4dfb9f22a861492d20c4765150c0c794abd70f8147c");
    assert_int_equal(pack_one_image("AA==", sha), 1);
    assert_string_equal(sha, "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    assert_int_equal(pack_one_image("AAA=", sha), 1);
    assert_string_equal(sha, "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7");
    /* Not the one canonical encoding of some bytes: left inline. */
    static const char *const inline_data[] = { "AB==",  "AAB=",    "AAA",  "A===",     "AA=A",
                                               "AA AA", "AA\\nA=", "====", "AAAA====", "-_AA" };
    for (size_t i = 0; i < sizeof inline_data / sizeof inline_data[0]; i++)
        if (pack_one_image(inline_data[i], sha) != 0)
            fail_msg("%s was moved out", inline_data[i]);
    /* NULL in, NULL out; valid and invalid texts. */
    store_packed p;
    assert_int_equal(store_blocks_pack(NULL, &p), CHAT_OK);
    assert_null(p.stored);
    assert_int_equal(store_blocks_pack("[1]", &p), CHAT_EINVAL);
    assert_null(p.stored);
    assert_true(store_blocks_valid(NULL));
    assert_true(store_blocks_valid("[]"));
    assert_false(store_blocks_valid("[{\"type\":\"image\",\"source\":{\"type\":\"chatd_blob\"}}]"));
    char *whole = NULL;
    assert_int_equal(store_blocks_unpack(NULL, store_blob_lookup_pairs, NULL, &whole), CHAT_OK);
    assert_null(whole);
}

/* ---- commit and read back ------------------------------------------------- */

static void test_commit_blocks_roundtrip(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn_result r = commit(s, make_turn("rich", "tok", 1000));
    assert_int_equal(r.message_count, 2);

    /* A plain-text turn after it keeps blocks NULL. */
    store_turn plain = make_turn("rich", "tok2", 2000);
    plain.user_blocks = plain.assistant_blocks = NULL;
    plain.user_content = "thanks";
    plain.assistant_content = "";
    commit(s, plain);

    size_t n = 0;
    store_message *m = list(s, "rich", &n);
    assert_int_equal(n, 4);
    assert_json_equal(m[0].blocks, USER_BLOCKS);
    assert_json_equal(m[1].blocks, ASSISTANT_BLOCKS);
    assert_string_equal(m[0].content, "what is this?");
    assert_string_equal(m[1].content, "Let me look.");
    assert_string_equal(m[1].stop_reason, "tool_use");
    assert_null(m[2].blocks);
    assert_null(m[3].blocks);
    assert_string_equal(m[3].content, "");
    store_messages_free(m, n);

    /* Only after_seq: the same blocks. */
    store_message *tail = NULL;
    assert_int_equal(store_messages_list(s, "rich", 1, 1, &tail, &n), CHAT_OK);
    assert_int_equal(n, 1);
    assert_json_equal(tail[0].blocks, ASSISTANT_BLOCKS);
    store_messages_free(tail, n);

    /* The asynchronous form reads the same. */
    store_op *op = store_op_new(STORE_OP_MESSAGES_LIST);
    op->in.session_id = "rich";
    assert_int_equal(store_run(s, op), CHAT_OK);
    assert_int_equal(op->out.n_messages, 4);
    assert_json_equal(op->out.messages[0].blocks, USER_BLOCKS);
    store_op_free(op);

    /* Counters as before: two turns, four messages. */
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_messages, 4);
    assert_int_equal(st.total_turns, 2);
    store_close(s);

    /* The images are out of the message rows, each once in blobs, linked from the user message. */
    rawdb *db = raw_open_db(f->path, false);
    assert_int_equal(count(db, "SELECT COUNT(*) FROM messages WHERE blocks LIKE '%iVBORw0KGgo%' "
                               "OR blocks LIKE '%R0lGODlh%'"),
                     0);
    assert_int_equal(count(db, "SELECT COUNT(*) FROM messages WHERE blocks LIKE '%chatd_blob%'"), 1);
    /* Keyed by the SHA-256 of the decoded bytes (sha256sum of the file), with the base64 text as committed. */
    assert_int_equal(count(db, "SELECT COUNT(*) FROM blobs WHERE media_type = 'image/png' AND bytes = 70 AND "
                               "data = '" PNG "' AND sha256 = "
                               "'6b7fa434f92a8b80aab02d9bf1a12e49ffcae424e4013a1c4f68b67e3d2bbcd0'"),
                     1);
    assert_int_equal(count(db, "SELECT COUNT(*) FROM blobs WHERE media_type = 'image/gif' AND bytes = 42 AND "
                               "data = '" GIF "' AND sha256 = "
                               "'ef1955ae757c8b966c83248350331bd3a30f658ced11f387f8ebf05ab3368629'"),
                     1);
    raw_close(db);
    assert_blobs(f, 2, 2);
}

/* The same image twice in one message: one blob, one link, both back. */
static void test_same_image_twice_in_a_message(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    static const char twice[] =
        "[" IMAGE("image/png", PNG) ",{\"type\":\"text\",\"text\":\"and\"}," IMAGE("image/jpeg", PNG) "]";
    store_turn t = make_turn("twice", "tok", 1000);
    t.user_blocks = twice;
    t.assistant_blocks = NULL;
    commit(s, t);
    size_t n = 0;
    store_message *m = list(s, "twice", &n);
    assert_json_equal(m[0].blocks, twice); /* each keeps its own media type */
    assert_null(m[1].blocks);
    store_messages_free(m, n);
    assert_blobs(f, 1, 1);

    /* The same image in the question and in the reply of one turn: one blob, a link from each. */
    t = make_turn("twice", "tok2", 2000);
    t.user_blocks = PNG_ONLY;
    t.assistant_blocks = twice;
    commit(s, t);
    m = list(s, "twice", &n);
    assert_int_equal(n, 4);
    assert_json_equal(m[2].blocks, PNG_ONLY);
    assert_json_equal(m[3].blocks, twice);
    store_messages_free(m, n);
    store_close(s);
    assert_blobs(f, 1, 3);
}

/* Sources that are not exactly a canonical base64 one stay inline, unchanged. */
static void test_unusual_sources_stay_inline(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    static const char odd[] =
        "[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://example.com/a.png\"}},"
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"" PNG
        "\",\"extra\":1}},"
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"iVBORw0KGgp=\"}},"
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"\"}},"
        "{\"type\":\"image\"},{\"type\":\"text\",\"text\":\"mentions \\\"chatd_blob\\\" in text\"}]";
    store_turn t = make_turn("odd", "tok", 1000);
    t.user_blocks = odd;
    commit(s, t);
    size_t n = 0;
    store_message *m = list(s, "odd", &n);
    assert_json_equal(m[0].blocks, odd);
    store_messages_free(m, n);
    store_close(s);
    assert_blobs(f, 0, 0);
}

/* Content that holds the very text the read side uses to mark where an
 * image goes (store/blocks.c) still reads back exactly. */
static void test_marker_text_in_content(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    static const char tricky[] = "[{\"type\":\"text\",\"text\":\"\\u0001chatd-blob-0\\u0001\"}," IMAGE(
        "image/png", PNG) ","
                          "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{\"k\":\"\\u0001chatd-blob-"
                          "1\\u0001\"}}," IMAGE("image/gif", GIF) "]";
    store_turn t = make_turn("tricky", "tok", 1000);
    t.user_blocks = tricky;
    t.assistant_blocks = NULL;
    commit(s, t);
    size_t n = 0;
    store_message *m = list(s, "tricky", &n);
    assert_json_equal(m[0].blocks, tricky);
    store_messages_free(m, n);
    store_close(s);
    assert_blobs(f, 2, 2);
}

/* An incomplete reply (the client went away) keeps the blocks it had. */
static void test_partial_commit_with_blocks(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn t = make_turn("cut", "tok", 1000);
    static const char partial[] = "[{\"type\":\"text\",\"text\":\"Let me\"},"
                                  "{\"type\":\"tool_use\",\"id\":\"toolu_3\",\"name\":\"f\",\"input\":{}}]";
    t.user_blocks = PNG_ONLY;
    t.user_content = "";
    t.assistant_blocks = partial;
    t.assistant_content = "Let me";
    t.status = "incomplete";
    t.stop_reason = NULL;
    t.usage = (store_usage){ -1, -1, -1, -1 };
    commit(s, t);
    size_t n = 0;
    store_message *m = list(s, "cut", &n);
    assert_int_equal(n, 2);
    assert_json_equal(m[0].blocks, PNG_ONLY);
    assert_string_equal(m[0].content, "");
    assert_json_equal(m[1].blocks, partial);
    assert_string_equal(m[1].status, "incomplete");
    store_messages_free(m, n);
    store_close(s);
    assert_blobs(f, 1, 1);
}

/* ---- blobs shared and removed ---------------------------------------------- */

static void test_blob_shared_then_deleted(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn t = make_turn("a", "tok", 1000);
    t.user_blocks = PNG_ONLY;
    commit(s, t);
    t.session_id = "b";
    commit(s, t);
    t.session_id = "c"; /* another image: GIF and PNG in USER_BLOCKS */
    t.user_blocks = USER_BLOCKS;
    commit(s, t);
    assert_blobs(f, 2, 4);

    /* Deleting one session keeps the blob the others use. */
    assert_int_equal(store_session_delete(s, "a"), CHAT_OK);
    assert_blobs(f, 2, 3);
    size_t n = 0;
    store_message *m = list(s, "b", &n);
    assert_json_equal(m[0].blocks, PNG_ONLY);
    store_messages_free(m, n);

    /* c held the only GIF: it goes with c; the PNG stays for b. */
    assert_int_equal(store_session_delete(s, "c"), CHAT_OK);
    assert_blobs(f, 1, 1);
    m = list(s, "b", &n);
    assert_json_equal(m[0].blocks, PNG_ONLY);
    store_messages_free(m, n);

    assert_int_equal(store_session_delete(s, "b"), CHAT_OK);
    assert_blobs(f, 0, 0);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_sessions, 0);
    assert_int_equal(st.total_messages, 0);
    store_close(s);
}

static void test_blob_reset(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn t = make_turn("a", "tok", 1000);
    t.user_blocks = PNG_ONLY;
    commit(s, t);
    t.session_id = "b";
    commit(s, t);
    t.session_id = "a";
    t.now = 2000;
    commit(s, t); /* a links the PNG from two messages */
    assert_blobs(f, 1, 3);
    int64_t prev = 0;
    assert_int_equal(store_session_reset(s, "a", 3000, &prev), CHAT_OK);
    assert_int_equal(prev, 2);
    assert_blobs(f, 1, 1);
    assert_int_equal(store_session_reset(s, "b", 3000, &prev), CHAT_OK);
    assert_blobs(f, 0, 0);
    /* A reset session takes new images again. */
    t.now = 4000;
    commit(s, t);
    size_t n = 0;
    store_message *m = list(s, "a", &n);
    assert_int_equal(n, 2);
    assert_json_equal(m[0].blocks, PNG_ONLY);
    store_messages_free(m, n);
    store_close(s);
    assert_blobs(f, 1, 1);
}

static void test_blob_expire(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn t = make_turn("old1", "tok", 1000);
    t.user_blocks = PNG_ONLY;
    commit(s, t);
    t.session_id = "old2";
    t.user_blocks = USER_BLOCKS;
    commit(s, t);
    t.session_id = "new";
    t.user_blocks = PNG_ONLY;
    t.now = 5000;
    commit(s, t);
    assert_blobs(f, 2, 4);
    int64_t deleted = 0;
    assert_int_equal(store_sessions_expire(s, 2000, 6000, 10, &deleted), CHAT_OK);
    assert_int_equal(deleted, 2);
    assert_blobs(f, 1, 1);
    assert_int_equal(store_sessions_expire(s, 9000, 9000, 10, &deleted), CHAT_OK);
    assert_int_equal(deleted, 1);
    assert_blobs(f, 0, 0);
    store_close(s);
}

/* Writers and removers of the same images at once, from several handles: no
 * error (a deadlock or a reference to a removed blob would be CHAT_EIO), and
 * afterwards every link names a blob, every blob is linked, every message
 * reads back whole. */
struct mixer {
    const char *url;
    int id;
    pthread_barrier_t *go;
    int errors;
    int commits;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *mixer_thread(void *arg)
{
    struct mixer *m = arg;
    store *s = NULL;
    char err[256];
    if (store_open(m->url, &s, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "mixer %d: %s\n", m->id, err);
        m->errors++;
        pthread_barrier_wait(m->go);
        return NULL;
    }
    pthread_barrier_wait(m->go);
    static const char *const variants[] = { PNG_ONLY, GIF_ONLY, USER_BLOCKS, NULL };
    uint32_t seed = 11u + (uint32_t)m->id;
    for (int i = 0; i < 120; i++) {
        seed = seed * 1103515245u + 12345u;
        uint32_t r = seed >> 8;
        char sid[8], token[32];
        snprintf(sid, sizeof sid, "c%u", r % 4);
        snprintf(token, sizeof token, "m%d-%d", m->id, i);
        uint32_t k = (r >> 4) % 10;
        chat_rc rc;
        if (k < 6) {
            rc = store_lock_acquire(s, sid, token, now_ms(), 60000);
            if (rc == CHAT_EBUSY)
                continue;
            if (rc != CHAT_OK) {
                m->errors++;
                continue;
            }
            store_turn t = make_turn(sid, token, now_ms());
            t.user_blocks = variants[(r >> 8) % 4];
            t.assistant_blocks = variants[(r >> 10) % 4];
            rc = store_turn_commit(s, &t, NULL);
            if (rc == CHAT_OK)
                m->commits++;
            else if (rc == CHAT_ECONFLICT)
                rc = store_lock_release(s, sid, token);
            else
                m->errors++;
        } else if (k < 7) {
            rc = store_session_reset(s, sid, now_ms(), NULL);
            m->errors += rc != CHAT_OK && rc != CHAT_ENOTFOUND;
        } else if (k < 9) {
            rc = store_session_delete(s, sid);
            m->errors += rc != CHAT_OK && rc != CHAT_ENOTFOUND;
        } else {
            int64_t del = 0;
            rc = store_sessions_expire(s, now_ms() + 1, now_ms(), 2, &del);
            m->errors += rc != CHAT_OK;
        }
    }
    store_close(s);
    return NULL;
}

static void test_blobs_concurrent(void **state)
{
    struct fixture *f = *state;
    enum { N = 5 };
    store *s = open_url(f->url); /* migrate up front */
    pthread_t th[N];
    struct mixer m[N];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    for (int i = 0; i < N; i++) {
        m[i] = (struct mixer){ .url = f->url, .id = i, .go = &go };
        assert_int_equal(pthread_create(&th[i], NULL, mixer_thread, &m[i]), 0);
    }
    int commits = 0, errors = 0;
    for (int i = 0; i < N; i++) { /* every thread joined before any assert: they use this frame */
        pthread_join(th[i], NULL);
        errors += m[i].errors;
        commits += m[i].commits;
    }
    assert_int_equal(errors, 0);
    pthread_barrier_destroy(&go);
    assert_true(commits > 0);
    rawdb *db = raw_open_db(f->path, false);
    int64_t links = count(db, "SELECT COUNT(*) FROM message_blobs");
    int64_t blobs = count(db, "SELECT COUNT(DISTINCT sha256) FROM message_blobs");
    raw_close(db);
    assert_blobs(f, blobs, links);
    static const char *const sids[] = { "c0", "c1", "c2", "c3" };
    for (size_t i = 0; i < 4; i++) {
        store_message *msgs = NULL;
        size_t n = 0;
        chat_rc rc = store_messages_list(s, sids[i], 0, 0, &msgs, &n);
        assert_true(rc == CHAT_OK || rc == CHAT_ENOTFOUND);
        for (size_t j = 0; j < n; j++) {
            if (!msgs[j].blocks)
                continue;
            assert_non_null(strstr(msgs[j].blocks, "\"base64\""));
            assert_null(strstr(msgs[j].blocks, "chatd_blob"));
        }
        store_messages_free(msgs, n);
    }
    store_close(s);
}

/* ---- the asynchronous form (a PostgreSQL pool; SQLite's inline run) -------- */

struct done {
    int n;
    chat_rc rc;
    char *blocks[2];
};

static void on_done(store_op *op, void *ud)
{
    struct done *d = ud;
    d->rc = op->rc;
    d->n++;
    for (size_t i = 0; i < op->out.n_messages && i < 2; i++) {
        d->blocks[i] = op->out.messages[i].blocks; /* moved out */
        op->out.messages[i].blocks = NULL;
    }
}

static void run_until(struct event_base *base, struct done *d, int n)
{
    for (int i = 0; i < 2000 && d->n < n; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(d->n, n);
}

static void test_submit_blocks(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    struct event_base *base = event_base_new();
    assert_int_equal(store_attach(s, base, 2, 5000), CHAT_OK);
    assert_int_equal(store_lock_acquire(s, "async", "tok", 1000, 60000), CHAT_OK);
    store_op *op = store_op_new(STORE_OP_TURN_COMMIT);
    op->in.turn = make_turn("async", "tok", 1000);
    op->in.turn.session_id = store_op_str(op, "async");
    op->in.turn.lock_token = store_op_str(op, "tok");
    op->in.turn.user_blocks = store_op_str(op, USER_BLOCKS);
    op->in.turn.assistant_blocks = store_op_str(op, ASSISTANT_BLOCKS);
    struct done d = { 0 };
    store_submit(s, op, on_done, &d);
    run_until(base, &d, 1);
    assert_int_equal(d.rc, CHAT_OK);

    op = store_op_new(STORE_OP_MESSAGES_LIST);
    op->in.session_id = store_op_str(op, "async");
    store_submit(s, op, on_done, &d);
    run_until(base, &d, 2);
    assert_int_equal(d.rc, CHAT_OK);
    assert_json_equal(d.blocks[0], USER_BLOCKS);
    assert_json_equal(d.blocks[1], ASSISTANT_BLOCKS);
    free(d.blocks[0]);
    free(d.blocks[1]);

    /* Refused in front of the backend, as every invalid op is. */
    op = store_op_new(STORE_OP_TURN_COMMIT);
    op->in.turn = make_turn("async", "tok", 2000);
    op->in.turn.user_blocks = "{}";
    store_submit(s, op, on_done, &d);
    run_until(base, &d, 3);
    assert_int_equal(d.rc, CHAT_EINVAL);
    store_close(s);
    event_base_free(base);
    assert_blobs(f, 2, 2);
}

/* ---- idempotency: the replay carries the reply's blocks ------------------- */

static void test_idem_replay_blocks(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    static const char reply[] = "[{\"type\":\"text\",\"text\":\"look\"}," IMAGE("image/png", PNG) "]";
    store_idem r;
    assert_int_equal(store_idem_begin(s, "", "k1", "h", "tok", "idem", 1000, 60000, &r), CHAT_OK);
    assert_int_equal(r.outcome, STORE_IDEM_NEW);
    store_idem_clear(&r);
    store_turn t = make_turn("idem", "tok", 1000);
    t.assistant_blocks = reply;
    t.idem_scope = "";
    t.idem_key = "k1";
    t.idem_ttl_ms = 100000;
    commit(s, t);
    /* Even once the session and its images are gone. */
    assert_int_equal(store_session_delete(s, "idem"), CHAT_OK);
    assert_int_equal(store_idem_begin(s, "", "k1", "h", "tok2", "idem", 2000, 60000, &r), CHAT_OK);
    assert_int_equal(r.outcome, STORE_IDEM_REPLAY);
    assert_true(r.has_reply);
    assert_string_equal(r.reply.content, "Let me look.");
    assert_json_equal(r.reply.blocks, reply);
    store_idem_clear(&r);

    /* A record without blocks replays none. */
    assert_int_equal(store_idem_begin(s, "", "k2", "h", "tok3", "idem2", 3000, 60000, &r), CHAT_OK);
    store_idem_clear(&r);
    t = make_turn("idem2", "tok3", 3000);
    t.user_blocks = t.assistant_blocks = NULL;
    t.idem_scope = "";
    t.idem_key = "k2";
    t.idem_ttl_ms = 100000;
    commit(s, t);
    assert_int_equal(store_idem_begin(s, "", "k2", "h", "tok4", "idem2", 4000, 60000, &r), CHAT_OK);
    assert_int_equal(r.outcome, STORE_IDEM_REPLAY);
    assert_null(r.reply.blocks);
    store_idem_clear(&r);
    store_close(s);
}

/* ---- refused blocks ---------------------------------------------------------- */

static void test_invalid_blocks(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    static const char *const bad[] = {
        "",
        "not json",
        "{\"type\":\"text\",\"text\":\"x\"}", /* an object, not an array */
        "\"text\"",
        "[1]",
        "[{\"text\":\"no type\"}]",
        "[{\"type\":7}]",
        "[{\"type\":\"text\",\"text\":\"x\"}] trailing",
        /* The store's own references: a caller cannot name a blob by hash. */
        "[{\"type\":\"image\",\"source\":{\"type\":\"chatd_blob\",\"sha256\":\"00\",\"media_type\":\"image/png\"}}]",
        "[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":[{\"type\":\"image\",\"source\":"
        "{\"type\":\"chatd_blob\",\"sha256\":\"00\",\"media_type\":\"image/png\"}}]}]",
    };
    assert_int_equal(store_lock_acquire(s, "bad", "tok", 1000, 60000), CHAT_OK);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        store_turn t = make_turn("bad", "tok", 1000);
        t.user_blocks = bad[i];
        if (store_turn_commit(s, &t, NULL) != CHAT_EINVAL)
            fail_msg("user_blocks %s accepted", bad[i]);
        t.user_blocks = NULL;
        t.assistant_blocks = bad[i];
        if (store_turn_commit(s, &t, NULL) != CHAT_EINVAL)
            fail_msg("assistant_blocks %s accepted", bad[i]);
    }
    /* Over the size bound. */
    size_t big = STORE_BLOCKS_MAX + 1;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, ' ', big);
    huge[0] = '[';
    huge[big - 1] = ']';
    huge[big] = '\0';
    store_turn t = make_turn("bad", "tok", 1000);
    t.user_blocks = huge;
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_EINVAL);
    free(huge);

    /* An import with bad blocks is refused whole. */
    store_message msgs[2] = {
        { .seq = 1, .role = "user", .content = "", .blocks = "[1]", .status = "complete", .usage = { -1, -1, -1, -1 } },
        { .seq = 2, .role = "assistant", .content = "a", .status = "complete", .usage = { -1, -1, -1, -1 } },
    };
    store_session sess = { .id = "imp", .turn_count = 1, .message_count = 2 };
    assert_int_equal(store_session_import(s, &sess, msgs, 2), CHAT_EINVAL);
    store_session got;
    assert_int_equal(store_session_get(s, "bad", &got), CHAT_ENOTFOUND);
    assert_int_equal(store_session_get(s, "imp", &got), CHAT_ENOTFOUND);
    /* The lock is still held: nothing was written, and a good commit goes through. */
    t = make_turn("bad", "tok", 1000);
    assert_int_equal(store_turn_commit(s, &t, NULL), CHAT_OK);
    store_close(s);
    assert_blobs(f, 2, 2);
}

/* ---- import and export --------------------------------------------------- */

static void test_import_blocks(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    store_turn t = make_turn("live", "tok", 500);
    t.user_blocks = PNG_ONLY;
    commit(s, t);
    store_message msgs[4] = {
        { .seq = 1,
          .role = "user",
          .content = "what is this?",
          .blocks = (char *)USER_BLOCKS,
          .status = "complete",
          .tokens = 4,
          .usage = { -1, -1, -1, -1 },
          .created_at = 10 },
        { .seq = 2,
          .role = "assistant",
          .content = "Let me look.",
          .blocks = (char *)ASSISTANT_BLOCKS,
          .status = "complete",
          .model = "m",
          .tokens = 5,
          .usage = { 7, 5, 0, 0 },
          .cost_micros = 9,
          .created_at = 20 },
        { .seq = 3, .role = "user", .content = "plain", .status = "complete", .usage = { -1, -1, -1, -1 } },
        { .seq = 4, .role = "assistant", .content = "text", .status = "complete", .usage = { -1, -1, -1, -1 } },
    };
    store_session sess = { .id = "imp", .model = "m", .turn_count = 2, .message_count = 4, .usage = { 7, 5, 0, 0 } };
    assert_int_equal(store_session_import(s, &sess, msgs, 4), CHAT_OK);
    size_t n = 0;
    store_message *m = list(s, "imp", &n);
    assert_int_equal(n, 4);
    assert_json_equal(m[0].blocks, USER_BLOCKS);
    assert_json_equal(m[1].blocks, ASSISTANT_BLOCKS);
    assert_null(m[2].blocks);
    store_messages_free(m, n);
    store_close(s);
    /* The PNG shared with the live session, the GIF new. */
    assert_blobs(f, 2, 3);
}

/* Writes the export of s into a new temporary file, rewound. */
static FILE *export_all(store *s, transfer_counts *c)
{
    FILE *out = tmpfile();
    assert_non_null(out);
    char err[256] = "";
    chat_rc rc = transfer_export(s, out, c, err, sizeof err);
    if (rc != CHAT_OK)
        fail_msg("export: %s: %s", chat_rc_str(rc), err);
    rewind(out);
    return out;
}

static void test_export_import_blocks(void **state)
{
    struct fixture *f = *state;
    store *s = open_url(f->url);
    commit(s, make_turn("x1", "tok", 1000));
    store_turn t = make_turn("x2", "tok", 2000);
    t.user_blocks = PNG_ONLY;
    t.assistant_blocks = NULL;
    commit(s, t);
    t.user_blocks = NULL;
    t.now = 3000;
    commit(s, t);
    transfer_counts c;
    FILE *file = export_all(s, &c);
    assert_int_equal(c.sessions, 2);
    assert_int_equal(c.messages, 6);
    store_close(s);

    /* The file holds the images whole, and the blocks as JSON arrays. */
    char line[8192];
    int with_blocks = 0, with_png = 0;
    while (fgets(line, sizeof line, file)) {
        with_blocks += strstr(line, "\"blocks\":[") != NULL;
        with_png += strstr(line, PNG) != NULL;
        assert_null(strstr(line, "chatd_blob"));
    }
    assert_int_equal(with_blocks, 2); /* two session lines */
    assert_int_equal(with_png, 2);
    rewind(file);

    /* Into an empty database. */
    if (tdb_pg())
        tdb_pg_reset();
    else
        assert_int_equal(unlink(f->path), 0);
    s = open_url(f->url);
    char err[256] = "";
    chat_rc rc = transfer_import(s, file, 0, &c, err, sizeof err);
    if (rc != CHAT_OK)
        fail_msg("import: %s: %s", chat_rc_str(rc), err);
    fclose(file);
    assert_int_equal(c.sessions, 2);
    assert_int_equal(c.messages, 6);
    size_t n = 0;
    store_message *m = list(s, "x1", &n);
    assert_json_equal(m[0].blocks, USER_BLOCKS);
    assert_json_equal(m[1].blocks, ASSISTANT_BLOCKS);
    store_messages_free(m, n);
    m = list(s, "x2", &n);
    assert_int_equal(n, 4);
    assert_json_equal(m[0].blocks, PNG_ONLY);
    assert_null(m[1].blocks);
    assert_null(m[2].blocks);
    store_messages_free(m, n);
    store_close(s);
    assert_blobs(f, 2, 3);
}

/* An export written before blocks existed (no "blocks" member) imports as it did. */
static void test_import_old_export(void **state)
{
    struct fixture *f = *state;
    static const char old[] =
        "{\"format\":\"chatd-export\",\"version\":1,\"exported_at\":5,\"schema_version\":3}\n"
        "{\"type\":\"session\",\"id\":\"old\",\"owner\":null,\"system_prompt\":\"sp\",\"model\":\"m\","
        "\"created_at\":10,\"updated_at\":20,\"turn_count\":1,\"message_count\":2,\"usage\":{\"input_tokens\":1,"
        "\"output_tokens\":2,\"cache_read_tokens\":0,\"cache_write_tokens\":0},\"cost_micros\":3,\"messages\":["
        "{\"seq\":1,\"role\":\"user\",\"content\":\"q\",\"status\":\"complete\",\"model\":null,\"stop_reason\":null,"
        "\"tokens\":1,\"usage\":{\"input_tokens\":-1,\"output_tokens\":-1,\"cache_read_tokens\":-1,"
        "\"cache_write_tokens\":-1},\"cost_micros\":0,\"created_at\":10},"
        "{\"seq\":2,\"role\":\"assistant\",\"content\":\"a\",\"status\":\"complete\",\"model\":\"m\","
        "\"stop_reason\":\"end_turn\",\"tokens\":2,\"usage\":{\"input_tokens\":1,\"output_tokens\":2,"
        "\"cache_read_tokens\":0,\"cache_write_tokens\":0},\"cost_micros\":3,\"created_at\":20}]}\n"
        "{\"type\":\"end\",\"keys\":0,\"sessions\":1,\"messages\":2}\n";
    store *s = open_url(f->url);
    FILE *in = fmemopen((void *)old, sizeof old - 1, "r");
    assert_non_null(in);
    transfer_counts c;
    char err[256] = "";
    assert_int_equal(transfer_import(s, in, 0, &c, err, sizeof err), CHAT_OK);
    fclose(in);
    assert_int_equal(c.messages, 2);
    size_t n = 0;
    store_message *m = list(s, "old", &n);
    assert_int_equal(n, 2);
    assert_string_equal(m[0].content, "q");
    assert_null(m[0].blocks);
    assert_null(m[1].blocks);
    store_messages_free(m, n);

    /* "blocks" that are not an array, or refused by the store, fail the line. */
    static const char *const bad[] = { "\"blocks\":\"[]\",", "\"blocks\":{},", "\"blocks\":[1],",
                                       "\"blocks\":[{\"type\":\"image\",\"source\":{\"type\":\"chatd_blob\","
                                       "\"sha256\":\"00\",\"media_type\":\"image/png\"}}]," };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *text = NULL;
        const char *at = strstr(old, "\"content\":\"q\"");
        assert_non_null(at);
        int len = asprintf(&text, "%.*s%s%s", (int)(at - old), old, bad[i], at);
        assert_true(len > 0);
        /* Another id, so that a refusal is not mistaken for "exists". */
        char *id = strstr(text, "\"id\":\"old\"");
        assert_non_null(id);
        memcpy(id, "\"id\":\"ol2\"", 10);
        in = fmemopen(text, (size_t)len, "r");
        chat_rc rc = transfer_import(s, in, 0, &c, err, sizeof err);
        fclose(in);
        if (rc != CHAT_EINVAL)
            fail_msg("import with %s: %s", bad[i], chat_rc_str(rc));
        assert_non_null(strstr(err, "blocks"));
        free(text);
    }
    store_session got;
    assert_int_equal(store_session_get(s, "ol2", &got), CHAT_ENOTFOUND);
    store_close(s);
}

/* ---- an older database migrates ------------------------------------------- */

/* Creates, by hand, the database an older binary left: the migrations before
 * blocks (SQLite 001..003, PostgreSQL 001..002) and one conversation. */
static void build_old_database(const struct fixture *f)
{
    const char *prefix = tdb_pg() ? "schema_pg/" : "schema/";
    int last = tdb_pg() ? 2 : 3;
    rawdb *db = raw_open_db(f->path, true);
    raw_exec(db, "CREATE TABLE schema_version (version BIGINT NOT NULL PRIMARY KEY,"
                 " name TEXT NOT NULL, applied_at BIGINT NOT NULL)");
    for (int v = 1; v <= last; v++) {
        const struct chat_asset *found = NULL;
        for (size_t i = 0; i < chat_assets_count && !found; i++) {
            const char *n = chat_assets[i].name;
            if (strncmp(n, prefix, strlen(prefix)) == 0 && atoi(n + strlen(prefix)) == v)
                found = &chat_assets[i];
        }
        assert_non_null(found);
        raw_exec(db, (const char *)found->data);
        char sql[300];
        snprintf(sql, sizeof sql, "INSERT INTO schema_version VALUES (%d, '%s', 1)", v, found->name + strlen(prefix));
        raw_exec(db, sql);
    }
    raw_exec(db, "INSERT INTO sessions (id, system_prompt, model, created_at, updated_at, turn_count, message_count)"
                 " VALUES ('old', 'sp', 'm', 10, 20, 1, 2)");
    raw_exec(db, "INSERT INTO messages (session_id, seq, role, content, status, created_at)"
                 " VALUES ('old', 1, 'user', 'q', 'complete', 10), ('old', 2, 'assistant', 'a', 'complete', 20)");
    raw_exec(db, tdb_pg() ? "UPDATE stats SET total_sessions = 1, total_messages = 2, total_turns = 1 WHERE id = 0"
                          : "UPDATE stats SET total_sessions = 1, total_messages = 2, total_turns = 1");
    raw_close(db);
}

static void test_migrate_old_database(void **state)
{
    struct fixture *f = *state;
    build_old_database(f);
    store *s = open_url(f->url);
    assert_int_equal(store_schema_version(s), tdb_expected_version());
    size_t n = 0;
    store_message *m = list(s, "old", &n);
    assert_int_equal(n, 2);
    assert_string_equal(m[1].content, "a");
    assert_null(m[0].blocks);
    assert_null(m[1].blocks);
    store_messages_free(m, n);
    /* The old session takes a turn with blocks; the old messages are untouched. */
    commit(s, make_turn("old", "tok", 30));
    m = list(s, "old", &n);
    assert_int_equal(n, 4);
    assert_null(m[0].blocks);
    assert_json_equal(m[2].blocks, USER_BLOCKS);
    assert_json_equal(m[3].blocks, ASSISTANT_BLOCKS);
    store_messages_free(m, n);
    store_stats st;
    assert_int_equal(store_stats_get(s, &st), CHAT_OK);
    assert_int_equal(st.total_messages, 4);
    assert_int_equal(st.total_turns, 2);
    store_close(s);
    assert_blobs(f, 2, 2);
    /* Reopening migrates nothing more. */
    s = open_url(f->url);
    assert_int_equal(store_schema_version(s), tdb_expected_version());
    store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_pure),
        cmocka_unit_test_setup_teardown(test_commit_blocks_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_image_twice_in_a_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unusual_sources_stay_inline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_marker_text_in_content, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_commit_with_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blob_shared_then_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blob_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blob_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blobs_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idem_replay_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_import_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import_old_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_old_database, setup, teardown),
    };
    static const char *const sqlite_only[] = { NULL };
    return tdb_run_tests("store_blocks", tests, sizeof tests / sizeof tests[0], sqlite_only);
}
