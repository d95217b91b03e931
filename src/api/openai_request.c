/*
 * openai_request.c: the body of POST /v1/chat/completions, OpenAI's Chat
 * Completions request (docs/PROTOCOLS.md B2), checked and translated into
 * chatd's canonical content and options (llm/content.h). Pure functions
 * (api/request.h): bytes in, an api_oa_request or OpenAI's error envelope out.
 *
 * Messages: system and developer messages become the system prompt; a user
 * message is text, or blocks when it holds images (data: URLs become base64
 * image blocks, https URLs URL sources); an assistant message's tool_calls
 * become tool_use blocks (arguments parsed to an object), its thinking_blocks
 * (what chatd's replies carry, LiteLLM's convention) thinking blocks; tool messages become
 * tool_result blocks of one user message, with a user message right after
 * them merged into it (Anthropic wants the results first in the message that
 * follows the calls, docs/PROTOCOLS.md A2). Tool results are checked against
 * the calls they answer, as OpenAI does: every call answered, once, before the
 * conversation goes on.
 *
 * Fields: each top-level field is in the table below: the request itself,
 * an option (carried in canonical form; the turn checks it against the model,
 * chat/models.h), ignored (it does not change the answer), or refused (chatd
 * cannot carry it to any provider: 400 unsupported_parameter, or left out and
 * named with DROP_UNSUPPORTED_PARAMS=on). A field not in the table is a 400,
 * as at OpenAI, so that a misspelt option never goes silently unused. A null
 * value is an absent field, and an option at its OpenAI default that changes
 * nothing (n 1, logprobs false, penalties 0, parallel_tool_calls true,
 * response_format text) is left out, so that a client sending defaults works
 * with every provider.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/request.h"
#include "core/alloc.h"
#include "core/json_in.h"
#include "core/util.h"

/* The parse of one request: where the answer and the translation go. */
typedef struct parse {
    api_oa_request *q;
    api_oa_invalid *why;
    const api_oa_limits *lim;
    size_t cap;       /* capacity of q->hist and q->texts (one per input message at most) */
    json_t **msg;     /* heap, cap: each hist entry's blocks while parsing (borrowed from q->blocks) */
    json_t *pending;  /* the ids of the last assistant message's tool calls not yet answered (object) */
    json_t *answered; /* the ids of its calls already answered (object) */
    bool seen_assistant;
    bool group_open; /* the last hist entry is a user message of tool results still taking results */
} parse;

/* Records a refusal (OpenAI's envelope, status 400) and returns false. */
static bool invalid(api_oa_invalid *why, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool invalid(api_oa_invalid *why, const char *code, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why->message, sizeof why->message, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof why->message)
        chat_utf8_trim(why->message); /* a sequence cut by the bound */
    chat_one_line(why->message);      /* client bytes quoted in it may hold a newline */
    why->status = 400;
    why->type = "invalid_request_error";
    why->code = code;
    why->param = param;
    return false;
}

/* ---- small checks ---- */

static bool absent(const json_t *v)
{
    return !v || json_is_null(v);
}

/* A function or schema name as OpenAI takes it: 1..64 of [A-Za-z0-9_-]. */
static bool valid_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/*
 * Checks that s (n bytes) is standard padded base64 (RFC 4648 section 4: the
 * alphabet A-Z a-z 0-9 + /, a length that is a multiple of 4, at most two '='
 * at the end, no stray bits before them). Returns the decoded size, or -1; head (16 bytes) receives the
 * first decoded bytes (at most 12).
 */
static long long b64_check(const char *s, size_t n, unsigned char head[16], size_t *headlen)
{
    *headlen = 0;
    if (!chat_b64_canonical(s, n))
        return -1;
    size_t pad = s[n - 1] != '=' ? 0 : s[n - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i + 4 <= n && *headlen + 3 <= 12; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++)
            v[k] = s[i + k] == '=' ? 0 : chat_b64_value((unsigned char)s[i + k]);
        unsigned long w = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) | ((unsigned long)v[2] << 6) |
                          (unsigned long)v[3];
        head[(*headlen)++] = (unsigned char)(w >> 16);
        head[(*headlen)++] = (unsigned char)(w >> 8);
        head[(*headlen)++] = (unsigned char)w;
    }
    return (long long)(n / 4 * 3 - pad);
}

