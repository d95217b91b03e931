/*
 * main.c: the chatd command line. Thin on purpose: it parses the subcommand,
 * loads the configuration and hands over to the engine (libchatd_engine).
 *
 *   chatd serve [flags]     run the server (the default when no subcommand is given)
 *   chatd migrate [flags]   apply pending schema migrations and exit
 *   chatd keys create --name NAME [--role user|admin] [--rate-limit N/unit] [flags]
 *   chatd keys list [flags]
 *   chatd keys revoke ID|NAME [flags]
 *   chatd export [--out FILE] [flags]      copy the database to JSON Lines (store/transfer.h)
 *   chatd import [--in FILE] [--max-line-bytes N] [flags]
 *   chatd --help | --version
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/app.h"
#include "core/util.h"
#include "guard/auth.h"
#include "guard/ratelimit.h"
#include "core/config.h"
#include "core/log.h"
#include "store/store.h"
#include "store/transfer.h"

/* Log bytes queued for stderr at most (about 3,000 access-log lines): a
 * collector that stalls longer than that costs lines, not requests. */
#define LOG_RING_BYTES (1024 * 1024)


extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "chatd %s: a chat API server in front of LLM providers.\n\n"
            "Usage:\n"
            "  chatd serve [flags]     run the server (default)\n"
            "  chatd migrate [flags]   apply pending database migrations and exit\n"
            "  chatd keys create --name NAME [--role user|admin] [--rate-limit N/unit]\n"
            "                          create an API key (AUTH_MODE=keys); the secret is shown once\n"
            "  chatd keys list         list API keys (never their secrets)\n"
            "  chatd keys revoke ID|NAME\n"
            "  chatd export [--out FILE]\n"
            "                          write every API key and session (with its messages) of\n"
            "                          DATABASE_URL as JSON Lines to FILE (default: stdout)\n"
            "  chatd import [--in FILE] [--max-line-bytes N]\n"
            "                          read such a file (default: stdin) into DATABASE_URL; ids that\n"
            "                          exist are skipped, so a re-run is safe\n"
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

/* Takes "--name value" / "--name=value" out of argv (so the rest goes to the
 * config loader); returns the value or NULL. */
static const char *take_opt(int *argc, char **argv, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < *argc; i++) {
        const char *v = NULL;
        int used = 0;
        if (strncmp(argv[i], name, n) == 0 && argv[i][n] == '=') {
            v = argv[i] + n + 1;
            used = 1;
        } else if (strcmp(argv[i], name) == 0 && i + 1 < *argc) {
            v = argv[i + 1];
            used = 2;
        }
        if (used) {
            for (int k = i; k + used < *argc; k++)
                argv[k] = argv[k + used];
            *argc -= used;
            return v;
        }
    }
    return NULL;
}

