#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# docker/run.sh - runs a kvstash image with the options users know from Dynamo's
# container/run.sh, and the same defaults: host network, --ipc host, --shm-size=10G,
# --ulimit memlock=-1, --ulimit stack=67108864, --ulimit nofile=65536:65536, all GPUs.
# --engine docker|podman (default: docker if present, else podman). A default nofile limit
# above the host's hard limit is lowered to it, with one line saying so (else the engine fails
# with an opaque OCI error).
# --dry-run prints the exact docker command (shell-quoted, one line) and runs nothing.
# Bad options: one line on stderr, exit 2. See docs/deployment.md.
set -euo pipefail

# ---- user-set variables: edit here, or export KVSTASH_<NAME> to override one run ---------
IMAGE_NAME=${KVSTASH_IMAGE_NAME:-kvstash:latest}        # image to run (--image overrides)
CONTAINER_NAME=${KVSTASH_CONTAINER_NAME:-}              # --name (empty: docker picks one)
CKPT_HOST_DIR=${KVSTASH_CKPT_HOST_DIR:-}                # host dir with model checkpoints (empty: none)
CKPT_MOUNT_TARGET=${KVSTASH_CKPT_MOUNT_TARGET:-/models} # where CKPT_HOST_DIR appears inside
DOCKER_EXTRA_ARGS=${KVSTASH_DOCKER_EXTRA_ARGS:-}        # extra docker run arguments, split on spaces
ENGINE=${KVSTASH_ENGINE:-}                              # docker|podman (empty: docker if present)
NVME_DEV=${KVSTASH_NVME_DEV:-}                          # e.g. nvme0n1: passed as /dev/$NVME_DEV
# -------------------------------------------------------------------------------------------

SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKSPACE_TARGET=/workspace
HF_TARGET=/home/kvstash/.cache/huggingface
# ports kvstash serves, published in bridge mode (docs/deployment.md "Ports")
BRIDGE_PORTS=(8080:8080 50051:50051 9003:9003 9998:9998 9999:9999/udp 8000:8000)

usage() {
    cat <<EOF
Usage: docker/run.sh [OPTIONS] [-- CMD...]

Runs a kvstash image. Defaults follow Dynamo's container/run.sh: --network host, --ipc host,
--shm-size=10G, --ulimit memlock=-1, --ulimit stack=67108864, --ulimit nofile=65536:65536,
--gpus all, --rm.

Options:
  --image IMAGE            image to run (default: \$IMAGE_NAME = $IMAGE_NAME)
  --name NAME              container name (default: \$CONTAINER_NAME)
  --gpus all|none|N        GPUs to expose (default: all); none drops the GPU flags
  --network host|bridge|none|container:NAME
                           network mode (default: host); bridge publishes the kvstash ports,
                           including the gateway's -p 9999:9999/udp
  --user U[:G]             run as this user (default: the image's user, kvstash)
  --mount-workspace        mount this repository at $WORKSPACE_TARGET and work there
  --hf-cache DIR           mount DIR (the Hugging Face cache) at $HF_TARGET
  -v SPEC                  extra volume (repeatable), e.g. -v /data:/data:ro
  -p H:C[/udp]             extra published port (repeatable)
  -e VAR[=VALUE]           environment variable (repeatable)
  --shm-size SIZE          /dev/shm size (default: 10G)
  --ipc MODE               IPC namespace (default: host)
  --privileged             run privileged
  --rdma                   expose /dev/infiniband and add --cap-add IPC_LOCK
  --hugepages              mount every hugetlbfs scripts/host-prepare.sh mounted (from
                           /proc/mounts; /dev/hugepages when none is mounted yet)
  --entrypoint CMD         override the image's entrypoint
  --workdir DIR            working directory in the container
  --runtime NAME           OCI runtime, e.g. runc (podman's crun fails on cgroup v1 hosts)
  --engine docker|podman   container engine (default: docker if on PATH, else podman)
  --rm [true|false]        remove the container on exit (default: true)
  -it                      interactive with a terminal
  --dry-run                print the docker command and run nothing
  -h, --help               this help
  -- CMD...                command to run in the container (default: the image's)

User-set variables at the top of this script: IMAGE_NAME, CONTAINER_NAME, CKPT_HOST_DIR,
CKPT_MOUNT_TARGET, DOCKER_EXTRA_ARGS, ENGINE, NVME_DEV (an NVMe block device such as nvme0n1,
passed through as /dev/\$NVME_DEV).
EOF
}

die() {
    echo "run.sh: $*" >&2
    exit 2
}

# need OPT VALUE-COUNT: the option needs a value.
need() {
    [ "$2" -ge 2 ] || die "$1 needs a value (try --help)"
}

image=$IMAGE_NAME
name=$CONTAINER_NAME
gpus=all
network=host
user=
workspace=false
hf_cache=
shm_size=10G
ipc=host
privileged=false
rdma=false
hugepages=false
rm=true
interactive=false
dry_run=false
entrypoint=
workdir=
runtime=
engine=$ENGINE
volumes=()
ports=()
envs=()
cmd=()

while [ $# -gt 0 ]; do
    case $1 in
    --image) need "$1" $#; image=$2; shift 2 ;;
    --name) need "$1" $#; name=$2; shift 2 ;;
    --gpus) need "$1" $#; gpus=$2; shift 2 ;;
    --network) need "$1" $#; network=$2; shift 2 ;;
    --user) need "$1" $#; user=$2; shift 2 ;;
    --mount-workspace) workspace=true; shift ;;
    --hf-cache) need "$1" $#; hf_cache=$2; shift 2 ;;
    -v | --volume) need "$1" $#; volumes+=("$2"); shift 2 ;;
    -p | --publish) need "$1" $#; ports+=("$2"); shift 2 ;;
    -e | --env) need "$1" $#; envs+=("$2"); shift 2 ;;
    --shm-size) need "$1" $#; shm_size=$2; shift 2 ;;
    --ipc) need "$1" $#; ipc=$2; shift 2 ;;
    --privileged) privileged=true; shift ;;
    --rdma) rdma=true; shift ;;
    --hugepages) hugepages=true; shift ;;
    --rm)
        if [ $# -ge 2 ] && { [ "$2" = true ] || [ "$2" = false ]; }; then
            rm=$2
            shift 2
        else
            rm=true
            shift
        fi
        ;;
    -it | --interactive) interactive=true; shift ;;
    --entrypoint) need "$1" $#; entrypoint=$2; shift 2 ;;
    --workdir) need "$1" $#; workdir=$2; shift 2 ;;
    --runtime) need "$1" $#; runtime=$2; shift 2 ;;
    --engine) need "$1" $#; engine=$2; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; cmd=("$@"); break ;;
    *) die "unknown option '$1' (try --help)" ;;
    esac
