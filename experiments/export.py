"""Export a run to a Hugging Face folder, and load such a folder back.

``crossover export RUN --out DIR`` writes::

    config.json             LlamaConfig (``is_causal: false`` for a diffusion model)
    model.safetensors       the weights under Llama's names, float32, the tied head left out
    generation_config.json  AR only: [EOD] as start, end and pad token for ``generate``
    tokenizer.json, tokenizer_config.json   the run's byte-level BPE; [PAD] 0, [MASK] 1, [EOD] 2
    README.md               model card: budget, epochs, objective, validation loss, corpus fingerprint
    crossover.json          what ``load_checkpoint`` needs to rebuild the run (objective, model config, ...)

The backbone is Llama-shaped, so the mapping is one-to-one and exact: ``wte`` is
``embed_tokens`` (and the tied ``lm_head``), ``norm1``/``norm2`` are ``input_layernorm`` /
``post_attention_layernorm`` (RMSNorm with the same eps), ``wq/wk/wv/wo`` are ``q/k/v/o_proj``
(GQA through ``num_key_value_heads``), SwiGLU ``w1/w3/w2`` are ``gate/up/down_proj``. Our RoPE
rotates the halves ``(x[:D/2], x[D/2:])`` of each head, which is Llama's ``rotate_half`` layout, so
no permutation of q/k rows is needed; the base goes to ``rope_theta`` (and ``rope_parameters``).

An autoregressive run becomes a stock ``LlamaForCausalLM``. Its tokenizer prepends [EOD] (the
start token the AR objective conditions the first token on: input ``[EOD] + x[:-1]``), so
``model(**tokenizer(text, return_tensors="pt"))`` computes what our model computes.

A diffusion run becomes the same stock class with ``is_causal: false`` in its config: recent
transformers (the ``is_causal`` config switch of huggingface/transformers#43705; tested with 5.25)
build a bidirectional mask for any decoder-only model with it, so no custom code is needed. Its
tokenizer adds nothing (the diffusion model was trained on packed text without a start token);
put [MASK] (id 1) where the model should predict. Older transformers ignore the switch and would
run the model causally, so the export is verified: the folder is loaded back with transformers and
its logits are compared with ours before the export is declared done.

Only dense AR and masked-diffusion runs export: the block-sparse attention kinds (window, NSA,
top-k) and block diffusion's block-causal mask are no Llama setting.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.checkpoint import CheckpointError, LoadedRun, load_checkpoint, resolve_checkpoint
from models.objectives import objective_class

#: file that marks a crossover export and holds what the loader needs
META_FILE = "crossover.json"
#: bump when the layout of an export changes
EXPORT_FORMAT = 1
#: largest |logit difference| (fp32) accepted when verifying an export against our model
VERIFY_TOLERANCE = 1e-4


class ExportError(CheckpointError):
    """A run that cannot be exported (attention kind, output folder, transformers version), one line."""


# --------------------------------------------------------------------------- weights and config
def _layer_names(i: int) -> dict[str, str]:
    """Our parameter names of block ``i`` -> Llama's."""
    ours, hf = f"blocks.{i}.", f"model.layers.{i}."
    pairs = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm", "attn.wq": "self_attn.q_proj",
             "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
             "mlp.w1": "mlp.gate_proj", "mlp.w3": "mlp.up_proj", "mlp.w2": "mlp.down_proj"}
    return {f"{ours}{a}.weight": f"{hf}{b}.weight" for a, b in pairs.items()}


