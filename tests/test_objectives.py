"""Objectives against hand-computed values and the uniform-logits identity."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.objectives import build_objective


class FixedLogits(nn.Module):
    """Returns logits that depend on the input token only (a lookup table), and records inputs."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.inputs = []

    def forward(self, idx):
        self.inputs.append(idx.clone())
        return self.table[idx]


def test_ar_loss_equals_hand_computed_cross_entropy():
    V = 4
    table = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [3.0, 1.0, 0.0, 1.0]])
    model = FixedLogits(table)
    x = torch.tensor([[3, 1, 2]])
    valid = torch.tensor([[True, True, False]])
    ar = build_objective("ar", bos_id=2)
    loss = ar.loss_sum(model, x, valid) / valid.sum()
    assert model.inputs[0].tolist() == [[2, 3, 1]]  # [BOS] + x[:-1]

    def ce(logits, target):
        return math.log(sum(math.exp(v) for v in logits)) - logits[target]

    expected = (ce(table[2].tolist(), 3) + ce(table[3].tolist(), 1)) / 2  # third token is padding
    assert abs(loss.item() - expected) < 1e-6
    sums = ar.evaluate(model, x, valid)
    assert abs(sums.nll.item() - 2 * expected) < 1e-6 and sums.tokens.item() == 2 and sums.mc_var.item() == 0
    assert V == table.shape[1]


def test_uniform_logits_give_log_v_for_both_objectives():
    V, B, T = 64, 16, 32
    model = FixedLogits(torch.zeros(V, V))
    x = torch.randint(3, V, (B, T))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[-1, 20:] = False
    ar = build_objective("ar", bos_id=2).evaluate(model, x, valid)
    assert abs(ar.nll.item() / ar.tokens.item() - math.log(V)) < 1e-6
    diff = build_objective("diffusion", mask_id=1, mc_samples=8).evaluate(model, x, valid, torch.Generator().manual_seed(0))
    est, se = diff.nll.item() / diff.tokens.item(), math.sqrt(diff.mc_var.item()) / diff.tokens.item()
    assert se > 0 and abs(est - math.log(V)) < 3 * se + 1e-3
    # the training loss has the same expectation: average it over many draws
    obj = build_objective("diffusion", mask_id=1)
    g = torch.Generator().manual_seed(1)
    losses = [obj.loss_sum(model, x, valid, g).item() / valid.sum().item() for _ in range(200)]
    mean = sum(losses) / len(losses)
    sd = (sum((v - mean) ** 2 for v in losses) / (len(losses) - 1)) ** 0.5
    assert abs(mean - math.log(V)) < 3 * sd / math.sqrt(len(losses))


def test_diffusion_masks_only_valid_tokens_and_is_deterministic():
    V = 16
    model = FixedLogits(torch.zeros(V, V))
    x = torch.randint(3, V, (4, 10))
    valid = torch.ones(4, 10, dtype=torch.bool)
    valid[:, 7:] = False
    obj = build_objective("diffusion", mask_id=1, mc_samples=3)
    a = obj.evaluate(model, x, valid, torch.Generator().manual_seed(5))
    b = obj.evaluate(model, x, valid, torch.Generator().manual_seed(5))
    assert a.nll.item() == b.nll.item()
    for inp in model.inputs:
        assert (inp[:, 7:] == x.repeat_interleave(inp.shape[0] // 4, 0)[:, 7:]).all()  # padding never masked


def test_stratified_noise_levels_are_evenly_spaced():
    obj = build_objective("diffusion", mask_id=1, eps=1e-3)
    t = obj.stratified_t(8, torch.Generator().manual_seed(0)).sort().values
    gaps = (t[1:] - t[:-1]) / (1 - 1e-3)
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)
    assert t.min() >= 1e-3 and t.max() <= 1