done

# ---- validation: every bad value is one line and exit 2 -----------------------------------
[ -n "$image" ] || die "--image must not be empty"
case $gpus in
all | none) ;;
*) [[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus '$gpus': want all, none or a GPU count" ;;
esac
case $network in
host | bridge | none) ;;
container:?*) ;;
*) die "--network '$network': want host, bridge, none or container:NAME" ;;
esac
[ -z "$user" ] || [[ $user =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$ ]] ||
    die "--user '$user': want USER or USER:GROUP (names or numeric ids)"
[[ $shm_size =~ ^[0-9]+[bkmgBKMG]?$ ]] || die "--shm-size '$shm_size': want a number with an optional b/k/m/g unit, e.g. 10G"
[[ $ipc =~ ^(host|private|shareable|none|container:.+)$ ]] ||
    die "--ipc '$ipc': want host, private, shareable, none or container:NAME"
[ -z "$name" ] || [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "--name '$name': want letters, digits, '_', '.', '-'"
for v in "${volumes[@]}"; do
    [[ $v == ?*:/* ]] || die "-v '$v': want HOST_DIR_OR_VOLUME:/container/path[:ro]"
done
for p in "${ports[@]}"; do
    [[ $p =~ ^([0-9.]+:)?[0-9]+:[0-9]+(/(tcp|udp))?$ ]] || die "-p '$p': want HOST:CONTAINER[/udp]"
done
for e in "${envs[@]}"; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*(=.*)?$ ]] || die "-e '$e': want VAR or VAR=VALUE"
done
if [ -n "$hf_cache" ]; then
    [ -d "$hf_cache" ] || die "--hf-cache '$hf_cache': not a directory"
    hf_cache=$(cd "$hf_cache" && pwd)
fi
[ -z "$CKPT_HOST_DIR" ] || [ -d "$CKPT_HOST_DIR" ] || die "CKPT_HOST_DIR '$CKPT_HOST_DIR': not a directory"
[[ $CKPT_MOUNT_TARGET == /* ]] || die "CKPT_MOUNT_TARGET '$CKPT_MOUNT_TARGET': want an absolute path"
if [ -z "$engine" ]; then
    if command -v docker >/dev/null; then engine=docker; else engine=podman; fi
fi
case $engine in docker | podman) ;; *) die "--engine '$engine': want docker or podman" ;; esac
[ -z "$workdir" ] || [[ $workdir == /* ]] || die "--workdir '$workdir': want an absolute path"
[ -z "$runtime" ] || [[ $runtime =~ ^[A-Za-z0-9_./-]+$ ]] || die "--runtime '$runtime': want a runtime name or path, e.g. runc"
[ -z "$NVME_DEV" ] || [[ $NVME_DEV =~ ^[A-Za-z0-9_-]+$ ]] || die "NVME_DEV '$NVME_DEV': want a device name under /dev, e.g. nvme0n1"
# nofile: the defaults' 65536, or the host's hard limit when that is lower
nofile=65536
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then
    echo "run.sh: note: the host's hard limit on open files is $hard (< $nofile): using --ulimit nofile=$hard:$hard" >&2
    nofile=$hard
fi
# memlock: unlimited (-1), or the host's hard limit when it has one (bytes for --ulimit)
memlock=-1
hard_l=$(ulimit -Hl)
if [ "$hard_l" != unlimited ]; then
    memlock=$((hard_l * 1024))
    echo "run.sh: note: the host's hard memlock limit is $hard_l KiB (not unlimited): using --ulimit memlock=$memlock:$memlock (scripts/host-prepare.sh raises it)" >&2
    memlock=$memlock:$memlock
fi
# podman passes its own nproc limit, which runc cannot set here (OCI "rlimit type 6"): name
# one it can (measured: 32768 works on a host whose hard limit is 96367, 65536 does not)
nproc=
if [ "$engine" = podman ]; then
    nproc=32768
    hard_u=$(ulimit -Hu)
    [ "$hard_u" = unlimited ] || [ "$hard_u" -ge "$nproc" ] || nproc=$hard_u
fi
hugemounts=()
if [ "$hugepages" = true ]; then
    mapfile -t hugemounts < <(awk '$3 == "hugetlbfs" {print $2}' /proc/mounts 2>/dev/null)
    if [ ${#hugemounts[@]} -eq 0 ]; then
        echo "run.sh: note: no hugetlbfs is mounted (scripts/host-prepare.sh mounts one): mapping /dev/hugepages" >&2
        hugemounts=(/dev/hugepages)
    fi
fi
if [ "$network" != bridge ] && [ ${#ports[@]} -gt 0 ]; then
    echo "run.sh: note: docker discards -p with --network $network (ports are published only in bridge mode)" >&2
fi

# ---- the command ----------------------------------------------------------------------------
args=("$engine")
# podman takes --runtime before the subcommand, docker after it
[ -n "$runtime" ] && [ "$engine" = podman ] && args+=(--runtime "$runtime")
args+=(run)
[ -n "$runtime" ] && [ "$engine" = docker ] && args+=(--runtime "$runtime")
[ "$rm" = true ] && args+=(--rm)
[ "$interactive" = true ] && args+=(-it)
[ -n "$name" ] && args+=(--name "$name")
if [ "$gpus" != none ] && [ "$engine" = podman ]; then
    # podman has no --gpus: GPUs are CDI devices (nvidia-ctk cdi generate)
    if [ "$gpus" = all ]; then
        args+=(--device nvidia.com/gpu=all)
    else
        for ((g = 0; g < gpus; g++)); do args+=(--device "nvidia.com/gpu=$g"); done
    fi
elif [ "$gpus" != none ]; then
    args+=(--gpus "$gpus")
fi
args+=(--network "$network")
if [ "$network" = bridge ]; then
    for p in "${BRIDGE_PORTS[@]}"; do args+=(-p "$p"); done
fi
for p in "${ports[@]}"; do args+=(-p "$p"); done
args+=(--ipc "$ipc")
# podman refuses --shm-size with --ipc host (the host's /dev/shm is used as it is)
[ "$engine" = podman ] && [ "$ipc" = host ] || args+=("--shm-size=$shm_size")
args+=(--ulimit "memlock=$memlock" --ulimit stack=67108864 --ulimit "nofile=$nofile:$nofile")
[ -n "$nproc" ] && args+=(--ulimit "nproc=$nproc:$nproc")
[ -n "$user" ] && args+=(--user "$user")
[ "$privileged" = true ] && args+=(--privileged)
[ "$rdma" = true ] && args+=(--device /dev/infiniband --cap-add IPC_LOCK)
for h in "${hugemounts[@]}"; do args+=(-v "$h:$h"); done
[ -n "$NVME_DEV" ] && args+=(--device "/dev/$NVME_DEV")
if [ "$workspace" = true ]; then
    args+=(-v "$SOURCE_DIR:$WORKSPACE_TARGET" -w "$WORKSPACE_TARGET")
fi
[ -n "$hf_cache" ] && args+=(-v "$hf_cache:$HF_TARGET" -e "HF_HOME=$HF_TARGET")
[ -n "$CKPT_HOST_DIR" ] && args+=(-v "$CKPT_HOST_DIR:$CKPT_MOUNT_TARGET")
for v in "${volumes[@]}"; do args+=(-v "$v"); done
for e in "${envs[@]}"; do args+=(-e "$e"); done
[ -n "$workdir" ] && args+=(-w "$workdir")
[ -n "$entrypoint" ] && args+=(--entrypoint "$entrypoint")
if [ -n "$DOCKER_EXTRA_ARGS" ]; then
    read -r -a extra <<<"$DOCKER_EXTRA_ARGS"
    args+=("${extra[@]}")
fi
args+=("$image")
[ ${#cmd[@]} -gt 0 ] && args+=("${cmd[@]}")

if [ "$dry_run" = true ]; then
    printf '%q' "${args[0]}"
    printf ' %q' "${args[@]:1}"
    printf '\n'
    exit 0
fi
command -v "$engine" >/dev/null || {
    echo "run.sh: $engine not found on PATH (use --dry-run to see the command)" >&2
    exit 1
}
exec "${args[@]}"
