/*
 * anthropic_api.c: POST /v1/messages and POST /v1/messages/count_tokens, the
 * Anthropic Messages API inbound (docs/PROTOCOLS.md A), so that code written
 * on Anthropic's SDKs can use chatd as its base URL.
 *
 * A request becomes a turn as on /v1/chat/completions (api/openai_compat.c):
 * - stateless (no session named): the request's messages are the whole
 *   conversation, the last one (a user message) is the new turn, nothing is
 *   stored (an ephemeral turn);
 * - server-side memory: with the `X-Session-Id` header or
 *   `metadata.session_id`, chatd keeps the history: only the last user
 *   message of the request is the new turn (with an Idempotency-Key, a retry
 *   replays the stored answer).
 *
 * Content: chatd's canonical content is Anthropic's blocks (llm/content.h), so
 * the inbound side mostly validates (llm_content_check) and passes blocks on
 * unchanged; the provider files translate them for OpenAI-compatible models.
 * Document blocks have no OpenAI equivalent: they are accepted for Anthropic
 * models only. Request fields map to canonical options (stop_sequences ->
 * stop, metadata.user_id -> user, tool_choice.disable_parallel_tool_use ->
 * parallel_tool_calls, output_config.format -> response_format,
 * output_config.effort -> reasoning_effort); the turn checks them against the
 * answering model (400 unsupported_parameter). A field that would change the
 * answer and that chatd cannot carry is refused, never dropped; fields that do
 * not change it (service_tier, speed, inference_geo, diagnostics,
 * user_profile_id, workspace_id, the top-level cache_control: chatd marks its
 * own breakpoints) are accepted and ignored. docs/API.md lists them.
 *
 * The anthropic-version header is required, 2023-06-01 or 2026-10-21, with
 * the latter's rules (A2): temperature, top_p and top_k are refused ("Extra
 * inputs are not permitted"), as are a document block in an assistant message
 * and citations on a user text block.
 *
 * Replies follow A5 (a message object) and A6 (the event sequence
 * message_start, content_block_start/delta/stop per block, message_delta with
 * the usage, message_stop; `ping` events as heartbeats; after the stream
 * started an error is `event: error`). As on /v1/chat/completions the stream
 * starts at the first reply event (or after a heartbeat interval of silence),
 * so a failure before it still gets a real HTTP status and the SDK's typed
 * error. Errors use Anthropic's envelope (api.h API_ANTHROPIC).
 *
 * count_tokens is forwarded to the provider's own endpoint for Anthropic
 * models (llm/count_tokens.h); OpenAI-compatible servers have none, so chatd
 * answers its estimate (characters / 4, an image at its most) for those. The
 * header X-Chatd-Token-Count says which: "provider" or "estimate".
 */
#include "api/anthropic_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "api/chat_run.h"
#include "api/idempotency.h"
#include "chat/models.h"
#include "core/alloc.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "core/util.h"
#include "guard/auth.h"
#include "llm/content.h"
#include "llm/count_tokens.h"

/* ---- request ---- */

static bool an_invalid(api_an_invalid *why, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a refusal (400) and returns false. */
static bool an_invalid(api_an_invalid *why, const char *type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why->message, sizeof why->message, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof why->message)
        chat_utf8_trim(why->message); /* a sequence cut by the bound */
    chat_one_line(why->message);      /* client bytes quoted in it may hold a newline */
    why->status = 400;
    why->type = type;
    return false;
}

void api_an_request_free(api_an_request *q)
{
    if (!q)
        return;
    for (size_t k = 0; k < q->n_texts; k++)
        free(q->texts[k]);
    free(q->texts);
    free(q->hist);
    chat_buf_free(&q->system); /* safe on a zeroed buffer too */
    json_decref(q->options);
    json_decref(q->root);
    memset(q, 0, sizeof *q);
}

static bool present(const json_t *v)
{
    return v && !json_is_null(v);
}

/* The text blocks of a system prompt (or of a system-role message), joined by
 * "\n" onto q->system. False with *why for another shape. */
static bool add_system(api_an_request *q, const json_t *v, const char *where, api_an_invalid *why)
{
    size_t max = q->system.max;
    if (json_is_string(v)) {
        if ((q->system.len && chat_buf_append(&q->system, "\n", 1) != CHAT_OK) ||
            chat_buf_appends(&q->system, json_string_value(v)) != CHAT_OK)
            return an_invalid(why, "string_above_max_length", "%s: longer than MAX_MESSAGE_SIZE (%zu bytes)", where,
                              max);
        return true;
    }
    if (!json_is_array(v))
        return an_invalid(why, "invalid_request_error", "%s: Input should be a valid string or a list of text blocks",
                          where);
    size_t i;
    const json_t *b;
    json_array_foreach(v, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        const char *text = json_string_value(json_object_get(b, "text"));
        if (!json_is_object(b) || !type || strcmp(type, "text") != 0 || !text)
            return an_invalid(why, "invalid_request_error", "%s.%zu: Input should be a text block {type: text, text}",
                              where, i);
        if ((q->system.len && chat_buf_append(&q->system, "\n", 1) != CHAT_OK) ||
            chat_buf_appends(&q->system, text) != CHAT_OK)
            return an_invalid(why, "string_above_max_length", "%s: longer than MAX_MESSAGE_SIZE (%zu bytes)", where,
                              max);
    }
    return true;
}

/*
 * Checks the blocks of messages[i] (role user or assistant): the version's
 * rules, document blocks (kept, noted in q->has_document), and every other
 * block with llm_content_check.
 */
