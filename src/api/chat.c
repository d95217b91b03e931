/*
 * chat.c: the four chat endpoints. They share one body parser and one turn
 * engine; they differ only in how a turn's events become HTTP:
 *
 *   POST /chat            seed JSON      {response, session_id, timestamp, turn_count}
 *   POST /chat-stream     seed text      raw text chunks; the response starts with the
 *                                        first byte of the reply, so a failure before it
 *                                        still gets a real status; after it, the
 *                                        template's "\nError: ..." trailer
 *   POST /v1/chat         v1 JSON        the reply with its content blocks and tool calls
 *   POST /v1/chat/stream  v1 SSE         start, then the reply's events (thinking, delta,
 *                                        tool_call_delta, tool_call) in order, done | error;
 *                                        ": ping" heartbeats
 *
 * The /v1 bodies may carry content (text and image blocks), tool_results and
 * the request options of llm/content.h (docs/API.md "Tools, images and
 * options"); the parser checks their types and ranges and builds the turn's
 * message blocks; what a model accepts is the turn's check (chat/models.h).
 * The request-to-turn plumbing is chat_run() (chat_run.c); this file holds the
 * body parser and the renderers of the seed and /v1 endpoints.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/chat_run.h"
#include "api/idempotency.h"
#include "api/request.h"
#include "core/json_out.h"
#include "guard/auth.h"
#include "core/alloc.h"
#include "core/json_in.h"
#include "core/util.h"
#include "llm/content.h"

typedef api_chat_body chat_body;

/* ---- body parsing and validation ---- */

static bool is_blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    return true;
}

/* Validates an optional string field; returns false (with an error item added) if present and not a string. */
static bool opt_string(json_t *root, const char *field, const char **out, json_t *errors)
{
    json_t *v = json_object_get(root, field);
    *out = NULL;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        json_array_append_new(
            errors, api_detail_item("string_type", "body", field, "Input should be a valid string", json_incref(v)));
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* Records a refusal with one problem (item stolen) and returns false. */
static bool invalid_one(api_chat_invalid *why, json_t *item, const char *msg)
{
    why->detail = json_pack("[o]", item);
    snprintf(why->message, sizeof why->message, "%s", msg);
    return false;
}

/* ---- /v1: content, tool_results and the request options ---- */

/* Collects the problems of a /v1 body: detail items, the first one's message. */
typedef struct v1_check {
    json_t *errors;
    char *msg;           /* the /v1 message buffer (300 bytes), "" until the first problem */
    bool first_is_image; /* the first problem is an image over the limit (413) */
    size_t max_message_bytes;
    size_t max_image_bytes;
} v1_check;

static void v1_fail(v1_check *k, const char *type, const char *field, const json_t *input, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Records one problem with field (a body path such as "tools[2].name"); the
 * message is the whole sentence, naming the field. */
static void v1_fail(v1_check *k, const char *type, const char *field, const json_t *input, const char *fmt, ...)
{
    char m[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    /* The input is echoed only when small (an image is not). */
    json_t *in = input && json_is_string(input) && json_string_length(input) > 200 ? json_null()
                 : input                                                           ? json_deep_copy(input)
                                                                                   : json_null();
    json_array_append_new(k->errors, api_detail_item(type, "body", field, m, in ? in : json_null()));
    if (!*k->msg) {
        snprintf(k->msg, 300, "%s", m);
        k->first_is_image = strcmp(type, "image_too_large") == 0;
    }
}

static bool is_number(const json_t *v)
{
    return json_is_integer(v) || json_is_real(v);
}

/* Bytes base64 text of len characters (checked by llm_content_check) decodes to. */
static size_t b64_decoded_len(const char *s, size_t len)
{
    size_t pad = len >= 1 && s[len - 1] == '=' ? (len >= 2 && s[len - 2] == '=' ? 2 : 1) : 0;
    return len / 4 * 3 - pad;
}

/* Checks the images of blocks (at path, e.g. "content" or "tool_results[0].content"):
 * base64 within the image limit (else 413), URLs https. Adds the text bytes to *text. */
static void check_media(v1_check *k, const json_t *blocks, const char *path, size_t *text)
{
    size_t i;
    const json_t *b;
    json_array_foreach(blocks, i, b)
    {
        char field[96];
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "text") == 0) {
            *text += json_string_length(json_object_get(b, "text"));
            continue;
        }
        if (!type || strcmp(type, "image") != 0)
            continue;
        const json_t *src = json_object_get(b, "source");
        const char *st = json_string_value(json_object_get(src, "type"));
        if (st && strcmp(st, "base64") == 0) {
            const json_t *data = json_object_get(src, "data");
            size_t n = b64_decoded_len(json_string_value(data), json_string_length(data));
            if (n > k->max_image_bytes) {
                snprintf(field, sizeof field, "%s[%zu].source.data", path, i);
                v1_fail(k, "image_too_large", field, NULL,
                        "%s: the image is %zu bytes, more than MAX_IMAGE_SIZE (%zu bytes)", field, n,
                        k->max_image_bytes);
            }
        } else if (st && strcmp(st, "url") == 0) {
            const char *u = json_string_value(json_object_get(src, "url"));
            if (!u || strncmp(u, "https://", 8) != 0 || !u[8]) {
                snprintf(field, sizeof field, "%s[%zu].source.url", path, i);
                v1_fail(k, "url_scheme", field, json_object_get(src, "url"), "%s: an image URL must be https://",
                        field);
            }
        }
    }
}

/* Refuses blocks other than text and image (with non-empty text) in an array at path. */
static bool only_text_and_images(v1_check *k, const json_t *blocks, const char *path)
{
    size_t i;
    const json_t *b;
    json_array_foreach(blocks, i, b)
    {
        char field[96];
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "image") == 0)
            continue;
        if (type && strcmp(type, "text") == 0) {
            const json_t *t = json_object_get(b, "text");
            if (json_is_string(t) && is_blank(json_string_value(t))) { /* providers refuse blank text blocks */
                snprintf(field, sizeof field, "%s[%zu].text", path, i);
                v1_fail(k, "string_too_short", field, t, "%s must have at least 1 non-blank character", field);
                return false;
            }
            continue;
        }
        if (!json_is_object(b) || !type)
            continue; /* llm_content_check names it */
        snprintf(field, sizeof field, "%s[%zu].type", path, i);
        v1_fail(k, "literal_error", field, json_object_get(b, "type"),
                "%s: \"%.32s\" is not accepted here: send text and image blocks (the results of tool calls go in "
                "tool_results)",
                field, type);
        return false;
    }
    return true;
}

