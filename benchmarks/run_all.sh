#!/usr/bin/env bash
# Every side-by-side benchmark behind the README's Performance table, in one go.
#   bash benchmarks/run_all.sh [--device cuda] > bench.txt
# Ratios are measured interleaved within each script; absolute times depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=("$@")
for model in resnet18 gpt; do
  batch=64; [ "$model" = gpt ] && batch=32
  echo "## monitor overhead ($model)"
  python -m benchmarks.monitor_overhead --model "$model" --batch "$batch" --reps 8 --warmup 2 "${extra[@]}"
  echo "## per-layer regions vs global autocast ($model)"
  python -m benchmarks.regions_vs_autocast --model "$model" --batch "$batch" --reps 10 --warmup 3 "${extra[@]}"
  echo "## adaptive controllers vs static ($model)"
  python -m benchmarks.controllers_end_to_end --model "$model" --batch "$batch" --reps 3 --warmup 1 --steps 10 "${extra[@]}"
done
echo "## emulated fp16 vs fp32 (resnet18)"
python -m benchmarks.emulated_vs_fp32 --reps 8 "${extra[@]}"
