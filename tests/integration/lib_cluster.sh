# shellcheck shell=bash
# The put/get load of the cluster fault tests (sourced by test_cluster_faults.sh and
# test_cluster_partition.sh; they define kv and W, and write the values $W/v0..).
# cluster_load MAXPUTS NVALUES: host 1 puts ld/I (replicas=2, value $W/v(I % NVALUES)) and reads
# back a random acknowledged key, comparing bytes. Acknowledged puts go to $W/acked ("key v"),
# failures to $W/put_fail and $W/get_fail, mismatches to $W/wrong. Bounded: MAXPUTS puts or
# 150 s, whichever first, or until $W/stop exists.
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
