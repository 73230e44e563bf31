#!/bin/sh
# The image's entrypoint: python sac_continuous.py with the given flags. On a GPU (`docker run --gpus all`: the
# NVIDIA toolkit mounts nvidia-smi) the commands the script prints (SAC_COMMAND: resume, advice) carry --gpus all.
if command -v nvidia-smi >/dev/null 2>&1; then
    SAC_COMMAND="docker run --rm --gpus all ${SAC_COMMAND#docker run --rm }"
    export SAC_COMMAND
fi
exec python sac_continuous.py "$@"
