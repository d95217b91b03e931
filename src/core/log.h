/*
 * log.h: structured logs, one JSON object per line on stderr.
 *
 * Each line is built in memory and written whole, so lines from different
 * worker threads never interleave. Messages must never contain secrets (API
 * keys): callers pass only values that are safe to show.
 *
 * While the writer thread runs (chat_log_start .. chat_log_stop: the server),
 * chat_log never blocks on stderr: the line is queued in a bounded ring and a
 * thread of its own writes it; a line that does not fit is dropped and
 * counted (the writer reports how many in a "log lines dropped" line). Without
 * it (command-line tools, tests), chat_log writes at once.
 */
#ifndef CHATD_CORE_LOG_H
#define CHATD_CORE_LOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

/* LOG_NOTICE is for lifecycle lines (listening, stopped) that tools wait for:
 * it is written whatever LOG_LEVEL says. */
typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_NOTICE } chat_log_level;

/* Sets the minimum level written (default LOG_INFO). Call before starting threads. */
void chat_log_set_level(chat_log_level lvl);

/* True when a line of level lvl would be written: lets a caller skip building
 * fields nobody will see (the access log under LOG_LEVEL=warn). */
bool chat_log_enabled(chat_log_level lvl);

/*
 * Writes {"time":..., "level":..., "msg": msg, <fields>} as one line. fields may
 * be NULL; it is consumed (its reference is stolen), so callers can write
 * chat_log(LOG_INFO, "listening", json_pack(...)).
 */
void chat_log(chat_log_level lvl, const char *msg, json_t *fields);

/* Starts the writer thread with a ring of ring_bytes (once; CHAT_ENOMEM if
 * ring_bytes is 0 or the thread cannot be had, and chat_log keeps writing at
 * once). */
chat_rc chat_log_start(size_t ring_bytes);
/* Writes what is queued, stops the writer thread and frees the ring; chat_log
 * writes at once again. Call once the other threads stopped logging. */
void chat_log_stop(void);
/* Waits up to timeout_ms for the queue to drain (a no-op without the writer,
 * or from the writer thread itself): before an abort, say. */
void chat_log_flush(int64_t timeout_ms);
/* Lines dropped because the ring was full, since chat_log_start. */
uint64_t chat_log_dropped(void);

/* printf-style convenience for a plain message without fields. */
void chat_logf(chat_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
