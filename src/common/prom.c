/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prom.c - Prometheus text exposition writer (see prom.h for the conventions it enforces and
 * its error model). Stateless apart from the caller's struct kv_prom; no locks.
 */
#define KV_LOG_COMPONENT "prom"
#include "common/prom.h"

#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/log.h"

static bool name_ok(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (const char *c = s; *c; c++) {
        bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
                     (colon && *c == ':');
        bool digit = *c >= '0' && *c <= '9';
        if (!alpha && !(digit && c != s))
            return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void fail(struct kv_prom *p, int rc, const char *what, const char *name)
{
    if (p->rc == KV_OK) {
        p->rc = rc;
        if (rc == KV_EINVAL)
            KV_LOGE("metrics page not written: %s: '%s'", what, name ? name : "(null)");
    }
}

static void put(struct kv_prom *p, const char *s, size_t n)
{
    if (p->rc == KV_OK) {
        int rc = kv_buf_append(p->b, s, n);
        if (rc < 0)
            fail(p, rc, "out of memory", NULL);
    }
}

static void puts_(struct kv_prom *p, const char *s)
{
    put(p, s, strlen(s));
}

/* s escaped: backslash and newline always, the double quote too in label values. */
static void escaped(struct kv_prom *p, const char *s, bool quote)
{
    const char *run = s;
    for (const char *c = s;; c++) {
        const char *esc = NULL;
        if (*c == '\\')
            esc = "\\\\";
        else if (*c == '\n')
            esc = "\\n";
        else if (*c == '"' && quote)
            esc = "\\\"";
        else if (*c)
            continue;
        put(p, run, (size_t)(c - run));
        if (!esc)
            return;
        puts_(p, esc);
        run = c + 1;
    }
}

/* The shortest of %.15g, %.16g, %.17g that reads back as v. */
static void shortest(char *out, size_t n, double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static void value(struct kv_prom *p, double v)
{
    char tmp[64];
    if (isnan(v))
        snprintf(tmp, sizeof(tmp), "NaN");
    else if (isinf(v))
        snprintf(tmp, sizeof(tmp), v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    else
        shortest(tmp, sizeof(tmp), v);
    puts_(p, tmp);
}

/* name{labels[,extra="..."]} : extra may be NULL */
static void series(struct kv_prom *p, const char *suffix, const struct kv_prom_label *l, size_t nl,
                   const char *extra_name, const char *extra_value)
{
    puts_(p, p->family);
    puts_(p, suffix);
    if (nl == 0 && !extra_name)
        return;
    puts_(p, "{");
    for (size_t i = 0; i < nl; i++) {
        if (!name_ok(l[i].name, false) || strcmp(l[i].name, "le") == 0) {
            fail(p, KV_EINVAL, "bad label name", l[i].name);
            return;
        }
        if (i)
            puts_(p, ",");
        puts_(p, l[i].name);
        puts_(p, "=\"");
        escaped(p, l[i].value ? l[i].value : "", true);
        puts_(p, "\"");
    }
    if (extra_name) {
        puts_(p, nl ? "," : "");
        puts_(p, extra_name);
        puts_(p, "=\"");
        puts_(p, extra_value);
        puts_(p, "\"");
    }
    puts_(p, "}");
}

void kv_prom_init(struct kv_prom *p, struct kv_buf *b)
{
    p->b = b;
    p->rc = KV_OK;
    p->type = KV_PROM_GAUGE;
    p->family = NULL;
    p->lax = false;
}

void kv_prom_family(struct kv_prom *p, const char *name, enum kv_prom_type type, const char *help)
{
    static const char *const tn[] = {"counter", "gauge", "histogram"};
    if (p->rc != KV_OK)
        return;
    if (!name_ok(name, true)) {
        fail(p, KV_EINVAL, "bad metric name", name);
        return;
    }
    if (!p->lax && (type == KV_PROM_COUNTER) != ends_with(name, "_total")) {
        fail(p, KV_EINVAL, "counters and only counters end in _total", name);
        return;
    }
    if ((unsigned)type > KV_PROM_HISTOGRAM) {
        fail(p, KV_EINVAL, "bad metric type", name);
        return;
    }
    p->family = name;
    p->type = type;
    puts_(p, "# HELP ");
    puts_(p, name);
    puts_(p, " ");
    escaped(p, help ? help : "", false);
    puts_(p, "\n# TYPE ");
    puts_(p, name);
    puts_(p, " ");
    puts_(p, tn[type]);
    puts_(p, "\n");
}

void kv_prom_sample(struct kv_prom *p, const struct kv_prom_label *labels, size_t nlabels, double v)
{
    if (p->rc != KV_OK)
        return;
    if (!p->family || p->type == KV_PROM_HISTOGRAM) {
        fail(p, KV_EINVAL, "sample outside a counter or gauge family", p->family);
        return;
    }
    series(p, "", labels, nlabels, NULL, NULL);
    puts_(p, " ");
    value(p, v);
    puts_(p, "\n");
}

void kv_prom_hist(struct kv_prom *p, const struct kv_prom_label *labels, size_t nlabels,
                  const double *le, const uint64_t *buckets, size_t nb, double sum)
{
    if (p->rc != KV_OK)
        return;
    if (!p->family || p->type != KV_PROM_HISTOGRAM) {
        fail(p, KV_EINVAL, "histogram series outside a histogram family", p->family);
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        if (!isfinite(le[i]) || (i && le[i] <= le[i - 1])) {
            fail(p, KV_EINVAL, "bucket bounds not finite and increasing", p->family);
            return;
        }
    }
    uint64_t cum = 0;
    char bound[64];
    for (size_t i = 0; i <= nb; i++) {
        cum += buckets[i];
        if (i < nb)
            shortest(bound, sizeof(bound), le[i]);
        else
            snprintf(bound, sizeof(bound), "+Inf");
        series(p, "_bucket", labels, nlabels, "le", bound);
        puts_(p, " ");
        value(p, (double)cum);
        puts_(p, "\n");
    }
    series(p, "_sum", labels, nlabels, NULL, NULL);
    puts_(p, " ");
    value(p, sum);
    puts_(p, "\n");
    series(p, "_count", labels, nlabels, NULL, NULL);
    puts_(p, " ");
    value(p, (double)cum);
    puts_(p, "\n");
}

void kv_prom_one(struct kv_prom *p, const char *name, enum kv_prom_type type, const char *help,
                 double v)
{
    kv_prom_family(p, name, type, help);
    kv_prom_sample(p, NULL, 0, v);
}

/* Fields 14.. of /proc/self/stat (after the command name): utime, stime, starttime (clock
 * ticks), vsize (bytes), rss (pages). */
static bool proc_stat(double *cpu_s, double *start_ticks, double *vsize, double *rss_pages)
{
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return false;
    char line[1024];
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    char *s = ok ? strrchr(line, ')') : NULL;
    if (!s)
        return false;
    /* after ") ": field 3 (state) is the first token */
    unsigned long long v[25] = {0};
    int n = 0;
    char *end;
    for (char *c = s + 2; n < 25 && *c;) {
        if (n == 0) { /* state: one character */
            c += 1;
            n++;
            continue;
        }
        v[n++] = strtoull(c, &end, 10);
        if (end == c)
            return false;
        c = end;
    }
    if (n < 22)
        return false;
    /* v[k] is field k + 3 */
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        return false;
    *cpu_s = (double)(v[11] + v[12]) / (double)hz;
    *start_ticks = (double)v[19] / (double)hz;
    *vsize = (double)v[20];
    *rss_pages = (double)v[21];
    return true;
}

static bool boot_time(double *btime)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return false;
    char line[512];
    bool ok = false;
    while (!ok && fgets(line, sizeof(line), f)) {
        char *end;
        if (strncmp(line, "btime ", 6) == 0) {
            unsigned long long b = strtoull(line + 6, &end, 10);
            ok = end != line + 6;
            *btime = (double)b;
        }
    }
    fclose(f);
    return ok;
}

static bool open_fds(double *n)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return false;
    double k = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            k++;
    closedir(d);
    *n = k - 1; /* the directory stream's own descriptor */
    return true;
}

void kv_prom_process(struct kv_prom *p)
{
    double cpu, start, vsize, rss, bt, fds;
    if (proc_stat(&cpu, &start, &vsize, &rss)) {
        long page = sysconf(_SC_PAGESIZE);
        kv_prom_one(p, "process_cpu_seconds_total", KV_PROM_COUNTER,
                    "Total user and system CPU time spent in seconds.", cpu);
        kv_prom_one(p, "process_resident_memory_bytes", KV_PROM_GAUGE,
                    "Resident memory size in bytes.", rss * (double)(page > 0 ? page : 4096));
        kv_prom_one(p, "process_virtual_memory_bytes", KV_PROM_GAUGE,
                    "Virtual memory size in bytes.", vsize);
        if (boot_time(&bt))
            kv_prom_one(p, "process_start_time_seconds", KV_PROM_GAUGE,
                        "Start time of the process since unix epoch in seconds.", bt + start);
    }
    if (open_fds(&fds))
        kv_prom_one(p, "process_open_fds", KV_PROM_GAUGE, "Number of open file descriptors.", fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        kv_prom_one(p, "process_max_fds", KV_PROM_GAUGE, "Maximum number of open file descriptors.",
                    rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

int kv_prom_end(struct kv_prom *p)
{
    return p->rc;
}
