#!/usr/bin/env bash
# torch.compile on whole quick-scale cells: `crossover train` eager against `--compile`, interleaved
# (eager, compile, eager, compile, ...), one thread, the stdlib corpus, evaluated at the quick
# preset's epochs; prints each run's wall time and train_time_s (the optimiser steps, compilation
# included). Settings of the quick preset as of
# 2026-12-04 (before its regularisers): tiny, vocab 1024, batch 8, lr 2e-3 constant, 50 warmup steps.
#
#   bash benchmarks/compile_quick_cells.sh OUT_DIR [REPEATS] [ar|diffusion] [U] [EPOCHS]
#
# The inductor cache is OUT_DIR/inductor (warm after the first compiled run: a sweep's later cells);
# the cold cost of a fresh machine is the first compiled run's, or set TORCHINDUCTOR_CACHE_DIR per run.
set -uo pipefail
out="${1:?usage: bash benchmarks/compile_quick_cells.sh OUT_DIR [REPEATS] [ar|diffusion] [U] [EPOCHS]}"
repeats="${2:-5}"; objective="${3:-ar}"; U="${4:-25000}"; epochs="${5:-16}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export TORCHINDUCTOR_CACHE_DIR="$PWD/$out/inductor"
extra=()
[[ $objective == diffusion ]] && extra=(--mc-samples 4 --eval-estimator count)
# evaluated at the quick preset's epochs up to EPOCHS (and at EPOCHS)
eval_epochs=$(python -c "e = $epochs; print(sorted({x for x in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96) if x <= e} | {e}))")
for i in $(seq "$repeats"); do
  for flag in --no-compile --compile; do
    run="$out/$objective-$flag"
    rm -rf "$run"
    start=$(date +%s.%N)
    python -m experiments.cli train --out "$run" --objective "$objective" --unique-tokens "$U" --epochs "$epochs" \
        --model tiny --vocab-size 1024 --batch-size 8 --lr 2e-3 --schedule constant --warmup-steps 50 \
        --val-tokens 8192 "${extra[@]}" --eval-epochs "$eval_epochs" --threads 1 --no-progress "$flag" \
        > "$run.log" 2>&1 || { echo "failed: see $run.log"; exit 1; }
    wall=$(python -c "import time; print(round(time.time() - $start, 1))")
    echo "$objective U=$U E=$epochs $flag wall ${wall}s train_time $(python -c \
        "import json; print(json.load(open('$run/run.json'))['train_time_s'])")s"
  done
done
