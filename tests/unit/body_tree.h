/*
 * body_tree.h: a provider request body (llm_build_body) built the plain way,
 * as one jansson tree dumped by json_dumps: the reference that the bodies
 * chatd writes without a tree (core/json_out.h, chat_json_dumps_splice) must
 * equal byte for byte. For requests without options; messages with blocks
 * are sent as they are (Anthropic's shape: the caller gives only blocks the
 * provider keeps whole). Used by the provider unit tests and by
 * tests/fuzz/fuzz_provider_body.c. Header-only; heap result or NULL (a string
 * that is not UTF-8).
 */
#ifndef CHATD_TESTS_BODY_TREE_H
#define CHATD_TESTS_BODY_TREE_H

#include <stdbool.h>
#include <string.h>

#include <jansson.h>

#include "llm/call_internal.h"

static char *body_tree_reference(const llm_provider *p, const llm_request *req)
{
    bool openai = p->kind == LLM_PROVIDER_OPENAI;
    json_t *root = json_object();
    json_object_set_new(root, "model", json_string(req->model));
    if (!openai)
        json_object_set_new(root, "max_tokens", json_integer(req->max_tokens));
    json_t *msgs = json_array();
    if (req->system && *req->system) {
        json_t *sys = json_string(req->system);
        if (!sys) {
            json_decref(msgs);
            json_decref(root);
            return NULL;
        }
        if (openai)
            json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", "system", "content", sys));
        else
            json_object_set_new(root, "system", sys);
    }
    for (size_t i = 0; i < req->n_messages; i++) {
        const llm_message *m = &req->messages[i];
        json_t *content = m->blocks ? json_deep_copy(m->blocks) : json_stringn_nocheck(m->content, strlen(m->content));
        json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", m->role, "content", content));
    }
    json_object_set_new(root, "messages", msgs);
    if (openai) {
        json_object_set_new(root, "max_tokens", json_integer(req->max_tokens));
        json_object_set_new(root, "stream", json_boolean(req->stream));
        if (req->stream)
            json_object_set_new(root, "stream_options", json_pack("{s:b}", "include_usage", 1));
    } else if (req->stream) {
        json_object_set_new(root, "stream", json_true());
    }
    if (p->prompt_caching)
        (void)llm_anthropic_mark_cache(root, p->cache_min_tokens);
    char *out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return out;
}

#endif
