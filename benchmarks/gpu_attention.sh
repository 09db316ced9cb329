#!/usr/bin/env bash
# GPU check of the block-sparse attention Triton kernels, then the attention benchmark up to 64k tokens.
#
#   usage (from the repository root):  bash benchmarks/gpu_attention.sh OUT_DIR
#
# Needs one CUDA GPU with torch and triton (no network, no `datasets`, no install step); at most
# ~8 minutes: kernel check <= 2 min, benchmark <= 3.5 min, FlexAttention comparison <= 2 min (each
# step is cut by `timeout -s INT`; a cut benchmark still prints the rows it measured and its JSON is
# rewritten after every case). Benchmark settings follow the NSA paper: block 64, top-16 blocks,
# window 512, 8 query / 2 kv heads of dim 64, bf16, batch 1. Writes to OUT_DIR:
#   env.txt           GPU, driver, torch/triton versions
#   kernel_check.txt  Triton (bf16, also fp32/fp16) vs the PyTorch reference (fp32): forward, dq, dk, dv
#   bench.txt/.json   dense SDPA vs window / nsa / topk / raw op, causal and bidirectional, 1k..64k
#   flex.txt/.json    dense SDPA vs FlexAttention (sliding window) vs window kind, causal, 16k and 64k
#                     (FlexAttention compiles per length, so it gets few lengths)
# Exit status: non-zero if the kernel check failed or a benchmark case errored.
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu_attention.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET CROSSOVER_ATTENTION_BACKEND
status=0

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} | tee "$out/env.txt"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1

echo "== kernel check"
timeout 120 python - <<'EOF' 2>&1 | tee "$out/kernel_check.txt"
import sys, time

import torch

from models.attention.block_sparse import topk_block_lists, window_block_lists
from models.attention.block_sparse.naive import block_sparse_attention_torch
from models.attention.block_sparse.triton_kernels import block_sparse_attention_triton

dev = torch.device("cuda")
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}  # relative error vs fp32 reference


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def lists(kind, B, Hkv, T, L, causal, window, g):
    n = -(-T // L)
    if kind == "all":
        return torch.arange(n, dtype=torch.int32, device=dev).expand(B, Hkv, n, n), torch.full(
            (B, Hkv, n), n, dtype=torch.int32, device=dev)
    if kind == "window":
        idx, cnt = window_block_lists(T, L, window, causal, dev)
        return idx.expand(B, Hkv, n, -1), cnt.expand(B, Hkv, n)
    # random sorted lists of up to 8 blocks; rows whose allowed set is empty get count 0
    scores = torch.rand(B, Hkv, n, n, generator=g, device=dev)
    allowed = torch.rand(B, Hkv, n, n, generator=g, device=dev) < 0.3
    allowed[:, :, 1] = False
    return topk_block_lists(scores, 8, allowed=allowed)


def grads(fn, q, k, v, do):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, do)]


cases = [  # B, T, Hq, Hkv, D, L, lists, window
    (2, 1000, 8, 2, 64, 64, "all", None),
    (1, 4099, 8, 2, 128, 64, "window", 300),
    (2, 2048, 4, 4, 64, 128, "random", None),
    (1, 3000, 16, 1, 64, 32, "random", 100),
    (1, 8192, 16, 4, 128, 64, "window", 512),
]
failures = 0
g = torch.Generator(device=dev).manual_seed(0)
print(f"{'dtype':9} {'case':44} {'out':>8} {'dq':>8} {'dk':>8} {'dv':>8}  ms(fwd+bwd)  result")
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for B, T, Hq, Hkv, D, L, kind, window in cases if dtype == torch.bfloat16 else cases[:2]:
        for causal in (True, False):
            q, k, v = (torch.randn(B, h, T, D, generator=g, device=dev).to(dtype) for h in (Hq, Hkv, Hkv))
            do = torch.randn(B, Hq, T, D, generator=g, device=dev).to(dtype)
            idx, cnt = lists(kind, B, Hkv, T, L, causal, window, g)
            kw = dict(block_size=L, causal=causal, window=window)
            want = grads(lambda q, k, v: block_sparse_attention_torch(q, k, v, idx, cnt, **kw),
                         q.float(), k.float(), v.float(), do.float())
            got = grads(lambda q, k, v: block_sparse_attention_triton(q, k, v, idx, cnt, **kw), q, k, v, do)
            torch.cuda.synchronize()
            start = time.perf_counter()
            again = grads(lambda q, k, v: block_sparse_attention_triton(q, k, v, idx, cnt, **kw), q, k, v, do)
            torch.cuda.synchronize()
            ms = 1e3 * (time.perf_counter() - start)
            errs = [rel(a, b) for a, b in zip(got, want)]
            finite = all(torch.isfinite(t).all().item() for t in got)
            deterministic = all(torch.equal(a, b) for a, b in zip(got, again))
            ok = finite and deterministic and max(errs) < TOL[dtype]
            failures += not ok
            name = f"B{B}-T{T}-H{Hq}-Hkv{Hkv}-D{D}-L{L}-{kind}-{'causal' if causal else 'bidir'}"
            note = "ok" if ok else f"FAIL (finite={finite}, deterministic={deterministic}, tol={TOL[dtype]})"
            print(f"{str(dtype)[6:]:9} {name:44} " + " ".join(f"{e:8.1e}" for e in errs) + f"  {ms:11.2f}  {note}")
print(f"kernel check: {failures} failure(s)")
sys.exit(1 if failures else 0)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmark"
timeout -s INT 210 python -m experiments.cli bench attention --device cuda --dtype bfloat16 --no-progress \
  --topk 16 --window 512 --methods dense,window,nsa,topk,op --lengths 1024,2048,4096,8192,16384,32768,65536 \
  --repeats 5 --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== FlexAttention comparison"
timeout -s INT 120 python -m experiments.cli bench attention --device cuda --dtype bfloat16 --no-progress \
  --topk 16 --window 512 --methods dense,flex,window --modes causal --lengths 16384,65536 \
  --repeats 5 --json "$out/flex.json" 2>&1 | tee "$out/flex.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "results in $out (status $status)"
exit $status
