/*
 * call_internal.h: the private seams of the LLM client, shared by transport.c,
 * call.c and the provider files (anthropic.c, openai.c). Not for callers
 * outside src/llm/ (the turn engine uses provider.h and transport.h only), but
 * the unit tests include it to test the provider parsers without sockets.
 *
 * The split:
 * - transport.c drives curl's multi handle from libevent and tells call.c when
 *   a transfer ended (llm__call_transfer_done).
 * - call.c owns everything generic about one call: the curl easy handle,
 *   header capture, body buffering, deadlines, pause/resume, cancel, retries.
 * - a provider file knows one wire format only, behind llm_provider_ops: the
 *   URL, headers and JSON body of a request, and how to read a JSON reply, an
 *   SSE event and an error body. It reports into an llm_parse, never touching
 *   curl or the loop, so it can be tested with canned bytes.
 *
 * Thread: as provider.h (the event_base's thread).
 */
#ifndef CHATD_LLM_CALL_INTERNAL_H
#define CHATD_LLM_CALL_INTERNAL_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/json_out.h"
#include "llm/provider.h"

/* ---- what a provider parser fills in (one attempt) ---- */

/*
 * Receives reply text found by the provider parser (not NUL-terminated).
 * Returns 0 to go on, nonzero to make the parser stop at once (a limit was
 * hit, recorded in the llm_parse, or the call was cancelled).
 */
typedef int (*llm_emit_fn)(void *ud, const char *text, size_t len);

/* Receives every reply event (llm/content.h) the parser builds, TEXT included
 * (after the emit of the same text). Same return convention as llm_emit_fn. */
typedef int (*llm_event_fn)(void *ud, const llm_event *ev);

/* The kind of the block being built (llm_parse.open_kind). */
typedef enum { LLM_BLK_NONE = 0, LLM_BLK_TEXT, LLM_BLK_THINKING, LLM_BLK_TOOL } llm_block_kind;

/* One OpenAI tool call seen in a stream (openai.c), by its provider index. */
typedef struct llm_tool_slot {
    int64_t index; /* the provider's tool_calls[].index */
    char *id;      /* heap, NULL until a piece carries it */
    char *name;    /* heap, NULL until a piece carries it */
    char *args;    /* heap, argument text buffered while another call's block is open */
    size_t args_len;
    int state; /* 0 buffered (not started), 1 its block is open, 2 done */
} llm_tool_slot;

typedef struct llm_parse {
    llm_emit_fn emit;  /* where reply text goes (set by the owner, never NULL) */
    void *emit_ud;     /* passed to emit unchanged */
    llm_usage usage;   /* latest values reported; -1 = not reported */
    char *model;       /* heap, model id reported by the provider, or NULL */
    char *stop_reason; /* heap, last non-null stop reason seen, or NULL */
    /* The stream's end marker was seen after a complete reply (Anthropic:
     * message_stop; OpenAI: [DONE] after a finish_reason): whatever happens to
     * the transfer afterwards (reset, a server that keeps it open), the call succeeded. */
    bool complete;
    /* The reply text is complete but the end marker has not come yet (OpenAI:
     * a finish_reason was seen; the usage chunk and [DONE] may follow). If the
     * transfer ends now, however it ends (clean close as Ollama does, reset,
     * idle deadline), the call succeeds with the usage seen so far (-1 if none). */
    bool finished;
    int64_t block_index; /* provider scratch: index of the content block being streamed, -1 = none */
    bool block_is_text;  /* provider scratch: that block is a text block */
    llm_status err;      /* LLM_OK, or the failure the parser found */
    char *err_type;      /* heap, with err: error type (provider's, or ours) */
    char *err_message;   /* heap, with err: human-readable message */
    char *err_code;      /* heap, with err: the provider's error code if it gave one, else NULL */

    /* ---- rich replies (reply.c). Set by the owner after llm_parse_init, kept by llm_parse_reset: ---- */
    llm_event_fn event; /* NULL, or where every reply event goes (ud: emit_ud) */
    bool json_via_tool; /* the request forced LLM_JSON_TOOL: its input is the reply's text */
    size_t max_bytes;   /* cap on the reply content's text, ids and arguments together (0: none) */
    /* ---- built by the parser (cleared by llm_parse_reset): ---- */
    char *stop_sequence;      /* heap, the stop sequence that ended the reply, or NULL */
    json_t *content;          /* the reply's canonical blocks closed so far; NULL until the first */
    llm_block_kind open_kind; /* the block being built, LLM_BLK_NONE if none */
    bool open_json;           /* it is the LLM_JSON_TOOL call, shown as a text block */
    char *open_id;            /* heap, tool_use: its id */
    char *open_name;          /* heap, tool_use: its name */
    char *open_sig;           /* heap, thinking: its signature */
    char *acc;                /* heap, the open block's text, thinking or argument JSON so far */
    size_t acc_len, acc_cap;
    size_t content_bytes; /* counted against max_bytes */
    bool json_seen;       /* a LLM_JSON_TOOL call became text */
    bool tool_seen;       /* a real tool_use block was built */
    llm_tool_slot *slots; /* openai.c: the stream's tool calls, in order of first appearance */
    size_t n_slots;
} llm_parse;