/* The image type the first bytes of an image say, or NULL (PNG, JPEG, GIF, WebP signatures). */
static const char *image_magic(const unsigned char *h, size_t n)
{
    if (n >= 8 && memcmp(h, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "image/png";
    if (n >= 3 && h[0] == 0xFF && h[1] == 0xD8 && h[2] == 0xFF)
        return "image/jpeg";
    if (n >= 6 && (memcmp(h, "GIF87a", 6) == 0 || memcmp(h, "GIF89a", 6) == 0))
        return "image/gif";
    if (n >= 12 && memcmp(h, "RIFF", 4) == 0 && memcmp(h + 8, "WEBP", 4) == 0)
        return "image/webp";
    return NULL;
}

/*
 * The canonical image block of an image_url part (messages[i].content[j]):
 * a data: URL of a PNG, JPEG, GIF or WebP image in base64 (checked, at most
 * MAX_IMAGE_SIZE decoded: 413 beyond) becomes a base64 source, an https URL a
 * URL source; anything else is refused. NULL with *p->why filled on refusal.
 */
static json_t *image_block(parse *p, json_t *part, size_t i, size_t j)
{
    json_t *iu = json_object_get(part, "image_url");
    const char *url = json_string_value(json_is_object(iu) ? json_object_get(iu, "url") : iu);
    if (!url) {
        invalid(p->why, "invalid_type", "messages", "messages[%zu].content[%zu].image_url.url must be a string", i, j);
        return NULL;
    }
    json_t *detail = json_is_object(iu) ? json_object_get(iu, "detail") : NULL;
    if (!absent(detail) && !(json_is_string(detail) && strcmp(json_string_value(detail), "auto") == 0)) {
        /* A resolution choice only OpenAI's own models have: refused rather than ignored. */
        invalid(p->why, "unsupported_parameter", "messages",
                "messages[%zu].content[%zu].image_url.detail: only \"auto\" is supported (chatd sends images at "
                "the provider's own resolution)",
                i, j);
        return NULL;
    }
    if (strncmp(url, "https://", 8) == 0) {
        if (!url[8] || strchr(url, ' ')) {
            invalid(p->why, "invalid_value", "messages", "messages[%zu].content[%zu].image_url.url is not a URL", i, j);
            return NULL;
        }
        return json_pack("{s:s,s:{s:s,s:s}}", "type", "image", "source", "type", "url", "url", url);
    }
    if (strncasecmp(url, "data:", 5) != 0) {
        invalid(p->why, "invalid_value", "messages",
                "messages[%zu].content[%zu].image_url.url must be a data: URL (base64 PNG, JPEG, GIF or WebP) or "
                "an https URL",
                i, j);
        return NULL;
    }
    const char *comma = strchr(url, ',');
    const char *mt = url + 5;
    static const char *const types[] = { "image/png", "image/jpeg", "image/gif", "image/webp", "image/jpg" };
    const char *type = NULL;
    for (size_t k = 0; comma && k < sizeof types / sizeof types[0]; k++) {
        size_t tl = strlen(types[k]);
        if ((size_t)(comma - mt) == tl + 7 && strncasecmp(mt, types[k], tl) == 0 &&
            strncasecmp(mt + tl, ";base64", 7) == 0)
            type = k == 4 ? "image/jpeg" : types[k];
    }
    if (!type) {
        invalid(p->why, "invalid_value", "messages",
                "messages[%zu].content[%zu].image_url.url: a data URL must be data:image/png|jpeg|gif|webp;base64,...",
                i, j);
        return NULL;
    }
    const char *data = comma + 1;
    size_t n = strlen(data);
    unsigned char head[16];
    size_t headlen;
    long long size = b64_check(data, n, head, &headlen);
    if (size < 0) {
        invalid(p->why, "invalid_value", "messages",
                "messages[%zu].content[%zu].image_url.url: the data is not valid base64", i, j);
        return NULL;
    }
    if ((unsigned long long)size > p->lim->max_image_bytes) {
        invalid(p->why, "request_too_large", "messages",
                "messages[%zu].content[%zu]: the image is %lld bytes, more than MAX_IMAGE_SIZE (%zu bytes)", i, j, size,
                p->lim->max_image_bytes);
        p->why->status = 413;
        return NULL;
    }
    const char *real = image_magic(head, headlen);
    if (!real) {
        invalid(p->why, "invalid_value", "messages",
                "messages[%zu].content[%zu].image_url.url: the data is not a PNG, JPEG, GIF or WebP image", i, j);
        return NULL;
    }
    /* The bytes say what the image is; a mislabelled data URL (a JPEG sent as
     * image/png, which providers refuse) is sent with its real type. */
    (void)type;
    return json_pack("{s:s,s:{s:s,s:s,s:s%}}", "type", "image", "source", "type", "base64", "media_type", real, "data",
                     data, n);
}

/* Appends {"type":"text","text":s} to blocks unless s is empty (providers refuse empty text blocks). */
static void add_text(json_t *blocks, const char *s, size_t n)
{
    if (n)
        json_array_append_new(blocks, json_pack("{s:s,s:s%}", "type", "text", "text", s, n));
}

/*
 * The text of a message whose content may only be text: a string, null (""),
 * or an array of text parts (and refusal parts where refusal is set: an
 * earlier assistant refusal is its text), appended to blocks as text blocks
 * when blocks is non-NULL, and to *out (a chat_buf, bounded by the body
 * already) when out is non-NULL. False with *p->why filled otherwise.
 */
static bool text_content(parse *p, json_t *content, size_t i, bool refusal, json_t *blocks, chat_buf *out,
                         const char *role)
{
    if (absent(content))
        return true;
    if (json_is_string(content)) {
        if (blocks)
            add_text(blocks, json_string_value(content), json_string_length(content));
        if (out && chat_buf_append(out, json_string_value(content), json_string_length(content)) != CHAT_OK)
            return invalid(p->why, "string_above_max_length", "messages", "messages[%zu] is too long", i);
        return true;
    }
    if (!json_is_array(content))
        return invalid(p->why, "invalid_type", "messages",
                       "messages[%zu].content must be a string or an array of content parts", i);
    size_t j;
    json_t *part;
    json_array_foreach(content, j, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        const char *key = type && strcmp(type, "text") == 0                 ? "text"
                          : type && refusal && strcmp(type, "refusal") == 0 ? "refusal"
                                                                            : NULL;
        json_t *t = key ? json_object_get(part, key) : NULL;
        if (!key)
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].content[%zu]: a %s message takes only text%s parts, not \"%s\"", i, j, role,
                           refusal ? " and refusal" : "", type ? type : "(no type)");
        if (!json_is_string(t))
            return invalid(p->why, "invalid_type", "messages", "messages[%zu].content[%zu].%s must be a string", i, j,
                           key);
        if (blocks)
            add_text(blocks, json_string_value(t), json_string_length(t));
        if (out && chat_buf_append(out, json_string_value(t), json_string_length(t)) != CHAT_OK)
            return invalid(p->why, "string_above_max_length", "messages", "messages[%zu] is too long", i);
    }
    return true;
}

/* A user message's content: a string, or an array of text and image_url parts, appended to blocks. */
static bool user_content(parse *p, json_t *content, size_t i, json_t *blocks)
{
    if (json_is_string(content)) {
        add_text(blocks, json_string_value(content), json_string_length(content));
        return true;
    }
    if (!json_is_array(content))
        return invalid(p->why, "invalid_type", "messages",
                       "messages[%zu].content must be a string or an array of content parts", i);
    size_t j;
    json_t *part;
    json_array_foreach(content, j, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!type)
            return invalid(p->why, "invalid_value", "messages", "messages[%zu].content[%zu].type is required", i, j);
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(part, "text");
            if (!json_is_string(t))
                return invalid(p->why, "invalid_type", "messages", "messages[%zu].content[%zu].text must be a string",
                               i, j);
            add_text(blocks, json_string_value(t), json_string_length(t));
        } else if (strcmp(type, "image_url") == 0) {
            json_t *b = image_block(p, part, i, j);
            if (!b)
                return false;
            json_array_append_new(blocks, b);
        } else if (strcmp(type, "input_audio") == 0 || strcmp(type, "file") == 0) {
            return invalid(p->why, "unsupported_parameter", "messages",
                           "messages[%zu].content[%zu]: %s parts are not supported (text and image_url are)", i, j,
                           type);
        } else {
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].content[%zu].type \"%s\" is not a user content part (text, image_url)", i, j,
                           type);
        }
    }
    return true;
}

