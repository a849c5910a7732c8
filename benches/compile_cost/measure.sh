#!/usr/bin/env bash
# Compile cost of burn-ema in a user's crate: a cold build (nothing compiled; the sources already
# downloaded) and an incremental rebuild after editing main.rs (the second after the cold build),
# without and with burn-ema, each in its own target directory.
# Run: bash benches/compile_cost/measure.sh [--release]
set -euo pipefail
cd "$(dirname "$0")"
args=("$@")
for variant in without with; do
  features=(); [ "$variant" = with ] && features=(--features ema)
  target="/tmp/compile-cost-$variant"
  rm -rf "$target"
  start=$(date +%s.%N)
  CARGO_TARGET_DIR="$target" cargo build -q "${args[@]}" "${features[@]}"
  cold=$(echo "$(date +%s.%N) - $start" | bc)
  for _ in 1 2; do
    echo "// edited $(date +%s.%N)" >> src/main.rs
    start=$(date +%s.%N)
    CARGO_TARGET_DIR="$target" cargo build -q "${args[@]}" "${features[@]}"
    incremental=$(echo "$(date +%s.%N) - $start" | bc)
    sed -i '/^\/\/ edited /d' src/main.rs
  done
  echo "$variant burn-ema ${args[*]:-dev}: cold ${cold} s, incremental ${incremental} s"
done
