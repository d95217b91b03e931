#define _GNU_SOURCE
#include "core/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

void chat_fatal(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* The line is built by hand in a fixed buffer: the heap may be what failed.
     * The message is JSON-escaped; bytes outside printable ASCII become \u00XX. */
    char ts[32];
    chat_format_rfc3339(chat_now_ms(), ts);
    char line[sizeof msg * 6 + 96];
    size_t n = (size_t)snprintf(line, sizeof line, "{\"time\":\"%s\",\"level\":\"fatal\",\"msg\":\"", ts);
    for (const unsigned char *p = (const unsigned char *)msg; *p && n + 8 < sizeof line; p++) {
        if (*p == '"' || *p == '\\') {
            line[n++] = '\\';
            line[n++] = (char)*p;
        } else if (*p < 0x20 || *p >= 0x7f) {
            n += (size_t)snprintf(line + n, sizeof line - n, "\\u%04x", *p);
        } else {
            line[n++] = (char)*p;
        }
    }
    n += (size_t)snprintf(line + n, sizeof line - n, "\"}\n");
    if (n > sizeof line - 1)
        n = sizeof line - 1;
    /* The lines queued before this one first (core/log.h), briefly: the
     * writer thread may be stuck on the very stderr we are about to use. */
    chat_log_flush(200);
    ssize_t ignored = write(STDERR_FILENO, line, n);
    (void)ignored;
    abort();
}

static void oom(size_t n)
{
    chat_fatal("out of memory allocating %zu bytes", n);
}

void *chat_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *chat_xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        oom(nmemb * size);
    return p;
}

void *chat_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *chat_xstrdup(const char *s)
{
    if (!s)
        return NULL;
    return chat_xstrndup(s, strlen(s));
}

char *chat_xstrndup(const char *s, size_t n)
{
    if (!s)
        return NULL;
    char *p = chat_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *chat_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    return out;
}