/* Opens a new hist entry of role with an empty blocks array; returns its blocks. */
static json_t *hist_push(parse *p, const char *role)
{
    api_oa_request *q = p->q;
    json_t *blocks = json_array();
    json_array_append_new(q->blocks, blocks);
    q->hist[q->n_hist].role = role;
    p->msg[q->n_hist] = blocks;
    q->n_hist++;
    return blocks;
}

/* The ids still pending, for an error message ("call_1, call_2"). */
static void pending_list(const json_t *pending, char *out, size_t outlen)
{
    const char *id;
    json_t *v;
    size_t used = 0;
    out[0] = '\0';
    json_object_foreach((json_t *)pending, id, v)
    {
        int n = snprintf(out + used, outlen - used, "%s%s", used ? ", " : "", id);
        if (n < 0 || (size_t)n >= outlen - used) {
            chat_utf8_trim(out);
            break;
        }
        used += (size_t)n;
    }
}

/* Refuses messages[i] when the last assistant message's tool calls are not all answered yet. */
static bool calls_answered(parse *p, size_t i)
{
    if (json_object_size(p->pending) == 0)
        return true;
    char ids[400];
    pending_list(p->pending, ids, sizeof ids);
    return invalid(p->why, "invalid_value", "messages",
                   "messages[%zu]: an assistant message with 'tool_calls' must be followed by tool messages responding "
                   "to each 'tool_call_id'; these have none: %s",
                   i, ids);
}

/*
 * An assistant message's thinking_blocks (the convention of LiteLLM, which
 * chatd's replies follow: [{"type":"thinking","thinking","signature"} |
 * {"type":"redacted_thinking","data"}]): the reply's thinking, sent back so
 * that Anthropic accepts the tool loop that follows it (docs/PROTOCOLS.md
 * A11). Appended to blocks first, as they came.
 */
static bool thinking_blocks(parse *p, json_t *tb, size_t i, json_t *blocks)
{
    if (absent(tb))
        return true;
    if (!json_is_array(tb))
        return invalid(p->why, "invalid_type", "messages", "messages[%zu].thinking_blocks must be an array", i);
    size_t k;
    json_t *b;
    json_array_foreach(tb, k, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        json_t *thinking = json_object_get(b, "thinking");
        json_t *sig = json_object_get(b, "signature");
        json_t *data = json_object_get(b, "data");
        if (type && strcmp(type, "thinking") == 0 && json_is_string(thinking) && json_is_string(sig))
            json_array_append_new(
                blocks, json_pack("{s:s,s:O,s:O}", "type", "thinking", "thinking", thinking, "signature", sig));
        else if (type && strcmp(type, "redacted_thinking") == 0 && json_is_string(data) && json_string_length(data))
            json_array_append_new(blocks, json_pack("{s:s,s:O}", "type", "redacted_thinking", "data", data));
        else
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].thinking_blocks[%zu] must be {\"type\":\"thinking\",\"thinking\","
                           "\"signature\"} or {\"type\":\"redacted_thinking\",\"data\"}",
                           i, k);
    }
    return true;
}

static bool add_assistant(parse *p, json_t *m, size_t i)
{
    if (!calls_answered(p, i))
        return false;
    if (!absent(json_object_get(m, "function_call")))
        return invalid(p->why, "unsupported_parameter", "messages",
                       "messages[%zu].function_call is deprecated and not supported: use tool_calls", i);
    if (!absent(json_object_get(m, "audio")))
        return invalid(p->why, "unsupported_parameter", "messages", "messages[%zu].audio is not supported", i);
    p->group_open = false;
    p->seen_assistant = true;
    json_object_clear(p->answered);
    json_t *blocks = hist_push(p, "assistant");
    if (!thinking_blocks(p, json_object_get(m, "thinking_blocks"), i, blocks))
        return false;
    json_t *content = json_object_get(m, "content");
    if (!text_content(p, content, i, true, blocks, NULL, "assistant"))
        return false;
    json_t *refusal = json_object_get(m, "refusal");
    if (json_is_string(refusal) && json_array_size(blocks) == 0)
        add_text(blocks, json_string_value(refusal), json_string_length(refusal));
    json_t *calls = json_object_get(m, "tool_calls");
    if (absent(calls))
        return true;
    if (!json_is_array(calls))
        return invalid(p->why, "invalid_type", "messages", "messages[%zu].tool_calls must be an array", i);
    size_t k;
    json_t *c;
    json_array_foreach(calls, k, c)
    {
        const char *id = json_string_value(json_object_get(c, "id"));
        const char *type = json_string_value(json_object_get(c, "type"));
        json_t *fn = json_object_get(c, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        json_t *args = json_object_get(fn, "arguments");
        if (!id || !*id || strlen(id) > 256)
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].tool_calls[%zu].id must be a non-empty string (at most 256 bytes)", i, k);
        if (!type || strcmp(type, "function") != 0)
            return invalid(p->why, "unsupported_parameter", "messages",
                           "messages[%zu].tool_calls[%zu].type must be \"function\"", i, k);
        if (!name || !*name)
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].tool_calls[%zu].function.name must be a non-empty string", i, k);
        if (!json_is_string(args))
            return invalid(p->why, "invalid_type", "messages",
                           "messages[%zu].tool_calls[%zu].function.arguments must be a string (JSON text)", i, k);
        json_t *input = json_string_length(args) == 0
                            ? json_object() /* some models send "" for a call without arguments */
                            : chat_json_loadb(json_string_value(args), json_string_length(args), JSON_DECODE_ANY, NULL);
        if (!json_is_object(input)) {
            json_decref(input);
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].tool_calls[%zu].function.arguments must be the JSON text of an object", i, k);
        }
        if (json_object_get(p->pending, id)) {
            json_decref(input);
            return invalid(p->why, "invalid_value", "messages", "messages[%zu].tool_calls[%zu].id \"%s\" is repeated",
                           i, k, id);
        }
        json_object_set_new(p->pending, id, json_true());
        json_array_append_new(
            blocks, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id", id, "name", name, "input", input));
    }
    return true;
}

