#!/usr/bin/env bash
# GPU training throughput: tokens/s and MFU of a ~125M-parameter model (p125m: d768 x 12 layers,
# GPT-2 vocabulary size) at sequence length 2048, dense and NSA attention, bf16-mixed with
# torch.compile, our Lightning step against a bare PyTorch loop.
#
#   bash benchmarks/gpu_train.sh OUT_DIR
#
# Self-contained: needs only torch, triton, lightning and transformers (no `datasets`, no network)
# and this repository; at most ~8 minutes on one H100/H200. Writes OUT_DIR/train_{dense,nsa}.json
# and OUT_DIR/summary.txt. MFU is against the bf16 dense peak (989 TFLOP/s on H100/H200).
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_train.sh OUT_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python -c 'import torch, triton, lightning; print("torch", torch.__version__, "triton", triton.__version__, "lightning", lightning.__version__)'
} | tee "$out/summary.txt"

for attention in dense nsa; do
  echo "== $attention" | tee -a "$out/summary.txt"
  timeout -s INT 210 python -m experiments.cli bench train --models p125m --attention "$attention" \
      --objective diffusion --seq-len 2048 --vocab-size 50304 --batch-size 8 --steps 30 --warmup 10 \
      --repeats 1 --precision bf16-mixed --compile --out "$out/train_$attention.json" 2>&1 \
    | grep -v -E "Warning|warn" | tee -a "$out/summary.txt"
done
echo "goal: >= 40% MFU for dense (the JSON has mfu, ours/bare tokens/s and ratio)" | tee -a "$out/summary.txt"
