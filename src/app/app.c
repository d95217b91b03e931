/*
 * app.c: workers and the server's lifecycle.
 *
 * Start: the main thread binds the first SO_REUSEPORT listener (learning the
 * port when PORT=0), every worker binds its own on the same port, opens its own
 * database handle and transport, and runs its loop. The main thread blocks
 * SIGTERM/SIGINT in every thread and waits for them with sigwait(), so no
 * signal handler ever runs on a loop thread.
 *
 * Stop: on the first signal the main thread wakes every worker (event_active is
 * thread-safe once evthread_use_pthreads() was called). A worker stops
 * accepting, lets its running requests finish until DRAIN_TIMEOUT, then aborts
 * the remaining turns cleanly (each gets a 503 or an SSE error, its partial reply
 * kept or dropped per CANCEL_POLICY, its lock released), closes its database and
 * exits its loop. A second signal during the drain ends the drain at once.
 */
#define _GNU_SOURCE
#include "app/app.h"

#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "api/api.h"
#include "chat/models.h"
#include "core/metrics.h"
#include "guard/auth.h"
#include "guard/auth_cache.h"
#include "guard/client_addr.h"
#include "guard/ratelimit.h"
#include "guard/redis_limit.h"
#include "http/cors.h"
#include "chat/turn.h"
#include "core/alloc.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/util.h"

#define DRAIN_TICK_MS 20
#define FLUSH_GRACE_MS 1000 /* after the drain deadline: time to write the last answers */

static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    chat_worker *w = arg;
    /* Idle means no request in flight and every answer written out: freeing the
     * server with bytes still queued would cut the last response short. */
    bool idle = http_server_active(w->http) == 0 && turn_engine_idle(w->turns) && !http_server_flushing(w->http) &&
                store_pending(w->db) == 0;
    int64_t now = chat_mono_ms();
    if (!idle && now < w->drain_deadline)
        return;
    if (!idle && !w->aborted) {
        /* The deadline passed: end the running turns (each client gets its 503
         * or SSE error), then give those last answers a moment to be written. */
        chat_log(LOG_WARN, "drain deadline passed, cancelling running turns", json_pack("{s:i}", "worker", w->index));
        turn_abort_all(w->turns);
        w->aborted = true;
        w->drain_deadline = now + FLUSH_GRACE_MS;
        return;
    }
    event_base_loopexit(w->base, NULL);
}

/*
 * Retention: worker 0 deletes sessions idle longer than SESSION_TTL, and
 * expired idempotency records, in small batches (each a short transaction), so
 * a sweep never holds the loop for long; what is left waits for the next tick.
 */
#define SWEEP_BATCH 200
#define SWEEP_MAX_BATCHES 5

static int64_t sweep_period_ms(const struct chat_config *cfg)
{
    int64_t p = cfg->session_ttl_ms > 0 ? cfg->session_ttl_ms / 4 : 60000;
    return p < 100 ? 100 : p > 60000 ? 60000 : p;
}

static void on_idem_swept(store_op *op, void *ud)
{
    chat_worker *w = ud;
    int64_t idem = op->rc == CHAT_OK ? op->out.count : 0;
    if (w->sweep_sessions > 0 || idem > 0)
        chat_log(LOG_INFO, "retention sweep",
                 json_pack("{s:I,s:I}", "sessions_deleted", (json_int_t)w->sweep_sessions,
                           "idempotency_records_deleted", (json_int_t)idem));
    w->sweeping = false;
}

/* Submits the sweep's next batch: sessions while full batches come back, then idempotency records. */
static void sweep_next(chat_worker *w);

static void on_sessions_swept(store_op *op, void *ud)
{
    chat_worker *w = ud;
    w->sweep_batches++;
    if (op->rc == CHAT_OK)
        w->sweep_sessions += op->out.count;
    if (op->rc != CHAT_OK || op->out.count < SWEEP_BATCH)
        w->sweep_batches = SWEEP_MAX_BATCHES; /* nothing more to do now */
    sweep_next(w);
}

