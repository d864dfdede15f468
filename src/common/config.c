/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.c - table-driven configuration (see config.h).
 *
 * Order of work in kv_cfg_parse: (1) scan argv, recording raw flag texts and positionals;
 * (2) for each option without a flag, take the environment, then the config file, then the
 * default; (3) convert every text by type, strictly, failing with a message that names the key
 * and where the value came from. Single-threaded: called once at start-up.
 */
#include "common/config.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/util.h"

static const struct kv_cfg_opt common_opts[] = {
    {"config", "KVSTASH_CONFIG", NULL, KV_CFG_STR, NULL, 0, 0, NULL, "FILE",
     "read options from FILE, a JSON object of option keys (below flags and environment)"},
    {"log-level", "KVSTASH_LOG_LEVEL", NULL, KV_CFG_ENUM, "info", 0, 0, "error|warn|info|debug",
     NULL, "log verbosity"},
    {"log-format", "KVSTASH_LOG_FORMAT", NULL, KV_CFG_ENUM, "text", 0, 0, "text|json", NULL,
     "log line format: text for people, json for log collectors"},
    {"print-config", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL,
     "print every option's value and where it came from, then exit"},
    {"help", NULL, NULL, KV_CFG_BOOL, "false", 0, 0, NULL, NULL, "show this help and exit"},
};
#define NCOMMON KV_ARRAY_SIZE(common_opts)

static size_t nall(const struct kv_cfg *c)
{
    return c->nopts + NCOMMON;
}

static const struct kv_cfg_opt *opt_at(const struct kv_cfg *c, size_t i)
{
    return i < c->nopts ? &c->opts[i] : &common_opts[i - c->nopts];
}

/* Compares keys treating '-' and '_' as equal; klen bytes of k against NUL-terminated key. */
static bool key_eq(const char *k, size_t klen, const char *key)
{
    size_t i = 0;
    for (; i < klen && key[i]; i++) {
        char a = k[i] == '_' ? '-' : k[i];
        char b = key[i] == '_' ? '-' : key[i];
        if (a != b)
            return false;
    }
    return i == klen && key[i] == '\0';
}

static long find_opt(const struct kv_cfg *c, const char *k, size_t klen)
{
    for (size_t i = 0; i < nall(c); i++)
        if (key_eq(k, klen, opt_at(c, i)->key))
            return (long)i;
    return -1;
}

static long must_find(const struct kv_cfg *c, const char *key)
{
    long i = find_opt(c, key, strlen(key));
    assert(i >= 0 && "option key not in the table");
    return i;
}

static int set_text(struct kv_cfg_val *v, const char *text, enum kv_cfg_src src, const char *from)
{
    char *t = kv_strdup(text);
    if (!t)
        return KV_ENOMEM;
    kv_free(v->text);
    v->text = t;
    v->src = src;
    v->from = from;
    return KV_OK;
}

static bool enum_has(const char *choices, const char *s)
{
    size_t sl = strlen(s);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == sl && strncmp(p, s, l) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

static int convert(const struct kv_cfg_opt *o, struct kv_cfg_val *v, char *err, size_t errlen)
{
    const char *t = v->text;
    const char *what = NULL;
    int rc = KV_OK;
    bool ranged = o->min < o->max;
    switch (o->type) {
    case KV_CFG_STR:
        return KV_OK;
    case KV_CFG_ENUM:
        if (enum_has(o->choices, t))
            return KV_OK;
        snprintf(err, errlen, "bad value for --%s (from %s): '%s' is not one of %s", o->key,
                 v->from, t, o->choices);
        return KV_EINVAL;
    case KV_CFG_BOOL:
        rc = kv_parse_bool(t, &v->b);
        what = "a boolean (true/false)";
        break;
    case KV_CFG_INT:
        rc = kv_parse_i64(t, &v->i);
        what = "an integer";
        if (rc == KV_OK && ranged && (v->i < o->min || v->i > o->max)) {
            snprintf(err, errlen, "bad value for --%s (from %s): %s is outside [%.0f, %.0f]",
                     o->key, v->from, t, o->min, o->max);
            return KV_ERANGE;
        }
        break;
    case KV_CFG_SIZE:
        rc = kv_parse_size(t, &v->u);
        what = "a size (like 4096, 64MiB, 4GiB)";
        if (rc == KV_OK && ranged && ((double)v->u < o->min || (double)v->u > o->max)) {
            snprintf(err, errlen, "bad value for --%s (from %s): %s is outside [%.0f, %.0f] bytes",
                     o->key, v->from, t, o->min, o->max);
            return KV_ERANGE;
        }
        break;
    case KV_CFG_DOUBLE:
        rc = kv_parse_double(t, &v->d);
        what = "a number";
        if (rc == KV_OK && ranged && (v->d < o->min || v->d > o->max)) {
            snprintf(err, errlen, "bad value for --%s (from %s): %s is outside [%g, %g]", o->key,
                     v->from, t, o->min, o->max);
            return KV_ERANGE;
        }
        break;
    }
    if (rc < 0) {
        snprintf(err, errlen, "bad value for --%s (from %s): '%s' is not %s", o->key, v->from, t,
                 what);
        return KV_EINVAL;
    }
    return KV_OK;
}

static int load_file(struct kv_cfg *c, const char *path, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "config file %s: line %d column %d: %s", path, je.line, je.column,
                 je.text);
        return KV_EINVAL;
    }
    int rc = KV_OK;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "config file %s: top level must be a JSON object", path);
        rc = KV_EINVAL;
        goto out_decref;
    }
    const char *k;
    json_t *jv;
    json_object_foreach(root, k, jv)
    {
        long i = find_opt(c, k, strlen(k));
        if (i < 0 || (size_t)i >= c->nopts) {
            snprintf(err, errlen, "config file %s: unknown option \"%s\" (see --help)", path, k);
            rc = KV_EINVAL;
            goto out_decref;
        }
        struct kv_cfg_val *v = &c->vals[i];
        if (v->src >= KV_CFG_SRC_ENV)
            continue; /* a flag or the environment wins */
        char num[64];
        const char *text;
        if (json_is_string(jv))
            text = json_string_value(jv);
        else if (json_is_integer(jv))
            snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(jv)), text = num;
        else if (json_is_real(jv))
            snprintf(num, sizeof(num), "%.17g", json_real_value(jv)), text = num;
        else if (json_is_boolean(jv))
            text = json_is_true(jv) ? "true" : "false";
        else {
            snprintf(err, errlen,
                     "config file %s: option \"%s\" must be a string, number or boolean", path, k);
            rc = KV_EINVAL;
            goto out_decref;
        }
        rc = set_text(v, text, KV_CFG_SRC_FILE, path);
        if (rc < 0)
            goto out_decref;
    }
