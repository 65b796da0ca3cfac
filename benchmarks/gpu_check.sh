#!/usr/bin/env bash
# Everything a GPU should confirm, in one command that writes one results file:
#   bash benchmarks/gpu_check.sh [--out gpu_check.md]            # on a CUDA machine (<= 8 min)
#   bash benchmarks/gpu_check.sh --device cpu --quick --out x.md  # the dry run (a test)
# 1. the gpu-marked numerics tests (per-layer plans vs torch.autocast and GradScaler, bf16 and
#    fp16, a mixed plan as nested autocast regions, emulated vs native);
# 2. side-by-side benchmarks: monitor overhead, adaptive controllers vs static bf16, per-layer
#    regions vs one global autocast, emulated vs native per format;
# 3. the cost model's predictions on the h100 and a100 profiles against measured step times.
# A failing step is recorded in the file and the script goes on; it exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda; quick=0; out=gpu_check.md
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1 (options: --device D, --quick, --out FILE)" >&2; exit 2 ;;
  esac
done
if [ "$device" = cuda ] && ! python -c "import torch,sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check.sh: no CUDA device visible to torch; for the CPU dry run use --device cpu --quick" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results="$work/results.jsonl"
export ADAPREC_BENCH_RESULTS="$results" ADAPREC_TEST_DEVICE="$device" MPLBACKEND=Agg
python -m benchmarks.report "$results" --record-environment --device "$device"
failed=0
section() {  # section TITLE CMD...: run CMD, its output into the file as a code block
  local title=$1; shift
  echo "## $title" >> "$work/body.md"
  echo '```' >> "$work/body.md"
  if "$@" >> "$work/body.md" 2>&1; then echo '```' >> "$work/body.md"
  else echo "FAILED (exit $?): $*" >> "$work/body.md"; echo '```' >> "$work/body.md"; failed=1; fi
  echo >> "$work/body.md"
}
models="resnet18 gpt"; reps=8; steps=10; plans=10; select=(); formats=(); profiles="h100 a100"
if [ "$quick" = 1 ]; then  # every step once, as small as it gets: proves the script, measures nothing
  models="gpt"; reps=1; steps=2; plans=1; formats=(--formats bf16); profiles=h100
  select=(-k "not convnet")  # CPU has no usable fp16/bf16 convolution kernels to compare
fi
section "numerics tests on $device (pytest -m gpu)" \
  python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_numerics.py "${select[@]}"
for model in $models; do
  batch=64; [ "$model" = gpt ] && batch=32; [ "$quick" = 1 ] && batch=2
  common=(--model "$model" --batch "$batch" --device "$device" --warmup 1)
  section "monitor overhead ($model)" python -m benchmarks.monitor_overhead "${common[@]}" --reps "$reps"
  section "adaptive controllers vs static bf16 ($model)" \
    python -m benchmarks.controllers_end_to_end "${common[@]}" --reps "$reps" --steps "$steps"
  section "per-layer regions vs one global autocast ($model)" \
    python -m benchmarks.regions_vs_autocast "${common[@]}" --reps "$reps"
  section "emulated vs native per format ($model)" \
    python -m benchmarks.formats_speed "${common[@]}" --reps "$reps" "${formats[@]}"
done
for profile in $profiles; do
  section "cost model vs measured ($profile profile)" \
    python -m benchmarks.cost_validation --device "$device" --profile "$profile" --plans "$plans" --reps "$([ "$quick" = 1 ] && echo 1 || echo 3)" \
      $([ "$quick" = 1 ] && echo --models cnn)
done
{
  echo "# adaprec GPU check ($device$([ "$quick" = 1 ] && echo ', quick dry run'))"
  echo
  python -m benchmarks.report "$results"
  echo
  cat "$work/body.md"
  [ "$failed" = 1 ] && echo "**Some steps FAILED: see above.**"
} > "$out"
echo "gpu_check.sh: wrote $out$([ "$failed" = 1 ] && echo ' (some steps FAILED)')"
exit "$failed"
