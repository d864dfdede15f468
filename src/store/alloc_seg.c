/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc_seg.c - TLSF-like offset allocator for a node's segment (interface in alloc_seg.h).
 *
 * Design:
 *  - Blocks are out-of-line records (the managed memory is remote): 32 bytes each, in slabs of
 *    1024 that live as long as the allocator, named by a 32-bit handle (slab << 10 | slot; 0 is
 *    no block) that links them too. They form one doubly linked list in address order
 *    (phys_prev/phys_next) covering [0, cap) without gaps. Free blocks are also on a segregated
 *    list for their size class. The owner of an allocated block keeps its handle (the master's
 *    replica does), so free() finds the record in O(1) with no table: the record of an
 *    allocated block never moves (only free blocks merge).
 *  - Size class of g granules: g < 4 -> (fl 0, sl g); else with k = floor(log2 g):
 *    (fl k-1, sl = the two bits below the top bit). Class (fl, sl) holds sizes in
 *    [lower(fl,sl), lower of the next class). fl_map has bit fl set when some sl list of fl is
 *    non-empty; sl_map[fl] has bit sl set when that list is non-empty.
 *  - alloc(g): good fit: the first non-empty class whose lower bound >= g (every block there
 *    fits); if none, scan the class of g itself for a block >= g. Split: the front goes to the
 *    caller, the tail stays free. free(): merge with free physical neighbours at once.
 *
 * Invariants:
 *  1. Blocks tile [0, cap) in address order; no two adjacent blocks are both free.
 *  2. A block is on exactly one free list iff free; a record is live (in the address list) or on
 *     the spare list, never both.
 *  3. used = sum of allocated block sizes.
 *
 * Thread model: none; the owner (the master) serialises calls.
 */
#include "store/alloc_seg.h"

#include <stdbool.h>
#include <string.h>

#include "common/alloc.h"

#define FL_COUNT 64
#define SL_COUNT 4

/* 32 bytes, in slabs (no allocator header per record): the master keeps one per object, so each
 * byte here is a byte per object. Offsets and sizes in granules; links are handles. */
struct blk {
    uint64_t off : 48; /* granules */
    uint64_t free : 1;
    uint64_t live : 1; /* in the address list (else on the spare list) */
    uint64_t size;     /* granules */
    uint32_t phys_prev, phys_next;
    uint32_t free_prev, free_next; /* size-class list when free; the spare list when not live */
};

#define SLAB_SHIFT 10
#define SLAB_BLKS (1u << SLAB_SHIFT)
#define MAX_SLABS ((UINT32_MAX >> SLAB_SHIFT) + 1)

struct kv_segalloc {
    uint64_t cap;  /* bytes */
    uint64_t used; /* bytes */
    uint64_t nfree, nalloc;
    uint64_t fl_map;
    uint8_t sl_map[FL_COUNT];
    uint32_t lists[FL_COUNT][SL_COUNT];
    uint32_t head;   /* lowest-address block */
    uint32_t cursor; /* reserve() hint, 0 = none */
    /* records: slab[h >> SLAB_SHIFT][h & (SLAB_BLKS - 1)]; handle 0 is never handed out */
    struct blk **slab;
    uint32_t nslab, slab_cap;
    uint32_t spare; /* unused records, chained through free_next */
};

static inline struct blk *B(const struct kv_segalloc *a, uint32_t h)
{
    return &a->slab[h >> SLAB_SHIFT][h & (SLAB_BLKS - 1)];
}

/* A zeroed live record's handle, or 0 when out of memory. */
static uint32_t blk_new(struct kv_segalloc *a)
{
    if (!a->spare) {
        if (a->nslab == MAX_SLABS)
            return 0;
        if (a->nslab == a->slab_cap) {
            uint32_t ncap = a->slab_cap ? a->slab_cap * 2 : 16;
            if (ncap > MAX_SLABS)
                ncap = MAX_SLABS;
            struct blk **ns = kv_realloc(a->slab, (size_t)ncap * sizeof(*ns));
            if (!ns)
                return 0;
            a->slab = ns;
            a->slab_cap = ncap;
        }
        struct blk *sl = kv_calloc(SLAB_BLKS, sizeof(*sl));
        if (!sl)
            return 0;
        uint32_t base = a->nslab << SLAB_SHIFT;
        a->slab[a->nslab++] = sl;
        /* chain in descending order so handles are handed out ascending; handle 0 stays out */
        for (uint32_t i = SLAB_BLKS; i-- > (base ? 0u : 1u);) {
            sl[i].free_next = a->spare;
            a->spare = base | i;
        }
    }
    uint32_t h = a->spare;
    struct blk *b = B(a, h);
    a->spare = b->free_next;
    memset(b, 0, sizeof(*b));
    b->live = 1;
    return h;
}

static void blk_del(struct kv_segalloc *a, uint32_t h)
{
    if (!h)
        return;
    struct blk *b = B(a, h);
    memset(b, 0, sizeof(*b));
    b->free_next = a->spare;
    a->spare = h;
}

