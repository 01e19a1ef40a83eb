#!/usr/bin/env bash
# Fetches NVIDIA's compiler pieces from PyPI (NVRTC, the CUDA runtime headers, the crt headers
# that WMMA's mma.h includes, ptxas) at the CUDA version of the lent H100 machines, unpacks them
# into a cache folder outside the repository, once, and prints that folder (the value for
# SPARSECUBE_CUDA_WHEELS). No GPU or driver is needed.
#
#   scripts/fetch-cuda-wheels.sh [CACHE_DIR]
set -euo pipefail
version=13.0.88
dest="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/sparsecube/cuda-wheels-$version}"
if [ -x "$dest/nvidia/cu13/bin/ptxas" ] && [ -f "$dest/nvidia/cu13/lib/libnvrtc.so.13" ] \
    && [ -f "$dest/nvidia/cu13/include/cuda_runtime.h" ] \
    && [ -f "$dest/nvidia/cu13/include/crt/mma.h" ]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work/wheels" \
    "nvidia-cuda-nvrtc==$version" "nvidia-cuda-runtime==$version" "nvidia-cuda-nvcc==$version" \
    "nvidia-cuda-crt==$version" >&2
mkdir -p "$work/unpacked"
for wheel in "$work"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$work/unpacked/"
done
chmod +x "$work/unpacked/nvidia/cu13/bin/"*
rm -rf "$dest"
mv "$work/unpacked" "$dest"
echo "$dest"