static bool check_blocks(api_an_request *q, bool v2026, size_t i, const char *role, const json_t *content,
                         api_an_invalid *why)
{
    bool user = strcmp(role, "user") == 0;
    if (json_array_size(content) == 0)
        return an_invalid(why, "invalid_request_error", "messages.%zu.content: must hold at least one block", i);
    json_t *rest = json_array(); /* the blocks llm_content_check knows */
    size_t k;
    json_t *b;
    bool ok = true;
    json_array_foreach(content, k, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!json_is_object(b) || !type) {
            ok = an_invalid(why, "invalid_request_error", "messages.%zu.content.%zu.type: Field required", i, k);
            break;
        }
        if (strcmp(type, "document") == 0) {
            if (!user && v2026) {
                ok = an_invalid(why, "invalid_request_error",
                                "messages.%zu.content.%zu: a document block is not permitted in an assistant message "
                                "(anthropic-version " API_AN_VERSION_2026 ")",
                                i, k);
                break;
            }
            if (!json_is_object(json_object_get(b, "source"))) {
                ok = an_invalid(why, "invalid_request_error", "messages.%zu.content.%zu.source: Field required", i, k);
                break;
            }
            q->has_document = true;
            continue;
        }
        const json_t *cit = json_object_get(b, "citations");
        if (v2026 && user && strcmp(type, "text") == 0 && json_is_array(cit) && json_array_size(cit) > 0) {
            ok = an_invalid(why, "invalid_request_error",
                            "messages.%zu.content.%zu.citations: Extra inputs are not permitted (anthropic-version "
                            "2026-10-21)",
                            i, k);
            break;
        }
        json_array_append(rest, b);
    }
    if (ok && json_array_size(rest) > 0) {
        char msg[512];
        if (llm_content_check(rest, role, msg, sizeof msg))
            ok = an_invalid(why, "invalid_request_error", "messages.%zu.%s", i, msg);
    }
    json_decref(rest);
    return ok;
}

/* Canonical tools (llm/content.h) from Anthropic's; false with *why. */
static bool map_tools(const json_t *tools, json_t *opt, api_an_invalid *why)
{
    if (!json_is_array(tools))
        return an_invalid(why, "invalid_request_error", "tools: Input should be a valid list");
    json_t *out = json_array();
    json_object_set_new(opt, "tools", out);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        if (!json_is_object(t))
            return an_invalid(why, "invalid_request_error", "tools.%zu: Input should be an object", i);
        const char *type = json_string_value(json_object_get(t, "type"));
        if (type && strcmp(type, "custom") != 0)
            return an_invalid(why, "unsupported_parameter",
                              "tools.%zu: tool type \"%.64s\" (a server tool) is not supported by chatd: declare a "
                              "custom tool {name, description, input_schema}",
                              i, type);
        json_t *o = json_object();
        json_array_append_new(out, o);
        const char *key;
        json_t *v;
        json_object_foreach(t, key, v)
        {
            if (strcmp(key, "name") == 0 && json_is_string(v))
                json_object_set(o, key, v);
            else if (strcmp(key, "description") == 0 && json_is_string(v))
                json_object_set(o, key, v);
            else if (strcmp(key, "input_schema") == 0 && json_is_object(v))
                json_object_set(o, key, v);
            else if (strcmp(key, "strict") == 0 && json_is_boolean(v))
                json_object_set(o, key, v);
            else if (strcmp(key, "cache_control") == 0 && json_is_object(v))
                json_object_set(o, key, v);
            else if (strcmp(key, "cache_control") == 0 || strcmp(key, "type") == 0 || json_is_null(v) ||
                     strcmp(key, "eager_input_streaming") == 0 || strcmp(key, "allowed_callers") == 0 ||
                     (strcmp(key, "defer_loading") == 0 && json_is_false(v)))
                continue; /* how a tool is streamed or called server-side: not the answer */
            else if (strcmp(key, "name") == 0 || strcmp(key, "description") == 0 || strcmp(key, "input_schema") == 0 ||
                     strcmp(key, "strict") == 0)
                return an_invalid(why, "invalid_request_error", "tools.%zu.%s: wrong type", i, key);
            else
                return an_invalid(why, "unsupported_parameter", "tools.%zu.%.64s: not supported by chatd", i, key);
        }
        if (!json_object_get(o, "name"))
            return an_invalid(why, "invalid_request_error", "tools.%zu.name: Field required", i);
        if (!json_object_get(o, "input_schema"))
            return an_invalid(why, "invalid_request_error", "tools.%zu.input_schema: Field required", i);
    }
    return true;
}

static bool map_tool_choice(const json_t *tc, json_t *opt, api_an_invalid *why)
{
    const char *type = json_string_value(json_object_get(tc, "type"));
    if (!json_is_object(tc) || !type)
        return an_invalid(why, "invalid_request_error", "tool_choice.type: Field required");
    if (strcmp(type, "auto") != 0 && strcmp(type, "any") != 0 && strcmp(type, "none") != 0 && strcmp(type, "tool") != 0)
        return an_invalid(why, "invalid_request_error",
                          "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'");
    json_t *name = json_object_get(tc, "name");
    if (strcmp(type, "tool") == 0 && !json_is_string(name))
        return an_invalid(why, "invalid_request_error", "tool_choice.name: Field required");
    json_t *o = json_pack("{s:s}", "type", type);
    if (strcmp(type, "tool") == 0)
        json_object_set(o, "name", name);
    json_object_set_new(opt, "tool_choice", o);
    json_t *dp = json_object_get(tc, "disable_parallel_tool_use");
    if (present(dp) && !json_is_boolean(dp))
        return an_invalid(why, "invalid_request_error",
                          "tool_choice.disable_parallel_tool_use: Input should be a "
                          "valid boolean");
    if (json_is_true(dp))
        json_object_set_new(opt, "parallel_tool_calls", json_false());
    return true;
}

