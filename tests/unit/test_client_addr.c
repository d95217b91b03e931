/*
 * test_client_addr.c: unit tests for the client address behind trusted
 * proxies (src/guard/client_addr.h): TRUSTED_PROXIES parsing (addresses, CIDR
 * networks, errors), the X-Forwarded-For walk over several header lines,
 * whitespace, trusted chains, IPv4-mapped addresses, IPv6 spellings, /64
 * bucketing and malformed entries.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guard/client_addr.h"

static client_addr_trust *trust(const char *text)
{
    client_addr_trust *t = NULL;
    char err[256];
    if (client_addr_trust_parse(text, &t, err, sizeof err) != CHAT_OK)
        fail_msg("TRUSTED_PROXIES %s: %s", text ? text : "(null)", err);
    return t;
}

/* Resolves with the given lines (NULL-terminated varargs) and the default /64. */
static client_addr_source resolve(const client_addr_trust *t, const char *peer, char out[CLIENT_ADDR_BUF], ...)
{
    const char *lines[16];
    size_t n = 0;
    va_list ap;
    va_start(ap, out);
    for (const char *l; (l = va_arg(ap, const char *)) != NULL && n < 16;)
        lines[n++] = l;
    va_end(ap);
    memset(out, 'x', CLIENT_ADDR_BUF);
    client_addr_source src = client_addr_resolve(t, peer, lines, n, 64, out);
    assert_true(memchr(out, '\0', CLIENT_ADDR_BUF) != NULL);
    return src;
}

