/*
 * models.c: loading and merging the models table (see models.h).
 */
#define _GNU_SOURCE
#include "chat/models.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/alloc.h"
#include "core/assets.h"
#include "core/json_in.h"
#include "core/util.h"

#define MAX_MODELS 256
#define MAX_PROVIDERS 32
#define MAX_FALLBACKS 8

typedef struct provider_entry {
    char *name;
    llm_provider_kind kind;
    char *base_url;
    char *api_key;
    char *version;
    char *key_env;          /* variable that holds the key, "" if none is needed */
    char *max_tokens_field; /* OpenAI-compatible: "max_tokens" or "max_completion_tokens" */
    char **rejects;         /* "rejects": options every model of the provider refuses */
    size_t n_rejects;
    bool configured;
} provider_entry;

struct model_table {
    provider_entry providers[MAX_PROVIDERS];
    size_t n_providers;
    chat_model models[MAX_MODELS];
    size_t n_models;
    const chat_model *dflt;
};

static provider_entry *provider_find(model_table *t, const char *name)
{
    for (size_t i = 0; i < t->n_providers; i++)
        if (strcmp(t->providers[i].name, name) == 0)
            return &t->providers[i];
    return NULL;
}

static void provider_clear(provider_entry *p)
{
    free(p->name);
    free(p->base_url);
    free(p->api_key);
    free(p->version);
    free(p->key_env);
    free(p->max_tokens_field);
    for (size_t i = 0; i < p->n_rejects; i++)
        free(p->rejects[i]);
    free(p->rejects);
    memset(p, 0, sizeof *p);
}

static provider_entry *provider_add(model_table *t, const char *name)
{
    provider_entry *p = provider_find(t, name);
    if (p) {
        provider_clear(p);
    } else {
        if (t->n_providers == MAX_PROVIDERS)
            return NULL;
        p = &t->providers[t->n_providers++];
    }
    p->name = chat_xstrdup(name);
    return p;
}

static void model_clear(chat_model *m)
{
    free(m->name);
    free(m->provider_name);
    free(m->model_id);
    for (size_t i = 0; i < m->n_fallbacks; i++)
        free(m->fallbacks[i]);
    free(m->fallbacks);
    for (size_t i = 0; i < m->n_rejects; i++)
        free(m->rejects[i]);
    free(m->rejects);
    memset(m, 0, sizeof *m);
}

/* Dollars per million tokens -> integer micro-dollars per million tokens. */
static bool price_of(json_t *obj, const char *key, int64_t *out, char *err, size_t errlen, const char *model)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = 0;
        return true;
    }
    if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1e6) {
        chat_set_err(err, errlen, "model %s: price.%s must be a number of dollars per million tokens", model, key);
        return false;
    }
    *out = (int64_t)llround(json_number_value(v) * 1e6);
    return true;
}


/* ---- what a model accepts: features, temperature_max, rejects ---- */

static const struct {
    const char *name;
    unsigned bit;
} feature_names[] = {
    { "tools", CHAT_MODEL_TOOLS },
    { "vision", CHAT_MODEL_VISION },
    { "structured_output", CHAT_MODEL_STRUCTURED_OUTPUT },
    { "thinking", CHAT_MODEL_THINKING },
    { "reasoning_effort", CHAT_MODEL_REASONING_EFFORT },
};

#define N_FEATURES (sizeof feature_names / sizeof feature_names[0])

json_t *models_features(const chat_model *m)
{
    json_t *a = json_array();
    for (size_t k = 0; k < N_FEATURES; k++)
        if (m->features & feature_names[k].bit)
            json_array_append_new(a, json_string(feature_names[k].name));
    return a;
}

/* Every option name of llm/content.h: what "rejects" may list, and the
 * static strings models_check_options returns. */
static const char *const option_names[] = {
    "temperature",
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
    "reasoning_effort",
};

#define N_OPTIONS (sizeof option_names / sizeof option_names[0])

/* The static name of option key, or NULL for a key chatd does not know. */
static const char *option_name(const char *key)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(option_names[i], key) == 0)
            return option_names[i];
    return NULL;
}