static void sweep_next(chat_worker *w)
{
    const struct chat_config *cfg = w->app->cfg;
    if (cfg->session_ttl_ms > 0 && w->sweep_batches < SWEEP_MAX_BATCHES) {
        store_op *op = store_op_new(STORE_OP_SESSIONS_EXPIRE);
        op->in.before = w->sweep_now - cfg->session_ttl_ms;
        op->in.now = w->sweep_now;
        op->in.limit = SWEEP_BATCH;
        store_submit(w->db, op, on_sessions_swept, w);
        return;
    }
    store_op *op = store_op_new(STORE_OP_IDEM_EXPIRE);
    op->in.now = w->sweep_now;
    op->in.limit = SWEEP_BATCH * SWEEP_MAX_BATCHES;
    store_submit(w->db, op, on_idem_swept, w);
}

static void sweep_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    chat_worker *w = arg;
    if (w->sweeping || w->draining)
        return;
    w->sweeping = true;
    w->sweep_batches = 0;
    w->sweep_sessions = 0;
    w->sweep_now = chat_now_ms();
    sweep_next(w);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    chat_worker *w = arg;
    if (w->draining) {
        /* Second signal: stop waiting. */
        w->drain_deadline = 0;
        return;
    }
    w->draining = true;
    w->drain_deadline = chat_mono_ms() + w->app->cfg->drain_timeout_ms;
    http_server_stop_accepting(w->http);
    struct timeval tv = { 0, DRAIN_TICK_MS * 1000 };
    event_add(w->drain_tick, &tv);
}

/* After a burst (maybe_trim): drop what this loop keeps for reuse. */
static void on_shed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    chat_worker *w = arg;
    llm_transport_shed(w->llm);
}

/* The turn engine of w: all a turn may see of the worker (its loop, store and
 * transport), the models table, and the few settings a turn reads. */
static turn_engine *worker_turn_engine(const chat_worker *w)
{
    const struct chat_config *cfg = w->app->cfg;
    turn_env env = {
        .base = w->base,
        .db = w->db,
        .llm = w->llm,
        .models = w->app->models,
        .max_tokens = cfg->max_tokens,
        .default_system_prompt = cfg->default_system_prompt,
        .lock_ttl_ms = cfg->lock_ttl_ms,
        .max_sessions_per_key = cfg->max_sessions_per_key,
        .keep_partial = cfg->cancel_policy == CANCEL_KEEP_PARTIAL,
        .drop_unsupported = cfg->drop_unsupported_params,
    };
    return turn_engine_new(&env);
}

/*
 * A watch change that reached a descriptor already closed: with the changelist
 * (worker_loop_new), the changes of a loop turn are applied only before the
 * loop waits, and a connection can be accepted, refused and closed within one
 * turn, its number even reused by the next one in between (a burst past
 * MAX_CONNECTIONS). epoll_ctl then fails with EBADF, and libevent warns for an
 * add or a modify (not for a delete). Nothing is left unwatched: the
 * descriptor is gone. Debug, not a warning an operator must look into.
 */
static bool watch_of_closed_descriptor(const char *msg)
{
    static const char tail[] = ": Bad file descriptor";
    size_t n = strlen(msg);
    return strncmp(msg, "Epoll ", 6) == 0 && n >= sizeof tail - 1 && strcmp(msg + n - (sizeof tail - 1), tail) == 0;
}

/* libevent's own messages (a failed epoll_ctl, say) go to the structured log,
 * not as raw text on stderr. */
static void libevent_log(int severity, const char *msg)
{
    chat_log_level lvl = severity >= EVENT_LOG_ERR    ? LOG_ERROR
                         : severity == EVENT_LOG_WARN ? LOG_WARN
                         : severity == EVENT_LOG_MSG  ? LOG_INFO
                                                      : LOG_DEBUG;
    if (lvl == LOG_WARN && watch_of_closed_descriptor(msg))
        lvl = LOG_DEBUG;
    chat_log(lvl, "libevent", json_pack("{s:s}", "detail", msg));
}

