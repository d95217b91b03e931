/*
 * fuzz_auth: the Authorization header (auth_check, src/guard/auth.c): the
 * Bearer scheme, the static API_TOKEN, and the hash an API key is looked up
 * by.
 *
 * Input: a mode byte (bit 0: AUTH_MODE keys instead of token), then the
 * header value (up to a NUL). Oracles (auth.h): a header that is not
 * "Bearer <token>" (scheme case-insensitive, token after the spaces non-empty)
 * is AUTH_MISSING; the configured token, and only it, is an admin; in keys
 * mode any other token is looked up by its SHA-256 as 64 lowercase hex
 * digits; token mode refuses it outright.
 */
#include <strings.h>

#include "core/config.h"
#include "fuzz_util.h"
#include "guard/auth.h"

#define TOKEN "s3cret-static-token"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    bool keys = fuzz_byte(&in) & 1;
    char *header = fuzz_strndup(in.p, in.n);
    struct chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.auth_mode = keys ? AUTH_MODE_KEYS : AUTH_MODE_TOKEN;
    cfg.api_token = TOKEN;

    auth_identity id;
    char hash[65];
    memset(hash, 'x', sizeof hash);
    auth_result ar = auth_check(&cfg, header, &id, hash);

    /* The reference reading of the header. */
    const char *tok = NULL;
    if (strncasecmp(header, "Bearer ", 7) == 0) {
        tok = header + 7;
        while (*tok == ' ')
            tok++;
        if (!*tok)
            tok = NULL;
    }
    if (!tok) {
        FUZZ_CHECK(ar == AUTH_MISSING, "no bearer token, yet result %d", ar);
    } else if (strcmp(tok, TOKEN) == 0) {
        FUZZ_CHECK(ar == AUTH_OK && id.authenticated && id.admin, "the static token is not an admin");
    } else if (keys) {
        FUZZ_CHECK(ar == AUTH_LOOKUP, "a key token, yet result %d", ar);
        char want[65];
        auth_sha256_hex(tok, want);
        FUZZ_CHECK(strlen(hash) == 64 && strspn(hash, "0123456789abcdef") == 64 && strcmp(hash, want) == 0,
                   "lookup hash %.65s", hash);
        FUZZ_CHECK(!id.authenticated && !id.admin, "authenticated before the lookup");
    } else {
        FUZZ_CHECK(ar == AUTH_INVALID && !id.authenticated, "a wrong token, yet result %d", ar);
    }
    if (ar != AUTH_OK)
        FUZZ_CHECK(!id.authenticated && !id.admin, "an identity without AUTH_OK");
    auth_identity_clear(&id);
    free(header);
    return 0;
}
