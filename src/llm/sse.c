/*
 * sse.c: the incremental Server-Sent Events parser (contract in sse.h).
 *
 * How it works. sse_feed scans each piece for the next CR or LF with memchr,
 * keeping the position of the next CR and of the next LF found so far, so each
 * byte is examined by memchr at most once per character class even when line
 * endings are mixed. A line that is complete inside the piece is interpreted in
 * place, without copying; only the unterminated tail of a piece is copied into
 * the line buffer, to be completed by the next piece. Field values are copied
 * once: `data` values into the data buffer (already joined with LF, so the
 * callback gets it without a final LF and without another copy), the `event`
 * value into the type buffer. Buffers keep their capacity between events, so a
 * steady stream allocates nothing after its first few events, and no buffer can
 * grow beyond its limit (+1 for the NUL terminator).
 *
 * Two pieces of state cross piece boundaries besides the line buffer: a CR that
 * ended the previous piece (an LF starting the next piece then belongs to the
 * same line ending), and a partially matched UTF-8 BOM at the very start of the
 * stream (if the match fails, the matched bytes become ordinary line content).
 *
 * The `id` field sets the last-event-id *buffer*; the value reported by
 * sse_last_event_id is committed from it by each empty line, as WHATWG's
 * dispatch step 1 does, so an id in an event cut off by end of stream is never
 * reported.
 */
#include "llm/sse.h"

#include <assert.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* The UTF-8 encoding of U+FEFF. */
static const unsigned char BOM[3] = {0xEF, 0xBB, 0xBF};

/* A growable byte buffer. Its maximum capacity is set by its users' checks. */
typedef struct {
    char *p;    /* heap storage, or NULL before the first append */
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated */
} sbuf;

struct sse_parser {
    sse_event_cb cb; /* called once per dispatched event */
    void *ud;        /* passed to cb unchanged */
    size_t max_line;  /* longest accepted line in bytes, without its line ending */
    size_t max_event; /* longest accepted data buffer (as dispatched, without the final LF) */
    chat_rc dead;     /* CHAT_OK while usable; otherwise the error every sse_feed returns */
    int cr_pending;   /* the last byte fed was a CR: a leading LF in the next piece is skipped */
    int bom_done;     /* the start of stream is behind us: no BOM can be dropped any more */
    unsigned bom_matched; /* how many leading bytes matched the BOM so far (0..2) */
    int in_cb;        /* inside the callback: catches forbidden reentrant sse_feed calls */
    sbuf line;   /* the unterminated line carried over from the previous piece */
    sbuf data;   /* data lines joined with LF (no final LF), NUL-terminated when allocated */
    int has_data; /* at least one `data` line since the last dispatch (data may be "") */
    sbuf type;   /* event type buffer, NUL-terminated when allocated */
    sbuf id_buf; /* last-event-id buffer, set by `id` fields */
    int id_dirty; /* id_buf changed since it was last committed to last_id */
    sbuf last_id; /* committed last event id, NUL-terminated when allocated */
    long retry_ms; /* reconnection time from the last valid `retry`, -1 if none */
};

/* max + 1 without overflow: the capacity needed for max bytes plus a NUL. */
static size_t cap_for(size_t max)
{
    return max < SIZE_MAX ? max + 1 : SIZE_MAX;
}

/*
 * Makes room for `need` bytes in b. Callers have checked need against their
 * limit, and pass max_cap (limit + 1 for the NUL), so growth stops there.
 */
static void sbuf_reserve(sbuf *b, size_t need, size_t max_cap)
{
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap <= SIZE_MAX / 2 ? cap * 2 : need;
    if (cap > max_cap)
        cap = max_cap;
    b->p = chat_xrealloc(b->p, cap);
    b->cap = cap;
}

/* Sets b to the n bytes at s, NUL-terminated; n < max_cap. */
static void sbuf_set(sbuf *b, const char *s, size_t n, size_t max_cap)
{
    sbuf_reserve(b, n + 1, max_cap);
    if (n)
        memcpy(b->p, s, n);
    b->p[n] = '\0';
    b->len = n;
}

