/*
 * fuzz_transfer: `chatd import` (transfer_import, src/store/transfer.c), the
 * JSON Lines of an export read into a store: here a fresh in-memory SQLite
 * store per input ("sqlite://:memory:").
 *
 * Input: the file. Oracles (transfer.h): a refusal names the line or says
 * why in err; an accepted file is a complete export, so exporting the store
 * and importing that into a second fresh store succeeds with the same counts,
 * and exporting the second store gives the same lines (the header's
 * exported_at aside): what import accepts, export reproduces.
 */
#include "fuzz_util.h"
#include "store/store.h"
#include "store/transfer.h"

#define MAX_LINE 65536 /* small inputs: keep a line limit a fuzzer can reach */

static store *fresh_store(void)
{
    store *s = NULL;
    char err[256];
    chat_rc rc = store_open("sqlite://:memory:", &s, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK, "cannot open an in-memory store: %s", err);
    return s;
}

/* The export of s as a heap string. */
static char *export_text(store *s, transfer_counts *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    FUZZ_CHECK(out != NULL, "open_memstream");
    char err[256] = "";
    chat_rc rc = transfer_export(s, out, c, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK, "export of an imported store failed: %s", err);
    fclose(out);
    return text;
}

/* Both exports with the header's exported_at (the clock) blanked out. */
static bool same_export(const char *a, const char *b)
{
    char *x = strdup(a), *y = strdup(b);
    FUZZ_CHECK(x && y, "out of memory");
    for (char **t = (char *[]){ x, y, NULL }; *t; t++) {
        char *at = strstr(*t, "\"exported_at\":");
        if (at)
            for (at += 14; *at >= '0' && *at <= '9'; at++)
                *at = '0';
    }
    bool same = strcmp(x, y) == 0;
    free(x);
    free(y);
    return same;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    store *s = fresh_store();
    FILE *in = fmemopen(size ? (void *)data : (void *)"", size, "r");
    FUZZ_CHECK(in != NULL, "fmemopen");
    transfer_counts c;
    char err[512] = "";
    chat_rc rc = transfer_import(s, in, MAX_LINE, &c, err, sizeof err);
    fclose(in);
    FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL || rc == CHAT_ETOOBIG, "rc %d (%s)", rc, err);
    if (rc != CHAT_OK) {
        FUZZ_CHECK(err[0] != '\0', "import refused without a reason");
        store_close(s);
        return 0;
    }
    FUZZ_CHECK(c.keys >= 0 && c.sessions >= 0 && c.messages >= 0, "negative counts");

    /* Round trip: export, import into a second store, export again. */
    transfer_counts c1, c2, c3;
    char *first = export_text(s, &c1);
    FUZZ_CHECK(c1.keys == c.keys + c.keys_skipped || c1.keys == c.keys, "exported %lld keys, imported %lld",
               (long long)c1.keys, (long long)c.keys);
    store *s2 = fresh_store();
    FILE *again = fmemopen(first, strlen(first), "r");
    FUZZ_CHECK(again != NULL, "fmemopen");
    rc = transfer_import(s2, again, 0, &c2, err, sizeof err);
    fclose(again);
    FUZZ_CHECK(rc == CHAT_OK, "an export of an imported store does not import: %s", err);
    FUZZ_CHECK(c2.keys == c1.keys && c2.sessions == c1.sessions && c2.messages == c1.messages,
               "re-import counts %lld/%lld/%lld, export %lld/%lld/%lld", (long long)c2.keys, (long long)c2.sessions,
               (long long)c2.messages, (long long)c1.keys, (long long)c1.sessions, (long long)c1.messages);
    char *second = export_text(s2, &c3);
    FUZZ_CHECK(same_export(first, second), "the export changed through a round trip:\n%s\n---\n%s", first, second);
    free(first);
    free(second);
    store_close(s2);
    store_close(s);
    return 0;
}
