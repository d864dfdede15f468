#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# store_scale.sh - kvstash store vs Redis for small values, batches, lookups under load, the
# master's memory per object, and (--scale) how put rate and lookup latency hold up as the index
# grows. A benchmark, not a test: it prints figures, ratios and goals; it exits non-zero only
# when something could not run or either side reported an error (then with a line "FAIL: ...").
#
# Sections (all measured in one run; the Redis figures come from the same run):
#   single   kvstash serve vs redis-server, 4 KiB and 64 KiB values, 1/4/16/64 clients:
#            put vs SET, get vs GET, exists vs EXISTS (ops/s, p50, p99, ratio, goal). C clients
#            are C connections with one request in flight each, driven from one thread on both
#            sides: redis-benchmark -c C, and `kvstash bench store --threads=1 --depth=C` (the
#            asynchronous client, kv_store_aio). --client-threads drives kvstash with C
#            blocking threads instead (one synchronous call each).
#   batch    batch-put / batch-get / batch-exists of 64 and 256 keys vs redis-benchmark
#            pipelined (-P) SET / GET / EXISTS at the same depth (objects/s), plus batch-put
#            256 x 4 KiB over --protocol=tcp
#   lookup   batch-exists of 1,024 keys, p50/p99, idle and while a put load runs
#   memory   bytes per object: 1M objects of 1 byte with 16-byte keys put in batches; RSS
#            growth of `kvstash serve`, and of a separate `kvstash master` (metad + master +
#            node as three processes): the master's own index cost per object
#   scale    (--scale only) fills a store in steps (250k, 1M, 4M, 10M objects of 1 byte) with
#            batch puts, printing the put rate per step and batch-exists p50/p99 per step
#   rebuild  (--scale only) metad + leader master + standby master + node as processes, filled
#            with --rebuild-objects (10M) objects of 1 byte: the leader's memory per object at
#            that size, /metrics and /api/v1/cluster latency, then the leader is killed (-9) and
#            the standby's time to take over and index every object from the node's report
#
# kvstash runs each case for --duration seconds (or until its object budget); Redis then runs
# exactly as many requests (same count). Only successful operations count; any error on either
# side (kvstash `errors` > 0, a Redis error reply, redis-benchmark failing) stops the run.
#
# Usage: bench/store_scale.sh [--quick] [--scale] [--only SECTION[,SECTION]] [--duration S]
#            [--sizes 4096,65536] [--clients 1,4,16,64] [--batch-clients N] [--objects N]
#            [--steps 250000,1000000,4000000,10000000] [--rebuild-objects N] [--bin PATH]
#            [--client-threads]
#   --quick    1 s per case, 1 and 4 clients, batches at 4 KiB only, 100k objects for memory,
#              scale steps 25k,100k,250k, 100k objects for rebuild: a smoke test of the script
#   --scale    run the scale and rebuild sections only (they need RAM: see their output)
# Env: KVSTASH_BIN (default: build/kvstash of this repo); KVSTASH_POLL_SPIN_US (default 50)
# applies to kvstash serve and the kvstash clients alike (0: neither polls before it sleeps, as
# Redis does not); KVSTASH_BENCH_KEEP=1 keeps the daemons' logs. Needs redis-server,
# redis-benchmark, redis-cli, python3. Everything it starts is stopped on exit; ports are chosen
# free at run time; only 127.0.0.1 is used.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${KVSTASH_BIN:-$HERE/../build/kvstash}
ARGS=("$@")
QUICK=0
SCALE=0
ONLY=""
DURATION=""
SIZES=""
CLIENTS=""
CTHREADS=0
BCLIENTS=4
OBJECTS=""
STEPS=""
ROBJECTS=""
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1; shift ;;
    --scale) SCALE=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --client-threads) CTHREADS=1; shift ;;
    --batch-clients) BCLIENTS=$2; shift 2 ;;
    --objects) OBJECTS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --rebuild-objects) ROBJECTS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h | --help) sed -n '3,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "store_scale.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ $QUICK = 1 ]; then
    : "${DURATION:=1}" "${SIZES:=4096,65536}" "${CLIENTS:=1,4}" "${OBJECTS:=100000}"
    : "${STEPS:=25000,100000,250000}" "${ROBJECTS:=100000}"
    BSIZES=4096
else
    : "${DURATION:=5}" "${SIZES:=4096,65536}" "${CLIENTS:=1,4,16,64}" "${OBJECTS:=1000000}"
    : "${STEPS:=250000,1000000,4000000,10000000}" "${ROBJECTS:=10000000}"
    BSIZES=$SIZES
fi
if [ -z "$ONLY" ]; then
    if [ $SCALE = 1 ]; then ONLY=scale,rebuild; else ONLY=single,batch,lookup,memory; fi
fi
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
die() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$BIN" ] || { echo "store_scale.sh: no kvstash binary at $BIN (set KVSTASH_BIN or --bin)" >&2; exit 2; }
# Debian's interpreter, by path: the python3 first on PATH may be another one (a shim that
# forks a shell per call, which a polling loop pays on every round)
PY=/usr/bin/python3
[ -x "$PY" ] || { echo "store_scale.sh: $PY not found (apt-get install python3)" >&2; exit 2; }
for t in redis-server redis-benchmark redis-cli awk; do
    command -v $t >/dev/null || { echo "store_scale.sh: $t not found" >&2; exit 2; }
done

