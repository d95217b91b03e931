/*
 * call.c: one LLM call, whatever the provider (contract in provider.h).
 *
 * How it works. A call owns one curl easy handle, reused for every attempt,
 * and three libevent events:
 * - kick_ev, activated by hand, runs deferred work on the next loop turn:
 *   starting the first attempt (so no callback can run inside
 *   llm_call_start), resuming a paused transfer, and a cancel requested from
 *   inside a callback (curl must not be called from its own callbacks);
 * - deadline_ev, one timer for every deadline of the call: the total deadline
 *   and the current attempt's first-byte or idle deadline. It is re-armed
 *   lazily: receiving bytes only records the time (except the first byte,
 *   which switches from the first-byte to the idle deadline, possibly an
 *   earlier one), and when the timer fires it either ends the attempt or
 *   re-arms itself for the next deadline. While paused only the total
 *   deadline counts;
 * - retry_ev, the backoff wait between two attempts.
 *
 * Bytes arrive in header_cb (status line and the few headers we use) and
 * write_cb. At the first body byte the attempt picks a mode: a 2xx streaming
 * reply goes through the SSE parser into the provider's on_sse_event; a 2xx
 * non-streaming reply and an error reply are buffered (bounded) and parsed
 * when the transfer ends. Failures found inside curl callbacks are only
 * recorded (the callback returns 0 so curl aborts the transfer); the outcome
 * is decided in the loop when the transport reports the transfer done
 * (llm__call_transfer_done), and only then do retries or on_done happen.
 *
 * Pause. When on_delta returns LLM_PAUSE, the rest of the current piece is
 * still parsed (so no byte is ever parsed twice), the text it yields is kept
 * in `pending`, and write_cb returns CURL_WRITEFUNC_PAUSE. curl then keeps that
 * piece and hands it to us again after curl_easy_pause(CURLPAUSE_CONT): we
 * skip that many bytes (`skip`). llm_call_resume defers to kick_ev, which
 * first delivers `pending`, then unpauses curl. A caller with on_event gets
 * every reply event instead of text; events that come while paused are held
 * (copied, in order, in `held`) the same way and delivered one by one on
 * resume, before curl is unpaused; a pause from one of them keeps the rest.
 *
 * Reentrancy. `depth` counts the curl callbacks and user callbacks we are
 * inside; llm_call_cancel with depth > 0 only marks the call cancelled and
 * lets kick_ev free it, and every path checks `cancelled` after a user
 * callback returns.
 */
#define _GNU_SOURCE
#include <event2/event.h>
#include <event2/event_struct.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_in.h"
#include "core/util.h"
#include "llm/call_internal.h"
#include "llm/provider.h"
#include "llm/sse.h"

/* Longest value kept from one captured response header. */
#define HDR_MAX 256
/* Cap on a buffered error body (the message excerpt only needs the start). */
#define ERROR_BODY_MAX (64 * 1024)
/* Cap on an error message taken from a provider error body. */
#define ERROR_MESSAGE_MAX 1024
/* curl's receive buffer per transfer (CURLOPT_BUFFERSIZE; curl's default is
 * 16 KiB, its minimum 1 KiB), held for the whole call. A stream can be open for
 * minutes, thousands of them at once, and its deltas arrive a few hundred bytes
 * at a time: the minimum, which measured 3 KiB less RSS per open stream than
 * 4 KiB (bench/README.md, "Concurrent streams"); a burst of deltas just takes a
 * few more reads. A non-streamed reply arrives whole and the call is short:
 * curl's default. */
#define LLM_RECV_BUFFER_STREAM 1024L
#define LLM_RECV_BUFFER_JSON 16384L
/* curl's default upload buffer, and its largest (CURLOPT_UPLOAD_BUFFERSIZE). */
#define LLM_UPLOAD_BUFFER_MIN ((size_t)64 * 1024)
#define LLM_UPLOAD_BUFFER_MAX ((size_t)2 * 1024 * 1024)
/* The longest backoff wait, as in the official SDKs (A8). */
#define BACKOFF_CAP_MS 8000

enum { KICK_START = 1, KICK_RESUME = 2, KICK_CANCEL = 4 };

typedef enum { MODE_NONE = 0, MODE_SSE, MODE_JSON, MODE_ERROR } body_mode;

/* The x-should-retry response header: the provider's own word on retrying, which
 * overrides the status-based decision when present. */
typedef enum { RETRY_HINT_ABSENT = 0, RETRY_HINT_YES, RETRY_HINT_NO } retry_hint;

/* What one attempt received. Reset before each attempt. */
typedef struct attempt {
    int status;         /* HTTP status of the last response head seen, 0 before any */
    bool got_byte;      /* any response byte (header or body) arrived */
    char *content_type; /* heap copies of captured headers, NULL if absent */
    char *request_id;
    char *retry_after_ms;
    char *retry_after;
    retry_hint should_retry; /* x-should-retry: "true", "false", or absent (or any other value) */
    body_mode mode;          /* chosen at the first body byte */
    chat_buf body;           /* buffered JSON or error body (MODE_JSON / MODE_ERROR), max_response_bytes */
    sse_parser *sse;         /* MODE_SSE */
    size_t skip;             /* bytes at the head of the next deliveries already parsed (pause) */
} attempt;

/* A reply event held by a pause (on_event), with copies of its strings. */
typedef struct held_event {
    llm_event_kind kind;
    int index;
    char *id, *name, *data; /* heap or NULL */
    size_t len;
} held_event;

/* The outcome of an attempt or of the call. Strings are heap. */
typedef struct outcome {
    llm_status status;
    char *type;
    char *message;
    char *code; /* the provider's error code, NULL if none */
    bool retryable;
} outcome;

