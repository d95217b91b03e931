/*
 * netaddr.c: IP addresses and network lists (contract in netaddr.h).
 */
#include "core/netaddr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

typedef struct chat_net {
    chat_addr a; /* the network's address, host bits zero */
    int bits;    /* prefix length in the 128-bit space (IPv4 /n is 96 + n) */
} chat_net;

struct chat_netlist {
    size_t n;
    chat_net nets[]; /* n entries */
};

static const unsigned char v4_mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

bool chat_addr_is_v4(const chat_addr *a)
{
    return memcmp(a->b, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0;
}

bool chat_addr_parse(const char *s, chat_addr *out)
{
    struct in_addr v4;
    if (inet_pton(AF_INET, s, &v4) == 1) {
        memcpy(out->b, v4_mapped_prefix, sizeof v4_mapped_prefix);
        memcpy(out->b + 12, &v4, 4);
        return true;
    }
    return inet_pton(AF_INET6, s, out->b) == 1;
}

void chat_addr_mask(chat_addr *a, int bits)
{
    for (int i = 0; i < 16; i++) {
        int keep = bits - i * 8;
        if (keep >= 8)
            continue;
        a->b[i] &= keep <= 0 ? 0 : (unsigned char)(0xff << (8 - keep));
    }
}

void chat_addr_text(const chat_addr *a, char *out, size_t outlen)
{
    const char *ok = chat_addr_is_v4(a) ? inet_ntop(AF_INET, a->b + 12, out, (socklen_t)outlen)
                                        : inet_ntop(AF_INET6, a->b, out, (socklen_t)outlen);
    if (!ok && outlen)
        out[0] = '\0';
}

static bool in_net(const chat_addr *a, const chat_net *n)
{
    chat_addr m = *a;
    chat_addr_mask(&m, n->bits);
    return memcmp(m.b, n->a.b, 16) == 0;
}

bool chat_netlist_contains(const chat_netlist *l, const chat_addr *a)
{
    for (size_t i = 0; l && i < l->n; i++)
        if (in_net(a, &l->nets[i]))
            return true;
    return false;
}

/* ---- lists ------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *entry, size_t len, const char *why)
{
    if (!err || !errlen)
        return;
    /* Echo the entry printable only, and short: it came from configuration. */
    char echo[CHAT_ADDR_MAX_TEXT + 4];
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
static bool parse_net(const char *entry, size_t len, chat_net *n, char *err, size_t errlen)
{
    char buf[CHAT_ADDR_MAX_TEXT + 1];
    if (len >= sizeof buf) {
        set_err(err, errlen, entry, len, "is too long for an address or network");
        return false;
    }
    memcpy(buf, entry, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    if (!chat_addr_parse(buf, &n->a)) {
        set_err(err, errlen, entry, len,
                "is not an IP address or network (expected e.g. 127.0.0.1, ::1, 10.0.0.0/8, fd00::/8; host "
                "names are not resolved)");
        return false;
    }
    bool v4 = chat_addr_is_v4(&n->a) && strchr(buf, ':') == NULL; /* "::ffff:10.0.0.0/104" counts in IPv6 bits */
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
    chat_addr m = n->a;
    chat_addr_mask(&m, n->bits);
    if (memcmp(m.b, n->a.b, 16) != 0) {
        char net[INET6_ADDRSTRLEN], why[INET6_ADDRSTRLEN + 64];
        chat_addr_text(&m, net, sizeof net);
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

chat_rc chat_netlist_parse(const char *text, chat_netlist **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    chat_netlist *t = chat_xcalloc(1, sizeof *t + CHAT_NETLIST_MAX * sizeof(chat_net));
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
        if (t->n == CHAT_NETLIST_MAX) {
            if (err && errlen)
                snprintf(err, errlen, "more than %d entries", CHAT_NETLIST_MAX);
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

void chat_netlist_free(chat_netlist *l)
{
    free(l);
}

size_t chat_netlist_count(const chat_netlist *l)
{
    return l ? l->n : 0;
}
