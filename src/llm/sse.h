/*
 * sse.h: an incremental Server-Sent Events parser (WHATWG HTML, "Server-sent
 * events", event stream interpretation).
 *
 * Feed it bytes as they arrive from the network, in pieces of any size; it
 * calls back once per dispatched event. It implements the standard exactly:
 * lines end at CRLF, LF or CR (a CR at the end of one read and an LF at the
 * start of the next are one line ending); one leading UTF-8 BOM is dropped;
 * lines starting with ':' are comments; the field name is everything before the
 * first ':' and at most one leading space is removed from the value; several
 * `data` lines are joined with "\n"; `id` (without NUL) sets the last event id;
 * `retry` with ASCII digits only sets the reconnection time; unknown fields are
 * ignored; an empty line dispatches the event unless the data buffer is empty;
 * an incomplete event at end of stream is discarded (sse_free without dispatch).
 *
 * Bytes are not decoded: data is passed through as bytes (UTF-8 validity is the
 * application's concern, checked on complete events only).
 *
 * Limits: a single line longer than max_line bytes (not counting its line
 * ending or the dropped BOM; comments count too), or an event whose data (as it
 * would be dispatched: data lines joined with LF, no final LF) exceeds
 * max_event bytes, makes sse_feed fail with CHAT_ETOOBIG; the parser is then
 * unusable (every later sse_feed returns CHAT_ETOOBIG). An overlong line is
 * detected as soon as the bytes buffered for it exceed max_line, before its end
 * arrives, so the parser never holds more than max_event + 4 * max_line bytes
 * (data; partial line, event type, id buffer, committed id) plus a few, whatever
 * the peer sends. Events dispatched before the failing line are delivered
 * normally, however the input was split.
 *
 * Thread: a parser is used by one thread at a time. Not reentrant: the event
 * callback must not call sse_feed on the same parser.
 */
#ifndef CHATD_LLM_SSE_H
#define CHATD_LLM_SSE_H

#include <stddef.h>

#include "core/rc.h"

typedef struct sse_parser sse_parser;

/*
 * Called once per dispatched event. `type` is the event type ("message" when
 * the stream gave none), `data` the data buffer without its final LF. Both are
 * NUL-terminated and valid only during the call. Return 0 to go on; any other
 * value stops sse_feed at once, which then returns CHAT_ECANCELED (the rest of
 * that piece is not parsed; the parser may still be freed safely, and every
 * later sse_feed returns CHAT_ECANCELED). Data may contain NUL bytes: use the
 * lengths.
 */
typedef int (*sse_event_cb)(void *ud, const char *type, size_t type_len, const char *data, size_t data_len);

/* Creates a parser. max_line and max_event must be > 0. Never returns NULL. */
sse_parser *sse_new(size_t max_line, size_t max_event, sse_event_cb cb, void *ud);

/* Frees the parser; a pending incomplete event is discarded. Accepts NULL. */
void sse_free(sse_parser *p);

/*
 * Parses len bytes (buf may be NULL when len is 0), calling back for each event
 * completed by them. Bytes of an unfinished line are kept for the next call.
 * Returns CHAT_OK, CHAT_ETOOBIG (a limit was exceeded) or CHAT_ECANCELED (the
 * callback asked to stop); both errors are sticky.
 */
chat_rc sse_feed(sse_parser *p, const char *buf, size_t len) CHAT_MUST_CHECK;

/*
 * The last event id ("" if none): the WHATWG "last event ID string", i.e. the
 * value of the last `id` field without NUL, committed by the empty line ending
 * its event (whether or not that event was dispatched), so an id inside an
 * event cut off by end of stream is not reported. During the callback it is
 * already the id of the event being delivered. Valid until the next
 * sse_feed/sse_free.
 */
const char *sse_last_event_id(const sse_parser *p);

/*
 * The reconnection time in ms set by the last valid `retry` field (one or more
 * ASCII digits; saturates at LONG_MAX), or -1 if none was seen. Takes effect
 * when the field is parsed, as the standard says, not at dispatch.
 */
long sse_retry_ms(const sse_parser *p);

#endif