/*
 * A worker's loop applies its watch changes through epoll's changelist: the
 * changes of one loop turn are merged per descriptor and reach the kernel in
 * one pass before the loop waits. evhttp turns a connection's read and write
 * interest off and on around every request, libcurl its sockets' around every
 * transfer; merged, a request costs fewer epoll_ctl calls (4-5 % less CPU per
 * stateless turn, interleaved runs). The changelist's one caveat (libevent's
 * documentation) is a descriptor shared through dup(): chatd watches none.
 * (It was off for a while: 10,000 streams over HTTP/2 had stalled with it,
 * but they stall as often without it; docs/ARCHITECTURE.md.)
 */
static struct event_base *worker_loop_new(void)
{
    struct event_config *ec = event_config_new();
    if (!ec)
        return NULL;
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(ec);
    event_config_free(ec);
    return base;
}

/*
 * Descriptor records, made up front. A loop keeps a small record (about 32
 * bytes) for every descriptor number it has ever watched, made the first time
 * that number is watched and kept until the loop is freed. Made on demand, the
 * records of a first burst of streams land in the holes of that burst's own
 * memory (malloc hands out recently freed chunks first), and once the burst
 * ends each one pins the page around it: no allocator can give back a page
 * that still holds a live chunk (bench/README.md, "returned").
 *
 * So each loop watches every descriptor number below n once, at start, before
 * it owns any descriptor: libevent makes the record, and the watch is undone
 * at once. Through the changelist (worker_loop_new) an add undone before the
 * loop runs never reaches the kernel, so no number's state matters (closed, a
 * file, another thread's socket). The undone changes still take a slot of the
 * changelist until the loop applies it; a dummy event run every
 * RESERVE_BATCH numbers empties it, so that it never grows past a batch.
 * Cost: about 40 bytes per number per loop, made in about 1 us each.
 */
#define RESERVE_BATCH 1024

static void nothing_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
}

static void reserve_descriptor_slots(struct event_base *base, int n)
{
    struct event *ev = event_new(base, -1, 0, NULL, NULL);
    struct event *flush = event_new(base, -1, 0, nothing_cb, NULL);
    for (int fd = 0; ev && flush && fd < n; fd++) {
        if (event_assign(ev, base, fd, EV_READ, NULL, NULL) == 0 && event_add(ev, NULL) == 0)
            event_del(ev);
        if (fd % RESERVE_BATCH == RESERVE_BATCH - 1 || fd == n - 1) {
            event_active(flush, EV_TIMEOUT, 0);
            event_base_loop(base, EVLOOP_NONBLOCK);
        }
    }
    if (flush)
        event_free(flush);
    if (ev)
        event_free(ev);
}