static bool add_tool(parse *p, json_t *m, size_t i)
{
    json_t *idv = json_object_get(m, "tool_call_id");
    const char *id = json_string_value(idv);
    if (!id || !*id)
        return invalid(p->why, "invalid_value", "messages", "messages[%zu].tool_call_id must be a non-empty string", i);
    /* With a session and no assistant message in the request, the calls are
     * in the stored history: the turn checks the results against them. */
    bool stored_calls = p->q->session_id && !p->seen_assistant;
    if (stored_calls && json_object_get(p->answered, id))
        return invalid(p->why, "invalid_value", "messages", "messages[%zu]: tool_call_id \"%s\" is answered twice", i,
                       id);
    if (stored_calls) {
        json_object_set_new(p->answered, id, json_true());
    } else {
        if (!json_object_get(p->pending, id))
            return invalid(p->why, "invalid_value", "messages",
                           json_object_get(p->answered, id)
                               ? "messages[%zu]: tool_call_id \"%s\" is answered twice"
                               : "messages[%zu]: tool_call_id \"%s\" answers no tool call of the preceding assistant "
                                 "message (messages with role 'tool' must be a response to a preceding message with "
                                 "'tool_calls')",
                           i, id);
        json_object_del(p->pending, id);
        json_object_set_new(p->answered, id, json_true());
    }
    chat_buf text;
    chat_buf_init(&text, (size_t)-1 / 2); /* bounded by the body */
    bool ok = text_content(p, json_object_get(m, "content"), i, false, NULL, &text, "tool");
    if (ok) {
        json_t *blocks = p->group_open ? p->msg[p->q->n_hist - 1] : hist_push(p, "user");
        json_t *b = json_pack("{s:s,s:s}", "type", "tool_result", "tool_use_id", id);
        if (text.len)
            json_object_set_new(b, "content", json_stringn(chat_buf_str(&text), text.len));
        json_array_append_new(blocks, b);
        p->group_open = true;
    }
    chat_buf_free(&text);
    return ok;
}

static bool add_user(parse *p, json_t *m, size_t i)
{
    if (!calls_answered(p, i))
        return false;
    json_t *content = json_object_get(m, "content");
    if (absent(content))
        return invalid(p->why, "invalid_value", "messages", "messages[%zu].content is required", i);
    /* Right after tool results: the same provider message, after them. */
    json_t *blocks = p->group_open ? p->msg[p->q->n_hist - 1] : hist_push(p, "user");
    p->group_open = false;
    return user_content(p, content, i, blocks);
}

/*
 * Turns every hist entry's blocks into its text and, unless they are only
 * text, its canonical blocks; checks the last entry (the new message).
 */
static bool finish_messages(parse *p)
{
    api_oa_request *q = p->q;
    for (size_t k = 0; k < q->n_hist; k++) {
        json_t *blocks = p->msg[k];
        size_t total = 0, i;
        json_t *b;
        bool only_text = true;
        json_array_foreach(blocks, i, b)
        {
            json_t *t = json_object_get(b, "text");
            if (strcmp(json_string_value(json_object_get(b, "type")), "text") == 0)
                total += json_string_length(t);
            else
                only_text = false;
        }
        char *text = chat_xmalloc(total + 1), *w = text;
        json_array_foreach(blocks, i, b)
        {
            json_t *t = json_object_get(b, "text");
            if (strcmp(json_string_value(json_object_get(b, "type")), "text") == 0) {
                memcpy(w, json_string_value(t), json_string_length(t));
                w += json_string_length(t);
            }
        }
        *w = '\0';
        q->texts[q->n_texts++] = text;
        q->hist[k].content = text;
        q->hist[k].blocks = only_text ? NULL : blocks;
    }
    const llm_message *last = q->n_hist ? &q->hist[q->n_hist - 1] : NULL;
    if (!last || strcmp(last->role, "user") != 0 ||
        (last->blocks ? json_array_size(last->blocks) == 0 : !*last->content))
        return invalid(p->why, "invalid_value", "messages",
                       "the last message must be a non-empty user message, or the tool messages answering the "
                       "assistant's tool calls");
    /* The new message's text: its text blocks and its tool results. */
    size_t bytes = strlen(last->content), i;
    json_t *b;
    json_array_foreach(last->blocks, i, b) bytes += json_string_length(json_object_get(b, "content"));
    if (bytes > p->lim->max_message_bytes)
        return invalid(p->why, "string_above_max_length", "messages",
                       "the last message is longer than MAX_MESSAGE_SIZE (%zu bytes)", p->lim->max_message_bytes);
    return true;
}

static bool parse_messages(parse *p, json_t *msgs)
{
    api_oa_request *q = p->q;
    size_t nsystem = 0, i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m))
            return invalid(p->why, "invalid_type", "messages", "messages[%zu] must be an object", i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role)
            return invalid(p->why, "invalid_value", "messages", "messages[%zu].role is required", i);
        if (!absent(json_object_get(m, "name")))
            return invalid(p->why, "unsupported_parameter", "messages",
                           "messages[%zu].name is not supported (no provider chatd serves takes participant names)", i);
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            /* q->system is bounded by MAX_MESSAGE_SIZE: an append beyond fails. */
            bool ok = (nsystem == 0 || chat_buf_append(&q->system, "\n\n", 2) == CHAT_OK) &&
                      text_content(p, json_object_get(m, "content"), i, false, NULL, &q->system, role);
            if (!ok) {
                if (p->why->code && strcmp(p->why->code, "string_above_max_length") != 0)
                    return false; /* a bad shape */
                return invalid(p->why, "string_above_max_length", "messages",
                               "the system and developer messages (joined, up to messages[%zu]) are longer than "
                               "MAX_MESSAGE_SIZE (%zu bytes)",
                               i, p->lim->max_message_bytes);
            }
            nsystem++;
        } else if (strcmp(role, "user") == 0) {
            if (!add_user(p, m, i))
                return false;
        } else if (strcmp(role, "assistant") == 0) {
            if (!add_assistant(p, m, i))
                return false;
        } else if (strcmp(role, "tool") == 0) {
            if (!add_tool(p, m, i))
                return false;
        } else if (strcmp(role, "function") == 0) {
            return invalid(p->why, "unsupported_parameter", "messages",
                           "messages[%zu]: role \"function\" is deprecated and not supported: use tool_calls and "
                           "role \"tool\"",
                           i);
        } else {
            return invalid(p->why, "invalid_value", "messages",
                           "messages[%zu].role \"%s\" is not supported (system, developer, user, assistant, tool)", i,
                           role);
        }
    }
    if (!calls_answered(p, json_array_size(msgs) - 1))
        return false;
    return finish_messages(p);
}

