"""Objectives against hand-computed values and the uniform-logits identity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.objectives import TokenIds, build_objective


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
    ar = build_objective("ar")
    loss = ar.loss_sum(model, x, valid) / valid.sum()
    assert model.inputs[0].tolist() == [[2, 3, 1]]  # [BOS] + x[:-1]

    def ce(logits, target):
        return math.log(sum(math.exp(v) for v in logits)) - logits[target]

    expected = (ce(table[2].tolist(), 3) + ce(table[3].tolist(), 1)) / 2  # third token is padding
    assert abs(loss.item() - expected) < 1e-6
    sums = ar.evaluate(model, x, valid)
    assert abs(sums.nll.item() - 2 * expected) < 1e-6 and sums.tokens.item() == 2 and sums.mc_var.item() == 0
    # the start token is the tokenizer's [EOD], taken from TokenIds, not a constant of the objective
    build_objective("ar", ids=TokenIds(eod=V - 1)).loss_sum(model, x, valid)
    assert model.inputs[-1].tolist() == [[V - 1, 3, 1]]


def test_uniform_logits_give_log_v_for_both_objectives():
    V, B, T = 64, 16, 32
    model = FixedLogits(torch.zeros(V, V))
    x = torch.randint(3, V, (B, T))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[-1, 20:] = False
    ar = build_objective("ar").evaluate(model, x, valid)
    assert abs(ar.nll.item() / ar.tokens.item() - math.log(V)) < 1e-6
    diff = build_objective("diffusion", mc_samples=8, eval_estimator="time").evaluate(
        model, x, valid, torch.Generator().manual_seed(0))
    est, se = diff.nll.item() / diff.tokens.item(), math.sqrt(diff.mc_var.item()) / diff.tokens.item()
    assert se > 0 and abs(est - math.log(V)) < 3 * se + 1e-3
    # the exact-count estimator has no Monte Carlo noise when every prediction costs log V
    count = build_objective("diffusion", mc_samples=8).evaluate(model, x, valid, torch.Generator().manual_seed(0))
    assert abs(count.nll.item() / count.tokens.item() - math.log(V)) < 1e-6 and count.mc_var.item() < 1e-6
    # the training loss has the same expectation: average it over many draws
    obj = build_objective("diffusion")
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
    obj = build_objective("diffusion", mc_samples=3)
    a = obj.evaluate(model, x, valid, torch.Generator().manual_seed(5))
    b = obj.evaluate(model, x, valid, torch.Generator().manual_seed(5))
    assert a.nll.item() == b.nll.item()
    for inp in model.inputs:
        assert (inp[:, 7:] == x.repeat_interleave(inp.shape[0] // 4, 0)[:, 7:]).all()  # padding never masked


def test_training_noise_is_stratified_across_the_global_batch():
    obj = build_objective("diffusion", eps=1e-3)
    def gens(ids):
        return [torch.Generator().manual_seed(i) for i in ids]

    noise = obj.training_noise(gens(range(8)), torch.arange(8.0), 8, torch.Generator().manual_seed(0), seq_len=5)
    s = noise["strata"].sort().values
    assert torch.allclose(s[1:] - s[:-1], torch.full((7,), 1 / 8), atol=1e-6) and 0 <= s.min() and s.max() < 1
    # a row's draws depend on its own generator and position only, not on which rows share its micro-batch
    alone = obj.training_noise(gens([3]), torch.tensor([3.0]), 8, torch.Generator().manual_seed(0), seq_len=5)
    assert torch.equal(alone["u"][0], noise["u"][3]) and torch.allclose(alone["strata"], noise["strata"][3:4])


def test_count_and_time_estimators_agree_on_a_real_model():
    from models import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=40, seq_len=24, causal=False)).eval()
    x = torch.randint(3, 40, (24, 24))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[0, 10:] = False
    out = {}
    with torch.no_grad():
        for est in ("count", "time"):
            s = build_objective("diffusion", mc_samples=16, eval_estimator=est).evaluate(
                model, x, valid, torch.Generator().manual_seed(3))
            out[est] = (s.nll.item() / s.tokens.item(), math.sqrt(s.mc_var.item()) / s.tokens.item())
    (c, c_se), (t, t_se) = out["count"], out["time"]
    assert abs(c - t) < 3 * math.hypot(c_se, t_se) and c_se < t_se


def test_count_estimator_masks_exactly_l_tokens():
    V = 16
    model = FixedLogits(torch.zeros(V, V))
    x = torch.randint(3, V, (3, 20))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[2, 7:] = False
    build_objective("diffusion", mc_samples=5).evaluate(model, x, valid, torch.Generator().manual_seed(0))
    masked = (model.inputs[0] == 1)  # (15, 20): 5 draws per sequence
    counts = masked.sum(dim=1).view(3, 5)
    assert counts[:2].min() >= 1 and counts[:2].max() <= 20 and counts[2].max() <= 7
    assert not masked.view(3, 5, 20)[2, :, 7:].any()  # padding never masked
    assert len(set(counts[0].tolist())) == 5  # stratified: five different counts


def test_count_training_loss_is_exact_for_uniform_logits_and_masks_l_tokens():
    V = 32
    model = FixedLogits(torch.zeros(V, V))
    x = torch.randint(3, V, (8, 16))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[-1, 5:] = False
    obj = build_objective("diffusion", train_estimator="count")
    loss = obj.loss_sum(model, x, valid, torch.Generator().manual_seed(0)) / valid.sum()
    assert abs(loss.item() - math.log(V)) < 1e-5  # every row contributes exactly L * log V
    counts = (model.inputs[0] == 1).sum(dim=1)
    assert len(set(counts[:-1].tolist())) > 4 and counts.min() >= 1  # stratified exact counts


def test_ar_input_masking_rate_zero_is_plain_ar_and_rate_r_masks_inputs_not_targets():
    torch.manual_seed(0)
    V, B, T = 16, 64, 33
    table = torch.randn(V, V)
    x = torch.randint(3, V, (B, T))
    valid = torch.ones_like(x, dtype=torch.bool)
    plain = build_objective("ar")
    zero = build_objective("ar", input_mask_rate=0.0)
    assert not zero.uses_training_noise and zero.training_noise([], torch.zeros(0), 1, None, T) is None
    model = FixedLogits(table)
    assert zero.loss_sum(model, x, valid).item() == plain.loss_sum(model, x, valid).item()

    masked = build_objective("ar", input_mask_rate=0.25)
    model = FixedLogits(table)
    loss = masked.loss_sum(model, x, valid, torch.Generator().manual_seed(1))
    inp = model.inputs[-1]
    reference = torch.cat([torch.full((B, 1), 2), x[:, :-1]], dim=1)  # [EOD] + x[:-1]
    hidden = inp == 1  # [MASK]
    assert not hidden[:, 0].any() and (inp[~hidden] == reference[~hidden]).all()
    assert abs(hidden[:, 1:].float().mean().item() - 0.25) < 0.02  # 2048 inputs: 3.5 standard errors
    # the targets are unchanged: the loss is the CE of x under the logits of the (masked) inputs
    expected = torch.nn.functional.cross_entropy(table[inp].flatten(0, 1), x.flatten(), reduction="sum")
    assert torch.allclose(loss, expected, rtol=1e-5)
    sums = masked.evaluate(FixedLogits(table), x, valid)  # validation never masks
    assert torch.allclose(sums.nll.float(), plain.loss_sum(FixedLogits(table), x, valid), rtol=1e-5)
    with pytest.raises(ValueError, match="input_mask_rate"):
        build_objective("ar", input_mask_rate=1.0)


@pytest.mark.parametrize("name", ["diffusion", "block_diffusion"])
def test_curriculum_caps_the_masking_rate_where_configured_and_not_after(name):
    extra = {"block_size": 4} if name == "block_diffusion" else {}
    plain = build_objective(name, **extra)
    easy = build_objective(name, curriculum_fraction=0.3, curriculum_max_t=0.2, **extra)

    def draw(objective, progress):
        gens = [torch.Generator().manual_seed(i) for i in range(64)]
        return objective.training_noise(gens, torch.arange(64).float(), 64, torch.Generator().manual_seed(9), 16,
                                        progress=progress)

    t_easy = easy.schedule.mask_probability(draw(easy, 0.1)["strata"])
    t_plain = plain.schedule.mask_probability(draw(plain, 0.1)["strata"])
    assert t_easy.max() <= 0.2 + 1e-6 and t_plain.max() > 0.9  # capped during the curriculum, full range without
    assert torch.equal(draw(easy, 0.3)["strata"], draw(plain, 0.3)["strata"])  # the full ELBO from 30 % on
    assert easy.describe()["curriculum"] == "0.3@0.2" and plain.describe()["curriculum"] == ""
    with pytest.raises(ValueError, match="curriculum_max_t"):
        build_objective(name, curriculum_max_t=0.0, **extra)