/* Zeroes st, sets usage to -1 and the emit sink. */
void llm_parse_init(llm_parse *st, llm_emit_fn emit, void *emit_ud);

/* Frees the strings and content of st and re-initialises it with the same
 * sinks (emit, event, json_via_tool and max_bytes are kept). */
void llm_parse_reset(llm_parse *st);

/* ---- building the reply's content and events (reply.c) ----
 *
 * A provider parser describes the reply block by block; these keep
 * st->content and the open block, and call st->emit (text) and st->event
 * (every event) in stream order. Each returns 0 to go on, nonzero to stop
 * (st->err says why, or a sink asked to stop). Blocks never interleave: opening
 * one closes the open one. The event index is the block's position in
 * st->content. A text block that received no text is dropped at its close
 * (an empty text block is invalid in a request), without events.
 */

/* Opens a block: type "text", "thinking" or "tool_use" (id and name then
 * required; the LLM_JSON_TOOL call with st->json_via_tool is opened as text). */
int llm_reply_open(llm_parse *st, llm_block_kind kind, const char *id, const char *name);
/* A piece of the open block, of this kind (LLM_BLK_TOOL: argument JSON text).
 * TEXT and THINKING open a block of their kind first when the open one is of
 * another kind; argument text without an open tool_use is a protocol error. */
int llm_reply_piece(llm_parse *st, llm_block_kind kind, const char *s, size_t n);
/* The signature of the open thinking block (ignored for other blocks). */
void llm_reply_signature(llm_parse *st, const char *sig, size_t n);
/* Closes the open block (nothing open: 0). Strict: a tool_use whose
 * arguments are not a JSON object is a protocol error. Lenient (after a
 * failure, for the partial content): such a block is dropped. */
int llm_reply_close(llm_parse *st, bool strict);
/* A whole redacted_thinking block {data} (closes the open one first). */
int llm_reply_redacted(llm_parse *st, const char *data);
/* A whole block of a non-streamed reply, validated (text, tool_use, thinking,
 * redacted_thinking; other types kept as they are) and appended; its text goes
 * to st->emit. No events. The LLM_JSON_TOOL call becomes a text block. */
int llm_reply_block(llm_parse *st, json_t *block);
/* The stop reason to report: "tool_use"/"tool_calls" become end_after when the
 * only tool called was LLM_JSON_TOOL (its input is the reply's text). */
void llm_reply_stop_reason(llm_parse *st, const char *reason, const char *end_after);

/* Records the first failure (later ones are ignored, the first is the cause).
 * type is copied; the message is formatted, then any byte of it that is not
 * well-formed UTF-8 is written as \xHH (chat_utf8_escape), so that it can go
 * into a JSON response or log line whatever provider bytes it quotes. */