static bool map_thinking(const json_t *th, json_t *opt, api_an_invalid *why)
{
    const char *type = json_string_value(json_object_get(th, "type"));
    if (!json_is_object(th) || !type)
        return an_invalid(why, "invalid_request_error", "thinking.type: Field required");
    if (present(json_object_get(th, "display")))
        return an_invalid(why, "unsupported_parameter", "thinking.display: not supported by chatd");
    if (strcmp(type, "disabled") == 0) {
        json_object_set_new(opt, "thinking", json_pack("{s:s}", "type", "disabled"));
        return true;
    }
    if (strcmp(type, "enabled") != 0)
        return an_invalid(why, "unsupported_parameter",
                          "thinking.type \"%.32s\" is not supported by chatd (use \"enabled\" with budget_tokens, or "
                          "\"disabled\")",
                          type);
    json_t *budget = json_object_get(th, "budget_tokens");
    if (!json_is_integer(budget) || json_integer_value(budget) < 1)
        return an_invalid(why, "invalid_request_error", "thinking.budget_tokens: Input should be a positive integer");
    json_object_set_new(opt, "thinking", json_pack("{s:s,s:O}", "type", "enabled", "budget_tokens", budget));
    return true;
}

static bool map_output_config(const json_t *oc, json_t *opt, api_an_invalid *why)
{
    if (!json_is_object(oc))
        return an_invalid(why, "invalid_request_error", "output_config: Input should be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)oc, key, v)
    {
        if (json_is_null(v))
            continue;
        if (strcmp(key, "format") == 0) {
            const char *type = json_string_value(json_object_get(v, "type"));
            json_t *schema = json_object_get(v, "schema");
            if (!type || strcmp(type, "json_schema") != 0 || !json_is_object(schema))
                return an_invalid(why, "invalid_request_error",
                                  "output_config.format: Input should be {type: json_schema, schema: {...}}");
            json_object_set_new(opt, "response_format",
                                json_pack("{s:s,s:s,s:O}", "type", "json_schema", "name", "output", "schema", schema));
        } else if (strcmp(key, "effort") == 0) {
            const char *e = json_string_value(v);
            if (!e || (strcmp(e, "low") != 0 && strcmp(e, "medium") != 0 && strcmp(e, "high") != 0))
                return an_invalid(why, "unsupported_parameter",
                                  "output_config.effort: chatd maps low, medium and high (to reasoning_effort)");
            json_object_set(opt, "reasoning_effort", v);
        } else {
            return an_invalid(why, "unsupported_parameter", "output_config.%.64s: not supported by chatd", key);
        }
    }
    return true;
}

/* metadata: user_id -> the "user" option; session_id -> chatd's memory. */
static bool map_metadata(const json_t *md, json_t *opt, const char **session, api_an_invalid *why)
{
    if (!json_is_object(md))
        return an_invalid(why, "invalid_request_error", "metadata: Input should be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)md, key, v)
    {
        if (json_is_null(v))
            continue;
        if (strcmp(key, "user_id") == 0 && json_is_string(v))
            json_object_set(opt, "user", v);
        else if (strcmp(key, "session_id") == 0 && json_is_string(v))
            *session = json_string_value(v);
        else if (strcmp(key, "user_id") == 0 || strcmp(key, "session_id") == 0)
            return an_invalid(why, "invalid_request_error", "metadata.%s: Input should be a valid string", key);
        else
            return an_invalid(why, "invalid_request_error", "metadata.%.64s: Extra inputs are not permitted", key);
    }
    return true;
}

/* Sampling: temperature, top_p (numbers), top_k (an integer); refused as
 * extra inputs with anthropic-version 2026-10-21 (docs/PROTOCOLS.md A2). */
static bool map_sampling(const char *key, json_t *v, bool v2026, json_t *opt, api_an_invalid *why)
{
    if (v2026)
        return an_invalid(why, "invalid_request_error", "%s: Extra inputs are not permitted", key);
    bool integer = strcmp(key, "top_k") == 0;
    if (integer ? !json_is_integer(v) : !json_is_number(v))
        return an_invalid(why, "invalid_request_error", "%s: Input should be a valid %s", key,
                          integer ? "integer" : "number");
    json_object_set(opt, key, v);
    return true;
}

/* The top-level fields other than model, max_tokens, messages, system and
 * stream: into canonical options, ignored, or refused. */
static bool map_field(const char *key, json_t *v, bool v2026, json_t *opt, const char **session, api_an_invalid *why)
{
    if (strcmp(key, "temperature") == 0 || strcmp(key, "top_p") == 0 || strcmp(key, "top_k") == 0)
        return !present(v) && !v2026 ? true : map_sampling(key, v, v2026, opt, why);
    if (!present(v))
        return true;
    if (strcmp(key, "stop_sequences") == 0) {
        if (!json_is_array(v))
            return an_invalid(why, "invalid_request_error", "stop_sequences: Input should be a valid list");
        size_t i;
        json_t *s;
        json_array_foreach(v, i, s)
        {
            if (!json_is_string(s) || json_string_length(s) == 0)
                return an_invalid(why, "invalid_request_error",
                                  "stop_sequences.%zu: Input should be a non-empty string", i);
        }
        if (json_array_size(v) > 0)
            json_object_set(opt, "stop", v);
        return true;
    }
    if (strcmp(key, "metadata") == 0)
        return map_metadata(v, opt, session, why);
    if (strcmp(key, "tools") == 0)
        return map_tools(v, opt, why);
    if (strcmp(key, "tool_choice") == 0)
        return map_tool_choice(v, opt, why);
    if (strcmp(key, "thinking") == 0)
        return map_thinking(v, opt, why);
    if (strcmp(key, "output_config") == 0)
        return map_output_config(v, opt, why);
    /* Not the answer: how it is billed, routed, cached or reported. */
    static const char *const ignored[] = { "cache_control", "service_tier", "speed",          "inference_geo",
                                           "diagnostics",   "workspace_id", "user_profile_id" };
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        if (strcmp(key, ignored[i]) == 0)
            return true;
    static const char *const refused[] = { "container", "context_management", "mcp_servers" };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (strcmp(key, refused[i]) == 0)
            return an_invalid(why, "unsupported_parameter", "%s: not supported by chatd", key);
    return an_invalid(why, "invalid_request_error", "%.64s: Extra inputs are not permitted", key);
}

bool api_an_request_parse(const char *body, size_t len, const char *version, const char *session_header,
                          size_t max_message_bytes, bool counting, api_an_request *q, api_an_invalid *why)
{
    json_error_t jerr;
    memset(q, 0, sizeof *q);
    memset(why, 0, sizeof *why);
    bool v2026 = version && strcmp(version, API_AN_VERSION_2026) == 0;
    json_t *root = chat_json_loadb(body ? body : "", len, 0, &jerr);
    bool ok = false;
    const char *session = NULL;
    json_t *opt = json_object();
    chat_buf_init(&q->system, max_message_bytes);
    q->root = root;

    if (!root || !json_is_object(root)) {
        an_invalid(why, "invalid_request_error", "the body must be a JSON object: %s",
                   root ? "not an object" : jerr.text);
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    json_t *msgs = json_object_get(root, "messages");
    json_t *mt = json_object_get(root, "max_tokens");
    json_t *stream = json_object_get(root, "stream");
    json_t *system = json_object_get(root, "system");
    if (!json_is_string(model) || json_string_length(model) == 0) {
        an_invalid(why, "invalid_request_error", "model: Field required (a name from GET /v1/models)");
        goto out;
    }
    if (!counting && !present(mt)) {
        an_invalid(why, "invalid_request_error", "max_tokens: Field required");
        goto out;
    }
    if (!counting && (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 1000000)) {
        an_invalid(why, "invalid_request_error", "max_tokens: Input should be an integer in 1..1000000");
        goto out;
    }
    if (!counting && present(stream) && !json_is_boolean(stream)) {
        an_invalid(why, "invalid_request_error", "stream: Input should be a valid boolean");
        goto out;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0 || json_array_size(msgs) > API_AN_MAX_MESSAGES) {
        an_invalid(why, "invalid_request_error", "messages: Input should be a non-empty list (at most %d)",
                   API_AN_MAX_MESSAGES);
        goto out;
    }
    if (present(system) && !add_system(q, system, "system", why))
        goto out;

    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "model") == 0 || strcmp(key, "messages") == 0 || strcmp(key, "max_tokens") == 0 ||
            strcmp(key, "stream") == 0 || strcmp(key, "system") == 0)
            continue;
        if (!map_field(key, v, v2026, opt, &session, why))
            goto out;
    }

    size_t count = json_array_size(msgs), nhist = 0;
    q->texts = chat_xcalloc(count, sizeof *q->texts);
    q->hist = chat_xcalloc(count, sizeof *q->hist);
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (!json_is_object(m) || !role) {
            an_invalid(why, "invalid_request_error", "messages.%zu.role: Field required", i);
            goto out;
        }
        if (strcmp(role, "system") == 0) {
            /* SDKs type a system-role message; it can only lead. */
            char where[48];
            snprintf(where, sizeof where, "messages.%zu.content", i);
            if (nhist > 0) {
                an_invalid(why, "invalid_request_error",
                           "messages.%zu: a system message may only come before the conversation (or use the "
                           "top-level system parameter)",
                           i);
                goto out;
            }
            if (!add_system(q, content, where, why))
                goto out;
            continue;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) {
            an_invalid(why, "invalid_request_error", "messages.%zu.role: Input should be 'user' or 'assistant'", i);
            goto out;
        }
        char *text;
        const json_t *blocks = NULL;
        if (json_is_string(content)) {
            if (json_string_length(content) == 0) {
                an_invalid(why, "invalid_request_error", "messages.%zu.content: must not be empty", i);
                goto out;
            }
            text = chat_xstrdup(json_string_value(content));
        } else if (json_is_array(content)) {
            if (!check_blocks(q, v2026, i, role, content, why))
                goto out;
            blocks = content;
            text = llm_content_text(content);
        } else {
            an_invalid(why, "invalid_request_error",
                       "messages.%zu.content: Input should be a valid string or a list of content blocks", i);
            goto out;
        }
        q->texts[q->n_texts++] = text;
        q->hist[nhist++] = (llm_message){ .role = role, .content = text, .blocks = blocks };
    }
    if (nhist == 0) {
        an_invalid(why, "invalid_request_error", "messages: at least one user message is required");
        goto out;
    }
    if (!counting && strcmp(q->hist[nhist - 1].role, "user") != 0) {
        an_invalid(why, "unsupported_parameter",
                   "messages: the last message must be a user message (chatd does not continue an assistant prefill)");
        goto out;
    }
    if (!counting && strlen(q->hist[nhist - 1].content) > max_message_bytes) {
        an_invalid(why, "string_above_max_length", "messages.%zu: longer than MAX_MESSAGE_SIZE (%zu bytes)", nhist - 1,
                   max_message_bytes);
        goto out;
    }

    if (session_header)
        session = session_header;
    if (session && !chat_valid_id(session)) {
        an_invalid(why, "invalid_request_error",
                   "invalid session id: use 1 to 128 characters of letters, digits and . _ : -");
        goto out;
    }
    q->n_hist = nhist;
    q->session_id = session;
    q->model = json_string_value(model);
    q->max_tokens = json_is_integer(mt) ? (int)json_integer_value(mt) : 0;
    q->stream = !counting && json_is_true(stream);
    if (json_object_size(opt) > 0) {
        q->options = opt;
        opt = NULL;
    }
    ok = true;