struct llm_call {
    llm_link link;                /* in the transport's list of live calls */
    llm_transport *t;             /* the transport; outlives the call */
    const llm_provider *p;        /* borrowed, outlives the call (provider.h) */
    const llm_provider_ops *ops;  /* p->kind's wire format */
    llm_callbacks cbs;            /* copied from llm_call_start */
    void *ud;                     /* passed to the callbacks unchanged */
    bool stream;                  /* streaming request */
    char *body;                   /* request body (kept: CURLOPT_POSTFIELDS does not copy) */
    struct curl_slist *headers;   /* request headers (contain the API key: never logged) */
    CURL *easy;                   /* reused for every attempt */
    llm_h2c_ticket h2c;           /* llm__transport_prepare: the h2c connection it opens, if any */
    char errbuf[CURL_ERROR_SIZE]; /* curl's detail for the last failure */
    struct event kick_ev;         /* deferred work, see the file comment (embedded: no allocation) */
    struct event deadline_ev;     /* total / first-byte / idle deadline timer */
    struct event retry_ev;        /* backoff wait */
    unsigned kick;                /* KICK_* bits pending on kick_ev */
    int depth;                    /* curl or user callbacks we are inside (cancel defers when > 0) */
    bool cancelled;               /* llm_call_cancel was called: no callback any more */
    bool finishing;               /* inside on_done: the call is freed right after */
    bool in_multi;                /* easy is added to the multi handle */
    bool paused;                  /* on_delta asked to pause and llm_call_resume has not run yet */
    bool curl_paused;             /* write_cb returned CURL_WRITEFUNC_PAUSE and curl was not unpaused */
    bool done_while_paused;       /* the transfer ended while pending text waits for resume */
    CURLcode done_rc;             /* with done_while_paused: the transfer's result */
    bool delivered;               /* some text reached on_delta: no retry from now on */
    int attempts;                 /* attempts started */
    int64_t start_ms;             /* llm_call_start, monotonic */
    int64_t start_us;             /* the same, in microseconds */
    int64_t total_deadline_ms;    /* start_ms + total_timeout_ms */
    int64_t attempt_start_ms;     /* current attempt started */
    int64_t last_byte_ms;         /* last response byte (or resume) of the current attempt */
    int64_t ttfb_ms;              /* current attempt's time to first byte, -1 before it */
    chat_buf text;                /* reply text so far, at most max_response_bytes */
    chat_buf pending;             /* text parsed after a pause, delivered on resume (a suffix of text) */
    struct held_event *held;      /* on_event: events parsed after a pause, delivered on resume */
    size_t n_held, held_cap;      /* events in held, and room */
    size_t held_next;             /* the first of them not delivered yet */
    attempt a;                    /* the current attempt */
    llm_parse ps;                 /* what the provider parser found in the current attempt */
    int last_status;              /* last HTTP status seen over all attempts */
    int64_t last_retry_after_ms;  /* retry hint of the last response classified, -1 if none */
};

/* ------------------------------------------------------------------------ */
/* Small helpers shared with the providers                                   */

void llm_parse_init(llm_parse *st, llm_emit_fn emit, void *emit_ud)
{
    memset(st, 0, sizeof *st);
    st->emit = emit;
    st->emit_ud = emit_ud;
    st->usage.input_tokens = st->usage.output_tokens = -1;
    st->usage.cache_read_tokens = st->usage.cache_write_tokens = -1;
    st->usage.reasoning_tokens = -1;
    st->block_index = -1;
    st->err = LLM_OK;
}

void llm_parse_reset(llm_parse *st)
{
    free(st->model);
    free(st->stop_reason);
    free(st->err_type);
    free(st->err_message);
    free(st->err_code);
    free(st->stop_sequence);
    json_decref(st->content);
    free(st->open_id);
    free(st->open_name);
    free(st->open_sig);
    free(st->acc);
    for (size_t i = 0; i < st->n_slots; i++) {
        free(st->slots[i].id);
        free(st->slots[i].name);
        free(st->slots[i].args);
    }
    free(st->slots);
    llm_event_fn event = st->event;
    bool via_tool = st->json_via_tool;
    size_t max = st->max_bytes;
    llm_parse_init(st, st->emit, st->emit_ud);
    st->event = event;
    st->json_via_tool = via_tool;
    st->max_bytes = max;
}

void llm_parse_fail(llm_parse *st, llm_status status, const char *type, const char *fmt, ...)
{
    if (st->err != LLM_OK)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) {
        chat_fatal("out of memory formatting an error");
    }
    va_end(ap);
    st->err = status;
    st->err_type = chat_xstrdup(type);
    /* The message may quote provider bytes (jansson's error text quotes the
     * token it stopped at, which can end inside a UTF-8 sequence); it goes into
     * JSON responses and log lines, so it must be valid UTF-8. */
    st->err_message = chat_utf8_escape(msg, strlen(msg));
    free(msg);
}

void llm_error_info_free(llm_error_info *e)
{
    if (!e)
        return;
    free(e->type);
    free(e->message);
    free(e->code);
    e->type = e->message = e->code = NULL;
}

bool llm_header_safe(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p >= 0x7F)
            return false;
    return true;
}

struct curl_slist *llm_slist_add(struct curl_slist *l, const char *line)
{
    struct curl_slist *n = curl_slist_append(l, line);
    if (!n) {
        chat_fatal("out of memory building request headers");
    }
    return n;
}

char *llm_strndup_utf8(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return chat_xstrndup(s, n);
    /* Back off to the start of the sequence that would be cut. */
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
        max--;
    return chat_xstrndup(s, max);
}

json_t *llm_load_object(llm_parse *st, const char *body, size_t len)
{
    json_error_t je;
    json_t *j = chat_json_loadb(body, len, 0, &je);
    if (json_is_object(j))
        return j;
    llm_parse_fail(st, LLM_ERR_PROTOCOL, "protocol_error", "malformed JSON response: %s",
                   j ? "not an object" : je.text);
    json_decref(j);
    return NULL;
}

char *llm_http_error_text(int http_status, const char *body, size_t len)
{
    char *ex = llm_excerpt(body, len, 200);
    char *msg = *ex ? chat_xasprintf("HTTP %d: %s", http_status, ex)
                    : chat_xasprintf("HTTP %d with an empty body", http_status);
    free(ex);
    return msg;
}

/* Writes {"role":role,"content":text} (compact; text is len bytes, 0 meaning
 * strlen(text); plain: known to need no escape, see llm_message), as a tree of
 * those two strings dumps; false if either is not UTF-8. */
static bool write_text_message(chat_json_writer *w, const char *role, const char *text, size_t len, bool plain)
{
    chat_json_write_raw(w, "{\"role\":", 8);
    if (!chat_json_write_string(w, role, strlen(role)))
        return false;
    chat_json_write_raw(w, ",\"content\":", 11);
    if (plain && len ? !chat_json_write_plain(w, text, len)
                     : !chat_json_write_string(w, text, len ? len : strlen(text)))
        return false;
    chat_json_write_raw(w, "}", 1);
    return true;
}

bool llm_write_messages(chat_json_writer *w, void *ud)
{
    const llm_body_messages *b = ud;
    const llm_request *req = b->req;
    bool first = true;
    /* The messages' text, room for each one's role, quotes and braces, and a
     * 32nd for escapes: the body grows once (a block message's JSON or many
     * escapes may still make it double). */
    size_t need = 64 + (b->system ? strlen(b->system) : 0);
    for (size_t i = 0; i < req->n_messages; i++)
        need += req->messages[i].content_len + 48;
    need += need / 32;
    chat_json_write_reserve(w, need);
    chat_json_write_raw(w, "[", 1);
    if (b->system && *b->system) {
        if (!write_text_message(w, "system", b->system, 0, false))
            return false;
        first = false;
    }
    for (size_t i = 0; i < req->n_messages; i++) {
        const json_t *o = b->objs[i];
        size_t k = json_is_array(o) ? json_array_size(o) : 1;
        for (size_t j = 0; j < k; j++) {
            if (!first)
                chat_json_write_raw(w, ",", 1);
            first = false;
            const llm_message *m = &req->messages[i];
            bool ok = !o                 ? write_text_message(w, m->role, m->content, m->content_len, m->content_plain)
                      : json_is_array(o) ? chat_json_write_value(w, json_array_get(o, j))
                                         : chat_json_write_value(w, o);
            if (!ok)
                return false;
        }
    }
    chat_json_write_raw(w, "]", 1);
    return true;
}

