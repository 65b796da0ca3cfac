#!/usr/bin/env bash
# Every side-by-side benchmark behind the README's performance table, in one go:
#   bash benchmarks/run_all.sh [--device cuda] [--quick] [--out DIR] [--readme]
# writes DIR/results.jsonl (the machine, then one line per candidate) and DIR/results.md (the
# table: ratio medians with min..max, machine and CPU flags); --readme also regenerates the
# README's performance block from it. --quick: 2 repetitions, small batches (a smoke test, not
# a measurement). Ratios are measured interleaved within each script; absolute times depend on
# the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu; quick=0; out=benchmarks/results; readme=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --readme) readme=1; shift ;;
    *) echo "run_all.sh: unknown option $1 (options: --device D, --quick, --out DIR, --readme)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
export ADAPREC_BENCH_RESULTS="$results"
python -m benchmarks.report "$results" --record-environment --device "$device"
models="resnet18 gpt"; reps=8; rreps=10; creps=3; steps=10; warm=2
if [ "$quick" = 1 ]; then models="gpt"; reps=2; rreps=2; creps=1; steps=2; warm=1; fi
for model in $models; do
  batch=64; [ "$model" = gpt ] && batch=32
  [ "$quick" = 1 ] && batch=2
  echo "## monitor overhead ($model)"
  python -m benchmarks.monitor_overhead --model "$model" --batch "$batch" --reps "$reps" --warmup "$warm" --device "$device"
  echo "## per-layer regions vs global autocast ($model)"
  python -m benchmarks.regions_vs_autocast --model "$model" --batch "$batch" --reps "$rreps" --warmup "$warm" --device "$device"
  echo "## adaptive controllers vs static ($model)"
  python -m benchmarks.controllers_end_to_end --model "$model" --batch "$batch" --reps "$creps" --warmup 1 --steps "$steps" --device "$device"
done
if [ "$quick" = 0 ]; then
  echo "## emulated bf16/fp16/fp8/mxfp8 vs fp32 (resnet18, gpt; one thread: stable on a shared CPU)"
  python -m benchmarks.emulated_vs_fp32 --reps 5 --threads 1 --device "$device"
fi
python -m benchmarks.report "$results" --out "$out/results.md"
[ "$readme" = 1 ] && python -m benchmarks.report "$results" --readme README.md
cat "$out/results.md"
