#!/usr/bin/env bash
# Runs each cargo-fuzz target for a short time (default 20 s each): ./scripts/fuzz.sh [seconds]
# Needs cargo-fuzz (installed here if missing). The stable toolchain runs libFuzzer with
# RUSTC_BOOTSTRAP=1 and no sanitizer (-s none); crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in documents paths config exec_output; do
  echo "fuzz.sh: $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run -s none "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=65536 2>&1 | grep -E "^(Done|INFO: -max_total_time|==|SUMMARY|thread|panicked|#[0-9]+.*DONE)" || true
  if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then echo "fuzz.sh: $t found a crash: fuzz/artifacts/$t" >&2; exit 1; fi
done
echo "fuzz.sh: no crash"
