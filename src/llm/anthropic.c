/*
 * anthropic.c: the Anthropic Messages API wire format (docs/PROTOCOLS.md section A),
 * behind llm_provider_ops (call_internal.h).
 *
 * Request: POST {base_url}/v1/messages with x-api-key, anthropic-version and a
 * JSON body {model, max_tokens, system?, messages:[{role, content}], options...,
 * stream?}: content is the text, or the message's canonical blocks unchanged
 * (llm/content.h uses Anthropic's shape), and the request options are mapped
 * as docs/PROTOCOLS.md A11 says; an option Anthropic cannot carry makes the
 * request unusable rather than being dropped.
 * With prompt caching on, cache_control breakpoints are added to that body
 * (llm_anthropic_mark_cache; the strings they go on become one-block arrays).
 * Reply: a JSON Message (A5), or an SSE stream routed on the SSE event name,
 * never on the JSON "type" (A6), or an error body (A7).
 *
 * Nothing here touches curl transfers or the loop: every function turns bytes
 * into an llm_parse or an llm_error_info, so tests feed it canned bytes.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "llm/call_internal.h"

/* Longest excerpt of a non-JSON error body put into a message. */
#define EXCERPT_MAX 200
/* The API rejects a request with more cache_control blocks than this (A4). */
#define MAX_BREAKPOINTS 4

static char *build_url(const llm_provider *p)
{
    size_t n = strlen(p->base_url);
    while (n > 0 && p->base_url[n - 1] == '/')
        n--; /* "https://host/" and "https://host" mean the same */
    if (n == 0 || !llm_header_safe(p->base_url))
        return NULL;
    return chat_xasprintf("%.*s/v1/messages", (int)n, p->base_url);
}

static struct curl_slist *build_headers(const llm_provider *p, bool stream)
{
    const char *version = p->version && *p->version ? p->version : "2023-06-01";
    if (!*p->api_key || !llm_header_safe(p->api_key) || !llm_header_safe(version))
        return NULL;
    struct curl_slist *h = NULL;
    char *line = chat_xasprintf("x-api-key: %s", p->api_key);
    h = llm_slist_add(h, line);
    memset(line, 0, strlen(line)); /* do not leave the key in freed memory */
    free(line);
    line = chat_xasprintf("anthropic-version: %s", version);
    h = llm_slist_add(h, line);
    free(line);
    h = llm_slist_add(h, "content-type: application/json");
    h = llm_slist_add(h, stream ? "accept: text/event-stream" : "accept: application/json");
    /* curl would otherwise send "Expect: 100-continue" for large bodies and
     * wait a round trip (or a second) for a 100 the API does not need. */
    h = llm_slist_add(h, "Expect:");
    return h;
}

static void oom_json(void)
{
    chat_fatal("out of memory building JSON");
}

/* ---- prompt caching (A4) ---- */

/* Unicode characters in a UTF-8 string (jansson only holds valid UTF-8). */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += (*p & 0xC0) != 0x80;
    return n;
}

/* Characters of a value as the estimate counts them: a string's characters,
 * or a JSON value's compact text (tool inputs). */
static size_t value_chars(json_t *v)
{
    if (json_is_string(v))
        return utf8_chars(json_string_value(v));
    char *d = v ? chat_json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY, NULL) : NULL;
    size_t n = d ? utf8_chars(d) : 0;
    free(d);
    return n;
}

/* Characters of text in a system or content value: a string, or the blocks
 * of an array: text, thinking, tool inputs and results (their text), and
 * every image as LLM_IMAGE_TOKENS (llm/content.h) worth of characters. */
static size_t content_chars(json_t *v)
{
    if (json_is_string(v))
        return utf8_chars(json_string_value(v));
    size_t n = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *b;
        json_array_foreach(v, i, b)
        {
            const char *type = json_string_value(json_object_get(b, "type"));
            json_t *t = json_object_get(b, "text");
            if (json_is_string(t))
                n += utf8_chars(json_string_value(t));
            else if (type && strcmp(type, "image") == 0)
                n += (size_t)LLM_IMAGE_TOKENS * 4;
            else if (type && strcmp(type, "thinking") == 0)
                n += value_chars(json_object_get(b, "thinking"));
            else if (type && strcmp(type, "tool_use") == 0)
                n += value_chars(json_object_get(b, "input"));
            else if (type && strcmp(type, "tool_result") == 0)
                n += content_chars(json_object_get(b, "content"));
        }
    }
    return n;
}

