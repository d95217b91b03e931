/*
 * fuzz_chat_request: the request validators of the chat endpoints
 * (src/api/request.h): the seed's POST /chat and /chat-stream, /v1/chat and
 * /v1/chat/stream (api_chat_body_parse), and /v1/chat/completions
 * (api_oa_request_parse), each with its conversion to a turn.
 *
 * Input: a mode byte, then the body. Mode bits 0-1: seed, /v1, OpenAI
 * without X-Session-Id, OpenAI with one (then the header value comes first,
 * up to a NUL); bit 2: MAX_MESSAGE_SIZE 16 bytes instead of 256 KiB and
 * MAX_IMAGE_SIZE 16 bytes instead of 5 MiB (to reach the limits with short
 * inputs); bit 3: POST /v1/estimate instead (api_estimate_parse: token counts
 * in range, models an array); bit 4: DROP_UNSUPPORTED_PARAMS=on (OpenAI).
 * Oracles (request.h): exactly one of a request and an error; an error is a
 * response chatd can send (a non-empty detail array of pydantic-style items
 * that serialises, a non-empty message; OpenAI's envelope with a type and a
 * code); a request holds what the contract promises (a non-blank message
 * within the limit, a valid session id, max_tokens in range, the last
 * message a user's; for OpenAI every translated message is canonical content
 * that llm_content_check accepts, options an object of known keys, dropped
 * fields only when dropping is on), and the turn built from it carries exactly
 * that.
 */
#include "api/request.h"
#include "core/util.h"
#include "fuzz_util.h"
#include "llm/content.h"

static void check_item(json_t *item)
{
    FUZZ_CHECK(json_is_object(item), "a detail item that is not an object");
    FUZZ_CHECK(json_is_string(json_object_get(item, "type")), "a detail item without type");
    FUZZ_CHECK(json_is_array(json_object_get(item, "loc")), "a detail item without loc");
    FUZZ_CHECK(json_is_string(json_object_get(item, "msg")), "a detail item without msg");
    FUZZ_CHECK(json_object_get(item, "input") != NULL, "a detail item without input");
}

static void fuzz_chat(api_flavor f, const char *body, size_t len, size_t max)
{
    api_chat_body b;
    api_chat_invalid why;
    bool ok = api_chat_body_parse(len ? body : NULL, len, f, max, &b, &why);
    if (!ok) {
        FUZZ_CHECK(b.root == NULL, "refused, yet a body is held");
        FUZZ_CHECK(json_is_array(why.detail) && json_array_size(why.detail) > 0, "refused without detail items");
        size_t i;
        json_t *item;
        json_array_foreach(why.detail, i, item) check_item(item);
        /* What the seed answers: {"detail": [...]} must serialise. */
        json_t *reply = json_pack("{s:O}", "detail", why.detail);
        FUZZ_CHECK(reply != NULL, "the 422 body cannot be built");
        char *text = json_dumps(reply, JSON_COMPACT);
        FUZZ_CHECK(text != NULL, "the 422 body cannot be serialised");
        free(text);
        json_decref(reply);
        FUZZ_CHECK(why.message[0] != '\0', "refused without a /v1 message");
        json_decref(why.detail);
        return;
    }
    FUZZ_CHECK(json_is_object(b.root), "accepted without a JSON object");
    FUZZ_CHECK(b.message && (*b.message || (f == API_V1 && b.blocks)), "accepted without a message");
    FUZZ_CHECK(!b.blocks || json_array_size(b.blocks) > 0, "an empty content accepted");
    FUZZ_CHECK(f == API_V1 || (!b.blocks && !b.options), "/v1 content or options on the seed");
    if (*b.message) {
        size_t mlen = json_string_length(json_object_get(b.root, "message"));
        FUZZ_CHECK(mlen >= 1 && mlen <= max, "a message of %zu bytes accepted (max %zu)", mlen, max);
        FUZZ_CHECK(strspn(b.message, " \t\r\n") < mlen, "a blank message accepted");
    }
    FUZZ_CHECK(b.session_id && chat_valid_id(b.session_id), "an invalid session id accepted");
    if (f == API_SEED)
        FUZZ_CHECK(b.session_id != b.generated_id, "the seed generated a session id");
    FUZZ_CHECK(!b.system_prompt || *b.system_prompt, "an empty system prompt kept");
    FUZZ_CHECK(!b.model || *b.model, "an empty model kept");
    FUZZ_CHECK(b.max_tokens == 0 || (b.max_tokens >= 1 && b.max_tokens <= 1000000), "max_tokens %d", b.max_tokens);
    if (f == API_SEED)
        FUZZ_CHECK(!b.model && b.max_tokens == 0 && b.truncation == TURN_TRUNCATE_AUTO, "/v1 fields on the seed");

    turn_params p;
    memset(&p, 0xAB, sizeof p);
    api_chat_turn_params(&b, &p);
    FUZZ_CHECK(p.session_id == b.session_id && p.message == b.message && p.system_prompt == b.system_prompt &&
                   p.model == b.model && p.max_tokens == b.max_tokens && p.truncation == b.truncation &&
                   p.message_blocks == b.blocks && p.options == b.options,
               "the turn differs from the body");
    FUZZ_CHECK(!p.history && p.n_history == 0 && !p.stream && !p.request_id && !p.owner && !p.see_all &&
                   !p.idem_scope && !p.idem_key,
               "the turn has fields the body did not set");
    api_chat_body_release(&b);
}

