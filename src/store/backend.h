/*
 * backend.h: what a store backend provides to store.c (internal to src/store).
 *
 * store.c owns the public handle, picks the backend by the URL's scheme, and
 * turns every synchronous call of store.h into a store_op run by backend->run,
 * so that a backend implements each operation once, for both call forms.
 */
#ifndef CHATD_STORE_BACKEND_H
#define CHATD_STORE_BACKEND_H

#include "store/store.h"

typedef struct store_backend {
    const char *name; /* "sqlite", "postgres": logs and metrics */
    /* Opens url (already known to be this backend's). Migrates, like store_open. */
    chat_rc (*open)(const char *url, void **impl, char *err, size_t errlen);
    void (*close)(void *impl);
    int (*schema_version)(void *impl);
    /* Runs op on the calling thread; sets and returns op->rc. */
    chat_rc (*run)(void *impl, store_op *op);
    /* NULL when ops run inline (store_submit calls run, then completes). */
    chat_rc (*attach)(void *impl, struct event_base *base, int pool_size, int64_t queue_timeout_ms);
    /* Queues op; the backend calls store_op_complete(op) once, on the loop. */
    void (*submit)(void *impl, store_op *op);
    int (*pending)(const void *impl);
    /* Fails what is queued or in flight (CHAT_EUNAVAIL) and drops the pool (store_detach). */
    void (*detach)(void *impl);
} store_backend;

extern const store_backend store_backend_sqlite;
extern const store_backend store_backend_postgres;

/* Ends a submitted op: records its duration, runs its callback (if any), frees it. */
void store_op_complete(store_op *op);

#endif
