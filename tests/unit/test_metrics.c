/*
 * test_metrics.c: unit tests for the metrics registry (src/core/metrics.h).
 *
 * Every rendering is read back by a small, strict parser of the Prometheus
 * text format 0.0.4 written here (HELP/TYPE lines, sample lines with escaped
 * label values, special float values), which also checks the structural
 * rules: one HELP and one TYPE per family, before its samples; histogram
 * buckets cumulative, ending with le="+Inf" equal to _count. Values are then
 * checked by looking samples up by name and labels.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/metrics.h"
#include "app/app.h"
#include "chat/metrics.h"
#include "core/metrics.h"
#include "guard/metrics.h"
#include "http/metrics.h"
#include "llm/metrics.h"
#include "store/metrics.h"

/* ---- a strict 0.0.4 parser ------------------------------------------------ */

#define MAXL 8

typedef struct sample {
    char *name;
    size_t nl;
    char *lname[MAXL];
    char *lval[MAXL];
    double value;
} sample;

typedef struct family_info {
    char *name;
    char *help;
    char *type;
    int nhelp, ntype;
} family_info;

typedef struct parsed {
    sample *s;
    size_t ns;
    family_info *f;
    size_t nf;
} parsed;

static family_info *fam_get(parsed *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->nf; i++)
        if (strlen(p->f[i].name) == len && strncmp(p->f[i].name, name, len) == 0)
            return &p->f[i];
    p->f = realloc(p->f, (p->nf + 1) * sizeof *p->f);
    assert_non_null(p->f);
    memset(&p->f[p->nf], 0, sizeof p->f[p->nf]);
    p->f[p->nf].name = strndup(name, len);
    return &p->f[p->nf++];
}

static size_t name_len(const char *s)
{
    size_t i = 0;
    while ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '_' || s[i] == ':' ||
           (i > 0 && s[i] >= '0' && s[i] <= '9'))
        i++;
    return i;
}

/* Unescapes src[0..n) of a HELP text ("\\\\", "\\n") or a label value (also "\\\""). */
static char *unescape(const char *src, size_t n, bool quotes)
{
    char *out = malloc(n + 1);
    assert_non_null(out);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] != '\\') {
            out[o++] = src[i];
            continue;
        }
        assert_true(i + 1 < n);
        char c = src[++i];
        if (c == '\\')
            out[o++] = '\\';
        else if (c == 'n')
            out[o++] = '\n';
        else if (c == '"' && quotes)
            out[o++] = '"';
        else
            fail_msg("bad escape \\%c", c);
    }
    out[o] = '\0';
    return out;
}

static double parse_value(const char *s, const char **end)
{
    if (strncmp(s, "+Inf", 4) == 0) {
        *end = s + 4;
        return INFINITY;
    }
    if (strncmp(s, "-Inf", 4) == 0) {
        *end = s + 4;
        return -INFINITY;
    }
    if (strncmp(s, "NaN", 3) == 0) {
        *end = s + 3;
        return NAN;
    }
    char *e;
    double v = strtod(s, &e);
    assert_true(e != s);
    *end = e;
    return v;
}

/* The family a sample belongs to: its name, or for histograms the name
 * without _bucket/_sum/_count. */
static family_info *family_of(parsed *p, const char *name)
{
    for (size_t i = 0; i < p->nf; i++)
        if (strcmp(p->f[i].name, name) == 0)
            return &p->f[i];
    static const char *suffixes[] = { "_bucket", "_sum", "_count" };
    for (size_t k = 0; k < 3; k++) {
        size_t n = strlen(name), sl = strlen(suffixes[k]);
        if (n > sl && strcmp(name + n - sl, suffixes[k]) == 0)
            for (size_t i = 0; i < p->nf; i++)
                if (strlen(p->f[i].name) == n - sl && strncmp(p->f[i].name, name, n - sl) == 0 && p->f[i].type &&
                    strcmp(p->f[i].type, "histogram") == 0)
                    return &p->f[i];
    }
    return NULL;
}

