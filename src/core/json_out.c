/*
 * json_out.c: the JSON writer of json_out.h.
 *
 * One pass over the tree into one growable string. A string is copied in runs:
 * a byte table says which bytes end a run (a quote, a backslash, a control
 * character, '/' under JSON_ESCAPE_SLASH, any non-ASCII byte under
 * JSON_ENSURE_ASCII, and a non-ASCII byte otherwise, whose sequence is checked
 * with jansson's UTF-8 rules and stays in the run). The escapes are jansson's:
 * \" \\ \b \f \n \r \t (and \/), \uXXXX with upper-case hex for the other
 * control characters and, under JSON_ENSURE_ASCII, a surrogate pair above the
 * BMP. Reals go through jansson itself (json_dumpb), so that their digits stay
 * exactly its.
 */
#include "core/json_out.h"

#include <pthread.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/util.h"

/* The flags written here; anything else goes to json_dumps. JSON_PRESERVE_ORDER
 * is a no-op since jansson 2.8 (objects always keep their insertion order). */
#define HANDLED                                                                                     \
    (JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY | JSON_ESCAPE_SLASH | \
     JSON_REAL_PRECISION(JSON_MAX_INDENT))

typedef struct chat_json_writer {
    char *p;
    size_t len;
    size_t cap;
    size_t flags;
    const unsigned char *cls; /* the byte table for these flags */
    const json_t *at;         /* chat_json_dumps_splice: written by splice instead, or NULL */
    chat_json_splice_fn splice;
    void *ud;
    /* A document (chat_json_doc_new): bit d of `more` says the container open
     * at depth d has a member already, bit d of `array` that it is an array. */
    unsigned depth;
    uint64_t more, array;
    bool failed;
} out;

typedef enum { W_OK, W_FAIL, W_DELEGATE } wrc;

/* Byte classes in a string. */
enum { C_COPY = 0, C_ESCAPE = 1, C_UTF8 = 2, C_UTF8_ESCAPE = 3 };

/* [ensure_ascii][escape_slash], filled once by tables_init. */
static unsigned char tables[2][2][256];

static void tables_init(void)
{
    for (int a = 0; a < 2; a++)
        for (int s = 0; s < 2; s++)
            for (int c = 0; c < 256; c++) {
                unsigned char k = C_COPY;
                if (c < 0x20 || c == '"' || c == '\\' || (s && c == '/'))
                    k = C_ESCAPE;
                else if (c >= 0x80)
                    k = a ? C_UTF8_ESCAPE : C_UTF8;
                tables[a][s][c] = k;
            }
}

static void reserve(out *o, size_t n)
{
    if (o->cap - o->len > n)
        return; /* room for n bytes and the final NUL */
    size_t cap = o->cap ? o->cap * 2 : 256;
    while (cap - o->len <= n)
        cap *= 2;
    o->p = chat_xrealloc(o->p, cap);
    o->cap = cap;
}

static inline void put(out *o, const void *s, size_t n)
{
    reserve(o, n);
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static inline void put_c(out *o, char c)
{
    reserve(o, 1);
    o->p[o->len++] = c;
}

static void put_u(out *o, unsigned v)
{
    static const char hex[] = "0123456789ABCDEF";
    char e[6] = { '\\', 'u', hex[(v >> 12) & 15], hex[(v >> 8) & 15], hex[(v >> 4) & 15], hex[v & 15] };
    put(o, e, sizeof e);
}

/* Whether none of the 8 bytes of w ends a run: no control character, quote,
 * backslash, non-ASCII byte, nor '/' when slash. The classic "has a zero
 * byte" test ((x - 0x01..) & ~x & 0x80..) on w and on w xor each byte
 * sought; its borrows can only misfire next to a real match, so the word's
 * answer is exact. */
static inline bool word_plain(uint64_t w, bool slash)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    uint64_t m = ((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b) | w;
    if (slash) {
        uint64_t s = w ^ (ones * '/');
        m |= (s - ones) & ~s;
    }
    return (m & high) == 0;
}

#ifdef __SSE2__
/* The bits of the 16 bytes at u that end a run (the same set as
 * word_plain's), one per byte, lowest first. A signed compare below 0x20
 * catches the control characters and every byte from 0x80 at once. */
static inline unsigned run_ends16(const unsigned char *u, bool slash)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)u);
    __m128i m =
        _mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                     _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
    if (slash)
        m = _mm_or_si128(m, _mm_cmpeq_epi8(v, _mm_set1_epi8('/')));
    return (unsigned)_mm_movemask_epi8(m);
}
#endif

