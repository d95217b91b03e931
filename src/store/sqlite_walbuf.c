/*
 * sqlite_walbuf.c: a SQLite VFS that gathers a commit's WAL writes into one.
 *
 * Why: SQLite writes each WAL frame with two pwrite calls (its 24-byte header,
 * then the page), so a group commit of a dozen pages was two dozen system
 * calls, a fifth of the writer thread's time on a virtual machine where every
 * call is dear (docs/ARCHITECTURE.md, "Threads and loops": the writer). In WAL
 * mode with synchronous=FULL every commit ends with a sync of the WAL, and no
 * other connection reads a frame before the commit that wrote it is synced
 * (SQLite makes a commit visible only after that sync). So the WAL's writes
 * can wait in memory until the sync and go out then, contiguous ones as one
 * write, before the sync itself: what is on disk when the sync returns is
 * exactly what it was before.
 *
 * The rule, per WAL file: an xWrite that continues the pending run (the next
 * offset) is appended to it; anything else that touches the file (a write
 * elsewhere, a read, a sync, its size, a truncate, a file control, the close)
 * first writes the pending run out. A failed write of the run is reported by
 * whatever forced it, as SQLite's own xWrite would have been. Other files
 * (the database, its shared-memory index) pass straight through.
 *
 * Only for synchronous=FULL (sqlite_conn.c): with NORMAL a commit has no sync,
 * and its frames would stay in memory while other connections read them.
 *
 * Thread: SQLite calls a file's methods from the thread that uses its
 * connection; the VFS is registered once per process.
 */
#include "store/sqlite_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* The most a pending run holds (more is written out and a new run begun):
 * the default VFS writes at most this much per call (os_unix.c masks a
 * write's length with 0x1ffff) and reports a longer one as a full disk. */
#define RUN_MAX 0x1ffffu
/* Its first allocation. */
#define RUN_MIN (32u << 10)

typedef struct walbuf_file {
    sqlite3_file base;
    sqlite3_file *real; /* the default VFS's file, right after this struct */
    bool wal;           /* writes are gathered */
    char *run;          /* pending bytes, for [run_off, run_off + run_len) */
    size_t run_len, run_cap;
    sqlite3_int64 run_off;
} walbuf_file;

static sqlite3_vfs walbuf_vfs;
static sqlite3_vfs *real_vfs;
static pthread_once_t walbuf_once = PTHREAD_ONCE_INIT;
static int walbuf_rc = SQLITE_ERROR;

static walbuf_file *wf(sqlite3_file *f)
{
    return (walbuf_file *)f;
}

/* Writes the pending run out (one xWrite of the default VFS, one pwrite). */
static int flush_run(walbuf_file *p)
{
    if (p->run_len == 0)
        return SQLITE_OK;
    int rc = p->real->pMethods->xWrite(p->real, p->run, (int)p->run_len, p->run_off);
    p->run_len = 0;
    return rc;
}

static int x_close(sqlite3_file *f)
{
    walbuf_file *p = wf(f);
    int frc = flush_run(p);
    int rc = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
    free(p->run);
    p->run = NULL;
    p->run_cap = 0;
    return frc != SQLITE_OK ? frc : rc;
}

static int x_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
    walbuf_file *p = wf(f);
    int rc = flush_run(p);
    return rc != SQLITE_OK ? rc : p->real->pMethods->xRead(p->real, buf, amt, off);
}

static int x_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
    walbuf_file *p = wf(f);
    if (!p->wal || amt <= 0)
        return p->real->pMethods->xWrite(p->real, buf, amt, off);
    size_t n = (size_t)amt;
    if (p->run_len > 0 && off == p->run_off + (sqlite3_int64)p->run_len && p->run_len + n <= RUN_MAX) {
        /* continues the run */
    } else {
        int rc = flush_run(p);
        if (rc != SQLITE_OK)
            return rc;
        if (n > RUN_MAX)
            return p->real->pMethods->xWrite(p->real, buf, amt, off);
        p->run_off = off;
    }
    if (p->run_len + n > p->run_cap) {
        size_t cap = p->run_cap ? p->run_cap : RUN_MIN;
        while (cap < p->run_len + n)
            cap *= 2;
        if (cap > RUN_MAX)
            cap = RUN_MAX;
        p->run = chat_xrealloc(p->run, cap);
        p->run_cap = cap;
    }
    memcpy(p->run + p->run_len, buf, n);
    p->run_len += n;
    return SQLITE_OK;
}

static int x_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    walbuf_file *p = wf(f);
    int rc = flush_run(p);
    return rc != SQLITE_OK ? rc : p->real->pMethods->xTruncate(p->real, size);
}

