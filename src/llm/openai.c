/*
 * openai.c: the OpenAI Chat Completions wire format and the servers that copy
 * it (Groq, vLLM, Ollama's /v1, llama.cpp's llama-server), docs/PROTOCOLS.md
 * section B, behind llm_provider_ops (call_internal.h).
 *
 * Request: POST {base_url}/chat/completions (base_url includes the /v1, as the
 * SDKs take it), "Authorization: Bearer <key>" unless the key is empty, and a
 * JSON body {model, messages:[{role:"system"}?, {role, content}...],
 * max_tokens|max_completion_tokens, stream, stream_options?, options...}.
 * Canonical blocks (llm/content.h) become content parts, tool_calls and
 * role "tool" messages, and the request options their Chat Completions
 * names, as docs/PROTOCOLS.md B8 says; what has no equivalent makes the
 * request unusable rather than being dropped.
 *
 * Replies, read the way the compatible servers really send them (B3, B4, B7):
 * - non-streaming: choices[0].message.content, finish_reason, usage;
 * - streaming: data-only SSE; "[DONE]" is compared before any JSON parsing;
 *   text from choices[0].delta.content (choices may be empty); the
 *   finish_reason from whichever chunk has it; usage from the `choices: []`
 *   usage chunk, Groq's x_groq.usage in the finish chunk, or vLLM's usage on
 *   every chunk (each report overwrites: the last one wins);
 * - the end: a finish_reason makes the reply complete (llm_parse.finished),
 *   and [DONE] after it ends the stream (llm_parse.complete). Ollama may close
 *   without [DONE], and a stream may be cut before its usage chunk: both are
 *   successes (usage -1 when never reported). Without a finish_reason the
 *   reply is truncated, even if [DONE] came: old llama.cpp sends its error as
 *   a non-standard `error:` SSE field, which SSE parsing drops, then [DONE];
 *   Ollama loses a mid-stream error's text and just stops;
 * - in-stream errors: `data: {"error":{...}}` (OpenAI, vLLM which then sends
 *   [DONE], new llama.cpp) and `event: error` (which the openai SDK also
 *   accepts) end the call with LLM_ERR_STREAM;
 * - error bodies (B5, B7): {"error":{message,type,param,code}} with code a
 *   string, an integer or null; vLLM's flat {"object":"error","message",...};
 *   {"error":"text"}; FastAPI's {"detail":...}; plain text or HTML.
 *
 * stop_reason keeps the provider's finish_reason value (stop, length,
 * content_filter, tool_calls...), not mapped to Anthropic's vocabulary.
 * Usage: input_tokens = prompt_tokens - prompt_tokens_details.cached_tokens
 * (the uncached input, Anthropic's meaning), cache_read_tokens = cached_tokens,
 * output_tokens = completion_tokens; cache writes are not reported (-1).
 *
 * Nothing here touches curl transfers or the loop: every function turns bytes
 * into an llm_parse or an llm_error_info, so tests feed it canned bytes.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "llm/call_internal.h"

/* Longest excerpt of a non-JSON error body put into a message. */
#define EXCERPT_MAX 200
/* Longest provider error message, type or code kept. */
#define MESSAGE_MAX 1024
#define FIELD_MAX 256

static void oom_json(void)
{
    chat_fatal("out of memory building JSON");
}

/* ---- the request ---- */

static char *build_url(const llm_provider *p)
{
    size_t n = strlen(p->base_url);
    while (n > 0 && p->base_url[n - 1] == '/')
        n--; /* "https://host/v1/" and "https://host/v1" mean the same */
    if (n == 0 || !llm_header_safe(p->base_url))
        return NULL;
    return chat_xasprintf("%.*s/chat/completions", (int)n, p->base_url);
}

static struct curl_slist *build_headers(const llm_provider *p, bool stream)
{
    const char *key = p->api_key ? p->api_key : "";
    if (!llm_header_safe(key))
        return NULL;
    struct curl_slist *h = NULL;
    if (*key) {
        /* No key, no header: local servers (Ollama, llama.cpp, vLLM) need none,
         * and "Bearer " with nothing after it is rejected by some proxies. */
        char *line = chat_xasprintf("Authorization: Bearer %s", key);
        h = llm_slist_add(h, line);
        memset(line, 0, strlen(line)); /* do not leave the key in freed memory */
        free(line);
    }
    h = llm_slist_add(h, "content-type: application/json");
    h = llm_slist_add(h, stream ? "accept: text/event-stream" : "accept: application/json");
    /* curl would otherwise send "Expect: 100-continue" for large bodies and
     * wait a round trip (or a second) for a 100 the API does not need. */
    h = llm_slist_add(h, "Expect:");
    return h;
}

/* The body's name for the output-token limit (provider.h), NULL if not a known one. */
static const char *max_tokens_field(const llm_provider *p)
{
    const char *f = p->max_tokens_field;
    if (!f || !*f || strcmp(f, "max_tokens") == 0)
        return "max_tokens";
    if (strcmp(f, "max_completion_tokens") == 0)
        return "max_completion_tokens";
    return NULL;
}

