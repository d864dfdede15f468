# shellcheck shell=bash
# lib_cluster.sh - what the cluster fault tests share (sourced by test_cluster_faults.sh and
# test_cluster_partition.sh right after they set CL (scripts/cluster), W (their work dir) and
# LOAD_PID=): fail (with the tail of every log of the cluster), ok, the clean-up on exit (stop
# the load, `cluster down`, remove W), the checks for root and network namespaces (these tests
# fail, they never skip), now/since/kv, and the put/get load.
fail() {
    echo "FAIL: $*" >&2
    local f
    for f in /tmp/kvstash-cluster-"$KVSTASH_CLUSTER_NAME"/logs/*.log "$W"/load.err; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
ok() { echo "ok - $*"; }
cleanup() {
    touch "$W/stop"
    [ -n "$LOAD_PID" ] && wait "$LOAD_PID" 2>/dev/null
    "$CL" down >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root for network namespaces (this test does not skip)"
ip netns list >/dev/null 2>&1 || fail "'ip netns' unavailable (this test does not skip)"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
kv() { "$CL" kv "$@"; }

# cluster_load MAXPUTS NVALUES: host 1 puts ld/I (replicas=2, value $W/v(I % NVALUES)) and reads
# back a random acknowledged key, comparing bytes. Acknowledged puts go to $W/acked ("key v"),
# failures to $W/put_fail and $W/get_fail, mismatches to $W/wrong. Bounded: MAXPUTS puts or
# 150 s, whichever first, or until $W/stop exists. The caller writes the values $W/v0...
cluster_load() {
    local max=$1 nv=$2 i=0 end=$((SECONDS + 150)) k v
    while [ ! -e "$W/stop" ] && [ $i -lt "$max" ] && [ $SECONDS -lt $end ]; do
        i=$((i + 1))
        v=$((i % nv))
        if kv 1 put --replicas 2 --timeout 3000 "ld/$i" "$W/v$v" >/dev/null 2>>"$W/load.err"; then
            echo "ld/$i $v" >>"$W/acked"
        else
            echo "ld/$i" >>"$W/put_fail"
        fi
        read -r k v < <(shuf -n 1 "$W/acked" 2>/dev/null || true)
        [ -n "${k:-}" ] || continue
        if kv 1 get --timeout 3000 "$k" "$W/load.out" 2>>"$W/load.err"; then
            cmp -s "$W/load.out" "$W/v$v" || echo "$k" >>"$W/wrong"
        else
            echo "$k" >>"$W/get_fail"
        fi
        sleep 0.05
    done
}
