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

/* Cost in micro-dollars of usage on model m, rounded half up. Unknown (-1)
 * counts are treated as 0. */
int64_t models_cost_micros(const chat_model *m, const store_usage *u);

#endif