W=$(mktemp -d /tmp/kvstash-store-scale.XXXXXX)
declare -A PIDS=() # name -> pid of what this script started
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KVSTASH_BENCH_KEEP:-0}" = 1 ]; then echo "logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # NAME CMD...: in the background, output to $W/NAME.log
    local name=$1
    shift
    "$@" >"$W/$name.log" 2>&1 &
    PIDS[$name]=$!
}
stop() { # NAME: SIGTERM, wait
    local p=${PIDS[$1]:-}
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PIDS[$1]"
}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # SECONDS CMD...
    local end=$((SECONDS + $1))
    shift
    while [ $SECONDS -lt $end ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
logtail() { echo "--- $W/$1.log (last lines)" >&2; tail -n 25 "$W/$1.log" >&2 || true; }
# rss PID FIELD: a /proc/PID/status field in bytes (VmRSS, RssAnon, RssShmem)
rss() { awk -v f="$2:" '$1 == f { printf "%.0f\n", $2 * 1024 }' "/proc/$1/status"; }
# cpu_s PID: user + system CPU seconds PID has used so far
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
mem_avail() { awk '$1 == "MemAvailable:" { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }

# --- kvstash ---------------------------------------------------------------------------------
SEQ=0
MASTER=""
# start_serve CAPACITY: a fresh `kvstash serve` (embedded metadata, master, one node) on free
# ports; returns once the store accepts a put (the node has mounted), sets MASTER.
start_serve() {
    SEQ=$((SEQ + 1))
    local mp ap dp
    mp=$(free_port) ap=$(free_port) dp=$(free_port)
    start serve "$BIN" serve --capacity "$1" --master-addr "127.0.0.1:$mp" --admin-addr "127.0.0.1:$ap" \
        --metadata-addr "127.0.0.1:$dp" --segment "scale-$$-$SEQ"
    MASTER=127.0.0.1:$mp
    ready_put || { logtail serve; die "kvstash serve (capacity $1) did not accept a put within 60 s"; }
}
# ready_put: polls a tiny put until the store accepts it ("no space left" or "connection
# refused" right after start mean the node has not mounted yet), then removes it.
ready_put() {
    local end=$((SECONDS + 60)) i=0
    while [ $SECONDS -lt $end ]; do
        # a fresh key per attempt: an attempt that timed out may leave its key pending a while
        i=$((i + 1))
        if echo x | "$BIN" put --master "$MASTER" --log-level error --timeout 5000 "ready-probe-$i" - >"$W/probe.log" 2>&1; then
            "$BIN" rm --master "$MASTER" --log-level error "ready-probe-$i" >/dev/null 2>&1 || true
            return 0
        fi
        sleep 0.2
    done
    echo "the last probe put said: $(tail -n 1 "$W/probe.log")" >&2
    return 1
}
# kv NAME ARGS...: one `kvstash bench store --json` run against $MASTER (ending at its first
# error); prints "ops ops_per_s p50_us p99_us"; stops the whole run if it failed or reported any
# error, with the daemons' last log lines.
kv() {
    local name=$1
    shift
    local rc=0
    "$BIN" bench store --master "$MASTER" --log-level error --json --max-errors=1 "$@" >"$W/kv-$name.json" \
        2>"$W/kv-$name.err" || rc=$?
    "$PY" - "$W/kv-$name.json" "$rc" "$name" "$W/kv-$name.err" <<'EOF' && return 0
import json, sys
path, rc, name, err = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    d = json.load(open(path))
except Exception:
    d = None
why = open(err).read().strip().splitlines()
if d is None or rc != 0 or d.get("errors", 1) != 0:
    first = (d or {}).get("first_error") or (why[-1] if why else "no output")
    n = (d or {}).get("errors", "?")
    print("FAIL: kvstash bench store %s: exit %d, %s errors, first: %s" % (name, rc, n, first), file=sys.stderr)
    sys.exit(1)
print("%d %.1f %.0f %.0f" % (d["ops"], d["ops_per_s"], d["p50_us"], d["p99_us"]))
EOF
    local p
    for p in serve master node; do [ -z "${PIDS[$p]:-}" ] || logtail $p; done
    exit 1
}
kv_args_line() { echo "$BIN bench store --master H:P $*"; }

# --- Redis -----------------------------------------------------------------------------------
RP=""
start_redis() {
    RP=$(free_port)
    start redis redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --protected-mode yes \
        --dir "$W"
    wait_for 10 redis-cli -p "$RP" ping || { logtail redis; die "redis-server did not start"; }
}
redis_errors() { redis-cli -p "$RP" info stats | awk -F: '$1 == "total_error_replies" { print $2 + 0 }'; }
# rb NAME N ARGS...: redis-benchmark -n N --csv ARGS; prints "rps p50_us p99_us" of its one
# test; stops the run on a failure or any error reply.
rb() {
    local name=$1 n=$2
    shift 2
    local e0 e1 rc=0
    e0=$(redis_errors)
    redis-benchmark -h 127.0.0.1 -p "$RP" -n "$n" --csv "$@" >"$W/rb-$name.csv" 2>"$W/rb-$name.err" || rc=$?
    e1=$(redis_errors)
    if [ $rc != 0 ] || [ "$e1" != "$e0" ] || grep -qi 'error' "$W/rb-$name.err" "$W/rb-$name.csv"; then
        die "redis-benchmark $name: exit $rc, $((e1 - e0)) error replies: $(grep -hi error "$W/rb-$name.err" "$W/rb-$name.csv" | head -n 1)"
    fi
    "$PY" - "$W/rb-$name.csv" "$name" <<'EOF' || exit 1
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0] != "test"]
if len(rows) != 1:
    print("FAIL: redis-benchmark %s: expected one result line, got %d" % (sys.argv[2], len(rows)), file=sys.stderr)
    sys.exit(1)
r = rows[0]
print("%s %.0f %.0f" % (r[1], float(r[4]) * 1000, float(r[6]) * 1000))
EOF
}
# fill_redis KEYS SIZE: SET key:%012d (the names redis-benchmark's __rand_int__ makes) for
# 0..KEYS-1 with SIZE-byte values, through redis-cli --pipe.
fill_redis() {
    redis-cli -p "$RP" flushall >/dev/null
    "$PY" - "$1" "$2" <<'EOF' | redis-cli -p "$RP" --pipe >"$W/fill.log" 2>&1 || { cat "$W/fill.log" >&2; die "filling redis"; }
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
v = b"x" * size
out = sys.stdout.buffer
for i in range(n):
    k = b"key:%012d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, size, v))
EOF
    grep -q 'errors: 0' "$W/fill.log" || { cat "$W/fill.log" >&2; die "filling redis: error replies"; }
}
# working-set keys of `kvstash bench store` reads at the default --working-set (64 MiB): the
# Redis keyspace (-r) uses the same number of keys
wkeys() { # SIZE THREADS BATCH
    "$PY" -c 'import sys; s, t, b = (int(x) for x in sys.argv[1:]); print(min(65536, max(t * b, b, (64 << 20) // max(s, 1))))' "$1" "$2" "$3"
}

