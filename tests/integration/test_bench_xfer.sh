#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# test_bench_xfer.sh - `kvstash bench xfer` itself: bad flags exit 2 with one line; a target
# served through `kvstash metad` and initiators with --verify over tcp and shm, read and write,
# odd block sizes; --json has the documented keys, numeric and consistent; a missing segment
# exits 1 naming it; two verifying writers on the same slots make --verify fail (so the check
# can fail). Never skips.
# Env: KVSTASH_BIN (set by ctest).
set -euo pipefail

bin=${KVSTASH_BIN:?KVSTASH_BIN not set (run through ctest)}
py=/usr/bin/python3
work=$(mktemp -d /tmp/kvstash-test-bench-xfer.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok - $*"; }

# ---- bad usage: exit 2, exactly one line on stderr naming the problem ----
bad_usage() { # what-it-must-mention args...
  local want=$1; shift
  local rc=0
  "$bin" bench xfer "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" = 2 ] || fail "'$*' exited $rc, want 2 (stderr: $(cat "$work/err"))"
  [ "$(wc -l <"$work/err")" = 1 ] || fail "'$*' printed $(wc -l <"$work/err") lines on stderr, want 1: $(cat "$work/err")"
  grep -q -- "$want" "$work/err" || fail "'$*': stderr does not mention '$want': $(cat "$work/err")"
  [ ! -s "$work/out" ] || fail "'$*' wrote to stdout: $(cat "$work/out")"
  pass "bad usage '$*' -> exit 2: $(cat "$work/err")"
}
bad_usage bogus --bogus
bad_usage block_size --block_size=12parsecs
bad_usage operation --operation=sideways
bad_usage mode --mode=server
bad_usage threads --threads=0
bad_usage batch_size --batch_size
bad_usage extra --mode=target extra
bad_usage buffer_size --mode=initiator --buffer_size=1KiB --block_size=4096
bad_usage metadata_server --metadata_server=gopher://x --duration=0.1

"$bin" bench xfer --help >"$work/help" || fail "--help exited non-zero"
for f in mode metadata_server local_server_name segment_id protocol operation batch_size \
  block_size buffer_size duration threads verify json; do
  grep -q -- "--$f" "$work/help" || fail "--help does not list --$f"
done
pass "--help lists every Mooncake flag"

