"""Block diffusion: its mask, its limits (b = 1 is AR, b >= T is masked diffusion), no leaks, its sampler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, Transformer
from models.attention.block_sparse import block_sparse_attention
from models.attention.dense import DenseAttention
from models.objectives import OBJECTIVES, build_objective
from models.objectives.block_diffusion import (
    BlockDiffusionObjective,
    block_diffusion_mask,
    dense_reference_mask,
    training_layout,
    training_mask,
    two_stream_logits,
)
from models.sampling import BlockDiffusionSampler, LogitsProcessor, SamplingError, build_sampler

pytestmark = pytest.mark.usefixtures("single_thread")

PAD, MASK, EOD = 0, 1, 2
V = 40
GREEDY = LogitsProcessor(suppress_ids=(MASK, PAD), temperature=0)


def model(causal: bool = False, seed: int = 0, init_std: float = 0.02, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, seq_len=24, n_layer=2, n_head=2, d_model=32, causal=causal, init_std=init_std)
    return Transformer(ModelConfig(**{**cfg, **kw})).eval()


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- registry, config, describe
def test_registered_with_settings_flags_and_sweep_axis():
    from experiments.config import ConfigError, RunConfig, flat_keys
    from experiments.sweep.spec import objective_axes

    assert OBJECTIVES["block_diffusion"] is BlockDiffusionObjective and BlockDiffusionObjective.causal is False
    obj = build_objective("block_diffusion", block_size=4, mc_samples=2)
    assert obj.describe() == {"mc_samples": 2, "elbo_weight": "L/l", "mask_eps": 1e-3, "curriculum": "",
                              "block_size": 4}
    assert obj.eval_passes == 2
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="block_size"):
            build_objective("block_diffusion", block_size=bad)
    cfg = RunConfig.from_dict({"objective": "block_diffusion", "block_size": 8, "eval_estimator": "time"})
    assert cfg.objective_config.block_size == 8 and cfg.model_config().causal is False
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"objective": "diffusion", "block_size": 8})  # not a diffusion setting
    assert objective_axes()["block_size"] == {"block_diffusion"}
    assert flat_keys()["block_size"] == "objective"  # the CLI makes one flat flag per key: --block-size


# --------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("T,b", [(13, 1), (13, 2), (13, 4), (13, 5), (13, 13), (13, 20), (7, 3), (16, 4)])
def test_block_lists_equal_the_dense_reference_mask(T, b):
    mask = training_mask(T, b, torch.device("cpu"))
    tc, positions = training_layout(T, b)
    assert tc == (-(-T // b) - 1) * b and positions.tolist() == list(range(tc)) + list(range(T))
    reference = dense_reference_mask(T, b)
    assert torch.equal(mask.dense(), reference)
    counts, ids = mask.kv_counts, mask.kv_indices
    for row, n in zip(ids.tolist(), counts.tolist()):  # sorted, distinct valid prefixes
        assert row[:n] == sorted(set(row[:n]))
    # the block-sparse op on these lists computes SDPA under the reference mask
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, tc + T, 8, generator=g) for _ in range(3))
    lists = block_sparse_attention(q, k, v, *mask.lists(2, 2), block_size=b, causal=False, backend="torch")
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=reference)
    assert torch.allclose(lists, dense, atol=1e-5)


def test_dense_kind_reference_path_equals_the_op_and_other_kinds_refuse_a_mask():
    T, b = 13, 4
    mask = training_mask(T, b, torch.device("cpu"))
    n = mask.k_len
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, n, 8, generator=g)  # 4 query heads over 2 key/value heads
    k, v = torch.randn(2, 2, n, 8, generator=g), torch.randn(2, 2, n, 8, generator=g)
    kind = DenseAttention(ModelConfig(n_head=4, n_kv_head=2, d_model=32))
    op = block_sparse_attention(q, k, v, *mask.lists(2, 2), block_size=b, causal=False, backend="torch")
    assert torch.allclose(kind(q, k, v, None, mask=mask), op, atol=1e-5)  # GQA, through SDPA on the CPU
    if torch.cuda.is_available():  # the Triton path of the kind
        dev = [t.cuda() for t in (q, k, v)]
        out = kind(*dev, None, mask=training_mask(T, b, torch.device("cuda")))
        assert torch.allclose(out.cpu(), op, atol=2e-3)
    window = model(attention="window", attn_block=4, attn_window=8)
    with pytest.raises(ValueError, match="takes no attention mask"):
        two_stream_logits(window, tokens(1, T), tokens(1, T), b)


TRITON_CHECK = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
import torch, torch.nn.functional as F
from models.attention.block_sparse import block_sparse_attention
from models.objectives.block_diffusion import training_mask
for T, b in ((13, 4), (13, 5), (9, 1)):
    m = training_mask(T, b, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, m.k_len, 16, generator=g, requires_grad=True) for h in (2, 1, 1))
    do = torch.randn(1, 2, m.k_len, 16, generator=g)
    outs = []
    for triton in (True, False):
        q.grad = k.grad = v.grad = None
        o = (block_sparse_attention(q, k, v, *m.lists(1, 1), block_size=b, causal=False, backend="triton") if triton
             else F.scaled_dot_product_attention(q, k, v, attn_mask=m.dense(), enable_gqa=True))
        o.backward(do)
        outs.append([o.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()])
    err = max((a - c).abs().max().item() for a, c in zip(*outs))
    sys.exit(f"T={T} b={b}: max error {err}") if err > 1e-4 else None
"""


