/*
 * cors.c: parsing CORS_ORIGINS and deciding each request's CORS headers.
 *
 * Origins are validated and normalised once (lower-case scheme and host, no
 * default port), so that per-request matching is a case-insensitive string
 * comparison against a short list: the lists are a handful of entries, a
 * linear scan beats any index. The response headers point at static strings,
 * at the policy's own copy of the matching origin, or at the result's buffer,
 * so evaluation allocates nothing.
 */
#define _GNU_SOURCE
#include "http/cors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/util.h"

struct cors_policy {
    bool enabled;
    bool any; /* "*" */
    bool credentials;
    char max_age[16]; /* Access-Control-Max-Age value */
    size_t n;
    char *origins[CORS_MAX_ORIGINS]; /* normalised */
};

/* The headers a preflight may ask for, in their canonical spelling. */
/* chatd's own request headers, then those the official Anthropic and OpenAI
 * SDKs send from a browser (the Anthropic-compatible routes take x-api-key). */
static const char *const allowed_headers[] = {
    "Content-Type",        "Authorization",  "X-Request-Id",
    "Idempotency-Key",     "X-Session-Id",   "X-Api-Key",
    "Anthropic-Version",   "Anthropic-Beta", "Anthropic-Dangerous-Direct-Browser-Access",
    "OpenAI-Organization", "OpenAI-Project"
};
/* The SDKs' telemetry headers (x-stainless-os, -lang, -retry-count, ...): a
 * family that grows with their releases, allowed by prefix and echoed as
 * requested. chatd reads none of them. */
#define SDK_HEADER_PREFIX "x-stainless-"
#define SDK_HEADER_MAX 64 /* longest such name echoed */
#define N_ALLOWED_HEADERS (sizeof allowed_headers / sizeof allowed_headers[0])

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/*
 * Validates one origin entry (s, len bytes, not NUL-terminated) and writes its
 * normalised form into out (CORS_MAX_ORIGIN_LEN + 1 bytes). Returns false with
 * a reason in why (why_len bytes).
 */
