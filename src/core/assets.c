#include "core/assets.h"

#include <string.h>

const struct chat_asset *chat_asset_find(const char *name)
{
    for (size_t i = 0; i < chat_assets_count; i++)
        if (strcmp(chat_assets[i].name, name) == 0)
            return &chat_assets[i];
    return NULL;
}