/* ---- options ---- */

typedef enum {
    F_REQUEST, /* read by the parser itself */
    F_OPTION,  /* translated into options */
    F_IGNORED, /* changes nothing in the answer */
    F_REFUSED, /* changes the answer, and no provider chatd serves can take it */
} field_kind;

static const struct field {
    const char *name;
    field_kind kind;
    const char *why; /* F_REFUSED: the end of the message */
} FIELDS[] = {
    { "model", F_REQUEST, NULL },
    { "messages", F_REQUEST, NULL },
    { "stream", F_REQUEST, NULL },
    { "stream_options", F_REQUEST, NULL },
    { "max_tokens", F_REQUEST, NULL },
    { "max_completion_tokens", F_REQUEST, NULL },
    { "session_id", F_REQUEST, NULL },
    { "temperature", F_OPTION, NULL },
    { "top_p", F_OPTION, NULL },
    { "top_k", F_OPTION, NULL },
    { "stop", F_OPTION, NULL },
    { "seed", F_OPTION, NULL },
    { "presence_penalty", F_OPTION, NULL },
    { "frequency_penalty", F_OPTION, NULL },
    { "logit_bias", F_OPTION, NULL },
    { "logprobs", F_OPTION, NULL },
    { "top_logprobs", F_OPTION, NULL },
    { "n", F_OPTION, NULL },
    { "user", F_OPTION, NULL },
    { "tools", F_OPTION, NULL },
    { "tool_choice", F_OPTION, NULL },
    { "parallel_tool_calls", F_OPTION, NULL },
    { "response_format", F_OPTION, NULL },
    { "reasoning_effort", F_OPTION, NULL },
    { "thinking", F_OPTION, NULL },
    { "store", F_IGNORED, NULL },
    { "metadata", F_IGNORED, NULL },
    { "service_tier", F_IGNORED, NULL },
    { "safety_identifier", F_OPTION, NULL },
    { "prompt_cache_key", F_IGNORED, NULL },
    { "prompt_cache_retention", F_IGNORED, NULL },
    { "prompt_cache_options", F_IGNORED, NULL },
    { "audio", F_REFUSED, "audio output is not supported" },
    { "modalities", F_REFUSED, "only [\"text\"] output is supported" },
    { "prediction", F_REFUSED, "predicted outputs are not supported" },
    { "web_search_options", F_REFUSED, "web search is not supported" },
    { "verbosity", F_REFUSED, "no provider chatd serves takes it" },
    { "moderation", F_REFUSED, "moderation is not supported" },
    { "functions", F_REFUSED, "deprecated: use tools" },
    { "function_call", F_REFUSED, "deprecated: use tool_choice" },
};

static const struct field *field_find(const char *name)
{
    for (size_t i = 0; i < sizeof FIELDS / sizeof FIELDS[0]; i++)
        if (strcmp(FIELDS[i].name, name) == 0)
            return &FIELDS[i];
    return NULL;
}

/* A number in [lo, hi] (an integer or a real). */
static bool number_in(const json_t *v, double lo, double hi)
{
    if (!json_is_number(v))
        return false;
    double d = json_number_value(v);
    return d >= lo && d <= hi;
}

static bool opt_number(parse *p, json_t *root, json_t *opts, const char *key, double lo, double hi, double neutral,
                       bool has_neutral)
{
    json_t *v = json_object_get(root, key);
    if (absent(v))
        return true;
    if (!number_in(v, lo, hi))
        return invalid(p->why, json_is_number(v) ? "invalid_value" : "invalid_type", field_find(key)->name,
                       "%s must be a number between %g and %g", key, lo, hi);
    if (has_neutral && json_number_value(v) == neutral)
        return true;
    json_object_set(opts, key, v);
    return true;
}

static bool opt_stop(parse *p, json_t *root, json_t *opts)
{
    json_t *v = json_object_get(root, "stop");
    if (absent(v))
        return true;
    json_t *list = json_array();
    if (json_is_string(v)) {
        json_array_append(list, v);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *s;
        json_array_foreach(v, i, s) json_array_append(list, s);
    } else {
        json_decref(list);
        return invalid(p->why, "invalid_type", "stop", "stop must be a string or an array of strings");
    }
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s)
    {
        if (!json_is_string(s) || json_string_length(s) == 0) {
            json_decref(list);
            return invalid(p->why, "invalid_value", "stop", "stop[%zu] must be a non-empty string", i);
        }
    }
    if (json_array_size(list) > 4) {
        json_decref(list);
        return invalid(p->why, "invalid_value", "stop", "stop takes at most 4 sequences");
    }
    if (json_array_size(list) == 0)
        json_decref(list); /* nothing to stop at */
    else
        json_object_set_new(opts, "stop", list);
    return true;
}

static bool opt_logit_bias(parse *p, json_t *root, json_t *opts)
{
    json_t *v = json_object_get(root, "logit_bias");
    if (absent(v))
        return true;
    if (!json_is_object(v))
        return invalid(p->why, "invalid_type", "logit_bias", "logit_bias must be an object of token id: bias");
    const char *k;
    json_t *b;
    json_object_foreach(v, k, b)
    {
        size_t n = strlen(k);
        if (n == 0 || n > 10 || strspn(k, "0123456789") != n)
            return invalid(p->why, "invalid_value", "logit_bias", "logit_bias keys must be token ids (digits)");
        if (!number_in(b, -100, 100))
            return invalid(p->why, "invalid_value", "logit_bias", "logit_bias values must be numbers in -100..100");
    }
    if (json_object_size(v))
        json_object_set(opts, "logit_bias", v);
    return true;
}