sse_parser *sse_new(size_t max_line, size_t max_event, sse_event_cb cb, void *ud)
{
    assert(max_line > 0 && max_event > 0 && cb);
    sse_parser *p = chat_xcalloc(1, sizeof(*p));
    p->cb = cb;
    p->ud = ud;
    p->max_line = max_line;
    p->max_event = max_event;
    p->dead = CHAT_OK;
    p->retry_ms = -1;
    return p;
}

void sse_free(sse_parser *p)
{
    if (!p)
        return;
    free(p->line.p);
    free(p->data.p);
    free(p->type.p);
    free(p->id_buf.p);
    free(p->last_id.p);
    free(p);
}

const char *sse_last_event_id(const sse_parser *p)
{
    return p->last_id.p ? p->last_id.p : "";
}

long sse_retry_ms(const sse_parser *p)
{
    return p->retry_ms;
}

/*
 * An empty line: commits the last event id, then dispatches the event if any
 * data line was seen, and resets the data and type buffers either way.
 */
static chat_rc dispatch(sse_parser *p)
{
    chat_rc rc = CHAT_OK;

    if (p->id_dirty) {
        sbuf_set(&p->last_id, p->id_buf.p, p->id_buf.len, cap_for(p->max_line));
        p->id_dirty = 0;
    }
    if (p->has_data) {
        const char *type = p->type.len ? p->type.p : "message";
        size_t type_len = p->type.len ? p->type.len : strlen("message");
        const char *data = p->data.p ? p->data.p : "";
        p->in_cb = 1;
        int stop = p->cb(p->ud, type, type_len, data, p->data.len);
        p->in_cb = 0;
        if (stop)
            rc = CHAT_ECANCELED;
    }
    p->has_data = 0;
    p->data.len = 0;
    p->type.len = 0;
    return rc;
}

/* `retry`: ASCII digits only (at least one), else ignored. Saturates at LONG_MAX. */
static void field_retry(sse_parser *p, const char *v, size_t n)
{
    if (n == 0)
        return;
    long ms = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return;
        int d = v[i] - '0';
        ms = ms > (LONG_MAX - d) / 10 ? LONG_MAX : ms * 10 + d;
    }
    p->retry_ms = ms;
}

/* `data`: appends the value to the data buffer, after an LF if it is not the first line. */
static chat_rc field_data(sse_parser *p, const char *v, size_t n)
{
    size_t sep = p->has_data ? 1 : 0;
    size_t room = p->max_event - p->data.len; /* data.len <= max_event always holds */
    if (sep > room || n > room - sep)
        return CHAT_ETOOBIG;
    size_t len = p->data.len + sep + n;
    sbuf_reserve(&p->data, len + 1, cap_for(p->max_event));
    if (sep)
        p->data.p[p->data.len] = '\n';
    if (n)
        memcpy(p->data.p + p->data.len + sep, v, n);
    p->data.p[len] = '\0';
    p->data.len = len;
    p->has_data = 1;
    return CHAT_OK;
}

/* Interprets one complete line (without its line ending); n <= max_line. */
static chat_rc process_line(sse_parser *p, const char *s, size_t n)
{
    if (n == 0)
        return dispatch(p);
    if (s[0] == ':')
        return CHAT_OK; /* a comment, e.g. a keep-alive (its empty field name would be ignored anyway) */

    const char *colon = memchr(s, ':', n);
    size_t name_len = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = colon ? n - name_len - 1 : 0;
    if (vlen && v[0] == ' ') {
        v++;
        vlen--;
    }

    /* Field names are compared by length first: they are case-sensitive and may contain NUL. */
    switch (name_len) {
    case 4:
        if (memcmp(s, "data", 4) == 0)
            return field_data(p, v, vlen);
        break;
    case 5:
        if (memcmp(s, "event", 5) == 0)
            sbuf_set(&p->type, v, vlen, cap_for(p->max_line));
        else if (memcmp(s, "retry", 5) == 0)
            field_retry(p, v, vlen);
        break;
    case 2:
        if (memcmp(s, "id", 2) == 0 && !memchr(v, '\0', vlen)) {
            sbuf_set(&p->id_buf, v, vlen, cap_for(p->max_line));
            p->id_dirty = 1;
        }
        break;
    default:
        break; /* unknown fields are ignored */
    }
    return CHAT_OK;
}