out:
    json_decref(opt);
    if (!ok)
        api_an_request_free(q);
    return ok;
}

void api_an_turn_params(const api_an_request *q, turn_params *p)
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

/* Tokens of a text, as llm_content_tokens counts a text block. */
static int64_t text_tokens(const char *s, size_t len)
{
    json_t *b = json_pack("[{s:s,s:s%}]", "type", "text", "text", s, len);
    int64_t n = b ? llm_content_tokens(b) : (int64_t)(len + 3) / 4;
    json_decref(b);
    return n;
}

int64_t api_an_estimate_tokens(const api_an_request *q)
{
    int64_t n = q->system.len ? text_tokens(chat_buf_str(&q->system), q->system.len) : 0;
    for (size_t i = 0; i < q->n_hist; i++)
        n += q->hist[i].blocks ? llm_content_tokens(q->hist[i].blocks)
                               : text_tokens(q->hist[i].content, strlen(q->hist[i].content));
    json_t *tools = q->options ? json_object_get(q->options, "tools") : NULL;
    if (tools) {
        char *s = chat_json_dumps(tools, JSON_COMPACT, NULL);
        if (s)
            n += text_tokens(s, strlen(s));
        free(s);
    }
    return n;
}

const char *api_an_stop_reason(const char *stop)
{
    static const char *const own[] = {
        "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal", "model_context_window_exceeded"
    };
    if (!stop)
        return "end_turn";
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (strcmp(stop, own[i]) == 0)
            return own[i];
    if (strcmp(stop, "length") == 0)
        return "max_tokens";
    if (strcmp(stop, "tool_calls") == 0 || strcmp(stop, "function_call") == 0)
        return "tool_use";
    if (strcmp(stop, "content_filter") == 0)
        return "refusal";
    return "end_turn";
}

