#!/usr/bin/env bash
# Builds tollgate with the embedded engine on CUDA (not part of CI: the CUDA kernels take long
# on a small machine). The CUDA compiler, runtime headers and cuBLAS come from NVIDIA's PyPI
# wheels, installed into the cache directory and arranged as a toolkit root (nvcc finds its
# headers relative to its own bin/), so nothing is installed system-wide.
#
#   scripts/build-cuda.sh [ARCHS]      # ARCHS: CMAKE_CUDA_ARCHITECTURES, default "90" (H100/H200);
#                                      # e.g. "80;90" adds A100. Output: target-cuda/release/tollgate
#
# `cuda-no-vmm` is used: it needs no driver library (libcuda.so) at link time, so the build
# works on a machine without a GPU; the binary finds the driver at run time. To run it, put
# the toolkit's lib64 on LD_LIBRARY_PATH (printed at the end) for libcudart and libcublas.
set -euo pipefail
cd "$(dirname "$0")/.."
archs=${1:-90}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tollgate"
wheels="$cache/cuda-wheels"
root="$cache/cuda-12"
log() { echo "[build-cuda] $*" >&2; }
t0=$SECONDS

if [ ! -x "$root/bin/nvcc" ]; then
  log "installing the CUDA 12 compiler, runtime and cuBLAS wheels into $wheels"
  python3 -m pip install --quiet --target "$wheels" \
    'nvidia-cuda-nvcc-cu12==12.8.*' 'nvidia-cuda-runtime-cu12==12.8.*' \
    'nvidia-cublas-cu12==12.8.*' 'nvidia-cuda-cccl-cu12==12.8.*' >&2
  nv="$wheels/nvidia"
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"/{include,lib64}
  # bin/ is copied, not linked: nvcc reads nvcc.profile next to its real path.
  cp -a "$nv/cuda_nvcc/bin" "$root.tmp/bin"
  ln -s "$nv/cuda_nvcc/nvvm" "$root.tmp/nvvm"
  for pkg in cuda_nvcc cuda_runtime cublas cuda_cccl; do
    [ -d "$nv/$pkg/include" ] && cp -as "$nv/$pkg/include/." "$root.tmp/include/"
    for d in lib lib64; do
      [ -d "$nv/$pkg/$d" ] && cp -as "$nv/$pkg/$d/." "$root.tmp/lib64/"
    done
  done
  # The wheels ship only versioned sonames; the linker wants the plain names too.
  (cd "$root.tmp/lib64" && for f in libcudart.so.12 libcublas.so.12 libcublasLt.so.12; do
     [ -e "$f" ] && ln -sf "$f" "${f%.12}"
   done)
  rm -rf "$root" && mv "$root.tmp" "$root"
fi
"$root/bin/nvcc" --version | tail -1 >&2

export CUDA_PATH="$root" CUDAToolkit_ROOT="$root" CUDACXX="$root/bin/nvcc"
export PATH="$root/bin:$PATH" LIBRARY_PATH="$root/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CMAKE_CUDA_ARCHITECTURES="$archs" CMAKE_CUDA_COMPILER="$root/bin/nvcc"
mkdir -p target-cuda
log "building --features cuda,cuda-no-vmm for sm_$archs (log: target-cuda/build-$archs.log)"
if ! cargo build --release --locked --features cuda,cuda-no-vmm --target-dir target-cuda \
  >"target-cuda/build-$archs.log" 2>&1; then
  tail -n 50 "target-cuda/build-$archs.log" >&2
  exit 1
fi
log "built in $(( (SECONDS - t0) / 60 )) min; disk: toolkit $(du -sh "$wheels" | cut -f1), target-cuda $(du -sh target-cuda | cut -f1)"
echo "export LD_LIBRARY_PATH='$root/lib64'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
echo "target-cuda/release/tollgate"
