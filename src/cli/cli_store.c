/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_store.c - the store client commands: `kvstash put KEY FILE|-`, `get KEY [FILE|-]`,
 * `rm KEY`, `ls [PREFIX]`, `stat`; and kv_cli_store_open, shared with `replay` and
 * `bench store`.
 *
 * Exit status: 0 success; 1 runtime failure (one line on stderr naming the key and the cause,
 * "not found" for a missing key); 2 bad usage. Single-threaded.
 */
#define KV_LOG_COMPONENT "cli"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/auth.h"
#include "common/buf.h"
#include "common/json.h"
#include "common/util.h"
#include "kvstash/kvstash.h"
#include "kvstash/store.h"

int kv_cli_store_open(const struct kv_cfg *c, struct kv_store **out)
{
    /* one-shot client commands: the library's start-up INFO lines (transfer engine listening,
     * ...) are noise here; an explicit --log-level still wins */
    if (kv_cfg_source(c, "log-level") == KV_CFG_SRC_DEFAULT)
        kv_log_set_level(KV_LOG_WARN);
    const char *master = kv_cfg_str(c, "master");
    const char *meta = kv_cfg_str(c, "metadata");
    if (!master && !meta)
        master = KV_CLI_DEFAULT_MASTER;
    const char *proto = kv_cfg_str(c, "protocol");
    if (kv_auth_set_token(kv_cfg_str(c, "token")) < 0) {
        fprintf(stderr, "%s: --token is longer than %d bytes\n", c->prog, KV_AUTH_MAX_TOKEN);
        return KV_EINVAL;
    }
    struct kv_store_opts o = {
        .master = master,
        .metadata = meta,
        .cluster = kv_cfg_str(c, "cluster"),
        .protocol = proto,
        .timeout_ms = (int)kv_cfg_int(c, "timeout"),
        .poll_spin_us = kv_cfg_int(c, "poll-spin-us") ? (int)kv_cfg_int(c, "poll-spin-us") : -1,
    };
    int rc = kv_store_open(&o, out);
    if (rc < 0) {
        if (meta)
            fprintf(stderr, "%s: cannot reach the store through metadata %s: %s\n", c->prog, meta,
                    kv_strerror(rc));
        else
            fprintf(stderr,
                    "%s: cannot reach the store master at %s: %s (is 'kvstash serve' or "
                    "'kvstash master' running? set --master or KVSTASH_MASTER)\n",
                    c->prog, master, kv_strerror(rc));
    }
    return rc;
}

/* Parses and checks the positional argument count; returns -1 to go on or an exit status. */
static int parse(struct kv_cfg *c, int argc, char **argv, size_t min, size_t max)
{
    int ex = kv_cli_parse(c, argc, argv);
    if (ex >= 0)
        return ex;
    if (c->nargs < min) {
        fprintf(stderr, "%s: missing argument (usage: %s %s)\n", c->prog, c->prog, c->synopsis);
        return 2;
    }
    if (c->nargs > max) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", c->prog, c->args[max]);
        return 2;
    }
    return -1;
}

static void print_err(const struct kv_cfg *c, const char *key, int rc)
{
    if (rc == KV_ENOENT)
        fprintf(stderr, "%s: %s: not found\n", c->prog, key);
    else if (rc == KV_EEXIST)
        fprintf(stderr, "%s: %s: already exists (first writer wins; 'kvstash rm' it to replace)\n",
                c->prog, key);
    else
        fprintf(stderr, "%s: %s: %s\n", c->prog, key, kv_strerror(rc));
}

/* Prints v compactly on one line and releases it. */
static void print_json(json_t *v)
{
    char *txt = v ? kv_json_dump(v) : NULL;
    printf("%s\n", txt ? txt : "{}");
    kv_free(txt);
    json_decref(v);
}

static int check_key(const struct kv_cfg *c, const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > KV_STORE_MAX_KEY) {
        fprintf(stderr, "%s: bad key (1..%d bytes)\n", c->prog, KV_STORE_MAX_KEY);
        return 2;
    }
    return -1;
}

/* ------------------------------------------------------------------ put */

static const struct kv_cfg_opt put_opts[] = {
    KV_CLI_STORE_OPTS,
    {"replicas", "KVSTASH_REPLICAS", NULL, KV_CFG_INT, "1", 1, 16, NULL, "N",
     "copies on distinct nodes"},
    {"ttl", "KVSTASH_TTL", NULL, KV_CFG_INT, "0", 0, 4294967295.0, NULL, "SECONDS",
     "expire after this long without access (0 = the master's kv_expire_time)"},
    {"pin", "KVSTASH_PIN", NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "soft pin: evicted only when nothing else can be"},
};

