/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.h - one static option table per component drives flag parsing, environment and config
 * file lookup, --help and --print-config.
 *
 * Precedence: command-line flag > environment (opt->env, then opt->env_alt) > config file
 * (--config FILE or KVSTASH_CONFIG; a JSON object whose keys are option keys) > default.
 * Flags: --key=value, --key value, --key (bool true), --no-key (bool false); '-' and '_' are
 * the same in keys (--buffer_size == --buffer-size); "--" ends options; positional arguments
 * may be interleaved. Every value is parsed strictly; a bad one is an error naming the key, the
 * source and the problem. Sizes accept units (64MiB, 4GiB).
 *
 * Every table automatically gets the common options --config, --log-level, --log-format,
 * --print-config and --help (-h). kv_cfg_parse applies --log-level/--log-format itself.
 */
#ifndef KV_COMMON_CONFIG_H
#define KV_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvstash/err.h"

enum kv_cfg_type {
    KV_CFG_STR,
    KV_CFG_INT,  /* int64, range-checked against min/max when min < max */
    KV_CFG_SIZE, /* uint64 bytes with optional unit, range-checked likewise */
    KV_CFG_BOOL,
    KV_CFG_DOUBLE, /* range-checked likewise */
    KV_CFG_ENUM,   /* one of the '|'-separated words in choices */
};

struct kv_cfg_opt {
    const char *key;     /* "capacity" -> --capacity, file key "capacity" */
    const char *env;     /* "KVSTASH_CAPACITY" or NULL */
    const char *env_alt; /* a second environment name (compatibility) or NULL */
    enum kv_cfg_type type;
    const char *def; /* default as text; NULL = unset */
    double min, max;
    const char *choices; /* KV_CFG_ENUM only */
    const char *metavar; /* "SIZE", "H:P"; NULL = from the type */
    const char *help;
};

enum kv_cfg_src {
    KV_CFG_SRC_UNSET = 0,
    KV_CFG_SRC_DEFAULT,
    KV_CFG_SRC_FILE,
    KV_CFG_SRC_ENV,
    KV_CFG_SRC_FLAG,
};

struct kv_cfg_val {
    enum kv_cfg_src src;
    char *text;       /* raw text (owned) */
    const char *from; /* "--key", "KVSTASH_X", "file.json", "default" */
    int64_t i;
    uint64_t u;
    double d;
    bool b;
};

struct kv_cfg {
    const char *prog;        /* "kvstash serve" */
    const char *synopsis;    /* "[OPTIONS] KEY FILE"; NULL = "[OPTIONS]" */
    const char *description; /* paragraphs for --help */
    const struct kv_cfg_opt *opts;
    size_t nopts;
    /* filled by kv_cfg_parse */
    struct kv_cfg_val *vals; /* nopts + common options */
    char **args;             /* positional arguments (borrowed from argv) */
    size_t nargs;
};

/* Returned by kv_cfg_parse after printing --help or --print-config: exit 0. */
#define KV_CFG_EXIT 1

/* Parses argv[1..argc) (argv[0] is the subcommand). Returns KV_OK, KV_CFG_EXIT, or a negative
 * error with a one-line message in err. Free with kv_cfg_fini() in every case. */
KV_API int kv_cfg_parse(struct kv_cfg *c, int argc, char **argv, char *err, size_t errlen);
KV_API void kv_cfg_fini(struct kv_cfg *c);

KV_API void kv_cfg_print_help(const struct kv_cfg *c, FILE *out);
KV_API void kv_cfg_print_config(const struct kv_cfg *c, FILE *out);

/* Typed accessors by key. The key must be in the table (an internal invariant). */
KV_API const char *kv_cfg_str(const struct kv_cfg *c, const char *key); /* NULL when unset */
KV_API int64_t kv_cfg_int(const struct kv_cfg *c, const char *key);
KV_API uint64_t kv_cfg_size(const struct kv_cfg *c, const char *key);
KV_API bool kv_cfg_bool(const struct kv_cfg *c, const char *key);
KV_API double kv_cfg_double(const struct kv_cfg *c, const char *key);
KV_API bool kv_cfg_isset(const struct kv_cfg *c, const char *key);
KV_API enum kv_cfg_src kv_cfg_source(const struct kv_cfg *c, const char *key);

#endif