out_decref:
    json_decref(root);
    return rc;
}

int kv_cfg_parse(struct kv_cfg *c, int argc, char **argv, char *err, size_t errlen)
{
    err[0] = '\0';
    c->vals = kv_calloc(nall(c), sizeof(*c->vals));
    c->args = kv_calloc((size_t)(argc > 0 ? argc : 1), sizeof(char *));
    c->nargs = 0;
    if (!c->vals || !c->args) {
        snprintf(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    int rc;
    bool opts_done = false;
    for (int ai = 1; ai < argc; ai++) {
        char *a = argv[ai];
        if (opts_done || a[0] != '-' || strcmp(a, "-") == 0) {
            c->args[c->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            opts_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0)
            a = "--help";
        if (a[1] != '-') {
            snprintf(err, errlen, "unknown option '%s' (options are spelled --name; see --help)",
                     a);
            return KV_EINVAL;
        }
        const char *k = a + 2;
        const char *eq = strchr(k, '=');
        size_t klen = eq ? (size_t)(eq - k) : strlen(k);
        long i = find_opt(c, k, klen);
        bool negated = false;
        if (i < 0 && klen > 3 && strncmp(k, "no-", 3) == 0) {
            i = find_opt(c, k + 3, klen - 3);
            if (i >= 0 && opt_at(c, (size_t)i)->type != KV_CFG_BOOL)
                i = -1;
            negated = i >= 0;
        }
        if (i < 0) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)klen, k);
            return KV_EINVAL;
        }
        const struct kv_cfg_opt *o = opt_at(c, (size_t)i);
        const char *text;
        if (negated) {
            if (eq) {
                snprintf(err, errlen, "option '--%.*s' takes no value", (int)klen, k);
                return KV_EINVAL;
            }
            text = "false";
        } else if (eq) {
            text = eq + 1;
        } else if (o->type == KV_CFG_BOOL) {
            text = "true";
        } else if (ai + 1 < argc) {
            text = argv[++ai];
        } else {
            snprintf(err, errlen, "option '--%s' needs a value", o->key);
            return KV_EINVAL;
        }
        /* the "from" text must outlive this call: point at the table's key */
        rc = set_text(&c->vals[i], text, KV_CFG_SRC_FLAG, "command line");
        if (rc < 0)
            goto out_nomem;
    }

    long hi = must_find(c, "help");
    if (c->vals[hi].src == KV_CFG_SRC_FLAG) {
        bool b = false;
        if (kv_parse_bool(c->vals[hi].text, &b) == KV_OK && b) {
            kv_cfg_print_help(c, stdout);
            return KV_CFG_EXIT;
        }
    }

    for (size_t i = 0; i < nall(c); i++) {
        const struct kv_cfg_opt *o = opt_at(c, i);
        if (c->vals[i].src != KV_CFG_SRC_UNSET)
            continue;
        const char *envs[2] = {o->env, o->env_alt};
        for (int e = 0; e < 2; e++) {
            const char *ev = envs[e] ? getenv(envs[e]) : NULL;
            if (ev && *ev) {
                rc = set_text(&c->vals[i], ev, KV_CFG_SRC_ENV, envs[e]);
                if (rc < 0)
                    goto out_nomem;
                break;
            }
        }
    }
    long ci = must_find(c, "config");
    if (c->vals[ci].text) {
        rc = load_file(c, c->vals[ci].text, err, errlen);
        if (rc < 0)
            return rc;
    }
    for (size_t i = 0; i < nall(c); i++) {
        const struct kv_cfg_opt *o = opt_at(c, i);
        struct kv_cfg_val *v = &c->vals[i];
        if (v->src == KV_CFG_SRC_UNSET && o->def) {
            rc = set_text(v, o->def, KV_CFG_SRC_DEFAULT, "default");
            if (rc < 0)
                goto out_nomem;
        }
        if (v->src != KV_CFG_SRC_UNSET) {
            rc = convert(o, v, err, errlen);
            if (rc < 0)
                return rc;
        }
    }

    enum kv_log_level lvl = KV_LOG_INFO;
    kv_log_level_parse(kv_cfg_str(c, "log-level"), &lvl);
    kv_log_set_level(lvl);
    kv_log_set_format(strcmp(kv_cfg_str(c, "log-format"), "json") == 0 ? KV_LOG_JSON : KV_LOG_TEXT);
    if (kv_cfg_bool(c, "print-config")) {
        kv_cfg_print_config(c, stdout);
        return KV_CFG_EXIT;
    }
    return KV_OK;

out_nomem:
    snprintf(err, errlen, "out of memory");
    return rc;
}