static bool load_features(chat_model *cm, json_t *arr, const char *src, char *err, size_t errlen)
{
    if (!arr)
        return true;
    if (!json_is_array(arr)) {
        chat_set_err(err, errlen, "%s: model %s: \"features\" must be an array of names", src, cm->name);
        return false;
    }
    size_t i;
    json_t *f;
    json_array_foreach(arr, i, f)
    {
        const char *name = json_string_value(f);
        size_t k = 0;
        while (name && k < N_FEATURES && strcmp(feature_names[k].name, name) != 0)
            k++;
        if (!name || k == N_FEATURES) {
            chat_set_err(err, errlen,
                         "%s: model %s: unknown feature %s%.64s%s (known: tools, vision, structured_output, thinking, "
                         "reasoning_effort)",
                         src, cm->name, name ? "\"" : "", name ? name : "(not a string)", name ? "\"" : "");
            return false;
        }
        cm->features |= feature_names[k].bit;
    }
    return true;
}

/* Appends name to a list of rejected options unless it is there already. */
static void rejects_add(char ***list, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*list)[i], name) == 0)
            return;
    *list = chat_xrealloc(*list, (*n + 1) * sizeof **list);
    (*list)[(*n)++] = chat_xstrdup(name);
}

/* "rejects" of a model or a provider (whose): option names only. */
static bool load_rejects(json_t *arr, char ***list, size_t *n, const char *src, const char *whose, char *err,
                         size_t errlen)
{
    if (!arr)
        return true;
    if (!json_is_array(arr) || json_array_size(arr) > N_OPTIONS) {
        chat_set_err(err, errlen, "%s: %s: \"rejects\" must be an array of option names", src, whose);
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        const char *name = json_string_value(v);
        if (!name || !option_name(name)) {
            chat_set_err(err, errlen, "%s: %s: \"rejects\" names an unknown option %s%.64s%s", src, whose,
                         name ? "\"" : "", name ? name : "(not a string)", name ? "\"" : "");
            return false;
        }
        rejects_add(list, n, name);
    }
    return true;
}

static bool load_providers(model_table *t, json_t *obj, const char *src, char *err, size_t errlen)
{
    const char *name;
    json_t *p;
    if (!obj)
        return true;
    if (!json_is_object(obj)) {
        chat_set_err(err, errlen, "%s: \"providers\" must be an object", src);
        return false;
    }
    json_object_foreach(obj, name, p)
    {
        const char *type = json_string_value(json_object_get(p, "type"));
        const char *url = json_string_value(json_object_get(p, "base_url"));
        const char *key_env = json_string_value(json_object_get(p, "api_key_env"));
        if (!json_is_object(p) || !type || !url || (strcmp(type, "openai") && strcmp(type, "anthropic"))) {
            chat_set_err(err, errlen, "%s: provider %s needs \"type\" (openai|anthropic) and \"base_url\"", src, name);
            return false;
        }
        if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
            chat_set_err(err, errlen, "%s: provider %s: base_url must start with http:// or https://", src, name);
            return false;
        }
        provider_entry *e = provider_add(t, name);
        if (!e) {
            chat_set_err(err, errlen, "%s: too many providers (max %d)", src, MAX_PROVIDERS);
            return false;
        }
        e->kind = strcmp(type, "openai") == 0 ? LLM_PROVIDER_OPENAI : LLM_PROVIDER_ANTHROPIC;
        e->base_url = chat_xstrdup(url);
        size_t ul = strlen(e->base_url);
        if (ul > 0 && e->base_url[ul - 1] == '/')
            e->base_url[ul - 1] = '\0';
        e->key_env = chat_xstrdup(key_env ? key_env : "");
        const char *key = key_env && *key_env ? getenv(key_env) : NULL;
        e->api_key = chat_xstrdup(key ? key : "");
        e->version = chat_xstrdup(json_string_value(json_object_get(p, "version")) ?: "2023-06-01");
        const char *mtf = json_string_value(json_object_get(p, "max_tokens_field"));
        if (mtf && strcmp(mtf, "max_tokens") && strcmp(mtf, "max_completion_tokens")) {
            chat_set_err(err, errlen, "%s: provider %s: max_tokens_field must be max_tokens or max_completion_tokens",
                         src, name);
            return false;
        }
        e->max_tokens_field = chat_xstrdup(mtf);
        char whose[96];
        snprintf(whose, sizeof whose, "provider %s", name);
        if (!load_rejects(json_object_get(p, "rejects"), &e->rejects, &e->n_rejects, src, whose, err, errlen))
            return false;
        /* A provider that names no key variable (a local server) needs none. */
        e->configured = !(key_env && *key_env) || (key && *key);
    }
    return true;
}