/* The end of the run that starts at u: the first byte at or after u that is
 * to be escaped (class C_ESCAPE or C_UTF8_ESCAPE in cls), or end. A
 * multi-byte sequence copied as it is (C_UTF8) is checked on the way: NULL
 * if one is not UTF-8. */
static const unsigned char *run_end(const unsigned char *u, const unsigned char *end, const unsigned char *cls,
                                    bool slash)
{
    for (;;) {
#ifdef __SSE2__
        while (end - u >= 16) { /* prose: sixteen bytes at a time */
            unsigned ends = run_ends16(u, slash);
            if (ends) {
                u += __builtin_ctz(ends);
                break;
            }
            u += 16;
        }
#endif
        while (end - u >= 8) { /* eight bytes at a time */
            uint64_t w;
            memcpy(&w, u, sizeof w);
            if (!word_plain(w, slash))
                break;
            u += 8;
        }
        while (u < end && cls[*u] == C_COPY)
            u++;
        if (u < end && cls[*u] == C_UTF8) {
            size_t k = chat_utf8_seq(u, (size_t)(end - u));
            if (k == 0)
                return NULL;
            u += k;
            continue;
        }
        return u;
    }
}

static bool put_string(out *o, const char *str, size_t n)
{
    const unsigned char *u = (const unsigned char *)str, *end = u + n;
    const unsigned char *cls = o->cls;
    bool slash = (o->flags & JSON_ESCAPE_SLASH) != 0;
    reserve(o, n + 2);
    o->p[o->len++] = '"';
    while (u < end) {
        const unsigned char *run = u;
        u = run_end(u, end, cls, slash);
        if (!u)
            return false;
        /* A sequence to escape is checked before the run goes out: on
         * invalid UTF-8 jansson leaves the pending run unwritten. */
        size_t k = u < end && cls[*u] == C_UTF8_ESCAPE ? chat_utf8_seq(u, (size_t)(end - u)) : 1;
        if (k == 0)
            return false;
        if (u > run)
            put(o, run, (size_t)(u - run));
        if (u == end)
            break;
        unsigned char c = *u;
        if (cls[c] == C_UTF8_ESCAPE) {
            uint32_t cp = k == 2 ? c & 0x1fu : k == 3 ? c & 0x0fu : c & 0x07u;
            for (size_t i = 1; i < k; i++)
                cp = (cp << 6) | (u[i] & 0x3fu);
            if (cp < 0x10000) {
                put_u(o, cp);
            } else {
                cp -= 0x10000;
                put_u(o, 0xd800 | (cp >> 10));
                put_u(o, 0xdc00 | (cp & 0x3ff));
            }
            u += k;
            continue;
        }
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '/': e = "\\/"; break;
        default: break;
        }
        if (e)
            put(o, e, 2);
        else
            put_u(o, c);
        u++;
    }
    put_c(o, '"');
    return true;
}

static void put_integer(out *o, json_int_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0)
        tmp[n++] = '-';
    reserve(o, n);
    while (n)
        o->p[o->len++] = tmp[--n];
}

