/*
 * main.c: the chatd command line. Thin on purpose: it parses the subcommand,
 * loads the configuration and hands over to the engine (libchatd_engine).
 *
 *   chatd serve [flags]     run the server (the default when no subcommand is given)
 *   chatd migrate [flags]   apply pending schema migrations and exit
 *   chatd --help | --version
 */
#include <stdio.h>
#include <string.h>

#include "app/app.h"
#include "core/config.h"
#include "core/log.h"
#include "store/store.h"


extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "chatd %s: a chat API server in front of LLM providers.\n\n"
            "Usage:\n"
            "  chatd serve [flags]     run the server (default)\n"
            "  chatd migrate [flags]   apply pending database migrations and exit\n"
            "  chatd --help            this text\n"
            "  chatd --version\n\n"
            "Every setting can come from (lowest to highest precedence) its default, the .env file,\n"
            "the environment (NAME=value) or a flag (--name value). Settings:\n\n",
            CHATD_VERSION);
    chat_config_print_help(out);
}

static int cmd_migrate(const struct chat_config *cfg)
{
    char err[256] = "";
    store *db = NULL;
    if (store_open(cfg->database_url, &db, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chatd: cannot open the database: %s\n", err);
        return 1;
    }
    printf("schema version %d\n", store_schema_version(db));
    store_close(db);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = "serve";
    int first = 1;
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        first = 2;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("chatd %s\n", CHATD_VERSION);
            return 0;
        }
    }
    if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "migrate") != 0) {
        fprintf(stderr, "chatd: unknown command \"%s\" (try chatd --help)\n", cmd);
        return 2;
    }

    struct chat_config cfg;
    char err[512] = "";
    if (chat_config_load(&cfg, argc - first, argv + first, environ, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    chat_log_set_level(chat_log_level_parse(cfg.log_level));

    int status;
    if (strcmp(cmd, "migrate") == 0)
        status = cmd_migrate(&cfg);
    else
        status = chat_app_run(&cfg) == CHAT_OK ? 0 : 1;
    chat_config_free(&cfg);
    return status;
}
