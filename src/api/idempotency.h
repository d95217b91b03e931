/*
 * idempotency.h: Idempotency-Key handling for the chat endpoints (internal to
 * src/api/). See idempotency.c.
 */
#ifndef CHATD_API_IDEMPOTENCY_H
#define CHATD_API_IDEMPOTENCY_H

#include "api/api.h"
#include "chat/turn.h"
#include "store/store.h"

typedef enum {
    IDEM_NONE,     /* no Idempotency-Key: run the turn normally */
    IDEM_RUN,      /* a new record is running under the request id: run the turn with the key */
    IDEM_REPLAY,   /* a committed turn: replay it (api_idempotency_result) */
    IDEM_ANSWERED, /* the request was answered (error, 409, 422, stored reply) */
} idem_decision;

/* The outcome of api_idempotency_begin. rec (NULL for IDEM_NONE and header
 * errors) is borrowed for the duration of the call. */
typedef void (*idem_cb)(void *ud, idem_decision d, store_idem *rec);

/*
 * Looks at the Idempotency-Key header and begins or finds its record (scope:
 * the API key id, "" without auth), through the asynchronous store. Calls cb
 * exactly once, possibly before returning: IDEM_ANSWERED means r was answered
 * (or its client went away: then a record begun for it is released).
 */
void api_idempotency_begin(http_req *r, api_env *w, api_flavor f, const char *scope, const char *session_id, idem_cb cb,
                           void *ud);

/* Fills res from a replayable record (borrowing its strings). */
void api_idempotency_result(const store_idem *rec, turn_result *res);

#endif
