/*
 * blocks.c: a message's blocks between their committed and their stored form
 * (see blocks.h). Parse with jansson, walk the image blocks (top level and in
 * tool_result content arrays), swap sources, dump compact.
 */
#define _GNU_SOURCE
#include "store/blocks.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json_in.h"
#include "core/json_out.h"
#include "core/log.h"
#include "core/util.h"
#include "store/store.h"

#define REF_TYPE "chatd_blob"

/* ---- base64 and the hash -------------------------------------------------- */

/*
 * If s (len bytes) is canonical standard base64 (RFC 4648 section 4: padded,
 * '=' only at the end, zero unused bits, not empty), writes the lowercase hex
 * SHA-256 of the bytes it encodes into hex and their count into *bytes, and
 * returns true. Decodes in chunks: no copy of the image.
 */
static bool b64_sha256(const char *s, size_t len, char hex[STORE_BLOB_HEX + 1], int64_t *bytes)
{
    if (len == 0 || len % 4 != 0)
        return false;
    size_t pad = (s[len - 1] == '=') + (s[len - 2] == '=' && s[len - 1] == '=');
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        chat_fatal("store: cannot initialise SHA-256");
    unsigned char chunk[3 * 1024];
    size_t used = 0;
    int64_t total = 0;
    bool ok = true;
    for (size_t i = 0; i < len && ok; i += 4) {
        int v[4];
        size_t n = 3; /* bytes this group encodes */
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + (size_t)k];
            if (c == '=' && i + 4 == len && k >= 4 - (int)pad) {
                v[k] = 0;
                continue;
            }
            v[k] = chat_b64_value(c);
            if (v[k] < 0)
                ok = false;
        }
        if (!ok)
            break;
        if (i + 4 == len) {
            n = 3 - pad;
            /* The unused low bits of the last character are zero in the canonical form. */
            if ((pad == 1 && (v[2] & 0x3) != 0) || (pad == 2 && (v[1] & 0xF) != 0)) {
                ok = false;
                break;
            }
        }
        unsigned char b[3] = { (unsigned char)(v[0] << 2 | v[1] >> 4), (unsigned char)((v[1] & 0xF) << 4 | v[2] >> 2),
                               (unsigned char)((v[2] & 0x3) << 6 | v[3]) };
        memcpy(chunk + used, b, n);
        used += n;
        total += (int64_t)n;
        if (used + 3 > sizeof chunk) {
            EVP_DigestUpdate(ctx, chunk, used);
            used = 0;
        }
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (ok) {
        EVP_DigestUpdate(ctx, chunk, used);
        if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
            chat_fatal("store: SHA-256 failed");
        static const char digits[] = "0123456789abcdef";
        for (unsigned int k = 0; k < mdlen; k++) {
            hex[2 * k] = digits[md[k] >> 4];
            hex[2 * k + 1] = digits[md[k] & 15];
        }
        hex[STORE_BLOB_HEX] = '\0';
        *bytes = total;
    }
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* ---- walking the image blocks --------------------------------------------- */

/* Calls visit(block, ctx) on every image block of the array content: its
 * elements, and the elements of each tool_result's content array. Stops at
 * the first visit that returns false. */
static bool each_image(json_t *content, bool (*visit)(json_t *block, void *ctx), void *ctx)
{
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type)
            continue;
        if (strcmp(type, "image") == 0) {
            if (!visit(b, ctx))
                return false;
        } else if (strcmp(type, "tool_result") == 0) {
            json_t *inner = json_object_get(b, "content");
            if (json_is_array(inner) && !each_image(inner, visit, ctx))
                return false;
        }
    }
    return true;
}

static const char *source_type(json_t *block)
{
    return json_string_value(json_object_get(json_object_get(block, "source"), "type"));
}

static bool no_ref(json_t *block, void *ctx)
{
    (void)ctx;
    const char *t = source_type(block);
    return !t || strcmp(t, REF_TYPE) != 0;
}

/* The parsed blocks if text is a valid blocks text (store_blocks_valid), else NULL. */
static json_t *parse_valid(const char *text)
{
    if (!text || strlen(text) > STORE_BLOCKS_MAX)
        return NULL;
    json_t *root = chat_json_loads(text, 0, NULL);
    if (!json_is_array(root))
        goto bad;
    size_t i;
    json_t *b;
    json_array_foreach(root, i, b)
    {
        if (!json_is_object(b) || !json_is_string(json_object_get(b, "type")))
            goto bad;
    }
    if (!each_image(root, no_ref, NULL))
        goto bad;
    return root;
bad:
    json_decref(root);
    return NULL;
}

bool store_blocks_valid(const char *blocks)
{
    if (!blocks)
        return true;
    json_t *root = parse_valid(blocks);
    json_decref(root);
    return root != NULL;
}

/* ---- pack ------------------------------------------------------------------- */

typedef struct pack_ctx {
    store_blob *blobs;
    size_t n, cap;
    bool changed;
} pack_ctx;

