/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_xfer_huge.c - huge-page segments (kv_xfer_segment_alloc_huge): parsing of the page-size
 * words; a 2 MiB-page segment that a second engine reaches over shm (both mappings are on 2 MiB
 * pages, per /proc/self/smaps) with its length rounded up to the page size; with too few free
 * pages, 2M and 1G fail with KV_ENOMEM / KV_ENOTSUP and auto falls back to 4 KiB pages.
 *
 * The 2 MiB round trip needs free 2 MiB pages: as root the test reserves 4 more through
 * /proc/sys/vm/nr_hugepages and gives them back at the end; without root and without free
 * pages it skips (77) saying so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "kv_skip.h"
#include "kvstash/kvstash.h"
#include "xfer/xfer_int.h"

#define HP_2M ((size_t)2 << 20)
#define NR_PATH "/proc/sys/vm/nr_hugepages"

static int counter;

static struct kv_meta *open_meta(void)
{
    char url[64];
    snprintf(url, sizeof(url), "embedded://xfer-huge-%d-%d", (int)getpid(), ++counter);
    struct kv_meta *m = NULL;
    assert_int_equal(kv_meta_open(url, NULL, &m), KV_OK);
    return m;
}

static struct kv_xfer *engine(struct kv_meta *m, const char *proto)
{
    struct kv_xfer_opts o = {.protocol = proto};
    struct kv_xfer *x = NULL;
    assert_int_equal(kv_xfer_create(m, &o, &x), KV_OK);
    return x;
}

static long read_nr(void)
{
    FILE *f = fopen(NR_PATH, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static bool write_nr(long v)
{
    FILE *f = fopen(NR_PATH, "w");
    if (!f)
        return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

/* Kernel page size (kB) of the mapping that contains addr, from /proc/self/smaps; -1 if none. */
static long smaps_page_kb(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    char line[512];
    bool in = false;
    long kb = -1;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
            continue;
        }
        if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return in ? kb : -1;
}

/* Number of mappings of memfd "kvx:<name>" in this process and how many are on 2 MiB pages. */
static void smaps_count(const char *name, int *maps, int *huge)
{
    char want[128];
    snprintf(want, sizeof(want), "/memfd:kvx:%s", name);
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    char line[512];
    bool in = false;
    long kb;
    *maps = *huge = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = strstr(line, want) != NULL;
            *maps += in;
            continue;
        }
        if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1)
            *huge += kb == 2048;
    }
    fclose(f);
}

static void test_parse(void **state)
{
    (void)state;
    enum kv_xfer_huge h;
    assert_int_equal(kv_xfer_huge_parse("off", &h), KV_OK);
    assert_int_equal(h, KV_XFER_HUGE_OFF);
    assert_int_equal(kv_xfer_huge_parse("auto", &h), KV_OK);
    assert_int_equal(h, KV_XFER_HUGE_AUTO);
    assert_int_equal(kv_xfer_huge_parse("2m", &h), KV_OK);
    assert_int_equal(h, KV_XFER_HUGE_2M);
    assert_int_equal(kv_xfer_huge_parse("1GiB", &h), KV_OK);
    assert_int_equal(h, KV_XFER_HUGE_1G);
    h = KV_XFER_HUGE_2M;
    assert_int_equal(kv_xfer_huge_parse("4k", &h), KV_EINVAL);
    assert_int_equal(kv_xfer_huge_parse("", &h), KV_EINVAL);
    assert_int_equal(kv_xfer_huge_parse(NULL, &h), KV_EINVAL);
    assert_int_equal(h, KV_XFER_HUGE_2M); /* unchanged on error */
}

