/*
 * head_check.c: the raw request-head check (contract in head_check.h).
 */
#include "http/head_check.h"

void http_head_check_begin(http_head_check *h)
{
    h->scanning = true;
    h->first_line = true;
    h->line_len = 0;
    h->error = NULL;
}

void http_head_check_feed(http_head_check *h, const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len && h->scanning; i++) {
        unsigned char c = p[i];
        if (c == '\n') {
            if (h->line_len == 0 && !h->first_line) {
                h->scanning = false; /* the end of the head: the body is not ours to check */
                return;
            }
            if (h->line_len > 0)
                h->first_line = false; /* (blank lines before the request line are skipped) */
            h->line_len = 0;
            continue;
        }
        if (c == '\r')
            continue;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            h->error = "control character in the request head";
        else if (h->line_len == 0 && !h->first_line && (c == ' ' || c == '\t'))
            h->error = "obsolete line folding in the request head";
        if (h->error) {
            h->scanning = false;
            return;
        }
        h->line_len++;
    }
}
