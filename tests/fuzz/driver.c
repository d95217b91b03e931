/*
 * driver.c: the main() of a fuzz target in the normal builds (no libFuzzer).
 *
 * Runs LLVMFuzzerTestOneInput once on every regular file under the directories
 * given as arguments (corpus/<target>/ and regressions/<target>/), in sorted
 * order, and on the files given directly. A crash, an abort() from a target's
 * own checks, or a sanitizer report (in the ASan build) fails the ctest test
 * fuzz-regress.<target>. A directory that does not exist is skipped (git keeps
 * no empty regressions/ directory), but at least one input must be found: a
 * run that checks nothing is an error, not a pass.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            uint8_t *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
        }
    }
    int failed = ferror(f) || !buf;
    fclose(f);
    if (failed) {
        fprintf(stderr, "%s: cannot read\n", path);
        free(buf);
        return -1;
    }
    /* libFuzzer hands the target an exact-size copy: do the same, so that
     * ASan sees a read past the end. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    long inputs = 0;
    int status = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0)
            continue; /* an absent regressions/ directory */
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]) != 0)
                status = 1;
            else
                inputs++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, by_name);
        if (n < 0) {
            perror(argv[i]);
            return 1;
        }
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && names[k]->d_name[0] != '.') {
                if (run_file(path) != 0)
                    status = 1;
                else
                    inputs++;
            }
            free(names[k]);
        }
        free(names);
    }
    printf("%s: %ld inputs run\n", argv[0], inputs);
    if (inputs == 0) {
        fprintf(stderr, "%s: no input found: nothing was checked\n", argv[0]);
        return 1;
    }
    return status;
}