static bool pack_one(json_t *block, void *arg)
{
    pack_ctx *c = arg;
    json_t *src = json_object_get(block, "source");
    json_t *type = json_object_get(src, "type"), *mt = json_object_get(src, "media_type"),
           *data = json_object_get(src, "data");
    /* Only the exact base64 shape is moved out, so that the reference puts it back whole. */
    if (!json_is_object(src) || json_object_size(src) != 3 || !json_is_string(type) ||
        strcmp(json_string_value(type), "base64") != 0 || !json_is_string(mt) || !json_is_string(data) ||
        strlen(json_string_value(mt)) != json_string_length(mt))
        return true;
    store_blob blob = { 0 };
    if (!b64_sha256(json_string_value(data), json_string_length(data), blob.sha256, &blob.bytes))
        return true;
    json_t *ref = json_pack("{s:s,s:s,s:O}", "type", REF_TYPE, "sha256", blob.sha256, "media_type", mt);
    if (!ref)
        chat_fatal("store: out of memory packing blocks");
    bool seen = false;
    for (size_t i = 0; i < c->n && !seen; i++)
        seen = strcmp(c->blobs[i].sha256, blob.sha256) == 0;
    if (!seen) {
        if (c->n == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 4;
            c->blobs = chat_xrealloc(c->blobs, c->cap * sizeof *c->blobs);
        }
        blob.source_ = json_incref(src); /* outlives its place in the tree */
        blob.media_type = json_string_value(mt);
        blob.data = json_string_value(data);
        blob.data_len = json_string_length(data);
        c->blobs[c->n++] = blob;
    }
    json_object_set_new(block, "source", ref);
    c->changed = true;
    return true;
}

static int blob_cmp(const void *a, const void *b)
{
    return strcmp(((const store_blob *)a)->sha256, ((const store_blob *)b)->sha256);
}

chat_rc store_blocks_pack(const char *blocks, store_packed *out)
{
    memset(out, 0, sizeof *out);
    if (!blocks)
        return CHAT_OK;
    json_t *root = parse_valid(blocks);
    if (!root)
        return CHAT_EINVAL;
    pack_ctx c = { 0 };
    (void)each_image(root, pack_one, &c);
    if (c.changed) {
        /* jansson allocates with malloc (chatd sets no other allocator): the
         * caller's free() releases it. */
        out->stored = chat_json_dumps(root, JSON_COMPACT, NULL);
        if (!out->stored)
            chat_fatal("store: out of memory packing blocks");
    } else {
        out->stored = chat_xstrdup(blocks);
    }
    json_decref(root);
    if (c.n > 1)
        qsort(c.blobs, c.n, sizeof *c.blobs, blob_cmp);
    out->blobs = c.blobs;
    out->n_blobs = c.n;
    return CHAT_OK;
}

void store_packed_clear(store_packed *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_blobs; i++)
        json_decref(p->blobs[i].source_);
    free(p->blobs);
    free(p->stored);
    memset(p, 0, sizeof *p);
}

/* ---- unpack ----------------------------------------------------------------- */

bool store_blocks_has_refs(const char *stored)
{
    /* pack dumps the reference type as these bytes; a verbatim text never holds
     * an image with this source (store_blocks_valid refuses it), so text that
     * merely mentions the word costs a parse and changes nothing. */
    return stored && strstr(stored, "\"" REF_TYPE "\"") != NULL;
}

/*
 * Reading puts megabytes of base64 back into a small tree, and jansson would
 * check and escape each character of it twice (as a new string, then when
 * dumping). Instead each reference becomes a source whose "data" is a short
 * placeholder, the small tree is dumped, and the data texts are copied in
 * where their placeholders landed: base64 needs no JSON escaping, so the
 * result is the text jansson would have written. A placeholder holds control
 * characters (dumped as \u0001) and its index; if one does not occur exactly
 * once in the dump (the content happens to hold the same text), the data goes
 * into the tree the slow way instead.
 */
#define MARK "\\u0001chatd-blob-"

typedef struct unpack_ctx {
    store_blob_lookup lookup;
    void *ud;
    const char *missing; /* set on failure: the sha256 not found */
    bool failed;
    char **data; /* data[i]: the base64 text of the i-th reference (heap) */
    size_t *len;
    json_t **source; /* source[i]: the new source object of the i-th reference */
    size_t n, cap;
} unpack_ctx;

/* True if data is base64 text: its alphabet and '=' only (nothing to escape in JSON). */
static bool base64_text(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (data[i] != '=' && chat_b64_value((unsigned char)data[i]) < 0)
            return false;
    return true;
}