/* ---- replies ---- */

static json_t *usage_json(const store_usage *u)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "input_tokens", (json_int_t)(u->input_tokens > 0 ? u->input_tokens : 0),
                     "output_tokens", (json_int_t)(u->output_tokens > 0 ? u->output_tokens : 0),
                     "cache_creation_input_tokens", (json_int_t)(u->cache_write_tokens > 0 ? u->cache_write_tokens : 0),
                     "cache_read_input_tokens", (json_int_t)(u->cache_read_tokens > 0 ? u->cache_read_tokens : 0));
}

/* The reply's content: the turn's canonical blocks, or one text block. */
static json_t *content_json(const turn_result *res)
{
    if (res->content)
        return json_deep_copy(res->content);
    json_t *a = json_array();
    if (res->text_len) {
        json_t *b = json_pack("{s:s,s:s%}", "type", "text", "text", res->text, res->text_len);
        if (b)
            json_array_append_new(a, b);
    }
    return a;
}

static void an_json_done(chat_ctx *c, const turn_result *res)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:s?,s:n,s:o}", "id", c->completion_id, "type", "message", "role",
                          "assistant", "model", res->model ? res->model : "", "content", content_json(res),
                          "stop_reason", api_an_stop_reason(res->stop_reason), "stop_sequence", res->stop_sequence,
                          "stop_details", "usage", usage_json(&res->usage));
    if (o && res->session_id && *res->session_id)
        json_object_set_new(o, "session_id", json_string(res->session_id));
    http_reply_json(c->r, 200, o);
}

/* The Anthropic error object of err (docs/PROTOCOLS.md A7). */
static json_t *error_json(const turn_error *err)
{
    return json_pack("{s:s,s:{s:s,s:o,s:{s:s?}}}", "type", "error", "error", "type", api_anthropic_type_of(err->status),
                     "message", chat_json_text(err->message), "details", "error_code", err->type);
}

/* The stream's block state (chat_ctx.rnd_state, freed with the context). */
enum { OPEN_NONE = 0, OPEN_TEXT, OPEN_THINKING, OPEN_TOOL };

typedef struct an_stream {
    int count;     /* blocks started */
    int open;      /* the kind of the open block (OPEN_*) */
    int pindex;    /* the provider's index of the open block, -1 = none */
    bool sig_sent; /* a thinking signature was sent in the stream */
} an_stream;

