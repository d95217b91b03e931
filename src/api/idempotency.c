/*
 * idempotency.c: the Idempotency-Key header of POST /v1/chat and
 * /v1/chat/stream. A repeated key with the same body replays the stored result
 * without calling the provider; with a different body: 422; while the first
 * request still runs: 409. The record is completed in the same transaction as
 * the turn (store_turn_commit), so a turn acknowledged before a crash replays
 * after it instead of running twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "api/idempotency.h"
#include "core/alloc.h"
#include "core/util.h"

#define IDEM_KEY_MAX STORE_ID_MAX /* the key is stored whole, never cut */

static void sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char hex[] = "0123456789abcdef";
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (unsigned i = 0; i < mdlen && i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

static bool valid_key(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return false;
    return true;
}

/* A request waiting for its idempotency record. */
typedef struct idem_job {
    http_req *r;
    api_env *w;
    api_flavor f;
    idem_cb cb;
    void *ud;
} idem_job;

/* What the record says about the request: the decision, or an answer. */
static idem_decision decide(http_req *r, api_flavor f, const store_idem *rec)
{
    switch (rec->outcome) {
    case STORE_IDEM_NEW: return IDEM_RUN;
    case STORE_IDEM_REPLAY:
        if (rec->has_reply)
            return IDEM_REPLAY;
        /* A stored non-turn result (none are stored today): replay it as it was. */
        http_add_header(r, "Idempotent-Replayed", "true");
        http_reply(r, rec->status, "application/json", rec->response ? rec->response : "{}",
                   rec->response ? strlen(rec->response) : 2);
        return IDEM_ANSWERED;
    case STORE_IDEM_RUNNING:
        http_add_header(r, "Retry-After", "1");
        api_error(r, f, 409, "idempotency_in_progress",
                  "a request with this Idempotency-Key is still running; retry when it has finished");
        return IDEM_ANSWERED;
    case STORE_IDEM_MISMATCH:
        api_error(r, f, 422, "idempotency_key_reused",
                  "this Idempotency-Key was already used with a different request body");
        return IDEM_ANSWERED;
    }
    api_error(r, f, 500, "internal_error", "unexpected idempotency state");
    return IDEM_ANSWERED;
}

static void on_begun(store_op *op, void *ud)
{
    idem_job *j = ud;
    http_req *r = j->r;
    idem_decision d = IDEM_ANSWERED;
    if (http_req_gone(r)) {
        if (op->rc == CHAT_OK && op->out.idem.outcome == STORE_IDEM_NEW) /* nobody will run it */
            turn_release_idempotency(j->w->turns, op->in.scope, op->in.idem_key, op->in.token);
    } else if (op->rc != CHAT_OK) {
        api_db_error(r, j->f, op->rc);
    } else {
        d = decide(r, j->f, &op->out.idem);
    }
    j->cb(j->ud, d, &op->out.idem);
    http_req_release(r);
    free(j);
}

void api_idempotency_begin(http_req *r, api_env *w, api_flavor f, const char *scope, const char *session_id, idem_cb cb,
                           void *ud)
{
    const char *key = http_req_header(r, "Idempotency-Key");
    if (!key) {
        cb(ud, IDEM_NONE, NULL);
        return;
    }
    if (!valid_key(key)) {
        api_error(r, f, 400, "invalid_request_error", "Idempotency-Key must be 1 to %d printable ASCII characters",
                  IDEM_KEY_MAX);
        cb(ud, IDEM_ANSWERED, NULL);
        return;
    }
    size_t len;
    const char *body = http_req_body(r, &len);
    char hash[65];
    sha256_hex(body, len, hash);
    http_req_log_set(r, "idempotency_key", chat_json_text(key));
    idem_job *j = chat_xcalloc(1, sizeof *j);
    j->r = r;
    j->w = w;
    j->f = f;
    j->cb = cb;
    j->ud = ud;
    http_req_hold(r);
    store_op *op = store_op_new(STORE_OP_IDEM_BEGIN);
    op->in.scope = store_op_str(op, scope);
    op->in.idem_key = store_op_str(op, key);
    op->in.body_hash = store_op_str(op, hash);
    op->in.token = store_op_str(op, http_req_id(r));
    op->in.session_id = store_op_str(op, session_id);
    op->in.now = chat_now_ms();
    op->in.ttl_ms = w->cfg->lock_ttl_ms;
    store_submit(w->db, op, on_begun, j);
}

void api_idempotency_result(const store_idem *rec, turn_result *res)
{
    const store_message *m = &rec->reply;
    memset(res, 0, sizeof *res);
    res->session_id = rec->session_id ? rec->session_id : "";
    res->model = m->model ? m->model : "";
    res->text = m->content ? m->content : "";
    res->text_len = strlen(res->text);
    res->stop_reason = m->stop_reason;
    res->usage = m->usage;
    res->cost_micros = m->cost_micros;
    res->message_id = m->id;
    res->turn_count = rec->turn_count;
    res->created_at = m->created_at;
}
