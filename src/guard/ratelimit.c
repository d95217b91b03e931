/*
 * ratelimit.c: token buckets in a sharded hash table with bounded memory.
 *
 * Units: a bucket with limit count/window_ms holds `level` units, one token
 * being window_ms units; it is full at count * window_ms and gains count units
 * per elapsed millisecond. So "10/minute" refills exactly one token every
 * 6000 ms with integer arithmetic only. A RATELIMIT_TOKENS bucket may go below
 * zero (debits after the fact); LEVEL_FLOOR keeps every sum far from overflow.
 *
 * Each shard (chosen by the top bits of the key's hash) holds:
 * - a chained hash table of its buckets (doubled when the load passes 1);
 * - an LRU list, most recently used first;
 * - a binary min-heap ordered by full_at_ms, the time at which the bucket
 *   has refilled completely. The heap's root tells at once whether the shard
 *   has an idle bucket at time now (root->full_at_ms <= now), which is what
 *   makes "evict idle buckets first" exact without scanning every bucket.
 * Every update of a bucket recomputes full_at_ms and restores the heap order
 * (O(log n) in the shard).
 *
 * The bound: `count` (atomic) is the number of buckets held plus the slots
 * reserved by threads about to insert one. A thread needing a new bucket
 * reserves a slot first (compare-and-swap below the bound); at the bound it
 * evicts one bucket, locking one shard at a time and never while holding its
 * own shard's lock, so shards never wait on each other. Should eviction fail
 * repeatedly (only conceivable while every held bucket is being inserted
 * concurrently), the call is answered from a fresh full bucket that is not
 * stored: it fails open, never unbounded.
 */
#define _GNU_SOURCE
#include "guard/ratelimit.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define NSHARDS 64
#define SHARD_BITS 6
/* Lowest balance in units: about -1e18, far from INT64_MIN even after a maximal debit. */
#define LEVEL_FLOOR (-1000000000000000000LL)
#define RESERVE_ATTEMPTS 16

typedef struct bucket {
    struct bucket *hnext;       /* hash chain */
    struct bucket *prev, *next; /* LRU list of the shard, most recent first */
    size_t heap_idx;            /* position in the shard's heap */
    uint64_t hash;
    ratelimit_kind kind;
    int64_t count; /* limit the level is expressed in */
    int64_t window_ms;
    int64_t level;      /* units, <= count * window_ms, >= LEVEL_FLOOR */
    int64_t updated_ms; /* the time `level` is current at */
    int64_t full_at_ms; /* when the bucket is full again (idle from then on) */
    int64_t used_ms;    /* last call that touched it (LRU order across shards) */
    char key[];         /* the stored key */
} bucket;

typedef struct shard {
    pthread_mutex_t mu;
    bucket **table; /* chains, nslots of them (power of two) */
    size_t nslots;
    size_t n; /* buckets in this shard (also the heap's size) */
    bucket *lru_head, *lru_tail;
    bucket **heap; /* min-heap by full_at_ms */
    size_t heap_cap;
    char pad[64]; /* keeps neighbouring shards' mutexes off one cache line */
} shard;

struct ratelimit {
    ratelimit_spec defaults[RATELIMIT_KIND_COUNT];
    size_t max_buckets;
    _Atomic size_t count;         /* buckets held + slots reserved */
    _Atomic unsigned evict_start; /* rotates the shard where the idle search starts */
    shard shards[NSHARDS];
};

/* ---- bucket arithmetic ------------------------------------------------------- */

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a <= 0 ? 0 : (a + b - 1) / b;
}

static int64_t capacity(const bucket *b)
{
    return b->count * b->window_ms;
}

/* Brings the level up to date at now. */
static void refill(bucket *b, int64_t now)
{
    if (now <= b->updated_ms)
        return;
    int64_t elapsed = now - b->updated_ms;
    int64_t cap = capacity(b);
    b->updated_ms = now;
    if (b->level >= cap)
        return;
    int64_t need = cap - b->level;
    /* Comparing with the time to full first keeps elapsed * count below
     * need + count: no overflow however long the bucket was left alone. */
    if (elapsed >= ceil_div(need, b->count))
        b->level = cap;
    else
        b->level += elapsed * b->count;
}