static an_stream *st(chat_ctx *c)
{
    if (!c->rnd_state) {
        an_stream *s = chat_xcalloc(1, sizeof *s);
        s->pindex = -1;
        c->rnd_state = s;
        c->rnd_state_free = free;
    }
    return c->rnd_state;
}
static int st_count(chat_ctx *c)
{
    return st(c)->count;
}
static int st_open(chat_ctx *c)
{
    return st(c)->open;
}
static int st_pindex(chat_ctx *c)
{
    return st(c)->pindex;
}
static void st_set(chat_ctx *c, int count, int open, int pindex)
{
    an_stream *s = st(c);
    s->count = count;
    s->open = open;
    s->pindex = pindex;
}

/* One SSE event: `event: <type>` and its JSON (stolen). True when the client is full. */
static bool send_event(chat_ctx *c, json_t *o)
{
    if (!o)
        return false; /* json_pack refused text that is not UTF-8: nothing to send */
    const char *type = json_string_value(json_object_get(o, "type"));
    chat_json_writer *w = chat_event_open(type ? type : "error");
    chat_json_val(w, NULL, o);
    json_decref(o);
    return chat_event_send(c, w);
}

/* Starts the stream (headers, message_start), once. */
static void an_stream_begin(chat_ctx *c)
{
    if (c->started)
        return;
    if (c->start_timer) {
        event_free(c->start_timer);
        c->start_timer = NULL;
    }
    chat_start_sse(c);
    json_t *usage = json_pack("{s:i,s:i,s:n,s:n}", "input_tokens", 0, "output_tokens", 0, "cache_creation_input_tokens",
                              "cache_read_input_tokens");
    send_event(c, json_pack("{s:s,s:{s:s,s:s,s:s,s:s,s:[],s:n,s:n,s:n,s:o}}", "type", "message_start", "message", "id",
                            c->completion_id, "type", "message", "role", "assistant", "model", c->model ? c->model : "",
                            "content", "stop_reason", "stop_sequence", "stop_details", "usage", usage));
}

static void on_start_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    an_stream_begin(arg);
}

static void an_sse_start(chat_ctx *c, const turn_info *info)
{
    free(c->model);
    c->model = chat_xstrdup(info->model);
    if (c->started || c->start_timer)
        return;
    int64_t ms = c->w->cfg->heartbeat_ms;
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    c->start_timer = evtimer_new(c->w->base, on_start_timer, c);
    evtimer_add(c->start_timer, &tv);
}

static bool close_block(chat_ctx *c)
{
    if (st_open(c) == OPEN_NONE)
        return false;
    bool full = send_event(c, json_pack("{s:s,s:i}", "type", "content_block_stop", "index", st_count(c) - 1));
    st_set(c, st_count(c), OPEN_NONE, -1);
    return full;
}

/* Opens a new block (closing the open one) with content_block_start. */
static bool open_block(chat_ctx *c, int kind, int pindex, json_t *block)
{
    bool full = close_block(c);
    int index = st_count(c);
    st_set(c, index + 1, kind, pindex);
    full |= send_event(
        c, json_pack("{s:s,s:i,s:o}", "type", "content_block_start", "index", index, "content_block", block));
    return full;
}

/* Makes sure a block of kind is open for a piece of the provider's block
 * pindex (-1: text from the text-only path, which continues any text block). */
static bool want_block(chat_ctx *c, int kind, int pindex)
{
    if (st_open(c) == kind && (pindex < 0 || st_pindex(c) == pindex || st_pindex(c) < 0))
        return false;
    if (kind == OPEN_TEXT)
        return open_block(c, kind, pindex, json_pack("{s:s,s:s}", "type", "text", "text", ""));
    return open_block(c, kind, pindex, json_pack("{s:s,s:s,s:s}", "type", "thinking", "thinking", "", "signature", ""));
}

/* A content_block_delta of the open block: {"type": type, key: text}, the
 * text_delta, thinking_delta, input_json_delta and signature_delta pieces,
 * written without a tree (one per streamed piece). */
static bool send_delta(chat_ctx *c, const char *type, const char *key, const char *text, size_t len)
{
    chat_json_writer *w = chat_event_open("content_block_delta");
    chat_json_obj(w, NULL);
    chat_json_str(w, "type", "content_block_delta");
    chat_json_int(w, "index", st_count(c) - 1);
    chat_json_obj(w, "delta");
    chat_json_str(w, "type", type);
    chat_json_strn(w, key, text, len);
    chat_json_close(w);
    chat_json_close(w);
    return chat_event_send(c, w);
}

static bool an_sse_delta(chat_ctx *c, const char *text, size_t len)
{
    an_stream_begin(c);
    bool full = want_block(c, OPEN_TEXT, -1);
    if (len)
        full |= send_delta(c, "text_delta", "text", text, len);
    return full;
}