static void parse_text(const char *text, parsed *p)
{
    memset(p, 0, sizeof *p);
    const char *line = text;
    while (*line) {
        const char *nl = strchr(line, '\n');
        assert_non_null(nl); /* every line ends with \n, the last one too */
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            bool help = line[2] == 'H';
            const char *n = line + 7;
            size_t nlen = name_len(n);
            assert_true(nlen > 0);
            assert_int_equal(n[nlen], ' ');
            family_info *f = fam_get(p, n, nlen);
            const char *rest = n + nlen + 1;
            if (help) {
                f->nhelp++;
                f->help = unescape(rest, (size_t)(nl - rest), false);
            } else {
                f->ntype++;
                f->type = strndup(rest, (size_t)(nl - rest));
                assert_true(strcmp(f->type, "counter") == 0 || strcmp(f->type, "gauge") == 0 ||
                            strcmp(f->type, "histogram") == 0);
            }
        } else {
            assert_true(line[0] != '#');
            sample s = { 0 };
            size_t nlen = name_len(line);
            assert_true(nlen > 0);
            s.name = strndup(line, nlen);
            const char *q = line + nlen;
            if (*q == '{') {
                q++;
                while (*q != '}') {
                    size_t ln = name_len(q);
                    assert_true(ln > 0);
                    assert_true(s.nl < MAXL);
                    s.lname[s.nl] = strndup(q, ln);
                    q += ln;
                    assert_int_equal(q[0], '=');
                    assert_int_equal(q[1], '"');
                    q += 2;
                    const char *start = q;
                    while (*q != '"') {
                        assert_true(q < nl);
                        if (*q == '\\')
                            q++;
                        q++;
                    }
                    s.lval[s.nl++] = unescape(start, (size_t)(q - start), true);
                    q++;
                    if (*q == ',')
                        q++;
                    else
                        assert_int_equal(*q, '}');
                }
                q++;
            }
            assert_int_equal(*q, ' ');
            q++;
            const char *end;
            s.value = parse_value(q, &end);
            assert_ptr_equal(end, nl);
            family_info *f = family_of(p, s.name);
            assert_non_null(f); /* HELP/TYPE came before the samples */
            assert_non_null(f->type);
            p->s = realloc(p->s, (p->ns + 1) * sizeof *p->s);
            assert_non_null(p->s);
            p->s[p->ns++] = s;
        }
        line = nl + 1;
    }
    for (size_t i = 0; i < p->nf; i++) {
        assert_int_equal(p->f[i].nhelp, 1);
        assert_int_equal(p->f[i].ntype, 1);
    }
}

static void parsed_free(parsed *p)
{
    for (size_t i = 0; i < p->ns; i++) {
        free(p->s[i].name);
        for (size_t k = 0; k < p->s[i].nl; k++) {
            free(p->s[i].lname[k]);
            free(p->s[i].lval[k]);
        }
    }
    for (size_t i = 0; i < p->nf; i++) {
        free(p->f[i].name);
        free(p->f[i].help);
        free(p->f[i].type);
    }
    free(p->s);
    free(p->f);
}

/* Finds the one sample with this name and exactly these labels (NULL-terminated
 * name, value pairs); returns its index or -1. Fails if there are two. */
static long vfind(const parsed *p, const char *name, va_list ap)
{
    const char *want[2 * MAXL];
    size_t nw = 0;
    const char *k;
    while ((k = va_arg(ap, const char *)) != NULL) {
        want[nw++] = k;
        want[nw++] = va_arg(ap, const char *);
    }
    long found = -1;
    for (size_t i = 0; i < p->ns; i++) {
        const sample *s = &p->s[i];
        if (strcmp(s->name, name) != 0 || s->nl * 2 != nw)
            continue;
        bool ok = true;
        for (size_t j = 0; ok && j < nw; j += 2) {
            bool has = false;
            for (size_t l = 0; l < s->nl; l++)
                if (strcmp(s->lname[l], want[j]) == 0 && strcmp(s->lval[l], want[j + 1]) == 0)
                    has = true;
            ok = has;
        }
        if (ok) {
            assert_int_equal(found, -1);
            found = (long)i;
        }
    }
    return found;
}

static double value_of(const parsed *p, const char *name, ...)
{
    va_list ap;
    va_start(ap, name);
    long i = vfind(p, name, ap);
    va_end(ap);
    if (i < 0)
        fail_msg("no sample %s", name);
    return p->s[i].value;
}

static bool has_sample(const parsed *p, const char *name, ...)
{
    va_list ap;
    va_start(ap, name);
    long i = vfind(p, name, ap);
    va_end(ap);
    return i >= 0;
}

static size_t count_samples(const parsed *p, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < p->ns; i++)
        n += strcmp(p->s[i].name, name) == 0;
    return n;
}

