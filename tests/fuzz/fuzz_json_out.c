/*
 * fuzz_json_out: the JSON writer (chat_json_dumps, src/core/json_out.c)
 * against jansson's json_dumps, which it must equal byte for byte.
 *
 * Input: any bytes. They are parsed as a JSON document (json_loadb with
 * JSON_DECODE_ANY | JSON_ALLOW_NUL), and also taken raw as a string and an
 * object key made without UTF-8 checks (json_stringn_nocheck,
 * json_object_setn_new_nocheck), so that invalid UTF-8 reaches the writer. Oracle
 * (json_out.h): for every flag set below, the two writers return the same
 * bytes, or both NULL, and the length returned is the text's.
 * chat_json_dumps_splice, for the flags it writes itself: splicing a value of
 * the document with a writer that writes that same value (or the raw input
 * as a string in place of a placeholder) gives chat_json_dumps's text; when
 * chat_json_plain accepts the raw input, so does writing it with
 * chat_json_write_plain (a string that needs an escape, taken as plain, would
 * show as a difference).
 */
#include "core/json_out.h"
#include "fuzz_util.h"

static const size_t FLAG_SETS[] = {
    JSON_COMPACT,
    JSON_COMPACT | JSON_ENCODE_ANY,
    JSON_ENCODE_ANY,
    0,
    JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII,
    JSON_COMPACT | JSON_ENCODE_ANY | JSON_ESCAPE_SLASH | JSON_REAL_PRECISION(12),
    JSON_ENCODE_ANY | JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH | JSON_REAL_PRECISION(3),
    JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(31),
    JSON_INDENT(2) | JSON_ENCODE_ANY,
    JSON_COMPACT | JSON_SORT_KEYS,
};

static void compare(const json_t *v)
{
    for (size_t i = 0; i < sizeof FLAG_SETS / sizeof FLAG_SETS[0]; i++) {
        size_t flags = FLAG_SETS[i];
        char *want = json_dumps(v, flags);
        size_t len = (size_t)-1;
        char *got = chat_json_dumps(v, flags, &len);
        FUZZ_CHECK((want == NULL) == (got == NULL), "flags 0x%zx: json_dumps %s, chat_json_dumps %s", flags,
                   want ? "wrote text" : "failed", got ? "wrote text" : "failed");
        if (want) {
            FUZZ_CHECK(strcmp(want, got) == 0, "flags 0x%zx: json_dumps %s, chat_json_dumps %s", flags, want, got);
            FUZZ_CHECK(len == strlen(got), "flags 0x%zx: length %zu for %zu bytes", flags, len, strlen(got));
        }
        free(want);
        free(got);
    }
}

/* The last two flag sets are handed to json_dumps, which cannot splice. */
#define SPLICE_SETS (sizeof FLAG_SETS / sizeof FLAG_SETS[0] - 2)

typedef struct splice_with {
    const json_t *value;   /* written with chat_json_write_value, or */
    const uint8_t *string; /* written with chat_json_write_string, or */
    size_t len;
    bool plain; /* with chat_json_write_plain */
} splice_with;

static bool write_with(chat_json_writer *w, void *ud)
{
    const splice_with *s = ud;
    if (s->value)
        return chat_json_write_value(w, s->value);
    if (s->plain)
        return chat_json_write_plain(w, (const char *)s->string, s->len);
    return chat_json_write_string(w, (const char *)s->string, s->len);
}

/* want's text (chat_json_dumps) against v with at spliced as with says. */
static void compare_splice(const json_t *want_v, const json_t *v, const json_t *at, const splice_with *with)
{
    for (size_t i = 0; i < SPLICE_SETS; i++) {
        size_t flags = FLAG_SETS[i];
        char *want = chat_json_dumps(want_v, flags, NULL);
        size_t len = (size_t)-1;
        char *got = chat_json_dumps_splice(v, flags, at, write_with, (void *)with, &len);
        FUZZ_CHECK((want == NULL) == (got == NULL), "splice, flags 0x%zx: %s vs %s", flags, want ? "text" : "failed",
                   got ? "text" : "failed");
        if (want) {
            FUZZ_CHECK(strcmp(want, got) == 0, "splice, flags 0x%zx: %s vs %s", flags, want, got);
            FUZZ_CHECK(len == strlen(got), "splice, flags 0x%zx: length %zu for %zu bytes", flags, len, strlen(got));
        }
        free(want);
        free(got);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t err;
    json_t *doc = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (doc) {
        compare(doc);
        json_t *wrapped = json_pack("{s:[O,O],s:O}", "a", doc, doc, "b", doc);
        if (wrapped) {
            compare(wrapped);
            splice_with same = { .value = doc };
            compare_splice(wrapped, wrapped, doc, &same); /* doc is there three times */
        }
        json_decref(wrapped);
        json_decref(doc);
    }

    json_t *raw = json_stringn_nocheck((const char *)data, size);
    json_t *obj = json_object();
    json_object_setn_new_nocheck(obj, (const char *)data, size, json_integer((json_int_t)size - 40));
    json_t *arr = json_pack("[O,O,f]", raw, obj, (double)size / 7.0);
    compare(raw);
    compare(obj);
    compare(arr);
    json_t *hole = json_array();
    json_t *with_hole = json_pack("[O,O,f]", hole, obj, (double)size / 7.0);
    splice_with string = { .string = data, .len = size };
    if (hole && with_hole)
        compare_splice(arr, with_hole, hole, &string);
    splice_with plain = { .string = data, .len = size, .plain = true };
    if (hole && with_hole && chat_json_plain((const char *)data, size))
        compare_splice(arr, with_hole, hole, &plain);
    json_decref(with_hole);
    json_decref(hole);
    json_decref(arr);
    json_decref(obj);
    json_decref(raw);
    return 0;
}