static bool parse_origin(const char *s, size_t len, char *out, char *why, size_t why_len)
{
    size_t i = 0, o = 0;
    if (len > CORS_MAX_ORIGIN_LEN) {
        chat_set_err(why, why_len, "longer than %d bytes", CORS_MAX_ORIGIN_LEN);
        return false;
    }
    /* scheme */
    if (!is_alpha(s[0])) {
        chat_set_err(why, why_len, "must start with a scheme such as https://");
        return false;
    }
    while (i < len && (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
        out[o++] = lower(s[i++]);
    if (len - i < 3 || memcmp(s + i, "://", 3) != 0) {
        chat_set_err(why, why_len, "must be scheme://host[:port]");
        return false;
    }
    char scheme[CORS_MAX_ORIGIN_LEN + 1];
    memcpy(scheme, out, o);
    scheme[o] = '\0';
    memcpy(out + o, "://", 3);
    o += 3;
    i += 3;
    /* host */
    size_t host_start = i;
    if (i < len && s[i] == '[') {
        out[o++] = s[i++];
        while (i < len && (is_digit(s[i]) || (lower(s[i]) >= 'a' && lower(s[i]) <= 'f') || s[i] == ':' || s[i] == '.'))
            out[o++] = lower(s[i++]);
        if (i >= len || s[i] != ']' || i == host_start + 1) {
            chat_set_err(why, why_len, "has a malformed IPv6 literal");
            return false;
        }
        out[o++] = s[i++];
    } else {
        char prev = '.';
        while (i < len && (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '-' || s[i] == '.')) {
            if (s[i] == '.' && prev == '.') {
                chat_set_err(why, why_len, "has an empty label in its host");
                return false;
            }
            prev = s[i];
            out[o++] = lower(s[i++]);
        }
        if (i == host_start && i < len && s[i] == '*') {
            chat_set_err(why, why_len, "has a wildcard ('*' is only allowed alone, meaning any origin)");
            return false;
        }
        if (i == host_start) {
            chat_set_err(why, why_len, "has no host");
            return false;
        }
        if (prev == '.') {
            chat_set_err(why, why_len, "has a host ending with '.'");
            return false;
        }
    }
    /* port */
    if (i < len && s[i] == ':') {
        i++;
        size_t digits = 0;
        long port = 0;
        while (i < len && is_digit(s[i]) && digits < 6) {
            port = port * 10 + (s[i++] - '0');
            digits++;
        }
        if (digits == 0 || port < 1 || port > 65535 || (i < len && is_digit(s[i]))) {
            chat_set_err(why, why_len, "has a port that is not 1..65535");
            return false;
        }
        bool dflt = (strcmp(scheme, "http") == 0 && port == 80) || (strcmp(scheme, "https") == 0 && port == 443);
        if (!dflt)
            o += (size_t)snprintf(out + o, CORS_MAX_ORIGIN_LEN + 1 - o, ":%ld", port);
    }
    if (i < len) {
        if (s[i] == '/' && i + 1 == len)
            chat_set_err(why, why_len, "has a trailing slash (an origin has no path)");
        else if (s[i] == '/')
            chat_set_err(why, why_len, "has a path (an origin is scheme://host[:port] only)");
        else if (s[i] == '@')
            chat_set_err(why, why_len, "has user info (an origin is scheme://host[:port] only)");
        else if (s[i] == '?' || s[i] == '#')
            chat_set_err(why, why_len, "has a query or fragment (an origin is scheme://host[:port] only)");
        else if (s[i] == '*')
            chat_set_err(why, why_len, "has a wildcard ('*' is only allowed alone, meaning any origin)");
        else
            chat_set_err(why, why_len, "has an unexpected character '%c' in its host or port", s[i]);
        return false;
    }
    out[o] = '\0';
    return true;
}

chat_rc cors_policy_new(const char *origins, bool allow_credentials, int64_t max_age_s, cors_policy **out, char *err,
                        size_t errlen)
{
    chat_rc rc = CHAT_EINVAL;
    cors_policy *p = chat_xcalloc(1, sizeof *p);

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (max_age_s < 0 || max_age_s > 86400) {
        chat_set_err(err, errlen, "CORS max age %lld is not in 0..86400 seconds", (long long)max_age_s);
        goto out;
    }
    snprintf(p->max_age, sizeof p->max_age, "%lld", (long long)max_age_s);
    p->credentials = allow_credentials;

    const char *s = origins ? origins : "";
    bool any_entry = false;
    for (const char *q = s; *q; q++)
        if (*q != ' ' && *q != '\t')
            any_entry = true;
    if (!any_entry) {
        rc = CHAT_OK; /* disabled */
        goto out;
    }
    size_t index = 0;
    for (;;) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *e = s;
        while (len && (*e == ' ' || *e == '\t')) {
            e++;
            len--;
        }
        while (len && (e[len - 1] == ' ' || e[len - 1] == '\t'))
            len--;
        index++;
        if (len == 0) {
            chat_set_err(err, errlen, "CORS origin list has an empty entry (#%zu)", index);
            goto out;
        }
        if (len == 1 && e[0] == '*') {
            p->any = true;
        } else {
            char norm[CORS_MAX_ORIGIN_LEN + 1];
            char why[128];
            if (!parse_origin(e, len, norm, why, sizeof why)) {
                chat_set_err(err, errlen, "CORS origin \"%.*s\" %s", (int)(len > 80 ? 80 : len), e, why);
                goto out;
            }
            if (p->n == CORS_MAX_ORIGINS) {
                chat_set_err(err, errlen, "CORS origin list has more than %d entries", CORS_MAX_ORIGINS);
                goto out;
            }
            p->origins[p->n++] = chat_xstrdup(norm);
        }
        if (!end)
            break;
        s = end + 1;
    }
    if (p->any && p->n > 0) {
        chat_set_err(err, errlen, "CORS origin list mixes \"*\" with explicit origins: use one or the other");
        goto out;
    }
    if (p->any && allow_credentials) {
        chat_set_err(err, errlen,
                     "CORS origins \"*\" cannot be combined with credentials: list the allowed origins explicitly");
        goto out;
    }
    p->enabled = true;
    rc = CHAT_OK;
out:
    if (rc == CHAT_OK) {
        *out = p;
    } else {
        cors_policy_free(p);
    }
    return rc;
}

void cors_policy_free(cors_policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->origins[i]);
    free(p);
}

bool cors_enabled(const cors_policy *p)
{
    return p && p->enabled;
}

static void add(cors_result *r, const char *name, const char *value)
{
    if (r->n < CORS_MAX_HEADERS) {
        r->headers[r->n].name = name;
        r->headers[r->n].value = value;
        r->n++;
    }
}

