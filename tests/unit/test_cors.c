/*
 * test_cors.c: unit tests for the CORS policy (src/http/cors.h).
 *
 * Each case evaluates one request and compares the complete header set of the
 * result (name and value, order-independent, header names case-insensitive),
 * so that an extra header is as much a failure as a missing one.
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
#include <strings.h>

#include <cmocka.h>

#include "http/cors.h"

#define VARY_PRE "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

static cors_policy *policy(const char *origins, bool credentials)
{
    cors_policy *p = NULL;
    char err[256];
    if (cors_policy_new(origins, credentials, CORS_DEFAULT_MAX_AGE_S, &p, err, sizeof err) != CHAT_OK)
        fail_msg("policy \"%s\": %s", origins ? origins : "(null)", err);
    assert_non_null(p);
    return p;
}

static const char *header(const cors_result *r, const char *name)
{
    const char *found = NULL;
    for (size_t i = 0; i < r->n; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) {
            assert_null(found); /* never twice */
            found = r->headers[i].value;
        }
    return found;
}

/* Asserts that r carries exactly the given (name, value) pairs, NULL-terminated. */
static void expect_headers(const cors_result *r, ...)
{
    va_list ap;
    va_start(ap, r);
    size_t n = 0;
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        const char *got = header(r, name);
        if (!got)
            fail_msg("missing header %s", name);
        if (strcmp(got, value) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", name, got, value);
        n++;
    }
    va_end(ap);
    if (r->n != n) {
        for (size_t i = 0; i < r->n; i++)
            fprintf(stderr, "  %s: %s\n", r->headers[i].name, r->headers[i].value);
        fail_msg("%zu headers, want %zu", r->n, n);
    }
}

/* ---- parsing ------------------------------------------------------------------ */

static void test_parse_valid(void **state)
{
    (void)state;
    const struct {
        const char *spec;
        bool enabled;
    } cases[] = {
        { NULL, false },
        { "", false },
        { "   ", false },
        { "*", true },
        { " * ", true },
        { "https://app.example.com", true },
        { "https://app.example.com, http://localhost:5173", true },
        { "http://127.0.0.1:8000,https://[::1]:8443", true },
        { "app://local-app.internal", true },
        { "chrome-extension://abcdefghijklmnop", true },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cors_policy *p = policy(cases[i].spec, false);
        assert_int_equal(cors_enabled(p), cases[i].enabled);
        cors_policy_free(p);
    }
    cors_policy_free(NULL);
    assert_false(cors_enabled(NULL));

    /* normalisation: case of scheme and host, default ports */
    cors_policy *p = policy("HTTPS://App.Example.COM:443, http://Example.org:80, http://x.test:8080", true);
    cors_result r;
    assert_int_equal(cors_evaluate(p, "GET", "https://app.example.com", NULL, NULL, &r), CORS_ALLOWED);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "https://app.example.com");
    assert_int_equal(cors_evaluate(p, "GET", "http://example.org", NULL, NULL, &r), CORS_ALLOWED);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "http://example.org");
    assert_int_equal(cors_evaluate(p, "GET", "http://x.test:8080", NULL, NULL, &r), CORS_ALLOWED);
    assert_int_equal(cors_evaluate(p, "GET", "http://x.test", NULL, NULL, &r), CORS_DENIED);
    cors_policy_free(p);
}