/* The option keys of llm/content.h. */
static bool known_option(const char *k)
{
    static const char *const keys[] = { "temperature",
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
                                        "metadata",
                                        "tools",
                                        "tool_choice",
                                        "parallel_tool_calls",
                                        "response_format",
                                        "thinking",
                                        "reasoning_effort" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(keys[i], k) == 0)
            return true;
    return false;
}

static void fuzz_openai(const char *body, size_t len, const char *header, const api_oa_limits *lim)
{
    api_oa_request q;
    api_oa_invalid why;
    size_t max = lim->max_message_bytes;
    bool ok = api_oa_request_parse(len ? body : NULL, len, header, lim, &q, &why);
    if (!ok) {
        FUZZ_CHECK(q.root == NULL && q.texts == NULL && q.hist == NULL && q.blocks == NULL && q.options == NULL,
                   "refused, yet a request is held");
        FUZZ_CHECK((why.status == 400 || why.status == 413) && why.type && why.code,
                   "refused without status, type or code");
        FUZZ_CHECK(why.status != 413 || strcmp(why.code, "request_too_large") == 0, "a 413 that is not an image");
        FUZZ_CHECK(why.message[0] != '\0', "refused without a message");
        /* What chatd answers (openai_compat.c, oa_error). */
        json_t *reply = json_pack("{s:{s:o,s:s,s:s?,s:s?}}", "error", "message", chat_json_text(why.message), "type",
                                  why.type, "param", why.param, "code", why.code);
        FUZZ_CHECK(reply != NULL, "the error envelope cannot be built");
        json_decref(reply);
        return;
    }
    FUZZ_CHECK(json_is_object(q.root), "accepted without a JSON object");
    FUZZ_CHECK(q.n_hist >= 1 && q.n_hist == q.n_texts && q.n_texts <= API_OA_MAX_MESSAGES, "%zu messages, %zu texts",
               q.n_hist, q.n_texts);
    const llm_message *last = &q.hist[q.n_hist - 1];
    FUZZ_CHECK(strcmp(last->role, "user") == 0, "the last message is the %s's", last->role);
    FUZZ_CHECK(last->blocks || *last->content, "the last message is empty");
    FUZZ_CHECK(strlen(last->content) <= max, "the last message is too long");
    for (size_t i = 0; i < q.n_hist; i++) {
        const llm_message *m = &q.hist[i];
        FUZZ_CHECK(strcmp(m->role, "user") == 0 || strcmp(m->role, "assistant") == 0, "role %s", m->role);
        FUZZ_CHECK(m->content != NULL, "a message without text");
        if (m->blocks) {
            char bad[256];
            FUZZ_CHECK(llm_content_check(m->blocks, m->role, bad, sizeof bad) == NULL, "message %zu: %s", i, bad);
            char *text = llm_content_text(m->blocks);
            FUZZ_CHECK(strcmp(text, m->content) == 0, "message %zu: the text is not its blocks' text", i);
            free(text);
        }
    }
    if (q.options) {
        FUZZ_CHECK(json_is_object(q.options) && json_object_size(q.options) > 0, "options not a non-empty object");
        const char *k;
        json_t *v;
        json_object_foreach(q.options, k, v)
        {
            FUZZ_CHECK(known_option(k), "an unknown option \"%s\"", k);
            FUZZ_CHECK(!json_is_null(v), "option %s is null", k);
        }
    }
    FUZZ_CHECK(lim->drop_unsupported || q.dropped[0] == '\0', "fields dropped while dropping is off");
    FUZZ_CHECK(q.system.len <= max, "a system prompt of %zu bytes (max %zu)", q.system.len, max);
    FUZZ_CHECK(!q.session_id || chat_valid_id(q.session_id), "an invalid session id accepted");
    if (header)
        FUZZ_CHECK(q.session_id == header, "X-Session-Id did not win");
    FUZZ_CHECK(q.max_tokens == 0 || (q.max_tokens >= 1 && q.max_tokens <= 1000000), "max_tokens %d", q.max_tokens);
    FUZZ_CHECK(!q.include_usage || q.stream, "include_usage without stream");

    turn_params p;
    memset(&p, 0xAB, sizeof p);
    api_oa_turn_params(&q, &p);
    FUZZ_CHECK(p.message == last->content && p.message_blocks == last->blocks && p.options == q.options &&
                   p.session_id == q.session_id && p.model == q.model && p.max_tokens == q.max_tokens &&
                   p.stream == q.stream,
               "the turn differs from the request");
    if (q.session_id)
        FUZZ_CHECK(p.history == NULL && p.n_history == 0, "history sent with a server-side session");
    else
        FUZZ_CHECK(p.history == q.hist && p.n_history == q.n_hist - 1, "stateless history is not the messages");
    FUZZ_CHECK((p.system_prompt != NULL) == (q.system.len > 0), "system prompt presence differs");
    FUZZ_CHECK(!p.request_id && !p.owner && !p.see_all && !p.idem_scope && !p.idem_key &&
                   p.truncation == TURN_TRUNCATE_AUTO,
               "the turn has fields the request did not set");
    api_oa_request_free(&q);
}