char *llm_excerpt(const char *body, size_t len, size_t max)
{
    const unsigned char *s = (const unsigned char *)body;
    char *out = chat_xmalloc(max + 1);
    size_t o = 0;
    bool html = false, in_tag = false, space = false;
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    html = i < len && s[i] == '<';
    while (i < len && o < max) {
        unsigned char ch = s[i];
        if (html && ch == '<') {
            in_tag = true;
            i++;
            continue;
        }
        if (in_tag) {
            if (ch == '>') {
                in_tag = false;
                space = o > 0; /* a tag separates words */
            }
            i++;
            continue;
        }
        if (ch < 0x20 || ch == 0x7F || ch == ' ') {
            space = o > 0;
            i++;
            continue;
        }
        size_t sl = chat_utf8_seq(s + i, len - i);
        size_t need = (sl ? sl : 1) + (space ? 1 : 0);
        if (o + need > max)
            break;
        if (space) {
            out[o++] = ' ';
            space = false;
        }
        if (sl == 0) {
            out[o++] = '?';
            i++;
        } else {
            memcpy(out + o, s + i, sl);
            o += sl;
            i += sl;
        }
    }
    out[o] = '\0';
    return out;
}

int64_t llm_retry_after_ms(const char *retry_after_ms, const char *retry_after, time_t now_unix)
{
    if (retry_after_ms && *retry_after_ms) {
        char *end = NULL;
        double v = strtod(retry_after_ms, &end);
        while (end && (*end == ' ' || *end == '\t'))
            end++;
        if (end != retry_after_ms && end && *end == '\0' && v >= 0 && v < 1e12)
            return (int64_t)v;
    }
    if (retry_after && *retry_after) {
        char *end = NULL;
        double v = strtod(retry_after, &end);
        while (end && (*end == ' ' || *end == '\t'))
            end++;
        if (end != retry_after && end && *end == '\0') {
            if (v >= 0 && v < 1e9)
                return (int64_t)(v * 1000.0);
            return -1;
        }
        time_t when = curl_getdate(retry_after, NULL);
        if (when != (time_t)-1) {
            if (when <= now_unix)
                return 0;
            return (int64_t)(when - now_unix) * 1000;
        }
    }
    return -1;
}

const char *llm_error_type_for_status(int s)
{
    switch (s) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 402: return "billing_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 408: return "timeout_error";
    case 409: return "conflict_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 504: return "timeout_error";
    case 529: return "overloaded_error";
    default: break;
    }
    if (s >= 400 && s < 500)
        return "invalid_request_error";
    return "api_error";
}

/* ------------------------------------------------------------------------ */
/* Provider selection                                                         */

/* The wire format of a provider kind, NULL if not built in. */
static const llm_provider_ops *ops_for(llm_provider_kind kind)
{
    switch (kind) {
    case LLM_PROVIDER_ANTHROPIC: return &llm_anthropic_ops;
    case LLM_PROVIDER_OPENAI: return &llm_openai_ops;
    default: return NULL;
    }
}

char *llm_build_body(const llm_provider *p, const llm_request *req)
{
    if (!p || !req)
        return NULL;
    const llm_provider_ops *ops = ops_for(p->kind);
    return ops ? ops->build_body(p, req, NULL) : NULL;
}

/* ------------------------------------------------------------------------ */
/* Buffers                                                                    */

static void outcome_free(outcome *o)
{
    free(o->type);
    free(o->message);
    free(o->code);
    o->type = o->message = o->code = NULL;
}

/* Attaches a copy of the provider's error code (after outcome_set, which clears it). */
static void outcome_code(outcome *o, const char *code)
{
    free(o->code);
    o->code = code ? llm_strndup_utf8(code, HDR_MAX) : NULL;
}

static void outcome_set(outcome *o, llm_status st, const char *type, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void outcome_set(outcome *o, llm_status st, const char *type, bool retryable, const char *fmt, ...)
{
    outcome_free(o);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&o->message, fmt, ap) < 0) {
        chat_fatal("out of memory formatting an error");
    }
    va_end(ap);
    o->status = st;
    o->type = chat_xstrdup(type);
    o->retryable = retryable;
}

/* Replaces every occurrence of the API key in s (heap) by "[redacted]". */
static char *redact(char *s, const char *key)
{
    if (!s || !key)
        return s;
    size_t kl = strlen(key);
    if (kl < 4)
        return s; /* too short to be a key; replacing it would mangle ordinary text */
    char *hit;
    while ((hit = strstr(s, key)) != NULL) {
        char *n = chat_xasprintf("%.*s[redacted]%s", (int)(hit - s), s, hit + kl);
        free(s);
        s = n;
    }
    return s;
}

/* ------------------------------------------------------------------------ */
/* Easy handles, reused                                                       */

/*
 * curl_easy_init allocates the handle (several KiB, zeroed, and a few strings
 * of defaults) and the first transfer its receive buffer: per call, that was
 * a good share of the stateless path's allocations. A finished call's handle
 * goes to a small per-thread free list instead (every loop is one thread, and
 * an easy handle not added to a multi belongs to no loop), and the next call
 * takes it after curl_easy_reset, which puts every option back to its default
 * but keeps the receive buffer. Connections are not the handle's: they stay
 * in the multi's cache either way. At most EASY_POOL_MAX handles wait per
 * thread; the list is freed when the thread exits (a pthread key destructor),
 * the main thread's (tests) at process exit by the system.
 */
#define EASY_POOL_MAX 32

typedef struct easy_pool {
    CURL *h[EASY_POOL_MAX];
    int n;
} easy_pool;

static pthread_key_t easy_pool_key;
static pthread_once_t easy_pool_once = PTHREAD_ONCE_INIT;

static void easy_pool_free(void *arg)
{
    easy_pool *pool = arg;
    for (int i = 0; i < pool->n; i++)
        curl_easy_cleanup(pool->h[i]);
    free(pool);
}

static void easy_pool_init(void)
{
    if (pthread_key_create(&easy_pool_key, easy_pool_free) != 0)
        chat_fatal("cannot create the easy handle pool key");
}

/* A clean easy handle (all options at their defaults), never NULL. */
static CURL *easy_get(void)
{
    pthread_once(&easy_pool_once, easy_pool_init);
    easy_pool *pool = pthread_getspecific(easy_pool_key);
    if (pool && pool->n > 0) {
        CURL *e = pool->h[--pool->n];
        curl_easy_reset(e);
        return e;
    }
    CURL *e = curl_easy_init();
    if (!e)
        chat_fatal("cannot allocate a curl easy handle");
    return e;
}

