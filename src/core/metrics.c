/*
 * metrics.c: the metrics registry, and the process-wide one on which the
 * modules register the families they define (metrics_def).
 *
 * Children are found through a per-family open-addressed table of
 * _Atomic(metrics_child *) slots, sized at registration to at least twice the
 * largest number of children the family can ever hold (max_children plus the
 * overflow child), so it never needs resizing and probing always ends on an
 * empty slot. A child is fully built before its pointer is stored with
 * release order; readers load with acquire order, so a reader that sees the
 * pointer sees the child's immutable label values. Slots are never cleared,
 * hence a lock-free reader can never observe a freed child. Writers (creating
 * a child) serialise on the family's mutex and re-probe under it, so a
 * combination is never created twice.
 *
 * Creation order is kept in a separate array (fixed size, written under the
 * mutex, its length published atomically) so that rendering is deterministic.
 *
 * Histogram sums are doubles stored as their bit pattern in an _Atomic
 * uint64_t and updated with a compare-and-swap loop (C11 has no atomic add
 * on floating types). Bucket counters are per bucket (not cumulative) so one
 * observation touches one bucket; rendering accumulates them.
 */
#define _GNU_SOURCE
#include "core/metrics.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/util.h"
#include "core/buf.h"

struct metrics_child {
    metrics_family *fam;              /* owner (for the type check and the bucket bounds) */
    uint64_t hash;                    /* hash of the normalised label values */
    char *values[METRICS_MAX_LABELS]; /* normalised label values, immutable once published */
    _Atomic uint64_t counter;         /* METRICS_COUNTER */
    _Atomic int64_t gauge;            /* METRICS_GAUGE */
    _Atomic uint64_t *buckets;        /* METRICS_HISTOGRAM: nbuckets + 1 (last is +Inf), not cumulative */
    _Atomic uint64_t sum_bits;        /* METRICS_HISTOGRAM: the sum, as the bits of a double */
};

struct metrics_family {
    metrics_type type;
    const char *name;                       /* borrowed from the descriptor */
    const char *help;                       /* borrowed */
    const char *labels[METRICS_MAX_LABELS]; /* borrowed */
    size_t nlabels;
    size_t max_children; /* regular children before overflow */
    double *bounds;      /* histograms: finite upper bounds */
    char (*le)[32];      /* histograms: the bounds as rendered in le="..." */
    size_t nbounds;
    size_t nslots;                     /* power of two, >= 2 * (max_children + 1) */
    _Atomic(metrics_child *) *slots;   /* the lookup table */
    metrics_child **order;             /* creation order, max_children + 1 entries */
    _Atomic size_t norder;             /* published length of order */
    size_t nregular;                   /* regular children created (under mu) */
    _Atomic(metrics_child *) overflow; /* the "other" child once the family is full */
    pthread_mutex_t mu;                /* serialises child creation only */
    metrics_family *next;              /* registration order */
};

struct metrics_registry {
    metrics_family *first;
    metrics_family *last;
};

/* ---- small helpers --------------------------------------------------------- */

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (!s || !*s || strncmp(s, "__", 2) == 0)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* Copies v into out (METRICS_MAX_VALUE_LEN + 1 bytes): NULL -> "", cut at
 * METRICS_MAX_VALUE_LEN bytes, invalid UTF-8 bytes -> '?'. A sequence cut by
 * the length limit counts as invalid, so the result is always valid UTF-8. */
static void normalise_value(const char *v, char *out)
{
    size_t n = 0;
    if (v) {
        size_t len = strnlen(v, METRICS_MAX_VALUE_LEN);
        const unsigned char *s = (const unsigned char *)v;
        size_t i = 0;
        while (i < len) {
            size_t k = chat_utf8_seq(s + i, len - i);
            if (k == 0) {
                out[n++] = '?';
                i++;
            } else {
                memcpy(out + n, s + i, k);
                n += k;
                i += k;
            }
        }
    }
    out[n] = '\0';
}

