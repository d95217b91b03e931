/*
 * models.h: the models table: which models exist, which provider serves each,
 * their limits and their prices, and what a turn costs.
 *
 * The table is the built-in config/models.json (embedded in the binary) with the
 * user's MODELS_FILE merged over it (entries replace built-in ones by name).
 * Providers: "anthropic" (ANTHROPIC_*) and "openai" (OPENAI_*) always exist;
 * more OpenAI-compatible endpoints are declared in the file's "providers" object
 * ({"type":"openai","base_url":...,"api_key_env":"GROQ_API_KEY"}): keys are read
 * from the process environment at start, never from the file.
 *
 * Prices are kept as integer micro-dollars per million tokens, and costs as
 * integer micro-dollars, so totals never accumulate floating-point error.
 *
 * Lifetime and thread: loaded once on the main thread before the workers start,
 * then read-only and shared by every worker.
 */
#ifndef CHATD_CHAT_MODELS_H
#define CHATD_CHAT_MODELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/config.h"
#include "core/rc.h"
#include "llm/provider.h"
#include "store/store.h"

typedef struct model_price {
    int64_t input; /* micro-dollars per million tokens */
    int64_t output;
    int64_t cache_write;
    int64_t cache_read;
} model_price;

typedef struct chat_model {
    char *name;               /* what clients send as "model" */
    char *provider_name;      /* "anthropic", "openai", or a name from the file */
    char *model_id;           /* the provider's id */
    int64_t context_window;   /* tokens */
    int64_t max_output;       /* tokens */
    int64_t cache_min_tokens; /* shortest cacheable prefix, 0 = unknown */
    model_price price;
    char **fallbacks; /* names of models to try, in order */
    size_t n_fallbacks;
    /* What the model accepts beyond plain text: models.json "features", a
     * list of "tools", "vision", "structured_output" (a native JSON-schema
     * mode; without it response_format json_schema goes through a forced
     * tool), "thinking" (Anthropic extended thinking), "reasoning_effort". */
    unsigned features;
    /* models.json "temperature_max": the highest temperature the model takes
     * (default 1 for Anthropic models, 2 for OpenAI-compatible ones). */
    double temperature_max;
    /* models.json "rejects" (and its provider's): option names
     * (llm/content.h) the model refuses, e.g. ["temperature","top_p","top_k"]
     * for Anthropic API version 2026-10-21. */
    char **rejects;
    size_t n_rejects;
    bool available;        /* its provider is configured (e.g. has a key) */
    const char *missing;   /* when not available: the variable to set */
    llm_provider provider; /* ready for llm_call_start; lives as long as the table */
} chat_model;

typedef struct model_table model_table;

/*
 * Builds the table from the built-in file, cfg->models_file (if non-empty) and
 * cfg (provider keys, URLs, deadlines). CHAT_MODEL must name a model of the
 * table. On failure writes a one-line reason into err and returns CHAT_EINVAL.
 */
chat_rc models_load(const struct chat_config *cfg, model_table **out, char *err, size_t errlen) CHAT_MUST_CHECK;

/* Frees the table. Accepts NULL. */
void models_free(model_table *t);

/* The model named name, or NULL. */
const chat_model *models_find(const model_table *t, const char *name);

/* The default model (CHAT_MODEL). Never NULL for a loaded table. */
const chat_model *models_default(const model_table *t);

size_t models_count(const model_table *t);
const chat_model *models_at(const model_table *t, size_t i);

/* The Anthropic API version whose models take no sampling parameters
 * (temperature, top_p, top_k): added to the rejects of every model of a
 * provider configured with it. */
#define ANTHROPIC_VERSION_NO_SAMPLING "2026-10-21"

enum {
    CHAT_MODEL_TOOLS = 1u << 0,
    CHAT_MODEL_VISION = 1u << 1,
    CHAT_MODEL_STRUCTURED_OUTPUT = 1u << 2,
    CHAT_MODEL_THINKING = 1u << 3,
    CHAT_MODEL_REASONING_EFFORT = 1u << 4,
};

/*
 * Checks request options (llm/content.h) against what model m and its
 * provider's wire format accept. Returns NULL when every option can be sent;
 * else the name of the first refused option (a static string, e.g.
 * "temperature"; for a key chatd does not know, the key as stored in options,
 * valid while options is) with why filled (one line naming the option, the
 * value when it is out of range, and the model, e.g. "temperature: 1.5 is
 * above 1, the most model claude-sonnet-4-6 accepts"). Never clamps or
 * rewrites a value. Options are checked in the order of llm/content.h, so the
 * first refusal does not depend on the client's key order.
 *
 * What a provider KIND can carry at all is code:
 *   Anthropic: temperature (0..temperature_max), top_p, top_k, stop, user,
 *     metadata; tools, tool_choice, parallel_tool_calls (need "tools");
 *     response_format json_object/json_schema (native with
 *     "structured_output", else through a forced tool, which needs "tools");
 *     thinking and reasoning_effort (need "thinking"; reasoning_effort maps to
 *     a thinking budget). Refused: seed, presence_penalty, frequency_penalty,
 *     logit_bias, logprobs, top_logprobs (but their no-op values, see
 *     models_strip_noops, are accepted).
 *   OpenAI-compatible: everything; thinking and reasoning_effort need
 *     "reasoning_effort" (thinking maps to it); top_k passes (vLLM and
 *     llama.cpp take it) unless the model's data rejects it.
 *   Both: n other than 1 (a turn has one reply).
 * What a MODEL refuses is data: models.json "rejects" on the model and on its
 * provider entry, merged. One rule is a fact of an API version and so is
 * code: with ANTHROPIC_VERSION (or a provider "version") 2026-10-21 every
 * model of that Anthropic provider refuses temperature, top_p and top_k
 * (ANTHROPIC_VERSION_NO_SAMPLING).
 */
const char *models_check_options(const chat_model *m, const json_t *options, char *why, size_t whylen);

/*
 * Removes from options (a JSON object, modified in place) the keys whose value
 * asks for nothing on m's provider, which models_check_options accepted for
 * that reason: "n": 1; "thinking": {"type":"disabled"} on a model without
 * thinking/reasoning; for Anthropic, zero penalties and top_logprobs,
 * "logprobs": false, an empty "logit_bias", "response_format": {"type":"text"};
 * for OpenAI-compatible providers, "metadata" (Anthropic's, nothing to map it
 * to). What is left is what the provider is given (llm_request.options).
 */
void models_strip_noops(const chat_model *m, json_t *options);

/*
 * Checks that m can read content (canonical blocks of a message): images need
 * "vision" (also inside a tool result), tool blocks "tools". Returns NULL, or
 * the missing feature's name ("vision" or "tools", static) with why filled
 * as above, naming the block ("content[1]: model gpt-x does not accept images").
 */
const char *models_check_content(const chat_model *m, const json_t *content, char *why, size_t whylen);

/* Cost in micro-dollars of usage on model m, rounded half up. Unknown (-1)
 * counts are treated as 0. */
int64_t models_cost_micros(const chat_model *m, const store_usage *u);

/* m's features as the names models.json uses, in a fixed order (a new
 * reference; GET /v1/models lists them). */
json_t *models_features(const chat_model *m);

#endif
