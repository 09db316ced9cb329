"""Samplers (models.sampling) and the sample / bench-sample commands (experiments.sample).

Diffusion samplers run on a stub whose per-position confidences the test chooses, and on small
random transformers; the command tests use a self-made checkpoint (random tiny model + a BPE
tokenizer trained on a few lines), so nothing here trains or touches the network.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch import nn

from experiments import sampling
from experiments.checkpoint import CheckpointError
from experiments.cli import sample as cli
from models import ModelConfig, Transformer
from models.objectives import AutoregressiveObjective
from models.sampling import (
    AncestralSampler,
    LogitsProcessor,
    RemaskSampler,
    SamplingError,
    ThresholdSampler,
    build_sampler,
    generate,
)

PAD, MASK, EOD = 0, 1, 2
V = 16
SUPPRESS = LogitsProcessor(suppress_ids=(MASK, PAD))
GREEDY = LogitsProcessor(suppress_ids=(MASK, PAD), temperature=0)


class ConfidenceStub(nn.Module):
    """Logits (B, T, V) in which position i predicts ``targets[i]`` with probability ``confidence[i]``
    (the rest spread evenly over the other non-special ids); records every input it is called on."""

    def __init__(self, confidence: list[float], targets: list[int] | None = None):
        super().__init__()
        T = len(confidence)
        targets = targets or [3 + i % (V - 3) for i in range(T)]
        probs = torch.zeros(T, V, dtype=torch.float64)
        probs[:, 3:] = (1 - torch.tensor(confidence, dtype=torch.float64))[:, None] / (V - 4)
        probs[torch.arange(T), targets] = torch.tensor(confidence, dtype=torch.float64)
        probs[:, EOD] = 0.0
        self.register_buffer("logits", probs.log())
        self.calls: list[torch.Tensor] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.append(idx.clone())
        return self.logits[: idx.shape[1]].expand(idx.shape[0], -1, -1).float()


def commit_order(stub: ConfidenceStub, final: torch.Tensor) -> list[list[int]]:
    """Positions (row 0) committed between consecutive calls of the stub, in call order."""
    states = [c[0] for c in stub.calls] + [final[0]]
    return [((a == MASK) & (b != MASK)).nonzero().flatten().tolist() for a, b in zip(states[:-1], states[1:])]


def masks(n: int, batch: int = 1, prefix: list[int] | None = None) -> torch.Tensor:
    return torch.tensor([(prefix or []) + [MASK] * n] * batch)


def tiny(causal: bool, seed: int = 0, vocab: int = V) -> Transformer:
    """A random transformer; the large init keeps it from merely echoing its input (tied embeddings)."""
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, seq_len=32, n_layer=2, n_head=2, d_model=32,
                                   causal=causal, init_std=0.5)).eval()


def samplers(steps: int) -> list:
    return [AncestralSampler(steps, mask_id=MASK, processor=SUPPRESS),
            RemaskSampler(steps, mask_id=MASK, processor=SUPPRESS),
            ThresholdSampler(0.9, mask_id=MASK, processor=SUPPRESS)]


# --------------------------------------------------------------------------- logits processing
def test_draw_never_picks_suppressed_ids_and_reports_model_confidence():
    logits = torch.zeros(1000, V)
    logits[:, MASK], logits[:, PAD], logits[:, 5] = 50.0, 50.0, 1.0
    tokens, conf = SUPPRESS.draw(logits, torch.Generator().manual_seed(0))
    assert not torch.isin(tokens, torch.tensor([MASK, PAD])).any()
    expected = torch.full((V,), 0.0, dtype=torch.float64)
    expected[2:] = 1.0
    expected[5] = math.e
    expected /= expected.sum()
    assert torch.allclose(conf, expected[tokens])
    assert conf.dtype == torch.float64


def test_top_k_and_top_p_truncate_and_greedy_takes_the_argmax():
    logits = torch.tensor([[0.0, 0.0, 0.0, 3.0, 2.9, 1.0] + [-5.0] * (V - 6)]).expand(500, -1)
    g = torch.Generator().manual_seed(0)
    top2 = LogitsProcessor((MASK, PAD), temperature=1.0, top_k=2).draw(logits, g)[0]
    assert set(top2.tolist()) == {3, 4}
    nucleus = LogitsProcessor((MASK, PAD), temperature=1.0, top_p=0.3).draw(logits, g)[0]
    assert set(nucleus.tolist()) == {3}  # token 3 alone holds > 0.3 of the mass
    assert set(GREEDY.draw(logits, g)[0].tolist()) == {3}
    with pytest.raises(SamplingError):
        LogitsProcessor(top_p=0.0)


# --------------------------------------------------------------------------- every diffusion sampler
@pytest.mark.parametrize("index", [0, 1, 2], ids=["ancestral", "remask", "threshold"])
def test_diffusion_fills_every_mask_and_keeps_fixed_tokens(index):
    model = tiny(causal=False)
    template = torch.tensor([[5, MASK, MASK, 7, MASK, MASK, MASK, 9, 4, MASK]] * 3)  # infill: fixed tokens anywhere
    sampler = samplers(steps=5)[index]
    result = sampler(model, template, torch.Generator().manual_seed(0))
    fixed = template != MASK
    assert not torch.isin(result.tokens, torch.tensor([MASK, PAD])).any()
    assert torch.equal(result.tokens[fixed], template[fixed])
    assert torch.equal(result.committed.sum(dim=0), torch.full((3,), 6))
    assert result.forward_passes == len(model_calls(sampler, model, template))


def model_calls(sampler, model, template) -> list[torch.Tensor]:
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    sampler(model, template, torch.Generator().manual_seed(0))
    handle.remove()
    return calls


@pytest.mark.parametrize("index", [0, 1, 2], ids=["ancestral", "remask", "threshold"])
def test_same_seed_same_samples(index):
    model = tiny(causal=False)
    sampler = samplers(steps=8)[index]
    run = [sampler(model, masks(8, batch=2, prefix=[5]), torch.Generator().manual_seed(s)).tokens for s in (0, 0, 1)]
    assert torch.equal(run[0], run[1])
    assert not torch.equal(run[0], run[2])


def test_eod_is_sampleable_unless_suppressed():
    stub = ConfidenceStub([0.5] * 6)
    stub.logits[:, EOD] = 10.0  # the stub wants [EOD] everywhere
    allowed = RemaskSampler(6, mask_id=MASK, processor=GREEDY)(stub, masks(6))
    assert (allowed.tokens == EOD).all()
    no_eod = LogitsProcessor((MASK, PAD, EOD), temperature=0)
    assert not (RemaskSampler(6, mask_id=MASK, processor=no_eod)(stub, masks(6)).tokens == EOD).any()


def test_sampler_processor_must_suppress_mask():
    with pytest.raises(SamplingError, match="MASK"):
        RemaskSampler(4, mask_id=MASK, processor=LogitsProcessor(suppress_ids=(PAD,)))


def test_build_sampler_refuses_options_that_do_not_apply():
    assert isinstance(build_sampler("threshold", mask_id=MASK, threshold=0.7, block_length=None), ThresholdSampler)
    with pytest.raises(SamplingError, match="steps"):
        build_sampler("threshold", mask_id=MASK, steps=8)
    with pytest.raises(SamplingError, match="block_length"):
        build_sampler("ancestral", mask_id=MASK, steps=8, block_length=4)
    with pytest.raises(SamplingError, match="unknown sampler"):
        build_sampler("maskgit", mask_id=MASK)


# --------------------------------------------------------------------------- ancestral
def test_ancestral_reuses_the_model_output_when_nothing_changes():
    model = tiny(causal=False)
    sampler = AncestralSampler(400, mask_id=MASK, processor=SUPPRESS)
    result = sampler(model, masks(8, prefix=[5, 6]), torch.Generator().manual_seed(0))
    assert (result.tokens != MASK).all()
    changing_steps = int((result.committed.sum(dim=1) > 0).sum())
    assert result.forward_passes == changing_steps <= 8 < 400
    assert len(result.committed) <= 400


def test_ancestral_follows_the_linear_schedule():
    """From t to s each [MASK] unmasks w.p. (t - s)/t: on the grid 1, 3/4, 1/2, 1/4, 0 a row of 4
    [MASK]s commits one token per step in expectation."""
    stub = ConfidenceStub([0.5] * 4)
    result = AncestralSampler(4, mask_id=MASK, processor=SUPPRESS)(stub, masks(4, batch=4000),
                                                                     torch.Generator().manual_seed(0))
    per_step = result.committed.double().mean(dim=1)  # (S,)
    assert torch.allclose(per_step, torch.ones(4, dtype=torch.float64), atol=0.06)


# --------------------------------------------------------------------------- remask
def test_remask_with_steps_equal_to_length_commits_one_token_per_step():
    for block_length in (None, 3):
        result = RemaskSampler(12, mask_id=MASK, block_length=block_length, processor=SUPPRESS)(
            tiny(causal=False), masks(12, batch=2, prefix=[4]), torch.Generator().manual_seed(0))
        assert torch.equal(result.committed, torch.ones(12, 2, dtype=torch.long))
        assert result.forward_passes == 12


def test_remask_commits_the_most_confident_first():
    stub = ConfidenceStub([0.3, 0.9, 0.5, 0.7])
    result = RemaskSampler(4, mask_id=MASK, processor=GREEDY)(stub, masks(4))
    assert commit_order(stub, result.tokens) == [[1], [3], [2], [0]]
    assert torch.equal(result.tokens[0], stub.logits.argmax(dim=-1))


def test_remask_blocks_are_decoded_left_to_right():
    # the prompt holds positions 0-1; the [MASK]s at 2-3 form block 0, those at 4-5 block 1
    stub = ConfidenceStub([0.9, 0.3, 0.4, 0.95, 0.8, 0.6])
    result = RemaskSampler(4, mask_id=MASK, block_length=2, processor=GREEDY)(stub, masks(4, prefix=[5, 6]))
    assert commit_order(stub, result.tokens) == [[3], [2], [4], [5]]
    assert torch.equal(result.tokens[0, :2], torch.tensor([5, 6]))
    stub = ConfidenceStub([0.9, 0.3, 0.4, 0.95, 0.8, 0.6])
    one_block = RemaskSampler(4, mask_id=MASK, processor=GREEDY)(stub, masks(4, prefix=[5, 6]))
    assert commit_order(stub, one_block.tokens) == [[3], [4], [5], [2]]


def test_remask_splits_tokens_evenly_over_the_steps_of_each_block():
    stub = ConfidenceStub([0.5] * 8)
    result = RemaskSampler(6, mask_id=MASK, block_length=4, processor=GREEDY)(stub, masks(8))
    assert result.committed[:, 0].tolist() == [2, 1, 1, 2, 1, 1]
    order = commit_order(stub, result.tokens)
    assert all(p < 4 for step in order[:3] for p in step) and all(p >= 4 for step in order[3:] for p in step)


@pytest.mark.parametrize("steps,block_length", [(9, None), (4, 3), (3, 4)])
def test_remask_refuses_schedules_that_cannot_split_evenly(steps, block_length):
    sampler = RemaskSampler(steps, mask_id=MASK, block_length=block_length, processor=SUPPRESS)
    with pytest.raises(SamplingError, match="remask"):
        sampler(ConfidenceStub([0.5] * 8), masks(8))


# --------------------------------------------------------------------------- threshold
def test_threshold_confident_model_needs_fewer_passes_than_tokens():
    stub = ConfidenceStub([0.99] * 8)
    result = ThresholdSampler(0.9, mask_id=MASK, processor=SUPPRESS)(stub, masks(8))
    assert result.forward_passes == 1 and result.committed.tolist() == [[8]]
    blocked = ThresholdSampler(0.9, mask_id=MASK, block_length=4, processor=SUPPRESS)(stub, masks(8))
    assert blocked.forward_passes == 2 and blocked.committed[:, 0].tolist() == [4, 4]


def test_threshold_commits_confident_tokens_and_at_least_the_most_confident_one():
    stub = ConfidenceStub([0.95, 0.5, 0.97, 0.6])
    result = ThresholdSampler(0.9, mask_id=MASK, processor=GREEDY)(stub, masks(4))
    assert commit_order(stub, result.tokens) == [[0, 2], [3], [1]]
    unsure = ThresholdSampler(0.9, mask_id=MASK, processor=SUPPRESS)(
        tiny(causal=False), masks(10), torch.Generator().manual_seed(0))
    assert (unsure.committed >= 1).all() and unsure.forward_passes == len(unsure.committed)


def test_threshold_refuses_a_threshold_outside_0_1():
    with pytest.raises(SamplingError):
        ThresholdSampler(1.5, mask_id=MASK)


# --------------------------------------------------------------------------- autoregressive
def recorded_lengths(model: nn.Module) -> tuple[list[int], object]:
    lengths: list[int] = []
    handle = model.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    return lengths, handle


def test_kv_cache_generation_equals_full_recompute_under_greedy():
    model = tiny(causal=True, vocab=64)
    prompt = torch.tensor([[5, 9, 11], [7, 3, 20]])
    lengths, handle = recorded_lengths(model)
    cached = generate(model, prompt, 12, start_id=EOD, processor=GREEDY, use_cache=True)
    assert lengths == [4] + [1] * 11  # the cache was used: one new token per pass
    lengths.clear()
    full = generate(model, prompt, 12, start_id=EOD, processor=GREEDY, use_cache=False)
    assert lengths == list(range(4, 16))
    handle.remove()
    assert torch.equal(cached.tokens, full.tokens)
    assert torch.equal(cached.tokens[:, :3], prompt) and cached.tokens.shape == (2, 15)
    assert len(set(cached.tokens[0, 3:].tolist())) > 1  # not a degenerate constant continuation
    assert cached.forward_passes == 12 and cached.tokens_per_pass == 1.0


def test_ar_falls_back_to_recompute_without_a_kv_cache():
    model = tiny(causal=True, vocab=64)
    prompt = torch.tensor([[5, 9]])
    expected = generate(model, prompt, 8, start_id=EOD, processor=GREEDY).tokens
    for block in model.blocks:
        block.attn.core.supports_kv_cache = False  # as an attention kind without a cache
    assert not model.supports_kv_cache
    lengths, handle = recorded_lengths(model)
    result = generate(model, prompt, 8, start_id=EOD, processor=GREEDY)
    handle.remove()
    assert lengths == list(range(3, 11)) and torch.equal(result.tokens, expected)


def test_ar_sampling_is_seeded_suppresses_specials_and_respects_seq_len():
    model = tiny(causal=True)
    prompt = torch.tensor([[5, 9]] * 64)
    a = generate(model, prompt, 10, start_id=EOD, processor=SUPPRESS, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompt, 10, start_id=EOD, processor=SUPPRESS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens[:, :2], prompt)
    assert not torch.isin(a.tokens, torch.tensor([MASK, PAD])).any()
    with pytest.raises(SamplingError, match="seq_len"):
        generate(model, prompt, 31, start_id=EOD)


# --------------------------------------------------------------------------- scoring
def test_generative_nll_matches_the_ar_objective_and_conditions_on_the_prompt():
    model = tiny(causal=True, vocab=64)
    x = torch.randint(3, 64, (3, 12), generator=torch.Generator().manual_seed(0))
    objective = AutoregressiveObjective()  # start token [EOD] = 2 (TokenIds)
    expected = objective.loss_sum(model, x, torch.ones_like(x, dtype=torch.bool)) / x.numel()
    assert sampling.generative_nll(model, x, 0, EOD).mean().item() == pytest.approx(expected.item(), rel=1e-5)
    suffix = objective.token_nll(model, x)[:, 4:].double().mean(dim=1)
    assert torch.allclose(sampling.generative_nll(model, x, 4, EOD), suffix, rtol=1e-5)


def test_unigram_entropy_flags_repetition():
    ent = sampling.unigram_entropy(torch.tensor([[3, 3, 3, 3], [3, 4, 3, 4], [3, 4, 5, 6]]))
    assert torch.allclose(ent, torch.tensor([0.0, math.log(2), math.log(4)], dtype=torch.float64))


# --------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[PAD]", "[MASK]", "[EOD]"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def f(x):\n    return x + 1\n", "class A:\n    pass\n"] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", mask_token="[MASK]", eos_token="[EOD]",
                                   sep_token="[EOD]", clean_up_tokenization_spaces=False)


def write_checkpoint(path, tokenizer, objective: str, seed: int = 0):
    cfg = ModelConfig(vocab_size=len(tokenizer), seq_len=32, n_layer=1, n_head=2, d_model=32,
                      causal=objective == "ar")
    torch.manual_seed(seed)
    model = Transformer(cfg)
    config = {"objective": objective}
    if objective == "block_diffusion":
        config["block_diffusion"] = {"block_size": 4}
    torch.save({"hyper_parameters": {"model_config": cfg.to_dict(), "objective": objective},
                "crossover": {"run_id": path.stem, "config": config,
                              "tokenizer_json": tokenizer.backend_tokenizer.to_str()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "global_step": 0, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: str(write_checkpoint(root / f"{name}.ckpt", tokenizer, name))
            for name in ("ar", "diffusion", "block_diffusion")}


def run_sample(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    cli.add_sample_arguments(p)
    return cli.cmd_sample(p.parse_args(argv))


def run_bench(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    cli.add_bench_sample_arguments(p)
    return cli.cmd_bench_sample(p.parse_args(argv))


def test_infill_template_placeholders(tokenizer):
    t = sampling.build_template(tokenizer, infill="def [MASK:3](x):[MASK]", seq_len=32)
    ids = t.ids.tolist()
    assert ids.count(MASK) == 4 == t.num_masked and t.prompt_length is None
    assert tokenizer.decode([i for i in ids if i != MASK]) == "def (x):"
    prefix = sampling.build_template(tokenizer, prompt="def ", length=5, seq_len=32)
    assert prefix.ids.tolist()[prefix.prompt_length:] == [MASK] * 5
    assert sampling.build_template(tokenizer, infill="def [MASK:2]", seq_len=32).prompt_length is not None
    for kwargs, match in [(dict(prompt="def ", length=40), "seq_len=32"), (dict(infill="no holes"), "placeholder"),
                          (dict(infill="x[MASK]", length=3), "whole template"), (dict(prompt="a[PAD]"), "literal"),
                          (dict(prompt="def " * 40, length=4), "leaves no room to generate"),
                          (dict(prompt="def \udcff", length=4), "not valid UTF-8")]:
        with pytest.raises(SamplingError, match=match):
            sampling.build_template(tokenizer, seq_len=32, **kwargs)


def test_sample_command_prints_samples_and_stats(checkpoints, capsys):
    assert run_sample([checkpoints["diffusion"], "--sampler", "threshold", "--infill", "def [MASK:4](x):[MASK:3]",
                       "--num", "2", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    samples = out.split("--- sample ")[1:]
    assert len(samples) == 2
    assert all(s.split("\n", 1)[1].startswith("def ") and "(x):" in s for s in samples)
    assert "forward passes" in err and "tokens per forward pass" in err and "tokens/s" in err
    assert run_sample([checkpoints["ar"], "--sampler", "remask", "--prompt", "def ", "--length", "6",
                       "--num", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith("def ") and "ignored --sampler" in err


@pytest.mark.parametrize("argv,error", [
    (["--length", "40"], SamplingError),
    (["--sampler", "threshold", "--steps", "4"], SamplingError),
    (["--sampler", "ancestral", "--threshold", "0.5"], SamplingError),
    (["--sampler", "remask", "--block-length", "3", "--length", "8"], SamplingError),
    (["--sampler", "remask", "--steps", "9", "--length", "8"], SamplingError),
])
def test_sample_command_refuses_bad_options(checkpoints, argv, error):
    with pytest.raises(error):
        run_sample([checkpoints["diffusion"], *argv])


def test_sample_command_refuses_infill_for_ar_and_bad_checkpoints(checkpoints, tmp_path):
    with pytest.raises(SamplingError, match="infill"):
        run_sample([checkpoints["ar"], "--infill", "[MASK] x"])
    with pytest.raises(CheckpointError, match="does not exist"):
        run_sample([str(tmp_path / "missing.ckpt")])
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        run_sample([str(corrupt)])


def test_bench_sample_refuses_the_wrong_kind_of_checkpoint(checkpoints):
    with pytest.raises(CheckpointError, match="DIFF_CKPT"):
        run_bench([checkpoints["ar"], checkpoints["ar"]])
    with pytest.raises(CheckpointError, match="AR_CKPT"):
        run_bench([checkpoints["diffusion"], checkpoints["diffusion"]])


def test_bench_sample_writes_table_and_figure(checkpoints, tmp_path, capsys):
    assert run_bench([checkpoints["ar"], checkpoints["diffusion"], "--length", "8", "--num", "2", "--steps", "8", "4",
                      "--thresholds", "0.5", "0.9", "--prompt", "def ", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench_sample.json").read_text())["rows"]
    assert [(r["sampler"], r["steps"], r["threshold"]) for r in rows] == [
        ("ar", None, None), ("ancestral", 8, None), ("ancestral", 4, None), ("remask", 8, None),
        ("remask", 4, None), ("threshold", None, 0.5), ("threshold", None, 0.9)]
    assert rows[0]["forward_passes_per_token"] == 1.0 and rows[4]["forward_passes_per_token"] == 0.5
    assert all(r["gen_nll"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["entropy"] <= math.log(8) + 1e-9 for r in rows)
    assert (tmp_path / "bench_sample.png").stat().st_size > 0 and (tmp_path / "bench_sample.pdf").exists()
    assert len(table.splitlines()) == 2 + len(rows)


def test_block_diffusion_checkpoints_sample_block_by_block_and_join_the_bench(checkpoints, tmp_path, capsys):
    assert run_sample([checkpoints["block_diffusion"], "--sampler", "remask", "--prompt", "def ", "--length", "8",
                       "--num", "2", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "block_diffusion-b4 remask" in err and "forward passes" in err
    with pytest.raises(SamplingError, match="--block-length does not apply"):
        run_sample([checkpoints["block_diffusion"], "--block-length", "4", "--length", "8"])
    assert run_bench([checkpoints["ar"], checkpoints["diffusion"], checkpoints["block_diffusion"], "--length", "8",
                      "--num", "1", "--steps", "8", "4", "--samplers", "ancestral", "remask",
                      "--prompt", "def ", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_sample.json").read_text())["rows"]
    block = [r for r in rows if r["model"] == "block_diffusion-b4"]
    # 8 tokens in 2 blocks of 4: 8 total steps -> 4 per block, 4 total -> 2 per block
    assert [(r["sampler"], r["steps"]) for r in block] == [("ancestral", 4), ("ancestral", 2), ("remask", 4),
                                                            ("remask", 2)]
    remask = {r["steps"]: r["forward_passes_per_token"] for r in block if r["sampler"] == "remask"}
    assert remask[4] == 1.0 and remask[2] < 1.0  # a pass per token at steps = block size; fewer passes below it
    assert {r["model"] for r in rows} == {"ar", "diffusion", "block_diffusion-b4"}
