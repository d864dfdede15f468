#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# docker/build.sh and docker/run.sh: the exact docker commands their --dry-run prints for
# several option combinations (no Docker engine runs here), one-line errors with exit 2 for
# bad options, the Dockerfiles' structure (multi-stage, install-deps.sh, non-root user), and
# runs shellcheck on every shell script of the repository. Deployment scripts (docker/*.sh,
# scripts/cluster, this file, test_cluster*.sh) must be clean; findings in other scripts are
# listed as warnings for their owners.
set -euo pipefail
SRC=${KVSTASH_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
RUN=$SRC/docker/run.sh
BUILD=$SRC/docker/build.sh
W=$(mktemp -d /tmp/kvstash-docker-test.XXXXXX)
trap 'rm -rf "$W"' EXIT
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() { echo "ok - $*"; }
# the user-set variables may be exported by the caller: the test wants the defaults
unset KVSTASH_IMAGE_NAME KVSTASH_CONTAINER_NAME KVSTASH_CKPT_HOST_DIR KVSTASH_CKPT_MOUNT_TARGET \
    KVSTASH_DOCKER_EXTRA_ARGS KVSTASH_PLATFORM KVSTASH_NVME_DEV
# the docker commands below: docker, whichever engine this host has (--engine cases at the end)
export KVSTASH_ENGINE=docker

# expect WANT CMD...: CMD prints exactly WANT (one line) and exits 0.
expect() {
    local want=$1 got
    shift
    got=$("$@") || fail "$* exited $?"
    [ "$got" = "$want" ] || fail "$*
  want: $want
  got:  $got"
}
# bad WORD CMD...: CMD exits 2 with one stderr line containing WORD, and prints nothing.
bad() {
    local word=$1 rc=0
    shift
    "$@" >"$W/out" 2>"$W/err" || rc=$?
    [ "$rc" -eq 2 ] || fail "$*: exit $rc, want 2"
    [ "$(wc -l <"$W/err")" -eq 1 ] || fail "$*: want one error line, got: $(cat "$W/err")"
    grep -qF -- "$word" "$W/err" || fail "$*: error does not name '$word': $(cat "$W/err")"
    [ ! -s "$W/out" ] || fail "$*: printed a command on error"
}

D='docker run --rm'
# nofile: 65536, or the host's hard limit when lower (run.sh says so on stderr)
NOFILE=65536
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] || [ "$HARD" -ge 65536 ] || NOFILE=$HARD
# memlock: -1, or the host's hard limit (bytes) when it has one
MEMLOCK=-1
HARD_L=$(ulimit -Hl)
[ "$HARD_L" = unlimited ] || MEMLOCK=$((HARD_L * 1024)):$((HARD_L * 1024))
U="--ipc host --shm-size=10G --ulimit memlock=$MEMLOCK --ulimit stack=67108864 --ulimit nofile=$NOFILE:$NOFILE"
# podman: no --shm-size with --ipc host; an nproc limit runc can set
UP="--ipc host --ulimit memlock=$MEMLOCK --ulimit stack=67108864 --ulimit nofile=$NOFILE:$NOFILE --ulimit nproc=32768:32768"
BR='-p 8080:8080 -p 50051:50051 -p 9003:9003 -p 9998:9998 -p 9999:9999/udp -p 8000:8000'

# ---- run.sh ----------------------------------------------------------------------------------
expect "$D --gpus all --network host $U kvstash:latest" "$RUN" --dry-run
ok "run.sh defaults: host network, --ipc host, --shm-size=10G, the three ulimits, all GPUs"
expect "$D --network host $U kvstash:latest" "$RUN" --dry-run --gpus none
expect "$D --gpus 2 --network host $U kvstash:latest" "$RUN" --dry-run --gpus 2
ok "run.sh --gpus none drops the GPU flags; --gpus N"
expect "$D --gpus all --network bridge $BR $U kvstash:latest" "$RUN" --dry-run --network bridge
expect "$D --gpus all --network bridge $BR -p 7000:7000 $U kvstash:latest" \
    "$RUN" --dry-run --network bridge -p 7000:7000
expect "$D --gpus all --network none $U kvstash:latest" "$RUN" --dry-run --network none
expect "$D --gpus all --network container:peer $U kvstash:latest" "$RUN" --dry-run --network container:peer
ok "run.sh bridge mode publishes the ports incl. -p 9999:9999/udp; none; container:NAME"
expect "$D --gpus all --network host $U --device /dev/infiniband --cap-add IPC_LOCK kvstash:latest" \
    "$RUN" --dry-run --rdma
