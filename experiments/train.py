"""One training run: prepare data and model, check everything, then train under Lightning.

``prepare`` does every check that can fail on bad input (names, corpus, budget against the
training split) before anything is written, so a refused run leaves no folder behind. ``train``
creates the run folder, saves the resolved config, and trains, evaluating at the configured
epochs; rerunning it on the same folder resumes from ``checkpoints/last.ckpt`` or, when the run is
complete, returns its results without training.

Run folder::

    config.yaml        resolved run config (defaults + YAML + CLI)
    run.json           derived quantities, provenance, status (running | done)
    results.csv        one row per evaluation (contract 4)
    tokenizer/         the tokenizer (save_pretrained)
    metrics/attempt-N/ Lightning CSV logs (and TensorBoard events when installed), one folder per (re)start
    checkpoints/last.ckpt
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data import BudgetError, Corpus, Packed, budget, get_tokenizer, load_corpus, token_byte_lengths, token_streams
from data.budget import check_budget, validation_set
from experiments.config import ConfigError, RunConfig
from analysis.table import atomic_write_text, read_rows
from models import ModelConfig, Transformer


@dataclass
class Prepared:
    cfg: RunConfig
    corpus: Corpus
    tokenizer: Any
    tokenizer_hash: str
    train: Packed
    val: Packed
    train_tokens_available: int
    model_config: ModelConfig
    params: int
    non_embedding_params: int

    @property
    def batch_layout(self) -> tuple[int, int, int]:
        """(global batch, per-device batch, gradient-accumulation steps), in sequences."""
        return self.cfg.batch_layout(self.model_config.seq_len)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_layout[0])

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def flops(self) -> float:
        return 6.0 * self.non_embedding_params * self.cfg.unique_tokens * self.cfg.epochs

    def objective_args(self) -> dict[str, Any]:
        t = self.tokenizer
        return {"bos_id": t.eos_token_id, "mask_id": t.mask_token_id, "eps": self.cfg.diffusion_eps,
                "mc_samples": self.cfg.mc_samples, "estimator": self.cfg.elbo_estimator,
                "train_estimator": self.cfg.train_estimator}

    def summary(self) -> str:
        c, m = self.cfg, self.model_config
        passes = len(self.val) * (c.mc_samples if c.objective == "diffusion" else 1)
        return "\n".join([
            f"objective {c.objective} (causal={m.causal}), model {c.model} "
            f"(d{m.d_model} x {m.n_layer} layers, {m.n_head}/{m.n_kv_head} heads, attention {m.attention})",
            f"parameters {self.params:,} total, {self.non_embedding_params:,} non-embedding (N)",
            f"corpus {c.corpus} [{self.corpus.fingerprint[:12]}]: {self.train_tokens_available:,} training tokens, "
            f"vocab {len(self.tokenizer)}",
            f"budget U = {c.unique_tokens:,} unique tokens in {len(self.train)} sequences of {m.seq_len}; "
            f"epochs {c.epochs}; tokens_seen {c.unique_tokens * c.epochs:,}",
            f"tokens per step {self.batch_layout[0] * m.seq_len:,} ({self.batch_layout[0]} sequences = "
            f"{c.world_size} rank(s) x {self.batch_layout[1] // self.batch_layout[2]} x {self.batch_layout[2]} "
            f"accumulation); steps {self.steps_per_epoch}/epoch, {self.total_steps} total",
            f"compute 6*N*tokens_seen = {self.flops:.3e} FLOPs",
            f"evaluation at epochs {c.resolved_eval_epochs()} on {self.val.num_tokens:,} validation tokens"
            + (f", {c.mc_samples} MC draws ({passes} sequence passes per evaluation)" if c.objective == "diffusion"
               else f" ({passes} sequence passes per evaluation)"),
        ])


def prepare(cfg: RunConfig) -> Prepared:
    """Everything before training; raises ConfigError / CorpusError / BudgetError on bad input."""
    cfg.validate()
    corpus = load_corpus(cfg.corpus)
    tokenizer = get_tokenizer(corpus, cfg.vocab_size)
    streams = token_streams(corpus, tokenizer, cfg.order_seed)
    mcfg = cfg.model_config(vocab_size=len(tokenizer))
    check_budget(cfg.unique_tokens, cfg.epochs, len(streams.train))
    pad = tokenizer.pad_token_id
    train = budget(streams, cfg.unique_tokens, mcfg.seq_len, pad)
    val = validation_set(streams, cfg.val_tokens, mcfg.seq_len, pad)
    cfg.batch_layout(mcfg.seq_len)  # refuses a batch that does not split over ranks and micro-batches
    probe = Transformer(mcfg)
    return Prepared(cfg, corpus, tokenizer, streams.tokenizer_hash, train, val, len(streams.train), mcfg,
                    probe.num_params(), probe.num_params(non_embedding=True))


def _check_existing(out: Path, cfg: RunConfig) -> str | None:
    """Status of an existing run folder for the same config (None: new folder); refuses a foreign one."""
    if not out.exists():
        return None
    cfg_file = out / "config.yaml"
    if not cfg_file.exists():
        if any(out.iterdir()):
            raise ConfigError(f"output folder {str(out)!r} exists and is not a crossover run folder")
        return None
    old = RunConfig.from_dict(yaml.safe_load(cfg_file.read_text())).identity()
    diff = [k for k, v in cfg.identity().items() if old.get(k) != v]
    if diff:
        k = diff[0]
        raise ConfigError(f"{str(out)!r} holds a run with a different config ({k}: {old.get(k)!r} -> "
                          f"{getattr(cfg, k)!r}); use another --out")
    info = out / "run.json"
    return json.loads(info.read_text()).get("status", "running") if info.exists() else "running"


def run_id_for(out: Path) -> str:
    return out.resolve().name


def train(cfg: RunConfig, out: str | Path, *, run_id: str | None = None, prepared: Prepared | None = None,
          quiet: bool = False, on_start: Callable[[], None] | None = None) -> list[dict[str, str]]:
    """Train (or resume, or skip when complete) the run in ``out``; returns its results rows.

    ``on_start`` is called once the run folder exists, before training (the sweep runner's lock)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from experiments.datamodule import BudgetDataModule
    from experiments.evaluation import EvaluationCallback
    from experiments.module import AtomicCheckpointIO, LitLM, ProgressBar, ProgressFile, quiet_lightning

    quiet_lightning()

    out = Path(out)
    status = _check_existing(out, cfg)
    if status == "done":
        if not quiet:
            print(f"{out}: run already complete", file=sys.stderr)
        return read_rows(out / "results.csv")
    prep = prepared or prepare(cfg)
    run_id = run_id or run_id_for(out)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)

    # Everything that can still refuse the run (Lightning's own checks of accelerator, devices,
    # precision) is built before the run folder exists; loggers create their folders lazily.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    mc_samples = cfg.mc_samples if cfg.objective == "diffusion" else 1
    optim = {k: getattr(cfg, k) for k in ("lr", "schedule", "warmup_steps", "min_lr_ratio", "decay_fraction",
                                            "weight_decay", "beta1", "beta2")}
    use_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if use_gpu else "32-true")
    lit = LitLM(prep.model_config.to_dict(), cfg.objective, prep.objective_args(), optim, prep.total_steps, cfg.seed,
                compile=cfg.compile, log_every_n_steps=cfg.log_every_n_steps, peak_flops=cfg.peak_flops)
    lit.run_info = {"run_id": run_id, "config": cfg.to_dict(), "tokenizer_json": prep.tokenizer.backend_tokenizer.to_str()}
    row_base = {
        "run_id": run_id, "objective": cfg.objective, "attention": cfg.attention, "model": cfg.model,
        "params": prep.params, "non_embedding_params": prep.non_embedding_params, "unique_tokens": cfg.unique_tokens,
        "seed": cfg.seed, "mc_samples": mc_samples,
        "elbo_weight": ({"count": "L/l", "time": "1/t"}[cfg.elbo_estimator] if cfg.objective == "diffusion" else ""),
        "mask_eps": cfg.diffusion_eps if cfg.objective == "diffusion" else "", "seq_len": prep.model_config.seq_len,
        "vocab_size": len(prep.tokenizer), "batch_size": prep.batch_layout[0], "run_epochs": cfg.epochs, "lr": cfg.lr, "schedule": cfg.schedule,
        "corpus": cfg.corpus, "corpus_fingerprint": prep.corpus.fingerprint, "tokenizer_hash": prep.tokenizer_hash,
    }
    evaluation = EvaluationCallback(prep.val, cfg.resolved_eval_epochs(), cfg.eval_batch_size,
                                    token_byte_lengths(prep.tokenizer), row_base, out / "results.csv")
    # one file, overwritten (atomically, see AtomicCheckpointIO) after every epoch
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1, every_n_epochs=1,
                                 save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks = [evaluation, ProgressFile(out / "progress.json", cfg.epochs), checkpoint]
    if cfg.progress and not quiet:
        callbacks.append(ProgressBar(refresh_rate=max(1, prep.steps_per_epoch // 20)))
    attempt = f"attempt-{len(list((out / 'metrics').glob('attempt-*')))}"  # a resumed run logs beside, not over
    loggers = [CSVLogger(out, name="metrics", version=attempt)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="metrics", version=attempt))
    except ImportError:
        pass
    global_batch, per_device, accumulation = prep.batch_layout
    strategy = cfg.strategy if cfg.strategy != "auto" else ("ddp" if cfg.world_size > 1 else "auto")
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=strategy, precision=precision, accumulate_grad_batches=accumulation,
        gradient_clip_val=cfg.grad_clip or None, logger=loggers, callbacks=callbacks,
        log_every_n_steps=cfg.log_every_n_steps, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, enable_progress_bar=cfg.progress and not quiet,
        plugins=[AtomicCheckpointIO()],
    )
    if not quiet:
        print(prep.summary(), file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if not (out / "tokenizer").exists():
        prep.tokenizer.save_pretrained(out / "tokenizer")
    info = {
        "run_id": run_id, "status": "running", "params": prep.params,
        "non_embedding_params": prep.non_embedding_params, "model_config": prep.model_config.to_dict(),
        "corpus": cfg.corpus, "corpus_fingerprint": prep.corpus.fingerprint, "tokenizer_hash": prep.tokenizer_hash,
        "train_tokens_available": prep.train_tokens_available, "unique_tokens": cfg.unique_tokens,
        "epochs": cfg.epochs, "tokens_seen": cfg.unique_tokens * cfg.epochs, "flops": prep.flops,
        "steps_per_epoch": prep.steps_per_epoch, "total_steps": prep.total_steps,
        "val_tokens": prep.val.num_tokens, "mc_samples": mc_samples,
        "eval_epochs": cfg.resolved_eval_epochs(), "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
    atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    if on_start is not None:
        on_start()

    data = BudgetDataModule(prep.train, global_batch, accumulation, cfg.seed)
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(lit, datamodule=data, ckpt_path=last if last.exists() else None)
    tokens_trained = lit.final_tokens_trained
    if trainer.is_global_zero:
        info.update(status="done", train_time_s=round(lit.train_time_s, 3), global_step=trainer.global_step,
                    tokens_trained=tokens_trained, precision=precision, world_size=trainer.world_size)
        atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    return read_rows(out / "results.csv")


__all__ = ["BudgetError", "Prepared", "prepare", "train"]
