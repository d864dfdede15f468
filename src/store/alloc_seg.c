/* SPDX-License-Identifier: Apache-2.0 */
/*
 * alloc_seg.c - TLSF-like offset allocator for a node's segment (interface in alloc_seg.h).
 *
 * Design:
 *  - Blocks are out-of-line records (the managed memory is remote; 48 bytes each, from slabs of
 *    1024 that live as long as the allocator), kept in one doubly linked
 *    list in address order (phys_prev/phys_next) covering [0, cap) without gaps. Free blocks are
 *    also on a segregated list for their size class; allocated blocks are in a hash table by
 *    offset so kv_segalloc_free() finds them in O(1).
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
 *  2. A block is on exactly one free list iff free, and in the hash iff allocated.
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

/* 48 bytes, from a pool of slabs (no allocator header per record): the master keeps one per
 * object, so each byte here is a byte per object. */
struct blk {
    uint64_t off;       /* bytes */
    uint64_t size : 63; /* bytes */
    uint64_t free : 1;
    struct blk *phys_prev, *phys_next;
    struct blk *free_prev, *free_next; /* size-class list when free; the pool's free list when
                                          the record is unused */
};

#define SLAB_BLKS 1024

struct slab {
    struct slab *next;
    struct blk b[SLAB_BLKS];
};

struct kv_segalloc {
    uint64_t cap;
    uint64_t used;
    uint64_t nfree, nalloc;
    uint64_t fl_map;
    uint8_t sl_map[FL_COUNT];
    struct blk *lists[FL_COUNT][SL_COUNT];
    struct blk *head;   /* lowest-address block */
    struct blk *cursor; /* reserve() hint */
    /* hash of allocated blocks: open addressing, linear probing, backward-shift deletion */
    struct blk **tab;
    uint64_t tab_cap; /* power of two */
    /* record pool: slabs of SLAB_BLKS, unused records chained through free_next */
    struct slab *slabs;
    struct blk *spare;
};

/* A zeroed block record, or NULL when out of memory. */
static struct blk *blk_new(struct kv_segalloc *a)
{
    if (!a->spare) {
        struct slab *sl = kv_malloc(sizeof(*sl));
        if (!sl)
            return NULL;
        sl->next = a->slabs;
        a->slabs = sl;
        for (size_t i = 0; i < SLAB_BLKS; i++) {
            sl->b[i].free_next = a->spare;
            a->spare = &sl->b[i];
        }
    }
    struct blk *b = a->spare;
    a->spare = b->free_next;
    memset(b, 0, sizeof(*b));
    return b;
}

