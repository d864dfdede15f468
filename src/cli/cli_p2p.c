/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_p2p.c - `kvstash p2p publish|fetch|ls|rm|stat`: P2P file distribution (include/kvstash/
 * p2p.h, docs/p2p.md).
 *
 * publish serves until SIGINT/SIGTERM; fetch returns once the set is complete and verified,
 * or keeps serving it with --seed until SIGINT/SIGTERM. A fetch shows a progress bar on a
 * terminal (stderr), is quiet otherwise, and prints one JSON object with --json.
 * Exit status: 0 success, 1 runtime failure (one line naming the set and the cause), 2 usage.
 * Threads: main, plus a signal thread (sigwait) that cancels a running fetch.
 */
#define KV_LOG_COMPONENT "cli"
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/alloc.h"
#include "common/json.h"
#include "common/util.h"
#include "kvstash/p2p.h"

/* clang-format off */
#define P2P_COMMON_OPTS                                                                            \
    {"metadata", "KVSTASH_METADATA", NULL, KV_CFG_STR, "http://127.0.0.1:8080/metadata", 0, 0,   \
     NULL, "URL", "metadata URL (http://, etcd://, redis://, embedded://)"},                       \
    {"cluster", "KVSTASH_CLUSTER", NULL, KV_CFG_STR, "default", 0, 0, NULL, "NAME",                \
     "cluster name in metadata"},                                                                  \
    {"timeout", "KVSTASH_TIMEOUT", NULL, KV_CFG_INT, "10000", 100, 3600000, NULL, "MS",            \
     "per metadata request and per chunk read"},                                                   \
    {"json", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL, "machine-readable output"}