# --- report helpers --------------------------------------------------------------------------
verdict() { # VALUE OP GOAL -> met|MISSED
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { ok = (op == ">=") ? (v >= g) : (v <= g); print ok ? "met" : "MISSED" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
hr() { printf '%s\n' "-----------------------------------------------------------------------------------------------------------"; }

echo "kvstash store vs Redis: small values, batches, lookups under load, memory per object"
echo "reproduce: KVSTASH_BIN=$BIN $0 ${ARGS[*]}"
echo "host: $(nproc) cores, $(awk '$1 == "MemTotal:" { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo); $(uname -sr)"
echo "$("$BIN" --version 2>/dev/null | head -n 1); $(redis-server --version | awk '{ print $1, $2, $3 }')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kvstash: $DURATION s per case, protocol auto (shm on this host) unless noted; Redis: the same number of requests"
echo "kvstash polls up to ${KVSTASH_POLL_SPIN_US:-50} us for a request or an answer before a thread sleeps (server and client; KVSTASH_POLL_SPIN_US); Redis never polls"
echo

# ============================== single-key operations =========================================
if want single; then
    start_redis
    echo "== single-key operations: kvstash put/get/exists vs Redis SET/GET/EXISTS =="
    printf '%-24s %11s %6s %6s   %-7s %11s %6s %6s %7s %7s  %s\n' case "kv ops/s" p50us p99us redis "ops/s" p50us p99us ratio goal verdict
    hr
    declare -A PUT1=() PUT4=() PUTP99=()
    IFS=, read -r -a sizes <<<"$SIZES"
    IFS=, read -r -a clients <<<"$CLIENTS"
    for size in "${sizes[@]}"; do
        for c in "${clients[@]}"; do
            keys=$(wkeys "$size" "$c" 1)
            fill_redis "$keys" "$size"
            # a fresh store per size and client count: put keeps what it writes (no removes
            # inside the measured time), at most `budget` objects (70% of the capacity)
            scap=$((2 * 1024 * 1024 * 1024))
            [ $QUICK = 1 ] && scap=$((1024 * 1024 * 1024))
            budget=$((scap * 7 / 10 / size))
            start_serve "$scap"
            for op in put get exists; do
                case $op in
                put) cmd=SET; goal=""; [ "$c" = 4 ] || [ "$c" = 16 ] && goal=1.0 ;;
                get) cmd=GET; goal=1.5 ;;
                exists) cmd=EXISTS; goal=1.0 ;;
                esac
                extra=()
                [ $op = put ] && extra=(--keep --count="$budget")
                if [ $CTHREADS = 1 ]; then extra+=(--threads="$c"); else extra+=(--threads=1 --depth="$c"); fi
                read -r n kops kp50 kp99 < <(kv "$op-$size-$c" --op=$op --size="$size" \
                    --duration="$DURATION" "${extra[@]}") || exit 1
                [ -n "${kops:-}" ] || exit 1
                case $op in
                put) rargs=(-t set -d "$size" -c "$c" -r "$keys") ;;
                get) rargs=(-t get -d "$size" -c "$c" -r "$keys") ;;
                exists) rargs=(-c "$c" -r "$keys" exists 'key:__rand_int__') ;;
                esac
                read -r rops rp50 rp99 < <(rb "$op-$size-$c" "$n" "${rargs[@]}") || exit 1
                [ -n "${rops:-}" ] || exit 1
                q=$(ratio "$kops" "$rops")
                v="-"
                [ -n "$goal" ] && v=$(verdict "$q" ">=" "$goal")
                printf '%-24s %11.0f %6d %6d   %-7s %11.0f %6d %6d %6sx %7s  %s\n' "$op ${size}B c=$c" "$kops" "$kp50" "$kp99" \
                    "$cmd" "$rops" "$rp50" "$rp99" "$q" "${goal:+>=${goal}x}" "$v"
                if [ $op = put ]; then
                    [ "$c" = 1 ] && PUT1[$size]=$kops
                    [ "$c" = 4 ] && PUT4[$size]=$kops && PUTP99[$size]=$kp99
                fi
            done
            stop serve
        done
    done
    hr
    for size in "${sizes[@]}"; do
        if [ -n "${PUT1[$size]:-}" ] && [ -n "${PUT4[$size]:-}" ]; then
            q=$(ratio "${PUT4[$size]}" "${PUT1[$size]}")
            printf '%-58s %6sx  goal >=1.5x  %s\n' "put ${size}B: ops/s at 4 clients / at 1 client" "$q" "$(verdict "$q" ">=" 1.5)"
        fi
        if [ -n "${PUTP99[$size]:-}" ]; then
            printf '%-58s %6d us goal <=1000 us %s\n' "put ${size}B: p99 at 4 clients" "${PUTP99[$size]}" "$(verdict "${PUTP99[$size]}" "<=" 1000)"
        fi
    done
    if [ $CTHREADS = 1 ]; then cm="--threads=C"; else cm="--threads=1 --depth=C"; fi
    echo "kvstash: $(kv_args_line "--op=put|get|exists --size=SIZE $cm --duration=$DURATION [put: --keep --count=N]")"
    echo "redis:   redis-benchmark -n <kvstash's op count> -c C -r <working-set keys> -t set|get -d SIZE  /  ... exists key:__rand_int__"
    echo "put writes fresh keys and keeps them (N = 70% of the capacity in objects; the case ends at N or after $DURATION s);"
    echo "get and exists pick random keys of a 64 MiB working set written first (Redis: the same keys, filled first)."
    echo