/* Estimated tokens of n characters: n / 4, rounded up. */
static int64_t est_tokens(size_t chars)
{
    return (int64_t)((chars + 3) / 4);
}

/* cache_control markers in the blocks of an array (system, content, tools). */
static int markers_in(json_t *arr)
{
    int n = 0;
    size_t i;
    json_t *b;
    if (json_is_array(arr))
        json_array_foreach(arr, i, b) n += json_object_get(b, "cache_control") != NULL;
    return n;
}

/* One message as the breakpoint rule sees it: its object, or (a text
 * message the body writes without a tree) its role and text, which carry no
 * marker and cannot take one. */
typedef struct cache_msg {
    const char *role;
    json_t *obj;
    const char *text;
} cache_msg;

static int count_markers(json_t *body, const cache_msg *msgs, size_t n)
{
    /* The top-level automatic marker: counted, as the API may count it. */
    int k = json_object_get(body, "cache_control") != NULL;
    k += markers_in(json_object_get(body, "tools"));
    k += markers_in(json_object_get(body, "system"));
    for (size_t i = 0; i < n; i++)
        if (msgs[i].obj)
            k += markers_in(json_object_get(msgs[i].obj, "content"));
    return k;
}

static size_t msg_chars(const cache_msg *m)
{
    if (m->obj)
        return content_chars(json_object_get(m->obj, "content"));
    return m->text ? utf8_chars(m->text) : 0;
}

/* The end of the previous turn: the last assistant message before the final
 * one, or n - 1 (the final one: no candidate). n > 0. */
static size_t prev_turn_end(const cache_msg *msgs, size_t n)
{
    for (size_t i = n - 1; i-- > 0;)
        if (msgs[i].role && strcmp(msgs[i].role, "assistant") == 0)
            return i;
    return n - 1;
}

static json_t *ephemeral(void)
{
    json_t *cc = json_pack("{s:s}", "type", "ephemeral");
    if (!cc)
        oom_json();
    return cc;
}

/*
 * Puts a breakpoint at the end of holder[key] (a system or content value).
 * Returns false, changing nothing, if it is already marked there or cannot be
 * (absent, empty, an empty text block, not a block).
 */
static bool mark_end(json_t *holder, const char *key)
{
    json_t *v = json_object_get(holder, key);
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return false; /* the API rejects cache_control on an empty text block */
        json_t *blocks = json_pack("[{s:s,s:O,s:o}]", "type", "text", "text", v, "cache_control", ephemeral());
        if (!blocks)
            oom_json();
        json_object_set_new(holder, key, blocks); /* keeps the key's place in the object */
        return true;
    }
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    json_t *last = n ? json_array_get(v, n - 1) : NULL;
    if (!json_is_object(last) || json_object_get(last, "cache_control"))
        return false;
    const char *type = json_string_value(json_object_get(last, "type"));
    json_t *text = json_object_get(last, "text");
    if (type && strcmp(type, "text") == 0 && (!json_is_string(text) || json_string_length(text) == 0))
        return false;
    /* Thinking blocks cannot carry cache_control (they are cached as part of the turn). */
    if (type && (strcmp(type, "thinking") == 0 || strcmp(type, "redacted_thinking") == 0))
        return false;
    json_object_set_new(last, "cache_control", ephemeral());
    return true;
}

