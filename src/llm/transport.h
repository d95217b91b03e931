/*
 * transport.h: libcurl's multi interface driven by a libevent event_base
 * (curl's hiperfifo pattern: CURLMOPT_SOCKETFUNCTION + CURLMOPT_TIMERFUNCTION).
 *
 * One transport per worker thread. It owns the multi handle (connection reuse,
 * HTTP/2 multiplexing to the provider) and every transfer running on it.
 * Thread: the event_base's thread only.
 */
#ifndef CHATD_LLM_TRANSPORT_H
#define CHATD_LLM_TRANSPORT_H

struct event_base;

typedef struct llm_transport llm_transport;

/* Which HTTP version the transport speaks to providers (PROVIDER_HTTP_VERSION).
 * LLM_HTTP_AUTO: HTTP/2 negotiated by ALPN on https:// (curl falls back to
 *   HTTP/1.1 if the server does not offer h2), HTTP/1.1 on http://.
 * LLM_HTTP_1_1: HTTP/1.1 everywhere (keep-alive reuse only).
 * LLM_HTTP_2: as AUTO on https://, and HTTP/2 with prior knowledge (h2c, no
 *   Upgrade) on http://: the server must speak h2c or every call fails to
 *   connect (LLM_ERR_CONNECT or LLM_ERR_PROTOCOL).
 * Over HTTP/2 concurrent calls to one host share a connection (up to
 * LLM_H2_MAX_STREAMS streams each, or fewer if the server says so); with a
 * libcurl before 8.1.0 only with LLM_HTTP_2 (transport.c says why), with
 * auto each call then has a connection of its own. */
typedef enum { LLM_HTTP_AUTO = 0, LLM_HTTP_1_1, LLM_HTTP_2 } llm_http_version;

/* Streams one HTTP/2 connection may carry at once (CURLMOPT_MAX_CONCURRENT_STREAMS;
 * the server's SETTINGS_MAX_CONCURRENT_STREAMS lowers it). Past it curl opens
 * another connection. */
#define LLM_H2_MAX_STREAMS 100
/* Idle connections a transport keeps for the next calls (nginx's upstream
 * `keepalive`): when a transfer ends with more than this many idle, the
 * longest-idle ones are closed, so descriptors and memory go back after a
 * burst of HTTP/1.1 calls. Connections in use never count: a bound on all of
 * them (curl's CURLMOPT_MAXCONNECTS alone) closed the connection of every call
 * that ended while more calls than the bound were running, so each next call
 * opened a new one; under a load spike that churn doubled the provider's cost
 * per call and the latency never recovered (transport.c, "Connection policy"). */
#define LLM_MAX_IDLE_CONNECTIONS 64

/* Creates a transport on base (which must outlive it). Never returns NULL. */
llm_transport *llm_transport_new(struct event_base *base);

/* Sets the HTTP version for calls started from now on (calls already running
 * keep theirs). The default, before any call, is LLM_HTTP_AUTO. Same thread as
 * the transport. */
void llm_transport_set_http_version(llm_transport *t, llm_http_version v);

/* Cancels every running call (no callbacks) and frees the transport. Accepts NULL. */
void llm_transport_free(llm_transport *t);

/* Drops what the transport keeps for reuse, so that its memory can go back
 * to the system after a burst: this thread's idle easy handles and, when no
 * call is running (nothing to cut short), every cached provider connection
 * (the next call connects afresh). Same thread as the transport. */
void llm_transport_shed(llm_transport *t);

/* Number of calls currently running (for metrics and graceful shutdown). */
int llm_transport_active(const llm_transport *t);

#endif