static bool load_models(model_table *t, json_t *arr, const char *src, char *err, size_t errlen)
{
    size_t i;
    json_t *m;
    if (!arr)
        return true;
    if (!json_is_array(arr)) {
        chat_set_err(err, errlen, "%s: \"models\" must be an array", src);
        return false;
    }
    json_array_foreach(arr, i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        const char *prov = json_string_value(json_object_get(m, "provider"));
        if (!json_is_object(m) || !name || !*name || !prov) {
            chat_set_err(err, errlen, "%s: models[%zu] needs \"name\" and \"provider\"", src, i);
            return false;
        }
        chat_model *cm = (chat_model *)models_find(t, name);
        if (cm) {
            model_clear(cm);
        } else {
            if (t->n_models == MAX_MODELS) {
                chat_set_err(err, errlen, "%s: too many models (max %d)", src, MAX_MODELS);
                return false;
            }
            cm = &t->models[t->n_models++];
        }
        cm->name = chat_xstrdup(name);
        cm->provider_name = chat_xstrdup(prov);
        cm->model_id = chat_xstrdup(json_string_value(json_object_get(m, "model_id")) ?: name);
        json_t *cw = json_object_get(m, "context_window"), *mo = json_object_get(m, "max_output");
        json_t *cmin = json_object_get(m, "cache_min_tokens");
        if (!json_is_integer(cw) || json_integer_value(cw) < 1 || !json_is_integer(mo) || json_integer_value(mo) < 1 ||
            (cmin && !json_is_integer(cmin))) {
            chat_set_err(err, errlen, "%s: model %s needs integer \"context_window\" and \"max_output\" >= 1", src,
                         name);
            return false;
        }
        cm->context_window = json_integer_value(cw);
        cm->max_output = json_integer_value(mo);
        cm->cache_min_tokens = cmin ? json_integer_value(cmin) : 0;
        json_t *price = json_object_get(m, "price");
        if (price && !json_is_object(price)) {
            chat_set_err(err, errlen, "%s: model %s: \"price\" must be an object", src, name);
            return false;
        }
        if (!price_of(price, "input", &cm->price.input, err, errlen, name) ||
            !price_of(price, "output", &cm->price.output, err, errlen, name) ||
            !price_of(price, "cache_write", &cm->price.cache_write, err, errlen, name) ||
            !price_of(price, "cache_read", &cm->price.cache_read, err, errlen, name))
            return false;
        if (!load_features(cm, json_object_get(m, "features"), src, err, errlen))
            return false;
        json_t *tmax = json_object_get(m, "temperature_max");
        if (tmax && (!json_is_number(tmax) || json_number_value(tmax) <= 0 || json_number_value(tmax) > 10)) {
            chat_set_err(err, errlen, "%s: model %s: \"temperature_max\" must be a number above 0 (at most 10)", src,
                         name);
            return false;
        }
        cm->temperature_max = tmax ? json_number_value(tmax) : 0; /* 0: the provider kind's, set on resolving */
        char whose[320];
        snprintf(whose, sizeof whose, "model %s", name);
        if (!load_rejects(json_object_get(m, "rejects"), &cm->rejects, &cm->n_rejects, src, whose, err, errlen))
            return false;
        json_t *fb = json_object_get(m, "fallbacks");
        if (fb && (!json_is_array(fb) || json_array_size(fb) > MAX_FALLBACKS)) {
            chat_set_err(err, errlen, "%s: model %s: \"fallbacks\" must be an array of at most %d names", src, name,
                         MAX_FALLBACKS);
            return false;
        }
        if (fb && json_array_size(fb) > 0) {
            cm->fallbacks = chat_xcalloc(json_array_size(fb), sizeof *cm->fallbacks);
            size_t k;
            json_t *f;
            json_array_foreach(fb, k, f)
            {
                if (!json_is_string(f)) {
                    chat_set_err(err, errlen, "%s: model %s: fallbacks must be model names", src, name);
                    return false;
                }
                cm->fallbacks[cm->n_fallbacks++] = chat_xstrdup(json_string_value(f));
            }
        }
    }
    return true;
}

