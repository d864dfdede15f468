#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The store end to end with real processes: metad + master + 2 nodes (one prefaulted, one
# not). put/get round trips of
# sizes 0 .. 5 MiB through files and pipes (cmp), get to a file, missing key (exit 1, "not
# found", no file created), first writer wins (exit 1 "already exists"), two concurrent puts of
# one key (one wins, the other fails clearly, the value is exactly one of the two), rm, ls with
# sizes and --json, stat --json, KVSTASH_MASTER, usage errors (exit 2), `bench store` put/get
# --json, and `replay` on a slice of the conversation trace (hit blocks equal to the exact
# prefix-reuse count computed independently) plus a bad trace line (error names the line).
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

start_metad
start_master m1
start_node n1 64MiB
start_node n2 64MiB --prefault=false
wait_nodes 2
grep -q "64.0 MiB prefaulted in" "$W/n1.log" || fail "n1 did not prefault its segment: $(cat "$W/n1.log")"
! grep -q "prefaulted" "$W/n2.log" || fail "n2 prefaulted despite --prefault=false"
ok "nodes prefault their DRAM segment unless --prefault=false"

# --- round trips ---
for size in 0 1 4095 4096 65537 1048583 5242880; do
    mkval "$W/v$size" $size $size
    kv put "rt/$size" "$W/v$size" >/dev/null || fail "put rt/$size"
    kv get "rt/$size" "$W/o$size" || fail "get rt/$size"
    cmp "$W/v$size" "$W/o$size" || fail "rt/$size differs"
    kv get "rt/$size" >"$W/s$size" || fail "get rt/$size to stdout"
    cmp "$W/v$size" "$W/s$size" || fail "rt/$size to stdout differs"
done
ok "put/get round trips, 0 B .. 5 MiB, to a file and to stdout"

mkval "$W/pipe" 300000 7
# shellcheck disable=SC2002 # a pipe on purpose (not a regular file: no mmap)
cat "$W/pipe" | kv put rt/pipe - >/dev/null || fail "put from stdin"
kv get rt/pipe - | cmp - "$W/pipe" || fail "stdin round trip"
out=$(kv put --json rt/json "$W/v4096") || fail "put --json"
echo "$out" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); assert d["size"]==4096 and d["key"]=="rt/json"' ||
    fail "put --json output: $out"
ok "put from stdin, put --json"

# --- missing key ---
set +e
kv get no/such/key "$W/never" 2>"$W/err"
rc=$?
set -e
[ $rc -eq 1 ] || fail "missing key: exit $rc, want 1"
grep -q "not found" "$W/err" || fail "missing key message: $(cat "$W/err")"
[ ! -e "$W/never" ] || fail "a failed get created its output file"
ok "missing key: exit 1, 'not found', no file"

# --- first writer wins ---
set +e
kv put rt/4096 "$W/v1" 2>"$W/err"
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "already exists" "$W/err" || fail "second put: exit $rc: $(cat "$W/err")"
kv get rt/4096 - | cmp - "$W/v4096" || fail "value changed by a refused put"
ok "a second put of a key fails with 'already exists'; the value is unchanged"

# --- two concurrent puts of one key ---
mkval "$W/ca" 4194304 101
mkval "$W/cb" 4194304 202
for round in 1 2 3; do
    kv put "race/$round" "$W/ca" >"$W/ra.out" 2>"$W/ra.err" &
    pa=$!
    kv put "race/$round" "$W/cb" >"$W/rb.out" 2>"$W/rb.err" &
    pb=$!
    set +e
    wait $pa
    ra=$?
    wait $pb
    rb=$?
    set -e
    [ $((ra + rb)) -eq 1 ] || fail "race $round: exits $ra and $rb, want one 0 and one 1"
    grep -q "already exists" "$W/ra.err" "$W/rb.err" || fail "race $round: loser's message"
    kv get "race/$round" "$W/race"
    if [ $ra -eq 0 ]; then cmp -s "$W/race" "$W/ca" || fail "race $round: not the winner's bytes"; fi
    if [ $rb -eq 0 ]; then cmp -s "$W/race" "$W/cb" || fail "race $round: not the winner's bytes"; fi
done
ok "two concurrent puts of one key: one wins, the other gets 'already exists', readers see the winner"

# --- rm, ls, stat ---
kv rm rt/1 >/dev/null || fail "rm"
set +e
kv rm rt/1 2>"$W/err"
rc=$?
kv get rt/1 - >/dev/null 2>&1
rc2=$?
set -e
[ $rc -eq 1 ] && grep -q "not found" "$W/err" || fail "rm of a missing key: exit $rc"
[ $rc2 -eq 1 ] || fail "get after rm: exit $rc2"
kv ls rt/ >"$W/ls" || fail "ls"
grep -q " rt/5242880$" "$W/ls" || fail "ls lacks rt/5242880: $(cat "$W/ls")"
grep -q "5242880  rt/5242880" "$W/ls" || fail "ls size column"
grep -q " rt/1$" "$W/ls" && fail "ls lists a removed key"
kv ls --json rt/ | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
keys = [e["key"] for e in d]
assert keys == sorted(keys), keys
assert {"key": "rt/0", "size": 0} in d, d' || fail "ls --json"
kv stat --json | "$PY" -c 'import json,sys; json.load(sys.stdin)' || fail "stat --json is not JSON"
out=$(kv rm --json rt/0 rt/65537) || fail "rm --json"
[ "$out" = '{"removed":["rt/0","rt/65537"]}' ] || fail "rm --json output: $out"
ok "rm (twice: not found), ls PREFIX with sizes and --json, stat --json"

