/*
 * assets.h: files embedded into the binary at build time (cmake/embed.cmake).
 *
 * Names are "<top directory>/<relative path>", e.g. "schema/001_init.sql" or
 * "web/index.html". The data is NUL-terminated (the NUL is not counted in len).
 * The table is immutable and lives for the whole process.
 */
#ifndef CHATD_CORE_ASSETS_H
#define CHATD_CORE_ASSETS_H

#include <stddef.h>

struct chat_asset {
    const char *name;
    const unsigned char *data;
    size_t len;
};

extern const struct chat_asset chat_assets[];
extern const size_t chat_assets_count;

/* Returns the asset with this exact name, or NULL. */
const struct chat_asset *chat_asset_find(const char *name);

#endif
