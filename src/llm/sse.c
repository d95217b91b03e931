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
#include "core/buf.h"

/* The UTF-8 encoding of U+FEFF. */
static const unsigned char BOM[3] = { 0xEF, 0xBB, 0xBF };

struct sse_parser {
    sse_event_cb cb;      /* called once per dispatched event */
    void *ud;             /* passed to cb unchanged */
    size_t max_line;      /* longest accepted line in bytes, without its line ending */
    size_t max_event;     /* longest accepted data buffer (as dispatched, without the final LF) */
    chat_rc dead;         /* CHAT_OK while usable; otherwise the error every sse_feed returns */
    int cr_pending;       /* the last byte fed was a CR: a leading LF in the next piece is skipped */
    int bom_done;         /* the start of stream is behind us: no BOM can be dropped any more */
    unsigned bom_matched; /* how many leading bytes matched the BOM so far (0..2) */
    int in_cb;            /* inside the callback: catches forbidden reentrant sse_feed calls */
    chat_buf line;        /* the unterminated line carried over from the previous piece (max_line) */
    chat_buf data;        /* data lines joined with LF, no final LF (max_event) */
    int has_data;         /* at least one `data` line since the last dispatch (data may be "") */
    chat_buf type;        /* event type buffer (max_line) */
    chat_buf id_buf;      /* last-event-id buffer, set by `id` fields (max_line) */
    int id_dirty;         /* id_buf changed since it was last committed to last_id */
    chat_buf last_id;     /* committed last event id (max_line) */
    long retry_ms;        /* reconnection time from the last valid `retry`, -1 if none */
};

/* Values copied from a line fit their buffers: a line is at most max_line bytes. */
static void set_from_line(chat_buf *b, const char *v, size_t n)
{
    if (chat_buf_set(b, v, n) != CHAT_OK)
        chat_fatal("sse: a field value longer than its line");
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
    chat_buf_init(&p->line, max_line);
    chat_buf_init(&p->data, max_event);
    chat_buf_init(&p->type, max_line);
    chat_buf_init(&p->id_buf, max_line);
    chat_buf_init(&p->last_id, max_line);
    return p;
}

void sse_free(sse_parser *p)
{
    if (!p)
        return;
    chat_buf_free(&p->line);
    chat_buf_free(&p->data);
    chat_buf_free(&p->type);
    chat_buf_free(&p->id_buf);
    chat_buf_free(&p->last_id);
    free(p);
}

const char *sse_last_event_id(const sse_parser *p)
{
    return chat_buf_str(&p->last_id);
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
        set_from_line(&p->last_id, chat_buf_str(&p->id_buf), p->id_buf.len);
        p->id_dirty = 0;
    }
    if (p->has_data) {
        const char *type = p->type.len ? p->type.data : "message";
        size_t type_len = p->type.len ? p->type.len : strlen("message");
        const char *data = chat_buf_str(&p->data);
        p->in_cb = 1;
        int stop = p->cb(p->ud, type, type_len, data, p->data.len);
        p->in_cb = 0;
        if (stop)
            rc = CHAT_ECANCELED;
    }
    p->has_data = 0;
    chat_buf_clear(&p->data);
    chat_buf_clear(&p->type);
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
    /* Reserve both parts first, so a value that does not fit leaves no LF behind. */
    if (chat_buf_reserve(&p->data, sep + n) != CHAT_OK)
        return CHAT_ETOOBIG;
    if ((sep && chat_buf_append(&p->data, "\n", 1) != CHAT_OK) || chat_buf_append(&p->data, v, n) != CHAT_OK)
        return CHAT_ETOOBIG; /* cannot happen after the reserve */
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
            set_from_line(&p->type, v, vlen);
        else if (memcmp(s, "retry", 5) == 0)
            field_retry(p, v, vlen);
        break;
    case 2:
        if (memcmp(s, "id", 2) == 0 && !memchr(v, '\0', vlen)) {
            set_from_line(&p->id_buf, v, vlen);
            p->id_dirty = 1;
        }
        break;
    default: break; /* unknown fields are ignored */
    }
    return CHAT_OK;
}

/* Appends n bytes to the carried-over partial line, enforcing max_line. */
static chat_rc line_append(sse_parser *p, const char *s, size_t n)
{
    return chat_buf_append(&p->line, s, n);
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
            /* Emptied before processing, which only reads it: the bytes stay in place. */
            size_t total = p->line.len;
            p->line.len = 0;
            rc = process_line(p, p->line.data, total);
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
