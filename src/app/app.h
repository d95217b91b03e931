/*
 * app.h: the running server: N worker threads, each with its own event loop,
 * HTTP server, provider transport and database connection, and the lifecycle
 * around them (start, graceful drain on SIGTERM/SIGINT, stop).
 *
 * A request lives and dies on one worker, so nothing on the request path takes
 * a lock. The app struct is built once before the workers start and is then
 * read-only, except for the atomic `stopping` flag.
 */
#ifndef CHATD_APP_APP_H
#define CHATD_APP_APP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "api/api.h"
#include "core/config.h"
#include "core/rc.h"
#include "guard/ratelimit.h"
#include "http/server.h"
#include "llm/provider.h"
#include "store/store.h"

struct event;
struct event_base;
struct turn_engine;
struct model_table;
struct ratelimit;
struct cors_policy;
struct redis_limit;
struct redis_limit_config;
struct chat_netlist;
struct auth_negcache;

/* The version, reported by `chatd --version` and the chatd_build_info metric. */
#define CHATD_VERSION "0.1.0"

typedef struct chat_app chat_app;

/* Where a worker thread is in its life; only ever moves forward. */
typedef enum {
    CHAT_WORKER_STARTING = 0, /* building its loop, server and handles (the main thread waits) */
    CHAT_WORKER_RUNNING,      /* its loop runs: the main thread may wake it (stop_ev) */
    CHAT_WORKER_STOPPED,      /* its loop ended; its events are being freed (never wake it) */
    CHAT_WORKER_FAILED,       /* it could not start; startup_error says why */
} chat_worker_state;

typedef struct chat_worker {
    int index;
    chat_app *app;
    struct event_base *base;
    http_server *http;
    llm_transport *llm;
    store *db;
    int listen_fd;
    pthread_t thread;
    struct event *stop_ev;    /* activated by the main thread to begin the drain */
    struct event *shed_ev;    /* activated by the main thread after a burst (app.c, maybe_trim) */
    struct event *drain_tick; /* polls for the end of the drain */
    struct event *sweep;      /* worker 0 only: the retention sweeper */
    bool sweeping;            /* a sweep's store operations are in flight */
    int sweep_batches;
    int64_t sweep_now, sweep_sessions;
    struct redis_limit *redis;           /* shared limits through Redis (REDIS_URL), or NULL: local only */
    struct auth_negcache *auth_negcache; /* recent unknown API key hashes (this worker's only) */
    api_env api;                         /* what this worker's API handlers see (filled in by app.c) */
    int64_t drain_deadline;              /* monotonic ms */
    bool draining;
    bool aborted;              /* the drain deadline passed and running turns were cancelled */
    struct turn_engine *turns; /* the turns running on this loop (chat/turn.h), made from the worker's turn_env */
    char startup_error[512];
    _Atomic chat_worker_state state; /* written by the worker thread, read by the main thread */
} chat_worker;

struct chat_app {
    const struct chat_config *cfg;
    struct ratelimit *limiter;            /* shared by the workers (sharded, thread-safe) */
    struct cors_policy *cors;             /* read-only */
    struct redis_limit_config *redis_cfg; /* REDIS_URL parsed, or NULL; each worker connects on its loop */
    struct chat_netlist *trusted_proxies; /* TRUSTED_PROXIES: whose X-Forwarded-For is believed */
    ratelimit_spec auth_failures;         /* AUTH_FAILURE_LIMIT (count 0: off) */

    struct model_table *models; /* read-only after start; providers borrowed by every call */
    int port;                   /* the bound port (useful with PORT=0) */
    int nworkers;
    chat_worker *workers;
    atomic_bool stopping;
    int max_connections;         /* MAX_CONNECTIONS, or derived from the descriptor limit (see app.c) */
    int descriptor_slots;        /* descriptor numbers each loop makes its records for at start (app.c) */
    atomic_int open_connections; /* client sockets open across the workers (http/server.h) */
    pthread_mutex_t wake_lock;   /* guards waking workers against their exit (RUNNING -> STOPPED) */
};

/*
 * Runs the server until SIGTERM or SIGINT, then drains: stops accepting, lets
 * running turns finish until DRAIN_TIMEOUT, cancels the rest cleanly, closes the
 * databases. Returns CHAT_OK after a clean stop, or an error (logged) if the
 * server could not start.
 */
chat_rc chat_app_run(const struct chat_config *cfg) CHAT_MUST_CHECK;

/*
 * Creates the process-wide metrics registry with the families of GET /metrics,
 * in page order (app/metrics.c), and sets chatd_build_info{version} to 1
 * (version NULL: "unknown"). Main thread, before the workers start;
 * metrics_shutdown (core/metrics.h) undoes it. CHAT_EINVAL if already done.
 */
chat_rc chat_app_metrics_init(const char *version) CHAT_MUST_CHECK;


#endif
