#define _GNU_SOURCE
#include "core/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/alloc.h"

int64_t chat_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t chat_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t chat_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void chat_random_id(char *out, size_t outlen, const char *prefix, size_t nbytes)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[64];
    size_t plen = strlen(prefix);
    if (nbytes > sizeof raw)
        nbytes = sizeof raw;
    if (outlen < plen + 2 * nbytes + 1) {
        if (outlen)
            out[0] = '\0';
        return;
    }
    size_t got = 0;
    while (got < nbytes) {
        ssize_t n = getrandom(raw + got, nbytes - got, 0);
        if (n > 0)
            got += (size_t)n;
    }
    memcpy(out, prefix, plen);
    for (size_t i = 0; i < nbytes; i++) {
        out[plen + 2 * i] = hex[raw[i] >> 4];
        out[plen + 2 * i + 1] = hex[raw[i] & 15];
    }
    out[plen + 2 * nbytes] = '\0';
}

void chat_format_rfc3339(int64_t ms, char out[32])
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

void chat_format_iso_local(int64_t ms, char out[32])
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%06d", (int)(ms % 1000) * 1000);
}

void chat_one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

void chat_utf8_trim(char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return;
    /* Find the lead byte of the last sequence and check that it is complete. */
    size_t k = n;
    int back = 0;
    while (k > 0 && back < 4 && ((unsigned char)s[k - 1] & 0xC0) == 0x80) {
        k--;
        back++;
    }
    if (k == 0)
        return;
    unsigned char lead = (unsigned char)s[k - 1];
    size_t need = lead < 0x80             ? 1
                  : (lead & 0xE0) == 0xC0 ? 2
                  : (lead & 0xF0) == 0xE0 ? 3
                  : (lead & 0xF8) == 0xF0 ? 4
                                          : 1;
    if ((size_t)back + 1 < need)
        s[k - 1] = '\0';
}

int chat_hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int chat_hex_lower(int c)
{
    return c >= 'A' && c <= 'F' ? -1 : chat_hex_value(c);
}

int chat_b64_value(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

bool chat_b64_canonical(const char *s, size_t n)
{
    if (n == 0 || n % 4 != 0)
        return false;
    size_t pad = s[n - 1] != '=' ? 0 : s[n - 2] == '=' ? 2 : 1;
    for (size_t i = 0; i < n - pad; i++)
        if (chat_b64_value((unsigned char)s[i]) < 0)
            return false;
    /* The unused low bits of the last character before the padding are zero. */
    return !(pad == 1 && (chat_b64_value((unsigned char)s[n - 2]) & 0x3) != 0) &&
           !(pad == 2 && (chat_b64_value((unsigned char)s[n - 3]) & 0xF) != 0);
}

size_t chat_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0; /* a continuation byte, 0xc0/0xc1 (always overlong), or 0xf5..0xff */
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

char *chat_utf8_escape(const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    char *out = chat_xmalloc(4 * len + 1), *o = out;
    size_t i = 0;
    while (i < len) {
        size_t k = u[i] ? chat_utf8_seq(u + i, len - i) : 0;
        if (k == 0) {
            *o++ = '\\';
            *o++ = 'x';
            *o++ = hex[u[i] >> 4];
            *o++ = hex[u[i] & 0x0f];
            i++;
        } else {
            memcpy(o, u + i, k);
            o += k;
            i += k;
        }
    }
    *o = '\0';
    return out;
}

json_t *chat_json_text(const char *s)
{
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    char *esc = chat_utf8_escape(s, strlen(s));
    j = json_string(esc);
    free(esc);
    if (!j)
        chat_fatal("chat_json_text: escaped text refused by jansson");
    return j;
}

bool chat_valid_id(const char *s)
{
    size_t n = 0;
    if (!s)
        return false;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= CHAT_ID_MAX)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-'))
            return false;
    }
    return n > 0;
}

void chat_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    err[strcspn(err, "\n")] = '\0';
}