static void test_trust_parse(void **state)
{
    (void)state;
    client_addr_trust *t = trust("");
    assert_int_equal(client_addr_trust_count(t), 0);
    assert_false(client_addr_trusted(t, "127.0.0.1"));
    client_addr_trust_free(t);
    t = trust(" 127.0.0.1 ,, ::1,\t10.0.0.0/8 , fd00::/8,192.168.1.0/24,::ffff:172.16.0.0/108,");
    assert_int_equal(client_addr_trust_count(t), 6);
    assert_true(client_addr_trusted(t, "127.0.0.1"));
    assert_true(client_addr_trusted(t, "::ffff:127.0.0.1")); /* mapped form of a trusted IPv4 */
    assert_true(client_addr_trusted(t, "0:0:0:0:0:0:0:1"));  /* another spelling of ::1 */
    assert_true(client_addr_trusted(t, "::1%lo"));           /* a zone is ignored */
    assert_true(client_addr_trusted(t, "10.255.1.2"));
    assert_true(client_addr_trusted(t, "::ffff:10.1.2.3"));
    assert_false(client_addr_trusted(t, "11.0.0.1"));
    assert_true(client_addr_trusted(t, "fd12:3456::1"));
    assert_true(client_addr_trusted(t, "FDFF::1"));
    assert_false(client_addr_trusted(t, "fe00::1"));
    assert_true(client_addr_trusted(t, "192.168.1.200"));
    assert_false(client_addr_trusted(t, "192.168.2.1"));
    assert_true(client_addr_trusted(t, "172.31.255.255")); /* ::ffff:172.16.0.0/108 is 172.16.0.0/12 */
    assert_false(client_addr_trusted(t, "172.32.0.0"));
    assert_false(client_addr_trusted(t, "127.0.0.2"));
    assert_false(client_addr_trusted(t, "junk"));
    assert_false(client_addr_trusted(t, NULL));
    client_addr_trust_free(t);
    t = trust("0.0.0.0/0");
    assert_true(client_addr_trusted(t, "8.8.8.8"));
    assert_false(client_addr_trusted(t, "2001:db8::1")); /* an IPv4 network holds no IPv6 */
    client_addr_trust_free(t);
    t = trust(NULL);
    assert_int_equal(client_addr_trust_count(t), 0);
    client_addr_trust_free(t);
    client_addr_trust_free(NULL);

    static const struct {
        const char *text, *needle;
    } bad[] = {
        { "localhost", "not an IP address" },
        { "127.0.0.1, proxy.internal", "\"proxy.internal\"" },
        { "10.0.0.1/8", "write 10.0.0.0/8" },
        { "fd00::1/8", "write fd00::/8" },
        { "10.0.0.0/33", "/0../32" },
        { "::1/129", "/0../128" },
        { "10.0.0.0/", "prefix length" },
        { "10.0.0.0/08", "prefix length" },
        { "10.0.0.0/-1", "prefix length" },
        { "10.0.0.0/8/8", "prefix length" },
        { "fe80::1%eth0", "not an IP address" },
        { "[::1]", "not an IP address" },
        { "1.2.3.4:80", "not an IP address" },
        { "01.2.3.4", "not an IP address" },
        { "\x01\xff", "not an IP address" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        client_addr_trust *x = (client_addr_trust *)1;
        assert_int_equal(client_addr_trust_parse(bad[i].text, &x, err, sizeof err), CHAT_EINVAL);
        assert_null(x);
        if (!strstr(err, bad[i].needle))
            fail_msg("%s: error \"%s\" lacks \"%s\"", bad[i].text, err, bad[i].needle);
        for (const char *p = err; *p; p++)
            assert_true(*p >= 0x20 && *p < 0x7f);
    }
    /* The bound on entries. */
    size_t cap = (CLIENT_ADDR_MAX_TRUSTED + 1) * 16;
    char *many = calloc(1, cap);
    size_t used = 0;
    for (int i = 0; i <= CLIENT_ADDR_MAX_TRUSTED; i++)
        used += (size_t)snprintf(many + used, cap - used, "10.0.%d.%d,", i / 256, i % 256);
    char err[128];
    assert_int_equal(client_addr_trust_parse(many, &t, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "more than"));
    many[used - 1] = '\0';
    *strrchr(many, ',') = '\0'; /* exactly the maximum */
    t = trust(many);
    assert_int_equal(client_addr_trust_count(t), CLIENT_ADDR_MAX_TRUSTED);
    client_addr_trust_free(t);
    free(many);
}

static void test_untrusted_peer_is_the_client(void **state)
{
    (void)state;
    char out[CLIENT_ADDR_BUF];
    client_addr_trust *none = trust("");
    assert_int_equal(resolve(none, "127.0.0.1", out, "1.1.1.1", NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "127.0.0.1");
    assert_int_equal(resolve(NULL, "::ffff:203.0.113.9", out, NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "203.0.113.9");
    client_addr_trust *t = trust("127.0.0.1");
    assert_int_equal(resolve(t, "198.51.100.4", out, "1.1.1.1", NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "198.51.100.4");
    /* No header, or only empty entries: the trusted peer itself. */
    assert_int_equal(resolve(t, "127.0.0.1", out, NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "127.0.0.1");
    assert_int_equal(resolve(t, "127.0.0.1", out, "", " , ,", NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "127.0.0.1");
    /* An unparsable peer is never trusted and shares one bucket. */
    assert_int_equal(resolve(t, "", out, "1.1.1.1", NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "unparsable-peer");
    assert_int_equal(resolve(t, NULL, out, "1.1.1.1", NULL), CLIENT_ADDR_PEER);
    assert_string_equal(out, "unparsable-peer");
    client_addr_trust_free(t);
    client_addr_trust_free(none);
}

static void test_multiple_lines(void **state)
{
    (void)state;
    char out[CLIENT_ADDR_BUF];
    client_addr_trust *t = trust("127.0.0.1");
    /* The reported bypass: the client's forged line first, the proxy's line last. */
    assert_int_equal(resolve(t, "127.0.0.1", out, "10.9.9.1", "203.0.113.7", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "203.0.113.7");
    assert_int_equal(resolve(t, "127.0.0.1", out, "10.9.9.2, 10.9.9.3", "203.0.113.7", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "203.0.113.7");
    /* Lines are one list: a trusted entry at the start of the last line goes on to the previous line. */
    assert_int_equal(resolve(t, "127.0.0.1", out, "6.6.6.6, 203.0.113.8", "127.0.0.1", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "203.0.113.8");
    assert_int_equal(resolve(t, "127.0.0.1", out, "203.0.113.8,", "  ", ",127.0.0.1,", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "203.0.113.8");
    client_addr_trust_free(t);
}

static void test_whitespace_and_chains(void **state)
{
    (void)state;
    char out[CLIENT_ADDR_BUF];
    client_addr_trust *t = trust("127.0.0.1, 10.0.0.0/8");
    assert_int_equal(resolve(t, "127.0.0.1", out, " \t198.51.100.1\t ", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.1");
    assert_int_equal(resolve(t, "127.0.0.1", out, "1.1.1.1,198.51.100.2 ,  10.1.1.1,10.2.2.2", NULL),
                     CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.2");
    /* Only trusted entries: the furthest is the client. */
    assert_int_equal(resolve(t, "127.0.0.1", out, "10.3.3.3, 10.1.1.1", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "10.3.3.3");
    /* A trusted peer in the network. */
    assert_int_equal(resolve(t, "10.9.8.7", out, "198.51.100.3", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.3");
    client_addr_trust_free(t);
}

static void test_ipv4_mapped(void **state)
{
    (void)state;
    char out[CLIENT_ADDR_BUF];
    client_addr_trust *t = trust("127.0.0.1, 10.0.0.1");
    /* The peer as a dual-stack listener reports it. */
    assert_int_equal(resolve(t, "::ffff:127.0.0.1", out, "198.51.100.5", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.5");
    /* Mapped entries in the header: trusted ones skipped, the client bucketed as IPv4. */
    assert_int_equal(resolve(t, "127.0.0.1", out, "::ffff:198.51.100.6, ::ffff:10.0.0.1", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.6");
    assert_int_equal(resolve(t, "127.0.0.1", out, "198.51.100.6", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.6");
    /* A trusted list written in mapped form matches plain IPv4 peers. */
    client_addr_trust *m = trust("::ffff:127.0.0.1");
    assert_int_equal(resolve(m, "127.0.0.1", out, "198.51.100.7", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.7");
    client_addr_trust_free(m);
    client_addr_trust_free(t);
}

static void test_ipv6_spellings_and_ports(void **state)
{
    (void)state;
    char out[CLIENT_ADDR_BUF];
    client_addr_trust *t = trust("::1, 2001:db8:ffff::/48");
    assert_int_equal(resolve(t, "0:0:0:0:0:0:0:1", out, "2001:db8:ffff::10, 2001:DB8:FFFF:0:0:0:0:11", NULL),
                     CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "2001:db8:ffff::/64"); /* both trusted: the furthest, bucketed */
    assert_int_equal(resolve(t, "::1", out, "2001:0db8:0001:0002:0000:0000:0000:0001", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "2001:db8:1:2::/64");
    assert_int_equal(resolve(t, "::1", out, "[2001:db8:1:2::5]:443", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "2001:db8:1:2::/64");
    assert_int_equal(resolve(t, "::1", out, "[2001:db8:1:3::5]", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "2001:db8:1:3::/64");
    assert_int_equal(resolve(t, "::1", out, "198.51.100.8:5678", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.8");
    assert_int_equal(resolve(t, "::1", out, "[::1]:80, [2001:db8:ffff::1]", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "::/64"); /* ::1 trusted, so the leftmost (::1) is the client, bucketed */
    client_addr_trust_free(t);
}

static void test_ipv6_prefix_buckets(void **state)
{
    (void)state;
    char a[CLIENT_ADDR_BUF], b[CLIENT_ADDR_BUF], c[CLIENT_ADDR_BUF];
    const char *l1[] = { "2001:db8:1:2::1" }, *l2[] = { "2001:db8:1:2:ffff:ffff:ffff:fffe" },
               *l3[] = { "2001:db8:1:3::1" };
    client_addr_trust *t = trust("127.0.0.1");
    client_addr_resolve(t, "127.0.0.1", l1, 1, 64, a);
    client_addr_resolve(t, "127.0.0.1", l2, 1, 64, b);
    client_addr_resolve(t, "127.0.0.1", l3, 1, 64, c);
    assert_string_equal(a, b);
    assert_string_equal(a, "2001:db8:1:2::/64");
    assert_string_not_equal(a, c);
    client_addr_resolve(t, "127.0.0.1", l1, 1, 128, a);
    client_addr_resolve(t, "127.0.0.1", l2, 1, 128, b);
    assert_string_equal(a, "2001:db8:1:2::1");
    assert_string_not_equal(a, b);
    client_addr_resolve(t, "127.0.0.1", l1, 1, 48, a);
    client_addr_resolve(t, "127.0.0.1", l3, 1, 48, c);
    assert_string_equal(a, "2001:db8:1::/48");
    assert_string_equal(a, c);
    client_addr_resolve(t, "127.0.0.1", l2, 1, 61, b);
    assert_string_equal(b, "2001:db8:1::/61");
    /* Out of range prefixes are clamped; IPv4 is never masked. */
    client_addr_resolve(t, "127.0.0.1", l1, 1, 1000, a);
    assert_string_equal(a, "2001:db8:1:2::1");
    client_addr_resolve(t, "127.0.0.1", l1, 1, -5, a);
    assert_string_equal(a, "::/1");
    client_addr_resolve(t, "2001:db8:9:9:1::1", NULL, 0, 64, a);
    assert_string_equal(a, "2001:db8:9:9::/64");
    client_addr_resolve(t, "198.51.100.9", NULL, 0, 1, a);
    assert_string_equal(a, "198.51.100.9");
    client_addr_trust_free(t);
}

static void test_junk_cannot_mint_buckets(void **state)
{
    (void)state;
    char out[CLIENT_ADDR_BUF];
    client_addr_trust *t = trust("127.0.0.1, 10.0.0.0/8");
    static const char *junk[] = {
        "unknown",
        "evil.example",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.4:99999",
        "1.2.3.4:",
        "[::1",
        "[::1]x",
        "[1.2.3.4]",
        "fe80::1%eth0",
        "::ffff:1.2.3.4:80",
        "\x01\x02",
        "\xff\xfe",
        "1.2.3.4 5.6.7.8",
        "0x7f.0.0.1",
        "2001:db8::1/64",
        "\"1.2.3.4\"",
        "2001:0db8:0000:0000:0000:0000:0000:0001:0000000000000000000000000000000000000000000000",
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        char line[160];
        snprintf(line, sizeof line, "198.51.100.1, %s", junk[i]);
        if (resolve(t, "127.0.0.1", out, line, NULL) != CLIENT_ADDR_UNPARSABLE)
            fail_msg("junk entry \"%s\" gave bucket \"%s\"", junk[i], out);
        assert_string_equal(out, "unparsable@127.0.0.1");
    }
    /* Behind a trusted hop, junk is bucketed by that hop (never by the junk itself). */
    assert_int_equal(resolve(t, "127.0.0.1", out, "junk-1, 10.1.1.1", NULL), CLIENT_ADDR_UNPARSABLE);
    assert_string_equal(out, "unparsable@10.1.1.1");
    assert_int_equal(resolve(t, "127.0.0.1", out, "junk-2, 10.1.1.1", NULL), CLIENT_ADDR_UNPARSABLE);
    assert_string_equal(out, "unparsable@10.1.1.1");
    /* Junk left of the client is never read. */
    assert_int_equal(resolve(t, "127.0.0.1", out, "junk, 198.51.100.1", NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "198.51.100.1");
    /* A very long line and many entries: still one answer, bounded output. */
    size_t n = 100000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = i % 9 == 8 ? ',' : '7';
    big[n] = '\0';
    assert_int_equal(resolve(t, "127.0.0.1", out, big, NULL), CLIENT_ADDR_UNPARSABLE);
    memset(big, ',', n);
    memcpy(big, "10.0.0.9", 8);
    assert_int_equal(resolve(t, "127.0.0.1", out, big, NULL), CLIENT_ADDR_FORWARDED);
    assert_string_equal(out, "10.0.0.9");
    free(big);
    client_addr_trust_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trust_parse),         cmocka_unit_test(test_untrusted_peer_is_the_client),
        cmocka_unit_test(test_multiple_lines),      cmocka_unit_test(test_whitespace_and_chains),
        cmocka_unit_test(test_ipv4_mapped),         cmocka_unit_test(test_ipv6_spellings_and_ports),
        cmocka_unit_test(test_ipv6_prefix_buckets), cmocka_unit_test(test_junk_cannot_mint_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