/* A JSON value, or oom. */
static json_t *jchk(json_t *v)
{
    if (!v)
        oom_json();
    return v;
}

static const char *btype(json_t *b)
{
    return json_string_value(json_object_get(b, "type"));
}

/* An image block as a Chat Completions content part {"type":"image_url",
 * "image_url":{"url"}}: base64 data as a data: URL, a url source as it is.
 * NULL if malformed. */
static json_t *image_part(json_t *b)
{
    json_t *src = json_object_get(b, "source");
    const char *st = btype(src);
    json_t *url = NULL;
    if (st && strcmp(st, "base64") == 0) {
        const char *media = json_string_value(json_object_get(src, "media_type"));
        const char *data = json_string_value(json_object_get(src, "data"));
        if (!media || !data)
            return NULL;
        char *u = chat_xasprintf("data:%s;base64,%s", media, data);
        url = json_string(u);
        free(u);
    } else if (st && strcmp(st, "url") == 0 && json_is_string(json_object_get(src, "url"))) {
        url = json_incref(json_object_get(src, "url"));
    }
    if (!url)
        return NULL;
    return jchk(json_pack("{s:s,s:{s:o}}", "type", "image_url", "image_url", "url", url));
}

/* The text of a tool_result's content (a string, or text blocks joined;
 * an image or other block cannot go into a tool message: NULL), prefixed
 * "Error: " when is_error is true (docs/PROTOCOLS.md B8). Heap. */
static char *tool_result_text(json_t *b)
{
    json_t *c = json_object_get(b, "content");
    json_t *err = json_object_get(b, "is_error");
    chat_buf t;
    chat_buf_init(&t, SIZE_MAX / 2);
    bool ok = true;
    if (json_is_true(err))
        ok = chat_buf_appends(&t, "Error: ") == CHAT_OK;
    if (json_is_string(c)) {
        ok = ok && chat_buf_append(&t, json_string_value(c), json_string_length(c)) == CHAT_OK;
    } else if (json_is_array(c)) {
        size_t i;
        json_t *x;
        json_array_foreach(c, i, x)
        {
            const char *xt = btype(x);
            json_t *text = json_object_get(x, "text");
            if (!xt || strcmp(xt, "text") != 0 || !json_is_string(text)) {
                ok = false;
                break;
            }
            ok = ok && chat_buf_append(&t, json_string_value(text), json_string_length(text)) == CHAT_OK;
        }
    } else if (c) {
        ok = false;
    }
    if (!ok) {
        chat_buf_free(&t);
        return NULL;
    }
    return chat_buf_steal(&t);
}

/*
 * A user message's canonical blocks: every tool_result becomes a
 * {"role":"tool","tool_call_id","content"} message, in order, then the text
 * and image blocks one user message (content a string when it is a single
 * text block, else an array of parts). False if a block cannot be carried.
 */
static bool add_user_blocks(json_t *msgs, json_t *blocks)
{
    json_t *parts = jchk(json_array());
    bool ok = true, images = false;
    size_t i;
    json_t *b;
    json_array_foreach(blocks, i, b)
    {
        const char *t = btype(b);
        if (!t) {
            ok = false;
        } else if (strcmp(t, "tool_result") == 0) {
            json_t *id = json_object_get(b, "tool_use_id");
            char *text = json_is_string(id) ? tool_result_text(b) : NULL;
            json_t *content = text ? json_string(text) : NULL;
            free(text);
            if (!content) {
                ok = false;
            } else {
                json_array_append_new(
                    msgs, jchk(json_pack("{s:s,s:O,s:o}", "role", "tool", "tool_call_id", id, "content", content)));
            }
        } else if (strcmp(t, "text") == 0 && json_is_string(json_object_get(b, "text"))) {
            json_array_append_new(parts,
                                  jchk(json_pack("{s:s,s:O}", "type", "text", "text", json_object_get(b, "text"))));
        } else if (strcmp(t, "image") == 0) {
            json_t *part = image_part(b);
            ok = part != NULL;
            if (part)
                json_array_append_new(parts, part);
            images = true;
        } else {
            ok = false; /* document, thinking in a user turn...: nothing to map it to */
        }
        if (!ok)
            break;
    }
    if (ok && json_array_size(parts) > 0) {
        json_t *content = parts;
        if (json_array_size(parts) == 1 && !images)
            content = json_object_get(json_array_get(parts, 0), "text");
        json_array_append_new(msgs, jchk(json_pack("{s:s,s:O}", "role", "user", "content", content)));
    }
    json_decref(parts);
    return ok;
}

/*
 * An assistant message's canonical blocks: {"role":"assistant","content":
 * its text blocks joined (null when there are none and it calls tools),
 * "tool_calls":[{"id","type":"function","function":{"name","arguments":
 * the input as JSON text}}]}. Thinking blocks are left out: OpenAI-compatible
 * servers take no reasoning back (docs/PROTOCOLS.md B8).
 */