fi

# ============================== batches ========================================================
if want batch; then
    [ -n "$RP" ] || start_redis
    echo "== batches: one kvstash batch call of D keys vs Redis pipelined at depth D (-P D), $BCLIENTS clients each =="
    printf '%-30s %11s %7s %7s   %-7s %11s %7s %7s %7s  %s\n' case "kv obj/s" p50us p99us redis "obj/s" p50us p99us ratio goal
    hr
    IFS=, read -r -a bsizes <<<"$BSIZES"
    for size in "${bsizes[@]}"; do
        # capacity for the kept objects of a batch-put (bounded by --count below) plus reads
        cap=$((2 * 1024 * 1024 * 1024))
        [ $QUICK = 1 ] && cap=$((1024 * 1024 * 1024))
        budget=$((cap * 7 / 10 / size))
        for depth in 64 256; do
            keys=$(wkeys "$size" "$BCLIENTS" "$depth")
            for op in batch-put batch-get batch-exists; do
                case $op in
                batch-put) cmd=SET; rargs=(-t set -d "$size") ;;
                batch-get) cmd=GET; rargs=(-t get -d "$size") ;;
                batch-exists) cmd=EXISTS; rargs=(exists 'key:__rand_int__') ;;
                esac
                # a fresh store per case: batch-put keeps what it writes (no removes inside the
                # measured time), at most `budget` objects
                start_serve "$cap"
                extra=()
                [ $op = batch-put ] && extra=(--keep --count="$budget")
                read -r n kops kp50 kp99 < <(kv "$op-$size-$depth" --op=$op --batch="$depth" --size="$size" \
                    --threads="$BCLIENTS" --duration="$DURATION" "${extra[@]}") || exit 1
                [ -n "${kops:-}" ] || exit 1
                stop serve
                if [ $op = batch-put ]; then
                    redis-cli -p "$RP" flushall >/dev/null
                    rk=$n # about as many distinct objects as kvstash kept
                else
                    fill_redis "$keys" "$size"
                    rk=$keys
                fi
                read -r rops rp50 rp99 < <(rb "$op-$size-$depth" "$n" -c "$BCLIENTS" -P "$depth" -r "$rk" "${rargs[@]}") || exit 1
                [ -n "${rops:-}" ] || exit 1
                q=$(ratio "$kops" "$rops")
                g=""
                v=""
                if [ $op = batch-put ] && [ "$size" = 4096 ] && [ $depth = 256 ]; then
                    g=">=200k obj/s"
                    v=$(verdict "$kops" ">=" 200000)
                fi
                printf '%-30s %11.0f %7d %7d   %-7s %11.0f %7d %7d %6sx  %s %s\n' "$op ${depth}x${size}B" "$kops" "$kp50" "$kp99" \
                    "$cmd -P$depth" "$rops" "$rp50" "$rp99" "$q" "$g" "$v"
                if [ $op = batch-put ] && [ "$size" = 4096 ] && [ $depth = 256 ]; then
                    start_serve "$cap"
                    read -r _ tops tp50 tp99 < <(kv "$op-$size-$depth-tcp" --protocol=tcp --op=$op --batch="$depth" \
                        --size="$size" --threads="$BCLIENTS" --duration="$DURATION" "${extra[@]}") || exit 1
                    [ -n "${tops:-}" ] || exit 1
                    stop serve
                    printf '%-30s %11.0f %7d %7d   %-7s %11.0f %7d %7d %6sx  %s\n' "$op ${depth}x${size}B tcp" "$tops" "$tp50" "$tp99" \
                        "$cmd -P$depth" "$rops" "$rp50" "$rp99" "$(ratio "$tops" "$rops")" "(printed, no goal)"
                fi
            done
        done
    done
    hr
    echo "obj/s = objects (keys) per second; kvstash p50/p99 = latency of one batch call; Redis p50/p99 as redis-benchmark reports"
    echo "them with -P (time from sending a pipeline to each reply). Each kvstash case runs on a fresh serve."
    echo "kvstash: $(kv_args_line "--op=batch-put|batch-get|batch-exists --batch=D --size=SIZE --threads=$BCLIENTS --duration=$DURATION [--keep --count=N] [--protocol=tcp]")"
    echo "redis:   redis-benchmark -n <kvstash's object count> -c $BCLIENTS -P D -r KEYS -t set|get -d SIZE  /  ... exists key:__rand_int__"
    echo
fi
[ -z "$RP" ] || stop redis