HUGE=$(awk '$3 == "hugetlbfs" {printf " -v %s:%s", $2, $2}' /proc/mounts)
[ -n "$HUGE" ] || HUGE=" -v /dev/hugepages:/dev/hugepages"
expect "$D --gpus all --network host $U --privileged$HUGE kvstash:latest" \
    "$RUN" --dry-run --privileged --hugepages
ok "run.sh --rdma adds the IB devices and IPC_LOCK; --privileged; --hugepages"
mkdir -p "$W/hf" "$W/ckpt"
expect "docker run -it --name kv1 --network host --ipc private --shm-size=1G --ulimit memlock=$MEMLOCK --ulimit stack=67108864 --ulimit nofile=$NOFILE:$NOFILE --user 1000:1000 -v $SRC:/workspace -w /workspace -v $W/hf:/home/kvstash/.cache/huggingface -e HF_HOME=/home/kvstash/.cache/huggingface -v /data:/data:ro -e A=1 -e HOME img:t kvstash serve --bind 0.0.0.0" \
    "$RUN" --dry-run --rm false -it --name kv1 --gpus none --ipc private --shm-size 1G --user 1000:1000 \
    --mount-workspace --hf-cache "$W/hf" -v /data:/data:ro -e A=1 -e HOME --image img:t \
    -- kvstash serve --bind 0.0.0.0
ok "run.sh --rm false, -it, --name, --ipc, --shm-size, --user, --mount-workspace, --hf-cache, -v, -e, --image, -- CMD"
expect "$D --gpus all --network host $U -v $W/ckpt:/ckpt --cap-add SYS_PTRACE mine:1 a b\\ c" \
    env KVSTASH_IMAGE_NAME=mine:1 KVSTASH_CKPT_HOST_DIR="$W/ckpt" KVSTASH_CKPT_MOUNT_TARGET=/ckpt \
    KVSTASH_DOCKER_EXTRA_ARGS="--cap-add SYS_PTRACE" "$RUN" --dry-run -- a "b c"
ok "run.sh user-set variables IMAGE_NAME, CKPT_HOST_DIR, CKPT_MOUNT_TARGET, DOCKER_EXTRA_ARGS; arguments quoted"
[ "$("$RUN" --help | head -n 1)" = "Usage: docker/run.sh [OPTIONS] [-- CMD...]" ] || fail "run.sh --help"

bad "--gpus 'x'" "$RUN" --dry-run --gpus x
bad "--gpus 'x'" "$RUN" --gpus x
bad "--network 'overlay'" "$RUN" --dry-run --network overlay
bad "--shm-size 'lots'" "$RUN" --dry-run --shm-size lots
bad "-p '99'" "$RUN" --dry-run --network bridge -p 99
bad "-e '1X'" "$RUN" --dry-run -e 1X
bad "-v '/nocolon'" "$RUN" --dry-run -v /nocolon
bad "--user 'a b'" "$RUN" --dry-run --user 'a b'
bad "--hf-cache '/nonexistent-kvstash'" "$RUN" --dry-run --hf-cache /nonexistent-kvstash
bad "--image needs a value" "$RUN" --dry-run --image
bad "unknown option '--bogus'" "$RUN" --dry-run --bogus
bad "CKPT_HOST_DIR" env KVSTASH_CKPT_HOST_DIR=/nonexistent-kvstash "$RUN" --dry-run
bad "--engine 'lxc'" "$RUN" --dry-run --engine lxc
bad "--workdir 'rel'" "$RUN" --dry-run --workdir rel
bad "NVME_DEV '../sda'" env KVSTASH_NVME_DEV=../sda "$RUN" --dry-run
ok "run.sh: bad options are one line on stderr, exit 2, no command"

# --engine, --runtime (podman: a global option), --entrypoint, --workdir, NVME_DEV
expect "podman --runtime runc run --rm --network host $UP -v /data:/data -w /work --entrypoint /bin/sh img:1 -c true" \
    "$RUN" --dry-run --engine podman --runtime runc --gpus none -v /data:/data --workdir /work \
    --entrypoint /bin/sh --image img:1 -- -c true
expect "docker run --runtime runc --rm --network host $U --device /dev/nvme0n1 kvstash:latest" \
    env KVSTASH_NVME_DEV=nvme0n1 "$RUN" --dry-run --runtime runc --gpus none
expect "podman run --rm --device nvidia.com/gpu=all --network host $UP kvstash:latest" \
    env KVSTASH_ENGINE=podman "$RUN" --dry-run
