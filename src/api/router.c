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

#include "api/anthropic_api.h"
#include "api/api.h"
#include "core/alloc.h"
#include "core/metrics.h"
#include "core/util.h"
#include "guard/auth.h"
#include "guard/auth_cache.h"
#include "guard/client_addr.h"
#include "guard/ratelimit.h"
#include "guard/redis_limit.h"
#include "http/cors.h"

#define MAX_PARAMS API_MAX_PARAMS
#define MAX_SEGMENTS 16
/* A limit key: "key:" + an API key id (at most STORE_ID_MAX bytes: ids are
 * never cut, or two keys would share a bucket), or "addr:" + a client address. */
#define LIMIT_KEY_BUF (sizeof "key:" + STORE_ID_MAX)
_Static_assert(LIMIT_KEY_BUF - 1 <= RATELIMIT_MAX_KEY, "API key limit keys are stored verbatim");

typedef enum {
    ACCESS_PUBLIC, /* health, docs, playground assets: no credentials */
    ACCESS_USER,   /* any authenticated caller; sessions are isolated per key */
    ACCESS_ADMIN,  /* statistics and metrics: admin keys or the static token */
} access_level;

typedef struct route {
    unsigned methods;
    const char *pattern;
    api_handler handler;
    api_flavor flavor;
    access_level access;
    bool limited; /* counts against RATE_LIMIT / TOKEN_LIMIT */
} route;