static void *worker_main(void *arg)
{
    chat_worker *w = arg;
    const struct chat_config *cfg = w->app->cfg;
    char err[256] = "";

    if (store_open(cfg->database_url, &w->db, err, sizeof err) != CHAT_OK) {
        snprintf(w->startup_error, sizeof w->startup_error, "cannot open the database: %s", err);
        goto fail;
    }
    w->base = worker_loop_new();
    if (!w->base) {
        snprintf(w->startup_error, sizeof w->startup_error, "cannot create an event loop");
        goto fail;
    }
    reserve_descriptor_slots(w->base, w->app->descriptor_slots);
    {
        /* The instance's DATABASE_POOL_SIZE, shared out among the workers
         * (each needs at least one, so fewer connections than workers is rounded up). */
        int n = w->app->nworkers;
        int share = cfg->database_pool_size / n + (w->index < cfg->database_pool_size % n ? 1 : 0);
        if (share < 1)
            share = 1;
        if (store_attach(w->db, w->base, share, cfg->database_queue_timeout_ms) != CHAT_OK) {
            snprintf(w->startup_error, sizeof w->startup_error, "cannot start the database pool");
            goto fail;
        }
    }
    w->llm = llm_transport_new(w->base);
    llm_transport_set_http_version(w->llm, cfg->provider_http_version == CHAT_HTTP_2     ? LLM_HTTP_2
                                           : cfg->provider_http_version == CHAT_HTTP_1_1 ? LLM_HTTP_1_1
                                                                                         : LLM_HTTP_AUTO);
    w->auth_negcache = auth_negcache_new(AUTH_NEGCACHE_ENTRIES, AUTH_NEGCACHE_TTL_MS);
    w->turns = worker_turn_engine(w);
    if (w->app->redis_cfg)
        w->redis = redis_limit_new(w->base, w->app->redis_cfg, w->app->limiter);
    http_limits lim = {
        .max_header_bytes = cfg->max_header_bytes,
        .max_body_bytes = cfg->max_body_bytes,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .header_timeout_ms = cfg->header_timeout_ms,
        .stream_buffer_bytes = cfg->stream_buffer_bytes,
        .max_connections = w->app->max_connections,
        .open_connections = &w->app->open_connections,
    };
    w->api = (api_env){
        .base = w->base,
        .db = w->db,
        .turns = w->turns,
        .redis = w->redis,
        .auth_negcache = w->auth_negcache,
        .cfg = cfg,
        .models = w->app->models,
        .limiter = w->app->limiter,
        .auth_failures = w->app->auth_failures,
        .cors = w->app->cors,
        .trusted_proxies = w->app->trusted_proxies,
        .stopping = &w->app->stopping,
        .aborted = &w->aborted,
    };
    w->http = http_server_new(w->base, w->listen_fd, &lim, api_dispatch, &w->api);
    w->listen_fd = -1; /* owned by the server now (or closed on failure) */
    if (!w->http) {
        snprintf(w->startup_error, sizeof w->startup_error, "cannot start the HTTP server");
        goto fail;
    }
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->shed_ev = event_new(w->base, -1, 0, on_shed, w);
    w->drain_tick = event_new(w->base, -1, EV_PERSIST, drain_tick, w);
    if (w->index == 0) {
        int64_t ms = sweep_period_ms(cfg);
        struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
        w->sweep = event_new(w->base, -1, EV_PERSIST, sweep_tick, w);
        event_add(w->sweep, &tv);
    }
    atomic_store(&w->state, CHAT_WORKER_RUNNING);

    event_base_dispatch(w->base);

    /* Turns still linked here were never started on the wire (loop exited): end them. */
    turn_abort_all(w->turns);
    /* Store operations still in flight (commits of the turns left above,
     * clean-up writes) end now, while the requests their callbacks answer
     * still exist; a commit that ends so answers and frees its turn. */
    store_detach(w->db);
    turn_engine_free(w->turns); /* after the last operation's callback */
    w->turns = NULL;
    /* From here the main thread must not wake this worker: its events go away. */
    pthread_mutex_lock(&w->app->wake_lock);
    atomic_store(&w->state, CHAT_WORKER_STOPPED);
    pthread_mutex_unlock(&w->app->wake_lock);
    http_server_free(w->http);
    w->http = NULL;
    redis_limit_free(w->redis); /* after the server: checks in flight are dropped */
    w->redis = NULL;
    llm_transport_free(w->llm);
    w->llm = NULL;
    auth_negcache_free(w->auth_negcache);
    w->auth_negcache = NULL;
    event_free(w->stop_ev);
    event_free(w->shed_ev);
    event_free(w->drain_tick);
    if (w->sweep)
        event_free(w->sweep);
    event_base_free(w->base);
    w->base = NULL;
    store_close(w->db);
    w->db = NULL;
    return NULL;

fail:
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    w->listen_fd = -1;
    http_server_free(w->http);
    w->http = NULL;
    redis_limit_free(w->redis);
    w->redis = NULL;
    llm_transport_free(w->llm);
    w->llm = NULL;
    auth_negcache_free(w->auth_negcache);
    w->auth_negcache = NULL;
    store_detach(w->db);        /* its events live on the base */
    turn_engine_free(w->turns); /* no turn ever started */
    w->turns = NULL;
    if (w->base)
        event_base_free(w->base);
    w->base = NULL;
    store_close(w->db);
    w->db = NULL;
    atomic_store(&w->state, CHAT_WORKER_FAILED);
    return NULL;
}

