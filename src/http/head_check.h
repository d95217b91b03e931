/*
 * head_check.h: the raw check of an HTTP request head, on the bytes as they
 * arrive, before evhttp parses them. evhttp joins obsolete folded header lines
 * and cuts header values at a NUL, so what another parser (a proxy in front)
 * would read differently is only visible here: a NUL or another control
 * character (HTAB aside) anywhere in the head, or a header line starting with a
 * space or a tab (obsolete line folding, which RFC 9112 lets a server reject).
 * The blank line that ends the head ends the check: the body is not ours.
 *
 * Pure and incremental: feeding a head in any split gives the same result as
 * feeding it whole (fuzz_head_check checks that). No allocation; any thread.
 */
#ifndef CHATD_HTTP_HEAD_CHECK_H
#define CHATD_HTTP_HEAD_CHECK_H

#include <stdbool.h>
#include <stddef.h>

typedef struct http_head_check {
    bool scanning;     /* the bytes arriving now belong to a request head */
    bool first_line;   /* still before the end of the request line */
    size_t line_len;   /* bytes of the current line so far (CR not counted) */
    const char *error; /* what the check found (static text), NULL while fine */
} http_head_check;

/* Starts the check of a new head (scanning, no error). */
void http_head_check_begin(http_head_check *h);

/* Checks len more bytes of the head. Stops scanning at the end of the head or
 * at the first error (h->error then names it); later bytes are ignored. */
void http_head_check_feed(http_head_check *h, const unsigned char *p, size_t len);

#endif
