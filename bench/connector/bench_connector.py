#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Save and load throughput of the connector copy engine (kvstash.kvconn) for a
Qwen3-0.6B-shaped paged KV cache (28 layers, 8 KV heads, head_dim 128, bf16, block 16)
against a real store, next to a plain torch copy of the same bytes (gather of the same blocks
into one contiguous tensor for saves, scatter back for loads) in this process.

    /usr/bin/python3 bench/connector/bench_connector.py [--tokens 2048] [--repeat 7]

Starts metad + master + node on free loopback ports (or uses --master/--cluster) and stops
them on exit. Each round times both sides back to back; prints the medians of the rounds'
GB/s (1e9 bytes/s) of KV bytes moved and the median of the rounds' ratios. Not a test:
it never fails on a figure; it exits 1 only if something could not run or a loaded byte
differs.
"""
import argparse
import glob
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))

LAYERS, HEADS, HEAD_DIM, BLOCK = 28, 8, 128, 16


def _bin(arg):
    if arg:
        return arg
    c = sorted(glob.glob(os.path.join(ROOT, "build*", "kvstash")), key=os.path.getmtime)
    if not c:
        sys.exit("bench_connector: no kvstash binary; build first or pass --bin")
    return c[-1]


def _wait(path, pat, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(path) as f:
            m = re.search(pat, f.read())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit("bench_connector: %s did not start:\n%s" % (path, open(path).read()[-2000:]))


def start_cluster(binary, capacity, d):
    procs = []

    def start(name, args):
        log = os.path.join(d, name + ".log")
        p = subprocess.Popen([binary] + args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p, log

    p, log = start("metad", ["metad", "--addr", "127.0.0.1:0"])
    meta = _wait(log, r"listening on (http://[0-9.]+:[0-9]+)", p).group(1) + "/metadata"
    p, log = start("master", ["master", "--metadata=" + meta, "--cluster=bench", "--rpc-addr",
                              "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
    master = _wait(log, r"RPC on ([0-9.]+:[0-9]+)", p).group(1)
    p, _ = start("node", ["node", "--metadata=" + meta, "--cluster=bench", "--node-id", "b1",
                          "--capacity", capacity])
    time.sleep(1.0)
    return master, procs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2048, help="prompt tokens moved per round")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per stored chunk")
    ap.add_argument("--threads", type=int, default=2, help="copy engine threads")
    ap.add_argument("--repeat", type=int, default=7, help="rounds (each times both sides)")
    ap.add_argument("--bin", help="kvstash binary (default: newest build*/kvstash)")
    ap.add_argument("--master", help="use this master instead of starting a cluster")
    ap.add_argument("--cluster", default="bench")
    a = ap.parse_args()

    import torch
    import kvstash
    from kvstash.kvconn import LOAD, SAVE, CopyEngine

    torch.set_num_threads(1)
    nblk = a.tokens // BLOCK
    cb = a.chunk // BLOCK
    nchunks = a.tokens // a.chunk
    per_round = 2 * a.tokens * HEADS * HEAD_DIM * 2 * LAYERS
    procs = []
    d = tempfile.mkdtemp(prefix="kvstash-bench-conn.")
    try:
        master = a.master
        if not master:
            cap = "%dMiB" % (per_round * (a.repeat + 1) // (1 << 20) + 256)
            master, procs = start_cluster(_bin(a.bin), cap, d)
        store = kvstash.Store(master=master, cluster=a.cluster)
        shape = (2, nblk + 8, BLOCK, HEADS, HEAD_DIM)
        src = [torch.randn(shape).to(torch.bfloat16) for _ in range(LAYERS)]
        dst = [torch.zeros(shape, dtype=torch.bfloat16) for _ in range(LAYERS)]
        g = torch.Generator().manual_seed(1)
        blocks_a = torch.randperm(nblk + 8, generator=g)[:nblk].tolist()
        blocks_b = torch.randperm(nblk + 8, generator=g)[:nblk].tolist()
        eng = CopyEngine(store, block_size=BLOCK, chunk_blocks=cb, num_heads=HEADS,
                         row_bytes=HEAD_DIM * 2, threads=a.threads)
        eng_b = CopyEngine(store, block_size=BLOCK, chunk_blocks=cb, num_heads=HEADS,
                           row_bytes=HEAD_DIM * 2, threads=a.threads)
        for i in range(LAYERS):
            eng.register_layer(i, src[i])
            eng_b.register_layer(i, dst[i])
        chunk_blocks_a = [blocks_a[c * cb:(c + 1) * cb] for c in range(nchunks)]
        chunk_blocks_b = [blocks_b[c * cb:(c + 1) * cb] for c in range(nchunks)]
        saves, loads, tg, ts = [], [], [], []
        staged = None
        for r in range(a.repeat):
            keys = ["bench/r%d-%d/c%d" % (os.getpid(), r, c) for c in range(nchunks)]
            for t in dst:
                t.zero_()
            t0 = time.perf_counter()
            jobs = [eng.submit(SAVE, li, li + 1, keys, chunk_blocks_a) for li in range(LAYERS)]
            bad = 0
            for j in jobs:
                _, st = eng.wait(j, nchunks)
                bad += sum(1 for s in st if s)
                eng.release(j)
            saves.append(time.perf_counter() - t0)
            if bad:
                sys.exit("bench_connector: %d chunk saves failed (store too small?)" % bad)
            t0 = time.perf_counter()
            j = eng_b.submit(LOAD, 0, LAYERS, keys, chunk_blocks_b)
            _, st = eng_b.wait(j, nchunks)
            eng_b.release(j)
            loads.append(time.perf_counter() - t0)
            if any(st):
                sys.exit("bench_connector: loads failed: %s" % st)
            for li in range(LAYERS):
                if not torch.equal(src[li][:, blocks_a].view(torch.int16),
                                   dst[li][:, blocks_b].view(torch.int16)):
                    sys.exit("bench_connector: layer %d differs after the load" % li)
            # the torch peer: gather the same blocks into one tensor, scatter them back. Its
            # staging tensors are allocated and written once, before the first round, as the
            # store's segment is prefaulted before its first put: both sides copy into warm
            # memory (a fresh allocation per round made torch's figure swing 3-14 GB/s with
            # what the allocator happened to reuse).
            ia, ib = torch.tensor(blocks_a), torch.tensor(blocks_b)
            if staged is None:
                staged = [s.index_select(1, ia) for s in src]
            t0 = time.perf_counter()
            for li in range(LAYERS):
                torch.index_select(src[li], 1, ia, out=staged[li])
            tg.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for li in range(LAYERS):
                dst[li].index_copy_(1, ib, staged[li])
            ts.append(time.perf_counter() - t0)
        gb = per_round / 1e9
        # Each round times both sides back to back, so a round's ratio compares the two under
        # the same load of this shared machine (its memory bandwidth swings +-30% over
        # seconds); the ratio printed is the median of the rounds' ratios, the GB/s the
        # median of each side's rounds.
        med = statistics.median
        print("shape: Qwen3-0.6B (28 layers, 8 KV heads, head_dim 128, bf16, block 16), "
              "%d tokens, chunk %d, %d threads, %.1f MiB of KV per round, median of %d rounds"
              % (a.tokens, a.chunk, a.threads, per_round / 2 ** 20, a.repeat))
        for name, ours, peer, what in (("save (gather + store put)", saves, tg,
                                        "torch gather (index_select)"),
                                       ("load (store get + scatter)", loads, ts,
                                        "torch scatter (index_copy_)")):
            ratios = [p / o for o, p in zip(ours, peer)]
            print("%s: %6.2f GB/s   %s: %6.2f GB/s   ratio %.2f (rounds %s)"
                  % (name, gb / med(ours), what, gb / med(peer), med(ratios),
                     " ".join("%.2f" % r for r in ratios)))
        eng.close()
        eng_b.close()
        store.close()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in glob.glob(os.path.join(d, "*")):
            os.unlink(f)
        os.rmdir(d)


if __name__ == "__main__":
    main()
