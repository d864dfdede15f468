/* SPDX-License-Identifier: Apache-2.0 */
/*
 * table_arena.c - slot tables in shared 2 MiB huge-page chunks (table_arena.h).
 *
 * A chunk starts with a header (its count of live tables); tables are carved after it by a
 * bump pointer and never reused: a chunk is unmapped when its count drops to 0 (and it stops
 * being the one carved from), so every table handed out is fresh, zeroed memory. How a table
 * was made follows from its size alone, so kv_tarena_free needs only the size.
 *
 * Invariants:
 *  1. a chunk's live count = its tables handed out and not freed; a chunk with count 0 is
 *     unmapped unless it is cur;
 *  2. mapped = KV_SLAB_CHUNK x chunks mapped + the sizes of the own mappings.
 */
#include "store/table_arena.h"

#include <string.h>
#include <sys/mman.h>

#include "common/alloc.h"
#include "store/obj_slab.h"

#define HEAD 64                 /* a chunk's header: its live count, then padding to a line */
#define OWN (KV_SLAB_CHUNK / 2) /* from this size a table has a mapping of its own */

struct chunk_head {
    size_t live;
};

void kv_tarena_init(struct kv_tarena *a, bool chunks)
{
    memset(a, 0, sizeof(*a));
    pthread_mutex_init(&a->lock, NULL);
    a->chunks = chunks;
}

void kv_tarena_fini(struct kv_tarena *a)
{
    if (a->cur && ((struct chunk_head *)a->cur)->live == 0)
        munmap(a->cur, KV_SLAB_CHUNK);
    pthread_mutex_destroy(&a->lock);
    memset(a, 0, sizeof(*a));
}

static size_t own_bytes(size_t bytes)
{
    return (bytes + 4095) & ~(size_t)4095;
}

uint64_t *kv_tarena_alloc(struct kv_tarena *a, size_t slots)
{
    size_t bytes = slots * sizeof(uint64_t);
    if (!a->chunks || bytes < KV_TARENA_MIN)
        return kv_calloc(slots ? slots : 1, sizeof(uint64_t));
    if (bytes >= OWN) {
        char *p = kv_map_huge(own_bytes(bytes));
        if (!p)
            return NULL;
        pthread_mutex_lock(&a->lock);
        a->mapped += own_bytes(bytes);
        pthread_mutex_unlock(&a->lock);
        return (uint64_t *)(void *)p;
    }
    size_t r = (bytes + 63) & ~(size_t)63;
    pthread_mutex_lock(&a->lock);
    if (!a->cur || KV_SLAB_CHUNK - a->cur_used < r) {
        char *c = kv_map_huge(KV_SLAB_CHUNK);
        if (!c) {
            pthread_mutex_unlock(&a->lock);
            return NULL;
        }
        if (a->cur && ((struct chunk_head *)a->cur)->live == 0) { /* invariant 1 */
            munmap(a->cur, KV_SLAB_CHUNK);
            a->mapped -= KV_SLAB_CHUNK;
        }
        a->cur = c;
        a->cur_used = HEAD;
        a->mapped += KV_SLAB_CHUNK;
    }
    char *p = a->cur + a->cur_used;
    a->cur_used += r;
    ((struct chunk_head *)a->cur)->live++;
    pthread_mutex_unlock(&a->lock);
    return (uint64_t *)(void *)p;
}

void kv_tarena_free(struct kv_tarena *a, uint64_t *t, size_t slots)
{
    if (!t)
        return;
    size_t bytes = slots * sizeof(uint64_t);
    if (!a->chunks || bytes < KV_TARENA_MIN) {
        kv_free(t);
        return;
    }
    if (bytes >= OWN) {
        munmap(t, own_bytes(bytes));
        pthread_mutex_lock(&a->lock);
        a->mapped -= own_bytes(bytes);
        pthread_mutex_unlock(&a->lock);
        return;
    }
    char *c = (char *)((uintptr_t)t & ~(uintptr_t)(KV_SLAB_CHUNK - 1));
    pthread_mutex_lock(&a->lock);
    if (--((struct chunk_head *)c)->live == 0 && c != a->cur) {
        munmap(c, KV_SLAB_CHUNK);
        a->mapped -= KV_SLAB_CHUNK;
    }
    pthread_mutex_unlock(&a->lock);
}

uint64_t kv_tarena_mapped(struct kv_tarena *a)
{
    pthread_mutex_lock(&a->lock);
    uint64_t m = a->mapped;
    pthread_mutex_unlock(&a->lock);
    return m;
}