static void blk_del(struct kv_segalloc *a, struct blk *b)
{
    if (!b)
        return;
    b->free_next = a->spare;
    a->spare = b;
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

static void list_insert(struct kv_segalloc *a, struct blk *b)
{
    int fl, sl;
    size_class(b->size / KV_SEGALLOC_GRAN, &fl, &sl);
    b->free = true;
    b->free_prev = NULL;
    b->free_next = a->lists[fl][sl];
    if (b->free_next)
        b->free_next->free_prev = b;
    a->lists[fl][sl] = b;
    a->fl_map |= 1ull << fl;
    a->sl_map[fl] |= (uint8_t)(1u << sl);
    a->nfree++;
}

static void list_remove(struct kv_segalloc *a, struct blk *b)
{
    int fl, sl;
    size_class(b->size / KV_SEGALLOC_GRAN, &fl, &sl);
    if (b->free_prev)
        b->free_prev->free_next = b->free_next;
    else
        a->lists[fl][sl] = b->free_next;
    if (b->free_next)
        b->free_next->free_prev = b->free_prev;
    if (!a->lists[fl][sl]) {
        a->sl_map[fl] &= (uint8_t) ~(1u << sl);
        if (!a->sl_map[fl])
            a->fl_map &= ~(1ull << fl);
    }
    b->free = false;
    b->free_prev = b->free_next = NULL;
    a->nfree--;
}

/* ---- hash of allocated blocks ---- */

static uint64_t slot_of(const struct kv_segalloc *a, uint64_t off)
{
    return ((off / KV_SEGALLOC_GRAN) * 0x9E3779B97F4A7C15ull >> 20) & (a->tab_cap - 1);
}

static int tab_grow(struct kv_segalloc *a)
{
    uint64_t ncap = a->tab_cap ? a->tab_cap * 2 : 64;
    struct blk **nt = kv_calloc(ncap, sizeof(*nt));
    if (!nt)
        return KV_ENOMEM;
    struct blk **old = a->tab;
    uint64_t ocap = a->tab_cap;
    a->tab = nt;
    a->tab_cap = ncap;
    for (uint64_t i = 0; i < ocap; i++) {
        if (!old[i])
            continue;
        uint64_t s = slot_of(a, old[i]->off);
        while (nt[s])
            s = (s + 1) & (ncap - 1);
        nt[s] = old[i];
    }
    kv_free(old);
    return KV_OK;
}

/* Room for one more entry (call before changing any state, so ENOMEM leaves a unchanged). */
static int tab_reserve(struct kv_segalloc *a)
{
    if ((a->nalloc + 1) * 10 >= a->tab_cap * 7)
        return tab_grow(a);
    return KV_OK;
}

static void tab_add(struct kv_segalloc *a, struct blk *b)
{
    uint64_t s = slot_of(a, b->off);
    while (a->tab[s])
        s = (s + 1) & (a->tab_cap - 1);
    a->tab[s] = b;
    a->nalloc++;
}

static struct blk *tab_take(struct kv_segalloc *a, uint64_t off)
{
    if (!a->tab_cap)
        return NULL;
    uint64_t mask = a->tab_cap - 1;
    uint64_t s = slot_of(a, off);
    while (a->tab[s] && a->tab[s]->off != off)
        s = (s + 1) & mask;
    struct blk *b = a->tab[s];
    if (!b)
        return NULL;
    a->tab[s] = NULL;
    a->nalloc--;
    /* backward-shift: move later entries of the run into the hole when their home allows */
    uint64_t hole = s;
    for (uint64_t j = (s + 1) & mask; a->tab[j]; j = (j + 1) & mask) {
        uint64_t home = slot_of(a, a->tab[j]->off);
        /* entry at j may move to hole if home is not cyclically in (hole, j] */
        bool in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!in_range) {
            a->tab[hole] = a->tab[j];
            a->tab[j] = NULL;
            hole = j;
        }
    }
    return b;
}

/* ---- public ---- */

int kv_segalloc_create(uint64_t size, struct kv_segalloc **out)
{
    size -= size % KV_SEGALLOC_GRAN;
    if (!out || size == 0)
        return KV_EINVAL;
    struct kv_segalloc *a = kv_calloc(1, sizeof(*a));
    struct blk *b = a ? blk_new(a) : NULL;
    if (!a || !b || tab_grow(a) < 0) {
        if (a) {
            kv_free(a->slabs);
            kv_free(a->tab);
        }
        kv_free(a);
        return KV_ENOMEM;
    }
    a->cap = size;
    b->off = 0;
    b->size = size;
    a->head = b;
    list_insert(a, b);
    *out = a;
    return KV_OK;
}

void kv_segalloc_destroy(struct kv_segalloc *a)
{
    if (!a)
        return;
    while (a->slabs) {
        struct slab *sl = a->slabs;
        a->slabs = sl->next;
        kv_free(sl);
    }
    kv_free(a->tab);
    kv_free(a);
}

static struct blk *find_free(struct kv_segalloc *a, uint64_t g)
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
    for (struct blk *b = a->lists[fl][sl]; b; b = b->free_next)
        if (b->size / KV_SEGALLOC_GRAN >= g)
            return b;
    return NULL;
}

/* Splits free block b (already off its list) so that [b->off, b->off+len) stays in b and the
 * tail becomes a new free block. nb is a preallocated record or NULL when no tail remains. */
static void split_tail(struct kv_segalloc *a, struct blk *b, uint64_t len, struct blk *nb)
{
    if (!nb)
        return;
    nb->off = b->off + len;
    nb->size = b->size - len;
    nb->phys_prev = b;
    nb->phys_next = b->phys_next;
    if (nb->phys_next)
        nb->phys_next->phys_prev = nb;
    b->phys_next = nb;
    b->size = len;
    list_insert(a, nb);
}