/* The shortest decimal text that reads back as exactly d, in plain notation
 * for magnitudes 1e-4 .. 1e15 ("10", "0.005", as the Go client prints "le"
 * values, which are strings to Prometheus: "1e+01" would be another series),
 * exponent notation outside, and the format's spellings of the special
 * values. out holds 32 bytes (%.17g and %.*f in that range need less). */
static void format_double(char out[32], double d)
{
    if (isnan(d)) {
        memcpy(out, "NaN", 4);
        return;
    }
    if (isinf(d)) {
        memcpy(out, d > 0 ? "+Inf" : "-Inf", 5);
        return;
    }
    if (d == 0) {
        memcpy(out, "0", 2);
        return;
    }
    int digits = 1;
    for (; digits < 17; digits++) {
        snprintf(out, 32, "%.*e", digits - 1, d);
        if (strtod(out, NULL) == d)
            break;
    }
    snprintf(out, 32, "%.*e", digits - 1, d);
    int exp10 = atoi(strchr(out, 'e') + 1);
    if (exp10 >= -4 && exp10 < 15) {
        int decimals = digits - 1 - exp10;
        snprintf(out, 32, "%.*f", decimals > 0 ? decimals : 0, d);
    }
}

/* FNV-1a over the values, each followed by 0xff (a byte valid UTF-8 never contains). */
static uint64_t hash_values(char vals[][METRICS_MAX_VALUE_LEN + 1], size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)vals[i]; *p; p++) {
            h ^= *p;
            h *= 0x100000001b3ULL;
        }
        h ^= 0xff;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static bool same_values(const metrics_child *c, char vals[][METRICS_MAX_VALUE_LEN + 1], size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(c->values[i], vals[i]) != 0)
            return false;
    return true;
}

/* Lock-free probe: the child with these values, or NULL. */
static metrics_child *probe(metrics_family *f, uint64_t h, char vals[][METRICS_MAX_VALUE_LEN + 1])
{
    size_t mask = f->nslots - 1;
    for (size_t i = 0; i < f->nslots; i++) {
        metrics_child *c = atomic_load_explicit(&f->slots[(h + i) & mask], memory_order_acquire);
        if (!c)
            return NULL;
        if (c->hash == h && same_values(c, vals, f->nlabels))
            return c;
    }
    return NULL;
}

/* Builds a child and publishes it (caller holds f->mu, or is registering). */
static metrics_child *create_child(metrics_family *f, uint64_t h, char vals[][METRICS_MAX_VALUE_LEN + 1])
{
    metrics_child *c = chat_xcalloc(1, sizeof *c);
    c->fam = f;
    c->hash = h;
    for (size_t i = 0; i < f->nlabels; i++)
        c->values[i] = chat_xstrdup(vals[i]);
    atomic_init(&c->counter, 0);
    atomic_init(&c->gauge, 0);
    atomic_init(&c->sum_bits, 0); /* the bits of +0.0 */
    if (f->type == METRICS_HISTOGRAM) {
        c->buckets = chat_xcalloc(f->nbounds + 1, sizeof *c->buckets);
        for (size_t i = 0; i <= f->nbounds; i++)
            atomic_init(&c->buckets[i], 0);
    }
    size_t mask = f->nslots - 1;
    size_t i = 0;
    /* The table always has a free slot: nslots >= 2 * (max_children + 1). */
    while (atomic_load_explicit(&f->slots[(h + i) & mask], memory_order_relaxed))
        i++;
    size_t n = atomic_load_explicit(&f->norder, memory_order_relaxed);
    f->order[n] = c;
    atomic_store_explicit(&f->slots[(h + i) & mask], c, memory_order_release);
    atomic_store_explicit(&f->norder, n + 1, memory_order_release);
    return c;
}