static void recompute_full_at(bucket *b)
{
    b->full_at_ms = b->updated_ms + ceil_div(capacity(b) - b->level, b->count);
}

/* Re-expresses the balance under a new limit, in whole-token terms: the tokens
 * consumed stay consumed, the capacity is the new one. */
static void change_limit(bucket *b, const ratelimit_spec *s, int64_t now)
{
    if (b->count == s->count && b->window_ms == s->window_ms)
        return;
    refill(b, now);
    __int128 lv = (__int128)b->level * s->window_ms / b->window_ms;
    int64_t cap = s->count * s->window_ms;
    b->level = lv > cap ? cap : lv < LEVEL_FLOOR ? LEVEL_FLOOR : (int64_t)lv;
    b->count = s->count;
    b->window_ms = s->window_ms;
}

static void fill_result(const bucket *b, bool allowed, ratelimit_result *out)
{
    out->limited = true;
    out->allowed = allowed;
    out->limit = b->count;
    out->remaining = b->level > 0 ? b->level / b->window_ms : 0;
    out->reset_s = ceil_div(ceil_div(capacity(b) - b->level, b->count), 1000);
    out->retry_after_s = 0;
    if (!allowed) {
        int64_t ms = ceil_div(b->window_ms - b->level, b->count);
        out->retry_after_s = ms < 1000 ? 1 : ceil_div(ms, 1000);
    }
}

/* The decision itself, on an up-to-date bucket. */
static void apply_check(bucket *b, ratelimit_kind kind, ratelimit_result *out)
{
    bool allowed = b->level >= b->window_ms;
    if (allowed && kind == RATELIMIT_REQUESTS)
        b->level -= b->window_ms;
    fill_result(b, allowed, out);
}

static void apply_debit(bucket *b, int64_t amount)
{
    if (amount > RATELIMIT_MAX_COUNT)
        amount = RATELIMIT_MAX_COUNT;
    b->level -= amount * b->window_ms;
    if (b->level < LEVEL_FLOOR)
        b->level = LEVEL_FLOOR;
}

/* ---- keys ---------------------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

size_t ratelimit_key_normalise(const char *key, char out[RATELIMIT_KEYBUF])
{
    if (!key)
        key = "";
    size_t len = strlen(key);
    if (len <= RATELIMIT_MAX_KEY) {
        memcpy(out, key, len + 1);
        return len;
    }
    uint64_t whole = fnv1a(key, len, 0xcbf29ce484222325ULL);
    memcpy(out, key, RATELIMIT_MAX_KEY);
    int n =
        snprintf(out + RATELIMIT_MAX_KEY, RATELIMIT_KEYBUF - RATELIMIT_MAX_KEY, "#%016llx", (unsigned long long)whole);
    return RATELIMIT_MAX_KEY + (size_t)n;
}

/* The stored form of key in out and its hash (kind mixed in). */
static uint64_t normalise_key(const char *key, ratelimit_kind kind, char out[RATELIMIT_KEYBUF])
{
    size_t len = ratelimit_key_normalise(key, out);
    unsigned char k = (unsigned char)kind;
    uint64_t h = fnv1a((const char *)&k, 1, 0xcbf29ce484222325ULL);
    h = fnv1a(out, len, h);
    /* Final mix so that the top bits (the shard) depend on every byte. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* ---- shard structures (caller holds the shard's mutex) ------------------------ */

static bucket *find(shard *s, uint64_t h, ratelimit_kind kind, const char *key)
{
    for (bucket *b = s->table[h & (s->nslots - 1)]; b; b = b->hnext)
        if (b->hash == h && b->kind == kind && strcmp(b->key, key) == 0)
            return b;
    return NULL;
}

static void heap_swap(shard *s, size_t i, size_t j)
{
    bucket *t = s->heap[i];
    s->heap[i] = s->heap[j];
    s->heap[j] = t;
    s->heap[i]->heap_idx = i;
    s->heap[j]->heap_idx = j;
}

static void heap_fix(shard *s, size_t i)
{
    while (i > 0 && s->heap[(i - 1) / 2]->full_at_ms > s->heap[i]->full_at_ms) {
        heap_swap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->n && s->heap[l]->full_at_ms < s->heap[m]->full_at_ms)
            m = l;
        if (r < s->n && s->heap[r]->full_at_ms < s->heap[m]->full_at_ms)
            m = r;
        if (m == i)
            break;
        heap_swap(s, i, m);
        i = m;
    }
}