static void render_parse(metrics_registry *reg, parsed *p)
{
    size_t len = 0;
    char *text = metrics_registry_render(reg, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    parse_text(text, p);
    free(text);
}

/* ---- tests ------------------------------------------------------------------ */

static const double b3[] = { 0.1, 0.5, 1 };

static void test_register_validation(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *f = NULL;
    static const double bad_order[] = { 1, 0.5 };
    static const double dup[] = { 1, 1 };
    const double inf[] = { 1, INFINITY };
    const struct {
        metrics_desc d;
        chat_rc want;
    } cases[] = {
        { { METRICS_COUNTER, "ok_total", "h", { NULL }, 0, NULL, 0 }, CHAT_OK },
        { { METRICS_COUNTER, "ok_total", "h", { NULL }, 0, NULL, 0 }, CHAT_EINVAL }, /* duplicate */
        { { METRICS_COUNTER, "9starts_with_digit", "h", { NULL }, 0, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "has-dash", "h", { NULL }, 0, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "", "h", { NULL }, 0, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "ns:colon_ok", "h", { NULL }, 0, NULL, 0 }, CHAT_OK },
        { { METRICS_COUNTER, "lbl_total", "h", { "a" }, 0, NULL, 0 }, CHAT_EINVAL }, /* max_children 0 */
        { { METRICS_COUNTER, "lbl_total", "h", { "a" }, METRICS_MAX_CHILDREN + 1, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "lbl_total", "h", { "__a" }, 4, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "lbl_total", "h", { "a:b" }, 4, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "lbl_total", "h", { "a", "a" }, 4, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_COUNTER, "lbl_total", "h", { "a", "b" }, 4, NULL, 0 }, CHAT_OK },
        { { METRICS_HISTOGRAM, "h1", "h", { "le" }, 4, b3, 3 }, CHAT_EINVAL },
        { { METRICS_HISTOGRAM, "h2", "h", { NULL }, 0, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_HISTOGRAM, "h3", "h", { NULL }, 0, bad_order, 2 }, CHAT_EINVAL },
        { { METRICS_HISTOGRAM, "h4", "h", { NULL }, 0, dup, 2 }, CHAT_EINVAL },
        { { METRICS_HISTOGRAM, "h5", "h", { NULL }, 0, inf, 2 }, CHAT_EINVAL },
        { { METRICS_HISTOGRAM, "h6", "h", { NULL }, 0, b3, 3 }, CHAT_OK },
        { { (metrics_type)0, "t0", "h", { NULL }, 0, NULL, 0 }, CHAT_EINVAL },
        { { METRICS_GAUGE, "nohelp", NULL, { NULL }, 0, NULL, 0 }, CHAT_EINVAL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_rc rc = metrics_register(reg, &cases[i].d, &f);
        if (rc != cases[i].want)
            fail_msg("case %zu (%s): got %d, want %d", i, cases[i].d.name, rc, cases[i].want);
        if (rc == CHAT_OK)
            assert_non_null(f);
        else
            assert_null(f);
    }
    metrics_registry_free(reg);
    metrics_registry_free(NULL);
}

/* ---- concurrency ---- */

#define THREADS 8
#define ITERS 20000

typedef struct {
    metrics_family *counter, *gauge, *hist;
    int id;
} worker_arg;

static void *hammer(void *argp)
{
    worker_arg *a = argp;
    char mine[16];
    snprintf(mine, sizeof mine, "t%d", a->id);
    for (int i = 0; i < ITERS; i++) {
        /* Shared children (created lazily by whichever thread comes first)
         * and one child per thread. */
        const char *shared[2] = { "GET", i % 2 ? "200" : "500" };
        metrics_counter_add(metrics_child_get(a->counter, shared), 1);
        const char *own[2] = { mine, "x" };
        metrics_counter_add(metrics_child_get(a->counter, own), 2);
        metrics_gauge_add(metrics_child_get(a->gauge, NULL), 1);
        metrics_gauge_add(metrics_child_get(a->gauge, NULL), i % 3 == 0 ? -1 : 0);
        /* 0.25 and 0.5 are exact in binary, so the sum must be exact too. */
        metrics_histogram_observe(metrics_child_get(a->hist, NULL), i % 2 ? 0.25 : 0.5);
    }
    return NULL;
}

static void test_concurrent_exact(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *c, *g, *h;
    metrics_desc dc = { METRICS_COUNTER, "req_total", "r", { "method", "status" }, 64, NULL, 0 };
    metrics_desc dg = { METRICS_GAUGE, "g", "g", { NULL }, 0, NULL, 0 };
    metrics_desc dh = { METRICS_HISTOGRAM, "h_seconds", "h", { NULL }, 0, b3, 3 };
    assert_int_equal(metrics_register(reg, &dc, &c), CHAT_OK);
    assert_int_equal(metrics_register(reg, &dg, &g), CHAT_OK);
    assert_int_equal(metrics_register(reg, &dh, &h), CHAT_OK);

    pthread_t t[THREADS];
    worker_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (worker_arg){ c, g, h, i };
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
    }
    /* Render concurrently with the writers: must always parse. */
    for (int i = 0; i < 20; i++) {
        parsed p;
        render_parse(reg, &p);
        parsed_free(&p);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);

    const char *v200[2] = { "GET", "200" }, *v500[2] = { "GET", "500" };
    assert_int_equal(metrics_counter_value(metrics_child_get(c, v200)), THREADS * ITERS / 2);
    assert_int_equal(metrics_counter_value(metrics_child_get(c, v500)), THREADS * ITERS / 2);
    assert_int_equal(metrics_family_children(c), 2 + THREADS);
    int64_t minus = (ITERS + 2) / 3; /* i % 3 == 0 for i in 0..ITERS-1 */
    assert_int_equal(metrics_gauge_value(metrics_child_get(g, NULL)), THREADS * (ITERS - minus));
    double sum = 0;
    assert_int_equal(metrics_histogram_count(metrics_child_get(h, NULL), &sum), THREADS * ITERS);
    assert_true(sum == THREADS * (ITERS / 2) * 0.75);

    parsed p;
    render_parse(reg, &p);
    assert_true(value_of(&p, "req_total", "method", "GET", "status", "200", NULL) == THREADS * ITERS / 2);
    for (int i = 0; i < THREADS; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%d", i);
        assert_true(value_of(&p, "req_total", "method", id, "status", "x", NULL) == 2.0 * ITERS);
    }
    assert_true(value_of(&p, "h_seconds_count", NULL) == THREADS * ITERS);
    assert_true(value_of(&p, "h_seconds_bucket", "le", "0.1", NULL) == 0);
    assert_true(value_of(&p, "h_seconds_bucket", "le", "0.5", NULL) == THREADS * ITERS);
    assert_true(value_of(&p, "h_seconds_sum", NULL) == THREADS * (ITERS / 2) * 0.75);
    parsed_free(&p);
    metrics_registry_free(reg);
}

/* ---- histogram buckets ---- */

static void test_histogram_boundaries(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *h;
    metrics_desc d = { METRICS_HISTOGRAM, "lat_seconds", "Latency.", { "route" }, 4, b3, 3 };
    assert_int_equal(metrics_register(reg, &d, &h), CHAT_OK);
    const char *r[1] = { "/x" };
    metrics_child *c = metrics_child_get(h, r);
    /* bounds are inclusive: a value equal to a bound belongs to that bucket */
    const double obs[] = { 0.1, nextafter(0.1, 1), 0.5, 1.0, nextafter(1.0, 2), -3, 0, INFINITY, NAN, 1e300 };
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
        metrics_histogram_observe(c, obs[i]);
    /* le=0.1: 0.1, -3, 0 -> 3; le=0.5: + 0.1+ulp, 0.5 -> 5; le=1: + 1.0 -> 6;
     * +Inf: + 1+ulp, Inf, 1e300 -> 9 (NaN ignored) */
    parsed p;
    render_parse(reg, &p);
    assert_true(value_of(&p, "lat_seconds_bucket", "route", "/x", "le", "0.1", NULL) == 3);
    assert_true(value_of(&p, "lat_seconds_bucket", "route", "/x", "le", "0.5", NULL) == 5);
    assert_true(value_of(&p, "lat_seconds_bucket", "route", "/x", "le", "1", NULL) == 6);
    assert_true(value_of(&p, "lat_seconds_bucket", "route", "/x", "le", "+Inf", NULL) == 9);
    assert_true(value_of(&p, "lat_seconds_count", "route", "/x", NULL) == 9);
    assert_true(isinf(value_of(&p, "lat_seconds_sum", "route", "/x", NULL)));
    assert_int_equal(count_samples(&p, "lat_seconds_bucket"), 4);
    /* order: buckets in increasing le, then _sum, then _count */
    size_t first = 0;
    while (strcmp(p.s[first].name, "lat_seconds_bucket") != 0)
        first++;
    const char *les[] = { "0.1", "0.5", "1", "+Inf" };
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(p.s[first + i].lval[1], les[i]);
    assert_string_equal(p.s[first + 4].name, "lat_seconds_sum");
    assert_string_equal(p.s[first + 5].name, "lat_seconds_count");
    parsed_free(&p);

    /* A finite sum is rendered so that it reads back exactly. */
    metrics_family *h2;
    metrics_desc d2 = { METRICS_HISTOGRAM, "x_seconds", "X.", { NULL }, 0, b3, 3 };
    assert_int_equal(metrics_register(reg, &d2, &h2), CHAT_OK);
    metrics_histogram_observe(metrics_child_get(h2, NULL), 0.1);
    metrics_histogram_observe(metrics_child_get(h2, NULL), 0.2);
    render_parse(reg, &p);
    assert_true(value_of(&p, "x_seconds_sum", NULL) == 0.1 + 0.2);
    assert_true(value_of(&p, "x_seconds_bucket", "le", "0.1", NULL) == 1);
    parsed_free(&p);
    metrics_registry_free(reg);
}

/* ---- number formatting ---- */

static void test_number_format(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *h;
    static const double b[] = { 0.00001, 0.0001, 0.005, 1, 10, 300, 1e15, 1e20 };
    metrics_desc d = { METRICS_HISTOGRAM, "n", "n", { NULL }, 0, b, sizeof b / sizeof b[0] };
    assert_int_equal(metrics_register(reg, &d, &h), CHAT_OK);
    metrics_histogram_observe(metrics_child_get(h, NULL), 123.456);
    char *text = metrics_registry_render(reg, NULL);
    const char *want[] = { "n_bucket{le=\"1e-05\"} 0\n",
                           "n_bucket{le=\"0.0001\"} 0\n",
                           "n_bucket{le=\"0.005\"} 0\n",
                           "n_bucket{le=\"1\"} 0\n",
                           "n_bucket{le=\"10\"} 0\n",
                           "n_bucket{le=\"300\"} 1\n",
                           "n_bucket{le=\"1e+15\"} 1\n",
                           "n_bucket{le=\"1e+20\"} 1\n",
                           "n_bucket{le=\"+Inf\"} 1\n",
                           "n_sum 123.456\n",
                           "n_count 1\n" };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i]))
            fail_msg("missing %s in:\n%s", want[i], text);
    free(text);
    metrics_registry_free(reg);
}