/* Gives back a handle that is in no multi (NULL accepted). */
static void easy_put(CURL *e)
{
    if (!e)
        return;
    easy_pool *pool = pthread_getspecific(easy_pool_key);
    if (!pool) {
        pool = chat_xcalloc(1, sizeof *pool);
        if (pthread_setspecific(easy_pool_key, pool) != 0) {
            free(pool);
            curl_easy_cleanup(e);
            return;
        }
    }
    if (pool->n == EASY_POOL_MAX) {
        curl_easy_cleanup(e);
        return;
    }
    pool->h[pool->n++] = e;
}

void llm__easy_pool_drain(void)
{
    pthread_once(&easy_pool_once, easy_pool_init);
    easy_pool *pool = pthread_getspecific(easy_pool_key);
    while (pool && pool->n > 0)
        curl_easy_cleanup(pool->h[--pool->n]);
}

/* ------------------------------------------------------------------------ */
/* Lifetime                                                                   */

llm_call *llm__call_of_link(llm_link *l)
{
    return (llm_call *)((char *)l - offsetof(llm_call, link));
}

static void attempt_reset(llm_call *c)
{
    attempt *a = &c->a;
    free(a->content_type);
    free(a->request_id);
    free(a->retry_after_ms);
    free(a->retry_after);
    size_t max = a->body.max;
    chat_buf_free(&a->body);
    sse_free(a->sse);
    memset(a, 0, sizeof *a);
    chat_buf_init(&a->body, max);
    a->should_retry = RETRY_HINT_ABSENT;
}

static void detach(llm_call *c)
{
    if (c->in_multi) {
        llm__transport_remove(c->t, c->easy);
        c->in_multi = false;
    }
    c->curl_paused = false;
}

/* Frees the held events and empties the queue. */
static void clear_held(llm_call *c)
{
    for (size_t i = 0; i < c->n_held; i++) {
        free(c->held[i].id);
        free(c->held[i].name);
        free(c->held[i].data);
    }
    c->n_held = c->held_next = 0;
}

/* Frees the call. The transfer is aborted if still running (the connection
 * closes, so the provider sees us leave). No callback runs. */
static void destroy(llm_call *c)
{
    detach(c);
    easy_put(c->easy);
    c->easy = NULL;
    event_del(&c->kick_ev);
    event_del(&c->deadline_ev);
    event_del(&c->retry_ev);
    attempt_reset(c);
    llm_parse_reset(&c->ps);
    curl_slist_free_all(c->headers);
    free(c->body);
    chat_buf_free(&c->text);
    chat_buf_free(&c->pending);
    clear_held(c);
    free(c->held);
    llm__transport_unlink(c->t, &c->link);
    free(c);
}

static void kick(llm_call *c, unsigned what)
{
    c->kick |= what;
    event_active(&c->kick_ev, EV_TIMEOUT, 1);
}

void llm_call_cancel(llm_call *c)
{
    if (!c || c->finishing)
        return; /* inside on_done the call is freed right after it returns */
    c->cancelled = true;
    if (c->depth > 0) {
        /* Inside a curl callback (or one we dispatch): curl must not be called
         * here, and our caller still holds c. Free it on the next loop turn;
         * the callbacks see `cancelled` and stop the transfer meanwhile. */
        kick(c, KICK_CANCEL);
        return;
    }
    destroy(c);
}

/* Delivers the result and frees the call. Loop context only. */
static void finish(llm_call *c, outcome *o)
{
    int64_t now = chat_mono_ms();
    if (c->cancelled) {
        outcome_free(o);
        destroy(c);
        return;
    }
    detach(c);
    event_del(&c->deadline_ev);
    event_del(&c->retry_ev);

    llm_result r;
    memset(&r, 0, sizeof r);
    r.status = o->status;
    r.http_status = c->last_status;
    if (o->status != LLM_OK) {
        o->type = redact(o->type, c->p->api_key);
        o->message = redact(o->message, c->p->api_key);
        o->code = redact(o->code, c->p->api_key);
        r.error_type = o->type;
        r.error_message = o->message;
        r.error_code = o->code;
    }
    r.retry_after_ms = c->last_retry_after_ms;
    r.request_id = c->a.request_id;
    r.text = chat_buf_str(&c->text);
    r.text_len = c->text.len;
    r.stop_reason = c->ps.stop_reason;
    r.stop_sequence = c->ps.stop_sequence;
    /* A block the reply broke off in is kept as far as it is usable (a
     * tool call whose arguments do not parse is not); no events for it. */
    c->ps.event = NULL;
    (void)llm_reply_close(&c->ps, false);
    if (!c->ps.content)
        c->ps.content = json_array();
    if (!c->ps.content)
        chat_fatal("out of memory building a reply");
    r.content = c->ps.content;
    r.model = c->ps.model;
    r.usage = c->ps.usage;
    r.delivered = c->delivered;
    r.attempts = c->attempts;
    r.ttfb_ms = c->ttfb_ms;
    r.duration_ms = now - c->start_ms;
    r.duration_us = chat_mono_us() - c->start_us;

    c->finishing = true;
    c->depth++;
    c->cbs.on_done(c->ud, &r);
    c->depth--;
    outcome_free(o);
    destroy(c);
}

/* ------------------------------------------------------------------------ */
/* Deadlines                                                                  */

/* (Re)arms deadline_ev for the earliest deadline that can still pass. */
static void arm_deadline(llm_call *c)
{
    int64_t now = chat_mono_ms();
    int64_t next = c->total_deadline_ms;
    if (c->in_multi) {
        if (!c->stream || !c->a.got_byte) {
            int64_t fb = c->attempt_start_ms + c->p->first_byte_timeout_ms;
            if (fb < next)
                next = fb;
        } else if (!c->paused && !c->curl_paused) {
            int64_t idle = c->last_byte_ms + c->p->idle_timeout_ms;
            if (idle < next)
                next = idle;
        }
    }
    int64_t d = next - now;
    if (d < 0)
        d = 0;
    struct timeval tv = { .tv_sec = (time_t)(d / 1000), .tv_usec = (suseconds_t)((d % 1000) * 1000) };
    evtimer_add(&c->deadline_ev, &tv);
}

