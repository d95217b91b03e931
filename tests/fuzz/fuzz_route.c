/*
 * fuzz_route: request paths through the route table (api_route_find,
 * src/api/router.c): segment splitting, pattern matching and the
 * percent-decoding of {} segments that become session ids.
 *
 * Input: a method byte, then the path (up to a NUL). Oracles (api.h): a
 * route found allows the method and captures one decoded parameter per "{}"
 * of its pattern, each without a NUL byte; encoding those parameters back
 * into the pattern finds the same route with the same parameters; no route
 * means the method is not among the allowed ones; HEAD is allowed wherever
 * GET is.
 */
#include <event2/http.h>

#include "api/api.h"
#include "fuzz_util.h"

static const unsigned methods[] = { HTTP_GET, HTTP_POST, HTTP_HEAD, HTTP_PUT, HTTP_DELETE, HTTP_OPTIONS, HTTP_PATCH };

static int count_params(const char *pattern)
{
    int n = 0;
    for (const char *p = strstr(pattern, "{}"); p; p = strstr(p + 2, "{}"))
        n++;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = { data, size };
    unsigned m = methods[fuzz_byte(&in) % (sizeof methods / sizeof methods[0])];
    char *path = fuzz_strndup(in.p, in.n);

    api_route_match found;
    api_route_find(path, m, &found);
    FUZZ_CHECK(found.flavor == API_SEED || found.flavor == API_V1 || found.flavor == API_OPENAI ||
                   found.flavor == API_ANTHROPIC,
               "flavor %d", found.flavor);
    if (!found.pattern) {
        FUZZ_CHECK(found.params[0] == NULL, "parameters without a route");
        FUZZ_CHECK(!(found.allowed & m), "method %u allowed (%u) but no route", m, found.allowed);
        if (found.allowed & HTTP_GET)
            FUZZ_CHECK(found.allowed & HTTP_HEAD, "GET without HEAD");
        free(path);
        return 0;
    }
    FUZZ_CHECK(found.allowed & m, "a route that does not allow the method");
    int n = count_params(found.pattern);
    FUZZ_CHECK(n <= API_MAX_PARAMS, "pattern %s", found.pattern);
    for (int k = 0; k < n; k++)
        FUZZ_CHECK(found.params[k] && found.params[k][0], "parameter %d of %s missing or empty", k, found.pattern);
    FUZZ_CHECK(found.params[n] == NULL, "more parameters than {} in %s", found.pattern);

    /* Encode the parameters back into the pattern: the same route, the same values. */
    size_t cap = strlen(found.pattern) + 1;
    char **enc = calloc((size_t)n + 1, sizeof *enc);
    FUZZ_CHECK(enc != NULL, "out of memory");
    for (int k = 0; k < n; k++) {
        enc[k] = evhttp_uriencode(found.params[k], -1, 0);
        FUZZ_CHECK(enc[k] != NULL, "uriencode");
        cap += strlen(enc[k]);
    }
    char *again = malloc(cap);
    FUZZ_CHECK(again != NULL, "out of memory");
    size_t len = 0;
    int k = 0;
    for (const char *p = found.pattern; *p;) {
        if (p[0] == '{' && p[1] == '}') {
            size_t e = strlen(enc[k]);
            memcpy(again + len, enc[k++], e);
            len += e;
            p += 2;
        } else {
            again[len++] = *p++;
        }
    }
    again[len] = '\0';
    api_route_match second;
    api_route_find(again, m, &second);
    FUZZ_CHECK(second.pattern && strcmp(second.pattern, found.pattern) == 0, "%s found %s, re-encoded %s found %s",
               path, found.pattern, again, second.pattern ? second.pattern : "nothing");
    for (k = 0; k < n; k++)
        FUZZ_CHECK(second.params[k] && strcmp(second.params[k], found.params[k]) == 0, "parameter %d changed", k);
    api_route_match_free(&second);
    for (k = 0; k < n; k++)
        free(enc[k]);
    free(enc);
    free(again);
    api_route_match_free(&found);
    free(path);
    return 0;
}
