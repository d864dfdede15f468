/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p_pick.c - chunk selection for a fetcher: which missing chunk to read next, from whom.
 *
 * Goal: spread reads over the peers and keep the publisher's upload near one copy of the set.
 *  - Peers first. For every missing chunk held by a usable non-publisher holder, the cost is
 *    that holder's load (our reads in flight from it); the least loaded pair wins, then the
 *    rarest chunk (fewest holders: it is the one most worth replicating), then a random one
 *    (a reservoir draw, so fetchers do not all chase the same chunk).
 *  - The publisher last: only when no peer has anything we miss, at most pub_limit of our
 *    reads at a time, and only chunks that no other fetcher has claimed (a peer sets a chunk's
 *    claim bit in its record before it reads it from a publisher, and clears it when done).
 *    Fetchers therefore split the publisher's chunks among themselves and copy the rest from
 *    each other. A claimant that dies loses its record with its lease, freeing its claims.
 * Cost: O(nchunks * holders) per pick, fine for thousands of chunks and tens of peers.
 *
 * Pure and stateless apart from the caller's random state; thread-safe.
 */
#include "p2p/p2p_int.h"

uint64_t kv_p2p_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x ? x : 0x9e3779b97f4a7c15ULL;
    return x * 0x2545f4914f6cdd1dULL;
}

bool kv_p2p_pick_next(const uint8_t *state, uint64_t nchunks, const struct kv_p2p_holder *h,
                      size_t nh, int pub_inflight, int pub_limit, uint64_t *rnd,
                      struct kv_p2p_pick *out)
{
    /* best peer pair so far */
    bool have_peer = false;
    int best_load = 0;
    size_t best_holders = 0;
    uint64_t ties = 0;
    struct kv_p2p_pick peer_pick = {0};
    /* publisher candidates (reservoir) */
    uint64_t pub_seen = 0;
    struct kv_p2p_pick pub_pick = {0};

    for (uint64_t c = 0; c < nchunks; c++) {
        if (state[c] != KV_P2P_MISSING)
            continue;
        size_t holders = 0, best_h = 0, npub = 0, pub_h = 0;
        int load = 0;
        bool claimed = false, any_peer = false;
        uint64_t hties = 0;
        for (size_t i = 0; i < nh; i++) {
            if (!h[i].usable || !h[i].have || !kv_p2p_bit(h[i].have, c)) {
                if (h[i].usable && h[i].claims && !h[i].publisher && kv_p2p_bit(h[i].claims, c))
                    claimed = true;
                continue;
            }
            holders++;
            if (h[i].publisher) {
                if (npub++ == 0 || h[i].inflight < h[pub_h].inflight)
                    pub_h = i;
                continue;
            }
            if (!any_peer || h[i].inflight < load) {
                any_peer = true;
                load = h[i].inflight;
                best_h = i;
                hties = 1;
            } else if (h[i].inflight == load && kv_p2p_rand(rnd) % ++hties == 0) {
                best_h = i;
            }
        }
        if (any_peer) {
            bool better =
                !have_peer || load < best_load || (load == best_load && holders < best_holders);
            if (better) {
                have_peer = true;
                best_load = load;
                best_holders = holders;
                ties = 1;
                peer_pick.chunk = c;
                peer_pick.holder = best_h;
            } else if (load == best_load && holders == best_holders &&
                       kv_p2p_rand(rnd) % ++ties == 0) {
                peer_pick.chunk = c;
                peer_pick.holder = best_h;
            }
            continue;
        }
        if (have_peer || npub == 0 || claimed || pub_inflight >= pub_limit)
            continue;
        if (kv_p2p_rand(rnd) % ++pub_seen == 0) {
            pub_pick.chunk = c;
            pub_pick.holder = pub_h;
        }
    }
    if (have_peer) {
        *out = peer_pick;
        return true;
    }
    if (pub_seen > 0) {
        *out = pub_pick;
        return true;
    }
    return false;
}