/* ---- escaping ---- */

static void test_label_escaping(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *f;
    metrics_desc d = {
        METRICS_COUNTER, "esc_total", "Help with \\ backslash\nand newline \"quoted\".", { "v" }, 16, NULL, 0
    };
    assert_int_equal(metrics_register(reg, &d, &f), CHAT_OK);
    const char *values[] = { "plain", "back\\slash", "quo\"te", "new\nline", "all \\\"\n", "", "{}=,#", "caf\xc3\xa9" };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        metrics_counter_add(metrics_child_get(f, &values[i]), i + 1);
    const char *nullv[1] = { NULL };
    metrics_counter_add(metrics_child_get(f, nullv), 100); /* NULL is "" */
    const char *bad[1] = { "bad\xff\xc3)" };               /* invalid UTF-8 -> '?' */
    metrics_counter_add(metrics_child_get(f, bad), 1000);
    char longv[300];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    const char *lv[1] = { longv };
    metrics_counter_add(metrics_child_get(f, lv), 5000);

    size_t len;
    char *text = metrics_registry_render(reg, &len);
    /* the raw escapes, exactly */
    assert_non_null(strstr(text, "# HELP esc_total Help with \\\\ backslash\\nand newline \"quoted\".\n"));
    assert_non_null(strstr(text, "esc_total{v=\"back\\\\slash\"} 2\n"));
    assert_non_null(strstr(text, "esc_total{v=\"quo\\\"te\"} 3\n"));
    assert_non_null(strstr(text, "esc_total{v=\"new\\nline\"} 4\n"));
    assert_non_null(strstr(text, "esc_total{v=\"all \\\\\\\"\\n\"} 5\n"));
    free(text);

    parsed p;
    render_parse(reg, &p);
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        if (i != 5)
            assert_true(value_of(&p, "esc_total", "v", values[i], NULL) == (double)(i + 1));
    assert_true(value_of(&p, "esc_total", "v", "", NULL) == 6 + 100);
    assert_true(value_of(&p, "esc_total", "v",
                         "bad?"
                         "?)",
                         NULL) == 1000);
    longv[METRICS_MAX_VALUE_LEN] = '\0';
    assert_true(value_of(&p, "esc_total", "v", longv, NULL) == 5000);
    assert_string_equal(p.f[0].help, d.help);
    parsed_free(&p);

    /* A multi-byte character cut by the length limit becomes '?', never half a character. */
    metrics_family *f2;
    metrics_desc d2 = { METRICS_GAUGE, "cut", "c", { "v" }, 4, NULL, 0 };
    assert_int_equal(metrics_register(reg, &d2, &f2), CHAT_OK);
    char cut[METRICS_MAX_VALUE_LEN + 2];
    memset(cut, 'b', METRICS_MAX_VALUE_LEN - 1);
    cut[METRICS_MAX_VALUE_LEN - 1] = '\xc3';
    cut[METRICS_MAX_VALUE_LEN] = '\xa9';
    cut[METRICS_MAX_VALUE_LEN + 1] = '\0';
    const char *cv[1] = { cut };
    metrics_gauge_set(metrics_child_get(f2, cv), -7);
    render_parse(reg, &p);
    cut[METRICS_MAX_VALUE_LEN - 1] = '?';
    cut[METRICS_MAX_VALUE_LEN] = '\0';
    assert_true(value_of(&p, "cut", "v", cut, NULL) == -7);
    parsed_free(&p);
    metrics_registry_free(reg);
}

