/*
 * turn_error.c: the errors a turn reports to its consumer (turn_error): the
 * provider outcomes' table (docs/API.md, "Errors") and the store's.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "chat/turn.h"
#include "core/util.h"

void turn_error_set(turn_error *e, int status, const char *type, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->retry_after_s = 0;
    e->attempts = 0;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    chat_utf8_trim(e->message);
}

void turn_store_error(chat_rc rc, turn_error *err)
{
    if (rc == CHAT_EUNAVAIL) {
        turn_error_set(err, 503, "database_unavailable", "the database is busy or unreachable; retry shortly");
        err->retry_after_s = 1;
    } else {
        turn_error_set(err, 500, "internal_error", "the database is not available");
    }
}

/* ---- the error table (docs/API.md, "Errors") ---- */

static void map_stream_error(const llm_result *res, turn_error *err)
{
    const char *type = res->error_type ? res->error_type : "";
    const char *msg = res->error_message ? res->error_message : "the provider reported an error";
    if (strcmp(type, "overloaded_error") == 0)
        turn_error_set(err, 503, "provider_overloaded", "the provider is overloaded: %s", msg);
    else if (strcmp(type, "rate_limit_error") == 0)
        turn_error_set(err, 429, "rate_limit_error", "the provider rate limit was reached: %s", msg);
    else
        turn_error_set(err, 502, "provider_error", "the provider failed (%s): %s", *type ? type : "error", msg);
}

void turn_map_llm_error(const llm_result *res, turn_error *err)
{
    const char *pmsg = res->error_message ? res->error_message : "no details";
    int s = res->http_status;
    switch (res->status) {
    case LLM_OK: turn_error_set(err, 200, "ok", "ok"); return;
    case LLM_ERR_HTTP:
        if (s == 400)
            turn_error_set(err, 400, "invalid_request_error", "%s", pmsg);
        else if (s == 401 || s == 403)
            turn_error_set(err, 502, "provider_auth_error", "the provider rejected the configured API key (HTTP %d)",
                           s);
        else if (s == 404)
            turn_error_set(err, 400, "invalid_request_error", "%s", pmsg);
        else if (s == 413)
            turn_error_set(err, 413, "request_too_large", "the provider rejected the request as too large: %s", pmsg);
        else if (s == 429) {
            turn_error_set(err, 429, "rate_limit_error", "the provider rate limit was reached: %s", pmsg);
            err->retry_after_s = res->retry_after_ms > 0 ? (res->retry_after_ms + 999) / 1000 : 1;
        } else if (s == 529 || s == 503)
            turn_error_set(err, 503, "provider_overloaded", "the provider is overloaded (HTTP %d): %s", s, pmsg);
        else if (s == 504)
            turn_error_set(err, 504, "provider_timeout", "the provider timed out (HTTP 504): %s", pmsg);
        else
            turn_error_set(err, 502, "provider_error", "the provider failed (HTTP %d): %s", s, pmsg);
        return;
    case LLM_ERR_CONNECT: turn_error_set(err, 502, "provider_error", "cannot reach the provider: %s", pmsg); return;
    case LLM_ERR_TIMEOUT:
        turn_error_set(err, 504, "provider_timeout", "the provider did not answer in time: %s", pmsg);
        return;
    case LLM_ERR_STREAM: map_stream_error(res, err); return;
    case LLM_ERR_TRUNCATED:
        turn_error_set(err, 502, "provider_error", "the provider's response ended early: %s", pmsg);
        return;
    case LLM_ERR_PROTOCOL:
        turn_error_set(err, 502, "provider_error", "the provider's response could not be read: %s", pmsg);
        return;
    case LLM_ERR_RETRY_AFTER:
        /* The provider asked for a longer wait than we hold a request for: pass
         * the hint on instead of hanging (429 stays 429, anything else is 503). */
        if (s == 429)
            turn_error_set(err, 429, "rate_limit_error",
                           "the provider rate limit was reached and it asks to retry after longer than "
                           "RETRY_MAX_WAIT: %s",
                           pmsg);
        else
            turn_error_set(err, 503, "provider_overloaded",
                           "the provider is unavailable (HTTP %d) and asks to retry after longer than "
                           "RETRY_MAX_WAIT",
                           s);
        err->retry_after_s = res->retry_after_ms > 0 ? (res->retry_after_ms + 999) / 1000 : 1;
        return;
    }
    turn_error_set(err, 502, "provider_error", "the provider failed: %s", pmsg);
}