/* llm_anthropic_mark_cache over body's top level (tools, system) and msgs. */
static int mark_cache(json_t *body, const cache_msg *msgs, size_t n, int64_t min_tokens)
{
    if (min_tokens <= 0)
        min_tokens = LLM_CACHE_MIN_TOKENS_DEFAULT;
    int slots = MAX_BREAKPOINTS - count_markers(body, msgs, n);
    int added = 0;
    json_t *sys = json_object_get(body, "system");
    size_t sys_chars = content_chars(sys);

    /* 1. The end of the previous turn. */
    size_t at = n >= 2 ? prev_turn_end(msgs, n) : n;
    if (slots > 0 && at < n - 1 && msgs[at].obj) {
        /* Counted only until the minimum is reached: a long conversation
         * is not walked whole on every turn. */
        size_t chars = sys_chars;
        for (size_t i = 0; i <= at && est_tokens(chars) < min_tokens; i++)
            chars += msg_chars(&msgs[i]);
        if (est_tokens(chars) >= min_tokens && mark_end(msgs[at].obj, "content")) {
            added++;
            slots--;
        }
    }
    /* 2. The system prompt on its own. */
    if (slots > 0 && sys && est_tokens(sys_chars) >= min_tokens && mark_end(body, "system"))
        added++;
    return added;
}

int llm_anthropic_mark_cache(json_t *body, int64_t min_tokens)
{
    if (!json_is_object(body))
        return 0;
    json_t *arr = json_object_get(body, "messages");
    size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
    cache_msg *msgs = chat_xcalloc(n ? n : 1, sizeof *msgs);
    for (size_t i = 0; i < n; i++) {
        msgs[i].obj = json_array_get(arr, i);
        msgs[i].role = json_string_value(json_object_get(msgs[i].obj, "role"));
    }
    int added = mark_cache(body, msgs, n, min_tokens);
    free(msgs);
    return added;
}

/* ---- the request body ---- */

/* A JSON value, or oom. */
static json_t *jchk(json_t *v)
{
    if (!v)
        oom_json();
    return v;
}

/* The content of one message: its blocks (a deep copy; must be a non-empty
 * array of objects) or its text. A thinking block without a signature (an
 * OpenAI-compatible model's reasoning, kept by chatd) is left out: Anthropic
 * accepts thinking back only with the signature it made, and ignores earlier
 * turns' thinking anyway (docs/PROTOCOLS.md A11). NULL if unusable (also when
 * nothing is left). */
static json_t *message_content(const llm_message *m)
{
    if (m->blocks) {
        if (!json_is_array(m->blocks) || json_array_size(m->blocks) == 0)
            return NULL;
        json_t *out = jchk(json_array());
        size_t i;
        json_t *b;
        json_array_foreach(m->blocks, i, b)
        {
            const char *type = json_string_value(json_object_get(b, "type"));
            if (!json_is_object(b) || !type) {
                json_decref(out);
                return NULL;
            }
            if (strcmp(type, "thinking") == 0 && !json_is_string(json_object_get(b, "signature")))
                continue;
            json_array_append_new(out, jchk(json_deep_copy(b)));
        }
        if (json_array_size(out) == 0) {
            json_decref(out);
            return NULL;
        }
        return out;
    }
    /* Not checked for UTF-8 here: chat_json_dumps checks every string of the
     * body once, and a body that is not UTF-8 is refused there (build_body
     * returns NULL), which spares a second pass over the whole history. */
    return m->content ? json_stringn_nocheck(m->content, strlen(m->content)) : NULL;
}

/* The option keys Anthropic can carry (see apply_options). Any other key
 * makes the request unusable, unless its value is the one that changes
 * nothing (no_op_value). */
static const char *const known_options[] = {
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "user",
    "metadata",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "thinking",
    "reasoning_effort",
    NULL,
};

static bool is_known_option(const char *k)
{
    for (size_t i = 0; known_options[i]; i++)
        if (strcmp(known_options[i], k) == 0)
            return true;
    return false;
}

/* OpenAI-only options whose value asks for nothing (their defaults, which
 * clients often send explicitly): n 1, logprobs false, presence_penalty and
 * frequency_penalty 0, an empty logit_bias. Anything else of theirs (seed,
 * top_logprobs, ...) changes the answer and cannot be carried. */
static bool no_op_value(const char *k, json_t *v)
{
    if (strcmp(k, "n") == 0)
        return json_is_integer(v) && json_integer_value(v) == 1;
    if (strcmp(k, "logprobs") == 0)
        return json_is_false(v);
    if (strcmp(k, "presence_penalty") == 0 || strcmp(k, "frequency_penalty") == 0)
        return json_is_number(v) && json_number_value(v) == 0.0;
    if (strcmp(k, "logit_bias") == 0)
        return json_is_object(v) && json_object_size(v) == 0;
    return false;
}

