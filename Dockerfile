# sac_continuous.py in a container: CUDA if run with --gpus all, CPU otherwise, as any host user.
#   docker build -t sac .
#   mkdir -p runs && docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/runs:/app/runs" sac --env-id Humanoid-v5
# README.md (Docker) covers GPU and CPU use; docs/docker.md how the image is built and how CI checks it.

ARG BASE_IMAGE=debian:bookworm-slim

# ---- base: Debian's Python 3.11, headless OpenGL (EGL for NVIDIA GPUs, OSMesa for CPUs), and the
# compilers that --compile needs at run time (triton's launcher on CUDA: gcc and Python's headers;
# Inductor's kernels on the CPU: g++)
FROM ${BASE_IMAGE} AS base
# Debian's package versions are not pinned: a bookworm point release drops the old ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates python3 libegl1 libgl1 libglvnd0 libosmesa6 gcc g++ libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*

# ---- build: the venv. Only /opt/venv goes on, so wheels in docker/wheels stay out of the image.
FROM base AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# Extra CA certificates (*.crt) for pip behind a TLS-intercepting proxy; the folder is empty in git.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
# wandb (--track) is optional for pip users; the image has it, at requirements-dev.txt's pin
COPY requirements.txt requirements-dev.txt /tmp/build/
# Extra wheels for pip; empty in git. CI puts torch's CPU build here (2.13.0+cpu sorts above
# PyPI's 2.13.0, so pip takes it) to get a small CPU image.
COPY docker/wheels/ /tmp/build/wheels/
RUN python3 -m venv /opt/venv \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install --no-cache-dir \
        --disable-pip-version-check --find-links /tmp/build/wheels -r /tmp/build/requirements.txt \
        "$(grep -E '^wandb==' /tmp/build/requirements-dev.txt)"

# ---- the image
FROM base
# Runs as whatever uid `docker run --user` gives, usually one with no passwd entry (so HOME would be "/"):
# HOME and every cache go to /tmp, and getpass.getuser() (torch's caches use it) reads $USER first.
# SAC_COMMAND: the script starts its resume and --output-dir advice with it, as README's CPU line
# (entrypoint.sh adds --gpus all when the container has a GPU: README's GPU line).
# graphics: the NVIDIA container toolkit then mounts the driver's EGL library too (--capture-video on GPU).
# No OMP_NUM_THREADS: the script picks its thread count as it does outside the container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    USER=sac \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    WANDB_CACHE_DIR=/tmp/wandb-cache \
    WANDB_CONFIG_DIR=/tmp/wandb-config \
    SAC_COMMAND='docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/runs:/app/runs" sac' \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
# writable by any uid, like /tmp, for a run without a bind mount (the anonymous volume copies the mode)
RUN mkdir -p /app/runs && chmod 1777 /app/runs
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# the code last, so that editing it rebuilds only these layers
COPY sac_continuous.py docker/entrypoint.sh ./
COPY benchmark/ benchmark/
# the default without --user; numeric, so that a runtime can tell it is not root
USER 1000:1000
VOLUME ["/app/runs"]
ENTRYPOINT ["/bin/sh", "/app/entrypoint.sh"]