static int log2u(uint64_t x)
{
    return 63 - __builtin_clzll(x);
}

static void size_class(uint64_t g, int *fl, int *sl)
{
    if (g < SL_COUNT) {
        *fl = 0;
        *sl = (int)g;
        return;
    }
    int k = log2u(g);
    *fl = k - 1;
    *sl = (int)((g >> (k - 2)) & 3);
}

static uint64_t class_lower(int fl, int sl)
{
    if (fl == 0)
        return (uint64_t)sl;
    return (uint64_t)(SL_COUNT + sl) << (fl - 1);
}

static void list_insert(struct kv_segalloc *a, uint32_t h)
{
    struct blk *b = B(a, h);
    int fl, sl;
    size_class(b->size, &fl, &sl);
    b->free = 1;
    b->free_prev = 0;
    b->free_next = a->lists[fl][sl];
    if (b->free_next)
        B(a, b->free_next)->free_prev = h;
    a->lists[fl][sl] = h;
    a->fl_map |= 1ull << fl;
    a->sl_map[fl] |= (uint8_t)(1u << sl);
    a->nfree++;
}

static void list_remove(struct kv_segalloc *a, uint32_t h)
{
    struct blk *b = B(a, h);
    int fl, sl;
    size_class(b->size, &fl, &sl);
    if (b->free_prev)
        B(a, b->free_prev)->free_next = b->free_next;
    else
        a->lists[fl][sl] = b->free_next;
    if (b->free_next)
        B(a, b->free_next)->free_prev = b->free_prev;
    if (!a->lists[fl][sl]) {
        a->sl_map[fl] &= (uint8_t) ~(1u << sl);
        if (!a->sl_map[fl])
            a->fl_map &= ~(1ull << fl);
    }
    b->free = 0;
    b->free_prev = b->free_next = 0;
    a->nfree--;
}

/* ---- public ---- */

int kv_segalloc_create(uint64_t size, struct kv_segalloc **out)
{
    size -= size % KV_SEGALLOC_GRAN;
    if (!out || size == 0)
        return KV_EINVAL;
    if (size / KV_SEGALLOC_GRAN >= (1ull << 48))
        return KV_EINVAL;
    struct kv_segalloc *a = kv_calloc(1, sizeof(*a));
    uint32_t h = a ? blk_new(a) : 0;
    if (!h) {
        kv_segalloc_destroy(a);
        return KV_ENOMEM;
    }
    a->cap = size;
    B(a, h)->off = 0;
    B(a, h)->size = size / KV_SEGALLOC_GRAN;
    a->head = h;
    list_insert(a, h);
    *out = a;
    return KV_OK;
}

void kv_segalloc_destroy(struct kv_segalloc *a)
{
    if (!a)
        return;
    for (uint32_t i = 0; i < a->nslab; i++)
        kv_free(a->slab[i]);
    kv_free(a->slab);
    kv_free(a);
}

static uint32_t find_free(struct kv_segalloc *a, uint64_t g)
{
    int fl, sl;
    size_class(g, &fl, &sl);
    /* good fit: first class whose lower bound >= g */
    int gfl = fl, gsl = sl;
    if (class_lower(fl, sl) < g) {
        gsl++;
        if (gsl == SL_COUNT) {
            gsl = 0;
            gfl++;
        }
    }
    if (gfl < FL_COUNT) {
        uint8_t slm = (uint8_t)(a->sl_map[gfl] & (0xFu << gsl) & 0xFu);
        if (slm)
            return a->lists[gfl][__builtin_ctz(slm)];
        uint64_t flm = gfl + 1 < FL_COUNT ? a->fl_map & (~0ull << (gfl + 1)) : 0;
        if (flm) {
            int f = __builtin_ctzll(flm);
            return a->lists[f][__builtin_ctz(a->sl_map[f])];
        }
    }
    /* fallback: a block of g's own class that is large enough */
    for (uint32_t h = a->lists[fl][sl]; h; h = B(a, h)->free_next)
        if (B(a, h)->size >= g)
            return h;
    return 0;
}

/* Splits free block h (already off its list) so that its first g granules stay in h and the
 * tail becomes a new free block. nh is a preallocated record or 0 when no tail remains. */
static void split_tail(struct kv_segalloc *a, uint32_t h, uint64_t g, uint32_t nh)
{
    if (!nh)
        return;
    struct blk *b = B(a, h), *nb = B(a, nh);
    nb->off = b->off + g;
    nb->size = b->size - g;
    nb->phys_prev = h;
    nb->phys_next = b->phys_next;
    if (nb->phys_next)
        B(a, nb->phys_next)->phys_prev = nh;
    b->phys_next = nh;
    b->size = g;
    list_insert(a, nh);
}