/* thinking.budget_tokens for a reasoning_effort (docs/PROTOCOLS.md A11), or 0 if unknown. */
static int64_t effort_budget(const char *effort)
{
    if (!effort)
        return 0;
    if (strcmp(effort, "minimal") == 0 || strcmp(effort, "low") == 0)
        return 1024;
    if (strcmp(effort, "medium") == 0)
        return 4096;
    if (strcmp(effort, "high") == 0)
        return 16384;
    return 0;
}

/* One canonical tool {name, description?, input_schema, strict?, cache_control?}
 * in Anthropic's shape (the same fields), NULL if malformed. */
static json_t *tool_def(json_t *t)
{
    json_t *name = json_object_get(t, "name");
    json_t *desc = json_object_get(t, "description");
    json_t *schema = json_object_get(t, "input_schema");
    json_t *strict = json_object_get(t, "strict");
    json_t *cc = json_object_get(t, "cache_control");
    if (!json_is_object(t) || !json_is_string(name) || json_string_length(name) == 0 || !json_is_object(schema) ||
        (desc && !json_is_string(desc)) || (strict && !json_is_boolean(strict)) || (cc && !json_is_object(cc)))
        return NULL;
    json_t *o = jchk(json_object());
    json_object_set(o, "name", name);
    if (desc)
        json_object_set(o, "description", desc);
    json_object_set_new(o, "input_schema", jchk(json_deep_copy(schema)));
    if (strict)
        json_object_set(o, "strict", strict);
    if (cc)
        json_object_set_new(o, "cache_control", jchk(json_deep_copy(cc)));
    return o;
}

/* The JSON Schema a response_format asks for: json_schema's schema, or
 * {"type":"object"} for json_object; NULL for text (nothing to ask) or a
 * malformed value (*bad set). New reference. */
static json_t *format_schema(json_t *rf, bool *bad)
{
    *bad = false;
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || !type) {
        *bad = true;
        return NULL;
    }
    if (strcmp(type, "text") == 0)
        return NULL;
    if (strcmp(type, "json_object") == 0)
        return jchk(json_pack("{s:s}", "type", "object"));
    json_t *schema = json_object_get(rf, "schema");
    if (strcmp(type, "json_schema") == 0 && json_is_object(schema))
        return jchk(json_deep_copy(schema));
    *bad = true;
    return NULL;
}

