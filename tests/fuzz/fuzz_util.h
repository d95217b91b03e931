/*
 * fuzz_util.h: what the fuzz targets share (header-only, each target is one
 * file): a check that aborts with a message (libFuzzer then saves the input as
 * a crash, and the regression driver fails), a small generator seeded from the
 * input (chunk splits, choices), and a UTF-8 validity test for the oracles.
 */
#ifndef CHATD_TESTS_FUZZ_UTIL_H
#define CHATD_TESTS_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A target's own oracle: a broken invariant is a finding, like a crash. */
#define FUZZ_CHECK(cond, ...)                                                               \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                   \
            fputc('\n', stderr);                                                            \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

/* Consumes the input from the front: the parameters of one run. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline uint8_t fuzz_byte(fuzz_in *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

/* xorshift64*: the chunk sizes of a split, reproducible from the input alone. */
typedef struct fuzz_rng {
    uint64_t s;
} fuzz_rng;

static inline fuzz_rng fuzz_rng_seed(uint64_t seed)
{
    fuzz_rng r = { seed * 0x9E3779B97F4A7C15ull + 1 };
    return r;
}

static inline uint64_t fuzz_rng_next(fuzz_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

/* A chunk length in 1..max, biased to small ones (1..8 bytes half the time),
 * where split line endings, BOMs and UTF-8 sequences hide. */
static inline size_t fuzz_chunk_len(fuzz_rng *r, size_t max)
{
    uint64_t v = fuzz_rng_next(r);
    size_t n = (v & 1) ? 1 + (size_t)((v >> 1) % 8) : 1 + (size_t)((v >> 1) % 256);
    return n < max ? n : max;
}

/* A NUL-terminated heap copy of the input (the parsers' callers hand them
 * NUL-terminated buffers: chat_buf_str, evbuffer copies). */
static inline char *fuzz_strndup(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* True if s[0..n) is well-formed UTF-8 (no overlongs, surrogates, or code points above U+10FFFF). */
static inline bool fuzz_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return false;
        i += len;
    }
    return true;
}

#endif
