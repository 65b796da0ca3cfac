#!/usr/bin/env bash
# Regenerates tests/data/sweep_tiny, the analysis tests' run tree, with the real trainer:
# 2 controllers x 2 seeds of a 6-step MLP on digits, plus one deliberately failed run
# (MNIST from a folder that does not exist). ~30 s on 2 cores. Run from the repository root:
#   bash tests/data/make_sweep_tiny.sh
set -euo pipefail
out=${1:-tests/data/sweep_tiny}
rm -rf "$out"
common="model=mlp trainer.max_steps=6 trainer.eval_every=3 monitor.every=2 trainer.progress=false"
python -m adaprec.run -m controller=fp32,fp16 seed=0,1 $common hydra.sweep.dir="$out"
python -m adaprec.run -m controller=fp32 dataset=mnist dataset.path=/nonexistent/mnist $common \
    hydra.sweep.dir="$out" hydra.sweep.subdir=4