#define P2P_PEER_OPTS                                                                              \
    {"protocol", "KVSTASH_PROTOCOL", NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|tcp|shm|rdma", NULL,   \
     "transport between peers"},                                                                   \
    {"bind", "KVSTASH_BIND", NULL, KV_CFG_STR, "127.0.0.1", 0, 0, NULL, "HOST",                    \
     "address peers read from"},                                                                   \
    {"lease-ttl", "KVSTASH_P2P_LEASE_TTL", NULL, KV_CFG_INT, "5", 1, 3600, NULL, "SECONDS",        \
     "a dead peer's records vanish after this long"}
/* clang-format on */

static const struct kv_cfg_opt publish_opts[] = {
    P2P_COMMON_OPTS,
    P2P_PEER_OPTS,
    {"chunk-size", "KVSTASH_P2P_CHUNK_SIZE", NULL, KV_CFG_SIZE, "64MiB", 4096, 4294967296.0, NULL,
     NULL, "chunk size (unit of transfer and of verification)"},
};

static const struct kv_cfg_opt fetch_opts[] = {
    P2P_COMMON_OPTS,
    P2P_PEER_OPTS,
    {"seed", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "keep serving the set after the fetch completed, until SIGINT/SIGTERM"},
    {"inflight", "KVSTASH_P2P_INFLIGHT", NULL, KV_CFG_INT, "4", 1, 64, NULL, "N",
     "chunk reads in flight"},
    {"progress", NULL, NULL, KV_CFG_ENUM, "auto", 0, 0, "auto|always|never", NULL,
     "progress bar on stderr (auto: when stderr is a terminal and --json is not given)"},
};

static const struct kv_cfg_opt plain_opts[] = {
    P2P_COMMON_OPTS,
};

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

static int open_p2p(const struct kv_cfg *c, bool peer, int inflight, struct kv_p2p **out)
{
    struct kv_p2p_opts o = {
        .metadata = kv_cfg_str(c, "metadata"),
        .cluster = kv_cfg_str(c, "cluster"),
        .protocol = peer ? kv_cfg_str(c, "protocol") : NULL,
        .bind_host = peer ? kv_cfg_str(c, "bind") : NULL,
        .timeout_ms = (int)kv_cfg_int(c, "timeout"),
        .lease_ttl_s = peer ? (int)kv_cfg_int(c, "lease-ttl") : 0,
        .inflight = inflight,
    };
    int rc = kv_p2p_open(&o, out);
    if (rc < 0)
        fprintf(stderr, "%s: cannot reach metadata %s: %s (is 'kvstash metad' running?)\n", c->prog,
                o.metadata, kv_strerror(rc));
    return rc;
}

static void print_json(json_t *v)
{
    char *txt = v ? kv_json_dump(v) : NULL;
    printf("%s\n", txt ? txt : "{}");
    fflush(stdout);
    kv_free(txt);
    json_decref(v);
}

static int set_err(const struct kv_cfg *c, const char *name, int rc)
{
    if (rc == KV_ENOENT)
        fprintf(stderr, "%s: %s: no such set is published\n", c->prog, name);
    else
        fprintf(stderr, "%s: %s: %s\n", c->prog, name, kv_strerror(rc));
    return 1;
}

/* ------------------------------------------------------------------ signal thread */

static struct kv_p2p *sig_p2p;
static _Atomic int sig_got;

static void *sig_main(void *arg)
{
    (void)arg;
    int sig = kv_cli_wait_signal();
    atomic_store(&sig_got, sig);
    kv_p2p_cancel(sig_p2p);
    return NULL;
}

/* ------------------------------------------------------------------ subcommand runner */

/* A subcommand: its help, options and argument count, and its body, which runs with the
 * arguments parsed and the P2P handle open (closed again after it) and returns the exit
 * status. */
struct p2p_cmd {
    const char *name; /* argv[1] */
    const char *synopsis;
    const char *description;
    const struct kv_cfg_opt *opts;
    size_t nopts;
    size_t min_args, max_args;
    bool peer;     /* publish, fetch: peer options, and signals blocked for sigwait */
    bool inflight; /* fetch: the --inflight option */
    int (*body)(const struct kv_cfg *c, struct kv_p2p *p);
};

static int run_cmd(const struct p2p_cmd *cmd, int argc, char **argv)
{
    char prog[64];
    snprintf(prog, sizeof(prog), "kvstash p2p %s", cmd->name);
    struct kv_cfg c = {
        .prog = prog,
        .synopsis = cmd->synopsis,
        .description = cmd->description,
        .opts = cmd->opts,
        .nopts = cmd->nopts,
    };
    int ex = parse(&c, argc, argv, cmd->min_args, cmd->max_args);
    if (ex >= 0)
        goto out;
    ex = 1;
    if (cmd->peer)
        kv_cli_block_signals();
    struct kv_p2p *p;
    if (open_p2p(&c, cmd->peer, cmd->inflight ? (int)kv_cfg_int(&c, "inflight") : 0, &p) < 0)
        goto out;
    ex = cmd->body(&c, p);
    kv_p2p_close(p);
out:
    kv_cfg_fini(&c);
    return ex;
}

/* ------------------------------------------------------------------ publish */

static int publish_body(const struct kv_cfg *c, struct kv_p2p *p)
{
    const char *name = c->args[0];
    int rc = kv_p2p_publish(p, name, (const char *const *)c->args + 1, c->nargs - 1,
                            kv_cfg_size(c, "chunk-size"));
    if (rc < 0)
        return set_err(c, name, rc);
    struct kv_p2p_stat st;
    if (kv_p2p_stat(p, name, &st) == KV_OK) {
        if (kv_cfg_bool(c, "json")) {
            print_json(json_pack("{s:s,s:I,s:I,s:I,s:I}", "name", name, "size_bytes",
                                 (json_int_t)st.size_bytes, "files", (json_int_t)st.files, "chunks",
                                 (json_int_t)st.chunks, "chunk_size", (json_int_t)st.chunk_size));
        } else {
            char sz[32];
            fprintf(stderr, "%s: serving %s: %" PRIu64 " files, %s, %" PRIu64 " chunks\n", c->prog,
                    name, st.files, kv_format_size(st.size_bytes, sz, sizeof(sz)), st.chunks);
        }
    }
    kv_cli_wait_signal();
    return 0;
}

/* ------------------------------------------------------------------ fetch */

struct bar {
    int64_t t0;
    bool on;
};

static void show_progress(void *ud, uint64_t done, uint64_t total)
{
    struct bar *b = ud;
    if (!b->on)
        return;
    double secs = (double)(kv_now_ms() - b->t0) / 1000.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    double frac = total ? (double)done / (double)total : 1.0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    char d[32], t[32], r[32];
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    fprintf(stderr, "\r[%s] %3d%% %s / %s  %s/s  ETA %.0fs   ", bar, (int)(frac * 100),
            kv_format_size(done, d, sizeof(d)), kv_format_size(total, t, sizeof(t)),
            kv_format_size((uint64_t)rate, r, sizeof(r)), eta);
    if (done >= total)
        fputc('\n', stderr);
}

static int fetch_body(const struct kv_cfg *c, struct kv_p2p *p)
{
    int ex = 1;
    sig_p2p = p;
    pthread_t th;
    bool th_ok = pthread_create(&th, NULL, sig_main, NULL) == 0;
    const char *mode = kv_cfg_str(c, "progress");
    bool json = kv_cfg_bool(c, "json");
    struct bar b = {
        .t0 = kv_now_ms(),
        .on = strcmp(mode, "always") == 0 ||
              (strcmp(mode, "auto") == 0 && !json && isatty(STDERR_FILENO)),
    };
    struct kv_p2p_fetch_result r;
    const char *name = c->args[0];
    int rc = kv_p2p_fetch(p, name, c->args[1], show_progress, &b, &r);
    if (rc < 0) {
        if (rc == KV_ECANCELED)
            fprintf(stderr, "%s: %s: interrupted (run again to resume)\n", c->prog, name);
        else
            set_err(c, name, rc);
    } else {
        ex = 0;
        if (json) {
            print_json(json_pack(
                "{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "name", name, "dest", c->args[1],
                "size_bytes", (json_int_t)r.size_bytes, "chunks", (json_int_t)r.chunks,
                "reused_chunks", (json_int_t)r.reused_chunks, "from_publisher",
                (json_int_t)r.from_publisher, "from_peers", (json_int_t)r.from_peers,
                "checksum_errors", (json_int_t)r.checksum_errors, "peer_errors",
                (json_int_t)r.peer_errors, "elapsed_ms", (json_int_t)r.elapsed_ms));
        } else if (b.on) {
            char s1[32], s2[32];
            fprintf(stderr, "%s: %s complete in %.1fs: %s from peers, %s from the publisher\n",
                    c->prog, name, (double)r.elapsed_ms / 1000.0,
                    kv_format_size(r.from_peers, s1, sizeof(s1)),
                    kv_format_size(r.from_publisher, s2, sizeof(s2)));
        }
        if (kv_cfg_bool(c, "seed") && th_ok && atomic_load(&sig_got) == 0) {
            pthread_join(th, NULL); /* serve until a signal */
            th_ok = false;
        }
    }
    if (th_ok) {
        pthread_cancel(th);
        pthread_join(th, NULL);
    }
    sig_p2p = NULL;
    return ex;
}

/* ------------------------------------------------------------------ ls / rm / stat */

static int ls_body(const struct kv_cfg *c, struct kv_p2p *p)
{
    char **names;
    size_t n;
    int rc = kv_p2p_list(p, &names, &n);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", c->prog, kv_strerror(rc));
        return 1;
    }
    if (kv_cfg_bool(c, "json")) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < n; i++)
            json_array_append_new(a, json_string(names[i]));
        print_json(a);
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", names[i]);
    }
    kv_p2p_names_free(names, n);
    return 0;
}