static bool load_doc(model_table *t, json_t *doc, const char *src, char *err, size_t errlen)
{
    if (!json_is_object(doc)) {
        chat_set_err(err, errlen, "%s: the models table must be a JSON object", src);
        return false;
    }
    return load_providers(t, json_object_get(doc, "providers"), src, err, errlen) &&
           load_models(t, json_object_get(doc, "models"), src, err, errlen);
}

chat_rc models_load(const struct chat_config *cfg, model_table **out, char *err, size_t errlen)
{
    model_table *t = chat_xcalloc(1, sizeof *t);
    json_error_t jerr;
    json_t *doc = NULL;

    /* The two providers configured by variables. */
    provider_entry *a = provider_add(t, "anthropic");
    a->kind = LLM_PROVIDER_ANTHROPIC;
    a->base_url = chat_xstrdup(cfg->anthropic_base_url);
    a->api_key = chat_xstrdup(cfg->anthropic_api_key);
    a->version = chat_xstrdup(cfg->anthropic_version);
    a->key_env = chat_xstrdup("ANTHROPIC_API_KEY");
    a->configured = cfg->anthropic_api_key && *cfg->anthropic_api_key;
    provider_entry *o = provider_add(t, "openai");
    o->kind = LLM_PROVIDER_OPENAI;
    o->base_url = chat_xstrdup(cfg->openai_base_url);
    o->api_key = chat_xstrdup(cfg->openai_api_key);
    o->version = chat_xstrdup("");
    o->key_env = chat_xstrdup("OPENAI_API_KEY");
    /* A non-default base URL may be a local server that wants no key. */
    o->configured =
        (cfg->openai_api_key && *cfg->openai_api_key) || strcmp(cfg->openai_base_url, "https://api.openai.com/v1") != 0;

    const struct chat_asset *builtin = chat_asset_find("config/models.json");
    if (!builtin) {
        chat_set_err(err, errlen, "the built-in models table is missing from this binary");
        goto fail;
    }
    doc = chat_json_loadb((const char *)builtin->data, builtin->len, 0, &jerr);
    if (!doc) {
        chat_set_err(err, errlen, "built-in models table: %s (line %d)", jerr.text, jerr.line);
        goto fail;
    }
    if (!load_doc(t, doc, "built-in models table", err, errlen))
        goto fail;
    json_decref(doc);
    doc = NULL;

    if (cfg->models_file && *cfg->models_file) {
        doc = json_load_file(cfg->models_file, 0, &jerr);
        if (!doc) {
            chat_set_err(err, errlen, "MODELS_FILE %s: %s (line %d)", cfg->models_file, jerr.text, jerr.line);
            goto fail;
        }
        if (!load_doc(t, doc, cfg->models_file, err, errlen))
            goto fail;
        json_decref(doc);
        doc = NULL;
    }

    /* Resolve providers and fallbacks now, so that a broken table fails at start. */
    for (size_t i = 0; i < t->n_models; i++) {
        chat_model *m = &t->models[i];
        provider_entry *p = provider_find(t, m->provider_name);
        if (!p) {
            chat_set_err(err, errlen, "model %s names an unknown provider %s", m->name, m->provider_name);
            goto fail;
        }
        for (size_t k = 0; k < m->n_fallbacks; k++)
            if (!models_find(t, m->fallbacks[k]) || strcmp(m->fallbacks[k], m->name) == 0) {
                chat_set_err(err, errlen, "model %s: fallback %s is not another model of the table", m->name,
                             m->fallbacks[k]);
                goto fail;
            }
        m->available = p->configured;
        m->missing = p->configured ? NULL : p->key_env;
        llm_provider *lp = &m->provider;
        lp->kind = p->kind;
        lp->name = p->name;
        lp->base_url = p->base_url;
        lp->api_key = p->api_key;
        lp->version = p->version;
        lp->connect_timeout_ms = cfg->provider_connect_timeout_ms;
        lp->first_byte_timeout_ms = cfg->provider_first_byte_timeout_ms;
        lp->idle_timeout_ms = cfg->provider_idle_timeout_ms;
        lp->total_timeout_ms = cfg->turn_timeout_ms;
        lp->max_retries = cfg->provider_max_retries;
        lp->retry_base_ms = 500;
        lp->retry_max_wait_ms = cfg->retry_max_wait_ms;
        lp->max_response_bytes = 8u << 20;
        lp->max_tokens_field = p->max_tokens_field;
        lp->prompt_caching = cfg->prompt_caching && p->kind == LLM_PROVIDER_ANTHROPIC;
        lp->cache_min_tokens = m->cache_min_tokens;
        if (m->temperature_max <= 0)
            m->temperature_max = p->kind == LLM_PROVIDER_ANTHROPIC ? 1.0 : 2.0;
        for (size_t k = 0; k < p->n_rejects; k++)
            rejects_add(&m->rejects, &m->n_rejects, p->rejects[k]);
        if (p->kind == LLM_PROVIDER_ANTHROPIC && p->version && strcmp(p->version, ANTHROPIC_VERSION_NO_SAMPLING) == 0) {
            rejects_add(&m->rejects, &m->n_rejects, "temperature");
            rejects_add(&m->rejects, &m->n_rejects, "top_p");
            rejects_add(&m->rejects, &m->n_rejects, "top_k");
        }
    }
    t->dflt = models_find(t, cfg->chat_model);
    if (!t->dflt) {
        chat_set_err(err, errlen, "CHAT_MODEL %s is not in the models table (add it with MODELS_FILE)",
                     cfg->chat_model);
        goto fail;
    }
    *out = t;
    return CHAT_OK;
fail:
    json_decref(doc);
    models_free(t);
    *out = NULL;
    return CHAT_EINVAL;
}

