#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# docker/build.sh - builds the kvstash images, with the options users know from Dynamo's
# container/build.sh: --target full|lite --tag T --no-cache --platform P --build-arg K=V;
# --engine docker|podman (default: docker if present, else podman; podman builds with buildah)
# and --base-image IMAGE|local (local: scripts/base-image.sh makes a Debian base, no registry).
# Both Dockerfiles install through scripts/install-deps.sh (what the README and CI run) and
# build with scripts/build.sh. --dry-run prints the exact docker command and runs nothing.
# Bad options: one line on stderr, exit 2. See docs/deployment.md.
set -euo pipefail

# ---- user-set variables: edit here, or export KVSTASH_<NAME> to override one run ---------
IMAGE_NAME=${KVSTASH_IMAGE_NAME:-kvstash}             # repository part of the default tag
PLATFORM=${KVSTASH_PLATFORM:-linux/amd64}             # --platform default
DOCKER_EXTRA_ARGS=${KVSTASH_DOCKER_EXTRA_ARGS:-}      # extra docker build arguments, split on spaces
# -------------------------------------------------------------------------------------------

SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    cat <<USAGE
Usage: docker/build.sh [OPTIONS]

Builds a kvstash image from this repository.

Options:
  --target full|lite     full: RDMA user space, etcd, kvstash, the Python layer (docker/Dockerfile);
                         lite: kvstash only, local storage + embedded metadata
                         (docker/Dockerfile.lite). Default: full
  --tag T                image tag (default: $IMAGE_NAME:latest for full, $IMAGE_NAME:latest-lite)
  --no-cache             do not use the build cache
  --platform P           target platform (default: $PLATFORM)
  --build-arg K=V        build argument (repeatable), e.g. --build-arg BASE_IMAGE=debian:12-slim
  --base-image IMAGE     base image of both stages (sets BASE_IMAGE); local: make one with
                         scripts/base-image.sh (debootstrap; cached by content), no registry pull
  --engine docker|podman container engine (default: docker if on PATH, else podman)
  --dry-run              print the docker command and run nothing
  -h, --help             this help
USAGE
}

die() {
    echo "build.sh: $*" >&2
    exit 2
}

need() {
    [ "$2" -ge 2 ] || die "$1 needs a value (try --help)"
}

target=full
tag=
no_cache=false
platform=$PLATFORM
dry_run=false
build_args=()
engine=
base_image=

while [ $# -gt 0 ]; do
    case $1 in
    --target) need "$1" $#; target=$2; shift 2 ;;
    --tag) need "$1" $#; tag=$2; shift 2 ;;
    --no-cache) no_cache=true; shift ;;
    --platform) need "$1" $#; platform=$2; shift 2 ;;
    --build-arg) need "$1" $#; build_args+=("$2"); shift 2 ;;
    --base-image) need "$1" $#; base_image=$2; shift 2 ;;
    --engine) need "$1" $#; engine=$2; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
    esac
done

case $target in
full) dockerfile=$SOURCE_DIR/docker/Dockerfile; tag=${tag:-$IMAGE_NAME:latest} ;;
lite) dockerfile=$SOURCE_DIR/docker/Dockerfile.lite; tag=${tag:-$IMAGE_NAME:latest-lite} ;;
*) die "--target '$target': want full or lite" ;;
esac
[[ $tag =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] || die "--tag '$tag': want NAME[:TAG] in lower case"
[[ $platform =~ ^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$ ]] || die "--platform '$platform': want OS/ARCH, e.g. linux/amd64"
for a in "${build_args[@]}"; do
    [[ $a =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--build-arg '$a': want KEY=VALUE"
done

if [ -z "$engine" ]; then
    if command -v docker >/dev/null; then engine=docker; else engine=podman; fi
fi
case $engine in docker | podman) ;; *) die "--engine '$engine': want docker or podman" ;; esac
if [ "$base_image" = local ]; then
    if [ "$dry_run" = true ]; then
        base_image=$("$SOURCE_DIR/scripts/base-image.sh" --engine "$engine" --print-tag)
    else
        base_image=$("$SOURCE_DIR/scripts/base-image.sh" --engine "$engine" | tail -n 1)
    fi
fi
[ -z "$base_image" ] || [[ $base_image =~ ^[a-z0-9][a-z0-9._/:@-]*$ ]] ||
    die "--base-image '$base_image': want an image reference in lower case, or local"
[ -z "$base_image" ] || build_args+=("BASE_IMAGE=$base_image")

args=("$engine" build -f "$dockerfile" -t "$tag" --platform "$platform")
# podman (buildah) reads no <Dockerfile>.dockerignore by itself: name it; and its default OCI
# format drops HEALTHCHECK: build docker-format images
[ "$engine" = podman ] && args+=(--format docker --ignorefile "$dockerfile.dockerignore")
[ "$no_cache" = true ] && args+=(--no-cache)
for a in "${build_args[@]}"; do args+=(--build-arg "$a"); done
if [ -n "$DOCKER_EXTRA_ARGS" ]; then
    read -r -a extra <<<"$DOCKER_EXTRA_ARGS"
    args+=("${extra[@]}")
fi
args+=("$SOURCE_DIR")

if [ "$dry_run" = true ]; then
    printf '%q' "${args[0]}"
    printf ' %q' "${args[@]:1}"
    printf '\n'
    exit 0
fi
command -v "$engine" >/dev/null || {
    echo "build.sh: $engine not found on PATH (use --dry-run to see the command)" >&2
    exit 1
}
# BuildKit reads docker/<Dockerfile>.dockerignore (keeps build trees and .git out of the context)
export DOCKER_BUILDKIT=1
exec "${args[@]}"
