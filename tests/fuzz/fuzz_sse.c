/*
 * fuzz_sse: the provider SSE stream parser (src/llm/sse.c).
 *
 * Input: 5 parameter bytes, then the stream. The parameters pick max_line and
 * max_event (tiny, to reach the limits, or the 64 KiB the transport would
 * use), an event count after which the callback cancels (0: never), and the
 * seed of a random chunk split. The stream is parsed twice, in one piece and in
 * the random chunks; the oracle (sse.h's contract) is that both give the same
 * events in the same order, the same return status, the same last event id
 * and retry time, and that every event respects the limits.
 */
#include "fuzz_util.h"
#include "llm/sse.h"

typedef struct run {
    size_t max_line, max_event;
    unsigned cancel_after; /* cancel on this event (1-based), 0 = never */
    unsigned events;
    uint64_t digest; /* FNV-1a over every event's type, data and id */
    sse_parser *p;
} run;

static void mix(uint64_t *h, const void *data, size_t n)
{
    const unsigned char *b = data;
    for (size_t i = 0; i < n; i++) {
        *h ^= b[i];
        *h *= 0x100000001b3ull;
    }
}

static int on_event(void *ud, const char *type, size_t type_len, const char *data, size_t data_len)
{
    run *r = ud;
    FUZZ_CHECK(type && data, "NULL type or data");
    FUZZ_CHECK(type[type_len] == '\0' && data[data_len] == '\0', "type or data not NUL-terminated");
    FUZZ_CHECK(type_len > 0, "empty event type (\"message\" is the default)");
    /* A type comes from one `event` line, or is the default "message". */
    FUZZ_CHECK(type_len <= r->max_line || (type_len == 7 && memcmp(type, "message", 7) == 0),
               "event type of %zu bytes exceeds max_line %zu", type_len, r->max_line);
    FUZZ_CHECK(data_len <= r->max_event, "data of %zu bytes exceeds max_event %zu", data_len, r->max_event);
    const char *id = sse_last_event_id(r->p);
    FUZZ_CHECK(id != NULL, "NULL last event id");
    mix(&r->digest, &type_len, sizeof type_len);
    mix(&r->digest, type, type_len);
    mix(&r->digest, &data_len, sizeof data_len);
    mix(&r->digest, data, data_len);
    mix(&r->digest, id, strlen(id) + 1);
    r->events++;
    return r->cancel_after && r->events == r->cancel_after;
}

static size_t pick_limit(uint8_t b)
{
    return (b & 0x80) ? 65536 : 1 + (size_t)(b & 0x7F);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    size_t max_line = pick_limit(fuzz_byte(&in));
    size_t max_event = pick_limit(fuzz_byte(&in));
    unsigned cancel_after = fuzz_byte(&in) % 8;
    uint64_t seed = fuzz_byte(&in);
    seed = seed << 8 | fuzz_byte(&in);
    const char *stream = (const char *)in.p;
    size_t len = in.n;

    run whole = { max_line, max_event, cancel_after, 0, 0xcbf29ce484222325ull, NULL };
    run split = whole;
    whole.p = sse_new(max_line, max_event, on_event, &whole);
    split.p = sse_new(max_line, max_event, on_event, &split);

    chat_rc rc_whole = sse_feed(whole.p, len ? stream : NULL, len);

    chat_rc rc_split = CHAT_OK;
    fuzz_rng rng = fuzz_rng_seed(seed);
    for (size_t off = 0; off < len && rc_split == CHAT_OK;) {
        size_t n = fuzz_chunk_len(&rng, len - off);
        rc_split = sse_feed(split.p, stream + off, n);
        off += n;
    }
    /* Errors are sticky. */
    if (rc_split != CHAT_OK)
        FUZZ_CHECK(sse_feed(split.p, "\n\n", 2) == rc_split, "error status not sticky");

    FUZZ_CHECK(rc_whole == CHAT_OK || rc_whole == CHAT_ETOOBIG || rc_whole == CHAT_ECANCELED, "rc %d", rc_whole);
    FUZZ_CHECK(rc_whole == rc_split, "status %d in one piece, %d in chunks", rc_whole, rc_split);
    FUZZ_CHECK(whole.events == split.events, "%u events in one piece, %u in chunks", whole.events, split.events);
    FUZZ_CHECK(whole.digest == split.digest, "events differ between one piece and chunks");
    if (rc_whole == CHAT_OK) {
        FUZZ_CHECK(strcmp(sse_last_event_id(whole.p), sse_last_event_id(split.p)) == 0, "last event ids differ");
        FUZZ_CHECK(sse_retry_ms(whole.p) == sse_retry_ms(split.p), "retry times differ");
        FUZZ_CHECK(sse_retry_ms(whole.p) >= -1, "retry time below -1");
    }
    sse_free(whole.p);
    sse_free(split.p);
    return 0;
}