static int cmd_keys(int argc, char **argv, char **envp)
{
    if (argc < 1) {
        fprintf(stderr, "chatd keys: create, list or revoke (try chatd --help)\n");
        return 2;
    }
    const char *sub = argv[0];
    argc--;
    argv++;
    const char *name = NULL, *role = "user", *rate = NULL, *target = NULL;
    if (strcmp(sub, "create") == 0) {
        name = take_opt(&argc, argv, "--name");
        const char *r = take_opt(&argc, argv, "--role");
        rate = take_opt(&argc, argv, "--rate-limit");
        role = r ? r : "user";
        if (!name || !*name) {
            fprintf(stderr, "chatd keys create: --name NAME is required\n");
            return 2;
        }
        if (strlen(name) > STORE_ID_MAX) {
            fprintf(stderr, "chatd keys create: --name is %zu bytes, longer than %d\n", strlen(name), STORE_ID_MAX);
            return 2;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "admin") != 0) {
            fprintf(stderr, "chatd keys create: --role must be user or admin\n");
            return 2;
        }
        ratelimit_spec spec;
        char why[160];
        if (rate && ratelimit_spec_parse(rate, &spec, why, sizeof why) != CHAT_OK) {
            fprintf(stderr, "chatd keys create: invalid --rate-limit \"%s\": %s\n", rate, why);
            return 2;
        }
    } else if (strcmp(sub, "revoke") == 0) {
        if (argc < 1 || argv[0][0] == '-') {
            fprintf(stderr, "chatd keys revoke: name the key (its id or name)\n");
            return 2;
        }
        target = argv[0];
        argc--;
        argv++;
    } else if (strcmp(sub, "list") != 0) {
        fprintf(stderr, "chatd keys: unknown subcommand \"%s\" (create, list, revoke)\n", sub);
        return 2;
    }

    struct chat_config cfg;
    char err[512] = "";
    if (chat_config_load(&cfg, argc, argv, envp, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    store *db = NULL;
    int status = 1;
    if (store_open(cfg.database_url, &db, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chatd: cannot open the database: %s\n", err);
        goto out;
    }
    if (strcmp(sub, "create") == 0) {
        char secret[80], hash[65], id[40]; /* "key_" + 16 hex digits: well within STORE_ID_MAX */
        auth_new_secret(secret, sizeof secret);
        auth_sha256_hex(secret, hash);
        chat_random_id(id, sizeof id, "key_", 8);
        store_key_new k = {
            .id = id, .name = name, .hash = hash, .role = role, .rate_limit = rate, .now = chat_now_ms()
        };
        if (store_key_create(db, &k) != CHAT_OK) {
            fprintf(stderr, "chatd keys create: the key could not be stored\n");
            goto out;
        }
        printf("id:     %s\nname:   %s\nrole:   %s\nsecret: %s\n", id, name, role, secret);
        fprintf(stderr, "Store the secret now: it is not kept and cannot be shown again.\n");
        if (cfg.auth_mode != AUTH_MODE_KEYS)
            fprintf(stderr, "Note: AUTH_MODE is %s; keys are used with AUTH_MODE=keys.\n", auth_mode_name(&cfg));
        status = 0;
    } else if (strcmp(sub, "list") == 0) {
        store_key *keys = NULL;
        size_t n = 0;
        if (store_keys_list(db, &keys, &n) != CHAT_OK) {
            fprintf(stderr, "chatd keys list: cannot read the keys\n");
            goto out;
        }
        printf("%-22s %-20s %-6s %-10s %-24s %8s %12s\n", "ID", "NAME", "ROLE", "STATUS", "CREATED", "TURNS",
               "COST_USD");
        for (size_t i = 0; i < n; i++) {
            char created[32];
            chat_format_rfc3339(keys[i].created_at, created);
            printf("%-22s %-20s %-6s %-10s %-24s %8lld %5lld.%06lld\n", keys[i].id, keys[i].name, keys[i].role,
                   keys[i].revoked_at ? "revoked" : "active", created, (long long)keys[i].turn_count,
                   (long long)(keys[i].cost_micros / 1000000), (long long)(keys[i].cost_micros % 1000000));
        }
        store_keys_free(keys, n);
        status = 0;
    } else {
        store_key k = { 0 };
        chat_rc rc = store_key_revoke(db, target, chat_now_ms(), &k);
        if (rc == CHAT_ENOTFOUND)
            fprintf(stderr, "chatd keys revoke: no key has the id or name \"%s\"\n", target);
        else if (rc == CHAT_ECONFLICT)
            fprintf(stderr, "chatd keys revoke: several active keys are named \"%s\": use the id\n", target);
        else if (rc != CHAT_OK)
            fprintf(stderr, "chatd keys revoke: the key could not be revoked\n");
        else {
            printf("revoked %s (%s)\n", k.id, k.name);
            status = 0;
        }
        store_key_clear(&k);
    }
out:
    store_close(db);
    chat_config_free(&cfg);
    return status;
}

/*
 * chatd export / chatd import: the database named by DATABASE_URL to or from a
 * JSON Lines file (format and behaviour in store/transfer.h). The summary goes
 * to stderr for export (stdout may be the data) and to stdout for import.
 * Exit status 0, 1 on failure (a partial export file is removed), 2 on usage.
 */
static int cmd_transfer(const char *cmd, int argc, char **argv, char **envp)
{
    bool is_export = strcmp(cmd, "export") == 0;
    const char *path = take_opt(&argc, argv, is_export ? "--out" : "--in");
    const char *max_arg = is_export ? NULL : take_opt(&argc, argv, "--max-line-bytes");
    size_t max_line = 0;
    if (max_arg) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(max_arg, &end, 10);
        if (errno || end == max_arg || *end || v < 1024 || v > ((unsigned long long)1 << 34)) {
            fprintf(stderr, "chatd import: --max-line-bytes must be a number of bytes from 1024 to 2^34\n");
            return 2;
        }
        max_line = (size_t)v;
    }
    if (path && !*path) {
        fprintf(stderr, "chatd %s: %s needs a file name\n", cmd, is_export ? "--out" : "--in");
        return 2;
    }
    bool std_stream = !path || strcmp(path, "-") == 0;

    struct chat_config cfg;
    char err[512] = "";
    if (chat_config_load(&cfg, argc, argv, envp, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    chat_log_set_level(cfg.log_level);
    int status = 1;
    store *db = NULL;
    FILE *f = NULL;
    transfer_counts c;
    if (store_open(cfg.database_url, &db, err, sizeof err) != CHAT_OK) {
        fprintf(stderr, "chatd: cannot open the database: %s\n", err);
        goto out;
    }
    if (std_stream)
        f = is_export ? stdout : stdin;
    else if (!(f = fopen(path, is_export ? "w" : "r"))) {
        fprintf(stderr, "chatd %s: cannot open %s: %s\n", cmd, path, strerror(errno));
        goto out;
    }
    if (is_export) {
        chat_rc rc = transfer_export(db, f, &c, err, sizeof err);
        if (!std_stream) {
            /* The export is only as good as its last byte on disk. */
            bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
            ok = fclose(f) == 0 && ok;
            f = NULL;
            if (rc == CHAT_OK && !ok) {
                snprintf(err, sizeof err, "write error: %s", strerror(errno));
                rc = CHAT_EIO;
            }
        }
        if (rc != CHAT_OK) {
            fprintf(stderr, "chatd export: %s\n", err);
            if (!std_stream)
                unlink(path); /* never leave a file that looks like an export */
            goto out;
        }
        fprintf(stderr, "exported %lld keys, %lld sessions, %lld messages%s%s\n", (long long)c.keys,
                (long long)c.sessions, (long long)c.messages, std_stream ? "" : " to ", std_stream ? "" : path);
        status = 0;
    } else {
        chat_rc rc = transfer_import(db, f, max_line, &c, err, sizeof err);
        if (rc != CHAT_OK)
            fprintf(stderr, "chatd import: %s%s%s\n", std_stream ? "" : path, std_stream ? "" : ": ", err);
        fprintf(rc == CHAT_OK ? stdout : stderr,
                "%skeys: %lld imported, %lld skipped (already present)\n"
                "sessions: %lld imported, %lld skipped (already present)\nmessages: %lld imported\n",
                rc == CHAT_OK ? "" : "before stopping: ", (long long)c.keys, (long long)c.keys_skipped,
                (long long)c.sessions, (long long)c.sessions_skipped, (long long)c.messages);
        status = rc == CHAT_OK ? 0 : 1;
    }
out:
    if (f && !std_stream)
        fclose(f);
    store_close(db);
    chat_config_free(&cfg);
    return status;
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
    if (strcmp(cmd, "keys") == 0)
        return cmd_keys(argc - 2, argv + 2, environ);
    if (strcmp(cmd, "export") == 0 || strcmp(cmd, "import") == 0)
        return cmd_transfer(cmd, argc - 2, argv + 2, environ);
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
    chat_log_set_level(cfg.log_level);

    int status;
    if (strcmp(cmd, "migrate") == 0)
        status = cmd_migrate(&cfg);
    else {
        /* The server's loops must never wait on stderr (core/log.h): lines go
         * through the log writer thread, with up to LOG_RING_BYTES queued. */
        if (chat_log_start(LOG_RING_BYTES) != CHAT_OK)
            chat_log(LOG_WARN, "log writer not started: logging writes directly", NULL);
        status = chat_app_run(&cfg) == CHAT_OK ? 0 : 1;
        chat_log_stop();
    }
    chat_config_free(&cfg);
    return status;
}
