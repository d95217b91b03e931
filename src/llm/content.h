/*
 * content.h: chatd's one representation of what a conversation holds beyond
 * plain text (tool calls and results, images, thinking) and of the request
 * options that change an answer (sampling, tools, structured output,
 * reasoning). Every inbound API translates into it, every provider translates
 * out of it, and the store keeps it, so that each translation is written once.
 *
 * ---- Content: a JSON array of blocks, in the Anthropic Messages shape ----
 * (docs/PROTOCOLS.md A2; chosen because it is the richer of the two wire
 * formats: OpenAI's messages map into it without loss, see llm/oa_map.h)
 *
 *   {"type":"text","text":"..."}
 *   {"type":"image","source":{"type":"base64","media_type":"image/png|jpeg|gif|webp","data":"<base64>"}}
 *   {"type":"image","source":{"type":"url","url":"https://..."}}
 *   {"type":"tool_use","id":"toolu_...|call_...","name":"get_weather","input":{...object...}}  (assistant only)
 *   {"type":"tool_result","tool_use_id":"...","content":"..." | [text and image blocks],
 *    "is_error":true?}                                                                     (user only)
 *   {"type":"thinking","thinking":"...","signature":"..."}                                (assistant only)
 *   {"type":"redacted_thinking","data":"..."}                                              (assistant only)
 *
 * A block may carry "cache_control" (Anthropic prompt caching), which is kept.
 * Other Anthropic block types (document, ...) are accepted only where an API
 * says so and passed to Anthropic unchanged. A message whose content is plain
 * text keeps using llm_message.content (a string); blocks are used only when
 * the message holds something else.
 *
 * ---- Options: a JSON object, every key optional ----
 * The values are the client's, unchanged (never clamped): a value a provider
 * cannot take is refused before the call (models_check_options, chat/models.h)
 * or, with DROP_UNSUPPORTED_PARAMS=on, left out and reported.
 *
 *   "temperature"        number >= 0 (OpenAI 0..2; Anthropic 0..1)
 *   "top_p"              number 0..1
 *   "top_k"              integer >= 1 (Anthropic; OpenAI-compatible servers that take it: vLLM, llama.cpp)
 *   "stop"               array of 1..4 non-empty strings (Anthropic stop_sequences)
 *   "seed"               integer
 *   "presence_penalty"   number -2..2
 *   "frequency_penalty"  number -2..2
 *   "logit_bias"         object {token id: number -100..100}
 *   "logprobs"           boolean
 *   "top_logprobs"       integer 0..20
 *   "n"                  integer >= 1 (only 1 is ever accepted: a turn has one reply)
 *   "user"               string, an end-user id (Anthropic metadata.user_id)
 *   "metadata"           object, Anthropic metadata (passed to Anthropic only)
 *   "tools"              array of {"name","description"?,"input_schema":{JSON Schema object},"strict"?:bool}
 *   "tool_choice"        {"type":"auto"|"any"|"none"} or {"type":"tool","name":"..."}
 *                        ("any" is OpenAI's "required")
 *   "parallel_tool_calls" boolean (false: at most one tool call per reply;
 *                        Anthropic tool_choice.disable_parallel_tool_use)
 *   "response_format"    {"type":"text"} | {"type":"json_object"} |
 *                        {"type":"json_schema","name":"...","schema":{...},"strict":bool?}
 *   "thinking"           {"type":"enabled","budget_tokens":N} | {"type":"disabled"}
 *   "reasoning_effort"   "minimal"|"low"|"medium"|"high"
 *
 * ---- Reply events ----
 * A streamed reply is a sequence of blocks, each opened, filled and closed in
 * order (blocks never interleave in the event stream: a provider that
 * interleaves tool-call pieces, as OpenAI may, is reordered into whole blocks
 * by its parser only where that cannot delay text; see llm/openai.c). The
 * index is the block's position in llm_result.content.
 *
 * Thread: pure functions, any thread.
 */
#ifndef CHATD_LLM_CONTENT_H
#define CHATD_LLM_CONTENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum llm_event_kind {
    LLM_EV_TEXT = 0,   /* a piece of the text of block index (also delivered through on_delta) */
    LLM_EV_THINKING,   /* a piece of the thinking text of block index */
    LLM_EV_TOOL_START, /* block index is a tool call: id and name set */
    LLM_EV_TOOL_ARGS,  /* a piece of the tool call's arguments (JSON text, complete only at BLOCK_STOP) */
    LLM_EV_BLOCK_STOP, /* block index is complete */
} llm_event_kind;

typedef struct llm_event {
    llm_event_kind kind;
    int index;        /* position of the block in the reply's content array, from 0 */
    const char *id;   /* TOOL_START (and BLOCK_STOP of a tool_use): the call's id (NUL-terminated) */
    const char *name; /* TOOL_START: the function's name; BLOCK_STOP: the block's type ("text", "thinking",
                       * "tool_use", "redacted_thinking") (NUL-terminated) */
    /* TEXT, THINKING, TOOL_ARGS: the piece, not NUL-terminated. BLOCK_STOP:
     * what completes the block, else NULL: a thinking block's signature, or a
     * redacted_thinking block's data (such a block has no other event: it
     * arrives whole). */
    const char *data;
    size_t len;
} llm_event;

/* The event kind's name in logs and SSE ("text", "thinking", "tool_start", "tool_args", "block_stop"). */
const char *llm_event_name(llm_event_kind k);

/*
 * Checks that content is a well-formed canonical content array for a message
 * of role ("user" or "assistant"): known block types in the right role, the
 * fields each requires with the right JSON types, base64 image data that
 * decodes, a supported image media type. Returns NULL when it is, else a
 * static-lifetime-free message written into why (one line, at most whylen
 * bytes, naming the block index and field, e.g. "content[2].source.data: not
 * valid base64").
 */
const char *llm_content_check(const json_t *content, const char *role, char *why, size_t whylen);

/* The plain text of content: its text blocks joined (no separator), NULL-safe;
 * heap, never NULL. Tool, image and thinking blocks contribute nothing. */
char *llm_content_text(const json_t *content);

/* True if content holds a block of this type (e.g. "tool_use"). */
bool llm_content_has(const json_t *content, const char *type);

/*
 * An estimate of the tokens content costs in a request: text as Unicode
 * characters / 4 rounded up (the estimate used everywhere else), tool inputs
 * and results by their JSON text the same way, and every image as
 * LLM_IMAGE_TOKENS (Anthropic bills an image by its pixels, about
 * width*height/750, at most about 1,600 for an image within its size limits;
 * chatd does not decode images, so it counts the most an image can cost).
 */
#define LLM_IMAGE_TOKENS 1600
int64_t llm_content_tokens(const json_t *content);

#endif