# ---- metad + target ----
free_port() {
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
mport=$(free_port)
"$bin" metad --addr "127.0.0.1:$mport" >"$work/metad.log" 2>&1 &
pids+=($!)
murl="http://127.0.0.1:$mport/metadata"
for _ in $(seq 1 100); do
  curl -s -o /dev/null "$murl?key=probe" && break
  sleep 0.1
done
curl -s -o /dev/null "$murl?key=probe" || fail "metad does not answer on $murl: $(cat "$work/metad.log")"

seg="bt-$$"
"$bin" bench xfer --mode=target --metadata_server="$murl" --local_server_name="$seg" \
  --buffer_size=8MiB >"$work/target.log" 2>&1 &
tpid=$!
pids+=("$tpid")
for _ in $(seq 1 100); do
  grep -q "target ready" "$work/target.log" && break
  kill -0 "$tpid" 2>/dev/null || fail "target exited: $(cat "$work/target.log")"
  sleep 0.1
done
grep -q "target ready" "$work/target.log" || fail "target not ready after 10 s: $(cat "$work/target.log")"
grep -q -- "--segment_id=$seg" "$work/target.log" || fail "ready line does not say how to run the initiator: $(cat "$work/target.log")"
pass "target ready: $(grep "target ready" "$work/target.log")"

ini=(--mode=initiator --metadata_server="$murl" --segment_id="$seg")

# check_json FILE PROTOCOL OPERATION BLOCK BATCH THREADS [TARGET_BYTES (default 8 MiB)]
check_json() {
  "$py" - "$@" <<'EOF' || fail "bad --json output: $(cat "$1")"
import json, sys
f, proto, op, block, batch, threads = sys.argv[1:7]
target = int(sys.argv[7]) if len(sys.argv) > 7 else 8 * 1048576
lines = open(f).read().strip().splitlines()
assert len(lines) == 1, "want exactly one line of JSON on stdout, got %d" % len(lines)
d = json.loads(lines[0])
for k in ("gb_per_s", "bytes", "ops", "p50_us", "p99_us", "ops_per_s", "duration_s",
          "block_size", "batch_size", "threads", "warmup_s", "warmup_bytes"):
    assert isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool), "%s not numeric: %r" % (k, d.get(k))
    assert d[k] >= 0, "%s negative" % k
assert d["protocol"] == proto, "protocol %r, want %r" % (d["protocol"], proto)
assert d["operation"] == op, d["operation"]
assert d["block_size"] == int(block) and d["batch_size"] == int(batch) and d["threads"] == int(threads)
assert d["verify"] is True
assert d["ops"] > 0 and d["bytes"] == d["ops"] * d["block_size"], (d["ops"], d["bytes"])
assert d["ops"] % d["batch_size"] == 0, "ops not whole batches"
assert d["gb_per_s"] > 0 and d["duration_s"] > 0
assert abs(d["gb_per_s"] - d["bytes"] / d["duration_s"] / 1e9) <= 0.01 * d["gb_per_s"] + 1e-9
assert 0 < d["p50_us"] <= d["p99_us"], (d["p50_us"], d["p99_us"])
# the untimed warm-up is one pass over each thread's share of the target (whole batches)
share = target // d["block_size"] // d["threads"]
want = -(-share // d["batch_size"]) * d["batch_size"] * d["block_size"] * d["threads"]
assert d["warmup_bytes"] == want, ("warm-up bytes", d["warmup_bytes"], want)
EOF
}

# run_ok NAME PROTOCOL OPERATION BLOCK BATCH THREADS
run_ok() {
  local name=$1 proto=$2 op=$3 block=$4 batch=$5 threads=$6 rc=0
  "$bin" bench xfer "${ini[@]}" --protocol="$proto" --operation="$op" --block_size="$block" \
    --batch_size="$batch" --threads="$threads" --duration=0.5 --verify --json \
    >"$work/$name.json" 2>"$work/$name.err" || rc=$?
  [ "$rc" = 0 ] || fail "$name exited $rc: $(cat "$work/$name.err")"
  check_json "$work/$name.json" "$proto" "$op" "$block" "$batch" "$threads"
  pass "$name: $(cat "$work/$name.json")"
}
run_ok tcp-write tcp write 65536 8 2
run_ok tcp-read tcp read 4099 16 3
run_ok shm-write shm write 1000 5 3
run_ok shm-read shm read 65536 8 2

# ---- text output (not a terminal: no live lines, one result block) ----
"$bin" bench xfer "${ini[@]}" --protocol=tcp --operation=write --block_size=64KiB --batch_size=4 \
  --threads=1 --duration=0.3 >"$work/text" 2>"$work/text.err" || fail "text run: $(cat "$work/text.err")"
for w in "GB/s" "ops/s" "p50" "p99" "warm-up"; do
  grep -q "$w" "$work/text" || fail "text output lacks $w: $(cat "$work/text")"
done
! grep -q '^\s*\[' "$work/text" || fail "live lines printed although stdout is not a terminal"
pass "text output"

# ---- on a terminal: a live line each second ----
if command -v script >/dev/null; then
  script -qec "$bin bench xfer --mode=initiator --metadata_server=$murl --segment_id=$seg \
    --protocol=tcp --operation=read --block_size=64KiB --batch_size=4 --threads=1 --duration=1.6" \
    /dev/null >"$work/tty" 2>&1 </dev/null || fail "run on a terminal: $(cat "$work/tty")"
  grep -q '^\s*\[ *1\.0 s\].*GB/s' "$work/tty" || fail "no live line on a terminal: $(cat "$work/tty")"
  pass "live line on a terminal: $(grep '^\s*\[' "$work/tty" | head -n 1 | tr -d '\r')"
fi

# ---- SIGTERM stops the initiator early; it still prints its result and exits 0 ----
"$bin" bench xfer "${ini[@]}" --protocol=tcp --operation=read --block_size=64KiB --batch_size=4 \
  --threads=2 --duration=60 >"$work/early" 2>"$work/early.err" &
early=$!
pids+=("$early")
for _ in $(seq 1 200); do
  grep -q "kvstash bench xfer: read" "$work/early" && break
  sleep 0.05
done
sleep 0.5
kill -TERM "$early"
rc=0
wait "$early" || rc=$?
[ "$rc" = 0 ] || fail "initiator stopped by SIGTERM exited $rc: $(cat "$work/early.err")"
grep -q "result: read, tcp, 2 threads, .*, [0-9.]* s" "$work/early" ||
  fail "no result after SIGTERM: $(cat "$work/early")"
pass "SIGTERM stops the initiator early: $(grep "result:" "$work/early")"

# ---- the memcpy peer mode ----
"$bin" bench xfer --mode=memcpy --operation=write --buffer_size=4MiB --block_size=4097 \
  --batch_size=8 --duration=0.3 --verify --json >"$work/memcpy.json" 2>"$work/memcpy.err" ||
  fail "--mode=memcpy: $(cat "$work/memcpy.err")"
check_json "$work/memcpy.json" memcpy write 4097 8 1 $((4 * 1048576))
pass "--mode=memcpy: $(cat "$work/memcpy.json")"

# ---- missing segment: exit 1 naming it ----
rc=0
"$bin" bench xfer --mode=initiator --metadata_server="$murl" --segment_id=no-such-seg \
  --duration=0.2 >"$work/nos" 2>"$work/nos.err" || rc=$?
[ "$rc" = 1 ] || fail "missing segment exited $rc, want 1"
grep -q "no-such-seg" "$work/nos.err" || fail "missing segment error does not name it: $(cat "$work/nos.err")"
pass "missing segment -> exit 1: $(cat "$work/nos.err")"

# ---- --verify can fail: two writers with different seeds on the same slots ----
# A runs until B is done (SIGTERM: A still checks what it wrote); B starts once A is running and
# runs 0.5 s inside A's window however slowly B starts (ThreadSanitizer build, a loaded host).
"$bin" bench xfer "${ini[@]}" --protocol=shm --operation=write --block_size=4096 --batch_size=8 \
  --threads=1 --duration=60 --verify >"$work/raceA" 2>"$work/raceA.err" &
raceA=$!
pids+=("$raceA")
for _ in $(seq 1 200); do
  grep -q "kvstash bench xfer: write" "$work/raceA" && break
  sleep 0.05
done
rcA=0 rcB=0
"$bin" bench xfer "${ini[@]}" --protocol=shm --operation=write --block_size=4096 --batch_size=8 \
  --threads=1 --duration=0.5 --verify >"$work/raceB" 2>"$work/raceB.err" || rcB=$?
kill -TERM "$raceA" 2>/dev/null || true
wait "$raceA" || rcA=$?
if [ "$rcA" != 1 ] && [ "$rcB" != 1 ]; then
  fail "two verifying writers on the same slots both passed (exit $rcA, $rcB): --verify cannot fail"
fi
grep -hq "verify FAILED.*offset [0-9]" "$work/raceA.err" "$work/raceB.err" ||
  fail "verify failure does not name the offset: $(cat "$work/raceA.err" "$work/raceB.err")"
pass "--verify detects foreign data: $(grep -h "verify FAILED" "$work/raceA.err" "$work/raceB.err" | head -n 1)"

# ---- a transfer error: the target dies mid-run -> exit 1 naming the request and the error ----
"$bin" bench xfer --mode=target --metadata_server="$murl" --local_server_name="$seg-dying" \
  --buffer_size=4MiB >"$work/dying.log" 2>&1 &
dpid=$!
pids+=("$dpid")
for _ in $(seq 1 100); do
  grep -q "target ready" "$work/dying.log" && break
  sleep 0.05
done
grep -q "target ready" "$work/dying.log" || fail "second target not ready: $(cat "$work/dying.log")"
( # kill the target once the initiator runs (its header line is out)
  for _ in $(seq 1 200); do
    grep -q "kvstash bench xfer: write" "$work/dying.out" 2>/dev/null && break
    sleep 0.05
  done
  sleep 0.3
  kill -KILL "$dpid"
) &
pids+=($!)
rc=0
"$bin" bench xfer --mode=initiator --metadata_server="$murl" --segment_id="$seg-dying" \
  --protocol=tcp --operation=write --block_size=64KiB --batch_size=8 --threads=2 --duration=20 \
  >"$work/dying.out" 2>"$work/dying.err" || rc=$?
[ "$rc" = 1 ] || fail "initiator exited $rc when its target died, want 1: $(cat "$work/dying.err")"
grep -q "of segment '$seg-dying' failed: .*(KV_E" "$work/dying.err" ||
  fail "transfer error message does not name the request and error: $(cat "$work/dying.err")"
pass "target killed -> exit 1: $(grep "failed:" "$work/dying.err")"

# ---- both ends in one process (embedded metadata) ----
"$bin" bench xfer --mode=both --metadata_server=embedded://bench-both --buffer_size=4MiB \
  --block_size=8192 --batch_size=8 --threads=2 --duration=0.5 --verify --operation=write --json \
  >"$work/both.json" 2>"$work/both.err" || fail "--mode=both: $(cat "$work/both.err")"
pass "--mode=both: $(cat "$work/both.json")"

# ---- target stops cleanly on SIGTERM ----
kill -TERM "$tpid"
rc=0
wait "$tpid" || rc=$?
[ "$rc" = 0 ] || fail "target exited $rc on SIGTERM: $(cat "$work/target.log")"
pass "target exits 0 on SIGTERM"
echo "all bench xfer checks passed"