/* Asks every running worker to drain (again: a second signal ends the drain). */
static void wake_workers(chat_app *app, int started)
{
    pthread_mutex_lock(&app->wake_lock);
    for (int i = 0; i < started; i++)
        if (atomic_load(&app->workers[i].state) == CHAT_WORKER_RUNNING)
            event_active(app->workers[i].stop_ev, EV_TIMEOUT, 0);
    pthread_mutex_unlock(&app->wake_lock);
}

static bool loopback_host(const char *h)
{
    return strcmp(h, "127.0.0.1") == 0 || strcmp(h, "localhost") == 0 || strcmp(h, "::1") == 0 ||
           strncmp(h, "127.", 4) == 0;
}

/* Builds the guard parts of the app from cfg; false (logged) on a bad setting. */
static bool guard_init(chat_app *app, const struct chat_config *cfg)
{
    char err[256];
    if (!auth_required(cfg) && !loopback_host(cfg->host) && !cfg->allow_unauthenticated) {
        chat_log(LOG_ERROR, "refusing to listen on a non-loopback address without authentication",
                 json_pack("{s:s,s:s}", "host", cfg->host, "hint",
                           "set API_TOKEN or AUTH_MODE=keys, or ALLOW_UNAUTHENTICATED=on to accept the risk"));
        return false;
    }
    ratelimit_config rc = { .max_buckets = (size_t)cfg->rate_limit_max_buckets };
    if (ratelimit_spec_parse(cfg->rate_limit, &rc.requests, err, sizeof err) != CHAT_OK ||
        ratelimit_spec_parse(cfg->token_limit, &rc.tokens, err, sizeof err) != CHAT_OK ||
        ratelimit_spec_parse(cfg->auth_failure_limit, &app->auth_failures, err, sizeof err) != CHAT_OK) {
        chat_log(LOG_ERROR, "bad rate limit", json_pack("{s:s}", "error", err));
        return false;
    }
    app->limiter = ratelimit_new(&rc);
    if (cfg->redis_url && *cfg->redis_url) {
        app->redis_cfg = chat_xcalloc(1, sizeof *app->redis_cfg);
        redis_limit_config_init(app->redis_cfg);
        app->redis_cfg->requests = rc.requests;
        app->redis_cfg->tokens = rc.tokens;
        if (redis_limit_parse_url(cfg->redis_url, app->redis_cfg, err, sizeof err) != CHAT_OK) {
            chat_log(LOG_ERROR, "invalid REDIS_URL", json_pack("{s:s}", "error", err));
            return false;
        }
    }
    if (cors_policy_new(cfg->cors_origins, cfg->cors_credentials, 600, &app->cors, err, sizeof err) != CHAT_OK) {
        chat_log(LOG_ERROR, "invalid CORS_ORIGINS", json_pack("{s:s}", "error", err));
        return false;
    }
    if (client_addr_trust_parse(cfg->trusted_proxies, &app->trusted_proxies, err, sizeof err) != CHAT_OK) {
        chat_log(LOG_ERROR, "invalid TRUSTED_PROXIES", json_pack("{s:s}", "error", err));
        return false;
    }
    return true;
}

static void guard_free(chat_app *app)
{
    free(app->redis_cfg);
    ratelimit_free(app->limiter);
    cors_policy_free(app->cors);
    client_addr_trust_free(app->trusted_proxies);
}

/*
 * Descriptors. Every client connection is a socket, and a turn adds one more
 * (its provider connection), so the soft RLIMIT_NOFILE is raised to the hard
 * limit at start, and the default connection cap keeps clear of it: from the
 * limit, a fixed reserve (standard streams, logs, the database files and WAL,
 * .env and models files, Redis) and a per-worker share (event loop, wake-up
 * pipes, listener, SQLite connections, curl's resolver and multi handle) and
 * the PostgreSQL pool are set aside, and half of the rest goes to client
 * connections, half to the provider connections their turns may open.
 */
#define FD_RESERVE 64
#define FD_PER_WORKER 16

