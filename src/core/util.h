/*
 * util.h: small shared helpers: clocks, random ids, time formatting, and the
 * session-id rule. Thread-safe unless noted.
 */
#ifndef CHATD_CORE_UTIL_H
#define CHATD_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes a printf-formatted message into err (when err is non-NULL and errlen
 * > 0), cut at its first newline: the "one-line reason" of every
 * `char *err, size_t errlen` parameter in chatd. */
void chat_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Wall clock, ms since the Unix epoch. */
int64_t chat_now_ms(void);

/* Monotonic clock in ms (for durations and deadlines). */
int64_t chat_mono_ms(void);

/* Monotonic clock in microseconds (for short measurements). */
int64_t chat_mono_us(void);

/* Fills out with prefix + 2*nbytes random hex digits + NUL (from getrandom).
 * outlen must be >= strlen(prefix) + 2*nbytes + 1. */
void chat_random_id(char *out, size_t outlen, const char *prefix, size_t nbytes);

/* Formats ms-since-epoch as UTC RFC 3339 with milliseconds: 2026-11-26T04:51:51.123Z.
 * out must hold 25 bytes. */
void chat_format_rfc3339(int64_t ms, char out[32]);

/* Formats as the template's local ISO time without zone: 2026-11-26T04:51:51.123000
 * (Python's datetime.now().isoformat()). out must hold 27 bytes. */
void chat_format_iso_local(int64_t ms, char out[32]);

/* Cuts an incomplete UTF-8 sequence off the end of s (what a truncating
 * snprintf can leave), so that the text stays valid for JSON. */
void chat_utf8_trim(char *s);

/* True if s is a valid session id / request id: 1..128 chars of [A-Za-z0-9._:-]. */
bool chat_valid_id(const char *s);

#endif
