/*
 * blocks.h: how the store keeps a message's rich content (store_message.blocks,
 * internal to src/store; both backends and nothing else use it).
 *
 * A message's blocks are the canonical content array of llm/content.h as JSON
 * text. Images are big and repeat (a client resends the same picture with every
 * request of a conversation, several sessions share a logo), so the store keeps
 * each image once per content hash, in a `blobs` table, and the message keeps a
 * reference in its place:
 *
 *   committed: {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR..."}}
 *   stored:    {"type":"image","source":{"type":"chatd_blob","sha256":"<64 hex>","media_type":"image/png"}}
 *
 * The hash is the SHA-256 of the decoded image bytes. The blob keeps the base64
 * text itself, not the decoded bytes: a read puts back exactly the text that was
 * committed (no re-encoding), both backends hold it in a plain TEXT column that
 * their text protocols carry unchanged, and nothing is decoded on the read path.
 * Only a source that is exactly {"type":"base64","media_type":string,"data":
 * canonical base64} is moved out (canonical: the one encoding of its bytes, so
 * one hash never stands for two different texts); anything else (a URL source,
 * an unusual shape) stays inline, which is still exact, only not shared. Image
 * blocks at the top level and inside a tool_result's content array are handled.
 *
 * The rewrite is written once here, as pure functions on JSON text (jansson,
 * OpenSSL libcrypto for the hash); each backend stores the result and the blobs
 * in its own transaction, and gives the read side a way to find a blob's data.
 *
 * Thread: pure functions, any thread. Ownership: inputs are borrowed; outputs
 * are owned by the caller, released as each function says.
 */
#ifndef CHATD_STORE_BLOCKS_H
#define CHATD_STORE_BLOCKS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

/* Hex digits of a blob's key (lowercase SHA-256). */
#define STORE_BLOB_HEX 64

/* One image moved out of a message. The strings live as long as the
 * store_packed that holds it. */
typedef struct store_blob {
    char sha256[STORE_BLOB_HEX + 1]; /* lowercase hex SHA-256 of the decoded bytes */
    const char *media_type;          /* as committed, e.g. "image/png" */
    const char *data;                /* the base64 text, as committed */
    size_t data_len;                 /* strlen(data) */
    int64_t bytes;                   /* decoded size */
    json_t *source_;                 /* private: keeps media_type and data alive */
} store_blob;

/* A message's blocks in their stored form, and the blobs they reference. */
typedef struct store_packed {
    char *stored;      /* heap JSON text for messages.blocks; NULL when the blocks were NULL */
    store_blob *blobs; /* distinct by sha256, in ascending sha256 order (a fixed lock order) */
    size_t n_blobs;
} store_packed;

/*
 * True when blocks is NULL (a plain-text message), or a JSON array of at most
 * STORE_BLOCKS_MAX bytes whose elements are objects with a string "type", and
 * with no image source of type "chatd_blob" (the stored form is the store's own;
 * accepting it from a caller would let it read another session's image by
 * hash). store_blocks_pack checks the same (store_op_prepare, backend.c, runs
 * it in front of the backends); transfer.c checks an import's blocks with it
 * to name the field in its error.
 */
bool store_blocks_valid(const char *blocks);

/*
 * Rewrites blocks (NULL, or text that store_blocks_valid accepts) into its
 * stored form: *out->stored is the text to keep in messages.blocks (the input,
 * copied verbatim, when no image was moved out), out->blobs the images to keep
 * in blobs and to link to the message. CHAT_EINVAL (out zeroed) for text that
 * store_blocks_valid refuses. Release with store_packed_clear.
 */
chat_rc store_blocks_pack(const char *blocks, store_packed *out) CHAT_MUST_CHECK;

/* Frees what store_blocks_pack filled and zeroes it. Accepts NULL and a zeroed struct. */
void store_packed_clear(store_packed *p);

/* True if stored (messages.blocks as kept, may be NULL) references blobs, i.e.
 * store_blocks_unpack has work to do. A cheap text search. */
bool store_blocks_has_refs(const char *stored);

/*
 * Finds a blob's base64 text by its hex sha256 for store_blocks_unpack: a heap
 * string the caller frees, or NULL when the blob is missing (or the look-up
 * failed: *failed set, e.g. a database error, already logged).
 */
typedef char *(*store_blob_lookup)(void *ud, const char *sha256, bool *failed);

/*
 * The canonical blocks of a stored form: every blob reference replaced by its
 * base64 source, found with lookup(ud, sha256). *out receives a heap string
 * (NULL for stored == NULL). CHAT_EIO (logged, *out NULL) when stored is not
 * JSON or a referenced blob is missing or cannot be read: the database does
 * not hold what the store wrote.
 */
chat_rc store_blocks_unpack(const char *stored, store_blob_lookup lookup, void *ud, char **out) CHAT_MUST_CHECK;

/*
 * A store_blob_lookup over a list "<sha256>:<base64>,<sha256>:<base64>..." (what
 * PostgreSQL's string_agg builds: neither hex nor base64 holds ':' or ','),
 * passed as ud (a const char *; NULL is an empty list). No JSON parse of the
 * image data.
 */
char *store_blob_lookup_pairs(void *ud, const char *sha256, bool *failed);

#endif
