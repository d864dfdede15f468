#!/usr/bin/env bash
# Fails on banned functions (STYLE.md): atoi/atol, sprintf, strcpy, strcat, strtok, gets, and raw
# malloc/calloc/realloc/free outside src/common/alloc.c (use kv_malloc/kv_free); the function
# ban also covers the stand-alone programs in bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files 'src/*.c' 'src/*.h' 2>/dev/null; git ls-files --others --exclude-standard 'src/*.c' 'src/*.h' 2>/dev/null)
bad=0
# The stand-alone C programs under bench/ (not linked with kv_malloc) follow the function ban.
mapfile -t bench < <(git ls-files 'bench/*.c' 2>/dev/null; git ls-files --others --exclude-standard 'bench/*.c' 2>/dev/null)
for f in "${files[@]}" "${bench[@]}"; do
  [ -f "$f" ] || continue
  if grep -nE '\b(atoi|atol|atoll|sprintf|vsprintf|strcpy|strcat|strtok|gets)\s*\(' "$f"; then
    echo "  ^ banned function in $f"; bad=1
  fi
  if [[ "$f" == src/* ]] && [ "$f" != src/common/alloc.c ] && grep -nE '(^|[^_a-z.>])(malloc|calloc|realloc|free)\s*\(' "$f" | grep -vE '^\s*[0-9]+:\s*(/\*|\*)'; then
    echo "  ^ raw allocator call in $f (use kv_malloc/kv_free)"; bad=1
  fi
done
exit $bad
