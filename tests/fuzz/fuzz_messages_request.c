/*
 * fuzz_messages_request: the body of POST /v1/messages and
 * /v1/messages/count_tokens (api_an_request_parse, src/api/anthropic_api.c)
 * and the turn it asks for.
 *
 * Input: a flags byte (bit 0: anthropic-version 2026-10-21, else 2023-06-01;
 * bit 1: a count_tokens body; bit 2: an X-Session-Id header "s-1"), then the
 * body. Oracles (api/anthropic_api.h): a refusal is a 400 with a type and a
 * one-line message that can be encoded in JSON; a success has at least one
 * message, every one "user" or "assistant" with its text, a Messages body
 * ends with a user message whose text is within MAX_MESSAGE_SIZE and has
 * max_tokens in 1..1000000, the options are NULL or a non-empty object, a
 * session id is valid, the turn's message is the last message and a
 * stateless turn's history is every message before it; the estimate is not
 * negative.
 */
#include <jansson.h>
#include <string.h>

#include "api/anthropic_api.h"
#include "core/util.h"
#include "fuzz_util.h"

#define MAX_MESSAGE 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    uint8_t flags = fuzz_byte(&in);
    const char *version = (flags & 1) ? API_AN_VERSION_2026 : API_AN_VERSION_2023;
    bool counting = (flags & 2) != 0;
    const char *header = (flags & 4) ? "s-1" : NULL;
    api_an_request q;
    api_an_invalid why;
    bool ok = api_an_request_parse((const char *)in.p, in.n, version, header, MAX_MESSAGE, counting, &q, &why);
    if (!ok) {
        FUZZ_CHECK(q.root == NULL && q.hist == NULL && q.options == NULL, "a refusal keeps a parsed request");
        FUZZ_CHECK(why.status == 400 && why.type && why.message[0], "refusal %d %s", why.status,
                   why.type ? why.type : "(null)");
        FUZZ_CHECK(strchr(why.message, '\n') == NULL, "a message of more than one line");
        json_t *t = chat_json_text(why.message);
        FUZZ_CHECK(t != NULL, "a message that cannot be encoded");
        json_decref(t);
        return 0;
    }
    FUZZ_CHECK(q.n_hist >= 1 && q.model && *q.model, "no message or no model");
    for (size_t i = 0; i < q.n_hist; i++) {
        const char *role = q.hist[i].role;
        FUZZ_CHECK(strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0, "role %s", role);
        FUZZ_CHECK(q.hist[i].content != NULL, "message %zu without text", i);
        FUZZ_CHECK(!q.hist[i].blocks || json_is_array(q.hist[i].blocks), "message %zu blocks", i);
    }
    if (!counting) {
        FUZZ_CHECK(strcmp(q.hist[q.n_hist - 1].role, "user") == 0, "a Messages body not ending with a user message");
        FUZZ_CHECK(strlen(q.hist[q.n_hist - 1].content) <= MAX_MESSAGE, "a new message over MAX_MESSAGE_SIZE");
        FUZZ_CHECK(q.max_tokens >= 1 && q.max_tokens <= 1000000, "max_tokens %d", q.max_tokens);
    } else {
        FUZZ_CHECK(!q.stream, "a count_tokens body that streams");
    }
    FUZZ_CHECK(!q.options || (json_is_object(q.options) && json_object_size(q.options) > 0), "empty options");
    FUZZ_CHECK(!q.session_id || chat_valid_id(q.session_id), "invalid session id");
    if (header)
        FUZZ_CHECK(q.session_id && strcmp(q.session_id, header) == 0, "the header does not win");
    FUZZ_CHECK(q.system.len <= MAX_MESSAGE, "a system prompt over MAX_MESSAGE_SIZE");

    turn_params p;
    api_an_turn_params(&q, &p);
    FUZZ_CHECK(p.message == q.hist[q.n_hist - 1].content, "the turn is not the last message");
    FUZZ_CHECK(p.message_blocks == q.hist[q.n_hist - 1].blocks, "the turn's blocks are not the last message's");
    if (q.session_id)
        FUZZ_CHECK(p.n_history == 0 && p.history == NULL, "a session turn with a history");
    else
        FUZZ_CHECK(p.n_history == q.n_hist - 1 && p.history == q.hist, "a stateless history");
    FUZZ_CHECK(p.options == q.options && p.max_tokens == q.max_tokens, "options or max_tokens lost");
    FUZZ_CHECK(api_an_estimate_tokens(&q) >= 0, "a negative estimate");
    api_an_request_free(&q);
    return 0;
}
