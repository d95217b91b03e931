/*
 * json_in.c: the fast JSON reader (see json_in.h).
 *
 * A recursive descent over the bytes, building jansson values as it goes.
 * Every check is strict JSON as jansson reads it: strings are strict UTF-8
 * (no overlong forms, no surrogates, nothing past U+10FFFF), no raw control
 * characters, escapes as RFC 8259 lists them with surrogate pairs joined;
 * numbers without a leading zero, integers as json_int_t, reals by strtod in
 * the C locale's format; the literals true, false and null; whitespace is
 * space, tab, CR and LF. Anything else returns NULL: the caller hands the
 * text to json_loadb, which either reads what this reader leaves out or
 * reports the error. A duplicate key keeps its first place and the last
 * value, as jansson's reader does.
 */
#include "core/json_in.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/util.h"

typedef struct reader {
    const unsigned char *p;   /* next byte */
    const unsigned char *end; /* one past the last */
    char *scratch;            /* decoded strings that had escapes; NULL until one does */
} reader;

/*
 * Bytes inside a string: 0 taken as they are (printable ASCII but the quote
 * and the backslash), 1 anything else (the end, an escape, a control
 * character, the first byte of a UTF-8 sequence).
 */
static const unsigned char STRING_STOP[256] = {
    [0 ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
    [0x80 ... 0xff] = 1,
};

static void skip_ws(reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
}

/* Four hex digits at p (within end) into *v. */
static bool hex4(const unsigned char *p, const unsigned char *end, uint32_t *v)
{
    if (end - p < 4)
        return false;
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        int d = chat_hex_value(p[i]);
        if (d < 0)
            return false;
        x = x * 16 + (uint32_t)d;
    }
    *v = x;
    return true;
}