static void lru_unlink(shard *s, bucket *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        s->lru_head = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        s->lru_tail = b->prev;
    b->prev = b->next = NULL;
}

static void lru_push_front(shard *s, bucket *b)
{
    b->prev = NULL;
    b->next = s->lru_head;
    if (s->lru_head)
        s->lru_head->prev = b;
    s->lru_head = b;
    if (!s->lru_tail)
        s->lru_tail = b;
}

/* After a bucket changed: new full_at (heap order) and most recently used. */
static void touched(shard *s, bucket *b, int64_t now)
{
    recompute_full_at(b);
    heap_fix(s, b->heap_idx);
    if (now > b->used_ms)
        b->used_ms = now;
    if (s->lru_head != b) {
        lru_unlink(s, b);
        lru_push_front(s, b);
    }
}

static void table_grow(shard *s)
{
    size_t nslots = s->nslots * 2;
    bucket **t = chat_xcalloc(nslots, sizeof *t);
    for (size_t i = 0; i < s->nslots; i++) {
        bucket *b = s->table[i];
        while (b) {
            bucket *next = b->hnext;
            b->hnext = t[b->hash & (nslots - 1)];
            t[b->hash & (nslots - 1)] = b;
            b = next;
        }
    }
    free(s->table);
    s->table = t;
    s->nslots = nslots;
}

static bucket *insert(shard *s, uint64_t h, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                      int64_t now)
{
    size_t klen = strlen(key);
    bucket *b = chat_xcalloc(1, sizeof *b + klen + 1);
    memcpy(b->key, key, klen + 1);
    b->hash = h;
    b->kind = kind;
    b->count = spec->count;
    b->window_ms = spec->window_ms;
    b->level = capacity(b);
    b->updated_ms = now;
    b->full_at_ms = now;
    b->used_ms = now;
    if (s->n + 1 > s->nslots)
        table_grow(s);
    b->hnext = s->table[h & (s->nslots - 1)];
    s->table[h & (s->nslots - 1)] = b;
    if (s->n == s->heap_cap) {
        s->heap_cap = s->heap_cap ? s->heap_cap * 2 : 8;
        s->heap = chat_xrealloc(s->heap, s->heap_cap * sizeof *s->heap);
    }
    b->heap_idx = s->n;
    s->heap[s->n++] = b;
    heap_fix(s, b->heap_idx);
    lru_push_front(s, b);
    return b;
}

/* Unlinks b from every structure of s and frees it. */
static void remove_bucket(shard *s, bucket *b)
{
    bucket **pp = &s->table[b->hash & (s->nslots - 1)];
    while (*pp != b)
        pp = &(*pp)->hnext;
    *pp = b->hnext;
    lru_unlink(s, b);
    size_t i = b->heap_idx;
    s->n--;
    if (i != s->n) {
        s->heap[i] = s->heap[s->n];
        s->heap[i]->heap_idx = i;
        heap_fix(s, i);
    }
    free(b);
}

/* ---- the bound ------------------------------------------------------------------ */

/* Evicts one bucket: an idle one if any shard has one, else the least recently
 * used one. Locks one shard at a time. Returns false if nothing could be
 * evicted (every shard empty). */
