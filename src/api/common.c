/*
 * common.c: error shapes shared by every handler.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "chat/turn.h"
#include "guard/auth.h"
#include "core/util.h"

void api_db_error(http_req *r, api_flavor f, chat_rc rc)
{
    turn_error err; /* one mapping for handlers and turns */
    turn_store_error(rc, &err);
    if (err.retry_after_s > 0) {
        char ra[32];
        snprintf(ra, sizeof ra, "%lld", (long long)err.retry_after_s);
        http_add_header(r, "Retry-After", ra);
    }
    api_error(r, f, err.status, err.type, "%s", err.message);
}

void api_error(http_req *r, api_flavor f, int status, const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof msg)
        chat_utf8_trim(msg); /* a sequence cut by the bound */
    /* The message may quote client bytes (a path, a file name): what is not
     * UTF-8 is escaped, so that the error can always be encoded. */
    json_t *text = chat_json_text(msg);
    json_t *body;
    if (f == API_SEED)
        body = json_pack("{s:o}", "detail", text);
    else if (f == API_OPENAI) /* chatd's own type goes into code */
        body = json_pack("{s:{s:o,s:s,s:n,s:s}}", "error", "message", text, "type", api_openai_type_of(status), "param",
                         "code", type);
    else if (f == API_ANTHROPIC) /* chatd's own type goes into details.error_code */
        body =
            json_pack("{s:s,s:{s:s,s:o,s:{s:s?}},s:s}", "type", "error", "error", "type", api_anthropic_type_of(status),
                      "message", text, "details", "error_code", type, "request_id", http_req_id(r));
    else
        body = json_pack("{s:{s:s,s:o,s:s}}", "error", "type", type, "message", text, "request_id", http_req_id(r));
    http_req_log_set(r, "error_type", json_string(type));
    http_reply_json(r, status, body);
}

const char *api_openai_type_of(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

const char *api_anthropic_type_of(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 402: return "billing_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503:
    case 529: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

json_t *api_detail_item(const char *type, const char *loc0, const char *field, const char *msg, json_t *input)
{
    json_t *loc = json_array();
    json_array_append_new(loc, json_string(loc0));
    if (field)
        json_array_append_new(loc, json_string(field));
    return json_pack("{s:s,s:o,s:s,s:o}", "type", type, "loc", loc, "msg", msg, "input", input ? input : json_object());
}

void api_invalid(http_req *r, api_flavor f, json_t *item, const char *msg)
{
    if (f == API_SEED) {
        http_req_log_set(r, "error_type", json_string("validation_error"));
        http_reply_json(r, 422, json_pack("{s:[o]}", "detail", item));
    } else {
        json_decref(item);
        api_error(r, f, 400, "invalid_request_error", "%s", msg);
    }
}

bool api_check_session_id(http_req *r, api_flavor f, const char *id, const char *loc0, const char *field)
{
    if (chat_valid_id(id))
        return true;
    char msg[256];
    snprintf(msg, sizeof msg, "invalid session_id: use 1 to 128 characters of letters, digits and . _ : -");
    json_t *item =
        api_detail_item("string_pattern_mismatch", loc0, field,
                        "String should match pattern '^[A-Za-z0-9._:-]{1,128}$'", chat_json_text(id ? id : ""));
    api_invalid(r, f, item, msg);
    return false;
}

const struct auth_identity *api_identity(http_req *r)
{
    static const auth_identity anonymous = { 0 };
    const auth_identity *id = http_req_data(r);
    return id ? id : &anonymous;
}

const char *api_owner_filter(http_req *r)
{
    const auth_identity *id = api_identity(r);
    return id->authenticated && !id->admin ? id->key_id : NULL;
}

bool api_can_access(http_req *r, const char *owner)
{
    return auth_can_access(api_identity(r), owner);
}

json_t *api_cost_json(int64_t micros)
{
    char usd[48];
    snprintf(usd, sizeof usd, "%s%lld.%06lld", micros < 0 ? "-" : "", (long long)(llabs(micros) / 1000000),
             (long long)(llabs(micros) % 1000000));
    return json_pack("{s:I,s:s}", "micros", (json_int_t)micros, "usd", usd);
}

json_t *api_usage_json(const store_usage *u)
{
    json_t *o = json_object();
    json_object_set_new(o, "input_tokens", u->input_tokens >= 0 ? json_integer(u->input_tokens) : json_null());
    json_object_set_new(o, "output_tokens", u->output_tokens >= 0 ? json_integer(u->output_tokens) : json_null());
    json_object_set_new(o, "cache_read_input_tokens",
                        u->cache_read_tokens >= 0 ? json_integer(u->cache_read_tokens) : json_null());
    json_object_set_new(o, "cache_creation_input_tokens",
                        u->cache_write_tokens >= 0 ? json_integer(u->cache_write_tokens) : json_null());
    return o;
}