static int rm_body(const struct kv_cfg *c, struct kv_p2p *p)
{
    int rc = kv_p2p_remove(p, c->args[0]);
    return rc < 0 ? set_err(c, c->args[0], rc) : 0;
}

static int stat_body(const struct kv_cfg *c, struct kv_p2p *p)
{
    struct kv_p2p_stat s;
    const char *name = c->args[0];
    int rc = kv_p2p_stat(p, name, &s);
    if (rc < 0)
        return set_err(c, name, rc);
    if (kv_cfg_bool(c, "json")) {
        print_json(json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "name", name,
                             "size_bytes", (json_int_t)s.size_bytes, "chunk_size",
                             (json_int_t)s.chunk_size, "chunks", (json_int_t)s.chunks, "files",
                             (json_int_t)s.files, "holders", (json_int_t)s.holders,
                             "complete_holders", (json_int_t)s.complete_holders, "publishers",
                             (json_int_t)s.publishers, "publisher_uploaded_bytes",
                             (json_int_t)s.publisher_uploaded_bytes, "peer_uploaded_bytes",
                             (json_int_t)s.peer_uploaded_bytes));
    } else {
        char a[32], b2[32], d[32], e[32];
        printf("name:        %s\nsize:        %s in %" PRIu64 " files\nchunks:      %" PRIu64
               " of %s\nholders:     %" PRIu64 " (%" PRIu64 " complete, %" PRIu64
               " publishers)\npublisher uploaded: %s\npeers uploaded:     %s\n",
               name, kv_format_size(s.size_bytes, a, sizeof(a)), s.files, s.chunks,
               kv_format_size(s.chunk_size, d, sizeof(d)), s.holders, s.complete_holders,
               s.publishers, kv_format_size(s.publisher_uploaded_bytes, b2, sizeof(b2)),
               kv_format_size(s.peer_uploaded_bytes, e, sizeof(e)));
    }
    return 0;
}

