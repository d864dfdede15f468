#!/usr/bin/env bash
# The README's second command: installs what is missing, then builds and runs every test:
# format and banned-function checks, the full ctest suite (unit, integration with etcd/Redis
# started for real, fuzz-corpus replay), then the same suite under ASan+UBSan.
# KVSTASH_TEST_QUICK=1 skips the sanitizer pass.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)

echo "== checks: clang-format, banned functions"
scripts/check-format.sh
scripts/check-banned.sh

echo "== build (release, -Werror)"
scripts/build.sh build
echo "== tests"
ctest --test-dir build --output-on-failure -j "$jobs"

if [ "${KVSTASH_TEST_QUICK:-0}" != 1 ]; then
  echo "== build (ASan + UBSan)"
  scripts/build.sh build-asan -DKV_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
  echo "== tests under ASan + UBSan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi
echo "== all tests passed"