static void free_child(metrics_child *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < METRICS_MAX_LABELS; i++)
        free(c->values[i]);
    free(c->buckets);
    free(c);
}

/* ---- registry ---------------------------------------------------------------- */

metrics_registry *metrics_registry_new(void)
{
    return chat_xcalloc(1, sizeof(metrics_registry));
}

static void free_family(metrics_family *f)
{
    size_t n = atomic_load_explicit(&f->norder, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        free_child(f->order[i]);
    free(f->order);
    free(f->slots);
    free(f->bounds);
    free(f->le);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

void metrics_registry_free(metrics_registry *reg)
{
    if (!reg)
        return;
    metrics_family *f = reg->first;
    while (f) {
        metrics_family *next = f->next;
        free_family(f);
        f = next;
    }
    free(reg);
}

chat_rc metrics_register(metrics_registry *reg, const metrics_desc *d, metrics_family **out)
{
    chat_rc rc = CHAT_EINVAL;
    metrics_family *f = NULL;
    size_t nlabels = 0;

    *out = NULL;
    if (!reg || !d || !valid_metric_name(d->name) || !d->help)
        goto out;
    if (d->type != METRICS_COUNTER && d->type != METRICS_GAUGE && d->type != METRICS_HISTOGRAM)
        goto out;
    for (metrics_family *g = reg->first; g; g = g->next)
        if (strcmp(g->name, d->name) == 0)
            goto out;
    while (nlabels < METRICS_MAX_LABELS && d->labels[nlabels])
        nlabels++;
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_label_name(d->labels[i]))
            goto out;
        if (d->type == METRICS_HISTOGRAM && strcmp(d->labels[i], "le") == 0)
            goto out;
        for (size_t j = 0; j < i; j++)
            if (strcmp(d->labels[i], d->labels[j]) == 0)
                goto out;
    }
    if (nlabels > 0 && (d->max_children < 1 || d->max_children > METRICS_MAX_CHILDREN))
        goto out;
    if (d->type == METRICS_HISTOGRAM) {
        if (!d->buckets || d->nbuckets < 1 || d->nbuckets > METRICS_MAX_BUCKETS)
            goto out;
        for (size_t i = 0; i < d->nbuckets; i++)
            if (!isfinite(d->buckets[i]) || (i > 0 && !(d->buckets[i] > d->buckets[i - 1])))
                goto out;
    }

    f = chat_xcalloc(1, sizeof *f);
    f->type = d->type;
    f->name = d->name;
    f->help = d->help;
    f->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++)
        f->labels[i] = d->labels[i];
    f->max_children = nlabels ? d->max_children : 1;
    if (d->type == METRICS_HISTOGRAM) {
        f->nbounds = d->nbuckets;
        f->bounds = chat_xmalloc(d->nbuckets * sizeof *f->bounds);
        memcpy(f->bounds, d->buckets, d->nbuckets * sizeof *f->bounds);
        f->le = chat_xmalloc(d->nbuckets * sizeof *f->le);
        for (size_t i = 0; i < d->nbuckets; i++)
            format_double(f->le[i], d->buckets[i]);
    }
    f->nslots = 4;
    while (f->nslots < 2 * (f->max_children + 1))
        f->nslots *= 2;
    f->slots = chat_xcalloc(f->nslots, sizeof *f->slots);
    for (size_t i = 0; i < f->nslots; i++)
        atomic_init(&f->slots[i], NULL);
    f->order = chat_xcalloc(f->max_children + 1, sizeof *f->order);
    atomic_init(&f->norder, 0);
    atomic_init(&f->overflow, NULL);
    pthread_mutex_init(&f->mu, NULL);
    if (nlabels == 0) {
        char none[1][METRICS_MAX_VALUE_LEN + 1];
        create_child(f, hash_values(none, 0), none);
        f->nregular = 1;
    }
    if (reg->last)
        reg->last->next = f;
    else
        reg->first = f;
    reg->last = f;
    *out = f;
    rc = CHAT_OK;