/* ------------------------------------------------------------------ dispatch */

static const struct p2p_cmd p2p_cmds[] = {
    {"publish", "[OPTIONS] NAME FILE|DIR...",
     "Publishes files (a directory: every file below it, by relative path) as set NAME and "
     "serves them to fetchers until SIGINT/SIGTERM. Files are mapped read-only; peers only "
     "read them.",
     publish_opts, KV_ARRAY_SIZE(publish_opts), 2, SIZE_MAX, true, false, publish_body},
    {"fetch", "[OPTIONS] NAME DEST",
     "Fetches set NAME into directory DEST from every peer holding it (the publisher last), "
     "verifying each chunk; resumes an interrupted fetch. With --seed, keeps serving it "
     "afterwards until SIGINT/SIGTERM.",
     fetch_opts, KV_ARRAY_SIZE(fetch_opts), 2, 2, true, true, fetch_body},
    {"ls", "[OPTIONS]", "Lists the published sets (one name a line; --json: an array).", plain_opts,
     KV_ARRAY_SIZE(plain_opts), 0, 0, false, false, ls_body},
    {"rm", "[OPTIONS] NAME", "Removes set NAME from metadata (manifest, peer records, accounting).",
     plain_opts, KV_ARRAY_SIZE(plain_opts), 1, 1, false, false, rm_body},
    {"stat", "[OPTIONS] NAME",
     "Shows a set's size, chunks, live holders and what the publishers uploaded (as recorded "
     "by the fetchers before each read; docs/p2p.md).",
     plain_opts, KV_ARRAY_SIZE(plain_opts), 1, 1, false, false, stat_body},
};

int kv_cli_p2p(int argc, char **argv)
{
    static const char *usage =
        "Usage: kvstash p2p <publish|fetch|ls|rm|stat> [OPTIONS] [ARGS]\n\n"
        "  publish NAME FILE|DIR...   publish files and serve them until stopped\n"
        "  fetch NAME DEST [--seed]   fetch a set from its holders (and keep serving it)\n"
        "  ls                         list published sets\n"
        "  rm NAME                    remove a set from metadata\n"
        "  stat NAME [--json]         size, chunks, holders, publisher upload\n\n"
        "Run 'kvstash p2p <command> --help' for its options.\n";
    if (argc < 2) {
        fprintf(stderr, "kvstash p2p: missing command (publish, fetch, ls, rm, stat)\n");
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    const char *sub = argv[1];
    for (size_t i = 0; i < KV_ARRAY_SIZE(p2p_cmds); i++) {
        if (strcmp(sub, p2p_cmds[i].name) == 0)
            return run_cmd(&p2p_cmds[i], argc - 1, argv + 1);
    }
    fprintf(stderr, "kvstash p2p: unknown command '%s' (publish, fetch, ls, rm, stat)\n", sub);
    return 2;
}