static bool evict_one(ratelimit *rl, int64_t now)
{
    unsigned start = atomic_fetch_add_explicit(&rl->evict_start, 1, memory_order_relaxed);
    for (unsigned i = 0; i < NSHARDS; i++) {
        shard *s = &rl->shards[(start + i) % NSHARDS];
        pthread_mutex_lock(&s->mu);
        if (s->n > 0 && s->heap[0]->full_at_ms <= now) {
            remove_bucket(s, s->heap[0]);
            pthread_mutex_unlock(&s->mu);
            atomic_fetch_sub_explicit(&rl->count, 1, memory_order_relaxed);
            return true;
        }
        pthread_mutex_unlock(&s->mu);
    }
    int best = -1;
    int64_t best_used = 0;
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = &rl->shards[i];
        pthread_mutex_lock(&s->mu);
        if (s->lru_tail && (best < 0 || s->lru_tail->used_ms < best_used)) {
            best = i;
            best_used = s->lru_tail->used_ms;
        }
        pthread_mutex_unlock(&s->mu);
    }
    if (best < 0)
        return false;
    shard *s = &rl->shards[best];
    bool done = false;
    pthread_mutex_lock(&s->mu);
    if (s->lru_tail) {
        remove_bucket(s, s->lru_tail);
        done = true;
    }
    pthread_mutex_unlock(&s->mu);
    if (done)
        atomic_fetch_sub_explicit(&rl->count, 1, memory_order_relaxed);
    return done;
}

/* Reserves room for one new bucket, evicting if at the bound. */
static bool reserve(ratelimit *rl, int64_t now)
{
    for (int attempt = 0; attempt < RESERVE_ATTEMPTS; attempt++) {
        size_t c = atomic_load_explicit(&rl->count, memory_order_relaxed);
        while (c < rl->max_buckets)
            if (atomic_compare_exchange_weak_explicit(&rl->count, &c, c + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                return true;
        if (!evict_one(rl, now) && attempt > 0)
            break;
    }
    return false;
}

/* ---- public -------------------------------------------------------------------- */

ratelimit *ratelimit_new(const ratelimit_config *cfg)
{
    assert(cfg->max_buckets >= 1 && ratelimit_spec_valid(&cfg->requests) && ratelimit_spec_valid(&cfg->tokens));
    ratelimit *rl = chat_xcalloc(1, sizeof *rl);
    rl->defaults[RATELIMIT_REQUESTS] = ratelimit_spec_valid(&cfg->requests) ? cfg->requests : (ratelimit_spec){ 0, 0 };
    rl->defaults[RATELIMIT_TOKENS] = ratelimit_spec_valid(&cfg->tokens) ? cfg->tokens : (ratelimit_spec){ 0, 0 };
    rl->max_buckets = cfg->max_buckets ? cfg->max_buckets : 1;
    atomic_init(&rl->count, 0);
    atomic_init(&rl->evict_start, 0);
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = &rl->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        s->nslots = 8;
        s->table = chat_xcalloc(s->nslots, sizeof *s->table);
    }
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (!rl)
        return;
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = &rl->shards[i];
        bucket *b = s->lru_head;
        while (b) {
            bucket *next = b->next;
            free(b);
            b = next;
        }
        free(s->table);
        free(s->heap);
        pthread_mutex_destroy(&s->mu);
    }
    free(rl);
}

bool ratelimit_default_on(const ratelimit *rl, ratelimit_kind kind)
{
    return rl->defaults[kind].count > 0;
}

size_t ratelimit_size(const ratelimit *rl)
{
    size_t n = 0;
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = (shard *)&rl->shards[i];
        pthread_mutex_lock(&s->mu);
        n += s->n;
        pthread_mutex_unlock(&s->mu);
    }
    return n;
}

/* The limit to apply, or NULL when it is off. */
static const ratelimit_spec *effective(const ratelimit *rl, ratelimit_kind kind, const ratelimit_spec *spec)
{
    if ((unsigned)kind >= RATELIMIT_KIND_COUNT)
        return NULL;
    if (!spec)
        spec = &rl->defaults[kind];
    assert(ratelimit_spec_valid(spec));
    return spec->count > 0 && ratelimit_spec_valid(spec) ? spec : NULL;
}