/* tools -> [{name, description?, input_schema, strict?}] */
static bool opt_tools(parse *p, json_t *tools, json_t *opts)
{
    if (!json_is_array(tools))
        return invalid(p->why, "invalid_type", "tools", "tools must be an array");
    if (json_array_size(tools) > API_OA_MAX_TOOLS)
        return invalid(p->why, "invalid_value", "tools", "tools takes at most %d tools", API_OA_MAX_TOOLS);
    json_t *out = json_array();
    json_object_set_new(opts, "tools", out);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        const char *type = json_string_value(json_object_get(t, "type"));
        json_t *fn = json_object_get(t, "function");
        if (!type || strcmp(type, "function") != 0)
            return invalid(p->why, "unsupported_parameter", "tools",
                           "tools[%zu].type \"%s\" is not supported (only \"function\" tools are)", i,
                           type ? type : "(none)");
        if (!json_is_object(fn))
            return invalid(p->why, "invalid_type", "tools", "tools[%zu].function must be an object", i);
        const char *name = json_string_value(json_object_get(fn, "name"));
        json_t *desc = json_object_get(fn, "description");
        json_t *params = json_object_get(fn, "parameters");
        json_t *strict = json_object_get(fn, "strict");
        if (!valid_name(name))
            return invalid(p->why, "invalid_value", "tools",
                           "tools[%zu].function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", i);
        if (!absent(desc) && !json_is_string(desc))
            return invalid(p->why, "invalid_type", "tools", "tools[%zu].function.description must be a string", i);
        if (!absent(params) && !json_is_object(params))
            return invalid(p->why, "invalid_type", "tools",
                           "tools[%zu].function.parameters must be a JSON Schema object", i);
        if (!absent(strict) && !json_is_boolean(strict))
            return invalid(p->why, "invalid_type", "tools", "tools[%zu].function.strict must be a boolean", i);
        size_t k;
        json_t *prev;
        json_array_foreach(out, k, prev)
        {
            if (strcmp(json_string_value(json_object_get(prev, "name")), name) == 0)
                return invalid(p->why, "invalid_value", "tools", "tools[%zu]: the function name \"%s\" is repeated", i,
                               name);
        }
        json_t *c = json_pack("{s:s}", "name", name);
        if (json_is_string(desc))
            json_object_set(c, "description", desc);
        /* A function without parameters takes an empty object. */
        json_object_set_new(c, "input_schema",
                            json_is_object(params) ? json_deep_copy(params)
                                                   : json_pack("{s:s,s:{}}", "type", "object", "properties"));
        if (json_is_boolean(strict))
            json_object_set(c, "strict", strict);
        json_array_append_new(out, c);
    }
    return true;
}

static bool has_tool(const json_t *opts, const char *name)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(opts, "tools"), i, t)
    {
        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            return true;
    }
    return false;
}

/* tool_choice -> {"type":"auto"|"any"|"none"} or {"type":"tool","name"}; needs tools unless auto or none. */
static bool opt_tool_choice(parse *p, json_t *v, json_t *opts)
{
    bool tools = json_array_size(json_object_get(opts, "tools")) > 0;
    json_t *c = NULL;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "auto") == 0 || strcmp(s, "none") == 0) {
            if (!tools)
                return true; /* nothing to call either way */
            c = json_pack("{s:s}", "type", s);
        } else if (strcmp(s, "required") == 0) {
            c = json_pack("{s:s}", "type", "any");
        } else {
            return invalid(p->why, "invalid_value", "tool_choice",
                           "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",...}");
        }
    } else if (json_is_object(v)) {
        const char *type = json_string_value(json_object_get(v, "type"));
        const char *name = json_string_value(json_object_get(json_object_get(v, "function"), "name"));
        if (!type || strcmp(type, "function") != 0)
            return invalid(p->why, "unsupported_parameter", "tool_choice",
                           "tool_choice type \"%s\" is not supported (\"function\" is)", type ? type : "(none)");
        if (!name)
            return invalid(p->why, "invalid_value", "tool_choice", "tool_choice.function.name must be a string");
        if (!has_tool(opts, name))
            return invalid(p->why, "invalid_value", "tool_choice",
                           "tool_choice names the function \"%s\", which is not in tools", name);
        c = json_pack("{s:s,s:s}", "type", "tool", "name", name);
    } else {
        return invalid(p->why, "invalid_type", "tool_choice", "tool_choice must be a string or an object");
    }
    if (!tools) {
        json_decref(c);
        return invalid(p->why, "invalid_value", "tool_choice", "tool_choice is only allowed when tools are specified");
    }
    json_object_set_new(opts, "tool_choice", c);
    return true;
}

static bool opt_response_format(parse *p, json_t *v, json_t *opts)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || !type)
        return invalid(p->why, "invalid_type", "response_format", "response_format must be an object with a type");
    if (strcmp(type, "text") == 0)
        return true; /* the default */
    if (strcmp(type, "json_object") == 0) {
        json_object_set_new(opts, "response_format", json_pack("{s:s}", "type", "json_object"));
        return true;
    }
    if (strcmp(type, "json_schema") != 0)
        return invalid(p->why, "invalid_value", "response_format",
                       "response_format.type must be \"text\", \"json_object\" or \"json_schema\"");
    json_t *js = json_object_get(v, "json_schema");
    const char *name = json_string_value(json_object_get(js, "name"));
    json_t *schema = json_object_get(js, "schema");
    json_t *strict = json_object_get(js, "strict");
    json_t *desc = json_object_get(js, "description");
    if (!json_is_object(js))
        return invalid(p->why, "invalid_type", "response_format", "response_format.json_schema must be an object");
    if (!valid_name(name))
        return invalid(p->why, "invalid_value", "response_format",
                       "response_format.json_schema.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -");
    if (!absent(schema) && !json_is_object(schema))
        return invalid(p->why, "invalid_type", "response_format",
                       "response_format.json_schema.schema must be an object");
    if (!absent(strict) && !json_is_boolean(strict))
        return invalid(p->why, "invalid_type", "response_format",
                       "response_format.json_schema.strict must be a boolean");
    if (!absent(desc) && !json_is_string(desc))
        return invalid(p->why, "invalid_type", "response_format",
                       "response_format.json_schema.description must be a string");
    json_t *c = json_pack("{s:s,s:s,s:o}", "type", "json_schema", "name", name, "schema",
                          json_is_object(schema) ? json_deep_copy(schema) : json_pack("{s:s}", "type", "object"));
    if (json_is_boolean(strict))
        json_object_set(c, "strict", strict);
    if (json_is_string(desc))
        json_object_set(c, "description", desc);
    json_object_set_new(opts, "response_format", c);
    return true;
}