/*
 * Maps the request options (llm/content.h "Options") onto the body, in a
 * fixed order (docs/PROTOCOLS.md A11). Returns false if a key cannot be
 * carried or a value is malformed: the request is then unusable.
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
        if (!is_known_option(k) && !no_op_value(k, v))
            return false;
    }
#define OPT(name) json_object_get(opts, name)
    json_t *temp = OPT("temperature"), *top_p = OPT("top_p"), *top_k = OPT("top_k");
    if ((temp && !json_is_number(temp)) || (top_p && !json_is_number(top_p)) || (top_k && !json_is_integer(top_k)))
        return false;
    if (temp)
        json_object_set(root, "temperature", temp);
    if (top_p)
        json_object_set(root, "top_p", top_p);
    if (top_k)
        json_object_set(root, "top_k", top_k);

    json_t *stop = OPT("stop");
    if (stop) {
        json_t *seqs = NULL;
        if (json_is_string(stop)) {
            seqs = jchk(json_pack("[O]", stop));
        } else if (json_is_array(stop) && json_array_size(stop) > 0) {
            size_t i;
            json_t *s;
            json_array_foreach(stop, i, s)
            {
                if (!json_is_string(s))
                    return false;
            }
            seqs = jchk(json_deep_copy(stop));
        } else {
            return false;
        }
        json_object_set_new(root, "stop_sequences", seqs);
    }

    json_t *meta = OPT("metadata"), *user = OPT("user");
    if ((meta && !json_is_object(meta)) || (user && !json_is_string(user)))
        return false;
    if (meta || user) {
        json_t *m = meta ? jchk(json_deep_copy(meta)) : jchk(json_object());
        if (user && !json_object_get(m, "user_id"))
            json_object_set(m, "user_id", user);
        json_object_set_new(root, "metadata", m);
    }

    /* Tools, the forced structured-output tool, tool_choice. */
    json_t *tools_in = OPT("tools"), *choice_in = OPT("tool_choice"), *parallel = OPT("parallel_tool_calls");
    json_t *rf = OPT("response_format");
    if ((tools_in && !json_is_array(tools_in)) || (choice_in && !json_is_object(choice_in)) ||
        (parallel && !json_is_boolean(parallel)))
        return false;
    bool bad = false;
    json_t *schema = rf ? format_schema(rf, &bad) : NULL;
    if (bad)
        return false;
    json_t *tools = NULL;
    if (tools_in && json_array_size(tools_in) > 0) {
        tools = jchk(json_array());
        size_t i;
        json_t *t;
        json_array_foreach(tools_in, i, t)
        {
            json_t *d = tool_def(t);
            if (!d) {
                json_decref(tools);
                json_decref(schema);
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
        if (ct && (strcmp(ct, "auto") == 0 || strcmp(ct, "any") == 0 || strcmp(ct, "none") == 0))
            choice = jchk(json_pack("{s:s}", "type", ct));
        else if (ct && strcmp(ct, "tool") == 0 && json_is_string(name) && json_string_length(name) > 0)
            choice = jchk(json_pack("{s:s,s:O}", "type", "tool", "name", name));
        if (!choice) {
            json_decref(tools);
            json_decref(schema);
            return false;
        }
    }
    if (schema && req->json_via_tool) {
        /* Structured output through a forced tool (provider.h json_via_tool):
         * the model must call LLM_JSON_TOOL, or one of the caller's tools if
         * there are any (then "any"). A caller's tool_choice other than auto
         * contradicts the forcing. */
        const char *ct = choice ? json_string_value(json_object_get(choice, "type")) : "auto";
        if (strcmp(ct, "auto") != 0) {
            json_decref(tools);
            json_decref(schema);
            json_decref(choice);
            return false;
        }
        json_decref(choice);
        if (!tools)
            tools = jchk(json_array());
        json_array_append_new(
            tools, jchk(json_pack("{s:s,s:s,s:o}", "name", LLM_JSON_TOOL, "description",
                                  "Respond with the final answer as this tool's input.", "input_schema", schema)));
        choice = have_user_tools ? jchk(json_pack("{s:s}", "type", "any"))
                                 : jchk(json_pack("{s:s,s:s}", "type", "tool", "name", LLM_JSON_TOOL));
    } else if (schema) {
        json_t *oc = jchk(json_pack("{s:{s:s,s:o}}", "format", "type", "json_schema", "schema", schema));
        json_object_set_new(root, "output_config", oc);
    }
    if (parallel && json_is_false(parallel) && tools) {
        if (!choice)
            choice = jchk(json_pack("{s:s}", "type", "auto"));
        const char *ct = json_string_value(json_object_get(choice, "type"));
        if (strcmp(ct, "none") != 0) /* no tool at all: nothing to serialise */
            json_object_set_new(choice, "disable_parallel_tool_use", json_true());
    }
    if (tools)
        json_object_set_new(root, "tools", tools);
    const char *cts = choice ? json_string_value(json_object_get(choice, "type")) : NULL;
    if (choice && !tools && (strcmp(cts, "auto") == 0 || strcmp(cts, "none") == 0)) {
        /* Without tools, auto and none change nothing (and the API refuses a
         * tool_choice without tools); any or tool are the caller's error to see. */
        json_decref(choice);
        choice = NULL;
    }
    if (choice)
        json_object_set_new(root, "tool_choice", choice);

    /* Thinking: given as is, else from reasoning_effort. */
    json_t *thinking = OPT("thinking"), *effort = OPT("reasoning_effort");
    if ((thinking && !json_is_object(thinking)) || (effort && !json_is_string(effort)))
        return false;
    if (thinking) {
        json_object_set_new(root, "thinking", jchk(json_deep_copy(thinking)));
    } else if (effort) {
        int64_t budget = effort_budget(json_string_value(effort));
        if (budget == 0)
            return false;
        /* The budget must stay below max_tokens; the API's floor is 1024. */
        if (budget >= req->max_tokens && req->max_tokens > 1024)
            budget = req->max_tokens - 1;
        json_object_set_new(root, "thinking",
                            jchk(json_pack("{s:s,s:I}", "type", "enabled", "budget_tokens", (json_int_t)budget)));
    }
#undef OPT
    return true;
}

/*
 * The body: {"model", "max_tokens", "system" (only when non-empty),
 * "messages":[{"role","content"}] (content the text, or the message's
 * canonical blocks as they are: they are Anthropic's own shape), then the
 * options (apply_options), "stream":true (only when streaming)}, with
 * cache_control breakpoints when p->prompt_caching is on.
 * The messages are not put into the tree: a text message is written from its
 * text (llm_write_messages), so the history is not copied once more per turn;
 * objects are made only for messages with blocks and for the one a
 * breakpoint may go on.
 * NULL if a field is missing, a string is not valid UTF-8, or an option
 * cannot be carried.
 */
static char *build_body(const llm_provider *p, const llm_request *req, size_t *len)
{
    char *out = NULL;
    json_t *root = NULL;
    size_t n = req->n_messages;
    if (!req->model || !*req->model || req->max_tokens <= 0 || n == 0 || !req->messages)
        return NULL;
    cache_msg *view = chat_xcalloc(n, sizeof *view);
    json_t **objs = chat_xcalloc(n, sizeof *objs);
    for (size_t i = 0; i < n; i++) {
        const llm_message *m = &req->messages[i];
        if (!m->role || (!m->blocks && !m->content))
            goto out;
        view[i] = (cache_msg){ .role = m->role, .text = m->content };
    }
    size_t at = p->prompt_caching && n >= 2 ? prev_turn_end(view, n) : n;
    for (size_t i = 0; i < n; i++) {
        const llm_message *m = &req->messages[i];
        if (!m->blocks && i != at)
            continue;
        json_t *role = json_string(m->role);
        json_t *content = message_content(m);
        if (!role || !content) {
            json_decref(role);
            json_decref(content);
            goto out;
        }
        objs[i] = jchk(json_object());
        json_object_set_new(objs[i], "role", role);
        json_object_set_new(objs[i], "content", content);
        view[i].obj = objs[i];
    }
    root = jchk(json_object());
    json_t *model = json_string(req->model);
    if (!model)
        goto out;
    json_object_set_new(root, "model", model);
    json_object_set_new(root, "max_tokens", json_integer(req->max_tokens));
    if (req->system && *req->system) {
        json_t *sys = json_string(req->system);
        if (!sys)
            goto out;
        json_object_set_new(root, "system", sys);
    }
    json_t *msgs = jchk(json_array()); /* where llm_write_messages writes */
    json_object_set_new(root, "messages", msgs);
    if (!apply_options(root, req))
        goto out;
    if (req->stream)
        json_object_set_new(root, "stream", json_true());
    if (p->prompt_caching)
        (void)mark_cache(root, view, n, p->cache_min_tokens);
    llm_body_messages bm = { req, objs, NULL };
    out = chat_json_dumps_splice(root, JSON_COMPACT, msgs, llm_write_messages, &bm, len); /* NULL: not UTF-8 */
out:
    for (size_t i = 0; i < n; i++)
        json_decref(objs[i]);
    free(objs);
    free(view);
    json_decref(root);
    return out;
}

/* ---- reading replies ---- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Overwrites each usage field the object reports (cumulative totals, A6). */
static void read_usage(llm_parse *st, json_t *u)
{
    if (!json_is_object(u))
        return;
    json_t *v;
    if (json_is_integer(v = json_object_get(u, "input_tokens")))
        st->usage.input_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(u, "output_tokens")))
        st->usage.output_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(u, "cache_read_input_tokens")))
        st->usage.cache_read_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(u, "cache_creation_input_tokens")))
        st->usage.cache_write_tokens = json_integer_value(v);
    if (json_is_integer(v = json_object_get(json_object_get(u, "output_tokens_details"), "thinking_tokens")))
        st->usage.reasoning_tokens = json_integer_value(v);
}

