/*
 * content.c: checks and measures of canonical content (see llm/content.h).
 *
 * Pure functions over jansson values: no allocation but the returned text
 * (llm_content_text), no I/O, any thread.
 */
#include "llm/content.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json_out.h"
#include "core/util.h"

static const char *const event_names[] = {
    [LLM_EV_TEXT] = "text",           [LLM_EV_THINKING] = "thinking",     [LLM_EV_TOOL_START] = "tool_start",
    [LLM_EV_TOOL_ARGS] = "tool_args", [LLM_EV_BLOCK_STOP] = "block_stop",
};

const char *llm_event_name(llm_event_kind k)
{
    return (unsigned)k < sizeof event_names / sizeof event_names[0] && event_names[k] ? event_names[k] : "?";
}

/* ---- llm_content_check ---- */

/* Writes "<path>.<field>: <reason>" into why and returns why. path is the
 * block's position, e.g. "content[2]" or "content[1].content[0]". */
static const char *bad(char *why, size_t whylen, const char *path, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static const char *bad(char *why, size_t whylen, const char *path, const char *field, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (why && whylen > 0)
        snprintf(why, whylen, "%s%s%s: %s", path, field && *field ? "." : "", field ? field : "", reason);
    return why && whylen > 0 ? why : "invalid content";
}

static bool media_type_ok(const char *mt)
{
    return strcmp(mt, "image/png") == 0 || strcmp(mt, "image/jpeg") == 0 || strcmp(mt, "image/gif") == 0 ||
           strcmp(mt, "image/webp") == 0;
}

/* A string member: required (non-empty when nonempty), or optional. NULL when fine. */
static const char *check_string(const json_t *b, const char *key, bool required, bool nonempty, const char *path,
                                char *why, size_t whylen)
{
    const json_t *v = json_object_get(b, key);
    if (!v)
        return required ? bad(why, whylen, path, key, "required") : NULL;
    if (!json_is_string(v))
        return bad(why, whylen, path, key, "must be a string");
    if (nonempty && json_string_length(v) == 0)
        return bad(why, whylen, path, key, "must not be empty");
    return NULL;
}

static const char *check_image(const json_t *b, const char *path, char *why, size_t whylen)
{
    const json_t *src = json_object_get(b, "source");
    if (!src)
        return bad(why, whylen, path, "source", "required");
    if (!json_is_object(src))
        return bad(why, whylen, path, "source", "must be an object");
    const char *type = json_string_value(json_object_get(src, "type"));
    if (!type)
        return bad(why, whylen, path, "source.type", "required: \"base64\" or \"url\"");
    if (strcmp(type, "base64") == 0) {
        const json_t *mt = json_object_get(src, "media_type");
        if (!json_is_string(mt))
            return bad(why, whylen, path, "source.media_type",
                       "required: image/png, image/jpeg, image/gif or image/webp");
        if (!media_type_ok(json_string_value(mt)))
            return bad(why, whylen, path, "source.media_type",
                       "\"%.64s\" is not supported: use image/png, image/jpeg, image/gif or image/webp",
                       json_string_value(mt));
        const json_t *data = json_object_get(src, "data");
        if (!json_is_string(data))
            return bad(why, whylen, path, "source.data", "required: the image as base64");
        if (!chat_b64_canonical(json_string_value(data), json_string_length(data)))
            return bad(why, whylen, path, "source.data", "not valid base64");
        return NULL;
    }
    if (strcmp(type, "url") == 0) {
        const json_t *url = json_object_get(src, "url");
        if (!json_is_string(url))
            return bad(why, whylen, path, "source.url", "required");
        const char *u = json_string_value(url);
        if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0)
            return bad(why, whylen, path, "source.url", "must be an http:// or https:// URL");
        return NULL;
    }
    return bad(why, whylen, path, "source.type", "\"%.32s\" is not supported: use \"base64\" or \"url\"", type);
}

static const char *check_block(const json_t *b, const char *role, const char *path, bool nested, char *why,
                               size_t whylen);