static bool add_assistant_blocks(json_t *msgs, json_t *blocks)
{
    json_t *calls = jchk(json_array());
    chat_buf text;
    chat_buf_init(&text, SIZE_MAX / 2);
    bool ok = true, has_text = false;
    size_t i;
    json_t *b;
    json_array_foreach(blocks, i, b)
    {
        const char *t = btype(b);
        json_t *s = json_object_get(b, "text");
        if (t && strcmp(t, "text") == 0 && json_is_string(s)) {
            has_text = true;
            ok = chat_buf_append(&text, json_string_value(s), json_string_length(s)) == CHAT_OK;
        } else if (t && strcmp(t, "tool_use") == 0) {
            json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name");
            json_t *input = json_object_get(b, "input");
            char *args = json_is_object(input) ? chat_json_dumps(input, JSON_COMPACT, NULL) : NULL;
            ok = json_is_string(id) && json_is_string(name) && args;
            if (ok)
                json_array_append_new(calls, jchk(json_pack("{s:O,s:s,s:{s:O,s:s}}", "id", id, "type", "function",
                                                            "function", "name", name, "arguments", args)));
            free(args);
        } else if (t && (strcmp(t, "thinking") == 0 || strcmp(t, "redacted_thinking") == 0)) {
            /* not sent */
        } else {
            ok = false;
        }
        if (!ok)
            break;
    }
    if (ok) {
        json_t *content;
        if (has_text || json_array_size(calls) == 0)
            content = json_string(chat_buf_str(&text));
        else
            content = json_null();
        json_t *o = jchk(json_pack("{s:s,s:o}", "role", "assistant", "content", jchk(content)));
        if (json_array_size(calls) > 0)
            json_object_set(o, "tool_calls", calls);
        json_array_append_new(msgs, o);
    }
    json_decref(calls);
    chat_buf_free(&text);
    return ok;
}

/* One message, plain or with blocks. */
/* The messages a message with blocks becomes, appended to msgs; false if unusable. */
static bool add_block_message(json_t *msgs, const llm_message *m)
{
    if (!json_is_array(m->blocks) || json_array_size(m->blocks) == 0)
        return false;
    if (strcmp(m->role, "user") == 0)
        return add_user_blocks(msgs, (json_t *)m->blocks);
    if (strcmp(m->role, "assistant") == 0)
        return add_assistant_blocks(msgs, (json_t *)m->blocks);
    return false;
}

/* Options copied under the same name when present (docs/PROTOCOLS.md B8). */
static const char *const copied_options[] = {
    "temperature", "top_p",    "top_k",        "stop", "seed", "presence_penalty", "frequency_penalty",
    "logit_bias",  "logprobs", "top_logprobs", "n",    "user", "reasoning_effort", NULL,
};
/* Options mapped by hand (apply_options) or ignored (metadata). */
static const char *const mapped_options[] = {
    "metadata", "tools", "tool_choice", "parallel_tool_calls", "response_format", "thinking", NULL,
};

static bool in_list(const char *const *list, const char *k)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], k) == 0)
            return true;
    return false;
}

/* A canonical tool as {"type":"function","function":{"name","description"?,"parameters","strict"?}}. */
static json_t *function_def(json_t *t)
{
    json_t *name = json_object_get(t, "name");
    json_t *desc = json_object_get(t, "description");
    json_t *schema = json_object_get(t, "input_schema");
    json_t *strict = json_object_get(t, "strict");
    if (!json_is_object(t) || !json_is_string(name) || json_string_length(name) == 0 || !json_is_object(schema) ||
        (desc && !json_is_string(desc)) || (strict && !json_is_boolean(strict)))
        return NULL;
    json_t *f = jchk(json_object());
    json_object_set(f, "name", name);
    if (desc)
        json_object_set(f, "description", desc);
    json_object_set_new(f, "parameters", jchk(json_deep_copy(schema)));
    if (strict)
        json_object_set(f, "strict", strict);
    return jchk(json_pack("{s:s,s:o}", "type", "function", "function", f));
}

/* reasoning_effort for a thinking budget (docs/PROTOCOLS.md B8). */
static const char *budget_effort(json_int_t budget)
{
    if (budget <= 2048)
        return "low";
    if (budget <= 8192)
        return "medium";
    return "high";
}

/*
 * Maps the request options (llm/content.h "Options") onto the body
 * (docs/PROTOCOLS.md B8). False if a key is unknown or a value malformed.
 */
static bool apply_options(json_t *root, const llm_request *req)
{
    const json_t *opts = req->options;
    if (!opts)
        return true;
    if (!json_is_object(opts))
        return false;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)opts, k, v)
    {
        if (!in_list(copied_options, k) && !in_list(mapped_options, k))
            return false;
    }
    for (size_t i = 0; copied_options[i]; i++) {
        json_t *o = json_object_get(opts, copied_options[i]);
        if (o)
            json_object_set_new(root, copied_options[i], jchk(json_deep_copy(o)));
    }
