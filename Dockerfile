# sac_continuous.py in a container: CUDA if run with --gpus all, CPU otherwise.
#   docker build -t sac .
#   docker run --gpus all -v "$PWD/runs:/app/runs" sac --env-id Humanoid-v5
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
COPY requirements.txt /tmp/build/requirements.txt
# Extra wheels for pip; empty in git. CI puts torch's CPU build here (2.13.0+cpu sorts above
# PyPI's 2.13.0, so pip takes it) to get a small CPU image.
COPY docker/wheels/ /tmp/build/wheels/
RUN python3 -m venv /opt/venv \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install --no-cache-dir \
        --disable-pip-version-check --find-links /tmp/build/wheels -r /tmp/build/requirements.txt

# ---- the image
FROM base
# graphics: the NVIDIA container toolkit then mounts the driver's EGL library too (--capture-video on GPU)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
RUN useradd --create-home --uid 1000 --user-group sac \
    && mkdir -p /app/runs \
    && chown sac:sac /app/runs
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# the code last, so that editing it rebuilds only these layers
COPY sac_continuous.py ./
COPY benchmark/ benchmark/
# numeric, so that a runtime can tell it is not root: the user sac
USER 1000:1000
VOLUME ["/app/runs"]
ENTRYPOINT ["python", "sac_continuous.py"]
