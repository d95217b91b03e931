/*
 * fuzz_head_check: the raw request-head check (src/http/head_check.c), which
 * sees every byte a client sends before evhttp parses it.
 *
 * Input: the bytes of a connection's start. Oracles (head_check.h): feeding
 * the bytes in a random split gives the same result as feeding them whole
 * (scanning state, error, line position); an error is one of the two static
 * texts; and a reference reading agrees: the check stops at the first control
 * byte (HTAB, CR, LF aside) or folded line before the blank line that ends the
 * head, and never looks past that blank line.
 */
#include "fuzz_util.h"
#include "http/head_check.h"

static const char CONTROL[] = "control character in the request head";
static const char FOLDING[] = "obsolete line folding in the request head";

/* The same rules written the slow, obvious way over the whole input. */
static const char *reference(const uint8_t *p, size_t n, bool *ended)
{
    bool first = true;
    size_t line = 0;
    *ended = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '\r')
            continue;
        if (c == '\n') {
            if (line == 0 && !first) {
                *ended = true;
                return NULL;
            }
            if (line > 0)
                first = false;
            line = 0;
            continue;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return CONTROL;
        if (line == 0 && !first && (c == ' ' || c == '\t'))
            return FOLDING;
        line++;
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    http_head_check whole;
    http_head_check_begin(&whole);
    http_head_check_feed(&whole, data, size);

    uint64_t seed = 0;
    memcpy(&seed, data, size < 8 ? size : 8);
    fuzz_rng rng = fuzz_rng_seed(seed);
    http_head_check split;
    http_head_check_begin(&split);
    for (size_t off = 0; off < size;) {
        size_t k = fuzz_chunk_len(&rng, size - off);
        http_head_check_feed(&split, data + off, k);
        off += k;
    }
    FUZZ_CHECK(whole.scanning == split.scanning && whole.error == split.error && whole.line_len == split.line_len &&
                   whole.first_line == split.first_line,
               "a split changed the result");

    bool ended = false;
    const char *want = reference(data, size, &ended);
    const char *got = whole.error;
    FUZZ_CHECK((want == NULL && got == NULL) || (want && got && strcmp(want, got) == 0),
               "check says %s, the reference %s", got ? got : "fine", want ? want : "fine");
    FUZZ_CHECK(!got || strcmp(got, CONTROL) == 0 || strcmp(got, FOLDING) == 0, "unknown error text");
    FUZZ_CHECK(whole.scanning == (!ended && !got), "scanning after the end of the head or an error");
    return 0;
}