/* The policy's copy of origin if it is allowed, "*" in any-origin mode, else NULL. */
static const char *match_origin(const cors_policy *p, const char *origin)
{
    if (p->any)
        return "*";
    for (size_t i = 0; i < p->n; i++)
        if (strcasecmp(p->origins[i], origin) == 0)
            return p->origins[i];
    return NULL;
}

static bool method_allowed(const char *m)
{
    static const char *const methods[] = { "GET", "HEAD", "POST", "DELETE" };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(m, methods[i]) == 0)
            return true;
    return false;
}

/* The next name of a comma-separated list at *s (spaces and tabs around it
 * left out): sets *name and returns its length, 0 at the end; advances *s. */
static size_t next_name(const char **s, const char **name)
{
    for (;;) {
        while (**s == ' ' || **s == '\t' || **s == ',')
            (*s)++;
        if (!**s)
            return 0;
        const char *start = *s;
        while (**s && **s != ',')
            (*s)++;
        size_t len = (size_t)(*s - start);
        while (len && (start[len - 1] == ' ' || start[len - 1] == '\t'))
            len--;
        if (len) {
            *name = start;
            return len;
        }
    }
}

/* Writes into buf the allowed headers among the comma-separated request list,
 * canonically spelled, each once, in the order of allowed_headers, then the
 * SDK telemetry headers as requested (those that fit in buf). */
static void filter_headers(const char *list, char *buf, size_t buflen)
{
    bool want[N_ALLOWED_HEADERS] = { false };
    const char *s = list, *name;
    size_t len;
    while ((len = next_name(&s, &name)) > 0)
        for (size_t i = 0; i < N_ALLOWED_HEADERS; i++)
            if (strlen(allowed_headers[i]) == len && strncasecmp(allowed_headers[i], name, len) == 0)
                want[i] = true;
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_ALLOWED_HEADERS; i++)
        if (want[i])
            used += (size_t)snprintf(buf + used, buflen - used, "%s%s", used ? ", " : "", allowed_headers[i]);
    size_t pre = strlen(SDK_HEADER_PREFIX);
    for (s = list; (len = next_name(&s, &name)) > 0;) {
        if (len <= pre || len > SDK_HEADER_MAX || strncasecmp(name, SDK_HEADER_PREFIX, pre) != 0)
            continue;
        bool token = true; /* a header name: letters, digits and '-' only */
        for (size_t k = pre; k < len && token; k++)
            token = is_alpha(name[k]) || (name[k] >= '0' && name[k] <= '9') || name[k] == '-';
        if (token && used + len + 2 < buflen)
            used += (size_t)snprintf(buf + used, buflen - used, "%s%.*s", used ? ", " : "", (int)len, name);
    }
}

cors_verdict cors_evaluate(const cors_policy *p, const char *method, const char *origin, const char *request_method,
                           const char *request_headers, cors_result *out)
{
    memset(out, 0, sizeof *out);
    out->verdict = CORS_NONE;
    if (!cors_enabled(p))
        return CORS_NONE;

    bool preflight = origin && method && strcmp(method, "OPTIONS") == 0 && request_method;
    if (preflight)
        add(out, "Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
    else
        add(out, "Vary", "Origin");
    if (!origin)
        return CORS_NONE;

    const char *allow_origin = match_origin(p, origin);
    if (preflight) {
        out->preflight = true;
        if (!allow_origin || !method_allowed(request_method)) {
            out->verdict = CORS_DENIED;
            out->preflight_status = 403;
            return CORS_DENIED;
        }
        out->verdict = CORS_ALLOWED;
        out->preflight_status = 204;
        add(out, "Access-Control-Allow-Origin", allow_origin);
        if (p->credentials)
            add(out, "Access-Control-Allow-Credentials", "true");
        add(out, "Access-Control-Allow-Methods", CORS_ALLOW_METHODS);
        filter_headers(request_headers ? request_headers : "", out->buf, sizeof out->buf);
        if (out->buf[0])
            add(out, "Access-Control-Allow-Headers", out->buf);
        add(out, "Access-Control-Max-Age", p->max_age);
        return CORS_ALLOWED;
    }
    if (!allow_origin) {
        out->verdict = CORS_DENIED;
        return CORS_DENIED;
    }
    out->verdict = CORS_ALLOWED;
    add(out, "Access-Control-Allow-Origin", allow_origin);
    if (p->credentials)
        add(out, "Access-Control-Allow-Credentials", "true");
    add(out, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
    return CORS_ALLOWED;
}
