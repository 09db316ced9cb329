"""Block-sparse attention op: PyTorch reference and Triton kernels (CPU interpreter) vs float64 dense attention.

Triton runs in its interpreter: ``TRITON_INTERPRET=1`` is set below, before the kernels are
imported (the flag is read when a kernel is decorated). If another test module imported the
kernels earlier without it, the Triton cases are re-run in a subprocess by
``test_triton_cases_in_subprocess`` instead. The interpreter has no bf16: fp32 and fp16 here; bf16
is checked on the GPU by ``benchmarks/gpu_attention.sh``.

Metric: relative error ``||a - b|| / ||b||`` against float64 dense attention; fp32 < 1e-3, fp16 < 2e-3.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.attention import block_sparse_attention  # noqa: E402
from models.attention.block_sparse import BACKEND_ENV, resolve_backend, window_block_lists  # noqa: E402

try:
    from triton.runtime.interpreter import InterpretedFunction

    from models.attention.block_sparse import triton_kernels

    TRITON_IN_PROCESS = isinstance(triton_kernels._fwd_kernel, InterpretedFunction)
    TRITON_SKIP = "" if TRITON_IN_PROCESS else (
        "Triton kernels were imported before TRITON_INTERPRET=1 was set; run in a subprocess instead")
except ImportError as err:  # no usable triton: the reference is still tested
    triton_kernels, TRITON_IN_PROCESS, TRITON_SKIP = None, False, f"triton unavailable: {err}"

FP32_TOL, FP16_TOL = 1e-3, 2e-3
BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON_IN_PROCESS, reason=TRITON_SKIP or "in subprocess")),
]
# (B, T, Hq, Hkv, D, block): odd T, GQA, block sizes and head dims that are not powers of two, and
# a group too large for one dk/dv program (Hq/Hkv = 4 at block 32 takes two head packs).
SHAPES = [(2, 67, 4, 2, 16, 16), (1, 100, 2, 2, 24, 12), (1, 80, 4, 1, 16, 32)]


pytestmark = pytest.mark.usefixtures("single_thread")


def shape_id(shape: tuple[int, ...]) -> str:
    B, T, Hq, Hkv, D, L = shape
    return f"B{B}-T{T}-H{Hq}-Hkv{Hkv}-D{D}-L{L}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make_inputs(B, T, Hq, Hkv, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, T, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))
    do = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    return q, k, v, do


def random_lists(B, Hkv, n, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct random key blocks per row, random counts (some 0), junk in the unused slots."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(B, Hkv, n, n, generator=g).argsort(-1)
    counts = torch.randint(0, n + 1, (B, Hkv, n), generator=g)
    counts[:, :, 1] = 0  # an empty row everywhere
    chosen = torch.arange(n) < counts[..., None]
    picked = torch.where(chosen, order, n).sort(-1).values  # chosen ids sorted first
    junk = torch.randint(0, n, picked.shape, generator=g)
    return torch.where(chosen, picked, junk).int(), counts.int()


def list_mask(indices, counts, T, L, Hq) -> torch.Tensor:
    """(B, Hq, T, T) bool: key token in a block listed for the query token's block."""
    B, Hkv, n, S = indices.shape
    listed = torch.zeros(B, Hkv, n, n + 1, dtype=torch.bool)
    valid = torch.arange(S) < counts[..., None]
    listed.scatter_(3, torch.where(valid, indices, n).long(), True)
    blocks = torch.arange(T) // L
    mask = listed[:, :, blocks][:, :, :, blocks]  # (B, Hkv, T, T)
    return mask.repeat_interleave(Hq // Hkv, dim=1)


def position_mask(T, causal, window) -> torch.Tensor:
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = torch.ones(T, T, dtype=torch.bool)
    if causal:
        mask &= j <= i
    if window is not None:
        mask &= (i - j).abs() < window
    return mask


def dense_attention(q, k, v, mask) -> torch.Tensor:
    """float64 softmax attention under a (B, Hq, T, T) or (T, T) bool mask; fully masked rows give 0."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    any_key = mask.any(-1, keepdim=True)
    scores = torch.where(mask, scores, float("-inf"))
    p = torch.softmax(torch.where(any_key, scores, 0.0), dim=-1) * any_key
    return p @ v


def forward_backward(fn, q, k, v, do, dtype):
    """Output and (dq, dk, dv) of ``fn(q, k, v)`` with inputs cast to ``dtype``, as leaves."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return [out, *grads]


def assert_matches(got, want, tol):
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = rel_err(a, b)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_blocks_equal_dense_sdpa(backend, causal, shape):
    B, T, Hq, Hkv, D, L = shape
    q, k, v, do = make_inputs(B, T, Hq, Hkv, D)
    n = -(-T // L)
    indices = torch.arange(n, dtype=torch.int32).expand(B, Hkv, n, n)
    counts = torch.full((B, Hkv, n), n, dtype=torch.int32)
    got = forward_backward(lambda q, k, v: block_sparse_attention(
        q, k, v, indices, counts, block_size=L, causal=causal, backend=backend), q, k, v, do, torch.float32)
    want = forward_backward(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, is_causal=causal, enable_gqa=True), q, k, v, do, torch.float64)
    assert_matches(got, want, FP32_TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_window_lists_equal_windowed_attention(backend, causal):
    B, T, Hq, Hkv, D, L, window = 2, 100, 4, 2, 16, 16, 21
    q, k, v, do = make_inputs(B, T, Hq, Hkv, D, seed=1)
    indices, counts = window_block_lists(T, L, window, causal, torch.device("cpu"))
    n = indices.shape[2]
    assert indices.shape[3] < n, "window lists should be sparse here"
    got = forward_backward(lambda q, k, v: block_sparse_attention(
        q, k, v, indices.expand(B, Hkv, n, -1), counts.expand(B, Hkv, n), block_size=L, causal=causal,
        window=window, backend=backend), q, k, v, do, torch.float32)
    want = forward_backward(lambda q, k, v: dense_attention(q, k, v, position_mask(T, causal, window)),
                            q, k, v, do, torch.float64)
    assert_matches(got, want, FP32_TOL)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=shape_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_lists_with_empty_rows(backend, causal, shape):
    B, T, Hq, Hkv, D, L = shape
    q, k, v, do = make_inputs(B, T, Hq, Hkv, D, seed=2)
    indices, counts = random_lists(B, Hkv, -(-T // L), seed=3)
    got = forward_backward(lambda q, k, v: block_sparse_attention(
        q, k, v, indices, counts, block_size=L, causal=causal, backend=backend), q, k, v, do, torch.float32)
    mask = list_mask(indices, counts, T, L, Hq) & position_mask(T, causal, None)
    want = forward_backward(lambda q, k, v: dense_attention(q, k, v, mask), q, k, v, do, torch.float64)
    assert_matches(got, want, FP32_TOL)
    empty = slice(L, 2 * L)  # query block 1 has an empty list
    assert (got[0][:, :, empty] == 0).all() and (got[1][:, :, empty] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_give_zeros(backend):
    """Causal, query block 0 lists only a future block: every row masked; no NaN forward or backward."""
    B, T, Hq, Hkv, D, L = 1, 40, 2, 1, 16, 16
    q, k, v, do = make_inputs(B, T, Hq, Hkv, D, seed=4)
    indices = torch.tensor([[[[2, 0], [0, 1], [1, 2]]]], dtype=torch.int32)
    counts = torch.tensor([[[1, 2, 1]]], dtype=torch.int32)
    out, dq, dk, dv = forward_backward(lambda q, k, v: block_sparse_attention(
        q, k, v, indices, counts, block_size=L, causal=True, window=8, backend=backend), q, k, v, do, torch.float32)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    assert (out[:, :, :L] == 0).all() and (dq[:, :, :L] == 0).all()
    mask = list_mask(indices, counts, T, L, Hq) & position_mask(T, True, 8)
    want = forward_backward(lambda q, k, v: dense_attention(q, k, v, mask), q, k, v, do, torch.float64)
    assert_matches([out, dq, dk, dv], want, FP32_TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16(backend, causal):
    B, T, Hq, Hkv, D, L = SHAPES[0]
    q, k, v, do = make_inputs(B, T, Hq, Hkv, D, dtype=torch.float16, seed=5)
    indices, counts = random_lists(B, Hkv, -(-T // L), seed=6)
    got = forward_backward(lambda q, k, v: block_sparse_attention(
        q, k, v, indices, counts, block_size=L, causal=causal, backend=backend), q, k, v, do, torch.float16)
    assert got[0].dtype == torch.float16
    mask = list_mask(indices, counts, T, L, Hq) & position_mask(T, causal, None)
    want = forward_backward(lambda q, k, v: dense_attention(q, k, v, mask), q, k, v, do, torch.float64)
    assert_matches(got, want, FP16_TOL)


@pytest.mark.skipif(triton_kernels is None, reason=TRITON_SKIP)
def test_transpose_block_lists():
    indices, counts = random_lists(2, 3, 7, seed=7)
    q_indices, q_counts = triton_kernels.transpose_block_lists(indices, counts, 7)
    for b in range(2):
        for h in range(3):
            for kb in range(7):
                want = [i for i in range(7) if kb in indices[b, h, i, : counts[b, h, i]].tolist()]
                assert q_indices[b, h, kb, : q_counts[b, h, kb]].tolist() == want


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("T,L,window", [(100, 16, 21), (64, 16, 16), (50, 8, 200)])
def test_window_block_lists_cover_exactly_the_window(T, L, window, causal):
    indices, counts = window_block_lists(T, L, window, causal, torch.device("cpu"))
    reach = position_mask(T, causal, window)
    for i in range(indices.shape[2]):
        listed = indices[0, 0, i, : counts[0, 0, i]].tolist()
        needed = sorted({j // L for j in range(T) if reach[i * L : (i + 1) * L, j].any()})
        assert listed == needed


def test_backend_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None, cpu) == "torch" and resolve_backend(None, cuda) == "triton"
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert resolve_backend(None, cpu) == "triton"
    assert resolve_backend("torch", cpu) == "torch"  # the argument beats the environment
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("flash", cpu)


def test_rejects_bad_lists():
    q, k, v, _ = make_inputs(1, 32, 2, 1, 16)
    with pytest.raises(ValueError, match="kv_indices"):
        block_sparse_attention(q, k, v, torch.zeros(1, 1, 3, 1, dtype=torch.int32),
                               torch.zeros(1, 1, 3, dtype=torch.int32), block_size=16, causal=True)
    with pytest.raises(TypeError, match="int32"):
        block_sparse_attention(q, k, v, torch.zeros(1, 1, 2, 1, dtype=torch.int64),
                               torch.zeros(1, 1, 2, dtype=torch.int32), block_size=16, causal=True)


@pytest.mark.skipif(TRITON_IN_PROCESS or triton_kernels is None, reason="Triton cases ran in this process")
def test_triton_cases_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "triton"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