# ============================== lookups under a put load =======================================
if want lookup; then
    echo "== batch-exists of 1,024 keys: latency idle and while a put load runs (4 KiB puts, 2 threads) =="
    start_serve 1GiB
    read -r _ iops ip50 ip99 < <(kv lookup-idle --op=batch-exists --batch=1024 --threads=1 --size=4KiB \
        --duration="$DURATION" --key-prefix="look-$$") || exit 1
    [ -n "${iops:-}" ] || exit 1
    # the put load runs longer than the lookups, on its own key space. Twice: its client at
    # nice 10 (as engines on other hosts: on a 2-CPU host the load generator's own threads,
    # which format keys and copy 4 KiB per put, otherwise take the CPU from the lookup's client
    # and the server), then at the same priority as everything else. The put rates printed
    # show the master gets the same load both times.
    loadd=$(calc "%.1f" "$DURATION + 2")
    loaded() { # NICE TAG -> "keys/s p50 p99 put-ops/s put-p50 put-p99"
        nice -n "$1" "$BIN" bench store --master "$MASTER" --log-level error --json --max-errors=1 --op=put --size=4KiB \
            --threads=2 --duration="$loadd" --key-prefix="load$2-$$" >"$W/kv-load$2.json" 2>"$W/kv-load$2.err" &
        PIDS[load]=$!
        sleep 0.5
        local lops lp50 lp99 lrc=0 pops pp50 pp99
        read -r _ lops lp50 lp99 < <(kv "lookup-loaded$2" --op=batch-exists --batch=1024 --threads=1 --size=4KiB \
            --duration="$DURATION" --key-prefix="look$2-$$") || exit 1
        [ -n "${lops:-}" ] || exit 1
        wait "${PIDS[load]}" || lrc=$?
        unset "PIDS[load]"
        read -r _ pops pp50 pp99 < <("$PY" - "$W/kv-load$2.json" "$lrc" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    d = {}
if int(sys.argv[2]) != 0 or d.get("errors", 1) != 0:
    print("FAIL: the put load: exit %s, %s errors, first: %s" % (sys.argv[2], d.get("errors", "?"), d.get("first_error")), file=sys.stderr)
    sys.exit(1)
print("%d %.1f %.0f %.0f" % (d["ops"], d["ops_per_s"], d["p50_us"], d["p99_us"]))
EOF
        ) || exit 1
        [ -n "${pops:-}" ] || exit 1
        echo "$lops $lp50 $lp99 $pops $pp50 $pp99"
    }
    read -r lops lp50 lp99 pops pp50 pp99 < <(loaded 10 n) || exit 1
    [ -n "${pp99:-}" ] || exit 1
    read -r eops ep50 ep99 qops qp50 qp99 < <(loaded 0 e) || exit 1
    [ -n "${qp99:-}" ] || exit 1
    printf '%-40s %12s %8s %8s  %s\n' case "keys/s" p50us p99us goal
    hr
    printf '%-40s %12.0f %8d %8d\n' "batch-exists 1024, idle" "$iops" "$ip50" "$ip99"
    printf '%-40s %12.0f %8d %8d  p99 <=500 us %s\n' "batch-exists 1024, put load at nice 10" "$lops" "$lp50" "$lp99" "$(verdict "$lp99" "<=" 500)"
    printf '%-40s %12.0f %8d %8d  (the load: ops/s, p50, p99 of one put)\n' "  put 4 KiB x 2 threads, nice 10" "$pops" "$pp50" "$pp99"
    printf '%-40s %12.0f %8d %8d  p99 <=500 us %s\n' "batch-exists 1024, put load at nice 0" "$eops" "$ep50" "$ep99" "$(verdict "$ep99" "<=" 500)"
    printf '%-40s %12.0f %8d %8d  (the load: ops/s, p50, p99 of one put)\n' "  put 4 KiB x 2 threads, nice 0" "$qops" "$qp50" "$qp99"
    hr
    echo "kvstash: $(kv_args_line "--op=batch-exists --batch=1024 --threads=1 --duration=$DURATION --key-prefix=P")"
    echo "load:    nice -n 10|0 $(kv_args_line "--op=put --size=4KiB --threads=2 --duration=$loadd --key-prefix=Q")"
    echo
    stop serve
fi

