"""A run's derived numbers, computed once: parameters, batch layout, steps, FLOPs, evaluation points.

``RunPlan.of(cfg, train_sequences, val_sequences, vocab_size)`` needs no model and no data beyond
their sizes (parameters come in closed form from the model config), so sweeps can plan every cell
cheaply; ``summary()`` is what a run prints at start (nanoGPT's habit).
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.table import flops
from experiments.config import ConfigError, RunConfig
from models import ModelConfig, count_params
from models.config import DROPOUT_SITES
from models.objectives import Objective, TokenIds, build_objective


@dataclass(frozen=True)
class BatchLayout:
    """Sequences per optimiser step (global), per device and per forward pass (micro-batch)."""

    global_batch: int
    per_device: int
    accumulation: int

    @property
    def micro_batch(self) -> int:
        return self.per_device // self.accumulation

    @classmethod
    def of(cls, cfg: RunConfig, seq_len: int) -> BatchLayout:
        """Refuses a batch that does not split over the ranks and micro-batches."""
        o, r = cfg.optim, cfg.run
        if o.batch_tokens:
            if o.batch_tokens % seq_len:
                raise ConfigError(f"batch_tokens {o.batch_tokens} is not a multiple of seq_len {seq_len}")
            global_batch = o.batch_tokens // seq_len
        else:
            global_batch = o.batch_size
        if global_batch % r.world_size:
            raise ConfigError(f"global batch of {global_batch} sequences does not split over {r.world_size} ranks")
        per_device = global_batch // r.world_size
        micro = r.micro_batch_size or per_device
        if per_device % micro:
            raise ConfigError(f"per-device batch {per_device} is not a multiple of micro_batch_size {micro}")
        return cls(global_batch, per_device, per_device // micro)


@dataclass(frozen=True)
class RunPlan:
    cfg: RunConfig
    model: ModelConfig
    objective: Objective
    params: int
    non_embedding_params: int
    batch: BatchLayout
    train_sequences: int
    val_sequences: int

    @classmethod
    def of(cls, cfg: RunConfig, train_sequences: int, val_sequences: int = 0, vocab_size: int | None = None,
           ids: TokenIds = TokenIds()) -> RunPlan:
        model = cfg.model_config(vocab_size)
        objective = build_objective(cfg.objective, cfg.objective_config, ids)
        return cls(cfg, model, objective, count_params(model), count_params(model, non_embedding=True),
                   BatchLayout.of(cfg, model.seq_len), train_sequences, val_sequences)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_sequences // self.batch.global_batch)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def tokens_seen(self) -> int:
        return self.cfg.unique_tokens * self.cfg.epochs

    @property
    def flops(self) -> float:
        return flops(self.non_embedding_params, self.cfg.unique_tokens, self.cfg.epochs)

    @property
    def eval_epochs(self) -> list[int]:
        return self.cfg.eval.epochs_for(self.cfg.epochs)

    @property
    def eval_passes(self) -> int:
        """Backbone passes over one sequence per evaluation, over the whole validation set."""
        return self.val_sequences * self.objective.eval_passes

    def row_base(self) -> dict[str, object]:
        """The results-row columns fixed for the whole run (``analysis.table`` owns the schema)."""
        c = self.cfg
        return {"objective": c.objective, "attention": c.attention, "model": c.model, "params": self.params,
                "non_embedding_params": self.non_embedding_params, "unique_tokens": c.unique_tokens,
                "seed": c.seed, **self.objective.describe(), "seq_len": self.model.seq_len,
                "vocab_size": self.model.vocab_size, "batch_size": self.batch.global_batch, "run_epochs": c.epochs,
                "lr": c.optim.lr, "schedule": c.optim.schedule, "weight_decay": c.optim.weight_decay,
                "ema_decay": c.optim.ema_decay, **{site: getattr(self.model, site) for site in DROPOUT_SITES},
                "corpus": c.data.corpus}

    def summary(self) -> str:
        c, m, b = self.cfg, self.model, self.batch
        draws = self.objective.eval_passes
        return "\n".join([
            f"objective {c.objective} (causal={m.causal}), model {c.model} "
            f"(d{m.d_model} x {m.n_layer} layers, {m.n_head}/{m.n_kv_head} heads, attention {m.attention})",
            f"parameters {self.params:,} total, {self.non_embedding_params:,} non-embedding (N)",
            f"budget U = {c.unique_tokens:,} unique tokens in {self.train_sequences} sequences of {m.seq_len}; "
            f"epochs {c.epochs}; tokens_seen {self.tokens_seen:,}",
            f"tokens per step {b.global_batch * m.seq_len:,} ({b.global_batch} sequences = {c.run.world_size} rank(s) "
            f"x {b.micro_batch} x {b.accumulation} accumulation); steps {self.steps_per_epoch}/epoch, "
            f"{self.total_steps} total",
            f"compute 6*N*tokens_seen = {self.flops:.3e} FLOPs",
            f"evaluation at epochs {self.eval_epochs} on {self.val_sequences} validation sequences"
            + (f", {draws} MC draws" if draws > 1 else "") + f" ({self.eval_passes} sequence passes per evaluation)",
        ])
