/*
 * netaddr.h: IP addresses and lists of networks as values, for settings such as
 * TRUSTED_PROXIES and for the per-client limits (guard/client_addr.h).
 *
 * Addresses are parsed with inet_pton, never compared as text. Every address is
 * 16 bytes, an IPv4 address in its IPv4-mapped IPv6 form (::ffff:a.b.c.d), so
 * "127.0.0.1" and "::ffff:127.0.0.1" are the same address and one comparison
 * serves both families. A network is an address and a prefix length in those
 * 128 bits (an IPv4 /n is 96 + n).
 *
 * Pure functions: no I/O, no clock, no global state; any thread.
 */
#ifndef CHATD_CORE_NETADDR_H
#define CHATD_CORE_NETADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "core/rc.h"

/* Most entries a network list may hold. */
#define CHAT_NETLIST_MAX 256
/* Longest text of one list entry or one address with decorations ("[" IPv6 "]:" port is 47 bytes). */
#define CHAT_ADDR_MAX_TEXT 64
/* Room for an address's canonical text with its NUL (INET6_ADDRSTRLEN). */
#define CHAT_ADDR_TEXT_BUF 46

typedef struct chat_addr {
    unsigned char b[16];
} chat_addr;

/* Parses a bare address (NUL-terminated): IPv4 or IPv6 as inet_pton takes them. */
bool chat_addr_parse(const char *s, chat_addr *out);

/* True for an IPv4 address (held in mapped form). */
bool chat_addr_is_v4(const chat_addr *a);

/* Zeroes the bits of a below its first `bits` bits (0..128). */
void chat_addr_mask(chat_addr *a, int bits);

/* Canonical text of a: dotted IPv4 for IPv4, inet_ntop's IPv6 form otherwise;
 * out holds at least CHAT_ADDR_TEXT_BUF bytes ("" if it cannot be written). */
void chat_addr_text(const chat_addr *a, char *out, size_t outlen);

/* A parsed list of addresses and networks (opaque, read-only once built). */
typedef struct chat_netlist chat_netlist;

/*
 * Parses a comma-separated list of addresses and networks: "127.0.0.1",
 * "::1", "10.0.0.0/8", "fd00::/8", "::ffff:10.0.0.0/104" (an IPv4 network in
 * mapped form). Whitespace around entries and empty entries are ignored, so ""
 * (or NULL) is the empty list. Refused, with one line in err (errlen bytes, may
 * be 0) that names the entry: anything inet_pton does not accept (host names
 * are not resolved), a prefix length out of range (0..32 for IPv4, 0..128 for
 * IPv6) or not plain digits, host bits set below the prefix ("10.0.0.1/8":
 * write 10.0.0.0/8), more than CHAT_NETLIST_MAX entries. On success *out
 * receives a new list (free with chat_netlist_free) and CHAT_OK is returned; on
 * failure *out is NULL and CHAT_EINVAL is returned.
 */
chat_rc chat_netlist_parse(const char *text, chat_netlist **out, char *err, size_t errlen) CHAT_MUST_CHECK;

/* Frees a list. Accepts NULL. */
void chat_netlist_free(chat_netlist *l);

/* Number of entries (0 for NULL). */
size_t chat_netlist_count(const chat_netlist *l);

/* True when a lies in one of the list's entries (false for NULL l). */
bool chat_netlist_contains(const chat_netlist *l, const chat_addr *a);

#endif