/* Checks canonical user content with llm_content_check; the paths in its
 * message are prefixed with prefix (e.g. "content" -> "content[1].text"). */
static bool content_ok(v1_check *k, const json_t *blocks, const char *field, const char *prefix)
{
    char why[256];
    if (!llm_content_check(blocks, "user", why, sizeof why))
        return true;
    /* llm_content_check names "content[i]..."; say where in the body that is */
    const char *rest = strncmp(why, "content", 7) == 0 ? why + 7 : why;
    v1_fail(k, "content_invalid", field, NULL, "%s%s", prefix, rest);
    return false;
}

/* "content": text and image blocks. Returns a new reference or NULL (problem recorded). */
static json_t *parse_content(v1_check *k, const json_t *c)
{
    if (!json_is_array(c) || json_array_size(c) == 0) {
        v1_fail(k, "list_type", "content", json_is_array(c) ? c : NULL,
                "content must be a non-empty array of text and image blocks");
        return NULL;
    }
    if (!only_text_and_images(k, c, "content") || !content_ok(k, c, "content", "content"))
        return NULL;
    size_t text = 0;
    size_t before = json_array_size(k->errors);
    check_media(k, c, "content", &text);
    if (text > k->max_message_bytes)
        v1_fail(k, "string_too_long", "content", NULL,
                "the text of content is longer than MAX_MESSAGE_SIZE (%zu bytes)", k->max_message_bytes);
    if (json_array_size(k->errors) > before)
        return NULL;
    return json_deep_copy(c);
}