static const route routes[] = {
    { HTTP_GET, "/", api_root, API_SEED, ACCESS_PUBLIC, false },
    { HTTP_POST, "/chat", api_seed_chat, API_SEED, ACCESS_USER, true },
    { HTTP_POST, "/chat-stream", api_seed_chat_stream, API_SEED, ACCESS_USER, true },
    { HTTP_GET, "/history/{}", api_seed_history_get, API_SEED, ACCESS_USER, false },
    { HTTP_DELETE, "/history/{}", api_seed_history_delete, API_SEED, ACCESS_USER, false },
    { HTTP_GET, "/sessions", api_seed_sessions, API_SEED, ACCESS_USER, false },
    { HTTP_POST, "/reset/{}", api_seed_reset, API_SEED, ACCESS_USER, false },
    { HTTP_GET, "/stats", api_seed_stats, API_SEED, ACCESS_ADMIN, false },
    { HTTP_POST, "/v1/chat", api_v1_chat, API_V1, ACCESS_USER, true },
    { HTTP_POST, "/v1/chat/stream", api_v1_chat_stream, API_V1, ACCESS_USER, true },
    { HTTP_POST, "/v1/chat/completions", api_v1_chat_completions, API_OPENAI, ACCESS_USER, true },
    { HTTP_POST, "/v1/messages", api_anthropic_messages, API_ANTHROPIC, ACCESS_USER, true },
    { HTTP_POST, "/v1/messages/count_tokens", api_anthropic_count_tokens, API_ANTHROPIC, ACCESS_USER, false },
    { HTTP_GET, "/v1/sessions", api_v1_sessions_list, API_V1, ACCESS_USER, false },
    { HTTP_GET, "/v1/sessions/{}", api_v1_session_get, API_V1, ACCESS_USER, false },
    { HTTP_DELETE, "/v1/sessions/{}", api_v1_session_delete, API_V1, ACCESS_USER, false },
    { HTTP_GET, "/v1/sessions/{}/messages", api_v1_session_messages, API_V1, ACCESS_USER, false },
    { HTTP_POST, "/v1/sessions/{}/reset", api_v1_session_reset, API_V1, ACCESS_USER, false },
    { HTTP_GET, "/v1/stats", api_v1_stats, API_V1, ACCESS_ADMIN, false },
    { HTTP_GET, "/v1/models", api_v1_models, API_V1, ACCESS_USER, false },
    { HTTP_POST, "/v1/estimate", api_v1_estimate, API_V1, ACCESS_USER, false },
    { HTTP_GET, "/healthz", api_healthz, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/readyz", api_readyz, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/metrics", api_metrics, API_V1, ACCESS_ADMIN, false },
    { HTTP_GET, "/openapi.json", api_openapi, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/docs", api_docs, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/ui", api_ui_redirect, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/ui/", api_ui_file, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/ui/{}", api_ui_file, API_V1, ACCESS_PUBLIC, false },
    { HTTP_GET, "/ui/lib/{}", api_ui_lib, API_V1, ACCESS_PUBLIC, false },
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

/* Matches path segments against a pattern, walking the pattern in place (no
 * allocation for the routes that do not match); on success fills params (heap,
 * decoded). A decoded segment with a NUL byte cannot be a valid id: it is
 * replaced by a string that fails every id check ("\x01"), so the handler
 * answers with its usual validation error. */
static bool match(const char *pattern, char **pseg, int np, char **params)
{
    const char *p = pattern[0] == '/' ? pattern + 1 : pattern;
    int captured[MAX_PARAMS], k = 0;
    int i = 0;
    if (*p == '\0')
        return np == 0;
    for (;; i++) {
        size_t len = strcspn(p, "/");
        if (i == np)
            return false;
        if (len == 2 && p[0] == '{' && p[1] == '}') {
            if (pseg[i][0] == '\0' || k == MAX_PARAMS)
                return false;
            captured[k++] = i;
        } else if (strlen(pseg[i]) != len || memcmp(pseg[i], p, len) != 0) {
            return false;
        }
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    if (i + 1 != np)
        return false;
    for (int j = 0; j < k; j++) {
        size_t dlen = 0;
        char *dec = evhttp_uridecode(pseg[captured[j]], 0, &dlen);
        if (dec && strlen(dec) != dlen) {
            free(dec);
            dec = chat_xstrdup("\x01");
        }
        params[j] = dec;
    }
    return true;
}

static void append_allow(char *allow, size_t len, unsigned methods)
{
    static const struct {
        unsigned m;
        const char *name;
    } names[] = {
        { HTTP_GET, "GET" },     { HTTP_HEAD, "HEAD" },     { HTTP_POST, "POST" },       { HTTP_PUT, "PUT" },
        { HTTP_PATCH, "PATCH" }, { HTTP_DELETE, "DELETE" }, { HTTP_OPTIONS, "OPTIONS" },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((methods & names[i].m) && !strstr(allow, names[i].name)) {
            size_t used = strlen(allow);
            snprintf(allow + used, len - used, "%s%s", used ? ", " : "", names[i].name);
        }
}

static void add_header_cb(void *ud, const char *name, const char *value)
{
    http_add_header(ud, name, value);
}

/* CORS for every response; answers preflights. Returns true when answered. */
static bool apply_cors(http_req *r, api_env *w)
{
    cors_result cr;
    cors_evaluate(w->cors, http_req_method_name(r), http_req_header(r, "Origin"),
                  http_req_header(r, "Access-Control-Request-Method"),
                  http_req_header(r, "Access-Control-Request-Headers"), &cr);
    for (size_t i = 0; i < cr.n; i++)
        http_add_header(r, cr.headers[i].name, cr.headers[i].value);
    if (cr.preflight) {
        http_req_set_route(r, "preflight");
        http_reply(r, cr.preflight_status, NULL, NULL, 0);
        return true;
    }
    return false;
}

static void free_identity(void *p)
{
    auth_identity_clear(p);
    free(p);
}

/*
 * The client a per-address limit applies to (guard/client_addr.h): the peer,
 * or, when the peer is a trusted proxy, the rightmost X-Forwarded-For entry
 * that is not itself a trusted proxy, all the header's lines read as one
 * list; IPv6 clients by RATE_LIMIT_IPV6_PREFIX network. out holds
 * CLIENT_ADDR_BUF bytes.
 */
#define XFF_LINES_ON_STACK 8

static void client_address(http_req *r, api_env *w, char out[CLIENT_ADDR_BUF])
{
    const client_addr_trust *t = w->trusted_proxies;
    const char *stack[XFF_LINES_ON_STACK], **lines = stack;
    size_t n = 0;
    if (client_addr_trusted(t, http_req_peer(r))) {
        n = http_req_header_values(r, "X-Forwarded-For", stack, XFF_LINES_ON_STACK);
        if (n > XFF_LINES_ON_STACK) { /* rare: bounded by MAX_HEADER_SIZE */
            lines = chat_xcalloc(n, sizeof *lines);
            n = http_req_header_values(r, "X-Forwarded-For", lines, n);
        }
    }
    client_addr_resolve(t, http_req_peer(r), lines, n, w->cfg->rate_limit_ipv6_prefix, out);
    if (lines != stack)
        free(lines);
}

/*
 * A request between dispatch and its handler while an asynchronous step runs:
 * its API key's look-up in the store, or its rate-limit checks in Redis. The
 * job holds the request and owns copies of the route's parameters.
 */
typedef struct route_job {
    http_req *r;
    api_env *w;
    const route *rt;
    char *params[MAX_PARAMS + 1]; /* owned copies */
    /* rate limits through Redis */
    char key[LIMIT_KEY_BUF];
    ratelimit_spec own;
    bool has_own;
    redis_limit_req *pending; /* the check in flight, NULL between checks */
} route_job;

static route_job *job_new(http_req *r, api_env *w, const route *rt, char **params)
{
    route_job *j = chat_xcalloc(1, sizeof *j);
    j->r = r;
    j->w = w;
    j->rt = rt;
    for (int k = 0; params[k]; k++)
        j->params[k] = chat_xstrdup(params[k]);
    http_req_hold(r);
    return j;
}

/*
 * RATE_LIMIT and TOKEN_LIMIT for chat routes. With the local limiter the checks
 * are immediate; with REDIS_URL they are asynchronous (the request waits on
 * the loop for Redis, which answers or fails open within its deadline), in a
 * route_job.
 */

static void limit_key(http_req *r, api_env *w, const auth_identity *id, char *key, size_t keylen)
{
    if (id && id->key_id[0]) {
        snprintf(key, keylen, "key:%s", id->key_id);
    } else {
        char addr[CLIENT_ADDR_BUF];
        client_address(r, w, addr);
        snprintf(key, keylen, "addr:%s", addr);
    }
}

/* Adds the headers of a requests check; answers 429 and returns false when refused. */
static bool requests_verdict(http_req *r, const route *rt, const ratelimit_result *res)
{
    ratelimit_headers(res, add_header_cb, r);
    if (res->allowed)
        return true;
    metrics_rate_limited(METRICS_RL_REQUESTS);
    api_error(r, rt->flavor, 429, "rate_limited", "rate limit exceeded (%lld requests per window): retry in %lld s",
              (long long)res->limit, (long long)res->retry_after_s);
    return false;
}

static bool tokens_verdict(http_req *r, const route *rt, const ratelimit_result *res)
{
    if (res->allowed)
        return true;
    char ra[32];
    snprintf(ra, sizeof ra, "%lld", (long long)res->retry_after_s);
    http_add_header(r, "Retry-After", ra);
    metrics_rate_limited(METRICS_RL_TOKENS);
    api_error(r, rt->flavor, 429, "rate_limited", "token limit exceeded (TOKEN_LIMIT): retry in %lld s",
              (long long)res->retry_after_s);
    return false;
}

static void job_free(route_job *j)
{
    for (int k = 0; j->params[k]; k++)
        free(j->params[k]);
    http_req_release(j->r);
    free(j);
}

static void job_client_gone(void *ud)
{
    route_job *j = ud;
    redis_limit_cancel(j->pending);
    job_free(j);
}

static void job_on_tokens(void *ud, const ratelimit_result *res)
{
    route_job *j = ud;
    j->pending = NULL;
    http_req_on_close(j->r, NULL, NULL); /* the handler may install its own */
    if (tokens_verdict(j->r, j->rt, res))
        j->rt->handler(j->r, j->w, j->params);
    job_free(j);
}

static void job_on_requests(void *ud, const ratelimit_result *res)
{
    route_job *j = ud;
    j->pending = NULL;
    if (!requests_verdict(j->r, j->rt, res)) {
        http_req_on_close(j->r, NULL, NULL);
        job_free(j);
        return;
    }
    j->pending = redis_limit_check(j->w->redis, RATELIMIT_TOKENS, j->key, NULL, job_on_tokens, j);
}

/* Runs rt's handler once the limits allow it (now, or when Redis has answered). */
static void limit_then_run(http_req *r, api_env *w, const route *rt, const auth_identity *id, char **params)
{
    ratelimit_spec own, *spec = NULL;
    char err[128];
    if (id->rate_limit && ratelimit_spec_parse(id->rate_limit, &own, err, sizeof err) == CHAT_OK)
        spec = &own;
    /* No limit at all (RATE_LIMIT and TOKEN_LIMIT off, no limit of the key's
     * own): both checks would allow without a header; skip the key and them. */
    if (!spec && !ratelimit_default_on(w->limiter, RATELIMIT_REQUESTS) &&
        !ratelimit_default_on(w->limiter, RATELIMIT_TOKENS)) {
        rt->handler(r, w, params);
        return;
    }
    char key[LIMIT_KEY_BUF];
    limit_key(r, w, id, key, sizeof key);
    if (!w->redis) {
        int64_t now = chat_mono_ms();
        ratelimit_result res;
        ratelimit_check(w->limiter, RATELIMIT_REQUESTS, key, spec, now, &res);
        if (!requests_verdict(r, rt, &res))
            return;
        ratelimit_check(w->limiter, RATELIMIT_TOKENS, key, NULL, now, &res);
        if (tokens_verdict(r, rt, &res))
            rt->handler(r, w, params);
        return;
    }
    route_job *j = job_new(r, w, rt, params);
    snprintf(j->key, sizeof j->key, "%s", key);
    if (spec) {
        j->own = own;
        j->has_own = true;
    }
    http_req_on_close(r, job_client_gone, j);
    j->pending =
        redis_limit_check(w->redis, RATELIMIT_REQUESTS, j->key, j->has_own ? &j->own : NULL, job_on_requests, j);
}

/* ---- authentication ---------------------------------------------------------- */

/* Answers a refused authentication. */
static void refuse(http_req *r, const route *rt, auth_result ar)
{
    if (ar == AUTH_UNAVAILABLE) {
        api_error(r, rt->flavor, 503, "internal_error", "the key store is not available");
        return;
    }
    http_add_header(r, "WWW-Authenticate",
                    ar == AUTH_MISSING ? "Bearer realm=\"chatd\"" : "Bearer realm=\"chatd\", error=\"invalid_token\"");
    if (rt->flavor == API_SEED)
        api_error(r, API_SEED, 401, "authentication_error", "Unauthorized");
    else if (rt->flavor == API_ANTHROPIC)
        api_error(r, rt->flavor, 401, "authentication_error",
                  ar == AUTH_MISSING ? "missing credentials: send x-api-key: <key> or Authorization: Bearer <key>"
                                     : "invalid x-api-key: invalid or revoked token");
    else
        api_error(r, rt->flavor, 401, "authentication_error",
                  ar == AUTH_MISSING ? "missing credentials: send Authorization: Bearer <token>"
                                     : "invalid or revoked token");
}

/* The caller is known (id, owned by the request): the route's own checks, then its handler. */
static void authorized(http_req *r, api_env *w, const route *rt, const auth_identity *id, char **params)
{
    if (id->key_id[0])
        http_req_log_set(r, "key", chat_json_text(id->key_id));
    if (rt->access == ACCESS_ADMIN && id->authenticated && !id->admin)
        api_error(r, rt->flavor, 403, "permission_error", "this endpoint needs an admin key");
    else if (http_req_body_too_large(r))
        api_error(r, rt->flavor, 413, "request_too_large", "the request body is larger than MAX_BODY_SIZE (%zu bytes)",
                  w->cfg->max_body_bytes);
    else if (rt->limited)
        limit_then_run(r, w, rt, id, params);
    else
        rt->handler(r, w, params);
}

/* ---- failed authentications (AUTH_FAILURE_LIMIT) ---------------------------------- */

/*
 * Bearer tokens that need an API key lookup are limited per client address
 * before the store is asked: every unknown or revoked key (a store miss, or a
 * hit in the worker's cache of recent misses) takes one token from the
 * address's failure bucket, and while that bucket is empty every request from
 * the address that needs a lookup is refused with 429, valid keys included
 * (telling them apart would take the lookup the limit exists to save). The
 * static API_TOKEN needs no lookup and is never refused here. The buckets
 * live in the local limiter (also with REDIS_URL: the point is this
 * instance's load on the database), as RATELIMIT_TOKENS buckets (a check takes
 * nothing, a failure is debited) under keys of their own.
 */
#define FAILURE_KEY_BUF (sizeof "authfail:" + CLIENT_ADDR_BUF)

static void failure_key(http_req *r, api_env *w, char out[FAILURE_KEY_BUF])
{
    char addr[CLIENT_ADDR_BUF];
    client_address(r, w, addr);
    snprintf(out, FAILURE_KEY_BUF, "authfail:%s", addr);
}

/* True when the address may have a key looked up; else answers 429. */
static bool failures_allow(http_req *r, api_env *w, const route *rt, const char *fkey)
{
    const ratelimit_spec *spec = &w->auth_failures;
    if (spec->count == 0)
        return true;
    ratelimit_result res;
    ratelimit_check(w->limiter, RATELIMIT_TOKENS, fkey, spec, chat_mono_ms(), &res);
    if (res.allowed)
        return true;
    char ra[32];
    snprintf(ra, sizeof ra, "%lld", (long long)res.retry_after_s);
    http_add_header(r, "Retry-After", ra);
    metrics_rate_limited(METRICS_RL_AUTH_FAILURES);
    metrics_auth_key_lookup(METRICS_AUTH_LIMITED);
    api_error(r, rt->flavor, 429, "rate_limited",
              "too many failed authentications from this address (AUTH_FAILURE_LIMIT): retry in %lld s",
              (long long)res.retry_after_s);
    return false;
}

static void failure_record(api_env *w, const char *fkey)
{
    if (w->auth_failures.count > 0)
        ratelimit_debit(w->limiter, RATELIMIT_TOKENS, fkey, &w->auth_failures, 1, chat_mono_ms());
}

static void on_key_found(store_op *op, void *ud)
{
    route_job *j = ud;
    http_req *r = j->r;
    auth_identity *id = http_req_data(r);
    auth_result ar = auth_key_found(op->rc, &op->out.key, id);
    metrics_auth_key_lookup(ar == AUTH_OK        ? METRICS_AUTH_VALID
                            : ar == AUTH_INVALID ? METRICS_AUTH_INVALID
                                                 : METRICS_AUTH_UNAVAILABLE);
    if (ar == AUTH_INVALID) {
        /* Also when the client left: the store's answer holds for the next one. */
        char fkey[FAILURE_KEY_BUF];
        auth_negcache_add(j->w->auth_negcache, op->in.hash, chat_mono_ms());
        failure_key(r, j->w, fkey);
        failure_record(j->w, fkey);
    }
    if (!http_req_gone(r)) {
        if (ar == AUTH_OK && auth_touch_due(&op->out.key, chat_now_ms())) {
            /* last_used_at is informational: fire and forget. */
            store_op *touch = store_op_new(STORE_OP_KEY_TOUCH);
            touch->in.id = store_op_str(touch, op->out.key.id);
            touch->in.now = chat_now_ms();
            store_submit(j->w->db, touch, NULL, NULL);
        }
        if (ar == AUTH_OK)
            authorized(r, j->w, j->rt, id, j->params);
        else
            refuse(r, j->rt, ar);
    }
    job_free(j);
}

/* Authenticates the request for rt, then runs it (at once, or when the key store answered). */
static void authenticate_then_run(http_req *r, api_env *w, const route *rt, char **params)
{
    auth_identity *id = chat_xcalloc(1, sizeof *id);
    http_req_set_data(r, id, free_identity);
    if (rt->access == ACCESS_PUBLIC) {
        authorized(r, w, rt, id, params);
        return;
    }
    char hash[65];
    /* Anthropic's clients send the key as x-api-key or as a bearer token
     * (docs/PROTOCOLS.md A1): on those routes an x-api-key stands for an
     * absent Authorization header, so guard/auth.c reads one format. */
    const char *authorization = http_req_header(r, "Authorization");
    char *from_x_api_key = NULL;
    if (!authorization && rt->flavor == API_ANTHROPIC) {
        const char *x = http_req_header(r, "x-api-key");
        if (x && *x)
            authorization = from_x_api_key = chat_xasprintf("Bearer %s", x);
    }
    auth_result ar = auth_check(w->cfg, authorization, id, hash);
    free(from_x_api_key);
    if (ar == AUTH_OK) {
        authorized(r, w, rt, id, params);
        return;
    }
    if (ar != AUTH_LOOKUP) {
        refuse(r, rt, ar);
        return;
    }
    /* A key to look up: not for an address past AUTH_FAILURE_LIMIT, and not
     * for a secret the store did not know a moment ago (auth_cache.h). */
    char fkey[FAILURE_KEY_BUF];
    failure_key(r, w, fkey);
    if (!failures_allow(r, w, rt, fkey))
        return;
    if (auth_negcache_contains(w->auth_negcache, hash, chat_mono_ms())) {
        metrics_auth_key_lookup(METRICS_AUTH_CACHED);
        failure_record(w, fkey);
        refuse(r, rt, AUTH_INVALID);
        return;
    }
    route_job *j = job_new(r, w, rt, params);
    store_op *op = store_op_new(STORE_OP_KEY_FIND_BY_HASH);
    op->in.hash = store_op_str(op, hash);
    store_submit(w->db, op, on_key_found, j);
}

void api_debit_tokens(http_req *r, api_env *w, int64_t tokens)
{
    if (!ratelimit_default_on(w->limiter, RATELIMIT_TOKENS)) /* TOKEN_LIMIT off: the debit does nothing */
        return;
    char key[LIMIT_KEY_BUF];
    limit_key(r, w, http_req_data(r), key, sizeof key);
    if (w->redis)
        redis_limit_debit(w->redis, RATELIMIT_TOKENS, key, NULL, tokens);
    else
        ratelimit_debit(w->limiter, RATELIMIT_TOKENS, key, NULL, tokens, chat_mono_ms());
}

/*
 * The route of path for method m (NULL when none), filling *out as
 * api_route_find says; with a route, out->params are its decoded {} segments.
 */
static const route *find_route(const char *path, unsigned m, api_route_match *out)
{
    char *copy = chat_xstrdup(path);
    char *seg[MAX_SEGMENTS];
    int nseg = split_path(copy, seg);
    const route *found = NULL;
    memset(out, 0, sizeof *out);
    /* Anthropic's SDKs call more paths under /v1/messages (batches...) than
     * chatd serves: those 404s answer in Anthropic's shape too. */
    bool anthropic = strncmp(path, "/v1/messages", 12) == 0 && (path[12] == '\0' || path[12] == '/');
    out->flavor = anthropic ? API_ANTHROPIC : strncmp(path, "/v1/", 4) == 0 ? API_V1 : API_SEED;

    for (size_t i = 0; nseg >= 0 && i < sizeof routes / sizeof routes[0]; i++) {
        char *params[MAX_PARAMS + 1] = { 0 };
        if (!match(routes[i].pattern, seg, nseg, params))
            continue;
        unsigned methods = routes[i].methods | ((routes[i].methods & HTTP_GET) ? HTTP_HEAD : 0);
        if (methods & m) {
            found = &routes[i];
            out->pattern = found->pattern;
            out->flavor = found->flavor;
            out->allowed = methods;
            memcpy(out->params, params, sizeof params);
            break;
        }
        out->allowed |= methods;
        out->flavor = routes[i].flavor;
        for (int k = 0; params[k]; k++)
            free(params[k]);
    }
    free(copy);
    return found;
}

void api_route_find(const char *path, unsigned method, api_route_match *out)
{
    (void)find_route(path, method, out);
}

void api_route_match_free(api_route_match *m)
{
    if (!m)
        return;
    for (int k = 0; m->params[k]; k++)
        free(m->params[k]);
    memset(m->params, 0, sizeof m->params);
}

void api_dispatch(http_req *r, void *ctx)
{
    api_env *w = ctx;
    if (apply_cors(r, w))
        return;

    api_route_match found;
    const route *rt = find_route(http_req_path(r), http_req_method(r), &found);
    /* Anthropic's SDKs read the request id from `request-id` (docs/PROTOCOLS.md
     * A1), on every answer: successes, refusals and errors alike. */
    if (found.flavor == API_ANTHROPIC)
        http_add_header(r, "request-id", http_req_id(r));
    if (rt) {
        http_req_set_route(r, rt->pattern);
        if (found.params[0] && strncmp(rt->pattern, "/ui", 3) != 0) /* every other {} route is about one session */
            http_req_log_set(r, "session", chat_json_text(found.params[0]));
        authenticate_then_run(r, w, rt, found.params);
        api_route_match_free(&found);
        return;
    }
    unsigned allowed = found.allowed;
    api_flavor flavor = found.flavor;
    if (allowed) {
        char allow[128] = "";
        append_allow(allow, sizeof allow, allowed);
        http_add_header(r, "Allow", allow);
        if (flavor == API_SEED)
            api_error(r, API_SEED, 405, "method_not_allowed", "Method Not Allowed");
        else
            api_error(r, flavor, 405, "method_not_allowed", "method %s is not allowed on %s (allowed: %s)",
                      http_req_method_name(r), http_req_path(r), allow);
        return;
    }
    if (flavor == API_SEED)
        api_error(r, API_SEED, 404, "not_found_error", "Not Found");
    else
        api_error(r, flavor, 404, "not_found_error", "no route for %s %s", http_req_method_name(r), http_req_path(r));
}