void llm_parse_fail(llm_parse *st, llm_status status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* What an error response said. Strings are heap (free with llm_error_info_free). */
typedef struct llm_error_info {
    char *type;    /* error.type, or derived from the HTTP status; never NULL after parse */
    char *message; /* error.message, or a sanitized excerpt; never NULL after parse */
    char *code;    /* the provider's error code (string, or integer as text), NULL if none */
    bool no_retry; /* the body says retrying is pointless (e.g. a spend limit reached) */
} llm_error_info;

void llm_error_info_free(llm_error_info *e);

/* ---- the provider vtable ---- */

typedef struct llm_provider_ops {
    /* Heap URL of the endpoint for p, or NULL if p->base_url is unusable. */
    char *(*build_url)(const llm_provider *p);
    /* The request headers (a new curl list, caller frees with curl_slist_free_all),
     * or NULL if a configured value would be unsafe in a header (CR/LF...). */
    struct curl_slist *(*build_headers)(const llm_provider *p, bool stream);
    /* The JSON body (heap), or NULL if req is unusable (see llm_build_body);
     * *len (len may be NULL) gets its length. */
    char *(*build_body)(const llm_provider *p, const llm_request *req, size_t *len);
    /* One dispatched SSE event of a 2xx streaming reply. Returns 0 to go on,
     * nonzero to stop (st->err says why, or emit asked to stop). */
    int (*on_sse_event)(llm_parse *st, const char *type, const char *data, size_t len);
    /* A complete 2xx non-streaming body. Returns LLM_OK, or the failure with
     * st->err set: LLM_ERR_PROTOCOL (unparsable), LLM_ERR_STREAM (the body is
     * an error object despite the 200; retried like an in-stream error). */
    llm_status (*parse_json_body)(llm_parse *st, const char *body, size_t len);
    /* A non-2xx body (possibly truncated to a cap, possibly not JSON). Fills out. */
    void (*parse_error)(int http_status, const char *body, size_t len, llm_error_info *out);
    /* The response header carrying the provider's request id ("request-id",
     * "x-request-id"), reported in llm_result.request_id. */
    const char *request_id_header;
    /* What a complete stream ends with, named in the truncation message
     * ("message_stop", "finish_reason"). */
    const char *end_marker;
} llm_provider_ops;

extern const llm_provider_ops llm_anthropic_ops;
extern const llm_provider_ops llm_openai_ops;

/*
 * Anthropic prompt caching (docs/PROTOCOLS.md A4): adds cache_control
 * {"type":"ephemeral"} breakpoints to body, a request body object in any legal
 * shape ("system" a string or a block array; message "content" a string or a
 * block array; "tools"). Called by the Anthropic build_body when
 * llm_provider.prompt_caching is on; exposed for tests.
 *
 * Markers already in body are counted (system blocks, message content blocks,
 * tools, and the top-level automatic cache_control, counted conservatively as
 * one since whether the API counts it is not documented) and kept; at most
 * 4 - that count are added, so the request never exceeds the API's limit of 4.
 * Candidates, in order of priority:
 *   1. the end of the previous turn: the last "assistant" message before the
 *      final message, when the estimated prefix up to and including it
 *      (system + messages) reaches min_tokens. It is the longest prefix the
 *      next turn will repeat byte for byte;
 *   2. the system prompt, when it alone reaches min_tokens. It survives what
 *      invalidates the first (history truncation dropping the oldest turns)
 *      and is shared by every session with the same prompt.
 * A candidate already marked, or whose last block is an empty text block
 * (which cannot carry cache_control), is skipped. A marked string becomes a
 * one-block array [{"type":"text","text":...,"cache_control":...}]; in an
 * array the last block is marked. Tokens are estimated as Unicode characters
 * of the text / 4, rounded up; min_tokens <= 0 means
 * LLM_CACHE_MIN_TOKENS_DEFAULT. Returns the number of breakpoints added.
 */
int llm_anthropic_mark_cache(json_t *body, int64_t min_tokens);

/* ---- helpers shared by providers (call.c) ---- */

/* The "messages" array of a provider body, written where the body's tree
 * holds a placeholder (chat_json_dumps_splice; ud is this struct): first a
 * {"role":"system"} message when system is non-empty (OpenAI's shape), then
 * each of req's messages: from its text when objs[i] is NULL, else objs[i],
 * an object or an array of the messages one message became (OpenAI's tool
 * results). False if a string is not UTF-8. */
typedef struct llm_body_messages {
    const llm_request *req;
    json_t *const *objs;
    const char *system;
} llm_body_messages;
bool llm_write_messages(chat_json_writer *w, void *ud);

/*
 * A short, printable excerpt of an arbitrary body for an error message: at
 * most max bytes of valid UTF-8, control characters and runs of whitespace
 * folded into one space, invalid bytes as '?', HTML tags dropped when the body
 * looks like HTML. Heap, never NULL.
 */
char *llm_excerpt(const char *body, size_t len, size_t max);

/* Parses a JSON response body that must be an object. NULL (the failure
 * recorded in st as LLM_ERR_PROTOCOL) when it is not. The caller decrefs. */
json_t *llm_load_object(llm_parse *st, const char *body, size_t len);

/* The message of an error response whose body carries none we can read:
 * "HTTP <status>: <excerpt>", or "HTTP <status> with an empty body". Heap. */
char *llm_http_error_text(int http_status, const char *body, size_t len);

/* True if s can go into an HTTP header value or a URL (printable ASCII, no CR/LF). */
bool llm_header_safe(const char *s);

/* curl_slist_append, aborting on out of memory (never returns NULL). */
struct curl_slist *llm_slist_add(struct curl_slist *l, const char *line);

/* Copies at most max bytes of s without cutting a UTF-8 sequence. Heap. */
char *llm_strndup_utf8(const char *s, size_t max);

/*
 * The server's retry hint in ms, from the values of the retry-after-ms and
 * retry-after headers (either may be NULL): retry-after-ms wins; retry-after
 * is seconds (a float is allowed) or an HTTP date (compared with now_unix).
 * Returns -1 when there is no usable hint; a date in the past gives 0.
 */
int64_t llm_retry_after_ms(const char *retry_after_ms, const char *retry_after, time_t now_unix);

/* The default error.type for an HTTP status when the body did not say (A7). */
const char *llm_error_type_for_status(int http_status);

/* ---- transport <-> call ---- */

/* An intrusive list link: the transport keeps every live call on a list so that
 * llm_transport_free can cancel them, including those waiting for a retry. */
typedef struct llm_link {
    struct llm_link *prev, *next;
} llm_link;

struct event_base *llm__transport_base(llm_transport *t);
/* A uniform random double in [0, 1) from the transport's generator (backoff jitter). */
double llm__transport_random(llm_transport *t);
void llm__transport_link(llm_transport *t, llm_link *l);
void llm__transport_unlink(llm_transport *t, llm_link *l);
/* curl_multi_add_handle / curl_multi_remove_handle on the transport's multi,
 * counted: the connection cache's bound follows the transfers running
 * (LLM_MAX_IDLE_CONNECTIONS idle beyond them). */
CURLMcode llm__transport_add(llm_transport *t, CURL *e);
void llm__transport_remove(llm_transport *t, CURL *e);
/* An h2c opener's connection (transport.c, "h2c with libcurl before 8.0.0"):
 * the origin it is counted for, and the socket its transfer opened. Kept by
 * the call, filled in by the transport. */
typedef struct llm_h2c_ticket {
    void *origin;     /* NULL: the transfer is not on an h2c origin of such a libcurl */
    bool opener;      /* it opens an h2c connection of its own (else it joins one) */
    bool refused;     /* a joiner was about to open a connection, and was stopped */
    curl_socket_t fd; /* the socket an opener opened, CURL_SOCKET_BAD before */
} llm_h2c_ticket;
/* Sets on e the per-transfer options that belong to the connection policy
 * (HTTP version, multiplexing, connection reuse) for provider p. Called once per
 * easy handle, after call.c set the request's own options. ticket (which must
 * live as long as the transfer) is set up for llm__transport_h2c_answered. */
void llm__transport_prepare(llm_transport *t, const llm_provider *p, CURL *e, llm_h2c_ticket *ticket);
/* The attempt of an opener (ticket set up by llm__transport_prepare) got the
 * first byte of its answer: curl now knows its connection multiplexes, calls
 * may join it. Does nothing for a transfer that opened no h2c connection.
 * Only counts (safe inside curl callbacks). */
void llm__transport_h2c_answered(llm_h2c_ticket *ticket);
/* After an attempt ended: true if it was a joiner stopped from opening a
 * connection (transport.c); e is then set up as an opener, and the call starts
 * a new attempt at once (not a failed one). False otherwise. */
bool llm__transport_h2c_reopen(CURL *e, llm_h2c_ticket *ticket);

/* The call owning a link (call.c). */
llm_call *llm__call_of_link(llm_link *l);
/* Frees the easy handles this thread keeps for reuse (llm_transport_shed). */
void llm__easy_pool_drain(void);

/*
 * A transfer of c ended with rc (from curl_multi_info_read). Called by the
 * transport from the loop, after curl_multi_socket_action returned, never from
 * a curl callback. c may be freed when this returns.
 */
void llm__call_transfer_done(llm_call *c, CURLcode rc);

#endif
