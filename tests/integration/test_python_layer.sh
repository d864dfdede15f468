#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test_python_layer.sh - the Python layer's pytest suite (tests/python): binding, copy engine,
# vLLM connector, SGLang backend, launcher; the end-to-end tests start a real store on free
# loopback ports and tear it down. torch and numpy come from scripts/packages.txt (Debian's
# python3-torch, python3-numpy): a missing one is a failure, not a skip.
set -euo pipefail
SRC=${KVSTASH_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
"$PY" -c 'import torch, numpy, pytest' || {
    echo "FAIL: /usr/bin/python3 lacks torch, numpy or pytest: run scripts/install-deps.sh" >&2
    exit 1
}
# An ASan+UBSan build of libkvstash can only be loaded into Python with the sanitizer runtimes
# preloaded; Python itself is not instrumented, so leak checking is off for this process.
# (ldd's output is captured first: with pipefail, grep -q closing the pipe early would make the
# pipeline fail with SIGPIPE at random.)
deps=$( [ -n "${KVSTASH_LIB:-}" ] && ldd "$KVSTASH_LIB" 2>/dev/null || true)
if [[ $deps == *libasan* ]]; then
    asan=$(gcc -print-file-name=libasan.so)
    ubsan=$(gcc -print-file-name=libubsan.so)
    export LD_PRELOAD="$asan $ubsan${LD_PRELOAD:+ $LD_PRELOAD}"
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fi
export PYTHONPATH="$SRC/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
cd "$SRC"
exec "$PY" -m pytest -q -p no:cacheprovider tests/python