out:
    return rc;
}

metrics_child *metrics_child_get(metrics_family *f, const char *const *values)
{
    char vals[METRICS_MAX_LABELS][METRICS_MAX_VALUE_LEN + 1];
    for (size_t i = 0; i < f->nlabels; i++)
        normalise_value(values ? values[i] : NULL, vals[i]);
    uint64_t h = hash_values(vals, f->nlabels);
    metrics_child *c = probe(f, h, vals);
    if (c)
        return c;
    /* Once the family is full it stays full: a miss goes to the overflow
     * child without touching the mutex, so a label explosion costs no lock. */
    c = atomic_load_explicit(&f->overflow, memory_order_acquire);
    if (c)
        return c;

    pthread_mutex_lock(&f->mu);
    c = probe(f, h, vals);
    if (!c) {
        if (f->nregular < f->max_children) {
            c = create_child(f, h, vals);
            f->nregular++;
        } else {
            char other[METRICS_MAX_LABELS][METRICS_MAX_VALUE_LEN + 1];
            for (size_t i = 0; i < f->nlabels; i++)
                memcpy(other[i], METRICS_OVERFLOW_VALUE, sizeof METRICS_OVERFLOW_VALUE);
            uint64_t oh = hash_values(other, f->nlabels);
            /* A regular child may already carry "other" everywhere: reuse it,
             * so the output never holds the same series twice. */
            c = probe(f, oh, other);
            if (!c)
                c = create_child(f, oh, other);
            atomic_store_explicit(&f->overflow, c, memory_order_release);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return c;
}

size_t metrics_family_children(const metrics_family *f)
{
    return atomic_load_explicit(&f->norder, memory_order_acquire);
}

/* ---- observations ------------------------------------------------------------ */

void metrics_counter_add(metrics_child *c, uint64_t n)
{
    assert(c->fam->type == METRICS_COUNTER);
    atomic_fetch_add_explicit(&c->counter, n, memory_order_relaxed);
}

void metrics_gauge_add(metrics_child *c, int64_t delta)
{
    assert(c->fam->type == METRICS_GAUGE);
    atomic_fetch_add_explicit(&c->gauge, delta, memory_order_relaxed);
}

void metrics_gauge_set(metrics_child *c, int64_t v)
{
    assert(c->fam->type == METRICS_GAUGE);
    atomic_store_explicit(&c->gauge, v, memory_order_relaxed);
}

static double bits_to_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static uint64_t double_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

void metrics_histogram_observe(metrics_child *c, double v)
{
    assert(c->fam->type == METRICS_HISTOGRAM);
    if (isnan(v))
        return;
    const metrics_family *f = c->fam;
    size_t i = 0;
    while (i < f->nbounds && !(v <= f->bounds[i]))
        i++;
    atomic_fetch_add_explicit(&c->buckets[i], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&c->sum_bits, memory_order_relaxed);
    uint64_t next;
    do {
        next = double_to_bits(bits_to_double(old) + v);
    } while (
        !atomic_compare_exchange_weak_explicit(&c->sum_bits, &old, next, memory_order_relaxed, memory_order_relaxed));
}

uint64_t metrics_counter_value(const metrics_child *c)
{
    return atomic_load_explicit(&((metrics_child *)c)->counter, memory_order_relaxed);
}

int64_t metrics_gauge_value(const metrics_child *c)
{
    return atomic_load_explicit(&((metrics_child *)c)->gauge, memory_order_relaxed);
}

uint64_t metrics_histogram_count(const metrics_child *c, double *sum)
{
    metrics_child *m = (metrics_child *)c;
    uint64_t n = 0;
    for (size_t i = 0; m->buckets && i <= m->fam->nbounds; i++)
        n += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
    if (sum)
        *sum = bits_to_double(atomic_load_explicit(&m->sum_bits, memory_order_relaxed));
    return n;
}

/* ---- rendering ----------------------------------------------------------------- */

/* The largest page rendered. Families and their label sets are bounded, so a
 * real page is far smaller (kilobytes); past this the page is cut short. */
#define METRICS_PAGE_MAX ((size_t)32 << 20)

typedef struct out_buf {
    chat_buf buf;
    bool full; /* an append hit METRICS_PAGE_MAX: nothing more is written */
} out_buf;

static void ob_add(out_buf *b, const char *s, size_t n)
{
    if (!b->full && chat_buf_append(&b->buf, s, n) != CHAT_OK)
        b->full = true;
}

static void ob_str(out_buf *b, const char *s)
{
    ob_add(b, s, strlen(s));
}

static void ob_printf(out_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ob_printf(out_buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    /* Every caller formats a number: 128 bytes always suffice. */
    assert(n >= 0 && (size_t)n < sizeof tmp);
    ob_add(b, tmp, (size_t)n);
}

/* Help text: '\\' -> "\\\\", newline -> "\\n" (format 0.0.4). */
static void ob_help(out_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            ob_str(b, "\\\\");
        else if (*s == '\n')
            ob_str(b, "\\n");
        else
            ob_add(b, s, 1);
    }
}

/* Label value: additionally '"' -> "\\\"". */
static void ob_label_value(out_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            ob_str(b, "\\\\");
        else if (*s == '"')
            ob_str(b, "\\\"");
        else if (*s == '\n')
            ob_str(b, "\\n");
        else
            ob_add(b, s, 1);
    }
}

static void ob_double(out_buf *b, double d)
{
    char tmp[32];
    format_double(tmp, d);
    ob_str(b, tmp);
}

/* Writes name{l1="v1",...[,le="x"]} (no braces when there is no label at all). */
static void ob_series(out_buf *b, const metrics_family *f, const char *suffix, const metrics_child *c, const char *le)
{
    ob_str(b, f->name);
    ob_str(b, suffix);
    if (f->nlabels == 0 && !le)
        return;
    ob_str(b, "{");
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i)
            ob_str(b, ",");
        ob_str(b, f->labels[i]);
        ob_str(b, "=\"");
        ob_label_value(b, c->values[i]);
        ob_str(b, "\"");
    }
    if (le) {
        if (f->nlabels)
            ob_str(b, ",");
        ob_str(b, "le=\"");
        ob_str(b, le);
        ob_str(b, "\"");
    }
    ob_str(b, "}");
}

