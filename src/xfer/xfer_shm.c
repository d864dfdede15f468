/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_shm.c - the shared-memory transport's plumbing: memfd-backed segments and mapping a
 * same-host peer's segment through /proc/<pid>/fd/<fd>; plus this host's identity.
 *
 * Design:
 *  - kv_xfer_segment_alloc memory is a memfd (name "kvx:<segment>") mapped MAP_SHARED; its
 *    descriptor publishes "/proc/<pid>/fd/<fd>". A same-host initiator opens that path (same
 *    uid or root), checks that it is a memfd of the expected name and at least the published
 *    size, maps it MAP_SHARED and closes the fd. Requests are then one bounds-checked memcpy;
 *    a WRITE is done when memcpy returns (the bytes are in the one shared page cache).
 *  - If the owner dies, the initiator's mapping keeps the memory alive and valid: requests on
 *    an already-opened shm target still succeed against the orphaned memory until the target
 *    is closed. Reopening fails (the /proc path is gone). This is accepted and documented.
 *  - The identity check guards against pid reuse: a recycled pid's fd would not be a memfd
 *    named after this segment.
 *  - Page tables are filled in bulk: the first request touching a 2 MiB chunk of a mapping
 *    populates that chunk with madvise(MADV_POPULATE_WRITE) (Linux 5.14+) and marks it in a
 *    bitmap, instead of taking a page fault per 4 KiB page inside memcpy. On the development
 *    VM a fault costs ~5 us (a first write runs at 0.77 GB/s) and a bulk populate ~1.1 us per
 *    page (3.5 GB/s). The populate fills the guest's page tables only: there the hypervisor
 *    still traps the first user access of each page (~5.5 us; measured 2026-12-06), so a
 *    chunk's first writes after a populate also run near 0.7 GB/s, and only later ones at 12+
 *    GB/s. A read per page from user space (kv_mem_touch) fills both, but costs 512 traps per
 *    chunk here where the populate costs one call, so the per-chunk path keeps the populate
 *    alone. kv_mem_populate (common/util.h) does the same for a whole range; the node prefaults
 *    its segment at start with it and then kv_mem_touch.
 * Thread model: stateless except the identity cache, filled once under pthread_once, and the
 * per-target chunk bitmaps (atomic bits; two threads populating the same chunk is harmless).
 */
#define KV_LOG_COMPONENT "xfer"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/util.h"
#include "xfer/xfer_int.h"

int kv_xfer_shm_create(const char *name, size_t len, int *fd_out, void **addr_out)
{
    char mname[KV_XFER_NAME_MAX + 8];
    snprintf(mname, sizeof(mname), "kvx:%s", name);
    int fd = memfd_create(mname, MFD_CLOEXEC);
    if (fd < 0)
        return kv_err_from_errno(errno);
    if (ftruncate(fd, (off_t)len) < 0) {
        int rc = kv_err_from_errno(errno);
        close(fd);
        return rc == KV_EIO ? KV_ENOMEM : rc;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return KV_ENOMEM;
    }
    *fd_out = fd;
    *addr_out = p;
    return KV_OK;
}

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004u
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif

bool kv_xfer_huge_pool(size_t page_size, uint64_t *free_pages, uint64_t *total_pages)
{
    char path[128];
    unsigned long long f = 0, t = 0;
    snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%zukB/free_hugepages",
             page_size >> 10);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return false;
    if (fscanf(fp, "%llu", &f) != 1)
        f = 0;
    fclose(fp);
    unsigned long long r = 0;
    const char *more[] = {"nr_hugepages", "resv_hugepages"};
    unsigned long long *dst[] = {&t, &r};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%zukB/%s", page_size >> 10,
                 more[i]);
        fp = fopen(path, "r");
        if (fp) {
            if (fscanf(fp, "%llu", dst[i]) != 1)
                *dst[i] = 0;
            fclose(fp);
        }
    }
    /* reserved pages (mapped by a segment, not faulted in yet) are counted free */
    *free_pages = f > r ? f - r : 0;
    *total_pages = t;
    return true;
}