static int64_t nofile_soft_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    rlim_t before = rl.rlim_cur;
    if (rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = before;
    }
    json_t *f = json_object();
    json_object_set_new(f, "soft_at_start",
                        before == RLIM_INFINITY ? json_string("unlimited") : json_integer((json_int_t)before));
    json_object_set_new(
        f, "hard", rl.rlim_max == RLIM_INFINITY ? json_string("unlimited") : json_integer((json_int_t)rl.rlim_max));
    json_object_set_new(
        f, "soft", rl.rlim_cur == RLIM_INFINITY ? json_string("unlimited") : json_integer((json_int_t)rl.rlim_cur));
    chat_log(LOG_INFO, "file descriptor limit (RLIMIT_NOFILE)", f);
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > INT32_MAX ? INT32_MAX : (int64_t)rl.rlim_cur;
}

/* MAX_CONNECTIONS when set, else the share of the descriptor limit described above (at least 1). */
static int connection_cap(const struct chat_config *cfg, int nworkers, int64_t soft)
{
    if (cfg->max_connections > 0) {
        if (soft > 0 && cfg->max_connections > soft)
            chat_log(LOG_WARN, "MAX_CONNECTIONS is above the file descriptor limit: accept() will fail first",
                     json_pack("{s:i,s:I}", "max_connections", cfg->max_connections, "nofile", (json_int_t)soft));
        return cfg->max_connections;
    }
    if (soft <= 0)
        soft = 1024;
    int64_t budget = soft - FD_RESERVE - (int64_t)nworkers * FD_PER_WORKER - cfg->database_pool_size;
    int64_t cap = budget / 2;
    return cap < 1 ? 1 : cap > 10000000 ? 10000000 : (int)cap;
}

/* How many descriptor numbers each loop makes its records for at start
 * (reserve_descriptor_slots): all a full connection cap can use (each client
 * connection and its provider connection, and what is set aside above), below
 * the descriptor limit, and at most DESCRIPTOR_SLOTS_MAX (about 1.3 MB per
 * loop); numbers above get their records on demand. */
#define DESCRIPTOR_SLOTS_MAX 32768

static int descriptor_slot_count(const struct chat_config *cfg, int nworkers, int64_t soft, int max_connections)
{
    int64_t n = 2 * (int64_t)max_connections + FD_RESERVE + (int64_t)nworkers * FD_PER_WORKER + cfg->database_pool_size;
    if (soft > 0 && n > soft)
        n = soft;
    return n > DESCRIPTOR_SLOTS_MAX ? DESCRIPTOR_SLOTS_MAX : (int)n;
}

/*
 * Memory back after a burst. The allocator keeps what a burst of streams
 * freed in its arenas (one per worker thread, more under contention), so
 * without help RSS stays at the burst's peak (bench/README.md, "returned").
 * chat_mem_release (core/mem.h: jemalloc purges every arena, glibc's
 * malloc_trim walks them) gives the free pages back. It runs here, on the main
 * thread, which otherwise only waits for signals: no loop ever waits for the
 * walk itself, a worker only for its arena's lock while that arena is trimmed.
 *
 * When: the main thread looks at the open client connections (each stream is
 * one) every TRIM_CHECK_MS; once they fell to at most half of their peak since
 * the last trim, and by at least TRIM_MIN_DROP, it trims and starts over from
 * the current count. A burst's end is thus a few trims (halving steps), an
 * ordinary load none; a churn of short requests on few connections needs none
 * (it frees and reuses the same chunks). The last step of a burst may be
 * smaller than TRIM_MIN_DROP: once a burst was trimmed, the connections
 * reaching none trims too.
 *
 * What the loops keep for reuse, the burst's last idle easy handles and
 * provider connections, sits among the freed chunks and pins their pages: at
 * each trim the workers are asked to drop it (llm_transport_shed; a loop with
 * calls running keeps its connections), and the next check trims once more
 * to return what they dropped. libevent's per-descriptor records would pin
 * pages too: each loop makes them at start (reserve_descriptor_slots).
 *
 * A steady load has no drop, but its churn leaves free chunks inside the
 * arenas too (the history cache replacing sessions, each thread's arena
 * growing to its own worst case), and with the automatic give-back off they
 * were never returned: a 30-minute soak crept by 600-800 KiB a minute after
 * the cache was full. So it also trims every TRIM_STEADY_MS, whatever the
 * connections do.
 */
