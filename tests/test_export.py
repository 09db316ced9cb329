"""Hugging Face export: exact logits through plain transformers, tokenizer round trip, loading back."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from data import get_tokenizer, load_corpus
from data.tokenizer import tokenizer_hash
from experiments import export as ex
from experiments.checkpoint import load_checkpoint
from models import ModelConfig, Transformer

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["def f(x, y=3):\n    return x * y  # ünïcode ✓\n", "    beta_1 = x * 2 + y - 'alpha'.count('a')"]


@pytest.fixture(scope="module")
def tokenizer(corpus_spec):
    return get_tokenizer(load_corpus(corpus_spec), 320)


def random_model(tokenizer, causal: bool, seed: int = 0) -> Transformer:
    """GQA, a non-default RoPE base and eps, and non-unit norm weights, so every mapping matters."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(tokenizer), seq_len=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                      rope_theta=5000.0, norm_eps=1e-5, causal=causal)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


def fake_run(folder: Path, model: Transformer, tokenizer, objective: str) -> Path:
    """A run folder as ``crossover train`` leaves it (checkpoint, config, run.json, results.csv)."""
    (folder / "checkpoints").mkdir(parents=True)
    config = {"objective": objective, "unique_tokens": 4000, "epochs": 3, "corpus": "files:x/*.py", "model": "tiny"}
    torch.save({"hyper_parameters": {"model_config": model.config.to_dict(), "objective": objective},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "crossover": {"run_id": folder.name, "config": config,
                              "tokenizer_json": tokenizer.backend_tokenizer.to_str()},
                "global_step": 60, "epoch": 1}, folder / "checkpoints" / "last.ckpt")
    (folder / "config.yaml").write_text("objective: " + objective + "\n")
    (folder / "run.json").write_text(json.dumps({"corpus_fingerprint": "f" * 64}))
    (folder / "results.csv").write_text("run_id,epochs,val_loss,val_loss_se,val_bpb,mc_samples\n"
                                        f"{folder.name},1,5.5,0.02,4.0,4\n{folder.name},2,4.25,0.01,3.1,4\n")
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer):
    """{objective: (our model, run folder, export folder)}, exported with verification."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for objective in ("ar", "diffusion"):
        model = random_model(tokenizer, causal=objective == "ar", seed=len(objective))
        run = fake_run(root / f"run-{objective}", model, tokenizer, objective)
        result = ex.export_run(run, root / f"hf-{objective}")
        assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
        out[objective] = (model, run, result.out)
    return out


def hf_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_ar_export_is_a_stock_llama_with_our_logits(exports):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model, _, folder = exports["ar"]
    hf, tok = hf_model(folder), AutoTokenizer.from_pretrained(folder)
    assert type(hf) is LlamaForCausalLM and hf.config.rope_parameters["rope_theta"] == 5000.0
    assert hf.config.rms_norm_eps == 1e-5 and hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = tok(TEXTS, return_tensors="pt", padding=True).input_ids  # (2, T), [EOD] first
    assert (ids[:, 0] == 2).all()
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    assert diff < 1e-4


def test_ar_export_generates_what_we_generate(exports):
    """Greedy decoding with transformers' KV cache equals ours (RoPE offsets, cache, tied head)."""
    from models.sampling import LogitsProcessor, generate

    model, run, folder = exports["ar"]
    tok = load_checkpoint(run).tokenizer
    prompt = torch.tensor([tok.encode("def f(", add_special_tokens=False)])  # (1, P)
    start = "start_id" if "start_id" in inspect.signature(generate).parameters else "bos_id"  # renamed in places
    ours = generate(model, prompt, 12, processor=LogitsProcessor(temperature=0.0), **{start: 2})
    start = torch.tensor([[2]])
    theirs = hf_model(folder).generate(torch.cat([start, prompt], dim=1), max_new_tokens=12, do_sample=False,
                                       min_new_tokens=12)
    assert theirs[0, 1:].tolist() == ours.tokens[0].tolist()