static bool unpack_one(json_t *block, void *arg)
{
    unpack_ctx *c = arg;
    json_t *src = json_object_get(block, "source");
    const char *t = json_string_value(json_object_get(src, "type"));
    if (!t || strcmp(t, REF_TYPE) != 0)
        return true;
    const char *sha = json_string_value(json_object_get(src, "sha256"));
    json_t *mt = json_object_get(src, "media_type");
    if (!sha || !json_is_string(mt)) {
        c->missing = "(malformed reference)";
        return false;
    }
    bool failed = false;
    char *data = c->lookup(c->ud, sha, &failed);
    if (!data) {
        c->failed = failed;
        c->missing = sha;
        return false;
    }
    size_t len = strlen(data);
    if (!base64_text(data, len)) {
        free(data);
        c->missing = "(blob data is not base64 text)";
        return false;
    }
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 4;
        c->data = chat_xrealloc(c->data, c->cap * sizeof *c->data);
        c->len = chat_xrealloc(c->len, c->cap * sizeof *c->len);
        c->source = chat_xrealloc(c->source, c->cap * sizeof *c->source);
    }
    char mark[64];
    snprintf(mark, sizeof mark, "\001chatd-blob-%zu\001", c->n); /* dumped as MARK "<n>\\u0001" */
    json_t *s = json_pack("{s:s,s:O,s:s}", "type", "base64", "media_type", mt, "data", mark);
    if (!s)
        chat_fatal("store: out of memory unpacking blocks");
    c->data[c->n] = data;
    c->len[c->n] = len;
    c->source[c->n] = s;
    c->n++;
    json_object_set_new(block, "source", s); /* the tree keeps s alive */
    return true;
}

/* The dump of root with the placeholders of c replaced by their data, or
 * NULL when a placeholder is not found exactly once. Heap (malloc). */
static char *splice(const char *dump, const unpack_ctx *c)
{
    const char **at = chat_xcalloc(c->n, sizeof *at);
    size_t total = strlen(dump);
    char mark[64];
    for (size_t i = 0; i < c->n; i++) {
        int k = snprintf(mark, sizeof mark, MARK "%zu\\u0001", i);
        const char *p = strstr(dump, mark);
        /* Once, and as the value of a "data" key. */
        static const char key[] = "\"data\":\"";
        size_t kl = sizeof key - 1;
        if (!p || strstr(p + 1, mark) || (size_t)(p - dump) < kl || memcmp(p - kl, key, kl) != 0 || p[k] != '"') {
            free(at);
            return NULL;
        }
        at[i] = p;
        total = total - (size_t)k + c->len[i];
    }
    char *out = chat_xmalloc(total + 1);
    size_t w = 0;
    const char *r = dump;
    /* Placeholders in the order they occur in the dump. */
    for (;;) {
        size_t next = c->n;
        for (size_t i = 0; i < c->n; i++)
            if (at[i] && at[i] >= r && (next == c->n || at[i] < at[next]))
                next = i;
        if (next == c->n)
            break;
        size_t before = (size_t)(at[next] - r);
        memcpy(out + w, r, before);
        w += before;
        memcpy(out + w, c->data[next], c->len[next]);
        w += c->len[next];
        r = at[next] + snprintf(mark, sizeof mark, MARK "%zu\\u0001", next);
        at[next] = NULL;
    }
    size_t rest = strlen(r);
    memcpy(out + w, r, rest + 1);
    free(at);
    return out;
}

chat_rc store_blocks_unpack(const char *stored, store_blob_lookup lookup, void *ud, char **out)
{
    *out = NULL;
    if (!stored)
        return CHAT_OK;
    if (!store_blocks_has_refs(stored)) {
        *out = chat_xstrdup(stored);
        return CHAT_OK;
    }
    json_t *root = chat_json_loads(stored, 0, NULL);
    if (!json_is_array(root)) {
        json_decref(root);
        chat_log(LOG_ERROR, "store error",
                 json_pack("{s:s,s:s}", "op", "blocks_unpack", "error", "stored blocks are not a JSON array"));
        return CHAT_EIO;
    }
    unpack_ctx c = { .lookup = lookup, .ud = ud };
    chat_rc rc = CHAT_OK;
    if (!each_image(root, unpack_one, &c)) {
        if (!c.failed) /* a failed look-up was logged by the backend */
            chat_log(LOG_ERROR, "store error",
                     json_pack("{s:s,s:s,s:s}", "op", "blocks_unpack", "error", "a referenced image blob is missing",
                               "sha256", c.missing));
        rc = CHAT_EIO;
        goto out;
    }
    char *dump = chat_json_dumps(root, JSON_COMPACT, NULL);
    if (!dump)
        chat_fatal("store: out of memory unpacking blocks");
    *out = splice(dump, &c);
    free(dump);
    if (!*out) {
        /* The slow way: the data into the tree, then one dump. */
        for (size_t i = 0; i < c.n; i++)
            json_object_set_new(c.source[i], "data", json_stringn_nocheck(c.data[i], c.len[i]));
        *out = chat_json_dumps(root, JSON_COMPACT, NULL); /* malloc'd, as in store_blocks_pack */
        if (!*out)
            chat_fatal("store: out of memory unpacking blocks");
    }
out:
    for (size_t i = 0; i < c.n; i++)
        free(c.data[i]);
    free(c.data);
    free(c.len);
    free(c.source);
    json_decref(root);
    return rc;
}

char *store_blob_lookup_pairs(void *ud, const char *sha256, bool *failed)
{
    (void)failed;
    size_t hl = strlen(sha256);
    for (const char *p = ud; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > hl && p[hl] == ':' && memcmp(p, sha256, hl) == 0)
            return chat_xstrndup(p + hl + 1, len - hl - 1);
        p = end ? end + 1 : NULL;
    }
    return NULL;
}
