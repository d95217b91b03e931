/*
 * metrics.h: the process-wide metrics registry and the metrics chatd exposes.
 *
 * Two layers.
 *
 * 1. A generic registry (metrics_registry): families of counters, gauges and
 *    histograms, each with up to METRICS_MAX_LABELS label names fixed at
 *    registration. A family holds one child per label combination. Children
 *    are created lazily on first use: the lookup is lock-free (an open-addressed
 *    table of atomically published pointers, never resized, never shrunk); only
 *    the creation of a new child takes the family's mutex. The number of
 *    children is bounded by the family's max_children: once that many exist,
 *    every new combination goes to one overflow child whose label values are
 *    all "other" (so memory stays bounded whatever values callers pass, and
 *    the overflow is visible in the output). Observations are C11 atomics
 *    (relaxed: each value is independent), no lock. The registry renders in the
 *    Prometheus text exposition format 0.0.4.
 *
 * 2. The process-wide registry (metrics_init ... metrics_shutdown) and the
 *    metrics_def type, with which each module defines the families it
 *    observes (http/metrics.h, llm/metrics.h, store/metrics.h, guard/metrics.h,
 *    chat/metrics.h, api/metrics.h: names, help texts, labels, buckets, and the
 *    metrics_<what>() functions their callers use). The caller of metrics_init
 *    (app/metrics.c) lists the families, which fixes the order of the page.
 *    Before metrics_init and after metrics_shutdown every observation is a
 *    harmless no-op, so unit tests of other modules need no setup. Core knows
 *    no family of its own.
 *
 * Label values are normalised before use: NULL becomes "", values longer than
 * METRICS_MAX_VALUE_LEN bytes are cut, and bytes that are not valid UTF-8 become
 * '?' (the exposition format requires UTF-8). Rendering escapes '\\', '"' and
 * newline in label values, and '\\' and newline in help texts.
 *
 * Thread: registration (metrics_register, metrics_init) happens at start-up on
 * one thread, before any observation. Observations, metrics_child_get and
 * rendering are safe from any thread at any time after that. Freeing
 * (metrics_registry_free, metrics_shutdown) requires that no other thread uses
 * the registry any more.
 */
#ifndef CHATD_CORE_METRICS_H
#define CHATD_CORE_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rc.h"

/* ------------------------------------------------------------------------ */
/* Generic registry                                                         */
/* ------------------------------------------------------------------------ */

#define METRICS_MAX_LABELS 4      /* label names per family */
#define METRICS_MAX_CHILDREN 4096 /* upper bound for a family's max_children */
#define METRICS_MAX_BUCKETS 32    /* finite histogram buckets per family (+Inf is implied) */
#define METRICS_MAX_VALUE_LEN 128 /* bytes kept of one label value */
#define METRICS_OVERFLOW_VALUE "other"

