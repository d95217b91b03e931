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

/* Creates a transport on base (which must outlive it). Never returns NULL. */
llm_transport *llm_transport_new(struct event_base *base);

/* Cancels every running call (no callbacks) and frees the transport. Accepts NULL. */
void llm_transport_free(llm_transport *t);

/* Number of calls currently running (for metrics and graceful shutdown). */
int llm_transport_active(const llm_transport *t);

#endif