static size_t utf8_encode(uint32_t cp, char *d)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xc0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xe0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        d[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (char)(0xf0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    d[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/*
 * The rest of a string whose first escape is at p (s: its first byte),
 * decoded into the scratch buffer. A decoded string is never longer than its
 * text (an escape of 2, 6 or 12 bytes gives at most 1, 3 or 4), so a buffer
 * of the input's remaining length holds any string that follows; it is made
 * once per read.
 */
static bool read_escaped(reader *r, const unsigned char *s, const unsigned char *p, const char **out, size_t *len)
{
    const unsigned char *end = r->end;
    if (!r->scratch)
        r->scratch = chat_xmalloc((size_t)(end - s));
    char *d = r->scratch;
    memcpy(d, s, (size_t)(p - s));
    d += p - s;
    while (p < end) {
        unsigned c = *p;
        if (c == '"') {
            *out = r->scratch;
            *len = (size_t)(d - r->scratch);
            r->p = p + 1;
            return true;
        }
        if (c == '\\') {
            if (end - p < 2)
                return false;
            p += 2;
            switch (p[-1]) {
            case '"': *d++ = '"'; break;
            case '\\': *d++ = '\\'; break;
            case '/': *d++ = '/'; break;
            case 'b': *d++ = '\b'; break;
            case 'f': *d++ = '\f'; break;
            case 'n': *d++ = '\n'; break;
            case 'r': *d++ = '\r'; break;
            case 't': *d++ = '\t'; break;
            case 'u': {
                uint32_t cp, lo;
                if (!hex4(p, end, &cp))
                    return false;
                p += 4;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &lo) || lo < 0xdc00 ||
                        lo > 0xdfff)
                        return false;
                    p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else if ((cp >= 0xdc00 && cp <= 0xdfff) || cp == 0) {
                    return false; /* a lone low surrogate; NUL is jansson's to refuse or take */
                }
                d += utf8_encode(cp, d);
                break;
            }
            default: return false;
            }
        } else if (c < 0x20) {
            return false;
        } else if (c < 0x80) {
            *d++ = (char)c;
            p++;
        } else {
            size_t n = chat_utf8_seq(p, (size_t)(end - p));
            if (!n)
                return false;
            memcpy(d, p, n);
            d += n;
            p += n;
        }
    }
    return false;
}

/*
 * A string from r->p, just past its opening quote. *out points into the
 * input (no escape) or into the scratch buffer (*scratch set), valid until
 * the next string is read.
 */
static bool read_string(reader *r, const char **out, size_t *len, bool *scratch)
{
    const unsigned char *s = r->p, *p = s, *end = r->end;
    *scratch = false;
    for (;;) {
        while (p < end && !STRING_STOP[*p])
            p++;
        if (p >= end)
            return false;
        unsigned c = *p;
        if (c == '"') {
            *out = (const char *)s;
            *len = (size_t)(p - s);
            r->p = p + 1;
            return true;
        }
        if (c == '\\') {
            *scratch = true;
            return read_escaped(r, s, p, out, len);
        }
        if (c < 0x20)
            return false;
        size_t n = chat_utf8_seq(p, (size_t)(end - p));
        if (!n)
            return false;
        p += n;
    }
}

static bool is_digit(const unsigned char *p, const unsigned char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static json_t *read_number(reader *r)
{
    const unsigned char *s = r->p, *p = s, *end = r->end;
    bool neg = false, real = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (!is_digit(p, end))
        return NULL;
    if (*p == '0') {
        p++;
        if (is_digit(p, end)) /* a leading zero */
            return NULL;
    } else {
        while (is_digit(p, end))
            p++;
    }
    size_t int_digits = (size_t)(p - s) - neg;
    if (p < end && *p == '.') {
        real = true;
        p++;
        if (!is_digit(p, end))
            return NULL;
        while (is_digit(p, end))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        real = true;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return NULL;
        while (is_digit(p, end))
            p++;
    }
    r->p = p;
    if (!real) {
        if (int_digits > 18) /* may not fit json_int_t: jansson's to check */
            return NULL;
        json_int_t v = 0;
        for (const unsigned char *q = s + neg; q < p; q++)
            v = v * 10 + (*q - '0');
        return json_integer(neg ? -v : v);
    }
    /* strtod needs a NUL after the text, and reads the locale's decimal point
     * (jansson swaps '.' for it; chatd never sets a locale, so it is '.'). */
    char text[64];
    size_t n = (size_t)(p - s);
    const char *point = localeconv()->decimal_point;
    if (n >= sizeof text || point[0] != '.' || point[1] != '\0')
        return NULL;
    memcpy(text, s, n);
    text[n] = '\0';
    char *stop;
    errno = 0;
    double v = strtod(text, &stop);
    if (stop != text + n || ((v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE))
        return NULL;
    return json_real(v);
}

static bool literal(reader *r, const char *word, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return false;
    r->p += n;
    return true;
}

static json_t *read_value(reader *r, int depth);

static json_t *read_array(reader *r, int depth)
{
    json_t *a = json_array();
    if (!a)
        return NULL;
    r->p++; /* '[' */
    skip_ws(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return a;
    }
    for (;;) {
        json_t *v = read_value(r, depth);
        if (!v || json_array_append_new(a, v) != 0) /* append_new releases v when it fails */
            break;
        skip_ws(r);
        if (r->p >= r->end)
            break;
        if (*r->p == ']') {
            r->p++;
            return a;
        }
        if (*r->p != ',')
            break;
        r->p++;
    }
    json_decref(a);
    return NULL;
}

static json_t *read_object(reader *r, int depth)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    r->p++; /* '{' */
    skip_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return o;
    }
    for (;;) {
        const char *key;
        size_t key_len;
        bool in_scratch;
        if (r->p >= r->end || *r->p != '"')
            break;
        r->p++;
        if (!read_string(r, &key, &key_len, &in_scratch))
            break;
        /* The value's strings may reuse the scratch buffer: keep a decoded key apart. */
        char *key_copy = NULL;
        if (in_scratch) {
            key_copy = chat_xmalloc(key_len + 1);
            memcpy(key_copy, key, key_len);
            key = key_copy;
        }
        skip_ws(r);
        json_t *v = NULL;
        if (r->p < r->end && *r->p == ':') {
            r->p++;
            v = read_value(r, depth);
        }
        /* setn_new_nocheck releases v when it fails; the key is known to be UTF-8 without a NUL. */
        int rc = v ? json_object_setn_new_nocheck(o, key, key_len, v) : -1;
        free(key_copy);
        if (rc != 0)
            break;
        skip_ws(r);
        if (r->p >= r->end)
            break;
        if (*r->p == '}') {
            r->p++;
            return o;
        }
        if (*r->p != ',')
            break;
        r->p++;
        skip_ws(r);
    }
    json_decref(o);
    return NULL;
}

static json_t *read_value(reader *r, int depth)
{
    skip_ws(r);
    if (r->p >= r->end)
        return NULL;
    switch (*r->p) {
    case '{': return depth < CHAT_JSON_IN_DEPTH ? read_object(r, depth + 1) : NULL;
    case '[': return depth < CHAT_JSON_IN_DEPTH ? read_array(r, depth + 1) : NULL;
    case '"': {
        const char *s;
        size_t len;
        bool in_scratch;
        r->p++;
        return read_string(r, &s, &len, &in_scratch) ? json_stringn_nocheck(s, len) : NULL;
    }
    case 't': return literal(r, "true", 4) ? json_true() : NULL;
    case 'f': return literal(r, "false", 5) ? json_false() : NULL;
    case 'n': return literal(r, "null", 4) ? json_null() : NULL;
    default: return read_number(r); /* NULL unless it starts with '-' or a digit */
    }
}

json_t *chat_json_fast_loadb(const char *buf, size_t len, size_t flags)
{
    if (!buf || (flags & ~(size_t)(JSON_DECODE_ANY | JSON_ALLOW_NUL)))
        return NULL;
    reader r = { .p = (const unsigned char *)buf, .end = (const unsigned char *)buf + len };
    skip_ws(&r);
    if (!(flags & JSON_DECODE_ANY) && (r.p >= r.end || (*r.p != '{' && *r.p != '[')))
        return NULL;
    json_t *v = read_value(&r, 0);
    if (v) {
        skip_ws(&r);
        if (r.p != r.end) { /* text after the value */
            json_decref(v);
            v = NULL;
        }
    }
    free(r.scratch);
    return v;
}

/* *err as jansson leaves it after a successful read. */
static void read_ok(json_error_t *err, const char *source)
{
    if (!err)
        return;
    err->line = -1;
    err->column = -1;
    err->position = 0;
    snprintf(err->source, sizeof err->source, "%s", source);
    err->text[0] = '\0';
}

json_t *chat_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *err)
{
    json_t *v = chat_json_fast_loadb(buf, len, flags);
    if (!v)
        return json_loadb(buf, len, flags, err);
    read_ok(err, "<buffer>");
    return v;
}

json_t *chat_json_loads(const char *s, size_t flags, json_error_t *err)
{
    json_t *v = s ? chat_json_fast_loadb(s, strlen(s), flags) : NULL;
    if (!v)
        return json_loads(s, flags, err);
    read_ok(err, "<string>");
    return v;
}