typedef enum { METRICS_COUNTER = 1, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;
typedef struct metrics_child metrics_child;

/*
 * Describes one family. The strings (name, help, label names) are borrowed and
 * must outlive the registry (use string literals); buckets are copied.
 */
typedef struct metrics_desc {
    metrics_type type;
    const char *name;                       /* [a-zA-Z_:][a-zA-Z0-9_:]*, unique in the registry */
    const char *help;                       /* one line of text */
    const char *labels[METRICS_MAX_LABELS]; /* label names in order; the first NULL ends the list */
    size_t max_children;                    /* labelled families: 1..METRICS_MAX_CHILDREN combinations
                                                before overflow; ignored without labels */
    const double *buckets;                  /* histograms: strictly increasing finite upper bounds */
    size_t nbuckets;                        /* histograms: 1..METRICS_MAX_BUCKETS */
} metrics_desc;

/* Creates an empty registry. Never returns NULL (aborts on OOM). */
metrics_registry *metrics_registry_new(void);

/* Frees the registry, its families and children. Accepts NULL. No other thread
 * may use the registry or any pointer obtained from it during or after this. */
void metrics_registry_free(metrics_registry *reg);

/*
 * Registers a family described by d. On success stores the family in *out
 * (owned by reg, valid until metrics_registry_free) and returns CHAT_OK. An
 * unlabelled family gets its single child at once. Returns CHAT_EINVAL (and
 * leaves *out NULL) for an invalid or duplicate name, an invalid, reserved
 * ("__" prefix, or "le" on a histogram) or repeated label name, max_children out
 * of range, or buckets that are not strictly increasing finite numbers.
 * Start-up only (single-threaded).
 */
chat_rc metrics_register(metrics_registry *reg, const metrics_desc *d, metrics_family **out) CHAT_MUST_CHECK;

/*
 * Returns the child of f for the label values (exactly as many as f has label
 * names; may be NULL when f has none). Never returns NULL: a new combination
 * beyond max_children returns the overflow child ("other" for every label).
 * Lock-free when the child exists; takes f's mutex once to create it. The child
 * lives as long as the registry, so callers may cache it. Any thread.
 */
metrics_child *metrics_child_get(metrics_family *f, const char *const *values);

/* Observations (any thread, lock-free). Calling one on a child of another type is a
 * programming error (asserted). */
void metrics_counter_add(metrics_child *c, uint64_t n);
void metrics_gauge_add(metrics_child *c, int64_t delta);
void metrics_gauge_set(metrics_child *c, int64_t v);
/* Counts v in the first bucket whose upper bound is >= v (bounds are inclusive,
 * as Prometheus' "le" says) and adds it to the sum. NaN is ignored. */
void metrics_histogram_observe(metrics_child *c, double v);

/* Current values (for tests and diagnostics). */
uint64_t metrics_counter_value(const metrics_child *c);
int64_t metrics_gauge_value(const metrics_child *c);
/* Histogram: the number of observations; *sum (may be NULL) receives their sum. */
uint64_t metrics_histogram_count(const metrics_child *c, double *sum);

/* Number of children of f, the overflow child included. */
size_t metrics_family_children(const metrics_family *f);

/*
 * Renders every family in registration order (children in creation order) in
 * the Prometheus text format 0.0.4: "# HELP", "# TYPE", one sample line per
 * counter/gauge child, and per histogram child the cumulative _bucket{le=...}
 * lines ending with le="+Inf", then _sum and _count (_count equals the +Inf
 * bucket). Returns a NUL-terminated heap string the caller frees; *len (may be
 * NULL) receives its length. Its size is bounded by the registry's families,
 * their max_children and buckets. Any thread, concurrently with observations
 * (each value is read once; a histogram's _sum may lag its _count by the
 * observations in flight).
 */
char *metrics_registry_render(const metrics_registry *reg, size_t *len);

/* ------------------------------------------------------------------------ */
/* The process-wide registry and the families defined by their modules       */
/* ------------------------------------------------------------------------ */

/*
 * One family, defined (static storage) by the module that observes it. The
 * module's observation functions reach their children through
 * metrics_def_child, which answers NULL while the family is not registered.
 */
typedef struct metrics_def {
    metrics_desc desc;             /* the family: borrowed strings, as for metrics_register */
    const char *const *initial;    /* one-label families: the values whose children are created at
                                      registration, in this order, so that they are exposed at 0 from the
                                      start (a closed label set); NULL-terminated, or NULL for none */
    _Atomic(metrics_family *) fam; /* set by metrics_init, cleared by metrics_shutdown; NULL otherwise */
} metrics_def;

/*
 * Creates the process-wide registry and registers the n families of defs in
 * this order (the order of the page), with their initial children. Call once on
 * the main thread before the workers start. Returns CHAT_EINVAL, registering
 * nothing, if already initialised, or if a family is invalid or a duplicate
 * (the unit test of the list rules that out), or has initial values but not
 * exactly one label.
 */
chat_rc metrics_init(metrics_def *const *defs, size_t n) CHAT_MUST_CHECK;

/* Frees the process-wide registry (after every worker stopped) and unbinds its
 * families: observations become no-ops again and metrics_init may be called
 * anew. Safe without init. */
void metrics_shutdown(void);

/* The process-wide registry (NULL before metrics_init), e.g. for tests. */
metrics_registry *metrics_global(void);

/* Renders the process-wide registry (see metrics_registry_render): the body of
 * GET /metrics, served as "text/plain; version=0.0.4; charset=utf-8".
 * Before metrics_init returns an empty heap string. */
char *metrics_render(size_t *len);

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The child of def's family for the label values (see metrics_child_get), or
 * NULL while def is not registered. Any thread. */
metrics_child *metrics_def_child(metrics_def *def, const char *const *values);

/* The same for a family with one label. */
metrics_child *metrics_def_child1(metrics_def *def, const char *value);

#endif
