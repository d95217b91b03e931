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
#include "core/log.h"
#include "store/store.h"

#define REF_TYPE "chatd_blob"

/* ---- base64 and the hash -------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

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
            v[k] = b64_value(c);
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
    json_t *root = json_loads(text, 0, NULL);
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
        char *text = json_dumps(root, JSON_COMPACT);
        if (!text)
            chat_fatal("store: out of memory packing blocks");
        out->stored = chat_xstrdup(text);
        free(text);
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

typedef struct unpack_ctx {
    store_blob_lookup lookup;
    void *ud;
    const char *missing; /* set on failure: the sha256 not found */
    bool failed;
} unpack_ctx;

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
    json_t *s = json_pack("{s:s,s:O,s:s}", "type", "base64", "media_type", mt, "data", data);
    free(data);
    if (!s) {
        c->missing = "(not valid UTF-8)";
        return false;
    }
    json_object_set_new(block, "source", s);
    return true;
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
    json_t *root = json_loads(stored, 0, NULL);
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
    } else {
        char *text = json_dumps(root, JSON_COMPACT);
        if (!text)
            chat_fatal("store: out of memory unpacking blocks");
        *out = chat_xstrdup(text);
        free(text);
    }
    json_decref(root);
    return rc;
}

char *store_blob_lookup_json(void *ud, const char *sha256, bool *failed)
{
    (void)failed;
    const char *data = json_string_value(json_object_get((json_t *)ud, sha256));
    return data ? chat_xstrdup(data) : NULL;
}
