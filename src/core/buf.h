/*
 * buf.h: the one growable byte buffer, always with a maximum.
 *
 * Every buffer that grows with outside input (a request body being joined, a
 * provider's reply, an SSE line, an import line, a rendered page) is a
 * chat_buf. Its maximum is mandatory and set once by chat_buf_init: an append
 * that would pass it fails with CHAT_ETOOBIG and leaves the buffer unchanged,
 * so a caller turns it into a clear error instead of growing without bound.
 * Growth is geometric (appending n bytes one at a time is O(n) overall) and is
 * capped at max + 1 bytes. The contents are NUL-terminated once anything was
 * appended; chat_buf_str gives "" before that.
 *
 * Memory: allocation failure is fatal (core/alloc.h), so the only error is the
 * maximum. A zeroed chat_buf is not usable: call chat_buf_init first.
 * Thread: none of its own; a buffer belongs to whoever holds it.
 */
#ifndef CHATD_CORE_BUF_H
#define CHATD_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "core/rc.h"

typedef struct chat_buf {
    char *data; /* heap storage, NUL-terminated; NULL before the first append */
    size_t len; /* bytes in use, not counting the NUL */
    size_t cap; /* bytes allocated (at most max + 1) */
    size_t max; /* most bytes the buffer may hold, not counting the NUL; > 0 */
} chat_buf;

/* Sets b empty with the given maximum (> 0; a zero maximum is a programming error). Allocates nothing. */
void chat_buf_init(chat_buf *b, size_t max);

/* Makes room for `extra` more bytes (plus the NUL). CHAT_ETOOBIG past the maximum. */
chat_rc chat_buf_reserve(chat_buf *b, size_t extra) CHAT_MUST_CHECK;

/* Appends n bytes (which may contain NULs). CHAT_ETOOBIG, buffer unchanged, past the maximum. */
chat_rc chat_buf_append(chat_buf *b, const void *p, size_t n) CHAT_MUST_CHECK;

/* Appends a NUL-terminated string. */
chat_rc chat_buf_appends(chat_buf *b, const char *s) CHAT_MUST_CHECK;

/* Appends printf output. CHAT_ETOOBIG, buffer unchanged, past the maximum. */
chat_rc chat_buf_printf(chat_buf *b, const char *fmt, ...) CHAT_MUST_CHECK __attribute__((format(printf, 2, 3)));
chat_rc chat_buf_vprintf(chat_buf *b, const char *fmt, va_list ap) CHAT_MUST_CHECK;

/* Replaces the contents with n bytes. CHAT_ETOOBIG, buffer unchanged, past the maximum. */
chat_rc chat_buf_set(chat_buf *b, const void *p, size_t n) CHAT_MUST_CHECK;

/* The contents as a string: "" when nothing was appended. Valid until the next change. */
const char *chat_buf_str(const chat_buf *b);

/* Empties b but keeps its storage for reuse. */
void chat_buf_clear(chat_buf *b);

/* Releases the storage; b is empty again with the same maximum. NULL is accepted. */
void chat_buf_free(chat_buf *b);

/* Hands the contents to the caller as a heap string (free() it; "" allocated when empty) and empties b. */
char *chat_buf_steal(chat_buf *b);

#endif