/* Reads the value: a regular file is mapped, anything else (a pipe, "-") read to the end. */
struct value {
    void *p;
    size_t len;
    bool mapped;
    struct kv_buf b;
};

/* A stream (pipe, "-", /dev/zero) stops with an error once it passes max bytes (0: no limit):
 * reading it to the end first would grow memory without bound. */
static int read_value(const char *path, struct value *v, uint64_t max, char *err, size_t errlen)
{
    memset(v, 0, sizeof(*v));
    kv_buf_init(&v->b);
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            v->p = p;
            v->len = (size_t)st.st_size;
            v->mapped = true;
            if (fd != STDIN_FILENO)
                close(fd);
            return 0;
        }
    }
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto out_fail;
        }
        if (n == 0)
            break;
        if (max && v->b.len + (size_t)n > max) {
            char sz[32];
            kv_format_size(max, sz, sizeof(sz));
            snprintf(err, errlen,
                     "%s: the input exceeds %s (%llu bytes), the largest object this cluster can "
                     "hold (its largest storage node); stopped reading",
                     path, sz, (unsigned long long)max);
            goto out_fail;
        }
        if (kv_buf_append(&v->b, chunk, (size_t)n) < 0) {
            snprintf(err, errlen, "%s: out of memory", path);
            goto out_fail;
        }
    }
    if (fd != STDIN_FILENO)
        close(fd);
    v->p = v->b.data;
    v->len = v->b.len;
    return 0;
out_fail:
    if (fd != STDIN_FILENO)
        close(fd);
    kv_buf_fini(&v->b);
    return -1;
}

static void value_fini(struct value *v)
{
    if (v->mapped)
        munmap(v->p, v->len);
    kv_buf_fini(&v->b);
}