#define TRIM_CHECK_MS 1000
#define TRIM_MIN_DROP 256
#define TRIM_STEADY_MS 60000

typedef struct trim_state {
    int peak;        /* most open connections since the last trim */
    bool burst;      /* a drop of TRIM_MIN_DROP was trimmed, and some connections are still open */
    bool retrim;     /* the workers were asked to shed: trim again at the next check */
    int64_t last_ms; /* the last trim (chat_mono_ms) */
} trim_state;

static void shed_workers(chat_app *app)
{
    pthread_mutex_lock(&app->wake_lock);
    for (int i = 0; i < app->nworkers; i++)
        if (atomic_load(&app->workers[i].state) == CHAT_WORKER_RUNNING)
            event_active(app->workers[i].shed_ev, EV_TIMEOUT, 0);
    pthread_mutex_unlock(&app->wake_lock);
}

static void trim_now(trim_state *ts, const char *why, int open)
{
    int64_t t0 = chat_mono_us();
    bool released = chat_mem_release();
    ts->last_ms = chat_mono_ms();
    chat_log(LOG_DEBUG, "memory trimmed",
             json_pack("{s:s,s:i,s:i,s:b,s:I}", "why", why, "peak", ts->peak, "open", open, "released", released,
                       "duration_us", (json_int_t)(chat_mono_us() - t0)));
}

static void maybe_trim(chat_app *app, trim_state *ts)
{
    int open = atomic_load(&app->open_connections);
    if (open > ts->peak)
        ts->peak = open;
    bool drop = ts->peak - open >= TRIM_MIN_DROP && open <= ts->peak / 2;
    bool tail = open == 0 && ts->burst;
    if (!drop && !tail) {
        if (ts->retrim) {
            ts->retrim = false;
            trim_now(ts, "shed", open);
        } else if (chat_mono_ms() - ts->last_ms >= TRIM_STEADY_MS) {
            trim_now(ts, "steady", open);
        }
        return;
    }
    shed_workers(app);
    trim_now(ts, drop ? "drop" : "tail", open);
    ts->burst = open > 0;
    ts->retrim = true;
    ts->peak = open;
}

static int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