static int x_sync(sqlite3_file *f, int flags)
{
    walbuf_file *p = wf(f);
    int rc = flush_run(p);
    return rc != SQLITE_OK ? rc : p->real->pMethods->xSync(p->real, flags);
}

static int x_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    walbuf_file *p = wf(f);
    int rc = flush_run(p);
    return rc != SQLITE_OK ? rc : p->real->pMethods->xFileSize(p->real, size);
}

static int x_lock(sqlite3_file *f, int level)
{
    return wf(f)->real->pMethods->xLock(wf(f)->real, level);
}

static int x_unlock(sqlite3_file *f, int level)
{
    return wf(f)->real->pMethods->xUnlock(wf(f)->real, level);
}

static int x_check_reserved_lock(sqlite3_file *f, int *out)
{
    return wf(f)->real->pMethods->xCheckReservedLock(wf(f)->real, out);
}

static int x_file_control(sqlite3_file *f, int op, void *arg)
{
    walbuf_file *p = wf(f);
    int rc = flush_run(p);
    return rc != SQLITE_OK ? rc : p->real->pMethods->xFileControl(p->real, op, arg);
}

static int x_sector_size(sqlite3_file *f)
{
    return wf(f)->real->pMethods->xSectorSize(wf(f)->real);
}

static int x_device_characteristics(sqlite3_file *f)
{
    return wf(f)->real->pMethods->xDeviceCharacteristics(wf(f)->real);
}

static int x_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out)
{
    return wf(f)->real->pMethods->xShmMap(wf(f)->real, region, size, extend, out);
}

static int x_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return wf(f)->real->pMethods->xShmLock(wf(f)->real, offset, n, flags);
}

static void x_shm_barrier(sqlite3_file *f)
{
    wf(f)->real->pMethods->xShmBarrier(wf(f)->real);
}

static int x_shm_unmap(sqlite3_file *f, int delete_flag)
{
    return wf(f)->real->pMethods->xShmUnmap(wf(f)->real, delete_flag);
}

static int x_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **out)
{
    walbuf_file *p = wf(f);
    int rc = flush_run(p);
    return rc != SQLITE_OK ? rc : p->real->pMethods->xFetch(p->real, off, amt, out);
}

static int x_unfetch(sqlite3_file *f, sqlite3_int64 off, void *page)
{
    return wf(f)->real->pMethods->xUnfetch(wf(f)->real, off, page);
}

static const sqlite3_io_methods walbuf_io = {
    .iVersion = 3,
    .xClose = x_close,
    .xRead = x_read,
    .xWrite = x_write,
    .xTruncate = x_truncate,
    .xSync = x_sync,
    .xFileSize = x_file_size,
    .xLock = x_lock,
    .xUnlock = x_unlock,
    .xCheckReservedLock = x_check_reserved_lock,
    .xFileControl = x_file_control,
    .xSectorSize = x_sector_size,
    .xDeviceCharacteristics = x_device_characteristics,
    .xShmMap = x_shm_map,
    .xShmLock = x_shm_lock,
    .xShmBarrier = x_shm_barrier,
    .xShmUnmap = x_shm_unmap,
    .xFetch = x_fetch,
    .xUnfetch = x_unfetch,
};

static int x_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    (void)vfs;
    walbuf_file *p = wf(f);
    memset(p, 0, sizeof *p);
    p->real = (sqlite3_file *)(p + 1);
    int rc = real_vfs->xOpen(real_vfs, name, p->real, flags, out_flags);
    /* SQLite calls xClose only on a file whose pMethods is set; the default
     * VFS leaves its own NULL when the open failed. */
    p->base.pMethods = p->real->pMethods ? &walbuf_io : NULL;
    if (rc == SQLITE_OK && p->real->pMethods) {
        /* The default VFS's methods are version 3 (shared memory, memory
         * maps): what walbuf_io forwards to. */
        if (p->real->pMethods->iVersion < 3) {
            p->real->pMethods->xClose(p->real);
            p->base.pMethods = NULL;
            return SQLITE_CANTOPEN;
        }
        p->wal = (flags & SQLITE_OPEN_WAL) != 0;
    }
    return rc;
}

static void walbuf_register(void)
{
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs)
        return;
    walbuf_vfs = *real_vfs;
    walbuf_vfs.pNext = NULL;
    walbuf_vfs.zName = SQLITE_WALBUF_VFS;
    walbuf_vfs.szOsFile = (int)sizeof(walbuf_file) + real_vfs->szOsFile;
    walbuf_vfs.xOpen = x_open;
    walbuf_rc = sqlite3_vfs_register(&walbuf_vfs, 0);
}

const char *sqlite_walbuf_vfs(void)
{
    pthread_once(&walbuf_once, walbuf_register);
    return walbuf_rc == SQLITE_OK ? SQLITE_WALBUF_VFS : NULL;
}
