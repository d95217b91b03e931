/*
 * models.c: GET /v1/models (the models table with limits and prices) and
 * POST /v1/estimate (what given token counts would cost on each model, for the
 * playground's comparison table).
 */
#include <string.h>

#include "api/api.h"
#include "api/request.h"
#include "chat/models.h"
#include "core/json_in.h"

static json_t *per_mtok(int64_t micros)
{
    return json_real((double)micros / 1e6);
}

void api_v1_models(http_req *r, api_env *w, char **params)
{
    (void)params;
    const model_table *t = w->models;
    const chat_model *dflt = models_default(t);
    json_t *arr = json_array();
    for (size_t i = 0; i < models_count(t); i++) {
        const chat_model *m = models_at(t, i);
        json_t *fb = json_array();
        for (size_t k = 0; k < m->n_fallbacks; k++)
            json_array_append_new(fb, json_string(m->fallbacks[k]));
        json_t *rejects = json_array();
        for (size_t k = 0; k < m->n_rejects; k++)
            json_array_append_new(rejects, json_string(m->rejects[k]));
        json_t *o =
            json_pack("{s:s,s:s,s:s,s:I,s:I,s:b,s:b,s:o,s:{s:s,s:o,s:o,s:o,s:o}}", "id", m->name, "provider",
                      m->provider_name, "model_id", m->model_id, "context_window", (json_int_t)m->context_window,
                      "max_output", (json_int_t)m->max_output, "available", m->available, "default", m == dflt,
                      "fallbacks", fb, "pricing", "currency", "USD", "input_per_mtok", per_mtok(m->price.input),
                      "output_per_mtok", per_mtok(m->price.output), "cache_write_per_mtok",
                      per_mtok(m->price.cache_write), "cache_read_per_mtok", per_mtok(m->price.cache_read));
        /* What a request may ask of it (docs/API.md, "Request fields per provider"). */
        json_object_set_new(o, "features", models_features(m));
        json_object_set_new(o, "temperature_max", json_real(m->temperature_max));
        json_object_set_new(o, "rejects", rejects);
        json_array_append_new(arr, o);
    }
    http_reply_json(r, 200, json_pack("{s:o,s:s}", "data", arr, "default", dflt->name));
}

/* Reads a non-negative token count field (absent = 0); false if invalid. */
static bool count_field(json_t *root, const char *name, int64_t *out)
{
    json_t *v = json_object_get(root, name);
    *out = 0;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000000000LL)
        return false;
    *out = json_integer_value(v);
    return true;
}

json_t *api_estimate_parse(const char *body, size_t len, store_usage *u, json_t **only, const char **why)
{
    json_error_t jerr;
    json_t *root = chat_json_loadb(body, len, 0, &jerr);
    *only = NULL;
    if (!root || !json_is_object(root)) {
        json_decref(root);
        *why = "the body must be a JSON object of token counts";
        return NULL;
    }
    if (!count_field(root, "input_tokens", &u->input_tokens) ||
        !count_field(root, "output_tokens", &u->output_tokens) ||
        !count_field(root, "cache_read_input_tokens", &u->cache_read_tokens) ||
        !count_field(root, "cache_creation_input_tokens", &u->cache_write_tokens)) {
        json_decref(root);
        *why = "input_tokens, output_tokens, cache_read_input_tokens and cache_creation_input_tokens must be "
               "integers from 0 to 10^12";
        return NULL;
    }
    *only = json_object_get(root, "models");
    if (*only && !json_is_array(*only)) {
        json_decref(root);
        *only = NULL;
        *why = "models must be an array of model ids";
        return NULL;
    }
    return root;
}

void api_v1_estimate(http_req *r, api_env *w, char **params)
{
    (void)params;
    size_t len;
    const char *body = http_req_body(r, &len);
    store_usage u;
    json_t *only;
    const char *why;
    json_t *root = api_estimate_parse(body, len, &u, &only, &why);
    if (!root) {
        api_error(r, API_V1, 400, "invalid_request_error", "%s", why);
        return;
    }
    const model_table *t = w->models;
    json_t *arr = json_array();
    for (size_t i = 0; i < models_count(t); i++) {
        const chat_model *m = models_at(t, i);
        if (only) {
            bool wanted = false;
            size_t k;
            json_t *v;
            json_array_foreach(only, k, v) if (json_is_string(v) && strcmp(json_string_value(v), m->name) == 0) wanted =
                true;
            if (!wanted)
                continue;
        }
        json_array_append_new(arr, json_pack("{s:s,s:s,s:o}", "model", m->name, "provider", m->provider_name, "cost",
                                             api_cost_json(models_cost_micros(m, &u))));
    }
    json_decref(root);
    http_reply_json(r, 200,
                    json_pack("{s:{s:I,s:I,s:I,s:I},s:o}", "usage", "input_tokens", (json_int_t)u.input_tokens,
                              "output_tokens", (json_int_t)u.output_tokens, "cache_read_input_tokens",
                              (json_int_t)u.cache_read_tokens, "cache_creation_input_tokens",
                              (json_int_t)u.cache_write_tokens, "data", arr));
}