static bool is_regular_file(const char *path)
{
    struct stat st;
    return strcmp(path, "-") != 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The largest value a put with this many replicas can store: the replicas-th largest node
 * capacity (each replica lives whole in one node's segment). KV_ESTORE_NONODE without a node,
 * KV_ENOSPC (*nodes says how many there are) with fewer nodes than replicas. */
static int largest_object(struct kv_store *s, int replicas, uint64_t *out, int *nodes_out)
{
    char *js = NULL;
    int rc = kv_store_stat_json(s, &js);
    if (rc < 0)
        return rc;
    json_t *root = json_loads(js, 0, NULL);
    kv_store_free(js);
    json_t *nodes = root ? json_object_get(root, "nodes") : NULL;
    uint64_t top[16] = {0}; /* the largest capacities, descending */
    int have = 0;
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n)
    {
        uint64_t c = (uint64_t)json_integer_value(json_object_get(n, "capacity"));
        int at = KV_MIN(have, replicas);
        while (at > 0 && top[at - 1] < c) {
            if (at < (int)KV_ARRAY_SIZE(top))
                top[at] = top[at - 1];
            at--;
        }
        if (at < replicas && at < (int)KV_ARRAY_SIZE(top))
            top[at] = c;
        have++;
    }
    json_decref(root);
    *nodes_out = have;
    if (have == 0)
        return KV_ESTORE_NONODE;
    if (replicas < 1 || replicas > (int)KV_ARRAY_SIZE(top) || have < replicas)
        return KV_ENOSPC;
    *out = top[replicas - 1];
    return KV_OK;
}

int kv_cli_put(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash put",
        .synopsis = "[OPTIONS] KEY FILE|-",
        .description =
            "Stores the bytes of FILE (or standard input for '-') under KEY. The first\n"
            "writer of a key wins: a put of an existing key fails with 'already exists'\n"
            "(remove it first to replace it).",
        .opts = put_opts,
        .nopts = KV_ARRAY_SIZE(put_opts),
    };
    struct kv_store *s = NULL;
    int ex = parse(&cfg, argc, argv, 2, 2);
    if (ex >= 0)
        goto out;
    const char *key = cfg.args[0];
    if ((ex = check_key(&cfg, key)) >= 0)
        goto out;
    ex = 1;
    struct value v;
    char err[512];
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    struct kv_put_opts po = {
        .replicas = (int)kv_cfg_int(&cfg, "replicas"),
        .ttl_s = (uint32_t)kv_cfg_int(&cfg, "ttl"),
        .pin = kv_cfg_bool(&cfg, "pin"),
    };
    uint64_t max = 0;
    if (!is_regular_file(cfg.args[1])) {
        int nodes = 0;
        int rc = largest_object(s, po.replicas, &max, &nodes);
        if (rc == KV_ENOSPC) {
            fprintf(stderr, "%s: %s: %d replicas asked, but the cluster has %d storage node%s\n",
                    cfg.prog, key, po.replicas, nodes, nodes == 1 ? "" : "s");
            goto out;
        }
        if (rc < 0) {
            print_err(&cfg, key, rc);
            goto out;
        }
    }
    if (read_value(cfg.args[1], &v, max, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", cfg.prog, err);
        goto out;
    }
    int rc = kv_store_put(s, key, v.p, v.len, &po);
    if (rc < 0) {
        print_err(&cfg, key, rc);
        goto out_value;
    }
    if (kv_cfg_bool(&cfg, "json"))
        print_json(json_pack("{s:s, s:I, s:i}", "key", key, "size", (json_int_t)v.len, "replicas",
                             po.replicas));
    else
        printf("stored %s (%zu bytes, %d replica%s)\n", key, v.len, po.replicas,
               po.replicas == 1 ? "" : "s");
    ex = 0;
out_value:
    value_fini(&v);
out:
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}

/* ------------------------------------------------------------------ get */

static const struct kv_cfg_opt get_opts[] = {
    KV_CLI_STORE_OPTS,
};

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static bool is_regular_or_absent(const char *path)
{
    struct stat st;
    return stat(path, &st) != 0 || S_ISREG(st.st_mode);
}

int kv_cli_get(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash get",
        .synopsis = "[OPTIONS] KEY [FILE|-]",
        .description =
            "Writes the value of KEY to FILE (standard output without FILE or for '-').\n"
            "The value is checked against its checksum; a missing key exits 1 with\n"
            "'not found', and FILE is then not created. With --json and FILE, prints\n"
            "{key, size} after writing.",
        .opts = get_opts,
        .nopts = KV_ARRAY_SIZE(get_opts),
    };
    struct kv_store *s = NULL;
    void *buf = NULL;
    int ex = parse(&cfg, argc, argv, 1, 2);
    if (ex >= 0)
        goto out;
    const char *key = cfg.args[0];
    if ((ex = check_key(&cfg, key)) >= 0)
        goto out;
    const char *path = cfg.nargs > 1 ? cfg.args[1] : "-";
    bool to_stdout = strcmp(path, "-") == 0;
    bool json = kv_cfg_bool(&cfg, "json");
    if (json && to_stdout) {
        fprintf(stderr, "%s: --json needs a FILE (the value itself goes to FILE)\n", cfg.prog);
        ex = 2;
        goto out;
    }
    ex = 1;
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    size_t len = 0;
    int rc = kv_store_get_alloc(s, key, &buf, &len);
    if (rc < 0) {
        print_err(&cfg, key, rc);
        goto out;
    }
    if (to_stdout) {
        if (write_all(STDOUT_FILENO, buf, len) < 0) {
            fprintf(stderr, "%s: writing standard output: %s\n", cfg.prog, strerror(errno));
            goto out;
        }
    } else if (!is_regular_or_absent(path)) {
        /* a device or a pipe (/dev/null, a fifo): written in place, never replaced */
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write_all(fd, buf, len) < 0) {
            fprintf(stderr, "%s: %s: %s\n", cfg.prog, path, strerror(errno));
            if (fd >= 0)
                close(fd);
            goto out;
        }
        close(fd);
    } else {
        /* write a temporary file and rename it: FILE is either the whole value or untouched */
        char tmp[4096];
        if (snprintf(tmp, sizeof(tmp), "%s.kvstash-tmp-%d", path, (int)getpid()) >=
            (int)sizeof(tmp)) {
            fprintf(stderr, "%s: %s: path too long\n", cfg.prog, path);
            goto out;
        }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "%s: %s: %s\n", cfg.prog, tmp, strerror(errno));
            goto out;
        }
        if (write_all(fd, buf, len) < 0 || close(fd) < 0) {
            fprintf(stderr, "%s: %s: %s\n", cfg.prog, tmp, strerror(errno));
            unlink(tmp);
            goto out;
        }
        if (rename(tmp, path) < 0) {
            fprintf(stderr, "%s: %s: %s\n", cfg.prog, path, strerror(errno));
            unlink(tmp);
            goto out;
        }
        if (json)
            print_json(json_pack("{s:s, s:I}", "key", key, "size", (json_int_t)len));
    }
    ex = 0;
out:
    kv_store_free(buf);
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}

/* ------------------------------------------------------------------ rm */