int kv_segalloc_alloc(struct kv_segalloc *a, uint64_t len, uint64_t *off)
{
    if (!a || !off || len == 0 || len > a->cap)
        return len == 0 || !a || !off ? KV_EINVAL : KV_ENOSPC;
    uint64_t g = (len + KV_SEGALLOC_GRAN - 1) / KV_SEGALLOC_GRAN;
    len = g * KV_SEGALLOC_GRAN;
    struct blk *b = find_free(a, g);
    if (!b)
        return KV_ENOSPC;
    struct blk *nb = NULL;
    if (b->size > len && !(nb = blk_new(a)))
        return KV_ENOMEM;
    if (tab_reserve(a) < 0) {
        blk_del(a, nb);
        return KV_ENOMEM;
    }
    list_remove(a, b);
    split_tail(a, b, len, nb);
    tab_add(a, b);
    a->used += b->size;
    *off = b->off;
    return KV_OK;
}

int kv_segalloc_reserve(struct kv_segalloc *a, uint64_t off, uint64_t len)
{
    if (!a || len == 0 || off % KV_SEGALLOC_GRAN)
        return KV_EINVAL;
    len = (len + KV_SEGALLOC_GRAN - 1) / KV_SEGALLOC_GRAN * KV_SEGALLOC_GRAN;
    if (off >= a->cap || len > a->cap - off)
        return KV_ERANGE;
    struct blk *b = a->cursor && a->cursor->off <= off ? a->cursor : a->head;
    while (b && b->off + b->size <= off)
        b = b->phys_next;
    if (!b || !b->free || b->off + b->size < off + len)
        return KV_EEXIST;
    struct blk *front = NULL, *tail = NULL;
    if (b->off < off && !(front = blk_new(a)))
        return KV_ENOMEM;
    if (b->off + b->size > off + len && !(tail = blk_new(a))) {
        blk_del(a, front);
        return KV_ENOMEM;
    }
    if (tab_reserve(a) < 0) {
        blk_del(a, front);
        blk_del(a, tail);
        return KV_ENOMEM;
    }
    list_remove(a, b);
    if (front) {
        /* b keeps [b->off, off) as a free block; front record becomes the allocated part */
        front->off = off;
        front->size = b->off + b->size - off;
        front->phys_prev = b;
        front->phys_next = b->phys_next;
        if (front->phys_next)
            front->phys_next->phys_prev = front;
        b->phys_next = front;
        b->size = off - b->off;
        list_insert(a, b);
        b = front;
    }
    split_tail(a, b, len, tail);
    tab_add(a, b);
    a->used += b->size;
    a->cursor = b;
    return KV_OK;
}

int kv_segalloc_free(struct kv_segalloc *a, uint64_t off)
{
    if (!a)
        return KV_EINVAL;
    struct blk *b = tab_take(a, off);
    if (!b)
        return KV_ENOENT;
    a->used -= b->size;
    struct blk *p = b->phys_prev, *n = b->phys_next;
    if (n && n->free) {
        list_remove(a, n);
        b->size += n->size;
        b->phys_next = n->phys_next;
        if (b->phys_next)
            b->phys_next->phys_prev = b;
        if (a->cursor == n)
            a->cursor = NULL;
        blk_del(a, n);
    }
    if (p && p->free) {
        list_remove(a, p);
        p->size += b->size;
        p->phys_next = b->phys_next;
        if (p->phys_next)
            p->phys_next->phys_prev = p;
        if (a->cursor == b)
            a->cursor = NULL;
        blk_del(a, b);
        b = p;
    }
    list_insert(a, b);
    return KV_OK;
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
    for (const struct blk *b = a->lists[fl][sl]; b; b = b->free_next)
        if (b->size > best)
            best = b->size;
    return best;
}

uint64_t kv_segalloc_free_blocks(const struct kv_segalloc *a)
{
    return a->nfree;
}

uint64_t kv_segalloc_allocated_blocks(const struct kv_segalloc *a)
{
    return a->nalloc;
}
