/*
 * client_addr.c: the client address behind trusted proxies (see client_addr.h
 * for the rules). Addresses and the TRUSTED_PROXIES list are core/netaddr.h
 * values. X-Forwarded-For lines are walked in place from their end, one entry
 * at a time copied into a small stack buffer: no allocation.
 */
#include "guard/client_addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/netaddr.h"

/* Is the address one of the trusted proxies? */
static bool trusted(const client_addr_trust *t, const chat_addr *a)
{
    return chat_netlist_contains(t, a);
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* ---- TRUSTED_PROXIES: a network list (core/netaddr.h) ------------------------- */

chat_rc client_addr_trust_parse(const char *text, client_addr_trust **out, char *err, size_t errlen)
{
    return chat_netlist_parse(text, out, err, errlen);
}

void client_addr_trust_free(client_addr_trust *t)
{
    chat_netlist_free(t);
}

size_t client_addr_trust_count(const client_addr_trust *t)
{
    return chat_netlist_count(t);
}

/* The peer's text without an IPv6 zone ("fe80::1%eth0"), parsed. */
static bool parse_peer(const char *peer, chat_addr *out)
{
    char buf[CHAT_ADDR_MAX_TEXT + 1];
    if (!peer)
        return false;
    size_t len = strcspn(peer, "%");
    if (len >= sizeof buf)
        return false;
    memcpy(buf, peer, len);
    buf[len] = '\0';
    return chat_addr_parse(buf, out);
}

bool client_addr_trusted(const client_addr_trust *t, const char *addr)
{
    chat_addr a;
    return parse_peer(addr, &a) && trusted(t, &a);
}

/* ---- X-Forwarded-For ---------------------------------------------------------- */

/*
 * Parses one trimmed, non-empty X-Forwarded-For entry (len bytes, may contain
 * any byte): a bare address, "[IPv6]" with an optional ":port", or
 * "IPv4:port".
 */
static bool parse_entry(const char *s, size_t len, chat_addr *out)
{
    char buf[CHAT_ADDR_MAX_TEXT + 1];
    if (len >= sizeof buf || memchr(s, '\0', len))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *addr = buf;
    char *port = NULL;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close)
            return false;
        *close = '\0';
        addr = buf + 1;
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != '\0')
            return false;
        if (strchr(addr, '.') && !strchr(addr, ':'))
            return false; /* "[1.2.3.4]" is not a form anyone sends */
    } else {
        char *colon = strchr(buf, ':');
        if (colon && !strchr(colon + 1, ':') && strchr(buf, '.')) {
            /* One colon and a dot: IPv4 with a port. */
            *colon = '\0';
            port = colon + 1;
            chat_addr probe;
            if (!chat_addr_parse(addr, &probe) || !chat_addr_is_v4(&probe))
                return false;
        }
    }
    if (port) {
        size_t nd = strspn(port, "0123456789");
        if (nd == 0 || nd > 5 || port[nd] != '\0' || atoi(port) > 65535)
            return false;
    }
    return chat_addr_parse(addr, out);
}

/* Writes a client's bucket text: IPv4 as is, IPv6 masked to prefix bits. */
static void bucket_text(const chat_addr *a, int prefix, char out[CLIENT_ADDR_BUF])
{
    char text[INET6_ADDRSTRLEN];
    if (chat_addr_is_v4(a) || prefix >= 128) {
        chat_addr_text(a, text, sizeof text);
        snprintf(out, CLIENT_ADDR_BUF, "%s", text);
        return;
    }
    chat_addr m = *a;
    chat_addr_mask(&m, prefix);
    chat_addr_text(&m, text, sizeof text);
    snprintf(out, CLIENT_ADDR_BUF, "%s/%d", text, prefix);
}

client_addr_source client_addr_resolve(const client_addr_trust *t, const char *peer, const char *const *xff,
                                       size_t nxff, int ipv6_prefix, char out[CLIENT_ADDR_BUF])
{
    int prefix = ipv6_prefix < 1 ? 1 : ipv6_prefix > 128 ? 128 : ipv6_prefix;
    chat_addr hop;
    if (!parse_peer(peer, &hop)) {
        snprintf(out, CLIENT_ADDR_BUF, "unparsable-peer");
        return CLIENT_ADDR_PEER;
    }
    if (!trusted(t, &hop)) {
        bucket_text(&hop, prefix, out);
        return CLIENT_ADDR_PEER;
    }
    bool forwarded = false;
    /* Right to left over the lines, and over each line's entries. */
    for (size_t i = nxff; xff && i-- > 0;) {
        const char *line = xff[i];
        if (!line)
            continue;
        const char *end = line + strlen(line);
        for (;;) {
            const char *comma = end;
            while (comma > line && comma[-1] != ',')
                comma--;
            const char *s = comma, *e = end;
            while (s < e && is_ows(*s))
                s++;
            while (e > s && is_ows(e[-1]))
                e--;
            if (s < e) {
                chat_addr a;
                if (!parse_entry(s, (size_t)(e - s), &a)) {
                    char text[INET6_ADDRSTRLEN];
                    chat_addr_text(&hop, text, sizeof text);
                    snprintf(out, CLIENT_ADDR_BUF, "unparsable@%s", text);
                    return CLIENT_ADDR_UNPARSABLE;
                }
                if (!trusted(t, &a)) {
                    bucket_text(&a, prefix, out);
                    return CLIENT_ADDR_FORWARDED;
                }
                hop = a;
                forwarded = true;
            }
            if (comma == line)
                break;
            end = comma - 1; /* before the ',' */
        }
    }
    /* Every entry (if any) was a trusted proxy: the furthest one is the client. */
    bucket_text(&hop, prefix, out);
    return forwarded ? CLIENT_ADDR_FORWARDED : CLIENT_ADDR_PEER;
}
