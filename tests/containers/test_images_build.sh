#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_images_build.sh - the container tier's first step (the other container tests need it, a
# ctest fixture): makes the Debian base image with scripts/base-image.sh (debootstrap + podman
# import, cached by content) and builds both images with docker/build.sh --engine podman, tagged
# as build.sh names them (kvstash:latest-lite, kvstash:latest). The two share their build stage
# (podman's layer cache builds it once). Prints each image's size and what it adds to the base;
# fails when the lite image adds more than 40 MB (no docs, no caches, no apt lists).
# shellcheck source=lib_images.sh
. "$(dirname "$0")/lib_images.sh"

t0=$SECONDS
base=$("$SRC/scripts/base-image.sh" --engine "$ENGINE" 2>"$W/base.log" | tail -n 1) ||
    fail "scripts/base-image.sh"
have_image "$base" || fail "base image $base not in podman's store"
ok "base image $base ($(image_mb "$base") MB) in $((SECONDS - t0)) s"

for target in lite full; do
    t1=$SECONDS
    "$SRC/docker/build.sh" --engine "$ENGINE" --target "$target" --base-image local \
        >"$W/build-$target.log" 2>&1 || fail "docker/build.sh --target $target"
    img=$IMG_FULL
    [ "$target" = lite ] && img=$IMG_LITE
    have_image "$img" || fail "$img not in podman's store after build.sh --target $target"
    ok "docker/build.sh --target $target built $img ($(image_mb "$img") MB, +$(($(image_mb "$img") - $(image_mb "$base"))) MB on the base) in $((SECONDS - t1)) s"
done

# the lite image: one executable and its libraries on the base
added=$(($(image_mb "$IMG_LITE") - $(image_mb "$base")))
[ "$added" -le 40 ] || fail "the lite image adds $added MB to its base (want <= 40 MB)"
hc=$("$ENGINE" image inspect -f '{{json .Config.Healthcheck}}' "$IMG_LITE")
grep -q '/ready' <<<"$hc" || fail "the lite image has no HEALTHCHECK on /ready: $hc"
ok "the lite image adds $added MB (<= 40) and its HEALTHCHECK waits on /ready"
for img in "$IMG_LITE" "$IMG_FULL"; do
    v=$("$SRC/docker/run.sh" --engine "$ENGINE" --runtime "$RUNTIME" --image "$img" --gpus none \
        --network none -- kvstash version 2>"$W/version.log") ||
        fail "kvstash version in $img: $(cat "$W/version.log")"
done
ok "kvstash version runs in both images ($v); the tier's images took $((SECONDS - t0)) s"