#define OPT(name) json_object_get(opts, name)
    json_t *tools_in = OPT("tools"), *choice_in = OPT("tool_choice"), *parallel = OPT("parallel_tool_calls");
    json_t *rf = OPT("response_format"), *thinking = OPT("thinking");
    if ((tools_in && !json_is_array(tools_in)) || (choice_in && !json_is_object(choice_in)) ||
        (parallel && !json_is_boolean(parallel)) || (rf && !json_is_object(rf)) ||
        (thinking && !json_is_object(thinking)))
        return false;

    json_t *tools = NULL;
    if (tools_in && json_array_size(tools_in) > 0) {
        tools = jchk(json_array());
        size_t i;
        json_t *t;
        json_array_foreach(tools_in, i, t)
        {
            json_t *d = function_def(t);
            if (!d) {
                json_decref(tools);
                return false;
            }
            json_array_append_new(tools, d);
        }
    }
    bool have_user_tools = tools != NULL;
    json_t *choice = NULL;
    if (choice_in) {
        const char *ct = json_string_value(json_object_get(choice_in, "type"));
        json_t *name = json_object_get(choice_in, "name");
        if (ct && (strcmp(ct, "auto") == 0 || strcmp(ct, "none") == 0))
            choice = jchk(json_string(ct));
        else if (ct && strcmp(ct, "any") == 0)
            choice = jchk(json_string("required"));
        else if (ct && strcmp(ct, "tool") == 0 && json_is_string(name) && json_string_length(name) > 0)
            choice = jchk(json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name", name));
        if (!choice) {
            json_decref(tools);
            return false;
        }
    }

    const char *rft = rf ? json_string_value(json_object_get(rf, "type")) : NULL;
    if (rf && !rft)
        goto bad;
    if (rft && strcmp(rft, "text") != 0 && strcmp(rft, "json_object") != 0 && strcmp(rft, "json_schema") != 0)
        goto bad;
    json_t *schema = rft ? json_object_get(rf, "schema") : NULL;
    if (rft && strcmp(rft, "json_schema") == 0 && !json_is_object(schema))
        goto bad;
    if (rft && strcmp(rft, "text") != 0 && req->json_via_tool) {
        /* The same forced tool as for Anthropic (provider.h json_via_tool). */
        if (choice && !(json_is_string(choice) && strcmp(json_string_value(choice), "auto") == 0))
            goto bad;
        json_decref(choice);
        json_t *params =
            strcmp(rft, "json_schema") == 0 ? jchk(json_deep_copy(schema)) : jchk(json_pack("{s:s}", "type", "object"));
        if (!tools)
            tools = jchk(json_array());
        json_array_append_new(
            tools, jchk(json_pack("{s:s,s:{s:s,s:s,s:o}}", "type", "function", "function", "name", LLM_JSON_TOOL,
                                  "description", "Respond with the final answer as this tool's input.", "parameters",
                                  params)));
        choice = have_user_tools
                     ? jchk(json_string("required"))
                     : jchk(json_pack("{s:s,s:{s:s}}", "type", "function", "function", "name", LLM_JSON_TOOL));
    } else if (rft && strcmp(rft, "json_object") == 0) {
        json_object_set_new(root, "response_format", jchk(json_pack("{s:s}", "type", "json_object")));
    } else if (rft && strcmp(rft, "json_schema") == 0) {
        json_t *name = json_object_get(rf, "name"), *strict = json_object_get(rf, "strict");
        if ((name && !json_is_string(name)) || (strict && !json_is_boolean(strict)))
            goto bad;
        json_t *js = name ? jchk(json_pack("{s:O,s:O}", "name", name, "schema", schema))
                          : jchk(json_pack("{s:s,s:O}", "name", "response", "schema", schema));
        if (strict)
            json_object_set(js, "strict", strict);
        json_object_set_new(root, "response_format",
                            jchk(json_pack("{s:s,s:o}", "type", "json_schema", "json_schema", js)));
    }
    if (tools) {
        json_object_set_new(root, "tools", tools);
        tools = NULL;
        /* Only meaningful (and only accepted by OpenAI) alongside tools. */
        if (parallel)
            json_object_set(root, "parallel_tool_calls", parallel);
    }
    if (choice && !json_object_get(root, "tools") && json_is_string(choice)) {
        /* Without tools, auto and none change nothing (and OpenAI refuses a
         * tool_choice without tools); required or a named tool stay, the
         * caller's error to see. */
        const char *cs = json_string_value(choice);
        if (strcmp(cs, "auto") == 0 || strcmp(cs, "none") == 0) {
            json_decref(choice);
            choice = NULL;
        }
    }
    if (choice) {
        json_object_set_new(root, "tool_choice", choice);
        choice = NULL;
    }
    if (thinking) {
        /* OpenAI-compatible reasoning is asked for by effort, not by budget. */
        const char *tt = json_string_value(json_object_get(thinking, "type"));
        json_t *budget = json_object_get(thinking, "budget_tokens");
        bool enabled = tt && strcmp(tt, "enabled") == 0 && json_is_integer(budget);
        if (!enabled && !(tt && strcmp(tt, "disabled") == 0))
            return false;
        if (enabled && !OPT("reasoning_effort"))
            json_object_set_new(root, "reasoning_effort", jchk(json_string(budget_effort(json_integer_value(budget)))));
    }
#undef OPT
    return true;
bad:
    json_decref(tools);
    json_decref(choice);
    return false;
}

