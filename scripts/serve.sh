#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs `kvstash serve`
# (all-in-one on this host). Arguments go to `kvstash serve` (try --help).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh" build
exec "$top/build/kvstash" serve "$@"
