# SPDX-License-Identifier: Apache-2.0
"""Store.close() racing with calls in other threads (issue 11): the binding addresses the C
client by a generation-checked id (kv_store_h_*), so a call racing with close either completes
or raises ClosedError - never a crash or a use of freed memory (under the ASan build of
libkvstash this test would catch one) - and a stale id never reaches another, newer Store."""
import threading
import time

import kvstash
from kvstash import _native
from kvstash.errors import CODES


def _caller(store, rnd, tid, out, start):
    """Loops put/get/exists/list/batch calls until one raises ClosedError."""
    start.wait()
    n = ok = 0
    val = bytes([tid]) * 1000
    buf = bytearray(1000)
    try:
        while True:
            key = "close-race/%d/%d/%d" % (rnd, tid, n)
            n += 1
            store.put(key, val)
            assert store.get(key) == val
            assert store.get_into(key, buf) == len(val) and bytes(buf) == val
            assert store.exists([key, key + "/none"]) == [True, False]
            assert store.batch_exists_codes([key]) == [1]
            store.list("close-race/%d/%d/" % (rnd, tid), limit=2)
            store.remove(key)
            ok += 1
    except kvstash.ClosedError as e:
        out[tid] = ("closed", ok, e.code)
    except Exception as e:  # anything else is a failure of the test
        out[tid] = ("error", ok, repr(e))


def test_close_while_other_threads_call(cluster):
    closed = CODES["KV_ESHUTDOWN"]
    for rnd in range(8):
        s = kvstash.Store(**cluster.store_kwargs())
        out = {}
        start = threading.Event()
        ts = [threading.Thread(target=_caller, args=(s, rnd, t, out, start)) for t in range(4)]
        for t in ts:
            t.start()
        start.set()
        time.sleep(0.05 + 0.03 * rnd)  # close at a different point of the calls each round
        s.close()
        for t in ts:
            t.join(30)
            assert not t.is_alive(), "a call did not return after close()"
        for tid in range(4):
            what, _, detail = out[tid]
            assert what == "closed", "thread %d: %s" % (tid, detail)
            assert detail == closed
        s.close()  # idempotent
        try:
            s.put("after-close", b"x")
            raise AssertionError("a put on a closed Store succeeded")
        except kvstash.ClosedError:
            pass


def test_stale_id_never_reaches_a_newer_store(cluster):
    a = kvstash.Store(**cluster.store_kwargs())
    old = a._h
    a.put("stale-id/a", b"a")
    a.close()
    b = kvstash.Store(**cluster.store_kwargs())  # may reuse a's slot, with a new generation
    try:
        assert b._h != old
        closed = CODES["KV_ESHUTDOWN"]
        assert _native.kv_store_h_exists(old, b"stale-id/a") == closed
        assert _native.kv_store_h_close(old) == closed
        assert _native.kv_store_h_exists(12345, b"stale-id/a") == closed  # never issued
        assert _native.kv_store_h_exists(0, b"stale-id/a") == closed
        assert b.exists("stale-id/a")  # b is untouched by the stale calls
        b.remove("stale-id/a")
    finally:
        b.close()


def test_copy_engine_keeps_its_store_alive(cluster):
    """The copy engine holds a reference on the store's C client: closing the Store first
    makes Store calls raise ClosedError, while the engine (its own reference) still closes
    cleanly and releases the client."""
    from kvstash.kvconn import CopyEngine
    s = kvstash.Store(**cluster.store_kwargs())
    eng = CopyEngine(s, block_size=4, chunk_blocks=1, num_heads=1, row_bytes=16)
    s.close()
    try:
        s.exists("x")
        raise AssertionError("exists on a closed Store succeeded")
    except kvstash.ClosedError:
        pass
    eng.close()
    eng.close()


def test_copy_engine_close_while_other_threads_wait(cluster):
    """CopyEngine is addressed by a generation-checked id too (kv_conn_h_*): threads that
    submit, wait and peek while another thread closes the engine finish their call or get
    ClosedError, never a crash or freed memory (the ASan build runs this); a stale id is
    refused."""
    import torch
    from kvstash.kvconn import SAVE, CopyEngine
    s = kvstash.Store(**cluster.store_kwargs())
    eng = CopyEngine(s, block_size=4, chunk_blocks=1, num_heads=1, row_bytes=16, threads=2)
    kv = torch.zeros(2, 8, 4, 1, 8, dtype=torch.float16)  # [K|V, blocks, tokens, heads, dim]
    eng.register_layer(0, kv)
    errors, closed = [], []

    def worker(t):
        try:
            for i in range(100000):
                job = eng.submit(SAVE, 0, 1, ["close-race/%d/%d" % (t, i)], [[i % 8]])
                eng.peek(job, 1)
                eng.wait(job, 1, 2000)
                eng.release(job)
        except kvstash.ClosedError:
            closed.append(t)
        except Exception as e:  # anything else is a failure of the test
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    old = eng._h
    eng.close()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a call did not return after close()"
    assert not errors, errors
    assert sorted(closed) == [0, 1, 2]
    closed_code = CODES["KV_ESHUTDOWN"]
    assert _native.kv_conn_h_release(old, 1) == closed_code
    assert _native.kv_conn_h_destroy(old) == closed_code
    assert _native.kv_conn_h_destroy(987654321) == closed_code
    eng.close()  # twice is fine
    s.close()
