#include "core/rc.h"

const char *chat_rc_str(chat_rc rc)
{
    switch (rc) {
    case CHAT_OK: return "ok";
    case CHAT_ENOMEM: return "out of memory";
    case CHAT_EINVAL: return "invalid argument";
    case CHAT_ENOTFOUND: return "not found";
    case CHAT_EBUSY: return "busy";
    case CHAT_ECONFLICT: return "conflict";
    case CHAT_ETOOBIG: return "too big";
    case CHAT_EIO: return "i/o error";
    case CHAT_ECANCELED: return "canceled";
    case CHAT_ETIMEDOUT: return "timed out";
    case CHAT_EUNAVAIL: return "unavailable";
    }
    return "unknown error";
}