static void render_histogram_child(out_buf *b, const metrics_family *f, metrics_child *c)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += atomic_load_explicit(&c->buckets[i], memory_order_relaxed);
        ob_series(b, f, "_bucket", c, i < f->nbounds ? f->le[i] : "+Inf");
        ob_printf(b, " %" PRIu64 "\n", cum);
    }
    ob_series(b, f, "_sum", c, NULL);
    ob_str(b, " ");
    ob_double(b, bits_to_double(atomic_load_explicit(&c->sum_bits, memory_order_relaxed)));
    ob_str(b, "\n");
    /* _count is the +Inf bucket as read above, so the two always agree. */
    ob_series(b, f, "_count", c, NULL);
    ob_printf(b, " %" PRIu64 "\n", cum);
}

char *metrics_registry_render(const metrics_registry *reg, size_t *len)
{
    static const char *type_names[] = {
        [METRICS_COUNTER] = "counter", [METRICS_GAUGE] = "gauge", [METRICS_HISTOGRAM] = "histogram"
    };
    out_buf b = { .full = false };
    chat_buf_init(&b.buf, METRICS_PAGE_MAX);
    for (const metrics_family *f = reg ? reg->first : NULL; f; f = f->next) {
        ob_str(&b, "# HELP ");
        ob_str(&b, f->name);
        ob_str(&b, " ");
        ob_help(&b, f->help);
        ob_str(&b, "\n# TYPE ");
        ob_str(&b, f->name);
        ob_str(&b, " ");
        ob_str(&b, type_names[f->type]);
        ob_str(&b, "\n");
        size_t n = atomic_load_explicit(&((metrics_family *)f)->norder, memory_order_acquire);
        for (size_t i = 0; i < n; i++) {
            metrics_child *c = f->order[i];
            switch (f->type) {
            case METRICS_COUNTER:
                ob_series(&b, f, "", c, NULL);
                ob_printf(&b, " %" PRIu64 "\n", atomic_load_explicit(&c->counter, memory_order_relaxed));
                break;
            case METRICS_GAUGE:
                ob_series(&b, f, "", c, NULL);
                ob_printf(&b, " %" PRId64 "\n", atomic_load_explicit(&c->gauge, memory_order_relaxed));
                break;
            case METRICS_HISTOGRAM: render_histogram_child(&b, f, c); break;
            }
        }
    }
    if (len)
        *len = b.buf.len;
    return chat_buf_steal(&b.buf);
}