static void handle_outcome(llm_call *c, outcome *o);

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    llm_call *c = arg;
    int64_t now = chat_mono_ms();
    outcome o = { 0 };

    if (c->in_multi && (c->ps.complete || c->ps.finished) && c->ps.err == LLM_OK && !c->paused && !c->curl_paused) {
        /* The end event (or, for OpenAI, the finish_reason) arrived but the
         * server keeps the response open: the reply text is complete, so a
         * deadline here is not a failure (usage may be missing: -1). */
        outcome_set(&o, LLM_OK, "", false, "%s", "");
    } else if (now >= c->total_deadline_ms) {
        outcome_set(&o, LLM_ERR_TIMEOUT, "timeout", false,
                    "total deadline passed: no complete reply within total_timeout_ms=%lld ms",
                    (long long)c->p->total_timeout_ms);
    } else if (c->in_multi && !c->stream && now >= c->attempt_start_ms + c->p->first_byte_timeout_ms) {
        outcome_set(&o, LLM_ERR_TIMEOUT, "timeout", true,
                    "first-byte deadline passed: no complete reply within first_byte_timeout_ms=%lld ms",
                    (long long)c->p->first_byte_timeout_ms);
    } else if (c->in_multi && c->stream && !c->a.got_byte && now >= c->attempt_start_ms + c->p->first_byte_timeout_ms) {
        outcome_set(&o, LLM_ERR_TIMEOUT, "timeout", true,
                    "first-byte deadline passed: no response within first_byte_timeout_ms=%lld ms",
                    (long long)c->p->first_byte_timeout_ms);
    } else if (c->in_multi && c->stream && c->a.got_byte && !c->paused && !c->curl_paused &&
               now >= c->last_byte_ms + c->p->idle_timeout_ms) {
        outcome_set(&o, LLM_ERR_TIMEOUT, "timeout", true,
                    "idle deadline passed: the provider sent nothing for idle_timeout_ms=%lld ms",
                    (long long)c->p->idle_timeout_ms);
    } else {
        arm_deadline(c);
        return;
    }
    detach(c); /* aborts the transfer: the connection closes */
    c->done_while_paused = false;
    handle_outcome(c, &o);
}

/* ------------------------------------------------------------------------ */
/* curl callbacks (record only; never call curl or finish from here)         */

static void note_byte(llm_call *c)
{
    int64_t now = chat_mono_ms();
    c->last_byte_ms = now;
    if (!c->a.got_byte) {
        c->a.got_byte = true;
        c->ttfb_ms = now - c->attempt_start_ms;
        llm__transport_h2c_answered(&c->h2c); /* its own connection, if it opened one */
        /* The idle deadline may come before the first-byte one the timer is set for. */
        arm_deadline(c);
    }
}

/* Keeps a bounded copy of a header value (trimmed). */
static void set_header(char **dst, const char *v, size_t n)
{
    while (n > 0 && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' || v[n - 1] == '\n'))
        n--;
    if (n > HDR_MAX)
        n = HDR_MAX;
    free(*dst);
    *dst = chat_xstrndup(v, n);
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    llm_call *c = ud;
    size_t len = size * nitems;
    if (c->cancelled)
        return 0;
    note_byte(c);
    attempt *a = &c->a;
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* A new response head (after a 1xx, or the only one): forget the previous head. */
        free(a->content_type);
        free(a->request_id);
        free(a->retry_after_ms);
        free(a->retry_after);
        a->content_type = a->request_id = a->retry_after_ms = a->retry_after = NULL;
        a->should_retry = RETRY_HINT_ABSENT;
        const char *sp = memchr(buf, ' ', len);
        int status = 0;
        if (sp) {
            size_t i = (size_t)(sp - buf) + 1;
            for (int k = 0; k < 3 && i < len && buf[i] >= '0' && buf[i] <= '9'; k++, i++)
                status = status * 10 + (buf[i] - '0');
        }
        a->status = status;
        return len;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon)
        return len;
    size_t nl = (size_t)(colon - buf);
    const char *v = colon + 1;
    size_t vl = len - nl - 1;
#define HDR_IS(name) (nl == sizeof(name) - 1 && strncasecmp(buf, name, nl) == 0)
    if (HDR_IS("content-type"))
        set_header(&a->content_type, v, vl);
    else if (nl == strlen(c->ops->request_id_header) && strncasecmp(buf, c->ops->request_id_header, nl) == 0)
        set_header(&a->request_id, v, vl);
    else if (HDR_IS("retry-after-ms"))
        set_header(&a->retry_after_ms, v, vl);
    else if (HDR_IS("retry-after"))
        set_header(&a->retry_after, v, vl);
    else if (HDR_IS("x-should-retry")) {
        char *val = NULL;
        set_header(&val, v, vl);
        if (strcasecmp(val, "true") == 0)
            a->should_retry = RETRY_HINT_YES;
        else if (strcasecmp(val, "false") == 0)
            a->should_retry = RETRY_HINT_NO;
        free(val);
    }
#undef HDR_IS
    return len;
}

/* Text from the provider parser: kept in c->text, and streamed to on_delta
 * unless paused (then queued in pending for llm_call_resume). */
static int emit_text(void *ud, const char *s, size_t n)
{
    llm_call *c = ud;
    if (c->cancelled)
        return 1;
    if (n == 0)
        return 0;
    size_t max = c->p->max_response_bytes;
    if (chat_buf_append(&c->text, s, n) != CHAT_OK) {
        llm_parse_fail(&c->ps, LLM_ERR_PROTOCOL, "protocol_error", "reply text exceeds max_response_bytes=%zu", max);
        return 1;
    }
    if (!c->stream || !c->cbs.on_delta || c->cbs.on_event)
        return 0; /* with on_event, text is delivered as an event (emit_event) */
    if (c->paused) {
        /* pending is a suffix of text, so text's maximum bounds it too. */
        if (chat_buf_append(&c->pending, s, n) != CHAT_OK)
            chat_fatal("llm: queued text outgrew the reply text");
        return 0;
    }
    c->delivered = true;
    int r = c->cbs.on_delta(c->ud, s, n);
    if (c->cancelled)
        return 1;
    if (r == LLM_PAUSE)
        c->paused = true;
    return 0;
}

/* Copies ev to the end of the held queue, merging a piece into the held
 * piece just before it when both belong to the same block and kind (the
 * held total is bounded by the reply content's cap, llm_parse.max_bytes). */
static void hold_event(llm_call *c, const llm_event *ev)
{
    bool piece = ev->kind == LLM_EV_TEXT || ev->kind == LLM_EV_THINKING || ev->kind == LLM_EV_TOOL_ARGS;
    held_event *last = c->n_held > c->held_next ? &c->held[c->n_held - 1] : NULL;
    if (piece && last && last->kind == ev->kind && last->index == ev->index) {
        last->data = chat_xrealloc(last->data, last->len + ev->len + 1);
        memcpy(last->data + last->len, ev->data, ev->len);
        last->len += ev->len;
        last->data[last->len] = '\0';
        return;
    }
    if (c->n_held == c->held_cap) {
        c->held_cap = c->held_cap ? c->held_cap * 2 : 16;
        c->held = chat_xrealloc(c->held, c->held_cap * sizeof *c->held);
    }
    held_event *h = &c->held[c->n_held++];
    memset(h, 0, sizeof *h);
    h->kind = ev->kind;
    h->index = ev->index;
    h->id = ev->id ? chat_xstrdup(ev->id) : NULL;
    h->name = ev->name ? chat_xstrdup(ev->name) : NULL;
    if (ev->data) {
        h->data = chat_xmalloc(ev->len + 1);
        memcpy(h->data, ev->data, ev->len);
        h->data[ev->len] = '\0';
        h->len = ev->len;
    }
}

