/*
 * json_out.h: JSON text from a jansson value, byte for byte what json_dumps
 * writes, several times faster.
 *
 * Why: jansson's json_dumps validates every string one code point at a time
 * through a callback, checks each array and object for cycles with a hash
 * table keyed by its formatted address, and copies the finished text once
 * more. A provider request carries the whole conversation that fits the
 * model's window, so late in a long session that dump was the largest part
 * of a turn's CPU (bench/long_session.py); every JSON response and log line
 * pays it too.
 *
 * Contract: chat_json_dumps(v, flags, &len) returns exactly the bytes that
 * json_dumps(v, flags) returns, and NULL exactly when it does (v NULL, v
 * neither an array nor an object without JSON_ENCODE_ANY, a string that is
 * not UTF-8, made with json_string_nocheck, a value that contains itself).
 * Even jansson's quirk is kept: an object key that is not UTF-8 (made with
 * json_object_set_nocheck) fails silently, leaving the key's text up to the
 * failing run unclosed, and the value follows.
 * The flags written here are JSON_COMPACT, JSON_ENCODE_ANY, JSON_ENSURE_ASCII,
 * JSON_ESCAPE_SLASH and JSON_REAL_PRECISION(n) (reals are formatted by
 * jansson itself); any other (an indent, JSON_SORT_KEYS, JSON_EMBED), and a
 * value nested deeper than CHAT_JSON_OUT_DEPTH (which is how a cycle shows),
 * is handed to json_dumps. tests/fuzz/fuzz_json_out.c compares the two on
 * arbitrary documents and strings.
 *
 * Memory: the result is a malloc'd NUL-terminated string: free() it. *len (if
 * len is not NULL) gets its length without the NUL. Allocation failure is
 * fatal (core/alloc.h). Thread: any; v is only read.
 */
#ifndef CHATD_CORE_JSON_OUT_H
#define CHATD_CORE_JSON_OUT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* Nesting past this is handed to json_dumps (whose check finds a cycle). */
#define CHAT_JSON_OUT_DEPTH 4096

char *chat_json_dumps(const json_t *v, size_t flags, size_t *len);

/*
 * A part of a document written without a tree: where the walk of
 * chat_json_dumps_splice meets the value `at` (the same pointer), it calls
 * fn, which writes one JSON value in its place with the chat_json_write_*
 * functions. Why: a provider body carries the whole conversation; built as a
 * jansson tree, every message is a copy of its text and four allocations,
 * all freed again after one dump (docs/ARCHITECTURE.md, "Threads and loops": the provider body).
 *
 * The result is what chat_json_dumps writes for v with `at` replaced by fn's
 * output. NULL when fn returns false, on the cases where chat_json_dumps
 * returns NULL, and on those it hands to json_dumps (flags it does not write,
 * nesting deeper than CHAT_JSON_OUT_DEPTH), which cannot splice. Values fn
 * writes are written whole (`at` inside them is not spliced again). The
 * writer is valid only during fn. Thread: any; v is only read.
 */
typedef struct chat_json_writer chat_json_writer;
typedef bool (*chat_json_splice_fn)(chat_json_writer *w, void *ud);
char *chat_json_dumps_splice(const json_t *v, size_t flags, const json_t *at, chat_json_splice_fn fn, void *ud,
                             size_t *len);
/* Room for at least n more bytes: a writer that knows about how much it will
 * write (a provider body's history, a megabyte late in a long session) grows
 * the text once instead of doubling it, and copying what it holds, each time. */
void chat_json_write_reserve(chat_json_writer *w, size_t n);
/* Bytes as they are (the caller makes them JSON). */
void chat_json_write_raw(chat_json_writer *w, const char *s, size_t n);
/* s (n bytes) as a JSON string, escaped as the flags say; false if s is not UTF-8. */
bool chat_json_write_string(chat_json_writer *w, const char *s, size_t n);
/* v as chat_json_dumps writes it; false where that returns NULL or delegates. */
bool chat_json_write_value(chat_json_writer *w, const json_t *v);

/*
 * Strings known to need no escape. chat_json_plain(s, n) is true when s is
 * valid UTF-8 without a quote, a backslash or a control character: under
 * flags without JSON_ENSURE_ASCII and JSON_ESCAPE_SLASH its JSON string is s
 * itself between quotes. A caller that keeps a string (the history cache)
 * asks once, and chat_json_write_plain then writes that string with one copy
 * instead of escaping it on every document: a provider body carries the
 * whole history on every turn. chat_json_write_plain writes s (n bytes, for
 * which chat_json_plain was true) as chat_json_write_string would, copying it
 * as it is where the flags allow; passing a string chat_json_plain refuses
 * writes invalid JSON. Thread: any.
 */
bool chat_json_plain(const char *s, size_t n);
bool chat_json_write_plain(chat_json_writer *w, const char *s, size_t n);

/*
 * A document written without a tree: a response or a stream event whose
 * shape is fixed goes straight into its text. Why: built as a jansson tree,
 * every key and value was an allocation, freed again right after one dump;
 * on the stateless /v1/chat/completions path that was about a tenth of a
 * request's instructions (docs/ARCHITECTURE.md, "Threads and loops": JSON text).
 *
 * chat_json_doc_new(flags) starts one (the flags as for chat_json_dumps; one
 * it does not write fails the document). Then values, each with its key
 * inside an object and NULL as the key inside an array or for the top value.
 * A key is a name that needs no escape under any flags (ASCII letters,
 * digits, '_', '-'): it is copied as it is. The writer puts the commas, so
 * the text is what chat_json_dumps writes for the same tree with the same
 * flags. chat_json_obj / chat_json_arr open a container, chat_json_close
 * closes the innermost one (at most 64 open). chat_json_str(n) writes a
 * string (NULL: null); chat_json_str_or_empty a string, or "" when it is not
 * UTF-8 (provider text); chat_json_val a jansson value (borrowed); the others
 * what their names say. chat_json_write_raw may add bytes outside the top
 * value (an SSE "data: " before it, the blank line after it).
 *
 * Errors are kept, not returned: a string that is not UTF-8 (chat_json_str,
 * a value in chat_json_val), a member of an object without a key, a NULL
 * value for chat_json_val (as json_pack's "o" refuses it), nesting past 64,
 * a close too many or a container left open makes chat_json_doc_end return
 * NULL. chat_json_doc_end frees the writer and returns the text (malloc'd,
 * NUL-terminated; *len its length), or NULL. Thread: any; one document, one
 * thread.
 */
chat_json_writer *chat_json_doc_new(size_t flags);
char *chat_json_doc_end(chat_json_writer *w, size_t *len);
void chat_json_obj(chat_json_writer *w, const char *key);
void chat_json_arr(chat_json_writer *w, const char *key);
void chat_json_close(chat_json_writer *w);
void chat_json_str(chat_json_writer *w, const char *key, const char *s);
void chat_json_strn(chat_json_writer *w, const char *key, const char *s, size_t n);
void chat_json_str_or_empty(chat_json_writer *w, const char *key, const char *s, size_t n);
void chat_json_int(chat_json_writer *w, const char *key, json_int_t v);
void chat_json_bool(chat_json_writer *w, const char *key, bool v);
void chat_json_null(chat_json_writer *w, const char *key);
void chat_json_val(chat_json_writer *w, const char *key, const json_t *v);

#endif