/* "tool_results" as tool_result blocks (a new array) or NULL (problem recorded). */
static json_t *parse_tool_results(v1_check *k, const json_t *tr)
{
    if (!json_is_array(tr) || json_array_size(tr) == 0 || json_array_size(tr) > 128) {
        v1_fail(k, "list_type", "tool_results", NULL,
                "tool_results must be an array of 1 to 128 {tool_call_id, content, is_error?} objects");
        return NULL;
    }
    size_t e0 = json_array_size(k->errors);
    json_t *out = json_array();
    size_t i, text = 0;
    const json_t *r;
    json_array_foreach(tr, i, r)
    {
        char field[96];
        snprintf(field, sizeof field, "tool_results[%zu]", i);
        if (!json_is_object(r)) {
            v1_fail(k, "dict_type", field, NULL, "%s must be an object {tool_call_id, content, is_error?}", field);
            break;
        }
        const json_t *id = json_object_get(r, "tool_call_id");
        const json_t *c = json_object_get(r, "content");
        const json_t *ie = json_object_get(r, "is_error");
        if (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > 256) {
            snprintf(field, sizeof field, "tool_results[%zu].tool_call_id", i);
            v1_fail(k, "string_type", field, id, "%s must be the id of a tool call (a string of 1 to 256 bytes)",
                    field);
            break;
        }
        if (ie && !json_is_null(ie) && !json_is_boolean(ie)) {
            snprintf(field, sizeof field, "tool_results[%zu].is_error", i);
            v1_fail(k, "bool_type", field, ie, "%s must be a boolean", field);
            break;
        }
        snprintf(field, sizeof field, "tool_results[%zu].content", i);
        if (!c || json_is_null(c)) {
            c = NULL;
        } else if (json_is_string(c)) {
            text += json_string_length(c);
        } else if (!json_is_array(c) || !only_text_and_images(k, c, field)) {
            if (!json_is_array(c))
                v1_fail(k, "content_type", field, NULL, "%s must be a string or an array of text and image blocks",
                        field);
            break;
        } else {
            size_t before = json_array_size(k->errors);
            check_media(k, c, field, &text);
            if (json_array_size(k->errors) > before)
                break;
        }
        json_t *blk = json_pack("{s:s,s:O,s:o}", "type", "tool_result", "tool_use_id", id, "content",
                                c ? json_deep_copy(c) : json_string(""));
        if (json_is_true(ie))
            json_object_set_new(blk, "is_error", json_true());
        json_array_append_new(out, blk);
    }
    if (json_array_size(k->errors) == e0 && text > k->max_message_bytes)
        v1_fail(k, "string_too_long", "tool_results", NULL,
                "the text of tool_results is longer than MAX_MESSAGE_SIZE (%zu bytes)", k->max_message_bytes);
    if (json_array_size(k->errors) == e0) {
        /* the blocks' shape and the ids told apart, as llm_content_check says */
        char why[256];
        if (llm_content_check(out, "user", why, sizeof why)) {
            const char *rest = strncmp(why, "content", 7) == 0 ? why + 7 : why;
            v1_fail(k, "content_invalid", "tool_results", NULL, "tool_results%s", rest);
        }
    }
    if (json_array_size(k->errors) > e0) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* A name of [A-Za-z0-9_-]{1,64} (a tool's or a schema's, as both providers require). */
static bool valid_name(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = s ? json_string_length(v) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

static json_t *parse_tools(v1_check *k, const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 128) {
        v1_fail(k, "list_type", "tools", NULL,
                "tools must be an array of 1 to 128 {name, description?, input_schema, strict?} objects");
        return NULL;
    }
    size_t e0 = json_array_size(k->errors);
    json_t *out = json_array();
    size_t i;
    const json_t *t;
    json_array_foreach(v, i, t)
    {
        char field[64];
        if (!json_is_object(t)) {
            snprintf(field, sizeof field, "tools[%zu]", i);
            v1_fail(k, "dict_type", field, NULL, "%s must be an object {name, description?, input_schema, strict?}",
                    field);
            break;
        }
        const json_t *name = json_object_get(t, "name");
        const json_t *desc = json_object_get(t, "description");
        const json_t *schema = json_object_get(t, "input_schema");
        const json_t *strict = json_object_get(t, "strict");
        const json_t *cc = json_object_get(t, "cache_control");
        if (!valid_name(name)) {
            snprintf(field, sizeof field, "tools[%zu].name", i);
            v1_fail(k, "string_pattern_mismatch", field, name, "%s must match ^[A-Za-z0-9_-]{1,64}$", field);
            break;
        }
        for (size_t j = 0; j < i; j++)
            if (json_equal(json_object_get(json_array_get(v, j), "name"), name)) {
                snprintf(field, sizeof field, "tools[%zu].name", i);
                v1_fail(k, "duplicate", field, name, "%s: \"%s\" repeats tools[%zu].name", field,
                        json_string_value(name), j);
                break;
            }
        if (json_array_size(k->errors) > e0)
            break;
        if (desc && !json_is_null(desc) && !json_is_string(desc)) {
            snprintf(field, sizeof field, "tools[%zu].description", i);
            v1_fail(k, "string_type", field, desc, "%s must be a string", field);
            break;
        }
        if (schema && !json_is_null(schema) && !json_is_object(schema)) {
            snprintf(field, sizeof field, "tools[%zu].input_schema", i);
            v1_fail(k, "dict_type", field, NULL, "%s must be a JSON Schema object", field);
            break;
        }
        if (strict && !json_is_null(strict) && !json_is_boolean(strict)) {
            snprintf(field, sizeof field, "tools[%zu].strict", i);
            v1_fail(k, "bool_type", field, strict, "%s must be a boolean", field);
            break;
        }
        if (cc && !json_is_null(cc) && !json_is_object(cc)) {
            snprintf(field, sizeof field, "tools[%zu].cache_control", i);
            v1_fail(k, "dict_type", field, NULL, "%s must be an object", field);
            break;
        }
        json_t *o = json_pack("{s:O}", "name", name);
        if (json_is_string(desc))
            json_object_set(o, "description", (json_t *)desc);
        if (json_is_object(schema))
            json_object_set_new(o, "input_schema", json_deep_copy(schema));
        else /* a tool without parameters */
            json_object_set_new(o, "input_schema", json_pack("{s:s,s:{}}", "type", "object", "properties"));
        if (json_is_boolean(strict))
            json_object_set(o, "strict", (json_t *)strict);
        if (json_is_object(cc))
            json_object_set_new(o, "cache_control", json_deep_copy(cc));
        json_array_append_new(out, o);
    }
    if (json_array_size(k->errors) > e0) {
        json_decref(out);
        return NULL;
    }
    return out;
}

static json_t *parse_tool_choice(v1_check *k, const json_t *v, const json_t *tools)
{
    const char *type = NULL;
    const json_t *name = NULL;
    if (json_is_string(v)) {
        type = json_string_value(v);
    } else if (json_is_object(v)) {
        type = json_string_value(json_object_get(v, "type"));
        name = json_object_get(v, "name");
    }
    if (type && strcmp(type, "required") == 0)
        type = "any"; /* OpenAI's word */
    if (!type || (strcmp(type, "auto") != 0 && strcmp(type, "any") != 0 && strcmp(type, "none") != 0 &&
                  strcmp(type, "tool") != 0)) {
        v1_fail(k, "literal_error", "tool_choice", json_is_string(v) ? v : NULL,
                "tool_choice must be {\"type\": \"auto\"|\"any\"|\"none\"} or {\"type\": \"tool\", \"name\": ...}");
        return NULL;
    }
    if (strcmp(type, "tool") == 0) {
        bool known = false;
        size_t i;
        const json_t *t;
        json_array_foreach(tools, i, t) known = known || json_equal(json_object_get(t, "name"), name);
        if (!json_is_string(name) || !known) {
            v1_fail(k, "tool_unknown", "tool_choice.name", name,
                    "tool_choice.name must name one of the request's tools");
            return NULL;
        }
        return json_pack("{s:s,s:O}", "type", "tool", "name", name);
    }
    if (strcmp(type, "any") == 0 && !tools) {
        v1_fail(k, "missing", "tool_choice", NULL, "tool_choice \"any\" requires tools");
        return NULL;
    }
    return json_pack("{s:s}", "type", type);
}

static json_t *parse_response_format(v1_check *k, const json_t *v)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || !type ||
        (strcmp(type, "text") != 0 && strcmp(type, "json_object") != 0 && strcmp(type, "json_schema") != 0)) {
        v1_fail(k, "literal_error", "response_format", NULL,
                "response_format must be {\"type\": \"text\"|\"json_object\"} or {\"type\": \"json_schema\", "
                "\"name\", \"schema\", \"strict\"?}");
        return NULL;
    }
    if (strcmp(type, "json_schema") != 0)
        return json_pack("{s:s}", "type", type);
    /* canonical: name, schema, strict at the top; OpenAI nests them in json_schema */
    const json_t *src = json_is_object(json_object_get(v, "json_schema")) ? json_object_get(v, "json_schema") : v;
    const json_t *name = json_object_get(src, "name");
    const json_t *schema = json_object_get(src, "schema");
    const json_t *strict = json_object_get(src, "strict");
    if (!json_is_object(schema)) {
        v1_fail(k, "dict_type", "response_format.schema", NULL, "response_format.schema must be a JSON Schema object");
        return NULL;
    }
    if (name && !json_is_null(name) && !valid_name(name)) {
        v1_fail(k, "string_pattern_mismatch", "response_format.name", name,
                "response_format.name must match ^[A-Za-z0-9_-]{1,64}$");
        return NULL;
    }
    if (strict && !json_is_null(strict) && !json_is_boolean(strict)) {
        v1_fail(k, "bool_type", "response_format.strict", strict, "response_format.strict must be a boolean");
        return NULL;
    }
    json_t *o =
        json_pack("{s:s,s:s,s:o}", "type", "json_schema", "name",
                  json_is_string(name) ? json_string_value(name) : "response", "schema", json_deep_copy(schema));
    if (json_is_boolean(strict))
        json_object_set(o, "strict", (json_t *)strict);
    return o;
}

