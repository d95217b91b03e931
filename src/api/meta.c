/*
 * meta.c: liveness, readiness, and the API's own documentation (the OpenAPI
 * document and a page rendering it), served from assets embedded at build time.
 */
#include "api/api.h"
#include "core/assets.h"

static void serve_asset(http_req *r, const char *name, const char *content_type)
{
    const struct chat_asset *a = chat_asset_find(name);
    if (!a) {
        api_error(r, API_V1, 404, "not_found_error", "%s is not built into this binary", name);
        return;
    }
    http_add_header(r, "Cache-Control", "no-cache");
    http_reply(r, 200, content_type, (const char *)a->data, a->len);
}

void api_openapi(http_req *r, chat_worker *w, char **params)
{
    (void)w;
    (void)params;
    serve_asset(r, "docs/openapi.json", "application/json");
}

void api_docs(http_req *r, chat_worker *w, char **params)
{
    (void)w;
    (void)params;
    serve_asset(r, "web/docs.html", "text/html; charset=utf-8");
}

void api_root(http_req *r, chat_worker *w, char **params)
{
    (void)w;
    (void)params;
    http_reply_json(r, 200, json_pack("{s:s,s:s}", "status", "ok", "service", "chat-api"));
}

void api_healthz(http_req *r, chat_worker *w, char **params)
{
    (void)w;
    (void)params;
    http_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

void api_readyz(http_req *r, chat_worker *w, char **params)
{
    (void)params;
    if (atomic_load(&w->app->stopping)) {
        http_reply_json(r, 503, json_pack("{s:s,s:s}", "status", "unavailable", "reason", "shutting down"));
        return;
    }
    if (store_ping(w->db) != CHAT_OK) {
        http_reply_json(r, 503, json_pack("{s:s,s:s}", "status", "unavailable", "reason",
                                          "database not answering"));
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s}", "status", "ready"));
}