static void set_str(char **dst, const char *v)
{
    if (!v)
        return;
    free(*dst);
    *dst = llm_strndup_utf8(v, 256);
}

/* Parses one event's JSON; on failure records LLM_ERR_PROTOCOL and returns NULL. */
static json_t *event_json(llm_parse *st, const char *type, const char *data, size_t len)
{
    json_error_t je;
    json_t *j = chat_json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "malformed JSON in the %s event: %s", type,
                       j ? "not an object" : je.text);
        return NULL;
    }
    return j;
}

static int on_sse_event(llm_parse *st, const char *type, const char *data, size_t len)
{
    int rc = 0;
    json_t *j = NULL;

    if (strcmp(type, "ping") == 0)
        return 0;
    if (strcmp(type, "error") == 0) {
        /* The provider gave up after its 200: report its error as it said it. */
        json_error_t je;
        j = chat_json_loadb(data, len, 0, &je);
        json_t *e = json_object_get(j, "error");
        const char *et = jstr(e, "type");
        const char *em = jstr(e, "message");
        char *ex = em ? llm_strndup_utf8(em, 1024) : llm_excerpt(data, len, EXCERPT_MAX);
        llm_parse_fail(st, LLM_ERR_STREAM, et ? et : "api_error", "%s", ex);
        free(ex);
        rc = 1;
        goto out;
    }
    if (strcmp(type, "message_start") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *m = json_object_get(j, "message");
        set_str(&st->model, jstr(m, "model"));
        read_usage(st, json_object_get(m, "usage"));
    } else if (strcmp(type, "content_block_start") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *cb = json_object_get(j, "content_block");
        const char *bt = jstr(cb, "type");
        /* Blocks of a type we do not know (server tools...) are skipped,
         * their deltas with them (A6, A11). */
        st->block_is_text = false;
        if (!bt) {
            st->block_index = -1;
        } else if (strcmp(bt, "text") == 0) {
            st->block_is_text = true;
            rc = llm_reply_open(st, LLM_BLK_TEXT, NULL, NULL);
            json_t *t = json_object_get(cb, "text"); /* "" in practice */
            if (rc == 0 && json_is_string(t))
                rc = llm_reply_piece(st, LLM_BLK_TEXT, json_string_value(t), json_string_length(t));
        } else if (strcmp(bt, "thinking") == 0) {
            rc = llm_reply_open(st, LLM_BLK_THINKING, NULL, NULL);
            json_t *t = json_object_get(cb, "thinking");
            if (rc == 0 && json_is_string(t))
                rc = llm_reply_piece(st, LLM_BLK_THINKING, json_string_value(t), json_string_length(t));
            const char *sig = jstr(cb, "signature");
            if (rc == 0 && sig && *sig)
                llm_reply_signature(st, sig, strlen(sig));
        } else if (strcmp(bt, "tool_use") == 0) {
            rc = llm_reply_open(st, LLM_BLK_TOOL, jstr(cb, "id"), jstr(cb, "name"));
            /* input is {} at the start; the JSON text comes in input_json_delta pieces. */
        } else if (strcmp(bt, "redacted_thinking") == 0) {
            const char *d = jstr(cb, "data");
            if (!d || !*d) {
                llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "a redacted_thinking block without data");
                rc = 1;
            } else {
                rc = llm_reply_redacted(st, d);
            }
        } else {
            rc = llm_reply_close(st, true);
        }
        json_t *idx = json_object_get(j, "index");
        st->block_index = json_is_integer(idx) ? json_integer_value(idx) : -1;
    } else if (strcmp(type, "content_block_delta") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *d = json_object_get(j, "delta");
        const char *dt = jstr(d, "type");
        json_t *idx = json_object_get(j, "index");
        bool skipped =
            st->open_kind == LLM_BLK_NONE && json_is_integer(idx) && json_integer_value(idx) == st->block_index;
        json_t *v;
        /* A delta must match its block's kind; one that does not (or a
         * citations_delta, or a delta of a skipped block) is ignored. A
         * text_delta for a block whose start we did not see opens a text block. */
        if (!dt) {
            /* nothing */
        } else if (strcmp(dt, "text_delta") == 0 && json_is_string(v = json_object_get(d, "text"))) {
            if (st->open_kind == LLM_BLK_TEXT || (st->open_kind == LLM_BLK_NONE && !skipped))
                rc = llm_reply_piece(st, LLM_BLK_TEXT, json_string_value(v), json_string_length(v));
        } else if (strcmp(dt, "thinking_delta") == 0 && json_is_string(v = json_object_get(d, "thinking"))) {
            if (st->open_kind == LLM_BLK_THINKING)
                rc = llm_reply_piece(st, LLM_BLK_THINKING, json_string_value(v), json_string_length(v));
        } else if (strcmp(dt, "signature_delta") == 0 && json_is_string(v = json_object_get(d, "signature"))) {
            llm_reply_signature(st, json_string_value(v), json_string_length(v));
        } else if (strcmp(dt, "input_json_delta") == 0 && json_is_string(v = json_object_get(d, "partial_json"))) {
            if (st->open_kind == LLM_BLK_TOOL || st->open_json)
                rc = llm_reply_piece(st, LLM_BLK_TOOL, json_string_value(v), json_string_length(v));
        }
    } else if (strcmp(type, "message_delta") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        json_t *d = json_object_get(j, "delta");
        llm_reply_stop_reason(st, jstr(d, "stop_reason"), "end_turn");
        const char *seq = jstr(d, "stop_sequence");
        if (seq) {
            free(st->stop_sequence);
            st->stop_sequence = llm_strndup_utf8(seq, 256);
        }
        read_usage(st, json_object_get(j, "usage"));
    } else if (strcmp(type, "message_stop") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        /* A block left open by a stream without its stop is closed (and checked) now. */
        rc = llm_reply_close(st, true);
        st->complete = rc == 0 && st->err == LLM_OK;
    } else if (strcmp(type, "content_block_stop") == 0) {
        if (!(j = event_json(st, type, data, len)))
            return 1;
        rc = llm_reply_close(st, true);
        st->block_index = -1;
        st->block_is_text = false;
    }
    /* Anything else: a new event type we do not know yet; ignore it (A6). */
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
    json_t *content = json_object_get(j, "content");
    if (!json_is_array(content)) {
        llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "response has no content array");
        goto out;
    }
    set_str(&st->model, jstr(j, "model"));
    read_usage(st, json_object_get(j, "usage"));
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        if (llm_reply_block(st, b) != 0)
            goto out; /* a malformed block, or the sink recorded why */
    }
    llm_reply_stop_reason(st, jstr(j, "stop_reason"), "end_turn");
    set_str(&st->stop_sequence, jstr(j, "stop_sequence"));
    st->complete = true;
    rc = LLM_OK;
