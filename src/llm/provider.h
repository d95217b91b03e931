/*
 * provider.h: one LLM call, whatever the provider.
 *
 * A caller (the turn engine) describes the conversation in an llm_request and
 * starts a call on its worker's transport (curl multi driven by the worker's
 * event loop, see transport.h). The call streams reply text through on_delta and
 * ends with exactly one on_done, unless it is cancelled first, in which case no
 * callback runs after llm_call_cancel() returns.
 *
 * Retries happen inside the call, and only while it is safe: before any delta
 * was delivered to the caller (connect errors, 408, 429, 5xx, 529, an in-stream
 * error before the first delta), honouring x-should-retry and retry-after within
 * the configured caps. The result reports how many attempts were made.
 * A spend limit reached (Anthropic enforced_spend_limit_reached, OpenAI 429
 * insufficient_quota) is never retried.
 *
 * Thread: everything runs on the thread of the transport's event_base.
 * Callbacks are never invoked from inside llm_call_start() (a start that fails
 * later reports through on_done on a later loop turn).
 */
#ifndef CHATD_LLM_PROVIDER_H
#define CHATD_LLM_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"
#include "llm/content.h"
#include "llm/transport.h"

typedef enum {
    LLM_PROVIDER_ANTHROPIC = 0,
    LLM_PROVIDER_OPENAI, /* OpenAI-compatible Chat Completions */
} llm_provider_kind;

/* The default of llm_provider.cache_min_tokens: the smallest minimum cacheable
 * prefix among current Sonnet/Opus 4 models (docs/PROTOCOLS.md A4; Haiku and some
 * newer models need 2048 or 4096, a few only 512). */
#define LLM_CACHE_MIN_TOKENS_DEFAULT 1024

/* Where and how to reach one provider endpoint. Borrowed by llm_call_start; must outlive the call.
 * Fields added later are optional: a zeroed value keeps the earlier behaviour. */
typedef struct llm_provider {
    llm_provider_kind kind;
    const char *name; /* for logs and metrics, e.g. "anthropic" */
    /* Anthropic: without the /v1 suffix, e.g. https://api.anthropic.com (the client adds /v1/messages).
     * OpenAI-compatible: WITH the version path, as the official SDKs take it, e.g.
     * https://api.openai.com/v1, https://api.groq.com/openai/v1, http://localhost:11434/v1
     * (the client adds /chat/completions). A trailing '/' is ignored. */
    const char *base_url;
    /* Never logged, never echoed in errors. Anthropic: required (x-api-key).
     * OpenAI-compatible: "" or NULL sends no Authorization header (Ollama,
     * llama.cpp and vLLM run without a key), else "Authorization: Bearer <key>". */
    const char *api_key;
    const char *version;           /* Anthropic only: anthropic-version header value (NULL = 2023-06-01) */
    int64_t connect_timeout_ms;    /* TCP+TLS connect */
    int64_t first_byte_timeout_ms; /* request sent -> first response byte (whole reply when not streaming) */
    int64_t idle_timeout_ms;       /* longest gap between two received bytes once the response started */
    int64_t total_timeout_ms;      /* whole call, retries included */
    int max_retries;               /* retries after the first attempt (0 = none) */
    int64_t retry_base_ms;         /* first backoff (doubles each retry, with jitter) */
    int64_t retry_max_wait_ms;     /* cap on one wait; a longer retry-after ends the call instead */
    size_t max_response_bytes;     /* cap on a response body / one SSE event */
    /* OpenAI-compatible only: the name of the output-token limit in the body,
     * "max_tokens" (NULL or "" mean this) or "max_completion_tokens". OpenAI's
     * reasoning models reject max_tokens; Ollama silently ignores
     * max_completion_tokens (docs/PROTOCOLS.md B2, B7), hence a per-provider choice.
     * Any other value makes the request unusable (llm_call_start: CHAT_EINVAL). */
    const char *max_tokens_field;
    /* Anthropic only: mark prompt-cache breakpoints (cache_control, docs/PROTOCOLS.md
     * A4) in every request: on the system prompt when it alone reaches
     * cache_min_tokens, and on the last assistant message before the final
     * message (the end of the previous turn) when the prefix up to it does;
     * never more than 4 breakpoints per request, markers already present
     * included. See llm_anthropic_mark_cache in call_internal.h. */
    bool prompt_caching;
    /* With prompt_caching: the minimum cacheable prefix in tokens, estimated as
     * Unicode characters / 4 (rounded up). A shorter prefix is not marked (the
     * API would cache nothing). <= 0 means LLM_CACHE_MIN_TOKENS_DEFAULT. */
    int64_t cache_min_tokens;
} llm_provider;

