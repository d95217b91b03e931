/*
 * client_addr.c: the client address behind trusted proxies (see client_addr.h
 * for the rules). Addresses are 16 bytes (IPv4 as ::ffff:a.b.c.d), networks an
 * address and a prefix length in those 128 bits, so one comparison serves both
 * families. X-Forwarded-For lines are walked in place from their end, one
 * entry at a time copied into a small stack buffer: no allocation.
 */
#include "guard/client_addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

typedef struct addr16 {
    unsigned char b[16];
} addr16;

typedef struct net16 {
    addr16 a;       /* the network's address, host bits zero */
    int bits;       /* prefix length in the 128-bit space (IPv4 /n is 96 + n) */
} net16;

struct client_addr_trust {
    size_t n;
    net16 nets[];   /* n entries */
};

static const unsigned char v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool is_v4(const addr16 *a)
{
    return memcmp(a->b, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0;
}

/* Parses a bare address (NUL-terminated) with inet_pton: IPv4 or IPv6. */
static bool parse_bare(const char *s, addr16 *out)
{
    struct in_addr v4;
    if (inet_pton(AF_INET, s, &v4) == 1) {
        memcpy(out->b, v4_mapped_prefix, sizeof v4_mapped_prefix);
        memcpy(out->b + 12, &v4, 4);
        return true;
    }
    return inet_pton(AF_INET6, s, out->b) == 1;
}

/* Zeroes the bits of a below its first `bits` bits. */
static void mask(addr16 *a, int bits)
{
    for (int i = 0; i < 16; i++) {
        int keep = bits - i * 8;
        if (keep >= 8)
            continue;
        a->b[i] &= keep <= 0 ? 0 : (unsigned char)(0xff << (8 - keep));
    }
}

static bool in_net(const addr16 *a, const net16 *n)
{
    addr16 m = *a;
    mask(&m, n->bits);
    return memcmp(m.b, n->a.b, 16) == 0;
}

static bool trusted(const client_addr_trust *t, const addr16 *a)
{
    for (size_t i = 0; t && i < t->n; i++)
        if (in_net(a, &t->nets[i]))
            return true;
    return false;
}

/* Canonical text of a: dotted IPv4 for IPv4 (mapped ones included), else
 * inet_ntop's IPv6 form. out holds at least INET6_ADDRSTRLEN bytes. */
static void addr_text(const addr16 *a, char *out, size_t outlen)
{
    const char *ok = is_v4(a) ? inet_ntop(AF_INET, a->b + 12, out, (socklen_t)outlen)
                              : inet_ntop(AF_INET6, a->b, out, (socklen_t)outlen);
    if (!ok && outlen)
        out[0] = '\0';
}

/* ---- TRUSTED_PROXIES ---------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *entry, size_t len, const char *why)
{
    if (!err || !errlen)
        return;
    /* Echo the entry printable only, and short: it came from configuration. */
    char echo[CLIENT_ADDR_MAX_ENTRY + 4];
    size_t j = 0;
    for (size_t i = 0; i < len && j + 4 < sizeof echo; i++) {
        unsigned char c = (unsigned char)entry[i];
        echo[j++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
    }
    if (len > j)
        echo[j++] = '.', echo[j++] = '.', echo[j++] = '.';
    echo[j] = '\0';
    snprintf(err, errlen, "entry \"%s\" %s", echo, why);
}

/* Parses one trimmed entry (len bytes) of TRUSTED_PROXIES into *n. */
static bool parse_net(const char *entry, size_t len, net16 *n, char *err, size_t errlen)
{
    char buf[CLIENT_ADDR_MAX_ENTRY + 1];
    if (len >= sizeof buf) {
        set_err(err, errlen, entry, len, "is too long for an address or network");
        return false;
    }
    memcpy(buf, entry, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    if (!parse_bare(buf, &n->a)) {
        set_err(err, errlen, entry, len,
                "is not an IP address or network (expected e.g. 127.0.0.1, ::1, 10.0.0.0/8, fd00::/8; host "
                "names are not resolved)");
        return false;
    }
    bool v4 = is_v4(&n->a) && strchr(buf, ':') == NULL; /* "::ffff:10.0.0.0/104" counts in IPv6 bits */
    int max = v4 ? 32 : 128;
    int bits = max;
    if (slash) {
        const char *p = slash + 1;
        size_t nd = strspn(p, "0123456789");
        if (nd == 0 || nd > 3 || p[nd] != '\0' || (nd > 1 && p[0] == '0') || atoi(p) > max) {
            char why[96];
            snprintf(why, sizeof why, "has a bad prefix length: expected /0../%d", max);
            set_err(err, errlen, entry, len, why);
            return false;
        }
        bits = atoi(p);
    }
    n->bits = v4 ? 96 + bits : bits;
    addr16 m = n->a;
    mask(&m, n->bits);
    if (memcmp(m.b, n->a.b, 16) != 0) {
        char net[INET6_ADDRSTRLEN], why[INET6_ADDRSTRLEN + 64];
        addr_text(&m, net, sizeof net);
        snprintf(why, sizeof why, "has host bits set below the prefix: write %s/%d", net, bits);
        set_err(err, errlen, entry, len, why);
        return false;
    }
    return true;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

chat_rc client_addr_trust_parse(const char *text, client_addr_trust **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    client_addr_trust *t = chat_xcalloc(1, sizeof *t + CLIENT_ADDR_MAX_TRUSTED * sizeof(net16));
    const char *p = text ? text : "";
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *s = p, *e = p + len;
        p = *e ? e + 1 : e;
        while (s < e && is_ows(*s))
            s++;
        while (e > s && is_ows(e[-1]))
            e--;
        if (s == e)
            continue;
        if (t->n == CLIENT_ADDR_MAX_TRUSTED) {
            if (err && errlen)
                snprintf(err, errlen, "more than %d entries", CLIENT_ADDR_MAX_TRUSTED);
            free(t);
            return CHAT_EINVAL;
        }
        if (!parse_net(s, (size_t)(e - s), &t->nets[t->n], err, errlen)) {
            free(t);
            return CHAT_EINVAL;
        }
        t->n++;
    }
    *out = t;
    return CHAT_OK;
}

void client_addr_trust_free(client_addr_trust *t)
{
    free(t);
}

size_t client_addr_trust_count(const client_addr_trust *t)
{
    return t ? t->n : 0;
}

/* The peer's text without an IPv6 zone ("fe80::1%eth0"), parsed. */
static bool parse_peer(const char *peer, addr16 *out)
{
    char buf[CLIENT_ADDR_MAX_ENTRY + 1];
    if (!peer)
        return false;
    size_t len = strcspn(peer, "%");
    if (len >= sizeof buf)
        return false;
    memcpy(buf, peer, len);
    buf[len] = '\0';
    return parse_bare(buf, out);
}

bool client_addr_trusted(const client_addr_trust *t, const char *addr)
{
    addr16 a;
    return parse_peer(addr, &a) && trusted(t, &a);
}

/* ---- X-Forwarded-For ---------------------------------------------------------- */

/*
 * Parses one trimmed, non-empty X-Forwarded-For entry (len bytes, may contain
 * any byte): a bare address, "[IPv6]" with an optional ":port", or
 * "IPv4:port".
 */
static bool parse_entry(const char *s, size_t len, addr16 *out)
{
    char buf[CLIENT_ADDR_MAX_ENTRY + 1];
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
            addr16 probe;
            if (!parse_bare(addr, &probe) || !is_v4(&probe))
                return false;
        }
    }
    if (port) {
        size_t nd = strspn(port, "0123456789");
        if (nd == 0 || nd > 5 || port[nd] != '\0' || atoi(port) > 65535)
            return false;
    }
    return parse_bare(addr, out);
}

/* Writes a client's bucket text: IPv4 as is, IPv6 masked to prefix bits. */
static void bucket_text(const addr16 *a, int prefix, char out[CLIENT_ADDR_BUF])
{
    char text[INET6_ADDRSTRLEN];
    if (is_v4(a) || prefix >= 128) {
        addr_text(a, text, sizeof text);
        snprintf(out, CLIENT_ADDR_BUF, "%s", text);
        return;
    }
    addr16 m = *a;
    mask(&m, prefix);
    addr_text(&m, text, sizeof text);
    snprintf(out, CLIENT_ADDR_BUF, "%s/%d", text, prefix);
}

client_addr_source client_addr_resolve(const client_addr_trust *t, const char *peer, const char *const *xff,
                                       size_t nxff, int ipv6_prefix, char out[CLIENT_ADDR_BUF])
{
    int prefix = ipv6_prefix < 1 ? 1 : ipv6_prefix > 128 ? 128 : ipv6_prefix;
    addr16 hop;
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
                addr16 a;
                if (!parse_entry(s, (size_t)(e - s), &a)) {
                    char text[INET6_ADDRSTRLEN];
                    addr_text(&hop, text, sizeof text);
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
