/*
 * request.h: the bodies of the JSON endpoints that take one (the chat
 * endpoints and /v1/estimate), validated as pure functions:
 * request bytes in, a parsed request (and the turn it asks for) or the
 * validation error out. No HTTP object, no I/O: the handlers (chat.c,
 * openai_compat.c, models.c) answer with what these return, and the fuzz targets
 * (tests/fuzz/) drive them with raw bytes. docs/API.md is the contract of the
 * errors.
 *
 * Thread: any; nothing is shared.
 */
#ifndef CHATD_API_REQUEST_H
#define CHATD_API_REQUEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "api/api.h"
#include "chat/turn.h"
#include "core/buf.h"

/* ---- POST /chat, /chat-stream (API_SEED) and /v1/chat, /v1/chat/stream (API_V1) ---- */

/* A valid chat body. The strings point into root (or generated_id). */
typedef struct api_chat_body {
    json_t *root; /* the parsed body; owns the strings below (api_chat_body_release) */
    /* non-blank, at most max_message_bytes; "" (/v1) when the body sends
     * "content" or "tool_results" without "message" (blocks is set then) */
    const char *message;
    const char *session_id;     /* a valid id (chat_valid_id); for /v1 without one, generated_id */
    const char *system_prompt;  /* NULL when absent, null or "" (the template's `system_prompt or DEFAULT`) */
    const char *model;          /* /v1 only: NULL when absent, null or "" */
    int max_tokens;             /* /v1 only: 1..1000000, 0 when absent */
    turn_truncation truncation; /* /v1 only: TURN_TRUNCATE_AUTO unless "reject" */
    char generated_id[40];      /* "s_" + 24 random hex digits when /v1 named no session */
    /* /v1 only, owned (api_chat_body_release): NULL, or the new user message
     * as canonical blocks (llm/content.h) when the body sent "content" or
     * "tool_results": the tool_result blocks first, then the content blocks or
     * the message as one text block. Checked with llm_content_check. */
    json_t *blocks;
    /* /v1 only, owned: NULL, or the request options (llm/content.h) the body
     * set to a non-null value, type- and range-checked, in canonical form
     * ("stop" always an array, "tool_choice" always an object, tools with
     * name, description?, input_schema, strict?). */
    json_t *options;
} api_chat_body;

/* Why a chat body was refused, in both flavors' words. */
typedef struct api_chat_invalid {
    /* The seed's 422 {"detail": detail}: a non-empty array of pydantic-v2 style
     * items (api_detail_item), one per problem. Owned by the caller (decref). */
    json_t *detail;
    /* The /v1 400 invalid_request_error message: the first problem, one line. */
    char message[300];
    /* 0: the flavor's usual status (422 seed, 400 /v1); 413 when an image is
     * larger than max_image_bytes (/v1 request_too_large). */
    int status;
} api_chat_invalid;

/*
 * Parses and validates a chat body of len bytes (body may be NULL when len is
 * 0; it need not be NUL-terminated) for flavor f (API_SEED or API_V1), with
 * MAX_MESSAGE_SIZE max_message_bytes. The seed requires session_id; /v1
 * generates one when it is absent or null, and also reads model, max_tokens
 * and truncation. On success fills *out (release out->root with json_decref)
 * and returns true. On failure returns false, out->root NULL, and fills *why
 * (release why->detail). Never both.
 */
bool api_chat_body_parse(const char *body, size_t len, api_flavor f, size_t max_message_bytes, api_chat_body *out,
                         api_chat_invalid *why);

/* The image limit api_chat_body_parse applies (MAX_IMAGE_SIZE's default). */
#define API_CHAT_MAX_IMAGE_BYTES ((size_t)5 << 20)

/*
 * api_chat_body_parse with an image limit: for /v1 the body may also send
 * "content" (text and image blocks; exactly one of message and content),
 * "tool_results" ([{tool_call_id, content: string or text/image blocks,
 * is_error?}], with or without message/content) and the options of
 * llm/content.h. The text of message, of content and of the tool results
 * is each at most max_message_bytes; a base64 image decoding to more than
 * max_image_bytes is refused with why->status 413; an image URL must be
 * https. Seed bodies are parsed exactly as by api_chat_body_parse (those
 * fields are ignored there).
 */
bool api_chat_body_parse_ex(const char *body, size_t len, api_flavor f, size_t max_message_bytes,
                            size_t max_image_bytes, api_chat_body *out, api_chat_invalid *why);

/* Releases what a successful parse filled (root, blocks, options) and zeroes
 * them. Accepts a zeroed body. */
void api_chat_body_release(api_chat_body *b);

/*
 * The turn a valid chat body asks for: session, message, system prompt,
 * model, max_tokens, truncation, message_blocks (b->blocks) and options
 * (b->options) set from b (borrowed: b must outlive p);
 * every other field of *p zeroed, for the handler to set (stream, request
 * id, owner, idempotency).
 */
void api_chat_turn_params(const api_chat_body *b, turn_params *p);

