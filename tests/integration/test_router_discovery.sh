#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The router discovers engines from metadata (`kvstash metad`, keys /kvstash/<cluster>/engines/):
# engines are added when their key appears (a URL, or a JSON object with "url"), taken out of
# rotation when it is deleted, and come back when it is put again.
set -euo pipefail
# shellcheck source=lib_router.sh
. "$(dirname "$0")/lib_router.sh" router-disc

"$BIN" metad --addr 127.0.0.1:0 --log-level info >"$W/metad.out" 2>"$W/metad.log" &
pids+=($!)
wait_until 5 grep -q 'listening on http' "$W/metad.log" || fail "metad did not start"
MURL=$(grep -o 'http://127.0.0.1:[0-9]*/metadata' "$W/metad.log" | head -1)
start_engine A m1
start_engine B m1
PA=${EPORT[A]}
PB=${EPORT[B]}
put() { curl -s -f -X PUT "$MURL?key=/kvstash/test/engines/$1" --data-binary "$2" >/dev/null; }
put a "http://localhost:$PA/"
put b "{\"url\":\"127.0.0.1:$PB\",\"engine_id\":\"engine-b\"}"

start_router disc --metadata "$MURL" --cluster test --health-interval-ms 200
RP=${RPORT[disc]}
chat() {
    curl -s "http://127.0.0.1:$RP/v1/chat/completions" -d '{"model":"m1","messages":[]}' |
        jq -r .engine
}
seen() { # the engines serving 6 requests, sorted and unique
    for _ in 1 2 3 4 5 6; do chat; done | sort -u | tr -d '\n'
}
s=$(seen)
[ "$s" = AB ] || fail "discovered engines serve: $s"
ok "engines discovered from metadata (URL and JSON values)"

curl -s -f -X DELETE "$MURL?key=/kvstash/test/engines/a" >/dev/null
wait_until 5 grep -q "left the metadata" "$W/router-disc.log" || fail "A not removed"
s=$(seen)
[ "$s" = B ] || fail "after removing A: $s"
ok "an engine whose key is deleted leaves the rotation"

put a "http://127.0.0.1:$PA"
wait_until 5 grep -q "back in the metadata" "$W/router-disc.log" || fail "A not back"
s=$(seen)
[ "$s" = AB ] || fail "after re-adding A: $s"
ok "and comes back when the key is put again"
echo "all router discovery tests passed"
