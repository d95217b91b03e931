/*
 * mem.c: the allocator's tuning and give-back (see mem.h), for jemalloc
 * (CHATD_JEMALLOC) or glibc.
 */
#include "core/mem.h"

#include <stdlib.h>
#include <string.h>

#include "core/log.h"

#ifdef CHATD_JEMALLOC

#include <stdint.h>
#include <stdio.h>

#include <jemalloc/jemalloc.h>

/*
 * jemalloc's own give-back runs as it allocates: a freed page goes back to the
 * kernel some seconds after its last use (dirty_decay_ms). chat_mem_release
 * purges every arena at once, as glibc's malloc_trim does for app.c's
 * triggers. chatd sets no options of its own: a user's MALLOC_CONF applies
 * as jemalloc documents it.
 */
void chat_mem_tune(void)
{
}

bool chat_mem_release(void)
{
    char name[64];
    snprintf(name, sizeof name, "arena.%u.purge", (unsigned)MALLCTL_ARENAS_ALL);
    return mallctl(name, NULL, NULL, NULL, 0) == 0;
}

size_t chat_mem_allocated(void)
{
    uint64_t epoch = 1;
    size_t allocated = 0, len = sizeof allocated;
    /* The statistics are a snapshot, refreshed by advancing the epoch. */
    if (mallctl("epoch", NULL, NULL, &epoch, sizeof epoch) != 0 ||
        mallctl("stats.allocated", &allocated, &len, NULL, 0) != 0)
        return 0;
    return allocated;
}

const char *chat_mem_allocator(void)
{
    return "jemalloc " JEMALLOC_VERSION;
}

#else

#include <malloc.h>

/*
 * glibc's automatic give-back, turned off in favour of app.c's triggers. By
 * default a block above the mmap threshold (128 KiB, raised as such blocks
 * are freed) is its own mapping, and an arena whose free top passes the trim
 * threshold is shrunk at once: a turn late in a long session builds a
 * provider body of a megabyte or more in a few such blocks, so every turn
 * faulted those pages in afresh and gave them back (about half of the turn's
 * CPU in bench/long_session.py). Fixed thresholds keep that memory in the
 * arenas for the next turn; chat_mem_release still returns it after a burst.
 * A user's own GLIBC_TUNABLES for malloc wins.
 */
#define MMAP_THRESHOLD (16 * 1024 * 1024)
#define TRIM_THRESHOLD (64 * 1024 * 1024)

void chat_mem_tune(void)
{
    const char *t = getenv("GLIBC_TUNABLES");
    if (t && strstr(t, "glibc.malloc."))
        return;
    if (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 || mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1)
        chat_log(LOG_WARN, "malloc thresholds not set", NULL);
}

/*
 * malloc_trim(0) walks every arena (not only the caller's) and gives the free
 * pages inside them back with madvise(MADV_DONTNEED): the heap otherwise
 * shrinks only from its top, and a few live chunks near the top pin
 * everything below them.
 */
bool chat_mem_release(void)
{
    return malloc_trim(0) != 0;
}

size_t chat_mem_allocated(void)
{
    return mallinfo2().uordblks;
}

const char *chat_mem_allocator(void)
{
    return "glibc";
}

#endif