void kv_cfg_fini(struct kv_cfg *c)
{
    if (c->vals) {
        for (size_t i = 0; i < nall(c); i++)
            kv_free(c->vals[i].text);
    }
    kv_free(c->vals);
    kv_free(c->args);
    c->vals = NULL;
    c->args = NULL;
    c->nargs = 0;
}

static const char *metavar_of(const struct kv_cfg_opt *o)
{
    if (o->metavar)
        return o->metavar;
    switch (o->type) {
    case KV_CFG_INT:
        return "N";
    case KV_CFG_SIZE:
        return "SIZE";
    case KV_CFG_DOUBLE:
        return "X";
    case KV_CFG_ENUM:
        return o->choices;
    case KV_CFG_BOOL:
        return NULL;
    default:
        return "VALUE";
    }
}

static void print_opts(const struct kv_cfg_opt *opts, size_t n, FILE *out)
{
    for (size_t i = 0; i < n; i++) {
        const struct kv_cfg_opt *o = &opts[i];
        char left[96];
        const char *mv = metavar_of(o);
        snprintf(left, sizeof(left), "--%s%s%s", o->key, mv ? " " : "", mv ? mv : "");
        if (strlen(left) <= 26)
            fprintf(out, "  %-26s %s", left, o->help);
        else
            fprintf(out, "  %s\n  %-26s %s", left, "", o->help);
        if (o->def && o->type != KV_CFG_BOOL)
            fprintf(out, " (default: %s)", o->def);
        if (o->env && o->env_alt)
            fprintf(out, " [env: %s, %s]", o->env, o->env_alt);
        else if (o->env)
            fprintf(out, " [env: %s]", o->env);
        fputc('\n', out);
    }
}

void kv_cfg_print_help(const struct kv_cfg *c, FILE *out)
{
    fprintf(out, "Usage: %s %s\n\n", c->prog, c->synopsis ? c->synopsis : "[OPTIONS]");
    if (c->description)
        fprintf(out, "%s\n\n", c->description);
    if (c->nopts) {
        fprintf(out, "Options:\n");
        print_opts(c->opts, c->nopts, out);
        fputc('\n', out);
    }
    fprintf(out, "Common options:\n");
    print_opts(common_opts, NCOMMON, out);
    fprintf(out, "\nPrecedence: flag > environment > --config file > default. Sizes take units: "
                 "4096, 64KiB, 64MiB, 4GiB (KB/MB/GB are powers of 1000).\n");
}

void kv_cfg_print_config(const struct kv_cfg *c, FILE *out)
{
    for (size_t i = 0; i < c->nopts; i++) {
        const struct kv_cfg_val *v = &c->vals[i];
        if (v->src == KV_CFG_SRC_UNSET)
            fprintf(out, "%-24s (unset)\n", c->opts[i].key);
        else
            fprintf(out, "%-24s %-24s (%s)\n", c->opts[i].key, v->text, v->from);
    }
}

static const struct kv_cfg_val *val_of(const struct kv_cfg *c, const char *key)
{
    return &c->vals[must_find(c, key)];
}

const char *kv_cfg_str(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->text;
}

int64_t kv_cfg_int(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->i;
}

uint64_t kv_cfg_size(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->u;
}

bool kv_cfg_bool(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->b;
}

double kv_cfg_double(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->d;
}

bool kv_cfg_isset(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->src != KV_CFG_SRC_UNSET;
}

enum kv_cfg_src kv_cfg_source(const struct kv_cfg *c, const char *key)
{
    return val_of(c, key)->src;
}