# ============================== memory per object =============================================
GRAN=$(awk '$2 == "KV_SEGALLOC_GRAN" { gsub("u", "", $3); print $3 }' "$HERE/../src/store/alloc_seg.h" 2>/dev/null || true)
: "${GRAN:=256}"
KEYLEN=16
if want memory; then
    echo "== memory per object: $OBJECTS objects of 1 byte, ${KEYLEN}-byte keys, batch puts of 256 =="
    # capacity: one minimum allocation per object, below the 95% eviction watermark, plus room
    mcap=$((OBJECTS * GRAN * 100 / 85 + 64 * 1024 * 1024))
    fill_args=(--op=batch-put --batch=256 --size=1 --threads=2 --count="$OBJECTS" --keep --key-prefix=m
        --key-size="$KEYLEN" --duration=86400)
    # (a) kvstash serve: one process (metadata + master + node); its segment is prefaulted, so
    # the RSS growth is the index and bookkeeping, not the segment
    start_serve "$mcap"
    sp=${PIDS[serve]}
    sleep 1
    s0=$(rss "$sp" VmRSS)
    read -r _ srate _ _ < <(kv mem-serve "${fill_args[@]}") || exit 1
    [ -n "${srate:-}" ] || exit 1
    sleep 1
    s1=$(rss "$sp" VmRSS)
    used=$("$BIN" stat --master "$MASTER" --json --log-level error | "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(d["used"], d["objects"])')
    read -r sused sobj <<<"$used"
    [ "$sobj" = "$OBJECTS" ] || die "serve holds $sobj objects after putting $OBJECTS"
    stop serve
    # (b) metad + master + node as separate processes: the master's own growth
    start metad "$BIN" metad --addr 127.0.0.1:0
    wait_for 10 grep -q 'listening on http' "$W/metad.log" || { logtail metad; die "metad did not start"; }
    meta=http://127.0.0.1:$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://')/metadata
    MASTER=127.0.0.1:$(free_port)
    start master "$BIN" master --metadata="$meta" --cluster "scale$$" --rpc-addr "$MASTER" \
        --admin-addr "127.0.0.1:$(free_port)" --log-level warn
    start node "$BIN" node --metadata="$meta" --cluster "scale$$" --capacity "$mcap" --node-id "scale-$$" --log-level warn
    ready_put || { logtail master; logtail node; die "metad + master + node did not accept a put within 60 s"; }
    mp=${PIDS[master]} np=${PIDS[node]}
    sleep 1
    m0=$(rss "$mp" VmRSS)
    n0=$(rss "$np" RssAnon)
    read -r _ mrate _ _ < <(kv mem-master "${fill_args[@]}") || exit 1
    [ -n "${mrate:-}" ] || exit 1
    sleep 1
    m1=$(rss "$mp" VmRSS)
    n1=$(rss "$np" RssAnon)
    stop node
    stop master
    stop metad
    printf '%-44s %12s %10s %10s %8s %14s  %s\n' process "RSS growth" "B/object" "- key" "= rest" "segment B/obj" goal
    hr
    "$PY" - "$OBJECTS" "$KEYLEN" "$GRAN" "$s0" "$s1" "$m0" "$m1" "$n0" "$n1" "$sused" <<'EOF'
import sys
n, key, gran, s0, s1, m0, m1, n0, n1, used = (int(x) for x in sys.argv[1:])
seg = used / n
def row(name, d, goal=None):
    per = d / n
    rest = per - key
    g = ""
    if goal is not None:
        g = "rest <=%d B  %s" % (goal, "met" if rest <= goal else "MISSED")
    print("%-44s %12s %10.1f %10d %8.1f %14.1f  %s" % (name, "%.1f MiB" % (d / 1048576), per, key, rest, seg, g))
row("kvstash serve (master+node+metadata)", s1 - s0)
row("kvstash master alone (separate process)", m1 - m0, 150)
row("kvstash node alone (anonymous memory)", n1 - n0)
print("-" * 107)
print("B/object = RSS growth / objects; rest = B/object - key bytes: the index's own cost per object.")
print("segment B/obj = the node's space per object (the master's used bytes / objects; the minimum")
print("allocation is %d bytes, KV_SEGALLOC_GRAN in src/store/alloc_seg.h). The segment is prefaulted" % gran)
print("at start, so it is resident before the puts and not part of the growth: the node's memory for")
print("these objects is B/object + segment B/obj. The goal (<= 150 bytes per object beyond the key)")
print("is the master's figure.")
EOF
    echo "fill rates: serve $(calc "%.0f" "$srate") obj/s, separate master $(calc "%.0f" "$mrate") obj/s"
    echo "fill: $BIN bench store --master M ${fill_args[*]}"
    echo
fi

# ============================== scale =========================================================
if want scale; then
    IFS=, read -r -a steps <<<"$STEPS"
    last=${steps[${#steps[@]} - 1]}
    echo "== scale: fill in steps of 1-byte objects (${KEYLEN}-byte keys, batch puts of 256, 2 threads); lookups per step =="
    # capacity: every object takes one minimum allocation; stay below the 95% high watermark
    perobj_seg=$((GRAN * 100 / 90))
    # RAM per object: the segment share plus the index (assume 1 KiB until measured)
    est_index=1024
    avail=$(mem_avail)
    reserve=$((2 * 1024 * 1024 * 1024))
    fit=$(((avail - reserve) / (perobj_seg + est_index)))
    target=$last
    if [ "$fit" -lt "$last" ]; then
        target=$fit
        echo "note: $last objects need ~$(calc "%.1f" "$last * ($perobj_seg + $est_index) / 1073741824") GiB (segment $(calc "%.1f" "$last * $perobj_seg / 1073741824") GiB + index, estimated $est_index B/object);"
        echo "      MemAvailable is $(calc "%.1f" "$avail / 1073741824") GiB (keeping 2 GiB free): the segment is sized for $fit objects; steps beyond are skipped"
    fi
    scap=$((target * perobj_seg + 64 * 1024 * 1024))
    echo "serve --capacity $scap ($(calc "%.2f" "$scap / 1073741824") GiB); MemAvailable $(calc "%.1f" "$avail / 1073741824") GiB"
    start_serve "$scap"
    sp=${PIDS[serve]}
    r0=$(rss "$sp" VmRSS)
    printf '%12s %14s %8s %12s %9s %9s %9s %12s %10s  %s\n' objects "put obj/s" "vs 1st" "exists k/s" p50us p99us "vs 1st" "serve RSS" "B/obj" goal
    hr
    cur=0
    first_rate=""
    first_p99=""
    for st in "${steps[@]}"; do
        if [ "$st" -gt "$target" ]; then
            printf '%12d  skipped: does not fit (see the note above)\n' "$st"
            continue
        fi
        # check the RAM the next step needs at the growth measured so far
        if [ "$cur" -gt 0 ]; then
            r=$(rss "$sp" VmRSS)
            per=$(((r - r0) / cur))
            need=$(((st - cur) * (per > 0 ? per : est_index)))
            avail=$(mem_avail)
            if [ "$need" -gt $((avail - reserve)) ]; then
                printf '%12d  skipped: needs ~%s GiB more at %d B/object measured so far, MemAvailable %s GiB\n' "$st" \
                    "$(calc "%.1f" "$need / 1073741824")" "$per" "$(calc "%.1f" "$avail / 1073741824")"
                break
            fi
        fi
        read -r _ prate _ _ < <(kv "scale-put-$st" --op=batch-put --batch=256 --size=1 --threads=2 --first="$cur" \
            --count=$((st - cur)) --keep --key-prefix=z --key-size=$KEYLEN --duration=86400) || exit 1
        [ -n "${prate:-}" ] || exit 1
        cur=$st
        read -r _ eops ep50 ep99 < <(kv "scale-exists-$st" --op=batch-exists --batch=1024 --threads=1 --existing="$cur" \
            --key-prefix=z --key-size=$KEYLEN --duration="$DURATION") || exit 1
        [ -n "${eops:-}" ] || exit 1
        r=$(rss "$sp" VmRSS)
        : "${first_rate:=$prate}" "${first_p99:=$ep99}"
        qr=$(ratio "$prate" "$first_rate")
        ql=$(ratio "$ep99" "$first_p99")
        g=""
        if [ "$st" -ge 4000000 ]; then g="put >=0.80x of 1st: $(verdict "$qr" ">=" 0.8)"; fi
        printf '%12d %14.0f %7sx %12.0f %9d %9d %8sx %9.0f MiB %10.0f  %s\n' "$st" "$prate" "$qr" "$(calc "%.1f" "$eops / 1000")" "$ep50" "$ep99" "$ql" \
            "$(calc "%.1f" "$r / 1048576")" "$(calc "%.1f" "($r - $r0) / $cur")" "$g"
    done
    hr
    echo "put obj/s = rate of the batch puts that filled this step (from the previous step's count);"
    echo "exists = batch-exists of 1,024 random existing keys, one thread, $DURATION s: keys/s, p50/p99 per call;"
    echo "vs 1st = against the first step (goals: put rate from 4M objects within 20% of the first step's;"
    echo "lookup latency flat); B/obj = serve's RSS growth since start / objects (index, not the prefaulted segment)."
    echo "fill: $BIN bench store --master M --op=batch-put --batch=256 --size=1 --threads=2 --first=PREV --count=STEP-PREV --keep --key-prefix=z --key-size=$KEYLEN"
    echo "look: $BIN bench store --master M --op=batch-exists --batch=1024 --existing=STEP --key-prefix=z --key-size=$KEYLEN --duration=$DURATION"
    echo
    stop serve
fi

# ============================== rebuild at size ================================================
# http_ms URL: the slowest of 5 GETs of URL in ms (stops the run on a non-200)
http_ms() {
    local i t worst=0 code
    for i in 1 2 3 4 5; do
        read -r code t < <(curl -s -o /dev/null -m 30 -w '%{http_code} %{time_total}\n' "$1") || true
        [ "$code" = 200 ] || die "GET $1 answered ${code:-nothing}"
        worst=$(awk -v a="$worst" -v b="$t" 'BEGIN { b *= 1000; print (b > a) ? b : a }')
    done
    printf '%.1f' "$worst"
}
# cluster_field ADMIN FIELD: a field of ADMIN's /api/v1/cluster ("" when it does not answer)
cluster_field() {
    curl -s -m 5 "http://$1/api/v1/cluster" 2>/dev/null |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$2" 2>/dev/null || true
}
is_leader() { [ "$(cluster_field "$1" leader)" = "$2" ]; } # ADMIN True|False
if want rebuild; then
    N=$ROBJECTS
    echo "== rebuild: $N objects of 1 byte (${KEYLEN}-byte keys) in a leader master; kill -9 it; a standby takes over =="
    rcap=$((N * GRAN * 100 / 85 + 64 * 1024 * 1024))
    # RAM: the node's segment and index, two masters' indexes (1 KiB per object, generously)
    need=$((rcap + N * 1024))
    avail=$(mem_avail)
    [ "$need" -lt "$avail" ] || die "rebuild of $N objects needs ~$(calc "%.1f" "$need / 1073741824") GiB, MemAvailable is $(calc "%.1f" "$avail / 1073741824") GiB (use --rebuild-objects)"
    start metad "$BIN" metad --addr 127.0.0.1:0
    wait_for 10 grep -q 'listening on http' "$W/metad.log" || { logtail metad; die "metad did not start"; }
    meta=http://127.0.0.1:$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$W/metad.log" | sed 's/.*://')/metadata
    A_RPC=127.0.0.1:$(free_port) A_ADM=127.0.0.1:$(free_port)
    B_RPC=127.0.0.1:$(free_port) B_ADM=127.0.0.1:$(free_port)
    start master "$BIN" master --metadata="$meta" --cluster "rb$$" --rpc-addr "$A_RPC" --admin-addr "$A_ADM" \
        --id "rb-a-$$" --log-level info
    wait_for 20 is_leader "$A_ADM" True || { logtail master; die "master A did not lead"; }
    start node "$BIN" node --metadata="$meta" --cluster "rb$$" --capacity "$rcap" --node-id "rb-$$" --log-level info
    MASTER=$A_RPC
    ready_put || { logtail master; logtail node; die "metad + master + node did not accept a put within 60 s"; }
    ap=${PIDS[master]}
    sleep 1
    a0=$(rss "$ap" VmRSS)
    read -r _ frate _ _ < <(kv rebuild-fill --op=batch-put --batch=256 --size=1 --threads=2 --count="$N" --keep \
        --key-prefix=r --key-size=$KEYLEN --duration=86400) || exit 1
    [ -n "${frate:-}" ] || exit 1
    sleep 1
    a1=$(rss "$ap" VmRSS)
    n_a=$(cluster_field "$A_ADM" objects)
    [ "$n_a" = "$N" ] || die "the leader holds ${n_a:-?} objects after putting $N"
    am=$(http_ms "http://$A_ADM/metrics")
    ac=$(http_ms "http://$A_ADM/api/v1/cluster")
    # the standby
    start standby "$BIN" master --metadata="$meta" --cluster "rb$$" --rpc-addr "$B_RPC" --admin-addr "$B_ADM" \
        --id "rb-b-$$" --log-level info
    wait_for 20 is_leader "$B_ADM" False || { logtail standby; die "the standby did not start"; }
    bp=${PIDS[standby]}
    sleep 1
    b0=$(rss "$bp" VmRSS)
    np=${PIDS[node]}
    bc0=$(cpu_s "$bp") nc0=$(cpu_s "$np")
    kill -9 "$ap"
    wait "$ap" 2>/dev/null || true
    unset "PIDS[master]"
    k0=$(date +%s.%N)
    # one poller for the whole wait (a curl and an interpreter per round would take a good part
    # of a CPU from the rebuild it times on a small host): every 50 ms, until the standby leads
    # and has indexed all N objects; prints the two times from the kill, "- -" after 300 s
    read -r tl tn < <("$PY" - "http://$B_ADM/api/v1/cluster" "$N" "$k0" <<'EOF'
import json, sys, time, urllib.request
url, n, k0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
get = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # loopback: no proxy
tl = None
while time.time() - k0 <= 300:
    try:
        d = json.load(get(url, timeout=5))
    except Exception:
        d = {}
    now = time.time() - k0
    if tl is None and d.get("leader") is True:
        tl = now
    if tl is not None and d.get("objects") == n:
        print("%.1f %.1f" % (tl, now))
        sys.exit(0)
    time.sleep(0.05)
print("- -")
EOF
)
    if [ "${tn:--}" = - ]; then
        logtail standby
        logtail node
        die "the standby indexed $(cluster_field "$B_ADM" objects) of $N objects in 300 s"
    fi
    b1=$(rss "$bp" VmRSS)
    bcpu=$(calc "%.1f" "$(cpu_s "$bp") - $bc0") ncpu=$(calc "%.1f" "$(cpu_s "$np") - $nc0")
    echo "timeline (killed the leader at $(date -u -d "@$k0" +%H:%M:%S.%3N)):"
    grep -h 'is now the LEADER\|mounted' "$W/standby.log" "$W/node.log" | sort | tail -n 6 | sed 's/^/  /'
    bm=$(http_ms "http://$B_ADM/metrics")
    bc=$(http_ms "http://$B_ADM/api/v1/cluster")
    # the index count says every object is back; batch-exists of random keys through the new
    # leader checks they answer (a missing key counts as an error and stops the run)
    MASTER=$B_RPC
    read -r _ xops _ xp99 < <(kv rebuild-exists --op=batch-exists --batch=1024 --threads=1 --existing="$N" \
        --key-prefix=r --key-size=$KEYLEN --duration="$DURATION") || exit 1
    [ -n "${xops:-}" ] || exit 1
    printf '%-56s %12s  %s\n' measure value goal
    hr
    printf '%-56s %12.0f\n' "fill: batch puts of 256 x 1 B, 2 threads (obj/s)" "$frate"
    "$PY" - "$N" "$KEYLEN" "$a0" "$a1" "$b0" "$b1" <<'PYEOF'
import sys
n, key, a0, a1, b0, b1 = (int(x) for x in sys.argv[1:])
for name, d in (("leader: RSS growth per object - key (B)", a1 - a0),
                ("new leader after the rebuild: the same (B)", b1 - b0)):
    rest = d / n - key
    print("%-56s %12.1f  <=150 B %s" % (name, rest, "met" if rest <= 150 else "MISSED"))
PYEOF
    for row in "leader: /metrics, slowest of 5 (ms)=$am" "leader: /api/v1/cluster, slowest of 5 (ms)=$ac" \
        "new leader: /metrics, slowest of 5 (ms)=$bm" "new leader: /api/v1/cluster, slowest of 5 (ms)=$bc"; do
        v=${row##*=}
        printf '%-56s %12s  <=100 ms %s\n' "${row%=*}" "$v" "$(verdict "$v" "<=" 100)"
    done
    printf '%-56s %12s  (the leader ttl is 3 s)\n' "kill -9 -> the standby leads (s)" "$tl"
    printf '%-56s %12s  <=30 s %s\n' "kill -9 -> the new leader indexed all $N (s)" "$tn" "$(verdict "$tn" "<=" 30)"
    printf '%-56s %12s\n' "  CPU the new leader spent meanwhile (s)" "$bcpu" "  CPU the node spent meanwhile (s)" "$ncpu"
    printf '%-56s %12.0f  (p99 %d us per call of 1,024)\n' "new leader: batch-exists of random keys (keys/s)" "$xops" "$xp99"
    hr
    echo "RSS growth: VmRSS after the fill (the new leader: after the rebuild) minus before, per object,"
    echo "minus the ${KEYLEN}-byte key. Times from kill -9, polling the standby's /api/v1/cluster every 50 ms."
    echo "fill:  $BIN bench store --master A --op=batch-put --batch=256 --size=1 --threads=2 --count=$N --keep --key-prefix=r --key-size=$KEYLEN"
    echo "check: $BIN bench store --master B --op=batch-exists --batch=1024 --existing=$N --key-prefix=r --key-size=$KEYLEN --duration=$DURATION"
    echo
    stop standby
    stop node
    stop metad
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