/* Reply events from the provider parser (reply.c): to on_event when the
 * caller set it (streaming calls only), held while paused. */
static int emit_event(void *ud, const llm_event *ev)
{
    llm_call *c = ud;
    if (c->cancelled)
        return 1;
    if (!c->stream || !c->cbs.on_event)
        return 0;
    if (c->paused) {
        hold_event(c, ev);
        return 0;
    }
    c->delivered = true;
    int r = c->cbs.on_event(c->ud, ev);
    if (c->cancelled)
        return 1;
    if (r == LLM_PAUSE)
        c->paused = true;
    return 0;
}

static int sse_event(void *ud, const char *type, size_t type_len, const char *data, size_t data_len)
{
    (void)type_len;
    llm_call *c = ud;
    if (c->cancelled)
        return 1;
    int r = c->ops->on_sse_event(&c->ps, type, data, data_len);
    return (r || c->ps.err != LLM_OK || c->cancelled) ? 1 : 0;
}

static bool ctype_is(const char *ct, const char *what)
{
    size_t n = strlen(what);
    return ct && strncasecmp(ct, what, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static bool ctype_is_json(const char *ct)
{
    if (!ct)
        return false;
    if (ctype_is(ct, "application/json"))
        return true;
    /* application/<something>+json */
    const char *semi = strchr(ct, ';');
    size_t n = semi ? (size_t)(semi - ct) : strlen(ct);
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return n >= 5 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/* Chooses how the body of this response is read (first body byte). */
static void choose_mode(llm_call *c)
{
    attempt *a = &c->a;
    size_t max = c->p->max_response_bytes;
    if (a->status < 200 || a->status > 299) {
        a->mode = MODE_ERROR;
        return;
    }
    if (c->stream) {
        /* A missing content-type is tolerated; a different one is not an event stream. */
        if (a->content_type && !ctype_is(a->content_type, "text/event-stream")) {
            llm_parse_fail(&c->ps, LLM_ERR_PROTOCOL, "protocol_error",
                           "expected text/event-stream, got content-type %s", a->content_type);
            return;
        }
        a->mode = MODE_SSE;
        a->sse = sse_new(max, max, sse_event, c);
        return;
    }
    if (a->content_type && !ctype_is_json(a->content_type)) {
        llm_parse_fail(&c->ps, LLM_ERR_PROTOCOL, "protocol_error", "expected application/json, got content-type %s",
                       a->content_type);
        return;
    }
    a->mode = MODE_JSON;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    llm_call *c = ud;
    size_t len = size * nmemb;
    if (c->cancelled || c->ps.err != LLM_OK)
        return 0;
    note_byte(c);
    attempt *a = &c->a;
    const char *p = ptr;
    size_t n = len;
    bool redelivery_while_paused = c->curl_paused; /* not expected from curl, handled anyway */
    if (a->skip && !redelivery_while_paused) {
        /* curl hands back what it kept when we paused: already parsed. */
        size_t k = a->skip < n ? a->skip : n;
        a->skip -= k;
        p += k;
        n -= k;
        if (n == 0)
            return len;
    }
    if (a->mode == MODE_NONE) {
        choose_mode(c);
        if (c->ps.err != LLM_OK)
            return 0;
    }

    size_t ret = len;
    c->depth++;
    switch (a->mode) {
    case MODE_SSE: {
        chat_rc rc = sse_feed(a->sse, p, n);
        if (c->cancelled) {
            ret = 0;
        } else if (rc == CHAT_ETOOBIG) {
            llm_parse_fail(&c->ps, LLM_ERR_PROTOCOL, "protocol_error",
                           "an SSE line or event exceeds max_response_bytes=%zu", c->p->max_response_bytes);
            ret = 0;
        } else if (rc != CHAT_OK || c->ps.err != LLM_OK) {
            ret = 0;
        } else if (c->paused) {
            /* Everything in this piece is parsed; curl keeps it and delivers it
             * again after unpausing, so skip it then. */
            a->skip = redelivery_while_paused ? a->skip + len : len;
            c->curl_paused = true;
            ret = CURL_WRITEFUNC_PAUSE;
        }
        break;
    }
    case MODE_JSON:
        if (chat_buf_append(&a->body, p, n) != CHAT_OK) {
            llm_parse_fail(&c->ps, LLM_ERR_PROTOCOL, "protocol_error", "response body exceeds max_response_bytes=%zu",
                           c->p->max_response_bytes);
            ret = 0;
        }
        break;
    case MODE_ERROR: {
        /* Only the start of an error body is useful: keep what fits, drop the rest. */
        size_t cap = c->p->max_response_bytes < ERROR_BODY_MAX ? c->p->max_response_bytes : ERROR_BODY_MAX;
        size_t room = cap - a->body.len;
        if (chat_buf_append(&a->body, p, n < room ? n : room) != CHAT_OK)
            chat_fatal("llm: an error body outgrew its own cap");
        break;
    }
    case MODE_NONE: break;
    }
    c->depth--;
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Attempts and retries                                                       */

static bool is_connect_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE: return true;
    default: return false;
    }
}

/* Short detail for a curl failure: curl's error buffer if filled, else its generic text. */
static const char *curl_detail(llm_call *c, CURLcode rc)
{
    return c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
}

/* Decides what an ended attempt means. */
static void classify(llm_call *c, CURLcode rc, outcome *o)
{
    attempt *a = &c->a;
    if (a->status)
        c->last_status = a->status;
    c->last_retry_after_ms = llm_retry_after_ms(a->retry_after_ms, a->retry_after, time(NULL));

    if (c->ps.err != LLM_OK) {
        /* Found by the parser: an in-stream error event or a stream that ended
         * early may be retried while nothing was delivered; a malformed or
         * oversized reply may not. */
        outcome_set(o, c->ps.err, c->ps.err_type, c->ps.err == LLM_ERR_STREAM || c->ps.err == LLM_ERR_TRUNCATED, "%s",
                    c->ps.err_message);
        outcome_code(o, c->ps.err_code);
        return;
    }
    bool ok2xx = a->status >= 200 && a->status <= 299;
    if (a->status == 0 || (rc != CURLE_OK && !a->got_byte)) {
        if (rc == CURLE_OPERATION_TIMEDOUT)
            outcome_set(o, LLM_ERR_TIMEOUT, "timeout", true, "connect deadline passed: connect_timeout_ms=%lld ms (%s)",
                        (long long)c->p->connect_timeout_ms, curl_detail(c, rc));
        else if (is_connect_error(rc) || !a->got_byte)
            outcome_set(o, LLM_ERR_CONNECT, "connection_error", true, "cannot reach the provider: %s",
                        rc != CURLE_OK ? curl_detail(c, rc) : "no response");
        else
            outcome_set(o, LLM_ERR_PROTOCOL, "protocol_error", false, "invalid HTTP response: %s",
                        rc != CURLE_OK ? curl_detail(c, rc) : "no status line");
        return;
    }
    if (!ok2xx) {
        llm_error_info e = { 0 };
        c->ops->parse_error(a->status, chat_buf_str(&a->body), a->body.len, &e);
        bool retry = a->status == 408 || a->status == 409 || a->status == 429 || a->status >= 500;
        if (a->should_retry == RETRY_HINT_YES)
            retry = true;
        else if (a->should_retry == RETRY_HINT_NO)
            retry = false;
        if (e.no_retry)
            retry = false;
        char *msg = llm_strndup_utf8(e.message, ERROR_MESSAGE_MAX);
        outcome_set(o, LLM_ERR_HTTP, e.type, retry, "%s", msg);
        outcome_code(o, e.code);
        free(msg);
        llm_error_info_free(&e);
        return;
    }
    switch (a->mode) {
    case MODE_SSE:
    case MODE_NONE:
        if (c->stream) {
            if (c->ps.complete || c->ps.finished) {
                /* The end event arrived (or the reply text is known complete,
                 * only trailing usage may be missing): a connection error after
                 * it loses no text. */
                outcome_set(o, LLM_OK, "", false, "%s", "");
            } else if (rc != CURLE_OK) {
                outcome_set(o, LLM_ERR_TRUNCATED, "truncated", true,
                            "the connection failed before the end of the stream (no %s): %s", c->ops->end_marker,
                            curl_detail(c, rc));
            } else {
                outcome_set(o, LLM_ERR_TRUNCATED, "truncated", true, "the stream ended without its end event (%s)",
                            c->ops->end_marker);
            }
            return;
        }
        /* Non-streaming with no body at all. */
        outcome_set(o, LLM_ERR_PROTOCOL, "protocol_error", false, "empty response body");
        return;
    case MODE_JSON:
        if (rc != CURLE_OK) {
            outcome_set(o, LLM_ERR_TRUNCATED, "truncated", true, "the connection failed while reading the response: %s",
                        curl_detail(c, rc));
            return;
        }
        if (c->ops->parse_json_body(&c->ps, chat_buf_str(&a->body), a->body.len) != LLM_OK) {
            /* An error object sent with a 200 is the provider's error, as in a stream. */
            outcome_set(o, c->ps.err ? c->ps.err : LLM_ERR_PROTOCOL, c->ps.err_type ? c->ps.err_type : "protocol_error",
                        c->ps.err == LLM_ERR_STREAM, "%s",
                        c->ps.err_message ? c->ps.err_message : "unparsable response");
            outcome_code(o, c->ps.err_code);
            return;
        }
        outcome_set(o, LLM_OK, "", false, "%s", "");
        return;
    case MODE_ERROR: break;
    }
    outcome_set(o, LLM_ERR_PROTOCOL, "protocol_error", false, "unexpected response state");
}

/* Backoff before retry n (0 = first retry): min(base * 2^n, 8 s) * [0.75, 1). */
static int64_t backoff_ms(llm_call *c, int n)
{
    double d = (double)c->p->retry_base_ms;
    for (int i = 0; i < n && d < BACKOFF_CAP_MS; i++)
        d *= 2;
    if (d > BACKOFF_CAP_MS)
        d = BACKOFF_CAP_MS;
    return (int64_t)(d * (1.0 - 0.25 * llm__transport_random(c->t)));
}

static bool start_attempt(llm_call *c);

/* After an attempt ended (transfer detached): retry, or deliver the outcome. */
static void handle_outcome(llm_call *c, outcome *o)
{
    if (o->status == LLM_OK || !o->retryable || c->delivered || c->attempts > c->p->max_retries || c->cancelled) {
        finish(c, o);
        return;
    }
    int64_t hint = llm_retry_after_ms(c->a.retry_after_ms, c->a.retry_after, time(NULL));
    int64_t wait;
    if (hint >= 0) {
        if (hint > c->p->retry_max_wait_ms) {
            /* Waiting that long would hold the client's request hostage: say so now. */
            char *msg = chat_xasprintf("the provider asked to retry after %lld ms, more than "
                                       "retry_max_wait_ms=%lld ms: %s",
                                       (long long)hint, (long long)c->p->retry_max_wait_ms, o->message);
            free(o->message);
            o->message = msg;
            o->status = LLM_ERR_RETRY_AFTER;
            finish(c, o);
            return;
        }
        wait = hint;
    } else {
        wait = backoff_ms(c, c->attempts - 1);
    }
    if (chat_mono_ms() + wait >= c->total_deadline_ms) {
        finish(c, o); /* no time left for another attempt: report what we have */
        return;
    }
    outcome_free(o);
    /* Nothing was delivered, so whatever this attempt parsed is thrown away. */
    chat_buf_clear(&c->text);
    chat_buf_clear(&c->pending);
    clear_held(c);
    c->paused = false;
    llm_parse_reset(&c->ps);
    struct timeval tv = { .tv_sec = (time_t)(wait / 1000), .tv_usec = (suseconds_t)((wait % 1000) * 1000) };
    evtimer_add(&c->retry_ev, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)start_attempt(arg);
}

/* Starts the next attempt. Returns false if the call was finished (and freed). */
static bool start_attempt(llm_call *c)
{
    attempt_reset(c);
    llm_parse_reset(&c->ps);
    c->errbuf[0] = '\0';
    c->attempts++;
    c->attempt_start_ms = c->last_byte_ms = chat_mono_ms();
    c->ttfb_ms = -1;
    c->paused = c->curl_paused = c->done_while_paused = false;
    CURLMcode mc = llm__transport_add(c->t, c->easy);
    if (mc != CURLM_OK) {
        outcome o = { 0 };
        outcome_set(&o, LLM_ERR_CONNECT, "connection_error", false, "cannot start the transfer: %s",
                    curl_multi_strerror(mc));
        finish(c, &o);
        return false;
    }
    c->in_multi = true;
    arm_deadline(c);
    return true;
}

void llm__call_transfer_done(llm_call *c, CURLcode rc)
{
    detach(c);
    if (c->cancelled) {
        destroy(c);
        return;
    }
    if (llm__transport_h2c_reopen(c->easy, &c->h2c)) {
        /* A joiner that found no HTTP/2 connection to join (transport.c):
         * it opens one of its own, at once; not a failed attempt. */
        c->attempts--;
        (void)start_attempt(c);
        return;
    }
    if (c->paused && (c->pending.len > 0 || c->held_next < c->n_held)) {
        /* The caller has not taken the text parsed after its pause yet: decide
         * once it resumes, so on_done never overtakes a delta. */
        c->done_while_paused = true;
        c->done_rc = rc;
        arm_deadline(c);
        return;
    }
    outcome o = { 0 };
    classify(c, rc, &o);
    handle_outcome(c, &o);
}

/* Resume work, on the loop (kick_ev). */
static void do_resume(llm_call *c)
{
    if (!c->paused)
        return;
    c->paused = false;
    if (c->pending.len > 0 && c->cbs.on_delta) {
        /* Hand the queued text over in one piece; take it out first, as
         * on_delta may pause again and text may then queue anew. */
        size_t n = c->pending.len;
        char *buf = chat_buf_steal(&c->pending);
        c->delivered = true;
        c->depth++;
        int r = c->cbs.on_delta(c->ud, buf, n);
        c->depth--;
        free(buf);
        if (c->cancelled) {
            destroy(c);
            return;
        }
        if (r == LLM_PAUSE) {
            c->paused = true;
            return;
        }
    }
    while (c->held_next < c->n_held && c->cbs.on_event) {
        /* One event at a time, in order: on_event may pause again, and the
         * rest then waits for the next resume. */
        held_event *h = &c->held[c->held_next++];
        llm_event ev = {
            .kind = h->kind, .index = h->index, .id = h->id, .name = h->name, .data = h->data, .len = h->len
        };
        c->delivered = true;
        c->depth++;
        int r = c->cbs.on_event(c->ud, &ev);
        c->depth--;
        if (c->cancelled) {
            destroy(c);
            return;
        }
        if (r == LLM_PAUSE) {
            c->paused = true;
            return;
        }
    }
    clear_held(c);
    if (c->done_while_paused) {
        c->done_while_paused = false;
        outcome o = { 0 };
        classify(c, c->done_rc, &o);
        handle_outcome(c, &o);
        return;
    }
    c->last_byte_ms = chat_mono_ms(); /* the provider was not silent, we were */
    if (c->curl_paused && c->in_multi) {
        c->curl_paused = false;
        /* curl may call write_cb from in here with the data it kept. */
        CURLcode rc = curl_easy_pause(c->easy, CURLPAUSE_CONT);
        if (c->cancelled) {
            destroy(c);
            return;
        }
        if (rc != CURLE_OK) {
            detach(c);
            outcome o = { 0 };
            classify(c, rc, &o);
            handle_outcome(c, &o);
            return;
        }
    }
    if (c->in_multi)
        arm_deadline(c);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    llm_call *c = arg;
    unsigned k = c->kick;
    c->kick = 0;
    if (c->cancelled) {
        destroy(c);
        return;
    }
    if ((k & KICK_START) && !start_attempt(c))
        return;
    if (k & KICK_RESUME)
        do_resume(c);
}

void llm_call_resume(llm_call *c)
{
    if (!c || c->cancelled || c->finishing)
        return;
    kick(c, KICK_RESUME);
}

/* ------------------------------------------------------------------------ */
/* Start                                                                      */

static bool provider_ok(const llm_provider *p)
{
    /* An OpenAI-compatible server may need no key (provider.h); Anthropic always does. */
    return p && p->base_url && *p->base_url && (p->api_key || p->kind == LLM_PROVIDER_OPENAI) &&
           p->connect_timeout_ms > 0 && p->first_byte_timeout_ms > 0 && p->idle_timeout_ms > 0 &&
           p->total_timeout_ms > 0 && p->max_retries >= 0 && p->retry_base_ms >= 0 && p->retry_max_wait_ms >= 0 &&
           p->max_response_bytes > 0;
}

chat_rc llm_call_start(llm_transport *t, const llm_provider *p, const llm_request *req, const llm_callbacks *cbs,
                       void *ud, llm_call **out)
{
    chat_rc rc = CHAT_EINVAL;
    char *body = NULL, *url = NULL;
    struct curl_slist *headers = NULL;
    const llm_provider_ops *ops = p ? ops_for(p->kind) : NULL;

    if (out)
        *out = NULL;
    if (!t || !out || !cbs || !cbs->on_done || !req || !ops || !provider_ok(p))
        goto out;
    size_t body_len = 0;
    body = ops->build_body(p, req, &body_len);
    url = ops->build_url(p);
    headers = ops->build_headers(p, req->stream);
    if (!body || !url || !headers)
        goto out;

    llm_call *c = chat_xcalloc(1, sizeof *c);
    c->t = t;
    c->p = p;
    c->ops = ops;
    c->cbs = *cbs;
    c->ud = ud;
    c->stream = req->stream;
    c->body = body;
    c->headers = headers;
    body = NULL;
    headers = NULL;
    c->ttfb_ms = -1;
    c->last_retry_after_ms = -1;
    c->a.should_retry = RETRY_HINT_ABSENT;
    chat_buf_init(&c->a.body, p->max_response_bytes);
    chat_buf_init(&c->text, p->max_response_bytes);
    chat_buf_init(&c->pending, p->max_response_bytes);
    llm_parse_init(&c->ps, emit_text, c);
    if (cbs->on_event)
        c->ps.event = emit_event;
    c->ps.json_via_tool = req->json_via_tool;
    c->ps.max_bytes = p->max_response_bytes;
    c->start_ms = chat_mono_ms();
    c->start_us = chat_mono_us();
    c->total_deadline_ms = c->start_ms + p->total_timeout_ms;

    struct event_base *base = llm__transport_base(t);
    if (event_assign(&c->kick_ev, base, -1, 0, kick_cb, c) != 0 ||
        evtimer_assign(&c->deadline_ev, base, deadline_cb, c) != 0 ||
        evtimer_assign(&c->retry_ev, base, retry_cb, c) != 0) {
        chat_fatal("cannot set up the events of an LLM call");
    }
    c->easy = easy_get();
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    /* curl copies a body into its upload buffer, one buffer at a time, and
     * sends each with a call of its own: 64 KiB by default, 16 round trips
     * through the kernel for the megabyte a late turn of a long session
     * sends. A body larger than that gets a buffer of its size (curl's
     * maximum at most); curl frees it when the transfer is done. */
    if (body_len > LLM_UPLOAD_BUFFER_MIN)
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE,
                         (long)(body_len < LLM_UPLOAD_BUFFER_MAX ? body_len : LLM_UPLOAD_BUFFER_MAX));
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "chatd/1");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* Always set: a reused handle keeps the buffer of its previous size. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, req->stream ? LLM_RECV_BUFFER_STREAM : LLM_RECV_BUFFER_JSON);
    /* No CURLOPT_ACCEPT_ENCODING: we advertise no compression and curl decodes
     * none, so SSE bytes reach the parser as soon as they arrive. */
    llm__transport_prepare(t, p, e, &c->h2c);

    llm__transport_link(t, &c->link);
    /* The first attempt starts on the next loop turn: nothing can call back
     * from inside llm_call_start, and curl is never entered from a callback. */
    kick(c, KICK_START);
    *out = c;
    rc = CHAT_OK;
out:
    free(url); /* curl copies CURLOPT_URL */
    free(body);
    curl_slist_free_all(headers);
    return rc;
}