/*
 * The body: {"model", "messages":[{"role":"system"} (only when the system
 * prompt is non-empty), {"role","content"}...], "<max_tokens_field>",
 * "stream", "stream_options":{"include_usage":true} (only when streaming:
 * OpenAI rejects stream_options otherwise)}.
 * NULL if a field is missing, the max-tokens field name is unknown, or a
 * string is not valid UTF-8.
 */
static char *build_body(const llm_provider *p, const llm_request *req, size_t *len)
{
    char *out = NULL;
    json_t *root = NULL;
    const char *field = max_tokens_field(p);
    size_t n = req->n_messages;
    if (!field || !req->model || !*req->model || req->max_tokens <= 0 || n == 0 || !req->messages)
        return NULL;
    json_t **objs = chat_xcalloc(n, sizeof *objs);
    for (size_t i = 0; i < n; i++) {
        const llm_message *m = &req->messages[i];
        if (!m->role || (!m->blocks && !m->content))
            goto out;
        if (!m->blocks)
            continue; /* written from its text by llm_write_messages */
        objs[i] = jchk(json_array());
        if (!add_block_message(objs[i], m))
            goto out;
    }
    root = jchk(json_object());
    json_t *model = json_string(req->model);
    if (!model)
        goto out;
    json_object_set_new(root, "model", model);
    json_t *msgs = jchk(json_array()); /* where llm_write_messages writes */
    json_object_set_new(root, "messages", msgs);
    json_object_set_new(root, field, json_integer(req->max_tokens));
    json_object_set_new(root, "stream", json_boolean(req->stream));
    if (req->stream) {
        /* Without it OpenAI sends no usage at all in a stream (B4). */
        json_object_set_new(root, "stream_options", jchk(json_pack("{s:b}", "include_usage", 1)));
    }
    if (!apply_options(root, req))
        goto out;
    llm_body_messages bm = { req, objs, req->system };
    out = chat_json_dumps_splice(root, JSON_COMPACT, msgs, llm_write_messages, &bm, len); /* NULL: not UTF-8 */
out:
    for (size_t i = 0; i < n; i++)
        json_decref(objs[i]);
    free(objs);
    json_decref(root);
    return out;
}

/* ---- reading replies ---- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void set_str(char **dst, const char *v)
{
    if (!v)
        return;
    free(*dst);
    *dst = llm_strndup_utf8(v, FIELD_MAX);
}

/* An error code as text: a string as is, an integer (vLLM, llama.cpp) in
 * decimal; NULL for null, absent or anything else. Heap. */
static char *code_text(json_t *code)
{
    if (json_is_string(code) && json_string_length(code) > 0)
        return llm_strndup_utf8(json_string_value(code), FIELD_MAX);
    if (json_is_integer(code))
        return chat_xasprintf("%lld", (long long)json_integer_value(code));
    return NULL;
}

/*
 * Overwrites the usage fields an OpenAI usage object reports (each report is
 * a running total, never a delta: the last one wins). Groq's x_groq.usage and
 * vLLM's per-chunk usage have the same fields.
 */
static void read_usage(llm_parse *st, json_t *u)
{
    if (!json_is_object(u))
        return;
    json_t *prompt = json_object_get(u, "prompt_tokens");
    json_t *completion = json_object_get(u, "completion_tokens");
    json_t *cached = json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
    int64_t c = json_is_integer(cached) ? json_integer_value(cached) : -1;
    if (json_is_integer(prompt)) {
        int64_t pt = json_integer_value(prompt);
        /* Cached tokens are part of prompt_tokens; Anthropic's input_tokens
         * are the uncached ones only, and callers expect that meaning. */
        st->usage.input_tokens = c >= 0 && c <= pt ? pt - c : pt;
    }
    if (c >= 0)
        st->usage.cache_read_tokens = c;
    if (json_is_integer(completion))
        st->usage.output_tokens = json_integer_value(completion);
    json_t *reasoning = json_object_get(json_object_get(u, "completion_tokens_details"), "reasoning_tokens");
    if (json_is_integer(reasoning))
        st->usage.reasoning_tokens = json_integer_value(reasoning);
}

/*
 * Records an error reported after a 200 (a data chunk with "error", an
 * `event: error`, or a 200 JSON body that is an error): err is the value of
 * "error" (object or string) or NULL when the payload was not JSON.
 */
static void fail_with_error(llm_parse *st, json_t *err, const char *raw, size_t len)
{
    const char *type = NULL, *msg = NULL;
    char *code = NULL;
    if (json_is_object(err)) {
        type = jstr(err, "type");
        msg = jstr(err, "message");
        code = code_text(json_object_get(err, "code"));
    } else if (json_is_string(err)) {
        msg = json_string_value(err);
    }
    char *m = msg && *msg ? llm_strndup_utf8(msg, MESSAGE_MAX) : llm_excerpt(raw, len, EXCERPT_MAX);
    if (!*m) {
        free(m);
        m = chat_xstrdup("the provider reported an error without a message");
    }
    char *t = type && *type ? llm_strndup_utf8(type, FIELD_MAX) : chat_xstrdup("api_error");
    llm_parse_fail(st, LLM_ERR_STREAM, t, "%s", m);
    if (st->err == LLM_ERR_STREAM && !st->err_code) {
        st->err_code = code;
        code = NULL;
    }
    free(t);
    free(m);
    free(code);
}

