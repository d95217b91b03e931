/*
 * models.c: loading and merging the models table (see models.h).
 */
#define _GNU_SOURCE
#include "chat/models.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/alloc.h"
#include "core/assets.h"
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
    doc = json_loadb((const char *)builtin->data, builtin->len, 0, &jerr);
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