int kv_segalloc_alloc(struct kv_segalloc *a, uint64_t len, uint64_t *off, kv_segblk *blk)
{
    if (!a || !off || !blk || len == 0)
        return KV_EINVAL;
    if (len > a->cap)
        return KV_ENOSPC;
    uint64_t g = (len + KV_SEGALLOC_GRAN - 1) / KV_SEGALLOC_GRAN;
    uint32_t h = find_free(a, g);
    if (!h)
        return KV_ENOSPC;
    uint32_t nh = 0;
    if (B(a, h)->size > g && !(nh = blk_new(a)))
        return KV_ENOMEM;
    list_remove(a, h);
    split_tail(a, h, g, nh);
    a->used += g * KV_SEGALLOC_GRAN;
    a->nalloc++;
    *off = B(a, h)->off * KV_SEGALLOC_GRAN;
    *blk = h;
    return KV_OK;
}

int kv_segalloc_reserve(struct kv_segalloc *a, uint64_t off, uint64_t len, kv_segblk *blk)
{
    if (!a || !blk || len == 0 || off % KV_SEGALLOC_GRAN)
        return KV_EINVAL;
    len = (len + KV_SEGALLOC_GRAN - 1) / KV_SEGALLOC_GRAN * KV_SEGALLOC_GRAN;
    if (off >= a->cap || len > a->cap - off)
        return KV_ERANGE;
    uint64_t go = off / KV_SEGALLOC_GRAN, g = len / KV_SEGALLOC_GRAN;
    uint32_t h = a->cursor && B(a, a->cursor)->off <= go ? a->cursor : a->head;
    while (h && B(a, h)->off + B(a, h)->size <= go)
        h = B(a, h)->phys_next;
    if (!h || !B(a, h)->free || B(a, h)->off + B(a, h)->size < go + g)
        return KV_EEXIST;
    uint32_t front = 0, tail = 0;
    if (B(a, h)->off < go && !(front = blk_new(a)))
        return KV_ENOMEM;
    if (B(a, h)->off + B(a, h)->size > go + g && !(tail = blk_new(a))) {
        blk_del(a, front);
        return KV_ENOMEM;
    }
    list_remove(a, h);
    if (front) {
        /* h keeps [h->off, go) as a free block; the front record becomes the allocated part */
        struct blk *b = B(a, h), *f = B(a, front);
        f->off = go;
        f->size = b->off + b->size - go;
        f->phys_prev = h;
        f->phys_next = b->phys_next;
        if (f->phys_next)
            B(a, f->phys_next)->phys_prev = front;
        b->phys_next = front;
        b->size = go - b->off;
        list_insert(a, h);
        h = front;
    }
    split_tail(a, h, g, tail);
    a->used += len;
    a->nalloc++;
    a->cursor = h;
    *blk = h;
    return KV_OK;
}

/* The live, allocated record of handle h, or NULL. */
static struct blk *allocated(const struct kv_segalloc *a, kv_segblk h)
{
    if (!a || !h || (h >> SLAB_SHIFT) >= a->nslab)
        return NULL;
    struct blk *b = B(a, h);
    return b->live && !b->free ? b : NULL;
}

int kv_segalloc_free(struct kv_segalloc *a, kv_segblk h)
{
    struct blk *b = allocated(a, h);
    if (!b)
        return a ? KV_ENOENT : KV_EINVAL;
    a->used -= b->size * KV_SEGALLOC_GRAN;
    a->nalloc--;
    uint32_t p = b->phys_prev, n = b->phys_next;
    if (n && B(a, n)->free) {
        struct blk *nb = B(a, n);
        list_remove(a, n);
        b->size += nb->size;
        b->phys_next = nb->phys_next;
        if (b->phys_next)
            B(a, b->phys_next)->phys_prev = h;
        if (a->cursor == n)
            a->cursor = 0;
        blk_del(a, n);
    }
    if (p && B(a, p)->free) {
        struct blk *pb = B(a, p);
        list_remove(a, p);
        pb->size += b->size;
        pb->phys_next = b->phys_next;
        if (pb->phys_next)
            B(a, pb->phys_next)->phys_prev = p;
        if (a->cursor == h)
            a->cursor = 0;
        blk_del(a, h);
        h = p;
    }
    list_insert(a, h);
    return KV_OK;
}

uint64_t kv_segalloc_offset(const struct kv_segalloc *a, kv_segblk h)
{
    const struct blk *b = allocated(a, h);
    return b ? b->off * KV_SEGALLOC_GRAN : UINT64_MAX;
}

uint64_t kv_segalloc_capacity(const struct kv_segalloc *a)
{
    return a->cap;
}

uint64_t kv_segalloc_used(const struct kv_segalloc *a)
{
    return a->used;
}

uint64_t kv_segalloc_largest_free(const struct kv_segalloc *a)
{
    if (!a->fl_map)
        return 0;
    int fl = log2u(a->fl_map);
    int sl = log2u(a->sl_map[fl]);
    uint64_t best = 0;
    for (uint32_t h = a->lists[fl][sl]; h; h = B(a, h)->free_next)
        if (B(a, h)->size > best)
            best = B(a, h)->size;
    return best * KV_SEGALLOC_GRAN;
}

uint64_t kv_segalloc_free_blocks(const struct kv_segalloc *a)
{
    return a->nfree;
}

uint64_t kv_segalloc_allocated_blocks(const struct kv_segalloc *a)
{
    return a->nalloc;
}