int kv_xfer_shm_create_huge(const char *name, size_t len, size_t page_size, int *fd_out,
                            void **addr_out)
{
    char mname[KV_XFER_NAME_MAX + 8], sz[32];
    uint64_t nfree = 0, ntotal = 0;
    kv_format_size(page_size, sz, sizeof(sz));
    if (!kv_xfer_huge_pool(page_size, &nfree, &ntotal)) {
        KV_LOGE("xfer: this kernel has no %s huge-page pool (no "
                "/sys/kernel/mm/hugepages/hugepages-%zukB)",
                sz, page_size >> 10);
        return KV_ENOTSUP;
    }
    unsigned shift = (unsigned)__builtin_ctzll((unsigned long long)page_size);
    snprintf(mname, sizeof(mname), "kvx:%s", name);
    int fd = memfd_create(mname, MFD_CLOEXEC | MFD_HUGETLB | (shift << MFD_HUGE_SHIFT));
    if (fd < 0) {
        int e = errno;
        KV_LOGE("xfer: memfd_create(MFD_HUGETLB, %s) for '%s': %s", sz, name, strerror(e));
        return e == EINVAL ? KV_ENOTSUP : kv_err_from_errno(e);
    }
    if (ftruncate(fd, (off_t)len) < 0) {
        int rc = kv_err_from_errno(errno);
        close(fd);
        return rc == KV_EIO ? KV_ENOMEM : rc;
    }
    /* MAP_SHARED reserves every page now: too few free pages fail here, never later in a
     * page fault (SIGBUS) */
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        KV_LOGE("xfer: '%s' needs %zu huge pages of %s; %llu of %llu reserved are free "
                "(reserve more: scripts/host-prepare.sh --hugepages %s --pages N)",
                name, len / page_size, sz, (unsigned long long)nfree, (unsigned long long)ntotal,
                page_size == (1u << 21) ? "2M" : "1G");
        close(fd);
        return KV_ENOMEM;
    }
    *fd_out = fd;
    *addr_out = p;
    return KV_OK;
}

int kv_xfer_shm_map(const struct kv_xfer_desc *d, void **addr, size_t *len)
{
    if (!d->shm[0])
        return KV_EXFER_NOTRANSPORT;
    char link[512], want[KV_XFER_NAME_MAX + 16];
    ssize_t n = readlink(d->shm, link, sizeof(link) - 1);
    if (n < 0) {
        KV_LOGD("shm path %s of segment '%s': %s", d->shm, d->name, strerror(errno));
        return KV_EXFER_NOTRANSPORT;
    }
    link[n] = '\0';
    snprintf(want, sizeof(want), "/memfd:kvx:%s", d->name);
    if (strncmp(link, want, strlen(want)) != 0 ||
        (link[strlen(want)] != '\0' && link[strlen(want)] != ' ')) {
        KV_LOGW("shm path %s is '%s', not segment '%s' (stale descriptor?)", d->shm, link, d->name);
        return KV_EXFER_NOTRANSPORT;
    }
    int fd = open(d->shm, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        KV_LOGD("cannot open shm path %s: %s", d->shm, strerror(errno));
        return KV_EXFER_NOTRANSPORT;
    }
    struct stat st;
    int rc = KV_EXFER_NOTRANSPORT;
    if (fstat(fd, &st) < 0 || st.st_size < 0 || (uint64_t)st.st_size < d->size ||
        d->size > SIZE_MAX) {
        KV_LOGW("shm segment '%s' is smaller than its descriptor says", d->name);
        goto out_close;
    }
    void *p = mmap(NULL, (size_t)d->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = KV_ENOMEM;
        goto out_close;
    }
    *addr = p;
    *len = (size_t)d->size;
    rc = KV_OK;
out_close:
    close(fd);
    return rc;
}

static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static char id_boot[64];
static char id_host[256];

static void id_init(void)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(id_boot, sizeof(id_boot), f))
            id_boot[0] = '\0';
        fclose(f);
        id_boot[strcspn(id_boot, "\r\n")] = '\0';
    }
    if (!id_boot[0])
        snprintf(id_boot, sizeof(id_boot), "unknown");
    if (gethostname(id_host, sizeof(id_host) - 1) != 0 || !id_host[0])
        snprintf(id_host, sizeof(id_host), "localhost");
}

void kv_xfer_host_identity(const char **boot_id, const char **hostname)
{
    pthread_once(&id_once, id_init);
    *boot_id = id_boot;
    *hostname = id_host;
}

void kv_xfer_shm_chunks_init(struct xfer_target *t)
{
    size_t n = (t->map_len + KV_XFER_SHM_CHUNK - 1) / KV_XFER_SHM_CHUNK;
    t->populated = kv_calloc((n + 63) / 64, sizeof(*t->populated)); /* NULL: faults as before */
}

void kv_xfer_shm_prepare(struct xfer_target *t, uint64_t off, uint64_t len)
{
    if (!t->populated || len == 0)
        return;
    uint64_t first = off / KV_XFER_SHM_CHUNK, last = (off + len - 1) / KV_XFER_SHM_CHUNK;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t bit = 1ull << (c % 64);
        if (atomic_load_explicit(&t->populated[c / 64], memory_order_relaxed) & bit)
            continue;
        size_t start = (size_t)(c * KV_XFER_SHM_CHUNK);
        size_t clen = KV_MIN((size_t)KV_XFER_SHM_CHUNK, t->map_len - start);
        if (kv_mem_populate((uint8_t *)t->map + start, clen) == KV_OK)
            atomic_fetch_or_explicit(&t->populated[c / 64], bit, memory_order_relaxed);
    }
}
