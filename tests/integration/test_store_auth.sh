#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The shared token on the store's RPC and metad (issue 11): metad, a master (--token) and a node
# (KVSTASH_TOKEN). metad refuses changes without the token (401) and serves reads. With the token the CLI puts, gets, lists and removes (client -> master, master
# -> node, node -> master all authenticated, and the client's transfers to the node). Without
# it, or with a wrong one, every command fails with "permission denied" and the master logs
# the refusal ("authentication required" / "bad token") with the peer's address; a node
# without the token never mounts; a raw frame to the node's RPC port without AUTH gets
# KV_EPERM "authentication required" and the connection is closed.
# shellcheck source=lib_store.sh
. "$(dirname "$0")/lib_store.sh"

# shellcheck disable=SC2154 # MASTER_m1 is set by start_master (printf -v)
TOK="tok-$$-$RANDOM"
KVSTASH_TOKEN=$TOK start_metad # changes to metadata need the token too; reads stay open
code() { curl -s -o "$W/body" -w '%{http_code}' "$@"; }
[ "$(code -X PUT --data-binary x "$META?key=auth-probe")" = 401 ] || fail "metad: PUT without the token: $(cat "$W/body")"
grep -q "authentication required" "$W/body" || fail "metad 401 body: $(cat "$W/body")"
[ "$(code -X DELETE -H "Authorization: Bearer wrong" "$META?key=auth-probe")" = 401 ] ||
    fail "metad: DELETE with a wrong token"
[ "$(code -X PUT --data-binary x -H "Authorization: Bearer $TOK" "$META?key=auth-probe")" = 200 ] ||
    fail "metad: PUT with the token: $(cat "$W/body")"
[ "$(code "$META?key=auth-probe")" = 200 ] || fail "metad: GET without the token"
wait_for 5 grep -q "refused metadata PUT /metadata from 127.0.0.1:[0-9]*: authentication required" "$W/metad.log" ||
    fail "metad did not log the refusal: $(tail -3 "$W/metad.log")"
ok "metad with the token: PUT/DELETE without it or with a wrong one get 401 (logged), with it 200; GET stays open"
start_master m1 --token "$TOK" # the flag; the node and the CLI below take KVSTASH_TOKEN
KVSTASH_TOKEN=$TOK start_node n1 32MiB --log-level info # logs its RPC address
KVSTASH_TOKEN=$TOK wait_nodes 1
ok "master and node with KVSTASH_TOKEN: the node mounted"

mkval "$W/v" 200000 3
KVSTASH_TOKEN=$TOK kv put auth/a "$W/v" >/dev/null || fail "put with the token"
KVSTASH_TOKEN=$TOK kv get auth/a "$W/o" || fail "get with the token"
cmp "$W/v" "$W/o" || fail "auth/a differs"
KVSTASH_TOKEN=$TOK kv put auth/small "$W/v" >/dev/null || fail "second put with the token"
KVSTASH_TOKEN=$TOK kv ls auth/ | grep -q auth/small || fail "ls with the token"
KVSTASH_TOKEN=$TOK kv rm auth/small || fail "rm with the token"
# shellcheck disable=SC2154 # MASTER_m1 is set by start_master (printf -v)
env -u KVSTASH_TOKEN "$BIN" get auth/a "$W/o1" --master "$MASTER_m1" --token "$TOK" ||
    fail "get with --token (no KVSTASH_TOKEN)"
cmp "$W/v" "$W/o1" || fail "auth/a differs (--token)"
ok "with the token: put, get (same bytes), ls, rm; --token works as KVSTASH_TOKEN does"

# refused: no token
for cmd in "put auth/b $W/v" "get auth/a $W/o2" "ls auth/" "rm auth/a" "stat"; do
    set +e
    # shellcheck disable=SC2086 # the words of $cmd are the command's arguments
    # shellcheck disable=SC2154 # MASTER_m1 is set by start_master (printf -v)
    env -u KVSTASH_TOKEN "$BIN" $cmd --master "$MASTER_m1" --timeout 3000 >"$W/out" 2>"$W/err"
    rc=$?
    set -e
    [ $rc -ne 0 ] || fail "'$cmd' without the token succeeded"
    grep -q "permission denied" "$W/err" || fail "'$cmd' without the token: $(cat "$W/err")"
done
wait_for 5 grep -q "refused RPC connection from 127.0.0.1:[0-9]*: authentication required" "$W/m1.log" ||
    fail "the master did not log the refusal: $(tail -5 "$W/m1.log")"
ok "without the token: put/get/ls/rm/stat fail with 'permission denied'; the master logs 'authentication required'"

# refused: a wrong token
set +e
KVSTASH_TOKEN=wrong-$TOK "$BIN" get auth/a "$W/o3" --master "$MASTER_m1" --timeout 3000 2>"$W/err"
rc=$?
set -e
[ $rc -ne 0 ] || fail "get with a wrong token succeeded"
grep -q "permission denied" "$W/err" || fail "wrong token: $(cat "$W/err")"
[ ! -s "$W/o3" ] || fail "a refused get wrote bytes"
wait_for 5 grep -q "refused RPC connection from 127.0.0.1:[0-9]*: bad token" "$W/m1.log" ||
    fail "the master did not log the bad token: $(tail -5 "$W/m1.log")"
ok "a wrong token: refused ('permission denied'); the master logs 'bad token'"

# a node without the token does not mount
start_node n2 32MiB --token ""
sleep 3
[ "$(KVSTASH_TOKEN=$TOK nodes_up)" = 1 ] || fail "a node without the token mounted"
grep -q "refused\|permission denied" "$W/n2.log" || fail "n2 logged no refusal: $(tail -5 "$W/n2.log")"
kill9 n2
ok "a node without the token is refused by the master and never mounts"

# the node's RPC port: master commands without AUTH are refused
nport=$({ grep -o 'RPC on [0-9.]*:[0-9]*' "$W/n1.log" || true; } | head -1 | sed 's/.*://')
[ -n "$nport" ] || fail "no RPC port in the node's log: $(head -5 "$W/n1.log")"
"$PY" - "$nport" <<'PY' || fail "raw NODE_FREE to the node's RPC port was not refused"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(struct.pack("<IHHIiQ", 0x3152564B, 41, 0, 0, 0, 7))  # NODE_FREE, empty payload
hdr = b""
while len(hdr) < 24:
    b = s.recv(24 - len(hdr))
    assert b, "closed before the answer"
    hdr += b
magic, method, flags, n, status, rid = struct.unpack("<IHHIiQ", hdr)
body = b""
while len(body) < n:
    body += s.recv(n - len(body))
assert status == -16 and rid == 7, (status, rid)  # KV_EPERM
assert body == b"authentication required", body
assert s.recv(1) == b"", "connection not closed after the refusal"
PY
wait_for 5 grep -q "refused RPC connection from 127.0.0.1:[0-9]*: authentication required (first request NODE_FREE" "$W/n1.log" ||
    fail "the node did not log the refusal"
KVSTASH_TOKEN=$TOK kv get auth/a "$W/o4" || fail "get auth/a after the refusals"
cmp "$W/v" "$W/o4" || fail "auth/a differs after the refusals"
ok "the node's RPC port refuses a master command without the token (and logs it); data intact"
