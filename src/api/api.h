/*
 * api.h: the HTTP handlers. Parses and validates requests, calls the turn engine
 * and the store, and maps every outcome to a status code and a JSON body, in the
 * two flavors chatd serves: the seed-compatible API (FastAPI-style errors,
 * {"detail": ...}) and the versioned /v1 API ({"error": {type, message,
 * request_id}}). docs/API.md is the contract.
 *
 * Thread: handlers run on the worker loop that received the request.
 */
#ifndef CHATD_API_API_H
#define CHATD_API_API_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/metrics.h"
#include "core/config.h"
#include "guard/metrics.h" /* the refusals router.c counts */
#include "guard/ratelimit.h"
#include "http/server.h"
#include "store/store.h"

struct event_base;
struct turn_engine;
struct model_table;
struct cors_policy;
struct redis_limit;
struct chat_netlist;
struct auth_negcache;

/* /readyz requests that may wait on one worker for the database ping in flight. */
#define API_READYZ_WAITERS 64

/* /readyz on one worker (api/meta.c): the last database ping's outcome, reused
 * for a second, and the requests waiting for the ping in flight. */
typedef struct api_readyz_state {
    int64_t at_ms; /* monotonic time the last ping answered; 0: none yet */
    bool ok;       /* its outcome */
    bool pinging;  /* a ping is in flight (its answer goes to every waiter) */
    int nwaiters;
    http_req *waiters[API_READYZ_WAITERS]; /* held requests */
} api_readyz_state;

/*
 * What the handlers of one worker need: the narrow view of the worker and the
 * instance that app/ fills in before the worker serves (so that api/ never
 * sees app/'s structs). Handles and shared objects are borrowed: app/ owns them
 * and frees them after the worker's HTTP server. Thread: the worker's loop;
 * the shared objects (limiter, models, cors, trusted proxies) are thread-safe
 * or read-only.
 */
typedef struct api_env {
    struct event_base *base;                    /* the worker's loop */
    store *db;                                  /* the worker's store handle (store_submit) */
    struct turn_engine *turns;                  /* the worker's running turns (chat/turn.h) */
    struct redis_limit *redis;                  /* shared limits through Redis, or NULL: local only */
    struct auth_negcache *auth_negcache;        /* this worker's recent unknown API key hashes */
    const struct chat_config *cfg;              /* read-only */
    struct model_table *models;                 /* read-only after start */
    struct ratelimit *limiter;                  /* shared by the workers (sharded, thread-safe) */
    ratelimit_spec auth_failures;               /* AUTH_FAILURE_LIMIT (count 0: off) */
    const struct cors_policy *cors;             /* read-only */
    const struct chat_netlist *trusted_proxies; /* TRUSTED_PROXIES */
    const atomic_bool *stopping;                /* the instance is draining (SIGTERM) */
    const bool *aborted;                        /* this worker's drain deadline passed: running work was cut */
    api_readyz_state readyz;                    /* owned: /readyz's per-worker cache */
} api_env;

/* The error shape of a route: FastAPI's {"detail"}, chatd's /v1 envelope,
 * OpenAI's {"error": {message, type, param, code}} (/v1/chat/completions), or
 * Anthropic's {"type":"error","error":{type, message, details:{error_code}},
 * "request_id"} (/v1/messages: docs/PROTOCOLS.md A7; chatd's own type goes in
 * details.error_code, which the Anthropic SDKs expose as errorCode). */
typedef enum { API_SEED, API_V1, API_OPENAI, API_ANTHROPIC } api_flavor;

/* OpenAI's error.type for an HTTP status (what its SDKs and clients expect). */
const char *api_openai_type_of(int status);

/* Anthropic's error.type for an HTTP status (docs/PROTOCOLS.md A7): 400
 * invalid_request_error, 401 authentication_error, 402 billing_error, 403
 * permission_error, 404 not_found_error, 409 conflict_error, 413
 * request_too_large, 429 rate_limit_error, 503 and 529 overloaded_error, 504
 * timeout_error, other 5xx api_error, other 4xx invalid_request_error. */
const char *api_anthropic_type_of(int status);

/* A route handler. params holds the decoded {} segments of the path. */
typedef void (*api_handler)(http_req *r, api_env *w, char **params);

/* The http_dispatch_fn of every worker (ctx is the worker's api_env). */
void api_dispatch(http_req *r, void *ctx);

/* Most {} parameters a route pattern captures. */
#define API_MAX_PARAMS 4

