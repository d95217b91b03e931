/*
 * ratelimit.h: token-bucket rate limits shared by every worker thread.
 *
 * A limit ("10/minute") is a bucket of `count` tokens that refills
 * continuously at count tokens per window (here: one token every 6 s), so a
 * burst of up to `count` is allowed after a quiet period and the long-run rate
 * never exceeds the limit. Arithmetic is exact: a token is window_ms units and
 * the bucket gains `count` units per millisecond, all in int64.
 *
 * Two kinds of bucket, kept apart even for the same key:
 * - RATELIMIT_REQUESTS: ratelimit_check takes one token per request, or
 *   refuses when less than one is left.
 * - RATELIMIT_TOKENS: provider tokens per window. The cost of a turn is only
 *   known after it ran, so ratelimit_check only tests (allowed while at least
 *   one token is left, nothing taken) and ratelimit_debit subtracts the turn's
 *   actual token count afterwards. The balance may go negative; requests are
 *   then refused until refilling brings it back to one token.
 *
 * Buckets are keyed by (kind, key), the key being an API key id or a client
 * address. Keys longer than RATELIMIT_MAX_KEY bytes are stored as their first
 * bytes plus a 64-bit hash of the whole key.
 *
 * Per-key limits: every call takes the limit to apply (`spec`; NULL = the
 * limiter's default for that kind), so an API key carrying its own limit
 * passes it. If the limit of an existing bucket changes, its balance is
 * carried over in tokens (clamped to the new capacity).
 *
 * Memory is bounded by max_buckets. At the bound, a new bucket first evicts an
 * idle one, i.e. one that has refilled completely: a missing bucket behaves
 * exactly as a full one, so forgetting it loses nothing. Only when no bucket
 * anywhere is idle is the least recently used one evicted (which forgets its
 * consumption: the price of a bound under a flood of distinct keys).
 *
 * Time is never read here: every call takes now_ms, a monotonic clock in
 * milliseconds (chat_mono_ms() in the server, any value in tests). A call with
 * a now_ms older than the bucket's last update counts as no time elapsed.
 *
 * Thread: a ratelimit is shared by all workers. Buckets live in 64 shards,
 * each a hash table with its own mutex held only for the few arithmetic
 * operations of one call; eviction (only at the bound) locks one shard at a
 * time. No call blocks on I/O.
 */
#ifndef CHATD_GUARD_RATELIMIT_H
#define CHATD_GUARD_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rate.h"
#include "core/rc.h"

#define RATELIMIT_MAX_COUNT CHAT_RATE_MAX_COUNT         /* largest N in "N/unit" */
#define RATELIMIT_MAX_KEY 259                           /* key bytes stored verbatim */
#define RATELIMIT_MAX_WINDOW_MS CHAT_RATE_MAX_WINDOW_MS /* longest window a spec may have */
/* RATELIMIT_MAX_KEY holds "key:" + the longest API key id (255 bytes, the store's
 * STORE_ID_MAX) verbatim: the limits of two keys never depend on a hash. */
/* A normalised key with its NUL: the verbatim prefix, '#', 16 hex digits. */
#define RATELIMIT_KEYBUF (RATELIMIT_MAX_KEY + 18)

/* A limit: count tokens per window_ms, the rate of core/rate.h. count == 0
 * means "off" (no limit). */
typedef chat_rate ratelimit_spec;

/* True for a spec this module accepts: off, or count and window_ms in range
 * (chat_rate_valid). */
static inline bool ratelimit_spec_valid(const ratelimit_spec *s)
{
    return chat_rate_valid(s);
}

/*
 * The form a key is stored under (here and in Redis, see redis_limit.h): key
 * itself when at most RATELIMIT_MAX_KEY bytes, else its first
 * RATELIMIT_MAX_KEY bytes, '#' and 16 hex digits of a hash of the whole key,
 * so that the stored form is bounded and distinct keys stay distinct. NULL is
 * the empty key. Writes it into out with its NUL and returns its length.
 */
size_t ratelimit_key_normalise(const char *key, char out[RATELIMIT_KEYBUF]);

