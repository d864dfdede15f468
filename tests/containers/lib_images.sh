#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# lib_images.sh - shared by the container tier (ctest -L containers): prerequisites, a work
# directory, containers started through docker/run.sh with podman and runc on the host network
# (every daemon told to listen on 127.0.0.1: traffic stays on loopback), and their cleanup.
#
# Networks: every container shares the host's network (run.sh's default, --network host) and
# its daemons listen on 127.0.0.1, so no test traffic leaves loopback. Podman's bridge network
# does work here too (`podman --runtime runc run --network bridge` gets an address on
# 10.88.0.0/16), but it NATs to the outside world, and each daemon would need its advertised
# address set to its container's.
set -euo pipefail
SRC=${KVSTASH_SOURCE_DIR:?KVSTASH_SOURCE_DIR not set}
# shellcheck disable=SC2034 # BIN, IMG_LITE and IMG_FULL are read by the tests sourcing this
BIN=${KVSTASH_BIN:?KVSTASH_BIN not set}
PY=/usr/bin/python3
ENGINE=podman
RUNTIME=runc
# shellcheck disable=SC2034
IMG_LITE=kvstash:latest-lite
# shellcheck disable=SC2034
IMG_FULL=kvstash:latest

skip() {
    echo "SKIP: $*"
    exit 77
}
ok() { echo "ok - $*"; }

# a skip, not a pass: scripts/install-deps.sh installs all of these, so on a host it prepared
# the suite fails on this skip (scripts/test.sh)
[ "$(id -u)" -eq 0 ] || skip "the container tier needs root (podman with runc, debootstrap)"
for t in podman buildah runc debootstrap curl; do
    command -v "$t" >/dev/null || skip "$t not installed (scripts/packages.txt)"
done

W=$(mktemp -d /tmp/kvstash-ctr-XXXXXX)
TAG=kvt$$ # container and volume names of this run
CONTAINERS=()
VOLUMES=()
CLEANUPS=()
cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do "$ENGINE" rm -f -v -t 0 "$c" >/dev/null 2>&1 || true; done
    for c in "${VOLUMES[@]}"; do "$ENGINE" volume rm -f "$c" >/dev/null 2>&1 || true; done
    for c in "${CLEANUPS[@]}"; do eval "$c" || true; done
    jobs -p | xargs -r kill -9 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*"
    local f c
    for c in "${CONTAINERS[@]}"; do
        echo "--- container $c: $("$ENGINE" inspect -f '{{.State.Status}} exit {{.State.ExitCode}}' "$c" 2>/dev/null || echo gone)"
    done
    for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done
    exit 1
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for SECONDS CMD...: retry CMD every 0.1 s until it succeeds.
wait_for() {
    local n=$(($1 * 10))
    shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

# have_image TAG: the image is in podman's store.
have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# run_ctr NAME IMAGE [RUN.SH OPTIONS...] [-- CMD...]: starts a container through docker/run.sh
# (podman, runc, host network, no GPUs, kept after exit for its logs), in the background; its
# output goes to $W/NAME.log.
run_ctr() {
    local name=$1 image=$2
    shift 2
    CONTAINERS+=("$TAG-$name")
    "$SRC/docker/run.sh" --engine "$ENGINE" --runtime "$RUNTIME" --image "$image" \
        --name "$TAG-$name" --gpus none --rm false "$@" >"$W/$name.log" 2>&1 &
}

# ctr_running NAME: the container is up.
ctr_running() {
    [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$TAG-$1" 2>/dev/null)" = true ]
}

# image_mb TAG: the image's size in MB (10^6 bytes).
image_mb() {
    local b
    b=$("$ENGINE" image inspect -f '{{.Size}}' "$1") || return 1
    echo $(((b + 500000) / 1000000))
}
