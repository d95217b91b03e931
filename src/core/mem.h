/*
 * mem.h: the allocator under chatd, tuned and asked to give memory back.
 *
 * chatd links jemalloc (the CMake option CHATD_JEMALLOC, on by default; off in
 * the sanitizer and fuzz builds, whose runtimes bring their own allocator):
 * every malloc of the process, libcurl's, libevent's, SQLite's and jansson's
 * included, goes to it. Why: a turn makes a few hundred small allocations on
 * one thread and frees many on another (the writer thread, the loops), and
 * glibc's malloc spent about 14 % of a /chat turn's CPU on them (perf; its
 * per-thread caches hold 7 chunks a size, and chunks freed by another thread
 * go back through the owner's locked arena). With jemalloc the same turn took
 * 15 % less CPU (bench/README.md, "The allocator").
 *
 * Either way the allocator keeps what a burst freed unless told otherwise;
 * app/app.c decides when (after a burst of streams, once a minute) and calls
 * chat_mem_release.
 *
 * Thread: chat_mem_tune before any thread starts; chat_mem_release from any
 * thread (app/app.c: the main thread).
 */
#ifndef CHATD_CORE_MEM_H
#define CHATD_CORE_MEM_H

#include <stdbool.h>
#include <stddef.h>

/* Start-up settings (glibc: fixed mmap and trim thresholds, see mem.c; jemalloc: none). */
void chat_mem_tune(void);

/* Gives the free pages of every arena back to the kernel; true if the allocator did. */
bool chat_mem_release(void);

/* Bytes the allocator holds for the process's live blocks (for the tests; 0 if unknown). */
size_t chat_mem_allocated(void);

/* "jemalloc 5.3.0-..." or "glibc", for the start-up log. */
const char *chat_mem_allocator(void);

#endif