def test_triton_kernels_on_the_block_lists_equal_dense_sdpa():
    """The op's Triton kernels (CPU interpreter, fresh process), forward and backward, GQA, partial blocks."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_positions_argument_and_plain_calls_are_unchanged():
    m = model()
    x = tokens(2, 10)
    with torch.no_grad():
        plain = m(x)
        assert torch.equal(m(x, positions=torch.arange(10)), plain)
        assert torch.equal(m(x, positions=torch.arange(10).expand(2, 10)), plain)
        assert torch.equal(m(x, logits_to_keep=4), plain[:, -4:])
        shifted = m(x, positions=torch.arange(5, 15))
        repeated = m(x, positions=torch.arange(10) // 2)
    assert torch.allclose(shifted, plain, atol=1e-5)  # RoPE is relative: a common shift changes nothing
    assert not torch.allclose(repeated, plain, atol=1e-4)  # positions reach RoPE
    with pytest.raises(ValueError, match="positions"):
        m(x, positions=torch.arange(20, 30))


# --------------------------------------------------------------------------- the two limits
def mask_query_ar_nll(ar: Transformer, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum over valid tokens of -log p(x_i | x_<i) from a causal model fed ``x_<i + [MASK]`` (one pass each)."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(x.shape[1]):
        inp = torch.cat([x[:, :i], torch.full_like(x[:, :1], MASK)], dim=1)  # (B, i + 1)
        nll = F.cross_entropy(ar(inp)[:, i].float(), x[:, i], reduction="none")
        total += (nll.double() * valid[:, i]).sum()
    return total


def test_b1_elbo_is_the_ar_nll_of_the_same_weights():
    """b = 1, count estimator: exact AR NLL of the same state dict in a causal Transformer, under the
    mask-query input convention (docstring of models.objectives.block_diffusion)."""
    bd_model = model(causal=False, init_std=0.2)
    ar = model(causal=True)
    ar.load_state_dict(bd_model.state_dict())  # the weight mapping: the identity
    x = tokens(3, 13)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[2, 9:] = False
    with torch.no_grad():
        expected = mask_query_ar_nll(ar, x, valid)
        sums = build_objective("block_diffusion", block_size=1, mc_samples=3).evaluate(
            bd_model, x, valid, torch.Generator().manual_seed(0))
        train = build_objective("block_diffusion", block_size=1, train_estimator="count").loss_sum(
            bd_model, x, valid, torch.Generator().manual_seed(1))
    assert sums.nll.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sums.mc_var.item() == 0 and sums.tokens.item() == valid.sum()
    assert train.item() == pytest.approx(expected.item(), rel=1e-5)
    # the `ar` objective's convention ([EOD] + x_<i in the query slot) is a different function of the weights
    shifted = build_objective("ar").evaluate(ar, x, valid).nll.item()
    assert abs(shifted - expected.item()) > 1e-2


@pytest.mark.parametrize("estimator", ["count", "time"])
@pytest.mark.parametrize("b", [13, 32])
def test_one_block_elbo_is_the_masked_diffusion_elbo_with_the_same_draws(estimator, b):
    m = model(causal=False, init_std=0.2)
    x = tokens(4, 13)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[3, 8:] = False
    settings = dict(mc_samples=4, eval_estimator=estimator, train_estimator=estimator)
    diff, bd = build_objective("diffusion", **settings), build_objective("block_diffusion", block_size=b, **settings)
    with torch.no_grad():
        d = diff.evaluate(m, x, valid, torch.Generator().manual_seed(7))
        e = bd.evaluate(m, x, valid, torch.Generator().manual_seed(7))
        dl = diff.loss_sum(m, x, valid, torch.Generator().manual_seed(8))
        el = bd.loss_sum(m, x, valid, torch.Generator().manual_seed(8))
    assert e.nll.item() == pytest.approx(d.nll.item(), rel=1e-5)
    assert e.mc_var.item() == pytest.approx(d.mc_var.item(), rel=1e-4) and e.tokens.item() == d.tokens.item()
    assert el.item() == pytest.approx(dl.item(), rel=1e-5)


# --------------------------------------------------------------------------- no leaks
def test_no_token_of_block_k_reaches_earlier_blocks():
    """Perturbation: changing block k (both copies) leaves the clean and the noised outputs of the blocks
    before k unchanged and changes those after it; changing only its clean copy leaves its own noised
    block unchanged too (a noised block sees the clean blocks *before* it)."""
    T, b = 13, 4
    m = model(causal=False, init_std=0.5)
    x = tokens(2, T)
    masked = torch.rand(2, T, generator=torch.Generator().manual_seed(0)) < 0.5
    xt = torch.where(masked, MASK, x)
    with torch.no_grad():
        noised, clean = two_stream_logits(m, x, xt, b)  # (2, T, V), (2, 12, V)
        for k in range(-(-T // b)):
            lo, hi = k * b, min(T, (k + 1) * b)
            y = x.clone()
            y[:, lo:hi] = (x[:, lo:hi] - 3 + 1) % (V - 3) + 3  # every token of block k changes
            n2, c2 = two_stream_logits(m, y, torch.where(masked, MASK, y), b)
            assert torch.allclose(n2[:, :lo], noised[:, :lo], atol=1e-6)
            assert torch.allclose(c2[:, :lo], clean[:, :lo], atol=1e-6)
            assert not torch.allclose(n2[:, lo:], noised[:, lo:], atol=1e-3)
            n3, _ = two_stream_logits(m, y, xt, b)  # the clean copy of block k only
            assert torch.allclose(n3[:, :hi], noised[:, :hi], atol=1e-6)
            if hi < T:
                assert not torch.allclose(n3[:, hi:], noised[:, hi:], atol=1e-3)


# --------------------------------------------------------------------------- noise
def test_per_block_count_masks_and_stratified_training_noise():
    obj = build_objective("block_diffusion", block_size=4, train_estimator="count")
    u = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[2, 6:] = False
    strata = torch.tensor([[0.1, 0.5, 0.99], [0.0, 0.3, 0.7], [0.6, 0.2, 0.9]])
    masked, t = obj.block_noise(strata, u, valid, "count")
    per_block = torch.stack([masked[:, i : i + 4].sum(1) for i in (0, 4, 8)], dim=1)  # blocks of 4, 4, 2 tokens
    lengths = torch.tensor([[4, 4, 2], [4, 4, 2], [4, 2, 0]])
    assert torch.equal(per_block, torch.where(lengths > 0, torch.ceil(strata * lengths).clamp_min(1), 0).long())
    assert not masked[2, 6:].any()
    assert torch.allclose(t[0, 4:8], torch.full((4,), 2 / 4)) and t[0, 9].item() == pytest.approx(1.0)

    def gens(ids):
        return [torch.Generator().manual_seed(i) for i in ids]

    noise = obj.training_noise(gens(range(8)), torch.arange(8.0), 8, torch.Generator().manual_seed(0), seq_len=10)
    s = noise["strata"]  # (8, 3): every (row, block) pair of the global batch its own level
    levels = s.flatten().sort().values
    assert s.shape == (8, 3) and torch.allclose(levels[1:] - levels[:-1], torch.full((23,), 1 / 24), atol=1e-6)
    assert torch.allclose((s.sort(dim=1).values.diff(dim=1)), torch.full((8, 2), 1 / 3), atol=1e-6)
    alone = obj.training_noise(gens([3]), torch.tensor([3.0]), 8, torch.Generator().manual_seed(0), seq_len=10)
    assert torch.equal(alone["u"][0], noise["u"][3]) and torch.allclose(alone["strata"], s[3:4])
    one_block = build_objective("block_diffusion", block_size=16).training_noise(
        gens(range(8)), torch.arange(8.0), 8, torch.Generator().manual_seed(0), seq_len=10)
    diffusion = build_objective("diffusion").training_noise(
        gens(range(8)), torch.arange(8.0), 8, torch.Generator().manual_seed(0), seq_len=10)
    assert torch.allclose(one_block["strata"][:, 0], diffusion["strata"])
    assert torch.equal(one_block["u"], diffusion["u"])


def test_training_loss_has_gradients_and_the_elbo_expectation():
    m = model(causal=False)
    m.train()
    x = tokens(4, 13)
    valid = torch.ones_like(x, dtype=torch.bool)
    obj = build_objective("block_diffusion", block_size=4)
    loss = obj.loss_sum(m, x, valid, torch.Generator().manual_seed(0)) / valid.sum()
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in m.parameters())
    # near-uniform logits at init: per-token ELBO ~ log V (time estimator: in expectation)
    with torch.no_grad():
        sums = build_objective("block_diffusion", block_size=4, mc_samples=4).evaluate(
            m.eval(), x, valid, torch.Generator().manual_seed(0))
    assert sums.nll.item() / sums.tokens.item() == pytest.approx(math.log(V), rel=0.05)


# --------------------------------------------------------------------------- the sampler
def recorded_lengths(m):
    lengths: list[int] = []
    handle = m.register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
    return lengths, handle


@pytest.mark.parametrize("inner", ["ancestral", "remask", "threshold"])
def test_kv_cache_sampling_equals_recompute_under_greedy(inner):
    m = model(causal=False, init_std=0.5)
    template = torch.tensor([[5, 6, 7, 8, 9] + [MASK] * 10] * 2)  # prompt ends inside block 1 (b = 4)
    run = {}
    for use_cache in (True, False):
        lengths, handle = recorded_lengths(m)
        sampler = BlockDiffusionSampler(4, inner, mask_id=MASK, processor=GREEDY, use_cache=use_cache)
        run[use_cache] = (sampler(m, template, torch.Generator().manual_seed(0)), list(lengths))
        handle.remove()
    (cached, lens_c), (full, lens_f) = run[True], run[False]
    assert torch.equal(cached.tokens, full.tokens) and cached.forward_passes == full.forward_passes == len(lens_c)
    assert torch.equal(cached.tokens[:, :5], template[:, :5]) and not (cached.tokens == MASK).any()
    # a block's first pass adds the clean block(s) before it (prompt block 0 + block 1; 1 + 2; 2 + 3), its
    # other passes read the block only
    assert [n for n in lens_c if n > 4] == [8, 8, 7] and min(lens_c) >= 3
    assert max(lens_f) == 12 + 3  # the recompute path re-reads the whole clean context
    assert cached.committed.sum(dim=0).tolist() == [10, 10]


def test_one_block_sampling_is_the_inner_sampler_and_b1_is_greedy_mask_query_ar():
    m = model(causal=False, init_std=0.5)
    template = torch.tensor([[5, 6] + [MASK] * 9])
    for inner in ("ancestral", "remask", "threshold"):
        options = {} if inner == "threshold" else {"steps": 9}
        plain = build_sampler(inner, mask_id=MASK, processor=GREEDY, **options)(
            m, template, torch.Generator().manual_seed(0))
        block = BlockDiffusionSampler(16, inner, mask_id=MASK, processor=GREEDY, **options)(
            m, template, torch.Generator().manual_seed(0))
        assert torch.equal(block.tokens, plain.tokens) and block.forward_passes == plain.forward_passes
    ar = model(causal=True)
    ar.load_state_dict(m.state_dict())
    seq = template[:, :2]
    with torch.no_grad():
        for _ in range(9):  # greedy AR in the mask-query convention
            logits = GREEDY.suppress(ar(torch.cat([seq, torch.full_like(seq[:, :1], MASK)], dim=1))[:, -1])
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    b1 = BlockDiffusionSampler(1, "remask", mask_id=MASK, processor=GREEDY)(m, template)
    assert torch.equal(b1.tokens, seq) and b1.forward_passes == 9


def test_infill_keeps_fixed_tokens_and_later_blocks_do_not_steer_earlier_ones():
    m = model(causal=False, init_std=0.5)
    template = torch.tensor([[5, MASK, MASK, 7, MASK, MASK, MASK, MASK, 9, MASK, 4, MASK]])
    sampler = BlockDiffusionSampler(4, "remask", mask_id=MASK, processor=GREEDY)
    out = sampler(m, template).tokens
    fixed = template != MASK
    assert torch.equal(out[fixed], template[fixed]) and not (out == MASK).any()
    other = template.clone()
    other[0, 10] = 20  # a fixed token of block 2
    out2 = sampler(m, other).tokens
    assert torch.equal(out2[:, :8], out[:, :8])  # blocks 0 and 1 do not see block 2


def test_sampler_refuses_options_that_do_not_apply():
    with pytest.raises(SamplingError, match="threshold"):
        BlockDiffusionSampler(4, "remask", mask_id=MASK, threshold=0.5)
    with pytest.raises(SamplingError, match="steps"):
        BlockDiffusionSampler(4, "threshold", mask_id=MASK, steps=4)
    with pytest.raises(SamplingError, match="unknown sampler"):
        BlockDiffusionSampler(4, "maskgit", mask_id=MASK)
    with pytest.raises(SamplingError, match="block size"):
        BlockDiffusionSampler(0, mask_id=MASK)
    m = model()
    with pytest.raises(SamplingError, match="seq_len"):
        BlockDiffusionSampler(4, mask_id=MASK)(m, torch.full((1, 30), MASK))
    with pytest.raises(SamplingError, match="no \\[MASK\\]"):
        BlockDiffusionSampler(4, mask_id=MASK)(m, torch.tensor([[5, 6]]))


def test_cached_mask_layout_for_a_pending_prompt():
    """First pass of block 2 after a 2-block prompt: clean blocks 0, 1 and noised block 2 as queries."""
    mask = block_diffusion_mask(2, (2,), 4, 11, 11, torch.device("cpu"))
    assert mask.block_visible().tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    later = block_diffusion_mask(2, (2,), 4, 11, 3, torch.device("cpu"))  # the noised block alone, cache of 8
    assert later.dense().shape == (3, 11) and later.dense().all()