/* ---- tool calls, reasoning and text of a reply (B8) ---- */

/* Most tool calls kept from one reply: a bound on the slot table. */
#define MAX_TOOL_CALLS 128

/* The reasoning text of a delta or message: reasoning_content (DeepSeek,
 * vLLM, llama.cpp) or reasoning (Ollama, newer vLLM); NULL if none. */
static json_t *reasoning_of(json_t *m)
{
    json_t *r = json_object_get(m, "reasoning_content");
    if (json_is_string(r) && json_string_length(r) > 0)
        return r;
    r = json_object_get(m, "reasoning");
    return json_is_string(r) && json_string_length(r) > 0 ? r : NULL;
}

static llm_tool_slot *open_slot(llm_parse *st)
{
    for (size_t i = 0; i < st->n_slots; i++)
        if (st->slots[i].state == 1)
            return &st->slots[i];
    return NULL;
}

/* Opens slot's block and replays the arguments buffered for it. */
static int start_slot(llm_parse *st, llm_tool_slot *s)
{
    char synth[32];
    if (!s->id) {
        /* Some local servers send no id; the caller needs one to answer the call. */
        snprintf(synth, sizeof synth, "call_%lld", (long long)(s->index < 0 ? -s->index - 1 : s->index));
    }
    s->state = 1;
    int rc = llm_reply_open(st, LLM_BLK_TOOL, s->id ? s->id : synth, s->name);
    if (rc == 0 && s->args_len > 0)
        rc = llm_reply_piece(st, LLM_BLK_TOOL, s->args, s->args_len);
    free(s->args);
    s->args = NULL;
    s->args_len = 0;
    return rc;
}

/* Starts the first buffered call if no call's block is open and it has a name. */
static int maybe_start(llm_parse *st)
{
    if (open_slot(st))
        return 0;
    for (size_t i = 0; i < st->n_slots; i++) {
        llm_tool_slot *s = &st->slots[i];
        if (s->state == 0)
            return s->name ? start_slot(st, s) : 0;
    }
    return 0;
}

/*
 * Ends every tool call: the open one's block is closed, then each buffered
 * one is emitted whole, in order of first appearance. Before text or
 * reasoning, and at the finish_reason.
 */
static int flush_tools(llm_parse *st)
{
    llm_tool_slot *o = open_slot(st);
    if (o) {
        o->state = 2;
        if (llm_reply_close(st, true) != 0)
            return 1;
    }
    for (size_t i = 0; i < st->n_slots; i++) {
        llm_tool_slot *s = &st->slots[i];
        if (s->state != 0)
            continue;
        if (!s->name) {
            llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "tool call %lld has no function name",
                           (long long)s->index);
            return 1;
        }
        if (start_slot(st, s) != 0)
            return 1;
        s->state = 2;
        if (llm_reply_close(st, true) != 0)
            return 1;
    }
    return 0;
}

/* Copies a string field of a tool-call piece into *dst when not set yet. */
static bool take_str(llm_parse *st, char **dst, json_t *v)
{
    if (*dst || !json_is_string(v) || json_string_length(v) == 0)
        return true;
    if (st->max_bytes && json_string_length(v) > st->max_bytes) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "a tool call id or name exceeds max_response_bytes");
        return false;
    }
    *dst = llm_strndup_utf8(json_string_value(v), json_string_length(v));
    return true;
}

/* One element of delta.tool_calls (pos: its position in the array, which
 * stands for the index when there is none; a whole message's calls are
 * numbered by position only, as their index, if any, means nothing there). */
