/*
 * auth.c: bearer tokens and API keys (see auth.h).
 */
#include "guard/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/util.h"

void auth_sha256_hex(const char *s, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hex[] = "0123456789abcdef";
    EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

void auth_new_secret(char *out, size_t outlen)
{
    chat_random_id(out, outlen, "chatd_", 24);
}

const char *auth_mode_name(const struct chat_config *cfg)
{
    switch (cfg->auth_mode) {
    case AUTH_MODE_TOKEN: return "token";
    case AUTH_MODE_KEYS: return "keys";
    case AUTH_MODE_NONE:
    default: return "none";
    }
}

bool auth_required(const struct chat_config *cfg)
{
    return cfg->auth_mode != AUTH_MODE_NONE;
}

bool auth_can_access(const auth_identity *id, const char *owner)
{
    if (!id->authenticated || id->admin)
        return true;
    return owner && strcmp(owner, id->key_id) == 0;
}

void auth_identity_clear(auth_identity *id)
{
    if (!id)
        return;
    free(id->rate_limit);
    memset(id, 0, sizeof *id);
}

/* The token of "Bearer <token>" (scheme case-insensitive), or NULL. */
static const char *bearer(const char *h)
{
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

static bool token_matches(const char *presented, const char *configured)
{
    char a[65], b[65];
    auth_sha256_hex(presented, a);
    auth_sha256_hex(configured, b);
    return CRYPTO_memcmp(a, b, 64) == 0;
}

auth_result auth_check(const struct chat_config *cfg, const char *authorization, auth_identity *out, char hash[65])
{
    memset(out, 0, sizeof *out);
    hash[0] = '\0';
    if (cfg->auth_mode == AUTH_MODE_NONE)
        return AUTH_OK;
    const char *tok = bearer(authorization);
    if (!tok)
        return AUTH_MISSING;
    if (cfg->api_token && *cfg->api_token && token_matches(tok, cfg->api_token)) {
        out->authenticated = true;
        out->admin = true;
        return AUTH_OK;
    }
    if (cfg->auth_mode != AUTH_MODE_KEYS)
        return AUTH_INVALID;
    auth_sha256_hex(tok, hash);
    return AUTH_LOOKUP;
}

auth_result auth_key_found(chat_rc rc, store_key *k, auth_identity *out)
{
    memset(out, 0, sizeof *out);
    if (rc == CHAT_ENOTFOUND)
        return AUTH_INVALID;
    if (rc != CHAT_OK)
        return AUTH_UNAVAILABLE;
    if (!k->id || !*k->id || strlen(k->id) >= sizeof out->key_id)
        return AUTH_INVALID; /* not a key this chatd can represent (the store refuses such ids) */
    out->authenticated = true;
    out->admin = k->role && strcmp(k->role, "admin") == 0;
    memcpy(out->key_id, k->id, strlen(k->id) + 1);
    out->rate_limit = k->rate_limit;
    k->rate_limit = NULL;
    return AUTH_OK;
}

bool auth_touch_due(const store_key *k, int64_t now)
{
    return k->last_used_at <= now - STORE_KEY_TOUCH_MS;
}
