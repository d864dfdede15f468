#!/usr/bin/env bash
# Configures and builds kvstash into a build directory (default: build). Extra arguments are
# passed to cmake's configure step, e.g. scripts/build.sh build-asan -DKV_SANITIZE=ON
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-build}
shift || true
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S "$top" -B "$top/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$top/$dir" -j "$jobs"