static json_t *parse_thinking(v1_check *k, const json_t *v)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    if (type && strcmp(type, "disabled") == 0)
        return json_pack("{s:s}", "type", "disabled");
    const json_t *bt = json_object_get(v, "budget_tokens");
    if (!type || strcmp(type, "enabled") != 0 || !json_is_integer(bt) || json_integer_value(bt) < 1 ||
        json_integer_value(bt) > 1000000) {
        v1_fail(k, "literal_error", "thinking", NULL,
                "thinking must be {\"type\": \"enabled\", \"budget_tokens\": 1..1000000} or {\"type\": "
                "\"disabled\"}");
        return NULL;
    }
    return json_pack("{s:s,s:I}", "type", "enabled", "budget_tokens", (json_int_t)json_integer_value(bt));
}

static json_t *parse_stop(v1_check *k, const json_t *v)
{
    if (json_is_string(v) && json_string_length(v) > 0)
        return json_pack("[O]", v);
    bool ok = json_is_array(v) && json_array_size(v) >= 1 && json_array_size(v) <= 4;
    size_t i;
    const json_t *s;
    json_array_foreach(v, i, s) ok = ok && json_is_string(s) && json_string_length(s) > 0;
    if (!ok) {
        v1_fail(k, "list_type", "stop", NULL, "stop must be a non-empty string or an array of 1 to 4 of them");
        return NULL;
    }
    return json_deep_copy(v);
}

static json_t *parse_logit_bias(v1_check *k, const json_t *v)
{
    bool ok = json_is_object(v);
    const char *key;
    const json_t *x;
    json_object_foreach((json_t *)v, key, x)
    {
        bool digits = *key && strlen(key) <= 10 && strspn(key, "0123456789") == strlen(key);
        ok = ok && digits && is_number(x) && json_number_value(x) >= -100 && json_number_value(x) <= 100;
    }
    if (!ok) {
        v1_fail(k, "dict_type", "logit_bias", NULL, "logit_bias must map token ids to numbers in -100..100");
        return NULL;
    }
    return json_deep_copy(v);
}

/* A number option in lo..hi (hi < 0: no upper bound). */
static json_t *num_in(v1_check *k, const char *field, const json_t *v, double lo, double hi, const char *range)
{
    if (!is_number(v) || json_number_value(v) < lo || (hi >= lo && json_number_value(v) > hi)) {
        v1_fail(k, "number_range", field, is_number(v) || json_is_string(v) ? v : NULL, "%s must be a number %s", field,
                range);
        return NULL;
    }
    return json_deep_copy(v);
}

static json_t *int_in(v1_check *k, const char *field, const json_t *v, json_int_t lo, json_int_t hi, const char *range)
{
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        v1_fail(k, "int_range", field, is_number(v) || json_is_string(v) ? v : NULL, "%s must be an integer %s", field,
                range);
        return NULL;
    }
    return json_deep_copy(v);
}

static json_t *boolean(v1_check *k, const char *field, const json_t *v)
{
    if (!json_is_boolean(v)) {
        v1_fail(k, "bool_type", field, is_number(v) || json_is_string(v) ? v : NULL, "%s must be a boolean", field);
        return NULL;
    }
    return json_deep_copy(v);
}

/* The options the body set (non-null), checked; NULL when none (or a problem). */
static json_t *parse_options(v1_check *k, json_t *root)
{
    static const char *const names[] = {
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "n",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "thinking",
        "reasoning_effort",
    };
    size_t e0 = json_array_size(k->errors);
    json_t *opts = json_object();
    json_t *tools = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *n = names[i];
        const json_t *v = json_object_get(root, n);
        if (!v || json_is_null(v))
            continue;
        json_t *o = NULL;
        if (strcmp(n, "temperature") == 0)
            o = num_in(k, n, v, 0, -1, ">= 0");
        else if (strcmp(n, "top_p") == 0)
            o = num_in(k, n, v, 0, 1, "in 0..1");
        else if (strcmp(n, "presence_penalty") == 0 || strcmp(n, "frequency_penalty") == 0)
            o = num_in(k, n, v, -2, 2, "in -2..2");
        else if (strcmp(n, "top_k") == 0)
            o = int_in(k, n, v, 1, INT32_MAX, ">= 1");
        else if (strcmp(n, "seed") == 0)
            o = int_in(k, n, v, INT64_MIN, INT64_MAX, "");
        else if (strcmp(n, "top_logprobs") == 0)
            o = int_in(k, n, v, 0, 20, "in 0..20");
        else if (strcmp(n, "n") == 0)
            o = int_in(k, n, v, 1, 128, "in 1..128");
        else if (strcmp(n, "logprobs") == 0 || strcmp(n, "parallel_tool_calls") == 0)
            o = boolean(k, n, v);
        else if (strcmp(n, "user") == 0) {
            if (json_is_string(v) && json_string_length(v) <= 256)
                o = json_deep_copy(v);
            else
                v1_fail(k, "string_type", n, NULL, "user must be a string of at most 256 bytes");
        } else if (strcmp(n, "reasoning_effort") == 0) {
            const char *s = json_string_value(v);
            if (s && (strcmp(s, "minimal") == 0 || strcmp(s, "low") == 0 || strcmp(s, "medium") == 0 ||
                      strcmp(s, "high") == 0))
                o = json_deep_copy(v);
            else
                v1_fail(k, "literal_error", n, json_is_string(v) ? v : NULL,
                        "reasoning_effort must be \"minimal\", \"low\", \"medium\" or \"high\"");
        } else if (strcmp(n, "stop") == 0)
            o = parse_stop(k, v);
        else if (strcmp(n, "logit_bias") == 0)
            o = parse_logit_bias(k, v);
        else if (strcmp(n, "tools") == 0)
            o = tools = parse_tools(k, v);
        else if (strcmp(n, "tool_choice") == 0)
            o = parse_tool_choice(k, v, tools);
        else if (strcmp(n, "response_format") == 0)
            o = parse_response_format(k, v);
        else if (strcmp(n, "thinking") == 0)
            o = parse_thinking(k, v);
        if (o)
            json_object_set_new(opts, n, o);
    }
    if (json_array_size(k->errors) > e0 || json_object_size(opts) == 0) {
        json_decref(opts);
        return NULL;
    }
    return opts;
}