static bool an_sse_event(chat_ctx *c, const llm_event *ev)
{
    an_stream_begin(c);
    bool full = false;
    switch (ev->kind) {
    case LLM_EV_TEXT:
        full = want_block(c, OPEN_TEXT, ev->index);
        if (ev->len)
            full |= send_delta(c, "text_delta", "text", ev->data, ev->len);
        break;
    case LLM_EV_THINKING:
        full = want_block(c, OPEN_THINKING, ev->index);
        if (ev->len)
            full |= send_delta(c, "thinking_delta", "thinking", ev->data, ev->len);
        break;
    case LLM_EV_TOOL_START:
        full = open_block(c, OPEN_TOOL, ev->index,
                          json_pack("{s:s,s:s,s:s,s:{}}", "type", "tool_use", "id", ev->id ? ev->id : "", "name",
                                    ev->name ? ev->name : "", "input"));
        break;
    case LLM_EV_TOOL_ARGS:
        if (st_open(c) == OPEN_TOOL && ev->len)
            full = send_delta(c, "input_json_delta", "partial_json", ev->data, ev->len);
        break;
    case LLM_EV_BLOCK_STOP:
        if (ev->name && strcmp(ev->name, "redacted_thinking") == 0) {
            /* It arrives whole, with its data, and no other event. */
            full = open_block(c, OPEN_THINKING, ev->index,
                              json_pack("{s:s,s:s%}", "type", "redacted_thinking", "data", ev->data ? ev->data : "",
                                        ev->data ? ev->len : 0));
            full |= close_block(c);
            break;
        }
        if (st_pindex(c) != ev->index && st_pindex(c) >= 0)
            break;
        if (st_open(c) == OPEN_THINKING && ev->data && ev->len) {
            /* The signature completes a thinking block: just before its stop, as Anthropic streams it. */
            full = send_delta(c, "signature_delta", "signature", ev->data, ev->len);
            st(c)->sig_sent = true;
        }
        full |= close_block(c);
        break;
    }
    return full;
}

static void an_sse_done(chat_ctx *c, const turn_result *res)
{
    an_stream_begin(c);
    close_block(c);
    /* A replay's events carry no thinking signature (a provider's do, at
     * the block's stop): the stored content has it. Sent before
     * message_delta, so that the SDK's accumulated message can be sent back
     * with its thinking blocks intact. */
    size_t i;
    json_t *b;
    json_array_foreach(st(c)->sig_sent ? NULL : res->content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        const char *sig = json_string_value(json_object_get(b, "signature"));
        if (type && strcmp(type, "thinking") == 0 && sig && *sig && (int)i < st_count(c))
            send_event(c, json_pack("{s:s,s:i,s:{s:s,s:s}}", "type", "content_block_delta", "index", (int)i, "delta",
                                    "type", "signature_delta", "signature", sig));
    }
    send_event(c, json_pack("{s:s,s:{s:s,s:s?,s:n},s:o}", "type", "message_delta", "delta", "stop_reason",
                            api_an_stop_reason(res->stop_reason), "stop_sequence", res->stop_sequence, "stop_details",
                            "usage", usage_json(&res->usage)));
    send_event(c, json_pack("{s:s}", "type", "message_stop"));
    http_stream_end(c->r);
}

static void an_error_render(chat_ctx *c, const turn_error *err)
{
    if (c->started) {
        /* After the 200: in-band, then the end (no message_stop: A6). */
        send_event(c, error_json(err));
        http_stream_end(c->r);
        return;
    }
    chat_error_reply(c, err);
}

static const chat_renderer an_json = { .stream = false, .done = an_json_done, .error = an_error_render };

static const chat_renderer an_sse = {
    .stream = true,
    .start = an_sse_start,
    .delta = an_sse_delta,
    .done = an_sse_done,
    .error = an_error_render,
    .event = an_sse_event,
    .ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n", /* Anthropic's keep-alive event (A6) */
};

/* ---- handlers ---- */

static void init_ctx(chat_ctx *c, void *arg)
{
    (void)arg;
    snprintf(c->completion_id, sizeof c->completion_id, "msg_%s", http_req_id(c->r));
}

/* The request's anthropic-version, or NULL after answering 400. */
static const char *check_version(http_req *r)
{
    const char *v = http_req_header(r, "anthropic-version");
    if (!v) {
        api_error(r, API_ANTHROPIC, 400, "invalid_request_error",
                  "anthropic-version: header is required (" API_AN_VERSION_2023 " or " API_AN_VERSION_2026 ")");
        return NULL;
    }
    if (strcmp(v, API_AN_VERSION_2023) != 0 && strcmp(v, API_AN_VERSION_2026) != 0) {
        api_error(r, API_ANTHROPIC, 400, "invalid_request_error",
                  "anthropic-version: \"%.64s\" is not a version chatd serves (" API_AN_VERSION_2023
                  " or " API_AN_VERSION_2026 ")",
                  v);
        return NULL;
    }
    return v;
}

/* Parses the body; the model it names, or NULL after answering. */
static const chat_model *parse(http_req *r, api_env *w, bool counting, api_an_request *q)
{
    const char *version = check_version(r);
    if (!version)
        return NULL;
    size_t len;
    const char *body = http_req_body(r, &len);
    api_an_invalid why;
    if (!api_an_request_parse(body, len, version, http_req_header(r, "X-Session-Id"), w->cfg->max_message_bytes,
                              counting, q, &why)) {
        api_error(r, API_ANTHROPIC, why.status, why.type, "%s", why.message);
        return NULL;
    }
    const chat_model *m = models_find(w->models, q->model);
    if (!m) {
        /* Anthropic answers an unknown model with 404 (docs/PROTOCOLS.md A7). */
        api_error(r, API_ANTHROPIC, 404, "not_found_error",
                  "model: %s (GET /v1/models lists the models this server offers)", q->model);
        api_an_request_free(q);
        return NULL;
    }
    if (q->has_document && m->provider.kind != LLM_PROVIDER_ANTHROPIC) {
        api_error(r, API_ANTHROPIC, 400, "unsupported_parameter",
                  "document blocks are supported on Anthropic models only: model %s is served by an "
                  "OpenAI-compatible provider",
                  m->name);
        api_an_request_free(q);
        return NULL;
    }
    return m;
}

