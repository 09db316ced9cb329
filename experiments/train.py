"""One training run: prepare data and plan, check everything, then train under Lightning.

``prepare`` does every check that can fail on bad input (names, corpus, budget against the
training split) before anything is written, so a refused run leaves no folder behind. ``train``
creates the run folder (``experiments.run_folder``), saves the resolved config, and trains,
evaluating at the configured epochs; rerunning it on the same folder resumes from
``checkpoints/last.ckpt`` or, when the run is complete, returns its results without training.
A run whose loss, gradient norm or validation loss turns non-finite stops with ``Diverged``: its
status becomes ``diverged`` and its last (finite) checkpoint and results rows are kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data import Corpus, Packed, get_tokenizer, load_corpus, take_budget, token_byte_lengths, token_streams
from data.budget import check_budget, validation_set
from experiments.config import RunConfig
from experiments.devices import resolve_precision
from experiments.module import Diverged
from experiments.plan import RunPlan
from experiments.run_folder import RunFolder
from models.objectives import TokenIds


@dataclass
class Prepared:
    """The data of a run and its plan (every derived number)."""

    corpus: Corpus
    tokenizer: Any
    tokenizer_hash: str
    train: Packed
    val: Packed
    train_tokens_available: int
    plan: RunPlan

    def summary(self) -> str:
        c = self.plan.cfg
        return "\n".join([
            self.plan.summary(),
            f"corpus {c.data.corpus} [{self.corpus.fingerprint[:12]}]: {self.train_tokens_available:,} training "
            f"tokens, vocab {len(self.tokenizer)}; {self.val.num_tokens:,} validation tokens",
        ])

    def row_base(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, **self.plan.row_base(), "corpus_fingerprint": self.corpus.fingerprint,
                "tokenizer_hash": self.tokenizer_hash}


def token_ids(tokenizer: Any) -> TokenIds:
    return TokenIds(pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id, eod=tokenizer.eos_token_id)


def prepare(cfg: RunConfig) -> Prepared:
    """Everything before training; raises ConfigError / CorpusError / BudgetError on bad input."""
    cfg.validate()
    corpus = load_corpus(cfg.data.corpus)
    tokenizer = get_tokenizer(corpus, cfg.data.vocab_size)
    streams = token_streams(corpus, tokenizer, cfg.data.order_seed)
    seq_len = cfg.model_config().seq_len
    check_budget(cfg.unique_tokens, cfg.epochs, len(streams.train), seq_len)
    pad = tokenizer.pad_token_id
    train = take_budget(streams, cfg.unique_tokens, seq_len, pad)
    val = validation_set(streams, cfg.data.val_tokens, seq_len, pad)
    plan = RunPlan.of(cfg, len(train), len(val), len(tokenizer), token_ids(tokenizer))
    return Prepared(corpus, tokenizer, streams.tokenizer_hash, train, val, len(streams.train), plan)


def build_trainer(prep: Prepared, folder: RunFolder, run_id: str, show_progress: bool):
    """The LightningModule and the Trainer with its callbacks and loggers (no file is written yet)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from experiments.evaluation import EvaluationCallback
    from experiments.module import AtomicCheckpointIO, DivergenceGuard, LitLM, ProgressFile
    from experiments.progress import progress_callbacks

    plan, cfg, r = prep.plan, prep.plan.cfg, prep.plan.cfg.run
    lit = LitLM(plan.model, plan.objective, cfg.optim, plan.total_steps, cfg.seed, compile=r.compile,
                log_every_n_steps=r.log_every_n_steps, peak_flops=r.peak_flops)
    lit.run_info = {"run_id": run_id, "config": cfg.to_dict(),
                    "tokenizer_json": prep.tokenizer.backend_tokenizer.to_str()}
    evaluation = EvaluationCallback(prep.val, plan.eval_epochs, cfg.eval.eval_batch_size,
                                    token_byte_lengths(prep.tokenizer), prep.row_base(run_id), folder.results)
    # one file, overwritten (atomically, see AtomicCheckpointIO) after every epoch
    checkpoint = ModelCheckpoint(dirpath=folder.checkpoint.parent, filename="last", save_top_k=1, every_n_epochs=1,
                                 save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks = [DivergenceGuard(), evaluation, ProgressFile(folder.progress_file, cfg.epochs), checkpoint]
    shown, bar = progress_callbacks(show_progress, steps_per_epoch=plan.steps_per_epoch)  # bar on a TTY, else lines
    callbacks += shown
    attempt = folder.next_attempt()
    loggers = [CSVLogger(folder.path, name="metrics", version=attempt)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(folder.path, name="metrics", version=attempt))
    except ImportError:
        pass
    strategy = r.strategy if r.strategy != "auto" else ("ddp" if r.world_size > 1 else "auto")
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=r.accelerator, devices=r.devices, num_nodes=r.num_nodes,
        strategy=strategy, precision=resolve_precision(r.precision, r.accelerator),
        accumulate_grad_batches=plan.batch.accumulation, gradient_clip_val=cfg.optim.grad_clip or None,
        logger=loggers, callbacks=callbacks, log_every_n_steps=r.log_every_n_steps, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
        enable_progress_bar=bar, plugins=[AtomicCheckpointIO()],
    )
    return lit, trainer