void models_free(model_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_models; i++)
        model_clear(&t->models[i]);
    for (size_t i = 0; i < t->n_providers; i++)
        provider_clear(&t->providers[i]);
    free(t);
}

const chat_model *models_find(const model_table *t, const char *name)
{
    for (size_t i = 0; name && i < t->n_models; i++)
        if (strcmp(t->models[i].name, name) == 0)
            return &t->models[i];
    return NULL;
}

const chat_model *models_default(const model_table *t)
{
    return t->dflt;
}

size_t models_count(const model_table *t)
{
    return t->n_models;
}

const chat_model *models_at(const model_table *t, size_t i)
{
    return i < t->n_models ? &t->models[i] : NULL;
}

/* ---- checking a request against a model ---- */

static bool has(const chat_model *m, unsigned feature)
{
    return (m->features & feature) != 0;
}

static bool rejected_by_data(const chat_model *m, const char *key)
{
    for (size_t i = 0; i < m->n_rejects; i++)
        if (strcmp(m->rejects[i], key) == 0)
            return true;
    return false;
}

static bool is_zero(const json_t *v)
{
    return json_is_number(v) && json_number_value(v) == 0;
}

/* True when option key with value v asks for nothing (the provider's own
 * default): it is accepted whatever the model and left out of the request
 * (models_strip_noops). */
static bool noop(const chat_model *m, const char *key, const json_t *v)
{
    bool anthropic = m->provider.kind == LLM_PROVIDER_ANTHROPIC;
    if (strcmp(key, "n") == 0)
        return json_is_integer(v) && json_integer_value(v) == 1;
    if (strcmp(key, "thinking") == 0) {
        const char *type = json_string_value(json_object_get(v, "type"));
        unsigned need = anthropic ? CHAT_MODEL_THINKING : CHAT_MODEL_REASONING_EFFORT;
        return type && strcmp(type, "disabled") == 0 && !has(m, need);
    }
    if (!anthropic)
        return strcmp(key, "metadata") == 0; /* Anthropic's; not sent to OpenAI-compatible servers */
    if (strcmp(key, "presence_penalty") == 0 || strcmp(key, "frequency_penalty") == 0 ||
        strcmp(key, "top_logprobs") == 0)
        return is_zero(v);
    if (strcmp(key, "logprobs") == 0)
        return json_is_false(v);
    if (strcmp(key, "logit_bias") == 0)
        return json_is_object(v) && json_object_size(v) == 0;
    if (strcmp(key, "response_format") == 0) {
        const char *type = json_string_value(json_object_get(v, "type"));
        return type && strcmp(type, "text") == 0;
    }
    return false;
}

