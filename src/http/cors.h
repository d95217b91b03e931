/*
 * cors.h: the Cross-Origin Resource Sharing policy (Fetch standard, "CORS
 * protocol"), as a pure decision: request fields in, verdict and response
 * headers out. No HTTP object is touched here.
 *
 * The policy comes from CORS_ORIGINS: empty (CORS disabled: browsers on other
 * origins cannot read our responses), "*" (any origin, without credentials),
 * or a comma-separated list of exact origins "scheme://host[:port]".
 *
 * Decisions (cors_evaluate):
 * - CORS disabled, or no Origin header: CORS_NONE, not a CORS request.
 * - A preflight (OPTIONS with Origin and Access-Control-Request-Method):
 *   allowed when the origin is allowed and the requested method is one of
 *   CORS_ALLOW_METHODS. The answer carries Access-Control-Allow-Origin,
 *   -Allow-Credentials (explicit origins with credentials on), -Allow-Methods,
 *   -Allow-Headers (the requested headers that are in CORS_ALLOW_HEADERS,
 *   which includes what the official Anthropic and OpenAI SDKs send from a
 *   browser, x-stainless-* by prefix; others silently left out: the browser
 *   then refuses the request itself),
 *   -Max-Age. A denied preflight carries no Access-Control-Allow-* header;
 *   answer it 403 (preflight_status): the browser fails the request either
 *   way, and 403 says why in the network log. The whole preflight is
 *   answered from the result: it never reaches the route handlers.
 * - Any other request with an Origin: allowed -> Access-Control-Allow-Origin
 *   (+ -Allow-Credentials) and Access-Control-Expose-Headers
 *   (CORS_EXPOSE_HEADERS); denied -> no Access-Control-* header, so the
 *   browser hides the response from the page. The server still handles the
 *   request (CORS protects reading, not sending); a caller wishing to refuse
 *   state-changing requests from unknown origins may answer 403 itself.
 * - Vary: whenever CORS is enabled, every response carries "Vary: Origin"
 *   (even without an Origin header, even in "*" mode): whether
 *   Access-Control-Allow-Origin is present depends on the Origin header, so
 *   a shared cache must key on it. Preflight answers also vary on the two
 *   Access-Control-Request-* headers, which they reflect.
 * - Access-Control-Allow-Origin is "*" only in "*" mode (which forbids
 *   credentials), else the allowed origin exactly as configured (never the
 *   request's bytes).
 *
 * Header names in Access-Control-Request-Headers and in the configured
 * origins' scheme and host are compared case-insensitively; methods are
 * case-sensitive (as HTTP says; browsers upper-case the standard ones).
 *
 * Thread: a policy is built once at start-up, then read-only: any number of
 * threads may call cors_evaluate concurrently.
 */
#ifndef CHATD_HTTP_CORS_H
#define CHATD_HTTP_CORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

/* What the server offers to cross-origin callers (values of the preflight answer). */
#define CORS_ALLOW_METHODS "GET, HEAD, POST, DELETE"
#define CORS_ALLOW_HEADERS                                                                  \
    "Content-Type, Authorization, X-Request-Id, Idempotency-Key, X-Session-Id, X-Api-Key, " \
    "Anthropic-Version, Anthropic-Beta, Anthropic-Dangerous-Direct-Browser-Access, "        \
    "OpenAI-Organization, OpenAI-Project, X-Stainless-*"
#define CORS_EXPOSE_HEADERS                                                                                   \
    "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Chatd-Overhead-Ms, " \
    "Idempotent-Replayed"

#define CORS_MAX_ORIGINS 64     /* entries in CORS_ORIGINS */
#define CORS_MAX_ORIGIN_LEN 255 /* bytes of one origin */
#define CORS_MAX_HEADERS 8      /* headers one result can carry */
#define CORS_DEFAULT_MAX_AGE_S 600

typedef struct cors_policy cors_policy;

/*
 * Builds a policy from the CORS_ORIGINS text (NULL or blank: disabled),
 * whether credentials (cookies, HTTP auth) are allowed, and the preflight cache
 * lifetime in seconds (0..86400; Access-Control-Max-Age). Entries are separated
 * by commas with optional spaces; each is "*" (alone in the list) or an origin
 * "scheme://host[:port]": scheme a letter then letters, digits, '+', '-', '.';
 * host a DNS name or IPv4 address (letters, digits, '-', '.') or a bracketed
 * IPv6 literal; port 1..65535. No path (not even a trailing slash), query,
 * fragment or user info. Scheme and host are stored lower-case and a default
 * port (http:80, https:443) is dropped, as browsers serialise origins.
 * On success stores a new policy in *out (free with cors_policy_free) and
 * returns CHAT_OK. On failure returns CHAT_EINVAL, *out NULL, and one line
 * naming the bad entry and the rule it breaks in err (errlen bytes, may be 0);
 * "*" with credentials is such an error. Start-up, one thread.
 */
chat_rc cors_policy_new(const char *origins, bool allow_credentials, int64_t max_age_s, cors_policy **out, char *err,
                        size_t errlen) CHAT_MUST_CHECK;

/* Frees a policy. Accepts NULL. */
void cors_policy_free(cors_policy *p);

/* True unless the policy is disabled. */
bool cors_enabled(const cors_policy *p);

typedef enum {
    CORS_NONE = 0, /* not a CORS request (or CORS disabled): proceed; still add headers[] (Vary) */
    CORS_ALLOWED,  /* a CORS request from an allowed origin */
    CORS_DENIED,   /* a CORS request this policy refuses */
} cors_verdict;

typedef struct cors_header {
    const char *name;  /* static */
    const char *value; /* static, owned by the policy, or in the result's buf */
} cors_header;

/*
 * The outcome of one evaluation. headers[0..n) are to be added to the response
 * as they are. Values may point into buf: do not copy the struct (copies keep
 * pointing into the original); use it while the policy lives.
 */
typedef struct cors_result {
    cors_verdict verdict;
    bool preflight;       /* answer now with preflight_status and an empty body */
    int preflight_status; /* 204 (allowed) or 403 (denied); 0 when not a preflight */
    size_t n;
    cors_header headers[CORS_MAX_HEADERS];
    char buf[640]; /* backing store of the Access-Control-Allow-Headers value */
} cors_result;

/*
 * Evaluates one request: method (e.g. "OPTIONS"), and the values of the
 * Origin, Access-Control-Request-Method and Access-Control-Request-Headers
 * request headers (each NULL when absent). Fills *out and returns its verdict.
 * Never fails. Any thread.
 */
cors_verdict cors_evaluate(const cors_policy *p, const char *method, const char *origin, const char *request_method,
                           const char *request_headers, cors_result *out);

#endif
