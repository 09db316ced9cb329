#!/usr/bin/env bash
# Training throughput at the quick preset's settings (tiny model, vocab 1024, batch 8 x 128 tokens,
# fp32, dense attention; AR and diffusion), each comparison one interleaved run of
# `crossover bench train --compare` (ratio B / A, the medians and the median of the paired ratios):
#
#   before   the step before the 2026-12-05 host-overhead changes against today's, 1 thread
#   compile  eager against torch.compile, each run a fresh process (compilation counted), 1 thread
#   layout   one worker with every core against one single-thread worker per core (tokens/s summed)
#   sweep    the old step in one worker with every core (the old `sweep run` default) against
#            today's step in one single-thread worker per core (the new default for small models)
#
#   bash benchmarks/bench_quick_throughput.sh OUT_DIR [REPEATS]
#
# Writes OUT_DIR/{before,compile,layout,sweep}.json and OUT_DIR/summary.txt. About 15 minutes on 2
# quiet cores with the default 7 repeats; on a shared machine use more repeats and read the ratios only.
set -uo pipefail
out="${1:?usage: bash benchmarks/bench_quick_throughput.sh OUT_DIR [REPEATS]}"
repeats="${2:-7}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
quick=(--models tiny --vocab-size 1024 --batch-size 8 --objective ar diffusion --repeats "$repeats")
{
  echo "date: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  python -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'
} | tee "$out/summary.txt"
for compare in before compile layout sweep; do
  threads=()
  [[ $compare == before || $compare == compile ]] && threads=(--threads 1)
  echo "== $compare" | tee -a "$out/summary.txt"
  python -m experiments.cli bench train "${quick[@]}" "${threads[@]}" --steps 100 --compare "$compare" \
      --out "$out/$compare.json" 2>&1 | grep -v -E "Warning|warn" | tee -a "$out/summary.txt"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