/* A request between its validation and its turn (the Idempotency-Key look-up
 * may wait on the store). */
typedef struct an_job {
    http_req *r;
    api_env *w;
    api_an_request q;
} an_job;

static void run_turn(void *ud, idem_decision d, store_idem *idem)
{
    an_job *j = ud;
    http_req *r = j->r;
    const chat_renderer *rnd = j->q.stream ? &an_sse : &an_json;
    if (d == IDEM_REPLAY) {
        chat_replay_record(r, j->w, rnd, API_ANTHROPIC, idem, init_ctx, NULL);
    } else if (d != IDEM_ANSWERED) {
        turn_params p;
        api_an_turn_params(&j->q, &p);
        p.request_id = http_req_id(r);
        p.owner = api_identity(r)->key_id[0] ? api_identity(r)->key_id : NULL;
        p.see_all = api_owner_filter(r) == NULL;
        p.idem_scope = api_identity(r)->key_id;
        p.idem_key = d == IDEM_RUN ? http_req_header(r, "Idempotency-Key") : NULL;
        chat_run(r, j->w, rnd, API_ANTHROPIC, &p, init_ctx, NULL);
    }
    api_an_request_free(&j->q);
    http_req_release(r);
    free(j);
}

void api_anthropic_messages(http_req *r, api_env *w, char **params)
{
    (void)params;
    an_job *j = chat_xcalloc(1, sizeof *j);
    if (!parse(r, w, false, &j->q)) {
        free(j);
        return;
    }
    j->r = r;
    j->w = w;
    http_req_hold(r);
    if (j->q.session_id)
        api_idempotency_begin(r, w, API_ANTHROPIC, api_identity(r)->key_id, j->q.session_id, run_turn, j);
    else
        run_turn(j, IDEM_NONE, NULL);
}

/* count_tokens forwarded to an Anthropic model's provider. */
typedef struct count_job {
    http_req *r;
    llm_count *call;
} count_job;

static void count_gone(void *ud)
{
    count_job *j = ud;
    llm_count_cancel(j->call);
    http_req_release(j->r);
    free(j);
}

static void count_done(void *ud, const llm_count_result *res)
{
    count_job *j = ud;
    http_req *r = j->r;
    http_req_on_close(r, NULL, NULL);
    if (res->input_tokens >= 0) {
        http_add_header(r, "X-Chatd-Token-Count", "provider");
        http_reply_json(r, 200, json_pack("{s:I}", "input_tokens", (json_int_t)res->input_tokens));
    } else if (res->http_status == 400 || res->http_status == 404 || res->http_status == 413 ||
               res->http_status == 429) {
        /* The request's own fault (or the provider's rate limit): passed on. */
        api_error(r, API_ANTHROPIC, res->http_status, res->error_type ? res->error_type : "provider_error", "%s",
                  res->error_message);
    } else {
        api_error(r, API_ANTHROPIC, res->timed_out ? 504 : 502, res->timed_out ? "provider_timeout" : "provider_error",
                  "%s", res->error_message);
    }
    http_req_release(r);
    free(j);
}

/* The count_tokens body for the provider: the conversation as parsed (a
 * leading system-role message joined to system), the client's tools,
 * tool_choice and thinking, and the model's provider id. */
static char *count_body(const api_an_request *q, const chat_model *m)
{
    json_t *msgs = json_array();
    for (size_t i = 0; i < q->n_hist; i++) {
        json_t *content =
            q->hist[i].blocks ? json_incref((json_t *)q->hist[i].blocks) : json_string(q->hist[i].content);
        json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", q->hist[i].role, "content", content));
    }
    json_t *o = json_pack("{s:s,s:o}", "model", m->model_id, "messages", msgs);
    if (q->system.len)
        json_object_set_new(o, "system", json_string(chat_buf_str(&q->system)));
    static const char *const keep[] = { "tools", "tool_choice", "thinking" };
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        json_t *v = json_object_get(q->root, keep[i]);
        if (v && !json_is_null(v))
            json_object_set(o, keep[i], v);
    }
    char *s = chat_json_dumps(o, JSON_COMPACT, NULL);
    json_decref(o);
    return s;
}

void api_anthropic_count_tokens(http_req *r, api_env *w, char **params)
{
    (void)params;
    api_an_request q;
    const chat_model *m = parse(r, w, true, &q);
    if (!m)
        return;
    if (m->provider.kind != LLM_PROVIDER_ANTHROPIC) {
        /* No such endpoint on OpenAI-compatible servers: chatd's estimate. */
        http_add_header(r, "X-Chatd-Token-Count", "estimate");
        http_reply_json(r, 200, json_pack("{s:I}", "input_tokens", (json_int_t)api_an_estimate_tokens(&q)));
        api_an_request_free(&q);
        return;
    }
    if (!m->available) {
        api_error(r, API_ANTHROPIC, 503, "provider_not_configured",
                  "model %s needs a provider API key: set %s and restart chatd", m->name, m->missing);
        api_an_request_free(&q);
        return;
    }
    char *body = count_body(&q, m);
    api_an_request_free(&q);
    count_job *j = chat_xcalloc(1, sizeof *j);
    j->r = r;
    if (!body || llm_count_start(w->base, &m->provider, body, count_done, j, &j->call) != CHAT_OK) {
        free(j);
        api_error(r, API_ANTHROPIC, 500, "internal_error", "count_tokens could not be sent to the provider");
    } else {
        http_req_hold(r);
        http_req_on_close(r, count_gone, j);
    }
    free(body);
}
