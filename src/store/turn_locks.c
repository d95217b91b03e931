/*
 * turn_locks.c: the in-memory turn lock table (turn_locks.h).
 *
 * A chained hash table keyed by session id, doubled when its entries outnumber
 * its buckets. Entries are few (the turns in flight, plus expired ones until a
 * sweep), so one mutex for the whole table is enough: every operation is a
 * hash and a short chain walk.
 */
#include "store/turn_locks.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define PINNED INT64_MAX /* the expiry of a pinned lock: never reached */

typedef struct lock_entry {
    struct lock_entry *next;
    char *session_id;
    char *token;
    int64_t expires_at;
    int64_t pinned_expiry; /* the expiry to restore when a pin fails */
    uint64_t hash;
} lock_entry;

struct turn_locks {
    pthread_mutex_t mu;
    lock_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

turn_locks *turn_locks_new(void)
{
    turn_locks *t = chat_xcalloc(1, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    t->nbuckets = 64;
    t->buckets = chat_xcalloc(t->nbuckets, sizeof *t->buckets);
    return t;
}

static void entry_free(lock_entry *e)
{
    free(e->session_id);
    free(e->token);
    free(e);
}

void turn_locks_free(turn_locks *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (lock_entry *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            entry_free(e);
        }
    }
    free(t->buckets);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* The link that points at session_id's entry (or at the NULL ending its chain). */
static lock_entry **find(turn_locks *t, const char *session_id, uint64_t h)
{
    lock_entry **pp = &t->buckets[h & (t->nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->session_id, session_id) != 0))
        pp = &(*pp)->next;
    return pp;
}

static void unlink_free(turn_locks *t, lock_entry **pp)
{
    lock_entry *e = *pp;
    *pp = e->next;
    entry_free(e);
    t->count--;
}

static void grow(turn_locks *t)
{
    size_t n = t->nbuckets * 2;
    lock_entry **b = chat_xcalloc(n, sizeof *b);
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (lock_entry *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

/* Removes the expired, unpinned entries; under the mutex. */
static size_t sweep_locked(turn_locks *t, int64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < t->nbuckets; i++) {
        lock_entry **pp = &t->buckets[i];
        while (*pp) {
            if ((*pp)->expires_at <= now) {
                unlink_free(t, pp);
                n++;
            } else {
                pp = &(*pp)->next;
            }
        }
    }
    return n;
}

chat_rc turn_locks_acquire(turn_locks *t, const char *session_id, const char *token, int64_t now, int64_t ttl_ms)
{
    uint64_t h = hash_str(session_id);
    chat_rc rc = CHAT_OK;
    pthread_mutex_lock(&t->mu);
    lock_entry **pp = find(t, session_id, h);
    lock_entry *e = *pp;
    if (e && e->expires_at > now) {
        rc = CHAT_EBUSY;
    } else if (e) { /* expired: its holder is gone, take it over */
        free(e->token);
        e->token = chat_xstrdup(token);
        e->expires_at = now + ttl_ms;
    } else {
        e = chat_xcalloc(1, sizeof *e);
        e->session_id = chat_xstrdup(session_id);
        e->token = chat_xstrdup(token);
        e->expires_at = now + ttl_ms;
        e->hash = h;
        *pp = e;
        /* Before the table grows, the locks that expired unreleased (a lost
         * turn) go: the table holds about the live locks, whether or not a
         * retention sweep (SESSION_TTL) ever runs. Amortized: at doublings. */
        if (++t->count > t->nbuckets && sweep_locked(t, now) == 0)
            grow(t);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

/* The entry session_id holds for token, or NULL. Under the mutex. */
static lock_entry **held(turn_locks *t, const char *session_id, const char *token)
{
    lock_entry **pp = find(t, session_id, hash_str(session_id));
    return *pp && strcmp((*pp)->token, token) == 0 ? pp : NULL;
}

chat_rc turn_locks_refresh(turn_locks *t, const char *session_id, const char *token, int64_t now, int64_t ttl_ms)
{
    pthread_mutex_lock(&t->mu);
    lock_entry **pp = held(t, session_id, token);
    if (pp) {
        if ((*pp)->expires_at == PINNED)
            (*pp)->pinned_expiry = now + ttl_ms;
        else
            (*pp)->expires_at = now + ttl_ms;
    }
    pthread_mutex_unlock(&t->mu);
    return pp ? CHAT_OK : CHAT_ECONFLICT;
}

void turn_locks_release(turn_locks *t, const char *session_id, const char *token)
{
    pthread_mutex_lock(&t->mu);
    lock_entry **pp = held(t, session_id, token);
    if (pp)
        unlink_free(t, pp);
    pthread_mutex_unlock(&t->mu);
}

void turn_locks_drop(turn_locks *t, const char *session_id)
{
    pthread_mutex_lock(&t->mu);
    lock_entry **pp = find(t, session_id, hash_str(session_id));
    if (*pp)
        unlink_free(t, pp);
    pthread_mutex_unlock(&t->mu);
}

bool turn_locks_live(turn_locks *t, const char *session_id, int64_t now)
{
    pthread_mutex_lock(&t->mu);
    lock_entry *e = *find(t, session_id, hash_str(session_id));
    bool live = e && e->expires_at > now;
    pthread_mutex_unlock(&t->mu);
    return live;
}

bool turn_locks_pinned(turn_locks *t, const char *session_id)
{
    pthread_mutex_lock(&t->mu);
    lock_entry *e = *find(t, session_id, hash_str(session_id));
    bool pinned = e && e->expires_at == PINNED;
    pthread_mutex_unlock(&t->mu);
    return pinned;
}

chat_rc turn_locks_pin(turn_locks *t, const char *session_id, const char *token)
{
    pthread_mutex_lock(&t->mu);
    lock_entry **pp = held(t, session_id, token);
    if (pp && (*pp)->expires_at != PINNED) {
        (*pp)->pinned_expiry = (*pp)->expires_at;
        (*pp)->expires_at = PINNED;
    }
    pthread_mutex_unlock(&t->mu);
    return pp ? CHAT_OK : CHAT_ECONFLICT;
}

void turn_locks_settle(turn_locks *t, const char *session_id, const char *token, bool committed)
{
    pthread_mutex_lock(&t->mu);
    lock_entry **pp = held(t, session_id, token);
    if (pp && (*pp)->expires_at == PINNED) {
        if (committed)
            unlink_free(t, pp);
        else
            (*pp)->expires_at = (*pp)->pinned_expiry;
    }
    pthread_mutex_unlock(&t->mu);
}

size_t turn_locks_sweep(turn_locks *t, int64_t now)
{
    pthread_mutex_lock(&t->mu);
    size_t n = sweep_locked(t, now);
    pthread_mutex_unlock(&t->mu);
    return n;
}

size_t turn_locks_count(turn_locks *t)
{
    pthread_mutex_lock(&t->mu);
    size_t n = t->count;
    pthread_mutex_unlock(&t->mu);
    return n;
}