def test_diffusion_export_is_bidirectional_with_our_logits(exports):
    model, _, folder = exports["diffusion"]
    hf = hf_model(folder)
    assert hf.config.is_causal is False
    ids = ex.probe_input(model.config, "diffusion", mask_id=1, seed=3)  # about half [MASK]
    assert (ids == 1).any() and (ids != 1).any()
    with torch.no_grad():
        theirs = hf(ids).logits
        diff = (theirs - model(ids)).abs().max().item()
        changed = ids.clone()
        changed[:, -1] = 5  # a later token changes an earlier position's logits: no causal mask
        moved = (hf(changed).logits[:, 0] - theirs[:, 0]).abs().max().item()
    assert diff < 1e-4 and moved > 1e-4


def test_tokenizer_round_trips(exports, tokenizer):
    from transformers import AutoTokenizer

    for objective, (_, _, folder) in exports.items():
        tok = AutoTokenizer.from_pretrained(folder)
        assert (tok.pad_token_id, tok.mask_token_id, tok.eos_token_id) == (0, 1, 2)
        for text in TEXTS:
            ours = tokenizer.encode(text, add_special_tokens=False)
            ids = tok(text).input_ids
            assert ids == ([2] + ours if objective == "ar" else ours)
            assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok("x = [MASK]").input_ids[-1] == 1
        back = load_checkpoint(folder).tokenizer  # the run's own tokenizer, no start-token template
        assert tokenizer_hash(back) == tokenizer_hash(tokenizer)
        assert back.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0], add_special_tokens=False)


def test_load_checkpoint_accepts_an_export(exports):
    for objective, (model, run, folder) in exports.items():
        loaded, original = load_checkpoint(folder), load_checkpoint(run)
        assert (loaded.objective, loaded.run_id, loaded.step, loaded.epochs_trained) == (objective, run.name, 60, 2)
        assert loaded.config == original.config and loaded.model.config == model.config
        ids = ex.probe_input(model.config, objective, 1)
        with torch.no_grad():
            assert torch.equal(loaded.model(ids), model(ids))


def test_model_card_and_metadata_record_the_run(exports):
    _, run, folder = exports["diffusion"]
    card = (folder / "README.md").read_text()
    for text in ("4,000 tokens", "2 of 3", "`diffusion`", "4.2500 ± 0.0100", "f" * 64, "is_causal"):
        assert text in card, text
    meta = json.loads((folder / "crossover.json").read_text())
    assert meta["val_loss"] == 4.25 and meta["epochs_trained"] == 2 and meta["corpus_fingerprint"] == "f" * 64
    assert "generation_config.json" not in {p.name for p in folder.iterdir()}
    assert "2 of 3" in (exports["ar"][2] / "README.md").read_text()


def test_export_refuses_sparse_attention_and_a_used_folder(exports, tokenizer, tmp_path):
    _, run, folder = exports["ar"]
    with pytest.raises(ex.ExportError, match="not empty"):
        ex.export_run(run, folder)
    cfg = ModelConfig(vocab_size=len(tokenizer), seq_len=64, n_layer=1, n_head=2, d_model=32, attention="window",
                      attn_window=16, attn_block=16)
    sparse = fake_run(tmp_path / "sparse", Transformer(cfg), tokenizer, "ar")
    with pytest.raises(ex.ExportError, match="window"):
        ex.export_run(sparse, tmp_path / "out")
    block = fake_run(tmp_path / "block", random_model(tokenizer, causal=False), tokenizer, "block_diffusion")
    with pytest.raises(ex.ExportError, match="block_diffusion"):
        ex.export_run(block, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verification_catches_a_wrong_mapping(exports, tmp_path, monkeypatch):
    """Swapping SwiGLU's gate and up projections still loads but computes something else: refused."""
    _, run, _ = exports["ar"]
    original = ex._layer_names

    def swapped(i):
        names = original(i)
        a, b = f"blocks.{i}.mlp.w1.weight", f"blocks.{i}.mlp.w3.weight"
        names[a], names[b] = names[b], names[a]
        return names

    monkeypatch.setattr(ex, "_layer_names", swapped)
    with pytest.raises(ex.ExportError, match="does not reproduce"):
        ex.export_run(run, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_crossover_sample_takes_an_export(exports, capsys):
    from experiments.cli import main

    for objective, (_, run, folder) in exports.items():
        outputs = []
        for path in (run, folder):
            assert main(["sample", str(path), "--temperature", "0", "--length", "6", "--num", "1"]) == 0
            outputs.append(capsys.readouterr().out)
        assert outputs[0] == outputs[1] and "sample 1/1" in outputs[0], objective
