#!/usr/bin/env bash
# fuzz/run.sh [SECONDS_PER_TARGET=30] [JOBS=1]: builds the cargo-fuzz targets on the stable toolchain and runs
# each (or those in FUZZ_TARGETS, e.g. FUZZ_TARGETS="frame tls") for a fixed time from a working copy of the
# committed seeds (fuzz/corpus stays as committed). Prints each target's executions and the total; exits 1 if any
# target found a failing input (saved in fuzz/artifacts/; commit it to fuzz/regressions/<target>/ with the fix, and
# `cargo test --test fuzz_regressions` replays it).
#
# Stable Rust has no -Zsanitizer, so the targets are built with `--sanitizer none` (libFuzzer's coverage
# instrumentation works on stable); the code under test has no `unsafe` but the wide unmasking calls (safe code
# compiled for AVX2 / AVX-512), so AddressSanitizer would find nothing that safe Rust's bounds checks do not
# already turn into a panic.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30} jobs=${2:-1}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo fuzz build --sanitizer none -O >/dev/null 2>&1 || cargo fuzz build --sanitizer none -O
total=0 failed=0
for target in ${FUZZ_TARGETS:-handshake frame h2_frame h2_conn hpack connection endpoint endpoint_h2 deflate lz tls}; do
  work=fuzz/work/$target
  mkdir -p "$work"
  cp -n fuzz/corpus/$target/* "$work"/ 2>/dev/null || true
  log=$(mktemp)
  if ! cargo fuzz run --sanitizer none -O "$target" "$work" -- -max_total_time="$secs" -jobs="$jobs" -workers="$jobs" \
      -print_final_stats=1 -max_len=4096 >"$log" 2>&1; then
    failed=1
    grep -E "panicked|ERROR|Test unit written" "$log" | head -5
  fi
  runs=$(grep -h "stat::number_of_executed_units" "$log" fuzz-*.log 2>/dev/null | awk '{s += $2} END {printf "%.0f", s}')
  rm -f fuzz-*.log "$log"
  printf '%-11s %12d executions in %ss\n' "$target" "$runs" "$secs"
  total=$((total + runs))
done
printf '%-11s %12d executions\n' total "$total"
exit "$failed"
