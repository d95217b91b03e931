/*
 * rc.h: the one status type of the codebase.
 *
 * Every fallible function returns a chat_rc: CHAT_OK (zero) on success, a
 * negative-free enum value naming the failure otherwise. Never mix this with
 * 0/1/-1 conventions. Functions returning chat_rc are marked CHAT_MUST_CHECK.
 */
#ifndef CHATD_CORE_RC_H
#define CHATD_CORE_RC_H

typedef enum {
    CHAT_OK = 0,
    CHAT_ENOMEM,    /* allocation failed (only where we propagate rather than abort) */
    CHAT_EINVAL,    /* invalid argument or malformed input */
    CHAT_ENOTFOUND, /* the named object does not exist */
    CHAT_EBUSY,     /* the resource is held by someone else (e.g. a turn lock) */
    CHAT_ECONFLICT, /* the operation conflicts with the stored state */
    CHAT_ETOOBIG,   /* a size limit was exceeded */
    CHAT_EIO,       /* I/O or database error */
    CHAT_ECANCELED, /* the operation was cancelled by its caller */
    CHAT_ETIMEDOUT, /* a deadline passed */
    CHAT_EUNAVAIL,  /* a dependency is not configured or not reachable */
} chat_rc;

#define CHAT_MUST_CHECK __attribute__((warn_unused_result))

/* Returns a static, human-readable name for rc ("ok", "not found", ...). */
const char *chat_rc_str(chat_rc rc);

#endif