/* ---- the bound on label combinations ---- */

static void test_children_bound(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *f;
    metrics_desc d = { METRICS_COUNTER, "b_total", "b", { "route", "status" }, 4, NULL, 0 };
    assert_int_equal(metrics_register(reg, &d, &f), CHAT_OK);
    for (int i = 0; i < 10; i++) {
        char route[16];
        snprintf(route, sizeof route, "/r%d", i);
        const char *v[2] = { route, "200" };
        metrics_counter_add(metrics_child_get(f, v), 1);
    }
    /* 4 regular children + the overflow child, whatever comes next */
    assert_int_equal(metrics_family_children(f), 5);
    for (int i = 0; i < 1000; i++) {
        char route[16];
        snprintf(route, sizeof route, "/z%d", i);
        const char *v[2] = { route, "404" };
        metrics_counter_add(metrics_child_get(f, v), 1);
    }
    assert_int_equal(metrics_family_children(f), 5);
    /* existing children keep counting */
    const char *v0[2] = { "/r0", "200" };
    metrics_counter_add(metrics_child_get(f, v0), 1);

    parsed p;
    render_parse(reg, &p);
    assert_int_equal(count_samples(&p, "b_total"), 5);
    assert_true(value_of(&p, "b_total", "route", "/r0", "status", "200", NULL) == 2);
    assert_true(value_of(&p, "b_total", "route", "/r3", "status", "200", NULL) == 1);
    assert_false(has_sample(&p, "b_total", "route", "/r4", "status", "200", NULL));
    assert_true(value_of(&p, "b_total", "route", "other", "status", "other", NULL) == 6 + 1000);
    parsed_free(&p);

    /* A regular child that is already all "other" is the overflow child: never two identical series. */
    metrics_family *g;
    metrics_desc dg = { METRICS_COUNTER, "o_total", "o", { "k" }, 2, NULL, 0 };
    assert_int_equal(metrics_register(reg, &dg, &g), CHAT_OK);
    const char *o[1] = { "other" }, *a[1] = { "a" }, *b[1] = { "b" };
    metrics_counter_add(metrics_child_get(g, o), 1);
    metrics_counter_add(metrics_child_get(g, a), 1);
    metrics_counter_add(metrics_child_get(g, b), 1); /* overflow */
    assert_int_equal(metrics_family_children(g), 2);
    render_parse(reg, &p);
    assert_true(value_of(&p, "o_total", "k", "other", NULL) == 2);
    parsed_free(&p);
    metrics_registry_free(reg);
}

