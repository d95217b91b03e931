/*
 * fuzz_session_id: the session-id rule (chat_valid_id, src/core/util.c) that
 * every path parameter and body session_id goes through, on raw bytes and on
 * a path segment percent-decoded as the router decodes it
 * (evhttp_uridecode); and the store's own id check (store_valid_id).
 *
 * Input: the id text (up to a NUL). Oracles: chat_valid_id accepts exactly
 * ^[A-Za-z0-9._:-]{1,128}$ (util.h), checked against a second,
 * independent implementation; an id it accepts is also a valid store id; a
 * decoded segment is never longer than the raw one.
 */
#include <event2/http.h>

#include "core/util.h"
#include "fuzz_util.h"
#include "store/backend.h"

static bool reference_valid(const char *s)
{
    static const char ok[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
    size_t n = strlen(s);
    return n >= 1 && n <= 128 && strspn(s, ok) == n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *raw = fuzz_strndup(data, size);
    bool valid = chat_valid_id(raw);
    FUZZ_CHECK(valid == reference_valid(raw), "chat_valid_id says %d for \"%s\"", valid, raw);
    if (valid)
        FUZZ_CHECK(store_valid_id(raw), "a valid session id is not a valid store id");

    size_t dlen = 0;
    char *dec = evhttp_uridecode(raw, 0, &dlen);
    if (dec) {
        FUZZ_CHECK(dlen <= strlen(raw), "decoding grew %zu bytes to %zu", strlen(raw), dlen);
        /* What the router passes on: a segment decoding to a NUL byte is
         * replaced by one that fails every id check. */
        bool has_nul = strlen(dec) != dlen;
        bool dvalid = !has_nul && chat_valid_id(dec);
        FUZZ_CHECK(dvalid == (!has_nul && reference_valid(dec)), "decoded id verdicts differ");
        free(dec);
    }
    free(raw);
    return 0;
}
