/*
 * log.h: structured logs, one JSON object per line on stderr.
 *
 * Each line is built in memory and written with a single write(2), so lines
 * from different worker threads never interleave. Messages must never contain
 * secrets (API keys): callers pass only values that are safe to show.
 */
#ifndef CHATD_CORE_LOG_H
#define CHATD_CORE_LOG_H

#include <jansson.h>

/* LOG_NOTICE is for lifecycle lines (listening, stopped) that tools wait for:
 * it is written whatever LOG_LEVEL says. */
typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_NOTICE } chat_log_level;

/* Sets the minimum level written (default LOG_INFO). Call before starting threads. */
void chat_log_set_level(chat_log_level lvl);

/*
 * Writes {"time":..., "level":..., "msg": msg, <fields>} as one line. fields may
 * be NULL; it is consumed (its reference is stolen), so callers can write
 * chat_log(LOG_INFO, "listening", json_pack(...)).
 */
void chat_log(chat_log_level lvl, const char *msg, json_t *fields);

/* printf-style convenience for a plain message without fields. */
void chat_logf(chat_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
