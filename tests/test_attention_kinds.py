"""Sparse attention kinds (window, nsa, topk) inside the backbone: no causal leak, training, dense limits.

Runs on the PyTorch backend (CPU). Sizes are chosen so selection matters: 96 tokens in 12 blocks of
8, top-4 blocks (NSA: 3 forced + 1 chosen), window 12, compression stride 4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attention.nsa import NativeSparseAttention, compress_blocks
from models.attention.topk import TopKBlockAttention
from models.config import ModelConfig
from models.transformer import Transformer

KINDS = ["window", "nsa", "topk"]
SMALL = dict(vocab_size=64, seq_len=96, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
             attn_block=8, attn_topk=4, attn_window=12)


pytestmark = pytest.mark.usefixtures("single_thread")


def make_model(kind: str, causal: bool, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**SMALL, "attention": kind, "causal": causal, **overrides})).eval()


def tokens(seed: int, batch: int = 2, length: int = 96) -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_causal_model_does_not_leak_future_tokens(kind):
    model = make_model(kind, causal=True)
    x = tokens(0)
    with torch.no_grad():
        base = model(x)
        for t in (1, 8, 13, 50, 95):  # block starts, middles and the last token
            changed = x.clone()
            changed[:, t:] = tokens(t, length=96 - t)[:, :]
            changed[:, t] = (x[:, t] + 1) % SMALL["vocab_size"]  # make sure position t differs
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), f"position < {t} changed with tokens >= {t}"
            assert not torch.allclose(out[:, t], base[:, t]), "the changed token itself had no effect"


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_model_sees_future_tokens(kind):
    model = make_model(kind, causal=False)
    x = tokens(1)
    changed = x.clone()
    changed[:, 60:] = tokens(2, length=36)
    with torch.no_grad():
        before, after = model(x), model(changed)
    assert not torch.allclose(before[:, :60], after[:, :60], atol=1e-4)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("kind", KINDS)
def test_trains_on_a_repeated_batch(kind, causal):
    """Learn to output the previous token (needs attention, in both directions) on one fixed batch."""
    model = make_model(kind, causal).train()
    x = tokens(3, batch=4, length=64)
    y = x.roll(1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(12):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, f"parameters without gradient: {missing}"
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0] - 0.75, losses


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("kind,overrides", [("window", {"attn_window": 96}), ("topk", {"attn_topk": 12})],
                         ids=["window>=T", "topk>=blocks"])
def test_full_coverage_equals_dense(kind, overrides, causal):
    dense = make_model("dense", causal)
    sparse = make_model(kind, causal, **overrides)
    sparse.load_state_dict(dense.state_dict())
    x = tokens(5)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), atol=2e-5, rtol=1e-4)


def qk(B=2, Hq=4, Hkv=2, T=96, D=16, seed=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, Hq, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)


def listed(indices, counts, b, h, i) -> list[int]:
    return indices[b, h, i, : counts[b, h, i]].tolist()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_topk_lists(causal):
    core = TopKBlockAttention(ModelConfig(**SMALL, attention="topk", causal=causal))
    q, k = qk()
    indices, counts = core.block_lists(q, k)
    n = indices.shape[2]
    for b in range(2):
        for h in range(2):
            for i in range(n):
                blocks = listed(indices, counts, b, h, i)
                assert blocks == sorted(set(blocks)) and i in blocks
                assert len(blocks) == min(4, i + 1 if causal else n)
                assert not causal or max(blocks) <= i


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_nsa_lists(causal):
    core = NativeSparseAttention(ModelConfig(**SMALL, attention="nsa", causal=causal))
    q, k = qk()
    _, p_cmp = core.compressed(q, k, k)
    indices, counts = core.block_lists(p_cmp, q.shape[2])
    n = indices.shape[2]
    for b in range(2):
        for h in range(2):
            for i in range(n):
                blocks = listed(indices, counts, b, h, i)
                forced = {0, max(i - 1, 0), i} if causal else {i}
                assert blocks == sorted(set(blocks)) and forced <= set(blocks)
                assert len(blocks) == min(4, i + 1 if causal else n)
                assert not causal or max(blocks) <= i


def test_nsa_selection_follows_compressed_mass():
    """Keys aligned with the queries in block 5 only: block 5 must win the one free slot of every row."""
    config = ModelConfig(**{**SMALL, "attn_topk": 2}, attention="nsa", causal=False)
    core = NativeSparseAttention(config)
    q = torch.zeros(1, 4, 96, 16)
    q[..., 0] = 4.0
    k = torch.zeros(1, 2, 96, 16)
    k[:, :, 40:48, 0] = 4.0  # block 5
    _, p_cmp = core.compressed(q, k, k)
    indices, counts = core.block_lists(p_cmp, 96)
    for i in range(12):
        assert 5 in listed(indices, counts, 0, 0, i)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_compress_blocks(causal):
    x = torch.randn(1, 1, 30, 3)
    got = compress_blocks(x, 8, 4, causal)
    starts = range(0, 23, 4) if causal else range(0, 27, 4)  # complete blocks only / cover every token
    want = torch.stack([x[0, 0, s : s + 8].mean(0) for s in starts])
    torch.testing.assert_close(got[0, 0], want)
