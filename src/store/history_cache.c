/*
 * history_cache.c: the tail-read cache of history_cache.h.
 *
 * A chained hash table of entries keyed by session id. An entry either holds
 * messages (it is then on the LRU list and counts in bytes) or is pinned by
 * misses being filled; one that is neither is freed at once. Each entry holds
 * the tail it was read for: the newest messages, taken newest first while the
 * tokens taken so far (unknown counts as 0) do not exceed `tail` (the rule of
 * the database's tail read), or the whole session (`whole`).
 */
#include "store/history_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json_out.h"
#include "store/backend.h"
#include "store/metrics.h"

typedef struct entry {
    char *sid;
    uint64_t hash;
    uint64_t gen;        /* bumped by every write to the session */
    int pins;            /* misses being filled */
    int writers;         /* changes in flight (write_begin without its write_end) */
    bool has;            /* msgs are valid */
    bool whole;          /* msgs are the whole session */
    store_message *msgs; /* oldest first */
    size_t n, cap;
    int64_t tail;  /* the tail_tokens msgs were read (and trimmed) for */
    int64_t total; /* the session's message count */
    size_t bytes;
    struct entry *hnext;
    struct entry *newer, *older; /* LRU list, while has */
} entry;

struct history_cache {
    pthread_mutex_t mu;
    size_t max_bytes;
    size_t bytes;
    size_t nbuckets; /* a power of two */
    size_t nentries;
    size_t nkept;    /* entries with messages */
    int writers_all; /* sweeps in flight (write_begin(NULL)) */
    entry **buckets;
    entry *newest, *oldest;
};

static uint64_t hash_of(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* What malloc spends on one block besides its bytes (glibc: a size word,
 * rounded to 16), so that the bound is on memory, not on text. */
#define BLOCK_OVERHEAD 16

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

/* A cached message keeps its strings in one block, in this order, after a
 * header (msg_hdr). The small, repeated strings (role, status, model, stop
 * reason) would otherwise cost a malloc chunk each, several times their text. */
#define MSG_STRINGS(m)                                                                        \
    {                                                                                         \
        &(m)->role, &(m)->content, &(m)->blocks, &(m)->status, &(m)->model, &(m)->stop_reason \
    }

/*
 * The header of a message's block: how many hold the block: the cache while it keeps the message, and each read that returned it
 * until its store_messages_free. A block never changes once made, so a read
 * shares it instead of copying it: late in a long session a copy was a
 * megabyte per turn (history_cache.h). Whoever drops the last hold frees it,
 * on any thread.
 */
typedef struct msg_hdr {
    atomic_size_t holds;
} msg_hdr;

/* The memory of a cached copy of m, its slot in the entry's array aside. */
static size_t msg_bytes(const store_message *m)
{
    char *const *f[] = MSG_STRINGS((store_message *)m);
    size_t n = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        n += str_size(*f[i]);
    return n ? sizeof(msg_hdr) + n + BLOCK_OVERHEAD : 0;
}

/* The cache's copy of src, its strings packed in one block held once. */
static void msg_pack(store_message *dst, const store_message *src)
{
    *dst = *src;
    dst->packed = false;
    dst->content_len = 0;
    dst->content_plain = false;
    char **f[] = MSG_STRINGS(dst);
    size_t size[sizeof f / sizeof f[0]]; /* each string measured once */
    size_t total = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        total += size[i] = str_size(*f[i]);
    if (total == 0)
        return;
    msg_hdr *h = chat_xmalloc(sizeof *h + total);
    atomic_init(&h->holds, 1);
    char *p = (char *)(h + 1);
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (!*f[i])
            continue;
        memcpy(p, *f[i], size[i]);
        *f[i] = p;
        p += size[i];
        /* Measured once here, for every turn that sends this message (store.h). */
        if (f[i] == &dst->content)
            dst->content_len = size[i] - 1;
    }
    dst->content_plain = dst->content && chat_json_plain(dst->content, dst->content_len);
}

