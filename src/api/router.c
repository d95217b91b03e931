/*
 * router.c: the route table and the dispatcher.
 *
 * A pattern is a path whose "{}" segments capture one decoded segment each.
 * A path that matches some route but not with this method gets 405 with an
 * Allow header; a path that matches nothing gets 404.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "api/api.h"
#include "core/alloc.h"

#define MAX_PARAMS 4
#define MAX_SEGMENTS 16

typedef struct route {
    unsigned methods;
    const char *pattern;
    api_handler handler;
    api_flavor flavor;
} route;

static const route routes[] = {
    {HTTP_GET, "/", api_root, API_SEED},
    {HTTP_POST, "/chat", api_seed_chat, API_SEED},
    {HTTP_POST, "/chat-stream", api_seed_chat_stream, API_SEED},
    {HTTP_GET, "/history/{}", api_seed_history_get, API_SEED},
    {HTTP_DELETE, "/history/{}", api_seed_history_delete, API_SEED},
    {HTTP_GET, "/sessions", api_seed_sessions, API_SEED},
    {HTTP_POST, "/reset/{}", api_seed_reset, API_SEED},
    {HTTP_GET, "/stats", api_seed_stats, API_SEED},
    {HTTP_POST, "/v1/chat", api_v1_chat, API_V1},
    {HTTP_POST, "/v1/chat/stream", api_v1_chat_stream, API_V1},
    {HTTP_POST, "/v1/chat/completions", api_v1_chat_completions, API_V1},
    {HTTP_GET, "/v1/sessions", api_v1_sessions_list, API_V1},
    {HTTP_GET, "/v1/sessions/{}", api_v1_session_get, API_V1},
    {HTTP_DELETE, "/v1/sessions/{}", api_v1_session_delete, API_V1},
    {HTTP_GET, "/v1/sessions/{}/messages", api_v1_session_messages, API_V1},
    {HTTP_POST, "/v1/sessions/{}/reset", api_v1_session_reset, API_V1},
    {HTTP_GET, "/v1/stats", api_v1_stats, API_V1},
    {HTTP_GET, "/v1/models", api_v1_models, API_V1},
    {HTTP_POST, "/v1/estimate", api_v1_estimate, API_V1},
    {HTTP_GET, "/healthz", api_healthz, API_V1},
    {HTTP_GET, "/readyz", api_readyz, API_V1},
    {HTTP_GET, "/openapi.json", api_openapi, API_V1},
    {HTTP_GET, "/docs", api_docs, API_V1},
    {HTTP_GET, "/ui", api_ui_redirect, API_V1},
    {HTTP_GET, "/ui/", api_ui_file, API_V1},
    {HTTP_GET, "/ui/{}", api_ui_file, API_V1},
    {HTTP_GET, "/ui/lib/{}", api_ui_lib, API_V1},
};

/* Splits "/a/b/c" into segments (pointers into a copy). Returns the count, or -1 if too many. */
static int split_path(char *copy, char **seg)
{
    int n = 0;
    char *p = copy;
    if (*p == '/')
        p++;
    if (*p == '\0')
        return 0;
    for (;;) {
        if (n == MAX_SEGMENTS)
            return -1;
        seg[n++] = p;
        char *slash = strchr(p, '/');
        if (!slash)
            break;
        *slash = '\0';
        p = slash + 1;
    }
    return n;
}

/* Matches path segments against a pattern; on success fills params (heap,
 * decoded). A decoded segment with a NUL byte cannot be a valid id: it is
 * replaced by a string that fails every id check ("\x01"), so the handler
 * answers with its usual validation error. */
static bool match(const char *pattern, char **pseg, int np, char **params)
{
    char *pcopy = chat_xstrdup(pattern);
    char *rseg[MAX_SEGMENTS];
    int nr = split_path(pcopy, rseg);
    bool ok = nr == np;
    int k = 0;
    for (int i = 0; ok && i < nr; i++) {
        if (strcmp(rseg[i], "{}") == 0) {
            if (pseg[i][0] == '\0' || k == MAX_PARAMS) {
                ok = false;
                break;
            }
            size_t dlen = 0;
            char *dec = evhttp_uridecode(pseg[i], 0, &dlen);
            if (dec && strlen(dec) != dlen) {
                free(dec);
                dec = chat_xstrdup("\x01");
            }
            params[k++] = dec;
        } else if (strcmp(rseg[i], pseg[i]) != 0) {
            ok = false;
        }
    }
    if (!ok)
        for (int i = 0; i < k; i++) {
            free(params[i]);
            params[i] = NULL;
        }
    free(pcopy);
    return ok;
}

static void append_allow(char *allow, size_t len, unsigned methods)
{
    static const struct { unsigned m; const char *name; } names[] = {
        {HTTP_GET, "GET"}, {HTTP_HEAD, "HEAD"}, {HTTP_POST, "POST"}, {HTTP_PUT, "PUT"},
        {HTTP_PATCH, "PATCH"}, {HTTP_DELETE, "DELETE"}, {HTTP_OPTIONS, "OPTIONS"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((methods & names[i].m) && !strstr(allow, names[i].name)) {
            size_t used = strlen(allow);
            snprintf(allow + used, len - used, "%s%s", used ? ", " : "", names[i].name);
        }
}

void api_dispatch(http_req *r, void *ctx)
{
    chat_worker *w = ctx;
    char *copy = chat_xstrdup(http_req_path(r));
    char *seg[MAX_SEGMENTS];
    int nseg = split_path(copy, seg);
    unsigned allowed = 0;
    api_flavor flavor = strncmp(http_req_path(r), "/v1/", 4) == 0 ? API_V1 : API_SEED;
    http_method m = http_req_method(r);

    for (size_t i = 0; nseg >= 0 && i < sizeof routes / sizeof routes[0]; i++) {
        char *params[MAX_PARAMS + 1] = {0};
        if (!match(routes[i].pattern, seg, nseg, params))
            continue;
        unsigned methods = routes[i].methods | ((routes[i].methods & HTTP_GET) ? HTTP_HEAD : 0);
        if (methods & m) {
            if (params[0]) /* every {} route is about one session */
                http_req_log_set(r, "session", json_string(params[0]));
            if (http_req_body_too_large(r))
                api_error(r, routes[i].flavor, 413, "request_too_large",
                          "the request body is larger than MAX_BODY_SIZE (%zu bytes)", w->app->cfg->max_body_bytes);
            else
                routes[i].handler(r, w, params);
            for (int k = 0; params[k]; k++)
                free(params[k]);
            free(copy);
            return;
        }
        allowed |= methods;
        flavor = routes[i].flavor;
        for (int k = 0; params[k]; k++)
            free(params[k]);
    }
    free(copy);
    if (allowed) {
        char allow[128] = "";
        append_allow(allow, sizeof allow, allowed);
        http_add_header(r, "Allow", allow);
        if (flavor == API_SEED)
            api_error(r, API_SEED, 405, "method_not_allowed", "Method Not Allowed");
        else
            api_error(r, API_V1, 405, "method_not_allowed", "method %s is not allowed on %s (allowed: %s)",
                      http_req_method_name(r), http_req_path(r), allow);
        return;
    }
    if (flavor == API_SEED)
        api_error(r, API_SEED, 404, "not_found_error", "Not Found");
    else
        api_error(r, API_V1, 404, "not_found_error", "no route for %s %s", http_req_method_name(r),
                  http_req_path(r));
}