void api_chat_body_release(api_chat_body *b)
{
    json_decref(b->root);
    json_decref(b->blocks);
    json_decref(b->options);
    b->root = b->blocks = b->options = NULL;
}

bool api_chat_body_parse(const char *text, size_t len, api_flavor f, size_t max_message_bytes, api_chat_body *b,
                         api_chat_invalid *why)
{
    return api_chat_body_parse_ex(text, len, f, max_message_bytes, API_CHAT_MAX_IMAGE_BYTES, b, why);
}

bool api_chat_body_parse_ex(const char *text, size_t len, api_flavor f, size_t max_message_bytes,
                            size_t max_image_bytes, api_chat_body *b, api_chat_invalid *why)
{
    json_error_t jerr;
    memset(b, 0, sizeof *b);
    memset(why, 0, sizeof *why);

    if (len == 0)
        return invalid_one(why, api_detail_item("missing", "body", NULL, "Field required", json_null()),
                           "the request body is empty: send a JSON object");
    b->root = chat_json_loadb(text, len, 0, &jerr);
    if (!b->root) {
        json_t *loc = json_pack("[s,i]", "body", jerr.position);
        /* jansson's text quotes the bytes it stopped at, which need not be
         * UTF-8 (json_pack would fail on them: a 500 instead of the 422). */
        json_t *item = json_pack("{s:s,s:o,s:s,s:{},s:{s:o}}", "type", "json_invalid", "loc", loc, "msg",
                                 "JSON decode error", "input", "ctx", "error", chat_json_text(jerr.text));
        char msg[300];
        snprintf(msg, sizeof msg, "the request body is not valid JSON: %s (at byte %d)", jerr.text, jerr.position);
        return invalid_one(why, item, msg);
    }
    if (!json_is_object(b->root)) {
        invalid_one(why,
                    api_detail_item("model_attributes_type", "body", NULL,
                                    "Input should be a valid dictionary or object to extract fields from",
                                    json_incref(b->root)),
                    "the request body must be a JSON object");
        json_decref(b->root);
        b->root = NULL;
        return false;
    }

    json_t *errors = json_array();
    char v1msg[300] = "";
    json_t *m = json_object_get(b->root, "message");
    /* /v1: "content" or "tool_results" may stand for the message */
    const json_t *cv = f == API_V1 ? json_object_get(b->root, "content") : NULL;
    const json_t *trv = f == API_V1 ? json_object_get(b->root, "tool_results") : NULL;
    cv = json_is_null(cv) ? NULL : cv;
    trv = json_is_null(trv) ? NULL : trv;
    if ((cv || trv) && json_is_null(m))
        m = NULL;
    if (!m && (cv || trv)) {
        /* the message is the content and/or the tool results */
    } else if (!m) {
        json_array_append_new(errors,
                              api_detail_item("missing", "body", "message", "Field required", json_incref(b->root)));
        snprintf(v1msg, sizeof v1msg, "message is required");
    } else if (!json_is_string(m)) {
        json_array_append_new(errors, api_detail_item("string_type", "body", "message",
                                                      "Input should be a valid string", json_incref(m)));
        snprintf(v1msg, sizeof v1msg, "message must be a string");
    } else {
        b->message = json_string_value(m);
        size_t mlen = json_string_length(m);
        if (mlen == 0 || is_blank(b->message)) {
            json_array_append_new(errors,
                                  api_detail_item("string_too_short", "body", "message",
                                                  "String should have at least 1 non-blank character", json_incref(m)));
            snprintf(v1msg, sizeof v1msg, "message must not be empty");
        } else if (mlen > max_message_bytes) {
            char msg[128];
            snprintf(msg, sizeof msg, "String should have at most %zu bytes", max_message_bytes);
            json_array_append_new(errors, api_detail_item("string_too_long", "body", "message", msg, json_null()));
            snprintf(v1msg, sizeof v1msg, "message is longer than MAX_MESSAGE_SIZE (%zu bytes)", max_message_bytes);
        }
    }

    json_t *sid = json_object_get(b->root, "session_id");
    if (!sid || (f == API_V1 && json_is_null(sid))) {
        if (f == API_SEED) {
            json_array_append_new(
                errors, api_detail_item("missing", "body", "session_id", "Field required", json_incref(b->root)));
            if (!*v1msg)
                snprintf(v1msg, sizeof v1msg, "session_id is required");
        } else {
            chat_random_id(b->generated_id, sizeof b->generated_id, "s_", 12);
            b->session_id = b->generated_id;
        }
    } else if (!json_is_string(sid)) {
        json_array_append_new(errors, api_detail_item("string_type", "body", "session_id",
                                                      "Input should be a valid string", json_incref(sid)));
        if (!*v1msg)
            snprintf(v1msg, sizeof v1msg, "session_id must be a string");
    } else if (!chat_valid_id(json_string_value(sid))) {
        json_array_append_new(errors, api_detail_item("string_pattern_mismatch", "body", "session_id",
                                                      "String should match pattern '^[A-Za-z0-9._:-]{1,128}$'",
                                                      json_incref(sid)));
        if (!*v1msg)
            snprintf(v1msg, sizeof v1msg, "invalid session_id: use 1 to 128 characters of letters, digits and . _ : -");
    } else {
        b->session_id = json_string_value(sid);
    }

    if (!opt_string(b->root, "system_prompt", &b->system_prompt, errors) && !*v1msg)
        snprintf(v1msg, sizeof v1msg, "system_prompt must be a string");
    if (b->system_prompt && !*b->system_prompt)
        b->system_prompt = NULL; /* the template's `system_prompt or DEFAULT` */
    if (f == API_V1) {
        if (!opt_string(b->root, "model", &b->model, errors) && !*v1msg)
            snprintf(v1msg, sizeof v1msg, "model must be a string");
        if (b->model && !*b->model) {
            b->model = NULL;
        }
        json_t *tr = json_object_get(b->root, "truncation");
        if (tr && !json_is_null(tr)) {
            const char *v = json_string_value(tr);
            if (v && strcmp(v, "auto") == 0)
                b->truncation = TURN_TRUNCATE_AUTO;
            else if (v && strcmp(v, "reject") == 0)
                b->truncation = TURN_TRUNCATE_REJECT;
            else {
                json_array_append_new(errors, api_detail_item("enum", "body", "truncation",
                                                              "Input should be 'auto' or 'reject'", json_incref(tr)));
                if (!*v1msg)
                    snprintf(v1msg, sizeof v1msg, "truncation must be \"auto\" or \"reject\"");
            }
        }
        json_t *mt = json_object_get(b->root, "max_tokens");
        if (mt && !json_is_null(mt)) {
            if (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000) {
                json_array_append_new(errors,
                                      api_detail_item("int_type", "body", "max_tokens",
                                                      "Input should be an integer in 1..1000000", json_incref(mt)));
                if (!*v1msg)
                    snprintf(v1msg, sizeof v1msg, "max_tokens must be an integer in 1..1000000");
            } else {
                b->max_tokens = (int)json_integer_value(mt);
            }
        }
    }

    if (f == API_V1) {
        v1_check k = {
            .errors = errors, .msg = v1msg, .max_message_bytes = max_message_bytes, .max_image_bytes = max_image_bytes
        };
        if (cv && m)
            v1_fail(&k, "extra_forbidden", "content", NULL,
                    "send either message or content, not both (content holds the message's text as a text block)");
        size_t e0 = json_array_size(errors);
        json_t *blocks = trv ? parse_tool_results(&k, trv) : NULL;
        json_t *content = cv ? parse_content(&k, cv) : NULL;
        if (content) {
            if (blocks) {
                json_array_extend(blocks, content);
                json_decref(content);
            } else {
                blocks = content;
            }
        } else if (blocks && b->message) {
            json_array_append_new(blocks, json_pack("{s:s,s:s}", "type", "text", "text", b->message));
        }
        if (json_array_size(errors) > e0 || (trv && !blocks) || (cv && !content)) {
            json_decref(blocks);
            blocks = NULL;
        }
        b->blocks = blocks;
        if (blocks && !b->message)
            b->message = ""; /* the turn reads the blocks */
        b->options = parse_options(&k, b->root);
        if (k.first_is_image)
            why->status = 413;
    }

    if (json_array_size(errors) > 0) {
        json_decref(b->blocks);
        json_decref(b->options);
        b->blocks = b->options = NULL;
        why->detail = errors;
        snprintf(why->message, sizeof why->message, "%s", v1msg);
        json_decref(b->root);
        b->root = NULL;
        return false;
    }
    json_decref(errors);
    return true;
}