static wrc put_value(out *o, const json_t *v, unsigned depth)
{
    if (!v)
        return W_FAIL;
    if (v == o->at) {
        o->at = NULL; /* what the splice writes is written as it is */
        bool ok = o->splice(o, o->ud);
        o->at = v;
        return ok ? W_OK : W_FAIL;
    }
    if (depth > CHAT_JSON_OUT_DEPTH)
        return W_DELEGATE;
    bool compact = (o->flags & JSON_COMPACT) != 0;
    switch (json_typeof(v)) {
    case JSON_NULL: put(o, "null", 4); return W_OK;
    case JSON_TRUE: put(o, "true", 4); return W_OK;
    case JSON_FALSE: put(o, "false", 5); return W_OK;
    case JSON_INTEGER: put_integer(o, json_integer_value(v)); return W_OK;
    case JSON_REAL: {
        char b[128];
        size_t prec = o->flags & JSON_REAL_PRECISION(JSON_MAX_INDENT);
        size_t n = json_dumpb(v, b, sizeof b, JSON_ENCODE_ANY | JSON_COMPACT | prec);
        if (n == 0 || n > sizeof b)
            return W_FAIL;
        put(o, b, n);
        return W_OK;
    }
    case JSON_STRING: return put_string(o, json_string_value(v), json_string_length(v)) ? W_OK : W_FAIL;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        put_c(o, '[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                put(o, ", ", compact ? 1 : 2);
            wrc rc = put_value(o, json_array_get(v, i), depth + 1);
            if (rc != W_OK)
                return rc;
        }
        put_c(o, ']');
        return W_OK;
    }
    case JSON_OBJECT: {
        put_c(o, '{');
        bool first = true;
        for (void *it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
            if (!first)
                put(o, ", ", compact ? 1 : 2);
            first = false;
            /* jansson ignores a key's failure: what it wrote of the key
             * stays, unterminated, and the value follows. Only a key made
             * with json_object_set_nocheck can fail; do the same. */
            (void)put_string(o, json_object_iter_key(it), json_object_iter_key_len(it));
            put(o, ": ", compact ? 1 : 2);
            wrc rc = put_value(o, json_object_iter_value(it), depth + 1);
            if (rc != W_OK)
                return rc;
        }
        put_c(o, '}');
        return W_OK;
    }
    }
    return W_FAIL;
}

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

/* Writes v; the text (heap, NUL-terminated) or NULL with *rc why not. */
static char *dump(const json_t *v, size_t flags, const json_t *at, chat_json_splice_fn fn, void *ud, size_t *len,
                  wrc *rc)
{
    *rc = W_FAIL;
    if (flags & ~(size_t)HANDLED) {
        *rc = W_DELEGATE;
        return NULL;
    }
    if (!v || (!(flags & JSON_ENCODE_ANY) && !json_is_array(v) && !json_is_object(v)))
        return NULL;
    pthread_once(&tables_once, tables_init);
    out o = { .flags = flags,
              .cls = tables[(flags & JSON_ENSURE_ASCII) != 0][(flags & JSON_ESCAPE_SLASH) != 0],
              .at = at,
              .splice = fn,
              .ud = ud };
    *rc = put_value(&o, v, 0);
    if (*rc == W_OK) {
        reserve(&o, 0);
        o.p[o.len] = '\0';
        if (len)
            *len = o.len;
        return o.p;
    }
    free(o.p);
    return NULL;
}

char *chat_json_dumps(const json_t *v, size_t flags, size_t *len)
{
    wrc rc;
    char *s = dump(v, flags, NULL, NULL, NULL, len, &rc);
    if (rc != W_DELEGATE)
        return s;
    s = json_dumps(v, flags);
    if (s && len)
        *len = strlen(s);
    return s;
}

char *chat_json_dumps_splice(const json_t *v, size_t flags, const json_t *at, chat_json_splice_fn fn, void *ud,
                             size_t *len)
{
    wrc rc;
    return dump(v, flags, at, fn, ud, len, &rc);
}

void chat_json_write_reserve(chat_json_writer *w, size_t n)
{
    if (w->cap - w->len > n)
        return;
    w->cap = w->len + n + 1; /* exactly: later writes past it double as usual */
    w->p = chat_xrealloc(w->p, w->cap);
}

void chat_json_write_raw(chat_json_writer *w, const char *s, size_t n)
{
    put(w, s, n);
}

bool chat_json_write_string(chat_json_writer *w, const char *s, size_t n)
{
    return put_string(w, s, n);
}

bool chat_json_plain(const char *s, size_t n)
{
    pthread_once(&tables_once, tables_init);
    const unsigned char *u = (const unsigned char *)s, *end = u + n;
    return run_end(u, end, tables[0][0], false) == end;
}

bool chat_json_write_plain(chat_json_writer *w, const char *s, size_t n)
{
    if (w->flags & (JSON_ENSURE_ASCII | JSON_ESCAPE_SLASH))
        return put_string(w, s, n);
    reserve(w, n + 2);
    w->p[w->len++] = '"';
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len++] = '"';
    return true;
}