static int tool_piece(llm_parse *st, json_t *tc, size_t pos, bool whole)
{
    if (!json_is_object(tc))
        return 0;
    json_t *jidx = json_object_get(tc, "index");
    int64_t idx = json_is_integer(jidx) && !whole ? json_integer_value(jidx) : (int64_t)pos;
    json_t *id = json_object_get(tc, "id");
    json_t *f = json_object_get(tc, "function");
    llm_tool_slot *s = NULL;
    for (size_t i = 0; i < st->n_slots; i++)
        if (st->slots[i].index == idx)
            s = &st->slots[i];
    /* The same index with another id: a server that numbers each chunk's calls from 0. */
    if (s && s->id && json_is_string(id) && json_string_length(id) > 0 && strcmp(s->id, json_string_value(id)) != 0) {
        s = NULL;
        idx = -(int64_t)st->n_slots - 1;
    }
    if (!s) {
        if (st->n_slots >= MAX_TOOL_CALLS) {
            llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "more than %d tool calls in one reply",
                           MAX_TOOL_CALLS);
            return 1;
        }
        st->slots = chat_xrealloc(st->slots, (st->n_slots + 1) * sizeof *st->slots);
        s = &st->slots[st->n_slots++];
        memset(s, 0, sizeof *s);
        s->index = idx;
    }
    if (!take_str(st, &s->id, id) || !take_str(st, &s->name, json_object_get(f, "name")))
        return 1;
    json_t *args = json_object_get(f, "arguments");
    char *dumped = NULL;
    const char *a = NULL;
    size_t n = 0;
    if (json_is_string(args)) {
        a = json_string_value(args);
        n = json_string_length(args);
    } else if (json_is_object(args)) {
        /* Some servers send the arguments as an object, whole. */
        dumped = chat_json_dumps(args, JSON_COMPACT, NULL);
        if (!dumped)
            oom_json();
        a = dumped;
        n = strlen(dumped);
    }
    int rc = 0;
    if (s->state == 2 && n > 0) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "tool call %lld continued after its block ended",
                       (long long)idx);
        rc = 1;
    } else if (s->state == 1) {
        rc = llm_reply_piece(st, LLM_BLK_TOOL, a, n);
    } else if (s->state == 0 && n > 0) {
        /* Held arguments count against the content's cap with what is built. */
        size_t held = 0;
        for (size_t i = 0; i < st->n_slots; i++)
            held += st->slots[i].args_len;
        if (st->max_bytes && st->content_bytes + held + n > st->max_bytes) {
            llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "tool call arguments exceed max_response_bytes=%zu",
                           st->max_bytes);
            rc = 1;
        } else {
            s->args = chat_xrealloc(s->args, s->args_len + n + 1);
            memcpy(s->args + s->args_len, a, n);
            s->args_len += n;
            s->args[s->args_len] = '\0';
        }
    }
    free(dumped);
    if (rc == 0 && s->state == 0) {
        /* A new call while another is open waits; otherwise it starts now,
         * closing a text or thinking block. */
        rc = maybe_start(st);
    }
    return rc;
}

/* Text or reasoning: every tool call ends first, so blocks never interleave. */
static int text_piece(llm_parse *st, llm_block_kind kind, json_t *v)
{
    if (flush_tools(st) != 0)
        return 1;
    return llm_reply_piece(st, kind, json_string_value(v), json_string_length(v));
}

/* The finish_reason: everything still open ends, and the reply is complete. */
static int finish_choice(llm_parse *st, const char *fr)
{
    if (flush_tools(st) != 0 || llm_reply_close(st, true) != 0)
        return 1;
    llm_reply_stop_reason(st, fr, "stop");
    st->finished = true;
    return 0;
}

/* A stream chunk's choice: reasoning, text, tool-call pieces, finish_reason. */
static int read_delta(llm_parse *st, json_t *choice)
{
    json_t *d = json_object_get(choice, "delta");
    json_t *r = reasoning_of(d);
    if (r && text_piece(st, LLM_BLK_THINKING, r) != 0)
        return 1;
    json_t *content = json_object_get(d, "content");
    if (json_is_string(content) && json_string_length(content) > 0 && text_piece(st, LLM_BLK_TEXT, content) != 0)
        return 1;
    json_t *calls = json_object_get(d, "tool_calls");
    size_t i;
    json_t *tc;
    if (json_is_array(calls))
        json_array_foreach(calls, i, tc)
        {
            if (tool_piece(st, tc, i, false) != 0)
                return 1;
        }
    const char *fr = jstr(choice, "finish_reason");
    if (fr && *fr)
        return finish_choice(st, fr);
    return 0;
}

/* A non-streamed reply's message: reasoning, text, then each tool call whole. */
static int read_message(llm_parse *st, json_t *choice)
{
    json_t *m = json_object_get(choice, "message");
    json_t *r = reasoning_of(m);
    if (r && (llm_reply_piece(st, LLM_BLK_THINKING, json_string_value(r), json_string_length(r)) != 0 ||
              llm_reply_close(st, true) != 0))
        return 1;
    /* content may be null (a refusal or tool calls): an empty reply, not an error. */
    json_t *content = json_object_get(m, "content");
    if (json_is_string(content) && json_string_length(content) > 0 &&
        (llm_reply_piece(st, LLM_BLK_TEXT, json_string_value(content), json_string_length(content)) != 0 ||
         llm_reply_close(st, true) != 0))
        return 1;
    json_t *calls = json_object_get(m, "tool_calls");
    size_t i;
    json_t *tc;
    if (json_is_array(calls))
        json_array_foreach(calls, i, tc)
        {
            if (tool_piece(st, tc, i, true) != 0 || flush_tools(st) != 0)
                return 1;
        }
    const char *fr = jstr(choice, "finish_reason");
    if (fr && *fr)
        llm_reply_stop_reason(st, fr, "stop");
    return 0;
}

/* The first choice (n is always 1 for us), NULL if there is none. */
static json_t *first_choice(json_t *j)
{
    json_t *choices = json_object_get(j, "choices");
    json_t *c = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
    return json_is_object(c) ? c : NULL;
}

