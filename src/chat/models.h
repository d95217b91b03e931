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
 * "temperature") with why filled (one line naming the option, the value when
 * it is out of range, and the model). Never clamps or rewrites a value.
 */
const char *models_check_options(const chat_model *m, const json_t *options, char *why, size_t whylen);

/*
 * Checks that m can read content (canonical blocks of a message): images need
 * "vision", tool blocks "tools". Returns NULL, or the missing feature's name
 * with why filled as above.
 */
const char *models_check_content(const chat_model *m, const json_t *content, char *why, size_t whylen);

/* Cost in micro-dollars of usage on model m, rounded half up. Unknown (-1)
 * counts are treated as 0. */
int64_t models_cost_micros(const chat_model *m, const store_usage *u);

#endif