/* Asks for one page more than the pool has free: 2M and 1G fail clearly, auto falls back. */
static void test_none_free(void **state)
{
    (void)state;
    struct kv_meta *m = open_meta();
    struct kv_xfer *x = engine(m, "auto");
    uint64_t nfree = 0, ntotal = 0;
    size_t len = HP_2M;
    if (kv_xfer_huge_pool(HP_2M, &nfree, &ntotal))
        len = (size_t)(nfree + 1) * HP_2M;
    void *a = NULL;
    kv_seg_id id;
    size_t ps = 0;
    int rc = kv_xfer_segment_alloc_huge(x, "big", len, KV_XFER_HUGE_2M, &a, &id, &ps);
    assert_true(rc == KV_ENOMEM || rc == KV_ENOTSUP);
    assert_int_equal(ps, 0); /* out-params unchanged */
    assert_null(a);
    /* the name is still free after the failure */
    assert_int_equal(kv_xfer_segment_alloc_huge(x, "big", len, KV_XFER_HUGE_AUTO, &a, &id, &ps),
                     KV_OK);
    assert_int_equal(ps, (size_t)sysconf(_SC_PAGESIZE));
    assert_int_equal(smaps_page_kb(a), sysconf(_SC_PAGESIZE) / 1024);
    assert_int_equal(kv_xfer_unregister(x, id), KV_OK);
    uint64_t f1 = 0, t1 = 0;
    size_t len1g = (size_t)1 << 30;
    if (kv_xfer_huge_pool(len1g, &f1, &t1))
        len1g *= (size_t)f1 + 1;
    a = NULL;
    rc = kv_xfer_segment_alloc_huge(x, "big1g", len1g, KV_XFER_HUGE_1G, &a, &id, &ps);
    assert_true(rc == KV_ENOMEM || rc == KV_ENOTSUP);
    assert_null(a);
    kv_xfer_destroy(x);
    kv_meta_close(m);
}

static void test_2m_shm_peer(void **state)
{
    (void)state;
    uint64_t nfree = 0, ntotal = 0;
    if (!kv_xfer_huge_pool(HP_2M, &nfree, &ntotal))
        KV_SKIP("this kernel has no 2 MiB huge-page pool");
    long reserved = 0, before = read_nr();
    if (nfree < 2) {
        if (geteuid() != 0 || before < 0 || !write_nr(before + 4))
            KV_SKIP("no free 2 MiB huge pages and cannot reserve any (not root)");
        reserved = 4;
        kv_xfer_huge_pool(HP_2M, &nfree, &ntotal);
        if (nfree < 2) {
            write_nr(read_nr() - reserved);
            KV_SKIP("the kernel could not reserve 2 MiB huge pages (memory fragmented)");
        }
    }
    struct kv_meta *m = open_meta();
    struct kv_xfer *owner = engine(m, "auto"), *init = engine(m, "shm");
    void *a = NULL;
    kv_seg_id id;
    size_t ps = 0;
    const size_t len = 3u << 20; /* rounded up to 4 MiB */
    assert_int_equal(kv_xfer_segment_alloc_huge(owner, "hp", len, KV_XFER_HUGE_2M, &a, &id, &ps),
                     KV_OK);
    assert_int_equal(ps, HP_2M);
    uint8_t *mem = a;
    assert_int_equal(mem[0] | mem[len - 1], 0);
    assert_int_equal(smaps_page_kb(a), 2048);

    kv_target_id t;
    assert_int_equal(kv_xfer_open(init, "hp", &t), KV_OK);
    uint64_t size = 0;
    const char *tr = NULL;
    assert_int_equal(kv_xfer_target_info(init, t, &size, &tr), KV_OK);
    assert_int_equal(size, 4u << 20);
    assert_string_equal(tr, "shm");
    uint8_t *src = kv_malloc(len), *dst = kv_calloc(1, len);
    for (size_t i = 0; i < len; i++)
        src[i] = (uint8_t)(i * 131 + 7);
    assert_int_equal(kv_xfer_write(init, t, (4u << 20) - len, src, len), KV_OK);
    assert_memory_equal(mem + (4u << 20) - len, src, len);
    assert_int_equal(kv_xfer_read(init, t, (4u << 20) - len, dst, len), KV_OK);
    assert_memory_equal(dst, src, len);
    /* the initiator's mapping of the peer's memfd is on 2 MiB pages too */
    int maps = 0, huge = 0;
    smaps_count("hp", &maps, &huge);
    assert_int_equal(maps, 2);
    assert_int_equal(huge, 2);

    assert_int_equal(kv_xfer_close(init, t), KV_OK);
    assert_int_equal(kv_xfer_unregister(owner, id), KV_OK);
    kv_xfer_destroy(init);
    kv_xfer_destroy(owner);
    kv_meta_close(m);
    kv_free(src);
    kv_free(dst);
    if (reserved)
        assert_true(write_nr(read_nr() - reserved));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_none_free),
        cmocka_unit_test(test_2m_shm_peer),
    };
    kv_log_set_level(getenv("XFER_TEST_LOG") ? KV_LOG_DEBUG : KV_LOG_ERROR);
    return kv_skip_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
