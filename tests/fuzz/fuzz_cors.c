/*
 * fuzz_cors: the CORS policy (src/http/cors.c): CORS_ORIGINS parsing and the
 * evaluation of a request's Origin and Access-Control-Request-* headers.
 *
 * Input: a flags byte (bit 0: credentials; bits 1-2: max age), then up to
 * five NUL-separated fields: CORS_ORIGINS, method, Origin,
 * Access-Control-Request-Method, Access-Control-Request-Headers (a missing
 * field is an absent header). Oracles (cors.h): a refused policy says why;
 * a result carries at most CORS_MAX_HEADERS headers, each a known name with a
 * value that can go into a header (printable, no CR/LF); no
 * Access-Control-Allow-* header unless allowed; Access-Control-Allow-Origin is
 * "*" or a configured origin in canonical form (a policy of it alone allows it
 * as itself), never the request's bytes; Vary whenever CORS
 * is on; a preflight is answered 204 when allowed, 403 when denied.
 */
#include <strings.h>

#include "fuzz_util.h"
#include "http/cors.h"

static bool header_safe(const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static void check_canonical(const char *origin)
{
    cors_policy *p = NULL;
    char err[256] = "";
    FUZZ_CHECK(cors_policy_new(origin, false, 0, &p, err, sizeof err) == CHAT_OK,
               "the allowed origin %s is not a valid CORS_ORIGINS entry: %s", origin, err);
    cors_result res;
    FUZZ_CHECK(cors_evaluate(p, "GET", origin, NULL, NULL, &res) == CORS_ALLOWED, "%s does not allow itself", origin);
    bool same = false;
    for (size_t i = 0; i < res.n; i++)
        if (strcasecmp(res.headers[i].name, "Access-Control-Allow-Origin") == 0)
            same = strcmp(res.headers[i].value, origin) == 0;
    FUZZ_CHECK(same, "%s is not stored as itself", origin);
    cors_policy_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    uint8_t flags = fuzz_byte(&in);
    static const int64_t ages[] = { 0, 600, 86400, 5 };
    char *copy = fuzz_strndup(in.p, in.n);
    const char *field[5] = { NULL, NULL, NULL, NULL, NULL };
    size_t off = 0;
    for (int i = 0; i < 5 && off <= in.n; i++) {
        field[i] = copy + off;
        off += strlen(copy + off) + 1;
    }

    cors_policy *p = NULL;
    char err[256] = "";
    chat_rc rc = cors_policy_new(field[0], flags & 1, ages[(flags >> 1) & 3], &p, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL, "rc %d", rc);
    if (rc != CHAT_OK) {
        FUZZ_CHECK(p == NULL, "a refused policy returned");
        FUZZ_CHECK(err[0] != '\0', "refused without a reason");
        free(copy);
        return 0;
    }
    FUZZ_CHECK(p != NULL, "no policy");

    /* The request's header values as separate heap strings, so that a value
     * pointing into them is recognisable. */
    char *origin = field[2] ? strdup(field[2]) : NULL;
    char *req_method = field[3] ? strdup(field[3]) : NULL;
    char *req_headers = field[4] ? strdup(field[4]) : NULL;
    cors_result res;
    cors_verdict v = cors_evaluate(p, field[1] ? field[1] : "GET", origin, req_method, req_headers, &res);
    FUZZ_CHECK(v == res.verdict, "returned verdict differs from the result's");
    FUZZ_CHECK(res.n <= CORS_MAX_HEADERS, "%zu headers", res.n);
    bool vary = false;
    for (size_t i = 0; i < res.n; i++) {
        const char *name = res.headers[i].name, *value = res.headers[i].value;
        FUZZ_CHECK(name && value, "header %zu without name or value", i);
        FUZZ_CHECK(header_safe(value), "header %s has an unsafe value", name);
        FUZZ_CHECK(strncasecmp(name, "Access-Control-", 15) == 0 || strcasecmp(name, "Vary") == 0,
                   "unexpected header %s", name);
        if (strcasecmp(name, "Vary") == 0)
            vary = true;
        if (strncasecmp(name, "Access-Control-Allow-", 21) == 0 || strcasecmp(name, "Access-Control-Max-Age") == 0 ||
            strcasecmp(name, "Access-Control-Expose-Headers") == 0)
            FUZZ_CHECK(v == CORS_ALLOWED, "%s on a request that is not allowed", name);
        if (strcasecmp(name, "Access-Control-Allow-Origin") == 0) {
            FUZZ_CHECK(value != origin, "Access-Control-Allow-Origin is the request's own bytes");
            /* A configured origin in its stored (canonical) form: lower-case,
             * default port dropped. Canonical means a fixed point: as the
             * only entry of a policy it is accepted and allowed as itself. */
            if (strcmp(value, "*") != 0)
                check_canonical(value);
        }
    }
    if (cors_enabled(p))
        FUZZ_CHECK(vary, "CORS is on but no Vary header");
    else
        FUZZ_CHECK(v == CORS_NONE && res.n == 0, "CORS is off but the verdict is %d with %zu headers", v, res.n);
    if (res.preflight)
        FUZZ_CHECK((v == CORS_ALLOWED && res.preflight_status == 204) ||
                       (v == CORS_DENIED && res.preflight_status == 403),
                   "preflight verdict %d answered %d", v, res.preflight_status);
    else
        FUZZ_CHECK(res.preflight_status == 0, "not a preflight, status %d", res.preflight_status);
    if (!origin)
        FUZZ_CHECK(v == CORS_NONE, "no Origin header, verdict %d", v);

    cors_policy_free(p);
    free(origin);
    free(req_method);
    free(req_headers);
    free(copy);
    return 0;
}