typedef struct llm_message {
    const char *role;    /* "user" or "assistant" */
    const char *content; /* plain text; ignored when blocks is set */
    /* NULL, or the message's content as canonical blocks (llm/content.h): tool
     * calls, tool results, images, thinking. Borrowed, like content. */
    const json_t *blocks;
    /* strlen(content) when the caller knows it (the request is written
     * without measuring the text again), or 0: measured when needed. */
    size_t content_len;
    /* True when the caller knows content needs no JSON escape
     * (chat_json_plain, core/json_out.h, with content_len set): the request
     * copies it as it is. */
    bool content_plain;
} llm_message;

typedef struct llm_request {
    const char *model;           /* the provider's model id */
    const char *system;          /* system prompt, may be NULL */
    const llm_message *messages; /* alternating, first is "user"; borrowed for the call's lifetime */
    size_t n_messages;
    int max_tokens;
    bool stream;            /* use the provider's streaming mode */
    const char *request_id; /* ours, for logs; may be NULL */
    /* NULL, or the request options (llm/content.h "Options"), already checked
     * against the model (models_check_options). Each provider maps every key
     * it is given; a key its wire format cannot carry makes the request
     * unusable (llm_call_start: CHAT_EINVAL), never silently dropped. */
    const json_t *options;
    /* Structured output without a native mode (the model has no
     * "structured_output" feature): the provider forces a tool named
     * LLM_JSON_TOOL whose input_schema is the requested schema, and the
     * parser turns that tool's input back into the reply's text. */
    bool json_via_tool;
} llm_request;

/* The tool chatd forces for structured output on models without a native mode. */
#define LLM_JSON_TOOL "json_output"

typedef struct llm_usage {
    int64_t input_tokens; /* -1 = unknown */
    int64_t output_tokens;
    int64_t cache_read_tokens;
    int64_t cache_write_tokens;
    int64_t reasoning_tokens; /* of output_tokens, those spent thinking; -1 = not reported */
} llm_usage;

typedef enum {
    LLM_OK = 0,
    LLM_ERR_HTTP,        /* the provider answered with an error status (http_status, error_type set) */
    LLM_ERR_CONNECT,     /* could not connect / DNS / TLS */
    LLM_ERR_TIMEOUT,     /* a deadline passed (which one is in error_message) */
    LLM_ERR_STREAM,      /* the provider sent an error after a 200 (an error event, an in-band
                             data: {"error":...} chunk, or an error object as a 200 JSON body) */
    LLM_ERR_TRUNCATED,   /* the response ended early: Anthropic without message_stop; OpenAI
                             without a finish_reason (even if [DONE] came); connection reset */
    LLM_ERR_PROTOCOL,    /* the response could not be parsed, or broke a size limit */
    LLM_ERR_RETRY_AFTER, /* the provider asked to wait longer than retry_max_wait_ms */
} llm_status;