typedef enum { OP_CHECK, OP_DEBIT } op_kind;

/* Brings b up to date under spec at now, applies the operation, and
 * records the touch. Caller holds s->mu. */
static void operate(shard *s, bucket *b, op_kind op, ratelimit_kind kind, const ratelimit_spec *spec, int64_t amount,
                    int64_t now, ratelimit_result *out)
{
    change_limit(b, spec, now);
    refill(b, now);
    if (op == OP_CHECK)
        apply_check(b, kind, out);
    else
        apply_debit(b, amount);
    touched(s, b, now);
}

/* Answers a check from a full bucket that is not stored. */
static void check_full(const ratelimit_spec *spec, ratelimit_kind kind, ratelimit_result *out)
{
    bucket full = { .count = spec->count, .window_ms = spec->window_ms };
    full.level = capacity(&full);
    apply_check(&full, kind, out);
}

/* The common path of check and debit: find or create the bucket and operate
 * on it, under the shard's lock. Creating a bucket first drops the lock to
 * reserve room (which may evict from any shard), then looks again. */
static void run(ratelimit *rl, op_kind op, ratelimit_kind kind, const char *key, const ratelimit_spec *spec,
                int64_t amount, int64_t now, ratelimit_result *out)
{
    char k[RATELIMIT_KEYBUF];
    uint64_t h = normalise_key(key, kind, k);
    shard *s = &rl->shards[h >> (64 - SHARD_BITS)];

    pthread_mutex_lock(&s->mu);
    bucket *b = find(s, h, kind, k);
    if (b) {
        operate(s, b, op, kind, spec, amount, now, out);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    pthread_mutex_unlock(&s->mu);

    if (op == OP_CHECK && kind == RATELIMIT_TOKENS) {
        /* A missing bucket is a full one, and a tokens check takes nothing:
         * answer without creating it. */
        check_full(spec, kind, out);
        return;
    }
    bool reserved = reserve(rl, now);

    pthread_mutex_lock(&s->mu);
    b = find(s, h, kind, k);
    if (b && reserved)
        atomic_fetch_sub_explicit(&rl->count, 1, memory_order_relaxed); /* created meanwhile */
    else if (!b && reserved)
        b = insert(s, h, kind, k, spec, now);
    if (b)
        operate(s, b, op, kind, spec, amount, now, out);
    else if (op == OP_CHECK)
        check_full(spec, kind, out); /* no room even after eviction: fail open */
    pthread_mutex_unlock(&s->mu);
}

void ratelimit_check(ratelimit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec, int64_t now_ms,
                     ratelimit_result *out)
{
    memset(out, 0, sizeof *out);
    out->allowed = true;
    const ratelimit_spec *eff = effective(rl, kind, spec);
    if (!eff)
        return;
    run(rl, OP_CHECK, kind, key, eff, 0, now_ms, out);
}

void ratelimit_debit(ratelimit *rl, ratelimit_kind kind, const char *key, const ratelimit_spec *spec, int64_t amount,
                     int64_t now_ms)
{
    const ratelimit_spec *eff = effective(rl, kind, spec);
    if (!eff || amount <= 0)
        return;
    run(rl, OP_DEBIT, kind, key, eff, amount, now_ms, NULL);
}

void ratelimit_headers(const ratelimit_result *res, ratelimit_header_fn add, void *ud)
{
    if (!res->limited)
        return;
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)res->limit);
    add(ud, "RateLimit-Limit", v);
    snprintf(v, sizeof v, "%lld", (long long)res->remaining);
    add(ud, "RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%lld", (long long)res->reset_s);
    add(ud, "RateLimit-Reset", v);
    if (!res->allowed) {
        snprintf(v, sizeof v, "%lld", (long long)res->retry_after_s);
        add(ud, "Retry-After", v);
    }
}
