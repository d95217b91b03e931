/*
 * meta.c: liveness, readiness, and the API's own documentation (the OpenAPI
 * document and a page rendering it), served from assets embedded at build time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/assets.h"
#include "core/metrics.h"
#include "core/util.h"

static const char *content_type_of(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        { ".html", "text/html; charset=utf-8" },
        { ".js", "text/javascript; charset=utf-8" },
        { ".mjs", "text/javascript; charset=utf-8" },
        { ".css", "text/css; charset=utf-8" },
        { ".json", "application/json" },
        { ".svg", "image/svg+xml" },
        { ".png", "image/png" },
        { ".ico", "image/x-icon" },
        { ".txt", "text/plain; charset=utf-8" },
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

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

/* Serves prefix + name from the embedded assets; names are single path
 * segments (the router never gives a '/'), so nothing outside prefix is reachable. */
static void serve_named(http_req *r, const char *prefix, const char *name)
{
    char full[256];
    if (!name || !*name || name[0] == '.' || strlen(name) > 128) {
        api_error(r, API_V1, 404, "not_found_error", "no such file");
        return;
    }
    snprintf(full, sizeof full, "%s%s", prefix, name);
    if (!chat_asset_find(full)) {
        api_error(r, API_V1, 404, "not_found_error", "no such file: %s", name);
        return;
    }
    serve_asset(r, full, content_type_of(full));
}

void api_ui_redirect(http_req *r, api_env *w, char **params)
{
    (void)w;
    (void)params;
    http_add_header(r, "Location", "/ui/");
    http_reply(r, 308, "text/plain; charset=utf-8", "/ui/\n", 5);
}

void api_ui_file(http_req *r, api_env *w, char **params)
{
    (void)w;
    serve_named(r, "web/ui/", params[0] ? params[0] : "index.html");
}

void api_ui_lib(http_req *r, api_env *w, char **params)
{
    (void)w;
    serve_named(r, "src/", params[0]);
}

void api_metrics(http_req *r, api_env *w, char **params)
{
    (void)w;
    (void)params;
    size_t len = 0;
    char *text = metrics_render(&len);
    http_reply(r, 200, METRICS_CONTENT_TYPE, text ? text : "", text ? len : 0);
    free(text);
}

void api_openapi(http_req *r, api_env *w, char **params)
{
    (void)w;
    (void)params;
    serve_asset(r, "docs/openapi.json", "application/json");
}

void api_docs(http_req *r, api_env *w, char **params)
{
    (void)w;
    (void)params;
    serve_asset(r, "web/docs.html", "text/html; charset=utf-8");
}

void api_root(http_req *r, api_env *w, char **params)
{
    (void)w;
    (void)params;
    http_reply_json(r, 200, json_pack("{s:s,s:s}", "status", "ok", "service", "chat-api"));
}

void api_healthz(http_req *r, api_env *w, char **params)
{
    (void)w;
    (void)params;
    http_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/*
 * /readyz pings the database, but not on every call: a flood of probes must
 * not become a flood of database round trips. Each worker reuses its last
 * ping's outcome (ready or not) for READYZ_REUSE_MS, and requests arriving
 * while a ping is in flight wait for that ping (up to API_READYZ_WAITERS of
 * them; any more send their own). So a worker pings at most about once per
 * READYZ_REUSE_MS under any load, and a database that stops or comes back
 * shows within that time.
 */
#define READYZ_REUSE_MS 1000

static void readyz_answer(http_req *r, bool ok)
{
    if (!ok)
        http_reply_json(r, 503, json_pack("{s:s,s:s}", "status", "unavailable", "reason", "database not answering"));
    else
        http_reply_json(r, 200, json_pack("{s:s}", "status", "ready"));
}

/* The shared ping answered: remember it, answer every waiter. */
static void on_pinged(store_op *op, void *ud)
{
    api_env *w = ud;
    api_readyz_state *z = &w->readyz;
    z->ok = op->rc == CHAT_OK;
    z->at_ms = chat_mono_ms();
    z->pinging = false;
    int n = z->nwaiters;
    z->nwaiters = 0;
    for (int i = 0; i < n; i++) {
        readyz_answer(z->waiters[i], z->ok); /* a no-op for a client that left */
        http_req_release(z->waiters[i]);
    }
}

/* A ping of its own, for a request beyond API_READYZ_WAITERS. */
static void on_pinged_alone(store_op *op, void *ud)
{
    http_req *r = ud;
    readyz_answer(r, op->rc == CHAT_OK);
    http_req_release(r);
}

void api_readyz(http_req *r, api_env *w, char **params)
{
    (void)params;
    if (atomic_load(w->stopping)) {
        http_reply_json(r, 503, json_pack("{s:s,s:s}", "status", "unavailable", "reason", "shutting down"));
        return;
    }
    api_readyz_state *z = &w->readyz;
    if (z->at_ms && chat_mono_ms() - z->at_ms < READYZ_REUSE_MS) {
        readyz_answer(r, z->ok);
        return;
    }
    http_req_hold(r);
    if (z->nwaiters == API_READYZ_WAITERS) {
        store_submit(w->db, store_op_new(STORE_OP_PING), on_pinged_alone, r);
        return;
    }
    z->waiters[z->nwaiters++] = r;
    if (!z->pinging) {
        z->pinging = true;
        store_submit(w->db, store_op_new(STORE_OP_PING), on_pinged, w);
    }
}