static const char *check_tool_result(const json_t *b, const char *path, char *why, size_t whylen)
{
    const char *r = check_string(b, "tool_use_id", true, true, path, why, whylen);
    if (r)
        return r;
    const json_t *ie = json_object_get(b, "is_error");
    if (ie && !json_is_boolean(ie))
        return bad(why, whylen, path, "is_error", "must be a boolean");
    const json_t *c = json_object_get(b, "content");
    if (!c || json_is_string(c))
        return NULL;
    if (!json_is_array(c))
        return bad(why, whylen, path, "content", "must be a string or an array of text and image blocks");
    size_t i;
    const json_t *inner;
    json_array_foreach(c, i, inner)
    {
        char sub[96];
        snprintf(sub, sizeof sub, "%s.content[%zu]", path, i);
        if ((r = check_block(inner, "user", sub, true, why, whylen)) != NULL)
            return r;
    }
    return NULL;
}

/* One block at path; nested: inside a tool_result (text and image only). */
static const char *check_block(const json_t *b, const char *role, const char *path, bool nested, char *why,
                               size_t whylen)
{
    if (!json_is_object(b))
        return bad(why, whylen, path, NULL, "a content block must be an object");
    const json_t *tv = json_object_get(b, "type");
    if (!json_is_string(tv))
        return bad(why, whylen, path, "type", "required");
    const char *type = json_string_value(tv);
    const json_t *cc = json_object_get(b, "cache_control");
    if (cc && !json_is_object(cc))
        return bad(why, whylen, path, "cache_control", "must be an object");
    bool user = strcmp(role, "user") == 0;
    if (strcmp(type, "text") == 0)
        return check_string(b, "text", true, false, path, why, whylen);
    if (strcmp(type, "image") == 0) {
        if (!user)
            return bad(why, whylen, path, "type", "an image may appear only in a user message");
        return check_image(b, path, why, whylen);
    }
    if (nested)
        return bad(why, whylen, path, "type", "a tool result holds only text and image blocks, not \"%.32s\"", type);
    if (strcmp(type, "tool_use") == 0) {
        if (user)
            return bad(why, whylen, path, "type", "tool_use may appear only in an assistant message");
        const char *r = check_string(b, "id", true, true, path, why, whylen);
        if (!r)
            r = check_string(b, "name", true, true, path, why, whylen);
        if (r)
            return r;
        const json_t *in = json_object_get(b, "input");
        if (!in)
            return bad(why, whylen, path, "input", "required");
        if (!json_is_object(in))
            return bad(why, whylen, path, "input", "must be a JSON object");
        return NULL;
    }
    if (strcmp(type, "tool_result") == 0) {
        if (!user)
            return bad(why, whylen, path, "type", "tool_result may appear only in a user message");
        return check_tool_result(b, path, why, whylen);
    }
    if (strcmp(type, "thinking") == 0) {
        if (user)
            return bad(why, whylen, path, "type", "thinking may appear only in an assistant message");
        const char *r = check_string(b, "thinking", true, false, path, why, whylen);
        return r ? r : check_string(b, "signature", false, false, path, why, whylen);
    }
    if (strcmp(type, "redacted_thinking") == 0) {
        if (user)
            return bad(why, whylen, path, "type", "redacted_thinking may appear only in an assistant message");
        return check_string(b, "data", true, true, path, why, whylen);
    }
    return bad(why, whylen, path, "type", "unknown block type \"%.32s\"", type);
}

const char *llm_content_check(const json_t *content, const char *role, char *why, size_t whylen)
{
    if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
        return bad(why, whylen, "role", NULL, "must be \"user\" or \"assistant\"");
    if (!json_is_array(content))
        return bad(why, whylen, "content", NULL, "must be an array of content blocks");
    if (json_array_size(content) == 0)
        return bad(why, whylen, "content", NULL, "must hold at least one block");
    size_t i;
    const json_t *b;
    json_array_foreach(content, i, b)
    {
        char path[32];
        snprintf(path, sizeof path, "content[%zu]", i);
        const char *r = check_block(b, role, path, false, why, whylen);
        if (r)
            return r;
        /* Tool calls of one message are told apart by their ids. */
        const char *type = json_string_value(json_object_get(b, "type"));
        if (strcmp(type, "tool_use") == 0 || strcmp(type, "tool_result") == 0) {
            const char *key = type[5] == 'u' ? "id" : "tool_use_id";
            const char *id = json_string_value(json_object_get(b, key));
            for (size_t k = 0; k < i; k++) {
                const json_t *o = json_array_get(content, k);
                const char *ot = json_string_value(json_object_get(o, "type"));
                if (ot && strcmp(ot, type) == 0 && strcmp(json_string_value(json_object_get(o, key)), id) == 0)
                    return bad(why, whylen, path, key, "\"%.64s\" repeats content[%zu]", id, k);
            }
        }
    }
    return NULL;
}

