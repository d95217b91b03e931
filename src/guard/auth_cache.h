/*
 * auth_cache.h: a small cache of API key hashes the store recently did not
 * know (a negative cache), so that a bearer token repeated by a client that
 * has no valid key is refused without asking the database every time.
 *
 * Only misses are cached: an unknown secret's SHA-256, or a revoked key's
 * (revocation is final). A key that is found is never cached, so a
 * revocation takes effect at the next request, and each valid request still
 * costs one lookup. An entry lives ttl_ms (AUTH_NEGCACHE_TTL_MS in the
 * server): a key created (or imported) after its secret was refused works
 * at the latest ttl_ms later.
 *
 * Memory is fixed at creation: `entries` slots in sets of AUTH_NEGCACHE_WAYS
 * (set-associative, indexed by the hash's first bytes: SHA-256 output is
 * uniform, and a client cannot aim at one set without finding SHA-256
 * pre-images of its choosing). A full set replaces an expired entry, else its
 * oldest one. Nothing is allocated after creation.
 *
 * Time is never read here: calls take now_ms (monotonic milliseconds).
 *
 * Thread: none inside. The server keeps one cache per worker, used only on
 * that worker's loop, so no lock is needed.
 */
#ifndef CHATD_GUARD_AUTH_CACHE_H
#define CHATD_GUARD_AUTH_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_NEGCACHE_WAYS 4
#define AUTH_NEGCACHE_ENTRIES 1024 /* the server's size, per worker */
#define AUTH_NEGCACHE_TTL_MS 5000  /* the server's entry lifetime */

typedef struct auth_negcache auth_negcache;

/* Creates an empty cache of at least `entries` slots (rounded up to a power
 * of two sets of AUTH_NEGCACHE_WAYS; at least one set), each entry living
 * ttl_ms (>= 1). Never returns NULL (aborts on OOM). Free with
 * auth_negcache_free. */
auth_negcache *auth_negcache_new(size_t entries, int64_t ttl_ms);

/* Frees the cache. Accepts NULL. */
void auth_negcache_free(auth_negcache *c);

/* True when hash (64 lowercase hex digits and a NUL, as auth_sha256_hex
 * writes it) was added less than ttl_ms before now_ms. Anything that is not
 * such a hash is never cached. c NULL: false. */
bool auth_negcache_contains(const auth_negcache *c, const char *hash, int64_t now_ms);

/* Records hash as unknown at now_ms (an entry already there restarts its
 * lifetime). Ignores what is not a hash as above, and c NULL. */
void auth_negcache_add(auth_negcache *c, const char *hash, int64_t now_ms);

/* Number of slots (the bound on entries). */
size_t auth_negcache_capacity(const auth_negcache *c);

/* Entries alive at now_ms (for tests and diagnostics; walks every slot). */
size_t auth_negcache_live(const auth_negcache *c, int64_t now_ms);

#endif
