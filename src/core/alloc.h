/*
 * alloc.h: the out-of-memory policy, written once.
 *
 * chatd aborts with a message on allocation failure (as redis' zmalloc does):
 * a server that cannot allocate a few bytes cannot answer correctly anyway, and
 * propagating ENOMEM through every callback path would add untested branches.
 * Use these wrappers everywhere instead of malloc/strdup; they never return NULL
 * (except chat_xstrdup(NULL) and chat_xstrndup(NULL, n), which return NULL).
 */
#ifndef CHATD_CORE_ALLOC_H
#define CHATD_CORE_ALLOC_H

#include <stddef.h>

void *chat_xmalloc(size_t n);
void *chat_xcalloc(size_t nmemb, size_t size);
void *chat_xrealloc(void *p, size_t n);
char *chat_xstrdup(const char *s);
char *chat_xstrndup(const char *s, size_t n);
/* printf into a new heap string. */
char *chat_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * The one fatal-error path, for states the program cannot continue from: an
 * allocation that failed, a library that cannot initialise, a broken internal
 * invariant (a programming error). Writes one JSON log line with level "fatal"
 * to stderr without allocating, then aborts (a core dump for the post-mortem).
 * Any thread. Never returns.
 */
void chat_fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#endif
