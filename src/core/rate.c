/*
 * rate.c: parsing and checking "N/unit" rates (see rate.h). The count is read
 * digit by digit with a cap, so no input overflows; every error names what is
 * wrong and what is expected.
 */
#define _GNU_SOURCE
#include "core/rate.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/util.h"

#define RATE_EXPECTED "expected N/second, N/minute, N/hour or off"

/*
 * The first max bytes of s quoted for an error message: control characters,
 * DEL and non-ASCII bytes as \xHH, '"' and '\\' escaped, so that the message
 * stays one printable line of ASCII whatever the value holds (the config
 * loader's promise, config.h) and a cut never splits a UTF-8 sequence.
 */
static const char *shown(const char *s, size_t max, char *buf, size_t buflen)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && i < max && j + 5 < buflen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f)
            j += (size_t)snprintf(buf + j, buflen - j, "\\x%02x", c);
        else if (c == '"' || c == '\\')
            j += (size_t)snprintf(buf + j, buflen - j, "\\%c", c);
        else
            buf[j++] = (char)c;
    }
    buf[j] = '\0';
    return buf;
}

chat_rc chat_rate_parse(const char *text, chat_rate *out, char *err, size_t errlen)
{
    chat_rc rc = CHAT_EINVAL;
    char q[64 * 4 + 8], u[32 * 4 + 8];
    static const struct {
        const char *name;
        int64_t ms;
    } units[] = { { "second", 1000 }, { "minute", 60000 }, { "hour", 3600000 } };

    out->count = 0;
    out->window_ms = 0;
    if (err && errlen)
        err[0] = '\0';
    if (!text || !*text) {
        chat_set_err(err, errlen, "empty rate limit (%s)", RATE_EXPECTED);
        goto out;
    }
    if (strcasecmp(text, "off") == 0) {
        rc = CHAT_OK;
        goto out;
    }
    const char *slash = strchr(text, '/');
    if (!slash) {
        chat_set_err(err, errlen, "\"%s\" has no /unit (%s)", shown(text, 64, q, sizeof q), RATE_EXPECTED);
        goto out;
    }
    if (slash == text) {
        chat_set_err(err, errlen, "\"%s\" has no count before '/' (%s)", shown(text, 64, q, sizeof q), RATE_EXPECTED);
        goto out;
    }
    int64_t n = 0;
    for (const char *p = text; p < slash; p++) {
        if (*p < '0' || *p > '9') {
            chat_set_err(err, errlen, "count in \"%s\" is not a plain decimal integer (%s)",
                         shown(text, 64, q, sizeof q), RATE_EXPECTED);
            goto out;
        }
        if (n > CHAT_RATE_MAX_COUNT) /* keep going only to report bad characters first */
            continue;
        n = n * 10 + (*p - '0');
    }
    if (text[0] == '0' && slash - text > 1) {
        chat_set_err(err, errlen, "count in \"%s\" has a leading zero", shown(text, 64, q, sizeof q));
        goto out;
    }
    if (n == 0) {
        chat_set_err(err, errlen, "count in \"%s\" must be at least 1 (use \"off\" to disable the limit)",
                     shown(text, 64, q, sizeof q));
        goto out;
    }
    if (n > CHAT_RATE_MAX_COUNT) {
        chat_set_err(err, errlen, "count in \"%s\" is above %d", shown(text, 64, q, sizeof q), CHAT_RATE_MAX_COUNT);
        goto out;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(slash + 1, units[i].name) == 0) {
            out->count = n;
            out->window_ms = units[i].ms;
            rc = CHAT_OK;
            goto out;
        }
    chat_set_err(err, errlen, "unknown unit \"%s\" in \"%s\" (expected second, minute or hour)",
                 shown(slash + 1, 32, u, sizeof u), shown(text, 64, q, sizeof q));
out:
    return rc;
}

bool chat_rate_valid(const chat_rate *r)
{
    return r->count == 0 || (r->count >= 1 && r->count <= CHAT_RATE_MAX_COUNT && r->window_ms >= 1 &&
                             r->window_ms <= CHAT_RATE_MAX_WINDOW_MS);
}
