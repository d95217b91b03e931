/*
 * auth.h: who is calling. Three modes (AUTH_MODE):
 *   none   no credentials (development). The server then refuses to listen on a
 *          non-loopback address unless ALLOW_UNAUTHENTICATED=on.
 *   token  one static bearer token (API_TOKEN), as the template does; it acts
 *          as an admin.
 *   keys   API keys managed with `chatd keys create|list|revoke`, stored as
 *          SHA-256 hashes; each has a role (user or admin) and may carry its own
 *          rate limit. API_TOKEN, if also set, still works as an admin token.
 *
 * Comparison is constant-time for the static token (CRYPTO_memcmp of SHA-256
 * digests, so the lengths are equal too). Keys are looked up by the hash of the
 * presented secret: the lookup's timing depends only on a hash, which tells an
 * attacker nothing about any secret.
 *
 * Thread: auth_check runs on a worker thread with that worker's store handle.
 */
#ifndef CHATD_GUARD_AUTH_H
#define CHATD_GUARD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "core/config.h"
#include "store/store.h"

typedef struct auth_identity {
    bool authenticated;     /* false in mode none */
    bool admin;             /* admin keys and the static token see every session */
    char key_id[64];        /* the API key's id, "" for mode none and the static token */
    char *rate_limit;       /* the key's own rate limit spec, or NULL (owned) */
} auth_identity;

typedef enum {
    AUTH_OK = 0,
    AUTH_MISSING,           /* no Authorization: Bearer header */
    AUTH_INVALID,           /* wrong token, unknown or revoked key */
    AUTH_UNAVAILABLE,       /* the key store could not be read */
} auth_result;

/* The configured mode: "none", "token" or "keys". */
const char *auth_mode_name(const struct chat_config *cfg);

/* True when requests must carry credentials. */
bool auth_required(const struct chat_config *cfg);

/*
 * Authenticates a request from its Authorization header value (may be NULL).
 * Fills *out (clear it with auth_identity_clear). With mode none, every request
 * is AUTH_OK as an anonymous admin-less caller.
 */
auth_result auth_check(const struct chat_config *cfg, store *db, const char *authorization,
                       auth_identity *out);

void auth_identity_clear(auth_identity *id);

/* Lowercase hex SHA-256 of s into out (65 bytes). */
void auth_sha256_hex(const char *s, char out[65]);

/* A new random secret "chatd_" + 48 hex digits into out (at least 60 bytes). */
void auth_new_secret(char *out, size_t outlen);

/* True if id may see a session owned by owner (admins see all; NULL owner = created without auth). */
bool auth_can_access(const auth_identity *id, const char *owner);

#endif