ok "run.sh --engine podman|docker, --runtime, --entrypoint, --workdir, NVME_DEV; podman GPUs as CDI devices"
if [ "$NOFILE" != 65536 ]; then
    "$RUN" --dry-run >/dev/null 2>"$W/err"
    { [ "$(grep -c "hard limit on open files" "$W/err")" -eq 1 ] && grep -q "hard limit on open files is $HARD" "$W/err"; } ||
        fail "run.sh does not say in one line that it lowered nofile to $HARD: $(cat "$W/err")"
    ok "run.sh: nofile lowered to the host's hard limit $HARD, said in one line"
fi

# ---- build.sh --------------------------------------------------------------------------------
expect "docker build -f $SRC/docker/Dockerfile -t kvstash:latest --platform linux/amd64 $SRC" "$BUILD" --dry-run
expect "docker build -f $SRC/docker/Dockerfile.lite -t kvstash:latest-lite --platform linux/amd64 $SRC" \
    "$BUILD" --dry-run --target lite
expect "docker build -f $SRC/docker/Dockerfile -t reg.io/kv:1.0 --platform linux/arm64 --no-cache --build-arg BASE_IMAGE=debian:12 --build-arg X=a\\ b $SRC" \
    "$BUILD" --dry-run --target full --tag reg.io/kv:1.0 --no-cache --platform linux/arm64 \
    --build-arg BASE_IMAGE=debian:12 --build-arg "X=a b"
expect "podman build -f $SRC/docker/Dockerfile.lite -t kvstash:latest-lite --platform linux/amd64 --format docker --ignorefile $SRC/docker/Dockerfile.lite.dockerignore --build-arg BASE_IMAGE=debian:12 $SRC" \
    "$BUILD" --dry-run --engine podman --target lite --base-image debian:12
BASE=$("$SRC/scripts/base-image.sh" --engine docker --print-tag)
[[ $BASE =~ ^kvstash-base:bookworm-[0-9a-f]{12}$ ]] || fail "base-image.sh --print-tag: '$BASE'"
expect "docker build -f $SRC/docker/Dockerfile -t kvstash:latest --platform linux/amd64 --build-arg BASE_IMAGE=$BASE $SRC" \
    "$BUILD" --dry-run --base-image local
ok "build.sh --target full|lite --tag --no-cache --platform --build-arg --engine --base-image IMAGE|local"
bad "--target 'huge'" "$BUILD" --dry-run --target huge
bad "--build-arg 'NOEQ'" "$BUILD" --dry-run --build-arg NOEQ
bad "--platform 'amd64'" "$BUILD" --dry-run --platform amd64
bad "--tag 'Bad Tag'" "$BUILD" --dry-run --tag 'Bad Tag'
bad "unknown option '--push'" "$BUILD" --push
bad "--engine 'lxc'" "$BUILD" --dry-run --engine lxc
bad "--base-image 'Bad'" "$BUILD" --dry-run --base-image Bad
ok "build.sh: bad options are one line on stderr, exit 2"

# ---- Dockerfiles -----------------------------------------------------------------------------
for f in Dockerfile Dockerfile.lite; do
    df=$SRC/docker/$f
    [ "$(grep -c '^FROM ' "$df")" -ge 2 ] || fail "$f is not multi-stage"
    grep -q 'scripts/install-deps.sh' "$df" || fail "$f does not install through scripts/install-deps.sh"
    grep -q 'scripts/build.sh' "$df" || fail "$f does not build through scripts/build.sh"
    grep -q '^USER kvstash' "$df" || fail "$f does not run as the non-root user"
    grep -q 'kvstash-motd' "$df" || fail "$f prints no launch message"
    grep -q 'KVSTASH_BIND=0.0.0.0' "$df" || fail "$f does not bind 0.0.0.0"
    pk=$(sed -n 's|^COPY docker/\(packages-[a-z]*\.txt\) .*|\1|p' "$df")
    [ -f "$SRC/docker/$pk" ] || fail "$f: runtime package list '$pk' missing"
    # every runtime package exists in Debian 12 (apt-cache reads the local lists; no network)
    if command -v apt-cache >/dev/null; then
        mapfile -t pkgs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$SRC/docker/$pk" | grep -v '^$')
        if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
            for p in "${pkgs[@]}"; do
                apt-cache show "$p" >/dev/null 2>&1 || fail "$f: runtime package '$p' unknown to apt"
            done
        fi
    fi
