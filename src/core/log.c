#define _GNU_SOURCE
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

static chat_log_level min_level = LOG_INFO;

static const char *level_names[] = { "debug", "info", "warn", "error", "notice" };

void chat_log_set_level(chat_log_level lvl)
{
    min_level = lvl;
}

void chat_log(chat_log_level lvl, const char *msg, json_t *fields)
{
    if (lvl < min_level && lvl != LOG_NOTICE) {
        json_decref(fields);
        return;
    }
    char ts[32];
    chat_format_rfc3339(chat_now_ms(), ts);
    json_t *line = json_object();
    json_object_set_new(line, "time", json_string(ts));
    json_object_set_new(line, "level", json_string(level_names[lvl]));
    json_object_set_new(line, "msg", json_string(msg ? msg : ""));
    if (fields && json_is_object(fields))
        json_object_update(line, fields);
    json_decref(fields);
    char *text = json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(line);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps allocates n+1 bytes: replace the NUL, write n+1 */
    const char *p = text;
    size_t left = n + 1;
    while (left > 0) {
        ssize_t w = write(STDERR_FILENO, p, left);
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
    free(text);
}

void chat_logf(chat_log_level lvl, const char *fmt, ...)
{
    if (lvl < min_level && lvl != LOG_NOTICE)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    chat_log(lvl, buf, NULL);
}
