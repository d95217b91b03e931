/*
 * transfer.h: `chatd export` and `chatd import`, a store copied as JSON Lines.
 *
 * What a team needs to move its history between backends (SQLite to
 * PostgreSQL when it outgrows the embedded default, or back). Both directions
 * go through the synchronous store API only, so they work for any pair of
 * backends, and neither knows which backend it talks to.
 *
 * The format (one JSON object per line, UTF-8, "\n" after every line):
 *
 *   {"format":"chatd-export","version":1,"exported_at":MS,"schema_version":N}
 *   {"type":"key","id","name","hash","role","rate_limit"|null,"created_at",
 *    "revoked_at","last_used_at","turn_count","usage":USAGE,"cost_micros"}      one per API key
 *   {"type":"session","id","owner"|null,"system_prompt"|null,"model"|null,
 *    "created_at","updated_at","turn_count","message_count","usage":USAGE,
 *    "cost_micros","messages":[{"seq","role","content","status","model"|null,
 *    "stop_reason"|null,"tokens","usage":USAGE,"cost_micros","created_at",
 *    "blocks":[...]?}]}                                                           one per session
 *   {"type":"end","keys":K,"sessions":S,"messages":M}
 *
 * USAGE is {"input_tokens","output_tokens","cache_read_tokens",
 * "cache_write_tokens"} with the meanings of store_usage (-1 unknown). Times
 * are milliseconds since the epoch, 0 meaning "never" for revoked_at and
 * last_used_at. Key lines come first, so that the sessions imported after them
 * are counted on their keys. The end line lets the import tell a complete file
 * from one cut short. Keys carry their hash (the secret is never stored), so
 * the imported keys authenticate the same clients. Message ids are not
 * exported: the importing store numbers messages anew, in order.
 *
 * "blocks" is present only on a message that has them (store_message.blocks):
 * the canonical content array of llm/content.h, whole, images inline as base64
 * (the store's own image references never appear in a file); the import hands
 * it to the store, which keeps each image once again. "content" still holds the
 * message's text.
 *
 * Versions. Version 1 is the only one written and read. "blocks" was added to
 * it as an optional member rather than as a version 2: every file without it
 * (all files written before it) imports exactly as before, and a chatd from
 * before blocks that reads a newer file keeps each message's text and ignores
 * the blocks, where a new version would have refused the whole file. A change
 * that an older reader would misread rather than merely miss must bump
 * TRANSFER_VERSION (import_header refuses versions it does not know).
 *
 * Not exported: turn locks and idempotency records (both short-lived), and
 * the part of the global usage and cost totals that came from sessions deleted
 * before the export (those totals are not refunded by deletes; the import adds
 * up the exported sessions).
 *
 * Consistency: each session line is consistent on its own (its counts match
 * its messages: a session changed while it was being read is read again), but
 * a server that keeps running during the export may add sessions or turns the
 * file misses. Stop the servers for an exact copy.
 */
#ifndef CHATD_STORE_TRANSFER_H
#define CHATD_STORE_TRANSFER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/rc.h"
#include "store/store.h"

#define TRANSFER_FORMAT "chatd-export"
#define TRANSFER_VERSION 1

/* The longest line transfer_import reads unless told otherwise (a session and
 * all its messages are one line). */
#define TRANSFER_MAX_LINE_DEFAULT ((size_t)64 << 20)

/* What a transfer did, filled as it goes (so also meaningful after a failure). */
typedef struct transfer_counts {
    int64_t keys;             /* export: key lines written; import: keys inserted */
    int64_t keys_skipped;     /* import: keys whose id already existed */
    int64_t sessions;         /* export: session lines written; import: sessions inserted */
    int64_t sessions_skipped; /* import: sessions whose id already existed (left as they are) */
    int64_t messages;         /* messages written, or inserted with their sessions */
} transfer_counts;

/*
 * Writes every key, then every session with its messages, of s to out in the
 * format above. counts (zeroed first) says how far it got. Returns CHAT_OK, or
 * CHAT_EIO on a database or write error, CHAT_EINVAL if the store holds a
 * string that is not valid UTF-8 (it could not be written as JSON); err (if
 * errlen > 0) then holds a one-line reason. out is not closed; the caller
 * should check its fclose/fflush too.
 */
chat_rc transfer_export(store *s, FILE *out, transfer_counts *counts, char *err, size_t errlen) CHAT_MUST_CHECK;

/*
 * Reads an export from in, line by line (at most max_line bytes per line, the
 * newline excluded; 0 means TRANSFER_MAX_LINE_DEFAULT), and inserts each key
 * and session with store_key_import / store_session_import. A key or session
 * whose id exists in s is skipped and counted, so running the same import
 * twice is safe. Stops at the first problem, leaving what was imported before
 * it (one session per transaction): CHAT_EINVAL for malformed input (not this
 * format, a bad or missing field, a key line after a session line, counts
 * that do not match, no end line: the file was cut short), CHAT_ETOOBIG for a
 * line longer than max_line, CHAT_EIO for a read or database error. err then
 * names the line ("line 12: ..."). counts is zeroed first.
 */
chat_rc transfer_import(store *s, FILE *in, size_t max_line, transfer_counts *counts, char *err,
                        size_t errlen) CHAT_MUST_CHECK;

#endif