static void fuzz_estimate(const char *body, size_t len)
{
    store_usage u;
    memset(&u, 0xAB, sizeof u);
    json_t *only = (json_t *)&u;
    const char *why = NULL;
    json_t *root = api_estimate_parse(len ? body : NULL, len, &u, &only, &why);
    if (!root) {
        FUZZ_CHECK(why && *why && only == NULL, "refused without a reason");
        return;
    }
    FUZZ_CHECK(json_is_object(root), "accepted without a JSON object");
    const int64_t counts[4] = { u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens };
    for (int i = 0; i < 4; i++)
        FUZZ_CHECK(counts[i] >= 0 && counts[i] <= 1000000000000LL, "count %d is %lld", i, (long long)counts[i]);
    FUZZ_CHECK(only == NULL || (json_is_array(only) && only == json_object_get(root, "models")), "models filter");
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    uint8_t mode = fuzz_byte(&in);
    size_t max = (mode & 4) ? 16 : 256 * 1024;
    /* An exact-size copy, not NUL-terminated: the parsers take a length. */
    char *body = malloc(in.n ? in.n : 1);
    FUZZ_CHECK(body != NULL, "out of memory");
    if (in.n)
        memcpy(body, in.p, in.n);
    if (mode & 8) {
        fuzz_estimate(body, in.n);
        free(body);
        return 0;
    }
    api_oa_limits lim = { .max_message_bytes = max,
                          .max_image_bytes = (mode & 4) ? 16 : (size_t)5 << 20,
                          .drop_unsupported = (mode & 16) != 0 };
    switch (mode & 3) {
    case 0: fuzz_chat(API_SEED, body, in.n, max); break;
    case 1: fuzz_chat(API_V1, body, in.n, max); break;
    case 2: fuzz_openai(body, in.n, NULL, &lim); break;
    default: {
        const char *nul = memchr(body, '\0', in.n);
        char *header = fuzz_strndup(in.p, nul ? (size_t)(nul - body) : in.n);
        size_t skip = nul ? (size_t)(nul - body) + 1 : in.n;
        fuzz_openai(body + skip, in.n - skip, header, &lim);
        free(header);
        break;
    }
    }
    free(body);
    return 0;
}