int kv_cli_rm(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash rm",
        .synopsis = "[OPTIONS] KEY...",
        .description = "Removes each KEY. The key disappears at once; its space is reused once\n"
                       "readers holding a lease on it are done. A missing key exits 1.",
        .opts = get_opts,
        .nopts = KV_ARRAY_SIZE(get_opts),
    };
    struct kv_store *s = NULL;
    int ex = parse(&cfg, argc, argv, 1, (size_t)-1);
    if (ex >= 0)
        goto out;
    for (size_t i = 0; i < cfg.nargs; i++)
        if ((ex = check_key(&cfg, cfg.args[i])) >= 0)
            goto out;
    ex = 1;
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    ex = 0;
    json_t *removed = kv_cfg_bool(&cfg, "json") ? json_array() : NULL;
    for (size_t i = 0; i < cfg.nargs; i++) {
        int rc = kv_store_remove(s, cfg.args[i]);
        if (rc < 0) {
            print_err(&cfg, cfg.args[i], rc);
            ex = 1;
        } else if (removed) {
            json_array_append_new(removed, json_string(cfg.args[i]));
        } else {
            printf("removed %s\n", cfg.args[i]);
        }
    }
    if (removed)
        print_json(json_pack("{s:o}", "removed", removed));
out:
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}

/* ------------------------------------------------------------------ ls */

static const struct kv_cfg_opt ls_opts[] = {
    KV_CLI_STORE_OPTS,
    {"limit", "KVSTASH_LS_LIMIT", NULL, KV_CFG_INT, "0", 0, 4294967295.0, NULL, "N",
     "at most N keys (0 = all)"},
};

int kv_cli_ls(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash ls",
        .synopsis = "[OPTIONS] [PREFIX]",
        .description =
            "Lists the keys starting with PREFIX (all keys without), sorted, with their\n"
            "sizes. --json prints [{\"key\":...,\"size\":...}, ...].",
        .opts = ls_opts,
        .nopts = KV_ARRAY_SIZE(ls_opts),
    };
    struct kv_store *s = NULL;
    char **keys = NULL;
    uint64_t *sizes = NULL;
    size_t n = 0;
    int ex = parse(&cfg, argc, argv, 0, 1);
    if (ex >= 0)
        goto out;
    ex = 1;
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    const char *prefix = cfg.nargs ? cfg.args[0] : "";
    int rc = kv_store_list(s, prefix, (size_t)kv_cfg_int(&cfg, "limit"), &keys, &sizes, &n);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", cfg.prog, kv_strerror(rc));
        goto out;
    }
    if (kv_cfg_bool(&cfg, "json")) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(
                arr, json_pack("{s:s, s:I}", "key", keys[i], "size", (json_int_t)sizes[i]));
        char *txt = arr ? kv_json_dump(arr) : NULL;
        json_decref(arr);
        if (!txt) {
            fprintf(stderr, "%s: out of memory\n", cfg.prog);
            goto out;
        }
        printf("%s\n", txt);
        kv_free(txt);
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%12llu  %s\n", (unsigned long long)sizes[i], keys[i]);
    }
    ex = 0;
out:
    kv_store_keys_free(keys, n);
    kv_store_free(sizes);
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}

/* ------------------------------------------------------------------ stat */

int kv_cli_stat(int argc, char **argv)
{
    struct kv_cfg cfg = {
        .prog = "kvstash stat",
        .synopsis = "[OPTIONS]",
        .description = "Prints the cluster's statistics (nodes, capacity, used bytes, objects,\n"
                       "hits, misses, evictions, demotions): the master's /api/v1/cluster\n"
                       "document, indented (compact with --json).",
        .opts = get_opts,
        .nopts = KV_ARRAY_SIZE(get_opts),
    };
    struct kv_store *s = NULL;
    char *txt = NULL;
    int ex = parse(&cfg, argc, argv, 0, 0);
    if (ex >= 0)
        goto out;
    ex = 1;
    if (kv_cli_store_open(&cfg, &s) < 0)
        goto out;
    int rc = kv_store_stat_json(s, &txt);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", cfg.prog, kv_strerror(rc));
        goto out;
    }
    if (kv_cfg_bool(&cfg, "json")) {
        printf("%s\n", txt);
    } else {
        json_t *root = NULL;
        char err[128];
        if (kv_json_parse(txt, strlen(txt), &root, err, sizeof(err)) == KV_OK) {
            char *pretty = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
            printf("%s\n", pretty ? pretty : txt);
            kv_free(pretty);
            json_decref(root);
        } else {
            printf("%s\n", txt);
        }
    }
    ex = 0;
out:
    kv_store_free(txt);
    kv_store_close(s);
    kv_cfg_fini(&cfg);
    return ex;
}
