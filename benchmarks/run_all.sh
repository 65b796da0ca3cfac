#!/usr/bin/env bash
# Every side-by-side benchmark behind the README's performance table, in one go:
#   bash benchmarks/run_all.sh [--device cuda] [--quick] [--reps N] [--e2e-models "gpt"] [--out DIR] [--readme]
# writes DIR/results.jsonl (the machine, then one line per candidate) and DIR/results.md (the
# table: ratio medians with min..max, machine and CPU flags); --readme also regenerates the
# README's performance block from it. --quick: 2 repetitions, small batches (a smoke test, not
# a measurement); --reps N: N timed repetitions per candidate (default 8; fewer on a slow or
# shared machine); --e2e-models: the models of the end-to-end controller comparison (default
# both; its ResNet-18 part is 160 steps, long on a shared CPU). The per-layer-regions-vs-global-autocast comparison runs only where this
# device runs bf16 natively fast (on an AVX2-only CPU both sides would run torch's reference
# bf16 loops, ~20x fp32, for no information). Ratios are measured interleaved within each
# script; absolute times depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu; quick=0; out=benchmarks/results; readme=0; nreps=; e2e_models=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --readme) readme=1; shift ;;
    --reps) nreps=$2; shift 2 ;;
    --e2e-models) e2e_models=$2; shift 2 ;;
    *) echo "run_all.sh: unknown option $1 (options: --device D, --quick, --reps N, --e2e-models LIST, --out DIR, --readme)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
export ADAPREC_BENCH_RESULTS="$results"
python -m benchmarks.report "$results" --record-environment --device "$device"
models="resnet18 gpt"; reps=8; rreps=10; creps=3; steps=10; warm=2
if [ "$quick" = 1 ]; then models="gpt"; reps=2; rreps=2; creps=1; steps=2; warm=1; fi
if [ -n "$nreps" ]; then reps=$nreps; rreps=$nreps; fi
native_bf16=$(python -c "from adaprec.numerics.formats import get_format; from adaprec.runtime.executors.capability import native_is_fast; print(int(native_is_fast(get_format('bf16'), 'linear', '${device%%:*}')))" 2>/dev/null | tail -1)
for model in $models; do
  batch=64; [ "$model" = gpt ] && batch=32
  [ "$quick" = 1 ] && batch=2
  echo "## monitor overhead ($model)"
  python -m benchmarks.monitor_overhead --model "$model" --batch "$batch" --reps "$reps" --warmup "$warm" --device "$device"
  if [ "$native_bf16" = 1 ]; then
    echo "## per-layer regions vs global autocast ($model)"
    python -m benchmarks.regions_vs_autocast --model "$model" --batch "$batch" --reps "$rreps" --warmup "$warm" --device "$device"
  else
    echo "## per-layer regions vs global autocast ($model): skipped, bf16 is not native-fast on this $device"
  fi
  case " ${e2e_models:-$models} " in *" $model "*) ;; *) echo "## adaptive controllers vs static ($model): not asked for (--e2e-models)"; continue ;; esac
  echo "## adaptive controllers vs static ($model)"
  python -m benchmarks.controllers_end_to_end --model "$model" --batch "$batch" --reps "$creps" --warmup 1 --steps "$steps" --device "$device"
done
if [ "$quick" = 0 ]; then
  echo "## emulated bf16/fp16/fp8/mxfp8 vs fp32 (resnet18, gpt; one thread: stable on a shared CPU)"
  python -m benchmarks.emulated_vs_fp32 --reps "${nreps:-5}" --threads 1 --device "$device"
fi
python -m benchmarks.report "$results" --out "$out/results.md"
[ "$readme" = 1 ] && python -m benchmarks.report "$results" --readme README.md
cat "$out/results.md"