def weight_names(n_layer: int) -> dict[str, str]:
    """Every parameter of our Transformer -> its Llama name (the tied head has no entry of its own)."""
    names = {"wte.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(n_layer):
        names.update(_layer_names(i))
    return names


def to_llama_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under Llama's names, contiguous float32 copies on the CPU (ready for safetensors)."""
    names = weight_names(model.config.n_layer)
    state = model.state_dict()
    missing = sorted(set(state) - set(names))
    if missing:
        raise ExportError(f"parameters without a Llama counterpart: {', '.join(missing[:3])} "
                          f"(attention kind {model.config.attention!r} has its own weights)")
    return {names[k]: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def from_llama_state_dict(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Inverse of ``to_llama_state_dict`` (an ``lm_head.weight`` entry, if any, is the tied embedding)."""
    inverse = {hf: ours for ours, hf in weight_names(n_layer).items()}
    unknown = sorted(set(state) - set(inverse) - {"lm_head.weight"})
    if unknown:
        raise CheckpointError(f"unexpected weights in the export: {', '.join(unknown[:3])}")
    return {inverse[k]: v for k, v in state.items() if k in inverse}


def llama_config(model_config: Any, tokenizer: Any, objective: str) -> dict[str, Any]:
    """config.json of the export: a LlamaConfig that computes exactly what ``model_config`` does.

    ``rope_theta`` is written both the transformers-4 way (top level) and the transformers-5 way
    (``rope_parameters``)."""
    c = model_config
    theta = float(c.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim, "max_position_embeddings": c.seq_len, "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps, "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "initializer_range": c.init_std, "pretraining_tp": 1, "use_cache": _causal(objective),
        "is_causal": _causal(objective), "torch_dtype": "float32", "dtype": "float32",
        "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "mask_token_id": tokenizer.mask_token_id,
    }


#: decodings with a Hugging Face mapping (left to right: causal Llama; parallel: bidirectional Llama
#: predicting x0); a blockwise objective's block-causal mask is no Llama setting
EXPORTABLE_DECODINGS = ("left_to_right", "parallel")


def _causal(objective: str) -> bool:
    return objective_class(objective).causal


def check_exportable(model_config: Any, objective: str) -> None:
    """Refuse backbones that are not a Llama (block-sparse attention kinds) and objectives without a
    mapping (``Objective.decoding`` not in ``EXPORTABLE_DECODINGS``)."""
    if objective_class(objective).decoding not in EXPORTABLE_DECODINGS:
        raise ExportError(f"objective {objective!r} has no Hugging Face export; exportable: objectives that "
                          f"decode {' or '.join(EXPORTABLE_DECODINGS)}")
    if model_config.attention != "dense":
        raise ExportError(f"attention kind {model_config.attention!r} has no Hugging Face counterpart; only dense "
                          "runs export to Llama")


# --------------------------------------------------------------------------- tokenizer
def export_tokenizer(tokenizer: Any, objective: str, seq_len: int) -> Any:
    """The run's tokenizer for the export: an AR export prepends [EOD] (its start token) when
    ``add_special_tokens`` is on; a diffusion export adds nothing. [MASK] stays the mask token."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    eod = tokenizer.eos_token
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    extra: dict[str, Any] = {}
    if _causal(objective):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{eod} $A", pair=f"{eod} $A $B", special_tokens=[(eod, tokenizer.eos_token_id)])
        extra["bos_token"] = eod
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=tokenizer.pad_token,
                                   mask_token=tokenizer.mask_token, eos_token=eod, sep_token=eod,
                                   clean_up_tokenization_spaces=False, model_max_length=seq_len, **extra)


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """``save_pretrained``, with ``tokenizer_class`` set to the name every transformers version knows."""
    tokenizer.save_pretrained(out)
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")


def load_export_tokenizer(folder: Path) -> Any:
    """The run's own tokenizer from an export (the AR start-token template removed), as
    ``load_checkpoint`` returns it for a run folder: same ids, same ``tokenizer_hash``."""
    from data.tokenizer import from_json

    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["post_processor"] = None
    return from_json(json.dumps(spec))


# --------------------------------------------------------------------------- provenance and model card
def _run_folder(checkpoint: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/last.ckpt`` (None for a checkpoint kept elsewhere)."""
    folder = checkpoint.parent.parent
    return folder if checkpoint.parent.name == "checkpoints" and (folder / "config.yaml").exists() else None


def _evaluated_row(folder: Path | None, epochs_trained: int) -> dict[str, str]:
    """The results row of the epoch the checkpoint holds (else the last row; {} without a table)."""
    from analysis.table import read_rows

    rows = read_rows(folder / "results.csv") if folder is not None else []
    match = [r for r in rows if float(r["epochs"]) == epochs_trained]
    return match[-1] if match else (rows[-1] if rows else {})


def config_value(config: dict[str, Any], key: str) -> Any:
    """``config[key]``, or the first ``config[section][key]`` of a grouped config (None when absent)."""
    if key in config:
        return config[key]
    return next((v[key] for v in config.values() if isinstance(v, dict) and key in v), None)


def run_metadata(run: LoadedRun, checkpoint: Path) -> dict[str, Any]:
    """Everything the export records about its run: objective, budget, epochs, validation loss, provenance."""
    import transformers

    from data.tokenizer import tokenizer_hash

    if run.info.get("format"):  # re-exporting an export: keep its provenance
        return {**run.info, "source": str(checkpoint)}
    folder = _run_folder(checkpoint)
    info = json.loads((folder / "run.json").read_text()) if folder and (folder / "run.json").exists() else {}
    cfg, epochs = run.config, run.epochs_trained
    row = _evaluated_row(folder, epochs)
    unique = config_value(cfg, "unique_tokens")

    def number(key: str) -> float | None:
        return float(row[key]) if row.get(key) not in (None, "") else None

    return {
        "format": EXPORT_FORMAT, "objective": run.objective, "run_id": run.run_id or (folder.name if folder else ""),
        "step": run.step, "epoch": run.epoch, "epochs_trained": epochs,
        "model_config": run.model.config.to_dict(), "run_config": cfg,
        "unique_tokens": unique, "run_epochs": config_value(cfg, "epochs"),
        "tokens_seen": unique * epochs if unique else None,
        "corpus": info.get("corpus") or row.get("corpus") or config_value(cfg, "corpus"),
        "corpus_fingerprint": info.get("corpus_fingerprint") or row.get("corpus_fingerprint") or None,
        "tokenizer_hash": tokenizer_hash(run.tokenizer),
        "params": run.model.num_params(), "non_embedding_params": run.model.num_params(non_embedding=True),
        "val_loss": number("val_loss"), "val_loss_se": number("val_loss_se"), "val_bpb": number("val_bpb"),
        "val_epochs": number("epochs"), "val_mc_samples": number("mc_samples"),
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "source": str(checkpoint),
    }


def _fmt(value: Any, spec: str = "") -> str:
    return "unknown" if value is None else format(value, spec)


def model_card(meta: dict[str, Any]) -> str:
    """README.md of the export: what was trained on what, how well, and how to load it."""
    ar = _causal(meta["objective"])
    loss = "exact NLL" if ar else f"ELBO (upper bound on the NLL), {_fmt(meta.get('val_mc_samples'), '.0f')} MC draws"
    se = f" ± {meta['val_loss_se']:.4f}" if not ar and meta.get("val_loss_se") is not None else ""
    at = f" (after epoch {_fmt(meta.get('val_epochs'), '.0f')})" if meta.get("val_loss") is not None else ""
    kind = "autoregressive" if ar else "masked-diffusion"
    use = (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(PATH)  # prepends [EOD], the start token\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\n"
        "out = model.generate(**tok(\"def \", return_tensors=\"pt\"), max_new_tokens=32, do_sample=True)\n```\n"
        if ar else
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(PATH)  # adds no start token\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)  # config is_causal=false: bidirectional\n"
        "ids = tok(\"def f(x):\\n    return [MASK][MASK][MASK]\", return_tensors=\"pt\").input_ids\n"
        "logits = model(ids).logits  # predictions of x0 at the [MASK] positions\n```\n"
        "Bidirectional attention needs a transformers release that honours `config.is_causal` "
        "(huggingface/transformers#43705; exported and verified with transformers "
        f"{meta.get('transformers_version')}). Older releases silently run the model causally. "
        "Parallel samplers: `crossover sample PATH --sampler remask`.\n")
    tags = ["crossover", kind, "llama"]
    return "\n".join([
        "---", "library_name: transformers", "tags:", *[f"- {t}" for t in tags], "---", "",
        f"# {meta.get('run_id') or 'crossover run'}: {kind} LM", "",
        f"A {kind} language model trained with `crossover` on an exact unique-token budget, repeated for "
        "several epochs, on a Llama-shaped backbone (RMSNorm, RoPE, SwiGLU, GQA, no biases, tied embeddings).", "",
        "| | |", "|---|---|",
        f"| objective | `{meta['objective']}` ({kind}) |",
        f"| unique-token budget U | {_fmt(meta.get('unique_tokens'), ',')} tokens |",
        f"| epochs trained | {meta['epochs_trained']} of {_fmt(meta.get('run_epochs'))} (tokens seen "
        f"{_fmt(meta.get('tokens_seen'), ',')}; step {meta['step']}) |",
        f"| validation loss | {_fmt(meta.get('val_loss'), '.4f')}{se} nats/token{at}, {loss} |",
        f"| validation bits per byte | {_fmt(meta.get('val_bpb'), '.4f')} |",
        f"| corpus | `{meta.get('corpus')}` |",
        f"| corpus fingerprint | `{_fmt(meta.get('corpus_fingerprint'))}` |",
        f"| tokenizer sha256 | `{meta['tokenizer_hash']}` |",
        f"| parameters | {meta['params']:,} total, {meta['non_embedding_params']:,} non-embedding |", "",
        "Special tokens: `[PAD]` 0, `[MASK]` 1, `[EOD]` 2 (document separator; the AR start token). "
        "The full run config is in `crossover.json`.", "", "## Use", "", use,
    ])


# --------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    """Where the export went, what it records, and how closely transformers reproduces our logits."""

    out: Path
    meta: dict[str, Any]
    max_abs_diff: float | None  # None when not verified


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """A fresh temporary sibling of ``out``; refuses a non-empty ``out`` unless ``overwrite``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"output folder {str(out)!r} exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_export(run: LoadedRun, meta: dict[str, Any], folder: Path) -> None:
    """Write the Hugging Face files of ``run`` into ``folder``."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    cfg, tok = run.model.config, run.tokenizer
    save_file(to_llama_state_dict(run.model), folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(llama_config(cfg, tok, run.objective), indent=2) + "\n")
    if _causal(run.objective):
        GenerationConfig(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id).save_pretrained(folder)
    save_tokenizer(export_tokenizer(tok, run.objective, cfg.seq_len), folder)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (folder / "README.md").write_text(model_card(meta))


def probe_input(model_config: Any, objective: str, mask_id: int, seed: int = 0) -> torch.Tensor:
    """Deterministic ids (2, T) for comparing logits: random non-special tokens, and for a diffusion
    model about half of them replaced by [MASK]."""
    g = torch.Generator().manual_seed(seed)
    T = min(model_config.seq_len, 64)
    ids = torch.randint(3, model_config.vocab_size, (2, T), generator=g)  # (2, T)
    if not _causal(objective):
        ids = torch.where(torch.rand(2, T, generator=g) < 0.5, torch.full_like(ids, mask_id), ids)
    return ids


@torch.no_grad()
def hf_logits_diff(folder: Path, model: torch.nn.Module, ids: torch.Tensor) -> float:
    """max |logits| difference (fp32) between ``folder`` loaded by transformers and ``model`` on ``ids``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    ours = model.float()(ids)  # (B, T, V)
    return float((hf(ids).logits - ours).abs().max())


def export_run(path: str | Path, out: str | Path, *, overwrite: bool = False, verify: bool = True) -> ExportResult:
    """Export the run (folder, ``.ckpt`` or export) at ``path`` to the Hugging Face folder ``out``.

    With ``verify`` the folder is loaded back with transformers and its logits compared with ours
    (max abs difference at most ``VERIFY_TOLERANCE``) before it replaces ``out``."""
    checkpoint = resolve_checkpoint(path)
    run = load_checkpoint(checkpoint)
    check_exportable(run.model.config, run.objective)
    out = Path(out)
    meta = run_metadata(run, checkpoint)
    tmp = _prepare_out(out, overwrite)
    try:
        write_export(run, meta, tmp)
        diff = None
        if verify:
            ids = probe_input(run.model.config, run.objective, run.tokenizer.mask_token_id)
            diff = hf_logits_diff(tmp, run.model, ids)
            if not diff <= VERIFY_TOLERANCE:
                hint = " (this transformers ignores config.is_causal; upgrade it)" if not _causal(run.objective) else ""
                raise ExportError(f"transformers does not reproduce the model: max |logit diff| {diff:.3g} > "
                                  f"{VERIFY_TOLERANCE:g}{hint}")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, meta, diff)


# --------------------------------------------------------------------------- loading an export
def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``export_run``."""
    return (Path(path) / META_FILE).is_file()


def load_export(folder: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    """An exported folder as a ``LoadedRun`` (our Transformer with the exported weights, the run's tokenizer)."""
    from safetensors.torch import load_file

    from data.tokenizer import tokenizer_hash
    from models import ModelConfig, Transformer

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        model = Transformer(ModelConfig(**meta["model_config"]))
        state = load_file(folder / "model.safetensors", device=str(map_location))
        model.load_state_dict(from_llama_state_dict(state, model.config.n_layer))
        tokenizer = load_export_tokenizer(folder)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{str(folder)!r} is not a readable crossover export ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if meta.get("tokenizer_hash") and tokenizer_hash(tokenizer) != meta["tokenizer_hash"]:
        raise CheckpointError(f"{str(folder)!r}: tokenizer.json does not match the run's tokenizer (hash differs)")
    return LoadedRun(model.eval(), meta["objective"], tokenizer, meta.get("run_config", {}), int(meta.get("step", 0)),
                     int(meta.get("epoch", 0)), run_id=meta.get("run_id", ""), path=folder, info=meta)


__all__ = ["EXPORT_FORMAT", "META_FILE", "ExportError", "ExportResult", "export_run", "from_llama_state_dict",
           "is_export", "llama_config", "load_export", "to_llama_state_dict"]