# shellcheck disable=SC2154 # set by start_master
KVSTASH_MASTER=$MASTER_m1 "$BIN" get rt/4096 --log-level error | cmp - "$W/v4096" ||
    fail "KVSTASH_MASTER"
set +e
"$BIN" put only-a-key 2>"$W/err"
rc=$?
"$BIN" get 2>/dev/null
rc2=$?
"$BIN" put --replicas=0 k "$W/v1" 2>/dev/null
rc3=$?
set -e
[ $rc -eq 2 ] && [ $rc2 -eq 2 ] && [ $rc3 -eq 2 ] || fail "usage errors exit $rc $rc2 $rc3, want 2"
ok "--master through KVSTASH_MASTER; usage errors exit 2"

# --- bench store ---
for op in put get exists batch-put batch-get batch-exists; do
    out=$(kv bench store --op=$op --size=64KiB --threads=2 --duration=1 --working-set=4MiB --batch=16 --json) ||
        fail "bench store --op=$op"
    echo "$out" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
for k in ("ops_per_s", "calls_per_s", "gb_per_s", "p50_us", "p99_us", "first_error"):
    assert k in d, k
assert d["ops"] > 0 and d["errors"] == 0 and d["first_error"] is None, d
assert d["ops"] == d["calls"] * (16 if d["op"].startswith("batch") else 1), d' || fail "bench store $op: $out"
done
[ -z "$(kv ls bench/)" ] || fail "bench left keys behind"
ok "bench store put/get/exists/batch-* --json (ops_per_s, p50_us, p99_us, errors), keys cleaned up"
# --count, --keep, --key-size, then --existing reads of exactly those keys; a missing key counts
# as an error and is named
out=$(kv bench store --op=batch-put --batch=64 --size=1 --count=1000 --keep --key-prefix=bk \
    --key-size=12 --duration=60 --json) || fail "bench store batch-put --count --keep: $out"
echo "$out" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); assert d["ops"] == 1000 and d["key_bytes"] == 12, d' ||
    fail "batch-put --count=1000: $out"
[ "$(kv ls bk/ | wc -l)" = 1000 ] || fail "batch-put --keep did not leave exactly 1000 keys"
kv bench store --op=batch-exists --batch=100 --existing=1000 --key-prefix=bk --key-size=12 --duration=0.3 \
    --json >/dev/null || fail "batch-exists --existing=1000"
rc=0
out=$(kv bench store --op=exists --existing=10 --first=1000 --key-prefix=bk --key-size=12 --duration=0.3 --json) || rc=$?
echo "$out" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); assert d["ops"] == 0 and d["errors"] > 0 and d["first_error"] == "not found", d' ||
    fail "exists of missing keys: $out"
[ $rc = 1 ] || fail "exists of missing keys exited $rc, want 1"
out=$(kv bench store --op=batch-exists --batch=4 --existing=10 --first=1000 --key-prefix=bk --key-size=12 \
    --max-errors=3 --duration=60 --json) || true
echo "$out" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); assert 3 <= d["errors"] <= 8 and d["duration_s"] < 30, d' ||
    fail "--max-errors=3 did not end the run at once: $out"
[ "$(kv ls bk/ | wc -l)" = 1000 ] || fail "--existing reads removed keys"
ok "bench store --count/--keep/--key-size/--existing/--max-errors; missing keys are errors, named"

# --- replay ---
TR=${KVSTASH_SOURCE_DIR:-.}/../shared/traces/conversation_trace.jsonl
if [ -f "$TR" ]; then
    head -n 400 "$TR" >"$W/slice.jsonl"
else
    "$PY" -c '
import json, random
r = random.Random(5)
for i in range(400):
    ids = list(range(r.randrange(0, 20))) + [1000 + i * 10 + k for k in range(r.randrange(1, 6))]
    print(json.dumps({"timestamp": i, "input_length": 512 * len(ids), "output_length": 1, "hash_ids": ids}))' >"$W/slice.jsonl"
fi
want=$("$PY" -c '
import json, sys
seen, hits, blocks = set(), 0, 0
for line in open(sys.argv[1]):
    ids = json.loads(line)["hash_ids"]
    h = 0
    while h < len(ids) and ids[h] in seen:
        h += 1
    hits += h
    blocks += len(ids)
    seen.update(ids)
print(hits, blocks)' "$W/slice.jsonl")
out=$(kv replay --trace "$W/slice.jsonl" --block-bytes 1KiB --get-hits --json) || fail "replay"
got=$(echo "$out" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
assert d["requests"] == 400 and d["put_failed"] == 0 and d["get_failed"] == 0, d
assert d["bytes_read"] == d["hit_blocks"] * 1024, d
print(d["hit_blocks"], d["blocks"])') || fail "replay output: $out"
[ "$got" = "$want" ] || fail "replay hit_blocks/blocks $got, want $want"
# --speed follows the timestamps (the slice spans 141 s of trace: ~0.15 s at 1000x)
out=$(kv replay --trace "$W/slice.jsonl" --block-bytes 1KiB --key-prefix sped --speed 1000 --json) ||
    fail "replay --speed"
echo "$out" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); assert d["requests"] == 400, d' ||
    fail "replay --speed output: $out"
printf '{"timestamp": 0, "hash_ids": [1]}\n\n{"timestamp": 1, "hash_ids": [1, "two"]}\n' >"$W/bad.jsonl"
set +e
kv replay --trace "$W/bad.jsonl" 2>"$W/err" >/dev/null
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "line 3" "$W/err" || fail "bad trace: exit $rc: $(cat "$W/err")"
ok "replay: hit_blocks/blocks = $got (exact prefix reuse), bad line named"