/* ---- POST /v1/estimate ---- */

/*
 * Parses and validates an estimate body of len bytes: a JSON object whose
 * input_tokens, output_tokens, cache_read_input_tokens and
 * cache_creation_input_tokens are each absent, null (0) or an integer
 * 0..10^12, and whose optional "models" is an array (entries that are not
 * model names are ignored by the handler). On success fills *u, sets *only to
 * the models array or NULL (borrowed from the result), and returns the parsed
 * body (json_decref it). On failure returns NULL with *why a static one-line
 * message for the 400 invalid_request_error.
 */
json_t *api_estimate_parse(const char *body, size_t len, store_usage *u, json_t **only, const char **why);

/* ---- POST /v1/chat/completions (OpenAI's Chat Completions request) ---- */

/* At most this many entries in "messages", and in "tools". */
#define API_OA_MAX_MESSAGES 10000
#define API_OA_MAX_TOOLS 128

/* The settings a Chat Completions body is checked against. */
typedef struct api_oa_limits {
    size_t max_message_bytes; /* MAX_MESSAGE_SIZE: the new message's text, and the joined system prompt */
    size_t max_image_bytes;   /* MAX_IMAGE_SIZE: one image, decoded */
    /* DROP_UNSUPPORTED_PARAMS=on: a request field chatd cannot carry to any
     * provider (audio, prediction, ...) is left out and named in dropped
     * instead of a 400 unsupported_parameter. */
    bool drop_unsupported;
} api_oa_limits;

/*
 * A valid Chat Completions request, translated (llm/content.h): system and
 * developer messages -> the system prompt; user, assistant and tool messages
 * -> canonical messages (consecutive tool messages, and a user message right
 * after them, become one user message of tool_result blocks then its content);
 * the sampling, tool, structured-output and reasoning fields -> options.
 */
typedef struct api_oa_request {
    json_t *root; /* the parsed body; owns model and a body session_id */
    char **texts; /* heap, the text of every message in hist (n_texts of them) */
    size_t n_texts;
    /* heap, the user and assistant messages in order; content is the text
     * (of a message with blocks: its text blocks joined, maybe ""), blocks
     * NULL for a plain-text message, else its canonical content (owned by
     * the blocks member below) */
    llm_message *hist;
    size_t n_hist;  /* >= 1; the last is the new user message: text or blocks, within the limits */
    json_t *blocks; /* owns every hist[i].blocks (an array of them) */
    /* NULL, or the request options (llm/content.h "Options"), owned; values
     * as the client sent them, the OpenAI defaults that change nothing
     * (n 1, logprobs false, penalties 0, ...) left out */
    json_t *options;
    chat_buf system;        /* every system/developer message joined by blank lines; len 0 if none */
    const char *session_id; /* the X-Session-Id header, else a string body session_id; NULL = stateless */
    const char *model;      /* NULL when absent or null */
    int max_tokens;         /* max_completion_tokens, else max_tokens: 1..1000000, 0 when absent */
    bool stream;
    bool include_usage; /* stream_options.include_usage, with stream only */
    char dropped[256];  /* with drop_unsupported: the fields left out, comma-separated; "" if none */
} api_oa_request;

/* Why a Chat Completions request was refused: OpenAI's error envelope. */
typedef struct api_oa_invalid {
    int status;         /* 400, or 413 for an image over MAX_IMAGE_SIZE */
    const char *type;   /* static: "invalid_request_error" */
    const char *code;   /* static: "invalid_json", "invalid_type", "invalid_value", "unsupported_parameter",
                           "unknown_parameter", "request_too_large", ... */
    const char *param;  /* static field name, or NULL */
    char message[1024]; /* one line; client bytes in it are escaped if not UTF-8 */
} api_oa_invalid;

/*
 * Parses, validates and translates a Chat Completions body of len bytes (body
 * may be NULL when len is 0), with the request's X-Session-Id header value
 * (NULL when absent; it wins over a body session_id) and the limits lim
 * (borrowed). docs/API.md lists what each field becomes. On success fills
 * *out (release with api_oa_request_free) and returns true; on failure
 * returns false with *out released and *why filled.
 */
bool api_oa_request_parse(const char *body, size_t len, const char *session_header, const api_oa_limits *lim,
                          api_oa_request *out, api_oa_invalid *why);

/* Releases what api_oa_request_parse filled. Accepts NULL and a zeroed request. */
void api_oa_request_free(api_oa_request *q);

/*
 * The turn a valid request asks for (borrowed from q, which must outlive p):
 * with a session, only the last user message (tool results included) is the
 * new turn (the server keeps the history); stateless, the earlier user and
 * assistant messages are the history. message_blocks is the new message's
 * blocks (NULL for plain text), options q->options. System prompt NULL when
 * there was none. Every other field of *p zeroed, for the handler to set
 * (request id, owner).
 */
void api_oa_turn_params(const api_oa_request *q, turn_params *p);

#endif