out:
    json_decref(j);
    return rc;
}

/*
 * A7 error bodies: {"type":"error","error":{"type","message","details"?}}.
 * Also accepted, as proxies and compatible servers send them: {"error":"text"},
 * {"message":...}, {"detail":...}, and anything not JSON (an excerpt).
 */
static void parse_error(int http_status, const char *body, size_t len, llm_error_info *out)
{
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *j = len ? chat_json_loadb(body, len, 0, &je) : NULL;
    const char *type = NULL, *msg = NULL;
    if (json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        if (json_is_object(e)) {
            type = jstr(e, "type");
            msg = jstr(e, "message");
            const char *code = jstr(json_object_get(e, "details"), "error_code");
            /* A spend cap: retrying cannot help until someone raises it. */
            if (code && strcmp(code, "enforced_spend_limit_reached") == 0)
                out->no_retry = true;
            if (code && *code)
                out->code = llm_strndup_utf8(code, 256);
        } else if (json_is_string(e)) {
            msg = json_string_value(e);
        }
        if (!msg)
            msg = jstr(j, "message");
        if (!msg)
            msg = jstr(j, "detail");
    }
    out->type = chat_xstrdup(type && *type ? type : llm_error_type_for_status(http_status));
    if (msg && *msg) {
        out->message = llm_strndup_utf8(msg, 1024);
    } else {
        out->message = llm_http_error_text(http_status, body, len);
    }
    json_decref(j);
}

const llm_provider_ops llm_anthropic_ops = {
    .build_url = build_url,
    .build_headers = build_headers,
    .build_body = build_body,
    .on_sse_event = on_sse_event,
    .parse_json_body = parse_json_body,
    .parse_error = parse_error,
    .request_id_header = "request-id",
    .end_marker = "message_stop",
};
