#!/usr/bin/env bash
# Builds tollgate with the embedded engine on CUDA (not part of CI: the CUDA kernels take long
# on a small machine). The CUDA compiler, runtime headers and cuBLAS come from NVIDIA's PyPI
# wheels, installed into the cache directory, so nothing is installed system-wide.
#
# CUDA 13's wheels (nvidia-cuda-nvcc, -nvvm, -cuda-runtime, -cublas, -cuda-cccl) are used: they
# install one toolkit root (nvidia/cu13: bin/nvcc with its nvcc.profile, nvvm/bin/cicc,
# include/, lib/). The CUDA 12 wheels (nvidia-cuda-nvcc-cu12 12.x) ship only ptxas and the
# headers, no nvcc driver, so they cannot compile ggml's kernels (checked: 12.8.93, 12.9.86).
# CUDA 13 builds sm_75 and newer and needs an NVIDIA driver of the 580 series or later.
#
#   scripts/build-cuda.sh [ARCHS]      # ARCHS: CMAKE_CUDA_ARCHITECTURES, default "90" (H100/H200);
#                                      # e.g. "80;90" adds A100. Output: target-cuda/release/tollgate
#
# `cuda-no-vmm` is used: it needs no driver library (libcuda.so) at link time, so the build
# works on a machine without a GPU; the binary finds the driver at run time. To run it, put
# the toolkit's lib on LD_LIBRARY_PATH (printed at the end) for libcudart and libcublas.
set -euo pipefail
cd "$(dirname "$0")/.."
archs=${1:-90}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tollgate"
wheels="$cache/cuda13-wheels"
root="$wheels/nvidia/cu13"
log() { echo "[build-cuda] $*" >&2; }
t0=$SECONDS

if [ ! -x "$root/bin/nvcc" ] || [ ! -x "$root/nvvm/bin/cicc" ]; then
  log "installing the CUDA 13 compiler, runtime and cuBLAS wheels into $wheels"
  python3 -m pip install --quiet --upgrade --target "$wheels" \
    'nvidia-cuda-nvcc==13.*' 'nvidia-nvvm==13.*' 'nvidia-cuda-runtime==13.*' \
    'nvidia-cublas==13.*' 'nvidia-cuda-cccl==13.*' >&2
fi
# The wheels ship only versioned sonames; CMake's FindCUDAToolkit and the linker want the
# plain names too.
for f in "$root"/lib/lib{cudart,cublas,cublasLt}.so.*; do
  [ -e "$f" ] && ln -sf "$(basename "$f")" "${f%%.so.*}.so"
done
"$root/bin/nvcc" --version | tail -1 >&2

export CUDA_PATH="$root" CUDAToolkit_ROOT="$root" CUDACXX="$root/bin/nvcc"
export PATH="$root/bin:$PATH" LIBRARY_PATH="$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CMAKE_CUDA_ARCHITECTURES="$archs" CMAKE_CUDA_COMPILER="$root/bin/nvcc"
mkdir -p target-cuda
log "building --features cuda,cuda-no-vmm for sm_$archs (log: target-cuda/build-$archs.log)"
if ! cargo build --release --locked --features cuda,cuda-no-vmm --target-dir target-cuda \
  >"target-cuda/build-$archs.log" 2>&1; then
  tail -n 50 "target-cuda/build-$archs.log" >&2
  exit 1
fi
log "built in $(( (SECONDS - t0) / 60 )) min; disk: toolkit $(du -sh "$wheels" | cut -f1), target-cuda $(du -sh target-cuda | cut -f1)"
echo "export LD_LIBRARY_PATH='$root/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
echo "target-cuda/release/tollgate"