/* ---- the process-wide registry ----------------------------------------------- */

typedef struct global_state {
    metrics_registry *reg;
    metrics_def **defs; /* the registered definitions, unbound at shutdown */
    size_t ndefs;
} global_state;

static _Atomic(global_state *) g_state;

chat_rc metrics_init(metrics_def *const *defs, size_t n)
{
    chat_rc rc = CHAT_EINVAL;
    global_state *s = NULL;
    metrics_family **fams = NULL;
    if (atomic_load(&g_state))
        goto out;
    s = chat_xcalloc(1, sizeof *s);
    s->reg = metrics_registry_new();
    fams = chat_xcalloc(n ? n : 1, sizeof *fams);
    for (size_t i = 0; i < n; i++) {
        const metrics_desc *d = &defs[i]->desc;
        if (defs[i]->initial && (!d->labels[0] || d->labels[1])) {
            rc = CHAT_EINVAL;
            goto out;
        }
        rc = metrics_register(s->reg, d, &fams[i]);
        if (rc != CHAT_OK)
            goto out;
        for (const char *const *v = defs[i]->initial; v && *v; v++)
            (void)metrics_child_get(fams[i], v);
    }
    /* Published only once every family is complete. */
    s->defs = chat_xcalloc(n ? n : 1, sizeof *s->defs);
    s->ndefs = n;
    for (size_t i = 0; i < n; i++) {
        s->defs[i] = defs[i];
        atomic_store_explicit(&defs[i]->fam, fams[i], memory_order_release);
    }
    atomic_store_explicit(&g_state, s, memory_order_release);
    s = NULL;
    rc = CHAT_OK;
out:
    free(fams);
    if (s) {
        metrics_registry_free(s->reg);
        free(s->defs);
        free(s);
    }
    return rc;
}

void metrics_shutdown(void)
{
    global_state *s = atomic_exchange(&g_state, NULL);
    if (!s)
        return;
    for (size_t i = 0; i < s->ndefs; i++)
        atomic_store_explicit(&s->defs[i]->fam, NULL, memory_order_release);
    metrics_registry_free(s->reg);
    free(s->defs);
    free(s);
}

metrics_registry *metrics_global(void)
{
    global_state *s = atomic_load_explicit(&g_state, memory_order_acquire);
    return s ? s->reg : NULL;
}

char *metrics_render(size_t *len)
{
    return metrics_registry_render(metrics_global(), len);
}

metrics_child *metrics_def_child(metrics_def *def, const char *const *values)
{
    metrics_family *f = atomic_load_explicit(&def->fam, memory_order_acquire);
    return f ? metrics_child_get(f, values) : NULL;
}

metrics_child *metrics_def_child1(metrics_def *def, const char *value)
{
    const char *vals[1] = { value };
    return metrics_def_child(def, vals);
}
