/*
 * meta.c: liveness and readiness.
 */
#include "api/api.h"

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