/* Appends n bytes to the carried-over partial line, enforcing max_line. */
static chat_rc line_append(sse_parser *p, const char *s, size_t n)
{
    if (n > p->max_line - p->line.len) /* line.len <= max_line always holds */
        return CHAT_ETOOBIG;
    sbuf_reserve(&p->line, p->line.len + n, p->max_line);
    memcpy(p->line.p + p->line.len, s, n);
    p->line.len += n;
    return CHAT_OK;
}

/*
 * Consumes the start-of-stream BOM, possibly split across pieces. Advances
 * buf and len past the BOM bytes consumed; if a partial match fails, the bytes
 * held so far are pushed into the line buffer as ordinary content.
 */
static chat_rc skip_bom(sse_parser *p, const char **buf, size_t *len)
{
    while (!p->bom_done && *len > 0) {
        if ((unsigned char)**buf != BOM[p->bom_matched]) {
            p->bom_done = 1;
            return p->bom_matched ? line_append(p, (const char *)BOM, p->bom_matched) : CHAT_OK;
        }
        (*buf)++;
        (*len)--;
        if (++p->bom_matched == sizeof(BOM))
            p->bom_done = 1;
    }
    return CHAT_OK;
}

/* The first c in [s, end), or end. */
static const char *find(const char *s, const char *end, char c)
{
    const char *q = memchr(s, c, (size_t)(end - s));
    return q ? q : end;
}

chat_rc sse_feed(sse_parser *p, const char *buf, size_t len)
{
    chat_rc rc = CHAT_OK;

    assert(!p->in_cb); /* the callback must not feed its own parser */
    if (p->dead != CHAT_OK)
        return p->dead;
    if (len == 0)
        return CHAT_OK;

    rc = skip_bom(p, &buf, &len);
    if (rc != CHAT_OK || len == 0)
        goto out;
    if (p->cr_pending) {
        p->cr_pending = 0;
        if (buf[0] == '\n') {
            buf++;
            len--;
        }
    }

    const char *s = buf;
    const char *end = buf + len;
    /*
     * The next CR and the next LF at or after s (`end` if none). Each is
     * searched again only once s has passed it, so a piece without CR costs
     * one memchr for CR in total.
     */
    const char *cr = find(s, end, '\r');
    const char *lf = find(s, end, '\n');
    while (s < end) {
        if (cr < s)
            cr = find(s, end, '\r');
        if (lf < s)
            lf = find(s, end, '\n');
        const char *eol = cr < lf ? cr : lf;
        if (eol == end) {
            rc = line_append(p, s, (size_t)(end - s));
            goto out;
        }

        size_t n = (size_t)(eol - s);
        if (p->line.len) {
            /* Completes the line carried over from earlier pieces. */
            rc = line_append(p, s, n);
            if (rc != CHAT_OK)
                goto out;
            size_t total = p->line.len;
            p->line.len = 0;
            rc = process_line(p, p->line.p, total);
        } else if (n > p->max_line) {
            rc = CHAT_ETOOBIG;
        } else {
            rc = process_line(p, s, n); /* the common case: straight from the piece */
        }
        if (rc != CHAT_OK)
            goto out;

        /* Consumes the line ending; a CR ending the piece may pair with an LF in the next. */
        s = eol + 1;
        if (*eol == '\r') {
            if (s == end)
                p->cr_pending = 1;
            else if (*s == '\n')
                s++;
        }
    }
out:
    if (rc != CHAT_OK)
        p->dead = rc;
    return rc;
}