/* The outcome of a call. Valid only during on_done; copy what you keep. */
typedef struct llm_result {
    llm_status status;
    int http_status;           /* last HTTP status seen, 0 if none */
    const char *error_type;    /* provider error.type (e.g. "overloaded_error") or ours; NULL on success */
    const char *error_message; /* human-readable, never contains the API key; NULL on success */
    /* The provider's machine-readable error code when it sent one, else NULL
     * (always NULL on success): OpenAI-compatible error.code, a string such as
     * "context_length_exceeded" or "insufficient_quota", or an integer (vLLM,
     * llama.cpp) given as its decimal text; Anthropic error.details.error_code. */
    const char *error_code;
    int64_t retry_after_ms; /* from retry-after-ms / retry-after, -1 if absent */
    const char *request_id; /* provider's request id header (request-id / x-request-id), may be NULL */
    const char *text;       /* the reply text received (partial on error), NUL-terminated */
    size_t text_len;
    /* Why the model stopped, in the provider's own vocabulary (not mapped, so
     * nothing is lost): Anthropic stop_reason (end_turn, max_tokens,
     * stop_sequence, tool_use, refusal, pause_turn...), OpenAI-compatible
     * finish_reason (stop, length, content_filter, tool_calls...). "Cut by the
     * token limit" is max_tokens / length. May be NULL. */
    const char *stop_reason;
    const char *model; /* model id reported by the provider, may be NULL */
    /* The stop sequence that ended the reply, when the provider says which
     * (Anthropic stop_sequence); NULL otherwise. */
    const char *stop_sequence;
    /* The whole reply as canonical content (llm/content.h): text, tool_use
     * (input parsed to an object), thinking blocks (with their signature),
     * in order; partial on error. Borrowed during on_done; a receiver that
     * keeps it takes a reference (json_incref) and only reads it: the provider
     * layer never changes it after on_done. Never NULL (an empty array when
     * nothing came). text above is its text blocks joined. */
    const json_t *content;
    /* Fields -1 when the provider did not report them (an OpenAI stream cut
     * after its finish_reason but before the usage chunk is a success with
     * usage -1). input_tokens is always the UNCACHED input (Anthropic's
     * meaning): for OpenAI-compatible providers prompt_tokens minus
     * prompt_tokens_details.cached_tokens, the latter in cache_read_tokens;
     * OpenAI reports no cache writes (cache_write_tokens stays -1). */
    llm_usage usage;
    bool delivered;      /* at least one delta reached on_delta (or event reached on_event) */
    int attempts;        /* 1 + retries made */
    int64_t ttfb_ms;     /* request start (last attempt) -> first response byte, -1 if none */
    int64_t duration_ms; /* whole call */
    int64_t duration_us; /* the same, in microseconds (X-Chatd-Overhead-Ms leaves it out) */
} llm_result;

enum { LLM_CONTINUE = 0, LLM_PAUSE = 1 };

typedef struct llm_callbacks {
    /* Streaming calls: a piece of reply text (UTF-8, not NUL-terminated). Return
     * LLM_CONTINUE, or LLM_PAUSE to stop reading from the provider until
     * llm_call_resume(). May be NULL for non-streaming calls. The callee must not
     * call llm_call_cancel() from inside on_delta; defer it.
     * Pause semantics: after LLM_PAUSE no on_delta runs until the resume. Text
     * that arrived in the same network read as the paused delta is parsed at
     * once (no byte is parsed twice) and held by the call; after the resume it
     * is delivered first, in one on_delta, before reading from the provider
     * goes on. While paused the idle deadline does not run (the total one
     * does). on_done may run while paused if no text is held. */
    int (*on_delta)(void *ud, const char *text, size_t len);
    /* Exactly once per call (unless cancelled). The call object is freed right
     * after on_done returns: do not touch it afterwards. */
    void (*on_done)(void *ud, const llm_result *res);
    /* Optional. When set, every reply event (llm/content.h) goes here in
     * stream order, text included, and on_delta is not called: a caller
     * that renders only text sets on_delta, one that renders tool calls or
     * thinking sets on_event. Same return values and pause semantics as
     * on_delta (events held by a pause are delivered in order on resume,
     * one per on_event, consecutive pieces of one block and kind joined into
     * one event). Like on_delta, only for streaming calls: a non-streaming
     * call's blocks are in llm_result.content. */
    int (*on_event)(void *ud, const llm_event *ev);
} llm_callbacks;

typedef struct llm_call llm_call;

/*
 * Starts a call. req and everything it points to is copied (the caller may free
 * it after return). On success *out is the call handle, owned by the transport
 * until on_done returns or llm_call_cancel() is called. Returns CHAT_EINVAL for
 * an unusable request or provider (nothing started, no callback).
 */
chat_rc llm_call_start(llm_transport *t, const llm_provider *p, const llm_request *req, const llm_callbacks *cbs,
                       void *ud, llm_call **out) CHAT_MUST_CHECK;

/* Resumes a call paused by LLM_PAUSE. Safe to call when not paused. Not from a callback.
 * The work (delivering held text, unpausing curl) runs on the next loop turn. */
void llm_call_resume(llm_call *c);

/* Aborts the transfer at once and frees the call; no callback runs afterwards. Accepts NULL. */
void llm_call_cancel(llm_call *c);

/* Builds the provider request body for req as a JSON string (heap, caller frees).
 * Exposed for unit tests of the exact wire format. */
char *llm_build_body(const llm_provider *p, const llm_request *req);

#endif
