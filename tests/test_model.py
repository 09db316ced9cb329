"""Backbone: causality, parameter counts, GQA, KV cache."""

from __future__ import annotations

import pytest
import torch

from models import KVCache, ModelConfig, Transformer


def make(causal: bool, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name("tiny", vocab_size=50, seq_len=32, causal=causal, **kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"n_head": 4, "n_kv_head": 2}], ids=["mha", "gqa"])
def test_causal_model_does_not_see_the_future_and_bidirectional_does(kw):
    x = torch.randint(3, 50, (2, 32))
    t = 13
    y = x.clone()
    y[:, t:] = torch.randint(3, 50, (2, 32 - t))
    ar, bi = make(True, **kw), make(False, **kw)
    with torch.no_grad():
        assert torch.allclose(ar(x)[:, :t], ar(y)[:, :t], atol=1e-6)
        assert not torch.allclose(ar(x)[:, t:], ar(y)[:, t:], atol=1e-3)
        assert not torch.allclose(bi(x)[:, :t], bi(y)[:, :t], atol=1e-3)


def test_parameter_counts_by_hand():
    c = ModelConfig(vocab_size=100, n_layer=3, n_head=4, n_kv_head=2, d_model=64, d_ff=96, seq_len=16)
    m = Transformer(c)
    d, hd, L = 64, 16, 3
    attn = d * 4 * hd + 2 * d * 2 * hd + 4 * hd * d  # wq, wk, wv (2 kv heads), wo
    mlp = 3 * d * 96
    per_layer = attn + mlp + 2 * d  # two RMSNorm weights
    assert m.num_params(non_embedding=True) == L * per_layer + d  # + final norm
    assert m.num_params() == L * per_layer + d + 100 * d  # tied embedding counted once


def test_swiglu_width_default():
    assert ModelConfig(d_model=128).d_ff == 352  # 8/3 * 128 = 341.3, rounded up to a multiple of 32


def test_kv_cache_matches_full_forward():
    m = make(True, n_head=4, n_kv_head=2)
    x = torch.randint(3, 50, (2, 20))
    with torch.no_grad():
        full = m(x)
        cache = KVCache()
        parts = [m(x[:, :7], cache)] + [m(x[:, i : i + 1], cache) for i in range(7, 20)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    assert cache.length == 20


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_head=3)
    with pytest.raises(KeyError, match="unknown model preset"):
        ModelConfig.from_name("huge")
    with pytest.raises(KeyError, match="unknown attention kind"):
        Transformer(ModelConfig(attention="nope"))


@pytest.mark.parametrize("attention", ["dense", "window", "topk", "nsa"])
@pytest.mark.parametrize("preset", ["tiny", "n220k", "n400k", "n600k", "small", "p7m"])
def test_closed_form_parameter_count_matches_the_built_model(preset, attention):
    from models import count_params

    config = ModelConfig.from_name(preset, attention=attention, n_kv_head=2 if preset == "small" else None,
                                   vocab_size=777)
    model = Transformer(config)
    assert count_params(config) == model.num_params()
    assert count_params(config, non_embedding=True) == model.num_params(non_embedding=True)


def test_cpu_presets_step_between_tiny_and_small():
    from models import count_params

    sizes = [count_params(ModelConfig.from_name(p), non_embedding=True)
             for p in ("tiny", "n220k", "n400k", "n600k", "small")]
    assert sizes == sorted(sizes) and sizes[0] == 106_816 and sizes[-1] == 803_968


def test_dropout_sites_default_to_dropout_and_can_be_set_one_by_one():
    c = ModelConfig.from_name("tiny", dropout=0.1, attn_dropout=0.0)
    assert (c.resid_dropout, c.attn_dropout, c.embd_dropout) == (0.1, 0.0, 0.1)
    with pytest.raises(ValueError, match="embd_dropout must lie in"):
        ModelConfig.from_name("tiny", embd_dropout=1.0)


@pytest.mark.parametrize("site", ["resid_dropout", "attn_dropout", "embd_dropout"])
def test_each_dropout_site_acts_where_it_is_named_and_only_in_training(site):
    model = make(True, **{site: 0.5})
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("embedded", args[0]))
    model.blocks[0].attn.core.register_forward_hook(lambda m, args, out: seen.__setitem__("attention", out))
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.__setitem__("block", out))
    x = torch.randint(3, 50, (4, 32))

    def run(training: bool) -> dict[str, torch.Tensor]:
        model.train(training)
        with torch.no_grad():
            model(x)
        return dict(seen)

    evaluated, trained = run(False), run(True)
    assert torch.equal(run(False)["block"], evaluated["block"])  # evaluation is deterministic
    assert not torch.equal(trained["block"], evaluated["block"])  # the site is live in training
    dropped = {name: not torch.equal(trained[name], evaluated[name]) for name in ("embedded", "attention")}
    # the embeddings change only under embd_dropout (about half zeroed), the attention core's output
    # only under attention dropout or changed embeddings; resid_dropout acts after both
    assert dropped == {"embedded": site == "embd_dropout", "attention": site != "resid_dropout"}
    if site == "embd_dropout":
        assert 0.4 < (trained["embedded"] == 0).float().mean().item() < 0.6
