/*
 * client_addr.h: which client a request comes from, for the limits that apply
 * per client address (RATE_LIMIT and TOKEN_LIMIT without API keys,
 * AUTH_FAILURE_LIMIT): the peer address, or, behind trusted proxies, the
 * address they forwarded in X-Forwarded-For. Pure functions: no I/O, no clock,
 * no global state, so that they can be unit tested and fuzzed on raw bytes.
 *
 * Addresses are parsed with inet_pton, never compared as text: "::1" and
 * "0:0:0:0:0:0:0:1" are the same address, and an IPv4-mapped IPv6 address
 * ("::ffff:127.0.0.1", what a dual-stack listener reports for an IPv4 peer) is
 * the IPv4 address it maps. Internally every address is 16 bytes, IPv4 ones in
 * their mapped form.
 *
 * The walk (client_addr_resolve). A peer that is not a trusted proxy is the
 * client, whatever it sent. When the peer is trusted, its X-Forwarded-For lines
 * are read as one list, in order (what combining the fields with ", " gives,
 * RFC 9110 section 5.3), and walked from the right: each trusted proxy's entry
 * is skipped, and the first entry that is not a trusted proxy is the client.
 * Entries further left were written by that client and can be forged: they are
 * never read. Empty entries (",,", a trailing comma) are skipped. When every
 * entry is a trusted proxy, the leftmost one is the client.
 *
 * Malformed entries. An entry that is not an address (junk, a host name,
 * "unknown", an IPv6 zone) cannot be the client, and the walk cannot go past
 * it either (whatever is left of it is client-written). So that junk can never
 * mint new buckets, such a request is bucketed as "unparsable@" followed by the
 * nearest trusted hop (the address right of the junk: the proxy that received
 * it): all junk arriving through one proxy shares one bucket, and legitimate
 * clients never share it, because a trusted proxy always appends a valid
 * address.
 *
 * Entries accepted: "1.2.3.4", "2001:db8::1", "::ffff:1.2.3.4", "[2001:db8::1]",
 * and, as some proxies send them, with a port: "1.2.3.4:5678",
 * "[2001:db8::1]:443". Optional whitespace (space, tab) around each entry is
 * ignored. An entry longer than CLIENT_ADDR_MAX_ENTRY bytes is malformed.
 *
 * Buckets. The client's bucket text is its canonical address (inet_ntop), so
 * equivalent spellings share a bucket. An IPv6 client is bucketed by its
 * network of ipv6_prefix bits ("2001:db8:1:2::/64" for the default 64), since
 * one host usually holds a whole /64 and could otherwise mint a bucket per
 * address; with 128 the full address is the bucket.
 */
#ifndef CHATD_GUARD_CLIENT_ADDR_H
#define CHATD_GUARD_CLIENT_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "core/netaddr.h"
#include "core/rc.h"

/* Most entries TRUSTED_PROXIES may hold. */
#define CLIENT_ADDR_MAX_TRUSTED CHAT_NETLIST_MAX
/* Longest X-Forwarded-For entry parsed ("[" IPv6 "]:" port is 47 bytes). */
#define CLIENT_ADDR_MAX_ENTRY CHAT_ADDR_MAX_TEXT
/* Size of a bucket text with its NUL: "unparsable@" and an IPv6 address (50
 * bytes) is the longest. */
#define CLIENT_ADDR_BUF 64

/* The parsed TRUSTED_PROXIES list: a network list of core/netaddr.h (opaque,
 * read-only once built). */
typedef chat_netlist client_addr_trust;

/*
 * Parses TRUSTED_PROXIES: chat_netlist_parse (core/netaddr.h), whose rules and
 * errors it shares; "" or NULL is the empty list (no proxy trusted). Free the
 * list with client_addr_trust_free. Any thread.
 */
chat_rc client_addr_trust_parse(const char *text, client_addr_trust **out, char *err, size_t errlen) CHAT_MUST_CHECK;

/* Frees a list. Accepts NULL. */
void client_addr_trust_free(client_addr_trust *t);

/* Number of entries in the list (0 for NULL). */
size_t client_addr_trust_count(const client_addr_trust *t);

/* True when addr (text, any spelling inet_pton accepts, IPv4-mapped included)
 * lies in one of the list's entries. False for NULL t and unparsable text. */
bool client_addr_trusted(const client_addr_trust *t, const char *addr);

/* Where the client's bucket came from. */
typedef enum {
    CLIENT_ADDR_PEER = 0,   /* the peer itself (not a trusted proxy, or no forwarded entry) */
    CLIENT_ADDR_FORWARDED,  /* an X-Forwarded-For entry */
    CLIENT_ADDR_UNPARSABLE, /* a malformed entry ended the walk: "unparsable@<hop>" */
} client_addr_source;

/*
 * Finds the client of a request and writes its bucket text into out (always
 * NUL-terminated, at most CLIENT_ADDR_BUF bytes with the NUL, printable ASCII).
 *
 * t: the trusted proxies (NULL: none). peer: the connection's peer address as
 * text (an IPv6 zone suffix "%eth0" is ignored; NULL or unparsable text is
 * bucketed as "unparsable-peer" and trusted never). xff: the values of the
 * request's X-Forwarded-For header lines in the order received, each
 * NUL-terminated (any bytes); nxff of them (xff may be NULL when nxff is 0).
 * ipv6_prefix: bits of an IPv6 client's address that make its bucket, clamped
 * to 1..128. Runs in time linear in the header bytes, without allocating.
 * Returns where the bucket came from. Any thread.
 */
client_addr_source client_addr_resolve(const client_addr_trust *t, const char *peer, const char *const *xff,
                                       size_t nxff, int ipv6_prefix, char out[CLIENT_ADDR_BUF]);

#endif