static bool opt_thinking(parse *p, json_t *v, json_t *opts)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    json_t *budget = json_object_get(v, "budget_tokens");
    if (!json_is_object(v) || !type)
        return invalid(p->why, "invalid_type", "thinking",
                       "thinking must be {\"type\":\"enabled\",\"budget_tokens\":N}"
                       " or {\"type\":\"disabled\"}");
    if (strcmp(type, "disabled") == 0) {
        json_object_set_new(opts, "thinking", json_pack("{s:s}", "type", "disabled"));
        return true;
    }
    if (strcmp(type, "enabled") != 0 || !json_is_integer(budget) || json_integer_value(budget) < 1024 ||
        json_integer_value(budget) > 1000000)
        return invalid(p->why, "invalid_value", "thinking",
                       "thinking must be {\"type\":\"enabled\",\"budget_tokens\":1024..1000000} or "
                       "{\"type\":\"disabled\"}");
    json_object_set_new(opts, "thinking", json_pack("{s:s,s:O}", "type", "enabled", "budget_tokens", budget));
    return true;
}

/* Notes a refused field left out (DROP_UNSUPPORTED_PARAMS). */
static void note_dropped(api_oa_request *q, const char *name)
{
    size_t used = strlen(q->dropped);
    if (used + strlen(name) + 2 < sizeof q->dropped)
        snprintf(q->dropped + used, sizeof q->dropped - used, "%s%s", used ? "," : "", name);
}

/* A field chatd cannot carry: 400 unsupported_parameter, or with
 * DROP_UNSUPPORTED_PARAMS left out and noted. False when refused. */
static bool refuse_field(parse *p, const char *name, const char *why)
{
    if (p->lim->drop_unsupported) {
        note_dropped(p->q, name);
        return true;
    }
    return invalid(p->why, "unsupported_parameter", name, "%s is not supported: %s", name, why);
}

/* Every top-level field: known (else 400 unknown_parameter), refused, or an option. */
static bool parse_options(parse *p, json_t *root)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        const struct field *f = field_find(key);
        if (!f)
            return invalid(p->why, "unknown_parameter", NULL,
                           "Unrecognized request argument supplied: %s (chatd refuses fields it does not know rather "
                           "than ignore them)",
                           key);
        if (f->kind != F_REFUSED || absent(v))
            continue;
        if (strcmp(key, "modalities") == 0 && json_is_array(v) && json_array_size(v) == 1 &&
            json_is_string(json_array_get(v, 0)) && strcmp(json_string_value(json_array_get(v, 0)), "text") == 0)
            continue; /* text only: the default */
        if (strcmp(key, "verbosity") == 0 && json_is_string(v) && strcmp(json_string_value(v), "medium") == 0)
            continue; /* the default */
        if (!refuse_field(p, f->name, f->why))
            return false;
    }

    json_t *opts = json_object();
    p->q->options = opts;
    if (!opt_number(p, root, opts, "temperature", 0, 2, 0, false) ||
        !opt_number(p, root, opts, "top_p", 0, 1, 0, false) ||
        !opt_number(p, root, opts, "presence_penalty", -2, 2, 0, true) ||
        !opt_number(p, root, opts, "frequency_penalty", -2, 2, 0, true) || !opt_stop(p, root, opts) ||
        !opt_logit_bias(p, root, opts))
        return false;
    v = json_object_get(root, "top_k");
    if (!absent(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return invalid(p->why, "invalid_value", "top_k", "top_k must be an integer >= 1");
        json_object_set(opts, "top_k", v);
    }
    v = json_object_get(root, "seed");
    if (!absent(v)) {
        if (!json_is_integer(v))
            return invalid(p->why, "invalid_type", "seed", "seed must be an integer");
        json_object_set(opts, "seed", v);
    }
    /* Log probabilities would be forwarded but could not come back (a reply
     * carries text, tool calls and thinking): asking for them is refused
     * rather than answered with logprobs null. */
    json_t *lp = json_object_get(root, "logprobs");
    if (!absent(lp) && !json_is_boolean(lp))
        return invalid(p->why, "invalid_type", "logprobs", "logprobs must be a boolean");
    v = json_object_get(root, "top_logprobs");
    if (!absent(v) && (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 20))
        return invalid(p->why, "invalid_value", "top_logprobs", "top_logprobs must be an integer in 0..20");
    if (!absent(v) && !json_is_true(lp))
        return invalid(p->why, "invalid_value", "top_logprobs", "top_logprobs requires logprobs to be true");
    if (json_is_true(lp) && !refuse_field(p, "logprobs", "chatd does not return log probabilities"))
        return false;
    v = json_object_get(root, "n");
    if (!absent(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 128)
            return invalid(p->why, "invalid_value", "n", "n must be an integer in 1..128");
        if (json_integer_value(v) != 1)
            json_object_set(opts, "n", v);
    }
    /* user, or its successor safety_identifier: an end-user id (Anthropic
     * metadata.user_id); it does not change the answer. */
    v = json_object_get(root, "user");
    if (!absent(v) && !json_is_string(v))
        return invalid(p->why, "invalid_type", "user", "user must be a string");
    json_t *sid = json_object_get(root, "safety_identifier");
    if (!absent(sid) && !json_is_string(sid))
        return invalid(p->why, "invalid_type", "safety_identifier", "safety_identifier must be a string");
    if (json_string_length(v))
        json_object_set(opts, "user", v);
    else if (json_string_length(sid))
        json_object_set(opts, "user", sid);
    v = json_object_get(root, "tools");
    if (!absent(v) && !opt_tools(p, v, opts))
        return false;
    if (json_array_size(json_object_get(opts, "tools")) == 0)
        json_object_del(opts, "tools");
    v = json_object_get(root, "tool_choice");
    if (!absent(v) && !opt_tool_choice(p, v, opts))
        return false;
    v = json_object_get(root, "parallel_tool_calls");
    if (!absent(v)) {
        if (!json_is_boolean(v))
            return invalid(p->why, "invalid_type", "parallel_tool_calls", "parallel_tool_calls must be a boolean");
        if (json_is_false(v) && json_object_get(opts, "tools"))
            json_object_set_new(opts, "parallel_tool_calls", json_false());
    }
    v = json_object_get(root, "response_format");
    if (!absent(v) && !opt_response_format(p, v, opts))
        return false;
    v = json_object_get(root, "reasoning_effort");
    if (!absent(v)) {
        /* The efforts chatd maps to every provider (llm/content.h); OpenAI's
         * newer ones have no Anthropic equivalent yet. */
        static const char *const efforts[] = { "minimal", "low", "medium", "high" };
        static const char *const newer[] = { "none", "xhigh", "max" };
        const char *s = json_string_value(v);
        bool known = false, other = false;
        for (size_t i = 0; s && i < sizeof efforts / sizeof efforts[0]; i++)
            known = known || strcmp(s, efforts[i]) == 0;
        for (size_t i = 0; s && i < sizeof newer / sizeof newer[0]; i++)
            other = other || strcmp(s, newer[i]) == 0;
        if (other)
            return invalid(p->why, "unsupported_parameter", "reasoning_effort",
                           "reasoning_effort \"%s\" is not supported: use minimal, low, medium or high", s);
        if (!known)
            return invalid(p->why, "invalid_value", "reasoning_effort",
                           "reasoning_effort must be one of minimal, low, medium, high");
        json_object_set(opts, "reasoning_effort", v);
    }
    v = json_object_get(root, "thinking");
    if (!absent(v) && !opt_thinking(p, v, opts))
        return false;
    v = json_object_get(root, "metadata");
    if (!absent(v) && !json_is_object(v))
        return invalid(p->why, "invalid_type", "metadata", "metadata must be an object");
    v = json_object_get(root, "store");
    if (!absent(v) && !json_is_boolean(v))
        return invalid(p->why, "invalid_type", "store", "store must be a boolean");
    if (json_object_size(opts) == 0) {
        json_decref(opts);
        p->q->options = NULL;
    }
    return true;
}

