/*
 * fuzz_provider_body: the provider request bodies (llm_build_body, both
 * providers), which write text messages without a tree (json_out.h,
 * chat_json_dumps_splice), against the same body built as a jansson tree and
 * dumped by json_dumps.
 *
 * Input: a flags byte (bit 0 prompt caching, bit 1 OpenAI instead of
 * Anthropic, bit 2 streaming, bit 3 a system prompt), a byte for the cache
 * minimum (tokens), a byte for the message count (1..16), then segments of one
 * length byte and that many bytes: the system prompt (with bit 3), then one
 * per message. A message segment's first byte chooses its role (bit 0) and,
 * on Anthropic, whether the rest is parsed as its blocks (bit 1; blocks that
 * are not a non-empty array of typed objects, or that hold a thinking block
 * without a signature, which the provider leaves out, are not used); else the
 * rest is its text, any bytes (cut at a NUL), so invalid UTF-8 reaches the
 * writer.
 * Oracle: the two bodies are the same bytes, or both fail (NULL).
 */
#include "core/json_out.h"
#include "fuzz_util.h"
#include "llm/call_internal.h"
#include "../unit/body_tree.h"

enum { MAX_MESSAGES = 16 };

/* The next segment as a C string (heap), or NULL when the input is spent. */
static char *segment(fuzz_in *in)
{
    if (in->n == 0)
        return NULL;
    size_t len = fuzz_byte(in);
    if (len > in->n)
        len = in->n;
    char *s = malloc(len + 1);
    memcpy(s, in->p, len);
    s[len] = '\0';
    in->p += len;
    in->n -= len;
    return s;
}

/* Blocks both bodies send as they are (see the file comment), or NULL. */
static json_t *usable_blocks(const char *text)
{
    json_t *b = json_loads(text, 0, NULL);
    bool ok = json_is_array(b) && json_array_size(b) > 0;
    size_t i;
    json_t *v;
    json_array_foreach(b, i, v)
    {
        const char *type = json_string_value(json_object_get(v, "type"));
        if (!json_is_object(v) || !type ||
            (strcmp(type, "thinking") == 0 && !json_is_string(json_object_get(v, "signature"))))
            ok = false;
    }
    if (!ok) {
        json_decref(b);
        return NULL;
    }
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    uint8_t flags = fuzz_byte(&in);
    int64_t min = fuzz_byte(&in);
    size_t n = 1 + fuzz_byte(&in) % MAX_MESSAGES;
    bool openai = flags & 2;
    llm_provider p = { .kind = openai ? LLM_PROVIDER_OPENAI : LLM_PROVIDER_ANTHROPIC,
                       .name = "fuzz",
                       .base_url = "http://127.0.0.1:1",
                       .api_key = "k",
                       .prompt_caching = !openai && (flags & 1),
                       .cache_min_tokens = min };
    char *system = flags & 8 ? segment(&in) : NULL;
    llm_message msgs[MAX_MESSAGES];
    char *texts[MAX_MESSAGES] = { 0 };
    json_t *blocks[MAX_MESSAGES] = { 0 };
    size_t k = 0;
    while (k < n) {
        char *s = segment(&in);
        if (!s)
            break;
        uint8_t how = (uint8_t)s[0];
        const char *rest = s[0] ? s + 1 : s;
        texts[k] = s;
        if (!openai && (how & 2))
            blocks[k] = usable_blocks(rest);
        msgs[k] = (llm_message){ .role = how & 1 ? "assistant" : "user", .content = rest, .blocks = blocks[k] };
        if (how & 4) { /* as the history cache tells it (store.h): measured, and plain when it is */
            msgs[k].content_len = strlen(rest);
            msgs[k].content_plain = chat_json_plain(rest, msgs[k].content_len);
        }
        k++;
    }
    if (k > 0) {
        llm_request req = {
            .model = "m", .system = system, .messages = msgs, .n_messages = k, .max_tokens = 64, .stream = flags & 4
        };
        char *got = llm_build_body(&p, &req);
        char *want = body_tree_reference(&p, &req);
        FUZZ_CHECK((got == NULL) == (want == NULL), "built %s, tree %s", got ? got : "NULL", want ? want : "NULL");
        if (got)
            FUZZ_CHECK(strcmp(got, want) == 0, "\n built %s\n tree  %s", got, want);
        free(got);
        free(want);
    }
    for (size_t i = 0; i < k; i++) {
        free(texts[i]);
        json_decref(blocks[i]);
    }
    free(system);
    return 0;
}
