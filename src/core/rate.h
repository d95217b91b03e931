/*
 * rate.h: a rate as configured ("10/minute"): a count per time window.
 *
 * The value type and its parser live here, below every user: the config
 * loader validates RATE_LIMIT, TOKEN_LIMIT and AUTH_FAILURE_LIMIT with it, the
 * rate limiters of guard/ (ratelimit.h, redis_limit.h) enforce it, and the
 * `chatd keys create --rate-limit` command checks an API key's own limit.
 *
 * Thread: pure functions, any thread.
 */
#ifndef CHATD_CORE_RATE_H
#define CHATD_CORE_RATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

#define CHAT_RATE_MAX_COUNT 1000000000  /* largest N in "N/unit" */
#define CHAT_RATE_MAX_WINDOW_MS 3600000 /* longest window a rate may have */

/* A rate: count per window_ms. count == 0 means "off" (no limit). */
typedef struct chat_rate {
    int64_t count;     /* 0 (off) or 1..CHAT_RATE_MAX_COUNT */
    int64_t window_ms; /* 1000, 60000 or 3600000 from the parser; any 1..3600000 is accepted */
} chat_rate;

/* True for a rate in range: off, or count and window_ms within the bounds above. */
bool chat_rate_valid(const chat_rate *r);

/*
 * Parses "N/second", "N/minute", "N/hour" (N a decimal integer
 * 1..CHAT_RATE_MAX_COUNT without sign, spaces or leading zeros; the unit and
 * "off" are case-insensitive) or "off". On success fills *out and returns
 * CHAT_OK. On failure returns CHAT_EINVAL, leaves *out zeroed (off) and writes
 * one line saying what is wrong and what is expected into err (errlen bytes,
 * may be 0), for the caller to prefix with the setting's name. The text is
 * quoted in it as printable ASCII (control characters, DEL and non-ASCII
 * bytes as \xHH), so the line can go to a terminal or a JSON log as it is.
 */
chat_rc chat_rate_parse(const char *text, chat_rate *out, char *err, size_t errlen) CHAT_MUST_CHECK;

#endif