void api_chat_turn_params(const api_chat_body *b, turn_params *p)
{
    *p = (turn_params){
        .session_id = b->session_id,
        .message = b->message,
        .system_prompt = b->system_prompt,
        .model = b->model,
        .max_tokens = b->max_tokens,
        .truncation = b->truncation,
        .message_blocks = b->blocks,
        .options = b->options,
    };
}

/*
 * Parses and validates the request's chat body. On failure answers the request
 * (422 {"detail": [...]} seed / 400 invalid_request_error v1) and returns false.
 */
static bool parse_chat_body(http_req *r, api_env *w, api_flavor f, chat_body *b)
{
    size_t len;
    const char *text = http_req_body(r, &len);
    api_chat_invalid why;
    if (api_chat_body_parse_ex(text, len, f, w->cfg->max_message_bytes, w->cfg->max_image_size, b, &why))
        return true;
    if (f == API_SEED) {
        http_req_log_set(r, "error_type", json_string("validation_error"));
        http_reply_json(r, 422, json_pack("{s:o}", "detail", why.detail));
    } else {
        json_decref(why.detail);
        if (why.status == 413)
            api_error(r, API_V1, 413, "request_too_large", "%s", why.message);
        else
            api_error(r, API_V1, 400, "invalid_request_error", "%s", why.message);
    }
    return false;
}

/* ---- renderers ---- */

/* Writes one SSE event: "event: NAME\ndata: JSON\n\n" (json stolen). */
static bool sse_event(chat_ctx *c, const char *name, json_t *data)
{
    chat_json_writer *w = chat_event_open(name);
    chat_json_val(w, NULL, data);
    json_decref(data);
    return chat_event_send(c, w);
}

/* An event whose data is {"text": ...}: the deltas, the thinking. */
static bool sse_text_event(chat_ctx *c, const char *name, const char *text, size_t len)
{
    chat_json_writer *w = chat_event_open(name);
    chat_json_obj(w, NULL);
    chat_json_strn(w, "text", text, len);
    chat_json_close(w);
    return chat_event_send(c, w);
}

static void seed_json_done(chat_ctx *c, const turn_result *res)
{
    char ts[32];
    chat_format_iso_local(res->created_at, ts);
    chat_json_writer *w = chat_json_doc_new(HTTP_JSON_FLAGS);
    chat_json_obj(w, NULL);
    chat_json_strn(w, "response", res->text, res->text_len);
    chat_json_str(w, "session_id", res->session_id);
    chat_json_str(w, "timestamp", ts);
    chat_json_int(w, "turn_count", res->turn_count);
    chat_json_close(w);
    http_reply_json_doc(c->r, 200, w);
}