/* The block of a cached message (msg_pack), or NULL: it has no strings. */
static msg_hdr *msg_block(const store_message *m)
{
    char *const *f[] = MSG_STRINGS((store_message *)m);
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (*f[i])
            return (msg_hdr *)*f[i] - 1;
    return NULL;
}

static void msg_hold(const store_message *m)
{
    msg_hdr *h = msg_block(m);
    if (h)
        atomic_fetch_add_explicit(&h->holds, 1, memory_order_relaxed);
}

/* Drops one hold of m's block; the last one frees it. */
static void msg_release(const store_message *m)
{
    msg_hdr *h = msg_block(m);
    if (h && atomic_fetch_sub_explicit(&h->holds, 1, memory_order_acq_rel) == 1)
        free(h);
}

/* The caller's view of msgs[0..k): an array of their records whose strings
 * are the cache's blocks, each held once more (store_message.packed), so that
 * a read is one allocation and no copy of text, however long the history. */
static store_message *msgs_share(const store_message *msgs, size_t k)
{
    store_message *arr = chat_xmalloc(k * sizeof *arr);
    for (size_t i = 0; i < k; i++) {
        arr[i] = msgs[i];
        msg_hold(&msgs[i]);
        arr[i].packed = i == 0;
    }
    return arr;
}

void history_cache_messages_release(store_message *arr, size_t n)
{
    for (size_t i = 0; i < n; i++)
        msg_release(&arr[i]);
    free(arr);
}

history_cache *history_cache_new(size_t max_bytes)
{
    history_cache *c = chat_xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->max_bytes = max_bytes;
    c->nbuckets = 64;
    c->buckets = chat_xcalloc(c->nbuckets, sizeof *c->buckets);
    return c;
}

/* ---- LRU list and messages ---- */

/* Every change of the bytes held goes through here (and the gauge). */
static void bytes_add(history_cache *c, entry *e, int64_t delta)
{
    c->bytes = (size_t)((int64_t)c->bytes + delta);
    e->bytes = (size_t)((int64_t)e->bytes + delta);
    metrics_history_bytes(delta);
}