/* Fills why with "<key>: <reason>" and returns key (static). */
static const char *refuse(char *why, size_t whylen, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static const char *refuse(char *why, size_t whylen, const char *key, const char *fmt, ...)
{
    char reason[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (why && whylen > 0)
        snprintf(why, whylen, "%s: %s", key, reason);
    return key;
}

/* One known option (name static) with value v on model m: NULL or name. */
static const char *check_option(const chat_model *m, const char *name, const json_t *v, char *why, size_t whylen)
{
    bool anthropic = m->provider.kind == LLM_PROVIDER_ANTHROPIC;
    const char *prov = m->provider_name;
    if (noop(m, name, v))
        return NULL;
    if (rejected_by_data(m, name))
        return refuse(why, whylen, name, "model %s does not accept this parameter", m->name);
    if (strcmp(name, "temperature") == 0) {
        if (!json_is_number(v))
            return refuse(why, whylen, name, "must be a number (model %s)", m->name);
        double t = json_number_value(v);
        if (t < 0)
            return refuse(why, whylen, name, "%g is below 0, the least model %s accepts", t, m->name);
        if (t > m->temperature_max)
            return refuse(why, whylen, name, "%g is above %g, the most model %s accepts", t, m->temperature_max,
                          m->name);
        return NULL;
    }
    if (strcmp(name, "top_p") == 0) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1)
            return refuse(why, whylen, name, "must be a number from 0 to 1 (model %s)", m->name);
        return NULL;
    }
    if (strcmp(name, "top_k") == 0) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return refuse(why, whylen, name, "must be an integer of at least 1 (model %s)", m->name);
        return NULL;
    }
    if (strcmp(name, "stop") == 0) {
        size_t i;
        const json_t *s;
        if (!json_is_array(v))
            return refuse(why, whylen, name, "must be an array of strings (model %s)", m->name);
        json_array_foreach(v, i, s) if (!json_is_string(s) || json_string_length(s) == 0) return refuse(
            why, whylen, name, "must be an array of non-empty strings (model %s)", m->name);
        return NULL;
    }
    if (strcmp(name, "n") == 0)
        return refuse(why, whylen, name, "only 1 is supported: a turn has one reply (model %s)", m->name);
    if (strcmp(name, "user") == 0)
        return json_is_string(v) ? NULL : refuse(why, whylen, name, "must be a string (model %s)", m->name);
    if (strcmp(name, "metadata") == 0)
        return json_is_object(v) ? NULL : refuse(why, whylen, name, "must be an object (model %s)", m->name);
    if (strcmp(name, "seed") == 0 || strcmp(name, "presence_penalty") == 0 || strcmp(name, "frequency_penalty") == 0 ||
        strcmp(name, "logit_bias") == 0 || strcmp(name, "logprobs") == 0 || strcmp(name, "top_logprobs") == 0) {
        if (anthropic)
            return refuse(why, whylen, name,
                          "model %s (provider %s, Anthropic Messages API) does not support this "
                          "parameter",
                          m->name, prov);
        return NULL;
    }
    if (strcmp(name, "tools") == 0 || strcmp(name, "tool_choice") == 0 || strcmp(name, "parallel_tool_calls") == 0) {
        if (!has(m, CHAT_MODEL_TOOLS))
            return refuse(why, whylen, name, "model %s does not support tool use", m->name);
        return NULL;
    }
    if (strcmp(name, "response_format") == 0) {
        const char *type = json_string_value(json_object_get(v, "type"));
        if (!type || (strcmp(type, "json_object") != 0 && strcmp(type, "json_schema") != 0))
            return refuse(why, whylen, name, "type must be text, json_object or json_schema (model %s)", m->name);
        if (!has(m, CHAT_MODEL_STRUCTURED_OUTPUT) && !has(m, CHAT_MODEL_TOOLS))
            return refuse(why, whylen, name, "model %s supports neither structured output nor tool use", m->name);
        return NULL;
    }
    if (strcmp(name, "thinking") == 0) {
        unsigned need = anthropic ? CHAT_MODEL_THINKING : CHAT_MODEL_REASONING_EFFORT;
        if (!has(m, need))
            return refuse(why, whylen, name, "model %s does not support %s", m->name,
                          anthropic ? "extended thinking" : "reasoning (reasoning_effort)");
        return NULL;
    }
    if (strcmp(name, "reasoning_effort") == 0) {
        unsigned need = anthropic ? CHAT_MODEL_THINKING : CHAT_MODEL_REASONING_EFFORT;
        if (!has(m, need))
            return refuse(why, whylen, name, "model %s does not support %s", m->name,
                          anthropic ? "extended thinking" : "reasoning_effort");
        return NULL;
    }
    return NULL;
}

