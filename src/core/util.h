/*
 * util.h: small shared helpers: clocks, random ids, time formatting, UTF-8
 * checks and escaping of client bytes, and the session-id rule. Thread-safe unless noted.
 */
#ifndef CHATD_CORE_UTIL_H
#define CHATD_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Writes a printf-formatted message into err (when err is non-NULL and errlen
 * > 0), cut at its first newline: the "one-line reason" of every
 * `char *err, size_t errlen` parameter in chatd. */
void chat_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Wall clock, ms since the Unix epoch. */
int64_t chat_now_ms(void);

/* Monotonic clock in ms (for durations and deadlines). */
int64_t chat_mono_ms(void);

/* Monotonic clock in microseconds (for short measurements). */
int64_t chat_mono_us(void);

/* Fills out with prefix + 2*nbytes random hex digits + NUL (from getrandom).
 * outlen must be >= strlen(prefix) + 2*nbytes + 1. */
void chat_random_id(char *out, size_t outlen, const char *prefix, size_t nbytes);

/* Formats ms-since-epoch as UTC RFC 3339 with milliseconds: 2026-11-26T04:51:51.123Z.
 * out must hold 25 bytes. */
void chat_format_rfc3339(int64_t ms, char out[32]);

/* Formats as the template's local ISO time without zone: 2026-11-26T04:51:51.123000
 * (Python's datetime.now().isoformat()). out must hold 27 bytes. */
void chat_format_iso_local(int64_t ms, char out[32]);

/* Cuts an incomplete UTF-8 sequence off the end of s (what a truncating
 * snprintf can leave), so that the text stays valid for JSON. */
void chat_utf8_trim(char *s);

/* Replaces every ASCII control byte of s (below 0x20, and 0x7f) with a space,
 * in place, so that a message quoting client bytes (a JSON key holding a
 * newline) stays one line in a response and a log. */
void chat_one_line(char *s);

/* The value of the hex digit c, or -1: chat_hex_value takes either case;
 * chat_hex_lower only lowercase (stored key hashes are lowercase hex, and an
 * uppercase one is a different, invalid string). */
int chat_hex_value(int c);
int chat_hex_lower(int c);

/* The value of the standard base64 (RFC 4648, section 4) digit c, or -1 ('='
 * included). */
int chat_b64_value(int c);

/* True if s (n bytes) is canonical standard base64: not empty, a length that is
 * a multiple of 4, the alphabet A-Z a-z 0-9 + /, at most two '=' and only at the
 * end, and zero unused bits before them (one encoding per byte string). */
bool chat_b64_canonical(const char *s, size_t n);

/* Length of the well-formed UTF-8 sequence at s (n >= 1 bytes available):
 * 1..4, or 0 when the bytes there are not UTF-8 (a stray continuation byte,
 * an overlong form, a surrogate, a code point above U+10FFFF, a sequence cut
 * short). The rules are jansson's: what this accepts, json_string accepts. */
size_t chat_utf8_seq(const unsigned char *s, size_t n);

/*
 * Client bytes (a request path, a query or header value) made into text that a
 * JSON body or log line can carry: a new heap string where every byte that does
 * not start a well-formed UTF-8 sequence, and NUL, is written as the four
 * characters \xHH (lowercase hex); valid UTF-8 (control characters too, which
 * JSON escapes itself) is copied as is. At most 4 * len + 1 bytes.
 */
char *chat_utf8_escape(const char *s, size_t len);

/* A JSON string of the NUL-terminated s, which may hold any bytes: s itself
 * when it is valid UTF-8, else its chat_utf8_escape form; JSON null for NULL s.
 * Never NULL (json_string would return NULL for invalid UTF-8, and a NULL
 * value silently drops the field or fails the whole document). */
json_t *chat_json_text(const char *s);

/* The longest session id and request id (X-Request-Id) chatd accepts, in
 * bytes; API keys ids have the store's bound (STORE_ID_MAX). */
#define CHAT_ID_MAX 128

/* True if s is a valid session id / request id: 1..CHAT_ID_MAX chars of [A-Za-z0-9._:-]. */
bool chat_valid_id(const char *s);

#endif