/* Parses "N/second", "N/minute", "N/hour" or "off": chat_rate_parse (see
 * core/rate.h for the syntax, the bounds and the error text). */
static inline CHAT_MUST_CHECK chat_rc ratelimit_spec_parse(const char *text, ratelimit_spec *out, char *err,
                                                           size_t errlen)
{
    return chat_rate_parse(text, out, err, errlen);
}

typedef enum {
    RATELIMIT_REQUESTS = 0, /* one token per request, taken by ratelimit_check */
    RATELIMIT_TOKENS,       /* provider tokens, taken by ratelimit_debit */
    RATELIMIT_KIND_COUNT
} ratelimit_kind;

typedef struct ratelimit_config {
    ratelimit_spec requests; /* default limit of RATELIMIT_REQUESTS buckets (count 0: off) */
    ratelimit_spec tokens;   /* default limit of RATELIMIT_TOKENS buckets (count 0: off) */
    size_t max_buckets;      /* bound on buckets of both kinds together, >= 1 */
} ratelimit_config;

typedef struct ratelimit ratelimit;

/* Creates a limiter (cfg is copied). Never returns NULL (aborts on OOM). An
 * invalid cfg (max_buckets 0, a spec out of range) is a programming error:
 * asserted; in release builds max_buckets 0 becomes 1. Start-up, one thread. */
ratelimit *ratelimit_new(const ratelimit_config *cfg);

/* Frees the limiter and its buckets. Accepts NULL. No other thread may use it. */
void ratelimit_free(ratelimit *rl);

/* What one check decided, and what the response headers need. */
typedef struct ratelimit_result {
    bool limited;          /* a limit applies; false when it is off (then allowed is true and
                                no header is sent) */
    bool allowed;          /* the request may proceed */
    int64_t limit;         /* RateLimit-Limit: the limit's count */
    int64_t remaining;     /* RateLimit-Remaining: whole tokens left after this call, >= 0 */
    int64_t reset_s;       /* RateLimit-Reset: seconds until the bucket is full again (0 if full) */
    int64_t retry_after_s; /* Retry-After when !allowed: seconds until one token is back (>= 1);
                                0 when allowed */
} ratelimit_result;

/*
 * Checks key against its limit of the given kind at now_ms and fills *out.
 * spec is the key's own limit, or NULL for the limiter's default of this kind.
 * RATELIMIT_REQUESTS takes one token when allowed (a refused request takes
 * nothing). RATELIMIT_TOKENS takes nothing: allowed while the balance is at
 * least one token. A key with no bucket counts as full; a RATELIMIT_TOKENS
 * check does not create one. key NULL is the empty key. Any thread.
 */
void ratelimit_check(ratelimit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec, int64_t now_ms,
                     ratelimit_result *out);

/*
 * Subtracts amount tokens (the turn's actual token count; <= 0 is ignored,
 * values above RATELIMIT_MAX_COUNT count as that) from key's bucket of the
 * given kind, creating it full if needed. The balance may go negative. spec as
 * for ratelimit_check (a limit that is off makes this a no-op). In the
 * fail-open case described in ratelimit.c (no room even after eviction) the
 * debit is dropped. Any thread.
 */
void ratelimit_debit(ratelimit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec, int64_t amount,
                     int64_t now_ms);

/* Whether the limiter's default limit of this kind is on (count > 0): with it
 * off, a check or debit with spec NULL does nothing. Any thread. */
bool ratelimit_default_on(const ratelimit *rl, ratelimit_kind kind);

/* Number of buckets currently held (<= max_buckets). Any thread. */
size_t ratelimit_size(const ratelimit *rl);

/* Receives one response header (name and value are valid during the call only). */
typedef void (*ratelimit_header_fn)(void *ud, const char *name, const char *value);

/*
 * Emits the headers for res through add: RateLimit-Limit, RateLimit-Remaining,
 * RateLimit-Reset (IETF draft-ietf-httpapi-ratelimit-headers, delta seconds),
 * and Retry-After when the request was refused. Emits nothing when the limit
 * is off (res->limited false).
 */
void ratelimit_headers(const ratelimit_result *res, ratelimit_header_fn add, void *ud);

#endif
