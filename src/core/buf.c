/*
 * buf.c: the bounded growable byte buffer (contract in buf.h).
 */
#include "core/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* The first allocation: small enough for the many short buffers, and doubling
 * from here reaches a large body in a few steps. */
#define BUF_FIRST_CAP 64

void chat_buf_init(chat_buf *b, size_t max)
{
    if (max == 0)
        chat_fatal("chat_buf_init: a buffer needs a maximum");
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max < SIZE_MAX ? max : SIZE_MAX - 1;
}

chat_rc chat_buf_reserve(chat_buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return CHAT_ETOOBIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return CHAT_OK;
    size_t cap = b->cap ? b->cap : BUF_FIRST_CAP;
    while (cap < need)
        cap = cap <= SIZE_MAX / 2 ? cap * 2 : need;
    if (cap > b->max + 1)
        cap = b->max + 1;
    b->data = chat_xrealloc(b->data, cap);
    b->cap = cap;
    return CHAT_OK;
}

chat_rc chat_buf_append(chat_buf *b, const void *p, size_t n)
{
    chat_rc rc = chat_buf_reserve(b, n);
    if (rc != CHAT_OK)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return CHAT_OK;
}

chat_rc chat_buf_appends(chat_buf *b, const char *s)
{
    return chat_buf_append(b, s, strlen(s));
}

chat_rc chat_buf_vprintf(chat_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return CHAT_EINVAL;
    chat_rc rc = chat_buf_reserve(b, (size_t)n);
    if (rc != CHAT_OK)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return CHAT_OK;
}

chat_rc chat_buf_printf(chat_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chat_rc rc = chat_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

chat_rc chat_buf_set(chat_buf *b, const void *p, size_t n)
{
    if (n > b->max)
        return CHAT_ETOOBIG;
    b->len = 0;
    return chat_buf_append(b, p, n);
}

const char *chat_buf_str(const chat_buf *b)
{
    return b->data ? b->data : "";
}

void chat_buf_clear(chat_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void chat_buf_free(chat_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

char *chat_buf_steal(chat_buf *b)
{
    char *s = b->data ? b->data : chat_xstrdup("");
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return s;
}
