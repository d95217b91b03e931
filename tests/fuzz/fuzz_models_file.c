/*
 * fuzz_models_file: the MODELS_FILE setting's file (src/chat/models.c), JSON
 * merged over the built-in models table: providers, models, limits, prices,
 * fallbacks. Loaded through models_load with a configuration from
 * chat_config_load, as at start-up.
 *
 * Input: the file. Oracles (models.h): a refused file says why; an accepted
 * table has a default model, and every model a name, a provider, a model id,
 * limits >= 1, prices within range (integer micro-dollars) and fallbacks that
 * name other models of the table; the cost of the largest usage /v1/estimate
 * accepts (10^12 tokens of each kind) is never negative.
 */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <unistd.h>

#include "chat/models.h"
#include "core/config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-models", 0);
    FUZZ_CHECK(fd >= 0, "memfd_create");
    FUZZ_CHECK(size == 0 || write(fd, data, size) == (ssize_t)size, "write");
    char models_file[64];
    snprintf(models_file, sizeof models_file, "MODELS_FILE=/proc/self/fd/%d", fd);
    /* No .env read unless one exists here (it must not leak into the runs). */
    char *envp[] = { access(".env", F_OK) == 0 ? "ENV_FILE=/dev/null" : "FUZZ_NO_DOTENV=1", models_file, NULL };
    struct chat_config cfg;
    char err[512] = "";
    chat_rc rc = chat_config_load(&cfg, 0, NULL, envp, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK, "the configuration does not load: %s", err);

    model_table *t = NULL;
    rc = models_load(&cfg, &t, err, sizeof err);
    FUZZ_CHECK(rc == CHAT_OK || rc == CHAT_EINVAL, "rc %d", rc);
    if (rc != CHAT_OK) {
        FUZZ_CHECK(err[0] != '\0', "refused without a reason");
    } else {
        FUZZ_CHECK(t && models_default(t), "no default model");
        size_t n = models_count(t);
        FUZZ_CHECK(n >= 1, "an empty table");
        const store_usage most = { 1000000000000LL, 1000000000000LL, 1000000000000LL, 1000000000000LL };
        for (size_t i = 0; i < n; i++) {
            const chat_model *m = models_at(t, i);
            FUZZ_CHECK(m && m->name && m->provider_name && m->model_id, "model %zu incomplete", i);
            FUZZ_CHECK(m->context_window >= 1 && m->max_output >= 1, "model %s: limits %lld, %lld", m->name,
                       (long long)m->context_window, (long long)m->max_output);
            const int64_t prices[4] = { m->price.input, m->price.output, m->price.cache_write, m->price.cache_read };
            for (int k = 0; k < 4; k++)
                FUZZ_CHECK(prices[k] >= 0 && prices[k] <= 1000000000000LL, "model %s: price %lld", m->name,
                           (long long)prices[k]);
            for (size_t k = 0; k < m->n_fallbacks; k++) {
                bool known = false;
                for (size_t j = 0; j < n; j++)
                    known = known || strcmp(models_at(t, j)->name, m->fallbacks[k]) == 0;
                FUZZ_CHECK(known && strcmp(m->fallbacks[k], m->name) != 0, "model %s: fallback %s", m->name,
                           m->fallbacks[k]);
            }
            FUZZ_CHECK(models_cost_micros(m, &most) >= 0, "model %s: negative cost", m->name);
        }
        FUZZ_CHECK(models_at(t, n) == NULL, "a model past the end");
    }
    models_free(t);
    chat_config_free(&cfg);
    close(fd);
    return 0;
}
