#!/usr/bin/env bash
# Print the pip arguments (TORCH_SPEC) that install torch with kernels for this machine's GPUs.
#
#   scripts/torch_spec.sh torch==2.14.1 torchvision==0.29.1
#
# torch's default wheels (PyPI, CUDA 13) have kernels for compute capability 7.5 and up. An
# older card (Pascal 6.x: GTX 1080Ti, P100; Volta 7.0: V100) needs the CUDA 12.6 wheels of the
# same version, from the PyTorch index: then this prints the pins followed by
# `--index-url https://download.pytorch.org/whl/cu126`. The lowest capability among the GPUs
# that `nvidia-smi --query-gpu=compute_cap` lists decides; without nvidia-smi, or when it
# fails (no driver, a driver too old for that query), the pins alone (the default wheels).
# The Makefile runs this for `make setup` unless TORCH_SPEC is given. The same threshold and
# index are in e3va_d2/utils/cuda_build.py (its startup error names this install).
set -u

if [ "$#" -eq 0 ]; then
    echo "usage: $0 torch==VERSION [torchvision==VERSION ...]" >&2
    exit 2
fi

CUDA12_INDEX="https://download.pytorch.org/whl/cu126"
DEFAULT_BUILD_OLDEST="7.5"

lowest=""
if command -v nvidia-smi > /dev/null 2>&1; then
    # "6.1" per GPU; anything else (an error text, [N/A]) is not a capability.
    lowest=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null \
        | tr -d ' \r' | grep -E '^[0-9]+\.[0-9]+$' | sort -t. -k1,1n -k2,2n | head -n 1)
fi

if [ -n "$lowest" ] && awk -v cap="$lowest" -v oldest="$DEFAULT_BUILD_OLDEST" \
        'BEGIN { split(cap, c, "."); split(oldest, o, ".");
                 exit !(c[1] < o[1] || (c[1] == o[1] && c[2] < o[2])) }'; then
    echo "$* --index-url $CUDA12_INDEX"
else
    echo "$*"
fi
