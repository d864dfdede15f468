#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/host-prepare.sh - prepares a host for kvstash, as the Crail-based deployment's
# bash/prepare.sh and 2M_prepare.sh do: reserves huge pages, mounts hugetlbfs, loads the RDMA
# kernel modules when RDMA hardware is present, raises the memlock limit; then prints what it
# did and what is still missing. Idempotent: a second run changes nothing and says so.
# --undo gives back what earlier runs changed (recorded in $STATE_FILE). Needs root except
# with --dry-run, which prints the commands and runs nothing. See docs/deployment.md.
#
# Usage: scripts/host-prepare.sh [--hugepages 2M|1G] [--pages N] [--mount DIR] [--rdma]
#                                [--dry-run] [--undo]
#   --hugepages 2M|1G  page size to reserve (default: 2M)
#   --pages N          total pages of that size the pool should hold (default: 1024 = 2 GiB of
#                      2M pages); never lowers a larger pool
#   --mount DIR        hugetlbfs mount point (default: /dev/hugepages, /dev/hugepages1G for 1G)
#   --rdma             load ib_uverbs, rdma_ucm, ib_umad (when /sys/class/infiniband has devices)
# Bad options: one line on stderr, exit 2.
set -euo pipefail

STATE_FILE=${KVSTASH_HOST_PREPARE_STATE:-/run/kvstash-host-prepare.state}
MEMLOCK_CONF=${KVSTASH_MEMLOCK_CONF:-/etc/security/limits.d/90-kvstash-memlock.conf}

die() {
    echo "host-prepare.sh: $*" >&2
    exit 2
}
need() {
    [ "$2" -ge 2 ] || die "$1 needs a value (try --help)"
}

size=2M
pages=1024
mount_dir=
rdma=false
dry_run=false
undo=false
while [ $# -gt 0 ]; do
    case $1 in
    --hugepages) need "$1" $#; size=$2; shift 2 ;;
    --pages) need "$1" $#; pages=$2; shift 2 ;;
    --mount) need "$1" $#; mount_dir=$2; shift 2 ;;
    --rdma) rdma=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    --undo) undo=true; shift ;;
    -h | --help) sed -n '3,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
    esac
done
case $size in
2M | 2m) kb=2048; size=2M; mount_dir=${mount_dir:-/dev/hugepages} ;;
1G | 1g) kb=1048576; size=1G; mount_dir=${mount_dir:-/dev/hugepages1G} ;;
*) die "--hugepages '$size': want 2M or 1G" ;;
esac
{ [[ $pages =~ ^[0-9]+$ ]] && [ "$pages" -le 1048576 ]; } || die "--pages '$pages': want a page count (0-1048576)"
[[ $mount_dir == /* ]] || die "--mount '$mount_dir': want an absolute path"
pool=/sys/kernel/mm/hugepages/hugepages-${kb}kB

did=()
missing=()
# run CMD...: runs it, or prints it with --dry-run
run() {
    if [ "$dry_run" = true ]; then
        printf '%q' "$1"
        shift
        [ $# -eq 0 ] || printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}
record() {
    [ "$dry_run" = true ] || echo "$1" >>"$STATE_FILE"
}

if [ "$dry_run" = false ] && [ "$(id -u)" -ne 0 ]; then
    echo "host-prepare.sh: needs root (try --dry-run to see the commands)" >&2
    exit 1
fi

if [ "$undo" = true ]; then
    if [ ! -f "$STATE_FILE" ]; then
        echo "host-prepare.sh: nothing to undo ($STATE_FILE is absent)"
        exit 0
    fi
    # newest change first
    tac "$STATE_FILE" | while read -r what a b c; do
        case $what in
        mount) run umount "$a" && echo "undone: unmounted $a" ;;
        mkdir) if run rmdir "$a" 2>/dev/null; then echo "undone: removed $a"; fi ;;
        pages)
            # give back what was added (b -> c), not more: others may have reserved since
            cur=$(cat "$a/nr_hugepages")
            back=$((cur - (c - b)))
            [ "$back" -ge 0 ] || back=0
            run sh -c "echo $back > $a/nr_hugepages" && echo "undone: $a/nr_hugepages $cur -> $back"
            ;;
        memlock) run rm -f "$a" && echo "undone: removed $a" ;;
        esac
    done
    run rm -f "$STATE_FILE"
    exit 0
fi

# ---- huge pages ------------------------------------------------------------------------------
if [ ! -d "$pool" ]; then
    missing+=("this kernel has no $size huge-page pool ($pool)")
else
    have=$(cat "$pool/nr_hugepages")
    if [ "$have" -ge "$pages" ]; then
        echo "ok: $have $size huge pages reserved (>= $pages)"
    else
        run sh -c "echo $pages > $pool/nr_hugepages"
        if [ "$dry_run" = false ]; then
            got=$(cat "$pool/nr_hugepages")
            record "pages $pool $have $got"
            did+=("reserved $size huge pages: $have -> $got")
            [ "$got" -ge "$pages" ] ||
                missing+=("only $got of $pages $size pages could be reserved (memory fragmented: reserve at boot with hugepagesz=$size hugepages=$pages)")
        fi
    fi
fi

# ---- hugetlbfs mount -------------------------------------------------------------------------
if awk -v d="$mount_dir" '$2 == d && $3 == "hugetlbfs" {f = 1} END {exit !f}' /proc/mounts; then
    echo "ok: hugetlbfs is mounted at $mount_dir"
else
    if [ ! -d "$mount_dir" ]; then
        run mkdir -p "$mount_dir"
        record "mkdir $mount_dir"
    fi
    run mount -t hugetlbfs -o "pagesize=$size,mode=1777" nodev "$mount_dir"
    record "mount $mount_dir"
    did+=("mounted hugetlbfs (pagesize=$size) at $mount_dir")
fi

# ---- RDMA ------------------------------------------------------------------------------------
if [ "$rdma" = true ]; then
    if compgen -G "/sys/class/infiniband/*" >/dev/null; then
        for m in ib_uverbs rdma_ucm ib_umad; do
            if [ -d "/sys/module/$m" ]; then
                echo "ok: module $m is loaded"
            else
                run modprobe "$m" && did+=("loaded $m")
            fi
        done
    else
        missing+=("no RDMA device in /sys/class/infiniband: modules not loaded (kvstash uses tcp/shm)")
    fi
fi

# ---- memlock ---------------------------------------------------------------------------------
if [ "$(ulimit -Hl)" = unlimited ]; then
    echo "ok: memlock is unlimited"
elif [ -f "$MEMLOCK_CONF" ]; then
    echo "ok: $MEMLOCK_CONF raises memlock (for new login sessions)"
else
    run sh -c "printf '* soft memlock unlimited\n* hard memlock unlimited\n' > $MEMLOCK_CONF"
    record "memlock $MEMLOCK_CONF"
    did+=("wrote $MEMLOCK_CONF (memlock unlimited for new logins; docker/run.sh passes --ulimit memlock=-1)")
fi

if [ "$dry_run" = true ]; then
    for m in "${missing[@]}"; do echo "# missing: $m" >&2; done
    exit 0
fi
for d in "${did[@]}"; do echo "did: $d"; done
[ ${#did[@]} -gt 0 ] || echo "did: nothing (already prepared)"
for m in "${missing[@]}"; do echo "missing: $m"; done
[ ${#did[@]} -eq 0 ] || echo "undo with: $0 --undo"
exit 0
