/*
 * fuzz_cursor: the session list cursor of GET /v1/sessions?cursor=
 * (store_cursor_parse / store_cursor_make, src/store/backend.c), client bytes
 * that both store backends read.
 *
 * Input: the cursor text (up to a NUL). Oracles (backend.h): parsing accepts
 * only the exact form store_cursor_make produces, so a cursor that parses is
 * made again byte for byte from what was parsed, and the id it yields is a
 * valid store id; and any (created_at, id) made into a cursor parses back to
 * the same values (the id taken from the input bytes after the first NUL, the
 * time from the first 8 bytes).
 */
#include "fuzz_util.h"
#include "store/backend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strndup(data, size);
    int64_t created_at = -7;
    char id[STORE_ID_MAX + 1];
    memset(id, 'x', sizeof id);
    if (store_cursor_parse(text, &created_at, id)) {
        FUZZ_CHECK(memchr(id, '\0', sizeof id) != NULL, "id not NUL-terminated");
        FUZZ_CHECK(store_valid_id(id), "a cursor parsed to an invalid id");
        char *again = store_cursor_make(created_at, id);
        FUZZ_CHECK(strcmp(again, text) == 0, "cursor %s parsed and made again is %s", text, again);
        free(again);
    }

    /* The other direction: make, then parse. */
    size_t first = strlen(text);
    if (first < size) {
        const char *rest = text + first + 1;
        int64_t t = 0;
        memcpy(&t, data, size >= 8 ? 8 : size);
        t &= INT64_MAX; /* times are not negative; the form has no sign */
        if (store_valid_id(rest)) {
            char *c = store_cursor_make(t, rest);
            int64_t t2 = 0;
            char id2[STORE_ID_MAX + 1];
            bool ok = store_cursor_parse(c, &t2, id2);
            FUZZ_CHECK(ok, "a made cursor does not parse: %s", c);
            FUZZ_CHECK(t2 == t && strcmp(id2, rest) == 0, "cursor %s parsed back to other values", c);
            free(c);
        }
    }
    free(text);
    return 0;
}
