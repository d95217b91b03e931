/*
 * fuzz_client_addr: TRUSTED_PROXIES and X-Forwarded-For (src/guard/client_addr.c),
 * the client address that per-client limits apply to.
 *
 * Input: a byte for the IPv6 bucket prefix, then NUL-separated fields:
 * TRUSTED_PROXIES, the peer address, then the X-Forwarded-For header lines
 * (up to 8). Oracles (client_addr.h): the trust list parses or says why; the
 * bucket text is NUL-terminated printable ASCII within CLIENT_ADDR_BUF; an
 * untrusted peer is its own client, whatever it forwards; a peer that does not
 * parse is "unparsable-peer"; an unparsable entry gives "unparsable@<hop>";
 * the result does not depend on how the list is split into header lines
 * (the same entries joined with ", " into one line give the same bucket).
 */
#include "fuzz_util.h"
#include "guard/client_addr.h"

#define MAX_LINES 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    int prefix = fuzz_byte(&in) % 130;
    char *copy = fuzz_strndup(in.p, in.n);
    const char *field[2 + MAX_LINES];
    size_t nf = 0, off = 0;
    while (nf < 2 + MAX_LINES && off <= in.n) {
        field[nf++] = copy + off;
        off += strlen(copy + off) + 1;
    }
    const char *trusted_text = nf > 0 ? field[0] : "";
    const char *peer = nf > 1 ? field[1] : NULL;
    size_t nxff = nf > 2 ? nf - 2 : 0;

    client_addr_trust *t = NULL;
    char err[256] = "";
    chat_rc rc = client_addr_trust_parse(trusted_text, &t, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL, "rc %d", rc);
    if (rc != CHAT_OK) {
        FUZZ_CHECK(t == NULL && err[0], "refused without a reason, or with a list");
        /* Still resolve, with no proxy trusted. */
    } else {
        FUZZ_CHECK(client_addr_trust_count(t) <= CLIENT_ADDR_MAX_TRUSTED, "%zu entries", client_addr_trust_count(t));
    }

    char out[CLIENT_ADDR_BUF];
    memset(out, 'x', sizeof out);
    client_addr_source src = client_addr_resolve(t, peer, nxff ? field + 2 : NULL, nxff, prefix, out);
    size_t n = strnlen(out, sizeof out);
    FUZZ_CHECK(n < sizeof out, "bucket not NUL-terminated");
    FUZZ_CHECK(n > 0, "empty bucket");
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(out[i] > 0x20 && out[i] < 0x7f, "byte 0x%02x in bucket", (unsigned char)out[i]);
    bool peer_trusted = peer && client_addr_trusted(t, peer);
    if (!peer_trusted)
        FUZZ_CHECK(src == CLIENT_ADDR_PEER, "untrusted peer, yet source %d (%s)", src, out);
    if (src == CLIENT_ADDR_UNPARSABLE)
        FUZZ_CHECK(strncmp(out, "unparsable@", 11) == 0, "unparsable source with bucket %s", out);

    /* Several header lines are one list: joined with ", " they resolve the same. */
    if (nxff > 1) {
        size_t total = 0;
        for (size_t i = 0; i < nxff; i++)
            total += strlen(field[2 + i]) + 2;
        char *joined = malloc(total + 1);
        FUZZ_CHECK(joined != NULL, "out of memory");
        joined[0] = '\0';
        for (size_t i = 0; i < nxff; i++) {
            if (i)
                strcat(joined, ", ");
            strcat(joined, field[2 + i]);
        }
        const char *one[1] = { joined };
        char out1[CLIENT_ADDR_BUF];
        client_addr_source src1 = client_addr_resolve(t, peer, one, 1, prefix, out1);
        FUZZ_CHECK(src1 == src && strcmp(out1, out) == 0, "%zu lines give %s (%d), joined %s (%d)", nxff, out, src,
                   out1, src1);
        free(joined);
    }
    client_addr_trust_free(t);
    free(copy);
    return 0;
}