typedef struct {
    metrics_family *f;
    int id;
} bound_arg;

static void *bound_worker(void *argp)
{
    bound_arg *a = argp;
    for (int i = 0; i < 2000; i++) {
        char v[32];
        snprintf(v, sizeof v, "k%d", (i * 7 + a->id * 13) % 300);
        const char *vals[1] = { v };
        metrics_counter_add(metrics_child_get(a->f, vals), 1);
    }
    return NULL;
}

static void test_children_bound_concurrent(void **state)
{
    (void)state;
    metrics_registry *reg = metrics_registry_new();
    metrics_family *f;
    metrics_desc d = { METRICS_COUNTER, "cb_total", "cb", { "k" }, 50, NULL, 0 };
    assert_int_equal(metrics_register(reg, &d, &f), CHAT_OK);
    pthread_t t[THREADS];
    bound_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (bound_arg){ f, i };
        assert_int_equal(pthread_create(&t[i], NULL, bound_worker, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(metrics_family_children(f), 51);
    parsed p;
    render_parse(reg, &p);
    assert_int_equal(count_samples(&p, "cb_total"), 51);
    double total = 0;
    for (size_t i = 0; i < p.ns; i++) {
        total += p.s[i].value;
        for (size_t j = 0; j < i; j++) /* no duplicate series */
            assert_string_not_equal(p.s[i].lval[0], p.s[j].lval[0]);
    }
    assert_true(total == THREADS * 2000);
    parsed_free(&p);
    metrics_registry_free(reg);
}

/* ---- chatd's own metrics: the families of the modules, on the page app/metrics.c lists ---- */

static void test_chatd_metrics(void **state)
{
    (void)state;
    /* Before init: no-ops, empty rendering. */
    metrics_http_request("/v1/chat", "POST", 200, 0.1);
    metrics_turn(METRICS_TURN_OK);
    assert_null(metrics_global());
    char *empty = metrics_render(NULL);
    assert_string_equal(empty, "");
    free(empty);

    assert_int_equal(chat_app_metrics_init("1.2.3"), CHAT_OK);
    assert_int_equal(chat_app_metrics_init("again"), CHAT_EINVAL);
    assert_non_null(metrics_global());

    metrics_http_request("/v1/chat", "POST", 200, 0.2);
    metrics_http_request("/v1/chat", "POST", 200, 0.02);
    metrics_http_request("/v1/chat", "POST", 429, 0.001);
    metrics_http_request(NULL, "GET", 404, 0.0001);
    metrics_provider_request("anthropic", 3.0, 0.4);
    metrics_provider_request("anthropic", 1.0, -1);
    metrics_provider_error("anthropic", "http_529");
    metrics_provider_retries("anthropic", 2);
    metrics_provider_retries("anthropic", 0);
    metrics_tokens(100, 20, 5, -1);
    metrics_tokens(1, 2, 3, 4);
    metrics_cost_microdollars(1500);
    metrics_cost_microdollars(-5);
    metrics_active_streams_add(1);
    metrics_active_streams_add(1);
    metrics_active_streams_add(-1);
    metrics_connections_open_add(1);
    metrics_connections_open_add(1);
    metrics_connections_open_add(1);
    metrics_connections_open_add(-1);
    metrics_connections_refused();
    metrics_auth_key_lookup(METRICS_AUTH_CACHED);
    metrics_auth_key_lookup(METRICS_AUTH_CACHED);
    metrics_auth_key_lookup(METRICS_AUTH_VALID);
    metrics_auth_key_lookup(METRICS_AUTH_RESULT_COUNT); /* out of range: ignored */
    metrics_rate_limited(METRICS_RL_AUTH_FAILURES);
    metrics_db_operation("turn_commit", 0.002);
    metrics_rate_limited(METRICS_RL_TOKENS);
    metrics_turn_cancelled(METRICS_CANCEL_CLIENT_GONE);
    metrics_turn(METRICS_TURN_OK);
    metrics_turn(METRICS_TURN_CANCELLED);
    metrics_turn(METRICS_TURN_CANCELLED);

    size_t len;
    char *text = metrics_render(&len);
    parsed p;
    parse_text(text, &p);
    free(text);

    const struct {
        const char *name, *type;
    } want[] = {
        { "chatd_build_info", "gauge" },
        { "chatd_http_requests_total", "counter" },
        { "chatd_http_request_duration_seconds", "histogram" },
        { "chatd_provider_request_duration_seconds", "histogram" },
        { "chatd_provider_ttft_seconds", "histogram" },
        { "chatd_provider_errors_total", "counter" },
        { "chatd_provider_retries_total", "counter" },
        { "chatd_tokens_total", "counter" },
        { "chatd_cost_microdollars_total", "counter" },
        { "chatd_active_streams", "gauge" },
        { "chatd_db_operation_duration_seconds", "histogram" },
        { "chatd_rate_limited_total", "counter" },
        { "chatd_turns_cancelled_total", "counter" },
        { "chatd_turns_total", "counter" },
        { "chatd_db_unavailable_total", "counter" },
        { "chatd_ratelimit_redis_fallback_total", "counter" },
        { "chatd_connections_open", "gauge" },
        { "chatd_connections_refused_total", "counter" },
        { "chatd_auth_key_lookups_total", "counter" },
        { "chatd_history_cache_reads_total", "counter" },
        { "chatd_history_cache_bytes", "gauge" },
    };
    assert_int_equal(p.nf, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(p.f[i].name, want[i].name);
        assert_string_equal(p.f[i].type, want[i].type);
        assert_true(strlen(p.f[i].help) > 10);
    }
    assert_true(value_of(&p, "chatd_build_info", "version", "1.2.3", NULL) == 1);
    assert_true(
        value_of(&p, "chatd_http_requests_total", "route", "/v1/chat", "method", "POST", "status", "200", NULL) == 2);
    assert_true(
        value_of(&p, "chatd_http_requests_total", "route", "/v1/chat", "method", "POST", "status", "429", NULL) == 1);
    assert_true(
        value_of(&p, "chatd_http_requests_total", "route", "unmatched", "method", "GET", "status", "404", NULL) == 1);
    assert_true(value_of(&p, "chatd_http_request_duration_seconds_count", "route", "/v1/chat", NULL) == 3);
    assert_true(value_of(&p, "chatd_http_request_duration_seconds_bucket", "route", "/v1/chat", "le", "0.005", NULL) ==
                1);
    assert_true(value_of(&p, "chatd_http_request_duration_seconds_bucket", "route", "/v1/chat", "le", "0.025", NULL) ==
                2);
    assert_true(value_of(&p, "chatd_provider_request_duration_seconds_count", "provider", "anthropic", NULL) == 2);
    assert_true(value_of(&p, "chatd_provider_request_duration_seconds_sum", "provider", "anthropic", NULL) == 4);
    assert_true(value_of(&p, "chatd_provider_ttft_seconds_count", "provider", "anthropic", NULL) == 1);
    assert_true(value_of(&p, "chatd_provider_errors_total", "provider", "anthropic", "type", "http_529", NULL) == 1);
    assert_true(value_of(&p, "chatd_provider_retries_total", "provider", "anthropic", NULL) == 2);
    assert_true(value_of(&p, "chatd_tokens_total", "direction", "input", NULL) == 101);
    assert_true(value_of(&p, "chatd_tokens_total", "direction", "output", NULL) == 22);
    assert_true(value_of(&p, "chatd_tokens_total", "direction", "cache_read", NULL) == 8);
    assert_true(value_of(&p, "chatd_tokens_total", "direction", "cache_write", NULL) == 4);
    assert_true(value_of(&p, "chatd_cost_microdollars_total", NULL) == 1500);
    assert_true(value_of(&p, "chatd_active_streams", NULL) == 1);
    assert_true(value_of(&p, "chatd_connections_open", NULL) == 2);
    assert_true(value_of(&p, "chatd_connections_refused_total", NULL) == 1);
    assert_true(value_of(&p, "chatd_auth_key_lookups_total", "result", "cached_invalid", NULL) == 2);
    assert_true(value_of(&p, "chatd_auth_key_lookups_total", "result", "valid", NULL) == 1);
    assert_true(value_of(&p, "chatd_auth_key_lookups_total", "result", "invalid", NULL) == 0);
    assert_true(value_of(&p, "chatd_auth_key_lookups_total", "result", "limited", NULL) == 0);
    assert_true(value_of(&p, "chatd_rate_limited_total", "kind", "auth_failures", NULL) == 1);
    assert_true(value_of(&p, "chatd_db_operation_duration_seconds_count", "op", "turn_commit", NULL) == 1);
    assert_true(value_of(&p, "chatd_rate_limited_total", "kind", "tokens", NULL) == 1);
    assert_true(value_of(&p, "chatd_rate_limited_total", "kind", "requests", NULL) == 0);
    assert_true(value_of(&p, "chatd_turns_cancelled_total", "reason", "client_disconnect", NULL) == 1);
    assert_true(value_of(&p, "chatd_turns_cancelled_total", "reason", "shutdown", NULL) == 0);
    assert_true(value_of(&p, "chatd_turns_total", "outcome", "ok", NULL) == 1);
    assert_true(value_of(&p, "chatd_turns_total", "outcome", "cancelled", NULL) == 2);
    assert_true(value_of(&p, "chatd_turns_total", "outcome", "error", NULL) == 0);
    parsed_free(&p);

    metrics_shutdown();
    assert_null(metrics_global());
    metrics_turn(METRICS_TURN_OK); /* no-op again */
    metrics_shutdown();
    assert_int_equal(chat_app_metrics_init(NULL), CHAT_OK);
    text = metrics_render(NULL);
    assert_non_null(strstr(text, "chatd_build_info{version=\"unknown\"} 1\n"));
    free(text);
    metrics_shutdown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_validation),
        cmocka_unit_test(test_concurrent_exact),
        cmocka_unit_test(test_histogram_boundaries),
        cmocka_unit_test(test_number_format),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_children_bound),
        cmocka_unit_test(test_children_bound_concurrent),
        cmocka_unit_test(test_chatd_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