static void lru_unlink(history_cache *c, entry *e)
{
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void lru_push(history_cache *c, entry *e)
{
    e->newer = NULL;
    e->older = c->newest;
    if (c->newest)
        c->newest->newer = e;
    c->newest = e;
    if (!c->oldest)
        c->oldest = e;
}

static void drop_msgs(history_cache *c, entry *e)
{
    if (!e->has)
        return;
    for (size_t i = 0; i < e->n; i++)
        msg_release(&e->msgs[i]);
    free(e->msgs);
    e->msgs = NULL;
    e->n = e->cap = 0;
    bytes_add(c, e, -(int64_t)e->bytes);
    e->has = false;
    c->nkept--;
    lru_unlink(c, e);
}

/* ---- the table ---- */

static entry **slot_of(history_cache *c, const char *sid, uint64_t h)
{
    entry **pp = &c->buckets[h & (c->nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->sid, sid) != 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void grow(history_cache *c)
{
    size_t nb = c->nbuckets * 2;
    entry **b = chat_xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < c->nbuckets; i++) {
        entry *e = c->buckets[i];
        while (e) {
            entry *next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

static entry *find(history_cache *c, const char *sid)
{
    return *slot_of(c, sid, hash_of(sid));
}

static entry *find_or_add(history_cache *c, const char *sid)
{
    uint64_t h = hash_of(sid);
    entry **pp = slot_of(c, sid, h);
    if (*pp)
        return *pp;
    entry *e = chat_xcalloc(1, sizeof *e);
    e->sid = chat_xstrdup(sid);
    e->hash = h;
    *pp = e;
    c->nentries++;
    if (c->nentries > c->nbuckets)
        grow(c);
    return e;
}

/* Frees e if it holds nothing and nobody waits to fill it. */
static void maybe_remove(history_cache *c, entry *e)
{
    if (e->has || e->pins > 0 || e->writers > 0)
        return;
    entry **pp = slot_of(c, e->sid, e->hash);
    *pp = e->hnext;
    c->nentries--;
    free(e->sid);
    free(e);
}

static void evict(history_cache *c)
{
    while (c->bytes > c->max_bytes && c->oldest) {
        entry *e = c->oldest;
        drop_msgs(c, e);
        maybe_remove(c, e);
    }
}

void history_cache_free(history_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nbuckets; i++) {
        entry *e = c->buckets[i];
        while (e) {
            entry *next = e->hnext;
            drop_msgs(c, e);
            free(e->sid);
            free(e);
            e = next;
        }
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* ---- reads ---- */

/* How many of the newest of msgs[0..n) the tail read for tail takes; *sum
 * (if not NULL) gets their tokens: more than tail, unless it took them all. */
static size_t tail_count(const store_message *msgs, size_t n, int64_t tail, int64_t *sum)
{
    size_t k = 0;
    int64_t s = 0;
    while (k < n && s <= tail) {
        s += store_known(msgs[n - 1 - k].tokens);
        k++;
    }
    if (sum)
        *sum = s;
    return k;
}

bool history_cache_get(history_cache *c, const char *session_id, int64_t tail_tokens, store_message **out, size_t *n,
                       int64_t *skipped, uint64_t *ticket)
{
    *ticket = 0;
    if (c->max_bytes == 0)
        return false;
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, session_id);
    if (e && e->has && c->writers_all == 0 && (tail_tokens <= e->tail || e->whole)) {
        size_t k = tail_count(e->msgs, e->n, tail_tokens, NULL);
        *out = k ? msgs_share(&e->msgs[e->n - k], k) : NULL;
        *n = k;
        *skipped = e->total > (int64_t)k ? e->total - (int64_t)k : 0;
        lru_unlink(c, e);
        lru_push(c, e);
        pthread_mutex_unlock(&c->mu);
        metrics_history_read(true);
        return true;
    }
    if (!e)
        e = find_or_add(c, session_id);
    e->pins++;
    *ticket = e->gen;
    pthread_mutex_unlock(&c->mu);
    metrics_history_read(false);
    return false;
}

void history_cache_fill(history_cache *c, const char *session_id, uint64_t ticket, bool ok, int64_t tail_tokens,
                        const store_message *msgs, size_t n, int64_t total)
{
    if (c->max_bytes == 0)
        return;
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, session_id);
    if (!e || e->pins == 0) { /* a fill without its miss: a programming error */
        pthread_mutex_unlock(&c->mu);
        return;
    }
    e->pins--;
    /* The entry itself and its key, then the array. */
    size_t bytes = sizeof *e + strlen(e->sid) + 1 + 2 * BLOCK_OVERHEAD + (n ? n * sizeof *msgs + BLOCK_OVERHEAD : 0);
    for (size_t i = 0; i < n; i++)
        bytes += msg_bytes(&msgs[i]);
    if (ok && e->gen == ticket && e->writers == 0 && c->writers_all == 0 && bytes <= c->max_bytes / 4 &&
        (int64_t)n <= total) {
        drop_msgs(c, e);
        e->msgs = n ? chat_xcalloc(n, sizeof *e->msgs) : NULL;
        for (size_t i = 0; i < n; i++)
            msg_pack(&e->msgs[i], &msgs[i]);
        e->n = e->cap = n;
        e->tail = tail_tokens;
        e->whole = (int64_t)n == total;
        e->total = total;
        bytes_add(c, e, (int64_t)bytes);
        e->has = true;
        c->nkept++;
        lru_push(c, e);
        evict(c);
    }
    maybe_remove(c, e);
    pthread_mutex_unlock(&c->mu);
}

/* ---- writes ---- */

/* Whether msgs[0..n) follow what e holds: plain text, seqs consecutive from
 * the cached last one (1 after an empty session). */
static bool follows(const entry *e, const store_message *msgs, size_t n)
{
    int64_t next = e->n ? e->msgs[e->n - 1].seq + 1 : 1;
    if (!e->whole && e->n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].blocks || msgs[i].seq != next)
            return false;
        next++;
    }
    return true;
}

void history_cache_append(history_cache *c, const char *session_id, const store_message *msgs, size_t n, int64_t total)
{
    if (c->max_bytes == 0)
        return;
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, session_id);
    if (!e) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    e->gen++;
    if (e->has && follows(e, msgs, n)) {
        if (e->n + n > e->cap) {
            size_t cap = (e->n + n) + (e->n + n) / 2;
            bytes_add(c, e, (int64_t)((cap - e->cap) * sizeof *e->msgs + (e->cap ? 0 : BLOCK_OVERHEAD)));
            e->msgs = chat_xrealloc(e->msgs, cap * sizeof *e->msgs);
            e->cap = cap;
        }
        for (size_t i = 0; i < n; i++) {
            msg_pack(&e->msgs[e->n + i], &msgs[i]);
            bytes_add(c, e, (int64_t)msg_bytes(&msgs[i]));
        }
        e->n += n;
        e->total = total;
        /* Trimmed back to the tail read's rule for e->tail. */
        int64_t sum;
        size_t k = tail_count(e->msgs, e->n, e->tail, &sum);
        if (k < e->n) {
            size_t cut = e->n - k;
            for (size_t i = 0; i < cut; i++) {
                bytes_add(c, e, -(int64_t)msg_bytes(&e->msgs[i]));
                msg_release(&e->msgs[i]);
            }
            memmove(e->msgs, e->msgs + cut, k * sizeof *e->msgs);
            e->n = k;
            e->whole = false;
        } else if (!e->whole && sum <= e->tail) {
            drop_msgs(c, e); /* a cut tail that no longer reaches past tail (not expected): cannot be served */
        }
        if (e->has && (e->bytes > c->max_bytes / 4 || (int64_t)e->n > e->total))
            drop_msgs(c, e);
        if (e->has) {
            lru_unlink(c, e);
            lru_push(c, e);
            evict(c);
        }
    } else {
        drop_msgs(c, e);
    }
    maybe_remove(c, e);
    pthread_mutex_unlock(&c->mu);
}

/* Every entry: a new generation, no messages. */
static void bump_all(history_cache *c)
{
    for (size_t i = 0; i < c->nbuckets; i++) {
        entry *e = c->buckets[i];
        while (e) {
            entry *next = e->hnext; /* maybe_remove unlinks e */
            e->gen++;
            drop_msgs(c, e);
            maybe_remove(c, e);
            e = next;
        }
    }
}

void history_cache_write_begin(history_cache *c, const char *session_id)
{
    if (c->max_bytes == 0)
        return;
    pthread_mutex_lock(&c->mu);
    if (session_id) {
        entry *e = find_or_add(c, session_id);
        e->writers++;
        e->gen++;
        drop_msgs(c, e);
    } else {
        c->writers_all++;
        bump_all(c);
    }
    pthread_mutex_unlock(&c->mu);
}

void history_cache_write_end(history_cache *c, const char *session_id)
{
    if (c->max_bytes == 0)
        return;
    pthread_mutex_lock(&c->mu);
    if (session_id) {
        entry *e = find(c, session_id);
        if (e && e->writers > 0) {
            e->writers--;
            e->gen++; /* a miss that read before the commit keeps nothing */
            drop_msgs(c, e);
            maybe_remove(c, e);
        }
    } else if (c->writers_all > 0) {
        c->writers_all--;
        bump_all(c);
    }
    pthread_mutex_unlock(&c->mu);
}

size_t history_cache_sessions(history_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nkept;
    pthread_mutex_unlock(&c->mu);
    return n;
}

size_t history_cache_bytes(history_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->bytes;
    pthread_mutex_unlock(&c->mu);
    return n;
}
