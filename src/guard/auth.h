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
 * Two steps, so that the key lookup can go through the asynchronous store:
 * auth_check decides from the header alone, or answers AUTH_LOOKUP with the
 * hash to look up (STORE_OP_KEY_FIND_BY_HASH), whose result auth_key_found
 * turns into the identity.
 */
#ifndef CHATD_GUARD_AUTH_H
#define CHATD_GUARD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "core/config.h"
#include "store/store.h"

typedef struct auth_identity {
    bool authenticated; /* false in mode none */
    bool admin;         /* admin keys and the static token see every session */
    /* The API key's id, "" for mode none and the static token. Sized for the
     * longest id the store holds (STORE_ID_MAX, enforced by `chatd keys
     * create` and `chatd import`): an id is never cut, since sessions, usage,
     * idempotency records and limits are all keyed by it. */
    char key_id[STORE_ID_MAX + 1];
    char *rate_limit; /* the key's own rate limit spec, or NULL (owned) */
} auth_identity;

typedef enum {
    AUTH_OK = 0,
    AUTH_MISSING,     /* no Authorization: Bearer header */
    AUTH_INVALID,     /* wrong token, unknown or revoked key */
    AUTH_UNAVAILABLE, /* the key store could not be read */
    AUTH_LOOKUP,      /* auth_check only: look the key up by hash, then auth_key_found */
} auth_result;

/* The configured mode's name, for logs and messages: "none", "token" or "keys". */
const char *auth_mode_name(const struct chat_config *cfg);

/* True when requests must carry credentials. */
bool auth_required(const struct chat_config *cfg);

/*
 * Authenticates a request from its Authorization header value (may be NULL).
 * Fills *out (clear it with auth_identity_clear). With mode none, every request
 * is AUTH_OK as an anonymous admin-less caller. AUTH_LOOKUP (mode keys, not the
 * static token): hash holds the secret's SHA-256 (hex) to look up.
 */
auth_result auth_check(const struct chat_config *cfg, const char *authorization, auth_identity *out, char hash[65]);

/* The identity from a key lookup's result (rc and key of STORE_OP_KEY_FIND_BY_HASH):
 * AUTH_OK, AUTH_INVALID (unknown or revoked, or an id that does not fit
 * key_id, which the store never holds) or AUTH_UNAVAILABLE. Takes the key's
 * rate_limit string. */
auth_result auth_key_found(chat_rc rc, store_key *k, auth_identity *out);

/* True when the key's last_used_at is due for an update (STORE_KEY_TOUCH_MS). */
bool auth_touch_due(const store_key *k, int64_t now);

void auth_identity_clear(auth_identity *id);

/* Lowercase hex SHA-256 of s into out (65 bytes). */
void auth_sha256_hex(const char *s, char out[65]);

/* A new random secret "chatd_" + 48 hex digits into out (at least 60 bytes). */
void auth_new_secret(char *out, size_t outlen);

/* True if id may see a session owned by owner (admins see all; NULL owner = created without auth). */
bool auth_can_access(const auth_identity *id, const char *owner);

#endif