/* ---- text, presence, tokens ---- */

char *llm_content_text(const json_t *content)
{
    /* Two passes: measure, then copy into a buffer of the final size. */
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        char *out = pass ? chat_xmalloc(total + 1) : NULL;
        size_t used = 0, i;
        const json_t *blk;
        json_array_foreach(content, i, blk)
        {
            const char *type = json_string_value(json_object_get(blk, "type"));
            const json_t *text = json_object_get(blk, "text");
            if (!type || strcmp(type, "text") != 0 || !json_is_string(text))
                continue;
            size_t len = json_string_length(text);
            if (out)
                memcpy(out + used, json_string_value(text), len);
            used += len;
        }
        if (out) {
            out[used] = '\0';
            return out;
        }
        total = used;
    }
    return chat_xstrdup(""); /* not reached */
}

bool llm_content_has(const json_t *content, const char *type)
{
    size_t i;
    const json_t *blk;
    json_array_foreach(content, i, blk)
    {
        const char *t = json_string_value(json_object_get(blk, "type"));
        if (t && type && strcmp(t, type) == 0)
            return true;
    }
    return false;
}

/* Unicode code points of s (len bytes): its UTF-8 lead bytes. */
static int64_t code_points(const char *s, size_t len)
{
    int64_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    return n;
}

static int64_t json_code_points(const json_t *v)
{
    char *s = chat_json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY, NULL);
    if (!s)
        return 0;
    int64_t n = code_points(s, strlen(s));
    free(s);
    return n;
}

/* Adds the code points of content's text to *cps and its images to *images. */
static void measure(const json_t *content, int64_t *cps, int64_t *images)
{
    if (json_is_string(content)) {
        *cps += code_points(json_string_value(content), json_string_length(content));
        return;
    }
    size_t i;
    const json_t *blk;
    json_array_foreach(content, i, blk)
    {
        const char *type = json_string_value(json_object_get(blk, "type"));
        if (!type)
            continue;
        const json_t *v;
        if (strcmp(type, "image") == 0) {
            (*images)++;
        } else if (strcmp(type, "text") == 0 && json_is_string(v = json_object_get(blk, "text"))) {
            *cps += code_points(json_string_value(v), json_string_length(v));
        } else if (strcmp(type, "thinking") == 0 && json_is_string(v = json_object_get(blk, "thinking"))) {
            *cps += code_points(json_string_value(v), json_string_length(v));
        } else if (strcmp(type, "tool_use") == 0) {
            const json_t *name = json_object_get(blk, "name");
            if (json_is_string(name))
                *cps += code_points(json_string_value(name), json_string_length(name));
            if ((v = json_object_get(blk, "input")) != NULL)
                *cps += json_code_points(v);
        } else if (strcmp(type, "tool_result") == 0 && (v = json_object_get(blk, "content")) != NULL) {
            measure(v, cps, images);
        } else if (strcmp(type, "document") == 0) {
            /* Passed to Anthropic by the API that accepts it: a text
             * document counts its text, any other as an image would. */
            const json_t *src = json_object_get(blk, "source");
            const char *st = json_string_value(json_object_get(src, "type"));
            if (st && strcmp(st, "text") == 0 && json_is_string(v = json_object_get(src, "data")))
                *cps += code_points(json_string_value(v), json_string_length(v));
            else
                (*images)++;
        }
    }
}

int64_t llm_content_tokens(const json_t *content)
{
    int64_t cps = 0, images = 0;
    measure(content, &cps, &images);
    return (cps + 3) / 4 + images * LLM_IMAGE_TOKENS;
}
