/*
 * anthropic_api.h: POST /v1/messages and POST /v1/messages/count_tokens, the
 * Anthropic Messages API inbound (docs/PROTOCOLS.md A), so that code written
 * on Anthropic's SDKs uses chatd by changing its base URL. docs/API.md is the
 * contract; api/anthropic_api.c says how a request becomes a turn.
 *
 * The body parser is a pure function (bytes in, a parsed request or the
 * refusal out: no HTTP object, no I/O), so that tests and fuzz targets can
 * drive it. Thread: any for the parser; the handlers run on the worker loop
 * that received the request.
 */
#ifndef CHATD_API_ANTHROPIC_API_H
#define CHATD_API_ANTHROPIC_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "api/api.h"
#include "chat/turn.h"
#include "core/buf.h"

/* The anthropic-version values chatd serves (docs/PROTOCOLS.md A1, A2). */
#define API_AN_VERSION_2023 "2023-06-01"
#define API_AN_VERSION_2026 "2026-10-21"

/* At most this many entries in "messages". */
#define API_AN_MAX_MESSAGES 10000

/* A valid Messages request. */
typedef struct api_an_request {
    json_t *root;           /* the parsed body; owns the strings and blocks below */
    json_t *options;        /* canonical request options (llm/content.h), owned; NULL when none */
    char **texts;           /* heap, the text of every message read (n_texts of them) */
    size_t n_texts;         /* (the plain text of a block message: its text blocks joined) */
    llm_message *hist;      /* heap, the user and assistant messages in order */
    size_t n_hist;          /* >= 1 (messages); the last is the new user message */
    chat_buf system;        /* the system prompt: the string, or the text blocks joined by "\n"; len 0 if none */
    const char *session_id; /* the X-Session-Id header, else metadata.session_id; NULL = stateless */
    const char *model;      /* required */
    int max_tokens;         /* 1..1000000 (0 for count_tokens without one) */
    bool stream;
    bool has_document; /* a document block somewhere (Anthropic models only) */
} api_an_request;

/* Why a request was refused: the status, chatd's type (details.error_code of
 * the Anthropic envelope) and a one-line message. */
typedef struct api_an_invalid {
    int status;         /* 400 */
    const char *type;   /* static: "invalid_request_error", "unsupported_parameter" */
    char message[1024]; /* one line; client bytes in it are escaped if not UTF-8 */
} api_an_invalid;

/*
 * Parses and validates a Messages body of len bytes (body may be NULL when len
 * is 0) sent with anthropic-version version (API_AN_VERSION_2023 or
 * API_AN_VERSION_2026: the caller has checked it), the X-Session-Id header
 * value (NULL when absent; it wins over metadata.session_id) and
 * MAX_MESSAGE_SIZE max_message_bytes (the limit of the new user message's
 * text and of the system prompt). counting: a count_tokens body (no
 * max_tokens required, the last message may be an assistant's, stream and
 * max_tokens ignored). On success fills *out (release with
 * api_an_request_free) and returns true; on failure returns false with *out
 * released and *why filled.
 */
bool api_an_request_parse(const char *body, size_t len, const char *version, const char *session_header,
                          size_t max_message_bytes, bool counting, api_an_request *out, api_an_invalid *why);

/* Releases what api_an_request_parse filled. Accepts NULL and a zeroed request. */
void api_an_request_free(api_an_request *q);

/*
 * The turn a valid request asks for (borrowed from q, which must outlive the
 * turn_start call): with a session only the last user message is the new turn
 * (the server keeps the history); stateless, every earlier message is the
 * history. Every other field of *p zeroed, for the handler to set (request
 * id, owner, idempotency).
 */
void api_an_turn_params(const api_an_request *q, turn_params *p);

/* chatd's estimate of a request's input tokens (count_tokens for models that
 * are not Anthropic's): the system prompt, every message (llm_content_tokens)
 * and the tools' JSON, characters / 4 rounded up. */
int64_t api_an_estimate_tokens(const api_an_request *q);

/* Anthropic's stop_reason for a provider's stop or finish reason (NULL:
 * "end_turn"): stop -> end_turn, length -> max_tokens, tool_calls ->
 * tool_use, content_filter -> refusal; Anthropic's own pass through. */
const char *api_an_stop_reason(const char *stop);

/* The handlers (router.c's table). */
void api_anthropic_messages(http_req *r, api_env *w, char **params);
void api_anthropic_count_tokens(http_req *r, api_env *w, char **params);

#endif