static const chat_renderer seed_json = {
    .stream = false,
    .done = seed_json_done,
    .error = chat_error_reply,
};

/* The template's /chat-stream: raw text. The response starts with the first
 * byte of the reply, so a failure before it still gets a real status. */
static bool seed_text_delta(chat_ctx *c, const char *text, size_t len)
{
    if (!c->started) {
        http_stream_start(c->r, 200, "text/plain; charset=utf-8");
        c->started = true;
    }
    return chat_write(c, text, len);
}

static void seed_text_done(chat_ctx *c, const turn_result *res)
{
    (void)res;
    if (!c->started)
        http_stream_start(c->r, 200, "text/plain; charset=utf-8");
    http_stream_end(c->r);
}

static void seed_text_error(chat_ctx *c, const turn_error *err)
{
    if (!c->started) {
        chat_error_reply(c, err);
        return;
    }
    char *tail = chat_xasprintf("\nError: %s", err->message); /* the template's trailer */
    chat_write(c, tail, strlen(tail));
    free(tail);
    http_stream_end(c->r);
}

static const chat_renderer seed_text = {
    .stream = true,
    .delta = seed_text_delta,
    .done = seed_text_done,
    .error = seed_text_error,
};

/* The /v1 usage: the four counts, and reasoning_tokens (of output_tokens)
 * when the provider reported some (OpenAI reports 0 for every model that does
 * not reason: left out, so that a reply's usage has the same keys whichever
 * provider answered). */
static json_t *v1_usage(const turn_result *res)
{
    json_t *u = api_usage_json(&res->usage);
    if (res->reasoning_tokens > 0)
        json_object_set_new(u, "reasoning_tokens", json_integer(res->reasoning_tokens));
    return u;
}

/* What a /v1 reply says about its content: the canonical blocks, the tool
 * calls (always an array) and the stop sequence. */
static void write_content_fields(chat_json_writer *w, const turn_result *res)
{
    if (res->content) {
        chat_json_val(w, "content", res->content);
    } else { /* a reply without blocks: its text as one block */
        chat_json_arr(w, "content");
        if (res->text_len) {
            chat_json_obj(w, NULL);
            chat_json_str(w, "type", "text");
            chat_json_strn(w, "text", res->text, res->text_len);
            chat_json_close(w);
        }
        chat_json_close(w);
    }
    json_t *calls = chat_tool_calls_json(res->content);
    chat_json_val(w, "tool_calls", calls);
    json_decref(calls);
    if (res->stop_sequence)
        chat_json_str_or_empty(w, "stop_sequence", res->stop_sequence, strlen(res->stop_sequence));
    else
        chat_json_null(w, "stop_sequence");
}

/* The first members of a /v1 reply and of the stream's done event. */
static void write_reply_head(chat_json_writer *w, const turn_result *res)
{
    char idbuf[32];
    snprintf(idbuf, sizeof idbuf, "msg_%lld", (long long)res->message_id);
    chat_json_str(w, "id", idbuf);
    chat_json_str(w, "session_id", res->session_id);
    chat_json_str(w, "model", res->model);
}

/* Their usage, cost and counts. */
static void write_reply_counts(chat_json_writer *w, const turn_result *res)
{
    json_t *usage = v1_usage(res), *cost = api_cost_json(res->cost_micros);
    chat_json_val(w, "usage", usage);
    chat_json_val(w, "cost", cost);
    json_decref(usage);
    json_decref(cost);
    chat_json_int(w, "turn_count", res->turn_count);
    chat_json_int(w, "truncated_turns", res->truncated_turns);
}

static void v1_json_done(chat_ctx *c, const turn_result *res)
{
    char ts[32];
    chat_format_rfc3339(res->created_at, ts);
    chat_json_writer *w = chat_json_doc_new(HTTP_JSON_FLAGS);
    chat_json_obj(w, NULL);
    write_reply_head(w, res);
    chat_json_strn(w, "response", res->text, res->text_len);
    chat_json_str(w, "stop_reason", res->stop_reason);
    write_reply_counts(w, res);
    chat_json_str(w, "created_at", ts);
    chat_json_str(w, "request_id", http_req_id(c->r));
    write_content_fields(w, res);
    chat_json_close(w);
    http_reply_json_doc(c->r, 200, w);
}

static const chat_renderer v1_json = {
    .stream = false,
    .done = v1_json_done,
    .error = chat_error_reply,
};

static void v1_sse_start(chat_ctx *c, const turn_info *info)
{
    chat_start_sse(c);
    chat_json_writer *w = chat_event_open("start");
    chat_json_obj(w, NULL);
    chat_json_str(w, "session_id", info->session_id);
    chat_json_str(w, "model", info->model);
    chat_json_str(w, "request_id", http_req_id(c->r));
    chat_json_close(w);
    chat_event_send(c, w);
}

static bool v1_sse_delta(chat_ctx *c, const char *text, size_t len)
{
    return sse_text_event(c, "delta", text, len);
}

/* The tool call being streamed (blocks never interleave: one at a time). */
#define V1_TOOL_ARGS_MAX ((size_t)16 << 20)
typedef struct v1_sse_state {
    int block; /* the tool call's block index, -1 when none is open */
    int calls; /* tool calls opened so far: the next one's index */
    char *id;  /* the open call's id and name (heap; "" when the provider gave none) */
    char *name;
    chat_buf args; /* its arguments so far (JSON text) */
} v1_sse_state;

static void v1_sse_state_free(void *p)
{
    v1_sse_state *st = p;
    chat_buf_free(&st->args);
    free(st->id);
    free(st->name);
    free(st);
}

