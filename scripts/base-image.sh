#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/base-image.sh - makes a Debian base image locally, without pulling from a registry:
# `debootstrap --variant=minbase SUITE DIR`, trimmed (no apt lists, no caches, no docs), then
# `podman import` (or `docker import`). Cached by content: the tag is
# kvstash-base:SUITE-<hash of this script, the suite, variant and architecture>, and an image of
# that tag already present is reused (no debootstrap, no network).
#
# Usage: scripts/base-image.sh [--engine docker|podman] [--suite bookworm] [--mirror URL]
#                              [--dry-run] [--print-tag]
# Prints the image tag as its last line of stdout (build.sh --base-image local uses it).
# Needs root (debootstrap). Bad options: one line on stderr, exit 2.
set -euo pipefail

die() {
    echo "base-image.sh: $*" >&2
    exit 2
}
need() {
    [ "$2" -ge 2 ] || die "$1 needs a value (try --help)"
}

engine=
suite=bookworm
mirror= # empty: debootstrap's default mirror
dry_run=false
print_tag=false
while [ $# -gt 0 ]; do
    case $1 in
    --engine) need "$1" $#; engine=$2; shift 2 ;;
    --suite) need "$1" $#; suite=$2; shift 2 ;;
    --mirror) need "$1" $#; mirror=$2; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    --print-tag) print_tag=true; shift ;;
    -h | --help) sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
    esac
done
if [ -z "$engine" ]; then
    if command -v docker >/dev/null; then engine=docker; else engine=podman; fi
fi
case $engine in docker | podman) ;; *) die "--engine '$engine': want docker or podman" ;; esac
[[ $suite =~ ^[a-z]+$ ]] || die "--suite '$suite': want a Debian suite name, e.g. bookworm"
[ -z "$mirror" ] || [[ $mirror =~ ^(https?|file):// ]] || die "--mirror '$mirror': want an http(s):// or file:// URL"

arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
key=$({ cat "$0"; echo "$suite minbase $arch"; } | sha256sum | cut -c1-12)
tag=kvstash-base:$suite-$key
if [ "$print_tag" = true ]; then
    echo "$tag"
    exit 0
fi

if [ "$dry_run" = false ] && "$engine" image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image.sh: $tag is present (cached)" >&2
    echo "$tag"
    exit 0
fi

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

if [ "$dry_run" = false ]; then
    [ "$(id -u)" -eq 0 ] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }
    command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
    command -v "$engine" >/dev/null || { echo "base-image.sh: $engine not found on PATH" >&2; exit 1; }
fi
root=$(mktemp -d "${TMPDIR:-/tmp}/kvstash-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
args=(debootstrap --variant=minbase "$suite" "$root")
[ -z "$mirror" ] || args+=("$mirror")
t0=$(date +%s)
run "${args[@]}" >&2
# trim: what an image never needs (apt lists come back with install-deps.sh's apt-get update)
run find "$root/var/lib/apt/lists" "$root/var/cache/apt" "$root/usr/share/doc" \
    "$root/usr/share/man" "$root/usr/share/info" -type f -delete >&2
run sh -c "tar -C '$root' -c . | $engine import --change 'CMD [\"/bin/bash\"]' - '$tag'" >&2
[ "$dry_run" = true ] || echo "base-image.sh: built $tag in $(($(date +%s) - t0)) s" >&2
echo "$tag"