chat_rc chat_app_run(const struct chat_config *cfg)
{
    chat_app app = { .wake_lock = PTHREAD_MUTEX_INITIALIZER };
    chat_rc rc = CHAT_EIO;
    char err[512] = "";
    sigset_t sigs;
    int started = 0;

    app.cfg = cfg;
    chat_mem_tune();
    store_set_history_cache_size(cfg->history_cache_bytes);
    if (models_load(cfg, &app.models, err, sizeof err) != CHAT_OK) {
        chat_log(LOG_ERROR, "cannot load the models table", json_pack("{s:s}", "error", err));
        return CHAT_EINVAL;
    }
    if (!guard_init(&app, cfg) || chat_app_metrics_init(CHATD_VERSION) != CHAT_OK) {
        guard_free(&app);
        models_free(app.models);
        return CHAT_EINVAL;
    }
    app.nworkers = cfg->workers > 0 ? cfg->workers : cpu_count();
    app.workers = chat_xcalloc((size_t)app.nworkers, sizeof *app.workers);
    int64_t nofile = nofile_soft_limit();
    app.max_connections = connection_cap(cfg, app.nworkers, nofile);
    app.descriptor_slots = descriptor_slot_count(cfg, app.nworkers, nofile, app.max_connections);
    event_set_log_callback(libevent_log);
    atomic_init(&app.open_connections, 0);

    if (evthread_use_pthreads() != 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        chat_log(LOG_ERROR, "cannot initialise libevent threads or libcurl", NULL);
        free(app.workers);
        models_free(app.models);
        guard_free(&app);
        metrics_shutdown();
        return CHAT_EIO;
    }

    /* Migrations run once here, before the workers open their own handles. */
    store *db = NULL;
    if (store_open(cfg->database_url, &db, err, sizeof err) != CHAT_OK) {
        chat_log(LOG_ERROR, "cannot open the database", json_pack("{s:s}", "error", err));
        goto out;
    }
    int schema = store_schema_version(db);
    store_close(db);

    /* Signals are taken by sigwait on this thread only. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    app.port = cfg->port;
    for (int i = 0; i < app.nworkers; i++) {
        chat_worker *w = &app.workers[i];
        int bound = 0;
        w->index = i;
        w->app = &app;
        w->listen_fd = http_listen(cfg->host, app.port, &bound, err, sizeof err);
        if (w->listen_fd < 0) {
            chat_log(LOG_ERROR, "cannot listen", json_pack("{s:s}", "error", err));
            goto stop;
        }
        app.port = bound; /* with PORT=0 the first bind picks the port for all */
    }
    for (int i = 0; i < app.nworkers; i++) {
        chat_worker *w = &app.workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            chat_log(LOG_ERROR, "cannot start a worker thread", NULL);
            goto stop;
        }
        started++;
        while (atomic_load(&w->state) == CHAT_WORKER_STARTING)
            usleep(1000);
        if (atomic_load(&w->state) == CHAT_WORKER_FAILED) {
            chat_log(LOG_ERROR, "worker failed to start", json_pack("{s:s}", "error", w->startup_error));
            goto stop;
        }
    }

    chat_log(LOG_NOTICE, "listening",
             json_pack("{s:s,s:i,s:i,s:i,s:s,s:i,s:s,s:s}", "host", cfg->host, "port", app.port, "workers",
                       app.nworkers, "max_connections", app.max_connections, "database",
                       strncmp(cfg->database_url, "sqlite", 6) == 0 ? "sqlite" : "postgres", "schema_version", schema,
                       "default_model", models_default(app.models)->name, "allocator", chat_mem_allocator()));
    chat_log(LOG_INFO, "guard",
             json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:i}", "auth_mode", auth_mode_name(cfg), "rate_limit",
                       cfg->rate_limit, "token_limit", cfg->token_limit, "cors_origins", cfg->cors_origins,
                       "limits_shared_by", app.redis_cfg ? "redis" : "this process", "auth_failure_limit",
                       cfg->auth_failure_limit, "trusted_proxies",
                       (json_int_t)client_addr_trust_count(app.trusted_proxies), "rate_limit_ipv6_prefix",
                       cfg->rate_limit_ipv6_prefix));
    if (!models_default(app.models)->available)
        chat_log(LOG_WARN, "the default model's provider has no API key: chat requests will get 503",
                 json_pack("{s:s,s:s}", "model", models_default(app.models)->name, "missing",
                           models_default(app.models)->missing));

    int sig = 0;
    trim_state trim = { .last_ms = chat_mono_ms() };
    for (;;) {
        struct timespec ts = { TRIM_CHECK_MS / 1000, (TRIM_CHECK_MS % 1000) * 1000000L };
        siginfo_t si;
        sig = sigtimedwait(&sigs, &si, &ts);
        if (sig > 0)
            break;
        maybe_trim(&app, &trim);
    }
    chat_log(LOG_NOTICE, "shutting down: draining",
             json_pack("{s:s,s:I}", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", "drain_timeout_ms",
                       (json_int_t)cfg->drain_timeout_ms));
    rc = CHAT_OK;

stop:
    atomic_store(&app.stopping, true);
    wake_workers(&app, started);
    /* A second signal shortens the drain; wait for the workers in the meantime. */
    for (int i = 0; i < started; i++) {
        for (;;) {
            struct timespec ts = { 0, 50 * 1000 * 1000 };
            siginfo_t si;
            if (sigtimedwait(&sigs, &si, &ts) > 0)
                wake_workers(&app, started);
            if (pthread_tryjoin_np(app.workers[i].thread, NULL) == 0)
                break;
        }
    }
    for (int i = 0; i < app.nworkers; i++)
        if (app.workers[i].listen_fd >= 0)
            close(app.workers[i].listen_fd);
    if (rc == CHAT_OK)
        chat_log(LOG_NOTICE, "stopped", NULL);
out:
    curl_global_cleanup();
    free(app.workers);
    models_free(app.models);
    guard_free(&app);
    metrics_shutdown();
    return rc;
}
