/*
 * count_tokens.c: POST /v1/messages/count_tokens to an Anthropic provider (see
 * count_tokens.h). One request = one curl easy handle in its own multi
 * handle, driven by libevent: CURLMOPT_SOCKETFUNCTION keeps one persistent
 * event per socket curl wants watched, CURLMOPT_TIMERFUNCTION arms one timer,
 * and the event callbacks run curl_multi_socket_action, then look for the end
 * of the transfer (curl's callbacks only touch libevent, never curl).
 */
#include "llm/count_tokens.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_in.h"

/* The largest answer read (an {"input_tokens": n} or an error body). */
#define COUNT_MAX_RESPONSE (64 * 1024)
#define COUNT_DEFAULT_TIMEOUT_MS 30000
#define COUNT_DEFAULT_CONNECT_MS 10000

typedef struct watched {
    struct event *ev;
    curl_socket_t fd;
    struct watched *next;
} watched;

struct llm_count {
    struct event_base *base;
    CURLM *multi;
    CURL *easy;
    struct event *timer;
    struct curl_slist *headers; /* holds the API key: never logged */
    char *body;                 /* kept: CURLOPT_POSTFIELDS does not copy */
    chat_buf resp;
    char errbuf[CURL_ERROR_SIZE];
    watched *socks;
    llm_count_cb cb;
    void *ud;
};

static void count_free(llm_count *c)
{
    if (c->easy) {
        curl_multi_remove_handle(c->multi, c->easy); /* may release sockets through socket_cb */
        curl_easy_cleanup(c->easy);
    }
    curl_multi_cleanup(c->multi);
    while (c->socks) {
        watched *s = c->socks;
        c->socks = s->next;
        event_free(s->ev);
        free(s);
    }
    event_free(c->timer);
    curl_slist_free_all(c->headers);
    free(c->body);
    chat_buf_free(&c->resp);
    free(c);
}

/* The transfer ended (rc): tell the caller, then free everything. */
static void finish(llm_count *c, CURLcode rc)
{
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    llm_count_result res = { .http_status = rc == CURLE_OK ? (int)status : 0,
                             .timed_out = rc == CURLE_OPERATION_TIMEDOUT,
                             .input_tokens = -1 };
    json_t *j = NULL;
    char msg[512];
    if (rc != CURLE_OK) {
        snprintf(msg, sizeof msg, "count_tokens request failed: %s", c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
        res.error_message = msg;
    } else {
        j = chat_json_loadb(chat_buf_str(&c->resp), c->resp.len, 0, NULL);
        json_t *n = json_object_get(j, "input_tokens");
        json_t *err = json_object_get(j, "error");
        if (status == 200 && json_is_integer(n) && json_integer_value(n) >= 0) {
            res.input_tokens = json_integer_value(n);
        } else if (json_is_string(json_object_get(err, "message"))) {
            res.error_type = json_string_value(json_object_get(err, "type"));
            res.error_message = json_string_value(json_object_get(err, "message"));
        } else {
            snprintf(msg, sizeof msg, "the provider answered count_tokens with HTTP %ld and no count", status);
            res.error_message = msg;
        }
    }
    c->cb(c->ud, &res);
    json_decref(j);
    count_free(c);
}

static void check_done(llm_count *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg == CURLMSG_DONE) {
            finish(c, m->data.result); /* frees c */
            return;
        }
    }
}

static void socket_event_cb(evutil_socket_t fd, short what, void *arg)
{
    llm_count *c = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(c->multi, fd, action, &running);
    check_done(c);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    llm_count *c = arg;
    int running = 0;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

/* CURLMOPT_TIMERFUNCTION: (re)arms the timer; never calls curl. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    llm_count *c = userp;
    if (timeout_ms < 0) {
        evtimer_del(c->timer);
        return 0;
    }
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl wants, or forget it. */
static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    llm_count *c = userp;
    watched *w = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (w) {
            curl_multi_assign(c->multi, s, NULL);
            for (watched **p = &c->socks; *p; p = &(*p)->next)
                if (*p == w) {
                    *p = w->next;
                    break;
                }
            event_free(w->ev);
            free(w);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (!w) {
        w = chat_xcalloc(1, sizeof *w);
        w->fd = s;
        w->next = c->socks;
        c->socks = w;
        curl_multi_assign(c->multi, s, w);
        w->ev = event_new(c->base, s, kind, socket_event_cb, c);
        if (!w->ev)
            chat_fatal("event_new failed");
    } else {
        event_del(w->ev);
        event_assign(w->ev, c->base, s, kind, socket_event_cb, c);
    }
    event_add(w->ev, NULL);
    return 0;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp)
{
    llm_count *c = userp;
    if (chat_buf_append(&c->resp, data, size * n) != CHAT_OK)
        return 0; /* over COUNT_MAX_RESPONSE: abort (CURLE_WRITE_ERROR) */
    return size * n;
}

static struct curl_slist *add_header(struct curl_slist *l, const char *line)
{
    struct curl_slist *n = curl_slist_append(l, line);
    if (!n)
        chat_fatal("curl_slist_append: out of memory");
    return n;
}

chat_rc llm_count_start(struct event_base *base, const llm_provider *p, const char *body, llm_count_cb cb, void *ud,
                        llm_count **out)
{
    *out = NULL;
    if (p->kind != LLM_PROVIDER_ANTHROPIC || !p->base_url || !*p->base_url)
        return CHAT_EINVAL;
    llm_count *c = chat_xcalloc(1, sizeof *c);
    c->base = base;
    c->cb = cb;
    c->ud = ud;
    c->body = chat_xstrdup(body);
    chat_buf_init(&c->resp, COUNT_MAX_RESPONSE);
    c->multi = curl_multi_init();
    c->easy = curl_easy_init();
    c->timer = evtimer_new(base, timer_event_cb, c);
    if (!c->multi || !c->easy || !c->timer)
        chat_fatal("count_tokens: curl or libevent initialisation failed");

    size_t blen = strlen(p->base_url);
    while (blen > 0 && p->base_url[blen - 1] == '/')
        blen--;
    char *url = chat_xasprintf("%.*s/v1/messages/count_tokens", (int)blen, p->base_url);
    char *key = chat_xasprintf("x-api-key: %s", p->api_key ? p->api_key : "");
    char *version = chat_xasprintf("anthropic-version: %s", p->version && *p->version ? p->version : "2023-06-01");
    c->headers = add_header(c->headers, "content-type: application/json");
    c->headers = add_header(c->headers, "accept: application/json");
    c->headers = add_header(c->headers, key);
    c->headers = add_header(c->headers, version);
    memset(key, 0, strlen(key));
    free(key);
    free(version);

    int64_t total = p->total_timeout_ms > 0 ? p->total_timeout_ms : COUNT_DEFAULT_TIMEOUT_MS;
    if (total > COUNT_DEFAULT_TIMEOUT_MS)
        total = COUNT_DEFAULT_TIMEOUT_MS;
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(p->connect_timeout_ms > 0 ? p->connect_timeout_ms : COUNT_DEFAULT_CONNECT_MS));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)total);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(c->body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "chatd/1");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    free(url); /* curl copies CURLOPT_URL */

    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    /* Arms the timer (through timer_cb): the transfer starts on the loop. */
    if (curl_multi_add_handle(c->multi, c->easy) != CURLM_OK) {
        count_free(c);
        return CHAT_EINVAL;
    }
    *out = c;
    return CHAT_OK;
}

void llm_count_cancel(llm_count *c)
{
    if (c)
        count_free(c);
}
