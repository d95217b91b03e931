/*
 * fuzz_json_in: the JSON reader (chat_json_loadb, src/core/json_in.c) against
 * jansson's json_loadb, which it must equal.
 *
 * Input: any bytes, read as a document under each flag set below, and as a
 * NUL-terminated string (chat_json_loads against json_loads). Oracle
 * (json_in.h): both read it or both refuse it; a value read is json_equal to
 * jansson's (types included: an integer is never a real) and writes the same
 * compact text (object keys in the same order); a refusal carries jansson's
 * own message. Where the fast reader alone takes the input, its value is
 * jansson's too.
 */
#include "core/json_in.h"
#include "fuzz_util.h"

static const size_t FLAG_SETS[] = {
    0, JSON_DECODE_ANY, JSON_DECODE_ANY | JSON_ALLOW_NUL, JSON_REJECT_DUPLICATES, /* handed to jansson */
};

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

static void same(const json_t *want, const json_error_t *want_err, const json_t *got, const json_error_t *got_err,
                 const char *what, size_t flags)
{
    FUZZ_CHECK((want == NULL) == (got == NULL), "%s, flags 0x%zx: jansson %s, chat %s", what, flags,
               want ? "read it" : want_err->text, got ? "read it" : got_err->text);
    if (!want) {
        FUZZ_CHECK(strcmp(want_err->text, got_err->text) == 0, "%s, flags 0x%zx: error \"%s\" vs \"%s\"", what, flags,
                   want_err->text, got_err->text);
        return;
    }
    char *a = json_dumps(want, DUMP_FLAGS), *b = json_dumps(got, DUMP_FLAGS);
    FUZZ_CHECK(json_equal(want, got), "%s, flags 0x%zx: values differ: %s vs %s", what, flags, a ? a : "?",
               b ? b : "?");
    FUZZ_CHECK((a == NULL) == (b == NULL) && (!a || strcmp(a, b) == 0), "%s, flags 0x%zx: text %s vs %s", what, flags,
               a ? a : "?", b ? b : "?");
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    for (size_t i = 0; i < sizeof FLAG_SETS / sizeof FLAG_SETS[0]; i++) {
        size_t flags = FLAG_SETS[i];
        json_error_t we, ge;
        json_t *want = json_loadb(buf, size, flags, &we);
        json_t *got = chat_json_loadb(buf, size, flags, &ge);
        same(want, &we, got, &ge, "loadb", flags);
        json_t *fast = chat_json_fast_loadb(buf, size, flags);
        if (fast) {
            FUZZ_CHECK(want != NULL, "the fast reader took text jansson refuses: %s", we.text);
            same(want, &we, fast, &we, "fast", flags);
        }
        json_decref(fast);
        json_decref(want);
        json_decref(got);
    }
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    json_error_t we, ge;
    json_t *want = json_loads(s, JSON_DECODE_ANY, &we);
    json_t *got = chat_json_loads(s, JSON_DECODE_ANY, &ge);
    same(want, &we, got, &ge, "loads", JSON_DECODE_ANY);
    json_decref(want);
    json_decref(got);
    free(s);
    return 0;
}
