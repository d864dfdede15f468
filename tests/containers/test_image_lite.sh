#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_image_lite.sh - the lite image run for real (docker/run.sh, podman, runc, host network):
#   1. `kvstash serve` (the image's CMD) on free loopback ports with a named volume for its SSD
#      tier; readiness through the image's own HEALTHCHECK command (`podman healthcheck run`);
#   2. put/get from the host with this build's kvstash: 24 x 1 MiB through 16 MiB of DRAM, so
#      the oldest objects are demoted to the SSD tier on the volume; every get returns the bytes;
#   3. stop the container (SIGTERM: serve writes DRAM's objects to SSD), start a new one on the
#      same volume: every object is readable again with the exact bytes.
# shellcheck source=lib_images.sh
. "$(dirname "$0")/lib_images.sh"
have_image "$IMG_LITE" || fail "$IMG_LITE is not built (containers.test_images_build makes it)"

MP=$(free_port)
AP=$(free_port)
DP=$(free_port)
VOL=$TAG-data
"$ENGINE" volume create "$VOL" >/dev/null || fail "podman volume create"
VOLUMES+=("$VOL")
start_serve() { # NAME
    run_ctr "$1" "$IMG_LITE" -v "$VOL:/var/lib/kvstash" \
        -e KVSTASH_BIND=127.0.0.1 -e "KVSTASH_MASTER_ADDR=127.0.0.1:$MP" \
        -e "KVSTASH_ADMIN_ADDR=127.0.0.1:$AP" -e "KVSTASH_METADATA_ADDR=127.0.0.1:$DP" \
        -e KVSTASH_CAPACITY=16MiB -e KVSTASH_SSD_CAPACITY=256MiB -e KVSTASH_PROTOCOL=tcp
    # podman healthcheck run: the image's HEALTHCHECK command in the container (exit 0: healthy)
    wait_for 60 "$ENGINE" healthcheck run "$TAG-$1" ||
        fail "container $1 never became healthy (HEALTHCHECK on /ready)"
    ctr_running "$1" || fail "container $1 is not running"
}
kv() { "$BIN" "$1" --master "127.0.0.1:$MP" --protocol tcp --log-level error "${@:2}"; }
mkval() { # FILE SIZE SEED
    head -c "$2" /dev/zero | tr '\0' "\\$(printf '%03o' $((65 + $3 % 26)))" >"$1"
    printf '%s' "$3" | dd of="$1" bs=1 seek=0 conv=notrunc status=none
}

start_serve serve1
curl -sf "http://127.0.0.1:$AP/ready" >/dev/null || fail "/ready on the host"
ok "kvstash serve in the lite image: ready through the image's HEALTHCHECK"

N=24
for i in $(seq $N); do
    mkval "$W/v$i" $((1048576 - i)) "$i"
    kv put "lite/$i" "$W/v$i" >/dev/null 2>"$W/put.err" || fail "put lite/$i: $(cat "$W/put.err")"
done
for i in 1 2 $N; do
    kv get "lite/$i" "$W/o" 2>"$W/get.err" || fail "get lite/$i: $(cat "$W/get.err")"
    cmp -s "$W/o" "$W/v$i" || fail "lite/$i differs"
done
ok "put $N x 1 MiB from the host into 16 MiB of DRAM; gets (SSD promotions too) return the bytes"

"$ENGINE" stop -t 10 "$TAG-serve1" >/dev/null || fail "podman stop"
start_serve serve2
back=0
for i in $(seq $N); do
    if kv get "lite/$i" "$W/o" 2>"$W/get.err"; then
        cmp -s "$W/o" "$W/v$i" || fail "lite/$i corrupt after the restart"
        back=$((back + 1))
    else
        grep -q "not found" "$W/get.err" || fail "lite/$i: unexpected error $(cat "$W/get.err")"
    fi
done
# podman stop sends SIGTERM: a clean shutdown writes DRAM's objects to the SSD tier too
[ "$back" -eq "$N" ] || fail "only $back of $N objects back after a clean stop and restart"
ok "a new container on the same volume reads back all $N objects exactly (SSD tier)"