def run_info(prep: Prepared, run_id: str) -> dict[str, Any]:
    """``run.json`` at the start of an attempt: derived numbers and provenance."""
    import lightning as L
    import torch

    plan, cfg = prep.plan, prep.plan.cfg
    return {"run_id": run_id, "status": "running", "params": plan.params,
            "non_embedding_params": plan.non_embedding_params, "model_config": plan.model.to_dict(),
            "corpus": cfg.data.corpus, "corpus_fingerprint": prep.corpus.fingerprint,
            "tokenizer_hash": prep.tokenizer_hash, "train_tokens_available": prep.train_tokens_available,
            "unique_tokens": cfg.unique_tokens, "epochs": cfg.epochs, "tokens_seen": plan.tokens_seen,
            "flops": plan.flops, "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
            "val_tokens": prep.val.num_tokens, **plan.objective.describe(), "eval_epochs": plan.eval_epochs,
            "versions": {"torch": torch.__version__, "lightning": L.__version__}}


def train(cfg: RunConfig, out: str | Path, *, run_id: str | None = None, prepared: Prepared | None = None,
          quiet: bool = False, on_start: Callable[[RunFolder], None] | None = None) -> list[dict[str, str]]:
    """Train (or resume, or skip when complete) the run in ``out``; returns its results rows.

    ``on_start(folder)`` is called once the run folder exists, before training (the sweep's lock).
    Raises ``Diverged`` (after recording the status) when the run diverges."""
    import lightning as L
    import torch

    from experiments.module import quiet_lightning

    quiet_lightning()
    folder = RunFolder(out)
    status = folder.check_reusable(cfg)
    if status == "diverged":  # as the first attempt ended: the same exit code, the same line
        d = folder.info().get("diverged", {})
        raise Diverged(d.get("what", "value"), int(d.get("step", -1)), float(d.get("value", "nan")))
    if status == "done":
        if not quiet:
            print(f"{out}: run already complete", file=sys.stderr)
        return folder.rows()
    prep = prepared or prepare(cfg)
    run_id = run_id or folder.path.resolve().name
    torch.set_num_threads(cfg.run.threads or os.cpu_count() or 1)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # Everything that can still refuse the run (Lightning's own checks of accelerator, devices,
    # precision) is built before the run folder exists; loggers create their folders lazily.
    lit, trainer = build_trainer(prep, folder, run_id, show_progress=cfg.run.progress and not quiet)
    if not quiet:
        print(prep.summary(), file=sys.stderr)
    folder.create(cfg, prep.tokenizer)
    folder.write_info(run_info(prep, run_id))
    if on_start is not None:
        on_start(folder)

    from experiments.datamodule import BudgetDataModule

    data = BudgetDataModule(prep.train, prep.plan.batch.global_batch, prep.plan.batch.accumulation, cfg.seed)
    last = folder.checkpoint
    try:
        trainer.fit(lit, datamodule=data, ckpt_path=last if last.exists() else None)
    except Diverged as e:
        if trainer.is_global_zero:
            folder.update_info(status="diverged", diverged={"what": e.what, "step": e.step, "value": str(e.value)})
        raise
    if trainer.is_global_zero:
        folder.update_info(status="done", train_time_s=round(lit.train_time_s, 3), global_step=trainer.global_step,
                           tokens_trained=lit.final_tokens_trained, precision=trainer.precision,
                           world_size=trainer.world_size)
    return folder.rows()


__all__ = ["Diverged", "Prepared", "prepare", "train"]
