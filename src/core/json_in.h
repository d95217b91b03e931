/*
 * json_in.h: jansson values from JSON text, what json_loadb returns, several
 * times faster.
 *
 * Why: jansson's reader takes every byte through a chain of function calls
 * (read, check the UTF-8, save into a growing buffer) and copies each string
 * once more when it makes the value: about 190 instructions a byte, 4.6 us
 * for a 340-byte provider reply on the bench machine. A turn parses the
 * client's request and the provider's reply, and a stream one JSON object
 * per event (bench/README.md).
 *
 * Contract: chat_json_loadb(buf, len, flags, err) returns a value equal to
 * what json_loadb(buf, len, flags, err) returns (json_equal, and the same
 * types: an integer stays an integer, a real a real; object keys in the same
 * order), or NULL exactly when json_loadb does, with jansson's error in *err.
 * It reads the common text itself in one pass (a string without escapes is
 * copied once, straight from buf into its value) and hands everything else to
 * json_loadb: text that is not valid JSON (so every error and its message are
 * jansson's own), integers of more than 18 digits, reals longer than 63
 * characters or out of range, "\u0000", nesting deeper than
 * CHAT_JSON_IN_DEPTH, and any flag but JSON_DECODE_ANY and JSON_ALLOW_NUL.
 * On success *err is what json_loadb leaves there on success.
 * tests/fuzz/fuzz_json_in.c compares the two on arbitrary input.
 *
 * Memory: the value is the caller's (json_decref). Allocation failure inside
 * jansson makes the read hand over to json_loadb, which reports it.
 * Thread: any; buf is only read (it need not end with a NUL).
 */
#ifndef CHATD_CORE_JSON_IN_H
#define CHATD_CORE_JSON_IN_H

#include <stddef.h>

#include <jansson.h>

/* Nesting past this is handed to json_loadb (whose limit is 2048). */
#define CHAT_JSON_IN_DEPTH 64

json_t *chat_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *err);

/* chat_json_loadb for a NUL-terminated string (json_loads). */
json_t *chat_json_loads(const char *s, size_t flags, json_error_t *err);

/*
 * The fast reader alone: the value, or NULL where chat_json_loadb would hand
 * the text to json_loadb. For the tests, which check that the common text
 * takes the fast path.
 */
json_t *chat_json_fast_loadb(const char *buf, size_t len, size_t flags);

#endif