static v1_sse_state *v1_state(chat_ctx *c)
{
    if (!c->rnd_state) {
        v1_sse_state *st = chat_xcalloc(1, sizeof *st);
        st->block = -1;
        chat_buf_init(&st->args, V1_TOOL_ARGS_MAX);
        c->rnd_state = st;
        c->rnd_state_free = v1_sse_state_free;
    }
    return c->rnd_state;
}

/*
 * The typed events: delta {text}; thinking {text}; tool_call_delta {index,
 * id?, name?, arguments_delta} as a call's arguments arrive (index: the
 * call's position in tool_calls, from 0); tool_call {index, id, name, input}
 * once its arguments are complete.
 */
static bool v1_sse_event(chat_ctx *c, const llm_event *ev)
{
    v1_sse_state *st = v1_state(c);
    switch (ev->kind) {
    case LLM_EV_TEXT: return ev->len ? v1_sse_delta(c, ev->data, ev->len) : false;
    case LLM_EV_THINKING: return ev->len ? sse_text_event(c, "thinking", ev->data, ev->len) : false;
    case LLM_EV_TOOL_START:
        st->block = ev->index;
        free(st->id);
        free(st->name);
        st->id = chat_xstrdup(ev->id ? ev->id : "");
        st->name = chat_xstrdup(ev->name ? ev->name : "");
        chat_buf_clear(&st->args);
        return sse_event(
            c, "tool_call_delta",
            json_pack("{s:i,s:s,s:s,s:s}", "index", st->calls, "id", st->id, "name", st->name, "arguments_delta", ""));
    case LLM_EV_TOOL_ARGS:
        if (st->block != ev->index || !ev->len)
            return false;
        if (chat_buf_append(&st->args, ev->data, ev->len) != CHAT_OK)
            chat_buf_clear(&st->args); /* past the bound: the done event still has the input */
        return sse_event(c, "tool_call_delta",
                         json_pack("{s:i,s:s%}", "index", st->calls, "arguments_delta", ev->data, ev->len));
    case LLM_EV_BLOCK_STOP: {
        if (st->block != ev->index)
            return false;
        const char *args = chat_buf_str(&st->args);
        json_t *input = *args ? chat_json_loads(args, 0, NULL) : json_object();
        if (!json_is_object(input)) {
            json_decref(input);
            input = json_object();
        }
        bool full = sse_event(
            c, "tool_call",
            json_pack("{s:i,s:s,s:s,s:o}", "index", st->calls, "id", st->id, "name", st->name, "input", input));
        st->block = -1;
        st->calls++;
        chat_buf_clear(&st->args);
        return full;
    }
    }
    return false;
}

static void v1_sse_done(chat_ctx *c, const turn_result *res)
{
    chat_json_writer *w = chat_event_open("done");
    chat_json_obj(w, NULL);
    write_reply_head(w, res);
    chat_json_str(w, "stop_reason", res->stop_reason);
    write_reply_counts(w, res);
    write_content_fields(w, res);
    chat_json_close(w);
    chat_event_send(c, w);
    http_stream_end(c->r);
}

static void v1_sse_error(chat_ctx *c, const turn_error *err)
{
    if (!c->started) {
        chat_error_reply(c, err);
        return;
    }
    json_t *data =
        json_pack("{s:s,s:s,s:s}", "type", err->type, "message", err->message, "request_id", http_req_id(c->r));
    if (err->retry_after_s > 0) /* the Retry-After a JSON reply would have carried */
        json_object_set_new(data, "retry_after", json_integer(err->retry_after_s));
    sse_event(c, "error", data);
    http_stream_end(c->r);
}

static const chat_renderer v1_sse = {
    .stream = true,
    .start = v1_sse_start,
    .delta = v1_sse_delta,
    .done = v1_sse_done,
    .error = v1_sse_error,
    .event = v1_sse_event,
};

/* ---- handlers ---- */

/* A chat request between its body's validation and its turn (the
 * Idempotency-Key look-up may wait on the store). */
typedef struct chat_job {
    http_req *r;
    api_env *w;
    const chat_renderer *rnd;
    api_flavor f;
    chat_body b;
} chat_job;

static void run_chat(void *ud, idem_decision d, store_idem *idem)
{
    chat_job *j = ud;
    http_req *r = j->r;
    if (d == IDEM_REPLAY) {
        chat_replay_record(r, j->w, j->rnd, j->f, idem, NULL, NULL);
    } else if (d != IDEM_ANSWERED) {
        turn_params p;
        api_chat_turn_params(&j->b, &p);
        p.stream = j->rnd->stream;
        p.request_id = http_req_id(r);
        p.owner = api_identity(r)->key_id[0] ? api_identity(r)->key_id : NULL;
        p.see_all = api_owner_filter(r) == NULL;
        p.idem_scope = api_identity(r)->key_id;
        p.idem_key = d == IDEM_RUN ? http_req_header(r, "Idempotency-Key") : NULL;
        chat_run(r, j->w, j->rnd, j->f, &p, NULL, NULL);
    }
    api_chat_body_release(&j->b);
    http_req_release(r);
    free(j);
}

static void handle_chat(http_req *r, api_env *w, const chat_renderer *rnd, api_flavor f)
{
    chat_job *j = chat_xcalloc(1, sizeof *j);
    if (!parse_chat_body(r, w, f, &j->b)) {
        free(j);
        return;
    }
    j->r = r;
    j->w = w;
    j->rnd = rnd;
    j->f = f;
    http_req_hold(r);
    if (f == API_V1)
        api_idempotency_begin(r, w, f, api_identity(r)->key_id, j->b.session_id, run_chat, j);
    else
        run_chat(j, IDEM_NONE, NULL);
}

void api_seed_chat(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &seed_json, API_SEED);
}

void api_seed_chat_stream(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &seed_text, API_SEED);
}

void api_v1_chat(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &v1_json, API_V1);
}

void api_v1_chat_stream(http_req *r, api_env *w, char **params)
{
    (void)params;
    handle_chat(r, w, &v1_sse, API_V1);
}