const char *models_check_options(const chat_model *m, const json_t *options, char *why, size_t whylen)
{
    if (!options)
        return NULL;
    if (!json_is_object(options))
        return refuse(why, whylen, "options", "must be an object");
    /* In the table's order, so that the first refusal does not depend on the client's key order. */
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const json_t *v = json_object_get(options, option_names[i]);
        const char *r = v ? check_option(m, option_names[i], v, why, whylen) : NULL;
        if (r)
            return r;
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)options, key, v)
    {
        if (!option_name(key)) {
            if (why && whylen > 0)
                snprintf(why, whylen, "%.64s: an unknown parameter (model %s)", key, m->name);
            return key;
        }
    }
    return NULL;
}

void models_strip_noops(const chat_model *m, json_t *options)
{
    for (size_t i = 0; json_is_object(options) && i < N_OPTIONS; i++) {
        const json_t *v = json_object_get(options, option_names[i]);
        if (v && noop(m, option_names[i], v))
            json_object_del(options, option_names[i]);
    }
}

/* The first block of content (or of a tool result in it) needing a feature m lacks. */
static const char *check_blocks(const chat_model *m, const json_t *content, const char *path, char *why, size_t whylen)
{
    size_t i;
    const json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type)
            continue;
        if (strcmp(type, "image") == 0 && !has(m, CHAT_MODEL_VISION)) {
            if (why && whylen > 0)
                snprintf(why, whylen, "%s[%zu]: model %s does not accept images", path, i, m->name);
            return "vision";
        }
        if ((strcmp(type, "tool_use") == 0 || strcmp(type, "tool_result") == 0) && !has(m, CHAT_MODEL_TOOLS)) {
            if (why && whylen > 0)
                snprintf(why, whylen, "%s[%zu]: model %s does not support tool use (a %s block)", path, i, m->name,
                         type);
            return "tools";
        }
        const json_t *inner = json_object_get(b, "content");
        if (strcmp(type, "tool_result") == 0 && json_is_array(inner)) {
            char sub[64];
            snprintf(sub, sizeof sub, "%s[%zu].content", path, i);
            const char *r = check_blocks(m, inner, sub, why, whylen);
            if (r)
                return r;
        }
    }
    return NULL;
}

const char *models_check_content(const chat_model *m, const json_t *content, char *why, size_t whylen)
{
    return content ? check_blocks(m, content, "content", why, whylen) : NULL;
}

int64_t models_cost_micros(const chat_model *m, const store_usage *u)
{
    /* sum(tokens * micro-dollars per million) / 1e6, in 128-bit to be safe. */
    __int128 sum = 0;
    const int64_t counts[4] = { u->input_tokens, u->output_tokens, u->cache_write_tokens, u->cache_read_tokens };
    const int64_t prices[4] = { m->price.input, m->price.output, m->price.cache_write, m->price.cache_read };
    for (int i = 0; i < 4; i++)
        if (counts[i] > 0)
            sum += (__int128)counts[i] * prices[i];
    return (int64_t)((sum + 500000) / 1000000);
}