bool chat_json_write_value(chat_json_writer *w, const json_t *v)
{
    return put_value(w, v, 0) == W_OK;
}

/* ---- documents written without a tree ---- */

/* The most containers open at once in a document. */
#define DOC_DEPTH 64

chat_json_writer *chat_json_doc_new(size_t flags)
{
    pthread_once(&tables_once, tables_init);
    out *o = chat_xcalloc(1, sizeof *o);
    o->flags = flags;
    o->cls = tables[(flags & JSON_ENSURE_ASCII) != 0][(flags & JSON_ESCAPE_SLASH) != 0];
    o->failed = (flags & ~(size_t)HANDLED) != 0; /* an indent: not written here */
    reserve(o, 255);
    return o;
}

char *chat_json_doc_end(chat_json_writer *w, size_t *len)
{
    if (w->failed || w->depth) {
        free(w->p);
        free(w);
        return NULL;
    }
    w->p[w->len] = '\0'; /* reserve() always leaves room for it */
    char *text = w->p;
    if (len)
        *len = w->len;
    free(w);
    return text;
}

/* Starts a member (key inside an object, NULL inside an array or at the top):
 * the comma before it, and its key. */
static void member(out *o, const char *key)
{
    if (!o->depth)
        return;
    bool compact = (o->flags & JSON_COMPACT) != 0;
    uint64_t bit = (uint64_t)1 << (o->depth - 1);
    if (o->more & bit)
        put(o, ", ", compact ? 1 : 2);
    o->more |= bit;
    if (!(o->array & bit)) {
        if (!key) {
            o->failed = true;
            return;
        }
        /* A name that needs no escape (the contract): copied as it is. */
        size_t n = strlen(key);
        reserve(o, n + 4);
        o->p[o->len++] = '"';
        memcpy(o->p + o->len, key, n);
        o->len += n;
        o->p[o->len++] = '"';
        o->p[o->len++] = ':';
        if (!compact)
            o->p[o->len++] = ' ';
    }
}

static void open_container(out *o, const char *key, bool array)
{
    member(o, key);
    if (o->depth == DOC_DEPTH) {
        o->failed = true;
        return;
    }
    uint64_t bit = (uint64_t)1 << o->depth++;
    o->more &= ~bit;
    o->array = array ? o->array | bit : o->array & ~bit;
    put_c(o, array ? '[' : '{');
}

void chat_json_obj(chat_json_writer *w, const char *key)
{
    open_container(w, key, false);
}

void chat_json_arr(chat_json_writer *w, const char *key)
{
    open_container(w, key, true);
}

void chat_json_close(chat_json_writer *w)
{
    if (!w->depth) {
        w->failed = true;
        return;
    }
    uint64_t bit = (uint64_t)1 << --w->depth;
    put_c(w, w->array & bit ? ']' : '}');
}

void chat_json_strn(chat_json_writer *w, const char *key, const char *s, size_t n)
{
    member(w, key);
    if (!s)
        put(w, "null", 4);
    else if (!put_string(w, s, n))
        w->failed = true;
}

void chat_json_str(chat_json_writer *w, const char *key, const char *s)
{
    chat_json_strn(w, key, s, s ? strlen(s) : 0);
}

void chat_json_str_or_empty(chat_json_writer *w, const char *key, const char *s, size_t n)
{
    member(w, key);
    size_t at = w->len;
    if (!s || !put_string(w, s, n)) {
        w->len = at;
        put(w, "\"\"", 2);
    }
}

void chat_json_int(chat_json_writer *w, const char *key, json_int_t v)
{
    member(w, key);
    put_integer(w, v);
}

void chat_json_bool(chat_json_writer *w, const char *key, bool v)
{
    member(w, key);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void chat_json_null(chat_json_writer *w, const char *key)
{
    member(w, key);
    put(w, "null", 4);
}

void chat_json_val(chat_json_writer *w, const char *key, const json_t *v)
{
    member(w, key);
    if (!v || put_value(w, v, 0) != W_OK)
        w->failed = true; /* NULL: what json_pack's "o" refused, as it would */
}