static void test_parse_errors(void **state)
{
    (void)state;
    const struct {
        const char *spec;
        bool credentials;
        const char *msg; /* substring of the error */
    } cases[] = {
        { "https://app.example.com/", false, "trailing slash" },
        { "https://app.example.com/path", false, "has a path" },
        { "https://app.example.com?x=1", false, "query or fragment" },
        { "https://app.example.com#f", false, "query or fragment" },
        { "https://user@app.example.com", false, "user info" },
        { "app.example.com", false, "scheme://host" },
        { "//app.example.com", false, "must start with a scheme" },
        { "https://", false, "has no host" },
        { "https://:8080", false, "has no host" },
        { "https://app..example.com", false, "empty label" },
        { "https://app.example.com.", false, "ending with '.'" },
        { "https://app.example.com:0", false, "1..65535" },
        { "https://app.example.com:65536", false, "1..65535" },
        { "https://app.example.com:", false, "1..65535" },
        { "https://app.example.com:80a", false, "unexpected character" },
        { "https://*.example.com", false, "wildcard" },
        { "https://app_example.com", false, "unexpected character '_'" },
        { "https://[::1", false, "IPv6" },
        { "https://[]", false, "IPv6" },
        { "https://a.com,,https://b.com", false, "empty entry (#2)" },
        { "https://a.com,", false, "empty entry (#2)" },
        { "*, https://a.com", false, "mixes" },
        { "*", true, "credentials" },
        { "null", false, "scheme://host" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cors_policy *p = (cors_policy *)&p; /* must be reset to NULL */
        char err[256] = "";
        assert_int_equal(cors_policy_new(cases[i].spec, cases[i].credentials, 600, &p, err, sizeof err), CHAT_EINVAL);
        assert_null(p);
        if (!strstr(err, cases[i].msg))
            fail_msg("\"%s\": error \"%s\" lacks \"%s\"", cases[i].spec, err, cases[i].msg);
    }
    /* the error names the entry */
    cors_policy *p = NULL;
    char err[256];
    assert_int_equal(cors_policy_new("https://ok.example, https://bad.example/", false, 600, &p, err, sizeof err),
                     CHAT_EINVAL);
    assert_non_null(strstr(err, "\"https://bad.example/\""));
    /* max age range; too many origins; overlong origin */
    assert_int_equal(cors_policy_new("*", false, -1, &p, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(cors_policy_new("*", false, 86401, &p, err, sizeof err), CHAT_EINVAL);
    char many[CORS_MAX_ORIGINS * 32] = "";
    size_t used = 0;
    for (int i = 0; i <= CORS_MAX_ORIGINS; i++)
        used += (size_t)snprintf(many + used, sizeof many - used, "%shttps://h%d.test", i ? "," : "", i);
    assert_int_equal(cors_policy_new(many, false, 600, &p, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "more than"));
    char longo[400] = "https://";
    memset(longo + 8, 'a', 300);
    longo[308] = '\0';
    assert_int_equal(cors_policy_new(longo, false, 600, &p, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "longer than"));
    /* err may be absent */
    assert_int_equal(cors_policy_new("bad", false, 600, &p, NULL, 0), CHAT_EINVAL);
}

/* ---- decisions ---------------------------------------------------------------- */

static void test_disabled(void **state)
{
    (void)state;
    cors_policy *p = policy("", false);
    cors_result r;
    assert_int_equal(cors_evaluate(p, "GET", "https://app.example.com", NULL, NULL, &r), CORS_NONE);
    expect_headers(&r, NULL);
    assert_int_equal(cors_evaluate(p, "OPTIONS", "https://app.example.com", "POST", "content-type", &r), CORS_NONE);
    expect_headers(&r, NULL);
    assert_false(r.preflight); /* left to the router, as any OPTIONS request */
    assert_int_equal(r.preflight_status, 0);
    assert_int_equal(cors_evaluate(NULL, "GET", "https://x.test", NULL, NULL, &r), CORS_NONE);
    cors_policy_free(p);
}

static void test_no_origin(void **state)
{
    (void)state;
    cors_policy *p = policy("https://app.example.com", false);
    cors_result r;
    assert_int_equal(cors_evaluate(p, "GET", NULL, NULL, NULL, &r), CORS_NONE);
    expect_headers(&r, "Vary", "Origin", NULL);
    /* OPTIONS without Origin is no preflight */
    assert_int_equal(cors_evaluate(p, "OPTIONS", NULL, "POST", NULL, &r), CORS_NONE);
    assert_false(r.preflight);
    expect_headers(&r, "Vary", "Origin", NULL);
    cors_policy_free(p);
}

static void test_exact_match(void **state)
{
    (void)state;
    cors_policy *p = policy("https://app.example.com, http://localhost:5173", false);
    cors_result r;
    /* actual request */
    assert_int_equal(cors_evaluate(p, "POST", "http://localhost:5173", NULL, NULL, &r), CORS_ALLOWED);
    assert_false(r.preflight);
    expect_headers(&r, "Vary", "Origin", "Access-Control-Allow-Origin", "http://localhost:5173",
                   "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS, NULL);
    /* the expose list names what the API sends */
    const char *expose = header(&r, "Access-Control-Expose-Headers");
    const char *names[] = { "X-Request-Id",        "Retry-After",     "RateLimit-Limit",
                            "RateLimit-Remaining", "RateLimit-Reset", "X-Chatd-Overhead-Ms" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_non_null(strstr(expose, names[i]));
    /* scheme and host compare case-insensitively */
    assert_int_equal(cors_evaluate(p, "GET", "HTTPS://APP.example.com", NULL, NULL, &r), CORS_ALLOWED);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "https://app.example.com");

    /* preflight */
    assert_int_equal(
        cors_evaluate(p, "OPTIONS", "https://app.example.com", "POST", "content-type, authorization, x-request-id", &r),
        CORS_ALLOWED);
    assert_true(r.preflight);
    assert_int_equal(r.preflight_status, 204);
    expect_headers(&r, "Vary", VARY_PRE, "Access-Control-Allow-Origin", "https://app.example.com",
                   "Access-Control-Allow-Methods", CORS_ALLOW_METHODS, "Access-Control-Allow-Headers",
                   "Content-Type, Authorization, X-Request-Id", "Access-Control-Max-Age", "600", NULL);
    /* preflight without requested headers: no Allow-Headers */
    assert_int_equal(cors_evaluate(p, "OPTIONS", "https://app.example.com", "DELETE", NULL, &r), CORS_ALLOWED);
    expect_headers(&r, "Vary", VARY_PRE, "Access-Control-Allow-Origin", "https://app.example.com",
                   "Access-Control-Allow-Methods", CORS_ALLOW_METHODS, "Access-Control-Max-Age", "600", NULL);
    cors_policy_free(p);
}

static void test_mismatch(void **state)
{
    (void)state;
    cors_policy *p = policy("https://app.example.com", false);
    cors_result r;
    const char *others[] = { "https://evil.example.com",
                             "http://app.example.com",
                             "https://app.example.com:8443",
                             "https://app.example.com.evil.test",
                             "null",
                             "",
                             "https://app.example.co" };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        assert_int_equal(cors_evaluate(p, "GET", others[i], NULL, NULL, &r), CORS_DENIED);
        assert_false(r.preflight);
        expect_headers(&r, "Vary", "Origin", NULL);
        assert_int_equal(cors_evaluate(p, "OPTIONS", others[i], "POST", "content-type", &r), CORS_DENIED);
        assert_true(r.preflight);
        assert_int_equal(r.preflight_status, 403);
        expect_headers(&r, "Vary", VARY_PRE, NULL);
    }
    /* an allowed origin asking for a method we do not offer */
    const char *methods[] = { "PUT", "PATCH", "post", "TRACE", "" };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        assert_int_equal(cors_evaluate(p, "OPTIONS", "https://app.example.com", methods[i], NULL, &r), CORS_DENIED);
        assert_int_equal(r.preflight_status, 403);
        assert_null(header(&r, "Access-Control-Allow-Origin"));
    }
    cors_policy_free(p);
}

static void test_wildcard(void **state)
{
    (void)state;
    cors_policy *p = policy("*", false);
    cors_result r;
    assert_int_equal(cors_evaluate(p, "GET", "https://anything.test", NULL, NULL, &r), CORS_ALLOWED);
    expect_headers(&r, "Vary", "Origin", "Access-Control-Allow-Origin", "*", "Access-Control-Expose-Headers",
                   CORS_EXPOSE_HEADERS, NULL);
    assert_int_equal(cors_evaluate(p, "GET", "null", NULL, NULL, &r), CORS_ALLOWED);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "*");
    assert_int_equal(cors_evaluate(p, "OPTIONS", "https://x.test", "POST", "Idempotency-Key", &r), CORS_ALLOWED);
    expect_headers(&r, "Vary", VARY_PRE, "Access-Control-Allow-Origin", "*", "Access-Control-Allow-Methods",
                   CORS_ALLOW_METHODS, "Access-Control-Allow-Headers", "Idempotency-Key", "Access-Control-Max-Age",
                   "600", NULL);
    /* no Origin: nothing but Vary (a cache must not serve this to a CORS request) */
    assert_int_equal(cors_evaluate(p, "GET", NULL, NULL, NULL, &r), CORS_NONE);
    expect_headers(&r, "Vary", "Origin", NULL);
    cors_policy_free(p);
}

static void test_credentials(void **state)
{
    (void)state;
    cors_policy *p = policy("https://app.example.com", true);
    cors_result r;
    assert_int_equal(cors_evaluate(p, "GET", "https://app.example.com", NULL, NULL, &r), CORS_ALLOWED);
    expect_headers(&r, "Vary", "Origin", "Access-Control-Allow-Origin", "https://app.example.com",
                   "Access-Control-Allow-Credentials", "true", "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS,
                   NULL);
    assert_int_equal(cors_evaluate(p, "OPTIONS", "https://app.example.com", "POST", "x-session-id", &r), CORS_ALLOWED);
    expect_headers(&r, "Vary", VARY_PRE, "Access-Control-Allow-Origin", "https://app.example.com",
                   "Access-Control-Allow-Credentials", "true", "Access-Control-Allow-Methods", CORS_ALLOW_METHODS,
                   "Access-Control-Allow-Headers", "X-Session-Id", "Access-Control-Max-Age", "600", NULL);
    /* never on a denial */
    assert_int_equal(cors_evaluate(p, "GET", "https://evil.test", NULL, NULL, &r), CORS_DENIED);
    assert_null(header(&r, "Access-Control-Allow-Credentials"));
    cors_policy_free(p);
    /* without credentials: never */
    p = policy("https://app.example.com", false);
    assert_int_equal(cors_evaluate(p, "GET", "https://app.example.com", NULL, NULL, &r), CORS_ALLOWED);
    assert_null(header(&r, "Access-Control-Allow-Credentials"));
    cors_policy_free(p);
    /* "*" never carries credentials: the combination is refused at parse time */
    char err[200];
    assert_int_equal(cors_policy_new("*", true, 600, &p, err, sizeof err), CHAT_EINVAL);
}

static void test_requested_headers(void **state)
{
    (void)state;
    cors_policy *p = policy("https://app.example.com", false);
    cors_result r;
    const struct {
        const char *requested;
        const char *allowed; /* NULL: no Allow-Headers header */
    } cases[] = {
        { "content-type", "Content-Type" },
        { "CONTENT-TYPE", "Content-Type" },
        { "Content-Type", "Content-Type" },
        { "x-evil, content-type", "Content-Type" },
        { "x-evil", NULL },
        { "", NULL },
        { " , ,", NULL },
        { "authorization,idempotency-key,x-session-id,x-request-id,content-type",
          "Content-Type, Authorization, X-Request-Id, Idempotency-Key, X-Session-Id" },
        { "  x-request-id  ,\tauthorization\t", "Authorization, X-Request-Id" },
        { "content-type, content-type, Content-Type", "Content-Type" },
        { "content-typex, xcontent-type, content", NULL },
        { "cookie, accept, origin", NULL },
        /* What the Anthropic and OpenAI SDKs send from a browser. */
        { "anthropic-version,x-api-key,content-type,anthropic-dangerous-direct-browser-access",
          "Content-Type, X-Api-Key, Anthropic-Version, Anthropic-Dangerous-Direct-Browser-Access" },
        { "authorization,content-type,x-stainless-os,x-stainless-retry-count",
          "Content-Type, Authorization, x-stainless-os, x-stainless-retry-count" },
        { "x-stainless-", NULL },                      /* the prefix alone is no header */
        { "x-stainless-a b, x-stainless-\x01", NULL }, /* not header names */
        { "openai-organization, x-stainless-lang", "OpenAI-Organization, x-stainless-lang" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(cors_evaluate(p, "OPTIONS", "https://app.example.com", "POST", cases[i].requested, &r),
                         CORS_ALLOWED);
        const char *got = header(&r, "Access-Control-Allow-Headers");
        if (!cases[i].allowed) {
            if (got)
                fail_msg("\"%s\": unexpected Allow-Headers \"%s\"", cases[i].requested, got);
        } else {
            if (!got || strcmp(got, cases[i].allowed) != 0)
                fail_msg("\"%s\": got \"%s\", want \"%s\"", cases[i].requested, got ? got : "(none)", cases[i].allowed);
        }
    }
    /* a long list of junk cannot overflow anything */
    char junk[8192];
    size_t used = 0;
    while (used + 20 < sizeof junk)
        used += (size_t)snprintf(junk + used, sizeof junk - used, "x-h%zu, content-type, ", used);
    assert_int_equal(cors_evaluate(p, "OPTIONS", "https://app.example.com", "GET", junk, &r), CORS_ALLOWED);
    assert_string_equal(header(&r, "Access-Control-Allow-Headers"), "Content-Type");
    cors_policy_free(p);
}

static void test_vary_always(void **state)
{
    (void)state;
    const char *specs[] = { "*", "https://app.example.com" };
    const char *origins[] = { NULL, "https://app.example.com", "https://evil.test" };
    const char *methods[] = { "GET", "POST", "OPTIONS", "DELETE" };
    const char *req_methods[] = { NULL, "POST", "PUT" };
    for (size_t s = 0; s < 2; s++) {
        cors_policy *p = policy(specs[s], false);
        for (size_t o = 0; o < 3; o++)
            for (size_t m = 0; m < 4; m++)
                for (size_t q = 0; q < 3; q++) {
                    cors_result r;
                    cors_evaluate(p, methods[m], origins[o], req_methods[q], "content-type", &r);
                    const char *vary = header(&r, "Vary");
                    assert_non_null(vary);
                    assert_true(strncmp(vary, "Origin", 6) == 0);
                    assert_true(r.n <= CORS_MAX_HEADERS);
                    /* preflight only for OPTIONS + Origin + Access-Control-Request-Method */
                    assert_int_equal(r.preflight, m == 2 && origins[o] && req_methods[q]);
                }
        cors_policy_free(p);
    }
    /* custom max age */
    cors_policy *p = NULL;
    char err[100];
    assert_int_equal(cors_policy_new("https://a.test", false, 0, &p, err, sizeof err), CHAT_OK);
    cors_result r;
    cors_evaluate(p, "OPTIONS", "https://a.test", "GET", NULL, &r);
    assert_string_equal(header(&r, "Access-Control-Max-Age"), "0");
    cors_policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),       cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_disabled),          cmocka_unit_test(test_no_origin),
        cmocka_unit_test(test_exact_match),       cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_wildcard),          cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_requested_headers), cmocka_unit_test(test_vary_always),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