/* What the route table says about one path and method (api_route_find). */
typedef struct api_route_match {
    /* The matching route's pattern (e.g. "/v1/sessions/{}"), static; NULL when
     * no route has this path and method. */
    const char *pattern;
    /* The error shape: the route's; with no route, that of the last route with
     * this path (a 405), else API_ANTHROPIC for /v1/messages and the paths
     * under it, API_V1 for other paths under /v1/, API_SEED otherwise. */
    api_flavor flavor;
    /* With no route: the http_method bits of the routes with this path (HEAD
     * wherever GET is), 0 when none (a 404). With a route: its methods. */
    unsigned allowed;
    /* With a route: its {} segments, percent-decoded (heap), NULL-terminated. A
     * segment that decodes to a NUL byte becomes "\x01", which fails every id
     * check. All NULL without a route. */
    char *params[API_MAX_PARAMS + 1];
} api_route_match;

/*
 * Looks path (the request target before any '?', as the client sent it) and
 * method (one http_method bit) up in the route table, as api_dispatch does:
 * segments split at '/', a "{}" segment of a pattern matches any non-empty
 * segment, at most 16 segments. Fills *out (release with
 * api_route_match_free). Pure: any thread.
 */
void api_route_find(const char *path, unsigned method, api_route_match *out);

/* Frees the params of m (the struct itself is the caller's). Accepts NULL. */
void api_route_match_free(api_route_match *m);

/* Sends an error in the flavor's shape (terminal). */
void api_error(http_req *r, api_flavor f, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Sends the error for a failed store operation: 503 with Retry-After when the
 * database is unreachable or saturated (CHAT_EUNAVAIL: a retry may succeed),
 * else 500 (terminal). */
void api_db_error(http_req *r, api_flavor f, chat_rc rc);

/* Sends a validation error: seed -> 422 {"detail":[item]}, v1 -> 400
 * invalid_request_error with msg. item is stolen. */
void api_invalid(http_req *r, api_flavor f, json_t *item, const char *msg);

/* A pydantic-v2 style error item: {"type","loc":["body",field],"msg","input"}.
 * input is stolen (may be NULL: then {} ). field NULL: loc is ["body"]. */
json_t *api_detail_item(const char *type, const char *loc0, const char *field, const char *msg, json_t *input);

/* Validates a session id from a path or body; on failure answers and returns false. */
bool api_check_session_id(http_req *r, api_flavor f, const char *id, const char *loc0, const char *field);

/* Handlers, by module. */
void api_root(http_req *r, api_env *w, char **params);
void api_healthz(http_req *r, api_env *w, char **params);
void api_readyz(http_req *r, api_env *w, char **params);
void api_openapi(http_req *r, api_env *w, char **params);
void api_docs(http_req *r, api_env *w, char **params);
void api_metrics(http_req *r, api_env *w, char **params);
void api_ui_redirect(http_req *r, api_env *w, char **params);
void api_ui_file(http_req *r, api_env *w, char **params);
void api_ui_lib(http_req *r, api_env *w, char **params);

void api_seed_chat(http_req *r, api_env *w, char **params);
void api_seed_chat_stream(http_req *r, api_env *w, char **params);
void api_v1_chat(http_req *r, api_env *w, char **params);
void api_v1_chat_stream(http_req *r, api_env *w, char **params);
void api_v1_chat_completions(http_req *r, api_env *w, char **params);

void api_seed_history_get(http_req *r, api_env *w, char **params);
void api_seed_history_delete(http_req *r, api_env *w, char **params);
void api_seed_sessions(http_req *r, api_env *w, char **params);
void api_seed_reset(http_req *r, api_env *w, char **params);
void api_seed_stats(http_req *r, api_env *w, char **params);
void api_v1_sessions_list(http_req *r, api_env *w, char **params);
void api_v1_session_get(http_req *r, api_env *w, char **params);
void api_v1_session_delete(http_req *r, api_env *w, char **params);
void api_v1_session_messages(http_req *r, api_env *w, char **params);
void api_v1_session_reset(http_req *r, api_env *w, char **params);
void api_v1_stats(http_req *r, api_env *w, char **params);
void api_v1_models(http_req *r, api_env *w, char **params);
void api_v1_estimate(http_req *r, api_env *w, char **params);

/* {"micros": n, "usd": "0.000123"}: exact integer micro-dollars plus a decimal string. */
json_t *api_cost_json(int64_t micros);

/* Debits a finished turn's provider tokens from the caller's TOKEN_LIMIT bucket. */
void api_debit_tokens(http_req *r, api_env *w, int64_t tokens);

/* The caller's identity (set by the router before every handler; never NULL there). */
struct auth_identity;
const struct auth_identity *api_identity(http_req *r);

/* The owner filter for listings and new sessions: the caller's key id, or NULL
 * when the caller may see every session (auth off, static token, admin key). */
const char *api_owner_filter(http_req *r);

/* True when the caller may see a session with this owner. */
bool api_can_access(http_req *r, const char *owner);

/* JSON for a usage object: {"input_tokens",...}; unknown (-1) values become null. */
json_t *api_usage_json(const store_usage *u);

#endif