/* ---- the request ---- */

void api_oa_request_free(api_oa_request *q)
{
    if (!q)
        return;
    for (size_t k = 0; k < q->n_texts; k++)
        free(q->texts[k]);
    free(q->texts);
    free(q->hist);
    json_decref(q->blocks);
    json_decref(q->options);
    chat_buf_free(&q->system); /* safe on a zeroed buffer too */
    json_decref(q->root);
    memset(q, 0, sizeof *q);
}

bool api_oa_request_parse(const char *body, size_t len, const char *session_header, const api_oa_limits *lim,
                          api_oa_request *q, api_oa_invalid *why)
{
    json_error_t jerr;
    memset(q, 0, sizeof *q);
    memset(why, 0, sizeof *why);
    json_t *root = chat_json_loadb(body, len, 0, &jerr);
    parse p = { .q = q, .why = why, .lim = lim };
    bool ok = false;
    /* The system prompt: every system/developer message, joined by blank lines,
     * appended as they come (geometric growth: linear in the total, however
     * many parts), at most MAX_MESSAGE_SIZE bytes in all. */
    chat_buf_init(&q->system, lim->max_message_bytes);
    q->root = root;

    if (!root || !json_is_object(root)) {
        invalid(why, "invalid_json", NULL, "the body must be a JSON object: %s", root ? "not an object" : jerr.text);
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    json_t *msgs = json_object_get(root, "messages");
    json_t *stream = json_object_get(root, "stream");
    json_t *sopts = json_object_get(root, "stream_options");
    json_t *mt = json_object_get(root, "max_completion_tokens");
    if (absent(mt))
        mt = json_object_get(root, "max_tokens");
    if (!absent(model) && !json_is_string(model)) {
        invalid(why, "invalid_type", "model", "model must be a string");
        goto out;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0 || json_array_size(msgs) > API_OA_MAX_MESSAGES) {
        invalid(why, "invalid_value", "messages", "messages must be a non-empty array (at most %d)",
                API_OA_MAX_MESSAGES);
        goto out;
    }
    if (!absent(stream) && !json_is_boolean(stream)) {
        invalid(why, "invalid_type", "stream", "stream must be a boolean");
        goto out;
    }
    if (!absent(mt) && (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000)) {
        invalid(why, "invalid_value", "max_tokens",
                "max_tokens / max_completion_tokens must be an integer in 1..1000000");
        goto out;
    }
    bool streaming = json_is_true(stream);
    if (!absent(sopts) && !streaming) {
        invalid(why, "invalid_value", "stream_options", "stream_options is only allowed when stream is true");
        goto out;
    }
    if (!absent(sopts) && !json_is_object(sopts)) {
        invalid(why, "invalid_type", "stream_options", "stream_options must be an object");
        goto out;
    }

    const char *session = session_header;
    json_t *sid = json_object_get(root, "session_id");
    if (!session && json_is_string(sid))
        session = json_string_value(sid);
    if (session && !chat_valid_id(session)) {
        invalid(why, "invalid_value", "session_id",
                "invalid session id: use 1 to 128 characters of letters, digits and . _ : -");
        goto out;
    }
    q->session_id = session;

    if (!parse_options(&p, root))
        goto out;

    p.cap = json_array_size(msgs);
    q->texts = chat_xcalloc(p.cap, sizeof *q->texts);
    q->hist = chat_xcalloc(p.cap, sizeof *q->hist);
    p.msg = chat_xcalloc(p.cap, sizeof *p.msg);
    q->blocks = json_array();
    p.pending = json_object();
    p.answered = json_object();
    if (!parse_messages(&p, msgs))
        goto out;

    q->model = json_is_string(model) ? json_string_value(model) : NULL;
    q->max_tokens = json_is_integer(mt) ? (int)json_integer_value(mt) : 0;
    q->stream = streaming;
    q->include_usage = streaming && json_is_true(json_object_get(sopts, "include_usage"));
    ok = true;
out:
    free(p.msg);
    json_decref(p.pending);
    json_decref(p.answered);
    if (!ok)
        api_oa_request_free(q);
    return ok;
}

void api_oa_turn_params(const api_oa_request *q, turn_params *p)
{
    const llm_message *last = &q->hist[q->n_hist - 1];
    *p = (turn_params){
        .session_id = q->session_id,
        .history = q->session_id ? NULL : q->hist,
        .n_history = q->session_id ? 0 : q->n_hist - 1,
        .message = last->content,
        .message_blocks = last->blocks,
        .options = q->options,
        .system_prompt = q->system.len ? chat_buf_str(&q->system) : NULL,
        .model = q->model,
        .max_tokens = q->max_tokens,
        .stream = q->stream,
    };
}