static int on_sse_event(llm_parse *st, const char *type, const char *data, size_t len)
{
    int rc = 0;
    json_t *j = NULL;
    json_error_t je;

    if (st->complete)
        return 0; /* after [DONE] nothing belongs to this reply any more */
    if (strcmp(type, "error") == 0) {
        /* The other form of in-stream error the openai SDK accepts. */
        j = chat_json_loadb(data, len, 0, &je);
        json_t *e = json_object_get(j, "error");
        fail_with_error(st, e ? e : j, data, len);
        rc = 1;
        goto out;
    }
    if (strcmp(type, "message") != 0)
        return 0; /* chunks are data-only; an event type we do not know is skipped */
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        if (!st->finished) {
            llm_parse_fail(st, LLM_ERR_TRUNCATED, "truncated", "the stream ended ([DONE]) without a finish_reason");
            return 1;
        }
        st->complete = true;
        return 0;
    }
    j = chat_json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "malformed JSON in a stream chunk: %s",
                       j ? "not an object" : je.text);
        rc = 1;
        goto out;
    }
    json_t *err = json_object_get(j, "error");
    if (err && !json_is_null(err)) {
        fail_with_error(st, err, data, len);
        rc = 1;
        goto out;
    }
    if (!st->model)
        set_str(&st->model, jstr(j, "model")); /* the same on every chunk */
    read_usage(st, json_object_get(j, "usage"));
    read_usage(st, json_object_get(json_object_get(j, "x_groq"), "usage"));
    json_t *c = first_choice(j);
    if (c)
        rc = read_delta(st, c);
out:
    json_decref(j);
    return rc;
}

static llm_status parse_json_body(llm_parse *st, const char *body, size_t len)
{
    llm_status rc = LLM_ERR_PROTOCOL;
    json_t *j = llm_load_object(st, body, len);
    if (!j)
        goto out;
    json_t *err = json_object_get(j, "error");
    if (err && !json_is_null(err)) {
        fail_with_error(st, err, body, len);
        goto out;
    }
    json_t *c = first_choice(j);
    if (!c) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "response has no choices");
        goto out;
    }
    set_str(&st->model, jstr(j, "model"));
    read_usage(st, json_object_get(j, "usage"));
    if (read_message(st, c) != 0)
        goto out; /* malformed tool calls, or the sink recorded why */
    st->complete = true;
    rc = LLM_OK;
out:
    json_decref(j);
    return st->err != LLM_OK ? st->err : rc;
}

/* A message from FastAPI's {"detail": ...}: a string, or the first item's
 * "msg" of a validation error list, else the JSON itself (heap or NULL). */
static char *detail_message(json_t *d)
{
    if (json_is_string(d))
        return json_string_length(d) ? llm_strndup_utf8(json_string_value(d), MESSAGE_MAX) : NULL;
    if (!d || json_is_null(d))
        return NULL;
    const char *m = jstr(json_is_array(d) ? json_array_get(d, 0) : d, "msg");
    if (m && *m)
        return llm_strndup_utf8(m, MESSAGE_MAX);
    char *dump = chat_json_dumps(d, JSON_COMPACT, NULL);
    if (!dump)
        return NULL;
    char *ex = llm_excerpt(dump, strlen(dump), EXCERPT_MAX);
    free(dump);
    return ex;
}

/*
 * B5/B7 error bodies: {"error":{"message","type","param","code"}} (code a
 * string, an integer or null), the flat {"object":"error","message","type",
 * "code"}, {"error":"text"}, {"detail":...}, and anything not JSON (an
 * excerpt). The type defaults to the A7 name for the status, so callers see
 * the same vocabulary whichever provider failed. A 429 whose type or code is
 * insufficient_quota is a billing state, not a rate limit: never retried.
 */
static void parse_error(int http_status, const char *body, size_t len, llm_error_info *out)
{
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *j = len ? chat_json_loadb(body, len, 0, &je) : NULL;
    const char *type = NULL;
    char *msg = NULL;
    if (json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        json_t *holder = json_is_object(e) ? e : j; /* the flat shape has the fields at the top */
        if (json_is_string(e) && json_string_length(e))
            msg = llm_strndup_utf8(json_string_value(e), MESSAGE_MAX);
        const char *m = jstr(holder, "message");
        if (!msg && m && *m)
            msg = llm_strndup_utf8(m, MESSAGE_MAX);
        type = jstr(holder, "type");
        out->code = code_text(json_object_get(holder, "code"));
        if (!msg)
            msg = detail_message(json_object_get(j, "detail"));
    }
    out->type =
        type && *type ? llm_strndup_utf8(type, FIELD_MAX) : chat_xstrdup(llm_error_type_for_status(http_status));
    if (http_status == 429 &&
        (strcmp(out->type, "insufficient_quota") == 0 || (out->code && strcmp(out->code, "insufficient_quota") == 0)))
        out->no_retry = true;
    if (msg) {
        out->message = msg;
    } else {
        out->message = llm_http_error_text(http_status, body, len);
    }
    json_decref(j);
}

const llm_provider_ops llm_openai_ops = {
    .build_url = build_url,
    .build_headers = build_headers,
    .build_body = build_body,
    .on_sse_event = on_sse_event,
    .parse_json_body = parse_json_body,
    .parse_error = parse_error,
    .request_id_header = "x-request-id",
    .end_marker = "finish_reason",
};
