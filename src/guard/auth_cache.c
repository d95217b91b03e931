/*
 * auth_cache.c: the negative cache of unknown API key hashes (see
 * auth_cache.h). A flat array of sets, each AUTH_NEGCACHE_WAYS slots holding
 * a 32-byte digest and the time it was added; the set is picked by the
 * digest's first four bytes masked to the (power of two) number of sets.
 */
#include "guard/auth_cache.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/util.h"

typedef struct slot {
    unsigned char digest[32];
    int64_t added_ms; /* when it was added */
    bool used;
} slot;

struct auth_negcache {
    size_t nsets; /* a power of two */
    int64_t ttl_ms;
    slot slots[]; /* nsets * AUTH_NEGCACHE_WAYS */
};

auth_negcache *auth_negcache_new(size_t entries, int64_t ttl_ms)
{
    size_t nsets = 1;
    while (nsets * AUTH_NEGCACHE_WAYS < entries && nsets < ((size_t)1 << 24))
        nsets <<= 1;
    auth_negcache *c = chat_xcalloc(1, sizeof *c + nsets * AUTH_NEGCACHE_WAYS * sizeof(slot));
    c->nsets = nsets;
    c->ttl_ms = ttl_ms < 1 ? 1 : ttl_ms;
    return c;
}

void auth_negcache_free(auth_negcache *c)
{
    free(c);
}

/* 64 lowercase hex digits then NUL -> 32 bytes; false for anything else. */
static bool decode(const char *hash, unsigned char out[32])
{
    if (!hash)
        return false;
    for (int i = 0; i < 32; i++) {
        int hi = chat_hex_lower((unsigned char)hash[2 * i]),
            lo = hi < 0 ? -1 : chat_hex_lower((unsigned char)hash[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return hash[64] == '\0';
}

static slot *set_of(const auth_negcache *c, const unsigned char d[32])
{
    size_t idx = ((size_t)d[0] | (size_t)d[1] << 8 | (size_t)d[2] << 16 | (size_t)d[3] << 24) & (c->nsets - 1);
    return (slot *)&c->slots[idx * AUTH_NEGCACHE_WAYS];
}

static bool alive(const auth_negcache *c, const slot *s, int64_t now_ms)
{
    /* A clock that went backwards (never with a monotonic one) counts as no time elapsed. */
    return s->used && (now_ms < s->added_ms || now_ms - s->added_ms < c->ttl_ms);
}

bool auth_negcache_contains(const auth_negcache *c, const char *hash, int64_t now_ms)
{
    unsigned char d[32];
    if (!c || !decode(hash, d))
        return false;
    const slot *set = set_of(c, d);
    for (int i = 0; i < AUTH_NEGCACHE_WAYS; i++)
        if (alive(c, &set[i], now_ms) && memcmp(set[i].digest, d, 32) == 0)
            return true;
    return false;
}

void auth_negcache_add(auth_negcache *c, const char *hash, int64_t now_ms)
{
    unsigned char d[32];
    if (!c || !decode(hash, d))
        return;
    slot *set = set_of(c, d), *match = NULL, *unused = NULL, *oldest = NULL;
    for (int i = 0; i < AUTH_NEGCACHE_WAYS && !match; i++) {
        if (set[i].used && memcmp(set[i].digest, d, 32) == 0)
            match = &set[i]; /* already there: restart its lifetime */
        else if (!alive(c, &set[i], now_ms))
            unused = unused ? unused : &set[i];
        else if (!oldest || set[i].added_ms < oldest->added_ms)
            oldest = &set[i];
    }
    slot *victim = match ? match : unused ? unused : oldest;
    memcpy(victim->digest, d, 32);
    victim->added_ms = now_ms;
    victim->used = true;
}

size_t auth_negcache_capacity(const auth_negcache *c)
{
    return c ? c->nsets * AUTH_NEGCACHE_WAYS : 0;
}

size_t auth_negcache_live(const auth_negcache *c, int64_t now_ms)
{
    size_t n = 0;
    for (size_t i = 0; c && i < c->nsets * AUTH_NEGCACHE_WAYS; i++)
        if (alive(c, &c->slots[i], now_ms))
            n++;
    return n;
}