done
grep -q 'serve' "$SRC/docker/Dockerfile.lite" || fail "Dockerfile.lite does not run kvstash serve"
grep -q 'etcd-server' "$SRC/docker/packages-full.txt" || fail "full image lacks etcd"
grep -q 'ibverbs-providers' "$SRC/docker/packages-full.txt" || fail "full image lacks RDMA providers"
grep -q 'python/kvstash' "$SRC/docker/Dockerfile" || fail "full image lacks the Python layer"
ok "Dockerfiles: multi-stage, install-deps.sh + build.sh, non-root, launch message, runtime lists known to apt"

# ---- every shared library kvstash links comes with both runtime images --------------------
# (the runtime stage installs only docker/packages-*.txt: a library added to the build but not
# there would make the image's kvstash fail to start; sanitizer runtimes are test-only)
bin=${KVSTASH_BIN:?KVSTASH_BIN not set (run through ctest)}
for tool in objdump dpkg ldd; do command -v "$tool" >/dev/null || fail "$tool is needed"; done
nlibs=0
for lib in $(objdump -p "$bin" | awk '/NEEDED/ {print $2}'); do
    case $lib in ld-linux* | libc.so.* | libm.so.* | libasan* | libubsan* | libclang_rt*) continue ;; esac
    path=$(ldd "$bin" | awk -v l="$lib" '$1 == l {print $3}')
    [ -n "$path" ] || fail "ldd does not resolve $lib of $bin"
    pkg=""
    for p in "$path" "$(readlink -f "$path")" "${path#/usr}" "/usr$path"; do
        pkg=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break
    done
    [ -n "$pkg" ] || fail "no Debian package owns $path ($lib)"
    for pk in packages-full.txt packages-lite.txt; do
        grep -qx "$pkg" "$SRC/docker/$pk" || fail "kvstash needs $lib (package $pkg), missing from docker/$pk"
    done
    nlibs=$((nlibs + 1))
done
[ "$nlibs" -ge 5 ] || fail "found only $nlibs linked libraries in $bin"
ok "runtime package lists provide all $nlibs libraries kvstash links"

# ---- scripts/cluster refusals (no namespace is created here) --------------------------------
CL=$SRC/scripts/cluster
# refuses WORD CMD...: CMD exits 1 with an error line containing WORD.
refuses() {
    local word=$1 rc=0
    shift
    "$@" >/dev/null 2>"$W/err" || rc=$?
    if [ "$rc" -ne 1 ] || ! grep -qF -- "$word" "$W/err"; then
        fail "$*: exit $rc, want 1 and '$word': $(cat "$W/err")"
    fi
}
refuses "want 1..32 hosts" "$CL" up x
refuses "KVSTASH_CLUSTER_NAME" env KVSTASH_CLUSTER_NAME=Bad_Name "$CL" status
refuses "no cluster 'nosuch9'" env KVSTASH_CLUSTER_NAME=nosuch9 "$CL" status
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    refuses "needs root" setpriv --reuid=65534 --regid=65534 --clear-groups "$CL" up 1
fi
ok "scripts/cluster refuses bad N, bad names, missing clusters and non-root users, one line each"

# ---- shellcheck ------------------------------------------------------------------------------
command -v shellcheck >/dev/null || fail "shellcheck not installed (scripts/packages.txt lists it)"
mine=("$SRC"/docker/*.sh "$SRC/scripts/cluster" "$SRC/tests/integration/test_docker_scripts.sh")
for f in "$SRC"/tests/integration/test_cluster*.sh "$SRC"/tests/containers/*.sh; do
    [ -f "$f" ] && mine+=("$f")
done
shellcheck -x -P SCRIPTDIR "${mine[@]}" || fail "shellcheck findings in the deployment scripts (above)"
ok "shellcheck clean: ${#mine[@]} deployment scripts"
others=()
while IFS= read -r f; do
    case " ${mine[*]} " in *" $f "*) continue ;; esac
    others+=("$f")
done < <(find "$SRC/scripts" "$SRC/bench" "$SRC/tests/integration" -name '*.sh' -type f | sort)
# Every other script must be clean at severity warning (style notes such as SC2015 are listed,
# not fatal).
shellcheck -x -P SCRIPTDIR -S warning "${others[@]}" || fail "shellcheck warnings in the scripts above"
ok "shellcheck: ${#others[@]} other scripts clean at severity warning"
if ! shellcheck -x -P SCRIPTDIR -f gcc "${others[@]}" >"$W/sc" 2>&1; then
    echo "note: shellcheck style notes (not failures):"
    sed "s|^$SRC/||" "$W/sc" | head -40
fi
